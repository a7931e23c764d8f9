//! Running the real `meridianctl` binary.

use std::{process::Stdio, sync::Arc};

use tempfile::TempDir;
use tokio::io::AsyncWriteExt;

use crate::process::binary;

/// A `meridianctl` invocation under construction. Each `Ctl` has its own
/// HOME and config file, so neither the user's config nor `MERIDIAN_*`
/// variables of the test runner leak in; clones share them.
#[derive(Debug, Clone)]
pub struct Ctl {
    args: Vec<String>,
    env: Vec<(String, String)>,
    home: Arc<TempDir>,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct CtlOutput {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// The command line, for messages.
    pub command: String,
}

impl CtlOutput {
    /// Panics with everything when the exit code is not `code`.
    pub fn expect_code(self, code: i32) -> CtlOutput {
        assert_eq!(
            self.code, code,
            "`{}` exited with {} (expected {code})\nstdout:\n{}\nstderr:\n{}",
            self.command, self.code, self.stdout, self.stderr
        );
        self
    }

    /// Exit code 0.
    pub fn ok(self) -> CtlOutput {
        self.expect_code(0)
    }

    /// Stdout lines.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

impl Default for Ctl {
    fn default() -> Self {
        Self::new()
    }
}

impl Ctl {
    pub fn new() -> Ctl {
        let home = tempfile::Builder::new()
            .prefix("meridianctl-home-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary HOME: {e}"));
        Ctl { args: Vec::new(), env: Vec::new(), home: Arc::new(home) }
    }

    /// The config file this invocation uses (`$HOME/.meridian/meridianctl.yaml`).
    pub fn config_path(&self) -> std::path::PathBuf {
        self.home.path().join(".meridian").join("meridianctl.yaml")
    }

    pub fn arg(mut self, a: impl Into<String>) -> Ctl {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Ctl
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Ctl {
        self.env.push((k.into(), v.into()));
        self
    }

    /// This invocation plus more arguments (a clone sharing HOME).
    pub fn with<I, S>(&self, args: I) -> Ctl
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.clone().args(args)
    }

    /// Runs with empty stdin.
    pub async fn run(&self) -> CtlOutput {
        self.run_with_stdin(None).await
    }

    /// Runs with `input` on stdin (for `-f -`).
    pub async fn run_stdin(&self, input: &str) -> CtlOutput {
        self.run_with_stdin(Some(input)).await
    }

    async fn run_with_stdin(&self, input: Option<&str>) -> CtlOutput {
        let bin = binary("meridianctl");
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.args(&self.args);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("MERIDIAN_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("HOME", self.home.path());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let command = format!("meridianctl {}", self.args.join(" "));
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            let text = text.to_string();
            // Write concurrently with reading the output, so large inputs cannot deadlock.
            tokio::spawn(async move {
                let _ = stdin.write_all(text.as_bytes()).await;
                let _ = stdin.shutdown().await;
            });
        }
        let out = child.wait_with_output().await.unwrap_or_else(|e| panic!("`{command}`: {e}"));
        CtlOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            command,
        }
    }
}
