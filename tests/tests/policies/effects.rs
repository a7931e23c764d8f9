//! Each policy's effect on real requests through a real Envoy: the
//! policies, the gateway and its routes are applied at the global; the
//! backends and the gateway run in a zone.

use std::collections::BTreeMap;

use meridian_tests::{
    Backend, Envoy, Topology, WAIT, eventually,
    traffic::{self, HttpBackend, Reply, free_port},
};

/// The gateway `edge` (one HTTP listener on `port`) and one route rule per
/// `(prefix, service)`.
fn gateway(port: u16, rules: &[(&str, &str)]) -> String {
    let mut yaml = format!(
        "type: MeshGateway\nmesh: default\nname: edge\nselectors: [{{match: {{kuma.io/service: edge}}}}]\n\
         conf: {{listeners: [{{port: {port}, protocol: HTTP}}]}}\n---\n\
         type: MeshGatewayRoute\nmesh: default\nname: edge-route\nselectors: [{{match: {{kuma.io/service: edge}}}}]\n\
         conf:\n  http:\n    rules:\n"
    );
    for (prefix, service) in rules {
        yaml.push_str(&format!(
            "    - matches: [{{path: {{match: PREFIX, value: {prefix}}}}}]\n      backends: [{{destination: {{kuma.io/service: {service}}}}}]\n"
        ));
    }
    yaml
}

/// A policy of `ty` from the gateway to `service`, with `rest` (YAML lines
/// after `destinations`).
fn policy(ty: &str, name: &str, service: &str, rest: &str) -> String {
    format!(
        "type: {ty}\nmesh: default\nname: {name}\nsources: [{{match: {{kuma.io/service: edge}}}}]\n\
         destinations: [{{match: {{kuma.io/service: {service}}}}}]\n{rest}"
    )
}

async fn request(port: u16, path: &str, headers: &[(&str, &str)]) -> Reply {
    traffic::request(port, "GET", "edge.example.com", path, headers).await.unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Waits until a request to `path` answers `status` (the policy reached Envoy).
async fn wait_status(port: u16, path: &str, headers: &[(&str, &str)], status: u16, what: &str) -> Reply {
    eventually(what, WAIT, || async {
        let r = traffic::request(port, "GET", "edge.example.com", path, headers).await?;
        if r.status == status { Ok(r) } else { Err(format!("{} {:?}", r.status, r.body)) }
    })
    .await
}

/// The sum of Envoy counters whose name ends with `suffix`.
async fn counter(envoy: &Envoy, filter: &str, suffix: &str) -> u64 {
    let stats = envoy.admin_get(&format!("/stats?filter={filter}")).await.unwrap_or_default();
    stats
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| k.ends_with(suffix))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

/// Timeout, Retry, RateLimit and FaultInjection: route-level policies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_policies_change_what_requests_get() {
    let topo = Topology::builder("policies-route")
        .global(Backend::Sqlite)
        .zone("zone-1")
        .http_backend("slow", "zone-1")
        .http_backend("flaky", "zone-1")
        .http_backend("limited", "zone-1")
        .http_backend("faulty", "zone-1")
        .http_backend("delayed", "zone-1")
        .gateway("zone-1", "edge-gw", "edge")
        .start()
        .await;
    let (global, envoy) = (topo.global(), topo.envoy("edge-gw"));
    let port = free_port();
    let services = ["slow", "flaky", "limited", "faulty", "delayed"];
    let rules: Vec<(String, &str)> = services.iter().map(|s| (format!("/{s}"), *s)).collect();
    let rules: Vec<(&str, &str)> = rules.iter().map(|(p, s)| (p.as_str(), *s)).collect();
    global.api().apply_yaml(&gateway(port, &rules)).await;
    envoy.wait_ready().await;
    wait_status(port, "/slow", &[], 200, "the gateway routes").await;

    // Without a Retry, the first failure is what the client gets.
    let r = request(port, "/flaky", &[("x-fail-first", "1"), ("x-fail-key", "before")]).await;
    assert_eq!(r.status, 503, "{r:?}");

    let policies = [
        policy("Timeout", "slow-timeout", "slow", "conf: {http: {requestTimeout: 0.5s}}\n"),
        policy("Retry", "flaky-retry", "flaky", "conf: {http: {numRetries: 3, retriableStatusCodes: [503]}}\n"),
        policy(
            "RateLimit",
            "limited-rl",
            "limited",
            "conf: {http: {requests: 3, interval: 3600s, onRateLimit: {status: 429, headers: [{key: x-limited, value: 'yes'}]}}}\n",
        ),
        format!(
            "type: FaultInjection\nmesh: default\nname: faulty-abort\nsources: [{{match: {{kuma.io/service: edge}}}}]\n\
             destinations: [{{match: {{kuma.io/service: faulty, kuma.io/protocol: http}}}}]\n\
             conf: {{abort: {{percentage: 50, httpStatus: 418}}}}\n---\n\
             type: FaultInjection\nmesh: default\nname: delayed-delay\nsources: [{{match: {{kuma.io/service: edge}}}}]\n\
             destinations: [{{match: {{kuma.io/service: delayed, kuma.io/protocol: http}}}}]\n\
             conf: {{delay: {{percentage: 100, value: 0.05s}}}}\n"
        ),
    ];
    global.api().apply_yaml(&policies.join("---\n")).await;

    // Timeout: a backend slower than the request timeout → 504.
    let r = wait_status(port, "/slow", &[("x-delay-ms", "3000")], 504, "Timeout: 504 from a slow backend").await;
    assert!(r.body.contains("upstream request timeout"), "{r:?}");
    assert_eq!(request(port, "/slow", &[("x-delay-ms", "10")]).await.status, 200, "a quick answer is not cut");

    // Retry: the first two attempts fail with 503, the third succeeds; the
    // backend saw the attempt count.
    let flaky: &HttpBackend = topo.http_backend("flaky");
    let r = wait_status(port, "/flaky", &[("x-fail-first", "2"), ("x-fail-key", "k1")], 200, "Retry: success").await;
    assert_eq!(r.backend(), "flaky");
    let attempts: Vec<String> = flaky
        .seen()
        .iter()
        .filter(|e| e["headers"]["x-fail-key"] == "k1")
        .filter_map(|e| e["headers"]["x-envoy-attempt-count"].as_str().map(str::to_string))
        .collect();
    assert_eq!(attempts, ["1", "2", "3"], "the backend saw three attempts");

    // RateLimit: 3 tokens, then 429 with the configured header.
    let limited = eventually("RateLimit: 429 over the bucket", WAIT, || async {
        let r = traffic::request(port, "GET", "edge.example.com", "/limited", &[]).await?;
        if r.status == 429 { Ok(r) } else { Err(format!("{}", r.status)) }
    })
    .await;
    assert_eq!(limited.headers.get("x-limited").map(String::as_str), Some("yes"), "{limited:?}");
    assert_eq!(request(port, "/limited", &[]).await.status, 429, "the bucket stays empty");
    assert_eq!(request(port, "/slow", &[]).await.status, 200, "other routes are not limited");

    // FaultInjection abort: about half of 200 requests get 418, the rest
    // reach the backend.
    wait_status(port, "/faulty", &[], 418, "FaultInjection reached Envoy").await;
    let mut statuses: BTreeMap<u16, u32> = BTreeMap::new();
    for _ in 0..200 {
        *statuses.entry(request(port, "/faulty", &[]).await.status).or_default() += 1;
    }
    let aborted = statuses.get(&418).copied().unwrap_or_default();
    assert!((40..=160).contains(&aborted), "about 50% aborted: {statuses:?}");
    assert_eq!(aborted + statuses.get(&200).copied().unwrap_or_default(), 200, "{statuses:?}");

    // FaultInjection delay: every request delayed (Envoy counts them), all answered.
    let before = counter(envoy, "fault", "delays_injected").await;
    for _ in 0..10 {
        assert_eq!(request(port, "/delayed", &[]).await.status, 200);
    }
    let delayed = counter(envoy, "fault", "delays_injected").await - before;
    assert!(delayed >= 10, "10 requests delayed, Envoy counted {delayed}");
    topo.cleanup().await;
}
