//! Zone liveness: whether a zone's control plane is connected now, read from
//! its ZoneInsight and from the heartbeats of the global instances.
//!
//! A ZoneInsight is written when what it records changes (connect,
//! disconnect, counters), not periodically: an idle zone costs no store
//! write. What proves that an open subscription is still recorded by a live
//! global instance is that instance's heartbeat ([`Heartbeats`]): one status
//! row per instance, refreshed every few seconds whatever the number of
//! zones. A subscription is fresh while its own last update or its
//! instance's heartbeat is within [`SUBSCRIPTION_STALE_MILLIS`].

use std::collections::HashMap;

use meridian_store::{ListQuery, ResourceKey, Store, StoreError, WriteResource};
use meridian_sync_proto::pb;

/// A subscription not seen alive (its own update or its global instance's
/// heartbeat) for longer than this is stale: its global instance died
/// without closing it. Instances refresh their heartbeat every few seconds.
pub const SUBSCRIPTION_STALE_MILLIS: i64 = 12_000;

/// The status-table type of a global instance's heartbeat row (name: the
/// instance id, version: the unix-ms time of the beat). Not a resource
/// type of the API: no endpoint lists it.
pub const HEARTBEAT_TYPE: &str = "GlobalInstanceHeartbeat";

/// A heartbeat row not refreshed for longer than this (ten liveness
/// windows, two minutes) belongs to a global instance that is gone (every
/// restart gets a new instance id) or that has had no zone for that long:
/// [`Heartbeats::sweep`] deletes it. An instance beats when a zone connects
/// to it and every few seconds while it has one, and a session carries its
/// own update time besides, so deleting the row of an instance idle that
/// long changes no zone's liveness.
pub const HEARTBEAT_RETENTION_MILLIS: i64 = 10 * SUBSCRIPTION_STALE_MILLIS;

/// The last heartbeat of each global instance (instance id → unix ms).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Heartbeats(pub HashMap<String, i64>);

impl Heartbeats {
    /// Reads every instance's heartbeat from the status table.
    ///
    /// Errors: the store's.
    pub async fn load(store: &Store) -> Result<Heartbeats, StoreError> {
        let page =
            store.list_status(&ListQuery { type_name: HEARTBEAT_TYPE.to_string(), ..ListQuery::default() }).await?;
        Ok(Heartbeats(page.items.into_iter().filter_map(|r| Some((r.key.name, r.version.parse().ok()?))).collect()))
    }

    /// Records that instance `instance_id` is alive at `now_millis` (one
    /// status row per instance, rewritten in place).
    ///
    /// Errors: the store's.
    pub async fn beat(store: &Store, instance_id: &str, now_millis: i64) -> Result<(), StoreError> {
        let w = WriteResource {
            key: ResourceKey {
                type_name: HEARTBEAT_TYPE.to_string(),
                mesh: String::new(),
                name: instance_id.to_string(),
            },
            labels: Default::default(),
            spec: Vec::new(),
            version: now_millis.to_string(),
        };
        store.put_status(&w, &meridian_store::StatusExpect::Any).await.map(|_| ())
    }

    /// Deletes the heartbeat rows last written more than
    /// [`HEARTBEAT_RETENTION_MILLIS`] before `now_millis` (and rows whose
    /// time does not parse); returns the instance ids deleted. Without it
    /// the status table keeps one row per global start forever.
    ///
    /// Errors: the store's (rows deleted before the error stay deleted).
    pub async fn sweep(store: &Store, now_millis: i64) -> Result<Vec<String>, StoreError> {
        let page =
            store.list_status(&ListQuery { type_name: HEARTBEAT_TYPE.to_string(), ..ListQuery::default() }).await?;
        let mut deleted = Vec::new();
        for r in page.items {
            let beat = r.version.parse::<i64>().unwrap_or(0);
            if now_millis - beat > HEARTBEAT_RETENTION_MILLIS && store.delete_status(&r.key).await? {
                deleted.push(r.key.name);
            }
        }
        Ok(deleted)
    }

    /// When `sub` was last known alive: its own last update (or connect
    /// time), or its global instance's last heartbeat, whichever is newer.
    pub fn last_seen(&self, sub: &pb::system::KdsSubscription) -> i64 {
        let beat = self.0.get(&sub.global_instance_id).copied().unwrap_or(0);
        last_seen_millis(sub).max(beat)
    }

    /// Whether `sub` went unseen for longer than [`SUBSCRIPTION_STALE_MILLIS`].
    pub fn is_stale(&self, sub: &pb::system::KdsSubscription, now_millis: i64) -> bool {
        now_millis - self.last_seen(sub) > SUBSCRIPTION_STALE_MILLIS
    }

    /// Whether a zone has an open, fresh subscription (its newest one).
    pub fn zone_online(&self, insight: &pb::system::ZoneInsight, now_millis: i64) -> bool {
        let Some(last) = insight.subscriptions.last() else { return false };
        last.disconnect_time.is_none() && !self.is_stale(last, now_millis)
    }
}

/// When a subscription was last known alive, in milliseconds since the
/// epoch: its last status refresh, else its connect time (0 without either).
pub fn last_seen_millis(sub: &pb::system::KdsSubscription) -> i64 {
    sub.status
        .as_ref()
        .and_then(|s| s.last_update_time.as_ref())
        .or(sub.connect_time.as_ref())
        .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sweep_deletes_only_heartbeats_older_than_the_retention() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::connect(&format!("sqlite:{}", dir.path().join("t.db").display())).await.expect("store");
        let now = 1_000_000_000;
        // A global that restarted long ago, one dead for less than the
        // retention (still useful: its subscriptions read as stale by it),
        // and a live one.
        Heartbeats::beat(&store, "g-restarted", now - HEARTBEAT_RETENTION_MILLIS - 1).await.expect("beat");
        Heartbeats::beat(&store, "g-recent", now - SUBSCRIPTION_STALE_MILLIS - 1).await.expect("beat");
        Heartbeats::beat(&store, "g-live", now).await.expect("beat");
        assert_eq!(Heartbeats::sweep(&store, now).await.expect("sweep"), ["g-restarted"]);
        let mut left: Vec<String> = Heartbeats::load(&store).await.expect("load").0.into_keys().collect();
        left.sort();
        assert_eq!(left, ["g-live", "g-recent"]);
        assert!(Heartbeats::sweep(&store, now).await.expect("sweep").is_empty(), "nothing more to delete");
    }

    fn ts(ms: i64) -> pbjson_types::Timestamp {
        pbjson_types::Timestamp { seconds: ms / 1000, nanos: 0 }
    }

    fn insight(instance: &str, seen: i64, closed: bool) -> pb::system::ZoneInsight {
        pb::system::ZoneInsight {
            subscriptions: vec![pb::system::KdsSubscription {
                id: "s-1".into(),
                global_instance_id: instance.into(),
                connect_time: Some(ts(seen)),
                disconnect_time: closed.then(|| ts(seen)),
                status: Some(pb::system::KdsSubscriptionStatus {
                    last_update_time: Some(ts(seen)),
                    ..Default::default()
                }),
                ..Default::default()
            }],
        }
    }

    #[test]
    fn an_open_subscription_is_online_while_it_or_its_instance_was_seen() {
        let now = 1_000_000_000;
        let old = now - SUBSCRIPTION_STALE_MILLIS - 1_000;
        let beats = Heartbeats([("g-1".to_string(), now - 1_000)].into());
        // Not rewritten for long, but its instance beats: online.
        assert!(beats.zone_online(&insight("g-1", old, false), now));
        // Its instance stopped beating too (killed): offline.
        assert!(!beats.zone_online(&insight("g-dead", old, false), now));
        // Recently written, whatever the heartbeats: online.
        assert!(Heartbeats::default().zone_online(&insight("g-2", now - 1_000, false), now));
        // Closed: offline, however fresh.
        assert!(!beats.zone_online(&insight("g-1", now, true), now));
        assert!(!beats.zone_online(&pb::system::ZoneInsight::default(), now));
    }
}
