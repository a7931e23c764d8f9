//! Where a server keeps its state and who it is: the data directory, the
//! store, the admin token, the host name and the instance id.

use std::path::Path;

use anyhow::Context;

/// The store URL a process opens: `store` when given, else
/// `sqlite:<data_dir>/<default_file>`.
pub fn store_url(data_dir: &Path, store: Option<&str>, default_file: &str) -> String {
    store.map_or_else(|| format!("sqlite:{}", data_dir.join(default_file).display()), str::to_string)
}

/// Creates the data directory and opens the store at [`store_url`] (from
/// `--store`), waiting at most `--store-acquire-timeout` for a connection.
///
/// Errors: the directory cannot be created, or the store cannot be opened
/// (the message names the URL, its password redacted).
pub async fn open_store(
    data_dir: &Path,
    state: &crate::args::StateArgs,
    default_file: &str,
) -> anyhow::Result<meridian_store::Store> {
    create_private_dir(data_dir)?;
    let url = store_url(data_dir, state.store.as_deref(), default_file);
    let options = meridian_store::StoreOptions { acquire_timeout: state.store_acquire_timeout, ..Default::default() };
    let store = meridian_store::Store::connect_with(&url, options)
        .await
        .with_context(|| format!("cannot open store {}", crate::config::redact_url(&url)))?;
    tracing::info!(backend = store.backend_name(), "store ready");
    Ok(store)
}

/// Creates `dir` (and its parents) and makes it readable by this user only
/// (0700): it holds the SQLite store, whose rows include signing keys and
/// Secrets, the admin token and TLS keys.
///
/// Errors: the directory cannot be created or its mode cannot be set.
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create data directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make data directory {} private (mode 0700)", dir.display()))?;
    }
    Ok(())
}

/// The admin token: `flag` when set, else read from (or generated into)
/// `<data_dir>/admin-token`.
pub fn admin_token(flag: Option<&str>, data_dir: &Path) -> anyhow::Result<String> {
    if let Some(t) = flag.map(str::trim).filter(|t| !t.is_empty()) {
        return Ok(t.to_string());
    }
    let (token, path) = meridian_rest::auth::Auth::load_or_create_token(data_dir)
        .with_context(|| format!("cannot read or create the admin token in {}", data_dir.display()))?;
    tracing::info!(path = %path.display(), "admin token");
    Ok(token)
}

/// This host's name (`unknown` when it cannot be read).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// `<hostname>-<8 hex digits>`: identifies this process among replicas.
pub fn instance_id() -> String {
    format!("{}-{:08x}", hostname(), rand::random::<u32>())
}

/// Creates the `default` Mesh unless `skip` ([`meridian_core::defaults`]:
/// when missing, on a global or a standalone zone) and logs what happened.
///
/// Errors: the store's.
pub async fn default_mesh(manager: &meridian_core::Manager, skip: bool) -> anyhow::Result<()> {
    use meridian_core::defaults::{DEFAULT_MESH, DefaultMesh, ensure_default_mesh};
    if skip {
        tracing::info!("not creating the {DEFAULT_MESH:?} Mesh (--skip-default-mesh)");
        return Ok(());
    }
    match ensure_default_mesh(manager).await.context("cannot create the default Mesh")? {
        DefaultMesh::Created => tracing::info!("created the {DEFAULT_MESH:?} Mesh (--skip-default-mesh to opt out)"),
        DefaultMesh::Exists => tracing::debug!("the {DEFAULT_MESH:?} Mesh exists"),
        DefaultMesh::Federated => tracing::debug!("federated zone: Meshes come from the global"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_directory_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("a/b");
        create_private_dir(&dir).expect("create");
        let mode = std::fs::metadata(&dir).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{mode:o}");
        // An existing, world-readable directory is made private too.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        create_private_dir(&dir).expect("again");
        assert_eq!(std::fs::metadata(&dir).expect("metadata").permissions().mode() & 0o777, 0o700);
    }
}
