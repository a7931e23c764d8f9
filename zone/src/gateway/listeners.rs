//! One Envoy listener per port of the selected MeshGateway: HTTP and TCP
//! ports share one filter chain, HTTPS and TLS ports get one SNI filter
//! chain per hostname.
//!
//! Certificates are never inlined in a listener: its `DownstreamTlsContext`
//! names SDS secrets (`tls_certificate_sds_secret_configs`, fetched over
//! ADS) and the certificate and key travel as their own `Secret`
//! resources ([`super::ProxyConfig::secrets`]), under names that do not
//! depend on their content ([`secret_name`]): rotating a Secret changes
//! only that secret's version, never the listener, so Envoy swaps the
//! certificate for new handshakes without draining the listener.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::{
    config::{
        core::v3::{
            AggregatedConfigSource, ApiVersion, ConfigSource, DataSource, TransportSocket, config_source, data_source,
            transport_socket,
        },
        listener::v3::{Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter},
        route::v3::RouteConfiguration,
    },
    extensions::{
        filters::{
            http::{fault::v3::HttpFault, local_ratelimit::v3::LocalRateLimit, router::v3::Router},
            listener::tls_inspector::v3::TlsInspector,
            network::{
                connection_limit::v3::ConnectionLimit,
                http_connection_manager::v3::{
                    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
                },
                tcp_proxy::v3::{TcpProxy, tcp_proxy},
            },
        },
        transport_sockets::tls::v3::{
            CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret, TlsCertificate, TlsParameters, secret,
            tls_parameters::TlsProtocol,
        },
    },
};
use envoy_types::pb::google::protobuf::{BoolValue, UInt64Value};
use envoy_types::util::pack_any;
use meridian_sync_proto::{
    pb::mesh::{
        MeshGateway, MeshGatewayRoute,
        mesh_gateway::{listener::Protocol, tls::Mode},
        mesh_gateway_route,
    },
    pb::system::data_source::Type as SourceType,
    validate,
};

use super::{
    Ctx, Item, ListenerCtx, MeshSnapshot, clusters, host_order, hosts_match, http, norm_host, policies,
    select::selector_matches,
};

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "HTTP",
        Protocol::Https => "HTTPS",
        Protocol::Tcp => "TCP",
        Protocol::Tls => "TLS",
        Protocol::None => "NONE",
    }
}

/// The listeners and route configurations of `gateway` on a Dataplane
/// with gateway tags `dp_tags` at `address`.
pub(super) fn generate(
    snapshot: &MeshSnapshot,
    gateway: &Item<MeshGateway>,
    dp_tags: &BTreeMap<String, String>,
    address: &str,
    ctx: &mut Ctx,
) -> (Vec<Listener>, Vec<RouteConfiguration>) {
    let mut by_port: BTreeMap<u32, Vec<ListenerCtx<'_>>> = BTreeMap::new();
    let specs = gateway.spec.conf.as_ref().map(|c| c.listeners.as_slice()).unwrap_or_default();
    for (i, spec) in specs.iter().enumerate() {
        let Ok(protocol) = Protocol::try_from(spec.protocol) else {
            ctx.warn(format!("listener {i}: unknown protocol {}", spec.protocol));
            continue;
        };
        if protocol == Protocol::None || spec.port == 0 || spec.port > u32::from(u16::MAX) {
            ctx.warn(format!("listener {i}: no protocol or invalid port; skipped"));
            continue;
        }
        let mut tags = dp_tags.clone();
        tags.extend(gateway.spec.tags.clone());
        tags.extend(spec.tags.clone());
        let hostname = norm_host(&spec.hostname);
        let http = matches!(protocol, Protocol::Http | Protocol::Https);
        let routes: Vec<_> = snapshot
            .routes
            .values()
            .filter(|r| selector_matches(&r.spec.selectors, &tags))
            .filter(|r| match r.spec.conf.as_ref().and_then(|c| c.route.as_ref()) {
                Some(mesh_gateway_route::conf::Route::Http(h)) => {
                    http && (h.hostnames.is_empty() || h.hostnames.iter().any(|rh| hosts_match(rh, &hostname)))
                }
                Some(mesh_gateway_route::conf::Route::Tcp(_)) => !http,
                None => false,
            })
            .collect();
        ctx.deps.listener_tags.push(tags.clone());
        ctx.deps.routes.extend(routes.iter().map(|r| r.name.clone()));
        let group = by_port.entry(spec.port).or_default();
        if let Some(first) = group.first() {
            if first.protocol != protocol {
                ctx.warn(format!(
                    "listener {i}: protocol {} conflicts with {} on port {}; skipped",
                    protocol_name(protocol),
                    protocol_name(first.protocol),
                    spec.port
                ));
                continue;
            }
            if group.iter().any(|l| l.hostname == hostname) {
                ctx.warn(format!("listener {i}: hostname {hostname} is already served on port {}; skipped", spec.port));
                continue;
            }
        }
        group.push(ListenerCtx { hostname, port: spec.port, protocol, spec, routes, tags });
    }

    let mut listeners = Vec::new();
    let mut route_configs = Vec::new();
    for (port, mut group) in by_port {
        group.sort_by_key(|l| host_order(&l.hostname));
        let protocol = group[0].protocol;
        let name = format!("{}:{}:{port}", gateway.name, protocol_name(protocol));
        let stat = stat_name(&name);
        let mut chains = Vec::new();
        match protocol {
            Protocol::Http => {
                let rds = format!("{name}:*");
                let refs: Vec<&ListenerCtx<'_>> = group.iter().collect();
                let mut rc = http::route_configuration(snapshot, &rds, port, &refs, false, ctx);
                let limit = group.iter().filter_map(|l| connection_limit(l)).min();
                let cross_mesh = group.iter().any(|l| l.spec.cross_mesh);
                let mut extras = HcmExtras::of(snapshot, &group[0].tags, cross_mesh && ctx.mtls.is_some(), ctx);
                // crossMesh: clients of any mTLS mesh, with their mesh certificate.
                let transport_socket = match (cross_mesh, ctx.mtls.clone()) {
                    (false, _) => None,
                    (true, Some(m)) => {
                        ctx.deps.all_meshes_ca = true;
                        // TrafficPermissions naming callers of other meshes.
                        extras.rbac = policies::cross_mesh_rbac(snapshot);
                        // Who called: the client's URI SANs (its mesh and
                        // service), from its verified certificate, never
                        // from the request (a sent value is overwritten).
                        rc.request_headers_to_add.push(client_identity_header());
                        Some(super::mesh_tls::cross_mesh_socket(&m.mesh))
                    }
                    (true, None) => {
                        ctx.warn(format!(
                            "{name}: crossMesh needs mesh mTLS, which is off in mesh {:?}; served to this mesh's clients in plaintext only",
                            snapshot.mesh
                        ));
                        None
                    }
                };
                chains.push(FilterChain {
                    filters: limited(&stat, limit, hcm(&stat, &rds, extras)),
                    transport_socket,
                    ..Default::default()
                });
                route_configs.push(rc);
            }
            Protocol::Https => {
                for l in &group {
                    let Some(certs) = certificates(snapshot, l, ctx) else { continue };
                    let rds = format!("{name}:{}", l.hostname);
                    route_configs.push(http::route_configuration(snapshot, &rds, port, &[l], true, ctx));
                    let extras = HcmExtras::of(snapshot, &l.tags, false, ctx);
                    chains.push(FilterChain {
                        filter_chain_match: sni_match(&l.hostname),
                        transport_socket: Some(tls_socket(certs, true)),
                        filters: limited(&stat, connection_limit(l), hcm(&stat, &rds, extras)),
                        ..Default::default()
                    });
                }
            }
            Protocol::Tcp => {
                let routes: Vec<_> = group.iter().flat_map(|l| l.routes.iter().copied()).collect();
                let limit = group.iter().filter_map(|l| connection_limit(l)).min();
                match tcp_proxy(snapshot, &group[0].tags, &stat, &routes, ctx) {
                    Some(f) => chains.push(FilterChain { filters: limited(&stat, limit, f), ..Default::default() }),
                    None => ctx.warn(format!("{name}: no TCP route attaches; listener skipped")),
                }
            }
            Protocol::Tls => {
                for l in &group {
                    let mode = l
                        .spec
                        .tls
                        .as_ref()
                        .map_or(Mode::Passthrough, |t| Mode::try_from(t.mode).unwrap_or(Mode::Passthrough));
                    let transport_socket = if mode == Mode::Terminate {
                        let Some(certs) = certificates(snapshot, l, ctx) else { continue };
                        Some(tls_socket(certs, false))
                    } else {
                        None
                    };
                    let Some(f) = tcp_proxy(snapshot, &l.tags, &stat, &l.routes, ctx) else {
                        ctx.warn(format!("{name}: no TCP route attaches to hostname {}; skipped", l.hostname));
                        continue;
                    };
                    chains.push(FilterChain {
                        filter_chain_match: sni_match(&l.hostname),
                        transport_socket,
                        filters: limited(&stat, connection_limit(l), f),
                        ..Default::default()
                    });
                }
            }
            Protocol::None => {}
        }
        if chains.is_empty() {
            continue;
        }
        let listener_filters = if matches!(protocol, Protocol::Https | Protocol::Tls) {
            vec![ListenerFilter {
                name: "envoy.filters.listener.tls_inspector".into(),
                config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(TlsInspector::default()))),
                ..Default::default()
            }]
        } else {
            Vec::new()
        };
        let bind = if address.parse::<std::net::IpAddr>().is_ok() {
            address.to_string()
        } else {
            ctx.warn(format!("networking.address {address:?} is not an IP address; {name} binds 0.0.0.0"));
            "0.0.0.0".to_string()
        };
        listeners.push(Listener {
            name: name.clone(),
            stat_prefix: stat.clone(),
            address: Some(clusters::socket_address(&bind, port)),
            filter_chains: chains,
            listener_filters,
            // A port held by a stale process must fail loudly, not be shared.
            enable_reuse_port: Some(BoolValue { value: false }),
            ..Default::default()
        });
    }
    (listeners, route_configs)
}

/// The header a crossMesh listener adds to every request: the URI SANs of
/// the client's verified mesh certificate (`spiffe://<mesh>/<service>,...`).
pub const CLIENT_IDENTITY_HEADER: &str = "x-meridian-client-identity";

fn client_identity_header() -> envoy_types::pb::envoy::config::core::v3::HeaderValueOption {
    use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption, header_value_option};
    HeaderValueOption {
        header: Some(HeaderValue {
            key: CLIENT_IDENTITY_HEADER.to_string(),
            value: "%DOWNSTREAM_PEER_URI_SAN%".to_string(),
            ..Default::default()
        }),
        append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// Envoy stat prefixes: no `:` (it is a tag separator in some sinks).
pub(super) fn stat_name(name: &str) -> String {
    name.replace([':', '*'], "_")
}

/// `resources.connectionLimit` of a listener, when set.
fn connection_limit(l: &ListenerCtx<'_>) -> Option<u32> {
    l.spec.resources.as_ref().map(|r| r.connection_limit).filter(|n| *n > 0)
}

/// `filter`, behind a connection limit when there is one.
fn limited(stat: &str, limit: Option<u32>, filter: Filter) -> Vec<Filter> {
    let Some(max) = limit else { return vec![filter] };
    let cl = ConnectionLimit {
        stat_prefix: stat.to_string(),
        max_connections: Some(UInt64Value { value: u64::from(max) }),
        ..Default::default()
    };
    let limit = Filter {
        name: "envoy.filters.network.connection_limit".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(cl))),
    };
    vec![limit, filter]
}

fn sni_match(hostname: &str) -> Option<FilterChainMatch> {
    if hostname == "*" {
        return None;
    }
    Some(FilterChainMatch { server_names: vec![hostname.to_string()], ..Default::default() })
}

/// What policies add to a connection manager: the access log
/// (TrafficLog) and the HTTP filters per-route RateLimit and FaultInjection
/// configure (present only when the mesh has such a policy).
struct HcmExtras {
    access_log: Vec<envoy_types::pb::envoy::config::accesslog::v3::AccessLog>,
    rate_limit: bool,
    fault: bool,
    /// `envoy.filters.http.rbac` first (crossMesh listeners' callers).
    rbac: Option<envoy_types::pb::envoy::config::rbac::v3::Rbac>,
}

impl HcmExtras {
    /// `identified`: a crossMesh listener over mTLS (the default access-log
    /// format adds the caller's identity).
    fn of(snapshot: &MeshSnapshot, source: &BTreeMap<String, String>, identified: bool, ctx: &mut Ctx) -> HcmExtras {
        let has = |ty| snapshot.policies.has_type(ty);
        HcmExtras {
            access_log: policies::access_logs(
                snapshot,
                &ctx.dataplane,
                source,
                identified,
                &mut ctx.applied,
                &mut ctx.warnings,
            ),
            rate_limit: has(meridian_sync_proto::ResourceType::RateLimit),
            fault: has(meridian_sync_proto::ResourceType::FaultInjection),
            rbac: None,
        }
    }
}

fn http_filter(name: &str, config: envoy_types::pb::google::protobuf::Any) -> HttpFilter {
    HttpFilter {
        name: name.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    }
}

fn hcm(stat: &str, rds: &str, extras: HcmExtras) -> Filter {
    let mut http_filters = Vec::new();
    if let Some(rules) = extras.rbac {
        let rbac = envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac {
            rules: Some(rules),
            ..Default::default()
        };
        http_filters.push(http_filter("envoy.filters.http.rbac", pack_any(rbac)));
    }
    if extras.fault {
        http_filters.push(http_filter(policies::FAULT_FILTER, pack_any(HttpFault::default())));
    }
    if extras.rate_limit {
        let limit = LocalRateLimit { stat_prefix: format!("{stat}_rate_limit"), ..Default::default() };
        http_filters.push(http_filter(policies::RATE_LIMIT_FILTER, pack_any(limit)));
    }
    http_filters.push(http_filter("envoy.filters.http.router", pack_any(Router::default())));
    let hcm = HttpConnectionManager {
        codec_type: http_connection_manager::CodecType::Auto as i32,
        stat_prefix: stat.to_string(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(clusters::ads_source()),
            route_config_name: rds.to_string(),
        })),
        http_filters,
        access_log: extras.access_log,
        // No `strip_port_mode`: `Host: foo.example.com:8080` reaches the
        // backend as sent; the route configuration ignores the port when
        // it picks the virtual host (`ignore_port_in_host_matching`).
        normalize_path: Some(BoolValue { value: true }),
        merge_slashes: true,
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
    }
}

/// A `tcp_proxy` over the backends of every rule of `routes` (TCP routes
/// have no matches, so their rules' backends are merged); `None` when there
/// is no backend. Envoy rejects zero weights here: zero-weight backends are
/// dropped, and all-zero weights become equal.
fn tcp_proxy(
    snapshot: &MeshSnapshot,
    source: &BTreeMap<String, String>,
    stat: &str,
    routes: &[&Item<MeshGatewayRoute>],
    ctx: &mut Ctx,
) -> Option<Filter> {
    let mut weights: BTreeMap<String, u32> = BTreeMap::new();
    let mut destinations = Vec::new();
    for r in routes {
        let Some(mesh_gateway_route::conf::Route::Tcp(tcp)) = r.spec.conf.as_ref().and_then(|c| c.route.as_ref())
        else {
            continue;
        };
        for rule in &tcp.rules {
            for b in &rule.backends {
                let name = ctx.cluster_for(&b.destination);
                let w = weights.entry(name).or_default();
                *w = w.saturating_add(b.weight);
                destinations.push(&b.destination);
            }
        }
    }
    if weights.is_empty() {
        return None;
    }
    let tcp = policies::tcp_proxy_policies(snapshot, source, &destinations, &mut ctx.applied);
    if weights.values().all(|w| *w == 0) {
        weights.values_mut().for_each(|w| *w = 1);
    }
    weights.retain(|_, w| *w > 0);
    let specifier = if weights.len() == 1 {
        tcp_proxy::ClusterSpecifier::Cluster(weights.into_keys().next().unwrap_or_default())
    } else {
        tcp_proxy::ClusterSpecifier::WeightedClusters(tcp_proxy::WeightedCluster {
            clusters: weights
                .into_iter()
                .map(|(name, weight)| tcp_proxy::weighted_cluster::ClusterWeight { name, weight, ..Default::default() })
                .collect(),
        })
    };
    let proxy = TcpProxy {
        stat_prefix: stat.to_string(),
        cluster_specifier: Some(specifier),
        max_connect_attempts: tcp.max_connect_attempts,
        idle_timeout: tcp.idle_timeout,
        access_log: policies::access_logs(snapshot, &ctx.dataplane, source, false, &mut ctx.applied, &mut ctx.warnings),
        ..Default::default()
    };
    Some(Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(proxy))),
    })
}

/// The SDS name of a listener's certificate: `secret:<name>` for a Secret
/// of the mesh (shared by every listener that uses it), `file:<path>` for
/// files Envoy reads, `inline:<port>:<hostname>:<index>` for PEM written
/// in the MeshGateway. Names never depend on the certificate's content, so
/// a rotation changes the secret's version only.
pub(super) fn secret_name(source: &SourceType, port: u32, hostname: &str, index: usize) -> String {
    match source {
        SourceType::Secret(name) => format!("secret:{name}"),
        SourceType::File(path) => format!("file:{path}"),
        SourceType::Inline(_) | SourceType::InlineString(_) => format!("inline:{port}:{hostname}:{index}"),
    }
}

/// The certificates of a TLS-terminating listener, each checked as Envoy
/// will, as SDS references; the secrets themselves go to `ctx.secrets`.
/// `None` (with a warning) when one is missing or unusable, so the
/// hostname is left out rather than the whole listener NACKed.
fn certificates(snapshot: &MeshSnapshot, l: &ListenerCtx<'_>, ctx: &mut Ctx) -> Option<Vec<SdsSecretConfig>> {
    let sources = l.spec.tls.as_ref().map(|t| t.certificates.as_slice()).unwrap_or_default();
    if sources.is_empty() {
        ctx.warn(format!("port {} hostname {}: TLS termination without certificates; skipped", l.port, l.hostname));
        return None;
    }
    let mut out = Vec::new();
    let mut secrets = Vec::new();
    for (i, source) in sources.iter().enumerate() {
        let Some(kind) = &source.r#type else {
            ctx.warn(format!("port {} hostname {}: certificates[{i}] is empty; skipped", l.port, l.hostname));
            return None;
        };
        let name = secret_name(kind, l.port, &l.hostname, i);
        let pem: Vec<u8> = match kind {
            SourceType::Secret(secret) => {
                ctx.deps.secrets.insert(secret.clone());
                match snapshot.secrets.get(secret).and_then(|s| s.spec.data.as_ref()) {
                    Some(data) => data.value.to_vec(),
                    None => {
                        ctx.warn(format!(
                            "port {} hostname {}: Secret {secret:?} not found; skipped",
                            l.port, l.hostname
                        ));
                        return None;
                    }
                }
            }
            SourceType::Inline(b) => b.value.to_vec(),
            SourceType::InlineString(s) => s.clone().into_bytes(),
            SourceType::File(path) => {
                // Envoy reads the file; the same PEM holds the chain and the key.
                let file = DataSource {
                    specifier: Some(data_source::Specifier::Filename(path.clone())),
                    ..Default::default()
                };
                secrets.push(tls_secret(&name, file.clone(), file));
                out.push(sds_ref(name));
                continue;
            }
        };
        if let Err(e) = validate::tls_secret(&pem) {
            ctx.warn(format!("port {} hostname {}: certificates[{i}]: {e}; skipped", l.port, l.hostname));
            return None;
        }
        let (chain, key) = split_pem(&String::from_utf8_lossy(&pem));
        secrets.push(tls_secret(&name, inline(chain), inline(key)));
        out.push(sds_ref(name));
    }
    for s in secrets {
        ctx.secrets.insert(s.name.clone(), s);
    }
    Some(out)
}

/// An SDS secret holding one certificate chain and its key.
fn tls_secret(name: &str, chain: DataSource, key: DataSource) -> Secret {
    Secret {
        name: name.to_string(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(chain),
            private_key: Some(key),
            ..Default::default()
        })),
    }
}

/// A reference to SDS secret `name`, fetched over the ADS stream.
fn sds_ref(name: String) -> SdsSecretConfig {
    SdsSecretConfig {
        name,
        sds_config: Some(ConfigSource {
            config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource::default())),
            resource_api_version: ApiVersion::V3 as i32,
            ..Default::default()
        }),
    }
}

fn inline(s: String) -> DataSource {
    DataSource { specifier: Some(data_source::Specifier::InlineString(s)), ..Default::default() }
}

/// Splits a PEM bundle into (certificate blocks, key block).
fn split_pem(pem: &str) -> (String, String) {
    let (mut chain, mut key) = (String::new(), String::new());
    let mut current: Option<(bool, String)> = None;
    for line in pem.lines() {
        let line = line.trim();
        if let Some(label) = line.strip_prefix("-----BEGIN ") {
            current = Some((label.starts_with("CERTIFICATE"), String::new()));
        }
        if let Some((_, block)) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
        }
        if line.starts_with("-----END ")
            && let Some((is_cert, block)) = current.take()
        {
            if is_cert { chain.push_str(&block) } else { key.push_str(&block) }
        }
    }
    (chain, key)
}

fn tls_socket(certs: Vec<SdsSecretConfig>, http: bool) -> TransportSocket {
    let ctx = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_params: Some(TlsParameters {
                tls_minimum_protocol_version: TlsProtocol::TlSv12 as i32,
                ..Default::default()
            }),
            tls_certificate_sds_secret_configs: certs,
            alpn_protocols: if http { vec!["h2".into(), "http/1.1".into()] } else { Vec::new() },
            ..Default::default()
        }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(ctx))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_bundles_split_into_chain_and_key() {
        let pem = "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\nBBB\n-----END PRIVATE KEY-----\n-----BEGIN CERTIFICATE-----\nCCC\n-----END CERTIFICATE-----\n";
        let (chain, key) = split_pem(pem);
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(chain.contains("CCC") && !chain.contains("BBB"));
        assert_eq!(key, "-----BEGIN PRIVATE KEY-----\nBBB\n-----END PRIVATE KEY-----\n");
    }
}
