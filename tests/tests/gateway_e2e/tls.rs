//! HTTPS termination with Secrets (SNI picks the certificate and the
//! routes), HSTS, and TLS listeners that terminate or pass through.

use meridian_tests::{
    Envoy, Topology, WAIT, XdsMode, eventually,
    process::envoy_binary,
    traffic::{self, free_port},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_termination_sni_and_tls_passthrough() {
    envoy_binary();
    let (foo, bar, pass, term) = (
        traffic::cert("foo.example.com"),
        traffic::cert("bar.example.com"),
        traffic::cert("pass.example.com"),
        traffic::cert("term.example.com"),
    );
    let foo_web = traffic::http_backend("foo-web").await;
    let bar_web = traffic::http_backend("bar-web").await;
    let tls_backend = traffic::tls_backend("tls-backend", &pass).await;
    let plain = traffic::tcp_backend("plain").await;
    let topo = Topology::builder("e2e-tls").zone("zone").start().await;
    let zone = topo.zone("zone");
    zone.api().apply_yaml(traffic::MESH).await;
    for (name, c) in [("foo-cert", &foo), ("bar-cert", &bar), ("term-cert", &term)] {
        zone.api().apply_yaml(&traffic::secret(name, c)).await;
    }
    zone.api()
        .apply_yaml(&traffic::backend_dataplane(
            "backends",
            &[(foo_web.port, "foo-web"), (bar_web.port, "bar-web"), (tls_backend, "tls-backend"), (plain, "plain")],
        ))
        .await;
    let (https, tls) = (free_port(), free_port());
    zone.api().apply_yaml(&format!(
        r#"
type: MeshGateway
mesh: default
name: gw
selectors: [{{match: {{kuma.io/service: gw}}}}]
conf:
  listeners:
  - {{port: {https}, protocol: HTTPS, hostname: foo.example.com, tags: {{host: foo}}, tls: {{mode: TERMINATE, certificates: [{{secret: foo-cert}}]}}}}
  - {{port: {https}, protocol: HTTPS, hostname: bar.example.com, tags: {{host: bar}}, tls: {{mode: TERMINATE, certificates: [{{secret: bar-cert}}]}}}}
  - {{port: {tls}, protocol: TLS, hostname: pass.example.com, tags: {{host: pass}}, tls: {{mode: PASSTHROUGH}}}}
  - {{port: {tls}, protocol: TLS, hostname: term.example.com, tags: {{host: term}}, tls: {{mode: TERMINATE, certificates: [{{secret: term-cert}}]}}}}
---
type: MeshGatewayRoute
mesh: default
name: foo
selectors: [{{match: {{kuma.io/service: gw, host: foo}}}}]
conf: {{http: {{rules: [{{matches: [{{path: {{match: PREFIX, value: /}}}}], backends: [{{destination: {{kuma.io/service: foo-web}}}}]}}]}}}}
---
type: MeshGatewayRoute
mesh: default
name: bar
selectors: [{{match: {{kuma.io/service: gw, host: bar}}}}]
conf: {{http: {{rules: [{{matches: [{{path: {{match: PREFIX, value: /}}}}], backends: [{{destination: {{kuma.io/service: bar-web}}}}]}}]}}}}
---
type: MeshGatewayRoute
mesh: default
name: pass
selectors: [{{match: {{kuma.io/service: gw, host: pass}}}}]
conf: {{tcp: {{rules: [{{backends: [{{destination: {{kuma.io/service: tls-backend}}}}]}}]}}}}
---
type: MeshGatewayRoute
mesh: default
name: term
selectors: [{{match: {{kuma.io/service: gw, host: term}}}}]
conf: {{tcp: {{rules: [{{backends: [{{destination: {{kuma.io/service: plain}}}}]}}]}}}}
"#
    ))
    .await;
    zone.api().apply_yaml(&traffic::gateway_dataplane("gw-1", "gw")).await;
    let envoy = Envoy::start(topo.dir(), zone, "gw-1", XdsMode::Delta).await;
    envoy.wait_ready().await;

    // Each hostname gets its own certificate (the client trusts only that
    // one) and its own routes; responses carry HSTS.
    for (host, cert, want) in [("foo.example.com", &foo, "foo-web"), ("bar.example.com", &bar, "bar-web")] {
        let client = traffic::https_client(host, https, cert);
        let url = format!("https://{host}:{https}/hello");
        let (name, hsts) = eventually(&format!("HTTPS to {host}"), WAIT, || async {
            let r = client.get(&url).send().await.map_err(|e| format!("{e:?}"))?;
            let hsts = r.headers().get("strict-transport-security").map(|v| v.to_str().unwrap_or("").to_string());
            let v: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
            Ok((v["name"].as_str().unwrap_or("").to_string(), hsts))
        })
        .await;
        assert_eq!(name, want);
        assert!(hsts.is_some_and(|h| h.contains("max-age=")), "HSTS on {host}");
    }
    // The wrong certificate for a name fails the handshake.
    let wrong = traffic::https_client("foo.example.com", https, &bar);
    assert!(wrong.get(format!("https://foo.example.com:{https}/")).send().await.is_err());

    // TLS passthrough: the backend's own certificate reaches the client.
    let answer =
        eventually("TLS passthrough", WAIT, || traffic::tls_talk(tls, "pass.example.com", &pass, "hello")).await;
    assert_eq!(answer, "tls-backend: hello");
    // TLS termination at the gateway, plain TCP to the backend.
    let answer = eventually("TLS termination", WAIT, || traffic::tls_talk(tls, "term.example.com", &term, "hi")).await;
    assert_eq!(answer, "plain: hi");
    drop(envoy);
    let _ = zone.sigterm().await;
}
