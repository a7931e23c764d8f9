//! `Secret`: present data; and the PEM certificate-and-key check a gateway
//! needs before it can terminate TLS with a Secret.

use std::sync::Arc;

use rustls::SignatureAlgorithm;
use rustls::crypto::ring::sign::any_supported_type;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::{FieldPath, Report, quote};
use crate::pb::system::Secret;

pub(super) fn check(r: &mut Report, spec: &Secret) {
    if spec.data.as_ref().is_none_or(|d| d.value.is_empty()) {
        r.add(&FieldPath::new("data"), "cannot be empty");
    }
}

/// Checks that `data` can serve as a TLS server certificate: PEM holding at
/// least one `CERTIFICATE` (the chain, leaf first) and exactly one RSA or
/// ECDSA private key (PKCS#1 `RSA PRIVATE KEY`, SEC1 `EC PRIVATE KEY` or
/// PKCS#8 `PRIVATE KEY`) that matches the leaf certificate.
///
/// Called when a gateway listener references a Secret (and for inline
/// certificates); the error is the message to report. The incumbent's
/// messages are kept (`missing server certificate`, `missing private key`,
/// `secret contains multiple private keys`, `unsupported PEM block "..."`,
/// `unsupported private key type ...`); the key/certificate match is ours.
pub fn tls_secret(data: &[u8]) -> Result<(), String> {
    if data.iter().all(u8::is_ascii_whitespace) {
        return Err("cannot be empty".to_owned());
    }
    unsupported_blocks(data)?;

    let mut certificates: Vec<CertificateDer<'static>> = Vec::new();
    let mut keys: Vec<PrivateKeyDer<'static>> = Vec::new();
    for section in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(data) {
        let (kind, der) = section.map_err(|e| format!("invalid PEM: {}", pem_error(&e)))?;
        match kind {
            SectionKind::Certificate => certificates.push(CertificateDer::from(der)),
            SectionKind::RsaPrivateKey => keys.push(PrivateKeyDer::Pkcs1(der.into())),
            SectionKind::EcPrivateKey => keys.push(PrivateKeyDer::Sec1(der.into())),
            SectionKind::PrivateKey => keys.push(PrivateKeyDer::Pkcs8(der.into())),
            other => return Err(format!("unsupported PEM block {other:?}")),
        }
    }
    if keys.len() > 1 {
        return Err("secret contains multiple private keys".to_owned());
    }
    if certificates.is_empty() {
        return Err("missing server certificate".to_owned());
    }
    let Some(key) = keys.pop() else {
        return Err("missing private key".to_owned());
    };

    let signer = any_supported_type(&key).map_err(|e| format!("invalid private key: {e}"))?;
    match signer.algorithm() {
        SignatureAlgorithm::RSA | SignatureAlgorithm::ECDSA => {}
        other => return Err(format!("unsupported private key type {other:?}: use an RSA or ECDSA key")),
    }
    match CertifiedKey::new(certificates, Arc::clone(&signer)).keys_match() {
        Ok(()) => Ok(()),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err("private key does not match the first certificate".to_owned())
        }
        // The key cannot tell its public half: nothing to compare.
        Err(rustls::Error::InconsistentKeys(_)) => Ok(()),
        Err(e) => Err(format!("invalid certificate: {e}")),
    }
}

/// The parser's error, with its byte strings as text.
fn pem_error(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { end_marker } => {
            format!("missing \"-----END {}-----\"", String::from_utf8_lossy(end_marker))
        }
        pem::Error::IllegalSectionStart { line } => {
            format!("malformed line {}", quote(&String::from_utf8_lossy(line)))
        }
        other => other.to_string(),
    }
}

/// The PEM parser skips blocks it does not know; the incumbent rejects them,
/// and so do we (an `ENCRYPTED PRIVATE KEY` would otherwise read as missing).
fn unsupported_blocks(data: &[u8]) -> Result<(), String> {
    const SUPPORTED: &[&str] = &["CERTIFICATE", "RSA PRIVATE KEY", "EC PRIVATE KEY", "PRIVATE KEY"];
    let text = String::from_utf8_lossy(data);
    for line in text.lines() {
        let Some(label) = line.trim().strip_prefix("-----BEGIN ").and_then(|l| l.strip_suffix("-----")) else {
            continue;
        };
        if !SUPPORTED.contains(&label) {
            let hint = if label.contains("ENCRYPTED") { ": private keys must not be encrypted" } else { "" };
            return Err(format!("unsupported PEM block {}{hint}", quote(label)));
        }
    }
    Ok(())
}
