//! Cross-zone routing through ZoneIngresses, with real processes: a global,
//! zone-1 and zone-2, mesh `default` with builtin mTLS (STRICT), Envoys as
//! sidecars, ingress, builtin and delegated gateways, real HTTP applications.
//!
//! ```text
//!   zone-1                                              zone-2
//!   client ─▶ edge-1 (builtin gw) ─┐ priority 0: b-1 (while it exists) ─▶ app-b1
//!   client ─▶ kong-01 outbound ────┴ priority 1: ingress-2 (SNI b{mesh=default}) ─▶ b-2 sidecar ─▶ app-b2
//! ```
//!
//! The ingress is started as users do it, `meridian-zone ingress run -f`
//! with a ZoneIngress token; zone-2 writes its `availableServices`, the
//! global relays the ZoneIngress to zone-1, whose proxies get it as an
//! endpoint of service `b`.

use meridian_tests::{
    Api, GlobalSpec, Topology, WAIT, XdsMode, eventually,
    process::{Announce, Process, binary, envoy_binary},
    traffic::{self, free_port},
};

const MTLS_MESH: &str =
    "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n";

/// Requests sent where every answer must come from one application.
const REQUESTS: usize = 10;

/// A sidecar Dataplane of service `b` (HTTP) at 127.0.0.1:`port` in front
/// of the application on `app_port`.
fn b_sidecar(name: &str, port: u16, app_port: u16) -> String {
    format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {port}\n    servicePort: {app_port}\n    tags: {{kuma.io/service: b, kuma.io/protocol: http}}\n"
    )
}

/// The seed's gateway, authored at the global: `edge` on `port`, `/` to service `b`.
fn edge_gateway(port: u16) -> String {
    format!(
        "type: MeshGateway\nmesh: default\nname: edge\nselectors: [{{match: {{kuma.io/service: edge}}}}]\nconf: {{listeners: [{{port: {port}, protocol: HTTP}}]}}\n---\ntype: MeshGatewayRoute\nmesh: default\nname: edge-to-b\nselectors: [{{match: {{kuma.io/service: edge}}}}]\nconf:\n  http:\n    rules:\n    - matches: [{{path: {{match: PREFIX, value: /}}}}]\n      backends: [{{destination: {{kuma.io/service: b}}}}]\n"
    )
}

/// `meridian-zone ingress run` for ZoneIngress `name` of `zone`, listening
/// and advertised on 127.0.0.1:`port`; returns the runner and Envoy's admin address.
async fn start_ingress(topo: &Topology, zone: &str, name: &str, port: u16) -> (Process, String) {
    let zone = topo.zone(zone);
    let dir = topo.dir().part_dir(name);
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &file,
        format!(
            "type: ZoneIngress\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  port: {port}\n  advertisedAddress: 127.0.0.1\n  advertisedPort: {port}\n"
        ),
    )
    .expect("write the ZoneIngress file");
    let token = dir.join(format!("{name}.token"));
    std::fs::write(&token, zone.ingress_token(name).await.expect("an ingress token")).expect("token file");
    let admin_file = dir.join("admin");
    let runner = Process::new(name, binary("meridian-zone"), &topo.dir().logs());
    let mut args: Vec<std::ffi::OsString> = ["ingress", "run", "--api-url", zone.api_url()].map(Into::into).to_vec();
    args.extend(zone.xds_flags());
    args.extend(["--dataplane-token-file".into(), token.into()]);
    args.extend(["--admin-address".into(), "127.0.0.1:0".into(), "--envoy".into(), envoy_binary().into()]);
    args.extend(["--config-dir".into(), dir.clone().into(), "-f".into(), file.into()]);
    args.extend(["--", "--concurrency", "1", "--admin-address-path"].map(Into::into));
    args.push(admin_file.clone().into());
    let admin = runner.start(&args, &Announce::File(admin_file)).await.remove(0);
    (runner, admin)
}

/// Sends `n` requests to `port` and returns which application answered each.
async fn answers(port: u16, n: usize, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..n {
        let r = traffic::get(port, "example.com", &format!("{path}/{i}")).await.expect("request");
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        out.push(r.backend());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_reaches_a_zone_2_service_through_its_ingress_and_prefers_local_instances() {
    let app_b1 = traffic::http_backend("app-b1").await;
    let app_b2 = traffic::http_backend("app-b2").await;
    let mut topo = Topology::builder("cross-zone")
        .global_spec(GlobalSpec::default())
        .mesh("default")
        .zone("zone-1")
        .zone("zone-2")
        .start()
        .await;
    let (b1_in, b2_in, ingress_port, gw_port, kong_out) =
        (free_port(), free_port(), free_port(), free_port(), free_port());
    topo.global().api().apply_yaml(MTLS_MESH).await;
    topo.global().api().apply_yaml(&edge_gateway(gw_port)).await;

    // zone-2: service b (sidecar b-2 + app-b2) and its ingress.
    topo.zone("zone-2").api().apply_yaml(&b_sidecar("b-2", b2_in, app_b2.port)).await;
    topo.add_envoy("zone-2", "b-2", XdsMode::Delta).await.wait_ready().await;
    let (ingress, ingress_admin) = start_ingress(&topo, "zone-2", "ingress-2", ingress_port).await;
    let at_global = topo
        .global()
        .api()
        .wait_for("/zoneingresses/zone-2.ingress-2", "zone-2's ingress announcing b", |zi| {
            zi["availableServices"].as_array().is_some_and(|s| {
                s.iter().any(|s| s["tags"]["kuma.io/service"] == "b" && s["instances"] == 1 && s["mesh"] == "default")
            })
        })
        .await;
    assert_eq!(at_global["zone"], "zone-2", "{at_global}");

    // zone-1: the builtin gateway; b exists only in zone-2.
    topo.zone("zone-1").api().apply_yaml(&traffic::gateway_dataplane("edge-1", "edge")).await;
    topo.add_envoy("zone-1", "edge-1", XdsMode::Delta).await.wait_ready().await;
    eventually("edge-1 reaches app-b2 in zone-2 through ingress-2", WAIT, || async {
        let r = traffic::get(gw_port, "example.com", "/cross-zone").await?;
        if r.status == 200 && r.backend() == "app-b2" { Ok(()) } else { Err(format!("{r:?}")) }
    })
    .await;
    assert!(answers(gw_port, REQUESTS, "/remote").await.iter().all(|b| b == "app-b2"));
    // The traffic went through the ingress's SNI chain (no termination there).
    let stats = reqwest::get(format!("http://{ingress_admin}/stats?filter=upstream_cx_total"))
        .await
        .expect("ingress /stats")
        .text()
        .await
        .expect("stats");
    let cx: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("cluster.default_b.upstream_cx_total: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(cx > 0, "the ingress cluster default:b (stats name default_b) carried no connection: {stats}");

    // A local instance of b in zone-1 takes all the traffic (priority 0).
    topo.zone("zone-1").api().apply_yaml(&b_sidecar("b-1", b1_in, app_b1.port)).await;
    topo.add_envoy("zone-1", "b-1", XdsMode::Delta).await.wait_ready().await;
    eventually("edge-1 prefers the local app-b1", WAIT, || async {
        let r = traffic::get(gw_port, "example.com", "/local").await?;
        if r.backend() == "app-b1" { Ok(()) } else { Err(format!("{r:?}")) }
    })
    .await;
    assert!(answers(gw_port, REQUESTS, "/local").await.iter().all(|b| b == "app-b1"), "local instances first");

    // Gone locally: zone-2 serves again (failover).
    topo.remove_envoy("b-1");
    topo.zone("zone-1").api().delete("/meshes/default/dataplanes/b-1").await;
    eventually("edge-1 fails over to zone-2", WAIT, || async {
        let r = traffic::get(gw_port, "example.com", "/failover").await?;
        if r.status == 200 && r.backend() == "app-b2" { Ok(()) } else { Err(format!("{r:?}")) }
    })
    .await;
    assert!(answers(gw_port, REQUESTS, "/failover").await.iter().all(|b| b == "app-b2"));

    // The delegated gateway's outbound reaches zone-2's b too.
    topo.zone("zone-1")
        .api()
        .apply_yaml(&format!(
            "type: Dataplane\nmesh: default\nname: kong-01\nnetworking:\n  address: 127.0.0.1\n  gateway: {{type: DELEGATED, tags: {{kuma.io/service: kong}}}}\n  outbound:\n  - port: {kong_out}\n    tags: {{kuma.io/service: b}}\n"
        ))
        .await;
    topo.add_envoy("zone-1", "kong-01", XdsMode::Delta).await.wait_ready().await;
    eventually("kong-01's outbound reaches app-b2", WAIT, || async {
        let r = traffic::get(kong_out, "b", "/delegated").await?;
        if r.status == 200 && r.backend() == "app-b2" { Ok(()) } else { Err(format!("{r:?}")) }
    })
    .await;

    // SIGTERM: the runner deregisters the ingress, and zone-1 forgets it.
    assert!(ingress.sigterm().await.success(), "ingress runner exit");
    topo.zone("zone-2").api().wait_gone("/zoneingresses/ingress-2").await;
    topo.zone("zone-1").api().wait_gone("/zoneingresses/zone-2.ingress-2").await;
    topo.cleanup().await;
}

/// With mesh mTLS off, nothing crosses zones (the ingress routes by SNI,
/// which only mTLS clients send), and the gateway's insight says why
/// instead of a silent 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_mtls_a_service_only_in_another_zone_is_a_warning() {
    let mut topo = Topology::builder("cross-zone-plain")
        .global_spec(GlobalSpec::default())
        .mesh("default")
        .zone("zone-1")
        .zone("zone-2")
        .start()
        .await;
    let (b2_in, ingress_port, gw_port) = (free_port(), free_port(), free_port());
    topo.global().api().apply_yaml(&edge_gateway(gw_port)).await;
    topo.zone("zone-2").api().apply_yaml(&b_sidecar("b-2", b2_in, free_port())).await;
    topo.zone("zone-2")
        .api()
        .apply_yaml(&format!(
            "type: ZoneIngress\nname: ingress-2\nnetworking: {{address: 127.0.0.1, port: {ingress_port}, advertisedAddress: 127.0.0.1, advertisedPort: {ingress_port}}}\n"
        ))
        .await;
    topo.zone("zone-1")
        .api()
        .wait_for("/zoneingresses/zone-2.ingress-2", "zone-2's ingress announcing b", |zi| {
            zi["availableServices"].as_array().is_some_and(|s| !s.is_empty())
        })
        .await;
    topo.zone("zone-1").api().apply_yaml(&traffic::gateway_dataplane("edge-1", "edge")).await;
    topo.add_envoy("zone-1", "edge-1", XdsMode::Delta).await.wait_ready().await;
    let insight = topo
        .zone("zone-1")
        .api()
        .wait_for("/meshes/default/dataplane-insights/edge-1", "a cross-zone warning", |i| {
            i["subscriptions"][0]["status"]["generatorWarnings"]
                .as_array()
                .is_some_and(|w| w.iter().any(|w| w.as_str().is_some_and(|w| w.contains("needs mesh mTLS"))))
        })
        .await;
    let warnings = insight["subscriptions"][0]["status"]["generatorWarnings"].to_string();
    assert!(warnings.contains("zone-2") && warnings.contains("nowhere in this zone"), "{warnings}");
    let r = traffic::get(gw_port, "example.com", "/").await.expect("a reply");
    assert_eq!(r.status, 500, "no cluster for a service only reachable across zones: {r:?}");
    topo.cleanup().await;
}

/// An ingress token admits its ZoneIngress only: not another ingress, not
/// a Dataplane; a Dataplane token admits no ZoneIngress; a malformed
/// request for one is refused with the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_tokens_admit_their_zone_ingress_only() {
    let topo = Topology::builder("cross-zone-tokens")
        .global_spec(GlobalSpec::default())
        .mesh("default")
        .zone("zone-1")
        .start()
        .await;
    let zone = topo.zone("zone-1");
    let ingress = |name: &str| {
        serde_json::json!({"type": "ZoneIngress", "name": name,
            "networking": {"address": "127.0.0.1", "port": 10001, "advertisedAddress": "127.0.0.1", "advertisedPort": 10001}})
    };
    let api = Api::new(zone.api_url(), None);
    // As an operator gets it: meridianctl at the global.
    let token = meridian_tests::Ctl::new()
        .args(["--api-url", topo.global().api().base(), "generate", "ingress-token", "--name", "ingress-1"])
        .run()
        .await
        .ok()
        .stdout
        .trim()
        .to_string();
    let with_ingress = api.with_token(Some(&token));
    assert_eq!(with_ingress.put("/zoneingresses/ingress-2", &ingress("ingress-2")).await.status, 403);
    let dp = traffic::backend_dataplane("b-1", &[(9000, "b")]);
    let dp: serde_json::Value = serde_json::from_str(&dp).expect("json");
    assert_eq!(with_ingress.put("/meshes/default/dataplanes/b-1", &dp).await.status, 403);
    let dp_token = zone.dataplane_token("ingress-1").await.expect("a Dataplane token");
    let r = api.with_token(Some(&dp_token)).put("/zoneingresses/ingress-1", &ingress("ingress-1")).await;
    assert_eq!(r.status, 403, "a Dataplane token of mesh default admits no ZoneIngress: {}", r.text);
    let r = with_ingress.put("/zoneingresses/ingress-1", &ingress("ingress-1")).await;
    assert!(r.status == 201 || r.status == 200, "{}", r.text);

    let global = Api::new(topo.global().api().base(), None);
    let bad = global
        .request(
            reqwest::Method::POST,
            "/tokens/dataplane",
            Some(br#"{"type": "ingress", "name": "ingress-1", "mesh": "default"}"#.to_vec()),
            &[],
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert_eq!(bad.json["invalid_parameters"][0]["field"], "mesh", "{}", bad.text);
    topo.cleanup().await;
}

/// Two ZoneIngresses of zone-2 (ingress-a, ingress-b), each recorded in a
/// ZoneIngressInsight (at zone-2 and, synced, at the global; in the
/// `_overview` and `meridianctl get zone-ingresses`); then ingress-a's
/// runner is SIGKILLed (no deregistration): zone-2's sweeper deletes it once
/// its proxy has been gone for `--dataplane-cleanup-after`, every zone
/// forgets it, and zone-1's gateway keeps reaching zone-2 through ingress-b
/// alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_ingress_is_swept_and_the_other_zone_fails_over_to_the_live_one() {
    let app_b2 = traffic::http_backend("app-b2").await;
    let mut topo = Topology::builder("cross-zone-dead-ingress")
        .global_spec(GlobalSpec::default())
        .mesh("default")
        .zone("zone-1")
        .zone_with("zone-2", &["--dataplane-cleanup-after", "3s"])
        .start()
        .await;
    let (b2_in, port_a, port_b, gw_port) = (free_port(), free_port(), free_port(), free_port());
    topo.global().api().apply_yaml(MTLS_MESH).await;
    topo.global().api().apply_yaml(&edge_gateway(gw_port)).await;
    topo.zone("zone-2").api().apply_yaml(&b_sidecar("b-2", b2_in, app_b2.port)).await;
    topo.add_envoy("zone-2", "b-2", XdsMode::Delta).await.wait_ready().await;
    let (ingress_a, _) = start_ingress(&topo, "zone-2", "ingress-a", port_a).await;
    let (_ingress_b, _) = start_ingress(&topo, "zone-2", "ingress-b", port_b).await;

    // Each ingress's proxy is recorded, at its zone and at the global.
    let online = |i: &serde_json::Value| {
        i["subscriptions"].as_array().is_some_and(|s| s.iter().any(|s| s["disconnectTime"].is_null()))
    };
    for name in ["ingress-a", "ingress-b"] {
        let insight = topo
            .zone("zone-2")
            .api()
            .wait_for(&format!("/zone-ingress-insights/{name}"), "an open subscription", online)
            .await;
        assert!(insight["subscriptions"][0]["controlPlaneInstanceId"].as_str().is_some_and(|i| !i.is_empty()));
        topo.global()
            .api()
            .wait_for(&format!("/zone-ingress-insights/zone-2.{name}"), "the insight synced", online)
            .await;
    }
    let overview = topo.zone("zone-2").api().get("/zoneingresses/_overview").await;
    assert_eq!(overview["total"], 2, "{overview}");
    assert_eq!(overview["items"][0]["type"], "ZoneIngressOverview", "{overview}");
    assert!(online(&overview["items"][0]["zoneIngressInsight"]), "{overview}");
    let one = topo.global().api().get("/zoneingresses+insights/zone-2.ingress-a").await;
    assert_eq!(one["zoneIngress"]["zone"], "zone-2", "{one}");
    let out = topo.global().ctl().with(["get", "zone-ingresses"]).run().await.ok();
    assert!(
        out.stdout.lines().any(|l| l.contains("ingress-a") && l.contains("Online")),
        "get zone-ingresses: {}",
        out.stdout
    );

    // zone-1's gateway reaches b through zone-2's ingresses.
    topo.zone("zone-1").api().apply_yaml(&traffic::gateway_dataplane("edge-1", "edge")).await;
    topo.add_envoy("zone-1", "edge-1", XdsMode::Delta).await.wait_ready().await;
    eventually("edge-1 reaches app-b2 through zone-2's ingresses", WAIT, || async {
        let r = traffic::get(gw_port, "example.com", "/cross-zone").await?;
        if r.status == 200 && r.backend() == "app-b2" { Ok(()) } else { Err(format!("{r:?}")) }
    })
    .await;

    // SIGKILL: nothing deregisters ingress-a; its Envoy dies with the runner.
    ingress_a.kill();
    topo.zone("zone-2").api().wait_gone("/zoneingresses/ingress-a").await;
    topo.global().api().wait_gone("/zoneingresses/zone-2.ingress-a").await;
    topo.zone("zone-1").api().wait_gone("/zoneingresses/zone-2.ingress-a").await;
    assert!(topo.zone("zone-2").api().fetch("/zoneingresses/ingress-b").await.is_ok(), "the connected ingress is kept");
    // Every request now goes through ingress-b (ingress-a is no endpoint).
    eventually("edge-1 reaches app-b2 through ingress-b alone", WAIT, || async {
        for i in 0..REQUESTS {
            let r = traffic::get(gw_port, "example.com", &format!("/after-kill/{i}")).await?;
            if r.status != 200 || r.backend() != "app-b2" {
                return Err(format!("request {i}: {r:?}"));
            }
        }
        Ok(())
    })
    .await;
    let out = topo.global().ctl().with(["get", "zone-ingresses"]).run().await.ok();
    assert!(!out.stdout.contains("ingress-a") && out.stdout.contains("ingress-b"), "{}", out.stdout);
    topo.cleanup().await;
}
