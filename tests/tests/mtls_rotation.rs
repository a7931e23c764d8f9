//! Identity certificate rotation with requests flowing (issue 12's
//! "certificate rotation with requests flowing and none failing"): a STRICT
//! mTLS mesh whose identities live 10 s, so the zone re-issues them every
//! 8 s (4/5 of the lifetime); the builtin gateway keeps reaching the
//! application through the sidecar over mesh mTLS across several
//! rotations of both proxies' certificates, and no request fails.
//!
//! And a change of the mesh's CA with requests flowing (issue 12's
//! "changing the backend ... never drops traffic"): backend ca-2 added
//! (both roots trusted), `enabledBackend` switched to it (identities
//! re-issued from ca-2's chain), ca-1 removed (its root no longer trusted);
//! no request fails.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use meridian_tests::{Topology, WAIT, XdsMode, eventually, traffic};
use serde_json::Value;

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

/// A standalone zone-1 with `mesh` applied, application `app-b` behind
/// sidecar `b-1` (service `b`) and builtin gateway `edge-1` routing `/` to
/// `b` on the returned port; returns once a request went through, with
/// the gateway's port and the sidecar's inbound port.
async fn gateway_to_sidecar(test: &str, mesh: &str) -> (Topology, u16, u16, traffic::HttpBackend) {
    let app = traffic::http_backend("app-b").await;
    let mut topo = Topology::builder(test).zone("zone-1").start().await;
    let (b_in, gw_port) = (traffic::free_port(), traffic::free_port());
    let zone = topo.zone("zone-1");
    zone.api().apply_yaml(mesh).await;
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
    (topo, gw_port, b_in, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_rotate_under_traffic_without_a_failed_request() {
    let (topo, gw_port, _, _app) = gateway_to_sidecar("mtls-rotation", SHORT_LIVED_MESH).await;
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

/// Mesh `default` with builtin backends `listed`, `enabled` on (STRICT).
fn mesh_with(enabled: &str, listed: &[&str]) -> String {
    let backends: String =
        listed.iter().map(|b| format!("  - name: {b}\n    type: builtin\n    mode: STRICT\n")).collect();
    format!("type: Mesh\nname: default\nmtls:\n  enabledBackend: {enabled}\n  backends:\n{backends}")
}

/// Requests through the gateway, one after another, until stopped; what
/// failed is kept.
struct Load {
    sent: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(gw_port: u16) -> Load {
        let (sent, failures, stop) =
            (Arc::new(AtomicU64::new(0)), Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let (s, f, st) = (sent.clone(), failures.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !st.load(Ordering::SeqCst) {
                let n = s.fetch_add(1, Ordering::SeqCst);
                match traffic::get(gw_port, "example.com", &format!("/during/{n}")).await {
                    Ok(r) if r.status == 200 && r.backend() == "app-b" => {}
                    other => f.lock().expect("failures").push(format!("request {n}: {other:?}")),
                }
            }
        });
        Load { sent, failures, stop, task }
    }

    /// Waits until `more` further requests were sent (whatever their outcome).
    async fn wait_for(&self, more: u64) {
        let target = self.sent.load(Ordering::SeqCst) + more;
        eventually(&format!("{more} more requests sent"), WAIT, || async {
            if self.sent.load(Ordering::SeqCst) >= target { Ok(()) } else { Err("not yet".to_string()) }
        })
        .await;
    }

    /// Stops and returns (requests sent, failures).
    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("load task");
        let failures = self.failures.lock().expect("failures").clone();
        (self.sent.load(Ordering::SeqCst), failures)
    }
}

/// The inline PEM of SDS secret `name` as Envoy `proxy` holds it (its
/// `/config_dump` of dynamic secrets; keys are redacted there, certificates
/// are not): the identity's chain, or the trusted CA bundle.
async fn envoy_secret(topo: &Topology, proxy: &str, name: &str) -> Result<String, String> {
    let text = topo.envoy(proxy).admin_get("/config_dump?resource=dynamic_active_secrets").await?;
    let dump: Value = serde_json::from_str(&text).map_err(|e| format!("config_dump is not JSON: {e}"))?;
    let secret = dump["configs"]
        .as_array()
        .and_then(|c| c.iter().find(|s| s["name"] == name))
        .ok_or_else(|| format!("{proxy} holds no secret {name}"))?;
    let s = &secret["secret"];
    let pem = s["tls_certificate"]["certificate_chain"]["inline_string"]
        .as_str()
        .or_else(|| s["validation_context"]["trusted_ca"]["inline_string"].as_str())
        .ok_or_else(|| format!("{proxy}'s secret {name} has no inline PEM: {s}"))?;
    Ok(pem.to_string())
}

/// Zone-1's CA bundle for `backend` (intermediate, root), from its Secret.
async fn zone_ca(topo: &Topology, backend: &str) -> meridian_core::ca::ZoneCa {
    use base64::Engine;
    let name = meridian_core::mesh_ca::zone_ca_secret_name(backend, "zone-1");
    let secret =
        topo.zone("zone-1").api().wait_for(&format!("/meshes/default/secrets/{name}"), "the zone CA", |_| true).await;
    let data = base64::engine::general_purpose::STANDARD
        .decode(secret["data"].as_str().expect("Secret data"))
        .expect("base64 Secret data");
    meridian_core::ca::ZoneCa::from_pem(&data).expect("a zone CA bundle")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_ca_changes_under_traffic_without_a_failed_request() {
    let (topo, gw_port, _, _app) = gateway_to_sidecar("mtls-ca-change", &mesh_with("ca-1", &["ca-1"])).await;
    let api = topo.zone("zone-1").api();
    let proxies = ["edge-1", "b-1"];
    let (identity, trusted) = ("identity_cert:secret:default", "mesh_ca:secret:default");

    // A switch to a backend nobody trusts yet is refused, and changes nothing.
    let doc = |yaml: &str| meridian_sync_proto::universal::parse_documents(yaml).expect("YAML").remove(0);
    // (A GET first: the PUT then reuses a connection the API just served,
    // not one its keep-alive timeout may be closing.)
    assert_eq!(api.get("/meshes/default").await["mtls"]["enabledBackend"], "ca-1");
    let (status, body) = api.put("/meshes/default", &doc(&mesh_with("ca-2", &["ca-2"]))).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains(r#"add backend \"ca-2\" to mtls.backends first"#), "{body}");
    assert_eq!(api.get("/meshes/default").await["mtls"]["enabledBackend"], "ca-1");
    let ca1 = zone_ca(&topo, "ca-1").await;

    let load = Load::start(gw_port);
    load.wait_for(20).await;

    // 1. ca-2 added: every proxy trusts both roots; identities stay ca-1's.
    api.apply_yaml(&mesh_with("ca-1", &["ca-1", "ca-2"])).await;
    let ca2 = zone_ca(&topo, "ca-2").await;
    for p in proxies {
        eventually(&format!("{p} trusts both roots"), WAIT, || async {
            let pem = envoy_secret(&topo, p, trusted).await?;
            if pem.contains(&ca1.root_cert_pem) && pem.contains(&ca2.root_cert_pem) { Ok(()) } else { Err(pem) }
        })
        .await;
        assert!(envoy_secret(&topo, p, identity).await.expect("identity").contains(&ca1.intermediate.cert_pem));
        // The insight lists both backends the proxy trusts, the issuing one first.
        eventually(&format!("{p}'s insight supports ca-1 and ca-2"), WAIT, || async {
            let insight = api.fetch(&format!("/meshes/default/dataplane-insights/{p}")).await?;
            let supported = &insight["mTLS"]["supportedBackends"];
            if *supported == serde_json::json!(["ca-1", "ca-2"]) { Ok(()) } else { Err(insight.to_string()) }
        })
        .await;
    }
    load.wait_for(20).await;

    // 2. Switched to ca-2: identities re-issued from ca-2's intermediate.
    api.apply_yaml(&mesh_with("ca-2", &["ca-1", "ca-2"])).await;
    for p in proxies {
        eventually(&format!("{p}'s identity issued by ca-2"), WAIT, || async {
            let pem = envoy_secret(&topo, p, identity).await?;
            if pem.contains(&ca2.intermediate.cert_pem) { Ok(()) } else { Err(pem) }
        })
        .await;
        eventually(&format!("{p}'s insight says ca-2"), WAIT, || async {
            let insight = api.fetch(&format!("/meshes/default/dataplane-insights/{p}")).await?;
            if insight["mTLS"]["issuedBackend"] == "ca-2" { Ok(()) } else { Err(insight.to_string()) }
        })
        .await;
    }
    load.wait_for(20).await;

    // 3. ca-1 removed: its root is no longer trusted.
    api.apply_yaml(&mesh_with("ca-2", &["ca-2"])).await;
    for p in proxies {
        eventually(&format!("{p} trusts ca-2's root alone"), WAIT, || async {
            let pem = envoy_secret(&topo, p, trusted).await?;
            if pem == ca2.root_cert_pem { Ok(()) } else { Err(pem) }
        })
        .await;
    }
    load.wait_for(20).await;

    let (sent, failures) = load.finish().await;
    assert!(failures.is_empty(), "{} of {sent} requests failed during the CA change: {failures:?}", failures.len());
    // And after the change, requests still pass (ca-2 alone trusted).
    for i in 0..5 {
        let r = traffic::get(gw_port, "example.com", &format!("/after/{i}")).await.expect("a request after the change");
        assert!(r.status == 200 && r.backend() == "app-b", "{r:?}");
    }
    topo.cleanup().await;
}

/// STRICT → PERMISSIVE with requests flowing. The sidecar's inbound starts
/// accepting plaintext (a plain client reaches the application) while the
/// gateway keeps originating mTLS; no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_to_permissive_under_traffic_without_a_failed_request() {
    let (topo, gw_port, b_in, _app) = gateway_to_sidecar("mtls-permissive", &mesh_with("ca-1", &["ca-1"])).await;
    let plain = |path: &'static str| async move {
        match traffic::get(b_in, "example.com", path).await {
            Ok(r) if r.status == 200 && r.backend() == "app-b" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    };
    assert!(plain("/strict").await.is_err(), "STRICT: a plain client reaches nothing");
    let load = Load::start(gw_port);
    load.wait_for(20).await;
    topo.zone("zone-1").api().apply_yaml(&mesh_with("ca-1", &["ca-1"]).replace("STRICT", "PERMISSIVE")).await;
    eventually("a plain client reaches app-b through the PERMISSIVE inbound", WAIT, || plain("/permissive")).await;
    load.wait_for(50).await;
    let (sent, failures) = load.finish().await;
    assert!(failures.is_empty(), "{} of {sent} requests failed going PERMISSIVE: {failures:?}", failures.len());
    topo.cleanup().await;
}

/// The filter chains of sidecar `proxy`'s inbound listener on `port` as its
/// Envoy holds them: for each, whether it terminates TLS.
async fn inbound_chains(topo: &Topology, proxy: &str, port: u16) -> Result<Vec<bool>, String> {
    let text = topo.envoy(proxy).admin_get("/config_dump?resource=dynamic_listeners").await?;
    let dump: Value = serde_json::from_str(&text).map_err(|e| format!("config_dump is not JSON: {e}"))?;
    let name = format!("inbound:127.0.0.1:{port}");
    let listener = dump["configs"]
        .as_array()
        .and_then(|c| c.iter().find(|l| l["name"] == name.as_str()))
        .ok_or_else(|| format!("{proxy} holds no listener {name}"))?;
    let chains = listener["active_state"]["listener"]["filter_chains"]
        .as_array()
        .ok_or_else(|| format!("{name} is not active: {listener}"))?;
    Ok(chains.iter().map(|c| c.get("transport_socket").is_some()).collect())
}

/// Whether the gateway's cluster to `b` originates TLS, as its Envoy holds it.
async fn gateway_originates_tls(topo: &Topology) -> Result<bool, String> {
    let text = topo.envoy("edge-1").admin_get("/config_dump?resource=dynamic_active_clusters").await?;
    let dump: Value = serde_json::from_str(&text).map_err(|e| format!("config_dump is not JSON: {e}"))?;
    let cluster = dump["configs"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["cluster"]["name"].as_str().is_some_and(|n| n.starts_with('b'))))
        .ok_or_else(|| format!("edge-1 holds no cluster to b: {text}"))?;
    Ok(cluster["cluster"].get("transport_socket").is_some())
}

/// Turning mTLS off and on again with requests flowing (issue 12's
/// "disabling ... never drops traffic"): STRICT → off, then off → STRICT,
/// each one Mesh update. The zone walks each switch in phases (inbounds
/// accept both while the gateway changes sides, each step once both
/// proxies confirmed the previous one), and no request fails; at the end
/// of each switch both ends hold what the Mesh asks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_off_and_on_again_under_traffic_without_a_failed_request() {
    let (topo, gw_port, b_in, _app) = gateway_to_sidecar("mtls-off-on", &mesh_with("ca-1", &["ca-1"])).await;
    let api = topo.zone("zone-1").api();
    assert_eq!(inbound_chains(&topo, "b-1", b_in).await, Ok(vec![true]), "STRICT: one chain, mTLS");
    let load = Load::start(gw_port);
    load.wait_for(20).await;

    // Off (the backend stays listed, enabledBackend gone): in the end one
    // plaintext chain and a plaintext cluster.
    api.apply_yaml("type: Mesh\nname: default\nmtls:\n  backends:\n  - name: ca-1\n    type: builtin\n").await;
    eventually("b-1's inbound is plaintext only", WAIT, || async {
        match inbound_chains(&topo, "b-1", b_in).await? {
            c if c == [false] => Ok(()),
            c => Err(format!("chains terminating TLS: {c:?}")),
        }
    })
    .await;
    assert_eq!(gateway_originates_tls(&topo).await, Ok(false), "the gateway dropped mTLS before the inbound did");
    load.wait_for(30).await;

    // On again, STRICT: the inbound refuses plaintext in the end.
    api.apply_yaml(&mesh_with("ca-1", &["ca-1"])).await;
    eventually("b-1's inbound is STRICT again", WAIT, || async {
        match inbound_chains(&topo, "b-1", b_in).await? {
            c if c == [true] => Ok(()),
            c => Err(format!("chains terminating TLS: {c:?}")),
        }
    })
    .await;
    assert_eq!(gateway_originates_tls(&topo).await, Ok(true), "the gateway originates mTLS again");
    load.wait_for(30).await;

    let (sent, failures) = load.finish().await;
    assert!(failures.is_empty(), "{} of {sent} requests failed turning mTLS off and on: {failures:?}", failures.len());
    let plain = traffic::get(b_in, "example.com", "/plain-after").await;
    assert!(!matches!(&plain, Ok(r) if r.status == 200), "STRICT again: a plain client reaches nothing: {plain:?}");
    topo.cleanup().await;
}
