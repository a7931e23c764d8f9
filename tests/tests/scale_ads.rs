//! The smoke run of the scale harness's zone xDS rows (issue 13): the same
//! code path as `cargo bench --bench scale -- --ads-gateways G`, with tiny
//! sizes (3 gateways as delta-ADS clients, 2 route updates, 5 gateways
//! connecting at once). Checks that every row is produced with a same-run
//! baseline and that each update reached every gateway; never a time.

use meridian_tests::{Backend, scale_ads};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_smoke_run_produces_every_row_with_a_baseline() {
    let rows =
        scale_ads::run(scale_ads::AdsConfig { gateways: 3, updates: 2, connect: 5, backend: Backend::Sqlite }).await;
    let whats: Vec<&str> = rows.iter().map(|r| r.what.as_str()).collect();
    assert_eq!(
        whats,
        [
            "zone memory (RSS) per connected gateway, over 3",
            "route PUT at the global → all 3 gateways of the zone have it (ADS): p50 (2 updates)",
            "route PUT at the global → all 3 gateways of the zone have it (ADS): p99",
            "zone CPU per route update, 3 gateways connected",
            "xDS bytes received by all 3 gateways per route update",
            "5 gateways connect at once → all have their first configuration",
        ]
    );
    for r in &rows {
        assert!(r.figure.is_finite() && r.figure >= 0.0, "{}: {}", r.what, r.figure);
        assert!(r.baseline.is_finite(), "{}: baseline {}", r.what, r.baseline);
    }
    // Each update changed every gateway's route configuration: bytes arrived.
    let bytes = rows.iter().find(|r| r.what.starts_with("xDS bytes")).map(|r| r.figure).unwrap_or_default();
    assert!(bytes > 0.0, "no xDS bytes per update");
}
