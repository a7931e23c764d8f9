//! HTTP routing through a state-of-the-world Envoy: path, method, header
//! and query matches, weights, header filters, redirects, rewrites, mirror,
//! and 500 for a backend that resolves to nothing.

use std::collections::BTreeMap;

use meridian_tests::{
    Envoy, Topology, WAIT, XdsMode, eventually,
    process::envoy_binary,
    traffic::{self, Reply, free_port, get, request},
};

fn routes(port: u16, regex_port: u16) -> String {
    format!(
        r#"
type: MeshGateway
mesh: default
name: gw
selectors: [{{match: {{kuma.io/service: gw}}}}]
conf:
  listeners:
  - {{port: {port}, protocol: HTTP, tags: {{l: main}}}}
  - {{port: {regex_port}, protocol: HTTP, tags: {{l: regex}}}}
---
type: MeshGatewayRoute
mesh: default
name: regex
selectors: [{{match: {{kuma.io/service: gw, l: regex}}}}]
conf:
  http:
    rules:
    - matches: [{{path: {{match: REGEX, value: "^/re/[0-9]+$"}}}}]
      backends: [{{destination: {{kuma.io/service: regex}}}}]
    - matches: [{{path: {{match: PREFIX, value: /re/x}}}}]
      backends: [{{destination: {{kuma.io/service: root}}}}]
---
type: MeshGatewayRoute
mesh: default
name: matches
selectors: [{{match: {{kuma.io/service: gw, l: main}}}}]
conf:
  http:
    rules:
    - matches: [{{path: {{match: PREFIX, value: /}}}}]
      backends: [{{destination: {{kuma.io/service: root}}}}]
    - matches: [{{path: {{match: PREFIX, value: /api}}}}]
      backends: [{{destination: {{kuma.io/service: api}}}}]
    - matches: [{{path: {{match: EXACT, value: /api/exact}}}}]
      backends: [{{destination: {{kuma.io/service: exact}}}}]
    - matches: [{{path: {{match: REGEX, value: "^/re/[0-9]+$"}}}}]
      backends: [{{destination: {{kuma.io/service: regex}}}}]
    - matches: [{{path: {{match: PREFIX, value: /m}}, method: POST}}]
      backends: [{{destination: {{kuma.io/service: method}}}}]
    - matches:
      - path: {{match: PREFIX, value: /h}}
        headers: [{{match: EXACT, name: x-exact, value: "yes"}}, {{match: REGEX, name: x-regex, value: "^v[0-9]$"}}]
      - path: {{match: PREFIX, value: /h}}
        headers: [{{match: PRESENT, name: x-present}}]
      - path: {{match: PREFIX, value: /h}}
        headers: [{{match: ABSENT, name: x-absent}}]
      backends: [{{destination: {{kuma.io/service: headers}}}}]
    - matches:
      - path: {{match: PREFIX, value: /q}}
        queryParameters: [{{match: EXACT, name: mode, value: fast}}, {{match: REGEX, name: id, value: "^[a-z]+$"}}]
      backends: [{{destination: {{kuma.io/service: query}}}}]
---
type: MeshGatewayRoute
mesh: default
name: more
selectors: [{{match: {{kuma.io/service: gw, l: main}}}}]
conf:
  http:
    rules:
    - matches: [{{path: {{match: PREFIX, value: /split}}}}]
      backends:
      - {{weight: 90, destination: {{kuma.io/service: web, version: v1}}}}
      - {{weight: 10, destination: {{kuma.io/service: web, version: v2}}}}
    - matches: [{{path: {{match: PREFIX, value: /headers}}}}]
      filters:
      - requestHeader:
          set: [{{name: x-set, value: one}}, {{name: Host, value: rewritten.example.com}}]
          add: [{{name: x-add, value: two}}]
          remove: [x-remove]
      - responseHeader:
          set: [{{name: x-resp, value: three}}]
      backends: [{{destination: {{kuma.io/service: echo}}}}]
    - matches: [{{path: {{match: PREFIX, value: /redirect}}}}]
      filters: [{{redirect: {{scheme: https, hostname: example.org, statusCode: 301}}}}]
    - matches: [{{path: {{match: EXACT, value: /moved}}}}]
      filters: [{{redirect: {{hostname: example.org, port: 8443, statusCode: 308, path: {{replaceFull: /new}}}}}}]
    - matches: [{{path: {{match: PREFIX, value: /old}}}}]
      filters: [{{rewrite: {{replacePrefixMatch: /new}}}}]
      backends: [{{destination: {{kuma.io/service: echo}}}}]
    - matches: [{{path: {{match: PREFIX, value: /full}}}}]
      filters: [{{rewrite: {{replaceFull: /replaced}}}}]
      backends: [{{destination: {{kuma.io/service: echo}}}}]
    - matches: [{{path: {{match: PREFIX, value: /mirror}}}}]
      filters: [{{mirror: {{backend: {{destination: {{kuma.io/service: mirror}}}}, percentage: 100}}}}]
      backends: [{{destination: {{kuma.io/service: echo}}}}]
    - matches: [{{path: {{match: PREFIX, value: /nothing}}}}]
      backends: [{{destination: {{kuma.io/service: nowhere}}}}]
"#
    )
}

async fn backend_of(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> String {
    request(port, method, "any.example.com", path, headers).await.map(|r| r.backend()).unwrap_or_else(|e| e)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_matches_weights_and_filters_over_sotw() {
    envoy_binary();
    let names = ["root", "api", "exact", "regex", "method", "headers", "query", "echo", "mirror"];
    let mut backends = BTreeMap::new();
    for n in names {
        backends.insert(n, traffic::http_backend(n).await);
    }
    let v1 = traffic::http_backend("v1").await;
    let v2 = traffic::http_backend("v2").await;
    let topo = Topology::builder("e2e-routing").zone("zone").start().await;
    let zone = topo.zone("zone");
    zone.api().apply_yaml(traffic::MESH).await;
    let inbounds: Vec<(u16, &str)> = backends.iter().map(|(n, b)| (b.port, *n)).collect();
    zone.api().apply_yaml(&traffic::backend_dataplane("backends", &inbounds)).await;
    let versions = serde_json::json!({"type": "Dataplane", "mesh": "default", "name": "web",
        "networking": {"address": "127.0.0.1", "inbound": [
            {"port": v1.port, "tags": {"kuma.io/service": "web", "version": "v1"}},
            {"port": v2.port, "tags": {"kuma.io/service": "web", "version": "v2"}}]}});
    zone.api().apply_yaml(&versions.to_string()).await;
    let (port, regex_port) = (free_port(), free_port());
    zone.api().apply_yaml(&routes(port, regex_port)).await;
    zone.api().apply_yaml(&traffic::gateway_dataplane("gw-1", "gw")).await;
    let envoy = Envoy::start(topo.dir(), zone, "gw-1", XdsMode::Sotw).await;
    envoy.wait_ready().await;
    eventually("the route table is served", WAIT, || async {
        let b = backend_of(port, "GET", "/api/x", &[]).await;
        if b == "api" { Ok(()) } else { Err(b) }
    })
    .await;

    // Paths: exact, element-wise prefix, regex; then method, headers, query.
    for (method, path, headers, want) in [
        ("GET", "/", &[][..], "root"),
        ("GET", "/api", &[], "api"),
        ("GET", "/api/x", &[], "api"),
        ("GET", "/apix", &[], "root"),
        ("GET", "/api/exact", &[], "exact"),
        ("GET", "/api/exact/more", &[], "api"),
        // Regex paths sort after prefixes: the catch-all `/` wins here.
        ("GET", "/re/123", &[], "root"),
        ("POST", "/m", &[], "method"),
        ("GET", "/m", &[], "root"),
        ("GET", "/h", &[("x-absent", "1"), ("x-exact", "yes"), ("x-regex", "v7")], "headers"),
        ("GET", "/h", &[("x-absent", "1"), ("x-exact", "yes"), ("x-regex", "vv")], "root"),
        ("GET", "/h", &[("x-absent", "1"), ("x-present", "")], "headers"),
        ("GET", "/h", &[("x-absent", "1")], "root"),
        ("GET", "/h", &[], "headers"),
        ("GET", "/q?mode=fast&id=abc", &[], "query"),
        ("GET", "/q?mode=slow&id=abc", &[], "root"),
        ("GET", "/q?mode=fast&id=123", &[], "root"),
    ] {
        assert_eq!(backend_of(port, method, path, headers).await, want, "{method} {path} {headers:?}");
    }

    // Regex paths where no prefix shadows them (prefixes still go first).
    assert_eq!(backend_of(regex_port, "GET", "/re/123", &[]).await, "regex");
    assert_eq!(backend_of(regex_port, "GET", "/re/x/12", &[]).await, "root");
    assert_eq!(request(regex_port, "GET", "h", "/re/abc", &[]).await.expect("regex").status, 404);

    // Weights 90/10 over 1,000 requests.
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..1000 {
        *counts.entry(backend_of(port, "GET", "/split", &[]).await).or_default() += 1;
    }
    let (n1, n2) = (counts.get("v1").copied().unwrap_or(0), counts.get("v2").copied().unwrap_or(0));
    assert_eq!(n1 + n2, 1000, "{counts:?}");
    assert!((50..=160).contains(&n2), "v2 should get about 10%: {counts:?}");

    // Header filters and the Host rewrite, as the backend saw them.
    let r = request(port, "GET", "any.example.com", "/headers", &[("x-remove", "secret"), ("x-set", "zero")])
        .await
        .expect("headers");
    let echo = r.echo().expect("echo");
    let seen = &echo["headers"];
    assert_eq!(echo["name"], "echo");
    assert_eq!(seen["x-set"], "one", "{echo}");
    assert_eq!(seen["x-add"], "two", "{echo}");
    assert!(seen.get("x-remove").is_none(), "{echo}");
    assert_eq!(seen["host"], "rewritten.example.com", "{echo}");
    assert_eq!(r.headers.get("x-resp").map(String::as_str), Some("three"), "{r:?}");

    // Redirects: status, Location, query stripped; a scheme without a port
    // goes to the scheme's port (Gateway API), not the listener's.
    let r = get(port, "any.example.com", "/redirect/x?a=1").await.expect("redirect");
    assert_eq!(r.status, 301, "{r:?}");
    assert_eq!(r.headers.get("location").map(String::as_str), Some("https://example.org:443/redirect/x"));
    let r = get(port, "any.example.com", "/moved").await.expect("moved");
    assert_eq!(r.status, 308, "{r:?}");
    assert_eq!(r.headers.get("location").map(String::as_str), Some("http://example.org:8443/new"));

    // Rewrites as the backend saw them.
    let path_seen = |r: Reply| r.echo().ok().and_then(|e| e["path"].as_str().map(str::to_string)).unwrap_or_default();
    assert_eq!(path_seen(get(port, "h", "/old/thing?x=1").await.expect("old")), "/new/thing?x=1");
    assert_eq!(path_seen(get(port, "h", "/old").await.expect("old")), "/new");
    assert_eq!(path_seen(get(port, "h", "/full/x?q=1").await.expect("full")), "/replaced?q=1");

    // Mirror: the echo answers, the mirror backend gets a copy.
    assert_eq!(backend_of(port, "GET", "/mirror/1", &[]).await, "echo");
    let mirror = backends["mirror"].seen.clone();
    eventually("the mirror backend sees the request", WAIT, || async {
        let seen = mirror.lock().map(|s| s.clone()).unwrap_or_default();
        if seen.iter().any(|e| e["path"] == "/mirror/1") { Ok(()) } else { Err(format!("{seen:?}")) }
    })
    .await;

    // A backend that resolves to nothing: 500.
    assert_eq!(get(port, "h", "/nothing").await.expect("nothing").status, 500);

    // Every response was accepted: no NACK in the insight.
    let insight = zone.api().fetch("/meshes/default/dataplane-insights/gw-1").await.expect("insight");
    let status = &insight["subscriptions"][0]["status"];
    assert!(status.get("lastNackReason").is_none(), "{insight}");
    drop(envoy);
    let _ = zone.sigterm().await;
}
