//! What each zone holds of what the global sends, per resource: learnt
//! from the zone's own global→zone stream (the versions it already held
//! when it subscribed, then the ACK or NACK of every response), kept in
//! memory by the global instance the zone is connected to.
//!
//! ```text
//!   zone ──initial_resource_versions──▶ TrackedWire ──▶ held (version per wire name)
//!   global ──response (names, versions)──▶ HeldObserver: nonce → carried
//!   zone ──ACK nonce──▶ carried become held │ ──NACK nonce, reason──▶ those the reason names rejected
//! ```
//!
//! Cost: a response's resources once when sent, once when answered; a
//! read ([`Held::get`]) is one map lookup per zone. A zone that reconnects
//! starts over from the versions it presents.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse;
use meridian_sync_proto::{
    delta::SendStats,
    driver::{Incoming, Observer, SendWire, lock},
};

/// Unanswered responses remembered per zone stream; a zone that never
/// answers loses the oldest (only their status is lost).
const MAX_UNANSWERED: usize = 256;

/// What a zone holds of one resource.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeldResource {
    /// The version the zone holds (ACKed, or presented on subscribing).
    pub version: Option<String>,
    /// The version the zone refused and why, when it refused one after
    /// the version it holds.
    pub rejected: Option<(String, String)>,
}

/// Per zone, per KDS type (the resource type name), per wire name.
type ZoneMap = BTreeMap<String, BTreeMap<String, HeldResource>>;

/// Shared across the global's zone streams; cheap to clone.
#[derive(Clone, Default)]
pub struct Held {
    zones: Arc<Mutex<BTreeMap<String, ZoneMap>>>,
}

impl Held {
    /// What `zone` holds of the resource `wire` of KDS type `type_name`;
    /// `None` when the zone never reported anything about it.
    pub fn get(&self, zone: &str, type_name: &str, wire: &str) -> Option<HeldResource> {
        lock(&self.zones).get(zone).and_then(|z| z.get(type_name)).and_then(|t| t.get(wire)).cloned()
    }

    /// A zone opened a new global→zone stream: what it held before is
    /// re-learnt from its subscriptions.
    pub(crate) fn reset(&self, zone: &str) {
        lock(&self.zones).insert(zone.to_string(), ZoneMap::new());
    }

    /// Runs `f` on what `zone` holds of `type_name`. Allocates the keys only
    /// the first time (this runs on every ACK of every zone).
    fn update(&self, zone: &str, type_name: &str, f: impl FnOnce(&mut BTreeMap<String, HeldResource>)) {
        let mut zones = lock(&self.zones);
        if !zones.contains_key(zone) {
            zones.insert(zone.to_string(), ZoneMap::new());
        }
        let Some(types) = zones.get_mut(zone) else { return };
        if !types.contains_key(type_name) {
            types.insert(type_name.to_string(), BTreeMap::new());
        }
        if let Some(t) = types.get_mut(type_name) {
            f(t);
        }
    }
}

/// The global→zone wire, recording the versions a zone presents when it
/// subscribes (`initial_resource_versions`).
pub(crate) struct TrackedWire<W> {
    pub(crate) inner: W,
    pub(crate) zone: String,
    pub(crate) held: Held,
}

impl<W: SendWire> SendWire for TrackedWire<W> {
    type Error = W::Error;
    const FULL_STATE: bool = W::FULL_STATE;
    async fn recv(&mut self) -> Result<Option<Incoming>, W::Error> {
        let incoming = self.inner.recv().await?;
        if let Some(i) = &incoming
            && i.request.response_nonce.is_empty()
            && !i.request.initial_resource_versions.is_empty()
        {
            let versions = &i.request.initial_resource_versions;
            self.held.update(&self.zone, &i.request.type_url, |t| {
                for (wire, version) in versions {
                    t.insert(wire.clone(), HeldResource { version: Some(version.clone()), rejected: None });
                }
            });
        }
        Ok(incoming)
    }
    async fn send(
        &mut self,
        response: DeltaDiscoveryResponse,
        full: Option<meridian_sync_proto::delta::DesiredSet>,
    ) -> bool {
        self.inner.send(response, full).await
    }
}

/// What one response carried: (wire name, version) upserts and removals.
struct Carried {
    resources: Vec<(String, String)>,
    removed: Vec<String>,
}

/// Records, per nonce, what each response carried and, on the zone's
/// answer, what it now holds.
pub(crate) struct HeldObserver {
    zone: String,
    held: Held,
    carried: HashMap<String, Carried>,
}

impl HeldObserver {
    pub(crate) fn new(zone: &str, held: Held) -> HeldObserver {
        HeldObserver { zone: zone.to_string(), held, carried: HashMap::new() }
    }
}

impl Observer for HeldObserver {
    fn sent(&mut self, _type_url: &str, response: &DeltaDiscoveryResponse, _: &SendStats) {
        if self.carried.len() >= MAX_UNANSWERED {
            self.carried.clear();
        }
        let resources = response.resources.iter().map(|r| (r.name.clone(), r.version.clone())).collect();
        self.carried.insert(response.nonce.clone(), Carried { resources, removed: response.removed_resources.clone() });
    }

    fn acked(&mut self, type_url: &str, nonce: &str, _: Option<std::time::Duration>, _: &SendStats) {
        let Some(c) = self.carried.remove(nonce) else { return };
        self.held.update(&self.zone, type_url, |t| {
            for (wire, version) in c.resources {
                t.insert(wire, HeldResource { version: Some(version), rejected: None });
            }
            for wire in c.removed {
                t.remove(&wire);
            }
        });
    }

    /// The zone applies what it can of a response and names the rest in
    /// its reason (`<wire name>: why`): those named are rejected, the others
    /// held; when the reason names none of them, all are rejected.
    fn nacked(&mut self, type_url: &str, nonce: &str, reason: &str, _: &SendStats) {
        let Some(c) = self.carried.remove(nonce) else { return };
        let any_named = c.resources.iter().any(|(w, _)| names(reason, w));
        self.held.update(&self.zone, type_url, |t| {
            for (wire, version) in c.resources {
                let entry = t.entry(wire.clone()).or_default();
                if !any_named || names(reason, &wire) {
                    entry.rejected = Some((version, reason.to_string()));
                } else {
                    *entry = HeldResource { version: Some(version), rejected: None };
                }
            }
        });
    }
}

/// Whether `reason` names the wire name `wire` as a whole (at the start
/// or after a separator, followed by `:`), as the zone's NACKs do.
fn names(reason: &str, wire: &str) -> bool {
    reason.match_indices(wire).any(|(at, _)| {
        let before = reason[..at].chars().next_back();
        let after = reason[at + wire.len()..].chars().next();
        before.is_none_or(|c| c == ' ' || c == ';') && after == Some(':')
    })
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::discovery::v3::Resource;

    use super::*;

    fn response(nonce: &str, items: &[(&str, &str)]) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            nonce: nonce.into(),
            resources: items
                .iter()
                .map(|(n, v)| Resource { name: n.to_string(), version: v.to_string(), ..Default::default() })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn acks_hold_and_nacks_reject_what_they_name() {
        let held = Held::default();
        let mut o = HeldObserver::new("zone-1", held.clone());
        let stats = SendStats::default();
        o.sent("MeshGatewayRoute", &response("n1", &[("r.default", "v1"), ("xr.default", "x1")]), &stats);
        assert_eq!(held.get("zone-1", "MeshGatewayRoute", "r.default"), None, "not answered yet");
        o.acked("MeshGatewayRoute", "n1", None, &stats);
        assert_eq!(held.get("zone-1", "MeshGatewayRoute", "r.default").and_then(|h| h.version), Some("v1".into()));

        o.sent("MeshGatewayRoute", &response("n2", &[("r.default", "v2"), ("xr.default", "x2")]), &stats);
        o.nacked("MeshGatewayRoute", "n2", "xr.default: bad path", &stats);
        let r = held.get("zone-1", "MeshGatewayRoute", "r.default").expect("held");
        assert_eq!((r.version.as_deref(), r.rejected), (Some("v2"), None), "a sibling not named applied");
        let x = held.get("zone-1", "MeshGatewayRoute", "xr.default").expect("held");
        assert_eq!(x.version.as_deref(), Some("x1"), "the zone keeps what it had");
        assert_eq!(x.rejected, Some(("x2".into(), "xr.default: bad path".into())));

        o.sent("MeshGatewayRoute", &response("n3", &[("r.default", "v3")]), &stats);
        o.nacked("MeshGatewayRoute", "n3", "store refused", &stats);
        assert!(held.get("zone-1", "MeshGatewayRoute", "r.default").and_then(|h| h.rejected).is_some());

        held.reset("zone-1");
        assert_eq!(held.get("zone-1", "MeshGatewayRoute", "r.default"), None, "a new stream starts over");
    }
}
