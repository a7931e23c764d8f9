//! Changes reach a running Envoy without restarting it: a route update,
//! endpoints coming, going and turning unhealthy; and a zone restart leaves
//! what Envoy serves unchanged.

use std::collections::BTreeSet;

use serde_json::json;

use meridian_tests::{
    Envoy, Topology, WAIT, XdsMode, eventually,
    process::envoy_binary,
    traffic::{self, free_port, get},
};

fn gateway(port: u16, extra_rule: &str) -> String {
    format!(
        r#"
type: MeshGateway
mesh: default
name: gw
selectors: [{{match: {{kuma.io/service: gw}}}}]
conf: {{listeners: [{{port: {port}, protocol: HTTP}}]}}
---
type: MeshGatewayRoute
mesh: default
name: app
selectors: [{{match: {{kuma.io/service: gw}}}}]
conf:
  http:
    rules:
    - matches: [{{path: {{match: PREFIX, value: /}}}}]
      backends: [{{destination: {{kuma.io/service: app}}}}]
{extra_rule}
"#
    )
}

fn rule_to_b(prefix: &str) -> String {
    format!(
        "    - matches: [{{path: {{match: PREFIX, value: {prefix}}}}}]\n      backends: [{{destination: {{kuma.io/service: b-svc}}}}]\n"
    )
}

fn app_dataplane(name: &str, port: u16, ready: bool) -> String {
    json!({"type": "Dataplane", "mesh": "default", "name": name, "networking": {"address": "127.0.0.1",
        "inbound": [{"port": port, "tags": {"kuma.io/service": "app"}, "health": {"ready": ready}}]}})
    .to_string()
}

/// The backends that answered 30 requests for `/`.
async fn answering(port: u16) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for _ in 0..30 {
        out.insert(get(port, "h", "/").await.map(|r| r.backend()).unwrap_or_else(|e| e));
    }
    out
}

async fn until_answering(port: u16, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    eventually(&format!("backends {want:?}"), WAIT, || async {
        let got = answering(port).await;
        if got == want { Ok(()) } else { Err(format!("{got:?}")) }
    })
    .await;
}

async fn until_path(port: u16, path: &str, want: &str) {
    eventually(&format!("{path} reaches {want}"), WAIT, || async {
        let b = get(port, "h", path).await.map(|r| r.backend())?;
        if b == want { Ok(()) } else { Err(b) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_and_endpoint_changes_and_zone_restart() {
    envoy_binary();
    let a1 = traffic::http_backend("a1").await;
    let a2 = traffic::http_backend("a2").await;
    let b = traffic::http_backend("b").await;
    let topo = Topology::builder("e2e-dynamics").zone("zone").start().await;
    let zone = topo.zone("zone");
    zone.api().apply_yaml(traffic::MESH).await;
    zone.api().apply_yaml(&app_dataplane("app-1", a1.port, true)).await;
    zone.api().apply_yaml(&traffic::backend_dataplane("b-1", &[(b.port, "b-svc")])).await;
    let port = free_port();
    zone.api().apply_yaml(&gateway(port, "")).await;
    zone.api().apply_yaml(&traffic::gateway_dataplane("gw-1", "gw")).await;
    let envoy = Envoy::start(topo.dir(), zone, "gw-1", XdsMode::Delta).await;
    envoy.wait_ready().await;
    until_answering(port, &["a1"]).await;

    // A route update.
    zone.api().apply_yaml(&gateway(port, &rule_to_b("/v2"))).await;
    until_path(port, "/v2/x", "b").await;
    // A new endpoint, then an unhealthy one, then a removed one.
    zone.api().apply_yaml(&app_dataplane("app-2", a2.port, true)).await;
    until_answering(port, &["a1", "a2"]).await;
    zone.api().apply_yaml(&app_dataplane("app-1", a1.port, false)).await;
    until_answering(port, &["a2"]).await;
    zone.api().apply_yaml(&app_dataplane("app-1", a1.port, true)).await;
    assert_eq!(zone.api().delete("/meshes/default/dataplanes/app-2").await.0, 200);
    until_answering(port, &["a1"]).await;

    // The insight shows ACKs for every type and no NACK.
    let insight = eventually("DataplaneInsight with ACKs", WAIT, || async {
        let i = zone.api().fetch("/meshes/default/dataplane-insights/gw-1").await?;
        let acked = &i["subscriptions"][0]["status"]["ackedVersions"];
        if ["cds", "eds", "lds", "rds"].iter().all(|t| acked.get(t).is_some()) { Ok(i) } else { Err(i.to_string()) }
    })
    .await;
    let first = insight["subscriptions"][0].clone();
    assert!(first["status"].get("lastNackReason").is_none(), "{insight}");
    assert_eq!(first["version"]["envoy"]["version"], "1.40.0", "{insight}");

    // Restart the zone: Envoy keeps serving meanwhile, reconnects, and
    // serves the same afterwards; later changes still arrive.
    let _ = zone.sigterm().await;
    until_answering(port, &["a1"]).await;
    until_path(port, "/v2/x", "b").await;
    zone.restart().await; // the same xDS port and data directory
    let old_instance = first["controlPlaneInstanceId"].clone();
    eventually("Envoy reconnected to the new zone", WAIT, || async {
        let i = zone.api().fetch("/meshes/default/dataplane-insights/gw-1").await?;
        let subs = i["subscriptions"].as_array().cloned().unwrap_or_default();
        let live =
            subs.iter().any(|s| s["controlPlaneInstanceId"] != old_instance && s.get("disconnectTime").is_none());
        if live { Ok(()) } else { Err(i.to_string()) }
    })
    .await;
    until_answering(port, &["a1"]).await;
    until_path(port, "/v2/x", "b").await;
    zone.api().apply_yaml(&gateway(port, &rule_to_b("/v3"))).await;
    until_path(port, "/v3/x", "b").await;
    assert_eq!(get(port, "h", "/v2/x").await.map(|r| r.backend()).unwrap_or_default(), "a1", "the /v2 rule is gone");
    drop(envoy);
    let _ = zone.sigterm().await;
}
