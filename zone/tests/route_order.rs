//! The route order is a strict total order: shuffling the rules inside
//! each MeshGatewayRoute, the order routes arrive in and their creation
//! times never changes the generated Envoy configuration (issue 9, item 1).
//!
//! A seeded shuffle loop (no dependency): every golden case, plus a case
//! built to tie (same path, same number of header and query matches,
//! methods, EXACT and PREFIX for one path, across two routes).

use std::path::{Path, PathBuf};

use meridian_sync_proto::{
    Spec,
    pb::mesh::{
        MeshGatewayRoute,
        mesh_gateway_route::{self, conf::Route as RouteKind},
    },
    universal,
};
use meridian_zone::gateway::{self, Item, MeshSnapshot, ProxyConfig};

/// Shuffles per case (each a different seed).
const ROUNDS: u64 = 64;

/// Rules that tie on every specificity criterion unless the order is total.
const TIES: &str = r#"
type: MeshGateway
mesh: default
name: gw
selectors: [{match: {kuma.io/service: gw}}]
conf: {listeners: [{port: 8080, protocol: HTTP}]}
---
type: MeshGatewayRoute
mesh: default
name: r1
selectors: [{match: {kuma.io/service: gw}}]
conf:
  http:
    rules:
    - matches: [{path: {match: PREFIX, value: /go}}]
      backends: [{destination: {kuma.io/service: a}}]
    - matches: [{path: {match: EXACT, value: /go}}]
      backends: [{destination: {kuma.io/service: b}}]
    - matches: [{path: {match: PREFIX, value: /t}, headers: [{match: EXACT, name: x-a, value: "1"}]}]
      backends: [{destination: {kuma.io/service: a}}]
    - matches: [{path: {match: PREFIX, value: /t}, headers: [{match: EXACT, name: x-b, value: "1"}]}]
      backends: [{destination: {kuma.io/service: b}}]
    - matches: [{path: {match: PREFIX, value: /t}, method: GET}]
      backends: [{destination: {kuma.io/service: a}}]
    - matches: [{path: {match: PREFIX, value: /t}, method: POST}]
      backends: [{destination: {kuma.io/service: b}}]
    - matches: [{path: {match: PREFIX, value: /}}]
      filters: [{rewrite: {replacePrefixMatch: /a/b}}]
      backends: [{destination: {kuma.io/service: a}}]
---
type: MeshGatewayRoute
mesh: default
name: r2
selectors: [{match: {kuma.io/service: gw}}]
conf:
  http:
    rules:
    - matches: [{path: {match: PREFIX, value: /t}, headers: [{match: EXACT, name: x-a, value: "1"}]}]
      backends: [{destination: {kuma.io/service: b}}]
    - matches: [{path: {match: PREFIX, value: /t/}, queryParameters: [{match: EXACT, name: q, value: "1"}]}]
      backends: [{destination: {kuma.io/service: a}}]
    - matches: [{path: {match: PREFIX, value: /t}, queryParameters: [{match: EXACT, name: r, value: "1"}]}]
      backends: [{destination: {kuma.io/service: b}}]
    - matches: [{path: {match: PREFIX, value: /}}]
      backends: [{destination: {kuma.io/service: b}}]
---
type: Dataplane
mesh: default
name: gw-1
networking: {address: 127.0.0.1, gateway: {type: BUILTIN, tags: {kuma.io/service: gw}}}
---
type: Dataplane
mesh: default
name: backends
networking:
  address: 10.0.0.1
  inbound:
  - {port: 9001, tags: {kuma.io/service: a}}
  - {port: 9002, tags: {kuma.io/service: b}}
"#;

/// A snapshot of YAML documents (document order = creation order) and its
/// gateway Dataplanes.
fn load(yaml: &str) -> (MeshSnapshot, Vec<String>) {
    let mut snapshot = MeshSnapshot::new("default");
    let mut gateways = Vec::new();
    for (i, r) in universal::parse_resources(yaml).expect("yaml").into_iter().enumerate() {
        let mut r = r.expect("resource");
        r.meta.creation_time = i as i64;
        if let Spec::Dataplane(dp) = &r.spec
            && dp.networking.as_ref().is_some_and(|n| n.gateway.is_some())
        {
            gateways.push(r.meta.name.clone());
        }
        snapshot.upsert(&r);
    }
    (snapshot, gateways)
}

/// xorshift64*: a reproducible sequence from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Fisher-Yates.
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

/// The Envoy resources of a configuration (warnings name rules by their
/// position as written, so they are left out).
fn envoy(c: &ProxyConfig) -> impl PartialEq + std::fmt::Debug + '_ {
    (&c.listeners, &c.routes, &c.clusters, &c.endpoints)
}

/// The snapshot with every route's rules shuffled, the routes re-inserted
/// in a shuffled order with shuffled creation times.
fn shuffled(snapshot: &MeshSnapshot, rng: &mut Rng) -> MeshSnapshot {
    let mut routes: Vec<Item<MeshGatewayRoute>> = snapshot.routes.values().cloned().collect();
    let mut times: Vec<i64> = routes.iter().map(|r| r.creation_time).collect();
    rng.shuffle(&mut times);
    for (r, t) in routes.iter_mut().zip(times) {
        r.creation_time = t;
        match r.spec.conf.as_mut().and_then(|c| c.route.as_mut()) {
            Some(RouteKind::Http(h)) => rng.shuffle(&mut h.rules),
            Some(RouteKind::Tcp(mesh_gateway_route::TcpRoute { rules })) => rng.shuffle(rules),
            None => {}
        }
    }
    rng.shuffle(&mut routes);
    let mut out = MeshSnapshot { routes: Default::default(), ..snapshot.clone() };
    for r in routes {
        out.routes.insert(r.name.clone(), r);
    }
    out
}

fn check(case: &str, snapshot: &MeshSnapshot, gateways: &[String], seed: u64) -> usize {
    let mut rules = 0;
    for name in gateways {
        let want = gateway::generate(snapshot, name).unwrap_or_else(|e| panic!("{case} {name}: {e}"));
        rules += want.routes.iter().flat_map(|r| &r.virtual_hosts).map(|v| v.routes.len()).sum::<usize>();
        for round in 0..ROUNDS {
            let mut rng = Rng(seed.wrapping_mul(1_000_003).wrapping_add(round) | 1);
            let s = shuffled(snapshot, &mut rng);
            let got = gateway::generate(&s, name).unwrap_or_else(|e| panic!("{case} {name}: {e}"));
            assert_eq!(envoy(&got), envoy(&want), "{case} / {name}: round {round} changed the configuration");
            assert_eq!(got.desired(), want.desired(), "{case} / {name}: round {round} changed a version");
        }
    }
    rules
}

#[test]
fn shuffled_rules_and_routes_generate_the_same_configuration() {
    let (snapshot, gateways) = load(TIES);
    let routes = check("ties", &snapshot, &gateways, 1);
    assert!(routes >= 12, "the tie case generates {routes} routes");

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join("golden");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("testdata/golden")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    cases.sort();
    for (i, case) in cases.iter().enumerate() {
        let yaml = std::fs::read_to_string(case).expect("case");
        let (snapshot, gateways) = load(&yaml);
        check(&case.display().to_string(), &snapshot, &gateways, i as u64 + 2);
    }
}

/// The tie case, routed: `/go` goes to the EXACT rule's backend whichever
/// rule comes first (the PREFIX adds no exact half of its own).
#[test]
fn exact_beats_the_exact_half_of_a_prefix_in_either_order() {
    let (snapshot, _) = load(TIES);
    let config = gateway::generate(&snapshot, "gw-1").expect("generate");
    let go: Vec<String> = config.routes[0].virtual_hosts[0]
        .routes
        .iter()
        .filter(|r| format!("{:?}", r.r#match).contains("\"/go\""))
        .map(|r| format!("{:?}", r.action))
        .collect();
    assert_eq!(go.len(), 1, "one route for the path /go: {go:?}");
    assert!(go[0].contains("name: \"b\""), "{go:?}");
}
