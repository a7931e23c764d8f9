//! Raw HTTP against a control plane's API: status, ETag and JSON, with no
//! interpretation, so tests see exactly what clients see.

use reqwest::{Method, header};
use serde_json::Value;

/// One answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// `ETag` without quotes.
    pub etag: Option<String>,
    pub content_type: String,
    /// The body as text.
    pub text: String,
    /// The body as JSON (`Null` when it is not JSON).
    pub json: Value,
}

impl Reply {
    /// The `details` of an error body.
    pub fn details(&self) -> &str {
        self.json.get("details").and_then(Value::as_str).unwrap_or_default()
    }

    /// `(field, reason)` of each `invalid_parameters` entry.
    pub fn invalid_parameters(&self) -> Vec<(String, String)> {
        self.json
            .get("invalid_parameters")
            .and_then(Value::as_array)
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        let s = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
                        (s("field"), s("reason"))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `name` of each item of a list answer.
    pub fn item_names(&self) -> Vec<String> {
        self.json
            .get("items")
            .and_then(Value::as_array)
            .map(|items| {
                items.iter().map(|i| i.get("name").and_then(Value::as_str).unwrap_or_default().to_string()).collect()
            })
            .unwrap_or_default()
    }
}

/// An HTTP client bound to one API base URL.
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str, token: Option<String>) -> Api {
        crate::init_crypto();
        // Idle connections dropped before the server's --idle-timeout (10 s)
        // closes them (see `JsonApi::new`).
        let http = reqwest::Client::builder()
            .pool_idle_timeout(std::time::Duration::from_secs(4))
            .build()
            .unwrap_or_else(|e| panic!("cannot build an HTTP client: {e}"));
        Api { base: base.trim_end_matches('/').to_string(), token, http }
    }

    /// The same API with another bearer token (or none).
    pub fn with_token(&self, token: Option<&str>) -> Api {
        Api { token: token.map(str::to_string), ..self.clone() }
    }

    /// Sends `method path` (path and query, starting with `/`) with an
    /// optional raw body and extra headers.
    pub async fn request(&self, method: Method, path: &str, body: Option<Vec<u8>>, headers: &[(&str, &str)]) -> Reply {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header(header::CONTENT_TYPE, "application/json").body(b);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status().as_u16();
        let etag =
            resp.headers().get(header::ETAG).and_then(|v| v.to_str().ok()).map(|v| v.trim_matches('"').to_string());
        let content_type =
            resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let text = resp.text().await.unwrap_or_else(|e| panic!("{method} {url}: reading the body: {e}"));
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { status, etag, content_type, text, json }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, None, &[]).await
    }

    /// PUT of a JSON value.
    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.request(Method::PUT, path, Some(body.to_string().into_bytes()), &[]).await
    }

    /// PUT of a JSON value with `If-Match: "<revision>"`.
    pub async fn put_if_match(&self, path: &str, body: &Value, revision: &str) -> Reply {
        let if_match = format!("\"{revision}\"");
        self.request(Method::PUT, path, Some(body.to_string().into_bytes()), &[("If-Match", &if_match)]).await
    }

    /// PUT of raw bytes (malformed or oversized bodies).
    pub async fn put_raw(&self, path: &str, body: Vec<u8>) -> Reply {
        self.request(Method::PUT, path, Some(body), &[]).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.request(Method::DELETE, path, None, &[]).await
    }

    /// Every item of a list, following `next` links (their path and query,
    /// against this API's base). Returns the items and each page's `total`.
    pub async fn list_following_next(&self, first: &str) -> (Vec<Value>, Vec<u64>) {
        let mut items = Vec::new();
        let mut totals = Vec::new();
        let mut path = first.to_string();
        for _ in 0..10_000 {
            let r = self.get(&path).await;
            assert_eq!(r.status, 200, "GET {path}: {}", r.text);
            totals.push(r.json.get("total").and_then(Value::as_u64).unwrap_or_else(|| panic!("no total: {}", r.text)));
            items.extend(r.json.get("items").and_then(Value::as_array).cloned().unwrap_or_default());
            match r.json.get("next").and_then(Value::as_str) {
                Some(next) => {
                    let url = reqwest::Url::parse(next).unwrap_or_else(|e| panic!("next {next:?} is not a URL: {e}"));
                    path = match url.query() {
                        Some(q) => format!("{}?{q}", url.path()),
                        None => url.path().to_string(),
                    };
                }
                None => return (items, totals),
            }
        }
        panic!("more than 10000 pages following next from {first}");
    }
}
