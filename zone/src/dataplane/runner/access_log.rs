//! The access-log streamer: Envoy's lines for TCP logging backends, read
//! from a FIFO and forwarded to each backend over TCP (the incumbent's
//! kuma-dp access log streamer).
//!
//! ```text
//!   Envoy file access logger ──"<address>;<line>\n"──▶ FIFO
//!     /tmp/meridian-al-<name>-<mesh>.fifo (gateway::policies::access_log_sink)
//!        │ runner reads every line at once (Envoy never waits on us)
//!        ▼
//!   one bounded queue per address ([`QUEUE_LINES`]; full → line dropped, counted)
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
//! queue (up to [`QUEUE_LINES`], then dropped and counted in the log); a
//! line being written when the connection breaks is written again after
//! the reconnect, but lines the kernel accepted just before the peer went
//! away are lost.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
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

/// Creates the FIFO at `path` (replacing anything else there; a FIFO left
/// by an earlier runner is reused), opens it and starts forwarding. The
/// returned guard removes the FIFO when dropped.
pub fn start(path: &Path) -> anyhow::Result<(Sink, Dropped)> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()) => {}
        Ok(_) => std::fs::remove_file(path).with_context(|| format!("cannot replace {}", path.display()))?,
        Err(_) => {}
    }
    if !path.exists() {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
            0,
        )
        .with_context(|| format!("cannot create the access-log FIFO {}", path.display()))?;
    }
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
    let mut queues: BTreeMap<String, mpsc::Sender<String>> = BTreeMap::new();
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
        let queue = queues.entry(address.to_string()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(QUEUE_LINES);
            tokio::spawn(forward(address.to_string(), rx));
            tx
        });
        if queue.try_send(text.to_string()).is_err() {
            let n = dropped.0.fetch_add(1, Ordering::Relaxed) + 1;
            if n == 1 || n.is_multiple_of(1000) {
                tracing::warn!(backend = %address, dropped = n, "access-log backend unreachable and its queue full: lines dropped");
            }
        }
    }
}

/// Connects to `address`, retrying with exponential backoff (100 ms to 5 s,
/// with jitter) for as long as it takes.
async fn connect(address: &str) -> TcpStream {
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build();
    let mut failures = 0u64;
    loop {
        match TcpStream::connect(address).await {
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
/// breaks (a failed write, or the peer closing: a read of 0 bytes).
async fn forward(address: String, mut lines: mpsc::Receiver<String>) {
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

    #[test]
    fn lines_name_their_backend() {
        assert_eq!(split_line("127.0.0.1:5170;200 /a;b\n"), Some(("127.0.0.1:5170", "200 /a;b\n")));
        assert_eq!(split_line("no address here\n"), None);
        assert_eq!(split_line(";x\n"), None);
    }
}
