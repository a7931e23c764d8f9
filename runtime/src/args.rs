//! The flag groups `meridian-global run` and `meridian-zone run` share,
//! flattened into each (linkerd2 `policy-controller/runtime/src/args.rs`).
//! Every flag has a `MERIDIAN_*` environment variable.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;
use meridian_core::manager::DEFAULT_MAX_RESOURCE_BYTES;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{redact_secret, redact_store};

/// Where the process keeps its state.
#[derive(Debug, Clone, Args, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StateArgs {
    /// Where the process keeps its state: the SQLite file (unless --store
    /// says otherwise) and the admin token. Default: ~/.meridian/global for
    /// the global, ~/.meridian/zone for a zone.
    #[arg(long, env = "MERIDIAN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Store URL: `sqlite:PATH` or `postgres://user:pass@host/db`.
    /// Default: `sqlite:<data-dir>/<role>.db`.
    #[arg(long, env = "MERIDIAN_STORE")]
    #[serde(serialize_with = "redact_store")]
    pub store: Option<String>,

    /// PostgreSQL: how long a request waits for a database connection before
    /// failing (503 at the API) when the database is down or saturated, as a
    /// duration (`2s`, `500ms`, `1m`).
    #[arg(long, env = "MERIDIAN_STORE_ACQUIRE_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "human_duration")]
    pub store_acquire_timeout: std::time::Duration,
}

impl StateArgs {
    /// `--data-dir`; else `$HOME/.meridian/<role>`; without `$HOME` (a
    /// container, a system service) `/var/lib/meridian/<role>` when
    /// `/var/lib/meridian` exists and is writable or can be created, as
    /// system daemons keep state. Never the current directory.
    ///
    /// Errors: no `$HOME` and `/var/lib/meridian` unusable (the message
    /// names `--data-dir`).
    pub fn data_dir(&self, role: &str) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.data_dir {
            return Ok(dir.clone());
        }
        if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            return Ok(PathBuf::from(home).join(".meridian").join(role));
        }
        let system = PathBuf::from(SYSTEM_STATE_DIR);
        match std::fs::create_dir_all(&system) {
            Ok(()) if !is_read_only(&system) => Ok(system.join(role)),
            Ok(()) => anyhow::bail!(
                "$HOME is not set and {SYSTEM_STATE_DIR} is not writable: pass --data-dir (MERIDIAN_DATA_DIR)"
            ),
            Err(e) => anyhow::bail!(
                "$HOME is not set and {SYSTEM_STATE_DIR} cannot be created ({e}): pass --data-dir (MERIDIAN_DATA_DIR)"
            ),
        }
    }
}

/// The state directory of a process started without `$HOME` and without
/// `--data-dir` (the FHS place for a daemon's state).
pub const SYSTEM_STATE_DIR: &str = "/var/lib/meridian";

/// Whether this process cannot create a file in `dir` (tried with a probe
/// file, removed at once: permission bits alone miss read-only mounts).
fn is_read_only(dir: &std::path::Path) -> bool {
    let probe = dir.join(format!(".write-probe-{}", std::process::id()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            false
        }
        Err(_) => true,
    }
}

/// The REST API: where it listens, TLS, and who may write.
#[derive(Debug, Clone, Args, Serialize)]
#[serde(rename_all = "camelCase")]
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
    #[serde(serialize_with = "redact_secret")]
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

/// What every listener of the process (REST API, KDS, xDS) enforces on
/// its connections ([`meridian_rest::listener`]): a cap, and deadlines for
/// clients that connect and then say nothing.
#[derive(Debug, Clone, Args, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerArgs {
    /// Open connections at most, per listener; beyond it the newest
    /// connection is closed at once, so that admitted callers, connected
    /// zones and Envoys keep working and the process keeps file descriptors.
    /// Default: this process's share of its open-file limit (RLIMIT_NOFILE,
    /// raised to the hard limit at start): (limit - 256) / 3, at least 256
    /// (65536 → 21760; 1024 → 256).
    #[arg(long, env = "MERIDIAN_MAX_CONNECTIONS", default_value_t = crate::fdlimit::default_max_connections(),
          value_parser = at_least_one)]
    pub max_connections: usize,

    /// A connection that sends nothing (no HTTP/2 preface, no request line)
    /// for this long after connecting is closed; on the API, so is an HTTP/1
    /// request whose headers take longer (`10s`, `1m`).
    #[arg(long, env = "MERIDIAN_IDLE_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    #[serde(serialize_with = "human_duration")]
    pub idle_timeout: Duration,

    /// A TLS handshake not finished within this is abandoned.
    #[arg(long, env = "MERIDIAN_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    #[serde(serialize_with = "human_duration")]
    pub tls_handshake_timeout: Duration,
}

impl ListenerArgs {
    /// The limits these flags describe.
    pub fn limits(&self) -> meridian_rest::listener::Limits {
        meridian_rest::listener::Limits {
            max_connections: self.max_connections,
            idle_timeout: self.idle_timeout,
            handshake_timeout: self.tls_handshake_timeout,
        }
    }
}

/// A count of at least 1.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A humantime duration above zero.
fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() { Err("must be above zero".to_string()) } else { Ok(d) }
}

/// What a global or a standalone zone creates by itself at start.
#[derive(Debug, Clone, Args, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DefaultsArgs {
    /// Do not create the `default` Mesh at start. Without this flag a global
    /// or a standalone zone creates it whenever the store holds no Mesh named
    /// `default`: on first start, and again at the next start after a user
    /// deleted it, as the incumbent does (KUMA_DEFAULTS_SKIP_MESH_CREATION).
    /// A zone connected to a global never creates it: Meshes come from the
    /// global.
    #[arg(long, env = "MERIDIAN_SKIP_DEFAULT_MESH", action = clap::ArgAction::SetTrue)]
    pub skip_default_mesh: bool,
}

/// Logging.
#[derive(Debug, Clone, Args, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogArgs {
    /// Log filter (`info`, `debug`, `meridian_core=debug,info`, ...).
    #[arg(long, env = "MERIDIAN_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Log line format on stderr: `text` (human-readable) or `json` (one
    /// object per line: timestamp, level, target, fields), for log
    /// collectors. ANSI colour is used only when stderr is a terminal.
    #[arg(long, env = "MERIDIAN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (tracing-subscriber's default format).
    Text,
    /// One JSON object per line.
    Json,
}

/// How much change log to keep (flattened into both `run` commands). The
/// log only lets a follower resume; the current state is elsewhere.
#[derive(Debug, Clone, Args, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeLogArgs {
    /// Keep change-log rows for this long (`90s`, `30m`, `1h`); a follower
    /// further behind re-lists. Longer than any expected reconnect, so a zone
    /// or replica that briefly lost its stream resumes without a re-list.
    #[arg(long, env = "MERIDIAN_CHANGE_LOG_RETENTION", default_value = "1h", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "human_duration")]
    pub change_log_retention: Duration,

    /// Keep at most this many change-log rows (the newest).
    #[arg(long, env = "MERIDIAN_CHANGE_LOG_MAX_ROWS", default_value_t = 100_000)]
    pub change_log_max_rows: u64,

    /// How often the change log is compacted (at least 1s).
    #[arg(long, env = "MERIDIAN_CHANGE_LOG_COMPACT_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "human_duration")]
    pub change_log_compact_interval: Duration,
}

impl ChangeLogArgs {
    /// Compacts `store` as these flags say until `shutdown` is cancelled.
    pub async fn run_compactor(&self, store: meridian_store::Store, shutdown: CancellationToken) -> anyhow::Result<()> {
        let retention =
            meridian_store::Retention { max_age: self.change_log_retention, max_rows: self.change_log_max_rows };
        tokio::select! {
            () = meridian_store::compact_every(store, retention, self.change_log_compact_interval) => Ok(()),
            () = shutdown.cancelled() => Ok(()),
        }
    }
}

fn human_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}
