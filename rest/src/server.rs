//! Serving the API on a listener the caller bound (tests bind port 0),
//! over plain TCP or TLS, through [`crate::listener`] (connection cap,
//! handshake and idle deadlines).

use std::{future::Future, net::SocketAddr, path::Path, sync::Arc};

use anyhow::Context;
use axum::{Router, extract::ConnectInfo};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::listener::{self, Limits};

/// The caller's address, for handlers (`ConnectInfo<PeerAddr>`), on TCP and TLS alike.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// A rustls server config (ring, TLS 1.2+, ALPN h2 and http/1.1) from PEM files.
pub fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let cert_pem = std::fs::read(cert).with_context(|| format!("cannot read certificate {}", cert.display()))?;
    let key_pem = std::fs::read(key).with_context(|| format!("cannot read a private key from {}", key.display()))?;
    tls_config_from_pem(&cert_pem, &key_pem, &[b"h2", b"http/1.1"])
        .with_context(|| format!("{} and {}", cert.display(), key.display()))
}

/// A rustls server config (ring, TLS 1.2+) from PEM bytes, offering the
/// ALPN protocols `alpn` (KDS: `h2` only; the API: `h2` and `http/1.1`).
///
/// Errors: no certificate, invalid PEM, no key, or a key that does not match.
pub fn tls_config_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    alpn: &[&[u8]],
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("invalid PEM in the certificate")?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in the certificate PEM");
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("cannot read a private key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Serves `router` until `shutdown` resolves, then drains in-flight
/// requests; over TLS when `tls` is given. Connections are admitted by
/// [`crate::listener`] under `limits`; an HTTP/1 request whose headers do
/// not arrive within `limits.idle_timeout` is closed (hyper's header-read
/// timeout, which `axum::serve` leaves off).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // HTTP/2 `:authority` (or an absolute-form target) names the host the
    // loopback-trust rule checks, as `Host` does.
    let router = router.layer(axum::middleware::map_request(crate::auth::host_from_authority));
    match tls {
        None => serve_guarded(listener::plain(listener, limits, "API")?, limits, router, shutdown).await,
        Some(config) => serve_guarded(listener::tls(listener, limits, "API", config)?, limits, router, shutdown).await,
    }
    Ok(())
}

async fn serve_guarded<S>(
    mut guarded: listener::Guarded<S>,
    limits: Limits,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.idle_timeout);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let conn = tokio::select! {
            c = guarded.accept() => c,
            () = &mut shutdown => break,
        };
        let peer = PeerAddr(conn.remote_addr());
        let svc = router.clone().map_request(move |req: http::Request<hyper::body::Incoming>| {
            let mut req = req.map(axum::body::Body::new);
            req.extensions_mut().insert(ConnectInfo(peer));
            req
        });
        let served = builder.serve_connection_with_upgrades(TokioIo::new(conn), TowerToHyperService::new(svc));
        let served = graceful.watch(served.into_owned());
        tokio::spawn(async move {
            if let Err(e) = served.await {
                tracing::debug!(peer = %peer.0, error = %e, "API connection ended with an error");
            }
        });
    }
    drop(guarded);
    graceful.shutdown().await;
}

/// Prints a line users (and test harnesses) read on stdout; a closed stdout
/// is not an error for a server.
pub fn announce(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
