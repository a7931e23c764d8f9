//! meridianctl as a user meets it: exit codes (0 success, 1 invalid or
//! refused, 2 unreachable or server failure), named contexts, offline
//! validation, help texts.

use meridian_tests::{Backend, Ctl, Global, Topology};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::gateway_yaml;

crate::on_both_stores!(run);

async fn run(backend: Backend) {
    let topo = Topology::builder("global-api-cli").global(backend).start().await;
    let g = topo.global();
    let ctl = g.ctl();

    // 0: success.
    ctl.with(["apply", "-f", "-"]).run_stdin("type: Mesh\nname: default\n").await.ok();
    ctl.with(["get", "meshes"]).run().await.ok();

    // 1: invalid input (no server needed) ...
    let out = ctl.with(["get", "nonsense"]).run().await.expect_code(1);
    assert!(out.stderr.contains("unknown resource type"), "{}", out.stderr);
    let out = ctl.with(["apply", "-f", "/nonexistent/file.yaml"]).run().await.expect_code(1);
    assert!(out.stderr.contains("cannot read /nonexistent/file.yaml"), "{}", out.stderr);
    let out = ctl.with(["apply", "-f", "-"]).run_stdin("a: [\n").await.expect_code(1);
    assert!(out.stderr.contains("invalid YAML"), "{}", out.stderr);
    let out = ctl.with(["apply", "-f", "-"]).run_stdin("# nothing\n").await.expect_code(1);
    assert!(out.stderr.contains("no resources found"), "{}", out.stderr);
    ctl.with(["get"]).run().await.expect_code(1); // a usage error is invalid input too
    // ... or refused by the server (4xx).
    let out = ctl.with(["get", "meshgateway", "missing"]).run().await.expect_code(1);
    assert!(out.stderr.contains("error: MeshGateway \"missing\" not found"), "{}", out.stderr);
    let out = ctl.with(["get", "meshgateways", "-m", "nope"]).run().await.expect_code(1);
    assert!(out.stderr.contains("mesh \"nope\" does not exist"), "{}", out.stderr);

    // 2: nothing listening on the URL.
    let dead = dead_url().await;
    for args in [vec!["get", "meshes"], vec!["inspect", "zones"], vec!["delete", "meshgateway", "gw"], vec!["version"]]
    {
        let out = Ctl::new().args(["--api-url", &dead]).args(args).run().await.expect_code(2);
        assert!(out.stderr.contains(&format!("cannot reach {dead}")), "{}", out.stderr);
    }
    let out = Ctl::new()
        .args(["--api-url", &dead, "apply", "-f", "-"])
        .run_stdin(&gateway_yaml("default", "gw", 80))
        .await
        .expect_code(2);
    assert!(out.stderr.contains("cannot reach"), "{}", out.stderr);
    // 2: the server failed (5xx), with its details.
    let failing = failing_server().await;
    let out = Ctl::new().args(["--api-url", &failing, "get", "meshes"]).run().await.expect_code(2);
    assert!(out.stderr.contains("HTTP 503") && out.stderr.contains("store unavailable"), "{}", out.stderr);

    contexts(g, &dead).await;
    offline_validation(&dead).await;
    help_texts().await;
    topo.cleanup().await;
}

/// A URL on which nothing listens: a port bound and released.
async fn dead_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
    drop(l);
    format!("http://{addr}/")
}

/// An HTTP server answering every request with 503 and an error body.
async fn failing_server() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = sock.read(&mut buf).await;
                let body = r#"{"title":"Store unavailable","details":"store unavailable: connection reset"}"#;
                let resp = format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

/// `config add-context`, `use-context`, `view`; flags and environment
/// override the current context.
async fn contexts(g: &Global, dead: &str) {
    let ctl = Ctl::new(); // no --api-url: the config decides
    let out = ctl.with(["config", "add-context", "down", "--api-url", dead]).run().await.ok();
    assert!(out.stdout.contains("added context \"down\""), "{}", out.stdout);
    ctl.with(["get", "meshes"]).run().await.expect_code(2);
    // A context's token is presented on reads too: a wrong one is refused
    // at once (401, exit 1), the right one lists.
    ctl.with(["config", "add-context", "typo", "--api-url", g.api_url(), "--token", "s3cret"]).run().await.ok();
    let out = ctl.with(["get", "meshes"]).run().await.expect_code(1);
    assert!(out.stderr.contains("admin token is not valid"), "{}", out.stderr);
    ctl.with(["config", "add-context", "local", "--api-url", g.api_url(), "--token", g.admin_token()]).run().await.ok();
    let out = ctl.with(["get", "meshes"]).run().await.ok();
    assert!(out.stdout.lines().any(|l| l.starts_with("default ")), "{}", out.stdout);
    let out = ctl.with(["config", "add-context", "local", "--api-url", dead]).run().await.expect_code(1);
    assert!(out.stderr.contains("already exists"), "{}", out.stderr);

    let out = ctl.with(["config", "view"]).run().await.ok();
    assert!(out.stdout.contains("currentContext: local") && out.stdout.contains("REDACTED"), "{}", out.stdout);
    assert!(!out.stdout.contains("s3cret") && !out.stdout.contains(g.admin_token()), "{}", out.stdout);
    let out = ctl.with(["config", "view", "--raw"]).run().await.ok();
    assert!(out.stdout.contains("s3cret") && out.stdout.contains(g.admin_token()), "{}", out.stdout);
    assert!(ctl.config_path().is_file());

    // Environment and flags win over the context.
    ctl.with(["get", "meshes"]).env("MERIDIAN_API_URL", dead).run().await.expect_code(2);
    ctl.with(["--api-url", dead, "get", "meshes"]).run().await.expect_code(2);

    let out = ctl.with(["config", "use-context", "nope"]).run().await.expect_code(1);
    assert!(out.stderr.contains("no context \"nope\"") && out.stderr.contains("down, typo, local"), "{}", out.stderr);
    ctl.with(["config", "use-context", "down"]).run().await.ok();
    ctl.with(["get", "meshes"]).run().await.expect_code(2);

    // An explicit --config file.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("ctl.yaml").display().to_string();
    Ctl::new().args(["--config", &file, "config", "add-context", "x", "--api-url", g.api_url()]).run().await.ok();
    Ctl::new().args(["get", "meshes"]).env("MERIDIAN_CONFIG", &file).run().await.ok();
}

/// `validate` needs no server: OK lines, field paths, exit code 1.
async fn offline_validation(dead: &str) {
    let file = format!(
        "type: Mesh\nname: default\n---\n{}---\n{}---\ntype: MeshGatewayRoute\nname: r\nselectors:\n- match:\n    kuma.io/service: gw\nconf:\n  http:\n    rules:\n    - matches:\n      - path:\n          match: PREFIX\n          value: relative\n      backends:\n      - destination:\n          kuma.io/service: backend\n",
        gateway_yaml("default", "ok", 80),
        gateway_yaml("default", "bad", 0),
    );
    let out = Ctl::new().args(["--api-url", dead, "validate", "-f", "-"]).run_stdin(&file).await.expect_code(1);
    assert_eq!(out.lines(), ["OK Mesh default", "OK MeshGateway default/ok"]);
    let errors: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(errors.len(), 2, "{}", out.stderr);
    assert_eq!(errors[0], "MeshGateway bad: conf.listeners[0].port: port must be in the range [1, 65535]");
    assert!(errors[1].starts_with("MeshGatewayRoute r: conf.http.rules[0].matches[0].path"), "{}", out.stderr);
    assert!(errors[1].contains("must be an absolute path"), "{}", out.stderr);

    let out = Ctl::new().args(["validate", "-f", "-"]).run_stdin(&gateway_yaml("default", "ok", 80)).await.ok();
    assert_eq!(out.lines(), ["OK MeshGateway default/ok"]);
}

async fn help_texts() {
    let out = Ctl::new().args(["--help"]).run().await.ok();
    for part in ["Exit codes:", "2  the server could not be reached", "HTTP 5xx", "Examples:"] {
        assert!(out.stdout.contains(part), "{part:?} missing in --help:\n{}", out.stdout);
    }
    let out = Ctl::new().args(["apply", "--help"]).run().await.ok();
    assert!(
        out.stdout.contains("--dry-run") && out.stdout.contains("meridianctl apply -f gateway.yaml"),
        "{}",
        out.stdout
    );
    let out = Ctl::new().args(["validate", "--help"]).run().await.ok();
    assert!(out.stdout.contains("OK MeshGateway default/edge-gateway"), "{}", out.stdout);
}
