//! One zone's two KDS streams, each driven by the shared delta engine.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use futures::StreamExt;
use meridian_api::{
    Manager,
    manager::{LABEL_DISPLAY_NAME, LABEL_ORIGIN, LABEL_ZONE, ORIGIN_ZONE},
};
use meridian_store::ListQuery;
use meridian_sync_proto::{
    ResourceType,
    delta::{DeltaReceiver, DeltaSender, Desired, DesiredSet, RequestKind},
    kds::{self, GLOBAL_TO_ZONE, ZONE_TO_GLOBAL},
};
use tokio::sync::mpsc::Sender;
use tokio_stream::wrappers::WatchStream;
use tonic::{Status, Streaming};

use super::{
    KdsServer,
    cache::TypeMap,
    insight::{Counters, REFRESH, Upward},
    wire_labels,
};

/// Metric label values of the two directions.
const DOWN: &str = "global_to_zone";
const UP: &str = "zone_to_global";

/// Room left in each message for the envelope around the resources.
const ENVELOPE_MARGIN: usize = 64 * 1024;

/// What zone `zone` should hold of type `ty`: everything authored at the
/// global, plus other zones' ZoneIngresses; never the zone's own resources.
fn desired_for_zone(ty: ResourceType, map: &TypeMap, zone: &str) -> DesiredSet {
    map.values()
        .filter(|c| {
            let from_zone = c.labels.get(LABEL_ORIGIN).is_some_and(|o| o == ORIGIN_ZONE);
            if ty == ResourceType::ZoneIngress {
                c.labels.get(LABEL_ZONE).is_none_or(|z| z != zone)
            } else {
                !from_zone
            }
        })
        .map(|c| {
            let any = kds::to_any(ty, &c.mesh, &c.name, &wire_labels(&c.labels), &c.version, c.spec.to_vec());
            (kds::wire_name(&c.mesh, &c.name), Desired { version: c.version.clone(), resource: any })
        })
        .collect()
}

/// Global → zone: the zone subscribes, the global answers with what changed.
pub(super) async fn global_to_zone(
    server: KdsServer,
    zone: String,
    zone_version: String,
    token: String,
    connection: Option<SocketAddr>,
    mut inbound: Streaming<DeltaDiscoveryRequest>,
    tx: Sender<Result<DeltaDiscoveryResponse, Status>>,
) {
    let session = server.insights.open(&zone, &zone_version, connection).await;
    server.metrics.zones_connected.inc();
    tracing::info!(zone = %zone, "zone connected: global-to-zone stream open");
    let budget = server.max_message_bytes.saturating_sub(ENVELOPE_MARGIN).max(1024);
    let nonce_prefix = format!("{:08x}", rand::random::<u32>());
    let mut senders: BTreeMap<ResourceType, DeltaSender> =
        GLOBAL_TO_ZONE.iter().map(|t| (*t, DeltaSender::new(t.name(), format!("{nonce_prefix}-{t}")))).collect();
    let mut latest: BTreeMap<ResourceType, Arc<TypeMap>> = BTreeMap::new();
    let mut changes = futures::stream::select_all(GLOBAL_TO_ZONE.iter().map(|t| {
        let rx = server.cache.subscribe(*t);
        latest.insert(*t, rx.borrow().clone());
        let ty = *t;
        WatchStream::from_changes(rx).map(move |m| (ty, m))
    }));
    let mut refresh = tokio::time::interval(REFRESH);
    refresh.tick().await;

    // Sends what `ty` needs; `force` answers even when nothing differs.
    macro_rules! flush {
        ($ty:expr, $force:expr) => {{
            let ty = $ty;
            let mut ok = true;
            if let (Some(sender), Some(map)) = (senders.get_mut(&ty), latest.get(&ty)) {
                let desired = desired_for_zone(ty, map, &zone);
                let mut force = $force;
                while let Some(resp) = sender.next_response(&desired, budget, force) {
                    force = false;
                    tracing::debug!(zone = %zone, %ty, resources = resp.resources.len(), removed = resp.removed_resources.len(), "sending");
                    server.metrics.count(DOWN, ty.name(), "sent", 1);
                    server.metrics.count(DOWN, ty.name(), "resources", resp.resources.len() as u64);
                    if tx.send(Ok(resp)).await.is_err() {
                        ok = false;
                        break;
                    }
                }
                if let Ok(mut s) = session.lock() {
                    s.stats.insert(ty.name().to_string(), Counters::from(&sender.stats));
                }
            }
            ok
        }};
    }

    loop {
        tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(req)) => {
                    let Some(ty) = ResourceType::from_name(&req.type_url).filter(|t| GLOBAL_TO_ZONE.contains(t)) else {
                        tracing::warn!(zone = %zone, type_url = %req.type_url, "zone asked for a type the global does not send");
                        let _ = tx.send(Err(Status::invalid_argument(format!("type {:?} does not flow from global to zone", req.type_url)))).await;
                        break;
                    };
                    let Some(sender) = senders.get_mut(&ty) else { break };
                    match sender.on_request(&req) {
                        RequestKind::Initial => {
                            tracing::debug!(zone = %zone, %ty, held = req.initial_resource_versions.len(), "zone subscribed");
                            if !flush!(ty, true) { break; }
                        }
                        RequestKind::Subscribe => { if !flush!(ty, false) { break; } }
                        RequestKind::Nack { nonce, reason } => {
                            server.metrics.count(DOWN, ty.name(), "nacked", 1);
                            tracing::warn!(zone = %zone, %ty, %nonce, %reason, "zone rejected resources");
                        }
                        RequestKind::Ack { .. } => server.metrics.count(DOWN, ty.name(), "acked", 1),
                        RequestKind::Stale { nonce } => tracing::debug!(zone = %zone, %ty, %nonce, "stale nonce"),
                    }
                    if let (Ok(mut s), Some(sender)) = (session.lock(), senders.get(&ty)) {
                        s.stats.insert(ty.name().to_string(), Counters::from(&sender.stats));
                    }
                }
                Ok(None) => {
                    tracing::info!(zone = %zone, "zone closed the global-to-zone stream");
                    break;
                }
                Err(status) => {
                    tracing::info!(zone = %zone, error = %status, "global-to-zone stream ended");
                    break;
                }
            },
            Some((ty, map)) = changes.next() => {
                latest.insert(ty, map);
                if !flush!(ty, false) { break; }
            }
            _ = refresh.tick() => {
                server.insights.write(&session, false).await;
                // A zone disabled while connected is cut off.
                // A token revoked (or expired) while connected cuts the zone off.
                match server.tokens.verify(Some(&token), &zone).await {
                    Ok(_) | Err(crate::tokens::TokenError::Store(_)) => {}
                    Err(e) => {
                        tracing::warn!(zone = %zone, reason = %e, "zone token no longer valid; closing its stream");
                        let _ = tx.send(Err(Status::unauthenticated(e.to_string()))).await;
                        break;
                    }
                }
                if let Err(status) = server.ensure_zone_enabled(&zone).await
                    && status.code() == tonic::Code::PermissionDenied {
                        tracing::warn!(zone = %zone, "zone was disabled; closing its stream");
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
            }
            () = tx.closed() => {
                tracing::info!(zone = %zone, "zone went away");
                break;
            }
        }
    }
    server.metrics.zones_connected.dec();
    server.insights.close(&session).await;
    tracing::info!(zone = %zone, "zone disconnected: global-to-zone stream closed");
}

/// What the global already holds of `zone`'s `ty` resources, by wire name.
async fn held_from_zone(server: &KdsServer, ty: ResourceType, zone: &str) -> Result<BTreeMap<String, String>, Status> {
    let mut labels = BTreeMap::new();
    labels.insert(LABEL_ZONE.to_string(), zone.to_string());
    labels.insert(LABEL_ORIGIN.to_string(), ORIGIN_ZONE.to_string());
    let page = server
        .manager
        .list_stored(&ListQuery { type_name: ty.name().to_string(), labels, ..ListQuery::default() })
        .await
        .map_err(|e| Status::unavailable(format!("store: {e}")))?;
    let prefix = format!("{zone}.");
    Ok(page
        .items
        .into_iter()
        .map(|r| {
            let name = r
                .labels
                .get(LABEL_DISPLAY_NAME)
                .cloned()
                .unwrap_or_else(|| r.key.name.strip_prefix(&prefix).unwrap_or(&r.key.name).to_string());
            (kds::wire_name(&r.key.mesh, &name), r.version)
        })
        .collect())
}

/// Zone → global: roles reversed; the zone sends responses, the global ACKs
/// or NACKs each. Invalid resources are NACKed by name; the rest apply.
pub(super) async fn zone_to_global(
    server: KdsServer,
    zone: String,
    connection: Option<SocketAddr>,
    inbound: Streaming<DeltaDiscoveryResponse>,
    tx: Sender<Result<DeltaDiscoveryRequest, Status>>,
) {
    let upward = server.insights.upward(&zone, connection);
    zone_to_global_stream(&server, &zone, &upward, inbound, tx).await;
    server.insights.close_upward(&zone, connection);
    tracing::info!(zone = %zone, "zone-to-global stream closed");
}

async fn zone_to_global_stream(
    server: &KdsServer,
    zone: &str,
    upward: &Upward,
    mut inbound: Streaming<DeltaDiscoveryResponse>,
    tx: Sender<Result<DeltaDiscoveryRequest, Status>>,
) {
    let mut receivers = BTreeMap::new();
    for ty in ZONE_TO_GLOBAL {
        let held = match held_from_zone(server, *ty, zone).await {
            Ok(h) => h,
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        let r = DeltaReceiver::new(ty.name(), held);
        if tx.send(Ok(r.initial_request(None))).await.is_err() {
            return;
        }
        receivers.insert(*ty, r);
    }
    tracing::info!(zone = %zone, "zone connected: zone-to-global stream open");
    let mut counters: BTreeMap<ResourceType, Counters> = BTreeMap::new();
    loop {
        let msg = tokio::select! {
            m = inbound.message() => m,
            () = tx.closed() => break,
        };
        let resp = match msg {
            Ok(Some(r)) => r,
            Ok(None) => {
                tracing::info!(zone = %zone, "zone closed the zone-to-global stream");
                break;
            }
            Err(status) => {
                tracing::info!(zone = %zone, error = %status, "zone-to-global stream ended");
                break;
            }
        };
        let Some((ty, rcv)) = ResourceType::from_name(&resp.type_url).and_then(|t| receivers.get_mut(&t).map(|r| (t, r)))
        else {
            tracing::warn!(zone = %zone, type_url = %resp.type_url, "zone sent a type that does not flow up");
            let _ = tx.send(Err(Status::invalid_argument(format!("type {:?} does not flow from zone to global", resp.type_url)))).await;
            break;
        };
        let applied = meridian_api::received::apply(&server.manager, ty, rcv, &resp, &FromZone(zone)).await;
        let reply = match applied.map_err(|e| Status::unavailable(format!("store: {e}"))) {
            Ok(r) => r,
            Err(status) => {
                tracing::warn!(zone = %zone, %ty, error = %status, "cannot apply zone resources; ending the stream so the zone resends");
                let _ = tx.send(Err(status)).await;
                break;
            }
        };
        let c = counters.entry(ty).or_default();
        c.sent += 1;
        c.resources += resp.resources.len() as u64;
        server.metrics.count(UP, ty.name(), "sent", 1);
        server.metrics.count(UP, ty.name(), "resources", resp.resources.len() as u64);
        match &reply.error_detail {
            Some(status) => {
                c.nacked += 1;
                server.metrics.count(UP, ty.name(), "nacked", 1);
                c.last_nack = Some(status.message.clone());
                tracing::warn!(zone = %zone, %ty, reason = %status.message, "rejected resources from zone");
            }
            None => {
                c.acked += 1;
                server.metrics.count(UP, ty.name(), "acked", 1);
            }
        }
        if let Ok(mut u) = upward.lock() {
            u.insert(format!("{ty} (zone to global)"), c.clone());
        }
        if tx.send(Ok(reply)).await.is_err() {
            break;
        }
    }
}

/// Zone resources live at the global as `<zone>.<name>`, labelled with
/// their origin, zone and the name the user gave.
struct FromZone<'a>(&'a str);

impl meridian_api::received::Placement for FromZone<'_> {
    fn key(&self, ty: ResourceType, mesh: &str, name: &str) -> meridian_store::ResourceKey {
        Manager::key(ty, mesh, &format!("{}.{name}", self.0))
    }

    fn labels(&self, w: &kds::WireResource) -> BTreeMap<String, String> {
        let mut labels = w.resource.meta.labels.clone();
        labels.insert(LABEL_ORIGIN.to_string(), ORIGIN_ZONE.to_string());
        labels.insert(LABEL_ZONE.to_string(), self.0.to_string());
        labels.insert(LABEL_DISPLAY_NAME.to_string(), w.resource.meta.name.clone());
        labels
    }
}
