//! Listeners that cannot be held open: the accept loop every server of a
//! Meridian process (REST API, KDS, xDS) runs on its bound TCP socket.
//!
//! ```text
//!   accept ──cap full?──▶ close at once (the NEWEST connection is shed)
//!     │ permit (one per open connection, released when it closes)
//!     ▼
//!   TLS handshake (≤ handshake_timeout) ──▶ first bytes (≤ idle_timeout) ──▶ server
//! ```
//!
//! - A connection beyond `max_connections` is accepted and closed at once,
//!   so the file descriptors of already admitted connections (the API's
//!   callers, connected zones, Envoys) are never starved; the kernel's
//!   backlog does not fill either.
//! - A client that does not finish its TLS handshake, or sends nothing,
//!   within its deadline is closed: for gRPC (HTTP/2) the first bytes are
//!   its connection preface; for the API, hyper's header-read timeout
//!   ([`crate::server::serve`]) then bounds each request's headers.
//! - A failing `accept` (`EMFILE` when the process is out of descriptors)
//!   is retried after [`ACCEPT_RETRY`] instead of spinning.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::{Stream, StreamExt};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

/// Default cap on open connections per listener. Three listeners of a
/// process at this cap stay under the common 1024 open-file limit only
/// while one of them is not full; the cap is per listener so that a flood
/// on one port never takes another port's slots.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// Default deadline for a new connection's first bytes (the HTTP/2 preface
/// for gRPC, the request line for HTTP/1) and for each HTTP/1 request's
/// headers.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default deadline for a TLS handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (out of descriptors, ...), so the loop
/// does not spin while descriptors are released.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);
/// Admitted connections waiting for the server to take them; the server
/// takes them as fast as it can spawn a task, so this rarely holds any.
const READY_QUEUE: usize = 64;
/// Bytes read (and replayed to the server) to see that a client speaks:
/// at least the first segment of an HTTP/2 preface or an HTTP/1 line.
const FIRST_READ: usize = 1024;

/// What every listener enforces (flags: `meridian_runtime::args::ListenerArgs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at most; the newest beyond it is closed at once.
    pub max_connections: usize,
    /// Deadline for a connection's first bytes after its (TLS) handshake,
    /// and for each HTTP/1 request's headers on the API.
    pub idle_timeout: Duration,
    /// Deadline for the TLS handshake (ignored without TLS).
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

/// An admitted connection: the stream (TCP or TLS over TCP), the first
/// bytes already read from it (replayed before the rest), its addresses,
/// and its slot under the cap, released when the connection is dropped.
pub struct Conn<S> {
    inner: S,
    first: Vec<u8>,
    pos: usize,
    local: Option<SocketAddr>,
    remote: SocketAddr,
    _permit: OwnedSemaphorePermit,
}

impl<S> Conn<S> {
    /// The client's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Conn<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.first.len() {
            let n = buf.remaining().min(this.first.len() - this.pos);
            buf.put_slice(&this.first[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.first.len() {
                this.first = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// tonic reads the peer address from this (`Request::remote_addr`).
impl<S> tonic::transport::server::Connected for Conn<S> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::TcpConnectInfo { local_addr: self.local, remote_addr: Some(self.remote) }
    }
}

/// A guarded listener: admitted connections, in the order they became ready.
pub struct Guarded<S> {
    local: SocketAddr,
    ready: mpsc::Receiver<Conn<S>>,
}

/// Plain TCP under `limits`; `name` labels its log lines ("API", "KDS", "xDS").
pub fn plain(tcp: TcpListener, limits: Limits, name: &'static str) -> io::Result<Guarded<TcpStream>> {
    guard(tcp, limits, name, |s: TcpStream| async move { Ok(s) })
}

/// TLS (rustls `config`) under `limits`.
pub fn tls(
    tcp: TcpListener,
    limits: Limits,
    name: &'static str,
    config: Arc<rustls::ServerConfig>,
) -> io::Result<Guarded<TlsStream<TcpStream>>> {
    let acceptor = TlsAcceptor::from(config);
    guard(tcp, limits, name, move |s: TcpStream| {
        let acceptor = acceptor.clone();
        async move {
            tokio::time::timeout(limits.handshake_timeout, acceptor.accept(s))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
        }
    })
}

impl<S: Send + 'static> Guarded<S> {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The next admitted connection; pending forever once the accept loop
    /// ended (it ends only when this listener is dropped).
    pub async fn accept(&mut self) -> Conn<S> {
        match self.ready.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        }
    }

    /// The admitted connections as the stream tonic serves.
    pub fn into_stream(self) -> impl Stream<Item = Result<Conn<S>, io::Error>> + Send + 'static {
        tokio_stream::wrappers::ReceiverStream::new(self.ready).map(Ok)
    }
}

fn guard<S, F, Fut>(tcp: TcpListener, limits: Limits, name: &'static str, upgrade: F) -> io::Result<Guarded<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<S>> + Send + 'static,
{
    let local = tcp.local_addr()?;
    let (tx, ready) = mpsc::channel(READY_QUEUE);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let shed = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
                a = tcp.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, "accept failed; retrying");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                // The newest connection is the one shed: the admitted ones
                // (API callers, zones, Envoys) keep working.
                let n = shed.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(listener = name, %peer, shed = n, max = limits.max_connections,
                        "connection limit reached; closing new connections");
                }
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let local = stream.local_addr().ok();
            let handshake = upgrade(stream);
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut inner = match handshake.await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(listener = name, %peer, error = %e, "handshake failed; closed");
                        return;
                    }
                };
                let mut first = vec![0u8; FIRST_READ];
                let n = match tokio::time::timeout(limits.idle_timeout, inner.read(&mut first)).await {
                    Ok(Ok(n)) if n > 0 => n,
                    Ok(Ok(_)) => return,
                    Ok(Err(e)) => {
                        tracing::debug!(listener = name, %peer, error = %e, "read failed; closed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(listener = name, %peer, "sent nothing within the idle timeout; closed");
                        return;
                    }
                };
                first.truncate(n);
                let conn = Conn { inner, first, pos: 0, local, remote: peer, _permit: permit };
                let _ = tx.send(conn).await;
            });
        }
    });
    Ok(Guarded { local, ready })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn limits(max: usize, idle_ms: u64) -> Limits {
        Limits {
            max_connections: max,
            idle_timeout: Duration::from_millis(idle_ms),
            handshake_timeout: Duration::from_secs(5),
        }
    }

    /// Reads until EOF (the server closed) or a byte arrives.
    async fn closed_by_server(c: &mut TcpStream) -> bool {
        let mut b = [0u8; 1];
        matches!(c.read(&mut b).await, Ok(0) | Err(_))
    }

    #[tokio::test]
    async fn first_bytes_are_replayed_and_silent_clients_are_closed() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("addr");
        let mut g = plain(tcp, limits(8, 200), "test").expect("guard");

        let mut silent = TcpStream::connect(addr).await.expect("connect");
        let mut talker = TcpStream::connect(addr).await.expect("connect");
        talker.write_all(b"hello").await.expect("write");
        let mut conn = g.accept().await;
        let mut got = [0u8; 5];
        conn.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"hello", "the first bytes reach the server");
        assert!(closed_by_server(&mut silent).await, "a client that sends nothing is closed");
    }

    #[tokio::test]
    async fn the_newest_connection_beyond_the_cap_is_shed() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("addr");
        let mut g = plain(tcp, limits(2, 60_000), "test").expect("guard");
        let mut admitted = Vec::new();
        for _ in 0..2 {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            c.write_all(b"x").await.expect("write");
            admitted.push((c, g.accept().await));
        }
        let mut third = TcpStream::connect(addr).await.expect("connect");
        assert!(closed_by_server(&mut third).await, "the third connection is closed");
        // The admitted ones still work.
        let (client, server) = &mut admitted[0];
        server.write_all(b"ok").await.expect("server writes");
        let mut got = [0u8; 2];
        client.read_exact(&mut got).await.expect("client reads");
        assert_eq!(&got, b"ok");
        // Closing one frees its slot.
        drop(admitted.pop());
        let mut fourth = TcpStream::connect(addr).await.expect("connect");
        fourth.write_all(b"y").await.expect("write");
        let mut c = g.accept().await;
        let mut b = [0u8; 1];
        c.read_exact(&mut b).await.expect("read");
        assert_eq!(&b, b"y");
    }
}
