//! Zone authentication: only a zone holding its own valid token, enabled on
//! the global, syncs; every refusal is logged with its reason on both sides.

use std::time::Duration;

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use meridian_tests::{GlobalSpec, TestDir, Zone, json_api::CONVERGE, raw_kds::RawKds};
use serde_json::json;

use crate::{global_with_mesh, synced_zone};

/// A refused zone retries with backoff; its first refusal comes fast.
const REFUSAL: Duration = Duration::from_secs(20);

fn jti(token: &str) -> String {
    let claims = token.split('.').nth(1).expect("JWT <header>.<claims>.<signature>");
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).expect("base64url claims")).expect("JSON claims");
    claims["jti"].as_str().expect("jti").to_string()
}

/// Same claims, signature from another key.
fn forge(token: &str) -> String {
    let (signed, _) = token.rsplit_once('.').expect("signature");
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode([7u8; 32]))
}

/// Done when 6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zones_are_authenticated() {
    let dir = TestDir::new("auth");
    let g = global_with_mesh(&dir, "g", GlobalSpec::default()).await;
    let token_1 = g.zone_token("zone-1").await;
    let token_2 = g.zone_token("zone-2").await;
    let token_4 = g.zone_token("zone-4").await;
    let token_5 = g.zone_token("zone-5").await;

    let revocations = json!({
        "type": "GlobalSecret", "name": "zone-token-revocations",
        "data": STANDARD.encode(jti(&token_4)),
    });
    g.api().apply(&revocations).await;
    g.api().apply(&json!({"type": "Zone", "name": "zone-5", "enabled": false})).await;

    // (label, zone, token, the reason both sides log)
    let forged = forge(&token_1);
    let refused: [(&str, &str, Option<&str>, &[&str]); 5] = [
        ("forged", "zone-1", Some(&forged), &["signature is not valid"]),
        ("stolen", "zone-1", Some(&token_2), &["is for zone", "zone-2"]),
        ("tokenless", "zone-3", None, &["no zone token presented"]),
        ("revoked", "zone-4", Some(&token_4), &["zone token was revoked"]),
        ("disabled", "zone-5", Some(&token_5), &["is disabled"]),
    ];
    let mut zones = Vec::new();
    for (label, zone, token, _) in &refused {
        zones.push(Zone::start(&dir, label, zone, &g, *token).await);
    }
    let good = synced_zone(&dir, &g, "zone-6").await;

    for ((label, zone, _, reason), z) in refused.iter().zip(&zones) {
        let needles = |first: &'static str| [&[first][..], reason].concat();
        let line = g.wait_log(&needles("KDS call refused"), REFUSAL).await;
        assert!(line.contains(zone), "{label}: the global's line names the zone: {line}");
        z.wait_log(&needles("the global refused this zone"), REFUSAL).await;
        assert!(z.api().find("/meshes/default").await.expect("zone API").is_none(), "{label} got the mesh");
    }
    // No refused caller was registered as a zone, or shown online.
    let zone_names = g.api().names("/zones").await.expect("list zones");
    assert_eq!(zone_names, ["zone-5", "zone-6"], "only the pre-created and the good zone exist");
    g.api().wait_online("zone-6", true, CONVERGE).await;

    // No token at all (no authorization metadata), from a raw client.
    let raw = RawKds::connect(&g.kds_url(), g.ca(), "zone-7", None).await;
    let Err(status) = raw.global_to_zone().await else { panic!("a call without a token was accepted") };
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}");
    assert!(status.message().contains("no zone token presented"), "{status}");
    g.wait_log(&["KDS call refused", "zone-7", "no zone token presented"], REFUSAL).await;

    // Disabling a connected zone cuts it off.
    g.api().apply(&json!({"type": "Zone", "name": "zone-6", "enabled": false})).await;
    g.api().wait_online("zone-6", false, CONVERGE).await;
    good.wait_log(&["is disabled"], REFUSAL).await;
    g.wait_log(&["zone was disabled; closing its stream", "zone-6"], REFUSAL).await;
}

/// Revoking the token of a connected zone cuts it off; it cannot come back
/// with that token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_connected_zones_token_cuts_it_off() {
    let dir = TestDir::new("revoke-live");
    let g = global_with_mesh(&dir, "g", GlobalSpec::default()).await;
    let token = g.zone_token("zone-1").await;
    let z = Zone::start(&dir, "zone-1", "zone-1", &g, Some(&token)).await;
    g.wait_log(&["zone connected", "zone-1"], std::time::Duration::from_secs(30)).await;
    let revocations = json!({
        "type": "GlobalSecret", "name": "zone-token-revocations",
        "data": STANDARD.encode(jti(&token)),
    });
    g.api().apply(&revocations).await;
    g.wait_log(&["zone token no longer valid", "zone-1"], std::time::Duration::from_secs(30)).await;
    z.wait_log(&["zone token was revoked"], std::time::Duration::from_secs(30)).await;
}
