//! Tokens at the global: zone tokens (`POST /tokens/zone`), and the
//! shared token routes ([`meridian_rest::tokens`]: Dataplane tokens,
//! signing-key rotation and removal). The tokens themselves (ES256 JWTs,
//! keys in the store, revocation lists) are [`meridian_tokens`].

use axum::{
    extract::{ConnectInfo, State},
    http::HeaderMap,
    response::IntoResponse,
};
use meridian_rest::{ApiState, error::ApiError, tokens::Issuer};
use meridian_tokens::Tokens;

#[derive(serde::Deserialize)]
struct ZoneTokenRequest {
    zone: Option<String>,
    #[serde(rename = "validFor", alias = "valid_for")]
    valid_for: Option<String>,
}

/// `POST /tokens/zone {"zone": "zone-1", "validFor": "8760h"}` → the token,
/// as plain text (admin only); plus the shared token routes.
pub fn routes(state: ApiState, tokens: Tokens) -> axum::Router {
    async fn issue(
        State((state, tokens)): State<(ApiState, Tokens)>,
        headers: HeaderMap,
        ci: ConnectInfo<meridian_rest::server::PeerAddr>,
        body: axum::body::Bytes,
    ) -> Result<axum::response::Response, ApiError> {
        meridian_rest::require_admin(&state, &headers, &ci)?;
        let req: ZoneTokenRequest = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(format!("request body must be {{\"zone\": NAME, \"validFor\": DURATION}}: {e}"))
        })?;
        let zone = req.zone.unwrap_or_default();
        meridian_sync_proto::kds::check_zone_name(&zone).map_err(|r| ApiError::field("zone", r))?;
        let valid_for = meridian_rest::tokens::parse_valid_for("validFor", req.valid_for.as_deref())?;
        let (token, claims) = tokens.issue_zone(&zone, valid_for).await?;
        tracing::info!(zone = %zone, jti = %claims.jti, exp = claims.exp, "issued zone token");
        Ok(token.into_response())
    }
    axum::Router::new()
        .route("/tokens/zone", axum::routing::post(issue))
        .with_state((state.clone(), tokens.clone()))
        .merge(meridian_rest::tokens::routes(state, tokens, Issuer::Global))
}
