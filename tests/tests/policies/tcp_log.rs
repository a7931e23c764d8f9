//! TrafficLog to a Mesh `tcp` logging backend, end to end: a gateway run
//! by `meridian-zone dataplane run` (whose access-log streamer reads
//! Envoy's FIFO), a real TCP listener in the test as the backend. The
//! backend goes away and comes back: requests keep succeeding meanwhile,
//! the lines written while it was away arrive after it returns, and new
//! requests are logged again.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use meridian_tests::{
    Topology, eventually,
    process::{Announce, Process, binary, envoy_binary},
    traffic::{self, free_port},
};
use tokio::{io::AsyncBufReadExt, net::TcpListener, task::JoinSet};

/// Longer than Envoy's access-log flush interval (10 s) with room for a
/// loaded machine.
const LOG_WAIT: Duration = Duration::from_secs(60);

/// A TCP logging backend: every line received, in order of arrival.
struct Collector {
    lines: Arc<Mutex<Vec<String>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Collector {
    /// Listens on 127.0.0.1:`port`; lines go to `lines`.
    async fn start(port: u16, lines: Arc<Mutex<Vec<String>>>) -> Collector {
        let listener = eventually("the log collector binds its port", LOG_WAIT, || async {
            TcpListener::bind(("127.0.0.1", port)).await.map_err(|e| e.to_string())
        })
        .await;
        let sink = lines.clone();
        let accept = tokio::spawn(async move {
            // Dropping this task (abort) drops every connection with it.
            let mut conns = JoinSet::new();
            while let Ok((socket, _)) = listener.accept().await {
                let sink = sink.clone();
                conns.spawn(async move {
                    let mut reader = tokio::io::BufReader::new(socket).lines();
                    while let Ok(Some(line)) = reader.next_line().await {
                        sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                    }
                });
            }
        });
        Collector { lines, accept }
    }

    /// Closes the listener and every connection.
    async fn stop(self) {
        self.accept.abort();
        let _ = self.accept.await;
    }

    fn text(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn seen(lines: &Arc<Mutex<Vec<String>>>, want: &str) -> bool {
    lines.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|l| l == want)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_reach_a_tcp_backend_that_goes_away_and_returns() {
    let topo = Topology::builder("policies-tcp-log").zone("zone-1").http_backend("open", "zone-1").start().await;
    let zone = topo.zone("zone-1");
    let (port, log_port) = (free_port(), free_port());
    zone.api()
        .apply_yaml(&format!(
            "type: MeshGateway\nmesh: default\nname: edge\nselectors: [{{match: {{kuma.io/service: tcplog-edge}}}}]\n\
             conf: {{listeners: [{{port: {port}, protocol: HTTP}}]}}\n---\n\
             type: MeshGatewayRoute\nmesh: default\nname: edge-route\nselectors: [{{match: {{kuma.io/service: tcplog-edge}}}}]\n\
             conf: {{http: {{rules: [{{matches: [{{path: {{match: PREFIX, value: /}}}}], backends: [{{destination: {{kuma.io/service: open}}}}]}}]}}}}\n---\n\
             type: Mesh\nname: default\nlogging:\n  defaultBackend: collector\n  backends:\n  - name: collector\n    type: tcp\n    \
             format: 'meridian-tcp %RESPONSE_CODE% %REQ(:PATH)%'\n    conf: {{address: '127.0.0.1:{log_port}'}}\n---\n\
             type: TrafficLog\nmesh: default\nname: edge-log\nsources: [{{match: {{kuma.io/service: tcplog-edge}}}}]\n\
             destinations: [{{match: {{kuma.io/service: '*'}}}}]\n"
        ))
        .await;
    let lines = Arc::new(Mutex::new(Vec::new()));
    let collector = Collector::start(log_port, lines.clone()).await;

    // The gateway, run as users do: `dataplane run -f` with a token.
    let name = "tcplog-gw";
    let dir = topo.dir().part_dir(name);
    let file = dir.join("gateway.yaml");
    std::fs::write(&file, traffic::gateway_dataplane(name, "tcplog-edge")).expect("Dataplane file");
    let token = zone
        .api()
        .post_text("/tokens/dataplane", &serde_json::json!({"name": name, "mesh": "default", "validFor": "1h"}))
        .await;
    let token_file = dir.join("token");
    std::fs::write(&token_file, token).expect("token file");
    let admin_file = dir.join("admin");
    let runner = Process::new(name, binary("meridian-zone"), &topo.dir().logs());
    let mut args: Vec<std::ffi::OsString> = ["dataplane", "run", "--api-url", zone.api_url()].map(Into::into).to_vec();
    args.extend(zone.xds_flags());
    args.extend(["--dataplane-token-file".into(), token_file.into()]);
    args.extend(["--admin-address".into(), "127.0.0.1:0".into(), "--envoy".into(), envoy_binary().into()]);
    args.extend(["--config-dir".into(), dir.clone().into(), "-f".into(), file.into()]);
    args.extend(["--", "--concurrency", "1", "--admin-address-path"].map(Into::into));
    args.push(admin_file.clone().into());
    runner.start(&args, &Announce::File(admin_file)).await;

    eventually("a gateway request's line reaches the TCP backend", LOG_WAIT, || async {
        let r = traffic::get(port, "e", "/first").await.map_err(|e| e.to_string())?;
        if r.status != 200 {
            return Err(format!("gateway answered {r:?}"));
        }
        if seen(&lines, "meridian-tcp 200 /first") { Ok(()) } else { Err(format!("{:?}", collector.text())) }
    })
    .await;

    // The backend goes away: the gateway still serves every request.
    collector.stop().await;
    for i in 0..20 {
        let r = traffic::get(port, "e", &format!("/down-{i}")).await.expect("request while the log backend is down");
        assert_eq!(r.status, 200, "request {i} while the log backend is down: {r:?}");
    }
    // And comes back: logging resumes, and what was queued arrives.
    let collector = Collector::start(log_port, lines.clone()).await;
    eventually("logging resumes after the backend returns", LOG_WAIT, || async {
        let _ = traffic::get(port, "e", "/back").await;
        if seen(&lines, "meridian-tcp 200 /back") { Ok(()) } else { Err(format!("{:?}", collector.text())) }
    })
    .await;
    // A line written into the dying connection before the runner noticed
    // can be lost (at most one: the next write fails and is retried).
    let queued = (0..20).filter(|i| seen(&lines, &format!("meridian-tcp 200 /down-{i}"))).count();
    assert!(queued >= 19, "lines written while the backend was down: {queued} of 20 arrived: {:?}", collector.text());
    for line in collector.text() {
        assert!(line.starts_with("meridian-tcp "), "a line in the backend's format, without the address: {line:?}");
    }
    assert!(runner.sigterm().await.success(), "the runner's exit");
    collector.stop().await;
    topo.cleanup().await;
}
