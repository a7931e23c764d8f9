//! DataplaneInsight (and, for a ZoneIngress's proxy, ZoneIngressInsight:
//! the same subscriptions, no mTLS): what each Envoy stream did, written to the zone's
//! status table (outside the configuration change feed: an ACK wakes no
//! config watcher and adds no change-log row); the KDS client follows
//! `Store::status_changes` and syncs it to the global.
//!
//! One writer per zone ([`Insights`]), as the global's ZoneInsight flusher
//! (`meridian-global` `kds::insight`): a stream only replaces the latest
//! value of its subscription in the writer's pending map, or marks it
//! changed ([`InsightHandle::changed`]: the writer builds the record when it
//! writes); neither blocks nor awaits. The writer
//! stores every changed insight in one transaction
//! ([`meridian_store::Store::put_status_batch`]): the first change after a
//! quiet spell at once, then at most one batch per [`FLUSH`]. A route
//! change that 200 Envoys ACK costs one or two commits on the zone's
//! single SQLite writer instead of 200 to 600 (Kuma's own DataplaneInsight
//! sink likewise writes per flush interval, not per ACK).
//!
//! ```text
//!   stream ─update(sub)─▶ pending: (proxy, subscription id) → latest ──wake──▶ writer
//!   writer: per proxy, stored insight (cached after its own write) + pending subs ─▶ put_status_batch
//! ```
//!
//! Nothing is lost: a subscription's final state (its disconnect time) is
//! queued like any other and written by the next batch; a conflicting or
//! failed write goes back to the pending map (unless a newer value came) and
//! is tried again; on shutdown the server waits for every stream to close,
//! then the writer writes what is pending ([`Insights::run`]). Memory is
//! bounded by the open streams: one pending value per subscription, one
//! cached insight per proxy with an open stream (dropped once its last
//! stream closed and was written).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use meridian_core::{
    Manager,
    origin::{LABEL_ORIGIN, LABEL_ZONE, ORIGIN_ZONE},
};
use meridian_store::{StatusExpect, Store, StoreError, WriteResource};
use meridian_sync_proto::{
    Resource, ResourceType, Spec,
    driver::lock,
    pb::mesh::{DataplaneInsight, DiscoverySubscription, ZoneIngressInsight, dataplane_insight::Mtls},
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{cache::ProxyId, identities::Identities};

/// Subscriptions kept per Dataplane (the current ones and the latest
/// disconnected ones).
const MAX_SUBSCRIPTIONS: usize = 5;
/// Shortest time between two batches: the changes of this window are
/// written together (the first change after a quiet spell goes at once).
pub const FLUSH: Duration = Duration::from_secs(1);
/// Batches tried at shutdown to write what is still pending (a conflict
/// with a concurrent writer is retried).
const FINAL_ATTEMPTS: usize = 5;

pub fn now() -> pbjson_types::Timestamp {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    pbjson_types::Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

/// An insight as this writer last stored it: the stored content version
/// (the compare-and-set of the next write) and the spec, so an update
/// needs no read unless another writer (the REST delete of the Dataplane,
/// the cleanup sweeper) got in between.
struct Written {
    version: String,
    spec: Spec,
}

/// A subscription whose current value the writer takes when it writes
/// (a stream's tracker: building the record per event would cost far more
/// than once per batch).
pub trait Snapshot: Send + Sync {
    /// The subscription as it is now.
    fn snapshot(&self) -> DiscoverySubscription;
}

/// What is pending for one subscription.
enum Pending {
    /// A final or already-built value (a closed stream, a failed write).
    Value(Box<DiscoverySubscription>),
    /// An open stream's tracker: built when written.
    Live(Arc<dyn Snapshot>),
}

impl Pending {
    fn take(self) -> DiscoverySubscription {
        match self {
            Pending::Value(v) => *v,
            Pending::Live(l) => l.snapshot(),
        }
    }
}

#[derive(Default)]
struct State {
    /// (proxy, subscription id) → the latest value not yet written.
    pending: HashMap<(ProxyId, String), Pending>,
    /// Open streams per proxy (handles alive).
    open: HashMap<ProxyId, usize>,
    /// Proxy → its insight as last written here.
    written: HashMap<ProxyId, Written>,
}

struct Inner {
    store: Store,
    zone: String,
    identities: Identities,
    state: Mutex<State>,
    wake: Notify,
}

/// The zone's DataplaneInsight / ZoneIngressInsight writer, shared by every
/// xDS stream. Cheap to clone.
#[derive(Clone)]
pub struct Insights {
    inner: Arc<Inner>,
}

/// One stream's side: replaces the latest value of its subscription.
/// Dropping it (the stream ended) lets the writer forget the proxy's
/// cached insight once nothing of it is pending.
pub struct InsightHandle {
    insights: Insights,
    id: ProxyId,
}

impl InsightHandle {
    /// Queues `sub` as the latest state of its subscription (replacing a
    /// value not written yet) and wakes the writer. Never blocks.
    pub fn update(&self, sub: DiscoverySubscription) {
        let inner = &self.insights.inner;
        lock(&inner.state).pending.insert((self.id.clone(), sub.id.clone()), Pending::Value(Box::new(sub)));
        inner.wake.notify_one();
    }

    /// Queues subscription `id`, whose value the writer takes from `live`
    /// when it writes (replacing a value not written yet: `live` is newer).
    /// Never blocks.
    pub fn changed(&self, id: &str, live: Arc<dyn Snapshot>) {
        let inner = &self.insights.inner;
        lock(&inner.state).pending.insert((self.id.clone(), id.to_string()), Pending::Live(live));
        inner.wake.notify_one();
    }
}

impl Drop for InsightHandle {
    fn drop(&mut self) {
        let mut state = lock(&self.insights.inner.state);
        if let Some(n) = state.open.get_mut(&self.id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                state.open.remove(&self.id);
                let pending = state.pending.keys().any(|(p, _)| *p == self.id);
                if !pending {
                    state.written.remove(&self.id);
                }
            }
        }
    }
}

impl Insights {
    /// The writer of zone `zone`'s insights in `store`; each DataplaneInsight
    /// also carries the proxy's mTLS status from `identities`. Writes
    /// nothing until [`Insights::run`] runs.
    pub fn new(store: Store, zone: String, identities: Identities) -> Insights {
        Insights {
            inner: Arc::new(Inner {
                store,
                zone,
                identities,
                state: Mutex::new(State::default()),
                wake: Notify::new(),
            }),
        }
    }

    /// The handle of one new stream of `id`.
    pub fn handle(&self, id: ProxyId) -> InsightHandle {
        *lock(&self.inner.state).open.entry(id.clone()).or_default() += 1;
        InsightHandle { insights: self.clone(), id }
    }

    /// Subscription values waiting to be written.
    pub fn pending(&self) -> usize {
        lock(&self.inner.state).pending.len()
    }

    /// Writes pending changes until `done`: a change after a quiet spell at
    /// once, then at most one batch per [`FLUSH`]. Once `done` is cancelled
    /// (after every stream closed its subscription) writes what is pending,
    /// retrying conflicts a few times, and returns.
    pub async fn run(self, done: CancellationToken) {
        loop {
            let stopping = tokio::select! {
                () = self.inner.wake.notified() => false,
                () = done.cancelled() => true,
            };
            if stopping {
                for _ in 0..FINAL_ATTEMPTS {
                    if self.pending() == 0 {
                        break;
                    }
                    self.flush().await;
                }
                let left = self.pending();
                if left > 0 {
                    tracing::warn!(subscriptions = left, "shutting down with proxy insights not recorded");
                }
                return;
            }
            self.flush().await;
            tokio::select! {
                () = tokio::time::sleep(FLUSH) => {}
                () = done.cancelled() => {}
            }
        }
    }

    /// Writes every pending subscription, grouped per proxy, in one
    /// transaction. What could not be written goes back to pending (unless
    /// a newer value replaced it meanwhile) and the writer is woken again.
    pub async fn flush(&self) {
        let taken: HashMap<(ProxyId, String), Pending> = std::mem::take(&mut lock(&self.inner.state).pending);
        if taken.is_empty() {
            return;
        }
        let mut per_proxy: BTreeMap<ProxyId, Vec<DiscoverySubscription>> = BTreeMap::new();
        for ((id, _), pending) in taken {
            per_proxy.entry(id).or_default().push(pending.take());
        }
        let mut writes: Vec<(WriteResource, StatusExpect)> = Vec::with_capacity(per_proxy.len());
        let mut done: Vec<(ProxyId, Vec<DiscoverySubscription>, Written)> = Vec::with_capacity(per_proxy.len());
        let mut failed: Vec<(ProxyId, Vec<DiscoverySubscription>)> = Vec::new();
        for (id, subs) in per_proxy {
            let cached = lock(&self.inner.state).written.remove(&id);
            let (spec, expect) = match cached {
                Some(w) => (Some(w.spec), StatusExpect::Version(w.version)),
                None => match self.stored(&id).await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(proxy = %id, error = %e, "cannot read the proxy's insight");
                        failed.push((id, subs));
                        continue;
                    }
                },
            };
            let m_tls = self.inner.identities.get(&id).map(|i| crate::mtls::insight(&i));
            let spec = updated(&id, spec, &subs, m_tls);
            let mut r = Resource::new(&id.mesh, &id.name, spec.clone());
            r.meta.labels = BTreeMap::from([
                (LABEL_ORIGIN.to_string(), ORIGIN_ZONE.to_string()),
                (LABEL_ZONE.to_string(), self.inner.zone.clone()),
            ]);
            let write = Manager::encode(&r);
            done.push((id, subs, Written { version: write.version.clone(), spec }));
            writes.push((write, expect));
        }
        match self.inner.store.put_status_batch(&writes).await {
            Ok(results) => {
                let mut state = lock(&self.inner.state);
                for ((id, subs, written), r) in done.into_iter().zip(results) {
                    match r {
                        Ok(_) => {
                            if state.open.contains_key(&id) {
                                state.written.insert(id, written);
                            }
                        }
                        Err(e) => {
                            if !matches!(e, StoreError::StatusConflict(_)) {
                                tracing::warn!(proxy = %id, error = %e, "cannot write the proxy's insight");
                            }
                            failed.push((id, subs));
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, proxies = done.len(), "cannot write proxy insights; retrying");
                failed.extend(done.into_iter().map(|(id, subs, _)| (id, subs)));
            }
        }
        if failed.is_empty() {
            return;
        }
        let mut state = lock(&self.inner.state);
        for (id, subs) in failed {
            // The next attempt reads the store (another writer got in between).
            state.written.remove(&id);
            for sub in subs {
                state.pending.entry((id.clone(), sub.id.clone())).or_insert(Pending::Value(Box::new(sub)));
            }
        }
        drop(state);
        self.inner.wake.notify_one();
    }

    /// The proxy's stored insight (if any) and the expectation to replace it under.
    async fn stored(&self, id: &ProxyId) -> Result<(Option<Spec>, StatusExpect), StoreError> {
        let key = Manager::key(kind(id), &id.mesh, &id.name);
        let stored = self.inner.store.get_status(&key).await?;
        let spec = stored.as_ref().and_then(|s| Manager::decode(s).ok()).map(|e| e.resource.spec);
        let expect = match stored {
            Some(s) => StatusExpect::Version(s.version),
            None => StatusExpect::Absent,
        };
        Ok((spec, expect))
    }
}

/// A ZoneIngress (no mesh) records ZoneIngressInsight, a Dataplane DataplaneInsight.
fn kind(id: &ProxyId) -> ResourceType {
    if id.is_ingress() { ResourceType::ZoneIngressInsight } else { ResourceType::DataplaneInsight }
}

/// The insight `stored` with `subs` merged in (and, for a Dataplane, its
/// current mTLS status).
fn updated(id: &ProxyId, stored: Option<Spec>, subs: &[DiscoverySubscription], m_tls: Option<Mtls>) -> Spec {
    if id.is_ingress() {
        let mut insight = match stored {
            Some(Spec::ZoneIngressInsight(i)) => i,
            _ => ZoneIngressInsight::default(),
        };
        for sub in subs {
            merge(&mut insight.subscriptions, sub.clone());
        }
        Spec::ZoneIngressInsight(insight)
    } else {
        let mut insight = match stored {
            Some(Spec::DataplaneInsight(i)) => i,
            _ => DataplaneInsight::default(),
        };
        for sub in subs {
            merge(&mut insight.subscriptions, sub.clone());
        }
        insight.m_tls = m_tls;
        Spec::DataplaneInsight(insight)
    }
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

    async fn store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::connect(&format!("sqlite:{}", dir.path().join("z.db").display())).await.expect("store");
        (store, dir)
    }

    fn proxy(name: &str) -> ProxyId {
        ProxyId { mesh: "default".into(), name: name.into() }
    }

    async fn subscriptions(store: &Store, id: &ProxyId) -> Vec<DiscoverySubscription> {
        let key = Manager::key(kind(id), &id.mesh, &id.name);
        let stored = store.get_status(&key).await.expect("read").expect("written");
        match Manager::decode(&stored).expect("decode").resource.spec {
            Spec::DataplaneInsight(i) => i.subscriptions,
            Spec::ZoneIngressInsight(i) => i.subscriptions,
            other => panic!("not an insight: {other:?}"),
        }
    }

    #[tokio::test]
    async fn one_batch_writes_every_changed_proxy_with_the_latest_values() {
        let (store, _dir) = store().await;
        let insights = Insights::new(store.clone(), "zone-1".into(), Identities::default());
        let handles: Vec<InsightHandle> = (0..3).map(|n| insights.handle(proxy(&format!("gw-{n}")))).collect();
        for (n, h) in handles.iter().enumerate() {
            h.update(sub(&format!("s{n}"), 1, true));
            // Only the latest value of a subscription is written.
            h.update(sub(&format!("s{n}"), 2, true));
        }
        let ingress = ProxyId { mesh: String::new(), name: "ingress-1".into() };
        let ih = insights.handle(ingress.clone());
        ih.update(sub("i0", 5, true));
        assert_eq!(insights.pending(), 4);
        insights.flush().await;
        assert_eq!(insights.pending(), 0);
        for n in 0..3 {
            let subs = subscriptions(&store, &proxy(&format!("gw-{n}"))).await;
            assert_eq!(subs.len(), 1);
            assert_eq!(subs[0].connect_time.as_ref().map(|t| t.seconds), Some(2));
        }
        assert_eq!(subscriptions(&store, &ingress).await.len(), 1, "a ZoneIngressInsight");

        // A second stream of gw-0 adds its subscription to the same insight,
        // written from the cached version (no read).
        let second = insights.handle(proxy("gw-0"));
        second.update(sub("s9", 3, true));
        insights.flush().await;
        assert_eq!(subscriptions(&store, &proxy("gw-0")).await.len(), 2);
    }

    #[tokio::test]
    async fn another_writer_in_between_is_read_and_merged() {
        let (store, _dir) = store().await;
        let insights = Insights::new(store.clone(), "zone-1".into(), Identities::default());
        let id = proxy("gw");
        let h = insights.handle(id.clone());
        h.update(sub("s1", 1, true));
        insights.flush().await;
        // The insight is deleted behind the writer's back (the Dataplane's
        // DELETE takes its insight): the cached version no longer holds.
        store.delete_status(&Manager::key(kind(&id), &id.mesh, &id.name)).await.expect("delete");
        h.update(sub("s1", 1, false));
        insights.flush().await;
        assert_eq!(insights.pending(), 1, "the conflicting write is pending again");
        insights.flush().await;
        let subs = subscriptions(&store, &id).await;
        assert_eq!(subs.len(), 1);
        assert!(subs[0].disconnect_time.is_some(), "the final state is written");
    }

    #[tokio::test]
    async fn shutdown_writes_what_streams_left_pending() {
        let (store, _dir) = store().await;
        let insights = Insights::new(store.clone(), "zone-1".into(), Identities::default());
        let done = CancellationToken::new();
        let writer = tokio::spawn(insights.clone().run(done.clone()));
        let id = proxy("gw");
        let h = insights.handle(id.clone());
        h.update(sub("s1", 1, true));
        // The stream closes (its final state) and goes, then the server stops.
        h.update(sub("s1", 1, false));
        drop(h);
        done.cancel();
        writer.await.expect("writer");
        let subs = subscriptions(&store, &id).await;
        assert!(subs.iter().all(|s| s.disconnect_time.is_some()), "{subs:?}");
        assert!(lock(&insights.inner.state).written.is_empty(), "nothing cached for a proxy with no stream");
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
