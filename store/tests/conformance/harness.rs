//! Per-test databases: a fresh SQLite file, or a fresh PostgreSQL database
//! created through the server at `MERIDIAN_TEST_POSTGRES_URL`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{Stream, StreamExt};
use meridian_store::{Change, ResourceKey, Store, StoreError, StoreOptions, WriteResource};
use sqlx::Connection;

/// Generous bound for anything a test waits on; a wait past it is a failure
/// (something was lost), never a measurement.
pub const WAIT: Duration = Duration::from_secs(30);

pub const PG_ENV: &str = "MERIDIAN_TEST_POSTGRES_URL";

enum Place {
    Sqlite { _dir: tempfile::TempDir },
    Postgres { admin_url: String, db: String },
}

/// One test's database; `open` connects a new, independent `Store` to it.
pub struct Harness {
    pub url: String,
    place: Place,
}

impl Harness {
    pub fn sqlite() -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        // A nested, not yet existing directory: connect must create it.
        let path = dir.path().join("nested/dir/store.db");
        Harness { url: format!("sqlite://{}", path.display()), place: Place::Sqlite { _dir: dir } }
    }

    pub async fn postgres() -> Harness {
        let admin_url = std::env::var(PG_ENV).unwrap_or_default();
        assert!(
            !admin_url.is_empty(),
            "{PG_ENV} is not set: the PostgreSQL store tests need a server. Run them through \
             `bash tests/pg-env.sh cargo test -p meridian-store` (it installs and starts a \
             throwaway PostgreSQL and sets {PG_ENV})."
        );
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let db = format!("meridian_t_{}_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed), nanos);
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("connect to {PG_ENV}={admin_url}: {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let _ = admin.close().await;
        Harness { url: with_database(&admin_url, &db), place: Place::Postgres { admin_url, db } }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.place, Place::Postgres { .. })
    }

    pub async fn open(&self) -> Store {
        self.open_with(StoreOptions::default()).await
    }

    pub async fn open_with(&self, options: StoreOptions) -> Store {
        Store::connect_with(&self.url, options).await.unwrap_or_else(|e| panic!("connect {}: {e}", self.url))
    }

    /// Drops the PostgreSQL database (the SQLite temp dir goes with `self`).
    pub async fn cleanup(self) {
        if let Place::Postgres { admin_url, db } = &self.place
            && let Ok(mut admin) = sqlx::PgConnection::connect(admin_url).await
        {
            let sql = format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)");
            let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await;
            let _ = admin.close().await;
        }
    }
}

/// `postgres://u@h:p/olddb?x=y` -> `postgres://u@h:p/DB?x=y`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(i) => &base[..authority_start + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

pub fn key(type_name: &str, mesh: &str, name: &str) -> ResourceKey {
    ResourceKey::new(type_name, mesh, name)
}

pub fn res(key: ResourceKey, spec: &str) -> WriteResource {
    WriteResource { key, labels: BTreeMap::new(), spec: spec.as_bytes().to_vec(), version: format!("v-{spec}") }
}

pub fn labeled(key: ResourceKey, spec: &str, labels: &[(&str, &str)]) -> WriteResource {
    WriteResource { labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(), ..res(key, spec) }
}

/// The next item of a watch, failing the test if none comes within `WAIT`.
pub async fn next_item<S>(watch: &mut S) -> Result<Change, StoreError>
where
    S: Stream<Item = Result<Change, StoreError>> + Unpin,
{
    match tokio::time::timeout(WAIT, watch.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no change within {WAIT:?}"),
    }
}

/// The next change of a watch, which must not be an error.
pub async fn next_change<S>(watch: &mut S) -> Change
where
    S: Stream<Item = Result<Change, StoreError>> + Unpin,
{
    next_item(watch).await.expect("watch error")
}

/// Asserts nothing arrives for a short while (used only to show that no
/// change is emitted; a late change would be caught by later assertions).
pub async fn assert_quiet<S>(watch: &mut S, for_: Duration)
where
    S: Stream<Item = Result<Change, StoreError>> + Unpin,
{
    if let Ok(item) = tokio::time::timeout(for_, watch.next()).await {
        panic!("unexpected watch item: {item:?}");
    }
}

#[test]
fn database_url_rewrite() {
    assert_eq!(with_database("postgres://postgres@127.0.0.1:5/postgres", "x"), "postgres://postgres@127.0.0.1:5/x");
    assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    assert_eq!(with_database("postgresql://u:p@h/db?sslmode=disable", "x"), "postgresql://u:p@h/x?sslmode=disable");
}
