//! PostgreSQL only: several independent handles on one database, as
//! several processes would have. The watchers here have their backstop
//! re-query switched off, so only LISTEN/NOTIFY can wake them; a lost
//! notification makes the test fail at its (generous) timeout.

use std::time::Duration;

use meridian_store::{LISTENER_APPLICATION_NAME, StoreOptions, WriteOp};
use sqlx::Connection;

use crate::harness::{Harness, assert_quiet, key, next_change, res};

/// How long a watcher is polled to bring it to its waiting state (not a
/// timing assertion: a longer or shorter time only changes what is tested).
const SETTLE: Duration = Duration::from_millis(200);

/// Options that leave wake-ups as the only way a watcher learns of a change.
pub fn no_backstop() -> StoreOptions {
    StoreOptions { requery_interval: Duration::from_secs(3600) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_one_handle_wakes_watcher_on_another() {
    let h = Harness::postgres().await;
    let writer = h.open().await;
    let watcher = h.open_with(no_backstop()).await;
    let mut watch = watcher.watch(watcher.current_revision().await.expect("rev"));
    for i in 1..=3 {
        // Drive the watcher until it waits at the head, so only a wake-up
        // can deliver the write below.
        assert_quiet(&mut watch, SETTLE).await;
        writer.create(res(key("Mesh", "", &format!("m{i}")), "x")).await.expect("create");
        let ch = next_change(&mut watch).await;
        assert_eq!((ch.revision, ch.resource.key.name), (i, format!("m{i}")));
    }
    assert_quiet(&mut watch, SETTLE).await;
    writer
        .apply_batch(vec![
            WriteOp::Create(res(key("Mesh", "", "b1"), "x")),
            WriteOp::Create(res(key("Mesh", "", "b2"), "x")),
        ])
        .await
        .expect("batch");
    assert_eq!(next_change(&mut watch).await.revision, 4);
    assert_eq!(next_change(&mut watch).await.revision, 5);
    drop(watch);
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_survives_listener_connection_loss() {
    let h = Harness::postgres().await;
    let writer = h.open().await;
    let watcher = h.open_with(no_backstop()).await;
    let mut watch = watcher.watch(0);
    writer.create(res(key("Mesh", "", "before"), "x")).await.expect("create");
    assert_eq!(next_change(&mut watch).await.revision, 1);
    assert_quiet(&mut watch, SETTLE).await;

    // Kill the listener connections on this database (the watcher's handle's
    // and the writer's), as a server restart or a network cut would.
    let mut admin = sqlx::PgConnection::connect(&h.url).await.expect("admin");
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1 AND datname = current_database()",
    )
    .bind(LISTENER_APPLICATION_NAME)
    .fetch_all(&mut admin)
    .await
    .expect("terminate");
    assert!(!killed.is_empty(), "no listener connection found");

    // Written while the listener may be down: found by the re-query that
    // follows its resubscription.
    writer.create(res(key("Mesh", "", "during"), "x")).await.expect("create");
    assert_eq!(next_change(&mut watch).await.resource.key.name, "during");

    // And notifications flow again afterwards.
    for i in 0..3 {
        assert_quiet(&mut watch, SETTLE).await;
        writer.create(res(key("Mesh", "", &format!("after{i}")), "x")).await.expect("create");
        assert_eq!(next_change(&mut watch).await.revision, 3 + i);
    }
    let _ = admin.close().await;
    drop(watch);
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_handles_migrate_the_same_database() {
    let h = Harness::postgres().await;
    let (a, b) = tokio::join!(h.open(), h.open());
    a.create(res(key("Mesh", "", "x"), "x")).await.expect("create");
    assert_eq!(b.get(&key("Mesh", "", "x")).await.expect("get").map(|r| r.revision), Some(1));
    h.cleanup().await;
}

#[tokio::test]
async fn missing_database_is_an_error_not_a_panic() {
    let h = Harness::postgres().await;
    let url = h.url.replace("meridian_t_", "meridian_absent_");
    assert!(meridian_store::Store::connect(&url).await.is_err());
    h.cleanup().await;
}
