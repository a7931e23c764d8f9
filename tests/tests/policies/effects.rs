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
        "type: FaultInjection\nmesh: default\nname: faulty-abort\nsources: [{match: {kuma.io/service: edge}}]\n\
             destinations: [{match: {kuma.io/service: faulty, kuma.io/protocol: http}}]\n\
             conf: {abort: {percentage: 50, httpStatus: 418}}\n---\n\
             type: FaultInjection\nmesh: default\nname: delayed-delay\nsources: [{match: {kuma.io/service: edge}}]\n\
             destinations: [{match: {kuma.io/service: delayed, kuma.io/protocol: http}}]\n\
             conf: {delay: {percentage: 100, value: 0.05s}}\n"
            .to_string(),
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

/// Two instances of `service` in `zone` (Dataplanes `<service>-1`, `-2`).
async fn two_instances(topo: &Topology, service: &str) -> [HttpBackend; 2] {
    let mut out = Vec::new();
    for i in 1..=2 {
        let name = format!("{service}-{i}");
        let b = traffic::http_backend(&name).await;
        topo.zone("zone-1").api().apply_yaml(&traffic::backend_dataplane(&name, &[(b.port, service)])).await;
        out.push(b);
    }
    let [a, b]: [HttpBackend; 2] = out.try_into().unwrap_or_else(|_| panic!("two backends"));
    [a, b]
}

/// CircuitBreaker thresholds and outlier detection, HealthCheck: cluster-level policies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_policies_limit_eject_and_health_check() {
    let topo = Topology::builder("policies-cluster")
        .global(Backend::Sqlite)
        .zone("zone-1")
        .http_backend("narrow", "zone-1")
        .gateway("zone-1", "edge-gw", "edge")
        .start()
        .await;
    let (global, envoy) = (topo.global(), topo.envoy("edge-gw"));
    let [out_1, out_2] = two_instances(&topo, "outlier").await;
    let [checked_1, checked_2] = two_instances(&topo, "checked").await;
    let port = free_port();
    global
        .api()
        .apply_yaml(&gateway(port, &[("/narrow", "narrow"), ("/outlier", "outlier"), ("/checked", "checked")]))
        .await;
    envoy.wait_ready().await;
    wait_status(port, "/narrow", &[], 200, "the gateway routes").await;
    let policies = [
        policy(
            "CircuitBreaker",
            "narrow-cb",
            "narrow",
            "conf: {thresholds: {maxConnections: 1, maxPendingRequests: 1, maxRequests: 1}}\n",
        ),
        policy(
            "CircuitBreaker",
            "outlier-cb",
            "outlier",
            "conf: {interval: 1s, baseEjectionTime: 300s, maxEjectionPercent: 50, detectors: {totalErrors: {consecutive: 2}}}\n",
        ),
        policy(
            "HealthCheck",
            "checked-hc",
            "checked",
            "conf: {interval: 0.2s, timeout: 0.5s, unhealthyThreshold: 1, healthyThreshold: 1, noTrafficInterval: 0.2s, \
             healthyPanicThreshold: 0, http: {path: /health}}\n",
        ),
    ];
    global.api().apply_yaml(&policies.join("---\n")).await;

    // CircuitBreaker: one request at a time; ten at once overflow: 503,
    // reset reason `overflow` (Envoy's UO flag).
    let overflowed = eventually("CircuitBreaker: concurrent requests overflow", WAIT, || async {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..10 {
            set.spawn(async move { traffic::request(port, "GET", "e", "/narrow", &[("x-delay-ms", "500")]).await });
        }
        let replies: Vec<Reply> = set.join_all().await.into_iter().flatten().collect();
        let seen: Vec<(u16, String)> = replies.iter().map(|r| (r.status, r.body.clone())).collect();
        let over: Vec<Reply> =
            replies.into_iter().filter(|r| r.status == 503 && r.body.contains("reset reason: overflow")).collect();
        if over.is_empty() { Err(format!("no overflow yet: {seen:?}")) } else { Ok(over.len()) }
    })
    .await;
    assert!(overflowed >= 1);

    // Outlier detection: the instance answering 503 is ejected after two
    // errors; then every request reaches the healthy one.
    out_2.set_healthy(false);
    eventually("outlier ejected", WAIT, || async {
        let _ = traffic::get(port, "e", "/outlier").await;
        let n = counter(envoy, "outlier", "outlier_detection.ejections_enforced_total").await;
        if n >= 1 { Ok(()) } else { Err(format!("{n} ejections")) }
    })
    .await;
    for _ in 0..20 {
        let r = request(port, "/outlier", &[]).await;
        assert_eq!((r.status, r.backend()), (200, out_1.name.clone()), "only the healthy instance answers");
    }

    // HealthCheck: an instance failing its health check stops receiving
    // traffic, and receives it again once healthy.
    checked_2.set_healthy(false);
    eventually("HealthCheck: the failing instance is left out", WAIT, || async {
        for _ in 0..10 {
            let r = traffic::get(port, "e", "/checked").await?;
            if r.status != 200 || r.backend() != checked_1.name {
                return Err(format!("{} from {}", r.status, r.backend()));
            }
        }
        Ok(())
    })
    .await;
    checked_2.set_healthy(true);
    eventually("HealthCheck: the instance is back", WAIT, || async {
        let r = traffic::get(port, "e", "/checked").await?;
        if r.status == 200 && r.backend() == checked_2.name { Ok(()) } else { Err(r.backend()) }
    })
    .await;
    assert!(checked_2.seen().iter().any(|e| e["path"] == "/health"), "Envoy health-checked /health");
    topo.cleanup().await;
}

/// TrafficPermission (deny → 403; no permission in the mesh → allowed) and
/// TrafficLog (access log lines in the Mesh's file backend).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_and_access_logs() {
    let topo = Topology::builder("policies-permission")
        .global(Backend::Sqlite)
        .zone("zone-1")
        .http_backend("open", "zone-1")
        .http_backend("closed", "zone-1")
        .gateway("zone-1", "edge-gw", "edge")
        .start()
        .await;
    let (global, envoy) = (topo.global(), topo.envoy("edge-gw"));
    let port = free_port();
    global.api().apply_yaml(&gateway(port, &[("/open", "open"), ("/closed", "closed")])).await;
    envoy.wait_ready().await;
    // No TrafficPermission in the mesh: everything is allowed (the
    // incumbent's default `allow-all-<mesh>`).
    wait_status(port, "/closed", &[], 200, "allowed without permissions").await;

    global.api().apply_yaml(&policy("TrafficPermission", "edge-to-open", "open", "")).await;
    let r = wait_status(port, "/closed", &[], 403, "TrafficPermission: denied").await;
    assert_eq!(r.body, "RBAC: access denied", "{r:?}");
    assert_eq!(request(port, "/open", &[]).await.status, 200, "the allowed backend still answers");
    let closed = topo.http_backend("closed");
    let before = closed.seen().len();
    for _ in 0..5 {
        assert_eq!(request(port, "/closed", &[]).await.status, 403);
    }
    assert_eq!(closed.seen().len(), before, "a denied request never reaches the backend");

    // TrafficLog to the Mesh's file backend, in its format.
    let log = topo.dir().path().join("gateway-access.log");
    global
        .api()
        .apply_yaml(&format!(
            "type: Mesh\nname: default\nlogging:\n  defaultBackend: file\n  backends:\n  - name: file\n    type: file\n    \
             format: 'meridian-log %RESPONSE_CODE% %REQ(:PATH)%'\n    conf: {{path: {}}}\n---\n\
             type: TrafficLog\nmesh: default\nname: edge-log\nsources: [{{match: {{kuma.io/service: edge}}}}]\n\
             destinations: [{{match: {{kuma.io/service: '*'}}}}]\n",
            log.display()
        ))
        .await;
    eventually("TrafficLog: lines in the file backend", WAIT, || async {
        let _ = traffic::get(port, "e", "/open/logged").await;
        let _ = traffic::get(port, "e", "/closed/logged").await;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("meridian-log 200 /open/logged") && text.contains("meridian-log 403 /closed/logged") {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await;

    // A policy that selects this gateway but nothing on it is reported in
    // the gateway's DataplaneInsight (and the zone's log).
    global.api().apply_yaml(&policy("Retry", "to-ghost", "ghost", "conf: {http: {numRetries: 2}}\n")).await;
    let zone = topo.zone("zone-1");
    eventually("an unused policy in the DataplaneInsight", WAIT, || async {
        let i = zone.api().fetch("/meshes/default/dataplane-insights/edge-gw").await?;
        let warnings = i["subscriptions"][0]["status"]["generatorWarnings"].to_string();
        if warnings.contains("Retry \\\"to-ghost\\\" selects this gateway") { Ok(()) } else { Err(warnings) }
    })
    .await;
    topo.cleanup().await;
}

/// Retry on a TCP route: connections to a service with a dead instance
/// fail about half the time; with `tcp.maxConnectAttempts` every one reaches
/// the live instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_retry_connects_past_a_dead_instance() {
    let topo = Topology::builder("policies-tcp")
        .global(Backend::Sqlite)
        .zone("zone-1")
        .tcp_backend("redis", "zone-1")
        .gateway("zone-1", "edge-gw", "edge")
        .start()
        .await;
    let (global, envoy) = (topo.global(), topo.envoy("edge-gw"));
    // A second instance of `redis` on a port nothing listens on.
    topo.zone("zone-1").api().apply_yaml(&traffic::backend_dataplane("redis-dead", &[(free_port(), "redis")])).await;
    let port = free_port();
    global
        .api()
        .apply_yaml(&format!(
            "type: MeshGateway\nmesh: default\nname: edge\nselectors: [{{match: {{kuma.io/service: edge}}}}]\n\
             conf: {{listeners: [{{port: {port}, protocol: TCP}}]}}\n---\n\
             type: MeshGatewayRoute\nmesh: default\nname: edge-tcp\nselectors: [{{match: {{kuma.io/service: edge}}}}]\n\
             conf: {{tcp: {{rules: [{{backends: [{{destination: {{kuma.io/service: redis}}}}]}}]}}}}\n"
        ))
        .await;
    envoy.wait_ready().await;
    let talk = || async {
        let mut ok = 0;
        for i in 0..20 {
            if traffic::tcp_talk(port, &format!("ping {i}")).await.is_ok_and(|a| a == format!("redis: ping {i}")) {
                ok += 1;
            }
        }
        ok
    };
    eventually("the TCP route reaches redis (and the dead instance)", WAIT, || async {
        match talk().await {
            n if n > 0 && n < 20 => Ok(()),
            n => Err(format!("{n} of 20 answered")),
        }
    })
    .await;
    global.api().apply_yaml(&policy("Retry", "redis-connect", "redis", "conf: {tcp: {maxConnectAttempts: 5}}\n")).await;
    eventually("Retry: every connection reaches the live instance", WAIT, || async {
        match talk().await {
            20 => Ok(()),
            n => Err(format!("{n} of 20 answered")),
        }
    })
    .await;
    topo.cleanup().await;
}

/// A port that never completes a connection: a listener with a backlog of
/// one that never accepts, its queue filled (the kernel then drops SYNs).
async fn black_hole() -> (u16, Vec<tokio::net::TcpStream>, tokio::net::TcpListener) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let port = socket.local_addr().expect("addr").port();
    let listener = socket.listen(1).expect("listen");
    let mut held = Vec::new();
    for _ in 0..4 {
        let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
        if let Ok(Ok(s)) = tokio::time::timeout(std::time::Duration::from_millis(300), connect).await {
            held.push(s);
        }
    }
    (port, held, listener)
}

/// Timeout `connectTimeout`: to an instance that never completes a
/// connection, a connect timeout shorter than the request timeout turns the
/// request timeout's 504 into a 503 with the `connection timeout` reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_to_a_black_hole() {
    let topo = Topology::builder("policies-connect")
        .global(Backend::Sqlite)
        .zone("zone-1")
        .gateway("zone-1", "edge-gw", "edge")
        .start()
        .await;
    let (global, envoy) = (topo.global(), topo.envoy("edge-gw"));
    let (hole, _held, _listener) = black_hole().await;
    topo.zone("zone-1").api().apply_yaml(&traffic::backend_dataplane("hole", &[(hole, "hole")])).await;
    let port = free_port();
    global.api().apply_yaml(&gateway(port, &[("/hole", "hole")])).await;
    // The request timeout alone: the connect attempt (Envoy's default 5 s)
    // outlives it, so the client gets the request timeout's 504.
    global.api().apply_yaml(&policy("Timeout", "hole-connect", "hole", "conf: {http: {requestTimeout: 1s}}\n")).await;
    envoy.wait_ready().await;
    wait_status(port, "/hole", &[], 504, "the request timeout cuts the hanging connect").await;
    // With a connect timeout shorter than the request timeout, the connect
    // attempt fails first: 503, reset reason `connection timeout`.
    global
        .api()
        .apply_yaml(&policy(
            "Timeout",
            "hole-connect",
            "hole",
            "conf: {connectTimeout: 0.2s, http: {requestTimeout: 1s}}\n",
        ))
        .await;
    let r = eventually("Timeout: connect timeout to the black hole", WAIT, || async {
        let r = traffic::get(port, "e", "/hole").await?;
        if r.status == 503 && r.body.contains("connection timeout") { Ok(r) } else { Err(format!("{r:?}")) }
    })
    .await;
    assert!(r.body.contains("reset reason: connection timeout"), "{r:?}");
    topo.cleanup().await;
}

/// Timeout `http.idleTimeout` (the cluster's upstream HTTP protocol
/// options): a pooled upstream connection with no request for that long is
/// closed by Envoy; a service without the policy keeps Envoy's default
/// (1 h) and its connection stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_upstream_connection_is_closed() {
    let topo = Topology::builder("policies-idle")
        .global(Backend::Sqlite)
        .zone("zone-1")
        .http_backend("idle", "zone-1")
        .http_backend("kept", "zone-1")
        .gateway("zone-1", "edge-gw", "edge")
        .start()
        .await;
    let (global, envoy) = (topo.global(), topo.envoy("edge-gw"));
    let port = free_port();
    global.api().apply_yaml(&gateway(port, &[("/idle", "idle"), ("/kept", "kept")])).await;
    global.api().apply_yaml(&policy("Timeout", "idle-timeout", "idle", "conf: {http: {idleTimeout: 1s}}\n")).await;
    envoy.wait_ready().await;
    wait_status(port, "/kept", &[], 200, "the gateway routes").await;
    // Per cluster (its name starts with the service): idle-timeout closes.
    let idle_closed = |service: &'static str| async move {
        let stats = envoy.admin_get("/stats?filter=upstream_cx_idle_timeout").await.unwrap_or_default();
        stats
            .lines()
            .filter_map(|l| l.split_once(": "))
            .filter(|(k, _)| k.starts_with(&format!("cluster.{service}")))
            .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
            .sum::<u64>()
    };
    eventually("the Timeout reaches Envoy's cluster", WAIT, || async {
        let dump = envoy.admin_get("/config_dump?resource=dynamic_active_clusters").await?;
        if dump.contains("\"idle_timeout\": \"1s\"") { Ok(()) } else { Err(dump) }
    })
    .await;
    // One request each opens a pooled upstream connection; then nothing.
    for path in ["/idle", "/kept"] {
        let r = request(port, path, &[]).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
    }
    eventually("the idle upstream connection to `idle` is closed by Envoy", WAIT, || async {
        match idle_closed("idle").await {
            0 => Err("no upstream_cx_idle_timeout yet".to_string()),
            n => Ok(n),
        }
    })
    .await;
    assert_eq!(idle_closed("kept").await, 0, "without a Timeout the connection to `kept` is kept (1 h default)");
    topo.cleanup().await;
}

/// A backend on 127.0.0.1 speaking only one HTTP version: with `h2`,
/// HTTP/2 cleartext with prior knowledge (hyper's `http2::Builder`, no
/// HTTP/1 fallback: an HTTP/1.1 request gets its connection closed), else
/// HTTP/1.1 only (`http1::Builder`: an HTTP/2 preface is a 400 and a
/// close). Answers 200 with the request's version (`HTTP/2.0`,
/// `HTTP/1.1`). The task serving it ends with the test's runtime.
async fn single_version_backend(h2: bool) -> u16 {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the backend");
    let port = listener.local_addr().expect("local address").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(format!("{:?}", req.version())))
                });
                let io = TokioIo::new(stream);
                let _ = if h2 {
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(io, service).await
                } else {
                    hyper::server::conn::http1::Builder::new().serve_connection(io, service).await
                };
            });
        }
    });
    port
}
/// A backend Dataplane `name` at 127.0.0.1:`port` whose inbound is
/// `kuma.io/service: name`, `kuma.io/protocol: protocol`.
fn dataplane_with_protocol(name: &str, port: u16, protocol: &str) -> String {
    format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking: {{address: 127.0.0.1, inbound: \
         [{{port: {port}, tags: {{kuma.io/service: {name}, kuma.io/protocol: {protocol}}}}}]}}\n"
    )
}

/// A gateway cluster to a service whose inbounds declare `kuma.io/protocol:
/// http2` (or `grpc`) speaks HTTP/2 upstream (the incumbent's
/// `Http2Configurer`): an h2c-only backend answers 200 through the
/// gateway's HTTP/1.1 listener; an HTTP/1-only backend tagged `http` still
/// answers over HTTP/1.1 (each backend reports the version it saw).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_backend_is_reached_over_http2() {
    let topo = Topology::builder("policies-h2")
        .global(Backend::Sqlite)
        .zone("zone-1")
        .gateway("zone-1", "edge-gw", "edge")
        .start()
        .await;
    let (global, zone, envoy) = (topo.global(), topo.zone("zone-1"), topo.envoy("edge-gw"));
    let h2_port = single_version_backend(true).await;
    let h1_port = single_version_backend(false).await;
    zone.api().apply_yaml(&dataplane_with_protocol("h2", h2_port, "http2")).await;
    zone.api().apply_yaml(&dataplane_with_protocol("h1", h1_port, "http")).await;
    let port = free_port();
    global.api().apply_yaml(&gateway(port, &[("/h2", "h2"), ("/h1", "h1")])).await;
    envoy.wait_ready().await;
    let r = wait_status(port, "/h2", &[], 200, "the h2c-only backend answers through the gateway").await;
    assert_eq!(r.body, "HTTP/2.0", "the backend saw HTTP/2: {r:?}");
    let r = wait_status(port, "/h1", &[], 200, "the HTTP/1-only backend answers through the gateway").await;
    assert_eq!(r.body, "HTTP/1.1", "the backend saw HTTP/1.1: {r:?}");
    topo.cleanup().await;
}
