//! Selection on plain values: specificity, tie-breaks, the multi-service
//! heuristic, unused policies, the retry policy.

use super::*;

fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn sel(pairs: &[(&str, &str)]) -> Vec<Selector> {
    vec![Selector { r#match: tags(pairs) }]
}

/// A Retry from `source` to `destination`, created at `at`.
fn retry(p: &mut Policies, name: &str, at: i64, source: &[(&str, &str)], destination: &[(&str, &str)]) {
    let spec = Spec::Retry(mesh::Retry { sources: sel(source), destinations: sel(destination), conf: None });
    assert!(p.upsert(name, at, &spec));
}

fn chosen(p: &Policies, source: &BTreeMap<String, String>, dests: &[&BTreeMap<String, String>]) -> Option<String> {
    select(p, ResourceType::Retry, source, dests).map(|i| i.name.clone())
}

#[test]
fn more_specific_wins_then_older_then_name() {
    let gw = tags(&[("kuma.io/service", "edge"), ("zone", "a")]);
    let web = tags(&[("kuma.io/service", "web")]);
    let mut p = Policies::default();
    retry(&mut p, "any", 1, &[("kuma.io/service", "*")], &[("kuma.io/service", "*")]);
    assert_eq!(chosen(&p, &gw, &[&web]).as_deref(), Some("any"));
    // An exact destination beats a wildcard one, whatever its age.
    retry(&mut p, "to-web", 5, &[("kuma.io/service", "*")], &[("kuma.io/service", "web")]);
    assert_eq!(chosen(&p, &gw, &[&web]).as_deref(), Some("to-web"));
    // More source tags beat fewer.
    retry(&mut p, "from-edge-a", 9, &[("kuma.io/service", "edge"), ("zone", "a")], &[("kuma.io/service", "web")]);
    assert_eq!(chosen(&p, &gw, &[&web]).as_deref(), Some("from-edge-a"));
    // Equal specificity: the older one; equal age: the smaller name.
    retry(&mut p, "b-twin", 3, &[("kuma.io/service", "edge"), ("zone", "a")], &[("kuma.io/service", "web")]);
    assert_eq!(chosen(&p, &gw, &[&web]).as_deref(), Some("b-twin"));
    retry(&mut p, "a-twin", 3, &[("kuma.io/service", "edge"), ("zone", "a")], &[("kuma.io/service", "web")]);
    assert_eq!(chosen(&p, &gw, &[&web]).as_deref(), Some("a-twin"));
    // The order policies were added in never matters.
    let mut q = Policies::default();
    for (name, at) in [("a-twin", 3), ("b-twin", 3), ("from-edge-a", 9), ("to-web", 5), ("any", 1)].into_iter().rev() {
        let item = p.of(ResourceType::Retry).find(|i| i.name == name).expect("policy");
        q.upsert(name, at, &item.spec);
    }
    assert_eq!(chosen(&q, &gw, &[&web]).as_deref(), Some("a-twin"));
}

#[test]
fn a_source_that_does_not_match_selects_nothing() {
    let mut p = Policies::default();
    retry(&mut p, "from-other", 1, &[("kuma.io/service", "other")], &[("kuma.io/service", "*")]);
    let gw = tags(&[("kuma.io/service", "edge")]);
    assert_eq!(chosen(&p, &gw, &[&tags(&[("kuma.io/service", "web")])]), None);
}

#[test]
fn several_services_take_a_wildcard_destination_one_service_its_own() {
    let gw = tags(&[("kuma.io/service", "edge")]);
    let (v1, v2) = (
        tags(&[("kuma.io/service", "web"), ("version", "v1")]),
        tags(&[("kuma.io/service", "web"), ("version", "v2")]),
    );
    let api = tags(&[("kuma.io/service", "api")]);
    let mut p = Policies::default();
    retry(&mut p, "to-web", 1, &[("kuma.io/service", "*")], &[("kuma.io/service", "web")]);
    retry(&mut p, "to-api", 2, &[("kuma.io/service", "*")], &[("kuma.io/service", "api")]);
    // All backends one service (two subsets): that service's policy.
    assert_eq!(chosen(&p, &gw, &[&v1, &v2]).as_deref(), Some("to-web"));
    // Different services: none of the per-service ones...
    assert_eq!(chosen(&p, &gw, &[&v1, &api]), None);
    // ...only a policy whose destination is a wildcard service.
    retry(&mut p, "to-all", 9, &[("kuma.io/service", "*")], &[("kuma.io/service", "*")]);
    assert_eq!(chosen(&p, &gw, &[&v1, &api]).as_deref(), Some("to-all"));
    assert_eq!(chosen(&p, &gw, &[&api]).as_deref(), Some("to-api"));
}

#[test]
fn unused_policies_are_reported_for_the_gateway_they_select() {
    let mut p = Policies::default();
    retry(&mut p, "to-nowhere", 1, &[("kuma.io/service", "edge")], &[("kuma.io/service", "ghost")]);
    retry(&mut p, "other-gateway", 1, &[("kuma.io/service", "other")], &[("kuma.io/service", "ghost")]);
    let warnings = Applied::default().unused(&p, &[tags(&[("kuma.io/service", "edge")])]);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("Retry \"to-nowhere\""), "{warnings:?}");
}

#[test]
fn retry_policy_defaults_and_http2_get_one_too() {
    let http = mesh::retry::conf::Http {
        num_retries: Some(pbjson_types::UInt32Value { value: 4 }),
        retriable_status_codes: vec![503],
        ..Default::default()
    };
    let r = retry_policy(&http);
    assert_eq!(r.retry_on, "gateway-error,connect-failure,refused-stream,retriable-status-codes");
    assert_eq!(r.num_retries, Some(UInt32Value { value: 4 }));
    assert_eq!(r.retriable_status_codes, [503]);
}

#[test]
fn sidecar_permissions_become_identity_principals() {
    use envoy_types::pb::envoy::config::rbac::v3::principal::Identifier;
    let mut snapshot = MeshSnapshot { mesh: "default".into(), ..Default::default() };
    let web = tags(&[("kuma.io/service", "web"), ("kuma.io/protocol", "http")]);
    // No TrafficPermission in the mesh: no RBAC (allow all).
    assert!(inbound_rbac(&snapshot, &web).is_none());
    let permission = |sources: Vec<Selector>, destination: &[(&str, &str)]| {
        Spec::TrafficPermission(mesh::TrafficPermission { sources, destinations: sel(destination) })
    };
    let sources = [sel(&[("kuma.io/service", "edge")]), sel(&[("kuma.io/service", "*"), ("version", "v2")])].concat();
    snapshot.policies.upsert("to-web", 1, &permission(sources, &[("kuma.io/service", "web")]));
    // An inbound no permission names: a policy-less ALLOW, every client denied.
    let db = tags(&[("kuma.io/service", "db")]);
    assert!(inbound_rbac(&snapshot, &db).expect("rbac").policies.is_empty());
    let rules = inbound_rbac(&snapshot, &web).expect("rbac");
    let policy = rules.policies.get("TrafficPermission=to-web").expect("one policy named after the permission");
    let names = |p: &envoy_types::pb::envoy::config::rbac::v3::Principal| -> Vec<String> {
        let one = |p: &envoy_types::pb::envoy::config::rbac::v3::Principal| match &p.identifier {
            Some(Identifier::Authenticated(a)) => {
                format!("{:?}", a.principal_name.as_ref().and_then(|m| m.match_pattern.clone()))
            }
            other => format!("{other:?}"),
        };
        match &p.identifier {
            Some(Identifier::AndIds(set)) => set.ids.iter().map(one).collect(),
            _ => vec![one(p)],
        }
    };
    assert_eq!(names(&policy.principals[0]), [r#"Some(Exact("spiffe://default/edge"))"#]);
    assert_eq!(
        names(&policy.principals[1]),
        [r#"Some(Prefix("spiffe://default/"))"#, r#"Some(Exact("kuma://version/v2"))"#]
    );
}

#[test]
fn applied_policies_are_sources_and_dependencies() {
    use crate::gateway::{Deps, MeshSnapshot, depends_on, sources};
    let deps = Deps { policies: [(ResourceType::Timeout, "t-1".to_string())].into(), ..Deps::default() };
    assert!(depends_on(&deps, ResourceType::Timeout, "t-1"));
    assert!(!depends_on(&deps, ResourceType::Timeout, "t-2"), "another Timeout");
    assert!(!depends_on(&deps, ResourceType::Retry, "t-1"), "the same name, another type");
    let mut snapshot = MeshSnapshot::new("default");
    snapshot.set_version(ResourceType::Timeout, "t-1", "v7");
    snapshot.set_version(ResourceType::Retry, "r-1", "v3");
    let listed = sources(&snapshot, "gw", &deps);
    assert_eq!(listed.get(&(ResourceType::Timeout, "t-1".to_string())).map(String::as_str), Some("v7"));
    assert!(!listed.contains_key(&(ResourceType::Retry, "r-1".to_string())), "not applied: {listed:?}");
}
