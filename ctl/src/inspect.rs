//! `inspect zones` and `inspect dataplanes`: resources joined with their
//! insights, from the `_overview` endpoints; `inspect dataplane NAME
//! --type config-dump|stats|clusters`: one Envoy's admin output through its
//! zone; `inspect meshgateways` and `inspect meshes`: views joined here
//! from plain lists.

use serde_json::{Value, json};

use crate::{
    cli::{InspectArgs, InspectDataplaneArgs, InspectMeshArgs, InspectType, Output},
    client::Client,
    error::{CtlError, EXIT_OK},
    get::{dataplane_tags, yaml_stream},
    out,
    table::{self, age, now_millis, str_field, u64_at},
};

/// Page size for overview requests.
const PAGE_SIZE: u64 = 100;

pub async fn zones(client: &Client, args: &InspectArgs) -> Result<u8, CtlError> {
    let (items, _) = client.list_all(&["zones", "_overview"], PAGE_SIZE).await?;
    print(&items, args.output, |items| zones_table(items, now_millis()));
    Ok(EXIT_OK)
}

pub async fn dataplanes(client: &Client, args: &InspectMeshArgs) -> Result<u8, CtlError> {
    let (items, _) = client.list_all(&["meshes", &args.mesh, "dataplanes", "_overview"], PAGE_SIZE).await?;
    print(&items, args.out.output, |items| dataplanes_table(items, now_millis()));
    Ok(EXIT_OK)
}

/// `inspect dataplane NAME --type ...`: prints the zone's answer as it came
/// (Envoy's text, or JSON); a zone that does not answer is exit 2 (504).
pub async fn dataplane(client: &Client, args: &InspectDataplaneArgs) -> Result<u8, CtlError> {
    let segment = match args.inspect_type {
        InspectType::ConfigDump => "xds",
        InspectType::Stats => "stats",
        InspectType::Clusters => "clusters",
    };
    let mut url = client.url(&["meshes", &args.mesh, "dataplanes", &args.name, segment]);
    match args.inspect_type {
        InspectType::ConfigDump if args.include_eds => url.set_query(Some("include_eds=true")),
        InspectType::Stats | InspectType::Clusters if args.json => url.set_query(Some("format=json")),
        _ => {}
    }
    let reply = client.send(reqwest::Method::GET, url, None).await?;
    out::text(reply.text.trim_end());
    Ok(EXIT_OK)
}

/// Whether every pair of `selector` is in `tags`.
fn selects(selector: &Value, tags: &serde_json::Map<String, Value>) -> bool {
    selector.as_object().is_some_and(|m| m.iter().all(|(k, v)| tags.get(k) == Some(v)))
}

/// The `match` maps of a resource's `selectors`.
fn selector_matches(resource: &Value) -> Vec<&Value> {
    resource.get("selectors").and_then(Value::as_array).into_iter().flatten().filter_map(|s| s.get("match")).collect()
}

/// `inspect meshgateways`: per MeshGateway its listeners
/// (`PROTOCOL:port[/hostname]`), the routes whose selectors pick it (a
/// route selector matches when its tags are among the gateway's selector
/// and listener tags, as the incumbent attaches routes to listeners), and
/// the builtin gateway Dataplanes it selects, as `zone/name`.
pub async fn meshgateways(client: &Client, args: &InspectMeshArgs) -> Result<u8, CtlError> {
    let mesh = ["meshes", args.mesh.as_str()];
    let (gateways, _) = client.list_all(&[mesh[0], mesh[1], "meshgateways"], PAGE_SIZE).await?;
    let (routes, _) = client.list_all(&[mesh[0], mesh[1], "meshgatewayroutes"], PAGE_SIZE).await?;
    let (dataplanes, _) = client.list_all(&[mesh[0], mesh[1], "dataplanes"], PAGE_SIZE).await?;
    let items: Vec<Value> = gateways.iter().map(|g| gateway_view(g, &routes, &dataplanes)).collect();
    print(&items, args.out.output, meshgateways_table);
    Ok(EXIT_OK)
}

/// One MeshGateway joined with its routes and Dataplanes.
pub fn gateway_view(gateway: &Value, routes: &[Value], dataplanes: &[Value]) -> Value {
    let listeners: Vec<&Value> =
        gateway.pointer("/conf/listeners").and_then(Value::as_array).into_iter().flatten().collect();
    let listener_names: Vec<String> = listeners
        .iter()
        .map(|l| {
            let host = l.get("hostname").and_then(Value::as_str).filter(|h| !h.is_empty() && *h != "*");
            format!(
                "{}:{}{}",
                l.get("protocol").and_then(Value::as_str).unwrap_or("HTTP"),
                l.get("port").and_then(Value::as_u64).unwrap_or(0),
                host.map(|h| format!("/{h}")).unwrap_or_default()
            )
        })
        .collect();
    // The tags a route may select the gateway by: each selector's, plus each listener's.
    let mut tag_sets: Vec<serde_json::Map<String, Value>> = Vec::new();
    for sel in selector_matches(gateway) {
        let Some(base) = sel.as_object() else { continue };
        tag_sets.push(base.clone());
        for l in &listeners {
            if let Some(t) = l.get("tags").and_then(Value::as_object) {
                let mut m = base.clone();
                m.extend(t.clone());
                tag_sets.push(m);
            }
        }
    }
    let attached: Vec<String> = routes
        .iter()
        .filter(|r| selector_matches(r).iter().any(|sel| tag_sets.iter().any(|tags| selects(sel, tags))))
        .map(|r| str_field(r, "name").to_string())
        .collect();
    let serving: Vec<String> = dataplanes
        .iter()
        .filter(|d| {
            let Some(gw) = d.pointer("/networking/gateway") else { return false };
            let builtin = gw.get("type").and_then(Value::as_str) == Some("BUILTIN");
            let tags = gw.get("tags").and_then(Value::as_object);
            builtin && tags.is_some_and(|t| selector_matches(gateway).iter().any(|sel| selects(sel, t)))
        })
        .map(|d| {
            let zone = d.pointer("/labels/kuma.io~1zone").and_then(Value::as_str).unwrap_or("-");
            let name =
                d.pointer("/labels/kuma.io~1display-name").and_then(Value::as_str).unwrap_or(str_field(d, "name"));
            format!("{zone}/{name}")
        })
        .collect();
    json!({
        "mesh": str_field(gateway, "mesh"),
        "name": str_field(gateway, "name"),
        "listeners": listener_names,
        "routes": attached,
        "dataplanes": serving,
    })
}

fn joined(v: &Value, key: &str) -> String {
    let items: Vec<&str> =
        v.get(key).and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    if items.is_empty() { "-".to_string() } else { items.join(",") }
}

/// NAME, LISTENERS, ROUTES, DATAPLANES (`zone/name`).
pub fn meshgateways_table(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|g| {
            vec![str_field(g, "name").to_string(), joined(g, "listeners"), joined(g, "routes"), joined(g, "dataplanes")]
        })
        .collect();
    table::render(&["NAME", "LISTENERS", "ROUTES", "DATAPLANES"], &rows)
}

/// `inspect meshes`: each Mesh's enabled mTLS backend and how many
/// Dataplanes, MeshGateways and MeshGatewayRoutes it holds.
pub async fn meshes(client: &Client, args: &InspectArgs) -> Result<u8, CtlError> {
    let (meshes, _) = client.list_all(&["meshes"], PAGE_SIZE).await?;
    let mut items = Vec::new();
    for m in &meshes {
        let name = str_field(m, "name");
        let mut counts = serde_json::Map::new();
        for plural in ["dataplanes", "meshgateways", "meshgatewayroutes"] {
            let (_, total) = client.list_all(&["meshes", name, plural], PAGE_SIZE).await?;
            counts.insert(plural.to_string(), json!(total));
        }
        let mtls = m.pointer("/mtls/enabledBackend").and_then(Value::as_str).filter(|b| !b.is_empty());
        items.push(json!({"name": name, "mtls": mtls, "counts": counts}));
    }
    print(&items, args.output, |items| {
        let rows: Vec<Vec<String>> = items
            .iter()
            .map(|m| {
                let count =
                    |k: &str| m.pointer(&format!("/counts/{k}")).and_then(Value::as_u64).unwrap_or(0).to_string();
                vec![
                    str_field(m, "name").to_string(),
                    text_or_dash(m.get("mtls")),
                    count("dataplanes"),
                    count("meshgateways"),
                    count("meshgatewayroutes"),
                ]
            })
            .collect();
        table::render(&["NAME", "MTLS", "DATAPLANES", "GATEWAYS", "ROUTES"], &rows)
    });
    Ok(EXIT_OK)
}

fn print(items: &[Value], output: Output, table: impl Fn(&[Value]) -> String) {
    match output {
        Output::Table => out::text(&table(items)),
        Output::Yaml => out::text(&yaml_stream(items)),
        Output::Json => out::json(&json!({ "total": items.len(), "items": items })),
    }
}

/// The subscriptions of an insight, oldest first.
fn subscriptions(insight: Option<&Value>) -> &[Value] {
    insight.and_then(|i| i.get("subscriptions")).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// Sum of a counter over every subscription.
fn total(subs: &[Value], pointer: &str) -> String {
    subs.iter().map(|s| u64_at(s, pointer)).sum::<u64>().to_string()
}

fn text_or_dash(v: Option<&Value>) -> String {
    v.and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or("-").to_string()
}

/// NAME, STATUS (the server's `online` verdict), LAST CONNECTED AGO, the
/// update counters and the zone control plane's version.
pub fn zones_table(items: &[Value], now: i64) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|z| {
            let subs = subscriptions(z.get("zoneInsight"));
            let last = subs.last();
            let enabled = z.pointer("/zone/enabled").and_then(Value::as_bool).unwrap_or(true);
            let online = z.get("online").and_then(Value::as_bool).unwrap_or(false);
            let status = match (enabled, online) {
                (false, _) => "Disabled",
                (true, true) => "Online",
                (true, false) => "Offline",
            };
            vec![
                str_field(z, "name").to_string(),
                status.to_string(),
                last_connected(last, now),
                total(subs, "/status/total/responsesSent"),
                total(subs, "/status/total/responsesRejected"),
                text_or_dash(last.and_then(|s| s.pointer("/version/kumaCp/version"))),
            ]
        })
        .collect();
    table::render(
        &["NAME", "STATUS", "LAST CONNECTED AGO", "TOTAL UPDATES SENT", "TOTAL REJECTED UPDATES", "ZONE-CP VERSION"],
        &rows,
    )
}

/// MESH, NAME (with DISPLAY NAME and ZONE for zone resources,
/// [`table::render_named`]), TAGS, STATUS (connected without
/// disconnecting), ages and counters of the xDS subscriptions, and versions.
pub fn dataplanes_table(items: &[Value], now: i64) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|d| {
            let subs = subscriptions(d.get("dataplaneInsight"));
            let last = subs.last();
            let online = last.is_some_and(|s| s.get("connectTime").is_some() && s.get("disconnectTime").is_none());
            vec![
                str_field(d, "mesh").to_string(),
                str_field(d, "name").to_string(),
                d.get("dataplane").map_or_else(|| "-".to_string(), dataplane_tags),
                if online { "Online" } else { "Offline" }.to_string(),
                last_connected(last, now),
                last.map_or_else(
                    || "never".to_string(),
                    |s| age(s.pointer("/status/lastUpdateTime").and_then(Value::as_str), now),
                ),
                total(subs, "/status/total/responsesSent"),
                total(subs, "/status/total/responsesRejected"),
                text_or_dash(last.and_then(|s| s.pointer("/version/kumaDp/version"))),
                text_or_dash(last.and_then(|s| s.pointer("/version/envoy/version"))),
            ]
        })
        .collect();
    table::render_named(
        &[
            "MESH",
            "NAME",
            "TAGS",
            "STATUS",
            "LAST CONNECTED AGO",
            "LAST UPDATED AGO",
            "TOTAL UPDATES",
            "TOTAL ERRORS",
            "KUMA-DP",
            "ENVOY",
        ],
        rows,
        items,
    )
}

fn last_connected(last: Option<&Value>, now: i64) -> String {
    match last.and_then(|s| s.get("connectTime")).and_then(Value::as_str) {
        Some(t) => age(Some(t), now),
        None => "never".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_rows() {
        let now = 1_795_000_060_000;
        let items = vec![
            json!({"name": "z1", "online": true, "zone": {"enabled": true}, "zoneInsight": {"subscriptions": [
                {"connectTime": "2026-11-18T11:06:40Z", "disconnectTime": "2026-11-18T11:06:50Z",
                 "status": {"total": {"responsesSent": "3", "responsesRejected": "1"}}},
                {"connectTime": "2026-11-18T11:06:40Z", "version": {"kumaCp": {"version": "0.1.0"}},
                 "status": {"total": {"responsesSent": "4"}}}]}}),
            json!({"name": "z2", "online": false, "zone": {"enabled": false}, "zoneInsight": {}}),
        ];
        let t = zones_table(&items, now);
        let lines: Vec<Vec<&str>> =
            t.lines().map(|l| l.split("   ").map(str::trim).filter(|c| !c.is_empty()).collect()).collect();
        assert_eq!(lines[1], ["z1", "Online", "60s", "7", "1", "0.1.0"]);
        assert_eq!(lines[2], ["z2", "Disabled", "never", "0", "0", "-"]);
    }

    #[test]
    fn dataplane_rows() {
        let items = vec![json!({"mesh": "default", "name": "gw-1",
            "dataplane": {"networking": {"address": "10.0.0.1", "gateway": {"type": "BUILTIN", "tags": {"kuma.io/service": "edge"}}}},
            "dataplaneInsight": {"subscriptions": [{"connectTime": "2026-11-18T11:06:40Z",
                "status": {"lastUpdateTime": "2026-11-18T11:07:00Z", "total": {"responsesSent": "5"}},
                "version": {"envoy": {"version": "1.36.0"}}}]}})];
        let t = dataplanes_table(&items, 1_795_000_060_000);
        let row = t.lines().nth(1).unwrap_or_default();
        for part in ["default", "gw-1", "kuma.io/service=edge", "Online", "60s", "40s", "5", "1.36.0"] {
            assert!(row.contains(part), "{part} missing in {row}");
        }
    }
}
