//! Cross-mesh gateways (REFERENCE-MESH §4): a MeshGateway listener with
//! `crossMesh: true` is reachable from proxies of other meshes through an
//! outbound tagged `kuma.io/mesh: <gateway mesh>`.
//!
//! ```text
//!   mesh other: client ─▶ outbound {kuma.io/service: edge, kuma.io/mesh: default}
//!        cluster: endpoints = gateway Dataplanes of mesh default at <address>:<crossMesh listener port>
//!                 mTLS: own identity, CA mesh_ca:secret:default, SAN spiffe://default/edge, SNI edge{mesh=default}
//!   mesh default: gateway listener (crossMesh) requires a client certificate of any mTLS mesh (mesh_ca:secret:all)
//! ```
//!
//! Same zone only: the listeners are read from this zone's Dataplanes.

use std::collections::BTreeMap;

use meridian_sync_proto::pb::mesh::dataplane::networking::gateway::GatewayType;

use super::{MeshSnapshot, select, tags_match};

/// The tag naming the mesh of an outbound's destination.
pub const MESH_TAG: &str = "kuma.io/mesh";

/// One `crossMesh` listener of one gateway Dataplane of this zone.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CrossMeshListener {
    /// The gateway's mesh.
    pub mesh: String,
    /// The Dataplane's gateway tags, with the MeshGateway's and the listener's.
    pub tags: BTreeMap<String, String>,
    /// The Dataplane's address and the listener's port.
    pub address: String,
    pub port: u32,
}

/// Every `crossMesh` listener served by the builtin gateway Dataplanes of
/// `meshes`, sorted.
pub fn listeners<'a>(meshes: impl IntoIterator<Item = &'a MeshSnapshot>) -> Vec<CrossMeshListener> {
    let mut out = Vec::new();
    for snapshot in meshes {
        if !snapshot.gateways.values().any(|g| g.spec.conf.iter().flat_map(|c| &c.listeners).any(|l| l.cross_mesh)) {
            continue;
        }
        for dp in snapshot.dataplanes.values() {
            let Some(n) = dp.spec.networking.as_ref() else { continue };
            let Some(gw) = n.gateway.as_ref().filter(|g| g.r#type == GatewayType::Builtin as i32) else { continue };
            let Some(gateway) = select::select_gateway(snapshot, &gw.tags) else { continue };
            for l in gateway.spec.conf.iter().flat_map(|c| &c.listeners).filter(|l| l.cross_mesh) {
                let mut tags = gw.tags.clone();
                tags.extend(gateway.spec.tags.clone());
                tags.extend(l.tags.clone());
                out.push(CrossMeshListener {
                    mesh: snapshot.mesh.clone(),
                    tags,
                    address: n.address.clone(),
                    port: l.port,
                });
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The other mesh a destination names (`kuma.io/mesh` other than the
/// snapshot's), with the destination's other tags.
pub(super) fn target(
    snapshot: &MeshSnapshot,
    destination: &BTreeMap<String, String>,
) -> Option<(String, BTreeMap<String, String>)> {
    let mesh = destination.get(MESH_TAG).filter(|m| **m != snapshot.mesh)?;
    let mut rest = destination.clone();
    rest.remove(MESH_TAG);
    Some((mesh.clone(), rest))
}

/// The (address, port) of every crossMesh listener of mesh `target`
/// matching `destination`, sorted.
pub(super) fn endpoints(
    snapshot: &MeshSnapshot,
    target: &str,
    destination: &BTreeMap<String, String>,
) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = snapshot
        .cross_mesh_listeners
        .iter()
        .filter(|l| l.mesh == target && tags_match(destination, &l.tags))
        .filter(|l| l.address.parse::<std::net::IpAddr>().is_ok())
        .map(|l| (l.address.clone(), l.port))
        .collect();
    out.sort();
    out.dedup();
    out
}
