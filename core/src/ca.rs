//! The builtin mesh CA: root, per-zone intermediate and workload (identity)
//! certificates, as pure functions of their inputs (the caller gives the
//! time; keys are fresh ECDSA P-256 from `ring`, where the incumbent uses
//! RSA-2048: `RSAbits` in the backend's `conf` is accepted and ignored).
//!
//! ```text
//!   root CA (global only; key never leaves it)      O=Meridian OU=Mesh CN=<mesh>, URI spiffe://<mesh>
//!     └─ intermediate CA per zone (pathlen 0)       O=Meridian OU=Zone <zone> CN=<mesh>, URI spiffe://<mesh>
//!          └─ identity certificate per proxy         URIs spiffe://<mesh>/<svc>..., kuma://<tag>/<value>...
//! ```
//!
//! Where the incumbent (Kuma `pkg/plugins/ca/builtin`, `pkg/core/ca/issuer`)
//! signs workload certificates with the root itself, synced with its key to
//! every zone, Meridian puts an intermediate between them: a zone's store
//! holds only its own intermediate's key.
//!
//! What a zone receives is one PEM bundle ([`ZoneCa::to_pem`]): the
//! intermediate certificate, the root certificate, the intermediate key.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, SystemTime},
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType, SerialNumber,
};
use rustls_pki_types::pem::{PemObject, SectionKind};

/// Lifetime of a root CA when the backend's `conf.caCert.expiration` is not
/// set (the incumbent's 10 years).
pub const DEFAULT_ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of a zone's intermediate CA: one year, re-issued at 4/5 of it.
pub const INTERMEDIATE_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Lifetime of an identity certificate when `dpCert.rotation.expiration` is
/// not set (the incumbent's 24 h).
pub const DEFAULT_IDENTITY_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How far in the past `NotBefore` is put, for clocks a little behind (the
/// incumbent's 10 s).
pub const BACKDATE: Duration = Duration::from_secs(10);

/// The latest `NotAfter` a certificate can carry: 9999-12-31T23:59:59Z, the
/// end of X.509's GeneralizedTime (RFC 5280 4.1.2.5: "no well-defined
/// expiration date"), and the end of the date type `rcgen` converts into
/// (it panics past it). Lifetimes reaching further are cut to end here.
pub const LATEST_NOT_AFTER_UNIX_SECS: u64 = 253_402_300_799;

/// `lifetime` cut so that `from + lifetime` is not past
/// [`LATEST_NOT_AFTER_UNIX_SECS`] (a Mesh may ask for `100000y`).
pub fn clamp_lifetime(from: SystemTime, lifetime: Duration) -> Duration {
    let latest = SystemTime::UNIX_EPOCH + Duration::from_secs(LATEST_NOT_AFTER_UNIX_SECS);
    lifetime.min(latest.duration_since(from).unwrap_or_default())
}

/// Why a certificate could not be issued or a CA read back.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid CA material: {0}")]
    Invalid(String),
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
    /// `NotAfter`.
    pub not_after: SystemTime,
}

/// What a zone needs to issue identities: its intermediate CA (with key)
/// and the mesh's root certificate (no key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneCa {
    pub intermediate: CertKey,
    pub root_cert_pem: String,
}

fn ca_params(mesh: &str, unit: &str, not_before: SystemTime, lifetime: Duration) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::OrganizationName, "Meridian");
    p.distinguished_name.push(DnType::OrganizationalUnitName, unit);
    p.distinguished_name.push(DnType::CommonName, mesh);
    p.subject_alt_names = vec![SanType::URI(format!("spiffe://{mesh}").try_into()?)];
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p.not_before = (not_before - BACKDATE).into();
    p.not_after = (not_before + lifetime).into();
    p.serial_number = Some(random_serial());
    Ok(p)
}

/// A random positive 128-bit serial (the incumbent's size).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// A mesh's root CA: self-signed, subject O=Meridian OU=Mesh CN=<mesh>, URI
/// SAN `spiffe://<mesh>`, valid from `now` (less [`BACKDATE`]) for `lifetime`.
pub fn root_ca(mesh: &str, now: SystemTime, lifetime: Duration) -> Result<CertKey, CaError> {
    let lifetime = clamp_lifetime(now, lifetime);
    let mut params = ca_params(mesh, "Mesh", now, lifetime)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(CertKey { cert_pem: cert.pem(), key_pem: key.serialize_pem(), not_after: now + lifetime })
}

/// Rebuilds the issuer of a CA this module made, from its PEM. The subject
/// is parsed from the certificate, so a CA certificate made elsewhere works.
fn issuer(ca: &CertKey) -> Result<Issuer<'static, KeyPair>, CaError> {
    let key = KeyPair::from_pem(&ca.key_pem)?;
    Ok(Issuer::from_ca_cert_pem(&ca.cert_pem, key)?)
}

/// A zone's intermediate CA, signed by the mesh root: path length 0 (it
/// signs identities only), URI SAN `spiffe://<mesh>`, OU `Zone <zone>`.
/// Valid for `lifetime`, never past the root.
pub fn intermediate_ca(
    root: &CertKey,
    mesh: &str,
    zone: &str,
    now: SystemTime,
    lifetime: Duration,
) -> Result<CertKey, CaError> {
    let lifetime = clamp_lifetime(now, lifetime.min(root.not_after.duration_since(now).unwrap_or_default()));
    let mut params = ca_params(mesh, &format!("Zone {zone}"), now, lifetime)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer(root)?)?;
    Ok(CertKey { cert_pem: cert.pem(), key_pem: key.serialize_pem(), not_after: now + lifetime })
}

/// The URI SANs of a proxy's identity, in the incumbent's order
/// (`pkg/core/ca/issuer`): `spiffe://<mesh>/<svc>` for each sorted
/// `kuma.io/service` value, then `kuma://<tag>/<value>` for every tag and
/// value, sorted (the service included).
pub fn identity_uris(mesh: &str, tags: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut uris: Vec<String> =
        tags.get("kuma.io/service").into_iter().flatten().map(|svc| format!("spiffe://{mesh}/{svc}")).collect();
    for (tag, values) in tags {
        uris.extend(values.iter().map(|v| format!("kuma://{tag}/{v}")));
    }
    uris
}

/// A proxy's identity certificate: fresh key, empty subject, random serial,
/// the URI SANs of [`identity_uris`], EKU server and client auth, signed by
/// the zone's intermediate. `cert_pem` is the chain Envoy presents: the leaf,
/// then the intermediate.
pub fn identity(
    ca: &ZoneCa,
    mesh: &str,
    tags: &BTreeMap<String, BTreeSet<String>>,
    now: SystemTime,
    lifetime: Duration,
) -> Result<CertKey, CaError> {
    let lifetime = clamp_lifetime(now, lifetime.min(ca.intermediate.not_after.duration_since(now).unwrap_or_default()));
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = identity_uris(mesh, tags)
        .into_iter()
        .map(|u| Ok(SanType::URI(u.try_into()?)))
        .collect::<Result<_, rcgen::Error>>()?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + lifetime).into();
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate()?;
    let leaf = params.signed_by(&key, &issuer(&ca.intermediate)?)?;
    Ok(CertKey {
        cert_pem: format!("{}{}", leaf.pem(), ca.intermediate.cert_pem),
        key_pem: key.serialize_pem(),
        not_after: now + lifetime,
    })
}

/// Whether a certificate valid from `issued` to `expires` is due for
/// re-issue at `now`: once 4/5 of its lifetime has passed (the incumbent's
/// rule, `pkg/xds/secrets/secrets.go`), or when the clock is outside it.
pub fn rotation_due(issued: SystemTime, expires: SystemTime, now: SystemTime) -> bool {
    let Ok(lifetime) = expires.duration_since(issued) else { return true };
    match now.duration_since(issued) {
        Ok(elapsed) => elapsed >= lifetime * 4 / 5,
        Err(_) => true,
    }
}

impl ZoneCa {
    /// The bundle a zone receives: intermediate certificate, root
    /// certificate, intermediate key (PEM, in that order).
    pub fn to_pem(&self) -> String {
        format!("{}{}{}", self.intermediate.cert_pem, self.root_cert_pem, self.intermediate.key_pem)
    }

    /// Reads a bundle of [`ZoneCa::to_pem`]; `not_after` of the intermediate
    /// is taken from the certificate.
    pub fn from_pem(pem: &[u8]) -> Result<ZoneCa, CaError> {
        let mut certs = Vec::new();
        let mut key = None;
        for section in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(pem) {
            let (kind, der) = section.map_err(|e| CaError::Invalid(format!("invalid PEM: {e:?}")))?;
            match kind {
                SectionKind::Certificate => certs.push(der),
                SectionKind::PrivateKey | SectionKind::EcPrivateKey => key = Some((kind, der)),
                _ => return Err(CaError::Invalid("unexpected PEM block".into())),
            }
        }
        let [intermediate, root] = <[Vec<u8>; 2]>::try_from(certs)
            .map_err(|c| CaError::Invalid(format!("expected 2 certificates, found {}", c.len())))?;
        let (kind, key) = key.ok_or_else(|| CaError::Invalid("missing private key".into()))?;
        let pem_of = |label: &str, der: &[u8]| {
            let lf = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
            pem::encode_config(&pem::Pem::new(label, der.to_vec()), lf)
        };
        let key_label = if kind == SectionKind::EcPrivateKey { "EC PRIVATE KEY" } else { "PRIVATE KEY" };
        Ok(ZoneCa {
            intermediate: CertKey {
                not_after: not_after(&intermediate)?,
                cert_pem: pem_of("CERTIFICATE", &intermediate),
                key_pem: pem_of(key_label, &key),
            },
            root_cert_pem: pem_of("CERTIFICATE", &root),
        })
    }
}

/// `NotAfter` of a DER certificate.
pub fn not_after(der: &[u8]) -> Result<SystemTime, CaError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| CaError::Invalid(format!("invalid certificate: {e}")))?;
    let secs = cert.validity().not_after.timestamp();
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

#[cfg(test)]
mod tests;
