//! The scale harness's smoke run (issue 13): the same code path as
//! `cargo bench --bench scale`, with tiny sizes (2 zones, 3 updates, 5
//! MeshGateways held, 20 Dataplanes). Checks that every row is produced, each
//! with a same-run baseline, and that the table prints them; never a time.

use std::time::Duration;

use meridian_tests::{
    Backend,
    scale::{self, Config},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_run_produces_every_row_with_a_baseline() {
    let report = scale::run(Config {
        zones: 2,
        updates: 3,
        gateways: 5,
        dataplanes: 20,
        idle: Duration::from_secs(1),
        backend: Backend::Sqlite,
        real_zones: false,
    })
    .await;
    let whats: Vec<&str> = report.rows.iter().map(|r| r.what.as_str()).collect();
    let expected = [
        "2 zones connect → each holds the gateway",
        "global (sqlite) with 2 idle zones: CPU",
        "global with 2 idle zones: change-log rows per minute",
        "global with 2 idle zones: store growth per minute",
        "route PUT → all 2 zones have it: p50 (3 updates)",
        "route PUT → all 2 zones have it: p99",
        "global CPU per route update",
        "KDS bytes received by all 2 zones per route update",
        "route PUT → all 2 zones have it, 5 MeshGateways held: p50 (3 updates)",
        "route PUT → all 2 zones have it, 5 MeshGateways held: p99",
        "global CPU per route update, 5 MeshGateways held",
        "KDS bytes received by all 2 zones per route update, 5 MeshGateways held",
        "20 Dataplanes registered at a federated zone (8 clients), per second",
        "last of 20 Dataplanes registered → the global lists all",
        "federated zone on a CPU during the registration, per Dataplane (20)",
        "federated zone runnable but waiting for a CPU, per Dataplane (20)",
        "20 Dataplanes registered at a standalone zone (8 clients), per second",
        "zone memory (RSS) per Dataplane, over 20",
        "global (sqlite) memory (RSS) per Dataplane, over 20",
    ];
    assert_eq!(whats, expected);
    for row in &report.rows {
        assert!(row.figure.is_finite(), "{row:?}");
        assert!(!row.baseline_what.is_empty() && row.baseline.is_finite() && row.baseline >= 0.0, "{row:?}");
    }
    // Round trips, rates and sizes are never zero; each such figure has a ratio.
    // (Time spent waiting for a CPU may be 0 on an idle machine, and CPU
    // time is counted in clock ticks of 10 ms: a few small updates may
    // add up to none.)
    let timed = |r: &&scale::Row| matches!(r.unit, "ms" | "/s") && !r.what.contains("CPU");
    for row in report.rows.iter().filter(|r| timed(r) || r.what.starts_with("KDS bytes")) {
        assert!(row.figure > 0.0 && row.baseline > 0.0 && row.ratio().is_finite(), "{row:?}");
    }
    let table = report.table();
    for what in expected {
        assert!(table.contains(&format!("| {what} | ")), "{what} missing from\n{table}");
    }
}

/// The same run with real `meridian-zone` processes as the zones: every
/// row but the KDS bytes (not observed for real zones), each with a baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_run_with_real_zones() {
    let report = scale::run(Config {
        zones: 2,
        updates: 2,
        gateways: 3,
        dataplanes: 10,
        idle: Duration::from_secs(1),
        backend: Backend::Sqlite,
        real_zones: true,
    })
    .await;
    let whats: Vec<&str> = report.rows.iter().map(|r| r.what.as_str()).collect();
    for what in [
        "2 real zones connect → each holds the gateway",
        "global (sqlite) with 2 real idle zones: CPU",
        "route PUT → all 2 real zones have it: p50 (2 updates)",
        "route PUT → all 2 real zones have it, 3 MeshGateways held: p99",
        "10 Dataplanes registered at a federated zone (8 clients), per second",
    ] {
        assert!(whats.contains(&what), "{what} missing from {whats:#?}");
    }
    assert!(!whats.iter().any(|w| w.starts_with("KDS bytes")), "{whats:#?}");
    for row in report.rows.iter().filter(|r| matches!(r.unit, "ms" | "/s") && !r.what.contains("CPU")) {
        assert!(row.figure > 0.0 && row.baseline > 0.0 && row.ratio().is_finite(), "{row:?}");
    }
}
