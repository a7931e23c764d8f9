//! Reads and writes: the same assertions for every backend.

use std::collections::BTreeMap;

use meridian_store::{ChangeKind, ListQuery, StoreError, WriteOp};

use crate::harness::{Harness, key, labeled, next_change, res};

pub async fn create_get_already_exists(h: &Harness) {
    let store = h.open().await;
    assert_eq!(store.current_revision().await.expect("rev"), 0);
    let k = key("Mesh", "", "default");
    assert_eq!(store.get(&k).await.expect("get"), None);

    let created = store.create(labeled(k.clone(), "a", &[("env", "prod")])).await.expect("create");
    assert_eq!(created.revision, 1);
    assert_eq!(created.key, k);
    assert_eq!(created.spec, b"a");
    assert_eq!(created.version, "v-a");
    assert_eq!(created.labels.get("env").map(String::as_str), Some("prod"));
    assert!(created.create_time > 0);
    assert_eq!(created.create_time, created.modify_time);
    assert_eq!(store.get(&k).await.expect("get"), Some(created.clone()));

    match store.create(res(k.clone(), "b")).await {
        Err(StoreError::AlreadyExists(got)) => assert_eq!(got, k),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(store.current_revision().await.expect("rev"), 1);
    assert_eq!(store.get(&k).await.expect("get"), Some(created));

    // Same name in another mesh or type is another resource.
    store.create(res(key("Mesh", "m1", "default"), "c")).await.expect("other mesh");
    store.create(res(key("Other", "", "default"), "d")).await.expect("other type");
    assert_eq!(store.current_revision().await.expect("rev"), 3);
    assert_eq!(store.backend_name(), if h.is_postgres() { "postgres" } else { "sqlite" });
}

fn names(page: &meridian_store::ListPage) -> Vec<String> {
    page.items.iter().map(|r| format!("{}/{}", r.key.mesh, r.key.name)).collect()
}

pub async fn list_paging_and_filters(h: &Harness) {
    let store = h.open().await;
    let t = "Dataplane";
    // Inserted out of order; bytewise order puts "" < "m1" < "m2", "B" < "a".
    for (mesh, name, team) in
        [("m2", "b", "x"), ("m1", "c", "y"), ("m1", "a", "x"), ("m2", "a", "y"), ("", "z", "x"), ("m1", "B", "x")]
    {
        let labels = [("team", team), ("zone", "east")];
        store.create(labeled(key(t, mesh, name), name, &labels)).await.expect("create");
    }
    store.create(res(key("Other", "m1", "a"), "o")).await.expect("create other");

    let all = store.list(&ListQuery { type_name: t.into(), ..ListQuery::default() }).await.expect("list");
    assert_eq!(names(&all), ["/z", "m1/B", "m1/a", "m1/c", "m2/a", "m2/b"]);
    assert_eq!(all.total, 6);
    assert_eq!(all.revision, 7);

    let page = store
        .list(&ListQuery { type_name: t.into(), offset: 2, limit: Some(3), ..ListQuery::default() })
        .await
        .expect("page");
    assert_eq!(names(&page), ["m1/a", "m1/c", "m2/a"]);
    assert_eq!(page.total, 6);

    let past_end = store
        .list(&ListQuery { type_name: t.into(), offset: 10, limit: Some(u64::MAX), ..ListQuery::default() })
        .await
        .expect("past end");
    assert!(past_end.items.is_empty());
    assert_eq!(past_end.total, 6);

    let zero =
        store.list(&ListQuery { type_name: t.into(), limit: Some(0), ..ListQuery::default() }).await.expect("limit 0");
    assert!(zero.items.is_empty());
    assert_eq!(zero.total, 6);

    let m1 = store
        .list(&ListQuery { type_name: t.into(), mesh: Some("m1".into()), ..ListQuery::default() })
        .await
        .expect("mesh");
    assert_eq!(names(&m1), ["m1/B", "m1/a", "m1/c"]);
    assert_eq!(m1.total, 3);

    let global = store
        .list(&ListQuery { type_name: t.into(), mesh: Some(String::new()), ..ListQuery::default() })
        .await
        .expect("global");
    assert_eq!(names(&global), ["/z"]);

    let team_x: BTreeMap<String, String> = [("team".to_owned(), "x".to_owned())].into();
    let x = store
        .list(&ListQuery {
            type_name: t.into(),
            labels: team_x.clone(),
            offset: 1,
            limit: Some(2),
            ..ListQuery::default()
        })
        .await
        .expect("labels");
    assert_eq!(names(&x), ["m1/B", "m1/a"]);
    assert_eq!(x.total, 4, "total counts every match, not the page");

    let mut both = team_x.clone();
    both.insert("zone".into(), "east".into());
    let x_m2 = store
        .list(&ListQuery { type_name: t.into(), mesh: Some("m2".into()), labels: both.clone(), ..ListQuery::default() })
        .await
        .expect("labels+mesh");
    assert_eq!(names(&x_m2), ["m2/b"]);

    both.insert("zone".into(), "west".into());
    let none =
        store.list(&ListQuery { type_name: t.into(), labels: both, ..ListQuery::default() }).await.expect("no match");
    assert!(none.items.is_empty());
    assert_eq!(none.total, 0);

    let missing_key: BTreeMap<String, String> = [("absent".to_owned(), String::new())].into();
    let none = store
        .list(&ListQuery { type_name: t.into(), labels: missing_key, ..ListQuery::default() })
        .await
        .expect("absent label");
    assert_eq!(none.total, 0, "a filter label must be present, not just empty");

    let unknown =
        store.list(&ListQuery { type_name: "Nope".into(), ..ListQuery::default() }).await.expect("unknown type");
    assert_eq!((unknown.items.len(), unknown.total), (0, 0));
}

pub async fn update_and_conflict(h: &Harness) {
    let store = h.open().await;
    let k = key("Mesh", "", "m");
    match store.update(res(k.clone(), "x"), None).await {
        Err(StoreError::NotFound(got)) => assert_eq!(got, k),
        other => panic!("expected NotFound, got {other:?}"),
    }
    let v1 = store.create(res(k.clone(), "1")).await.expect("create");
    let v2 = store.update(res(k.clone(), "2"), Some(v1.revision)).await.expect("update");
    assert_eq!(v2.revision, 2);
    assert_eq!(v2.create_time, v1.create_time);
    assert!(v2.modify_time >= v1.modify_time);

    match store.update(res(k.clone(), "3"), Some(v1.revision)).await {
        Err(StoreError::Conflict { key, expected, actual }) => {
            assert_eq!((key, expected, actual), (k.clone(), 1, 2));
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(store.get(&k).await.expect("get").map(|r| r.spec), Some(b"2".to_vec()));
    assert_eq!(store.current_revision().await.expect("rev"), 2);

    let v3 = store.update(res(k.clone(), "3"), None).await.expect("unconditional");
    assert_eq!(v3.revision, 3);
}

pub async fn concurrent_conflicting_updates(h: &Harness) {
    let store = h.open().await;
    let k = key("Mesh", "", "contended");
    let base = store.create(res(k.clone(), "base")).await.expect("create");
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            let k = k.clone();
            tokio::spawn(async move { store.update(res(k, &format!("writer-{i}")), Some(base.revision)).await })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.expect("join") {
            Ok(r) => winners.push(r),
            Err(StoreError::Conflict { expected, actual, .. }) => {
                assert_eq!((expected, actual), (base.revision, base.revision + 1));
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one conditional update wins");
    assert_eq!(winners[0].revision, base.revision + 1);
    assert_eq!(store.get(&k).await.expect("get"), Some(winners[0].clone()));
    assert_eq!(store.current_revision().await.expect("rev"), base.revision + 1);
}

pub async fn delete_and_not_found(h: &Harness) {
    let store = h.open().await;
    let k = key("Mesh", "m1", "gone");
    match store.delete(&k, None).await {
        Err(StoreError::NotFound(got)) => assert_eq!(got, k),
        other => panic!("expected NotFound, got {other:?}"),
    }
    let created = store.create(res(k.clone(), "a")).await.expect("create");
    match store.delete(&k, Some(created.revision + 5)).await {
        Err(StoreError::Conflict { expected, actual, .. }) => {
            assert_eq!((expected, actual), (created.revision + 5, created.revision));
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    let last = store.delete(&k, Some(created.revision)).await.expect("delete");
    assert_eq!(last, created, "delete returns the last state");
    assert_eq!(store.get(&k).await.expect("get"), None);
    assert_eq!(store.current_revision().await.expect("rev"), 2);
    assert!(matches!(store.delete(&k, None).await, Err(StoreError::NotFound(_))));
    // The key can be created again.
    let again = store.create(res(k.clone(), "b")).await.expect("recreate");
    assert_eq!(again.revision, 3);
}

pub async fn noop_writes_do_not_bump(h: &Harness) {
    let store = h.open().await;
    let k = key("Mesh", "", "same");
    let w = labeled(k.clone(), "spec", &[("a", "1")]);
    let (first, created) = store.upsert(w.clone()).await.expect("upsert");
    assert!(created);
    let (again, created) = store.upsert(w.clone()).await.expect("same upsert");
    assert!(!created);
    assert_eq!(again, first, "a no-op returns the stored record unchanged");
    assert_eq!(store.update(w.clone(), Some(first.revision)).await.expect("same update"), first);
    let batch = store
        .apply_batch(vec![WriteOp::Upsert(w.clone()), WriteOp::Update { res: w.clone(), expected_revision: None }])
        .await
        .expect("same batch");
    assert_eq!(batch, [Some(first.clone()), Some(first.clone())]);
    assert_eq!(store.current_revision().await.expect("rev"), 1);

    // A no-op still checks the expected revision.
    assert!(matches!(store.update(w.clone(), Some(first.revision + 1)).await, Err(StoreError::Conflict { .. })));

    // Any of labels, spec, version differing is a real write.
    let relabeled = labeled(k.clone(), "spec", &[("a", "2")]);
    let (r2, created) = store.upsert(relabeled).await.expect("relabel");
    assert!(!created);
    assert_eq!(r2.revision, 2);
    let mut reversioned = labeled(k.clone(), "spec", &[("a", "2")]);
    reversioned.version = "other".into();
    assert_eq!(store.upsert(reversioned).await.expect("version").0.revision, 3);

    // The change log holds exactly the effective writes.
    let mut watch = store.watch(0);
    for want in 1..=3 {
        assert_eq!(crate::harness::next_change(&mut watch).await.revision, want);
    }
    crate::harness::assert_quiet(&mut watch, std::time::Duration::from_millis(300)).await;
}

pub async fn batch_is_atomic(h: &Harness) {
    let store = h.open().await;
    let a = key("Mesh", "", "a");
    let b = key("Mesh", "", "b");
    let c = key("Mesh", "", "c");
    store.create(res(a.clone(), "a1")).await.expect("create a");

    // Second op fails: the first must not be applied.
    let failed =
        store.apply_batch(vec![WriteOp::Create(res(b.clone(), "b1")), WriteOp::Create(res(a.clone(), "dup"))]).await;
    assert!(matches!(failed, Err(StoreError::AlreadyExists(ref k)) if *k == a), "{failed:?}");
    assert_eq!(store.get(&b).await.expect("get b"), None);
    assert_eq!(store.current_revision().await.expect("rev"), 1);

    let failed = store
        .apply_batch(vec![
            WriteOp::Upsert(res(b.clone(), "b1")),
            WriteOp::Update { res: res(a.clone(), "a2"), expected_revision: Some(99) },
        ])
        .await;
    assert!(matches!(failed, Err(StoreError::Conflict { .. })), "{failed:?}");
    let failed = store
        .apply_batch(vec![
            WriteOp::Delete { key: a.clone(), expected_revision: None },
            WriteOp::Delete { key: c.clone(), expected_revision: None },
        ])
        .await;
    assert!(matches!(failed, Err(StoreError::NotFound(ref k)) if *k == c), "{failed:?}");
    assert!(store.get(&a).await.expect("get a").is_some());
    assert_eq!(store.current_revision().await.expect("rev"), 1);

    // A good batch: consecutive revisions, one change per op, ops see earlier ones.
    let out = store
        .apply_batch(vec![
            WriteOp::Create(res(b.clone(), "b1")),
            WriteOp::Update { res: res(b.clone(), "b2"), expected_revision: Some(2) },
            WriteOp::Upsert(res(c.clone(), "c1")),
            WriteOp::Delete { key: a.clone(), expected_revision: Some(1) },
        ])
        .await
        .expect("batch");
    let revs: Vec<Option<i64>> = out.iter().map(|r| r.as_ref().map(|r| r.revision)).collect();
    assert_eq!(revs, [Some(2), Some(3), Some(4), None]);
    assert_eq!(store.current_revision().await.expect("rev"), 5);
    assert_eq!(store.apply_batch(Vec::new()).await.expect("empty"), []);

    let mut watch = store.watch(1);
    let mut seen = Vec::new();
    for _ in 0..4 {
        let ch = crate::harness::next_change(&mut watch).await;
        seen.push((ch.revision, ch.kind, ch.resource.key.name.clone(), ch.resource.spec.clone()));
    }
    use meridian_store::ChangeKind::{Delete, Upsert};
    assert_eq!(
        seen,
        [
            (2, Upsert, "b".into(), b"b1".to_vec()),
            (3, Upsert, "b".into(), b"b2".to_vec()),
            (4, Upsert, "c".into(), b"c1".to_vec()),
            (5, Delete, "a".into(), b"a1".to_vec()),
        ]
    );
    // The next write continues right after: failed batches consumed nothing.
    assert_eq!(store.create(res(a, "a3")).await.expect("create").revision, 6);
}

pub async fn odd_input_is_stored_verbatim(h: &Harness) {
    let store = h.open().await;
    let k = key("T'ype\"; DROP TABLE resources; --", "m\u{e9}sh", "name/with/slashes");
    let mut w = labeled(k.clone(), "", &[("k\"ey", "v'al"), ("", ""), ("\u{1F600}", "{}")]);
    w.spec = vec![0, 255, 1, 254];
    w.version = String::new();
    let stored = store.create(w.clone()).await.expect("create");
    let got = store.get(&k).await.expect("get").expect("present");
    assert_eq!((got.labels, got.spec, got.version), (w.labels.clone(), w.spec.clone(), w.version));
    let page = store
        .list(&ListQuery {
            type_name: k.type_name.clone(),
            labels: [("k\"ey".to_owned(), "v'al".to_owned())].into(),
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(page.items, [stored]);
    assert!(store.list(&ListQuery::default()).await.expect("empty type").items.is_empty());
}

/// Many concurrent writers (on SQLite, shared group commits): every writer
/// gets its own answer; a batch that fails half-way is undone alone and its
/// concurrent siblings are all written, each with its own revision.
pub async fn concurrent_writers_fail_alone(h: &Harness) {
    let store = h.open().await;
    store.create(res(key("Mesh", "", "taken"), "first")).await.expect("create");
    let start = store.current_revision().await.expect("rev");
    let tasks: Vec<_> = (0..48)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let own = key("Mesh", "", &format!("w-{i}"));
                if i % 6 == 0 {
                    // Writes its own key, then fails on the taken one: all undone.
                    let ops =
                        vec![WriteOp::Create(res(own, "doomed")), WriteOp::Create(res(key("Mesh", "", "taken"), "x"))];
                    (i, store.apply_batch(ops).await.map(|_| ()))
                } else {
                    (i, store.create(res(own, &format!("spec-{i}"))).await.map(|_| ()))
                }
            })
        })
        .collect();
    let mut written = 0;
    for task in tasks {
        let (i, r) = task.await.expect("join");
        let stored = store.get(&key("Mesh", "", &format!("w-{i}"))).await.expect("get");
        if i % 6 == 0 {
            assert!(matches!(r, Err(StoreError::AlreadyExists(_))), "writer {i}: {r:?}");
            assert_eq!(stored, None, "writer {i}'s failed batch left a write behind");
        } else {
            assert!(r.is_ok(), "writer {i}: {r:?}");
            assert_eq!(stored.map(|s| s.spec), Some(format!("spec-{i}").into_bytes()), "writer {i}");
            written += 1;
        }
    }
    assert_eq!(written, 40);
    assert_eq!(store.current_revision().await.expect("rev"), start + 40, "one revision per write, none for failures");
}

/// Concurrent writers of every kind on shared keys (on SQLite: group
/// commits, each written in one statement batch, and watchers fed from
/// memory): every answer agrees with the change log; a live watcher sees
/// exactly what a fresh handle reads back from the database; batches that
/// fail leave nothing; the stored state is the log replayed; `get_many`
/// reads it back key by key.
pub async fn concurrent_mixed_writes_agree_with_the_log(h: &Harness) {
    let store = h.open().await;
    let start = store.current_revision().await.expect("rev");
    let mut live = store.watch(start);
    // Three keys, each written by every kind of writer.
    let shared = |i: usize| key("Dataplane", "m", &format!("k-{}", (i / 4) % 3));
    let tasks: Vec<_> = (0..64usize)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let spec = format!("spec-{i}");
                let r = match i % 4 {
                    0 => store.upsert(res(shared(i), &spec)).await.map(Some),
                    1 => store.create(res(shared(i), &spec)).await.map(|s| Some((s, true))),
                    2 => store.delete(&shared(i), None).await.map(|_| None),
                    _ => {
                        // Writes its own key, then an update no revision
                        // matches (revisions start at 1): always undone.
                        let ops = vec![
                            WriteOp::Upsert(res(key("Dataplane", "m", &format!("w-{i}")), &spec)),
                            WriteOp::Update { res: res(shared(i), &spec), expected_revision: Some(0) },
                        ];
                        store.apply_batch(ops).await.map(|_| None)
                    }
                };
                (i, r)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("join"));
    }
    let end = store.current_revision().await.expect("rev");
    let mut seen = Vec::new();
    for want in start + 1..=end {
        let c = next_change(&mut live).await;
        assert_eq!(c.revision, want, "gap-free, in order");
        seen.push(c);
    }
    let fresh = h.open().await;
    let mut from_db = fresh.watch(start);
    for c in &seen {
        assert_eq!(&next_change(&mut from_db).await, c, "the live feed and the stored log differ");
    }
    // Replayed in order, the log must make sense: a delete carries the
    // state it removed, an upsert of a key that existed keeps its
    // create_time; and each write's answer (created or replaced) agrees
    // with the state its revision found.
    let mut replayed: BTreeMap<meridian_store::ResourceKey, meridian_store::StoredResource> = BTreeMap::new();
    let mut existed: std::collections::BTreeMap<i64, bool> = std::collections::BTreeMap::new();
    for c in &seen {
        let before = replayed.get(&c.resource.key).cloned();
        match c.kind {
            ChangeKind::Upsert => {
                if let Some(b) = &before {
                    assert_eq!(c.resource.create_time, b.create_time, "a replace keeps create_time: {c:?}");
                }
                existed.insert(c.revision, before.is_some());
                replayed.insert(c.resource.key.clone(), c.resource.clone());
            }
            ChangeKind::Delete => {
                assert_eq!(before.as_ref(), Some(&c.resource), "a delete carries the state it removed");
                replayed.remove(&c.resource.key);
            }
        }
    }
    for (i, r) in &answers {
        match (i % 4, r) {
            (0 | 1, Ok(Some((stored, created)))) => {
                let logged = &seen[usize::try_from(stored.revision - start - 1).expect("revision")];
                assert_eq!((&logged.resource, logged.kind), (stored, ChangeKind::Upsert), "writer {i}");
                assert_eq!(*created, !existed[&stored.revision], "writer {i}: created or replaced");
            }
            (1, Err(StoreError::AlreadyExists(_))) | (2, Ok(None) | Err(StoreError::NotFound(_))) => {}
            (3, Err(StoreError::Conflict { .. } | StoreError::NotFound(_))) => {
                let own = store.get(&key("Dataplane", "m", &format!("w-{i}"))).await.expect("get");
                assert_eq!(own, None, "writer {i}'s failed batch left a write behind");
            }
            other => panic!("writer {i}: {other:?}"),
        }
    }
    let keys: Vec<_> = (0..12).step_by(4).map(shared).collect();
    let got = store.get_many(&keys).await.expect("get_many");
    for (k, g) in keys.iter().zip(got) {
        assert_eq!(g.as_ref(), replayed.get(k), "{k}");
    }
    let listed = store.list(&ListQuery { type_name: "Dataplane".into(), ..ListQuery::default() }).await.expect("list");
    assert_eq!(listed.items, replayed.into_values().collect::<Vec<_>>());
}
