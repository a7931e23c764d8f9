//! The multi-process test harness: real binaries, real HTTP, real stores.
//!
//! ```text
//!   test ──▶ TestStore (SQLite file | fresh PostgreSQL database per test)
//!     │          │ --store URL
//!     ├──▶ Global ── spawns target/debug/meridian-global on 127.0.0.1:0,
//!     │             waits for "API on http://ADDR", SIGKILL on drop / kill()
//!     ├──▶ Api ──── raw HTTP (status, ETag, JSON) against the global
//!     └──▶ Ctl ──── runs target/debug/meridianctl with args/stdin in an
//!                   isolated HOME and config; captures code, stdout, stderr
//! ```
//!
//! The binaries are not built here: run `cargo build --workspace --bins`
//! first (the documented test command does); a missing binary fails the test
//! with that instruction. PostgreSQL tests need `MERIDIAN_TEST_POSTGRES_URL`
//! (set by `tests/pg-env.sh`) and fail, never skip, without it.
//!
//! [`multizone`] is the harness of the global + zones topology (KDS).

pub mod api;
pub mod bins;
pub mod ctl;
pub mod db;
pub mod global;
pub mod multizone;

pub use api::{Api, Reply};
pub use ctl::{Ctl, CtlOutput};
pub use db::{Backend, TestStore};
pub use global::{Global, GlobalOptions};

/// Installs the ring crypto provider (reqwest is built without one). Safe
/// to call many times.
pub fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
