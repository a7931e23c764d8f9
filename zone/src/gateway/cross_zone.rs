//! Cross-zone endpoints: the instances of a destination that live in other
//! zones, reached through those zones' ZoneIngresses.
//!
//! ```text
//!   zone-1 proxy ── cluster <svc> (EDS) ─┬─ priority 0, locality zone-1: local healthy inbounds
//!                                        └─ priority 1, locality zone-2: ZoneIngress advertised address:port,
//!                                                                        weight = instances it announces
//!   mTLS from the proxy (SNI <svc>{mesh=<m>[,k=v]}) ──▶ zone-2 ingress (routes by SNI, no termination) ──▶ zone-2 sidecar
//! ```
//!
//! As the incumbent (`pkg/xds/topology/outbound.go`): only with the mesh's
//! mTLS on (the ingress routes by SNI, which only an mTLS client sends),
//! only ingresses with an advertised address and port, weight = the
//! `instances` of the `availableServices` entries the destination's tags
//! select. Unlike the incumbent's default (every zone at priority 0, mixed,
//! unless the Mesh sets `routing.localityAwareLoadBalancing`), other zones
//! are always priority 1: local instances serve while there are any, and
//! traffic fails over to other zones when they are gone.
//!
//! Several ZoneIngresses advertising the same address and port (replicas
//! behind one load balancer) are one endpoint, as in the incumbent
//! (`fillIngressOutbounds` keeps the first ingress per advertised
//! `address:port` and skips the others): the first by stored name counts,
//! with its announced instances as the weight (each replica announces the
//! same instances of its zone, so summing them would overweight that zone).

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::{
    core::v3::{Address, Locality, SocketAddress, address, socket_address},
    endpoint::v3::{Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint},
};
use envoy_types::pb::google::protobuf::UInt32Value;

use super::{MeshSnapshot, cross_mesh::MESH_TAG, select::tags_match};

/// Priority of other zones' endpoints (local ones are 0).
pub const REMOTE_PRIORITY: u32 = 1;

/// One other zone's ingress as an endpoint of a destination.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RemoteEndpoint {
    /// The zone the ingress is in (its locality).
    pub zone: String,
    /// Advertised address (an IP) and port of the ingress.
    pub address: String,
    pub port: u32,
    /// Instances of the destination behind it (the endpoint's weight).
    pub instances: u32,
}

/// The zone a ZoneIngress belongs to: its `zone` (set by the global to the
/// zone that sent it), else the `<zone>.` prefix of its stored name.
fn zone_of<'a>(name: &'a str, zi: &'a meridian_sync_proto::pb::mesh::ZoneIngress) -> &'a str {
    if zi.zone.is_empty() { name.split_once('.').map(|(z, _)| z).unwrap_or(name) } else { &zi.zone }
}

/// The other zones' ingresses serving `destination` of `mesh` (the
/// snapshot's, or for a crossMesh gateway, the gateway's: then the
/// destination carries `kuma.io/mesh` as the announced entry does),
/// sorted by zone, address and port. With mTLS off (`mtls` false) none:
/// a warning names each zone that has instances, louder when the service
/// has none here (`no_local_service`: requests get 500). An ingress with
/// no advertised address or port, or a non-IP one, is left out with a warning.
pub(super) fn remote_endpoints(
    snapshot: &MeshSnapshot,
    mesh: &str,
    destination: &BTreeMap<String, String>,
    mtls: bool,
    no_local_service: bool,
    warnings: &mut Vec<String>,
) -> Vec<RemoteEndpoint> {
    let mut out = Vec::new();
    // Advertised address:port → the first ingress (by stored name) there.
    let mut first_at: BTreeMap<(&str, u32), &str> = BTreeMap::new();
    for (name, zi) in snapshot.remote_ingresses.iter() {
        if let Some(n) = zi.networking.as_ref().filter(|n| !n.advertised_address.is_empty() && n.advertised_port != 0) {
            first_at.entry((n.advertised_address.as_str(), n.advertised_port)).or_insert(name.as_str());
        }
    }
    for (name, zi) in snapshot.remote_ingresses.iter() {
        let instances: u32 = zi
            .available_services
            .iter()
            .filter(|s| s.mesh == mesh && !s.external_service && tags_match(destination, &s.tags))
            // A crossMesh listener's entry serves only cross-mesh destinations.
            .filter(|s| s.tags.contains_key(MESH_TAG) == destination.contains_key(MESH_TAG))
            .map(|s| s.instances)
            .fold(0u32, u32::saturating_add);
        if instances == 0 {
            continue;
        }
        let zone = zone_of(name, zi);
        if !mtls {
            let only = if no_local_service { " and nowhere in this zone" } else { "" };
            warnings.push(format!(
                "destination {destination:?} has {instances} instance(s) in zone {zone}{only}, not reachable: cross-zone traffic goes through ZoneIngress {name}, which needs mesh mTLS (enable mtls on Mesh {:?})",
                mesh
            ));
            continue;
        }
        let n = zi.networking.as_ref();
        let address = n.map(|n| n.advertised_address.as_str()).unwrap_or_default();
        let port = n.map(|n| n.advertised_port).unwrap_or_default();
        if address.is_empty() || port == 0 {
            warnings.push(format!(
                "ZoneIngress {name} of zone {zone} has no advertised address and port: its {instances} instance(s) of {destination:?} are left out"
            ));
            continue;
        }
        if address.parse::<std::net::IpAddr>().is_err() || port > u32::from(u16::MAX) {
            warnings.push(format!(
                "ZoneIngress {name} of zone {zone}: advertised {address}:{port} is not an IP address and port; its {instances} instance(s) of {destination:?} are left out"
            ));
            continue;
        }
        if first_at.get(&(address, port)).is_some_and(|first| *first != name.as_str()) {
            // Another ingress at this address:port already is the endpoint.
            continue;
        }
        out.push(RemoteEndpoint { zone: zone.to_string(), address: address.to_string(), port, instances });
    }
    out.sort();
    out
}

/// The locality of zone `zone` (none for an unnamed zone, as in golden tests).
pub(super) fn locality(zone: &str) -> Option<Locality> {
    (!zone.is_empty()).then(|| Locality { zone: zone.to_string(), ..Default::default() })
}

/// Remote endpoints as one locality per zone at [`REMOTE_PRIORITY`], each
/// endpoint weighted by its instances.
pub(super) fn remote_localities(eps: Vec<RemoteEndpoint>) -> Vec<LocalityLbEndpoints> {
    let mut by_zone: BTreeMap<String, Vec<LbEndpoint>> = BTreeMap::new();
    for e in eps {
        by_zone.entry(e.zone.clone()).or_default().push(LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: e.address.clone(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(e.port)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            load_balancing_weight: Some(UInt32Value { value: e.instances.max(1) }),
            ..Default::default()
        });
    }
    by_zone
        .into_iter()
        .map(|(zone, lb_endpoints)| LocalityLbEndpoints {
            locality: locality(&zone),
            lb_endpoints,
            priority: REMOTE_PRIORITY,
            ..Default::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_sync_proto::pb::mesh::{ZoneIngress, zone_ingress};

    /// (mesh, tags, instances) of one announced service.
    type Announced<'a> = (&'a str, &'a [(&'a str, &'a str)], u32);

    fn ingress(zone: &str, address: &str, port: u32, services: &[Announced<'_>]) -> ZoneIngress {
        ZoneIngress {
            zone: zone.into(),
            networking: Some(zone_ingress::Networking {
                address: "10.0.0.1".into(),
                advertised_address: address.into(),
                port: 10001,
                advertised_port: port,
                ..Default::default()
            }),
            available_services: services
                .iter()
                .map(|(mesh, tags, n)| zone_ingress::AvailableService {
                    tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                    instances: *n,
                    mesh: mesh.to_string(),
                    external_service: false,
                })
                .collect(),
        }
    }

    fn dest(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn ingresses_weighted_by_instances_only_with_mtls_and_an_address() {
        let svc = [("kuma.io/service", "b"), ("version", "v1")];
        let mut s = MeshSnapshot::new("default");
        s.remote_ingresses = std::sync::Arc::new(
            [
                ("zone-2.ingress".to_string(), ingress("zone-2", "192.0.2.2", 10002, &[("default", &svc, 3)])),
                ("zone-3.ingress".to_string(), ingress("zone-3", "", 0, &[("default", &svc, 1)])),
                ("zone-4.ingress".to_string(), ingress("zone-4", "192.0.2.4", 10004, &[("other", &svc, 5)])),
            ]
            .into(),
        );
        let mut w = Vec::new();
        let eps = remote_endpoints(&s, "default", &dest(&[("kuma.io/service", "b")]), true, false, &mut w);
        assert_eq!(
            eps,
            [RemoteEndpoint { zone: "zone-2".into(), address: "192.0.2.2".into(), port: 10002, instances: 3 }]
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("zone-3.ingress") && w[0].contains("no advertised address"), "{w:?}");
        // A tag the instances lack selects nothing.
        let mut w = Vec::new();
        assert!(
            remote_endpoints(&s, "default", &dest(&[("kuma.io/service", "b"), ("version", "v2")]), true, false, &mut w)
                .is_empty()
        );
        // mTLS off: nothing, and a warning per zone with instances.
        let mut w = Vec::new();
        assert!(remote_endpoints(&s, "default", &dest(&[("kuma.io/service", "b")]), false, true, &mut w).is_empty());
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w.iter().all(|w| w.contains("needs mesh mTLS") && w.contains("nowhere in this zone")), "{w:?}");

        let l = remote_localities(eps);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].priority, REMOTE_PRIORITY);
        assert_eq!(l[0].locality.as_ref().map(|l| l.zone.as_str()), Some("zone-2"));
        assert_eq!(l[0].lb_endpoints[0].load_balancing_weight, Some(UInt32Value { value: 3 }));
    }

    #[test]
    fn ingresses_behind_one_address_are_one_endpoint() {
        let svc = [("kuma.io/service", "b")];
        let mut s = MeshSnapshot::new("default");
        s.remote_ingresses = std::sync::Arc::new(
            [
                // Two replicas of zone-2's ingress behind one load balancer.
                ("zone-2.ingress-a".to_string(), ingress("zone-2", "192.0.2.2", 10001, &[("default", &svc, 3)])),
                ("zone-2.ingress-b".to_string(), ingress("zone-2", "192.0.2.2", 10001, &[("default", &svc, 3)])),
                // Same address, another port: another endpoint.
                ("zone-2.ingress-c".to_string(), ingress("zone-2", "192.0.2.2", 10002, &[("default", &svc, 3)])),
            ]
            .into(),
        );
        let mut w = Vec::new();
        let eps = remote_endpoints(&s, "default", &dest(&svc), true, false, &mut w);
        let at = |port| RemoteEndpoint { zone: "zone-2".into(), address: "192.0.2.2".into(), port, instances: 3 };
        assert_eq!(eps, [at(10001), at(10002)], "{w:?}");
        let l = remote_localities(eps);
        assert_eq!(l[0].lb_endpoints.len(), 2);
    }
}
