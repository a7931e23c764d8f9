//! The incumbent's error body, and how failures map to HTTP statuses.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;

use meridian_core::ManagerError;

/// One field-level reason in an error body.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InvalidParameter {
    pub field: String,
    pub reason: String,
}

/// `{"title": ..., "details": ..., "invalid_parameters": [...]}` with a status.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub title: String,
    pub details: String,
    pub invalid_parameters: Vec<InvalidParameter>,
}

#[derive(Serialize)]
struct Body<'a> {
    title: &'a str,
    details: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    invalid_parameters: &'a [InvalidParameter],
}

impl ApiError {
    pub fn new(status: StatusCode, title: impl Into<String>, details: impl Into<String>) -> ApiError {
        ApiError { status, title: title.into(), details: details.into(), invalid_parameters: Vec::new() }
    }

    pub fn bad_request(details: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "Bad Request", details)
    }

    pub fn invalid(details: impl Into<String>, params: Vec<InvalidParameter>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            title: "Invalid resource".into(),
            details: details.into(),
            invalid_parameters: params,
        }
    }

    pub fn field(field: &str, reason: impl Into<String>) -> ApiError {
        let reason = reason.into();
        ApiError::invalid(format!("{field}: {reason}"), vec![InvalidParameter { field: field.to_string(), reason }])
    }

    pub fn not_found(details: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "Not Found", details)
    }

    pub fn unauthorized(details: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", details)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body { title: &self.title, details: &self.details, invalid_parameters: &self.invalid_parameters };
        (self.status, Json(body)).into_response()
    }
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> ApiError {
        let details = e.to_string();
        match e {
            ManagerError::NotFound { .. } => ApiError::not_found(details),
            ManagerError::MeshNotFound(_) => ApiError::field("mesh", details),
            ManagerError::Invalid(inv) => ApiError::invalid(
                details,
                inv.violations.into_iter().map(|v| InvalidParameter { field: v.field, reason: v.message }).collect(),
            ),
            ManagerError::Conflict { .. } => ApiError::new(StatusCode::CONFLICT, "Conflict", details),
            ManagerError::Forbidden(_) => ApiError::new(StatusCode::FORBIDDEN, "Operation not allowed", details),
            ManagerError::TooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "Resource too large", details)
            }
            ManagerError::Corrupt(..) => {
                tracing::error!(error = %details, "store failure");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Store unavailable", details)
            }
            ManagerError::Store(_) => {
                tracing::error!(error = %details, "store failure");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Store unavailable",
                    format!(
                        "the resource store (database) did not answer: {details}; \
                         retry when it is back (--store-acquire-timeout bounds the wait)"
                    ),
                )
            }
        }
    }
}

/// The answer to a Dataplane token refused at the API: 403 when the token is
/// valid but for another Dataplane, 401 otherwise (503 when the store cannot
/// be read); the reason either way.
pub fn token_refusal(e: &meridian_tokens::TokenError) -> ApiError {
    match e {
        meridian_tokens::TokenError::Store(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Store unavailable", e.to_string())
        }
        e if e.is_forbidden() => ApiError::new(StatusCode::FORBIDDEN, "Forbidden", e.to_string()),
        e => ApiError::unauthorized(e.to_string()),
    }
}
