//! PostgreSQL `LISTEN meridian_changes`: turns writes committed by any
//! process on the database into wake-ups for this process's watchers.
//!
//! Notifications carry no data the watchers rely on; they only say "query
//! again". So a lost notification (listener connection down) costs nothing
//! as long as every (re)subscription is followed by a wake-up, which makes
//! the watchers re-query what they may have missed.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backend::postgres::CHANNEL;

/// `application_name` of the listener connection (visible in `pg_stat_activity`).
pub const LISTENER_APPLICATION_NAME: &str = "meridian-store-listener";

/// First delay before resubscribing after a failure; doubles up to the max.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Starts the listener task; it runs until aborted.
pub(crate) fn spawn(options: PgConnectOptions, wake: Arc<watch::Sender<u64>>) -> JoinHandle<()> {
    tokio::spawn(run(options, wake))
}

fn bump(wake: &watch::Sender<u64>) {
    wake.send_modify(|n| *n = n.wrapping_add(1));
}

async fn run(options: PgConnectOptions, wake: Arc<watch::Sender<u64>>) {
    // One connection, kept open for as long as it lives; the pool exists
    // only so PgListener can reconnect through it.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with(options.application_name(LISTENER_APPLICATION_NAME));
    let mut backoff = MIN_BACKOFF;
    loop {
        match subscribe(&pool).await {
            Ok(mut listener) => {
                backoff = MIN_BACKOFF;
                // Subscribed: whatever committed before now is found by re-querying.
                bump(&wake);
                loop {
                    match listener.try_recv().await {
                        Ok(Some(_)) => bump(&wake),
                        // Connection lost and already re-established (eager
                        // reconnect): notifications in between are lost, so re-query.
                        Ok(None) => {
                            tracing::info!("change listener reconnected");
                            bump(&wake);
                        }
                        Err(error) => {
                            tracing::warn!(%error, "change listener failed; resubscribing");
                            break;
                        }
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, ?backoff, "cannot LISTEN for store changes; retrying");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn subscribe(pool: &sqlx::PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.ignore_pool_close_event(true);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}
