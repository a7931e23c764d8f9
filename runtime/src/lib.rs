//! What every Meridian server process does the same way, so that
//! `meridian-global` and `meridian-zone` only wire their own parts.
//!
//! ```text
//!   main ─▶ process::run_until_signal ─▶ run(shutdown: CancellationToken)
//!              │ SIGTERM/SIGINT ─▶ shutdown.cancel()
//!              └ runtime ─▶ Tasks (critical tasks; the first to end on its own cancels the token)
//! ```
//!
//! - [`process`]: the runtime, signals, the one shutdown token, task supervision, logging.
//! - [`args`]: the flag groups both server binaries flatten into their `run` command.
//! - [`config`]: the running configuration for `GET /config`, secrets redacted.
//! - [`state`]: the data directory, the store and the admin token; this process's identity.
//! - [`tls`]: server TLS for the gRPC listeners (KDS, xDS): given, or a CA generated into the data directory.

pub mod args;
pub mod config;
pub mod diagnostics;
pub mod fdlimit;
pub mod metrics;
pub mod process;
pub mod state;
pub mod tls;

pub use process::{Tasks, announce, run_until_signal};
pub use tokio_util::sync::CancellationToken;
