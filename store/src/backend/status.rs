// The status table's SQL, `include!`d at the end of `backend/generic.rs`, so
// it compiles once per backend against that module's `Db` and the dialect
// constants STATUS_LIST_SQL and STATUS_COUNT_SQL.
//
// Status rows have no revision and never touch `meta` or `changes`: a
// status write is one autocommitted statement, notifies nobody, and leaves
// the change log as it was.

const STATUS_GET_SQL: &str = "SELECT type_name, mesh, name, labels, spec, version, \
     CAST(0 AS BIGINT) AS revision, create_time, modify_time FROM status \
     WHERE type_name = $1 AND mesh = $2 AND name = $3";

/// Insert, or replace unless the content (labels, spec, version) is the same.
const STATUS_UPSERT_SQL: &str = "INSERT INTO status (type_name, mesh, name, labels, spec, \
     version, create_time, modify_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
     ON CONFLICT (type_name, mesh, name) DO UPDATE SET labels = excluded.labels, \
     spec = excluded.spec, version = excluded.version, modify_time = excluded.modify_time \
     WHERE status.labels <> excluded.labels OR status.spec <> excluded.spec \
     OR status.version <> excluded.version";

/// Insert only if absent.
const STATUS_CREATE_SQL: &str = "INSERT INTO status (type_name, mesh, name, labels, spec, \
     version, create_time, modify_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
     ON CONFLICT (type_name, mesh, name) DO NOTHING";

/// Replace only if the stored version is `$8` (compare-and-set).
const STATUS_REPLACE_SQL: &str = "UPDATE status SET labels = $4, spec = $5, version = $6, \
     modify_time = $7 WHERE type_name = $1 AND mesh = $2 AND name = $3 AND version = $8";

const STATUS_DELETE_SQL: &str =
    "DELETE FROM status WHERE type_name = $1 AND mesh = $2 AND name = $3";

/// Reads one status record (`revision` 0).
pub(crate) async fn get_status(
    pool: &Pool<Db>,
    key: &ResourceKey,
) -> Result<Option<StoredResource>, StoreError> {
    get_by_key(pool, STATUS_GET_SQL, key).await
}

/// Writes one status record under `expect`; `Ok(false)` if the content was
/// already stored (nothing written), `StatusConflict` if `expect` failed.
pub(crate) async fn put_status(
    pool: &Pool<Db>,
    w: &WriteResource,
    expect: &StatusExpect,
) -> Result<bool, StoreError> {
    write_status(pool, w, expect, now_millis()).await?
}

/// Writes several status records in one write transaction (one commit, one
/// fsync). Each is written under its own `expect`; one whose `expect` fails
/// is skipped and reported as `Err(StatusConflict)` without undoing the
/// others. A database error aborts the whole batch (nothing written).
pub(crate) async fn put_status_batch(
    pool: &Pool<Db>,
    writes: &[(WriteResource, StatusExpect)],
) -> Result<Vec<Result<bool, StoreError>>, StoreError> {
    let now = now_millis();
    let mut tx = pool.begin_with(BEGIN_WRITE).await?;
    let mut out = Vec::with_capacity(writes.len());
    for (w, expect) in writes {
        out.push(write_status(&mut *tx, w, expect, now).await?);
    }
    tx.commit().await?;
    Ok(out)
}

/// One status write under `expect` on `executor` (the pool, or a
/// transaction of a batch). The outer error is a database error (abort);
/// the inner one is this record's `StatusConflict`; `Ok(false)`: the
/// content was already stored.
async fn write_status<'e, E: sqlx::Executor<'e, Database = Db>>(
    executor: E,
    w: &WriteResource,
    expect: &StatusExpect,
    now: i64,
) -> Result<Result<bool, StoreError>, StoreError> {
    let labels = encode_labels(&w.labels)?;
    let q = |sql| {
        sqlx::query(sql)
            .bind(w.key.type_name.as_str())
            .bind(w.key.mesh.as_str())
            .bind(w.key.name.as_str())
            .bind(labels.clone())
            .bind(w.spec.as_slice())
            .bind(w.version.as_str())
            .bind(now)
    };
    let affected = match expect {
        StatusExpect::Any => return Ok(Ok(q(STATUS_UPSERT_SQL).execute(executor).await?.rows_affected() > 0)),
        StatusExpect::Absent => q(STATUS_CREATE_SQL).execute(executor).await?.rows_affected(),
        StatusExpect::Version(v) => q(STATUS_REPLACE_SQL).bind(v.as_str()).execute(executor).await?.rows_affected(),
    };
    Ok(if affected == 0 { Err(StoreError::StatusConflict(w.key.clone())) } else { Ok(true) })
}

/// Deletes one status record; `Ok(false)` if there was none.
pub(crate) async fn delete_status(pool: &Pool<Db>, key: &ResourceKey) -> Result<bool, StoreError> {
    let done = sqlx::query(STATUS_DELETE_SQL)
        .bind(key.type_name.as_str())
        .bind(key.mesh.as_str())
        .bind(key.name.as_str())
        .execute(pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Lists status records like [`list`] lists resources (`revision` 0 in
/// the page and in every item).
pub(crate) async fn list_status(pool: &Pool<Db>, q: &ListQuery) -> Result<ListPage, StoreError> {
    let mut tx = pool.begin_with(BEGIN_READ).await?;
    let (items, total) = page_in(&mut tx, STATUS_COUNT_SQL, STATUS_LIST_SQL, q).await?;
    tx.commit().await?;
    Ok(ListPage { items, total, revision: 0 })
}
