//! Cross-mesh gateways, same zone, real Envoys: mesh `default` and mesh
//! `other`, both with builtin mTLS (STRICT). A client sidecar in `other`
//! reaches the `crossMesh` listener of gateway `edge` in `default` through
//! an outbound tagged `kuma.io/mesh: default`, by the gateway's internal
//! host name; the gateway routes on to an application behind a sidecar of
//! `default`. A plain client gets nothing from the crossMesh listener.
//!
//! ```text
//!   mesh other:   client ─▶ c-1 outbound 127.0.0.1:<c_out> ══mTLS (other's identity, default's CA)══╗
//!   mesh default: edge-1 :<gw> (crossMesh, trusts every mesh's CA) ◀══════════════════════════════╝
//!                   └─▶ b-1 inbound ─▶ app-b
//! ```

use meridian_tests::{
    JsonApi, Topology, WAIT, XdsMode, eventually,
    process::{Announce, Process, binary, envoy_binary},
    traffic::{self, free_port},
};

fn mtls_mesh(name: &str) -> String {
    format!("type: Mesh\nname: {name}\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n")
}

/// Gateway `edge` of mesh `default`: a crossMesh HTTP listener on `port`, `/` to service `b`.
fn edge_cross_mesh(port: u16) -> String {
    format!(
        "type: MeshGateway\nmesh: default\nname: edge\nselectors: [{{match: {{kuma.io/service: edge}}}}]\nconf: {{listeners: [{{port: {port}, protocol: HTTP, crossMesh: true}}]}}\n---\ntype: MeshGatewayRoute\nmesh: default\nname: to-b\nselectors: [{{match: {{kuma.io/service: edge}}}}]\nconf:\n  http:\n    rules:\n    - matches: [{{path: {{match: PREFIX, value: /}}}}]\n      backends: [{{destination: {{kuma.io/service: b}}}}]\n"
    )
}

/// Sidecar b-1 of mesh `default` in front of the application on `app_port`.
fn b_sidecar(port: u16, app_port: u16) -> String {
    format!(
        "type: Dataplane\nmesh: default\nname: b-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {port}\n    servicePort: {app_port}\n    tags: {{kuma.io/service: b, kuma.io/protocol: http}}\n"
    )
}

/// Client c-1 of mesh `other`: an outbound to gateway `edge` of mesh `default`.
fn client_yaml(port: u16, out: u16) -> String {
    format!(
        "type: Dataplane\nmesh: other\nname: c-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {port}\n    tags: {{kuma.io/service: c}}\n  outbound:\n  - port: {out}\n    tags: {{kuma.io/service: edge, kuma.io/mesh: default}}\n"
    )
}

/// `meridian-zone <kind> run -f` for resource `yaml` named `name` in `zone`,
/// with a token issued by `issuer` (`POST /tokens/dataplane` with `token`).
async fn run_proxy(
    topo: &Topology,
    issuer: &str,
    zone: &str,
    name: &str,
    kind: &str,
    yaml: &str,
    token: serde_json::Value,
) -> Process {
    let zone = topo.zone(zone);
    let dir = topo.dir().part_dir(name);
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).expect("write the resource file");
    let token = JsonApi::new(issuer).post_text("/tokens/dataplane", &token).await;
    let token_file = dir.join(format!("{name}.token"));
    std::fs::write(&token_file, token).expect("token file");
    let admin_file = dir.join("admin");
    let runner = Process::new(name, binary("meridian-zone"), &topo.dir().logs());
    let mut args: Vec<std::ffi::OsString> = [kind, "run", "--api-url", zone.api_url()].map(Into::into).to_vec();
    args.extend(zone.xds_flags());
    args.extend(["--dataplane-token-file".into(), token_file.into()]);
    args.extend(["--admin-address".into(), "127.0.0.1:0".into(), "--envoy".into(), envoy_binary().into()]);
    args.extend(["--config-dir".into(), dir.clone().into(), "-f".into(), file.into()]);
    args.extend(["--", "--concurrency", "1", "--admin-address-path"].map(Into::into));
    args.push(admin_file.clone().into());
    runner.start(&args, &Announce::File(admin_file)).await;
    runner
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_another_mesh_reaches_a_cross_mesh_gateway() {
    let app = traffic::http_backend("app-b").await;
    let mut topo = Topology::builder("cross-mesh").zone("zone-1").start().await;
    let (b_in, gw_port, c_in, c_out) = (free_port(), free_port(), free_port(), free_port());
    let zone = topo.zone("zone-1");
    zone.api().apply_yaml(&mtls_mesh("default")).await;
    zone.api().apply_yaml(&mtls_mesh("other")).await;
    zone.api().apply_yaml(&b_sidecar(b_in, app.port)).await;
    zone.api().apply_yaml(&edge_cross_mesh(gw_port)).await;
    zone.api().apply_yaml(&traffic::gateway_dataplane("edge-1", "edge")).await;
    topo.add_envoy("zone-1", "b-1", XdsMode::Delta).await.wait_ready().await;
    topo.add_envoy("zone-1", "edge-1", XdsMode::Delta).await.wait_ready().await;

    // c-1 in mesh other, run by `dataplane run` with a token of mesh other
    // (a standalone zone issues its own).
    let issuer = topo.zone("zone-1").api_url().to_string();
    let token = serde_json::json!({"name": "c-1", "mesh": "other", "validFor": "1h"});
    let runner = run_proxy(&topo, &issuer, "zone-1", "c-1", "dataplane", &client_yaml(c_in, c_out), token).await;
    let r = eventually("c-1 (mesh other) reaches app-b through the crossMesh gateway", WAIT, || async {
        // A client-sent identity is replaced by the certificate's.
        let spoof = [("x-meridian-client-identity", "spiffe://default/admin")];
        let r = traffic::request(c_out, "GET", "internal.edge.default.mesh", "/cross-mesh", &spoof).await?;
        if r.status == 200 && r.backend() == "app-b" { Ok(r) } else { Err(format!("{r:?}")) }
    })
    .await;
    assert_eq!(r.status, 200);
    // The gateway tells the application who called, from the client's certificate.
    let seen =
        r.echo().expect("echo")["headers"]["x-meridian-client-identity"].as_str().unwrap_or_default().to_string();
    assert!(seen.contains("spiffe://other/c"), "client identity at the application: {seen:?}");
    assert!(!seen.contains("spiffe://default/admin"), "a spoofed identity reached the application: {seen:?}");
    // The crossMesh listener demands a mesh certificate: plain HTTP gets nothing from the app.
    let plain = traffic::get(gw_port, "internal.edge.default.mesh", "/plain").await;
    assert!(!plain.as_ref().is_ok_and(|r| r.backend() == "app-b"), "a plain client reached app-b: {plain:?}");
    assert!(runner.sigterm().await.success(), "c-1's runner exit");
    topo.cleanup().await;
}

/// Across zones: the crossMesh gateway runs in zone-2 (announced by its
/// ingress with `kuma.io/mesh: default`); the client of mesh `other` runs in
/// zone-1 and reaches it through zone-2's ingress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_in_another_zone_and_mesh_reaches_a_cross_mesh_gateway_through_the_ingress() {
    let app = traffic::http_backend("app-b").await;
    let mut topo = Topology::builder("cross-mesh-zones")
        .global_spec(meridian_tests::GlobalSpec::default())
        .zone("zone-1")
        .zone("zone-2")
        .start()
        .await;
    let (b_in, gw_port, c_in, c_out, ingress_port) = (free_port(), free_port(), free_port(), free_port(), free_port());
    let global = topo.global().api();
    global.apply_yaml(&mtls_mesh("default")).await;
    global.apply_yaml(&mtls_mesh("other")).await;
    global.apply_yaml(&edge_cross_mesh(gw_port)).await;
    let z2 = topo.zone("zone-2");
    z2.api().wait_for("/meshes/other", "mesh other reaches zone-2", |_| true).await;
    z2.api().apply_yaml(&b_sidecar(b_in, app.port)).await;
    z2.api().apply_yaml(&traffic::gateway_dataplane("edge-1", "edge")).await;
    topo.add_envoy("zone-2", "b-1", XdsMode::Delta).await.wait_ready().await;
    topo.add_envoy("zone-2", "edge-1", XdsMode::Delta).await.wait_ready().await;
    let issuer = topo.global().api().base().to_string();
    let ingress = run_proxy(
        &topo,
        &issuer,
        "zone-2",
        "ingress-2",
        "ingress",
        &format!(
            "type: ZoneIngress\nname: ingress-2\nnetworking: {{address: 127.0.0.1, port: {ingress_port}, advertisedAddress: 127.0.0.1, advertisedPort: {ingress_port}}}\n"
        ),
        serde_json::json!({"name": "ingress-2", "type": "ingress", "validFor": "1h"}),
    )
    .await;
    topo.zone("zone-1")
        .api()
        .wait_for("/zoneingresses/zone-2.ingress-2", "zone-2's ingress announcing the crossMesh listener", |zi| {
            zi["availableServices"].as_array().is_some_and(|s| {
                s.iter().any(|s| s["tags"]["kuma.io/mesh"] == "default" && s["tags"]["kuma.io/service"] == "edge")
            })
        })
        .await;
    topo.zone("zone-1").api().wait_for("/meshes/other", "mesh other reaches zone-1", |_| true).await;
    let client = run_proxy(
        &topo,
        &issuer,
        "zone-1",
        "c-1",
        "dataplane",
        &client_yaml(c_in, c_out),
        serde_json::json!({"name": "c-1", "mesh": "other", "validFor": "1h"}),
    )
    .await;
    eventually("c-1 (mesh other, zone-1) reaches app-b behind the crossMesh gateway in zone-2", WAIT, || async {
        let r = traffic::get(c_out, "internal.edge.default.mesh", "/cross-mesh-zones").await?;
        if r.status == 200 && r.backend() == "app-b" { Ok(()) } else { Err(format!("{r:?}")) }
    })
    .await;
    assert!(client.sigterm().await.success(), "c-1's runner exit");
    assert!(ingress.sigterm().await.success(), "ingress runner exit");
    topo.cleanup().await;
}

/// Issue 12/15: the crossMesh gateway's access log names the caller's mesh
/// and service, and TrafficPermission can name a caller of another mesh.
/// A TrafficLog (the default format, file backend) records
/// `spiffe://other/c`; a permission from `{kuma.io/mesh: other,
/// kuma.io/service: c}` lets c-1 through; once the only cross-mesh
/// permission names another service of `other`, c-1 gets 403 from the
/// gateway and the application sees nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_mesh_callers_are_logged_and_permitted_by_identity() {
    let app = traffic::http_backend("app-b").await;
    let mut topo = Topology::builder("cross-mesh-permission").zone("zone-1").start().await;
    let (b_in, gw_port, c_in, c_out) = (free_port(), free_port(), free_port(), free_port());
    let log = topo.dir().path().join("edge-access.log");
    let zone = topo.zone("zone-1");
    zone.api()
        .apply_yaml(&format!(
            "{}logging:\n  defaultBackend: file\n  backends:\n  - name: file\n    type: file\n    conf: {{path: {}}}\n",
            mtls_mesh("default"),
            log.display()
        ))
        .await;
    zone.api().apply_yaml(&mtls_mesh("other")).await;
    let permission = |name: &str, source: &str| {
        format!(
            "type: TrafficPermission\nmesh: default\nname: {name}\nsources: [{{match: {source}}}]\ndestinations: [{{match: {{kuma.io/service: b}}}}]\n"
        )
    };
    // The gateway reaches b-1 (which now checks permissions), c of mesh other is named.
    zone.api().apply_yaml(&permission("edge-to-b", "{kuma.io/service: edge}")).await;
    zone.api().apply_yaml(&permission("other-c-to-b", "{kuma.io/mesh: other, kuma.io/service: c}")).await;
    zone.api()
        .apply_yaml(
            "type: TrafficLog\nmesh: default\nname: log-edge\nsources: [{match: {kuma.io/service: edge}}]\ndestinations: [{match: {kuma.io/service: '*'}}]\n",
        )
        .await;
    zone.api().apply_yaml(&b_sidecar(b_in, app.port)).await;
    zone.api().apply_yaml(&edge_cross_mesh(gw_port)).await;
    zone.api().apply_yaml(&traffic::gateway_dataplane("edge-1", "edge")).await;
    topo.add_envoy("zone-1", "b-1", XdsMode::Delta).await.wait_ready().await;
    topo.add_envoy("zone-1", "edge-1", XdsMode::Delta).await.wait_ready().await;
    let issuer = topo.zone("zone-1").api_url().to_string();
    let token = serde_json::json!({"name": "c-1", "mesh": "other", "validFor": "1h"});
    let runner = run_proxy(&topo, &issuer, "zone-1", "c-1", "dataplane", &client_yaml(c_in, c_out), token).await;
    let call = |path: &'static str, want: u16| async move {
        eventually(&format!("c-1 (mesh other) GET {path} answers {want}"), WAIT, || async {
            let r = traffic::request(c_out, "GET", "internal.edge.default.mesh", path, &[]).await?;
            if r.status == want { Ok(r) } else { Err(format!("{r:?}")) }
        })
        .await
    };
    let r = call("/permitted", 200).await;
    assert_eq!(r.backend(), "app-b", "{r:?}");
    eventually("the access log names the caller's mesh and service", std::time::Duration::from_secs(60), || async {
        let _ = traffic::request(c_out, "GET", "internal.edge.default.mesh", "/logged", &[]).await;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        match text.lines().find(|l| l.contains("/logged")) {
            Some(line) if line.contains("spiffe://other/c") => Ok(()),
            _ => Err(text),
        }
    })
    .await;

    // The cross-mesh permission now names another service of mesh other.
    let zone = topo.zone("zone-1");
    zone.api().apply_yaml(&permission("other-c-to-b", "{kuma.io/mesh: other, kuma.io/service: someone-else}")).await;
    let r = call("/refused", 403).await;
    assert_eq!(r.body, "RBAC: access denied", "{r:?}");
    let seen = app.seen().len();
    for _ in 0..5 {
        let r = traffic::request(c_out, "GET", "internal.edge.default.mesh", "/refused-again", &[]).await;
        assert_eq!(r.map(|r| r.status).ok(), Some(403));
    }
    assert_eq!(app.seen().len(), seen, "a refused caller never reaches the application");
    assert!(runner.sigterm().await.success(), "c-1's runner exit");
    topo.cleanup().await;
}
