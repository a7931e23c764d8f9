//! Zone liveness: whether a zone's control plane is connected now, read from
//! its ZoneInsight.

use meridian_sync_proto::pb;

/// A subscription whose status was refreshed longer ago than this is stale:
/// its global instance died without closing it. Streams refresh their status
/// every few seconds while open.
pub const SUBSCRIPTION_STALE_MILLIS: i64 = 12_000;

/// Whether a zone has an open, fresh subscription.
pub fn zone_online(insight: &pb::system::ZoneInsight, now_millis: i64) -> bool {
    let Some(last) = insight.subscriptions.last() else { return false };
    if last.disconnect_time.is_some() {
        return false;
    }
    !is_stale(last, now_millis)
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

/// Whether a subscription went unrefreshed for longer than
/// [`SUBSCRIPTION_STALE_MILLIS`] (its global instance stopped recording it).
pub fn is_stale(sub: &pb::system::KdsSubscription, now_millis: i64) -> bool {
    now_millis - last_seen_millis(sub) > SUBSCRIPTION_STALE_MILLIS
}

pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
