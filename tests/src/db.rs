//! The store under test: a SQLite file in a temporary directory, or a fresh
//! PostgreSQL database per test on the server `tests/pg-env.sh` runs.

use std::path::Path;

use rand::Rng;
use reqwest::Url;
use sqlx::{Connection, PgConnection};

/// The environment variable naming the PostgreSQL server for tests.
pub const POSTGRES_URL_ENV: &str = "MERIDIAN_TEST_POSTGRES_URL";

/// Which store backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// What `GET /` reports as `store`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// A store for one test, kept across restarts of the processes using it.
#[derive(Debug)]
pub struct TestStore {
    pub backend: Backend,
    /// The `--store` URL.
    pub url: String,
    /// For PostgreSQL: the server's admin URL and the database created.
    postgres: Option<(String, String)>,
}

impl TestStore {
    /// A SQLite file inside `dir`, or a new PostgreSQL database.
    pub async fn create(backend: Backend, dir: &Path) -> TestStore {
        match backend {
            Backend::Sqlite => {
                TestStore { backend, url: format!("sqlite:{}", dir.join("global.db").display()), postgres: None }
            }
            Backend::Postgres => {
                let admin = std::env::var(POSTGRES_URL_ENV).unwrap_or_else(|_| {
                    panic!(
                        "{POSTGRES_URL_ENV} is not set: PostgreSQL tests need a server. Run them as \
                         `bash tests/pg-env.sh cargo test -p meridian-tests` (it starts one and sets the variable)"
                    )
                });
                let name = format!("meridian_it_{:016x}", rand::rng().random::<u64>());
                let mut conn = PgConnection::connect(&admin)
                    .await
                    .unwrap_or_else(|e| panic!("cannot connect to {POSTGRES_URL_ENV}={admin}: {e}"));
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
                let _ = conn.close().await;
                let mut url = Url::parse(&admin).unwrap_or_else(|e| panic!("{POSTGRES_URL_ENV} is not a URL: {e}"));
                url.set_path(&format!("/{name}"));
                TestStore { backend, url: url.to_string(), postgres: Some((admin, name)) }
            }
        }
    }

    /// Drops the PostgreSQL database (nothing to do for SQLite: its
    /// directory goes with the test's temporary directory).
    pub async fn drop_database(&self) {
        if let Some((admin, name)) = &self.postgres
            && let Ok(mut conn) = PgConnection::connect(admin).await
        {
            let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await;
            let _ = conn.close().await;
        }
    }
}
