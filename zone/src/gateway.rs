//! The generator: a pure function from a snapshot of one mesh's resources
//! to the Envoy configuration of one Dataplane (builtin gateway, delegated
//! gateway or sidecar).
//!
//! ```text
//!   MeshSnapshot { gateways, routes, secrets, dataplanes }
//!        │  select: the best MeshGateway for the Dataplane's gateway tags
//!        │  listeners: group by port; merge tags; attach routes by selectors
//!        ▼
//!   per port ─▶ Listener "<gateway>:<PROTOCOL>:<port>"
//!                 HTTP  ─ one chain ─▶ RDS "<listener>:*" (a virtual host per hostname)
//!                 HTTPS ─ one SNI chain per hostname ─▶ RDS "<listener>:<hostname>"
//!                 TCP   ─ one chain ─▶ tcp_proxy
//!                 TLS   ─ one SNI chain per hostname (terminate or pass through) ─▶ tcp_proxy
//!   every backend destination (tag set) ─▶ Cluster (EDS) + ClusterLoadAssignment
//!   every certificate ─▶ SDS Secret "secret:<name>" (listeners reference it, never inline it)
//!        ▼
//!   check: drop what Envoy would reject (and say why) ─▶ ProxyConfig
//! ```
//!
//! Delegated gateway Dataplanes get one TCP listener per `outbound`
//! instead ([`delegated`]); Dataplanes without `networking.gateway` are
//! sidecars: inbound and outbound listeners ([`sidecar`]). When the mesh
//! has mTLS on, inbound listeners terminate it and every cluster to a mesh
//! service originates it ([`mesh_tls`]). Nothing here does I/O or reads the clock: the
//! same snapshot always yields the same resources, byte for byte, which is
//! what makes content-hash versions stable across restarts, and golden files
//! possible (`zone/testdata/golden`).

mod check;
mod clusters;
pub mod cross_mesh;
pub mod cross_zone;
mod delegated;
pub mod dump;
mod http;
pub mod ingress;
mod listeners;
pub mod mesh_tls;
pub mod policies;
pub mod proxy_template;
mod select;
mod sidecar;

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::{
    config::{
        cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
        route::v3::RouteConfiguration,
    },
    extensions::transport_sockets::tls::v3::Secret,
};
use meridian_sync_proto::{
    Resource, ResourceType, Spec,
    delta::{Desired, DesiredSet, any_version},
    pb::{mesh, system},
};
use prost::Name;

pub use select::{selector_matches, tags_match};

/// Tag naming a Dataplane's service.
pub const SERVICE_TAG: &str = "kuma.io/service";
/// Tag naming an inbound's protocol (`http` gets an HTTP connection
/// manager on sidecars; anything else is proxied as TCP).
pub const PROTOCOL_TAG: &str = "kuma.io/protocol";

/// Type URLs of the Envoy resources a gateway receives, in the order a
/// change is pushed (clusters and their endpoints, then the SDS secrets,
/// before the listeners and routes that use them).
pub fn type_urls() -> [String; 5] {
    [CLUSTER_TYPE(), ENDPOINT_TYPE(), SECRET_TYPE(), LISTENER_TYPE(), ROUTE_TYPE()]
}

#[allow(non_snake_case)]
pub fn CLUSTER_TYPE() -> String {
    Cluster::type_url()
}
#[allow(non_snake_case)]
pub fn ENDPOINT_TYPE() -> String {
    ClusterLoadAssignment::type_url()
}
#[allow(non_snake_case)]
pub fn LISTENER_TYPE() -> String {
    Listener::type_url()
}
#[allow(non_snake_case)]
pub fn ROUTE_TYPE() -> String {
    RouteConfiguration::type_url()
}
/// `type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret`:
/// SDS, served on the same ADS stream as the other types.
#[allow(non_snake_case)]
pub fn SECRET_TYPE() -> String {
    Secret::type_url()
}

/// A resource as the generator sees it: name, creation time (for "newer
/// wins" ties) and spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Item<T> {
    pub name: String,
    /// Unix milliseconds; the newer of two equally ranked gateways wins.
    pub creation_time: i64,
    pub spec: T,
}

/// Everything of one mesh the generator reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeshSnapshot {
    pub mesh: String,
    pub gateways: BTreeMap<String, Item<mesh::MeshGateway>>,
    pub routes: BTreeMap<String, Item<mesh::MeshGatewayRoute>>,
    pub secrets: BTreeMap<String, Item<system::Secret>>,
    pub dataplanes: BTreeMap<String, Item<mesh::Dataplane>>,
    /// The Mesh itself (its `mtls` decides the transport sockets); `None`
    /// when the zone does not hold it.
    pub mesh_spec: Option<mesh::Mesh>,
    /// The mTLS phase the zone serves this mesh in while a switch of its
    /// mTLS is under way ([`crate::mtls::TlsPhase`]); `None`: the phase
    /// the Mesh asks for ([`crate::mtls::TlsPhase::target`]).
    pub tls_phase: Option<crate::mtls::TlsPhase>,
    /// The zone this snapshot is generated in (locality of local
    /// endpoints; empty in golden tests).
    pub zone: String,
    /// Other zones' ZoneIngresses by stored name (global-scoped, shared by
    /// every mesh's snapshot): where the instances of other zones are
    /// reached ([`cross_zone`]).
    pub remote_ingresses: std::sync::Arc<BTreeMap<String, mesh::ZoneIngress>>,
    /// Every `crossMesh` gateway listener of this zone, all meshes
    /// (shared by every mesh's snapshot): where outbounds tagged
    /// `kuma.io/mesh` lead ([`cross_mesh`]).
    pub cross_mesh_listeners: std::sync::Arc<Vec<cross_mesh::CrossMeshListener>>,
    /// Stored version of each resource above, by (type, name), when known
    /// (the generator ignores them; [`sources`] reports them).
    pub versions: BTreeMap<(ResourceType, String), String>,
    /// The connection policies of the mesh ([`policies`]).
    pub policies: policies::Policies,
    /// The mesh's ProxyTemplates ([`proxy_template`]).
    pub proxy_templates: BTreeMap<String, Item<mesh::ProxyTemplate>>,
}

impl MeshSnapshot {
    /// The bytes of Secret `name` of this mesh, when held.
    pub fn secret_data(&self, name: &str) -> Option<&[u8]> {
        self.secrets.get(name).and_then(|s| s.spec.data.as_ref()).map(|d| &d.value[..])
    }

    pub fn new(mesh: impl Into<String>) -> MeshSnapshot {
        MeshSnapshot { mesh: mesh.into(), ..MeshSnapshot::default() }
    }

    /// Builds a snapshot from resources (other meshes and types are ignored;
    /// the Mesh named `mesh` is kept).
    pub fn from_resources<'a>(mesh: &str, resources: impl IntoIterator<Item = &'a Resource>) -> MeshSnapshot {
        let mut s = MeshSnapshot::new(mesh);
        for r in resources {
            if r.meta.mesh == mesh || matches!(r.spec, Spec::Mesh(_)) {
                s.upsert(r);
            }
        }
        s
    }

    /// Inserts or replaces a resource of a type the generator reads (or the
    /// snapshot's own Mesh); returns whether it was one.
    pub fn upsert(&mut self, r: &Resource) -> bool {
        let name = r.meta.name.clone();
        let at = r.meta.creation_time;
        fn item<T>(name: &str, at: i64, spec: &T) -> Item<T>
        where
            T: Clone,
        {
            Item { name: name.to_string(), creation_time: at, spec: spec.clone() }
        }
        match &r.spec {
            Spec::MeshGateway(s) => {
                self.gateways.insert(name.clone(), item(&name, at, s));
                true
            }
            Spec::MeshGatewayRoute(s) => {
                self.routes.insert(name.clone(), item(&name, at, s));
                true
            }
            Spec::Secret(s) => {
                self.secrets.insert(name.clone(), item(&name, at, s));
                true
            }
            Spec::Dataplane(s) => {
                self.dataplanes.insert(name.clone(), item(&name, at, s));
                true
            }
            Spec::Mesh(m) if name == self.mesh => {
                self.mesh_spec = Some(m.clone());
                true
            }
            Spec::ProxyTemplate(s) => {
                self.proxy_templates.insert(name.clone(), item(&name, at, s));
                true
            }
            spec => self.policies.upsert(&name, at, spec),
        }
    }

    /// Records the stored version of a resource the snapshot holds
    /// (what [`sources`] reports a configuration was built from).
    pub fn set_version(&mut self, ty: ResourceType, name: &str, version: &str) {
        self.versions.insert((ty, name.to_string()), version.to_string());
    }

    /// Removes a resource; returns whether it was one the generator reads.
    pub fn remove(&mut self, ty: ResourceType, name: &str) -> bool {
        self.versions.remove(&(ty, name.to_string()));
        match ty {
            ResourceType::MeshGateway => self.gateways.remove(name).is_some(),
            ResourceType::MeshGatewayRoute => self.routes.remove(name).is_some(),
            ResourceType::Secret => self.secrets.remove(name).is_some(),
            ResourceType::Dataplane => self.dataplanes.remove(name).is_some(),
            ResourceType::Mesh if name == self.mesh => self.mesh_spec.take().is_some(),
            ResourceType::ProxyTemplate => self.proxy_templates.remove(name).is_some(),
            ty if ty.is_policy() => self.policies.remove(ty, name),
            _ => false,
        }
    }
}

/// Why a Dataplane gets no configuration at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenError {
    #[error(
        "Dataplane {name:?} is not registered in mesh {mesh:?}; register it with PUT /meshes/{mesh}/dataplanes/{name} on the zone API (or `meridian-zone dataplane run -f`)"
    )]
    UnknownDataplane { mesh: String, name: String },
    #[error(
        "ZoneIngress {name:?} is not registered in this zone; register it with PUT /zoneingresses/{name} on the zone API (or `meridian-zone ingress run -f`)"
    )]
    UnknownIngress { name: String },
}

/// What a generated configuration was built from: decides which changes
/// make it stale (see `xds::cache`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deps {
    /// The Dataplane's own gateway tags (selectors of new gateways match these).
    pub dataplane_tags: BTreeMap<String, String>,
    /// The MeshGateway in use.
    pub gateway: Option<String>,
    /// Routes attached to some listener.
    pub routes: BTreeSet<String>,
    /// Secrets referenced by TLS listeners (present or not).
    pub secrets: BTreeSet<String>,
    /// Merged tags of every listener (selectors of new routes match these).
    pub listener_tags: Vec<BTreeMap<String, String>>,
    /// Every backend destination (whether it resolved to endpoints or not).
    pub destinations: BTreeSet<BTreeMap<String, String>>,
    /// A `crossMesh` listener verifies clients with every mesh's CA
    /// (`mesh_ca:secret:all`).
    pub all_meshes_ca: bool,
    /// The ProxyTemplate applied, if any.
    pub proxy_template: Option<String>,
    /// The policies (type, name) chosen for some route, cluster or
    /// listener of this proxy: those named in its `io.meridian.policies`
    /// metadata ([`policies::METADATA_KEY`]).
    pub policies: BTreeSet<(ResourceType, String)>,
}

/// The resources a Dataplane's configuration was generated from, by
/// (type, name), with their stored versions: the Mesh, the Dataplane
/// itself, the MeshGateway in use, the attached MeshGatewayRoutes, the
/// referenced Secrets and the policies applied (those present in `snapshot`). What propagation
/// status joins on: a configuration "carries" version V of a resource when
/// V is listed here.
pub fn sources(snapshot: &MeshSnapshot, dataplane: &str, deps: &Deps) -> Sources {
    let mut keys: Vec<(ResourceType, &str)> =
        vec![(ResourceType::Mesh, snapshot.mesh.as_str()), (ResourceType::Dataplane, dataplane)];
    keys.extend(deps.gateway.iter().map(|g| (ResourceType::MeshGateway, g.as_str())));
    keys.extend(deps.routes.iter().map(|r| (ResourceType::MeshGatewayRoute, r.as_str())));
    keys.extend(deps.secrets.iter().map(|s| (ResourceType::Secret, s.as_str())));
    keys.extend(deps.proxy_template.iter().map(|t| (ResourceType::ProxyTemplate, t.as_str())));
    keys.extend(deps.policies.iter().map(|(ty, name)| (*ty, name.as_str())));
    keys.into_iter()
        .filter_map(|(ty, name)| {
            let key = (ty, name.to_string());
            snapshot.versions.get(&key).map(|v| (key, v.clone()))
        })
        .collect()
}

/// Whether a configuration with `deps` was generated from resource
/// (`ty`, `name`) of its mesh (the Mesh itself: always; a policy: when it
/// was applied somewhere in it, see [`Deps::policies`]).
pub fn depends_on(deps: &Deps, ty: ResourceType, name: &str) -> bool {
    match ty {
        ResourceType::Mesh => true,
        ResourceType::MeshGateway => deps.gateway.as_deref() == Some(name),
        ResourceType::MeshGatewayRoute => deps.routes.contains(name),
        ResourceType::Secret => deps.secrets.contains(name),
        ResourceType::ProxyTemplate => deps.proxy_template.as_deref() == Some(name),
        ty if ty.is_policy() => deps.policies.contains(&(ty, name.to_string())),
        _ => false,
    }
}

/// (type, name) → stored version of what a configuration was built from ([`sources`]).
pub type Sources = BTreeMap<(ResourceType, String), String>;

/// The Envoy configuration of one Dataplane (gateway or sidecar).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxyConfig {
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
    pub clusters: Vec<Cluster>,
    pub endpoints: Vec<ClusterLoadAssignment>,
    /// SDS secrets (certificate chain and private key) the listeners name
    /// in `tls_certificate_sds_secret_configs`, sorted by name. Key
    /// material lives here only, never in a listener.
    pub secrets: Vec<Secret>,
    pub deps: Deps,
    /// What was left out and why (missing secrets, invalid values,
    /// destinations without a service or without a healthy endpoint...),
    /// sorted, each once.
    pub warnings: Vec<String>,
    /// Route configurations already encoded by [`generate_reusing`], by
    /// name ([`ProxyConfig::take_desired_reusing`] uses them instead of
    /// encoding `routes` again).
    encoded_routes: EncodedRoutes,
}

/// [`ProxyConfig`]'s pre-encoded route configurations: a cache of what
/// encoding `routes` gives, so it takes no part in equality.
#[derive(Clone, Default)]
struct EncodedRoutes(BTreeMap<String, Vec<u8>>);

impl PartialEq for EncodedRoutes {
    fn eq(&self, _: &EncodedRoutes) -> bool {
        true
    }
}

impl std::fmt::Debug for EncodedRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncodedRoutes({} route configurations)", self.0.len())
    }
}

impl ProxyConfig {
    /// The desired set of each type (keyed by type URL), versions being
    /// content hashes of the encoded resources.
    pub fn desired(&self) -> BTreeMap<String, DesiredSet> {
        // Encoded in place (`desired_of`), not packed from a clone: the
        // resources of a large gateway are megabytes of structs.
        fn set<M: prost::Message + Name>(items: &[M], name: impl Fn(&M) -> String) -> DesiredSet {
            items.iter().map(|m| (name(m), desired_of(m))).collect()
        }
        let mut out = BTreeMap::new();
        out.insert(CLUSTER_TYPE(), set(&self.clusters, |c| c.name.clone()));
        out.insert(ENDPOINT_TYPE(), set(&self.endpoints, |c| c.cluster_name.clone()));
        out.insert(LISTENER_TYPE(), set(&self.listeners, |l| l.name.clone()));
        out.insert(ROUTE_TYPE(), set(&self.routes, |r| r.name.clone()));
        out.insert(SECRET_TYPE(), set(&self.secrets, |s| s.name.clone()));
        tie_endpoints_to_clusters(&mut out);
        out
    }

    /// [`ProxyConfig::desired`], encoding only what differs from the
    /// previous generation held in `memo` (which then holds this one); the
    /// result is equal to `desired()`, byte for byte. Takes the resources
    /// out of `self` (they move into `memo`).
    pub fn take_desired_reusing(&mut self, memo: &mut Memo) -> (BTreeMap<String, DesiredSet>, MemoStats) {
        let mut stats = MemoStats::default();
        let mut out = BTreeMap::new();
        let clusters = std::mem::take(&mut self.clusters);
        out.insert(CLUSTER_TYPE(), memo_set(clusters, |c| &c.name, &mut memo.clusters, &mut stats));
        let endpoints = std::mem::take(&mut self.endpoints);
        out.insert(ENDPOINT_TYPE(), memo_set(endpoints, |c| &c.cluster_name, &mut memo.endpoints, &mut stats));
        let listeners = std::mem::take(&mut self.listeners);
        out.insert(LISTENER_TYPE(), memo_set(listeners, |l| &l.name, &mut memo.listeners, &mut stats));
        let routes = std::mem::take(&mut self.routes);
        let encoded = std::mem::take(&mut self.encoded_routes.0);
        out.insert(ROUTE_TYPE(), memo_routes(routes, encoded, &mut memo.routes, &mut stats));
        let secrets = std::mem::take(&mut self.secrets);
        out.insert(SECRET_TYPE(), memo_set(secrets, |s| &s.name, &mut memo.secrets, &mut stats));
        tie_endpoints_to_clusters(&mut out);
        (out, stats)
    }
}

/// Makes each ClusterLoadAssignment's version include its Cluster's, so a
/// changed Cluster is always followed by its endpoints on the stream (the
/// cluster types go out first, [`type_urls`]), even when the endpoints did
/// not change.
///
/// Envoy re-warms an updated EDS cluster and keeps the old one serving until
/// the new one has its ClusterLoadAssignment; a server that sends nothing
/// because the endpoints are unchanged leaves the update warming until the
/// EDS `initial_fetch_timeout` (15 s by default). Known Envoy behaviour:
/// envoyproxy/go-control-plane#245 and #1035, envoyproxy/envoy#13009. Cost:
/// one endpoints resource resent per changed cluster, never per unchanged one.
fn tie_endpoints_to_clusters(out: &mut BTreeMap<String, DesiredSet>) {
    let Some(clusters) = out.get(&CLUSTER_TYPE()) else { return };
    let versions: Vec<(String, String)> = clusters.iter().map(|(n, d)| (n.clone(), d.version.clone())).collect();
    let Some(endpoints) = out.get_mut(&ENDPOINT_TYPE()) else { return };
    for (name, cluster_version) in versions {
        if let Some(d) = endpoints.get_mut(&name) {
            // `<endpoints version>.<cluster version>` (pushed, not
            // formatted: this runs for every cluster of every generation).
            d.version.reserve(1 + cluster_version.len());
            d.version.push('.');
            d.version.push_str(&cluster_version);
        }
    }
}

/// The encoded outputs of a proxy's previous generation, per type URL and
/// resource name: the built resource (the input of encoding) and what it
/// was encoded to. [`ProxyConfig::desired_reusing`] re-encodes and re-hashes
/// only the resources that differ from it; an equal resource reuses its
/// encoded bytes and content version, which are byte for byte what encoding
/// it again would give (prost encoding is deterministic).
///
/// It also holds what [`generate_reusing`] rebuilds from: each
/// MeshGatewayRoute's Envoy routes per virtual host, with the inputs they
/// were built from.
#[derive(Debug, Clone, Default)]
pub struct Memo {
    listeners: BTreeMap<String, (Listener, Desired)>,
    routes: BTreeMap<String, (RouteConfiguration, Desired)>,
    clusters: BTreeMap<String, (Cluster, Desired)>,
    endpoints: BTreeMap<String, (ClusterLoadAssignment, Desired)>,
    secrets: BTreeMap<String, (Secret, Desired)>,
    build: BuildMemo,
}

/// The generator's side of a [`Memo`].
#[derive(Debug, Clone, Default)]
struct BuildMemo {
    /// What every cached entry depends on besides its own key: the mesh's
    /// name and its policies (route policies, TrafficPermission). When
    /// either differs, every entry is dropped.
    scope: Option<(String, policies::Policies)>,
    routes: http::RouteMemo,
}

impl Memo {
    /// How many MeshGatewayRoute entries (one route in one virtual host)
    /// the last [`generate_reusing`] reused and built.
    pub fn route_stats(&self) -> MemoStats {
        MemoStats { encoded: self.build.routes.built, reused: self.build.routes.reused }
    }
}

/// How many resources [`ProxyConfig::take_desired_reusing`] encoded and
/// reused (or, from [`Memo::route_stats`], route entries built and reused).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoStats {
    pub encoded: usize,
    pub reused: usize,
}

/// One resource as a desired entry: packed, versioned by content hash.
pub fn desired_of<M: prost::Message + Name>(m: &M) -> Desired {
    let any = envoy_types::pb::google::protobuf::Any { type_url: M::type_url(), value: m.encode_to_vec() };
    Desired { version: any_version(&any), resource: any }
}

/// Encodes `items` into a desired set, reusing `memo`'s entry for each item
/// equal to the one it was encoded from; `memo` then holds this set.
fn memo_set<M: prost::Message + Name + PartialEq>(
    items: Vec<M>,
    name: impl Fn(&M) -> &str,
    memo: &mut BTreeMap<String, (M, Desired)>,
    stats: &mut MemoStats,
) -> DesiredSet {
    let mut next = BTreeMap::new();
    let mut out = DesiredSet::new();
    for m in items {
        let key = name(&m).to_string();
        let desired = match memo.remove(&key) {
            Some((old, desired)) if old == m => {
                stats.reused += 1;
                desired
            }
            _ => {
                stats.encoded += 1;
                desired_of(&m)
            }
        };
        out.insert(key.clone(), desired.clone());
        next.insert(key, (m, desired));
    }
    *memo = next;
    out
}

/// [`memo_set`] for route configurations, with those `encoded` already
/// (by [`generate_reusing`]): their bytes are compared with the previous
/// generation's instead of the structs, and never encoded again.
fn memo_routes(
    items: Vec<RouteConfiguration>,
    mut encoded: BTreeMap<String, Vec<u8>>,
    memo: &mut BTreeMap<String, (RouteConfiguration, Desired)>,
    stats: &mut MemoStats,
) -> DesiredSet {
    if encoded.is_empty() {
        return memo_set(items, |r| &r.name, memo, stats);
    }
    let mut next = BTreeMap::new();
    let mut out = DesiredSet::new();
    for m in items {
        let key = m.name.clone();
        let old = memo.remove(&key);
        let desired = match (encoded.remove(&key), old) {
            (Some(bytes), Some((_, desired))) if desired.resource.value == bytes => {
                stats.reused += 1;
                desired
            }
            (Some(bytes), _) => {
                debug_assert!(
                    bytes == prost::Message::encode_to_vec(&m),
                    "route configuration {key}: spliced encoding differs"
                );
                stats.encoded += 1;
                let any = envoy_types::pb::google::protobuf::Any { type_url: ROUTE_TYPE(), value: bytes };
                Desired { version: any_version(&any), resource: any }
            }
            (None, Some((old, desired))) if old == m => {
                stats.reused += 1;
                desired
            }
            (None, _) => {
                stats.encoded += 1;
                desired_of(&m)
            }
        };
        out.insert(key.clone(), desired.clone());
        next.insert(key, (m, desired));
    }
    *memo = next;
    out
}

/// What a builtin gateway Dataplane's configuration depends on besides the
/// snapshot, with its address left out: two Dataplanes of one snapshot
/// with equal keys get the same configuration but for the address their
/// listeners bind ([`rebind`]), so a zone generates replicas of a gateway
/// once per change. `None` (generate it alone) for anything else: a
/// sidecar, a delegated gateway, a Dataplane whose address is not an IP
/// (its listeners bind 0.0.0.0 with a warning naming the address), or one
/// not registered.
pub fn share_key(snapshot: &MeshSnapshot, name: &str) -> Option<Vec<u8>> {
    use prost::Message;
    let dp = snapshot.dataplanes.get(name)?;
    let networking = dp.spec.networking.as_ref()?;
    let gw = networking.gateway.as_ref()?;
    if gw.r#type != mesh::dataplane::networking::gateway::GatewayType::Builtin as i32
        || networking.address.parse::<std::net::IpAddr>().is_err()
    {
        return None;
    }
    let mut spec = dp.spec.clone();
    if let Some(n) = spec.networking.as_mut() {
        n.address.clear();
    }
    Some(spec.encode_to_vec())
}

/// Makes a builtin gateway's configuration, generated for another Dataplane
/// with the same [`share_key`], this one's: every listener binds `address`
/// (an IP, as [`share_key`] requires) on its port.
pub fn rebind(listeners: &mut [Listener], address: &str) {
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
    for l in listeners {
        if let Some(address::Address::SocketAddress(sa)) = l.address.as_mut().and_then(|a| a.address.as_mut()) {
            let port = match sa.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(p)) => p,
                _ => continue,
            };
            l.address = Some(clusters::socket_address(address, port));
        }
    }
}

/// Shared state while generating one proxy: the clusters asked for, the
/// dependencies seen and the warnings.
#[derive(Debug, Default)]
struct Ctx {
    /// The Dataplane's name.
    dataplane: String,
    /// Cluster name → destination tags.
    clusters: BTreeMap<String, BTreeMap<String, String>>,
    /// SDS secrets by name (TLS listeners' certificates).
    secrets: BTreeMap<String, Secret>,
    /// Mesh mTLS, when the mesh has it on.
    mtls: Option<mesh_tls::MeshTls>,
    /// The gateway's own tags (Dataplane + MeshGateway): the source of
    /// cluster-level policies.
    gateway_tags: BTreeMap<String, String>,
    /// Policies applied so far.
    applied: policies::Applied,
    deps: Deps,
    warnings: Vec<String>,
    /// The per-route build cache, when generating with a [`Memo`]
    /// ([`generate_reusing`]); `None`: build everything.
    routes: Option<http::RouteMemo>,
    /// With the cache: each virtual host built, encoded, by route
    /// configuration name, in order.
    encoded_vhosts: Vec<(String, Vec<u8>)>,
}

impl Ctx {
    /// Registers a destination and returns its cluster name.
    fn cluster_for(&mut self, destination: &BTreeMap<String, String>) -> String {
        let name = clusters::cluster_name(destination);
        self.deps.destinations.insert(destination.clone());
        self.clusters.entry(name.clone()).or_insert_with(|| destination.clone());
        name
    }

    fn warn(&mut self, w: impl Into<String>) {
        self.warnings.push(w.into());
    }
}

/// Generates the configuration of Dataplane `name` of `snapshot`'s mesh.
pub fn generate(snapshot: &MeshSnapshot, name: &str) -> Result<ProxyConfig, GenError> {
    generate_with(snapshot, name, None).0
}

/// [`generate`], reusing what `memo` kept of this proxy's previous
/// generation (from any earlier snapshot): the Envoy routes of each
/// MeshGatewayRoute in each virtual host are rebuilt only when what they
/// are built from changed (the route's spec, its listener's port, tags and
/// `crossMesh`, the EXACT paths of the virtual host that override its
/// PREFIX paths; and for all of them the mesh's name and policies), then
/// sorted and assembled as [`generate`] does. The result equals
/// [`generate`]'s, byte for byte (`xds::cache` proptests hold it to that);
/// `memo` then holds this generation. Pass the same `memo` to
/// [`ProxyConfig::take_desired_reusing`] after it.
pub fn generate_reusing(snapshot: &MeshSnapshot, name: &str, memo: &mut Memo) -> Result<ProxyConfig, GenError> {
    let mut build = std::mem::take(&mut memo.build);
    let same_scope = build.scope.as_ref().is_some_and(|(mesh, p)| *mesh == snapshot.mesh && *p == snapshot.policies);
    if !same_scope {
        build.routes.clear();
        build.scope = Some((snapshot.mesh.clone(), snapshot.policies.clone()));
    }
    build.routes.reused = 0;
    build.routes.built = 0;
    let (config, routes) = generate_with(snapshot, name, Some(build.routes));
    build.routes = routes.unwrap_or_default();
    build.routes.rotate();
    memo.build = build;
    config
}

/// [`generate`] with the per-route cache `routes` (given back, holding
/// this generation's entries besides the previous ones).
fn generate_with(
    snapshot: &MeshSnapshot,
    name: &str,
    routes: Option<http::RouteMemo>,
) -> (Result<ProxyConfig, GenError>, Option<http::RouteMemo>) {
    let Some(dp) = snapshot.dataplanes.get(name) else {
        return (Err(GenError::UnknownDataplane { mesh: snapshot.mesh.clone(), name: name.to_string() }), routes);
    };
    let networking = dp.spec.networking.as_ref();
    let mut ctx = Ctx { dataplane: name.to_string(), mtls: mesh_tls::of(snapshot), routes, ..Ctx::default() };
    let mut listeners = Vec::new();
    let mut routes = Vec::new();
    let mut local_clusters = Vec::new();
    let Some(gw) = networking.and_then(|n| n.gateway.as_ref()) else {
        if let Some(n) = networking {
            (listeners, local_clusters) = sidecar::generate(snapshot, n, &mut ctx);
        }
        let memo = ctx.routes.take();
        return (Ok(finish(snapshot, listeners, routes, local_clusters, ctx)), memo);
    };
    ctx.deps.dataplane_tags = gw.tags.clone();
    let builtin = gw.r#type == mesh::dataplane::networking::gateway::GatewayType::Builtin as i32;
    if builtin {
        let address = networking.map(|n| n.address.as_str()).unwrap_or_default();
        match select::select_gateway(snapshot, &gw.tags) {
            Some(gateway) => {
                ctx.deps.gateway = Some(gateway.name.clone());
                ctx.gateway_tags = gw.tags.clone();
                ctx.gateway_tags.extend(gateway.spec.tags.clone());
                let (l, r) = listeners::generate(snapshot, gateway, &gw.tags, address, &mut ctx);
                listeners = l;
                routes = r;
            }
            None => ctx.warn(format!("no MeshGateway selects the gateway tags {:?}", gw.tags)),
        }
    } else if let Some(n) = networking {
        listeners = delegated::outbound_listeners(n, &mut ctx);
    }
    let memo = ctx.routes.take();
    (Ok(finish(snapshot, listeners, routes, local_clusters, ctx)), memo)
}

/// Adds the clusters asked for (and their endpoints) to the listeners and
/// routes, then drops what Envoy would refuse.
fn finish(
    snapshot: &MeshSnapshot,
    listeners: Vec<Listener>,
    routes: Vec<RouteConfiguration>,
    local_clusters: Vec<Cluster>,
    mut ctx: Ctx,
) -> ProxyConfig {
    // Every inbound of the mesh by service, once per generation.
    let inbounds = clusters::index(snapshot);
    let mtls = ctx.mtls.as_ref().filter(|m| m.clients);
    let (mut clusters, endpoints) =
        clusters::generate(snapshot, &inbounds, &ctx.clusters, mtls, true, &mut ctx.warnings);
    if ctx.deps.gateway.is_some() {
        for c in &mut clusters {
            if let Some(destination) = ctx.clusters.get(&c.name) {
                policies::apply_cluster(snapshot, &inbounds, &ctx.gateway_tags, destination, c, &mut ctx.applied);
            }
        }
        let unused = ctx.applied.unused(&snapshot.policies, &ctx.deps.listener_tags);
        ctx.warnings.extend(unused);
    }
    if !local_clusters.is_empty() {
        clusters.extend(local_clusters);
        clusters.sort_by(|a, b| a.name.cmp(&b.name));
    }
    ctx.deps.policies = ctx.applied.used().clone();
    let secrets = ctx.secrets.into_values().collect();
    let dataplane = ctx.dataplane;
    let mut config = ProxyConfig {
        listeners,
        routes,
        clusters,
        endpoints,
        secrets,
        deps: ctx.deps,
        warnings: ctx.warnings,
        encoded_routes: EncodedRoutes::default(),
    };
    let pruned = check::prune(&mut config);
    if let Some(dp) = snapshot.dataplanes.get(&dataplane) {
        let gateway = config.deps.gateway.is_some();
        proxy_template::apply(snapshot, &proxy_template::dataplane_tags(&dp.spec), gateway, &mut config);
    }
    // The route configurations as built (not changed by `prune`), encoded
    // from their virtual hosts' encodings.
    if !ctx.encoded_vhosts.is_empty() {
        let mut by_name: BTreeMap<&str, Vec<&[u8]>> = BTreeMap::new();
        for (name, vh) in &ctx.encoded_vhosts {
            by_name.entry(name.as_str()).or_default().push(vh.as_slice());
        }
        for rc in &mut config.routes {
            match by_name.get(rc.name.as_str()) {
                Some(vhs) if vhs.len() == rc.virtual_hosts.len() && !pruned.contains(&rc.name) => {
                    let bytes = http::encode_route_configuration(rc, vhs);
                    config.encoded_routes.0.insert(rc.name.clone(), bytes);
                }
                _ => {}
            }
        }
    }
    // Sorted and once each: the same inputs in any order give the same list.
    config.warnings.sort();
    config.warnings.dedup();
    config
}

/// A listener or SNI hostname as written (`""` means `*`).
fn norm_host(h: &str) -> String {
    if h.is_empty() { "*".to_string() } else { h.to_string() }
}

/// Whether hostname `pattern` (exact, `*.suffix` or `*`) covers `host`,
/// equal names included.
fn host_covers(pattern: &str, host: &str) -> bool {
    if pattern == host || pattern == "*" {
        return true;
    }
    match pattern.strip_prefix("*.") {
        // `*.example.com` covers `a.example.com`, `a.b.example.com` and `*.a.example.com`.
        Some(suffix) => {
            host.len() > suffix.len() + 1 && host.ends_with(suffix) && host[..host.len() - suffix.len()].ends_with('.')
        }
        None => false,
    }
}

/// Whether two hostnames match: equal, or one is a wildcard covering the other.
fn hosts_match(a: &str, b: &str) -> bool {
    host_covers(a, b) || host_covers(b, a)
}

/// Sort key for hostnames: exact names first, then wildcards with more
/// labels first, `*` last; then by name.
fn host_order(h: &str) -> (u8, std::cmp::Reverse<usize>, String) {
    let class = if h == "*" {
        2
    } else if h.starts_with("*.") {
        1
    } else {
        0
    };
    (class, std::cmp::Reverse(h.split('.').count()), h.to_string())
}

/// One MeshGateway listener with what attaches to it.
struct ListenerCtx<'a> {
    /// The listener hostname, `*` when none.
    pub hostname: String,
    pub port: u32,
    pub protocol: mesh::mesh_gateway::listener::Protocol,
    pub spec: &'a meridian_sync_proto::pb::mesh::mesh_gateway::Listener,
    /// Merged tags (Dataplane, MeshGateway, listener): the source of policies.
    pub tags: BTreeMap<String, String>,
    /// HTTP routes (on HTTP/HTTPS) or TCP routes (on TCP/TLS), by name.
    pub routes: Vec<&'a Item<mesh::MeshGatewayRoute>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_cluster_resends_its_unchanged_endpoints() {
        let config = |timeout: i64| ProxyConfig {
            listeners: Vec::new(),
            routes: Vec::new(),
            clusters: vec![
                Cluster {
                    name: "web".into(),
                    connect_timeout: Some(envoy_types::pb::google::protobuf::Duration { seconds: timeout, nanos: 0 }),
                    ..Default::default()
                },
                Cluster { name: "api".into(), ..Default::default() },
            ],
            endpoints: vec![
                ClusterLoadAssignment { cluster_name: "web".into(), ..Default::default() },
                ClusterLoadAssignment { cluster_name: "api".into(), ..Default::default() },
            ],
            secrets: Vec::new(),
            deps: Deps::default(),
            warnings: Vec::new(),
            encoded_routes: EncodedRoutes::default(),
        };
        let eds = |d: &BTreeMap<String, DesiredSet>, n: &str| d[&ENDPOINT_TYPE()][n].clone();
        let before = config(5).desired();
        let mut memo = Memo::default();
        let _ = config(5).take_desired_reusing(&mut memo);
        let (after, _) = config(6).take_desired_reusing(&mut memo);
        assert_eq!(eds(&before, "web").resource, eds(&after, "web").resource, "the endpoints are the same bytes");
        assert_ne!(eds(&before, "web").version, eds(&after, "web").version, "but go out again after the cluster");
        assert_eq!(eds(&before, "api"), eds(&after, "api"), "an unchanged cluster's endpoints stay as they are");
        assert_eq!(config(6).desired(), after, "with or without the memo");
    }

    fn world(routes: &[(&str, &str)]) -> MeshSnapshot {
        let mut yaml = String::from(
            "type: MeshGateway\nmesh: default\nname: gw\nselectors: [{match: {kuma.io/service: gw}}]\nconf: {listeners: [{port: 8080, protocol: HTTP}]}\n---\ntype: Dataplane\nmesh: default\nname: gw-1\nnetworking: {address: 10.0.0.1, gateway: {type: BUILTIN, tags: {kuma.io/service: gw}}}\n---\ntype: Dataplane\nmesh: default\nname: b-1\nnetworking: {address: 10.0.0.2, inbound: [{port: 80, tags: {kuma.io/service: b}}]}\n",
        );
        for (name, path) in routes {
            yaml.push_str(&format!(
                "---\ntype: MeshGatewayRoute\nmesh: default\nname: {name}\nselectors: [{{match: {{kuma.io/service: gw}}}}]\nconf: {{http: {{rules: [{{matches: [{{path: {path}}}], backends: [{{destination: {{kuma.io/service: b}}}}]}}]}}}}\n"
            ));
        }
        let resources: Vec<Resource> = meridian_sync_proto::universal::parse_resources(&yaml)
            .expect("yaml")
            .into_iter()
            .map(|r| r.expect("resource"))
            .collect();
        MeshSnapshot::from_resources("default", &resources)
    }

    #[test]
    fn a_one_route_change_rebuilds_that_route_only() {
        let before = world(&[("r1", "{match: PREFIX, value: /a}"), ("r2", "{match: PREFIX, value: /b}")]);
        // r2 changes; r3 arrives with an EXACT /a that overrides r1's exact
        // half: r1's spec is the same, its Envoy routes are not.
        let after = world(&[
            ("r1", "{match: PREFIX, value: /a}"),
            ("r2", "{match: PREFIX, value: /c}"),
            ("r3", "{match: EXACT, value: /a}"),
        ]);
        let mut memo = Memo::default();
        for (snapshot, built, reused) in [(&before, 2, 0), (&before, 0, 2), (&after, 3, 0), (&after, 0, 3)] {
            let mut got = generate_reusing(snapshot, "gw-1", &mut memo).expect("generate");
            assert_eq!(memo.route_stats(), MemoStats { encoded: built, reused });
            let want = generate(snapshot, "gw-1").expect("generate");
            assert_eq!(got, want);
            let (desired, _) = got.take_desired_reusing(&mut memo);
            assert_eq!(desired, want.desired());
        }
        // Back: r3 leaves and r2 is as before; r1's input changes back too.
        let mut got = generate_reusing(&before, "gw-1", &mut memo).expect("generate");
        assert_eq!(memo.route_stats(), MemoStats { encoded: 2, reused: 0 });
        assert_eq!(got.take_desired_reusing(&mut memo).0, generate(&before, "gw-1").expect("generate").desired());
        // Only r2 changes: r1 is reused.
        let third = world(&[("r1", "{match: PREFIX, value: /a}"), ("r2", "{match: EXACT, value: /d}")]);
        let got = generate_reusing(&third, "gw-1", &mut memo).expect("generate");
        assert_eq!(memo.route_stats(), MemoStats { encoded: 1, reused: 1 });
        assert_eq!(got, generate(&third, "gw-1").expect("generate"));
    }

    #[test]
    fn host_coverage() {
        assert!(host_covers("*", "a.example.com"));
        assert!(host_covers("*.example.com", "a.example.com"));
        assert!(host_covers("*.example.com", "*.a.example.com"));
        assert!(!host_covers("*.example.com", "example.com"));
        assert!(!host_covers("*.example.com", "aexample.com"));
        assert!(!host_covers("a.example.com", "*.example.com"));
        assert!(hosts_match("a.example.com", "*.example.com"));
        let mut hs = vec!["*", "*.example.com", "a.example.com", "*.a.example.com", "b.com"];
        hs.sort_by_key(|h| host_order(h));
        assert_eq!(hs, ["a.example.com", "b.com", "*.a.example.com", "*.example.com", "*"]);
    }
}
