//! Point 6: `--kds-max-message-bytes` is checked at start, its derived
//! resource limit never reaches zero, and two ends with different caps
//! split to the smaller one; an oversized message names its type and
//! resources.

use std::process::Command;

use base64::{Engine, engine::general_purpose::STANDARD};
use meridian_tests::{
    Global, GlobalSpec, TestDir, Zone,
    json_api::{CONVERGE, subscriptions},
    process::binary,
    raw_kds::{self, DeltaDiscoveryResponse, RawKds},
    resources::{gateway, mesh},
};

use crate::spec_bytes;
use serde_json::json;

/// Secrets synced to the small-cap zone, each about 4 KiB: together about
/// twice the zone's 64 KiB cap, so the global must split them.
const SECRETS: usize = 32;
const SECRET_BYTES: usize = 3 * 1024;

fn secret(name: &str, bytes: usize) -> serde_json::Value {
    let data: Vec<u8> = (0..bytes).map(|i| (i * 7 + name.len()) as u8).collect();
    json!({"type": "Secret", "mesh": "default", "name": name, "data": STANDARD.encode(data)})
}

/// A value under 64 KiB is refused at start by both binaries, with the
/// flag and the reason, and a non-zero exit.
#[test]
fn too_small_a_cap_is_refused_at_start() {
    let dir = TestDir::new("cap-refused");
    for (bin, extra) in [("meridian-global", vec![]), ("meridian-zone", vec!["--zone", "zone-1"])] {
        let out = Command::new(binary(bin))
            .arg("run")
            .args(extra)
            .args(["--data-dir", &dir.part_dir(bin).display().to_string(), "--kds-max-message-bytes", "1000"])
            .env_remove("MERIDIAN_KDS_MAX_MESSAGE_BYTES")
            .output()
            .unwrap_or_else(|e| panic!("run {bin}: {e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bin} started with a 1000-byte cap");
        assert!(
            stderr.contains("--kds-max-message-bytes") && stderr.contains("at least 65536"),
            "{bin} says which flag and why: {stderr}"
        );
    }
}

/// A global at the smallest cap still takes resources (the limit used to
/// be 0 bytes there), and a zone whose cap is below the global's receives
/// a set of resources that only fits split; one resource over the zone's
/// cap is reported by type and name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_split_to_the_smaller_end() {
    let dir = TestDir::new("cap-split");
    let small =
        GlobalSpec { extra_args: vec!["--kds-max-message-bytes".into(), "65536".into()], ..GlobalSpec::default() };
    let gs = Global::start(&dir, "small-global", small).await;
    gs.api().apply(&mesh("default")).await;
    gs.api().apply(&gateway("gw-1", 8080)).await;
    gs.api().apply(&secret("fits", 16 * 1024)).await;

    let g = Global::start(&dir, "g", GlobalSpec::default()).await;
    g.api().apply(&mesh("default")).await;
    for i in 0..SECRETS {
        g.api().apply(&secret(&format!("s-{i}"), SECRET_BYTES)).await;
    }
    let z = Zone::connect_with(&dir, &g, "zone-1", &["--kds-max-message-bytes", "65536"]).await;
    for i in 0..SECRETS {
        z.api().wait_for(&format!("/meshes/default/secrets/s-{i}"), "synced in split messages", |_| true).await;
    }
    g.api().wait_online("zone-1", true, CONVERGE).await;

    // 70 KiB fits the global's budget but not the zone's 64 KiB message:
    // it is withheld from that zone and reported by type and name, and the
    // zone's stream lives on (it used to end, and again on each reconnect).
    g.api().apply(&secret("too-big", 70 * 1024)).await;
    let line = g.wait_log(&["KDS message cap", "too-big", "withheld"], CONVERGE).await;
    assert!(line.contains("Secret"), "the error names the type: {line}");
    g.api().apply(&secret("after", 1024)).await;
    z.api().wait_for("/meshes/default/secrets/after", "a later change still arrives", |_| true).await;
    assert!(z.api().find("/meshes/default/secrets/too-big").await.expect("API").is_none());
    let ov = g.api().zone_overview("zone-1").await.expect("overview");
    assert_eq!(subscriptions(&ov).len(), 1, "the zone reconnected: {ov}");
}

/// A ZoneIngress from `zone` of `message_bytes` bytes in one upward KDS
/// message (a tag value pads it to the byte).
fn ingress_response(name: &str, message_bytes: usize) -> DeltaDiscoveryResponse {
    let build = |pad: usize| {
        let ingress = json!({
            "type": "ZoneIngress", "name": name,
            "networking": {"address": "10.0.0.5", "port": 10001, "advertisedAddress": "192.0.2.1", "advertisedPort": 10001},
            "availableServices": [{"tags": {"kuma.io/service": "web", "pad": "p".repeat(pad)}, "instances": 1, "mesh": "default"}]
        });
        let any = raw_kds::envelope("ZoneIngress", "", name, "v1", &[], spec_bytes(&ingress));
        DeltaDiscoveryResponse {
            type_url: "ZoneIngress".into(),
            resources: vec![raw_kds::resource("", name, "v1", any)],
            nonce: format!("n-{name}"),
            ..Default::default()
        }
    };
    let mut pad = message_bytes.saturating_sub(400);
    loop {
        let r = build(pad);
        let size = prost::Message::encoded_len(&r);
        if size == message_bytes || (size < message_bytes && message_bytes - size <= 2 && pad > 0) {
            return r;
        }
        pad = if size > message_bytes { pad - (size - message_bytes).max(1) } else { pad + (message_bytes - size) };
    }
}

/// Point 5: a zone sends a ZoneIngress just under the KDS message cap.
/// The global holds it to the REST limit measured as the resource will be
/// stored and relayed (labels it adds included), so it is NACKed naming it,
/// never stored, never relayed; the other zone's stream never dies. One
/// that fits with those labels is stored and reaches the other zone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_resource_too_large_to_relay_is_refused() {
    let dir = TestDir::new("relay-cap");
    let cap = 256 * 1024;
    let args = vec!["--kds-max-message-bytes".to_string(), cap.to_string()];
    let g = Global::start(&dir, "g", GlobalSpec { extra_args: args, ..GlobalSpec::default() }).await;
    g.api().apply(&mesh("default")).await;
    let z2 = Zone::connect_with(&dir, &g, "zone-2", &["--kds-max-message-bytes", &cap.to_string()]).await;
    g.api().wait_online("zone-2", true, CONVERGE).await;

    let token = g.zone_token("zone-1").await;
    let raw = RawKds::connect(&g.kds_url(), g.ca(), "zone-1", Some(&token)).await;
    let (tx, mut rx) = raw.zone_to_global().await.expect("zone-to-global stream");
    for _ in 0..4 {
        raw_kds::next(&mut rx, CONVERGE).await; // the global's subscriptions
    }

    // Just under the message cap as sent: over it once relayed with labels.
    tx.send(ingress_response("ingress-big", cap - 48)).await.expect("send");
    let nack = raw_kds::next(&mut rx, CONVERGE).await;
    assert_eq!(nack.response_nonce, "n-ingress-big");
    let reason = nack.error_detail.expect("a NACK").message;
    assert!(reason.contains("ingress-big") && reason.contains("limit"), "the NACK names it and why: {reason}");
    assert!(reason.contains("labels included"), "{reason}");

    // One that fits with the labels the global adds travels on.
    let limit = meridian_sync_proto::kds::resource_budget(cap);
    tx.send(ingress_response("ingress-ok", limit - 2048)).await.expect("send");
    let ack = raw_kds::next(&mut rx, CONVERGE).await;
    assert_eq!(ack.response_nonce, "n-ingress-ok");
    assert!(ack.error_detail.is_none(), "{:?}", ack.error_detail);
    z2.api().wait_for("/zoneingresses/zone-1.ingress-ok", "relayed", |_| true).await;

    assert!(g.api().find("/zoneingresses/zone-1.ingress-big").await.expect("API").is_none(), "stored");
    assert!(z2.api().find("/zoneingresses/zone-1.ingress-big").await.expect("API").is_none(), "relayed");
    g.api().apply(&gateway("gw-after", 8080)).await;
    z2.api().wait_for("/meshes/default/meshgateways/gw-after", "a later change arrives", |_| true).await;
    let ov = g.api().zone_overview("zone-2").await.expect("overview");
    assert_eq!(subscriptions(&ov).len(), 1, "zone-2 reconnected: {ov}");
}
