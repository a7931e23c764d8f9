//! The `Store` handle: URL parsing, backend dispatch, wake-ups.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use sqlx::postgres::PgConnectOptions;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

use crate::backend::{self, OpOutcome};
use crate::error::StoreError;
use crate::listener;
use crate::recent::{Known, Recent};
use crate::types::{Change, ListPage, ListQuery, ResourceKey, StatusExpect, StoredResource, WriteOp, WriteResource};
use crate::watcher;

/// Tuning for [`Store::connect_with`]; `StoreOptions::default()` is what
/// [`Store::connect`] uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// How often an idle watcher re-queries the change log without any
    /// wake-up. A backstop only (SQLite writers in other processes, a lost
    /// notification); wake-ups are the primary mechanism. Default 5 s.
    pub requery_interval: Duration,
    /// PostgreSQL: how long an operation waits for a pooled connection
    /// (opening one included) before failing with
    /// [`StoreError::Database`] (`PoolTimedOut`). With the database down,
    /// this is how long a request hangs before its error. Default
    /// [`DEFAULT_ACQUIRE_TIMEOUT`] (sqlx's own default is 30 s).
    pub acquire_timeout: Duration,
}

/// Default [`StoreOptions::acquire_timeout`]: 2 s, long enough for a
/// connection on a loaded server, short enough that a stopped database
/// gives a prompt error instead of a hung request.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

impl Default for StoreOptions {
    fn default() -> Self {
        Self { requery_interval: Duration::from_secs(5), acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT }
    }
}

/// A handle on a resource store. Cheap to clone; clones share one
/// connection pool and one change-notification listener.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

enum Backend {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// A write waiting for the next group commit, and where its outcome goes.
type Queued = (Vec<WriteOp>, tokio::sync::oneshot::Sender<Result<Vec<OpOutcome>, StoreError>>);

/// Write batches one SQLite transaction carries at most. The queue itself
/// is bounded by the writers waiting on it (each caller awaits its answer).
const MAX_GROUP: usize = 128;

struct Inner {
    /// The pool of the backend chosen by the URL.
    backend: Backend,
    /// SQLite: writes waiting for the next group commit ([`Store::apply`]).
    queue: std::sync::Mutex<std::collections::VecDeque<Queued>>,
    /// Serializes this process's SQLite write transactions, so concurrent
    /// tasks queue here instead of spinning on SQLITE_BUSY. Unused for
    /// PostgreSQL, where the meta row lock orders writers.
    write_lock: Arc<Mutex<()>>,
    /// Wake-up counter for watchers: bumped after each commit made through
    /// this handle and, for PostgreSQL, on each `meridian_changes`
    /// notification or listener reconnect. A watch channel holds one value,
    /// so any burst of wake-ups costs a watcher one re-query.
    wake: Arc<watch::Sender<u64>>,
    /// Bumped after each effective status write or delete made through this
    /// handle (in this process only: other replicas read the shared table).
    /// Config watchers never see it.
    status_wake: watch::Sender<u64>,
    /// The PostgreSQL LISTEN task, stopped when the last handle goes.
    listener: Option<JoinHandle<()>>,
    /// Watchers' backstop re-query interval.
    requery_interval: Duration,
    /// SQLite: the changes committed last through this handle, in memory,
    /// for the watchers a commit wakes ([`crate::recent`]). Unused for
    /// PostgreSQL (commits of several tasks and processes interleave there).
    recent: std::sync::Mutex<Recent>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = &self.listener {
            task.abort();
        }
    }
}

/// Where a URL points.
#[derive(Debug)]
enum Location {
    Sqlite(PathBuf),
    Postgres(Box<PgConnectOptions>),
}

/// Hides the password of a `scheme://user:password@host/...` URL.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

fn parse_url(url: &str) -> Result<Location, StoreError> {
    let invalid = |reason: &str| StoreError::InvalidUrl { url: redact(url), reason: reason.to_owned() };
    if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
        if path.is_empty() {
            return Err(invalid("no database file path"));
        }
        if path.contains(":memory:") || path.starts_with("file:") {
            return Err(invalid(
                "in-memory SQLite is not supported (each pooled connection would see its own \
                 database); use a file, e.g. in a temporary directory",
            ));
        }
        if path.contains('?') {
            return Err(invalid("query parameters are not supported; give a plain file path"));
        }
        return Ok(Location::Sqlite(PathBuf::from(path)));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return PgConnectOptions::from_str(url)
            .map(|o| Location::Postgres(Box::new(o)))
            .map_err(|e| invalid(&e.to_string()));
    }
    Err(invalid("unknown scheme; expected sqlite:PATH, sqlite://PATH, postgres://... or postgresql://..."))
}

/// Runs `$call` on the backend module matching the pool, passing the pool first.
macro_rules! dispatch {
    ($self:expr, $f:ident ( $($arg:expr),* )) => {
        match &$self.inner.backend {
            Backend::Sqlite(pool) => backend::sqlite::$f(pool, $($arg),*).await,
            Backend::Postgres(pool) => backend::postgres::$f(pool, $($arg),*).await,
        }
    };
}

impl Store {
    /// Opens the store at `url` and brings its schema up to date.
    ///
    /// `sqlite:PATH` or `sqlite://PATH` (`sqlite:///abs/path` for an absolute
    /// path) creates the file and its directories if missing;
    /// `postgres://...` / `postgresql://...` takes a database that exists.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        Self::connect_with(url, StoreOptions::default()).await
    }

    /// [`Store::connect`] with explicit options.
    pub async fn connect_with(url: &str, options: StoreOptions) -> Result<Store, StoreError> {
        let (wake, _) = watch::channel(0u64);
        let wake = Arc::new(wake);
        let (backend, listener) = match parse_url(url)? {
            Location::Sqlite(path) => (Backend::Sqlite(backend::sqlite::connect(&path).await?), None),
            Location::Postgres(pg) => {
                let pool = backend::postgres::connect((*pg).clone(), options.acquire_timeout).await?;
                let task = listener::spawn(*pg, Arc::clone(&wake));
                (Backend::Postgres(pool), Some(task))
            }
        };
        Ok(Store {
            inner: Arc::new(Inner {
                backend,
                queue: std::sync::Mutex::new(std::collections::VecDeque::new()),
                write_lock: Arc::new(Mutex::new(())),
                wake,
                listener,
                requery_interval: options.requery_interval,
                status_wake: watch::channel(0u64).0,
                recent: std::sync::Mutex::new(Recent::default()),
            }),
        })
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend_name(&self) -> &'static str {
        match self.inner.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Reads one resource; `Ok(None)` if absent.
    pub async fn get(&self, key: &ResourceKey) -> Result<Option<StoredResource>, StoreError> {
        dispatch!(self, get(key))
    }

    /// Reads several resources in one statement (one round trip): per key
    /// of `keys`, in order, the stored record or `None` when absent.
    pub async fn get_many(&self, keys: &[ResourceKey]) -> Result<Vec<Option<StoredResource>>, StoreError> {
        dispatch!(self, get_many(keys))
    }

    /// Lists one type, filtered by mesh and labels, ordered by (mesh, name),
    /// with the total count and the revision, all from one snapshot.
    pub async fn list(&self, q: &ListQuery) -> Result<ListPage, StoreError> {
        dispatch!(self, list(q))
    }

    /// Inserts; `AlreadyExists` if the key is present.
    pub async fn create(&self, r: WriteResource) -> Result<StoredResource, StoreError> {
        match self.apply_one(WriteOp::Create(r)).await? {
            OpOutcome::Written { res, .. } | OpOutcome::Unchanged(res) | OpOutcome::Deleted(res) => Ok(res),
        }
    }

    /// Replaces; `NotFound` if absent, `Conflict` if `expected_revision` is
    /// given and stale. Identical content is a no-op returning the stored record.
    pub async fn update(&self, r: WriteResource, expected_revision: Option<i64>) -> Result<StoredResource, StoreError> {
        let op = WriteOp::Update { res: r, expected_revision };
        match self.apply_one(op).await? {
            OpOutcome::Written { res, .. } | OpOutcome::Unchanged(res) | OpOutcome::Deleted(res) => Ok(res),
        }
    }

    /// Inserts or replaces; the flag is true when the resource was created.
    /// Identical content is a no-op returning the stored record and `false`.
    pub async fn upsert(&self, r: WriteResource) -> Result<(StoredResource, bool), StoreError> {
        match self.apply_one(WriteOp::Upsert(r)).await? {
            OpOutcome::Written { res, created } => Ok((res, created)),
            OpOutcome::Unchanged(res) | OpOutcome::Deleted(res) => Ok((res, false)),
        }
    }

    /// Deletes and returns the last state; `NotFound` if absent, `Conflict`
    /// if `expected_revision` is given and stale.
    pub async fn delete(
        &self,
        key: &ResourceKey,
        expected_revision: Option<i64>,
    ) -> Result<StoredResource, StoreError> {
        let op = WriteOp::Delete { key: key.clone(), expected_revision };
        match self.apply_one(op).await? {
            OpOutcome::Written { res, .. } | OpOutcome::Unchanged(res) | OpOutcome::Deleted(res) => Ok(res),
        }
    }

    /// Applies `ops` in order in one transaction: all or nothing. Each
    /// effective op takes the next revision and emits one change; no-op
    /// writes take none. Result per op: `Some(state after)` for writes,
    /// `None` for deletes.
    pub async fn apply_batch(&self, ops: Vec<WriteOp>) -> Result<Vec<Option<StoredResource>>, StoreError> {
        let outcomes = self.apply(ops).await?;
        Ok(outcomes
            .into_iter()
            .map(|o| match o {
                OpOutcome::Written { res, .. } | OpOutcome::Unchanged(res) => Some(res),
                OpOutcome::Deleted(_) => None,
            })
            .collect())
    }

    /// The store revision: that of the last committed change (0 when empty).
    pub async fn current_revision(&self) -> Result<i64, StoreError> {
        dispatch!(self, current_revision())
    }

    /// Every change with revision > `from_revision`, in order and without
    /// gaps, then live ones as they commit, forever. A negative
    /// `from_revision` counts as 0.
    ///
    /// Yields `Err(Compacted)` and ends if the log no longer reaches back to
    /// `from_revision` (see [`Store::compact`]); re-list and watch from the
    /// list's revision. Database errors are yielded and the stream retries
    /// from where it was, with backoff; other errors end it.
    pub fn watch(&self, from_revision: i64) -> impl Stream<Item = Result<Change, StoreError>> + Send + Unpin + 'static {
        watcher::watch(self.clone(), from_revision)
    }

    /// Drops change-log rows with revision <= `keep_after_revision` (clamped
    /// to the current revision); watches from below it then fail with
    /// `Compacted`. Returns the number of rows dropped.
    pub async fn compact(&self, keep_after_revision: i64) -> Result<u64, StoreError> {
        let _serial = self.sqlite_write_guard().await;
        let dropped = dispatch!(self, compact(keep_after_revision))?;
        if matches!(self.inner.backend, Backend::Sqlite(_)) {
            let horizon = dispatch!(self, compacted_revision())?;
            lock(&self.inner.recent).compacted(horizon);
        }
        Ok(dropped)
    }

    /// Rows in the change log now.
    pub async fn change_log_rows(&self) -> Result<u64, StoreError> {
        dispatch!(self, change_log_rows())
    }

    /// Compacts the change log down to `retention`: drops rows logged more
    /// than `retention.max_age` ago and all but the newest
    /// `retention.max_rows`. Returns the rows dropped. Watchers behind the
    /// new horizon get `Compacted` and must re-list.
    pub async fn compact_retained(&self, retention: &crate::Retention) -> Result<u64, StoreError> {
        let age = i64::try_from(retention.max_age.as_millis()).unwrap_or(i64::MAX);
        let cutoff = backend::now_millis().saturating_sub(age);
        let horizon = dispatch!(self, retention_horizon(cutoff, retention.max_rows))?;
        if horizon <= 0 {
            return Ok(0);
        }
        self.compact(horizon).await
    }

    /// Reads one status record (its `revision` is always 0); `Ok(None)` if absent.
    pub async fn get_status(&self, key: &ResourceKey) -> Result<Option<StoredResource>, StoreError> {
        dispatch!(self, get_status(key))
    }

    /// Lists status records like [`Store::list`] lists resources, without
    /// revisions (0 in the page and in every item).
    pub async fn list_status(&self, q: &ListQuery) -> Result<ListPage, StoreError> {
        dispatch!(self, list_status(q))
    }

    /// Writes one status record under `expect`. Takes no revision, logs no
    /// change, notifies no watcher of [`Store::watch`]. Returns `false` when
    /// the same labels, spec and version were already stored (nothing
    /// written); `StatusConflict` when `expect` does not hold.
    pub async fn put_status(&self, w: &WriteResource, expect: &StatusExpect) -> Result<bool, StoreError> {
        let written = {
            let _serial = self.sqlite_write_guard().await;
            dispatch!(self, put_status(w, expect))?
        };
        if written {
            self.inner.status_wake.send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(written)
    }

    /// Writes several status records in one transaction (one commit: one
    /// fsync on SQLite, instead of one per record), each under its own
    /// `expect`. Per record, in order: `Ok(true)` written, `Ok(false)` the
    /// same content was already stored, `Err(StatusConflict)` its `expect`
    /// did not hold (the others are still written). A database error fails
    /// the whole batch and writes nothing. Like [`Store::put_status`], it
    /// takes no revision and notifies no watcher of [`Store::watch`].
    pub async fn put_status_batch(
        &self,
        writes: &[(WriteResource, StatusExpect)],
    ) -> Result<Vec<Result<bool, StoreError>>, StoreError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let results = {
            let _serial = self.sqlite_write_guard().await;
            dispatch!(self, put_status_batch(writes))?
        };
        if results.iter().any(|r| matches!(r, Ok(true))) {
            self.inner.status_wake.send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(results)
    }

    /// Deletes one status record; `false` if there was none.
    pub async fn delete_status(&self, key: &ResourceKey) -> Result<bool, StoreError> {
        let deleted = {
            let _serial = self.sqlite_write_guard().await;
            dispatch!(self, delete_status(key))?
        };
        if deleted {
            self.inner.status_wake.send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(deleted)
    }

    /// A receiver that changes after each effective status write or delete
    /// made through this handle (or its clones). In-process only: a status
    /// write by another process is found by reading the table.
    pub fn status_changes(&self) -> watch::Receiver<u64> {
        self.inner.status_wake.subscribe()
    }

    async fn sqlite_write_guard(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.inner.backend {
            Backend::Sqlite(_) => Some(self.inner.write_lock.lock().await),
            Backend::Postgres(_) => None,
        }
    }

    async fn apply_one(&self, op: WriteOp) -> Result<OpOutcome, StoreError> {
        self.apply(vec![op]).await?.pop().ok_or_else(|| StoreError::Corrupt("write produced no outcome".into()))
    }

    async fn apply(&self, ops: Vec<WriteOp>) -> Result<Vec<OpOutcome>, StoreError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let outcomes = match &self.inner.backend {
            Backend::Sqlite(pool) => self.group_commit(pool, ops).await?,
            Backend::Postgres(pool) => backend::postgres::apply(pool, ops).await?.0,
        };
        if outcomes.iter().any(|o| !matches!(o, OpOutcome::Unchanged(_))) {
            self.inner.wake.send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(outcomes)
    }

    /// SQLite group commit: concurrent writers share one transaction (one
    /// fsync) instead of queueing for one each, written in a handful of
    /// round trips to the database thread whatever its size
    /// (`backend::sqlite::apply_group_fast`; a group too large for it, or
    /// whose write fails, goes statement by statement). A writer queues its batch,
    /// then takes the write lock; whoever holds it commits everything queued
    /// (up to [`MAX_GROUP`] batches, each in its own savepoint, so a failing
    /// batch fails alone) and answers each writer only after the commit, so
    /// nothing is acknowledged before it is durable. A writer whose batch a
    /// previous holder already committed just takes its answer. A lone
    /// writer waits for nobody: the lock is free and it commits its own batch.
    /// The commit runs in its own task holding the lock, so a writer
    /// cancelled while committing for others (a client gone) neither rolls
    /// their writes back nor lets another transaction start beside it.
    async fn group_commit(&self, pool: &sqlx::SqlitePool, ops: Vec<WriteOp>) -> Result<Vec<OpOutcome>, StoreError> {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        lock_queue(&self.inner.queue).push_back((ops, tx));
        loop {
            let serial = Arc::clone(&self.inner.write_lock).lock_owned().await;
            match rx.try_recv() {
                Ok(answer) => return answer,
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                    return Err(StoreError::Corrupt("a group commit dropped a write unanswered".into()));
                }
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
            }
            let group: Vec<Queued> = {
                let mut q = lock_queue(&self.inner.queue);
                let n = q.len().min(MAX_GROUP);
                q.drain(..n).collect()
            };
            let (batches, answers): (Vec<_>, Vec<_>) = group.into_iter().unzip();
            let pool = pool.clone();
            let inner = Arc::clone(&self.inner);
            let commit = tokio::spawn(async move {
                let _serial = serial;
                let done = match backend::sqlite::apply_group_fast(&pool, &batches).await {
                    Ok(Some(done)) => Ok(done),
                    Ok(None) => backend::sqlite::apply_group(&pool, batches).await,
                    Err(e) => Err(e),
                };
                match done {
                    Ok((results, changes)) => {
                        // Before anyone is answered (and so before the
                        // wake-up): a woken watcher finds them here.
                        lock(&inner.recent).committed(changes);
                        for (answer, result) in answers.into_iter().zip(results) {
                            let _ = answer.send(result);
                        }
                    }
                    Err(e) => {
                        let reason = e.to_string();
                        for answer in answers {
                            let shared = sqlx::Error::Protocol(format!("the group commit failed: {reason}"));
                            let _ = answer.send(Err(StoreError::Database(shared)));
                        }
                    }
                }
            });
            if let Err(e) = commit.await {
                return Err(StoreError::Corrupt(format!("the group commit task failed: {e}")));
            }
        }
    }
}

fn lock_queue(
    q: &std::sync::Mutex<std::collections::VecDeque<Queued>>,
) -> std::sync::MutexGuard<'_, std::collections::VecDeque<Queued>> {
    lock(q)
}

/// Locks a std mutex, taking the data of a poisoned one as it is.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The watcher's view of the store ([`watcher::ChangeLog`]).
impl watcher::ChangeLog for Store {
    async fn read_changes(&self, after: i64, limit: i64) -> Result<Vec<Change>, StoreError> {
        dispatch!(self, read_changes(after, limit))
    }

    fn recent_changes(&self, after: i64, limit: usize) -> Known {
        lock(&self.inner.recent).after(after, limit)
    }

    fn subscribe_wake(&self) -> watch::Receiver<u64> {
        self.inner.wake.subscribe()
    }

    fn requery_interval(&self) -> Duration {
        self.inner.requery_interval
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("backend", &self.backend_name()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls() {
        for (url, path) in [
            ("sqlite:data/x.db", "data/x.db"),
            ("sqlite://data/x.db", "data/x.db"),
            ("sqlite:///var/lib/m.db", "/var/lib/m.db"),
        ] {
            match parse_url(url) {
                Ok(Location::Sqlite(p)) => assert_eq!(p, PathBuf::from(path), "{url}"),
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_urls_are_refused() {
        for url in ["", "sqlite:", "sqlite::memory:", "mysql://x/y", "sqlite:a.db?mode=rwc", "x"] {
            assert!(matches!(parse_url(url), Err(StoreError::InvalidUrl { .. })), "{url}");
        }
    }

    #[test]
    fn postgres_urls() {
        assert!(matches!(parse_url("postgres://u:pw@127.0.0.1:5432/db"), Ok(Location::Postgres(_))));
        assert!(matches!(parse_url("postgresql://127.0.0.1/db"), Ok(Location::Postgres(_))));
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://u:secret@h:1/db"), "postgres://u:***@h:1/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite:x.db"), "sqlite:x.db");
    }
}
