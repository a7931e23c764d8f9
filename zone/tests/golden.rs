//! Golden files for the generator: every `testdata/golden/<case>.yaml`
//! (universal resources, document order = creation order) is turned into
//! the configuration of each gateway Dataplane in it (and, in `sidecar*`
//! cases, of every Dataplane), dumped as text and compared with
//! `<case>.golden`. Review a golden diff like code.
//!
//! `MERIDIAN_BLESS=1 cargo test -p meridian-zone --test golden` rewrites them.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use meridian_sync_proto::{Spec, pb::mesh::ZoneIngress, universal, validate};
use meridian_zone::gateway::{self, MeshSnapshot, dump};

#[path = "support/envoy.rs"]
mod envoy;
use envoy::static_bootstrap;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join("golden")
}

/// This zone's ZoneIngresses of a case (a ZoneIngress without `zone`),
/// rendered as `ingress:<name>`; those with a `zone` are other zones'.
type Ingresses = BTreeMap<String, ZoneIngress>;

/// Reads a case: a snapshot of mesh `default` and the Dataplanes to render
/// (the gateways; every Dataplane in a `sidecar*` case; every local
/// ZoneIngress, as `ingress:<name>`).
pub fn load_case(path: &Path) -> (MeshSnapshot, Vec<String>, Ingresses) {
    let sidecars = path.file_stem().and_then(|s| s.to_str()).is_some_and(|s| s.starts_with("sidecar"));
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut snapshot = MeshSnapshot::new("default");
    let mut gateways = Vec::new();
    let mut ingresses = Ingresses::new();
    let mut remote = BTreeMap::new();
    let parsed = universal::parse_resources(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for (i, r) in parsed.into_iter().enumerate() {
        let mut r = r.unwrap_or_else(|e| panic!("{} document {i}: {e}", path.display()));
        if let Err(e) = validate::resource(&r) {
            panic!("{} document {i} ({}): invalid: {e}", path.display(), r.meta.name);
        }
        r.meta.creation_time = i as i64;
        if let Spec::Dataplane(dp) = &r.spec
            && (sidecars || dp.networking.as_ref().is_some_and(|n| n.gateway.is_some()))
        {
            gateways.push(r.meta.name.clone());
        }
        if let Spec::ZoneIngress(zi) = &r.spec {
            if zi.zone.is_empty() {
                gateways.push(format!("ingress:{}", r.meta.name));
                ingresses.insert(r.meta.name.clone(), zi.clone());
            } else {
                remote.insert(format!("{}.{}", zi.zone, r.meta.name), zi.clone());
            }
        }
        snapshot.upsert(&r);
    }
    if !remote.is_empty() {
        // Local endpoints get a locality only in cases with other zones
        // (the other cases' golden files stay as they were).
        snapshot.zone = "zone-1".into();
    }
    snapshot.remote_ingresses = std::sync::Arc::new(remote);
    gateways.sort();
    (snapshot, gateways, ingresses)
}

/// The configuration of a Dataplane, or of `ingress:<name>`.
fn config_of(snapshot: &MeshSnapshot, ingresses: &Ingresses, name: &str) -> gateway::ProxyConfig {
    match name.strip_prefix("ingress:") {
        Some(i) => gateway::ingress::generate([snapshot], i, &ingresses[i]),
        None => gateway::generate(snapshot, name).unwrap_or_else(|e| panic!("{name}: {e}")),
    }
}

/// Real Envoy accepts every generated configuration (what it would NACK
/// fails here first).
#[test]
fn envoy_accepts_every_golden_configuration() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .expect("testdata/golden")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    cases.sort();
    let validate = envoy::validate;
    // Negative control: the harness must catch what Envoy refuses (here a
    // domain served by two virtual hosts).
    let (snapshot, gateways, _) = load_case(&golden_dir().join("seed-http.yaml"));
    let mut bad = gateway::generate(&snapshot, &gateways[0]).expect("generate");
    let vh = bad.routes[0].virtual_hosts[0].clone();
    bad.routes[0].virtual_hosts.push(vh);
    let file = tmp.path().join("bad.pb");
    std::fs::write(&file, static_bootstrap(&bad)).expect("write bootstrap");
    assert!(!validate(&file).status.success(), "Envoy accepted duplicate virtual hosts: the check proves nothing");

    let mut mtls_cases = 0;
    for case in &cases {
        let (snapshot, gateways, ingresses) = load_case(case);
        for name in &gateways {
            let mut config = config_of(&snapshot, &ingresses, name);
            if gateway::mesh_tls::of(&snapshot).is_some() && !name.starts_with("ingress:") {
                mtls_cases += 1;
                add_stand_in_mesh_secrets(&snapshot.mesh, &mut config);
            }
            let stem = case.file_stem().and_then(|s| s.to_str()).unwrap_or("case");
            let file = tmp.path().join(format!("{stem}-{}.pb", name.replace(':', "_")));
            std::fs::write(&file, static_bootstrap(&config)).expect("write bootstrap");
            let out = validate(&file);
            assert!(
                out.status.success(),
                "{} / {name}: Envoy rejects the configuration:\n{}{}",
                case.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    assert!(mtls_cases > 0, "no golden case has mesh mTLS on");
}

/// The SDS secrets the zone adds to every proxy of an mTLS mesh
/// (`identity_cert:secret:<mesh>`, `mesh_ca:secret:<mesh>`, and for
/// crossMesh listeners `mesh_ca:secret:all`), as stand-ins
/// made here: a CA and a leaf it signs with a SPIFFE URI SAN.
fn add_stand_in_mesh_secrets(mesh: &str, config: &mut gateway::ProxyConfig) {
    use envoy_types::pb::envoy::{
        config::core::v3::{DataSource, data_source::Specifier},
        extensions::transport_sockets::tls::v3::{CertificateValidationContext, Secret, TlsCertificate, secret},
    };
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
    let inline = |s: String| DataSource { specifier: Some(Specifier::InlineString(s)), ..Default::default() };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("CA");
    let mut leaf_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    let uri = format!("spiffe://{mesh}/web").try_into().expect("URI");
    leaf_params.subject_alt_names = vec![SanType::URI(uri)];
    let leaf_key = KeyPair::generate().expect("key");
    let leaf = leaf_params.signed_by(&leaf_key, &ca).expect("leaf");
    config.secrets.push(Secret {
        name: meridian_zone::mtls::identity_secret_name(mesh),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(leaf.pem())),
            private_key: Some(inline(leaf_key.serialize_pem())),
            ..Default::default()
        })),
    });
    // Every mesh's CA (crossMesh listeners): the same stand-in.
    for name in [meridian_zone::mtls::ca_secret_name(mesh), gateway::mesh_tls::ALL_MESHES_CA.to_string()] {
        config.secrets.push(Secret {
            name,
            r#type: Some(secret::Type::ValidationContext(CertificateValidationContext {
                trusted_ca: Some(inline(ca.pem())),
                ..Default::default()
            })),
        });
    }
}

fn render(snapshot: &MeshSnapshot, gateways: &[String], ingresses: &Ingresses) -> String {
    let mut out = String::new();
    for name in gateways {
        let config = config_of(snapshot, ingresses, name);
        match name.strip_prefix("ingress:") {
            Some(i) => out.push_str(&format!("## ZoneIngress {i}\n")),
            None => out.push_str(&format!("## Dataplane {name}\n")),
        }
        out.push_str(&dump::dump(&config));
    }
    out
}

#[test]
fn golden_files() {
    let bless = std::env::var("MERIDIAN_BLESS").is_ok_and(|v| v == "1");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .expect("testdata/golden")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 8, "golden cases missing: {cases:?}");
    let mut failures = Vec::new();
    for case in &cases {
        let (snapshot, gateways, ingresses) = load_case(case);
        assert!(!gateways.is_empty(), "{}: no gateway Dataplane", case.display());
        let got = render(&snapshot, &gateways, &ingresses);
        // Generation is a pure function: the same input gives the same bytes.
        assert_eq!(got, render(&snapshot, &gateways, &ingresses), "{}: not deterministic", case.display());
        let golden = case.with_extension("golden");
        if bless {
            std::fs::write(&golden, &got).expect("write golden");
            continue;
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        if want != got {
            failures.push(format!("{}: differs from {}", case.display(), golden.display()));
            let tmp = golden.with_extension("golden.actual");
            let _ = std::fs::write(&tmp, &got);
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(see the .golden.actual files; MERIDIAN_BLESS=1 rewrites the golden files)",
        failures.join("\n")
    );
}
