//! Point 3: the labels the control plane sets itself (`kuma.io/origin`,
//! `kuma.io/zone`, `kuma.io/display-name`) are refused in user writes, and
//! resources synced over KDS still carry them.

use meridian_tests::{Backend, Topology, resources, resources::label};
use serde_json::{Value, json};

const RESERVED: [&str; 3] = ["kuma.io/origin", "kuma.io/zone", "kuma.io/display-name"];

fn with_labels(mut r: Value, labels: Value) -> Value {
    r["labels"] = labels;
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_labels_are_refused_in_user_writes() {
    let topo =
        Topology::builder("hardening-labels").global(Backend::Sqlite).mesh("default").zone("zone-1").start().await;
    let (g, z) = (topo.global(), topo.zone("zone-1"));
    let admin = g.admin_http();

    // At the global: the hand-written "synced from a zone" that would stick.
    for key in RESERVED {
        let gw = with_labels(resources::gateway("stuck", 8080), json!({key: "zone", "team": "edge"}));
        let r = admin.put("/meshes/default/meshgateways/stuck", &gw).await;
        assert_eq!(r.status, 400, "{key}: {}", r.text);
        let params = r.invalid_parameters();
        assert_eq!(params.len(), 1, "{}", r.text);
        assert_eq!(params[0].0, format!("labels[\"{key}\"]"), "{}", r.text);
        assert!(params[0].1.contains("set by the control plane"), "{}", r.text);
    }
    // Dry runs too, and nothing was stored.
    let gw = with_labels(resources::gateway("stuck", 8080), json!({"kuma.io/origin": "zone"}));
    let r = admin.put("/meshes/default/meshgateways/stuck?dryRun=true", &gw).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(admin.get("/meshes/default/meshgateways/stuck").await.status, 404);
    // Other labels are the user's.
    let ok = with_labels(resources::gateway("ok", 8080), json!({"team": "edge", "kuma.io/service-owner": "x"}));
    assert_eq!(admin.put("/meshes/default/meshgateways/ok", &ok).await.status, 201);

    // meridianctl apply goes through the same check: exit 1, the field path.
    let yaml = "type: MeshGateway\nmesh: default\nname: stuck\nlabels:\n  kuma.io/origin: zone\n\
                selectors:\n- match:\n    kuma.io/service: gw\nconf:\n  listeners:\n  - port: 8080\n    protocol: HTTP\n";
    let out = g.ctl().with(["apply", "-f", "-"]).run_stdin(yaml).await.expect_code(1);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(all.contains("labels[\"kuma.io/origin\"]"), "{all}");

    // In a zone: a local Dataplane claiming to come from the global.
    let dp = with_labels(resources::dataplane("dp-1", "10.0.0.1", "web"), json!({"kuma.io/origin": "global"}));
    let (status, body) = z.api().put("/meshes/default/dataplanes/dp-1", &dp).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["invalid_parameters"][0]["field"], "labels[\"kuma.io/origin\"]", "{body}");
    topo.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synced_resources_keep_their_system_labels() {
    let topo = Topology::builder("hardening-synced-labels")
        .global(Backend::Sqlite)
        .mesh("default")
        .zone("zone-1")
        .start()
        .await;
    let (g, z) = (topo.global(), topo.zone("zone-1"));
    // Zone → global: the global stores the zone's Dataplane with its origin.
    z.api().apply(&resources::dataplane("dp-1", "10.0.0.1", "web")).await;
    let dp = g
        .api()
        .wait_for("/meshes/default/dataplanes/zone-1.dp-1", "synced from zone-1", |v| {
            label(v, "kuma.io/origin") == Some("zone")
        })
        .await;
    assert_eq!(label(&dp, "kuma.io/zone"), Some("zone-1"), "{dp}");
    assert_eq!(label(&dp, "kuma.io/display-name"), Some("dp-1"), "{dp}");
    // ... which users cannot change or delete at the global (made by a real
    // zone, not by writing the labels by hand).
    let r = g.admin_http().delete("/meshes/default/dataplanes/zone-1.dp-1").await;
    assert_eq!(r.status, 403, "{}", r.text);
    // Global → zone: the zone stores the global's gateway as global-origin.
    g.api().apply(&resources::gateway("gw-1", 8080)).await;
    z.api()
        .wait_for("/meshes/default/meshgateways/gw-1", "synced from the global", |v| {
            label(v, "kuma.io/origin") == Some("global")
        })
        .await;
    topo.cleanup().await;
}
