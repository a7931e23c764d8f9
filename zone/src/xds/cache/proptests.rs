//! The incremental cache against a from-scratch one: random sequences of
//! changes (upserts and deletions of Meshes, MeshGateways, routes, gateway
//! and sidecar Dataplanes, policies, Secrets, this zone's and other zones'
//! ZoneIngresses) are applied to one [`Cache`] whose proxies stay
//! subscribed (so each change regenerates only the proxies [`affected`]
//! picks, reusing their encoded outputs and the Envoy routes of each
//! MeshGatewayRoute whose inputs did not change,
//! [`crate::gateway::generate_reusing`]; the universe has changes that alter
//! a route's inputs but not its spec: another route's EXACT path, its
//! listener's tags); after every change, each proxy's
//! published configuration must equal, byte for byte, what a fresh cache
//! holding the same resources generates for it alone (no generation shared
//! with a gateway's replicas, no encoded output reused). A fixed number of cases keeps it
//! to a few seconds.

use std::collections::BTreeMap;

use meridian_sync_proto::{Resource, universal};
use proptest::prelude::*;

use super::{Cache, ProxyId, ProxyState};
use crate::gateway::SECRET_TYPE;

/// Two certificates (the HTTPS golden's), base64 PEM.
const CERT_A: &str = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJwekNDQVUyZ0F3SUJBZ0lVWE9aYUp3akhUblh4L0RCUWVrelR4d2tNcWdRd0NnWUlLb1pJemowRUF3SXcKR2pFWU1CWUdBMVVFQXd3UFptOXZMbVY0WVcxd2JHVXVZMjl0TUNBWERUSTJNVEV5TWpBek5USXhOMW9ZRHpJeApNall4TURJNU1ETTFNakUzV2pBYU1SZ3dGZ1lEVlFRRERBOW1iMjh1WlhoaGJYQnNaUzVqYjIwd1dUQVRCZ2NxCmhrak9QUUlCQmdncWhrak9QUU1CQndOQ0FBUjZLWDB3MXNPWmRTNFdEWHEvcnJLMU1neTErckt6dWg5RGlHejIKYU5zeVBJRTNEdzhhZ09nN1l5bU41dTlvYWZkdTVsNGR0S1d1YVY0QTBGWmRaZEdybzI4d2JUQWRCZ05WSFE0RQpGZ1FVRHIxaGVlVHhoaGhJbzBMM2xaVk04V2V5YVBvd0h3WURWUjBqQkJnd0ZvQVVEcjFoZWVUeGhoaElvMEwzCmxaVk04V2V5YVBvd0R3WURWUjBUQVFIL0JBVXdBd0VCL3pBYUJnTlZIUkVFRXpBUmdnOW1iMjh1WlhoaGJYQnMKWlM1amIyMHdDZ1lJS29aSXpqMEVBd0lEU0FBd1JRSWhBSkpSa203R1NwYkhNcDBxQnhLaCtJaGNZL2NBY3BnZwphazBBM012T1h4K0pBaUFsOGU2UVJxZU9SUjNQazFFL0pUTzVEeWcwZmV0UEtKeHVFc2thaE1jbEp3PT0KLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQotLS0tLUJFR0lOIFBSSVZBVEUgS0VZLS0tLS0KTUlHSEFnRUFNQk1HQnlxR1NNNDlBZ0VHQ0NxR1NNNDlBd0VIQkcwd2F3SUJBUVFnUFZUVzZaNzRjMTBxUlMyagpjUEEwelM2NThKNmg2ZmxBTWZTSW1UMm42bStoUkFOQ0FBUjZLWDB3MXNPWmRTNFdEWHEvcnJLMU1neTErckt6CnVoOURpR3oyYU5zeVBJRTNEdzhhZ09nN1l5bU41dTlvYWZkdTVsNGR0S1d1YVY0QTBGWmRaZEdyCi0tLS0tRU5EIFBSSVZBVEUgS0VZLS0tLS0K";
const CERT_B: &str = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJwakNDQVUyZ0F3SUJBZ0lVT0RGT2ZsV1N3QzhPWGlYUElUKzZtVUVwL2hvd0NnWUlLb1pJemowRUF3SXcKR2pFWU1CWUdBMVVFQXd3UFltRnlMbVY0WVcxd2JHVXVZMjl0TUNBWERUSTJNVEV5TWpBek5USXhOMW9ZRHpJeApNall4TURJNU1ETTFNakUzV2pBYU1SZ3dGZ1lEVlFRRERBOWlZWEl1WlhoaGJYQnNaUzVqYjIwd1dUQVRCZ2NxCmhrak9QUUlCQmdncWhrak9QUU1CQndOQ0FBU1ZYTXVOZkVSbEFGM2dxM0owb0ZLNnV4ODFETkl0L1p4WmJUS0EKcVcxc3V3SlVJQTd4T29IbytxWHJzMGxPSHZVelRZUzl1YVZTSXltcWNIU243Y0w4bzI4d2JUQWRCZ05WSFE0RQpGZ1FVK1NMRVc0V05MYU9XV3hOS3VJOUpnVGFtMTNvd0h3WURWUjBqQkJnd0ZvQVUrU0xFVzRXTkxhT1dXeE5LCnVJOUpnVGFtMTNvd0R3WURWUjBUQVFIL0JBVXdBd0VCL3pBYUJnTlZIUkVFRXpBUmdnOWlZWEl1WlhoaGJYQnMKWlM1amIyMHdDZ1lJS29aSXpqMEVBd0lEUndBd1JBSWhBS1krYjk0RzlrSjVDNCtzZnFpRkJLdTV1UlBRaXpGNApCVTVsMWQ5VXUvYnNBaDk2djFQaWxYbmlESlMzcWdTMlZuSGJ1dTFCNTFyMmNYelh5S1BXaEZJcwotLS0tLUVORCBDRVJUSUZJQ0FURS0tLS0tCi0tLS0tQkVHSU4gUFJJVkFURSBLRVktLS0tLQpNSUdIQWdFQU1CTUdCeXFHU000OUFnRUdDQ3FHU000OUF3RUhCRzB3YXdJQkFRUWc0N3hSL056TG8zakFLZ3lECng4VlphaVhqWFFvaXNScFk4TkFVRXRnbnZ4V2hSQU5DQUFTVlhNdU5mRVJsQUYzZ3EzSjBvRks2dXg4MUROSXQKL1p4WmJUS0FxVzFzdXdKVUlBN3hPb0hvK3FYcnMwbE9IdlV6VFlTOXVhVlNJeW1xY0hTbjdjTDgKLS0tLS1FTkQgUFJJVkFURSBLRVktLS0tLQo=";

/// Every resource the sequences play with: per key, its variants (a step
/// picks a key and a variant, or deletes it).
fn universe() -> Vec<Vec<String>> {
    let gw_tags = |s: &str| {
        format!("networking: {{address: 10.9.0.1, gateway: {{type: BUILTIN, tags: {{kuma.io/service: {s}}}}}}}")
    };
    let policy = |ty: &str, name: &str, dest: &str, conf: &str| {
        format!(
            "type: {ty}\nmesh: default\nname: {name}\nsources: [{{match: {{kuma.io/service: '*'}}}}]\ndestinations: [{{match: {{kuma.io/service: '{dest}'}}}}]\nconf: {conf}"
        )
    };
    vec![
        vec![
            "type: Mesh\nname: default".into(),
            "type: Mesh\nname: default\nmtls: {enabledBackend: ca-1, backends: [{name: ca-1, type: builtin}]}".into(),
        ],
        vec![
            "type: MeshGateway\nmesh: default\nname: gw-a\nselectors: [{match: {kuma.io/service: a}}]\nconf: {listeners: [{port: 8080, protocol: HTTP}]}".into(),
            "type: MeshGateway\nmesh: default\nname: gw-a\nselectors: [{match: {kuma.io/service: a}}]\nconf: {listeners: [{port: 8080, protocol: HTTP, hostname: a.example.com}, {port: 8443, protocol: HTTPS, hostname: foo.example.com, tls: {mode: TERMINATE, certificates: [{secret: foo-cert}]}}]}".into(),
            // The first one with listener tags (the source of route
            // policies): same route configuration and virtual host, the
            // routes' inputs change, not the routes.
            "type: MeshGateway\nmesh: default\nname: gw-a\nselectors: [{match: {kuma.io/service: a}}]\nconf: {listeners: [{port: 8080, protocol: HTTP, tags: {edge: 'yes'}}]}".into(),
        ],
        vec![
            "type: MeshGateway\nmesh: default\nname: gw-b\nselectors: [{match: {kuma.io/service: b}}]\nconf: {listeners: [{port: 9000, protocol: TCP}]}".into(),
            "type: MeshGateway\nmesh: default\nname: gw-b\nselectors: [{match: {kuma.io/service: b}}]\nconf: {listeners: [{port: 9000, protocol: TCP}, {port: 8081, protocol: HTTP}]}".into(),
        ],
        vec![
            "type: MeshGatewayRoute\nmesh: default\nname: r-web\nselectors: [{match: {kuma.io/service: a}}]\nconf: {http: {rules: [{matches: [{path: {match: PREFIX, value: /}}], backends: [{destination: {kuma.io/service: web}}]}]}}".into(),
            "type: MeshGatewayRoute\nmesh: default\nname: r-web\nselectors: [{match: {kuma.io/service: a}}]\nconf: {http: {rules: [{matches: [{path: {match: PREFIX, value: /v2}}], backends: [{weight: 1, destination: {kuma.io/service: web, version: v2}}, {weight: 1, destination: {kuma.io/service: api}}]}]}}".into(),
            // A PREFIX /api that r-api's EXACT /api overrides (another
            // route's change alters this one's routes), and a redirect
            // keeping the listener's port.
            "type: MeshGatewayRoute\nmesh: default\nname: r-web\nselectors: [{match: {kuma.io/service: a}}]\nconf: {http: {rules: [{matches: [{path: {match: PREFIX, value: /api}}], backends: [{destination: {kuma.io/service: web}}]}, {matches: [{path: {match: EXACT, value: /old}}], filters: [{redirect: {hostname: new.example.com, statusCode: 301}}]}]}}".into(),
        ],
        vec![
            "type: MeshGatewayRoute\nmesh: default\nname: r-api\nselectors: [{match: {kuma.io/service: a}}]\nconf: {http: {rules: [{matches: [{path: {match: EXACT, value: /api}}], backends: [{destination: {kuma.io/service: payments}}]}]}}".into(),
            "type: MeshGatewayRoute\nmesh: default\nname: r-api\nselectors: [{match: {kuma.io/service: b}}]\nconf: {http: {rules: [{matches: [{path: {match: PREFIX, value: /api}}], backends: [{destination: {kuma.io/service: api}}]}]}}".into(),
        ],
        // Always on gw-a: a PREFIX /api that r-api's first variant (an
        // EXACT /api on gw-a) overrides, so r-api's changes alter this
        // route's Envoy routes while its own spec stays the same.
        vec![
            "type: MeshGatewayRoute\nmesh: default\nname: r-prefix\nselectors: [{match: {kuma.io/service: a}}]\nconf: {http: {rules: [{matches: [{path: {match: PREFIX, value: /api/}}], backends: [{destination: {kuma.io/service: web}}]}]}}".into(),
        ],
        vec![
            "type: MeshGatewayRoute\nmesh: default\nname: r-tcp\nselectors: [{match: {kuma.io/service: b}}]\nconf: {tcp: {rules: [{backends: [{destination: {kuma.io/service: redis}}]}]}}".into(),
        ],
        vec![format!("type: Dataplane\nmesh: default\nname: g-a1\n{}", gw_tags("a"))],
        // A replica of g-a1 (another address), and one that is not (other tags).
        vec![
            format!("type: Dataplane\nmesh: default\nname: g-a2\n{}", gw_tags("a").replace("10.9.0.1", "10.9.0.2")),
            format!("type: Dataplane\nmesh: default\nname: g-a2\n{}", gw_tags("b").replace("10.9.0.1", "10.9.0.2")),
        ],
        vec![format!("type: Dataplane\nmesh: default\nname: g-b1\n{}", gw_tags("b"))],
        vec![
            "type: Dataplane\nmesh: default\nname: web-1\nnetworking: {address: 10.0.0.1, inbound: [{port: 8080, tags: {kuma.io/service: web, version: v1, kuma.io/protocol: http}}]}".into(),
            "type: Dataplane\nmesh: default\nname: web-1\nnetworking: {address: 10.0.0.1, inbound: [{port: 8080, tags: {kuma.io/service: web, version: v2, kuma.io/protocol: http}, health: {ready: false}}], outbound: [{port: 10001, tags: {kuma.io/service: api}}]}".into(),
        ],
        vec![
            "type: Dataplane\nmesh: default\nname: api-1\nnetworking: {address: 10.0.0.2, inbound: [{port: 8080, tags: {kuma.io/service: api}}]}".into(),
            "type: Dataplane\nmesh: default\nname: api-1\nnetworking: {address: 10.0.0.3, inbound: [{port: 8080, tags: {kuma.io/service: api}}, {port: 6379, tags: {kuma.io/service: redis}}]}".into(),
        ],
        vec![
            "type: Dataplane\nmesh: default\nname: side-1\nnetworking: {address: 10.0.0.4, inbound: [{port: 80, tags: {kuma.io/service: side}}], outbound: [{port: 10001, tags: {kuma.io/service: web}}, {port: 10002, tags: {kuma.io/service: payments}}]}".into(),
        ],
        vec![
            policy("Timeout", "t-web", "web", "{connectTimeout: 2s, http: {requestTimeout: 1.5s}}"),
            policy("Timeout", "t-web", "*", "{http: {requestTimeout: 20s}, tcp: {idleTimeout: 600s}}"),
        ],
        vec![policy("Retry", "retry-api", "api", "{http: {numRetries: 3}, tcp: {maxConnectAttempts: 2}}")],
        // Only from listeners tagged `edge: yes` (gw-a's third variant):
        // gw-a's changes alter its routes' policies while they stay the same.
        vec!["type: Timeout\nmesh: default\nname: t-edge\nsources: [{match: {kuma.io/service: a, edge: 'yes'}}]\ndestinations: [{match: {kuma.io/service: '*'}}]\nconf: {http: {requestTimeout: 7s}}".into()],
        vec![policy("CircuitBreaker", "cb-web", "web", "{thresholds: {maxConnections: 10}}")],
        vec!["type: TrafficPermission\nmesh: default\nname: allow-all\nsources: [{match: {kuma.io/service: '*'}}]\ndestinations: [{match: {kuma.io/service: '*'}}]".into()],
        vec![
            format!("type: Secret\nmesh: default\nname: foo-cert\ndata: {CERT_A}"),
            format!("type: Secret\nmesh: default\nname: foo-cert\ndata: {CERT_B}"),
        ],
        vec![
            "type: ZoneIngress\nname: zone-2.ingress\nlabels: {kuma.io/zone: zone-2}\nzone: zone-2\nnetworking: {address: 10.1.0.20, port: 10001, advertisedAddress: 192.0.2.2, advertisedPort: 10002}\navailableServices: [{mesh: default, instances: 3, tags: {kuma.io/service: web, version: v1}}]".into(),
            "type: ZoneIngress\nname: zone-2.ingress\nlabels: {kuma.io/zone: zone-2}\nzone: zone-2\nnetworking: {address: 10.1.0.20, port: 10001, advertisedAddress: 192.0.2.2, advertisedPort: 10002}\navailableServices: [{mesh: default, instances: 2, tags: {kuma.io/service: payments}}, {mesh: default, instances: 1, tags: {kuma.io/service: api}}]".into(),
        ],
        vec![
            "type: ZoneIngress\nname: zone-3.ingress\nlabels: {kuma.io/zone: zone-3}\nzone: zone-3\nnetworking: {address: 10.2.0.20, port: 10001}\navailableServices: [{mesh: other, instances: 4, tags: {kuma.io/service: redis}}]".into(),
        ],
        vec![
            "type: ZoneIngress\nname: ingress-1\nnetworking: {address: 10.0.0.20, port: 10001, advertisedAddress: 192.0.2.1, advertisedPort: 10001}".into(),
        ],
    ]
}

fn parse(yaml: &str) -> Resource {
    let mut all = universal::parse_resources(yaml).expect("yaml");
    assert_eq!(all.len(), 1, "{yaml}");
    all.remove(0).expect("resource")
}

/// The proxies kept subscribed: three gateways, two sidecars, this zone's ingress.
fn proxies() -> Vec<ProxyId> {
    let dp = |n: &str| ProxyId { mesh: "default".into(), name: n.into() };
    vec![
        dp("g-a1"),
        dp("g-a2"),
        dp("g-b1"),
        dp("side-1"),
        dp("web-1"),
        ProxyId { mesh: String::new(), name: "ingress-1".into() },
    ]
}

/// What must match between the two caches: every generated resource,
/// byte for byte (the identity certificates of mesh mTLS are left out: they
/// are issued with fresh keys, not generated), the warnings and the sources.
/// Returns the first difference.
fn difference(got: &ProxyState, want: &ProxyState) -> Option<String> {
    let resources = |state: &ProxyState| -> Result<BTreeMap<(String, String), Vec<u8>>, String> {
        let types = state.config.as_ref().map_err(|e| e.to_string())?;
        Ok(types
            .iter()
            .flat_map(|(t, set)| set.iter().map(move |(n, d)| ((t.clone(), n.clone()), d)))
            .filter(|((t, n), _)| *t != SECRET_TYPE() || n.starts_with("secret:"))
            .map(|(k, d)| (k, [d.version.as_bytes(), &d.resource.value[..]].concat()))
            .collect())
    };
    match (resources(got), resources(want)) {
        (Ok(g), Ok(w)) => {
            let names = g.keys().chain(w.keys()).collect::<std::collections::BTreeSet<_>>();
            if let Some(k) = names.into_iter().find(|k| g.get(*k) != w.get(*k)) {
                return Some(format!("{k:?}: incremental {} / from scratch {}", g.contains_key(k), w.contains_key(k)));
            }
        }
        (g, w) if g.as_ref().err() != w.as_ref().err() => return Some(format!("{:?} / {:?}", g.err(), w.err())),
        _ => {}
    }
    if got.warnings != want.warnings {
        return Some(format!("warnings {:?} / {:?}", got.warnings, want.warnings));
    }
    (got.sources != want.sources).then(|| format!("sources {:?} / {:?}", got.sources, want.sources))
}

/// One step: key index, and a variant (`None`: delete the resource).
fn steps() -> impl Strategy<Value = Vec<(usize, Option<usize>)>> {
    let keys = universe().len();
    prop::collection::vec((0..keys, prop::option::weighted(0.75, 0..3usize)), 1..14)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn incremental_generation_equals_a_full_regeneration(steps in steps()) {
        let universe = universe();
        let parsed: Vec<Vec<Resource>> = universe.iter().map(|vs| vs.iter().map(|y| parse(y)).collect()).collect();
        let incremental = Cache::new("zone-1");
        let subs: Vec<_> = proxies().iter().map(|id| incremental.subscribe(id)).collect();
        // Key index → the variant in the world now: every resource's first
        // variant to begin with (this zone's ingress too), so that every
        // step lands among all the others.
        let mut world: BTreeMap<usize, usize> = BTreeMap::new();
        for (k, variants) in parsed.iter().enumerate() {
            incremental.upsert_for_test(&variants[0]);
            world.insert(k, 0);
        }
        for (step, (key, variant)) in steps.iter().enumerate() {
            let variants = &parsed[*key];
            match variant {
                Some(v) => {
                    let v = v % variants.len();
                    incremental.upsert_for_test(&variants[v]);
                    world.insert(*key, v);
                }
                None => {
                    incremental.remove_for_test(&variants[0]);
                    world.remove(key);
                }
            }
            // A Mesh turning mTLS on or off walks through phases, each step
            // once every proxy holds the previous one (`Cache::step_tls`):
            // report every proxy holding what it was sent until the mesh is
            // settled, as the xDS streams do once Envoy ACKs. A fresh cache
            // starts settled at the target, which is what must be reached.
            for _ in 0..8 {
                if incremental.tls_phase("default").is_none_or(|(_, settled)| settled) {
                    break;
                }
                for (id, sub) in proxies().iter().zip(&subs) {
                    let phase = sub.rx.borrow().phase;
                    incremental.holds(id, phase);
                }
                incremental.step_tls(std::time::Instant::now());
            }
            for (id, sub) in proxies().iter().zip(&subs) {
                // From scratch and alone: a fresh cache per proxy (nothing
                // shared with replicas, nothing reused).
                let scratch = Cache::new("zone-1");
                for (k, v) in &world {
                    scratch.upsert_for_test(&parsed[*k][*v]);
                }
                let fresh = scratch.subscribe(id);
                let diff = difference(&sub.rx.borrow(), &fresh.rx.borrow());
                prop_assert!(diff.is_none(), "proxy {} after step {} {:?}: {:?}", id, step, (key, variant), diff);
            }
        }
    }
}
