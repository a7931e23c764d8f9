//! Observability (issue 16, parts 3 and 4), with real processes and a real
//! Envoy: the diagnostics listener of both processes, the incumbent's xDS
//! and KDS metrics moving after a change applied at the global, the Grafana
//! dashboard charting only metrics that exist, and inspecting a zone's
//! Envoy (config dump, stats, clusters) from the zone and from the global
//! through the zone's KDS connection.
//!
//! Run: `cargo build --workspace --bins && cargo nextest run -p meridian-tests --test observability`

use std::collections::{BTreeMap, BTreeSet};

use meridian_tests::{Api, Backend, Topology, WAIT, eventually, resources, traffic::free_port};
use serde_json::Value;

/// One scrape of `/metrics`: sample (name with its labels, as exposed) → value.
#[derive(Debug, Clone)]
struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    async fn of(diagnostics_url: &str) -> Scrape {
        let r = reqwest::get(format!("{diagnostics_url}/metrics")).await.expect("scrape /metrics");
        assert_eq!(r.status().as_u16(), 200);
        let text = r.text().await.expect("metrics text");
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_string(), value.parse::<f64>().ok()?))
            })
            .collect();
        Scrape(samples)
    }

    /// The sum of the samples of `name` (exactly, before any label) whose
    /// labels contain every one of `labels` (`key="value"`).
    fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| {
                let base = k.split('{').next().unwrap_or(k);
                base == name && labels.iter().all(|l| k.contains(l))
            })
            .map(|(_, v)| v)
            .sum()
    }

    fn has(&self, name: &str) -> bool {
        self.0.keys().any(|k| k.split('{').next() == Some(name))
    }

    /// Metric family names: samples without the histogram, counter and
    /// info suffixes.
    fn families(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for k in self.0.keys() {
            let base = k.split('{').next().unwrap_or(k);
            out.insert(base.to_string());
            for suffix in ["_bucket", "_count", "_sum", "_total", "_info"] {
                if let Some(f) = base.strip_suffix(suffix) {
                    out.insert(f.to_string());
                }
            }
        }
        out
    }
}

/// Asserts that `name{labels}` grew from `before` to `after`.
fn grew(what: &str, before: &Scrape, after: &Scrape, name: &str, labels: &[&str]) {
    let (b, a) = (before.sum(name, labels), after.sum(name, labels));
    assert!(a > b, "{what}: {name}{labels:?} did not move ({b} -> {a})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_processes_export_the_incumbents_metrics_on_the_diagnostics_port_and_they_move() {
    let topo = Topology::builder("observe-metrics")
        .global(Backend::Sqlite)
        .zone("zone-1")
        .http_backend("blue", "zone-1")
        .gateway("zone-1", "edge-gw", "edge")
        .start()
        .await;
    let (global, zone, envoy) = (topo.global(), topo.zone("zone-1"), topo.envoy("edge-gw"));
    let (gd, zd) = (global.diagnostics_url(), zone.diagnostics_url());

    // The diagnostics listener: health, readiness, metrics, no token, and nothing else.
    for base in [&gd, &zd] {
        for (path, status) in
            [("/healthy", 200), ("/ready", 200), ("/metrics", 200), ("/config", 404), ("/meshes", 404)]
        {
            let r = reqwest::Client::new()
                .get(format!("{base}{path}"))
                .header("Host", "not-a-loopback-name.example")
                .send()
                .await
                .expect("diagnostics request");
            assert_eq!(r.status().as_u16(), status, "{base}{path}");
        }
    }

    // The Envoy is connected (its first configuration ACKed) before the change.
    eventually("the zone counts one open xDS stream", WAIT, || async {
        let s = Scrape::of(&zd).await;
        if s.sum("xds_streams_active", &[]) == 1.0 {
            Ok(())
        } else {
            Err(format!("{:?}", s.sum("xds_streams_active", &[])))
        }
    })
    .await;
    let (g0, z0) = (Scrape::of(&gd).await, Scrape::of(&zd).await);

    let port = free_port();
    global.api().apply_yaml(&resources::gateway_and_route_yaml(port, "/shop", "blue")).await;
    eventually("a request through the zone's Envoy reaches blue", WAIT, || async {
        let r = envoy.get(port, "edge.example.com", "/shop").await?;
        if r.status == 200 && r.backend() == "blue" { Ok(()) } else { Err(format!("{r:?}")) }
    })
    .await;

    // ACKs travel after the request succeeds: wait for the figures, then compare.
    let (g1, z1) = eventually("delivery observed at both ends", WAIT, || async {
        let (g, z) = (Scrape::of(&gd).await, Scrape::of(&zd).await);
        let moved = g.sum("kds_delta_delivery_count", &[]) > g0.sum("kds_delta_delivery_count", &[])
            && z.sum("xds_delivery_count", &[]) > z0.sum("xds_delivery_count", &[]);
        if moved { Ok((g, z)) } else { Err("not yet".to_string()) }
    })
    .await;

    // The global: KDS figures under the incumbent's names.
    grew("global", &g0, &g1, "kds_delta_generation_count", &[]);
    grew("global", &g0, &g1, "kds_delta_responses_sent_total", &[r#"type_url="MeshGatewayRoute""#]);
    grew("global", &g0, &g1, "kds_delta_requests_received_total", &[r#"confirmation="ACK""#]);
    grew("global", &g0, &g1, "kds_delta_delivery_count", &[]);
    // The zone: xDS and the KDS receiving side.
    grew("zone", &z0, &z1, "xds_generation_count", &[]);
    grew("zone", &z0, &z1, "xds_responses_sent_total", &[]);
    grew(
        "zone",
        &z0,
        &z1,
        "xds_requests_received_total",
        &[r#"confirmation="ACK""#, r#"type_url="type.googleapis.com/envoy.config.listener.v3.Listener""#],
    );
    grew("zone", &z0, &z1, "xds_delivery_count", &[]);
    grew("zone", &z0, &z1, "kds_resources_sync_count", &[]);
    grew("zone", &z0, &z1, "meridian_kds_write_to_apply_seconds_count", &[]);
    assert_eq!(z1.sum("xds_streams_active", &[]), 1.0);
    // Seconds, not milliseconds: a delivery on one machine is well under 10 s,
    // so it lands in a finite bucket.
    let finite = z1.sum("xds_delivery_bucket", &[r#"le="10.0""#]);
    assert!(finite >= 1.0, "xds_delivery observed in seconds: {:?}", z1.0.get("xds_delivery_bucket{le=\"10.0\"}"));

    // Build info and process figures on both.
    for (what, s) in [("global", &g1), ("zone", &z1)] {
        assert!(
            s.0.keys().any(|k| k.starts_with("cp_info{") && k.contains(r#"product="Meridian""#)),
            "{what}: cp_info"
        );
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(s.sum(name, &[]) > 0.0, "{what}: {name}");
        }
    }
    assert!(g1.0.keys().any(|k| k.starts_with("cp_info{") && k.contains(r#"component="global""#)));
    assert!(z1.0.keys().any(|k| k.starts_with("cp_info{") && k.contains(r#"component="zone""#)));

    // The Grafana dashboard charts only metrics one of the two exports.
    let exported: BTreeSet<String> = g1.families().union(&z1.families()).cloned().collect();
    let charted = dashboard_metrics();
    assert!(charted.len() >= 10, "the dashboard charts the metrics above: {charted:?}");
    let missing: Vec<&String> = charted.iter().filter(|m| !exported.contains(*m)).collect();
    assert!(missing.is_empty(), "charted but not exported: {missing:?}");
    assert!(z1.has("xds_generation_bucket") && g1.has("kds_delta_generation_bucket"));
}

/// Every metric name the Grafana dashboard's queries use.
fn dashboard_metrics() -> BTreeSet<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/meridian-control-plane.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is valid JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(!exprs.is_empty(), "the dashboard has queries");
    let functions = [
        "sum",
        "rate",
        "irate",
        "increase",
        "histogram_quantile",
        "by",
        "max",
        "min",
        "avg",
        "count",
        "le",
        "without",
        "on",
        "ignoring",
        "group_left",
        "label_replace",
        "topk",
        "instance",
        "job",
        "component",
        "type_url",
        "confirmation",
        "direction",
        "resource_type",
        "event",
        "zone",
        "route",
        "method",
        "status",
        "version",
        "product",
        "git_commit",
        "instance_id",
        "time",
        "op",
        "outcome",
    ];
    let mut names = BTreeSet::new();
    for e in exprs {
        // Drop label matchers and range selectors, then take identifiers.
        let mut clean = String::new();
        let mut depth = 0;
        for c in e.chars() {
            match c {
                '{' | '[' => depth += 1,
                '}' | ']' => depth -= 1,
                _ if depth == 0 => clean.push(c),
                _ => {}
            }
        }
        for word in clean.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
            if word.is_empty() || word.chars().next().is_some_and(|c| c.is_ascii_digit()) || functions.contains(&word) {
                continue;
            }
            let base = ["_bucket", "_count", "_sum", "_total", "_info"]
                .iter()
                .find_map(|s| word.strip_suffix(s))
                .unwrap_or(word);
            names.insert(base.to_string());
        }
    }
    names
}

fn collect_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "expr"
                    && let Some(s) = v.as_str()
                {
                    out.push(s.to_string());
                } else {
                    collect_exprs(v, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The gateway Dataplane of the topology, now saying where its Envoy's
/// admin listens (`networking.admin.port`), as the incumbent's Dataplanes do.
fn gateway_dataplane_with_admin(name: &str, service: &str, admin_port: u16) -> Value {
    serde_json::json!({"type": "Dataplane", "mesh": "default", "name": name,
        "networking": {"address": "127.0.0.1", "admin": {"port": admin_port},
                       "gateway": {"type": "BUILTIN", "tags": {"kuma.io/service": service}}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zones_envoy_is_inspected_from_the_zone_and_from_the_global_through_kds() {
    let topo = Topology::builder("observe-inspect")
        .global(Backend::Sqlite)
        .zone("zone-1")
        .http_backend("blue", "zone-1")
        .gateway("zone-1", "edge-gw", "edge")
        .start()
        .await;
    let (global, zone, envoy) = (topo.global(), topo.zone("zone-1"), topo.envoy("edge-gw"));
    let port = free_port();
    global.api().apply_yaml(&resources::gateway_and_route_yaml(port, "/shop", "blue")).await;
    envoy.wait_ready().await;
    eventually("a request through the zone's Envoy reaches blue", WAIT, || async {
        let r = envoy.get(port, "edge.example.com", "/shop").await?;
        if r.status == 200 && r.backend() == "blue" { Ok(()) } else { Err(format!("{r:?}")) }
    })
    .await;
    let admin_port: u16 = envoy.admin().rsplit(':').next().and_then(|p| p.parse().ok()).expect("admin port");
    zone.api().apply(&gateway_dataplane_with_admin("edge-gw", "edge", admin_port)).await;
    let zone_http = Api::new(zone.api_url(), None);

    // From the zone: Envoy's config dump (its listener on `port` inside)
    // beside what the zone sends it.
    let dump = zone_http.get("/meshes/default/dataplanes/edge-gw/xds").await;
    assert_eq!(dump.status, 200, "{}", dump.text);
    assert!(dump.json["configs"].as_array().is_some_and(|c| !c.is_empty()), "Envoy's config dump: {}", dump.text);
    assert!(dump.text.contains(&format!("\"port_value\": {port}")), "the gateway's listener is in Envoy's dump");
    assert_eq!(dump.json["meridian"]["connected"], true, "{}", dump.json["meridian"]);
    let listeners = &dump.json["meridian"]["resources"]["type.googleapis.com/envoy.config.listener.v3.Listener"];
    assert!(listeners.as_object().is_some_and(|l| !l.is_empty()), "{}", dump.json["meridian"]);
    let stats = zone_http.get("/meshes/default/dataplanes/edge-gw/stats").await;
    assert_eq!(stats.status, 200, "{}", stats.text);
    assert!(stats.text.contains("cluster_manager.cds.update_success"), "{}", stats.text);
    let clusters = zone_http.get("/meshes/default/dataplanes/edge-gw/clusters?format=json").await;
    assert_eq!(clusters.status, 200, "{}", clusters.text);
    assert!(clusters.json["cluster_statuses"].as_array().is_some_and(|c| !c.is_empty()), "{}", clusters.text);
    // Unknown Dataplane: 404; a Dataplane without a reachable admin (the
    // backend has no Envoy): 502 naming the address; a bad format: 400.
    assert_eq!(zone_http.get("/meshes/default/dataplanes/nope/stats").await.status, 404);
    let unreachable = zone_http.get("/meshes/default/dataplanes/blue/stats").await;
    assert_eq!(unreachable.status, 502, "{}", unreachable.text);
    assert!(unreachable.details().contains("did not answer"), "{}", unreachable.text);
    let bad = zone_http.get("/meshes/default/dataplanes/edge-gw/stats?format=xml").await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.invalid_parameters()[0].0, "format");

    // From the global, through the zone's KDS connection: by the stored
    // name and by the zone-local name.
    let stored = eventually("the global holds the zone's Dataplane", WAIT, || async {
        let names = global.api().names("/meshes/default/dataplanes").await?;
        names.into_iter().find(|n| n.ends_with("edge-gw")).ok_or_else(|| "not yet".to_string())
    })
    .await;
    let g = global.http();
    for name in [stored.as_str(), "edge-gw"] {
        let dump = g.get(&format!("/meshes/default/dataplanes/{name}/xds")).await;
        assert_eq!(dump.status, 200, "{name}: {}", dump.text);
        assert!(dump.json["configs"].as_array().is_some_and(|c| !c.is_empty()), "{}", dump.text);
        assert_eq!(dump.json["meridian"]["connected"], true);
    }
    let stats = g.get("/meshes/default/dataplanes/edge-gw/stats").await;
    assert_eq!(stats.status, 200, "{}", stats.text);
    assert!(stats.text.contains("cluster_manager.cds.update_success"));
    let clusters = g.get("/meshes/default/dataplanes/edge-gw/clusters").await;
    assert_eq!(clusters.status, 200, "{}", clusters.text);
    assert!(clusters.text.contains("::"), "Envoy's clusters text: {}", clusters.text);
    // meridianctl at the global.
    let out = global.ctl().args(["inspect", "dataplane", "edge-gw", "--type", "config-dump"]).run().await.ok();
    let v: Value = serde_json::from_str(&out.stdout).expect("the config dump is JSON");
    assert!(v["configs"].as_array().is_some_and(|c| !c.is_empty()), "{}", out.stdout);
    let out = global.ctl().args(["inspect", "dataplane", "edge-gw", "--type", "stats"]).run().await.ok();
    assert!(out.stdout.contains("cluster_manager.cds.update_success"));
    let out = global.ctl().args(["inspect", "meshgateways"]).run().await.ok();
    let row = out.lines().into_iter().find(|l| l.starts_with("edge ")).unwrap_or_default().to_string();
    assert!(
        row.contains(&format!("HTTP:{port}")) && row.contains("edge-route") && row.contains("zone-1/edge-gw"),
        "{}",
        out.stdout
    );
    let out = global.ctl().args(["inspect", "meshes", "-o", "json"]).run().await.ok();
    let v: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(v["items"][0]["counts"]["meshgateways"], 1, "{}", out.stdout);

    // Not known: 404; the zone's Envoy admin unreachable: 502 with the zone's reason.
    assert_eq!(g.get("/meshes/default/dataplanes/nope/xds").await.status, 404);
    let via_zone = g.get("/meshes/default/dataplanes/blue/stats").await;
    assert_eq!(via_zone.status, 502, "{}", via_zone.text);
    assert!(via_zone.details().contains("zone-1"), "{}", via_zone.text);
    // A zone that does not answer (stopped): 504 naming it, and meridianctl exits 2.
    zone.pause();
    let silent = g.get("/meshes/default/dataplanes/edge-gw/xds").await;
    assert_eq!(silent.status, 504, "{}", silent.text);
    assert!(silent.details().contains("zone-1"), "{}", silent.text);
    zone.kill();
    let gone = eventually("the global sees the zone's stream closed", WAIT, || async {
        let r = g.get("/meshes/default/dataplanes/edge-gw/stats").await;
        if r.details().contains("not connected") { Ok(r) } else { Err(r.text) }
    })
    .await;
    assert_eq!(gone.status, 504);
    global.ctl().args(["inspect", "dataplane", "edge-gw", "--type", "clusters"]).run().await.expect_code(2);
}

/// `--diagnostics-address`: a value that is neither `ip:port` nor `off` is
/// refused by the parser (a usage error: exit 2 from the global, 1 from
/// the zone, as each binary treats usage errors; naming the flag); a port already taken
/// stops the start (exit 1, naming the flag and how to turn it off).
#[test]
fn a_bad_or_busy_diagnostics_address_is_refused_at_start() {
    use std::process::Command;
    let dir = meridian_tests::TestDir::new("observe-diag-flag");
    for bin in ["meridian-global", "meridian-zone"] {
        let bad = Command::new(meridian_tests::process::binary(bin))
            .args(["run", "--diagnostics-address", "everywhere"])
            .env_remove("MERIDIAN_DIAGNOSTICS_ADDRESS")
            .output()
            .expect("run the binary");
        let usage = if bin == "meridian-global" { 2 } else { 1 };
        assert_eq!(bad.status.code(), Some(usage), "{bin}");
        let stderr = String::from_utf8_lossy(&bad.stderr);
        assert!(stderr.contains("--diagnostics-address") && stderr.contains("off"), "{bin}: {stderr}");

        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let busy = held.local_addr().expect("addr").to_string();
        let data = dir.part_dir(bin);
        let mut args = vec!["run", "--api-addr", "127.0.0.1:0", "--diagnostics-address", &busy, "--skip-default-mesh"];
        let data = data.display().to_string();
        args.extend(["--data-dir", &data]);
        if bin == "meridian-global" {
            args.extend(["--kds-addr", "127.0.0.1:0"]);
        } else {
            args.extend(["--xds-addr", "127.0.0.1:0"]);
        }
        let out = Command::new(meridian_tests::process::binary(bin))
            .args(&args)
            .env_remove("MERIDIAN_DIAGNOSTICS_ADDRESS")
            .output()
            .expect("run the binary");
        assert_eq!(out.status.code(), Some(1), "{bin}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&busy) && stderr.contains("--diagnostics-address"), "{bin}: {stderr}");
        drop(held);
    }
}
