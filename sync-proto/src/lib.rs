//! Meridian's shared language: the wire types, the resource model and the
//! rules every resource must satisfy.
//!
//! ```text
//!   universal YAML/JSON ──parse──▶ Resource { meta, Spec } ──validate──▶ ok / [field: reason]
//!                        ◀─print──        │  ▲
//!                                   encode│  │decode (protobuf, field numbers of kuma.*.v1alpha1)
//!                                         ▼  │
//!                              store bytes / KumaResource on KDS, version = sha256(content)
//! ```
//!
//! - [`pb`]: generated protobuf types (resource specs with serde, the KDS
//!   envelope and service).
//! - [`model`]: the type registry ([`ResourceType`]) and [`Resource`].
//! - [`universal`]: the universal YAML/JSON format users write.
//! - [`validate`]: per-type validation with field paths.
//! - [`delta`]: the delta-discovery state machine shared by KDS and xDS.
//! - [`driver`]: the sending and receiving loops every stream runs, and their metrics.
//! - [`kds`]: the KDS wire shape (names, envelope, metadata).
//! - [`propagation`]: the propagation-status body (`_status`) and its state rules.

pub mod delta;
pub mod driver;
pub mod envoy_admin;
pub mod envoy_yaml;
pub mod kds;
pub mod model;
pub mod pb;
pub mod propagation;
pub mod universal;
pub mod validate;

pub use model::{Meta, Resource, ResourceType, Spec, SyncDirection};
