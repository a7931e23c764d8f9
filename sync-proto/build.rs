//! Compiles Meridian's .proto files with protox (no protoc).
//!
//! Two passes, because one package map cannot serve both worlds:
//! - the resource specs (Mesh, MeshGateway, ...) get prost types plus pbjson
//!   serde impls, so the universal YAML/JSON format is the proto3 JSON mapping
//!   (both field spellings accepted, enums by name); their well-known types come
//!   from `pbjson_types`.
//! - the KDS envelope and service import Envoy's discovery messages, which come
//!   from `envoy-types` (never generated twice), well-known types included.

use std::{env, path::PathBuf};

type BoxError = Box<dyn std::error::Error>;

const RESOURCE_PROTOS: &[&str] = &[
    "kuma/mesh/v1alpha1/selector.proto",
    "kuma/mesh/v1alpha1/http_method.proto",
    "kuma/mesh/v1alpha1/mesh.proto",
    "kuma/mesh/v1alpha1/gateway.proto",
    "kuma/mesh/v1alpha1/gateway_route.proto",
    "kuma/mesh/v1alpha1/dataplane.proto",
    "kuma/mesh/v1alpha1/dataplane_insight.proto",
    "kuma/mesh/v1alpha1/zone_ingress.proto",
    "kuma/mesh/v1alpha1/timeout.proto",
    "kuma/mesh/v1alpha1/retry.proto",
    "kuma/mesh/v1alpha1/circuit_breaker.proto",
    "kuma/mesh/v1alpha1/health_check.proto",
    "kuma/mesh/v1alpha1/rate_limit.proto",
    "kuma/mesh/v1alpha1/fault_injection.proto",
    "kuma/mesh/v1alpha1/traffic_permission.proto",
    "kuma/mesh/v1alpha1/traffic_log.proto",
    "kuma/mesh/v1alpha1/proxy_template.proto",
    "kuma/system/v1alpha1/datasource.proto",
    "kuma/system/v1alpha1/secret.proto",
    "kuma/system/v1alpha1/zone.proto",
    "kuma/system/v1alpha1/zone_insight.proto",
];

fn main() -> Result<(), BoxError> {
    println!("cargo:rerun-if-changed=proto");
    let out = PathBuf::from(env::var("OUT_DIR")?);
    resources(&out.join("resources"))?;
    kds(&out.join("kds"))?;
    Ok(())
}

fn resources(out: &PathBuf) -> Result<(), BoxError> {
    std::fs::create_dir_all(out)?;
    let fds =
        protox::Compiler::new(["proto"])?.include_imports(true).open_files(RESOURCE_PROTOS)?.file_descriptor_set();
    let bytes = prost::Message::encode_to_vec(&fds);
    tonic_prost_build::configure()
        .out_dir(out)
        .build_client(false)
        .build_server(false)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .btree_map(".")
        .compile_fds(fds)?;
    pbjson_build::Builder::new().out_dir(out).register_descriptors(&bytes)?.btree_map(["."]).build(&[".kuma"])?;
    Ok(())
}

fn kds(out: &PathBuf) -> Result<(), BoxError> {
    std::fs::create_dir_all(out)?;
    let fds = protox::Compiler::new(["proto"])?
        .include_imports(true)
        .open_files(["kuma/kds/kds.proto"])?
        .file_descriptor_set();
    let mut builder = tonic_prost_build::configure()
        .out_dir(out)
        .build_client(true)
        .build_server(true)
        .compile_well_known_types(true)
        .btree_map(".");
    for pkg in ["envoy", "google", "xds", "udpa", "validate"] {
        builder = builder.extern_path(format!(".{pkg}"), format!("::envoy_types::pb::{pkg}"));
    }
    builder.compile_fds(fds)?;
    Ok(())
}
