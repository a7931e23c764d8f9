//! The incumbent's REST conventions, over real HTTP against the real
//! `meridian-global` binary (issue 9, items 10-13):
//!
//! - path segments: `zone-insights`, `dataplane-insights`, `zoneingresses`
//!   / `zone-ingresses`, `global-secrets` / `globalsecrets`, and the old
//!   spellings, all answering the same; `meridianctl get` accepting both;
//! - `_overview` filters `?name=`, `?tag=k:v` (repeatable), `?gateway=`
//!   on Dataplanes and `?name=` on zones, 400 with the field on bad values,
//!   `next` links keeping the filters;
//! - the `default` Mesh created at start (and again when missing at the
//!   next start, as the incumbent), none with `--skip-default-mesh`;
//! - `GET /config`: admin only, resolved flags, secrets redacted;
//! - `meridianctl get` / `inspect` showing display names and zones.

use meridian_core::Manager;
use meridian_store::Store;
use meridian_sync_proto::universal;
use meridian_tests::{Api, Backend, Global, GlobalSpec, Topology};
use serde_json::{Value, json};

crate::on_both_stores!(run);

async fn run(backend: Backend) {
    let topo = Topology::builder("global-api-conformance").global(backend).start().await;
    let g = topo.global();
    let api = g.http();
    let meshes = api.get("/meshes").await;
    assert_eq!(meshes.json["total"], 0, "--skip-default-mesh leaves the store empty: {}", meshes.text);
    assert_eq!(api.put("/meshes/default", &json!({"type": "Mesh", "name": "default"})).await.status, 201);
    write_zone_resources(g.store_url()).await;

    path_segments(g).await;
    dataplane_filters(&api).await;
    zone_filters(&api).await;
    display_names(g).await;
    topo.cleanup().await;

    default_mesh_and_config(backend).await;
}

/// What zones sync, stored as the global stores it: three Dataplanes of
/// zone-1 (a builtin gateway, a delegated one, a service) under their
/// stored names with the user's names in `kuma.io/display-name`, a
/// ZoneIngress, and two Zones with their insights.
async fn write_zone_resources(store_url: &str) {
    let store = Store::connect(store_url).await.unwrap_or_else(|e| panic!("open {store_url}: {e}"));
    let zone1 =
        |display: &str| json!({"kuma.io/origin": "zone", "kuma.io/zone": "zone-1", "kuma.io/display-name": display});
    let docs = [
        json!({"type": "Dataplane", "mesh": "default", "name": "edge-1-bcdd994zxbvwfv24", "labels": zone1("edge-1"),
            "networking": {"address": "10.0.0.1", "gateway": {"type": "BUILTIN",
                "tags": {"kuma.io/service": "edge-gateway", "env": "prod"}}}}),
        json!({"type": "Dataplane", "mesh": "default", "name": "kong-01-x7f2c9d1", "labels": zone1("kong-01"),
            "networking": {"address": "10.0.0.2", "gateway": {"tags": {"kuma.io/service": "kong"}},
                "outbound": [{"port": 33033, "tags": {"kuma.io/service": "backend"}}]}}),
        json!({"type": "Dataplane", "mesh": "default", "name": "web-1-5d8b6c2a", "labels": zone1("web-1"),
            "networking": {"address": "10.0.0.3", "inbound": [
                {"port": 8080, "tags": {"kuma.io/service": "web", "version": "v1"}},
                {"port": 9090, "tags": {"kuma.io/service": "web-admin", "version": "v2"}}]}}),
        json!({"type": "DataplaneInsight", "mesh": "default", "name": "web-1-5d8b6c2a", "labels": zone1("web-1"),
            "subscriptions": [{"id": "sub-1", "controlPlaneInstanceId": "zone-cp-1", "connectTime": "2026-01-01T00:00:00Z"}]}),
        json!({"type": "ZoneIngress", "name": "zone-1.ingress-1", "labels": zone1("ingress-1"), "zone": "zone-1",
            "networking": {"address": "10.0.1.1", "port": 10001}}),
        json!({"type": "Zone", "name": "east-1"}),
        json!({"type": "Zone", "name": "west-1"}),
        json!({"type": "ZoneInsight", "name": "east-1", "subscriptions": [{"id": "s", "globalInstanceId": "g",
            "connectTime": "2026-01-01T00:00:00Z", "disconnectTime": "2026-01-01T00:01:00Z"}]}),
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

fn names(r: &meridian_tests::Reply) -> Vec<String> {
    let mut n = r.item_names();
    n.sort();
    n
}

/// Every spelling of a type answers the same list; writes work under the
/// alternative spelling; meridianctl takes both and shows the same.
async fn path_segments(g: &Global) {
    let api = g.http();
    for spellings in [
        &["/zone-insights", "/zoneinsights"][..],
        &["/meshes/default/dataplane-insights", "/meshes/default/dataplaneinsights", "/dataplane-insights"],
        &["/zoneingresses", "/zone-ingresses"],
        &["/global-secrets", "/globalsecrets"],
    ] {
        let first = api.get(spellings[0]).await;
        assert_eq!(first.status, 200, "GET {}: {}", spellings[0], first.text);
        for other in &spellings[1..] {
            let r = api.get(other).await;
            assert_eq!((r.status, names(&r)), (200, names(&first)), "GET {other}: {}", r.text);
        }
    }
    assert_eq!(names(&api.get("/zone-insights").await), ["east-1"]);
    assert_eq!(names(&api.get("/zone-ingresses").await), ["zone-1.ingress-1"]);
    assert_eq!(api.get("/zone-insights/east-1").await.json["name"], "east-1");
    assert_eq!(api.get("/zone-ingresses/zone-1.ingress-1").await.status, 200);
    assert_eq!(api.get("/meshes/default/dataplane-insights/web-1-5d8b6c2a").await.status, 200);

    // A write under the alternative spelling lands on the same resource.
    let secret = json!({"type": "GlobalSecret", "name": "s1", "data": "aGVsbG8="});
    let put = api.put("/globalsecrets/s1", &secret).await;
    assert_eq!(put.status, 201, "{}", put.text);
    assert_eq!(api.get("/global-secrets/s1").await.json["data"], "aGVsbG8=");
    assert_eq!(api.delete("/global-secrets/s1").await.status, 200);
    assert_eq!(api.get("/globalsecrets/s1").await.status, 404);

    for spelling in ["zone-insights", "zoneinsights", "ZoneInsight"] {
        let out = g.ctl().with(["get", spelling, "-o", "json"]).run().await.ok();
        let v: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
        assert_eq!(v["items"][0]["name"], "east-1", "get {spelling}: {}", out.stdout);
    }
    let out = g.ctl().with(["get", "zone-ingresses"]).run().await.ok();
    assert!(out.stdout.contains("zone-1.ingress-1"), "{}", out.stdout);
}

async fn dataplane_filters(api: &Api) {
    let overview = |q: &str| format!("/meshes/default/dataplanes/_overview{q}");
    let (edge, kong, web) = ("edge-1-bcdd994zxbvwfv24", "kong-01-x7f2c9d1", "web-1-5d8b6c2a");
    for (query, want) in [
        ("", &[edge, kong, web][..]),
        ("?gateway=true", &[edge, kong]),
        ("?gateway=false", &[web]),
        ("?gateway=builtin", &[edge]),
        ("?gateway=delegated", &[kong]),
        ("?name=kong", &[kong]),
        ("?name=-1-", &[edge, web]),
        ("?name=nothing", &[]),
        ("?tag=kuma.io/service:web", &[web]),
        ("?tag=kuma.io/service:we", &[web]),
        ("?tag=kuma.io/service:admin&tag=version:v2", &[web]),
        ("?tag=kuma.io/service:admin&tag=version:v1", &[]),
        ("?tag=env:prod", &[edge]),
        ("?tag=kuma.io/service:e&gateway=builtin", &[edge]),
        ("?tag=kuma.io/service:kong&name=kong", &[kong]),
    ] {
        let r = api.get(&overview(query)).await;
        assert_eq!(r.status, 200, "{query}: {}", r.text);
        assert_eq!(names(&r), want, "{query}");
        assert_eq!(r.json["total"], want.len(), "{query}: total counts what passes");
    }
    // The insight still joins a filtered item.
    let r = api.get(&overview("?gateway=false")).await;
    assert_eq!(r.json["items"][0]["dataplaneInsight"]["subscriptions"][0]["id"], "sub-1");
    // The plain list takes the same filters.
    assert_eq!(names(&api.get("/meshes/default/dataplanes?gateway=builtin").await), [edge]);

    for (query, field) in [("?tag=nocolon", "tag"), ("?tag=:v", "tag"), ("?gateway=yes", "gateway")] {
        let r = api.get(&overview(query)).await;
        assert_eq!(r.status, 400, "{query}: {}", r.text);
        let params = r.invalid_parameters();
        assert_eq!(params.first().map(|p| p.0.as_str()), Some(field), "{query}: {}", r.text);
    }
    assert!(api.get(&overview("?tag=nocolon")).await.invalid_parameters()[0].1.contains("must be key:value"));

    // Paging keeps the filter: one item per page, the next links carry it.
    let (items, totals) = api.list_following_next(&overview("?gateway=true&size=1")).await;
    let got: Vec<&str> = items.iter().map(|i| i["name"].as_str().unwrap_or_default()).collect();
    assert_eq!(got, [edge, kong]);
    assert_eq!(totals, [2, 2]);
}

async fn zone_filters(api: &Api) {
    assert_eq!(names(&api.get("/zones/_overview").await), ["east-1", "west-1"]);
    let r = api.get("/zones/_overview?name=east").await;
    assert_eq!((names(&r), r.json["total"].clone()), (vec!["east-1".to_string()], json!(1)));
    assert_eq!(names(&api.get("/zones?name=st-1").await), ["east-1", "west-1"]);
}

/// `meridianctl get` and `inspect` show the user's names and the zone
/// beside the stored names the API addresses.
async fn display_names(g: &Global) {
    let out = g.ctl().with(["get", "dataplanes", "-m", "default"]).run().await.ok();
    let lines = out.lines();
    let header: Vec<&str> = lines[0].split("   ").map(str::trim).filter(|c| !c.is_empty()).collect();
    assert_eq!(header, ["MESH", "NAME", "DISPLAY NAME", "ZONE", "TAGS", "AGE"], "{}", out.stdout);
    let row = lines.iter().find(|l| l.contains("edge-1-bcdd994zxbvwfv24")).copied().unwrap_or_default();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[..4], ["default", "edge-1-bcdd994zxbvwfv24", "edge-1", "zone-1"], "{}", out.stdout);

    let out = g.ctl().with(["inspect", "dataplanes", "-m", "default"]).run().await.ok();
    let row = out.lines().into_iter().find(|l| l.contains("web-1-5d8b6c2a")).unwrap_or_default().to_string();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[..4], ["default", "web-1-5d8b6c2a", "web-1", "zone-1"], "{}", out.stdout);

    // Resources a user applied at the global get no extra columns.
    let out = g.ctl().with(["get", "meshes"]).run().await.ok();
    assert!(!out.stdout.contains("DISPLAY NAME") && !out.stdout.contains("ZONE"), "{}", out.stdout);
}

async fn default_mesh_and_config(backend: Backend) {
    let spec = GlobalSpec { default_mesh: true, trust_loopback: false, plaintext_kds: true, ..GlobalSpec::on(backend) };
    let topo = Topology::builder("global-api-defaults").global_spec(spec).start().await;
    let g = topo.global();
    let admin = g.admin_http();
    assert_eq!(names(&admin.get("/meshes").await), ["default"], "created on an empty store");
    let mesh = admin.get("/meshes/default").await;
    assert_eq!(mesh.status, 200, "{}", mesh.text);
    assert!(mesh.json.get("mtls").is_none(), "an empty Mesh: {}", mesh.text);

    // GET /config: admins only; resolved values; secrets redacted.
    assert_eq!(g.http().get("/config").await.status, 401);
    let config = admin.get("/config").await;
    assert_eq!(config.status, 200, "{}", config.text);
    let c = &config.json;
    assert_eq!(c["mode"], "global");
    assert_eq!(c["dataDir"], g.data_dir().display().to_string());
    assert_eq!(c["flags"]["adminToken"], "<redacted>");
    assert_eq!(c["flags"]["skipDefaultMesh"], false);
    assert_eq!(c["flags"]["apiTrustLoopback"], false);
    assert_eq!(c["flags"]["kdsPlaintext"], true);
    assert_eq!(c["flags"]["apiAddr"], "127.0.0.1:0", "as given; the bound port is in the logs");
    assert!(!config.text.contains(g.admin_token()), "the admin token leaked: {}", config.text);
    match reqwest::Url::parse(g.store_url()).ok().and_then(|u| u.password().map(str::to_string)) {
        Some(password) => {
            assert!(!config.text.contains(&password), "the store password leaked: {}", config.text);
            assert!(c["storeUrl"].as_str().is_some_and(|u| u.contains("<redacted>")), "{}", config.text);
        }
        None => assert_eq!(c["storeUrl"], g.store_url()),
    }

    // Deleted, it comes back at the next start, as in the incumbent.
    assert_eq!(admin.delete("/meshes/default").await.status, 200);
    assert_eq!(admin.get("/meshes").await.json["total"], 0);
    g.restart().await;
    assert_eq!(names(&g.admin_http().get("/meshes").await), ["default"]);
    topo.cleanup().await;
}
