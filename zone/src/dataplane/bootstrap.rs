//! The Envoy bootstrap of a gateway Dataplane, as YAML.
//!
//! Its only static cluster is the zone's xDS server, reached over TLS by
//! default: an `UpstreamTlsContext` trusting the zone's xDS CA (inlined:
//! a CA certificate is public), verifying the server's subject alternative
//! name against the host Envoy dials (SNI too when it is a DNS name), with
//! ALPN `h2` (gRPC). Plaintext only when asked for (`--xds-plaintext`,
//! matching the zone's flag).

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};

/// Name of the static cluster pointing at the zone's xDS server.
pub const XDS_CLUSTER: &str = "meridian_xds";

/// TLS towards the zone's xDS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsTls {
    /// The CA certificate(s), PEM, Envoy trusts for the xDS server.
    pub ca_pem: String,
}

#[derive(Debug, Clone)]
pub struct BootstrapParams<'a> {
    pub mesh: &'a str,
    pub name: &'a str,
    /// The zone's xDS server: `host:port` (`[v6]:port` for IPv6), or a URL
    /// `https://`/`grpcs://host:port` (TLS) or `http://`/`grpc://host:port`
    /// (plaintext) as kuma-dp's `--cp-address` takes it.
    pub xds_address: &'a str,
    pub admin_address: SocketAddr,
    /// Delta ADS (`DELTA_GRPC`) or state of the world (`GRPC`).
    pub delta: bool,
    /// TLS to the xDS server; `None` is plaintext (`--xds-plaintext`).
    pub tls: Option<XdsTls>,
    /// The Dataplane token, sent by Envoy as the gRPC metadata
    /// `authorization` on its ADS stream (the raw token, as the incumbent's
    /// `kuma-dp` bootstrap does); `None` when the zone's xDS auth is off.
    pub token: Option<&'a str>,
}

/// The ADS `initial_metadata` carrying `token`, indented for the
/// `grpc_services` entry. A token holds only JWT characters (base64url and
/// dots): anything else is refused rather than written into the YAML.
fn token_metadata(token: Option<&str>) -> anyhow::Result<String> {
    let Some(token) = token.map(str::trim) else { return Ok(String::new()) };
    if token.is_empty() || !token.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        bail!(
            "the Dataplane token must be a JWT (letters, digits, '-', '_' and '.'); get one with 'meridianctl generate dataplane-token'"
        );
    }
    Ok(format!("\n      initial_metadata:\n      - {{ key: authorization, value: \"{token}\" }}"))
}

/// The xDS server's address, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsAddress {
    pub host: String,
    pub port: u16,
    /// What the scheme asked for: `Some(true)` for `https://`/`grpcs://`,
    /// `Some(false)` for `http://`/`grpc://`, `None` without a scheme.
    pub tls: Option<bool>,
}

/// Parses `host:port`, `[v6]:port`, optionally behind a scheme
/// (`https://`, `grpcs://`, `http://`, `grpc://`) and before a trailing `/`.
///
/// Errors name `--xds-address` and say what is wrong.
pub fn parse_xds_address(s: &str) -> anyhow::Result<XdsAddress> {
    let (tls, rest) = match s.split_once("://") {
        Some(("https" | "grpcs", rest)) => (Some(true), rest),
        Some(("http" | "grpc", rest)) => (Some(false), rest),
        Some((scheme, _)) => {
            bail!("--xds-address {s:?}: unknown scheme {scheme:?} (https://, grpcs://, http:// or grpc://, or none)")
        }
        None => (None, s),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let Some((host, port)) = rest.rsplit_once(':') else {
        bail!("--xds-address {s:?}: expected host:port");
    };
    let bracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    let host = bracketed.unwrap_or(host);
    if host.is_empty() || !host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_')) {
        bail!("--xds-address {s:?}: invalid host");
    }
    if host.contains(':') && (bracketed.is_none() || host.parse::<IpAddr>().is_err()) {
        bail!("--xds-address {s:?}: invalid host (an IPv6 address goes in brackets: [::1]:5678)");
    }
    let port: u16 = port.parse().map_err(|_| anyhow::anyhow!("--xds-address {s:?}: invalid port"))?;
    if port == 0 {
        bail!("--xds-address {s:?}: invalid port");
    }
    Ok(XdsAddress { host: host.to_string(), port, tls })
}

/// The default `--ca-cert`: the CA a zone generates into its default data
/// directory, `$HOME/.meridian/zone/xds-ca.crt`.
pub fn default_ca_path() -> PathBuf {
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".meridian").join("zone"))
        .unwrap_or_else(|| PathBuf::from(".meridian").join("zone"))
        .join("xds-ca.crt")
}

/// The transport a bootstrap uses: TLS trusting `ca_cert` (default
/// [`default_ca_path`]) unless `plaintext`.
///
/// Errors: an unreadable CA, a file holding no PEM certificate.
pub fn load_tls(plaintext: bool, ca_cert: Option<&Path>) -> anyhow::Result<Option<XdsTls>> {
    if plaintext {
        if let Some(p) = ca_cert {
            bail!("--xds-plaintext and --ca-cert {} contradict each other: drop one", p.display());
        }
        return Ok(None);
    }
    let (path, given) = match ca_cert {
        Some(p) => (p.to_path_buf(), true),
        None => (default_ca_path(), false),
    };
    let pem = std::fs::read_to_string(&path).with_context(|| {
        if given {
            format!("--ca-cert {}: cannot read the xDS CA", path.display())
        } else {
            format!(
                "cannot read the zone's xDS CA at {} (the default): give --ca-cert <zone data dir>/xds-ca.crt, or --xds-plaintext for a zone run with --xds-plaintext",
                path.display()
            )
        }
    })?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        bail!("--ca-cert {}: no PEM certificate in the file", path.display());
    }
    Ok(Some(XdsTls { ca_pem: pem }))
}

/// A YAML double-quoted scalar (JSON's escapes are YAML's).
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The static cluster's `transport_socket`: TLS to the xDS server.
fn transport_socket(tls: &XdsTls, host: &str) -> String {
    let ip = host.parse::<IpAddr>().is_ok();
    // SNI carries DNS names only (RFC 6066); an IP is verified as an IP SAN.
    let sni = if ip { String::new() } else { format!("\n        sni: {}", quoted(host)) };
    let san_type = if ip { "IP_ADDRESS" } else { "DNS" };
    format!(
        r#"
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext{sni}
        common_tls_context:
          alpn_protocols: [h2]
          tls_params: {{ tls_minimum_protocol_version: TLSv1_2 }}
          validation_context:
            trusted_ca: {{ inline_string: {ca} }}
            match_typed_subject_alt_names:
            - san_type: {san_type}
              matcher: {{ exact: {host} }}"#,
        ca = quoted(&tls.ca_pem),
        host = quoted(host),
    )
}

/// The bootstrap YAML. Names are validated by the caller (they hold no
/// character that needs quoting beyond the double quotes used here).
///
/// Errors: a bad `xds_address`, or a scheme that contradicts the
/// transport (`https://` without TLS, `http://` with it).
pub fn render(p: &BootstrapParams<'_>) -> anyhow::Result<String> {
    let addr = parse_xds_address(p.xds_address)?;
    match (addr.tls, &p.tls) {
        (Some(true), None) => {
            bail!("--xds-address {:?} asks for TLS, but --xds-plaintext is set; drop one of them", p.xds_address)
        }
        (Some(false), Some(_)) => bail!(
            "--xds-address {:?} asks for plaintext: add --xds-plaintext (and run the zone with --xds-plaintext), or use https://",
            p.xds_address
        ),
        _ => {}
    }
    let (xds_host, xds_port) = (&addr.host, addr.port);
    let node_id = crate::xds::node_id(p.mesh, p.name);
    let api_type = if p.delta { "DELTA_GRPC" } else { "GRPC" };
    let admin_ip = p.admin_address.ip();
    let admin_port = p.admin_address.port();
    let transport = p.tls.as_ref().map(|t| transport_socket(t, xds_host)).unwrap_or_default();
    let metadata = token_metadata(p.token)?;
    Ok(format!(
        r#"# Envoy bootstrap for Dataplane "{name}" in mesh "{mesh}" (generated by meridian-zone).
node:
  id: "{node_id}"
  cluster: "{name}"
admin:
  address:
    socket_address: {{ address: "{admin_ip}", port_value: {admin_port} }}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services:
    - envoy_grpc: {{ cluster_name: {XDS_CLUSTER} }}{metadata}
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
  - name: {XDS_CLUSTER}
    type: STRICT_DNS
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options:
            connection_keepalive: {{ interval: 30s, timeout: 10s }}
    upstream_connection_options:
      tcp_keepalive: {{ keepalive_time: 60 }}{transport}
    load_assignment:
      cluster_name: {XDS_CLUSTER}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: "{xds_host}", port_value: {xds_port} }}
"#,
        name = p.name,
        mesh = p.mesh,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\"x\n-----END CERTIFICATE-----\n";

    fn params(xds_address: &str, tls: bool) -> BootstrapParams<'_> {
        BootstrapParams {
            mesh: "default",
            name: "gateway-instance-1",
            xds_address,
            admin_address: "127.0.0.1:9901".parse().expect("addr"),
            delta: false,
            tls: tls.then(|| XdsTls { ca_pem: CA.to_string() }),
            token: None,
        }
    }

    #[test]
    fn bootstrap_names_the_dataplane_and_the_xds_server() {
        let y = render(&params("[::1]:5678", false)).expect("render");
        assert!(y.contains("id: \"default.gateway-instance-1\""));
        assert!(y.contains("api_type: GRPC"));
        assert!(y.contains("address: \"::1\", port_value: 5678"));
        assert!(!y.contains("transport_socket"), "plaintext has no TLS: {y}");
        assert!(render(&params("nope", false)).is_err());
    }

    #[test]
    fn tls_bootstrap_trusts_the_ca_and_verifies_the_name() {
        let y = render(&params("https://zone.example.com:5678", true)).expect("render");
        assert!(y.contains("envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"), "{y}");
        assert!(y.contains("sni: \"zone.example.com\""), "{y}");
        assert!(y.contains("alpn_protocols: [h2]"), "{y}");
        assert!(y.contains("san_type: DNS"), "{y}");
        assert!(y.contains("matcher: { exact: \"zone.example.com\" }"), "{y}");
        // The PEM is one escaped YAML string (quotes and newlines escaped).
        assert!(y.contains(r#"inline_string: "-----BEGIN CERTIFICATE-----\nMIIB\"x\n"#), "{y}");
        assert!(y.contains("address: \"zone.example.com\", port_value: 5678"), "{y}");

        // An IP: no SNI, an IP SAN.
        let y = render(&params("127.0.0.1:5678", true)).expect("render");
        assert!(!y.contains("sni:"), "{y}");
        assert!(y.contains("san_type: IP_ADDRESS"), "{y}");
        assert!(y.contains("matcher: { exact: \"127.0.0.1\" }"), "{y}");
        let y = render(&params("grpcs://[::1]:5678/", true)).expect("render");
        assert!(y.contains("exact: \"::1\""), "{y}");
    }

    #[test]
    fn the_scheme_must_agree_with_the_transport() {
        let e = render(&params("https://zone:5678", false)).expect_err("https without TLS");
        assert!(e.to_string().contains("--xds-plaintext is set"), "{e}");
        let e = render(&params("grpc://zone:5678", true)).expect_err("grpc:// with TLS");
        assert!(e.to_string().contains("add --xds-plaintext"), "{e}");
        assert!(render(&params("http://zone:5678", false)).is_ok());
        let e = render(&params("ftp://zone:5678", true)).expect_err("scheme");
        assert!(e.to_string().contains("unknown scheme \"ftp\""), "{e}");
        assert!(parse_xds_address("zone:0").is_err());
        assert!(parse_xds_address("::1:5678").is_err(), "an IPv6 host needs brackets");
        assert_eq!(
            parse_xds_address("grpcs://zone:5678").expect("parse"),
            XdsAddress { host: "zone".into(), port: 5678, tls: Some(true) }
        );
    }

    #[test]
    fn the_ca_is_read_or_the_error_names_the_flag() {
        let dir = tempfile::tempdir().expect("tmp");
        let missing = dir.path().join("none.crt");
        let e = load_tls(false, Some(&missing)).expect_err("missing");
        assert!(e.to_string().contains("--ca-cert"), "{e}");
        let junk = dir.path().join("junk.crt");
        std::fs::write(&junk, "hello").expect("write");
        let e = load_tls(false, Some(&junk)).expect_err("junk");
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        let good = dir.path().join("ca.crt");
        std::fs::write(&good, CA).expect("write");
        assert_eq!(load_tls(false, Some(&good)).expect("ca"), Some(XdsTls { ca_pem: CA.to_string() }));
        assert_eq!(load_tls(true, None).expect("plaintext"), None);
        assert!(load_tls(true, Some(&good)).is_err(), "plaintext with a CA contradicts");
    }

    #[test]
    fn the_token_goes_into_the_ads_metadata() {
        let p = params("[::1]:5678", false);
        let y = render(&p).expect("render");
        assert!(!y.contains("initial_metadata"));
        let with = render(&BootstrapParams { token: Some("eyJh.eyJi.c2ln\n"), ..p.clone() }).expect("render");
        assert!(
            with.contains("initial_metadata:\n      - { key: authorization, value: \"eyJh.eyJi.c2ln\" }"),
            "{with}"
        );
        assert!(render(&BootstrapParams { token: Some("a\"b"), ..p }).is_err(), "no YAML injection");
    }
}
