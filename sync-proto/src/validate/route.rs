//! `MeshGatewayRoute`: selectors, then an HTTP route (hostnames, rules of
//! matches, filters and backends) or a TCP route (rules of backends).

use super::selectors::{self, TagRules};
use super::{FieldPath, Report, hostname, port, quote, re2};
use crate::pb::mesh::mesh_gateway_route::http_route::filter::{
    Filter as Kind, HeaderFilter, Mirror, Redirect, Rewrite, header_filter, rewrite,
};
use crate::pb::mesh::mesh_gateway_route::http_route::r#match::{header, path, query};
use crate::pb::mesh::mesh_gateway_route::http_route::{Filter, Match, Rule};
use crate::pb::mesh::mesh_gateway_route::{Backend, HttpRoute, TcpRoute, conf::Route};
use crate::pb::mesh::{HttpMethod, MeshGatewayRoute};

/// The redirect codes Envoy can send (`RedirectResponseCode`).
const REDIRECT_CODES: &[u32] = &[301, 302, 303, 307, 308];

pub(super) fn check(r: &mut Report, spec: &MeshGatewayRoute) {
    selectors::selectors(r, &FieldPath::new("selectors"), &spec.selectors, false, TagRules::SERVICE_SELECTOR);
    let at = FieldPath::new("conf");
    match spec.conf.as_ref().and_then(|c| c.route.as_ref()) {
        None => r.add(&at, "cannot be empty"),
        Some(Route::Tcp(tcp)) => tcp_route(r, &at.field("tcp"), tcp),
        Some(Route::Http(http)) => http_route(r, &at.field("http"), http),
    }
}

/// Ours: the incumbent accepts any TCP route, even one that goes nowhere.
fn tcp_route(r: &mut Report, at: &FieldPath, route: &TcpRoute) {
    let rules_at = at.field("rules");
    if route.rules.is_empty() {
        r.add(&rules_at, "cannot be empty");
    }
    for (i, rule) in route.rules.iter().enumerate() {
        let backends_at = rules_at.index(i).field("backends");
        if rule.backends.is_empty() {
            r.add(&backends_at, "cannot be empty");
        }
        backends(r, &backends_at, &rule.backends);
    }
}

/// Each destination at `backends[i]` (the incumbent's path), then the weights.
fn backends(r: &mut Report, at: &FieldPath, list: &[Backend]) {
    for (i, b) in list.iter().enumerate() {
        selectors::tags(r, &at.index(i), &b.destination, TagRules::SERVICE_SELECTOR);
    }
    // Ours: a lone backend of weight 0 is normalised to 1, but several that
    // all weigh 0 leave Envoy nothing to pick from.
    if list.len() > 1 && list.iter().all(|b| b.weight == 0) {
        r.add(at, "total weight must be greater than 0");
    }
    let total: u64 = list.iter().map(|b| u64::from(b.weight)).sum();
    if total > u64::from(u32::MAX) {
        r.add(at, format!("total weight must be at most {}", u32::MAX));
    }
}

fn http_route(r: &mut Report, at: &FieldPath, route: &HttpRoute) {
    // Ours: the incumbent leaves these to Envoy.
    for (i, name) in route.hostnames.iter().enumerate() {
        if let Err(message) = hostname(name) {
            r.add(&at.field("hostnames").index(i), message);
        }
    }
    let rules_at = at.field("rules");
    if route.rules.is_empty() {
        r.add(&rules_at, "cannot be empty");
    }
    for (i, rule) in route.rules.iter().enumerate() {
        http_rule(r, &rules_at.index(i), rule);
    }
}

/// What the filters of a rule need to know about the rule.
#[derive(Clone, Copy)]
struct RuleContext {
    /// Some match is on a path prefix (needed by `replacePrefixMatch`).
    prefix_match: bool,
    /// A rewrite sets the host to the backend's hostname, so nothing else may set it.
    host_to_backend: bool,
}

fn http_rule(r: &mut Report, at: &FieldPath, rule: &Rule) {
    let matches_at = at.field("matches");
    if rule.matches.is_empty() {
        r.add(&matches_at, "cannot be empty");
    }
    for (i, m) in rule.matches.iter().enumerate() {
        http_match(r, &matches_at.index(i), m);
    }

    let ctx = RuleContext {
        prefix_match: rule
            .matches
            .iter()
            .any(|m| m.path.as_ref().is_some_and(|p| p.r#match == path::MatchType::Prefix as i32)),
        host_to_backend: rule
            .filters
            .iter()
            .any(|f| matches!(&f.filter, Some(Kind::Rewrite(rw)) if rw.host_to_backend_hostname)),
    };
    let filters_at = at.field("filters");
    for (i, f) in rule.filters.iter().enumerate() {
        filter(r, &filters_at.index(i), f, ctx);
    }

    let redirect = rule.filters.iter().any(|f| matches!(f.filter, Some(Kind::Redirect(_))));
    let backends_at = at.field("backends");
    if redirect && rule.filters.len() != 1 {
        // A redirect answers the request itself: nothing else can apply.
        r.add(&filters_at, "redirects cannot be used with other filters");
    } else if redirect && !rule.backends.is_empty() {
        r.add(&backends_at, "must be empty when using redirect filters");
    } else if !redirect && rule.backends.is_empty() {
        r.add(&backends_at, "cannot be empty");
    }
    backends(r, &backends_at, &rule.backends);
}

fn http_match(r: &mut Report, at: &FieldPath, m: &Match) {
    if m.path.is_none() && m.method == HttpMethod::None as i32 && m.headers.is_empty() && m.query_parameters.is_empty()
    {
        r.add(at, "cannot be empty");
    }

    if let Some(p) = &m.path {
        let value_at = at.field("path").field("value");
        match path::MatchType::try_from(p.r#match) {
            Ok(path::MatchType::Regex) => regex_value(r, &value_at, &p.value),
            Ok(path::MatchType::Exact | path::MatchType::Prefix) => path_value(r, &value_at, &p.value),
            Err(_) => r.add(&at.field("path").field("match"), "must be one of EXACT, PREFIX, REGEX"),
        }
    }

    if HttpMethod::try_from(m.method).is_err() {
        r.add(&at.field("method"), "must be a known HTTP method");
    }

    for (i, h) in m.headers.iter().enumerate() {
        let h_at = at.field("headers").index(i);
        if h.name.is_empty() {
            r.add(&h_at.field("name"), "cannot be empty");
        } else if !is_header_name(h.name.strip_prefix(':').unwrap_or(&h.name)) {
            r.add(&h_at.field("name"), "must be a valid HTTP header name");
        } else if h.name.len() > MAX_HEADER_BYTES {
            r.add(&h_at.field("name"), format!("must be at most {MAX_HEADER_BYTES} bytes"));
        }
        let value_at = h_at.field("value");
        match header::MatchType::try_from(h.r#match) {
            Ok(header::MatchType::Absent | header::MatchType::Present) => {
                if !h.value.is_empty() {
                    r.add(&value_at, "cannot be set");
                }
            }
            Ok(header::MatchType::Exact) => {
                if h.value.is_empty() {
                    r.add(&value_at, "cannot be empty");
                } else if has_line_break_or_nul(&h.value) {
                    r.add(&value_at, CONTROL_MESSAGE);
                } else if h.value.len() > MAX_HEADER_BYTES {
                    r.add(&value_at, format!("must be at most {MAX_HEADER_BYTES} bytes"));
                }
            }
            Ok(header::MatchType::Regex) => regex_value(r, &value_at, &h.value),
            Err(_) => r.add(&h_at.field("match"), "must be one of EXACT, REGEX, ABSENT, PRESENT"),
        }
    }

    for (i, q) in m.query_parameters.iter().enumerate() {
        let q_at = at.field("query_parameters").index(i);
        if q.name.is_empty() {
            r.add(&q_at.field("name"), "cannot be empty");
        } else if has_control(&q.name) {
            r.add(&q_at.field("name"), CONTROL_MESSAGE);
        } else if q.name.len() > MAX_QUERY_NAME_BYTES {
            r.add(&q_at.field("name"), format!("must be at most {MAX_QUERY_NAME_BYTES} bytes"));
        }
        let value_at = q_at.field("value");
        match query::MatchType::try_from(q.r#match) {
            Ok(query::MatchType::Exact) => {
                if q.value.is_empty() {
                    r.add(&value_at, "cannot be empty");
                } else if has_control(&q.value) {
                    r.add(&value_at, CONTROL_MESSAGE);
                }
            }
            Ok(query::MatchType::Regex) => regex_value(r, &value_at, &q.value),
            Err(_) => r.add(&q_at.field("match"), "must be one of EXACT, REGEX"),
        }
    }
}

/// Ours: a regular expression must compile (Envoy's RE2 and the `regex`
/// crate share a syntax: no look-around, no back-references) and fit Envoy's
/// RE2 program-size limit ([`super::re2`]): over it, Envoy NACKs the whole
/// route configuration.
fn regex_value(r: &mut Report, at: &FieldPath, pattern: &str) {
    if pattern.is_empty() {
        r.add(at, "cannot be empty");
    } else if has_control(pattern) {
        r.add(at, CONTROL_MESSAGE);
    } else if let Err(e) = regex::Regex::new(pattern) {
        r.add(at, format!("invalid regular expression: {}", regex_reason(&e)));
    } else if let Some(size) = re2::program_size(pattern).filter(|s| *s > re2::ENVOY_MAX_PROGRAM_SIZE) {
        let size = if size == u64::MAX { "too large to count".to_owned() } else { format!("about {size}") };
        r.add(
            at,
            format!(
                "regular expression too complex for Envoy: its RE2 program size is {size}, over Envoy's limit of {} \
                 (counted repetitions such as {{1,64}} expand: use + or * instead)",
                re2::ENVOY_MAX_PROGRAM_SIZE
            ),
        );
    }
}

/// Why a value with control characters is refused.
const CONTROL_MESSAGE: &str = "must not contain control characters (NUL, CR, LF, ...)";

/// Whether `s` holds an ASCII control character (C0 or DEL): no request
/// path, query or regex can carry one, and Envoy refuses NUL, CR and LF in
/// header values and rewrites.
fn has_control(s: &str) -> bool {
    s.bytes().any(|b| b < 0x20 || b == 0x7f)
}

/// NUL, CR or LF: what a header value may never hold (a tab may).
fn has_line_break_or_nul(s: &str) -> bool {
    s.contains(['\r', '\n', '\0'])
}

/// Envoy's `HeaderMatcher.name` and `HeaderValue.key`/`value` limit (bytes).
const MAX_HEADER_BYTES: usize = 16384;
/// Envoy's `QueryParameterMatcher.name` limit (bytes).
const MAX_QUERY_NAME_BYTES: usize = 1024;

/// A path (match value or rewrite target): absolute, no control characters.
fn path_value(r: &mut Report, at: &FieldPath, p: &str) {
    if !p.starts_with('/') {
        r.add(at, "must be an absolute path");
    } else if has_control(p) {
        r.add(at, CONTROL_MESSAGE);
    }
}

/// The one-line reason of a regex error (its display is a multi-line diagram).
fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    match text.lines().rev().find_map(|line| line.strip_prefix("error: ")) {
        Some(reason) => reason.to_owned(),
        None => text.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

fn filter(r: &mut Report, at: &FieldPath, f: &Filter, ctx: RuleContext) {
    match &f.filter {
        None => r.add(at, "cannot be empty"),
        Some(Kind::RequestHeader(h)) => header_filter(r, &at.field("request_header"), h, Side::Request, ctx),
        Some(Kind::ResponseHeader(h)) => header_filter(r, &at.field("response_header"), h, Side::Response, ctx),
        Some(Kind::Mirror(m)) => mirror(r, &at.field("mirror"), m),
        Some(Kind::Redirect(rd)) => redirect(r, &at.field("redirect"), rd, ctx),
        Some(Kind::Rewrite(rw)) => rewrite(r, &at.field("rewrite"), rw, ctx.prefix_match),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Set,
    Add,
}

fn header_filter(r: &mut Report, at: &FieldPath, h: &HeaderFilter, side: Side, ctx: RuleContext) {
    if h.set.is_empty() && h.add.is_empty() && h.remove.is_empty() {
        r.add(at, "cannot be empty");
    }
    for (i, header) in h.set.iter().enumerate() {
        header_mutation(r, &at.field("set").index(i), header, Op::Set, side, ctx);
    }
    for (i, header) in h.add.iter().enumerate() {
        header_mutation(r, &at.field("add").index(i), header, Op::Add, side, ctx);
    }
    for (i, name) in h.remove.iter().enumerate() {
        let name_at = at.field("remove").index(i);
        if name.is_empty() {
            r.add(&name_at, "cannot be empty");
        } else if is_host(name) {
            // Ours: Envoy refuses to remove the host.
            r.add(&name_at, format!("header {} cannot be removed", quote(name)));
        } else if name.starts_with(':') {
            r.add(&name_at, format!("pseudo-header {} cannot be removed", quote(name)));
        } else if !is_header_name(name) {
            r.add(&name_at, "must be a valid HTTP header name");
        }
    }
}

fn header_mutation(r: &mut Report, at: &FieldPath, h: &header_filter::Header, op: Op, side: Side, ctx: RuleContext) {
    let name_at = at.field("name");
    let name = h.name.as_str();
    if name.is_empty() {
        r.add(&name_at, "cannot be empty");
    } else if is_host(name) {
        if side == Side::Request && ctx.host_to_backend {
            r.add(
                at,
                format!("cannot modify '{name}' header, when route has set 'rewrite.host_to_backend_hostname' option"),
            );
        } else if side == Side::Response {
            // Ours, from here on: what Envoy would NACK.
            r.add(&name_at, format!("header {} cannot be modified in responses", quote(name)));
        } else if op == Op::Add {
            r.add(&name_at, format!("header {} cannot be added: use set to rewrite the host", quote(name)));
        }
        // Setting the host on a request rewrites the authority.
    } else if name.starts_with(':') {
        r.add(&name_at, format!("pseudo-header {} cannot be modified", quote(name)));
    } else if !is_header_name(name) {
        r.add(&name_at, "must be a valid HTTP header name");
    } else if name.len() > MAX_HEADER_BYTES {
        r.add(&name_at, format!("must be at most {MAX_HEADER_BYTES} bytes"));
    }

    let value_at = at.field("value");
    if h.value.is_empty() {
        r.add(&value_at, "cannot be empty");
    } else if has_line_break_or_nul(&h.value) {
        r.add(&value_at, "must not contain CR, LF or NUL characters");
    } else if h.value.len() > MAX_HEADER_BYTES {
        r.add(&value_at, format!("must be at most {MAX_HEADER_BYTES} bytes"));
    }
}

/// A header a policy makes Envoy add (RateLimit `onRateLimit.headers`,
/// HealthCheck `requestHeadersToAdd`): a header name that is neither the
/// host nor a pseudo-header (Envoy: ":-prefixed or host headers may not be
/// modified"), a value without CR, LF or NUL, each at most
/// [`MAX_HEADER_BYTES`]. Emptiness is the caller's (the incumbent's messages).
pub(super) fn added_header(r: &mut Report, key_at: &FieldPath, key: &str, value_at: &FieldPath, value: &str) {
    if key.is_empty() {
    } else if is_host(key) || key.starts_with(':') {
        r.add(
            key_at,
            format!("header {} cannot be set by a policy (Envoy refuses host and pseudo-headers)", quote(key)),
        );
    } else if !is_header_name(key) {
        r.add(key_at, "must be a valid HTTP header name");
    } else if key.len() > MAX_HEADER_BYTES {
        r.add(key_at, format!("must be at most {MAX_HEADER_BYTES} bytes"));
    }
    if has_line_break_or_nul(value) {
        r.add(value_at, "must not contain CR, LF or NUL characters");
    } else if value.len() > MAX_HEADER_BYTES {
        r.add(value_at, format!("must be at most {MAX_HEADER_BYTES} bytes"));
    }
}

/// A path Envoy sends itself (HealthCheck `http.path`): absolute, no control
/// characters. Emptiness is the caller's.
pub(super) fn request_path(r: &mut Report, at: &FieldPath, p: &str) {
    if !p.is_empty() {
        path_value(r, at, p);
    }
}

fn mirror(r: &mut Report, at: &FieldPath, m: &Mirror) {
    let percentage_at = at.field("percentage");
    match &m.percentage {
        None => r.add(&percentage_at, "cannot be empty"),
        Some(p) if !(0.0..=100.0).contains(&p.value) => r.add(&percentage_at, "has to be in [0.0 - 100.0] range"),
        Some(_) => {}
    }
    let backend_at = at.field("backend");
    match &m.backend {
        None => r.add(&backend_at, "cannot be empty"),
        Some(b) => selectors::tags(r, &backend_at, &b.destination, TagRules::SERVICE_SELECTOR),
    }
}

fn redirect(r: &mut Report, at: &FieldPath, rd: &Redirect, ctx: RuleContext) {
    // Ours: an empty scheme or hostname keeps the request's.
    if !rd.scheme.is_empty() && rd.scheme != "http" && rd.scheme != "https" {
        r.add(&at.field("scheme"), "must be \"http\" or \"https\"");
    }
    if !rd.hostname.is_empty() {
        let outcome =
            if rd.hostname.starts_with('*') { Err("cannot be a wildcard".to_owned()) } else { hostname(&rd.hostname) };
        if let Err(message) = outcome {
            r.add(&at.field("hostname"), message);
        }
    }
    // Port 0 means the listener's port.
    if rd.port > 0 {
        port(r, &at.field("port"), rd.port);
    }
    let status_at = at.field("status_code");
    if !(300..=308).contains(&rd.status_code) {
        r.add(&status_at, "must be in the range [300, 308]");
    } else if !REDIRECT_CODES.contains(&rd.status_code) {
        // Ours: Envoy has no 300, 304, 305 or 306 redirect.
        r.add(&status_at, "must be one of 301, 302, 303, 307, 308");
    }
    if let Some(rw) = &rd.path {
        let path_at = at.field("path");
        if rw.host_to_backend_hostname {
            r.add(&path_at.field("host_to_backend_hostname"), "cannot be used in a redirect");
        }
        rewrite(r, &path_at, rw, ctx.prefix_match);
    }
}

/// A path rewrite, in a rewrite filter or a redirect; `prefix_match` tells
/// whether the rule matches on a path prefix.
fn rewrite(r: &mut Report, at: &FieldPath, rw: &Rewrite, prefix_match: bool) {
    match &rw.path {
        None => {
            if !rw.host_to_backend_hostname {
                r.add(at, "cannot be empty");
            }
        }
        Some(rewrite::Path::ReplaceFull(p)) => path_value(r, &at.field("replaceFull"), p),
        Some(rewrite::Path::ReplacePrefixMatch(p)) => {
            let prefix_at = at.field("replacePrefixMatch");
            if !prefix_match {
                r.add(&prefix_at, "cannot be used without a match on path prefix");
            }
            path_value(r, &prefix_at, p);
        }
    }
}

/// `Host` and its HTTP/2 spelling `:authority`, which Envoy treats as one.
fn is_host(name: &str) -> bool {
    name.eq_ignore_ascii_case("host") || name == ":authority"
}

/// An RFC 9110 token: the characters a header name may use.
fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}
