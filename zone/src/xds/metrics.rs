//! The xDS server's own figures (besides the per-stream ones every delta
//! stream reports, [`meridian_sync_proto::driver::metrics`]), under the
//! incumbent's names (Kuma 2.14 `pkg/xds/metrics`): `xds_streams_active`
//! and `xds_generation` (in seconds, where the incumbent observes
//! milliseconds).

use meridian_sync_proto::driver::metrics::control_plane_histogram;
use prometheus_client::{
    metrics::{gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Figures of this zone's xDS server; clones share their values.
#[derive(Clone)]
pub struct XdsFigures {
    /// Open ADS streams (delta and state of the world), authenticated and
    /// naming a known Dataplane.
    pub streams_active: Gauge,
    /// Seconds to generate one Dataplane's configuration (generator plus
    /// its mTLS secrets).
    pub generation: Histogram,
}

impl Default for XdsFigures {
    fn default() -> XdsFigures {
        XdsFigures { streams_active: Gauge::default(), generation: control_plane_histogram() }
    }
}

impl XdsFigures {
    /// Registers `xds_streams_active` and `xds_generation` in `registry`.
    pub fn register(registry: &mut Registry) -> XdsFigures {
        let f = XdsFigures::default();
        registry.register("xds_streams_active", "Open xDS (ADS) streams from Envoys", f.streams_active.clone());
        registry.register(
            "xds_generation",
            "Seconds to generate one Dataplane's Envoy configuration",
            f.generation.clone(),
        );
        f
    }
}

/// Counts one open stream in `xds_streams_active` while it lives.
pub struct ActiveStream(Gauge);

impl ActiveStream {
    pub fn open(gauge: &Gauge) -> ActiveStream {
        gauge.inc();
        ActiveStream(gauge.clone())
    }
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}
