//! Point 8: a configuration Envoy rejects never freezes the rest. A real
//! Envoy is given a gateway whose first listener's port is already bound by
//! another process on the host (every check Meridian can make passes: only
//! the host knows), so Envoy NACKs that listener. Later changes on the
//! other listener still reach Envoy and carry traffic; the rejected
//! listener is named in the Dataplane's insight with Envoy's reason, and
//! leaves the insight once Envoy accepts a later version of it.

use meridian_tests::{
    Envoy, Topology, WAIT, XdsMode, eventually,
    traffic::{self, free_port, get},
};
use serde_json::Value;

fn gateway(taken: u16, free: u16) -> String {
    format!(
        r#"
type: MeshGateway
mesh: default
name: gw
selectors: [{{match: {{kuma.io/service: gw}}}}]
conf:
  listeners:
  - {{port: {taken}, protocol: HTTP}}
  - {{port: {free}, protocol: HTTP}}
"#
    )
}

fn route(name: &str, path: &str) -> String {
    format!(
        r#"
type: MeshGatewayRoute
mesh: default
name: {name}
selectors: [{{match: {{kuma.io/service: gw}}}}]
conf:
  http:
    rules:
    - matches: [{{path: {{match: PREFIX, value: {path}}}}}]
      backends: [{{destination: {{kuma.io/service: echo}}}}]
"#
    )
}

/// The rejected resources of the gateway's open subscription.
fn rejected(insight: &Value) -> Vec<Value> {
    insight["subscriptions"]
        .as_array()
        .and_then(|subs| subs.iter().find(|s| s["disconnectTime"].is_null()))
        .and_then(|s| s["status"]["rejectedResources"].as_array().cloned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_listener_does_not_freeze_the_rest() {
    for mode in [XdsMode::Delta, XdsMode::Sotw] {
        let echo = traffic::http_backend("echo").await;
        let topo = Topology::builder(&format!("nack-{mode:?}").to_lowercase()).zone("zone").start().await;
        let zone = topo.zone("zone");
        zone.api().apply_yaml(traffic::MESH).await;
        zone.api().apply_yaml(&traffic::backend_dataplane("echo-1", &[(echo.port, "echo")])).await;
        // Another process holds the first listener's port.
        let squatter = std::net::TcpListener::bind(("0.0.0.0", 0)).expect("bind");
        let taken = squatter.local_addr().expect("addr").port();
        let free = free_port();
        zone.api().apply_yaml(&gateway(taken, free)).await;
        zone.api().apply_yaml(&route("first", "/one")).await;
        zone.api().apply_yaml(&traffic::gateway_dataplane("gw-1", "gw")).await;
        let envoy = Envoy::start(topo.dir(), zone, "gw-1", mode).await;

        // The free listener serves; the taken one is reported as rejected.
        eventually("the free listener serves", WAIT, || async {
            let r = get(free, "app.example.com", "/one").await?;
            if r.status == 200 { Ok(()) } else { Err(format!("{r:?}")) }
        })
        .await;
        let reported = eventually("the rejected listener in the DataplaneInsight", WAIT, || async {
            let i = zone.api().fetch("/meshes/default/dataplane-insights/gw-1").await?;
            let r = rejected(&i);
            let hit = r.iter().find(|r| {
                r["type"] == "lds"
                    && r["name"].as_str().is_some_and(|n| n.contains(&taken.to_string()))
                    && r["reason"].as_str().is_some_and(|t| !t.is_empty())
            });
            hit.cloned().ok_or_else(|| i.to_string())
        })
        .await;
        assert!(reported["version"].as_str().is_some_and(|v| !v.is_empty()), "{reported}");
        assert!(reported["time"].is_string(), "{reported}");

        // The next change reaches Envoy though the rejected listener is
        // still in place: a new route on the free listener carries traffic.
        zone.api().apply_yaml(&route("second", "/two")).await;
        eventually("a later route reaches Envoy", WAIT, || async {
            let r = get(free, "app.example.com", "/two").await?;
            if r.status == 200 { Ok(()) } else { Err(format!("{r:?}")) }
        })
        .await;

        // The port is freed and the gateway changed: Envoy accepts the
        // listener and the insight no longer reports it.
        drop(squatter);
        zone.api().apply_yaml(&route("third", "/three")).await;
        let moved = free_port();
        zone.api().apply_yaml(&gateway(moved, free)).await;
        eventually("the moved listener serves", WAIT, || async {
            let r = get(moved, "app.example.com", "/three").await?;
            if r.status == 200 { Ok(()) } else { Err(format!("{r:?}")) }
        })
        .await;
        eventually("no rejected resource left", WAIT, || async {
            let i = zone.api().fetch("/meshes/default/dataplane-insights/gw-1").await?;
            let r = rejected(&i);
            if r.iter().any(|r| r["type"] == "lds" && r["name"].as_str().is_some_and(|n| n.contains(&free.to_string())))
            {
                return Err(format!("the serving listener is reported rejected: {i}"));
            }
            if r.is_empty() { Ok(()) } else { Err(i.to_string()) }
        })
        .await;
        drop(envoy);
        topo.cleanup().await;
    }
}
