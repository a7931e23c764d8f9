//! ProxyTemplate, the escape hatch: the one template that best selects a
//! Dataplane changes its generated configuration, as the incumbent's
//! `ProxyTemplateGenerator` (Kuma 2.14 `pkg/xds/generator`,
//! `pkg/xds/generator/modifications`), in its order:
//!
//! ```text
//!   generated config ── imports has this proxy's profile? ── no ─▶ dropped
//!         │ (gateway-proxy for builtin gateways, default-proxy otherwise)
//!         ▼
//!   + conf.resources (raw cluster/listener, replacing one of the same name)
//!         ▼
//!   conf.modifications, in order: cluster/listener add | patch | remove,
//!   httpFilter, networkFilter addFirst | addLast | addBefore | addAfter | patch | remove,
//!   virtualHost add | patch | remove
//! ```
//!
//! Selection: the template whose selector best matches the Dataplane's
//! tags (gateway tags, or any inbound's tags): more matched tags, then
//! more exact values, then the newer, then the greater name (the rule of
//! [`super::select`]). A match has `name` and `origin` (empty: any); the
//! origins are the incumbent's: `gateway` (a builtin gateway's generated
//! listeners and clusters), `inbound` / `outbound` (a sidecar's),
//! `proxy-template-raw`, `proxy-template-modifications`. A patch merges the
//! value into the resource with protobuf merge semantics (set scalars
//! replace, messages merge field by field, repeated fields append).
//! An `httpFilter` modification acts on the `http_filters` of every
//! HttpConnectionManager in the filter chains of the listeners its
//! `match.listenerName` / `match.origin` select (Kuma 2.14
//! `modifications/v3/http_filter.go`): `addBefore`/`addAfter` insert next
//! to the first filter named `match.name`, `patch` merges the value's
//! `typed_config` into every filter so named (same `@type` only), `remove`
//! drops every filter so named (every filter, without `match.name`). As in
//! the incumbent nothing keeps `envoy.filters.http.router` last: a filter
//! added after it is reported as a warning here and NACKed by Envoy
//! (the terminal filter must be last). A `networkFilter` modification does
//! the same on the `filters` of every filter chain of the matching
//! listeners (Kuma 2.14 `modifications/v3/network_filter.go`).
//! Applied after the generator's own pruning: what the template produces
//! reaches Envoy as written, and a resource Envoy refuses shows as a NACK
//! in the DataplaneInsight.

use std::collections::BTreeMap;

use envoy_types::pb::{
    envoy::{
        config::{
            cluster::v3::Cluster,
            listener::v3::{Filter, Listener, filter},
            route::v3::VirtualHost,
        },
        extensions::filters::network::http_connection_manager::v3::{
            HttpConnectionManager, HttpFilter, http_connection_manager::RouteSpecifier, http_filter,
        },
    },
    google::protobuf::Any,
};
use meridian_sync_proto::{
    envoy_yaml,
    pb::mesh::{self, ProxyTemplate, proxy_template::modifications::Type},
};
use prost::Message;

use super::{Item, MeshSnapshot, ProxyConfig, select::rank};

/// Origin of resources from `conf.resources`.
pub const ORIGIN_RAW: &str = "proxy-template-raw";
/// Origin of resources added by a modification.
pub const ORIGIN_MODIFICATIONS: &str = "proxy-template-modifications";

/// The ProxyTemplate that applies to a Dataplane with these tag sets.
pub(super) fn select<'a>(
    snapshot: &'a MeshSnapshot,
    tags: &[&BTreeMap<String, String>],
) -> Option<&'a Item<ProxyTemplate>> {
    snapshot
        .proxy_templates
        .values()
        .filter_map(|t| {
            let best =
                t.spec.selectors.iter().flat_map(|s| tags.iter().filter_map(|tags| rank(&s.r#match, tags))).max()?;
            Some(((best, t.creation_time, t.name.as_str()), t))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, t)| t)
}

/// Generated resources' origin: `gateway` on a builtin gateway; on a
/// sidecar `inbound` for `inbound:` listeners and `localhost:` clusters,
/// else `outbound`.
fn generated_origin(gateway: bool, name: &str) -> &'static str {
    if gateway {
        "gateway"
    } else if name.starts_with("inbound:") || name.starts_with("localhost:") {
        "inbound"
    } else {
        "outbound"
    }
}

/// One kind of resource (clusters or listeners) with each one's origin.
struct Set<T> {
    items: BTreeMap<String, (T, String)>,
    /// The resource's name (the key it is held and sent under).
    name: fn(&T) -> String,
}

impl<T: Message + Default + Clone> Set<T> {
    fn new(items: Vec<T>, name: fn(&T) -> String, gateway: bool) -> Set<T> {
        let items = items
            .into_iter()
            .map(|t| {
                let n = name(&t);
                let origin = generated_origin(gateway, &n).to_string();
                (n, (t, origin))
            })
            .collect();
        Set { items, name }
    }

    fn add(&mut self, name: String, item: T, origin: &str) {
        self.items.insert(name, (item, origin.to_string()));
    }

    fn matching(&self, name: &str, origin: &str) -> Vec<String> {
        self.items
            .iter()
            .filter(|(n, (_, o))| (name.is_empty() || *n == name) && (origin.is_empty() || o == origin))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Merges `patch` (protobuf bytes) into every match; how many. A patch
    /// that would rename a resource is refused, nothing merged (validation
    /// refuses it too; this holds for templates stored before that): a
    /// renamed cluster leaves its routes pointing at nothing, and several
    /// renamed alike would share one name.
    fn patch(&mut self, name: &str, origin: &str, patch: &[u8]) -> Result<usize, String> {
        let names = self.matching(name, origin);
        let mut merged = Vec::with_capacity(names.len());
        for n in &names {
            if let Some((item, _)) = self.items.get(n) {
                let mut item = item.clone();
                item.merge(patch).map_err(|e| e.to_string())?;
                let now = (self.name)(&item);
                if now != *n {
                    return Err(format!("a patch cannot change the name ({n:?} to {now:?}); not applied"));
                }
                merged.push((n, item));
            }
        }
        for (n, item) in merged {
            if let Some((slot, _)) = self.items.get_mut(n) {
                *slot = item;
            }
        }
        Ok(names.len())
    }

    fn remove(&mut self, name: &str, origin: &str) -> usize {
        let names = self.matching(name, origin);
        for n in &names {
            self.items.remove(n);
        }
        names.len()
    }

    /// The items whose name is `name` and origin `origin` (empty: any).
    fn matching_mut<'a>(&'a mut self, name: &'a str, origin: &'a str) -> impl Iterator<Item = (&'a String, &'a mut T)> {
        self.items
            .iter_mut()
            .filter(move |(n, (_, o))| (name.is_empty() || *n == name) && (origin.is_empty() || o == origin))
            .map(|(n, (t, _))| (n, t))
    }

    fn into_vec(self) -> Vec<T> {
        self.items.into_values().map(|(t, _)| t).collect()
    }
}

/// Applies the ProxyTemplate selecting `dataplane` (tags `tags`) to its
/// generated `config`; `gateway`: a builtin gateway (profile
/// `gateway-proxy`), else `default-proxy`. What cannot be applied (a value
/// that no longer parses, a patch or remove matching nothing) is a warning
/// in the configuration, naming the template and the modification's index.
pub(super) fn apply(
    snapshot: &MeshSnapshot,
    tags: &[&BTreeMap<String, String>],
    gateway: bool,
    config: &mut ProxyConfig,
) {
    let Some(template) = select(snapshot, tags) else { return };
    config.deps.proxy_template = Some(template.name.clone());
    let Some(conf) = &template.spec.conf else { return };
    let name = &template.name;
    let profile = if gateway { "gateway-proxy" } else { "default-proxy" };
    let mut warn = |w: String| config.warnings.push(format!("ProxyTemplate {name:?}: {w}"));
    let mut clusters;
    let mut listeners;
    if conf.imports.iter().any(|i| i == profile) {
        clusters = Set::new(std::mem::take(&mut config.clusters), |c: &Cluster| c.name.clone(), gateway);
        listeners = Set::new(std::mem::take(&mut config.listeners), |l: &Listener| l.name.clone(), gateway);
    } else {
        warn(format!(
            "imports {:?}, not this proxy's profile {profile:?}: its generated configuration is left out",
            conf.imports
        ));
        config.clusters.clear();
        config.listeners.clear();
        config.routes.clear();
        config.endpoints.clear();
        config.secrets.clear();
        clusters = Set::new(Vec::new(), |c: &Cluster| c.name.clone(), gateway);
        listeners = Set::new(Vec::new(), |l: &Listener| l.name.clone(), gateway);
    }
    for (i, raw) in conf.resources.iter().enumerate() {
        match envoy_yaml::raw(&raw.resource) {
            Ok(envoy_yaml::Raw::Cluster(c)) => clusters.add(c.name.clone(), *c, ORIGIN_RAW),
            Ok(envoy_yaml::Raw::Listener(l)) => listeners.add(l.name.clone(), *l, ORIGIN_RAW),
            Err(e) => warn(format!("conf.resources[{i}] ({:?}): {e}; skipped", raw.name)),
        }
    }
    let limit = meridian_sync_proto::validate::MAX_MODIFICATIONS;
    if conf.modifications.len() > limit {
        // Refused at validation; one stored before then applies none.
        warn(format!("{} modifications, more than {limit}: none applied", conf.modifications.len()));
    }
    let modifications = if conf.modifications.len() > limit { &[][..] } else { &conf.modifications[..] };
    for (i, m) in modifications.iter().enumerate() {
        let at = format!("conf.modifications[{i}]");
        match &m.r#type {
            Some(Type::Cluster(c)) => {
                let (n, o) = c.r#match.as_ref().map(|m| (m.name.as_str(), m.origin.as_str())).unwrap_or_default();
                let r = modify(&mut clusters, &c.operation, n, o, &c.value, envoy_yaml::CLUSTER, |v| {
                    envoy_yaml::cluster(v).map(|c| (c.name.clone(), c))
                });
                if let Err(e) = r {
                    warn(format!("{at}.cluster: {e}"));
                }
            }
            Some(Type::Listener(l)) => {
                let (n, o) = l.r#match.as_ref().map(|m| (m.name.as_str(), m.origin.as_str())).unwrap_or_default();
                let r = modify(&mut listeners, &l.operation, n, o, &l.value, envoy_yaml::LISTENER, |v| {
                    envoy_yaml::listener(v).map(|l| (l.name.clone(), l))
                });
                if let Err(e) = r {
                    warn(format!("{at}.listener: {e}"));
                }
            }
            Some(Type::HttpFilter(f)) => {
                let m = f.r#match.clone().unwrap_or_default();
                if let Err(e) = modify_http_filters(&mut listeners, &f.operation, &m, &f.value) {
                    warn(format!("{at}.httpFilter: {e}"));
                }
            }
            Some(Type::VirtualHost(v)) => {
                let m = v.r#match.clone().unwrap_or_default();
                if let Err(e) = modify_virtual_hosts(&mut listeners, &v.operation, &m, &v.value) {
                    warn(format!("{at}.virtualHost: {e}"));
                }
            }
            Some(Type::NetworkFilter(f)) => {
                let m = f.r#match.clone().unwrap_or_default();
                if let Err(e) = modify_network_filters(&mut listeners, &f.operation, &m, &f.value) {
                    warn(format!("{at}.networkFilter: {e}"));
                }
            }
            // Refused at validation; a template stored before then changes nothing.
            _ => warn(format!("{at}: not supported by Meridian yet; skipped")),
        }
    }
    config.clusters = clusters.into_vec();
    config.listeners = listeners.into_vec();
    // The endpoints of a removed cluster go with it.
    let names: std::collections::BTreeSet<&str> = config.clusters.iter().map(|c| c.name.as_str()).collect();
    config.endpoints.retain(|e| names.contains(e.cluster_name.as_str()));
}

/// One cluster or listener modification.
fn modify<T: Message + Default + Clone>(
    set: &mut Set<T>,
    operation: &str,
    name: &str,
    origin: &str,
    value: &str,
    message: &str,
    parse: impl Fn(&str) -> Result<(String, T), String>,
) -> Result<(), String> {
    match operation {
        "add" => {
            let (n, item) = parse(value)?;
            set.add(n, item, ORIGIN_MODIFICATIONS);
            Ok(())
        }
        "patch" => {
            let bytes = envoy_yaml::to_bytes(value, message)?;
            match set.patch(name, origin, &bytes)? {
                0 => Err(format!("patch matches nothing (name {name:?}, origin {origin:?})")),
                _ => Ok(()),
            }
        }
        "remove" => match set.remove(name, origin) {
            0 => Err(format!("remove matches nothing (name {name:?}, origin {origin:?})")),
            _ => Ok(()),
        },
        other => Err(format!("invalid operation {other:?}")),
    }
}

/// Name of the network filter whose `http_filters` an `httpFilter`
/// modification changes.
const HCM: &str = "envoy.filters.network.http_connection_manager";
/// Envoy's router, the terminal HTTP filter (must be last).
const ROUTER: &str = "envoy.filters.http.router";

/// One `httpFilter` modification over the matching listeners' filter
/// chains. Errors: the value does not parse, a listener's
/// HttpConnectionManager does not decode, a patch of another `@type`, or
/// the modification matched nothing (no listener, no HttpConnectionManager,
/// or no filter named `match.name` where one is needed); a router no
/// longer last is an error too (Envoy will NACK that listener), after the
/// change is made.
fn modify_http_filters(
    listeners: &mut Set<Listener>,
    operation: &str,
    m: &mesh::proxy_template::modifications::http_filter::Match,
    value: &str,
) -> Result<(), String> {
    let new = match operation {
        "remove" => None,
        _ => Some(envoy_yaml::http_filter(value)?),
    };
    let mut hcms = 0;
    let mut changed = 0;
    let mut router_not_last = Vec::new();
    for (listener_name, listener) in listeners.matching_mut(&m.listener_name, &m.origin) {
        for chain in &mut listener.filter_chains {
            for f in chain.filters.iter_mut().filter(|f| f.name == HCM) {
                let Some(filter::ConfigType::TypedConfig(any)) = &mut f.config_type else { continue };
                let mut hcm = HttpConnectionManager::decode(&any.value[..])
                    .map_err(|e| format!("listener {listener_name:?}: HttpConnectionManager: {e}"))?;
                hcms += 1;
                if edit_filters(&mut hcm.http_filters, operation, &m.name, new.as_ref())? {
                    changed += 1;
                }
                let router = hcm.http_filters.iter().position(|f| f.name == ROUTER);
                if router.is_some_and(|i| i + 1 != hcm.http_filters.len()) {
                    router_not_last.push(listener_name.clone());
                }
                any.value = hcm.encode_to_vec();
            }
        }
    }
    if hcms == 0 {
        return Err(format!(
            "matches no HttpConnectionManager (listenerName {:?}, origin {:?})",
            m.listener_name, m.origin
        ));
    }
    if changed == 0 {
        return Err(format!("{operation} matches no HTTP filter named {:?}", m.name));
    }
    if !router_not_last.is_empty() {
        return Err(format!("{ROUTER} is no longer the last HTTP filter of {router_not_last:?}: Envoy refuses this"));
    }
    Ok(())
}

/// An entry of a filter list (`HttpFilter` of an HttpConnectionManager,
/// `Filter` of a filter chain) as the modifications see it: a name and a
/// `typed_config`.
trait NamedFilter: Clone {
    fn name(&self) -> &str;
    fn typed(&self) -> Option<&Any>;
    fn typed_mut(&mut self) -> Option<&mut Any>;
    fn set_typed(&mut self, any: Any);
}

impl NamedFilter for HttpFilter {
    fn name(&self) -> &str {
        &self.name
    }
    fn typed(&self) -> Option<&Any> {
        match &self.config_type {
            Some(http_filter::ConfigType::TypedConfig(a)) => Some(a),
            _ => None,
        }
    }
    fn typed_mut(&mut self) -> Option<&mut Any> {
        match &mut self.config_type {
            Some(http_filter::ConfigType::TypedConfig(a)) => Some(a),
            _ => None,
        }
    }
    fn set_typed(&mut self, any: Any) {
        self.config_type = Some(http_filter::ConfigType::TypedConfig(any));
    }
}

impl NamedFilter for Filter {
    fn name(&self) -> &str {
        &self.name
    }
    fn typed(&self) -> Option<&Any> {
        match &self.config_type {
            Some(filter::ConfigType::TypedConfig(a)) => Some(a),
            _ => None,
        }
    }
    fn typed_mut(&mut self) -> Option<&mut Any> {
        match &mut self.config_type {
            Some(filter::ConfigType::TypedConfig(a)) => Some(a),
            _ => None,
        }
    }
    fn set_typed(&mut self, any: Any) {
        self.config_type = Some(filter::ConfigType::TypedConfig(any));
    }
}

/// One filter list changed as the incumbent's `httpFilterModificator` and
/// `networkFilterModificator`; whether anything changed.
fn edit_filters<F: NamedFilter>(
    filters: &mut Vec<F>,
    operation: &str,
    name: &str,
    new: Option<&F>,
) -> Result<bool, String> {
    let named = |f: &F| name.is_empty() || f.name() == name;
    let first = filters.iter().position(|f| f.name() == name);
    match (operation, new) {
        ("addFirst", Some(n)) => filters.insert(0, n.clone()),
        ("addLast", Some(n)) => filters.push(n.clone()),
        ("addBefore", Some(n)) => match first {
            Some(i) => filters.insert(i, n.clone()),
            None => return Ok(false),
        },
        ("addAfter", Some(n)) => match first {
            Some(i) => filters.insert(i + 1, n.clone()),
            None => return Ok(false),
        },
        ("patch", Some(n)) => {
            let mut any_patched = false;
            for f in filters.iter_mut().filter(|f| named(f)) {
                patch_typed_config(f, n)?;
                any_patched = true;
            }
            return Ok(any_patched);
        }
        ("remove", None) => {
            let before = filters.len();
            filters.retain(|f| !named(f));
            return Ok(filters.len() != before);
        }
        (other, _) => return Err(format!("invalid operation {other:?}")),
    }
    Ok(true)
}

/// Merges `patch`'s `typed_config` into `filter`'s (the incumbent's
/// `MergeAnys`): two encodings of one message type concatenated decode as
/// their protobuf merge, so the bytes are appended. A different `@type` is
/// an error; a filter without a `typed_config` takes the patch's.
fn patch_typed_config<F: NamedFilter>(filter: &mut F, patch: &F) -> Result<(), String> {
    let Some(p) = patch.typed() else { return Ok(()) };
    let name = filter.name().to_string();
    match filter.typed_mut() {
        Some(any) if any.type_url == p.type_url => {
            any.value.extend_from_slice(&p.value);
            Ok(())
        }
        Some(any) => Err(format!("filter {name:?}: cannot patch {} with {}", any.type_url, p.type_url)),
        None => {
            filter.set_typed(p.clone());
            Ok(())
        }
    }
}

/// One `networkFilter` modification over the filter chains of the
/// matching listeners (Kuma 2.14 `modifications/v3/network_filter.go`).
/// Errors: the value does not parse, a patch of another `@type`, or the
/// modification matched nothing (no listener, or no filter named
/// `match.name` where one is needed).
fn modify_network_filters(
    listeners: &mut Set<Listener>,
    operation: &str,
    m: &mesh::proxy_template::modifications::network_filter::Match,
    value: &str,
) -> Result<(), String> {
    let new = match operation {
        "remove" => None,
        _ => Some(envoy_yaml::network_filter(value)?),
    };
    let mut listeners_matched = 0;
    let mut changed = 0;
    for (_, listener) in listeners.matching_mut(&m.listener_name, &m.origin) {
        listeners_matched += 1;
        for chain in &mut listener.filter_chains {
            if edit_filters(&mut chain.filters, operation, &m.name, new.as_ref())? {
                changed += 1;
            }
        }
    }
    if listeners_matched == 0 {
        return Err(format!("matches no listener (listenerName {:?}, origin {:?})", m.listener_name, m.origin));
    }
    if changed == 0 {
        return Err(format!("{operation} matches no network filter named {:?}", m.name));
    }
    Ok(())
}

/// One `virtualHost` modification (Kuma 2.14
/// `modifications/v3/virtual_host.go`): on the route configurations
/// embedded in the HttpConnectionManagers of listeners of origin
/// `match.origin` whose name is `match.routeConfigurationName` (empty:
/// any), `add` appends the value, `patch` merges it into each virtual host
/// named `match.name` (all without it), `remove` drops those. As in the
/// incumbent, route configurations served over RDS (a builtin gateway's)
/// are not touched. Errors: the value does not parse, or nothing matched.
fn modify_virtual_hosts(
    listeners: &mut Set<Listener>,
    operation: &str,
    m: &mesh::proxy_template::modifications::virtual_host::Match,
    value: &str,
) -> Result<(), String> {
    let (new, patch) = match operation {
        "add" => (Some(envoy_yaml::virtual_host(value)?), Vec::new()),
        "patch" => (None, envoy_yaml::to_bytes(value, envoy_yaml::VIRTUAL_HOST)?),
        "remove" => (None, Vec::new()),
        other => return Err(format!("invalid operation {other:?}")),
    };
    let named = |v: &VirtualHost| m.name.is_empty() || v.name == m.name;
    let mut changed = 0;
    for (listener_name, listener) in listeners.matching_mut("", &m.origin) {
        for chain in &mut listener.filter_chains {
            for f in chain.filters.iter_mut().filter(|f| f.name == HCM) {
                let Some(filter::ConfigType::TypedConfig(any)) = &mut f.config_type else { continue };
                let mut hcm = HttpConnectionManager::decode(&any.value[..])
                    .map_err(|e| format!("listener {listener_name:?}: HttpConnectionManager: {e}"))?;
                let Some(RouteSpecifier::RouteConfig(rc)) = &mut hcm.route_specifier else { continue };
                if !m.route_configuration_name.is_empty() && rc.name != m.route_configuration_name {
                    continue;
                }
                match &new {
                    Some(v) => {
                        rc.virtual_hosts.push(v.clone());
                        changed += 1;
                    }
                    None if operation == "remove" => {
                        let before = rc.virtual_hosts.len();
                        rc.virtual_hosts.retain(|v| !named(v));
                        changed += before - rc.virtual_hosts.len();
                    }
                    None => {
                        for v in rc.virtual_hosts.iter_mut().filter(|v| named(v)) {
                            v.merge(&patch[..]).map_err(|e| e.to_string())?;
                            changed += 1;
                        }
                    }
                }
                any.value = hcm.encode_to_vec();
            }
        }
    }
    if changed == 0 {
        return Err(format!(
            "{operation} matches no virtual host (name {:?}, routeConfigurationName {:?}, origin {:?}) in a route \
             configuration embedded in a listener",
            m.name, m.route_configuration_name, m.origin
        ));
    }
    Ok(())
}

/// The tags a Dataplane is selected by: its gateway's tags, else each
/// inbound's.
pub(super) fn dataplane_tags(dp: &mesh::Dataplane) -> Vec<&BTreeMap<String, String>> {
    let Some(n) = dp.networking.as_ref() else { return Vec::new() };
    match &n.gateway {
        Some(g) => vec![&g.tags],
        None => n.inbound.iter().map(|i| &i.tags).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
    use prost::Name;

    fn filter(name: &str) -> HttpFilter {
        HttpFilter { name: name.to_string(), ..Default::default() }
    }

    fn names(filters: &[HttpFilter]) -> Vec<&str> {
        filters.iter().map(|f| f.name.as_str()).collect()
    }

    #[test]
    fn http_filter_operations_as_the_incumbent() {
        let mut fs = vec![filter("a"), filter(ROUTER)];
        assert_eq!(edit_filters(&mut fs, "addBefore", ROUTER, Some(&filter("b"))), Ok(true));
        assert_eq!(edit_filters(&mut fs, "addFirst", "", Some(&filter("c"))), Ok(true));
        assert_eq!(edit_filters(&mut fs, "addAfter", "c", Some(&filter("d"))), Ok(true));
        assert_eq!(names(&fs), ["c", "d", "a", "b", ROUTER]);
        assert_eq!(edit_filters(&mut fs, "addBefore", "none", Some(&filter("e"))), Ok(false));
        assert_eq!(edit_filters(&mut fs, "remove", "d", None), Ok(true));
        assert_eq!(edit_filters(&mut fs, "remove", "d", None), Ok(false));
        assert_eq!(names(&fs), ["c", "a", "b", ROUTER]);
        assert_eq!(edit_filters(&mut fs, "remove", "", None), Ok(true));
        assert!(fs.is_empty());
    }

    #[test]
    fn a_patch_merges_typed_config_of_the_same_type_only() {
        let router = |suppress: bool, headers: &[&str]| Router {
            suppress_envoy_headers: suppress,
            strict_check_headers: headers.iter().map(|h| h.to_string()).collect(),
            ..Default::default()
        };
        let any = |r: &Router| Any { type_url: Router::type_url(), value: r.encode_to_vec() };
        let mut f = filter(ROUTER);
        f.config_type = Some(http_filter::ConfigType::TypedConfig(any(&router(false, &["x-envoy-retry-on"]))));
        let mut patch = filter("");
        patch.config_type = Some(http_filter::ConfigType::TypedConfig(any(&router(true, &["x-envoy-max-retries"]))));
        assert_eq!(patch_typed_config(&mut f, &patch), Ok(()));
        let Some(http_filter::ConfigType::TypedConfig(merged)) = &f.config_type else { panic!("typed config") };
        assert_eq!(
            Router::decode(&merged.value[..]).ok(),
            Some(router(true, &["x-envoy-retry-on", "x-envoy-max-retries"]))
        );
        patch.config_type = Some(http_filter::ConfigType::TypedConfig(Any {
            type_url: "type.googleapis.com/other".into(),
            value: vec![],
        }));
        assert!(patch_typed_config(&mut f, &patch).is_err_and(|e| e.contains("cannot patch")));
    }

    /// A patch setting `name` (a template stored before validation refused
    /// it) renames nothing: the clusters keep their names and contents.
    #[test]
    fn a_patch_that_renames_is_not_applied() {
        let cluster = |name: &str| Cluster { name: name.into(), ..Default::default() };
        let mut set = Set::new(vec![cluster("a"), cluster("b")], |c: &Cluster| c.name.clone(), true);
        let e = modify(
            &mut set,
            "patch",
            "",
            "",
            "name: same\nper_connection_buffer_limit_bytes: 1",
            envoy_yaml::CLUSTER,
            |_| Err("unused".to_string()),
        )
        .expect_err("a renaming patch");
        assert!(e.contains("cannot change the name"), "{e}");
        let out = set.into_vec();
        assert_eq!(out, [cluster("a"), cluster("b")]);
    }

    #[test]
    fn a_filter_after_the_router_is_reported() {
        use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain};
        let hcm = HttpConnectionManager { http_filters: vec![filter(ROUTER)], ..Default::default() };
        let listener = Listener {
            name: "l".into(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: HCM.into(),
                    config_type: Some(filter::ConfigType::TypedConfig(Any {
                        type_url: HttpConnectionManager::type_url(),
                        value: hcm.encode_to_vec(),
                    })),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut set = Set::new(vec![listener], |l: &Listener| l.name.clone(), true);
        let at = |listener: &str, name: &str| mesh::proxy_template::modifications::http_filter::Match {
            listener_name: listener.into(),
            name: name.into(),
            ..Default::default()
        };
        let e = modify_http_filters(&mut set, "addLast", &at("other", ""), "name: x").expect_err("no listener");
        assert!(e.contains("matches no HttpConnectionManager"), "{e}");
        let e = modify_http_filters(&mut set, "addLast", &at("l", ""), "name: x").expect_err("router not last");
        assert!(e.contains("no longer the last HTTP filter"), "{e}");
        assert_eq!(modify_http_filters(&mut set, "remove", &at("l", "x"), ""), Ok(()));
        assert_eq!(modify_http_filters(&mut set, "addFirst", &at("", ""), "name: added"), Ok(()));

        let nf = |listener: &str, name: &str| mesh::proxy_template::modifications::network_filter::Match {
            listener_name: listener.into(),
            name: name.into(),
            ..Default::default()
        };
        assert_eq!(modify_network_filters(&mut set, "addBefore", &nf("l", HCM), "name: limit"), Ok(()));
        assert_eq!(modify_network_filters(&mut set, "addAfter", &nf("", "limit"), "name: after"), Ok(()));
        let e = modify_network_filters(&mut set, "remove", &nf("l", "nope"), "").expect_err("no such filter");
        assert!(e.contains("matches no network filter"), "{e}");
        assert_eq!(modify_network_filters(&mut set, "remove", &nf("l", "after"), ""), Ok(()));
        let e = modify_network_filters(&mut set, "addFirst", &nf("other", ""), "name: x").expect_err("no listener");
        assert!(e.contains("matches no listener"), "{e}");
        // Route configurations over RDS (no embedded one here) are not touched.
        let vh = mesh::proxy_template::modifications::virtual_host::Match::default();
        let e = modify_virtual_hosts(&mut set, "add", &vh, "name: v\ndomains: ['*']").expect_err("no embedded routes");
        assert!(e.contains("matches no virtual host"), "{e}");
        let chains = &set.items["l"].0.filter_chains;
        assert_eq!(chains[0].filters.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["limit", HCM]);
    }
}
