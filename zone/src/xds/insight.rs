//! DataplaneInsight (and, for a ZoneIngress's proxy, ZoneIngressInsight:
//! the same subscriptions, no mTLS): what each Envoy stream did, written to the zone's
//! status table (outside the configuration change feed: an ACK wakes no
//! config watcher and adds no change-log row); the KDS client follows
//! `Store::status_changes` and syncs it to the global.
//!
//! A stream only replaces the latest value of its subscription in a
//! `watch` channel; one writer task per stream stores the latest value, so
//! a burst of ACKs costs one write and never blocks the stream.

use std::{
    collections::BTreeMap,
    time::{SystemTime, UNIX_EPOCH},
};

use meridian_core::{
    Manager,
    origin::{LABEL_ORIGIN, LABEL_ZONE, ORIGIN_ZONE},
};
use meridian_store::{StatusExpect, Store, StoreError};
use meridian_sync_proto::{
    Resource, ResourceType, Spec,
    pb::mesh::{DataplaneInsight, DiscoverySubscription, ZoneIngressInsight},
};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use super::cache::ProxyId;

/// Subscriptions kept per Dataplane (the current ones and the latest
/// disconnected ones).
const MAX_SUBSCRIPTIONS: usize = 5;
/// Attempts at a read-modify-write that races with another stream.
const MAX_ATTEMPTS: usize = 5;

pub fn now() -> pbjson_types::Timestamp {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    pbjson_types::Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

/// The stream's side: replace the latest subscription state.
pub struct InsightHandle {
    tx: watch::Sender<Option<DiscoverySubscription>>,
}

impl InsightHandle {
    /// Starts the writer task for one stream of `id`.
    /// Each write also carries the proxy's mTLS status from `identities`.
    pub fn spawn(
        tasks: &TaskTracker,
        store: Store,
        zone: String,
        id: ProxyId,
        identities: super::identities::Identities,
    ) -> InsightHandle {
        let (tx, mut rx) = watch::channel::<Option<DiscoverySubscription>>(None);
        tasks.spawn(async move {
            // Ends once the stream dropped its handle and the last value is written.
            while rx.changed().await.is_ok() {
                let Some(sub) = rx.borrow_and_update().clone() else { continue };
                let m_tls = identities.get(&id).map(|i| crate::mtls::insight(&i));
                if let Err(e) = write(&store, &zone, &id, sub, m_tls).await {
                    tracing::warn!(proxy = %id, error = %e, "cannot write the proxy's insight");
                }
            }
        });
        InsightHandle { tx }
    }

    pub fn update(&self, sub: DiscoverySubscription) {
        self.tx.send_replace(Some(sub));
    }
}

async fn write(
    store: &Store,
    zone: &str,
    id: &ProxyId,
    sub: DiscoverySubscription,
    m_tls: Option<meridian_sync_proto::pb::mesh::dataplane_insight::Mtls>,
) -> Result<(), StoreError> {
    // A ZoneIngress (no mesh) records ZoneIngressInsight, a Dataplane DataplaneInsight.
    let ty = if id.is_ingress() { ResourceType::ZoneIngressInsight } else { ResourceType::DataplaneInsight };
    let key = Manager::key(ty, &id.mesh, &id.name);
    for _ in 0..MAX_ATTEMPTS {
        let stored = store.get_status(&key).await?;
        let decoded = stored.as_ref().and_then(|s| Manager::decode(s).ok()).map(|e| e.resource.spec);
        let spec = if id.is_ingress() {
            let mut insight = match decoded {
                Some(Spec::ZoneIngressInsight(i)) => i,
                _ => ZoneIngressInsight::default(),
            };
            merge(&mut insight.subscriptions, sub.clone());
            Spec::ZoneIngressInsight(insight)
        } else {
            let mut insight = match decoded {
                Some(Spec::DataplaneInsight(i)) => i,
                _ => DataplaneInsight::default(),
            };
            merge(&mut insight.subscriptions, sub.clone());
            insight.m_tls = m_tls.clone();
            Spec::DataplaneInsight(insight)
        };
        let mut r = Resource::new(&id.mesh, &id.name, spec);
        r.meta.labels = BTreeMap::from([
            (LABEL_ORIGIN.to_string(), ORIGIN_ZONE.to_string()),
            (LABEL_ZONE.to_string(), zone.to_string()),
        ]);
        let write = Manager::encode(&r);
        let expect = match stored {
            Some(s) => StatusExpect::Version(s.version),
            None => StatusExpect::Absent,
        };
        match store.put_status(&write, &expect).await {
            Err(StoreError::StatusConflict(_)) => continue,
            other => return other.map(|_| ()),
        }
    }
    Ok(())
}

/// Puts `sub` in place of the subscription with its id (or adds it), then
/// keeps the newest few, connected ones first.
fn merge(subscriptions: &mut Vec<DiscoverySubscription>, sub: DiscoverySubscription) {
    match subscriptions.iter_mut().find(|s| s.id == sub.id) {
        Some(s) => *s = sub,
        None => subscriptions.push(sub),
    }
    if subscriptions.len() > MAX_SUBSCRIPTIONS {
        let key = |s: &DiscoverySubscription| {
            (s.disconnect_time.is_none(), s.connect_time.as_ref().map(|t| (t.seconds, t.nanos)))
        };
        subscriptions.sort_by_key(|s| std::cmp::Reverse(key(s)));
        subscriptions.truncate(MAX_SUBSCRIPTIONS);
        subscriptions.sort_by_key(|s| s.connect_time.as_ref().map(|t| (t.seconds, t.nanos)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(id: &str, at: i64, open: bool) -> DiscoverySubscription {
        DiscoverySubscription {
            id: id.into(),
            connect_time: Some(pbjson_types::Timestamp { seconds: at, nanos: 0 }),
            disconnect_time: (!open).then(|| pbjson_types::Timestamp { seconds: at + 1, nanos: 0 }),
            ..Default::default()
        }
    }

    #[test]
    fn merge_replaces_by_id_and_keeps_the_newest() {
        let mut i = Vec::new();
        for n in 0..8 {
            merge(&mut i, sub(&format!("s{n}"), n, n == 0));
        }
        assert_eq!(i.len(), MAX_SUBSCRIPTIONS);
        assert!(i.iter().any(|s| s.id == "s0"), "open subscriptions are kept");
        merge(&mut i, sub("s7", 7, false));
        assert!(i.iter().find(|s| s.id == "s7").is_some_and(|s| s.disconnect_time.is_some()));
    }
}
