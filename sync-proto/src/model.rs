//! The typed resource model: which types exist, how they are scoped and synced,
//! and a resource as `meta` + typed `spec`.

use std::{collections::BTreeMap, fmt};

use prost::Message;
use sha2::{Digest, Sha256};

use crate::pb;

/// Where a type's resources are authored and which way they travel over KDS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncDirection {
    /// Authored at the global, streamed down to every zone.
    GlobalToZone,
    /// Authored in a zone, streamed up to the global.
    ZoneToGlobal,
    /// Never synced (global bookkeeping).
    None,
}

/// Every resource type Meridian knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    Mesh,
    MeshGateway,
    MeshGatewayRoute,
    Dataplane,
    DataplaneInsight,
    Secret,
    /// A secret outside any mesh, for the control plane itself (zone-token
    /// signing key, revocations).
    GlobalSecret,
    Zone,
    ZoneInsight,
    ZoneIngress,
    /// The xDS subscriptions of a ZoneIngress's proxy (status, zone → global).
    ZoneIngressInsight,
    /// Connection policy (`timeouts`), synced global → zones; see [`ResourceType::POLICIES`].
    Timeout,
    /// Connection policy (`retries`), synced global → zones; see [`ResourceType::POLICIES`].
    Retry,
    /// Connection policy (`circuit-breakers`), synced global → zones; see [`ResourceType::POLICIES`].
    CircuitBreaker,
    /// Connection policy (`health-checks`), synced global → zones; see [`ResourceType::POLICIES`].
    HealthCheck,
    /// Connection policy (`rate-limits`), synced global → zones; see [`ResourceType::POLICIES`].
    RateLimit,
    /// Connection policy (`fault-injections`), synced global → zones; see [`ResourceType::POLICIES`].
    FaultInjection,
    /// Connection policy (`traffic-permissions`), synced global → zones; see [`ResourceType::POLICIES`].
    TrafficPermission,
    /// Connection policy (`traffic-logs`), synced global → zones; see [`ResourceType::POLICIES`].
    TrafficLog,
    /// The escape hatch (`proxytemplates`): raw Envoy resources and
    /// changes to the generated configuration of the Dataplanes its
    /// `selectors` match; synced global → zones. Not one of the
    /// [`ResourceType::POLICIES`] (it has no sources/destinations).
    ProxyTemplate,
}

impl ResourceType {
    /// The connection policies (the incumbent's `sources`/`destinations`
    /// policies a builtin gateway applies), in the order they are applied.
    pub const POLICIES: [ResourceType; 8] = [
        ResourceType::Timeout,
        ResourceType::Retry,
        ResourceType::CircuitBreaker,
        ResourceType::HealthCheck,
        ResourceType::RateLimit,
        ResourceType::FaultInjection,
        ResourceType::TrafficPermission,
        ResourceType::TrafficLog,
    ];

    /// All types, in the order they are applied (a mesh before what lives in it).
    pub const ALL: [ResourceType; 20] = [
        ResourceType::Mesh,
        ResourceType::Secret,
        ResourceType::MeshGateway,
        ResourceType::MeshGatewayRoute,
        ResourceType::Timeout,
        ResourceType::Retry,
        ResourceType::CircuitBreaker,
        ResourceType::HealthCheck,
        ResourceType::RateLimit,
        ResourceType::FaultInjection,
        ResourceType::TrafficPermission,
        ResourceType::TrafficLog,
        ResourceType::ProxyTemplate,
        ResourceType::Dataplane,
        ResourceType::DataplaneInsight,
        ResourceType::Zone,
        ResourceType::ZoneInsight,
        ResourceType::ZoneIngress,
        ResourceType::ZoneIngressInsight,
        ResourceType::GlobalSecret,
    ];

    /// The type name used in YAML `type:`, in the store and as KDS `type_url`.
    pub fn name(self) -> &'static str {
        match self {
            ResourceType::Mesh => "Mesh",
            ResourceType::MeshGateway => "MeshGateway",
            ResourceType::MeshGatewayRoute => "MeshGatewayRoute",
            ResourceType::Dataplane => "Dataplane",
            ResourceType::DataplaneInsight => "DataplaneInsight",
            ResourceType::Secret => "Secret",
            ResourceType::GlobalSecret => "GlobalSecret",
            ResourceType::Zone => "Zone",
            ResourceType::ZoneInsight => "ZoneInsight",
            ResourceType::ZoneIngress => "ZoneIngress",
            ResourceType::ZoneIngressInsight => "ZoneIngressInsight",
            ResourceType::Timeout => "Timeout",
            ResourceType::Retry => "Retry",
            ResourceType::CircuitBreaker => "CircuitBreaker",
            ResourceType::HealthCheck => "HealthCheck",
            ResourceType::RateLimit => "RateLimit",
            ResourceType::FaultInjection => "FaultInjection",
            ResourceType::TrafficPermission => "TrafficPermission",
            ResourceType::TrafficLog => "TrafficLog",
            ResourceType::ProxyTemplate => "ProxyTemplate",
        }
    }

    /// The REST path segment (`/meshes/{mesh}/<plural>/{name}`): the
    /// incumbent's `WsPath` name (Kuma 2.14 `zz_generated.resources.go`), the
    /// one clients send on the wire. [`ResourceType::plural_aliases`] lists
    /// the other spellings the API also serves.
    pub fn plural(self) -> &'static str {
        match self {
            ResourceType::Mesh => "meshes",
            ResourceType::MeshGateway => "meshgateways",
            ResourceType::MeshGatewayRoute => "meshgatewayroutes",
            ResourceType::Dataplane => "dataplanes",
            ResourceType::DataplaneInsight => "dataplane-insights",
            ResourceType::Secret => "secrets",
            ResourceType::GlobalSecret => "global-secrets",
            ResourceType::Zone => "zones",
            ResourceType::ZoneInsight => "zone-insights",
            ResourceType::ZoneIngress => "zoneingresses",
            ResourceType::ZoneIngressInsight => "zone-ingress-insights",
            ResourceType::Timeout => "timeouts",
            ResourceType::Retry => "retries",
            ResourceType::CircuitBreaker => "circuit-breakers",
            ResourceType::HealthCheck => "health-checks",
            ResourceType::RateLimit => "rate-limits",
            ResourceType::FaultInjection => "fault-injections",
            ResourceType::TrafficPermission => "traffic-permissions",
            ResourceType::TrafficLog => "traffic-logs",
            ResourceType::ProxyTemplate => "proxytemplates",
        }
    }

    /// Other path segments accepted for this type: the incumbent's
    /// alternative `WsPath` names (`zone-ingresses`, `globalsecrets`) and
    /// Meridian's earlier spellings (`zoneinsights`, `dataplaneinsights`),
    /// kept so existing scripts keep working.
    pub fn plural_aliases(self) -> &'static [&'static str] {
        match self {
            ResourceType::DataplaneInsight => &["dataplaneinsights"],
            ResourceType::GlobalSecret => &["globalsecrets"],
            ResourceType::ZoneInsight => &["zoneinsights"],
            ResourceType::ZoneIngress => &["zone-ingresses"],
            ResourceType::ZoneIngressInsight => &["zoneingressinsights"],
            _ => &[],
        }
    }

    /// Whether resources of this type live inside a mesh.
    pub fn is_mesh_scoped(self) -> bool {
        !matches!(
            self,
            ResourceType::Mesh
                | ResourceType::GlobalSecret
                | ResourceType::Zone
                | ResourceType::ZoneInsight
                | ResourceType::ZoneIngress
                | ResourceType::ZoneIngressInsight
        )
    }

    pub fn sync_direction(self) -> SyncDirection {
        match self {
            // GlobalSecret: only token public keys and revocation lists
            // travel (`kds::global_secret_syncs`); a federated zone takes
            // none from its users.
            ResourceType::Mesh
            | ResourceType::MeshGateway
            | ResourceType::MeshGatewayRoute
            | ResourceType::Secret
            | ResourceType::GlobalSecret
            | ResourceType::Timeout
            | ResourceType::Retry
            | ResourceType::CircuitBreaker
            | ResourceType::HealthCheck
            | ResourceType::RateLimit
            | ResourceType::FaultInjection
            | ResourceType::TrafficPermission
            | ResourceType::TrafficLog
            | ResourceType::ProxyTemplate => SyncDirection::GlobalToZone,
            ResourceType::Dataplane
            | ResourceType::DataplaneInsight
            | ResourceType::ZoneIngress
            | ResourceType::ZoneIngressInsight => SyncDirection::ZoneToGlobal,
            ResourceType::Zone | ResourceType::ZoneInsight => SyncDirection::None,
        }
    }

    /// The fully qualified protobuf message name of the spec.
    pub fn proto_name(self) -> &'static str {
        match self {
            ResourceType::Secret | ResourceType::GlobalSecret => "kuma.system.v1alpha1.Secret",
            ResourceType::Zone => "kuma.system.v1alpha1.Zone",
            ResourceType::ZoneInsight => "kuma.system.v1alpha1.ZoneInsight",
            ResourceType::Mesh => "kuma.mesh.v1alpha1.Mesh",
            ResourceType::MeshGateway => "kuma.mesh.v1alpha1.MeshGateway",
            ResourceType::MeshGatewayRoute => "kuma.mesh.v1alpha1.MeshGatewayRoute",
            ResourceType::Dataplane => "kuma.mesh.v1alpha1.Dataplane",
            ResourceType::DataplaneInsight => "kuma.mesh.v1alpha1.DataplaneInsight",
            ResourceType::ZoneIngress => "kuma.mesh.v1alpha1.ZoneIngress",
            ResourceType::ZoneIngressInsight => "kuma.mesh.v1alpha1.ZoneIngressInsight",
            ResourceType::Timeout => "kuma.mesh.v1alpha1.Timeout",
            ResourceType::Retry => "kuma.mesh.v1alpha1.Retry",
            ResourceType::CircuitBreaker => "kuma.mesh.v1alpha1.CircuitBreaker",
            ResourceType::HealthCheck => "kuma.mesh.v1alpha1.HealthCheck",
            ResourceType::RateLimit => "kuma.mesh.v1alpha1.RateLimit",
            ResourceType::FaultInjection => "kuma.mesh.v1alpha1.FaultInjection",
            ResourceType::TrafficPermission => "kuma.mesh.v1alpha1.TrafficPermission",
            ResourceType::TrafficLog => "kuma.mesh.v1alpha1.TrafficLog",
            ResourceType::ProxyTemplate => "kuma.mesh.v1alpha1.ProxyTemplate",
        }
    }

    /// The `google.protobuf.Any` type URL of the spec.
    pub fn type_url(self) -> String {
        format!("type.googleapis.com/{}", self.proto_name())
    }

    /// Whether this is one of the [`ResourceType::POLICIES`].
    pub fn is_policy(self) -> bool {
        Self::POLICIES.contains(&self)
    }

    pub fn from_name(name: &str) -> Option<ResourceType> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Accepts the type name, its plural path segment, or a lower-case form
    /// (`meshgateway`, `meshgateways`, `MeshGateway`; `rate-limit` for
    /// `rate-limits`, as kumactl), as the CLI does.
    pub fn parse_loose(s: &str) -> Option<ResourceType> {
        let lower = s.to_ascii_lowercase();
        Self::ALL.into_iter().find(|t| {
            t.name().eq_ignore_ascii_case(s)
                || t.plural() == lower
                || t.plural().replace('-', "") == lower
                || t.plural_aliases().contains(&lower.as_str())
                // kumactl's singular of a hyphenated plural: `rate-limit`, `health-check`.
                || t.plural().strip_suffix('s') == Some(lower.as_str())
        })
    }

    /// The type of a REST path segment: its [`ResourceType::plural`] or one
    /// of its [`ResourceType::plural_aliases`] (exact, case-sensitive, as the
    /// incumbent's router).
    pub fn from_plural(plural: &str) -> Option<ResourceType> {
        Self::ALL.into_iter().find(|t| t.plural() == plural || t.plural_aliases().contains(&plural))
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A typed spec: exactly one protobuf message per resource type.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    Mesh(pb::mesh::Mesh),
    MeshGateway(pb::mesh::MeshGateway),
    MeshGatewayRoute(pb::mesh::MeshGatewayRoute),
    Dataplane(pb::mesh::Dataplane),
    DataplaneInsight(pb::mesh::DataplaneInsight),
    Secret(pb::system::Secret),
    GlobalSecret(pb::system::Secret),
    Zone(pb::system::Zone),
    ZoneInsight(pb::system::ZoneInsight),
    ZoneIngress(pb::mesh::ZoneIngress),
    ZoneIngressInsight(pb::mesh::ZoneIngressInsight),
    Timeout(pb::mesh::Timeout),
    Retry(pb::mesh::Retry),
    CircuitBreaker(pb::mesh::CircuitBreaker),
    HealthCheck(pb::mesh::HealthCheck),
    RateLimit(pb::mesh::RateLimit),
    FaultInjection(pb::mesh::FaultInjection),
    TrafficPermission(pb::mesh::TrafficPermission),
    TrafficLog(pb::mesh::TrafficLog),
    ProxyTemplate(pb::mesh::ProxyTemplate),
}

/// Runs `$body` with `$v` bound to the inner message of a [`Spec`].
macro_rules! with_spec {
    ($spec:expr, $v:ident => $body:expr) => {
        match $spec {
            Spec::Mesh($v) => $body,
            Spec::MeshGateway($v) => $body,
            Spec::MeshGatewayRoute($v) => $body,
            Spec::Dataplane($v) => $body,
            Spec::DataplaneInsight($v) => $body,
            Spec::Secret($v) => $body,
            Spec::GlobalSecret($v) => $body,
            Spec::Zone($v) => $body,
            Spec::ZoneInsight($v) => $body,
            Spec::ZoneIngress($v) => $body,
            Spec::ZoneIngressInsight($v) => $body,
            Spec::Timeout($v) => $body,
            Spec::Retry($v) => $body,
            Spec::CircuitBreaker($v) => $body,
            Spec::HealthCheck($v) => $body,
            Spec::RateLimit($v) => $body,
            Spec::FaultInjection($v) => $body,
            Spec::TrafficPermission($v) => $body,
            Spec::TrafficLog($v) => $body,
            Spec::ProxyTemplate($v) => $body,
        }
    };
}

/// Runs `$body` with `$T` naming the message type of a [`ResourceType`], and
/// `$wrap` the matching [`Spec`] constructor.
macro_rules! with_type {
    ($ty:expr, $T:ident, $wrap:ident => $body:expr) => {
        match $ty {
            ResourceType::Mesh => {
                type $T = $crate::pb::mesh::Mesh;
                let $wrap = Spec::Mesh;
                $body
            }
            ResourceType::MeshGateway => {
                type $T = $crate::pb::mesh::MeshGateway;
                let $wrap = Spec::MeshGateway;
                $body
            }
            ResourceType::MeshGatewayRoute => {
                type $T = $crate::pb::mesh::MeshGatewayRoute;
                let $wrap = Spec::MeshGatewayRoute;
                $body
            }
            ResourceType::Dataplane => {
                type $T = $crate::pb::mesh::Dataplane;
                let $wrap = Spec::Dataplane;
                $body
            }
            ResourceType::DataplaneInsight => {
                type $T = $crate::pb::mesh::DataplaneInsight;
                let $wrap = Spec::DataplaneInsight;
                $body
            }
            ResourceType::Secret => {
                type $T = $crate::pb::system::Secret;
                let $wrap = Spec::Secret;
                $body
            }
            ResourceType::GlobalSecret => {
                type $T = $crate::pb::system::Secret;
                let $wrap = Spec::GlobalSecret;
                $body
            }
            ResourceType::Zone => {
                type $T = $crate::pb::system::Zone;
                let $wrap = Spec::Zone;
                $body
            }
            ResourceType::ZoneInsight => {
                type $T = $crate::pb::system::ZoneInsight;
                let $wrap = Spec::ZoneInsight;
                $body
            }
            ResourceType::ZoneIngress => {
                type $T = $crate::pb::mesh::ZoneIngress;
                let $wrap = Spec::ZoneIngress;
                $body
            }
            ResourceType::ZoneIngressInsight => {
                type $T = $crate::pb::mesh::ZoneIngressInsight;
                let $wrap = Spec::ZoneIngressInsight;
                $body
            }
            ResourceType::Timeout => {
                type $T = $crate::pb::mesh::Timeout;
                let $wrap = Spec::Timeout;
                $body
            }
            ResourceType::Retry => {
                type $T = $crate::pb::mesh::Retry;
                let $wrap = Spec::Retry;
                $body
            }
            ResourceType::CircuitBreaker => {
                type $T = $crate::pb::mesh::CircuitBreaker;
                let $wrap = Spec::CircuitBreaker;
                $body
            }
            ResourceType::HealthCheck => {
                type $T = $crate::pb::mesh::HealthCheck;
                let $wrap = Spec::HealthCheck;
                $body
            }
            ResourceType::RateLimit => {
                type $T = $crate::pb::mesh::RateLimit;
                let $wrap = Spec::RateLimit;
                $body
            }
            ResourceType::FaultInjection => {
                type $T = $crate::pb::mesh::FaultInjection;
                let $wrap = Spec::FaultInjection;
                $body
            }
            ResourceType::TrafficPermission => {
                type $T = $crate::pb::mesh::TrafficPermission;
                let $wrap = Spec::TrafficPermission;
                $body
            }
            ResourceType::TrafficLog => {
                type $T = $crate::pb::mesh::TrafficLog;
                let $wrap = Spec::TrafficLog;
                $body
            }
            ResourceType::ProxyTemplate => {
                type $T = $crate::pb::mesh::ProxyTemplate;
                let $wrap = Spec::ProxyTemplate;
                $body
            }
        }
    };
}
pub(crate) use with_type;

impl Spec {
    pub fn resource_type(&self) -> ResourceType {
        match self {
            Spec::Mesh(_) => ResourceType::Mesh,
            Spec::MeshGateway(_) => ResourceType::MeshGateway,
            Spec::MeshGatewayRoute(_) => ResourceType::MeshGatewayRoute,
            Spec::Dataplane(_) => ResourceType::Dataplane,
            Spec::DataplaneInsight(_) => ResourceType::DataplaneInsight,
            Spec::Secret(_) => ResourceType::Secret,
            Spec::GlobalSecret(_) => ResourceType::GlobalSecret,
            Spec::Zone(_) => ResourceType::Zone,
            Spec::ZoneInsight(_) => ResourceType::ZoneInsight,
            Spec::ZoneIngress(_) => ResourceType::ZoneIngress,
            Spec::ZoneIngressInsight(_) => ResourceType::ZoneIngressInsight,
            Spec::Timeout(_) => ResourceType::Timeout,
            Spec::Retry(_) => ResourceType::Retry,
            Spec::CircuitBreaker(_) => ResourceType::CircuitBreaker,
            Spec::HealthCheck(_) => ResourceType::HealthCheck,
            Spec::RateLimit(_) => ResourceType::RateLimit,
            Spec::FaultInjection(_) => ResourceType::FaultInjection,
            Spec::TrafficPermission(_) => ResourceType::TrafficPermission,
            Spec::TrafficLog(_) => ResourceType::TrafficLog,
            Spec::ProxyTemplate(_) => ResourceType::ProxyTemplate,
        }
    }

    /// An empty spec of the given type.
    pub fn default_for(ty: ResourceType) -> Spec {
        with_type!(ty, T, wrap => wrap(T::default()))
    }

    /// The protobuf encoding. Deterministic: maps are ordered (BTreeMap).
    pub fn encode(&self) -> Vec<u8> {
        with_spec!(self, v => v.encode_to_vec())
    }

    /// Decodes the protobuf encoding of a spec of type `ty`.
    pub fn decode(ty: ResourceType, bytes: &[u8]) -> Result<Spec, prost::DecodeError> {
        with_type!(ty, T, wrap => T::decode(bytes).map(wrap))
    }

    /// The spec as a universal JSON object (camelCase names, enums by name,
    /// default values omitted).
    pub fn to_json(&self) -> serde_json::Value {
        let value = with_spec!(self, v => serde_json::to_value(v));
        // pbjson serialises into plain JSON values; failure is impossible for
        // these types, but never panic: fall back to an empty object.
        value.unwrap_or_else(|_| serde_json::Value::Object(Default::default()))
    }
}

/// Identity and labels of a resource.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Meta {
    /// Empty for global-scoped types.
    pub mesh: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Unix milliseconds, set by the store; 0 when not stored yet.
    pub creation_time: i64,
    pub modification_time: i64,
}

/// A resource: identity plus a typed spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub meta: Meta,
    pub spec: Spec,
}

impl Resource {
    pub fn new(mesh: impl Into<String>, name: impl Into<String>, spec: Spec) -> Resource {
        Resource { meta: Meta { mesh: mesh.into(), name: name.into(), ..Meta::default() }, spec }
    }

    pub fn resource_type(&self) -> ResourceType {
        self.spec.resource_type()
    }

    /// The content hash used as this resource's version on every stream:
    /// the first 16 bytes of sha256 over type, mesh, name, labels and the
    /// deterministic protobuf encoding of the spec, in hex. Stable across
    /// restarts, processes and upgrades that do not change the content.
    pub fn version(&self) -> String {
        content_version(self.resource_type(), &self.meta.mesh, &self.meta.name, &self.meta.labels, &self.spec.encode())
    }
}

/// See [`Resource::version`]; usable on already-encoded specs.
pub fn content_version(
    ty: ResourceType,
    mesh: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
    spec: &[u8],
) -> String {
    let mut h = Sha256::new();
    for part in [ty.name(), mesh, name] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.update((labels.len() as u64).to_be_bytes());
    for (k, v) in labels {
        h.update((k.len() as u64).to_be_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_be_bytes());
        h.update(v.as_bytes());
    }
    h.update((spec.len() as u64).to_be_bytes());
    h.update(spec);
    hex::encode(&h.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_round_trip() {
        for t in ResourceType::ALL {
            assert_eq!(ResourceType::from_name(t.name()), Some(t));
            assert_eq!(ResourceType::from_plural(t.plural()), Some(t));
            assert_eq!(ResourceType::parse_loose(&t.name().to_lowercase()), Some(t));
        }
        assert_eq!(ResourceType::parse_loose("dataplaneinsights"), Some(ResourceType::DataplaneInsight));
        assert_eq!(ResourceType::parse_loose("nope"), None);
        // ADVERSARY F13: kumactl's singular spelling of the hyphenated types.
        for (cli, ty) in [
            ("rate-limit", ResourceType::RateLimit),
            ("health-check", ResourceType::HealthCheck),
            ("circuit-breaker", ResourceType::CircuitBreaker),
            ("fault-injection", ResourceType::FaultInjection),
            ("traffic-permission", ResourceType::TrafficPermission),
            ("traffic-log", ResourceType::TrafficLog),
            ("global-secret", ResourceType::GlobalSecret),
        ] {
            assert_eq!(ResourceType::parse_loose(cli), Some(ty), "{cli}");
        }
    }

    #[test]
    fn incumbent_path_segments_and_aliases() {
        for (segment, ty) in [
            ("zone-insights", ResourceType::ZoneInsight),
            ("zoneinsights", ResourceType::ZoneInsight),
            ("dataplane-insights", ResourceType::DataplaneInsight),
            ("dataplaneinsights", ResourceType::DataplaneInsight),
            ("zoneingresses", ResourceType::ZoneIngress),
            ("zone-ingresses", ResourceType::ZoneIngress),
            ("global-secrets", ResourceType::GlobalSecret),
            ("globalsecrets", ResourceType::GlobalSecret),
        ] {
            assert_eq!(ResourceType::from_plural(segment), Some(ty), "{segment}");
            assert_eq!(ResourceType::parse_loose(segment), Some(ty), "{segment}");
        }
        assert_eq!(ResourceType::ZoneInsight.plural(), "zone-insights");
        assert_eq!(ResourceType::DataplaneInsight.plural(), "dataplane-insights");
        assert_eq!(ResourceType::from_plural("Zone-Insights"), None);
    }

    #[test]
    fn version_depends_on_content_only() {
        let a = Resource::new("default", "gw", Spec::default_for(ResourceType::MeshGateway));
        let mut b = a.clone();
        b.meta.creation_time = 42;
        assert_eq!(a.version(), b.version());
        b.meta.labels.insert("k".into(), "v".into());
        assert_ne!(a.version(), b.version());
        let c = Resource::new("default", "gw2", Spec::default_for(ResourceType::MeshGateway));
        assert_ne!(a.version(), c.version());
        assert_eq!(a.version().len(), 32);
    }
}
