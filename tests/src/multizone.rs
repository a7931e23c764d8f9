//! Multi-zone harness: real `meridian-global` and `meridian-zone` processes on
//! loopback sockets, started from one place with named parts.
//!
//! ```text
//!   TestDir ─┬─ Global ("g", "g2")   process + data dir + logs; API client; kds_url, CA
//!            ├─ Zone ("zone-1", ...) process + data dir + logs + token file; API client
//!            └─ logs/<part>-<n>.{stdout,stderr}   one pair per start, read for assertions
//!
//!   Api           HTTP client of one control plane (JSON in, status + JSON out)
//!   eventually    polls a check until it passes or a deadline expires
//!   raw_kds       a KDS client written only from the wire description (REFERENCE §4)
//!   postgres      a fresh database per test on the server of tests/pg-env.sh
//! ```
//!
//! Every process is killed (SIGKILL) when its part is dropped. A part can be
//! killed and restarted on the same ports, data directory and store, and
//! paused/resumed with SIGSTOP/SIGCONT. When a test panics, the tail of each
//! part's stderr is printed and the test directory is kept.

pub mod api;
pub mod raw_kds;
pub mod resources;

use std::{
    fs::File,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

pub use api::{Api, eventually};

/// How long a process may take to print its listening addresses.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of stderr printed per part when a test fails.
const LOG_TAIL_LINES: usize = 40;

/// Path of a workspace binary (built by `cargo build --workspace --bins`;
/// panics with that instruction when missing).
pub fn binary(name: &str) -> PathBuf {
    crate::bins::path(name)
}

/// The directory of one test: data directories and logs of every part. Kept
/// (and its path printed) when the test fails.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    pub fn new(test: &str) -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("meridian-mz-{test}-"))
            .tempdir()
            .expect("create the test directory");
        let path = dir.path().to_path_buf();
        std::fs::create_dir_all(path.join("logs")).expect("create the log directory");
        TestDir { dir: Some(dir), path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(d) = self.dir.take()
        {
            eprintln!("test directory kept: {}", d.keep().display());
        }
    }
}

/// Strips ANSI colour sequences (in case a logger ignores NO_COLOR).
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

/// One running incarnation of a binary, with its output in files.
struct Proc {
    label: String,
    child: Child,
    stdout: PathBuf,
}

impl Proc {
    fn spawn(bin: &Path, args: &[String], stdout: PathBuf, stderr: PathBuf, label: &str) -> Proc {
        let out = File::create(&stdout).expect("create stdout log");
        let err = File::create(&stderr).expect("create stderr log");
        let mut cmd = Command::new(bin);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err).env("NO_COLOR", "1");
        // Only the flags given here configure the process.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("MERIDIAN_") {
                cmd.env_remove(k);
            }
        }
        if let Ok(level) = std::env::var("MERIDIAN_TEST_LOG") {
            cmd.env("MERIDIAN_LOG_LEVEL", level);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Proc { label: label.to_string(), child, stdout }
    }

    /// Waits until stdout has a line starting with each prefix; returns the
    /// rest of each such line, in order.
    async fn wait_stdout(&mut self, prefixes: &[&str], stderr: &Path) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&self.stdout).unwrap_or_default();
            let found: Vec<Option<String>> = prefixes
                .iter()
                .map(|p| text.lines().find_map(|l| l.strip_prefix(p).map(|r| r.trim().to_string())))
                .collect();
            if found.iter().all(Option::is_some) {
                return found.into_iter().flatten().collect();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before it was ready; stderr:\n{}",
                    self.label,
                    strip_ansi(&std::fs::read_to_string(stderr).unwrap_or_default())
                );
            }
            if tokio::time::Instant::now() > deadline {
                panic!("{} did not print {prefixes:?} within {START_TIMEOUT:?}; stdout:\n{text}", self.label);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill -{sig}: {e}"));
        assert!(status.success(), "kill -{sig} {} ({}) failed", self.child.id(), self.label);
    }

    /// SIGKILL, then reap.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What every part shares: a name, a data directory, per-start logs and the
/// running process.
struct Part {
    label: String,
    data_dir: PathBuf,
    logs: PathBuf,
    starts: u32,
    proc: Option<Proc>,
}

impl Part {
    fn new(root: &Path, label: &str) -> Part {
        let data_dir = root.join(label);
        std::fs::create_dir_all(&data_dir).expect("create data dir");
        Part { label: label.to_string(), data_dir, logs: root.join("logs"), starts: 0, proc: None }
    }

    fn stderr_path(&self, start: u32) -> PathBuf {
        self.logs.join(format!("{}-{start}.stderr", self.label))
    }

    /// Starts the binary; returns what follows each stdout prefix.
    async fn launch(&mut self, bin: &str, args: &[String], prefixes: &[&str]) -> Vec<String> {
        assert!(self.proc.is_none(), "{} is already running", self.label);
        self.starts += 1;
        let stdout = self.logs.join(format!("{}-{}.stdout", self.label, self.starts));
        let stderr = self.stderr_path(self.starts);
        let mut p = Proc::spawn(&binary(bin), args, stdout, stderr.clone(), &self.label);
        let found = p.wait_stdout(prefixes, &stderr).await;
        self.proc = Some(p);
        found
    }

    fn running(&self) -> &Proc {
        self.proc.as_ref().unwrap_or_else(|| panic!("{} is not running", self.label))
    }

    /// Everything every incarnation wrote to stderr, without colours.
    fn stderr(&self) -> String {
        (1..=self.starts)
            .map(|n| std::fs::read_to_string(self.stderr_path(n)).unwrap_or_default())
            .map(|s| strip_ansi(&s))
            .collect::<Vec<_>>()
            .join("")
    }

    async fn wait_log(&self, needles: &[&str], timeout: Duration) -> String {
        eventually(&format!("{} logs a line with {needles:?}", self.label), timeout, || async {
            self.stderr()
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .map(str::to_string)
                .ok_or_else(|| "no such line yet".to_string())
        })
        .await
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.stderr();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            eprintln!("----- {} stderr (last {} lines) -----\n{}", self.label, tail.len(), tail.join("\n"));
        }
    }
}

/// How to run a global.
#[derive(Debug, Clone, Default)]
pub struct GlobalConfig {
    /// `--store`; `None` = SQLite in the data directory.
    pub store: Option<String>,
    /// `--kds-plaintext true` (zones then dial grpc://).
    pub plaintext: bool,
}

/// A `meridian-global` process.
pub struct Global {
    part: Part,
    config: GlobalConfig,
    api: Api,
    api_addr: SocketAddr,
    kds_addr: SocketAddr,
    ca: Option<PathBuf>,
}

impl Global {
    /// Starts a global named `label` (its data directory and log prefix).
    pub async fn start(dir: &TestDir, label: &str, config: GlobalConfig) -> Global {
        let mut part = Part::new(dir.path(), label);
        let (api_addr, kds_addr, ca) = Self::launch(&mut part, &config, "127.0.0.1:0", "127.0.0.1:0").await;
        Global { part, config, api: Api::new(&format!("http://{api_addr}")), api_addr, kds_addr, ca }
    }

    async fn launch(
        part: &mut Part,
        config: &GlobalConfig,
        api_addr: &str,
        kds_addr: &str,
    ) -> (SocketAddr, SocketAddr, Option<PathBuf>) {
        let mut args: Vec<String> = ["run", "--data-dir"].map(String::from).to_vec();
        args.push(part.data_dir.display().to_string());
        args.extend(["--api-addr".into(), api_addr.into(), "--kds-addr".into(), kds_addr.into()]);
        if let Some(store) = &config.store {
            args.extend(["--store".into(), store.clone()]);
        }
        if config.plaintext {
            args.extend(["--kds-plaintext".into(), "true".into()]);
        }
        let kds_prefix =
            if config.plaintext { "meridian-global: KDS on grpc://" } else { "meridian-global: KDS on grpcs://" };
        let mut prefixes = vec!["meridian-global: API on http://", kds_prefix];
        if !config.plaintext {
            prefixes.push("meridian-global: KDS CA at ");
        }
        let found = part.launch("meridian-global", &args, &prefixes).await;
        let parse = |s: &str| s.parse::<SocketAddr>().unwrap_or_else(|e| panic!("bad address {s:?}: {e}"));
        let ca = found.get(2).map(|p| {
            let p = PathBuf::from(p);
            if p.is_absolute() { p } else { part.data_dir.join(p) }
        });
        (parse(&found[0]), parse(&found[1]), ca)
    }

    /// Starts the global again on the same ports, data directory and store.
    pub async fn restart(&mut self) {
        let (api, kds) = (self.api_addr.to_string(), self.kds_addr.to_string());
        let (a, k, ca) = Self::launch(&mut self.part, &self.config, &api, &kds).await;
        assert_eq!((a, k), (self.api_addr, self.kds_addr));
        self.ca = ca;
    }

    /// SIGKILL: no goodbye to zones, no insight closed.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.part.proc.take() {
            p.kill();
        }
    }

    /// SIGSTOP: the process stays, but answers nothing.
    pub fn pause(&self) {
        self.part.running().signal("STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.part.running().signal("CONT");
    }

    pub fn api(&self) -> &Api {
        &self.api
    }

    pub fn api_url(&self) -> &str {
        self.api.base()
    }

    /// `grpcs://127.0.0.1:PORT` (or `grpc://` in plaintext).
    pub fn kds_url(&self) -> String {
        format!("{}://{}", if self.config.plaintext { "grpc" } else { "grpcs" }, self.kds_addr)
    }

    pub fn kds_addr(&self) -> SocketAddr {
        self.kds_addr
    }

    /// The generated KDS CA zones trust (TLS only).
    pub fn ca(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    /// A fresh zone token for `zone`, valid for an hour.
    pub async fn zone_token(&self, zone: &str) -> String {
        self.api.post_text("/tokens/zone", &serde_json::json!({"zone": zone, "validFor": "1h"})).await
    }

    pub fn stderr(&self) -> String {
        self.part.stderr()
    }

    /// Waits for a stderr line containing every needle; returns it.
    pub async fn wait_log(&self, needles: &[&str], timeout: Duration) -> String {
        self.part.wait_log(needles, timeout).await
    }

    pub fn pid(&self) -> u32 {
        self.part.running().child.id()
    }

    /// The data directory (the SQLite store is `global.db` in it).
    pub fn data_dir(&self) -> &Path {
        &self.part.data_dir
    }
}

/// A `meridian-zone` process connected to a global.
pub struct Zone {
    part: Part,
    name: String,
    args: Vec<String>,
    api: Api,
    api_addr: SocketAddr,
    xds_addr: SocketAddr,
}

impl Zone {
    /// Zone `name` with a fresh token from `global`; its label is its name.
    pub async fn connect(dir: &TestDir, global: &Global, name: &str) -> Zone {
        let token = global.zone_token(name).await;
        Zone::start(dir, name, name, global, Some(&token)).await
    }

    /// Zone `name` (label `label`) presenting `token` (`None`: an empty
    /// token file) to `global`.
    pub async fn start(dir: &TestDir, label: &str, name: &str, global: &Global, token: Option<&str>) -> Zone {
        Zone::start_at(dir, label, name, &global.kds_url(), global.ca(), token).await
    }

    /// Zone `name` dialling `address` (trusting `ca` for grpcs://).
    pub async fn start_at(
        dir: &TestDir,
        label: &str,
        name: &str,
        address: &str,
        ca: Option<&Path>,
        token: Option<&str>,
    ) -> Zone {
        let mut part = Part::new(dir.path(), label);
        let token_file = part.data_dir.join("zone-token");
        std::fs::write(&token_file, token.unwrap_or("")).expect("write the token file");
        let mut args: Vec<String> = ["run", "--zone", name, "--data-dir"].map(String::from).to_vec();
        args.push(part.data_dir.display().to_string());
        args.extend(["--xds-addr".into(), "127.0.0.1:0".into(), "--global-address".into(), address.into()]);
        args.extend(["--token-file".into(), token_file.display().to_string()]);
        if let Some(ca) = ca {
            args.extend(["--global-ca".into(), ca.display().to_string()]);
        }
        let (api_addr, xds_addr) = Self::launch(&mut part, &args, "127.0.0.1:0").await;
        Zone { part, name: name.to_string(), args, api: Api::new(&format!("http://{api_addr}")), api_addr, xds_addr }
    }

    /// Starts the process; returns its API and xDS addresses.
    async fn launch(part: &mut Part, args: &[String], api_addr: &str) -> (SocketAddr, SocketAddr) {
        let mut args = args.to_vec();
        args.extend(["--api-addr".into(), api_addr.into()]);
        let found =
            part.launch("meridian-zone", &args, &["meridian-zone: API on http://", "meridian-zone: xDS on "]).await;
        let parse = |s: &str| s.parse().unwrap_or_else(|e| panic!("bad address {s:?}: {e}"));
        (parse(&found[0]), parse(&found[1]))
    }

    /// Starts the zone again on the same API port and data directory (its
    /// xDS port is picked anew).
    pub async fn restart(&mut self) {
        let (addr, xds) = Self::launch(&mut self.part, &self.args, &self.api_addr.to_string()).await;
        assert_eq!(addr, self.api_addr);
        self.xds_addr = xds;
    }

    /// The zone's xDS server (Envoys dial it).
    pub fn xds_addr(&self) -> SocketAddr {
        self.xds_addr
    }

    /// The data directory (the SQLite store is `zone.db` in it).
    pub fn data_dir(&self) -> &Path {
        &self.part.data_dir
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.part.proc.take() {
            p.kill();
        }
    }

    /// SIGSTOP: the process stays, but answers nothing.
    pub fn pause(&self) {
        self.part.running().signal("STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.part.running().signal("CONT");
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn api(&self) -> &Api {
        &self.api
    }

    pub fn api_url(&self) -> &str {
        self.api.base()
    }

    pub fn stderr(&self) -> String {
        self.part.stderr()
    }

    /// Waits for a stderr line containing every needle; returns it.
    pub async fn wait_log(&self, needles: &[&str], timeout: Duration) -> String {
        self.part.wait_log(needles, timeout).await
    }
}

/// PostgreSQL for the global: a fresh database per test on the server
/// `tests/pg-env.sh` started. Without it the test fails.
pub mod postgres {
    use std::sync::atomic::{AtomicU64, Ordering};

    use sqlx::Connection;

    pub const ENV: &str = "MERIDIAN_TEST_POSTGRES_URL";

    /// Creates an empty database; returns its URL.
    pub async fn fresh_database() -> String {
        let admin = std::env::var(ENV).unwrap_or_default();
        assert!(
            !admin.is_empty(),
            "{ENV} is not set: this test needs PostgreSQL. Run it as \
             `bash tests/pg-env.sh cargo test -p meridian-tests --test multizone`"
        );
        static N: AtomicU64 = AtomicU64::new(0);
        let db = format!("meridian_mz_{}_{}_{:08x}", std::process::id(), N.fetch_add(1, Ordering::Relaxed), rand::random::<u32>());
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| panic!("connect to {admin}: {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("create database {db}: {e}"));
        let _ = conn.close().await;
        with_database(&admin, &db)
    }

    fn with_database(url: &str, db: &str) -> String {
        let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
        let scheme_end = base.find("://").map_or(0, |i| i + 3);
        let path_start = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
        let mut out = format!("{}/{db}", &base[..path_start]);
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}
