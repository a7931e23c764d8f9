//! TrafficLog to a Mesh `tcp` logging backend, end to end: a gateway run
//! by `meridian-zone dataplane run` (whose access-log streamer reads
//! Envoy's FIFO), a real TCP listener in the test as the backend. The
//! backend goes away and comes back: requests keep succeeding meanwhile,
//! the lines written while it was away arrive after it returns, and new
//! requests are logged again. A FIFO planted by another local user at the
//! predictable `/tmp` path an earlier runner used is neither reused nor
//! written: Envoy's FIFO is in the runner's private (0700) directory.

use std::{
    io::Read,
    os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
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

/// A FIFO another local user planted at `path` (mode 0666) and reads in
/// the background, as an attacker would: every byte it gets is kept.
struct Planted {
    path: std::path::PathBuf,
    stolen: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    reader: std::thread::JoinHandle<()>,
}

impl Planted {
    fn plant(path: &std::path::Path) -> Planted {
        let _ = std::fs::remove_file(path);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_bits_truncate(0o666),
            0,
        )
        .expect("plant a FIFO");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).expect("chmod the planted FIFO");
        let mut fifo = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(path)
            .expect("open the planted FIFO");
        let (stolen, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let (sink, halt) = (stolen.clone(), stop.clone());
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !halt.load(Ordering::Relaxed) {
                match fifo.read(&mut buf) {
                    Ok(n) if n > 0 => sink.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(&buf[..n]),
                    _ => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Planted { path: path.to_path_buf(), stolen, stop, reader }
    }

    /// Stops reading; returns what was read and whether the FIFO is still
    /// the planted one (nobody replaced it).
    fn finish(self) -> (String, bool) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.reader.join();
        let still = std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.file_type().is_fifo());
        let _ = std::fs::remove_file(&self.path);
        let stolen = self.stolen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (String::from_utf8_lossy(&stolen).into_owned(), still)
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
    // Where an earlier runner put its FIFO, predictably: another user's now.
    let planted = Planted::plant(&std::path::Path::new("/tmp").join(format!("meridian-al-{name}-default.fifo")));
    let runner = Process::new(name, binary("meridian-zone"), &topo.dir().logs());
    let mut args: Vec<std::ffi::OsString> = ["dataplane", "run", "--api-url", zone.api_url()].map(Into::into).to_vec();
    args.extend(zone.xds_flags());
    args.extend(["--dataplane-token-file".into(), token_file.into()]);
    args.extend(["--admin-address".into(), "127.0.0.1:0".into(), "--envoy".into(), envoy_binary().into()]);
    args.extend(["--config-dir".into(), dir.clone().into(), "-f".into(), file.into()]);
    args.extend(["--", "--concurrency", "1", "--admin-address-path"].map(Into::into));
    args.push(admin_file.clone().into());
    runner.start(&args, &Announce::File(admin_file)).await;
    // Envoy runs in a directory only the runner's user can enter, where
    // the FIFO is.
    let pid = runner
        .stdout()
        .lines()
        .find_map(|l| l.strip_prefix("meridian-zone dataplane: Envoy pid ").map(|p| p.trim().to_string()))
        .expect("the runner announces Envoy's pid");
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).expect("Envoy's working directory");
    let mode = std::fs::metadata(&cwd).expect("stat Envoy's working directory").permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "Envoy's working directory {} is private", cwd.display());
    // The bootstrap carries the Dataplane token: this user's only.
    let bootstrap = std::fs::metadata(dir.join(format!("bootstrap-default.{name}.yaml"))).expect("the bootstrap");
    assert_eq!(bootstrap.permissions().mode() & 0o777, 0o600, "the bootstrap (with the token) is private");
    let fifo = std::fs::symlink_metadata(cwd.join("meridian-access-log.fifo")).expect("the FIFO in Envoy's directory");
    assert!(fifo.file_type().is_fifo(), "{} is a FIFO", cwd.display());

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
    let (stolen, still) = planted.finish();
    assert!(stolen.is_empty(), "the FIFO planted at the old /tmp path got access-log lines: {stolen:?}");
    assert!(still, "the planted FIFO was left alone (not replaced by the runner)");
    assert!(runner.sigterm().await.success(), "the runner's exit");
    assert!(!cwd.exists(), "the runner removes its work directory on exit");
    collector.stop().await;
    topo.cleanup().await;
}
