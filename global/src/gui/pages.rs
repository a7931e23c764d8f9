//! The GUI's HTML, with maud: every interpolated value (`(x)` in `html!`)
//! is HTML-escaped, so names, labels and tags from users or zones cannot
//! inject markup. No page ever holds Secret data: Secrets are listed by
//! name, and their YAML drops `data`.

use std::collections::BTreeMap;

use maud::{DOCTYPE, Markup, html};
use meridian_core::{Entry, liveness::now_millis};
use meridian_rest::ApiState;
use meridian_sync_proto::{
    ResourceType, Spec,
    pb::{mesh::DataplaneInsight, system::ZoneInsight},
    universal,
};

use super::status::{Source, Status, listener_tags, selectors_match};

type StoreResult<T> = Result<T, meridian_core::ManagerError>;

/// The page around `body`: header, navigation, `<main data-live>` (what
/// the script refreshes) and the script.
pub fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Meridian" }
                link rel="icon" href="data:,";
                link rel="stylesheet" href="/gui/assets/gui.css";
                script src="/gui/assets/gui.js" defer {}
            }
            body {
                header {
                    a.brand href="/gui" { "Meridian" }
                    nav { a href="/gui/zones" { "Zones" } " " a href="/gui/meshes" { "Meshes" } }
                    span #live-state { "live updates off (no JavaScript)" }
                }
                main data-live=(super::REFRESH_MILLIS) { (body) }
            }
        }
    }
}

/// A page saying what went wrong (404, 503).
pub fn error_page(title: &str, details: &str) -> Markup {
    layout(title, html! { h1 { (title) } p.error { (details) } })
}

/// The login form (`POST /gui/login`), with why it is shown.
pub fn login(reason: &str) -> Markup {
    layout(
        "Sign in",
        html! {
            h1 { "Sign in" }
            p.reason { (reason) }
            form method="post" action="/gui/login" {
                label for="token" { "Admin token" }
                " "
                input #token type="password" name="token" autocomplete="current-password" required;
                " "
                button type="submit" { "Sign in" }
            }
        },
    )
}

fn ts(t: Option<&pbjson_types::Timestamp>) -> String {
    t.map_or_else(|| "-".to_string(), |t| universal::rfc3339_millis(t.seconds * 1000 + i64::from(t.nanos) / 1_000_000))
}

fn labels(meta: &meridian_sync_proto::Meta) -> Markup {
    html! {
        @for (k, v) in &meta.labels { span.label { (k) "=" (v) } " " }
    }
}

fn tags(t: &BTreeMap<String, String>) -> Markup {
    html! {
        @for (k, v) in t { span.tag { (k) ": " (v) } " " }
    }
}

fn resource_href(e: &Entry) -> String {
    let ty = e.resource.resource_type();
    let m = &e.resource.meta;
    if ty.is_mesh_scoped() {
        format!("/gui/meshes/{}/{}/{}", m.mesh, ty.plural(), m.name)
    } else {
        format!("/gui/{}/{}", ty.plural(), m.name)
    }
}

fn state_badge(state: &str) -> Markup {
    html! { span class={ "state state-" (state) } { (state) } }
}

/// `/gui`: the zones (from Zone and ZoneInsight) and the meshes.
pub async fn home(s: &ApiState) -> StoreResult<Markup> {
    let m = &s.manager;
    let (zones, _) = m.list(ResourceType::Zone, None, BTreeMap::new(), 0, None).await?;
    let (insights, _) = m.list(ResourceType::ZoneInsight, None, BTreeMap::new(), 0, None).await?;
    let beats = m.heartbeats().await?;
    let insights: BTreeMap<&str, &ZoneInsight> = insights
        .iter()
        .filter_map(|e| match &e.resource.spec {
            Spec::ZoneInsight(zi) => Some((e.resource.meta.name.as_str(), zi)),
            _ => None,
        })
        .collect();
    let (meshes, _) = m.list(ResourceType::Mesh, None, BTreeMap::new(), 0, None).await?;
    let now = now_millis();
    Ok(html! {
        h1 { "Global " small { (s.info.hostname) " · " (s.info.instance_id) " · v" (s.info.version) } }
        section #zones {
            h2 { "Zones (" (zones.len()) ")" }
            @if zones.is_empty() {
                p { "No zone yet. " code { "meridianctl generate zone-token --zone zone-1" } ", then run the zone with it." }
            }
            @for z in &zones {
                @let name = z.resource.meta.name.as_str();
                @let insight = insights.get(name).copied();
                @let sub = insight.and_then(|i| i.subscriptions.last());
                @let online = insight.is_some_and(|i| beats.zone_online(i, now));
                div.zone data-zone=(name) data-online=(online) {
                    h3 {
                        a href=(resource_href(z)) { (name) } " "
                        span class={ "state " (if online { "state-Online" } else { "state-Offline" }) } {
                            (if online { "online" } else { "offline" })
                        }
                    }
                    dl {
                        dt { (if online { "connected since" } else { "disconnected since" }) }
                        dd { (ts(sub.and_then(|s| if online { s.connect_time.as_ref() } else { s.disconnect_time.as_ref().or(s.connect_time.as_ref()) }))) }
                        dt { "version" }
                        dd { (sub.and_then(|s| s.version.as_ref()).and_then(|v| v.kuma_cp.as_ref()).map_or("-", |v| v.version.as_str())) }
                        dt { "global instance" }
                        dd { (sub.map_or("-", |s| s.global_instance_id.as_str())) }
                        dt { "labels" } dd { (labels(&z.resource.meta)) }
                    }
                    @if let Some(status) = sub.and_then(|s| s.status.as_ref()) {
                        table.stats {
                            thead { tr { th { "type" } th { "sent" } th { "ACKed" } th { "NACKed" } th { "last NACK reason" } } }
                            tbody {
                                @for (ty, st) in &status.stat {
                                    tr { td { (ty) } td { (st.responses_sent) } td { (st.responses_acknowledged) }
                                         td { (st.responses_rejected) } td.reason { (st.last_nack_reason) } }
                                }
                            }
                        }
                    }
                }
            }
        }
        section #meshes {
            h2 { "Meshes (" (meshes.len()) ")" }
            ul {
                @for mesh in &meshes {
                    li { a.mesh href={ "/gui/meshes/" (mesh.resource.meta.name) } { (mesh.resource.meta.name) } " " (labels(&mesh.resource.meta)) }
                }
            }
        }
    })
}

/// `/gui/meshes/{mesh}`: MeshGateways (listeners, attached routes, the
/// Dataplanes serving each per zone), MeshGatewayRoutes, Dataplanes by
/// zone (health, last ACK/NACK) and Secrets by name; `None` without such mesh.
pub async fn mesh(s: &ApiState, mesh: &str) -> StoreResult<Option<Markup>> {
    let m = &s.manager;
    let Some(mesh_entry) = m.get(ResourceType::Mesh, "", mesh).await? else { return Ok(None) };
    let list = |ty| m.list(ty, Some(mesh), BTreeMap::new(), 0, None);
    let (gateways, _) = list(ResourceType::MeshGateway).await?;
    let (routes, _) = list(ResourceType::MeshGatewayRoute).await?;
    let (dps, _) = list(ResourceType::Dataplane).await?;
    let (insights, _) = list(ResourceType::DataplaneInsight).await?;
    let (secrets, _) = list(ResourceType::Secret).await?;
    let insights: BTreeMap<&str, &DataplaneInsight> = insights
        .iter()
        .filter_map(|e| match &e.resource.spec {
            Spec::DataplaneInsight(i) => Some((e.resource.meta.name.as_str(), i)),
            _ => None,
        })
        .collect();
    let gateway_tags = |e: &Entry| match &e.resource.spec {
        Spec::Dataplane(d) => d.networking.as_ref().and_then(|n| n.gateway.as_ref()).map(|g| g.tags.clone()),
        _ => None,
    };
    let zone_of = |e: &Entry| e.resource.meta.labels.get("kuma.io/zone").cloned().unwrap_or_else(|| "(global)".into());
    let mut by_zone: BTreeMap<String, Vec<&Entry>> = BTreeMap::new();
    for d in &dps {
        by_zone.entry(zone_of(d)).or_default().push(d);
    }
    Ok(Some(html! {
        h1 { "Mesh " a href=(resource_href(&mesh_entry)) { (mesh) } " " (labels(&mesh_entry.resource.meta)) }
        section #gateways {
            h2 { "MeshGateways (" (gateways.len()) ")" }
            table {
                thead { tr { th { "name" } th { "listeners" } th { "attached routes" } th { "Dataplanes serving it, per zone" } } }
                tbody {
                    @for g in &gateways {
                        @if let Spec::MeshGateway(spec) = &g.resource.spec {
                            @let serving: Vec<&Entry> = dps.iter().filter(|d| gateway_tags(d).is_some_and(|t| selectors_match(&spec.selectors, &t))).collect();
                            @let attached: Vec<&Entry> = routes.iter().filter(|r| match &r.resource.spec {
                                Spec::MeshGatewayRoute(rs) => serving.iter().filter_map(|d| gateway_tags(d)).chain(spec.selectors.iter().map(|s| s.r#match.clone()))
                                    .any(|t| listener_tags(&t, std::slice::from_ref(g)).iter().any(|lt| selectors_match(&rs.selectors, lt))),
                                _ => false,
                            }).collect();
                            tr.gateway data-name=(g.resource.meta.name) {
                                td { a href=(resource_href(g)) { (g.resource.meta.name) } br; (labels(&g.resource.meta)) }
                                td { ul { @for l in spec.conf.iter().flat_map(|c| &c.listeners) {
                                    li { (l.protocol().as_str_name()) " :" (l.port) @if !l.hostname.is_empty() { " " (l.hostname) } " " (tags(&l.tags)) }
                                } } }
                                td { ul { @for r in &attached { li { a href=(resource_href(r)) { (r.resource.meta.name) } } } } }
                                td { ul { @for d in &serving { li { (zone_of(d)) ": " a href=(resource_href(d)) { (d.resource.meta.name) } } } } }
                            }
                        }
                    }
                }
            }
        }
        section #routes {
            h2 { "MeshGatewayRoutes (" (routes.len()) ")" }
            table {
                thead { tr { th { "name" } th { "selectors" } th { "labels" } } }
                tbody {
                    @for r in &routes {
                        tr.route data-name=(r.resource.meta.name) {
                            td { a href=(resource_href(r)) { (r.resource.meta.name) } }
                            td { @if let Spec::MeshGatewayRoute(rs) = &r.resource.spec { @for sel in &rs.selectors { (tags(&sel.r#match)) br; } } }
                            td { (labels(&r.resource.meta)) }
                        }
                    }
                }
            }
        }
        section #dataplanes {
            h2 { "Dataplanes (" (dps.len()) ")" }
            @for (zone, list) in &by_zone {
                h3 { "Zone " (zone) }
                table {
                    thead { tr { th { "name" } th { "kind" } th { "health" } th { "last ACK/NACK" } th { "labels" } } }
                    tbody { @for d in list { (dataplane_row(d, insights.get(d.resource.meta.name.as_str()).copied())) } }
                }
            }
        }
        section #secrets {
            h2 { "Secrets (" (secrets.len()) ", names only)" }
            ul { @for sec in &secrets { li.secret { a href=(resource_href(sec)) { (sec.resource.meta.name) } } } }
        }
    }))
}

fn dataplane_row(d: &Entry, insight: Option<&DataplaneInsight>) -> Markup {
    let Spec::Dataplane(spec) = &d.resource.spec else { return html! {} };
    let net = spec.networking.as_ref();
    let kind = match net.and_then(|n| n.gateway.as_ref()) {
        Some(g) => format!("gateway ({})", g.r#type().as_str_name().to_ascii_lowercase()),
        None => "sidecar".to_string(),
    };
    let sub = insight.and_then(|i| i.subscriptions.last());
    let connected = sub.is_some_and(|s| s.disconnect_time.is_none());
    let not_ready = net.map_or(0, |n| n.inbound.iter().filter(|i| i.health.as_ref().is_some_and(|h| !h.ready)).count());
    let status = sub.and_then(|s| s.status.as_ref());
    let total = status.and_then(|s| s.total).unwrap_or_default();
    html! {
        tr.dataplane data-name=(d.resource.meta.name) data-connected=(connected) {
            td { a href=(resource_href(d)) { (d.resource.meta.name) } }
            td { (kind) }
            td {
                (if connected { "proxy connected" } else if sub.is_some() { "proxy disconnected" } else { "proxy never connected" })
                @if not_ready > 0 { br; (not_ready) " inbound(s) not ready" }
            }
            td {
                @if let Some(st) = status {
                    (total.responses_acknowledged) " ACKed, " (total.responses_rejected) " NACKed, at " (ts(st.last_update_time.as_ref()))
                    @if let Some(r) = st.rejected_resources.first() { br; span.reason { "NACK: " (r.r#type) " " (r.name) ": " (r.reason) } }
                } @else { "-" }
            }
            td { (labels(&d.resource.meta)) @if let Some(n) = net { @for i in &n.inbound { (tags(&i.tags)) } } }
        }
    }
}

/// A resource's YAML, Secrets without their data.
fn redacted_yaml(e: &Entry) -> String {
    let mut v = universal::to_value(&e.resource);
    if matches!(e.resource.resource_type(), ResourceType::Secret | ResourceType::GlobalSecret)
        && let Some(o) = v.as_object_mut()
        && o.remove("data").is_some()
    {
        return format!("{}# data: not shown (Secret values never reach the GUI)\n", universal::value_to_yaml(&v));
    }
    universal::value_to_yaml(&v)
}

/// The `meridianctl` commands where a GUI with actions would have buttons.
/// A resource a zone sent up (`kuma.io/origin: zone`, a Dataplane) is
/// changed at that zone, under the name it has there.
fn commands(e: &Entry) -> Vec<String> {
    let ty = e.resource.resource_type();
    let m = &e.resource.meta;
    let mesh = if ty.is_mesh_scoped() { format!(" -m {}", m.mesh) } else { String::new() };
    let mut out = vec![format!("meridianctl get {} {}{mesh} -o yaml", ty.plural(), m.name)];
    let from_zone = m.labels.get("kuma.io/origin").is_some_and(|o| o == "zone");
    let local_name = m.labels.get("kuma.io/display-name").unwrap_or(&m.name);
    if let Spec::Dataplane(d) = &e.resource.spec
        && d.networking.as_ref().is_some_and(|n| n.gateway.is_some())
    {
        out.push(format!("meridianctl inspect dataplanes{mesh}"));
        out.push(format!(
            "meridianctl generate dataplane-token --mesh {} --name {local_name} > {local_name}.token",
            m.mesh
        ));
    }
    if from_zone {
        let zone = m.labels.get("kuma.io/zone").map_or("its zone", String::as_str);
        out.push(format!(
            "meridianctl --api-url <the API of {zone}> delete {} {local_name}{mesh}   # at the zone that owns it",
            ty.plural()
        ));
    } else {
        out.push(format!(
            "meridianctl get {} {}{mesh} -o yaml > r.yaml && $EDITOR r.yaml && meridianctl apply -f r.yaml",
            ty.plural(),
            m.name
        ));
        out.push(format!("meridianctl delete {} {}{mesh}", ty.plural(), m.name));
    }
    out
}

/// A resource's page: propagation status, a gateway Dataplane's Envoy
/// config (`envoy`, see [`super::envoy`]), YAML, commands.
pub fn resource(e: &Entry, status: &Status, envoy: Option<Markup>) -> Markup {
    let ty = e.resource.resource_type();
    let m = &e.resource.meta;
    html! {
        h1 { (ty.name()) " " span.name { (m.name) }
             @if ty.is_mesh_scoped() { small { " in mesh " a href={ "/gui/meshes/" (m.mesh) } { (m.mesh) } } } }
        p { "version " code { (e.version) } ", modified " (universal::rfc3339_millis(m.modification_time)) " " (labels(m)) }
        section #status { h2 { "Propagation" } (status_panel(status, &mesh_of(e))) }
        @if let Some(envoy) = envoy { (envoy) }
        section #yaml { h2 { "YAML" } pre { code { (redacted_yaml(e)) } } }
        section #commands {
            h2 { "Commands" }
            p { "This GUI is read-only; these do what its buttons would:" }
            @for c in commands(e) { pre.command { code { (c) } } }
        }
    }
}

/// The mesh a resource's Dataplanes live in (a Mesh's own name for a Mesh).
fn mesh_of(e: &Entry) -> String {
    if e.resource.resource_type() == ResourceType::Mesh {
        e.resource.meta.name.clone()
    } else {
        e.resource.meta.mesh.clone()
    }
}

/// The propagation panel; each Dataplane links to its page in `status_mesh`.
fn status_panel(status: &Status, status_mesh: &str) -> Markup {
    html! {
        @if let Some(err) = &status.error {
            p.error { "No propagation status: " (err) }
        } @else {
            p { "Overall: " (state_badge(&status.state)) @if let Some(v) = &status.version { " (version " code { (v) } ")" } }
            @if status.source == Source::Insights {
                p.note { "From DataplaneInsight (no …/_status for this resource here): each affected Dataplane's last ACK/NACK, judged against the resource's last change." }
            }
            @if status.zones.is_empty() { p { "No zone." } }
            @for z in &status.zones {
                div.zone-status data-zone=(z.zone) data-state=(z.state) {
                    h3 { "Zone " (z.zone) " " (state_badge(&z.state))
                         @if let Some(v) = &z.version { " " small { "holds " code { (v) } } } }
                    @if let Some(r) = &z.reason { p.reason { (r) } }
                    @if z.dataplanes.is_empty() { p { "No Dataplane here depends on it." } } @else {
                        table {
                            thead { tr { th { "Dataplane" } th { "state" } th { "version" } th { "when" } th { "reason" } } }
                            tbody {
                                @for d in &z.dataplanes {
                                    tr.dp-status data-zone=(z.zone) data-dataplane=(d.name) data-state=(d.state) data-version=(d.version.as_deref().unwrap_or("")) {
                                        td { a.dataplane href={ "/gui/meshes/" (status_mesh) "/dataplanes/" (d.name) } { (d.name) } } td { (state_badge(&d.state)) }
                                        td { code { (d.version.as_deref().unwrap_or("-")) } }
                                        td { (d.time.as_deref().unwrap_or("-")) } td.reason { (d.reason.as_deref().unwrap_or("")) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use meridian_sync_proto::{Resource, pb};

    use super::*;

    fn entry(resource: Resource) -> Entry {
        let version = resource.version();
        Entry { resource, revision: 1, version }
    }

    #[test]
    fn user_values_are_escaped_and_secret_data_never_rendered() {
        let hostile = "<script>alert(1)</script>\"'&";
        let mut secret = Resource::new(
            "default",
            "tls",
            Spec::Secret(pb::system::Secret {
                data: Some(pbjson_types::BytesValue { value: b"s3cr3t-value".to_vec().into() }),
            }),
        );
        secret.meta.labels.insert("team".into(), hostile.into());
        let status = Status {
            source: Source::Contract,
            state: "Rejected".into(),
            version: None,
            zones: vec![super::super::status::ZoneStatus {
                zone: "zone-1".into(),
                online: true,
                version: None,
                state: "Rejected".into(),
                reason: Some(hostile.into()),
                dataplanes: Vec::new(),
            }],
            error: None,
        };
        let html = resource(&entry(secret), &status, None).into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;'&amp;"), "{html}");
        assert!(!html.contains("s3cr3t") && !html.contains("czNjcjN0"), "{html}");
        assert!(html.contains("data: not shown"), "{html}");
    }
}
