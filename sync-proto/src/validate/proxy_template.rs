//! ProxyTemplate: `selectors` and `conf` (`imports`, `resources`,
//! `modifications`), with the incumbent's paths and messages (Kuma 2.14
//! `pkg/core/resources/apis/mesh/proxytemplate_validator.go`). What
//! Meridian does not apply yet (listener `match.tags`, HTTP and network
//! filter `match.listenerTags`,
//! raw resources other than clusters and listeners) is refused here with
//! "not supported by Meridian yet", never accepted and ignored.

use super::selectors::{self, TagRules};
use super::{FieldPath, Report};
use crate::envoy_yaml;
use crate::pb::mesh::{ProxyTemplate, ProxyTemplateRawResource, proxy_template::modifications::Type};

/// The profiles a ProxyTemplate may import: the generated configuration of
/// sidecars and of builtin gateways.
pub const PROFILES: [&str; 2] = ["default-proxy", "gateway-proxy"];
/// Most modifications one ProxyTemplate may carry (the incumbent sets
/// none). Each is applied, in order, to the generated configuration of
/// every proxy the template selects at every change that regenerates it,
/// and a filter or virtual-host modification re-reads and re-writes every
/// HttpConnectionManager it touches, so the cost grows with the square of
/// their number: 20,000 `addFirst` (1.3 MB, under the 2 MiB body limit)
/// held a zone's generation of one gateway for minutes.
pub const MAX_MODIFICATIONS: usize = 500;
/// The cluster and listener operations.
const OPERATIONS: [&str; 3] = ["add", "patch", "remove"];
/// The HTTP (and network) filter operations, in the incumbent's order.
const FILTER_OPERATIONS: [&str; 6] = ["addFirst", "addLast", "addBefore", "addAfter", "patch", "remove"];
const NOT_YET: &str = "not supported by Meridian yet";

pub(super) fn validate(r: &mut Report, spec: &ProxyTemplate) {
    selectors::selectors(r, &FieldPath::new("selectors"), &spec.selectors, false, TagRules::SERVICE_SELECTOR);
    let conf = FieldPath::new("conf");
    let Some(c) = &spec.conf else { return };
    for (i, import) in c.imports.iter().enumerate() {
        let at = conf.field("imports").index(i);
        if import.is_empty() {
            r.add(&at, "cannot be empty");
        } else if !PROFILES.contains(&import.as_str()) {
            r.add(&at, format!("profile not found. Available profiles: {}", PROFILES.join(",")));
        }
    }
    for (i, raw) in c.resources.iter().enumerate() {
        resource(r, &conf.field("resources").index(i), raw);
    }
    if c.modifications.len() > MAX_MODIFICATIONS {
        // Not one by one: thousands of values to parse for nothing.
        r.add(
            &conf.field("modifications"),
            format!("at most {MAX_MODIFICATIONS} modifications, got {}", c.modifications.len()),
        );
        return;
    }
    for (i, m) in c.modifications.iter().enumerate() {
        let at = conf.field("modifications").index(i);
        match &m.r#type {
            None => r.add(&at, "must have one of cluster, listener, networkFilter, httpFilter, virtualHost"),
            Some(Type::Cluster(c)) => {
                let at = at.field("cluster");
                operation(r, &at, &c.operation, c.r#match.is_some(), &c.value, envoy_yaml::CLUSTER);
                let matched = c.r#match.as_ref().map(|m| m.name.as_str()).unwrap_or_default();
                if c.operation == "patch"
                    && let Ok(patch) = envoy_yaml::cluster(&c.value)
                {
                    renames(r, &at, &patch.name, matched);
                }
            }
            Some(Type::Listener(l)) => {
                let at = at.field("listener");
                if l.r#match.as_ref().is_some_and(|m| !m.tags.is_empty()) {
                    r.add(&at.field("match").field("tags"), NOT_YET);
                }
                operation(r, &at, &l.operation, l.r#match.is_some(), &l.value, envoy_yaml::LISTENER);
                let matched = l.r#match.as_ref().map(|m| m.name.as_str()).unwrap_or_default();
                if l.operation == "patch"
                    && let Ok(patch) = envoy_yaml::listener(&l.value)
                {
                    renames(r, &at, &patch.name, matched);
                }
            }
            Some(Type::NetworkFilter(f)) => {
                let at = at.field("networkFilter");
                let name = f.r#match.as_ref().map(|m| m.name.as_str()).unwrap_or_default();
                if f.r#match.as_ref().is_some_and(|m| !m.listener_tags.is_empty()) {
                    r.add(&at.field("match").field("listenerTags"), NOT_YET);
                }
                let whole = |v: &str| envoy_yaml::network_filter(v).map(|f| f.name);
                filter_modification(r, &at, &f.operation, name, &f.value, envoy_yaml::NETWORK_FILTER, whole);
            }
            Some(Type::HttpFilter(f)) => {
                let at = at.field("httpFilter");
                let name = f.r#match.as_ref().map(|m| m.name.as_str()).unwrap_or_default();
                if f.r#match.as_ref().is_some_and(|m| !m.listener_tags.is_empty()) {
                    r.add(&at.field("match").field("listenerTags"), NOT_YET);
                }
                let whole = |v: &str| envoy_yaml::http_filter(v).map(|f| f.name);
                filter_modification(r, &at, &f.operation, name, &f.value, envoy_yaml::HTTP_FILTER, whole);
            }
            Some(Type::VirtualHost(v)) => {
                // The incumbent's `validateVirtualHostModification`.
                let at = at.field("virtualHost");
                let name = v.r#match.as_ref().map(|m| m.name.as_str()).unwrap_or_default();
                if v.operation == "add" && !name.is_empty() {
                    r.add(&at.field("match").field("name"), "cannot be defined");
                }
                operation(r, &at, &v.operation, false, &v.value, envoy_yaml::VIRTUAL_HOST);
            }
        }
    }
}

fn resource(r: &mut Report, at: &FieldPath, raw: &ProxyTemplateRawResource) {
    if raw.name.is_empty() {
        r.add(&at.field("name"), "cannot be empty");
    }
    if raw.version.is_empty() {
        r.add(&at.field("version"), "cannot be empty");
    }
    if raw.resource.is_empty() {
        r.add(&at.field("resource"), "cannot be empty");
        return;
    }
    match envoy_yaml::raw(&raw.resource) {
        Err(e) => r.add(&at.field("resource"), format!("native Envoy resource is not valid: {e}")),
        Ok(envoy_yaml::Raw::Cluster(c)) if c.name.is_empty() => r.add(
            &at.field("resource"),
            "native Envoy resource is not valid: name: value length must be at least 1 characters",
        ),
        Ok(envoy_yaml::Raw::Listener(l)) if l.name.is_empty() => r.add(
            &at.field("resource"),
            "native Envoy resource is not valid: name: value length must be at least 1 characters",
        ),
        Ok(_) => {}
    }
}

/// A cluster or listener `patch` may not set `name` (other than to the
/// `match.name` it already has): resources are addressed by name (routes
/// name clusters, xDS keys every resource by it), so a renamed one would
/// leave its routes pointing at nothing, and a patch of several would give
/// them all one name. Remove and add instead.
fn renames(r: &mut Report, at: &FieldPath, patched: &str, matched: &str) {
    if !patched.is_empty() && patched != matched {
        r.add(
            &at.field("value"),
            format!(
                "a patch cannot change the name (to {patched:?}): remove the resource and add it under the new name"
            ),
        );
    }
}

/// A cluster or listener modification: `add` takes a whole resource and
/// no `match`, `patch` a partial one, `remove` nothing.
fn operation(r: &mut Report, at: &FieldPath, op: &str, has_match: bool, value: &str, message: &str) {
    let parsed = || envoy_yaml::to_bytes(value, message);
    match op {
        "add" => {
            if has_match {
                r.add(&at.field("match"), "cannot be defined");
            }
            if let Err(e) = parsed() {
                r.add(&at.field("value"), format!("native Envoy resource is not valid: {e}"));
            }
        }
        "patch" => {
            if let Err(e) = parsed() {
                r.add(&at.field("value"), format!("native Envoy resource is not valid: {e}"));
            }
        }
        "remove" => {}
        _ => r.add(
            &at.field("operation"),
            format!("invalid operation. Available operations: {}", OPERATIONS.map(|o| format!("\"{o}\"")).join(", ")),
        ),
    }
}

/// An HTTP or network filter modification, as the incumbent's
/// `validateHTTPFilterModification` / `validateNetworkFilterModification`:
/// the `add*` operations take a whole filter (`HttpFilter` or listener
/// `Filter`, read by `parse` into its name, which must not be empty),
/// `addBefore`/`addAfter`/`patch` need `match.name`, `remove` takes
/// nothing.
fn filter_modification(
    r: &mut Report,
    at: &FieldPath,
    op: &str,
    match_name: &str,
    value: &str,
    message: &str,
    parse: impl Fn(&str) -> Result<String, String>,
) {
    let whole = |r: &mut Report| match parse(value) {
        Err(e) => r.add(&at.field("value"), format!("native Envoy resource is not valid: {e}")),
        Ok(name) if name.is_empty() => r.add(
            &at.field("value"),
            "native Envoy resource is not valid: name: value length must be at least 1 characters",
        ),
        Ok(_) => {}
    };
    match op {
        "addFirst" | "addLast" => whole(r),
        "addBefore" | "addAfter" => {
            if match_name.is_empty() {
                let place = if op == "addBefore" { "before" } else { "after" };
                r.add(
                    &at.field("match").field("name"),
                    format!("cannot be empty. You need to pick a filter {place} which this one will be added"),
                );
            }
            whole(r);
        }
        "patch" => {
            if match_name.is_empty() {
                r.add(&at.field("match").field("name"), "cannot be empty");
            }
            if let Err(e) = envoy_yaml::to_bytes(value, message) {
                r.add(&at.field("value"), format!("native Envoy resource is not valid: {e}"));
            }
        }
        "remove" => {}
        _ => r.add(
            &at.field("operation"),
            format!(
                "invalid operation. Available operations: {}",
                FILTER_OPERATIONS.map(|o| format!("\"{o}\"")).join(", ")
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Report;
    use crate::pb::mesh::ProxyTemplate;

    /// The violations of a ProxyTemplate spec written as universal YAML
    /// (its `selectors` and `conf`), as `field: message` lines.
    fn violations(yaml: &str) -> Vec<String> {
        let spec: ProxyTemplate = serde_saphyr::from_str(yaml).expect("a ProxyTemplate spec");
        Report::run(|r| super::validate(r, &spec)).iter().map(|v| format!("{}: {}", v.field, v.message)).collect()
    }

    const SELECTORS: &str = "selectors: [{match: {kuma.io/service: gw}}]\n";

    #[test]
    fn a_supported_template_is_accepted() {
        let yaml = format!(
            "{SELECTORS}conf:\n  imports: [gateway-proxy]\n  resources:\n  - name: extra\n    version: v1\n    resource: |\n      \"@type\": type.googleapis.com/envoy.config.cluster.v3.Cluster\n      name: extra\n      connectTimeout: 5s\n      type: STATIC\n  modifications:\n  - cluster: {{operation: remove, match: {{name: web}}}}\n  - listener:\n      operation: patch\n      match: {{origin: gateway}}\n      value: |\n        per_connection_buffer_limit_bytes: 32768\n  - cluster:\n      operation: add\n      value: 'name: added'\n"
        );
        assert_eq!(violations(&yaml), Vec::<String>::new());
    }

    #[test]
    fn the_incumbents_messages() {
        let yaml = format!(
            "{SELECTORS}conf:\n  imports: ['', custom]\n  resources:\n  - resource: 'name: x'\n  - name: a\n    version: v\n    resource: |\n      \"@type\": type.googleapis.com/envoy.config.cluster.v3.Cluster\n      name: a\n      bogus: 1\n  modifications:\n  - cluster: {{operation: merge}}\n  - cluster: {{operation: add, match: {{name: x}}, value: 'name: other'}}\n  - listener: {{operation: patch, value: 'address: 7'}}\n"
        );
        let v = violations(&yaml);
        let expected = [
            "conf.imports[0]: cannot be empty",
            "conf.imports[1]: profile not found. Available profiles: default-proxy,gateway-proxy",
            "conf.resources[0].name: cannot be empty",
            "conf.resources[0].version: cannot be empty",
            "conf.resources[0].resource: native Envoy resource is not valid: @type is required",
            "conf.modifications[0].cluster.operation: invalid operation. Available operations: \"add\", \"patch\", \"remove\"",
            "conf.modifications[1].cluster.match: cannot be defined",
        ];
        for e in expected {
            assert!(v.iter().any(|x| x == e), "missing {e:?} in {v:#?}");
        }
        assert!(
            v.iter().any(|x| x.starts_with("conf.resources[1].resource: native Envoy resource is not valid:")
                && x.contains("bogus")),
            "{v:#?}"
        );
        assert!(
            v.iter().any(|x| x.starts_with("conf.modifications[2].listener.value: native Envoy resource is not valid")),
            "{v:#?}"
        );
        assert_eq!(v.len(), expected.len() + 2, "{v:#?}");
    }

    /// A patch that sets `name` renamed every resource it matched: routes
    /// then named a cluster that no longer existed, and several patched
    /// resources shared one name (one xDS resource).
    /// 20,000 modifications were accepted, and each proxy's generation
    /// took minutes (quadratic in their number).
    #[test]
    fn modifications_are_bounded() {
        let n = super::MAX_MODIFICATIONS;
        let mods = |n: usize| "  - cluster: {operation: remove}\n".repeat(n);
        let yaml = |n: usize| format!("{SELECTORS}conf:\n  imports: [gateway-proxy]\n  modifications:\n{}", mods(n));
        assert_eq!(violations(&yaml(n)), Vec::<String>::new());
        assert_eq!(violations(&yaml(n + 1)), [format!("conf.modifications: at most {n} modifications, got {}", n + 1)]);
    }

    #[test]
    fn a_patch_cannot_rename() {
        let yaml = format!(
            "{SELECTORS}conf:
  modifications:
  - cluster: {{operation: patch, value: 'name: other'}}
  - listener: {{operation: patch, match: {{name: l}}, value: 'name: m'}}
  - cluster: {{operation: patch, match: {{name: web}}, value: \"name: web\\nconnectTimeout: 1s\"}}
"
        );
        assert_eq!(
            violations(&yaml),
            [
                "conf.modifications[0].cluster.value: a patch cannot change the name (to \"other\"): remove the resource and add it under the new name",
                "conf.modifications[1].listener.value: a patch cannot change the name (to \"m\"): remove the resource and add it under the new name",
            ]
        );
    }

    #[test]
    fn what_meridian_does_not_apply_is_refused() {
        let yaml = format!(
            "{SELECTORS}conf:\n  resources:\n  - name: r\n    version: v\n    resource: |\n      \"@type\": type.googleapis.com/envoy.config.route.v3.RouteConfiguration\n      name: r\n  modifications:\n  - httpFilter: {{operation: remove, match: {{listenerTags: {{a: b}}}}}}\n  - networkFilter: {{operation: remove, match: {{listenerTags: {{a: b}}}}}}\n  - virtualHost: {{operation: add, match: {{name: a}}, value: 'name: v'}}\n  - virtualHost: {{operation: patch, value: 'bogus: 1'}}\n  - listener: {{operation: remove, match: {{tags: {{a: b}}}}}}\n"
        );
        let v = violations(&yaml);
        for e in [
            "conf.modifications[0].httpFilter.match.listenerTags: not supported by Meridian yet",
            "conf.modifications[1].networkFilter.match.listenerTags: not supported by Meridian yet",
            "conf.modifications[2].virtualHost.match.name: cannot be defined",
            "conf.modifications[4].listener.match.tags: not supported by Meridian yet",
        ] {
            assert!(v.iter().any(|x| x == e), "missing {e:?} in {v:#?}");
        }
        assert!(
            v.iter()
                .any(|x| x.starts_with("conf.modifications[3].virtualHost.value: native Envoy resource is not valid")
                    && x.contains("bogus")),
            "{v:#?}"
        );
        assert!(
            v.iter()
                .any(|x| x.starts_with("conf.resources[0].resource:") && x.contains("not supported by Meridian yet")),
            "{v:#?}"
        );
    }

    #[test]
    fn http_filter_modifications_with_the_incumbents_messages() {
        let ok = format!(
            "{SELECTORS}conf:\n  modifications:\n  - httpFilter:\n      operation: addBefore\n      match: {{name: envoy.filters.http.router, listenerName: 'edge:HTTP:8080', origin: gateway}}\n      value: |\n        name: envoy.filters.http.header_mutation\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation\n          mutations:\n            response_mutations:\n            - append: {{header: {{key: x-added, value: added}}}}\n  - httpFilter: {{operation: addFirst, value: 'name: a'}}\n  - httpFilter: {{operation: addLast, value: 'name: b'}}\n  - httpFilter: {{operation: addAfter, match: {{name: a}}, value: 'name: c'}}\n  - httpFilter: {{operation: patch, match: {{name: a}}, value: 'typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router, suppress_envoy_headers: true}}'}}\n  - httpFilter: {{operation: remove}}\n"
        );
        assert_eq!(violations(&ok), Vec::<String>::new());
        let bad = format!(
            "{SELECTORS}conf:\n  modifications:\n  - httpFilter: {{operation: addBefore, value: 'name: x'}}\n  - httpFilter: {{operation: addAfter, value: 'name: x'}}\n  - httpFilter: {{operation: patch, value: 'name: x'}}\n  - httpFilter: {{operation: add, value: 'name: x'}}\n  - httpFilter: {{operation: addFirst, value: 'name: \"\"'}}\n  - httpFilter: {{operation: addLast, value: \"name: x\\nbogus: 1\"}}\n"
        );
        let v = violations(&bad);
        let expected = [
            "conf.modifications[0].httpFilter.match.name: cannot be empty. You need to pick a filter before which this one will be added",
            "conf.modifications[1].httpFilter.match.name: cannot be empty. You need to pick a filter after which this one will be added",
            "conf.modifications[2].httpFilter.match.name: cannot be empty",
            "conf.modifications[3].httpFilter.operation: invalid operation. Available operations: \"addFirst\", \"addLast\", \"addBefore\", \"addAfter\", \"patch\", \"remove\"",
            "conf.modifications[4].httpFilter.value: native Envoy resource is not valid: name: value length must be at least 1 characters",
        ];
        for e in expected {
            assert!(v.iter().any(|x| x == e), "missing {e:?} in {v:#?}");
        }
        assert!(
            v.iter()
                .any(|x| x.starts_with("conf.modifications[5].httpFilter.value: native Envoy resource is not valid")
                    && x.contains("bogus")),
            "{v:#?}"
        );
        assert_eq!(v.len(), expected.len() + 1, "{v:#?}");
    }

    #[test]
    fn network_filter_modifications_with_the_incumbents_messages() {
        let ok = format!(
            "{SELECTORS}conf:\n  modifications:\n  - networkFilter:\n      operation: addFirst\n      match: {{listenerName: 'edge:TCP:9000'}}\n      value: |\n        name: envoy.filters.network.connection_limit\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit\n          stat_prefix: limit\n          max_connections: 1\n  - networkFilter: {{operation: remove, match: {{name: envoy.filters.network.connection_limit}}}}\n"
        );
        assert_eq!(violations(&ok), Vec::<String>::new());
        let bad = format!(
            "{SELECTORS}conf:\n  modifications:\n  - networkFilter: {{operation: addBefore, value: 'name: x'}}\n  - networkFilter: {{operation: patch, value: 'bogus: 1'}}\n  - networkFilter: {{operation: add}}\n"
        );
        let v = violations(&bad);
        let expected = [
            "conf.modifications[0].networkFilter.match.name: cannot be empty. You need to pick a filter before which this one will be added",
            "conf.modifications[1].networkFilter.match.name: cannot be empty",
            "conf.modifications[2].networkFilter.operation: invalid operation. Available operations: \"addFirst\", \"addLast\", \"addBefore\", \"addAfter\", \"patch\", \"remove\"",
        ];
        for e in expected {
            assert!(v.iter().any(|x| x == e), "missing {e:?} in {v:#?}");
        }
        assert!(
            v.iter().any(|x| x
                .starts_with("conf.modifications[1].networkFilter.value: native Envoy resource is not valid")
                && x.contains("bogus")),
            "{v:#?}"
        );
        assert_eq!(v.len(), expected.len() + 1, "{v:#?}");
    }

    #[test]
    fn selectors_need_a_service_tag() {
        let v = violations("selectors: []\nconf: {imports: [default-proxy]}\n");
        assert!(v.iter().any(|x| x == "selectors: must have at least one element"), "{v:#?}");
    }
}
