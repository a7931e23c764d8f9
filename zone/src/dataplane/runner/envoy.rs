//! Envoy as the runner's child: started so that it dies with the runner,
//! its output turned into log events, drained before it is stopped.
//!
//! **Never orphaned.** Envoy gets `PR_SET_PDEATHSIG = SIGKILL`: when the
//! runner dies, even by SIGKILL, the kernel kills Envoy. Setting it in
//! `Command::pre_exec` needs `unsafe`, which this workspace forbids, so the
//! runner starts itself as a trampoline (`meridian-zone dataplane
//! exec-envoy --parent PID -- envoy ...`): the trampoline sets the signal on
//! itself, checks that its parent is still the runner (it may have died in
//! between), then `exec`s Envoy, which keeps the signal (Linux clears it
//! only for set-user-ID binaries). The signal fires when the *thread* that
//! forked the child ends, so the runner spawns from its main thread.
//!
//! **Drain** (SIGTERM/SIGINT): `POST /drain_listeners?graceful` on Envoy's
//! admin (listeners keep serving while they tell clients to go), a wait of
//! `--drain-time` (also Envoy's `--drain-time-s`), then SIGTERM, then SIGKILL
//! if Envoy still runs after [`STOP_TIMEOUT`].

use std::{
    ffi::OsString,
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{ExitCode, ExitStatus, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use clap::Args;
use rustix::process::{Pid, Signal};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use super::plan::Plan;
use crate::dataplane::EnvoyOutput;

/// How long Envoy gets to exit after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout of the drain request to Envoy's admin.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Flags of the hidden `exec-envoy` trampoline (internal: set by `run`).
#[derive(Debug, Clone, Args)]
pub struct ExecEnvoyArgs {
    /// Process id of the runner: if the parent is no longer this process,
    /// the runner is already gone and Envoy is not started.
    #[arg(long)]
    pub parent: i32,

    /// The Envoy command line.
    #[arg(last = true, required = true)]
    pub command: Vec<OsString>,
}

/// The trampoline: parent-death signal, parent check, `exec` Envoy.
/// Returns only on failure.
pub fn exec_envoy(args: &ExecEnvoyArgs) -> anyhow::Result<ExitCode> {
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
        .context("cannot set the parent-death signal")?;
    let parent = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get()).to_string();
    if parent != args.parent.to_string() {
        bail!("the runner (pid {}) is gone; not starting Envoy", args.parent);
    }
    let (bin, rest) = args.command.split_first().context("no Envoy command")?;
    let err = std::process::Command::new(bin).args(rest).exec();
    Err(anyhow::Error::from(err).context(format!("cannot start {}", Path::new(bin).display())))
}

/// Whether `args` already set `flag` (`--flag v`, `--flag=v`).
fn has_flag(args: &[OsString], flags: &[&str]) -> Option<usize> {
    args.iter().position(|a| {
        let a = a.to_string_lossy();
        flags.iter().any(|f| a == *f || a.strip_prefix(f).is_some_and(|r| r.starts_with('=')))
    })
}

/// Envoy's command line: `-c bootstrap`, the runner's defaults (log level,
/// drain time, no hot restart, admin address file) unless the user's extra
/// arguments set them, then the user's. Returns it and the file where Envoy
/// writes its admin address (in `dir`, the runner's private directory,
/// unless the user's `--admin-address-path` says otherwise).
pub fn command_line(plan: &Plan, bootstrap: &Path, dir: &Path) -> (Vec<OsString>, PathBuf) {
    let user = &plan.envoy_args;
    let mut args: Vec<OsString> = vec!["-c".into(), bootstrap.into()];
    if has_flag(user, &["-l", "--log-level"]).is_none() {
        args.extend(["--log-level".into(), plan.envoy_log_level.into()]);
    }
    if has_flag(user, &["--drain-time-s"]).is_none() {
        // Envoy takes whole seconds.
        let secs = plan.drain_time.as_secs() + u64::from(plan.drain_time.subsec_nanos() > 0);
        args.extend(["--drain-time-s".into(), secs.to_string().into()]);
    }
    if has_flag(user, &["--base-id", "--disable-hot-restart"]).is_none() {
        // Several Envoys on one machine must not share hot-restart memory.
        args.push("--disable-hot-restart".into());
    }
    let admin_file = match has_flag(user, &["--admin-address-path"]) {
        Some(i) => {
            let a = user[i].to_string_lossy();
            match a.split_once('=') {
                Some((_, v)) => PathBuf::from(v),
                None => user.get(i + 1).map(PathBuf::from).unwrap_or_default(),
            }
        }
        None => {
            let f = dir.join("envoy-admin-address");
            args.extend(["--admin-address-path".into(), f.clone().into()]);
            f
        }
    };
    args.extend(user.iter().cloned());
    (args, admin_file)
}

/// A running Envoy.
pub struct Envoy {
    child: tokio::process::Child,
    pid: Option<Pid>,
    admin_file: PathBuf,
}

impl Envoy {
    /// Starts Envoy through the trampoline with `args`, in working
    /// directory `work` (the runner's private directory: relative paths,
    /// the access-log FIFO's among them, resolve there); its output goes
    /// where the plan says.
    pub fn spawn(plan: &Plan, args: &[OsString], admin_file: PathBuf, work: &Path) -> anyhow::Result<Envoy> {
        // A relative `--admin-address-path` is Envoy's, in `work`.
        let admin_file = work.join(admin_file);
        let _ = std::fs::remove_file(&admin_file);
        let me = std::env::current_exe().context("cannot find the meridian-zone binary (for the Envoy trampoline)")?;
        let mut cmd = tokio::process::Command::new(me);
        cmd.args(["dataplane", "exec-envoy", "--parent", &std::process::id().to_string(), "--"])
            .arg(&plan.envoy)
            .args(args)
            .current_dir(work)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if plan.envoy_output == EnvoyOutput::Log {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        let mut child = cmd.spawn().with_context(|| format!("cannot start {}", plan.envoy.display()))?;
        if let Some(out) = child.stdout.take() {
            tokio::spawn(forward(out));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(forward(err));
        }
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).and_then(Pid::from_raw);
        Ok(Envoy { child, pid, admin_file })
    }

    /// Envoy's process id.
    pub fn pid(&self) -> Option<u32> {
        self.pid.map(|p| p.as_raw_nonzero().get().unsigned_abs())
    }

    /// Envoy's admin address, once Envoy wrote it.
    pub fn admin_address(&self) -> Option<SocketAddr> {
        std::fs::read_to_string(&self.admin_file).ok().and_then(|s| s.trim().parse().ok())
    }

    /// Waits until Envoy exits by itself.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    fn signal(&self, sig: Signal) {
        if let Some(pid) = self.pid
            && let Err(e) = rustix::process::kill_process(pid, sig)
        {
            tracing::warn!(error = %e, signal = ?sig, "cannot signal Envoy");
        }
    }

    /// Drains and stops Envoy (see the module doc); returns its status.
    pub async fn drain_and_stop(mut self, drain_time: Duration) -> std::io::Result<ExitStatus> {
        if !drain_time.is_zero() {
            match self.admin_address() {
                Some(admin) => match drain_listeners(admin).await {
                    Ok(()) => {
                        tracing::info!(drain_time = ?drain_time, "Envoy drains its listeners");
                        if let Ok(status) = tokio::time::timeout(drain_time, self.child.wait()).await {
                            return status;
                        }
                    }
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot drain Envoy; stopping it"),
                },
                None => tracing::warn!("Envoy's admin address is not known yet; stopping it without a drain"),
            }
        }
        self.signal(Signal::TERM);
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                tracing::warn!(timeout = ?STOP_TIMEOUT, "Envoy did not stop after SIGTERM; killing it");
                self.child.kill().await?;
                self.child.wait().await
            }
        }
    }
}

async fn drain_listeners(admin: SocketAddr) -> anyhow::Result<()> {
    let url = format!("http://{admin}/drain_listeners?graceful");
    let resp = reqwest::Client::builder().timeout(ADMIN_TIMEOUT).build()?.post(&url).send().await?;
    if !resp.status().is_success() {
        bail!("{url} answered {}", resp.status());
    }
    Ok(())
}

/// Logs every line of Envoy's output as an event with target `envoy`.
async fn forward(out: impl AsyncRead + Unpin) {
    let mut lines = BufReader::new(out).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let (level, msg) = envoy_line(&line);
        match level {
            tracing::Level::ERROR => tracing::error!(target: "envoy", "{msg}"),
            tracing::Level::WARN => tracing::warn!(target: "envoy", "{msg}"),
            tracing::Level::INFO => tracing::info!(target: "envoy", "{msg}"),
            tracing::Level::DEBUG => tracing::debug!(target: "envoy", "{msg}"),
            tracing::Level::TRACE => tracing::trace!(target: "envoy", "{msg}"),
        }
    }
}

/// The level and message of one line in Envoy's default log format
/// (`[time][thread][level][logger] [source:line] message`); a line in
/// another shape is INFO, as written.
pub fn envoy_line(line: &str) -> (tracing::Level, &str) {
    let mut rest = line;
    let mut fields = Vec::with_capacity(4);
    while fields.len() < 4 {
        let Some(r) = rest.strip_prefix('[') else { break };
        let Some((field, r)) = r.split_once(']') else { break };
        fields.push(field);
        rest = r;
    }
    let level = match fields.get(2).copied() {
        Some("critical" | "error") => tracing::Level::ERROR,
        Some("warning") => tracing::Level::WARN,
        Some("info") => tracing::Level::INFO,
        Some("debug") => tracing::Level::DEBUG,
        Some("trace") => tracing::Level::TRACE,
        _ => return (tracing::Level::INFO, line),
    };
    // Drop the `[source:line] ` prefix.
    let msg = rest.trim_start();
    let msg = msg.strip_prefix('[').and_then(|m| m.split_once("] ")).map_or(msg, |(_, m)| m);
    (level, msg)
}

/// Envoy's exit code, or 128 + the signal that ended it.
pub fn exit_code(status: ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_lines_keep_their_level() {
        let l = "[2026-11-29 19:40:00.123][4242][warning][config] [source/common/config/grpc_stream.h:191] StreamAggregatedResources gRPC config stream closed";
        assert_eq!(envoy_line(l), (tracing::Level::WARN, "StreamAggregatedResources gRPC config stream closed"));
        let l = "[2026-11-29 19:40:00.123][4242][critical][main] [source/server/server.cc:1] error initializing";
        assert_eq!(envoy_line(l).0, tracing::Level::ERROR);
        assert_eq!(envoy_line("plain text"), (tracing::Level::INFO, "plain text"));
    }

    fn plan(extra: &[&str]) -> Plan {
        use clap::Parser;
        let mut argv = vec![
            "meridian-zone",
            "dataplane",
            "run",
            "--name",
            "gw",
            "--envoy",
            "/bin/sh",
            "--cp-address",
            "grpc://zone",
        ];
        argv.extend(extra);
        let cli = crate::Cli::try_parse_from(argv).expect("flags parse");
        let crate::Command::Dataplane(dp) = cli.command else { panic!("not dataplane") };
        let crate::dataplane::DataplaneCommand::Run(run) = dp.command else { panic!("not run") };
        super::super::plan::check(&run).expect("valid flags")
    }

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter().map(|a| a.to_string_lossy().to_string()).collect()
    }

    #[test]
    fn the_runner_sets_envoy_defaults_unless_the_user_did() {
        let dir = Path::new("/run/dp");
        let (args, admin) = command_line(&plan(&["--drain-time", "1500ms"]), Path::new("/b.yaml"), dir);
        assert_eq!(
            strings(&args).join(" "),
            "-c /b.yaml --log-level warning --drain-time-s 2 --disable-hot-restart --admin-address-path /run/dp/envoy-admin-address"
        );
        assert_eq!(admin, dir.join("envoy-admin-address"));

        let user = ["--", "-l", "info", "--base-id", "7", "--drain-time-s=9", "--admin-address-path", "/x/admin"];
        let (args, admin) = command_line(&plan(&user), Path::new("/b.yaml"), dir);
        assert_eq!(
            strings(&args).join(" "),
            "-c /b.yaml -l info --base-id 7 --drain-time-s=9 --admin-address-path /x/admin"
        );
        assert_eq!(admin, PathBuf::from("/x/admin"));
        assert!(has_flag(&["--log-level-x".into()], &["--log-level"]).is_none());
    }
}
