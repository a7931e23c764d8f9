//! Sidecars end to end, mesh mTLS off: a real zone, real Envoys as
//! sidecars and as a builtin gateway, real HTTP applications.
//!
//! ```text
//!   client ─▶ sidecar a-1 outbound 127.0.0.1:<a_out> ─┐
//!                                                     ├─▶ sidecar b-1 inbound 127.0.0.1:<b_in> ─▶ app-b
//!   client ─▶ gateway edge-1 listener :<gw> ──────────┘
//!   Dataplane c-1: an inbound of service b at app-c, health.ready false ─▶ left out, until ready
//! ```
//!
//! Sidecar b-1 is started as users do it, `meridian-zone dataplane run -f`
//! (it registers the Dataplane itself); a-1 and the gateway are registered
//! through the zone API and bootstrapped with `dataplane bootstrap`.

use meridian_tests::{
    Topology, WAIT, XdsMode, eventually,
    process::{Announce, Process, binary, envoy_binary},
    traffic::{self, free_port},
};

/// Requests sent where every answer must come from one application.
const REQUESTS: usize = 10;

/// A Dataplane of service `service` (HTTP) whose inbound `port` forwards
/// to the application on `service_port`, with `extra` YAML lines under
/// `networking` (outbounds).
fn sidecar_yaml(name: &str, service: &str, port: u16, service_port: u16, extra: &str) -> String {
    format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {port}\n    servicePort: {service_port}\n    tags: {{kuma.io/service: {service}, kuma.io/protocol: http}}\n{extra}"
    )
}

/// Dataplane c-1: an inbound of service `b` that is the application itself
/// (no sidecar), ready or not.
fn c_yaml(port: u16, ready: bool) -> String {
    format!(
        "type: Dataplane\nmesh: default\nname: c-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {port}\n    tags: {{kuma.io/service: b, kuma.io/protocol: http}}\n    health: {{ready: {ready}}}\n"
    )
}

/// `http.<stat prefix>.downstream_rq_total` of an Envoy's HTTP connection
/// manager, from its admin `/stats`.
async fn requests_seen(envoy_admin: &str, stat_prefix: &str) -> u64 {
    let name = format!("http.{stat_prefix}.downstream_rq_total");
    let text = reqwest::get(format!("http://{envoy_admin}/stats?filter={}", name.replace('.', "\\.")))
        .await
        .expect("admin /stats")
        .text()
        .await
        .expect("stats text");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbounds_and_the_gateway_reach_healthy_sidecar_inbounds() {
    let envoy_bin = envoy_binary();
    let app_a = traffic::http_backend("app-a").await;
    let app_b = traffic::http_backend("app-b").await;
    let app_c = traffic::http_backend("app-c").await;
    let mut topo = Topology::builder("sidecars").zone("zone-1").mesh("default").start().await;
    let (a_in, a_out, b_in, gw_port) = (free_port(), free_port(), free_port(), free_port());

    // c-1 serves `b` too, but is not ready: no endpoint of `b` may be it.
    let zone = topo.zone("zone-1");
    zone.api().apply_yaml(&c_yaml(app_c.port, false)).await;

    // Sidecar b-1 through the runner: it registers b-1 and runs Envoy.
    let dir = topo.dir().part_dir("b-1");
    let dp_file = dir.join("b-1.yaml");
    std::fs::write(&dp_file, sidecar_yaml("b-1", "b", b_in, app_b.port, "")).expect("write the Dataplane file");
    let b_admin_file = dir.join("admin");
    let runner = Process::new("b-1", binary("meridian-zone"), &topo.dir().logs());
    let mut args: Vec<std::ffi::OsString> = ["dataplane", "run", "--api-url", zone.api_url()].map(Into::into).to_vec();
    args.extend(zone.xds_flags());
    // Its Dataplane token: it registers b-1 with it and Envoy presents it on xDS.
    let token_file = dir.join("b-1.token");
    std::fs::write(&token_file, zone.dataplane_token("b-1").await.expect("a Dataplane token")).expect("token file");
    args.extend(["--dataplane-token-file".into(), token_file.into()]);
    args.extend(["--admin-address".into(), "127.0.0.1:0".into(), "--envoy".into(), envoy_bin.into()]);
    args.extend(["--config-dir".into(), dir.clone().into(), "-f".into(), dp_file.into()]);
    args.extend(["--", "--concurrency", "1", "--admin-address-path"].map(Into::into));
    args.push(b_admin_file.clone().into());
    let b_admin = runner.start(&args, &Announce::File(b_admin_file)).await.remove(0);
    zone.api().wait_for("/meshes/default/dataplanes/b-1", "b-1 registered by its runner", |_| true).await;

    // Sidecar a-1: an outbound to service b.
    let outbound = format!("  outbound:\n  - port: {a_out}\n    tags: {{kuma.io/service: b}}\n");
    zone.api().apply_yaml(&sidecar_yaml("a-1", "a", a_in, app_a.port, &outbound)).await;
    let a = topo.add_envoy("zone-1", "a-1", XdsMode::Delta).await;
    a.wait_ready().await;

    // client → a-1's outbound → b-1's inbound → app-b.
    eventually("a-1's outbound reaches app-b", WAIT, || async {
        let r = traffic::get(a_out, "b", "/from-a").await?;
        if r.backend() == "app-b" { Ok(()) } else { Err(format!("{r:?}")) }
    })
    .await;
    for i in 0..REQUESTS {
        let r = traffic::get(a_out, "b", &format!("/from-a/{i}")).await.expect("request through a-1");
        assert_eq!((r.status, r.backend()), (200, "app-b".to_string()), "request {i}: {r:?}");
    }
    assert!(app_c.seen.lock().expect("seen").is_empty(), "the not-ready inbound got traffic");
    // a-1's cluster `b` holds b-1's inbound only, never c-1's.
    let clusters = a.admin_get("/clusters").await.expect("a-1 /clusters");
    let hosts: Vec<&str> = clusters.lines().filter(|l| l.starts_with("b::") && l.contains("::cx_total::")).collect();
    assert_eq!(hosts.len(), 1, "cluster b of a-1: {hosts:?}");
    assert!(hosts[0].starts_with(&format!("b::127.0.0.1:{b_in}::")), "cluster b of a-1: {hosts:?}");
    // And b-1's inbound listener (not app-b directly) took them.
    let via_b = requests_seen(&b_admin, &format!("inbound_127.0.0.1_{b_in}")).await;
    assert!(via_b > REQUESTS as u64, "b-1's inbound saw {via_b} requests");

    // The builtin gateway routes to service b: through b-1's inbound too.
    let zone = topo.zone("zone-1");
    zone.api().apply_yaml(&traffic::gateway_dataplane("edge-1", "edge")).await;
    zone.api()
        .apply_yaml(&format!(
            r#"
type: MeshGateway
mesh: default
name: edge
selectors: [{{match: {{kuma.io/service: edge}}}}]
conf: {{listeners: [{{port: {gw_port}, protocol: HTTP}}]}}
---
type: MeshGatewayRoute
mesh: default
name: edge-to-b
selectors: [{{match: {{kuma.io/service: edge}}}}]
conf:
  http:
    rules:
    - matches: [{{path: {{match: PREFIX, value: /}}}}]
      backends: [{{destination: {{kuma.io/service: b}}}}]
"#
        ))
        .await;
    let before = requests_seen(&b_admin, &format!("inbound_127.0.0.1_{b_in}")).await;
    let gw = topo.add_envoy("zone-1", "edge-1", XdsMode::Delta).await;
    gw.wait_ready().await;
    eventually("the gateway reaches app-b", WAIT, || async {
        let r = traffic::get(gw_port, "example.com", "/from-gateway").await?;
        if r.backend() == "app-b" { Ok(()) } else { Err(format!("{r:?}")) }
    })
    .await;
    for i in 0..REQUESTS {
        let r = traffic::get(gw_port, "example.com", &format!("/from-gateway/{i}")).await.expect("request");
        assert_eq!((r.status, r.backend()), (200, "app-b".to_string()), "request {i}: {r:?}");
    }
    let after = requests_seen(&b_admin, &format!("inbound_127.0.0.1_{b_in}")).await;
    assert!(after >= before + REQUESTS as u64, "b-1's inbound saw {before} then {after} requests");
    let paths: Vec<String> =
        app_b.seen.lock().expect("seen").iter().filter_map(|e| e["path"].as_str().map(str::to_string)).collect();
    assert!(paths.iter().any(|p| p.starts_with("/from-gateway/")), "app-b saw {paths:?}");
    assert!(app_c.seen.lock().expect("seen").is_empty(), "the not-ready inbound got traffic");

    // c-1 becomes ready: it joins service b (the exclusion above was its health).
    topo.zone("zone-1").api().apply_yaml(&c_yaml(app_c.port, true)).await;
    eventually("a-1's outbound reaches app-c once c-1 is ready", WAIT, || async {
        let r = traffic::get(a_out, "b", "/after-ready").await?;
        if r.backend() == "app-c" { Ok(()) } else { Err(format!("{r:?}")) }
    })
    .await;

    // SIGTERM: the runner deregisters b-1.
    assert!(runner.sigterm().await.success(), "runner exit");
    topo.zone("zone-1").api().wait_gone("/meshes/default/dataplanes/b-1").await;
    topo.cleanup().await;
}
