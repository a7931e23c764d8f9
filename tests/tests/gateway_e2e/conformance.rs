//! The incumbent's builtin-gateway cases (Kuma 2.14,
//! `pkg/plugins/runtime/gateway/gateway_route_generator_test.go` and its
//! users' reports), replayed through a real Envoy with real requests.
//!
//! - Hostname merging on one port: a listener with a hostname and a
//!   wildcard listener whose routes name hostnames (Kuma's "should
//!   distribute routes across wildcard listener" and "should create a
//!   wildcard virtual host"); a route for `*.test` joins every narrower host
//!   (kumahq/kuma#3959). Where Meridian does better than the incumbent
//!   (README, "Gateway semantics: where Meridian and the incumbent
//!   differ"): routes without hostnames still answer on the hosts a
//!   wildcard listener's routes name, and `*.shop.test` covers neither
//!   `shop.test` nor `badshop.test` (the incumbent joins hosts by a bare
//!   suffix test).
//! - Redirects with `replacePrefixMatch` (Kuma's
//!   "should be able to rewrite a prefix", redirect half): the exact half
//!   and the prefix half of an element-wise prefix, query stripped, the
//!   listener's port when the redirect names neither port nor scheme, the
//!   scheme's well-known port when it names a scheme only (Gateway API;
//!   the incumbent keeps the listener's port there, fixed in its
//!   MeshHTTPRoute by kumahq/kuma#9669).

use meridian_tests::{
    Envoy, Topology, WAIT, XdsMode, eventually,
    process::envoy_binary,
    traffic::{self, free_port, get},
};

/// Services of the hostname case, one backend each.
const SERVICES: [&str; 5] = ["own", "named", "wild", "plain", "sub"];

fn hostname_routes(port: u16) -> String {
    format!(
        r#"
type: MeshGateway
mesh: default
name: gw
selectors: [{{match: {{kuma.io/service: gw}}}}]
conf:
  listeners:
  - {{port: {port}, protocol: HTTP, hostname: shop.test, tags: {{l: shop}}}}
  - {{port: {port}, protocol: HTTP, tags: {{l: wild}}}}
---
# On the listener named shop.test.
type: MeshGatewayRoute
mesh: default
name: own
selectors: [{{match: {{kuma.io/service: gw, l: shop}}}}]
conf:
  http:
    rules:
    - matches: [{{path: {{match: EXACT, value: /v2}}}}]
      backends: [{{destination: {{kuma.io/service: own}}}}]
---
# On the wildcard listener, naming the other listener's host and a new one.
type: MeshGatewayRoute
mesh: default
name: named
selectors: [{{match: {{kuma.io/service: gw, l: wild}}}}]
conf:
  http:
    hostnames: [shop.test, extra.test]
    rules:
    - matches: [{{path: {{match: EXACT, value: /}}}}]
      backends: [{{destination: {{kuma.io/service: named}}}}]
---
type: MeshGatewayRoute
mesh: default
name: wild
selectors: [{{match: {{kuma.io/service: gw, l: wild}}}}]
conf:
  http:
    hostnames: ["*.test"]
    rules:
    - matches: [{{path: {{match: PREFIX, value: /wild}}}}]
      backends: [{{destination: {{kuma.io/service: wild}}}}]
---
type: MeshGatewayRoute
mesh: default
name: sub
selectors: [{{match: {{kuma.io/service: gw, l: wild}}}}]
conf:
  http:
    hostnames: ["*.shop.test"]
    rules:
    - matches: [{{path: {{match: PREFIX, value: /sub}}}}]
      backends: [{{destination: {{kuma.io/service: sub}}}}]
---
# No hostnames: every host of the wildcard listener.
type: MeshGatewayRoute
mesh: default
name: plain
selectors: [{{match: {{kuma.io/service: gw, l: wild}}}}]
conf:
  http:
    rules:
    - matches: [{{path: {{match: PREFIX, value: /plain}}}}]
      backends: [{{destination: {{kuma.io/service: plain}}}}]
    - matches: [{{path: {{match: PREFIX, value: /old}}}}]
      filters: [{{redirect: {{path: {{replacePrefixMatch: /new}}, statusCode: 302}}}}]
    - matches: [{{path: {{match: PREFIX, value: /gone/}}}}]
      filters: [{{redirect: {{scheme: https, hostname: moved.test, path: {{replacePrefixMatch: /}}, statusCode: 301}}}}]
    - matches: [{{path: {{match: PREFIX, value: /secure}}}}]
      filters: [{{redirect: {{scheme: https, statusCode: 308}}}}]
    - matches: [{{path: {{match: PREFIX, value: /plainhttp}}}}]
      filters: [{{redirect: {{scheme: http, hostname: www.test, statusCode: 302}}}}]
    - matches: [{{path: {{match: PREFIX, value: /elsewhere}}}}]
      filters: [{{redirect: {{scheme: https, port: 8443, statusCode: 302}}}}]
"#
    )
}

/// The backend that answered, `404`-style status text when none did.
async fn who(port: u16, host: &str, path: &str) -> String {
    get(port, host, path).await.map(|r| r.backend()).unwrap_or_else(|e| e)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostnames_merge_across_listeners_and_prefix_redirects() {
    envoy_binary();
    let mut backends = Vec::new();
    for s in SERVICES {
        backends.push(traffic::http_backend(s).await);
    }
    let topo = Topology::builder("e2e-conformance").zone("zone").start().await;
    let zone = topo.zone("zone");
    zone.api().apply_yaml(traffic::MESH).await;
    for (b, s) in backends.iter().zip(SERVICES) {
        zone.api().apply_yaml(&traffic::backend_dataplane(&format!("{s}-1"), &[(b.port, s)])).await;
    }
    let port = free_port();
    zone.api().apply_yaml(&hostname_routes(port)).await;
    zone.api().apply_yaml(&traffic::gateway_dataplane("gw-1", "gw")).await;
    let envoy = Envoy::start(topo.dir(), zone, "gw-1", XdsMode::Delta).await;
    envoy.wait_ready().await;
    eventually("the route table is served", WAIT, || async {
        let b = who(port, "shop.test", "/v2").await;
        if b == "own" { Ok(()) } else { Err(b) }
    })
    .await;

    // (Host, path) → the backend that must answer, or the status.
    let table: &[(&str, &str, &str)] = &[
        // The listener's own route, and the wildcard listener's route that
        // names its host: one virtual host holds both (Kuma: same).
        ("shop.test", "/v2", "own"),
        ("shop.test", "/", "named"),
        // `*.test` joins the narrower hosts (kumahq/kuma#3959; Kuma: same).
        ("shop.test", "/wild/x", "wild"),
        ("extra.test", "/wild", "wild"),
        ("other.test", "/wild", "wild"),
        // A host only a route names gets its own virtual host (Kuma: same).
        ("extra.test", "/", "named"),
        // Routes without hostnames stay on the wildcard listener's hosts,
        // the ones its routes name included (Kuma: 404 on extra.test and
        // a.shop.test, whose implicit virtual hosts start empty).
        ("extra.test", "/plain", "plain"),
        ("a.shop.test", "/plain", "plain"),
        ("anything.example", "/plain", "plain"),
        // ...but not on a host another listener owns (Kuma: same).
        ("shop.test", "/plain", "404"),
        // A route for `*.shop.test` covers subdomains only (Kuma joins
        // `shop.test` itself, by suffix).
        ("a.shop.test", "/sub", "sub"),
        ("x.y.shop.test", "/sub", "sub"),
        ("shop.test", "/sub", "404"),
        ("badshop.test", "/sub", "404"),
        // Named hosts do not leak to others.
        ("anything.example", "/", "404"),
    ];
    let mut wrong = Vec::new();
    for (host, path, want) in table {
        let got = match get(port, host, path).await {
            Ok(r) if r.status == 200 => r.backend(),
            Ok(r) => r.status.to_string(),
            Err(e) => e,
        };
        if got != *want {
            wrong.push(format!("{host}{path}: want {want}, got {got}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");

    // Redirects with replacePrefixMatch: the exact half and the prefix half
    // of PREFIX /old; the query is stripped; no port in the redirect means
    // the listener's.
    for (path, location) in [
        ("/old", format!("http://extra.test:{port}/new")),
        ("/old/", format!("http://extra.test:{port}/new/")),
        ("/old/a/b?q=1", format!("http://extra.test:{port}/new/a/b")),
    ] {
        let r = get(port, "extra.test", path).await.expect("redirect");
        assert_eq!(r.status, 302, "{path}: {r:?}");
        assert_eq!(r.headers.get("location"), Some(&location), "{path}: {r:?}");
    }
    // `/oldx` is not under the element-wise prefix `/old`.
    assert_eq!(get(port, "extra.test", "/oldx").await.expect("oldx").status, 404);
    // PREFIX `/gone/` (trailing slash: the same prefix as `/gone`) with
    // replacePrefixMatch `/`: the prefix is dropped, one slash kept.
    // A redirect that names a scheme and no port goes to the scheme's
    // well-known port (Envoy writes it: `:443`, which Gateway API's
    // conformance accepts); the incumbent keeps the listener's port:
    // `https://moved.test:<listener port>/`, a port that does not speak TLS.
    for (path, status, location) in [
        ("/gone", 301, "https://moved.test:443/".to_string()),
        ("/gone/", 301, "https://moved.test:443/".to_string()),
        ("/gone/x/y", 301, "https://moved.test:443/x/y".to_string()),
        ("/secure/x?q=1", 308, "https://extra.test:443/secure/x".to_string()),
        ("/plainhttp", 302, "http://www.test:80/plainhttp".to_string()),
        ("/elsewhere/x", 302, "https://extra.test:8443/elsewhere/x".to_string()),
    ] {
        let r = get(port, "extra.test", path).await.expect("redirect");
        assert_eq!(r.status, status, "{path}: {r:?}");
        assert_eq!(r.headers.get("location"), Some(&location), "{path}: {r:?}");
    }
    drop(envoy);
    let _ = zone.sigterm().await;
}
