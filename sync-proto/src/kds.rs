//! The KDS wire shape: how a resource travels between global and zones.
//!
//! - `type_url` is the bare type name (`Mesh`, `MeshGateway`, `Dataplane`).
//! - A resource's name is `<name>.<mesh>` (`<name>.` for global types),
//!   split on the last dot.
//! - The payload is a `google.protobuf.Any` of type
//!   `type.googleapis.com/kuma.mesh.v1alpha1.KumaResource` whose `spec` is an
//!   `Any` of the spec message; the version is the resource's content hash.
//! - Metadata on every call: `client-id` (the zone), `kds-version: v3`,
//!   `features`, `version`, and Meridian's `authorization: Bearer <zone token>`
//!   and `x-meridian-max-message-bytes` ([`MD_MAX_MESSAGE_BYTES`]).

use std::collections::BTreeMap;

use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::{
    Meta, Resource, ResourceType, Spec,
    pb::kds::{KumaResource, kuma_resource},
};

pub const KUMA_RESOURCE_TYPE_URL: &str = "type.googleapis.com/kuma.mesh.v1alpha1.KumaResource";

/// Metadata keys of the KDS calls.
pub const MD_CLIENT_ID: &str = "client-id";
pub const MD_KDS_VERSION: &str = "kds-version";
pub const MD_FEATURES: &str = "features";
pub const MD_VERSION: &str = "version";
pub const MD_AUTHORIZATION: &str = "authorization";
pub const KDS_VERSION: &str = "v3";
/// Meridian's own metadata: the largest message this end accepts, in
/// bytes, sent by the zone on each call and by the global in the response
/// headers. Each side then splits what it sends to the smaller of the two
/// caps ([`agreed_max_message_bytes`]); a peer that does not send it (the
/// incumbent, older Meridians) is taken to accept
/// [`DEFAULT_MAX_MESSAGE_BYTES`], gRPC's usual cap.
pub const MD_MAX_MESSAGE_BYTES: &str = "x-meridian-max-message-bytes";

/// Default cap on one KDS message (4 MiB, gRPC's default decoding limit).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// The smallest `--kds-max-message-bytes` accepted (64 KiB): below it a
/// resource's budget ([`resource_budget`]) leaves too little for real
/// resources.
pub const MIN_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// The largest room kept in each message for the envelope around the
/// resources (delta-xDS fields, nonce, type URL, per-resource framing).
const MAX_ENVELOPE_MARGIN: usize = 64 * 1024;

/// Room kept in a message of `max_message_bytes` for its envelope: a
/// quarter of it, at most 64 KiB (so 16 KiB of a 64 KiB message, 64 KiB of
/// a 4 MiB one). Never the whole message.
pub fn envelope_margin(max_message_bytes: usize) -> usize {
    (max_message_bytes / 4).min(MAX_ENVELOPE_MARGIN)
}

/// Bytes of resources one message of `max_message_bytes` may carry (what
/// the senders split on, and the largest resource a global accepts).
/// Above zero for any cap above zero.
pub fn resource_budget(max_message_bytes: usize) -> usize {
    max_message_bytes - envelope_margin(max_message_bytes)
}

/// Parses and checks a `--kds-max-message-bytes` value (clap value parser).
///
/// Errors: not a number, or below [`MIN_MAX_MESSAGE_BYTES`]; the text says
/// the minimum and why.
pub fn parse_max_message_bytes(s: &str) -> Result<usize, String> {
    let n: usize = s.trim().parse().map_err(|e| format!("not a number of bytes: {e}"))?;
    if n < MIN_MAX_MESSAGE_BYTES {
        return Err(format!(
            "must be at least {MIN_MAX_MESSAGE_BYTES} bytes (64 KiB): each message keeps room for its envelope and must still carry resources"
        ));
    }
    Ok(n)
}

/// The cap both ends of a stream keep to: the smaller of this end's and
/// the one the peer advertised in [`MD_MAX_MESSAGE_BYTES`]
/// ([`DEFAULT_MAX_MESSAGE_BYTES`] when it sent none or an unreadable value;
/// advertised values below [`MIN_MAX_MESSAGE_BYTES`] count as that).
pub fn agreed_max_message_bytes(own: usize, advertised: Option<&str>) -> usize {
    let peer = advertised
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map_or(DEFAULT_MAX_MESSAGE_BYTES, |n| n.max(MIN_MAX_MESSAGE_BYTES));
    own.min(peer)
}

/// Names the type and the resources of a response too large for the
/// agreed cap: the text of the error both ends log or send.
pub fn oversized_message(type_url: &str, resource_names: &[&str], encoded: usize, cap: usize) -> String {
    format!(
        "{type_url} message of {encoded} bytes is over the {cap}-byte KDS message cap agreed for this stream (resources: {}); raise --kds-max-message-bytes on both ends or make the resources smaller",
        resource_names.join(", ")
    )
}

/// The report of one resource withheld because it alone is over the
/// per-resource cap of a stream (`size` and `cap` in bytes as the senders
/// count them: encoded envelope, name, version, framing).
pub fn oversized_resource(type_url: &str, name: &str, size: usize, cap: usize) -> String {
    format!(
        "{type_url} resource {name:?} is {size} bytes, over the {cap}-byte per-resource budget of the KDS message cap agreed for this stream: withheld (the peer keeps what it holds; the other resources still travel); raise --kds-max-message-bytes on both ends or make the resource smaller"
    )
}

/// Bytes kept, in every size check of a resource written here, for what
/// the control plane adds as the resource travels to other zones: the
/// `kuma.io/origin`, `kuma.io/zone` and `kuma.io/display-name` labels and
/// the `<zone>.` prefix of its name at the global (names and zone names are
/// at most 253 bytes each).
pub const RELAY_ALLOWANCE: usize = 1024;

/// Size of one resource in a KDS response as the senders count it against
/// their budgets ([`resource_budget`]): its envelope as it travels (name,
/// mesh, version, every label, the spec), the wire name, the version and
/// per-resource framing. What a receiver stores and relays is checked with
/// this, labels included, so that what one zone sends can always be
/// relayed to the others.
pub fn travelling_size(
    ty: ResourceType,
    mesh: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
    version: &str,
    spec_bytes: &[u8],
) -> usize {
    let any = to_any(ty, mesh, name, labels, version, spec_bytes.to_vec());
    any.value.len() + wire_name(mesh, name).len() + version.len() + 16
}

/// Types the global streams to zones, in apply order. Of GlobalSecrets,
/// only those [`global_secret_syncs`] names travel.
pub const GLOBAL_TO_ZONE: &[ResourceType] = &[
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
    ResourceType::ZoneIngress,
    ResourceType::GlobalSecret,
];

/// Name prefix of the GlobalSecrets holding the public halves of the
/// Dataplane-token signing keys (`<prefix><serial>`): zones verify with them.
pub const DATAPLANE_TOKEN_PUBLIC_KEY_PREFIX: &str = "dataplane-token-signing-public-key-";
/// Name prefix of the GlobalSecrets listing revoked Dataplane-token ids
/// (`<prefix><mesh>`; the name the incumbent's code reads).
pub const DATAPLANE_TOKEN_REVOCATIONS_PREFIX: &str = "dataplane-token-revocations-";

/// Whether the GlobalSecret `name` travels global→zone: only the public
/// Dataplane-token keys and the Dataplane-token revocation lists. Private
/// keys, zone-token keys and lists, and users' own GlobalSecrets stay at the
/// global. (A Kuma zone stores what it receives as GlobalSecrets and reads
/// `dataplane-token-revocations-<mesh>` itself; the keys it ignores.)
pub fn global_secret_syncs(name: &str) -> bool {
    [DATAPLANE_TOKEN_PUBLIC_KEY_PREFIX, DATAPLANE_TOKEN_REVOCATIONS_PREFIX]
        .iter()
        .any(|p| name.strip_prefix(p).is_some_and(|rest| !rest.is_empty()))
}

/// Types zones stream to the global.
pub const ZONE_TO_GLOBAL: &[ResourceType] = &[
    ResourceType::Dataplane,
    ResourceType::DataplaneInsight,
    ResourceType::ZoneIngress,
    ResourceType::ZoneIngressInsight,
];

/// Zone names are DNS labels: they prefix zone resources' stored names on
/// the global (`<zone>.<name>`), so they must not contain dots.
pub fn check_zone_name(zone: &str) -> Result<(), String> {
    let ok = !zone.is_empty()
        && zone.len() <= 63
        && zone.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !zone.starts_with('-')
        && !zone.ends_with('-');
    if ok { Ok(()) } else { Err(format!("zone name {zone:?} must be 1-63 lower-case letters, digits and '-'")) }
}

/// The alphabet of the suffix Kuma's `hash.HashedName` appends: the hex of an
/// FNV-64a hash mapped through Kubernetes' `rand.SafeEncodeString`.
const KUMA_HASH_ALPHABET: &str = "bcdfghjklmnpqrstvwxz2456789";
/// Length of that suffix (8 bytes as 16 hex digits, re-encoded one for one).
const KUMA_HASH_LEN: usize = 16;

/// Whether `name` carries the suffix a Kuma zone adds to the resources it
/// syncs up (`<user's name>-<16 characters>`, Kuma's `hash.HashedName` over
/// mesh, name and zone; the user's name travels in `kuma.io/display-name`).
/// Such a name is already unique per zone, so the global stores it as is,
/// as the incumbent does.
pub fn is_kuma_hashed_name(name: &str) -> bool {
    let Some((base, suffix)) = name.rsplit_once('-') else { return false };
    !base.is_empty() && suffix.len() == KUMA_HASH_LEN && suffix.chars().all(|c| KUMA_HASH_ALPHABET.contains(c))
}

/// `<name>.<mesh>`, or `<name>.` for global types.
pub fn wire_name(mesh: &str, name: &str) -> String {
    format!("{name}.{mesh}")
}

/// Splits a wire name on its last dot into `(name, mesh)`.
pub fn split_wire_name(wire: &str) -> Option<(&str, &str)> {
    let (name, mesh) = wire.rsplit_once('.')?;
    if name.is_empty() { None } else { Some((name, mesh)) }
}

/// Wraps a resource in the KDS envelope.
pub fn to_any(
    ty: ResourceType,
    mesh: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
    version: &str,
    spec_bytes: Vec<u8>,
) -> Any {
    let env = KumaResource {
        meta: Some(kuma_resource::Meta {
            name: name.to_string(),
            mesh: mesh.to_string(),
            version: version.to_string(),
            labels: labels.clone(),
        }),
        spec: Some(Any { type_url: ty.type_url(), value: spec_bytes }),
        status: None,
    };
    Any { type_url: KUMA_RESOURCE_TYPE_URL.to_string(), value: env.encode_to_vec() }
}

/// A resource read off the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct WireResource {
    pub resource: Resource,
    pub version: String,
    /// The spec's protobuf bytes, as received.
    pub spec_bytes: Vec<u8>,
}

/// Why a received resource is refused; the text is the NACK reason for
/// that resource alone, prefixed with its wire name.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReceiveError {
    #[error("{wire}: unexpected payload type {type_url:?}")]
    PayloadType { wire: String, type_url: String },
    #[error("{wire}: {source}")]
    Envelope { wire: String, source: prost::DecodeError },
    #[error("{wire}: no spec")]
    NoSpec { wire: String },
    #[error("{wire}: spec type {got:?} is not {want}")]
    SpecType { wire: String, got: String, want: String },
    #[error("{wire}: meta name {meta:?} does not match the resource name")]
    NameMismatch { wire: String, meta: String },
    #[error("{wire}: spec does not decode: {source}")]
    Spec { wire: String, source: prost::DecodeError },
    #[error("{wire}: {error}")]
    Invalid { wire: String, error: crate::validate::ValidationError },
}

/// Opens the KDS envelope of a `ty` resource.
pub fn from_any(ty: ResourceType, wire: &str, version: &str, any: &Any) -> Result<WireResource, ReceiveError> {
    let w = || wire.to_string();
    if any.type_url != KUMA_RESOURCE_TYPE_URL {
        return Err(ReceiveError::PayloadType { wire: w(), type_url: any.type_url.clone() });
    }
    let env =
        KumaResource::decode(any.value.as_slice()).map_err(|source| ReceiveError::Envelope { wire: w(), source })?;
    let meta = env.meta.unwrap_or_default();
    let spec_any = env.spec.ok_or_else(|| ReceiveError::NoSpec { wire: w() })?;
    if spec_any.type_url != ty.type_url() {
        return Err(ReceiveError::SpecType { wire: w(), got: spec_any.type_url, want: ty.type_url() });
    }
    let (name, mesh) = match split_wire_name(wire) {
        Some((n, m)) => (n.to_string(), m.to_string()),
        None => (meta.name.clone(), meta.mesh.clone()),
    };
    if !meta.name.is_empty() && meta.name != name {
        return Err(ReceiveError::NameMismatch { wire: w(), meta: meta.name });
    }
    let spec = Spec::decode(ty, &spec_any.value).map_err(|source| ReceiveError::Spec { wire: w(), source })?;
    let version = if version.is_empty() { meta.version } else { version.to_string() };
    Ok(WireResource {
        resource: Resource { meta: Meta { mesh, name, labels: meta.labels, ..Meta::default() }, spec },
        version,
        spec_bytes: spec_any.value,
    })
}

/// Opens and checks one received resource: the envelope, its identity and
/// the spec's rules. The error is the NACK reason for this resource alone.
pub fn receive(ty: ResourceType, wire: &str, version: &str, any: &Any) -> Result<WireResource, ReceiveError> {
    let w = from_any(ty, wire, version, any)?;
    let r = &w.resource;
    let mut violations = crate::universal::meta_violations(ty, &r.meta.mesh, &r.meta.name);
    if let Err(e) = crate::validate::resource(r) {
        violations.extend(e.violations);
    }
    if violations.is_empty() {
        Ok(w)
    } else {
        Err(ReceiveError::Invalid { wire: wire.to_string(), error: crate::validate::ValidationError { violations } })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kuma_hashed_names_are_recognised() {
        assert!(is_kuma_hashed_name("gateway-instance-1-bcdd994zxbvwfv24"));
        assert!(is_kuma_hashed_name("dp-zzzzzzzzzzzzzzzz"));
        // Too short, a character outside the alphabet (a vowel, 'y', '0'-'1', '3'), no base.
        assert!(!is_kuma_hashed_name("gateway-instance-1"));
        assert!(!is_kuma_hashed_name("dp-bcdd994zxbvwfv2"));
        assert!(!is_kuma_hashed_name("dp-bcdd994zxbvwfva"));
        assert!(!is_kuma_hashed_name("dp-bcdd994zxbvwfv21"));
        assert!(!is_kuma_hashed_name("-bcdd994zxbvwfv24"));
        assert!(!is_kuma_hashed_name("bcdd994zxbvwfv24"));
    }

    #[test]
    fn names_split_on_last_dot() {
        assert_eq!(split_wire_name("gw.default"), Some(("gw", "default")));
        assert_eq!(split_wire_name("zone-1.dp.v2.default"), Some(("zone-1.dp.v2", "default")));
        assert_eq!(split_wire_name("default."), Some(("default", "")));
        assert_eq!(split_wire_name("nodot"), None);
        assert_eq!(wire_name("", "default"), "default.");
    }

    #[test]
    fn envelope_round_trips() {
        let spec = Spec::default_for(ResourceType::MeshGateway);
        let mut labels = BTreeMap::new();
        labels.insert("kuma.io/origin".to_string(), "global".to_string());
        let any = to_any(ResourceType::MeshGateway, "default", "gw", &labels, "v1", spec.encode());
        let w = from_any(ResourceType::MeshGateway, "gw.default", "v1", &any).expect("decodes");
        assert_eq!(w.resource.meta.name, "gw");
        assert_eq!(w.resource.meta.mesh, "default");
        assert_eq!(w.resource.meta.labels, labels);
        assert_eq!(w.version, "v1");
        assert!(matches!(from_any(ResourceType::Mesh, "gw.default", "v1", &any), Err(ReceiveError::SpecType { .. })));
        let garbage = Any { type_url: KUMA_RESOURCE_TYPE_URL.into(), value: vec![0xff, 0xff] };
        assert!(from_any(ResourceType::MeshGateway, "x.default", "v", &garbage).is_err());
    }
}

#[cfg(test)]
mod cap_tests {
    use super::*;

    #[test]
    fn budgets_never_reach_zero_and_caps_split_to_the_smaller() {
        assert_eq!(resource_budget(64 * 1024), 48 * 1024);
        assert_eq!(resource_budget(DEFAULT_MAX_MESSAGE_BYTES), DEFAULT_MAX_MESSAGE_BYTES - 64 * 1024);
        assert!(resource_budget(1) > 0);
        assert!(parse_max_message_bytes("65535").expect_err("below the minimum").contains("at least 65536"));
        assert_eq!(parse_max_message_bytes("65536"), Ok(65536));
        assert_eq!(agreed_max_message_bytes(4 << 20, Some("65536")), 65536);
        assert_eq!(agreed_max_message_bytes(65536, Some("4194304")), 65536);
        assert_eq!(agreed_max_message_bytes(8 << 20, None), DEFAULT_MAX_MESSAGE_BYTES);
        assert_eq!(agreed_max_message_bytes(8 << 20, Some("12")), MIN_MAX_MESSAGE_BYTES);
    }
}

/// Prefix of the write stamp a Meridian global puts in a global→zone
/// response's `system_version_info` (a field delta xDS leaves to the server,
/// "for debugging"; Kuma zones ignore it): `written-ms=<unix ms>`, the
/// newest store modification time among the resources the response
/// carries. A zone observes `meridian_kds_write_to_apply_seconds` from it.
pub const WRITE_STAMP_PREFIX: &str = "written-ms=";

/// The write stamp for `millis` (unix milliseconds).
pub fn write_stamp(millis: i64) -> String {
    format!("{WRITE_STAMP_PREFIX}{millis}")
}

/// The unix milliseconds of a write stamp; `None` for anything else
/// (responses of older globals, or of Kuma's).
pub fn parse_write_stamp(system_version_info: &str) -> Option<i64> {
    system_version_info.strip_prefix(WRITE_STAMP_PREFIX)?.parse().ok()
}
