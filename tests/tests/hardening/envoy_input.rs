//! Point 7 at the API: what Envoy would refuse is refused at apply time,
//! with the field path and the reason (the generator fuzz test in
//! zone/tests/envoy_fuzz.rs proves the other half: what passes, Envoy takes).

use meridian_tests::{Backend, Topology};
use serde_json::{Value, json};

fn route_matching(m: Value) -> Value {
    json!({
        "type": "MeshGatewayRoute", "mesh": "default", "name": "r",
        "selectors": [{"match": {"kuma.io/service": "gw-svc"}}],
        "conf": {"http": {"rules": [{"matches": [m], "backends": [{"destination": {"kuma.io/service": "web"}}]}]}}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regexes_envoy_refuses_are_refused_at_apply() {
    let topo = Topology::builder("hardening-envoy-input").global(Backend::Sqlite).mesh("default").start().await;
    let api = topo.global().admin_http();
    let at = "conf.http.rules[0].matches[0]";
    for (m, field, reason) in [
        (
            json!({"path": {"match": "REGEX", "value": "^/products/[a-z0-9-]{1,64}$"}}),
            format!("{at}.path.value"),
            "RE2 program size",
        ),
        (json!({"path": {"match": "REGEX", "value": "/a{100}"}}), format!("{at}.path.value"), "RE2 program size"),
        (json!({"path": {"match": "PREFIX", "value": "/a\u{0}b"}}), format!("{at}.path.value"), "control characters"),
        (
            json!({"headers": [{"match": "EXACT", "name": "x-a", "value": "v\r\nx-injected: 1"}]}),
            format!("{at}.headers[0].value"),
            "control characters",
        ),
        (
            json!({"queryParameters": [{"match": "EXACT", "name": "q", "value": "a\nb"}]}),
            format!("{at}.query_parameters[0].value"),
            "control characters",
        ),
    ] {
        let r = api.put("/meshes/default/meshgatewayroutes/r", &route_matching(m.clone())).await;
        assert_eq!(r.status, 400, "{m}: {}", r.text);
        let params = r.invalid_parameters();
        assert!(params.iter().any(|(f, why)| *f == field && why.contains(reason)), "{m}: {}", r.text);
    }
    assert_eq!(api.get("/meshes/default/meshgatewayroutes/r").await.status, 404, "nothing was stored");
    // The same intent within Envoy's limits is accepted.
    let ok = route_matching(json!({"path": {"match": "REGEX", "value": "^/products/[a-z0-9-]+$"}}));
    assert_eq!(api.put("/meshes/default/meshgatewayroutes/r", &ok).await.status, 201);
    topo.cleanup().await;
}
