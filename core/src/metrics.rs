//! Store-operation metrics, registered into an injected registry.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    /// get, list, apply, delete.
    pub op: &'static str,
    /// ok or error.
    pub outcome: &'static str,
}

/// Store operations made on behalf of API callers.
#[derive(Clone)]
pub struct StoreMetrics {
    pub ops: Family<StoreLabels, Counter>,
    pub latency: Family<StoreLabels, Histogram>,
}

impl StoreMetrics {
    pub fn register(registry: &mut Registry) -> StoreMetrics {
        let ops = Family::<StoreLabels, Counter>::default();
        let latency = Family::<StoreLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0])
        });
        registry.register("meridian_store_operations", "Store operations by the API", ops.clone());
        registry.register("meridian_store_operation_duration_seconds", "Store operation latency", latency.clone());
        StoreMetrics { ops, latency }
    }

    pub fn observe<T, E>(&self, op: &'static str, started: std::time::Instant, r: &Result<T, E>) {
        let labels = StoreLabels { op, outcome: if r.is_ok() { "ok" } else { "error" } };
        self.ops.get_or_create(&labels).inc();
        self.latency.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    }
}
