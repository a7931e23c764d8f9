//! The zone's KDS client: one gRPC connection to the global carrying both
//! sync streams, redialled with exponential backoff and jitter.
//!
//! ```text
//!   global ══GlobalToZoneSync══▶ receive_loop (DeltaReceiver per type) ──apply──▶ zone store
//!   global ◀═ZoneToGlobalSync═══ send_loop (DeltaSender per type) ◀── UpwardSource ◀─watch── zone store
//! ```
//!
//! Both streams are thin adapters over [`meridian_sync_proto::driver`]; the
//! upward source keeps the zone's own resources per type in memory
//! (persistent maps of encoded envelopes), updated from the store's change
//! feed, so a burst of writes costs the keys it touched, not a re-read.
//!
//! Both directions resume: the zone's first requests carry the versions it
//! already holds, and the global's carry what it holds of this zone, so a
//! reconnect moves only what changed.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::Context;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use futures::{FutureExt, StreamExt};
use meridian_core::{
    Manager,
    origin::{LABEL_ORIGIN, LABEL_ZONE, ORIGIN_GLOBAL, ORIGIN_ZONE},
};
use meridian_store::{Change, ChangeKind, ListQuery, StoreError};
use meridian_sync_proto::{
    ResourceType,
    delta::{DeltaReceiver, Desired, DesiredSet, SendStats, SharedSet},
    driver::{
        Apply, Ended, Incoming, Observer, RecvWire, SendConfig, SendWire, Source,
        metrics::{GLOBAL_TO_ZONE as DOWN, SyncMetrics, ZONE_TO_GLOBAL as UP},
        receive_loop, send_loop,
    },
    envoy_admin::{AdminRequestMessage, AdminResponseMessage},
    kds::{self, GLOBAL_TO_ZONE, ZONE_TO_GLOBAL},
    pb::kds::{global_kds_service_client::GlobalKdsServiceClient, kds_sync_service_client::KdsSyncServiceClient},
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status, Streaming, codec::CompressionEncoding, transport::Channel};

use crate::{
    global_address::{AddressError, Target, Targets},
    inspect::Inspector,
};

/// Reconnect backoff bounds; the delay doubles per failure, with ±50 % jitter.
/// The cap keeps a zone that was cut off (a partition, a global restart)
/// at most 3 s from redialling once the global is reachable again, so it
/// converges within 5 s of the network's return (issue 14).
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A session that lasted this long resets the backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);
/// Messages queued towards the global per stream.
const OUTBOUND_QUEUE: usize = 16;

/// How to reach the global.
#[derive(Debug, Clone)]
pub struct KdsClientConfig {
    pub zone: String,
    /// `grpcs://host:port` (TLS) or `grpc://host:port` (plaintext,
    /// explicit), one or more, tried in turn ([`crate::global_address`]).
    pub global_addresses: Vec<String>,
    pub token: String,
    /// CA (PEM) that signed the global's KDS certificate.
    pub global_ca: Option<PathBuf>,
    pub max_message_bytes: usize,
}

/// The addresses to dial, checked (scheme, shape, CA): call at start so a
/// bad configuration fails the process at once.
pub fn targets(cfg: &KdsClientConfig) -> Result<Targets, AddressError> {
    Targets::new(&cfg.global_addresses, cfg.global_ca.as_deref())
}

/// Keeps the zone synced with the global until `stop` resolves.
/// Sync figures go to `metrics` (directions `global_to_zone`, `zone_to_global`).
/// The global's inspection requests are answered by `inspector`.
pub async fn run(
    cfg: KdsClientConfig,
    manager: Manager,
    metrics: SyncMetrics,
    inspector: Inspector,
    stop: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let mut targets = targets(&cfg)?;
    let cancel = CancellationToken::new();
    let mut stop = std::pin::pin!(async {
        stop.await;
        cancel.cancel();
    });
    let mut backoff = BACKOFF_MIN;
    loop {
        let started = tokio::time::Instant::now();
        // One failed, or ended: the next address (the same one when it is
        // the only one).
        let outcome = match targets.next().await {
            Ok(target) => {
                let global = target.label.clone();
                let r = tokio::select! {
                    r = session(&cfg, &target, &manager, &metrics, &inspector, &cancel) => r,
                    () = &mut stop => return Ok(()),
                };
                Some((global, r))
            }
            Err(e) => {
                tracing::warn!(error = %e, "no global address to dial; retrying");
                None
            }
        };
        match outcome {
            None => {}
            Some((global, Ok(()))) => tracing::warn!(%global, "global ended the sync stream; reconnecting"),
            Some((global, Err(e))) => {
                let denied = e
                    .downcast_ref::<Status>()
                    .is_some_and(|s| matches!(s.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied));
                if denied {
                    tracing::error!(%global, error = %format!("{e:#}"), "the global refused this zone; check --token-file and that the zone is enabled");
                } else {
                    tracing::warn!(%global, error = %format!("{e:#}"), "sync with the global failed; reconnecting");
                }
            }
        }
        if started.elapsed() > HEALTHY_SESSION {
            backoff = BACKOFF_MIN;
        }
        let jitter = 0.5 + rand::random::<f64>();
        let delay = backoff.mul_f64(jitter);
        tokio::select! {
            () = tokio::time::sleep(delay) => {},
            () = &mut stop => return Ok(()),
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn with_metadata<T>(cfg: &KdsClientConfig, msg: T) -> anyhow::Result<Request<T>> {
    let mut req = Request::new(msg);
    let md = req.metadata_mut();
    md.insert(kds::MD_CLIENT_ID, cfg.zone.parse().context("zone name is not valid metadata")?);
    md.insert(kds::MD_KDS_VERSION, kds::KDS_VERSION.parse()?);
    md.insert(kds::MD_FEATURES, "".parse()?);
    md.insert(kds::MD_VERSION, env!("CARGO_PKG_VERSION").parse()?);
    md.insert(kds::MD_MAX_MESSAGE_BYTES, cfg.max_message_bytes.to_string().parse()?);
    md.insert(
        kds::MD_AUTHORIZATION,
        format!("Bearer {}", cfg.token.trim()).parse().context("the zone token is not valid metadata")?,
    );
    Ok(req)
}

/// One connection: both streams until either ends.
async fn session(
    cfg: &KdsClientConfig,
    target: &Target,
    manager: &Manager,
    metrics: &SyncMetrics,
    inspector: &Inspector,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let channel = target.endpoint.connect().await.with_context(|| format!("cannot connect to {}", target.label))?;
    let admin_channel = channel.clone();
    // gzip out, as a Kuma zone sends (every global Meridian talks to, and
    // Kuma's, accepts it); gzip or zstd in, whichever the global picks.
    let client = KdsSyncServiceClient::new(channel)
        .max_decoding_message_size(cfg.max_message_bytes)
        .max_encoding_message_size(cfg.max_message_bytes)
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd);
    tracing::info!(global = %target.label, zone = %cfg.zone, "connected to the global");
    tokio::select! {
        r = downstream(cfg, client.clone(), manager, metrics, cancel) => r,
        r = upstream(cfg, client, manager, metrics, cancel) => r,
        never = envoy_admin(cfg, admin_channel, inspector) => match never {},
    }
}

/// Opens the three inspection streams of `GlobalKDSService` on the
/// session's connection and answers the global's requests on them with
/// `inspector` ([`meridian_sync_proto::envoy_admin`]). A global that does
/// not serve them (UNIMPLEMENTED: an older Meridian) only costs a debug
/// line; never returns, so it never ends the session.
async fn envoy_admin(cfg: &KdsClientConfig, channel: Channel, inspector: &Inspector) -> std::convert::Infallible {
    let client = GlobalKdsServiceClient::new(channel)
        .max_decoding_message_size(cfg.max_message_bytes)
        .max_encoding_message_size(cfg.max_message_bytes)
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd);
    let cap = kds::resource_budget(cfg.max_message_bytes);
    let (xds_tx, xds_rx) = mpsc::channel(OUTBOUND_QUEUE);
    let (stats_tx, stats_rx) = mpsc::channel(OUTBOUND_QUEUE);
    let (clusters_tx, clusters_rx) = mpsc::channel(OUTBOUND_QUEUE);
    let xds = async {
        let opened = match with_metadata(cfg, ReceiverStream::new(xds_rx)) {
            Ok(req) => client.clone().stream_xds_configs(req).await.map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        answer_requests(opened, xds_tx, inspector, cap).await;
    };
    let stats = async {
        let opened = match with_metadata(cfg, ReceiverStream::new(stats_rx)) {
            Ok(req) => client.clone().stream_stats(req).await.map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        answer_requests(opened, stats_tx, inspector, cap).await;
    };
    let clusters = async {
        let opened = match with_metadata(cfg, ReceiverStream::new(clusters_rx)) {
            Ok(req) => client.clone().stream_clusters(req).await.map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        answer_requests(opened, clusters_tx, inspector, cap).await;
    };
    tokio::join!(xds, stats, clusters);
    std::future::pending().await
}

/// Answers each request of one inspection stream in turn (each takes at
/// most the admin timeout), until the global closes it. An answer larger
/// than `cap` bytes is replaced by an error saying so.
async fn answer_requests<Req: AdminRequestMessage, Resp: AdminResponseMessage>(
    opened: anyhow::Result<tonic::Response<Streaming<Req>>>,
    tx: mpsc::Sender<Resp>,
    inspector: &Inspector,
    cap: usize,
) {
    let kind = Req::KIND.segment();
    let mut inbound = match opened {
        Ok(r) => r.into_inner(),
        Err(e) => {
            tracing::debug!(kind, error = %format!("{e:#}"), "the global does not take inspection answers on this stream");
            return;
        }
    };
    while let Ok(Some(req)) = inbound.message().await {
        let request = req.into_request();
        tracing::debug!(kind, mesh = %request.mesh, name = %request.name, "inspection asked by the global");
        let answer = inspector.answer(&request).await.and_then(|body| {
            if body.len() > cap {
                Err(format!("the {kind} answer is {} bytes, over the KDS message budget of {cap} bytes", body.len()))
            } else {
                Ok(body)
            }
        });
        if tx.send(Resp::from_answer(request.request_id, answer)).await.is_err() {
            return;
        }
    }
}

use meridian_core::origin::is_local_to as is_local;

/// What the zone holds of `ty`, by wire name: what came from the global
/// (`from_global`) or what was authored here.
async fn local_versions(
    manager: &Manager,
    zone: &str,
    ty: ResourceType,
    from_global: bool,
) -> anyhow::Result<BTreeMap<String, String>> {
    let page = manager.list_stored(&ListQuery { type_name: ty.name().to_string(), ..ListQuery::default() }).await?;
    Ok(page
        .items
        .into_iter()
        .filter(|r| is_local(&r.labels, zone) != from_global)
        .map(|r| (kds::wire_name(&r.key.mesh, &r.key.name), r.version))
        .collect())
}

/// A client-side gRPC stream: messages in from the global, ours out
/// through the channel the call reads.
struct ClientWire<In, Out> {
    inbound: Streaming<In>,
    tx: mpsc::Sender<Out>,
    /// The cap agreed with the global, in bytes: a response over it (one
    /// resource larger than the budget) is not sent; the error names the
    /// type and resources and the session ends.
    cap: usize,
}

impl RecvWire for ClientWire<DeltaDiscoveryResponse, DeltaDiscoveryRequest> {
    type Error = Status;
    async fn recv(&mut self) -> Result<Option<DeltaDiscoveryResponse>, Status> {
        self.inbound.message().await
    }
    async fn send(&mut self, request: DeltaDiscoveryRequest) -> bool {
        self.tx.send(request).await.is_ok()
    }
}

impl SendWire for ClientWire<DeltaDiscoveryRequest, DeltaDiscoveryResponse> {
    type Error = Status;
    async fn recv(&mut self) -> Result<Option<Incoming>, Status> {
        Ok(self.inbound.message().await?.map(|request| Incoming { request, force: false }))
    }
    async fn send(&mut self, response: DeltaDiscoveryResponse, _full: Option<DesiredSet>) -> bool {
        let encoded = prost::Message::encoded_len(&response);
        if encoded > self.cap {
            let names: Vec<&str> = response.resources.iter().map(|r| r.name.as_str()).collect();
            let reason = kds::oversized_message(&response.type_url, &names, encoded, self.cap);
            tracing::error!(%reason, "cannot send to the global");
            return false;
        }
        self.tx.send(response).await.is_ok()
    }
}

/// Logs NACKs: the zone's own of what the global sent (downstream), or the
/// global's of what this zone sent (upstream).
struct NackLog(&'static str);

impl Observer for NackLog {
    fn nacked(&mut self, type_url: &str, _: &str, reason: &str, _: &SendStats) {
        if self.0 == DOWN {
            tracing::warn!(type_url, %reason, "rejected resources from the global");
        } else {
            tracing::warn!(type_url, %reason, "the global rejected resources from this zone");
        }
    }
}

/// Writes what the global sent through [`FromGlobal`]; observes
/// `kds_resources_sync` (the store write) and, when the global stamped the
/// response, `meridian_kds_write_to_apply_seconds`.
struct ZoneApply<'a>(&'a Manager, &'a SyncMetrics);

impl Apply for ZoneApply<'_> {
    type Error = StoreError;
    async fn apply(
        &mut self,
        type_url: &str,
        receiver: &mut DeltaReceiver,
        response: &DeltaDiscoveryResponse,
    ) -> Result<DeltaDiscoveryRequest, StoreError> {
        // Receivers exist only for GLOBAL_TO_ZONE types, so the name parses.
        let ty = ResourceType::from_name(type_url).unwrap_or(ResourceType::Mesh);
        let started = std::time::Instant::now();
        let reply = meridian_core::received::apply(self.0, ty, receiver, response, &FromGlobal).await?;
        self.1.resources_sync.observe(started.elapsed().as_secs_f64());
        if reply.error_detail.is_none()
            && let Some(written) = kds::parse_write_stamp(&response.system_version_info)
        {
            let ms = meridian_core::liveness::now_millis().saturating_sub(written).max(0);
            self.1.write_to_apply.observe(ms as f64 / 1000.0);
        }
        Ok(reply)
    }
}

/// Turns how a loop ended into the session's outcome.
fn outcome(ended: Ended) -> anyhow::Result<()> {
    match ended {
        Ended::Cancelled | Ended::PeerClosed => Ok(()),
        Ended::Wire(e) => match e.downcast::<Status>() {
            Ok(status) => Err((*status).into()),
            Err(e) => Err(anyhow::anyhow!(e)),
        },
        other => Err(anyhow::anyhow!(other)),
    }
}

/// Global → zone: subscribe with what we hold, apply what arrives.
async fn downstream(
    cfg: &KdsClientConfig,
    mut client: KdsSyncServiceClient<Channel>,
    manager: &Manager,
    metrics: &SyncMetrics,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(OUTBOUND_QUEUE);
    let mut receivers = BTreeMap::new();
    for ty in GLOBAL_TO_ZONE {
        let held = local_versions(manager, &cfg.zone, *ty, true).await?;
        receivers.insert(ty.name().to_string(), DeltaReceiver::new(ty.name(), held));
    }
    let inbound = client.global_to_zone_sync(with_metadata(cfg, ReceiverStream::new(rx))?).await?.into_inner();
    let mut wire = ClientWire { inbound, tx, cap: cfg.max_message_bytes };
    let mut observer = (metrics.observer(DOWN), NackLog(DOWN));
    let ended =
        receive_loop(&mut receivers, None, &mut wire, &mut ZoneApply(manager, metrics), &mut observer, cancel).await;
    if let Ended::Apply(e) = &ended {
        anyhow::bail!("cannot store resources from the global: {e}");
    }
    outcome(ended)
}

/// Global resources keep their names in the zone, labelled with their origin.
struct FromGlobal;

impl meridian_core::received::Placement for FromGlobal {
    fn key(&self, ty: ResourceType, mesh: &str, name: &str) -> meridian_store::ResourceKey {
        Manager::key(ty, mesh, name)
    }

    fn labels(&self, w: &kds::WireResource) -> BTreeMap<String, String> {
        let mut labels = w.resource.meta.labels.clone();
        labels.entry(LABEL_ORIGIN.to_string()).or_insert_with(|| ORIGIN_GLOBAL.to_string());
        labels
    }
}

/// The store's change feed, boxed so that a resync can start a new one.
type Feed = futures::stream::BoxStream<'static, Result<Change, StoreError>>;

/// The zone's own resources per type, as the global should hold them:
/// loaded once, then kept current from the store's change feed
/// (configuration) and its status wake-ups (DataplaneInsight, which lives
/// outside the feed). If compaction overtakes the feed, every type is
/// listed again from a new feed (a resync: the sender diffs against what
/// the global holds, so only real differences travel).
struct UpwardSource {
    zone: String,
    manager: Manager,
    sets: BTreeMap<String, SharedSet>,
    feed: Feed,
    status: tokio::sync::watch::Receiver<u64>,
    /// Status changed: the status types are to be listed again.
    pending_status: bool,
    /// The feed was compacted past: everything is to be listed again.
    pending_resync: bool,
}

/// Why the upward source stopped.
#[derive(Debug, thiserror::Error)]
enum UpwardError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("the store's change feed ended")]
    FeedEnded,
}

impl UpwardSource {
    /// Follows the store from now on and lists the zone's own resources.
    async fn load(zone: &str, manager: &Manager) -> Result<Self, StoreError> {
        let mut status = manager.store().status_changes();
        status.borrow_and_update();
        let mut src = UpwardSource {
            zone: zone.to_string(),
            manager: manager.clone(),
            sets: BTreeMap::new(),
            feed: futures::stream::empty().boxed(),
            status,
            pending_status: false,
            pending_resync: false,
        };
        src.resync().await?;
        Ok(src)
    }

    /// A new feed from the current revision, then every type listed again
    /// (the feed starts before the listing: nothing written meanwhile is missed).
    async fn resync(&mut self) -> Result<(), StoreError> {
        let from = self.manager.store().current_revision().await?;
        self.feed = self.manager.store().watch(from).boxed();
        for ty in ZONE_TO_GLOBAL {
            self.relist(*ty).await?;
        }
        Ok(())
    }

    /// Lists `ty` again (from the status table for insights) and keeps
    /// every unchanged entry's encoded envelope.
    async fn relist(&mut self, ty: ResourceType) -> Result<(), StoreError> {
        let q = ListQuery { type_name: ty.name().to_string(), ..ListQuery::default() };
        let page = self.manager.list_stored(&q).await?;
        let listed: std::collections::BTreeSet<String> =
            page.items.iter().map(|r| kds::wire_name(&r.key.mesh, &r.key.name)).collect();
        let set = self.sets.entry(ty.name().to_string()).or_default();
        let gone: Vec<String> = set.keys().filter(|k| !listed.contains(*k)).cloned().collect();
        for k in gone {
            set.remove(&k);
        }
        for r in &page.items {
            self.upsert(ty, r);
        }
        Ok(())
    }

    /// Records one stored resource (or drops it when it is not the zone's own).
    fn upsert(&mut self, ty: ResourceType, r: &meridian_store::StoredResource) {
        let wire = kds::wire_name(&r.key.mesh, &r.key.name);
        let Some(set) = self.sets.get_mut(ty.name()) else { return };
        if !is_local(&r.labels, &self.zone) {
            set.remove(&wire);
            return;
        }
        if set.get(&wire).is_some_and(|d| d.version == r.version) {
            return;
        }
        let mut labels = r.labels.clone();
        labels.insert(LABEL_ORIGIN.to_string(), ORIGIN_ZONE.to_string());
        labels.insert(LABEL_ZONE.to_string(), self.zone.clone());
        let any = kds::to_any(ty, &r.key.mesh, &r.key.name, &labels, &r.version, r.spec.clone());
        set.insert(wire, Desired { version: r.version.clone(), resource: any });
    }

    fn apply(&mut self, c: &Change) -> Option<String> {
        let ty = ResourceType::from_name(&c.resource.key.type_name).filter(|t| ZONE_TO_GLOBAL.contains(t))?;
        match c.kind {
            ChangeKind::Upsert => self.upsert(ty, &c.resource),
            ChangeKind::Delete => {
                if let Some(set) = self.sets.get_mut(ty.name()) {
                    set.remove(&kds::wire_name(&c.resource.key.mesh, &c.resource.key.name));
                }
            }
        }
        Some(ty.name().to_string())
    }
}

impl Source for UpwardSource {
    type Set = SharedSet;
    type Error = UpwardError;

    fn serves(&self, type_url: &str) -> bool {
        self.sets.contains_key(type_url)
    }

    fn desired(&mut self, type_url: &str) -> SharedSet {
        self.sets.get(type_url).cloned().unwrap_or_default()
    }

    fn changed_keys(&self, old: &SharedSet, new: &SharedSet) -> Option<Vec<String>> {
        Some(meridian_sync_proto::delta::shared_diff(old, new))
    }

    /// Cancel-safe (the driver races it against the global's requests):
    /// work that awaits (a relist, a resync) is recorded first and redone
    /// by the next call if this one is dropped half-way.
    async fn changed(&mut self) -> Result<Vec<String>, UpwardError> {
        loop {
            if self.pending_resync {
                self.resync().await?;
                self.pending_resync = false;
                self.pending_status = false;
                return Ok(ZONE_TO_GLOBAL.iter().map(|t| t.name().to_string()).collect());
            }
            if self.pending_status {
                let mut types = Vec::new();
                for ty in ZONE_TO_GLOBAL.iter().filter(|t| Manager::is_status(**t)) {
                    self.relist(*ty).await?;
                    types.push(ty.name().to_string());
                }
                self.pending_status = false;
                return Ok(types);
            }
            tokio::select! {
                item = self.feed.next() => {
                    let mut items = vec![item.ok_or(UpwardError::FeedEnded)?];
                    // Take everything already queued: one push per burst, not per write.
                    while let Some(Some(item)) = self.feed.next().now_or_never() {
                        items.push(item);
                    }
                    let mut types: Vec<String> = Vec::new();
                    for item in items {
                        match item {
                            Ok(c) => {
                                if let Some(t) = self.apply(&c)
                                    && !types.contains(&t)
                                {
                                    types.push(t);
                                }
                            }
                            Err(StoreError::Compacted { .. }) => {
                                tracing::warn!("store change log compacted past the zone-to-global feed; resyncing");
                                self.pending_resync = true;
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                    if !self.pending_resync {
                        return Ok(types);
                    }
                }
                changed = self.status.changed() => {
                    changed.map_err(|_| UpwardError::FeedEnded)?;
                    self.status.borrow_and_update();
                    self.pending_status = true;
                }
            }
        }
    }
}

/// Zone → global: the global subscribes (with what it holds of this zone);
/// the zone answers from its in-memory view and pushes every change.
async fn upstream(
    cfg: &KdsClientConfig,
    mut client: KdsSyncServiceClient<Channel>,
    manager: &Manager,
    metrics: &SyncMetrics,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryResponse>(OUTBOUND_QUEUE);
    let mut source = UpwardSource::load(&cfg.zone, manager).await?;
    let response = client.zone_to_global_sync(with_metadata(cfg, ReceiverStream::new(rx))?).await?;
    // Split to the smaller of our cap and the one the global advertised.
    let advertised = response.metadata().get(kds::MD_MAX_MESSAGE_BYTES).and_then(|v| v.to_str().ok());
    let cap = kds::agreed_max_message_bytes(cfg.max_message_bytes, advertised);
    let inbound = response.into_inner();
    let config = SendConfig {
        nonce_prefix: format!("{}-{:08x}", cfg.zone, rand::random::<u32>()),
        max_bytes: kds::resource_budget(cap),
        max_resource_bytes: Some(kds::resource_budget(cap)),
    };
    let mut wire = ClientWire { inbound, tx, cap };
    let mut observer = (metrics.sender(UP), NackLog(UP));
    outcome(send_loop(&mut source, &mut wire, &mut observer, &config, cancel).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sending side of a stream over channels, as the global's requests
    /// and the zone's responses would travel.
    struct ChanWire {
        rx: mpsc::Receiver<DeltaDiscoveryRequest>,
        tx: mpsc::Sender<DeltaDiscoveryResponse>,
    }

    impl SendWire for ChanWire {
        type Error = Status;
        async fn recv(&mut self) -> Result<Option<Incoming>, Status> {
            Ok(self.rx.recv().await.map(|request| Incoming { request, force: false }))
        }
        async fn send(&mut self, response: DeltaDiscoveryResponse, _: Option<DesiredSet>) -> bool {
            self.tx.send(response).await.is_ok()
        }
    }

    fn dataplane(name: &str) -> meridian_store::WriteResource {
        let v = serde_json::json!({
            "type": "Dataplane", "mesh": "default", "name": name,
            "networking": {"address": "10.0.0.1", "inbound": [{"port": 9000, "tags": {"kuma.io/service": "web"}}]}
        });
        Manager::encode(&meridian_sync_proto::universal::from_value(v).expect("parses"))
    }

    /// Zone → global, the zone as sender: a type it does not send gets an
    /// empty response and the stream stays up; Dataplanes are served from
    /// the in-memory view, and a later write travels from the change feed.
    #[tokio::test]
    async fn upward_sender_answers_unserved_types_empty_and_follows_the_store() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = meridian_store::Store::connect(&format!("sqlite:{}", dir.path().join("z.db").display()))
            .await
            .expect("store");
        let manager = Manager::new(store.clone(), meridian_core::Role::Zone { federated: true });
        store.create(dataplane("dp-1")).await.expect("write");
        let mut source = UpwardSource::load("zone-1", &manager).await.expect("load");
        let (req_tx, req_rx) = mpsc::channel(8);
        let (resp_tx, mut resp_rx) = mpsc::channel(8);
        let cancel = CancellationToken::new();
        let task = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let mut wire = ChanWire { rx: req_rx, tx: resp_tx };
                let config = SendConfig { nonce_prefix: "z".into(), max_bytes: 1 << 20, max_resource_bytes: None };
                send_loop(&mut source, &mut wire, &mut (), &config, &cancel).await
            })
        };
        let req = |ty: &str| DeltaDiscoveryRequest { type_url: ty.into(), ..Default::default() };
        req_tx.send(req("CircuitBreaker")).await.expect("send");
        let empty = resp_rx.recv().await.expect("empty response");
        assert_eq!(empty.type_url, "CircuitBreaker");
        assert!(empty.resources.is_empty() && !empty.nonce.is_empty());
        req_tx.send(req("Dataplane")).await.expect("send");
        let dps = resp_rx.recv().await.expect("Dataplanes");
        let names: Vec<&str> = dps.resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["dp-1.default"]);
        store.create(dataplane("dp-2")).await.expect("write");
        let diff = resp_rx.recv().await.expect("the change");
        let names: Vec<&str> = diff.resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["dp-2.default"], "only what changed travels");
        cancel.cancel();
        assert!(matches!(task.await.expect("join"), Ended::Cancelled));
    }
}
