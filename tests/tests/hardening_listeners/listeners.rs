//! Point 1: listeners that cannot be held open. The global runs under a
//! 1024 open-file limit; ~1,000 idle connections to its KDS port and some
//! to its API do not stop the API, a connected zone, or a new zone.

use std::time::Duration;

use meridian_tests::{
    Global, GlobalSpec, TestDir, Zone,
    resources::{gateway, listener_port, mesh},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Idle connections opened to the KDS port: about the whole 1024 limit.
const KDS_FLOOD: usize = 1000;
/// Idle connections opened to the API port.
const API_FLOOD: usize = 100;
/// Bound on waiting for the server to close a slow client (the test's
/// `--idle-timeout` is 3 s; this only stops a hung test).
const CLOSE_BOUND: Duration = Duration::from_secs(30);

/// Opens up to `n` connections that send nothing; connections the server
/// already refuses are not retried.
async fn idle_connections(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        if let Ok(c) = TcpStream::connect(addr).await {
            held.push(c);
        }
    }
    held
}

/// Reads until the server closes the connection; returns what it sent.
async fn read_until_closed(c: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(CLOSE_BOUND, c.read_to_end(&mut out)).await.expect("the server closes the connection");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_starve_the_api_or_new_zones() {
    let dir = TestDir::new("idle-flood");
    let spec = GlobalSpec {
        open_files_limit: Some(1024),
        extra_args: vec!["--idle-timeout".into(), "3s".into()],
        ..GlobalSpec::default()
    };
    let g = Global::start(&dir, "g", spec).await;
    g.api().apply(&mesh("default")).await;
    let z1 = Zone::connect(&dir, &g, "zone-1").await;
    z1.api().wait_for("/meshes/default", "synced from the global", |_| true).await;

    let kds = idle_connections(g.kds_addr(), KDS_FLOOD).await;
    let api = idle_connections(g.api_addr(), API_FLOOD).await;
    assert!(!kds.is_empty() && !api.is_empty(), "the flood connected");

    // The API answers, and the connected zone keeps syncing.
    assert!(g.api().find("/meshes/default").await.expect("the API answers under the flood").is_some());
    g.api().apply(&gateway("gw-1", 8080)).await;
    z1.api().wait_for("/meshes/default/meshgateways/gw-1", "port 8080", |v| listener_port(v) == Some(8080)).await;

    // A new zone connects and syncs.
    let z2 = Zone::connect(&dir, &g, "zone-2").await;
    z2.api().wait_for("/meshes/default/meshgateways/gw-1", "synced to a new zone", |_| true).await;
    g.api().wait_online("zone-2", true, meridian_tests::json_api::CONVERGE).await;
    drop((kds, api));

    // Slow clients: headers that never finish are cut off ...
    let mut slow = TcpStream::connect(g.api_addr()).await.expect("connect");
    slow.write_all(b"GET /meshes HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.expect("write");
    let answer = read_until_closed(&mut slow).await;
    assert!(!answer.contains("200 OK"), "an unfinished request was answered: {answer}");

    // ... and a declared body over the limit is refused before it is sent.
    let mut big = TcpStream::connect(g.api_addr()).await.expect("connect");
    let head = format!(
        "PUT /meshes/default/meshgateways/big HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        1u64 << 30
    );
    big.write_all(head.as_bytes()).await.expect("write");
    let mut buf = [0u8; 64];
    let n =
        tokio::time::timeout(CLOSE_BOUND, big.read(&mut buf)).await.expect("an answer before the body").expect("read");
    let status = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(status.starts_with("HTTP/1.1 413"), "a 1 GiB body was not refused up front: {status}");
}
