use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::extensions::{GeneralName, ParsedExtension};

use super::*;

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn ders(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes()).map(|c| c.expect("cert")).collect()
}

fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, BTreeSet<String>> {
    let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (k, v) in pairs {
        m.entry((*k).to_string()).or_default().insert((*v).to_string());
    }
    m
}

/// Verifies `chain` (leaf first) as a TLS client certificate against `root`.
fn verifies(root: &str, chain: &str, now: SystemTime) -> Result<(), rustls::Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for c in ders(root) {
        roots.add(c).expect("root");
    }
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots)).build().expect("verifier");
    let chain = ders(chain);
    let now = UnixTime::since_unix_epoch(now.duration_since(SystemTime::UNIX_EPOCH).expect("epoch"));
    verifier.verify_client_cert(&chain[0], &chain[1..], now).map(|_| ())
}

fn uris_and_ca(der: &[u8]) -> (Vec<String>, Option<(bool, Option<u32>)>) {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("parse");
    let mut uris = Vec::new();
    let mut ca = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for n in &san.general_names {
                    if let GeneralName::URI(u) = n {
                        uris.push((*u).to_string());
                    }
                }
            }
            ParsedExtension::BasicConstraints(bc) => ca = Some((bc.ca, bc.path_len_constraint)),
            _ => {}
        }
    }
    (uris, ca)
}

#[test]
fn identity_uris_are_the_incumbents() {
    let t = tags(&[("kuma.io/service", "web"), ("kuma.io/service", "api"), ("version", "v1"), ("kuma.io/zone", "z")]);
    assert_eq!(
        identity_uris("default", &t),
        [
            "spiffe://default/api",
            "spiffe://default/web",
            "kuma://kuma.io/service/api",
            "kuma://kuma.io/service/web",
            "kuma://kuma.io/zone/z",
            "kuma://version/v1",
        ]
    );
}

#[test]
fn root_intermediate_and_identity_form_a_verified_chain() {
    let now = SystemTime::now();
    let root = root_ca("default", now, DEFAULT_ROOT_LIFETIME).expect("root");
    let (uris, ca) = uris_and_ca(&ders(&root.cert_pem)[0]);
    assert_eq!(uris, ["spiffe://default"]);
    assert_eq!(ca, Some((true, None)));

    let zone1 = ZoneCa {
        intermediate: intermediate_ca(&root, "default", "zone-1", now, INTERMEDIATE_LIFETIME).expect("im"),
        root_cert_pem: root.cert_pem.clone(),
    };
    let (uris, ca) = uris_and_ca(&ders(&zone1.intermediate.cert_pem)[0]);
    assert_eq!(uris, ["spiffe://default"]);
    assert_eq!(ca, Some((true, Some(0))), "the intermediate signs leaves only");

    // The zone's bundle survives the trip through a Secret.
    let back = ZoneCa::from_pem(zone1.to_pem().as_bytes()).expect("bundle");
    assert_eq!(back.root_cert_pem, zone1.root_cert_pem);
    assert_eq!(back.intermediate.cert_pem, zone1.intermediate.cert_pem);
    let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).expect("epoch").as_secs();
    assert_eq!(secs(back.intermediate.not_after), secs(zone1.intermediate.not_after));

    let leaf =
        identity(&back, "default", &tags(&[("kuma.io/service", "web")]), now, DEFAULT_IDENTITY_LIFETIME).expect("leaf");
    let chain = ders(&leaf.cert_pem);
    assert_eq!(chain.len(), 2, "leaf then intermediate");
    let (uris, ca) = uris_and_ca(&chain[0]);
    assert_eq!(uris, ["spiffe://default/web", "kuma://kuma.io/service/web"]);
    assert!(ca.is_none_or(|(is_ca, _)| !is_ca));
    verifies(&root.cert_pem, &leaf.cert_pem, now).expect("the chain verifies to the root");

    // A leaf of zone-2's intermediate is trusted by the same root.
    let zone2 = ZoneCa {
        intermediate: intermediate_ca(&root, "default", "zone-2", now, INTERMEDIATE_LIFETIME).expect("im"),
        root_cert_pem: root.cert_pem.clone(),
    };
    let leaf2 = identity(&zone2, "default", &tags(&[("kuma.io/service", "api")]), now, DEFAULT_IDENTITY_LIFETIME)
        .expect("leaf");
    verifies(&root.cert_pem, &leaf2.cert_pem, now).expect("zone-2's leaf verifies too");

    // Another mesh's root does not trust it; an expired leaf does not verify.
    let other = root_ca("other", now, DEFAULT_ROOT_LIFETIME).expect("root");
    assert!(verifies(&other.cert_pem, &leaf.cert_pem, now).is_err());
    assert!(verifies(&root.cert_pem, &leaf.cert_pem, now + DEFAULT_IDENTITY_LIFETIME * 2).is_err());
    // A leaf alone (without the intermediate) does not verify to the root.
    let leaf_only = pem::encode(&pem::Pem::new("CERTIFICATE", chain[0].to_vec()));
    assert!(verifies(&root.cert_pem, &leaf_only, now).is_err());
}

#[test]
fn lifetimes_never_outlive_the_issuer() {
    let now = SystemTime::now();
    let root = root_ca("default", now, Duration::from_secs(3600)).expect("root");
    let im = intermediate_ca(&root, "default", "z", now, INTERMEDIATE_LIFETIME).expect("im");
    assert!(im.not_after <= root.not_after);
    let ca = ZoneCa { intermediate: im, root_cert_pem: root.cert_pem };
    let leaf =
        identity(&ca, "default", &tags(&[("kuma.io/service", "a")]), now, DEFAULT_IDENTITY_LIFETIME).expect("leaf");
    assert!(leaf.not_after <= ca.intermediate.not_after);
}

#[test]
fn rotation_is_due_at_four_fifths_of_the_lifetime() {
    let issued = t(1000);
    let expires = t(1000 + 100);
    assert!(!rotation_due(issued, expires, t(1000)));
    assert!(!rotation_due(issued, expires, t(1079)));
    assert!(rotation_due(issued, expires, t(1080)));
    assert!(rotation_due(issued, expires, t(2000)));
    // A clock before the issue time, or a certificate with no lifetime.
    assert!(rotation_due(issued, expires, t(999)));
    assert!(rotation_due(issued, issued, t(1000)));
}

#[test]
fn a_bundle_without_its_key_or_certificates_is_refused() {
    let now = SystemTime::now();
    let root = root_ca("m", now, DEFAULT_ROOT_LIFETIME).expect("root");
    assert!(ZoneCa::from_pem(root.cert_pem.as_bytes()).is_err());
    assert!(ZoneCa::from_pem(format!("{}{}", root.cert_pem, root.key_pem).as_bytes()).is_err());
    assert!(ZoneCa::from_pem(b"garbage").is_err());
}

/// ADVERSARY F1: `conf.caCert.expiration: 100000y` made `root_ca` panic
/// (rcgen's date type ends at year 9999), killing the global on every start.
#[test]
fn a_lifetime_past_year_9999_ends_at_9999() {
    let now = SystemTime::now();
    let far = Duration::from_secs(100_000 * 365 * 24 * 3600);
    let root = root_ca("default", now, far).expect("root");
    let latest = SystemTime::UNIX_EPOCH + Duration::from_secs(LATEST_NOT_AFTER_UNIX_SECS);
    assert_eq!(root.not_after, latest);
    let der = ders(&root.cert_pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der[0]).expect("x509");
    assert_eq!(cert.validity().not_after.timestamp(), i64::try_from(LATEST_NOT_AFTER_UNIX_SECS).expect("fits"));
    let im = intermediate_ca(&root, "default", "z", now, far).expect("im");
    let ca = ZoneCa { intermediate: im, root_cert_pem: root.cert_pem.clone() };
    let leaf = identity(&ca, "default", &tags(&[("kuma.io/service", "a")]), now, far).expect("leaf");
    assert_eq!(leaf.not_after, latest);
    verifies(&root.cert_pem, &leaf.cert_pem, now).expect("the chain verifies");
}
