//! `meridian-zone`: one per zone. It keeps a persisted copy of what the
//! global sent, registers the zone's Dataplanes, and serves xDS to the
//! zone's gateway Envoys.
//!
//! ```text
//!   global ◀══ KDS (one gRPC connection) ══▶ kds client ──▶ store ◀── api::rest (Dataplanes)
//!                                                             │ watch
//!                                                             ▼
//!                                  Envoy ◀══ ADS ══ xds server ◀── gateway generator
//! ```

pub mod http;
pub mod kds;

pub mod dataplane;
pub mod gateway;
pub mod xds;

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

/// Meridian zone control plane.
#[derive(Debug, Parser)]
#[command(name = "meridian-zone", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the zone control plane until SIGTERM or SIGINT.
    Run(RunArgs),
    /// Envoy for a gateway Dataplane: print its bootstrap, or register it and run Envoy.
    Dataplane(dataplane::DataplaneArgs),
}

/// Flags of `meridian-zone run`; each has a MERIDIAN_* environment variable.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// This zone's name, unique among the global's zones.
    #[arg(long, env = "MERIDIAN_ZONE", default_value = "zone-1")]
    pub zone: String,

    /// Where the zone keeps its state (the SQLite file unless --store says
    /// otherwise, and the admin token).
    #[arg(long, env = "MERIDIAN_DATA_DIR", default_value_os_t = default_data_dir())]
    pub data_dir: PathBuf,

    /// Store URL: `sqlite:PATH` or `postgres://...`. Default: `sqlite:<data-dir>/zone.db`.
    #[arg(long, env = "MERIDIAN_STORE")]
    pub store: Option<String>,

    /// Address of the zone's REST API (Dataplanes are registered here).
    #[arg(long, env = "MERIDIAN_API_ADDR", default_value = "127.0.0.1:5681")]
    pub api_addr: SocketAddr,

    /// Address of the xDS server the zone's Envoys connect to.
    #[arg(long, env = "MERIDIAN_XDS_ADDR", default_value = "0.0.0.0:5678")]
    pub xds_addr: SocketAddr,

    /// The global's KDS address: `grpcs://host:5685` (TLS) or `grpc://host:5685`
    /// (plaintext, only when asked for explicitly). Without it the zone runs
    /// standalone and accepts every resource type through its own API.
    #[arg(long, env = "MERIDIAN_GLOBAL_ADDRESS")]
    pub global_address: Option<String>,

    /// File holding this zone's token (`meridianctl generate zone-token --zone NAME`).
    #[arg(long, env = "MERIDIAN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// CA certificate (PEM) of the global's KDS server, for grpcs://.
    #[arg(long, env = "MERIDIAN_GLOBAL_CA")]
    pub global_ca: Option<PathBuf>,

    /// Largest KDS message, in bytes.
    #[arg(long, env = "MERIDIAN_KDS_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub kds_max_message_bytes: usize,

    /// Admin token for writes. Default: read from, or generated into, `<data-dir>/admin-token`.
    #[arg(long, env = "MERIDIAN_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Treat requests from loopback addresses as admin without a token.
    #[arg(long, env = "MERIDIAN_API_TRUST_LOOPBACK", default_value_t = true, action = clap::ArgAction::Set)]
    pub api_trust_loopback: bool,

    /// Log filter (`info`, `debug`, ...).
    #[arg(long, env = "MERIDIAN_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Change-log retention (--change-log-retention, --change-log-max-rows).
    #[command(flatten)]
    pub change_log: meridian_store::ChangeLogArgs,
}

fn default_data_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".meridian").join("zone"))
        .unwrap_or_else(|| PathBuf::from(".meridian/zone"))
}

/// Entry point: runs the command and turns failures into an exit code.
pub fn main(cli: Cli) -> ExitCode {
    let args = match cli.command {
        Command::Run(args) => args,
        Command::Dataplane(dp) => return dataplane::main(dp),
    };
    let log_level = args.log_level.clone();
    process::run_until_signal("meridian-zone", &log_level, |shutdown| run(args, shutdown))
}

/// Runs the zone until `shutdown` resolves.
pub async fn run(
    args: RunArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = process::open_store(&args.data_dir, args.store.as_deref(), "zone.db").await?;
    tracing::info!(zone = %args.zone, "zone starting");
    let token = process::admin_token(args.admin_token.as_deref(), &args.data_dir)?;

    let kds_config = match &args.global_address {
        None => None,
        Some(address) => {
            if let Err(reason) = meridian_sync_proto::kds::check_zone_name(&args.zone) {
                anyhow::bail!("--zone: {reason}");
            }
            let token_file = args.token_file.as_ref().context(
                "--global-address needs --token-file (generate one on the global: meridianctl generate zone-token --zone NAME)",
            )?;
            let token = std::fs::read_to_string(token_file)
                .with_context(|| format!("cannot read --token-file {}", token_file.display()))?;
            let cfg = kds::KdsClientConfig {
                zone: args.zone.clone(),
                global_address: address.clone(),
                token: token.trim().to_string(),
                global_ca: args.global_ca.clone(),
                max_message_bytes: args.kds_max_message_bytes,
            };
            kds::endpoint(&cfg)?; // fail at start on a bad address or missing CA
            Some(cfg)
        }
    };
    let federated = kds_config.is_some();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ApiMetrics::register(&mut registry);
    let store_metrics = meridian_api::metrics::StoreMetrics::register(&mut registry);
    let manager = Manager::new(store.clone(), Role::Zone { federated }).with_metrics(store_metrics);
    let instance_id = process::instance_id();
    let state = ApiState {
        manager: manager.clone(),
        auth: Auth::new(token, args.api_trust_loopback),
        info: Arc::new(ServerInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            instance_id: instance_id.clone(),
            hostname: process::hostname(),
            zone: Some(args.zone.clone()),
        }),
        metrics,
        registry: Arc::new(registry),
    };

    let stop_rx = process::stop_channel(shutdown);
    let stopped = process::stopped;

    let xds_listener = TcpListener::bind(args.xds_addr)
        .await
        .with_context(|| format!("cannot listen on {} for xDS", args.xds_addr))?;
    let xds_addr = xds_listener.local_addr()?;
    let api_listener = TcpListener::bind(args.api_addr)
        .await
        .with_context(|| format!("cannot listen on {} for the API", args.api_addr))?;
    let api_addr = api_listener.local_addr()?;
    meridian_api::server::announce(&format!("meridian-zone: API on http://{api_addr}"));
    tracing::info!(%api_addr, "API listening");
    meridian_api::server::announce(&format!("meridian-zone: xDS on {xds_addr}"));
    tracing::info!(%xds_addr, "xDS listening");

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn({
        let stop = stopped(stop_rx.clone());
        async move {
            let router = rest::router(state.clone()).merge(http::routes(state, xds_addr));
            meridian_api::server::serve(api_listener, None, router, stop)
                .await
                .context("API server failed")
        }
    });
    if let Some(cfg) = kds_config {
        let stop = stopped(stop_rx.clone());
        let manager = manager.clone();
        tasks.spawn(async move { kds::run(cfg, manager, stop).await.context("KDS client failed") });
    }
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
    // XDS-WIRING: the xDS server task is spawned here.
    tasks.spawn({
        let stop = stopped(stop_rx.clone());
        let config = xds::XdsConfig { zone: args.zone.clone(), instance_id: instance_id.clone() };
        let store = store.clone();
        async move { xds::serve(xds_listener, store, config, stop).await.context("xDS server failed") }
    });

    // A critical task that ends takes the process down with it.
    let result = process::supervise(tasks, stop_rx).await;
    tracing::info!("stopped");
    result
}
