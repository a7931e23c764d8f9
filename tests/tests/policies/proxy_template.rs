//! ProxyTemplate at the global's REST API (`proxytemplates`, refusals with
//! field paths, `meridianctl get proxytemplate`), synced to a zone, and its
//! effect on a real gateway Envoy: a raw cluster added, the gateway
//! listener's `per_connection_buffer_limit_bytes` patched and a
//! `connection_limit` network filter added (all seen in Envoy's admin
//! config dump), a removed cluster making its route answer
//! 500 (cluster not found), an HTTP filter added before the router
//! (`header_mutation` adding a response header, seen on a request) and
//! then removed by another modification (the header gone), and
//! a patch Envoy refuses reported as a NACK.

use meridian_tests::{Backend, Topology, WAIT, eventually, traffic};
use serde_json::json;

/// The gateway `edge` (one HTTP listener on `port`) with `/web` → web and
/// `/gone` → gone.
fn gateway(port: u16) -> String {
    format!(
        "type: MeshGateway\nmesh: default\nname: edge\nselectors: [{{match: {{kuma.io/service: edge}}}}]\n\
         conf: {{listeners: [{{port: {port}, protocol: HTTP}}]}}\n---\n\
         type: MeshGatewayRoute\nmesh: default\nname: edge-route\nselectors: [{{match: {{kuma.io/service: edge}}}}]\n\
         conf:\n  http:\n    rules:\n\
         \x20   - matches: [{{path: {{match: PREFIX, value: /web}}}}]\n      backends: [{{destination: {{kuma.io/service: web}}}}]\n\
         \x20   - matches: [{{path: {{match: PREFIX, value: /gone}}}}]\n      backends: [{{destination: {{kuma.io/service: gone}}}}]\n"
    )
}

/// The template under test, as users write it (universal JSON; the Envoy
/// parts are YAML strings, as in the incumbent's format).
fn template(listener_patch: &str) -> serde_json::Value {
    json!({
        "type": "ProxyTemplate", "mesh": "default", "name": "edge-template",
        "selectors": [{"match": {"kuma.io/service": "edge"}}],
        "conf": {
            "imports": ["gateway-proxy"],
            "resources": [{"name": "extra", "version": "v1", "resource":
                "\"@type\": type.googleapis.com/envoy.config.cluster.v3.Cluster\nname: extra\ntype: STATIC\nconnect_timeout: 2s\nload_assignment:\n  cluster_name: extra\n  endpoints:\n  - lb_endpoints:\n    - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9}}}\n"}],
            "modifications": [
                {"listener": {"operation": "patch", "match": {"origin": "gateway"}, "value": listener_patch}},
                {"cluster": {"operation": "remove", "match": {"name": "gone"}}},
                {"httpFilter": {"operation": "addBefore",
                    "match": {"name": "envoy.filters.http.router", "origin": "gateway"},
                    "value": "name: envoy.filters.http.header_mutation\ntyped_config:\n  \"@type\": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation\n  mutations:\n    response_mutations:\n    - append: {header: {key: x-proxy-template, value: applied}}\n"}},
                {"networkFilter": {"operation": "addBefore",
                    "match": {"name": "envoy.filters.network.http_connection_manager"},
                    "value": "name: envoy.filters.network.connection_limit\ntyped_config:\n  \"@type\": type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit\n  stat_prefix: template_limit\n  max_connections: 1000\n"}}
            ]
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_template_changes_the_gateway_envoy() {
    let topo = Topology::builder("policies-proxy-template")
        .global(Backend::Sqlite)
        .zone("zone-1")
        .http_backend("web", "zone-1")
        .http_backend("gone", "zone-1")
        .gateway("zone-1", "edge-gw", "edge")
        .start()
        .await;
    let (global, zone, envoy) = (topo.global(), topo.zone("zone-1"), topo.envoy("edge-gw"));
    let port = traffic::free_port();
    global.api().apply_yaml(&gateway(port)).await;
    envoy.wait_ready().await;
    let status = |path: &'static str| async move {
        traffic::request(port, "GET", "edge.example.com", path, &[]).await.map(|r| r.status)
    };
    eventually("/gone answers before the template", WAIT, || async {
        match status("/gone").await? {
            200 => Ok(()),
            s => Err(format!("{s}")),
        }
    })
    .await;

    // Refused with field paths; nothing stored.
    let api = global.http();
    let mut bad = template("per_connection_buffer_limit_bytes: 32768\n");
    bad["conf"]["modifications"][0]["listener"]["operation"] = json!("merge");
    bad["conf"]["modifications"]
        .as_array_mut()
        .expect("a list")
        .push(json!({"httpFilter": {"operation": "addBefore", "value": "name: f"}}));
    let r = api.put("/meshes/default/proxytemplates/edge-template", &bad).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let invalid = r.invalid_parameters();
    for want in [
        (
            "conf.modifications[0].listener.operation",
            "invalid operation. Available operations: \"add\", \"patch\", \"remove\"",
        ),
        (
            "conf.modifications[4].httpFilter.match.name",
            "cannot be empty. You need to pick a filter before which this one will be added",
        ),
    ] {
        assert!(invalid.contains(&(want.0.to_string(), want.1.to_string())), "want {want:?}; got {invalid:?}");
    }
    assert_eq!(global.api().try_get("/meshes/default/proxytemplates/edge-template").await.map(|r| r.0), Ok(404));

    // Applied: stored, listed by meridianctl, synced to the zone.
    let good = template("per_connection_buffer_limit_bytes: 32768\n");
    let r = api.put("/meshes/default/proxytemplates/edge-template", &good).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let out = global.ctl().with(["get", "proxytemplate", "-m", "default", "-o", "json"]).run().await.expect_code(0);
    assert!(out.stdout.contains("edge-template"), "{}", out.stdout);
    let synced = zone.api().wait_for("/meshes/default/proxytemplates/edge-template", "synced", |_| true).await;
    assert_eq!(synced["conf"], good["conf"], "{synced}");

    // Envoy has the raw cluster and the patched listener; `gone` is removed.
    eventually("the raw cluster and the listener patch reach Envoy", WAIT, || async {
        let clusters = envoy.admin_get("/config_dump?resource=dynamic_active_clusters").await?;
        let listeners = envoy.admin_get("/config_dump?resource=dynamic_listeners").await?;
        if clusters.contains("\"name\": \"extra\"")
            && !clusters.contains("\"name\": \"gone\"")
            && listeners.contains("\"per_connection_buffer_limit_bytes\": 32768")
            && listeners.contains("\"stat_prefix\": \"template_limit\"")
        {
            Ok(())
        } else {
            Err(format!("{clusters}\n{listeners}"))
        }
    })
    .await;
    // The route's `cluster_not_found_response_code` (500, as for a
    // destination that resolves to no service).
    eventually("the route to the removed cluster answers 500", WAIT, || async {
        match status("/gone").await? {
            500 => Ok(()),
            s => Err(format!("{s}")),
        }
    })
    .await;
    assert_eq!(status("/web").await, Ok(200), "the other route still works");
    let added_header = || async {
        let r = traffic::request(port, "GET", "edge.example.com", "/web", &[]).await?;
        Ok::<_, String>((r.status, r.headers.get("x-proxy-template").cloned()))
    };
    eventually("the HTTP filter added before the router sets its response header", WAIT, || async {
        match added_header().await? {
            (200, Some(v)) if v == "applied" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // A later modification removes that filter: the header goes.
    let mut removed = template("per_connection_buffer_limit_bytes: 32768\n");
    removed["conf"]["modifications"].as_array_mut().expect("a list").push(json!({"httpFilter": {
        "operation": "remove", "match": {"name": "envoy.filters.http.header_mutation"}}}));
    let r = api.put("/meshes/default/proxytemplates/edge-template", &removed).await;
    assert_eq!(r.status, 200, "{}", r.text);
    eventually("the removed HTTP filter no longer sets its header", WAIT, || async {
        match added_header().await? {
            (200, None) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // A patch Envoy refuses (a second filter chain, with a filter Envoy
    // does not know) is a NACK in the DataplaneInsight; Envoy keeps serving
    // what it had.
    let nacked = template("filter_chains: [{filters: [{name: meridian.no.such.filter}]}]\n");
    let r = api.put("/meshes/default/proxytemplates/edge-template", &nacked).await;
    assert_eq!(r.status, 200, "{}", r.text);
    eventually("the NACK shows in the DataplaneInsight", WAIT, || async {
        let i = zone.api().fetch("/meshes/default/dataplane-insights/edge-gw").await?;
        let status = &i["subscriptions"][0]["status"];
        let template_nacked = status["configSources"].as_array().is_some_and(|s| {
            s.iter().any(|c| c["type"] == "ProxyTemplate" && c["name"] == "edge-template" && c["state"] == "NACKed")
        });
        if template_nacked && status["lastNackReason"].as_str().is_some_and(|r| r.contains("edge:HTTP")) {
            Ok(())
        } else {
            Err(i.to_string())
        }
    })
    .await;
    assert_eq!(status("/web").await, Ok(200), "Envoy keeps the configuration it accepted");
    topo.cleanup().await;
}
