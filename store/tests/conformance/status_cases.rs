//! Status records (insights, heartbeats): kept apart from configuration,
//! with no revision, no change-log row and no wake-up of `watch()`; and
//! change-log compaction by retention, after which a stale watcher
//! re-lists and ends up with the right state.

use std::collections::BTreeMap;
use std::time::Duration;

use meridian_store::{ChangeKind, ListQuery, Retention, StatusExpect, Store, StoreError};

use crate::harness::{Harness, key, labeled, next_change, next_item, res};

pub async fn status_crud_and_expectations(h: &Harness) {
    let store = h.open().await;
    let k = key("ZoneInsight", "", "zone-1");
    assert_eq!(store.get_status(&k).await.expect("get"), None);
    assert!(store.put_status(&res(k.clone(), "a"), &StatusExpect::Absent).await.expect("create"));
    assert!(matches!(
        store.put_status(&res(k.clone(), "b"), &StatusExpect::Absent).await,
        Err(StoreError::StatusConflict(_))
    ));
    let got = store.get_status(&k).await.expect("get").expect("stored");
    assert_eq!((got.spec.as_slice(), got.version.as_str(), got.revision), (&b"a"[..], "v-a", 0));
    // Compare-and-set on the content version.
    assert!(matches!(
        store.put_status(&res(k.clone(), "b"), &StatusExpect::Version("v-zzz".into())).await,
        Err(StoreError::StatusConflict(_))
    ));
    assert!(store.put_status(&res(k.clone(), "b"), &StatusExpect::Version("v-a".into())).await.expect("cas"));
    // Same content: nothing written.
    assert!(!store.put_status(&res(k.clone(), "b"), &StatusExpect::Any).await.expect("same"));
    assert!(store.put_status(&res(k.clone(), "c"), &StatusExpect::Any).await.expect("any"));
    let got = store.get_status(&k).await.expect("get").expect("stored");
    assert_eq!(got.spec, b"c");
    assert!(got.modify_time >= got.create_time);

    // List: type, mesh and label filters, paging, total.
    for (mesh, name, zone) in [("m1", "dp-1", "z1"), ("m1", "dp-2", "z2"), ("m2", "dp-1", "z1")] {
        let w = labeled(key("DataplaneInsight", mesh, name), name, &[("kuma.io/zone", zone)]);
        store.put_status(&w, &StatusExpect::Any).await.expect("put");
    }
    let q = |mesh: Option<&str>, labels: &[(&str, &str)]| ListQuery {
        type_name: "DataplaneInsight".into(),
        mesh: mesh.map(str::to_owned),
        labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        ..ListQuery::default()
    };
    let all = store.list_status(&q(None, &[])).await.expect("list");
    assert_eq!(all.total, 3);
    let names: Vec<_> = all.items.iter().map(|r| (r.key.mesh.as_str(), r.key.name.as_str())).collect();
    assert_eq!(names, [("m1", "dp-1"), ("m1", "dp-2"), ("m2", "dp-1")]);
    assert_eq!(store.list_status(&q(Some("m1"), &[])).await.expect("list").total, 2);
    assert_eq!(store.list_status(&q(None, &[("kuma.io/zone", "z1")])).await.expect("list").total, 2);
    let page = store.list_status(&ListQuery { offset: 1, limit: Some(1), ..q(None, &[]) }).await.expect("page");
    assert_eq!((page.total, page.items.len(), page.items[0].key.name.as_str()), (3, 1, "dp-2"));
    // Configuration of the same key is a different record.
    assert_eq!(store.get(&k).await.expect("get"), None);
    assert_eq!(
        store
            .list(&ListQuery { type_name: "DataplaneInsight".into(), ..ListQuery::default() })
            .await
            .expect("list")
            .total,
        0
    );

    assert!(store.delete_status(&k).await.expect("delete"));
    assert!(!store.delete_status(&k).await.expect("again"));
    assert_eq!(store.get_status(&k).await.expect("get"), None);
}

/// The heart of "status is not configuration": many status writes leave the
/// revision and the change log as they were, and a watcher's next item is
/// the next configuration change, not any of them.
pub async fn status_writes_do_not_touch_the_change_feed(h: &Harness) {
    let store = h.open().await;
    store.create(res(key("Mesh", "", "default"), "m")).await.expect("create");
    let revision = store.current_revision().await.expect("rev");
    let rows = store.change_log_rows().await.expect("rows");
    let mut watch = store.watch(revision);
    let mut status_rx = store.status_changes();
    status_rx.borrow_and_update();

    const WRITES: usize = 50;
    for i in 0..WRITES {
        let zone = res(key("ZoneInsight", "", &format!("zone-{}", i % 10)), &format!("heartbeat-{i}"));
        store.put_status(&zone, &StatusExpect::Any).await.expect("zone insight");
        let dp = res(key("DataplaneInsight", "default", &format!("dp-{}", i % 20)), &format!("ack-{i}"));
        store.put_status(&dp, &StatusExpect::Any).await.expect("dp insight");
    }
    store.delete_status(&key("ZoneInsight", "", "zone-0")).await.expect("delete");
    assert_eq!(store.current_revision().await.expect("rev"), revision, "no revision taken");
    assert_eq!(store.change_log_rows().await.expect("rows"), rows, "no change-log row added");
    assert!(status_rx.has_changed().expect("sender alive"), "status followers are told");

    // The watcher's next item is the next configuration write.
    let next = store.create(res(key("Mesh", "", "other"), "m")).await.expect("create");
    let change = next_change(&mut watch).await;
    assert_eq!((change.revision, change.resource.key.name.as_str()), (next.revision, "other"));
    assert_eq!(change.revision, revision + 1);
}

/// Two handles (two processes, or two replicas on one PostgreSQL) see each
/// other's status through the shared table.
pub async fn status_is_shared_between_handles(h: &Harness) {
    let a = h.open().await;
    let b = h.open().await;
    let k = key("ZoneInsight", "", "zone-1");
    a.put_status(&res(k.clone(), "from-a"), &StatusExpect::Any).await.expect("put");
    let seen = b.get_status(&k).await.expect("get").expect("b sees a's write");
    assert_eq!(seen.spec, b"from-a");
    // A read-modify-write on b based on a stale version loses to a's newer one.
    a.put_status(&res(k.clone(), "a2"), &StatusExpect::Version(seen.version.clone())).await.expect("cas");
    assert!(matches!(
        b.put_status(&res(k.clone(), "b1"), &StatusExpect::Version(seen.version)).await,
        Err(StoreError::StatusConflict(_))
    ));
    assert_eq!(
        b.list_status(&ListQuery { type_name: "ZoneInsight".into(), ..ListQuery::default() })
            .await
            .expect("list")
            .total,
        1
    );
}

/// Compaction by count then by age; a watcher left behind gets `Compacted`,
/// re-lists and follows from the list's revision, ending with the state a
/// fresh reader sees.
pub async fn retention_compaction_then_stale_watcher_resyncs(h: &Harness) {
    let store = h.open().await;
    let mut stale = store.watch(0);
    // The stale watcher saw the first two writes and then fell behind.
    for i in 0..2 {
        store.create(res(key("Mesh", "", &format!("m{i}")), "x")).await.expect("create");
    }
    let mut mirror: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for _ in 0..2 {
        let c = next_change(&mut stale).await;
        mirror.insert(c.resource.key.name.clone(), c.resource.spec);
    }
    for i in 2..10 {
        store.create(res(key("Mesh", "", &format!("m{i}")), "x")).await.expect("create");
    }
    store.update(res(key("Mesh", "", "m1"), "y"), None).await.expect("update");
    store.delete(&key("Mesh", "", "m0"), None).await.expect("delete");
    assert_eq!(store.change_log_rows().await.expect("rows"), 12);

    let keep_3 = Retention { max_age: Duration::from_secs(3600), max_rows: 3 };
    assert_eq!(store.compact_retained(&keep_3).await.expect("compact"), 9);
    assert_eq!(store.change_log_rows().await.expect("rows"), 3);
    assert_eq!(store.compact_retained(&keep_3).await.expect("again"), 0, "nothing more is due");

    // The stale watcher: Compacted, then its consumer re-lists and follows.
    assert!(matches!(next_item(&mut stale).await, Err(StoreError::Compacted { requested: 2, oldest: 9 })));
    let page = store.list(&ListQuery { type_name: "Mesh".into(), ..ListQuery::default() }).await.expect("list");
    mirror = page.items.iter().map(|r| (r.key.name.clone(), r.spec.clone())).collect();
    let mut resumed = store.watch(page.revision);
    store.create(res(key("Mesh", "", "late"), "z")).await.expect("create");
    let c = next_change(&mut resumed).await;
    assert_eq!(c.kind, ChangeKind::Upsert);
    mirror.insert(c.resource.key.name.clone(), c.resource.spec);
    let truth: BTreeMap<String, Vec<u8>> = store
        .list(&ListQuery { type_name: "Mesh".into(), ..ListQuery::default() })
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|r| (r.key.name, r.spec))
        .collect();
    assert_eq!(mirror, truth);
    assert!(!truth.contains_key("m0") && truth["m1"] == b"y");

    // By age: a zero retention drops everything logged so far.
    let by_age = Retention { max_age: Duration::ZERO, max_rows: u64::MAX };
    // Rows are logged at millisecond resolution: step past this one.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(store.compact_retained(&by_age).await.expect("compact"), 4);
    assert_eq!(store.change_log_rows().await.expect("rows"), 0);
    assert!(matches!(next_item(&mut store.watch(page.revision)).await, Err(StoreError::Compacted { .. })));
    // The head still resumes, and current state is untouched.
    let head = store.current_revision().await.expect("rev");
    let mut live = store.watch(head);
    store.create(res(key("Mesh", "", "after"), "x")).await.expect("create");
    assert_eq!(next_change(&mut live).await.revision, head + 1);
    assert_eq!(store.get(&key("Mesh", "", "m9")).await.expect("get").map(|r| r.spec), Some(b"x".to_vec()));
}

/// The background compactor keeps the log within its row bound.
pub async fn compactor_task_bounds_the_log(h: &Harness) {
    let store = h.open().await;
    for i in 0..20 {
        store.create(res(key("Mesh", "", &format!("m{i}")), "x")).await.expect("create");
    }
    let retention = meridian_store::Retention { max_age: Duration::from_secs(3600), max_rows: 5 };
    let task = tokio::spawn(meridian_store::compact_every(store.clone(), retention, Duration::from_secs(1)));
    let bounded = wait_for_rows(&store, 5).await;
    task.abort();
    assert!(bounded, "the compactor brought the log down to 5 rows");
}

async fn wait_for_rows(store: &Store, rows: u64) -> bool {
    for _ in 0..300 {
        if store.change_log_rows().await.expect("rows") == rows {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A store written before the status table existed: its insights move to
/// the status table on upgrade; other resources stay where they were.
pub async fn upgrade_moves_stored_insights_to_status(h: &Harness) {
    let store = h.open().await;
    store.create(res(key("Mesh", "", "default"), "m")).await.expect("create");
    store.create(res(key("ZoneInsight", "", "zone-1"), "zi")).await.expect("create");
    store.create(res(key("DataplaneInsight", "default", "dp-1"), "di")).await.expect("create");
    // Roll the schema back to before 0002, keeping the rows, then migrate again.
    const UNDO: [&str; 3] = [
        "DROP TABLE status",
        "ALTER TABLE changes DROP COLUMN logged_at",
        "DELETE FROM _sqlx_migrations WHERE version = 2",
    ];
    if h.is_postgres() {
        let pool = sqlx::PgPool::connect(&h.url).await.expect("pool");
        for sql in UNDO {
            sqlx::query(sql).execute(&pool).await.expect(sql);
        }
        pool.close().await;
    } else {
        let pool = sqlx::SqlitePool::connect(&h.url).await.expect("pool");
        for sql in UNDO {
            sqlx::query(sql).execute(&pool).await.expect(sql);
        }
        pool.close().await;
    }
    let moved = h.open().await;
    assert_eq!(moved.get(&key("ZoneInsight", "", "zone-1")).await.expect("get"), None);
    assert_eq!(
        moved.get_status(&key("ZoneInsight", "", "zone-1")).await.expect("get").map(|r| r.spec),
        Some(b"zi".to_vec())
    );
    assert_eq!(
        moved.get_status(&key("DataplaneInsight", "default", "dp-1")).await.expect("get").map(|r| r.spec),
        Some(b"di".to_vec())
    );
    assert!(moved.get(&key("Mesh", "", "default")).await.expect("get").is_some());
}

/// Several status writes in one transaction, each under its own
/// expectation: a failed expectation skips that record alone.
pub async fn status_batch_writes_each_under_its_expectation(h: &Harness) {
    let store = h.open().await;
    let (a, b, c) = (key("ZoneInsight", "", "a"), key("ZoneInsight", "", "b"), key("ZoneInsight", "", "c"));
    store.put_status(&res(a.clone(), "a-1"), &StatusExpect::Any).await.expect("put a");
    let stored_a = store.get_status(&a).await.expect("get").expect("a");
    let results = store
        .put_status_batch(&[
            (res(a.clone(), "a-2"), StatusExpect::Version(stored_a.version.clone())),
            (res(b.clone(), "b-1"), StatusExpect::Version("nope".into())),
            (res(c.clone(), "c-1"), StatusExpect::Absent),
            (res(a.clone(), "a-2"), StatusExpect::Any),
        ])
        .await
        .expect("batch");
    assert!(matches!(results[0], Ok(true)), "{:?}", results[0]);
    assert!(matches!(results[1], Err(StoreError::StatusConflict(_))), "{:?}", results[1]);
    assert!(matches!(results[2], Ok(true)), "{:?}", results[2]);
    assert!(matches!(results[3], Ok(false)), "the same content again writes nothing: {:?}", results[3]);
    assert_eq!(store.get_status(&a).await.expect("get").map(|r| r.spec), Some(b"a-2".to_vec()));
    assert_eq!(store.get_status(&b).await.expect("get"), None);
    assert_eq!(store.get_status(&c).await.expect("get").map(|r| r.spec), Some(b"c-1".to_vec()));
    assert_eq!(store.put_status_batch(&[]).await.expect("empty batch").len(), 0);
}
