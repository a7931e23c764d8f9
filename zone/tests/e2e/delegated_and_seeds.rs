//! The seed examples, verbatim but for ports: the HTTP gateway on
//! foo.example.com, the TCP gateway to redis, the delegated `kong-01`, and
//! `meridian-zone dataplane run` registering a gateway and running Envoy.

use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;

use crate::support::{self, Zone, eventually, free_port};

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
    let envoy_bin = support::envoy_binary();
    let tmp = tempfile::tempdir().expect("tmp");
    let demo = support::http_backend("demo-app").await;
    let redis = support::tcp_backend("redis").await;
    let backend = support::http_backend("backend").await;
    let zone = Zone::start(&tmp.path().join("zone"), None).await;

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
    zone.apply(&yaml(&["default", "edge-gateway", "edge-gateway-route"])).await;
    zone.apply(&support::backend_dataplane("demo-app-1", &[(demo.port, "demo-app_kuma-demo_svc_5000")])).await;
    zone.apply(&support::backend_dataplane("redis-1", &[(redis, "redis_kuma-demo_svc_6379")])).await;
    zone.apply(&support::backend_dataplane("backend-1", &[(backend.port, "backend")])).await;

    // `dataplane run` registers the seed's gateway Dataplane and runs Envoy.
    let dir = tmp.path().join("run");
    std::fs::create_dir_all(&dir).expect("dir");
    let dp_file = dir.join("gateway.yaml");
    std::fs::write(&dp_file, yaml(&["gateway-instance-1"])).expect("dp file");
    let admin_file = dir.join("admin");
    let mut run = Command::new(env!("CARGO_BIN_EXE_meridian-zone"))
        .args(["dataplane", "run", "--api-url", &zone.api, "--xds-address", &zone.xds.to_string()])
        .args(["--admin-address", "127.0.0.1:0", "--envoy"])
        .arg(&envoy_bin)
        .arg("--config-dir")
        .arg(&dir)
        .arg("-f")
        .arg(&dp_file)
        .args(["--", "--concurrency", "1", "--log-path"])
        .arg(dir.join("envoy.log"))
        .arg("--admin-address-path")
        .arg(&admin_file)
        .kill_on_drop(true)
        .spawn()
        .expect("dataplane run");
    let admin = support::wait_admin(&admin_file, &dir.join("envoy.log")).await;

    let r = eventually("foo.example.com reaches the demo app", || async {
        let r = support::get(http_port, "foo.example.com", "/").await?;
        if r.backend() == "demo-app" { Ok(r) } else { Err(format!("{r:?}")) }
    })
    .await;
    assert_eq!(r.status, 200);
    let other = support::get(http_port, "bar.example.com", "/").await.expect("request");
    assert_eq!(other.status, 404, "another host gets 404: {other:?}");

    // The TCP gateway ties with edge-gateway for the same Dataplane; as the
    // newer one it takes over.
    zone.apply(&yaml(&["edge-gateway-tcp", "edge-gateway-route-tcp"])).await;
    eventually("a TCP conversation reaches redis", || async {
        let a = support::tcp_talk(tcp_port, "PING").await?;
        if a == "redis: PING" { Ok(()) } else { Err(a) }
    })
    .await;

    // The delegated gateway forwards through its outbound.
    zone.apply(&yaml(&["kong-01"])).await;
    let kong = support::Envoy::start(zone.xds, &tmp.path().join("kong"), "kong-01", false).await;
    kong.wait_ready().await;
    eventually("kong-01's outbound reaches the backend", || async {
        let r = support::get(outbound_port, "backend", "/via-kong").await?;
        if r.backend() == "backend" { Ok(()) } else { Err(format!("{r:?}")) }
    })
    .await;

    // `dataplane run` forwards SIGTERM to Envoy and exits with it.
    support::terminate(&run);
    let status = tokio::time::timeout(support::WAIT, run.wait()).await.expect("run exits").expect("status");
    assert!(status.success(), "dataplane run: {status:?}");
    let gone = reqwest::Client::new().get(format!("http://{admin}/ready")).timeout(Duration::from_secs(2)).send().await;
    assert!(gone.is_err(), "Envoy still answers after dataplane run exited");
    zone.stop().await;
}
