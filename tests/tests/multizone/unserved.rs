//! Issue 8: a subscription to a type a side does not serve gets an empty
//! response and the stream stays up; a response of a type nobody asked for
//! is ignored. Raw KDS clients against a real global.

use meridian_tests::{
    GlobalSpec, TestDir,
    json_api::CONVERGE,
    raw_kds::{self, DeltaDiscoveryRequest, RawKds},
    resources::{dataplane, gateway},
};

use crate::{global_with_mesh, spec_bytes};

/// Global → zone: a Kuma zone subscribes to CircuitBreaker (not served):
/// an empty response, and the MeshGateway subscription after it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_answers_an_unserved_type_empty_and_keeps_the_stream() {
    let dir = TestDir::new("unserved-down");
    let g = global_with_mesh(&dir, "g", GlobalSpec::default()).await;
    g.api().apply(&gateway("gw-1", 8080)).await;
    let token = g.zone_token("zone-1").await;
    let raw = RawKds::connect(&g.kds_url(), g.ca(), "zone-1", Some(&token)).await;
    let (tx, mut rx) = raw.global_to_zone().await.expect("global-to-zone stream");
    tx.send(DeltaDiscoveryRequest { type_url: "CircuitBreaker".into(), ..Default::default() }).await.expect("send");
    let empty = raw_kds::next(&mut rx, CONVERGE).await;
    assert_eq!(empty.type_url, "CircuitBreaker");
    assert!(empty.resources.is_empty() && empty.removed_resources.is_empty(), "{empty:?}");
    assert!(!empty.nonce.is_empty());
    tx.send(DeltaDiscoveryRequest {
        type_url: "CircuitBreaker".into(),
        response_nonce: empty.nonce,
        ..Default::default()
    })
    .await
    .expect("ack");
    tx.send(DeltaDiscoveryRequest { type_url: "MeshGateway".into(), ..Default::default() }).await.expect("send");
    let gws = raw_kds::next(&mut rx, CONVERGE).await;
    assert_eq!(gws.type_url, "MeshGateway");
    let names: Vec<&str> = gws.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["gw-1.default"]);
}

/// Zone → global, the global's receiving end: a response of a type the
/// global did not ask for is ignored; the next Dataplane response is ACKed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_ignores_a_type_it_did_not_ask_for_and_keeps_the_stream() {
    let dir = TestDir::new("unserved-up");
    let g = global_with_mesh(&dir, "g", GlobalSpec::default()).await;
    let token = g.zone_token("zone-1").await;
    let raw = RawKds::connect(&g.kds_url(), g.ca(), "zone-1", Some(&token)).await;
    let (tx, mut rx) = raw.zone_to_global().await.expect("zone-to-global stream");
    for _ in 0..4 {
        raw_kds::next(&mut rx, CONVERGE).await;
    }
    let unasked = raw_kds::DeltaDiscoveryResponse {
        type_url: "CircuitBreaker".into(),
        nonce: "cb-1".into(),
        ..Default::default()
    };
    tx.send(unasked).await.expect("send");
    let spec = spec_bytes(&dataplane("dp-1", "10.0.0.1", "web"));
    let dp =
        raw_kds::resource("default", "dp-1", "v1", raw_kds::envelope("Dataplane", "default", "dp-1", "v1", &[], spec));
    let send = raw_kds::DeltaDiscoveryResponse {
        type_url: "Dataplane".into(),
        resources: vec![dp],
        nonce: "dp-1".into(),
        ..Default::default()
    };
    tx.send(send).await.expect("send");
    let ack = raw_kds::next(&mut rx, CONVERGE).await;
    assert_eq!((ack.response_nonce.as_str(), ack.error_detail.as_ref()), ("dp-1", None));
    g.api().wait_for("/meshes/default/dataplanes/zone-1.dp-1", "stored under zone-1", |_| true).await;
}
