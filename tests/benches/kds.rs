//! KDS figures, measured on real processes over loopback:
//! - initial sync of N MeshGateways (apply at the global → all in the zone store);
//! - push latency of one update (PUT at the global → visible in the zone API), p50/p99;
//! - resume cost: zone restarted after one of N changed → resources the global resent.
//!
//! Run: `cargo build --bins && cargo bench -p meridian-tests --bench kds`
//! Prints figures; asserts nothing about time.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

const N: usize = 1000;
const UPDATES: usize = 100;

fn bin(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug").join(name);
    assert!(p.exists(), "{} missing: run `cargo build --bins` first", p.display());
    p
}

struct Proc {
    child: Child,
    api: String,
    kds: Option<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(mut cmd: Command) -> Proc {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut api = None;
    let mut kds = None;
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.expect("line");
        if let Some(a) = line.split("API on ").nth(1) {
            api = Some(a.trim().to_string());
        }
        if let Some(k) = line.split("KDS on ").nth(1) {
            kds = Some(k.trim().to_string());
        }
        if api.is_some() && (kds.is_some() || line.contains("meridian-zone")) {
            break;
        }
    }
    // Keep reading, so the process never writes into a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Proc { child, api: api.expect("API address"), kds }
}

fn gateway(i: usize, port: u32) -> Value {
    json!({"type":"MeshGateway","mesh":"default","name":format!("gw-{i}"),
        "selectors":[{"match":{"kuma.io/service":format!("gw-{i}")}}],
        "conf":{"listeners":[{"port":port,"protocol":"HTTP"}]}})
}

fn total(client: &reqwest::blocking::Client, url: &str) -> u64 {
    client.get(url).send().ok().and_then(|r| r.json::<Value>().ok()).and_then(|v| v["total"].as_u64()).unwrap_or(0)
}

fn start_zone(dir: &std::path::Path, kds: &str, token: &std::path::Path) -> Proc {
    let mut z = Command::new(bin("meridian-zone"));
    z.args(["run", "--zone", "zone-1", "--api-addr", "127.0.0.1:0", "--xds-addr", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir)
        .args(["--global-address", kds])
        .arg("--token-file")
        .arg(token);
    start(z)
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let client = reqwest::blocking::Client::new();
    let mut g = Command::new(bin("meridian-global"));
    g.args(["run", "--api-addr", "127.0.0.1:0", "--kds-addr", "127.0.0.1:0", "--kds-plaintext", "true"])
        .arg("--data-dir")
        .arg(dir.path().join("g"));
    let global = start(g);
    let kds = global.kds.clone().expect("KDS address");
    client
        .put(format!("{}/meshes/default", global.api))
        .json(&json!({"type":"Mesh","name":"default"}))
        .send()
        .expect("mesh");
    let token = client
        .post(format!("{}/tokens/zone", global.api))
        .json(&json!({"zone":"zone-1"}))
        .send()
        .and_then(|r| r.text())
        .expect("token");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).expect("write token");

    let t = Instant::now();
    for i in 0..N {
        client
            .put(format!("{}/meshes/default/meshgateways/gw-{i}", global.api))
            .json(&gateway(i, 8080))
            .send()
            .expect("put");
    }
    let apply = t.elapsed();
    let zone_dir = dir.path().join("z");
    let zone = start_zone(&zone_dir, &kds, &token_file);
    let t = Instant::now();
    while total(&client, &format!("{}/meshes/default/meshgateways?size=1", zone.api)) < N as u64 {
        std::thread::sleep(Duration::from_millis(2));
    }
    println!("apply {N} MeshGateways through the REST API: {:?} ({:.0}/s)", apply, N as f64 / apply.as_secs_f64());
    println!("initial sync of {N} MeshGateways to a new zone: {:?}", t.elapsed());

    let mut lat = Vec::new();
    for u in 0..UPDATES {
        let port = 9000 + u as u32;
        let t = Instant::now();
        client
            .put(format!("{}/meshes/default/meshgateways/gw-0", global.api))
            .json(&gateway(0, port))
            .send()
            .expect("put");
        loop {
            let v: Value = client
                .get(format!("{}/meshes/default/meshgateways/gw-0", zone.api))
                .send()
                .and_then(|r| r.json())
                .unwrap_or(Value::Null);
            if v["conf"]["listeners"][0]["port"].as_u64() == Some(u64::from(port)) {
                break;
            }
        }
        lat.push(t.elapsed());
    }
    lat.sort();
    println!(
        "update push latency (PUT at global -> visible in zone API, incl. HTTP polling), {UPDATES} updates: p50 {:?}, p99 {:?}, max {:?}",
        lat[UPDATES / 2],
        lat[UPDATES * 99 / 100],
        lat[UPDATES - 1]
    );

    drop(zone);
    client.put(format!("{}/meshes/default/meshgateways/gw-1", global.api)).json(&gateway(1, 7777)).send().expect("put");
    let zone = start_zone(&zone_dir, &kds, &token_file);
    let t = Instant::now();
    loop {
        let v: Value = client
            .get(format!("{}/meshes/default/meshgateways/gw-1", zone.api))
            .send()
            .and_then(|r| r.json())
            .unwrap_or(Value::Null);
        if v["conf"]["listeners"][0]["port"].as_u64() == Some(7777) {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let resync = t.elapsed();
    std::thread::sleep(Duration::from_secs(4)); // let the insight refresh
    let overview: Value =
        client.get(format!("{}/zones/_overview", global.api)).send().and_then(|r| r.json()).expect("overview");
    let subs = overview["items"][0]["zoneInsight"]["subscriptions"].as_array().cloned().unwrap_or_default();
    let sent = subs.last().map(|s| s["status"]["stat"]["MeshGateway"]["resourcesSent"].clone()).unwrap_or(Value::Null);
    println!("zone restart with 1 of {N} changed: converged in {resync:?}; MeshGateways resent: {sent}");
    drop(zone);
    drop(global);
}
