//! The sync figures every delta stream reports, through the registry the
//! process injects: responses sent, ACKed and NACKed and resources sent, per
//! type and direction, and the time from a change to the peer's ACK.
//!
//! Two families of names:
//! - the incumbent's (Kuma 2.14 `pkg/xds/metrics`, `pkg/util/xds/stats_callbacks.go`,
//!   `pkg/kds/v2/server/metrics.go`), unprefixed so that its dashboards and
//!   alerts read Meridian: `xds_requests_received`, `xds_responses_sent`,
//!   `xds_delivery`, `kds_delta_requests_received`, `kds_delta_responses_sent`,
//!   `kds_delta_delivery`, `kds_resources_sync`. Two deliberate differences:
//!   histograms observe **seconds** (the incumbent records milliseconds into
//!   Prometheus' default 0.005–10 buckets, so nearly every value lands in
//!   `+Inf`) with [`CONTROL_PLANE_BUCKETS`]; counters carry OpenMetrics'
//!   `_total` suffix (`xds_requests_received_total`).
//! - Meridian's own, prefixed `meridian_`: `meridian_kds_events`,
//!   `meridian_sync_change_to_ack_seconds`, `meridian_kds_write_to_apply_seconds`.

use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

/// Histogram buckets for control-plane latencies, in seconds: 0.1 ms to 10 s
/// (generation of one proxy's configuration takes ~0.1-25 ms; delivery to
/// an ACK, milliseconds to seconds).
pub const CONTROL_PLANE_BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A histogram with [`CONTROL_PLANE_BUCKETS`].
pub fn control_plane_histogram() -> Histogram {
    Histogram::new(CONTROL_PLANE_BUCKETS)
}

/// Labels of `xds_requests_received` / `kds_delta_requests_received` (the incumbent's).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The type URL (xDS) or KDS type name of the request.
    pub type_url: String,
    /// `ACK` or `NACK`.
    pub confirmation: &'static str,
}

/// Labels of `xds_responses_sent` / `kds_delta_responses_sent`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    pub type_url: String,
}

/// The incumbent's per-protocol stream figures (`xds_*` or `kds_delta_*`),
/// counted on the side that sends responses.
#[derive(Clone)]
pub struct StreamFigures {
    /// ACKs and NACKs received, per type URL.
    pub requests_received: Family<RequestLabels, Counter>,
    /// Responses sent, per type URL.
    pub responses_sent: Family<ResponseLabels, Counter>,
    /// Seconds from a change of what a peer should hold to the peer's ACK
    /// of the response carrying it (the incumbent's "delivery").
    pub delivery: Histogram,
}

impl Default for StreamFigures {
    fn default() -> StreamFigures {
        StreamFigures {
            requests_received: Family::default(),
            responses_sent: Family::default(),
            delivery: control_plane_histogram(),
        }
    }
}

impl StreamFigures {
    fn register(registry: &mut Registry, prefix: &str, what: &str) -> StreamFigures {
        let f = StreamFigures::default();
        registry.register(
            format!("{prefix}_requests_received"),
            format!("{what} requests received (ACK or NACK), per type URL"),
            f.requests_received.clone(),
        );
        registry.register(
            format!("{prefix}_responses_sent"),
            format!("{what} responses sent, per type URL"),
            f.responses_sent.clone(),
        );
        registry.register(
            format!("{prefix}_delivery"),
            format!("{what}: seconds from a configuration change to the peer's ACK of it"),
            f.delivery.clone(),
        );
        f
    }
}

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
    /// `xds_*`: Envoy ADS streams (zone).
    pub xds: StreamFigures,
    /// `kds_delta_*`: KDS streams, on the side sending responses (the
    /// global's global→zone, the zone's zone→global).
    pub kds: StreamFigures,
    /// `kds_resources_sync`: seconds a zone takes to store one KDS response
    /// received from the global (the incumbent's name and meaning).
    pub resources_sync: Histogram,
    /// `meridian_kds_write_to_apply_seconds`: from the write at the global
    /// (its store's modification time, stamped on the KDS response) to the
    /// zone having stored it. Measured across two clocks: skew between the
    /// hosts adds to it.
    pub write_to_apply: Histogram,
}

impl Default for SyncMetrics {
    fn default() -> SyncMetrics {
        SyncMetrics {
            events: Family::default(),
            change_to_ack: Family::new_with_constructor(ack_histogram),
            xds: StreamFigures::default(),
            kds: StreamFigures::default(),
            resources_sync: control_plane_histogram(),
            write_to_apply: control_plane_histogram(),
        }
    }
}

impl SyncMetrics {
    /// Registers every figure above in `registry`.
    pub fn register(registry: &mut Registry) -> SyncMetrics {
        let m = SyncMetrics {
            xds: StreamFigures::register(registry, "xds", "xDS (Envoy ADS)"),
            kds: StreamFigures::register(registry, "kds_delta", "KDS"),
            ..SyncMetrics::default()
        };
        registry.register(
            "kds_resources_sync",
            "Seconds a zone takes to store one KDS response from the global",
            m.resources_sync.clone(),
        );
        registry.register(
            "meridian_kds_write_to_apply_seconds",
            "Seconds from a write at the global to a zone having stored it (across clocks)",
            m.write_to_apply.clone(),
        );
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

    /// An observer counting into these metrics under `direction`, for a
    /// receiving loop.
    pub fn observer(&self, direction: &'static str) -> MetricsObserver {
        MetricsObserver { metrics: self.clone(), direction, sending: false }
    }

    /// An observer for a sending loop: it also counts the incumbent's
    /// `xds_*` (direction [`XDS`]) or `kds_delta_*` figures.
    pub fn sender(&self, direction: &'static str) -> MetricsObserver {
        MetricsObserver { metrics: self.clone(), direction, sending: true }
    }
}

/// Counts a stream's events into [`SyncMetrics`].
#[derive(Clone)]
pub struct MetricsObserver {
    metrics: SyncMetrics,
    direction: &'static str,
    /// On a sending loop (ACKs and NACKs are requests received).
    sending: bool,
}

impl MetricsObserver {
    /// The incumbent's figures of this stream, on a sending loop.
    fn figures(&self) -> Option<&StreamFigures> {
        match (self.sending, self.direction) {
            (false, _) => None,
            (true, XDS) => Some(&self.metrics.xds),
            (true, _) => Some(&self.metrics.kds),
        }
    }

    fn received(&self, type_url: &str, confirmation: &'static str) {
        if let Some(f) = self.figures() {
            f.requests_received.get_or_create(&RequestLabels { type_url: type_url.to_string(), confirmation }).inc();
        }
    }
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
        if let Some(f) = self.figures() {
            f.responses_sent.get_or_create(&ResponseLabels { type_url: type_url.to_string() }).inc();
        }
    }
    fn acked(&mut self, type_url: &str, _nonce: &str, change_to_ack: Option<Duration>, _stats: &SendStats) {
        let t = type_label(type_url);
        self.metrics.count(self.direction, t, "acked", 1);
        self.received(type_url, "ACK");
        if let (Some(d), Some(f)) = (change_to_ack, self.figures()) {
            f.delivery.observe(d.as_secs_f64());
        }
        if let Some(d) = change_to_ack {
            self.metrics
                .change_to_ack
                .get_or_create(&TypeLabels { direction: self.direction, resource_type: t.to_string() })
                .observe(d.as_secs_f64());
        }
    }
    fn nacked(&mut self, type_url: &str, _nonce: &str, _reason: &str, _stats: &SendStats) {
        self.metrics.count(self.direction, type_label(type_url), "nacked", 1);
        self.received(type_url, "NACK");
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
