//! Checks on generated configuration, before it is sent: whatever Envoy
//! would reject (NACK) is dropped here, at the smallest scope that fixes it
//! (one route, one filter chain), with a warning, so one bad value never
//! costs the rest of the gateway its configuration.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::{
    core::v3::HeaderValueOption,
    route::v3::{HeaderMatcher, Route, header_matcher, query_parameter_matcher, route, route_action, route_match},
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};

use super::ProxyConfig;

/// Drops invalid routes, duplicate names and dangling route configurations.
/// Returns the names of the route configurations it changed or dropped.
pub(super) fn prune(config: &mut ProxyConfig) -> BTreeSet<String> {
    let mut changed = BTreeSet::new();
    let mut warnings = Vec::new();
    let mut names = BTreeSet::new();
    config.listeners.retain(|l| {
        let fresh = names.insert(l.name.clone());
        if !fresh {
            warnings.push(format!("listener {}: duplicate name; dropped", l.name));
        }
        fresh && !l.filter_chains.is_empty()
    });
    for l in &mut config.listeners {
        let mut seen = BTreeSet::new();
        l.filter_chains.retain(|c| {
            // The whole match (server names, transport and application
            // protocols): two chains with equal matches are refused.
            let key = c.filter_chain_match.as_ref().map(prost::Message::encode_to_vec).unwrap_or_default();
            let fresh = seen.insert(key);
            if !fresh {
                warnings.push(format!("listener {}: duplicate filter chain match; dropped", l.name));
            }
            fresh
        });
    }
    let mut names = BTreeSet::new();
    config.routes.retain(|r| {
        let fresh = names.insert(r.name.clone());
        if !fresh {
            changed.insert(r.name.clone());
        }
        fresh
    });
    for rc in &mut config.routes {
        let before =
            (rc.virtual_hosts.len(), rc.virtual_hosts.iter().map(|v| v.routes.len() + v.domains.len()).sum::<usize>());
        let mut domains = BTreeSet::new();
        for vh in &mut rc.virtual_hosts {
            vh.domains.retain(|d| {
                let ok = valid_domain(d) && domains.insert(d.clone());
                if !ok {
                    warnings.push(format!("{}: domain {d:?} is invalid or duplicated; dropped", rc.name));
                }
                ok
            });
            vh.routes.retain(|r| match route_problem(r) {
                None => true,
                Some(p) => {
                    warnings.push(format!("{}: route {}: {p}; dropped", rc.name, r.name));
                    false
                }
            });
        }
        rc.virtual_hosts.retain(|vh| !vh.domains.is_empty());
        let after =
            (rc.virtual_hosts.len(), rc.virtual_hosts.iter().map(|v| v.routes.len() + v.domains.len()).sum::<usize>());
        if before != after {
            changed.insert(rc.name.clone());
        }
    }
    let keep = first_of_each(config.clusters.iter().map(|c| c.name.as_str()));
    if keep.contains(&false) {
        let mut keep = keep.into_iter();
        config.clusters.retain(|_| keep.next().unwrap_or(true));
    }
    let keep = first_of_each(config.endpoints.iter().map(|c| c.cluster_name.as_str()));
    if keep.contains(&false) {
        let mut keep = keep.into_iter();
        config.endpoints.retain(|_| keep.next().unwrap_or(true));
    }
    config.warnings.extend(warnings);
    changed
}

/// For each name in order, whether it is the first of that name.
fn first_of_each<'a>(names: impl Iterator<Item = &'a str>) -> Vec<bool> {
    let mut seen = std::collections::HashSet::new();
    names.map(|n| seen.insert(n)).collect()
}

/// Envoy's domain rule: non-empty, at most one `*`, at the start or the end.
fn valid_domain(d: &str) -> bool {
    let stars = d.matches('*').count();
    !d.is_empty() && (stars == 0 || (stars == 1 && (d.starts_with('*') || d.ends_with('*'))))
}

fn route_problem(r: &Route) -> Option<String> {
    let mut problems: Vec<Option<String>> = Vec::new();
    if let Some(m) = r.r#match.as_ref() {
        if let Some(route_match::PathSpecifier::SafeRegex(re)) = &m.path_specifier {
            problems.push(check_regex(&re.regex));
        }
        problems.extend(m.headers.iter().map(header_matcher_problem));
        for q in &m.query_parameters {
            if q.name.is_empty() {
                problems.push(Some("empty query parameter name".into()));
            }
            if let Some(query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(s)) =
                &q.query_parameter_match_specifier
            {
                problems.push(string_matcher_problem(s));
            }
        }
    }
    problems.extend(r.request_headers_to_add.iter().chain(&r.response_headers_to_add).map(header_problem));
    if let Some(route::Action::Route(a)) = &r.action {
        if let Some(re) = a.regex_rewrite.as_ref().and_then(|rr| rr.pattern.as_ref()) {
            problems.push(check_regex(&re.regex));
        }
        if let Some(route_action::ClusterSpecifier::WeightedClusters(w)) = &a.cluster_specifier {
            let total: u64 = w.clusters.iter().map(|c| u64::from(c.weight.as_ref().map_or(0, |w| w.value))).sum();
            if total == 0 || total > u64::from(u32::MAX) {
                problems.push(Some(format!("backend weights add up to {total}; they must be in [1, {}]", u32::MAX)));
            }
        }
    }
    problems.into_iter().flatten().next()
}

/// `Some(problem)` when Envoy would refuse the pattern.
fn check_regex(pattern: &str) -> Option<String> {
    match regex::Regex::new(pattern) {
        Ok(_) => None,
        Err(e) => {
            Some(format!("invalid regular expression {pattern:?}: {}", e.to_string().lines().last().unwrap_or("error")))
        }
    }
}

fn string_matcher_problem(s: &StringMatcher) -> Option<String> {
    match &s.match_pattern {
        Some(string_matcher::MatchPattern::SafeRegex(re)) => check_regex(&re.regex),
        _ => None,
    }
}

fn header_matcher_problem(h: &HeaderMatcher) -> Option<String> {
    if !valid_header_name(&h.name) {
        return Some(format!("invalid header name {:?}", h.name));
    }
    match &h.header_match_specifier {
        Some(header_matcher::HeaderMatchSpecifier::StringMatch(s)) => string_matcher_problem(s),
        _ => None,
    }
}

fn header_problem(o: &HeaderValueOption) -> Option<String> {
    let h = o.header.as_ref()?;
    if !valid_header_name(&h.key) {
        return Some(format!("invalid header name {:?}", h.key));
    }
    if h.value.bytes().any(|b| b == 0 || b == b'\r' || b == b'\n') {
        return Some(format!("header {:?}: value holds a NUL, CR or LF", h.key));
    }
    None
}

/// RFC 9110 token characters (Envoy's HTTP_HEADER_NAME), an optional
/// leading `:` for pseudo-headers.
fn valid_header_name(name: &str) -> bool {
    let n = name.strip_prefix(':').unwrap_or(name);
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_|~`".contains(&b))
}
