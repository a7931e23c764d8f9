//! Sidecars: a Dataplane without `networking.gateway` gets, as the
//! incumbent's sidecar on universal without a transparent proxy
//! (Kuma 2.14 `inbound_proxy_generator.go`, `outbound_proxy_generator.go`;
//! names from `dataplane_helpers.go`):
//!
//! ```text
//!   per inbound (not Ignored)
//!     Listener "inbound:<ip>:<port>"      ip = inbound.address or networking.address
//!        HTTP (kuma.io/protocol: http): HCM, route "inbound:<svc>" ─┐
//!        else:                          tcp_proxy ──────────────────┤
//!        mesh mTLS: STRICT one mTLS chain; PERMISSIVE tls_inspector │
//!          + chains mTLS (ALPN kuma), app TLS (tcp_proxy), raw      ▼
//!     Cluster "localhost:<workload port>"  static: serviceAddress (or the listen ip) : servicePort (or port)
//!   per outbound
//!     Listener "outbound:<ip>:<port>"     ip = outbound.address or 127.0.0.1
//!        HTTP (every matching inbound says http): HCM, route "outbound:<svc>"; else tcp_proxy
//!     Cluster "<svc>" (or "<svc>-<hash>" with more tags): EDS over the mesh's healthy inbounds
//! ```
//!
//! Protocols other than `http` (`http2`, `grpc`, `tcp`, none) are proxied
//! as TCP: the bytes reach the application unchanged.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::{
    config::{
        cluster::v3::Cluster,
        core::v3::TrafficDirection,
        listener::v3::{Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter},
        rbac::v3::Rbac,
        route::v3::{
            Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action, route_match,
        },
    },
    extensions::filters::{
        http::{rbac::v3::Rbac as HttpRbac, router::v3::Router},
        listener::tls_inspector::v3::TlsInspector,
        network::{
            http_connection_manager::v3::{HttpConnectionManager, HttpFilter, http_connection_manager, http_filter},
            rbac::v3::Rbac as NetworkRbac,
            tcp_proxy::v3::{TcpProxy, tcp_proxy},
        },
    },
};
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;
use meridian_sync_proto::pb::mesh::dataplane::{Networking, networking::inbound::State};

use super::{
    Ctx, MeshSnapshot, PROTOCOL_TAG, SERVICE_TAG, clusters,
    listeners::stat_name,
    mesh_tls::{self, MESH_ALPN},
    policies,
};
use crate::mtls::Mode;

/// Where an outbound listens when it names no address (the incumbent's default).
const DEFAULT_OUTBOUND_ADDRESS: &str = "127.0.0.1";

/// The listeners of a sidecar and its static clusters to the application;
/// the clusters of its outbounds are asked for in `ctx`.
pub(super) fn generate(snapshot: &MeshSnapshot, n: &Networking, ctx: &mut Ctx) -> (Vec<Listener>, Vec<Cluster>) {
    let mut listeners = Vec::new();
    let mut local: BTreeMap<String, Cluster> = BTreeMap::new();
    for (i, inbound) in n.inbound.iter().enumerate() {
        if inbound.state == State::Ignored as i32 {
            continue;
        }
        let at = format!("networking.inbound[{i}]");
        let ip = if inbound.address.is_empty() { n.address.as_str() } else { inbound.address.as_str() };
        if ip.parse::<std::net::IpAddr>().is_err() || inbound.port == 0 || inbound.port > u32::from(u16::MAX) {
            ctx.warn(format!("{at}: {ip}:{} is not an IP address and port; skipped", inbound.port));
            continue;
        }
        // The incumbent's workload address: serviceAddress, else the listen IP
        // (127.0.0.1 stopped being the default in Kuma 1.8.0).
        let workload_ip = if inbound.service_address.is_empty() { ip } else { inbound.service_address.as_str() };
        let workload_port = if inbound.service_port == 0 { inbound.port } else { inbound.service_port };
        let cluster_name = format!("localhost:{workload_port}");
        let cluster = clusters::local_cluster(&cluster_name, workload_ip, workload_port);
        match local.get(&cluster_name) {
            Some(existing) if existing != &cluster => {
                ctx.warn(format!(
                    "{at}: workload {workload_ip}:{workload_port} shares cluster name {cluster_name} with another inbound's workload; skipped"
                ));
                continue;
            }
            _ => {
                local.insert(cluster_name.clone(), cluster);
            }
        }
        let service = inbound.tags.get(SERVICE_TAG).map(String::as_str).unwrap_or("unknown");
        let name = format!("inbound:{ip}:{}", inbound.port);
        let stat = stat_name(&name);
        let http = inbound.tags.get(PROTOCOL_TAG).is_some_and(|p| p == "http");
        let route_name = format!("inbound:{service}");
        let plain =
            if http { hcm(&stat, &route_name, service, &cluster_name, None) } else { tcp(&stat, &cluster_name) };
        // With mesh mTLS, TrafficPermission by the client's identity: HTTP
        // RBAC in the connection manager (403), network RBAC before a
        // tcp_proxy (connection closed).
        let rbac = ctx.mtls.as_ref().and_then(|_| policies::inbound_rbac(snapshot, &inbound.tags));
        let mesh_filters = match rbac {
            None => vec![plain.clone()],
            Some(rules) if http => vec![hcm(&stat, &route_name, service, &cluster_name, Some(rules))],
            Some(rules) => vec![network_rbac(&stat, rules), plain.clone()],
        };
        let (chains, listener_filters) =
            inbound_chains(snapshot, ctx.mtls.as_ref(), &plain, &mesh_filters, &stat, &cluster_name);
        listeners.push(Listener {
            name: name.clone(),
            stat_prefix: stat,
            address: Some(clusters::socket_address(ip, inbound.port)),
            filter_chains: chains,
            listener_filters,
            traffic_direction: TrafficDirection::Inbound as i32,
            enable_reuse_port: Some(BoolValue { value: false }),
            ..Default::default()
        });
    }
    let inbounds = clusters::index(snapshot);
    for (i, o) in n.outbound.iter().enumerate() {
        let address = if o.address.is_empty() { DEFAULT_OUTBOUND_ADDRESS } else { o.address.as_str() };
        if address.parse::<std::net::IpAddr>().is_err() || o.port == 0 || o.port > u32::from(u16::MAX) {
            ctx.warn(format!("networking.outbound[{i}]: {address}:{} is not an IP address and port; skipped", o.port));
            continue;
        }
        let Some(service) = o.tags.get(SERVICE_TAG) else {
            ctx.warn(format!("networking.outbound[{i}]: no {SERVICE_TAG} tag; skipped"));
            continue;
        };
        let name = format!("outbound:{address}:{}", o.port);
        let stat = stat_name(&name);
        let cluster = ctx.cluster_for(&o.tags);
        let http = clusters::protocol_of(&inbounds, &o.tags).is_some_and(|p| p == "http");
        let f = if http {
            hcm(&stat, &format!("outbound:{service}"), service, &cluster, None)
        } else {
            tcp(&stat, &cluster)
        };
        listeners.push(Listener {
            name: name.clone(),
            stat_prefix: stat,
            address: Some(clusters::socket_address(address, o.port)),
            filter_chains: vec![FilterChain { filters: vec![f], ..Default::default() }],
            traffic_direction: TrafficDirection::Outbound as i32,
            enable_reuse_port: Some(BoolValue { value: false }),
            ..Default::default()
        });
    }
    listeners.sort_by(|a, b| a.name.cmp(&b.name));
    (listeners, local.into_values().collect())
}

/// A `tcp_proxy` to `cluster`.
fn tcp(stat: &str, cluster: &str) -> Filter {
    let proxy = TcpProxy {
        stat_prefix: stat.to_string(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_string())),
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(proxy))),
    }
}

/// `envoy.filters.network.rbac` with `rules` (a denied connection is
/// closed).
fn network_rbac(stat: &str, rules: Rbac) -> Filter {
    let rbac = NetworkRbac { rules: Some(rules), stat_prefix: stat.to_string(), ..Default::default() };
    Filter {
        name: "envoy.filters.network.rbac".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(rbac))),
    }
}

/// An HTTP connection manager with its route configuration inline (as the
/// incumbent's sidecars): `route_name`, one virtual host `service` for every
/// domain, one catch-all route to `cluster`; with `rbac`, the
/// `envoy.filters.http.rbac` filter first (a denied request gets `403
/// RBAC: access denied`).
fn hcm(stat: &str, route_name: &str, service: &str, cluster: &str, rbac: Option<Rbac>) -> Filter {
    let rc = RouteConfiguration {
        name: route_name.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: service.to_string(),
            domains: vec!["*".into()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.to_string())),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        validate_clusters: Some(BoolValue { value: false }),
        ..Default::default()
    };
    let hcm = HttpConnectionManager {
        codec_type: http_connection_manager::CodecType::Auto as i32,
        stat_prefix: stat.to_string(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)),
        http_filters: rbac
            .map(|rules| HttpFilter {
                name: "envoy.filters.http.rbac".into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(HttpRbac {
                    rules: Some(rules),
                    ..Default::default()
                }))),
                ..Default::default()
            })
            .into_iter()
            .chain([HttpFilter {
                name: "envoy.filters.http.router".into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(Router::default()))),
                ..Default::default()
            }])
            .collect(),
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
    }
}

/// The filter chains (and listener filters) of an inbound listener in the
/// mesh's mTLS phase (`mtls`: `None` when inbounds are plaintext only).
///
/// Each kind of chain is the same message in every phase, so that a step
/// of an mTLS switch only adds or removes chains: Envoy's filter-chain-only
/// update then drains no connection of a chain that stays (a whole-listener
/// change would drain every one, and close them when the drain time ends).
/// So a mesh with an `mtls` section (backends listed, even with mTLS off)
/// keeps the TLS inspector and matched chains in every phase:
///
/// ```text
///   STRICT      [mTLS (tls + ALPN kuma)]
///   PERMISSIVE  [mTLS (tls + ALPN kuma), application TLS (tls, passed through), plaintext (raw_buffer)]
///   off         [plaintext (raw_buffer)]            (no mtls section: one chain, no inspector)
/// ```
fn inbound_chains(
    snapshot: &MeshSnapshot,
    mtls: Option<&mesh_tls::MeshTls>,
    plain: &Filter,
    mesh_filters: &[Filter],
    stat: &str,
    cluster_name: &str,
) -> (Vec<FilterChain>, Vec<ListenerFilter>) {
    let listed = snapshot.mesh_spec.as_ref().and_then(|m| m.mtls.as_ref()).is_some_and(|m| !m.backends.is_empty());
    if mtls.is_none() && !listed {
        return (vec![FilterChain { filters: vec![plain.clone()], ..Default::default() }], Vec::new());
    }
    let inspector = vec![ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(TlsInspector::default()))),
        ..Default::default()
    }];
    // Mesh clients: mTLS, offered with ALPN `kuma`.
    let mesh_chain = |m: &mesh_tls::MeshTls| FilterChain {
        filter_chain_match: Some(FilterChainMatch {
            transport_protocol: "tls".into(),
            application_protocols: vec![MESH_ALPN.into()],
            ..Default::default()
        }),
        filters: mesh_filters.to_vec(),
        transport_socket: Some(mesh_tls::inbound_socket(&m.mesh)),
        ..Default::default()
    };
    // Plaintext clients (outside the mesh, not migrated yet, or mTLS off).
    let plain_chain = FilterChain {
        filter_chain_match: Some(FilterChainMatch { transport_protocol: "raw_buffer".into(), ..Default::default() }),
        filters: vec![plain.clone()],
        ..Default::default()
    };
    let chains = match mtls {
        None => vec![plain_chain],
        Some(m) if m.mode == Mode::Strict => vec![mesh_chain(m)],
        Some(m) => vec![
            mesh_chain(m),
            // The application's own TLS: passed through untouched.
            FilterChain {
                filter_chain_match: Some(FilterChainMatch { transport_protocol: "tls".into(), ..Default::default() }),
                filters: vec![tcp(stat, cluster_name)],
                ..Default::default()
            },
            plain_chain,
        ],
    };
    (chains, inspector)
}

#[cfg(test)]
mod tests {
    use meridian_sync_proto::{Resource, universal};

    use super::super::{MeshSnapshot, generate};

    fn snapshot(yaml: &str) -> MeshSnapshot {
        let resources: Vec<Resource> =
            universal::parse_resources(yaml).expect("yaml").into_iter().map(|r| r.expect("resource")).collect();
        MeshSnapshot::from_resources("default", &resources)
    }

    fn filter_names(config: &super::super::ProxyConfig, listener: &str) -> Vec<String> {
        let l = config.listeners.iter().find(|l| l.name == listener).unwrap_or_else(|| panic!("no {listener}"));
        l.filter_chains.iter().flat_map(|c| c.filters.iter().map(|f| f.name.clone())).collect()
    }

    #[test]
    fn an_outbound_is_http_only_when_every_instance_says_so() {
        let base = r#"
type: Dataplane
mesh: default
name: web-1
networking:
  address: 10.0.0.1
  inbound: [{port: 8080, tags: {kuma.io/service: web}}]
  outbound: [{port: 10001, tags: {kuma.io/service: backend}}]
---
type: Dataplane
mesh: default
name: backend-1
networking: {address: 10.0.0.2, inbound: [{port: 80, tags: {kuma.io/service: backend, kuma.io/protocol: http}}]}
"#;
        let http = generate(&snapshot(base), "web-1").expect("generate");
        assert_eq!(filter_names(&http, "outbound:127.0.0.1:10001"), ["envoy.filters.network.http_connection_manager"]);
        // The inbound has no protocol tag: TCP.
        assert_eq!(filter_names(&http, "inbound:10.0.0.1:8080"), ["envoy.filters.network.tcp_proxy"]);

        let mixed = format!(
            "{base}---\ntype: Dataplane\nmesh: default\nname: backend-2\nnetworking: {{address: 10.0.0.3, inbound: [{{port: 80, tags: {{kuma.io/service: backend, kuma.io/protocol: tcp}}}}]}}\n"
        );
        let tcp = generate(&snapshot(&mixed), "web-1").expect("generate");
        assert_eq!(filter_names(&tcp, "outbound:127.0.0.1:10001"), ["envoy.filters.network.tcp_proxy"]);
    }

    #[test]
    fn inbounds_forward_to_the_workload_and_clashing_local_clusters_are_refused() {
        let config = generate(
            &snapshot(
                r#"
type: Dataplane
mesh: default
name: web-1
networking:
  address: 10.0.0.1
  inbound:
  - {port: 8080, servicePort: 18080, tags: {kuma.io/service: web}}
  - {port: 8081, serviceAddress: 10.0.0.9, servicePort: 18080, tags: {kuma.io/service: other}}
"#,
            ),
            "web-1",
        )
        .expect("generate");
        let names: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["inbound:10.0.0.1:8080"]);
        let clusters: Vec<&str> = config.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(clusters, ["localhost:18080"]);
        let dump = super::super::dump::pretty(&config.clusters[0]);
        assert!(dump.contains("\"10.0.0.1\"") && dump.contains("18080"), "{dump}");
        assert!(
            config.warnings.iter().any(|w| w.starts_with("networking.inbound[1]") && w.contains("localhost:18080")),
            "{:?}",
            config.warnings
        );
    }
}
