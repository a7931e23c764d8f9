//! Inspecting a Dataplane's Envoy from its zone (the incumbent's
//! `GET /meshes/{m}/dataplanes/{n}/xds|stats|clusters`, Kuma 2.14
//! `pkg/api-server/inspect_envoy_admin_endpoints.go`): what Meridian sends
//! it, and what its Envoy says through its admin interface.
//!
//! ```text
//!   REST /meshes/{m}/dataplanes/{n}/xds ──┐
//!   KDS StreamXDSConfigs (from the global)┴─▶ Inspector ─▶ xDS cache (what is sent, per type)
//!                                                         └▶ Envoy admin http://<address>:<admin port>/config_dump
//! ```
//!
//! Where the admin is: the Dataplane's `networking.address` and
//! `networking.admin.port` (default 9901, the incumbent's). Envoy's admin
//! listens on loopback by default (`meridian-zone dataplane run
//! --admin-address 127.0.0.1`), so the zone reaches it only when the
//! Dataplane runs on the zone's host with `networking.address` 127.0.0.1,
//! or when the admin is bound to an address the zone can reach. Plain HTTP,
//! GET only, on three fixed paths; the incumbent adds mTLS from an
//! `envoy-admin-ca` GlobalSecret, which Meridian does not do yet.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use meridian_core::Manager;
use meridian_sync_proto::{
    ResourceType, Spec,
    envoy_admin::{AdminAnswer, AdminKind, AdminQuery, AdminRequest},
};
use serde_json::{Value, json};

use crate::xds::cache::{Cache, ProxyId};

/// The incumbent's default Envoy admin port.
pub const DEFAULT_ADMIN_PORT: u32 = 9901;
/// How long one admin request may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest admin answer read (a config dump with every endpoint of a
/// large mesh is tens of MiB); the admin address is whatever the
/// Dataplane registered, so whoever holds its token chooses who answers.
pub const MAX_ADMIN_ANSWER_BYTES: usize = 64 << 20;
/// How much of an error answer's body is kept for the error message.
pub const MAX_ADMIN_ERROR_BYTES: usize = 1024;

/// What to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inspect {
    /// Envoy's `/config_dump` (with `?include_eds` when asked) and what
    /// Meridian sends, as JSON.
    XdsConfig { include_eds: bool },
    /// Envoy's `/stats` (`?usedonly` unless `used_only` is false), text or JSON.
    Stats { json: bool, used_only: bool },
    /// Envoy's `/clusters`, text or JSON.
    Clusters { json: bool },
}

impl Inspect {
    fn admin_path(&self) -> String {
        match *self {
            Inspect::XdsConfig { include_eds: true } => "/config_dump?include_eds".to_string(),
            Inspect::XdsConfig { include_eds: false } => "/config_dump".to_string(),
            Inspect::Stats { json, used_only } => {
                let mut q = Vec::new();
                if used_only {
                    q.push("usedonly");
                }
                if json {
                    q.push("format=json");
                }
                if q.is_empty() { "/stats".to_string() } else { format!("/stats?{}", q.join("&")) }
            }
            Inspect::Clusters { json: true } => "/clusters?format=json".to_string(),
            Inspect::Clusters { json: false } => "/clusters".to_string(),
        }
    }

    /// Whether the answer is JSON.
    pub fn is_json(&self) -> bool {
        match *self {
            Inspect::XdsConfig { .. } => true,
            Inspect::Stats { json, .. } | Inspect::Clusters { json } => json,
        }
    }
}

/// The body of an admin answer, read up to [`MAX_ADMIN_ANSWER_BYTES`]
/// (more is an error, not read further); a non-2xx answer is an error with
/// the status and the first [`MAX_ADMIN_ERROR_BYTES`] of its body.
async fn read_admin_answer(mut r: reqwest::Response) -> Result<Vec<u8>, String> {
    let status = r.status();
    let limit = if status.is_success() { MAX_ADMIN_ANSWER_BYTES } else { MAX_ADMIN_ERROR_BYTES };
    let mut body = Vec::new();
    while let Some(chunk) = r.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > limit {
            if status.is_success() {
                return Err(format!("the answer is larger than {limit} bytes; not read further"));
            }
            body.extend_from_slice(&chunk[..limit - body.len()]);
            break;
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    Ok(body)
}

/// The node id the Envoy admin at `base` reports (`/server_info`,
/// `node.id`), when it answers one (`None` when it answers without).
///
/// Errors: the admin cannot be reached (the request's error).
async fn admin_node_id(http: &reqwest::Client, base: &str) -> Result<Option<String>, String> {
    let r = http.get(format!("{base}/server_info")).send().await.map_err(|e| e.to_string())?;
    let Ok(body) = read_admin_answer(r).await else { return Ok(None) };
    let info: Option<Value> = serde_json::from_slice(&body).ok();
    Ok(info.as_ref().and_then(|i| i.pointer("/node/id")).and_then(Value::as_str).map(str::to_string))
}

/// Whether the Envoy that reported `reported` (its node id, when it said)
/// runs Dataplane `mesh`/`name` (node id `<mesh>.<name>`, as every
/// bootstrap Meridian writes). An admin that did not say is taken at its word.
fn same_node(reported: Option<String>, mesh: &str, name: &str) -> Result<(), String> {
    let expected = format!("{mesh}.{name}");
    match reported {
        Some(id) if id != expected => Err(format!("it is Envoy node {id:?}, not {expected:?}")),
        _ => Ok(()),
    }
}

/// Why an inspection has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InspectError {
    /// No such Dataplane in this zone.
    #[error("{0}")]
    NotFound(String),
    /// Its Envoy's admin did not answer (and, for a config dump, no Envoy
    /// of it is connected to this zone either).
    #[error("{0}")]
    Unreachable(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(String),
}

/// Answers inspections for the zone's REST API and for the global (over KDS).
#[derive(Clone)]
pub struct Inspector {
    manager: Manager,
    cache: Cache,
    http: reqwest::Client,
}

impl Inspector {
    pub fn new(manager: Manager, cache: Cache) -> Inspector {
        // reqwest needs a process-level provider even for plain HTTP; ring is
        // the process's one (a second call is a no-op).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().timeout(ADMIN_TIMEOUT).no_proxy().build().unwrap_or_default();
        Inspector { manager, cache, http }
    }

    /// Inspects Dataplane `mesh`/`name`: the body (JSON or text, see
    /// [`Inspect::is_json`]).
    ///
    /// Errors: [`InspectError::NotFound`] for an unknown Dataplane;
    /// [`InspectError::Unreachable`] when its admin does not answer (for a
    /// config dump, only when no stream of it is connected either: then the
    /// answer carries what Meridian sends and `envoyError`).
    pub async fn inspect(&self, mesh: &str, name: &str, what: Inspect) -> Result<Vec<u8>, InspectError> {
        let entry = self
            .manager
            .get(ResourceType::Dataplane, mesh, name)
            .await
            .map_err(|e| InspectError::Store(e.to_string()))?
            .ok_or_else(|| InspectError::NotFound(format!("Dataplane {name:?} is not registered in mesh {mesh:?}")))?;
        let Spec::Dataplane(dp) = &entry.resource.spec else {
            return Err(InspectError::NotFound(format!("{mesh}/{name} is not a Dataplane")));
        };
        let networking = dp.networking.as_ref();
        let address = networking.map(|n| n.address.clone()).unwrap_or_default();
        let port = networking.and_then(|n| n.admin.as_ref()).map_or(DEFAULT_ADMIN_PORT, |a| a.port);
        let port = if port == 0 { DEFAULT_ADMIN_PORT } else { port };
        let host = if address.contains(':') { format!("[{address}]") } else { address.clone() };
        let base = format!("http://{host}:{port}");
        let url = format!("{base}{}", what.admin_path());
        // Another Envoy may answer at that address (several Dataplanes on one
        // host with the default admin port): its data is not this one's.
        let admin = match admin_node_id(&self.http, &base).await {
            // Unreachable: asking again would only double the wait.
            Err(e) => Err(e),
            Ok(reported) => match same_node(reported, mesh, name) {
                Ok(()) => self.admin(&url).await,
                Err(e) => Err(format!("the admin at {base}: {e}")),
            },
        };
        match what {
            Inspect::XdsConfig { .. } => {
                let id = ProxyId { mesh: mesh.to_string(), name: name.to_string() };
                let sent = self.sent(&id);
                if let (Err(e), None) = (&admin, &sent) {
                    return Err(InspectError::Unreachable(format!(
                        "no Envoy of Dataplane {mesh}/{name} is connected to this zone, and its admin at {url} did not answer: {e}"
                    )));
                }
                let mut body = match &admin {
                    Ok(bytes) => serde_json::from_slice::<Value>(bytes)
                        .unwrap_or_else(|e| json!({"envoyError": format!("Envoy's config dump is not JSON: {e}")})),
                    Err(e) => json!({"envoyError": format!("Envoy's admin at {url} did not answer: {e}")}),
                };
                if let Some(obj) = body.as_object_mut() {
                    obj.insert("meridian".to_string(), sent.unwrap_or_else(|| json!({"connected": false})));
                }
                Ok(serde_json::to_vec_pretty(&body).unwrap_or_default())
            }
            _ => admin.map_err(|e| {
                InspectError::Unreachable(format!(
                    "Envoy admin of Dataplane {mesh}/{name} at {url} did not answer: {e} (the zone reaches an admin \
                     bound to loopback only when the Dataplane runs on its host; see networking.admin.port)"
                ))
            }),
        }
    }

    async fn admin(&self, url: &str) -> Result<Vec<u8>, String> {
        let r = self.http.get(url).send().await.map_err(|e| e.to_string())?;
        read_admin_answer(r).await
    }

    /// What this zone sends a connected Dataplane: per type URL, resource
    /// name → version; the generator's warnings; `None` when none of its
    /// Envoys is connected here.
    fn sent(&self, id: &ProxyId) -> Option<Value> {
        let state: Arc<crate::xds::cache::ProxyState> = self.cache.state(id)?;
        Some(match &state.config {
            Ok(config) => {
                let types: BTreeMap<&String, BTreeMap<&String, &String>> =
                    config.iter().map(|(t, set)| (t, set.iter().map(|(n, d)| (n, &d.version)).collect())).collect();
                json!({"connected": true, "resources": types, "warnings": state.warnings})
            }
            Err(e) => json!({"connected": true, "error": e.to_string()}),
        })
    }
}

impl From<&AdminRequest> for Inspect {
    fn from(r: &AdminRequest) -> Inspect {
        match r.kind {
            AdminKind::XdsConfig => Inspect::XdsConfig { include_eds: r.include_eds },
            AdminKind::Stats => Inspect::Stats { json: r.json, used_only: r.used_only },
            AdminKind::Clusters => Inspect::Clusters { json: r.json },
        }
    }
}

impl Inspector {
    /// Answers a request the global sent over KDS (Dataplanes only).
    pub async fn answer(&self, r: &AdminRequest) -> AdminAnswer {
        if r.resource_type != "Dataplane" {
            return Err(format!("this zone inspects Dataplanes, not {:?}", r.resource_type));
        }
        self.inspect(&r.mesh, &r.name, Inspect::from(r)).await.map_err(|e| e.to_string())
    }
}

/// The body of an inspection as an HTTP response (JSON or text).
pub fn body_response(json: bool, body: Vec<u8>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let ct = if json { "application/json" } else { "text/plain; charset=utf-8" };
    ([(axum::http::header::CONTENT_TYPE, ct)], body).into_response()
}

#[derive(Clone)]
struct RouteState {
    api: meridian_rest::ApiState,
    inspector: Inspector,
}

/// `GET /meshes/{mesh}/dataplanes/{name}/xds|stats|clusters` (admin only:
/// a config dump shows the whole topology).
pub fn routes(api: meridian_rest::ApiState, inspector: Inspector) -> axum::Router {
    let mut router = axum::Router::new();
    for kind in [AdminKind::XdsConfig, AdminKind::Stats, AdminKind::Clusters] {
        router = router.route(
            &format!("/meshes/{{mesh}}/dataplanes/{{name}}/{}", kind.segment()),
            axum::routing::get(
                move |state: axum::extract::State<RouteState>,
                      path: axum::extract::Path<(String, String)>,
                      query: axum::extract::Query<AdminQuery>,
                      headers: axum::http::HeaderMap,
                      ci: axum::extract::ConnectInfo<meridian_rest::server::PeerAddr>| async move {
                    handle(state.0, path.0, query.0, headers, ci, kind).await
                },
            ),
        );
    }
    router.with_state(RouteState { api, inspector })
}

async fn handle(
    s: RouteState,
    (mesh, name): (String, String),
    q: AdminQuery,
    headers: axum::http::HeaderMap,
    ci: axum::extract::ConnectInfo<meridian_rest::server::PeerAddr>,
    kind: AdminKind,
) -> Result<axum::response::Response, meridian_rest::error::ApiError> {
    use meridian_rest::error::ApiError;
    meridian_rest::require_admin(&s.api, &headers, &ci)?;
    let request = q.request(kind, &mesh, &name).map_err(|(field, reason)| ApiError::field(field, reason))?;
    let what = Inspect::from(&request);
    match s.inspector.inspect(&mesh, &name, what).await {
        Ok(body) => Ok(body_response(what.is_json(), body)),
        Err(InspectError::NotFound(m)) => Err(ApiError::not_found(m)),
        Err(InspectError::Unreachable(m)) => {
            Err(ApiError::new(axum::http::StatusCode::BAD_GATEWAY, "Envoy admin unreachable", m))
        }
        Err(InspectError::Store(m)) => {
            Err(ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "Store unavailable", m))
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An "Envoy admin" answering `status` with a body that never ends
    /// (1 MiB writes until the reader goes away).
    async fn endless_admin(status: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let head = format!("HTTP/1.1 {status}\r\nconnection: close\r\n\r\n");
                    if s.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = vec![b'x'; 1 << 20];
                    while s.write_all(&chunk).await.is_ok() {}
                });
            }
        });
        format!("http://{addr}/config_dump")
    }

    /// ADVERSARY F10: `inspect dataplane demo-app-1` answered with the
    /// gateway's Envoy, which held the default admin port on the same host.
    #[tokio::test]
    async fn an_admin_of_another_node_is_not_taken_for_this_one() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let body = r#"{"node": {"id": "default.gateway-instance-1"}}"#;
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                let _ = s.write_all(format!("{head}{body}").as_bytes()).await;
            }
        });
        let http = reqwest::Client::builder().no_proxy().build().expect("client");
        let reported = admin_node_id(&http, &format!("http://{addr}")).await.expect("reachable");
        assert_eq!(reported.as_deref(), Some("default.gateway-instance-1"));
        let e = same_node(reported.clone(), "default", "demo-app-1").expect_err("another node");
        assert!(e.contains("\"default.gateway-instance-1\", not \"default.demo-app-1\""), "{e}");
        assert_eq!(same_node(reported, "default", "gateway-instance-1"), Ok(()));
        assert_eq!(same_node(None, "default", "demo-app-1"), Ok(()), "an admin that does not say");
    }

    /// ADVERSARY F5: the zone read an admin answer of any size into memory
    /// (the address is the Dataplane's, chosen by whoever holds its token).
    #[tokio::test]
    async fn an_endless_admin_answer_is_cut_off() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().no_proxy().build().expect("client");
        let url = endless_admin("200 OK").await;
        let r = http.get(&url).send().await.expect("answer");
        let e = read_admin_answer(r).await.expect_err("cut off");
        assert!(e.contains(&format!("larger than {MAX_ADMIN_ANSWER_BYTES} bytes")), "{e}");
        let url = endless_admin("500 Internal Server Error").await;
        let r = http.get(&url).send().await.expect("answer");
        let e = read_admin_answer(r).await.expect_err("an error");
        assert!(e.starts_with("500 Internal Server Error: xxx"), "{}", &e[..40.min(e.len())]);
        assert!(e.len() < MAX_ADMIN_ERROR_BYTES + 100, "error text of {} bytes", e.len());
    }
}
