//! HTTP route tables: virtual hosts per hostname (with the wildcard
//! redistribution), one Envoy route per match, ordered most specific first.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use envoy_types::pb::envoy::{
    config::{
        core::v3::{
            DataSource, HeaderValue, HeaderValueOption, RuntimeFractionalPercent, data_source,
            header_value_option::HeaderAppendAction,
        },
        route::v3::{
            DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction, Route, RouteAction,
            RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster, header_matcher, query_parameter_matcher,
            redirect_action, route, route_action, route_match, weighted_cluster,
        },
    },
    r#type::{
        matcher::v3::{RegexMatchAndSubstitute, RegexMatcher, StringMatcher, string_matcher},
        v3::{FractionalPercent, fractional_percent::DenominatorType},
    },
};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
use meridian_sync_proto::pb::mesh::{
    HttpMethod,
    mesh_gateway_route::{
        Backend, HttpRoute,
        conf::Route as RouteKind,
        http_route::{
            Match, Rule,
            filter::Filter as F,
            filter::HeaderFilter,
            filter::Rewrite,
            filter::rewrite::Path as RewritePath,
            r#match::{header, path, query},
        },
    },
};

use super::{Ctx, ListenerCtx, MeshSnapshot, host_covers, host_order, hosts_match, policies};
use prost::Message;
use sha2::{Digest, Sha256};

/// Body of a virtual host no route attaches to.
pub const NO_ROUTE_BODY: &str = "This is a Meridian MeshGateway. No routes match this MeshGateway!\n";
/// Sent on every HTTPS response.
const HSTS: &str = "max-age=31536000; includeSubDomains";

/// One MeshGatewayRoute as it applies to a virtual host: its HTTP part
/// and the listener it attached through.
#[derive(Clone, Copy)]
struct RouteRef<'a> {
    route: &'a str,
    http: &'a HttpRoute,
    /// Tags of the listener the route came from (the source of policies).
    source: &'a BTreeMap<String, String>,
    /// The listener is `crossMesh` (clients of other meshes).
    cross_mesh: bool,
}

/// The route configuration `name` for `listeners` (all on `port`).
pub(super) fn route_configuration(
    snapshot: &MeshSnapshot,
    name: &str,
    port: u32,
    listeners: &[&ListenerCtx<'_>],
    https: bool,
    ctx: &mut Ctx,
) -> RouteConfiguration {
    // Virtual host names: every listener hostname, plus route hostnames that
    // narrow a wildcard listener.
    let mut hosts: BTreeSet<String> = listeners.iter().map(|l| l.hostname.clone()).collect();
    for l in listeners {
        for (_, h) in http_routes(l) {
            for rh in &h.hostnames {
                if host_covers(&l.hostname, rh) {
                    hosts.insert(rh.clone());
                }
            }
        }
    }
    let mut hosts: Vec<String> = hosts.into_iter().collect();
    hosts.sort_by_key(|h| host_order(h));

    let mut virtual_hosts = Vec::new();
    for host in &hosts {
        // The listener a host belongs to: the one named so, else the most
        // specific wildcard listener covering it (its plain routes are copied).
        let owner = listeners
            .iter()
            .filter(|l| host_covers(&l.hostname, host))
            .min_by_key(|l| host_order(&l.hostname))
            .map(|l| l.hostname.as_str());
        let mut seen = BTreeSet::new();
        let mut routes = Vec::new();
        for l in listeners.iter().filter(|l| host_covers(&l.hostname, host)) {
            for (route, h) in http_routes(l) {
                let applies = if h.hostnames.is_empty() {
                    owner == Some(l.hostname.as_str())
                } else {
                    h.hostnames.iter().any(|rh| host_covers(rh, host))
                };
                if applies && seen.insert(route) {
                    routes.push(RouteRef { route, http: h, source: &l.tags, cross_mesh: l.spec.cross_mesh });
                }
            }
        }
        virtual_hosts.push(virtual_host(snapshot, name, host, port, &routes, https, ctx));
    }
    RouteConfiguration {
        name: name.to_string(),
        virtual_hosts,
        validate_clusters: Some(BoolValue { value: false }),
        // `Host: app.example.com:8080` picks the virtual host
        // `app.example.com` and still reaches the backend unchanged (the
        // connection manager does not strip the port).
        ignore_port_in_host_matching: true,
        ..Default::default()
    }
}

/// The HTTP routes attached to a listener, by name.
fn http_routes<'a>(l: &'a ListenerCtx<'a>) -> impl Iterator<Item = (&'a str, &'a HttpRoute)> + 'a {
    l.routes.iter().filter_map(|r| match r.spec.conf.as_ref().and_then(|c| c.route.as_ref()) {
        Some(RouteKind::Http(h))
            if h.hostnames.is_empty() || h.hostnames.iter().any(|rh| hosts_match(rh, &l.hostname)) =>
        {
            Some((r.name.as_str(), h))
        }
        _ => None,
    })
}

/// Everything the Envoy routes of one MeshGatewayRoute in one virtual host
/// are built from, besides the mesh and its policies (a change of those
/// empties the whole [`RouteMemo`]): equal keys give equal entries.
#[derive(Debug, Clone, PartialEq)]
struct RouteKey {
    /// The route's HTTP part as written (rules, matches, filters, backends).
    spec: HttpRoute,
    /// The listener port (redirects without a port keep it).
    port: u32,
    /// The listener's merged tags (the source of route policies).
    source: BTreeMap<String, String>,
    cross_mesh: bool,
    /// The route's own PREFIX paths that an EXACT match of the virtual
    /// host names (their exact halves are left out, [`expand_match`]).
    exact: Vec<String>,
}

/// The Envoy routes one MeshGatewayRoute contributes to one virtual host
/// (each with its sort key and encoding), and what building them recorded
/// in the generation's context, replayed when the entry is reused.
#[derive(Debug, Clone, Default)]
struct RouteEntries {
    /// Boxed: a `Route` is over 2 KB, moved several times while sorting
    /// and assembling.
    routes: Vec<(SortKey, Vec<u8>, Box<Route>)>,
    /// Cluster name → destination, for each backend and mirror named.
    clusters: BTreeMap<String, BTreeMap<String, String>>,
    warnings: Vec<String>,
    applied: policies::Applied,
}

/// One cached [`RouteEntries`]: where it was built (route configuration
/// and virtual host) and from what.
#[derive(Debug, Clone)]
struct Slot {
    route_config: String,
    host: String,
    key: RouteKey,
    entries: RouteEntries,
}

/// A proxy's per-route build cache ([`super::Memo`]): the Envoy routes of
/// each MeshGatewayRoute in each virtual host of the previous generation,
/// by route name, with the inputs they were built from. A generation
/// reuses an entry whose [`RouteKey`] is equal and rebuilds the others;
/// entries not used by a generation are dropped after it.
#[derive(Debug, Clone, Default)]
pub(super) struct RouteMemo {
    /// The previous generation's entries.
    prev: HashMap<String, Vec<Slot>>,
    /// This generation's, so far.
    next: HashMap<String, Vec<Slot>>,
    /// Entries reused and built (for tests and the bench).
    pub(super) reused: usize,
    pub(super) built: usize,
}

impl RouteMemo {
    /// Ends a generation: what it used is what the next one may reuse.
    pub(super) fn rotate(&mut self) {
        self.prev = std::mem::take(&mut self.next);
    }

    /// Forgets every entry (the mesh or its policies changed).
    pub(super) fn clear(&mut self) {
        self.prev.clear();
        self.next.clear();
    }

    fn take(&mut self, route: &str, route_config: &str, host: &str) -> Option<Slot> {
        let slots = self.prev.get_mut(route)?;
        let i = slots.iter().position(|s| s.route_config == route_config && s.host == host)?;
        Some(slots.swap_remove(i))
    }
}

/// The route's own PREFIX paths (trimmed) that `exact_paths` holds.
fn exact_key<'a>(h: &'a HttpRoute, exact_paths: &BTreeSet<&str>) -> Vec<&'a str> {
    h.rules
        .iter()
        .flat_map(|r| r.matches.iter())
        .filter_map(|m| m.path.as_ref())
        .filter(|p| path::MatchType::try_from(p.r#match) == Ok(path::MatchType::Prefix))
        .map(|p| p.value.trim_end_matches('/'))
        .filter(|p| !p.is_empty() && exact_paths.contains(p))
        .collect()
}

/// Whether `key` is what the entries of `r` would be built from now.
fn key_matches(key: &RouteKey, r: &RouteRef<'_>, port: u32, exact: &[&str]) -> bool {
    key.port == port
        && key.cross_mesh == r.cross_mesh
        && key.exact.len() == exact.len()
        && key.exact.iter().zip(exact).all(|(a, b)| a == b)
        && key.source == *r.source
        && key.spec == *r.http
}

/// Builds the Envoy routes of `r` in a virtual host, recording the
/// clusters, warnings and policies it adds to `ctx` in the entries too.
fn build_entries(
    snapshot: &MeshSnapshot,
    r: &RouteRef<'_>,
    port: u32,
    exact_paths: &BTreeSet<&str>,
    ctx: &mut Ctx,
) -> RouteEntries {
    let saved_clusters = std::mem::take(&mut ctx.clusters);
    let saved_warnings = std::mem::take(&mut ctx.warnings);
    let saved_applied = std::mem::take(&mut ctx.applied);
    let mut routes = Vec::new();
    for (index, rule) in r.http.rules.iter().enumerate() {
        for (mi, m) in rule.matches.iter().enumerate() {
            let name = route_name(r.route, rule, m);
            // Where a warning points the user: the rule and match as written.
            let at = format!("{}:rules[{index}].matches[{mi}]", r.route);
            for (key, route_match, prefix) in expand_match(m, exact_paths) {
                if let Some(mut route) = build_route(name.clone(), &at, route_match, prefix, rule, port, ctx) {
                    if matches!(route.action, Some(route::Action::Route(_))) {
                        let backends: Vec<_> = rule.backends.iter().map(|b| &b.destination).collect();
                        policies::apply_route(
                            snapshot,
                            r.source,
                            r.cross_mesh,
                            &backends,
                            &mut route,
                            &mut ctx.applied,
                        );
                    }
                    let bytes = route.encode_to_vec();
                    routes.push((key, bytes, Box::new(route)));
                }
            }
        }
    }
    let entries = RouteEntries {
        routes,
        clusters: std::mem::replace(&mut ctx.clusters, saved_clusters),
        warnings: std::mem::replace(&mut ctx.warnings, saved_warnings),
        applied: std::mem::replace(&mut ctx.applied, saved_applied),
    };
    replay(&entries, ctx);
    entries
}

/// Adds what building `entries` recorded to `ctx`, as building them did.
fn replay(entries: &RouteEntries, ctx: &mut Ctx) {
    for (name, destination) in &entries.clusters {
        if !ctx.clusters.contains_key(name) {
            ctx.clusters.insert(name.clone(), destination.clone());
        }
        if !ctx.deps.destinations.contains(destination) {
            ctx.deps.destinations.insert(destination.clone());
        }
    }
    ctx.warnings.extend(entries.warnings.iter().cloned());
    ctx.applied.merge(&entries.applied);
}

fn virtual_host(
    snapshot: &MeshSnapshot,
    route_config: &str,
    host: &str,
    port: u32,
    attached: &[RouteRef<'_>],
    https: bool,
    ctx: &mut Ctx,
) -> VirtualHost {
    // Paths an EXACT match of this host names: a PREFIX for the same path
    // adds no exact half of its own, so the EXACT rule answers that path
    // whatever order the rules come in (Kuma 2.14,
    // `gateway_route_generator.go`, `HandlePrefixMatchesAndPopulatePolicies`).
    let exact_paths: BTreeSet<&str> = attached
        .iter()
        .flat_map(|r| r.http.rules.iter())
        .flat_map(|r| r.matches.iter())
        .filter_map(|m| m.path.as_ref())
        .filter(|p| path::MatchType::try_from(p.r#match) == Ok(path::MatchType::Exact))
        .map(|p| p.value.as_str())
        .collect();
    // Each attached route's entries: reused from the previous generation
    // when built from the same inputs, else built (and kept for the next).
    let mut built: Vec<RouteEntries> = Vec::with_capacity(attached.len());
    let mut slots: Vec<(String, String, RouteKey)> = Vec::new();
    for r in attached {
        let Some(memo) = ctx.routes.as_mut() else {
            built.push(build_entries(snapshot, r, port, &exact_paths, ctx));
            continue;
        };
        let exact = exact_key(r.http, &exact_paths);
        let (rc, vh, key, entries) = match memo.take(r.route, route_config, host) {
            Some(s) if key_matches(&s.key, r, port, &exact) => {
                memo.reused += 1;
                replay(&s.entries, ctx);
                (s.route_config, s.host, s.key, s.entries)
            }
            _ => {
                memo.built += 1;
                let key = RouteKey {
                    spec: r.http.clone(),
                    port,
                    source: r.source.clone(),
                    cross_mesh: r.cross_mesh,
                    exact: exact.iter().map(|p| p.to_string()).collect(),
                };
                let entries = build_entries(snapshot, r, port, &exact_paths, ctx);
                (route_config.to_string(), host.to_string(), key, entries)
            }
        };
        built.push(entries);
        slots.push((rc, vh, key));
    }
    // A strict total order: specificity, then the MeshGatewayRoute's name,
    // then the encoded route (equal bytes are the same route, kept once).
    // Nothing depends on the order rules, routes or resources arrived in.
    // Sorted by reference: the routes themselves are large to move.
    let mut order: Vec<(usize, usize)> =
        built.iter().enumerate().flat_map(|(e, b)| (0..b.routes.len()).map(move |i| (e, i))).collect();
    let at = |&(e, i): &(usize, usize)| {
        let (key, bytes, _) = &built[e].routes[i];
        (key, attached[e].route, bytes)
    };
    order.sort_by(|a, b| at(a).cmp(&at(b)));
    order.dedup_by(|a, b| built[a.0].routes[a.1].1 == built[b.0].routes[b.1].1);
    let keep = ctx.routes.is_some();
    let mut routes: Vec<Route> = Vec::with_capacity(order.len());
    // With the cache, the routes' encodings as the virtual host's `routes`
    // field: the route configuration is then encoded without encoding
    // every route again ([`encode_spliced`]).
    let mut records = Vec::new();
    for (e, i) in order {
        let (_, bytes, route) = &mut built[e].routes[i];
        if keep {
            routes.push(Route::clone(route));
            record(ROUTES_TAG, bytes, &mut records);
        } else {
            routes.push(std::mem::take(&mut **route));
        }
    }
    if let Some(memo) = ctx.routes.as_mut() {
        for ((route_config, host, key), (r, entries)) in slots.into_iter().zip(attached.iter().zip(built)) {
            memo.next.entry(r.route.to_string()).or_default().push(Slot { route_config, host, key, entries });
        }
    }
    let no_route = attached.iter().all(|r| r.http.rules.is_empty());
    if no_route {
        routes.push(Route {
            name: "no-route".into(),
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            action: Some(route::Action::DirectResponse(DirectResponseAction {
                status: 404,
                body: Some(DataSource {
                    specifier: Some(data_source::Specifier::InlineString(NO_ROUTE_BODY.into())),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            ..Default::default()
        });
    }
    let mut vh = VirtualHost {
        name: host.to_string(),
        domains: vec![host.to_string()],
        routes,
        // With Retry policies in the mesh, backends see which attempt a
        // request is (`x-envoy-attempt-count`).
        include_request_attempt_count: snapshot.policies.has_type(meridian_sync_proto::ResourceType::Retry),
        response_headers_to_add: if https {
            vec![header_option("strict-transport-security", HSTS, true)]
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    if keep {
        if no_route && let Some(r) = vh.routes.last() {
            record(ROUTES_TAG, &r.encode_to_vec(), &mut records);
        }
        let routes = std::mem::take(&mut vh.routes);
        let shell = VirtualHost { name: vh.name.clone(), domains: vh.domains.clone(), ..Default::default() };
        let encoded = encode_spliced(&vh, shell.encoded_len(), &records);
        vh.routes = routes;
        ctx.encoded_vhosts.push((route_config.to_string(), encoded));
    }
    vh
}

/// Field number of `VirtualHost.routes` and of `RouteConfiguration.virtual_hosts`.
const ROUTES_TAG: u32 = 3;
const VIRTUAL_HOSTS_TAG: u32 = 2;

/// Appends `bytes` as one length-delimited field `tag` (an element of a
/// repeated message field) to `out`.
fn record(tag: u32, bytes: &[u8], out: &mut Vec<u8>) {
    prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, out);
    prost::encoding::encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// The encoding of `shell` with `records` (encoded elements of one repeated
/// message field) inserted after its first `head` bytes: what encoding
/// `shell` with those elements in that field gives, when every field
/// encoded before it (within `head`) has a smaller number and every one
/// after a greater (prost encodes fields in field-number order). Used for
/// a virtual host (`name` 1, `domains` 2, then `routes` 3) and a route
/// configuration (`name` 1, then `virtual_hosts` 2); the cache's debug
/// check and `a_one_route_change_rebuilds_that_route_only` compare it with
/// prost's own encoding.
fn encode_spliced<M: Message>(shell: &M, head: usize, records: &[u8]) -> Vec<u8> {
    let rest = shell.encode_to_vec();
    let mut out = Vec::with_capacity(rest.len() + records.len());
    out.extend_from_slice(&rest[..head.min(rest.len())]);
    out.extend_from_slice(records);
    out.extend_from_slice(&rest[head.min(rest.len())..]);
    out
}

/// The encoding of route configuration `rc` from the encodings of its
/// virtual hosts (in order), without encoding their routes again.
pub(super) fn encode_route_configuration(rc: &mut RouteConfiguration, vhosts: &[&[u8]]) -> Vec<u8> {
    let mut records = Vec::with_capacity(vhosts.iter().map(|v| v.len() + 6).sum());
    for v in vhosts {
        record(VIRTUAL_HOSTS_TAG, v, &mut records);
    }
    let head = RouteConfiguration { name: rc.name.clone(), ..Default::default() }.encoded_len();
    let virtual_hosts = std::mem::take(&mut rc.virtual_hosts);
    let encoded = encode_spliced(rc, head, &records);
    rc.virtual_hosts = virtual_hosts;
    encoded
}

/// The Envoy route name of one match of one rule: `<route>:<hash>`, the
/// hash (8 hex digits of SHA-256) taken over the encoded rule and match, so
/// the name does not change when rules are reordered.
fn route_name(route: &str, rule: &Rule, m: &Match) -> String {
    let mut h = Sha256::new();
    h.update(rule.encode_to_vec());
    h.update([0xff]);
    h.update(m.encode_to_vec());
    format!("{route}:{}", hex::encode(&h.finalize()[..4]))
}

/// Ordering of routes, most specific first: exact paths, then prefixes,
/// then regexes (longer first within each); then with a method; then more
/// header matches; then more query matches; then by path.
type SortKey = (u8, std::cmp::Reverse<usize>, bool, std::cmp::Reverse<usize>, std::cmp::Reverse<usize>, String);

/// The path match of an Envoy route for a MeshGatewayRoute match, and
/// which part of an element-wise prefix it is (rewrites depend on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PrefixPart {
    /// Not a prefix match.
    None,
    /// The exact `/p` half of the prefix `/p`.
    Exact,
    /// The prefix `/p/` half of the prefix `/p`.
    Slash,
    /// The prefix `/` (also a match without a path).
    Root,
}

/// One match becomes one Envoy route, or two for an element-wise prefix
/// (`/p` exact plus `/p/` prefix; `/` alone stays a prefix). A prefix
/// written with a trailing slash is the same prefix. The exact half is left
/// out when `exact_paths` holds the path (an EXACT match for it exists).
fn expand_match(m: &Match, exact_paths: &BTreeSet<&str>) -> Vec<(SortKey, RouteMatch, PrefixPart)> {
    let mut paths: Vec<(u8, String, route_match::PathSpecifier, PrefixPart)> = Vec::new();
    match m.path.as_ref() {
        None => paths.push((1, "/".into(), route_match::PathSpecifier::Prefix("/".into()), PrefixPart::Root)),
        Some(p) => match path::MatchType::try_from(p.r#match).unwrap_or(path::MatchType::Exact) {
            path::MatchType::Exact => {
                paths.push((0, p.value.clone(), route_match::PathSpecifier::Path(p.value.clone()), PrefixPart::None))
            }
            path::MatchType::Prefix => {
                let trimmed = p.value.trim_end_matches('/');
                if trimmed.is_empty() {
                    paths.push((1, "/".into(), route_match::PathSpecifier::Prefix("/".into()), PrefixPart::Root));
                } else {
                    if !exact_paths.contains(trimmed) {
                        paths.push((
                            0,
                            trimmed.into(),
                            route_match::PathSpecifier::Path(trimmed.into()),
                            PrefixPart::Exact,
                        ));
                    }
                    let slash = format!("{trimmed}/");
                    paths.push((1, slash.clone(), route_match::PathSpecifier::Prefix(slash), PrefixPart::Slash));
                }
            }
            path::MatchType::Regex => paths.push((
                2,
                p.value.clone(),
                route_match::PathSpecifier::SafeRegex(regex(&p.value)),
                PrefixPart::None,
            )),
        },
    }
    let mut headers = Vec::new();
    let method = HttpMethod::try_from(m.method).ok().filter(|x| *x != HttpMethod::None);
    if let Some(method) = method {
        headers.push(HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(exact(
                method.as_str_name(),
            ))),
            ..Default::default()
        });
    }
    for h in &m.headers {
        let (spec, invert) = match header::MatchType::try_from(h.r#match).unwrap_or(header::MatchType::Exact) {
            header::MatchType::Exact => (header_matcher::HeaderMatchSpecifier::StringMatch(exact(&h.value)), false),
            header::MatchType::Regex => {
                (header_matcher::HeaderMatchSpecifier::StringMatch(safe_regex(&h.value)), false)
            }
            header::MatchType::Present => (header_matcher::HeaderMatchSpecifier::PresentMatch(true), false),
            header::MatchType::Absent => (header_matcher::HeaderMatchSpecifier::PresentMatch(true), true),
        };
        headers.push(HeaderMatcher {
            name: h.name.to_ascii_lowercase(),
            header_match_specifier: Some(spec),
            invert_match: invert,
            ..Default::default()
        });
    }
    let query_parameters: Vec<QueryParameterMatcher> = m
        .query_parameters
        .iter()
        .map(|q| QueryParameterMatcher {
            name: q.name.clone(),
            query_parameter_match_specifier: Some(query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(
                match query::MatchType::try_from(q.r#match).unwrap_or(query::MatchType::Exact) {
                    query::MatchType::Exact => exact(&q.value),
                    query::MatchType::Regex => safe_regex(&q.value),
                },
            )),
        })
        .collect();
    paths
        .into_iter()
        .map(|(class, value, spec, part)| {
            let key = (
                class,
                std::cmp::Reverse(value.len()),
                method.is_none(),
                std::cmp::Reverse(m.headers.len()),
                std::cmp::Reverse(query_parameters.len()),
                value,
            );
            let rm = RouteMatch {
                path_specifier: Some(spec),
                headers: headers.clone(),
                query_parameters: query_parameters.clone(),
                ..Default::default()
            };
            (key, rm, part)
        })
        .collect()
}

fn regex(pattern: &str) -> RegexMatcher {
    RegexMatcher { regex: pattern.to_string(), ..Default::default() }
}

fn exact(value: &str) -> StringMatcher {
    StringMatcher { match_pattern: Some(string_matcher::MatchPattern::Exact(value.to_string())), ..Default::default() }
}

fn safe_regex(pattern: &str) -> StringMatcher {
    StringMatcher { match_pattern: Some(string_matcher::MatchPattern::SafeRegex(regex(pattern))), ..Default::default() }
}

/// A header to add, its value literal: Envoy reads `%...%` in added header
/// values as substitution commands (`%DOWNSTREAM_REMOTE_ADDRESS%`) and
/// refuses the route configuration for an unknown one ("Couldn't find valid
/// command"), so a literal `%` is written `%%` (Envoy's
/// `config/core/v3/base.proto`, `HeaderValueOption`; found by the generator
/// fuzz test).
fn header_option(name: &str, value: &str, overwrite: bool) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key: name.to_string(), value: value.replace('%', "%%"), ..Default::default() }),
        append_action: if overwrite {
            HeaderAppendAction::OverwriteIfExistsOrAdd as i32
        } else {
            HeaderAppendAction::AppendIfExistsOrAdd as i32
        },
        ..Default::default()
    }
}

/// Header set/add/remove, as Envoy route fields; `Host` (set or added)
/// becomes a host rewrite, other pseudo-headers are refused.
struct Headers {
    add: Vec<HeaderValueOption>,
    remove: Vec<String>,
    host: Option<String>,
}

fn headers(f: &HeaderFilter, request: bool, ctx: &mut Ctx, route: &str) -> Headers {
    let mut out = Headers { add: Vec::new(), remove: Vec::new(), host: None };
    let sets = f.set.iter().map(|h| (h, true)).chain(f.add.iter().map(|h| (h, false)));
    for (h, overwrite) in sets {
        let name = h.name.to_ascii_lowercase();
        if request && (name == "host" || name == ":authority") {
            out.host = Some(h.value.clone());
        } else if name.starts_with(':') || (request && name == "host") {
            ctx.warn(format!("{route}: header {name:?} cannot be modified; ignored"));
        } else {
            out.add.push(header_option(&name, &h.value, overwrite));
        }
    }
    for name in &f.remove {
        let name = name.to_ascii_lowercase();
        if name.starts_with(':') || name == "host" {
            ctx.warn(format!("{route}: header {name:?} cannot be removed; ignored"));
        } else {
            out.remove.push(name);
        }
    }
    out
}

/// A path rewrite as one part of an element-wise prefix applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PathRewrite {
    /// Replace the whole path (the query stays).
    Full(String),
    /// Replace the matched prefix (or the matched exact path).
    Prefix(String),
    /// The prefix `/` rewritten to `/r`: `/` becomes `/r` and `/x` becomes
    /// `/r/x` (a plain prefix rewrite would turn `/` into `/r/`).
    Root(String),
}

/// What `replaceFull`/`replacePrefixMatch` becomes on `part`; `None` for no
/// rewrite, `Err` for a prefix replacement on a match that is no prefix.
/// Trailing slashes of the replacement do not count, as in Kuma 2.14
/// (`HandlePrefixMatchesAndPopulatePolicies`): for `PREFIX /p` →
/// `/r`, `/p` becomes `/r`, `/p/x` becomes `/r/x`; a replacement `/`
/// turns `/p` into `/` and `/p/x` into `/x`.
fn path_rewrite(p: Option<&RewritePath>, part: PrefixPart) -> Result<Option<PathRewrite>, ()> {
    let v = match p {
        None => return Ok(None),
        Some(RewritePath::ReplaceFull(v)) => return Ok(Some(PathRewrite::Full(v.clone()))),
        Some(RewritePath::ReplacePrefixMatch(v)) => v.trim_end_matches('/'),
    };
    Ok(match part {
        PrefixPart::None => return Err(()),
        PrefixPart::Exact => Some(PathRewrite::Prefix(if v.is_empty() { "/".into() } else { v.into() })),
        PrefixPart::Slash => Some(PathRewrite::Prefix(format!("{v}/"))),
        // `/` → `/`: nothing to do.
        PrefixPart::Root if v.is_empty() => None,
        PrefixPart::Root => Some(PathRewrite::Root(v.into())),
    })
}

/// The regex rewrite of the whole path to `v`.
fn full_rewrite(v: &str) -> RegexMatchAndSubstitute {
    RegexMatchAndSubstitute { pattern: Some(regex("^/.*$")), substitution: v.replace('\\', "\\\\") }
}

/// The regex rewrite of the prefix `/` to `v`: `/` → `v`, `/x` → `v/x`.
fn root_rewrite(v: &str) -> RegexMatchAndSubstitute {
    RegexMatchAndSubstitute {
        pattern: Some(regex("^/$|^(/.+)$")),
        substitution: format!("{}\\1", v.replace('\\', "\\\\")),
    }
}

fn build_route(
    name: String,
    at: &str,
    m: RouteMatch,
    part: PrefixPart,
    rule: &Rule,
    port: u32,
    ctx: &mut Ctx,
) -> Option<Route> {
    let mut route = Route { name: name.clone(), r#match: Some(m), ..Default::default() };
    let mut redirect = None;
    let mut rewrite: Option<&Rewrite> = None;
    let mut mirrors = Vec::new();
    let mut host = None;
    for f in rule.filters.iter().filter_map(|f| f.filter.as_ref()) {
        match f {
            F::RequestHeader(h) => {
                let h = headers(h, true, ctx, at);
                route.request_headers_to_add.extend(h.add);
                route.request_headers_to_remove.extend(h.remove);
                host = h.host.or(host);
            }
            F::ResponseHeader(h) => {
                let h = headers(h, false, ctx, at);
                route.response_headers_to_add.extend(h.add);
                route.response_headers_to_remove.extend(h.remove);
            }
            F::Redirect(r) => redirect = Some(r),
            F::Rewrite(r) => rewrite = Some(r),
            F::Mirror(m) => {
                let Some(b) = m.backend.as_ref() else { continue };
                let percent = m.percentage.as_ref().map_or(100.0, |p| p.value).clamp(0.0, 100.0);
                mirrors.push(route_action::RequestMirrorPolicy {
                    cluster: ctx.cluster_for(&b.destination),
                    runtime_fraction: Some(RuntimeFractionalPercent {
                        default_value: Some(FractionalPercent {
                            numerator: (percent * 10_000.0).round() as u32,
                            denominator: DenominatorType::Million as i32,
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
        }
    }
    if let Some(r) = redirect {
        let code = match r.status_code {
            301 => redirect_action::RedirectResponseCode::MovedPermanently,
            303 => redirect_action::RedirectResponseCode::SeeOther,
            307 => redirect_action::RedirectResponseCode::TemporaryRedirect,
            308 => redirect_action::RedirectResponseCode::PermanentRedirect,
            _ => redirect_action::RedirectResponseCode::Found,
        };
        let mut action = RedirectAction {
            host_redirect: r.hostname.clone(),
            port_redirect: redirect_port(r.port, &r.scheme, port),
            response_code: code as i32,
            strip_query: true,
            scheme_rewrite_specifier: (!r.scheme.is_empty())
                .then(|| redirect_action::SchemeRewriteSpecifier::SchemeRedirect(r.scheme.clone())),
            ..Default::default()
        };
        use redirect_action::PathRewriteSpecifier as P;
        match path_rewrite(r.path.as_ref().and_then(|p| p.path.as_ref()), part) {
            Ok(Some(PathRewrite::Full(v))) => action.path_rewrite_specifier = Some(P::PathRedirect(v)),
            Ok(Some(PathRewrite::Prefix(v))) => action.path_rewrite_specifier = Some(P::PrefixRewrite(v)),
            Ok(Some(PathRewrite::Root(v))) => action.path_rewrite_specifier = Some(P::RegexRewrite(root_rewrite(&v))),
            Ok(None) => {}
            Err(()) => ctx.warn(format!("{at}: replacePrefixMatch needs a prefix path match; ignored")),
        }
        route.action = Some(route::Action::Redirect(action));
        return Some(route);
    }
    let clusters = weighted(&rule.backends, ctx);
    if clusters.is_empty() {
        ctx.warn(format!("{at}: no backends; route skipped"));
        return None;
    }
    let mut action = RouteAction {
        cluster_specifier: Some(route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters,
            ..Default::default()
        })),
        // A backend that resolves to nothing has no cluster: answer 500.
        cluster_not_found_response_code: route_action::ClusterNotFoundResponseCode::InternalServerError as i32,
        request_mirror_policies: mirrors,
        ..Default::default()
    };
    if let Some(h) = host {
        action.host_rewrite_specifier = Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(h));
    }
    if let Some(r) = rewrite {
        if r.host_to_backend_hostname && action.host_rewrite_specifier.is_none() {
            action.host_rewrite_specifier =
                Some(route_action::HostRewriteSpecifier::AutoHostRewrite(BoolValue { value: true }));
        }
        match path_rewrite(r.path.as_ref(), part) {
            Ok(Some(PathRewrite::Full(v))) => action.regex_rewrite = Some(full_rewrite(&v)),
            Ok(Some(PathRewrite::Prefix(v))) => action.prefix_rewrite = v,
            Ok(Some(PathRewrite::Root(v))) => action.regex_rewrite = Some(root_rewrite(&v)),
            Ok(None) => {}
            Err(()) => ctx.warn(format!("{at}: replacePrefixMatch needs a prefix path match; ignored")),
        }
    }
    route.action = Some(route::Action::Route(action));
    Some(route)
}

/// The port of a redirect: the one it names; else the well-known port of
/// the scheme it names (`http` 80, `https` 443; Envoy writes it in
/// `Location`); else the listener's. Gateway API's rule (also the
/// incumbent's MeshHTTPRoute since kumahq/kuma#9669); the incumbent's
/// MeshGatewayRoute keeps the listener's port even when the scheme
/// changes, sending `https://host:8080/` to a port that does not speak TLS.
fn redirect_port(named: u32, scheme: &str, listener: u32) -> u32 {
    match (named, scheme.to_ascii_lowercase().as_str()) {
        (0, "http") => 80,
        (0, "https") => 443,
        (0, _) => listener,
        (p, _) => p,
    }
}

/// Weighted clusters of a rule's backends, by cluster name; equal
/// destinations merge; all-zero weights become equal.
fn weighted(backends: &[Backend], ctx: &mut Ctx) -> Vec<weighted_cluster::ClusterWeight> {
    let mut weights: BTreeMap<String, u32> = BTreeMap::new();
    for b in backends {
        let name = ctx.cluster_for(&b.destination);
        let w = weights.entry(name).or_default();
        *w = w.saturating_add(b.weight);
    }
    if weights.values().all(|w| *w == 0) {
        weights.values_mut().for_each(|w| *w = 1);
    }
    weights
        .into_iter()
        .map(|(name, weight)| weighted_cluster::ClusterWeight {
            name,
            weight: Some(UInt32Value { value: weight }),
            ..Default::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_sync_proto::pb::mesh::mesh_gateway_route::http_route::r#match::Path;

    fn path(kind: path::MatchType, v: &str) -> Match {
        Match { path: Some(Path { r#match: kind as i32, value: v.into() }), ..Default::default() }
    }

    #[test]
    fn prefixes_are_element_wise() {
        let none = BTreeSet::new();
        let parts = expand_match(&path(path::MatchType::Prefix, "/api"), &none);
        let specs: Vec<_> = parts.iter().map(|(_, m, p)| (m.path_specifier.clone(), *p)).collect();
        assert_eq!(
            specs,
            [
                (Some(route_match::PathSpecifier::Path("/api".into())), PrefixPart::Exact),
                (Some(route_match::PathSpecifier::Prefix("/api/".into())), PrefixPart::Slash),
            ]
        );
        assert_eq!(expand_match(&path(path::MatchType::Prefix, "/"), &none).len(), 1);
        assert_eq!(
            expand_match(&Match::default(), &none)[0].1.path_specifier,
            Some(route_match::PathSpecifier::Prefix("/".into()))
        );
        // A trailing slash is the same prefix.
        assert_eq!(expand_match(&path(path::MatchType::Prefix, "/api/"), &none), parts);
    }

    #[test]
    fn an_exact_match_suppresses_the_exact_half_of_a_prefix() {
        let exact: BTreeSet<&str> = ["/api"].into();
        let parts = expand_match(&path(path::MatchType::Prefix, "/api/"), &exact);
        let specs: Vec<_> = parts.iter().map(|(_, m, p)| (m.path_specifier.clone(), *p)).collect();
        assert_eq!(specs, [(Some(route_match::PathSpecifier::Prefix("/api/".into())), PrefixPart::Slash)]);
    }

    #[test]
    fn prefix_replacements_ignore_trailing_slashes() {
        let prefix = |v: &str| Some(RewritePath::ReplacePrefixMatch(v.into()));
        for r in ["/a/b", "/a/b/"] {
            assert_eq!(
                path_rewrite(prefix(r).as_ref(), PrefixPart::Exact),
                Ok(Some(PathRewrite::Prefix("/a/b".into())))
            );
            assert_eq!(
                path_rewrite(prefix(r).as_ref(), PrefixPart::Slash),
                Ok(Some(PathRewrite::Prefix("/a/b/".into())))
            );
            assert_eq!(path_rewrite(prefix(r).as_ref(), PrefixPart::Root), Ok(Some(PathRewrite::Root("/a/b".into()))));
        }
        assert_eq!(path_rewrite(prefix("/").as_ref(), PrefixPart::Exact), Ok(Some(PathRewrite::Prefix("/".into()))));
        assert_eq!(path_rewrite(prefix("/").as_ref(), PrefixPart::Slash), Ok(Some(PathRewrite::Prefix("/".into()))));
        assert_eq!(path_rewrite(prefix("/").as_ref(), PrefixPart::Root), Ok(None));
        assert_eq!(path_rewrite(prefix("/x").as_ref(), PrefixPart::None), Err(()));
    }

    #[test]
    fn redirect_port_follows_the_scheme_when_none_is_named() {
        assert_eq!(redirect_port(0, "", 8080), 8080);
        assert_eq!(redirect_port(0, "https", 8080), 443);
        assert_eq!(redirect_port(0, "HTTP", 8443), 80);
        assert_eq!(redirect_port(0, "ws", 8080), 8080);
        assert_eq!(redirect_port(9443, "https", 8080), 9443);
    }

    #[test]
    fn ordering_is_most_specific_first() {
        let mut keys: Vec<(SortKey, &str)> = [
            (path(path::MatchType::Regex, "/a.*"), "regex"),
            (path(path::MatchType::Prefix, "/"), "root"),
            (path(path::MatchType::Exact, "/a"), "exact-short"),
            (path(path::MatchType::Exact, "/abc"), "exact-long"),
            (Match { method: HttpMethod::Get as i32, ..path(path::MatchType::Prefix, "/") }, "root-get"),
        ]
        .iter()
        .map(|(m, n)| (expand_match(m, &BTreeSet::new()).remove(0).0, *n))
        .collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        let names: Vec<&str> = keys.iter().map(|k| k.1).collect();
        assert_eq!(names, ["exact-long", "exact-short", "root-get", "root", "regex"]);
    }
}
