//! Requests the global must refuse: each gets the right status and a clear
//! message, and the lists before and after are equal.

use base64::Engine;
use meridian_tests::{Backend, GlobalSpec, Topology};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{gateway, gateway_yaml, snapshot};

crate::on_both_stores!(run);

async fn run(backend: Backend) {
    let topo = Topology::builder("global-api-refusals").global(backend).start().await;
    let g = topo.global();
    let api = g.http();
    g.ctl()
        .with(["apply", "-f", "-"])
        .run_stdin(&format!("type: Mesh\nname: default\n---\n{}", gateway_yaml("default", "gw", 80)))
        .await
        .ok();
    let before = snapshot(&api).await;
    let path = "/meshes/default/meshgateways/gw";

    // Malformed bodies.
    let r = api.put_raw(path, b"{\"type\": \"MeshGateway\",".to_vec()).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.details().contains("not valid JSON"), "{}", r.text);
    let r = api.put_raw(path, b"[1, 2]".to_vec()).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.details().contains("must be a JSON object"), "{}", r.text);
    let mut typo = gateway("default", "gw", 81);
    typo["conf"]["listeners"][0]["protocl"] = json!("HTTP");
    let r = api.put(path, &typo).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(
        r.invalid_parameters()
            .iter()
            .any(|(f, reason)| f == "conf.listeners[0].protocl" && reason.contains("unknown field")),
        "{}",
        r.text
    );

    // Unknown types: in the path (404 naming the known ones), in the body (400 at `type`).
    for p in ["/meshes/default/gateways/gw", "/gateways/gw"] {
        let r = api.put(p, &gateway("default", "gw", 81)).await;
        assert_eq!(r.status, 404, "PUT {p}: {}", r.text);
        assert!(
            r.details().contains("unknown resource type \"gateways\"") && r.details().contains("meshgateways"),
            "{}",
            r.text
        );
    }
    let mut wrong_type = gateway("default", "gw", 81);
    wrong_type["type"] = json!("Gateway");
    let r = api.put(path, &wrong_type).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.invalid_parameters()[0].0, "type", "{}", r.text);
    let out = g.ctl().with(["get", "gateways"]).run().await.expect_code(1);
    assert!(out.stderr.contains("unknown resource type \"gateways\""), "{}", out.stderr);
    let out = g.ctl().with(["apply", "-f", "-"]).run_stdin("type: Gateway\nname: x\n").await.expect_code(1);
    assert!(out.stderr.contains("type: unknown type \"Gateway\""), "{}", out.stderr);

    // Wrong mesh: the body's differs from the path's; a mesh that does not exist.
    let r = api.put(path, &gateway("other", "gw", 81)).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(
        r.invalid_parameters().iter().any(|(f, reason)| f == "mesh" && reason.contains("does not match")),
        "{}",
        r.text
    );
    let r = api.put("/meshes/nope/meshgateways/gw", &gateway("nope", "gw", 81)).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.details().contains("mesh \"nope\" does not exist"), "{}", r.text);
    let r = api.get("/meshes/nope/meshgateways").await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert!(r.details().contains("does not exist"), "{}", r.text);
    let mut wrong_name = gateway("default", "other", 81);
    wrong_name["name"] = json!("other");
    let r = api.put(path, &wrong_name).await;
    assert_eq!(r.status, 400, "{}", r.text);

    // Read-only types.
    let r = api.put("/zoneinsights/zone-1", &json!({"type": "ZoneInsight", "name": "zone-1"})).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(r.details().contains("read-only"), "{}", r.text);

    // Oversized: a body over 2 MiB (413 before it is read), and a resource
    // under that but over the 1 MiB resource limit (413 with the sizes).
    let huge = json!({"type": "Secret", "mesh": "default", "name": "big",
        "data": base64::engine::general_purpose::STANDARD.encode(vec![b'x'; 3 * 1024 * 1024])});
    let (status, text) = put_oversized(g.api_url(), "/meshes/default/secrets/big").await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("limit"), "unclear 413 message: {text}");
    let large = json!({"type": "Secret", "mesh": "default", "name": "big",
        "data": base64::engine::general_purpose::STANDARD.encode(vec![b'x'; 1100 * 1024])});
    let r = api.put("/meshes/default/secrets/big", &large).await;
    assert_eq!(r.status, 413, "{}", r.text);
    assert!(r.details().contains("the limit is"), "{}", r.text);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("big.yaml");
    std::fs::write(&file, huge.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let out = g.ctl().with(["apply", "-f", &file.display().to_string()]).run().await.expect_code(1);
    assert!(out.stderr.contains("error: Secret default/big: the resource is"), "{}", out.stderr);
    assert!(out.stderr.contains("at most 2097152 bytes (2 MiB)"), "{}", out.stderr);

    assert_eq!(snapshot(&api).await, before, "a refused request changed something");
    topo.cleanup().await;

    missing_token(backend).await;
}

/// PUTs a body declared as 3 MiB, sending one byte more than the 2 MiB
/// limit and then waiting for the answer. (A client that keeps writing
/// after the server answered 413 and closed gets a reset instead of the
/// answer, so the whole body is never sent.) Returns the status and the
/// body of the answer.
async fn put_oversized(api_url: &str, path: &str) -> (u16, String) {
    let addr = api_url.trim_start_matches("http://").trim_end_matches('/');
    let mut sock = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let head = format!(
        "PUT {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        3 * 1024 * 1024
    );
    sock.write_all(head.as_bytes()).await.unwrap_or_else(|e| panic!("write: {e}"));
    let mut body = b"{\"data\": \"".to_vec();
    body.resize(2 * 1024 * 1024 + 1, b'x');
    // The server may answer before it read everything: ignore write errors.
    let _ = sock.write_all(&body).await;
    let mut answer = Vec::new();
    let _ = sock.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let text = answer.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_string());
    (status, text)
}

/// With `--api-trust-loopback=false`, writes and Secrets need the token.
async fn missing_token(backend: Backend) {
    let topo = Topology::builder("global-api-token")
        .global_spec(GlobalSpec { trust_loopback: false, ..GlobalSpec::on(backend) })
        .start()
        .await;
    let g = topo.global();
    let anon = g.http();
    let admin = g.admin_http();
    let r = admin.put("/meshes/default", &json!({"type": "Mesh", "name": "default"})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = admin
        .put("/meshes/default/secrets/s", &json!({"type": "Secret", "mesh": "default", "name": "s", "data": "aGk="}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let before = snapshot(&admin).await;
    // Secrets are the admin's, their names included; other lists need no token.
    assert_eq!(anon.get("/meshes/default/secrets").await.status, 401);
    assert_eq!(anon.get("/secrets").await.status, 401);
    assert_eq!(anon.get("/global-secrets").await.status, 401);
    assert_eq!(anon.get("/meshes/default/meshgateways").await.status, 200);

    let r = anon.put("/meshes/default/meshgateways/gw", &gateway("default", "gw", 80)).await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert!(r.details().contains("needs the admin token"), "{}", r.text);
    let r = anon.with_token(Some("wrong")).put("/meshes/default/meshgateways/gw", &gateway("default", "gw", 80)).await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert!(r.details().contains("not valid"), "{}", r.text);
    assert_eq!(anon.delete("/meshes/default").await.status, 401);
    assert_eq!(anon.get("/meshes/default/secrets/s").await.status, 401);
    assert_eq!(admin.get("/meshes/default/secrets/s").await.json["data"], "aGk=");

    let ctl = g.ctl();
    let out = ctl.with(["apply", "-f", "-"]).run_stdin(&gateway_yaml("default", "gw", 80)).await.expect_code(1);
    assert!(out.stderr.contains("needs the admin token"), "{}", out.stderr);
    let out = ctl.with(["delete", "mesh", "default"]).run().await.expect_code(1);
    assert!(out.stderr.contains("needs the admin token"), "{}", out.stderr);
    assert_eq!(snapshot(&admin).await, before, "an unauthenticated request changed something");

    // With the token (flag or environment) it works.
    let out = ctl
        .with(["--token", g.admin_token(), "apply", "-f", "-"])
        .run_stdin(&gateway_yaml("default", "gw", 80))
        .await
        .ok();
    assert_eq!(out.lines(), ["created MeshGateway default/gw"]);
    let out = ctl.with(["get", "secret", "s", "-o", "json"]).env("MERIDIAN_TOKEN", g.admin_token()).run().await.ok();
    assert!(out.stdout.contains("\"aGk=\""), "{}", out.stdout);
    topo.cleanup().await;
}
