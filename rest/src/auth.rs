//! Who may write: the admin token, required for writes and Secrets from any
//! address but loopback (loopback can be made to need it too).
//!
//! Loopback trust is guarded against DNS rebinding: a page served from
//! `evil.example` whose name the attacker re-points at 127.0.0.1 makes the
//! victim's browser call the API from loopback, but with `Host: evil.example`.
//! So a loopback peer is trusted only when the request names the API by a
//! loopback name or address (`localhost`, `127.0.0.0/8`, `[::1]`, any port) or
//! by a configured API host name (`--api-host`). And a request that presents
//! a token is judged by that token alone: a wrong one is refused (401) even
//! from loopback, reads included ([`crate::handlers::refuse_wrong_token`]).

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use base64::Engine;
use http::HeaderMap;
use rand::RngCore;

/// The admin credential and the loopback policy.
#[derive(Clone)]
pub struct Auth {
    admin_token: String,
    /// Requests from 127.0.0.0/8 and ::1 that present no token count as
    /// authorised, when their `Host` passes [`Auth::trusted_host`].
    trust_loopback: bool,
    /// Extra host names (lowercase, no port) under which loopback callers are
    /// trusted: `--api-host`.
    api_hosts: Vec<String>,
    /// In a zone: Dataplane tokens admit the registration of the Dataplane
    /// they are for (PUT/DELETE `/meshes/{m}/dataplanes/{n}`), as an
    /// alternative to the admin token.
    dataplane_tokens: Option<meridian_tokens::Tokens>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("trust_loopback", &self.trust_loopback)
            .field("api_hosts", &self.api_hosts)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// `admin_token` is compared in constant time; `trust_loopback` lets
    /// loopback callers without a token act as admin (under a loopback `Host`).
    pub fn new(admin_token: String, trust_loopback: bool) -> Auth {
        Auth { admin_token, trust_loopback, api_hosts: Vec::new(), dataplane_tokens: None }
    }

    /// Lets Dataplane tokens checked by `tokens` register (PUT) and
    /// deregister (DELETE) the Dataplane they are for (a zone's API).
    pub fn with_dataplane_tokens(mut self, tokens: meridian_tokens::Tokens) -> Auth {
        self.dataplane_tokens = Some(tokens);
        self
    }

    /// The Dataplane-token checker, when this API takes Dataplane tokens.
    pub fn dataplane_tokens(&self) -> Option<&meridian_tokens::Tokens> {
        self.dataplane_tokens.as_ref()
    }

    /// The token the request presents: `Authorization: Bearer <token>`.
    pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
        bearer(headers)
    }

    /// Host names besides the loopback ones under which loopback callers are
    /// trusted (`--api-host`); compared case-insensitively, port ignored (a
    /// port given here is dropped).
    pub fn with_api_hosts(mut self, hosts: impl IntoIterator<Item = String>) -> Auth {
        self.api_hosts = hosts.into_iter().filter_map(|h| host_name(&h).map(str::to_ascii_lowercase)).collect();
        self
    }

    /// Reads `<data_dir>/admin-token`, creating it (mode 0600) with a fresh
    /// random token on first start.
    pub fn load_or_create_token(data_dir: &Path) -> std::io::Result<(String, PathBuf)> {
        let path = data_dir.join("admin-token");
        match std::fs::read_to_string(&path) {
            Ok(t) if !t.trim().is_empty() => return Ok((t.trim().to_string(), path)),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(data_dir)?;
        let token = random_token();
        let tmp = data_dir.join(".admin-token.tmp");
        std::fs::write(&tmp, format!("{token}\n"))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        }
        std::fs::rename(&tmp, &path)?;
        Ok((token, path))
    }

    /// Whether the caller holds admin rights: a presented token decides alone
    /// (right or wrong, whatever the address); without one, a loopback peer
    /// is trusted when loopback trust is on and the `Host` header (which
    /// [`crate::server::serve`] sets from an HTTP/2 `:authority` or an
    /// absolute request target) passes [`Auth::trusted_host`].
    pub fn is_admin(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> bool {
        if let Some(t) = bearer(headers) {
            return constant_time_eq(t.as_bytes(), self.admin_token.as_bytes());
        }
        if Auth::presented(headers) {
            return false; // an Authorization header that is not a bearer token
        }
        self.trust_loopback
            && peer.is_some_and(|ip| ip.is_loopback())
            && headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).is_some_and(|h| self.trusted_host(h))
            && !self.cross_site(headers)
            && !Auth::relayed(headers)
    }

    /// Whether a proxy on this machine relayed the request: it carries a
    /// header proxies add (`Forwarded`, `Via`, `X-Forwarded-*`, `X-Envoy-*`;
    /// Envoy always adds `x-forwarded-proto` and, unless told otherwise,
    /// `x-envoy-expected-rq-timeout-ms`). Such a request gets no loopback
    /// trust: its loopback peer is the proxy, not a user of this machine.
    /// Without this, a gateway Envoy on the API's host whose route reaches
    /// an endpoint at `127.0.0.1:<API port>` (a Dataplane registered with
    /// its own token at that address) made any client of the gateway that
    /// sent `Host: localhost` the admin. `meridianctl`, curl and browsers
    /// add none of these.
    pub fn relayed(headers: &HeaderMap) -> bool {
        headers.keys().any(|k| {
            let k = k.as_str();
            k == "forwarded" || k == "via" || k.starts_with("x-forwarded-") || k.starts_with("x-envoy-")
        })
    }

    /// Whether a browser sent the request on behalf of a page of another
    /// site (cross-site request forgery): an `Origin` header whose host is
    /// not one [`Auth::trusted_host`] admits (`null` included), or
    /// `Sec-Fetch-Site: cross-site`. A page anywhere can make the browser of
    /// someone on the API's host POST to `http://127.0.0.1:5681/...` without
    /// a CORS preflight (a "simple" request: `text/plain` body); its `Host`
    /// is right, its `Origin` is not. Such requests get no loopback trust.
    pub fn cross_site(&self, headers: &HeaderMap) -> bool {
        let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
        if fetch_site.is_some_and(|s| s.eq_ignore_ascii_case("cross-site")) {
            return true;
        }
        let Some(origin) = headers.get(http::header::ORIGIN) else { return false };
        let authority = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .map(|(_, rest)| rest.split('/').next().unwrap_or(rest));
        !authority.is_some_and(|a| self.trusted_host(a))
    }

    /// Whether a `Host` value names this API from the machine itself:
    /// `localhost`, an address in 127.0.0.0/8, `[::1]` (each with or without
    /// `:port`), or one of the `--api-host` names. Nothing else: not
    /// `*.localhost`, not `0.0.0.0`, not a name that merely resolves to loopback.
    pub fn trusted_host(&self, host: &str) -> bool {
        let Some(name) = host_name(host) else { return false };
        if name.eq_ignore_ascii_case("localhost") {
            return true;
        }
        if let Some(v6) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
            return v6.parse::<std::net::Ipv6Addr>().is_ok_and(|ip| ip.is_loopback());
        }
        if let Ok(v4) = name.parse::<std::net::Ipv4Addr>() {
            return v4.is_loopback();
        }
        self.api_hosts.iter().any(|h| h.eq_ignore_ascii_case(name))
    }

    /// Whether a credential was presented at all (to tell "missing" from "wrong").
    pub fn presented(headers: &HeaderMap) -> bool {
        headers.contains_key(http::header::AUTHORIZATION)
    }
}

/// Makes the `Host` header say which host the request names: HTTP/2 carries
/// it as `:authority` (in the URI, often with no `Host` header), and an
/// HTTP/1.1 absolute-form target overrides `Host` (RFC 9112 §3.2.2). Either
/// way the URI's authority wins, so [`Auth::is_admin`] judges the name the
/// client actually used.
pub async fn host_from_authority(mut req: axum::extract::Request) -> axum::extract::Request {
    set_host_from_authority(&mut req);
    req
}

fn set_host_from_authority<B>(req: &mut http::Request<B>) {
    let authority = req.uri().authority().and_then(|a| http::HeaderValue::from_str(a.as_str()).ok());
    if let Some(a) = authority {
        req.headers_mut().insert(http::header::HOST, a);
    }
}

/// The host part of a `Host` value (`name`, `name:port`, `[v6]`, `[v6]:port`),
/// brackets kept for IPv6; `None` when the port is not a number or the value
/// is empty.
fn host_name(host: &str) -> Option<&str> {
    let host = host.trim();
    let (name, port) = if host.starts_with('[') {
        let end = host.find(']')?;
        let rest = &host[end + 1..];
        (&host[..=end], if rest.is_empty() { None } else { Some(rest.strip_prefix(':')?) })
    } else {
        match host.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    if name.is_empty() || port.is_some_and(|p| p.is_empty() || p.parse::<u16>().is_err()) {
        return None;
    }
    Some(name)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let t = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))?;
    Some(t.trim())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 32 random bytes, URL-safe base64.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(h: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(http::header::HOST, h.parse().expect("host header"));
        m
    }

    #[test]
    fn token_rules() {
        let auth = Auth::new("s3cret".into(), true);
        let mut h = host("localhost:5681");
        let remote: IpAddr = [10, 1, 2, 3].into();
        let local: IpAddr = [127, 0, 0, 1].into();
        assert!(!auth.is_admin(&h, Some(remote)));
        assert!(auth.is_admin(&h, Some(local)));
        h.insert(http::header::AUTHORIZATION, "Bearer nope".parse().expect("header"));
        assert!(!auth.is_admin(&h, Some(remote)));
        assert!(!auth.is_admin(&h, Some(local)), "a wrong token from loopback is refused");
        h.insert(http::header::AUTHORIZATION, "Basic czNjcmV0".parse().expect("header"));
        assert!(!auth.is_admin(&h, Some(local)), "a non-bearer credential from loopback is refused");
        h.insert(http::header::AUTHORIZATION, "Bearer s3cret".parse().expect("header"));
        assert!(auth.is_admin(&h, Some(remote)));
        let strict = Auth::new("s3cret".into(), false);
        assert!(!strict.is_admin(&host("localhost"), Some(local)));
    }

    #[test]
    fn loopback_trust_needs_a_loopback_host() {
        let auth = Auth::new("s3cret".into(), true).with_api_hosts(["CP.Example.com:8443".to_string()]);
        let local: IpAddr = std::net::Ipv6Addr::LOCALHOST.into();
        for ok in
            ["localhost", "LOCALHOST:80", "127.0.0.1", "127.9.8.7:5681", "[::1]", "[::1]:5681", "cp.example.com:443"]
        {
            assert!(auth.is_admin(&host(ok), Some(local)), "{ok} is trusted");
        }
        for bad in [
            "evil.example",
            "evil.example:5681",
            "localhost.evil.example",
            "a.localhost",
            "0.0.0.0",
            "10.0.0.1:5681",
            "[::2]",
            "[::1]x",
            "localhost:",
            "localhost:notaport",
            "127.0.0.1:99999",
            "",
        ] {
            assert!(!auth.is_admin(&host(bad), Some(local)), "{bad:?} is not trusted");
        }
        assert!(!auth.is_admin(&HeaderMap::new(), Some(local)), "no Host, no trust");
    }

    #[test]
    fn the_uri_authority_names_the_host() {
        let auth = Auth::new("s3cret".into(), true);
        let local: IpAddr = [127, 0, 0, 1].into();
        // HTTP/2: `:authority` only, no Host header.
        let mut h2 = http::Request::builder().uri("http://evil.example:5681/meshes").body(()).expect("request");
        set_host_from_authority(&mut h2);
        assert!(!auth.is_admin(h2.headers(), Some(local)));
        let mut h2 = http::Request::builder().uri("http://localhost:5681/meshes").body(()).expect("request");
        set_host_from_authority(&mut h2);
        assert!(auth.is_admin(h2.headers(), Some(local)));
        // HTTP/1.1 absolute form: the target wins over Host.
        let mut abs = http::Request::builder()
            .uri("http://evil.example/meshes")
            .header(http::header::HOST, "localhost")
            .body(())
            .expect("request");
        set_host_from_authority(&mut abs);
        assert!(!auth.is_admin(abs.headers(), Some(local)));
        // Origin form: Host as sent.
        let mut origin =
            http::Request::builder().uri("/meshes").header(http::header::HOST, "[::1]:5681").body(()).expect("request");
        set_host_from_authority(&mut origin);
        assert!(auth.is_admin(origin.headers(), Some(local)));
    }

    /// A gateway Envoy on the API's host relayed `Host: localhost`
    /// requests of its own clients to an endpoint at `127.0.0.1:<API port>`
    /// (a Dataplane registered there with its own token): loopback peer,
    /// loopback Host, so every client of the gateway was the admin. What a
    /// proxy relays is not trusted; the admin token still is.
    #[test]
    fn relayed_requests_get_no_loopback_trust() {
        let auth = Auth::new("s3cret".into(), true);
        let local: IpAddr = [127, 0, 0, 1].into();
        // What Envoy adds to every request it proxies (seen on a real Envoy 1.40).
        for (name, value) in [
            ("x-forwarded-proto", "http"),
            ("x-envoy-expected-rq-timeout-ms", "15000"),
            ("x-forwarded-for", "203.0.113.7"),
            ("forwarded", "for=203.0.113.7"),
            ("via", "1.1 proxy"),
            ("x-envoy-internal", "true"),
        ] {
            let mut h = host("localhost");
            h.insert(name, value.parse().expect("header"));
            assert!(!auth.is_admin(&h, Some(local)), "{name} marks a relayed request");
            h.insert(http::header::AUTHORIZATION, "Bearer s3cret".parse().expect("header"));
            assert!(auth.is_admin(&h, Some(local)), "{name}: the admin token still counts");
        }
        let mut h = host("localhost");
        h.insert("x-request-id", "abc".parse().expect("header"));
        assert!(auth.is_admin(&h, Some(local)), "x-request-id alone is a client's (tracing)");
    }

    /// ADVERSARY F8: a page of another site made the browser of someone on
    /// the global's host rotate signing keys and mint tokens (a `text/plain`
    /// POST to `http://127.0.0.1:5681`, no preflight, loopback trust).
    #[test]
    fn cross_site_requests_get_no_loopback_trust() {
        let auth = Auth::new("s3cret".into(), true);
        let local: IpAddr = [127, 0, 0, 1].into();
        let with = |name: &'static str, value: &str| {
            let mut h = host("127.0.0.1:5681");
            h.insert(name, value.parse().expect("header"));
            h
        };
        for bad in
            ["http://evil.example", "https://evil.example:5681", "null", "http://127.0.0.1.evil.example", "garbage"]
        {
            assert!(!auth.is_admin(&with("origin", bad), Some(local)), "Origin {bad} is not trusted");
        }
        assert!(!auth.is_admin(&with("sec-fetch-site", "cross-site"), Some(local)));
        // The GUI's own sign-in form and scripts, and clients that send no Origin.
        for ok in ["http://127.0.0.1:5681", "http://localhost:5681", "https://[::1]:5681"] {
            assert!(auth.is_admin(&with("origin", ok), Some(local)), "Origin {ok} is trusted");
        }
        assert!(auth.is_admin(&with("sec-fetch-site", "same-origin"), Some(local)));
        assert!(auth.is_admin(&host("127.0.0.1:5681"), Some(local)));
        // A token decides alone, whatever the Origin.
        let mut h = with("origin", "http://evil.example");
        h.insert(http::header::AUTHORIZATION, "Bearer s3cret".parse().expect("header"));
        assert!(auth.is_admin(&h, Some(local)));
    }

    #[test]
    fn token_file_is_created_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, path) = Auth::load_or_create_token(dir.path()).expect("create");
        let (b, _) = Auth::load_or_create_token(dir.path()).expect("reload");
        assert_eq!(a, b);
        assert!(path.exists());
        assert!(a.len() >= 40);
    }
}
