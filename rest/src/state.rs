//! What every handler gets: the Manager, auth, server identity and metrics.

use std::sync::Arc;

use meridian_core::Manager;
use prometheus_client::registry::Registry;

use crate::{auth::Auth, metrics::ApiMetrics};

/// What `GET /` reports.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub version: String,
    pub instance_id: String,
    pub hostname: String,
    /// The zone name, for a zone.
    pub zone: Option<String>,
}

/// Everything a handler needs.
#[derive(Clone)]
pub struct ApiState {
    pub manager: Manager,
    pub auth: Auth,
    pub info: Arc<ServerInfo>,
    pub metrics: ApiMetrics,
    pub registry: Arc<Registry>,
    /// What `GET /config` answers: the running configuration, secrets
    /// already redacted by the process that built it.
    pub config: Arc<serde_json::Value>,
}
