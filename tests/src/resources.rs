//! Resources in universal JSON, as users write them.

use serde_json::{Value, json};

pub fn mesh(name: &str) -> Value {
    json!({"type": "Mesh", "name": name})
}

/// A MeshGateway in mesh `default` with one HTTP listener on `port`.
pub fn gateway(name: &str, port: u32) -> Value {
    json!({
        "type": "MeshGateway", "mesh": "default", "name": name,
        "selectors": [{"match": {"kuma.io/service": format!("{name}-svc")}}],
        "conf": {"listeners": [{"port": port, "protocol": "HTTP", "hostname": "foo.example.com",
                                "tags": {"port": format!("http/{port}")}}]}
    })
}

/// A MeshGatewayRoute in mesh `default` routing `/` of `gateway` to `backend`.
pub fn route(name: &str, gateway: &str, backend: &str) -> Value {
    json!({
        "type": "MeshGatewayRoute", "mesh": "default", "name": name,
        "selectors": [{"match": {"kuma.io/service": format!("{gateway}-svc")}}],
        "conf": {"http": {"rules": [{
            "matches": [{"path": {"match": "PREFIX", "value": "/"}}],
            "backends": [{"destination": {"kuma.io/service": backend}}]
        }]}}
    })
}

/// A service-proxy Dataplane in mesh `default`.
pub fn dataplane(name: &str, address: &str, service: &str) -> Value {
    json!({
        "type": "Dataplane", "mesh": "default", "name": name,
        "networking": {"address": address, "inbound": [{"port": 9000, "tags": {"kuma.io/service": service}}]}
    })
}

/// A builtin-gateway Dataplane in mesh `default`.
pub fn gateway_dataplane(name: &str, address: &str, service: &str) -> Value {
    json!({
        "type": "Dataplane", "mesh": "default", "name": name,
        "networking": {"address": address, "gateway": {"type": "BUILTIN", "tags": {"kuma.io/service": service}}}
    })
}

/// The first listener port of a MeshGateway as the API shows it.
pub fn listener_port(gateway: &Value) -> Option<u64> {
    gateway["conf"]["listeners"][0]["port"].as_u64()
}

/// `labels[key]` of a resource as the API shows it.
pub fn label<'a>(resource: &'a Value, key: &str) -> Option<&'a str> {
    resource["labels"][key].as_str()
}

/// The gateway (one HTTP listener on `port`, any host) and a route sending
/// `prefix` to `backend`, as a user applies them at the global
/// (universal YAML, two documents).
pub fn gateway_and_route_yaml(port: u16, prefix: &str, backend: &str) -> String {
    format!(
        r#"
type: MeshGateway
mesh: default
name: edge
selectors: [{{match: {{kuma.io/service: edge}}}}]
conf: {{listeners: [{{port: {port}, protocol: HTTP}}]}}
---
type: MeshGatewayRoute
mesh: default
name: edge-route
selectors: [{{match: {{kuma.io/service: edge}}}}]
conf:
  http:
    rules:
    - matches: [{{path: {{match: PREFIX, value: {prefix}}}}}]
      backends: [{{destination: {{kuma.io/service: {backend}}}}}]
"#
    )
}
