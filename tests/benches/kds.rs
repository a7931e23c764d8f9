//! KDS figures, measured on real processes over loopback (started from the
//! test topology's parts):
//! - initial sync of N MeshGateways (apply at the global → all in the zone store);
//! - push latency of one update (PUT at the global → visible in the zone API), p50/p99;
//! - resume cost: zone restarted after one of N changed → resources the global resent.
//!
//! Run: `cargo build --workspace --bins && cargo bench -p meridian-tests --bench kds`
//! Prints figures; asserts nothing about time.

use std::time::{Duration, Instant};

use meridian_tests::{Global, GlobalSpec, TestDir, Zone, json_api::subscriptions, resources};
use serde_json::{Value, json};

const N: usize = 1000;
const UPDATES: usize = 100;

fn gateway(i: usize, port: u32) -> Value {
    json!({"type":"MeshGateway","mesh":"default","name":format!("gw-{i}"),
        "selectors":[{"match":{"kuma.io/service":format!("gw-{i}")}}],
        "conf":{"listeners":[{"port":port,"protocol":"HTTP"}]}})
}

/// `total` of a list, 0 while the zone is not answering yet.
async fn total(client: &reqwest::Client, url: &str) -> u64 {
    match client.get(url).send().await {
        Ok(r) => r.json::<Value>().await.ok().and_then(|v| v["total"].as_u64()).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Polls `url` until its first listener's port is `port`.
async fn wait_port(client: &reqwest::Client, url: &str, port: u32) {
    loop {
        let v: Value = match client.get(url).send().await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        if v["conf"]["listeners"][0]["port"].as_u64() == Some(u64::from(port)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::main]
async fn main() {
    let dir = TestDir::new("bench-kds");
    let global = Global::start(&dir, "g", GlobalSpec { plaintext_kds: true, ..GlobalSpec::default() }).await;
    global.api().apply(&resources::mesh("default")).await;
    let client = reqwest::Client::builder().no_proxy().build().expect("HTTP client");
    let gw_url = |base: &str, i: usize| format!("{base}/meshes/default/meshgateways/gw-{i}");

    let t = Instant::now();
    for i in 0..N {
        client.put(gw_url(global.api_url(), i)).json(&gateway(i, 8080)).send().await.expect("put");
    }
    let apply = t.elapsed();
    let zone = Zone::connect(&dir, &global, "zone-1").await;
    let t = Instant::now();
    while total(&client, &format!("{}/meshes/default/meshgateways?size=1", zone.api_url())).await < N as u64 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    println!("apply {N} MeshGateways through the REST API: {:?} ({:.0}/s)", apply, N as f64 / apply.as_secs_f64());
    println!("initial sync of {N} MeshGateways to a new zone: {:?}", t.elapsed());

    let mut lat = Vec::new();
    for u in 0..UPDATES {
        let port = 9000 + u as u32;
        let t = Instant::now();
        client.put(gw_url(global.api_url(), 0)).json(&gateway(0, port)).send().await.expect("put");
        wait_port(&client, &gw_url(zone.api_url(), 0), port).await;
        lat.push(t.elapsed());
    }
    lat.sort();
    println!(
        "update push latency (PUT at global -> visible in zone API, incl. HTTP polling), {UPDATES} updates: p50 {:?}, p99 {:?}, max {:?}",
        lat[UPDATES / 2],
        lat[UPDATES * 99 / 100],
        lat[UPDATES - 1]
    );

    zone.kill();
    client.put(gw_url(global.api_url(), 1)).json(&gateway(1, 7777)).send().await.expect("put");
    let t = Instant::now();
    zone.restart().await;
    wait_port(&client, &gw_url(zone.api_url(), 1), 7777).await;
    let resync = t.elapsed();
    tokio::time::sleep(Duration::from_secs(4)).await; // let the insight refresh
    let overview = global.api().zone_overview("zone-1").await.expect("overview");
    let sent = subscriptions(&overview)
        .last()
        .map(|s| s["status"]["stat"]["MeshGateway"]["resourcesSent"].clone())
        .unwrap_or(Value::Null);
    println!("zone restart with 1 of {N} changed: converged in {resync:?}; MeshGateways resent: {sent}");
}
