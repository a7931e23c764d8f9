//! Dataplane tokens end to end: a global issues them, its public key and
//! revocation lists reach the zone over KDS, and the zone checks them on
//! every xDS stream of a real Envoy and on Dataplane registration through
//! its API.
//!
//! - a gateway whose Envoy presents its token gets its configuration;
//! - Envoys with no token, a token for another Dataplane, a zone token and
//!   a revoked token are refused with the reason and get nothing (Envoy's
//!   `/config_dump` holds no dynamic listener or cluster);
//! - revoking at the global cuts the open stream of a served Envoy;
//! - registration through the zone API with a Dataplane token works; a
//!   token for another name is 403, a forged one 401;
//! - `meridianctl rotate signing-key`: the new key signs, its public half
//!   (never the private one) reaches the zone, old tokens still work; after
//!   `meridianctl remove signing-key` they are refused, and their open
//!   streams cut.

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use meridian_tests::{Backend, Envoy, Topology, WAIT, XdsMode, Zone, eventually, traffic};
use serde_json::{Value, json};

fn jti(token: &str) -> String {
    let claims = token.split('.').nth(1).expect("JWT <header>.<claims>.<signature>");
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).expect("base64url claims")).expect("JSON claims");
    claims["jti"].as_str().expect("jti").to_string()
}

const GATEWAY: &str = r#"
type: MeshGateway
mesh: default
name: edge
selectors: [{match: {kuma.io/service: edge}}]
conf: {listeners: [{port: PORT, protocol: HTTP}]}
---
type: MeshGatewayRoute
mesh: default
name: edge-route
selectors: [{match: {kuma.io/service: edge}}]
conf:
  http:
    rules:
    - matches: [{path: {match: PREFIX, value: /}}]
      backends: [{destination: {kuma.io/service: blue}}]
"#;

/// Envoy's dynamic configuration: none means it got nothing from xDS.
async fn assert_got_nothing(envoy: &Envoy) {
    let dump = envoy.admin_get("/config_dump").await.expect("config_dump");
    for key in ["dynamic_listeners", "dynamic_active_clusters", "dynamic_warming_clusters"] {
        assert!(!dump.contains(key), "Envoy {} got configuration ({key}):\n{dump}", envoy.name());
    }
}

/// Registers gateway Dataplane `name` (service `edge`) in `zone`, starts an
/// Envoy presenting `token`, and waits for the zone to refuse it with
/// every one of `reason`.
async fn refused(topo: &Topology, zone: &Zone, name: &str, token: Option<&str>, reason: &[&str]) -> Envoy {
    zone.api().apply_yaml(&traffic::gateway_dataplane(name, "edge")).await;
    let envoy = Envoy::start_with_token(topo.dir(), zone, name, XdsMode::Delta, token).await;
    let node = format!("default.{name}");
    let mut needles = vec!["refusing Envoy: Dataplane token", node.as_str()];
    needles.extend_from_slice(reason);
    zone.wait_log(&needles, WAIT).await;
    envoy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataplane_tokens_gate_xds_and_revocation_cuts_open_streams() {
    let topo = Topology::builder("tokens-xds")
        .global(Backend::Sqlite)
        .zone("zone-1")
        .http_backend("blue", "zone-1")
        .gateway("zone-1", "edge-gw", "edge")
        .start()
        .await;
    let (global, zone, gw) = (topo.global(), topo.zone("zone-1"), topo.envoy("edge-gw"));
    let port = traffic::free_port();
    global.api().apply_yaml(&GATEWAY.replace("PORT", &port.to_string())).await;

    // The gateway presents its token (issued at the global): configuration
    // arrives and traffic flows.
    gw.wait_ready().await;
    eventually("a request through the gateway reaches blue", WAIT, || async {
        let r = gw.get(port, "edge.example.com", "/").await?;
        if r.status == 200 && r.backend() == "blue" { Ok(()) } else { Err(format!("{r:?}")) }
    })
    .await;

    // Refused, each with its reason, and given nothing.
    let dp_token = |name: &str| {
        let body = json!({"name": name, "mesh": "default", "validFor": "1h"});
        async move { global.api().post_text("/tokens/dataplane", &body).await }
    };
    let other = dp_token("someone-else").await;
    let zone_token = global.zone_token("zone-1").await;
    let revoked = dp_token("gw-revoked").await;
    global
        .api()
        .apply(&json!({"type": "GlobalSecret", "name": "dataplane-token-revocations-default",
                       "data": STANDARD.encode(jti(&revoked))}))
        .await;
    zone.api()
        .wait_for("/global-secrets/dataplane-token-revocations-default", "holds the revocation list", |_| true)
        .await;
    let cases: [(&str, Option<&str>, &[&str]); 4] = [
        ("gw-none", None, &["Unauthenticated", "no Dataplane token presented"]),
        ("gw-stolen", Some(&other), &["PermissionDenied", "Dataplane token is for Dataplane \"someone-else\""]),
        ("gw-zone-token", Some(&zone_token), &["Unauthenticated", "a Dataplane token is required"]),
        ("gw-revoked", Some(&revoked), &["Unauthenticated", "Dataplane token was revoked"]),
    ];
    let mut refused_envoys = Vec::new();
    for (name, token, reason) in cases {
        refused_envoys.push(refused(&topo, zone, name, token, reason).await);
    }
    for envoy in &refused_envoys {
        assert_got_nothing(envoy).await;
    }

    // Revoking the gateway's own token at the global cuts its open stream.
    let token = gw.token().expect("the gateway presents a token");
    global
        .api()
        .apply(&json!({"type": "GlobalSecret", "name": "dataplane-token-revocations-default",
                       "data": STANDARD.encode(format!("{},{}", jti(&revoked), jti(token)))}))
        .await;
    zone.wait_log(&["Dataplane token no longer valid; closing the stream", "default.edge-gw", "revoked"], WAIT).await;
    connected(gw, false).await;
    // ...and its reconnections are refused.
    zone.wait_log(&["refusing Envoy: Dataplane token", "default.edge-gw", "revoked"], WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataplanes_register_with_their_token() {
    let topo = Topology::builder("tokens-rest").global(Backend::Sqlite).zone("zone-1").mesh("default").start().await;
    let (global, zone) = (topo.global(), topo.zone("zone-1"));
    let token = global
        .api()
        .post_text("/tokens/dataplane", &json!({"mesh": "default", "tags": {"kuma.io/service": ["edge"]}}))
        .await;
    let named = global.api().post_text("/tokens/dataplane", &json!({"mesh": "default", "name": "gw-1"})).await;
    let http = reqwest::Client::new();
    let url = |name: &str| format!("{}/meshes/default/dataplanes/{name}", zone.api_url());
    let body = |name: &str, service: &str| -> Value {
        serde_json::from_str(&traffic::gateway_dataplane(name, service)).expect("dataplane json")
    };
    let send = |req: reqwest::RequestBuilder| async move {
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    };

    // The tag-bound token registers any gateway of service edge, with no admin token.
    let (status, text) = send(http.put(url("gw-a")).bearer_auth(&token).json(&body("gw-a", "edge"))).await;
    assert_eq!(status, 201, "{text}");
    // Another service: 403 with the reason; nothing stored.
    let (status, text) = send(http.put(url("gw-b")).bearer_auth(&token).json(&body("gw-b", "web"))).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("kuma.io/service") && text.contains("web"), "{text}");
    assert_eq!(zone.api().try_get("/meshes/default/dataplanes/gw-b").await.expect("get").0, 404);
    // A name-bound token: its name only.
    let (status, text) = send(http.put(url("gw-1")).bearer_auth(&named).json(&body("gw-1", "edge"))).await;
    assert_eq!(status, 201, "{text}");
    let (status, text) = send(http.put(url("gw-2")).bearer_auth(&named).json(&body("gw-2", "edge"))).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("\\\"gw-1\\\""), "the reason names the token's Dataplane: {text}");
    // Forged (signature of another key): 401.
    let (head, _) = named.rsplit_once('.').expect("signature");
    let forged = format!("{head}.{}", URL_SAFE_NO_PAD.encode([7u8; 64]));
    let (status, text) = send(http.put(url("gw-1")).bearer_auth(&forged).json(&body("gw-1", "edge"))).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("signature is not valid"), "{text}");
    // Deregistering with the token works; another's is refused.
    let (status, text) = send(http.delete(url("gw-a")).bearer_auth(&named)).await;
    assert_eq!(status, 403, "{text}");
    let (status, text) = send(http.delete(url("gw-1")).bearer_auth(&named)).await;
    assert_eq!(status, 200, "{text}");

    // A federated zone does not issue: the global does.
    let r = http
        .post(format!("{}/tokens/dataplane", zone.api_url()))
        .json(&json!({"mesh": "default", "name": "x"}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.text().await.unwrap_or_default().contains("issued by the global"));
}

/// The header's `kid`: the serial of the key that signed the token.
fn kid(token: &str) -> String {
    let header = token.split('.').next().expect("JWT header");
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("base64url")).expect("JSON");
    header["kid"].as_str().expect("kid").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_at_the_global_and_removed_keys_stop_verifying() {
    let topo = Topology::builder("tokens-rotate")
        .global(Backend::Sqlite)
        .zone("zone-1")
        .http_backend("blue", "zone-1")
        .gateway("zone-1", "edge-gw", "edge")
        .start()
        .await;
    let (global, zone, gw) = (topo.global(), topo.zone("zone-1"), topo.envoy("edge-gw"));
    let port = traffic::free_port();
    global.api().apply_yaml(&GATEWAY.replace("PORT", &port.to_string())).await;
    gw.wait_ready().await;
    let old = gw.token().expect("token").to_string();
    assert_eq!(kid(&old), "1");

    let ctl = meridian_tests::Ctl::new().args(["--api-url", global.api().base()]);
    let out = ctl.with(["rotate", "signing-key", "--type", "dataplane"]).run().await.ok();
    assert!(out.stdout.contains("signing key 2 now signs"), "{}", out.stdout);
    let new = ctl
        .with(["generate", "dataplane-token", "--mesh", "default", "--name", "gw-new", "--valid-for", "1h"])
        .run()
        .await
        .ok()
        .stdout
        .trim()
        .to_string();
    assert_eq!(kid(&new), "2", "the newest key signs");
    // The new public key reaches the zone over KDS; the private key never does.
    zone.api().wait_for("/global-secrets/dataplane-token-signing-public-key-2", "holds key 2", |_| true).await;
    assert_eq!(zone.api().try_get("/global-secrets/dataplane-token-signing-key-2").await.expect("get").0, 404);
    assert_eq!(zone.api().try_get("/global-secrets/zone-token-signing-key-1").await.expect("get").0, 404);

    // A token of the new key is served (a gateway of another service: no
    // listener port shared with edge-gw); the old key still verifies.
    zone.api().apply_yaml(&traffic::gateway_dataplane("gw-new", "other")).await;
    let served = Envoy::start_with_token(topo.dir(), zone, "gw-new", XdsMode::Sotw, Some(&new)).await;
    connected(&served, true).await;
    connected(gw, true).await;

    // The newest key cannot go; the old one can, and its tokens then stop working.
    let refused =
        ctl.with(["remove", "signing-key", "--type", "dataplane", "--serial", "2"]).run().await.expect_code(1);
    assert!(refused.stderr.contains("rotate first"), "{}", refused.stderr);
    ctl.with(["remove", "signing-key", "--type", "dataplane", "--serial", "1"]).run().await.ok();
    zone.wait_log(
        &[
            "Dataplane token no longer valid",
            "default.edge-gw",
            "signed by key 1, which this control plane does not hold",
        ],
        WAIT,
    )
    .await;
    let again = refused_with(&topo, zone, "gw-old", &old).await;
    assert_got_nothing(&again).await;
    connected(gw, false).await;
    // The Envoy of the new key keeps its stream.
    connected(&served, true).await;
    let cut = |l: &&str| l.contains("default.gw-new") && (l.contains("refusing") || l.contains("no longer valid"));
    assert!(!zone.stderr().lines().any(|l| cut(&l)), "gw-new was never refused");
}

/// Waits until Envoy's ADS stream is (or is not) connected.
async fn connected(envoy: &Envoy, want: bool) {
    let line = format!("control_plane.connected_state: {}", u8::from(want));
    eventually(&format!("{} connected = {want}", envoy.name()), WAIT, || async {
        let stats = envoy.admin_get("/stats?filter=control_plane.connected_state").await?;
        if stats.contains(&line) { Ok(()) } else { Err(stats) }
    })
    .await;
}

/// An Envoy for gateway `name` presenting `token` (bound to another name
/// or key), refused because its key is gone.
async fn refused_with(topo: &Topology, zone: &Zone, name: &str, token: &str) -> Envoy {
    refused(topo, zone, name, Some(token), &["Unauthenticated", "signed by key 1"]).await
}
