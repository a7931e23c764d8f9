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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_another_mesh_reaches_a_cross_mesh_gateway() {
    let app = traffic::http_backend("app-b").await;
    let mut topo = Topology::builder("cross-mesh").zone("zone-1").start().await;
    let (b_in, gw_port, c_in, c_out) = (free_port(), free_port(), free_port(), free_port());
    let zone = topo.zone("zone-1");
    zone.api().apply_yaml(&mtls_mesh("default")).await;
    zone.api().apply_yaml(&mtls_mesh("other")).await;
    zone.api()
        .apply_yaml(&format!(
            "type: Dataplane\nmesh: default\nname: b-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {b_in}\n    servicePort: {}\n    tags: {{kuma.io/service: b, kuma.io/protocol: http}}\n",
            app.port
        ))
        .await;
    zone.api()
        .apply_yaml(&format!(
            "type: MeshGateway\nmesh: default\nname: edge\nselectors: [{{match: {{kuma.io/service: edge}}}}]\nconf: {{listeners: [{{port: {gw_port}, protocol: HTTP, crossMesh: true}}]}}\n---\ntype: MeshGatewayRoute\nmesh: default\nname: to-b\nselectors: [{{match: {{kuma.io/service: edge}}}}]\nconf:\n  http:\n    rules:\n    - matches: [{{path: {{match: PREFIX, value: /}}}}]\n      backends: [{{destination: {{kuma.io/service: b}}}}]\n"
        ))
        .await;
    zone.api().apply_yaml(&traffic::gateway_dataplane("edge-1", "edge")).await;
    topo.add_envoy("zone-1", "b-1", XdsMode::Delta).await.wait_ready().await;
    topo.add_envoy("zone-1", "edge-1", XdsMode::Delta).await.wait_ready().await;

    // c-1 in mesh other, run by `dataplane run` with a token of mesh other.
    let zone = topo.zone("zone-1");
    let dir = topo.dir().part_dir("c-1");
    let file = dir.join("c-1.yaml");
    std::fs::write(
        &file,
        format!(
            "type: Dataplane\nmesh: other\nname: c-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {c_in}\n    tags: {{kuma.io/service: c}}\n  outbound:\n  - port: {c_out}\n    tags: {{kuma.io/service: edge, kuma.io/mesh: default}}\n"
        ),
    )
    .expect("write c-1");
    let token = JsonApi::new(zone.api_url())
        .post_text("/tokens/dataplane", &serde_json::json!({"name": "c-1", "mesh": "other", "validFor": "1h"}))
        .await;
    let token_file = dir.join("c-1.token");
    std::fs::write(&token_file, token).expect("token file");
    let admin_file = dir.join("admin");
    let runner = Process::new("c-1", binary("meridian-zone"), &topo.dir().logs());
    let mut args: Vec<std::ffi::OsString> = ["dataplane", "run", "--api-url", zone.api_url()].map(Into::into).to_vec();
    args.extend(zone.xds_flags());
    args.extend(["--dataplane-token-file".into(), token_file.into()]);
    args.extend(["--admin-address".into(), "127.0.0.1:0".into(), "--envoy".into(), envoy_binary().into()]);
    args.extend(["--config-dir".into(), dir.clone().into(), "-f".into(), file.into()]);
    args.extend(["--", "--concurrency", "1", "--admin-address-path"].map(Into::into));
    args.push(admin_file.clone().into());
    runner.start(&args, &Announce::File(admin_file)).await;

    let r = eventually("c-1 (mesh other) reaches app-b through the crossMesh gateway", WAIT, || async {
        let r = traffic::get(c_out, "internal.edge.default.mesh", "/cross-mesh").await?;
        if r.status == 200 && r.backend() == "app-b" { Ok(r) } else { Err(format!("{r:?}")) }
    })
    .await;
    assert_eq!(r.status, 200);
    // The crossMesh listener demands a mesh certificate: plain HTTP gets nothing from the app.
    let plain = traffic::get(gw_port, "internal.edge.default.mesh", "/plain").await;
    assert!(!plain.as_ref().is_ok_and(|r| r.backend() == "app-b"), "a plain client reached app-b: {plain:?}");
    assert!(runner.sigterm().await.success(), "c-1's runner exit");
    topo.cleanup().await;
}
