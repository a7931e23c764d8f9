//! One ADS stream: the per-type [`DeltaSender`]s of the shared delta engine
//! driven by Envoy's requests and by changes of the Dataplane's generated
//! configuration, on either wire.
//!
//! - Delta (`DeltaAggregatedResources`): requests go to the engine as they
//!   are; its responses go out as they are.
//! - State of the world (`StreamAggregatedResources`): each request's full
//!   name list is turned into the subscribe/unsubscribe delta against the
//!   previous one, and its nonce/error into ACK/NACK, then fed to the same
//!   engine. Whenever the engine says the peer is behind (any response),
//!   the full set the peer subscribes to goes out instead, versioned by
//!   [`set_version`], with the engine's nonce. ACKs are never answered.
//!
//! ```text
//!   Envoy ──req──▶ Wire::handle ──▶ DeltaSender::on_request ─┐
//!   cache ──change──▶ Wire::on_change ──────────────────────┤ next_response (diff)
//!   Envoy ◀──resp── (delta as is | SotW: full subscribed set) ◀┘
//! ```

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use envoy_types::pb::envoy::{
    config::core::v3::Node,
    service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse},
};
use meridian_sync_proto::{
    delta::{DeltaSender, DesiredSet, RequestKind, set_version},
    pb::mesh::{DiscoveryServiceStats, DiscoverySubscription, DiscoverySubscriptionStatus, EnvoyVersion, Version},
};

use super::{cache::ProxyState, insight};
use crate::gateway::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, type_urls};

/// Largest total of resources in one delta response: Envoy's gRPC client
/// accepts 4 MiB messages by default; leave room for the envelope.
pub const MAX_RESPONSE_BYTES: usize = 3 * 1024 * 1024;

/// Unsettled responses remembered per type (their versions, for insights).
const MAX_UNSETTLED: usize = 256;

/// Per-type state of one stream.
struct TypeState {
    sender: DeltaSender,
    /// SotW only: the names of the last request (SotW sends the full list).
    sotw_names: BTreeSet<String>,
    /// Nonce → version of the whole set when it was sent (for insights).
    versions: HashMap<String, String>,
}

/// One stream's view of one Dataplane.
pub struct Session {
    pub state: Arc<ProxyState>,
    types: BTreeMap<String, TypeState>,
    nonce_prefix: String,
    /// The DataplaneInsight subscription this stream maintains.
    pub record: DiscoverySubscription,
    acked: BTreeMap<String, String>,
    last_nack: String,
}

fn short(type_url: &str) -> &'static str {
    if type_url == CLUSTER_TYPE() {
        "cds"
    } else if type_url == ENDPOINT_TYPE() {
        "eds"
    } else if type_url == LISTENER_TYPE() {
        "lds"
    } else if type_url == ROUTE_TYPE() {
        "rds"
    } else {
        "other"
    }
}

impl Session {
    pub fn new(state: Arc<ProxyState>, nonce_prefix: String, instance_id: &str, node: Option<&Node>) -> Session {
        let envoy = node.map(|n| {
            let version = match &n.user_agent_version_type {
                Some(envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType::UserAgentBuildVersion(
                    b,
                )) => b
                    .version
                    .as_ref()
                    .map(|v| format!("{}.{}.{}", v.major_number, v.minor_number, v.patch))
                    .unwrap_or_default(),
                Some(envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType::UserAgentVersion(v)) => {
                    v.clone()
                }
                None => String::new(),
            };
            EnvoyVersion { version, build: n.user_agent_name.clone() }
        });
        Session {
            state,
            types: BTreeMap::new(),
            record: DiscoverySubscription {
                id: nonce_prefix.clone(),
                control_plane_instance_id: instance_id.to_string(),
                connect_time: Some(insight::now()),
                status: Some(DiscoverySubscriptionStatus::default()),
                version: Some(Version { envoy, ..Default::default() }),
                ..Default::default()
            },
            nonce_prefix,
            acked: BTreeMap::new(),
            last_nack: String::new(),
        }
    }

    fn type_state(&mut self, type_url: &str) -> &mut TypeState {
        let prefix = format!("{}-{}", self.nonce_prefix, short(type_url));
        self.types.entry(type_url.to_string()).or_insert_with(|| TypeState {
            sender: DeltaSender::new(type_url, prefix),
            sotw_names: BTreeSet::new(),
            versions: HashMap::new(),
        })
    }

    /// Records what an ACK or NACK said.
    fn settle(&mut self, type_url: &str, kind: &RequestKind) {
        let ts = self.type_state(type_url);
        match kind {
            RequestKind::Ack { nonce } => {
                if let Some(v) = ts.versions.remove(nonce) {
                    self.acked.insert(short(type_url).to_string(), v);
                }
            }
            RequestKind::Nack { nonce, reason } => {
                ts.versions.remove(nonce);
                tracing::warn!(type_url, reason = %reason, "Envoy rejected a response");
                self.last_nack = format!("{}: {reason}", short(type_url));
            }
            _ => {}
        }
    }

    /// Delta responses that bring the peer up to date on `type_url`.
    fn pending(&mut self, type_url: &str, force: bool, max_bytes: usize) -> Vec<(DeltaDiscoveryResponse, DesiredSet)> {
        let desired = self.state.config.as_ref().ok().and_then(|c| c.get(type_url).cloned()).unwrap_or_default();
        let ts = self.type_state(type_url);
        let mut out = Vec::new();
        let mut force = force;
        while let Some(resp) = ts.sender.next_response(&desired, max_bytes, force) {
            force = false;
            let wanted: DesiredSet =
                desired.iter().filter(|(n, _)| ts.sender.wants(n)).map(|(n, d)| (n.clone(), d.clone())).collect();
            if ts.versions.len() >= MAX_UNSETTLED {
                // A peer that never settles old nonces: forget them (only
                // the insight's "ACKed version" of those is lost).
                ts.versions.clear();
            }
            ts.versions.insert(resp.nonce.clone(), set_version(&wanted));
            out.push((resp, wanted));
        }
        out
    }

    /// A delta request: the engine decides; answer what it produces.
    pub fn delta_request(&mut self, req: &DeltaDiscoveryRequest) -> Vec<DeltaDiscoveryResponse> {
        let kind = self.type_state(&req.type_url).sender.on_request(req);
        self.settle(&req.type_url, &kind);
        // The first request is answered even when empty; after that only a
        // real difference is (new names, possibly on an ACK): an ACK alone
        // finds the peer up to date and gets nothing.
        let force = kind == RequestKind::Initial;
        self.pending(&req.type_url, force, MAX_RESPONSE_BYTES).into_iter().map(|(r, _)| r).collect()
    }

    /// The configuration changed: diffs for every started type, clusters first.
    pub fn delta_change(&mut self) -> Vec<DeltaDiscoveryResponse> {
        let mut out = Vec::new();
        for t in type_urls() {
            if self.types.get(&t).is_some_and(|s| s.sender.started()) {
                out.extend(self.pending(&t, false, MAX_RESPONSE_BYTES).into_iter().map(|(r, _)| r));
            }
        }
        out
    }

    /// A state-of-the-world request, translated for the engine.
    pub fn sotw_request(&mut self, req: &DiscoveryRequest) -> Vec<DiscoveryResponse> {
        let type_url = req.type_url.clone();
        // LDS and CDS are wildcard in SotW: their (empty) name list means "all".
        let wildcard = type_url == LISTENER_TYPE() || type_url == CLUSTER_TYPE();
        let names: BTreeSet<String> = req.resource_names.iter().cloned().collect();
        let ts = self.type_state(&type_url);
        let first = !ts.sender.started();
        let mut delta = DeltaDiscoveryRequest { type_url: type_url.clone(), ..Default::default() };
        if first {
            if !wildcard {
                delta.resource_names_subscribe = names.iter().cloned().collect();
                if names.is_empty() {
                    // No names on a non-wildcard type means none, not all.
                    delta.resource_names_unsubscribe = vec!["*".into()];
                }
            }
        } else {
            if !wildcard {
                delta.resource_names_subscribe = names.difference(&ts.sotw_names).cloned().collect();
                delta.resource_names_unsubscribe = ts.sotw_names.difference(&names).cloned().collect();
            }
            delta.response_nonce = req.response_nonce.clone();
            delta.error_detail = req.error_detail.clone();
        }
        ts.sotw_names = names;
        let subscribed = !first && !delta.resource_names_subscribe.is_empty();
        let kind = ts.sender.on_request(&delta);
        self.settle(&type_url, &kind);
        // Answer the first request and new names; an ACK, NACK or stale
        // nonce gets nothing (trap: answering ACKs loops forever).
        let force = first || subscribed;
        self.sotw_pending(&type_url, force)
    }

    fn sotw_pending(&mut self, type_url: &str, force: bool) -> Vec<DiscoveryResponse> {
        // One response must carry the whole set: no byte budget.
        self.pending(type_url, force, usize::MAX)
            .into_iter()
            .map(|(resp, wanted)| DiscoveryResponse {
                version_info: set_version(&wanted),
                resources: wanted.into_values().map(|d| d.resource).collect(),
                type_url: type_url.to_string(),
                nonce: resp.nonce,
                ..Default::default()
            })
            .collect()
    }

    pub fn sotw_change(&mut self) -> Vec<DiscoveryResponse> {
        let mut out = Vec::new();
        for t in type_urls() {
            if self.types.get(&t).is_some_and(|s| s.sender.started()) {
                out.extend(self.sotw_pending(&t, false));
            }
        }
        out
    }

    /// Refreshes the insight record; `true` when it changed.
    pub fn refresh_record(&mut self) -> bool {
        let mut status = DiscoverySubscriptionStatus {
            acked_versions: self.acked.clone(),
            last_nack_reason: self.last_nack.clone(),
            ..Default::default()
        };
        let mut total = DiscoveryServiceStats::default();
        for (t, ts) in &self.types {
            let s = &ts.sender.stats;
            let stats = DiscoveryServiceStats {
                responses_sent: s.responses_sent,
                responses_acknowledged: s.responses_acked,
                responses_rejected: s.responses_nacked,
            };
            total.responses_sent += stats.responses_sent;
            total.responses_acknowledged += stats.responses_acknowledged;
            total.responses_rejected += stats.responses_rejected;
            match short(t) {
                "cds" => status.cds = Some(stats),
                "eds" => status.eds = Some(stats),
                "lds" => status.lds = Some(stats),
                "rds" => status.rds = Some(stats),
                _ => {}
            }
        }
        status.total = Some(total);
        let mut old = self.record.status.clone().unwrap_or_default();
        old.last_update_time = None;
        if old == status {
            return false;
        }
        status.last_update_time = Some(insight::now());
        self.record.status = Some(status);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::Any;
    use meridian_sync_proto::delta::{Desired, any_version};

    fn state(listeners: &[(&str, &str)]) -> Arc<ProxyState> {
        let set: DesiredSet = listeners
            .iter()
            .map(|(n, v)| {
                let any = Any { type_url: LISTENER_TYPE(), value: v.as_bytes().to_vec() };
                (n.to_string(), Desired { version: any_version(&any), resource: any })
            })
            .collect();
        let mut config = BTreeMap::new();
        config.insert(LISTENER_TYPE(), set);
        Arc::new(ProxyState { config: Ok(config), warnings: Vec::new() })
    }

    fn sotw(names: &[&str], nonce: &str, type_url: String) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url,
            response_nonce: nonce.into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn sotw_answers_initial_and_changes_never_acks() {
        let mut s = Session::new(state(&[("a", "1"), ("b", "2")]), "t".into(), "cp", None);
        let r = s.sotw_request(&sotw(&[], "", LISTENER_TYPE()));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].resources.len(), 2);
        let nonce = r[0].nonce.clone();
        assert!(s.sotw_request(&sotw(&[], &nonce, LISTENER_TYPE())).is_empty(), "an ACK is not answered");
        assert_eq!(s.acked.get("lds"), Some(&r[0].version_info));
        s.state = state(&[("a", "1")]);
        let r = s.sotw_change();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].resources.len(), 1, "SotW carries the whole set");
        assert!(s.sotw_change().is_empty());
        // Non-wildcard type: new names are answered even with a nonce.
        let r = s.sotw_request(&sotw(&["x"], "", ROUTE_TYPE()));
        assert_eq!(r.len(), 1);
        assert!(r[0].resources.is_empty());
        let r = s.sotw_request(&sotw(&["x", "y"], &r[0].nonce, ROUTE_TYPE()));
        assert_eq!(r.len(), 1);
        assert!(s.refresh_record());
        assert!(!s.refresh_record(), "unchanged stats: no write");
    }

    #[test]
    fn delta_answers_initial_even_empty_and_ignores_acks() {
        let mut s = Session::new(state(&[("a", "1")]), "t".into(), "cp", None);
        let init = DeltaDiscoveryRequest { type_url: ROUTE_TYPE(), ..Default::default() };
        let r = s.delta_request(&init);
        assert_eq!(r.len(), 1, "first request answered even when empty");
        let ack =
            DeltaDiscoveryRequest { type_url: ROUTE_TYPE(), response_nonce: r[0].nonce.clone(), ..Default::default() };
        assert!(s.delta_request(&ack).is_empty());
        let lds = DeltaDiscoveryRequest { type_url: LISTENER_TYPE(), ..Default::default() };
        assert_eq!(s.delta_request(&lds)[0].resources.len(), 1);
        s.state = state(&[("a", "2"), ("b", "1")]);
        let r = s.delta_change();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].resources.len(), 2);
    }
}
