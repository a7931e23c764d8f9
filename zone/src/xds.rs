//! The zone's xDS server: Envoy's Aggregated Discovery Service over gRPC,
//! delta (`DeltaAggregatedResources`) and state of the world
//! (`StreamAggregatedResources`), both driven by the shared delta engine
//! ([`meridian_sync_proto::delta`]) from the same desired sets: clusters,
//! endpoints, SDS secrets (TLS certificates, never inlined in listeners),
//! listeners and routes.
//!
//! Served over TLS (ALPN `h2`) unless the zone runs with `--xds-plaintext`:
//! the certificate is the operator's or one generated into the data
//! directory with its CA ([`meridian_runtime::tls`]); connections go through
//! the guarded accept loop (cap, handshake and first-bytes deadlines).
//!
//! ```text
//!   store ──watch──▶ cache (MeshSnapshot per mesh, generated config per connected Dataplane)
//!                         │ watch::Receiver per Dataplane (latest state only)
//!                         ▼
//!   Envoy ◀══ ADS ══ stream task (Session: one DeltaSender per type) ──▶ DataplaneInsight writer
//! ```
//!
//! A Dataplane is named by its Envoy node id, `<mesh>.<name>` (the
//! incumbent's format; mesh names hold no dot, so the first dot splits).
//! An unknown Dataplane gets a `NOT_FOUND` status saying how to register it,
//! and no configuration. Pushes are event-driven: a store change regenerates
//! the Dataplanes it touches, and only resources whose hash changed travel.

pub mod auth;
pub mod cache;
pub mod foreign_cas;
pub mod identities;
pub mod insight;
pub mod metrics;
pub mod stream;

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use envoy_types::pb::envoy::{
    config::core::v3::Node,
    service::discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
        aggregated_discovery_service_server::{AggregatedDiscoveryService, AggregatedDiscoveryServiceServer},
    },
};
use meridian_store::{Store, StoreError};
use meridian_sync_proto::driver::{
    Ended, SendConfig, SendWire,
    metrics::{SyncMetrics, XDS},
    send_loop,
};
use meridian_sync_proto::universal;
use tokio::{net::TcpListener, sync::mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Request, Response, Status, Streaming};

use cache::{Cache, ProxyId};
use insight::Insights;

/// Responses queued per stream: a peer that stops reading stalls only its
/// own stream task, which then stops reading the cache (latest state wins).
const RESPONSE_QUEUE: usize = 8;
/// How long a new stream waits for the cache to catch up with the store.
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(5);
/// Largest request accepted from Envoy (NACK details can be large).
const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;
/// Largest response: a SotW response carries a whole type.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// What the xDS server needs to know about its process.
#[derive(Clone)]
pub struct XdsConfig {
    /// Zone name (labels DataplaneInsights).
    pub zone: String,
    /// This control plane instance (recorded in subscriptions).
    pub instance_id: String,
    /// Sync figures (direction `xds`), in the zone's registry.
    pub metrics: SyncMetrics,
    /// Dataplane tokens required on every stream (`--xds-auth
    /// dataplane-token`, the default); `None`: `--xds-auth none`.
    pub auth: Option<auth::XdsAuth>,
    /// `xds_streams_active`, `xds_generation`.
    pub figures: metrics::XdsFigures,
    /// The generated configuration per connected Dataplane, shared with
    /// the inspect endpoints (`Cache::new(zone)`).
    pub cache: Cache,
}

#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The listener's address could not be read.
    #[error("xDS listener: {0}")]
    Listener(#[from] std::io::Error),
}

/// Why an Envoy node id does not name a Dataplane.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeIdError {
    #[error("node id {id:?}: the node id must be <mesh>.<dataplane name> (see `meridian-zone dataplane bootstrap`)")]
    NoDot { id: String },
    #[error(
        "node id {id:?}: {reason}; the node id must be <mesh>.<dataplane name> (see `meridian-zone dataplane bootstrap`)"
    )]
    Invalid { id: String, reason: String },
}

/// Parses a node id `<mesh>.<name>` (the incumbent's format; mesh names
/// hold no dot, so the first dot splits); `.<name>` (empty mesh) is
/// ZoneIngress `name`, as the incumbent's ingress proxy ids.
pub fn parse_node_id(id: &str) -> Result<ProxyId, NodeIdError> {
    let Some((mesh, name)) = id.split_once('.') else {
        return Err(NodeIdError::NoDot { id: id.to_string() });
    };
    let invalid = |e: String| NodeIdError::Invalid { id: id.to_string(), reason: e };
    if !mesh.is_empty() {
        universal::check_mesh_name(mesh).map_err(|e| invalid(e.to_string()))?;
    }
    universal::check_name(name).map_err(|e| invalid(e.to_string()))?;
    Ok(ProxyId { mesh: mesh.to_string(), name: name.to_string() })
}

/// The node id of a Dataplane (`<mesh>.<name>`), or of a ZoneIngress
/// (`mesh` empty: `.<name>`).
pub fn node_id(mesh: &str, name: &str) -> String {
    format!("{mesh}.{name}")
}

/// Shared by every stream.
struct Shared {
    cache: Cache,
    store: Store,
    config: XdsConfig,
    /// Cancelled on shutdown: every stream loop ends on it.
    stop: CancellationToken,
    /// Stream tasks: shutdown waits for them, so every subscription is
    /// closed with a disconnect time before the insight writer's last batch.
    tasks: TaskTracker,
    /// The zone's one DataplaneInsight / ZoneIngressInsight writer.
    insights: Insights,
    streams: AtomicU64,
}

#[derive(Clone)]
struct Ads(Arc<Shared>);

/// Serves ADS on `listener` until `shutdown` is cancelled, then waits for
/// every stream to close its DataplaneInsight subscription; loads the cache
/// first and follows the store's change feed meanwhile.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: meridian_rest::listener::Limits,
    store: Store,
    config: XdsConfig,
    stop: CancellationToken,
) -> Result<(), XdsError> {
    let cache = config.cache.clone();
    let revision = cache.load(&store).await?;
    let tasks = TaskTracker::new();
    let insights = Insights::new(store.clone(), config.zone.clone(), cache.identities().clone());
    // Ends after the streams: their last subscription states are written.
    let insights_done = CancellationToken::new();
    let writer = tokio::spawn(insights.clone().run(insights_done.clone()));
    let shared = Arc::new(Shared {
        cache: cache.clone(),
        store: store.clone(),
        config,
        stop: stop.clone(),
        tasks: tasks.clone(),
        insights,
        streams: AtomicU64::new(0),
    });
    let service = AggregatedDiscoveryServiceServer::new(Ads(shared))
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_RESPONSE_BYTES);
    // Cap, handshake and first-bytes deadlines: a connection that never
    // finishes its TLS handshake or never sends its HTTP/2 preface is
    // closed (meridian_rest::listener).
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .add_service(service);
    let shutdown = stop.clone().cancelled_owned();
    let server = async move {
        match tls {
            Some(tls) => {
                let incoming = meridian_rest::listener::tls(listener, limits, "xDS", tls)?.into_stream();
                router.serve_with_incoming_shutdown(incoming, shutdown).await?
            }
            None => {
                let incoming = meridian_rest::listener::plain(listener, limits, "xDS")?.into_stream();
                router.serve_with_incoming_shutdown(incoming, shutdown).await?
            }
        }
        Ok::<(), XdsError>(())
    };
    let served = tokio::select! {
        r = server => r,
        // The change feed only ends on a permanent store failure.
        r = cache.follow(store, revision) => r.map_err(XdsError::from),
        // Returns only on `stop`: identity certificates re-issued when due.
        _ = cache.rotate_until(stop.clone()) => Ok(()),
        // Likewise: the steps of mTLS switches, as proxies confirm each phase.
        _ = cache.step_tls_until(stop.clone()) => Ok(()),
    };
    // A failed server or feed ends the process (critical task): no wait.
    served?;
    tasks.close();
    tasks.wait().await;
    insights_done.cancel();
    if let Err(e) = writer.await {
        tracing::warn!(error = %e, "the proxy insight writer failed");
    }
    Ok(())
}

/// One wire format of ADS: how to read the node and become a [`SendWire`].
trait Wire: Send + 'static {
    type Req: Send + 'static;
    type Resp: Send + 'static;
    type Driver: SendWire;
    fn node(req: &Self::Req) -> Option<&Node>;
    fn wire(
        first: Self::Req,
        inbound: Streaming<Self::Req>,
        tx: mpsc::Sender<Result<Self::Resp, Status>>,
    ) -> Self::Driver;
}

struct Delta;
impl Wire for Delta {
    type Req = DeltaDiscoveryRequest;
    type Resp = DeltaDiscoveryResponse;
    type Driver = stream::DeltaWire;
    fn node(req: &Self::Req) -> Option<&Node> {
        req.node.as_ref()
    }
    fn wire(
        first: Self::Req,
        inbound: Streaming<Self::Req>,
        tx: mpsc::Sender<Result<Self::Resp, Status>>,
    ) -> Self::Driver {
        stream::DeltaWire { first: Some(first), inbound, tx }
    }
}

struct Sotw;
impl Wire for Sotw {
    type Req = DiscoveryRequest;
    type Resp = DiscoveryResponse;
    type Driver = stream::SotwWire;
    fn node(req: &Self::Req) -> Option<&Node> {
        req.node.as_ref()
    }
    fn wire(
        first: Self::Req,
        inbound: Streaming<Self::Req>,
        tx: mpsc::Sender<Result<Self::Resp, Status>>,
    ) -> Self::Driver {
        stream::SotwWire { first: Some(first), inbound, tx, translator: Default::default() }
    }
}

type RespStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = RespStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = RespStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let token = auth::presented(request.metadata());
        Ok(Response::new(self.start::<Sotw>(request.into_inner(), token)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let token = auth::presented(request.metadata());
        Ok(Response::new(self.start::<Delta>(request.into_inner(), token)))
    }
}

impl Ads {
    fn start<W: Wire>(&self, inbound: Streaming<W::Req>, token: Option<String>) -> RespStream<W::Resp>
    where
        Streaming<W::Req>: Send,
    {
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
        let shared = Arc::clone(&self.0);
        self.0.tasks.spawn(run::<W>(shared, inbound, tx, token));
        Box::pin(ReceiverStream::new(rx))
    }
}

async fn run<W: Wire>(
    shared: Arc<Shared>,
    mut inbound: Streaming<W::Req>,
    tx: mpsc::Sender<Result<W::Resp, Status>>,
    token: Option<String>,
) {
    let first = match inbound.message().await {
        Ok(Some(r)) => r,
        _ => return,
    };
    let node = W::node(&first).cloned();
    let id = match node.as_ref().map(|n| parse_node_id(&n.id)) {
        Some(Ok(id)) => id,
        Some(Err(e)) => {
            let _ = tx.send(Err(Status::invalid_argument(e.to_string()))).await;
            return;
        }
        None => {
            let _ = tx.send(Err(Status::invalid_argument("the first request of a stream must carry the node"))).await;
            return;
        }
    };
    let admitted = match &shared.config.auth {
        Some(auth) => match auth.admit(token, &id).await {
            Ok(a) => Some(a),
            Err(status) => {
                tracing::warn!(dataplane = %id, code = ?status.code(), reason = %status.message(), "refusing Envoy: Dataplane token");
                let _ = tx.send(Err(status)).await;
                return;
            }
        },
        None => None,
    };
    // Read your writes: a Dataplane registered just before its Envoy
    // connects must be known to the cache first.
    match shared.store.current_revision().await {
        Ok(rev) => {
            if !shared.cache.caught_up(rev, CATCH_UP).await {
                tracing::warn!(dataplane = %id, revision = rev, "xDS cache is behind the store; serving what it has");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the store revision"),
    }
    let mut sub = shared.cache.subscribe(&id);
    let state = sub.rx.borrow_and_update().clone();
    if let Err(e) = &state.config {
        tracing::warn!(dataplane = %id, "refusing Envoy: {e}");
        let _ = tx.send(Err(Status::not_found(e.to_string()))).await;
        return;
    }
    let _active = metrics::ActiveStream::open(&shared.config.figures.streams_active);
    let seq = shared.streams.fetch_add(1, Ordering::Relaxed);
    let prefix = format!("{}-{seq}", shared.config.instance_id);
    tracing::info!(dataplane = %id, stream = %prefix, "Envoy connected");
    // A Dataplane's DataplaneInsight, a ZoneIngress's ZoneIngressInsight.
    let handle = Some(shared.insights.handle(id.clone()));
    let held = Arc::new(std::sync::atomic::AtomicU64::new(state.phase));
    let mut source = stream::ProxySource { rx: sub.rx.clone(), state, held: held.clone() };
    let mut wire = W::wire(first, inbound, tx.clone());
    let phases = stream::PhaseReport::new(shared.cache.clone(), id.clone(), held);
    let mut observer = (
        shared.config.metrics.sender(XDS),
        stream::InsightObserver::new(&prefix, &shared.config.instance_id, node.as_ref(), handle)
            .with_warnings(sub.rx.clone())
            .with_phase_report(phases),
    );
    // A SotW response carries the whole set: no byte budget there.
    let max_bytes = if <W::Driver as SendWire>::FULL_STATE { usize::MAX } else { stream::MAX_RESPONSE_BYTES };
    let config = SendConfig { nonce_prefix: prefix, max_bytes, max_resource_bytes: None };
    // A token revoked, expired or no longer matching cuts the stream.
    let refused = async {
        match admitted {
            Some(a) => a.until_refused().await,
            None => std::future::pending().await,
        }
    };
    let ended = tokio::select! {
        ended = send_loop(&mut source, &mut wire, &mut observer, &config, &shared.stop) => Some(ended),
        status = refused => {
            tracing::warn!(dataplane = %id, reason = %status.message(), "Dataplane token no longer valid; closing the stream");
            let _ = tx.send(Err(status)).await;
            None
        }
    };
    match ended {
        Some(Ended::Source(e)) => {
            let _ = tx.send(Err(Status::not_found(e.to_string()))).await;
        }
        Some(Ended::Wire(e)) => tracing::debug!(dataplane = %id, error = %e, "stream ended"),
        _ => {}
    }
    drop(sub);
    observer.1.close();
    tracing::info!(dataplane = %id, "Envoy disconnected");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_split_on_the_first_dot() {
        assert_eq!(parse_node_id("default.gw.v1"), Ok(ProxyId { mesh: "default".into(), name: "gw.v1".into() }));
        assert_eq!(parse_node_id("nodot"), Err(NodeIdError::NoDot { id: "nodot".into() }));
        assert!(parse_node_id("Bad_Mesh.x").is_err());
        assert_eq!(node_id("default", "gw"), "default.gw");
        assert_eq!(parse_node_id(".ingress-1"), Ok(ProxyId { mesh: String::new(), name: "ingress-1".into() }));
        assert!(parse_node_id(".").is_err());
    }
}
