//! The control-plane domain that the global and every zone share; no HTTP,
//! no gRPC, no process concerns.
//!
//! ```text
//!   rest (HTTP) ──┐
//!                 ├──▶ Manager (validate, origin rules, optimistic concurrency) ──▶ Store
//!   KDS streams ──┘        ▲
//!        └── received::apply (one resource batch from the peer → store, ACK/NACK)
//! ```
//!
//! - [`manager`]: typed resource access over [`meridian_store::Store`]; what a
//!   user may write depends on the [`manager::Role`].
//! - [`defaults`]: the `default` Mesh created at start, as the incumbent does.
//! - [`origin`]: the `kuma.io/origin`/`kuma.io/zone` labels and what they allow.
//! - [`received`]: applying resources received over KDS, for both directions.
//! - [`liveness`]: whether a zone is online, from its ZoneInsight.
//! - [`metrics`]: store-operation figures, registered into an injected registry.

pub mod ca;
pub mod defaults;
pub mod liveness;
pub mod manager;
pub mod mesh_ca;
pub mod metrics;
pub mod origin;
pub mod received;

pub use manager::{Entry, Manager, ManagerError, Role};
