//! The change feed, compaction, durability and concurrent writers.

use std::collections::BTreeSet;
use std::time::Duration;

use meridian_store::{ChangeKind, StoreError, StoreOptions, WriteOp};

use crate::harness::{Harness, key, next_change, next_item, res};

/// More than one catch-up page (500) so paging is exercised.
const MANY: i64 = 1200;

pub async fn watch_from_zero_then_live(h: &Harness) {
    let store = h.open().await;
    let ops =
        (0..MANY).map(|i| WriteOp::Create(res(key("Dataplane", "m", &format!("dp-{i:05}")), &i.to_string()))).collect();
    store.apply_batch(ops).await.expect("batch");
    store.delete(&key("Dataplane", "m", "dp-00007"), None).await.expect("delete");

    let mut watch = store.watch(0);
    for want in 1..=MANY {
        let ch = next_change(&mut watch).await;
        assert_eq!(ch.revision, want);
        assert_eq!(ch.kind, ChangeKind::Upsert);
        assert_eq!(ch.resource.revision, want);
        assert_eq!(ch.resource.key.name, format!("dp-{:05}", want - 1));
        assert_eq!(ch.resource.spec, (want - 1).to_string().into_bytes());
    }
    let del = next_change(&mut watch).await;
    assert_eq!((del.revision, del.kind), (MANY + 1, ChangeKind::Delete));
    assert_eq!(del.resource.key.name, "dp-00007");
    assert_eq!(del.resource.revision, 8, "a delete carries the last state");

    // Live: a watcher waiting at the head gets later writes.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            store.create(res(key("Mesh", "", "late"), "x")).await
        })
    };
    let live = next_change(&mut watch).await;
    assert_eq!(live.revision, MANY + 2);
    assert_eq!(live.resource.key.name, "late");
    writer.await.expect("join").expect("late write");
}

pub async fn watch_from_midway(h: &Harness) {
    let store = h.open().await;
    for i in 0..5 {
        store.create(res(key("Mesh", "", &format!("m{i}")), "x")).await.expect("create");
    }
    let mut watch = store.watch(3);
    assert_eq!(next_change(&mut watch).await.resource.key.name, "m3");
    assert_eq!(next_change(&mut watch).await.revision, 5);
    store.create(res(key("Mesh", "", "m5"), "x")).await.expect("create");
    assert_eq!(next_change(&mut watch).await.revision, 6);

    // From the head (or beyond it): only what comes later.
    let mut head = store.watch(store.current_revision().await.expect("rev"));
    let mut future = store.watch(7);
    store.create(res(key("Mesh", "", "m6"), "x")).await.expect("create");
    store.create(res(key("Mesh", "", "m7"), "x")).await.expect("create");
    assert_eq!(next_change(&mut head).await.revision, 7);
    assert_eq!(next_change(&mut future).await.revision, 8);
    // A list's revision is a watch starting point.
    let page =
        store.list(&meridian_store::ListQuery { type_name: "Mesh".into(), ..Default::default() }).await.expect("list");
    assert_eq!((page.total, page.revision), (8, 8));
}

pub async fn watch_resume_without_gaps(h: &Harness) {
    let store = h.open().await;
    const TOTAL: i64 = 60;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..TOTAL {
                store.upsert(res(key("Mesh", "", &format!("r{}", i % 7)), &i.to_string())).await.expect("upsert");
                if i % 10 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let mut seen = Vec::new();
    let mut last = 0;
    // Drop and re-create the watcher every few changes, from the last seen revision.
    while last < TOTAL {
        let mut watch = store.watch(last);
        for _ in 0..7 {
            if last == TOTAL {
                break;
            }
            let ch = next_change(&mut watch).await;
            seen.push(ch.revision);
            last = ch.revision;
        }
    }
    writer.await.expect("join");
    assert_eq!(seen, (1..=TOTAL).collect::<Vec<_>>(), "no gaps, no duplicates");
}

pub async fn compaction(h: &Harness) {
    let store = h.open().await;
    for i in 0..10 {
        store.create(res(key("Mesh", "", &format!("m{i}")), "x")).await.expect("create");
    }
    assert_eq!(store.compact(5).await.expect("compact"), 5);
    assert_eq!(store.compact(5).await.expect("again"), 0, "idempotent");
    assert_eq!(store.compact(3).await.expect("lower"), 0, "the horizon never moves back");

    let mut old = store.watch(2);
    match next_item(&mut old).await {
        Err(StoreError::Compacted { requested, oldest }) => assert_eq!((requested, oldest), (2, 5)),
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut old))
            .await
            .expect("stream ends")
            .is_none(),
        "Compacted ends the stream"
    );
    assert!(matches!(next_item(&mut store.watch(-3)).await, Err(StoreError::Compacted { .. })));

    let mut at_horizon = store.watch(5);
    assert_eq!(next_change(&mut at_horizon).await.revision, 6);

    // Beyond the head: clamped to the current revision.
    assert_eq!(store.compact(1_000).await.expect("compact all"), 5);
    assert!(matches!(next_item(&mut store.watch(9)).await, Err(StoreError::Compacted { oldest: 10, .. })));
    let mut head = store.watch(10);
    store.create(res(key("Mesh", "", "after"), "x")).await.expect("create");
    assert_eq!(next_change(&mut head).await.revision, 11);
    // Current state is untouched by compaction.
    assert_eq!(store.get(&key("Mesh", "", "m0")).await.expect("get").map(|r| r.revision), Some(1));
}

pub async fn data_persists_across_reconnect(h: &Harness) {
    let first = {
        let store = h.open().await;
        let r = store.create(res(key("Mesh", "", "kept"), "1")).await.expect("create");
        store.upsert(res(key("Mesh", "", "kept"), "2")).await.expect("upsert");
        store.delete(&key("Mesh", "", "kept"), None).await.expect("delete");
        store.create(res(key("Mesh", "", "kept"), "3")).await.expect("recreate");
        r
    };
    // Let the pool's connections close before reopening.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let store = h.open().await;
    assert_eq!(store.current_revision().await.expect("rev"), 4);
    let got = store.get(&key("Mesh", "", "kept")).await.expect("get").expect("present");
    assert_eq!((got.spec, got.revision), (b"3".to_vec(), 4));
    let mut watch = store.watch(0);
    let replay: Vec<_> = [
        next_change(&mut watch).await,
        next_change(&mut watch).await,
        next_change(&mut watch).await,
        next_change(&mut watch).await,
    ]
    .into_iter()
    .map(|c| (c.revision, c.kind))
    .collect();
    assert_eq!(
        replay,
        [(1, ChangeKind::Upsert), (2, ChangeKind::Upsert), (3, ChangeKind::Delete), (4, ChangeKind::Upsert)]
    );
    drop(watch);
    let reopened_first = {
        let mut w = store.watch(0);
        next_change(&mut w).await.resource
    };
    assert_eq!(reopened_first, first);
    assert_eq!(store.create(res(key("Mesh", "", "new"), "x")).await.expect("create").revision, 5);
}

/// Writers on two independent handles (two pools: as two processes would
/// be) and a watcher: revisions are gap-free and each write is seen once.
/// On PostgreSQL the backstop re-query is off, so the watcher depends on
/// the in-process wake-up (writes through `a`) and on LISTEN/NOTIFY (writes
/// through `b`): a lost wake-up hangs the test into its timeout.
pub async fn concurrent_writers_two_handles(h: &Harness) {
    let options = if h.is_postgres() { crate::postgres::no_backstop() } else { StoreOptions::default() };
    let a = h.open_with(options.clone()).await;
    let b = h.open_with(options).await;
    const PER_TASK: i64 = 15;
    const TASKS: i64 = 4;
    let mut watch = a.watch(0);
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let store = if t % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                for i in 0..PER_TASK {
                    store.create(res(key("Mesh", "", &format!("t{t}-{i}")), "x")).await.expect("create");
                }
            })
        })
        .collect();
    let total = PER_TASK * TASKS;
    let mut names = BTreeSet::new();
    for want in 1..=total {
        let ch = next_change(&mut watch).await;
        assert_eq!(ch.revision, want, "gap-free, in order");
        assert!(names.insert(ch.resource.key.name), "each write once");
    }
    for t in tasks {
        t.await.expect("join");
    }
    assert_eq!(names.len() as i64, total);
    assert_eq!(b.current_revision().await.expect("rev"), total);
}
