//! Connection policies on a builtin gateway: which policy of each type
//! applies where, and what it changes in the Envoy configuration.
//!
//! ```text
//!   route rule (listener tags = source, its backends = destinations)
//!     Timeout (request/stream), Retry, RateLimit, FaultInjection,
//!     TrafficPermission ─▶ the Envoy route (metadata `io.meridian.policies`)
//!   cluster (gateway tags = source, the cluster's tag set = destination)
//!     CircuitBreaker, HealthCheck, Timeout (connect) ─▶ the Envoy cluster
//!   listener (listener tags = source, any destination)
//!     TrafficLog ─▶ access log of the connection manager / tcp_proxy
//! ```
//!
//! **Selection** (one rule for every type): a policy applies when one of
//! its `sources` selectors matches the source tags and one of its
//! `destinations` selectors matches *every* backend of the rule (or the
//! cluster's tags). A rule whose backends are all one service is thus
//! matched by that service's policies; a rule over several services only by
//! policies whose destination is `kuma.io/service: *` (the incumbent's
//! heuristic for routes over several services, `match/policy.go`). Of the
//! policies that apply, the most specific wins: the most tags in the best
//! matching source selector plus the best destination selector, then the
//! most exact (non-`*`) values; a tie goes to the **older** policy
//! (creation time), then to the smaller name. Unlike the incumbent (newest
//! for one destination, oldest for several; a RateLimit without
//! `kuma.io/service` never applies), this one rule holds everywhere.
//!
//! The chosen policies are named in the Envoy resource's metadata
//! (`filter_metadata["io.meridian.policies"]`, type → policy name), so a
//! config dump shows which policy applied where. A policy whose source
//! selects this gateway but that applies to nothing is reported in the
//! gateway's warnings.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::{
    accesslog::v3::{AccessLog, access_log},
    cluster::v3::{CircuitBreakers, Cluster, OutlierDetection, circuit_breakers},
    core::v3::{
        DataSource, HeaderValue, HeaderValueOption, HealthCheck as EnvoyHealthCheck, Metadata, RoutingPriority,
        RuntimeFractionalPercent, SubstitutionFormatString, data_source, header_value_option, health_check,
        substitution_format_string,
    },
    rbac::v3::Rbac,
    route::v3::{HeaderMatcher, RetryPolicy, Route, RouteAction, header_matcher, retry_policy, route, route_action},
};
use envoy_types::pb::envoy::extensions::{
    access_loggers::file::v3::{FileAccessLog, file_access_log},
    filters::{
        common::fault::v3::{FaultDelay, FaultRateLimit, fault_delay, fault_rate_limit},
        http::{
            fault::v3::{FaultAbort, HttpFault, fault_abort},
            local_ratelimit::v3::LocalRateLimit,
        },
    },
};
use envoy_types::pb::envoy::r#type::v3::{
    FractionalPercent, HttpStatus, Int64Range, Percent, TokenBucket, fractional_percent::DenominatorType,
};
use envoy_types::pb::google::protobuf::{
    BoolValue, Duration, Struct, UInt32Value, Value as PbValue, value::Kind as PbKind,
};
use envoy_types::util::pack_any;
use meridian_sync_proto::{
    ResourceType, Spec,
    pb::mesh::{self, HttpMethod, HttpRetryOn, Selector},
    validate::{LogTarget, bandwidth_kbps, log_target},
};

use super::{Item, MeshSnapshot, PROTOCOL_TAG, SERVICE_TAG, select::rank};

/// The metadata namespace naming the policies applied to a route or cluster.
pub const METADATA_KEY: &str = "io.meridian.policies";
/// Envoy's HTTP filter names for the per-route policies.
pub(super) const RATE_LIMIT_FILTER: &str = "envoy.filters.http.local_ratelimit";
pub(super) const FAULT_FILTER: &str = "envoy.filters.http.fault";
/// What a request a TrafficPermission does not allow gets (Envoy's RBAC
/// filter answers the same).
pub const DENIED_BODY: &str = "RBAC: access denied";
/// The incumbent's default access-log format (`pkg/envoy/accesslog`).
const DEFAULT_LOG_FORMAT: &str = "[%START_TIME%] %KUMA_MESH% \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% \"%REQ(USER-AGENT)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"";

/// The policies of one mesh, by type then name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policies {
    by_type: BTreeMap<ResourceType, BTreeMap<String, Item<Spec>>>,
}

impl Policies {
    /// Inserts or replaces a policy; `false` when `spec` is not one.
    pub fn upsert(&mut self, name: &str, creation_time: i64, spec: &Spec) -> bool {
        let ty = spec.resource_type();
        if !ty.is_policy() {
            return false;
        }
        let item = Item { name: name.to_string(), creation_time, spec: spec.clone() };
        self.by_type.entry(ty).or_default().insert(name.to_string(), item);
        true
    }

    /// Removes a policy; whether it was there.
    pub fn remove(&mut self, ty: ResourceType, name: &str) -> bool {
        self.by_type.get_mut(&ty).is_some_and(|m| m.remove(name).is_some())
    }

    /// Whether the mesh has a policy of type `ty`.
    pub fn has_type(&self, ty: ResourceType) -> bool {
        self.by_type.get(&ty).is_some_and(|m| !m.is_empty())
    }

    fn of(&self, ty: ResourceType) -> impl Iterator<Item = &Item<Spec>> {
        self.by_type.get(&ty).into_iter().flat_map(|m| m.values())
    }

    fn all(&self) -> impl Iterator<Item = &Item<Spec>> {
        self.by_type.values().flat_map(|m| m.values())
    }
}

/// `sources` and `destinations` of a policy spec.
fn selectors(spec: &Spec) -> (&[Selector], &[Selector]) {
    match spec {
        Spec::Timeout(p) => (&p.sources, &p.destinations),
        Spec::Retry(p) => (&p.sources, &p.destinations),
        Spec::CircuitBreaker(p) => (&p.sources, &p.destinations),
        Spec::HealthCheck(p) => (&p.sources, &p.destinations),
        Spec::RateLimit(p) => (&p.sources, &p.destinations),
        Spec::FaultInjection(p) => (&p.sources, &p.destinations),
        Spec::TrafficPermission(p) => (&p.sources, &p.destinations),
        Spec::TrafficLog(p) => (&p.sources, &p.destinations),
        _ => (&[], &[]),
    }
}

/// How specific a match is: (tags, exact values) of the best source
/// selector plus the best destination selector.
type Specificity = (usize, usize);

/// The specificity of `policy` for `source` and every one of
/// `destinations` (`None`: it does not apply). A destination selector must
/// match all of them; an empty list matches any destination selector.
fn applies(
    policy: &Item<Spec>,
    source: &BTreeMap<String, String>,
    destinations: &[&BTreeMap<String, String>],
) -> Option<Specificity> {
    let (sources, dests) = selectors(&policy.spec);
    let src = sources.iter().filter_map(|s| rank(&s.r#match, source)).max()?;
    let dst = dests
        .iter()
        .filter_map(|s| {
            let ranks: Option<Vec<_>> = destinations.iter().map(|d| rank(&s.r#match, d)).collect();
            ranks.map(|_| {
                let exact = s.r#match.values().filter(|v| *v != "*").count();
                (s.r#match.len(), exact)
            })
        })
        .max()?;
    Some((src.0 + dst.0, src.1 + dst.1))
}

/// The policy of type `ty` for `source` → `destinations`, by the rule in
/// the module docs: most specific, then oldest, then smallest name.
pub fn select<'a>(
    policies: &'a Policies,
    ty: ResourceType,
    source: &BTreeMap<String, String>,
    destinations: &[&BTreeMap<String, String>],
) -> Option<&'a Item<Spec>> {
    policies
        .of(ty)
        .filter_map(|p| applies(p, source, destinations).map(|s| (s, p)))
        .min_by(|(sa, a), (sb, b)| {
            sb.cmp(sa).then(a.creation_time.cmp(&b.creation_time)).then_with(|| a.name.cmp(&b.name))
        })
        .map(|(_, p)| p)
}

/// Policies chosen while generating one gateway: what to name in metadata
/// and which policies applied somewhere.
#[derive(Debug, Clone, Default)]
pub(super) struct Applied {
    used: BTreeSet<(ResourceType, String)>,
}

impl Applied {
    /// The policies (type, name) recorded so far.
    pub(super) fn used(&self) -> &BTreeSet<(ResourceType, String)> {
        &self.used
    }

    /// Adds the policies `other` recorded.
    pub(super) fn merge(&mut self, other: &Applied) {
        for used in &other.used {
            if !self.used.contains(used) {
                self.used.insert(used.clone());
            }
        }
    }

    fn record(&mut self, named: &mut BTreeMap<String, String>, ty: ResourceType, name: &str) {
        self.used.insert((ty, name.to_string()));
        named.insert(ty.name().to_string(), name.to_string());
    }

    /// Warnings for policies whose source selects one of `sources` (the
    /// gateway's listener tags) but that applied nowhere.
    pub(super) fn unused(&self, policies: &Policies, sources: &[BTreeMap<String, String>]) -> Vec<String> {
        policies
            .all()
            .filter(|p| {
                let (src, _) = selectors(&p.spec);
                sources.iter().any(|t| src.iter().any(|s| rank(&s.r#match, t).is_some()))
            })
            .filter(|p| !self.used.contains(&(p.spec.resource_type(), p.name.clone())))
            .map(|p| {
                format!(
                    "{} {:?} selects this gateway but no backend, cluster or listener of it: it applies nowhere",
                    p.spec.resource_type(),
                    p.name
                )
            })
            .collect()
    }
}

/// `filter_metadata["io.meridian.policies"].applied = "Retry=r-1,Timeout=t-1"`:
/// one string, sorted by type, because Envoy's metadata maps are hash maps
/// (several entries would encode in a different order each time, and
/// change the resource's content-hash version).
fn metadata(named: &BTreeMap<String, String>) -> Option<Metadata> {
    if named.is_empty() {
        return None;
    }
    let applied: Vec<String> = named.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let fields = [("applied".to_string(), PbValue { kind: Some(PbKind::StringValue(applied.join(","))) })].into();
    Some(Metadata { filter_metadata: [(METADATA_KEY.to_string(), Struct { fields })].into(), ..Default::default() })
}

fn dur(d: &pbjson_types::Duration) -> Duration {
    Duration { seconds: d.seconds, nanos: d.nanos }
}

fn u32v(v: Option<&pbjson_types::UInt32Value>) -> Option<UInt32Value> {
    v.map(|v| UInt32Value { value: v.value })
}

fn percent(p: f64) -> FractionalPercent {
    FractionalPercent {
        numerator: (p.clamp(0.0, 100.0) * 10_000.0).round() as u32,
        denominator: DenominatorType::Million as i32,
    }
}

/// Applies the route-level policies to an Envoy route that forwards to
/// `backends` (the destinations of the rule) from a listener with tags
/// `source`. A TrafficPermission that allows none of them turns the route
/// into a 403.
/// On a `crossMesh` listener (`cross_mesh`), a backend is also allowed by
/// a permission with a source in another mesh ([`cross_mesh_rbac`] checks
/// the caller's certificate).
pub(super) fn apply_route(
    snapshot: &MeshSnapshot,
    source: &BTreeMap<String, String>,
    cross_mesh: bool,
    backends: &[&BTreeMap<String, String>],
    route: &mut Route,
    applied: &mut Applied,
) {
    let policies = &snapshot.policies;
    let mut named = BTreeMap::new();
    // An HTTP route's backends speak HTTP: a destination selector naming
    // `kuma.io/protocol: http` (FaultInjection requires one) matches them
    // unless the backend says otherwise.
    let raw = backends;
    let with_protocol: Vec<BTreeMap<String, String>> = backends
        .iter()
        .map(|b| {
            let mut b = (*b).clone();
            b.entry(PROTOCOL_TAG.to_string()).or_insert_with(|| "http".to_string());
            b
        })
        .collect();
    let backends: Vec<&BTreeMap<String, String>> = with_protocol.iter().collect();
    let backends = backends.as_slice();
    // TrafficPermission, per backend: each must be allowed by some
    // permission (with none in the mesh, everything is: the incumbent's
    // default `allow-all-<mesh>`). Denied backends leave the route; when
    // none is left the route answers 403 as Envoy's RBAC filter does.
    let mut denied = Vec::new();
    if policies.has_type(ResourceType::TrafficPermission) {
        for (i, b) in backends.iter().enumerate() {
            let chosen = select(policies, ResourceType::TrafficPermission, source, &[b])
                .or_else(|| cross_mesh.then(|| cross_mesh_permission(snapshot, b)).flatten());
            match chosen {
                Some(p) => applied.record(&mut named, ResourceType::TrafficPermission, &p.name),
                None => denied.push(i),
            }
        }
    }
    if !denied.is_empty() {
        let clusters: Vec<String> = denied.iter().map(|i| super::clusters::cluster_name(raw[*i])).collect();
        let left = match route.action.as_mut() {
            Some(route::Action::Route(a)) => match a.cluster_specifier.as_mut() {
                Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
                    w.clusters.retain(|c| !clusters.contains(&c.name));
                    w.clusters.len()
                }
                _ => 0,
            },
            _ => 0,
        };
        if left == 0 {
            route.action =
                Some(route::Action::DirectResponse(envoy_types::pb::envoy::config::route::v3::DirectResponseAction {
                    status: 403,
                    body: Some(DataSource {
                        specifier: Some(data_source::Specifier::InlineString(DENIED_BODY.into())),
                        ..Default::default()
                    }),
                    ..Default::default()
                }));
            named.insert("TrafficPermission".into(), "none:denied".into());
            route.metadata = metadata(&named);
            return;
        }
    }
    let Some(route::Action::Route(action)) = route.action.as_mut() else { return };
    if let Some(p) = select(policies, ResourceType::Timeout, source, backends)
        && let Spec::Timeout(t) = &p.spec
        && let Some(conf) = &t.conf
    {
        let all_grpc =
            !backends.is_empty() && backends.iter().all(|b| b.get(PROTOCOL_TAG).is_some_and(|p| p == "grpc"));
        let route_level = |h: &mesh::timeout::conf::Http| {
            h.request_timeout.is_some() || h.stream_idle_timeout.is_some() || h.max_stream_duration.is_some()
        };
        let http = conf.http.as_ref().filter(|h| route_level(h));
        let grpc = conf.grpc.as_ref().filter(|_| all_grpc);
        if http.is_some() || grpc.is_some() {
            applied.record(&mut named, ResourceType::Timeout, &p.name);
        }
        if let Some(http) = http {
            timeout_route(http, action);
        }
        if let Some(grpc) = grpc {
            timeout_route_grpc(grpc, action);
        }
    }
    if let Some(p) = select(policies, ResourceType::Retry, source, backends)
        && let Spec::Retry(r) = &p.spec
        && let Some(http) = r.conf.as_ref().and_then(|c| c.http.as_ref())
    {
        applied.record(&mut named, ResourceType::Retry, &p.name);
        action.retry_policy = Some(retry_policy(http));
    }
    if let Some(p) = select(policies, ResourceType::RateLimit, source, backends)
        && let Spec::RateLimit(r) = &p.spec
        && let Some(http) = r.conf.as_ref().and_then(|c| c.http.as_ref())
    {
        applied.record(&mut named, ResourceType::RateLimit, &p.name);
        route.typed_per_filter_config.insert(RATE_LIMIT_FILTER.into(), pack_any(rate_limit(&p.name, http)));
    }
    if let Some(p) = select(policies, ResourceType::FaultInjection, source, backends)
        && let Spec::FaultInjection(f) = &p.spec
        && let Some(conf) = &f.conf
    {
        applied.record(&mut named, ResourceType::FaultInjection, &p.name);
        // On each weighted cluster (Envoy prefers it to the route's), so
        // that no per-filter map holds two entries (hash-map order).
        let fault = pack_any(fault(conf));
        if let Some(route_action::ClusterSpecifier::WeightedClusters(w)) = action.cluster_specifier.as_mut() {
            for c in &mut w.clusters {
                c.typed_per_filter_config.insert(FAULT_FILTER.into(), fault.clone());
            }
        }
    }
    route.metadata = metadata(&named);
}

/// Timeout's cluster part, as the incumbent's cluster `TimeoutConfigurer`:
/// `connectTimeout` → `connect_timeout`; `http.idleTimeout` → the upstream
/// HTTP protocol options' `common_http_protocol_options.idle_timeout` (a
/// pooled upstream connection with no stream for that long is closed);
/// `http.maxStreamDuration`, or `grpc.maxStreamDuration` for a `grpc`
/// destination (the incumbent's backwards compatibility), →
/// `common_http_protocol_options.max_stream_duration`. The protocol options
/// keep the cluster's upstream protocol ([`upstream_protocol`]). Whether
/// anything was set.
fn timeout_cluster(conf: &mesh::timeout::Conf, protocol: Option<&str>, cluster: &mut Cluster) -> bool {
    let mut changed = false;
    if let Some(d) = &conf.connect_timeout {
        cluster.connect_timeout = Some(dur(d));
        changed = true;
    }
    let grpc = protocol == Some("grpc");
    let http = conf.http.as_ref();
    let idle = http.and_then(|h| h.idle_timeout.as_ref());
    let max_stream = http
        .and_then(|h| h.max_stream_duration.as_ref())
        .or_else(|| grpc.then(|| conf.grpc.as_ref().and_then(|g| g.max_stream_duration.as_ref())).flatten());
    if idle.is_none() && max_stream.is_none() {
        return changed;
    }
    upstream_protocol(protocol, idle, max_stream, cluster);
    true
}

/// Sets the cluster's upstream HTTP protocol options
/// (`typed_extension_protocol_options`
/// `envoy.extensions.upstreams.http.v3.HttpProtocolOptions`): HTTP/2
/// upstream (`explicit_http_config.http2_protocol_options`, cleartext
/// h2c or over mesh mTLS) for a destination whose `kuma.io/protocol` is
/// `http2` or `grpc`, as the incumbent's cluster `Http2Configurer` (Kuma
/// 2.14 `pkg/xds/envoy/clusters`), else HTTP/1.1; with the Timeout
/// policy's `idle` and `max_stream` durations in its
/// `common_http_protocol_options`. Without any of them the cluster keeps
/// Envoy's default (HTTP/1.1, no options).
pub(super) fn upstream_protocol(
    protocol: Option<&str>,
    idle: Option<&pbjson_types::Duration>,
    max_stream: Option<&pbjson_types::Duration>,
    cluster: &mut Cluster,
) {
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
        HttpProtocolOptions,
        http_protocol_options::{ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config::ProtocolConfig},
    };
    let h2 = matches!(protocol, Some("http2" | "grpc"));
    if !h2 && idle.is_none() && max_stream.is_none() {
        return;
    }
    let common = (idle.is_some() || max_stream.is_some()).then(|| {
        envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions {
            idle_timeout: idle.map(dur),
            max_stream_duration: max_stream.map(dur),
            ..Default::default()
        }
    });
    let protocol_config = if h2 {
        ProtocolConfig::Http2ProtocolOptions(Default::default())
    } else {
        ProtocolConfig::HttpProtocolOptions(Default::default())
    };
    let options = HttpProtocolOptions {
        common_http_protocol_options: common,
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(protocol_config),
        })),
        ..Default::default()
    };
    cluster
        .typed_extension_protocol_options
        .insert("envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(), pack_any(options));
}

/// Timeout's `grpc` section on a route whose backends are all `grpc`: its
/// `streamIdleTimeout` and `maxStreamDuration` where `http` sets none (the
/// incumbent's deprecated section, kept for such services).
fn timeout_route_grpc(grpc: &mesh::timeout::conf::Grpc, action: &mut RouteAction) {
    if action.idle_timeout.is_none()
        && let Some(d) = &grpc.stream_idle_timeout
    {
        action.idle_timeout = Some(dur(d));
    }
    if action.max_stream_duration.is_none()
        && let Some(d) = &grpc.max_stream_duration
    {
        action.max_stream_duration =
            Some(route_action::MaxStreamDuration { max_stream_duration: Some(dur(d)), ..Default::default() });
    }
}

fn timeout_route(http: &mesh::timeout::conf::Http, action: &mut RouteAction) {
    if let Some(d) = &http.request_timeout {
        action.timeout = Some(dur(d));
    }
    if let Some(d) = &http.stream_idle_timeout {
        action.idle_timeout = Some(dur(d));
    }
    if let Some(d) = &http.max_stream_duration {
        action.max_stream_duration =
            Some(route_action::MaxStreamDuration { max_stream_duration: Some(dur(d)), ..Default::default() });
    }
}

/// Envoy's `retry_on` names of the incumbent's enum.
fn retry_on_name(on: HttpRetryOn) -> &'static str {
    match on {
        HttpRetryOn::All5xx => "5xx",
        HttpRetryOn::GatewayError => "gateway-error",
        HttpRetryOn::Reset => "reset",
        HttpRetryOn::ConnectFailure => "connect-failure",
        HttpRetryOn::EnvoyRatelimited => "envoy-ratelimited",
        HttpRetryOn::Retriable4xx => "retriable-4xx",
        HttpRetryOn::RefusedStream => "refused-stream",
        HttpRetryOn::RetriableStatusCodes => "retriable-status-codes",
        HttpRetryOn::RetriableHeaders => "retriable-headers",
        HttpRetryOn::Http3PostConnectFailure => "http3-post-connect-failure",
    }
}

/// A route retry policy. Without `retryOn`: the incumbent's default
/// (`gateway-error,connect-failure,refused-stream`), plus
/// `retriable-status-codes` when codes are listed. Every protocol gets one
/// (the incumbent gives `http2` services none).
fn retry_policy(http: &mesh::retry::conf::Http) -> RetryPolicy {
    let mut on: Vec<&str> =
        http.retry_on.iter().filter_map(|o| HttpRetryOn::try_from(*o).ok()).map(retry_on_name).collect();
    if on.is_empty() {
        on = vec!["gateway-error", "connect-failure", "refused-stream"];
        if !http.retriable_status_codes.is_empty() {
            on.push("retriable-status-codes");
        }
    }
    RetryPolicy {
        retry_on: on.join(","),
        num_retries: u32v(http.num_retries.as_ref()),
        per_try_timeout: http.per_try_timeout.as_ref().map(dur),
        retriable_status_codes: http.retriable_status_codes.clone(),
        retry_back_off: http.back_off.as_ref().and_then(|b| {
            Some(retry_policy::RetryBackOff {
                base_interval: Some(dur(b.base_interval.as_ref()?)),
                max_interval: b.max_interval.as_ref().map(dur),
            })
        }),
        retriable_request_headers: http
            .retriable_methods
            .iter()
            .filter_map(|m| HttpMethod::try_from(*m).ok())
            .filter(|m| *m != HttpMethod::None)
            .map(|m| HeaderMatcher {
                name: ":method".into(),
                header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                    envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher {
                        match_pattern: Some(
                            envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern::Exact(
                                m.as_str_name().into(),
                            ),
                        ),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn always() -> Option<RuntimeFractionalPercent> {
    Some(RuntimeFractionalPercent {
        default_value: Some(FractionalPercent { numerator: 100, denominator: DenominatorType::Hundred as i32 }),
        runtime_key: String::new(),
    })
}

/// A local token bucket of `requests` tokens refilled every `interval`,
/// enforced on every request of the route.
fn rate_limit(name: &str, http: &mesh::rate_limit::conf::Http) -> LocalRateLimit {
    let on = http.on_rate_limit.as_ref();
    LocalRateLimit {
        stat_prefix: format!("rate_limit_{}", name.replace([':', '*'], "_")),
        status: on.and_then(|o| o.status.as_ref()).map(|s| HttpStatus { code: s.value as i32 }),
        token_bucket: Some(TokenBucket {
            max_tokens: http.requests,
            tokens_per_fill: Some(UInt32Value { value: http.requests }),
            fill_interval: http.interval.as_ref().map(dur),
        }),
        filter_enabled: always(),
        filter_enforced: always(),
        response_headers_to_add: on
            .map(|o| o.headers.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|h| HeaderValueOption {
                header: Some(HeaderValue { key: h.key.clone(), value: h.value.clone(), ..Default::default() }),
                append_action: if h.append.as_ref().is_some_and(|a| a.value) {
                    header_value_option::HeaderAppendAction::AppendIfExistsOrAdd as i32
                } else {
                    header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32
                },
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn fault(conf: &mesh::fault_injection::Conf) -> HttpFault {
    HttpFault {
        delay: conf.delay.as_ref().and_then(|d| {
            Some(FaultDelay {
                percentage: Some(percent(d.percentage.as_ref()?.value)),
                fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(dur(d.value.as_ref()?))),
            })
        }),
        abort: conf.abort.as_ref().and_then(|a| {
            Some(FaultAbort {
                percentage: Some(percent(a.percentage.as_ref()?.value)),
                error_type: Some(fault_abort::ErrorType::HttpStatus(a.http_status.as_ref()?.value)),
                ..Default::default()
            })
        }),
        response_rate_limit: conf.response_bandwidth.as_ref().and_then(|b| {
            Some(FaultRateLimit {
                percentage: Some(percent(b.percentage.as_ref()?.value)),
                limit_type: Some(fault_rate_limit::LimitType::FixedLimit(fault_rate_limit::FixedLimit {
                    limit_kbps: bandwidth_kbps(&b.limit.as_ref()?.value)?,
                })),
            })
        }),
        ..Default::default()
    }
}

/// What Retry (`tcp.maxConnectAttempts`) and Timeout (`tcp.idleTimeout`)
/// set on a `tcp_proxy`.
#[derive(Debug, Default)]
pub(super) struct TcpProxyPolicies {
    pub max_connect_attempts: Option<UInt32Value>,
    pub idle_timeout: Option<Duration>,
}

/// The TCP policies for a `tcp_proxy` from `source` to `destinations`.
pub(super) fn tcp_proxy_policies(
    snapshot: &MeshSnapshot,
    source: &BTreeMap<String, String>,
    destinations: &[&BTreeMap<String, String>],
    applied: &mut Applied,
) -> TcpProxyPolicies {
    let mut out = TcpProxyPolicies::default();
    let mut named = BTreeMap::new();
    if let Some(p) = select(&snapshot.policies, ResourceType::Retry, source, destinations)
        && let Spec::Retry(r) = &p.spec
        && let Some(tcp) = r.conf.as_ref().and_then(|c| c.tcp.as_ref())
    {
        applied.record(&mut named, ResourceType::Retry, &p.name);
        out.max_connect_attempts = Some(UInt32Value { value: tcp.max_connect_attempts });
    }
    if let Some(p) = select(&snapshot.policies, ResourceType::Timeout, source, destinations)
        && let Spec::Timeout(t) = &p.spec
        && let Some(d) = t.conf.as_ref().and_then(|c| c.tcp.as_ref()).and_then(|t| t.idle_timeout.as_ref())
    {
        applied.record(&mut named, ResourceType::Timeout, &p.name);
        out.idle_timeout = Some(dur(d));
    }
    out
}

/// Applies the cluster-level policies (CircuitBreaker, HealthCheck,
/// Timeout's connect timeout) to `cluster`, whose destination tags are
/// `destination`, for a gateway whose tags are `source`.
/// `inbounds`: the mesh's inbounds by service ([`super::clusters::index`]).
pub(super) fn apply_cluster(
    snapshot: &MeshSnapshot,
    inbounds: &super::clusters::Inbounds<'_>,
    source: &BTreeMap<String, String>,
    destination: &BTreeMap<String, String>,
    cluster: &mut Cluster,
    applied: &mut Applied,
) {
    let policies = &snapshot.policies;
    let mut named = BTreeMap::new();
    let dst = [destination];
    // The service's protocol, as its inbounds declare it (the incumbent
    // infers it from the endpoints), else the destination's own tag.
    let protocol =
        super::clusters::protocol_of(inbounds, destination).or_else(|| destination.get(PROTOCOL_TAG).cloned());
    upstream_protocol(protocol.as_deref(), None, None, cluster);
    if let Some(p) = select(policies, ResourceType::Timeout, source, &dst)
        && let Spec::Timeout(t) = &p.spec
        && let Some(conf) = &t.conf
        && timeout_cluster(conf, protocol.as_deref(), cluster)
    {
        applied.record(&mut named, ResourceType::Timeout, &p.name);
    }
    if let Some(p) = select(policies, ResourceType::CircuitBreaker, source, &dst)
        && let Spec::CircuitBreaker(c) = &p.spec
        && let Some(conf) = &c.conf
    {
        applied.record(&mut named, ResourceType::CircuitBreaker, &p.name);
        circuit_breaker(conf, cluster);
    }
    if let Some(p) = select(policies, ResourceType::HealthCheck, source, &dst)
        && let Spec::HealthCheck(h) = &p.spec
        && let Some(conf) = &h.conf
    {
        applied.record(&mut named, ResourceType::HealthCheck, &p.name);
        health_check(conf, cluster);
    }
    if !named.is_empty() {
        cluster.metadata = metadata(&named);
    }
}

fn enforcing(on: bool) -> Option<UInt32Value> {
    Some(UInt32Value { value: if on { 100 } else { 0 } })
}

fn circuit_breaker(conf: &mesh::circuit_breaker::Conf, cluster: &mut Cluster) {
    if let Some(t) = &conf.thresholds {
        cluster.circuit_breakers = Some(CircuitBreakers {
            thresholds: vec![circuit_breakers::Thresholds {
                priority: RoutingPriority::Default as i32,
                max_connections: u32v(t.max_connections.as_ref()),
                max_pending_requests: u32v(t.max_pending_requests.as_ref()),
                max_requests: u32v(t.max_requests.as_ref()),
                max_retries: u32v(t.max_retries.as_ref()),
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    let Some(d) = &conf.detectors else { return };
    let total = d.total_errors.as_ref();
    let gateway = d.gateway_errors.as_ref();
    let local = d.local_errors.as_ref();
    let sd = d.standard_deviation.as_ref();
    let failure = d.failure.as_ref();
    cluster.outlier_detection = Some(OutlierDetection {
        interval: conf.interval.as_ref().map(dur),
        base_ejection_time: conf.base_ejection_time.as_ref().map(dur),
        max_ejection_percent: u32v(conf.max_ejection_percent.as_ref()),
        split_external_local_origin_errors: conf.split_external_and_local_errors,
        consecutive_5xx: total.and_then(|e| u32v(e.consecutive.as_ref())),
        enforcing_consecutive_5xx: enforcing(total.is_some()),
        consecutive_gateway_failure: gateway.and_then(|e| u32v(e.consecutive.as_ref())),
        enforcing_consecutive_gateway_failure: enforcing(gateway.is_some()),
        consecutive_local_origin_failure: local.and_then(|e| u32v(e.consecutive.as_ref())),
        enforcing_consecutive_local_origin_failure: enforcing(local.is_some()),
        success_rate_request_volume: sd.and_then(|s| u32v(s.request_volume.as_ref())),
        success_rate_minimum_hosts: sd.and_then(|s| u32v(s.minimum_hosts.as_ref())),
        success_rate_stdev_factor: sd
            .and_then(|s| s.factor.as_ref())
            .map(|f| UInt32Value { value: (f.value * 1000.0).round().max(0.0) as u32 }),
        enforcing_success_rate: enforcing(sd.is_some()),
        enforcing_local_origin_success_rate: enforcing(sd.is_some()),
        failure_percentage_request_volume: failure.and_then(|f| u32v(f.request_volume.as_ref())),
        failure_percentage_minimum_hosts: failure.and_then(|f| u32v(f.minimum_hosts.as_ref())),
        failure_percentage_threshold: failure.and_then(|f| u32v(f.threshold.as_ref())),
        enforcing_failure_percentage: enforcing(failure.is_some()),
        enforcing_failure_percentage_local_origin: enforcing(failure.is_some()),
        ..Default::default()
    });
}

fn health_check(conf: &mesh::health_check::Conf, cluster: &mut Cluster) {
    let checker = match (&conf.http, &conf.tcp) {
        (Some(http), _) => health_check::HealthChecker::HttpHealthCheck(health_check::HttpHealthCheck {
            path: http.path.clone(),
            request_headers_to_add: http
                .request_headers_to_add
                .iter()
                .filter_map(|h| {
                    let hv = h.header.as_ref()?;
                    Some(HeaderValueOption {
                        header: Some(HeaderValue {
                            key: hv.key.clone(),
                            value: hv.value.clone(),
                            ..Default::default()
                        }),
                        append_action: if h.append.as_ref().is_none_or(|a| a.value) {
                            header_value_option::HeaderAppendAction::AppendIfExistsOrAdd as i32
                        } else {
                            header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32
                        },
                        ..Default::default()
                    })
                })
                .collect(),
            expected_statuses: http
                .expected_statuses
                .iter()
                .map(|s| Int64Range { start: i64::from(s.value), end: i64::from(s.value) + 1 })
                .collect(),
            ..Default::default()
        }),
        (None, tcp) => health_check::HealthChecker::TcpHealthCheck(health_check::TcpHealthCheck {
            send: tcp.as_ref().and_then(|t| t.send.as_ref()).map(|s| payload(&s.value)),
            receive: tcp.as_ref().map(|t| t.receive.iter().map(|r| payload(&r.value)).collect()).unwrap_or_default(),
            ..Default::default()
        }),
    };
    cluster.health_checks = vec![EnvoyHealthCheck {
        timeout: conf.timeout.as_ref().map(dur),
        interval: conf.interval.as_ref().map(dur),
        initial_jitter: conf.initial_jitter.as_ref().map(dur),
        interval_jitter: conf.interval_jitter.as_ref().map(dur),
        interval_jitter_percent: conf.interval_jitter_percent,
        unhealthy_threshold: Some(UInt32Value { value: conf.unhealthy_threshold }),
        healthy_threshold: Some(UInt32Value { value: conf.healthy_threshold }),
        reuse_connection: conf.reuse_connection.as_ref().map(|b| BoolValue { value: b.value }),
        no_traffic_interval: conf.no_traffic_interval.as_ref().map(dur),
        always_log_health_check_failures: conf.always_log_health_check_failures.as_ref().is_some_and(|b| b.value),
        health_checker: Some(checker),
        ..Default::default()
    }];
    if let Some(p) = &conf.healthy_panic_threshold {
        let lb = cluster.common_lb_config.get_or_insert_with(Default::default);
        lb.healthy_panic_threshold = Some(Percent { value: f64::from(p.value) });
    }
}

fn payload(bytes: &[u8]) -> health_check::Payload {
    health_check::Payload { payload: Some(health_check::payload::Payload::Text(hex::encode_upper(bytes))) }
}

/// The source selectors of TrafficPermissions that name a caller in another
/// mesh (`kuma.io/mesh` other than the gateway's), with their permission.
fn cross_mesh_sources(snapshot: &MeshSnapshot) -> impl Iterator<Item = (&Item<Spec>, &Selector)> {
    snapshot.policies.of(ResourceType::TrafficPermission).flat_map(move |p| {
        selectors(&p.spec)
            .0
            .iter()
            .filter(move |s| {
                s.r#match.get(super::cross_mesh::MESH_TAG).is_some_and(|m| m != "*" && *m != snapshot.mesh)
            })
            .map(move |s| (p, s))
    })
}

/// The oldest (then smallest-named) permission with a source in another
/// mesh whose destination matches `backend`.
fn cross_mesh_permission<'a>(snapshot: &'a MeshSnapshot, backend: &BTreeMap<String, String>) -> Option<&'a Item<Spec>> {
    cross_mesh_sources(snapshot)
        .map(|(p, _)| p)
        .filter(|p| selectors(&p.spec).1.iter().any(|d| rank(&d.r#match, backend).is_some()))
        .min_by(|a, b| a.creation_time.cmp(&b.creation_time).then_with(|| a.name.cmp(&b.name)))
}

/// The RBAC of a `crossMesh` listener's connection manager: `None` when no
/// TrafficPermission names a caller in another mesh (every mTLS mesh's
/// client passes, as the incumbent). Otherwise one ALLOW policy: clients of
/// the gateway's own mesh (`spiffe://<mesh>/…`; the route-level check by
/// listener tags applies to them as on any listener), and each named
/// cross-mesh caller by its certificate: `kuma.io/mesh: M` and
/// `kuma.io/service: S` → `spiffe://M/S` (`*`: any `spiffe://M/`), other tags
/// → `kuma://<tag>/<value>`. Any other mesh's client gets `403 RBAC: access
/// denied`.
pub(super) fn cross_mesh_rbac(snapshot: &MeshSnapshot) -> Option<Rbac> {
    use envoy_types::pb::envoy::config::rbac::v3::{Permission, Policy, rbac};
    let mut names = BTreeSet::new();
    let mut principals = vec![san_principal(prefix_pattern(&format!("spiffe://{}/", snapshot.mesh)))];
    for (p, s) in cross_mesh_sources(snapshot) {
        names.insert(p.name.as_str());
        let mesh = s.r#match.get(super::cross_mesh::MESH_TAG).map(String::as_str).unwrap_or_default();
        principals.push(selector_principal(mesh, &s.r#match));
    }
    if names.is_empty() {
        return None;
    }
    let mut policies = std::collections::HashMap::new();
    let name = format!("TrafficPermission={}", names.into_iter().collect::<Vec<_>>().join(","));
    policies.insert(
        name,
        Policy {
            permissions: vec![Permission {
                rule: Some(envoy_types::pb::envoy::config::rbac::v3::permission::Rule::Any(true)),
            }],
            principals,
            ..Default::default()
        },
    );
    Some(Rbac { action: rbac::Action::Allow as i32, policies, ..Default::default() })
}

fn prefix_pattern(p: &str) -> envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern {
    envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern::Prefix(p.to_string())
}

/// An RBAC principal: the client certificate has a URI SAN matching `pattern`.
fn san_principal(
    pattern: envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern,
) -> envoy_types::pb::envoy::config::rbac::v3::Principal {
    use envoy_types::pb::envoy::{config::rbac::v3::principal, r#type::matcher::v3::StringMatcher};
    envoy_types::pb::envoy::config::rbac::v3::Principal {
        identifier: Some(principal::Identifier::Authenticated(principal::Authenticated {
            principal_name: Some(StringMatcher { match_pattern: Some(pattern), ..Default::default() }),
        })),
    }
}

/// The principal of one source selector for clients of `mesh`: the
/// service's SPIFFE id (`*` or absent: any of the mesh) and `kuma://k/v` for
/// every other tag that is not `*` (`kuma.io/mesh` is the SPIFFE id's).
fn selector_principal(
    mesh: &str,
    tags: &BTreeMap<String, String>,
) -> envoy_types::pb::envoy::config::rbac::v3::Principal {
    use envoy_types::pb::envoy::{config::rbac::v3::principal, r#type::matcher::v3::string_matcher::MatchPattern};
    let mut ids = vec![san_principal(match tags.get(SERVICE_TAG).map(String::as_str) {
        None | Some("*") => MatchPattern::Prefix(format!("spiffe://{mesh}/")),
        Some(service) => MatchPattern::Exact(format!("spiffe://{mesh}/{service}")),
    })];
    for (tag, value) in tags {
        if tag != SERVICE_TAG && tag != super::cross_mesh::MESH_TAG && value != "*" {
            ids.push(san_principal(MatchPattern::Exact(format!("kuma://{tag}/{value}"))));
        }
    }
    match ids.len() {
        1 => ids.remove(0),
        _ => envoy_types::pb::envoy::config::rbac::v3::Principal {
            identifier: Some(principal::Identifier::AndIds(principal::Set { ids })),
        },
    }
}

/// The RBAC rules of a sidecar inbound whose tags are `inbound` in an mTLS
/// mesh: `None` when the mesh has no TrafficPermission at all (everything
/// is allowed, as the incumbent's default `allow-all-<mesh>`), else one
/// ALLOW policy whose principals are the sources of **every**
/// TrafficPermission whose destination matches the inbound (no match: no
/// principal, so every connection is denied). A source selector becomes
/// the client certificate's URI SANs, as the incumbent's identity
/// certificates carry them: `kuma.io/service` → `spiffe://<mesh>/<service>`
/// (`*`: any `spiffe://<mesh>/` identity), every other tag →
/// `kuma://<tag>/<value>` (`*`: not checked); all of one selector must be
/// present. One policy (named after the permissions) because Envoy's RBAC
/// policies are a hash map: several would encode in a varying order.
pub(super) fn inbound_rbac(snapshot: &MeshSnapshot, inbound: &BTreeMap<String, String>) -> Option<Rbac> {
    use envoy_types::pb::envoy::{
        config::rbac::v3::{Permission, Policy, Principal, permission, principal, rbac},
        r#type::matcher::v3::{StringMatcher, string_matcher},
    };
    if !snapshot.policies.has_type(ResourceType::TrafficPermission) {
        return None;
    }
    let mesh = &snapshot.mesh;
    let san = |pattern: string_matcher::MatchPattern| Principal {
        identifier: Some(principal::Identifier::Authenticated(principal::Authenticated {
            principal_name: Some(StringMatcher { match_pattern: Some(pattern), ..Default::default() }),
        })),
    };
    let mut names = Vec::new();
    let mut principals = Vec::new();
    for p in snapshot.policies.of(ResourceType::TrafficPermission) {
        let (sources, destinations) = selectors(&p.spec);
        if !destinations.iter().any(|d| rank(&d.r#match, inbound).is_some()) {
            continue;
        }
        names.push(p.name.as_str());
        for s in sources {
            let mut ids = Vec::new();
            for (tag, value) in &s.r#match {
                if tag == SERVICE_TAG {
                    ids.push(san(if value == "*" {
                        string_matcher::MatchPattern::Prefix(format!("spiffe://{mesh}/"))
                    } else {
                        string_matcher::MatchPattern::Exact(format!("spiffe://{mesh}/{value}"))
                    }));
                } else if value != "*" {
                    ids.push(san(string_matcher::MatchPattern::Exact(format!("kuma://{tag}/{value}"))));
                }
            }
            if !s.r#match.contains_key(SERVICE_TAG) {
                // Still a client of this mesh.
                ids.push(san(string_matcher::MatchPattern::Prefix(format!("spiffe://{mesh}/"))));
            }
            principals.push(match ids.len() {
                1 => ids.remove(0),
                _ => Principal { identifier: Some(principal::Identifier::AndIds(principal::Set { ids })) },
            });
        }
    }
    let mut policies = std::collections::HashMap::new();
    if !principals.is_empty() {
        policies.insert(
            format!("TrafficPermission={}", names.join(",")),
            Policy {
                permissions: vec![Permission { rule: Some(permission::Rule::Any(true)) }],
                principals,
                ..Default::default()
            },
        );
    }
    Some(Rbac { action: rbac::Action::Allow as i32, policies, ..Default::default() })
}

/// Where the runner of a Dataplane (`meridian-zone dataplane run`) reads
/// the access-log lines for TCP logging backends: a FIFO (named pipe) of
/// this **relative** name, which Envoy resolves in its working directory.
/// The runner starts Envoy in a private directory it creates for it (mode
/// 0700, random name), so the FIFO lives there and no other local user can
/// pre-create, replace or read it. The incumbent uses a predictable
/// `/tmp/kuma-al-<name>-<mesh>.sock`; a predictable name in a shared
/// directory (Meridian's earlier `/tmp/meridian-al-<name>-<mesh>.fifo`) let
/// another user plant a symlink that Envoy's file logger followed (append
/// to any file the proxy's user may write), a FIFO of their own that the
/// runner reused (reading the logs), or a file that kept the runner from
/// starting. Envoy's file access logger writes to it, each line prefixed
/// with `<address>;`; the runner forwards each line to that TCP address.
/// Relative (not a per-runner absolute path) because the zone and the
/// runner must agree on it without talking, and every replica of a
/// gateway shares one generated configuration.
pub const ACCESS_LOG_SINK: &str = "meridian-access-log.fifo";

/// The access logs of a listener whose tags are `source` (on Dataplane
/// `_dataplane`, which no longer names the sink: kept for the callers'
/// signature): the best TrafficLog (destination `*` or any: a listener
/// serves every backend) and its Mesh logging backend. A backend the Mesh
/// lacks is a warning. A `file` backend is Envoy's file access logger at
/// `conf.path`; a `tcp` backend is the same logger writing
/// `<address>;<line>` to [`ACCESS_LOG_SINK`], which the runner forwards.
///
/// On a crossMesh listener (`identified`), the default format ends with
/// ` "%DOWNSTREAM_PEER_URI_SAN%"`: the caller's verified URI SANs
/// (`spiffe://<mesh>/<service>,kuma://…`), so the log shows who called from
/// which mesh.
pub(super) fn access_logs(
    snapshot: &MeshSnapshot,
    _dataplane: &str,
    source: &BTreeMap<String, String>,
    identified: bool,
    applied: &mut Applied,
    warnings: &mut Vec<String>,
) -> Vec<AccessLog> {
    let any: BTreeMap<String, String> = BTreeMap::new();
    let Some(p) = select(&snapshot.policies, ResourceType::TrafficLog, source, &[]).or_else(|| {
        // A destination selector naming services still logs the listener:
        // the most specific policy whose source matches.
        select(&snapshot.policies, ResourceType::TrafficLog, source, &[&any])
    }) else {
        return Vec::new();
    };
    let Spec::TrafficLog(t) = &p.spec else { return Vec::new() };
    let logging = snapshot.mesh_spec.as_ref().and_then(|m| m.logging.as_ref());
    let wanted = t.conf.as_ref().map(|c| c.backend.as_str()).filter(|b| !b.is_empty());
    let wanted = wanted.or(logging.map(|l| l.default_backend.as_str()).filter(|b| !b.is_empty()));
    let Some(backend) = wanted.and_then(|w| logging?.backends.iter().find(|b| b.name == w)) else {
        warnings.push(format!(
            "TrafficLog {:?}: the mesh has no logging backend {:?}; no access log",
            p.name,
            wanted.unwrap_or("(default)")
        ));
        return Vec::new();
    };
    let mut named = BTreeMap::new();
    applied.record(&mut named, ResourceType::TrafficLog, &p.name);
    let format = match (backend.format.is_empty(), identified) {
        (true, false) => DEFAULT_LOG_FORMAT.to_string(),
        (true, true) => format!("{DEFAULT_LOG_FORMAT} \"%DOWNSTREAM_PEER_URI_SAN%\""),
        (false, _) => backend.format.clone(),
    };
    let format = format.replace("%KUMA_MESH%", &snapshot.mesh);
    match log_target(backend) {
        Ok(LogTarget::File(path)) => vec![file_log(&path, &format)],
        Ok(LogTarget::Tcp(address)) => {
            vec![file_log(ACCESS_LOG_SINK, &format!("{address};{format}"))]
        }
        Err((field, message)) => {
            warnings.push(format!("TrafficLog {:?}: logging backend {:?} {field}: {message}", p.name, backend.name));
            Vec::new()
        }
    }
}

fn file_log(path: &str, format: &str) -> AccessLog {
    let config = FileAccessLog {
        path: path.to_string(),
        access_log_format: Some(file_access_log::AccessLogFormat::LogFormat(SubstitutionFormatString {
            format: Some(substitution_format_string::Format::TextFormatSource(DataSource {
                specifier: Some(data_source::Specifier::InlineString(format!("{format}\n"))),
                ..Default::default()
            })),
            ..Default::default()
        })),
    };
    AccessLog {
        name: "envoy.access_loggers.file".into(),
        config_type: Some(access_log::ConfigType::TypedConfig(pack_any(config))),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
