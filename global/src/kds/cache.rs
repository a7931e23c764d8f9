//! The global's view of what zones should hold, kept current from the
//! store's change feed (never polled) and fanned out per type.
//!
//! One task reads `store.watch(revision)`; for each change to a type that
//! flows to zones it updates that type's snapshot (persistent maps of
//! encoded KDS envelopes, [`TypeSnapshot`]) and publishes it on a
//! `tokio::sync::watch` channel. An unchanged write wakes nobody (the store
//! does not emit no-op writes), and a slow stream sees only the latest map.
//! Because the feed comes from the store, writes made through another
//! global replica on the same PostgreSQL arrive here too.

use std::{collections::BTreeMap, sync::Arc};

use futures::StreamExt;
use meridian_core::{
    mesh_ca::ZONE_ONLY_LABEL,
    origin::{LABEL_ORIGIN, LABEL_ZONE, ORIGIN_ZONE},
};
use meridian_store::{ChangeKind, ListQuery, Store, StoreError, StoredResource};
use meridian_sync_proto::{
    ResourceType,
    delta::{Desired, SharedSet},
    kds::{self, GLOBAL_TO_ZONE},
};
use tokio::sync::watch;

use super::wire_labels;

/// What zones should hold of one type, as persistent maps: a change costs
/// O(log n) and shares every other entry (and its encoded envelope) with
/// the previous snapshot and with every zone stream holding it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TypeSnapshot {
    /// Wire name → KDS envelope, encoded once per resource version: what
    /// every zone gets (global-origin resources; for ZoneIngress, all).
    pub served: SharedSet,
    /// ZoneIngress only: wire name → the zone it belongs to (a zone never
    /// receives its own).
    pub owner: imbl::OrdMap<String, String>,
    /// Wire name → the one zone that may receive it (resources labelled
    /// [`ZONE_ONLY_LABEL`]: a zone's intermediate CA, whose key no other
    /// zone may hold).
    pub only_for: imbl::OrdMap<String, String>,
    /// Wire name → the store's modification time of the served version
    /// (unix ms): the write stamp of responses carrying it
    /// ([`meridian_sync_proto::kds::write_stamp`]).
    pub written: imbl::OrdMap<String, i64>,
}

impl TypeSnapshot {
    /// The newest write time among `names` (served resources only).
    pub fn newest_write<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Option<i64> {
        names.into_iter().filter_map(|n| self.written.get(n).copied()).max()
    }
}

impl TypeSnapshot {
    /// What zone `zone` should hold: `served` minus the zone's own
    /// ZoneIngresses and minus what is meant for another zone only (O(k log n)
    /// for k of them).
    pub fn for_zone(&self, zone: &str) -> SharedSet {
        let mut set = self.served.clone();
        for (wire, owner) in &self.owner {
            if owner == zone {
                set.remove(wire);
            }
        }
        for (wire, only) in &self.only_for {
            if only != zone {
                set.remove(wire);
            }
        }
        set
    }

    /// Applies one stored resource's upsert (or its deletion, `r = None`)
    /// under `wire`; `true` when the snapshot changed.
    fn apply(&mut self, ty: ResourceType, wire: String, r: Option<&StoredResource>) -> bool {
        let entry = r.and_then(|r| {
            let from_zone = r.labels.get(LABEL_ORIGIN).is_some_and(|o| o == ORIGIN_ZONE);
            if from_zone && ty != ResourceType::ZoneIngress {
                return None;
            }
            // Of GlobalSecrets, only public token keys and revocation lists.
            if ty == ResourceType::GlobalSecret && !kds::global_secret_syncs(&r.key.name) {
                return None;
            }
            Some(r)
        });
        match entry {
            Some(r) => {
                let owner = r.labels.get(LABEL_ZONE).cloned();
                let only = r.labels.get(ZONE_ONLY_LABEL).cloned();
                let unchanged = self.served.get(&wire).is_some_and(|d| d.version == r.version)
                    && self.owner.get(&wire) == owner.as_ref()
                    && self.only_for.get(&wire) == only.as_ref();
                if unchanged {
                    return false;
                }
                let any =
                    kds::to_any(ty, &r.key.mesh, &r.key.name, &wire_labels(&r.labels), &r.version, r.spec.clone());
                self.served.insert(wire.clone(), Desired { version: r.version.clone(), resource: any });
                self.written.insert(wire.clone(), r.modify_time);
                match only {
                    Some(z) => {
                        self.only_for.insert(wire.clone(), z);
                    }
                    None => {
                        self.only_for.remove(&wire);
                    }
                }
                match owner {
                    Some(z) => {
                        self.owner.insert(wire, z);
                    }
                    None => {
                        self.owner.remove(&wire);
                    }
                }
                true
            }
            None => {
                let removed = self.served.remove(&wire).is_some();
                self.written.remove(&wire);
                self.owner.remove(&wire);
                self.only_for.remove(&wire);
                removed
            }
        }
    }
}

/// Per-type channels of the current snapshots.
#[derive(Clone)]
pub struct Cache {
    channels: Arc<BTreeMap<ResourceType, watch::Sender<Arc<TypeSnapshot>>>>,
    /// Ticks on every change to what decides whether a zone may stay
    /// connected: a Zone (its `enabled`) or a GlobalSecret (zone token
    /// signing keys, the zone token revocation list), and on every reload.
    /// Zone streams re-check their token and `enabled` on a tick instead of
    /// polling the store ([`Cache::access_changes`]).
    access: Arc<watch::Sender<u64>>,
    /// `kds_delta_generation`: seconds to apply one store change to the
    /// snapshot every zone stream diffs from.
    generation: prometheus_client::metrics::histogram::Histogram,
}

impl Cache {
    fn new(generation: prometheus_client::metrics::histogram::Histogram) -> Cache {
        let channels =
            GLOBAL_TO_ZONE.iter().map(|t| (*t, watch::channel(Arc::new(TypeSnapshot::default())).0)).collect();
        Cache { channels: Arc::new(channels), generation, access: Arc::new(watch::channel(0).0) }
    }

    /// A receiver that changes whenever a Zone or a GlobalSecret changes in
    /// the store (from any process writing it: the change feed), or the
    /// cache reloads. Cheap: one counter for the whole instance.
    pub fn access_changes(&self) -> watch::Receiver<u64> {
        self.access.subscribe()
    }

    fn access_changed(&self) {
        self.access.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver of the current snapshot of `ty` (empty for types not cached).
    pub fn subscribe(&self, ty: ResourceType) -> watch::Receiver<Arc<TypeSnapshot>> {
        match self.channels.get(&ty) {
            Some(tx) => tx.subscribe(),
            None => watch::channel(Arc::new(TypeSnapshot::default())).1,
        }
    }

    /// Loads every cached type at one revision; returns that revision.
    async fn load(&self, store: &Store) -> Result<i64, StoreError> {
        let mut revision = i64::MAX;
        let mut snapshots = BTreeMap::new();
        for ty in GLOBAL_TO_ZONE {
            let page = store.list(&ListQuery { type_name: ty.name().to_string(), ..ListQuery::default() }).await?;
            // Lists are separate reads: replaying from the oldest revision seen
            // re-applies anything written in between (upserts are idempotent).
            revision = revision.min(page.revision);
            let mut snap = TypeSnapshot::default();
            for r in &page.items {
                snap.apply(*ty, kds::wire_name(&r.key.mesh, &r.key.name), Some(r));
            }
            snapshots.insert(*ty, snap);
        }
        for (ty, snap) in snapshots {
            if let Some(tx) = self.channels.get(&ty) {
                tx.send_if_modified(|cur| {
                    if **cur == snap {
                        false
                    } else {
                        *cur = Arc::new(snap);
                        true
                    }
                });
            }
        }
        Ok(if revision == i64::MAX { 0 } else { revision })
    }

    fn apply(&self, ty: ResourceType, kind: ChangeKind, r: &StoredResource) {
        let Some(tx) = self.channels.get(&ty) else { return };
        let started = std::time::Instant::now();
        let wire = kds::wire_name(&r.key.mesh, &r.key.name);
        tx.send_if_modified(|cur| {
            // O(1) clone of the persistent maps; the change itself is O(log n).
            let mut snap = (**cur).clone();
            let changed = snap.apply(ty, wire, (kind == ChangeKind::Upsert).then_some(r));
            if changed {
                *cur = Arc::new(snap);
            }
            changed
        });
        self.generation.observe(started.elapsed().as_secs_f64());
    }
}

/// Starts the cache: loads it, then follows the change feed until the
/// feed fails for good; each change's handling is observed into
/// `generation` (`kds_delta_generation`). Returns the cache and the
/// follower task.
pub async fn start(
    store: Store,
    generation: prometheus_client::metrics::histogram::Histogram,
) -> Result<(Cache, impl std::future::Future<Output = anyhow::Result<()>>), StoreError> {
    let cache = Cache::new(generation);
    let from = cache.load(&store).await?;
    let follower = {
        let cache = cache.clone();
        async move {
            let mut from = from;
            loop {
                let mut feed = std::pin::pin!(store.watch(from));
                while let Some(change) = feed.next().await {
                    match change {
                        Ok(c) => {
                            from = c.revision;
                            if let Some(ty) = ResourceType::from_name(&c.resource.key.type_name) {
                                if matches!(ty, ResourceType::Zone | ResourceType::GlobalSecret) {
                                    cache.access_changed();
                                }
                                cache.apply(ty, c.kind, &c.resource);
                            }
                        }
                        Err(StoreError::Compacted { .. }) => {
                            tracing::warn!("change feed compacted past our position; reloading");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "change feed error; resuming");
                            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                            break;
                        }
                    }
                }
                from = match cache.load(&store).await {
                    Ok(rev) => {
                        // Changes may have been skipped (compaction): re-check.
                        cache.access_changed();
                        rev
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reloading the cache failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        from
                    }
                };
            }
        }
    };
    Ok((cache, follower))
}
