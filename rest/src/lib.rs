//! The REST API that the global and every zone serve, on the incumbent's
//! paths (`/meshes/{mesh}/meshgateways/{name}`) and shapes.
//!
//! ```text
//!   listener (TCP | TLS) ──▶ server::serve ──▶ router ──▶ handlers ──▶ meridian_core::Manager
//!                                               │            └─▶ overview (resource + insight)
//!                                               └─ auth (admin token), metrics, paging
//! ```
//!
//! - [`handlers`]: the router and its CRUD handlers.
//! - [`overview`]: `_overview` endpoints joining resources with insights.
//! - [`filters`]: `?name=`, `?tag=`, `?gateway=` on lists and `_overview`s.
//! - [`paging`]: `offset`/`size` in, `next` out.
//! - [`auth`]: the admin token (and, in zones, Dataplane tokens for Dataplane writes).
//! - [`tokens`]: issuing Dataplane tokens, rotating and removing signing keys.
//! - [`error`]: the incumbent's error body and status mapping.
//! - [`state`]: what every handler gets.
//! - [`metrics`]: request figures, registered into an injected registry.
//! - [`listener`]: the guarded accept loop of every listener (cap, deadlines).
//! - [`server`]: serving a router on an already-bound listener until shutdown.

pub mod auth;
pub mod diagnostics;
pub mod error;
pub mod filters;
pub mod handlers;
pub mod listener;
pub mod metrics;
pub mod overview;
pub mod paging;
pub mod server;
pub mod state;
pub mod tokens;

pub use handlers::{MAX_BODY_BYTES, refuse_wrong_token, require_admin, router};
pub use state::{ApiState, ServerInfo};
