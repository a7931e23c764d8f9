//! The Dataplane sweeper: deletes a Dataplane whose proxy has been
//! disconnected for longer than `--dataplane-cleanup-after`, so a gateway
//! host that vanished (its runner killed, the machine gone) leaves nothing
//! behind. The incumbent does the same on Universal
//! (`KUMA_RUNTIME_UNIVERSAL_DP_CLEANUP_AGE`, default 72h).
//!
//! "Disconnected" is read from the Dataplane's DataplaneInsight (the status
//! table, written by the xDS server, [`crate::xds`]): every subscription has
//! a disconnect time, and the newest of them is older than the limit. A
//! Dataplane with an open subscription is connected and kept; one with no
//! insight at all never had a proxy (registered by hand, a backend) and is
//! kept too, as the incumbent does. The delete goes through the Manager
//! with the revision that was read, so a Dataplane re-registered meanwhile
//! is not removed; its insight goes with it.
//!
//! ZoneIngresses of this zone are swept the same way, from their
//! ZoneIngressInsight (written by the xDS server for ingress proxies): an
//! ingress whose runner died without deregistering (SIGKILL, the host gone)
//! is deleted once its proxy has been gone for longer than the same age;
//! the deletion travels to the global and from there to every other zone,
//! whose proxies then stop routing to it. The incumbent's zone does the
//! same (its garbage collector maps ZoneIngressInsight to ZoneIngress, age
//! `KUMA_RUNTIME_UNIVERSAL_ZONE_RESOURCE_CLEANUP_AGE`); Meridian uses one
//! age for both.
//!
//! A zone instance that is killed (not stopped) cannot close its open
//! subscriptions. On SQLite this instance is the store's only writer, so a
//! subscription another instance left open is dead since this one started
//! at the latest, and counts as disconnected from then. On PostgreSQL a
//! replica may be alive and serving it: such a subscription keeps its
//! Dataplane.

use std::{collections::BTreeMap, time::Duration};

use meridian_core::{Manager, ManagerError};
use meridian_sync_proto::{
    ResourceType, Spec,
    pb::mesh::{DataplaneInsight, DiscoverySubscription},
};
use tokio_util::sync::CancellationToken;

/// The shortest and longest pause between two sweeps; in between it is a
/// quarter of the cleanup age, so a Dataplane goes at most 25% late.
const MIN_INTERVAL: Duration = Duration::from_millis(500);
const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// The sweeper's settings and what it knows about who records subscriptions.
#[derive(Debug, Clone)]
pub struct Cleanup {
    /// Delete a Dataplane disconnected for longer than this (`--dataplane-cleanup-after`).
    pub after: Duration,
    /// This zone instance (the `control_plane_instance_id` of its subscriptions).
    pub instance_id: String,
    /// When this instance started, in milliseconds since the epoch.
    pub started_millis: i64,
    /// Whether this instance is the store's only writer (SQLite).
    pub sole_instance: bool,
}

/// The pause between two sweeps for a cleanup age of `after`.
pub fn interval(after: Duration) -> Duration {
    (after / 4).clamp(MIN_INTERVAL, MAX_INTERVAL)
}

fn millis(t: &pbjson_types::Timestamp) -> i64 {
    t.seconds.saturating_mul(1000) + i64::from(t.nanos) / 1_000_000
}

/// Since when (milliseconds since the epoch) the Dataplane's proxy has been
/// gone: the newest disconnect time when no subscription is open; `None`
/// while one is, or when none was ever recorded. With `c.sole_instance`, a
/// subscription another instance left open counts as closed when this
/// instance started.
pub fn disconnected_since(insight: &DataplaneInsight, c: &Cleanup) -> Option<i64> {
    subscriptions_gone_since(&insight.subscriptions, c)
}

/// [`disconnected_since`] for any proxy's subscriptions (a Dataplane's or a
/// ZoneIngress's).
fn subscriptions_gone_since(subscriptions: &[DiscoverySubscription], c: &Cleanup) -> Option<i64> {
    let mut since = None;
    for s in subscriptions {
        let at = match &s.disconnect_time {
            Some(t) => millis(t),
            None if c.sole_instance && s.control_plane_instance_id != c.instance_id => c.started_millis,
            None => return None,
        };
        since = since.max(Some(at));
    }
    since
}

/// Whether a Dataplane with this insight is due for removal at `now_millis`.
pub fn expired(insight: &DataplaneInsight, c: &Cleanup, now_millis: i64) -> bool {
    subscriptions_expired(&insight.subscriptions, c, now_millis)
}

fn subscriptions_expired(subscriptions: &[DiscoverySubscription], c: &Cleanup, now_millis: i64) -> bool {
    let after = i64::try_from(c.after.as_millis()).unwrap_or(i64::MAX);
    subscriptions_gone_since(subscriptions, c).is_some_and(|since| now_millis.saturating_sub(since) > after)
}

/// The subscriptions of a ZoneIngressInsight entry, when it is one.
fn ingress_subscriptions(e: &meridian_core::Entry) -> Option<&[DiscoverySubscription]> {
    match &e.resource.spec {
        Spec::ZoneIngressInsight(i) => Some(&i.subscriptions),
        _ => None,
    }
}

/// One sweep of this zone's ZoneIngresses: deletes every one whose proxy
/// has been disconnected for longer than `after`; returns their names.
pub async fn sweep_ingresses(manager: &Manager, c: &Cleanup, now_millis: i64) -> Result<Vec<String>, ManagerError> {
    let (insights, _) = manager.list(ResourceType::ZoneIngressInsight, None, BTreeMap::new(), 0, None).await?;
    let mut removed = Vec::new();
    for entry in insights {
        if !ingress_subscriptions(&entry).is_some_and(|s| subscriptions_expired(s, c, now_millis)) {
            continue;
        }
        let name = &entry.resource.meta.name;
        let Some(zi) = manager.get(ResourceType::ZoneIngress, "", name).await? else { continue };
        // Read the insight again: the proxy may have come back meanwhile.
        let fresh = manager.get(ResourceType::ZoneIngressInsight, "", name).await?;
        if !fresh.as_ref().and_then(ingress_subscriptions).is_some_and(|s| subscriptions_expired(s, c, now_millis)) {
            continue;
        }
        match manager.delete(ResourceType::ZoneIngress, "", name, Some(zi.revision)).await {
            Ok(()) => {
                tracing::info!(zone_ingress = %name, after = ?c.after, "deleted a ZoneIngress disconnected for longer than --dataplane-cleanup-after");
                removed.push(name.clone());
            }
            Err(ManagerError::Conflict { .. } | ManagerError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// One sweep: deletes every Dataplane disconnected for longer than
/// `after`; returns their `mesh/name`.
pub async fn sweep(manager: &Manager, c: &Cleanup, now_millis: i64) -> Result<Vec<String>, ManagerError> {
    let (insights, _) = manager.list(ResourceType::DataplaneInsight, None, BTreeMap::new(), 0, None).await?;
    let mut removed = Vec::new();
    for entry in insights {
        let Spec::DataplaneInsight(insight) = &entry.resource.spec else { continue };
        if !expired(insight, c, now_millis) {
            continue;
        }
        let (mesh, name) = (&entry.resource.meta.mesh, &entry.resource.meta.name);
        let Some(dp) = manager.get(ResourceType::Dataplane, mesh, name).await? else { continue };
        // Read the insight again: the proxy may have come back meanwhile.
        let fresh = manager.get(ResourceType::DataplaneInsight, mesh, name).await?;
        if !fresh.is_some_and(|e| matches!(&e.resource.spec, Spec::DataplaneInsight(i) if expired(i, c, now_millis))) {
            continue;
        }
        match manager.delete(ResourceType::Dataplane, mesh, name, Some(dp.revision)).await {
            Ok(()) => {
                tracing::info!(dataplane = %format!("{mesh}/{name}"), after = ?c.after, "deleted a Dataplane disconnected for longer than --dataplane-cleanup-after");
                removed.push(format!("{mesh}/{name}"));
            }
            // Changed or removed by someone else meanwhile: theirs to decide.
            Err(ManagerError::Conflict { .. } | ManagerError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// Sweeps every [`interval`] until `shutdown`; `c.after` zero turns it off.
/// A failed sweep (the store away) is logged and tried again next time.
pub async fn run(manager: Manager, c: Cleanup, shutdown: CancellationToken) -> anyhow::Result<()> {
    if c.after.is_zero() {
        tracing::info!("Dataplane cleanup is off (--dataplane-cleanup-after 0s)");
        shutdown.cancelled().await;
        return Ok(());
    }
    let mut tick = tokio::time::interval(interval(c.after));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        if let Err(e) = sweep(&manager, &c, meridian_core::liveness::now_millis()).await {
            tracing::warn!(error = %e, "Dataplane cleanup failed; trying again later");
        }
        if let Err(e) = sweep_ingresses(&manager, &c, meridian_core::liveness::now_millis()).await {
            tracing::warn!(error = %e, "ZoneIngress cleanup failed; trying again later");
        }
    }
}

#[cfg(test)]
mod tests {
    use meridian_sync_proto::pb::mesh::DiscoverySubscription;

    use super::*;

    fn ts(ms: i64) -> pbjson_types::Timestamp {
        pbjson_types::Timestamp { seconds: ms / 1000, nanos: ((ms % 1000) * 1_000_000) as i32 }
    }

    fn sub(connect: i64, disconnect: Option<i64>) -> DiscoverySubscription {
        DiscoverySubscription {
            connect_time: Some(ts(connect)),
            disconnect_time: disconnect.map(ts),
            control_plane_instance_id: "me".into(),
            ..Default::default()
        }
    }

    fn cleanup(after_secs: u64, sole_instance: bool) -> Cleanup {
        Cleanup {
            after: Duration::from_secs(after_secs),
            instance_id: "me".into(),
            started_millis: 50_000,
            sole_instance,
        }
    }

    #[test]
    fn only_proxies_gone_for_longer_than_the_age_expire() {
        let c = cleanup(10, false);
        let gone = DataplaneInsight { subscriptions: vec![sub(0, Some(1_000)), sub(2_000, Some(5_000))], m_tls: None };
        assert_eq!(disconnected_since(&gone, &c), Some(5_000));
        assert!(!expired(&gone, &c, 15_000), "10 s after the newest disconnect: not yet");
        assert!(expired(&gone, &c, 15_001));

        let connected = DataplaneInsight { subscriptions: vec![sub(0, Some(1_000)), sub(2_000, None)], m_tls: None };
        assert_eq!(disconnected_since(&connected, &c), None);
        assert!(!expired(&connected, &c, i64::MAX));

        assert!(!expired(&DataplaneInsight::default(), &c, i64::MAX), "never connected: kept");
    }

    #[test]
    fn a_subscription_left_open_by_a_dead_instance_counts_only_for_a_sole_instance() {
        let mut left_open = sub(2_000, None);
        left_open.control_plane_instance_id = "killed".into();
        let insight = DataplaneInsight { subscriptions: vec![sub(0, Some(1_000)), left_open], m_tls: None };
        // SQLite: this instance is the only writer; the other one is dead
        // since this one started (50 s).
        assert_eq!(disconnected_since(&insight, &cleanup(10, true)), Some(50_000));
        assert!(expired(&insight, &cleanup(10, true), 60_001));
        // PostgreSQL: another replica may be serving it.
        assert_eq!(disconnected_since(&insight, &cleanup(10, false)), None);
        // This instance's own open subscription is a live proxy either way.
        let mut mine = sub(2_000, None);
        mine.control_plane_instance_id = "me".into();
        assert_eq!(
            disconnected_since(&DataplaneInsight { subscriptions: vec![mine], m_tls: None }, &cleanup(10, true)),
            None
        );
    }

    /// On a real (SQLite) store: only the Dataplane whose proxy left long
    /// enough ago goes, with its insight.
    #[tokio::test]
    async fn a_sweep_deletes_only_the_long_disconnected() {
        use meridian_store::{StatusExpect, Store};
        use meridian_sync_proto::{Resource, universal};

        let dir = tempfile::tempdir().expect("tmp");
        let url = format!("sqlite:{}", dir.path().join("z.db").display());
        let store = Store::connect(&url).await.expect("store");
        let manager = Manager::new(store.clone(), meridian_core::Role::Zone { federated: false });
        let mesh = universal::from_value(serde_json::json!({"type": "Mesh", "name": "default"})).expect("mesh");
        manager.apply(mesh, None, false).await.expect("mesh");
        for name in ["gone", "connected", "never", "recent"] {
            let dp = universal::from_value(serde_json::json!({"type": "Dataplane", "mesh": "default", "name": name,
                "networking": {"address": "127.0.0.1", "gateway": {"tags": {"kuma.io/service": "gw"}}}}))
            .expect("dataplane");
            manager.apply(dp, None, false).await.expect("apply");
        }
        let insights = [
            ("gone", vec![sub(0, Some(1_000))]),
            ("connected", vec![sub(0, Some(1_000)), sub(2_000, None)]),
            ("recent", vec![sub(0, Some(95_000))]),
        ];
        for (name, subscriptions) in insights {
            let r =
                Resource::new("default", name, Spec::DataplaneInsight(DataplaneInsight { subscriptions, m_tls: None }));
            store.put_status(&Manager::encode(&r), &StatusExpect::Absent).await.expect("insight");
        }

        let removed = sweep(&manager, &cleanup(10, true), 100_000).await.expect("sweep");
        assert_eq!(removed, ["default/gone"]);
        let get = |ty, name: &'static str| {
            let manager = manager.clone();
            async move { manager.get(ty, "default", name).await.expect("get").is_some() }
        };
        assert!(!get(ResourceType::Dataplane, "gone").await);
        assert!(!get(ResourceType::DataplaneInsight, "gone").await, "the insight goes with it");
        for name in ["connected", "never", "recent"] {
            assert!(get(ResourceType::Dataplane, name).await, "{name} is kept");
        }
        assert!(sweep(&manager, &cleanup(10, true), 100_000).await.expect("sweep").is_empty());
    }

    /// On a real (SQLite) store: only the ZoneIngress whose proxy left long
    /// enough ago goes, with its insight.
    #[tokio::test]
    async fn a_sweep_deletes_only_the_long_disconnected_ingresses() {
        use meridian_store::{StatusExpect, Store};
        use meridian_sync_proto::{Resource, pb::mesh::ZoneIngressInsight, universal};

        let dir = tempfile::tempdir().expect("tmp");
        let url = format!("sqlite:{}", dir.path().join("z.db").display());
        let store = Store::connect(&url).await.expect("store");
        let manager = Manager::new(store.clone(), meridian_core::Role::Zone { federated: false });
        for name in ["gone", "connected", "never"] {
            let zi = universal::from_value(serde_json::json!({"type": "ZoneIngress", "name": name,
                "networking": {"address": "127.0.0.1", "port": 10001, "advertisedAddress": "127.0.0.1", "advertisedPort": 10001}}))
            .expect("zone ingress");
            manager.apply(zi, None, false).await.expect("apply");
        }
        for (name, subscriptions) in [("gone", vec![sub(0, Some(1_000))]), ("connected", vec![sub(2_000, None)])] {
            let r = Resource::new("", name, Spec::ZoneIngressInsight(ZoneIngressInsight { subscriptions }));
            store.put_status(&Manager::encode(&r), &StatusExpect::Absent).await.expect("insight");
        }
        let removed = sweep_ingresses(&manager, &cleanup(10, true), 100_000).await.expect("sweep");
        assert_eq!(removed, ["gone"]);
        let get = |ty, name: &'static str| {
            let manager = manager.clone();
            async move { manager.get(ty, "", name).await.expect("get").is_some() }
        };
        assert!(!get(ResourceType::ZoneIngress, "gone").await);
        assert!(!get(ResourceType::ZoneIngressInsight, "gone").await, "the insight goes with it");
        assert!(get(ResourceType::ZoneIngress, "connected").await);
        assert!(get(ResourceType::ZoneIngress, "never").await, "never connected: kept");
    }

    #[test]
    fn the_interval_follows_the_age_within_bounds() {
        assert_eq!(interval(Duration::from_secs(2)), MIN_INTERVAL);
        assert_eq!(interval(Duration::from_secs(8)), Duration::from_secs(2));
        assert_eq!(interval(Duration::from_secs(72 * 3600)), MAX_INTERVAL);
    }
}
