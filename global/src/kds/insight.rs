//! ZoneInsight bookkeeping: one subscription per zone connection, with
//! connect/disconnect times, this global instance, the zone's version and
//! per-type counters, written to the store's status table (outside the
//! configuration change feed: a refresh wakes no config watcher and adds no
//! change-log row) on connect, every [`REFRESH`] while open, and on
//! disconnect.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use meridian_core::{Manager, liveness::now_millis};
use meridian_store::{StatusExpect, StoreError, WriteResource};
use meridian_sync_proto::{Resource, ResourceType, Spec, delta::SendStats, driver::lock, pb::system as sys};

/// How often an open subscription's status is refreshed in the store. With
/// `meridian_core::liveness::SUBSCRIPTION_STALE_MILLIS` this bounds how long a
/// zone whose global died still looks online.
pub const REFRESH: Duration = Duration::from_secs(3);
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
}

/// The open sessions of this global instance.
#[derive(Clone)]
pub struct Insights {
    manager: Manager,
    instance_id: String,
    open: Arc<Mutex<HashMap<String, Arc<Mutex<Session>>>>>,
    /// Zone-to-global counters per connection. Either stream of a
    /// connection may open first; the session reads them whenever it is
    /// written, so none are lost to that race.
    upward: Arc<Mutex<HashMap<ConnectionKey, Upward>>>,
}

impl Insights {
    pub fn new(manager: Manager, instance_id: String) -> Insights {
        Insights {
            manager,
            instance_id,
            open: Arc::new(Mutex::new(HashMap::new())),
            upward: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Opens the session of a new global-to-zone stream on `connection`
    /// and records it.
    pub async fn open(&self, zone: &str, zone_version: &str, connection: Option<SocketAddr>) -> Arc<Mutex<Session>> {
        let session = Arc::new(Mutex::new(Session {
            zone: zone.to_string(),
            connection,
            id: format!("{}-{:08x}", self.instance_id, rand::random::<u32>()),
            connect_time: now_millis(),
            zone_version: zone_version.to_string(),
            stats: BTreeMap::new(),
        }));
        lock(&self.open).insert(zone.to_string(), session.clone());
        self.write(&session, false).await;
        session
    }

    /// The open session of `zone`, if its global-to-zone stream is here.
    pub fn current(&self, zone: &str) -> Option<Arc<Mutex<Session>>> {
        lock(&self.open).get(zone).cloned()
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
        lock(&self.upward).remove(&(zone, connection));
    }

    /// Writes the session into the zone's ZoneInsight (read-modify-write,
    /// compare-and-set on the stored content version; several replicas may
    /// write one insight).
    pub async fn write(&self, session: &Arc<Mutex<Session>>, closed: bool) {
        let Some(sub) = self.subscription(session, closed) else { return };
        let zone = sub.0;
        for _ in 0..5 {
            match self.try_write(&zone, sub.1.clone()).await {
                Ok(()) => return,
                Err(StoreError::StatusConflict(_)) => continue,
                Err(e) => {
                    tracing::warn!(zone = %zone, error = %e, "cannot record zone insight");
                    return;
                }
            }
        }
    }

    fn subscription(&self, session: &Arc<Mutex<Session>>, closed: bool) -> Option<(String, sys::KdsSubscription)> {
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
        Some((
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
        ))
    }

    async fn try_write(&self, zone: &str, sub: sys::KdsSubscription) -> Result<(), StoreError> {
        let key = Manager::key(ResourceType::ZoneInsight, "", zone);
        let current = self.manager.store().get_status(&key).await?;
        let mut insight = match current.as_ref().map(Manager::decode) {
            Some(Ok(e)) => match e.resource.spec {
                Spec::ZoneInsight(zi) => zi,
                _ => sys::ZoneInsight::default(),
            },
            _ => sys::ZoneInsight::default(),
        };
        match insight.subscriptions.iter_mut().find(|x| x.id == sub.id) {
            Some(existing) => *existing = sub,
            None => insight.subscriptions.push(sub),
        }
        let excess = insight.subscriptions.len().saturating_sub(KEEP_SUBSCRIPTIONS);
        insight.subscriptions.drain(..excess);
        let write: WriteResource = Manager::encode(&Resource::new("", zone, Spec::ZoneInsight(insight)));
        let expect = match current {
            Some(c) => StatusExpect::Version(c.version),
            None => StatusExpect::Absent,
        };
        self.manager.store().put_status(&write, &expect).await.map(|_| ())
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
        let (_, sub) = insights.subscription(&session, false).expect("subscription");
        let stat = &sub.status.as_ref().expect("status").stat[key];
        assert_eq!((stat.responses_sent, stat.responses_rejected, stat.resources_sent), (1, 1, 3));

        // The upward stream ending first keeps its counters for the session's last record.
        insights.close_upward("zone-1", conn);
        let (_, sub) = insights.subscription(&session, true).expect("subscription");
        assert_eq!(sub.status.as_ref().expect("status").stat[key].responses_sent, 1);
        insights.close(&session).await;
        assert!(!insights.upward.lock().expect("lock").contains_key(&("zone-1".to_string(), conn)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
