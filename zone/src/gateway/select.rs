//! Tag selection: which MeshGateway a Dataplane serves, and which routes
//! attach to a listener.

use std::collections::BTreeMap;

use meridian_sync_proto::pb::mesh::{MeshGateway, Selector};

use super::{Item, MeshSnapshot};

/// How well a selector matches tags: `None` when it does not (some key is
/// missing or has another value), else (matched tags, exact values).
pub(super) fn rank(selector: &BTreeMap<String, String>, tags: &BTreeMap<String, String>) -> Option<(usize, usize)> {
    let mut exact = 0;
    for (k, v) in selector {
        match tags.get(k) {
            Some(_) if v == "*" => {}
            Some(t) if t == v => exact += 1,
            _ => return None,
        }
    }
    Some((selector.len(), exact))
}

/// Whether a selector matches tags (every key present, equal or `*`).
pub fn tags_match(selector: &BTreeMap<String, String>, tags: &BTreeMap<String, String>) -> bool {
    rank(selector, tags).is_some()
}

/// Whether any of `selectors` matches `tags`.
pub fn selector_matches(selectors: &[Selector], tags: &BTreeMap<String, String>) -> bool {
    selectors.iter().any(|s| tags_match(&s.r#match, tags))
}

/// The MeshGateway serving a Dataplane with these gateway tags: the best
/// ranked one (more matched tags, then more exact values), the newer on a
/// tie, then the greater name (so the choice never depends on map order).
pub(super) fn select_gateway<'a>(
    snapshot: &'a MeshSnapshot,
    tags: &BTreeMap<String, String>,
) -> Option<&'a Item<MeshGateway>> {
    snapshot
        .gateways
        .values()
        .filter_map(|g| {
            let best = g.spec.selectors.iter().filter_map(|s| rank(&s.r#match, tags)).max()?;
            Some(((best, g.creation_time, g.name.as_str()), g))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, g)| g)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn gateway(name: &str, at: i64, selector: &[(&str, &str)]) -> Item<MeshGateway> {
        Item {
            name: name.into(),
            creation_time: at,
            spec: MeshGateway { selectors: vec![Selector { r#match: tags(selector) }], ..Default::default() },
        }
    }

    #[test]
    fn ranking_prefers_more_tags_then_exact_then_newer() {
        let dp = tags(&[("kuma.io/service", "gw"), ("zone", "a")]);
        assert_eq!(rank(&tags(&[("kuma.io/service", "*")]), &dp), Some((1, 0)));
        assert_eq!(rank(&tags(&[("kuma.io/service", "other")]), &dp), None);
        assert_eq!(rank(&tags(&[("missing", "*")]), &dp), None);

        let mut s = MeshSnapshot::new("default");
        for g in [
            gateway("wild", 5, &[("kuma.io/service", "*"), ("zone", "*")]),
            gateway("one", 9, &[("kuma.io/service", "gw")]),
            gateway("two", 1, &[("kuma.io/service", "gw"), ("zone", "a")]),
        ] {
            s.gateways.insert(g.name.clone(), g);
        }
        assert_eq!(select_gateway(&s, &dp).map(|g| g.name.as_str()), Some("two"));
        let g = gateway("two-newer", 2, &[("kuma.io/service", "gw"), ("zone", "a")]);
        s.gateways.insert(g.name.clone(), g);
        assert_eq!(select_gateway(&s, &dp).map(|g| g.name.as_str()), Some("two-newer"));
        assert!(select_gateway(&s, &tags(&[("kuma.io/service", "nope")])).is_none());
    }
}
