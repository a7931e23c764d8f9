//! KDS TLS material: the operator's certificate, or a CA and server
//! certificate generated once into the data directory
//! ([`meridian_runtime::tls`], shared with the zone's xDS listener). Zones
//! verify the global with that CA (`meridian-zone run --global-ca
//! <data-dir>/kds-ca.crt`).

use std::{path::Path, path::PathBuf, sync::Arc};

use meridian_runtime::tls::Material;

/// The KDS listener's generated files: `kds-ca.crt`, `kds.crt`, `kds.key`.
pub const KDS: Material = Material { prefix: "kds", label: "KDS", flag: "--kds-tls", server_name: "meridian-global" };

/// The KDS server TLS config: from `cert`/`key` when given, else the
/// generated pair in `data_dir` (created on first start with `sans` plus
/// localhost, 127.0.0.1, ::1 and this host's name). Returns the CA path
/// when generated.
pub fn server_config(
    data_dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
    sans: &[String],
) -> anyhow::Result<(Arc<rustls::ServerConfig>, Option<PathBuf>)> {
    meridian_runtime::tls::server_config(&KDS, data_dir, cert, key, sans)
}
