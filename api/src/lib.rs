//! The control-plane core that the global and every zone share.
//!
//! ```text
//!   HTTP ──▶ rest (paths, auth, paging, errors) ──▶ Manager (validate, origin rules,
//!                                                    optimistic concurrency) ──▶ Store
//! ```
//!
//! - [`manager`]: typed resource access over [`meridian_store::Store`]; what a
//!   user may write depends on the [`manager::Role`].
//! - [`rest`]: the REST API on the incumbent's paths and shapes.
//! - [`auth`]: the admin token.
//! - [`overview`]: `_overview` endpoints joining resources with insights.
//! - [`received`]: applying resources received over KDS, for both directions.
//! - [`metrics`]: Prometheus figures, registered into an injected registry.
//! - [`server`]: serving a router on an already-bound listener until shutdown.
//! - [`process`]: logging, signals, task supervision shared by the server binaries.

pub mod auth;
pub mod error;
pub mod manager;
pub mod metrics;
pub mod overview;
pub mod received;
pub mod process;
pub mod rest;
pub mod server;

pub use manager::{Entry, Manager, ManagerError, Role};
