//! The identity store: per proxy, the identity certificate the zone issued
//! (cert, key, expiry, generation). The xDS cache calls [`Identities::attach`]
//! right after the pure generator, so the time and the random keys stay out
//! of the generator; DataplaneInsight reads the mTLS status from here.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use meridian_core::{
    ca::{self, ZoneCa},
    mesh_ca::zone_ca_secret_name,
};
use meridian_sync_proto::{
    delta::{Desired, DesiredSet, any_version},
    pb::mesh::Mesh,
    validate,
};

use super::cache::ProxyId;
use crate::{
    gateway::{MeshSnapshot, SECRET_TYPE},
    mtls::{Issued, dataplane_tags, enabled_backend, needs_issue, secrets, trusted_backends, trusted_roots},
};

/// The identity store: per proxy, what was issued. Shared by the xDS cache
/// (which issues right after generating, outside the pure generator) and
/// the DataplaneInsight writer.
#[derive(Debug, Clone, Default)]
pub struct Identities {
    inner: Arc<Mutex<HashMap<ProxyId, Issued>>>,
}

/// Whether a proxy's configuration gets mTLS secrets, and from what.
pub struct MeshCa<'a> {
    /// The Mesh resource's spec (None: no Mesh record, mTLS off).
    pub mesh: Option<&'a Mesh>,
    /// This zone's name: which intermediate Secret to use.
    pub zone: &'a str,
}

impl Identities {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ProxyId, Issued>> {
        meridian_sync_proto::driver::lock(&self.inner)
    }

    /// The entry of a proxy.
    pub fn get(&self, id: &ProxyId) -> Option<Issued> {
        self.lock().get(id).cloned()
    }

    /// Forgets a proxy (nobody watches it any more).
    pub fn remove(&self, id: &ProxyId) {
        self.lock().remove(id);
    }

    /// Proxies whose certificate is due at `now`, and the earliest time
    /// another one will be.
    pub fn due(&self, now: SystemTime) -> (Vec<ProxyId>, Option<SystemTime>) {
        let inner = self.lock();
        let mut due = Vec::new();
        let mut next: Option<SystemTime> = None;
        for (id, i) in inner.iter() {
            let lifetime = i.cert.not_after.duration_since(i.issued_at).unwrap_or_default();
            let at = i.issued_at + lifetime * 4 / 5;
            if at <= now {
                due.push(id.clone());
            } else {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        (due, next)
    }

    /// Adds the two mTLS SDS secrets to a generated configuration when the
    /// mesh has mTLS on, issuing (or re-issuing) the proxy's certificate if
    /// needed; a missing zone CA is a warning. With mTLS off, the proxy's
    /// entry is dropped and nothing is added.
    pub fn attach(
        &self,
        id: &ProxyId,
        mesh_ca: &MeshCa<'_>,
        snapshot: &MeshSnapshot,
        now: SystemTime,
        config: &mut BTreeMap<String, DesiredSet>,
        warnings: &mut Vec<String>,
    ) {
        let Some(backend) = mesh_ca.mesh.and_then(enabled_backend) else {
            self.remove(id);
            return;
        };
        let Some(dp) = snapshot.dataplanes.get(&id.name) else { return };
        let secret_name = zone_ca_secret_name(&backend.name, mesh_ca.zone);
        let zone_ca = snapshot
            .secrets
            .get(&secret_name)
            .and_then(|s| s.spec.data.as_ref())
            .ok_or_else(|| format!("no zone CA Secret {secret_name:?} yet"))
            .and_then(|d| ZoneCa::from_pem(&d.value).map_err(|e| format!("Secret {secret_name:?}: {e}")));
        let zone_ca = match zone_ca {
            Ok(ca) => ca,
            Err(why) => {
                warnings.push(format!(
                    "mTLS is enabled in mesh {:?} (backend {:?}) but this zone cannot issue identities: {why}",
                    id.mesh, backend.name
                ));
                warnings.sort();
                // A switched backend whose zone CA has not arrived yet: the
                // proxy keeps the identity it has (from the previous
                // backend, still trusted) rather than losing its secrets.
                let roots = mesh_ca
                    .mesh
                    .map(|m| trusted_roots(m, mesh_ca.zone, |n| snapshot.secret_data(n)).concat())
                    .unwrap_or_default();
                // Turning mTLS off may have removed the backends (and their
                // CAs): then what the proxy was last sent.
                let prev = self.get(id);
                let roots = match &prev {
                    Some(p) if roots.is_empty() => p.trusted.clone(),
                    _ => roots,
                };
                if let Some(prev) = prev.filter(|_| !roots.is_empty()) {
                    let set = config.entry(SECRET_TYPE()).or_default();
                    for s in secrets(&id.mesh, &prev, &roots) {
                        let any = envoy_types::util::pack_any(s.clone());
                        set.insert(s.name, Desired { version: any_version(&any), resource: any });
                    }
                }
                return;
            }
        };
        let tags = dataplane_tags(&dp.spec);
        let uris = ca::identity_uris(&id.mesh, &tags);
        let lifetime = backend
            .dp_cert
            .as_ref()
            .and_then(|d| d.rotation.as_ref())
            .and_then(|r| validate::parse_duration(&r.expiration))
            .filter(|d| !d.is_zero())
            .unwrap_or(ca::DEFAULT_IDENTITY_LIFETIME);
        let issued = {
            let mut inner = self.lock();
            let prev = inner.get(id);
            if needs_issue(prev, &backend.name, &uris, &zone_ca, now) {
                match ca::identity(&zone_ca, &id.mesh, &tags, now, lifetime) {
                    Ok(cert) => {
                        let generation = prev.map_or(0, |p| p.generation) + 1;
                        tracing::info!(proxy = %id, generation, "issued a mesh identity certificate");
                        let entry = Issued {
                            cert,
                            issued_at: now,
                            backend: backend.name.clone(),
                            uris,
                            ca_cert_pem: zone_ca.intermediate.cert_pem.clone(),
                            generation,
                            trusted: String::new(),
                            supported: Vec::new(),
                        };
                        inner.insert(id.clone(), entry.clone());
                        entry
                    }
                    Err(e) => {
                        warnings.push(format!("issuing the mesh identity certificate failed: {e}"));
                        warnings.sort();
                        return;
                    }
                }
            } else if let Some(p) = prev {
                p.clone()
            } else {
                return;
            }
        };
        // The enabled backend's root, then every other listed backend's
        // (old and new trusted while a CA change is under way).
        let mut roots = vec![zone_ca.root_cert_pem.clone()];
        let mut supported = vec![backend.name.clone()];
        if let Some(mesh) = mesh_ca.mesh {
            for (name, root) in trusted_backends(mesh, mesh_ca.zone, |n| snapshot.secret_data(n)) {
                if !supported.contains(&name) {
                    supported.push(name);
                }
                if !roots.contains(&root) {
                    roots.push(root);
                }
            }
        }
        let trusted = roots.concat();
        if (issued.trusted != trusted || issued.supported != supported)
            && let Some(entry) = self.lock().get_mut(id)
        {
            entry.trusted = trusted.clone();
            entry.supported = supported;
        }
        let set = config.entry(SECRET_TYPE()).or_default();
        for s in secrets(&id.mesh, &issued, &trusted) {
            let any = envoy_types::util::pack_any(s.clone());
            set.insert(s.name, Desired { version: any_version(&any), resource: any });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use meridian_sync_proto::{Resource, Spec, pb};

    use std::collections::BTreeMap;

    use meridian_core::ca::{self, ZoneCa};
    use meridian_sync_proto::pb::mesh::Mesh;

    use super::*;
    use crate::mtls::{Mode, ca_secret_name, identity_secret_name, insight, mtls_enabled};

    fn mesh(enabled: &str, expiration: &str) -> Mesh {
        Mesh {
            mtls: Some(pb::mesh::mesh::Mtls {
                enabled_backend: enabled.into(),
                backends: vec![pb::mesh::CertificateAuthorityBackend {
                    name: "ca-1".into(),
                    r#type: "builtin".into(),
                    dp_cert: Some(pb::mesh::certificate_authority_backend::DpCert {
                        rotation: Some(pb::mesh::certificate_authority_backend::dp_cert::Rotation {
                            expiration: expiration.into(),
                        }),
                        ..Default::default()
                    }),
                    mode: pb::mesh::certificate_authority_backend::Mode::Permissive as i32,
                    ..Default::default()
                }],
                skip_validation: false,
            }),
            ..Default::default()
        }
    }

    /// A snapshot with gateway Dataplane `gw` (service `edge`) and zone
    /// `z`'s CA for backend `ca-1`.
    fn snapshot(zone_ca: &ZoneCa, service: &str) -> MeshSnapshot {
        let mut s = MeshSnapshot::new("default");
        let dp = format!(
            r#"{{"type":"Dataplane","mesh":"default","name":"gw","networking":{{"address":"127.0.0.1","gateway":{{"type":"BUILTIN","tags":{{"kuma.io/service":"{service}"}}}}}}}}"#
        );
        let dp =
            meridian_sync_proto::universal::from_value(serde_json::from_str(&dp).expect("json")).expect("dataplane");
        s.upsert(&dp);
        let secret = Resource::new(
            "default",
            zone_ca_secret_name("ca-1", "z"),
            Spec::Secret(pb::system::Secret {
                data: Some(pbjson_types::BytesValue { value: zone_ca.to_pem().into_bytes().into() }),
            }),
        );
        s.upsert(&secret);
        s
    }

    fn zone_ca(now: SystemTime) -> ZoneCa {
        let root = ca::root_ca("default", now, ca::DEFAULT_ROOT_LIFETIME).expect("root");
        ZoneCa {
            intermediate: ca::intermediate_ca(&root, "default", "z", now, ca::INTERMEDIATE_LIFETIME)
                .expect("intermediate"),
            root_cert_pem: root.cert_pem,
        }
    }

    fn names(config: &BTreeMap<String, DesiredSet>) -> Vec<String> {
        config.get(&SECRET_TYPE()).map(|s| s.keys().cloned().collect()).unwrap_or_default()
    }

    #[test]
    fn mode_and_names_follow_the_mesh() {
        assert_eq!(mtls_enabled(&mesh("ca-1", "1h")), Some(Mode::Permissive));
        assert_eq!(mtls_enabled(&mesh("", "1h")), None);
        assert_eq!(mtls_enabled(&Mesh::default()), None);
        assert_eq!(identity_secret_name("m"), "identity_cert:secret:m");
        assert_eq!(ca_secret_name("m"), "mesh_ca:secret:m");
    }

    #[test]
    fn identities_are_issued_kept_and_rotated_at_four_fifths() {
        let t0 = SystemTime::now();
        let ca = zone_ca(t0);
        let snap = snapshot(&ca, "edge");
        let ids = Identities::default();
        let id = ProxyId { mesh: "default".into(), name: "gw".into() };
        let m = mesh("ca-1", "100s");
        let on = MeshCa { mesh: Some(&m), zone: "z" };
        let attach = |now: SystemTime, snap: &MeshSnapshot, mesh_ca: &MeshCa<'_>| {
            let mut config = BTreeMap::new();
            let mut warnings = Vec::new();
            ids.attach(&id, mesh_ca, snap, now, &mut config, &mut warnings);
            (config, warnings)
        };

        let (config, warnings) = attach(t0, &snap, &on);
        assert_eq!(warnings, Vec::<String>::new());
        assert_eq!(names(&config), ["identity_cert:secret:default", "mesh_ca:secret:default"]);
        let first = ids.get(&id).expect("issued");
        assert_eq!(first.generation, 1);
        assert_eq!(first.cert.not_after, t0 + Duration::from_secs(100));
        assert_eq!(first.uris, ["spiffe://default/edge", "kuma://kuma.io/service/edge"]);

        // Before 4/5 of the lifetime: the same certificate, the same versions.
        let (again, _) = attach(t0 + Duration::from_secs(79), &snap, &on);
        assert_eq!(again, config);
        assert_eq!(ids.due(t0 + Duration::from_secs(79)).0, Vec::<ProxyId>::new());
        assert_eq!(ids.due(t0 + Duration::from_secs(79)).1, Some(t0 + Duration::from_secs(80)));
        // At 4/5: due, and a new one.
        assert_eq!(ids.due(t0 + Duration::from_secs(80)).0, std::slice::from_ref(&id));
        let (rotated, _) = attach(t0 + Duration::from_secs(80), &snap, &on);
        let identity = &identity_secret_name("default");
        assert_ne!(rotated[&SECRET_TYPE()][identity].version, config[&SECRET_TYPE()][identity].version);
        let ca_name = &ca_secret_name("default");
        assert_eq!(rotated[&SECRET_TYPE()][ca_name].version, config[&SECRET_TYPE()][ca_name].version);
        assert_eq!(ids.get(&id).expect("issued").generation, 2);
        assert_eq!(insight(&ids.get(&id).expect("issued")).certificate_regenerations, 2);

        // A tag change re-issues at once.
        let t1 = t0 + Duration::from_secs(81);
        attach(t1, &snapshot(&ca, "edge-2"), &on);
        let third = ids.get(&id).expect("issued");
        assert_eq!((third.generation, third.uris[0].as_str()), (3, "spiffe://default/edge-2"));

        // mTLS off: no secrets, the entry is forgotten.
        let off_mesh = mesh("", "100s");
        let (config, _) = attach(t1, &snap, &MeshCa { mesh: Some(&off_mesh), zone: "z" });
        assert_eq!(names(&config), Vec::<String>::new());
        assert!(ids.get(&id).is_none());

        // Another zone's name: no CA here, a warning, nothing issued.
        let (config, warnings) = attach(t1, &snap, &MeshCa { mesh: Some(&m), zone: "other" });
        assert_eq!(names(&config), Vec::<String>::new());
        assert!(warnings[0].contains("cannot issue identities"), "{warnings:?}");
    }

    /// The trusted roots in the `mesh_ca` secret of a configuration.
    fn trusted(config: &BTreeMap<String, DesiredSet>) -> String {
        let any = &config[&SECRET_TYPE()][&ca_secret_name("default")].resource;
        let secret: envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret =
            prost::Message::decode(&any.value[..]).expect("a Secret");
        match secret.r#type {
            Some(envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type::ValidationContext(
                v,
            )) => match v.trusted_ca.and_then(|d| d.specifier) {
                Some(envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineString(s)) => s,
                other => panic!("trusted_ca: {other:?}"),
            },
            other => panic!("not a validation context: {other:?}"),
        }
    }

    #[test]
    fn both_listed_backends_are_trusted_and_a_switch_re_issues_from_the_new_one() {
        let t0 = SystemTime::now();
        let (ca1, ca2) = (zone_ca(t0), zone_ca(t0));
        let mut snap = snapshot(&ca1, "edge");
        snap.upsert(&Resource::new(
            "default",
            zone_ca_secret_name("ca-2", "z"),
            Spec::Secret(pb::system::Secret {
                data: Some(pbjson_types::BytesValue { value: ca2.to_pem().into_bytes().into() }),
            }),
        ));
        let two = |enabled: &str, names: &[&str]| {
            let mut m = mesh(enabled, "100s");
            let backend = m.mtls.as_ref().expect("mtls").backends[0].clone();
            m.mtls.as_mut().expect("mtls").backends = names
                .iter()
                .map(|n| pb::mesh::CertificateAuthorityBackend { name: (*n).into(), ..backend.clone() })
                .collect();
            m
        };
        let ids = Identities::default();
        let id = ProxyId { mesh: "default".into(), name: "gw".into() };
        let attach = |now: SystemTime, m: &Mesh| {
            let mut config = BTreeMap::new();
            let mut warnings = Vec::new();
            ids.attach(&id, &MeshCa { mesh: Some(m), zone: "z" }, &snap, now, &mut config, &mut warnings);
            assert_eq!(warnings, Vec::<String>::new());
            config
        };

        // One backend: its root alone.
        let config = attach(t0, &two("ca-1", &["ca-1"]));
        assert_eq!(trusted(&config), ca1.root_cert_pem);
        // ca-2 added: both roots (enabled first), the identity kept.
        assert_eq!(insight(&ids.get(&id).expect("issued")).supported_backends, ["ca-1"]);
        let config = attach(t0, &two("ca-1", &["ca-1", "ca-2"]));
        assert_eq!(trusted(&config), format!("{}{}", ca1.root_cert_pem, ca2.root_cert_pem));
        assert_eq!(ids.get(&id).expect("issued").generation, 1);
        // The insight lists both backends the proxy trusts, the issuing one first.
        assert_eq!(insight(&ids.get(&id).expect("issued")).supported_backends, ["ca-1", "ca-2"]);
        // Switched to ca-2: both roots still, a new identity from ca-2's chain.
        // Switched to ca-3, whose zone CA has not arrived: a warning, and the
        // ca-1 identity is kept (not dropped) with the roots at hand.
        let mut config = BTreeMap::new();
        let mut warnings = Vec::new();
        let m3 = two("ca-3", &["ca-1", "ca-3"]);
        ids.attach(&id, &MeshCa { mesh: Some(&m3), zone: "z" }, &snap, t0, &mut config, &mut warnings);
        assert!(warnings[0].contains("no zone CA Secret"), "{warnings:?}");
        assert_eq!(trusted(&config), ca1.root_cert_pem);
        assert_eq!(names(&config), ["identity_cert:secret:default", "mesh_ca:secret:default"]);
        assert_eq!(ids.get(&id).expect("kept").backend, "ca-1");
        let config = attach(t0, &two("ca-2", &["ca-1", "ca-2"]));
        assert_eq!(trusted(&config), format!("{}{}", ca2.root_cert_pem, ca1.root_cert_pem));
        let issued = ids.get(&id).expect("issued");
        assert_eq!((issued.generation, issued.backend.as_str()), (2, "ca-2"));
        assert_eq!(issued.ca_cert_pem, ca2.intermediate.cert_pem);
        assert_eq!(insight(&issued).supported_backends, ["ca-2", "ca-1"]);
        // ca-1 removed: ca-2's root alone, the identity kept.
        let config = attach(t0, &two("ca-2", &["ca-2"]));
        assert_eq!(trusted(&config), ca2.root_cert_pem);
        assert_eq!(ids.get(&id).expect("issued").generation, 2);
        assert_eq!(insight(&ids.get(&id).expect("issued")).supported_backends, ["ca-2"]);
    }
}
