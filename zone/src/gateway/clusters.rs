//! Clusters, one per distinct destination tag set, with EDS endpoints from
//! the healthy inbounds of the mesh's Dataplanes (originating mesh mTLS when
//! the mesh has it on); and a sidecar's static local clusters.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::{
    cluster::v3::{Cluster, cluster},
    core::v3::{
        Address, AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress, address, config_source,
        socket_address,
    },
    endpoint::v3::{ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint},
};
use envoy_types::pb::google::protobuf::{Duration, UInt32Value};
use meridian_sync_proto::pb::mesh::dataplane::{
    Networking,
    networking::{Inbound, inbound::State},
};
use sha2::{Digest, Sha256};

use super::{MeshSnapshot, SERVICE_TAG, mesh_tls, select::tags_match};

/// How long Envoy waits to connect to a backend.
const CONNECT_TIMEOUT_SECS: i64 = 5;
/// How long a sidecar waits to connect to its application (the incumbent's
/// local clusters: 10 s).
const LOCAL_CONNECT_TIMEOUT_SECS: i64 = 10;

/// The cluster name of a destination: its service when that is the only
/// tag, else `<service>-<hash of the tags>` (same service, other tags =
/// another cluster).
pub(super) fn cluster_name(destination: &BTreeMap<String, String>) -> String {
    let service = destination.get(SERVICE_TAG).map(String::as_str).unwrap_or("unknown");
    if destination.len() == 1 && destination.contains_key(SERVICE_TAG) {
        return service.to_string();
    }
    let mut h = Sha256::new();
    for (k, v) in destination {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    format!("{service}-{}", hex::encode(&h.finalize()[..4]))
}

/// ADS as the config source of RDS and EDS.
pub(super) fn ads_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource::default())),
        ..Default::default()
    }
}

pub(super) fn socket_address(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// Every inbound of the mesh by its service tag (built once per generation,
/// so resolving N destinations costs N lookups, not N scans).
pub(super) type Inbounds<'a> = BTreeMap<&'a str, Vec<(&'a str, &'a Networking, &'a Inbound)>>;

pub(super) fn index(snapshot: &MeshSnapshot) -> Inbounds<'_> {
    let mut out: Inbounds<'_> = BTreeMap::new();
    for dp in snapshot.dataplanes.values() {
        let Some(n) = dp.spec.networking.as_ref() else { continue };
        for inbound in &n.inbound {
            let service = inbound.tags.get(SERVICE_TAG).map(String::as_str).unwrap_or("");
            out.entry(service).or_default().push((dp.name.as_str(), n, inbound));
        }
    }
    out
}

/// The (address, port) of every healthy inbound matching `destination`;
/// `None` when the destination resolves to no service at all (no inbound
/// of the mesh carries its `kuma.io/service`, or, for `*`, no inbound at
/// all): it gets no cluster and requests get 500. A known service with no
/// healthy inbound matching every tag gets a cluster without endpoints,
/// and Envoy answers 503 `no healthy upstream`, as Kuma's users expect
/// (Kuma 2.14 generates a cluster for every destination,
/// `cluster_generator.go`).
pub(super) fn endpoints(
    inbounds: &Inbounds<'_>,
    destination: &BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) -> Option<Vec<(String, u32)>> {
    let candidates: Vec<&(&str, &Networking, &Inbound)> = match destination.get(SERVICE_TAG) {
        Some(service) if service != "*" => {
            inbounds.get(service.as_str()).map(|v| v.iter().collect()).unwrap_or_default()
        }
        _ => inbounds.values().flatten().collect(),
    };
    if candidates.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for (dp, n, inbound) in candidates {
        if !tags_match(destination, &inbound.tags) {
            continue;
        }
        let ready = inbound.state == State::Ready as i32 && inbound.health.as_ref().is_none_or(|h| h.ready);
        if !ready {
            continue;
        }
        let ip = [n.advertised_address.as_str(), inbound.address.as_str(), n.address.as_str()]
            .into_iter()
            .find(|a| !a.is_empty())
            .unwrap_or_default();
        if ip.parse::<std::net::IpAddr>().is_err() || inbound.port == 0 || inbound.port > u32::from(u16::MAX) {
            warnings.push(format!("Dataplane {dp:?}: inbound {ip}:{} is not an IP endpoint; skipped", inbound.port));
            continue;
        }
        out.push((ip.to_string(), inbound.port));
    }
    out.sort();
    out.dedup();
    Some(out)
}

/// A sidecar's cluster to its application: `localhost:<port>` (the
/// incumbent's name), one static endpoint `ip:port`.
pub(super) fn local_cluster(name: &str, ip: &str, port: u32) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Static as i32)),
        connect_timeout: Some(Duration { seconds: LOCAL_CONNECT_TIMEOUT_SECS, nanos: 0 }),
        lb_policy: cluster::LbPolicy::RoundRobin as i32,
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.to_string(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket_address(ip, port)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The `kuma.io/protocol` every inbound of the mesh matching `destination`
/// declares, when they all declare the same one (healthy or not: the
/// service's protocol does not change with its health); `None` when they
/// differ, some declare none, or there is no such inbound. `inbounds` is
/// the mesh's [`index`]: a destination naming a service looks at that
/// service's inbounds only (a lookup, not a scan of every Dataplane).
pub(super) fn protocol_of(inbounds: &Inbounds<'_>, destination: &BTreeMap<String, String>) -> Option<String> {
    let candidates: Box<dyn Iterator<Item = &(&str, &Networking, &Inbound)>> = match destination.get(SERVICE_TAG) {
        Some(service) if service != "*" => Box::new(inbounds.get(service.as_str()).into_iter().flatten()),
        _ => Box::new(inbounds.values().flatten()),
    };
    let mut found: Option<&str> = None;
    for (_, _, inbound) in candidates.filter(|(_, _, i)| tags_match(destination, &i.tags)) {
        let p = inbound.tags.get(super::PROTOCOL_TAG).map(String::as_str)?;
        if found.is_some_and(|f| f != p) {
            return None;
        }
        found = Some(p);
    }
    found.map(str::to_string)
}

/// An EDS cluster (endpoints over ADS) with `socket` as its transport.
pub(super) fn eds_cluster(
    name: &str,
    socket: Option<envoy_types::pb::envoy::config::core::v3::TransportSocket>,
) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(cluster::EdsClusterConfig { eds_config: Some(ads_source()), ..Default::default() }),
        connect_timeout: Some(Duration { seconds: CONNECT_TIMEOUT_SECS, nanos: 0 }),
        lb_policy: cluster::LbPolicy::RoundRobin as i32,
        transport_socket: socket,
        ..Default::default()
    }
}

/// Endpoints of weight 1 at each (ip, port).
pub(super) fn lb_endpoints(eps: Vec<(String, u32)>) -> Vec<LbEndpoint> {
    eps.into_iter()
        .map(|(ip, port)| LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(socket_address(&ip, port)),
                ..Default::default()
            })),
            load_balancing_weight: Some(UInt32Value { value: 1 }),
            ..Default::default()
        })
        .collect()
}

/// Clusters and load assignments for the destinations asked for; with
/// `mtls`, each cluster originates mesh mTLS to its destination and, when
/// `remote` (every proxy but a ZoneIngress), reaches the instances of other
/// zones through their ZoneIngresses ([`crate::gateway::cross_zone`]).
pub(super) fn generate(
    snapshot: &MeshSnapshot,
    inbounds: &Inbounds<'_>,
    wanted: &BTreeMap<String, BTreeMap<String, String>>,
    mtls: Option<&mesh_tls::MeshTls>,
    remote: bool,
    warnings: &mut Vec<String>,
) -> (Vec<Cluster>, Vec<ClusterLoadAssignment>) {
    // Sized up front: a Cluster is over 3 KB, and growing a vector of a
    // thousand of them copies megabytes.
    let mut clusters = Vec::with_capacity(wanted.len());
    let mut assignments = Vec::with_capacity(wanted.len());
    for (name, destination) in wanted {
        let (eps, remote_eps, socket) = if let Some((target, dest)) = super::cross_mesh::target(snapshot, destination) {
            // A crossMesh gateway of another mesh: over mTLS only.
            let Some(m) = mtls else {
                warnings.push(format!(
                    "destination {destination:?} is a gateway of mesh {target:?}, reached over mesh mTLS, which is off in mesh {:?}: no cluster {name} (requests get 500)",
                    snapshot.mesh
                ));
                continue;
            };
            let eps = super::cross_mesh::endpoints(snapshot, &target, &dest);
            // Other zones' crossMesh listeners, announced with `kuma.io/mesh`.
            let mut announced = dest.clone();
            announced.insert(super::cross_mesh::MESH_TAG.to_string(), target.clone());
            let remote_eps = if remote {
                super::cross_zone::remote_endpoints(snapshot, &target, &announced, true, eps.is_empty(), warnings)
            } else {
                Vec::new()
            };
            if eps.is_empty() && remote_eps.is_empty() {
                warnings.push(format!(
                    "destination {destination:?}: no crossMesh gateway listener of mesh {target:?} in this zone matches; cluster {name} is empty (requests get 503)"
                ));
            }
            (eps, remote_eps, Some(mesh_tls::cross_mesh_upstream_socket(&m.mesh, &target, &dest)))
        } else {
            let local = endpoints(inbounds, destination, warnings);
            let remote_eps = if remote {
                super::cross_zone::remote_endpoints(
                    snapshot,
                    &snapshot.mesh,
                    destination,
                    mtls.is_some(),
                    local.is_none(),
                    warnings,
                )
            } else {
                Vec::new()
            };
            let eps = match local {
                Some(eps) => eps,
                None if !remote_eps.is_empty() => Vec::new(),
                None => {
                    warnings.push(format!(
                        "destination {destination:?} resolves to no service: no cluster {name} (requests get 500)"
                    ));
                    continue;
                }
            };
            if eps.is_empty() && remote_eps.is_empty() {
                warnings.push(format!(
                    "destination {destination:?} has no healthy endpoint: cluster {name} is empty (requests get 503)"
                ));
            }
            (eps, remote_eps, mtls.map(|m| mesh_tls::upstream_socket(&m.mesh, destination)))
        };
        clusters.push(eds_cluster(name, socket));
        let lb_endpoints = lb_endpoints(eps);
        let mut localities = vec![LocalityLbEndpoints {
            locality: super::cross_zone::locality(&snapshot.zone),
            lb_endpoints,
            ..Default::default()
        }];
        localities.extend(super::cross_zone::remote_localities(remote_eps));
        assignments.push(ClusterLoadAssignment {
            cluster_name: name.clone(),
            endpoints: localities,
            ..Default::default()
        });
    }
    (clusters, assignments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_are_readable_and_distinct() {
        let one: BTreeMap<String, String> = [(SERVICE_TAG.to_string(), "web".to_string())].into();
        assert_eq!(cluster_name(&one), "web");
        let mut v2 = one.clone();
        v2.insert("version".into(), "v2".into());
        let n = cluster_name(&v2);
        assert!(n.starts_with("web-") && n.len() == "web-".len() + 8, "{n}");
        let mut v3 = one;
        v3.insert("version".into(), "v3".into());
        assert_ne!(cluster_name(&v3), n);
    }
}
