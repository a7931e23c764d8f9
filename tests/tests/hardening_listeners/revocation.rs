//! Point 4: revocation on an open stream cuts both directions; nothing a
//! zone sends after its token was revoked is stored.

use std::time::Duration;

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use meridian_tests::{
    Global, GlobalSpec, TestDir, Zone,
    json_api::CONVERGE,
    raw_kds::{self, DeltaDiscoveryResponse, RawKds},
    resources::{dataplane, mesh},
};
use serde_json::json;

use crate::spec_bytes;

/// The zone notices a refusal within this (re-check period plus backoff).
const CUT: Duration = Duration::from_secs(30);

fn jti(token: &str) -> String {
    let claims = token.split('.').nth(1).expect("JWT <header>.<claims>.<signature>");
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).expect("base64url claims")).expect("JSON claims");
    claims["jti"].as_str().expect("jti").to_string()
}

async fn revoke(g: &Global, token: &str) {
    g.api()
        .apply(&json!({
            "type": "GlobalSecret", "name": "zone-token-revocations",
            "data": STANDARD.encode(jti(token)),
        }))
        .await;
}

fn dp_response(name: &str, addr: &str, nonce: &str) -> DeltaDiscoveryResponse {
    let v = dataplane(name, addr, "web");
    let any = raw_kds::envelope("Dataplane", "default", name, "v1", &[], spec_bytes(&v));
    DeltaDiscoveryResponse {
        type_url: "Dataplane".into(),
        resources: vec![raw_kds::resource("default", name, "v1", any)],
        nonce: nonce.into(),
        ..Default::default()
    }
}

/// A zone→global stream opened with a valid token (and no global→zone
/// stream at all): after the revocation, the next Dataplane it pushes is
/// not ACKed but ends the stream (UNAUTHENTICATED), and is never stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_token_cuts_the_zone_to_global_stream() {
    let dir = TestDir::new("revoke-up");
    let g = Global::start(&dir, "g", GlobalSpec::default()).await;
    g.api().apply(&mesh("default")).await;
    let token = g.zone_token("zone-1").await;
    let raw = RawKds::connect(&g.kds_url(), g.ca(), "zone-1", Some(&token)).await;
    let (tx, mut rx) = raw.zone_to_global().await.expect("zone-to-global stream");
    for _ in 0..4 {
        raw_kds::next(&mut rx, CONVERGE).await;
    }
    tx.send(dp_response("dp-before", "10.0.0.1", "n-1")).await.expect("send");
    let ack = raw_kds::next(&mut rx, CONVERGE).await;
    assert!(ack.error_detail.is_none(), "the Dataplane sent before the revocation is ACKed: {ack:?}");
    g.api().wait_for("/meshes/default/dataplanes/zone-1.dp-before", "stored", |_| true).await;

    revoke(&g, &token).await;
    tx.send(dp_response("dp-after", "10.0.0.2", "n-2")).await.expect("send");
    match tokio::time::timeout(CUT, rx.message()).await.expect("the global answers or ends the stream") {
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}");
            assert!(status.message().contains("revoked"), "the status says why: {status}");
        }
        Ok(m) => panic!("the global answered a revoked zone instead of cutting it off: {m:?}"),
    }
    // Whichever notices first logs it: the change-feed watch ("zone token
    // no longer valid") or the check before storing ("zone no longer
    // allowed"); either way nothing after the revocation is stored.
    g.wait_log(&["no longer", "zone=zone-1"], CUT).await;
    assert!(
        g.api().find("/meshes/default/dataplanes/zone-1.dp-after").await.expect("global API").is_none(),
        "a Dataplane sent after the revocation was stored"
    );
    assert!(g.api().find("/meshes/default/dataplanes/zone-1.dp-before").await.expect("global API").is_some());
}

/// A real zone: revoke its token, register a Dataplane in it at once; the
/// zone is cut off both ways and the global never stores the Dataplane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_real_zone_pushes_nothing_more() {
    let dir = TestDir::new("revoke-zone");
    let g = Global::start(&dir, "g", GlobalSpec::default()).await;
    g.api().apply(&mesh("default")).await;
    let token = g.zone_token("zone-1").await;
    let z = Zone::start(&dir, "zone-1", "zone-1", &g, Some(&token)).await;
    z.api().wait_for("/meshes/default", "synced from the global", |_| true).await;
    z.api().apply(&dataplane("dp-before", "10.0.0.1", "web")).await;
    g.api().wait_for("/meshes/default/dataplanes/zone-1.dp-before", "stored", |_| true).await;

    revoke(&g, &token).await;
    z.api().apply(&dataplane("dp-after", "10.0.0.2", "web")).await;
    // The zone is refused on redial: both of its streams were closed.
    z.wait_log(&["zone token was revoked"], CUT).await;
    z.wait_log(&["the global refused this zone"], CUT).await;
    assert!(
        g.api().find("/meshes/default/dataplanes/zone-1.dp-after").await.expect("global API").is_none(),
        "a Dataplane registered after the revocation reached the global"
    );
}
