//! Server TLS material for the control plane's gRPC listeners (the
//! global's KDS port, a zone's xDS port): the operator's certificate and
//! key, or a private CA and a serving certificate generated once into the
//! data directory.
//!
//! ```text
//!   --<x>-tls-cert/--<x>-tls-key given ──▶ read them
//!   otherwise ──▶ <data-dir>/<prefix>-ca.crt, <prefix>.crt, <prefix>.key (0600)
//!                 generated on first start, reused afterwards
//! ```
//!
//! Clients trust the generated CA: zones `--global-ca <data-dir>/kds-ca.crt`,
//! Envoy bootstraps `--ca-cert <data-dir>/xds-ca.crt`.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// What a listener's generated material is called.
#[derive(Debug, Clone, Copy)]
pub struct Material {
    /// File name prefix in the data directory (`kds`, `xds`).
    pub prefix: &'static str,
    /// What the listener serves, for messages and the certificates' common
    /// names (`KDS`, `xDS`).
    pub label: &'static str,
    /// The flag prefix for messages (`--kds-tls`, `--xds-tls`).
    pub flag: &'static str,
    /// Common name of the serving certificate (`meridian-global`, `meridian-zone`).
    pub server_name: &'static str,
}

/// Where the generated files live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedPaths {
    /// The CA certificate (PEM) clients trust.
    pub ca: PathBuf,
    /// The serving certificate (PEM), signed by the CA.
    pub cert: PathBuf,
    /// The serving certificate's private key (PEM, PKCS#8, mode 0600).
    pub key: PathBuf,
}

impl GeneratedPaths {
    /// `<dir>/<prefix>-ca.crt`, `<dir>/<prefix>.crt`, `<dir>/<prefix>.key`.
    pub fn in_dir(dir: &Path, prefix: &str) -> GeneratedPaths {
        GeneratedPaths {
            ca: dir.join(format!("{prefix}-ca.crt")),
            cert: dir.join(format!("{prefix}.crt")),
            key: dir.join(format!("{prefix}.key")),
        }
    }
}

/// The server TLS config (ring, TLS 1.2+, ALPN `h2` only: gRPC): from
/// `cert`/`key` when given, else the generated pair in `data_dir` (created
/// on first start with `sans` plus localhost, 127.0.0.1, ::1 and this
/// host's name). Returns the CA path when the material is generated.
///
/// Errors: only one of `cert`/`key`, unreadable files, a key that does not
/// match, or a failure writing the generated files.
pub fn server_config(
    what: &Material,
    data_dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
    sans: &[String],
) -> anyhow::Result<(Arc<rustls::ServerConfig>, Option<PathBuf>)> {
    let (cert_pem, key_pem, ca) = match (cert, key) {
        (Some(c), Some(k)) => (
            std::fs::read(c).with_context(|| format!("cannot read {} certificate {}", what.label, c.display()))?,
            std::fs::read(k).with_context(|| format!("cannot read {} key {}", what.label, k.display()))?,
            None,
        ),
        (None, None) => {
            let paths = ensure_generated(what, data_dir, sans)?;
            (std::fs::read(&paths.cert)?, std::fs::read(&paths.key)?, Some(paths.ca))
        }
        _ => anyhow::bail!("{}-cert and {}-key go together", what.flag, what.flag),
    };
    let config = meridian_rest::server::tls_config_from_pem(&cert_pem, &key_pem, &[b"h2"])
        .with_context(|| format!("{} certificate and key", what.label))?;
    Ok((config, ca))
}

/// The generated files in `data_dir`, created when one of them is missing.
pub fn ensure_generated(what: &Material, data_dir: &Path, sans: &[String]) -> anyhow::Result<GeneratedPaths> {
    let paths = GeneratedPaths::in_dir(data_dir, what.prefix);
    if !(paths.ca.exists() && paths.cert.exists() && paths.key.exists()) {
        generate(what, &paths, sans)?;
    }
    Ok(paths)
}

/// The serving certificate's subject alternative names: localhost,
/// 127.0.0.1, ::1, this host's name and `extra`, sorted, each once.
pub fn subject_alt_names(extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            names.push(h.to_string());
        }
    }
    names.extend(extra.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()));
    names.sort();
    names.dedup();
    names
}

fn generate(what: &Material, paths: &GeneratedPaths, sans: &[String]) -> anyhow::Result<()> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, format!("Meridian {} CA", what.label));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let names = subject_alt_names(sans);
    let mut params = CertificateParams::new(names.clone())
        .with_context(|| format!("{}-san: invalid name among {names:?}", what.flag))?;
    params.distinguished_name.push(DnType::CommonName, what.server_name);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;

    if let Some(dir) = paths.ca.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&paths.ca, ca.pem()).with_context(|| format!("cannot write {}", paths.ca.display()))?;
    std::fs::write(&paths.cert, cert.pem()).with_context(|| format!("cannot write {}", paths.cert.display()))?;
    write_private(&paths.key, key.serialize_pem().as_bytes())
        .with_context(|| format!("cannot write {}", paths.key.display()))?;
    tracing::info!(ca = %paths.ca.display(), names = ?names, "generated the {} TLS CA and certificate", what.label);
    Ok(())
}

/// Writes `data` to `path` readable by its owner only (0600), never
/// briefly readable by others: the file is created with that mode.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt, os::unix::fs::PermissionsExt};
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    // An existing file keeps its mode through open(): set it too.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(data)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use rustls::client::danger::ServerCertVerifier;
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};

    use super::*;

    const XDS: Material = Material { prefix: "xds", label: "xDS", flag: "--xds-tls", server_name: "meridian-zone" };

    #[test]
    fn generated_material_is_private_reused_and_verifies_for_its_names() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tmp");
        let sans = vec!["zone-1.example.com".to_string(), "10.1.2.3".to_string()];
        let (_, ca) = server_config(&XDS, dir.path(), None, None, &sans).expect("generate");
        let paths = GeneratedPaths::in_dir(dir.path(), "xds");
        assert_eq!(ca.as_deref(), Some(paths.ca.as_path()));
        let mode = std::fs::metadata(&paths.key).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the private key is readable by its owner only");

        // A second start reuses the files (clients keep trusting the CA).
        let before = std::fs::read(&paths.ca).expect("ca");
        server_config(&XDS, dir.path(), None, None, &sans).expect("reuse");
        assert_eq!(std::fs::read(&paths.ca).expect("ca"), before);

        // The serving certificate verifies against the CA for every SAN,
        // and not for another name.
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&paths.ca).expect("ca pem") {
            roots.add(c.expect("ca cert")).expect("add root");
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots)).build().expect("verifier");
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&paths.cert).expect("cert pem").map(|c| c.expect("cert")).collect();
        for name in ["localhost", "127.0.0.1", "zone-1.example.com", "10.1.2.3"] {
            let sn = ServerName::try_from(name.to_string()).expect("name");
            verifier.verify_server_cert(&chain[0], &chain[1..], &sn, &[], UnixTime::now()).unwrap_or_else(|e| {
                panic!("{name}: {e}");
            });
        }
        let other = ServerName::try_from("evil.example.com".to_string()).expect("name");
        assert!(verifier.verify_server_cert(&chain[0], &chain[1..], &other, &[], UnixTime::now()).is_err());
    }

    #[test]
    fn operator_material_needs_both_files_and_a_matching_key() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tmp");
        let cert = dir.path().join("c.pem");
        let err = server_config(&XDS, dir.path(), Some(&cert), None, &[]).expect_err("half");
        assert!(err.to_string().contains("--xds-tls-cert and --xds-tls-key go together"), "{err}");
        // A certificate with another key: refused, nothing generated.
        let other = dir.path().join("other");
        let paths = ensure_generated(&XDS, &other, &[]).expect("generate");
        let stray = KeyPair::generate().expect("key");
        let key = dir.path().join("k.pem");
        std::fs::write(&key, stray.serialize_pem()).expect("write");
        let err = server_config(&XDS, dir.path(), Some(&paths.cert), Some(&key), &[]).expect_err("mismatch");
        assert!(format!("{err:#}").contains("do not match"), "{err:#}");
        assert!(!GeneratedPaths::in_dir(dir.path(), "xds").ca.exists());
    }
}
