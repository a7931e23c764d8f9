//! Change-log compaction in the running process: a background task that
//! drops rows by age and by count (the flags are `meridian_runtime::args::ChangeLogArgs`).
//!
//! Compaction never loses configuration (the `resources` table is current
//! state); it only shortens how far back [`crate::Store::watch`] can resume.
//! A watcher behind the horizon gets [`crate::StoreError::Compacted`] and
//! re-lists, as Kubernetes watchers do on `410 Gone`.

use std::time::Duration;

use crate::store::Store;

/// How much change log to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Rows logged longer ago than this go.
    pub max_age: Duration,
    /// At most this many of the newest rows stay.
    pub max_rows: u64,
}

/// Compacts `store` to `retention` every `every` (first right away; at
/// least one second apart). Errors are logged and retried at the next tick.
/// Never returns: run it beside the process's shutdown signal.
pub async fn compact_every(store: Store, retention: Retention, every: Duration) {
    // A zero interval would spin.
    let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match store.compact_retained(&retention).await {
            Ok(0) => {}
            Ok(dropped) => tracing::debug!(dropped, "change log compacted"),
            Err(error) => tracing::warn!(%error, "change-log compaction failed; retrying"),
        }
    }
}
