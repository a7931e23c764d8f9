//! One ADS stream: the shared sending loop
//! ([`meridian_sync_proto::driver::send_loop`]) over a [`ProxySource`] (the
//! Dataplane's generated configuration), on either wire, with an
//! [`InsightObserver`] keeping its DataplaneInsight subscription.
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
//!   Envoy ──req──▶ DeltaWire | SotwWire (translated) ──▶ send_loop ◀── ProxySource (cache)
//!   Envoy ◀──resp── (delta as is | SotW: full subscribed set) ◀──┘
//! ```

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use envoy_types::pb::envoy::{
    config::core::v3::Node,
    service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse},
};
use meridian_sync_proto::{
    delta::{Desired, DesiredSet, DesiredView, SendStats, set_version},
    driver::{Incoming, Observer, SendWire, Source},
    pb::mesh::{
        ConfigSource, DiscoveryServiceStats, DiscoverySubscription, DiscoverySubscriptionStatus, EnvoyVersion,
        RejectedResource, Version,
    },
};
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};

use super::{
    cache::{ProxyError, ProxyState},
    insight::{self, InsightHandle},
};
use crate::gateway::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, SECRET_TYPE, Sources, type_urls};

/// Largest total of resources in one delta response: Envoy's gRPC client
/// accepts 4 MiB messages by default; leave room for the envelope.
pub const MAX_RESPONSE_BYTES: usize = 3 * 1024 * 1024;

/// Unsettled responses remembered per type (their versions, for insights).
const MAX_UNSETTLED: usize = 256;
/// Rejected resources kept in a DataplaneInsight record (the newest).
const MAX_REJECTED: usize = 32;

fn short(type_url: &str) -> &'static str {
    if type_url == CLUSTER_TYPE() {
        "cds"
    } else if type_url == ENDPOINT_TYPE() {
        "eds"
    } else if type_url == LISTENER_TYPE() {
        "lds"
    } else if type_url == ROUTE_TYPE() {
        "rds"
    } else if type_url == SECRET_TYPE() {
        "sds"
    } else {
        "other"
    }
}

/// One type of one Dataplane's generated configuration, read in place
/// (no copy of the set per response).
#[derive(Clone)]
pub struct ProxySet {
    state: Arc<ProxyState>,
    type_url: String,
}

impl ProxySet {
    fn set(&self) -> Option<&DesiredSet> {
        self.state.config.as_ref().ok().and_then(|c| c.get(&self.type_url))
    }
}

impl DesiredView for ProxySet {
    fn get_desired(&self, name: &str) -> Option<&Desired> {
        self.set().and_then(|s| s.get(name))
    }
    fn entries(&self) -> Box<dyn Iterator<Item = (&String, &Desired)> + '_> {
        match self.set() {
            Some(s) => Box::new(s.iter()),
            None => Box::new(std::iter::empty()),
        }
    }
}

/// A Dataplane's generated configuration, as the cache publishes it.
pub struct ProxySource {
    pub rx: watch::Receiver<Arc<ProxyState>>,
    pub state: Arc<ProxyState>,
    /// The mTLS phase index of `state` (what responses are being sent
    /// from), shared with the stream's [`PhaseReport`].
    pub held: Arc<AtomicU64>,
}

impl Source for ProxySource {
    type Set = ProxySet;
    type Error = ProxyError;

    fn serves(&self, type_url: &str) -> bool {
        type_urls().iter().any(|t| t == type_url)
    }

    fn desired(&mut self, type_url: &str) -> ProxySet {
        ProxySet { state: self.state.clone(), type_url: type_url.to_string() }
    }

    /// Every type may have changed; clusters first (the order of [`type_urls`]).
    /// A Dataplane that disappeared or stopped generating ends the stream.
    async fn changed(&mut self) -> Result<Vec<String>, ProxyError> {
        if self.rx.changed().await.is_err() {
            return Err(ProxyError::Gone);
        }
        let state = self.rx.borrow_and_update().clone();
        if let Err(e) = &state.config {
            return Err(e.clone());
        }
        self.held.store(state.phase, Ordering::SeqCst);
        self.state = state;
        Ok(type_urls().to_vec())
    }
}

/// Delta ADS: requests and responses as they are. The request read to
/// find the node is replayed first.
pub struct DeltaWire {
    pub first: Option<DeltaDiscoveryRequest>,
    pub inbound: Streaming<DeltaDiscoveryRequest>,
    pub tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
}

impl SendWire for DeltaWire {
    type Error = Status;
    async fn recv(&mut self) -> Result<Option<Incoming>, Status> {
        if let Some(request) = self.first.take() {
            return Ok(Some(Incoming { request, force: false }));
        }
        Ok(self.inbound.message().await?.map(|request| Incoming { request, force: false }))
    }
    async fn send(&mut self, response: DeltaDiscoveryResponse, _full: Option<DesiredSet>) -> bool {
        self.tx.send(Ok(response)).await.is_ok()
    }
}

/// State of the world translated for the delta engine: each request's full
/// name list becomes the subscribe/unsubscribe delta against the previous
/// one, its nonce/error an ACK/NACK; each response the engine produces goes
/// out as the whole subscribed set, versioned by [`set_version`], with the
/// engine's nonce. ACKs are never answered (the loop's rule).
#[derive(Default)]
pub struct SotwTranslator {
    started: HashSet<String>,
    names: HashMap<String, BTreeSet<String>>,
}

impl SotwTranslator {
    /// The delta request a SotW request means.
    pub fn request(&mut self, req: &DiscoveryRequest) -> Incoming {
        let type_url = req.type_url.clone();
        // LDS and CDS are wildcard in SotW: their (empty) name list means "all".
        let wildcard = type_url == LISTENER_TYPE() || type_url == CLUSTER_TYPE();
        let names: BTreeSet<String> = req.resource_names.iter().cloned().collect();
        let first = self.started.insert(type_url.clone());
        let previous = self.names.entry(type_url.clone()).or_default();
        let mut delta = DeltaDiscoveryRequest { type_url, node: req.node.clone(), ..Default::default() };
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
                delta.resource_names_subscribe = names.difference(previous).cloned().collect();
                delta.resource_names_unsubscribe = previous.difference(&names).cloned().collect();
            }
            delta.response_nonce = req.response_nonce.clone();
            delta.error_detail = req.error_detail.clone();
        }
        // New names are answered even on a nonce (with the whole set).
        let force = !first && !delta.resource_names_subscribe.is_empty();
        *previous = names;
        Incoming { request: delta, force }
    }

    /// The SotW response for an engine response and the whole subscribed set.
    pub fn response(resp: DeltaDiscoveryResponse, full: DesiredSet) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: set_version(&full),
            resources: full.into_values().map(|d| d.resource).collect(),
            type_url: resp.type_url,
            nonce: resp.nonce,
            ..Default::default()
        }
    }
}

pub struct SotwWire {
    pub first: Option<DiscoveryRequest>,
    pub inbound: Streaming<DiscoveryRequest>,
    pub tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    pub translator: SotwTranslator,
}

impl SendWire for SotwWire {
    type Error = Status;
    const FULL_STATE: bool = true;
    async fn recv(&mut self) -> Result<Option<Incoming>, Status> {
        let req = match self.first.take() {
            Some(r) => r,
            None => match self.inbound.message().await? {
                Some(r) => r,
                None => return Ok(None),
            },
        };
        Ok(Some(self.translator.request(&req)))
    }
    async fn send(&mut self, response: DeltaDiscoveryResponse, full: Option<DesiredSet>) -> bool {
        let resp = SotwTranslator::response(response, full.unwrap_or_default());
        self.tx.send(Ok(resp)).await.is_ok()
    }
}

/// Tells the cache which mTLS phase of its mesh a proxy's Envoy holds
/// ([`crate::xds::cache::Cache::holds`]): the phase of the state the last
/// responses were sent from, once every response sent was ACKed and none
/// NACKed since (delta sends every changed resource, so Envoy then holds
/// nothing of an earlier phase); or, when a new phase changed nothing for
/// this proxy, that phase as soon as nothing is outstanding.
pub struct PhaseReport {
    cache: crate::xds::cache::Cache,
    id: crate::xds::cache::ProxyId,
    /// The phase of the state the driver sends from ([`ProxySource::held`]).
    held: Arc<AtomicU64>,
    /// The phase of the state the last response was sent from.
    sent: u64,
    /// A response NACKed since the last one sent: Envoy kept older pieces.
    nacked: bool,
}

impl PhaseReport {
    pub fn new(cache: crate::xds::cache::Cache, id: crate::xds::cache::ProxyId, held: Arc<AtomicU64>) -> PhaseReport {
        let sent = held.load(Ordering::SeqCst);
        PhaseReport { cache, id, held, sent, nacked: false }
    }
}

/// The DataplaneInsight subscription one stream maintains: counters per
/// type, ACKed versions, the last NACK, what Envoy answered per source.
///
/// Events only update the stream's [`Tracker`] (cheap: counters and maps)
/// and queue it with the zone's insight writer once; the record itself
/// (which clones every source, rejection and warning) is built by the
/// writer when it writes ([`insight::Snapshot`]), at most once per
/// [`insight::FLUSH`], not once per ACK: with 200 streams and a route
/// configuration of 60 routes, building it per event was ~45 % of the
/// zone's CPU per update.
pub struct InsightObserver {
    tracker: Arc<Tracked>,
    handle: Option<InsightHandle>,
    /// Reports the mTLS phase Envoy holds, when set.
    phases: Option<PhaseReport>,
}

/// A stream's tracker, shared with the insight writer.
struct Tracked {
    tracker: std::sync::Mutex<Tracker>,
    /// Queued with the writer and not yet taken: later events need not
    /// queue it again.
    queued: std::sync::atomic::AtomicBool,
}

impl insight::Snapshot for Tracked {
    fn snapshot(&self) -> DiscoverySubscription {
        self.queued.store(false, Ordering::SeqCst);
        let mut t = meridian_sync_proto::driver::lock(&self.tracker);
        t.refresh_record();
        t.record.clone()
    }
}

/// What the insight of one stream is built from.
struct Tracker {
    record: DiscoverySubscription,
    stats: BTreeMap<String, SendStats>,
    /// Nonce → what the response carried (the set's version, its
    /// resources' names and versions), per type.
    versions: HashMap<String, HashMap<String, Carried>>,
    /// Resources Envoy rejected and has not accepted a later version of:
    /// (short type, name) → the rejection.
    rejected: BTreeMap<(String, String), RejectedResource>,
    acked: BTreeMap<String, String>,
    last_nack: String,
    /// The proxy's generated state, for its generator warnings.
    state: Option<watch::Receiver<Arc<ProxyState>>>,
    /// What Envoy answered per source resource ([`ConfigSources`]).
    sources: ConfigSources,
}

/// Envoy's answers, joined to the resources the configuration was built
/// from (DataplaneInsight `configSources`). Responses are grouped into
/// generations (one per generated state they were sent from); a source
/// version is ACKed once every response of its generation was ACKed, and
/// NACKed as soon as one of them was NACKed (a later generation's full ACK
/// clears that). Each event costs the size of one generation's sources.
#[derive(Default)]
struct ConfigSources {
    /// The state responses were last sent from, and its generation.
    current: Option<(Arc<ProxyState>, u64)>,
    /// The answer to the last settled generation: `None` ACKed, else the NACK reason.
    last_settled: Option<Option<String>>,
    /// Unsettled generations: their sources, responses not yet answered,
    /// and the NACK reason if one was NACKed.
    open: BTreeMap<u64, OpenGeneration>,
    /// (type, name) → the latest answer, and the generation it came from.
    answered: BTreeMap<(meridian_sync_proto::ResourceType, String), (ConfigSource, u64)>,
}

struct OpenGeneration {
    sources: Arc<Sources>,
    outstanding: usize,
}

impl ConfigSources {
    /// A response is being sent from `state`; returns its generation.
    fn sent(&mut self, state: Arc<ProxyState>) -> u64 {
        let sources = state.sources.clone();
        let generation = match &self.current {
            Some((s, g)) if Arc::ptr_eq(&s.sources, &sources) || *s.sources == *sources => *g,
            Some((_, g)) => g + 1,
            None => 1,
        };
        self.current = Some((state, generation));
        let open = self.open.entry(generation).or_insert(OpenGeneration { sources, outstanding: 0 });
        open.outstanding += 1;
        while self.open.len() > MAX_UNSETTLED {
            self.open.pop_first();
        }
        generation
    }

    /// Envoy ACKed one response of `generation`.
    fn acked(&mut self, generation: u64) {
        let Some(open) = self.open.get_mut(&generation) else { return };
        open.outstanding = open.outstanding.saturating_sub(1);
        if open.outstanding > 0 {
            return;
        }
        let Some(open) = self.open.remove(&generation) else { return };
        // Older generations are superseded by this one.
        self.open.retain(|g, _| *g > generation);
        self.last_settled = Some(None);
        let time = insight::now();
        for ((ty, name), version) in open.sources.iter() {
            let key = (*ty, name.clone());
            let nacked_since = self
                .answered
                .get(&key)
                .is_some_and(|(s, g)| *g >= generation && s.state == "NACKed" && &s.version == version);
            if nacked_since {
                continue;
            }
            let answer = ConfigSource {
                r#type: ty.name().to_string(),
                name: name.clone(),
                version: version.clone(),
                state: "ACKed".into(),
                reason: String::new(),
                time: Some(time),
            };
            self.answered.insert(key, (answer, generation));
        }
        self.forget_gone(&open.sources);
    }

    /// Envoy NACKed one response of `generation` with `reason`.
    fn nacked(&mut self, generation: u64, reason: &str) {
        let Some(open) = self.open.get_mut(&generation) else { return };
        open.outstanding = open.outstanding.saturating_sub(1);
        let sources = open.sources.clone();
        if open.outstanding == 0 {
            self.open.remove(&generation);
        }
        self.last_settled = Some(Some(reason.to_string()));
        self.record_nack(generation, &sources, reason);
    }

    fn record_nack(&mut self, generation: u64, sources: &Sources, reason: &str) {
        let time = insight::now();
        for ((ty, name), version) in sources.iter() {
            let answer = ConfigSource {
                r#type: ty.name().to_string(),
                name: name.clone(),
                version: version.clone(),
                state: "NACKed".into(),
                reason: truncate(reason),
                time: Some(time),
            };
            self.answered.insert((*ty, name.clone()), (answer, generation));
        }
    }

    /// The source moved to `state` and nothing was sent: when `state`
    /// holds the same resources as the one last sent, its sources share
    /// that configuration's answer (an open generation settles with them;
    /// a settled one gives them its ACK or NACK now). `true` when the
    /// answers changed.
    fn same_config(&mut self, state: &Arc<ProxyState>) -> bool {
        let Some((current, generation)) = self.current.clone() else { return false };
        if *current.sources == *state.sources || !current.same_versions(state) {
            return false;
        }
        self.current = Some((state.clone(), generation));
        if let Some(open) = self.open.get_mut(&generation) {
            open.sources = state.sources.clone();
            return false;
        }
        match self.last_settled.clone() {
            Some(None) => {
                self.open.insert(generation, OpenGeneration { sources: state.sources.clone(), outstanding: 1 });
                self.acked(generation);
                true
            }
            Some(Some(reason)) => {
                self.record_nack(generation, &state.sources, &reason);
                true
            }
            None => false,
        }
    }

    /// Drops answers about resources the configuration no longer uses
    /// (after a generation without them was ACKed).
    fn forget_gone(&mut self, now: &Sources) {
        self.answered.retain(|k, _| now.contains_key(k));
    }

    /// The insight's list, sorted by type and name.
    fn list(&self) -> Vec<ConfigSource> {
        self.answered.values().map(|(s, _)| s.clone()).collect()
    }
}

/// Longest NACK reason kept per source (Envoy's text can dump a whole resource).
const MAX_REASON: usize = 1024;

fn truncate(reason: &str) -> String {
    if reason.len() <= MAX_REASON {
        return reason.to_string();
    }
    let mut end = MAX_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &reason[..end])
}

impl InsightObserver {
    pub fn new(nonce_prefix: &str, instance_id: &str, node: Option<&Node>, handle: Option<InsightHandle>) -> Self {
        let tracker = Tracker::new(nonce_prefix, instance_id, node);
        let o = InsightObserver {
            tracker: Arc::new(Tracked { tracker: std::sync::Mutex::new(tracker), queued: Default::default() }),
            handle,
            phases: None,
        };
        o.publish();
        o
    }

    fn tracker(&self) -> std::sync::MutexGuard<'_, Tracker> {
        meridian_sync_proto::driver::lock(&self.tracker.tracker)
    }

    /// Records the generator's warnings of the proxy's current state with
    /// every update (`generatorWarnings` in DataplaneInsight).
    pub fn with_warnings(self, state: watch::Receiver<Arc<ProxyState>>) -> Self {
        self.tracker().state = Some(state);
        self.publish();
        self
    }

    /// Reports the mTLS phase Envoy holds to the cache ([`PhaseReport`]).
    pub fn with_phase_report(mut self, phases: PhaseReport) -> Self {
        self.phases = Some(phases);
        self
    }

    /// Reports `phase` when Envoy holds everything sent ([`PhaseReport`]).
    fn report_phase(&mut self, phase: impl Fn(&PhaseReport) -> u64) {
        let Some(p) = &self.phases else { return };
        if p.nacked {
            return;
        }
        let outstanding = self.tracker().outstanding();
        if outstanding == 0 {
            p.cache.holds(&p.id, phase(p));
        }
    }

    /// Queues the stream's insight with the writer (once until it is taken).
    fn publish(&self) {
        if let Some(h) = &self.handle
            && !self.tracker.queued.swap(true, Ordering::SeqCst)
        {
            let id = self.tracker().record.id.clone();
            h.changed(&id, self.tracker.clone());
        }
    }

    /// Closes the subscription with a disconnect time (its final state,
    /// handed to the writer as a value).
    pub fn close(self) {
        let record = {
            let mut t = self.tracker();
            t.refresh_record();
            t.record.disconnect_time = Some(insight::now());
            t.record.clone()
        };
        if let Some(h) = &self.handle {
            h.update(record);
        }
    }
}

impl Tracker {
    fn new(nonce_prefix: &str, instance_id: &str, node: Option<&Node>) -> Self {
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
        Tracker {
            record: DiscoverySubscription {
                id: nonce_prefix.to_string(),
                control_plane_instance_id: instance_id.to_string(),
                connect_time: Some(insight::now()),
                status: Some(DiscoverySubscriptionStatus::default()),
                version: Some(Version { envoy, ..Default::default() }),
                ..Default::default()
            },
            stats: BTreeMap::new(),
            versions: HashMap::new(),
            rejected: BTreeMap::new(),
            acked: BTreeMap::new(),
            last_nack: String::new(),
            state: None,
            sources: ConfigSources::default(),
        }
    }

    /// Responses sent and not answered yet, all types.
    fn outstanding(&self) -> usize {
        self.versions.values().map(HashMap::len).sum()
    }

    /// Refreshes the insight record; `true` when it changed.
    pub fn refresh_record(&mut self) -> bool {
        let mut status = DiscoverySubscriptionStatus {
            acked_versions: self.acked.clone(),
            last_nack_reason: self.last_nack.clone(),
            generator_warnings: self.state.as_ref().map(|s| s.borrow().warnings.clone()).unwrap_or_default(),
            rejected_resources: {
                let mut r: Vec<RejectedResource> = self.rejected.values().cloned().collect();
                r.sort_by_key(|r| std::cmp::Reverse(r.time.as_ref().map(|t| (t.seconds, t.nanos))));
                r
            },
            config_sources: self.sources.list(),
            ..Default::default()
        };
        let mut total = DiscoveryServiceStats::default();
        for (t, s) in &self.stats {
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

impl Observer for InsightObserver {
    /// A change that sent Envoy nothing (same resources, e.g. a route's
    /// label): its sources take the answer of the configuration Envoy has.
    fn source_changed(&mut self) {
        // Nothing was sent, or all of it is answered: Envoy holds this state.
        self.report_phase(|p| p.held.load(Ordering::SeqCst));
        if self.tracker().source_changed() {
            self.publish();
        }
    }
    fn sent(&mut self, type_url: &str, response: &DeltaDiscoveryResponse, stats: &SendStats) {
        if let Some(p) = &mut self.phases {
            p.sent = p.held.load(Ordering::SeqCst);
            p.nacked = false;
        }
        self.tracker().sent(type_url, response, stats);
        self.publish();
    }
    fn acked(&mut self, type_url: &str, nonce: &str, _: Option<Duration>, stats: &SendStats) {
        self.tracker().acked(type_url, nonce, stats);
        self.report_phase(|p| p.sent);
        self.publish();
    }
    fn nacked(&mut self, type_url: &str, nonce: &str, reason: &str, stats: &SendStats) {
        if let Some(p) = &mut self.phases {
            p.nacked = true;
        }
        self.tracker().nacked(type_url, nonce, reason, stats);
        self.publish();
    }
}

impl Tracker {
    /// A change that sent Envoy nothing (same resources, e.g. a route's
    /// label): its sources take the answer of the configuration Envoy has.
    fn source_changed(&mut self) -> bool {
        let Some(state) = self.state.as_ref().map(|s| s.borrow().clone()) else { return false };
        self.sources.same_config(&state)
    }
    fn sent(&mut self, type_url: &str, response: &DeltaDiscoveryResponse, stats: &SendStats) {
        let v = self.versions.entry(type_url.to_string()).or_default();
        if v.len() >= MAX_UNSETTLED {
            // A peer that never settles old nonces: forget them (only
            // the insight's "ACKed version" of those is lost).
            v.clear();
        }
        let resources = response.resources.iter().map(|r| (r.name.clone(), r.version.clone())).collect();
        let state = self.state.as_ref().map(|s| s.borrow().clone());
        let generation = match state {
            Some(state) => self.sources.sent(state),
            None => 0,
        };
        v.insert(
            response.nonce.clone(),
            Carried {
                set_version: response.system_version_info.clone(),
                resources,
                removed: response.removed_resources.clone(),
                generation,
            },
        );
        self.stats.insert(type_url.to_string(), stats.clone());
    }
    fn acked(&mut self, type_url: &str, nonce: &str, stats: &SendStats) {
        if let Some(c) = self.versions.get_mut(type_url).and_then(|v| v.remove(nonce)) {
            self.sources.acked(c.generation);
            self.acked.insert(short(type_url).to_string(), c.set_version);
            // A later version accepted (or the resource removed): no longer rejected.
            for name in c.resources.iter().map(|(n, _)| n).chain(&c.removed) {
                self.rejected.remove(&(short(type_url).to_string(), name.clone()));
            }
        }
        self.stats.insert(type_url.to_string(), stats.clone());
    }
    fn nacked(&mut self, type_url: &str, nonce: &str, reason: &str, stats: &SendStats) {
        let carried = self.versions.get_mut(type_url).and_then(|v| v.remove(nonce));
        if let Some(c) = &carried {
            self.sources.nacked(c.generation, reason);
        }
        let names: Vec<&str> =
            carried.as_ref().map(|c| c.resources.iter().map(|(n, _)| n.as_str()).collect()).unwrap_or_default();
        tracing::warn!(type_url, resources = ?names, reason = %reason, "Envoy rejected a response");
        self.last_nack = format!("{}: {reason}", short(type_url));
        // The pieces the rejected response carried: the rest of the
        // configuration (and later changes) keep flowing; these stay
        // reported until Envoy accepts a later version of them. Envoy
        // applies the resources of a response it can and names the ones it
        // could not ("Error adding/updating listener(s) NAME: ..."), so only
        // those named are reported; all of them when it names none of them
        // (a truncated or generic reason).
        let carried = carried.map(|c| c.resources).unwrap_or_default();
        let named: Vec<(String, String)> = carried.iter().filter(|(n, _)| mentions(reason, n)).cloned().collect();
        let rejected = if named.is_empty() { carried } else { named };
        for (name, version) in rejected {
            let key = (short(type_url).to_string(), name.clone());
            self.rejected.insert(
                key,
                RejectedResource {
                    r#type: short(type_url).to_string(),
                    name,
                    version,
                    reason: reason.to_string(),
                    time: Some(insight::now()),
                },
            );
        }
        while self.rejected.len() > MAX_REJECTED {
            let oldest = self
                .rejected
                .iter()
                .min_by_key(|(_, r)| r.time.as_ref().map(|t| (t.seconds, t.nanos)))
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.rejected.remove(&k),
                None => break,
            };
        }
        self.stats.insert(type_url.to_string(), stats.clone());
    }
}

/// Whether `text` names `name` as a whole word (not as part of a longer
/// name: `gw:HTTP:80` is not named by `gw:HTTP:8080`). A containment test,
/// not a parse of Envoy's message, whose wording may change.
fn mentions(text: &str, name: &str) -> bool {
    let part_of_name = |c: char| c.is_ascii_alphanumeric() || matches!(c, ':' | '.' | '-' | '_' | '/');
    text.match_indices(name).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + name.len()..].chars().next();
        // A name ends a sentence with "." or ":" just as often.
        let ends = |c: Option<char>| c.is_none_or(|c| !part_of_name(c) || matches!(c, ':' | '.'));
        before.is_none_or(|c| !part_of_name(c)) && ends(after)
    })
}

/// What one response carried, kept until Envoy settles its nonce.
#[derive(Debug, Clone, Default)]
struct Carried {
    set_version: String,
    resources: Vec<(String, String)>,
    removed: Vec<String>,
    /// The [`ConfigSources`] generation the response was sent from.
    generation: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sotw(names: &[&str], nonce: &str, type_url: String) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url,
            response_nonce: nonce.into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn srcs(route_version: &str) -> Arc<ProxyState> {
        use meridian_sync_proto::ResourceType;
        state_with(
            route_version,
            Sources::from([
                ((ResourceType::MeshGateway, "gw".to_string()), "g1".to_string()),
                ((ResourceType::MeshGatewayRoute, "r".to_string()), route_version.to_string()),
            ]),
        )
    }

    /// A state whose one listener's version is `config` (same `config`:
    /// same resources for Envoy).
    fn state_with(config: &str, sources: Sources) -> Arc<ProxyState> {
        let listener = Desired { version: config.to_string(), resource: Default::default() };
        let set: DesiredSet = [("l".to_string(), listener)].into_iter().collect();
        Arc::new(ProxyState {
            config: Ok([(LISTENER_TYPE(), set)].into_iter().collect()),
            warnings: Vec::new(),
            sources: Arc::new(sources),
            phase: 0,
        })
    }

    fn state_of<'a>(c: &'a ConfigSources, name: &str) -> Option<(&'a str, &'a str)> {
        c.answered.values().find(|(s, _)| s.name == name).map(|(s, _)| (s.version.as_str(), s.state.as_str()))
    }

    #[test]
    fn sources_are_acked_once_every_response_of_their_generation_is() {
        let mut c = ConfigSources::default();
        let g1 = c.sent(srcs("v1"));
        assert_eq!(c.sent(srcs("v1")), g1, "same sources, same generation");
        c.acked(g1);
        assert_eq!(state_of(&c, "r"), None, "one response still unanswered");
        c.acked(g1);
        assert_eq!(state_of(&c, "r"), Some(("v1", "ACKed")));

        // v2: the listeners NACKed, the routes ACKed after: still NACKed.
        let g2 = c.sent(srcs("v2"));
        assert!(g2 > g1);
        c.sent(srcs("v2"));
        c.nacked(g2, "cannot bind");
        assert_eq!(state_of(&c, "r"), Some(("v2", "NACKed")));
        c.acked(g2);
        assert_eq!(state_of(&c, "r"), Some(("v2", "NACKed")), "a NACK of the same generation stays");
        assert_eq!(c.list().iter().find(|s| s.name == "r").map(|s| s.reason.as_str()), Some("cannot bind"));

        // v3 fully ACKed clears it; a source no longer used is forgotten.
        let g3 = c.sent(state_with(
            "v3",
            Sources::from([((meridian_sync_proto::ResourceType::MeshGatewayRoute, "r".to_string()), "v3".to_string())]),
        ));
        c.acked(g3);
        assert_eq!(state_of(&c, "r"), Some(("v3", "ACKed")));
        assert_eq!(state_of(&c, "gw"), None);
    }

    #[test]
    fn a_change_that_sends_nothing_takes_the_answer_envoy_gave() {
        use meridian_sync_proto::ResourceType;
        let route = |v: &str| Sources::from([((ResourceType::MeshGatewayRoute, "r".to_string()), v.to_string())]);
        let mut c = ConfigSources::default();
        let g = c.sent(state_with("cfg-1", route("v1")));
        // v2 of the route yields the same resources: nothing is sent.
        assert!(!c.same_config(&state_with("cfg-1", route("v2"))), "still open: settles with v2");
        c.acked(g);
        assert_eq!(state_of(&c, "r"), Some(("v2", "ACKed")));
        // Settled already: v3 (same resources again) is ACKed at once.
        assert!(c.same_config(&state_with("cfg-1", route("v3"))));
        assert_eq!(state_of(&c, "r"), Some(("v3", "ACKed")));
        // Different resources: they will be sent; nothing is assumed.
        assert!(!c.same_config(&state_with("cfg-2", route("v4"))));
        assert_eq!(state_of(&c, "r"), Some(("v3", "ACKed")));
        // After a NACK, a same-resources change is NACKed with the reason.
        let g = c.sent(state_with("cfg-2", route("v4")));
        c.nacked(g, "cannot bind");
        assert!(c.same_config(&state_with("cfg-2", route("v5"))));
        assert_eq!(state_of(&c, "r"), Some(("v5", "NACKed")));
    }

    #[test]
    fn a_reason_names_whole_resource_names() {
        let reason = "Error adding/updating listener(s) gw:HTTP:8080: cannot bind '127.0.0.1:8080': in use";
        assert!(mentions(reason, "gw:HTTP:8080"));
        assert!(!mentions(reason, "gw:HTTP:80"));
        assert!(!mentions(reason, "w:HTTP:8080"));
        assert!(!mentions(reason, "gw:HTTP:9090"));
        assert!(mentions("route config rc-1 rejected.", "rc-1"));
    }

    #[test]
    fn sotw_translation_subscribes_acks_and_forces_new_names() {
        let mut t = SotwTranslator::default();
        let first = t.request(&sotw(&[], "", LISTENER_TYPE()));
        assert!(!first.force && first.request.resource_names_subscribe.is_empty(), "wildcard LDS");
        let ack = t.request(&sotw(&[], "n1", LISTENER_TYPE()));
        assert_eq!(ack.request.response_nonce, "n1");
        assert!(!ack.force, "an ACK is not answered");
        let rds = t.request(&sotw(&[], "", ROUTE_TYPE()));
        assert_eq!(rds.request.resource_names_unsubscribe, ["*"], "no names on RDS means none");
        let more = t.request(&sotw(&["x"], "n2", ROUTE_TYPE()));
        assert_eq!(more.request.resource_names_subscribe, ["x"]);
        assert!(more.force, "new names are answered even on a nonce");
    }
}
