//! `_overview` endpoints: a resource joined with its insight.

use std::collections::BTreeMap;

use axum::{Json, response::IntoResponse, response::Response};
use meridian_sync_proto::{ResourceType, Spec, universal};
use serde_json::{Value, json};

use meridian_core::{Entry, liveness::now_millis};

use crate::{
    error::ApiError,
    filters::{ListFilter, filtered_page},
    paging::{next_url, page},
    state::ApiState,
};

fn insights_by_name(entries: Vec<Entry>) -> BTreeMap<(String, String), Entry> {
    entries.into_iter().map(|e| ((e.resource.meta.mesh.clone(), e.resource.meta.name.clone()), e)).collect()
}

/// `GET /zones/_overview`, with `?name=` (substring), as the incumbent.
pub async fn zones(
    s: &ApiState,
    offset: Option<&str>,
    size: Option<&str>,
    pairs: &[(String, String)],
    headers: &axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let (offset, size) = page(offset, size)?;
    let filter = ListFilter::parse(pairs, false)?;
    let (zones, total) = filtered_page(s, ResourceType::Zone, None, &filter, offset, size).await?;
    let (insights, _) = s.manager.list(ResourceType::ZoneInsight, None, BTreeMap::new(), 0, None).await?;
    let insights = insights_by_name(insights);
    let beats = s.manager.heartbeats().await?;
    let now = now_millis();
    let items: Vec<Value> = zones
        .iter()
        .map(|z| {
            let insight = insights.get(&(String::new(), z.resource.meta.name.clone()));
            let online = insight.is_some_and(|i| match &i.resource.spec {
                Spec::ZoneInsight(zi) => beats.zone_online(zi, now),
                _ => false,
            });
            let enabled = match &z.resource.spec {
                Spec::Zone(spec) => spec.enabled.as_ref().is_none_or(|b| b.value),
                _ => true,
            };
            json!({
                "type": "ZoneOverview",
                "name": z.resource.meta.name,
                "creationTime": universal::rfc3339_millis(z.resource.meta.creation_time),
                "modificationTime": universal::rfc3339_millis(z.resource.meta.modification_time),
                "zone": { "enabled": enabled },
                "zoneInsight": insight.map_or(json!({}), |i| universal::spec_to_json(&i.resource.spec)),
                "online": online,
            })
        })
        .collect();
    let next = next_url(headers, "/zones/_overview", &filter.query_suffix(), offset, size, total);
    Ok(Json(json!({ "total": total, "items": items, "next": next })).into_response())
}

/// The incumbent's legacy path segment listing ZoneIngresses with their
/// insights (`/zoneingresses+insights[/{name}]`).
pub const ZONE_INGRESSES_INSIGHTS: &str = "zoneingresses+insights";

/// `GET /zoneingresses/_overview` (also `/zone-ingresses/_overview` and
/// `/zoneingresses+insights`), with `?name=` (substring): each ZoneIngress
/// with its ZoneIngressInsight (`{}` when its proxy never connected here),
/// the incumbent's `ZoneIngressOverview`. With `one`, that ZoneIngress
/// alone (`/zoneingresses+insights/{name}`; 404 when it does not exist).
pub async fn zone_ingresses(
    s: &ApiState,
    one: Option<&str>,
    offset: Option<&str>,
    size: Option<&str>,
    pairs: &[(String, String)],
    headers: &axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let overview = |zi: &Entry, insight: Option<&Entry>| {
        json!({
            "type": "ZoneIngressOverview",
            "name": zi.resource.meta.name,
            "creationTime": universal::rfc3339_millis(zi.resource.meta.creation_time),
            "modificationTime": universal::rfc3339_millis(zi.resource.meta.modification_time),
            "zoneIngress": universal::spec_to_json(&zi.resource.spec),
            "zoneIngressInsight": insight.map_or(json!({}), |i| universal::spec_to_json(&i.resource.spec)),
        })
    };
    if let Some(name) = one {
        let zi = s
            .manager
            .get(ResourceType::ZoneIngress, "", name)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("ZoneIngress {name:?} not found")))?;
        let insight = s.manager.get(ResourceType::ZoneIngressInsight, "", name).await?;
        return Ok(Json(overview(&zi, insight.as_ref())).into_response());
    }
    let (offset, size) = page(offset, size)?;
    let filter = ListFilter::parse(pairs, false)?;
    let (ingresses, total) = filtered_page(s, ResourceType::ZoneIngress, None, &filter, offset, size).await?;
    let (insights, _) = s.manager.list(ResourceType::ZoneIngressInsight, None, BTreeMap::new(), 0, None).await?;
    let insights = insights_by_name(insights);
    let items: Vec<Value> = ingresses
        .iter()
        .map(|zi| overview(zi, insights.get(&(String::new(), zi.resource.meta.name.clone()))))
        .collect();
    let next = next_url(headers, "/zoneingresses/_overview", &filter.query_suffix(), offset, size, total);
    Ok(Json(json!({ "total": total, "items": items, "next": next })).into_response())
}

/// `GET /meshes/{mesh}/dataplanes/_overview`, with the incumbent's filters
/// `?name=`, `?tag=k:v` (repeatable) and `?gateway=` ([`ListFilter`]).
pub async fn dataplanes(
    s: &ApiState,
    mesh: &str,
    offset: Option<&str>,
    size: Option<&str>,
    pairs: &[(String, String)],
    headers: &axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let (offset, size) = page(offset, size)?;
    let filter = ListFilter::parse(pairs, true)?;
    if !s.manager.mesh_exists(mesh).await? {
        return Err(ApiError::not_found(format!("mesh {mesh:?} does not exist")));
    }
    let (dps, total) = filtered_page(s, ResourceType::Dataplane, Some(mesh), &filter, offset, size).await?;
    let (insights, _) = s.manager.list(ResourceType::DataplaneInsight, Some(mesh), BTreeMap::new(), 0, None).await?;
    let insights = insights_by_name(insights);
    let items: Vec<Value> = dps
        .iter()
        .map(|d| {
            let meta = &d.resource.meta;
            let insight = insights.get(&(meta.mesh.clone(), meta.name.clone()));
            let mut item = json!({
                "type": "DataplaneOverview",
                "mesh": meta.mesh,
                "name": meta.name,
                "creationTime": universal::rfc3339_millis(meta.creation_time),
                "modificationTime": universal::rfc3339_millis(meta.modification_time),
                "dataplane": universal::spec_to_json(&d.resource.spec),
                "dataplaneInsight": insight.map_or(json!({}), |i| universal::spec_to_json(&i.resource.spec)),
            });
            if !meta.labels.is_empty() {
                item["labels"] = json!(meta.labels);
            }
            item
        })
        .collect();
    let next =
        next_url(headers, &format!("/meshes/{mesh}/dataplanes/_overview"), &filter.query_suffix(), offset, size, total);
    Ok(Json(json!({ "total": total, "items": items, "next": next })).into_response())
}
