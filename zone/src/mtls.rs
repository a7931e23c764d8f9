//! Mesh mTLS at the zone: the names of the two SDS secrets every proxy of an
//! mTLS mesh receives, and whether (and how) a mesh has mTLS on.
//!
//! ```text
//!   Mesh.mtls.enabledBackend set
//!        │
//!        ├─▶ SDS "identity_cert:secret:<mesh>"  tls_certificate: leaf + intermediate, key
//!        └─▶ SDS "mesh_ca:secret:<mesh>"        validation_context.trusted_ca: the mesh root CA
//! ```
//!
//! The names are the incumbent's (Kuma's `pkg/xds/generator/secrets`, legacy
//! naming), so listeners and clusters of every generator refer to them the
//! same way; they do not depend on the certificate, so a rotation changes only
//! the Secret's content (and version), never a listener.

use meridian_sync_proto::pb::mesh::{Mesh, certificate_authority_backend};

/// How inbound listeners of an mTLS mesh treat plaintext, as the incumbent's
/// `CertificateAuthorityBackend.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Only mTLS with a mesh certificate is accepted (the default).
    Strict,
    /// mTLS and plaintext are both accepted (migration).
    Permissive,
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
