//! Figures for the gateway generator and for push latency; prints, never
//! asserts. `cargo bench -p meridian-tests --bench xds` (after
//! `cargo build --workspace --bins`; the push latency runs a real zone and
//! a real Envoy from the test topology).
//!
//! - generator: `generate` + `desired` (encode and hash) for one gateway
//!   with N routes, each to its own backend service; and a one-route
//!   change through the zone's path (`generate_reusing` +
//!   `take_desired_reusing`) against from scratch and against the same
//!   change built in full.
//! - push latency: a route applied to the zone API until a real Envoy
//!   serves it (delta ADS), and an endpoint added until it answers.

use std::time::{Duration, Instant};

use meridian_sync_proto::universal;
use meridian_tests::{Envoy, Topology, WAIT, XdsMode, process::envoy_binary, traffic};
use meridian_zone::gateway::{self, MeshSnapshot};

fn world(n: usize) -> MeshSnapshot {
    let mut docs = vec![String::from(
        "type: MeshGateway\nmesh: default\nname: gw\nselectors: [{match: {kuma.io/service: gw}}]\nconf: {listeners: [{port: 8080, protocol: HTTP}]}\n---\ntype: Dataplane\nmesh: default\nname: gw-1\nnetworking: {address: 127.0.0.1, gateway: {type: BUILTIN, tags: {kuma.io/service: gw}}}\n",
    )];
    for i in 0..n {
        docs.push(format!(
            "---\ntype: MeshGatewayRoute\nmesh: default\nname: r{i}\nselectors: [{{match: {{kuma.io/service: gw}}}}]\nconf: {{http: {{rules: [{{matches: [{{path: {{match: PREFIX, value: /r{i}}}}}, {{path: {{match: EXACT, value: /e{i}}}, method: GET}}], backends: [{{destination: {{kuma.io/service: s{i}}}}}]}}]}}}}\n---\ntype: Dataplane\nmesh: default\nname: b{i}\nnetworking: {{address: 10.0.{}.{}, inbound: [{{port: 8000, tags: {{kuma.io/service: s{i}}}}}]}}\n",
            i / 250,
            i % 250 + 1
        ));
    }
    // One parse per document: the YAML reader caps documents per text.
    let resources: Vec<_> =
        docs.iter().flat_map(|d| universal::parse_resources(d).expect("yaml")).map(|r| r.expect("resource")).collect();
    MeshSnapshot::from_resources("default", &resources)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn generator() {
    println!("generator (generate + encode + hash, one gateway, N routes / N services):");
    for n in [10, 100, 1000] {
        let snapshot = world(n);
        let runs = if n >= 1000 { 10 } else { 50 };
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..runs {
            let start = Instant::now();
            let config = gateway::generate(&snapshot, "gw-1").expect("generate");
            let desired = config.desired();
            times.push(start.elapsed());
            bytes = desired.values().flat_map(|s| s.values()).map(|d| d.resource.value.len()).sum();
        }
        times.sort();
        println!(
            "  N={n:>5}: median {:>9.3?}  p90 {:>9.3?}  ({} bytes of Envoy resources)",
            percentile(&times, 0.5),
            percentile(&times, 0.9),
            bytes
        );
    }
}

/// Times `f` `runs` times; (median, p90).
fn timed(runs: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.9))
}

/// The incremental rows: one gateway with N routes, from scratch against a
/// one-route change with the previous generation's encoded outputs reused
/// (`desired_reusing`), in the same run; and where the time goes.
fn incremental() {
    println!("incremental generation (one gateway, N routes; same-run baseline: from scratch):");
    for n in [100, 1000] {
        let snapshot = world(n);
        let runs = if n >= 1000 { 20 } else { 100 };
        let scratch = timed(runs, || {
            let config = gateway::generate(&snapshot, "gw-1").expect("generate");
            std::hint::black_box(config.desired());
        });
        let build = timed(runs, || {
            std::hint::black_box(gateway::generate(&snapshot, "gw-1").expect("generate"));
        });
        let config = gateway::generate(&snapshot, "gw-1").expect("generate");
        let encode = timed(runs, || {
            std::hint::black_box(config.desired());
        });
        // A one-route change: route r0 gets another path, alternating.
        let mut changed = [snapshot.clone(), snapshot.clone()];
        for (k, s) in changed.iter_mut().enumerate() {
            let yaml = format!(
                "type: MeshGatewayRoute\nmesh: default\nname: r0\nselectors: [{{match: {{kuma.io/service: gw}}}}]\nconf: {{http: {{rules: [{{matches: [{{path: {{match: PREFIX, value: /changed{k}}}}}], backends: [{{destination: {{kuma.io/service: s0}}}}]}}]}}}}"
            );
            for r in universal::parse_resources(&yaml).expect("yaml") {
                s.upsert(&r.expect("route"));
            }
        }
        // The zone's path: `generate_reusing` then `take_desired_reusing`,
        // one memo per proxy, primed by a generation of the unchanged world.
        let mut memo = gateway::Memo::default();
        let mut primed = gateway::generate_reusing(&snapshot, "gw-1", &mut memo).expect("generate");
        let _ = primed.take_desired_reusing(&mut memo);
        let mut i = 0;
        let mut stats = gateway::MemoStats::default();
        let mut route_stats = gateway::MemoStats::default();
        let change = timed(runs, || {
            let mut config = gateway::generate_reusing(&changed[i % 2], "gw-1", &mut memo).expect("generate");
            route_stats = memo.route_stats();
            let (desired, s) = config.take_desired_reusing(&mut memo);
            stats = s;
            std::hint::black_box(desired);
            i += 1;
        });
        // The same change, built in full (outputs still reused): what
        // the per-route cache saves.
        let mut full_memo = gateway::Memo::default();
        let _ = gateway::generate(&snapshot, "gw-1").expect("generate").take_desired_reusing(&mut full_memo);
        let mut j = 0;
        let full = timed(runs, || {
            let mut config = gateway::generate(&changed[j % 2], "gw-1").expect("generate");
            std::hint::black_box(config.take_desired_reusing(&mut full_memo));
            j += 1;
        });
        println!(
            "  N={n:>5}: from scratch median {:>9.3?} p90 {:>9.3?} (build {:>9.3?}, encode+hash {:>9.3?}); one-route change, routes and outputs reused: median {:>9.3?} p90 {:>9.3?} (route entries {} built / {} reused; resources {} encoded / {} reused); ratio {:.3}; same change built in full, outputs reused: median {:>9.3?}",
            scratch.0,
            scratch.1,
            build.0,
            encode.0,
            change.0,
            change.1,
            route_stats.encoded,
            route_stats.reused,
            stats.encoded,
            stats.reused,
            change.0.as_secs_f64() / scratch.0.as_secs_f64(),
            full.0,
        );
    }
}

async fn push_latency() {
    envoy_binary();
    let backend = traffic::http_backend("b").await;
    let second = traffic::http_backend("b2").await;
    let topo = Topology::builder("bench-xds").zone("zone").start().await;
    let zone = topo.zone("zone");
    zone.api().apply_yaml(traffic::MESH).await;
    zone.api().apply_yaml(&traffic::backend_dataplane("b-1", &[(backend.port, "b")])).await;
    let port = traffic::free_port();
    let gw = format!(
        "type: MeshGateway\nmesh: default\nname: gw\nselectors: [{{match: {{kuma.io/service: gw}}}}]\nconf: {{listeners: [{{port: {port}, protocol: HTTP}}]}}"
    );
    zone.api().apply_yaml(&gw).await;
    zone.api().apply_yaml(&traffic::gateway_dataplane("gw-1", "gw")).await;
    let envoy = Envoy::start(topo.dir(), zone, "gw-1", XdsMode::Delta).await;
    envoy.wait_ready().await;

    let serves = |path: String, want: &'static str| async move {
        let start = Instant::now();
        loop {
            if traffic::get(port, "h", &path).await.map(|r| r.backend()).unwrap_or_default() == want {
                return start.elapsed();
            }
            if start.elapsed() > WAIT {
                panic!("{path} never reached {want}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let mut times = Vec::new();
    for i in 0..30 {
        let route = format!(
            "type: MeshGatewayRoute\nmesh: default\nname: r{i}\nselectors: [{{match: {{kuma.io/service: gw}}}}]\nconf: {{http: {{rules: [{{matches: [{{path: {{match: PREFIX, value: /p{i}}}}}], backends: [{{destination: {{kuma.io/service: b}}}}]}}]}}}}"
        );
        let start = Instant::now();
        zone.api().apply_yaml(&route).await;
        let applied = start.elapsed();
        let _ = serves(format!("/p{i}"), "b").await;
        times.push(start.elapsed());
        if i < 3 {
            println!("  route {i}: PUT answered after {applied:.1?}, served after {:.1?}", start.elapsed());
        }
    }
    times.sort();
    println!(
        "push latency, route PUT → Envoy serves it (30 routes, delta ADS): median {:.1?}  p90 {:.1?}  max {:.1?}",
        percentile(&times, 0.5),
        percentile(&times, 0.9),
        percentile(&times, 1.0)
    );
    // A new endpoint: until the new backend answers.
    let start = Instant::now();
    zone.api().apply_yaml(&traffic::backend_dataplane("b-2", &[(second.port, "b")])).await;
    let mut seen = false;
    while !seen && start.elapsed() < WAIT {
        seen = traffic::get(port, "h", "/p0").await.map(|r| r.backend()).unwrap_or_default() == "b2";
    }
    println!("push latency, endpoint PUT → Envoy routes to it: {:.1?}", start.elapsed());
    drop(envoy);
    let _ = zone.sigterm().await;
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // of interest: both just run the figures.
    generator();
    incremental();
    if std::env::args().any(|a| a == "--generator-only") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(push_latency());
}
