//! The zone's xDS server: Envoy's Aggregated Discovery Service over gRPC,
//! delta (`DeltaAggregatedResources`) and state of the world
//! (`StreamAggregatedResources`), both driven by the shared delta engine
//! ([`meridian_sync_proto::delta`]) from the same desired sets.
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

pub mod cache;
pub mod insight;
pub mod stream;

use std::{
    future::Future,
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
use meridian_sync_proto::universal;
use tokio::{net::TcpListener, sync::mpsc, sync::watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use cache::{Cache, ProxyId};
use insight::InsightHandle;
use stream::Session;

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
#[derive(Debug, Clone)]
pub struct XdsConfig {
    /// Zone name (labels DataplaneInsights).
    pub zone: String,
    /// This control plane instance (recorded in subscriptions).
    pub instance_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Parses a node id `<mesh>.<name>`.
pub fn parse_node_id(id: &str) -> Result<ProxyId, String> {
    let usage = "the node id must be <mesh>.<dataplane name> (see `meridian-zone dataplane bootstrap`)";
    let Some((mesh, name)) = id.split_once('.') else {
        return Err(format!("node id {id:?}: {usage}"));
    };
    universal::check_mesh_name(mesh).map_err(|e| format!("node id {id:?}: {e}; {usage}"))?;
    universal::check_name(name).map_err(|e| format!("node id {id:?}: {e}; {usage}"))?;
    Ok(ProxyId { mesh: mesh.to_string(), name: name.to_string() })
}

/// The node id of a Dataplane.
pub fn node_id(mesh: &str, name: &str) -> String {
    format!("{mesh}.{name}")
}

/// Shared by every stream.
struct Shared {
    cache: Cache,
    store: Store,
    config: XdsConfig,
    stop: watch::Receiver<bool>,
    streams: AtomicU64,
}

#[derive(Clone)]
struct Ads(Arc<Shared>);

/// Serves ADS on `listener` until `shutdown` resolves; loads the cache
/// first and follows the store's change feed meanwhile.
pub async fn serve(
    listener: TcpListener,
    store: Store,
    config: XdsConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), XdsError> {
    let cache = Cache::default();
    let revision = cache.load(&store).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let shared = Arc::new(Shared {
        cache: cache.clone(),
        store: store.clone(),
        config,
        stop: stop_rx.clone(),
        streams: AtomicU64::new(0),
    });
    let service = AggregatedDiscoveryServiceServer::new(Ads(shared))
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_RESPONSE_BYTES);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut stop = stop_rx.clone();
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|s| *s).await;
        });
    let mut stop = stop_rx;
    tokio::select! {
        r = server => r?,
        r = cache.follow(store, revision) => {
            // The change feed only ends on a permanent store failure.
            r?;
        }
        () = stopped(&mut stop) => {}
    }
    Ok(())
}

/// Resolves once the stop flag is set (the guard never outlives it).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// One wire format of ADS: how to read the node and feed a [`Session`].
trait Wire: Send + 'static {
    type Req: Send + 'static;
    type Resp: Send + 'static;
    fn node(req: &Self::Req) -> Option<&Node>;
    fn handle(session: &mut Session, req: &Self::Req) -> Vec<Self::Resp>;
    fn on_change(session: &mut Session) -> Vec<Self::Resp>;
}

struct Delta;
impl Wire for Delta {
    type Req = DeltaDiscoveryRequest;
    type Resp = DeltaDiscoveryResponse;
    fn node(req: &Self::Req) -> Option<&Node> {
        req.node.as_ref()
    }
    fn handle(session: &mut Session, req: &Self::Req) -> Vec<Self::Resp> {
        session.delta_request(req)
    }
    fn on_change(session: &mut Session) -> Vec<Self::Resp> {
        session.delta_change()
    }
}

struct Sotw;
impl Wire for Sotw {
    type Req = DiscoveryRequest;
    type Resp = DiscoveryResponse;
    fn node(req: &Self::Req) -> Option<&Node> {
        req.node.as_ref()
    }
    fn handle(session: &mut Session, req: &Self::Req) -> Vec<Self::Resp> {
        session.sotw_request(req)
    }
    fn on_change(session: &mut Session) -> Vec<Self::Resp> {
        session.sotw_change()
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
        Ok(Response::new(self.start::<Sotw>(request.into_inner())))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Ok(Response::new(self.start::<Delta>(request.into_inner())))
    }
}

impl Ads {
    fn start<W: Wire>(&self, inbound: Streaming<W::Req>) -> RespStream<W::Resp>
    where
        Streaming<W::Req>: Send,
    {
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
        let shared = Arc::clone(&self.0);
        tokio::spawn(run::<W>(shared, inbound, tx));
        Box::pin(ReceiverStream::new(rx))
    }
}

/// Sends responses in order; `false` once the peer is gone.
async fn send_all<T>(tx: &mpsc::Sender<Result<T, Status>>, items: Vec<T>) -> bool {
    for item in items {
        if tx.send(Ok(item)).await.is_err() {
            return false;
        }
    }
    true
}

async fn run<W: Wire>(shared: Arc<Shared>, mut inbound: Streaming<W::Req>, tx: mpsc::Sender<Result<W::Resp, Status>>) {
    let first = match inbound.message().await {
        Ok(Some(r)) => r,
        _ => return,
    };
    let node = W::node(&first).cloned();
    let id = match node.as_ref().map(|n| parse_node_id(&n.id)) {
        Some(Ok(id)) => id,
        Some(Err(e)) => {
            let _ = tx.send(Err(Status::invalid_argument(e))).await;
            return;
        }
        None => {
            let _ = tx.send(Err(Status::invalid_argument("the first request of a stream must carry the node"))).await;
            return;
        }
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
        let _ = tx.send(Err(Status::not_found(e.clone()))).await;
        return;
    }
    let seq = shared.streams.fetch_add(1, Ordering::Relaxed);
    let prefix = format!("{}-{seq}", shared.config.instance_id);
    tracing::info!(dataplane = %id, stream = %prefix, "Envoy connected");
    let insight = InsightHandle::spawn(shared.store.clone(), shared.config.zone.clone(), id.clone());
    let mut session = Session::new(state, prefix, &shared.config.instance_id, node.as_ref());
    let mut stop = shared.stop.clone();
    let mut open = send_all(&tx, W::handle(&mut session, &first)).await;
    while open {
        if session.refresh_record() {
            insight.update(session.record.clone());
        }
        tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(req)) => open = send_all(&tx, W::handle(&mut session, &req)).await,
                Ok(None) => open = false,
                Err(status) => {
                    tracing::debug!(dataplane = %id, %status, "stream ended");
                    open = false;
                }
            },
            changed = sub.rx.changed() => {
                if changed.is_err() {
                    break;
                }
                let state = sub.rx.borrow_and_update().clone();
                if let Err(e) = &state.config {
                    let _ = tx.send(Err(Status::not_found(e.clone()))).await;
                    break;
                }
                session.state = state;
                open = send_all(&tx, W::on_change(&mut session)).await;
            }
            () = stopped(&mut stop) => break,
        }
    }
    session.refresh_record();
    session.record.disconnect_time = Some(insight::now());
    insight.update(session.record.clone());
    tracing::info!(dataplane = %id, "Envoy disconnected");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_split_on_the_first_dot() {
        assert_eq!(parse_node_id("default.gw.v1"), Ok(ProxyId { mesh: "default".into(), name: "gw.v1".into() }));
        assert!(parse_node_id("nodot").is_err());
        assert!(parse_node_id("Bad_Mesh.x").is_err());
        assert_eq!(node_id("default", "gw"), "default.gw");
    }
}
