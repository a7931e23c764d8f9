//! The zone-to-Envoy hop, secured: xDS over TLS by default (Envoy trusts
//! the zone's generated CA through its bootstrap), nothing for a plaintext
//! client, TLS private keys only in SDS secrets (never in a listener), and
//! a certificate rotated at the global reaching the gateway's next
//! handshakes without a failed request and without a listener update.
//!
//! Real processes: a global, a zone, Envoy, an HTTP backend; assertions on
//! Envoy's admin `/config_dump` and on the certificate each HTTPS handshake
//! presents.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use envoy_types::pb::envoy::{
    config::core::v3::Node,
    service::discovery::v3::{
        DeltaDiscoveryRequest, aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
    },
};
use meridian_tests::{Envoy, GlobalSpec, Topology, WAIT, XdsMode, Zone, eventually, traffic};
use meridian_zone::gateway::LISTENER_TYPE;
use rustls_pki_types::{CertificateDer, pem::PemObject};
use serde_json::Value;
use tokio_stream::wrappers::ReceiverStream;

/// An HTTPS MeshGateway on `port` for `host` with Secret `gw-cert`, routing
/// everything to service `web`; its gateway Dataplane is `gw-1`.
fn https_gateway(port: u16, host: &str) -> String {
    format!(
        r#"
type: MeshGateway
mesh: default
name: gw
selectors: [{{match: {{kuma.io/service: gw}}}}]
conf:
  listeners:
  - {{port: {port}, protocol: HTTPS, hostname: {host}, tls: {{mode: TERMINATE, certificates: [{{secret: gw-cert}}]}}}}
---
type: MeshGatewayRoute
mesh: default
name: web
selectors: [{{match: {{kuma.io/service: gw}}}}]
conf: {{http: {{rules: [{{matches: [{{path: {{match: PREFIX, value: /}}}}], backends: [{{destination: {{kuma.io/service: web}}}}]}}]}}}}
"#
    )
}

/// The config dump section of `@type` ending in `kind`.
fn dump_section<'a>(dump: &'a Value, kind: &str) -> &'a Value {
    dump["configs"]
        .as_array()
        .and_then(|c| c.iter().find(|s| s["@type"].as_str().is_some_and(|t| t.ends_with(kind))))
        .unwrap_or_else(|| panic!("no {kind} in the config dump"))
}

/// The dynamic listener `name`'s active state.
fn listener<'a>(dump: &'a Value, name: &str) -> Option<&'a Value> {
    dump_section(dump, "ListenersConfigDump")["dynamic_listeners"]
        .as_array()?
        .iter()
        .find(|l| l["name"] == name)
        .map(|l| &l["active_state"])
}

/// The active SDS secret `name`.
fn secret<'a>(dump: &'a Value, name: &str) -> Option<&'a Value> {
    dump_section(dump, "SecretsConfigDump")["dynamic_active_secrets"].as_array()?.iter().find(|s| s["name"] == name)
}

async fn config_dump(envoy: &Envoy) -> Value {
    let text = envoy.admin_get("/config_dump").await.expect("config_dump");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("config_dump is not JSON: {e}"))
}

/// A line of the key's base64 body: present anywhere means the key leaked.
fn key_body(c: &traffic::Cert) -> String {
    c.key_pem.lines().nth(1).expect("key PEM body").to_string()
}

fn der(c: &traffic::Cert) -> Vec<u8> {
    CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).expect("cert PEM").to_vec()
}

/// A client trusting `certs`, resolving `host` to the gateway, opening a
/// new connection (a new handshake) for every request, and reporting the
/// certificate each handshake presented.
fn fresh_handshake_client(host: &str, port: u16, certs: &[&traffic::Cert]) -> reqwest::Client {
    meridian_tests::init_crypto();
    let roots: Vec<reqwest::Certificate> =
        certs.iter().map(|c| reqwest::Certificate::from_pem(c.cert_pem.as_bytes()).expect("root")).collect();
    reqwest::Client::builder()
        .tls_certs_only(roots)
        .tls_info(true)
        .pool_max_idle_per_host(0)
        .resolve(host, std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// One request: the presented certificate (DER) or why it failed.
async fn presented(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let r = client.get(url).send().await.map_err(|e| format!("{e:?}"))?;
    if r.status() != 200 {
        return Err(format!("status {}", r.status()));
    }
    let cert = r
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .map(<[u8]>::to_vec)
        .ok_or("no TLS info")?;
    let body: Value = r.json().await.map_err(|e| e.to_string())?;
    if body["name"] != "web" {
        return Err(format!("answered by {body}"));
    }
    Ok(cert)
}

/// A delta ADS stream opened by a client that speaks plaintext gRPC to the
/// zone's xDS port, naming a registered gateway: it must get nothing.
async fn plaintext_client_gets_nothing(zone: &Zone, node_id: &str) {
    let attempt = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", zone.xds()))
            .map_err(|e| format!("endpoint: {e}"))?
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(DeltaDiscoveryRequest {
            node: Some(Node { id: node_id.to_string(), ..Default::default() }),
            type_url: LISTENER_TYPE(),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
        let mut stream = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .map_err(|e| format!("open: {e}"))?
            .into_inner();
        match stream.message().await {
            Ok(Some(resp)) => Ok(resp),
            Ok(None) => Err("stream ended".to_string()),
            Err(e) => Err(format!("stream: {e}")),
        }
    };
    match tokio::time::timeout(WAIT, attempt).await {
        Ok(Ok(resp)) => panic!("a plaintext client received configuration: {resp:?}"),
        Ok(Err(why)) => eprintln!("plaintext client refused: {why}"),
        Err(_) => eprintln!("plaintext client got nothing before the deadline"),
    }
}

/// A zone serves xDS over TLS with a generated CA (key 0600); Envoy gets
/// its configuration through the TLS bootstrap, on SotW, and an HTTPS
/// listener's certificate through SDS; a plaintext gRPC client and a TLS
/// client that does not trust the zone's CA get nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_is_served_over_tls_only() {
    use std::os::unix::fs::PermissionsExt;
    meridian_tests::process::envoy_binary();
    let cert = traffic::cert("sotw.example.com");
    let web = traffic::http_backend("web").await;
    let topo = Topology::builder("xds-tls").zone("zone").start().await;
    let zone = topo.zone("zone");
    let ca = zone.xds_ca().expect("TLS by default");
    assert!(ca.is_file(), "the zone generated its xDS CA at {}", ca.display());
    let key = zone.data_dir().join("xds.key");
    let mode = std::fs::metadata(&key).expect("xds.key").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} is private", key.display());

    zone.api().apply_yaml(traffic::MESH).await;
    zone.api().apply_yaml(&traffic::backend_dataplane("web-1", &[(web.port, "web")])).await;
    zone.api().apply_yaml(&traffic::secret("gw-cert", &cert)).await;
    let port = traffic::free_port();
    zone.api().apply_yaml(&https_gateway(port, "sotw.example.com")).await;
    zone.api().apply_yaml(&traffic::gateway_dataplane("gw-1", "gw")).await;
    let envoy = Envoy::start(topo.dir(), zone, "gw-1", XdsMode::Sotw).await;
    envoy.wait_ready().await;

    // Envoy dials the zone over TLS: its xDS cluster has the TLS socket.
    let dump = config_dump(&envoy).await;
    let clusters = dump_section(&dump, "ClustersConfigDump").to_string();
    assert!(clusters.contains("UpstreamTlsContext"), "the xDS cluster speaks TLS: {clusters}");

    // The HTTPS listener works with the certificate it got over SDS (SotW).
    let client = fresh_handshake_client("sotw.example.com", port, &[&cert]);
    let url = format!("https://sotw.example.com:{port}/");
    let got = eventually("HTTPS through the SotW gateway", WAIT, || presented(&client, &url)).await;
    assert_eq!(got, der(&cert));
    let dump = config_dump(&envoy).await;
    let l = listener(&dump, &format!("gw:HTTPS:{port}")).map(Value::to_string).unwrap_or_default();
    assert!(l.contains("secret:gw-cert") && !l.contains(&key_body(&cert)), "{l}");

    plaintext_client_gets_nothing(zone, "default.gw-1").await;

    // A TLS client that does not trust the zone's CA fails its handshake.
    let stranger = traffic::cert("localhost");
    let roots = tonic::transport::Certificate::from_pem(stranger.cert_pem);
    let refused = async {
        tonic::transport::Endpoint::from_shared(format!("https://{}", zone.xds()))
            .map_err(|e| e.to_string())?
            .tls_config(tonic::transport::ClientTlsConfig::new().ca_certificate(roots).domain_name("localhost"))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| e.to_string())
    };
    assert!(refused.await.is_err(), "a client trusting another CA connected");
    // The zone's CA works (the harness's own client).
    assert!(zone.xds_channel().await.is_ok(), "a client trusting the zone's CA connects");
    drop(envoy);
    let _ = zone.sigterm().await;
}

/// An HTTPS gateway whose Secret lives at the global: the private key is
/// only in Envoy's secrets (redacted), the listener names an SDS secret;
/// replacing the Secret at the global while requests flow changes the
/// certificate of the next handshakes, fails no request, and leaves the
/// listener as it was (no drain).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_travel_over_sds_and_rotate_without_a_drain() {
    meridian_tests::process::envoy_binary();
    const HOST: &str = "secure.example.com";
    let (first, second) = (traffic::cert(HOST), traffic::cert(HOST));
    let web = traffic::http_backend("web").await;
    let topo =
        Topology::builder("xds-sds").global_spec(GlobalSpec::default()).mesh("default").zone("zone-1").start().await;
    let (global, zone) = (topo.global(), topo.zone("zone-1"));
    let port = traffic::free_port();
    global.api().apply_yaml(&traffic::secret("gw-cert", &first)).await;
    global.api().apply_yaml(&https_gateway(port, HOST)).await;
    zone.api().apply_yaml(&traffic::backend_dataplane("web-1", &[(web.port, "web")])).await;
    zone.api().apply_yaml(&traffic::gateway_dataplane("gw-1", "gw")).await;
    let envoy = Envoy::start(topo.dir(), zone, "gw-1", XdsMode::Delta).await;
    envoy.wait_ready().await;

    let url = format!("https://{HOST}:{port}/");
    let client = fresh_handshake_client(HOST, port, &[&first, &second]);
    let got = eventually("HTTPS with the first certificate", WAIT, || presented(&client, &url)).await;
    assert_eq!(got, der(&first));

    // The listener references the SDS secret (over ADS); the key is only in
    // the secrets section, redacted; nowhere in the dump in clear.
    let dump = config_dump(&envoy).await;
    let listener_name = format!("gw:HTTPS:{port}");
    let before = listener(&dump, &listener_name).cloned().expect("the HTTPS listener");
    let text = before.to_string();
    assert!(text.contains("tls_certificate_sds_secret_configs"), "{text}");
    assert!(text.contains("\"secret:gw-cert\"") && text.contains("\"ads\""), "{text}");
    assert!(!text.contains("PRIVATE KEY") && !text.contains("private_key"), "key material in the listener: {text}");
    let s = secret(&dump, "secret:gw-cert").cloned().expect("the SDS secret");
    assert_eq!(s["secret"]["tls_certificate"]["private_key"]["inline_string"], "[redacted]", "{s}");
    assert!(!dump.to_string().contains(&key_body(&first)), "the private key appears in the config dump");
    let secret_version = s["version_info"].clone();

    // Requests on fresh connections while the Secret is replaced at the global.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok_first, ok_second, failed) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let loop_task = tokio::spawn({
        let (client, url, stop) = (client.clone(), url.clone(), stop.clone());
        let (ok_first, ok_second, failed) = (ok_first.clone(), ok_second.clone(), failed.clone());
        let (first, second) = (der(&first), der(&second));
        async move {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match presented(&client, &url).await {
                    Ok(c) if c == first => ok_first.fetch_add(1, Ordering::Relaxed),
                    Ok(c) if c == second => ok_second.fetch_add(1, Ordering::Relaxed),
                    Ok(_) => {
                        errors.push("an unknown certificate".to_string());
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        errors.push(e);
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            errors
        }
    });
    eventually("requests flow before the rotation", WAIT, || async {
        if ok_first.load(Ordering::Relaxed) >= 5 { Ok(()) } else { Err("fewer than 5 requests".to_string()) }
    })
    .await;
    global.api().apply_yaml(&traffic::secret("gw-cert", &second)).await;
    eventually("the next handshakes present the new certificate", WAIT, || async {
        let n = ok_second.load(Ordering::Relaxed);
        if n >= 5 { Ok(()) } else { Err(format!("{n} requests saw the new certificate")) }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let errors = loop_task.await.expect("request loop");
    assert!(errors.is_empty(), "requests failed during the rotation: {errors:?}");
    assert_eq!(failed.load(Ordering::Relaxed), 0);

    // Only the secret changed: the listener was not updated (no drain).
    let dump = config_dump(&envoy).await;
    let after = listener(&dump, &listener_name).cloned().expect("the HTTPS listener");
    assert_eq!(after["version_info"], before["version_info"], "the listener was replaced");
    assert_eq!(after["last_updated"], before["last_updated"], "the listener was updated");
    let s = secret(&dump, "secret:gw-cert").cloned().expect("the SDS secret");
    assert_ne!(s["version_info"], secret_version, "the secret has a new version");
    assert!(!dump.to_string().contains(&key_body(&second)), "the new private key appears in the config dump");
    drop(envoy);
    let _ = zone.sigterm().await;
}

/// Plaintext only when both sides ask for it: a zone run with
/// `--xds-plaintext` warns at start and serves an Envoy bootstrapped with
/// `--xds-plaintext`; a bootstrap refuses a missing CA, and a TLS address
/// with `--xds-plaintext`, with the flag named and a non-zero exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_only_when_both_sides_ask() {
    meridian_tests::process::envoy_binary();
    let web = traffic::http_backend("web").await;
    let dir = meridian_tests::TestDir::new("xds-plaintext");
    let zone = Zone::standalone_with(&dir, "zone", &["--xds-plaintext"]).await;
    zone.wait_log(&["--xds-plaintext", "without TLS"], WAIT).await;
    assert!(!zone.data_dir().join("xds-ca.crt").exists(), "no CA is generated for a plaintext zone");
    zone.api().apply_yaml(&traffic::backend_dataplane("web-1", &[(web.port, "web")])).await;
    let port = traffic::free_port();
    zone.api()
        .apply_yaml(&format!(
            r#"
type: MeshGateway
mesh: default
name: gw
selectors: [{{match: {{kuma.io/service: gw}}}}]
conf: {{listeners: [{{port: {port}, protocol: HTTP}}]}}
---
type: MeshGatewayRoute
mesh: default
name: web
selectors: [{{match: {{kuma.io/service: gw}}}}]
conf: {{http: {{rules: [{{matches: [{{path: {{match: PREFIX, value: /}}}}], backends: [{{destination: {{kuma.io/service: web}}}}]}}]}}}}
"#
        ))
        .await;
    zone.api().apply_yaml(&traffic::gateway_dataplane("gw-1", "gw")).await;
    let envoy = Envoy::start(&dir, &zone, "gw-1", XdsMode::Delta).await;
    envoy.wait_ready().await;
    let r = eventually("HTTP through the plaintext-fed gateway", WAIT, || async {
        let r = traffic::get(port, "any.example.com", "/").await?;
        if r.backend() == "web" { Ok(r) } else { Err(format!("{r:?}")) }
    })
    .await;
    assert_eq!(r.status, 200);

    let bootstrap = |args: &[&str]| {
        std::process::Command::new(meridian_tests::process::binary("meridian-zone"))
            .args(["dataplane", "bootstrap", "--name", "gw-1"])
            .args(args)
            .env("HOME", dir.path())
            .output()
            .expect("run dataplane bootstrap")
    };
    let missing = dir.path().join("no-such-ca.crt");
    let out = bootstrap(&["--xds-address", "127.0.0.1:5678", "--ca-cert", missing.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--ca-cert") && err.contains("no-such-ca.crt"), "{err}");
    assert!(out.stdout.is_empty(), "nothing printed on failure");
    // Without --ca-cert the default CA path is named, with the way out.
    let out = bootstrap(&["--xds-address", "127.0.0.1:5678"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(".meridian/zone/xds-ca.crt") && err.contains("--ca-cert"), "{err}");
    let out = bootstrap(&["--xds-address", "https://127.0.0.1:5678", "--xds-plaintext"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("asks for TLS") && err.contains("--xds-plaintext"), "{err}");
    drop(envoy);
    let _ = zone.sigterm().await;
}

/// A zone serving the operator's certificate (`--xds-tls-cert/--xds-tls-key`)
/// generates nothing; Envoy trusting that certificate gets its
/// configuration; the zone's `_bootstrap` endpoint, which does not know the
/// operator's CA, says to use `dataplane bootstrap --ca-cert` (409).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_certificate_serves_xds() {
    meridian_tests::process::envoy_binary();
    let web = traffic::http_backend("web").await;
    let dir = meridian_tests::TestDir::new("xds-operator-cert");
    let own = traffic::cert("127.0.0.1");
    let (cert, key) = (dir.path().join("xds-own.crt"), dir.path().join("xds-own.key"));
    std::fs::write(&cert, &own.cert_pem).expect("write cert");
    std::fs::write(&key, &own.key_pem).expect("write key");
    let (cert_arg, key_arg) = (cert.to_str().expect("utf-8"), key.to_str().expect("utf-8"));
    let zone = Zone::standalone_with(&dir, "zone", &["--xds-tls-cert", cert_arg, "--xds-tls-key", key_arg]).await;
    assert!(!zone.data_dir().join("xds-ca.crt").exists(), "nothing generated beside an operator certificate");
    zone.api().apply_yaml(&traffic::backend_dataplane("web-1", &[(web.port, "web")])).await;
    let port = traffic::free_port();
    zone.api()
        .apply_yaml(&format!(
            r#"
type: MeshGateway
mesh: default
name: gw
selectors: [{{match: {{kuma.io/service: gw}}}}]
conf: {{listeners: [{{port: {port}, protocol: HTTP}}]}}
---
type: MeshGatewayRoute
mesh: default
name: web
selectors: [{{match: {{kuma.io/service: gw}}}}]
conf: {{http: {{rules: [{{matches: [{{path: {{match: PREFIX, value: /}}}}], backends: [{{destination: {{kuma.io/service: web}}}}]}}]}}}}
"#
        ))
        .await;
    zone.api().apply_yaml(&traffic::gateway_dataplane("gw-1", "gw")).await;
    let envoy = Envoy::start(&dir, &zone, "gw-1", XdsMode::Delta).await;
    envoy.wait_ready().await;
    let r = eventually("HTTP through the gateway", WAIT, || async {
        let r = traffic::get(port, "any.example.com", "/").await?;
        if r.backend() == "web" { Ok(r) } else { Err(format!("{r:?}")) }
    })
    .await;
    assert_eq!(r.status, 200);

    let url = format!("{}/meshes/default/dataplanes/gw-1/_bootstrap", zone.api_url());
    let resp = reqwest::get(&url).await.expect("GET _bootstrap");
    assert_eq!(resp.status().as_u16(), 409);
    let body = resp.text().await.expect("body");
    assert!(body.contains("--ca-cert"), "{body}");
    drop(envoy);
    let _ = zone.sigterm().await;
}
