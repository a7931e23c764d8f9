//! Dry-run diff at the global: `POST /_diff` with resources in universal
//! JSON (one object, or an array) answers, per zone and per Dataplane,
//! the Envoy resources that applying them would change, as unified diffs
//! ([`meridian_sync_proto::propagation::DiffReport`]); nothing is written.
//!
//! ```text
//!   body ──parse, validate (as PUT ?dryRun=true)──▶ proposed resources
//!   per mesh: MeshView (store) ──per zone──▶ snapshot now │ snapshot + proposed
//!                 per Dataplane of the zone: generate(now), generate(after) ──▶ diff by name
//! ```
//!
//! The generator is the zone's own ([`meridian_zone::gateway`]), run on the
//! zone's view as the global holds it; what the zone adds outside the
//! generator (its mesh mTLS identity secrets) is not part of the diff.

use std::collections::{BTreeMap, BTreeSet};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{ConnectInfo, State},
    http::HeaderMap,
    routing::post,
};
use meridian_core::{Manager, ManagerError, liveness::now_millis};
use meridian_rest::{ApiState, error::ApiError, server::PeerAddr};
use meridian_sync_proto::{
    Resource, ResourceType, kds,
    propagation::{DataplaneDiff, DiffReport, EnvoyChange, ZoneDiff},
    universal,
};
use meridian_zone::gateway::{self, MeshSnapshot, ProxyConfig, dump};
use serde_json::Value;

use crate::propagation::MeshView;

/// Resources in one `POST /_diff`.
const MAX_RESOURCES: usize = 100;

/// `POST /_diff` (admin, like writes: it reveals generated configuration).
pub fn routes(state: ApiState) -> Router {
    async fn handle(
        State(s): State<ApiState>,
        headers: HeaderMap,
        ci: ConnectInfo<PeerAddr>,
        body: Bytes,
    ) -> Result<Json<DiffReport>, ApiError> {
        meridian_rest::require_admin(&s, &headers, &ci)?;
        let proposed = parse(&body)?;
        for r in &proposed {
            s.manager.check(r).await?;
        }
        Ok(Json(report(&s.manager, &proposed).await?))
    }
    Router::new().route("/_diff", post(handle)).with_state(state)
}

/// The body: one resource or an array of them, each a type the global
/// sends to zones.
fn parse(body: &[u8]) -> Result<Vec<Resource>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))?;
    let items = match value {
        Value::Array(items) => items,
        v @ Value::Object(_) => vec![v],
        _ => return Err(ApiError::bad_request("request body must be a resource or an array of resources")),
    };
    if items.is_empty() || items.len() > MAX_RESOURCES {
        return Err(ApiError::bad_request(format!("give 1 to {MAX_RESOURCES} resources, not {}", items.len())));
    }
    let mut out = Vec::new();
    for (i, v) in items.into_iter().enumerate() {
        let mut r = universal::from_value(v).map_err(|e| ApiError::from(ManagerError::Invalid(e)))?;
        let ty = r.resource_type();
        if !kds::GLOBAL_TO_ZONE.contains(&ty) || !generator_reads(ty) {
            return Err(ApiError::field(
                &format!("[{i}].type"),
                format!(
                    "{} does not change any Envoy configuration; diff Mesh, MeshGateway, MeshGatewayRoute or Secret",
                    ty.name()
                ),
            ));
        }
        if ty.is_mesh_scoped() && r.meta.mesh.is_empty() {
            r.meta.mesh = "default".into();
        }
        out.push(r);
    }
    Ok(out)
}

fn generator_reads(ty: ResourceType) -> bool {
    matches!(ty, ResourceType::Mesh | ResourceType::MeshGateway | ResourceType::MeshGatewayRoute | ResourceType::Secret)
}

/// What applying `proposed` (already validated) would change.
pub async fn report(manager: &Manager, proposed: &[Resource]) -> Result<DiffReport, ManagerError> {
    let meshes: BTreeSet<&str> = proposed
        .iter()
        .map(|r| if r.resource_type() == ResourceType::Mesh { r.meta.name.as_str() } else { r.meta.mesh.as_str() })
        .collect();
    let mut zones: BTreeMap<String, Vec<DataplaneDiff>> = BTreeMap::new();
    for mesh in meshes {
        let view = MeshView::load(manager, mesh).await?;
        for (zone, dataplanes) in &view.dataplanes {
            let now = view.zone_snapshot(zone);
            let after = with_proposed(&now, proposed);
            for (local, (stored, _)) in dataplanes {
                let changes = diff_dataplane(&now, &after, local);
                if !changes.is_empty() {
                    zones.entry(zone.clone()).or_default().push(DataplaneDiff {
                        name: stored.clone(),
                        mesh: mesh.to_string(),
                        changes,
                    });
                }
            }
        }
    }
    Ok(DiffReport { zones: zones.into_iter().map(|(zone, dataplanes)| ZoneDiff { zone, dataplanes }).collect() })
}

/// `snapshot` with the proposed resources of its mesh put in (an existing
/// one keeps its creation time, which breaks gateway ties).
pub fn with_proposed(snapshot: &MeshSnapshot, proposed: &[Resource]) -> MeshSnapshot {
    let mut after = snapshot.clone();
    for r in proposed {
        let in_mesh = match r.resource_type() {
            ResourceType::Mesh => r.meta.name == snapshot.mesh,
            _ => r.meta.mesh == snapshot.mesh,
        };
        if !in_mesh {
            continue;
        }
        let mut r = r.clone();
        r.meta.creation_time = created(snapshot, &r).unwrap_or_else(now_millis);
        after.upsert(&r);
    }
    after
}

fn created(s: &MeshSnapshot, r: &Resource) -> Option<i64> {
    let n = &r.meta.name;
    match r.resource_type() {
        ResourceType::MeshGateway => s.gateways.get(n).map(|i| i.creation_time),
        ResourceType::MeshGatewayRoute => s.routes.get(n).map(|i| i.creation_time),
        ResourceType::Secret => s.secrets.get(n).map(|i| i.creation_time),
        _ => None,
    }
}

/// The Envoy resources of Dataplane `name` that differ between two
/// snapshots of its zone, by kind then name.
pub fn diff_dataplane(now: &MeshSnapshot, after: &MeshSnapshot, name: &str) -> Vec<EnvoyChange> {
    let (Ok(a), Ok(b)) = (gateway::generate(now, name), gateway::generate(after, name)) else {
        return Vec::new();
    };
    diff_configs(&a, &b)
}

/// The resources that differ between two configurations of one Dataplane.
pub fn diff_configs(a: &ProxyConfig, b: &ProxyConfig) -> Vec<EnvoyChange> {
    let mut out = Vec::new();
    kind(&mut out, "listener", &a.listeners, &b.listeners, |l| l.name.clone(), true);
    kind(&mut out, "route configuration", &a.routes, &b.routes, |r| r.name.clone(), true);
    kind(&mut out, "cluster", &a.clusters, &b.clusters, |c| c.name.clone(), true);
    kind(&mut out, "endpoints", &a.endpoints, &b.endpoints, |e| e.cluster_name.clone(), true);
    // Secrets hold private keys: named, never shown.
    kind(&mut out, "secret", &a.secrets, &b.secrets, |s| s.name.clone(), false);
    out
}

fn kind<T: std::fmt::Debug + PartialEq>(
    out: &mut Vec<EnvoyChange>,
    kind: &str,
    a: &[T],
    b: &[T],
    name: impl Fn(&T) -> String,
    show: bool,
) {
    let a: BTreeMap<String, &T> = a.iter().map(|x| (name(x), x)).collect();
    let b: BTreeMap<String, &T> = b.iter().map(|x| (name(x), x)).collect();
    let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for n in names {
        let (before, after) = (a.get(n), b.get(n));
        let change = match (before, after) {
            (Some(x), Some(y)) if x == y => continue,
            (Some(_), Some(_)) => "modified",
            (None, Some(_)) => "added",
            (Some(_), None) => "removed",
            (None, None) => continue,
        };
        let text = |x: Option<&&T>| x.map(|x| dump::pretty(*x) + "\n").unwrap_or_default();
        let diff = if show {
            let (old, new) = (text(before), text(after));
            similar::TextDiff::from_lines(old.as_str(), new.as_str())
                .unified_diff()
                .context_radius(3)
                .header(&format!("a/{}/{n}", kind.replace(' ', "-")), &format!("b/{}/{n}", kind.replace(' ', "-")))
                .to_string()
        } else {
            String::new()
        };
        out.push(EnvoyChange { kind: kind.to_string(), name: n.clone(), change: change.to_string(), diff });
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use meridian_sync_proto::propagation::render_diff;

    use super::*;

    fn snapshot(yaml: &str) -> MeshSnapshot {
        let mut s = MeshSnapshot::new("default");
        for (i, r) in universal::parse_resources(yaml).expect("yaml").into_iter().enumerate() {
            let mut r = r.expect("resource");
            r.meta.creation_time = i as i64;
            s.upsert(&r);
        }
        s
    }

    /// Golden: a route change shows exactly the route configuration and
    /// the new cluster (and its endpoints) that change, nothing else.
    /// `MERIDIAN_BLESS=1 cargo test -p meridian-global diff` rewrites it.
    #[test]
    fn a_route_change_diffs_exactly_what_changes() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
        let world = std::fs::read_to_string(dir.join("diff-world.yaml")).expect("world");
        let change = std::fs::read_to_string(dir.join("diff-change.yaml")).expect("change");
        let now = snapshot(&world);
        let proposed: Vec<Resource> =
            universal::parse_resources(&change).expect("yaml").into_iter().map(|r| r.expect("resource")).collect();
        let after = with_proposed(&now, &proposed);
        let changes = diff_dataplane(&now, &after, "gw-1");
        let report = DiffReport {
            zones: vec![ZoneDiff {
                zone: "zone-1".into(),
                dataplanes: vec![DataplaneDiff { name: "zone-1.gw-1".into(), mesh: "default".into(), changes }],
            }],
        };
        let text = render_diff(&report);
        let golden = dir.join("diff-change.golden");
        if std::env::var_os("MERIDIAN_BLESS").is_some() {
            std::fs::write(&golden, &text).expect("bless");
        }
        let want = std::fs::read_to_string(&golden).expect("golden (MERIDIAN_BLESS=1 writes it)");
        assert_eq!(text, want, "review the diff; MERIDIAN_BLESS=1 rewrites the golden file");
        assert!(diff_dataplane(&now, &now, "gw-1").is_empty(), "no change, no diff");
    }
}
