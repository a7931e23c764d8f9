//! What a control plane creates by itself at start: the `default` Mesh.
//!
//! The incumbent (Kuma 2.14 `pkg/defaults/mesh.go`, `EnsureDefaultMeshExists`,
//! run by `pkg/defaults/components.go` on a global and on a standalone zone,
//! never on a zone connected to a global) looks the `default` Mesh up at every
//! start and creates it when it is missing; `KUMA_DEFAULTS_SKIP_MESH_CREATION`
//! turns that off. Meridian does the same, so a `default` Mesh a user deleted
//! comes back at the next start unless creation is skipped.

use meridian_sync_proto::{Resource, ResourceType, Spec};

use crate::{Manager, ManagerError, Role};

/// The name of the Mesh created at start.
pub const DEFAULT_MESH: &str = "default";

/// What [`ensure_default_mesh`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultMesh {
    /// The store had no `default` Mesh; one was created (empty spec: mTLS off).
    Created,
    /// A `default` Mesh already exists; nothing was written.
    Exists,
    /// This is a federated zone: Meshes come from the global, none is created.
    Federated,
}

/// Creates the `default` Mesh when the store has none, as the incumbent does
/// at start. A federated zone ([`Role::Zone`] with `federated`) never creates
/// it: it receives its Meshes from the global.
///
/// Errors: the store's, or (never expected) the Mesh failing validation.
pub async fn ensure_default_mesh(manager: &Manager) -> Result<DefaultMesh, ManagerError> {
    if manager.role() == (Role::Zone { federated: true }) {
        return Ok(DefaultMesh::Federated);
    }
    if manager.mesh_exists(DEFAULT_MESH).await? {
        return Ok(DefaultMesh::Exists);
    }
    let mesh = Resource::new("", DEFAULT_MESH, Spec::default_for(ResourceType::Mesh));
    manager.apply(mesh, None, false).await?;
    Ok(DefaultMesh::Created)
}

#[cfg(test)]
mod tests {
    use meridian_store::Store;

    use super::*;

    async fn manager(role: Role) -> (Manager, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite:{}", dir.path().join("t.db").display());
        let store = Store::connect(&url).await.expect("store");
        (Manager::new(store, role), dir)
    }

    #[tokio::test]
    async fn created_once_on_a_global_and_a_standalone_zone() {
        for role in [Role::Global, Role::Zone { federated: false }] {
            let (m, _dir) = manager(role).await;
            assert_eq!(ensure_default_mesh(&m).await.ok(), Some(DefaultMesh::Created), "{role:?}");
            assert!(m.mesh_exists(DEFAULT_MESH).await.expect("get"));
            let before = m.get(ResourceType::Mesh, "", DEFAULT_MESH).await.expect("get").map(|e| e.revision);
            assert_eq!(ensure_default_mesh(&m).await.ok(), Some(DefaultMesh::Exists), "{role:?}");
            let after = m.get(ResourceType::Mesh, "", DEFAULT_MESH).await.expect("get").map(|e| e.revision);
            assert_eq!(before, after, "an existing default Mesh is not rewritten");
        }
    }

    #[tokio::test]
    async fn a_deleted_default_mesh_comes_back_as_in_the_incumbent() {
        let (m, _dir) = manager(Role::Global).await;
        ensure_default_mesh(&m).await.expect("first start");
        m.delete(ResourceType::Mesh, "", DEFAULT_MESH, None).await.expect("user deletes it");
        assert_eq!(ensure_default_mesh(&m).await.ok(), Some(DefaultMesh::Created));
    }

    #[tokio::test]
    async fn never_on_a_federated_zone() {
        let (m, _dir) = manager(Role::Zone { federated: true }).await;
        assert_eq!(ensure_default_mesh(&m).await.ok(), Some(DefaultMesh::Federated));
        assert!(!m.mesh_exists(DEFAULT_MESH).await.expect("get"));
    }
}
