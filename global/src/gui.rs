//! The web GUI at `/gui`: zones, meshes, gateways, routes, Dataplanes and
//! Secrets (names only), each resource's YAML and its propagation status per
//! zone and per gateway Dataplane. Read-only; where an action would go it
//! shows the `meridianctl` command to copy. The incumbent serves its GUI at
//! the same path of its API port (`http://global:5681/gui`).
//!
//! ```text
//!   browser ──GET /gui/...──▶ gui::routes ──▶ auth (admin: token header or cookie, or trusted loopback)
//!                                 │
//!                                 ├─▶ pages (maud: HTML, escaped by construction) ◀── Manager (lists)
//!                                 └─▶ status ──internal GET …/_status──▶ the API router (the contract)
//!                                                └─ without it: DataplaneInsight ACK/NACK
//!   gui.js: every 2 s re-fetches the page's <main> (`?fragment=main`) and swaps it in
//! ```
//!
//! Everything is server-rendered HTML, usable without JavaScript; the one
//! script only refreshes. Files are embedded in the binary (`include_str!`).
//!
//! Auth: the API's rules ([`meridian_rest::auth`]) for the admin, as the
//! GUI lists Secret names: a loopback caller under a loopback `Host`, or the
//! admin token, either as `Authorization: Bearer <token>` or in the cookie
//! [`TOKEN_COOKIE`] set by the login form (`POST /gui/login`; `HttpOnly`,
//! `SameSite=Strict`, `Path=/gui`, `Secure` when the API serves TLS). Anyone else gets 401 and the login form.
//! Every answer carries a Content-Security-Policy allowing only this
//! origin's script and style (no inline script), on top of maud's escaping.

mod envoy;
mod pages;
mod status;

use std::net::IpAddr;

use axum::{
    Form, Router,
    extract::{ConnectInfo, Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};
use meridian_rest::{ApiState, auth::Auth, server::PeerAddr};
use serde::Deserialize;

use crate::kds::envoy_admin::EnvoyAdmin;

/// The cookie that carries the admin token for browsers (percent-encoded).
pub const TOKEN_COOKIE: &str = "meridian-token";

/// How often the page's script refreshes `<main>`, in milliseconds.
pub const REFRESH_MILLIS: u64 = 2000;

const CSS: &str = include_str!("gui/assets/gui.css");
const JS: &str = include_str!("gui/assets/gui.js");

/// What the GUI's handlers share: the API's state (Manager, auth, identity)
/// and the API router, which answers the propagation status (`…/_status`)
/// through an internal request.
#[derive(Clone)]
pub struct GuiState {
    pub api: ApiState,
    pub router: Router,
    /// The API speaks TLS itself: the token cookie is marked `Secure`.
    pub tls: bool,
    /// The zones' inspection streams: a gateway Dataplane's Envoy config.
    pub admin: EnvoyAdmin,
}

/// The GUI's routes under `/gui`; merge them into the API router. `router`
/// is the API router itself (without the GUI), asked for `…/_status`;
/// `tls` says the API is served over TLS (the cookie is then `Secure`);
/// `admin` asks zones for a gateway Dataplane's Envoy config.
pub fn routes(api: ApiState, router: Router, tls: bool, admin: EnvoyAdmin) -> Router {
    Router::new()
        .route("/gui", get(home))
        .route("/gui/", get(home))
        .route("/gui/login", get(login_page).post(login))
        .route("/gui/assets/gui.css", get(|| async { asset("text/css; charset=utf-8", CSS) }))
        .route("/gui/assets/gui.js", get(|| async { asset("text/javascript; charset=utf-8", JS) }))
        .route("/gui/zones", get(home))
        .route("/gui/meshes", get(home))
        .route("/gui/meshes/{mesh}", get(mesh))
        .route("/gui/meshes/{mesh}/{plural}/{name}", get(in_mesh))
        .route("/gui/{plural}/{name}", get(top))
        .with_state(GuiState { api, router, tls, admin })
}

/// `?fragment=main`: only the inside of `<main>`, for the live refresh.
#[derive(Debug, Deserialize, Default)]
struct PageParams {
    fragment: Option<String>,
}

impl PageParams {
    fn fragment(&self) -> bool {
        self.fragment.as_deref() == Some("main")
    }
}

/// Who asks: the request's headers with the cookie's token as a bearer
/// token (when no `Authorization` header is sent), and the peer address.
#[derive(Clone)]
pub(crate) struct Caller {
    pub headers: HeaderMap,
    pub peer: IpAddr,
}

/// Why a caller was refused; answered 401 with the login form.
struct Denied(&'static str);

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        html(StatusCode::UNAUTHORIZED, pages::login(self.0))
    }
}

/// Admits admins only (see the module doc); anyone else gets 401 and the
/// login form, with the reason.
fn admit(s: &GuiState, headers: &HeaderMap, peer: PeerAddr) -> Result<Caller, Denied> {
    let mut headers = headers.clone();
    if !Auth::presented(&headers)
        && let Some(token) = cookie_token(&headers)
        && let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}"))
    {
        headers.insert(header::AUTHORIZATION, v);
    }
    let peer_ip = peer.0.ip();
    if s.api.auth.is_admin(&headers, Some(peer_ip)) {
        return Ok(Caller { headers, peer: peer_ip });
    }
    let reason = if Auth::presented(&headers) {
        "the admin token is not valid"
    } else {
        "the GUI needs the admin token: enter it below (it is kept in an HttpOnly cookie for /gui), or send \
         'Authorization: Bearer <token>'; loopback callers are trusted without it only under a Host of \
         localhost, 127.0.0.0/8, [::1] or an --api-host name"
    };
    Err(Denied(reason))
}

/// The admin token in the [`TOKEN_COOKIE`] cookie, percent-decoded.
fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == TOKEN_COOKIE)
        .map(|(_, v)| form_urlencoded::parse(format!("t={v}").as_bytes()).map(|(_, v)| v.into_owned()).collect())
        .filter(|t: &String| !t.is_empty())
}

/// The headers every GUI answer carries: no caching, no sniffing, no
/// framing, and script and style from this origin only.
fn hardened(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    resp
}

fn html(status: StatusCode, markup: maud::Markup) -> Response {
    hardened((status, markup).into_response())
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    hardened(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

fn not_found(what: &str) -> Response {
    html(StatusCode::NOT_FOUND, pages::error_page("Not found", what))
}

/// A page or, for `?fragment=main`, only its `<main>` content.
fn page(params: &PageParams, title: &str, body: maud::Markup) -> Response {
    if params.fragment() { html(StatusCode::OK, body) } else { html(StatusCode::OK, pages::layout(title, body)) }
}

fn store_error(e: impl std::fmt::Display) -> Response {
    html(StatusCode::SERVICE_UNAVAILABLE, pages::error_page("The store did not answer", &e.to_string()))
}

async fn home(
    State(s): State<GuiState>,
    Query(p): Query<PageParams>,
    headers: HeaderMap,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
) -> Response {
    if let Err(denied) = admit(&s, &headers, peer) {
        return denied.into_response();
    }
    match pages::home(&s.api).await {
        Ok(body) => page(&p, "Zones and meshes", body),
        Err(e) => store_error(e),
    }
}

async fn mesh(
    State(s): State<GuiState>,
    Path(mesh): Path<String>,
    Query(p): Query<PageParams>,
    headers: HeaderMap,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
) -> Response {
    if let Err(denied) = admit(&s, &headers, peer) {
        return denied.into_response();
    }
    match pages::mesh(&s.api, &mesh).await {
        Ok(Some(body)) => page(&p, &format!("Mesh {mesh}"), body),
        Ok(None) => not_found(&format!("mesh {mesh:?} does not exist")),
        Err(e) => store_error(e),
    }
}

async fn in_mesh(
    State(s): State<GuiState>,
    Path((mesh, plural, name)): Path<(String, String, String)>,
    Query(p): Query<PageParams>,
    headers: HeaderMap,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
) -> Response {
    let caller = match admit(&s, &headers, peer) {
        Ok(c) => c,
        Err(denied) => return denied.into_response(),
    };
    resource(&s, &caller, &p, &plural, &mesh, &name, true).await
}

async fn top(
    State(s): State<GuiState>,
    Path((plural, name)): Path<(String, String)>,
    Query(p): Query<PageParams>,
    headers: HeaderMap,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
) -> Response {
    let caller = match admit(&s, &headers, peer) {
        Ok(c) => c,
        Err(denied) => return denied.into_response(),
    };
    resource(&s, &caller, &p, &plural, "", &name, false).await
}

/// One resource's page: `in_mesh` says which kind of path named it.
async fn resource(
    s: &GuiState,
    caller: &Caller,
    p: &PageParams,
    plural: &str,
    mesh: &str,
    name: &str,
    in_mesh: bool,
) -> Response {
    let Some(ty) = meridian_sync_proto::ResourceType::from_plural(plural).filter(|t| t.is_mesh_scoped() == in_mesh)
    else {
        return not_found(&format!("no resource type {plural:?} here"));
    };
    let entry = match s.api.manager.get(ty, mesh, name).await {
        Ok(Some(e)) => e,
        Ok(None) => return not_found(&format!("{ty} {name:?} not found")),
        Err(e) => return store_error(e),
    };
    let status = status::of(s, caller, &entry).await;
    let envoy = match &entry.resource.spec {
        meridian_sync_proto::Spec::Dataplane(d) if d.networking.as_ref().is_some_and(|n| n.gateway.is_some()) => {
            Some(envoy::section(s, mesh, name).await)
        }
        _ => None,
    };
    let body = pages::resource(&entry, &status, envoy);
    page(p, &format!("{ty} {name}"), body)
}

async fn login_page() -> Response {
    html(
        StatusCode::OK,
        pages::login("Enter the admin token (<data-dir>/admin-token of the global, or --admin-token)."),
    )
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// `POST /gui/login` (form `token=...`): a valid admin token is kept in
/// the [`TOKEN_COOKIE`] cookie and the browser sent to `/gui`; a wrong one
/// gets 401 and the form again, and no cookie.
async fn login(
    State(s): State<GuiState>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    Form(form): Form<LoginForm>,
) -> Response {
    let token = form.token.trim();
    let mut h = HeaderMap::new();
    let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) else {
        return html(StatusCode::UNAUTHORIZED, pages::login("the admin token is not valid"));
    };
    h.insert(header::AUTHORIZATION, v);
    if token.is_empty() || !s.api.auth.is_admin(&h, Some(peer.0.ip())) {
        return html(StatusCode::UNAUTHORIZED, pages::login("the admin token is not valid"));
    }
    let value: String = form_urlencoded::byte_serialize(token.as_bytes()).collect();
    let secure = if s.tls { "; Secure" } else { "" };
    let cookie = format!("{TOKEN_COOKIE}={value}; Path=/gui; HttpOnly; SameSite=Strict{secure}");
    let mut resp = Redirect::to("/gui").into_response();
    if let Ok(c) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    hardened(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_token_is_found_and_decoded() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=b; meridian-token=ab%2Bc%3D; c=d"));
        assert_eq!(cookie_token(&h).as_deref(), Some("ab+c="));
        h.insert(header::COOKIE, HeaderValue::from_static("meridian-token="));
        assert_eq!(cookie_token(&h), None);
        h.insert(header::COOKIE, HeaderValue::from_static("other=1"));
        assert_eq!(cookie_token(&h), None);
    }
}
