//! Mesh mTLS at the zone: the names of the two SDS secrets every proxy of an
//! mTLS mesh receives, and whether (and how) a mesh has mTLS on.
//!
//! ```text
//!   Mesh.mtls.enabledBackend set
//!        │
//!        ├─▶ SDS "identity_cert:secret:<mesh>"  tls_certificate: leaf + intermediate, key
//!        └─▶ SDS "mesh_ca:secret:<mesh>"        validation_context.trusted_ca: the root CA of every
//!                                               builtin backend listed (enabled first)
//! ```
//!
//! Trusting every listed backend's root is what lets a mesh change its CA
//! with traffic flowing: add the new backend (every proxy now trusts both
//! roots), switch `enabledBackend` to it (identities are re-issued from its
//! chain while the old ones stay valid), remove the old backend (its root
//! stops being trusted).
//!
//! The names are the incumbent's (Kuma's `pkg/xds/generator/secrets`, legacy
//! naming), so listeners and clusters of every generator refer to them the
//! same way; they do not depend on the certificate, so a rotation changes only
//! the Secret's content (and version), never a listener.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::SystemTime,
};

use envoy_types::pb::envoy::{
    config::core::v3::{DataSource, data_source},
    extensions::transport_sockets::tls::v3::{CertificateValidationContext, Secret, TlsCertificate, secret},
};
use meridian_core::ca::{self, CertKey, ZoneCa};
use meridian_core::mesh_ca::zone_ca_secret_name;
use meridian_sync_proto::{
    pb::mesh::{Mesh, certificate_authority_backend},
    validate,
};

/// How inbound listeners of an mTLS mesh treat plaintext, as the incumbent's
/// `CertificateAuthorityBackend.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Only mTLS with a mesh certificate is accepted (the default).
    Strict,
    /// mTLS and plaintext are both accepted (migration).
    Permissive,
}

/// Where a mesh stands in a switch of its mTLS, as the zone serves it: how
/// inbound listeners treat clients (`server`: `None` plaintext only) and
/// whether clusters to mesh services originate mTLS (`clients`).
///
/// One Mesh update cannot flip both ends at once without failing requests
/// (a client still dialling TLS to an inbound already plain, or plain to
/// one still STRICT), so the zone walks from one settled phase to the next
/// through [`TlsPhase::next_step`], each step taken once every proxy of the
/// mesh holds the previous one (see `crate::xds::cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TlsPhase {
    /// How inbounds treat clients: `None` plaintext only.
    pub server: Option<Mode>,
    /// Whether clusters to mesh services originate mTLS.
    pub clients: bool,
}

impl TlsPhase {
    /// The settled phase a Mesh asks for: mTLS off is plaintext at both
    /// ends; on, inbounds in the backend's mode and every client on mTLS.
    pub fn target(mesh: Option<&Mesh>) -> TlsPhase {
        match mesh.and_then(mtls_enabled) {
            None => TlsPhase { server: None, clients: false },
            Some(mode) => TlsPhase { server: Some(mode), clients: true },
        }
    }

    /// The next phase on the way from `self` to `target`, safe to serve
    /// once every proxy holds `self`: clients change sides only while
    /// inbounds accept both (PERMISSIVE), and inbounds leave PERMISSIVE
    /// only once clients are on the side they will keep.
    ///
    /// ```text
    ///   STRICT → off     (Strict, tls)  → (Permissive, tls)   → (Permissive, plain) → (off, plain)
    ///   PERMISSIVE → off (Permissive, tls) → (Permissive, plain) → (off, plain)
    ///   off → STRICT     (off, plain)   → (Permissive, plain) → (Permissive, tls)   → (Strict, tls)
    ///   STRICT ↔ PERMISSIVE: one step (clients keep mTLS)
    /// ```
    pub fn next_step(self, target: TlsPhase) -> TlsPhase {
        if self == target {
            return self;
        }
        if self.clients != target.clients {
            if self.server != Some(Mode::Permissive) {
                return TlsPhase { server: Some(Mode::Permissive), clients: self.clients };
            }
            return TlsPhase { server: Some(Mode::Permissive), clients: target.clients };
        }
        target
    }
}

/// The SDS secret holding a proxy's identity: `tls_certificate` with the
/// workload certificate chain (leaf issued by the zone's intermediate CA,
/// then that intermediate) and its private key.
pub fn identity_secret_name(mesh: &str) -> String {
    format!("identity_cert:secret:{mesh}")
}

/// The SDS secret holding what a mesh's proxies trust:
/// `validation_context.trusted_ca` = the mesh's root CA certificate (PEM).
pub fn ca_secret_name(mesh: &str) -> String {
    format!("mesh_ca:secret:{mesh}")
}

/// The mode of a mesh whose mTLS is on (`mtls.enabledBackend` names one of
/// its backends); `None` when mTLS is off.
pub fn mtls_enabled(mesh: &Mesh) -> Option<Mode> {
    let backend = enabled_backend(mesh)?;
    Some(match backend.mode() {
        certificate_authority_backend::Mode::Strict => Mode::Strict,
        certificate_authority_backend::Mode::Permissive => Mode::Permissive,
    })
}

/// The backend `mtls.enabledBackend` names, when mTLS is on.
pub fn enabled_backend(mesh: &Mesh) -> Option<&meridian_sync_proto::pb::mesh::CertificateAuthorityBackend> {
    let mtls = mesh.mtls.as_ref()?;
    if mtls.enabled_backend.is_empty() {
        return None;
    }
    mtls.backends.iter().find(|b| b.name == mtls.enabled_backend)
}

/// What the zone issued to one proxy (the identity store's entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// Chain (leaf, intermediate) and key.
    pub cert: CertKey,
    /// When the current certificate was issued.
    pub issued_at: SystemTime,
    /// The backend whose zone CA signed it.
    pub backend: String,
    /// The URI SANs it carries (a tag change makes them differ).
    pub uris: Vec<String>,
    /// The intermediate that signed it (a new zone CA re-issues).
    pub ca_cert_pem: String,
    /// How many certificates this proxy received (1 for the first).
    pub generation: u32,
    /// The root certificates (PEM, concatenated) last sent as the proxy's
    /// mesh CA: kept serving while mTLS is being turned off, when the
    /// Mesh may no longer list its backends.
    pub trusted: String,
    /// The backends whose roots are in `trusted`, the issuing one first
    /// (`DataplaneInsight.mTLS.supportedBackends`).
    pub supported: Vec<String>,
}

/// Whether `prev` no longer fits: none yet, other SANs, another backend or
/// CA, or 4/5 of its lifetime passed ([`ca::rotation_due`]).
pub fn needs_issue(prev: Option<&Issued>, backend: &str, uris: &[String], ca: &ZoneCa, now: SystemTime) -> bool {
    match prev {
        None => true,
        Some(p) => {
            p.backend != backend
                || p.uris != uris
                || p.ca_cert_pem != ca.intermediate.cert_pem
                || ca::rotation_due(p.issued_at, p.cert.not_after, now)
        }
    }
}

/// The tags a proxy's identity is made of: its gateway tags and every
/// inbound's tags (the incumbent's `Dataplane.Spec.TagSet()`).
pub fn dataplane_tags(dp: &meridian_sync_proto::pb::mesh::Dataplane) -> BTreeMap<String, BTreeSet<String>> {
    let mut tags: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let Some(n) = dp.networking.as_ref() else { return tags };
    let sets = n.gateway.iter().map(|g| &g.tags).chain(n.inbound.iter().map(|i| &i.tags));
    for set in sets {
        for (k, v) in set {
            tags.entry(k.clone()).or_default().insert(v.clone());
        }
    }
    tags
}

/// The root certificates (PEM) proxies of `mesh` trust in zone `zone`: the
/// root of every `builtin` backend listed in `mtls.backends` whose zone CA
/// Secret (`ca-builtin-intermediate-<backend>.<zone>`; `secret_data` gives a
/// Secret's bytes by name, e.g. [`crate::gateway::MeshSnapshot::secret_data`])
/// this zone holds, the enabled backend's first, without duplicates. Empty
/// with no mTLS section or no CA received yet.
pub fn trusted_roots<'a>(mesh: &Mesh, zone: &str, secret_data: impl Fn(&str) -> Option<&'a [u8]>) -> Vec<String> {
    let mut roots: Vec<String> = Vec::new();
    for (_, root) in trusted_backends(mesh, zone, secret_data) {
        if !roots.contains(&root) {
            roots.push(root);
        }
    }
    roots
}

/// The backends behind [`trusted_roots`]: each listed `builtin` backend
/// whose zone CA this zone holds, with its root certificate (PEM), the
/// enabled backend first.
pub fn trusted_backends<'a>(
    mesh: &Mesh,
    zone: &str,
    secret_data: impl Fn(&str) -> Option<&'a [u8]>,
) -> Vec<(String, String)> {
    let Some(mtls) = mesh.mtls.as_ref() else { return Vec::new() };
    let mut backends: Vec<_> = mtls.backends.iter().filter(|b| b.r#type == validate::BUILTIN).collect();
    backends.sort_by_key(|b| b.name != mtls.enabled_backend);
    backends
        .into_iter()
        .filter_map(|b| {
            let ca = secret_data(&zone_ca_secret_name(&b.name, zone)).and_then(|d| ZoneCa::from_pem(d).ok())?;
            Some((b.name.clone(), ca.root_cert_pem))
        })
        .collect()
}

/// The two SDS secrets of a proxy (see the module's diagram): its identity,
/// and `trusted` (concatenated root certificates, [`trusted_roots`]) as the
/// mesh CA.
pub fn secrets(mesh: &str, issued: &Issued, trusted: &str) -> [Secret; 2] {
    let inline = |s: &str| DataSource {
        specifier: Some(data_source::Specifier::InlineString(s.to_string())),
        ..Default::default()
    };
    [
        Secret {
            name: identity_secret_name(mesh),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: Some(inline(&issued.cert.cert_pem)),
                private_key: Some(inline(&issued.cert.key_pem)),
                ..Default::default()
            })),
        },
        Secret {
            name: ca_secret_name(mesh),
            r#type: Some(secret::Type::ValidationContext(CertificateValidationContext {
                trusted_ca: Some(inline(trusted)),
                ..Default::default()
            })),
        },
    ]
}

/// The proxy's `DataplaneInsight.mTLS` (the incumbent's fields): expiry and
/// time of the current certificate, how many were issued, by which backend,
/// and every backend whose root the proxy trusts (the issuing one first;
/// during a CA change both the old and the new).
pub fn insight(i: &Issued) -> meridian_sync_proto::pb::mesh::dataplane_insight::Mtls {
    let ts = |t: SystemTime| {
        let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        pbjson_types::Timestamp {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: d.subsec_nanos() as i32,
        }
    };
    meridian_sync_proto::pb::mesh::dataplane_insight::Mtls {
        certificate_expiration_time: Some(ts(i.cert.not_after)),
        certificate_regenerations: i.generation,
        last_certificate_regeneration: Some(ts(i.issued_at)),
        issued_backend: i.backend.clone(),
        supported_backends: if i.supported.is_empty() { vec![i.backend.clone()] } else { i.supported.clone() },
    }
}

#[cfg(test)]
mod tests {
    use super::{Mode, TlsPhase};

    const OFF: TlsPhase = TlsPhase { server: None, clients: false };
    const PERMISSIVE_PLAIN: TlsPhase = TlsPhase { server: Some(Mode::Permissive), clients: false };
    const PERMISSIVE: TlsPhase = TlsPhase { server: Some(Mode::Permissive), clients: true };
    const STRICT: TlsPhase = TlsPhase { server: Some(Mode::Strict), clients: true };

    fn walk(from: TlsPhase, to: TlsPhase) -> Vec<TlsPhase> {
        let mut out = vec![from];
        while *out.last().expect("a phase") != to {
            let next = out.last().expect("a phase").next_step(to);
            out.push(next);
            assert!(out.len() < 10, "{out:?}");
        }
        out
    }

    #[test]
    fn clients_change_sides_only_while_inbounds_accept_both() {
        assert_eq!(walk(STRICT, OFF), [STRICT, PERMISSIVE, PERMISSIVE_PLAIN, OFF]);
        assert_eq!(walk(PERMISSIVE, OFF), [PERMISSIVE, PERMISSIVE_PLAIN, OFF]);
        assert_eq!(walk(OFF, STRICT), [OFF, PERMISSIVE_PLAIN, PERMISSIVE, STRICT]);
        assert_eq!(walk(OFF, PERMISSIVE), [OFF, PERMISSIVE_PLAIN, PERMISSIVE]);
        assert_eq!(walk(STRICT, PERMISSIVE), [STRICT, PERMISSIVE]);
        assert_eq!(walk(PERMISSIVE, STRICT), [PERMISSIVE, STRICT]);
        // Turned back on half-way through turning off.
        assert_eq!(walk(PERMISSIVE_PLAIN, STRICT), [PERMISSIVE_PLAIN, PERMISSIVE, STRICT]);
        // Every phase on the way keeps clients and inbounds compatible.
        for (from, to) in [(STRICT, OFF), (OFF, STRICT), (PERMISSIVE, OFF), (PERMISSIVE_PLAIN, STRICT)] {
            for p in walk(from, to) {
                assert!(p.server != Some(Mode::Strict) || p.clients, "{p:?}: plain clients to a STRICT inbound");
                assert!(p.server.is_some() || !p.clients, "{p:?}: TLS clients to a plaintext inbound");
            }
        }
    }
}
