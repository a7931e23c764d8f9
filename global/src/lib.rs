//! `meridian-global`: the source of truth. Users apply resources through its
//! REST API; it stores them (SQLite by default, PostgreSQL for production and
//! several replicas) and, once zones connect, streams them down.
//!
//! ```text
//!   meridianctl / HTTP ──▶ rest ──▶ core::Manager ──▶ store (sqlite | postgres)
//!                                                          │ change feed
//!                                                          ▼
//!   zones ◀══ KDS (gRPC, TLS, zone tokens) ══ kds::{cache, stream} ──▶ ZoneInsight
//! ```

pub mod diff;
pub mod gui;
pub mod inspect;
pub mod kds;
pub mod propagation;
pub mod tls;
pub mod tokens;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use meridian_core::{Manager, Role, metrics::StoreMetrics};
use meridian_rest::{ApiState, ServerInfo, auth::Auth, metrics::ApiMetrics};
use meridian_runtime::{
    CancellationToken, Tasks, announce,
    args::{ApiArgs, ChangeLogArgs, DefaultsArgs, ListenerArgs, LogArgs, StateArgs},
    state,
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
#[derive(Debug, Clone, Args, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub state: StateArgs,

    #[command(flatten)]
    #[serde(flatten)]
    pub api: ApiArgs,

    #[command(flatten)]
    #[serde(flatten)]
    pub defaults: DefaultsArgs,

    /// Connection cap and deadlines of every listener (--max-connections,
    /// --idle-timeout, --tls-handshake-timeout).
    #[command(flatten)]
    #[serde(flatten)]
    pub listeners: ListenerArgs,

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

    /// Largest KDS message, in bytes (at least 65536); larger updates are
    /// split, to the smaller of this and the zone's cap. A resource may use
    /// all of it but the envelope's room (a quarter, at most 64 KiB).
    #[arg(long, env = "MERIDIAN_KDS_MAX_MESSAGE_BYTES", default_value_t = kds::DEFAULT_MAX_MESSAGE_BYTES,
          value_parser = meridian_sync_proto::kds::parse_max_message_bytes)]
    pub kds_max_message_bytes: usize,

    #[command(flatten)]
    #[serde(flatten)]
    pub log: LogArgs,

    /// The diagnostics listener (--diagnostics-address).
    #[command(flatten)]
    #[serde(flatten)]
    pub diagnostics: meridian_runtime::diagnostics::DiagnosticsArgs,

    /// Change-log retention (--change-log-retention, --change-log-max-rows).
    #[command(flatten)]
    #[serde(flatten)]
    pub change_log: ChangeLogArgs,
}

/// Entry point: runs the command and turns failures into an exit code.
pub fn main(cli: Cli) -> ExitCode {
    let Command::Run(args) = cli.command;
    let log = args.log.clone();
    meridian_runtime::run_until_signal("meridian-global", &log, |shutdown| run(args, shutdown))
}

/// Runs the global until `shutdown` is cancelled (or one of its critical
/// tasks fails, which cancels it).
pub async fn run(args: RunArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let data_dir = args.state.data_dir("global")?;
    let store = state::open_store(&data_dir, &args.state, "global.db").await?;
    let token = state::admin_token(args.api.admin_token.as_deref(), &data_dir)?;

    let instance_id = state::instance_id();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ApiMetrics::register(&mut registry);
    let store_metrics = StoreMetrics::register(&mut registry);
    let kds_metrics = kds::metrics::KdsMetrics::register(&mut registry);
    meridian_runtime::metrics::register(&mut registry, "global", env!("CARGO_PKG_VERSION"), &instance_id);
    // One resource must fit in one KDS message with room for its envelope.
    let resource_limit =
        args.api.max_resource_bytes.min(meridian_sync_proto::kds::resource_budget(args.kds_max_message_bytes));
    let manager =
        Manager::new(store.clone(), Role::Global).with_max_resource_bytes(resource_limit).with_metrics(store_metrics);
    state::default_mesh(&manager, args.defaults.skip_default_mesh).await?;
    let config = meridian_runtime::config::document(
        "global",
        &args,
        &data_dir,
        &state::store_url(&data_dir, args.state.store.as_deref(), "global.db"),
    );
    let tokens = meridian_tokens::Tokens::new(manager.clone());
    // Keys exist before the first token is asked for, so the Dataplane
    // public key is already in every zone when a token is presented there.
    for kind in [meridian_tokens::TokenKind::Zone, meridian_tokens::TokenKind::Dataplane] {
        tokens.keys(kind).ensure().await.with_context(|| format!("cannot create the {kind} token signing key"))?;
    }
    let state = ApiState {
        manager: manager.clone(),
        auth: Auth::new(token, args.api.api_trust_loopback).with_api_hosts(args.api.api_hosts.clone()),
        info: Arc::new(ServerInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            instance_id: instance_id.clone(),
            hostname: state::hostname(),
            zone: None,
        }),
        metrics,
        registry: Arc::new(registry),
        config: Arc::new(config),
    };

    let tls = if args.kds_plaintext {
        None
    } else {
        let (cfg, ca) = tls::server_config(
            &data_dir,
            args.kds_tls_cert.as_deref(),
            args.kds_tls_key.as_deref(),
            &args.kds_tls_san,
        )?;
        if let Some(ca) = ca {
            announce(&format!("meridian-global: KDS CA at {}", ca.display()));
        }
        Some(cfg)
    };

    let api_tls = args.api.tls()?;
    let api_scheme = if api_tls.is_some() { "https" } else { "http" };
    let api_listener = TcpListener::bind(args.api.api_addr)
        .await
        .with_context(|| format!("cannot listen on {} for the API", args.api.api_addr))?;
    let kds_listener = TcpListener::bind(args.kds_addr)
        .await
        .with_context(|| format!("cannot listen on {} for KDS", args.kds_addr))?;
    let api_addr = api_listener.local_addr()?;
    let kds_addr = kds_listener.local_addr()?;

    let (cache, follower) = kds::cache::start(store.clone(), kds_metrics.delta_generation.clone())
        .await
        .context("cannot load resources for KDS")?;
    let kds_server = kds::KdsServer::new(
        manager.clone(),
        cache,
        tokens.clone(),
        instance_id,
        args.kds_max_message_bytes,
        kds_metrics,
        shutdown.clone(),
    );

    let api_router = meridian_rest::router(state.clone())
        .merge(propagation::routes(state.clone(), kds_server.held()))
        .merge(diff::routes(state.clone()))
        .merge(tokens::routes(state.clone(), tokens))
        .merge(inspect::routes(state.clone(), kds_server.envoy_admin.clone()))
        .layer(axum::middleware::from_fn_with_state(state.clone(), meridian_rest::refuse_wrong_token))
        .layer(axum::middleware::from_fn_with_state((manager.clone(), kds_server.held()), propagation::header));
    // The GUI at /gui asks the API router itself for propagation status.
    let router = api_router.clone().merge(gui::routes(
        state.clone(),
        api_router,
        api_tls.is_some(),
        kds_server.envoy_admin.clone(),
    ));
    let mut tasks = Tasks::new(shutdown.clone());
    tasks.spawn("KDS cache follower", {
        let stop = shutdown.clone().cancelled_owned();
        async move {
            tokio::select! {
                r = follower => r,
                () = stop => Ok(()),
            }
        }
    });
    let limits = args.listeners.limits();
    args.diagnostics.spawn("meridian-global", &mut tasks, state.clone(), limits, &shutdown).await?;
    tasks.spawn("API server", {
        let stop = shutdown.clone().cancelled_owned();
        async move { Ok(meridian_rest::server::serve(api_listener, api_tls, limits, router, stop).await?) }
    });
    tasks.spawn("KDS server", {
        let stop = shutdown.clone().cancelled_owned();
        async move { kds::serve(kds_listener, kds_server, tls, limits, stop).await }
    });
    // Mesh mTLS: each builtin backend's root CA (kept here) and one
    // intermediate per Zone record (sent to that zone only).
    tasks.spawn("mesh CA", {
        let (manager, shutdown) = (manager.clone(), shutdown.clone());
        async move { meridian_core::mesh_ca::run(manager, meridian_core::mesh_ca::Zones::Recorded, shutdown).await }
    });
    tasks.spawn("change-log compactor", {
        let (change_log, store, shutdown) = (args.change_log.clone(), store.clone(), shutdown.clone());
        async move { change_log.run_compactor(store, shutdown).await }
    });
    tracing::info!(%api_addr, %kds_addr, tls = !args.kds_plaintext, "listening");
    if api_scheme == "http" && !api_addr.ip().is_loopback() {
        tracing::warn!(
            %api_addr,
            "the API (and the GUI's sign-in) is served over plain HTTP to other hosts: admin tokens cross the \
             network in clear text; give --api-tls-cert/--api-tls-key, or bind it to 127.0.0.1"
        );
    }
    announce(&format!("meridian-global: API on {api_scheme}://{api_addr}"));
    announce(&format!("meridian-global: GUI on {api_scheme}://{api_addr}/gui"));
    announce(&format!("meridian-global: KDS on {}://{kds_addr}", if args.kds_plaintext { "grpc" } else { "grpcs" }));

    tasks.wait().await
}
