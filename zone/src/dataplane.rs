//! `meridian-zone dataplane bootstrap | run`: the Envoy side of a gateway or
//! a sidecar (any Dataplane: builtin or delegated gateway, or inbounds and
//! outbounds).
//!
//! - `bootstrap` prints an Envoy bootstrap whose node id (`<mesh>.<name>`)
//!   names the Dataplane and whose only static cluster is the zone's xDS
//!   server; everything else arrives over ADS.
//! - `run` is the service a gateway or application host leaves running, with the flags the
//!   incumbent's `kuma-dp run` users type (`--cp-address`,
//!   `--dataplane-file`, `--dataplane-token-file`, `--admin-port`): it checks
//!   everything offline, registers the Dataplane (PUT to the zone API,
//!   retried with backoff until the zone answers), runs Envoy as a child
//!   that dies with it, drains Envoy on SIGTERM/SIGINT and deregisters the
//!   Dataplane (DELETE) on the way out. See [`runner`].
//!
//! ```text
//!   dataplane.yaml ──check──▶ PUT (retry, backoff) ──▶ zone API ──▶ store ──▶ xDS
//!   bootstrap.yaml ──▶ envoy -c bootstrap.yaml ══ADS over TLS══▶ zone xDS (--cp-address, --ca-cert)
//!   SIGTERM ──▶ POST /drain_listeners?graceful ──▶ wait ──▶ SIGTERM Envoy ──▶ DELETE
//! ```

pub mod bootstrap;
pub mod runner;

use std::{ffi::OsString, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use meridian_sync_proto::universal;

pub use bootstrap::{BootstrapParams, render as render_bootstrap};

/// `meridian-zone dataplane ...`
#[derive(Debug, Clone, Args)]
pub struct DataplaneArgs {
    #[command(subcommand)]
    pub command: DataplaneCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum DataplaneCommand {
    /// Print an Envoy bootstrap (YAML) for a Dataplane on stdout.
    Bootstrap(BootstrapArgs),
    /// Register a Dataplane and run Envoy for it until SIGTERM or SIGINT
    /// (then drain Envoy and deregister the Dataplane).
    Run(Box<RunDataplaneArgs>),
    /// Internal: how `run` starts Envoy so that it dies with the runner
    /// (sets the parent-death signal, then becomes Envoy). Not for users.
    #[command(hide = true)]
    ExecEnvoy(runner::envoy::ExecEnvoyArgs),
}

/// `meridian-zone ingress ...`
#[derive(Debug, Clone, Args)]
pub struct IngressArgs {
    #[command(subcommand)]
    pub command: IngressCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum IngressCommand {
    /// Register a ZoneIngress (`--dataplane-file` holds a ZoneIngress) and
    /// run Envoy for it until SIGTERM or SIGINT (then drain Envoy and
    /// deregister it). The token (`--dataplane-token-file`) is a ZoneIngress
    /// token: `meridianctl generate ingress-token --name NAME` at the global
    /// (`POST /tokens/dataplane {"type": "ingress", "name": NAME}`).
    Run(Box<RunDataplaneArgs>),
}

/// What a runner registers and runs Envoy for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    /// A Dataplane (gateway or sidecar) of a mesh: `/meshes/<m>/dataplanes/<n>`, node id `<m>.<n>`.
    Dataplane,
    /// A ZoneIngress (no mesh): `/zoneingresses/<n>`, node id `.<n>` (the incumbent's).
    ZoneIngress,
}

impl ProxyKind {
    /// The resource type of the file.
    pub fn resource_type(self) -> meridian_sync_proto::ResourceType {
        match self {
            ProxyKind::Dataplane => meridian_sync_proto::ResourceType::Dataplane,
            ProxyKind::ZoneIngress => meridian_sync_proto::ResourceType::ZoneIngress,
        }
    }

    /// The subcommand, in messages (`dataplane`, `ingress`).
    pub fn command(self) -> &'static str {
        match self {
            ProxyKind::Dataplane => "dataplane",
            ProxyKind::ZoneIngress => "ingress",
        }
    }
}

/// Runs an `ingress` subcommand.
pub fn ingress_main(args: IngressArgs) -> ExitCode {
    match args.command {
        IngressCommand::Run(r) => runner::main_as(*r, ProxyKind::ZoneIngress),
    }
}

/// Which ADS flavour Envoy speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum XdsMode {
    /// Incremental (`DeltaAggregatedResources`).
    Delta,
    /// State of the world (`StreamAggregatedResources`).
    Sotw,
}

/// What every bootstrap needs.
#[derive(Debug, Clone, Args)]
pub struct BootstrapFlags {
    /// The zone's xDS server: `host:port`, or `https://host:port`
    /// (`grpcs://` too). Over TLS unless --xds-plaintext; Envoy verifies
    /// the server's certificate against --ca-cert for this host.
    #[arg(long, env = "MERIDIAN_XDS_ADDRESS", default_value = "127.0.0.1:5678")]
    pub xds_address: String,

    /// CA certificate (PEM) Envoy trusts for the zone's xDS server: the
    /// zone's `<data-dir>/xds-ca.crt`, or the CA of its --xds-tls-cert.
    /// Default: ~/.meridian/zone/xds-ca.crt.
    #[arg(long, env = "MERIDIAN_XDS_CA_CERT")]
    pub ca_cert: Option<PathBuf>,

    /// Dial the xDS server without TLS, for a zone run with --xds-plaintext
    /// (only on trusted networks).
    #[arg(long, env = "MERIDIAN_XDS_PLAINTEXT", action = clap::ArgAction::SetTrue)]
    pub xds_plaintext: bool,

    /// Envoy's admin interface, `ip:port` (port 0 picks a free one).
    #[arg(long, env = "MERIDIAN_DP_ADMIN_ADDRESS", default_value = "127.0.0.1:9901")]
    pub admin_address: std::net::SocketAddr,

    /// ADS flavour.
    #[arg(long, env = "MERIDIAN_XDS_MODE", value_enum, default_value_t = XdsMode::Delta)]
    pub xds_mode: XdsMode,
}

#[derive(Debug, Clone, Args)]
pub struct BootstrapArgs {
    /// The Dataplane's mesh.
    #[arg(long, env = "MERIDIAN_DP_MESH", default_value = "default")]
    pub mesh: String,

    /// The Dataplane's name.
    #[arg(long, env = "MERIDIAN_DP_NAME")]
    pub name: String,

    /// File holding the Dataplane token (`meridianctl generate
    /// dataplane-token`); Envoy presents it on its ADS stream as the gRPC
    /// metadata `authorization`. Needed unless the zone runs `--xds-auth none`.
    #[arg(long, env = "MERIDIAN_DP_TOKEN_FILE")]
    pub dataplane_token_file: Option<PathBuf>,

    #[command(flatten)]
    pub flags: BootstrapFlags,
}

/// Envoy's own log level (`envoy -l`), as Envoy spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EnvoyLogLevel {
    Trace,
    Debug,
    Info,
    Warning,
    Error,
    Critical,
    Off,
}

impl EnvoyLogLevel {
    /// The value of Envoy's `--log-level`.
    pub fn as_envoy_arg(self) -> &'static str {
        match self {
            EnvoyLogLevel::Trace => "trace",
            EnvoyLogLevel::Debug => "debug",
            EnvoyLogLevel::Info => "info",
            EnvoyLogLevel::Warning => "warning",
            EnvoyLogLevel::Error => "error",
            EnvoyLogLevel::Critical => "critical",
            EnvoyLogLevel::Off => "off",
        }
    }
}

/// Where Envoy's stdout and stderr go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EnvoyOutput {
    /// Into the runner's log (stderr), one event per line with target
    /// `envoy` at the level Envoy wrote it with: `--log-level` filters it
    /// (`--log-level info,envoy=error`).
    Log,
    /// Straight to the runner's stdout and stderr, untouched.
    Inherit,
}

/// Flags of `meridian-zone dataplane run`; each has a MERIDIAN_* variable.
/// The names follow the incumbent's `kuma-dp run` where it has one.
#[derive(Debug, Clone, Args)]
pub struct RunDataplaneArgs {
    /// The Dataplane resource (universal YAML or JSON, one document) to
    /// register. It is parsed and validated offline, with the zone's own
    /// rules, before anything is sent. Without it, `--name` names an already
    /// registered Dataplane (which is then neither registered nor removed).
    #[arg(short = 'f', long = "dataplane-file", env = "MERIDIAN_DP_FILE")]
    pub file: Option<PathBuf>,

    /// The Dataplane's mesh (taken from the file when given).
    #[arg(long, env = "MERIDIAN_DP_MESH", default_value = "default")]
    pub mesh: String,

    /// The Dataplane's name (taken from the file when given).
    #[arg(long, env = "MERIDIAN_DP_NAME")]
    pub name: Option<String>,

    /// The zone's xDS server Envoy connects to, as the incumbent's
    /// `--cp-address`: `https://host:5678` or `grpcs://` (TLS, the zone's
    /// default; a bare `host:port` too), or `grpc://`/`http://` for a zone
    /// run with --xds-plaintext (`--xds-address` is the older spelling).
    #[arg(long, visible_alias = "xds-address", env = "MERIDIAN_CP_ADDRESS", default_value = "https://127.0.0.1:5678")]
    pub cp_address: String,

    /// The zone's REST API, where the Dataplane is registered (PUT) and
    /// removed (DELETE). Default: port 5681 (the zone API's default) on the
    /// host of `--cp-address`, `https://` when that is TLS, else `http://`.
    #[arg(long, env = "MERIDIAN_API_URL")]
    pub api_url: Option<String>,

    /// File holding a Dataplane token (`meridianctl generate
    /// dataplane-token`). Read and trimmed at start; sent as
    /// `Authorization: Bearer <token>` when registering and removing the
    /// Dataplane, and handed to Envoy for its xDS stream.
    #[arg(long, env = "MERIDIAN_DP_TOKEN_FILE")]
    pub dataplane_token_file: Option<PathBuf>,

    /// Admin token for the zone API, used when no `--dataplane-token-file`
    /// is given (not needed on loopback by default).
    #[arg(long, env = "MERIDIAN_ADMIN_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// CA certificate (PEM) trusted for the zone: xDS over TLS (the zone's
    /// `<data-dir>/xds-ca.crt`, or the CA of its --xds-tls-cert) and the API
    /// over `https://`. Default for xDS: ~/.meridian/zone/xds-ca.crt.
    #[arg(long, env = "MERIDIAN_CA_CERT")]
    pub ca_cert: Option<PathBuf>,

    /// IP of Envoy's admin interface (`ip:port` is accepted too; the port
    /// then applies unless `--admin-port` is given).
    #[arg(long, env = "MERIDIAN_DP_ADMIN_ADDRESS", default_value = "127.0.0.1")]
    pub admin_address: String,

    /// Port of Envoy's admin interface (0 picks a free one). Default: 9901,
    /// as the incumbent.
    #[arg(long, env = "MERIDIAN_DP_ADMIN_PORT")]
    pub admin_port: Option<u16>,

    /// ADS flavour.
    #[arg(long, env = "MERIDIAN_XDS_MODE", value_enum, default_value_t = XdsMode::Delta)]
    pub xds_mode: XdsMode,

    /// The Envoy binary (a path, or a name looked up on PATH).
    #[arg(long, env = "MERIDIAN_ENVOY_BINARY", default_value = "envoy")]
    pub envoy: PathBuf,

    /// Envoy's own log level (`envoy --log-level`). Ignored when the extra
    /// Envoy arguments set `-l`/`--log-level` themselves.
    #[arg(long, env = "MERIDIAN_ENVOY_LOG_LEVEL", value_enum, default_value_t = EnvoyLogLevel::Warning)]
    pub envoy_log_level: EnvoyLogLevel,

    /// Where Envoy's output goes: `log` (the runner's log, target `envoy`,
    /// at the level of each line) or `inherit` (the runner's stdout/stderr).
    #[arg(long, env = "MERIDIAN_ENVOY_OUTPUT", value_enum, default_value_t = EnvoyOutput::Log)]
    pub envoy_output: EnvoyOutput,

    /// On SIGTERM/SIGINT: how long Envoy drains its listeners
    /// (`/drain_listeners?graceful`, Envoy's `--drain-time-s`) before it is
    /// stopped, as a duration (`5s`, `1m`; whole seconds, `0s` stops at once).
    #[arg(long, env = "MERIDIAN_DP_DRAIN_TIME", default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_time: Duration,

    /// Where the bootstrap is written. Default: a temporary directory,
    /// removed on exit.
    #[arg(long, env = "MERIDIAN_DP_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,

    /// The runner's log filter (`--log-level info`, `info,envoy=error`, ...)
    /// and format (`--log-format text|json`).
    #[command(flatten)]
    pub log: meridian_runtime::args::LogArgs,

    /// Extra Envoy arguments, after `--`.
    #[arg(last = true)]
    pub envoy_args: Vec<OsString>,
}

/// Runs a `dataplane` subcommand.
pub fn main(args: DataplaneArgs) -> ExitCode {
    let result = match args.command {
        DataplaneCommand::Bootstrap(b) => bootstrap_command(&b),
        DataplaneCommand::Run(r) => return runner::main(*r),
        DataplaneCommand::ExecEnvoy(e) => runner::envoy::exec_envoy(&e),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("meridian-zone dataplane: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn params<'a>(mesh: &'a str, name: &'a str, flags: &'a BootstrapFlags) -> anyhow::Result<BootstrapParams<'a>> {
    universal::check_mesh_name(mesh).map_err(|e| anyhow::anyhow!("--mesh: {e}"))?;
    universal::check_name(name).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
    Ok(BootstrapParams {
        mesh,
        name,
        xds_address: &flags.xds_address,
        admin_address: flags.admin_address,
        delta: flags.xds_mode == XdsMode::Delta,
        tls: bootstrap::load_tls(flags.xds_plaintext, flags.ca_cert.as_deref())?,
        token: None,
    })
}

/// Reads a Dataplane token file (`--dataplane-token-file`), trimmed.
pub fn read_token_file(path: &std::path::Path) -> anyhow::Result<String> {
    let t = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --dataplane-token-file {}", path.display()))?;
    let t = t.trim();
    if t.is_empty() {
        bail!(
            "--dataplane-token-file {} is empty (get a token with 'meridianctl generate dataplane-token')",
            path.display()
        );
    }
    if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("--dataplane-token-file {}: a token is one line without spaces", path.display());
    }
    Ok(t.to_string())
}

fn bootstrap_command(b: &BootstrapArgs) -> anyhow::Result<ExitCode> {
    let token = b.dataplane_token_file.as_deref().map(read_token_file).transpose()?;
    let text = render_bootstrap(&BootstrapParams { token: token.as_deref(), ..params(&b.mesh, &b.name, &b.flags)? })?;
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}
