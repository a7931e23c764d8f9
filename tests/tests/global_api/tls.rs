//! The REST API over HTTPS (`--api-tls-cert`/`--api-tls-key`), and
//! meridianctl trusting a private CA with `--ca-cert`.

use meridian_tests::{Backend, GlobalSpec, Topology};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

#[tokio::test]
async fn api_over_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("CA");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("cert");
    let (ca_path, cert_path, key_path) =
        (dir.path().join("ca.pem"), dir.path().join("api.pem"), dir.path().join("api.key"));
    std::fs::write(&ca_path, ca.pem()).expect("write");
    std::fs::write(&cert_path, cert.pem()).expect("write");
    std::fs::write(&key_path, key.serialize_pem()).expect("write");

    let topo = Topology::builder("global-api-tls")
        .global_spec(GlobalSpec { api_tls: Some((cert_path, key_path)), ..GlobalSpec::on(Backend::Sqlite) })
        .start()
        .await;
    let g = topo.global();
    assert!(g.api_url().starts_with("https://"), "{}", g.api_url());
    let ca = ca_path.to_string_lossy().to_string();
    g.ctl().args(["--ca-cert", &ca, "apply", "-f", "-"]).run_stdin("type: Mesh\nname: default\n").await.ok();
    let out = g.ctl().args(["--ca-cert", &ca, "get", "meshes", "-o", "json"]).run().await.ok();
    assert!(out.stdout.contains("\"default\""), "{}", out.stdout);
    // Without the CA the certificate is not trusted: nothing is sent.
    let refused = g.ctl().args(["get", "meshes"]).run().await.expect_code(2);
    assert!(!refused.stderr.is_empty());
    // A context keeps the CA it was added with (kumactl's spelling here):
    // later calls need neither --api-url nor --ca-cert.
    let ctl = meridian_tests::ctl::Ctl::new();
    ctl.with(["--ca-cert", &ca, "config", "control-planes", "add", "--name", "tls", "--address", g.api_url()])
        .run()
        .await
        .ok();
    let listed = ctl.with(["config", "control-planes", "list"]).run().await.ok();
    assert!(listed.stdout.contains(&ca) && listed.stdout.contains("*"), "{}", listed.stdout);
    let out = ctl.with(["get", "meshes", "-o", "json"]).run().await.ok();
    assert!(out.stdout.contains("\"default\""), "the context's CA is used: {}", out.stdout);
    // Plain HTTP to the TLS port gets no API answer either.
    let plain = g.api_url().replacen("https://", "http://", 1);
    let out = g.ctl().args(["--api-url", &plain, "get", "meshes"]).run().await;
    assert_ne!(out.code, 0, "plain HTTP answered on the TLS port: {}", out.stdout);
}
