//! The process: a runtime, one shutdown token that every server, stream
//! loop and background task selects on, signals that cancel it, and the
//! supervision of critical tasks (quilkin's `src/signal.rs` shape).
//!
//! Shutdown has two causes and one path: SIGTERM/SIGINT, or a critical task
//! that ended on its own (a failure). Either cancels the token; every task
//! then finishes its own way (streams close their insights, servers stop
//! accepting and drain) within [`SHUTDOWN_GRACE`], and the process exits 0
//! for a signal, non-zero for a failure.

use std::{future::Future, process::ExitCode, time::Duration};

use tokio::task::JoinSet;

use crate::args::{LogArgs, LogFormat};
use tokio_util::sync::CancellationToken;

/// How long tasks get to finish after the token is cancelled before they
/// are aborted. Streams and servers stop within a few milliseconds of the
/// token; this bounds a task that does not.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// Logs to stderr with an `EnvFilter` (`info`, `debug`, `meridian_core=debug,info`...);
/// an invalid filter falls back to `info`. ANSI colour only when stderr is a
/// terminal (a log file or a container's log stays plain text); `json` writes
/// one JSON object per line.
pub fn init_logging(log: &LogArgs) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_new(&log.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match log.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Resolves on the first SIGTERM or SIGINT.
async fn signalled() {
    use tokio::signal::unix::{SignalKind, signal};
    let wait = |kind: SignalKind| async move {
        match signal(kind) {
            Ok(mut s) => {
                s.recv().await;
            }
            // Without a handler the default action (exit) applies anyway.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = wait(SignalKind::terminate()) => tracing::info!("SIGTERM: shutting down"),
        () = wait(SignalKind::interrupt()) => tracing::info!("SIGINT: shutting down"),
    }
}

/// Runs a server's `run` future on a new runtime with one shutdown token,
/// cancelled on SIGTERM or SIGINT, and turns its outcome into the exit code;
/// failures are printed as `<name>: <error chain>`.
pub fn run_until_signal<F, Fut>(name: &str, log: &LogArgs, run: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    init_logging(log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    let outcome = runtime.block_on(async {
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                tokio::select! {
                    () = signalled() => shutdown.cancel(),
                    () = shutdown.cancelled() => {}
                }
            }
        });
        run(shutdown.clone()).await
    });
    // Whatever is still running (a blocking read, a detached task) must not
    // hold the exit.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A server's critical tasks under one shutdown token. Each is named for
/// the logs; the first to end while the token is not cancelled is a
/// failure: it cancels the token and its error becomes the process's.
pub struct Tasks {
    set: JoinSet<(&'static str, anyhow::Result<()>)>,
    shutdown: CancellationToken,
}

impl Tasks {
    pub fn new(shutdown: CancellationToken) -> Tasks {
        Tasks { set: JoinSet::new(), shutdown }
    }

    /// The token every task selects on.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Starts a critical task. It must end soon after the token is cancelled.
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.set.spawn(async move { (name, task.await) });
    }

    /// Waits until the token is cancelled (or a task ends on its own, which
    /// cancels it), then gives every task [`SHUTDOWN_GRACE`] to finish and
    /// aborts the rest. Returns the error of the task that ended first
    /// unbidden, if one did.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut result = Ok(());
        tokio::select! {
            () = self.shutdown.cancelled() => {}
            Some(done) = self.set.join_next() => {
                let (name, outcome) = match done {
                    Ok((name, outcome)) => (name, outcome),
                    Err(e) => ("a task", Err(anyhow::Error::from(e))),
                };
                if !self.shutdown.is_cancelled() {
                    let e = match outcome {
                        Err(e) => e.context(format!("{name} failed")),
                        Ok(()) => anyhow::anyhow!("{name} ended unexpectedly"),
                    };
                    tracing::error!(error = %format!("{e:#}"), "critical task ended; stopping");
                    result = Err(e);
                    self.shutdown.cancel();
                }
            }
        }
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while let Some(done) = self.set.join_next().await {
                if let Ok((name, Err(e))) = done {
                    tracing::warn!(task = name, error = %format!("{e:#}"), "task failed while stopping");
                }
            }
        });
        if drained.await.is_err() {
            tracing::warn!(tasks = self.set.len(), "tasks still running after the shutdown grace; aborting them");
            self.set.abort_all();
        }
        tracing::info!("stopped");
        result
    }
}

/// Prints a line users (and test harnesses) read on stdout; a closed stdout
/// is not an error for a server.
pub fn announce(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_ends_unbidden_cancels_the_others_and_fails() {
        let shutdown = CancellationToken::new();
        let mut tasks = Tasks::new(shutdown.clone());
        let seen = shutdown.clone();
        tasks.spawn("waiter", async move {
            seen.cancelled().await;
            Ok(())
        });
        tasks.spawn("broken", async { Err(anyhow::anyhow!("boom")) });
        let err = tasks.wait().await.expect_err("a failed task fails the process");
        assert!(format!("{err:#}").contains("broken failed: boom"), "{err:#}");
        assert!(shutdown.is_cancelled());
    }

    #[tokio::test]
    async fn a_task_that_returns_ok_unbidden_is_a_failure_too() {
        let mut tasks = Tasks::new(CancellationToken::new());
        tasks.spawn("server", async { Ok(()) });
        let err = tasks.wait().await.expect_err("unexpected end");
        assert!(err.to_string().contains("server ended unexpectedly"), "{err}");
    }

    #[tokio::test]
    async fn cancelling_the_token_stops_cleanly_and_aborts_stragglers() {
        let shutdown = CancellationToken::new();
        let mut tasks = Tasks::new(shutdown.clone());
        let s = shutdown.clone();
        tasks.spawn("polite", async move {
            s.cancelled().await;
            Ok(())
        });
        tasks.spawn("stubborn", async {
            std::future::pending::<()>().await;
            Ok(())
        });
        shutdown.cancel();
        tasks.wait().await.expect("a requested shutdown is a success");
    }
}
