//! A real `meridian-global` process on an ephemeral port.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use tempfile::TempDir;

use crate::{
    Api, Ctl, bins,
    db::{Backend, TestStore},
};

/// How long a starting global may take to print its API address. Only a
/// guard against a hung process, never an assertion about speed.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Lines of server logs printed when a test fails.
const LOG_TAIL_LINES: usize = 60;

/// The line `meridian-global run` prints once the API listens.
const API_LINE_PREFIX: &str = "meridian-global: API on ";

/// How the global is run.
#[derive(Debug, Clone)]
pub struct GlobalOptions {
    /// `--api-trust-loopback`: with `false`, even loopback callers need the token.
    pub trust_loopback: bool,
    /// `--api-tls-cert` and `--api-tls-key`: serve the API over HTTPS.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Let the global create the `default` Mesh at start. `false` (the
    /// default) passes `--skip-default-mesh`: most scenarios start from an
    /// empty store and create the Meshes they use.
    pub default_mesh: bool,
}

impl Default for GlobalOptions {
    fn default() -> Self {
        GlobalOptions {
            trust_loopback: true,
            tls: None,
            default_mesh: false,
        }
    }
}

/// A running global with its data directory and store; killed on drop.
pub struct Global {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT` of the current process.
    pub api_url: String,
    /// The admin token it was started with.
    pub admin_token: String,
    pub store: TestStore,
    options: GlobalOptions,
    /// Data directory (and SQLite file); survives restarts.
    dir: TempDir,
    /// How many processes were started (names their log files).
    starts: u32,
}

impl Global {
    /// Starts a global on a new store of `backend`.
    pub async fn start(backend: Backend) -> Global {
        Self::start_with(backend, GlobalOptions::default()).await
    }

    pub async fn start_with(backend: Backend, options: GlobalOptions) -> Global {
        crate::init_crypto();
        let dir = tempfile::Builder::new()
            .prefix("meridian-it-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        let store = TestStore::create(backend, dir.path()).await;
        let admin_token = format!("it-{:032x}", rand::random::<u128>());
        let mut g = Global {
            child: None,
            api_url: String::new(),
            admin_token,
            store,
            options,
            dir,
            starts: 0,
        };
        g.spawn();
        g
    }

    pub fn backend(&self) -> Backend {
        self.store.backend
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Raw HTTP against the current process, without a token.
    pub fn api(&self) -> Api {
        Api::new(&self.api_url, None)
    }

    /// Raw HTTP with the admin token.
    pub fn admin_api(&self) -> Api {
        Api::new(&self.api_url, Some(self.admin_token.clone()))
    }

    /// `meridianctl --api-url <this global>`, isolated from the user's config.
    pub fn ctl(&self) -> Ctl {
        Ctl::new().args(["--api-url", &self.api_url])
    }

    /// Kills the process with SIGKILL (no graceful shutdown) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the process and starts a new one on the same data directory
    /// and store (on a new port: `api_url` changes).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Starts the process again after [`Global::kill`].
    pub fn start_again(&mut self) {
        assert!(
            self.child.is_none(),
            "the global is still running; kill it first"
        );
        self.spawn();
    }

    /// Everything the processes wrote to stderr so far.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for i in 1..=self.starts {
            let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
            out.push_str(&format!("---- process {i} stderr ----\n{text}"));
        }
        out
    }

    /// Stops the process and drops the PostgreSQL database.
    pub async fn cleanup(mut self) {
        self.kill();
        self.store.drop_database().await;
    }

    fn log_path(&self, n: u32) -> PathBuf {
        self.dir.path().join(format!("global-{n}.log"))
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log_path = self.log_path(self.starts);
        let log = File::create(&log_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
        let bin = bins::path("meridian-global");
        let mut cmd = Command::new(&bin);
        cmd.arg("run")
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(["--store", &self.store.url])
            .args(["--api-addr", "127.0.0.1:0"])
            .args(["--kds-addr", "127.0.0.1:0", "--kds-plaintext", "true"])
            .args(["--admin-token", &self.admin_token])
            .args([
                "--api-trust-loopback",
                if self.options.trust_loopback {
                    "true"
                } else {
                    "false"
                },
            ])
            .args(["--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        if let Some((cert, key)) = &self.options.tls {
            cmd.arg("--api-tls-cert").arg(cert).arg("--api-tls-key").arg(key);
        }
        if !self.options.default_mesh {
            cmd.arg("--skip-default-mesh");
        }
        // Only the flags above configure it, never the test runner's environment.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("MERIDIAN_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdout = child
            .stdout
            .take()
            .unwrap_or_else(|| panic!("no stdout pipe"));
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            // Forward the API line, then keep draining so the child never blocks.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix(API_LINE_PREFIX) {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        self.child = Some(child);
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(url) => self.api_url = url,
            Err(e) => {
                let status = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                self.kill();
                panic!(
                    "meridian-global did not report its API address ({e}; exit status {status:?}).\n{}",
                    self.logs()
                );
            }
        }
    }
}

impl Drop for Global {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            // The test failed: show what the server said (its last lines).
            let logs = self.logs();
            let lines: Vec<&str> = logs.lines().collect();
            let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
            eprintln!("meridian-global logs (last {LOG_TAIL_LINES} lines):\n{tail}");
        }
    }
}
