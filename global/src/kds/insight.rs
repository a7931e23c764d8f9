//! ZoneInsight bookkeeping: one subscription per zone connection, with
//! connect/disconnect times, this global instance, the zone's version and
//! per-type counters, written to the store's status table (outside the
//! configuration change feed: a write wakes no config watcher and adds no
//! change-log row).
//!
//! What it costs follows what changed: a session is written on connect and
//! on disconnect at once, and otherwise only when its counters changed,
//! by one flusher per global instance that writes every changed session
//! of the last [`FLUSH`] in one store transaction ([`Insights::run`]). An
//! idle zone costs no store work. That the open subscriptions of this
//! instance are still recorded is proven by the instance's heartbeat (one
//! status row per instance every [`REFRESH`]; see
//! [`meridian_core::liveness`]), not by rewriting each zone's insight.
//! (Kuma's ZoneInsight sink likewise skips a flush whose content did not
//! change.)

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use meridian_core::{
    Manager,
    liveness::{Heartbeats, SUBSCRIPTION_STALE_MILLIS, now_millis},
};
use meridian_runtime::CancellationToken;
use meridian_store::{StatusExpect, StoreError, WriteResource};
use meridian_sync_proto::{Resource, ResourceType, Spec, delta::SendStats, driver::lock, pb::system as sys};

/// How often this instance's heartbeat is written while it has a zone
/// connected. With `meridian_core::liveness::SUBSCRIPTION_STALE_MILLIS` this
/// bounds how long a zone whose global died still looks online.
pub const REFRESH: Duration = Duration::from_secs(3);
/// How long a changed session may wait before its insight is written: the
/// flusher collects every change of this window into one transaction.
pub const FLUSH: Duration = Duration::from_secs(1);
/// How often this instance deletes heartbeat rows of global instances gone
/// for longer than `meridian_core::liveness::HEARTBEAT_RETENTION_MILLIS`
/// (one row per restart otherwise stays forever). The first sweep runs at
/// start.
pub const SWEEP: Duration = Duration::from_secs(60);
/// Subscriptions kept per zone (newest last).
const KEEP_SUBSCRIPTIONS: usize = 10;

fn ts(ms: i64) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

/// Counters of one direction of one type.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub sent: u64,
    pub acked: u64,
    pub nacked: u64,
    pub resources: u64,
    pub last_nack: Option<String>,
}

impl Counters {
    /// Takes `s`'s figures, reusing the NACK reason's allocation when unchanged.
    pub fn set(&mut self, s: &SendStats) {
        self.sent = s.responses_sent;
        self.acked = s.responses_acked;
        self.nacked = s.responses_nacked;
        self.resources = s.resources_sent;
        if self.last_nack != s.last_nack_reason {
            self.last_nack.clone_from(&s.last_nack_reason);
        }
    }
}

impl From<&SendStats> for Counters {
    fn from(s: &SendStats) -> Counters {
        Counters {
            sent: s.responses_sent,
            acked: s.responses_acked,
            nacked: s.responses_nacked,
            resources: s.resources_sent,
            last_nack: s.last_nack_reason.clone(),
        }
    }
}

/// Counters of one zone-to-global stream, by stat key (`<type> (zone to global)`).
pub type Upward = Arc<Mutex<BTreeMap<String, Counters>>>;

/// Which zone connection a stream belongs to: the zone's name and its
/// address, which both streams of one HTTP/2 connection share.
type ConnectionKey = (String, Option<SocketAddr>);

/// One zone connection as it is being recorded.
#[derive(Debug)]
pub struct Session {
    pub zone: String,
    /// The zone's address on this connection (joins the zone-to-global
    /// stream's counters to this session).
    pub connection: Option<SocketAddr>,
    pub id: String,
    pub connect_time: i64,
    pub zone_version: String,
    /// Global-to-zone stat key (type name) → counters.
    pub stats: BTreeMap<String, Counters>,
    /// Something recorded here changed since the session was last written:
    /// the flusher writes it ([`Insights::run`]).
    pub dirty: bool,
}

/// A zone's insight as this instance last wrote it: the stored content
/// version (the compare-and-set of the next write) and the content, so an
/// update needs no read unless another writer got in between.
#[derive(Debug, Clone)]
struct Written {
    version: String,
    insight: sys::ZoneInsight,
    /// When (unix ms) an open subscription of another instance in it turns
    /// stale unless that instance beats again: the insight is then written
    /// once more, so [`close_dead`] closes it even while the zone is idle.
    recheck_at: Option<i64>,
}

/// The open sessions of this global instance.
#[derive(Clone)]
pub struct Insights {
    manager: Manager,
    instance_id: String,
    open: Arc<Mutex<HashMap<String, Arc<Mutex<Session>>>>>,
    /// Ids of every session this instance has open (a zone reconnecting
    /// may briefly have two), so that its own live subscriptions are never
    /// taken for dead ones ([`close_dead`]).
    live: Arc<Mutex<HashSet<String>>>,
    /// Zone-to-global counters per connection. Either stream of a
    /// connection may open first; the session reads them whenever it is
    /// written, so none are lost to that race.
    upward: Arc<Mutex<HashMap<ConnectionKey, Upward>>>,
    /// Zone → its insight as last written here (dropped on a conflict: the
    /// next write reads the store).
    written: Arc<Mutex<HashMap<String, Written>>>,
    /// Serializes writers (flusher, connects, disconnects), so the cached
    /// versions in `written` are never raced by this instance itself.
    writing: Arc<tokio::sync::Mutex<()>>,
}

impl Insights {
    pub fn new(manager: Manager, instance_id: String) -> Insights {
        Insights {
            manager,
            instance_id,
            open: Arc::new(Mutex::new(HashMap::new())),
            live: Arc::new(Mutex::new(HashSet::new())),
            upward: Arc::new(Mutex::new(HashMap::new())),
            written: Arc::new(Mutex::new(HashMap::new())),
            writing: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Opens the session of a new global-to-zone stream on `connection`
    /// and records it (written at once, with this instance's heartbeat, so
    /// the zone shows online as soon as it connects).
    pub async fn open(&self, zone: &str, zone_version: &str, connection: Option<SocketAddr>) -> Arc<Mutex<Session>> {
        let session = Arc::new(Mutex::new(Session {
            zone: zone.to_string(),
            connection,
            id: format!("{}-{:08x}", self.instance_id, rand::random::<u32>()),
            connect_time: now_millis(),
            zone_version: zone_version.to_string(),
            stats: BTreeMap::new(),
            dirty: false,
        }));
        lock(&self.live).insert(lock(&session).id.clone());
        lock(&self.open).insert(zone.to_string(), session.clone());
        self.beat().await;
        self.write(&session, false).await;
        session
    }

    /// The open session of `zone`, if its global-to-zone stream is here.
    pub fn current(&self, zone: &str) -> Option<Arc<Mutex<Session>>> {
        lock(&self.open).get(zone).cloned()
    }

    /// Marks the session of `zone` on `connection` (if open here) as
    /// changed: the zone-to-global counters it reports moved.
    pub fn touch(&self, zone: &str, connection: Option<SocketAddr>) {
        if let Some(s) = self.current(zone) {
            let mut s = lock(&s);
            if s.connection == connection {
                s.dirty = true;
            }
        }
    }

    /// The counters of the zone-to-global stream of `zone` on `connection`
    /// (created by whichever stream of the connection asks first).
    pub fn upward(&self, zone: &str, connection: Option<SocketAddr>) -> Upward {
        lock(&self.upward).entry((zone.to_string(), connection)).or_default().clone()
    }

    /// The zone-to-global stream of `zone` on `connection` ended: its
    /// counters go unless that connection's session still has to record them.
    pub fn close_upward(&self, zone: &str, connection: Option<SocketAddr>) {
        let session_open = self.current(zone).is_some_and(|s| lock(&s).connection == connection);
        if !session_open {
            lock(&self.upward).remove(&(zone.to_string(), connection));
        }
    }

    /// Records the end of a session.
    pub async fn close(&self, session: &Arc<Mutex<Session>>) {
        let (zone, connection) = {
            let s = lock(session);
            (s.zone.clone(), s.connection)
        };
        {
            let mut open = lock(&self.open);
            if open.get(&zone).is_some_and(|s| Arc::ptr_eq(s, session)) {
                open.remove(&zone);
            }
        }
        self.write(session, true).await;
        lock(&self.live).remove(&lock(session).id);
        lock(&self.upward).remove(&(zone, connection));
    }

    /// The flusher of this instance, until `shutdown`: every [`FLUSH`],
    /// writes the sessions that changed (one transaction for all of them;
    /// nothing when none did); every [`REFRESH`], while any zone is
    /// connected here, the instance's heartbeat (one row, whatever the
    /// number of zones); every [`SWEEP`], deletes the heartbeats of
    /// instances long gone.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut flush = tokio::time::interval(FLUSH);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beat = tokio::time::interval(REFRESH);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep = tokio::time::interval(SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = flush.tick() => self.flush().await,
                _ = sweep.tick() => match Heartbeats::sweep(self.manager.store(), now_millis()).await {
                    Ok(gone) if !gone.is_empty() => {
                        tracing::info!(instances = ?gone, "deleted the heartbeats of global instances gone for long");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot delete old global instance heartbeats"),
                },
                _ = beat.tick() => {
                    if !lock(&self.live).is_empty() {
                        self.beat().await;
                    }
                }
            }
        }
    }

    /// Writes this instance's heartbeat.
    async fn beat(&self) {
        if let Err(e) = Heartbeats::beat(self.manager.store(), &self.instance_id, now_millis()).await {
            tracing::warn!(error = %e, "cannot record this global instance's heartbeat");
        }
    }

    /// Writes every changed open session (and those holding another
    /// instance's subscription that may have turned stale), in one
    /// transaction.
    async fn flush(&self) {
        let now = now_millis();
        let due: HashSet<String> = lock(&self.written)
            .iter()
            .filter(|(_, w)| w.recheck_at.is_some_and(|t| t <= now))
            .map(|(z, _)| z.clone())
            .collect();
        let dirty: Vec<Arc<Mutex<Session>>> = lock(&self.open)
            .values()
            .filter(|s| {
                let mut s = lock(s);
                std::mem::replace(&mut s.dirty, false) || due.contains(&s.zone)
            })
            .cloned()
            .collect();
        if dirty.is_empty() {
            return;
        }
        let subs: Vec<(String, sys::KdsSubscription)> = dirty.iter().map(|s| self.subscription(s, false)).collect();
        let failed = self.write_all(subs).await;
        for s in &dirty {
            if failed.contains(&lock(s).zone) {
                lock(s).dirty = true;
            }
        }
    }

    /// Writes one session now (connect and disconnect), retrying a
    /// conflicting write a few times (several replicas may write one
    /// insight).
    pub async fn write(&self, session: &Arc<Mutex<Session>>, closed: bool) {
        for _ in 0..5 {
            let sub = self.subscription(session, closed);
            if self.write_all(vec![sub]).await.is_empty() {
                return;
            }
        }
        lock(session).dirty = true;
    }

    /// Writes `subs` into their zones' insights in one transaction
    /// (read-modify-write, compare-and-set on the stored content version).
    /// Returns the zones not written (a conflict or a store error): their
    /// cached state is dropped, the next write reads the store.
    async fn write_all(&self, subs: Vec<(String, sys::KdsSubscription)>) -> HashSet<String> {
        let _one_writer = self.writing.lock().await;
        let mut failed = HashSet::new();
        let beats = match Heartbeats::load(self.manager.store()).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read heartbeats; zone insights not recorded");
                return subs.into_iter().map(|(z, _)| z).collect();
            }
        };
        let now = now_millis();
        let mut writes = Vec::with_capacity(subs.len());
        let mut pending = Vec::with_capacity(subs.len());
        for (zone, sub) in subs {
            let cached = lock(&self.written).get(&zone).cloned();
            let (mut insight, expect) = match cached {
                Some(w) => (w.insight, StatusExpect::Version(w.version)),
                None => match self.stored(&zone).await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(zone = %zone, error = %e, "cannot read zone insight");
                        failed.insert(zone);
                        continue;
                    }
                },
            };
            close_dead(&mut insight, &sub.id, &self.instance_id, &lock(&self.live), &beats, now);
            match insight.subscriptions.iter_mut().find(|x| x.id == sub.id) {
                Some(existing) => *existing = sub,
                None => insight.subscriptions.push(sub),
            }
            let excess = insight.subscriptions.len().saturating_sub(KEEP_SUBSCRIPTIONS);
            insight.subscriptions.drain(..excess);
            let recheck_at = insight
                .subscriptions
                .iter()
                .filter(|x| x.disconnect_time.is_none() && x.global_instance_id != self.instance_id)
                .map(|x| beats.last_seen(x) + SUBSCRIPTION_STALE_MILLIS + 500)
                .min();
            let write: WriteResource = Manager::encode(&Resource::new("", &zone, Spec::ZoneInsight(insight.clone())));
            pending.push((zone, Written { version: write.version.clone(), insight, recheck_at }));
            writes.push((write, expect));
        }
        match self.manager.store().put_status_batch(&writes).await {
            Ok(results) => {
                let mut cache = lock(&self.written);
                for ((zone, w), r) in pending.into_iter().zip(results) {
                    match r {
                        Ok(_) => {
                            cache.insert(zone, w);
                        }
                        Err(e) => {
                            if !matches!(e, StoreError::StatusConflict(_)) {
                                tracing::warn!(zone = %zone, error = %e, "cannot record zone insight");
                            }
                            cache.remove(&zone);
                            failed.insert(zone);
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, zones = pending.len(), "cannot record zone insights");
                let mut cache = lock(&self.written);
                for (zone, _) in pending {
                    cache.remove(&zone);
                    failed.insert(zone);
                }
            }
        }
        failed
    }

    /// The zone's stored insight and the expectation to replace it under.
    async fn stored(&self, zone: &str) -> Result<(sys::ZoneInsight, StatusExpect), StoreError> {
        let key = Manager::key(ResourceType::ZoneInsight, "", zone);
        let current = self.manager.store().get_status(&key).await?;
        let insight = match current.as_ref().map(Manager::decode) {
            Some(Ok(e)) => match e.resource.spec {
                Spec::ZoneInsight(zi) => zi,
                _ => sys::ZoneInsight::default(),
            },
            _ => sys::ZoneInsight::default(),
        };
        let expect = match current {
            Some(c) => StatusExpect::Version(c.version),
            None => StatusExpect::Absent,
        };
        Ok((insight, expect))
    }

    fn subscription(&self, session: &Arc<Mutex<Session>>, closed: bool) -> (String, sys::KdsSubscription) {
        let s = lock(session);
        let now = now_millis();
        let up = lock(&self.upward).get(&(s.zone.clone(), s.connection)).cloned();
        let upward: BTreeMap<String, Counters> = up.map(|u| lock(&u).clone()).unwrap_or_default();
        let mut total = sys::KdsServiceStats::default();
        let mut stat = BTreeMap::new();
        for (k, c) in s.stats.iter().chain(&upward) {
            total.responses_sent += c.sent;
            total.responses_acknowledged += c.acked;
            total.responses_rejected += c.nacked;
            total.resources_sent += c.resources;
            stat.insert(
                k.clone(),
                sys::KdsServiceStats {
                    responses_sent: c.sent,
                    responses_acknowledged: c.acked,
                    responses_rejected: c.nacked,
                    last_nack_reason: c.last_nack.clone().unwrap_or_default(),
                    resources_sent: c.resources,
                },
            );
        }
        (
            s.zone.clone(),
            sys::KdsSubscription {
                id: s.id.clone(),
                global_instance_id: self.instance_id.clone(),
                connect_time: Some(ts(s.connect_time)),
                disconnect_time: closed.then(|| ts(now)),
                status: Some(sys::KdsSubscriptionStatus { last_update_time: Some(ts(now)), total: Some(total), stat }),
                version: Some(sys::Version {
                    kuma_cp: Some(sys::KumaCpVersion { version: s.zone_version.clone(), ..Default::default() }),
                }),
                generation: 0,
                config: String::new(),
            },
        )
    }
}

/// Closes the open subscriptions of `insight` (other than `writing`) that no
/// live global instance can be recording: those of this instance
/// (`instance_id`) that are not among its `live` sessions, and those not
/// seen alive (their own update or their instance's heartbeat in `beats`)
/// for longer than `meridian_core::liveness::SUBSCRIPTION_STALE_MILLIS`
/// (their instance died, e.g. SIGKILL, without closing them). Their
/// disconnect time is when they were last seen alive. A healthy replica
/// beats every [`REFRESH`], well inside the stale window, so its live
/// subscriptions are never closed; were one closed (a replica whose store
/// writes stalled past the window), its next write of that session
/// rewrites it open.
///
/// Why: clients following the incumbent's rule (online = any subscription
/// without a disconnect time, Kuma's `ZoneInsight.IsOnline`) would
/// otherwise see a zone online forever after its global instance died.
fn close_dead(
    insight: &mut sys::ZoneInsight,
    writing: &str,
    instance_id: &str,
    live: &HashSet<String>,
    beats: &Heartbeats,
    now: i64,
) {
    for x in insight.subscriptions.iter_mut().filter(|x| x.id != writing && x.disconnect_time.is_none()) {
        let ours_and_gone = x.global_instance_id == instance_id && !live.contains(&x.id);
        if ours_and_gone || beats.is_stale(x, now) {
            tracing::info!(subscription = %x.id, global_instance = %x.global_instance_id, "closing a subscription no live global instance records");
            x.disconnect_time = Some(ts(beats.last_seen(x).min(now)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_core::Role;
    use meridian_store::Store;

    #[tokio::test]
    async fn upward_counters_join_the_session_of_their_connection_whichever_opens_first() {
        let dir =
            std::env::temp_dir().join(format!("meridian-insight-{}-{:08x}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let store = Store::connect(&format!("sqlite:{}", dir.join("t.db").display())).await.expect("store");
        let insights = Insights::new(Manager::new(store, Role::Global), "g-1".into());
        let conn: Option<SocketAddr> = Some(([127, 0, 0, 1], 4000).into());
        let other: Option<SocketAddr> = Some(([127, 0, 0, 1], 4001).into());
        let key = "Dataplane (zone to global)";

        // The zone-to-global stream counts before the session exists.
        let up = insights.upward("zone-1", conn);
        up.lock()
            .expect("lock")
            .insert(key.into(), Counters { sent: 1, nacked: 1, resources: 3, ..Counters::default() });
        // Another connection's counters are not this session's.
        insights
            .upward("zone-1", other)
            .lock()
            .expect("lock")
            .insert(key.into(), Counters { sent: 9, ..Counters::default() });
        let session = insights.open("zone-1", "0.1.0", conn).await;
        let (_, sub) = insights.subscription(&session, false);
        let stat = &sub.status.as_ref().expect("status").stat[key];
        assert_eq!((stat.responses_sent, stat.responses_rejected, stat.resources_sent), (1, 1, 3));

        // The upward stream ending first keeps its counters for the session's last record.
        insights.close_upward("zone-1", conn);
        let (_, sub) = insights.subscription(&session, true);
        assert_eq!(sub.status.as_ref().expect("status").stat[key].responses_sent, 1);
        insights.close(&session).await;
        assert!(!insights.upward.lock().expect("lock").contains_key(&("zone-1".to_string(), conn)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod close_dead_tests {
    use super::*;

    fn sub(id: &str, instance: &str, seen: i64) -> sys::KdsSubscription {
        sys::KdsSubscription {
            id: id.into(),
            global_instance_id: instance.into(),
            connect_time: Some(ts(seen)),
            status: Some(sys::KdsSubscriptionStatus { last_update_time: Some(ts(seen)), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn closes_only_what_no_live_instance_records() {
        let now = 1_000_000;
        let stale = now - meridian_core::liveness::SUBSCRIPTION_STALE_MILLIS - 1;
        let fresh = now - 1_000;
        let mut insight = sys::ZoneInsight {
            subscriptions: vec![
                sub("dead-replica", "g-dead", stale),
                sub("other-replica", "g-other", fresh),
                sub("ours-gone", "g-me", fresh),
                sub("ours-live", "g-me", fresh),
                sub("writing", "g-me", stale),
            ],
        };
        let live: HashSet<String> = ["ours-live".to_string(), "writing".to_string()].into();
        close_dead(&mut insight, "writing", "g-me", &live, &Heartbeats::default(), now);
        let closed: Vec<(&str, Option<i64>)> = insight
            .subscriptions
            .iter()
            .map(|s| {
                (s.id.as_str(), s.disconnect_time.as_ref().map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000))
            })
            .collect();
        assert_eq!(
            closed,
            [
                ("dead-replica", Some(stale)),
                ("other-replica", None),
                ("ours-gone", Some(fresh)),
                ("ours-live", None),
                ("writing", None)
            ]
        );
    }
}
