//! The diagnostics listener's router (the incumbent's diagnostics server,
//! port 5680): `/healthy`, `/ready` and `/metrics`, answered without
//! authentication, and nothing else (404). Served on its own address,
//! apart from the API, so that probes and Prometheus need no API access.

use axum::{Router, routing::get};

use crate::{
    error::ApiError,
    handlers::{metrics_text, ready},
    state::ApiState,
};

/// `/healthy` (the process answers), `/ready` (its store answers within
/// 2 s; 503 otherwise), `/metrics` (OpenMetrics text of the process's
/// registry); any other path 404.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthy", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .fallback(|| async {
            ApiError::not_found("the diagnostics listener serves /healthy, /ready and /metrics only")
        })
        .with_state(state)
}
