//! Validation, table-driven: each case is a spec as users write it (universal
//! JSON, parsed into the protobuf type) and the exact violations expected, in
//! order. Messages marked "ours" in the validator are Meridian's; the others
//! are the incumbent's and must not drift.

use meridian_sync_proto::pb;
use meridian_sync_proto::validate::{self, FieldPath, ValidationError, Violation};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

type Expected = &'static [(&'static str, &'static str)];

fn parse<T: DeserializeOwned>(name: &str, spec: Value) -> T {
    serde_json::from_value(spec).unwrap_or_else(|e| panic!("case {name:?}: spec does not parse: {e}"))
}

/// One case: a name, a spec and the violations expected from it, in order.
struct Case {
    name: String,
    spec: Value,
    expected: Expected,
}

fn c(name: &str, spec: Value, expected: Expected) -> Case {
    Case { name: name.to_owned(), spec, expected }
}

/// Runs every case and reports all mismatches at once.
fn check<T: DeserializeOwned>(validate: fn(&T) -> Vec<Violation>, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for Case { name, spec, expected } in cases {
        let got = validate(&parse::<T>(&name, spec));
        let want: Vec<Violation> = expected.iter().map(|(f, m)| Violation::new(*f, *m)).collect();
        if got != want {
            failures.push(format!("case {name:?}\n  want: {:#?}\n  got:  {:#?}", pairs(&want), pairs(&got)));
        }
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}

fn pairs(v: &[Violation]) -> Vec<(String, String)> {
    v.iter().map(|v| (v.field.clone(), v.message.clone())).collect()
}

const OK: Expected = &[];

fn gateway(listeners: Value) -> Value {
    json!({"selectors": [{"match": {"kuma.io/service": "edge-gateway"}}], "conf": {"listeners": listeners}})
}

fn http_route(rules: Value) -> Value {
    json!({"selectors": [{"match": {"kuma.io/service": "edge-gateway"}}], "conf": {"http": {"rules": rules}}})
}

/// A route with one rule matching `/` and the given filters and backends.
fn http_rule(filters: Value, backends: Value) -> Value {
    http_route(
        json!([{"matches": [{"path": {"match": "PREFIX", "value": "/"}}], "filters": filters, "backends": backends}]),
    )
}

/// A route with one rule of the given matches, to the demo app.
fn http_matches(matches: Value) -> Value {
    http_route(json!([{"matches": matches, "backends": demo()}]))
}

fn demo() -> Value {
    json!([{"destination": {"kuma.io/service": "demo-app_kuma-demo_svc_5000"}}])
}

fn tcp_route(rules: Value) -> Value {
    json!({"selectors": [{"match": {"kuma.io/service": "edge-gateway"}}], "conf": {"tcp": {"rules": rules}}})
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

// ---------------------------------------------------------------- MeshGateway

#[test]
fn mesh_gateway() {
    let long_label = "a".repeat(64);
    let long_name = format!("{}.com", "f".repeat(250));
    check(
        validate::mesh_gateway,
        vec![
            c(
                "seed: HTTP gateway",
                gateway(json!([
                    {"port": 8080, "protocol": "HTTP", "hostname": "foo.example.com", "tags": {"port": "http/8080"}}
                ])),
                OK,
            ),
            c(
                "seed: TCP gateway",
                gateway(json!([
                    {"port": 8080, "protocol": "TCP", "tags": {"port": "tcp/8080"}}
                ])),
                OK,
            ),
            c(
                "HTTPS terminate, wildcard host, selector '*', gateway tags",
                json!({
                    "selectors": [{"match": {"kuma.io/service": "*", "zone": "east"}}],
                    "tags": {"product": "edge"},
                    "conf": {"listeners": [
                        {"port": 443, "protocol": "HTTPS", "hostname": "*.example.com",
                         "tls": {"mode": "TERMINATE", "certificates": [{"secret": "example-cert"}]}},
                        {"port": 443, "protocol": "HTTPS", "hostname": "www.example.com",
                         "tls": {"mode": "TERMINATE", "certificates": [{"secret": "rsa"}, {"inline": b64(&format!("{EC_CERT}{EC_KEY}"))}]}},
                        {"port": 443, "protocol": "HTTPS",
                         "tls": {"mode": "TERMINATE", "certificates": [{"inlineString": format!("{RSA_KEY}{RSA_CERT}")}]}}
                    ]}
                }),
                OK,
            ),
            c(
                "TLS passthrough and terminate, HTTP on several hosts of a port",
                gateway(json!([
                    {"port": 8443, "protocol": "TLS", "hostname": "db.example.com", "tls": {"mode": "PASSTHROUGH"}},
                    {"port": 8443, "protocol": "TLS", "tls": {"mode": "TERMINATE", "certificates": [{"secret": "c"}]}},
                    {"port": 80, "protocol": "HTTP", "hostname": "a.example.com", "resources": {"connectionLimit": 2}},
                    {"port": 80, "protocol": "HTTP", "hostname": "b.example.com", "resources": {"connection_limit": 2}},
                    {"port": 80, "protocol": "HTTP"}
                ])),
                OK,
            ),
            c("crossMesh HTTP", gateway(json!([{"port": 99, "protocol": "HTTP", "crossMesh": true}])), OK),
            c(
                "no selectors",
                json!({"conf": {"listeners": [
                    {"port": 443, "protocol": "HTTPS", "tls": {"mode": "TERMINATE"}}
                ]}}),
                &[
                    ("selectors", "must have at least one element"),
                    ("conf.listeners[0].tls.certificates", "cannot be empty in TLS termination mode"),
                ],
            ),
            c(
                "selector without tags",
                json!({"selectors": [{"match": {}}], "conf": {"listeners": [
                    {"port": 80, "protocol": "HTTP"}
                ]}}),
                &[
                    ("selectors[0].match", "must have at least one tag"),
                    ("selectors[0].match", "mandatory tag \"kuma.io/service\" is missing"),
                ],
            ),
            c(
                "selector with bad keys and values",
                json!({"selectors": [{"match": {
            "kuma.io/service": "gw", "inv@lid": "x y", "version": "", "": "v"
        }}], "conf": {"listeners": [{"port": 80, "protocol": "HTTP"}]}}),
                &[
                    ("selectors[0].match", "tag name must be non-empty"),
                    (
                        "selectors[0].match[\"inv@lid\"]",
                        "tag name must consist of alphanumeric characters, dots, dashes, slashes and underscores",
                    ),
                    (
                        "selectors[0].match[\"inv@lid\"]",
                        "tag value must consist of alphanumeric characters, dots, dashes, slashes and underscores or be \"*\"",
                    ),
                    ("selectors[0].match[\"version\"]", "tag value must be non-empty"),
                ],
            ),
            c(
                "reserved tags on the gateway and a listener",
                json!({
                    "selectors": [{"match": {"kuma.io/service": "gw"}}],
                    "tags": {"product": "edge", "kuma.io/service": "gw"},
                    "conf": {"listeners": [{"port": 80, "protocol": "HTTP", "tags": {
                        "kuma.io/zone": "z", "kuma.io/protocol": "http", "kuma.io/external-service-name": "e", "ok": "1"
                    }}]}
                }),
                &[
                    ("tags[\"kuma.io/service\"]", "tag name must not be \"kuma.io/service\""),
                    (
                        "conf.listeners[0].tags[\"kuma.io/external-service-name\"]",
                        "tag name must not be \"kuma.io/external-service-name\"",
                    ),
                    ("conf.listeners[0].tags[\"kuma.io/protocol\"]", "tag name must not be \"kuma.io/protocol\""),
                    ("conf.listeners[0].tags[\"kuma.io/zone\"]", "tag name must not be \"kuma.io/zone\""),
                ],
            ),
            c("no conf", json!({"selectors": [{"match": {"kuma.io/service": "gw"}}]}), &[("conf", "cannot be empty")]),
            c("no listeners", gateway(json!([])), &[("conf.listeners", "cannot be empty")]),
            c(
                "ports out of range",
                gateway(json!([
                    {"protocol": "HTTP"}, {"port": 70000, "protocol": "HTTP"}
                ])),
                &[
                    ("conf.listeners[0].port", "port must be in the range [1, 65535]"),
                    ("conf.listeners[1].port", "port must be in the range [1, 65535]"),
                ],
            ),
            c("no protocol", gateway(json!([{"port": 99}])), &[("conf.listeners[0].protocol", "cannot be empty")]),
            c(
                "HTTPS without tls",
                gateway(json!([{"port": 443, "protocol": "HTTPS"}])),
                &[("conf.listeners[0].tls", "cannot be empty")],
            ),
            c(
                "HTTPS passthrough",
                gateway(json!([{"port": 443, "protocol": "HTTPS", "tls": {"mode": "PASSTHROUGH"}}])),
                &[("conf.listeners[0].tls.mode", "mode is not supported on HTTPS listeners")],
            ),
            c(
                "TLS without a mode",
                gateway(json!([{"port": 443, "protocol": "HTTPS", "tls": {"options": {}}}])),
                &[("conf.listeners[0].tls.mode", "cannot be empty")],
            ),
            c(
                "three certificates",
                gateway(json!([{"port": 443, "protocol": "HTTPS", "tls": {"mode": "TERMINATE",
            "certificates": [{"secret": "a"}, {"secret": "b"}, {"secret": "c"}]}}])),
                &[("conf.listeners[0].tls.certificates", "cannot have more than 2 certificates")],
            ),
            c(
                "ours: TLS listener without tls",
                gateway(json!([{"port": 443, "protocol": "TLS"}])),
                &[("conf.listeners[0].tls", "cannot be empty")],
            ),
            c(
                "ours: certificates in passthrough",
                gateway(json!([{"port": 443, "protocol": "TLS",
            "tls": {"mode": "PASSTHROUGH", "certificates": [{"secret": "a"}]}}])),
                &[("conf.listeners[0].tls.certificates", "must be empty in TLS passthrough mode")],
            ),
            c(
                "ours: empty and unusable certificate sources",
                gateway(json!([{"port": 443, "protocol": "HTTPS",
            "tls": {"mode": "TERMINATE", "certificates": [{}, {"inlineString": "not a certificate"}]}}])),
                &[
                    ("conf.listeners[0].tls.certificates[0]", "data source cannot be empty"),
                    ("conf.listeners[0].tls.certificates[1]", "missing server certificate"),
                ],
            ),
            c(
                "hostnames",
                gateway(json!([
                    {"port": 1, "protocol": "HTTP", "hostname": "foo.example$.com"},
                    {"port": 2, "protocol": "HTTP", "hostname": "*.foo.*.example.com"},
                    {"port": 3, "protocol": "HTTP", "hostname": long_name},
                    {"port": 4, "protocol": "HTTP", "hostname": "Foo.example.com"},
                    {"port": 5, "protocol": "HTTP", "hostname": format!("{long_label}.example.com")},
                    {"port": 6, "protocol": "HTTP", "hostname": "*"}
                ])),
                &[
                    ("conf.listeners[0].hostname", "invalid hostname"),
                    ("conf.listeners[1].hostname", "invalid wildcard domain"),
                    ("conf.listeners[2].hostname", "must be at most 253 characters"),
                    ("conf.listeners[3].hostname", "invalid hostname"),
                    ("conf.listeners[4].hostname", "each label must be at most 63 characters"),
                ],
            ),
            c(
                "crossMesh HTTPS and crossMesh tls",
                gateway(json!([
                    {"port": 99, "protocol": "HTTPS", "crossMesh": true, "hostname": "foo.example.com"},
                    {"port": 98, "protocol": "HTTP", "crossMesh": true, "tls": {"mode": "TERMINATE"}}
                ])),
                &[
                    ("conf.listeners[0].protocol", "protocol is not supported with crossMesh"),
                    ("conf.listeners[1].tls", "must be empty with crossMesh"),
                ],
            ),
            c(
                "crossMesh with two selectors",
                json!({
                    "selectors": [{"match": {"kuma.io/service": "a"}}, {"match": {"kuma.io/service": "b"}}],
                    "conf": {"listeners": [{"port": 443, "protocol": "HTTP", "crossMesh": true}]}
                }),
                &[("selectors[1]", "there can be at most one selector")],
            ),
            c(
                "protocol conflict",
                gateway(json!([
                    {"port": 443, "protocol": "TCP", "hostname": "www-1.example.com"},
                    {"port": 443, "protocol": "HTTPS", "hostname": "www-2.example.com", "tls": {"mode": "TERMINATE"}}
                ])),
                &[
                    ("conf.listeners[1].tls.certificates", "cannot be empty in TLS termination mode"),
                    ("conf.listeners[0]", "protocol conflicts with other listeners on this port"),
                    ("conf.listeners[1]", "protocol conflicts with other listeners on this port"),
                ],
            ),
            c(
                "hostname conflict, empty is '*'",
                gateway(json!([
                    {"port": 80, "protocol": "HTTP"},
                    {"port": 81, "protocol": "HTTP"},
                    {"port": 80, "protocol": "HTTP", "hostname": "*"}
                ])),
                &[
                    ("conf.listeners[0]", "multiple listeners for hostname on this port"),
                    ("conf.listeners[2]", "multiple listeners for hostname on this port"),
                ],
            ),
            c(
                "hostname, protocol and connection limit conflict",
                gateway(json!([
                    {"port": 443, "protocol": "TCP", "hostname": "www-1.example.com", "resources": {"connectionLimit": 2}},
                    {"port": 443, "protocol": "TLS", "hostname": "www-1.example.com", "resources": {"connectionLimit": 1},
                     "tls": {"mode": "PASSTHROUGH"}}
                ])),
                &[
                    ("conf.listeners[0]", "protocol conflicts with other listeners on this port"),
                    ("conf.listeners[1]", "protocol conflicts with other listeners on this port"),
                    ("conf.listeners[0]", "multiple listeners for hostname on this port"),
                    ("conf.listeners[1]", "multiple listeners for hostname on this port"),
                    ("conf.listeners[0].resources.connectionLimit", "conflicting values for this port"),
                    ("conf.listeners[1].resources.connectionLimit", "conflicting values for this port"),
                ],
            ),
        ],
    );
}

// ----------------------------------------------------------- MeshGatewayRoute

#[test]
fn mesh_gateway_route() {
    check(
        validate::mesh_gateway_route,
        vec![
            c("seed: HTTP route", http_matches(json!([{"path": {"match": "PREFIX", "value": "/"}}])), OK),
            c(
                "seed: TCP route",
                tcp_route(json!([
                    {"backends": [{"destination": {"kuma.io/service": "redis_kuma-demo_svc_6379"}}]}
                ])),
                OK,
            ),
            c(
                "the incumbent's full HTTP route",
                json!({
                    "selectors": [{"match": {"kuma.io/service": "gateway"}}],
                    "conf": {"http": {"hostnames": ["foo.example.com", "*.example.com", "*"], "rules": [{
                        "matches": [{
                            "method": "GET",
                            "path": {"match": "EXACT", "value": "/"},
                            "headers": [
                                {"match": "ABSENT", "name": "x-baz"},
                                {"match": "PRESENT", "name": "x-bar"},
                                {"match": "EXACT", "name": "x-foo", "value": "my great foo"},
                                {"match": "REGEX", "name": "x-count", "value": "[0-9]+"},
                                {"match": "EXACT", "name": ":authority", "value": "foo.example.com"}
                            ],
                            "query_parameters": [
                                {"match": "EXACT", "name": "customer", "value": "kong"},
                                {"match": "REGEX", "name": "id", "value": "^[0-9]+$"}
                            ]
                        }, {"path": {"match": "REGEX", "value": "^/api/v[12]/.*"}}],
                        "filters": [
                            {"rewrite": {"host_to_backend_hostname": true}},
                            {"request_header": {"set": [{"name": "x-foo", "value": "foo"}, {"name": "x-foo", "value": "foo"}],
                                                "add": [{"name": "x-added", "value": "added"}], "remove": ["x-deleted"]}},
                            {"responseHeader": {"set": [{"name": "cache-control", "value": "no-store"}], "remove": ["server"]}},
                            {"mirror": {"percentage": 1.12, "backend": {"destination": {"kuma.io/service": "target"}}}}
                        ],
                        "backends": [
                            {"weight": 5, "destination": {"kuma.io/service": "target-1"}},
                            {"weight": 0, "destination": {"kuma.io/service": "target-2", "version": "v2"}}
                        ]
                    }]}}
                }),
                OK,
            ),
            c(
                "redirect",
                http_route(json!([{
                    "matches": [{"path": {"value": "/"}}],
                    "filters": [{"redirect": {"scheme": "https", "hostname": "foo.example.com", "port": 443, "statusCode": 308,
                                              "path": {"replaceFull": "/new"}}}]
                }])),
                OK,
            ),
            c(
                "redirect keeping scheme and host",
                http_route(json!([{
                    "matches": [{"path": {"value": "/"}}],
                    "filters": [{"redirect": {"status_code": 301}}]
                }])),
                OK,
            ),
            c(
                "rewrites: prefix, full, Host on the request",
                http_route(json!([{
                    "matches": [{"path": {"match": "PREFIX", "value": "/api"}}],
                    "filters": [
                        {"rewrite": {"replacePrefixMatch": "/"}},
                        {"requestHeader": {"set": [{"name": "Host", "value": "backend.internal"}]}}
                    ],
                    "backends": [{"destination": {"kuma.io/service": "api"}}]
                }, {
                    "matches": [{"method": "POST"}],
                    "filters": [{"rewrite": {"replace_full": "/submit"}}],
                    "backends": [{"weight": 0, "destination": {"kuma.io/service": "api"}}]
                }])),
                OK,
            ),
            c("no conf", json!({"selectors": [{"match": {"kuma.io/service": "gw"}}]}), &[("conf", "cannot be empty")]),
            c(
                "conf without a route",
                json!({"selectors": [{"match": {"kuma.io/service": "gw"}}], "conf": {}}),
                &[("conf", "cannot be empty")],
            ),
            c(
                "selectors without the service",
                json!({"selectors": [{"match": {"app": "x"}}],
            "conf": {"tcp": {"rules": [{"backends": [{"destination": {"kuma.io/service": "redis"}}]}]}}}),
                &[("selectors[0].match", "mandatory tag \"kuma.io/service\" is missing")],
            ),
            c("no HTTP rules", http_route(json!([])), &[("conf.http.rules", "cannot be empty")]),
            c(
                "no matches, no backends",
                http_route(json!([{"backends": []}])),
                &[
                    ("conf.http.rules[0].matches", "cannot be empty"),
                    ("conf.http.rules[0].backends", "cannot be empty"),
                ],
            ),
            c(
                "backends without the service",
                http_rule(
                    json!([]),
                    json!([
                        {"weight": 1, "destination": {"version": "v1"}}, {"weight": 1, "destination": {}}
                    ]),
                ),
                &[
                    ("conf.http.rules[0].backends[0]", "mandatory tag \"kuma.io/service\" is missing"),
                    ("conf.http.rules[0].backends[1]", "must have at least one tag"),
                    ("conf.http.rules[0].backends[1]", "mandatory tag \"kuma.io/service\" is missing"),
                ],
            ),
            c("empty match", http_matches(json!([{}])), &[("conf.http.rules[0].matches[0]", "cannot be empty")]),
            c(
                "paths",
                http_matches(json!([
                    {"path": {"match": "REGEX"}},
                    {"path": {"match": "EXACT", "value": "foo"}},
                    {"path": {"match": "PREFIX", "value": "foo/"}},
                    {"path": {"match": "PREFIX", "value": ""}}
                ])),
                &[
                    ("conf.http.rules[0].matches[0].path.value", "cannot be empty"),
                    ("conf.http.rules[0].matches[1].path.value", "must be an absolute path"),
                    ("conf.http.rules[0].matches[2].path.value", "must be an absolute path"),
                    ("conf.http.rules[0].matches[3].path.value", "must be an absolute path"),
                ],
            ),
            c(
                "header matches",
                http_matches(json!([{"headers": [
                    {"match": "EXACT", "value": "v"},
                    {"match": "EXACT", "name": "x-a"},
                    {"match": "PRESENT", "name": "x-b", "value": "v"},
                    {"match": "ABSENT", "name": "x-c", "value": "v"}
                ]}])),
                &[
                    ("conf.http.rules[0].matches[0].headers[0].name", "cannot be empty"),
                    ("conf.http.rules[0].matches[0].headers[1].value", "cannot be empty"),
                    ("conf.http.rules[0].matches[0].headers[2].value", "cannot be set"),
                    ("conf.http.rules[0].matches[0].headers[3].value", "cannot be set"),
                ],
            ),
            c(
                "query matches",
                http_matches(json!([{"query_parameters": [
                    {"match": "EXACT", "value": "v"}, {"match": "EXACT", "name": "q"}
                ]}])),
                &[
                    ("conf.http.rules[0].matches[0].query_parameters[0].name", "cannot be empty"),
                    ("conf.http.rules[0].matches[0].query_parameters[1].value", "cannot be empty"),
                ],
            ),
            c(
                "ours: regular expressions must compile",
                http_matches(json!([
                    {"path": {"match": "REGEX", "value": "("}},
                    {"headers": [{"match": "REGEX", "name": "x-a", "value": "[a-"}, {"match": "REGEX", "name": "x-b"}]},
                    {"queryParameters": [{"match": "REGEX", "name": "q", "value": "(?=x)"}]}
                ])),
                &[
                    ("conf.http.rules[0].matches[0].path.value", "invalid regular expression: unclosed group"),
                    (
                        "conf.http.rules[0].matches[1].headers[0].value",
                        "invalid regular expression: unclosed character class",
                    ),
                    ("conf.http.rules[0].matches[1].headers[1].value", "cannot be empty"),
                    (
                        "conf.http.rules[0].matches[2].query_parameters[0].value",
                        "invalid regular expression: look-around, including look-ahead and look-behind, is not supported",
                    ),
                ],
            ),
            c(
                "ours: regular expressions over Envoy's RE2 program size (100)",
                http_matches(json!([
                    {"path": {"match": "REGEX", "value": "^/products/[a-z0-9-]{1,64}$"}},
                    {"path": {"match": "REGEX", "value": "/a{100}"}},
                    {"headers": [{"match": "REGEX", "name": "x-a", "value": "[0-9]{200}"}]},
                    {"path": {"match": "REGEX", "value": "^/products/[a-z0-9-]+$"}}
                ])),
                &[
                    (
                        "conf.http.rules[0].matches[0].path.value",
                        "regular expression too complex for Envoy: its RE2 program size is about 271, over Envoy's limit of 100 \
              (counted repetitions such as {1,64} expand: use + or * instead)",
                    ),
                    (
                        "conf.http.rules[0].matches[1].path.value",
                        "regular expression too complex for Envoy: its RE2 program size is about 105, over Envoy's limit of 100 \
              (counted repetitions such as {1,64} expand: use + or * instead)",
                    ),
                    (
                        "conf.http.rules[0].matches[2].headers[0].value",
                        "regular expression too complex for Envoy: its RE2 program size is about 204, over Envoy's limit of 100 \
              (counted repetitions such as {1,64} expand: use + or * instead)",
                    ),
                ],
            ),
            c(
                "ours: control characters in paths, header values, query parameters",
                http_matches(json!([
                    {"path": {"match": "PREFIX", "value": "/a\u{0}b"}},
                    {"path": {"match": "EXACT", "value": "/a\r\nb"}},
                    {"path": {"match": "REGEX", "value": "/a\nb"}},
                    {"headers": [{"match": "EXACT", "name": "x-a", "value": "v\r\nx-b: 1"}, {"match": "EXACT", "name": "x-t", "value": "a\tb"}]},
                    {"queryParameters": [{"match": "EXACT", "name": "q\u{0}", "value": "v"}, {"match": "EXACT", "name": "q", "value": "v\n"}]}
                ])),
                &[
                    (
                        "conf.http.rules[0].matches[0].path.value",
                        "must not contain control characters (NUL, CR, LF, ...)",
                    ),
                    (
                        "conf.http.rules[0].matches[1].path.value",
                        "must not contain control characters (NUL, CR, LF, ...)",
                    ),
                    (
                        "conf.http.rules[0].matches[2].path.value",
                        "must not contain control characters (NUL, CR, LF, ...)",
                    ),
                    (
                        "conf.http.rules[0].matches[3].headers[0].value",
                        "must not contain control characters (NUL, CR, LF, ...)",
                    ),
                    (
                        "conf.http.rules[0].matches[4].query_parameters[0].name",
                        "must not contain control characters (NUL, CR, LF, ...)",
                    ),
                    (
                        "conf.http.rules[0].matches[4].query_parameters[1].value",
                        "must not contain control characters (NUL, CR, LF, ...)",
                    ),
                ],
            ),
            c(
                "ours: route hostnames",
                json!({
                    "selectors": [{"match": {"kuma.io/service": "gw"}}],
                    "conf": {"http": {"hostnames": ["Foo.com", "*.ok.com", "", "a..b", "*.*.x.com"],
                             "rules": [{"matches": [{"path": {"value": "/"}}], "backends": demo()}]}}
                }),
                &[
                    ("conf.http.hostnames[0]", "invalid hostname"),
                    ("conf.http.hostnames[2]", "cannot be empty"),
                    ("conf.http.hostnames[3]", "invalid hostname"),
                    ("conf.http.hostnames[4]", "invalid wildcard domain"),
                ],
            ),
            c(
                "ours: weights",
                http_rule(
                    json!([]),
                    json!([
                        {"weight": 0, "destination": {"kuma.io/service": "a"}},
                        {"destination": {"kuma.io/service": "b"}}
                    ]),
                ),
                &[("conf.http.rules[0].backends", "total weight must be greater than 0")],
            ),
            c(
                "ours: total weight overflows",
                http_rule(
                    json!([]),
                    json!([
                        {"weight": 4_000_000_000_u32, "destination": {"kuma.io/service": "a"}},
                        {"weight": 4_000_000_000_u32, "destination": {"kuma.io/service": "b"}}
                    ]),
                ),
                &[("conf.http.rules[0].backends", "total weight must be at most 4294967295")],
            ),
            c(
                "request header filters",
                http_rule(
                    json!([
                        {"request_header": {}},
                        {"request_header": {"set": [{"name": "x-a"}], "add": [{"value": "v"}], "remove": [""]}}
                    ]),
                    demo(),
                ),
                &[
                    ("conf.http.rules[0].filters[0].request_header", "cannot be empty"),
                    ("conf.http.rules[0].filters[1].request_header.set[0].value", "cannot be empty"),
                    ("conf.http.rules[0].filters[1].request_header.add[0].name", "cannot be empty"),
                    ("conf.http.rules[0].filters[1].request_header.remove[0]", "cannot be empty"),
                ],
            ),
            c(
                "Host set while the host goes to the backend (real filter index)",
                http_rule(
                    json!([
                        {"rewrite": {"hostToBackendHostname": true}},
                        {"requestHeader": {"set": [{"name": "host", "value": "foo"}], "add": [{"name": ":authority", "value": "foo"}]}}
                    ]),
                    demo(),
                ),
                &[
                    (
                        "conf.http.rules[0].filters[1].request_header.set[0]",
                        "cannot modify 'host' header, when route has set 'rewrite.host_to_backend_hostname' option",
                    ),
                    (
                        "conf.http.rules[0].filters[1].request_header.add[0]",
                        "cannot modify ':authority' header, when route has set 'rewrite.host_to_backend_hostname' option",
                    ),
                ],
            ),
            c(
                "ours: header names, pseudo-headers and Host",
                http_rule(
                    json!([
                        {"requestHeader": {
                            "set": [{"name": "bad name", "value": "v"}, {"name": ":path", "value": "/x"}, {"name": "x-ok", "value": "a\nb"}],
                            "add": [{"name": "Host", "value": "h"}],
                            "remove": ["Host", ":method", "bad\tname"]
                        }},
                        {"responseHeader": {"set": [{"name": "host", "value": "h"}], "add": [{"name": ":status", "value": "200"}]}}
                    ]),
                    demo(),
                ),
                &[
                    ("conf.http.rules[0].filters[0].request_header.set[0].name", "must be a valid HTTP header name"),
                    (
                        "conf.http.rules[0].filters[0].request_header.set[1].name",
                        "pseudo-header \":path\" cannot be modified",
                    ),
                    (
                        "conf.http.rules[0].filters[0].request_header.set[2].value",
                        "must not contain CR, LF or NUL characters",
                    ),
                    (
                        "conf.http.rules[0].filters[0].request_header.add[0].name",
                        "header \"Host\" cannot be added: use set to rewrite the host",
                    ),
                    ("conf.http.rules[0].filters[0].request_header.remove[0]", "header \"Host\" cannot be removed"),
                    (
                        "conf.http.rules[0].filters[0].request_header.remove[1]",
                        "pseudo-header \":method\" cannot be removed",
                    ),
                    ("conf.http.rules[0].filters[0].request_header.remove[2]", "must be a valid HTTP header name"),
                    (
                        "conf.http.rules[0].filters[1].response_header.set[0].name",
                        "header \"host\" cannot be modified in responses",
                    ),
                    (
                        "conf.http.rules[0].filters[1].response_header.add[0].name",
                        "pseudo-header \":status\" cannot be modified",
                    ),
                ],
            ),
            c(
                "ours: header match names",
                http_matches(json!([{"headers": [
                    {"match": "PRESENT", "name": "x y"}, {"match": "PRESENT", "name": ":authority"}
                ]}])),
                &[("conf.http.rules[0].matches[0].headers[0].name", "must be a valid HTTP header name")],
            ),
            c(
                "mirrors",
                http_rule(
                    json!([
                        {"mirror": {"percentage": 0.0}},
                        {"mirror": {"percentage": -1.0, "backend": {"destination": {"kuma.io/service": "t"}}}},
                        {"mirror": {"backend": {"destination": {"version": "1"}}}}
                    ]),
                    demo(),
                ),
                &[
                    ("conf.http.rules[0].filters[0].mirror.backend", "cannot be empty"),
                    ("conf.http.rules[0].filters[1].mirror.percentage", "has to be in [0.0 - 100.0] range"),
                    ("conf.http.rules[0].filters[2].mirror.percentage", "cannot be empty"),
                    ("conf.http.rules[0].filters[2].mirror.backend", "mandatory tag \"kuma.io/service\" is missing"),
                ],
            ),
            c(
                "redirect port and status",
                http_route(json!([
                    {"matches": [{"path": {"value": "/"}}], "filters": [{"redirect": {"port": 70000, "status_code": 200}}]},
                    {"matches": [{"path": {"value": "/"}}], "filters": [{"redirect": {}}]}
                ])),
                &[
                    ("conf.http.rules[0].filters[0].redirect.port", "port must be in the range [1, 65535]"),
                    ("conf.http.rules[0].filters[0].redirect.status_code", "must be in the range [300, 308]"),
                    ("conf.http.rules[1].filters[0].redirect.status_code", "must be in the range [300, 308]"),
                ],
            ),
            c(
                "ours: redirect codes, scheme and hostname",
                http_route(json!([
                    {"matches": [{"path": {"value": "/"}}], "filters": [{"redirect": {"scheme": "ftp", "hostname": "*.example.com", "status_code": 304}}]},
                    {"matches": [{"path": {"value": "/"}}], "filters": [{"redirect": {"hostname": "bad_host", "status_code": 300}}]},
                    {"matches": [{"path": {"value": "/"}}], "filters": [{"redirect": {"status_code": 302,
                        "path": {"replacePrefixMatch": "/v2"}}}]}
                ])),
                &[
                    ("conf.http.rules[0].filters[0].redirect.scheme", "must be \"http\" or \"https\""),
                    ("conf.http.rules[0].filters[0].redirect.hostname", "cannot be a wildcard"),
                    ("conf.http.rules[0].filters[0].redirect.status_code", "must be one of 301, 302, 303, 307, 308"),
                    ("conf.http.rules[1].filters[0].redirect.hostname", "invalid hostname"),
                    ("conf.http.rules[1].filters[0].redirect.status_code", "must be one of 301, 302, 303, 307, 308"),
                    (
                        "conf.http.rules[2].filters[0].redirect.path.replacePrefixMatch",
                        "cannot be used without a match on path prefix",
                    ),
                ],
            ),
            c(
                "redirect with backends",
                http_rule(json!([{"redirect": {"status_code": 301}}]), demo()),
                &[("conf.http.rules[0].backends", "must be empty when using redirect filters")],
            ),
            c(
                "redirect with other filters",
                http_rule(
                    json!([
                        {"redirect": {"status_code": 301}}, {"request_header": {"remove": ["x-a"]}}
                    ]),
                    json!([]),
                ),
                &[("conf.http.rules[0].filters", "redirects cannot be used with other filters")],
            ),
            c(
                "replacePrefixMatch without a prefix match",
                http_route(json!([{
                    "matches": [{"path": {"match": "EXACT", "value": "/a"}}],
                    "filters": [{"rewrite": {"replacePrefixMatch": "/b"}}],
                    "backends": demo()
                }])),
                &[(
                    "conf.http.rules[0].filters[0].rewrite.replacePrefixMatch",
                    "cannot be used without a match on path prefix",
                )],
            ),
            c(
                "ours: empty filters and rewrites, relative rewrites",
                http_rule(
                    json!([
                        {}, {"rewrite": {}}, {"rewrite": {"replaceFull": "new"}}, {"rewrite": {"replacePrefixMatch": "v2"}}
                    ]),
                    demo(),
                ),
                &[
                    ("conf.http.rules[0].filters[0]", "cannot be empty"),
                    ("conf.http.rules[0].filters[1].rewrite", "cannot be empty"),
                    ("conf.http.rules[0].filters[2].rewrite.replaceFull", "must be an absolute path"),
                    ("conf.http.rules[0].filters[3].rewrite.replacePrefixMatch", "must be an absolute path"),
                ],
            ),
            c("ours: TCP rules", tcp_route(json!([])), &[("conf.tcp.rules", "cannot be empty")]),
            c(
                "ours: TCP backends",
                tcp_route(json!([
                    {},
                    {"backends": [{"destination": {"app": "redis"}}]},
                    {"backends": [{"weight": 0, "destination": {"kuma.io/service": "a"}}, {"destination": {"kuma.io/service": "b"}}]}
                ])),
                &[
                    ("conf.tcp.rules[0].backends", "cannot be empty"),
                    ("conf.tcp.rules[1].backends[0]", "mandatory tag \"kuma.io/service\" is missing"),
                    ("conf.tcp.rules[2].backends", "total weight must be greater than 0"),
                ],
            ),
        ],
    );
}

// ------------------------------------------------------------------ Dataplane

fn service_proxy(networking: Value) -> Value {
    json!({"networking": networking})
}

#[test]
fn dataplane() {
    check(
        validate::dataplane,
        vec![
            c(
                "seed: builtin gateway",
                service_proxy(json!({
                    "address": "127.0.0.1",
                    "gateway": {"type": "BUILTIN", "tags": {"kuma.io/service": "edge-gateway"}}
                })),
                OK,
            ),
            c(
                "seed: delegated gateway kong-01",
                service_proxy(json!({
                    "address": "10.0.0.1",
                    "gateway": {"type": "DELEGATED", "tags": {"kuma.io/service": "kong"}},
                    "outbound": [{"port": 33033, "tags": {"kuma.io/service": "backend"}}]
                })),
                OK,
            ),
            c(
                "service proxy with a domain name, inbounds and outbounds",
                service_proxy(json!({
                    "address": "backend-1.internal",
                    "advertisedAddress": "192.168.0.10",
                    "admin": {"port": 9901},
                    "inbound": [
                        {"port": 10001, "servicePort": 5000, "serviceAddress": "127.0.0.1",
                         "tags": {"kuma.io/service": "backend", "version": "v1", "kuma.io/protocol": "http"}},
                        {"port": 10002, "address": "192.168.0.2", "health": {"ready": true}, "state": "NotReady",
                         "tags": {"kuma.io/service": "backend-admin", "kuma.io/protocol": "TCP"}}
                    ],
                    "outbound": [{"address": "127.0.0.2", "port": 6379, "tags": {"kuma.io/service": "redis"}}]
                })),
                OK,
            ),
            c(
                "ipv6 address",
                service_proxy(json!({
                    "address": "fd00::1", "inbound": [{"port": 80, "tags": {"kuma.io/service": "web"}}]
                })),
                OK,
            ),
            c("no networking", json!({}), &[("networking", "must be defined")]),
            c(
                "empty networking",
                service_proxy(json!({})),
                &[
                    ("networking", "has to contain at least one inbound interface or gateway"),
                    ("networking.address", "address can't be empty"),
                ],
            ),
            c(
                "wildcard addresses",
                service_proxy(json!({
                    "address": "0.0.0.0", "gateway": {"type": "BUILTIN", "tags": {"kuma.io/service": "gw"}}
                })),
                &[("networking.address", "must not be 0.0.0.0 or ::")],
            ),
            c(
                "wildcard ipv6 address",
                service_proxy(json!({
                    "address": "::", "gateway": {"type": "BUILTIN", "tags": {"kuma.io/service": "gw"}}
                })),
                &[("networking.address", "must not be 0.0.0.0 or ::")],
            ),
            c(
                "malformed address",
                service_proxy(json!({
                    "address": "..>_<..", "inbound": [{"port": 80, "tags": {"kuma.io/service": "web"}}]
                })),
                &[("networking.address", "address has to be valid IP address or domain name")],
            ),
            c(
                "delegated gateway with inbounds",
                service_proxy(json!({
                    "address": "10.0.0.1",
                    "gateway": {"tags": {"kuma.io/service": "kong"}},
                    "inbound": [{"port": 80, "tags": {"kuma.io/service": "kong"}}]
                })),
                &[("networking.inbound", "inbound cannot be defined for delegated gateways")],
            ),
            c(
                "builtin gateway with inbounds and outbounds",
                service_proxy(json!({
                    "address": "10.0.0.1",
                    "gateway": {"type": "BUILTIN", "tags": {"kuma.io/service": "gw"}},
                    "inbound": [{"port": 80, "tags": {"kuma.io/service": "gw"}}],
                    "outbound": [{"port": 33033, "tags": {"kuma.io/service": "backend"}}]
                })),
                &[
                    ("networking.inbound", "inbound cannot be defined for builtin gateways"),
                    ("networking.outbound", "outbound cannot be defined for builtin gateways"),
                ],
            ),
            c(
                "gateway tags",
                service_proxy(json!({
                    "address": "10.0.0.1",
                    "gateway": {"type": "BUILTIN", "tags": {"kuma.io/protocol": "http", "version": "", "zone": "a/b"}}
                })),
                &[
                    (
                        "networking.gateway.tags[\"kuma.io/protocol\"]",
                        "other values than tcp are not allowed, provided value \"http\"",
                    ),
                    ("networking.gateway.tags[\"version\"]", "tag value must be non-empty"),
                    (
                        "networking.gateway.tags[\"zone\"]",
                        "tag value must consist of alphanumeric characters, dots, dashes and underscores",
                    ),
                    ("networking.gateway.tags", "mandatory tag \"kuma.io/service\" is missing"),
                ],
            ),
            c(
                "inbound ports and addresses",
                service_proxy(json!({
                    "address": "192.168.0.1",
                    "inbound": [
                        {"servicePort": 70000, "address": "inbound.local", "tags": {"kuma.io/service": "a"}},
                        {"port": 80, "serviceAddress": "local", "tags": {"kuma.io/service": "b"}},
                        {"port": 81, "serviceAddress": "192.168.0.1", "tags": {"kuma.io/service": "c"}},
                        {"port": 82, "address": "192.168.0.5", "serviceAddress": "192.168.0.5", "servicePort": 82,
                         "tags": {"kuma.io/service": "d"}}
                    ]
                })),
                &[
                    ("networking.inbound[0].port", "port must be in the range [1, 65535]"),
                    ("networking.inbound[0].servicePort", "port must be in the range [1, 65535]"),
                    ("networking.inbound[0].address", "address has to be valid IP address"),
                    ("networking.inbound[1].serviceAddress", "serviceAddress has to be valid IP address"),
                    (
                        "networking.inbound[2].serviceAddress",
                        "serviceAddress and servicePort has to differ from address and port",
                    ),
                    (
                        "networking.inbound[3].serviceAddress",
                        "serviceAddress and servicePort has to differ from address and port",
                    ),
                ],
            ),
            c(
                "inbound tags",
                service_proxy(json!({
                    "address": "192.168.0.1",
                    "inbound": [
                        {"port": 80},
                        {"port": 81, "tags": {"kuma.io/service": "a", "kuma.io/protocol": ""}},
                        {"port": 82, "tags": {"kuma.io/service": "b", "kuma.io/protocol": "not-yet-supported-protocol"}},
                        {"port": 83, "tags": {"kuma.io/service": "c", "inv@lidT/gN%me": "x", "invalidTagValue": "a b"}}
                    ]
                })),
                &[
                    ("networking.inbound[0].tags[\"kuma.io/service\"]", "tag has to exist"),
                    (
                        "networking.inbound[1].tags[\"kuma.io/protocol\"]",
                        "tag \"kuma.io/protocol\" has an invalid value \"\". Allowed values: grpc, http, http2, kafka, tcp",
                    ),
                    ("networking.inbound[1].tags[\"kuma.io/protocol\"]", "tag value must be non-empty"),
                    (
                        "networking.inbound[2].tags[\"kuma.io/protocol\"]",
                        "tag \"kuma.io/protocol\" has an invalid value \"not-yet-supported-protocol\". Allowed values: grpc, http, http2, kafka, tcp",
                    ),
                    (
                        "networking.inbound[3].tags[\"inv@lidT/gN%me\"]",
                        "tag name must consist of alphanumeric characters, dots, dashes, slashes and underscores",
                    ),
                    (
                        "networking.inbound[3].tags[\"invalidTagValue\"]",
                        "tag value must consist of alphanumeric characters, dots, dashes and underscores",
                    ),
                ],
            ),
            c(
                "outbounds",
                service_proxy(json!({
                    "address": "192.168.0.1",
                    "inbound": [{"port": 80, "tags": {"kuma.io/service": "web"}}],
                    "outbound": [
                        {"port": 3333},
                        {"port": 70000, "address": "localhost", "tags": {"version": "1"}}
                    ]
                })),
                &[
                    ("networking.outbound[0].tags", "mandatory tag \"kuma.io/service\" is missing"),
                    ("networking.outbound[1].port", "port must be in the range [1, 65535]"),
                    ("networking.outbound[1].address", "address has to be valid IP address"),
                    ("networking.outbound[1].tags", "mandatory tag \"kuma.io/service\" is missing"),
                ],
            ),
            c(
                "admin port equal to an inbound's and an outbound's",
                service_proxy(json!({
                    "address": "192.168.0.1",
                    "admin": {"port": 8080},
                    "inbound": [{"port": 10001, "servicePort": 8080, "tags": {"kuma.io/service": "web"}}],
                    "outbound": [{"port": 8080, "tags": {"kuma.io/service": "redis"}}]
                })),
                &[
                    ("networking.admin.port", "must differ from inbound"),
                    ("networking.admin.port", "must differ from outbound"),
                ],
            ),
        ],
    );

    // A gateway type no name stands for (only possible on the wire).
    let mut spec: pb::mesh::Dataplane = parse(
        "gateway type",
        service_proxy(json!({
            "address": "10.0.0.1", "gateway": {"tags": {"kuma.io/service": "gw"}}
        })),
    );
    if let Some(gateway) = spec.networking.as_mut().and_then(|n| n.gateway.as_mut()) {
        gateway.r#type = 7;
    }
    assert_eq!(
        validate::dataplane(&spec),
        vec![Violation::new("networking.gateway.type", "must be one of DELEGATED, BUILTIN")]
    );
}

// ---------------------------------------------------------------- ZoneIngress

#[test]
fn zone_ingress() {
    check(
        validate::zone_ingress,
        vec![
            c(
                "advertised address and port",
                json!({"zone": "east", "networking": {
            "address": "192.168.0.1", "port": 10001, "advertisedAddress": "ingress.example.com", "advertisedPort": 443,
            "admin": {"port": 9901}
        }, "availableServices": [{"tags": {"kuma.io/service": "backend", "version": "v1"}, "instances": 2, "mesh": "default"}]}),
                OK,
            ),
            c(
                "no port",
                json!({"networking": {"address": "192.168.0.1"}}),
                &[("networking.port", "port must be in the range [1, 65535]")],
            ),
            c("no networking", json!({}), &[("networking.port", "port must be in the range [1, 65535]")]),
            c(
                "invalid advertised address, port and available services",
                json!({
                    "networking": {"address": "192.168.0.1", "port": 10001, "advertisedAddress": "!@#", "advertisedPort": 100000},
                    "availableServices": [
                        {"tags": {"kuma.io/service": "a"}},
                        {"tags": {}},
                        {"tags": {"kuma.io/service": ""}},
                        {"tags": {"version": ""}}
                    ]
                }),
                &[
                    ("networking.advertisedAddress", "address has to be valid IP address or domain name"),
                    ("networking.advertisedPort", "port must be in the range [1, 65535]"),
                    ("availableServices[1].tags", "mandatory tag \"kuma.io/service\" is missing"),
                    ("availableServices[2].tags[\"kuma.io/service\"]", "tag value must be non-empty"),
                    ("availableServices[3].tags[\"version\"]", "tag value must be non-empty"),
                    ("availableServices[3].tags", "mandatory tag \"kuma.io/service\" is missing"),
                ],
            ),
            c(
                "advertised address without port and the reverse",
                json!({"networking": {"port": 10001, "advertisedPort": 443}}),
                &[("networking.advertisedAddress", "has to be defined with advertisedPort")],
            ),
            c(
                "advertised port without address",
                json!({"networking": {"port": 10001, "advertisedAddress": "1.2.3.4"}}),
                &[("networking.advertisedPort", "has to be defined with advertisedAddress")],
            ),
            c(
                "admin port equal to port",
                json!({"networking": {"address": "0.0.0.0", "port": 10001, "admin": {"port": 10001}}}),
                &[
                    ("networking.admin.port", "must differ from port"),
                    ("networking.address", "must not be 0.0.0.0 or ::"),
                ],
            ),
        ],
    );
}

// ----------------------------------------------------------------------- Mesh

#[test]
fn mesh() {
    check(
        validate::mesh,
        vec![
            c("no mTLS", json!({}), OK),
            c(
                "builtin CA",
                json!({"mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}}),
                OK,
            ),
            c(
                "two backends of one name",
                json!({"mtls": {"enabledBackend": "ca-1", "backends": [
                    {"name": "ca-1", "type": "builtin"}, {"name": "ca-1", "type": "builtin"}
                ]}}),
                &[("mtls.backends[1].name", "\"ca-1\" name is already used for another backend")],
            ),
            c(
                "ours: two backends (a CA change under way)",
                json!({"mtls": {"enabledBackend": "ca-1", "backends": [
                    {"name": "ca-1", "type": "builtin"}, {"name": "ca-2", "type": "builtin"}
                ]}}),
                OK,
            ),
            c(
                "three backends",
                json!({"mtls": {"enabledBackend": "ca-1", "backends": [
                    {"name": "ca-1", "type": "builtin"}, {"name": "ca-2", "type": "builtin"}, {"name": "ca-3", "type": "builtin"}
                ]}}),
                &[("mtls.backends", "cannot have more than 2 backends")],
            ),
            c(
                "enabled backend not declared",
                json!({"mtls": {"enabledBackend": "ca-2", "backends": [{"name": "ca-1", "type": "builtin"}]}}),
                &[("mtls.enabledBackend", "has to be set to one of the backends in the mesh")],
            ),
            c(
                "ours: backend without name or type",
                json!({"mtls": {"backends": [{}]}}),
                &[("mtls.backends[0].name", "cannot be empty"), ("mtls.backends[0].type", "cannot be empty")],
            ),
        ],
    );
}

// --------------------------------------------------------------------- Secret

#[test]
fn secret() {
    check(
        validate::secret,
        vec![
            c("PEM data", json!({"data": b64(&format!("{RSA_CERT}{RSA_KEY}"))}), OK),
            c("opaque data", json!({"data": b64("s3cr3t")}), OK),
            c("no data", json!({}), &[("data", "cannot be empty")]),
            c("empty data", json!({"data": ""}), &[("data", "cannot be empty")]),
        ],
    );
}

#[test]
fn tls_secret() {
    let cases: Vec<(&str, String, Result<(), &str>)> = vec![
        ("RSA, PKCS#1", format!("{RSA_CERT}{RSA_KEY}"), Ok(())),
        ("RSA, PKCS#8, key first", format!("{RSA_PKCS8_KEY}{RSA_CERT}"), Ok(())),
        ("ECDSA, SEC1", format!("{EC_CERT}{EC_KEY}"), Ok(())),
        ("ECDSA, PKCS#8, CRLF", format!("{EC_CERT}{EC_PKCS8_KEY}").replace('\n', "\r\n"), Ok(())),
        ("chain of two certificates", format!("{EC_CERT}{RSA_CERT}{EC_KEY}"), Ok(())),
        ("empty", String::new(), Err("cannot be empty")),
        ("not PEM", "hello".to_owned(), Err("missing server certificate")),
        ("key only", EC_KEY.to_owned(), Err("missing server certificate")),
        ("certificate only", RSA_CERT.to_owned(), Err("missing private key")),
        ("two keys", format!("{EC_CERT}{EC_KEY}{EC_PKCS8_KEY}"), Err("secret contains multiple private keys")),
        (
            "Ed25519",
            format!("{ED25519_CERT}{ED25519_KEY}"),
            Err("unsupported private key type ED25519: use an RSA or ECDSA key"),
        ),
        ("mismatched key", format!("{RSA_CERT}{EC_KEY}"), Err("private key does not match the first certificate")),
        ("public key block", format!("{EC_CERT}{EC_KEY}{EC_PUBLIC_KEY}"), Err("unsupported PEM block \"PUBLIC KEY\"")),
        (
            "encrypted key",
            format!("{EC_CERT}-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIHsMFcG\n-----END ENCRYPTED PRIVATE KEY-----\n"),
            Err("unsupported PEM block \"ENCRYPTED PRIVATE KEY\": private keys must not be encrypted"),
        ),
        (
            "unterminated block",
            format!("{EC_KEY}-----BEGIN CERTIFICATE-----\nMIIB\n"),
            Err("invalid PEM: missing \"-----END CERTIFICATE-----\""),
        ),
        (
            "bad base64",
            format!("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n{EC_KEY}"),
            Err("invalid PEM: base64 decode error: InvalidCharacter(33)"),
        ),
        (
            "a certificate that is not one",
            format!("-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n{EC_KEY}"),
            Err("invalid certificate: invalid peer certificate: BadEncoding"),
        ),
    ];
    let mut failures = Vec::new();
    for (name, data, want) in cases {
        let got = validate::tls_secret(data.as_bytes());
        if got.as_ref().copied().map_err(String::as_str) != want {
            failures.push(format!("case {name:?}: want {want:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// -------------------------------------------------------------------- helpers

#[test]
fn hostname() {
    for ok in ["*", "foo.example.com", "*.example.com", "localhost", "a-1.b2", &format!("{}.com", "a".repeat(63))] {
        assert_eq!(validate::hostname(ok), Ok(()), "{ok}");
    }
    let bad = [
        ("", "cannot be empty"),
        ("Foo.com", "invalid hostname"),
        ("-a.com", "invalid hostname"),
        ("a-.com", "invalid hostname"),
        ("a.com.", "invalid hostname"),
        ("a_b.com", "invalid hostname"),
        ("*.", "invalid wildcard domain"),
        ("*.*.com", "invalid wildcard domain"),
        ("foo.*", "invalid hostname"),
        ("*foo.com", "invalid hostname"),
    ];
    for (h, message) in bad {
        assert_eq!(validate::hostname(h), Err(message.to_owned()), "{h:?}");
    }
    assert_eq!(validate::hostname(&"a".repeat(254)), Err("must be at most 253 characters".to_owned()));
    assert_eq!(validate::hostname(&"a".repeat(64)), Err("each label must be at most 63 characters".to_owned()));
}

#[test]
fn field_paths() {
    let conf = FieldPath::root().field("conf");
    assert_eq!(
        conf.field("listeners").index(0).field("tls").field("certificates").to_string(),
        "conf.listeners[0].tls.certificates"
    );
    assert_eq!(FieldPath::new("tags").key("kuma.io/service").as_str(), "tags[\"kuma.io/service\"]");
    assert_eq!(FieldPath::new("tags").key("a\"b\\c\n").as_str(), r#"tags["a\"b\\c\n"]"#);
    assert_eq!(FieldPath::root().index(2).field("name").as_str(), "[2].name");
    assert_eq!(conf.as_str(), "conf", "steps do not change the parent");
}

#[test]
fn validation_error() {
    let spec: pb::mesh::MeshGateway = parse("error", json!({"conf": {"listeners": [{"port": 80}]}}));
    let err = ValidationError::from_violations(validate::mesh_gateway(&spec)).expect_err("invalid");
    assert_eq!(
        err.to_string(),
        "selectors: must have at least one element; conf.listeners[0].protocol: cannot be empty"
    );
    assert_eq!(
        serde_json::to_value(&err.violations[0]).expect("serializes"),
        json!({"field": "selectors", "message": "must have at least one element"})
    );
    assert_eq!(ValidationError::from_violations(Vec::new()), Ok(()));
}

// ---------------------------------------------------------------------- certs
// Self-signed test certificates (CN foo.example.com, valid until 2126), made
// once with openssl 3: `genrsa -traditional 2048`, `ecparam -name prime256v1`,
// `genpkey -algorithm ed25519`, `pkcs8 -topk8 -nocrypt`, `req -new -x509`.

const RSA_CERT: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIDFzCCAf+gAwIBAgIUfs4fmgnl294PVJwk1YfLoWVtrHEwDQYJKoZIhvcNAQEL\n\
BQAwGjEYMBYGA1UEAwwPZm9vLmV4YW1wbGUuY29tMCAXDTI2MTEyMjAzMzE0MVoY\n\
DzIxMjYxMDI5MDMzMTQxWjAaMRgwFgYDVQQDDA9mb28uZXhhbXBsZS5jb20wggEi\n\
MA0GCSqGSIb3DQEBAQUAA4IBDwAwggEKAoIBAQC5MvSf/aCldXoLE0uN7Th6Kvlo\n\
i1f9OE8ASqG2INs18e6Znu6EmAxJBsKG6FvXuP00eyU3mUIFTWEZ8KYhlwxPrAhf\n\
Gn3DR5jgKjf1lNifjTdmBZ7JZoCNNQWxUBbmrT+fkdhdqCowuJyJpX3lhReI+31E\n\
VNDlDnJ/Qn5lQTDIsA12MJk83HZLTv1/bKEfqUn1rUUaQioQehclPzbgttZwevWw\n\
Xs6ytidBcc7hALffJsYWZiBogSY51MCHVm8/SN3DUFbcLNu7+ViRU+uBmx4Urtva\n\
Pl+gqPWf12P4siF9Wr9D+BogPtB3+eQz20VV5Q8VHaeRC+Be40/IDw6LKVH/AgMB\n\
AAGjUzBRMB0GA1UdDgQWBBRnyPqTZiS4+3wH+/mc9n5i4qXOEjAfBgNVHSMEGDAW\n\
gBRnyPqTZiS4+3wH+/mc9n5i4qXOEjAPBgNVHRMBAf8EBTADAQH/MA0GCSqGSIb3\n\
DQEBCwUAA4IBAQBrXKGmjIh004MbY/mGOr+zHRkKC8gWiMxDe6woQ23+NN3/eswg\n\
BDyPU152iq8bJiW+pVplca2tAzcNo9+9IIpO1xlJ7tr3bA16C3Nzx3eOFnBDRGQP\n\
j1wU6prykFFWFnbG7sU9G/+5RJF3oRwt2cddmOF+LXB0XbpK87Zcsa2DX4CJvC5t\n\
SzgIs0aIFD2TssIVFjrc/Bwq/3CLLLqK2yRxDZGSyC6nn6AWBafY5sxwtA3oGDDf\n\
VXYuCuxGz6cn2e1bu7kvyrREpYScXq7L2y43iXj1NGdlVvFdvxQMGLI3jRx91mKs\n\
WBrnZyHIZtuH9Eqq5RjU4QMtbhSjbV7MaX9S\n\
-----END CERTIFICATE-----\n\
";

const RSA_KEY: &str = "\
-----BEGIN RSA PRIVATE KEY-----\n\
MIIEowIBAAKCAQEAuTL0n/2gpXV6CxNLje04eir5aItX/ThPAEqhtiDbNfHumZ7u\n\
hJgMSQbChuhb17j9NHslN5lCBU1hGfCmIZcMT6wIXxp9w0eY4Co39ZTYn403ZgWe\n\
yWaAjTUFsVAW5q0/n5HYXagqMLiciaV95YUXiPt9RFTQ5Q5yf0J+ZUEwyLANdjCZ\n\
PNx2S079f2yhH6lJ9a1FGkIqEHoXJT824LbWcHr1sF7OsrYnQXHO4QC33ybGFmYg\n\
aIEmOdTAh1ZvP0jdw1BW3Czbu/lYkVPrgZseFK7b2j5foKj1n9dj+LIhfVq/Q/ga\n\
ID7Qd/nkM9tFVeUPFR2nkQvgXuNPyA8OiylR/wIDAQABAoIBADduqQm6QHtFzmHC\n\
RLsWZfErK7u++Xcxg3Py4rRA4VwkLeaNS5cka4jwHQmEQvkuxZsPwPQDS1+K6aV6\n\
Aj/LlkPCmj7dDweERp3SBS3cf3pCKnK+++gMZi3d0PZhonkpIgIBBWIDE53BpBkP\n\
D7/DNmgp3jS1rlDhIiQ1It/rw05N4QHhMhTd9Xz5HuQa7Xn6GOP1c8KDFhK738jA\n\
JYkuSdiaSJCmefRasmFtXn08gOw8P3piFy+Wj4hSEEG9PCxkkd/ABTy2/7pYpJn4\n\
t0h1C//200Ixj6A2UTXkCPREef5Yg82pzktHr0yFtgWZsUyV76up1k2X7CQChoBe\n\
rKgpnwECgYEA6s1xvGLnZt07NvPu0ZiUAAG1/9oxHEuRFeWBctwXjhaQMs9ZlZDK\n\
yPUpkNkb2/84MB6fhbgu+DItTFjC5S5djt2MM+Jir01hk1jSX4E06kmqFBN+0RKz\n\
KAIm5hy1rk2Tqkn56hgDQ8Z2KpmavzbBm7xFRV9LWuc872NaqqsWV10CgYEAyese\n\
PJ2cY9rijPMkNf0rmBKutoeZS0q7Pikw14Y+JZlXU6ZbiCE7dpIHGE6JbKyaEvU/\n\
5uHWk4aW2JHLHBtZlQBCnCCtZ4HnIbBlwkbQ2HphqIvNGw9YIjuwgbflS3nfRpes\n\
zgjH8Kh4aoZrPV/GXtzluMDPOELWrt4p/Q1NxQsCgYASrUbXwlI/x2c3Zs3fVDCp\n\
k3lDobp4UrZ2tGvIlCM3hSnxMLcig4Lt2zp0MCDcLf/tK/Jqc40g5vTdds4B5t9A\n\
RvUpB1/sK86QJueM+z0XScbClA5pWQBxNUKc2TnGZJtTV1EOwtw3nui1WMSLYzKh\n\
TaeA7iSTVYNuU0vZ+YPsbQKBgGLMQ4A/Ul1dpYp4EdjE5sbDJW+0i6JWj6XLu9VJ\n\
HzGAhUUt2g2SzSioLQaMrxtYnQ73p2vORxLqQPb451v6WevZM753EsHZwwEt8ayM\n\
v/WcdBpnRVWfPW2KrUPbejtjB4fgATLTAxnTJRBicyiVq1eRWGn9FaeetLLdi8gA\n\
8XOfAoGBAOYDG1xMNZiaEKhMl7X+Z3HsyvL4PzvbRv4YLaaBAgsraMKJ58vm5RGa\n\
a4eBFQ4FurxCqrirTOT56SOq/lGpOuwFkqrVw2OQlTVE1uyyPNbgHq8CQWUMWyN0\n\
Iw3v7PMrZ0cZ/zEl6JwCTkVrTL1dqzaiT3uAt8uDn3bXD8XvIARS\n\
-----END RSA PRIVATE KEY-----\n\
";

const RSA_PKCS8_KEY: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC5MvSf/aCldXoL\n\
E0uN7Th6Kvloi1f9OE8ASqG2INs18e6Znu6EmAxJBsKG6FvXuP00eyU3mUIFTWEZ\n\
8KYhlwxPrAhfGn3DR5jgKjf1lNifjTdmBZ7JZoCNNQWxUBbmrT+fkdhdqCowuJyJ\n\
pX3lhReI+31EVNDlDnJ/Qn5lQTDIsA12MJk83HZLTv1/bKEfqUn1rUUaQioQehcl\n\
PzbgttZwevWwXs6ytidBcc7hALffJsYWZiBogSY51MCHVm8/SN3DUFbcLNu7+ViR\n\
U+uBmx4UrtvaPl+gqPWf12P4siF9Wr9D+BogPtB3+eQz20VV5Q8VHaeRC+Be40/I\n\
Dw6LKVH/AgMBAAECggEAN26pCbpAe0XOYcJEuxZl8Ssru775dzGDc/LitEDhXCQt\n\
5o1LlyRriPAdCYRC+S7Fmw/A9ANLX4rppXoCP8uWQ8KaPt0PB4RGndIFLdx/ekIq\n\
cr776AxmLd3Q9mGieSkiAgEFYgMTncGkGQ8Pv8M2aCneNLWuUOEiJDUi3+vDTk3h\n\
AeEyFN31fPke5BrtefoY4/VzwoMWErvfyMAliS5J2JpIkKZ59FqyYW1efTyA7Dw/\n\
emIXL5aPiFIQQb08LGSR38AFPLb/ulikmfi3SHUL//bTQjGPoDZRNeQI9ER5/liD\n\
zanOS0evTIW2BZmxTJXvq6nWTZfsJAKGgF6sqCmfAQKBgQDqzXG8Yudm3Ts28+7R\n\
mJQAAbX/2jEcS5EV5YFy3BeOFpAyz1mVkMrI9SmQ2Rvb/zgwHp+FuC74Mi1MWMLl\n\
Ll2O3Ywz4mKvTWGTWNJfgTTqSaoUE37RErMoAibmHLWuTZOqSfnqGANDxnYqmZq/\n\
NsGbvEVFX0ta5zzvY1qqqxZXXQKBgQDJ6x48nZxj2uKM8yQ1/SuYEq62h5lLSrs+\n\
KTDXhj4lmVdTpluIITt2kgcYTolsrJoS9T/m4daThpbYkcscG1mVAEKcIK1ngech\n\
sGXCRtDYemGoi80bD1giO7CBt+VLed9Gl6zOCMfwqHhqhms9X8Ze3OW4wM84Qtau\n\
3in9DU3FCwKBgBKtRtfCUj/HZzdmzd9UMKmTeUOhunhStna0a8iUIzeFKfEwtyKD\n\
gu3bOnQwINwt/+0r8mpzjSDm9N12zgHm30BG9SkHX+wrzpAm54z7PRdJxsKUDmlZ\n\
AHE1QpzZOcZkm1NXUQ7C3Dee6LVYxItjMqFNp4DuJJNVg25TS9n5g+xtAoGAYsxD\n\
gD9SXV2lingR2MTmxsMlb7SLolaPpcu71UkfMYCFRS3aDZLNKKgtBoyvG1idDven\n\
a85HEupA9vjnW/pZ69kzvncSwdnDAS3xrIy/9Zx0GmdFVZ89bYqtQ9t6O2MHh+AB\n\
MtMDGdMlEGJzKJWrV5FYaf0Vp560st2LyADxc58CgYEA5gMbXEw1mJoQqEyXtf5n\n\
cezK8vg/O9tG/hgtpoECCytowonny+blEZprh4EVDgW6vEKquKtM5PnpI6r+Uak6\n\
7AWSqtXDY5CVNUTW7LI81uAerwJBZQxbI3QjDe/s8ytnRxn/MSXonAJORWtMvV2r\n\
NqJPe4C3y4OfdtcPxe8gBFI=\n\
-----END PRIVATE KEY-----\n\
";

const EC_CERT: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBjDCCATGgAwIBAgIUcbFmRevHjeUYOHT4gVR2k5Zj1fMwCgYIKoZIzj0EAwIw\n\
GjEYMBYGA1UEAwwPZm9vLmV4YW1wbGUuY29tMCAXDTI2MTEyMjAzMzE0MVoYDzIx\n\
MjYxMDI5MDMzMTQxWjAaMRgwFgYDVQQDDA9mb28uZXhhbXBsZS5jb20wWTATBgcq\n\
hkjOPQIBBggqhkjOPQMBBwNCAAR0I6w7DwfC3+UkHT9lXX38s+cIUBo+bR75d9Gs\n\
yOllrI3f+YkeEsnLjIeazeJc9YXjgTD81B3PI7M87V4xSzIXo1MwUTAdBgNVHQ4E\n\
FgQUg6JNYdLbH1kz47W6b0qVyiHB9rQwHwYDVR0jBBgwFoAUg6JNYdLbH1kz47W6\n\
b0qVyiHB9rQwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNJADBGAiEA654J\n\
H5L8h0c9bNcTJTXftvp+N+JX1P9Naxn+C5MVuusCIQDNyVFB3MaAiCdzQetwrD9V\n\
8izSOaKc4lMgj2/U3Dn0lA==\n\
-----END CERTIFICATE-----\n\
";

const EC_KEY: &str = "\
-----BEGIN EC PRIVATE KEY-----\n\
MHcCAQEEINJ1a2JiA7LUOHwV57IP+UHW347Kz8yZ0xYx+PxpDH+JoAoGCCqGSM49\n\
AwEHoUQDQgAEdCOsOw8Hwt/lJB0/ZV19/LPnCFAaPm0e+XfRrMjpZayN3/mJHhLJ\n\
y4yHms3iXPWF44Ew/NQdzyOzPO1eMUsyFw==\n\
-----END EC PRIVATE KEY-----\n\
";

const EC_PKCS8_KEY: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg0nVrYmIDstQ4fBXn\n\
sg/5QdbfjsrPzJnTFjH4/GkMf4mhRANCAAR0I6w7DwfC3+UkHT9lXX38s+cIUBo+\n\
bR75d9GsyOllrI3f+YkeEsnLjIeazeJc9YXjgTD81B3PI7M87V4xSzIX\n\
-----END PRIVATE KEY-----\n\
";

const ED25519_CERT: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBSjCB/aADAgECAhRrc2IXggW/IZyCO3N9/zgY/R4lATAFBgMrZXAwGjEYMBYG\n\
A1UEAwwPZm9vLmV4YW1wbGUuY29tMCAXDTI2MTEyMjAzMzE0MVoYDzIxMjYxMDI5\n\
MDMzMTQxWjAaMRgwFgYDVQQDDA9mb28uZXhhbXBsZS5jb20wKjAFBgMrZXADIQAN\n\
FC0VcbtvQ9G4K8gtunPzNbV6GNbr/jO6OrZEWDOh3qNTMFEwHQYDVR0OBBYEFOES\n\
9bA/7YRHaUGZHoH4B+6MrKHQMB8GA1UdIwQYMBaAFOES9bA/7YRHaUGZHoH4B+6M\n\
rKHQMA8GA1UdEwEB/wQFMAMBAf8wBQYDK2VwA0EANX3MWtHU1bwBXq6KgWXtYBkf\n\
cHcWhTT4fVlA5lP4YC90Sg6PAoms3S55yGn36ec4OygXCAl1V9cFppzDmt5NDw==\n\
-----END CERTIFICATE-----\n\
";

const ED25519_KEY: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MC4CAQAwBQYDK2VwBCIEIPm3kCUmJk0ggIG5jPdUfeqTcGU5NnHozKdH1zVzPKyg\n\
-----END PRIVATE KEY-----\n\
";

const EC_PUBLIC_KEY: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEdCOsOw8Hwt/lJB0/ZV19/LPnCFAa\n\
Pm0e+XfRrMjpZayN3/mJHhLJy4yHms3iXPWF44Ew/NQdzyOzPO1eMUsyFw==\n\
-----END PUBLIC KEY-----\n\
";
