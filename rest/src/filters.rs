//! List filters of the incumbent's REST API (Kuma 2.14
//! `pkg/api-server/filters/filtering.go`): `?name=` (substring of the name)
//! on lists and `_overview`s, and for Dataplanes also repeated
//! `?tag=<key>:<value>` and `?gateway=true|false|builtin|delegated`.
//!
//! Where the incumbent silently ignores a malformed `tag`, Meridian answers
//! 400 with the field (`tag`: "must be key:value"), as it does for every
//! other bad input.

use std::collections::BTreeMap;

use meridian_core::Entry;
use meridian_sync_proto::{
    ResourceType, Spec, pb::mesh::Dataplane, pb::mesh::dataplane::networking::gateway::GatewayType,
};

use crate::{error::ApiError, state::ApiState};

/// One page of `ty` (in `mesh`, or every mesh) that passes `filter`, and the
/// number of resources that pass. Without a filter the store pages; with
/// one, every resource of the type in scope is read and filtered here (the
/// store has no substring or spec index), so a filtered list costs a full
/// read of the type.
///
/// Errors: the store's, as [`ApiError`].
pub async fn filtered_page(
    s: &ApiState,
    ty: ResourceType,
    mesh: Option<&str>,
    filter: &ListFilter,
    offset: u64,
    size: u64,
) -> Result<(Vec<Entry>, u64), ApiError> {
    if filter.is_empty() {
        return Ok(s.manager.list(ty, mesh, BTreeMap::new(), offset, Some(size)).await?);
    }
    let (all, _) = s.manager.list(ty, mesh, BTreeMap::new(), 0, None).await?;
    let kept: Vec<Entry> =
        all.into_iter().filter(|e| filter.matches(&e.resource.meta.name, &e.resource.spec)).collect();
    let total = kept.len() as u64;
    let skip = usize::try_from(offset).unwrap_or(usize::MAX);
    let take = usize::try_from(size).unwrap_or(usize::MAX);
    let page = kept.into_iter().skip(skip).take(take).collect();
    Ok((page, total))
}

/// Which Dataplanes `?gateway=` keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayFilter {
    /// `true`: gateways of either kind.
    Any,
    /// `false`: Dataplanes that are not gateways.
    NotGateway,
    /// `builtin`: gateways Meridian configures (`type: BUILTIN`).
    Builtin,
    /// `delegated`: third-party gateways (`type: DELEGATED`, the default).
    Delegated,
}

impl GatewayFilter {
    fn parse(v: &str) -> Result<GatewayFilter, ApiError> {
        match v {
            "true" => Ok(GatewayFilter::Any),
            "false" => Ok(GatewayFilter::NotGateway),
            "builtin" => Ok(GatewayFilter::Builtin),
            "delegated" => Ok(GatewayFilter::Delegated),
            other => Err(ApiError::field(
                "gateway",
                format!("must be one of true, false, builtin, delegated; got {other:?}"),
            )),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            GatewayFilter::Any => "true",
            GatewayFilter::NotGateway => "false",
            GatewayFilter::Builtin => "builtin",
            GatewayFilter::Delegated => "delegated",
        }
    }
}

/// The filters of one list request. Empty = keep everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// `?name=`: keep names containing this substring (case-sensitive, as
    /// the incumbent's `ListByNameContains`).
    pub name: Option<String>,
    /// `?tag=k:v`, repeatable: every pair must match one inbound's tags (or
    /// the gateway's tags): key equal, value a substring (the incumbent's
    /// `MatchTagsFuzzy`). Dataplanes only.
    pub tags: Vec<(String, String)>,
    /// `?gateway=`. Dataplanes only.
    pub gateway: Option<GatewayFilter>,
}

impl ListFilter {
    /// Reads the filters from the query pairs, in order; `size` and `offset`
    /// and unknown parameters are left alone. `dataplanes` enables `tag` and
    /// `gateway` (elsewhere they are ignored, as the incumbent does).
    ///
    /// Errors (400 with the field): a `tag` without `:` or with an empty key,
    /// a `gateway` outside `true|false|builtin|delegated`.
    pub fn parse(query: &[(String, String)], dataplanes: bool) -> Result<ListFilter, ApiError> {
        let mut f = ListFilter::default();
        for (k, v) in query {
            match k.as_str() {
                "name" if !v.is_empty() => f.name = Some(v.clone()),
                "tag" if dataplanes => match v.split_once(':') {
                    Some((key, value)) if !key.is_empty() => f.tags.push((key.to_string(), value.to_string())),
                    _ => return Err(ApiError::field("tag", format!("must be key:value, got {v:?}"))),
                },
                "gateway" if dataplanes && !v.is_empty() => f.gateway = Some(GatewayFilter::parse(v)?),
                _ => {}
            }
        }
        Ok(f)
    }

    /// Whether no filter is set (the store can page directly).
    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.tags.is_empty() && self.gateway.is_none()
    }

    /// Whether a resource named `name` with `spec` passes. Tag and gateway
    /// filters pass only Dataplanes.
    pub fn matches(&self, name: &str, spec: &Spec) -> bool {
        if self.name.as_deref().is_some_and(|n| !name.contains(n)) {
            return false;
        }
        if self.tags.is_empty() && self.gateway.is_none() {
            return true;
        }
        match spec {
            Spec::Dataplane(dp) => self.matches_dataplane(dp),
            _ => false,
        }
    }

    fn matches_dataplane(&self, dp: &Dataplane) -> bool {
        let net = dp.networking.as_ref();
        let gateway = net.and_then(|n| n.gateway.as_ref());
        let gateway_ok = match (self.gateway, gateway) {
            (None, _) => true,
            (Some(GatewayFilter::Any), g) => g.is_some(),
            (Some(GatewayFilter::NotGateway), g) => g.is_none(),
            (Some(GatewayFilter::Builtin), Some(g)) => g.r#type == GatewayType::Builtin as i32,
            (Some(GatewayFilter::Delegated), Some(g)) => g.r#type == GatewayType::Delegated as i32,
            (Some(_), None) => false,
        };
        if !gateway_ok {
            return false;
        }
        if self.tags.is_empty() {
            return true;
        }
        let fuzzy = |tags: &std::collections::BTreeMap<String, String>| {
            self.tags.iter().all(|(k, v)| tags.get(k).is_some_and(|got| got.contains(v.as_str())))
        };
        // A gateway's tags are its identity; its inbounds (none, by
        // validation) do not count, as in the incumbent.
        match gateway {
            Some(g) => fuzzy(&g.tags),
            None => net.is_some_and(|n| n.inbound.iter().any(|i| fuzzy(&i.tags))),
        }
    }

    /// The filters as a query string (`&name=..&tag=..`), each pair led by
    /// `&`, for `next` links; empty when no filter is set.
    pub fn query_suffix(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if let Some(n) = &self.name {
            q.append_pair("name", n);
        }
        for (k, v) in &self.tags {
            q.append_pair("tag", &format!("{k}:{v}"));
        }
        if let Some(g) = self.gateway {
            q.append_pair("gateway", g.as_str());
        }
        let s = q.finish();
        if s.is_empty() { s } else { format!("&{s}") }
    }
}

#[cfg(test)]
mod tests {
    use meridian_sync_proto::{ResourceType, universal};
    use serde_json::json;

    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn dp(v: serde_json::Value) -> Spec {
        let r = universal::from_value(v).expect("valid dataplane");
        assert_eq!(r.resource_type(), ResourceType::Dataplane);
        r.spec
    }

    fn builtin() -> Spec {
        dp(json!({"type": "Dataplane", "mesh": "default", "name": "gw-1", "networking": {
            "address": "10.0.0.1", "gateway": {"type": "BUILTIN", "tags": {"kuma.io/service": "edge-gateway", "env": "prod"}}}}))
    }

    fn delegated() -> Spec {
        dp(json!({"type": "Dataplane", "mesh": "default", "name": "kong-01", "networking": {
            "address": "10.0.0.2", "gateway": {"tags": {"kuma.io/service": "kong"}},
            "outbound": [{"port": 33033, "tags": {"kuma.io/service": "backend"}}]}}))
    }

    fn service() -> Spec {
        dp(json!({"type": "Dataplane", "mesh": "default", "name": "web-1", "networking": {
            "address": "10.0.0.3", "inbound": [
                {"port": 8080, "tags": {"kuma.io/service": "web", "version": "v1"}},
                {"port": 9090, "tags": {"kuma.io/service": "web-admin", "version": "v2"}}]}}))
    }

    fn keeps(filter: &[(&str, &str)], name: &str, spec: &Spec) -> bool {
        ListFilter::parse(&q(filter), true).expect("valid filter").matches(name, spec)
    }

    #[test]
    fn gateway_kinds() {
        let all = [("gw-1", builtin()), ("kong-01", delegated()), ("web-1", service())];
        let kept =
            |f: &[(&str, &str)]| -> Vec<&str> { all.iter().filter(|(n, s)| keeps(f, n, s)).map(|(n, _)| *n).collect() };
        assert_eq!(kept(&[]), ["gw-1", "kong-01", "web-1"]);
        assert_eq!(kept(&[("gateway", "true")]), ["gw-1", "kong-01"]);
        assert_eq!(kept(&[("gateway", "false")]), ["web-1"]);
        assert_eq!(kept(&[("gateway", "builtin")]), ["gw-1"]);
        assert_eq!(kept(&[("gateway", "delegated")]), ["kong-01"]);
        assert_eq!(kept(&[("name", "-0")]), ["kong-01"]);
        assert_eq!(kept(&[("name", "1"), ("gateway", "false")]), ["web-1"]);
    }

    #[test]
    fn tags_are_fuzzy_and_must_all_match_one_inbound() {
        let web = service();
        assert!(keeps(&[("tag", "kuma.io/service:web")], "web-1", &web));
        assert!(keeps(&[("tag", "kuma.io/service:we")], "web-1", &web), "value is a substring");
        assert!(keeps(&[("tag", "kuma.io/service:web"), ("tag", "version:v1")], "web-1", &web));
        assert!(keeps(&[("tag", "kuma.io/service:admin"), ("tag", "version:v2")], "web-1", &web));
        assert!(
            !keeps(&[("tag", "kuma.io/service:admin"), ("tag", "version:v1")], "web-1", &web),
            "both pairs must match the same inbound"
        );
        assert!(!keeps(&[("tag", "kuma.io/servic:web")], "web-1", &web), "keys are exact");
        assert!(keeps(&[("tag", "env:prod")], "gw-1", &builtin()), "gateway tags count");
        assert!(!keeps(&[("tag", "env:prod")], "kong-01", &delegated()));
        assert!(keeps(&[("tag", "env:")], "gw-1", &builtin()), "an empty value matches any value of the key");
    }

    #[test]
    fn bad_values_name_the_field() {
        for (pairs, field) in
            [(&[("tag", "nocolon")][..], "tag"), (&[("tag", ":v")][..], "tag"), (&[("gateway", "yes")][..], "gateway")]
        {
            let e = ListFilter::parse(&q(pairs), true).expect_err("invalid");
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
            assert_eq!(e.invalid_parameters[0].field, field, "{pairs:?}");
        }
        assert_eq!(
            ListFilter::parse(&q(&[("tag", "x")]), false).ok(),
            Some(ListFilter::default()),
            "not a dataplane list"
        );
    }

    #[test]
    fn next_links_carry_the_filters() {
        let f =
            ListFilter::parse(&q(&[("name", "a b"), ("tag", "k:v/1"), ("gateway", "builtin"), ("size", "2")]), true)
                .expect("valid");
        assert_eq!(f.query_suffix(), "&name=a+b&tag=k%3Av%2F1&gateway=builtin");
        assert_eq!(ListFilter::default().query_suffix(), "");
    }
}
