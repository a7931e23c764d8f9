//! Issue 14: Meridian's images under testcontainers, checking what process
//! tests cannot: a zone cut from the network, a global container killed and
//! restarted on PostgreSQL, a zone container restarted under its gateway.
//!
//! The images come from `deploy/images/build.sh --profile debug --no-cargo`
//! (the debug binaries the suite built; the Debian base and PostgreSQL
//! images are built once and kept). No Docker engine: the tests fail saying so.
//!
//! Run: `cargo build --workspace --bins && cargo nextest run -p meridian-tests --test containers`

use std::time::Duration;

use meridian_tests::{
    containers::{Lab, Node, docker, ensure_images},
    eventually,
};
use serde_json::{Value, json};

/// The bounds: offline within 15 s of the cut, converged within 5 s
/// of reconnecting.
const OFFLINE_WITHIN: Duration = Duration::from_secs(15);
const CONVERGE_WITHIN: Duration = Duration::from_secs(5);
/// Anything else (a restart, a first connection).
const WAIT: Duration = Duration::from_secs(60);

fn gateway(name: &str) -> Value {
    json!({"type": "MeshGateway", "mesh": "default", "name": name,
        "selectors": [{"match": {"kuma.io/service": "edge-gateway"}}],
        "conf": {"listeners": [{"port": 8080, "protocol": "HTTP", "hostname": format!("{name}.example.com"),
            "tags": {"port": "http/8080"}}]}})
}

async fn apply(node: &Node, path: &str, body: &Value) {
    let (status, text) = node.put(path, body).await;
    assert!(status == 200 || status == 201, "PUT {path}: {status} {text}");
}

/// Names of the MeshGateways a node's API lists.
async fn gateway_names(node: &Node) -> Result<Vec<String>, String> {
    let (status, v) = node.api().await.try_get("/meshes/default/meshgateways?size=1000").await?;
    if status != 200 {
        return Err(format!("{status} {v}"));
    }
    let mut names: Vec<String> = v["items"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["name"].as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    names.sort();
    Ok(names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_cut_from_the_network_goes_offline_and_converges_when_reconnected() {
    let tag = ensure_images();
    let lab = Lab::new("cut");
    let global = lab.global(&tag, None).await;
    let zone = lab.zone(&tag, "zone-1", &global).await;
    let gapi = global.api().await;
    gapi.wait_online("zone-1", true, WAIT).await;

    docker(&["network", "disconnect", lab.network(), zone.container.id()]);
    gapi.wait_online("zone-1", false, OFFLINE_WITHIN).await;

    // A change made while the zone is away reaches it once it is back.
    apply(&global, "/meshes/default/meshgateways/while-cut", &gateway("while-cut")).await;
    docker(&["network", "connect", lab.network(), zone.container.id()]);
    gapi.wait_online("zone-1", true, CONVERGE_WITHIN).await;
    // Asked inside the zone's container: Docker drops the published port
    // of a container taken off its network.
    eventually("the zone holds what the global changed during the cut", CONVERGE_WITHIN, || async {
        let listed = zone
            .exec(&["meridianctl", "--api-url", "http://127.0.0.1:5682", "get", "meshgateways", "-o", "json"])
            .await;
        if listed.contains("\"while-cut\"") { Ok(()) } else { Err(listed) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_killed_and_restarted_on_postgres_keeps_every_resource_and_zones_reconnect() {
    let tag = ensure_images();
    let lab = Lab::new("kill");
    let pg = lab.postgres().await;
    let mut global = lab.global(&tag, Some(&pg)).await;
    let zones = [lab.zone(&tag, "zone-1", &global).await, lab.zone(&tag, "zone-2", &global).await];
    for i in 0..5 {
        apply(&global, &format!("/meshes/default/meshgateways/gw-{i}"), &gateway(&format!("gw-{i}"))).await;
    }
    for z in ["zone-1", "zone-2"] {
        global.api().await.wait_online(z, true, WAIT).await;
    }
    let before = gateway_names(&global).await.expect("list");
    assert_eq!(before.len(), 5, "{before:?}");

    docker(&["kill", "--signal", "KILL", global.container.id()]);
    global.container.start().await.expect("start the global again");
    global.refresh_port().await;
    let after = eventually("the restarted global answers", WAIT, || gateway_names(&global)).await;
    assert_eq!(after, before, "every resource survives a SIGKILL on PostgreSQL");
    for z in ["zone-1", "zone-2"] {
        global.api().await.wait_online(z, true, WAIT).await;
    }
    // The zones still follow the restarted global.
    apply(&global, "/meshes/default/meshgateways/after-restart", &gateway("after-restart")).await;
    for zone in &zones {
        eventually(&format!("{} receives a change made after the restart", zone.name), WAIT, || async {
            let names = gateway_names(zone).await?;
            if names.iter().any(|n| n == "after-restart") { Ok(()) } else { Err(format!("{names:?}")) }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_container_restarted_keeps_serving_its_gateway() {
    let tag = ensure_images();
    let lab = Lab::new("restart");
    let global = lab.global(&tag, None).await;
    let mut zone = lab.zone(&tag, "zone-1", &global).await;
    apply(&global, "/meshes/default/meshgateways/edge", &gateway("edge")).await;
    apply(
        &global,
        "/meshes/default/meshgatewayroutes/edge-route",
        &json!({"type": "MeshGatewayRoute", "mesh": "default", "name": "edge-route",
            "selectors": [{"match": {"kuma.io/service": "edge-gateway", "port": "http/8080"}}],
            "conf": {"http": {"rules": [{"matches": [{"path": {"match": "PREFIX", "value": "/"}}],
                "backends": [{"destination": {"kuma.io/service": "echo"}}]}]}}}),
    )
    .await;
    let echo = lab.echo("zone-1").await;
    apply(
        &zone,
        "/meshes/default/dataplanes/echo-1",
        &json!({"type": "Dataplane", "mesh": "default", "name": "echo-1",
            "networking": {"address": echo.ip(), "inbound": [{"port": 5000, "tags": {"kuma.io/service": "echo"}}]}}),
    )
    .await;
    eventually("the zone holds the route", WAIT, || async {
        let names = gateway_names(&zone).await?;
        if names.iter().any(|n| n == "edge") { Ok(()) } else { Err(format!("{names:?}")) }
    })
    .await;
    let gw = lab.gateway(&tag, &global, &zone, "edge-1", "edge-gateway", 8080).await;
    let url = format!("http://127.0.0.1:{}/hello", gw.host_port(8080).await);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(3)).build().expect("HTTP client");
    let get = || async {
        let r = http.get(&url).header("host", "edge.example.com").send().await.map_err(|e| e.to_string())?;
        let body = r.text().await.map_err(|e| e.to_string())?;
        if body == "echo from zone-1: GET /hello\n" { Ok(()) } else { Err(body) }
    };
    eventually("a request through the gateway reaches the echo backend", WAIT, get).await;

    zone.container.stop().await.expect("stop the zone");
    get().await.expect("the gateway serves what it holds while its zone is down");
    zone.container.start().await.expect("start the zone again");
    zone.refresh_port().await;
    eventually("the restarted zone is ready", WAIT, || async {
        zone.api()
            .await
            .try_get("/ready")
            .await
            .and_then(|(s, v)| if s == 200 { Ok(()) } else { Err(format!("{s} {v}")) })
    })
    .await;
    global.api().await.wait_online("zone-1", true, WAIT).await;
    // The gateway follows the restarted zone: a new listener host name
    // applied at the global reaches Envoy through it.
    apply(
        &global,
        "/meshes/default/meshgateways/edge",
        &json!({"type": "MeshGateway", "mesh": "default", "name": "edge",
            "selectors": [{"match": {"kuma.io/service": "edge-gateway"}}],
            "conf": {"listeners": [{"port": 8080, "protocol": "HTTP", "hostname": "after.example.com",
                "tags": {"port": "http/8080"}}]}}),
    )
    .await;
    eventually("a change after the zone's restart reaches the gateway", WAIT, || async {
        let r = http.get(&url).header("host", "after.example.com").send().await.map_err(|e| e.to_string())?;
        let body = r.text().await.map_err(|e| e.to_string())?;
        if body == "echo from zone-1: GET /hello\n" { Ok(()) } else { Err(body) }
    })
    .await;
}
