//! Keeps every mesh's builtin CA material in the store: one root CA per
//! builtin backend (a `GlobalSecret`, which never travels over KDS: the
//! root key stays where it was made) and, for each zone, an intermediate CA
//! signed by it (a mesh `Secret` labelled [`ZONE_ONLY_LABEL`], which the
//! global's KDS sends to that zone only).
//!
//! ```text
//!   Mesh "default", backend "ca-1" (builtin)
//!     GlobalSecret "default.ca-builtin-root-ca-1"             root cert + key     (global only)
//!     Secret default/"ca-builtin-intermediate-ca-1.zone-1"    [`ZoneCa`] bundle    ─KDS─▶ zone-1 only
//!     Secret default/"ca-builtin-intermediate-ca-1.zone-2"    [`ZoneCa`] bundle    ─KDS─▶ zone-2 only
//! ```
//!
//! The global runs [`reconcile`] for its zones (every Zone record); a
//! standalone zone runs it for itself. An intermediate is re-issued at 4/5
//! of its lifetime, or when it was not signed by the current root. Roots of
//! backends that no longer exist are deleted, and so are intermediates.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, SystemTime},
};

use meridian_sync_proto::{Resource, ResourceType, Spec, pb, validate};

use crate::{
    ManagerError,
    ca::{self, CertKey, ZoneCa},
    manager::Manager,
};

/// Label on a resource the global must send to one zone only (the value).
pub const ZONE_ONLY_LABEL: &str = "meridian.io/zone-only";
/// Label naming the mesh of a root CA `GlobalSecret`.
pub const ROOT_MESH_LABEL: &str = "meridian.io/ca-root-mesh";

/// The `GlobalSecret` holding a mesh backend's root CA (certificate, then key).
pub fn root_secret_name(mesh: &str, backend: &str) -> String {
    format!("{mesh}.ca-builtin-root-{backend}")
}

/// The mesh `Secret` holding zone `zone`'s intermediate CA for `backend`.
pub fn zone_ca_secret_name(backend: &str, zone: &str) -> String {
    format!("ca-builtin-intermediate-{backend}.{zone}")
}

/// Whether a mesh Secret name is one of [`zone_ca_secret_name`]'s.
pub fn is_zone_ca_secret(name: &str) -> bool {
    name.starts_with("ca-builtin-intermediate-")
}

/// Why a [`reconcile`] pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum MeshCaError {
    #[error(transparent)]
    Manager(#[from] ManagerError),
    #[error(transparent)]
    Store(#[from] meridian_store::StoreError),
    #[error(transparent)]
    Ca(#[from] ca::CaError),
}

/// What one [`reconcile`] pass wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// Names of the roots created.
    pub roots: Vec<String>,
    /// `(mesh, name)` of the intermediates issued.
    pub intermediates: Vec<(String, String)>,
    /// `(mesh, name)` of what was deleted (roots have an empty mesh).
    pub deleted: Vec<(String, String)>,
}

fn bytes(pem: String) -> Option<pbjson_types::BytesValue> {
    Some(pbjson_types::BytesValue { value: pem.into_bytes().into() })
}

fn secret_data(spec: &Spec) -> Option<&[u8]> {
    match spec {
        Spec::Secret(s) | Spec::GlobalSecret(s) => s.data.as_ref().map(|d| &d.value[..]),
        _ => None,
    }
}

/// The lifetime the backend's `conf.caCert.expiration` asks for, or the default.
fn root_lifetime(backend: &pb::mesh::CertificateAuthorityBackend) -> Duration {
    use pbjson_types::value::Kind;
    let conf = backend.conf.as_ref().and_then(|c| c.fields.get("caCert"));
    let expiration = match conf.and_then(|v| v.kind.as_ref()) {
        Some(Kind::StructValue(s)) => match s.fields.get("expiration").and_then(|v| v.kind.as_ref()) {
            Some(Kind::StringValue(e)) => validate::parse_duration(e),
            _ => None,
        },
        _ => None,
    };
    expiration.filter(|d| !d.is_zero()).unwrap_or(ca::DEFAULT_ROOT_LIFETIME)
}

/// Reads a root back from its `GlobalSecret` (certificate, then key).
fn read_root(data: &[u8]) -> Option<CertKey> {
    let text = std::str::from_utf8(data).ok()?;
    let split = text.find("-----END CERTIFICATE-----")? + "-----END CERTIFICATE-----\n".len();
    let (cert, key) = text.split_at(split.min(text.len()));
    let der = rustls_pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).ok()?;
    Some(CertKey { cert_pem: cert.to_string(), key_pem: key.to_string(), not_after: ca::not_after(&der).ok()? })
}

use rustls_pki_types::pem::PemObject;

async fn write(manager: &Manager, r: &Resource) -> Result<(), MeshCaError> {
    manager.store().upsert(Manager::encode(r)).await?;
    Ok(())
}

/// Brings the store in line with every mesh's builtin backends for `zones`:
/// creates missing roots, issues missing or due intermediates, deletes
/// material of backends (or zones) that are gone. `now` is the issuing time.
pub async fn reconcile(
    manager: &Manager,
    zones: &BTreeSet<String>,
    now: SystemTime,
) -> Result<Reconciled, MeshCaError> {
    let mut done = Reconciled::default();
    let (meshes, _) = manager.list(ResourceType::Mesh, None, BTreeMap::new(), 0, None).await?;
    let mut wanted_roots = BTreeSet::new();
    let mut wanted_zone_cas: BTreeSet<(String, String)> = BTreeSet::new();
    for m in &meshes {
        let Spec::Mesh(spec) = &m.resource.spec else { continue };
        let mesh = &m.resource.meta.name;
        for backend in spec.mtls.iter().flat_map(|t| &t.backends).filter(|b| b.r#type == validate::BUILTIN) {
            let root_name = root_secret_name(mesh, &backend.name);
            wanted_roots.insert(root_name.clone());
            let existing = manager.get(ResourceType::GlobalSecret, "", &root_name).await?;
            let root = match existing.as_ref().and_then(|e| secret_data(&e.resource.spec)).and_then(read_root) {
                Some(root) => root,
                None => {
                    let root = ca::root_ca(mesh, now, root_lifetime(backend))?;
                    let mut r = Resource::new(
                        "",
                        root_name.clone(),
                        Spec::GlobalSecret(pb::system::Secret {
                            data: bytes(format!("{}{}", root.cert_pem, root.key_pem)),
                        }),
                    );
                    r.meta.labels.insert(ROOT_MESH_LABEL.into(), mesh.clone());
                    write(manager, &r).await?;
                    tracing::info!(mesh = %mesh, backend = %backend.name, "created the mesh's root CA");
                    done.roots.push(root_name);
                    root
                }
            };
            for zone in zones {
                let name = zone_ca_secret_name(&backend.name, zone);
                wanted_zone_cas.insert((mesh.clone(), name.clone()));
                let current = manager.get(ResourceType::Secret, mesh, &name).await?;
                let current =
                    current.as_ref().and_then(|e| secret_data(&e.resource.spec)).and_then(|d| ZoneCa::from_pem(d).ok());
                let fresh =
                    current.as_ref().is_some_and(|c| c.root_cert_pem == root.cert_pem && !intermediate_due(c, now));
                if fresh {
                    continue;
                }
                let intermediate = ca::intermediate_ca(&root, mesh, zone, now, ca::INTERMEDIATE_LIFETIME)?;
                let bundle = ZoneCa { intermediate, root_cert_pem: root.cert_pem.clone() };
                let mut r = Resource::new(
                    mesh.clone(),
                    name.clone(),
                    Spec::Secret(pb::system::Secret { data: bytes(bundle.to_pem()) }),
                );
                r.meta.labels.insert(ZONE_ONLY_LABEL.into(), zone.clone());
                write(manager, &r).await?;
                tracing::info!(mesh = %mesh, backend = %backend.name, zone = %zone, "issued the zone's intermediate CA");
                done.intermediates.push((mesh.clone(), name));
            }
        }
    }
    // What no backend or zone needs any more.
    let (roots, _) = manager.list(ResourceType::GlobalSecret, None, BTreeMap::new(), 0, None).await?;
    for e in roots.iter().filter(|e| e.resource.meta.labels.contains_key(ROOT_MESH_LABEL)) {
        if !wanted_roots.contains(&e.resource.meta.name) {
            delete(manager, ResourceType::GlobalSecret, "", &e.resource.meta.name).await?;
            done.deleted.push((String::new(), e.resource.meta.name.clone()));
        }
    }
    let (cas, _) = manager.list(ResourceType::Secret, None, BTreeMap::new(), 0, None).await?;
    for e in cas.iter().filter(|e| e.resource.meta.labels.contains_key(ZONE_ONLY_LABEL)) {
        let key = (e.resource.meta.mesh.clone(), e.resource.meta.name.clone());
        if is_zone_ca_secret(&key.1) && !wanted_zone_cas.contains(&key) {
            delete(manager, ResourceType::Secret, &key.0, &key.1).await?;
            done.deleted.push(key);
        }
    }
    Ok(done)
}

/// Whether an intermediate is due for re-issue (4/5 of its lifetime passed).
fn intermediate_due(c: &ZoneCa, now: SystemTime) -> bool {
    let issued = c.intermediate.not_after.checked_sub(ca::INTERMEDIATE_LIFETIME);
    match issued {
        Some(issued) => ca::rotation_due(issued, c.intermediate.not_after, now),
        None => true,
    }
}

async fn delete(manager: &Manager, ty: ResourceType, mesh: &str, name: &str) -> Result<(), MeshCaError> {
    let key = Manager::key(ty, mesh, name);
    match manager.store().delete(&key, None).await {
        Ok(_) | Err(meridian_store::StoreError::NotFound(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Which zones [`run`] keeps intermediates for.
#[derive(Debug, Clone)]
pub enum Zones {
    /// Every Zone record in the store (the global).
    Recorded,
    /// This one (a standalone zone: its own root and intermediate).
    Fixed(String),
}

/// How long [`run`] sleeps when nothing changes: the re-check that
/// re-issues intermediates before they expire (they are due at 4/5 of a
/// year, so a day is plenty).
pub const RECHECK: Duration = Duration::from_secs(24 * 3600);

/// Keeps the CA material reconciled until `shutdown`: at start, after every
/// change of a Mesh or a Zone record, and every [`RECHECK`]. A failing pass
/// is logged and retried after 5 s.
pub async fn run(manager: Manager, zones: Zones, shutdown: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
    use futures::StreamExt;
    let store = manager.store().clone();
    let mut from = store.current_revision().await?;
    loop {
        let names: Result<BTreeSet<String>, MeshCaError> = match &zones {
            Zones::Fixed(z) => Ok(BTreeSet::from([z.clone()])),
            Zones::Recorded => manager
                .list(ResourceType::Zone, None, BTreeMap::new(), 0, None)
                .await
                .map(|(zs, _)| zs.into_iter().map(|e| e.resource.meta.name).collect())
                .map_err(Into::into),
        };
        let retry = match names {
            Ok(names) => match reconcile(&manager, &names, SystemTime::now()).await {
                Ok(_) => false,
                Err(e) => {
                    tracing::warn!(error = %e, "mesh CA reconciliation failed; retrying");
                    true
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "listing zones for the mesh CAs failed; retrying");
                true
            }
        };
        let wait = if retry { Duration::from_secs(5) } else { RECHECK };
        let mut feed = store.watch(from);
        let relevant = async {
            while let Some(change) = feed.next().await {
                match change {
                    Ok(c) => {
                        from = c.revision;
                        let ty = ResourceType::from_name(&c.resource.key.type_name);
                        if matches!(ty, Some(ResourceType::Mesh | ResourceType::Zone)) {
                            return;
                        }
                    }
                    // Compacted or failing: reconcile from scratch.
                    Err(_) => return,
                }
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
            _ = relevant => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use meridian_store::Store;

    use super::*;
    use crate::manager::Role;

    async fn manager() -> (Manager, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite:{}", dir.path().join("t.db").display());
        let store = Store::connect(&url).await.expect("store");
        (Manager::new(store, Role::Global), dir)
    }

    fn mesh(name: &str, backend: Option<&str>) -> Resource {
        let mtls = backend.map(|b| pb::mesh::mesh::Mtls {
            enabled_backend: b.into(),
            backends: vec![pb::mesh::CertificateAuthorityBackend {
                name: b.into(),
                r#type: validate::BUILTIN.into(),
                ..Default::default()
            }],
            skip_validation: false,
        });
        Resource::new("", name, Spec::Mesh(pb::mesh::Mesh { mtls, ..Default::default() }))
    }

    async fn data(m: &Manager, ty: ResourceType, mesh: &str, name: &str) -> Option<Vec<u8>> {
        let e = m.get(ty, mesh, name).await.expect("get")?;
        secret_data(&e.resource.spec).map(<[u8]>::to_vec)
    }

    #[tokio::test]
    async fn roots_stay_here_and_each_zone_gets_its_own_intermediate() {
        let (m, _dir) = manager().await;
        write(&m, &mesh("default", Some("ca-1"))).await.expect("mesh");
        write(&m, &mesh("plain", None)).await.expect("mesh");
        let zones = BTreeSet::from(["zone-1".to_string(), "zone-2".to_string()]);
        let now = SystemTime::now();

        let done = reconcile(&m, &zones, now).await.expect("reconcile");
        assert_eq!(done.roots, ["default.ca-builtin-root-ca-1"]);
        assert_eq!(done.intermediates.len(), 2);
        let root = data(&m, ResourceType::GlobalSecret, "", "default.ca-builtin-root-ca-1").await.expect("root");
        let root = read_root(&root).expect("root PEM");
        let z1 = m.get(ResourceType::Secret, "default", &zone_ca_secret_name("ca-1", "zone-1")).await.expect("get");
        let z1 = z1.expect("zone-1's intermediate");
        assert_eq!(z1.resource.meta.labels.get(ZONE_ONLY_LABEL).map(String::as_str), Some("zone-1"));
        let bundle = ZoneCa::from_pem(secret_data(&z1.resource.spec).expect("data")).expect("bundle");
        assert_eq!(bundle.root_cert_pem, root.cert_pem, "the zone trusts the root");
        let text = String::from_utf8(secret_data(&z1.resource.spec).expect("data").to_vec()).expect("utf8");
        assert!(
            !text.contains(root.key_pem.lines().nth(1).expect("key body")),
            "the root key is not in a zone's Secret"
        );
        let keys = text.lines().filter(|l| l.starts_with("-----BEGIN") && l.contains("PRIVATE KEY")).count();
        assert_eq!(keys, 1, "one key: the intermediate's");

        // A second pass changes nothing.
        assert_eq!(reconcile(&m, &zones, now).await.expect("again"), Reconciled::default());
        // Near the end of the intermediate's life, it is re-issued under the same root.
        let later = now + ca::INTERMEDIATE_LIFETIME * 4 / 5;
        let done = reconcile(&m, &zones, later).await.expect("later");
        assert!(done.roots.is_empty());
        assert_eq!(done.intermediates.len(), 2);

        // A zone gone: its intermediate goes; mTLS backend gone: everything goes.
        let one = BTreeSet::from(["zone-1".to_string()]);
        let done = reconcile(&m, &one, later).await.expect("zone gone");
        assert_eq!(done.deleted, [("default".to_string(), zone_ca_secret_name("ca-1", "zone-2"))]);
        write(&m, &mesh("default", None)).await.expect("mesh");
        let done = reconcile(&m, &one, later).await.expect("backend gone");
        assert_eq!(done.deleted.len(), 2, "{done:?}");
        assert!(data(&m, ResourceType::GlobalSecret, "", "default.ca-builtin-root-ca-1").await.is_none());
    }

    #[tokio::test]
    async fn both_backends_of_a_ca_change_get_material_and_the_removed_one_loses_it() {
        let (m, _dir) = manager().await;
        let mut two = mesh("default", Some("ca-1"));
        if let Spec::Mesh(spec) = &mut two.spec
            && let Some(mtls) = spec.mtls.as_mut()
        {
            let ca2 = pb::mesh::CertificateAuthorityBackend { name: "ca-2".into(), ..mtls.backends[0].clone() };
            mtls.backends.push(ca2);
        }
        write(&m, &two).await.expect("mesh");
        let zones = BTreeSet::from(["zone-1".to_string()]);
        let now = SystemTime::now();
        let done = reconcile(&m, &zones, now).await.expect("reconcile");
        assert_eq!(done.roots, ["default.ca-builtin-root-ca-1", "default.ca-builtin-root-ca-2"]);
        let bundle = |b: &'static str| {
            let m = m.clone();
            async move {
                let d = data(&m, ResourceType::Secret, "default", &zone_ca_secret_name(b, "zone-1")).await;
                ZoneCa::from_pem(&d.expect("the zone CA")).expect("bundle")
            }
        };
        let (z1, z2) = (bundle("ca-1").await, bundle("ca-2").await);
        assert_ne!(z1.root_cert_pem, z2.root_cert_pem, "two roots");

        // Switched to ca-2, then ca-1 removed: ca-2's material stays, ca-1's goes.
        write(&m, &mesh("default", Some("ca-2"))).await.expect("mesh");
        let done = reconcile(&m, &zones, now).await.expect("reconcile");
        assert!(done.roots.is_empty() && done.intermediates.is_empty(), "{done:?}");
        assert_eq!(
            done.deleted,
            [
                (String::new(), "default.ca-builtin-root-ca-1".to_string()),
                ("default".to_string(), zone_ca_secret_name("ca-1", "zone-1"))
            ]
        );
        assert_eq!(bundle("ca-2").await.root_cert_pem, z2.root_cert_pem);
    }
}
