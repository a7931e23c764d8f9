//! A resource's whole life over real HTTP and `meridianctl`: every endpoint,
//! create/update/conflict/invalid/delete, paging, overviews, and a SIGKILL
//! restart on the same store that loses nothing.

use meridian_core::Manager;
use meridian_store::Store;
use meridian_sync_proto::universal;
use meridian_tests::{Backend, Global, Topology};
use serde_json::{Value, json};

use crate::{gateway, gateway_yaml, snapshot, without_times, yaml_docs};

crate::on_both_stores!(run);

async fn run(backend: Backend) {
    let topo = Topology::builder("global-api-lifecycle").global(backend).start().await;
    let g = topo.global();
    service_endpoints(g, backend).await;
    let api = g.http();

    // A mesh through meridianctl, from stdin.
    let out = g.ctl().with(["apply", "-f", "-"]).run_stdin("type: Mesh\nname: default\n").await.ok();
    assert_eq!(out.lines(), ["created Mesh default"]);
    let out = g.ctl().with(["apply", "-f", "-"]).run_stdin("type: Mesh\nname: default\n").await.ok();
    assert_eq!(out.lines(), ["unchanged Mesh default"]);

    // Create over HTTP: 201 and an ETag; GET returns the same.
    let path = "/meshes/default/meshgateways/gw";
    let created = api.put(path, &gateway("default", "gw", 8080)).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let rev1 = created.etag.clone().unwrap_or_else(|| panic!("no ETag on create"));
    let got = api.get(path).await;
    assert_eq!((got.status, got.etag.as_deref()), (200, Some(rev1.as_str())), "{}", got.text);
    assert_eq!(without_times(got.json.clone()), gateway("default", "gw", 8080));

    // Update with the current revision: 200 and a new ETag.
    let updated = api.put_if_match(path, &gateway("default", "gw", 8081), &rev1).await;
    assert_eq!(updated.status, 200, "{}", updated.text);
    let rev2 = updated.etag.clone().unwrap_or_else(|| panic!("no ETag on update"));
    assert_ne!(rev1, rev2);

    // A stale update: 409, and the stored resource is the second one.
    let stale = api.put_if_match(path, &gateway("default", "gw", 9999), &rev1).await;
    assert_eq!(stale.status, 409, "{}", stale.text);
    assert!(stale.details().contains("changed concurrently"), "{}", stale.text);
    let got = api.get(path).await;
    assert_eq!(got.etag.as_deref(), Some(rev2.as_str()));
    assert_eq!(got.json.pointer("/conf/listeners/0/port"), Some(&json!(8081)));
    // A stale delete is refused the same way.
    let stale_delete = api.request(reqwest::Method::DELETE, path, None, &[("If-Match", &format!("\"{rev1}\""))]).await;
    assert_eq!(stale_delete.status, 409, "{}", stale_delete.text);

    // meridianctl apply: unchanged keeps the revision, a change updates.
    let ctl = g.ctl();
    let out = ctl.with(["apply", "-f", "-"]).run_stdin(&gateway_yaml("default", "gw", 8081)).await.ok();
    assert_eq!(out.lines(), ["unchanged MeshGateway default/gw"]);
    assert_eq!(api.get(path).await.etag.as_deref(), Some(rev2.as_str()));
    let out = ctl.with(["apply", "-f", "-"]).run_stdin(&gateway_yaml("default", "gw", 8082)).await.ok();
    assert_eq!(out.lines(), ["updated MeshGateway default/gw"]);

    invalid_writes(g).await;
    dry_runs(g).await;
    paging(g).await;
    zones_and_secrets(g).await;

    // get -o json / yaml of one resource: what the API returns.
    let out = ctl.with(["get", "meshgateway", "gw", "-o", "json"]).run().await.ok();
    let from_ctl: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    assert_eq!(from_ctl, api.get(path).await.json);
    let out = ctl.with(["get", "MeshGateway", "gw", "-m", "default", "-o", "yaml"]).run().await.ok();
    assert_eq!(yaml_docs(&out.stdout), [api.get(path).await.json]);

    // Delete through meridianctl; again is "not found" (exit 1).
    let out = ctl.with(["delete", "meshgateway", "gw-0"]).run().await.ok();
    assert_eq!(out.lines(), ["deleted MeshGateway default/gw-0"]);
    assert_eq!(api.get("/meshes/default/meshgateways/gw-0").await.status, 404);
    let out = ctl.with(["delete", "meshgateway", "gw-0"]).run().await.expect_code(1);
    assert!(out.stderr.contains("not found"), "{}", out.stderr);
    let deleted = api.delete("/meshes/default/meshgateways/gw-1").await;
    assert_eq!(deleted.status, 200, "{}", deleted.text);
    assert_eq!(api.delete("/meshes/default/meshgateways/gw-1").await.status, 404);

    restart_loses_nothing(g).await;
    topo.cleanup().await;
}

/// `GET /`, `/ready`, `/healthy`, `/metrics`.
async fn service_endpoints(g: &Global, backend: Backend) {
    let api = g.http();
    let index = api.get("/").await;
    assert_eq!(index.status, 200, "{}", index.text);
    assert_eq!(index.json["mode"], "global");
    assert_eq!(index.json["store"], backend.name());
    assert!(index.json["version"].as_str().is_some_and(|v| !v.is_empty()), "{}", index.text);
    assert_eq!(api.get("/ready").await.status, 200);
    assert_eq!(api.get("/healthy").await.status, 200);
    let metrics = api.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.text.contains("meridian_api_requests"), "{}", metrics.text);
    let out = g.ctl().with(["version"]).run().await.ok();
    assert!(out.stdout.contains(&format!("global, store {}", backend.name())), "{}", out.stdout);
}

/// Invalid resources: 400 with the field path, over HTTP and through
/// meridianctl (which refuses the whole file before sending anything).
async fn invalid_writes(g: &Global) {
    let api = g.http();
    let before = snapshot(&api).await;

    let bad = api.put("/meshes/default/meshgateways/bad", &gateway("default", "bad", 0)).await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert!(
        bad.invalid_parameters()
            .contains(&("conf.listeners[0].port".into(), "port must be in the range [1, 65535]".into())),
        "{}",
        bad.text
    );

    // A valid document and an invalid one in one file: nothing is applied.
    let file = format!("{}---\n{}", gateway_yaml("default", "good", 80), gateway_yaml("default", "bad", 70000));
    let out = g.ctl().with(["apply", "-f", "-"]).run_stdin(&file).await.expect_code(1);
    assert!(
        out.stderr.contains("MeshGateway bad: conf.listeners[0].port: port must be in the range [1, 65535]"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "{}", out.stdout);

    // Valid locally, refused by the server (no such mesh): its details and field.
    let out = g.ctl().with(["apply", "-f", "-"]).run_stdin(&gateway_yaml("nope", "gw", 80)).await.expect_code(1);
    assert!(out.stderr.contains("error: MeshGateway nope/gw: mesh: mesh \"nope\" does not exist"), "{}", out.stderr);
    assert!(out.stderr.contains("\n  mesh: mesh \"nope\" does not exist"), "{}", out.stderr);

    assert_eq!(snapshot(&api).await, before, "an invalid write changed something");
}

/// `?dryRun=true` and `apply --dry-run` check everything and write nothing.
async fn dry_runs(g: &Global) {
    let api = g.http();
    let before = snapshot(&api).await;
    let r = api.put("/meshes/default/meshgateways/dry?dryRun=true", &gateway("default", "dry", 80)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = api.put("/meshes/default/meshgateways/dry?dryRun=true", &gateway("default", "dry", 0)).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let out = g.ctl().with(["apply", "--dry-run", "-f", "-"]).run_stdin(&gateway_yaml("default", "dry", 80)).await.ok();
    assert_eq!(out.lines(), ["created MeshGateway default/dry (dry run)"]);
    let out =
        g.ctl().with(["apply", "--dry-run", "-f", "-"]).run_stdin(&gateway_yaml("default", "gw", 8082)).await.ok();
    assert_eq!(out.lines(), ["unchanged MeshGateway default/gw (dry run)"]);
    let out =
        g.ctl().with(["apply", "--dry-run", "-f", "-"]).run_stdin(&gateway_yaml("default", "gw", 8083)).await.ok();
    assert_eq!(out.lines(), ["updated MeshGateway default/gw (dry run)"]);
    let out = g
        .ctl()
        .with(["apply", "--dry-run", "-f", "-"])
        .run_stdin(&gateway_yaml("nope", "dry", 80))
        .await
        .expect_code(1);
    assert!(out.stderr.contains("does not exist"), "{}", out.stderr);
    assert_eq!(api.get("/meshes/default/meshgateways/dry").await.status, 404);
    assert_eq!(snapshot(&api).await, before, "a dry run changed something");
}

/// `size`/`offset` pages with `next` links, over HTTP and in meridianctl.
async fn paging(g: &Global) {
    let api = g.http();
    let file: Vec<String> = (0..5).map(|i| gateway_yaml("default", &format!("gw-{i}"), 9000 + i)).collect();
    let out = g.ctl().with(["apply", "-f", "-"]).run_stdin(&file.join("---\n")).await.ok();
    assert_eq!(out.lines().len(), 5, "{}", out.stdout);
    assert!(out.lines().iter().all(|l| l.starts_with("created MeshGateway default/gw-")), "{}", out.stdout);

    let expected = ["gw", "gw-0", "gw-1", "gw-2", "gw-3", "gw-4"];
    let first = api.get("/meshes/default/meshgateways?size=2").await;
    assert_eq!(first.item_names(), ["gw", "gw-0"], "{}", first.text);
    assert!(first.json["next"].as_str().is_some_and(|n| n.contains("offset=2")), "{}", first.text);
    let (items, totals) = api.list_following_next("/meshes/default/meshgateways?size=2").await;
    let names: Vec<&str> = items.iter().filter_map(|i| i["name"].as_str()).collect();
    assert_eq!(names, expected);
    assert_eq!(totals, [6, 6, 6]);
    let last = api.get("/meshes/default/meshgateways?size=2&offset=4").await;
    assert_eq!(last.json["next"], Value::Null, "{}", last.text);
    let bad_size = api.get("/meshes/default/meshgateways?size=0").await;
    assert_eq!(bad_size.status, 400, "{}", bad_size.text);
    let cross_mesh = api.get("/meshgateways").await;
    assert_eq!(cross_mesh.item_names(), expected);

    // meridianctl fetches every page; its table has kumactl's columns.
    let out = g.ctl().with(["get", "meshgateways", "--page-size", "2", "-o", "json"]).run().await.ok();
    let v: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    let names: Vec<&str> = v["items"].as_array().into_iter().flatten().filter_map(|i| i["name"].as_str()).collect();
    assert_eq!(names, expected);
    let out = g.ctl().with(["get", "meshgateways", "--page-size", "4"]).run().await.ok();
    let header: Vec<&str> = out.lines()[0].split_whitespace().collect();
    assert_eq!(header, ["MESH", "NAME", "AGE"]);
    let rows: Vec<&str> = out.lines()[1..].iter().filter_map(|l| l.split_whitespace().nth(1)).collect();
    assert_eq!(rows, expected);
    let out = g.ctl().with(["get", "meshgateways", "-A", "-o", "yaml"]).run().await.ok();
    assert_eq!(yaml_docs(&out.stdout).len(), 6);
}

/// Zones (global type) and Secrets (data only to admins, never in lists).
async fn zones_and_secrets(g: &Global) {
    let api = g.http();
    let out = g.ctl().with(["apply", "-f", "-"]).run_stdin("type: Zone\nname: zone-1\n").await.ok();
    assert_eq!(out.lines(), ["created Zone zone-1"]);
    let out = g.ctl().with(["get", "zones"]).run().await.ok();
    assert!(out.lines()[0].starts_with("NAME"), "{}", out.stdout);
    assert!(out.lines().iter().any(|l| l.starts_with("zone-1 ")), "{}", out.stdout);
    let overview = api.get("/zones/_overview").await;
    assert_eq!(overview.status, 200, "{}", overview.text);
    assert_eq!(overview.item_names(), ["zone-1"]);
    assert_eq!(overview.json["items"][0]["online"], false);
    let out = g.ctl().with(["inspect", "zones"]).run().await.ok();
    let row: Vec<&str> = out.lines()[1].split_whitespace().collect();
    assert_eq!(&row[..3], ["zone-1", "Offline", "never"], "{}", out.stdout);

    let secret = "type: Secret\nmesh: default\nname: tls-1\ndata: aGVsbG8=\n";
    let out = g.ctl().with(["apply", "-f", "-"]).run_stdin(secret).await.ok();
    assert_eq!(out.lines(), ["created Secret default/tls-1"]);
    let list = api.get("/meshes/default/secrets").await;
    assert_eq!(list.item_names(), ["tls-1"]);
    assert!(list.json["items"][0].get("data").is_none(), "data in a list: {}", list.text);
    let one = api.get("/meshes/default/secrets/tls-1").await;
    assert_eq!(one.json["data"], "aGVsbG8=", "{}", one.text);
    let out = g.ctl().with(["apply", "-f", "-"]).run_stdin(secret).await.ok();
    assert_eq!(out.lines(), ["unchanged Secret default/tls-1"]);
}

/// SIGKILL, then a new process on the same store: every resource, revision
/// and time is still there, and writes continue. While it is down, a
/// zone-synced Dataplane and its insight are written to the store (as KDS
/// would) to check the dataplane overview.
async fn restart_loses_nothing(g: &Global) {
    let api = g.http();
    let before = snapshot(&api).await;
    let etag_before = api.get("/meshes/default/meshgateways/gw").await.etag;

    g.kill();
    write_zone_dataplane(g.store_url()).await;
    g.restart().await;

    let api = g.http();
    let mut after = snapshot(&api).await;
    let dataplanes = after.as_object_mut().and_then(|o| o.remove("dataplanes")).unwrap_or_default();
    let mut expected = before.clone();
    expected.as_object_mut().map(|o| o.remove("dataplanes"));
    assert_eq!(after, expected, "something changed across the restart");
    assert_eq!(dataplanes["total"], 1, "{dataplanes}");
    assert_eq!(api.get("/meshes/default/meshgateways/gw").await.etag, etag_before);

    let overview = api.get("/meshes/default/dataplanes/_overview").await;
    assert_eq!(overview.status, 200, "{}", overview.text);
    assert_eq!(overview.item_names(), ["zone-1.edge-1"]);
    assert_eq!(overview.json["items"][0]["dataplaneInsight"]["subscriptions"][0]["id"], "sub-1");
    let out = g.ctl().with(["inspect", "dataplanes", "-m", "default"]).run().await.ok();
    let row = out.lines().get(1).copied().unwrap_or_default();
    for part in ["default", "zone-1.edge-1", "kuma.io/service=edge", "Online", "7", "2", "2.14.0", "1.36.0"] {
        assert!(row.split_whitespace().any(|c| c == part), "{part} missing in: {}", out.stdout);
    }
    let out = g.ctl().with(["get", "dataplanes", "-o", "yaml"]).run().await.ok();
    assert_eq!(yaml_docs(&out.stdout)[0]["networking"]["address"], "10.0.0.7");

    // Writes continue, with revisions after the old ones.
    let out = g.ctl().with(["apply", "-f", "-"]).run_stdin(&gateway_yaml("default", "after", 7000)).await.ok();
    assert_eq!(out.lines(), ["created MeshGateway default/after"]);
    let after_rev: i64 =
        api.get("/meshes/default/meshgateways/after").await.etag.and_then(|e| e.parse().ok()).unwrap_or(0);
    let old_rev: i64 = etag_before.and_then(|e| e.parse().ok()).unwrap_or(i64::MAX);
    assert!(after_rev > old_rev, "revision {after_rev} after restart is not after {old_rev}");
}

/// A Dataplane and its insight as the global stores what zones sync.
async fn write_zone_dataplane(store_url: &str) {
    let store = Store::connect(store_url).await.unwrap_or_else(|e| panic!("open {store_url}: {e}"));
    let docs = [
        json!({"type": "Dataplane", "mesh": "default", "name": "zone-1.edge-1",
            "labels": {"kuma.io/origin": "zone", "kuma.io/zone": "zone-1"},
            "networking": {"address": "10.0.0.7", "gateway": {"type": "BUILTIN", "tags": {"kuma.io/service": "edge"}}}}),
        json!({"type": "DataplaneInsight", "mesh": "default", "name": "zone-1.edge-1",
            "labels": {"kuma.io/origin": "zone", "kuma.io/zone": "zone-1"},
            "subscriptions": [{"id": "sub-1", "controlPlaneInstanceId": "zone-cp-1",
                "connectTime": "2026-01-01T00:00:00Z",
                "status": {"lastUpdateTime": "2026-01-01T00:00:05Z",
                    "total": {"responsesSent": "7", "responsesRejected": "2"}},
                "version": {"kumaDp": {"version": "2.14.0"}, "envoy": {"version": "1.36.0"}}}]}),
    ];
    for doc in docs {
        let r = universal::from_value(doc).unwrap_or_else(|e| panic!("test resource: {e}"));
        // Insights are status: KDS writes them to the status table.
        let written = if Manager::is_status(r.resource_type()) {
            store.put_status(&Manager::encode(&r), &meridian_store::StatusExpect::Any).await.map(|_| ())
        } else {
            store.upsert(Manager::encode(&r)).await.map(|_| ())
        };
        written.unwrap_or_else(|e| panic!("write {}: {e}", r.meta.name));
    }
}
