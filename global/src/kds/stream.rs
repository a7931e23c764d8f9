//! One zone's two KDS streams: thin adapters over the shared loops of
//! [`meridian_sync_proto::driver`].
//!
//! - global → zone: [`send_loop`] with a [`ZoneSource`] over the cache's
//!   per-type snapshots, the zone's gRPC stream as wire, and metrics plus
//!   the ZoneInsight session as observer (the session is written when its
//!   counters change, [`super::insight`]); beside it, [`watch_allowed`]
//!   re-checks the zone's token and `enabled` when a Zone or GlobalSecret
//!   changes in the store and when the token expires (never by polling).
//! - zone → global: [`receive_loop`] applying through [`FromZone`]; the
//!   same watch runs beside it, and the check runs again before each
//!   response is stored, so a revoked zone is cut off both ways and nothing
//!   it sends after the revocation is stored.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use futures::{FutureExt, StreamExt, stream::SelectAll};
use meridian_core::{
    Manager,
    origin::{LABEL_DISPLAY_NAME, LABEL_ORIGIN, LABEL_ZONE, ORIGIN_ZONE},
};
use meridian_store::ListQuery;
use meridian_sync_proto::{
    ResourceType,
    delta::{DeltaReceiver, SendStats, SharedSet, shared_diff},
    driver::{
        Apply, Ended, Incoming, Observer, RecvWire, SendConfig, SendWire, Source, lock,
        metrics::{GLOBAL_TO_ZONE as DOWN, ZONE_TO_GLOBAL as UP},
        receive_loop, send_loop,
    },
    kds::{self, GLOBAL_TO_ZONE, ZONE_TO_GLOBAL},
};
use tokio::sync::{mpsc::Sender, watch};
use tokio_stream::wrappers::WatchStream;
use tonic::{Status, Streaming};

use super::{
    KdsServer,
    cache::TypeSnapshot,
    held::{HeldObserver, TrackedWire},
    insight::{Counters, Insights, Session, Upward},
};

/// The cache's snapshot receivers, per KDS type name.
type Snapshots = BTreeMap<String, watch::Receiver<Arc<TypeSnapshot>>>;

type Changes = SelectAll<futures::stream::BoxStream<'static, String>>;

/// What zone `zone` should hold, per type: the cache's shared snapshots
/// (everything authored at the global, plus other zones' ZoneIngresses;
/// never the zone's own resources). No re-encoding, no copy per change.
struct ZoneSource {
    zone: String,
    snapshots: BTreeMap<String, watch::Receiver<Arc<TypeSnapshot>>>,
    changes: Changes,
}

impl ZoneSource {
    fn new(server: &KdsServer, zone: &str) -> ZoneSource {
        let mut snapshots = BTreeMap::new();
        let mut changes = SelectAll::new();
        for ty in GLOBAL_TO_ZONE {
            let rx = server.cache.subscribe(*ty);
            let name = ty.name().to_string();
            changes.push(WatchStream::from_changes(rx.clone()).map(move |_| name.clone()).boxed());
            snapshots.insert(ty.name().to_string(), rx);
        }
        ZoneSource { zone: zone.to_string(), snapshots, changes }
    }
}

impl Source for ZoneSource {
    type Set = SharedSet;
    type Error = Infallible;

    fn serves(&self, type_url: &str) -> bool {
        self.snapshots.contains_key(type_url)
    }

    fn desired(&mut self, type_url: &str) -> SharedSet {
        self.snapshots.get(type_url).map(|rx| rx.borrow().for_zone(&self.zone)).unwrap_or_default()
    }

    fn changed_keys(&self, old: &SharedSet, new: &SharedSet) -> Option<Vec<String>> {
        Some(shared_diff(old, new))
    }

    /// The types changed since the last call. A burst is coalesced without
    /// any added delay: every change already signalled is taken with the
    /// first, and each type's watch holds only its latest snapshot, so a
    /// stream busy sending sees one change per type for the whole burst.
    async fn changed(&mut self) -> Result<Vec<String>, Infallible> {
        let Some(first) = self.changes.next().await else { return std::future::pending().await };
        let mut types = vec![first];
        while let Some(Some(ty)) = self.changes.next().now_or_never() {
            if !types.contains(&ty) {
                types.push(ty);
            }
        }
        Ok(types)
    }
}

/// A server-side gRPC stream: requests in, responses out through the
/// channel tonic reads. "Closed" covers both the zone ending its side and
/// the zone no longer reading ours.
struct GrpcWire<In, Out> {
    inbound: Streaming<In>,
    tx: Sender<Result<Out, Status>>,
    /// The cap agreed with the zone, in bytes: a response over it (one
    /// resource larger than the budget) ends the stream with an error
    /// naming the type and resources instead of going out.
    cap: usize,
    /// Global → zone: the cache's snapshots per type, whose write times
    /// stamp each response ([`kds::write_stamp`]), and when the stream
    /// opened (unix ms: writes older than the stream are not stamped, so an
    /// initial sync does not count as a slow delivery).
    stamps: Option<(Snapshots, i64)>,
}

impl<In: Send + 'static, Out: Send + 'static> GrpcWire<In, Out> {
    async fn next(&mut self) -> Result<Option<In>, Status> {
        tokio::select! {
            m = self.inbound.message() => m,
            () = self.tx.closed() => Ok(None),
        }
    }
}

impl SendWire for GrpcWire<DeltaDiscoveryRequest, DeltaDiscoveryResponse> {
    type Error = Status;
    async fn recv(&mut self) -> Result<Option<Incoming>, Status> {
        Ok(self.next().await?.map(|request| Incoming { request, force: false }))
    }
    async fn send(
        &mut self,
        mut response: DeltaDiscoveryResponse,
        _full: Option<meridian_sync_proto::delta::DesiredSet>,
    ) -> bool {
        if let Some((snapshots, opened)) = &self.stamps
            && let Some(rx) = snapshots.get(&response.type_url)
            && let Some(written) = rx.borrow().newest_write(response.resources.iter().map(|r| r.name.as_str()))
            && written >= *opened
        {
            response.system_version_info = kds::write_stamp(written);
        }
        let encoded = prost::Message::encoded_len(&response);
        if encoded > self.cap {
            let names: Vec<&str> = response.resources.iter().map(|r| r.name.as_str()).collect();
            let reason = kds::oversized_message(&response.type_url, &names, encoded, self.cap);
            tracing::error!(%reason, "cannot send to the zone");
            let _ = self.tx.send(Err(Status::resource_exhausted(reason))).await;
            return false;
        }
        self.tx.send(Ok(response)).await.is_ok()
    }
}

impl RecvWire for GrpcWire<DeltaDiscoveryResponse, DeltaDiscoveryRequest> {
    type Error = Status;
    async fn recv(&mut self) -> Result<Option<DeltaDiscoveryResponse>, Status> {
        self.next().await
    }
    async fn send(&mut self, request: DeltaDiscoveryRequest) -> bool {
        self.tx.send(Ok(request)).await.is_ok()
    }
}

/// Keeps the zone's ZoneInsight session counters current.
struct SessionObserver {
    zone: String,
    session: Arc<Mutex<Session>>,
}

impl SessionObserver {
    fn record(&self, type_url: &str, stats: &SendStats) {
        let mut s = lock(&self.session);
        match s.stats.get_mut(type_url) {
            Some(c) => c.set(stats),
            None => {
                s.stats.insert(type_url.to_string(), Counters::from(stats));
            }
        }
        s.dirty = true;
    }
}

impl Observer for SessionObserver {
    fn subscribed(&mut self, type_url: &str, held: usize) {
        tracing::debug!(zone = %self.zone, type_url, held, "zone subscribed");
    }
    fn sent(&mut self, type_url: &str, _: &DeltaDiscoveryResponse, stats: &SendStats) {
        self.record(type_url, stats);
    }
    fn acked(&mut self, type_url: &str, _: &str, _: Option<std::time::Duration>, stats: &SendStats) {
        self.record(type_url, stats);
    }
    fn nacked(&mut self, type_url: &str, nonce: &str, reason: &str, stats: &SendStats) {
        tracing::warn!(zone = %self.zone, type_url, %nonce, %reason, "zone rejected resources");
        self.record(type_url, stats);
    }
}

/// Global → zone: the zone subscribes, the global answers with what changed.
#[allow(clippy::too_many_arguments)]
pub(super) async fn global_to_zone(
    server: KdsServer,
    caller: super::Caller,
    connection: Option<SocketAddr>,
    inbound: Streaming<DeltaDiscoveryRequest>,
    tx: Sender<Result<DeltaDiscoveryResponse, Status>>,
) {
    let super::Caller { zone, version: zone_version, token, expires, access, max_message_bytes } = caller;
    let session = server.insights.open(&zone, &zone_version, connection).await;
    server.metrics.zones_connected.inc();
    tracing::info!(zone = %zone, "zone connected: global-to-zone stream open");
    let config = SendConfig {
        nonce_prefix: format!("{:08x}", rand::random::<u32>()),
        max_bytes: kds::resource_budget(max_message_bytes),
        // A resource no message to this zone can carry is withheld and
        // reported, not sent to end the stream (and again on every reconnect).
        max_resource_bytes: Some(kds::resource_budget(max_message_bytes)),
    };
    tracing::debug!(zone = %zone, max_message_bytes, "message cap agreed with the zone");
    let mut source = ZoneSource::new(&server, &zone);
    server.held.reset(&zone);
    let snapshots = GLOBAL_TO_ZONE.iter().map(|t| (t.name().to_string(), server.cache.subscribe(*t))).collect();
    let opened = meridian_core::liveness::now_millis();
    let mut wire = TrackedWire {
        inner: GrpcWire { inbound, tx: tx.clone(), cap: max_message_bytes, stamps: Some((snapshots, opened)) },
        zone: zone.clone(),
        held: server.held.clone(),
    };
    let mut observer = (
        (server.metrics.sync.sender(DOWN), SessionObserver { zone: zone.clone(), session: session.clone() }),
        HeldObserver::new(&zone, server.held.clone()),
    );
    let cancel = server.shutdown.child_token();
    tokio::select! {
        ended = send_loop(&mut source, &mut wire, &mut observer, &config, &cancel) => match ended {
            Ended::PeerClosed => tracing::info!(zone = %zone, "zone closed the global-to-zone stream"),
            Ended::Cancelled => tracing::info!(zone = %zone, "global stopping: closing the global-to-zone stream"),
            other => tracing::info!(zone = %zone, reason = %other, "global-to-zone stream ended"),
        },
        status = watch_allowed(&server, &zone, &token, expires, access) => {
            let _ = tx.send(Err(status)).await;
        }
    }
    server.metrics.zones_connected.dec();
    server.insights.close(&session).await;
    tracing::info!(zone = %zone, "zone disconnected: global-to-zone stream closed");
}

/// The check both of a zone's streams make while open ([`watch_allowed`],
/// and the zone→global one before storing a response after a relevant
/// change): the token it connected with is still valid (not revoked, not
/// expired) and the zone is still enabled.
///
/// Errors: the status to end the stream with (`UNAUTHENTICATED` naming the
/// token's fault, `PERMISSION_DENIED` for a disabled zone). A store that
/// cannot be read is not a reason to cut a zone off: the check passes.
pub(super) async fn still_allowed(server: &KdsServer, zone: &str, token: &str) -> Result<(), Status> {
    match server.tokens.verify_zone(Some(token), zone).await {
        Ok(_) | Err(meridian_tokens::TokenError::Store(_)) => {}
        Err(e) => {
            tracing::warn!(zone = %zone, reason = %e, "zone token no longer valid; closing its stream");
            return Err(Status::unauthenticated(e.to_string()));
        }
    }
    if let Err(status) = server.ensure_zone_enabled(zone).await
        && status.code() == tonic::Code::PermissionDenied
    {
        tracing::warn!(zone = %zone, "zone was disabled; closing its stream");
        return Err(status);
    }
    Ok(())
}

/// What the global already holds of `zone`'s `ty` resources, by wire name
/// (the inverse of [`FromZone::key`]: `<zone>.<name>` was `<name>` on the
/// wire; a Kuma-hashed name is stored as it came).
async fn held_from_zone(server: &KdsServer, ty: ResourceType, zone: &str) -> Result<BTreeMap<String, String>, Status> {
    let mut labels = BTreeMap::new();
    labels.insert(LABEL_ZONE.to_string(), zone.to_string());
    labels.insert(LABEL_ORIGIN.to_string(), ORIGIN_ZONE.to_string());
    let page = server
        .manager
        .list_stored(&ListQuery { type_name: ty.name().to_string(), labels, ..ListQuery::default() })
        .await
        .map_err(|e| Status::unavailable(format!("store: {e}")))?;
    Ok(page.items.into_iter().map(|r| (FromZone::wire_name(zone, &r.key), r.version)).collect())
}

/// Zone → global: roles reversed; the zone sends responses, the global ACKs
/// or NACKs each. Invalid resources are NACKed by name; the rest apply.
pub(super) async fn zone_to_global(
    server: KdsServer,
    zone: String,
    (token, expires, access): (String, i64, watch::Receiver<u64>),
    connection: Option<SocketAddr>,
    inbound: Streaming<DeltaDiscoveryResponse>,
    tx: Sender<Result<DeltaDiscoveryRequest, Status>>,
) {
    let upward = server.insights.upward(&zone, connection);
    let mut receivers = BTreeMap::new();
    for ty in ZONE_TO_GLOBAL {
        match held_from_zone(&server, *ty, &zone).await {
            Ok(held) => {
                receivers.insert(ty.name().to_string(), DeltaReceiver::new(ty.name(), held));
            }
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                server.insights.close_upward(&zone, connection);
                return;
            }
        }
    }
    tracing::info!(zone = %zone, "zone connected: zone-to-global stream open");
    let mut wire = GrpcWire { inbound, tx: tx.clone(), cap: server.max_message_bytes, stamps: None };
    let mut apply = GlobalApply { server: server.clone(), zone: zone.clone(), token: token.clone(), cut: None };
    let mut observer = (
        server.metrics.sync.observer(UP),
        UpwardObserver { zone: zone.clone(), connection, upward, insights: server.insights.clone() },
    );
    let cancel = server.shutdown.child_token();
    let ended = tokio::select! {
        ended = receive_loop(&mut receivers, None, &mut wire, &mut apply, &mut observer, &cancel) => ended,
        status = watch_allowed(&server, &zone, &token, expires, access) => {
            let _ = tx.send(Err(status)).await;
            Ended::Cancelled
        }
    };
    match ended {
        Ended::Apply(_) if apply.cut.is_some() => {
            tracing::warn!(zone = %zone, "zone no longer allowed: dropped what it sent and closed its zone-to-global stream");
            if let Some(status) = apply.cut.take() {
                let _ = tx.send(Err(status)).await;
            }
        }
        Ended::Apply(e) => {
            tracing::warn!(zone = %zone, error = %e, "cannot apply zone resources; ending the stream so the zone resends");
            let _ = tx.send(Err(Status::unavailable(format!("store: {e}")))).await;
        }
        Ended::PeerClosed => tracing::info!(zone = %zone, "zone closed the zone-to-global stream"),
        other => tracing::info!(zone = %zone, reason = %other, "zone-to-global stream ended"),
    }
    server.insights.close_upward(&zone, connection);
    tracing::info!(zone = %zone, "zone-to-global stream closed");
}

/// Runs [`still_allowed`] whenever a Zone or a GlobalSecret changes in the
/// store (the cache's [`super::cache::Cache::access_changes`], fed by the
/// change feed, so a revocation or `enabled: false` written through any
/// global replica counts) and when the token expires (`expires`, unix
/// seconds); returns the status to end the stream with once the zone is
/// no longer allowed. `access` is the receiver taken before the zone was
/// authenticated, so a change committed after that check is never missed.
/// An idle, allowed zone costs no store read.
pub(super) async fn watch_allowed(
    server: &KdsServer,
    zone: &str,
    token: &str,
    expires: i64,
    mut access: watch::Receiver<u64>,
) -> Status {
    let mut deadline = expiry_instant(expires);
    loop {
        tokio::select! {
            changed = access.changed() => {
                if changed.is_err() {
                    // The cache is gone (the process is stopping).
                    return std::future::pending().await;
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                // Past the expiry the check fails; should it not (clock
                // skew), look again a second later rather than spin.
                deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
            }
        }
        if let Err(status) = still_allowed(server, zone, token).await {
            return status;
        }
    }
}

/// The instant a token whose `exp` is `expires` (unix seconds) expires.
fn expiry_instant(expires: i64) -> tokio::time::Instant {
    let now_ms = meridian_core::liveness::now_millis();
    let left_ms = expires.saturating_mul(1000).saturating_sub(now_ms).clamp(0, 10 * 365 * 24 * 3600 * 1000);
    tokio::time::Instant::now() + std::time::Duration::from_millis(u64::try_from(left_ms).unwrap_or(0))
}

/// Why a zone's response was not applied.
#[derive(Debug, thiserror::Error)]
enum UpError {
    #[error(transparent)]
    Store(#[from] meridian_store::StoreError),
    /// The zone's token was revoked or expired, or the zone was disabled,
    /// since the stream opened: nothing more from it is stored.
    #[error("zone no longer allowed: {0}")]
    NotAllowed(String),
}

/// Writes a zone's resources through [`FromZone`], after checking (each
/// response, against the store itself, so a revocation committed a moment
/// ago counts even before the change feed delivers it) that the zone may
/// still write ([`still_allowed`]). The cost follows what the zone sends,
/// never its idle time.
struct GlobalApply {
    server: KdsServer,
    zone: String,
    token: String,
    /// Set when the check failed: the status the stream ends with.
    cut: Option<Status>,
}

impl Apply for GlobalApply {
    type Error = UpError;
    async fn apply(
        &mut self,
        type_url: &str,
        receiver: &mut DeltaReceiver,
        response: &DeltaDiscoveryResponse,
    ) -> Result<DeltaDiscoveryRequest, UpError> {
        if let Err(status) = still_allowed(&self.server, &self.zone, &self.token).await {
            let reason = status.message().to_string();
            self.cut = Some(status);
            return Err(UpError::NotAllowed(reason));
        }
        // Receivers exist only for ZONE_TO_GLOBAL types, so the name parses.
        let ty = ResourceType::from_name(type_url).unwrap_or(ResourceType::Dataplane);
        Ok(meridian_core::received::apply(&self.server.manager, ty, receiver, response, &FromZone(&self.zone)).await?)
    }
}

/// Keeps the zone-to-global counters of the zone's ZoneInsight current.
struct UpwardObserver {
    zone: String,
    /// The zone's address on this connection (finds its session).
    connection: Option<SocketAddr>,
    upward: Upward,
    /// Marks the session changed, so its insight is written.
    insights: Insights,
}

impl Observer for UpwardObserver {
    fn sent(&mut self, type_url: &str, _: &DeltaDiscoveryResponse, stats: &SendStats) {
        lock(&self.upward).insert(format!("{type_url} (zone to global)"), Counters::from(stats));
        self.insights.touch(&self.zone, self.connection);
    }
    fn acked(&mut self, type_url: &str, _: &str, _: Option<std::time::Duration>, stats: &SendStats) {
        self.sent(type_url, &DeltaDiscoveryResponse::default(), stats);
    }
    fn nacked(&mut self, type_url: &str, _: &str, reason: &str, stats: &SendStats) {
        tracing::warn!(zone = %self.zone, type_url, %reason, "rejected resources from zone");
        self.sent(type_url, &DeltaDiscoveryResponse::default(), stats);
    }
    fn unserved(&mut self, type_url: &str) {
        tracing::debug!(zone = %self.zone, type_url, "zone sent a type that does not flow up; ignored");
    }
}

/// Where a zone's resources live at the global, as the incumbent stores
/// them: a Kuma zone sends hash-suffixed names (Kuma's `hash.HashedName`,
/// unique per zone) with the user's name in `kuma.io/display-name`; those are
/// stored under the wire name and keep the zone's display name. A plain
/// name (a Meridian zone) is made unique as `<zone>.<name>`, its display
/// name the wire name. Either way the resource is labelled with its origin
/// and zone, and a hashed name held by another zone is refused (NACKed).
struct FromZone<'a>(&'a str);

impl FromZone<'_> {
    /// The wire name of a stored resource of `zone` (inverse of [`Self::key`]).
    fn wire_name(zone: &str, key: &meridian_store::ResourceKey) -> String {
        let prefix = format!("{zone}.");
        let name = key.name.strip_prefix(&prefix).unwrap_or(&key.name);
        kds::wire_name(&key.mesh, name)
    }
}

impl meridian_core::received::Placement for FromZone<'_> {
    fn key(&self, ty: ResourceType, mesh: &str, name: &str) -> meridian_store::ResourceKey {
        if kds::is_kuma_hashed_name(name) {
            Manager::key(ty, mesh, name)
        } else {
            Manager::key(ty, mesh, &format!("{}.{name}", self.0))
        }
    }

    fn labels(&self, w: &kds::WireResource) -> BTreeMap<String, String> {
        let mut labels = w.resource.meta.labels.clone();
        labels.insert(LABEL_ORIGIN.to_string(), ORIGIN_ZONE.to_string());
        labels.insert(LABEL_ZONE.to_string(), self.0.to_string());
        let given =
            labels.get(LABEL_DISPLAY_NAME).filter(|d| !d.is_empty() && kds::is_kuma_hashed_name(&w.resource.meta.name));
        if given.is_none() {
            labels.insert(LABEL_DISPLAY_NAME.to_string(), w.resource.meta.name.clone());
        }
        labels
    }

    fn needs_owner_check(&self, key: &meridian_store::ResourceKey) -> bool {
        !key.name.starts_with(&format!("{}.", self.0))
    }

    fn owns(&self, stored: &BTreeMap<String, String>) -> bool {
        stored.get(LABEL_ZONE).is_some_and(|z| z == self.0)
            && stored.get(LABEL_ORIGIN).is_some_and(|o| o == ORIGIN_ZONE)
    }

    fn check(&self, w: &kds::WireResource) -> Result<(), String> {
        meridian_core::origin::check_sent_by(&w.resource, self.0)
    }
}
