//! The delta-discovery state machine, written once and driven by every
//! stream: KDS global→zone, KDS zone→global (roles reversed) and Envoy's
//! delta ADS.
//!
//! [`DeltaSender`] is the side that sends `DeltaDiscoveryResponse`s for one
//! type on one stream. It knows what the peer holds (versions from
//! `initial_resource_versions`, then everything it sent), diffs that against
//! the desired state, and turns the differences into responses no larger
//! than a byte budget. ACK and NACK only settle the nonce and the counters:
//! a NACKed resource is not resent until it changes (the peer said it cannot
//! take this version; resending it would loop), and it never blocks its
//! siblings.
//!
//! ```text
//!   desired (name → version, Any) ──┐
//!                                   ├─ diff ─▶ response{resources, removed, nonce} ──▶ peer
//!   peer holds (name → version) ◀───┘                                   │
//!        ▲                                                              ▼
//!        └──────────── sent versions (optimistic) ◀── ACK / NACK(nonce, error_detail)
//! ```
//!
//! [`DeltaReceiver`] is the other side: it remembers the versions it applied,
//! builds the first request (with `initial_resource_versions`, so a reconnect
//! costs only what changed) and ACKs or NACKs each response.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use envoy_types::pb::{
    envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource},
    google::{protobuf::Any, rpc::Status},
};
use prost::Message;
use sha2::{Digest, Sha256};

/// Longest NACK reason kept (Envoy's can hold a full dump of the resource).
pub const MAX_NACK_REASON: usize = 1024;

/// One resource the sender wants the peer to hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub version: String,
    pub resource: Any,
}

/// The desired state of one type: resource name → resource.
pub type DesiredSet = BTreeMap<String, Desired>;

/// The desired state of one type as a persistent map: cloning it is O(1)
/// and an insert or removal O(log n), sharing every untouched entry (and
/// its encoded payload) with the previous version. Fan-out caches publish
/// these so that one change costs O(log n), not a copy of the whole type.
pub type SharedSet = imbl::OrdMap<String, Desired>;

/// The names whose entries differ between two persistent sets; shared
/// structure is skipped, so this costs about the changes, not the sets.
pub fn shared_diff(old: &SharedSet, new: &SharedSet) -> Vec<String> {
    old.diff(new)
        .map(|d| match d {
            imbl::ordmap::DiffItem::Add(k, _) | imbl::ordmap::DiffItem::Remove(k, _) => k.clone(),
            imbl::ordmap::DiffItem::Update { new: (k, _), .. } => k.clone(),
        })
        .collect()
}

/// Read access to a desired set, whatever map holds it.
pub trait DesiredView {
    /// The resource named `name`, if desired.
    fn get_desired(&self, name: &str) -> Option<&Desired>;
    /// Every desired resource, in name order.
    fn entries(&self) -> Box<dyn Iterator<Item = (&String, &Desired)> + '_>;
}

impl DesiredView for DesiredSet {
    fn get_desired(&self, name: &str) -> Option<&Desired> {
        self.get(name)
    }
    fn entries(&self) -> Box<dyn Iterator<Item = (&String, &Desired)> + '_> {
        Box::new(self.iter())
    }
}

impl DesiredView for SharedSet {
    fn get_desired(&self, name: &str) -> Option<&Desired> {
        self.get(name)
    }
    fn entries(&self) -> Box<dyn Iterator<Item = (&String, &Desired)> + '_> {
        Box::new(self.iter())
    }
}

/// A stable content version for an `Any`: hex sha256 (first 16 bytes) of its
/// type URL and bytes. Use it where no domain version exists.
pub fn any_version(any: &Any) -> String {
    let mut h = Sha256::new();
    h.update(any.type_url.as_bytes());
    h.update([0]);
    h.update(&any.value);
    hex::encode(&h.finalize()[..16])
}

/// A version for a whole set (for state-of-the-world responses).
pub fn set_version<D: DesiredView + ?Sized>(set: &D) -> String {
    let mut h = Sha256::new();
    for (name, d) in set.entries() {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(d.version.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..16])
}

/// Counters of one type on one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendStats {
    pub responses_sent: u64,
    pub resources_sent: u64,
    pub responses_acked: u64,
    pub responses_nacked: u64,
    pub last_nack_reason: Option<String>,
    /// Resources not sent because one alone is over the per-resource cap
    /// ([`DeltaSender::set_max_resource_bytes`]), counted once per version.
    pub resources_withheld: u64,
}

/// What a request meant to the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    /// The first request of this type on the stream.
    Initial,
    /// Subscription change (names added or removed), no nonce.
    Subscribe,
    /// The peer accepted the response with this nonce.
    Ack { nonce: String },
    /// The peer rejected the response with this nonce.
    Nack { nonce: String, reason: String },
    /// An ACK/NACK for a nonce this stream never sent or already settled.
    Stale { nonce: String },
}

/// What a response carried, kept until its ACK or NACK.
#[derive(Debug, Clone, Default)]
struct InFlight {
    names: Vec<String>,
}

/// The sending side of one type on one delta stream.
#[derive(Debug, Clone)]
pub struct DeltaSender {
    type_url: String,
    started: bool,
    /// Wildcard subscription (no names asked for, or `*`).
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the peer holds (or will, once in-flight responses land).
    peer: BTreeMap<String, String>,
    in_flight: HashMap<String, InFlight>,
    nonce_seq: u64,
    /// Distinguishes nonces of different streams and restarts.
    nonce_prefix: String,
    /// A resource whose size alone is over this is withheld, not sent.
    max_resource_bytes: usize,
    /// Withheld resources: name → the version withheld (reported once).
    withheld: BTreeMap<String, String>,
    pub stats: SendStats,
}

impl DeltaSender {
    pub fn new(type_url: impl Into<String>, nonce_prefix: impl Into<String>) -> DeltaSender {
        DeltaSender {
            type_url: type_url.into(),
            started: false,
            wildcard: true,
            names: BTreeSet::new(),
            peer: BTreeMap::new(),
            in_flight: HashMap::new(),
            nonce_seq: 0,
            nonce_prefix: nonce_prefix.into(),
            max_resource_bytes: usize::MAX,
            withheld: BTreeMap::new(),
            stats: SendStats::default(),
        }
    }

    /// Caps one resource, in bytes as counted for budgets (encoded value,
    /// name, version and framing). A resource over the cap is withheld: it
    /// is not sent (the peer keeps what it holds under that name), it is
    /// reported once per version through the log and
    /// [`SendStats::resources_withheld`], and the rest of the set still
    /// travels. Without it, one resource no message can carry would end
    /// every stream that tries to send it, again on each reconnect. Default:
    /// no cap.
    pub fn set_max_resource_bytes(&mut self, max: usize) {
        self.max_resource_bytes = max;
    }

    /// Names withheld for being over the per-resource cap, with versions.
    pub fn withheld(&self) -> &BTreeMap<String, String> {
        &self.withheld
    }

    /// Whether `name` at `version` (of `size` bytes) is withheld; records
    /// and reports it the first time.
    fn withhold(&mut self, name: &str, version: &str, size: usize) -> bool {
        if size <= self.max_resource_bytes {
            if !self.withheld.is_empty() {
                self.withheld.remove(name);
            }
            return false;
        }
        if self.withheld.get(name).map(String::as_str) != Some(version) {
            self.withheld.insert(name.to_string(), version.to_string());
            self.stats.resources_withheld += 1;
            tracing::error!(
                type_url = %self.type_url,
                resource = name,
                size,
                cap = self.max_resource_bytes,
                "{}",
                crate::kds::oversized_resource(&self.type_url, name, size, self.max_resource_bytes)
            );
        }
        true
    }

    pub fn type_url(&self) -> &str {
        &self.type_url
    }

    /// Whether the peer has asked for this type yet.
    pub fn started(&self) -> bool {
        self.started
    }

    /// What the peer holds, as this sender believes.
    pub fn peer_versions(&self) -> &BTreeMap<String, String> {
        &self.peer
    }

    /// Whether `name` is subscribed.
    pub fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// Takes a request of this type and says what it was.
    pub fn on_request(&mut self, req: &DeltaDiscoveryRequest) -> RequestKind {
        let first = !self.started;
        if first {
            self.started = true;
            self.peer = req.initial_resource_versions.clone().into_iter().collect();
            // Explicit names without "*" narrow the first subscription; none = wildcard.
            self.wildcard =
                req.resource_names_subscribe.is_empty() || req.resource_names_subscribe.iter().any(|n| n == "*");
        }
        for n in &req.resource_names_subscribe {
            if n == "*" {
                self.wildcard = true;
            } else {
                self.names.insert(n.clone());
                // A re-subscribe means "send it again even if you sent it before".
                if !first {
                    self.peer.remove(n);
                }
            }
        }
        for n in &req.resource_names_unsubscribe {
            if n == "*" {
                self.wildcard = false;
            } else {
                self.names.remove(n);
            }
            self.peer.remove(n);
        }
        if first {
            return RequestKind::Initial;
        }
        if req.response_nonce.is_empty() {
            return RequestKind::Subscribe;
        }
        let nonce = req.response_nonce.clone();
        if self.in_flight.remove(&nonce).is_none() {
            return RequestKind::Stale { nonce };
        }
        match &req.error_detail {
            Some(status) if status.code != 0 || !status.message.is_empty() => {
                let reason = truncate(&status.message, MAX_NACK_REASON);
                self.stats.responses_nacked += 1;
                self.stats.last_nack_reason = Some(reason.clone());
                RequestKind::Nack { nonce, reason }
            }
            _ => {
                self.stats.responses_acked += 1;
                RequestKind::Ack { nonce }
            }
        }
    }

    /// The next response that moves the peer towards `desired`, holding at
    /// most `max_bytes` of resources (one resource larger than the budget
    /// travels alone). `None` when the peer is up to date. Call it again
    /// until it returns `None` to send everything. `force` answers even
    /// when nothing differs (the first response of a type must be sent).
    pub fn next_response<D: DesiredView + ?Sized>(
        &mut self,
        desired: &D,
        max_bytes: usize,
        force: bool,
    ) -> Option<DeltaDiscoveryResponse> {
        if !self.started {
            return None;
        }
        let mut resources = Vec::new();
        let mut removed = Vec::new();
        let mut used = 0usize;
        for (name, d) in desired.entries() {
            if !self.wants(name) || self.peer.get(name) == Some(&d.version) {
                continue;
            }
            let size = d.resource.value.len() + name.len() + d.version.len() + 16;
            if self.withhold(name, &d.version, size) {
                continue;
            }
            if !resources.is_empty() && used + size > max_bytes {
                break;
            }
            used += size;
            resources.push(Resource {
                name: name.clone(),
                version: d.version.clone(),
                resource: Some(d.resource.clone()),
                ..Default::default()
            });
        }
        for name in self.peer.keys() {
            if desired.get_desired(name).is_none() || !self.wants(name) {
                if used + name.len() + 8 > max_bytes && !(resources.is_empty() && removed.is_empty()) {
                    break;
                }
                used += name.len() + 8;
                removed.push(name.clone());
            }
        }
        // The set's hash costs the whole set: only for a response that goes.
        let version =
            if resources.is_empty() && removed.is_empty() && !force { String::new() } else { set_version(desired) };
        self.finish(resources, removed, force, version)
    }

    /// Like [`Self::next_response`], but looks only at `keys`: the names that
    /// differ between the set this sender last brought the peer up to date
    /// with and `desired` (so a change costs the keys it touched, not the
    /// whole set). Only valid after a full [`Self::next_response`] round on
    /// the previous set. Its responses carry no `system_version_info`
    /// (Envoy documents that field as for debugging only).
    pub fn next_response_keys<D: DesiredView + ?Sized>(
        &mut self,
        desired: &D,
        keys: &[String],
        max_bytes: usize,
        force: bool,
    ) -> Option<DeltaDiscoveryResponse> {
        if !self.started {
            return None;
        }
        let mut resources = Vec::new();
        let mut removed = Vec::new();
        let mut used = 0usize;
        for name in keys {
            let some = !(resources.is_empty() && removed.is_empty());
            match desired.get_desired(name).filter(|_| self.wants(name)) {
                Some(d) => {
                    if self.peer.get(name) == Some(&d.version) {
                        continue;
                    }
                    let size = d.resource.value.len() + name.len() + d.version.len() + 16;
                    if self.withhold(name, &d.version, size) {
                        continue;
                    }
                    if some && used + size > max_bytes {
                        break;
                    }
                    used += size;
                    resources.push(Resource {
                        name: name.clone(),
                        version: d.version.clone(),
                        resource: Some(d.resource.clone()),
                        ..Default::default()
                    });
                }
                None => {
                    if !self.peer.contains_key(name) {
                        continue;
                    }
                    if some && used + name.len() + 8 > max_bytes {
                        break;
                    }
                    used += name.len() + 8;
                    removed.push(name.clone());
                }
            }
        }
        self.finish(resources, removed, force, String::new())
    }

    /// Records what a response carries as held and in flight, and builds it.
    fn finish(
        &mut self,
        resources: Vec<Resource>,
        removed: Vec<String>,
        force: bool,
        system_version_info: String,
    ) -> Option<DeltaDiscoveryResponse> {
        if resources.is_empty() && removed.is_empty() && !force {
            return None;
        }
        for r in &resources {
            self.peer.insert(r.name.clone(), r.version.clone());
        }
        for n in &removed {
            self.peer.remove(n);
        }
        self.nonce_seq += 1;
        let nonce = format!("{}-{}", self.nonce_prefix, self.nonce_seq);
        let names = resources.iter().map(|r| r.name.clone()).chain(removed.iter().cloned()).collect();
        self.in_flight.insert(nonce.clone(), InFlight { names });
        self.stats.responses_sent += 1;
        self.stats.resources_sent += resources.len() as u64;
        Some(DeltaDiscoveryResponse {
            system_version_info,
            resources,
            type_url: self.type_url.clone(),
            removed_resources: removed,
            nonce,
            ..Default::default()
        })
    }

    /// Responses sent and not yet ACKed or NACKed.
    pub fn pending(&self) -> usize {
        self.in_flight.len()
    }

    /// Names carried by an in-flight response (for NACK reports).
    pub fn in_flight_names(&self, nonce: &str) -> Option<&[String]> {
        self.in_flight.get(nonce).map(|f| f.names.as_slice())
    }
}

/// The receiving side of one type on one delta stream.
#[derive(Debug, Clone, Default)]
pub struct DeltaReceiver {
    type_url: String,
    /// name → version applied locally.
    held: BTreeMap<String, String>,
}

/// The changes a response asks the receiver to apply.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReceivedChanges {
    pub upserts: Vec<(String, String, Any)>,
    pub removals: Vec<String>,
    pub nonce: String,
}

impl DeltaReceiver {
    /// `held` is what the receiver already has (from its own store).
    pub fn new(type_url: impl Into<String>, held: BTreeMap<String, String>) -> DeltaReceiver {
        DeltaReceiver { type_url: type_url.into(), held }
    }

    pub fn held(&self) -> &BTreeMap<String, String> {
        &self.held
    }

    /// The first request of a stream: wildcard, with what is already held.
    pub fn initial_request(
        &self,
        node: Option<envoy_types::pb::envoy::config::core::v3::Node>,
    ) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            node,
            type_url: self.type_url.clone(),
            initial_resource_versions: self.held.clone().into_iter().collect(),
            ..Default::default()
        }
    }

    /// Splits a response into changes; malformed entries (no name, no
    /// payload) are returned as errors to NACK with.
    pub fn on_response(&self, resp: &DeltaDiscoveryResponse) -> (ReceivedChanges, Vec<String>) {
        let mut changes = ReceivedChanges { nonce: resp.nonce.clone(), ..Default::default() };
        let mut errors = Vec::new();
        for r in &resp.resources {
            match (&r.resource, r.name.is_empty()) {
                (Some(any), false) => changes.upserts.push((r.name.clone(), r.version.clone(), any.clone())),
                (_, true) => errors.push("resource without a name".to_string()),
                (None, false) => errors.push(format!("{}: resource without a payload", r.name)),
            }
        }
        changes.removals = resp.removed_resources.clone();
        (changes, errors)
    }

    /// Records what was applied (call after a successful local write).
    pub fn applied(&mut self, name: &str, version: &str) {
        self.held.insert(name.to_string(), version.to_string());
    }

    pub fn removed(&mut self, name: &str) {
        self.held.remove(name);
    }

    pub fn ack(&self, nonce: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: self.type_url.clone(),
            response_nonce: nonce.to_string(),
            ..Default::default()
        }
    }

    pub fn nack(&self, nonce: &str, reason: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: self.type_url.clone(),
            response_nonce: nonce.to_string(),
            error_detail: Some(Status {
                code: 3, // INVALID_ARGUMENT
                message: truncate(reason, MAX_NACK_REASON),
                details: Vec::new(),
            }),
            ..Default::default()
        }
    }
}

/// Encoded size of a message, for budgets.
pub fn encoded_len<M: Message>(m: &M) -> usize {
    m.encoded_len()
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(v: &str) -> Any {
        Any { type_url: "t".into(), value: v.as_bytes().to_vec() }
    }

    fn desired(items: &[(&str, &str)]) -> DesiredSet {
        items
            .iter()
            .map(|(n, v)| {
                let a = any(v);
                (n.to_string(), Desired { version: any_version(&a), resource: a })
            })
            .collect()
    }

    fn sender() -> DeltaSender {
        DeltaSender::new("Mesh", "s")
    }

    #[test]
    fn initial_wildcard_sends_everything_once() {
        let mut s = sender();
        let d = desired(&[("a", "1"), ("b", "2")]);
        assert!(s.next_response(&d, 1 << 20, false).is_none(), "nothing before the first request");
        assert_eq!(s.on_request(&DeltaDiscoveryRequest::default()), RequestKind::Initial);
        let r = s.next_response(&d, 1 << 20, true).expect("response");
        assert_eq!(r.resources.len(), 2);
        assert!(s.next_response(&d, 1 << 20, false).is_none(), "no resend of what was sent");
        let ack = DeltaDiscoveryRequest { response_nonce: r.nonce.clone(), ..Default::default() };
        assert_eq!(s.on_request(&ack), RequestKind::Ack { nonce: r.nonce });
        assert_eq!(s.stats.responses_acked, 1);
        assert_eq!(s.on_request(&ack), RequestKind::Stale { nonce: ack.response_nonce.clone() });
    }

    #[test]
    fn initial_versions_mean_only_differences_travel() {
        let d = desired(&[("a", "1"), ("b", "2"), ("c", "3")]);
        let mut s = sender();
        let mut initial = DeltaDiscoveryRequest::default();
        initial.initial_resource_versions.insert("a".into(), d["a"].version.clone());
        initial.initial_resource_versions.insert("b".into(), "old".into());
        initial.initial_resource_versions.insert("gone".into(), "x".into());
        s.on_request(&initial);
        let r = s.next_response(&d, 1 << 20, true).expect("response");
        let names: Vec<&str> = r.resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(r.removed_resources, ["gone"]);
    }

    #[test]
    fn first_response_is_sent_even_when_empty() {
        let mut s = sender();
        s.on_request(&DeltaDiscoveryRequest::default());
        let r = s.next_response(&DesiredSet::new(), 1 << 20, true).expect("forced");
        assert!(r.resources.is_empty() && r.removed_resources.is_empty());
    }

    #[test]
    fn updates_and_removals_are_diffed() {
        let mut s = sender();
        s.on_request(&DeltaDiscoveryRequest::default());
        s.next_response(&desired(&[("a", "1"), ("b", "2")]), 1 << 20, true);
        let r = s.next_response(&desired(&[("a", "1*")]), 1 << 20, false).expect("diff");
        assert_eq!(r.resources.len(), 1);
        assert_eq!(r.resources[0].name, "a");
        assert_eq!(r.removed_resources, ["b"]);
    }

    #[test]
    fn nack_is_counted_and_not_resent() {
        let mut s = sender();
        s.on_request(&DeltaDiscoveryRequest::default());
        let d = desired(&[("a", "1")]);
        let r = s.next_response(&d, 1 << 20, true).expect("response");
        let recv = DeltaReceiver::new("Mesh", BTreeMap::new());
        let kind = s.on_request(&recv.nack(&r.nonce, "a: bad"));
        assert_eq!(kind, RequestKind::Nack { nonce: r.nonce, reason: "a: bad".into() });
        assert_eq!(s.stats.last_nack_reason.as_deref(), Some("a: bad"));
        assert!(s.next_response(&d, 1 << 20, false).is_none());
        // a new version of it goes out again
        assert!(s.next_response(&desired(&[("a", "2")]), 1 << 20, false).is_some());
    }

    #[test]
    fn a_resource_over_the_cap_is_withheld_once_and_the_rest_travels() {
        let mut s = sender();
        s.set_max_resource_bytes(150);
        s.on_request(&DeltaDiscoveryRequest::default());
        let big = "x".repeat(200);
        let d = desired(&[("small", "1"), ("huge", big.as_str()), ("tiny", "2")]);
        let r = s.next_response(&d, 1 << 20, true).expect("response");
        let names: Vec<&str> = r.resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["small", "tiny"]);
        assert_eq!(s.withheld().keys().collect::<Vec<_>>(), ["huge"]);
        assert_eq!(s.stats.resources_withheld, 1);
        // Not sent again, not counted again, and the loop ends.
        assert!(s.next_response(&d, 1 << 20, false).is_none());
        let keys = vec!["huge".to_string()];
        assert!(s.next_response_keys(&d, &keys, 1 << 20, false).is_none());
        assert_eq!(s.stats.resources_withheld, 1);
        // Once it fits, it travels and is no longer withheld.
        let d = desired(&[("small", "1"), ("huge", "3"), ("tiny", "2")]);
        let r = s.next_response_keys(&d, &keys, 1 << 20, false).expect("now it fits");
        assert_eq!(r.resources[0].name, "huge");
        assert!(s.withheld().is_empty());
    }

    #[test]
    fn large_sets_are_split_by_budget() {
        let mut s = sender();
        s.on_request(&DeltaDiscoveryRequest::default());
        let big = "x".repeat(100);
        let items: Vec<(String, String)> = (0..10).map(|i| (format!("r{i}"), format!("{big}{i}"))).collect();
        let refs: Vec<(&str, &str)> = items.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let d = desired(&refs);
        let mut total = 0;
        let mut responses = 0;
        while let Some(r) = s.next_response(&d, 350, responses == 0) {
            assert!(r.resources.len() <= 3, "budget respected");
            total += r.resources.len();
            responses += 1;
        }
        assert_eq!(total, 10);
        assert!(responses >= 4);
        // one resource bigger than the budget still travels, alone
        let mut s = sender();
        s.on_request(&DeltaDiscoveryRequest::default());
        assert_eq!(s.next_response(&d, 10, true).expect("alone").resources.len(), 1);
    }

    #[test]
    fn named_subscriptions_filter_and_resubscribe_resends() {
        let mut s = sender();
        let first = DeltaDiscoveryRequest { resource_names_subscribe: vec!["a".into()], ..Default::default() };
        s.on_request(&first);
        let d = desired(&[("a", "1"), ("b", "2")]);
        let r = s.next_response(&d, 1 << 20, true).expect("response");
        assert_eq!(r.resources.len(), 1);
        let more = DeltaDiscoveryRequest { resource_names_subscribe: vec!["b".into()], ..Default::default() };
        assert_eq!(s.on_request(&more), RequestKind::Subscribe);
        let r = s.next_response(&d, 1 << 20, false).expect("b");
        assert_eq!(r.resources[0].name, "b");
        let un = DeltaDiscoveryRequest { resource_names_unsubscribe: vec!["a".into()], ..Default::default() };
        s.on_request(&un);
        assert!(s.next_response(&d, 1 << 20, false).is_none(), "unsubscribed: nothing to remove");
        assert!(!s.wants("a"));
    }

    #[test]
    fn receiver_builds_initial_and_splits_responses() {
        let mut held = BTreeMap::new();
        held.insert("a".to_string(), "v1".to_string());
        let mut r = DeltaReceiver::new("Mesh", held);
        let init = r.initial_request(None);
        assert_eq!(init.initial_resource_versions.get("a").map(String::as_str), Some("v1"));
        let resp = DeltaDiscoveryResponse {
            nonce: "n1".into(),
            resources: vec![
                Resource { name: "b".into(), version: "v2".into(), resource: Some(any("b")), ..Default::default() },
                Resource { name: "c".into(), version: "v".into(), resource: None, ..Default::default() },
            ],
            removed_resources: vec!["a".into()],
            ..Default::default()
        };
        let (changes, errors) = r.on_response(&resp);
        assert_eq!(changes.upserts.len(), 1);
        assert_eq!(changes.removals, ["a"]);
        assert_eq!(errors.len(), 1);
        r.applied("b", "v2");
        r.removed("a");
        assert_eq!(r.held().len(), 1);
        assert_eq!(r.ack("n1").response_nonce, "n1");
    }

    #[test]
    fn keyed_diff_sends_only_the_changed_keys() {
        let mut s = sender();
        s.on_request(&DeltaDiscoveryRequest::default());
        let old: SharedSet = desired(&[("a", "1"), ("b", "2"), ("c", "3")]).into_iter().collect();
        while s.next_response(&old, 1 << 20, false).is_some() {}
        let mut new = old.clone();
        new.insert("b".into(), desired(&[("b", "2*")])["b"].clone());
        new.remove("c");
        new.insert("d".into(), desired(&[("d", "4")])["d"].clone());
        let keys = shared_diff(&old, &new);
        assert_eq!(keys, ["b", "c", "d"]);
        let r = s.next_response_keys(&new, &keys, 1 << 20, false).expect("diff");
        let names: Vec<&str> = r.resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["b", "d"]);
        assert_eq!(r.removed_resources, ["c"]);
        assert!(s.next_response_keys(&new, &keys, 1 << 20, false).is_none());
        assert!(s.next_response(&new, 1 << 20, false).is_none(), "the keyed diff left nothing behind");
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h…");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
