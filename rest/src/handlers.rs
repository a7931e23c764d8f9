//! The REST API, on the incumbent's paths (`/meshes/{mesh}/meshgateways/{name}`
//! and friends) and shapes (`{"total", "items", "next"}` lists, the
//! `title`/`details`/`invalid_parameters` error body).

use std::time::{Duration, Instant};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Path, Query, Request, State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use meridian_core::Entry;
use meridian_sync_proto::{Resource, ResourceType, universal};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    auth::Auth,
    error::ApiError,
    filters::{ListFilter, filtered_page},
    metrics::{ApiMetrics, HttpLabels},
    paging::{next_url, page},
    server::PeerAddr,
    state::ApiState,
};

/// Largest accepted request body. Resources are capped well below this; the
/// margin covers JSON overhead (base64 Secrets grow by a third).
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// The API router; serve it with [`crate::server::serve`].
pub fn router(state: ApiState) -> Router {
    let metrics = state.metrics.clone();
    Router::new()
        .route("/", get(index))
        .route("/ready", get(ready))
        .route("/healthy", get(|| async { "ok" }))
        .route("/metrics", get(metrics_text))
        .route("/config", get(config))
        .route("/{plural}", get(list_top))
        .route("/{plural}/{name}", get(get_top).put(put_top).delete(delete_top))
        .route("/meshes/{mesh}/{plural}", get(list_in_mesh))
        .route("/meshes/{mesh}/{plural}/{name}", get(get_in_mesh).put(put_in_mesh).delete(delete_in_mesh))
        .fallback(|| async { ApiError::not_found("no such endpoint; see GET / for the API") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // A declared Content-Length over the limit is answered 413 before
        // any of the body is read (DefaultBodyLimit alone only stops the
        // body while it is being read, in the extractor).
        .layer(tower_http::limit::RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(metrics, observe))
        .with_state(state)
}

/// The `method` label of a request: one of the methods the API serves
/// (and HEAD, OPTIONS), else `other`, so that nobody can add metric series
/// by inventing methods (`curl -X FOO1`, `-X FOO2`, ...).
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

async fn observe(State(m): State<ApiMetrics>, req: Request, next: Next) -> Response {
    let method = method_label(req.method()).to_string();
    let route =
        req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let start = Instant::now();
    let resp = next.run(req).await;
    let labels = HttpLabels { method, route, status: resp.status().as_u16() };
    m.requests.get_or_create(&labels).inc();
    m.latency.get_or_create(&labels).observe(start.elapsed().as_secs_f64());
    resp
}

async fn index(State(s): State<ApiState>) -> Json<Value> {
    let mut v = json!({
        "product": "Meridian",
        "tagline": "Meridian",
        "version": s.info.version,
        "hostname": s.info.hostname,
        "instanceId": s.info.instance_id,
        "mode": s.manager.role().name(),
        "store": s.manager.store().backend_name(),
    });
    if let Some(z) = &s.info.zone {
        v["zone"] = json!(z);
    }
    Json(v)
}

/// `GET /config`: the running configuration (flags and environment as
/// resolved, secrets redacted). The incumbent serves its `/config` too; as
/// it reveals the topology (addresses, store, data directory), Meridian
/// answers only admins.
async fn config(
    State(s): State<ApiState>,
    headers: HeaderMap,
    ci: ConnectInfo<PeerAddr>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers, &ci)?;
    Ok(Json(s.config.as_ref().clone()))
}

pub(crate) async fn ready(State(s): State<ApiState>) -> Response {
    match tokio::time::timeout(Duration::from_secs(2), s.manager.store().current_revision()).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready").into_response(),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("store unavailable: {e}")).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "store did not answer within 2s").into_response(),
    }
}

pub(crate) async fn metrics_text(State(s): State<ApiState>) -> Response {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &s.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out)
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[derive(Debug, Deserialize, Default)]
struct ListParams {
    size: Option<String>,
    offset: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
struct WriteParams {
    #[serde(rename = "dryRun", alias = "dry_run")]
    dry_run: Option<bool>,
}

fn resource_type(plural: &str) -> Result<ResourceType, ApiError> {
    ResourceType::from_plural(plural).ok_or_else(|| {
        let known: Vec<&str> = ResourceType::ALL.iter().map(|t| t.plural()).collect();
        ApiError::not_found(format!("unknown resource type {plural:?}; known: {}", known.join(", ")))
    })
}

fn peer(ci: &ConnectInfo<PeerAddr>) -> Option<std::net::IpAddr> {
    Some(ci.0.0.ip())
}

/// Refuses callers without admin rights (401 with what to do): no token from
/// a non-loopback address or under a foreign `Host` (DNS rebinding; see
/// [`crate::auth`]), or a wrong token from anywhere.
pub fn require_admin(s: &ApiState, headers: &HeaderMap, ci: &ConnectInfo<PeerAddr>) -> Result<(), ApiError> {
    if s.auth.is_admin(headers, peer(ci)) {
        return Ok(());
    }
    Err(ApiError::unauthorized(if Auth::presented(headers) {
        "the admin token is not valid"
    } else {
        "this operation needs the admin token: send 'Authorization: Bearer <token>' (meridianctl --token); \
         loopback callers are trusted without it only under a Host of localhost, 127.0.0.0/8, [::1] or an --api-host name, \
         and not when a browser sends the request for another site's page (Origin)"
    }))
}

/// Refuses (401) every request that presents a credential this API does
/// not accept, reads included: a presented token decides alone (see
/// [`crate::auth`]), so `meridianctl --token typo get meshes` fails at once
/// instead of at the first write. Accepted: the admin token and, where the
/// API takes Dataplane tokens (a zone), any valid Dataplane or ingress token
/// (signature, validity window, revocation; what it may write is checked by
/// the handler). Requests without an `Authorization` header pass untouched:
/// reads stay open and writes are judged by [`require_admin`].
///
/// Layer it over the whole API router (`axum::middleware::from_fn_with_state`),
/// after merging the routers of the global or the zone.
pub async fn refuse_wrong_token(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    if !Auth::presented(req.headers()) {
        return next.run(req).await;
    }
    let Some(token) = Auth::bearer_token(req.headers()) else {
        return ApiError::unauthorized(
            "the Authorization header is not a bearer token: send 'Authorization: Bearer <token>' (meridianctl --token)",
        )
        .into_response();
    };
    if s.auth.is_admin(req.headers(), None) {
        return next.run(req).await;
    }
    let refusal = match s.auth.dataplane_tokens() {
        None => "the admin token is not valid: the token presented is not this API's admin token".to_string(),
        Some(_) if token.is_empty() => {
            "the token is empty: it is neither the admin token nor a Dataplane token".to_string()
        }
        Some(tokens) => match tokens.verify_dataplane(token).await {
            Ok(_) => return next.run(req).await,
            Err(e @ meridian_tokens::TokenError::Store(_)) => {
                return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable", e.to_string())
                    .into_response();
            }
            Err(e) => format!("the token is neither the admin token nor a valid Dataplane token: {e}"),
        },
    };
    ApiError::unauthorized(refusal).into_response()
}

/// The Dataplane token a write of a Dataplane (or of a ZoneIngress, with
/// an ingress token: `Mesh` empty, `Name` the ingress) presents instead of
/// the admin token: only where the API takes Dataplane tokens (zones), only
/// for those two types, and only from a caller that is not admin already.
fn dataplane_token<'h>(
    s: &ApiState,
    ty: ResourceType,
    headers: &'h HeaderMap,
    ci: &ConnectInfo<PeerAddr>,
) -> Option<&'h str> {
    if !matches!(ty, ResourceType::Dataplane | ResourceType::ZoneIngress)
        || s.auth.dataplane_tokens().is_none()
        || s.auth.is_admin(headers, peer(ci))
    {
        return None;
    }
    Auth::bearer_token(headers).filter(|t| !t.is_empty())
}

/// Checks a Dataplane token against the Dataplane it writes: 401 when the
/// token is not valid (neither the admin token nor a good Dataplane token),
/// 403 when it is for another Dataplane; the reason either way.
async fn authorize_dataplane(
    s: &ApiState,
    token: &str,
    mesh: &str,
    name: &str,
    dp: Option<&meridian_sync_proto::pb::mesh::Dataplane>,
) -> Result<(), ApiError> {
    let Some(tokens) = s.auth.dataplane_tokens() else {
        return Err(ApiError::unauthorized("the admin token is not valid"));
    };
    match tokens.authorize_dataplane(Some(token), mesh, name, dp).await {
        Ok(_) => Ok(()),
        Err(e @ meridian_tokens::TokenError::Malformed(..)) => Err(ApiError::unauthorized(format!(
            "the token is neither the admin token nor a valid Dataplane token: {e}"
        ))),
        Err(e) => Err(crate::error::token_refusal(&e)),
    }
}

/// The universal JSON of an entry; Secrets' data only when `reveal`.
fn entry_json(e: &Entry, reveal: bool) -> Value {
    let mut v = universal::to_value(&e.resource);
    if matches!(e.resource.resource_type(), ResourceType::Secret | ResourceType::GlobalSecret)
        && !reveal
        && let Some(o) = v.as_object_mut()
    {
        o.remove("data");
    }
    v
}

/// A list page; `pairs` are the query's pairs, for the filters (`?name=`
/// everywhere; `?tag=`, `?gateway=` on Dataplanes).
async fn list(
    s: &ApiState,
    ty: ResourceType,
    mesh: Option<&str>,
    params: ListParams,
    pairs: &[(String, String)],
    headers: &HeaderMap,
    path: &str,
) -> Result<Json<Value>, ApiError> {
    let (offset, size) = page(params.offset.as_deref(), params.size.as_deref())?;
    let filter = ListFilter::parse(pairs, ty == ResourceType::Dataplane)?;
    if let Some(m) = mesh
        && !s.manager.mesh_exists(m).await?
    {
        return Err(ApiError::not_found(format!("mesh {m:?} does not exist")));
    }
    let (items, total) = filtered_page(s, ty, mesh, &filter, offset, size).await?;
    let next = next_url(headers, path, &filter.query_suffix(), offset, size, total);
    Ok(Json(json!({
        "total": total,
        "items": items.iter().map(|e| entry_json(e, false)).collect::<Vec<_>>(),
        "next": next,
    })))
}

/// Secrets, their names included, are the admin's (the incumbent's rule).
fn require_admin_for_secrets(
    s: &ApiState,
    ty: ResourceType,
    headers: &HeaderMap,
    ci: &ConnectInfo<PeerAddr>,
) -> Result<(), ApiError> {
    if matches!(ty, ResourceType::Secret | ResourceType::GlobalSecret) {
        require_admin(s, headers, ci)?;
    }
    Ok(())
}

async fn get_one(
    s: &ApiState,
    ty: ResourceType,
    mesh: &str,
    name: &str,
    headers: &HeaderMap,
    ci: &ConnectInfo<PeerAddr>,
) -> Result<Response, ApiError> {
    require_admin_for_secrets(s, ty, headers, ci)?;
    if ty.is_mesh_scoped() && !s.manager.mesh_exists(mesh).await? {
        return Err(ApiError::not_found(format!("mesh {mesh:?} does not exist")));
    }
    let e =
        s.manager.get(ty, mesh, name).await?.ok_or_else(|| ApiError::not_found(format!("{ty} {name:?} not found")))?;
    let mut resp = Json(entry_json(&e, true)).into_response();
    set_etag(&mut resp, e.revision);
    Ok(resp)
}

/// `ETag: "<revision>"`: what a later `If-Match` must send.
fn set_etag(resp: &mut Response, revision: i64) {
    if let Ok(v) = HeaderValue::from_str(&format!("\"{revision}\"")) {
        resp.headers_mut().insert(header::ETAG, v);
    }
}

/// `If-Match: "<revision>"` (quotes optional) -> the expected revision.
fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else { return Ok(None) };
    let s = v.to_str().unwrap_or("").trim().trim_start_matches("W/").trim_matches('"');
    s.parse::<i64>()
        .map(Some)
        .map_err(|_| ApiError::bad_request(format!("If-Match must be a revision from an ETag, got {s:?}")))
}

#[allow(clippy::too_many_arguments)]
async fn put_one(
    s: &ApiState,
    ty: ResourceType,
    mesh: &str,
    name: &str,
    headers: &HeaderMap,
    ci: &ConnectInfo<PeerAddr>,
    params: WriteParams,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let dp_token = dataplane_token(s, ty, headers, ci);
    if dp_token.is_none() {
        require_admin(s, headers, ci)?;
    }
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request too large",
                format!("request body exceeds the limit of {MAX_BODY_BYTES} bytes"),
            )
        } else {
            ApiError::bad_request(format!("cannot read the request body: {rejection}"))
        }
    })?;
    let mut value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))?;
    let Some(obj) = value.as_object_mut() else {
        return Err(ApiError::bad_request("request body must be a JSON object (a resource in universal format)"));
    };
    for (field, expected) in [("type", ty.name()), ("name", name), ("mesh", mesh)] {
        if field == "mesh" && !ty.is_mesh_scoped() {
            continue;
        }
        match obj.get(field) {
            None | Some(Value::Null) => {
                obj.insert(field.to_string(), Value::String(expected.to_string()));
            }
            Some(Value::String(got)) if got == expected => {}
            Some(got) => {
                return Err(ApiError::field(
                    field,
                    format!("{got} does not match the {field} in the path ({expected:?})"),
                ));
            }
        }
    }
    let resource: Resource = universal::from_value(value).map_err(|e| {
        ApiError::invalid(
            e.to_string(),
            e.violations
                .into_iter()
                .map(|v| crate::error::InvalidParameter { field: v.field, reason: v.message })
                .collect(),
        )
    })?;
    if let Some(token) = dp_token {
        let spec = match &resource.spec {
            meridian_sync_proto::Spec::Dataplane(dp) => Some(dp),
            _ => None,
        };
        authorize_dataplane(s, token, mesh, name, spec).await?;
    }
    let expected = if_match(headers)?;
    let dry_run = params.dry_run.unwrap_or(false);
    let (entry, created) = s.manager.apply(resource, expected, dry_run).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    let mut resp = (status, Json(entry_json(&entry, false))).into_response();
    set_etag(&mut resp, entry.revision);
    Ok(resp)
}

async fn delete_one(
    s: &ApiState,
    ty: ResourceType,
    mesh: &str,
    name: &str,
    headers: &HeaderMap,
    ci: &ConnectInfo<PeerAddr>,
) -> Result<Response, ApiError> {
    match dataplane_token(s, ty, headers, ci) {
        None => require_admin(s, headers, ci)?,
        Some(token) => {
            let stored = s.manager.get(ty, mesh, name).await?;
            let spec = match stored.as_ref().map(|e| &e.resource.spec) {
                Some(meridian_sync_proto::Spec::Dataplane(dp)) => Some(dp),
                _ => None,
            };
            authorize_dataplane(s, token, mesh, name, spec).await?;
        }
    }
    let expected = if_match(headers)?;
    s.manager.delete(ty, mesh, name, expected).await?;
    Ok(Json(json!({})).into_response())
}

// ---- top-level paths: /meshes, /zones, /meshgateways (every mesh), ...

async fn list_top(
    State(s): State<ApiState>,
    Path(plural): Path<String>,
    Query(p): Query<ListParams>,
    Query(pairs): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    ci: ConnectInfo<PeerAddr>,
) -> Result<Response, ApiError> {
    if plural == crate::overview::ZONE_INGRESSES_INSIGHTS {
        return crate::overview::zone_ingresses(&s, None, p.offset.as_deref(), p.size.as_deref(), &pairs, &headers)
            .await;
    }
    let ty = resource_type(&plural)?;
    require_admin_for_secrets(&s, ty, &headers, &ci)?;
    list(&s, ty, None, p, &pairs, &headers, &format!("/{plural}")).await.map(IntoResponse::into_response)
}

async fn get_top(
    State(s): State<ApiState>,
    Path((plural, name)): Path<(String, String)>,
    Query(p): Query<ListParams>,
    Query(pairs): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    ci: ConnectInfo<PeerAddr>,
) -> Result<Response, ApiError> {
    if plural == "zones" && name == "_overview" {
        return crate::overview::zones(&s, p.offset.as_deref(), p.size.as_deref(), &pairs, &headers).await;
    }
    if resource_type(&plural).ok() == Some(ResourceType::ZoneIngress) && name == "_overview" {
        return crate::overview::zone_ingresses(&s, None, p.offset.as_deref(), p.size.as_deref(), &pairs, &headers)
            .await;
    }
    if plural == crate::overview::ZONE_INGRESSES_INSIGHTS {
        return crate::overview::zone_ingresses(&s, Some(&name), None, None, &pairs, &headers).await;
    }
    let ty = top_type(&plural, &name)?;
    get_one(&s, ty, "", &name, &headers, &ci).await
}

async fn put_top(
    State(s): State<ApiState>,
    Path((plural, name)): Path<(String, String)>,
    Query(p): Query<WriteParams>,
    headers: HeaderMap,
    ci: ConnectInfo<PeerAddr>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let ty = top_type(&plural, &name)?;
    put_one(&s, ty, "", &name, &headers, &ci, p, body).await
}

async fn delete_top(
    State(s): State<ApiState>,
    Path((plural, name)): Path<(String, String)>,
    headers: HeaderMap,
    ci: ConnectInfo<PeerAddr>,
) -> Result<Response, ApiError> {
    let ty = top_type(&plural, &name)?;
    delete_one(&s, ty, "", &name, &headers, &ci).await
}

/// The type of a `/{plural}/{name}` path: only types outside meshes.
fn top_type(plural: &str, name: &str) -> Result<ResourceType, ApiError> {
    let ty = resource_type(plural)?;
    if ty.is_mesh_scoped() {
        return Err(ApiError::not_found(format!("{ty} lives in a mesh: use /meshes/{{mesh}}/{plural}/{name}")));
    }
    Ok(ty)
}

// ---- mesh-scoped paths: /meshes/{mesh}/{plural}[/{name}]

fn mesh_type(plural: &str) -> Result<ResourceType, ApiError> {
    let ty = resource_type(plural)?;
    if !ty.is_mesh_scoped() {
        return Err(ApiError::not_found(format!("{ty} is not inside a mesh: use /{plural}")));
    }
    Ok(ty)
}

async fn list_in_mesh(
    State(s): State<ApiState>,
    Path((mesh, plural)): Path<(String, String)>,
    Query(p): Query<ListParams>,
    Query(pairs): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    ci: ConnectInfo<PeerAddr>,
) -> Result<Json<Value>, ApiError> {
    let ty = mesh_type(&plural)?;
    require_admin_for_secrets(&s, ty, &headers, &ci)?;
    list(&s, ty, Some(&mesh), p, &pairs, &headers, &format!("/meshes/{mesh}/{plural}")).await
}

async fn get_in_mesh(
    State(s): State<ApiState>,
    Path((mesh, plural, name)): Path<(String, String, String)>,
    Query(p): Query<ListParams>,
    Query(pairs): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    ci: ConnectInfo<PeerAddr>,
) -> Result<Response, ApiError> {
    if plural == "dataplanes" && name == "_overview" {
        return crate::overview::dataplanes(&s, &mesh, p.offset.as_deref(), p.size.as_deref(), &pairs, &headers).await;
    }
    let ty = mesh_type(&plural)?;
    get_one(&s, ty, &mesh, &name, &headers, &ci).await
}

async fn put_in_mesh(
    State(s): State<ApiState>,
    Path((mesh, plural, name)): Path<(String, String, String)>,
    Query(p): Query<WriteParams>,
    headers: HeaderMap,
    ci: ConnectInfo<PeerAddr>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let ty = mesh_type(&plural)?;
    put_one(&s, ty, &mesh, &name, &headers, &ci, p, body).await
}

async fn delete_in_mesh(
    State(s): State<ApiState>,
    Path((mesh, plural, name)): Path<(String, String, String)>,
    headers: HeaderMap,
    ci: ConnectInfo<PeerAddr>,
) -> Result<Response, ApiError> {
    let ty = mesh_type(&plural)?;
    delete_one(&s, ty, &mesh, &name, &headers, &ci).await
}
