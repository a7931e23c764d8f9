//! Generator fuzz test: every resource Meridian accepts must produce
//! configuration a real Envoy accepts.
//!
//! Cases are built from seeded random input aimed at what Envoy refuses:
//! regexes near RE2's program-size limit, control characters in paths,
//! header and query values, odd header names, hostnames, redirect codes,
//! rewrites, mirrors and weights. Each case is one MeshGateway (HTTP
//! listeners on ports of its own), its gateway Dataplane and a few
//! MeshGatewayRoutes; resources that fail `validate::resource` are dropped,
//! as the API would refuse them. What remains goes through
//! `gateway::generate`, and the configurations of a batch of cases are
//! merged into one static bootstrap for `envoy --mode validate`: zero
//! rejections. A failing batch is split to name the case and its input.
//!
//! CI runs a short seeded run. The long run is a command:
//!
//! ```sh
//! MERIDIAN_FUZZ_CASES=20000 MERIDIAN_FUZZ_SEED=$RANDOM \
//!     cargo test -p meridian-zone --test envoy_fuzz -- --nocapture
//! ```

#[path = "support/envoy.rs"]
mod envoy;

use meridian_sync_proto::{Resource, universal, validate};
use meridian_zone::gateway::{self, MeshSnapshot, ProxyConfig};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};

/// Cases in the CI run: a few hundred, in a handful of Envoy invocations.
const DEFAULT_CASES: usize = 300;
/// Cases per Envoy invocation (one bootstrap; each case has its own ports,
/// services and so names).
const BATCH: usize = 60;
/// The CI seed; `MERIDIAN_FUZZ_SEED` overrides it.
const DEFAULT_SEED: u64 = 0x6d65_7269_6469_616e;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Characters ordinary input is drawn from.
const BENIGN: &[&str] = &["a", "b", "z", "0", "9", "-", "_", ".", "/", "~", "%", "="];
/// Characters hostile input is drawn from.
const CHARS: &[&str] = &[
    "a", "b", "z", "0", "9", "-", "_", ".", "/", "~", "%", "?", "&", "=", "*", "+", ":", "@", " ", "\t", "\n", "\r",
    "\0", "\u{7f}", "é", "\"", "'", "\\", "{", "}", "[", "]", "(", ")", "|", "^", "$", "#",
];

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// Up to `max` characters; one string in eight is hostile.
fn text(rng: &mut StdRng, max: usize) -> String {
    let n = rng.random_range(0..=max);
    let alphabet = if rng.random_bool(0.125) { CHARS } else { BENIGN };
    (0..n).map(|_| *pick(rng, alphabet)).collect()
}

fn path(rng: &mut StdRng) -> String {
    if rng.random_bool(0.1) { text(rng, 6) } else { format!("/{}", text(rng, 12)) }
}

/// A regex from random atoms and quantifiers, often near the program-size
/// limit (counted repetitions), sometimes invalid.
fn regex(rng: &mut StdRng) -> String {
    const ATOMS: &[&str] = &[
        "a",
        "/",
        "[a-z0-9-]",
        "[^/]",
        ".",
        "\\d",
        "\\w",
        "\\s",
        "\\S",
        "(?:ab|cd)",
        "(x)",
        "[A-Z]",
        "é",
        "\\.",
        "\\b",
        "(?i)k",
    ];
    let mut out = String::new();
    if rng.random_bool(0.5) {
        out.push('^');
    }
    for _ in 0..rng.random_range(1..=5) {
        out.push_str(pick::<&str>(rng, ATOMS));
        match rng.random_range(0..8) {
            0 => out.push('*'),
            1 => out.push('+'),
            2 => out.push('?'),
            3 => out.push_str(&format!("{{{}}}", rng.random_range(0..=60))),
            4 => {
                let lo = rng.random_range(0..=20);
                out.push_str(&format!("{{{lo},{}}}", lo + rng.random_range(0..=50)));
            }
            5 if rng.random_bool(0.2) => out.push_str(&text(rng, 2)),
            _ => {}
        }
    }
    if rng.random_bool(0.5) {
        out.push('$');
    }
    out
}

fn header_name(rng: &mut StdRng) -> String {
    const NAMES: &[&str] =
        &["X-A", "X-Request-Id", "host", ":authority", ":path", "user-agent", "bad name", "x\u{0}y", ""];
    match rng.random_range(0..10) {
        0 => pick(rng, NAMES).to_string(),
        1 => format!("x-{}", text(rng, 4)),
        _ => pick(rng, &["x-a", "x-b", "x-request-id", "user-agent"]).to_string(),
    }
}

fn hostname(rng: &mut StdRng) -> String {
    const HOSTS: &[&str] =
        &["*", "*.example.com", "a.example.com", "b.example.com", "Upper.example.com", "a..b", "x_y.com", ""];
    match rng.random_range(0..10) {
        0 => pick(rng, HOSTS).to_string(),
        1 => text(rng, 8),
        _ => pick(rng, &["*", "*.example.com", "a.example.com", "b.example.com"]).to_string(),
    }
}

fn string_match(rng: &mut StdRng, kinds: &[&str]) -> (String, String) {
    let kind = pick(rng, kinds).to_string();
    let value = match kind.as_str() {
        "REGEX" => regex(rng),
        "ABSENT" | "PRESENT" => String::new(),
        _ => text(rng, 10),
    };
    (kind, value)
}

fn a_match(rng: &mut StdRng) -> Value {
    let mut m = json!({});
    if rng.random_bool(0.8) {
        let kind = *pick(rng, &["EXACT", "PREFIX", "REGEX"]);
        let value = if kind == "REGEX" { regex(rng) } else { path(rng) };
        m["path"] = json!({"match": kind, "value": value});
    }
    if rng.random_bool(0.2) {
        m["method"] = json!(pick(rng, &["GET", "POST", "DELETE", "PATCH", "CONNECT"]));
    }
    if rng.random_bool(0.4) {
        let (kind, value) = string_match(rng, &["EXACT", "REGEX", "ABSENT", "PRESENT"]);
        m["headers"] = json!([{"match": kind, "name": header_name(rng), "value": value}]);
    }
    if rng.random_bool(0.3) {
        let (kind, value) = string_match(rng, &["EXACT", "REGEX"]);
        m["queryParameters"] = json!([{"match": kind, "name": text(rng, 5), "value": value}]);
    }
    m
}

fn a_filter(rng: &mut StdRng, service: &str) -> Value {
    match rng.random_range(0..5) {
        0 => json!({"requestHeader": {
            "set": [{"name": header_name(rng), "value": text(rng, 8)}],
            "add": [{"name": header_name(rng), "value": text(rng, 8)}],
            "remove": [header_name(rng)]
        }}),
        1 => json!({"responseHeader": {"set": [{"name": header_name(rng), "value": text(rng, 8)}]}}),
        2 => match rng.random_range(0..3) {
            0 => json!({"rewrite": {"replaceFull": path(rng)}}),
            1 => json!({"rewrite": {"replacePrefixMatch": path(rng)}}),
            _ => json!({"rewrite": {"hostToBackendHostname": true}}),
        },
        3 => json!({"redirect": {
            "scheme": pick(rng, &["", "http", "https", "https", "ftp"]),
            "hostname": hostname(rng),
            "port": pick(rng, &[0, 80, 8443, 8443, 70000]),
            "statusCode": pick(rng, &[299, 300, 301, 302, 303, 304, 307, 308, 308, 309]),
            "path": {"replaceFull": path(rng)}
        }}),
        _ => json!({"mirror": {
            "percentage": rng.random_range(-5.0..=105.0),
            "backend": {"destination": {"kuma.io/service": format!("{service}-mirror")}}
        }}),
    }
}

/// One case's resources: mesh `default`, a gateway on `ports`, its
/// Dataplane and up to three routes. Services are prefixed with `tag`.
fn case(rng: &mut StdRng, tag: &str, ports: [u32; 2]) -> Vec<Value> {
    let gw_service = format!("{tag}-gw");
    let listeners: Vec<Value> = ports
        .iter()
        .map(|p| json!({"port": p, "protocol": "HTTP", "hostname": hostname(rng), "tags": {"port": format!("http-{p}")}}))
        .collect();
    let mut docs = vec![
        json!({"type": "Mesh", "name": "default"}),
        json!({"type": "MeshGateway", "mesh": "default", "name": format!("{tag}-gateway"),
               "selectors": [{"match": {"kuma.io/service": gw_service}}], "conf": {"listeners": listeners}}),
        json!({"type": "Dataplane", "mesh": "default", "name": format!("{tag}-dp"),
               "networking": {"address": "127.0.0.1", "gateway": {"type": "BUILTIN", "tags": {"kuma.io/service": gw_service}}}}),
    ];
    for r in 0..rng.random_range(1..=3) {
        let backend = format!("{tag}-svc{}", rng.random_range(0..3));
        // One route in three only tries a regex, so that many near RE2's
        // program-size limit get through to Envoy.
        let regex_only = rng.random_bool(0.33);
        let rules: Vec<Value> = (0..rng.random_range(1..=3))
            .filter(|_| !regex_only)
            .map(|_| {
                let n = if rng.random_bool(0.5) { 0 } else { rng.random_range(1..=2) };
                let filters: Vec<Value> = (0..n).map(|_| a_filter(rng, &backend)).collect();
                let redirect = filters.iter().any(|f| f.get("redirect").is_some());
                let backends = if redirect {
                    json!([])
                } else {
                    json!([{"weight": rng.random_range(0..=100), "destination": {"kuma.io/service": backend}}])
                };
                json!({"matches": (0..rng.random_range(1..=2)).map(|_| a_match(rng)).collect::<Vec<_>>(),
                       "filters": filters, "backends": backends})
            })
            .collect();
        let rules = if regex_only {
            vec![json!({"matches": [{"path": {"match": "REGEX", "value": regex(rng)}}],
                        "backends": [{"destination": {"kuma.io/service": backend}}]})]
        } else {
            rules
        };
        let hostnames: Vec<String> = (0..rng.random_range(0..=2)).map(|_| hostname(rng)).collect();
        docs.push(json!({"type": "MeshGatewayRoute", "mesh": "default", "name": format!("{tag}-route-{r}"),
            "selectors": [{"match": {"kuma.io/service": gw_service}}],
            "conf": {"http": {"hostnames": hostnames, "rules": rules}}}));
        // Endpoints for the backend, so clusters have members.
        docs.push(json!({"type": "Dataplane", "mesh": "default", "name": format!("{tag}-be-{r}"),
            "networking": {"address": "127.0.0.1", "inbound": [{"port": 9000 + r, "tags": {"kuma.io/service": backend}}]}}));
    }
    docs
}

/// The accepted resources of a case (what validation lets in, as the API
/// would), how many were refused, and the generated configuration.
fn build(docs: &[Value], dp: &str) -> (Vec<Resource>, usize, ProxyConfig) {
    let mut accepted = Vec::new();
    let mut refused = 0;
    for (i, d) in docs.iter().enumerate() {
        let Ok(mut r) = universal::from_value(d.clone()) else {
            refused += 1;
            continue;
        };
        if validate::resource(&r).is_err()
            || !universal::meta_violations(r.resource_type(), &r.meta.mesh, &r.meta.name).is_empty()
        {
            refused += 1;
            continue;
        }
        r.meta.creation_time = i as i64;
        accepted.push(r);
    }
    let snapshot = MeshSnapshot::from_resources("default", accepted.iter());
    let config = gateway::generate(&snapshot, dp).unwrap_or_else(|e| panic!("generate {dp}: {e}"));
    (accepted, refused, config)
}

fn merge(configs: &[&ProxyConfig]) -> ProxyConfig {
    let mut out = ProxyConfig::default();
    for c in configs {
        out.listeners.extend(c.listeners.iter().cloned());
        out.routes.extend(c.routes.iter().cloned());
        out.clusters.extend(c.clusters.iter().cloned());
        out.endpoints.extend(c.endpoints.iter().cloned());
    }
    out
}

fn envoy_rejects(dir: &std::path::Path, name: &str, config: &ProxyConfig) -> Option<String> {
    let file = dir.join(format!("{name}.pb"));
    std::fs::write(&file, envoy::static_bootstrap(config)).expect("write bootstrap");
    let out = envoy::validate(&file);
    (!out.status.success())
        .then(|| format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn envoy_accepts_everything_validation_accepts() {
    let cases: usize = env_or("MERIDIAN_FUZZ_CASES", DEFAULT_CASES);
    let seed: u64 = env_or("MERIDIAN_FUZZ_SEED", DEFAULT_SEED);
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().expect("tmp");
    let (mut refused, mut accepted, mut routes, mut batches) = (0, 0, 0, 0);
    let mut built: Vec<(Vec<Value>, ProxyConfig)> = Vec::new();
    let mut run_batch = |built: &mut Vec<(Vec<Value>, ProxyConfig)>| {
        if built.is_empty() {
            return;
        }
        batches += 1;
        let all: Vec<&ProxyConfig> = built.iter().map(|(_, c)| c).collect();
        if envoy_rejects(tmp.path(), &format!("batch-{batches}"), &merge(&all)).is_some() {
            for (i, (docs, config)) in built.iter().enumerate() {
                if let Some(why) = envoy_rejects(tmp.path(), &format!("batch-{batches}-{i}"), config) {
                    panic!(
                        "seed {seed}: Envoy rejects a configuration built from validated input\n\
                         input (before validation):\n{}\nEnvoy:\n{why}",
                        serde_json::to_string_pretty(docs).unwrap_or_default()
                    );
                }
            }
            panic!("seed {seed}: Envoy rejects batch {batches} but no case alone");
        }
        built.clear();
    };
    for n in 0..cases {
        let tag = format!("c{n}");
        // Ports of their own per case, so a batch can share one bootstrap.
        let port = 10_000 + 2 * u32::try_from(n % BATCH).expect("small");
        let docs = case(&mut rng, &tag, [port, port + 1]);
        let (ok, bad, config) = build(&docs, &format!("{tag}-dp"));
        refused += bad;
        accepted += ok.len();
        routes +=
            ok.iter().filter(|r| r.resource_type() == meridian_sync_proto::ResourceType::MeshGatewayRoute).count();
        built.push((docs, config));
        if built.len() == BATCH {
            run_batch(&mut built);
        }
    }
    run_batch(&mut built);
    eprintln!(
        "seed {seed}: {cases} cases, {accepted} resources accepted ({routes} routes), {refused} refused by validation, \
         {batches} Envoy runs, 0 rejections"
    );
    assert!(routes > cases / 4, "too few routes pass validation ({routes}) for the run to prove anything");
}
