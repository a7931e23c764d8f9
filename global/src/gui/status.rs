//! A resource's propagation status for its page: per zone, and per
//! affected Dataplane in each zone, ACKed / NACKed (reason) / Pending.
//!
//! The source is the API's `GET …/{name}/_status` (the propagation-status
//! contract shared with the observability work), asked through the API
//! router with the caller's credentials. When this global does not serve it
//! (404 "no such endpoint"), the page falls back to what DataplaneInsight
//! carries: each affected gateway Dataplane's last ACK/NACK, judged against
//! the resource's modification time ([`Source::Insights`], said on the page).

use std::collections::BTreeMap;

use axum::{
    body::Body,
    extract::ConnectInfo,
    http::{Request, header},
};
use meridian_core::{Entry, liveness::now_millis};
use meridian_rest::server::PeerAddr;
use meridian_sync_proto::{
    ResourceType, Spec,
    pb::mesh::{Dataplane, DataplaneInsight, Selector},
    universal::rfc3339_millis,
};
use serde::Deserialize;
use tower::ServiceExt;

use super::{Caller, GuiState};

/// Where a [`Status`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The API's `_status` endpoint.
    Contract,
    /// DataplaneInsight (ACK/NACK per gateway Dataplane), when `_status` is
    /// not served, or for what the global does not send to zones (a Dataplane).
    Insights,
}

/// The propagation status, in the contract's shape.
#[derive(Debug, Clone, Deserialize)]
pub struct Status {
    #[serde(skip, default = "contract")]
    pub source: Source,
    /// `Applied | Pending | Rejected`.
    #[serde(default)]
    pub state: String,
    /// The resource's content version at the global.
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub zones: Vec<ZoneStatus>,
    /// Why there is no status (the API's error), when there is none.
    #[serde(skip)]
    pub error: Option<String>,
}

fn contract() -> Source {
    Source::Contract
}

/// One zone's view of the resource.
#[derive(Debug, Clone, Deserialize)]
pub struct ZoneStatus {
    pub zone: String,
    #[serde(default)]
    pub online: bool,
    /// The version the zone holds (ACKed over KDS), when known.
    #[serde(default)]
    pub version: Option<String>,
    /// `Applied | Pending | Rejected | Offline`.
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub dataplanes: Vec<DataplaneStatus>,
}

/// One affected Dataplane's answer.
#[derive(Debug, Clone, Deserialize)]
pub struct DataplaneStatus {
    /// The Dataplane's name as stored at the global.
    pub name: String,
    /// `ACKed | NACKed | Pending`.
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    /// RFC 3339, when Envoy answered.
    #[serde(default)]
    pub time: Option<String>,
}

/// Largest `_status` body read (a status lists zones and Dataplanes).
const MAX_STATUS_BYTES: usize = 4 * 1024 * 1024;

/// The status of `entry`: from `_status`, else from DataplaneInsight.
pub async fn of(s: &GuiState, caller: &Caller, entry: &Entry) -> Status {
    // What the global does not send to zones (a Dataplane, insights) has
    // no `_status`: a Dataplane's page shows its own last ACK/NACK.
    let ty = entry.resource.resource_type();
    if matches!(ty, ResourceType::Zone | ResourceType::ZoneInsight | ResourceType::GlobalSecret) {
        return failed(format!("a {ty} stays at the global: nothing propagates (zones: see /gui)"));
    }
    if !meridian_sync_proto::kds::GLOBAL_TO_ZONE.contains(&ty) {
        return from_insights(s, entry).await.unwrap_or_else(|e| failed(format!("cannot read the store: {e}")));
    }
    match from_contract(s, caller, entry).await {
        Ok(Some(status)) => status,
        Ok(None) => from_insights(s, entry).await.unwrap_or_else(|e| failed(format!("cannot read the store: {e}"))),
        Err(e) => failed(e),
    }
}

fn failed(error: String) -> Status {
    Status { source: Source::Contract, state: String::new(), version: None, zones: Vec::new(), error: Some(error) }
}

/// `GET …/_status` through the API router, as the caller; `Ok(None)` when
/// the API has no such endpoint.
async fn from_contract(s: &GuiState, caller: &Caller, entry: &Entry) -> Result<Option<Status>, String> {
    let meta = &entry.resource.meta;
    let ty = entry.resource.resource_type();
    // Names and meshes are validated ([A-Za-z0-9._-]), so they need no escaping in a path.
    let path = if ty.is_mesh_scoped() {
        format!("/meshes/{}/{}/{}/_status", meta.mesh, ty.plural(), meta.name)
    } else {
        format!("/{}/{}/_status", ty.plural(), meta.name)
    };
    let mut req = Request::get(&path);
    for h in [header::HOST, header::AUTHORIZATION] {
        if let Some(v) = caller.headers.get(&h) {
            req = req.header(h, v);
        }
    }
    let mut req = req.body(Body::empty()).map_err(|e| format!("cannot build the status request: {e}"))?;
    req.extensions_mut().insert(ConnectInfo(PeerAddr(std::net::SocketAddr::new(caller.peer, 0))));
    let resp = match s.router.clone().oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), MAX_STATUS_BYTES)
        .await
        .map_err(|e| format!("cannot read {path}: {e}"))?;
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    if status == axum::http::StatusCode::NOT_FOUND
        && json.get("details").and_then(|d| d.as_str()).is_some_and(|d| d.starts_with("no such endpoint"))
    {
        return Ok(None);
    }
    if !status.is_success() {
        let details = json.get("details").and_then(|d| d.as_str()).unwrap_or_default();
        return Err(format!("{path} answered {status}: {details}"));
    }
    serde_json::from_value(json).map(Some).map_err(|e| format!("{path} answered an unexpected body: {e}"))
}

/// The fallback: zones from ZoneInsight, and in each zone the affected
/// Dataplanes' last ACK/NACK from their DataplaneInsight. A Dataplane is
/// `ACKed` once every response it was sent is answered, none rejected,
/// and its last answer is not older than the resource's last change;
/// `NACKed` while it holds a rejected resource; else `Pending`.
async fn from_insights(s: &GuiState, entry: &Entry) -> Result<Status, meridian_core::ManagerError> {
    let m = &s.api.manager;
    let now = now_millis();
    let (zones, _) = m.list(ResourceType::Zone, None, BTreeMap::new(), 0, None).await?;
    let (zone_insights, _) = m.list(ResourceType::ZoneInsight, None, BTreeMap::new(), 0, None).await?;
    let beats = m.heartbeats().await?;
    let online: BTreeMap<String, bool> = zone_insights
        .iter()
        .filter_map(|e| match &e.resource.spec {
            Spec::ZoneInsight(zi) => Some((e.resource.meta.name.clone(), beats.zone_online(zi, now))),
            _ => None,
        })
        .collect();
    let meta = &entry.resource.meta;
    let mesh = if entry.resource.resource_type() == ResourceType::Mesh { &meta.name } else { &meta.mesh };
    let mut by_zone: BTreeMap<String, Vec<DataplaneStatus>> =
        zones.iter().map(|z| (z.resource.meta.name.clone(), Vec::new())).collect();
    if !mesh.is_empty() {
        let (dps, _) = m.list(ResourceType::Dataplane, Some(mesh), BTreeMap::new(), 0, None).await?;
        let (insights, _) = m.list(ResourceType::DataplaneInsight, Some(mesh), BTreeMap::new(), 0, None).await?;
        let (gateways, _) = m.list(ResourceType::MeshGateway, Some(mesh), BTreeMap::new(), 0, None).await?;
        let insights: BTreeMap<&str, &DataplaneInsight> = insights
            .iter()
            .filter_map(|e| match &e.resource.spec {
                Spec::DataplaneInsight(i) => Some((e.resource.meta.name.as_str(), i)),
                _ => None,
            })
            .collect();
        for dp in &dps {
            let Spec::Dataplane(spec) = &dp.resource.spec else { continue };
            if !affects(entry, &dp.resource.meta.name, spec, &gateways) {
                continue;
            }
            let Some(zone) = dp.resource.meta.labels.get("kuma.io/zone") else { continue };
            let insight = insights.get(dp.resource.meta.name.as_str()).copied();
            by_zone.entry(zone.clone()).or_default().push(dataplane_state(
                &dp.resource.meta.name,
                insight,
                meta.modification_time,
            ));
        }
    }
    if entry.resource.resource_type() == ResourceType::Dataplane {
        // A Dataplane concerns its own zone only.
        by_zone.retain(|_, dps| !dps.is_empty());
    }
    let zones: Vec<ZoneStatus> = by_zone
        .into_iter()
        .map(|(zone, dataplanes)| {
            let is_online = online.get(&zone).copied().unwrap_or(false);
            let state = if !is_online {
                "Offline"
            } else if dataplanes.iter().any(|d| d.state == "NACKed") {
                "Rejected"
            } else if dataplanes.iter().all(|d| d.state == "ACKed") {
                "Applied"
            } else {
                "Pending"
            };
            let reason = dataplanes.iter().find_map(|d| d.reason.clone());
            ZoneStatus { zone, online: is_online, version: None, state: state.to_string(), reason, dataplanes }
        })
        .collect();
    let state = if zones.iter().any(|z| z.state == "Rejected") {
        "Rejected"
    } else if zones.iter().filter(|z| z.online).all(|z| z.state == "Applied") {
        "Applied"
    } else {
        "Pending"
    };
    Ok(Status {
        source: Source::Insights,
        state: state.to_string(),
        version: Some(entry.version.clone()),
        zones,
        error: None,
    })
}

/// Whether a Dataplane's configuration depends on `entry`: a MeshGateway
/// it serves, a MeshGatewayRoute attached to it (selectors against its
/// gateway tags, alone or with a listener's tags), itself; for anything
/// else in the mesh (the Mesh, Secrets), every gateway Dataplane.
fn affects(entry: &Entry, dp_name: &str, dp: &Dataplane, gateways: &[Entry]) -> bool {
    let Some(gw) = dp.networking.as_ref().and_then(|n| n.gateway.as_ref()) else {
        return entry.resource.resource_type() == ResourceType::Dataplane && entry.resource.meta.name == dp_name;
    };
    match &entry.resource.spec {
        Spec::MeshGateway(g) => selectors_match(&g.selectors, &gw.tags),
        Spec::MeshGatewayRoute(r) => listener_tags(&gw.tags, gateways).iter().any(|t| selectors_match(&r.selectors, t)),
        Spec::Dataplane(_) => entry.resource.meta.name == dp_name,
        _ => true,
    }
}

/// The tag sets a route is matched against for a gateway Dataplane: its
/// own tags, and its tags with each listener's tags of every MeshGateway
/// that selects it (the listener's tags win).
pub fn listener_tags(dp_tags: &BTreeMap<String, String>, gateways: &[Entry]) -> Vec<BTreeMap<String, String>> {
    let mut out = vec![dp_tags.clone()];
    for g in gateways {
        let Spec::MeshGateway(g) = &g.resource.spec else { continue };
        if !selectors_match(&g.selectors, dp_tags) {
            continue;
        }
        for l in g.conf.iter().flat_map(|c| &c.listeners) {
            let mut t = dp_tags.clone();
            t.extend(l.tags.iter().map(|(k, v)| (k.clone(), v.clone())));
            out.push(t);
        }
    }
    out
}

/// Whether any selector matches `tags`: every key present with the same
/// value, or `*` for any value (the zone's gateway selection rule).
pub fn selectors_match(selectors: &[Selector], tags: &BTreeMap<String, String>) -> bool {
    selectors.iter().any(|s| s.r#match.iter().all(|(k, v)| tags.get(k).is_some_and(|t| v == "*" || t == v)))
}

fn millis(t: &pbjson_types::Timestamp) -> i64 {
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

/// One Dataplane's state from its insight's last subscription (see
/// [`from_insights`]).
fn dataplane_state(name: &str, insight: Option<&DataplaneInsight>, modified: i64) -> DataplaneStatus {
    let pending = |reason: Option<String>| DataplaneStatus {
        name: name.to_string(),
        state: "Pending".into(),
        version: None,
        reason,
        time: None,
    };
    let Some(sub) = insight.and_then(|i| i.subscriptions.last()) else {
        return pending(Some("its proxy never connected".into()));
    };
    if sub.disconnect_time.is_some() {
        return pending(Some("its proxy is disconnected".into()));
    }
    let Some(status) = &sub.status else { return pending(None) };
    let time = status.last_update_time.as_ref().map(millis);
    if let Some(r) = status.rejected_resources.first() {
        return DataplaneStatus {
            name: name.to_string(),
            state: "NACKed".into(),
            version: Some(r.version.clone()),
            reason: Some(format!("{} {}: {}", r.r#type, r.name, r.reason)),
            time: r.time.as_ref().map(|t| rfc3339_millis(millis(t))),
        };
    }
    let total = status.total.unwrap_or_default();
    let settled = total.responses_sent > 0 && total.responses_sent == total.responses_acknowledged;
    match time {
        Some(t) if settled && t >= modified => DataplaneStatus {
            name: name.to_string(),
            state: "ACKed".into(),
            version: None,
            reason: None,
            time: Some(rfc3339_millis(t)),
        },
        _ => pending(None),
    }
}
