//! ZoneInsight bookkeeping: one subscription per zone connection, with
//! connect/disconnect times, this global instance, the zone's version and
//! per-type counters, written to the store on connect, every
//! [`REFRESH`] while open, and on disconnect.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use meridian_api::{Manager, overview::now_millis};
use meridian_store::{StoreError, WriteResource};
use meridian_sync_proto::{Resource, ResourceType, Spec, delta::SendStats, pb::system as sys};

/// How often an open subscription's status is refreshed in the store. With
/// `meridian_api::overview::SUBSCRIPTION_STALE_MILLIS` this bounds how long a
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

/// One zone connection as it is being recorded.
#[derive(Debug)]
pub struct Session {
    pub zone: String,
    pub id: String,
    pub connect_time: i64,
    pub zone_version: String,
    /// Stat key (type name, or `<type> (zone to global)`) → counters.
    pub stats: BTreeMap<String, Counters>,
}

/// The open sessions of this global instance.
#[derive(Clone)]
pub struct Insights {
    manager: Manager,
    instance_id: String,
    open: Arc<Mutex<HashMap<String, Arc<Mutex<Session>>>>>,
}

impl Insights {
    pub fn new(manager: Manager, instance_id: String) -> Insights {
        Insights { manager, instance_id, open: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// Opens the session of a new global-to-zone stream and records it.
    pub async fn open(&self, zone: &str, zone_version: &str) -> Arc<Mutex<Session>> {
        let session = Arc::new(Mutex::new(Session {
            zone: zone.to_string(),
            id: format!("{}-{:08x}", self.instance_id, rand::random::<u32>()),
            connect_time: now_millis(),
            zone_version: zone_version.to_string(),
            stats: BTreeMap::new(),
        }));
        if let Ok(mut open) = self.open.lock() {
            open.insert(zone.to_string(), session.clone());
        }
        self.write(&session, false).await;
        session
    }

    /// The open session of `zone`, if its global-to-zone stream is here.
    pub fn current(&self, zone: &str) -> Option<Arc<Mutex<Session>>> {
        self.open.lock().ok()?.get(zone).cloned()
    }

    /// Records the end of a session.
    pub async fn close(&self, session: &Arc<Mutex<Session>>) {
        let zone = session.lock().map(|s| s.zone.clone()).unwrap_or_default();
        if let Ok(mut open) = self.open.lock() {
            if open.get(&zone).is_some_and(|s| Arc::ptr_eq(s, session)) {
                open.remove(&zone);
            }
        }
        self.write(session, true).await;
    }

    /// Writes the session into the zone's ZoneInsight (read-modify-write with
    /// optimistic concurrency; several replicas may write one insight).
    pub async fn write(&self, session: &Arc<Mutex<Session>>, closed: bool) {
        let Some(sub) = self.subscription(session, closed) else { return };
        let zone = sub.0;
        for _ in 0..5 {
            match self.try_write(&zone, sub.1.clone()).await {
                Ok(()) => return,
                Err(StoreError::Conflict { .. } | StoreError::AlreadyExists(_)) => continue,
                Err(e) => {
                    tracing::warn!(zone = %zone, error = %e, "cannot record zone insight");
                    return;
                }
            }
        }
    }

    fn subscription(&self, session: &Arc<Mutex<Session>>, closed: bool) -> Option<(String, sys::KdsSubscription)> {
        let s = session.lock().ok()?;
        let now = now_millis();
        let mut total = sys::KdsServiceStats::default();
        let mut stat = BTreeMap::new();
        for (k, c) in &s.stats {
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
                status: Some(sys::KdsSubscriptionStatus {
                    last_update_time: Some(ts(now)),
                    total: Some(total),
                    stat,
                }),
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
        let current = self.manager.store().get(&key).await?;
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
        match current {
            Some(c) => self.manager.store().update(write, Some(c.revision)).await.map(|_| ()),
            None => self.manager.store().create(write).await.map(|_| ()),
        }
    }
}
