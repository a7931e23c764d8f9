//! What a standalone zone does by itself at start, as the incumbent: it
//! creates the `default` Mesh (none with `--skip-default-mesh`), and serves
//! its running configuration at `GET /config` with secrets redacted.
//! (A federated zone never creates it: `tests/tests/multizone/defaults.rs`.)

use meridian_tests::{TestDir, Zone};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_zone_creates_the_default_mesh_and_serves_its_config() {
    let dir = TestDir::new("zone-defaults");
    let zone = Zone::standalone_with(&dir, "zone-1", &["--admin-token", "zone-admin-secret"]).await;
    let meshes = zone.api().get("/meshes").await;
    assert_eq!(meshes["total"], 1, "{meshes}");
    assert_eq!(meshes["items"][0]["name"], "default", "{meshes}");

    // Loopback is trusted (the default), so the harness's client is admin.
    let config = zone.api().get("/config").await;
    assert_eq!(config["mode"], "zone", "{config}");
    assert_eq!(config["flags"]["zone"], "zone-1", "{config}");
    assert_eq!(config["flags"]["adminToken"], "<redacted>", "{config}");
    assert_eq!(config["flags"]["skipDefaultMesh"], false, "{config}");
    assert!(config["flags"]["globalAddress"].is_null(), "standalone: {config}");
    assert!(!config.to_string().contains("zone-admin-secret"), "the admin token leaked: {config}");
    assert!(zone.process().sigterm().await.success());

    let skipped = Zone::standalone(&dir, "zone-2").await;
    let meshes = skipped.api().get("/meshes").await;
    assert_eq!(meshes["total"], 0, "--skip-default-mesh: {meshes}");
    assert_eq!(skipped.api().get("/config").await["flags"]["skipDefaultMesh"], true);
}
