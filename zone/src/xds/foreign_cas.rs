//! CA secrets of other meshes, for cross-mesh traffic: a proxy with an
//! outbound to another mesh's gateway trusts that mesh's CA
//! (`mesh_ca:secret:<mesh>`), and a gateway with a `crossMesh` listener
//! trusts every mTLS mesh's CA (`mesh_ca:secret:all`). Like the identity
//! secrets, they are added after the (pure) generator, from the roots this
//! zone holds (each mesh's zone CA Secret carries its root certificate).

use std::{collections::BTreeMap, sync::Arc};

use envoy_types::pb::envoy::{
    config::core::v3::{DataSource, data_source},
    extensions::transport_sockets::tls::v3::{CertificateValidationContext, Secret, secret},
};
use meridian_core::mesh_ca::zone_ca_secret_name;
use meridian_sync_proto::{
    delta::{Desired, DesiredSet, any_version},
    pb::mesh::Mesh,
};

use crate::gateway::{Deps, MeshSnapshot, SECRET_TYPE, cross_mesh::MESH_TAG, mesh_tls::ALL_MESHES_CA};

/// Every mesh of the zone: its snapshot and its Mesh spec.
pub type AllMeshes = Vec<(Arc<MeshSnapshot>, Option<Arc<Mesh>>)>;

/// The root certificates (PEM, concatenated) `mesh`'s proxies trust, read
/// from this zone's intermediate Secrets ([`crate::mtls::trusted_roots`]:
/// during a CA change, both backends'); `None` when mTLS is off there or the
/// zone holds no CA of its enabled backend yet.
fn root_of(all: &AllMeshes, mesh: &str, zone: &str) -> Option<String> {
    let (snapshot, spec) = all.iter().find(|(s, _)| s.mesh == mesh)?;
    let spec = spec.as_deref()?;
    let backend = crate::mtls::enabled_backend(spec)?;
    snapshot.secrets.get(&zone_ca_secret_name(&backend.name, zone))?.spec.data.as_ref()?;
    Some(crate::mtls::trusted_roots(spec, zone, |n| snapshot.secret_data(n)).concat()).filter(|r| !r.is_empty())
}

fn ca_secret(name: String, pem: String) -> Secret {
    Secret {
        name,
        r#type: Some(secret::Type::ValidationContext(CertificateValidationContext {
            trusted_ca: Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString(pem)),
                ..Default::default()
            }),
            ..Default::default()
        })),
    }
}

/// Adds the foreign CA secrets `deps` call for to `config` (proxy of mesh
/// `own` in zone `zone`); what cannot be found is a warning.
pub fn attach(
    own: &str,
    zone: &str,
    deps: &Deps,
    all: &AllMeshes,
    config: &mut BTreeMap<String, DesiredSet>,
    warnings: &mut Vec<String>,
) {
    let mut secrets = Vec::new();
    let targets: std::collections::BTreeSet<&str> =
        deps.destinations.iter().filter_map(|d| d.get(MESH_TAG)).map(String::as_str).filter(|m| *m != own).collect();
    for mesh in targets {
        match root_of(all, mesh, zone) {
            Some(pem) => secrets.push(ca_secret(crate::mtls::ca_secret_name(mesh), pem)),
            None => warnings.push(format!(
                "no CA of mesh {mesh:?} in this zone (mTLS off there, or its CA not received yet): its gateways cannot be verified"
            )),
        }
    }
    if deps.all_meshes_ca {
        let roots: Vec<String> = all.iter().filter_map(|(s, _)| root_of(all, &s.mesh, zone)).collect();
        if !roots.is_empty() {
            secrets.push(ca_secret(ALL_MESHES_CA.to_string(), roots.concat()));
        }
    }
    if secrets.is_empty() {
        return;
    }
    let set = config.entry(SECRET_TYPE()).or_default();
    for s in secrets {
        let any = envoy_types::util::pack_any(s.clone());
        set.insert(s.name, Desired { version: any_version(&any), resource: any });
    }
}
