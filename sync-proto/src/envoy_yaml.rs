//! Envoy resources written as YAML or JSON (a ProxyTemplate's raw
//! resources and modification values) turned into envoy-types messages.
//!
//! envoy-types has no serde support, so the text goes through
//! `prost-reflect`: YAML → JSON value → `DynamicMessage` of the message's
//! descriptor (Envoy's proto3 JSON mapping: `snake_case` or `lowerCamel`
//! field names, durations as `"5s"`, `Any` with `@type`, unknown fields
//! refused) → protobuf bytes → the envoy-types message. The descriptors are
//! envoy-types 0.7.7's own file descriptor set (`envoy/envoy-types-0.7.7.bin`,
//! copied from the crate's `src/generated/types.bin`; replace it when
//! envoy-types is upgraded), so every Envoy extension type an `Any` may
//! name is known.
//!
//! Envoy's `protoc-gen-validate` rules are not checked here: a value that
//! breaks them parses, and Envoy NACKs it (reported like any NACK).

use std::sync::OnceLock;

use envoy_types::pb::envoy::{
    config::{
        cluster::v3::Cluster,
        listener::v3::{Filter, Listener},
        route::v3::VirtualHost,
    },
    extensions::filters::network::http_connection_manager::v3::HttpFilter,
};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};

/// envoy-types 0.7.7's file descriptor set.
static DESCRIPTORS: &[u8] = include_bytes!("../envoy/envoy-types-0.7.7.bin");

/// Full name of Envoy's cluster message.
pub const CLUSTER: &str = "envoy.config.cluster.v3.Cluster";
/// Full name of Envoy's listener message.
pub const LISTENER: &str = "envoy.config.listener.v3.Listener";

/// Full name of Envoy's HTTP filter message (an entry of an
/// HttpConnectionManager's `http_filters`).
pub const HTTP_FILTER: &str = "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter";

/// Full name of Envoy's virtual host message.
pub const VIRTUAL_HOST: &str = "envoy.config.route.v3.VirtualHost";
/// Full name of Envoy's network filter message (an entry of a filter
/// chain's `filters`).
pub const NETWORK_FILTER: &str = "envoy.config.listener.v3.Filter";

fn pool() -> Result<&'static DescriptorPool, String> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(DESCRIPTORS).map_err(|e| format!("Envoy descriptors: {e}")))
        .as_ref()
        .map_err(Clone::clone)
}

/// Parses YAML (JSON is YAML) into a JSON value.
fn parse(text: &str) -> Result<serde_json::Value, String> {
    serde_saphyr::from_str::<serde_json::Value>(text).map_err(|e| format!("not YAML: {e}"))
}

/// The protobuf encoding of `value` read as message `full_name` in Envoy's
/// proto3 JSON mapping; the error names the offending field.
fn encode(value: serde_json::Value, full_name: &str) -> Result<Vec<u8>, String> {
    let descriptor = pool()?.get_message_by_name(full_name).ok_or_else(|| format!("unknown message {full_name}"))?;
    let message = DynamicMessage::deserialize(descriptor, value).map_err(|e| e.to_string())?;
    Ok(message.encode_to_vec())
}

/// A YAML mapping as the protobuf encoding of message `full_name` (a
/// modification's value: no `@type`).
pub fn to_bytes(text: &str, full_name: &str) -> Result<Vec<u8>, String> {
    let value = parse(text)?;
    if !value.is_object() {
        return Err("must be a mapping".to_string());
    }
    encode(value, full_name)
}

/// A YAML cluster (no `@type`).
pub fn cluster(text: &str) -> Result<Cluster, String> {
    let bytes = to_bytes(text, CLUSTER)?;
    Cluster::decode(&bytes[..]).map_err(|e| e.to_string())
}

/// A YAML listener (no `@type`).
pub fn listener(text: &str) -> Result<Listener, String> {
    let bytes = to_bytes(text, LISTENER)?;
    Listener::decode(&bytes[..]).map_err(|e| e.to_string())
}

/// A YAML HTTP filter (`name`, `typed_config` with `@type`; no `@type` of
/// its own).
pub fn http_filter(text: &str) -> Result<HttpFilter, String> {
    let bytes = to_bytes(text, HTTP_FILTER)?;
    HttpFilter::decode(&bytes[..]).map_err(|e| e.to_string())
}

/// A YAML network filter (`name`, `typed_config` with `@type`).
pub fn network_filter(text: &str) -> Result<Filter, String> {
    let bytes = to_bytes(text, NETWORK_FILTER)?;
    Filter::decode(&bytes[..]).map_err(|e| e.to_string())
}

/// A YAML virtual host.
pub fn virtual_host(text: &str) -> Result<VirtualHost, String> {
    let bytes = to_bytes(text, VIRTUAL_HOST)?;
    VirtualHost::decode(&bytes[..]).map_err(|e| e.to_string())
}

/// A raw Envoy resource of a ProxyTemplate.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw {
    Cluster(Box<Cluster>),
    Listener(Box<Listener>),
}

/// A raw resource: a YAML mapping with `@type`
/// (`type.googleapis.com/envoy.config.cluster.v3.Cluster` or
/// `...listener.v3.Listener`; other types are not supported yet) and the
/// message's fields, as the incumbent's `ResourceFromYaml`.
pub fn raw(text: &str) -> Result<Raw, String> {
    let mut value = parse(text)?;
    let object = value.as_object_mut().ok_or_else(|| "must be a mapping".to_string())?;
    let ty = match object.remove("@type") {
        Some(serde_json::Value::String(t)) => t,
        Some(_) => return Err("@type must be a string".to_string()),
        None => return Err("@type is required".to_string()),
    };
    let name = ty.rsplit('/').next().unwrap_or_default();
    match name {
        CLUSTER => {
            let bytes = encode(value, CLUSTER)?;
            Cluster::decode(&bytes[..]).map(|c| Raw::Cluster(Box::new(c))).map_err(|e| e.to_string())
        }
        LISTENER => {
            let bytes = encode(value, LISTENER)?;
            Listener::decode(&bytes[..]).map(|l| Raw::Listener(Box::new(l))).map_err(|e| e.to_string())
        }
        other => Err(format!("@type {other:?} is not supported by Meridian yet (supported: {CLUSTER}, {LISTENER})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_becomes_envoy_messages() {
        let c = cluster("name: extra\nconnect_timeout: 2.5s\ntype: STATIC\nperConnectionBufferLimitBytes: 1024\n")
            .expect("a cluster");
        assert_eq!(c.name, "extra");
        assert_eq!(c.connect_timeout.map(|d| (d.seconds, d.nanos)), Some((2, 500_000_000)));
        assert_eq!(c.per_connection_buffer_limit_bytes.map(|v| v.value), Some(1024));
        let e = cluster("name: x\nno_such_field: 1\n").expect_err("unknown field");
        assert!(e.contains("no_such_field"), "{e}");
        let r = raw("\"@type\": type.googleapis.com/envoy.config.listener.v3.Listener\nname: l\n").expect("a listener");
        assert!(matches!(r, Raw::Listener(l) if l.name == "l"));
        let e = raw("\"@type\": type.googleapis.com/envoy.config.route.v3.RouteConfiguration\nname: r\n")
            .expect_err("routes are not supported yet");
        assert!(e.contains("not supported by Meridian yet"), "{e}");
        assert!(raw("name: x\n").expect_err("no @type").contains("@type is required"));
    }
}
