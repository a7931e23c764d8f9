//! The global's view of what zones should hold, kept current from the
//! store's change feed (never polled) and fanned out per type.
//!
//! One task reads `store.watch(revision)`; for each change to a type that
//! flows to zones it updates that type's map and publishes it on a
//! `tokio::sync::watch` channel. An unchanged write wakes nobody (the store
//! does not emit no-op writes), and a slow stream sees only the latest map.
//! Because the feed comes from the store, writes made through another
//! global replica on the same PostgreSQL arrive here too.

use std::{collections::BTreeMap, sync::Arc};

use futures::StreamExt;
use meridian_store::{ChangeKind, ListQuery, Store, StoreError, StoredResource};
use meridian_sync_proto::{ResourceType, kds::GLOBAL_TO_ZONE};
use tokio::sync::watch;

/// A stored resource as streams need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub mesh: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub version: String,
    pub spec: Arc<Vec<u8>>,
}

/// (mesh, name) → resource, for one type.
pub type TypeMap = BTreeMap<(String, String), Cached>;

/// Per-type channels of the current maps.
#[derive(Clone)]
pub struct Cache {
    channels: Arc<BTreeMap<ResourceType, watch::Sender<Arc<TypeMap>>>>,
}

impl Cache {
    fn new() -> Cache {
        let channels = GLOBAL_TO_ZONE.iter().map(|t| (*t, watch::channel(Arc::new(TypeMap::new())).0)).collect();
        Cache { channels: Arc::new(channels) }
    }

    /// A receiver of the current map of `ty` (empty for types not cached).
    pub fn subscribe(&self, ty: ResourceType) -> watch::Receiver<Arc<TypeMap>> {
        match self.channels.get(&ty) {
            Some(tx) => tx.subscribe(),
            None => watch::channel(Arc::new(TypeMap::new())).1,
        }
    }

    fn cached(r: &StoredResource) -> Cached {
        Cached {
            mesh: r.key.mesh.clone(),
            name: r.key.name.clone(),
            labels: r.labels.clone(),
            version: r.version.clone(),
            spec: Arc::new(r.spec.clone()),
        }
    }

    /// Loads every cached type at one revision; returns that revision.
    async fn load(&self, store: &Store) -> Result<i64, StoreError> {
        let mut revision = i64::MAX;
        let mut maps = BTreeMap::new();
        for ty in GLOBAL_TO_ZONE {
            let page = store.list(&ListQuery { type_name: ty.name().to_string(), ..ListQuery::default() }).await?;
            // Lists are separate reads: replaying from the oldest revision seen
            // re-applies anything written in between (upserts are idempotent).
            revision = revision.min(page.revision);
            let map: TypeMap =
                page.items.iter().map(|r| ((r.key.mesh.clone(), r.key.name.clone()), Self::cached(r))).collect();
            maps.insert(*ty, map);
        }
        for (ty, map) in maps {
            if let Some(tx) = self.channels.get(&ty) {
                tx.send_if_modified(|cur| {
                    if **cur == map {
                        false
                    } else {
                        *cur = Arc::new(map);
                        true
                    }
                });
            }
        }
        Ok(if revision == i64::MAX { 0 } else { revision })
    }

    fn apply(&self, ty: ResourceType, kind: ChangeKind, r: &StoredResource) {
        let Some(tx) = self.channels.get(&ty) else { return };
        let key = (r.key.mesh.clone(), r.key.name.clone());
        tx.send_if_modified(|cur| {
            let mut map = (**cur).clone();
            let changed = match kind {
                ChangeKind::Upsert => {
                    let c = Self::cached(r);
                    map.insert(key, c.clone()).is_none_or(|old| old != c)
                }
                ChangeKind::Delete => map.remove(&key).is_some(),
            };
            if changed {
                *cur = Arc::new(map);
            }
            changed
        });
    }
}

/// Starts the cache: loads it, then follows the change feed until the
/// feed fails for good. Returns the cache and the follower task.
pub async fn start(
    store: Store,
) -> Result<(Cache, impl std::future::Future<Output = anyhow::Result<()>>), StoreError> {
    let cache = Cache::new();
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
                    Ok(rev) => rev,
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
