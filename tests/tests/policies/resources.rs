//! The eight policy types at the global: applied and read back at the
//! incumbent's REST paths and with `meridianctl`, refused with field paths
//! and the incumbent's messages (the store unchanged), and synced to a zone.

use meridian_tests::{Backend, Topology};
use serde_json::{Value, json};

/// One valid policy of each type, as users write them (universal JSON),
/// with the REST path segment it lives under.
pub fn one_of_each() -> Vec<(&'static str, Value)> {
    let any = json!([{"match": {"kuma.io/service": "*"}}]);
    let web = json!([{"match": {"kuma.io/service": "web"}}]);
    let p = |ty: &str, name: &str, rest: Value| {
        let mut v = json!({"type": ty, "mesh": "default", "name": name, "sources": any, "destinations": web});
        if let (Some(o), Value::Object(extra)) = (v.as_object_mut(), rest) {
            o.extend(extra);
        }
        v
    };
    vec![
        ("timeouts", p("Timeout", "t-1", json!({"conf": {"connectTimeout": "2s", "http": {"requestTimeout": "1s"}}}))),
        ("retries", p("Retry", "r-1", json!({"conf": {"http": {"numRetries": 3, "retriableStatusCodes": [503]}}}))),
        ("circuit-breakers", p("CircuitBreaker", "cb-1", json!({"conf": {"thresholds": {"maxConnections": 2}}}))),
        (
            "health-checks",
            p(
                "HealthCheck",
                "hc-1",
                json!({"conf": {"interval": "1s", "timeout": "1s", "unhealthyThreshold": 1,
                                 "healthyThreshold": 1, "http": {"path": "/health"}}}),
            ),
        ),
        ("rate-limits", p("RateLimit", "rl-1", json!({"conf": {"http": {"requests": 5, "interval": "10s"}}}))),
        (
            "fault-injections",
            json!({"type": "FaultInjection", "mesh": "default", "name": "fi-1", "sources": any,
                   "destinations": [{"match": {"kuma.io/service": "web", "kuma.io/protocol": "http"}}],
                   "conf": {"abort": {"percentage": 50.0, "httpStatus": 500}}}),
        ),
        ("traffic-permissions", p("TrafficPermission", "tp-1", json!({}))),
        ("traffic-logs", p("TrafficLog", "tl-1", json!({"conf": {"backend": "file"}}))),
    ]
}

/// Invalid policies and the (field, message) each must be refused with.
fn refusals() -> Vec<(&'static str, Value, &'static str, &'static str)> {
    let any = json!([{"match": {"kuma.io/service": "*"}}]);
    vec![
        (
            "timeouts",
            json!({"type": "Timeout", "mesh": "default", "name": "bad", "sources": any,
                   "destinations": [{"match": {"kuma.io/service": "web", "version": "v1"}}],
                   "conf": {"connectTimeout": "1s"}}),
            "destinations[0].match[\"version\"]",
            "tag \"version\" is not allowed",
        ),
        (
            "timeouts",
            json!({"type": "Timeout", "mesh": "default", "name": "bad", "sources": any, "destinations": any,
                   "conf": {"http": {}}}),
            "conf.http",
            "at least one timeout in section has to be defined",
        ),
        (
            "retries",
            json!({"type": "Retry", "mesh": "default", "name": "bad", "sources": any, "destinations": any, "conf": {}}),
            "conf",
            "missing protocol [grpc|http|tcp] configuration",
        ),
        (
            "circuit-breakers",
            json!({"type": "CircuitBreaker", "mesh": "default", "name": "bad", "sources": any, "destinations": any,
                   "conf": {"maxEjectionPercent": 150, "thresholds": {"maxRequests": 1}}}),
            "conf.maxEjectionPercent",
            "has to be in [0.0 - 100.0] range",
        ),
        (
            "health-checks",
            json!({"type": "HealthCheck", "mesh": "default", "name": "bad", "sources": any, "destinations": any,
                   "conf": {"interval": "1s", "timeout": "1s", "unhealthyThreshold": 1, "healthyThreshold": 1,
                            "tcp": {}, "http": {"path": "/"}}}),
            "conf",
            "http and tcp cannot be defined at the same time",
        ),
        (
            "rate-limits",
            json!({"type": "RateLimit", "mesh": "default", "name": "bad", "sources": any, "destinations": any,
                   "conf": {"http": {"interval": "1s"}}}),
            "conf.http.requests",
            "requests must be set",
        ),
        (
            "fault-injections",
            json!({"type": "FaultInjection", "mesh": "default", "name": "bad", "sources": any, "destinations": any,
                   "conf": {"delay": {"percentage": 10, "value": "1s"}}}),
            "destinations[0].match",
            "protocol must be specified",
        ),
        (
            "traffic-permissions",
            json!({"type": "TrafficPermission", "mesh": "default", "name": "bad", "sources": [], "destinations": any}),
            "sources",
            "must have at least one element",
        ),
        (
            "traffic-logs",
            json!({"type": "TrafficLog", "mesh": "default", "name": "bad", "sources": [{"match": {"app": "x"}}],
                   "destinations": any}),
            "sources[0].match",
            "mandatory tag \"kuma.io/service\" is missing",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_policy_type_is_served_refused_precisely_and_synced_to_zones() {
    let topo =
        Topology::builder("policies-resources").global(Backend::Sqlite).zone("zone-1").mesh("default").start().await;
    let (g, zone) = (topo.global(), topo.zone("zone-1"));
    let api = g.http();

    // Mesh logging backends (file and tcp), validated with the Mesh.
    let mesh = json!({"type": "Mesh", "name": "default", "logging": {"defaultBackend": "file", "backends": [
        {"name": "file", "type": "file", "conf": {"path": "/tmp/access.log"}},
        {"name": "tcp", "type": "tcp", "format": "%START_TIME% %RESPONSE_CODE%", "conf": {"address": "127.0.0.1:5000"}}]}});
    let r = api.put("/meshes/default", &mesh).await;
    assert!(r.status == 200 || r.status == 201, "{}", r.text);
    let mut bad_mesh = mesh.clone();
    bad_mesh["logging"]["backends"][1]["conf"]["address"] = json!("nowhere");
    bad_mesh["logging"]["defaultBackend"] = json!("missing");
    let r = api.put("/meshes/default", &bad_mesh).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let invalid = r.invalid_parameters();
    assert!(
        invalid.contains(&("logging.backends[1].conf.address".into(), "has to be in format IP:PORT".into())),
        "{invalid:?}"
    );
    assert!(
        invalid
            .contains(&("logging.defaultBackend".into(), "has to be set to one of the logging backend in mesh".into())),
        "{invalid:?}"
    );

    for (plural, policy) in one_of_each() {
        let path = format!("/meshes/default/{plural}/{}", policy["name"].as_str().unwrap_or_default());
        let r = api.put(&path, &policy).await;
        assert_eq!(r.status, 201, "PUT {path}: {}", r.text);
        let back = g.api().get(&path).await;
        assert_eq!(back["type"], policy["type"], "{back}");
        assert_eq!(back["sources"], policy["sources"], "{back}");
        assert_eq!(back["conf"], policy["conf"], "GET {path} gives the conf back as written: {back}");
        let list = api.get(&format!("/meshes/default/{plural}")).await;
        assert_eq!(list.item_names(), [policy["name"].as_str().unwrap_or_default()], "{}", list.text);
        // meridianctl knows the type by its path segment.
        let out = g.ctl().with(["get", plural, "-m", "default", "-o", "json"]).run().await.expect_code(0);
        assert!(out.stdout.contains(policy["name"].as_str().unwrap_or_default()), "{}", out.stdout);
    }

    let before = crate_snapshot(&api).await;
    for (plural, policy, field, message) in refusals() {
        let r = api.put(&format!("/meshes/default/{plural}/bad"), &policy).await;
        assert_eq!(r.status, 400, "{plural}: {}", r.text);
        let invalid = r.invalid_parameters();
        assert!(
            invalid.contains(&(field.to_string(), message.to_string())),
            "{plural}: want {field}: {message}; got {invalid:?}"
        );
    }
    assert_eq!(crate_snapshot(&api).await, before, "a refused policy changes nothing");

    // Offline validation says the same.
    let out = g
        .ctl()
        .with(["validate", "-f", "-"])
        .run_stdin("type: Retry\nmesh: default\nname: x\nsources: [{match: {kuma.io/service: '*'}}]\ndestinations: [{match: {kuma.io/service: '*'}}]\nconf: {}\n")
        .await
        .expect_code(1);
    assert!(out.stderr.contains("missing protocol [grpc|http|tcp] configuration"), "{}", out.stderr);

    // Every policy reaches the zone, as the global holds it.
    for (plural, policy) in one_of_each() {
        let path = format!("/meshes/default/{plural}/{}", policy["name"].as_str().unwrap_or_default());
        let synced = zone.api().wait_for(&path, "synced from the global", |_| true).await;
        assert_eq!(synced["conf"], policy["conf"], "{synced}");
        // A federated zone refuses local writes to it.
        assert_eq!(zone.api().put(&path, &policy).await.0, 403, "{path}");
    }
    let m = zone.api().wait_for("/meshes/default", "logging synced", |m| m["logging"].is_object()).await;
    assert_eq!(m["logging"]["backends"][1]["conf"]["address"], "127.0.0.1:5000", "{m}");
    topo.cleanup().await;
}

/// Every policy list of mesh `default`, to compare before and after.
async fn crate_snapshot(api: &meridian_tests::Api) -> Vec<String> {
    let mut out = Vec::new();
    for (plural, _) in one_of_each() {
        out.push(api.get(&format!("/meshes/default/{plural}")).await.text);
    }
    out
}
