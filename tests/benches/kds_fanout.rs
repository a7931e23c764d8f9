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
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use meridian_tests::{
    Global, GlobalSpec, TestDir,
    raw_kds::{DeltaDiscoveryRequest, RawKds},
    resources,
};
use tokio::sync::mpsc;

/// Zones connected at once.
const ZONES: usize = 100;
/// Routes in the global before zones connect (the size of the type map that
/// every change touches).
const PRELOAD: usize = 500;
/// Route PUTs measured.
const UPDATES: usize = 50;
/// How long one update may take to reach every zone before the bench gives up.
const LIMIT: Duration = Duration::from_secs(60);
/// How long the idle global's CPU is measured.
const IDLE: Duration = Duration::from_secs(6);
const TYPES: [&str; 5] = ["Mesh", "Secret", "MeshGateway", "MeshGatewayRoute", "ZoneIngress"];

/// User + system CPU time of `pid`, from `/proc/<pid>/stat` (clock ticks of 10 ms).
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// One raw zone: subscribes to every type, ACKs everything, reports each
/// MeshGatewayRoute it receives as (zone index, wire name).
async fn zone(global: &Global, idx: usize, seen: mpsc::UnboundedSender<(usize, String)>) {
    let name = format!("zone-{idx}");
    let token = global.zone_token(&name).await;
    let raw = RawKds::connect(&global.kds_url(), global.ca(), &name, Some(&token)).await;
    let (tx, mut rx) = raw.global_to_zone().await.expect("open GlobalToZoneSync");
    for ty in TYPES {
        tx.send(DeltaDiscoveryRequest { type_url: ty.to_string(), ..Default::default() }).await.expect("subscribe");
    }
    tokio::spawn(async move {
        let _raw = raw;
        while let Ok(Some(resp)) = rx.message().await {
            if resp.type_url == "MeshGatewayRoute" {
                for r in &resp.resources {
                    let _ = seen.send((idx, r.name.clone()));
                }
            }
            let ack = DeltaDiscoveryRequest {
                type_url: resp.type_url.clone(),
                response_nonce: resp.nonce.clone(),
                ..Default::default()
            };
            if tx.send(ack).await.is_err() {
                break;
            }
        }
    });
}

/// Waits until every zone reported `name`, counting reports of other names.
async fn wait_all(
    rx: &mut mpsc::UnboundedReceiver<(usize, String)>,
    pending: &mut HashMap<String, HashSet<usize>>,
    name: &str,
    zones: usize,
) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while pending.get(name).map_or(0, HashSet::len) < zones {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((z, n))) => {
                pending.entry(n).or_default().insert(z);
            }
            _ => panic!("{name} did not reach all {zones} zones within {LIMIT:?}"),
        }
    }
}

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

    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let t = Instant::now();
    for idx in 0..zones {
        zone(&global, idx, seen_tx.clone()).await;
    }
    let mut pending: HashMap<String, HashSet<usize>> = HashMap::new();
    for i in 0..PRELOAD {
        wait_all(&mut seen_rx, &mut pending, &format!("pre-{i}.default"), zones).await;
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
        wait_all(&mut seen_rx, &mut pending, &format!("{name}.default"), zones).await;
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
