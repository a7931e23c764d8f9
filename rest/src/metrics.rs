//! The REST API's Prometheus metrics, registered into an injected registry.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    /// The matched route template (`/meshes/{mesh}/{plural}/{name}`), never the raw path.
    pub route: String,
    pub status: u16,
}

/// The REST API's request figures.
#[derive(Clone)]
pub struct ApiMetrics {
    pub requests: Family<HttpLabels, Counter>,
    pub latency: Family<HttpLabels, Histogram>,
}

impl ApiMetrics {
    pub fn register(registry: &mut Registry) -> ApiMetrics {
        let requests = Family::<HttpLabels, Counter>::default();
        let latency = Family::<HttpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5])
        });
        registry.register("meridian_api_requests", "REST API requests", requests.clone());
        registry.register("meridian_api_request_duration_seconds", "REST API request latency", latency.clone());
        ApiMetrics { requests, latency }
    }
}
