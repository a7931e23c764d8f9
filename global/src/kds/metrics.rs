//! KDS figures for Prometheus, registered into the injected registry.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KdsLabels {
    /// `global_to_zone` or `zone_to_global`.
    pub direction: &'static str,
    /// The resource type (bare name, as on the wire).
    pub resource_type: String,
    /// `sent`, `acked` or `nacked` for responses; `resources` for resources sent.
    pub event: &'static str,
}

/// Sync figures of this global instance.
#[derive(Clone, Default)]
pub struct KdsMetrics {
    pub events: Family<KdsLabels, Counter>,
    /// Zones with an open global-to-zone stream on this instance.
    pub zones_connected: Gauge,
}

impl KdsMetrics {
    pub fn register(registry: &mut Registry) -> KdsMetrics {
        let m = KdsMetrics::default();
        registry.register("meridian_kds_events", "KDS responses sent, ACKed and NACKed, and resources sent", m.events.clone());
        registry.register("meridian_kds_zones_connected", "Zones connected to this global instance", m.zones_connected.clone());
        m
    }

    pub fn count(&self, direction: &'static str, resource_type: &str, event: &'static str, n: u64) {
        self.events.get_or_create(&KdsLabels { direction, resource_type: resource_type.to_string(), event }).inc_by(n);
    }
}
