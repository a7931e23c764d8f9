//! `meridian-zone dataplane run`: a runner to leave running, as the
//! incumbent's `kuma-dp run`.
//!
//! ```text
//!   check flags + Dataplane file (offline) ── bad ──▶ exit 1, nothing sent
//!        │
//!   PUT Dataplane ◀── retry with backoff while the zone does not answer
//!        │            (a 400/401/403 that will not change: exit 1)
//!   write bootstrap, start Envoy (dies with us: parent-death signal)
//!        │
//!   ├─ SIGTERM/SIGINT ─▶ drain Envoy, stop it ─▶ DELETE Dataplane ─▶ exit 0
//!   └─ Envoy exits by itself ─▶ DELETE Dataplane ─▶ exit with Envoy's status
//! ```
//!
//! Access-log lines for the Mesh's TCP logging backends come from Envoy
//! through a FIFO and go to each backend over TCP ([`access_log`]). Envoy
//! runs in a work directory private to the runner (mode 0700, removed on
//! exit), where that FIFO lives.
//!
//! Nothing is restarted silently: an Envoy that exits ends the runner, and
//! whoever supervises the runner decides. If the runner itself is killed,
//! Envoy dies with it and the Dataplane stays registered until the zone's
//! sweeper (`meridian-zone run --dataplane-cleanup-after`, default 72h)
//! removes it.
//!
//! The runner announces on stdout, for scripts and tests:
//! `meridian-zone dataplane: registered <mesh>/<name>`,
//! `meridian-zone dataplane: Envoy pid <pid>`,
//! `meridian-zone dataplane: Envoy admin on <ip:port>`.

pub mod access_log;
pub mod envoy;
pub mod plan;
pub mod zone_api;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use meridian_runtime::announce;
use tokio::signal::unix::{Signal, SignalKind, signal};

use self::{envoy::Envoy, plan::Plan, zone_api::ZoneApi};
use super::{BootstrapParams, ProxyKind, RunDataplaneArgs, render_bootstrap};

/// Exit code for bad flags, a bad Dataplane file, or a refusal by the zone.
pub const EXIT_INVALID: u8 = 1;

/// Checks the flags, then runs until a signal or Envoy's exit.
pub fn main(args: RunDataplaneArgs) -> ExitCode {
    main_as(args, ProxyKind::Dataplane)
}

/// [`main`] for a Dataplane or a ZoneIngress (`meridian-zone ingress run`).
pub fn main_as(args: RunDataplaneArgs, kind: ProxyKind) -> ExitCode {
    meridian_runtime::process::init_logging(&args.log);
    let plan = match plan::check_as(&args, kind) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("meridian-zone {} run: {e:#}", kind.command());
            return ExitCode::from(EXIT_INVALID);
        }
    };
    // One thread: Envoy's parent-death signal follows the thread that
    // started it, and this one lives as long as the process.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("meridian-zone {} run: cannot start the runtime: {e}", kind.command());
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(plan)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM and SIGINT.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

async fn run(plan: Plan) -> anyhow::Result<ExitCode> {
    // reqwest's rustls needs a process-wide provider, even for plain HTTP.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut signals = Signals::new()?;
    let api = ZoneApi::new(&plan)?;
    let id = match plan.kind {
        ProxyKind::Dataplane => format!("{}/{}", plan.mesh, plan.name),
        ProxyKind::ZoneIngress => format!("ZoneIngress {}", plan.name),
    };

    if let Some(doc) = &plan.dataplane {
        tracing::info!(dataplane = %id, api = %plan.api_url, "registering the Dataplane");
        tokio::select! {
            r = api.register(doc) => {
                if let Err(e) = r {
                    tracing::error!(dataplane = %id, "the Dataplane was not registered: {e}");
                    return Ok(ExitCode::from(EXIT_INVALID));
                }
            }
            sig = signals.recv() => {
                tracing::info!("{sig} before the Dataplane was registered: stopping");
                // A PUT may have landed just before the signal.
                api.deregister_if_registered().await;
                return Ok(ExitCode::SUCCESS);
            }
        }
        tracing::info!(dataplane = %id, "Dataplane registered");
        announce(&format!("meridian-zone dataplane: registered {id}"));
    }

    let outcome = supervise(&plan, &mut signals).await;
    if plan.dataplane.is_none() {
        return outcome;
    }
    let code = match &outcome {
        Ok(code) => *code,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    };
    Ok(deregister(&api, &id, code).await)
}

/// DELETEs the Dataplane; `code`, or a failure if it could not be removed.
async fn deregister(api: &ZoneApi, id: &str, code: ExitCode) -> ExitCode {
    match api.deregister().await {
        Ok(true) => {
            tracing::info!(dataplane = %id, "Dataplane deregistered");
            code
        }
        Ok(false) => code,
        Err(e) => {
            tracing::error!(dataplane = %id, error = %e, "cannot deregister the Dataplane (the zone's cleanup will remove it)");
            ExitCode::FAILURE
        }
    }
}

/// Writes `bytes` to `path`, readable and writable by this user only
/// (mode 0600, also when the file existed with a wider mode); a symlink
/// at `path` is not followed (an error).
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt, os::unix::fs::PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)
}

/// Writes the bootstrap, runs Envoy, waits for a signal (drain, exit 0) or
/// Envoy's own exit (its status).
async fn supervise(plan: &Plan, signals: &mut Signals) -> anyhow::Result<ExitCode> {
    let bootstrap = render_bootstrap(&BootstrapParams {
        mesh: &plan.mesh,
        name: &plan.name,
        xds_address: &plan.cp.host_port(),
        admin_address: plan.admin,
        delta: plan.delta,
        tls: plan.xds_tls.clone(),
        // Envoy presents it on its ADS stream (gRPC metadata `authorization`).
        token: plan.dataplane_token.as_deref(),
    })?;
    let config_dir = match &plan.config_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("--config-dir: cannot create {}", d.display()))?;
            // Absolute: Envoy runs in `work`, not here.
            Some(std::path::absolute(d).with_context(|| format!("--config-dir: cannot resolve {}", d.display()))?)
        }
        None => None,
    };
    // Envoy's working directory: private to this runner (0700, a fresh
    // random name; in --config-dir when given, else under $TMPDIR), so the
    // access-log FIFO that Envoy opens by a relative name
    // (gateway::policies::ACCESS_LOG_SINK) is out of other users' reach.
    // (tempfile's default mode follows the umask: 0755 here.)
    let mut builder = tempfile::Builder::new();
    builder.prefix("meridian-dp-").permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700));
    let work = match &config_dir {
        Some(d) => builder.tempdir_in(d),
        None => builder.tempdir(),
    }
    .context("cannot create the runner's work directory")?;
    let dir = config_dir.unwrap_or_else(|| work.path().to_path_buf());
    let path: PathBuf = dir.join(format!("bootstrap-{}.{}.yaml", plan.mesh, plan.name));
    // 0600: the bootstrap carries the Dataplane token.
    write_private(&path, bootstrap.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;

    // TCP logging backends: Envoy writes their lines to this FIFO (see
    // access_log). Only Dataplanes have TrafficLogs.
    let _sink = match plan.kind {
        ProxyKind::Dataplane => {
            let fifo = work.path().join(crate::gateway::policies::ACCESS_LOG_SINK);
            let (sink, _dropped) = access_log::start(&fifo)?;
            tracing::info!(fifo = %fifo.display(), "access-log streamer listening");
            Some(sink)
        }
        ProxyKind::ZoneIngress => None,
    };
    // The admin address file too: Envoy opens it following symlinks, so
    // never in a directory the user may share (`--config-dir /tmp`).
    let (args, admin_file) = envoy::command_line(plan, &path, work.path());
    let mut envoy = Envoy::spawn(plan, &args, admin_file, work.path())?;
    let pid = envoy.pid().unwrap_or_default();
    tracing::info!(pid, envoy = %plan.envoy.display(), "Envoy started");
    announce(&format!("meridian-zone dataplane: Envoy pid {pid}"));

    let mut announced = false;
    let mut poll = tokio::time::interval(std::time::Duration::from_millis(100));
    loop {
        tokio::select! {
            status = envoy.wait() => {
                let status = status.context("cannot wait for Envoy")?;
                tracing::error!(%status, "Envoy exited by itself; stopping (not restarting it)");
                return Ok(envoy::exit_code(status));
            }
            sig = signals.recv() => {
                tracing::info!("{sig}: draining Envoy");
                let status = envoy.drain_and_stop(plan.drain_time).await.context("cannot stop Envoy")?;
                tracing::info!(%status, "Envoy stopped");
                return Ok(ExitCode::SUCCESS);
            }
            _ = poll.tick(), if !announced => {
                if let Some(admin) = envoy.admin_address() {
                    announced = true;
                    tracing::info!(%admin, "Envoy admin listening");
                    announce(&format!("meridian-zone dataplane: Envoy admin on {admin}"));
                }
            }
        }
    }
}
