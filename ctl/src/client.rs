//! The REST client: URLs on the incumbent's paths, the bearer token, and the
//! mapping of HTTP outcomes to [`CtlError`]s (4xx refused, 5xx and no answer
//! unavailable).

use std::time::Duration;

use reqwest::{Method, StatusCode, Url, header};
use serde_json::Value;

use crate::error::{CtlError, FieldReason};

/// The largest request body the API reads (`meridian_rest::MAX_BODY_BYTES`).
/// Larger bodies are refused here: the server would answer 413 before
/// reading them all and close the connection, which a client still writing
/// sees as a broken pipe rather than the answer.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// A successful (2xx) answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// The `ETag` header without quotes: the resource's store revision.
    pub etag: Option<String>,
    /// The JSON body (`Null` when empty or not JSON).
    pub body: Value,
    /// The body as text (for plain-text answers such as tokens).
    pub text: String,
}

fn http_client(timeout: Duration, ca: Option<reqwest::Certificate>) -> Result<reqwest::Client, CtlError> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .timeout(timeout)
        .user_agent(concat!("meridianctl/", env!("CARGO_PKG_VERSION")));
    if let Some(cert) = ca {
        b = b.add_root_certificate(cert);
    }
    b.build().map_err(|e| CtlError::input(format!("cannot set up the HTTP client: {}", chain(&e))))
}

/// A client for one control plane's API.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    /// The API's base URL; request paths are appended to its path.
    base: Url,
    token: Option<String>,
    timeout: Duration,
}

impl Client {
    pub fn new(api_url: &str, token: Option<String>, timeout: Duration) -> Result<Client, CtlError> {
        let base = Url::parse(api_url).map_err(|e| CtlError::input(format!("invalid API URL {api_url:?}: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(CtlError::input(format!(
                "invalid API URL {api_url:?}: use http://HOST:PORT or https://HOST:PORT"
            )));
        }
        // reqwest is built without a crypto provider of its own: use ring
        // (a no-op when the process already installed one).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = http_client(timeout, None)?;
        let token = token.filter(|t| !t.trim().is_empty()).map(|t| t.trim().to_string());
        Ok(Client { http, base, token, timeout })
    }

    /// Also trusts the CA in `pem` (for private certificates).
    pub fn with_ca(mut self, pem: Option<&[u8]>) -> Result<Client, CtlError> {
        let Some(pem) = pem else { return Ok(self) };
        let cert = reqwest::Certificate::from_pem(pem)
            .map_err(|e| CtlError::input(format!("--ca-cert is not a PEM certificate: {}", chain(&e))))?;
        self.http = http_client(self.timeout, Some(cert))?;
        Ok(self)
    }

    /// The base URL as given.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// `base` + `/seg1/seg2/...`, each segment percent-encoded.
    pub fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.set_query(None);
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty();
            path.extend(segments);
        }
        url
    }

    /// Sends one request; only 2xx answers are `Ok`.
    pub async fn send(&self, method: Method, url: Url, body: Option<&Value>) -> Result<Reply, CtlError> {
        let mut req = self.http.request(method, url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            let bytes =
                serde_json::to_vec(b).map_err(|e| CtlError::input(format!("cannot encode the request: {e}")))?;
            if bytes.len() > MAX_BODY_BYTES {
                return Err(CtlError::input(format!(
                    "the resource is {} bytes as JSON; the API accepts request bodies of at most {MAX_BODY_BYTES} bytes (2 MiB)",
                    bytes.len()
                )));
            }
            req = req.header(header::CONTENT_TYPE, "application/json").body(bytes);
        }
        let unreachable = |e: reqwest::Error| CtlError::Unreachable {
            url: self.base.to_string(),
            reason: if e.is_timeout() {
                "no answer in time (see --timeout)".to_string()
            } else {
                // The top-level text only repeats the URL.
                std::error::Error::source(&e).map_or_else(|| e.to_string(), chain)
            },
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status();
        let etag = resp
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().trim_start_matches("W/").trim_matches('"').to_string());
        let bytes = resp.bytes().await.map_err(unreachable)?;
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(Reply {
                status: status.as_u16(),
                etag,
                body,
                text: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        let (details, fields) = error_body(status, &body, &bytes);
        if status.is_client_error() {
            Err(CtlError::Refused { status: status.as_u16(), details, fields })
        } else {
            Err(CtlError::Server { status: status.as_u16(), details })
        }
    }

    pub async fn get(&self, segments: &[&str]) -> Result<Reply, CtlError> {
        self.send(Method::GET, self.url(segments), None).await
    }

    /// Like [`Client::get`], with 404 as `None`.
    pub async fn get_opt(&self, segments: &[&str]) -> Result<Option<Reply>, CtlError> {
        match self.get(segments).await {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND.as_u16()) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn put(&self, segments: &[&str], body: &Value, dry_run: bool) -> Result<Reply, CtlError> {
        let mut url = self.url(segments);
        if dry_run {
            url.set_query(Some("dryRun=true"));
        }
        self.send(Method::PUT, url, Some(body)).await
    }

    pub async fn post(&self, segments: &[&str], body: &Value) -> Result<Reply, CtlError> {
        self.send(Method::POST, self.url(segments), Some(body)).await
    }

    pub async fn delete(&self, segments: &[&str]) -> Result<Reply, CtlError> {
        self.send(Method::DELETE, self.url(segments), None).await
    }

    /// Every item of a `{"total", "items", "next"}` list, page by page:
    /// follows `next` (its `offset` and `size`, against our own base URL, so a
    /// proxy's host name in `next` does not matter), and asks for the
    /// following offset itself when `next` is missing but items remain.
    pub async fn list_all(&self, segments: &[&str], page_size: u64) -> Result<(Vec<Value>, u64), CtlError> {
        let mut items: Vec<Value> = Vec::new();
        let mut offset = 0u64;
        let mut size = page_size;
        loop {
            let mut url = self.url(segments);
            url.query_pairs_mut().append_pair("offset", &offset.to_string()).append_pair("size", &size.to_string());
            let reply = self.send(Method::GET, url, None).await?;
            let page = reply.body.get("items").and_then(Value::as_array).cloned().ok_or_else(|| CtlError::Server {
                status: reply.status,
                details: "the list answer has no \"items\" array".into(),
            })?;
            let total = reply.body.get("total").and_then(Value::as_u64).unwrap_or(0);
            let got = page.len() as u64;
            items.extend(page);
            let next = reply.body.get("next").and_then(Value::as_str).and_then(next_page);
            match next {
                Some((o, s)) if o > offset => {
                    offset = o;
                    size = s.unwrap_or(size);
                }
                _ if got > 0 && (items.len() as u64) < total => offset += got,
                _ => {
                    let total = total.max(items.len() as u64);
                    return Ok((items, total));
                }
            }
        }
    }
}

/// `offset` and `size` of a `next` link.
fn next_page(next: &str) -> Option<(u64, Option<u64>)> {
    let url = Url::parse(next).or_else(|_| Url::parse("http://localhost").and_then(|b| b.join(next))).ok()?;
    let mut offset = None;
    let mut size = None;
    for (k, v) in url.query_pairs() {
        match k.as_ref() {
            "offset" => offset = v.parse().ok(),
            "size" => size = v.parse().ok(),
            _ => {}
        }
    }
    offset.map(|o| (o, size))
}

/// `details` and field reasons of an error answer; non-JSON bodies (a
/// proxy's page, a plain-text limit message) are shown as text.
fn error_body(status: StatusCode, body: &Value, raw: &[u8]) -> (String, Vec<FieldReason>) {
    let fields = body
        .get("invalid_parameters")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .map(|p| FieldReason {
                    field: p.get("field").and_then(Value::as_str).unwrap_or_default().to_string(),
                    reason: p.get("reason").and_then(Value::as_str).unwrap_or_default().to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    let details = body
        .get("details")
        .and_then(Value::as_str)
        .filter(|d| !d.is_empty())
        .or_else(|| body.get("title").and_then(Value::as_str))
        .map(str::to_string)
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(raw);
            let text = text.trim();
            let reason = status.canonical_reason().unwrap_or("error");
            if text.is_empty() || text.len() > 500 {
                format!("HTTP {} {reason}", status.as_u16())
            } else {
                format!("HTTP {} {reason}: {text}", status.as_u16())
            }
        });
    (details, fields)
}

/// An error with its causes, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links() {
        assert_eq!(next_page("http://h:1/meshes?offset=4&size=2"), Some((4, Some(2))));
        assert_eq!(next_page("/meshes/default/meshgateways?offset=100"), Some((100, None)));
        assert_eq!(next_page("garbage"), None);
    }

    #[test]
    fn urls_keep_a_base_path_and_encode_segments() {
        let c = Client::new("http://cp.example:5681/api/", None, Duration::from_secs(1)).expect("client");
        assert_eq!(c.url(&["meshes", "default"]).as_str(), "http://cp.example:5681/api/meshes/default");
        assert_eq!(c.url(&["meshes", "a b/c"]).as_str(), "http://cp.example:5681/api/meshes/a%20b%2Fc");
        assert!(Client::new("ftp://x", None, Duration::from_secs(1)).is_err());
        assert!(Client::new("not a url", None, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn error_bodies() {
        let body = serde_json::json!({"title": "Invalid resource", "details": "d",
            "invalid_parameters": [{"field": "conf", "reason": "cannot be empty"}]});
        let (d, f) = error_body(StatusCode::BAD_REQUEST, &body, b"");
        assert_eq!(d, "d");
        assert_eq!(f, vec![FieldReason { field: "conf".into(), reason: "cannot be empty".into() }]);
        let (d, _) = error_body(StatusCode::PAYLOAD_TOO_LARGE, &Value::Null, b"length limit exceeded\n");
        assert_eq!(d, "HTTP 413 Payload Too Large: length limit exceeded");
    }
}
