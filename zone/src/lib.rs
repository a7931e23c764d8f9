//! `meridian-zone`: one per zone. It keeps a persisted copy of what the
//! global sent, registers the zone's Dataplanes, and serves xDS to the
//! zone's Envoys (builtin and delegated gateways, sidecars).
//!
//! ```text
//!   global ◀══ KDS (one gRPC connection) ══▶ kds client ──▶ store ◀── rest (Dataplanes)
//!                                                             │ watch
//!                                                             ▼
//!                                  Envoy ◀══ ADS ══ xds server ◀── generator (gateways, sidecars)
//! ```

pub mod http;
pub mod inspect;
pub mod kds;
pub mod mtls;

pub mod available_services;
pub mod dataplane;
pub mod dataplane_cleanup;
pub mod gateway;
pub mod global_address;
pub mod xds;

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

/// Meridian zone control plane.
#[derive(Debug, Parser)]
#[command(name = "meridian-zone", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once at start; boxing the flags buys nothing")]
pub enum Command {
    /// Run the zone control plane until SIGTERM or SIGINT.
    Run(Box<RunArgs>),
    /// Envoy for a Dataplane (gateway or sidecar): print its bootstrap, or register it and run Envoy.
    Dataplane(dataplane::DataplaneArgs),
    /// Envoy for a ZoneIngress: register it and run Envoy (cross-zone traffic in).
    Ingress(dataplane::IngressArgs),
}

/// Flags of `meridian-zone run`; each has a MERIDIAN_* environment variable.
#[derive(Debug, Clone, Args, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunArgs {
    /// This zone's name, unique among the global's zones.
    #[arg(long, env = "MERIDIAN_ZONE", default_value = "zone-1")]
    pub zone: String,

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

    /// Address of the xDS server the zone's Envoys connect to.
    #[arg(long, env = "MERIDIAN_XDS_ADDR", default_value = "0.0.0.0:5678")]
    pub xds_addr: SocketAddr,

    /// Serve xDS without TLS (bootstraps then need `--xds-plaintext` too).
    /// Anyone on the path reads every gateway's configuration: only for
    /// trusted networks; a warning is logged at start.
    #[arg(long, env = "MERIDIAN_XDS_PLAINTEXT", action = clap::ArgAction::SetTrue)]
    pub xds_plaintext: bool,

    /// PEM certificate (chain) for the xDS server. Default: a CA and
    /// certificate generated into the data directory on first start
    /// (`xds-ca.crt` is what Envoy bootstraps trust: `meridian-zone
    /// dataplane bootstrap --ca-cert`).
    #[arg(long, env = "MERIDIAN_XDS_TLS_CERT", requires = "xds_tls_key")]
    pub xds_tls_cert: Option<PathBuf>,

    /// PEM private key for --xds-tls-cert.
    #[arg(long, env = "MERIDIAN_XDS_TLS_KEY", requires = "xds_tls_cert")]
    pub xds_tls_key: Option<PathBuf>,

    /// Extra DNS names or IPs for the generated xDS certificate, the names
    /// Envoys dial the zone by (repeatable; comma-separated in the
    /// environment variable). localhost, 127.0.0.1, ::1 and the host name
    /// are always in. Read when the material is generated (first start):
    /// to add names later, delete `xds-ca.crt`, `xds.crt` and `xds.key` from
    /// the data directory (a new CA: bootstraps need the new `xds-ca.crt`).
    #[arg(long, env = "MERIDIAN_XDS_TLS_SAN", value_delimiter = ',')]
    pub xds_tls_san: Vec<String>,
    /// How Envoys authenticate on xDS: `dataplane-token` (default: each
    /// stream presents a Dataplane token for its Dataplane in the gRPC
    /// metadata `authorization`; refused streams get nothing, and a revoked
    /// or expired token cuts an open stream) or `none` (anyone who reaches
    /// the xDS port may claim any Dataplane: trusted networks only).
    #[arg(long, env = "MERIDIAN_XDS_AUTH", value_enum, default_value_t = XdsAuthMode::DataplaneToken)]
    pub xds_auth: XdsAuthMode,

    /// The global's KDS address: `grpcs://host:5685` (TLS) or `grpc://host:5685`
    /// (plaintext, only when asked for explicitly). Without it the zone runs
    /// standalone and accepts every resource type through its own API.
    /// Several, for replicas of the global: repeat the flag or separate
    /// with commas (also in the environment variable); a DNS name may
    /// resolve to several addresses. They are tried in turn: when one
    /// fails, the next, with backoff.
    #[arg(long, env = "MERIDIAN_GLOBAL_ADDRESS", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub global_address: Vec<String>,

    /// File holding this zone's token (`meridianctl generate zone-token --zone NAME`).
    #[arg(long, env = "MERIDIAN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// CA certificate (PEM) of the global's KDS server, for grpcs://.
    #[arg(long, env = "MERIDIAN_GLOBAL_CA")]
    pub global_ca: Option<PathBuf>,

    /// Largest KDS message, in bytes (at least 65536), advertised to the
    /// global: both ends split to the smaller of their caps.
    #[arg(long, env = "MERIDIAN_KDS_MAX_MESSAGE_BYTES", default_value_t = meridian_sync_proto::kds::DEFAULT_MAX_MESSAGE_BYTES,
          value_parser = meridian_sync_proto::kds::parse_max_message_bytes)]
    pub kds_max_message_bytes: usize,

    /// Delete a Dataplane whose proxy has been disconnected for longer than
    /// this, as a duration (`72h`, `30m`, `2s`); `0s` keeps them forever. As
    /// the incumbent's `KUMA_RUNTIME_UNIVERSAL_DP_CLEANUP_AGE` (default 72h).
    /// A Dataplane whose proxy never connected is kept. This zone's
    /// ZoneIngresses are swept by the same rule (their ZoneIngressInsight).
    #[arg(long, env = "MERIDIAN_DATAPLANE_CLEANUP_AFTER", default_value = "72h", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "human_duration")]
    pub dataplane_cleanup_after: std::time::Duration,

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

fn human_duration<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// `--xds-auth`: what an Envoy presents on its xDS stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum XdsAuthMode {
    /// A Dataplane token for the Dataplane the stream names.
    DataplaneToken,
    /// Nothing: xDS is open to whoever reaches it.
    None,
}

/// Entry point: runs the command and turns failures into an exit code.
pub fn main(cli: Cli) -> ExitCode {
    let args = match cli.command {
        Command::Run(args) => *args,
        Command::Dataplane(dp) => return dataplane::main(dp),
        Command::Ingress(i) => return dataplane::ingress_main(i),
    };
    let log = args.log.clone();
    meridian_runtime::run_until_signal("meridian-zone", &log, |shutdown| run(args, shutdown))
}

/// Runs the zone until `shutdown` is cancelled (or one of its critical
/// tasks fails, which cancels it).
pub async fn run(args: RunArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let data_dir = args.state.data_dir("zone")?;
    let store = state::open_store(&data_dir, &args.state, "zone.db").await?;
    tracing::info!(zone = %args.zone, "zone starting");
    let token = state::admin_token(args.api.admin_token.as_deref(), &data_dir)?;

    let kds_config = if args.global_address.is_empty() {
        None
    } else {
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
            global_addresses: args.global_address.clone(),
            token: token.trim().to_string(),
            global_ca: args.global_ca.clone(),
            max_message_bytes: args.kds_max_message_bytes,
        };
        kds::targets(&cfg)?; // fail at start on a bad address or missing CA
        Some(cfg)
    };
    let federated = kds_config.is_some();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ApiMetrics::register(&mut registry);
    let store_metrics = StoreMetrics::register(&mut registry);
    let sync_metrics = meridian_sync_proto::driver::metrics::SyncMetrics::register(&mut registry);
    let xds_figures = xds::metrics::XdsFigures::register(&mut registry);
    let xds_cache = xds::cache::Cache::new(&args.zone).with_generation_metric(xds_figures.generation.clone());
    // One resource must fit in one KDS message with room for its envelope.
    let resource_limit =
        args.api.max_resource_bytes.min(meridian_sync_proto::kds::resource_budget(args.kds_max_message_bytes));
    let manager = Manager::new(store.clone(), Role::Zone { federated })
        .with_max_resource_bytes(resource_limit)
        .with_metrics(store_metrics);
    state::default_mesh(&manager, args.defaults.skip_default_mesh).await?;
    let store_url = state::store_url(&data_dir, args.state.store.as_deref(), "zone.db");
    let config = meridian_runtime::config::document("zone", &args, &data_dir, &store_url);
    let instance_id = state::instance_id();
    meridian_runtime::metrics::register(&mut registry, "zone", env!("CARGO_PKG_VERSION"), &instance_id);
    // Dataplane tokens: a standalone zone issues them with its own keys; a
    // federated zone verifies with the public keys the global syncs.
    let tokens = meridian_tokens::Tokens::new(manager.clone());
    if !federated {
        tokens
            .keys(meridian_tokens::TokenKind::Dataplane)
            .ensure()
            .await
            .context("cannot create the Dataplane token signing key")?;
    }
    let issuer = if federated {
        meridian_rest::tokens::Issuer::FederatedZone
    } else {
        meridian_rest::tokens::Issuer::StandaloneZone
    };
    let state = ApiState {
        manager: manager.clone(),
        auth: Auth::new(token, args.api.api_trust_loopback)
            .with_api_hosts(args.api.api_hosts.clone())
            .with_dataplane_tokens(tokens.clone()),
        info: Arc::new(ServerInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            instance_id: instance_id.clone(),
            hostname: state::hostname(),
            zone: Some(args.zone.clone()),
        }),
        metrics,
        registry: Arc::new(registry),
        config: Arc::new(config),
    };

    let (xds_tls, xds_transport) = xds_tls(&args, &data_dir)?;
    let api_tls = args.api.tls()?;
    let api_scheme = if api_tls.is_some() { "https" } else { "http" };
    let xds_listener = TcpListener::bind(args.xds_addr)
        .await
        .with_context(|| format!("cannot listen on {} for xDS", args.xds_addr))?;
    let xds_addr = xds_listener.local_addr()?;
    let api_listener = TcpListener::bind(args.api.api_addr)
        .await
        .with_context(|| format!("cannot listen on {} for the API", args.api.api_addr))?;
    let api_addr = api_listener.local_addr()?;
    announce(&format!("meridian-zone: API on {api_scheme}://{api_addr}"));
    tracing::info!(%api_addr, "API listening");
    announce(&format!("meridian-zone: xDS on {xds_addr}"));
    tracing::info!(%xds_addr, tls = xds_tls.is_some(), "xDS listening");

    let inspector = inspect::Inspector::new(manager.clone(), xds_cache.clone());
    let mut tasks = Tasks::new(shutdown.clone());
    let limits = args.listeners.limits();
    args.diagnostics.spawn("meridian-zone", &mut tasks, state.clone(), limits, &shutdown).await?;
    tasks.spawn("API server", {
        let stop = shutdown.clone().cancelled_owned();
        let router = meridian_rest::router(state.clone())
            .merge(meridian_rest::tokens::routes(state.clone(), tokens.clone(), issuer))
            .merge(inspect::routes(state.clone(), inspector.clone()))
            .merge(http::routes(state.clone(), xds_addr, xds_transport))
            .layer(axum::middleware::from_fn_with_state(state, meridian_rest::refuse_wrong_token));
        async move { Ok(meridian_rest::server::serve(api_listener, api_tls, limits, router, stop).await?) }
    });
    if let Some(cfg) = kds_config {
        let stop = shutdown.clone().cancelled_owned();
        let manager = manager.clone();
        let metrics = sync_metrics.clone();
        let inspector = inspector.clone();
        tasks.spawn("KDS client", async move { kds::run(cfg, manager, metrics, inspector, stop).await });
    }
    if !federated {
        // Standalone: this zone makes its meshes' roots and its own
        // intermediates (federated, they come from the global).
        tasks.spawn("mesh CA", {
            let (manager, shutdown, zone) = (manager.clone(), shutdown.clone(), args.zone.clone());
            async move { meridian_core::mesh_ca::run(manager, meridian_core::mesh_ca::Zones::Fixed(zone), shutdown).await }
        });
    }
    tasks.spawn("change-log compactor", {
        let (change_log, store, shutdown) = (args.change_log.clone(), store.clone(), shutdown.clone());
        async move { change_log.run_compactor(store, shutdown).await }
    });
    tasks.spawn("Dataplane cleanup", {
        let cleanup = dataplane_cleanup::Cleanup {
            after: args.dataplane_cleanup_after,
            instance_id: instance_id.clone(),
            started_millis: meridian_core::liveness::now_millis(),
            // SQLite: this process is the store's only writer.
            sole_instance: store_url.starts_with("sqlite:"),
        };
        let (manager, shutdown) = (manager.clone(), shutdown.clone());
        async move { dataplane_cleanup::run(manager, cleanup, shutdown).await }
    });
    tasks.spawn("ZoneIngress availableServices", {
        let (manager, zone, shutdown) = (manager.clone(), args.zone.clone(), shutdown.clone());
        async move { available_services::run(manager, zone, shutdown).await }
    });
    tasks.spawn("xDS server", {
        let auth = (args.xds_auth == XdsAuthMode::DataplaneToken)
            .then(|| xds::auth::XdsAuth::new(tokens.clone(), shutdown.clone()));
        let config = xds::XdsConfig {
            zone: args.zone.clone(),
            instance_id: instance_id.clone(),
            metrics: sync_metrics.clone(),
            auth,
            figures: xds_figures.clone(),
            cache: xds_cache.clone(),
        };
        let store = store.clone();
        let stop = shutdown.clone();
        async move { Ok(xds::serve(xds_listener, xds_tls, limits, store, config, stop).await?) }
    });

    tasks.wait().await
}

/// The generated xDS material: `xds-ca.crt` (what bootstraps trust),
/// `xds.crt`, `xds.key` in the data directory.
pub const XDS_TLS: meridian_runtime::tls::Material =
    meridian_runtime::tls::Material { prefix: "xds", label: "xDS", flag: "--xds-tls", server_name: "meridian-zone" };

/// The xDS server's TLS config: `--xds-tls-cert/--xds-tls-key`, or the
/// material generated into `data_dir`; `None` with `--xds-plaintext`
/// (logged as a warning).
fn xds_tls(
    args: &RunArgs,
    data_dir: &std::path::Path,
) -> anyhow::Result<(Option<Arc<rustls::ServerConfig>>, http::XdsTransport)> {
    if args.xds_plaintext {
        if args.xds_tls_cert.is_some() {
            anyhow::bail!("--xds-plaintext and --xds-tls-cert contradict each other: drop one");
        }
        tracing::warn!(
            "--xds-plaintext: xDS is served without TLS; anyone on the network path can read or alter every gateway's configuration"
        );
        return Ok((None, http::XdsTransport::Plaintext));
    }
    let (config, ca) = meridian_runtime::tls::server_config(
        &XDS_TLS,
        data_dir,
        args.xds_tls_cert.as_deref(),
        args.xds_tls_key.as_deref(),
        &args.xds_tls_san,
    )?;
    let ca_pem = match ca {
        Some(ca) => {
            announce(&format!("meridian-zone: xDS CA at {}", ca.display()));
            Some(std::fs::read_to_string(&ca).with_context(|| format!("cannot read {}", ca.display()))?)
        }
        None => None,
    };
    Ok((Some(config), http::XdsTransport::Tls { ca_pem }))
}
