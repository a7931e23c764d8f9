//! The access-log streamer: Envoy's lines for TCP logging backends, read
//! from a FIFO and forwarded to each backend over TCP (the incumbent's
//! kuma-dp access log streamer).
//!
//! ```text
//!   Envoy file access logger ──"<address>;<line>\n"──▶ FIFO
//!     <runner's 0700 work dir>/meridian-access-log.fifo
//!     (Envoy's working directory; gateway::policies::ACCESS_LOG_SINK)
//!        │ runner reads every line at once (Envoy never waits on us)
//!        ▼
//!   one bounded queue per address ([`QUEUE_LINES`] lines, [`QUEUE_BYTES`];
//!   full → line dropped, counted)
//!        │
//!   one TCP connection per address, reconnected with backoff
//! ```
//!
//! Why a FIFO: Envoy formats the line itself (every command operator of
//! Envoy's format strings works, as with a `file` backend) and its file
//! logger writes from its own flush thread, so a slow reader never blocks a
//! request. The runner holds the FIFO open for reading *and* writing, so
//! Envoy's `open` never waits and the reader never sees end-of-file.
//!
//! Delivery is at most once: while a backend is down its lines wait in the
//! queue (up to [`QUEUE_LINES`] lines and [`QUEUE_BYTES`], then dropped and
//! counted in the log); a
//! line being written when the connection breaks is written again after
//! the reconnect, but lines the kernel accepted just before the peer went
//! away are lost.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpStream, unix::pipe},
    sync::mpsc,
};

/// Lines kept per backend while it is unreachable; more are dropped.
pub const QUEUE_LINES: usize = 10_000;
/// Bytes kept per backend while it is unreachable or not reading; more
/// lines are dropped. Without it the line bound alone let a backend that
/// never reads hold [`QUEUE_LINES`] lines of up to 64 KiB each (640 MiB)
/// in the runner, filled by clients sending long request paths.
pub const QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// Longest line forwarded (bytes); a longer one is cut there.
const MAX_LINE: usize = 64 * 1024;

/// Lines dropped because a backend's queue was full, over the runner's life.
#[derive(Debug, Clone, Default)]
pub struct Dropped(Arc<AtomicU64>);

impl Dropped {
    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Creates the FIFO at `path` (mode 0600; it must not exist: `path` is in
/// the runner's private work directory, so anything there is not ours to
/// reuse), opens it and starts forwarding. The returned guard removes the
/// FIFO when dropped.
pub fn start(path: &Path) -> anyhow::Result<(Sink, Dropped)> {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        0,
    )
    .with_context(|| format!("cannot create the access-log FIFO {}", path.display()))?;
    let receiver = pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(path)
        .with_context(|| format!("cannot open the access-log FIFO {}", path.display()))?;
    let dropped = Dropped::default();
    tokio::spawn(read_lines(receiver, dropped.clone()));
    Ok((Sink { path: path.to_path_buf() }, dropped))
}

/// Removes the FIFO when dropped.
#[derive(Debug)]
pub struct Sink {
    path: PathBuf,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Splits `<address>;<line>` (Envoy's line, newline included).
pub fn split_line(line: &str) -> Option<(&str, &str)> {
    let (address, rest) = line.split_once(';')?;
    (!address.is_empty() && !address.contains(char::is_whitespace)).then_some((address, rest))
}

async fn read_lines(receiver: pipe::Receiver, dropped: Dropped) {
    let mut reader = BufReader::new(receiver);
    // Per backend address: its queue and the bytes in it (lines taken out
    // by its forwarder are subtracted once written).
    let mut queues: BTreeMap<String, (mpsc::Sender<String>, Arc<AtomicUsize>)> = BTreeMap::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut reader).take(MAX_LINE as u64).read_until(b'\n', &mut buf).await {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot read the access-log FIFO; TCP access logs stop");
                return;
            }
        }
        let mut line = String::from_utf8_lossy(&buf).into_owned();
        if !line.ends_with('\n') {
            line.push('\n');
        }
        let Some((address, text)) = split_line(&line) else {
            tracing::warn!(line = %line.trim_end(), "an access-log line without `<address>;`; dropped");
            continue;
        };
        let (queue, queued) = queues.entry(address.to_string()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(QUEUE_LINES);
            let queued = Arc::new(AtomicUsize::new(0));
            tokio::spawn(forward(address.to_string(), rx, queued.clone()));
            (tx, queued)
        });
        let fits = queued.load(Ordering::Relaxed) + text.len() <= QUEUE_BYTES;
        if fits && queue.try_send(text.to_string()).is_ok() {
            queued.fetch_add(text.len(), Ordering::Relaxed);
        } else {
            let n = dropped.0.fetch_add(1, Ordering::Relaxed) + 1;
            if n == 1 || n.is_multiple_of(1000) {
                tracing::warn!(backend = %address, dropped = n, "access-log backend unreachable and its queue full: lines dropped");
            }
        }
    }
}

/// How long one connection attempt to one address of a backend may take.
/// Without it an address that drops SYNs held the streamer for the
/// kernel's whole SYN retry (about 2 minutes) per address, so a host name
/// resolving to several dead addresses before a live one took that long
/// times their number, every reconnect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to the first of `addresses` that answers within `timeout`,
/// trying them in order.
async fn connect_any(addresses: &[std::net::SocketAddr], timeout: Duration) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "the name resolves to no address");
    for a in addresses {
        match tokio::time::timeout(timeout, TcpStream::connect(a)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = e,
            Err(_) => {
                last = std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{a}: no answer within {timeout:?}"))
            }
        }
    }
    Err(last)
}

/// Connects to `address` (each address it resolves to in turn, at most
/// [`CONNECT_TIMEOUT`] each), retrying with exponential backoff (100 ms to
/// 5 s, with jitter) for as long as it takes.
async fn connect(address: &str) -> TcpStream {
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build();
    let mut failures = 0u64;
    loop {
        let attempt = match tokio::net::lookup_host(address).await {
            Ok(addresses) => connect_any(&addresses.collect::<Vec<_>>(), CONNECT_TIMEOUT).await,
            Err(e) => Err(e),
        };
        match attempt {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                if failures > 0 {
                    tracing::info!(backend = %address, "access-log backend reachable again");
                }
                return s;
            }
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(backend = %address, error = %e, "cannot reach the access-log backend; retrying");
                }
                failures += 1;
                tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(5))).await;
            }
        }
    }
}

/// Writes the lines of one backend, reconnecting when the connection
/// breaks (a failed write, or the peer closing: a read of 0 bytes); each
/// line written leaves `queued`.
async fn forward(address: String, mut lines: mpsc::Receiver<String>, queued: Arc<AtomicUsize>) {
    let mut pending: Option<String> = None;
    loop {
        let stream = connect(&address).await;
        let (mut read, mut write) = stream.into_split();
        let mut scratch = [0u8; 512];
        loop {
            let line = match pending.take() {
                Some(l) => l,
                None => tokio::select! {
                    l = lines.recv() => match l {
                        Some(l) => l,
                        None => return,
                    },
                    n = read.read(&mut scratch) => match n {
                        Ok(0) | Err(_) => break,
                        Ok(_) => continue, // a backend that talks back: ignored
                    },
                },
            };
            if let Err(e) = write.write_all(line.as_bytes()).await {
                tracing::warn!(backend = %address, error = %e, "access-log backend connection lost; reconnecting");
                pending = Some(line);
                break;
            }
            queued.fetch_sub(line.len(), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use tokio::io::AsyncBufReadExt;

    use super::*;

    /// The bounded queue: with the backend down, lines beyond
    /// [`QUEUE_LINES`] are dropped and counted; once it listens, the queued
    /// lines arrive in order.
    #[tokio::test]
    async fn a_down_backend_queues_then_drops_and_gets_the_queue_when_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("al.fifo");
        let (_sink, dropped) = start(&fifo).expect("start the streamer");
        // A port nobody listens on (yet).
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a port").port();
        let extra = 50;
        let fifo_path = fifo.clone();
        tokio::task::spawn_blocking(move || {
            let mut w = std::fs::OpenOptions::new().write(true).open(&fifo_path).expect("open the FIFO as Envoy does");
            for i in 0..QUEUE_LINES + extra {
                writeln!(w, "127.0.0.1:{port};line {i}").expect("write a line");
            }
        })
        .await
        .expect("writer");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while dropped.get() < extra as u64 {
            assert!(tokio::time::Instant::now() < deadline, "dropped {} of {extra}", dropped.get());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(dropped.get(), extra as u64, "exactly the lines beyond the queue are dropped");
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("the backend comes up");
        let (socket, _) = tokio::time::timeout(Duration::from_secs(60), listener.accept())
            .await
            .expect("the streamer reconnects")
            .expect("accept");
        let mut lines = tokio::io::BufReader::new(socket).lines();
        for i in 0..QUEUE_LINES {
            let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                .await
                .expect("a queued line arrives")
                .expect("read");
            assert_eq!(line.as_deref(), Some(format!("line {i}").as_str()));
        }
    }

    /// A backend that accepts and never reads: long lines (as clients with
    /// long request paths make) stop being queued at [`QUEUE_BYTES`], not
    /// after [`QUEUE_LINES`] of them (640 MiB at 64 KiB each).
    #[tokio::test]
    async fn a_backend_that_never_reads_holds_a_bounded_number_of_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("al.fifo");
        let (_sink, dropped) = start(&fifo).expect("start the streamer");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        // Accepts, keeps the connection, never reads.
        let held = tokio::spawn(async move { listener.accept().await.map(|(s, _)| s) });
        const LINES: u64 = 1_000;
        let long = "x".repeat(60 * 1024);
        let fifo_path = fifo.clone();
        tokio::task::spawn_blocking(move || {
            let mut w = std::fs::OpenOptions::new().write(true).open(&fifo_path).expect("open the FIFO as Envoy does");
            for _ in 0..LINES {
                writeln!(w, "127.0.0.1:{port};{long}").expect("write a line");
            }
        })
        .await
        .expect("writer");
        // 60 MB written; at most QUEUE_BYTES queued plus what the kernel's
        // socket buffers hold (a few MB on loopback).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while dropped.get() < LINES / 2 {
            assert!(tokio::time::Instant::now() < deadline, "dropped only {} of {LINES} lines", dropped.get());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(held);
    }

    /// A resolved address that drops SYNs (a listener whose accept queue
    /// is full) before a live one: the live one is reached, instead of
    /// waiting out the kernel's SYN retries on the first.
    #[tokio::test]
    async fn a_dead_address_does_not_hold_up_the_next() {
        let dead = tokio::net::TcpSocket::new_v4().expect("socket");
        dead.bind("127.0.0.1:0".parse().expect("address")).expect("bind");
        let dead_addr = dead.local_addr().expect("address");
        let dead = dead.listen(0).expect("listen, backlog 0");
        // Fill its accept queue (nobody accepts): later SYNs are dropped.
        let mut fillers = Vec::new();
        while let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(dead_addr)).await {
            fillers.push(s);
            assert!(fillers.len() < 64, "the accept queue never filled");
        }
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let live_addr = live.local_addr().expect("address");
        let s =
            tokio::time::timeout(Duration::from_secs(60), connect_any(&[dead_addr, live_addr], Duration::from_secs(1)))
                .await
                .expect("the live address is reached while the dead one would still be retrying")
                .expect("connected");
        assert_eq!(s.peer_addr().expect("peer"), live_addr);
        drop((dead, fillers));
    }

    #[test]
    fn lines_name_their_backend() {
        assert_eq!(split_line("127.0.0.1:5170;200 /a;b\n"), Some(("127.0.0.1:5170", "200 /a;b\n")));
        assert_eq!(split_line("no address here\n"), None);
        assert_eq!(split_line(";x\n"), None);
    }
}
