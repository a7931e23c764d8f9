//! Propagation status, end to end: a global, two zones and a real gateway
//! Envoy in each. A route applied at the global with `meridianctl apply
//! --wait` returns once both zones hold it and both Envoys ACKed a
//! configuration carrying it; with a zone stopped it exits non-zero naming
//! that zone; with a route Envoy cannot take (its TCP listener's port is
//! held by another process: every check Meridian can make passes) it exits
//! non-zero with Envoy's reason. `GET .../_status` says the same each time.

use meridian_tests::{Backend, Topology, WAIT, eventually, traffic::free_port};
use reqwest::Method;
use serde_json::{Value, json};

/// One MeshGateway per zone (each Envoy its own HTTP port on 127.0.0.1),
/// and in zone-1 a TCP listener on `tcp_port` that only TCP routes open.
fn gateways(p1: u16, p2: u16, tcp_port: u16) -> String {
    format!(
        r#"
type: MeshGateway
mesh: default
name: edge-1
selectors: [{{match: {{kuma.io/service: edge-1}}}}]
conf:
  listeners:
  - {{port: {p1}, protocol: HTTP}}
  - {{port: {tcp_port}, protocol: TCP}}
---
type: MeshGateway
mesh: default
name: edge-2
selectors: [{{match: {{kuma.io/service: edge-2}}}}]
conf: {{listeners: [{{port: {p2}, protocol: HTTP}}]}}
"#
    )
}

/// A route attached to both zones' gateways, sending `prefix` to `blue`.
fn route(prefix: &str) -> String {
    format!(
        r#"
type: MeshGatewayRoute
mesh: default
name: edge-route
selectors: [{{match: {{kuma.io/service: edge-1}}}}, {{match: {{kuma.io/service: edge-2}}}}]
conf:
  http:
    rules:
    - matches: [{{path: {{match: PREFIX, value: {prefix}}}}}]
      backends: [{{destination: {{kuma.io/service: blue}}}}]
"#
    )
}

/// A TCP route for zone-1's gateway only: it opens the TCP listener.
const TCP_ROUTE: &str = r#"
type: MeshGatewayRoute
mesh: default
name: tcp-route
selectors: [{match: {kuma.io/service: edge-1}}]
conf:
  tcp:
    rules:
    - backends: [{destination: {kuma.io/service: blue}}]
"#;

async fn two_zones(test: &str) -> Topology {
    Topology::builder(test)
        .global(Backend::Sqlite)
        .zone("zone-1")
        .zone("zone-2")
        .http_backend("blue", "zone-1")
        .gateway("zone-1", "gw-1", "edge-1")
        .gateway("zone-2", "gw-2", "edge-2")
        .start()
        .await
}

fn zone<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["zones"]
        .as_array()
        .and_then(|zs| zs.iter().find(|z| z["zone"] == name))
        .unwrap_or_else(|| panic!("zone {name} in {status}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_wait_returns_once_both_zones_and_envoys_acked_and_status_shows_it() {
    let topo = two_zones("propagation-ack").await;
    let global = topo.global();
    let (p1, p2) = (free_port(), free_port());
    let ctl = global.ctl();
    ctl.with(["apply", "-f", "-", "--wait=60s"]).run_stdin(&gateways(p1, p2, free_port())).await.ok();
    let out = ctl.with(["apply", "-f", "-", "--wait"]).run_stdin(&route("/shop")).await.ok();
    assert!(
        out.stdout.contains("applied MeshGatewayRoute default/edge-route in 2 zone(s), ACKed by 2 Dataplane(s)"),
        "{}",
        out.stdout
    );

    // The status the wait relied on: both zones hold the global's version,
    // and each zone's gateway Envoy ACKed a configuration carrying it.
    let status = global.api().get("/meshes/default/meshgatewayroutes/edge-route/_status").await;
    let version = status["version"].as_str().expect("version").to_string();
    assert_eq!(status["state"], "Applied", "{status}");
    assert_eq!(status["type"], "MeshGatewayRoute");
    for (z, dp) in [("zone-1", "zone-1.gw-1"), ("zone-2", "zone-2.gw-2")] {
        let zs = zone(&status, z);
        assert_eq!((zs["state"].as_str(), zs["online"].as_bool()), (Some("Applied"), Some(true)), "{zs}");
        assert_eq!(zs["version"], version.as_str(), "{zs}");
        let dps = zs["dataplanes"].as_array().expect("dataplanes");
        assert_eq!(dps.len(), 1, "only the gateway depends on the route: {zs}");
        assert_eq!(dps[0]["name"], dp);
        assert_eq!(dps[0]["state"], "ACKed", "{zs}");
        assert_eq!(dps[0]["version"], version.as_str());
        assert!(dps[0]["time"].as_str().is_some_and(|t| t.contains('T')), "RFC 3339 time: {zs}");
    }
    // The Envoy serves what it ACKed.
    let envoy = topo.envoy("gw-1");
    eventually("gw-1 routes /shop to blue", WAIT, || async {
        let r = envoy.get(p1, "a.example.com", "/shop/x").await?;
        if r.status == 200 && r.backend() == "blue" { Ok(()) } else { Err(format!("{r:?}")) }
    })
    .await;

    // A change: a new version, waited for the same way.
    ctl.with(["apply", "-f", "-", "--wait"]).run_stdin(&route("/store")).await.ok();
    let after = global.api().get("/meshes/default/meshgatewayroutes/edge-route/_status").await;
    assert_ne!(after["version"], version.as_str(), "a new version");
    assert_eq!(after["state"], "Applied", "{after}");
    assert_eq!(zone(&after, "zone-2")["dataplanes"][0]["version"], after["version"]);

    // The state is on the resource itself too: a response header.
    let url = format!("{}/meshes/default/meshgatewayroutes/edge-route", global.api_url());
    let resp = reqwest::get(&url).await.expect("GET the route");
    assert_eq!(resp.headers().get("x-meridian-propagation").and_then(|v| v.to_str().ok()), Some("Applied"));

    // A change no Envoy resource reflects (a label): a new version that
    // Envoy's unchanged configuration stands for; --wait still returns.
    let labelled = route("/store").replace("name: edge-route\n", "name: edge-route\nlabels: {team: shop}\n");
    ctl.with(["apply", "-f", "-", "--wait=30s"]).run_stdin(&labelled).await.ok();
    let relabelled = global.api().get("/meshes/default/meshgatewayroutes/edge-route/_status").await;
    assert_ne!(relabelled["version"], after["version"], "a new version");
    assert_eq!(relabelled["state"], "Applied", "{relabelled}");
    assert_eq!(zone(&relabelled, "zone-1")["dataplanes"][0]["version"], relabelled["version"], "{relabelled}");
    let after = relabelled;

    // `get --status` shows the same, as a table and as JSON.
    let table = ctl.with(["get", "meshgatewayroute", "edge-route", "--status"]).run().await.ok();
    assert!(table.stdout.starts_with("MeshGatewayRoute default/edge-route: Applied"), "{}", table.stdout);
    assert!(table.stdout.contains("zone-2.gw-2") && table.stdout.contains("ACKed"), "{}", table.stdout);
    let json = ctl.with(["get", "meshgatewayroute", "edge-route", "--status", "-o", "json"]).run().await.ok();
    let parsed: Value = serde_json::from_str(&json.stdout).expect("json");
    assert_eq!(parsed["version"], after["version"]);

    // Unknown resources and types that do not flow to zones are refused precisely.
    let (code, body) = global.api().try_get("/meshes/default/meshgatewayroutes/nope/_status").await.expect("answer");
    assert_eq!(code, 404, "{body}");
    let (code, body) = global.api().try_get("/meshes/default/dataplanes/zone-1.gw-1/_status").await.expect("answer");
    assert_eq!(code, 400, "{body}");
    assert!(body["details"].as_str().is_some_and(|d| d.contains("not sent to zones")), "{body}");
    topo.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_wait_names_a_stopped_zone() {
    let topo = two_zones("propagation-offline").await;
    let global = topo.global();
    let ctl = global.ctl();
    ctl.with(["apply", "-f", "-", "--wait"]).run_stdin(&gateways(free_port(), free_port(), free_port())).await.ok();
    ctl.with(["apply", "-f", "-", "--wait"]).run_stdin(&route("/shop")).await.ok();

    topo.zone("zone-2").kill();
    global.api().wait_online("zone-2", false, WAIT).await;
    let out = ctl.with(["apply", "-f", "-", "--wait=5s"]).run_stdin(&route("/store")).await.expect_code(3);
    assert!(out.stdout.contains("updated MeshGatewayRoute default/edge-route"), "applied first: {}", out.stdout);
    assert!(out.stderr.contains("not confirmed within 5s"), "{}", out.stderr);
    assert!(out.stderr.contains("zone zone-2: offline"), "names the stopped zone: {}", out.stderr);
    assert!(!out.stderr.contains("zone zone-1"), "zone-1 applied it: {}", out.stderr);

    let status = global.api().get("/meshes/default/meshgatewayroutes/edge-route/_status").await;
    assert_eq!(zone(&status, "zone-2")["state"], "Offline", "{status}");
    assert_eq!(zone(&status, "zone-1")["state"], "Applied", "{status}");
    assert_eq!(status["state"], "Applied", "offline zones do not hold the rest back: {status}");
    topo.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_wait_reports_what_envoy_rejected() {
    let topo = two_zones("propagation-nack").await;
    let global = topo.global();
    let ctl = global.ctl();
    // Another process holds the port of zone-1's TCP listener.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
    let taken = squatter.local_addr().expect("addr").port();
    ctl.with(["apply", "-f", "-", "--wait"]).run_stdin(&gateways(free_port(), free_port(), taken)).await.ok();

    // The TCP route opens that listener: Envoy in zone-1 cannot bind it.
    let out = ctl.with(["apply", "-f", "-", "--wait"]).run_stdin(TCP_ROUTE).await.expect_code(1);
    assert!(out.stderr.contains("MeshGatewayRoute default/tcp-route: rejected"), "{}", out.stderr);
    assert!(out.stderr.contains("Dataplane zone-1.gw-1: NACKed"), "{}", out.stderr);
    assert!(out.stderr.to_lowercase().contains("in use"), "Envoy's reason: {}", out.stderr);
    assert!(!out.stderr.contains("zone zone-2"), "zone-2's gateway does not take the route: {}", out.stderr);

    let status = global.api().get("/meshes/default/meshgatewayroutes/tcp-route/_status").await;
    assert_eq!(status["state"], "Rejected", "{status}");
    let url = format!("{}/meshes/default/meshgatewayroutes/tcp-route", global.api_url());
    let resp = reqwest::get(&url).await.expect("GET the route");
    assert_eq!(resp.headers().get("x-meridian-propagation").and_then(|v| v.to_str().ok()), Some("Rejected"));
    let z1 = zone(&status, "zone-1");
    assert_eq!(z1["state"], "Rejected", "{z1}");
    assert_eq!(z1["version"], status["version"], "the zone itself took it: {z1}");
    assert_eq!(z1["dataplanes"][0]["state"], "NACKed", "{z1}");
    assert!(z1["reason"].as_str().is_some_and(|r| r.starts_with("Dataplane zone-1.gw-1: ")), "{z1}");
    let z2 = zone(&status, "zone-2");
    assert_eq!(z2["state"], "Applied", "{z2}");
    assert_eq!(z2["dataplanes"].as_array().map(Vec::len), Some(0), "{z2}");
    drop(squatter);
    topo.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_diff_shows_each_gateways_envoy_changes_and_writes_nothing() {
    let topo = two_zones("propagation-diff").await;
    let global = topo.global();
    let ctl = global.ctl();
    let (p1, p2) = (free_port(), free_port());
    ctl.with(["apply", "-f", "-", "--wait"]).run_stdin(&gateways(p1, p2, free_port())).await.ok();
    ctl.with(["apply", "-f", "-", "--wait"]).run_stdin(&route("/shop")).await.ok();
    let before = global.api().get("/meshes/default/meshgatewayroutes/edge-route").await;
    let status_before = global.api().get("/meshes/default/meshgatewayroutes/edge-route/_status").await;

    let out = ctl.with(["apply", "-f", "-", "--dry-run", "--diff"]).run_stdin(&route("/store")).await.ok();
    let text = &out.stdout;
    assert!(text.contains("updated MeshGatewayRoute default/edge-route (dry run)"), "{text}");
    for (zone, dp, port) in [("zone-1", "zone-1.gw-1", p1), ("zone-2", "zone-2.gw-2", p2)] {
        assert!(text.contains(&format!("zone {zone}, Dataplane {dp} (mesh default):")), "{text}");
        let rc = format!("edge-{}:HTTP:{port}:*", &zone[5..]);
        assert!(text.contains(&format!("~ route configuration {rc} (modified)")), "{rc} in {text}");
    }
    assert!(text.lines().any(|l| l.starts_with('-') && l.contains("\"/shop\"")), "the old prefix: {text}");
    assert!(text.lines().any(|l| l.starts_with('+') && l.contains("\"/store\"")), "the new prefix: {text}");
    assert!(!text.contains("~ listener"), "no listener changes: {text}");

    // Nothing was written: the global's route, the zones' copies and the status are as they were.
    assert_eq!(global.api().get("/meshes/default/meshgatewayroutes/edge-route").await, before);
    for z in ["zone-1", "zone-2"] {
        let copy = topo.zone(z).api().get("/meshes/default/meshgatewayroutes/edge-route").await;
        assert_eq!(copy["conf"]["http"]["rules"][0]["matches"][0]["path"]["value"], "/shop", "{copy}");
    }
    let status_after = global.api().get("/meshes/default/meshgatewayroutes/edge-route/_status").await;
    assert_eq!(status_after["version"], status_before["version"]);

    // The REST endpoint refuses what it cannot diff, precisely.
    let post = |body: Value| async move {
        let json = [("content-type", "application/json")];
        global.admin_http().request(Method::POST, "/_diff", Some(body.to_string().into_bytes()), &json).await
    };
    let r = post(json!({"type": "Dataplane", "mesh": "default", "name": "x"})).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.invalid_parameters().iter().any(|(f, _)| f == "[0].type"), "{}", r.text);
    let r = post(json!([{"type": "MeshGatewayRoute", "mesh": "default", "name": "r", "selectors": []}])).await;
    assert_eq!(r.status, 400, "an invalid route: {}", r.text);
    assert!(!r.invalid_parameters().is_empty(), "field paths: {}", r.text);
    topo.cleanup().await;
}

/// A Timeout for `blue`, from every source: the gateways' routes and
/// clusters to `blue` carry it.
const TIMEOUT: &str = r#"
type: Timeout
mesh: default
name: t-blue
sources: [{match: {kuma.io/service: '*'}}]
destinations: [{match: {kuma.io/service: blue}}]
conf: {connectTimeout: 5s, http: {requestTimeout: 15s}}
"#;

/// Policies are configuration sources of the gateways they apply to: a
/// Timeout both Envoys take is waited for and listed as ACKed by both
/// gateway Dataplanes; a TrafficLog whose file backend Envoy cannot open
/// (its directory does not exist: nothing Meridian can check at apply
/// time, the path may exist on the gateway's host) exits 1 with Envoy's
/// reason, and `_status` says Rejected. A policy that selects no proxy is
/// Applied with no Dataplanes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_are_waited_for_and_rejections_reported() {
    let topo = two_zones("propagation-policies").await;
    let global = topo.global();
    let ctl = global.ctl();
    ctl.with(["apply", "-f", "-", "--wait"]).run_stdin(&gateways(free_port(), free_port(), free_port())).await.ok();
    ctl.with(["apply", "-f", "-", "--wait"]).run_stdin(&route("/shop")).await.ok();

    let out = ctl.with(["apply", "-f", "-", "--wait"]).run_stdin(TIMEOUT).await.ok();
    assert!(out.stdout.contains("Timeout default/t-blue in 2 zone(s), ACKed by 2 Dataplane(s)"), "{}", out.stdout);
    let status = global.api().get("/meshes/default/timeouts/t-blue/_status").await;
    assert_eq!(status["state"], "Applied", "{status}");
    for (z, dp) in [("zone-1", "zone-1.gw-1"), ("zone-2", "zone-2.gw-2")] {
        let zs = zone(&status, z);
        let dps = zs["dataplanes"].as_array().expect("dataplanes");
        assert_eq!(dps.len(), 1, "the gateway applies the Timeout: {zs}");
        assert_eq!((dps[0]["name"].as_str(), dps[0]["state"].as_str()), (Some(dp), Some("ACKed")), "{zs}");
        assert_eq!(dps[0]["version"], status["version"], "{zs}");
    }

    // A Timeout for a service no gateway routes to: Applied, no Dataplanes.
    let idle =
        TIMEOUT.replace("name: t-blue", "name: t-idle").replace("kuma.io/service: blue", "kuma.io/service: nobody");
    ctl.with(["apply", "-f", "-", "--wait"]).run_stdin(&idle).await.ok();
    let status = global.api().get("/meshes/default/timeouts/t-idle/_status").await;
    assert_eq!(status["state"], "Applied", "{status}");
    assert_eq!(zone(&status, "zone-1")["dataplanes"].as_array().map(Vec::len), Some(0), "{status}");

    // A file backend in a directory that does not exist: the Mesh alone
    // changes no Envoy resource; the TrafficLog puts it on the listeners.
    let missing = topo.dir().path().join("no-such-dir").join("access.log");
    let mesh = format!(
        "type: Mesh\nname: default\nlogging:\n  backends:\n  - name: broken\n    type: file\n    conf: {{path: {}}}\n",
        missing.display()
    );
    // `--wait` returns once both zones hold the Mesh and every affected
    // Envoy ACKed it: `blue` has no Envoy here, so it is Offline and holds
    // nothing up (it used to keep `--wait` pending until its timeout).
    let out = ctl.with(["apply", "-f", "-", "--wait"]).run_stdin(&mesh).await.expect_code(0);
    assert!(out.stdout.contains("Mesh default"), "{}", out.stdout);
    let status = global.api().get("/meshes/default/_status").await;
    assert_eq!(status["state"], "Applied", "{status}");
    let blue: Vec<_> = ["zone-1", "zone-2"]
        .iter()
        .flat_map(|z| zone(&status, z)["dataplanes"].as_array().cloned().unwrap_or_default())
        .filter(|d| d["name"].as_str().is_some_and(|n| n.contains("blue")))
        .collect();
    assert!(!blue.is_empty() && blue.iter().all(|d| d["state"] == "Offline"), "blue has no Envoy: {status}");
    let log = "type: TrafficLog\nmesh: default\nname: broken-log\nsources: [{match: {kuma.io/service: '*'}}]\n\
               destinations: [{match: {kuma.io/service: '*'}}]\nconf: {backend: broken}\n";
    let out = ctl.with(["apply", "-f", "-", "--wait"]).run_stdin(log).await.expect_code(1);
    assert!(out.stderr.contains("TrafficLog default/broken-log: rejected"), "{}", out.stderr);
    assert!(out.stderr.contains("NACKed"), "{}", out.stderr);
    assert!(out.stderr.contains("no-such-dir"), "Envoy's reason names the file: {}", out.stderr);
    let status = global.api().get("/meshes/default/traffic-logs/broken-log/_status").await;
    assert_eq!(status["state"], "Rejected", "{status}");
    let z1 = zone(&status, "zone-1");
    assert_eq!(z1["dataplanes"][0]["name"], "zone-1.gw-1", "{z1}");
    assert_eq!(z1["dataplanes"][0]["state"], "NACKed", "{z1}");
    assert!(z1["dataplanes"][0]["reason"].as_str().is_some_and(|r| r.contains("no-such-dir")), "{z1}");
    topo.cleanup().await;
}
