//! `GET /meshes/{mesh}/dataplanes/{name}/xds|stats|clusters` at the global:
//! the Dataplane's zone (label `kuma.io/zone` of its synced copy) is asked
//! over its KDS connection ([`crate::kds::envoy_admin`]) and its answer
//! returned as is (the zone's own endpoint answers the same bytes).
//!
//! `name` is the name the global stores (`<zone>.<name>` for a Meridian
//! zone's Dataplane, what `meridianctl get dataplanes` lists) or, when that
//! names nothing, the zone-local name (`kuma.io/display-name`) if exactly
//! one Dataplane of the mesh has it.
//!
//! | outcome | status |
//! |---|---|
//! | the zone's answer | 200 (JSON for `xds` and `format=json`, else text) |
//! | no such Dataplane (or the name is ambiguous) | 404 |
//! | `format` neither `json` nor `text` | 400 at `format` |
//! | the zone answered with an error (its Envoy's admin unreachable) | 502 with the zone's reason |
//! | the zone is not connected to this instance, or did not answer within [`ASK_TIMEOUT`] | 504 |

use std::{collections::BTreeMap, time::Duration};

use axum::{
    Router,
    extract::{ConnectInfo, Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use meridian_core::origin::{LABEL_DISPLAY_NAME, LABEL_ZONE};
use meridian_rest::{ApiState, error::ApiError, server::PeerAddr};
use meridian_sync_proto::{
    ResourceType,
    envoy_admin::{AdminKind, AdminQuery},
};

use crate::kds::envoy_admin::{AskError, EnvoyAdmin};

/// How long the global waits for a zone's answer.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct InspectState {
    api: ApiState,
    admin: EnvoyAdmin,
}

/// The three inspect routes (admin only, as at the zone).
pub fn routes(api: ApiState, admin: EnvoyAdmin) -> Router {
    let mut router = Router::new();
    for kind in [AdminKind::XdsConfig, AdminKind::Stats, AdminKind::Clusters] {
        router = router.route(
            &format!("/meshes/{{mesh}}/dataplanes/{{name}}/{}", kind.segment()),
            get(
                move |s: State<InspectState>,
                      p: Path<(String, String)>,
                      q: Query<AdminQuery>,
                      h: HeaderMap,
                      ci: ConnectInfo<PeerAddr>| async move { inspect(s.0, p.0, q.0, h, ci, kind).await },
            ),
        );
    }
    router.with_state(InspectState { api, admin })
}

/// The zone and zone-local name of Dataplane `name` of `mesh` as the
/// global holds it.
async fn locate(api: &ApiState, mesh: &str, name: &str) -> Result<(String, String), ApiError> {
    let zone_of = |labels: &BTreeMap<String, String>, stored: &str| -> Result<(String, String), ApiError> {
        let zone = labels.get(LABEL_ZONE).ok_or_else(|| {
            ApiError::not_found(format!("Dataplane {mesh}/{stored} belongs to no zone (no {LABEL_ZONE} label)"))
        })?;
        let local = labels
            .get(LABEL_DISPLAY_NAME)
            .cloned()
            .or_else(|| stored.strip_prefix(&format!("{zone}.")).map(str::to_string))
            .unwrap_or_else(|| stored.to_string());
        Ok((zone.clone(), local))
    };
    if let Some(e) = api.manager.get(ResourceType::Dataplane, mesh, name).await? {
        return zone_of(&e.resource.meta.labels, name);
    }
    let labels = BTreeMap::from([(LABEL_DISPLAY_NAME.to_string(), name.to_string())]);
    let (found, _) = api.manager.list(ResourceType::Dataplane, Some(mesh), labels, 0, Some(2)).await?;
    match found.as_slice() {
        [one] => zone_of(&one.resource.meta.labels, &one.resource.meta.name),
        [] => Err(ApiError::not_found(format!("Dataplane {name:?} is not known in mesh {mesh:?} (in any zone)"))),
        _ => Err(ApiError::not_found(format!(
            "Dataplane name {name:?} is used in several zones of mesh {mesh:?}: give the stored name (<zone>.{name})"
        ))),
    }
}

async fn inspect(
    s: InspectState,
    (mesh, name): (String, String),
    q: AdminQuery,
    headers: HeaderMap,
    ci: ConnectInfo<PeerAddr>,
    kind: AdminKind,
) -> Result<Response, ApiError> {
    meridian_rest::require_admin(&s.api, &headers, &ci)?;
    let (json, body) = ask(&s.api, &s.admin, &mesh, &name, &q, kind).await?;
    let ct = if json { "application/json" } else { "text/plain; charset=utf-8" };
    Ok(([(header::CONTENT_TYPE, ct)], body).into_response())
}

/// Asks the zone owning Dataplane `mesh`/`name` (either name, see the
/// module doc) for `kind`: the REST routes and the GUI's Envoy config
/// panel share it. The caller checks who asks.
///
/// Returns whether the answer is JSON, and its bytes as the zone sent them.
/// Errors: the statuses of the module doc's table (404, 400, 502, 504).
pub async fn ask(
    api: &ApiState,
    admin: &EnvoyAdmin,
    mesh: &str,
    name: &str,
    q: &AdminQuery,
    kind: AdminKind,
) -> Result<(bool, Vec<u8>), ApiError> {
    let (zone, local) = locate(api, mesh, name).await?;
    let request = q.request(kind, mesh, &local).map_err(|(field, reason)| ApiError::field(field, reason))?;
    let json = request.json;
    match admin.ask(&zone, request, ASK_TIMEOUT).await {
        Ok(body) => Ok((json, body)),
        Err(e @ AskError::Zone { .. }) => {
            Err(ApiError::new(StatusCode::BAD_GATEWAY, "Zone could not inspect", e.to_string()))
        }
        Err(e) => Err(ApiError::new(StatusCode::GATEWAY_TIMEOUT, "Zone did not answer", e.to_string())),
    }
}
