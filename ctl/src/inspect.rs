//! `inspect zones` and `inspect dataplanes`: resources joined with their
//! insights, from the `_overview` endpoints.

use serde_json::{Value, json};

use crate::{
    cli::{InspectArgs, InspectMeshArgs, Output},
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
/// disconnecting), ages and counters of the xDS subscriptions, the number
/// of generator warnings (`status.generatorWarnings`), and versions.
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
                // What the generator left out or found unused (policies
                // that apply nowhere included); `-o yaml` lists them.
                last.and_then(|s| s.pointer("/status/generatorWarnings"))
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
                    .to_string(),
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
            "WARNINGS",
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
                "status": {"lastUpdateTime": "2026-11-18T11:07:00Z", "total": {"responsesSent": "5"},
                           "generatorWarnings": ["Retry \"r\" selects this gateway but ...", "w2", "w3"]},
                "version": {"envoy": {"version": "1.36.0"}}}]}})];
        let t = dataplanes_table(&items, 1_795_000_060_000);
        let row = t.lines().nth(1).unwrap_or_default();
        assert!(t.lines().next().unwrap_or_default().contains("WARNINGS"), "{t}");
        for part in ["default", "gw-1", "kuma.io/service=edge", "Online", "60s", "40s", "5", "   3   ", "1.36.0"] {
            assert!(row.contains(part), "{part} missing in {row}");
        }
    }
}
