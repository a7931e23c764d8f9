//! Mesh mTLS transport sockets: what an inbound listener serves and
//! requires, and what a cluster to a mesh service originates.
//!
//! The certificates are never here: both sides name the two SDS secrets of
//! the mesh ([`crate::mtls::identity_secret_name`],
//! [`crate::mtls::ca_secret_name`]), fetched over ADS; the zone adds them to
//! the proxy's configuration when the mesh has mTLS on. The shapes are the
//! incumbent's (Kuma 2.14 `pkg/xds/envoy/tls/v3/tls.go`, `sni.go`):
//!
//! ```text
//!   inbound  DownstreamTlsContext  require client cert, identity_cert:secret:<mesh>,
//!                                  combined validation: mesh_ca:secret:<mesh> + URI SAN prefix spiffe://<mesh>/
//!   cluster  UpstreamTlsContext    identity_cert:secret:<mesh>, ALPN kuma, SNI <svc>{mesh=<mesh>[,k=v]},
//!                                  combined validation: mesh_ca:secret:<mesh> + URI SAN exact spiffe://<mesh>/<svc>
//! ```

use std::collections::BTreeMap;

use envoy_types::pb::envoy::{
    config::core::v3::{
        AggregatedConfigSource, ApiVersion, ConfigSource, TransportSocket, config_source, transport_socket,
    },
    extensions::transport_sockets::tls::v3::{
        CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, SubjectAltNameMatcher,
        UpstreamTlsContext, common_tls_context, subject_alt_name_matcher,
    },
    r#type::matcher::v3::{StringMatcher, string_matcher},
};
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;

use super::{MeshSnapshot, SERVICE_TAG};
use crate::mtls::{self, Mode};

/// ALPN a mesh client offers, so a PERMISSIVE inbound tells mesh mTLS from
/// an application's own TLS (the incumbent's `kuma`).
pub const MESH_ALPN: &str = "kuma";

/// A mesh whose inbounds terminate mTLS: its name, the inbounds' mode, and
/// whether its clients originate mTLS yet (false while mTLS is being
/// turned on or off: [`crate::mtls::TlsPhase`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshTls {
    pub mesh: String,
    pub mode: Mode,
    pub clients: bool,
}

/// Mesh mTLS of the snapshot's mesh in the phase the zone serves it
/// ([`MeshSnapshot::tls_phase`], else what the Mesh asks for:
/// `mtls.enabledBackend` set); `None` when inbounds are plaintext only.
pub fn of(snapshot: &MeshSnapshot) -> Option<MeshTls> {
    let phase = snapshot.tls_phase.unwrap_or_else(|| mtls::TlsPhase::target(snapshot.mesh_spec.as_ref()));
    let mode = phase.server?;
    Some(MeshTls { mesh: snapshot.mesh.clone(), mode, clients: phase.clients })
}

/// The SPIFFE ID of a service: `spiffe://<mesh>/<service>`.
pub fn spiffe_id(mesh: &str, service: &str) -> String {
    format!("spiffe://{mesh}/{service}")
}

/// The SNI a client sends to a mesh destination: the service, then the
/// other tags with `mesh=<mesh>` added, sorted by key, in braces
/// (`backend{mesh=default}`, `backend{mesh=default,version=v1}`), as the
/// incumbent's `SNIFromTags`.
pub fn sni(mesh: &str, destination: &BTreeMap<String, String>) -> String {
    let service = destination.get(SERVICE_TAG).map(String::as_str).unwrap_or("");
    let mut extra: BTreeMap<&str, &str> =
        destination.iter().filter(|(k, _)| k.as_str() != SERVICE_TAG).map(|(k, v)| (k.as_str(), v.as_str())).collect();
    extra.insert("mesh", mesh);
    let tags: Vec<String> = extra.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{service}{{{}}}", tags.join(","))
}

/// A reference to SDS secret `name`, fetched over the ADS stream.
fn sds(name: String) -> SdsSecretConfig {
    SdsSecretConfig {
        name,
        sds_config: Some(ConfigSource {
            config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource::default())),
            resource_api_version: ApiVersion::V3 as i32,
            ..Default::default()
        }),
    }
}

/// Identity certificate plus the mesh CA, checking the peer's URI SAN with `san`.
fn common(mesh: &str, san: string_matcher::MatchPattern, alpn: Vec<String>) -> CommonTlsContext {
    CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds(mtls::identity_secret_name(mesh))],
        validation_context_type: Some(common_tls_context::ValidationContextType::CombinedValidationContext(
            common_tls_context::CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                        san_type: subject_alt_name_matcher::SanType::Uri as i32,
                        matcher: Some(StringMatcher { match_pattern: Some(san), ..Default::default() }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds(mtls::ca_secret_name(mesh))),
                ..Default::default()
            },
        )),
        alpn_protocols: alpn,
        ..Default::default()
    }
}

/// What an inbound listener of an mTLS mesh serves: the proxy's identity,
/// and a client certificate required, issued by the mesh CA to some
/// service of the mesh (URI SAN prefix `spiffe://<mesh>/`).
pub fn inbound_socket(mesh: &str) -> TransportSocket {
    let ctx = DownstreamTlsContext {
        common_tls_context: Some(common(
            mesh,
            string_matcher::MatchPattern::Prefix(format!("spiffe://{mesh}/")),
            Vec::new(),
        )),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(ctx))),
    }
}

/// What a cluster to `destination` of an mTLS mesh originates: the proxy's
/// identity, ALPN `kuma`, the destination's SNI, and the server must prove
/// it is the service (URI SAN exactly `spiffe://<mesh>/<service>`; for a
/// `*` destination, any service of the mesh).
pub fn upstream_socket(mesh: &str, destination: &BTreeMap<String, String>) -> TransportSocket {
    let service = destination.get(SERVICE_TAG).map(String::as_str).unwrap_or("*");
    let san = if service == "*" {
        string_matcher::MatchPattern::Prefix(format!("spiffe://{mesh}/"))
    } else {
        string_matcher::MatchPattern::Exact(spiffe_id(mesh, service))
    };
    let ctx = UpstreamTlsContext {
        common_tls_context: Some(common(mesh, san, vec![MESH_ALPN.to_string()])),
        sni: sni(mesh, destination),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(ctx))),
    }
}

/// The SDS secret trusting every mTLS mesh's CA, which a cross-mesh
/// gateway listener verifies clients against (the incumbent's
/// `mesh_ca:secret:all`).
pub const ALL_MESHES_CA: &str = "mesh_ca:secret:all";

/// What a `crossMesh` gateway listener of mesh `mesh` serves: the
/// gateway's identity; a client certificate required, issued by any mTLS
/// mesh's CA ([`ALL_MESHES_CA`]), with a URI SAN of some mesh service
/// (`spiffe://`; the incumbent checks no SAN at all).
pub fn cross_mesh_socket(mesh: &str) -> TransportSocket {
    let ctx = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds(mtls::identity_secret_name(mesh))],
            validation_context_type: Some(common_tls_context::ValidationContextType::CombinedValidationContext(
                common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                            san_type: subject_alt_name_matcher::SanType::Uri as i32,
                            matcher: Some(StringMatcher {
                                match_pattern: Some(string_matcher::MatchPattern::Prefix("spiffe://".into())),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(sds(ALL_MESHES_CA.to_string())),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(ctx))),
    }
}

/// What a proxy of mesh `own` originates to a cross-mesh gateway of mesh
/// `target` (`destination` without `kuma.io/mesh`): its own identity, the
/// target mesh's CA (`mesh_ca:secret:<target>`), the gateway's identity
/// exactly (`spiffe://<target>/<service>`), SNI `<service>{mesh=<target>,...}`.
pub fn cross_mesh_upstream_socket(own: &str, target: &str, destination: &BTreeMap<String, String>) -> TransportSocket {
    let service = destination.get(SERVICE_TAG).map(String::as_str).unwrap_or("*");
    let mut common =
        common(target, string_matcher::MatchPattern::Exact(spiffe_id(target, service)), vec![MESH_ALPN.to_string()]);
    common.tls_certificate_sds_secret_configs = vec![sds(mtls::identity_secret_name(own))];
    let ctx =
        UpstreamTlsContext { common_tls_context: Some(common), sni: sni(target, destination), ..Default::default() };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(ctx))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn sni_is_the_incumbents() {
        assert_eq!(sni("default", &tags(&[(SERVICE_TAG, "backend")])), "backend{mesh=default}");
        assert_eq!(
            sni("default", &tags(&[(SERVICE_TAG, "backend"), ("version", "v1")])),
            "backend{mesh=default,version=v1}"
        );
        assert_eq!(
            sni("m", &tags(&[(SERVICE_TAG, "backend"), ("app", "x"), ("zone", "z")])),
            "backend{app=x,mesh=m,zone=z}"
        );
    }

    #[test]
    fn upstream_checks_the_exact_service_identity() {
        use prost::Message;
        let s = upstream_socket("default", &tags(&[(SERVICE_TAG, "backend")]));
        let Some(transport_socket::ConfigType::TypedConfig(any)) = s.config_type else { panic!("typed") };
        let ctx = UpstreamTlsContext::decode(any.value.as_slice()).expect("decode");
        let common = ctx.common_tls_context.expect("common");
        assert_eq!(common.alpn_protocols, ["kuma"]);
        assert_eq!(common.tls_certificate_sds_secret_configs[0].name, "identity_cert:secret:default");
        let Some(common_tls_context::ValidationContextType::CombinedValidationContext(c)) =
            common.validation_context_type
        else {
            panic!("combined validation context")
        };
        assert_eq!(c.validation_context_sds_secret_config.expect("sds").name, "mesh_ca:secret:default");
        let san = &c.default_validation_context.expect("default").match_typed_subject_alt_names[0];
        assert_eq!(
            san.matcher.as_ref().and_then(|m| m.match_pattern.clone()),
            Some(string_matcher::MatchPattern::Exact("spiffe://default/backend".into()))
        );
    }
}
