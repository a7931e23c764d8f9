//! JSON access to a control plane's REST API with convergence waits,
//! bounded polling, and readers of `/zones/_overview`. (For exact answers,
//! status, ETag and text, see [`crate::api`].)

use std::{future::Future, time::Duration};

use serde_json::Value;

/// Default deadline for "the system converges" checks. Generous: several
/// topologies run at once on two cores with debug binaries.
pub const CONVERGE: Duration = Duration::from_secs(20);

/// Polls `check` until it returns `Ok`, or panics after `timeout` with
/// `what` and the last reason it gave.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(reason) => {
                if tokio::time::Instant::now() >= deadline {
                    panic!("timed out after {timeout:?} waiting until {what}; last: {reason}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// JSON REST client of one control plane (loopback callers are admin).
#[derive(Clone)]
pub struct JsonApi {
    base: String,
    http: reqwest::Client,
}

/// The REST path of a universal-format resource.
pub fn path_of(resource: &Value) -> String {
    let ty = resource["type"].as_str().expect("resource has a type");
    let name = resource["name"].as_str().expect("resource has a name");
    let ty = meridian_sync_proto::ResourceType::from_name(ty).unwrap_or_else(|| panic!("unknown type {ty}"));
    if ty.is_mesh_scoped() {
        let mesh = resource["mesh"].as_str().expect("mesh-scoped resource has a mesh");
        format!("/meshes/{mesh}/{}/{name}", ty.plural())
    } else {
        format!("/{}/{name}", ty.plural())
    }
}

impl JsonApi {
    pub fn new(base: &str) -> JsonApi {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // Idle pooled connections are dropped well before the server's
        // --idle-timeout (10 s) closes them: reusing one the server is
        // closing at that moment fails the request ("error sending request").
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(4))
            .timeout(Duration::from_secs(10))
            .build()
            .expect("build the HTTP client");
        JsonApi { base: base.trim_end_matches('/').to_string(), http }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<(u16, Value), String> {
        let resp = req.send().await.map_err(|e| format!("{e}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| format!("{e}"))?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, body))
    }

    /// GET; `Err` only when the request could not be made.
    pub async fn try_get(&self, path: &str) -> Result<(u16, Value), String> {
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    /// GET that must answer 200.
    pub async fn get(&self, path: &str) -> Value {
        match self.try_get(path).await {
            Ok((200, v)) => v,
            other => panic!("GET {}{path}: {other:?}", self.base),
        }
    }

    /// PUT; `Err` only when the request could not be made (or got no answer).
    pub async fn try_put(&self, path: &str, body: &Value) -> Result<(u16, Value), String> {
        self.send(self.http.put(format!("{}{path}", self.base)).json(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(self.http.put(format!("{}{path}", self.base)).json(body))
            .await
            .unwrap_or_else(|e| panic!("PUT {}{path}: {e}", self.base))
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
            .unwrap_or_else(|e| panic!("DELETE {}{path}: {e}", self.base))
    }

    /// PUTs a universal-format resource at its path; it must be accepted.
    pub async fn apply(&self, resource: &Value) {
        let path = path_of(resource);
        let (status, body) = self.put(&path, resource).await;
        assert!(status == 200 || status == 201, "PUT {}{path} answered {status}: {body}", self.base);
    }

    /// GET answering 2xx with JSON; `Err` with the status otherwise.
    pub async fn fetch(&self, path: &str) -> Result<Value, String> {
        match self.try_get(path).await? {
            (s, v) if (200..300).contains(&s) => Ok(v),
            (s, v) => Err(format!("GET {path}: {s} {v}")),
        }
    }

    /// PUTs every document of a YAML text at its path; panics on any refusal.
    pub async fn apply_yaml(&self, yaml: &str) {
        let docs =
            meridian_sync_proto::universal::parse_documents(yaml).unwrap_or_else(|e| panic!("not YAML: {e}\n{yaml}"));
        for doc in docs {
            self.apply(&doc).await;
        }
    }

    /// POST answering text (zone tokens).
    pub async fn post_text(&self, path: &str, body: &Value) -> String {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {}{path}: {e}", self.base));
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(status.is_success(), "POST {}{path} answered {status}: {text}", self.base);
        text.trim().to_string()
    }

    /// The resource at `path`, or `None` on 404.
    pub async fn find(&self, path: &str) -> Result<Option<Value>, String> {
        match self.try_get(path).await? {
            (200, v) => Ok(Some(v)),
            (404, _) => Ok(None),
            (s, v) => Err(format!("GET {path}: {s} {v}")),
        }
    }

    /// Names of the items of a list endpoint (one page of up to 1000).
    pub async fn names(&self, list_path: &str) -> Result<Vec<String>, String> {
        let sep = if list_path.contains('?') { '&' } else { '?' };
        let (status, v) = self.try_get(&format!("{list_path}{sep}size=1000")).await?;
        if status != 200 {
            return Err(format!("GET {list_path}: {status} {v}"));
        }
        Ok(v["items"]
            .as_array()
            .map(|items| items.iter().filter_map(|i| i["name"].as_str().map(str::to_string)).collect())
            .unwrap_or_default())
    }

    /// Waits until `path` holds a resource for which `pred` holds; returns it.
    pub async fn wait_for(&self, path: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        eventually(&format!("{}{path} {what}", self.base), CONVERGE, || async {
            match self.find(path).await? {
                Some(v) if pred(&v) => Ok(v),
                Some(v) => Err(format!("present but not yet as expected: {v}")),
                None => Err("404".into()),
            }
        })
        .await
    }

    /// Waits until `path` answers 404.
    pub async fn wait_gone(&self, path: &str) {
        eventually(&format!("{}{path} is gone", self.base), CONVERGE, || async {
            match self.find(path).await? {
                None => Ok(()),
                Some(v) => Err(format!("still there: {v}")),
            }
        })
        .await
    }

    /// The `/zones/_overview` item of `zone`.
    pub async fn zone_overview(&self, zone: &str) -> Result<Value, String> {
        let (status, v) = self.try_get("/zones/_overview?size=1000").await?;
        if status != 200 {
            return Err(format!("GET /zones/_overview: {status} {v}"));
        }
        v["items"]
            .as_array()
            .and_then(|items| items.iter().find(|i| i["name"] == zone).cloned())
            .ok_or_else(|| format!("zone {zone} not in the overview yet"))
    }

    /// Waits until the overview says `zone` is `online` (or not).
    pub async fn wait_online(&self, zone: &str, online: bool, timeout: Duration) -> Value {
        eventually(&format!("zone {zone} is online={online} at {}", self.base), timeout, || async {
            let ov = self.zone_overview(zone).await?;
            if ov["online"] == online { Ok(ov) } else { Err(format!("online={}", ov["online"])) }
        })
        .await
    }
}

/// The subscriptions of a zone overview, oldest first.
pub fn subscriptions(overview: &Value) -> Vec<Value> {
    overview["zoneInsight"]["subscriptions"].as_array().cloned().unwrap_or_default()
}

/// A counter of a subscription: `stat[key][field]` (uint64 travel as JSON
/// strings; absent means 0).
pub fn stat(subscription: &Value, key: &str, field: &str) -> u64 {
    match &subscription["status"]["stat"][key][field] {
        Value::String(s) => s.parse().unwrap_or_else(|_| panic!("{key}.{field} = {s:?} is not a number")),
        Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

/// `stat[key].lastNackReason`, or "".
pub fn last_nack_reason(subscription: &Value, key: &str) -> String {
    subscription["status"]["stat"][key]["lastNackReason"].as_str().unwrap_or("").to_string()
}
