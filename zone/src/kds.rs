//! The zone's KDS client: one gRPC connection to the global carrying both
//! sync streams, redialled with exponential backoff and jitter.
//!
//! ```text
//!   global ══GlobalToZoneSync══▶ DeltaReceiver per type ──apply_batch──▶ zone store
//!   global ◀═ZoneToGlobalSync═══ DeltaSender per type ◀──list/watch──── zone store
//! ```
//!
//! Both directions resume: the zone's first requests carry the versions it
//! already holds, and the global's carry what it holds of this zone, so a
//! reconnect moves only what changed.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::Context;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use futures::{FutureExt, StreamExt};
use meridian_api::{
    Manager,
    manager::{LABEL_ORIGIN, LABEL_ZONE, ORIGIN_GLOBAL, ORIGIN_ZONE},
};
use meridian_store::{ListQuery, StoreError};
use meridian_sync_proto::{
    ResourceType,
    delta::{DeltaReceiver, DeltaSender, Desired, DesiredSet, RequestKind},
    kds::{self, GLOBAL_TO_ZONE, ZONE_TO_GLOBAL},
    pb::kds::kds_sync_service_client::KdsSyncServiceClient,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Request, Status,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

/// HTTP/2 PING interval and timeout: a global that stops answering is
/// noticed within their sum (10 s).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnect backoff bounds; the delay doubles per failure, with ±50 % jitter.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(15);
/// A session that lasted this long resets the backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);
/// Messages queued towards the global per stream.
const OUTBOUND_QUEUE: usize = 16;
/// Room left in each message for the envelope around the resources.
const ENVELOPE_MARGIN: usize = 64 * 1024;

/// How to reach the global.
#[derive(Debug, Clone)]
pub struct KdsClientConfig {
    pub zone: String,
    /// `grpcs://host:port` (TLS) or `grpc://host:port` (plaintext, explicit).
    pub global_address: String,
    pub token: String,
    /// CA (PEM) that signed the global's KDS certificate.
    pub global_ca: Option<PathBuf>,
    pub max_message_bytes: usize,
}

/// Builds the endpoint for the configured address.
pub fn endpoint(cfg: &KdsClientConfig) -> anyhow::Result<Endpoint> {
    let (tls, rest) = if let Some(r) = cfg.global_address.strip_prefix("grpcs://") {
        (true, r)
    } else if let Some(r) = cfg.global_address.strip_prefix("grpc://") {
        (false, r)
    } else {
        anyhow::bail!(
            "--global-address {:?} must start with grpcs:// (TLS) or grpc:// (plaintext)",
            cfg.global_address
        );
    };
    let scheme = if tls { "https" } else { "http" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{rest}"))
        .with_context(|| format!("invalid --global-address {:?}", cfg.global_address))?
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .connect_timeout(CONNECT_TIMEOUT);
    if tls {
        let ca_path = cfg.global_ca.as_ref().context(
            "grpcs:// needs --global-ca (the CA of the global's KDS certificate, e.g. <global data dir>/kds-ca.crt); use grpc:// for plaintext",
        )?;
        let ca = std::fs::read(ca_path).with_context(|| format!("cannot read --global-ca {}", ca_path.display()))?;
        let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h).trim_matches(['[', ']']);
        ep = ep.tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name(host))?;
    }
    Ok(ep)
}

/// Keeps the zone synced with the global until `stop` resolves.
pub async fn run(
    cfg: KdsClientConfig,
    manager: Manager,
    stop: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let ep = endpoint(&cfg)?;
    let mut stop = std::pin::pin!(stop);
    let mut backoff = BACKOFF_MIN;
    loop {
        let started = tokio::time::Instant::now();
        let outcome = tokio::select! {
            r = session(&cfg, &ep, &manager) => r,
            () = &mut stop => return Ok(()),
        };
        match outcome {
            Ok(()) => tracing::warn!(global = %cfg.global_address, "global ended the sync stream; reconnecting"),
            Err(e) => {
                let denied = e
                    .downcast_ref::<Status>()
                    .is_some_and(|s| matches!(s.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied));
                if denied {
                    tracing::error!(global = %cfg.global_address, error = %format!("{e:#}"), "the global refused this zone; check --token-file and that the zone is enabled");
                } else {
                    tracing::warn!(global = %cfg.global_address, error = %format!("{e:#}"), "sync with the global failed; reconnecting");
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
    md.insert(
        kds::MD_AUTHORIZATION,
        format!("Bearer {}", cfg.token.trim()).parse().context("the zone token is not valid metadata")?,
    );
    Ok(req)
}

/// One connection: both streams until either ends.
async fn session(cfg: &KdsClientConfig, ep: &Endpoint, manager: &Manager) -> anyhow::Result<()> {
    let channel = ep.connect().await.with_context(|| format!("cannot connect to {}", cfg.global_address))?;
    let client = KdsSyncServiceClient::new(channel)
        .max_decoding_message_size(cfg.max_message_bytes)
        .max_encoding_message_size(cfg.max_message_bytes);
    tracing::info!(global = %cfg.global_address, zone = %cfg.zone, "connected to the global");
    tokio::select! {
        r = downstream(cfg, client.clone(), manager) => r,
        r = upstream(cfg, client, manager) => r,
    }
}

/// Whether a resource was authored in this zone (not received from the
/// global, and not another zone's resource relayed by the global).
fn is_local(labels: &BTreeMap<String, String>, zone: &str) -> bool {
    labels.get(LABEL_ORIGIN).map(String::as_str) != Some(ORIGIN_GLOBAL)
        && labels.get(LABEL_ZONE).is_none_or(|z| z == zone)
}

/// What the zone holds of `ty`, by wire name: what came from the global
/// (`from_global`) or what was authored here.
async fn local_versions(manager: &Manager, zone: &str, ty: ResourceType, from_global: bool) -> anyhow::Result<BTreeMap<String, String>> {
    let page = manager.list_stored(&ListQuery { type_name: ty.name().to_string(), ..ListQuery::default() }).await?;
    Ok(page
        .items
        .into_iter()
        .filter(|r| is_local(&r.labels, zone) != from_global)
        .map(|r| (kds::wire_name(&r.key.mesh, &r.key.name), r.version))
        .collect())
}

/// Global → zone: subscribe with what we hold, apply what arrives.
async fn downstream(cfg: &KdsClientConfig, mut client: KdsSyncServiceClient<Channel>, manager: &Manager) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(OUTBOUND_QUEUE);
    let mut receivers = BTreeMap::new();
    for ty in GLOBAL_TO_ZONE {
        let r = DeltaReceiver::new(ty.name(), local_versions(manager, &cfg.zone, *ty, true).await?);
        tx.send(r.initial_request(None)).await?;
        receivers.insert(*ty, r);
    }
    let mut inbound = client.global_to_zone_sync(with_metadata(cfg, ReceiverStream::new(rx))?).await?.into_inner();
    while let Some(resp) = inbound.message().await? {
        let Some((ty, rcv)) = ResourceType::from_name(&resp.type_url).and_then(|t| receivers.get_mut(&t).map(|r| (t, r)))
        else {
            tracing::warn!(type_url = %resp.type_url, "global sent a type this zone did not ask for");
            continue;
        };
        let reply = meridian_api::received::apply(manager, ty, rcv, &resp, &FromGlobal)
            .await
            .context("cannot store resources from the global")?;
        if let Some(e) = &reply.error_detail {
            tracing::warn!(%ty, reason = %e.message, "rejected resources from the global");
        }
        tx.send(reply).await?;
    }
    Ok(())
}

/// Global resources keep their names in the zone, labelled with their origin.
struct FromGlobal;

impl meridian_api::received::Placement for FromGlobal {
    fn key(&self, ty: ResourceType, mesh: &str, name: &str) -> meridian_store::ResourceKey {
        Manager::key(ty, mesh, name)
    }

    fn labels(&self, w: &kds::WireResource) -> BTreeMap<String, String> {
        let mut labels = w.resource.meta.labels.clone();
        labels.entry(LABEL_ORIGIN.to_string()).or_insert_with(|| ORIGIN_GLOBAL.to_string());
        labels
    }
}

/// The zone's own resources of `ty`, as the global should hold them.
async fn zone_desired(cfg: &KdsClientConfig, manager: &Manager, ty: ResourceType) -> anyhow::Result<DesiredSet> {
    let page = manager.list_stored(&ListQuery { type_name: ty.name().to_string(), ..ListQuery::default() }).await?;
    Ok(page
        .items
        .into_iter()
        .filter(|r| is_local(&r.labels, &cfg.zone))
        .map(|r| {
            let mut labels = r.labels.clone();
            labels.insert(LABEL_ORIGIN.to_string(), ORIGIN_ZONE.to_string());
            labels.insert(LABEL_ZONE.to_string(), cfg.zone.clone());
            let any = kds::to_any(ty, &r.key.mesh, &r.key.name, &labels, &r.version, r.spec);
            (kds::wire_name(&r.key.mesh, &r.key.name), Desired { version: r.version, resource: any })
        })
        .collect())
}

/// Zone → global: the global subscribes (with what it holds of this zone);
/// the zone answers from its store and pushes every change: config changes
/// from the change feed, status (DataplaneInsight) from the store's status
/// wake-ups. If compaction overtakes the feed, it resumes from the head and
/// re-sends every type (a resync: the senders diff against what the global
/// holds, so only real differences travel).
async fn upstream(cfg: &KdsClientConfig, mut client: KdsSyncServiceClient<Channel>, manager: &Manager) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryResponse>(OUTBOUND_QUEUE);
    // Watch from before the first listing: nothing written meanwhile is missed.
    let mut status = manager.store().status_changes();
    status.borrow_and_update();
    let from = manager.store().current_revision().await?;
    let mut feed = manager.store().watch(from);
    let mut inbound = client.zone_to_global_sync(with_metadata(cfg, ReceiverStream::new(rx))?).await?.into_inner();
    let budget = cfg.max_message_bytes.saturating_sub(ENVELOPE_MARGIN).max(1024);
    let prefix = format!("{}-{:08x}", cfg.zone, rand::random::<u32>());
    let mut senders: BTreeMap<ResourceType, DeltaSender> =
        ZONE_TO_GLOBAL.iter().map(|t| (*t, DeltaSender::new(t.name(), format!("{prefix}-{t}")))).collect();

    loop {
        let mut dirty = Vec::new();
        tokio::select! {
            msg = inbound.message() => {
                let Some(req) = msg? else { return Ok(()) };
                let Some(ty) = ResourceType::from_name(&req.type_url).filter(|t| senders.contains_key(t)) else {
                    tracing::warn!(type_url = %req.type_url, "global asked for a type this zone does not send");
                    continue;
                };
                let Some(sender) = senders.get_mut(&ty) else { continue };
                match sender.on_request(&req) {
                    RequestKind::Initial => {
                        let desired = zone_desired(cfg, manager, ty).await?;
                        let mut force = true;
                        while let Some(resp) = sender.next_response(&desired, budget, force) {
                            force = false;
                            tx.send(resp).await?;
                        }
                    }
                    RequestKind::Subscribe => dirty.push(ty),
                    RequestKind::Nack { reason, .. } => tracing::warn!(%ty, %reason, "the global rejected resources from this zone"),
                    RequestKind::Ack { .. } | RequestKind::Stale { .. } => {}
                }
            }
            changed = status.changed() => {
                changed.context("store status notifications ended")?;
                status.borrow_and_update();
                for ty in ZONE_TO_GLOBAL.iter().filter(|t| Manager::is_status(**t)) {
                    if !dirty.contains(ty) {
                        dirty.push(*ty);
                    }
                }
            }
            change = feed.next() => {
                let Some(change) = change else { anyhow::bail!("store change feed ended") };
                let mut changes = Vec::new();
                let mut resync = false;
                // Take everything already queued: one push per burst, not per write.
                for item in std::iter::once(change).chain(std::iter::from_fn(|| feed.next().now_or_never().flatten())) {
                    match item {
                        Ok(c) => changes.push(c),
                        Err(StoreError::Compacted { .. }) => resync = true,
                        Err(e) => return Err(e.into()),
                    }
                }
                if resync {
                    tracing::warn!("store change log compacted past the zone-to-global feed; resyncing");
                    feed = manager.store().watch(manager.store().current_revision().await?);
                    for ty in ZONE_TO_GLOBAL {
                        if !dirty.contains(ty) {
                            dirty.push(*ty);
                        }
                    }
                }
                for c in changes {
                    if let Some(ty) = ResourceType::from_name(&c.resource.key.type_name)
                        && senders.contains_key(&ty) && !dirty.contains(&ty) {
                            dirty.push(ty);
                        }
                }
            }
        }
        for ty in dirty {
            let Some(sender) = senders.get_mut(&ty) else { continue };
            if !sender.started() {
                continue;
            }
            let desired = zone_desired(cfg, manager, ty).await?;
            while let Some(resp) = sender.next_response(&desired, budget, false) {
                tx.send(resp).await?;
            }
        }
    }
}
