//! A real headless Chromium driven over the Chrome DevTools Protocol (CDP),
//! for the GUI tests: navigate, read the DOM, run script, take screenshots,
//! and collect every console message and uncaught exception of the page.
//!
//! ```text
//!   Browser::launch(dir) ── chromium --headless --remote-debugging-port=0 --user-data-dir=<dir>/chromium
//!        │  (a Process: logs in <dir>/logs, killed on drop; the port from <profile>/DevToolsActivePort)
//!        └─ GET /json/list ─▶ the page's WebSocket ── CDP: Page.*, Runtime.*, Log.*, Network.*
//! ```
//!
//! Chromium is Debian's `chromium` package (`tests/run-all.sh` installs it);
//! without it the test fails saying so.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    process::{Announce, Process},
    topology::TestDir,
};

/// How long one CDP call may take (a guard against a hung browser).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A headless Chromium with one page (tab) attached.
pub struct Browser {
    _process: Process,
    tx: mpsc::UnboundedSender<Message>,
    pending: Pending,
    events: Arc<Mutex<Vec<Value>>>,
    next_id: AtomicU64,
}

/// The Chromium binary: Debian's, else `chromium` on PATH.
pub fn chromium_binary() -> PathBuf {
    let debian = Path::new("/usr/lib/chromium/chromium");
    if debian.exists() {
        return debian.to_path_buf();
    }
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("chromium")).find(|c| c.exists()))
        .unwrap_or_default();
    found.unwrap_or_else(|| {
        panic!("chromium is not installed: run `apt-get install -y chromium` (tests/run-all.sh does)")
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Browser {
    /// Starts Chromium (profile and logs under `dir`), attaches to its
    /// blank page and enables the page, runtime, log and network domains,
    /// so console messages and exceptions are recorded from the start.
    /// `extra` flags are passed as given (e.g. `--host-resolver-rules=MAP
    /// gui.example 127.0.0.1`, to reach a loopback server under another name).
    pub async fn launch(dir: &TestDir, extra: &[&str]) -> Browser {
        let profile = dir.part_dir("chromium");
        let process = Process::new("chromium", chromium_binary(), &dir.logs());
        let args: Vec<std::ffi::OsString> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--window-size=1280,1000",
        ]
        .into_iter()
        .map(Into::into)
        .chain(extra.iter().map(Into::into))
        .chain([format!("--user-data-dir={}", profile.display()).into(), "about:blank".into()])
        .collect();
        let found = process.start(&args, &Announce::File(profile.join("DevToolsActivePort"))).await;
        let port = found[0].lines().next().unwrap_or_default().trim().to_string();
        let ws_url = crate::eventually("Chromium lists its page", CALL_TIMEOUT, || {
            let port = port.clone();
            async move {
                let list: Value = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())?;
                list.as_array()
                    .and_then(|l| l.iter().find(|t| t["type"] == "page"))
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                    .map(str::to_string)
                    .ok_or_else(|| format!("no page target yet: {list}"))
            }
        })
        .await;
        let (ws, _) = tokio_tungstenite::connect_async(&ws_url)
            .await
            .unwrap_or_else(|e| panic!("cannot open the DevTools WebSocket {ws_url}: {e}"));
        let (mut sink, mut stream) = ws.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
        });
        let pending: Pending = Arc::default();
        let events: Arc<Mutex<Vec<Value>>> = Arc::default();
        tokio::spawn({
            let (pending, events) = (pending.clone(), events.clone());
            async move {
                while let Some(Ok(msg)) = stream.next().await {
                    let Message::Text(text) = msg else { continue };
                    let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
                    match v.get("id").and_then(Value::as_u64) {
                        Some(id) => {
                            if let Some(reply) = lock(&pending).remove(&id) {
                                let _ = reply.send(v);
                            }
                        }
                        None => lock(&events).push(v),
                    }
                }
            }
        });
        let browser = Browser { _process: process, tx, pending, events, next_id: AtomicU64::new(1) };
        for domain in ["Page.enable", "Runtime.enable", "Log.enable", "Network.enable"] {
            browser.call(domain, json!({})).await;
        }
        browser
    }

    /// One CDP call on the page; its `result`. Panics on a CDP error.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = oneshot::channel();
        lock(&self.pending).insert(id, reply_tx);
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.tx.send(Message::text(msg)).unwrap_or_else(|_| panic!("{method}: the DevTools connection is closed"));
        let reply = tokio::time::timeout(CALL_TIMEOUT, reply_rx)
            .await
            .unwrap_or_else(|_| panic!("{method}: no answer within {CALL_TIMEOUT:?}"))
            .unwrap_or_else(|_| panic!("{method}: the DevTools connection closed"));
        if let Some(err) = reply.get("error") {
            panic!("{method} failed: {err}");
        }
        reply["result"].clone()
    }

    /// Sends every request of the page with these extra headers
    /// (`Authorization`, ...).
    pub async fn set_headers(&self, headers: &[(&str, &str)]) {
        let h: serde_json::Map<String, Value> = headers.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        self.call("Network.setExtraHTTPHeaders", json!({ "headers": h })).await;
    }

    /// Opens `url` and waits until the document is loaded; returns the
    /// HTTP status of the main document.
    pub async fn goto(&self, url: &str) -> u16 {
        let before = lock(&self.events).len();
        let nav = self.call("Page.navigate", json!({ "url": url })).await;
        if let Some(err) = nav.get("errorText") {
            panic!("navigating to {url} failed: {err}");
        }
        let frame = nav["frameId"].as_str().unwrap_or_default().to_string();
        crate::eventually(&format!("{url} is loaded"), CALL_TIMEOUT, || async {
            let state = self.eval("document.readyState").await;
            let url_now = self.eval("location.href").await;
            if state == "complete"
                && url_now.as_str().is_some_and(|u| u.starts_with(url.split('#').next().unwrap_or(url)))
            {
                Ok(())
            } else {
                Err(format!("readyState {state}, at {url_now}"))
            }
        })
        .await;
        let events = lock(&self.events);
        events[before..]
            .iter()
            .filter(|e| {
                e["method"] == "Network.responseReceived"
                    && e["params"]["type"] == "Document"
                    && e["params"]["frameId"].as_str() == Some(frame.as_str())
            })
            .filter_map(|e| e["params"]["response"]["status"].as_u64())
            .next_back()
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or(0)
    }

    /// Evaluates `expression` in the page; its value (JSON), or panics with
    /// the exception it threw.
    pub async fn eval(&self, expression: &str) -> Value {
        let r = self
            .call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }))
            .await;
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("{expression} threw: {ex}");
        }
        r["result"]["value"].clone()
    }

    /// The page's visible text.
    pub async fn text(&self) -> String {
        self.eval("document.body ? document.body.innerText : ''").await.as_str().unwrap_or_default().to_string()
    }

    /// The page's whole HTML, as the browser holds it now.
    pub async fn html(&self) -> String {
        self.eval("document.documentElement.outerHTML").await.as_str().unwrap_or_default().to_string()
    }

    /// Saves a PNG of the page (its full height) at `path`.
    pub async fn screenshot(&self, path: &Path) {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png", "captureBeyondViewport": true })).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("screenshot is not base64: {e}"));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Every console message of level error or warning, uncaught exception,
    /// and browser log entry of level error (failed loads, CSP violations)
    /// recorded so far, one line each.
    pub fn console_problems(&self) -> Vec<String> {
        lock(&self.events)
            .iter()
            .filter_map(|e| {
                let p = &e["params"];
                match e["method"].as_str()? {
                    "Runtime.consoleAPICalled"
                        if matches!(p["type"].as_str(), Some("error" | "warning" | "assert")) =>
                    {
                        Some(format!("console.{}: {}", p["type"], p["args"]))
                    }
                    "Runtime.exceptionThrown" => Some(format!("exception: {}", p["exceptionDetails"])),
                    "Log.entryAdded" if matches!(p["entry"]["level"].as_str(), Some("error" | "warning")) => {
                        Some(format!("log {}: {} ({})", p["entry"]["level"], p["entry"]["text"], p["entry"]["url"]))
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// Forgets the events recorded so far (before a step expected to fail loads, say).
    pub fn clear_events(&self) {
        lock(&self.events).clear();
    }
}

/// Where screenshots go: `<target>/gui-screenshots` (the directory of the
/// workspace's target, found from the test executable).
pub fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // <target>/<profile>/deps/<test>: up three.
    let target = exe.ancestors().nth(3).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("target"));
    target.join("gui-screenshots")
}
