//! Propagation status at the global: `GET /meshes/{mesh}/{type}/{name}/_status`
//! and `GET /{type}/{name}/_status` (body and state rules:
//! [`meridian_sync_proto::propagation`]).
//!
//! ```text
//!   store: the resource (its version), Zone records, ZoneInsights (online)
//!   kds::held: per zone, the version it ACKed (or NACKed, with the reason)
//!   per zone: that zone's Dataplanes of the mesh ──generator──▶ which depend on the resource
//!             their DataplaneInsight `configSources` ──▶ ACKed | NACKed | Pending per Dataplane
//! ```
//!
//! Which Dataplanes a resource affects is decided by running the zone's
//! generator ([`meridian_zone::gateway`]) over the zone's view as the
//! global holds it (the global-origin gateways, routes and secrets of the
//! mesh, and that zone's Dataplanes), so a Dataplane a new route attaches
//! to counts before its Envoy ever saw the route. A read costs one
//! generation per Dataplane of the mesh; nothing is computed per ACK.
//!
//! What a zone holds is known by the global instance the zone is connected
//! to ([`crate::kds::held`]); with several global replicas, ask the one the
//! zone's ZoneInsight names.

use std::collections::BTreeMap;

use axum::{
    Json, Router,
    extract::{Path, State},
    routing::get,
};
use meridian_core::{
    Entry, Manager, ManagerError,
    liveness::now_millis,
    origin::{LABEL_DISPLAY_NAME, LABEL_ORIGIN, LABEL_ZONE, ORIGIN_ZONE},
};
use meridian_rest::{ApiState, error::ApiError};
use meridian_sync_proto::{
    ResourceType, Spec, kds,
    propagation::{self, DataplaneStatus, ResourceStatus, ZoneFacts, ZoneStatus},
};
use meridian_zone::gateway::{self, MeshSnapshot};

use crate::kds::held::Held;

/// The `_status` routes (reads, open like the other GETs).
pub fn routes(state: ApiState, held: Held) -> Router {
    async fn in_mesh(
        State((s, held)): State<(ApiState, Held)>,
        Path((mesh, plural, name)): Path<(String, String, String)>,
    ) -> Result<Json<ResourceStatus>, ApiError> {
        let ty = synced_type(&plural)?;
        if !ty.is_mesh_scoped() {
            return Err(ApiError::bad_request(format!(
                "{} is not mesh-scoped: GET /{plural}/{name}/_status",
                ty.name()
            )));
        }
        answer(&s.manager, &held, ty, &mesh, &name).await
    }
    async fn top(
        State((s, held)): State<(ApiState, Held)>,
        Path((plural, name)): Path<(String, String)>,
    ) -> Result<Json<ResourceStatus>, ApiError> {
        let ty = synced_type(&plural)?;
        if ty.is_mesh_scoped() {
            return Err(ApiError::bad_request(format!(
                "{} is mesh-scoped: GET /meshes/{{mesh}}/{plural}/{name}/_status",
                ty.name()
            )));
        }
        answer(&s.manager, &held, ty, "", &name).await
    }
    async fn mesh(state: State<(ApiState, Held)>, Path(name): Path<String>) -> Result<Json<ResourceStatus>, ApiError> {
        top(state, Path(("meshes".to_string(), name))).await
    }
    Router::new()
        .route("/meshes/{mesh}/{plural}/{name}/_status", get(in_mesh))
        // `/meshes/{mesh}/{plural}` (lists) would take it otherwise.
        .route("/meshes/{name}/_status", get(mesh))
        .route("/{plural}/{name}/_status", get(top))
        .with_state((state, held))
}

/// Response header naming a resource's propagation state on every
/// successful `GET` of one resource the global sends to zones.
pub const HEADER: &str = "x-meridian-propagation";

/// Middleware adding [`HEADER`] (`Applied`, `Pending` or `Rejected`; the
/// body of `_status` says why) to `GET /meshes/{mesh}/{type}/{name}` and
/// `GET /{type}/{name}`, so the state is visible on the resource itself.
pub async fn header(
    State((manager, held)): State<(Manager, Held)>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let target = (req.method() == axum::http::Method::GET).then(|| resource_path(req.uri().path())).flatten();
    let mut resp = next.run(req).await;
    if let Some((ty, mesh, name)) = target
        && resp.status() == axum::http::StatusCode::OK
        && let Ok(Some(s)) = status(&manager, &held, ty, &mesh, &name).await
        && let Ok(v) = axum::http::HeaderValue::from_str(&s.state.to_string())
    {
        resp.headers_mut().insert(HEADER, v);
    }
    resp
}

/// (type, mesh, name) of a path naming one resource of a type sent to zones.
fn resource_path(path: &str) -> Option<(ResourceType, String, String)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (ty, mesh, name) = match segs.as_slice() {
        ["meshes", mesh, plural, name] => (ResourceType::from_plural(plural)?, *mesh, *name),
        ["meshes", name] => (ResourceType::Mesh, "", *name),
        [plural, name] => (ResourceType::from_plural(plural)?, "", *name),
        _ => return None,
    };
    let fits = kds::GLOBAL_TO_ZONE.contains(&ty) && ty.is_mesh_scoped() != mesh.is_empty();
    fits.then(|| (ty, mesh.to_string(), name.to_string()))
}

/// The type named by a REST plural, if the global sends it to zones.
fn synced_type(plural: &str) -> Result<ResourceType, ApiError> {
    let ty = ResourceType::from_plural(plural)
        .ok_or_else(|| ApiError::not_found(format!("unknown resource type {plural:?}")))?;
    if !kds::GLOBAL_TO_ZONE.contains(&ty) {
        let synced: Vec<&str> = kds::GLOBAL_TO_ZONE.iter().map(|t| t.plural()).collect();
        return Err(ApiError::bad_request(format!(
            "{} is not sent to zones, so it has no propagation status; types that have one: {}",
            ty.name(),
            synced.join(", ")
        )));
    }
    Ok(ty)
}

async fn answer(
    manager: &Manager,
    held: &Held,
    ty: ResourceType,
    mesh: &str,
    name: &str,
) -> Result<Json<ResourceStatus>, ApiError> {
    match status(manager, held, ty, mesh, name).await? {
        Some(s) => Ok(Json(s)),
        None => Err(ApiError::not_found(format!(
            "{} {name:?} not found{}",
            ty.name(),
            if mesh.is_empty() { String::new() } else { format!(" in mesh {mesh:?}") }
        ))),
    }
}

/// The propagation status of resource (`ty`, `mesh`, `name`); `None` when
/// it does not exist at the global.
pub async fn status(
    manager: &Manager,
    held: &Held,
    ty: ResourceType,
    mesh: &str,
    name: &str,
) -> Result<Option<ResourceStatus>, ManagerError> {
    let Some(entry) = manager.get(ty, mesh, name).await? else { return Ok(None) };
    let version = entry.version.clone();
    // The mesh whose Dataplanes may depend on it.
    let dp_mesh = if ty == ResourceType::Mesh { name } else { mesh };
    let view = MeshView::load(manager, dp_mesh).await?;
    let wire = kds::wire_name(&Manager::key(ty, mesh, name).mesh, name);
    let online = online_zones(manager).await?;
    let (zones, _) = manager.list(ResourceType::Zone, None, BTreeMap::new(), 0, None).await?;
    let mut out = Vec::new();
    for z in zones {
        let zone = z.resource.meta.name;
        let h = held.get(&zone, ty.name(), &wire).unwrap_or_default();
        let facts = ZoneFacts { online: online.contains(&zone), held: h.version.clone(), rejected: h.rejected };
        let mut dataplanes = Vec::new();
        for (stored, insight) in view.affected(manager, &zone, ty, name).await? {
            dataplanes.push(dataplane_status(&stored, insight.as_ref(), ty, name, &version));
        }
        let (state, reason) = propagation::zone_state(&version, &facts, &dataplanes);
        out.push(ZoneStatus { zone, online: facts.online, version: facts.held, state, reason, dataplanes });
    }
    Ok(Some(ResourceStatus {
        ty: ty.name().to_string(),
        mesh: mesh.to_string(),
        name: name.to_string(),
        version,
        state: propagation::resource_state(&out),
        zones: out,
    }))
}

/// Zones with a fresh, open ZoneInsight subscription.
async fn online_zones(manager: &Manager) -> Result<std::collections::BTreeSet<String>, ManagerError> {
    let (insights, _) = manager.list(ResourceType::ZoneInsight, None, BTreeMap::new(), 0, None).await?;
    let beats = manager.heartbeats().await?;
    let now = now_millis();
    Ok(insights
        .into_iter()
        .filter(|e| matches!(&e.resource.spec, Spec::ZoneInsight(zi) if beats.zone_online(zi, now)))
        .map(|e| e.resource.meta.name)
        .collect())
}

/// One Dataplane's answer for the resource, from its DataplaneInsight's
/// newest subscription.
fn dataplane_status(
    stored: &str,
    insight: Option<&meridian_sync_proto::pb::mesh::DataplaneInsight>,
    ty: ResourceType,
    name: &str,
    version: &str,
) -> DataplaneStatus {
    let source = insight
        .and_then(|i| i.subscriptions.last())
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.config_sources.iter().find(|c| c.r#type == ty.name() && c.name == name));
    // Connected: its newest xDS subscription is still open.
    let connected = insight.and_then(|i| i.subscriptions.last()).is_some_and(|s| s.disconnect_time.is_none());
    let state =
        propagation::dataplane_state(version, source.map(|c| (c.version.as_str(), c.state == "ACKed")), connected);
    DataplaneStatus {
        name: stored.to_string(),
        state,
        version: source.map(|c| c.version.clone()),
        reason: source.filter(|c| !c.reason.is_empty()).map(|c| c.reason.clone()),
        time: source
            .and_then(|c| c.time.as_ref())
            .and_then(|t| serde_json::to_value(t).ok())
            .and_then(|v| v.as_str().map(str::to_string)),
    }
}

/// A mesh as the global holds it: the resources it sends to zones, and
/// every zone's Dataplanes (stored name, the name in its zone, spec).
pub struct MeshView {
    /// Gateways, routes, secrets, policies and the Mesh, as every zone gets them.
    pub shared: MeshSnapshot,
    /// Zone → (name in the zone → (stored name, Dataplane)).
    pub dataplanes: BTreeMap<String, BTreeMap<String, (String, Entry)>>,
}

impl MeshView {
    /// Reads mesh `mesh` from the store.
    pub async fn load(manager: &Manager, mesh: &str) -> Result<MeshView, ManagerError> {
        let mut shared = MeshSnapshot::new(mesh);
        if let Some(m) = manager.get(ResourceType::Mesh, "", mesh).await? {
            shared.upsert(&m.resource);
            shared.set_version(ResourceType::Mesh, mesh, &m.version);
        }
        let types = [
            ResourceType::MeshGateway,
            ResourceType::MeshGatewayRoute,
            ResourceType::Secret,
            ResourceType::ProxyTemplate,
        ];
        for ty in types.into_iter().chain(ResourceType::POLICIES) {
            let (items, _) = manager.list(ty, Some(mesh), BTreeMap::new(), 0, None).await?;
            for e in items.iter().filter(|e| !from_zone(e)) {
                shared.upsert(&e.resource);
                shared.set_version(ty, &e.resource.meta.name, &e.version);
            }
        }
        let mut dataplanes: BTreeMap<String, BTreeMap<String, (String, Entry)>> = BTreeMap::new();
        let (items, _) = manager.list(ResourceType::Dataplane, Some(mesh), BTreeMap::new(), 0, None).await?;
        for e in items {
            let labels = &e.resource.meta.labels;
            let Some(zone) = labels.get(LABEL_ZONE).cloned() else { continue };
            let local = labels.get(LABEL_DISPLAY_NAME).cloned().unwrap_or_else(|| e.resource.meta.name.clone());
            let stored = e.resource.meta.name.clone();
            dataplanes.entry(zone).or_default().insert(local, (stored, e));
        }
        Ok(MeshView { shared, dataplanes })
    }

    /// What zone `zone` holds of this mesh: the shared resources and its
    /// own Dataplanes, under the names the zone knows them by.
    pub fn zone_snapshot(&self, zone: &str) -> MeshSnapshot {
        let mut s = self.shared.clone();
        for (local, (_, e)) in self.dataplanes.get(zone).into_iter().flatten() {
            let mut r = e.resource.clone();
            r.meta.name = local.clone();
            s.upsert(&r);
            s.set_version(ResourceType::Dataplane, local, &e.version);
        }
        s
    }

    /// The Dataplanes of `zone` whose configuration depends on
    /// (`ty`, `name`): their stored names and DataplaneInsights.
    async fn affected(
        &self,
        manager: &Manager,
        zone: &str,
        ty: ResourceType,
        name: &str,
    ) -> Result<Vec<(String, Option<meridian_sync_proto::pb::mesh::DataplaneInsight>)>, ManagerError> {
        let snapshot = self.zone_snapshot(zone);
        let mut out = Vec::new();
        for (local, (stored, _)) in self.dataplanes.get(zone).into_iter().flatten() {
            let Ok(config) = gateway::generate(&snapshot, local) else { continue };
            if !gateway::depends_on(&config.deps, ty, name) {
                continue;
            }
            let insight = manager.get(ResourceType::DataplaneInsight, &snapshot.mesh, stored).await?.and_then(|e| {
                match e.resource.spec {
                    Spec::DataplaneInsight(i) => Some(i),
                    _ => None,
                }
            });
            out.push((stored.clone(), insight));
        }
        Ok(out)
    }
}

fn from_zone(e: &Entry) -> bool {
    e.resource.meta.labels.get(LABEL_ORIGIN).is_some_and(|o| o == ORIGIN_ZONE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_resources_of_synced_types_get_the_header() {
        let r = resource_path("/meshes/default/meshgatewayroutes/r");
        assert_eq!(r, Some((ResourceType::MeshGatewayRoute, "default".into(), "r".into())));
        assert_eq!(resource_path("/meshes/default"), Some((ResourceType::Mesh, String::new(), "default".into())));
        assert_eq!(resource_path("/meshes/default/meshgatewayroutes"), None, "a list");
        assert_eq!(resource_path("/zones/zone-1"), None, "not sent to zones");
        assert_eq!(resource_path("/meshes/default/dataplanes/dp"), None, "flows up, not down");
        assert_eq!(resource_path("/meshgatewayroutes/r"), None, "mesh-scoped without a mesh");
    }
}
