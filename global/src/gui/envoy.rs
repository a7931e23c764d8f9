//! A gateway Dataplane's Envoy configuration on its GUI page: fetched
//! through the global's inspect path ([`crate::inspect::ask`], the code of
//! `GET /meshes/{mesh}/dataplanes/{name}/xds`), summarised (listeners with
//! their addresses, route configurations with their virtual hosts and
//! routes, clusters by name) and shown raw in a collapsible block.
//!
//! No secret material reaches the page: before anything is rendered,
//! [`redact`] removes private keys, passwords, session ticket keys, generic
//! and HMAC secrets and every SDS secret's body (Envoy's `SecretsConfigDump`
//! keeps their names), and any string holding a PEM private key.
//! When the zone or the Envoy admin cannot be reached, the inspect route's
//! 502/504 status and reason are shown instead.

use maud::{Markup, html};
use meridian_sync_proto::envoy_admin::{AdminKind, AdminQuery};
use serde_json::Value;

use super::GuiState;

/// What replaces a removed secret value.
pub const REMOVED: &str = "[removed by Meridian: secret material never reaches the GUI]";

/// Keys whose values are secret wherever they appear in a config dump
/// (Envoy's `TlsCertificate.private_key`/`password`, `TlsSessionTicketKeys`,
/// `GenericSecret`, the HMAC secret of OAuth2, and a `SecretsConfigDump`
/// entry's `secret`).
const SECRET_KEYS: &[&str] =
    &["private_key", "password", "session_ticket_keys", "generic_secret", "hmac_secret", "secret"];

/// Replaces every secret value of `v` (see [`SECRET_KEYS`], and any string
/// holding `PRIVATE KEY`) by [`REMOVED`], in place.
pub fn redact(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for (k, child) in o.iter_mut() {
                if SECRET_KEYS.contains(&k.as_str()) {
                    *child = Value::String(REMOVED.to_string());
                } else {
                    redact(child);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(redact),
        Value::String(s) if s.contains("PRIVATE KEY") => *s = REMOVED.to_string(),
        _ => {}
    }
}

/// The Envoy config section of Dataplane `mesh`/`name`'s page.
pub async fn section(s: &GuiState, mesh: &str, name: &str) -> Markup {
    let asked = crate::inspect::ask(&s.api, &s.admin, mesh, name, &AdminQuery::default(), AdminKind::XdsConfig).await;
    let body = match asked {
        Ok((_, bytes)) => match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) => Ok(v),
            Err(e) => Err(format!("the zone's answer is not JSON: {e}")),
        },
        Err(e) => Err(format!("{} {}: {}", e.status.as_u16(), e.title, e.details)),
    };
    html! {
        section #envoy {
            h2 { "Envoy config" }
            p.note { "Envoy's config dump, asked through the zone (what " code { "GET /meshes/" (mesh) "/dataplanes/" (name) "/xds" } " answers), secret material removed." }
            @match body {
                Err(reason) => p.error.envoy-error { "The Envoy config cannot be shown: " (reason) },
                Ok(mut dump) => {
                    (redact_and_render(&mut dump))
                }
            }
        }
    }
}

/// The items of every `configs` entry whose `@type` ends in `suffix`.
fn dumps<'a>(dump: &'a Value, suffix: &str) -> impl Iterator<Item = &'a Value> {
    let suffix = suffix.to_string();
    dump.get("configs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(move |c| c.get("@type").and_then(Value::as_str).is_some_and(|t| t.ends_with(&suffix)))
}

/// `field` of every item of the arrays `lists` of `config`, through `path`.
fn items<'a>(config: &'a Value, lists: &[&str], path: &[&str]) -> Vec<&'a Value> {
    let mut out = Vec::new();
    for list in lists {
        for item in config.get(*list).and_then(Value::as_array).into_iter().flatten() {
            let mut v = Some(item);
            for p in path {
                v = v.and_then(|x| x.get(*p));
            }
            out.extend(v);
        }
    }
    out
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("-")
}

fn address(l: &Value) -> String {
    let sa = l.get("address").and_then(|a| a.get("socket_address"));
    match sa {
        Some(sa) => format!("{}:{}", str_of(sa, "address"), sa.get("port_value").and_then(Value::as_u64).unwrap_or(0)),
        None => "-".to_string(),
    }
}

/// A route's match as text: `prefix /shop`, `path /x`, `regex ...`.
fn route_match(r: &Value) -> String {
    let m = r.get("match");
    for key in ["prefix", "path", "path_separated_prefix"] {
        if let Some(p) = m.and_then(|m| m.get(key)).and_then(Value::as_str) {
            return format!("{key} {p}");
        }
    }
    match m.and_then(|m| m.get("safe_regex")).and_then(|r| r.get("regex")).and_then(Value::as_str) {
        Some(re) => format!("regex {re}"),
        None => "-".to_string(),
    }
}

/// Where a route sends: its cluster(s), a redirect or a direct response.
fn route_action(r: &Value) -> String {
    if let Some(a) = r.get("route") {
        if let Some(c) = a.get("cluster").and_then(Value::as_str) {
            return c.to_string();
        }
        if let Some(ws) = a.get("weighted_clusters").and_then(|w| w.get("clusters")).and_then(Value::as_array) {
            return ws
                .iter()
                .map(|w| format!("{} ({})", str_of(w, "name"), w.get("weight").and_then(Value::as_u64).unwrap_or(0)))
                .collect::<Vec<_>>()
                .join(", ");
        }
    }
    if r.get("redirect").is_some() {
        return "redirect".to_string();
    }
    if let Some(d) = r.get("direct_response") {
        return format!("direct response {}", d.get("status").and_then(Value::as_u64).unwrap_or(0));
    }
    "-".to_string()
}

fn redact_and_render(dump: &mut Value) -> Markup {
    redact(dump);
    let raw = serde_json::to_string_pretty(dump).unwrap_or_default();
    let listeners: Vec<(&Value, Option<&str>)> = dumps(dump, "ListenersConfigDump")
        .flat_map(|c| {
            let mut l: Vec<(&Value, Option<&str>)> =
                items(c, &["static_listeners"], &["listener"]).into_iter().map(|x| (x, None)).collect();
            for d in c.get("dynamic_listeners").and_then(Value::as_array).into_iter().flatten() {
                for (state, label) in [("active_state", None), ("warming_state", Some("warming"))] {
                    if let Some(x) = d.get(state).and_then(|s| s.get("listener")) {
                        l.push((x, label));
                    }
                }
                if let Some(e) = d.get("error_state") {
                    l.push((d, Some(e.get("details").and_then(Value::as_str).unwrap_or("rejected"))));
                }
            }
            l
        })
        .collect();
    let routes: Vec<&Value> = dumps(dump, "RoutesConfigDump")
        .flat_map(|c| items(c, &["static_route_configs", "dynamic_route_configs"], &["route_config"]))
        .collect();
    let clusters: Vec<&Value> = dumps(dump, "ClustersConfigDump")
        .flat_map(|c| {
            items(c, &["static_clusters", "dynamic_active_clusters", "dynamic_warming_clusters"], &["cluster"])
        })
        .collect();
    html! {
        @if let Some(e) = dump.get("envoyError").and_then(Value::as_str) {
            p.error.envoy-error { "Envoy's admin: " (e) }
        }
        h3 { "Listeners (" (listeners.len()) ")" }
        ul { @for (l, note) in &listeners {
            li.listener data-name=(str_of(l, "name")) { code { (str_of(l, "name")) } " on " (address(l))
                @if let Some(n) = note { " " span.reason { (n) } } }
        } }
        h3 { "Route configurations (" (routes.len()) ")" }
        ul { @for rc in &routes {
            li.route-config data-name=(str_of(rc, "name")) { code { (str_of(rc, "name")) }
                ul { @for vh in rc.get("virtual_hosts").and_then(Value::as_array).into_iter().flatten() {
                    li { "virtual host " code { (str_of(vh, "name")) } ", domains "
                        (vh.get("domains").and_then(Value::as_array).map(|d| d.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default())
                        ul { @for r in vh.get("routes").and_then(Value::as_array).into_iter().flatten() {
                            li.route { (route_match(r)) " → " (route_action(r)) }
                        } }
                    }
                } }
            }
        } }
        h3 { "Clusters (" (clusters.len()) ")" }
        ul { @for c in &clusters { li.cluster { code { (str_of(c, "name")) } " " (str_of(c, "type")) } } }
        details #envoy-raw {
            summary { "Raw config dump (secret material removed)" }
            pre { code { (raw) } }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n";

    fn dump() -> Value {
        json!({"configs": [
            {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "dynamic_listeners": [
                {"name": "edge:HTTP:8080", "active_state": {"listener": {"name": "edge:HTTP:8080",
                    "address": {"socket_address": {"address": "0.0.0.0", "port_value": 8080}},
                    "filter_chains": [{"transport_socket": {"typed_config": {"common_tls_context": {"tls_certificates": [
                        {"certificate_chain": {"inline_string": "CERT"}, "private_key": {"inline_string": KEY}}]}}}}]}}},
                {"name": "bad", "error_state": {"details": "cannot bind 0.0.0.0:80"}}]},
            {"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump", "dynamic_route_configs": [
                {"route_config": {"name": "edge:HTTP:8080", "virtual_hosts": [{"name": "*", "domains": ["*"],
                    "routes": [{"match": {"prefix": "/shop"}, "route": {"cluster": "demo"}}]}]}}]},
            {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "dynamic_active_clusters": [
                {"cluster": {"name": "demo", "type": "EDS"}}]},
            {"@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump", "dynamic_active_secrets": [
                {"name": "edge-credentials", "secret": {"name": "edge-credentials", "tls_certificate": {
                    "private_key": {"inline_bytes": "c2VjcmV0LWtleS1ieXRlcw=="}, "password": {"inline_string": "hunter2"}}}}]},
            {"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump", "note": KEY}
        ], "meridian": {"connected": true}})
    }

    #[test]
    fn secret_material_is_removed_and_the_summary_shows_listeners_routes_and_clusters() {
        let html = redact_and_render(&mut dump()).into_string();
        for secret in ["PRIVATE KEY", "MIIEvQ", "c2VjcmV0LWtleS1ieXRlcw", "hunter2"] {
            assert!(!html.contains(secret), "{secret} reached the page: {html}");
        }
        assert!(html.contains(REMOVED), "{html}");
        assert!(html.contains("edge-credentials"), "secret names are kept: {html}");
        assert!(html.contains("edge:HTTP:8080</code> on 0.0.0.0:8080"), "{html}");
        assert!(html.contains("cannot bind 0.0.0.0:80"), "{html}");
        assert!(html.contains("prefix /shop → demo"), "{html}");
        assert!(html.contains("<li class=\"cluster\"><code>demo</code> EDS"), "{html}");
        assert!(html.contains("CERT"), "certificates are public and kept: {html}");
    }

    #[test]
    fn an_envoy_error_is_shown() {
        let html =
            redact_and_render(&mut json!({"envoyError": "Envoy's admin at http://x did not answer"})).into_string();
        assert!(html.contains("did not answer") && html.contains("Listeners (0)"), "{html}");
    }
}
