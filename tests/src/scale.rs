//! The scale harness (issue 13): real processes, measured figures, each with
//! a same-run baseline and its ratio, because the machine is shared and noisy.
//!
//! ```text
//!   meridian-global (SQLite or PostgreSQL, plaintext KDS)
//!     ├─ N raw KDS zones (raw_kds, in this process: subscribe to every
//!     │   global→zone type, ACK everything, report each resource received)
//!     │   or, with `real_zones`, N real meridian-zone processes
//!     └─ 1 real meridian-zone (federated; Dataplanes are registered at its API
//!         and travel up to the global)
//! ```
//!
//! With real zones, what each zone stored is read from the global's
//! propagation status (`GET …/_status`: the version each zone ACKed, which
//! a zone does after storing it), polled back to back; their KDS bytes are
//! not observed (those rows are left out).
//!
//! [`run`] measures, in order: the baselines (a trivial REST GET at the global,
//! a bare gRPC call `GlobalKDSService.HealthCheck` over the same loopback,
//! the global's CPU per REST GET and while idle with no zone); the global with
//! N idle zones (CPU, change-log rows and store bytes per minute); one route
//! PUT → every zone received it (p50/p99), global CPU and bytes on the wire
//! per update; the same with `gateways` MeshGateways held; Dataplanes
//! registered per second at the real zone, the lag until the global lists the
//! last one, and memory per Dataplane at the zone and at the global (RSS from
//! `/proc/<pid>/status`). Every wait is bounded by [`LIMIT`]; nothing asserts
//! a time. The bench `scale` (`tests/benches/scale.rs`) prints [`Report::table`]
//! and appends it to BENCHMARKS.md; the smoke test runs the same code with
//! tiny sizes.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use prost::Message;
use serde_json::Value;
use sqlx::Connection;
use tokio::sync::mpsc;

use crate::{
    Backend, Global, GlobalSpec, JsonApi, TestDir, Zone,
    raw_kds::{DeltaDiscoveryRequest, RawKds},
    resources,
};

/// How long one awaited event (an update reaching every zone, the global
/// listing the Dataplanes) may take before the harness gives up. A guard.
pub const LIMIT: Duration = Duration::from_secs(120);

/// The global→zone types a raw zone subscribes to.
pub const TYPES: [&str; 5] = ["Mesh", "Secret", "MeshGateway", "MeshGatewayRoute", "ZoneIngress"];

/// Samples taken of each round-trip baseline.
const BASELINE_SAMPLES: usize = 50;

/// Concurrent clients registering Dataplanes at the zone API.
const REGISTER_CLIENTS: usize = 8;

/// User + system CPU time of `pid`, from `/proc/<pid>/stat` (clock ticks of 10 ms).
pub fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_millis((field(11) + field(12)) * 10)
}

/// Where the threads of `pid` spent their time so far: (on a CPU, runnable
/// but waiting for a CPU), summed over `/proc/<pid>/task/*/schedstat` (the
/// kernel's scheduler statistics, nanoseconds; threads that already exited
/// are not counted). A process that waits far longer for a CPU than it runs
/// is starved by the machine's load, not blocked on I/O or a lock.
pub fn sched(pid: u32) -> (Duration, Duration) {
    let mut on_cpu = 0u64;
    let mut waiting = 0u64;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            let mut f = stat.split_whitespace().map(|v| v.parse::<u64>().unwrap_or(0));
            on_cpu += f.next().unwrap_or(0);
            waiting += f.next().unwrap_or(0);
        }
    }
    (Duration::from_nanos(on_cpu), Duration::from_nanos(waiting))
}

/// Resident set size of `pid` in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// What a raw zone reports: (zone index, type, wire name `<name>.<mesh>`).
pub type Seen = (usize, String, String);

/// One raw zone `zone-<idx>`: subscribes to every type of [`TYPES`], ACKs
/// every response, reports each resource received on `seen` and adds the
/// encoded size of every response to `bytes`.
pub async fn raw_zone(global: &Global, idx: usize, seen: mpsc::UnboundedSender<Seen>, bytes: Arc<AtomicU64>) {
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
            bytes.fetch_add(resp.encoded_len() as u64, Ordering::Relaxed);
            for r in &resp.resources {
                let _ = seen.send((idx, resp.type_url.clone(), r.name.clone()));
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

/// Which zones reported which wire name (of any type), fed by [`raw_zone`]s.
pub struct Arrivals {
    rx: mpsc::UnboundedReceiver<Seen>,
    seen: HashMap<String, HashSet<usize>>,
}

impl Arrivals {
    pub fn new(rx: mpsc::UnboundedReceiver<Seen>) -> Arrivals {
        Arrivals { rx, seen: HashMap::new() }
    }

    /// Waits until `zones` zones reported `name`; panics after [`LIMIT`].
    pub async fn wait_all(&mut self, name: &str, zones: usize) {
        let deadline = tokio::time::Instant::now() + LIMIT;
        while self.seen.get(name).map_or(0, HashSet::len) < zones {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((z, _, n))) => {
                    self.seen.entry(n).or_default().insert(z);
                }
                _ => panic!("{name} did not reach all {zones} zones within {LIMIT:?}"),
            }
        }
    }
}

/// The sizes of one run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Raw KDS zones connected to the global.
    pub zones: usize,
    /// Route PUTs measured in each update row.
    pub updates: usize,
    /// MeshGateways held for the second update row.
    pub gateways: usize,
    /// Dataplanes registered at the real zone.
    pub dataplanes: usize,
    /// How long each idle window is measured.
    pub idle: Duration,
    /// The global's store.
    pub backend: Backend,
    /// The N zones are real `meridian-zone` processes instead of raw KDS
    /// clients.
    pub real_zones: bool,
}

/// The N zones of a run, and how the harness learns what they hold.
enum Zones {
    /// Raw KDS clients in this process, reporting every resource received.
    Raw(Arrivals),
    /// Real zone processes (named `zone-<i>`), read through the global's
    /// propagation status.
    Real(Vec<Zone>),
}

impl Zones {
    /// Waits until every zone holds `name` of `plural` (in mesh `default`)
    /// at the version the global has; panics after [`LIMIT`].
    async fn wait_all(&mut self, global: &Global, plural: &str, name: &str, zones: usize) {
        match self {
            Zones::Raw(arrivals) => arrivals.wait_all(&format!("{name}.default"), zones).await,
            Zones::Real(real) => {
                let path = format!("/meshes/default/{plural}/{name}/_status");
                let names: Vec<&str> = real.iter().map(Zone::name).collect();
                let deadline = Instant::now() + LIMIT;
                loop {
                    let (status, body) = global.api().try_get(&path).await.unwrap_or((0, Value::Null));
                    let version = &body["version"];
                    let missing: Vec<&str> = names
                        .iter()
                        .copied()
                        .filter(|z| {
                            let held = body["zones"].as_array().and_then(|zs| zs.iter().find(|e| e["zone"] == *z));
                            !(status == 200 && held.is_some_and(|e| !version.is_null() && e["version"] == *version))
                        })
                        .collect();
                    if missing.is_empty() {
                        return;
                    }
                    assert!(Instant::now() < deadline, "{name} did not reach zones {missing:?} within {LIMIT:?}");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Zones::Raw(_) => "",
            Zones::Real(_) => " real",
        }
    }
}

/// One row of the table: a figure, the same-run baseline it is set against,
/// and the ratio figure / baseline.
#[derive(Debug, Clone)]
pub struct Row {
    pub what: String,
    pub figure: f64,
    pub unit: &'static str,
    pub baseline_what: String,
    pub baseline: f64,
    pub baseline_unit: &'static str,
}

impl Row {
    /// figure / baseline (`NaN` when the baseline is 0).
    pub fn ratio(&self) -> f64 {
        if self.baseline == 0.0 { f64::NAN } else { self.figure / self.baseline }
    }
}

/// Everything one run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub config: Config,
    pub rows: Vec<Row>,
}

fn fmt(v: f64, unit: &str) -> String {
    if v.abs() >= 100.0 { format!("{v:.0} {unit}") } else { format!("{v:.2} {unit}") }
}

impl Report {
    /// A Markdown table: what, figure, baseline, ratio.
    pub fn table(&self) -> String {
        let mut s = String::from("| what | figure | same-run baseline | ratio |\n|---|---|---|---|\n");
        for r in &self.rows {
            let ratio = match r.ratio() {
                x if !x.is_finite() => "n/a (baseline 0)".to_string(),
                x if x.abs() < 1.0 => format!("{x:.3}"),
                x => format!("{x:.1}"),
            };
            s.push_str(&format!(
                "| {} | {} | {}: {} | {ratio} |\n",
                r.what,
                fmt(r.figure, r.unit),
                r.baseline_what,
                fmt(r.baseline, r.baseline_unit),
            ));
        }
        s
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `p`-th percentile (0..=100) of sorted samples.
fn pct(sorted: &[Duration], p: usize) -> Duration {
    let i = (sorted.len() * p / 100).min(sorted.len().saturating_sub(1));
    sorted.get(i).copied().unwrap_or_default()
}

/// Change-log rows and store bytes of the global.
async fn store_size(global: &Global) -> (u64, u64) {
    match global.backend() {
        Backend::Sqlite => {
            let db = global.data_dir().join("global.db");
            let bytes: u64 = ["", "-wal", "-shm"]
                .iter()
                .filter_map(|s| std::fs::metadata(format!("{}{s}", db.display())).ok())
                .map(|m| m.len())
                .sum();
            let url = format!("sqlite:{}?mode=ro", db.display());
            let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("open the global's SQLite read-only");
            let rows: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM changes").fetch_one(&mut conn).await.expect("count changes");
            let _ = conn.close().await;
            (rows.max(0) as u64, bytes)
        }
        Backend::Postgres => {
            let mut conn =
                sqlx::PgConnection::connect(global.store_url()).await.expect("connect to the global's store");
            let rows: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM changes").fetch_one(&mut conn).await.expect("count changes");
            let bytes: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
                .fetch_one(&mut conn)
                .await
                .expect("database size");
            let _ = conn.close().await;
            (rows.max(0) as u64, bytes.max(0) as u64)
        }
    }
}

/// Global CPU (ms/s), change-log rows and store bytes per minute over `idle`.
async fn idle_window(global: &Global, idle: Duration) -> (f64, f64, f64) {
    let (rows0, bytes0) = store_size(global).await;
    let cpu0 = cpu(global.pid());
    let t = Instant::now();
    tokio::time::sleep(idle).await;
    let cpu_used = cpu(global.pid()).saturating_sub(cpu0);
    let secs = t.elapsed().as_secs_f64();
    let (rows1, bytes1) = store_size(global).await;
    let per_min = 60.0 / secs;
    (ms(cpu_used) / secs, (rows1 as f64 - rows0 as f64) * per_min, (bytes1 as f64 - bytes0 as f64) * per_min / 1024.0)
}

/// p50 of a trivial REST GET (`GET /`) at `api`.
async fn rest_ping(api: &JsonApi) -> Duration {
    let mut lat = Vec::with_capacity(BASELINE_SAMPLES);
    for _ in 0..BASELINE_SAMPLES {
        let t = Instant::now();
        api.get("/").await;
        lat.push(t.elapsed());
    }
    lat.sort();
    pct(&lat, 50)
}

/// p50 of a bare gRPC unary call (`GlobalKDSService.HealthCheck`).
async fn grpc_ping(kds: &RawKds) -> Duration {
    let mut lat = Vec::with_capacity(BASELINE_SAMPLES);
    for _ in 0..BASELINE_SAMPLES {
        let t = Instant::now();
        kds.health_check().await.expect("HealthCheck");
        lat.push(t.elapsed());
    }
    lat.sort();
    pct(&lat, 50)
}

/// Route PUTs, each until every zone received it: (sorted latencies, global
/// CPU per update, bytes received by all zones per update).
async fn updates(
    global: &Global,
    arrivals: &mut Zones,
    bytes: &AtomicU64,
    cfg: &Config,
    tag: &str,
) -> (Vec<Duration>, Duration, f64) {
    let cpu0 = cpu(global.pid());
    let bytes0 = bytes.load(Ordering::Relaxed);
    let mut lat = Vec::with_capacity(cfg.updates);
    for u in 0..cfg.updates {
        let name = format!("{tag}-{u}");
        let t = Instant::now();
        global.api().apply(&resources::route(&name, "gw", &format!("svc-{tag}-{u}"))).await;
        arrivals.wait_all(global, "meshgatewayroutes", &name, cfg.zones).await;
        lat.push(t.elapsed());
    }
    let n = cfg.updates.max(1);
    let cpu_used = cpu(global.pid()).saturating_sub(cpu0) / n as u32;
    let wire = (bytes.load(Ordering::Relaxed) - bytes0) as f64 / n as f64;
    lat.sort();
    (lat, cpu_used, wire)
}

/// Registers Dataplanes `dp-0..d` at `api` with [`REGISTER_CLIENTS`]
/// concurrent clients; returns the wall time.
async fn register(api: &JsonApi, d: usize) -> Duration {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..REGISTER_CLIENTS {
        let zapi = api.clone();
        tasks.push(tokio::spawn(async move {
            for i in (c..d).step_by(REGISTER_CLIENTS) {
                let a = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
                zapi.apply(&resources::dataplane(&format!("dp-{i}"), &a, &format!("svc-{}", i % 100))).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("a registering client panicked");
    }
    t.elapsed()
}

/// Runs every measurement of the harness once and returns the table's rows.
pub async fn run(cfg: Config) -> Report {
    crate::init_crypto();
    let dir = TestDir::new("scale");
    let global = Global::start(&dir, "global", GlobalSpec { plaintext_kds: true, ..GlobalSpec::on(cfg.backend) }).await;
    let api = global.api().clone();
    api.apply(&resources::mesh("default")).await;
    api.apply(&resources::gateway("gw", 8080)).await;
    let mut rows = Vec::new();
    let store = cfg.backend.name();

    // Baselines.
    let ping_kds =
        RawKds::connect(&global.kds_url(), global.ca(), "ping", Some(&global.zone_token("ping").await)).await;
    let rest = rest_ping(&api).await;
    let grpc = grpc_ping(&ping_kds).await;
    let cpu0 = cpu(global.pid());
    rest_ping(&api).await;
    let cpu_per_get = cpu(global.pid()).saturating_sub(cpu0) / BASELINE_SAMPLES as u32;
    let (idle0_cpu, idle0_rows, idle0_kib) = idle_window(&global, cfg.idle).await;

    // N idle zones.
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    let bytes = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let mut arrivals = if cfg.real_zones {
        let mut real = Vec::with_capacity(cfg.zones);
        for idx in 0..cfg.zones {
            real.push(Zone::connect(&dir, &global, &format!("zone-{idx}")).await);
        }
        Zones::Real(real)
    } else {
        for idx in 0..cfg.zones {
            raw_zone(&global, idx, seen_tx.clone(), bytes.clone()).await;
        }
        Zones::Raw(Arrivals::new(seen_rx))
    };
    arrivals.wait_all(&global, "meshgateways", "gw", cfg.zones).await;
    let connect = t.elapsed();
    let n = cfg.zones;
    let kind = arrivals.kind();
    rows.push(Row {
        what: format!("{n}{kind} zones connect → each holds the gateway"),
        figure: ms(connect),
        unit: "ms",
        baseline_what: "gRPC ping p50".into(),
        baseline: ms(grpc),
        baseline_unit: "ms",
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (idle_cpu, idle_rows, idle_kib) = idle_window(&global, cfg.idle).await;
    let idle_what = format!("{}-s window, no zone", cfg.idle.as_secs());
    rows.push(Row {
        what: format!("global ({store}) with {n}{kind} idle zones: CPU"),
        figure: idle_cpu / 10.0,
        unit: "%",
        baseline_what: idle_what.clone(),
        baseline: idle0_cpu / 10.0,
        baseline_unit: "%",
    });
    rows.push(Row {
        what: format!("global with {n}{kind} idle zones: change-log rows per minute"),
        figure: idle_rows,
        unit: "rows",
        baseline_what: idle_what.clone(),
        baseline: idle0_rows,
        baseline_unit: "rows",
    });
    rows.push(Row {
        what: format!("global with {n}{kind} idle zones: store growth per minute"),
        figure: idle_kib,
        unit: "KiB",
        baseline_what: idle_what,
        baseline: idle0_kib,
        baseline_unit: "KiB",
    });

    // One route PUT → visible in every zone.
    let route_body = resources::route("x", "gw", "svc-x").to_string().len() as f64;
    for (label, held) in [("", 0usize), ("held", cfg.gateways)] {
        if held > 0 {
            for i in 0..held {
                api.apply(&resources::gateway(&format!("held-{i}"), 9000 + (i % 1000) as u32)).await;
            }
            arrivals.wait_all(&global, "meshgateways", &format!("held-{}", held - 1), n).await;
        }
        let held_what = if held > 0 { format!(", {held} MeshGateways held") } else { String::new() };
        let (lat, cpu_upd, wire) = updates(&global, &mut arrivals, &bytes, &cfg, &format!("upd{label}")).await;
        rows.push(Row {
            what: format!("route PUT → all {n}{kind} zones have it{held_what}: p50 ({} updates)", cfg.updates),
            figure: ms(pct(&lat, 50)),
            unit: "ms",
            baseline_what: "REST GET p50".into(),
            baseline: ms(rest),
            baseline_unit: "ms",
        });
        rows.push(Row {
            what: format!("route PUT → all {n}{kind} zones have it{held_what}: p99"),
            figure: ms(pct(&lat, 99)),
            unit: "ms",
            baseline_what: "REST GET p50".into(),
            baseline: ms(rest),
            baseline_unit: "ms",
        });
        rows.push(Row {
            what: format!("global CPU per route update{held_what}"),
            figure: ms(cpu_upd),
            unit: "ms",
            baseline_what: "global CPU per REST GET".into(),
            baseline: ms(cpu_per_get),
            baseline_unit: "ms",
        });
        if cfg.real_zones {
            continue;
        }
        rows.push(Row {
            what: format!("KDS bytes received by all {n} zones per route update{held_what}"),
            figure: wire,
            unit: "B",
            baseline_what: "the route's JSON body".into(),
            baseline: route_body,
            baseline_unit: "B",
        });
    }

    // Dataplanes at a real federated zone.
    let zone = Zone::connect(&dir, &global, "dp-zone").await;
    zone.api().wait_for("/meshes/default", "holds the mesh", |_| true).await;
    let zone_rest = rest_ping(zone.api()).await;
    let zone_pid = zone.process().pid();
    let (zone_rss0, global_rss0) = (rss(zone_pid), rss(global.pid()));
    let d = cfg.dataplanes;
    let sched0 = sched(zone_pid);
    let registered = register(zone.api(), d).await;
    let sched1 = sched(zone_pid);
    let last = Instant::now();
    let deadline = last + LIMIT;
    loop {
        let list: Value = api.get("/meshes/default/dataplanes?size=1").await;
        if list["total"].as_u64().unwrap_or(0) >= d as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "the global did not list {d} Dataplanes within {LIMIT:?}: {list}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lag = last.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (zone_rss1, global_rss1) = (rss(zone_pid), rss(global.pid()));
    let dp_body = resources::dataplane("dp-0", "10.0.0.0", "svc-0").to_string().len() as f64;
    rows.push(Row {
        what: format!("{d} Dataplanes registered at a federated zone ({REGISTER_CLIENTS} clients), per second"),
        figure: d as f64 / registered.as_secs_f64(),
        unit: "/s",
        baseline_what: format!("zone REST GETs per second, {REGISTER_CLIENTS} × 1/p50"),
        baseline: REGISTER_CLIENTS as f64 / zone_rest.as_secs_f64(),
        baseline_unit: "/s",
    });
    rows.push(Row {
        what: format!("last of {d} Dataplanes registered → the global lists all"),
        figure: ms(lag),
        unit: "ms",
        baseline_what: "REST GET p50".into(),
        baseline: ms(rest),
        baseline_unit: "ms",
    });
    let per_dp = |t: Duration| ms(t) / d.max(1) as f64;
    let (on_cpu, waiting) = (sched1.0.saturating_sub(sched0.0), sched1.1.saturating_sub(sched0.1));
    rows.push(Row {
        what: format!("federated zone on a CPU during the registration, per Dataplane ({d})"),
        figure: per_dp(on_cpu),
        unit: "ms",
        baseline_what: "wall time per Dataplane".into(),
        baseline: per_dp(registered),
        baseline_unit: "ms",
    });
    rows.push(Row {
        what: format!("federated zone runnable but waiting for a CPU, per Dataplane ({d})"),
        figure: per_dp(waiting),
        unit: "ms",
        baseline_what: "its time on a CPU".into(),
        baseline: per_dp(on_cpu),
        baseline_unit: "ms",
    });
    drop(zone);
    // The same registration at a standalone zone: what federation costs.
    let standalone = Zone::standalone(&dir, "dp-standalone").await;
    standalone.api().apply(&resources::mesh("default")).await;
    let alone = register(standalone.api(), d).await;
    drop(standalone);
    rows.push(Row {
        what: format!("{d} Dataplanes registered at a standalone zone ({REGISTER_CLIENTS} clients), per second"),
        figure: d as f64 / alone.as_secs_f64(),
        unit: "/s",
        baseline_what: "the federated zone, same run".into(),
        baseline: d as f64 / registered.as_secs_f64(),
        baseline_unit: "/s",
    });
    for (what, before, after) in
        [("zone", zone_rss0, zone_rss1), (&format!("global ({store})") as &str, global_rss0, global_rss1)]
    {
        rows.push(Row {
            what: format!("{what} memory (RSS) per Dataplane, over {d}"),
            figure: (after as f64 - before as f64) / d.max(1) as f64,
            unit: "B",
            baseline_what: "the Dataplane's JSON body".into(),
            baseline: dp_body,
            baseline_unit: "B",
        });
    }
    global.cleanup().await;
    Report { config: cfg, rows }
}
