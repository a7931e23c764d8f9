//! The global's KDS server: `kuma.mesh.v1alpha1.KDSSyncService` over gRPC.
//!
//! ```text
//!   store ──watch──▶ cache (per type) ──▶ GlobalToZoneSync: DeltaSender per type ──▶ zone
//!   store ◀─ apply_batch ◀─ ZoneToGlobalSync: DeltaReceiver per type ◀── zone responses
//! ```
//!
//! Every call is authenticated with the zone's token ([`meridian_tokens`]); the
//! zone's identity is the token's, never the self-asserted `client-id` alone.

pub mod cache;
pub mod envoy_admin;
pub mod held;
pub mod insight;
pub mod metrics;
mod stream;

use std::{collections::BTreeMap, future::Future, time::Duration};

use meridian_core::{
    Manager,
    origin::{LABEL_ORIGIN, ORIGIN_GLOBAL},
};
use meridian_runtime::CancellationToken;
use meridian_store::StoreError;
use meridian_sync_proto::{
    ResourceType, Spec,
    kds::{
        MD_AUTHORIZATION, MD_CLIENT_ID, MD_KDS_VERSION, MD_MAX_MESSAGE_BYTES, MD_VERSION, agreed_max_message_bytes,
        check_zone_name,
    },
    pb::{
        self,
        kds::{
            ClustersRequest, ClustersResponse, StatsRequest, StatsResponse, XdsConfigRequest, XdsConfigResponse,
            ZoneHealthCheckRequest, ZoneHealthCheckResponse,
            global_kds_service_server::{GlobalKdsService, GlobalKdsServiceServer},
            kds_sync_service_server::{KdsSyncService, KdsSyncServiceServer},
        },
    },
};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tonic::{
    Request, Response, Status, Streaming, codec::CompressionEncoding, metadata::MetadataMap, transport::Server,
};

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};

use meridian_tokens::Tokens as ZoneTokens;

/// Default cap on one KDS message; larger updates are split across
/// responses, and a single resource above its budget
/// ([`meridian_sync_proto::kds::resource_budget`]) is refused when written.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = meridian_sync_proto::kds::DEFAULT_MAX_MESSAGE_BYTES;
/// HTTP/2 PING interval and timeout: a peer that stops answering is dropped
/// within their sum (10 s), inside the 15 s users are promised.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// The interval a zone is told to call `GlobalKDSService.HealthCheck` at:
/// Kuma's default `multizone.global.kds.zoneHealthCheck.pollInterval` (10 s).
/// Meridian's liveness does not depend on these calls (the streams' HTTP/2
/// PINGs and ZoneInsight refreshes do that); they are answered so that a
/// Kuma zone's health checker is satisfied.
pub const ZONE_HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// Message compressions accepted on every KDS call, and used for what the
/// global sends when the zone advertises it (`grpc-accept-encoding`). Kuma
/// zones compress every KDS message with gzip (`grpc.UseCompressor(gzip)`).
const COMPRESSIONS: [CompressionEncoding; 2] = [CompressionEncoding::Gzip, CompressionEncoding::Zstd];
/// Responses queued per stream before the sender waits for the zone to read.
const OUTBOUND_QUEUE: usize = 16;

/// Shared state of every KDS stream of this global instance.
#[derive(Clone)]
pub struct KdsServer {
    pub(crate) manager: Manager,
    pub(crate) cache: cache::Cache,
    pub(crate) tokens: ZoneTokens,
    pub(crate) insights: insight::Insights,
    pub(crate) max_message_bytes: usize,
    pub(crate) metrics: metrics::KdsMetrics,
    /// The zones' open inspection streams (config dump, stats, clusters).
    pub envoy_admin: envoy_admin::EnvoyAdmin,
    /// What each connected zone holds of what was sent to it.
    pub(crate) held: held::Held,
    /// The process's shutdown token: every stream ends when it is cancelled.
    pub(crate) shutdown: CancellationToken,
    /// The stream tasks, so that shutdown waits until each has closed its
    /// ZoneInsight subscription (with a disconnect time).
    streams: TaskTracker,
}

impl KdsServer {
    pub fn new(
        manager: Manager,
        cache: cache::Cache,
        tokens: ZoneTokens,
        instance_id: String,
        max_message_bytes: usize,
        metrics: metrics::KdsMetrics,
        shutdown: CancellationToken,
    ) -> KdsServer {
        KdsServer {
            insights: insight::Insights::new(manager.clone(), instance_id),
            manager,
            cache,
            tokens,
            max_message_bytes,
            metrics,
            envoy_admin: envoy_admin::EnvoyAdmin::default(),
            held: held::Held::default(),
            shutdown,
            streams: TaskTracker::new(),
        }
    }

    /// What each zone connected to this instance holds, per resource
    /// (propagation status reads it).
    pub fn held(&self) -> held::Held {
        self.held.clone()
    }

    /// Checks who is calling. Returns the zone name, the zone's version, the
    /// token it presented (re-checked while the stream lives) and the
    /// message cap agreed with it (the smaller of ours and the one it
    /// advertised in `x-meridian-max-message-bytes`).
    async fn authenticate(&self, md: &MetadataMap) -> Result<Caller, Status> {
        let text = |k: &str| md.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let zone = text(MD_CLIENT_ID);
        if let Err(reason) = check_zone_name(&zone) {
            tracing::warn!(zone = %zone, reason = %reason, "KDS call refused: bad client-id");
            return Err(Status::invalid_argument(format!("client-id: {reason}")));
        }
        let kds_version = text(MD_KDS_VERSION);
        if !kds_version.is_empty() && kds_version != meridian_sync_proto::kds::KDS_VERSION {
            return Err(Status::failed_precondition(format!(
                "unsupported kds-version {kds_version:?}; this global speaks v3"
            )));
        }
        // Subscribed before the checks: a revocation or `enabled: false`
        // committed after them is seen by the stream's re-check.
        let access = self.cache.access_changes();
        let auth = text(MD_AUTHORIZATION);
        let token = auth.strip_prefix("Bearer ").or_else(|| auth.strip_prefix("bearer ")).unwrap_or(&auth);
        let token = (!token.is_empty()).then_some(token);
        let expires = match self.tokens.verify_zone(token, &zone).await {
            Ok(claims) => claims.exp,
            Err(e) => {
                tracing::warn!(zone = %zone, reason = %e, "KDS call refused: zone token");
                return Err(Status::unauthenticated(e.to_string()));
            }
        };
        self.ensure_zone_enabled(&zone).await?;
        let token = token.unwrap_or_default().to_string();
        let advertised = md.get(MD_MAX_MESSAGE_BYTES).and_then(|v| v.to_str().ok());
        let max_message_bytes = agreed_max_message_bytes(self.max_message_bytes, advertised);
        Ok(Caller { zone, version: text(MD_VERSION), token, expires, access, max_message_bytes })
    }

    /// A stream's response, carrying this global's cap in its headers.
    fn response<T>(&self, body: T) -> Response<T> {
        let mut r = Response::new(body);
        if let Ok(v) = self.max_message_bytes.to_string().parse() {
            r.metadata_mut().insert(MD_MAX_MESSAGE_BYTES, v);
        }
        r
    }

    /// Creates the Zone record on the first authenticated connect; refuses a
    /// zone whose record says `enabled: false`.
    async fn ensure_zone_enabled(&self, zone: &str) -> Result<(), Status> {
        let store_err = |e: meridian_core::ManagerError| Status::unavailable(format!("store: {e}"));
        match self.manager.get(ResourceType::Zone, "", zone).await.map_err(store_err)? {
            Some(e) => {
                if let Spec::Zone(z) = &e.resource.spec
                    && z.enabled.as_ref().is_some_and(|b| !b.value)
                {
                    tracing::warn!(zone, "KDS call refused: zone is disabled");
                    return Err(Status::permission_denied(format!(
                        "zone {zone:?} is disabled on the global (enabled: false)"
                    )));
                }
                Ok(())
            }
            None => {
                let spec = Spec::Zone(pb::system::Zone { enabled: Some(pbjson_types::BoolValue { value: true }) });
                let r = meridian_sync_proto::Resource::new("", zone, spec);
                match self.manager.store().create(Manager::encode(&r)).await {
                    Ok(_) => {
                        tracing::info!(zone, "zone registered on first connect");
                        Ok(())
                    }
                    Err(StoreError::AlreadyExists(_)) => Ok(()),
                    Err(e) => Err(Status::unavailable(format!("store: {e}"))),
                }
            }
        }
    }
}

/// An authenticated caller ([`KdsServer::authenticate`]).
pub(crate) struct Caller {
    pub(crate) zone: String,
    pub(crate) version: String,
    pub(crate) token: String,
    /// When the token expires (its `exp`, unix seconds): the streams
    /// re-check it then.
    pub(crate) expires: i64,
    /// The cache's access-change counter, taken before the token and
    /// `enabled` were checked ([`cache::Cache::access_changes`]).
    pub(crate) access: tokio::sync::watch::Receiver<u64>,
    /// Bytes; what both ends of this stream split to.
    pub(crate) max_message_bytes: usize,
}

type ResponseStream<T> = tokio_stream::wrappers::ReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl KdsSyncService for KdsServer {
    type GlobalToZoneSyncStream = ResponseStream<DeltaDiscoveryResponse>;
    type ZoneToGlobalSyncStream = ResponseStream<DeltaDiscoveryRequest>;

    async fn global_to_zone_sync(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::GlobalToZoneSyncStream>, Status> {
        let caller = self.authenticate(request.metadata()).await?;
        let connection = request.remote_addr();
        let (tx, rx) = tokio::sync::mpsc::channel(OUTBOUND_QUEUE);
        let server = self.clone();
        self.streams
            .spawn(async move { stream::global_to_zone(server, caller, connection, request.into_inner(), tx).await });
        Ok(self.response(ResponseStream::new(rx)))
    }

    async fn zone_to_global_sync(
        &self,
        request: Request<Streaming<DeltaDiscoveryResponse>>,
    ) -> Result<Response<Self::ZoneToGlobalSyncStream>, Status> {
        let Caller { zone, token, expires, access, .. } = self.authenticate(request.metadata()).await?;
        let connection = request.remote_addr();
        let (tx, rx) = tokio::sync::mpsc::channel(OUTBOUND_QUEUE);
        let server = self.clone();
        self.streams.spawn(async move {
            stream::zone_to_global(server, zone, (token, expires, access), connection, request.into_inner(), tx).await
        });
        Ok(self.response(ResponseStream::new(rx)))
    }
}

/// `kuma.mesh.v1alpha1.GlobalKDSService` (Kuma 2.14): HealthCheck answers
/// with [`ZONE_HEALTH_CHECK_INTERVAL`] to an authenticated zone; the
/// inspection streams carry the global's config dump, stats and clusters
/// requests to the zone ([`envoy_admin`]).
#[tonic::async_trait]
impl GlobalKdsService for KdsServer {
    type StreamXDSConfigsStream = ResponseStream<XdsConfigRequest>;
    type StreamStatsStream = ResponseStream<StatsRequest>;
    type StreamClustersStream = ResponseStream<ClustersRequest>;

    async fn stream_xds_configs(
        &self,
        request: Request<Streaming<XdsConfigResponse>>,
    ) -> Result<Response<Self::StreamXDSConfigsStream>, Status> {
        envoy_admin::serve_stream(self, request).await
    }

    async fn stream_stats(
        &self,
        request: Request<Streaming<StatsResponse>>,
    ) -> Result<Response<Self::StreamStatsStream>, Status> {
        envoy_admin::serve_stream(self, request).await
    }

    async fn stream_clusters(
        &self,
        request: Request<Streaming<ClustersResponse>>,
    ) -> Result<Response<Self::StreamClustersStream>, Status> {
        envoy_admin::serve_stream(self, request).await
    }

    async fn health_check(
        &self,
        request: Request<ZoneHealthCheckRequest>,
    ) -> Result<Response<ZoneHealthCheckResponse>, Status> {
        let caller = self.authenticate(request.metadata()).await?;
        tracing::debug!(zone = %caller.zone, "zone health check");
        let interval = envoy_types::pb::google::protobuf::Duration {
            seconds: ZONE_HEALTH_CHECK_INTERVAL.as_secs().try_into().unwrap_or(i64::MAX),
            nanos: 0,
        };
        Ok(Response::new(ZoneHealthCheckResponse { interval: Some(interval) }))
    }
}

/// Serves KDS on `listener` until `shutdown`, with TLS when given; then
/// waits for every stream to close its ZoneInsight subscription.
pub async fn serve(
    listener: TcpListener,
    server: KdsServer,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    limits: meridian_rest::listener::Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let max = server.max_message_bytes;
    let streams = server.streams.clone();
    streams.spawn(server.insights.clone().run(server.shutdown.clone()));
    let mut health = GlobalKdsServiceServer::new(server.clone());
    let mut svc = KdsSyncServiceServer::new(server).max_decoding_message_size(max).max_encoding_message_size(max);
    for c in COMPRESSIONS {
        svc = svc.accept_compressed(c).send_compressed(c);
        health = health.accept_compressed(c).send_compressed(c);
    }
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
    // TLS is done by the guarded listener (handshake deadline, cap), not by
    // tonic: connections reach tonic only once they have spoken.
    let router = builder.add_service(svc).add_service(health);
    match tls {
        Some(tls) => {
            let incoming = meridian_rest::listener::tls(listener, limits, "KDS", tls)?.into_stream();
            router.serve_with_incoming_shutdown(incoming, shutdown).await?;
        }
        None => {
            let incoming = meridian_rest::listener::plain(listener, limits, "KDS")?.into_stream();
            router.serve_with_incoming_shutdown(incoming, shutdown).await?;
        }
    }
    streams.close();
    streams.wait().await;
    Ok(())
}

/// Labels a global-origin resource carries on the wire.
pub(crate) fn wire_labels(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut l = labels.clone();
    l.entry(LABEL_ORIGIN.to_string()).or_insert_with(|| ORIGIN_GLOBAL.to_string());
    l
}
