//! Faults found by the adversarial pass (`ADVERSARY.md` of branch `adv`),
//! each reproduced against the real global.

use std::time::Duration;

use meridian_tests::{Backend, Topology, json_api::eventually};
use reqwest::{Method, StatusCode};
use serde_json::json;

/// A `text/plain` POST as a browser sends it for a page of `origin`: a
/// "simple" cross-origin request, sent without a CORS preflight.
async fn browser_post(api: &str, path: &str, origin: Option<&str>, body: &str) -> (StatusCode, String) {
    let mut req = reqwest::Client::new()
        .post(format!("{api}{path}"))
        .header(reqwest::header::CONTENT_TYPE, "text/plain;charset=UTF-8")
        .body(body.to_string());
    if let Some(o) = origin {
        req = req.header(reqwest::header::ORIGIN, o);
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("POST {path}: {e}"));
    (resp.status(), resp.text().await.unwrap_or_default())
}

/// F8: a page of another site rotated the signing keys and minted zone
/// tokens through the browser of someone on the global's host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_posts_get_no_loopback_trust() {
    let topo = Topology::builder("hardening-csrf").global(Backend::Sqlite).mesh("default").start().await;
    let api = topo.global().api_url().trim_end_matches('/').to_string();
    let serials = |body: &str| -> usize {
        serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["serials"].as_array().map(Vec::len))
            .unwrap_or_default()
    };

    for origin in ["http://evil.example", "null"] {
        let (st, text) = browser_post(&api, "/tokens/dataplane/signing-keys", Some(origin), "x").await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "key rotation from a page of {origin}: {text}");
        assert!(text.contains("another site"), "{text}");
        let (st, text) =
            browser_post(&api, "/tokens/zone", Some(origin), r#"{"zone": "evil-zone", "validFor": "8760h"}"#).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "zone token for a page of {origin}: {text}");
    }
    // The same request from this host's own pages (and from clients that
    // send no Origin, meridianctl) is trusted: nothing else changed.
    let own = format!("http://{}", topo.global().api_addr());
    let (st, text) = browser_post(&api, "/tokens/dataplane/signing-keys", Some(&own), "x").await;
    assert_eq!(st, StatusCode::OK, "{text}");
    assert_eq!(serials(&text), 2, "only this rotation happened: {text}");
    let (st, text) = browser_post(&api, "/tokens/dataplane/signing-keys", None, "x").await;
    assert_eq!(st, StatusCode::OK, "{text}");
    assert_eq!(serials(&text), 3, "{text}");
    topo.cleanup().await;
}

/// F4: every invented HTTP method added 16 series to `/metrics`, for anyone
/// reaching the API port, without a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_methods_add_no_metric_series() {
    let topo = Topology::builder("hardening-method-labels").global(Backend::Sqlite).start().await;
    let g = topo.global();
    let anonymous = g.http();
    for i in 0..20 {
        let method = Method::from_bytes(format!("FOO{i}").as_bytes()).expect("method");
        let reply = anonymous.request(method, "/", None, &[("Host", "evil.example")]).await;
        assert_eq!(reply.status, 405, "{}", reply.text);
    }
    let metrics = reqwest::get(format!("{}/metrics", g.diagnostics_url()))
        .await
        .expect("diagnostics")
        .text()
        .await
        .expect("metrics text");
    assert!(!metrics.contains("FOO"), "an invented method is a label value:\n{metrics}");
    let other = metrics
        .lines()
        .find(|l| l.starts_with("meridian_api_requests_total{") && l.contains("method=\"other\"") && l.contains("405"))
        .unwrap_or_else(|| panic!("no method=\"other\" series:\n{metrics}"));
    assert!(other.ends_with(" 20"), "{other}");
    topo.cleanup().await;
}

/// F1: a Mesh asking for a root CA valid 100000 years made the global panic
/// ("overflow adding duration to date") and panic again on every start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_ca_lifetime_past_year_9999_keeps_the_global_up() {
    let topo = Topology::builder("hardening-ca-lifetime").global(Backend::Sqlite).start().await;
    let g = topo.global();
    g.api()
        .apply(&json!({
            "type": "Mesh", "name": "far",
            "mtls": {"enabledBackend": "ca-1", "backends": [
                {"name": "ca-1", "type": "builtin", "conf": {"caCert": {"expiration": "100000y"}}}
            ]}
        }))
        .await;
    let root = "/global-secrets/far.ca-builtin-root-ca-1";
    eventually("the mesh's root CA is made", Duration::from_secs(60), || async {
        g.api().find(root).await.ok().flatten().ok_or_else(|| "not yet".to_string())
    })
    .await;
    g.restart().await;
    let ready = g.http().get("/ready").await;
    assert_eq!(ready.status, 200, "the restarted global is ready: {}", ready.text);
    assert!(!g.stderr().contains("panicked"), "{}", g.stderr());
    topo.cleanup().await;
}

/// F9: a wrong token was accepted on reads (`GET /meshes` answered 200), so
/// `meridianctl --token typo get meshes` succeeded and the typo showed only
/// at the first write. A presented token now decides alone, reads included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_on_reads() {
    let topo = Topology::builder("hardening-wrong-token").global(Backend::Sqlite).mesh("default").start().await;
    let global = topo.global();
    let wrong = global.http().with_token(Some("wrong"));
    // From loopback under a loopback Host (trusted without a token), and
    // under another host name (as a caller elsewhere names the API).
    for host in [None, Some("gateway-admin.example:5681")] {
        let headers: Vec<(&str, &str)> = host.map(|h| ("Host", h)).into_iter().collect();
        for path in ["/meshes", "/meshes/default", "/meshes/default/meshgateways", "/meshes/default/dataplanes", "/"] {
            let r = wrong.request(Method::GET, path, None, &headers).await;
            assert_eq!(r.status, 401, "GET {path} (Host {host:?}) with a wrong token: {}", r.text);
            assert!(r.text.contains("admin token is not valid"), "GET {path}: {}", r.text);
            let r = global.admin_http().request(Method::GET, path, None, &headers).await;
            assert_eq!(r.status, 200, "GET {path} (Host {host:?}) with the admin token: {}", r.text);
        }
    }
    let basic = global.http().request(Method::GET, "/meshes", None, &[("Authorization", "Basic YTpi")]).await;
    assert_eq!(basic.status, 401, "{}", basic.text);
    assert!(basic.text.contains("not a bearer token"), "{}", basic.text);
    // No token from loopback: reads stay open, as documented.
    let r = global.http().request(Method::GET, "/meshes", None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let out = global.ctl().args(["--token", "typo", "get", "meshes"]).run().await.expect_code(1);
    assert!(out.stderr.contains("admin token is not valid"), "{}", out.stderr);
    let out = global.ctl().args(["--token", global.admin_token(), "get", "meshes"]).run().await.ok();
    assert!(out.stdout.lines().any(|l| l.starts_with("default ")), "{}", out.stdout);
    topo.cleanup().await;
}

/// A zone passed its ZoneIngress off as another zone's: the global stored
/// a ZoneIngress from zone-1 whose `zone` said `zone-2`, and the other
/// zones took that as the locality of the services it announces. The
/// global now NACKs it (naming the field) and stores nothing; the zone's
/// own ingress (or one with no `zone`) is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_cannot_send_an_ingress_of_another_zone() {
    use meridian_tests::raw_kds::{self, DeltaDiscoveryResponse, RawKds};
    let topo = Topology::builder("hardening-ingress-zone").global(Backend::Sqlite).mesh("default").start().await;
    let g = topo.global();
    let token = g.zone_token("zone-1").await;
    let raw = RawKds::connect(&g.kds_url(), g.ca(), "zone-1", Some(&token)).await;
    let (tx, mut rx) = raw.zone_to_global().await.expect("zone-to-global stream");
    for _ in 0..4 {
        raw_kds::next(&mut rx, Duration::from_secs(30)).await;
    }
    let ingress = |name: &str, zone: &str| {
        let v = json!({"type": "ZoneIngress", "name": name, "zone": zone,
            "networking": {"address": "10.0.0.9", "advertisedAddress": "10.0.0.9", "port": 10001, "advertisedPort": 10001},
            "availableServices": [{"mesh": "default", "instances": 1, "tags": {"kuma.io/service": "web"}}]});
        let spec = meridian_sync_proto::universal::from_value(v).expect("a ZoneIngress").spec.encode();
        raw_kds::resource("", name, "v1", raw_kds::envelope("ZoneIngress", "", name, "v1", &[], spec))
    };
    let resp = DeltaDiscoveryResponse {
        type_url: "ZoneIngress".into(),
        resources: vec![ingress("spoofed", "zone-2"), ingress("own", "zone-1"), ingress("unnamed", "")],
        nonce: "n-1".into(),
        ..Default::default()
    };
    tx.send(resp).await.expect("send");
    let nack = raw_kds::next(&mut rx, Duration::from_secs(30)).await;
    assert_eq!(nack.response_nonce, "n-1");
    let reason = nack.error_detail.expect("a NACK").message;
    assert!(
        reason.contains("spoofed")
            && reason.contains("zone: is \"zone-2\", but the ZoneIngress comes from zone \"zone-1\""),
        "the NACK names the spoofed ingress and its field: {reason}"
    );
    assert_eq!(reason.split("; ").count(), 1, "only the spoofed one: {reason}");
    for ok in ["zone-1.own", "zone-1.unnamed"] {
        g.api().wait_for(&format!("/zoneingresses/{ok}"), "stored", |_| true).await;
    }
    assert!(
        g.api().find("/zoneingresses/zone-1.spoofed").await.expect("API").is_none(),
        "the spoofed one is not stored"
    );
    topo.cleanup().await;
}

/// A Dataplane-token holder became the zone's admin through a gateway:
/// it registered its Dataplane (with its own token) at `127.0.0.1` on the
/// zone API's port, the gateway Envoy on the same host routed `app` there,
/// and a request sent to the gateway with `Host: localhost` reached the
/// API from loopback under a loopback Host, which was admin without a
/// token (Secrets listed, every write allowed). A relayed request (Envoy
/// adds `x-forwarded-proto` and `x-envoy-*`) now gets no loopback trust.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_does_not_relay_loopback_trust() {
    use meridian_tests::{resources, traffic::free_port};
    let topo = Topology::builder("hardening-relayed-loopback")
        .global(Backend::Sqlite)
        .mesh("default")
        .zone("zone-1")
        .gateway("zone-1", "edge-gw", "edge")
        .start()
        .await;
    let (global, zone, envoy) = (topo.global(), topo.zone("zone-1"), topo.envoy("edge-gw"));
    let port = free_port();
    global.api().apply_yaml(&resources::gateway_and_route_yaml(port, "/", "app")).await;

    // The attacker: the token of Dataplane app-1, nothing more.
    let token = zone.dataplane_token("app-1").await.expect("a Dataplane token");
    let api_port = zone.api_url().rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse::<u16>().ok());
    let api_port = api_port.expect("the zone API's port");
    let dp = json!({"type": "Dataplane", "mesh": "default", "name": "app-1",
        "networking": {"address": "127.0.0.1", "inbound": [{"port": api_port, "tags": {"kuma.io/service": "app"}}]}});
    let r = reqwest::Client::new()
        .put(format!("{}/meshes/default/dataplanes/app-1", zone.api_url()))
        .bearer_auth(token.trim())
        .json(&dp)
        .send()
        .await
        .expect("register app-1");
    assert!(r.status().is_success(), "the token registers its Dataplane: {}", r.status());

    // Through the gateway, the zone API answers (the relay works) ...
    eventually("the gateway relays to the zone API", Duration::from_secs(60), || async {
        let r = envoy.get(port, "localhost", "/meshes").await?;
        if r.status == 200 && r.body.contains("\"items\"") { Ok(()) } else { Err(format!("{} {}", r.status, r.body)) }
    })
    .await;
    // ... but not as the admin.
    for path in ["/meshes/default/secrets", "/config"] {
        let r = envoy.get(port, "localhost", path).await.expect("a request through the gateway");
        assert_eq!(r.status, 401, "GET {path} relayed by the gateway with Host: localhost: {} {}", r.status, r.body);
    }
    // The zone's own loopback callers keep their trust.
    let r = reqwest::Client::new().get(format!("{}/meshes/default/secrets", zone.api_url())).send().await.expect("GET");
    assert_eq!(r.status(), 200, "a loopback caller of the zone API itself");
    topo.cleanup().await;
}
