//! KDS figures of a global instance: the sync figures every delta stream
//! reports ([`SyncMetrics`], shared with the zone) and the zones connected.

use meridian_sync_proto::driver::metrics::SyncMetrics;
use prometheus_client::{metrics::gauge::Gauge, registry::Registry};

/// Sync figures of this global instance.
#[derive(Clone)]
pub struct KdsMetrics {
    /// Responses sent/ACKed/NACKed, resources sent and change-to-ACK time,
    /// per type and direction.
    pub sync: SyncMetrics,
    /// Zones with an open global-to-zone stream on this instance.
    pub zones_connected: Gauge,
    /// `kds_delta_generation` (the incumbent's name; seconds): applying one
    /// store change to the per-type snapshot zone streams diff from.
    pub delta_generation: prometheus_client::metrics::histogram::Histogram,
}

impl KdsMetrics {
    pub fn register(registry: &mut Registry) -> KdsMetrics {
        let sync = SyncMetrics::register(registry);
        let m = KdsMetrics {
            sync,
            zones_connected: Gauge::default(),
            delta_generation: meridian_sync_proto::driver::metrics::control_plane_histogram(),
        };
        registry.register(
            "kds_delta_generation",
            "Seconds to turn one store change into the snapshot KDS streams send from",
            m.delta_generation.clone(),
        );
        registry.register(
            "meridian_kds_zones_connected",
            "Zones connected to this global instance",
            m.zones_connected.clone(),
        );
        m
    }
}
