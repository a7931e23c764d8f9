//! Change-log compaction in the running process: a background task that
//! drops rows by age and by count, with the flags both binaries flatten.
//!
//! Compaction never loses configuration (the `resources` table is current
//! state); it only shortens how far back [`crate::Store::watch`] can resume.
//! A watcher behind the horizon gets [`crate::StoreError::Compacted`] and
//! re-lists, as Kubernetes watchers do on `410 Gone`.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::store::Store;

/// How much change log to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Rows logged longer ago than this go.
    pub max_age: Duration,
    /// At most this many of the newest rows stay.
    pub max_rows: u64,
}

/// Change-log retention flags (flattened into `meridian-global run` and
/// `meridian-zone run`).
#[derive(Debug, Clone, clap::Args)]
pub struct ChangeLogArgs {
    /// Keep change-log rows for this long (`90s`, `30m`, `1h`); a watcher
    /// further behind re-lists. Longer than any expected reconnect, so a zone
    /// or replica that briefly lost its stream resumes without a re-list.
    #[arg(long = "change-log-retention", env = "MERIDIAN_CHANGE_LOG_RETENTION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub change_log_retention: Duration,

    /// Keep at most this many change-log rows (the newest).
    #[arg(long = "change-log-max-rows", env = "MERIDIAN_CHANGE_LOG_MAX_ROWS", default_value_t = 100_000)]
    pub change_log_max_rows: u64,

    /// How often the change log is compacted.
    #[arg(long = "change-log-compact-interval", env = "MERIDIAN_CHANGE_LOG_COMPACT_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration)]
    pub change_log_compact_interval: Duration,
}

impl ChangeLogArgs {
    /// The retention these flags ask for.
    pub fn retention(&self) -> Retention {
        Retention {
            max_age: self.change_log_retention,
            max_rows: self.change_log_max_rows,
        }
    }
}

/// Starts compacting `store` every `args.change_log_compact_interval`
/// (first right away). Errors are logged and retried at the next tick;
/// the task runs until aborted.
pub fn spawn_compactor(store: Store, args: &ChangeLogArgs) -> JoinHandle<()> {
    let retention = args.retention();
    // A zero interval would spin: at least one second between passes.
    let every = args.change_log_compact_interval.max(Duration::from_secs(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match store.compact_retained(&retention).await {
                Ok(0) => {}
                Ok(dropped) => tracing::debug!(dropped, "change log compacted"),
                Err(error) => tracing::warn!(%error, "change-log compaction failed; retrying"),
            }
        }
    })
}
