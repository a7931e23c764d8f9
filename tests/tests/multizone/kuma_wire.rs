//! Issue 9 items 5, 7 and 8: a zone speaking the incumbent's KDS wire as a
//! Kuma 2.14 zone does (gzip on every message, hash-suffixed names with the
//! user's name in `kuma.io/display-name`, periodic `GlobalKDSService.HealthCheck`),
//! as raw clients against a real global.

use meridian_tests::{
    Global, GlobalSpec, TestDir,
    json_api::CONVERGE,
    raw_kds::{self, DeltaDiscoveryRequest, DeltaDiscoveryResponse, RawKds},
    resources::{dataplane, gateway},
};
use serde_json::Value;
use tonic::codec::CompressionEncoding;

use crate::{global_with_mesh, spec_bytes};

/// The name a Kuma zone gives `gateway-instance-1` on the wire (Kuma's
/// `hash.HashedName`: the user's name, a dash, 16 characters).
const HASHED: &str = "gateway-instance-1-bcdd994zxbvwfv24";
const DISPLAY: &str = "gateway-instance-1";

fn label<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v["labels"][key].as_str()
}

/// A Kuma-style zone's Dataplane response: hashed wire name, display name label.
fn kuma_dataplane(nonce: &str, address: &str) -> DeltaDiscoveryResponse {
    let spec = spec_bytes(&dataplane(DISPLAY, address, "web"));
    let labels = [("kuma.io/display-name", DISPLAY), ("kuma.io/origin", "zone")];
    let any = raw_kds::envelope("Dataplane", "default", HASHED, address, &labels, spec);
    DeltaDiscoveryResponse {
        type_url: "Dataplane".into(),
        resources: vec![raw_kds::resource("default", HASHED, address, any)],
        nonce: nonce.into(),
        ..Default::default()
    }
}

/// Opens zone-to-global as `zone` and reads the global's first request per
/// type; returns the Dataplane one (what the global already holds).
async fn upward(
    g: &Global,
    zone: &str,
    compression: Option<CompressionEncoding>,
) -> (tokio::sync::mpsc::Sender<DeltaDiscoveryResponse>, tonic::Streaming<DeltaDiscoveryRequest>, DeltaDiscoveryRequest)
{
    let token = g.zone_token(zone).await;
    let mut raw = RawKds::connect(&g.kds_url(), g.ca(), zone, Some(&token)).await;
    if let Some(c) = compression {
        raw = raw.compressed(c);
    }
    let (tx, mut rx) = raw.zone_to_global().await.expect("zone-to-global stream");
    let mut dataplanes = None;
    for _ in 0..4 {
        let req = raw_kds::next(&mut rx, CONVERGE).await;
        if req.type_url == "Dataplane" {
            dataplanes = Some(req);
        }
    }
    (tx, rx, dataplanes.expect("the global subscribes to Dataplanes"))
}

/// Item 5: every message gzip-compressed both ways, as a Kuma zone sends
/// them; the global answers compressed (`grpc-encoding: gzip`). zstd too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_and_zstd_compressed_zones_sync_both_ways() {
    let dir = TestDir::new("kuma-wire-gzip");
    let g = global_with_mesh(&dir, "g", GlobalSpec::default()).await;
    g.api().apply(&gateway("gw-1", 8080)).await;
    for (zone, encoding, name) in
        [("zone-1", CompressionEncoding::Gzip, "gzip"), ("zone-2", CompressionEncoding::Zstd, "zstd")]
    {
        // Global → zone: the subscription arrives compressed, the gateway comes back compressed.
        let token = g.zone_token(zone).await;
        let raw = RawKds::connect(&g.kds_url(), g.ca(), zone, Some(&token)).await.compressed(encoding);
        let (tx, mut rx, headers) = raw.global_to_zone_with_headers().await.expect("global-to-zone stream");
        let sent = headers.get("grpc-encoding").and_then(|v| v.to_str().ok());
        assert_eq!(sent, Some(name), "the global compresses what it sends to a zone accepting {name}");
        tx.send(DeltaDiscoveryRequest { type_url: "MeshGateway".into(), ..Default::default() }).await.expect("send");
        let gws = raw_kds::next(&mut rx, CONVERGE).await;
        let names: Vec<&str> = gws.resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["gw-1.default"]);

        // Zone → global: a compressed Dataplane response is applied and ACKed.
        let (tx, mut rx, _) = upward(&g, zone, Some(encoding)).await;
        let spec = spec_bytes(&dataplane("dp-1", "10.0.0.1", "web"));
        let any = raw_kds::envelope("Dataplane", "default", "dp-1", "v1", &[], spec);
        let response = DeltaDiscoveryResponse {
            type_url: "Dataplane".into(),
            resources: vec![raw_kds::resource("default", "dp-1", "v1", any)],
            nonce: "n-1".into(),
            ..Default::default()
        };
        tx.send(response).await.expect("send");
        let ack = raw_kds::next(&mut rx, CONVERGE).await;
        assert_eq!((ack.response_nonce.as_str(), ack.error_detail.as_ref()), ("n-1", None));
        g.api().wait_for(&format!("/meshes/default/dataplanes/{zone}.dp-1"), "stored", |_| true).await;
    }
}

/// Item 7: a hash-suffixed Dataplane with the user's name in
/// `kuma.io/display-name` is stored and addressed by its wire name and
/// keeps the zone's display name; on reconnect the global tells the zone it
/// holds it under that wire name (resume by versions); another zone cannot
/// take the name. (A Meridian zone's plain names: `sync::zone_dataplanes_reach_the_global_under_their_zone`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_names_are_stored_as_sent_with_the_zones_display_name() {
    let dir = TestDir::new("kuma-wire-names");
    let g = global_with_mesh(&dir, "g", GlobalSpec::default()).await;
    let path = format!("/meshes/default/dataplanes/{HASHED}");
    {
        let (tx, mut rx, first) = upward(&g, "zone-1", Some(CompressionEncoding::Gzip)).await;
        assert!(first.initial_resource_versions.is_empty(), "{first:?}");
        tx.send(kuma_dataplane("n-1", "10.0.0.1")).await.expect("send");
        let ack = raw_kds::next(&mut rx, CONVERGE).await;
        assert_eq!((ack.response_nonce.as_str(), ack.error_detail.as_ref()), ("n-1", None));
    }
    let dp = g.api().wait_for(&path, "stored under its wire name", |_| true).await;
    assert_eq!(dp["name"], HASHED);
    assert_eq!(label(&dp, "kuma.io/display-name"), Some(DISPLAY), "{dp}");
    assert_eq!(label(&dp, "kuma.io/zone"), Some("zone-1"));
    assert_eq!(label(&dp, "kuma.io/origin"), Some("zone"));
    let names = g.api().names("/meshes/default/dataplanes").await.expect("list");
    assert_eq!(names, [HASHED]);

    // Reconnect: the global's subscription names what it holds, by wire name.
    let (tx, mut rx, first) = upward(&g, "zone-1", None).await;
    let held: Vec<(&str, &str)> =
        first.initial_resource_versions.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(held, [(format!("{HASHED}.default").as_str(), "10.0.0.1")]);
    // A removal by wire name deletes it.
    let removal = DeltaDiscoveryResponse {
        type_url: "Dataplane".into(),
        removed_resources: vec![format!("{HASHED}.default")],
        nonce: "n-2".into(),
        ..Default::default()
    };
    tx.send(removal).await.expect("send");
    let ack = raw_kds::next(&mut rx, CONVERGE).await;
    assert_eq!((ack.response_nonce.as_str(), ack.error_detail.as_ref()), ("n-2", None));
    g.api().wait_gone(&path).await;

    // zone-1 sends it again; zone-2 sending the same name is refused by name.
    tx.send(kuma_dataplane("n-3", "10.0.0.3")).await.expect("send");
    assert_eq!(raw_kds::next(&mut rx, CONVERGE).await.error_detail, None);
    let (tx2, mut rx2, _) = upward(&g, "zone-2", None).await;
    tx2.send(kuma_dataplane("n-4", "10.9.9.9")).await.expect("send");
    let nack = raw_kds::next(&mut rx2, CONVERGE).await;
    let reason = nack.error_detail.map(|s| s.message).unwrap_or_default();
    assert!(reason.contains(HASHED), "zone-2 is refused zone-1's name: {reason:?}");
    let dp = g.api().get(&path).await;
    assert_eq!(label(&dp, "kuma.io/zone"), Some("zone-1"));
    assert_eq!(dp["networking"]["address"], "10.0.0.3");
}

/// Item 8: `GlobalKDSService.HealthCheck` answers an authenticated zone with
/// the interval it expects between checks; unauthenticated calls are
/// refused, on the inspection streams too (served since issue 16: see
/// `tests/tests/observability.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_answers_the_interval_and_unauthenticated_calls_are_refused() {
    let dir = TestDir::new("kuma-wire-health");
    let g = global_with_mesh(&dir, "g", GlobalSpec::default()).await;
    let token = g.zone_token("zone-1").await;
    let raw = RawKds::connect(&g.kds_url(), g.ca(), "zone-1", Some(&token)).await.compressed(CompressionEncoding::Gzip);
    let answer = raw.health_check().await.expect("health check");
    let interval = answer.interval.expect("an interval");
    assert_eq!((interval.seconds, interval.nanos), (10, 0));

    let anonymous = RawKds::connect(&g.kds_url(), g.ca(), "zone-1", None).await;
    assert_eq!(anonymous.health_check().await.expect_err("no token").code(), tonic::Code::Unauthenticated);
    let wrong = RawKds::connect(&g.kds_url(), g.ca(), "zone-2", Some(&token)).await;
    assert_eq!(wrong.health_check().await.expect_err("another zone's token").code(), tonic::Code::Unauthenticated);

    assert_eq!(anonymous.stream_stats().await.expect_err("no token").code(), tonic::Code::Unauthenticated);
}

/// Item 5, the limit: a gzip message that inflates past the KDS message cap
/// (4 MiB by default) is refused while decompressing, without taking the
/// global down: only that stream ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_inflating_past_the_cap_ends_only_its_stream() {
    let dir = TestDir::new("kuma-wire-inflate");
    let g = global_with_mesh(&dir, "g", GlobalSpec::default()).await;
    let (tx, mut rx, _) = upward(&g, "zone-1", Some(CompressionEncoding::Gzip)).await;
    // 5 MiB of zeros: a few KiB on the wire once gzipped.
    let any = raw_kds::Any { type_url: raw_kds::KUMA_RESOURCE_TYPE_URL.into(), value: vec![0; 5 * 1024 * 1024] };
    let big = DeltaDiscoveryResponse {
        type_url: "Dataplane".into(),
        resources: vec![raw_kds::resource("default", "dp-big", "v1", any)],
        nonce: "n-big".into(),
        ..Default::default()
    };
    tx.send(big).await.expect("send");
    let ended = tokio::time::timeout(CONVERGE, rx.message()).await.expect("the global answers");
    assert!(!matches!(ended, Ok(Some(_))), "no ACK for an oversized message: {ended:?}");
    // The global still serves: a new stream syncs.
    let (tx, mut rx, _) = upward(&g, "zone-1", Some(CompressionEncoding::Gzip)).await;
    tx.send(kuma_dataplane("n-1", "10.0.0.1")).await.expect("send");
    assert_eq!(raw_kds::next(&mut rx, CONVERGE).await.error_detail, None);
}
