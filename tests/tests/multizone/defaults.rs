//! The `default` Mesh in a federation (issue 9, item 12): the global
//! creates it at start and zones receive it; a zone connected to a global
//! never creates its own, even when the global has none.

use meridian_tests::{Global, GlobalSpec, TestDir, Zone, resources};
use serde_json::Value;

fn origin(v: &Value) -> Option<&str> {
    v.pointer("/labels/kuma.io~1origin").and_then(Value::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zones_receive_the_globals_default_mesh_and_never_create_one() {
    let dir = TestDir::new("default-mesh");
    let with = Global::start(&dir, "g-default", GlobalSpec { default_mesh: true, ..GlobalSpec::default() }).await;
    assert_eq!(with.api().names("/meshes").await.expect("global API"), ["default"], "created at start");
    let z1 = Zone::connect(&dir, &with, "zone-1").await;
    z1.api().wait_for("/meshes/default", "the global's default Mesh", |v| origin(v) == Some("global")).await;

    // A global started with --skip-default-mesh (the harness's default) has
    // none; its zone, once it holds what the global sent, has none either.
    let without = Global::start(&dir, "g-skip", GlobalSpec::default()).await;
    without.api().apply(&resources::mesh("other")).await;
    let z2 = Zone::connect(&dir, &without, "zone-2").await;
    z2.api().wait_for("/meshes/other", "synced from the global", |_| true).await;
    assert_eq!(z2.api().names("/meshes").await.expect("zone API"), ["other"], "a federated zone created a Mesh");
}
