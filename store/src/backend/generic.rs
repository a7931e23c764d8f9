// The store's SQL logic, written once and compiled once per backend:
// `backend.rs` `include!`s this file into `mod sqlite` and `mod postgres`, each
// of which first defines `Db` (the sqlx database type) and the dialect
// constants used below: BEGIN_WRITE, BEGIN_READ, LOCK_META, LIST_SQL,
// COUNT_SQL and NOTIFY_SQL. Placeholders are `$N`, which both accept.

use std::collections::BTreeMap;

use sqlx::{Pool, Row, Transaction};

use crate::backend::{OpOutcome, now_millis};
use crate::error::StoreError;
use crate::types::{
    Change, ChangeKind, ListPage, ListQuery, ResourceKey, StatusExpect, StoredResource, WriteOp,
    WriteResource,
};

type Tx = Transaction<'static, Db>;
type DbRow = <Db as sqlx::Database>::Row;

const GET_SQL: &str = "SELECT type_name, mesh, name, labels, spec, version, revision, \
     create_time, modify_time FROM resources WHERE type_name = $1 AND mesh = $2 AND name = $3";

const READ_META_SQL: &str = "SELECT revision, compacted_revision FROM meta WHERE id = 1";

const INSERT_SQL: &str = "INSERT INTO resources (type_name, mesh, name, labels, spec, version, \
     revision, create_time, modify_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

const REPLACE_SQL: &str = "UPDATE resources SET labels = $4, spec = $5, version = $6, \
     revision = $7, modify_time = $8 WHERE type_name = $1 AND mesh = $2 AND name = $3";

const DELETE_SQL: &str = "DELETE FROM resources WHERE type_name = $1 AND mesh = $2 AND name = $3";

const LOG_SQL: &str = "INSERT INTO changes (revision, op, type_name, mesh, name, labels, spec, \
     version, resource_revision, create_time, modify_time, logged_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

const CHANGES_SQL: &str = "SELECT revision, op, type_name, mesh, name, labels, spec, version, \
     resource_revision, create_time, modify_time FROM changes \
     WHERE revision > $1 ORDER BY revision LIMIT $2";

fn encode_labels(labels: &BTreeMap<String, String>) -> Result<String, StoreError> {
    serde_json::to_string(labels).map_err(|e| StoreError::Corrupt(format!("labels: {e}")))
}

fn decode_labels(text: &str) -> Result<BTreeMap<String, String>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("labels {text:?}: {e}")))
}

fn key_from_row(row: &DbRow) -> Result<ResourceKey, StoreError> {
    Ok(ResourceKey {
        type_name: row.try_get("type_name")?,
        mesh: row.try_get("mesh")?,
        name: row.try_get("name")?,
    })
}

fn resource_from_row(row: &DbRow, revision_column: &str) -> Result<StoredResource, StoreError> {
    let labels: String = row.try_get("labels")?;
    Ok(StoredResource {
        key: key_from_row(row)?,
        labels: decode_labels(&labels)?,
        spec: row.try_get("spec")?,
        version: row.try_get("version")?,
        revision: row.try_get(revision_column)?,
        create_time: row.try_get("create_time")?,
        modify_time: row.try_get("modify_time")?,
    })
}

fn change_from_row(row: &DbRow) -> Result<Change, StoreError> {
    let op: String = row.try_get("op")?;
    let kind = ChangeKind::parse(&op)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown change kind {op:?}")))?;
    Ok(Change {
        revision: row.try_get("revision")?,
        kind,
        resource: resource_from_row(row, "resource_revision")?,
    })
}

/// Clamps a u64 count to what SQL's signed LIMIT/OFFSET take.
fn sql_count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Reads one resource.
pub(crate) async fn get(
    pool: &Pool<Db>,
    key: &ResourceKey,
) -> Result<Option<StoredResource>, StoreError> {
    get_by_key(pool, GET_SQL, key).await
}

/// `SELECT` of the resources named by `n` keys: one `(type_name, mesh,
/// name)` triple per key, bound as `$1..$3n` in key order.
fn select_by_keys_sql(n: usize) -> String {
    use std::fmt::Write as _;
    let mut sql = String::from(
        "SELECT type_name, mesh, name, labels, spec, version, revision, create_time, modify_time \
         FROM resources WHERE ",
    );
    for i in 0..n {
        if i > 0 {
            sql.push_str(" OR ");
        }
        let b = i * 3;
        let _ = write!(sql, "(type_name = ${} AND mesh = ${} AND name = ${})", b + 1, b + 2, b + 3);
    }
    sql
}

/// Reads several resources, one statement per 256 keys (an OR of one term
/// per key; SQLite parses expressions at most 1,000 deep); `None` for each
/// absent key, in the order of `keys`.
pub(crate) async fn get_many(
    pool: &Pool<Db>,
    keys: &[ResourceKey],
) -> Result<Vec<Option<StoredResource>>, StoreError> {
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(256) {
        out.extend(get_chunk(pool, chunk).await?);
    }
    Ok(out)
}

async fn get_chunk(
    pool: &Pool<Db>,
    keys: &[ResourceKey],
) -> Result<Vec<Option<StoredResource>>, StoreError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let sql = select_by_keys_sql(keys.len());
    // Small, repeated shapes (one key, two keys): worth a cached statement.
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(keys.len() <= 4);
    for k in keys {
        q = q.bind(k.type_name.as_str()).bind(k.mesh.as_str()).bind(k.name.as_str());
    }
    let mut found = Vec::new();
    for row in q.fetch_all(pool).await? {
        found.push(resource_from_row(&row, "revision")?);
    }
    Ok(keys.iter().map(|k| found.iter().position(|r| &r.key == k).map(|i| found[i].clone())).collect())
}

/// One row by `(type_name, mesh, name)` with `sql` (binds `$1..$3`).
async fn get_by_key(
    pool: &Pool<Db>,
    sql: &'static str,
    key: &ResourceKey,
) -> Result<Option<StoredResource>, StoreError> {
    let row = sqlx::query(sql)
        .bind(key.type_name.as_str())
        .bind(key.mesh.as_str())
        .bind(key.name.as_str())
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(|r| resource_from_row(r, "revision")).transpose()
}

/// Reads a page and the total count from one snapshot.
pub(crate) async fn list(pool: &Pool<Db>, q: &ListQuery) -> Result<ListPage, StoreError> {
    let mut tx = pool.begin_with(BEGIN_READ).await?;
    let meta = sqlx::query(READ_META_SQL).fetch_one(&mut *tx).await?;
    let revision: i64 = meta.try_get("revision")?;
    let (items, total) = page_in(&mut tx, COUNT_SQL, LIST_SQL, q).await?;
    tx.commit().await?;
    Ok(ListPage { items, total, revision })
}

/// The page `q` asks for and the total count, read inside `tx` with
/// `count_sql`/`list_sql` (binds: type, mesh, labels; then limit, offset).
async fn page_in(
    tx: &mut Tx,
    count_sql: &'static str,
    list_sql: &'static str,
    q: &ListQuery,
) -> Result<(Vec<StoredResource>, u64), StoreError> {
    let labels = encode_labels(&q.labels)?;
    let total: i64 = sqlx::query_scalar(count_sql)
        .bind(q.type_name.as_str())
        .bind(q.mesh.as_deref())
        .bind(labels.as_str())
        .fetch_one(&mut **tx)
        .await?;
    let rows = sqlx::query(list_sql)
        .bind(q.type_name.as_str())
        .bind(q.mesh.as_deref())
        .bind(labels.as_str())
        .bind(q.limit.map_or(i64::MAX, sql_count))
        .bind(sql_count(q.offset))
        .fetch_all(&mut **tx)
        .await?;
    let items = rows.iter().map(|r| resource_from_row(r, "revision")).collect::<Result<Vec<_>, _>>()?;
    Ok((items, u64::try_from(total).unwrap_or(0)))
}

/// The store revision.
pub(crate) async fn current_revision(pool: &Pool<Db>) -> Result<i64, StoreError> {
    let row = sqlx::query(READ_META_SQL).fetch_one(pool).await?;
    Ok(row.try_get("revision")?)
}

/// Applies `ops` in one write transaction: all of them or none.
// SQLite writes go through `apply_group` (group commit).
#[allow(dead_code)]
pub(crate) async fn apply(
    pool: &Pool<Db>,
    ops: Vec<WriteOp>,
) -> Result<(Vec<OpOutcome>, Vec<Change>), StoreError> {
    let mut tx = pool.begin_with(BEGIN_WRITE).await?;
    let mut changes = Vec::new();
    match apply_in_tx(&mut tx, ops, &mut changes).await {
        Ok(outcomes) => {
            tx.commit().await?;
            Ok((outcomes, changes))
        }
        Err(e) => {
            if let Err(rb) = tx.rollback().await {
                tracing::warn!(error = %rb, "rollback after a failed write");
            }
            Err(e)
        }
    }
}

/// Applies several independent write batches in one transaction (group
/// commit: one commit, one fsync for all of them). Each batch runs in its
/// own savepoint, so one that fails (a conflict, say) is undone alone and
/// reported in its slot while the others commit. `Err` only when the
/// transaction itself failed: then nothing was written. Also returns the
/// changes committed, in revision order (for the in-process change ring).
// PostgreSQL writers run concurrently on the pool (ordered by the meta row lock).
#[allow(dead_code)]
pub(crate) async fn apply_group(
    pool: &Pool<Db>,
    groups: Vec<Vec<WriteOp>>,
) -> Result<(GroupResults, Vec<Change>), StoreError> {
    let mut tx = pool.begin_with(BEGIN_WRITE).await?;
    let mut out = Vec::with_capacity(groups.len());
    let mut changes = Vec::new();
    for ops in groups {
        sqlx::query("SAVEPOINT meridian_group").execute(&mut *tx).await?;
        let mut batch_changes = Vec::new();
        match apply_in_tx(&mut tx, ops, &mut batch_changes).await {
            Ok(outcomes) => {
                out.push(Ok(outcomes));
                changes.append(&mut batch_changes);
            }
            Err(e) => {
                sqlx::query("ROLLBACK TO SAVEPOINT meridian_group").execute(&mut *tx).await?;
                out.push(Err(e));
            }
        }
        sqlx::query("RELEASE SAVEPOINT meridian_group").execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok((out, changes))
}

/// Per write batch of a group commit, in order: its outcomes, or why it failed alone.
pub(crate) type GroupResults = Vec<Result<Vec<OpOutcome>, StoreError>>;

/// Locks the meta row (the writers' serialization point) and returns
/// (revision, compacted_revision).
async fn lock_meta(tx: &mut Tx) -> Result<(i64, i64), StoreError> {
    let row = sqlx::query(LOCK_META).fetch_one(&mut **tx).await?;
    Ok((row.try_get("revision")?, row.try_get("compacted_revision")?))
}

/// Applies `ops` inside `tx`; the changes they log are appended to `changes`.
async fn apply_in_tx(
    tx: &mut Tx,
    ops: Vec<WriteOp>,
    changes: &mut Vec<Change>,
) -> Result<Vec<OpOutcome>, StoreError> {
    let (start, _) = lock_meta(tx).await?;
    let mut rev = start;
    let now = now_millis();
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        out.push(apply_op(tx, op, &mut rev, now, changes).await?);
    }
    if rev != start {
        sqlx::query("UPDATE meta SET revision = $1 WHERE id = 1")
            .bind(rev)
            .execute(&mut **tx)
            .await?;
        if let Some(notify) = NOTIFY_SQL {
            // Delivered to listeners only when (and if) the transaction commits.
            sqlx::query(notify)
                .bind(rev.to_string())
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(out)
}

fn next_revision(rev: &mut i64) -> Result<i64, StoreError> {
    *rev = rev
        .checked_add(1)
        .ok_or_else(|| StoreError::Corrupt("store revision overflow".into()))?;
    Ok(*rev)
}

fn check_expected(cur: &StoredResource, expected: Option<i64>) -> Result<(), StoreError> {
    match expected {
        Some(expected) if expected != cur.revision => Err(StoreError::Conflict {
            key: cur.key.clone(),
            expected,
            actual: cur.revision,
        }),
        _ => Ok(()),
    }
}

async fn apply_op(
    tx: &mut Tx,
    op: WriteOp,
    rev: &mut i64,
    now: i64,
    changes: &mut Vec<Change>,
) -> Result<OpOutcome, StoreError> {
    match op {
        WriteOp::Create(w) => {
            if fetch_current(tx, &w.key).await?.is_some() {
                return Err(StoreError::AlreadyExists(w.key));
            }
            let res = insert(tx, w, next_revision(rev)?, now).await?;
            changes.push(Change { revision: res.revision, kind: ChangeKind::Upsert, resource: res.clone() });
            Ok(OpOutcome::Written { res, created: true })
        }
        WriteOp::Update {
            res: w,
            expected_revision,
        } => {
            let Some(cur) = fetch_current(tx, &w.key).await? else {
                return Err(StoreError::NotFound(w.key));
            };
            check_expected(&cur, expected_revision)?;
            if w.same_content(&cur) {
                return Ok(OpOutcome::Unchanged(cur));
            }
            let res = replace(tx, w, &cur, next_revision(rev)?, now).await?;
            changes.push(Change { revision: res.revision, kind: ChangeKind::Upsert, resource: res.clone() });
            Ok(OpOutcome::Written {
                res,
                created: false,
            })
        }
        WriteOp::Upsert(w) => match fetch_current(tx, &w.key).await? {
            None => {
                let res = insert(tx, w, next_revision(rev)?, now).await?;
                changes.push(Change { revision: res.revision, kind: ChangeKind::Upsert, resource: res.clone() });
                Ok(OpOutcome::Written { res, created: true })
            }
            Some(cur) if w.same_content(&cur) => Ok(OpOutcome::Unchanged(cur)),
            Some(cur) => {
                let res = replace(tx, w, &cur, next_revision(rev)?, now).await?;
                changes.push(Change { revision: res.revision, kind: ChangeKind::Upsert, resource: res.clone() });
                Ok(OpOutcome::Written {
                    res,
                    created: false,
                })
            }
        },
        WriteOp::Delete {
            key,
            expected_revision,
        } => {
            let Some(cur) = fetch_current(tx, &key).await? else {
                return Err(StoreError::NotFound(key));
            };
            check_expected(&cur, expected_revision)?;
            let revision = next_revision(rev)?;
            sqlx::query(DELETE_SQL)
                .bind(key.type_name.as_str())
                .bind(key.mesh.as_str())
                .bind(key.name.as_str())
                .execute(&mut **tx)
                .await?;
            log_change(tx, revision, ChangeKind::Delete, &cur).await?;
            changes.push(Change { revision, kind: ChangeKind::Delete, resource: cur.clone() });
            Ok(OpOutcome::Deleted(cur))
        }
    }
}

async fn fetch_current(
    tx: &mut Tx,
    key: &ResourceKey,
) -> Result<Option<StoredResource>, StoreError> {
    let row = sqlx::query(GET_SQL)
        .bind(key.type_name.as_str())
        .bind(key.mesh.as_str())
        .bind(key.name.as_str())
        .fetch_optional(&mut **tx)
        .await?;
    row.as_ref()
        .map(|r| resource_from_row(r, "revision"))
        .transpose()
}

async fn insert(
    tx: &mut Tx,
    w: WriteResource,
    revision: i64,
    now: i64,
) -> Result<StoredResource, StoreError> {
    let res = StoredResource {
        key: w.key,
        labels: w.labels,
        spec: w.spec,
        version: w.version,
        revision,
        create_time: now,
        modify_time: now,
    };
    sqlx::query(INSERT_SQL)
        .bind(res.key.type_name.as_str())
        .bind(res.key.mesh.as_str())
        .bind(res.key.name.as_str())
        .bind(encode_labels(&res.labels)?)
        .bind(res.spec.as_slice())
        .bind(res.version.as_str())
        .bind(res.revision)
        .bind(res.create_time)
        .bind(res.modify_time)
        .execute(&mut **tx)
        .await?;
    log_change(tx, revision, ChangeKind::Upsert, &res).await?;
    Ok(res)
}

async fn replace(
    tx: &mut Tx,
    w: WriteResource,
    cur: &StoredResource,
    revision: i64,
    now: i64,
) -> Result<StoredResource, StoreError> {
    let res = StoredResource {
        key: w.key,
        labels: w.labels,
        spec: w.spec,
        version: w.version,
        revision,
        create_time: cur.create_time,
        modify_time: now,
    };
    sqlx::query(REPLACE_SQL)
        .bind(res.key.type_name.as_str())
        .bind(res.key.mesh.as_str())
        .bind(res.key.name.as_str())
        .bind(encode_labels(&res.labels)?)
        .bind(res.spec.as_slice())
        .bind(res.version.as_str())
        .bind(res.revision)
        .bind(res.modify_time)
        .execute(&mut **tx)
        .await?;
    log_change(tx, revision, ChangeKind::Upsert, &res).await?;
    Ok(res)
}

async fn log_change(
    tx: &mut Tx,
    revision: i64,
    kind: ChangeKind,
    res: &StoredResource,
) -> Result<(), StoreError> {
    sqlx::query(LOG_SQL)
        .bind(revision)
        .bind(kind.as_str())
        .bind(res.key.type_name.as_str())
        .bind(res.key.mesh.as_str())
        .bind(res.key.name.as_str())
        .bind(encode_labels(&res.labels)?)
        .bind(res.spec.as_slice())
        .bind(res.version.as_str())
        .bind(res.revision)
        .bind(res.create_time)
        .bind(res.modify_time)
        .bind(now_millis())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Up to `limit` changes after `after`, in revision order, read from one
/// snapshot together with the compaction horizon.
pub(crate) async fn read_changes(
    pool: &Pool<Db>,
    after: i64,
    limit: i64,
) -> Result<Vec<Change>, StoreError> {
    let mut tx = pool.begin_with(BEGIN_READ).await?;
    let meta = sqlx::query(READ_META_SQL).fetch_one(&mut *tx).await?;
    let compacted: i64 = meta.try_get("compacted_revision")?;
    if after < compacted {
        return Err(StoreError::Compacted {
            requested: after,
            oldest: compacted,
        });
    }
    let rows = sqlx::query(CHANGES_SQL)
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    let mut expected = after;
    let mut changes = Vec::with_capacity(rows.len());
    for row in &rows {
        let change = change_from_row(row)?;
        expected += 1;
        if change.revision != expected {
            return Err(StoreError::Corrupt(format!(
                "change log gap: expected revision {expected}, found {}",
                change.revision
            )));
        }
        changes.push(change);
    }
    Ok(changes)
}

/// Drops change-log rows at or below `keep_after_revision` (clamped to the
/// current revision) and raises the compaction horizon. Returns rows dropped.
pub(crate) async fn compact(pool: &Pool<Db>, keep_after_revision: i64) -> Result<u64, StoreError> {
    let mut tx = pool.begin_with(BEGIN_WRITE).await?;
    let (revision, compacted) = lock_meta(&mut tx).await?;
    let horizon = keep_after_revision.min(revision);
    if horizon <= compacted {
        tx.commit().await?;
        return Ok(0);
    }
    let dropped = sqlx::query("DELETE FROM changes WHERE revision <= $1")
        .bind(horizon)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    sqlx::query("UPDATE meta SET compacted_revision = $1 WHERE id = 1")
        .bind(horizon)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(dropped)
}

/// The compaction horizon: change-log rows at or below it are gone.
pub(crate) async fn compacted_revision(pool: &Pool<Db>) -> Result<i64, StoreError> {
    let row = sqlx::query(READ_META_SQL).fetch_one(pool).await?;
    Ok(row.try_get("compacted_revision")?)
}

/// The revision below which (inclusive) the change log may go under
/// `retention`: rows logged before `cutoff_millis` and every row beyond the
/// newest `max_rows`. 0 when nothing is due.
pub(crate) async fn retention_horizon(
    pool: &Pool<Db>,
    cutoff_millis: i64,
    max_rows: u64,
) -> Result<i64, StoreError> {
    let meta = sqlx::query(READ_META_SQL).fetch_one(pool).await?;
    let revision: i64 = meta.try_get("revision")?;
    let by_count = revision.saturating_sub(sql_count(max_rows)).max(0);
    let by_age: Option<i64> =
        sqlx::query_scalar("SELECT MAX(revision) FROM changes WHERE logged_at < $1")
            .bind(cutoff_millis)
            .fetch_one(pool)
            .await?;
    Ok(by_count.max(by_age.unwrap_or(0)))
}

/// Rows in the change log (for metrics, tests and the benchmark).
pub(crate) async fn change_log_rows(pool: &Pool<Db>) -> Result<u64, StoreError> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM changes")
        .fetch_one(pool)
        .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

include!("status.rs");
