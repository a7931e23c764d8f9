//! KDS fan-out at the global: one real `meridian-global` process (SQLite,
//! plaintext KDS) and `ZONES` zones played by in-process raw KDS clients
//! (`meridian_tests::raw_kds`, written from the wire description),
//! each subscribed to every global→zone type and ACKing every response.
//!
//! Figures:
//! - initial sync: all zones connected → every zone holds the `PRELOAD` routes;
//! - one MeshGatewayRoute PUT at the global → every zone received it
//!   (`UPDATES` updates, p50/p99/max; includes the PUT's own round trip);
//! - global CPU (user + system, from `/proc/<pid>/stat`) per update.
//!
//! Run: `cargo build --workspace --bins && cargo bench --profile dev -p meridian-tests --bench kds_fanout`
//! (`MERIDIAN_BENCH_ZONES` overrides the zone count). Prints figures; asserts
//! nothing about time.

use std::{
    sync::{Arc, atomic::AtomicU64},
    time::{Duration, Instant},
};

use meridian_tests::{
    Global, GlobalSpec, TestDir, resources,
    scale::{Arrivals, cpu, raw_zone},
};
use tokio::sync::mpsc;

/// Zones connected at once.
const ZONES: usize = 100;
/// Routes in the global before zones connect (the size of the type map that
/// every change touches).
const PRELOAD: usize = 500;
/// Route PUTs measured.
const UPDATES: usize = 50;
/// How long the idle global's CPU is measured.
const IDLE: Duration = Duration::from_secs(6);

#[tokio::main]
async fn main() {
    let zones: usize = std::env::var("MERIDIAN_BENCH_ZONES").ok().and_then(|v| v.parse().ok()).unwrap_or(ZONES);
    let dir = TestDir::new("bench-fanout");
    let global = Global::start(&dir, "g", GlobalSpec { plaintext_kds: true, ..GlobalSpec::default() }).await;
    let api = global.api();
    api.apply(&resources::mesh("default")).await;
    api.apply(&resources::gateway("gw", 8080)).await;
    for i in 0..PRELOAD {
        api.apply(&resources::route(&format!("pre-{i}"), "gw", &format!("svc-{i}"))).await;
    }

    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    let bytes = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    for idx in 0..zones {
        raw_zone(&global, idx, seen_tx.clone(), bytes.clone()).await;
    }
    let mut arrivals = Arrivals::new(seen_rx);
    for i in 0..PRELOAD {
        arrivals.wait_all(&format!("pre-{i}.default"), zones).await;
    }
    println!("initial sync: {zones} zones connected and hold {PRELOAD} routes: {:?}", t.elapsed());
    // Let connection-time work (insights) settle before measuring CPU.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let pid = global.pid();
    // Background cost with every zone connected and nothing changing
    // (ZoneInsight refreshes, keepalives), to set the per-update figure against.
    let idle_start = cpu(pid);
    tokio::time::sleep(IDLE).await;
    let idle = cpu(pid).saturating_sub(idle_start);
    println!("global CPU while idle with {zones} zones: {:?} per second", idle / IDLE.as_secs() as u32);
    let cpu_before = cpu(pid);
    let wall = Instant::now();
    let mut lat = Vec::with_capacity(UPDATES);
    for u in 0..UPDATES {
        let name = format!("upd-{u}");
        let t = Instant::now();
        api.apply(&resources::route(&name, "gw", &format!("svc-upd-{u}"))).await;
        arrivals.wait_all(&format!("{name}.default"), zones).await;
        lat.push(t.elapsed());
    }
    let cpu_used = cpu(pid).saturating_sub(cpu_before);
    let wall = wall.elapsed();
    lat.sort();
    println!(
        "one route PUT -> all {zones} zones received it ({UPDATES} updates, {PRELOAD} routes held): p50 {:?}, p99 {:?}, max {:?}",
        lat[UPDATES / 2],
        lat[(UPDATES * 99 / 100).min(UPDATES - 1)],
        lat[UPDATES - 1]
    );
    println!(
        "global CPU per update: {:?} ({:?} over {UPDATES} updates in {wall:?} wall, incl. 3 s insight refreshes)",
        cpu_used / UPDATES as u32,
        cpu_used
    );
}
