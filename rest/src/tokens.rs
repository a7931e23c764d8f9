//! Token endpoints shared by the global and standalone zones (admin only):
//!
//! - `POST /tokens/dataplane` `{"name", "mesh", "tags": {k: [v]}, "type",
//!   "validFor"}` → the token, as plain text (the incumbent's endpoint and
//!   body; `type` is `dataplane`, or `ingress` for a ZoneIngress token:
//!   `name` only, no mesh, no tags). A federated zone answers 403:
//!   Dataplane tokens come from the global, whose keys reach every zone.
//! - `GET /tokens/{kind}/signing-keys` → `{"kind", "serials", "signing"}`.
//! - `POST /tokens/{kind}/signing-keys` → rotate: a new key with the next
//!   serial signs from now on; older keys keep verifying. Answers like GET.
//! - `DELETE /tokens/{kind}/signing-keys/{serial}` → remove a key: tokens it
//!   signed stop working. The newest key cannot be removed (rotate first).
//!
//! `{kind}` is `dataplane` or `zone` (zone only at the global).

use std::{collections::BTreeMap, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{ConnectInfo, Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use meridian_sync_proto::universal;
use meridian_tokens::{DataplaneRequest, TokenError, TokenKind, Tokens, keys::KeyError};
use serde::Deserialize;
use serde_json::json;

use crate::{ApiState, error::ApiError, handlers::require_admin, server::PeerAddr};

/// Default validity of an issued token when the request gives none (one year).
pub const DEFAULT_VALID_FOR: Duration = Duration::from_secs(365 * 24 * 3600);

/// Who issues here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Issuer {
    /// The global: zone and Dataplane tokens.
    Global,
    /// A standalone zone: Dataplane tokens, with its own keys.
    StandaloneZone,
    /// A federated zone: nothing (tokens come from the global).
    FederatedZone,
}

#[derive(Clone)]
struct TokenState {
    api: ApiState,
    tokens: Tokens,
    issuer: Issuer,
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Store unavailable", e.to_string())
    }
}

/// The token routes of a control plane issuing as `issuer`.
pub fn routes(api: ApiState, tokens: Tokens, issuer: Issuer) -> Router {
    Router::new()
        .route("/tokens/dataplane", post(issue_dataplane))
        .route("/tokens/{kind}/signing-keys", get(list_keys).post(rotate_key))
        .route("/tokens/{kind}/signing-keys/{serial}", delete(remove_key))
        .with_state(TokenState { api, tokens, issuer })
}

/// Parses a duration like `24h`, `30d`, `8760h` (`field` names it in the error).
pub fn parse_valid_for(field: &str, v: Option<&str>) -> Result<Duration, ApiError> {
    match v.map(str::trim) {
        None | Some("") => Ok(DEFAULT_VALID_FOR),
        Some(v) => humantime::parse_duration(v)
            .map_err(|e| ApiError::field(field, format!("{v:?} is not a duration like 24h or 30d: {e}"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DataplaneTokenBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    mesh: Option<String>,
    #[serde(default)]
    tags: Option<BTreeMap<String, Vec<String>>>,
    #[serde(default, rename = "type")]
    proxy_type: Option<String>,
    #[serde(default, rename = "validFor", alias = "valid_for")]
    valid_for: Option<String>,
}

async fn issue_dataplane(
    State(s): State<TokenState>,
    headers: HeaderMap,
    ci: ConnectInfo<PeerAddr>,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_admin(&s.api, &headers, &ci)?;
    if s.issuer == Issuer::FederatedZone {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "this zone is federated: Dataplane tokens are issued by the global (meridianctl --api-url <global API> generate dataplane-token ...), whose keys reach every zone",
        ));
    }
    let req: DataplaneTokenBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "request body must be {{\"mesh\": MESH, \"name\": NAME, \"tags\": {{KEY: [VALUE]}}, \"validFor\": DURATION}}: {e}"
        ))
    })?;
    if matches!(req.proxy_type.as_deref(), Some("ingress" | "zone-ingress")) {
        return issue_ingress(&s, req).await;
    }
    let mesh = req.mesh.unwrap_or_default();
    universal::check_mesh_name(&mesh).map_err(|e| ApiError::field("mesh", e.to_string()))?;
    let name = req.name.unwrap_or_default();
    if !name.is_empty() {
        universal::check_name(&name).map_err(|e| ApiError::field("name", e.to_string()))?;
    }
    let tags = req.tags.unwrap_or_default();
    for (k, values) in &tags {
        if k.is_empty() {
            return Err(ApiError::field("tags", "a tag key cannot be empty"));
        }
        if values.is_empty() || values.iter().any(String::is_empty) {
            return Err(ApiError::field(&format!("tags[{k:?}]"), "needs at least one non-empty value"));
        }
    }
    if name.is_empty() && tags.is_empty() {
        return Err(ApiError::field(
            "name",
            "give the Dataplane's name or at least one tag (e.g. kuma.io/service): a token bound to neither would admit any Dataplane of the mesh",
        ));
    }
    match req.proxy_type.as_deref() {
        None | Some("") | Some("dataplane") => {}
        Some(other) => {
            return Err(ApiError::field("type", format!("{other:?} is not supported: \"dataplane\" or \"ingress\"")));
        }
    }
    let valid_for = parse_valid_for("validFor", req.valid_for.as_deref())?;
    if !s.api.manager.mesh_exists(&mesh).await? {
        return Err(ApiError::field("mesh", format!("mesh {mesh:?} does not exist")));
    }
    let (token, claims) =
        s.tokens.issue_dataplane(&DataplaneRequest { name, mesh, tags, valid_for }).await.map_err(ApiError::from)?;
    tracing::info!(mesh = %claims.mesh, name = %claims.name, jti = %claims.jti, exp = claims.exp, "issued Dataplane token");
    Ok(token.into_response())
}

/// A ZoneIngress token (`"type": "ingress"`): a Dataplane token (signed
/// by the Dataplane keys every zone holds) with an empty `Mesh` and the
/// ingress's `Name`, no tags. The incumbent admits ingresses with a zone
/// token (scope `ingress`), which would also let its holder act as the zone
/// against the global; this one admits only the named ZoneIngress (its
/// registration and its xDS stream), and no Dataplane (they all have a mesh).
async fn issue_ingress(s: &TokenState, req: DataplaneTokenBody) -> Result<Response, ApiError> {
    if req.mesh.as_deref().is_some_and(|m| !m.is_empty()) {
        return Err(ApiError::field("mesh", "must be empty for an ingress token: a ZoneIngress is in no mesh"));
    }
    if req.tags.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::field("tags", "must be empty for an ingress token: it names one ZoneIngress"));
    }
    let name = req.name.unwrap_or_default();
    universal::check_name(&name).map_err(|e| ApiError::field("name", e.to_string()))?;
    let valid_for = parse_valid_for("validFor", req.valid_for.as_deref())?;
    let request = DataplaneRequest { name, mesh: String::new(), tags: BTreeMap::new(), valid_for };
    let (token, claims) = s.tokens.issue_dataplane(&request).await.map_err(ApiError::from)?;
    tracing::info!(name = %claims.name, jti = %claims.jti, exp = claims.exp, "issued ZoneIngress token");
    Ok(token.into_response())
}

fn kind(s: &TokenState, kind: &str) -> Result<TokenKind, ApiError> {
    match TokenKind::parse(kind) {
        Some(TokenKind::Zone) if s.issuer != Issuer::Global => {
            Err(ApiError::not_found("zone tokens are issued by the global only"))
        }
        Some(k) if s.issuer != Issuer::FederatedZone => Ok(k),
        Some(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "this zone is federated: signing keys are managed on the global",
        )),
        None => Err(ApiError::not_found(format!("unknown token type {kind:?}: dataplane or zone"))),
    }
}

async fn key_summary(s: &TokenState, k: TokenKind) -> Result<Json<serde_json::Value>, ApiError> {
    let serials = s.tokens.keys(k).serials().await?;
    Ok(Json(json!({"kind": k.type_claim(), "serials": serials, "signing": serials.last()})))
}

async fn list_keys(
    State(s): State<TokenState>,
    Path(k): Path<String>,
    headers: HeaderMap,
    ci: ConnectInfo<PeerAddr>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_admin(&s.api, &headers, &ci)?;
    let k = kind(&s, &k)?;
    key_summary(&s, k).await
}

async fn rotate_key(
    State(s): State<TokenState>,
    Path(k): Path<String>,
    headers: HeaderMap,
    ci: ConnectInfo<PeerAddr>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_admin(&s.api, &headers, &ci)?;
    let k = kind(&s, &k)?;
    s.tokens.keys(k).rotate().await?;
    key_summary(&s, k).await
}

async fn remove_key(
    State(s): State<TokenState>,
    Path((k, serial)): Path<(String, String)>,
    headers: HeaderMap,
    ci: ConnectInfo<PeerAddr>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_admin(&s.api, &headers, &ci)?;
    let k = kind(&s, &k)?;
    let serial: u64 =
        serial.parse().map_err(|_| ApiError::field("serial", format!("{serial:?} is not a key serial")))?;
    match s.tokens.keys(k).remove(serial).await {
        Ok(()) => key_summary(&s, k).await,
        Err(e @ KeyError::NotFound { .. }) => Err(ApiError::not_found(e.to_string())),
        Err(e @ KeyError::Signing { .. }) => Err(ApiError::new(StatusCode::CONFLICT, "Conflict", e.to_string())),
        Err(e @ KeyError::Store(_)) => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Store unavailable", e.to_string()))
        }
    }
}
