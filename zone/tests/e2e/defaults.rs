//! What a standalone zone does by itself at start, as the incumbent: it
//! creates the `default` Mesh (none with `--skip-default-mesh`), and serves
//! its running configuration at `GET /config` with secrets redacted.
//! (A federated zone never creates it: `tests/tests/multizone/auth.rs`
//! checks that a zone the global refuses holds no `default` Mesh.)

use crate::support::Zone;

#[tokio::test]
async fn standalone_zone_creates_the_default_mesh_and_serves_its_config() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let zone = Zone::start_with(&tmp.path().join("zone"), None, &["--admin-token", "zone-admin-secret"]).await;
    let meshes = zone.get("/meshes").await.expect("GET /meshes");
    assert_eq!(meshes["total"], 1, "{meshes}");
    assert_eq!(meshes["items"][0]["name"], "default", "{meshes}");

    // Loopback is trusted (the default), so the harness's client is admin.
    let config = zone.get("/config").await.expect("GET /config");
    assert_eq!(config["mode"], "zone", "{config}");
    assert_eq!(config["flags"]["zone"], "zone-1", "{config}");
    assert_eq!(config["flags"]["adminToken"], "<redacted>", "{config}");
    assert_eq!(config["flags"]["skipDefaultMesh"], false, "{config}");
    assert!(config["flags"]["globalAddress"].is_null(), "standalone: {config}");
    assert!(!config.to_string().contains("zone-admin-secret"), "the admin token leaked: {config}");
    zone.stop().await;

    let skipped = Zone::start(&tmp.path().join("skipped"), None).await;
    let meshes = skipped.get("/meshes").await.expect("GET /meshes");
    assert_eq!(meshes["total"], 0, "--skip-default-mesh: {meshes}");
    assert_eq!(skipped.get("/config").await.expect("GET /config")["flags"]["skipDefaultMesh"], true);
    skipped.stop().await;
}
