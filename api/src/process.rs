//! What every Meridian server process does the same way: logging, the
//! shutdown signal, running on a runtime, supervising its tasks, naming
//! itself.

use std::{future::Future, process::ExitCode, time::Duration};

use tokio::{sync::watch, task::JoinSet};

/// Logs to stderr with an `EnvFilter` (`info`, `debug`, `meridian_api=debug,info`...);
/// an invalid filter falls back to `info`.
pub fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested");
}

/// Runs a server's `run` future on a new runtime until SIGTERM/SIGINT and
/// turns its outcome into the exit code; failures are printed as `<name>: <error chain>`.
pub fn run_until_signal<F, Fut>(name: &str, log_level: &str, run: F) -> ExitCode
where
    F: FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    init_logging(log_level);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(Box::pin(shutdown_signal()))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One shutdown signal for every task: turns `shutdown` into a watch that
/// each task waits on through [`stopped`].
pub fn stop_channel(shutdown: impl Future<Output = ()> + Send + 'static) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    rx
}

/// Resolves once the stop channel says stop.
pub async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Waits for a server's tasks. On shutdown they all end; if one ends on its
/// own (a critical failure), the others get up to 5 s and are then aborted,
/// and its error is returned.
pub async fn supervise(mut tasks: JoinSet<anyhow::Result<()>>, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let mut result = Ok(());
    if let Some(done) = tasks.join_next().await {
        let outcome = done.map_err(anyhow::Error::from).and_then(|r| r);
        if !*stop.borrow() {
            let e = outcome.err().unwrap_or_else(|| anyhow::anyhow!("a critical task ended unexpectedly"));
            tracing::error!(error = %format!("{e:#}"), "critical task ended; stopping");
            result = Err(e);
        } else if let Err(e) = outcome {
            tracing::warn!(error = %format!("{e:#}"), "task failed while stopping");
        }
    }
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        tasks.abort_all();
    }
    result
}

/// Creates the data directory and opens the store: `store` when given,
/// else `sqlite:<data_dir>/<default_file>`.
pub async fn open_store(
    data_dir: &std::path::Path,
    store: Option<&str>,
    default_file: &str,
) -> anyhow::Result<meridian_store::Store> {
    use anyhow::Context;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let url = store.map_or_else(|| format!("sqlite:{}", data_dir.join(default_file).display()), str::to_string);
    let store = meridian_store::Store::connect(&url).await.with_context(|| format!("cannot open store {url}"))?;
    tracing::info!(backend = store.backend_name(), "store ready");
    Ok(store)
}

/// The admin token: `flag` when set, else read from (or generated into)
/// `<data_dir>/admin-token`.
pub fn admin_token(flag: Option<&str>, data_dir: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    if let Some(t) = flag.map(str::trim).filter(|t| !t.is_empty()) {
        return Ok(t.to_string());
    }
    let (token, path) = crate::auth::Auth::load_or_create_token(data_dir)
        .with_context(|| format!("cannot read or create the admin token in {}", data_dir.display()))?;
    tracing::info!(path = %path.display(), "admin token");
    Ok(token)
}

/// This host's name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// `<hostname>-<random>`: identifies this process among replicas.
pub fn instance_id() -> String {
    format!("{}-{:08x}", hostname(), rand::random::<u32>())
}
