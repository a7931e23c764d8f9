//! Point 2: loopback trust only under a loopback `Host` (or `--api-host`);
//! a wrong token from loopback is refused.

use meridian_tests::{GlobalSpec, Topology, resources};
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A client that resolves `name` to the global's API address: what a
/// browser does after the attacker's DNS re-points `name` at 127.0.0.1.
fn rebound_client(name: &str, api: std::net::SocketAddr) -> reqwest::Client {
    reqwest::Client::builder().resolve(name, api).build().expect("HTTP client")
}

async fn send(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    body: Option<serde_json::Value>,
    token: Option<&str>,
) -> (StatusCode, String) {
    let mut req = client.request(method.clone(), url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status();
    (status, resp.text().await.unwrap_or_default())
}

/// One HTTP/1.1 request written by hand (absolute-form targets, no Host).
async fn raw(addr: std::net::SocketAddr, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

/// A global holding mesh `default` and a Secret, started with `extra_args`;
/// its API port and address.
async fn global_with_secret(test: &str, extra_args: Vec<String>) -> (Topology, String, std::net::SocketAddr) {
    let spec = GlobalSpec { extra_args, ..GlobalSpec::default() };
    let topo = Topology::builder(test).global_spec(spec).mesh("default").start().await;
    let g = topo.global();
    let port = g.api_url().rsplit(':').next().unwrap_or_default().trim_end_matches('/').to_string();
    let api: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("API address");
    g.api().apply(&json!({"type": "Secret", "mesh": "default", "name": "signing", "data": "c2VjcmV0"})).await;
    (topo, port, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_host_from_loopback_is_not_admin() {
    let (topo, port, api) = global_with_secret("hardening-rebinding", Vec::new()).await;
    let g = topo.global();
    let gw = resources::gateway("gw", 8080);

    // DNS rebinding: the attacker's name, now resolving to loopback.
    let evil = rebound_client("rebind.attacker.example", api);
    let base = format!("http://rebind.attacker.example:{port}");
    let (st, text) =
        send(&evil, Method::PUT, &format!("{base}/meshes/default/meshgateways/gw"), Some(gw.clone()), None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "write under a foreign Host: {text}");
    assert!(text.contains("needs the admin token"), "{text}");
    let (st, text) = send(&evil, Method::GET, &format!("{base}/meshes/default/secrets/signing"), None, None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "Secret read under a foreign Host: {text}");
    assert!(!text.contains("c2VjcmV0"), "{text}");
    let (st, text) =
        send(&evil, Method::POST, &format!("{base}/tokens/zone"), Some(json!({"zone": "zone-9"})), None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "zone token under a foreign Host: {text}");
    // Reads that need no rights still work under any name.
    let (st, _) = send(&evil, Method::GET, &format!("{base}/meshes"), None, None).await;
    assert_eq!(st, StatusCode::OK);
    // A name that merely ends in localhost is not localhost.
    let sub = rebound_client("evil.localhost", api);
    let (st, text) =
        send(&sub, Method::GET, &format!("http://evil.localhost:{port}/meshes/default/secrets/signing"), None, None)
            .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{text}");

    // An absolute-form target names the host too, whatever Host says.
    let reply = raw(
        api,
        &format!(
            "GET http://rebind.attacker.example:{port}/meshes/default/secrets/signing HTTP/1.1\r\n\
             Host: localhost:{port}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 401"), "absolute-form foreign target: {reply}");

    // Loopback under a loopback Host: still admin, without a token.
    let local = reqwest::Client::new();
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let (st, text) =
            send(&local, Method::GET, &format!("http://{host}/meshes/default/secrets/signing"), None, None).await;
        assert_eq!(st, StatusCode::OK, "{host}: {text}");
        assert!(text.contains("c2VjcmV0"), "{text}");
    }
    let (st, text) = send(
        &local,
        Method::PUT,
        &format!("http://localhost:{port}/meshes/default/meshgateways/gw"),
        Some(gw.clone()),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{text}");

    // A wrong token from loopback is refused, even under localhost.
    let (st, text) = send(
        &local,
        Method::PUT,
        &format!("http://localhost:{port}/meshes/default/meshgateways/gw2"),
        Some(resources::gateway("gw2", 8081)),
        Some("not-the-token"),
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{text}");
    assert!(text.contains("not valid"), "{text}");
    let (st, _) = send(
        &local,
        Method::GET,
        &format!("http://localhost:{port}/meshes/default/secrets/signing"),
        None,
        Some("nope"),
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // The right token works under any Host.
    let (st, text) =
        send(&evil, Method::GET, &format!("{base}/meshes/default/secrets/signing"), None, Some(g.admin_token())).await;
    assert_eq!(st, StatusCode::OK, "{text}");
    let (st, _) =
        send(&local, Method::GET, &format!("http://localhost:{port}/meshes/default/meshgateways/gw2"), None, None)
            .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "the refused write changed nothing");
    topo.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_host_names_are_trusted_from_loopback() {
    let args =
        vec!["--api-host".into(), "cp.example.internal:443".into(), "--api-host".into(), "other.internal".into()];
    let (topo, port, api) = global_with_secret("hardening-api-host", args).await;
    for name in ["cp.example.internal", "other.internal"] {
        let named = rebound_client(name, api);
        let (st, text) =
            send(&named, Method::GET, &format!("http://{name}:{port}/meshes/default/secrets/signing"), None, None)
                .await;
        assert_eq!(st, StatusCode::OK, "--api-host {name}: {text}");
    }
    let evil = rebound_client("cp.example.internal.attacker.example", api);
    let (st, text) = send(
        &evil,
        Method::GET,
        &format!("http://cp.example.internal.attacker.example:{port}/meshes/default/secrets/signing"),
        None,
        None,
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{text}");
    topo.cleanup().await;
}
