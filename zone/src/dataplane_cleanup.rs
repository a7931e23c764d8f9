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
//! Known limit: a subscription left open by a zone instance that was killed
//! (not stopped) stays open in the insight until the proxy reconnects, so
//! that Dataplane is kept.

use std::{collections::BTreeMap, time::Duration};

use meridian_core::{Manager, ManagerError};
use meridian_sync_proto::{ResourceType, Spec, pb::mesh::DataplaneInsight};
use tokio_util::sync::CancellationToken;

/// The shortest and longest pause between two sweeps; in between it is a
/// quarter of the cleanup age, so a Dataplane goes at most 25% late.
const MIN_INTERVAL: Duration = Duration::from_millis(500);
const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// The pause between two sweeps for a cleanup age of `after`.
pub fn interval(after: Duration) -> Duration {
    (after / 4).clamp(MIN_INTERVAL, MAX_INTERVAL)
}

fn millis(t: &pbjson_types::Timestamp) -> i64 {
    t.seconds.saturating_mul(1000) + i64::from(t.nanos) / 1_000_000
}

/// Since when (milliseconds since the epoch) the Dataplane's proxy has been
/// gone: the newest disconnect time when every subscription is closed;
/// `None` while one is open, or when none was ever recorded.
pub fn disconnected_since(insight: &DataplaneInsight) -> Option<i64> {
    if insight.subscriptions.iter().any(|s| s.disconnect_time.is_none()) {
        return None;
    }
    insight.subscriptions.iter().filter_map(|s| s.disconnect_time.as_ref()).map(millis).max()
}

/// Whether a Dataplane with this insight is due for removal at `now_millis`.
pub fn expired(insight: &DataplaneInsight, after: Duration, now_millis: i64) -> bool {
    let after = i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
    disconnected_since(insight).is_some_and(|since| now_millis.saturating_sub(since) > after)
}

/// One sweep: deletes every Dataplane disconnected for longer than
/// `after`; returns their `mesh/name`.
pub async fn sweep(manager: &Manager, after: Duration, now_millis: i64) -> Result<Vec<String>, ManagerError> {
    let (insights, _) = manager.list(ResourceType::DataplaneInsight, None, BTreeMap::new(), 0, None).await?;
    let mut removed = Vec::new();
    for entry in insights {
        let Spec::DataplaneInsight(insight) = &entry.resource.spec else { continue };
        if !expired(insight, after, now_millis) {
            continue;
        }
        let (mesh, name) = (&entry.resource.meta.mesh, &entry.resource.meta.name);
        let Some(dp) = manager.get(ResourceType::Dataplane, mesh, name).await? else { continue };
        // Read the insight again: the proxy may have come back meanwhile.
        let fresh = manager.get(ResourceType::DataplaneInsight, mesh, name).await?;
        if !fresh
            .is_some_and(|e| matches!(&e.resource.spec, Spec::DataplaneInsight(i) if expired(i, after, now_millis)))
        {
            continue;
        }
        match manager.delete(ResourceType::Dataplane, mesh, name, Some(dp.revision)).await {
            Ok(()) => {
                tracing::info!(dataplane = %format!("{mesh}/{name}"), after = ?after, "deleted a Dataplane disconnected for longer than --dataplane-cleanup-after");
                removed.push(format!("{mesh}/{name}"));
            }
            // Changed or removed by someone else meanwhile: theirs to decide.
            Err(ManagerError::Conflict { .. } | ManagerError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// Sweeps every [`interval`] until `shutdown`; `after` zero turns it off.
/// A failed sweep (the store away) is logged and tried again next time.
pub async fn run(manager: Manager, after: Duration, shutdown: CancellationToken) -> anyhow::Result<()> {
    if after.is_zero() {
        tracing::info!("Dataplane cleanup is off (--dataplane-cleanup-after 0s)");
        shutdown.cancelled().await;
        return Ok(());
    }
    let mut tick = tokio::time::interval(interval(after));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        if let Err(e) = sweep(&manager, after, meridian_core::liveness::now_millis()).await {
            tracing::warn!(error = %e, "Dataplane cleanup failed; trying again later");
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
            ..Default::default()
        }
    }

    #[test]
    fn only_proxies_gone_for_longer_than_the_age_expire() {
        let after = Duration::from_secs(10);
        let gone = DataplaneInsight { subscriptions: vec![sub(0, Some(1_000)), sub(2_000, Some(5_000))] };
        assert_eq!(disconnected_since(&gone), Some(5_000));
        assert!(!expired(&gone, after, 15_000), "10 s after the newest disconnect: not yet");
        assert!(expired(&gone, after, 15_001));

        let connected = DataplaneInsight { subscriptions: vec![sub(0, Some(1_000)), sub(2_000, None)] };
        assert_eq!(disconnected_since(&connected), None);
        assert!(!expired(&connected, after, i64::MAX));

        assert!(!expired(&DataplaneInsight::default(), after, i64::MAX), "never connected: kept");
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
            let r = Resource::new("default", name, Spec::DataplaneInsight(DataplaneInsight { subscriptions }));
            store.put_status(&Manager::encode(&r), &StatusExpect::Absent).await.expect("insight");
        }

        let removed = sweep(&manager, Duration::from_secs(10), 100_000).await.expect("sweep");
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
        assert!(sweep(&manager, Duration::from_secs(10), 100_000).await.expect("sweep").is_empty());
    }

    #[test]
    fn the_interval_follows_the_age_within_bounds() {
        assert_eq!(interval(Duration::from_secs(2)), MIN_INTERVAL);
        assert_eq!(interval(Duration::from_secs(8)), Duration::from_secs(2));
        assert_eq!(interval(Duration::from_secs(72 * 3600)), MAX_INTERVAL);
    }
}
