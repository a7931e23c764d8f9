//! One invalid resource is NACKed alone, both directions; and a client built
//! only from the wire description subscribes and follows MeshGateways.

use std::collections::BTreeMap;

use meridian_core::Manager;
use meridian_store::{Store, WriteOp};
use meridian_sync_proto::universal;
use meridian_tests::{
    Backend, GlobalSpec, TestDir,
    json_api::{CONVERGE, eventually, last_nack_reason, stat, subscriptions},
    raw_kds::{self, DeltaDiscoveryRequest, DeltaDiscoveryResponse, RawKds},
    resources::{dataplane, gateway, gateway_dataplane, listener_port},
};
use serde_json::json;

use crate::{global_and_zones, global_with_mesh, spec_bytes};

/// Done when 5a (and 8, upwards): a client with a valid zone token sends one
/// invalid Dataplane between valid ones; the global stores the valid ones
/// and NACKs naming only the bad one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_dataplane_from_a_zone_is_nacked_alone() {
    let dir = TestDir::new("nack-up");
    let g = global_with_mesh(&dir, "g", GlobalSpec::default()).await;
    let token = g.zone_token("zone-1").await;
    let raw = RawKds::connect(&g.kds_url(), g.ca(), "zone-1", Some(&token)).await;
    let (tx, mut rx) = raw.zone_to_global().await.expect("zone-to-global stream");
    // The global subscribes to each type it takes from zones.
    let mut asked = Vec::new();
    while asked.len() < 4 {
        asked.push(raw_kds::next(&mut rx, CONVERGE).await.type_url);
    }
    asked.sort();
    assert_eq!(asked, ["Dataplane", "DataplaneInsight", "ZoneIngress", "ZoneIngressInsight"]);

    let dp = |v: serde_json::Value| {
        let name = v["name"].as_str().expect("name").to_string();
        let any = raw_kds::envelope("Dataplane", "default", &name, "v1", &[], spec_bytes(&v));
        raw_kds::resource("default", &name, "v1", any)
    };
    let resp = DeltaDiscoveryResponse {
        type_url: "Dataplane".into(),
        resources: vec![
            dp(dataplane("dp-ok-1", "10.0.0.1", "web")),
            dp(gateway_dataplane("dp-bad", "0.0.0.0", "edge")),
            dp(dataplane("dp-ok-2", "10.0.0.2", "web")),
        ],
        nonce: "n-1".into(),
        ..Default::default()
    };
    tx.send(resp).await.expect("send");
    let nack = raw_kds::next(&mut rx, CONVERGE).await;
    assert_eq!(nack.response_nonce, "n-1");
    let reason = nack.error_detail.expect("a NACK").message;
    assert!(reason.contains("dp-bad") && reason.contains("0.0.0.0"), "the NACK names the bad one: {reason}");
    assert!(!reason.contains("dp-ok"), "the NACK names only the bad one: {reason}");

    for ok in ["zone-1.dp-ok-1", "zone-1.dp-ok-2"] {
        g.api().wait_for(&format!("/meshes/default/dataplanes/{ok}"), "stored", |_| true).await;
    }
    assert!(g.api().find("/meshes/default/dataplanes/zone-1.dp-bad").await.expect("API").is_none());
    g.wait_log(&["rejected resources from zone", "dp-bad"], CONVERGE).await;

    // The zone's insight counts what it sent up on this connection, even
    // though its global-to-zone stream (which opens the subscription) came
    // second.
    let (_down_tx, _down_rx) = raw.global_to_zone().await.expect("global-to-zone stream");
    let up = "Dataplane (zone to global)";
    let sub = eventually("the upward NACK shows in the zone's insight", CONVERGE, || async {
        let ov = g.api().zone_overview("zone-1").await?;
        let last = subscriptions(&ov).pop().ok_or("no subscription")?;
        if stat(&last, up, "responsesSent") >= 1 { Ok(last) } else { Err(last["status"].to_string()) }
    })
    .await;
    assert_eq!(stat(&sub, up, "responsesRejected"), 1, "{}", sub["status"]);
    assert_eq!(stat(&sub, up, "resourcesSent"), 3, "{}", sub["status"]);
    assert!(last_nack_reason(&sub, up).contains("dp-bad"), "{}", sub["status"]);
}

/// Done when 5b: an invalid MeshGateway written straight into the global's
/// PostgreSQL store (bypassing the API; the running global learns of it by
/// LISTEN/NOTIFY) beside valid ones: the zone applies the valid ones, and
/// its NACK shows in its insight on the global. Fixing it heals the zone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_gateway_in_the_global_store_is_nacked_alone() {
    let topo = global_and_zones("nack-down", GlobalSpec::on(Backend::Postgres), &["zone-1"]).await;
    let (g, z) = (topo.global(), topo.zone("zone-1"));
    let url = g.store_url().to_string();
    g.api().wait_online("zone-1", true, CONVERGE).await;

    let store = Store::connect(&url).await.expect("open the global's store");
    let mut bad = gateway("gw-bad", 8080);
    bad["conf"]["listeners"] = json!([]);
    let write = |v: serde_json::Value| WriteOp::Upsert(Manager::encode(&universal::from_value(v).expect("parses")));
    store
        .apply_batch(vec![write(gateway("gw-ok-1", 8081)), write(bad), write(gateway("gw-ok-2", 8082))])
        .await
        .expect("write into the store");

    z.api().wait_for("/meshes/default/meshgateways/gw-ok-1", "applied", |_| true).await;
    z.api().wait_for("/meshes/default/meshgateways/gw-ok-2", "applied", |_| true).await;
    let sub = eventually("the zone's NACK shows in its insight", CONVERGE, || async {
        let ov = g.api().zone_overview("zone-1").await?;
        let last = subscriptions(&ov).pop().ok_or("no subscription")?;
        if stat(&last, "MeshGateway", "responsesRejected") >= 1 { Ok(last) } else { Err(last["status"].to_string()) }
    })
    .await;
    let reason = last_nack_reason(&sub, "MeshGateway");
    assert!(reason.contains("gw-bad") && !reason.contains("gw-ok"), "lastNackReason: {reason}");
    assert!(z.api().find("/meshes/default/meshgateways/gw-bad").await.expect("API").is_none());
    z.wait_log(&["rejected resources from the global", "gw-bad"], CONVERGE).await;
    g.wait_log(&["zone rejected resources", "gw-bad"], CONVERGE).await;

    // A NACKed resource is sent again once it changes.
    g.api().apply(&gateway("gw-bad", 8083)).await;
    z.api().wait_for("/meshes/default/meshgateways/gw-bad", "fixed", |v| listener_port(v) == Some(8083)).await;
}

fn open_gateway(r: &raw_kds::Resource) -> (String, String, BTreeMap<String, String>, String) {
    let kr = raw_kds::open(r.resource.as_ref().expect("payload"));
    let meta = kr.meta.expect("meta");
    let spec = kr.spec.expect("spec");
    (meta.name, meta.mesh, meta.labels.into_iter().collect(), spec.type_url)
}

/// Done when 8: a client built only from REFERENCE §4 subscribes to
/// MeshGateways, receives them in the documented envelope, follows deltas
/// (add, remove) and resumes with `initial_resource_versions`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_client_subscribes_to_mesh_gateways() {
    let dir = TestDir::new("reference-client");
    let g = global_with_mesh(&dir, "g", GlobalSpec::default()).await;
    g.api().apply(&gateway("gw-1", 8080)).await;
    let token = g.zone_token("zone-raw").await;
    let raw = RawKds::connect(&g.kds_url(), g.ca(), "zone-raw", Some(&token)).await;
    let (tx, mut rx) = raw.global_to_zone().await.expect("global-to-zone stream");
    let subscribe = DeltaDiscoveryRequest { type_url: "MeshGateway".into(), ..Default::default() };
    tx.send(subscribe).await.expect("send");

    let resp = raw_kds::next(&mut rx, CONVERGE).await;
    assert_eq!(resp.type_url, "MeshGateway");
    assert_eq!(resp.resources.len(), 1, "{resp:?}");
    let r = &resp.resources[0];
    assert_eq!(r.name, "gw-1.default");
    assert!(!r.version.is_empty());
    let (name, mesh, labels, spec_type) = open_gateway(r);
    assert_eq!((name.as_str(), mesh.as_str()), ("gw-1", "default"));
    assert_eq!(labels.get("kuma.io/origin").map(String::as_str), Some("global"));
    assert_eq!(spec_type, "type.googleapis.com/kuma.mesh.v1alpha1.MeshGateway");
    let ack = |nonce: &str| DeltaDiscoveryRequest {
        type_url: "MeshGateway".into(),
        response_nonce: nonce.into(),
        ..Default::default()
    };
    tx.send(ack(&resp.nonce)).await.expect("ack");

    g.api().apply(&gateway("gw-2", 8081)).await;
    let resp = raw_kds::next(&mut rx, CONVERGE).await;
    let names: Vec<&str> = resp.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["gw-2.default"], "only what changed");
    let gw2_version = resp.resources[0].version.clone();
    tx.send(ack(&resp.nonce)).await.expect("ack");

    assert_eq!(g.api().delete("/meshes/default/meshgateways/gw-1").await.0, 200);
    let resp = raw_kds::next(&mut rx, CONVERGE).await;
    assert!(resp.resources.is_empty());
    assert_eq!(resp.removed_resources, ["gw-1.default"]);
    tx.send(ack(&resp.nonce)).await.expect("ack");
    eventually("the global counts the client's ACKs", CONVERGE, || async {
        let ov = g.api().zone_overview("zone-raw").await?;
        let last = subscriptions(&ov).pop().ok_or("no subscription")?;
        let acked = stat(&last, "MeshGateway", "responsesAcknowledged");
        if acked >= 3 { Ok(()) } else { Err(format!("acked {acked}")) }
    })
    .await;
    drop((tx, rx));

    // Resuming with what it holds: nothing to send, nothing to remove.
    let (tx, mut rx) = raw.global_to_zone().await.expect("second stream");
    let mut resume = DeltaDiscoveryRequest { type_url: "MeshGateway".into(), ..Default::default() };
    resume.initial_resource_versions.insert("gw-2.default".into(), gw2_version);
    tx.send(resume).await.expect("send");
    let resp = raw_kds::next(&mut rx, CONVERGE).await;
    assert!(resp.resources.is_empty() && resp.removed_resources.is_empty(), "{resp:?}");
    assert!(!resp.nonce.is_empty());
}
