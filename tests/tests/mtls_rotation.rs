//! Identity certificate rotation with requests flowing (issue 12's
//! "certificate rotation with requests flowing and none failing"): a STRICT
//! mTLS mesh whose identities live 10 s, so the zone re-issues them every
//! 8 s (4/5 of the lifetime); the builtin gateway keeps reaching the
//! application through the sidecar over mesh mTLS across several
//! rotations of both proxies' certificates, and no request fails.

use meridian_tests::{Topology, WAIT, XdsMode, eventually, traffic};

/// Identities valid for 10 s: re-issued every 8 s.
const SHORT_LIVED_MESH: &str = "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n    dpCert:\n      rotation:\n        expiration: 10s\n";

/// How many times each proxy's certificate must have been issued while
/// requests flowed (the first issue, then rotations).
const ISSUES: u64 = 3;

/// `mTLS.certificateRegenerations` of Dataplane `name`'s insight.
async fn issued(zone: &meridian_tests::Zone, name: &str) -> u64 {
    match zone.api().try_get(&format!("/meshes/default/dataplane-insights/{name}")).await {
        Ok((200, i)) => i["mTLS"]["certificateRegenerations"].as_u64().unwrap_or(0),
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_rotate_under_traffic_without_a_failed_request() {
    let app = traffic::http_backend("app-b").await;
    let mut topo = Topology::builder("mtls-rotation").zone("zone-1").start().await;
    let (b_in, gw_port) = (traffic::free_port(), traffic::free_port());
    let zone = topo.zone("zone-1");
    zone.api().apply_yaml(SHORT_LIVED_MESH).await;
    zone.api()
        .apply_yaml(&format!(
            "type: Dataplane\nmesh: default\nname: b-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {b_in}\n    servicePort: {}\n    tags: {{kuma.io/service: b, kuma.io/protocol: http}}\n",
            app.port
        ))
        .await;
    zone.api()
        .apply_yaml(&format!(
            "type: MeshGateway\nmesh: default\nname: edge\nselectors: [{{match: {{kuma.io/service: edge}}}}]\nconf: {{listeners: [{{port: {gw_port}, protocol: HTTP}}]}}\n---\ntype: MeshGatewayRoute\nmesh: default\nname: to-b\nselectors: [{{match: {{kuma.io/service: edge}}}}]\nconf:\n  http:\n    rules:\n    - matches: [{{path: {{match: PREFIX, value: /}}}}]\n      backends: [{{destination: {{kuma.io/service: b}}}}]\n"
        ))
        .await;
    zone.api().apply_yaml(&traffic::gateway_dataplane("edge-1", "edge")).await;
    topo.add_envoy("zone-1", "b-1", XdsMode::Delta).await.wait_ready().await;
    topo.add_envoy("zone-1", "edge-1", XdsMode::Delta).await.wait_ready().await;
    eventually("the gateway reaches app-b over mTLS", WAIT, || async {
        let r = traffic::get(gw_port, "example.com", "/warm-up").await?;
        if r.status == 200 && r.backend() == "app-b" { Ok(()) } else { Err(format!("{r:?}")) }
    })
    .await;

    // Requests flow until both proxies' certificates were re-issued twice.
    let zone = topo.zone("zone-1");
    let (start_b, start_gw) = (issued(zone, "b-1").await, issued(zone, "edge-1").await);
    let mut sent = 0u64;
    let mut failures = Vec::new();
    loop {
        let r = traffic::get(gw_port, "example.com", &format!("/during/{sent}")).await;
        sent += 1;
        match r {
            Ok(r) if r.status == 200 && r.backend() == "app-b" => {}
            other => failures.push(format!("request {sent}: {other:?}")),
        }
        if sent.is_multiple_of(20) {
            let (b, gw) = (issued(zone, "b-1").await, issued(zone, "edge-1").await);
            if b >= start_b.max(1) + ISSUES - 1 && gw >= start_gw.max(1) + ISSUES - 1 {
                break;
            }
            assert!(sent < 100_000, "no rotation happened: b-1 issued {b} times, edge-1 {gw} times");
        }
    }
    assert!(failures.is_empty(), "{} of {sent} requests failed during rotations: {failures:?}", failures.len());
    // What Envoy holds now is a recent certificate: still the service's identity.
    let certs = topo.envoy("edge-1").admin_get("/certs").await.expect("admin /certs");
    assert!(certs.contains("spiffe://default/edge"), "{certs}");
    topo.cleanup().await;
}
