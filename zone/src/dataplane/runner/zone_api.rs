//! The zone API as the runner uses it: PUT the Dataplane until the zone
//! answers (exponential backoff with jitter, `backon`), DELETE it on exit.
//!
//! What is retried: an unreachable zone, 5xx, 404, 408, 409, 429, and a 400
//! about the mesh (a federated zone that has not yet received the Mesh from
//! the global). What is not: any other 4xx (400, 401, 403, 413...), which
//! will not change by asking again: the runner exits 1 with the zone's reason.

use std::time::Duration;

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use serde_json::Value;

use super::plan::Plan;

/// Per-request timeout: a zone that accepted the connection but does not
/// answer is treated as unreachable and retried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Backoff of the registration: first wait, cap (retried without limit).
const REGISTER_MIN_DELAY: Duration = Duration::from_millis(500);
const REGISTER_MAX_DELAY: Duration = Duration::from_secs(30);
/// Deregistration on exit: a few quick tries, then give up (the zone's
/// `--dataplane-cleanup-after` sweeper removes what is left).
const DEREGISTER_TRIES: usize = 3;
const DEREGISTER_DELAY: Duration = Duration::from_millis(300);

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiFailure {
    /// No answer (connection refused, timeout, TLS failure...).
    #[error("the zone API at {url} does not answer: {reason}")]
    Unreachable { url: String, reason: String },
    /// An answer that may change if asked again.
    #[error("the zone API answered {status} (will retry): {body}")]
    Transient { status: u16, body: String },
    /// A refusal that will not change.
    #[error("the zone API refused the request ({status}): {body}")]
    Refused { status: u16, body: String },
}

impl ApiFailure {
    pub fn is_retryable(&self) -> bool {
        !matches!(self, ApiFailure::Refused { .. })
    }
}

/// Sorts an error answer: retry or give up.
fn classify(status: u16, body: String) -> ApiFailure {
    let mesh_missing = status == 400
        && serde_json::from_str::<Value>(&body).ok().is_some_and(|v| {
            v["invalid_parameters"].as_array().is_some_and(|ps| ps.iter().any(|p| p["field"] == "mesh"))
        });
    if status >= 500 || matches!(status, 404 | 408 | 409 | 429) || mesh_missing {
        ApiFailure::Transient { status, body }
    } else {
        ApiFailure::Refused { status, body }
    }
}

/// A client of one Dataplane's path on the zone API.
pub struct ZoneApi {
    client: reqwest::Client,
    /// `<api>/meshes/<mesh>/dataplanes/<name>`.
    url: String,
    bearer: Option<String>,
}

impl ZoneApi {
    pub fn new(plan: &Plan) -> anyhow::Result<ZoneApi> {
        let mut b = reqwest::Client::builder().timeout(REQUEST_TIMEOUT);
        if let Some((_, pem)) = &plan.ca_cert {
            b = b.add_root_certificate(reqwest::Certificate::from_pem(pem).context("--ca-cert")?);
        }
        let url = match plan.kind {
            crate::dataplane::ProxyKind::Dataplane => {
                format!("{}/meshes/{}/dataplanes/{}", plan.api_url, plan.mesh, plan.name)
            }
            crate::dataplane::ProxyKind::ZoneIngress => format!("{}/zoneingresses/{}", plan.api_url, plan.name),
        };
        Ok(ZoneApi { client: b.build().context("cannot build the HTTP client")?, url, bearer: plan.api_bearer.clone() })
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.bearer {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    fn unreachable(&self, e: &reqwest::Error) -> ApiFailure {
        // reqwest's own text repeats the URL; its causes say what happened.
        let mut causes = Vec::new();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            causes.push(s.to_string());
            src = s.source();
        }
        let reason = if causes.is_empty() { e.to_string() } else { causes.join(": ") };
        ApiFailure::Unreachable { url: self.url.clone(), reason }
    }

    /// One PUT of `doc`.
    pub async fn put_once(&self, doc: &Value) -> Result<(), ApiFailure> {
        let resp = self.auth(self.client.put(&self.url).json(doc)).send().await.map_err(|e| self.unreachable(&e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        Err(classify(status.as_u16(), resp.text().await.unwrap_or_default()))
    }

    /// One DELETE; `Ok(false)` when there was nothing to delete.
    pub async fn delete_once(&self) -> Result<bool, ApiFailure> {
        let resp = self.auth(self.client.delete(&self.url)).send().await.map_err(|e| self.unreachable(&e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(true);
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(false);
        }
        Err(classify(status.as_u16(), resp.text().await.unwrap_or_default()))
    }

    /// PUTs `doc` until the zone takes it, waiting longer after each
    /// failure (logged once per attempt). Ends with the first refusal that
    /// will not change.
    pub async fn register(&self, doc: &Value) -> Result<(), ApiFailure> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(REGISTER_MIN_DELAY)
            .with_max_delay(REGISTER_MAX_DELAY)
            .with_jitter()
            .without_max_times();
        (|| self.put_once(doc))
            .retry(backoff)
            .when(ApiFailure::is_retryable)
            .notify(|e, wait| tracing::warn!(error = %e, retry_in = ?wait, "cannot register the Dataplane yet"))
            .await
    }

    /// One DELETE after a stop that came before the registration was
    /// confirmed (a PUT may have landed): failures are only logged.
    pub async fn deregister_if_registered(&self) {
        match self.delete_once().await {
            Ok(true) => tracing::info!("Dataplane deregistered"),
            Ok(false) => {}
            Err(e) => tracing::info!(error = %e, "could not check that the Dataplane was not registered"),
        }
    }

    /// DELETEs the Dataplane, a few times at most; `Ok(false)` when it was
    /// already gone.
    pub async fn deregister(&self) -> Result<bool, ApiFailure> {
        let backoff =
            ExponentialBuilder::default().with_min_delay(DEREGISTER_DELAY).with_max_times(DEREGISTER_TRIES - 1);
        (|| self.delete_once())
            .retry(backoff)
            .when(ApiFailure::is_retryable)
            .notify(|e, wait| tracing::warn!(error = %e, retry_in = ?wait, "cannot deregister the Dataplane yet"))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_that_will_not_change_are_not_retried() {
        for s in [400, 401, 403, 413, 422] {
            assert!(!classify(s, "{}".into()).is_retryable(), "{s}");
        }
        for s in [404, 408, 409, 429, 500, 503] {
            assert!(classify(s, String::new()).is_retryable(), "{s}");
        }
        let mesh =
            r#"{"title":"Invalid","details":"mesh: not found","invalid_parameters":[{"field":"mesh","reason":"x"}]}"#;
        assert!(classify(400, mesh.into()).is_retryable(), "a missing mesh may arrive from the global");
        let other = r#"{"invalid_parameters":[{"field":"networking.address","reason":"x"}]}"#;
        assert!(!classify(400, other.into()).is_retryable());
    }
}
