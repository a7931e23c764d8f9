//! `get` (one resource or every page of a list) and `delete`.

use meridian_sync_proto::{ResourceType, universal};
use serde_json::{Value, json};

use crate::{
    cli::{DeleteArgs, GetArgs, Output},
    client::Client,
    documents::{id, segments},
    error::{CtlError, EXIT_OK},
    out,
    table::{self, age, now_millis, str_field},
};

/// `meshgateways`, `meshgateway` or `MeshGateway` → the type.
pub fn resource_type(s: &str) -> Result<ResourceType, CtlError> {
    ResourceType::parse_loose(s).ok_or_else(|| {
        let known: Vec<&str> = ResourceType::ALL.iter().map(|t| t.plural()).collect();
        CtlError::input(format!("unknown resource type {s:?}; known types: {}", known.join(", ")))
    })
}

pub async fn get(client: &Client, args: &GetArgs) -> Result<u8, CtlError> {
    let ty = resource_type(&args.resource_type)?;
    match &args.name {
        Some(name) => {
            let segs = segments(ty, &args.mesh, name);
            let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
            let reply = client.get(&segs).await?;
            print_items(ty, &[reply.body], args.output, false);
        }
        None => {
            let list_segs: Vec<&str> = if ty.is_mesh_scoped() && !args.all_meshes {
                vec!["meshes", &args.mesh, ty.plural()]
            } else {
                vec![ty.plural()]
            };
            let (items, _) = client.list_all(&list_segs, args.page_size).await?;
            if ty == ResourceType::ZoneIngress && matches!(args.output, Output::Table) {
                // With each one's proxy status, from the ZoneIngressInsights.
                let plural = ResourceType::ZoneIngressInsight.plural();
                let (insights, _) = client.list_all(&[plural], args.page_size).await?;
                out::text(&zone_ingress_table(&items, &insights, now_millis()));
                return Ok(EXIT_OK);
            }
            print_items(ty, &items, args.output, true);
        }
    }
    Ok(EXIT_OK)
}

pub async fn delete(client: &Client, args: &DeleteArgs) -> Result<u8, CtlError> {
    let ty = resource_type(&args.resource_type)?;
    let segs = segments(ty, &args.mesh, &args.name);
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    client.delete(&segs).await?;
    out::line(&format!("deleted {ty} {}", id(ty, &args.mesh, &args.name)));
    Ok(EXIT_OK)
}

/// Prints resources: a table, YAML documents separated by `---` (ready for
/// `apply -f -`), or JSON (one object, or `{"total", "items"}` for a list).
fn print_items(ty: ResourceType, items: &[Value], output: Output, is_list: bool) {
    match output {
        Output::Table => out::text(&table_of(ty, items, now_millis())),
        Output::Yaml => out::text(&yaml_stream(items)),
        Output::Json if is_list => out::json(&json!({ "total": items.len(), "items": items })),
        Output::Json => out::json(items.first().unwrap_or(&Value::Null)),
    }
}

/// Values as a YAML stream, one document per value.
pub fn yaml_stream(items: &[Value]) -> String {
    items.iter().map(universal::value_to_yaml).collect::<Vec<_>>().join("---\n")
}

/// The `kumactl get` table of a type; zone resources also show their
/// display name and zone ([`table::render_named`]).
pub fn table_of(ty: ResourceType, items: &[Value], now: i64) -> String {
    let created = |v: &Value| age(v.get("creationTime").and_then(Value::as_str), now);
    let (headers, rows): (&[&str], Vec<Vec<String>>) = match ty {
        ResourceType::Mesh => (
            &["NAME", "mTLS", "AGE"],
            items.iter().map(|v| vec![str_field(v, "name").into(), mtls(v), created(v)]).collect(),
        ),
        ResourceType::Dataplane => (
            &["MESH", "NAME", "TAGS", "AGE"],
            items
                .iter()
                .map(|v| vec![str_field(v, "mesh").into(), str_field(v, "name").into(), dataplane_tags(v), created(v)])
                .collect(),
        ),
        ResourceType::Zone => (
            &["NAME", "ENABLED", "AGE"],
            items
                .iter()
                .map(|v| {
                    let enabled = v.get("enabled").and_then(Value::as_bool).unwrap_or(true);
                    vec![str_field(v, "name").into(), enabled.to_string(), created(v)]
                })
                .collect(),
        ),
        t if t.is_mesh_scoped() => (
            &["MESH", "NAME", "AGE"],
            items.iter().map(|v| vec![str_field(v, "mesh").into(), str_field(v, "name").into(), created(v)]).collect(),
        ),
        _ => (&["NAME", "AGE"], items.iter().map(|v| vec![str_field(v, "name").into(), created(v)]).collect()),
    };
    table::render_named(headers, rows, items)
}

/// The ZoneIngress table: where other zones reach each one, and whether
/// its proxy is connected (`Online`: a subscription in its
/// ZoneIngressInsight without a disconnect time; `Offline`: all closed;
/// `-`: no proxy ever connected).
pub fn zone_ingress_table(items: &[Value], insights: &[Value], now: i64) -> String {
    let status = |name: &str| {
        let Some(insight) = insights.iter().find(|i| str_field(i, "name") == name) else { return "-".to_string() };
        let subs = insight.get("subscriptions").and_then(Value::as_array).cloned().unwrap_or_default();
        if subs.iter().any(|s| s.get("disconnectTime").is_none_or(Value::is_null)) {
            "Online".to_string()
        } else {
            "Offline".to_string()
        }
    };
    let rows = items
        .iter()
        .map(|v| {
            let name = str_field(v, "name");
            let address = v.pointer("/networking/advertisedAddress").and_then(Value::as_str).unwrap_or_default();
            let port = v.pointer("/networking/advertisedPort").and_then(Value::as_u64).unwrap_or_default();
            let advertised = if address.is_empty() { "-".to_string() } else { format!("{address}:{port}") };
            vec![name.into(), advertised, status(name), age(v.get("creationTime").and_then(Value::as_str), now)]
        })
        .collect();
    table::render_named(&["NAME", "ADVERTISED", "STATUS", "AGE"], rows, items)
}

/// `builtin/ca-1` for the enabled mTLS backend, `off` without one.
fn mtls(mesh: &Value) -> String {
    let enabled = mesh.pointer("/mtls/enabledBackend").and_then(Value::as_str).unwrap_or_default();
    if enabled.is_empty() {
        return "off".into();
    }
    let backend_type = mesh
        .pointer("/mtls/backends")
        .and_then(Value::as_array)
        .and_then(|bs| bs.iter().find(|b| str_field(b, "name") == enabled))
        .map(|b| str_field(b, "type"))
        .filter(|t| !t.is_empty());
    match backend_type {
        Some(t) => format!("{t}/{enabled}"),
        None => enabled.to_string(),
    }
}

/// A Dataplane's gateway tags, or the tags of its inbounds.
pub fn dataplane_tags(dataplane: &Value) -> String {
    if let Some(gw) = dataplane.pointer("/networking/gateway") {
        return table::tags(gw.get("tags"));
    }
    let mut merged = serde_json::Map::new();
    for inbound in dataplane.pointer("/networking/inbound").and_then(Value::as_array).into_iter().flatten() {
        if let Some(t) = inbound.get("tags").and_then(Value::as_object) {
            merged.extend(t.clone());
        }
    }
    table::tags(Some(&Value::Object(merged)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_parse_loosely() {
        for s in ["meshgateways", "meshgateway", "MeshGateway"] {
            assert_eq!(resource_type(s).ok(), Some(ResourceType::MeshGateway));
        }
        let e = resource_type("gateways").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("unknown resource type \"gateways\""), "{e}");
    }

    #[test]
    fn both_spellings_name_a_type_and_the_incumbents_goes_on_the_wire() {
        for (spellings, ty, wire) in [
            (["zone-insights", "zoneinsights"], ResourceType::ZoneInsight, "zone-insights"),
            (["dataplane-insights", "dataplaneinsights"], ResourceType::DataplaneInsight, "dataplane-insights"),
            (["zoneingresses", "zone-ingresses"], ResourceType::ZoneIngress, "zoneingresses"),
            (["global-secrets", "globalsecrets"], ResourceType::GlobalSecret, "global-secrets"),
        ] {
            for s in spellings {
                let got = resource_type(s).ok();
                assert_eq!(got, Some(ty), "{s}");
                assert_eq!(got.map(ResourceType::plural), Some(wire), "{s}");
            }
        }
        assert_eq!(segments(ResourceType::ZoneInsight, "default", "zone-1"), ["zone-insights", "zone-1"]);
    }

    #[test]
    fn tables() {
        let now = 1_795_000_060_000;
        let gw = json!({"type": "MeshGateway", "mesh": "default", "name": "edge", "creationTime": "2026-11-18T11:06:40.000Z"});
        assert_eq!(table_of(ResourceType::MeshGateway, &[gw], now), "MESH      NAME   AGE\ndefault   edge   60s\n");
        let mesh = json!({"type": "Mesh", "name": "default", "mtls": {"enabledBackend": "ca-1",
            "backends": [{"name": "ca-1", "type": "builtin"}]}});
        assert!(table_of(ResourceType::Mesh, &[mesh], now).contains("builtin/ca-1"));
        let dp = json!({"type": "Dataplane", "mesh": "default", "name": "gw-1",
            "networking": {"address": "10.0.0.1", "gateway": {"tags": {"kuma.io/service": "edge"}}}});
        assert!(table_of(ResourceType::Dataplane, &[dp], now).contains("kuma.io/service=edge"));
        let synced = json!({"type": "Dataplane", "mesh": "default", "name": "gateway-instance-1-bcdd994zxbvwfv24",
            "labels": {"kuma.io/display-name": "gateway-instance-1", "kuma.io/zone": "zone-1", "kuma.io/origin": "zone"},
            "networking": {"address": "10.0.0.1", "gateway": {"tags": {"kuma.io/service": "edge"}}}});
        let t = table_of(ResourceType::Dataplane, &[synced], now);
        let lines: Vec<Vec<&str>> =
            t.lines().map(|l| l.split("   ").map(str::trim).filter(|c| !c.is_empty()).collect()).collect();
        assert_eq!(lines[0], ["MESH", "NAME", "DISPLAY NAME", "ZONE", "TAGS", "AGE"]);
        assert_eq!(
            lines[1],
            [
                "default",
                "gateway-instance-1-bcdd994zxbvwfv24",
                "gateway-instance-1",
                "zone-1",
                "kuma.io/service=edge",
                "-"
            ]
        );
    }

    #[test]
    fn yaml_streams_read_back() {
        let items = vec![json!({"type": "Mesh", "name": "a"}), json!({"type": "Mesh", "name": "b"})];
        let text = yaml_stream(&items);
        let back = universal::parse_documents(&text).expect("yaml");
        assert_eq!(back, items);
    }
}
