//! Applying what arrives over KDS, the same way in both directions (zone
//! resources at the global, global resources in a zone).

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use meridian_store::{ResourceKey, StatusExpect, StoreError, WriteOp, WriteResource};
use meridian_sync_proto::{
    ResourceType,
    delta::DeltaReceiver,
    kds::{self, WireResource},
};

use crate::Manager;

/// How the receiving side stores what it receives.
pub trait Placement {
    /// The local key of the resource named `name` in `mesh` on the wire.
    fn key(&self, ty: ResourceType, mesh: &str, name: &str) -> ResourceKey;
    /// The labels stored with a received resource.
    fn labels(&self, w: &WireResource) -> std::collections::BTreeMap<String, String>;
    /// Whether a write to `key` must first check who owns what is stored
    /// there ([`Placement::owns`]): true for keys the peer does not own by
    /// construction (a zone's Kuma-hashed names, stored as they come).
    fn needs_owner_check(&self, _key: &ResourceKey) -> bool {
        false
    }
    /// Whether the peer may replace a stored resource with these labels.
    fn owns(&self, _stored: &std::collections::BTreeMap<String, String>) -> bool {
        true
    }
    /// Refuses (with the NACK reason, the wire name is prefixed) a
    /// resource the peer may not send in this shape: at the global, a
    /// ZoneIngress whose `zone` names another zone than the sender.
    fn check(&self, _w: &WireResource) -> Result<(), String> {
        Ok(())
    }
}

/// Applies one response in one store transaction: every upsert that opens
/// and validates ([`kds::receive`]) is written; removals of what is held are
/// deleted; the rest are named in the NACK while their siblings apply.
/// Returns the ACK or NACK to send; a store failure is returned as such
/// (the stream should end, so the peer resends on reconnect).
pub async fn apply(
    manager: &Manager,
    ty: ResourceType,
    rcv: &mut DeltaReceiver,
    resp: &DeltaDiscoveryResponse,
    place: &impl Placement,
) -> Result<DeltaDiscoveryRequest, StoreError> {
    let (changes, mut errors) = rcv.on_response(resp);
    let mut ops = Vec::new();
    let mut applied = Vec::new();
    let mut removed = Vec::new();
    for (wire, version, any) in &changes.upserts {
        match kds::receive(ty, wire, version, any) {
            Ok(w) => {
                if let Err(reason) = place.check(&w) {
                    errors.push(format!("{wire}: {reason}"));
                    continue;
                }
                let key = place.key(ty, &w.resource.meta.mesh, &w.resource.meta.name);
                let labels = place.labels(&w);
                // The REST limit, on the envelope as it is stored and will be
                // relayed (labels the receiver adds included): what one zone
                // sends can never be too large to send on to the others.
                let size = kds::travelling_size(ty, &key.mesh, &key.name, &labels, &w.version, &w.spec_bytes);
                if size > manager.max_resource_bytes() {
                    errors.push(format!(
                        "{wire}: {ty} is {size} bytes as stored and relayed (labels included); the limit is {} bytes",
                        manager.max_resource_bytes()
                    ));
                    continue;
                }
                if place.needs_owner_check(&key) {
                    let stored = if Manager::is_status(ty) {
                        manager.store().get_status(&key).await?
                    } else {
                        manager.store().get(&key).await?
                    };
                    if stored.is_some_and(|r| !place.owns(&r.labels)) {
                        errors.push(format!("{wire}: the name is taken by a resource of another owner"));
                        continue;
                    }
                }
                ops.push(WriteOp::Upsert(WriteResource {
                    key,
                    labels,
                    spec: w.spec_bytes.clone(),
                    version: w.version.clone(),
                }));
                applied.push((wire.clone(), w.version));
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    for wire in changes.removals.iter().filter(|w| rcv.held().contains_key(*w)) {
        if let Some((name, mesh)) = kds::split_wire_name(wire) {
            ops.push(WriteOp::Delete { key: place.key(ty, mesh, name), expected_revision: None });
            removed.push(wire.clone());
        }
    }
    if Manager::is_status(ty) {
        // Status (DataplaneInsight from zones) goes to the status table:
        // no revision, no change-log row, no wake-up of config watchers.
        for op in ops {
            match op {
                WriteOp::Upsert(w) => {
                    manager.store().put_status(&w, &StatusExpect::Any).await?;
                }
                WriteOp::Delete { key, .. } => {
                    manager.store().delete_status(&key).await?;
                }
                WriteOp::Create(_) | WriteOp::Update { .. } => {}
            }
        }
    } else if !ops.is_empty() {
        manager.store().apply_batch(ops).await?;
    }
    for (w, v) in applied {
        rcv.applied(&w, &v);
    }
    for w in removed {
        rcv.removed(&w);
    }
    Ok(if errors.is_empty() { rcv.ack(&changes.nonce) } else { rcv.nack(&changes.nonce, &errors.join("; ")) })
}
