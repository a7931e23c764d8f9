//! Mesh mTLS across zones: the global keeps each mesh's root CA (key
//! included) to itself and gives every zone its own intermediate CA; each
//! zone issues its proxies' identity certificates and serves them over SDS
//! (`identity_cert:secret:<mesh>`, `mesh_ca:secret:<mesh>`).
//!
//! Real processes: a global, two zones; each zone's xDS server is asked
//! for the two SDS secrets over delta ADS (TLS), as Envoy asks once a
//! listener or cluster names them.

use std::sync::Arc;

use envoy_types::pb::envoy::{
    config::core::v3::{Node, data_source},
    extensions::transport_sockets::tls::v3::{Secret, secret},
    service::discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse,
        aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
    },
};
use meridian_tests::{GlobalSpec, Topology, WAIT, Zone, eventually, traffic};
use meridian_zone::{
    gateway::SECRET_TYPE,
    mtls::{ca_secret_name, identity_secret_name},
};
use prost::Message;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, UnixTime, pem::PemObject};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const MTLS_MESH: &str = "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n    dpCert:\n      rotation:\n        expiration: 1h\n";

/// A delta ADS stream of one proxy, subscribed to the two mTLS secrets.
struct SdsClient {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: tonic::Streaming<DeltaDiscoveryResponse>,
    /// The secrets received and not removed since.
    held: Vec<Secret>,
}

impl SdsClient {
    async fn open(zone: &Zone, node_id: &str) -> SdsClient {
        let channel = zone.xds_channel().await.expect("xDS channel");
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let (tx, rx) = mpsc::channel(4);
        tx.send(DeltaDiscoveryRequest {
            node: Some(Node { id: node_id.to_string(), ..Default::default() }),
            type_url: SECRET_TYPE(),
            resource_names_subscribe: vec![identity_secret_name("default"), ca_secret_name("default")],
            ..Default::default()
        })
        .await
        .expect("send");
        // The Dataplane's token (from the global, or the standalone zone), as Envoy sends it.
        let name = node_id.split_once('.').map(|(_, n)| n).unwrap_or(node_id);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(token) = zone.dataplane_token(name).await {
            request.metadata_mut().insert("authorization", token.trim().parse().expect("a token is ASCII"));
        }
        let rx = client.delta_aggregated_resources(request).await.expect("open ADS").into_inner();
        SdsClient { tx, rx, held: Vec::new() }
    }

    /// The next response (ACKed), within [`WAIT`].
    async fn next(&mut self) -> DeltaDiscoveryResponse {
        let resp = tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a response in time")
            .expect("stream")
            .expect("stream open");
        self.tx
            .send(DeltaDiscoveryRequest {
                type_url: resp.type_url.clone(),
                response_nonce: resp.nonce.clone(),
                ..Default::default()
            })
            .await
            .expect("ack");
        resp
    }

    /// Reads (and ACKs) responses until the proxy holds both secrets and
    /// `pred` holds for its (chain, key, root); returns those.
    async fn until(&mut self, pred: impl Fn(&(String, String, String)) -> bool) -> (String, String, String) {
        loop {
            let resp = self.next().await;
            for s in secrets_of(&resp) {
                self.held.retain(|h| h.name != s.name);
                self.held.push(s);
            }
            self.held.retain(|h| !resp.removed_resources.contains(&h.name));
            if self.held.len() == 2 {
                let m = material(&self.held);
                if pred(&m) {
                    return m;
                }
            }
        }
    }
}

fn secrets_of(resp: &DeltaDiscoveryResponse) -> Vec<Secret> {
    resp.resources
        .iter()
        .filter_map(|r| r.resource.as_ref())
        .map(|any| Secret::decode(&any.value[..]).expect("a Secret"))
        .collect()
}

fn inline(ds: Option<&envoy_types::pb::envoy::config::core::v3::DataSource>) -> String {
    match ds.and_then(|d| d.specifier.as_ref()) {
        Some(data_source::Specifier::InlineString(s)) => s.clone(),
        Some(data_source::Specifier::InlineBytes(b)) => String::from_utf8_lossy(b).into_owned(),
        other => panic!("not inline: {other:?}"),
    }
}

/// (chain PEM, key PEM, trusted root PEM) of the two secrets.
fn material(secrets: &[Secret]) -> (String, String, String) {
    let by_name =
        |n: &str| secrets.iter().find(|s| s.name == n).unwrap_or_else(|| panic!("no secret {n}: {secrets:?}"));
    let Some(secret::Type::TlsCertificate(tls)) = &by_name(&identity_secret_name("default")).r#type else {
        panic!("identity secret without a TLS certificate")
    };
    let Some(secret::Type::ValidationContext(vc)) = &by_name(&ca_secret_name("default")).r#type else {
        panic!("CA secret without a validation context")
    };
    (inline(tls.certificate_chain.as_ref()), inline(tls.private_key.as_ref()), inline(vc.trusted_ca.as_ref()))
}

/// Verifies `chain` (leaf, intermediate) as a client certificate against `root`.
fn verify(root: &str, chain: &str) -> Result<(), rustls::Error> {
    meridian_tests::init_crypto();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(root.as_bytes()) {
        roots.add(c.expect("root")).expect("add root");
    }
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots)).build().expect("verifier");
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(chain.as_bytes()).map(|c| c.expect("cert")).collect();
    assert_eq!(chain.len(), 2, "leaf then intermediate");
    verifier.verify_client_cert(&chain[0], &chain[1..], UnixTime::now()).map(|_| ())
}

/// The URI SANs of the first certificate of `pem`.
fn leaf_uris(pem: &str) -> Vec<String> {
    let der = CertificateDer::pem_slice_iter(pem.as_bytes()).next().expect("a cert").expect("cert");
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
    let san = cert.subject_alternative_name().expect("SAN ext").expect("SAN");
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_zone_issues_identities_from_its_own_intermediate() {
    let topo = Topology::builder("mtls")
        .global_spec(GlobalSpec::default())
        .mesh("default")
        .zone("zone-1")
        .zone("zone-2")
        .start()
        .await;
    let global = topo.global();
    let (z1, z2) = (topo.zone("zone-1"), topo.zone("zone-2"));
    global.api().apply_yaml(MTLS_MESH).await;
    z1.api().apply_yaml(&traffic::gateway_dataplane("gw-1", "edge")).await;
    z2.api().apply_yaml(&traffic::gateway_dataplane("gw-2", "edge-2")).await;

    // Each zone holds its own intermediate only; no zone holds a root (key).
    let im1 = "ca-builtin-intermediate-ca-1.zone-1";
    let im2 = "ca-builtin-intermediate-ca-1.zone-2";
    for (zone, mine, other) in [(z1, im1, im2), (z2, im2, im1)] {
        let names = eventually(&format!("{} receives its intermediate CA", zone.name()), WAIT, || async {
            let names = zone.api().names("/meshes/default/secrets").await?;
            if names.iter().any(|n| n == mine) { Ok(names) } else { Err(format!("secrets: {names:?}")) }
        })
        .await;
        assert!(!names.iter().any(|n| n == other), "{} holds another zone's CA: {names:?}", zone.name());
        let globals = zone.api().names("/global-secrets").await.expect("global secrets");
        assert!(!globals.iter().any(|n| n.contains("ca-builtin-root")), "a root reached {}: {globals:?}", zone.name());
    }
    let roots = global.api().names("/global-secrets").await.expect("global secrets");
    assert!(roots.iter().any(|n| n == "default.ca-builtin-root-ca-1"), "the global keeps the root: {roots:?}");
    let at_global = global.api().names("/meshes/default/secrets").await.expect("secrets");
    assert!(at_global.iter().any(|n| n == im1) && at_global.iter().any(|n| n == im2), "{at_global:?}");

    // Each proxy gets an identity for its service, chained to the one root.
    let mut c1 = SdsClient::open(z1, "default.gw-1").await;
    let mut c2 = SdsClient::open(z2, "default.gw-2").await;
    let (chain1, key1, root1) = c1.until(|_| true).await;
    let (chain2, key2, root2) = c2.until(|_| true).await;
    assert_eq!(root1, root2, "both zones trust the same root");
    assert!(key1.contains("PRIVATE KEY") && key2.contains("PRIVATE KEY"));
    assert_ne!(key1, key2);
    assert_eq!(leaf_uris(&chain1), ["spiffe://default/edge", "kuma://kuma.io/service/edge"]);
    assert_eq!(leaf_uris(&chain2), ["spiffe://default/edge-2", "kuma://kuma.io/service/edge-2"]);
    verify(&root1, &chain1).expect("zone-1's identity verifies to the root");
    verify(&root1, &chain2).expect("zone-2's identity verifies to the root");
    let intermediate = |chain: &str| chain.split_inclusive("-----END CERTIFICATE-----\n").nth(1).map(str::to_string);
    assert_ne!(intermediate(&chain1), intermediate(&chain2), "each zone signs with its own intermediate");

    // A tag change re-issues the certificate (new SANs), on the same stream.
    z1.api()
        .apply_yaml(
            &traffic::gateway_dataplane("gw-1", "edge")
                .replace(r#""kuma.io/service":"edge""#, r#""kuma.io/service":"edge","version":"v2""#),
        )
        .await;
    let (chain1b, _, _) = c1.until(|(chain, _, _)| leaf_uris(chain).len() == 3).await;
    assert_eq!(leaf_uris(&chain1b), ["spiffe://default/edge", "kuma://kuma.io/service/edge", "kuma://version/v2"]);

    // The DataplaneInsight reports the certificate as the incumbent does.
    let insight = z1
        .api()
        .wait_for("/meshes/default/dataplane-insights/gw-1", "a second certificate", |i| {
            i["mTLS"]["certificateRegenerations"] == 2
        })
        .await;
    let m = &insight["mTLS"];
    assert_eq!(m["issuedBackend"], "ca-1", "{insight}");
    assert_eq!(m["supportedBackends"], serde_json::json!(["ca-1"]), "{insight}");
    assert!(m["certificateExpirationTime"].is_string() && m["lastCertificateRegeneration"].is_string(), "{insight}");

    // Disabling mTLS removes both secrets.
    global.api().apply_yaml(&MTLS_MESH.replace("  enabledBackend: ca-1\n", "")).await;
    let removed = loop {
        let resp = c1.next().await;
        if !resp.removed_resources.is_empty() {
            break resp.removed_resources;
        }
    };
    let mut removed = removed;
    removed.sort();
    assert_eq!(removed, [identity_secret_name("default"), ca_secret_name("default")]);
}

/// A standalone zone makes its own root and intermediate (kept in its own
/// store) and issues identities from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_zone_is_its_own_ca() {
    let topo = Topology::builder("mtls-standalone").zone("solo").start().await;
    let zone = topo.zone("solo");
    zone.api().apply_yaml(MTLS_MESH).await;
    zone.api().apply_yaml(&traffic::gateway_dataplane("gw-1", "edge")).await;
    let mut client = SdsClient::open(zone, "default.gw-1").await;
    let (chain, _, root) = client.until(|_| true).await;
    assert_eq!(leaf_uris(&chain), ["spiffe://default/edge", "kuma://kuma.io/service/edge"]);
    verify(&root, &chain).expect("the identity verifies to the zone's root");
    let roots = zone.api().names("/global-secrets").await.expect("global secrets");
    assert!(roots.iter().any(|n| n == "default.ca-builtin-root-ca-1"), "{roots:?}");
}

/// Issue 12's first check with real Envoys: in a STRICT mTLS mesh the
/// builtin gateway reaches the application through sidecar b-1's inbound
/// (the gateway presents its identity certificate, the sidecar verifies it
/// against the mesh CA, and the gateway verifies `spiffe://default/b`),
/// while a plain client to the same inbound gets nothing from the
/// application.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_to_sidecar_over_mesh_mtls_and_plain_clients_refused() {
    let (_app, topo, b_in, gw_port) = gateway_and_sidecar("mtls-e2e", "").await;

    let r = eventually("the gateway reaches app-b through b-1 over mTLS", WAIT, || async {
        let r = traffic::get(gw_port, "any.example.com", "/over-mtls").await?;
        if r.status == 200 && r.backend() == "app-b" { Ok(r) } else { Err(format!("{r:?}")) }
    })
    .await;
    assert_eq!(r.status, 200);
    // The sidecar's inbound demands a mesh certificate: plain HTTP gets no answer from the app.
    let plain = traffic::get(b_in, "b", "/plain").await;
    assert!(!plain.as_ref().is_ok_and(|r| r.backend() == "app-b"), "a plain client reached app-b: {plain:?}");
    // The gateway's Envoy holds an identity certificate for its service.
    let certs = topo.envoy("edge-1").admin_get("/certs").await.expect("admin /certs");
    assert!(certs.contains("spiffe://default/edge"), "{certs}");
    topo.cleanup().await;
}

/// TrafficPermission on a sidecar inbound, by the client certificate's
/// identity (issue 15): gateway `edge` (listener tagged `listener: public`)
/// → sidecar b-1. No permission in the mesh: allowed. A permission from
/// `kuma.io/service: edge`: allowed by the gateway's SPIFFE identity. A
/// permission from `{kuma.io/service: edge, listener: public}`: the gateway
/// (whose listener has that tag) lets the request through, but its
/// certificate carries no `kuma://listener/public`, so b-1 answers 403
/// (RBAC) and the application sees nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_enforces_traffic_permission_by_client_identity() {
    let (app, topo, _, gw_port) = gateway_and_sidecar("mtls-permission", ", tags: {listener: public}").await;
    let zone = topo.zone("zone-1");
    let sidecar = topo.envoy("b-1");
    let status = |path: &'static str, want: u16| async move {
        eventually(&format!("GET {path} through the gateway answers {want}"), WAIT, || async {
            let r = traffic::get(gw_port, "any.example.com", path).await?;
            if r.status == want { Ok(r) } else { Err(format!("{r:?}")) }
        })
        .await
    };
    let r = status("/no-permission", 200).await;
    assert_eq!(r.backend(), "app-b", "no TrafficPermission in the mesh: allowed");

    let permission = |name: &str, source: &str| {
        format!(
            "type: TrafficPermission\nmesh: default\nname: {name}\nsources: [{{match: {source}}}]\ndestinations: [{{match: {{kuma.io/service: b}}}}]\n"
        )
    };
    zone.api().apply_yaml(&permission("edge-to-b", "{kuma.io/service: edge}")).await;
    eventually("b-1's inbound gets its RBAC", WAIT, || async {
        let dump = sidecar.admin_get("/config_dump?resource=dynamic_listeners").await?;
        if dump.contains("envoy.filters.http.rbac") { Ok(()) } else { Err("no RBAC filter yet".to_string()) }
    })
    .await;
    let r = status("/by-identity", 200).await;
    assert_eq!(r.backend(), "app-b", "allowed by the gateway's identity spiffe://default/edge");

    zone.api().apply_yaml(&permission("edge-public-to-b", "{kuma.io/service: edge, listener: public}")).await;
    let (code, body) = zone.api().delete("/meshes/default/traffic-permissions/edge-to-b").await;
    assert!(code < 300, "delete edge-to-b: {code} {body}");
    let r = status("/denied", 403).await;
    assert_eq!(r.body, "RBAC: access denied", "{r:?}");
    let stats = sidecar.admin_get("/stats?filter=rbac.denied").await.expect("b-1 stats");
    let denied: u64 = stats
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| k.ends_with("rbac.denied"))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum();
    assert!(denied >= 1, "the 403 came from b-1's RBAC: {stats}");
    let seen_before = app.seen().len();
    for _ in 0..5 {
        let r = traffic::get(gw_port, "any.example.com", "/denied-again").await.expect("request");
        assert_eq!(r.status, 403, "{r:?}");
    }
    assert_eq!(app.seen().len(), seen_before, "a denied request never reaches the application");
    topo.cleanup().await;
}

/// The setup of the gateway → sidecar tests: a STRICT mTLS mesh, `app-b`
/// behind sidecar `b-1` (service `b`, HTTP) and gateway `edge` (one HTTP
/// listener; `listener_extra` is appended inside its entry, e.g.
/// `", tags: {listener: public}"`) routing `/` to `b`, with both Envoys
/// ready. Returns the app, the topology, b-1's inbound port and the
/// gateway's port.
async fn gateway_and_sidecar(name: &str, listener_extra: &str) -> (traffic::HttpBackend, Topology, u16, u16) {
    let app = traffic::http_backend("app-b").await;
    let mut topo = Topology::builder(name).zone("zone-1").start().await;
    let (b_in, gw_port) = (traffic::free_port(), traffic::free_port());
    let zone = topo.zone("zone-1");
    zone.api().apply_yaml(MTLS_MESH).await;
    zone.api()
        .apply_yaml(&format!(
            "type: Dataplane\nmesh: default\nname: b-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {b_in}\n    servicePort: {}\n    tags: {{kuma.io/service: b, kuma.io/protocol: http}}\n",
            app.port
        ))
        .await;
    zone.api()
        .apply_yaml(&format!(
            "type: MeshGateway\nmesh: default\nname: edge\nselectors: [{{match: {{kuma.io/service: edge}}}}]\nconf: {{listeners: [{{port: {gw_port}, protocol: HTTP{listener_extra}}}]}}\n---\ntype: MeshGatewayRoute\nmesh: default\nname: to-b\nselectors: [{{match: {{kuma.io/service: edge}}}}]\nconf:\n  http:\n    rules:\n    - matches: [{{path: {{match: PREFIX, value: /}}}}]\n      backends: [{{destination: {{kuma.io/service: b}}}}]\n"
        ))
        .await;
    zone.api().apply_yaml(&traffic::gateway_dataplane("edge-1", "edge")).await;
    topo.add_envoy("zone-1", "b-1", meridian_tests::XdsMode::Delta).await.wait_ready().await;
    topo.add_envoy("zone-1", "edge-1", meridian_tests::XdsMode::Delta).await.wait_ready().await;
    (app, topo, b_in, gw_port)
}
