//! The zone's view of gateway resources and the generated configuration of
//! every connected Dataplane, kept current from the store's change feed.
//!
//! ```text
//!   store.watch(rev) ──▶ batch of changes ──▶ MeshSnapshot (per mesh)
//!                                │ which proxies does it touch? (their Deps)
//!                                ▼
//!              generate(snapshot, dataplane) for those only
//!                                │ send_if_modified (unchanged output wakes nobody)
//!                                ▼
//!   watch::Sender<Arc<ProxyState>> per connected Dataplane ──▶ its ADS streams
//! ```
//!
//! A change costs what it touches: [`affected`] picks the proxies whose
//! [`Deps`] it can alter (another zone's ZoneIngress: those with a
//! destination it announces); the replicas of a builtin gateway (equal
//! Dataplane specs but the address, [`gateway::share_key`]) share one
//! generation per snapshot epoch, each with its own listener address; and
//! each proxy keeps its previous generation ([`gateway::Memo`]): the Envoy
//! routes of each MeshGatewayRoute are rebuilt only when what they are built
//! from changed ([`gateway::generate_reusing`]), and only the resources
//! that differ are encoded and hashed again. The
//! proptest in `cache/proptests.rs` holds all three to a from-scratch
//! generation.
//!
//! A Dataplane is generated only while some stream is subscribed to it.
//! Right after the (pure) generator, the mesh mTLS secrets are added from
//! the identity store ([`crate::xds::identities::Identities`]), which issues and
//! rotates certificates: the time and the random keys live there, not in
//! the generator. [`Cache::rotate`] re-generates proxies whose certificate
//! reached 4/5 of its lifetime.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard},
};

use futures::{FutureExt, StreamExt};
use meridian_core::Manager;
use meridian_store::{ChangeKind, ListQuery, Store, StoreError};
use meridian_sync_proto::{
    Resource, ResourceType, Spec,
    delta::DesiredSet,
    pb::mesh::{Dataplane, Mesh, ZoneIngress},
};
use tokio::sync::watch;

use crate::{
    gateway::{self, Deps, MeshSnapshot, selector_matches, tags_match},
    mtls::TlsPhase,
    xds::identities::{Identities, MeshCa},
};

/// Changes applied before regenerating (a Mesh deletion cascades into many).
const MAX_BATCH: usize = 1000;

/// Shared gateway generations kept per snapshot epoch (distinct gateway
/// specs in one zone; past it, gateways generate alone).
const MAX_SHARED: usize = 256;

/// A Dataplane's identity: mesh and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProxyId {
    pub mesh: String,
    pub name: String,
}

impl ProxyId {
    /// A ZoneIngress (node id `.<name>`: no mesh, as the incumbent's ingress
    /// proxy id), not a Dataplane.
    pub fn is_ingress(&self) -> bool {
        self.mesh.is_empty()
    }
}

impl std::fmt::Display for ProxyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.mesh, self.name)
    }
}

/// Why a Dataplane gets no configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The generator refused it (unknown Dataplane).
    #[error(transparent)]
    Generate(#[from] gateway::GenError),
    /// The cache stopped publishing it (the stream outlived the cache).
    #[error("the Dataplane's configuration is no longer published")]
    Gone,
}

/// What one Dataplane should hold: per type URL, the desired resources; or
/// why it gets nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyState {
    pub config: Result<BTreeMap<String, DesiredSet>, ProxyError>,
    /// The generator's warnings for this configuration (what was left out
    /// and why), sorted; also readable through [`Cache::warnings`].
    pub warnings: Vec<String>,
    /// The resources (and their stored versions) this configuration was
    /// generated from ([`gateway::sources`]); DataplaneInsight reports them
    /// with Envoy's answer.
    pub sources: Arc<gateway::Sources>,
    /// The index of the mesh's mTLS phase this configuration was generated
    /// in ([`MeshPhase::index`]; 0 for a ZoneIngress): once Envoy holds it,
    /// the stream reports it ([`Cache::holds`]).
    pub phase: u64,
}

impl ProxyState {
    /// Whether both states hold the same resources at the same versions
    /// (Envoy would receive nothing going from one to the other).
    pub fn same_versions(&self, other: &ProxyState) -> bool {
        match (&self.config, &other.config) {
            (Ok(a), Ok(b)) => {
                a.len() == b.len()
                    && a.iter().zip(b).all(|((ta, sa), (tb, sb))| {
                        ta == tb
                            && sa.len() == sb.len()
                            && sa.iter().zip(sb).all(|((na, da), (nb, db))| na == nb && da.version == db.version)
                    })
            }
            (Err(a), Err(b)) => a == b,
            _ => false,
        }
    }
}

struct Proxy {
    /// The highest mTLS phase index whose configuration Envoy was seen to
    /// hold in full (every response ACKed, none NACKed since).
    holds: u64,
    tx: watch::Sender<Arc<ProxyState>>,
    deps: Deps,
    subscribers: usize,
    /// The [`Inner::epoch`] of the snapshot the published state came from:
    /// a generation from an older snapshot never replaces a newer one.
    epoch: u64,
    /// The generator's encoded outputs of the last generation: the next one
    /// re-encodes only the resources that differ ([`gateway::Memo`]). Taken
    /// by a running generation (a concurrent one starts empty: the memo
    /// saves work, never decides the result).
    memo: gateway::Memo,
}

/// Shared state behind one mutex. The lock is held only to read or change
/// these maps and to swap generated states in, never across a generation
/// (which takes ~25 ms for a gateway with 1000 routes): generations run on
/// `Arc`'d snapshots outside it.
#[derive(Default)]
struct Inner {
    meshes: BTreeMap<String, Arc<MeshSnapshot>>,
    /// Mesh specs by name (their `mtls` decides the identity secrets).
    mesh_specs: BTreeMap<String, Arc<Mesh>>,
    /// Bumped on every change of `meshes`.
    epoch: u64,
    proxies: HashMap<ProxyId, Proxy>,
    /// Generations run since start (for tests and metrics).
    generations: u64,
    /// This zone's name (locality of local endpoints).
    zone: String,
    /// Other zones' ZoneIngresses (received from the global), shared by
    /// every mesh's snapshot: cross-zone endpoints.
    remote_ingresses: Arc<BTreeMap<String, ZoneIngress>>,
    /// This zone's own ZoneIngresses: what ingress proxies are generated from.
    local_ingresses: BTreeMap<String, ZoneIngress>,
    /// Every crossMesh gateway listener of this zone, shared by every
    /// mesh's snapshot.
    cross_mesh_listeners: Arc<Vec<gateway::cross_mesh::CrossMeshListener>>,
    /// Per mesh, the mTLS phase served ([`TlsPhase`]): where a switch of
    /// the mesh's mTLS stands.
    tls: BTreeMap<String, MeshPhase>,
}

/// A mesh's mTLS phase at this zone. A Mesh update that turns mTLS on or
/// off moves its target; the zone walks there one [`TlsPhase::next_step`]
/// at a time, each once every proxy of the mesh connected here holds the
/// current phase (or after [`PHASE_TIMEOUT`]).
struct MeshPhase {
    phase: TlsPhase,
    /// Bumped at every step; generated states carry it, streams report
    /// the one Envoy holds.
    index: u64,
    /// When the current phase was entered.
    since: std::time::Instant,
    /// The Mesh as it was when mTLS was last on: inbounds still
    /// terminating mTLS after it was turned off keep their identities
    /// from it.
    last_on: Option<Arc<Mesh>>,
}

/// How long a step of an mTLS switch waits for proxies that do not report
/// holding the current phase (a NACKing or stuck Envoy) before it is taken
/// anyway, with a warning naming them.
pub const PHASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl Inner {
    /// An empty snapshot of `mesh` in this zone.
    fn new_snapshot(&self, mesh: &str) -> MeshSnapshot {
        MeshSnapshot {
            tls_phase: self.tls.get(mesh).map(|p| p.phase),
            zone: self.zone.clone(),
            remote_ingresses: self.remote_ingresses.clone(),
            cross_mesh_listeners: self.cross_mesh_listeners.clone(),
            ..MeshSnapshot::new(mesh)
        }
    }

    /// Recomputes the crossMesh listeners; when they changed, puts them in
    /// every snapshot and returns the proxies with an outbound to another
    /// mesh (they regenerate).
    fn refresh_cross_mesh(&mut self) -> Vec<ProxyId> {
        let now = gateway::cross_mesh::listeners(self.meshes.values().map(|s| &**s));
        if *self.cross_mesh_listeners == now {
            return Vec::new();
        }
        self.cross_mesh_listeners = Arc::new(now);
        let shared = self.cross_mesh_listeners.clone();
        for snapshot in self.meshes.values_mut() {
            Arc::make_mut(snapshot).cross_mesh_listeners = shared.clone();
        }
        self.proxies.iter().filter(|(_, p)| crosses_meshes(&p.deps)).map(|(id, _)| id.clone()).collect()
    }

    /// The generation job of proxy `id` from the current snapshots.
    fn job(&self, id: ProxyId) -> Job {
        let snapshot = self.meshes.get(&id.mesh).cloned().unwrap_or_else(|| Arc::new(self.new_snapshot(&id.mesh)));
        let mut mesh = self.mesh_specs.get(&id.mesh).cloned();
        let tls = self.tls.get(&id.mesh);
        if let Some(t) = tls
            && t.phase.server.is_some()
            && mesh.as_deref().and_then(crate::mtls::enabled_backend).is_none()
        {
            // mTLS turned off, inbounds not plaintext yet: the last identity.
            mesh = t.last_on.clone();
        }
        let phase = tls.map_or(0, |t| t.index);
        let ingress = id
            .is_ingress()
            .then(|| (self.meshes.values().cloned().collect::<Vec<_>>(), self.local_ingresses.get(&id.name).cloned()));
        let all = self.meshes.iter().map(|(name, s)| (s.clone(), self.mesh_specs.get(name).cloned())).collect();
        Job { id, snapshot, mesh, ingress, all, phase, memo: gateway::Memo::default(), epoch: self.epoch }
    }

    /// Follows a Mesh change in its mTLS phase: a new mesh starts settled
    /// at what it asks for; an existing one keeps its phase (the steps
    /// follow, [`Inner::step_tls`]) and remembers the Mesh while mTLS is on.
    fn track_tls(&mut self, mesh: &str, spec: Option<&Arc<Mesh>>) {
        let Some(spec) = spec else {
            self.tls.remove(mesh);
            return;
        };
        let target = TlsPhase::target(Some(spec));
        let on = target.server.is_some().then(|| spec.clone());
        match self.tls.get_mut(mesh) {
            Some(p) => {
                if on.is_some() {
                    p.last_on = on;
                }
            }
            None => {
                let p = MeshPhase { phase: target, index: 1, since: std::time::Instant::now(), last_on: on };
                self.tls.insert(mesh.to_string(), p);
            }
        }
    }

    /// Takes every step of an mTLS switch that is due at `now`: a mesh not
    /// at its target moves one [`TlsPhase::next_step`] once every proxy of
    /// the mesh connected here holds the current phase (or [`PHASE_TIMEOUT`]
    /// after entering it). Returns the proxies to regenerate.
    fn step_tls(&mut self, now: std::time::Instant) -> Vec<ProxyId> {
        let mut touched = Vec::new();
        for (mesh, p) in self.tls.iter_mut() {
            let target = TlsPhase::target(self.mesh_specs.get(mesh).map(|m| &**m));
            if p.phase == target {
                continue;
            }
            let behind: Vec<String> = self
                .proxies
                .iter()
                .filter(|(id, proxy)| id.mesh == *mesh && proxy.holds < p.index)
                .map(|(id, _)| id.to_string())
                .collect();
            if !behind.is_empty() {
                if now.duration_since(p.since) < PHASE_TIMEOUT {
                    continue;
                }
                tracing::warn!(%mesh, proxies = ?behind, "mTLS switch: these proxies did not confirm the current phase in time; taking the next step anyway");
            }
            let next = p.phase.next_step(target);
            tracing::info!(%mesh, from = ?p.phase, to = ?next, "mTLS switch: next phase");
            p.phase = next;
            p.index += 1;
            p.since = now;
            if let Some(s) = self.meshes.get_mut(mesh) {
                Arc::make_mut(s).tls_phase = Some(next);
            }
            touched.extend(self.proxies.keys().filter(|id| id.mesh == *mesh).cloned());
        }
        touched
    }

    /// Records a ZoneIngress change; returns the proxies it touches: for
    /// another zone's ingress, the proxies with a destination that the old
    /// or the new ingress announces instances of (their cross-zone
    /// endpoints and warnings), plus those reaching other meshes; for one
    /// of this zone's, the ingress itself.
    fn apply_ingress(&mut self, name: &str, new: Option<(ZoneIngress, bool)>) -> Vec<ProxyId> {
        let old_remote = self.remote_ingresses.get(name).cloned();
        let was_local = self.local_ingresses.remove(name).is_some();
        if old_remote.is_some() {
            Arc::make_mut(&mut self.remote_ingresses).remove(name);
        }
        let mut new_remote = None;
        match new {
            Some((zi, true)) => {
                self.local_ingresses.insert(name.to_string(), zi);
            }
            Some((zi, false)) => {
                Arc::make_mut(&mut self.remote_ingresses).insert(name.to_string(), zi.clone());
                new_remote = Some(zi);
            }
            None => {}
        }
        let mut touched = Vec::new();
        if old_remote.is_some() || new_remote.is_some() {
            let remote = self.remote_ingresses.clone();
            for snapshot in self.meshes.values_mut() {
                Arc::make_mut(snapshot).remote_ingresses = remote.clone();
            }
            if old_remote != new_remote {
                let announced: Vec<_> =
                    old_remote.iter().chain(new_remote.iter()).flat_map(|zi| zi.available_services.iter()).collect();
                touched.extend(
                    self.proxies
                        .iter()
                        .filter(|(id, p)| {
                            !id.is_ingress()
                                && (crosses_meshes(&p.deps)
                                    || announced.iter().any(|s| {
                                        s.mesh == id.mesh && p.deps.destinations.iter().any(|d| tags_match(d, &s.tags))
                                    }))
                        })
                        .map(|(id, _)| id.clone()),
                );
            }
        }
        if was_local || self.local_ingresses.contains_key(name) {
            touched.extend(self.proxies.keys().filter(|p| p.is_ingress() && p.name == name).cloned());
        }
        touched
    }
}

/// Shared handle on the cache.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Mutex<Inner>>,
    /// The last store revision applied (streams wait for it to reach the
    /// revision they saw, so a Dataplane registered just before its Envoy
    /// connects is known).
    applied: Arc<watch::Sender<i64>>,
    /// The identity certificates issued to proxies of mTLS meshes.
    identities: Identities,
    /// This zone's name (which intermediate CA Secret it issues from).
    zone: Arc<str>,
    /// `xds_generation`: seconds per generated Dataplane.
    generation: Option<prometheus_client::metrics::histogram::Histogram>,
    /// Woken when a proxy reports holding a new mTLS phase.
    tls_progress: Arc<tokio::sync::Notify>,
    /// Builtin gateway generations of the current epoch, shared by the
    /// replicas of a gateway ([`gateway::share_key`]).
    shared: Arc<Mutex<Shared>>,
}

/// Gateway generations by (mesh, [`gateway::share_key`]) for one epoch.
#[derive(Default)]
struct Shared {
    epoch: u64,
    gens: HashMap<(String, Vec<u8>), Arc<SharedGen>>,
}

/// One gateway generation as its replicas reuse it: everything but the
/// listeners' bind address.
struct SharedGen {
    listeners: Vec<envoy_types::pb::envoy::config::listener::v3::Listener>,
    desired: BTreeMap<String, DesiredSet>,
    warnings: Vec<String>,
    deps: Deps,
}

impl Default for Cache {
    fn default() -> Cache {
        Cache::new("zone-1")
    }
}

/// A generation job: the proxy, its mesh's snapshot and Mesh spec.
struct Job {
    id: ProxyId,
    snapshot: Arc<MeshSnapshot>,
    mesh: Option<Arc<Mesh>>,
    /// For a ZoneIngress: every mesh's snapshot, and the ingress (`None`:
    /// not registered).
    ingress: Option<(Vec<Arc<MeshSnapshot>>, Option<ZoneIngress>)>,
    /// Every mesh (other meshes' CAs, for cross-mesh traffic).
    all: crate::xds::foreign_cas::AllMeshes,
    /// The mesh's mTLS phase index ([`MeshPhase::index`]).
    phase: u64,
    /// The proxy's previous encoded outputs (empty on a first generation).
    memo: gateway::Memo,
    /// The [`Inner::epoch`] the snapshots were taken at.
    epoch: u64,
}

/// A stream's hold on one Dataplane's configuration; dropping it lets the
/// cache forget the Dataplane once nobody else watches it.
pub struct Subscription {
    pub rx: watch::Receiver<Arc<ProxyState>>,
    id: ProxyId,
    cache: Cache,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut inner = self.cache.lock();
        let gone = inner.proxies.get_mut(&self.id).is_some_and(|p| {
            p.subscribers = p.subscribers.saturating_sub(1);
            p.subscribers == 0
        });
        if gone {
            inner.proxies.remove(&self.id);
            self.cache.identities.remove(&self.id);
        }
    }
}

/// The types the generator reads.
const WATCHED: [ResourceType; 13] = [
    ResourceType::MeshGateway,
    ResourceType::MeshGatewayRoute,
    ResourceType::Secret,
    ResourceType::Dataplane,
    ResourceType::Timeout,
    ResourceType::Retry,
    ResourceType::CircuitBreaker,
    ResourceType::HealthCheck,
    ResourceType::RateLimit,
    ResourceType::FaultInjection,
    ResourceType::TrafficPermission,
    ResourceType::TrafficLog,
    ResourceType::ProxyTemplate,
];

impl Cache {
    /// An empty cache for zone `zone`.
    pub fn new(zone: &str) -> Cache {
        Cache {
            inner: Arc::new(Mutex::new(Inner { zone: zone.to_string(), ..Inner::default() })),
            applied: Arc::new(watch::channel(0).0),
            identities: Identities::default(),
            zone: Arc::from(zone),
            generation: None,
            tls_progress: Arc::default(),
            shared: Arc::default(),
        }
    }

    /// The identity store (DataplaneInsight reads the mTLS status from it).
    pub fn identities(&self) -> &Identities {
        &self.identities
    }

    /// Re-generates the proxies whose identity certificate is due at `now`;
    /// returns when the next one will be (None: no certificate issued).
    pub fn rotate(&self, now: std::time::SystemTime) -> Option<std::time::SystemTime> {
        let (due, next) = self.identities.due(now);
        if !due.is_empty() {
            let mut inner = self.lock();
            let epoch = inner.epoch;
            let jobs = Self::jobs(&mut inner, due);
            drop(inner);
            self.run(jobs, epoch);
        }
        next
    }

    /// Runs [`Cache::rotate`] whenever a certificate comes due (checked at
    /// least every 10 s, since new certificates are issued meanwhile) until
    /// `stop`.
    pub async fn rotate_until(&self, stop: tokio_util::sync::CancellationToken) {
        const AT_LEAST_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
        loop {
            let now = std::time::SystemTime::now();
            let next = self.rotate(now);
            let wait = next.and_then(|n| n.duration_since(now).ok()).unwrap_or(AT_LEAST_EVERY).min(AT_LEAST_EVERY);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Generates one Dataplane's configuration (pure), then adds its mTLS
    /// secrets from the identity store (which may issue a certificate).
    fn generate(&self, job: &mut Job) -> (ProxyState, Deps) {
        let started = std::time::Instant::now();
        let result = self.generate_untimed(job);
        if let Some(h) = &self.generation {
            h.observe(started.elapsed().as_secs_f64());
        }
        result
    }

    /// Observes every generation into `histogram` (`xds_generation`).
    pub fn with_generation_metric(mut self, histogram: prometheus_client::metrics::histogram::Histogram) -> Cache {
        self.generation = Some(histogram);
        self
    }

    /// What a Dataplane some stream is subscribed to is being sent: its
    /// current state (desired resources per type URL, or why it gets
    /// none); `None` when no Envoy of it is connected here.
    pub fn state(&self, id: &ProxyId) -> Option<Arc<ProxyState>> {
        self.lock().proxies.get(id).map(|p| p.tx.borrow().clone())
    }

    fn generate_untimed(&self, job: &mut Job) -> (ProxyState, Deps) {
        let Job { id, snapshot, mesh, ingress, all, phase, memo, epoch } = job;
        if let Some((meshes, zi)) = ingress {
            return generate_ingress(meshes, id, zi.as_ref());
        }
        let (mut state, deps) = self.generate_shared(snapshot, id, *epoch, memo);
        state.phase = *phase;
        if let Ok(config) = &mut state.config {
            let mesh_ca = MeshCa { mesh: mesh.as_deref(), zone: &self.zone };
            self.identities.attach(id, &mesh_ca, snapshot, std::time::SystemTime::now(), config, &mut state.warnings);
            crate::xds::foreign_cas::attach(&id.mesh, &self.zone, &deps, all, config, &mut state.warnings);
        }
        (state, deps)
    }

    /// [`generate`], sharing one generation among the replicas of a builtin
    /// gateway at `epoch` ([`gateway::share_key`]): the first generates, the
    /// others take its resources with their own listener address.
    fn generate_shared(
        &self,
        snapshot: &MeshSnapshot,
        id: &ProxyId,
        epoch: u64,
        memo: &mut gateway::Memo,
    ) -> (ProxyState, Deps) {
        let Some(key) = gateway::share_key(snapshot, &id.name) else { return generate(snapshot, id, memo) };
        let key = (id.mesh.clone(), key);
        let address = snapshot.dataplanes.get(&id.name).and_then(|d| d.spec.networking.as_ref()).map(|n| &n.address);
        let found = {
            let shared = meridian_sync_proto::driver::lock(&self.shared);
            (shared.epoch == epoch).then(|| shared.gens.get(&key).cloned()).flatten()
        };
        if let (Some(g), Some(address)) = (found, address) {
            let mut listeners = g.listeners.clone();
            gateway::rebind(&mut listeners, address);
            let mut desired = g.desired.clone();
            desired.insert(
                gateway::LISTENER_TYPE(),
                listeners.iter().map(|l| (l.name.clone(), gateway::desired_of(l))).collect(),
            );
            let sources = Arc::new(gateway::sources(snapshot, &id.name, &g.deps));
            let state = ProxyState { config: Ok(desired), warnings: g.warnings.clone(), sources, phase: 0 };
            return (state, g.deps.clone());
        }
        let mut config = match gateway::generate_reusing(snapshot, &id.name, memo) {
            Ok(config) => config,
            Err(_) => return generate(snapshot, id, memo),
        };
        let listeners = config.listeners.clone();
        let sources = Arc::new(gateway::sources(snapshot, &id.name, &config.deps));
        let (desired, _) = config.take_desired_reusing(memo);
        let mut shared = meridian_sync_proto::driver::lock(&self.shared);
        if shared.epoch < epoch {
            shared.epoch = epoch;
            shared.gens.clear();
        }
        if shared.epoch == epoch && shared.gens.len() < MAX_SHARED {
            let g = SharedGen {
                listeners,
                desired: desired.clone(),
                warnings: config.warnings.clone(),
                deps: config.deps.clone(),
            };
            shared.gens.insert(key, Arc::new(g));
        }
        drop(shared);
        (ProxyState { config: Ok(desired), warnings: config.warnings, sources, phase: 0 }, config.deps)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        meridian_sync_proto::driver::lock(&self.inner)
    }

    /// Generates `jobs` (taken under the lock at `epoch`) without the lock,
    /// then publishes each result unless a newer one was published meanwhile.
    fn run(&self, jobs: Vec<Job>, epoch: u64) {
        let results: Vec<(ProxyId, ProxyState, Deps, gateway::Memo)> = jobs
            .into_iter()
            .map(|mut job| {
                let (state, deps) = self.generate(&mut job);
                (job.id, state, deps, job.memo)
            })
            .collect();
        let mut inner = self.lock();
        for (id, state, deps, memo) in results {
            let Some(p) = inner.proxies.get_mut(&id) else { continue };
            if p.epoch > epoch {
                continue;
            }
            p.epoch = epoch;
            p.memo = memo;
            publish(p, &id, state, deps);
        }
    }

    /// Jobs regenerating `ids` from the current snapshots (call under the lock).
    fn jobs(inner: &mut Inner, ids: Vec<ProxyId>) -> Vec<Job> {
        let jobs: Vec<_> = ids
            .into_iter()
            .filter_map(|id| {
                let memo = std::mem::take(&mut inner.proxies.get_mut(&id)?.memo);
                Some(Job { memo, ..inner.job(id) })
            })
            .collect();
        inner.generations += jobs.len() as u64;
        jobs
    }

    /// Reads every watched resource; returns the revision to watch from.
    pub async fn load(&self, store: &Store) -> Result<i64, StoreError> {
        // Revision first: changes after it are replayed by the watch, and
        // replaying an upsert or delete already seen is harmless.
        let revision = store.current_revision().await?;
        let mut meshes: BTreeMap<String, MeshSnapshot> = BTreeMap::new();
        let mut mesh_specs = BTreeMap::new();
        let mut remote_ingresses = BTreeMap::new();
        let mut local_ingresses = BTreeMap::new();
        let page = store
            .list(&ListQuery { type_name: ResourceType::ZoneIngress.name().to_string(), ..Default::default() })
            .await?;
        for stored in &page.items {
            if let Ok(e) = Manager::decode(stored)
                && let Spec::ZoneIngress(zi) = e.resource.spec
            {
                if meridian_core::origin::is_local_to(&stored.labels, &self.zone) {
                    local_ingresses.insert(e.resource.meta.name, zi);
                } else {
                    remote_ingresses.insert(e.resource.meta.name, zi);
                }
            }
        }
        let remote_ingresses = Arc::new(remote_ingresses);
        let page =
            store.list(&ListQuery { type_name: ResourceType::Mesh.name().to_string(), ..Default::default() }).await?;
        for stored in &page.items {
            if let Ok(e) = Manager::decode(stored)
                && let Spec::Mesh(m) = e.resource.spec
            {
                mesh_specs.insert(e.resource.meta.name, Arc::new(m));
            }
        }
        for ty in WATCHED.into_iter().chain([ResourceType::Mesh]) {
            let page = store.list(&ListQuery { type_name: ty.name().to_string(), ..Default::default() }).await?;
            for stored in &page.items {
                match Manager::decode(stored) {
                    Ok(e) => {
                        // A Mesh goes to its own snapshot (its mTLS decides transport sockets).
                        let mesh = match &e.resource.spec {
                            Spec::Mesh(_) => e.resource.meta.name.clone(),
                            _ => e.resource.meta.mesh.clone(),
                        };
                        let snap = meshes.entry(mesh.clone()).or_insert_with(|| MeshSnapshot {
                            zone: self.zone.to_string(),
                            remote_ingresses: remote_ingresses.clone(),
                            ..MeshSnapshot::new(mesh)
                        });
                        if snap.upsert(&e.resource) {
                            snap.set_version(ty, &e.resource.meta.name, &stored.version);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "skipping undecodable resource"),
                }
            }
        }
        let mut inner = self.lock();
        let known: Vec<String> = inner.tls.keys().filter(|m| !mesh_specs.contains_key(*m)).cloned().collect();
        for (name, spec) in &mesh_specs {
            inner.track_tls(name, Some(spec));
        }
        for name in known {
            inner.track_tls(&name, None);
        }
        for (name, s) in meshes.iter_mut() {
            s.tls_phase = inner.tls.get(name).map(|p| p.phase);
        }
        inner.meshes = meshes.into_iter().map(|(m, s)| (m, Arc::new(s))).collect();
        inner.mesh_specs = mesh_specs;
        inner.remote_ingresses = remote_ingresses;
        inner.local_ingresses = local_ingresses;
        // The new snapshots hold none yet: recompute from scratch.
        inner.cross_mesh_listeners = Arc::default();
        inner.refresh_cross_mesh();
        inner.epoch += 1;
        let epoch = inner.epoch;
        let ids: Vec<ProxyId> = inner.proxies.keys().cloned().collect();
        let jobs = Self::jobs(&mut inner, ids);
        drop(inner);
        self.run(jobs, epoch);
        self.applied.send_replace(revision);
        Ok(revision)
    }

    /// Waits (at most `limit`) until the cache has applied `revision`;
    /// `false` if it did not in time.
    pub async fn caught_up(&self, revision: i64, limit: std::time::Duration) -> bool {
        let mut rx = self.applied.subscribe();
        let wait = async {
            let _ = rx.wait_for(|r| *r >= revision).await;
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }

    /// Follows the change feed until the store fails for good.
    pub async fn follow(&self, store: Store, mut revision: i64) -> Result<(), StoreError> {
        loop {
            let mut feed = store.watch(revision);
            while let Some(first) = feed.next().await {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match feed.next().now_or_never() {
                        Some(Some(item)) => batch.push(item),
                        _ => break,
                    }
                }
                let mut changes = Vec::with_capacity(batch.len());
                let mut compacted = false;
                for item in batch {
                    match item {
                        Ok(c) => {
                            revision = c.revision;
                            changes.push(c);
                        }
                        Err(StoreError::Compacted { .. }) => compacted = true,
                        Err(e) if e.is_transient() => tracing::warn!(error = %e, "store watch: retrying"),
                        Err(e) => return Err(e),
                    }
                }
                self.apply(&changes);
                self.applied.send_replace(revision);
                if compacted {
                    tracing::warn!("store change log compacted under the xDS cache; reloading");
                    revision = self.load(&store).await?;
                    break;
                }
            }
        }
    }

    /// Applies store changes and regenerates the proxies they touch.
    fn apply(&self, changes: &[meridian_store::Change]) {
        let mut inner = self.lock();
        let mut touched: Vec<ProxyId> = Vec::new();
        for c in changes {
            let Some(ty) = ResourceType::from_name(&c.resource.key.type_name) else { continue };
            let key = &c.resource.key;
            if ty == ResourceType::ZoneIngress {
                let new = match c.kind {
                    ChangeKind::Upsert => match Manager::decode(&c.resource).map(|e| e.resource.spec) {
                        Ok(Spec::ZoneIngress(zi)) => {
                            Some((zi, meridian_core::origin::is_local_to(&c.resource.labels, &self.zone)))
                        }
                        _ => {
                            tracing::warn!(name = %key.name, "skipping undecodable ZoneIngress");
                            continue;
                        }
                    },
                    ChangeKind::Delete => None,
                };
                let t = inner.apply_ingress(&key.name, new);
                touched.extend(t);
                continue;
            }
            if !WATCHED.contains(&ty) && ty != ResourceType::Mesh {
                continue;
            }
            if ty == ResourceType::Mesh {
                touched.extend(inner.proxies.keys().filter(|p| p.mesh == key.name).cloned());
                let fresh = inner.new_snapshot(&key.name);
                let snapshot = Arc::make_mut(inner.meshes.entry(key.name.clone()).or_insert_with(|| Arc::new(fresh)));
                match c.kind {
                    ChangeKind::Upsert => match Manager::decode(&c.resource) {
                        Ok(e) => {
                            if snapshot.upsert(&e.resource) {
                                snapshot.set_version(ty, &key.name, &c.resource.version);
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "skipping undecodable Mesh"),
                    },
                    ChangeKind::Delete => {
                        snapshot.remove(ty, &key.name);
                    }
                }
                let spec = match c.kind {
                    ChangeKind::Upsert => Manager::decode(&c.resource).ok().and_then(|e| match e.resource.spec {
                        Spec::Mesh(m) => Some(Arc::new(m)),
                        _ => None,
                    }),
                    ChangeKind::Delete => None,
                };
                inner.track_tls(&key.name, spec.as_ref());
                let phase = inner.tls.get(&key.name).map(|p| p.phase);
                if let Some(s) = inner.meshes.get_mut(&key.name) {
                    Arc::make_mut(s).tls_phase = phase;
                }
                match spec {
                    Some(m) => inner.mesh_specs.insert(key.name.clone(), m),
                    None => inner.mesh_specs.remove(&key.name),
                };
                continue;
            }
            if ty == ResourceType::Secret && meridian_core::mesh_ca::is_zone_ca_secret(&key.name) {
                // A zone CA: every proxy of the mesh may issue from it.
                touched.extend(inner.proxies.keys().filter(|p| p.mesh == key.mesh).cloned());
                touched.extend(inner.proxies.iter().filter(|(_, p)| crosses_meshes(&p.deps)).map(|(id, _)| id.clone()));
            }
            let new = match c.kind {
                ChangeKind::Upsert => match Manager::decode(&c.resource) {
                    Ok(e) => Some(e.resource),
                    Err(e) => {
                        tracing::warn!(error = %e, "skipping undecodable change");
                        continue;
                    }
                },
                ChangeKind::Delete => None,
            };
            touched.extend(affected(&inner, ty, &key.mesh, &key.name, new.as_ref()));
            let fresh = inner.new_snapshot(&key.mesh);
            let snapshot = Arc::make_mut(inner.meshes.entry(key.mesh.clone()).or_insert_with(|| Arc::new(fresh)));
            match &new {
                Some(r) => {
                    if snapshot.upsert(r) {
                        snapshot.set_version(ty, &key.name, &c.resource.version);
                    }
                }
                None => {
                    snapshot.remove(ty, &key.name);
                }
            }
        }
        if changes.iter().any(|c| {
            c.resource.key.type_name == ResourceType::MeshGateway.name()
                || c.resource.key.type_name == ResourceType::Dataplane.name()
        }) {
            let t = inner.refresh_cross_mesh();
            touched.extend(t);
        }
        // A Mesh turning mTLS on or off takes its first step now when
        // every proxy holds the current phase (a settled mesh always does).
        touched.extend(inner.step_tls(std::time::Instant::now()));
        touched.sort();
        touched.dedup();
        inner.epoch += 1;
        let epoch = inner.epoch;
        let jobs = Self::jobs(&mut inner, touched);
        drop(inner);
        self.run(jobs, epoch);
    }

    /// Records that Envoy of proxy `id` holds, in full, configuration
    /// generated in mTLS phase `phase` of its mesh (reported by its xDS
    /// stream: every response ACKed and none NACKed since); wakes
    /// [`Cache::step_tls_until`] when that is news.
    pub fn holds(&self, id: &ProxyId, phase: u64) {
        let mut inner = self.lock();
        let Some(p) = inner.proxies.get_mut(id) else { return };
        if phase > p.holds {
            p.holds = phase;
            drop(inner);
            self.tls_progress.notify_one();
        }
    }

    /// The mTLS phase this zone serves `mesh` in, and whether it is the
    /// one its Mesh asks for (`false` while a switch is under way);
    /// `None` for a mesh it does not hold.
    pub fn tls_phase(&self, mesh: &str) -> Option<(TlsPhase, bool)> {
        let inner = self.lock();
        let p = inner.tls.get(mesh)?;
        Some((p.phase, p.phase == TlsPhase::target(inner.mesh_specs.get(mesh).map(|m| &**m))))
    }

    /// Takes the due steps of mTLS switches ([`Inner::step_tls`]) and
    /// regenerates the proxies they change.
    pub fn step_tls(&self, now: std::time::Instant) {
        let mut inner = self.lock();
        let touched = inner.step_tls(now);
        if touched.is_empty() {
            return;
        }
        inner.epoch += 1;
        let epoch = inner.epoch;
        let jobs = Self::jobs(&mut inner, touched);
        drop(inner);
        self.run(jobs, epoch);
    }

    /// Runs [`Cache::step_tls`] whenever a proxy reports a phase, and at
    /// least every second (for [`PHASE_TIMEOUT`]), until `stop`.
    pub async fn step_tls_until(&self, stop: tokio_util::sync::CancellationToken) {
        const AT_LEAST_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
        loop {
            self.step_tls(std::time::Instant::now());
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.tls_progress.notified() => {}
                _ = tokio::time::sleep(AT_LEAST_EVERY) => {}
            }
        }
    }

    /// Subscribes to a Dataplane's configuration (generated now if nobody
    /// watched it yet).
    pub fn subscribe(&self, id: &ProxyId) -> Subscription {
        loop {
            // Under the lock: an existing entry, or the snapshot to generate from.
            let (snapshot, epoch) = {
                let mut inner = self.lock();
                if let Some(p) = inner.proxies.get_mut(id) {
                    p.subscribers += 1;
                    return Subscription { rx: p.tx.subscribe(), id: id.clone(), cache: self.clone() };
                }
                inner.generations += 1;
                (inner.job(id.clone()), inner.epoch)
            };
            let mut job = snapshot;
            let (state, deps) = self.generate(&mut job);
            let mut inner = self.lock();
            if let Some(p) = inner.proxies.get_mut(id) {
                // Another stream subscribed meanwhile: share its entry.
                p.subscribers += 1;
                return Subscription { rx: p.tx.subscribe(), id: id.clone(), cache: self.clone() };
            }
            if inner.epoch != epoch {
                // The snapshot changed while generating: generate again.
                continue;
            }
            log_warnings(id, &state);
            let (tx, rx) = watch::channel(Arc::new(state));
            inner.proxies.insert(id.clone(), Proxy { holds: 0, tx, deps, subscribers: 1, epoch, memo: job.memo });
            return Subscription { rx, id: id.clone(), cache: self.clone() };
        }
    }

    /// The generator's current warnings for a Dataplane some stream is
    /// subscribed to (sorted, each once); `None` when nobody watches it.
    pub fn warnings(&self, id: &ProxyId) -> Option<Vec<String>> {
        self.lock().proxies.get(id).map(|p| p.tx.borrow().warnings.clone())
    }

    /// How many generations ran (tests use it to prove a change touched
    /// only the gateways it concerns).
    pub fn generations(&self) -> u64 {
        self.lock().generations
    }

    /// Applies a resource directly (unit tests, without a store).
    #[cfg(test)]
    fn upsert_for_test(&self, r: &Resource) {
        let change = meridian_store::Change {
            revision: 0,
            kind: ChangeKind::Upsert,
            resource: meridian_store::StoredResource {
                key: Manager::key(r.resource_type(), &r.meta.mesh, &r.meta.name),
                labels: r.meta.labels.clone(),
                spec: r.spec.encode(),
                version: r.version(),
                revision: 0,
                create_time: r.meta.creation_time,
                modify_time: r.meta.modification_time,
            },
        };
        self.apply(&[change]);
    }

    /// Deletes a resource directly (unit tests, without a store).
    #[cfg(test)]
    fn remove_for_test(&self, r: &Resource) {
        let change = meridian_store::Change {
            revision: 0,
            kind: ChangeKind::Delete,
            resource: meridian_store::StoredResource {
                key: Manager::key(r.resource_type(), &r.meta.mesh, &r.meta.name),
                labels: r.meta.labels.clone(),
                spec: Vec::new(),
                version: String::new(),
                revision: 0,
                create_time: 0,
                modify_time: 0,
            },
        };
        self.apply(&[change]);
    }
}

/// Generates one Dataplane's configuration from its mesh's snapshot
/// (pure; called without the lock).
fn generate(snapshot: &MeshSnapshot, id: &ProxyId, memo: &mut gateway::Memo) -> (ProxyState, Deps) {
    match gateway::generate_reusing(snapshot, &id.name, memo) {
        Ok(mut config) => {
            let sources = Arc::new(gateway::sources(snapshot, &id.name, &config.deps));
            let (desired, _) = config.take_desired_reusing(memo);
            let state = ProxyState { config: Ok(desired), warnings: config.warnings, sources, phase: 0 };
            (state, config.deps)
        }
        Err(e) => (
            ProxyState { config: Err(e.into()), warnings: Vec::new(), sources: Arc::default(), phase: 0 },
            Deps::default(),
        ),
    }
}

/// Generates a ZoneIngress's configuration from every mesh's snapshot
/// (pure; called without the lock).
fn generate_ingress(meshes: &[Arc<MeshSnapshot>], id: &ProxyId, zi: Option<&ZoneIngress>) -> (ProxyState, Deps) {
    match zi {
        Some(zi) => {
            let config = gateway::ingress::generate(meshes.iter().map(|m| &**m), &id.name, zi);
            (
                ProxyState {
                    config: Ok(config.desired()),
                    warnings: config.warnings,
                    sources: Arc::default(),
                    phase: 0,
                },
                Deps::default(),
            )
        }
        None => {
            let e = gateway::GenError::UnknownIngress { name: id.name.clone() };
            (
                ProxyState { config: Err(e.into()), warnings: Vec::new(), sources: Arc::default(), phase: 0 },
                Deps::default(),
            )
        }
    }
}

/// Swaps a generated state in; an unchanged one wakes nobody.
fn publish(p: &mut Proxy, id: &ProxyId, state: ProxyState, deps: Deps) {
    p.deps = deps;
    p.tx.send_if_modified(|current| {
        let changed = !current.same_versions(&state);
        // A new mTLS phase with the same resources still wakes the stream,
        // which then reports that Envoy holds it.
        let sources = current.sources != state.sources || current.phase != state.phase;
        if changed || current.warnings != state.warnings || sources {
            if changed || current.warnings != state.warnings {
                log_warnings(id, &state);
            }
            // New warnings alone wake no stream (nothing to send to Envoy),
            // but `warnings` then reports them. New sources do: nothing is
            // sent either, but the stream's insight reports that Envoy's
            // configuration now stands for them.
            *current = Arc::new(state);
        }
        changed || sources
    });
}

/// Logs every warning of a generation, once per change of the generated
/// configuration or of its warnings (never per request or per stream).
fn log_warnings(id: &ProxyId, state: &ProxyState) {
    for w in &state.warnings {
        tracing::warn!(dataplane = %id, "{w}");
    }
}

/// The connected proxies a change to (`ty`, `mesh`, `name`) can alter:
/// judged on both the stored (old) and the `new` version.
fn affected(inner: &Inner, ty: ResourceType, mesh: &str, name: &str, new: Option<&Resource>) -> Vec<ProxyId> {
    let snapshot = inner.meshes.get(mesh).map(|s| &**s);
    let in_mesh = inner.proxies.iter().filter(|(id, _)| id.mesh == mesh);
    let mut out = Vec::new();
    // An ingress serves every mesh's instances and route destinations.
    if matches!(ty, ResourceType::Dataplane | ResourceType::MeshGatewayRoute | ResourceType::MeshGateway) {
        out.extend(inner.proxies.keys().filter(|id| id.is_ingress()).cloned());
    }
    for (id, p) in in_mesh {
        let hit = match ty {
            ResourceType::MeshGateway => {
                let selects = |spec: &meridian_sync_proto::pb::mesh::MeshGateway| {
                    selector_matches(&spec.selectors, &p.deps.dataplane_tags)
                };
                p.deps.gateway.as_deref() == Some(name)
                    || matches!(new.map(|r| &r.spec), Some(Spec::MeshGateway(g)) if selects(g))
            }
            ResourceType::MeshGatewayRoute => {
                let attaches = |spec: &meridian_sync_proto::pb::mesh::MeshGatewayRoute| {
                    p.deps.listener_tags.iter().any(|t| selector_matches(&spec.selectors, t))
                };
                p.deps.routes.contains(name)
                    || matches!(new.map(|r| &r.spec), Some(Spec::MeshGatewayRoute(g)) if attaches(g))
            }
            ResourceType::Secret => p.deps.secrets.contains(name),
            // TrafficPermission also drives sidecar inbounds' RBAC (mesh mTLS).
            ResourceType::TrafficPermission => true,
            // A ProxyTemplate selects by Dataplane tags, gateways and sidecars.
            ResourceType::ProxyTemplate => true,
            // A policy can change any gateway of its mesh (and its warnings).
            ty if ty.is_policy() => p.deps.gateway.is_some(),
            ResourceType::Dataplane => {
                let old = snapshot.and_then(|s| s.dataplanes.get(name)).map(|d| &d.spec);
                let new = match new.map(|r| &r.spec) {
                    Some(Spec::Dataplane(d)) => Some(d),
                    _ => None,
                };
                id.name == name || [old, new].into_iter().flatten().any(|d| serves(d, &p.deps))
            }
            _ => false,
        };
        if hit {
            out.push(id.clone());
        }
    }
    out
}

/// Whether a proxy reaches or serves other meshes (its configuration
/// depends on their gateways and CAs).
fn crosses_meshes(deps: &Deps) -> bool {
    deps.all_meshes_ca || deps.destinations.iter().any(|d| d.contains_key(gateway::cross_mesh::MESH_TAG))
}

/// Whether a Dataplane has an inbound some destination of `deps` selects,
/// or one of the service a destination names (it decides whether the
/// destination resolves to a service at all: 503 or 500).
fn serves(dp: &Dataplane, deps: &Deps) -> bool {
    let inbounds = dp.networking.as_ref().map(|n| n.inbound.as_slice()).unwrap_or_default();
    inbounds.iter().any(|i| {
        deps.destinations.iter().any(|d| {
            let service = d.get(gateway::SERVICE_TAG);
            tags_match(d, &i.tags) || (service.is_some() && service == i.tags.get(gateway::SERVICE_TAG))
        })
    })
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_sync_proto::universal;

    fn resources(yaml: &str) -> Vec<Resource> {
        universal::parse_resources(yaml).expect("yaml").into_iter().map(|r| r.expect("resource")).collect()
    }

    const WORLD: &str = r#"
type: MeshGateway
mesh: default
name: gw-a
selectors: [{match: {kuma.io/service: a}}]
conf: {listeners: [{port: 8080, protocol: HTTP}]}
---
type: MeshGateway
mesh: default
name: gw-b
selectors: [{match: {kuma.io/service: b}}]
conf: {listeners: [{port: 8080, protocol: HTTP}]}
---
type: Dataplane
mesh: default
name: a-1
networking: {address: 127.0.0.1, gateway: {type: BUILTIN, tags: {kuma.io/service: a}}}
---
type: Dataplane
mesh: default
name: b-1
networking: {address: 127.0.0.1, gateway: {type: BUILTIN, tags: {kuma.io/service: b}}}
---
type: MeshGatewayRoute
mesh: default
name: to-web
selectors: [{match: {kuma.io/service: a}}]
conf: {http: {rules: [{matches: [{path: {match: PREFIX, value: /}}], backends: [{destination: {kuma.io/service: web}}]}]}}
"#;

    fn id(name: &str) -> ProxyId {
        ProxyId { mesh: "default".into(), name: name.into() }
    }

    #[test]
    fn changes_regenerate_only_the_gateways_they_touch() {
        let cache = Cache::default();
        for r in resources(WORLD) {
            cache.upsert_for_test(&r);
        }
        let mut a = cache.subscribe(&id("a-1"));
        let mut b = cache.subscribe(&id("b-1"));
        a.rx.borrow_and_update();
        b.rx.borrow_and_update();
        let base = cache.generations();

        // A backend for gateway a's route: only a regenerates, and changes.
        for r in resources(
            "type: Dataplane\nmesh: default\nname: web-1\nnetworking: {address: 10.0.0.1, inbound: [{port: 80, tags: {kuma.io/service: web}}]}",
        ) {
            cache.upsert_for_test(&r);
        }
        assert_eq!(cache.generations(), base + 1);
        assert!(a.rx.has_changed().unwrap_or(false));
        assert!(!b.rx.has_changed().unwrap_or(true));
        a.rx.borrow_and_update();

        // A Dataplane nobody routes to: nothing regenerates.
        for r in resources(
            "type: Dataplane\nmesh: default\nname: other\nnetworking: {address: 10.0.0.2, inbound: [{port: 80, tags: {kuma.io/service: other}}]}",
        ) {
            cache.upsert_for_test(&r);
        }
        assert_eq!(cache.generations(), base + 1);

        // A new route for gateway b: only b.
        for r in resources(
            "type: MeshGatewayRoute\nmesh: default\nname: to-other\nselectors: [{match: {kuma.io/service: b}}]\nconf: {http: {rules: [{matches: [{path: {match: PREFIX, value: /}}], backends: [{destination: {kuma.io/service: other}}]}]}}",
        ) {
            cache.upsert_for_test(&r);
        }
        assert_eq!(cache.generations(), base + 2);
        assert!(b.rx.has_changed().unwrap_or(false));
        assert!(!a.rx.has_changed().unwrap_or(true));

        // Unsubscribed Dataplanes are forgotten.
        drop(a);
        drop(b);
        assert!(cache.lock().proxies.is_empty());
    }

    #[test]
    fn warnings_are_kept_from_the_first_generation_on() {
        let cache = Cache::default();
        // gw-a routes to `web`, which no Dataplane serves yet: no service.
        for r in resources(WORLD) {
            cache.upsert_for_test(&r);
        }
        let mut a = cache.subscribe(&id("a-1"));
        a.rx.borrow_and_update();
        let first = cache.warnings(&id("a-1")).expect("subscribed");
        assert!(first.iter().any(|w| w.contains("resolves to no service") && w.contains("500")), "{first:?}");
        assert_eq!(a.rx.borrow().warnings, first);
        assert_eq!(cache.warnings(&id("b-1")), None);

        // An unhealthy `web` inbound with other tags: the service exists
        // now, the cluster has no endpoint (503), and the proxy regenerated.
        for r in resources(
            "type: Dataplane\nmesh: default\nname: web-1\nnetworking: {address: 10.0.0.1, inbound: [{port: 80, tags: {kuma.io/service: web, version: v2}, health: {ready: false}}]}",
        ) {
            cache.upsert_for_test(&r);
        }
        assert!(a.rx.has_changed().unwrap_or(false));
        let now = cache.warnings(&id("a-1")).expect("subscribed");
        assert!(now.iter().any(|w| w.contains("no healthy endpoint") && w.contains("503")), "{now:?}");
        assert!(!now.iter().any(|w| w.contains("resolves to no service")), "{now:?}");
    }

    /// Versions of one type in a published state.
    fn versions(state: &ProxyState, type_url: &str) -> BTreeMap<String, String> {
        let config = state.config.as_ref().expect("config");
        config
            .get(type_url)
            .map(|s| s.iter().map(|(n, d)| (n.clone(), d.version.clone())).collect())
            .unwrap_or_default()
    }

    #[test]
    fn a_rotated_secret_changes_its_sds_secret_only() {
        use crate::gateway::{CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE, SECRET_TYPE};
        let cache = Cache::default();
        let all = resources(include_str!("../../testdata/golden/https.yaml"));
        for r in &all {
            cache.upsert_for_test(r);
        }
        let mut gw = cache.subscribe(&id("gw-1"));
        let before = gw.rx.borrow_and_update().clone();
        let secrets = versions(&before, &SECRET_TYPE());
        assert_eq!(secrets.keys().collect::<Vec<_>>(), ["secret:bar-cert", "secret:foo-cert"]);
        // No key material in any listener.
        let listeners = &before.config.as_ref().expect("config")[&LISTENER_TYPE()];
        for (name, d) in listeners.iter() {
            let text = String::from_utf8_lossy(&d.resource.value);
            assert!(!text.contains("PRIVATE KEY"), "listener {name} carries a private key");
            assert!(text.contains("secret:"), "listener {name} names no SDS secret");
        }

        // foo-cert gets bar-cert's certificate: a new version of one secret.
        let mut rotated = all.iter().find(|r| r.meta.name == "foo-cert").expect("foo-cert").clone();
        let bar = all.iter().find(|r| r.meta.name == "bar-cert").expect("bar-cert");
        rotated.spec = bar.spec.clone();
        cache.upsert_for_test(&rotated);
        assert!(gw.rx.has_changed().unwrap_or(false), "the rotation is published");
        let after = gw.rx.borrow_and_update().clone();
        let now = versions(&after, &SECRET_TYPE());
        assert_ne!(now["secret:foo-cert"], secrets["secret:foo-cert"]);
        assert_eq!(now["secret:bar-cert"], secrets["secret:bar-cert"]);
        for t in [LISTENER_TYPE(), ROUTE_TYPE(), CLUSTER_TYPE()] {
            assert_eq!(versions(&after, &t), versions(&before, &t), "{t} changed on a rotation");
        }
    }

    /// Walks a mesh's mTLS switch to its end, as streams would: every
    /// subscribed proxy reports holding its current state's phase, then the
    /// due steps are taken.
    fn settle(cache: &Cache, mesh: &str, subs: &[&Subscription]) {
        for _ in 0..10 {
            if cache.tls_phase(mesh).is_some_and(|(_, settled)| settled) {
                return;
            }
            for s in subs {
                cache.holds(&s.id, s.rx.borrow().phase);
            }
            cache.step_tls(std::time::Instant::now());
        }
        panic!("the mTLS switch of {mesh} did not settle: {:?}", cache.tls_phase(mesh));
    }

    /// What a generated resource says, as text (enough to find names in it).
    fn text(state: &ProxyState, type_url: &str, name: &str) -> String {
        let config = state.config.as_ref().expect("config");
        config
            .get(type_url)
            .and_then(|s| s.get(name))
            .map(|d| String::from_utf8_lossy(&d.resource.value).into_owned())
            .unwrap_or_default()
    }

    const MTLS_WORLD: &str = r#"
type: Mesh
name: default
mtls: {enabledBackend: ca-1, backends: [{name: ca-1, type: builtin, mode: STRICT}]}
---
type: Dataplane
mesh: default
name: web-1
networking:
  address: 127.0.0.1
  inbound: [{port: 8080, servicePort: 18080, tags: {kuma.io/service: web, kuma.io/protocol: http}}]
  outbound: [{port: 10001, tags: {kuma.io/service: backend}}]
---
type: Dataplane
mesh: default
name: backend-1
networking: {address: 10.0.0.2, inbound: [{port: 80, tags: {kuma.io/service: backend}}]}
"#;

    #[test]
    fn mtls_is_turned_off_inbounds_permissive_first_then_clients_then_inbounds() {
        use crate::gateway::{CLUSTER_TYPE, LISTENER_TYPE};
        use crate::mtls::{Mode, TlsPhase};
        let cache = Cache::default();
        for r in resources(MTLS_WORLD) {
            cache.upsert_for_test(&r);
        }
        let mut web = cache.subscribe(&id("web-1"));
        let backend = cache.subscribe(&id("backend-1"));
        let tls_client = |s: &ProxyState| text(s, &CLUSTER_TYPE(), "backend").contains("backend{mesh=default}");
        let inbound = |s: &ProxyState| text(s, &LISTENER_TYPE(), "inbound:127.0.0.1:8080");
        let strict = web.rx.borrow_and_update().clone();
        assert!(tls_client(&strict) && !inbound(&strict).contains("raw_buffer"), "STRICT from the start");
        assert_eq!(cache.tls_phase("default"), Some((TlsPhase { server: Some(Mode::Strict), clients: true }, true)));

        // Off, while both proxies hold the STRICT phase: the first step at
        // once. Inbounds accept plaintext; clients still originate mTLS.
        for s in [&web, &backend] {
            cache.holds(&s.id, s.rx.borrow().phase);
        }
        for r in resources("type: Mesh\nname: default\nmtls: {backends: [{name: ca-1, type: builtin}]}") {
            cache.upsert_for_test(&r);
        }
        let permissive = web.rx.borrow_and_update().clone();
        assert_eq!(
            cache.tls_phase("default"),
            Some((TlsPhase { server: Some(Mode::Permissive), clients: true }, false))
        );
        assert!(tls_client(&permissive), "clients keep mTLS while inbounds are not PERMISSIVE everywhere");
        assert!(
            inbound(&permissive).contains("raw_buffer")
                && inbound(&permissive).contains("identity_cert:secret:default")
        );

        // backend-1 has not confirmed it: no step, however often asked.
        cache.holds(&id("web-1"), permissive.phase);
        cache.step_tls(std::time::Instant::now());
        assert!(!web.rx.has_changed().unwrap_or(true), "no step before every proxy holds the phase");

        // Both hold it: clients drop mTLS; inbounds still accept it.
        cache.holds(&id("backend-1"), backend.rx.borrow().phase);
        cache.step_tls(std::time::Instant::now());
        let clients_plain = web.rx.borrow_and_update().clone();
        assert!(!tls_client(&clients_plain), "clients plaintext");
        assert!(inbound(&clients_plain).contains("identity_cert:secret:default"), "inbounds still terminate mTLS");

        // Every client plaintext: inbounds too.
        settle(&cache, "default", &[&web, &backend]);
        let off = web.rx.borrow_and_update().clone();
        assert!(!tls_client(&off) && !inbound(&off).contains("identity_cert"), "plaintext at both ends");
        assert_eq!(cache.tls_phase("default"), Some((TlsPhase::default(), true)));

        // Back on (STRICT), with a proxy that never confirms: inbounds accept
        // TLS first, and a step waits for it until PHASE_TIMEOUT.
        for s in [&web, &backend] {
            cache.holds(&s.id, s.rx.borrow().phase);
        }
        for r in resources(MTLS_WORLD) {
            cache.upsert_for_test(&r);
        }
        let first = web.rx.borrow_and_update().clone();
        assert_eq!(
            cache.tls_phase("default"),
            Some((TlsPhase { server: Some(Mode::Permissive), clients: false }, false))
        );
        assert!(!tls_client(&first) && inbound(&first).contains("raw_buffer"));
        cache.step_tls(std::time::Instant::now());
        assert!(!web.rx.has_changed().unwrap_or(true));
        cache.step_tls(std::time::Instant::now() + PHASE_TIMEOUT + std::time::Duration::from_secs(1));
        let clients_tls = web.rx.borrow_and_update().clone();
        assert!(
            tls_client(&clients_tls) && inbound(&clients_tls).contains("raw_buffer"),
            "clients on mTLS, inbounds PERMISSIVE"
        );
        settle(&cache, "default", &[&web, &backend]);
        let strict = web.rx.borrow_and_update().clone();
        assert!(tls_client(&strict) && !inbound(&strict).contains("raw_buffer"), "STRICT again");
    }

    #[test]
    fn sidecars_follow_their_destinations_and_the_meshs_mtls() {
        use crate::gateway::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE};
        let cache = Cache::default();
        for r in resources(
            r#"
type: Mesh
name: default
---
type: Dataplane
mesh: default
name: web-1
networking:
  address: 127.0.0.1
  inbound: [{port: 8080, servicePort: 18080, tags: {kuma.io/service: web, kuma.io/protocol: http}}]
  outbound: [{port: 10001, tags: {kuma.io/service: backend}}]
"#,
        ) {
            cache.upsert_for_test(&r);
        }
        let mut web = cache.subscribe(&id("web-1"));
        let first = web.rx.borrow_and_update().clone();
        let listeners = versions(&first, &LISTENER_TYPE());
        assert_eq!(listeners.keys().collect::<Vec<_>>(), ["inbound:127.0.0.1:8080", "outbound:127.0.0.1:10001"]);

        // A backend instance appears: web-1's endpoints change.
        for r in resources(
            "type: Dataplane\nmesh: default\nname: backend-1\nnetworking: {address: 10.0.0.2, inbound: [{port: 80, tags: {kuma.io/service: backend}}]}",
        ) {
            cache.upsert_for_test(&r);
        }
        assert!(web.rx.has_changed().unwrap_or(false), "a new endpoint regenerates the sidecar");
        let second = web.rx.borrow_and_update().clone();
        assert_ne!(versions(&second, &ENDPOINT_TYPE()), versions(&first, &ENDPOINT_TYPE()));

        // mTLS on: the clusters originate it, the inbound listener requires it.
        cache.holds(&id("web-1"), second.phase);
        for r in resources(
            "type: Mesh\nname: default\nmtls: {enabledBackend: ca-1, backends: [{name: ca-1, type: builtin}]}",
        ) {
            cache.upsert_for_test(&r);
        }
        assert!(web.rx.has_changed().unwrap_or(false), "a Mesh mTLS change regenerates the sidecar");
        settle(&cache, "default", &[&web]);
        let third = web.rx.borrow_and_update().clone();
        let config = third.config.as_ref().expect("config");
        let backend = &config[&CLUSTER_TYPE()]["backend"];
        assert!(String::from_utf8_lossy(&backend.resource.value).contains("backend{mesh=default}"), "SNI");
        let inbound = &config[&LISTENER_TYPE()]["inbound:127.0.0.1:8080"];
        assert!(String::from_utf8_lossy(&inbound.resource.value).contains("identity_cert:secret:default"));
        // The endpoints are the same bytes, versioned anew with their
        // changed cluster (so Envoy gets them to warm it).
        let bytes = |s: &ProxyState| s.config.as_ref().expect("config")[&ENDPOINT_TYPE()]["backend"].resource.clone();
        assert_eq!(bytes(&third), bytes(&second));
        assert_ne!(versions(&third, &ENDPOINT_TYPE()), versions(&second, &ENDPOINT_TYPE()));
    }

    #[test]
    fn unknown_dataplanes_get_an_error_until_registered() {
        let cache = Cache::default();
        let mut s = cache.subscribe(&id("a-1"));
        let err = s.rx.borrow_and_update().config.clone().expect_err("unknown");
        assert!(err.to_string().contains("not registered"), "{err}");
        for r in resources(WORLD) {
            cache.upsert_for_test(&r);
        }
        assert!(s.rx.borrow_and_update().config.is_ok());
    }
}
