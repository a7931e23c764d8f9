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
    let seen = last
        .status
        .as_ref()
        .and_then(|s| s.last_update_time.as_ref())
        .or(last.connect_time.as_ref())
        .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000);
    now_millis - seen <= SUBSCRIPTION_STALE_MILLIS
}

pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
