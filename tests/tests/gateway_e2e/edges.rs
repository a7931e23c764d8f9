//! Routing edges a user migrating from Kuma meets (issue 9, "Routing"),
//! each through a real Envoy with real requests; the generated
//! configuration of the same shapes is in the golden cases
//! `zone/testdata/golden/routing-edges` and `backends`.
//!
//! - an EXACT rule beats the exact half of a PREFIX for the same path,
//!   whichever comes first;
//! - `replacePrefixMatch`, every combination of prefix (root, with and
//!   without a trailing slash) and replacement (with and without a trailing
//!   slash, and `/`): request path → the path the backend received;
//! - `Host` with a port picks the virtual host by name and reaches the
//!   backend unchanged, over HTTP/1.1 and h2 (prior knowledge);
//! - 503 `no healthy upstream` for a known service without a healthy
//!   endpoint, 500 only for a destination that names no service; the zone
//!   logs each warning once per generation, not per request.

use std::{net::SocketAddr, time::Duration};

use meridian_tests::{
    Envoy, Topology, WAIT, XdsMode, eventually,
    process::envoy_binary,
    traffic::{self, Reply, free_port, get},
};

/// Prefixes (as written) and replacements of the rewrite table.
const PREFIXES: [(&str, &str); 3] = [("root", "/"), ("p", "/p"), ("p-slash", "/p/")];
const REPLACEMENTS: [(&str, &str); 3] = [("ab", "/a/b"), ("ab-slash", "/a/b/"), ("root", "/")];

/// The virtual host of one combination.
fn host(prefix: &str, replacement: &str) -> String {
    format!("rw-{prefix}-to-{replacement}.example.com")
}

fn edge_routes(port: u16) -> String {
    let mut out = format!(
        r#"
type: MeshGateway
mesh: default
name: gw
selectors: [{{match: {{kuma.io/service: gw}}}}]
conf: {{listeners: [{{port: {port}, protocol: HTTP}}]}}
---
type: MeshGatewayRoute
mesh: default
name: prefix-first
selectors: [{{match: {{kuma.io/service: gw}}}}]
conf:
  http:
    hostnames: [prefix-first.example.com]
    rules:
    - matches: [{{path: {{match: PREFIX, value: /go}}}}]
      backends: [{{destination: {{kuma.io/service: prefix}}}}]
    - matches: [{{path: {{match: EXACT, value: /go}}}}]
      backends: [{{destination: {{kuma.io/service: exact}}}}]
---
type: MeshGatewayRoute
mesh: default
name: exact-first
selectors: [{{match: {{kuma.io/service: gw}}}}]
conf:
  http:
    hostnames: [exact-first.example.com]
    rules:
    - matches: [{{path: {{match: EXACT, value: /go}}}}]
      backends: [{{destination: {{kuma.io/service: exact}}}}]
    - matches: [{{path: {{match: PREFIX, value: /go/}}}}]
      backends: [{{destination: {{kuma.io/service: prefix}}}}]
"#
    );
    for (pn, p) in PREFIXES {
        for (rn, r) in REPLACEMENTS {
            out.push_str(&format!(
                r#"---
type: MeshGatewayRoute
mesh: default
name: rw-{pn}-to-{rn}
selectors: [{{match: {{kuma.io/service: gw}}}}]
conf:
  http:
    hostnames: [{host}]
    rules:
    - matches: [{{path: {{match: PREFIX, value: {p}}}}}]
      filters: [{{rewrite: {{replacePrefixMatch: {r}}}}}]
      backends: [{{destination: {{kuma.io/service: echo}}}}]
"#,
                host = host(pn, rn)
            ));
        }
    }
    out
}

/// What the backend saw as the path, or the status when no backend answered.
fn path_seen(r: Result<Reply, String>) -> String {
    match r {
        Ok(r) => {
            r.echo().ok().and_then(|e| e["path"].as_str().map(str::to_string)).unwrap_or(format!("<{}>", r.status))
        }
        Err(e) => e,
    }
}

/// The rewrite table: (prefix, replacement) → [(request path, upstream path)].
fn expected(prefix: &str, replacement: &str) -> Vec<(&'static str, String)> {
    let r = replacement.trim_end_matches('/');
    if prefix == "/" {
        // `/` → the replacement, `/x` → replacement + `/x`; the query stays.
        let to = |rest: &str| if r.is_empty() && rest.is_empty() { "/".to_string() } else { format!("{r}{rest}") };
        return vec![
            ("/", to("")),
            ("/?z=1", format!("{}?z=1", to(""))),
            ("/foo", to("/foo")),
            ("/foo/", to("/foo/")),
            ("/foo?z=1", format!("{}?z=1", to("/foo"))),
        ];
    }
    // `/p` and `/p/` are the same element-wise prefix.
    let exact = if r.is_empty() { "/".to_string() } else { r.to_string() };
    vec![
        ("/p", exact.clone()),
        ("/p?z=1", format!("{exact}?z=1")),
        ("/p/", format!("{r}/")),
        ("/p/foo", format!("{r}/foo")),
        ("/p/foo?z=1", format!("{r}/foo?z=1")),
        // Not under the prefix: this host has no other route.
        ("/pfoo", "<404>".to_string()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_over_prefix_and_every_prefix_rewrite() {
    envoy_binary();
    let prefix = traffic::http_backend("prefix").await;
    let exact = traffic::http_backend("exact").await;
    let echo = traffic::http_backend("echo").await;
    let topo = Topology::builder("e2e-edges-rewrite").zone("zone").start().await;
    let zone = topo.zone("zone");
    zone.api().apply_yaml(traffic::MESH).await;
    zone.api()
        .apply_yaml(&traffic::backend_dataplane(
            "backends",
            &[(prefix.port, "prefix"), (exact.port, "exact"), (echo.port, "echo")],
        ))
        .await;
    let port = free_port();
    zone.api().apply_yaml(&edge_routes(port)).await;
    zone.api().apply_yaml(&traffic::gateway_dataplane("gw-1", "gw")).await;
    let envoy = Envoy::start(topo.dir(), zone, "gw-1", XdsMode::Delta).await;
    envoy.wait_ready().await;
    eventually("the route table is served", WAIT, || async {
        let b = get(port, "exact-first.example.com", "/go").await.map(|r| r.backend()).unwrap_or_else(|e| e);
        if b == "exact" { Ok(()) } else { Err(b) }
    })
    .await;

    // 1. EXACT /go beats the exact half of PREFIX /go, in either order;
    //    the prefix keeps what is under it.
    for h in ["prefix-first.example.com", "exact-first.example.com"] {
        for (path, want) in [("/go", "exact"), ("/go?x=1", "exact"), ("/go/", "prefix"), ("/go/x", "prefix")] {
            let got = get(port, h, path).await.map(|r| r.backend()).unwrap_or_else(|e| e);
            assert_eq!(got, want, "{h} {path}");
        }
        assert_eq!(get(port, h, "/gox").await.expect("gox").status, 404, "{h} /gox");
    }

    // 2. Every prefix × replacement: request path → upstream path.
    let mut table = Vec::new();
    let mut wrong = Vec::new();
    for (pn, p) in PREFIXES {
        for (rn, r) in REPLACEMENTS {
            for (path, want) in expected(p, r) {
                let got = path_seen(get(port, &host(pn, rn), path).await);
                table.push(format!("PREFIX {p:<4} -> {r:<6} {path:<12} => {got}"));
                if got != want {
                    wrong.push(format!(
                        "PREFIX {p} replacePrefixMatch {r}: {path} reached the backend as {got}, want {want}"
                    ));
                }
            }
        }
    }
    assert!(table.len() >= 45, "{table:#?}");
    assert!(wrong.is_empty(), "{wrong:#?}\nall:\n{}", table.join("\n"));
    drop(envoy);
    let _ = zone.sigterm().await;
}

fn host_and_health_routes(port: u16) -> String {
    format!(
        r#"
type: MeshGateway
mesh: default
name: gw
selectors: [{{match: {{kuma.io/service: gw}}}}]
conf: {{listeners: [{{port: {port}, protocol: HTTP, hostname: app.example.com}}]}}
---
type: MeshGatewayRoute
mesh: default
name: app
selectors: [{{match: {{kuma.io/service: gw}}}}]
conf:
  http:
    rules:
    - matches: [{{path: {{match: PREFIX, value: /}}}}]
      backends: [{{destination: {{kuma.io/service: echo}}}}]
    - matches: [{{path: {{match: PREFIX, value: /sleepy}}}}]
      backends: [{{destination: {{kuma.io/service: sleepy}}}}]
    - matches: [{{path: {{match: PREFIX, value: /no-subset}}}}]
      backends: [{{destination: {{kuma.io/service: echo, version: v9}}}}]
    - matches: [{{path: {{match: PREFIX, value: /nothing}}}}]
      backends: [{{destination: {{kuma.io/service: nowhere}}}}]
---
type: Dataplane
mesh: default
name: sleepy-1
networking:
  address: 127.0.0.1
  inbound:
  - {{port: {sleepy}, tags: {{kuma.io/service: sleepy}}, health: {{ready: false}}}}
"#,
        sleepy = free_port()
    )
}

/// One h2 request with prior knowledge (h2c) to `http://<host>:<port><path>`,
/// `host` resolved to 127.0.0.1: `:authority` is `<host>:<port>`.
async fn h2_get(host: &str, port: u16, path: &str) -> Result<(reqwest::Version, serde_json::Value), String> {
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .resolve(host, SocketAddr::from(([127, 0, 0, 1], port)))
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let r = client.get(format!("http://{host}:{port}{path}")).send().await.map_err(|e| e.to_string())?;
    let version = r.version();
    let body = r.json::<serde_json::Value>().await.map_err(|e| e.to_string())?;
    Ok((version, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_port_is_forwarded_and_missing_endpoints_answer_503() {
    envoy_binary();
    let echo = traffic::http_backend("echo").await;
    let topo = Topology::builder("e2e-edges-host").zone("zone").start().await;
    let zone = topo.zone("zone");
    zone.api().apply_yaml(traffic::MESH).await;
    zone.api().apply_yaml(&traffic::backend_dataplane("echo-1", &[(echo.port, "echo")])).await;
    let port = free_port();
    zone.api().apply_yaml(&host_and_health_routes(port)).await;
    zone.api().apply_yaml(&traffic::gateway_dataplane("gw-1", "gw")).await;
    let envoy = Envoy::start(topo.dir(), zone, "gw-1", XdsMode::Delta).await;
    envoy.wait_ready().await;
    eventually("the route table is served", WAIT, || async {
        let b = get(port, "app.example.com", "/").await.map(|r| r.backend()).unwrap_or_else(|e| e);
        if b == "echo" { Ok(()) } else { Err(b) }
    })
    .await;

    // 3. The port does not count when picking the virtual host, and the
    //    backend sees the Host as sent.
    for h in ["app.example.com", "app.example.com:8080", "app.example.com:1"] {
        let r = get(port, h, "/x").await.expect("h1");
        let e = r.echo().expect("echo");
        assert_eq!(e["name"], "echo", "{h}: {r:?}");
        assert_eq!(e["headers"]["host"], h, "{h}: the backend saw another Host");
    }
    assert_eq!(get(port, "other.example.com:8080", "/x").await.expect("other").status, 404);
    let (version, e) = h2_get("app.example.com", port, "/h2").await.expect("h2");
    assert_eq!(version, reqwest::Version::HTTP_2);
    assert_eq!(e["name"], "echo", "{e}");
    assert_eq!(e["headers"]["host"], format!("app.example.com:{port}"), "h2: the backend saw another Host: {e}");

    // 4. A known service without a healthy endpoint: Envoy's 503; a
    //    destination naming no service: 500.
    for path in ["/sleepy", "/no-subset/x"] {
        let r = get(port, "app.example.com", path).await.expect("503");
        assert_eq!(r.status, 503, "{path}: {r:?}");
        assert!(r.body.contains("no healthy upstream"), "{path}: {r:?}");
    }
    assert_eq!(get(port, "app.example.com", "/nothing").await.expect("500").status, 500);

    // The warnings of the first generation are logged, once per
    // generation: requests add no line.
    zone.wait_log(&["gw-1", "resolves to no service", "nowhere", "500"], WAIT).await;
    zone.wait_log(&["gw-1", "has no healthy endpoint", "sleepy", "503"], WAIT).await;
    zone.wait_log(&["gw-1", "has no healthy endpoint", "v9", "503"], WAIT).await;
    let count = |log: &str| log.lines().filter(|l| l.contains("resolves to no service")).count();
    let before = count(&zone.stderr());
    for _ in 0..20 {
        let _ = get(port, "app.example.com", "/nothing").await;
    }
    assert_eq!(count(&zone.stderr()), before, "a request logged a warning again");
    drop(envoy);
    let _ = zone.sigterm().await;
}
