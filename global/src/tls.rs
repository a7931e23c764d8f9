//! KDS TLS material: the operator's certificate, or a CA and server
//! certificate generated once into the data directory. Zones verify the
//! global with that CA (`meridian-zone run --global-ca <data-dir>/kds-ca.crt`).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// Where the generated files live.
pub struct GeneratedPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl GeneratedPaths {
    pub fn in_dir(dir: &Path) -> GeneratedPaths {
        GeneratedPaths { ca: dir.join("kds-ca.crt"), cert: dir.join("kds.crt"), key: dir.join("kds.key") }
    }
}

/// The server TLS config: from `cert`/`key` when given, else the generated
/// pair in `data_dir` (created on first start with `sans` plus localhost,
/// 127.0.0.1, ::1 and this host's name). Returns the CA path when generated.
pub fn server_config(
    data_dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
    sans: &[String],
) -> anyhow::Result<(Arc<rustls::ServerConfig>, Option<PathBuf>)> {
    let (cert_pem, key_pem, ca) = match (cert, key) {
        (Some(c), Some(k)) => (
            std::fs::read(c).with_context(|| format!("cannot read KDS certificate {}", c.display()))?,
            std::fs::read(k).with_context(|| format!("cannot read KDS key {}", k.display()))?,
            None,
        ),
        (None, None) => {
            let paths = GeneratedPaths::in_dir(data_dir);
            if !(paths.ca.exists() && paths.cert.exists() && paths.key.exists()) {
                generate(&paths, sans)?;
            }
            (std::fs::read(&paths.cert)?, std::fs::read(&paths.key)?, Some(paths.ca))
        }
        _ => anyhow::bail!("--kds-tls-cert and --kds-tls-key go together"),
    };
    let config =
        meridian_rest::server::tls_config_from_pem(&cert_pem, &key_pem, &[b"h2"]).context("KDS certificate and key")?;
    Ok((config, ca))
}

fn generate(paths: &GeneratedPaths, sans: &[String]) -> anyhow::Result<()> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "Meridian KDS CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        names.push(h.trim().to_string());
    }
    names.extend(sans.iter().cloned());
    names.sort();
    names.dedup();
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, "meridian-global");
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;

    if let Some(dir) = paths.ca.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&paths.ca, ca.pem())?;
    std::fs::write(&paths.cert, cert.pem())?;
    write_private(&paths.key, key.serialize_pem().as_bytes())?;
    tracing::info!(ca = %paths.ca.display(), "generated KDS TLS certificate; give zones --global-ca with this CA");
    Ok(())
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, data)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}
