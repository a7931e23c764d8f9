//! The flag groups `meridian-global run` and `meridian-zone run` share,
//! flattened into each (linkerd2 `policy-controller/runtime/src/args.rs`).
//! Every flag has a `MERIDIAN_*` environment variable.

use std::{net::SocketAddr, path::PathBuf};

use clap::Args;
use meridian_core::manager::DEFAULT_MAX_RESOURCE_BYTES;

/// Where the process keeps its state.
#[derive(Debug, Clone, Args)]
pub struct StateArgs {
    /// Where the process keeps its state: the SQLite file (unless --store
    /// says otherwise) and the admin token. Default: ~/.meridian/global for
    /// the global, ~/.meridian/zone for a zone.
    #[arg(long, env = "MERIDIAN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Store URL: `sqlite:PATH` or `postgres://user:pass@host/db`.
    /// Default: `sqlite:<data-dir>/<role>.db`.
    #[arg(long, env = "MERIDIAN_STORE")]
    pub store: Option<String>,

    /// PostgreSQL: how long a request waits for a database connection before
    /// failing (503 at the API) when the database is down or saturated, as a
    /// duration (`2s`, `500ms`, `1m`).
    #[arg(long, env = "MERIDIAN_STORE_ACQUIRE_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub store_acquire_timeout: std::time::Duration,
}

impl StateArgs {
    /// `--data-dir`, or `$HOME/.meridian/<role>` (`.meridian/<role>` without `$HOME`).
    pub fn data_dir(&self, role: &str) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".meridian").join(role))
                .unwrap_or_else(|| PathBuf::from(".meridian").join(role))
        })
    }
}

/// The REST API: where it listens, TLS, and who may write.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Address of the REST API.
    #[arg(long, env = "MERIDIAN_API_ADDR", default_value = "127.0.0.1:5681")]
    pub api_addr: SocketAddr,

    /// PEM certificate (chain) for the REST API; with --api-tls-key the API
    /// speaks HTTPS (meridianctl --ca-cert to trust a private CA).
    #[arg(long, env = "MERIDIAN_API_TLS_CERT", requires = "api_tls_key")]
    pub api_tls_cert: Option<PathBuf>,

    /// PEM private key for --api-tls-cert.
    #[arg(long, env = "MERIDIAN_API_TLS_KEY", requires = "api_tls_cert")]
    pub api_tls_key: Option<PathBuf>,

    /// Admin token for writes and Secrets. Default: read from, or generated
    /// into, `<data-dir>/admin-token`.
    #[arg(long, env = "MERIDIAN_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Treat requests from loopback addresses as admin without a token (when
    /// their `Host` is a loopback name or address or an --api-host name).
    #[arg(long, env = "MERIDIAN_API_TRUST_LOOPBACK", default_value_t = true, action = clap::ArgAction::Set)]
    pub api_trust_loopback: bool,

    /// A host name (no port) under which loopback callers are still trusted,
    /// besides `localhost`, 127.0.0.0/8 and `[::1]`; repeatable (env:
    /// comma-separated). Any other `Host` from loopback needs the token
    /// (a guard against DNS rebinding).
    #[arg(long = "api-host", env = "MERIDIAN_API_HOSTS", value_delimiter = ',')]
    pub api_hosts: Vec<String>,

    /// Largest encoded size of one resource, in bytes.
    #[arg(long, env = "MERIDIAN_MAX_RESOURCE_BYTES", default_value_t = DEFAULT_MAX_RESOURCE_BYTES)]
    pub max_resource_bytes: usize,
}

impl ApiArgs {
    /// The API's TLS configuration when --api-tls-cert/--api-tls-key are set.
    ///
    /// Errors: unreadable files, no certificate, or a key that does not match.
    pub fn tls(&self) -> anyhow::Result<Option<std::sync::Arc<rustls::ServerConfig>>> {
        use anyhow::Context;
        match (&self.api_tls_cert, &self.api_tls_key) {
            (Some(cert), Some(key)) => {
                Ok(Some(meridian_rest::server::tls_config(cert, key).context("--api-tls-cert/--api-tls-key")?))
            }
            _ => Ok(None),
        }
    }
}

/// Logging.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log filter (`info`, `debug`, `meridian_core=debug,info`, ...).
    #[arg(long, env = "MERIDIAN_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}
