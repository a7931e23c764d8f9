//! The two SQL backends. Their logic is one file, `backend/generic.rs`,
//! compiled into each module below against that module's `Db` type and
//! dialect constants; only connecting and a few statements differ.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::types::StoredResource;

/// What one write operation did.
#[derive(Debug)]
pub(crate) enum OpOutcome {
    /// A revision was consumed; `created` tells insert from replace.
    Written { res: StoredResource, created: bool },
    /// The write would change nothing: no revision, no change, the record as stored.
    Unchanged(StoredResource),
    /// Deleted; the last state.
    Deleted(StoredResource),
}

/// Wall clock in unix milliseconds (0 if the clock is before 1970).
pub(crate) fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(crate) mod sqlite {
    use std::path::Path;
    use std::time::Duration;

    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

    type Db = sqlx::Sqlite;

    /// Connections in the pool. Under WAL readers run in parallel with the
    /// single writer; writes are serialized by the store's write mutex anyway,
    /// so more connections would only hold more file handles.
    const MAX_CONNECTIONS: u32 = 4;
    /// How long a statement waits for another process's write lock before
    /// failing with SQLITE_BUSY.
    const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

    /// Takes the database write lock up front, so two writers never deadlock
    /// upgrading read locks, and one in another process waits (busy_timeout).
    const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";
    /// Deferred: the WAL snapshot is taken at the first read and holds for
    /// the whole transaction.
    const BEGIN_READ: &str = "BEGIN";
    /// The write lock is already held (BEGIN IMMEDIATE).
    const LOCK_META: &str = "SELECT revision, compacted_revision FROM meta WHERE id = 1";
    /// No cross-process notifications: other processes find changes through
    /// the watch's periodic re-query.
    const NOTIFY_SQL: Option<&str> = None;

    /// Label filter: no pair of the filter object is missing from the row's labels.
    const LIST_SQL: &str = "SELECT r.type_name, r.mesh, r.name, r.labels, r.spec, r.version, \
         r.revision, r.create_time, r.modify_time FROM resources r \
         WHERE r.type_name = $1 AND ($2 IS NULL OR r.mesh = $2) \
         AND NOT EXISTS (SELECT 1 FROM json_each($3) f WHERE NOT EXISTS \
             (SELECT 1 FROM json_each(r.labels) l WHERE l.key = f.key AND l.value = f.value)) \
         ORDER BY r.mesh, r.name LIMIT $4 OFFSET $5";
    const COUNT_SQL: &str = "SELECT COUNT(*) FROM resources r \
         WHERE r.type_name = $1 AND ($2 IS NULL OR r.mesh = $2) \
         AND NOT EXISTS (SELECT 1 FROM json_each($3) f WHERE NOT EXISTS \
             (SELECT 1 FROM json_each(r.labels) l WHERE l.key = f.key AND l.value = f.value))";

    const STATUS_LIST_SQL: &str = "SELECT r.type_name, r.mesh, r.name, r.labels, r.spec, r.version, \
         CAST(0 AS BIGINT) AS revision, r.create_time, r.modify_time FROM status r \
         WHERE r.type_name = $1 AND ($2 IS NULL OR r.mesh = $2) \
         AND NOT EXISTS (SELECT 1 FROM json_each($3) f WHERE NOT EXISTS \
             (SELECT 1 FROM json_each(r.labels) l WHERE l.key = f.key AND l.value = f.value)) \
         ORDER BY r.mesh, r.name LIMIT $4 OFFSET $5";
    const STATUS_COUNT_SQL: &str = "SELECT COUNT(*) FROM status r \
         WHERE r.type_name = $1 AND ($2 IS NULL OR r.mesh = $2) \
         AND NOT EXISTS (SELECT 1 FROM json_each($3) f WHERE NOT EXISTS \
             (SELECT 1 FROM json_each(r.labels) l WHERE l.key = f.key AND l.value = f.value))";

    include!("backend/generic.rs");
    include!("backend/sqlite_group.rs");

    /// Opens (creating file and directories if needed) and migrates.
    ///
    /// Durability: WAL with `synchronous = FULL`, so the WAL is fsynced at
    /// every commit and an acknowledged write survives a process kill and a
    /// power loss alike.
    pub(crate) async fn connect(path: &Path) -> Result<Pool<Db>, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|source| StoreError::CreateDir { path: path.display().to_string(), source })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new().max_connections(MAX_CONNECTIONS).connect_with(options).await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(pool)
    }
}

pub(crate) mod postgres {
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

    type Db = sqlx::Postgres;

    /// Connections in the pool (per `Store`, i.e. per process). Writers queue
    /// on the meta row lock, so more would not write faster.
    const MAX_CONNECTIONS: u32 = 8;

    /// The channel `pg_notify` signals after each write.
    pub(crate) const CHANNEL: &str = "meridian_changes";

    /// READ COMMITTED explicitly (whatever the database default): after the
    /// meta row lock is granted, each later statement sees what the previous
    /// writer committed.
    const BEGIN_WRITE: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";
    /// One snapshot for every statement of a read (page + total + revision).
    const BEGIN_READ: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
    /// The row lock every writer takes first: writers in all processes queue
    /// here, so revisions are assigned and committed in order and a reader of
    /// "revision > X" never misses one that commits later. (Not a SEQUENCE:
    /// sequence values commit out of order.) A no-op write releases the lock
    /// without bumping anything.
    const LOCK_META: &str = "SELECT revision, compacted_revision FROM meta WHERE id = 1 FOR UPDATE";
    /// Sent inside the write transaction: delivered on commit, dropped on rollback.
    const NOTIFY_SQL: Option<&str> = Some("SELECT pg_notify('meridian_changes', $1)");

    /// Label filter: JSON containment (`{}` contains nothing, so matches all).
    const LIST_SQL: &str = "SELECT r.type_name, r.mesh, r.name, r.labels, r.spec, r.version, \
         r.revision, r.create_time, r.modify_time FROM resources r \
         WHERE r.type_name = $1 AND ($2::text IS NULL OR r.mesh = $2) \
         AND r.labels::jsonb @> $3::jsonb \
         ORDER BY r.mesh, r.name LIMIT $4 OFFSET $5";
    const COUNT_SQL: &str = "SELECT COUNT(*) FROM resources r \
         WHERE r.type_name = $1 AND ($2::text IS NULL OR r.mesh = $2) \
         AND r.labels::jsonb @> $3::jsonb";

    const STATUS_LIST_SQL: &str = "SELECT r.type_name, r.mesh, r.name, r.labels, r.spec, r.version, \
         CAST(0 AS BIGINT) AS revision, r.create_time, r.modify_time FROM status r \
         WHERE r.type_name = $1 AND ($2::text IS NULL OR r.mesh = $2) \
         AND r.labels::jsonb @> $3::jsonb \
         ORDER BY r.mesh, r.name LIMIT $4 OFFSET $5";
    const STATUS_COUNT_SQL: &str = "SELECT COUNT(*) FROM status r \
         WHERE r.type_name = $1 AND ($2::text IS NULL OR r.mesh = $2) \
         AND r.labels::jsonb @> $3::jsonb";

    include!("backend/generic.rs");

    /// Connects and migrates (sqlx serializes concurrent migrators with an
    /// advisory lock). `acquire_timeout` bounds every wait for a connection
    /// ([`crate::StoreOptions::acquire_timeout`]).
    pub(crate) async fn connect(
        options: PgConnectOptions,
        acquire_timeout: std::time::Duration,
    ) -> Result<Pool<Db>, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(acquire_timeout)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(pool)
    }
}
