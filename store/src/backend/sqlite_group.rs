// SQLite's group commit in five database round trips, whatever the number
// of writers it carries: `backend.rs` `include!`s this file into `mod
// sqlite` after `generic.rs` (whose helpers it uses).
//
// The statement-per-operation path (`apply_group` in `generic.rs`) costs
// about seven round trips between the caller's task and sqlx's SQLite
// worker thread per write batch (savepoint, meta row, read, insert, change
// row, meta update, release), each a hand-over between two threads; on a
// loaded machine each waits for a CPU. Here the whole group is:
//
//   1. BEGIN IMMEDIATE
//   2. read the meta row (revision)
//   3. read every row the group touches, in one statement
//   4. (in memory) decide each batch's outcome exactly as `apply_op` would,
//      batch by batch, each seeing the ones before it; a batch that fails
//      (already exists, not found, revision conflict) is left out alone
//   5. one multi-statement execute: each change's resource write (an upsert
//      or a delete), every change-log row, the meta revision
//   6. COMMIT
//
// A database error at step 5 rolls the transaction back and the caller runs
// the statement-per-operation path instead, which isolates the failing
// batch in its savepoint. Nothing is answered before the COMMIT returns.

/// Keys read per statement (an OR of one term per key: SQLite parses it
/// as an expression tree at most 1,000 deep), and changes written per
/// multi-statement execute (ten binds each, well under SQLite's 32,766
/// bound parameters). A larger group (a KDS response
/// of thousands of Dataplanes, a Mesh deleted with everything in it) costs
/// one more round trip per chunk.
const READ_CHUNK: usize = 256;
const WRITE_CHUNK: usize = 2048;

/// Columns bound per change in the multi-statement write.
const BINDS_PER_CHANGE: usize = 10;

/// The key an operation writes.
fn op_key(op: &WriteOp) -> &ResourceKey {
    match op {
        WriteOp::Create(w) | WriteOp::Upsert(w) | WriteOp::Update { res: w, .. } => &w.key,
        WriteOp::Delete { key, .. } => key,
    }
}

/// Applies `groups` (independent write batches) in one transaction with
/// one read and one write statement batch (per chunk of [`READ_CHUNK`]
/// keys, [`WRITE_CHUNK`] changes). `Ok(None)`: its write failed and was
/// rolled back; run [`apply_group`] instead. Otherwise, per batch its outcomes or its own
/// error, and the changes committed in revision order.
pub(crate) async fn apply_group_fast(
    pool: &Pool<Db>,
    groups: &[Vec<WriteOp>],
) -> Result<Option<(GroupResults, Vec<Change>)>, StoreError> {
    if groups.iter().all(Vec::is_empty) {
        return Ok(Some((groups.iter().map(|_| Ok(Vec::new())).collect(), Vec::new())));
    }
    let mut tx = pool.begin_with(BEGIN_WRITE).await?;
    let (start, _) = lock_meta(&mut tx).await?;
    let mut keys: Vec<&ResourceKey> = groups.iter().flatten().map(op_key).collect();
    keys.sort();
    keys.dedup();
    let mut current = std::collections::HashMap::with_capacity(keys.len());
    for chunk in keys.chunks(READ_CHUNK) {
        current.extend(read_keys(&mut tx, chunk).await?);
    }
    let now = now_millis();
    let mut rev = start;
    let mut results = Vec::with_capacity(groups.len());
    let mut changes = Vec::new();
    for ops in groups {
        match plan_batch(ops, &current, rev, now) {
            Ok(plan) => {
                rev = plan.revision;
                current.extend(plan.state);
                changes.extend(plan.changes);
                results.push(Ok(plan.outcomes));
            }
            Err(e) => results.push(Err(e)),
        }
    }
    let chunks = changes.len().div_ceil(WRITE_CHUNK);
    for (i, chunk) in changes.chunks(WRITE_CHUNK).enumerate() {
        let last = (i + 1 == chunks).then_some(rev);
        if let Err(e) = write_changes(&mut tx, chunk, last, now).await {
            tracing::debug!(error = %e, "group write failed; retrying statement by statement");
            tx.rollback().await?;
            return Ok(None);
        }
    }
    tx.commit().await?;
    Ok(Some((results, changes)))
}

/// The rows stored under `keys` (`None` for each absent one), read in one
/// statement inside `tx`.
async fn read_keys(
    tx: &mut Tx,
    keys: &[&ResourceKey],
) -> Result<std::collections::HashMap<ResourceKey, Option<StoredResource>>, StoreError> {
    let mut current: std::collections::HashMap<ResourceKey, Option<StoredResource>> =
        keys.iter().map(|k| ((*k).clone(), None)).collect();
    let sql = select_by_keys_sql(keys.len());
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
    for k in keys {
        q = q.bind(k.type_name.as_str()).bind(k.mesh.as_str()).bind(k.name.as_str());
    }
    for row in q.fetch_all(&mut **tx).await? {
        let r = resource_from_row(&row, "revision")?;
        current.insert(r.key.clone(), Some(r));
    }
    Ok(current)
}

/// What one batch does when it succeeds.
struct BatchPlan {
    outcomes: Vec<OpOutcome>,
    changes: Vec<Change>,
    /// The rows it leaves (`None`: deleted), for the batches after it.
    state: std::collections::HashMap<ResourceKey, Option<StoredResource>>,
    /// The store revision after it.
    revision: i64,
}

/// Decides one batch against `current` (the rows as the batches before it
/// left them) with the rules of `apply_op`: the same outcomes, errors,
/// revisions and change records, nothing written yet.
fn plan_batch(
    ops: &[WriteOp],
    current: &std::collections::HashMap<ResourceKey, Option<StoredResource>>,
    mut rev: i64,
    now: i64,
) -> Result<BatchPlan, StoreError> {
    let mut state: std::collections::HashMap<ResourceKey, Option<StoredResource>> =
        std::collections::HashMap::new();
    let mut outcomes = Vec::with_capacity(ops.len());
    let mut changes = Vec::new();
    for op in ops {
        let key = op_key(op);
        let cur = match state.get(key) {
            Some(s) => s.clone(),
            None => current.get(key).cloned().flatten(),
        };
        let written = |w: &WriteResource, create_time: i64, revision: i64| StoredResource {
            key: w.key.clone(),
            labels: w.labels.clone(),
            spec: w.spec.clone(),
            version: w.version.clone(),
            revision,
            create_time,
            modify_time: now,
        };
        let outcome = match (op, cur) {
            (WriteOp::Create(w), Some(_)) => return Err(StoreError::AlreadyExists(w.key.clone())),
            (WriteOp::Create(w) | WriteOp::Upsert(w), None) => {
                let res = written(w, now, next_revision(&mut rev)?);
                OpOutcome::Written { res, created: true }
            }
            (WriteOp::Update { res: w, .. }, None) => return Err(StoreError::NotFound(w.key.clone())),
            (WriteOp::Update { res: w, expected_revision }, Some(cur)) => {
                check_expected(&cur, *expected_revision)?;
                if w.same_content(&cur) {
                    outcomes.push(OpOutcome::Unchanged(cur));
                    continue;
                }
                let res = written(w, cur.create_time, next_revision(&mut rev)?);
                OpOutcome::Written { res, created: false }
            }
            (WriteOp::Upsert(w), Some(cur)) => {
                if w.same_content(&cur) {
                    outcomes.push(OpOutcome::Unchanged(cur));
                    continue;
                }
                let res = written(w, cur.create_time, next_revision(&mut rev)?);
                OpOutcome::Written { res, created: false }
            }
            (WriteOp::Delete { key, .. }, None) => return Err(StoreError::NotFound(key.clone())),
            (WriteOp::Delete { expected_revision, .. }, Some(cur)) => {
                check_expected(&cur, *expected_revision)?;
                let revision = next_revision(&mut rev)?;
                changes.push(Change { revision, kind: ChangeKind::Delete, resource: cur.clone() });
                state.insert(key.clone(), None);
                outcomes.push(OpOutcome::Deleted(cur));
                continue;
            }
        };
        if let OpOutcome::Written { res, .. } = &outcome {
            changes.push(Change { revision: res.revision, kind: ChangeKind::Upsert, resource: res.clone() });
            state.insert(key.clone(), Some(res.clone()));
        }
        outcomes.push(outcome);
    }
    Ok(BatchPlan { outcomes, changes, state, revision: rev })
}

/// Writes `changes` (in revision order) to the resources table and the
/// change log, and `revision` (if any) to the meta row, in one multi-statement
/// execute: one round trip to the SQLite worker. SQLite binds `$N` by
/// number across all the statements of the string, so each value is bound
/// once and used by both the resource write and its change-log row.
async fn write_changes(tx: &mut Tx, changes: &[Change], revision: Option<i64>, now: i64) -> Result<(), StoreError> {
    use std::fmt::Write as _;
    let mut sql = String::new();
    let mut log = String::from(
        "INSERT INTO changes (revision, op, type_name, mesh, name, labels, spec, version, \
         resource_revision, create_time, modify_time, logged_at) VALUES ",
    );
    // $1: the meta revision, $2: logged_at; then BINDS_PER_CHANGE per change.
    for (i, c) in changes.iter().enumerate() {
        let b = 2 + i * BINDS_PER_CHANGE;
        let p = |n: usize| b + n;
        match c.kind {
            ChangeKind::Upsert => {
                let _ = writeln!(
                    sql,
                    "INSERT INTO resources (type_name, mesh, name, labels, spec, version, revision, \
                     create_time, modify_time) VALUES (${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}) \
                     ON CONFLICT (type_name, mesh, name) DO UPDATE SET labels = excluded.labels, \
                     spec = excluded.spec, version = excluded.version, revision = excluded.revision, \
                     modify_time = excluded.modify_time;",
                    p(2),
                    p(3),
                    p(4),
                    p(5),
                    p(6),
                    p(7),
                    p(8),
                    p(9),
                    p(10)
                );
            }
            ChangeKind::Delete => {
                let _ = writeln!(
                    sql,
                    "DELETE FROM resources WHERE type_name = ${} AND mesh = ${} AND name = ${};",
                    p(2),
                    p(3),
                    p(4)
                );
            }
        }
        if i > 0 {
            log.push_str(", ");
        }
        let _ = write!(
            log,
            "(${}, '{}', ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, $2)",
            p(1),
            c.kind.as_str(),
            p(2),
            p(3),
            p(4),
            p(5),
            p(6),
            p(7),
            p(8),
            p(9),
            p(10)
        );
    }
    sql.push_str(&log);
    sql.push(';');
    if revision.is_some() {
        sql.push_str("\nUPDATE meta SET revision = $1 WHERE id = 1;");
    }
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false).bind(revision.unwrap_or(0)).bind(now);
    for c in changes {
        let r = &c.resource;
        q = q
            .bind(c.revision)
            .bind(r.key.type_name.as_str())
            .bind(r.key.mesh.as_str())
            .bind(r.key.name.as_str())
            .bind(encode_labels(&r.labels)?)
            .bind(r.spec.as_slice())
            .bind(r.version.as_str())
            .bind(r.revision)
            .bind(r.create_time)
            .bind(r.modify_time);
    }
    q.execute(&mut **tx).await?;
    Ok(())
}
