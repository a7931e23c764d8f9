//! Inspecting an Envoy of a zone from the global (Kuma 2.14's
//! `GlobalKDSService` `StreamXDSConfigs`/`StreamStats`/`StreamClusters`,
//! `pkg/kds/envoyadmin/`): the zone opens one stream per kind on its KDS
//! connection; the global sends requests down it and the zone answers each
//! with the request's id.
//!
//! ```text
//!   global REST /meshes/{m}/dataplanes/{n}/xds ─▶ AdminRequest ══StreamXDSConfigs══▶ zone
//!                                                 (request_id)                        │ Envoy admin
//!   ◀─ body or 504 ◀─ pending[request_id] ◀══ XDSConfigResponse {request_id, config|error} ┘
//! ```
//!
//! One neutral shape ([`AdminRequest`], [`AdminAnswer`]) converts to and
//! from the three message pairs, so both ends handle the kinds alike.

use crate::pb::kds::{
    AdminOutputFormat, ClustersRequest, ClustersResponse, StatsRequest, StatsResponse, XdsConfigRequest,
    XdsConfigResponse, clusters_response, stats_response, xds_config_response,
};

/// Which admin output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AdminKind {
    /// Envoy's config dump (and what the zone sends), JSON.
    XdsConfig,
    /// Envoy's stats.
    Stats,
    /// Envoy's clusters.
    Clusters,
}

impl AdminKind {
    /// The REST path segment: `xds`, `stats`, `clusters`.
    pub fn segment(self) -> &'static str {
        match self {
            AdminKind::XdsConfig => "xds",
            AdminKind::Stats => "stats",
            AdminKind::Clusters => "clusters",
        }
    }
}

/// One inspection of one proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminRequest {
    /// Set by the global, echoed by the zone.
    pub request_id: String,
    pub kind: AdminKind,
    /// `Dataplane` (ZoneIngress and ZoneEgress are the incumbent's too; a
    /// Meridian zone answers Dataplanes).
    pub resource_type: String,
    /// Mesh of the proxy.
    pub mesh: String,
    /// The zone-local name.
    pub name: String,
    /// Config dump: with endpoints.
    pub include_eds: bool,
    /// Stats, clusters: JSON instead of text.
    pub json: bool,
    /// Stats: only those written to.
    pub used_only: bool,
}

/// A zone's answer: the body, or why there is none.
pub type AdminAnswer = Result<Vec<u8>, String>;

/// The request message of one kind.
pub trait AdminRequestMessage: Send + 'static + Sized {
    const KIND: AdminKind;
    fn from_request(r: &AdminRequest) -> Self;
    fn into_request(self) -> AdminRequest;
}

/// The response message of one kind.
pub trait AdminResponseMessage: Send + 'static + Sized {
    fn from_answer(request_id: String, answer: AdminAnswer) -> Self;
    /// The request id and the answer; a response without a result is an error.
    fn into_answer(self) -> (String, AdminAnswer);
}

fn format(json: bool) -> i32 {
    if json { AdminOutputFormat::Json as i32 } else { AdminOutputFormat::Text as i32 }
}

fn no_result() -> String {
    "the zone sent an answer without a result".to_string()
}

impl AdminRequestMessage for XdsConfigRequest {
    const KIND: AdminKind = AdminKind::XdsConfig;
    fn from_request(r: &AdminRequest) -> Self {
        XdsConfigRequest {
            request_id: r.request_id.clone(),
            resource_type: r.resource_type.clone(),
            resource_name: r.name.clone(),
            resource_mesh: r.mesh.clone(),
            include_eds: r.include_eds,
        }
    }
    fn into_request(self) -> AdminRequest {
        let XdsConfigRequest { request_id, resource_type, resource_name, resource_mesh, include_eds } = self;
        AdminRequest {
            request_id,
            kind: Self::KIND,
            resource_type,
            mesh: resource_mesh,
            name: resource_name,
            include_eds,
            json: true,
            used_only: false,
        }
    }
}

impl AdminResponseMessage for XdsConfigResponse {
    fn from_answer(request_id: String, answer: AdminAnswer) -> Self {
        let result = Some(match answer {
            Ok(b) => xds_config_response::Result::Config(b),
            Err(e) => xds_config_response::Result::Error(e),
        });
        XdsConfigResponse { request_id, result }
    }
    fn into_answer(self) -> (String, AdminAnswer) {
        let answer = match self.result {
            Some(xds_config_response::Result::Config(b)) => Ok(b),
            Some(xds_config_response::Result::Error(e)) => Err(e),
            None => Err(no_result()),
        };
        (self.request_id, answer)
    }
}

impl AdminRequestMessage for StatsRequest {
    const KIND: AdminKind = AdminKind::Stats;
    fn from_request(r: &AdminRequest) -> Self {
        StatsRequest {
            request_id: r.request_id.clone(),
            resource_type: r.resource_type.clone(),
            resource_name: r.name.clone(),
            resource_mesh: r.mesh.clone(),
            format: format(r.json),
            used_only: r.used_only,
        }
    }
    fn into_request(self) -> AdminRequest {
        let StatsRequest { request_id, resource_type, resource_name, resource_mesh, format, used_only } = self;
        AdminRequest {
            request_id,
            kind: Self::KIND,
            resource_type,
            mesh: resource_mesh,
            name: resource_name,
            include_eds: false,
            json: format == AdminOutputFormat::Json as i32,
            used_only,
        }
    }
}

impl AdminResponseMessage for StatsResponse {
    fn from_answer(request_id: String, answer: AdminAnswer) -> Self {
        let result = Some(match answer {
            Ok(b) => stats_response::Result::Stats(b),
            Err(e) => stats_response::Result::Error(e),
        });
        StatsResponse { request_id, result }
    }
    fn into_answer(self) -> (String, AdminAnswer) {
        let answer = match self.result {
            Some(stats_response::Result::Stats(b)) => Ok(b),
            Some(stats_response::Result::Error(e)) => Err(e),
            None => Err(no_result()),
        };
        (self.request_id, answer)
    }
}

impl AdminRequestMessage for ClustersRequest {
    const KIND: AdminKind = AdminKind::Clusters;
    fn from_request(r: &AdminRequest) -> Self {
        ClustersRequest {
            request_id: r.request_id.clone(),
            resource_type: r.resource_type.clone(),
            resource_name: r.name.clone(),
            resource_mesh: r.mesh.clone(),
            format: format(r.json),
        }
    }
    fn into_request(self) -> AdminRequest {
        let ClustersRequest { request_id, resource_type, resource_name, resource_mesh, format } = self;
        AdminRequest {
            request_id,
            kind: Self::KIND,
            resource_type,
            mesh: resource_mesh,
            name: resource_name,
            include_eds: false,
            json: format == AdminOutputFormat::Json as i32,
            used_only: false,
        }
    }
}

impl AdminResponseMessage for ClustersResponse {
    fn from_answer(request_id: String, answer: AdminAnswer) -> Self {
        let result = Some(match answer {
            Ok(b) => clusters_response::Result::Clusters(b),
            Err(e) => clusters_response::Result::Error(e),
        });
        ClustersResponse { request_id, result }
    }
    fn into_answer(self) -> (String, AdminAnswer) {
        let answer = match self.result {
            Some(clusters_response::Result::Clusters(b)) => Ok(b),
            Some(clusters_response::Result::Error(e)) => Err(e),
            None => Err(no_result()),
        };
        (self.request_id, answer)
    }
}

/// The query of the inspect endpoints, at the zone and at the global (the
/// incumbent's parameters).
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct AdminQuery {
    /// Config dump: include endpoints (`include_eds=true`).
    pub include_eds: Option<bool>,
    /// Stats and clusters: `json` or `text` (default).
    pub format: Option<String>,
    /// Stats: only those written to (default true).
    #[serde(alias = "used_only")]
    pub usedonly: Option<bool>,
}

impl AdminQuery {
    /// The request for `kind` of Dataplane `mesh`/`name` (no id yet).
    ///
    /// Errors: a `format` other than `json`/`text`, as (field, reason).
    pub fn request(&self, kind: AdminKind, mesh: &str, name: &str) -> Result<AdminRequest, (&'static str, String)> {
        let json = match self.format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => return Err(("format", format!("{other:?} is not json or text"))),
        };
        Ok(AdminRequest {
            request_id: String::new(),
            kind,
            resource_type: "Dataplane".to_string(),
            mesh: mesh.to_string(),
            name: name.to_string(),
            include_eds: self.include_eds.unwrap_or(false),
            json: json || kind == AdminKind::XdsConfig,
            used_only: self.usedonly.unwrap_or(true),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_round_trip_through_each_message() {
        let q = AdminQuery { format: Some("json".into()), ..AdminQuery::default() };
        let mut r = q.request(AdminKind::Stats, "default", "gw-1").expect("valid");
        r.request_id = "7".into();
        assert_eq!(StatsRequest::from_request(&r).into_request(), r);
        let mut c = AdminQuery::default().request(AdminKind::Clusters, "default", "gw-1").expect("valid");
        c.request_id = "8".into();
        c.used_only = false;
        assert_eq!(ClustersRequest::from_request(&c).into_request(), c);
        let mut x = AdminQuery { include_eds: Some(true), ..AdminQuery::default() }
            .request(AdminKind::XdsConfig, "default", "gw-1")
            .expect("valid");
        x.request_id = "9".into();
        x.used_only = false;
        assert_eq!(XdsConfigRequest::from_request(&x).into_request(), x);

        let ok = XdsConfigResponse::from_answer("9".into(), Ok(b"{}".to_vec())).into_answer();
        assert_eq!(ok, ("9".to_string(), Ok(b"{}".to_vec())));
        let err = StatsResponse::from_answer("7".into(), Err("down".into())).into_answer();
        assert_eq!(err, ("7".to_string(), Err("down".to_string())));
        let empty = ClustersResponse { request_id: "1".into(), result: None }.into_answer();
        assert!(empty.1.is_err());
        assert!(
            AdminQuery { format: Some("xml".into()), ..AdminQuery::default() }
                .request(AdminKind::Stats, "m", "n")
                .is_err_and(|(field, _)| field == "format")
        );
    }
}
