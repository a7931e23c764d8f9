//! Traffic through gateways: small backends that answer with their name
//! (HTTP: a JSON echo of what they saw; TCP and TLS: `<name>: <line>`),
//! the clients that talk to Envoy listeners, and the YAML of the Dataplanes
//! that register backends and gateways in a zone.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};

/// A TCP port free right now (the kernel's pick).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
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

/// Mesh `default`, as YAML.
pub const MESH: &str = "type: Mesh\nname: default\n";

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
///
/// Behaviours a test asks for, per request: `x-delay-ms: N` answers after
/// N ms; `x-fail-first: N` with `x-fail-key: K` answers 503 to the first N
/// requests carrying key K (then 200). Per backend: [`HttpBackend::set_healthy`]
/// `false` makes it answer 503 to everything (health checks included).
pub struct HttpBackend {
    pub name: String,
    pub port: u16,
    pub seen: Seen,
    healthy: Arc<std::sync::atomic::AtomicBool>,
}

impl HttpBackend {
    /// Healthy (the default) answers normally; unhealthy answers 503 to
    /// every request.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, std::sync::atomic::Ordering::SeqCst);
    }

    /// The requests seen so far.
    pub fn seen(&self) -> Vec<Value> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Whether a request with these headers is one of the first `x-fail-first`
/// of its `x-fail-key` (counted in `failures`).
fn fails(headers: &BTreeMap<String, String>, failures: &Mutex<BTreeMap<String, u32>>) -> bool {
    let Some(n) = headers.get("x-fail-first").and_then(|n| n.parse::<u32>().ok()) else { return false };
    let key = headers.get("x-fail-key").cloned().unwrap_or_default();
    let Ok(mut f) = failures.lock() else { return false };
    let count = f.entry(key).or_default();
    *count += 1;
    *count <= n
}

/// Starts an HTTP backend on 127.0.0.1 (a kernel-picked port); it runs
/// until the test's runtime ends.
pub async fn http_backend(name: &str) -> HttpBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
    let port = listener.local_addr().expect("addr").port();
    let seen: Seen = Arc::default();
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let failures: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
    let app = {
        let name = name.to_string();
        let seen = seen.clone();
        let healthy = healthy.clone();
        axum::Router::new().fallback(move |req: axum::extract::Request| {
            let name = name.clone();
            let seen = seen.clone();
            let healthy = healthy.clone();
            let failures = failures.clone();
            async move {
                use axum::response::IntoResponse;
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
                if let Some(ms) = headers.get("x-delay-ms").and_then(|v| v.parse::<u64>().ok()) {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                let status = if !healthy.load(std::sync::atomic::Ordering::SeqCst) || fails(&headers, &failures) {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                } else {
                    axum::http::StatusCode::OK
                };
                (status, axum::Json(echo)).into_response()
            }
        })
    };
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    HttpBackend { name: name.to_string(), port, seen, healthy }
}

/// A TCP backend of a topology: its name and port.
#[derive(Debug, Clone)]
pub struct TcpBackend {
    pub name: String,
    pub port: u16,
}

/// A redis-like TCP backend: answers each line with `<name>: <line>`;
/// returns its port. Runs until the test's runtime ends.
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
