//! The zone's xDS rows of the scale harness (issue 13): G gateways of one
//! zone as lightweight delta-ADS clients, against a real `meridian-zone`
//! federated to a real `meridian-global`; route PUTs at the global.
//!
//! ```text
//!   harness ──route PUT──▶ meridian-global ──KDS──▶ meridian-zone (--xds-plaintext)
//!                                                      │ delta ADS, one stream per gateway
//!   G AdsClients (in this process) ◀─────────────────────┘
//!     subscribe (wildcard) to listeners, routes, clusters, endpoints and
//!     secrets, ACK every response, report its arrival time and encoded size
//! ```
//!
//! Each client does what Envoy does on its ADS stream: node id
//! `default.<name>`, its Dataplane token as the `authorization` metadata,
//! one initial request per type, then an ACK (the response's nonce) for
//! every response. [`run`] measures: one route PUT → all G gateways hold it
//! (p50/p99; the route's path prefix appears in their route configuration),
//! the zone's CPU per update, bytes on the wire per update (all G streams),
//! zone memory per connected gateway (RSS), and time to first config for
//! `connect` gateways connecting at once (every type answered once, as
//! Envoy waits for before it is ready). Baselines are measured in the same
//! run: a trivial REST GET at the zone, the zone's CPU per GET, one gateway
//! connecting alone, and the sizes of what changed. Every wait is bounded
//! by [`crate::scale::LIMIT`]; nothing asserts a time.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use envoy_types::pb::envoy::{
    config::core::v3::Node,
    service::discovery::v3::{
        DeltaDiscoveryRequest, aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
    },
};
use prost::Message;
use serde_json::json;
use tokio::{sync::mpsc, task::JoinSet};

use crate::{
    Backend, Global, GlobalSpec, TestDir, Zone,
    scale::{LIMIT, Row, cpu, rss},
};

/// The types a gateway's Envoy subscribes to, in Envoy's order.
pub const TYPE_URLS: [&str; 5] = [
    "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
    "type.googleapis.com/envoy.config.listener.v3.Listener",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
];
const ROUTE_TYPE: &str = TYPE_URLS[4];

/// Round trips taken for the REST baseline.
const BASELINE_SAMPLES: usize = 50;
/// Concurrent token and Dataplane requests while setting up.
const SETUP_CLIENTS: usize = 8;
/// Requests an ADS client can queue (initial requests and ACKs; it never
/// has more than one unanswered per type).
const CLIENT_QUEUE: usize = 16;

/// The sizes of an ADS run.
#[derive(Debug, Clone)]
pub struct AdsConfig {
    /// Gateways connected while routes are PUT.
    pub gateways: usize,
    /// Route PUTs measured.
    pub updates: usize,
    /// Gateways connecting at once for the time-to-first-config row.
    pub connect: usize,
    /// The global's store.
    pub backend: Backend,
}

/// What a client reports.
#[derive(Debug)]
enum Event {
    /// A response of `type_url` arrived (encoded size in bytes).
    Response { client: usize, type_url: String, bytes: usize },
    /// The route configuration now holds marker `marker`.
    Marker { client: usize, marker: usize, at: Instant },
    /// The stream ended (the zone refused it or went away).
    Ended { client: usize, reason: String },
}

/// One gateway's ADS stream, run until its task is aborted. `markers` are
/// the route path prefixes the harness waits for: each is reported once,
/// when a route configuration first holds it.
async fn ads_client(
    addr: std::net::SocketAddr,
    client: usize,
    name: String,
    token: String,
    markers: Arc<Mutex<Vec<String>>>,
    events: mpsc::UnboundedSender<Event>,
) {
    let end = |reason: String| {
        let _ = events.send(Event::Ended { client, reason });
    };
    let mut grpc = match AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")).await {
        Ok(c) => c,
        Err(e) => return end(format!("connect: {e}")),
    };
    let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
    let node = Node { id: format!("default.{name}"), cluster: "gateway".into(), ..Default::default() };
    for type_url in TYPE_URLS {
        let first = DeltaDiscoveryRequest { node: Some(node.clone()), type_url: type_url.into(), ..Default::default() };
        if tx.send(first).await.is_err() {
            return;
        }
    }
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    match token.parse() {
        Ok(v) => {
            request.metadata_mut().insert("authorization", v);
        }
        Err(e) => return end(format!("token is not a header value: {e}")),
    }
    let mut stream = match grpc.delta_aggregated_resources(request).await {
        Ok(r) => r.into_inner(),
        Err(e) => return end(format!("stream: {e}")),
    };
    let mut seen: HashSet<usize> = HashSet::new();
    loop {
        let response = match stream.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return end("the zone closed the stream".into()),
            Err(e) => return end(format!("stream: {e}")),
        };
        let at = Instant::now();
        let _ =
            events.send(Event::Response { client, type_url: response.type_url.clone(), bytes: response.encoded_len() });
        if response.type_url == ROUTE_TYPE {
            let wanted: Vec<(usize, String)> = {
                let m = markers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                m.iter().enumerate().filter(|(i, _)| !seen.contains(i)).map(|(i, s)| (i, s.clone())).collect()
            };
            for (i, marker) in wanted {
                let needle = marker.as_bytes();
                let held = response
                    .resources
                    .iter()
                    .filter_map(|r| r.resource.as_ref())
                    .any(|any| any.value.windows(needle.len()).any(|w| w == needle));
                if held {
                    seen.insert(i);
                    let _ = events.send(Event::Marker { client, marker: i, at });
                }
            }
        }
        let ack =
            DeltaDiscoveryRequest { type_url: response.type_url, response_nonce: response.nonce, ..Default::default() };
        if tx.send(ack).await.is_err() {
            return;
        }
    }
}

/// The connected clients and what they report.
struct Clients {
    tasks: JoinSet<()>,
    events: mpsc::UnboundedReceiver<Event>,
    tx: mpsc::UnboundedSender<Event>,
    markers: Arc<Mutex<Vec<String>>>,
    /// Encoded response bytes received since the last [`Clients::take_bytes`].
    bytes: u64,
}

impl Clients {
    fn new() -> Clients {
        let (tx, events) = mpsc::unbounded_channel();
        Clients { tasks: JoinSet::new(), events, tx, markers: Arc::default(), bytes: 0 }
    }

    fn spawn(&mut self, zone: &Zone, client: usize, name: &str, token: &str) {
        let (addr, markers, tx) = (zone.xds(), self.markers.clone(), self.tx.clone());
        self.tasks.spawn(ads_client(addr, client, name.to_string(), token.to_string(), markers, tx));
    }

    /// Next event, or a panic naming `what` after [`LIMIT`].
    async fn next(&mut self, what: &str) -> Event {
        match tokio::time::timeout(LIMIT, self.events.recv()).await {
            Ok(Some(Event::Ended { client, reason })) => panic!("ADS client {client} ended while {what}: {reason}"),
            Ok(Some(Event::Response { bytes, client, type_url })) => {
                self.bytes += bytes as u64;
                Event::Response { bytes, client, type_url }
            }
            Ok(Some(e)) => e,
            Ok(None) => panic!("every ADS client is gone while {what}"),
            Err(_) => panic!("nothing arrived within {LIMIT:?} while {what}"),
        }
    }

    /// Waits until each of `clients` got one response of every type;
    /// returns when the last one did.
    async fn first_configs(&mut self, clients: std::ops::Range<usize>) -> Instant {
        let mut missing: HashSet<(usize, String)> =
            clients.clone().flat_map(|c| TYPE_URLS.iter().map(move |t| (c, t.to_string()))).collect();
        let mut last = Instant::now();
        while !missing.is_empty() {
            let what = format!("{} first responses missing", missing.len());
            if let Event::Response { client, type_url, .. } = self.next(&what).await
                && missing.remove(&(client, type_url))
            {
                last = Instant::now();
            }
        }
        last
    }

    fn take_bytes(&mut self) -> u64 {
        std::mem::take(&mut self.bytes)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(sorted: &[Duration], p: usize) -> Duration {
    let i = ((sorted.len().saturating_sub(1)) * p).div_ceil(100);
    sorted.get(i.min(sorted.len().saturating_sub(1))).copied().unwrap_or_default()
}

/// Registers gateway Dataplanes `from..to` at the zone and gets their
/// tokens (from the global), [`SETUP_CLIENTS`] at a time.
async fn register(zone: &Zone, from: usize, to: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    // Replicas of one gateway, each at its own address (as pods would be).
    let names: Vec<(String, String)> =
        (from..to).map(|i| (format!("gw-{i}"), format!("127.1.{}.{}", i / 250, i % 250 + 1))).collect();
    for chunk in names.chunks(SETUP_CLIENTS) {
        let jobs = chunk.iter().map(|(name, address)| async move {
            let dp = json!({"type": "Dataplane", "mesh": "default", "name": name,
                "networking": {"address": address, "gateway": {"type": "BUILTIN", "tags": {"kuma.io/service": "gw-svc"}}}});
            zone.api().apply(&dp).await;
            let token = zone.dataplane_token(name).await.expect("a federated zone has a token issuer");
            (name.clone(), token)
        });
        out.extend(futures::future::join_all(jobs).await);
    }
    out
}

/// A route of gateway `gw` for path prefix `/<marker>` to service `web`.
fn route(marker: &str) -> serde_json::Value {
    json!({
        "type": "MeshGatewayRoute", "mesh": "default", "name": marker,
        "selectors": [{"match": {"kuma.io/service": "gw-svc"}}],
        "conf": {"http": {"rules": [{
            "matches": [{"path": {"match": "PREFIX", "value": format!("/{marker}")}}],
            "backends": [{"destination": {"kuma.io/service": "web"}}]
        }]}}
    })
}

/// Adds a row, and prints it at once (a later failure keeps what was measured).
fn push(rows: &mut Vec<Row>, row: Row) {
    eprintln!(
        "measured: {} = {:.2} {} (baseline {}: {:.2} {})",
        row.what, row.figure, row.unit, row.baseline_what, row.baseline, row.baseline_unit
    );
    rows.push(row);
}

/// Runs the ADS rows; returns them, each with its same-run baseline.
pub async fn run(cfg: AdsConfig) -> Vec<Row> {
    crate::init_crypto();
    let dir = TestDir::new("scale-ads");
    let global = Global::start(&dir, "global", GlobalSpec { plaintext_kds: true, ..GlobalSpec::on(cfg.backend) }).await;
    global.api().apply(&crate::resources::mesh("default")).await;
    global.api().apply(&crate::resources::gateway("gw", 8080)).await;
    // The zone's default connection cap (its share of RLIMIT_NOFILE,
    // `meridian_runtime::fdlimit`) admits the `connect` gateways.
    let zone = Zone::connect_with(&dir, &global, "zone-1", &["--xds-plaintext"]).await;
    zone.api().wait_for("/meshes/default/meshgateways/gw", "holds the MeshGateway", |_| true).await;
    zone.api().apply(&crate::resources::dataplane("web-1", "127.0.0.2", "web")).await;
    let pid = zone.process().pid();
    let g = cfg.gateways.max(1);
    let n = cfg.connect.max(g);
    let registered = register(&zone, 0, n).await;
    let mut rows = Vec::new();

    // Baselines: a trivial REST GET at the zone, the zone's CPU per GET.
    let mut gets = Vec::with_capacity(BASELINE_SAMPLES);
    let cpu0 = cpu(pid);
    for _ in 0..BASELINE_SAMPLES {
        let t = Instant::now();
        zone.api().get("/meshes/default/dataplanes/web-1").await;
        gets.push(t.elapsed());
    }
    let cpu_per_get = cpu(pid).saturating_sub(cpu0) / BASELINE_SAMPLES as u32;
    gets.sort();
    let rest = pct(&gets, 50);

    // One gateway alone: its time to first config (the connect baseline).
    let mut alone = Clients::new();
    let t = Instant::now();
    alone.spawn(&zone, 0, &registered[0].0, &registered[0].1);
    let one = alone.first_configs(0..1).await - t;
    let first_bytes = alone.take_bytes();
    drop(alone);

    // G gateways: memory per gateway.
    let rss0 = rss(pid);
    let mut clients = Clients::new();
    for (i, (name, token)) in registered.iter().take(g).enumerate() {
        clients.spawn(&zone, i, name, token);
    }
    clients.first_configs(0..g).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_gateway = rss(pid).saturating_sub(rss0) as f64 / g as f64;
    clients.take_bytes();
    push(
        &mut rows,
        Row {
            what: format!("zone memory (RSS) per connected gateway, over {g}"),
            figure: per_gateway / 1024.0,
            unit: "KiB",
            baseline_what: "one gateway's first configuration on the wire".into(),
            baseline: first_bytes as f64 / 1024.0,
            baseline_unit: "KiB",
        },
    );

    // Route PUTs at the global → every gateway holds the route.
    let mut latencies = Vec::with_capacity(cfg.updates);
    let mut wire = 0u64;
    let cpu0 = cpu(pid);
    let route_body = route("upd-0").to_string().len() as f64;
    for u in 0..cfg.updates {
        let marker = format!("upd-{u}");
        clients.markers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(marker.clone());
        clients.take_bytes();
        let t = Instant::now();
        global.api().apply(&route(&marker)).await;
        let mut missing: HashSet<usize> = (0..g).collect();
        let mut last = t;
        while !missing.is_empty() {
            let what = format!("route {marker}: {} gateways without it", missing.len());
            if let Event::Marker { client, marker: m, at } = clients.next(&what).await
                && m == u
                && missing.remove(&client)
            {
                last = last.max(at);
            }
        }
        latencies.push(last - t);
        // Let the last ACKs and any straggling response land in this update's bytes.
        tokio::time::sleep(Duration::from_millis(100)).await;
        while let Ok(e) = clients.events.try_recv() {
            if let Event::Response { bytes, .. } = e {
                clients.bytes += bytes as u64;
            }
        }
        wire += clients.take_bytes();
    }
    let cpu_per_update = cpu(pid).saturating_sub(cpu0) / cfg.updates.max(1) as u32;
    latencies.sort();
    let updates = cfg.updates;
    push(
        &mut rows,
        Row {
            what: format!(
                "route PUT at the global → all {g} gateways of the zone have it (ADS): p50 ({updates} updates)"
            ),
            figure: ms(pct(&latencies, 50)),
            unit: "ms",
            baseline_what: "zone REST GET p50".into(),
            baseline: ms(rest),
            baseline_unit: "ms",
        },
    );
    push(
        &mut rows,
        Row {
            what: format!("route PUT at the global → all {g} gateways of the zone have it (ADS): p99"),
            figure: ms(pct(&latencies, 99)),
            unit: "ms",
            baseline_what: "zone REST GET p50".into(),
            baseline: ms(rest),
            baseline_unit: "ms",
        },
    );
    push(
        &mut rows,
        Row {
            what: format!("zone CPU per route update, {g} gateways connected"),
            figure: ms(cpu_per_update),
            unit: "ms",
            baseline_what: "zone CPU per REST GET".into(),
            baseline: ms(cpu_per_get),
            baseline_unit: "ms",
        },
    );
    push(
        &mut rows,
        Row {
            what: format!("xDS bytes received by all {g} gateways per route update"),
            figure: wire as f64 / updates.max(1) as f64,
            unit: "B",
            baseline_what: "the route's JSON body".into(),
            baseline: route_body,
            baseline_unit: "B",
        },
    );
    drop(clients);

    // N gateways connecting at once → each has its first configuration.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut all = Clients::new();
    let t = Instant::now();
    for (i, (name, token)) in registered.iter().enumerate() {
        all.spawn(&zone, i, name, token);
    }
    let ttfc = all.first_configs(0..n).await - t;
    push(
        &mut rows,
        Row {
            what: format!("{n} gateways connect at once → all have their first configuration"),
            figure: ms(ttfc),
            unit: "ms",
            baseline_what: "one gateway connecting alone".into(),
            baseline: ms(one),
            baseline_unit: "ms",
        },
    );
    drop(all);
    let _ = zone.sigterm().await;
    let _ = global.sigterm().await;
    rows
}
