//! The sync figures every delta stream reports, through the registry the
//! process injects: responses sent, ACKed and NACKed and resources sent, per
//! type and direction, and the time from a change to the peer's ACK.

use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use super::Observer;
use crate::delta::SendStats;

/// Direction label of KDS global → zone streams.
pub const GLOBAL_TO_ZONE: &str = "global_to_zone";
/// Direction label of KDS zone → global streams (both ends).
pub const ZONE_TO_GLOBAL: &str = "zone_to_global";
/// Direction label of Envoy ADS streams.
pub const XDS: &str = "xds";

/// Labels of `meridian_kds_events`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// [`GLOBAL_TO_ZONE`], [`ZONE_TO_GLOBAL`] or [`XDS`].
    pub direction: &'static str,
    /// The resource type (bare KDS name, or the xDS type URL).
    pub resource_type: String,
    /// `sent`, `acked` or `nacked` for responses; `resources` for resources sent.
    pub event: &'static str,
}

/// Labels of the change-to-ACK histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub direction: &'static str,
    pub resource_type: String,
}

fn ack_histogram() -> Histogram {
    // 1 ms .. ~16 s, doubling.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15))
}

/// Sync figures of one process; clone it into every stream.
#[derive(Clone)]
pub struct SyncMetrics {
    pub events: Family<EventLabels, Counter>,
    /// Seconds from a source change to the ACK of the response carrying it.
    pub change_to_ack: Family<TypeLabels, Histogram, fn() -> Histogram>,
}

impl Default for SyncMetrics {
    fn default() -> SyncMetrics {
        SyncMetrics { events: Family::default(), change_to_ack: Family::new_with_constructor(ack_histogram) }
    }
}

impl SyncMetrics {
    /// Registers `meridian_kds_events` and `meridian_sync_change_to_ack_seconds` in `registry`.
    pub fn register(registry: &mut Registry) -> SyncMetrics {
        let m = SyncMetrics::default();
        registry.register(
            "meridian_kds_events",
            "Delta-sync responses sent, ACKed and NACKed, and resources sent, per type and direction (KDS and xDS)",
            m.events.clone(),
        );
        registry.register(
            "meridian_sync_change_to_ack_seconds",
            "Time from a change of desired resources to the peer's ACK of the response carrying it",
            m.change_to_ack.clone(),
        );
        m
    }

    pub fn count(&self, direction: &'static str, resource_type: &str, event: &'static str, n: u64) {
        self.events
            .get_or_create(&EventLabels { direction, resource_type: resource_type.to_string(), event })
            .inc_by(n);
    }

    /// An observer counting into these metrics under `direction`.
    pub fn observer(&self, direction: &'static str) -> MetricsObserver {
        MetricsObserver { metrics: self.clone(), direction }
    }
}

/// Counts a stream's events into [`SyncMetrics`].
#[derive(Clone)]
pub struct MetricsObserver {
    metrics: SyncMetrics,
    direction: &'static str,
}

/// The bare KDS type name, or the xDS type URL's last segment.
fn type_label(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

impl Observer for MetricsObserver {
    fn sent(&mut self, type_url: &str, response: &DeltaDiscoveryResponse, _stats: &SendStats) {
        let t = type_label(type_url);
        self.metrics.count(self.direction, t, "sent", 1);
        self.metrics.count(self.direction, t, "resources", response.resources.len() as u64);
    }
    fn acked(&mut self, type_url: &str, _nonce: &str, change_to_ack: Option<Duration>, _stats: &SendStats) {
        let t = type_label(type_url);
        self.metrics.count(self.direction, t, "acked", 1);
        if let Some(d) = change_to_ack {
            self.metrics
                .change_to_ack
                .get_or_create(&TypeLabels { direction: self.direction, resource_type: t.to_string() })
                .observe(d.as_secs_f64());
        }
    }
    fn nacked(&mut self, type_url: &str, _nonce: &str, _reason: &str, _stats: &SendStats) {
        self.metrics.count(self.direction, type_label(type_url), "nacked", 1);
    }
}

/// Two observers in one (metrics and insights).
impl<A: Observer, B: Observer> Observer for (A, B) {
    fn subscribed(&mut self, type_url: &str, held: usize) {
        self.0.subscribed(type_url, held);
        self.1.subscribed(type_url, held);
    }
    fn sent(&mut self, type_url: &str, response: &DeltaDiscoveryResponse, stats: &SendStats) {
        self.0.sent(type_url, response, stats);
        self.1.sent(type_url, response, stats);
    }
    fn acked(&mut self, type_url: &str, nonce: &str, change_to_ack: Option<Duration>, stats: &SendStats) {
        self.0.acked(type_url, nonce, change_to_ack, stats);
        self.1.acked(type_url, nonce, change_to_ack, stats);
    }
    fn nacked(&mut self, type_url: &str, nonce: &str, reason: &str, stats: &SendStats) {
        self.0.nacked(type_url, nonce, reason, stats);
        self.1.nacked(type_url, nonce, reason, stats);
    }
    fn stale(&mut self, type_url: &str, nonce: &str) {
        self.0.stale(type_url, nonce);
        self.1.stale(type_url, nonce);
    }
    fn unserved(&mut self, type_url: &str) {
        self.0.unserved(type_url);
        self.1.unserved(type_url);
    }
    fn source_changed(&mut self) {
        self.0.source_changed();
        self.1.source_changed();
    }
}
