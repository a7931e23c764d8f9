//! A ZoneIngress: what this zone announces to the others
//! (`availableServices`) and the Envoy configuration of its ingress proxy.
//!
//! ```text
//!   local Dataplanes ─▶ available_services: (mesh, healthy inbound tags) → instances
//!
//!   Listener "inbound:<address>:<port>"  (tls_inspector; no TLS termination)
//!     per SNI <svc>{mesh=<m>[,k=v]}: chain server_names=[SNI], transport tls
//!         ─▶ tcp_proxy ─▶ Cluster "<m>:<cluster name>" (EDS: local healthy inbounds)
//! ```
//!
//! The shapes are the incumbent's (Kuma 2.14 `pkg/xds/generator/ingress_generator.go`):
//! the client's mesh mTLS passes through untouched to the sidecar, which
//! terminates it. The SNIs served are, per mesh, each available service
//! alone and with its full tag set, plus every destination of the mesh's
//! MeshGatewayRoutes and Dataplane outbounds naming an available service
//! (so a client asking for `b{mesh=default,version=v1}` finds a chain).

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::extensions::{
    filters::listener::tls_inspector::v3::TlsInspector,
    filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy},
};
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;
use meridian_sync_proto::pb::mesh::{
    ZoneIngress, dataplane::networking::inbound::State, mesh_gateway_route, zone_ingress::AvailableService,
};

use super::{
    MeshSnapshot, ProxyConfig, SERVICE_TAG, check, clusters,
    cross_mesh::{self, MESH_TAG},
    listeners::stat_name,
    mesh_tls,
};

/// The services the local Dataplanes of `meshes` offer: one entry per
/// (mesh, full tag set of a healthy inbound) with its instance count,
/// sorted by mesh, then tags (the incumbent's `availableServices`, without
/// its tag filters). An inbound that is not ready counts nowhere.
pub fn available_services<'a>(meshes: impl IntoIterator<Item = &'a MeshSnapshot> + Clone) -> Vec<AvailableService> {
    let mut counts: BTreeMap<(String, BTreeMap<String, String>), u32> = BTreeMap::new();
    // crossMesh gateway listeners, tagged with their mesh (the incumbent's
    // entries for them): other zones' clients of other meshes reach them here.
    for l in cross_mesh::listeners(meshes.clone()) {
        let mut tags = l.tags;
        tags.insert(MESH_TAG.to_string(), l.mesh.clone());
        let c = counts.entry((l.mesh, tags)).or_default();
        *c = c.saturating_add(1);
    }
    for snapshot in meshes {
        for dp in snapshot.dataplanes.values() {
            let Some(n) = dp.spec.networking.as_ref() else { continue };
            for inbound in &n.inbound {
                let ready = inbound.state == State::Ready as i32 && inbound.health.as_ref().is_none_or(|h| h.ready);
                if !ready || !inbound.tags.contains_key(SERVICE_TAG) {
                    continue;
                }
                let c = counts.entry((snapshot.mesh.clone(), inbound.tags.clone())).or_default();
                *c = c.saturating_add(1);
            }
        }
    }
    counts
        .into_iter()
        .map(|((mesh, tags), instances)| AvailableService { tags, instances, mesh, external_service: false })
        .collect()
}

/// Destinations of `snapshot`'s mesh that name a service in `services`:
/// each service alone, each full tag set, and the route backends and
/// outbounds of the mesh asking for one of them.
fn destinations(snapshot: &MeshSnapshot, services: &[&AvailableService]) -> BTreeSet<BTreeMap<String, String>> {
    let mut out = BTreeSet::new();
    let names: BTreeSet<&str> = services.iter().filter_map(|s| s.tags.get(SERVICE_TAG).map(String::as_str)).collect();
    for s in services {
        if let Some(svc) = s.tags.get(SERVICE_TAG) {
            out.insert([(SERVICE_TAG.to_string(), svc.clone())].into());
        }
        out.insert(s.tags.clone());
    }
    let mut wanted: Vec<&BTreeMap<String, String>> = Vec::new();
    for r in snapshot.routes.values() {
        match r.spec.conf.as_ref().and_then(|c| c.route.as_ref()) {
            Some(mesh_gateway_route::conf::Route::Http(h)) => {
                wanted.extend(h.rules.iter().flat_map(|r| r.backends.iter().map(|b| &b.destination)));
            }
            Some(mesh_gateway_route::conf::Route::Tcp(t)) => {
                wanted.extend(t.rules.iter().flat_map(|r| r.backends.iter().map(|b| &b.destination)));
            }
            None => {}
        }
    }
    for dp in snapshot.dataplanes.values() {
        wanted.extend(dp.spec.networking.iter().flat_map(|n| n.outbound.iter().map(|o| &o.tags)));
    }
    for d in wanted {
        if d.get(SERVICE_TAG).is_some_and(|s| names.contains(s.as_str())) {
            out.insert(d.clone());
        }
    }
    out
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

/// The configuration of ZoneIngress `name` (`ingress`) over every mesh's
/// snapshot of this zone. Mesh mTLS is the clients' business: the ingress
/// holds no certificate.
pub fn generate<'a>(
    meshes: impl IntoIterator<Item = &'a MeshSnapshot> + Clone,
    name: &str,
    ingress: &ZoneIngress,
) -> ProxyConfig {
    let mut warnings = Vec::new();
    let services = available_services(meshes.clone());
    let n = ingress.networking.clone().unwrap_or_default();
    let address = if n.address.parse::<std::net::IpAddr>().is_ok() {
        n.address.clone()
    } else {
        warnings.push(format!(
            "ZoneIngress {name}: networking.address {:?} is not an IP address; binds 0.0.0.0",
            n.address
        ));
        "0.0.0.0".to_string()
    };
    let listener_name = format!("inbound:{address}:{}", n.port);
    let stat = stat_name(&listener_name);
    let mut chains = Vec::new();
    let mut all_clusters = Vec::new();
    let mut all_endpoints = Vec::new();
    for snapshot in meshes {
        let (cross, here): (Vec<&AvailableService>, Vec<&AvailableService>) =
            services.iter().filter(|s| s.mesh == snapshot.mesh).partition(|s| s.tags.contains_key(MESH_TAG));
        // crossMesh listeners: the client's SNI names the gateway's service
        // (and tags) in the gateway's mesh; passed through to the listener.
        for s in cross {
            let mut full = s.tags.clone();
            full.remove(MESH_TAG);
            let service = full.get(SERVICE_TAG).map(|v| [(SERVICE_TAG.to_string(), v.clone())].into());
            for d in service.into_iter().chain([full]).collect::<BTreeSet<BTreeMap<String, String>>>() {
                let cluster = format!("{}:{}:crossmesh", snapshot.mesh, clusters::cluster_name(&d));
                chains.push(FilterChain {
                    filter_chain_match: Some(FilterChainMatch {
                        server_names: vec![mesh_tls::sni(&snapshot.mesh, &d)],
                        transport_protocol: "tls".into(),
                        ..Default::default()
                    }),
                    filters: vec![tcp(&stat, &cluster)],
                    ..Default::default()
                });
                let eps = cross_mesh::endpoints(snapshot, &snapshot.mesh, &d);
                all_clusters.push(clusters::eds_cluster(&cluster, None));
                all_endpoints.push(envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment {
                    cluster_name: cluster,
                    endpoints: vec![envoy_types::pb::envoy::config::endpoint::v3::LocalityLbEndpoints {
                        lb_endpoints: clusters::lb_endpoints(eps),
                        ..Default::default()
                    }],
                    ..Default::default()
                });
            }
        }
        if here.is_empty() {
            continue;
        }
        let mut wanted: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for d in destinations(snapshot, &here) {
            let cluster = format!("{}:{}", snapshot.mesh, clusters::cluster_name(&d));
            chains.push(FilterChain {
                filter_chain_match: Some(FilterChainMatch {
                    server_names: vec![mesh_tls::sni(&snapshot.mesh, &d)],
                    transport_protocol: "tls".into(),
                    ..Default::default()
                }),
                filters: vec![tcp(&stat, &cluster)],
                ..Default::default()
            });
            wanted.insert(cluster, d);
        }
        // Local endpoints only, no TLS: the client's mTLS passes through.
        let (c, e) = clusters::generate(snapshot, &clusters::index(snapshot), &wanted, None, false, &mut warnings);
        all_clusters.extend(c);
        all_endpoints.extend(e);
    }
    if chains.is_empty() {
        warnings.push(format!("ZoneIngress {name}: no service is available in this zone; no listener"));
    }
    chains.sort_by(|a, b| {
        a.filter_chain_match
            .as_ref()
            .map(|m| &m.server_names)
            .cmp(&b.filter_chain_match.as_ref().map(|m| &m.server_names))
    });
    let listener = Listener {
        name: listener_name.clone(),
        stat_prefix: stat,
        address: Some(clusters::socket_address(&address, n.port)),
        filter_chains: chains,
        listener_filters: vec![ListenerFilter {
            name: "envoy.filters.listener.tls_inspector".into(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(TlsInspector::default()))),
            ..Default::default()
        }],
        enable_reuse_port: Some(BoolValue { value: false }),
        ..Default::default()
    };
    all_clusters.sort_by(|a, b| a.name.cmp(&b.name));
    all_endpoints.sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
    let mut config = ProxyConfig {
        listeners: vec![listener],
        clusters: all_clusters,
        endpoints: all_endpoints,
        warnings,
        ..ProxyConfig::default()
    };
    let _ = check::prune(&mut config);
    config.warnings.sort();
    config.warnings.dedup();
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_sync_proto::{Spec, universal};

    fn snapshot(yaml: &str) -> MeshSnapshot {
        let mut s = MeshSnapshot::new("default");
        for r in universal::parse_resources(yaml).expect("yaml") {
            s.upsert(&r.expect("resource"));
        }
        s
    }

    const LOCAL: &str = r#"
type: Dataplane
mesh: default
name: b-1
networking: {address: 10.0.0.1, inbound: [{port: 80, tags: {kuma.io/service: b, version: v1}}]}
---
type: Dataplane
mesh: default
name: b-2
networking: {address: 10.0.0.2, inbound: [{port: 80, tags: {kuma.io/service: b, version: v1}}]}
---
type: Dataplane
mesh: default
name: b-3
networking: {address: 10.0.0.3, inbound: [{port: 80, tags: {kuma.io/service: b, version: v2}, health: {ready: false}}]}
---
type: Dataplane
mesh: default
name: a-1
networking: {address: 10.0.0.4, inbound: [{port: 80, tags: {kuma.io/service: a}}]}
"#;

    #[test]
    fn available_services_count_healthy_instances_sorted() {
        let s = snapshot(LOCAL);
        let mut other = MeshSnapshot::new("aaa");
        other.upsert(&universal::parse_resources("type: Dataplane\nmesh: aaa\nname: x\nnetworking: {address: 10.0.0.9, inbound: [{port: 1, tags: {kuma.io/service: x}}]}").expect("yaml").remove(0).expect("dp"));
        let got = available_services([&s, &other]);
        let seen: Vec<(String, Vec<String>, u32)> = got
            .iter()
            .map(|a| (a.mesh.clone(), a.tags.iter().map(|(k, v)| format!("{k}={v}")).collect(), a.instances))
            .collect();
        assert_eq!(
            seen,
            [
                ("aaa".to_string(), vec!["kuma.io/service=x".to_string()], 1),
                ("default".to_string(), vec!["kuma.io/service=a".to_string()], 1),
                ("default".to_string(), vec!["kuma.io/service=b".to_string(), "version=v1".to_string()], 2),
            ]
        );
    }

    #[test]
    fn one_sni_chain_per_destination_to_local_endpoints() {
        let s = snapshot(LOCAL);
        let zi = match universal::parse_resources("type: ZoneIngress\nname: ingress-1\nnetworking: {address: 127.0.0.1, port: 10001, advertisedAddress: 192.0.2.1, advertisedPort: 10001}").expect("yaml").remove(0).expect("zi").spec {
            Spec::ZoneIngress(z) => z,
            _ => panic!("a ZoneIngress"),
        };
        let config = generate([&s], "ingress-1", &zi);
        let l = &config.listeners[0];
        assert_eq!(l.name, "inbound:127.0.0.1:10001");
        let snis: Vec<&str> = l
            .filter_chains
            .iter()
            .flat_map(|c| c.filter_chain_match.iter().flat_map(|m| m.server_names.iter()))
            .map(String::as_str)
            .collect();
        assert_eq!(snis, ["a{mesh=default}", "b{mesh=default,version=v1}", "b{mesh=default}"]);
        let b = config.endpoints.iter().find(|e| e.cluster_name == "default:b").expect("cluster default:b");
        assert_eq!(b.endpoints[0].lb_endpoints.len(), 2, "two ready instances of b");
        assert!(config.clusters.iter().all(|c| c.transport_socket.is_none()), "no TLS termination or origination");
    }
}
