//! Zone-only REST endpoints, merged into the shared API router.

use std::net::SocketAddr;

use axum::{
    Router,
    extract::{Path, Query, State},
    http::header,
    response::{IntoResponse, Response},
    routing::get,
};
use meridian_rest::{ApiState, error::ApiError};
use meridian_sync_proto::ResourceType;
use serde::Deserialize;

use crate::dataplane::bootstrap::{BootstrapParams, XdsTls, render};

/// How the zone's xDS server is reached, for the bootstraps it hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XdsTransport {
    /// `--xds-plaintext`.
    Plaintext,
    /// TLS; the CA's PEM when the zone generated it (with an operator's
    /// `--xds-tls-cert` the zone does not know the CA: bootstraps come from
    /// `meridian-zone dataplane bootstrap --ca-cert` instead).
    Tls { ca_pem: Option<String> },
}

#[derive(Clone)]
struct BootstrapState {
    api: ApiState,
    /// The address the zone's xDS server listens on.
    xds_addr: SocketAddr,
    transport: XdsTransport,
}

#[derive(Debug, Deserialize)]
struct BootstrapQuery {
    /// `host:port` Envoy should dial; default: this zone's xDS address
    /// (127.0.0.1 when it listens on every interface).
    #[serde(rename = "xdsAddress")]
    xds_address: Option<String>,
    /// Envoy's admin address; default 127.0.0.1:9901.
    #[serde(rename = "adminAddress")]
    admin_address: Option<String>,
    /// `delta` (default) or `sotw`.
    #[serde(rename = "xdsMode")]
    xds_mode: Option<String>,
}

/// `GET /meshes/{mesh}/dataplanes/{name}/_bootstrap`: the Envoy bootstrap
/// (YAML) for a registered Dataplane, as `meridian-zone dataplane bootstrap`
/// prints it (over TLS with the zone's generated xDS CA unless the zone
/// serves plaintext).
pub fn routes(api: ApiState, xds_addr: SocketAddr, transport: XdsTransport) -> Router {
    Router::new().route("/meshes/{mesh}/dataplanes/{name}/_bootstrap", get(bootstrap)).with_state(BootstrapState {
        api,
        xds_addr,
        transport,
    })
}

async fn bootstrap(
    State(s): State<BootstrapState>,
    Path((mesh, name)): Path<(String, String)>,
    Query(q): Query<BootstrapQuery>,
) -> Result<Response, ApiError> {
    if s.api.manager.get(ResourceType::Dataplane, &mesh, &name).await?.is_none() {
        return Err(ApiError::not_found(format!(
            "Dataplane {name:?} is not registered in mesh {mesh:?}; PUT it to /meshes/{mesh}/dataplanes/{name} first"
        )));
    }
    let default_xds = if s.xds_addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", s.xds_addr.port())
    } else {
        s.xds_addr.to_string()
    };
    let xds_address = q.xds_address.unwrap_or(default_xds);
    let admin_address: SocketAddr = q
        .admin_address
        .as_deref()
        .unwrap_or("127.0.0.1:9901")
        .parse()
        .map_err(|_| ApiError::field("adminAddress", "must be ip:port"))?;
    let delta = match q.xds_mode.as_deref() {
        None | Some("delta") => true,
        Some("sotw") => false,
        Some(other) => return Err(ApiError::field("xdsMode", format!("{other:?} is not delta or sotw"))),
    };
    let tls = match &s.transport {
        XdsTransport::Plaintext => None,
        XdsTransport::Tls { ca_pem: Some(ca_pem) } => Some(XdsTls { ca_pem: ca_pem.clone() }),
        XdsTransport::Tls { ca_pem: None } => {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "Conflict",
                "this zone serves xDS with --xds-tls-cert, whose CA it does not know: use `meridian-zone dataplane bootstrap --ca-cert CA`",
            ));
        }
    };
    let params =
        BootstrapParams { mesh: &mesh, name: &name, xds_address: &xds_address, admin_address, delta, tls, token: None };
    let yaml = render(&params).map_err(|e| ApiError::field("xdsAddress", format!("{e:#}")))?;
    Ok(([(header::CONTENT_TYPE, "application/yaml")], yaml).into_response())
}
