//! `meridian-global`: the source of truth. Users apply resources through its
//! REST API; it stores them (SQLite by default, PostgreSQL for production and
//! several replicas) and, once zones connect, streams them down.
//!
//! ```text
//!   meridianctl / HTTP ──▶ api::rest ──▶ api::Manager ──▶ store (sqlite | postgres)
//!                                                          │ change feed
//!                                                          ▼
//!   zones ◀══ KDS (gRPC, TLS, zone tokens) ══ kds::{cache, stream} ──▶ ZoneInsight
//! ```

pub mod kds;
pub mod tls;
pub mod tokens;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use meridian_api::{
    Manager, Role, process,
    auth::Auth,
    metrics::ApiMetrics,
    rest::{self, ApiState, ServerInfo},
};
use tokio::net::TcpListener;

/// Meridian global control plane.
#[derive(Debug, Parser)]
#[command(name = "meridian-global", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the global control plane until SIGTERM or SIGINT.
    Run(RunArgs),
}

/// Flags of `meridian-global run`; each has a MERIDIAN_* environment variable.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Where the global keeps its state: the SQLite file (unless --store says
    /// otherwise) and the admin token.
    #[arg(long, env = "MERIDIAN_DATA_DIR", default_value_os_t = default_data_dir())]
    pub data_dir: PathBuf,

    /// Store URL: `sqlite:PATH` or `postgres://user:pass@host/db`.
    /// Default: `sqlite:<data-dir>/global.db`.
    #[arg(long, env = "MERIDIAN_STORE")]
    pub store: Option<String>,

    /// Address of the REST API.
    #[arg(long, env = "MERIDIAN_API_ADDR", default_value = "127.0.0.1:5681")]
    pub api_addr: SocketAddr,

    /// Address of the KDS server zones connect to.
    #[arg(long, env = "MERIDIAN_KDS_ADDR", default_value = "0.0.0.0:5685")]
    pub kds_addr: SocketAddr,

    /// Serve KDS without TLS (zones then use grpc://). Only for trusted networks.
    #[arg(long, env = "MERIDIAN_KDS_PLAINTEXT", default_value_t = false, action = clap::ArgAction::Set)]
    pub kds_plaintext: bool,

    /// PEM certificate (chain) for KDS. Default: a CA and certificate generated
    /// into the data directory on first start (`kds-ca.crt` is what zones trust).
    #[arg(long, env = "MERIDIAN_KDS_TLS_CERT", requires = "kds_tls_key")]
    pub kds_tls_cert: Option<PathBuf>,

    /// PEM private key for --kds-tls-cert.
    #[arg(long, env = "MERIDIAN_KDS_TLS_KEY", requires = "kds_tls_cert")]
    pub kds_tls_key: Option<PathBuf>,

    /// Extra names or IPs for the generated KDS certificate (repeatable,
    /// comma-separated in the environment variable).
    #[arg(long, env = "MERIDIAN_KDS_TLS_SAN", value_delimiter = ',')]
    pub kds_tls_san: Vec<String>,

    /// Largest KDS message, in bytes; larger updates are split.
    #[arg(long, env = "MERIDIAN_KDS_MAX_MESSAGE_BYTES", default_value_t = kds::DEFAULT_MAX_MESSAGE_BYTES)]
    pub kds_max_message_bytes: usize,

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

    /// Treat requests from loopback addresses as admin without a token.
    #[arg(long, env = "MERIDIAN_API_TRUST_LOOPBACK", default_value_t = true, action = clap::ArgAction::Set)]
    pub api_trust_loopback: bool,

    /// Largest encoded size of one resource, in bytes.
    #[arg(long, env = "MERIDIAN_MAX_RESOURCE_BYTES", default_value_t = meridian_api::manager::DEFAULT_MAX_RESOURCE_BYTES)]
    pub max_resource_bytes: usize,

    /// Log filter (`info`, `debug`, `meridian_api=debug,info`, ...).
    #[arg(long, env = "MERIDIAN_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Change-log retention (--change-log-retention, --change-log-max-rows).
    #[command(flatten)]
    pub change_log: meridian_store::ChangeLogArgs,
}

fn default_data_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".meridian").join("global"))
        .unwrap_or_else(|| PathBuf::from(".meridian/global"))
}

/// Entry point: runs the command and turns failures into an exit code.
pub fn main(cli: Cli) -> ExitCode {
    let Command::Run(args) = cli.command;
    let log_level = args.log_level.clone();
    process::run_until_signal("meridian-global", &log_level, |shutdown| run(args, shutdown))
}

/// Runs the global until `shutdown` resolves.
pub async fn run(
    args: RunArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = process::open_store(&args.data_dir, args.store.as_deref(), "global.db").await?;
    let token = process::admin_token(args.admin_token.as_deref(), &args.data_dir)?;

    let instance_id = process::instance_id();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ApiMetrics::register(&mut registry);
    let store_metrics = meridian_api::metrics::StoreMetrics::register(&mut registry);
    let kds_metrics = kds::metrics::KdsMetrics::register(&mut registry);
    // One resource must fit in one KDS message with room for its envelope.
    let resource_limit = args.max_resource_bytes.min(args.kds_max_message_bytes.saturating_sub(64 * 1024));
    let manager = Manager::new(store.clone(), Role::Global)
        .with_max_resource_bytes(resource_limit)
        .with_metrics(store_metrics);
    let tokens = tokens::ZoneTokens::new(manager.clone());
    let state = ApiState {
        manager: manager.clone(),
        auth: Auth::new(token, args.api_trust_loopback),
        info: Arc::new(ServerInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            instance_id: instance_id.clone(),
            hostname: process::hostname(),
            zone: None,
        }),
        metrics,
        registry: Arc::new(registry),
    };

    let tls = if args.kds_plaintext {
        None
    } else {
        let (cfg, ca) = tls::server_config(
            &args.data_dir,
            args.kds_tls_cert.as_deref(),
            args.kds_tls_key.as_deref(),
            &args.kds_tls_san,
        )?;
        if let Some(ca) = ca {
            meridian_api::server::announce(&format!("meridian-global: KDS CA at {}", ca.display()));
        }
        Some(cfg)
    };

    let api_tls = match (&args.api_tls_cert, &args.api_tls_key) {
        (Some(cert), Some(key)) => Some(meridian_api::server::tls_config(cert, key).context("--api-tls-cert/--api-tls-key")?),
        _ => None,
    };
    let api_scheme = if api_tls.is_some() { "https" } else { "http" };
    let api_listener = TcpListener::bind(args.api_addr)
        .await
        .with_context(|| format!("cannot listen on {} for the API", args.api_addr))?;
    let kds_listener = TcpListener::bind(args.kds_addr)
        .await
        .with_context(|| format!("cannot listen on {} for KDS", args.kds_addr))?;
    let api_addr = api_listener.local_addr()?;
    let kds_addr = kds_listener.local_addr()?;

    let (cache, follower) = kds::cache::start(store.clone()).await.context("cannot load resources for KDS")?;
    let kds_server =
        kds::KdsServer::new(manager, cache, tokens.clone(), instance_id, args.kds_max_message_bytes, kds_metrics);

    let stop_rx = process::stop_channel(shutdown);
    let stopped = process::stopped;

    let router = rest::router(state.clone()).merge(token_routes(state, tokens));
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn({
        let stop = stopped(stop_rx.clone());
        async move {
            tokio::select! {
                r = follower => r.context("KDS cache follower stopped"),
                () = stop => Ok(()),
            }
        }
    });
    tasks.spawn({
        let stop = stopped(stop_rx.clone());
        async move { meridian_api::server::serve(api_listener, api_tls, router, stop).await.context("API server failed") }
    });
    tasks.spawn({
        let stop = stopped(stop_rx.clone());
        async move { kds::serve(kds_listener, kds_server, tls, stop).await.context("KDS server failed") }
    });
    tasks.spawn({
        // Change-log compaction; stops with the process.
        let stop = stopped(stop_rx.clone());
        let compactor = meridian_store::spawn_compactor(store.clone(), &args.change_log);
        async move {
            stop.await;
            compactor.abort();
            Ok(())
        }
    });
    tracing::info!(%api_addr, %kds_addr, tls = !args.kds_plaintext, "listening");
    meridian_api::server::announce(&format!("meridian-global: API on {api_scheme}://{api_addr}"));
    meridian_api::server::announce(&format!("meridian-global: KDS on {}://{kds_addr}", if args.kds_plaintext { "grpc" } else { "grpcs" }));

    let result = process::supervise(tasks, stop_rx).await;
    tracing::info!("stopped");
    result
}

#[derive(serde::Deserialize)]
struct ZoneTokenRequest {
    zone: Option<String>,
    #[serde(rename = "validFor", alias = "valid_for")]
    valid_for: Option<String>,
}

/// `POST /tokens/zone {"zone": "zone-1", "validFor": "8760h"}` → the token,
/// as plain text (admin only).
fn token_routes(state: ApiState, tokens: tokens::ZoneTokens) -> axum::Router {
    use axum::{
        extract::{ConnectInfo, State},
        http::HeaderMap,
        response::IntoResponse,
    };
    use meridian_api::error::ApiError;
    async fn issue(
        State((state, tokens)): State<(ApiState, tokens::ZoneTokens)>,
        headers: HeaderMap,
        ci: ConnectInfo<meridian_api::server::PeerAddr>,
        body: axum::body::Bytes,
    ) -> Result<axum::response::Response, ApiError> {
        rest::require_admin(&state, &headers, &ci)?;
        let req: ZoneTokenRequest = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("request body must be {{\"zone\": NAME, \"validFor\": DURATION}}: {e}")))?;
        let zone = req.zone.unwrap_or_default();
        meridian_sync_proto::kds::check_zone_name(&zone).map_err(|r| ApiError::field("zone", r))?;
        let valid_for = match req.valid_for.as_deref() {
            None | Some("") => std::time::Duration::from_secs(365 * 24 * 3600),
            Some(v) => humantime::parse_duration(v)
                .map_err(|e| ApiError::field("validFor", format!("{v:?} is not a duration like 24h or 30d: {e}")))?,
        };
        let (token, claims) = tokens.issue(&zone, valid_for).await?;
        tracing::info!(zone = %zone, jti = %claims.jti, exp = claims.exp, "issued zone token");
        Ok(token.into_response())
    }
    axum::Router::new().route("/tokens/zone", axum::routing::post(issue)).with_state((state, tokens))
}
