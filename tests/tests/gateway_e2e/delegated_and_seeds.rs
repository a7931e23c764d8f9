//! The seed examples, verbatim but for ports: the HTTP gateway on
//! foo.example.com, the TCP gateway to redis, the delegated `kong-01`, and
//! `meridian-zone dataplane run` registering a gateway and running Envoy.

use std::time::Duration;

use meridian_tests::{
    Envoy, Topology, WAIT, XdsMode, eventually,
    process::{Announce, Process, binary, envoy_binary},
    traffic::{self, free_port},
};
use serde_json::Value;

fn seeds() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../sync-proto/testdata/seeds.yaml");
    let text = std::fs::read_to_string(path).expect("seed examples");
    meridian_sync_proto::universal::parse_documents(&text).expect("seed yaml")
}

fn named<'a>(docs: &'a mut [Value], name: &str) -> &'a mut Value {
    docs.iter_mut().find(|d| d["name"] == name).unwrap_or_else(|| panic!("seed {name} missing"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_examples_serve_http_tcp_and_delegated_traffic() {
    let envoy_bin = envoy_binary();
    let demo = traffic::http_backend("demo-app").await;
    let redis = traffic::tcp_backend("redis").await;
    let backend = traffic::http_backend("backend").await;
    let topo = Topology::builder("e2e-seeds").zone("zone").start().await;
    let zone = topo.zone("zone");

    let (http_port, tcp_port, outbound_port) = (free_port(), free_port(), free_port());
    let mut docs = seeds();
    named(&mut docs, "edge-gateway")["conf"]["listeners"][0]["port"] = http_port.into();
    named(&mut docs, "edge-gateway-tcp")["conf"]["listeners"][0]["port"] = tcp_port.into();
    named(&mut docs, "kong-01")["networking"]["outbound"][0]["port"] = outbound_port.into();
    let yaml = |names: &[&str]| -> String {
        docs.iter()
            .filter(|d| names.contains(&d["name"].as_str().unwrap_or("")))
            .map(|d| format!("{d}\n---\n"))
            .collect()
    };
    zone.api().apply_yaml(&yaml(&["default", "edge-gateway", "edge-gateway-route"])).await;
    zone.api()
        .apply_yaml(&traffic::backend_dataplane("demo-app-1", &[(demo.port, "demo-app_kuma-demo_svc_5000")]))
        .await;
    zone.api().apply_yaml(&traffic::backend_dataplane("redis-1", &[(redis, "redis_kuma-demo_svc_6379")])).await;
    zone.api().apply_yaml(&traffic::backend_dataplane("backend-1", &[(backend.port, "backend")])).await;

    // `dataplane run` registers the seed's gateway Dataplane and runs Envoy.
    let dir = topo.dir().part_dir("run");
    let dp_file = dir.join("gateway.yaml");
    std::fs::write(&dp_file, yaml(&["gateway-instance-1"])).expect("dp file");
    let admin_file = dir.join("admin");
    let run = Process::new("dataplane-run", binary("meridian-zone"), &topo.dir().logs());
    let mut args: Vec<std::ffi::OsString> = ["dataplane", "run", "--api-url", zone.api_url()].map(Into::into).to_vec();
    args.extend(zone.xds_flags());
    args.extend(["--admin-address".into(), "127.0.0.1:0".into(), "--envoy".into(), envoy_bin.into()]);
    args.extend(["--config-dir".into(), dir.clone().into(), "-f".into(), dp_file.into()]);
    // Registered with its Dataplane token (no admin token), which Envoy presents on xDS too.
    let token_file = dir.join("dataplane-token");
    std::fs::write(&token_file, zone.dataplane_token("gateway-instance-1").await.expect("token")).expect("token file");
    args.extend(["--dataplane-token-file".into(), token_file.into()]);
    args.extend(["--", "--concurrency", "1", "--admin-address-path"].map(Into::into));
    args.push(admin_file.clone().into());
    let admin = run.start(&args, &Announce::File(admin_file)).await.remove(0);

    let r = eventually("foo.example.com reaches the demo app", WAIT, || async {
        let r = traffic::get(http_port, "foo.example.com", "/").await?;
        if r.backend() == "demo-app" { Ok(r) } else { Err(format!("{r:?}")) }
    })
    .await;
    assert_eq!(r.status, 200);
    let other = traffic::get(http_port, "bar.example.com", "/").await.expect("request");
    assert_eq!(other.status, 404, "another host gets 404: {other:?}");

    // The TCP gateway ties with edge-gateway for the same Dataplane; as the
    // newer one it takes over.
    zone.api().apply_yaml(&yaml(&["edge-gateway-tcp", "edge-gateway-route-tcp"])).await;
    eventually("a TCP conversation reaches redis", WAIT, || async {
        let a = traffic::tcp_talk(tcp_port, "PING").await?;
        if a == "redis: PING" { Ok(()) } else { Err(a) }
    })
    .await;

    // The delegated gateway forwards through its outbound.
    zone.api().apply_yaml(&yaml(&["kong-01"])).await;
    let kong = Envoy::start(topo.dir(), zone, "kong-01", XdsMode::Delta).await;
    kong.wait_ready().await;
    eventually("kong-01's outbound reaches the backend", WAIT, || async {
        let r = traffic::get(outbound_port, "backend", "/via-kong").await?;
        if r.backend() == "backend" { Ok(()) } else { Err(format!("{r:?}")) }
    })
    .await;

    // `dataplane run` forwards SIGTERM to Envoy and exits with it.
    let status = run.sigterm().await;
    assert!(status.success(), "dataplane run: {status:?}");
    let gone = reqwest::Client::new().get(format!("http://{admin}/ready")).timeout(Duration::from_secs(2)).send().await;
    assert!(gone.is_err(), "Envoy still answers after dataplane run exited");
    let _ = zone.sigterm().await;
}
