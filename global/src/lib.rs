//! `meridian-global`: the source of truth. Users apply resources through its
//! REST API; it stores them (SQLite by default, PostgreSQL for production and
//! several replicas) and, once zones connect, streams them down.
//!
//! ```text
//!   meridianctl / HTTP ──▶ api::rest ──▶ api::Manager ──▶ store (sqlite | postgres)
//! ```

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use meridian_api::{
    Manager, Role,
    auth::Auth,
    metrics::ApiMetrics,
    rest::{self, ApiState, ServerInfo},
};
use meridian_store::Store;
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
}

fn default_data_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".meridian").join("global"))
        .unwrap_or_else(|| PathBuf::from(".meridian/global"))
}

/// Entry point: runs the command and turns failures into an exit code.
pub fn main(cli: Cli) -> ExitCode {
    let Command::Run(args) = cli.command;
    init_logging(&args.log_level);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("meridian-global: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meridian-global: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested");
}

/// Runs the global until `shutdown` resolves.
pub async fn run(
    args: RunArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data directory {}", args.data_dir.display()))?;
    let store_url = args
        .store
        .clone()
        .unwrap_or_else(|| format!("sqlite:{}", args.data_dir.join("global.db").display()));
    let store = Store::connect(&store_url).await.with_context(|| format!("cannot open store {store_url}"))?;
    tracing::info!(backend = store.backend_name(), "store ready");

    let token = match &args.admin_token {
        Some(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => {
            let (t, path) = Auth::load_or_create_token(&args.data_dir)
                .with_context(|| format!("cannot read or create the admin token in {}", args.data_dir.display()))?;
            tracing::info!(path = %path.display(), "admin token");
            t
        }
    };

    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ApiMetrics::register(&mut registry);
    let manager = Manager::new(store, Role::Global).with_max_resource_bytes(args.max_resource_bytes);
    let state = ApiState {
        manager,
        auth: Auth::new(token, args.api_trust_loopback),
        info: Arc::new(ServerInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            instance_id: instance_id(),
            hostname: hostname(),
            zone: None,
        }),
        metrics,
        registry: Arc::new(registry),
    };

    let listener = TcpListener::bind(args.api_addr)
        .await
        .with_context(|| format!("cannot listen on {} for the API", args.api_addr))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "API listening");
    println!("meridian-global: API on http://{addr}");
    meridian_api::server::serve(listener, rest::router(state), shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// `<hostname>-<random>`: identifies this process among replicas.
pub fn instance_id() -> String {
    format!("{}-{:08x}", hostname(), rand::random::<u32>())
}
