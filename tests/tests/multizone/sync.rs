//! Resources flow both ways: global → every zone, zone → global under the
//! zone's name; two globals on one PostgreSQL; deleting zones.

use std::time::Duration;

use meridian_tests::{
    Backend, Global, GlobalSpec, TestDir, Zone,
    json_api::{CONVERGE, eventually, stat, subscriptions},
    raw_kds,
    resources::{dataplane, gateway, gateway_dataplane, label, listener_port, route},
};
use serde_json::Value;

use crate::{global_and_zones, global_with_mesh, spec_bytes, synced_zone};

const GW: &str = "/meshes/default/meshgateways/gw-1";
const ROUTE: &str = "/meshes/default/meshgatewayroutes/route-1";

fn backend(route: &Value) -> Option<&str> {
    route["conf"]["http"]["rules"][0]["backends"][0]["destination"]["kuma.io/service"].as_str()
}

fn from_global(v: &Value) -> bool {
    label(v, "kuma.io/origin") == Some("global")
}

/// Done when 1: apply, update and delete at the global; both zones follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_resources_follow_to_both_zones() {
    let topo = global_and_zones("follow", GlobalSpec::default(), &["zone-1", "zone-2"]).await;
    let (g, zones) = (topo.global(), [topo.zone("zone-1"), topo.zone("zone-2")]);

    g.api().apply(&gateway("gw-1", 8080)).await;
    g.api().apply(&route("route-1", "gw-1", "backend-a")).await;
    for z in &zones {
        z.api().wait_for(GW, "port 8080", |v| listener_port(v) == Some(8080) && from_global(v)).await;
        z.api().wait_for(ROUTE, "to backend-a", |v| backend(v) == Some("backend-a") && from_global(v)).await;
    }

    g.api().apply(&gateway("gw-1", 9090)).await;
    g.api().apply(&route("route-1", "gw-1", "backend-b")).await;
    for z in &zones {
        z.api().wait_for(GW, "port 9090", |v| listener_port(v) == Some(9090)).await;
        z.api().wait_for(ROUTE, "to backend-b", |v| backend(v) == Some("backend-b")).await;
    }
    // A federated zone does not let users change what the global owns.
    let (status, body) = zones[0].api().put(GW, &gateway("gw-1", 7070)).await;
    assert_eq!(status, 403, "zone accepted a local write to a global resource: {body}");
    assert_eq!(zones[0].api().delete(GW).await.0, 403, "zone deleted a global resource");

    assert_eq!(g.api().delete(ROUTE).await.0, 200);
    assert_eq!(g.api().delete(GW).await.0, 200);
    for z in &zones {
        z.api().wait_gone(ROUTE).await;
        z.api().wait_gone(GW).await;
        // The mesh itself was not touched.
        assert!(z.api().find("/meshes/default").await.expect("zone API").is_some());
    }
}

fn address(dp: &Value) -> Option<&str> {
    dp["networking"]["address"].as_str()
}

fn owned_by<'a>(zone: &'a str, addr: &'a str) -> impl Fn(&Value) -> bool + 'a {
    move |v| {
        label(v, "kuma.io/zone") == Some(zone)
            && label(v, "kuma.io/origin") == Some("zone")
            && label(v, "kuma.io/display-name").is_some()
            && address(v) == Some(addr)
    }
}

/// Done when 2: a zone's Dataplane appears at the global under its zone;
/// the same name in two zones gives two entries; a zone can only touch its
/// own (through KDS), and the global API refuses Dataplanes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_dataplanes_reach_the_global_under_their_zone() {
    let dir = TestDir::new("upward");
    let g = global_with_mesh(&dir, "g", GlobalSpec::default()).await;
    let token_1 = g.zone_token("zone-1").await;
    let z1 = Zone::start(&dir, "zone-1", "zone-1", &g, Some(&token_1)).await;
    let z2 = synced_zone(&dir, &g, "zone-2").await;
    z1.api().wait_for("/meshes/default", "synced", |_| true).await;

    z1.api().apply(&dataplane("dp-1", "10.0.0.1", "web")).await;
    z2.api().apply(&dataplane("dp-1", "10.0.0.2", "web")).await;
    let dp1 =
        g.api().wait_for("/meshes/default/dataplanes/zone-1.dp-1", "from zone-1", owned_by("zone-1", "10.0.0.1")).await;
    assert_eq!(label(&dp1, "kuma.io/display-name"), Some("dp-1"));
    g.api().wait_for("/meshes/default/dataplanes/zone-2.dp-1", "from zone-2", owned_by("zone-2", "10.0.0.2")).await;
    let names = g.api().names("/meshes/default/dataplanes").await.expect("list");
    assert_eq!(names, ["zone-1.dp-1", "zone-2.dp-1"]);

    // The global API refuses Dataplanes: no create, change or delete.
    let (s, body) =
        g.api().put("/meshes/default/dataplanes/zone-2.dp-1", &dataplane("zone-2.dp-1", "10.9.9.9", "web")).await;
    assert_eq!(s, 403, "{body}");
    assert_eq!(g.api().put("/meshes/default/dataplanes/dp-9", &dataplane("dp-9", "10.9.9.9", "web")).await.0, 403);
    assert_eq!(g.api().delete("/meshes/default/dataplanes/zone-2.dp-1").await.0, 403);

    // Through KDS, zone-1 can only touch its own. With the real zone-1 gone,
    // a client holding zone-1's token names zone-2's entry, claims zone-2 in
    // its labels and removes "dp-1": only zone-1's resources change.
    z1.kill();
    g.api().wait_online("zone-1", false, CONVERGE).await;
    let raw = raw_kds::RawKds::connect(&g.kds_url(), g.ca(), "zone-1", Some(&token_1)).await;
    let (tx, mut rx) = raw.zone_to_global().await.expect("zone-to-global stream");
    // The global subscribes to each type it takes from zones, in one go.
    let mut initial = Vec::new();
    while initial.len() < 4 {
        initial.push(raw_kds::next(&mut rx, CONVERGE).await);
    }
    let first = initial.into_iter().find(|r| r.type_url == "Dataplane").expect("a Dataplane subscription");
    assert!(first.initial_resource_versions.contains_key("dp-1.default"), "the global resumes with what zone-1 holds");
    let claim = [("kuma.io/zone", "zone-2"), ("kuma.io/origin", "zone")];
    let dp = |name: &str| {
        let spec = spec_bytes(&dataplane(name, "10.6.6.6", "web"));
        raw_kds::resource(
            "default",
            name,
            "v-evil",
            raw_kds::envelope("Dataplane", "default", name, "v-evil", &claim, spec),
        )
    };
    let send = raw_kds::DeltaDiscoveryResponse {
        type_url: "Dataplane".into(),
        resources: vec![dp("zone-2.dp-1"), dp("dp-1")],
        nonce: "evil-1".into(),
        ..Default::default()
    };
    tx.send(send).await.expect("send");
    let ack = raw_kds::next(&mut rx, CONVERGE).await;
    assert_eq!((ack.response_nonce.as_str(), ack.error_detail.as_ref()), ("evil-1", None));
    g.api()
        .wait_for("/meshes/default/dataplanes/zone-1.dp-1", "changed by zone-1", owned_by("zone-1", "10.6.6.6"))
        .await;
    g.api()
        .wait_for(
            "/meshes/default/dataplanes/zone-1.zone-2.dp-1",
            "stored under zone-1",
            owned_by("zone-1", "10.6.6.6"),
        )
        .await;
    let removal = raw_kds::DeltaDiscoveryResponse {
        type_url: "Dataplane".into(),
        removed_resources: vec!["dp-1.default".into(), "zone-2.dp-1.default".into()],
        nonce: "evil-2".into(),
        ..Default::default()
    };
    tx.send(removal).await.expect("send");
    let ack = raw_kds::next(&mut rx, CONVERGE).await;
    assert_eq!((ack.response_nonce.as_str(), ack.error_detail.as_ref()), ("evil-2", None));
    g.api().wait_gone("/meshes/default/dataplanes/zone-1.dp-1").await;
    g.api().wait_gone("/meshes/default/dataplanes/zone-1.zone-2.dp-1").await;
    let untouched = g.api().get("/meshes/default/dataplanes/zone-2.dp-1").await;
    assert!(owned_by("zone-2", "10.0.0.2")(&untouched), "zone-2's Dataplane changed: {untouched}");
}

/// Done when 7: two globals on one PostgreSQL, a zone on each; a write
/// through either reaches both zones, and each sees the other's zone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_globals_on_one_postgres_reach_every_zone() {
    let dir = TestDir::new("two-globals");
    let ga = global_with_mesh(&dir, "global-a", GlobalSpec::on(Backend::Postgres)).await;
    let shared = GlobalSpec { shared_store: Some(ga.store_url().to_string()), ..GlobalSpec::default() };
    let gb = Global::start(&dir, "global-b", shared).await;
    let z1 = synced_zone(&dir, &ga, "zone-1").await;
    let z2 = synced_zone(&dir, &gb, "zone-2").await;

    ga.api().apply(&gateway("gw-a", 8080)).await;
    gb.api().apply(&gateway("gw-b", 8081)).await;
    for z in [&z1, &z2] {
        z.api()
            .wait_for("/meshes/default/meshgateways/gw-a", "written via A", |v| listener_port(v) == Some(8080))
            .await;
        z.api()
            .wait_for("/meshes/default/meshgateways/gw-b", "written via B", |v| listener_port(v) == Some(8081))
            .await;
    }
    gb.api().apply(&gateway("gw-a", 9090)).await;
    assert_eq!(ga.api().delete("/meshes/default/meshgateways/gw-b").await.0, 200);
    for z in [&z1, &z2] {
        z.api()
            .wait_for("/meshes/default/meshgateways/gw-a", "updated via B", |v| listener_port(v) == Some(9090))
            .await;
        z.api().wait_gone("/meshes/default/meshgateways/gw-b").await;
    }

    z1.api().apply(&dataplane("dp-1", "10.0.0.1", "web")).await;
    z2.api().apply(&dataplane("dp-2", "10.0.0.2", "web")).await;
    for g in [&ga, &gb] {
        g.api().wait_for("/meshes/default/dataplanes/zone-1.dp-1", "from zone-1", owned_by("zone-1", "10.0.0.1")).await;
        g.api().wait_for("/meshes/default/dataplanes/zone-2.dp-2", "from zone-2", owned_by("zone-2", "10.0.0.2")).await;
        g.api().wait_online("zone-1", true, CONVERGE).await;
        g.api().wait_online("zone-2", true, CONVERGE).await;
    }
}

/// Deleting a zone: refused (403) while it is online; once it is offline,
/// its Dataplanes go with it and other zones' stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_deletion_is_refused_online_and_cascades_offline() {
    let topo = global_and_zones("delete-zone", GlobalSpec::default(), &["zone-1", "zone-2"]).await;
    let (g, z1, z2) = (topo.global(), topo.zone("zone-1"), topo.zone("zone-2"));
    z1.api().apply(&dataplane("dp-1", "10.0.0.1", "web")).await;
    z2.api().apply(&dataplane("dp-1", "10.0.0.2", "web")).await;
    g.api().wait_for("/meshes/default/dataplanes/zone-1.dp-1", "from zone-1", |_| true).await;
    g.api().wait_for("/meshes/default/dataplanes/zone-2.dp-1", "from zone-2", |_| true).await;
    g.api().wait_online("zone-1", true, CONVERGE).await;

    let (status, body) = g.api().delete("/zones/zone-1").await;
    assert_eq!(status, 403, "deleting an online zone: {body}");
    assert!(body.to_string().contains("online"), "the refusal says why: {body}");

    z1.kill();
    g.api().wait_online("zone-1", false, Duration::from_secs(25)).await;
    let (status, body) = g.api().delete("/zones/zone-1").await;
    assert_eq!(status, 200, "deleting an offline zone: {body}");
    assert!(g.api().find("/zones/zone-1").await.expect("API").is_none());
    assert_eq!(g.api().names("/meshes/default/dataplanes").await.expect("list"), ["zone-2.dp-1"]);
    assert!(g.api().zone_overview("zone-1").await.is_err(), "zone-1 still in the overview");
    // Its ZoneInsight (status, outside the change log) went with it; zone-2's stayed.
    assert!(g.api().find("/zoneinsights/zone-1").await.expect("API").is_none(), "zone-1's insight remains");
    assert!(g.api().find("/zoneinsights/zone-2").await.expect("API").is_some(), "zone-2's insight is gone");
}

/// REFERENCE §4: a zone's ZoneIngress goes up to the global and is
/// re-broadcast to the other zones (never back to its own, and never sent
/// up again by the zones that received it). KDS in plaintext (grpc://) here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_ingress_is_rebroadcast_to_other_zones() {
    let plaintext = GlobalSpec { plaintext_kds: true, ..GlobalSpec::default() };
    let topo = global_and_zones("ingress", plaintext, &["zone-1", "zone-2"]).await;
    let (g, z1, z2) = (topo.global(), topo.zone("zone-1"), topo.zone("zone-2"));
    assert!(g.kds_url().starts_with("grpc://") && g.ca().is_none());
    let ingress = serde_json::json!({
        "type": "ZoneIngress", "name": "ingress-1",
        "networking": {"address": "10.0.0.5", "port": 10001, "advertisedAddress": "192.0.2.1", "advertisedPort": 10001}
    });
    z1.api().apply(&ingress).await;

    g.api()
        .wait_for("/zoneingresses/zone-1.ingress-1", "from zone-1", |v| label(v, "kuma.io/zone") == Some("zone-1"))
        .await;
    z2.api()
        .wait_for("/zoneingresses/zone-1.ingress-1", "relayed", |v| label(v, "kuma.io/zone") == Some("zone-1"))
        .await;
    // Settle: zone-2 acknowledged it and had the chance to (wrongly) send it up.
    eventually("zone-2's upward stream is idle", CONVERGE, || async {
        let ov = g.api().zone_overview("zone-2").await?;
        let last = subscriptions(&ov).pop().ok_or("no subscription")?;
        if stat(&last, "ZoneIngress", "responsesAcknowledged") >= 2 { Ok(()) } else { Err(last["status"].to_string()) }
    })
    .await;
    assert_eq!(g.api().names("/zoneingresses").await.expect("list"), ["zone-1.ingress-1"]);
    assert_eq!(z1.api().names("/zoneingresses").await.expect("list"), ["ingress-1"], "its own, not relayed back");

    assert_eq!(z1.api().delete("/zoneingresses/ingress-1").await.0, 200);
    g.api().wait_gone("/zoneingresses/zone-1.ingress-1").await;
    z2.api().wait_gone("/zoneingresses/zone-1.ingress-1").await;
}

/// The zone serves Envoy bootstraps for its registered Dataplanes over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_serves_bootstrap_for_registered_dataplanes() {
    let topo = global_and_zones("bootstrap", GlobalSpec::default(), &["zone-1"]).await;
    let z = topo.zone("zone-1");
    z.api().apply(&gateway_dataplane("gw-dp", "127.0.0.1", "edge-gateway")).await;
    let http = reqwest::Client::new();
    let url = |name: &str, query: &str| format!("{}/meshes/default/dataplanes/{name}/_bootstrap{query}", z.api_url());
    let resp = http.get(url("gw-dp", "")).send().await.expect("GET _bootstrap");
    assert_eq!(resp.status().as_u16(), 200);
    let yaml = resp.text().await.expect("body");
    assert!(yaml.contains("default.gw-dp"), "node id names the Dataplane:\n{yaml}");
    assert!(yaml.contains("DELTA_GRPC"), "delta ADS by default:\n{yaml}");
    assert!(yaml.contains("UpstreamTlsContext"), "xDS over TLS by default:\n{yaml}");
    let ca = std::fs::read_to_string(z.xds_ca().expect("TLS zone")).expect("the zone's xDS CA");
    let first_line = ca.lines().nth(1).expect("PEM body");
    assert!(yaml.contains(first_line), "the bootstrap trusts the zone's CA:\n{yaml}");
    let sotw = http.get(url("gw-dp", "?xdsMode=sotw")).send().await.expect("GET").text().await.expect("body");
    assert!(sotw.contains("api_type: GRPC"), "{sotw}");
    let missing = http.get(url("nope", "")).send().await.expect("GET");
    assert_eq!(missing.status().as_u16(), 404);
    let bad = http.get(url("gw-dp", "?xdsMode=carrier-pigeon")).send().await.expect("GET");
    assert_eq!(bad.status().as_u16(), 400);
}

/// Secrets flow down with their data (zones need it for TLS listeners) and
/// follow updates and deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_zones_with_their_data() {
    use base64::{Engine, engine::general_purpose::STANDARD};
    const SECRET: &str = "/meshes/default/secrets/tls-1";
    let topo = global_and_zones("secrets", GlobalSpec::default(), &["zone-1"]).await;
    let (g, z) = (topo.global(), topo.zone("zone-1"));
    let secret = |data: &str| serde_json::json!({"type": "Secret", "mesh": "default", "name": "tls-1", "data": STANDARD.encode(data)});
    g.api().apply(&secret("first")).await;
    let first = STANDARD.encode("first");
    z.api().wait_for(SECRET, "the first data", |v| v["data"].as_str() == Some(first.as_str())).await;
    g.api().apply(&secret("second")).await;
    let second = STANDARD.encode("second");
    z.api().wait_for(SECRET, "the second data", |v| v["data"].as_str() == Some(second.as_str())).await;
    // Lists never carry the data.
    let list = z.api().get("/meshes/default/secrets").await;
    assert!(list["items"][0].get("data").is_none(), "secret data in a list: {list}");
    assert_eq!(g.api().delete(SECRET).await.0, 200);
    z.api().wait_gone(SECRET).await;

    // The same traffic shows in the global's Prometheus figures.
    let metrics =
        reqwest::get(format!("{}/metrics", g.api_url())).await.expect("GET /metrics").text().await.expect("body");
    let line = |needle: &str| {
        metrics.lines().find(|l| l.starts_with(needle) && l.contains("resource_type=\"Secret\"")).map(str::to_string)
    };
    let sent = line("meridian_kds_events_total{direction=\"global_to_zone\"").expect("Secret events in /metrics");
    assert!(!sent.ends_with(" 0"), "{sent}");
    assert!(metrics.lines().any(|l| l == "meridian_kds_zones_connected 1"), "{metrics}");
    // Issue 8: the time from each change to the zone's ACK, and the zone's
    // own figures for the same stream, in its registry.
    let has = |url: String, needle: &'static str| async move {
        let text = reqwest::get(url).await.map_err(|e| e.to_string())?.text().await.map_err(|e| e.to_string())?;
        if text.lines().any(|l| l.starts_with(needle) && l.contains("resource_type=\"Secret\"")) {
            Ok(())
        } else {
            Err(text)
        }
    };
    eventually("the global's change-to-ACK histogram", CONVERGE, || {
        has(
            format!("{}/metrics", g.api_url()),
            "meridian_sync_change_to_ack_seconds_count{direction=\"global_to_zone\"",
        )
    })
    .await;
    eventually("the zone's KDS figures", CONVERGE, || {
        has(format!("{}/metrics", z.api_url()), "meridian_kds_events_total{direction=\"global_to_zone\"")
    })
    .await;
}
