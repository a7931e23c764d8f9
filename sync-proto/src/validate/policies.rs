//! The connection policies (Timeout, Retry, CircuitBreaker, HealthCheck,
//! RateLimit, FaultInjection, TrafficPermission, TrafficLog): their
//! `sources`/`destinations` selectors and `conf`, with the incumbent's
//! messages (Kuma 2.14 `pkg/core/resources/apis/mesh/*_validator.go`).

use std::collections::BTreeMap;

use pbjson_types::Duration;

use super::selectors::{self, SERVICE_TAG, TagRules};
use super::{FieldPath, Report, quote, route};
use crate::pb::mesh::{
    CircuitBreaker, FaultInjection, HealthCheck, HttpMethod, RateLimit, Retry, Timeout, TrafficLog, TrafficPermission,
    retry,
};

/// Sources of most policies: at least one selector, each with at least one
/// tag and `kuma.io/service`.
const SOURCE: TagRules = TagRules::SERVICE_SELECTOR;
/// Sources and destinations of RateLimit, FaultInjection and
/// TrafficPermission: any tags, at least one.
const ANY_TAGS: TagRules = TagRules { require_service: false, ..TagRules::SERVICE_SELECTOR };

/// The incumbent's `OnlyServiceTagAllowed`: each destination selector is
/// exactly `{kuma.io/service: ...}`.
fn service_only(r: &mut Report, at: &FieldPath, list: &[crate::pb::mesh::Selector]) {
    if list.is_empty() {
        r.add(at, "must have at least one element");
    }
    for (i, s) in list.iter().enumerate() {
        let at = at.index(i).field("match");
        let map = &s.r#match;
        if map.len() != 1 || !map.contains_key(SERVICE_TAG) {
            r.add(&at, format!("must consist of exactly one tag {}", quote(SERVICE_TAG)));
        }
        for key in map.keys().filter(|k| *k != SERVICE_TAG) {
            r.add(&at.key(key), format!("tag {} is not allowed", quote(key)));
        }
        let rules = TagRules { require_one: false, ..TagRules::SERVICE_SELECTOR };
        selectors::tags(r, &at, map, rules);
    }
}

fn sources(r: &mut Report, list: &[crate::pb::mesh::Selector], rules: TagRules) {
    selectors::selectors(r, &FieldPath::new("sources"), list, false, rules);
}

fn is_zero(d: &Duration) -> bool {
    d.seconds == 0 && d.nanos == 0
}

/// The longest duration Envoy takes: it converts durations to int64
/// nanoseconds and refuses longer ones ("Duration out-of-range",
/// `validateDurationAsMilliseconds` in Envoy's `protobuf/utility.cc`).
pub const ENVOY_MAX_DURATION_SECONDS: i64 = i64::MAX / 1_000_000_000;

/// Whether Envoy would refuse `d` for being negative ("Expected positive
/// duration") or too long; adds the violation at `at`. Zero is the caller's.
fn envoy_duration(r: &mut Report, at: &FieldPath, d: Option<&Duration>) -> bool {
    match d {
        Some(d) if d.seconds < 0 || d.nanos < 0 => {
            r.add(at, "has to be greater than 0 when defined");
            false
        }
        Some(d)
            if d.seconds > ENVOY_MAX_DURATION_SECONDS || (d.seconds == ENVOY_MAX_DURATION_SECONDS && d.nanos > 0) =>
        {
            r.add(at, format!("must be at most {ENVOY_MAX_DURATION_SECONDS}s (Envoy's limit)"));
            false
        }
        _ => true,
    }
}

/// A duration that must be there and be positive (`ValidateDuration`).
fn positive(r: &mut Report, at: &FieldPath, d: Option<&Duration>) {
    match d {
        None => r.add(at, "must have a positive value"),
        Some(d) if d.seconds < 0 || d.nanos < 0 => r.add(at, "must have a valid value"),
        Some(d) if is_zero(d) => r.add(at, "must have a positive value"),
        Some(d) => {
            envoy_duration(r, at, Some(d));
        }
    }
}

/// An optional duration that, when set, is greater than zero.
fn positive_or_unset(r: &mut Report, at: &FieldPath, d: Option<&Duration>) {
    if let Some(d) = d
        && (is_zero(d) || d.seconds < 0 || d.nanos < 0)
    {
        r.add(at, "has to be greater than 0 when defined");
    } else {
        envoy_duration(r, at, d);
    }
}

pub(super) fn timeout(r: &mut Report, spec: &Timeout) {
    sources(r, &spec.sources, SOURCE);
    service_only(r, &FieldPath::new("destinations"), &spec.destinations);
    let at = FieldPath::new("conf");
    let Some(conf) = &spec.conf else {
        r.add(&at, "has to be defined");
        return;
    };
    // Ours: the incumbent accepts a conf with no timeout at all, which changes nothing.
    if conf.connect_timeout.is_none() && conf.tcp.is_none() && conf.http.is_none() && conf.grpc.is_none() {
        r.add(&at, "at least one timeout has to be defined");
    }
    positive_or_unset(r, &at.field("connectTimeout"), conf.connect_timeout.as_ref());
    if let Some(tcp) = &conf.tcp {
        let at = at.field("tcp");
        match &tcp.idle_timeout {
            None => r.add(&at, "at least one timeout in section has to be defined"),
            Some(d) if is_zero(d) => r.add(&at.field("idleTimeout"), "has to be greater than 0"),
            Some(d) => {
                envoy_duration(r, &at.field("idleTimeout"), Some(d));
            }
        }
    }
    if let Some(http) = &conf.http {
        let at = at.field("http");
        let all = [
            ("requestTimeout", &http.request_timeout),
            ("idleTimeout", &http.idle_timeout),
            ("streamIdleTimeout", &http.stream_idle_timeout),
            ("maxStreamDuration", &http.max_stream_duration),
        ];
        if all.iter().all(|(_, d)| d.is_none()) {
            r.add(&at, "at least one timeout in section has to be defined");
        }
        for (name, d) in all {
            positive_or_unset(r, &at.field(name), d.as_ref());
        }
    }
    if let Some(grpc) = &conf.grpc {
        let at = at.field("grpc");
        if grpc.stream_idle_timeout.is_none() && grpc.max_stream_duration.is_none() {
            r.add(&at, "at least one timeout in section has to be defined");
        }
        positive_or_unset(r, &at.field("streamIdleTimeout"), grpc.stream_idle_timeout.as_ref());
        positive_or_unset(r, &at.field("maxStreamDuration"), grpc.max_stream_duration.as_ref());
    }
}

fn back_off(r: &mut Report, at: &FieldPath, b: Option<&retry::conf::BackOff>) {
    let Some(b) = b else { return };
    match &b.base_interval {
        None => r.add(&at.field("baseInterval"), "has to be defined"),
        Some(d) if is_zero(d) => r.add(&at.field("baseInterval"), "has to be greater than 0"),
        Some(base) => {
            let base_ok = envoy_duration(r, &at.field("baseInterval"), Some(base));
            positive_or_unset(r, &at.field("maxInterval"), b.max_interval.as_ref());
            // Envoy: "max_interval must greater than or equal to the base_interval".
            if let Some(max) = &b.max_interval
                && base_ok
                && (max.seconds, max.nanos) < (base.seconds, base.nanos)
            {
                r.add(&at.field("maxInterval"), "must be greater than or equal to baseInterval");
            }
        }
    }
}

fn num_retries(r: &mut Report, at: &FieldPath, n: Option<&pbjson_types::UInt32Value>) {
    if n.is_some_and(|n| n.value == 0) {
        r.add(at, "has to be greater than 0 when defined");
    }
}

pub(super) fn retry(r: &mut Report, spec: &Retry) {
    sources(r, &spec.sources, SOURCE);
    service_only(r, &FieldPath::new("destinations"), &spec.destinations);
    let at = FieldPath::new("conf");
    let Some(conf) = &spec.conf else {
        r.add(&at, "has to be defined");
        return;
    };
    if conf.http.is_none() && conf.grpc.is_none() && conf.tcp.is_none() {
        r.add(&at, "missing protocol [grpc|http|tcp] configuration");
        return;
    }
    if let Some(http) = &conf.http {
        let at = at.field("http");
        if http.num_retries.is_none()
            && http.per_try_timeout.is_none()
            && http.back_off.is_none()
            && http.retriable_status_codes.is_empty()
            && http.retriable_methods.is_empty()
            && http.retry_on.is_empty()
        {
            r.add(&at, "field cannot be empty");
        }
        num_retries(r, &at.field("numRetries"), http.num_retries.as_ref());
        positive_or_unset(r, &at.field("perTryTimeout"), http.per_try_timeout.as_ref());
        back_off(r, &at.field("backOff"), http.back_off.as_ref());
        // Ours: Envoy takes only real status codes.
        for (i, code) in http.retriable_status_codes.iter().enumerate() {
            if !(100..600).contains(code) {
                r.add(&at.field("retriableStatusCodes").index(i), "must be in range [100, 600)");
            }
        }
        for (i, m) in http.retriable_methods.iter().enumerate() {
            if *m == HttpMethod::None as i32 {
                r.add(&at.field("retriableMethods").index(i), "field cannot be empty");
            }
        }
        let codes = crate::pb::mesh::HttpRetryOn::RetriableStatusCodes as i32;
        for (i, on) in http.retry_on.iter().enumerate() {
            if *on == codes && http.retriable_status_codes.is_empty() {
                r.add(
                    &at.field("retryOn").index(i),
                    "retriableStatusCodes cannot be empty when this option is specified",
                );
            }
        }
    }
    if let Some(grpc) = &conf.grpc {
        let at = at.field("grpc");
        if grpc.num_retries.is_none()
            && grpc.per_try_timeout.is_none()
            && grpc.back_off.is_none()
            && grpc.retry_on.is_empty()
        {
            r.add(&at, "field cannot be empty");
        }
        let mut seen: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
        for (i, on) in grpc.retry_on.iter().enumerate() {
            seen.entry(*on).or_default().push(i);
        }
        for (on, at_indexes) in seen.iter().filter(|(_, v)| v.len() > 1) {
            let name = retry::conf::grpc::RetryOn::try_from(*on).map(|o| o.as_str_name()).unwrap_or("unknown");
            let list: Vec<String> = at_indexes.iter().map(ToString::to_string).collect();
            r.add(&at.field("retryOn"), format!("repeated value {} at indexes [{}]", quote(name), list.join(", ")));
        }
        num_retries(r, &at.field("numRetries"), grpc.num_retries.as_ref());
        positive_or_unset(r, &at.field("perTryTimeout"), grpc.per_try_timeout.as_ref());
        back_off(r, &at.field("backOff"), grpc.back_off.as_ref());
    }
    if let Some(tcp) = &conf.tcp
        && tcp.max_connect_attempts == 0
    {
        r.add(&at.field("tcp").field("maxConnectAttempts"), "has to be greater than 0");
    }
}

pub(super) fn circuit_breaker(r: &mut Report, spec: &CircuitBreaker) {
    sources(r, &spec.sources, SOURCE);
    service_only(r, &FieldPath::new("destinations"), &spec.destinations);
    let at = FieldPath::new("conf");
    let conf = spec.conf.unwrap_or_default();
    let d = conf.detectors.unwrap_or_default();
    let has_detectors = d.total_errors.is_some()
        || d.gateway_errors.is_some()
        || d.local_errors.is_some()
        || d.standard_deviation.is_some()
        || d.failure.is_some();
    let t = conf.thresholds.unwrap_or_default();
    let has_thresholds = t.max_connections.is_some()
        || t.max_pending_requests.is_some()
        || t.max_retries.is_some()
        || t.max_requests.is_some();
    if !has_detectors && !has_thresholds {
        r.add(&at, "must have at least one of the detector or threshold configured");
        return;
    }
    if conf.detectors.is_some() && !has_detectors {
        r.add(&at.field("detectors"), "can't be empty");
    }
    let percent = |r: &mut Report, at: &FieldPath, v: Option<&pbjson_types::UInt32Value>| {
        if v.is_some_and(|v| v.value > 100) {
            r.add(at, "has to be in [0.0 - 100.0] range");
        }
    };
    percent(r, &at.field("maxEjectionPercent"), conf.max_ejection_percent.as_ref());
    // Ours: Envoy's outlier detection refuses negative and over-long durations.
    positive_or_unset(r, &at.field("interval"), conf.interval.as_ref());
    positive_or_unset(r, &at.field("baseEjectionTime"), conf.base_ejection_time.as_ref());
    if let Some(f) = &d.failure {
        percent(r, &at.field("detectors").field("failure").field("threshold"), f.threshold.as_ref());
    }
    if conf.thresholds.is_some() && !has_thresholds {
        r.add(&at.field("thresholds"), "can't be empty");
    }
}

pub(super) fn health_check(r: &mut Report, spec: &HealthCheck) {
    sources(r, &spec.sources, SOURCE);
    service_only(r, &FieldPath::new("destinations"), &spec.destinations);
    let at = FieldPath::new("conf");
    let Some(conf) = &spec.conf else {
        r.add(&at, "has to be defined");
        return;
    };
    positive(r, &at.field("interval"), conf.interval.as_ref());
    positive(r, &at.field("timeout"), conf.timeout.as_ref());
    for (name, v) in [("unhealthyThreshold", conf.unhealthy_threshold), ("healthyThreshold", conf.healthy_threshold)] {
        if v == 0 {
            r.add(&at.field(name), "must have a positive value");
        }
    }
    for (name, d) in [
        ("initialJitter", &conf.initial_jitter),
        ("intervalJitter", &conf.interval_jitter),
        ("noTrafficInterval", &conf.no_traffic_interval),
    ] {
        if d.is_some() {
            positive(r, &at.field(name), d.as_ref());
        }
    }
    if let Some(p) = &conf.healthy_panic_threshold
        && !(0.0..=100.0).contains(&p.value)
    {
        r.add(&at.field("healthyPanicThreshold"), "must be in range [0.0 - 100.0]");
    }
    if let Some(http) = &conf.http {
        let at = at.field("http");
        if http.path.is_empty() {
            r.add(&at.field("path"), "has to be defined and cannot be empty");
        }
        route::request_path(r, &at.field("path"), &http.path);
        for (i, s) in http.expected_statuses.iter().enumerate() {
            if !(100..600).contains(&s.value) {
                r.add(&at.field("expectedStatuses").index(i), "must be in range [100, 600)");
            }
        }
        for (i, h) in http.request_headers_to_add.iter().enumerate() {
            let at = at.field("requestHeadersToAdd").index(i).field("header");
            match &h.header {
                None => r.add(&at, "has to be defined"),
                Some(h) if h.key.is_empty() => r.add(&at.field("key"), "cannot be empty"),
                Some(h) => route::added_header(r, &at.field("key"), &h.key, &at.field("value"), &h.value),
            }
        }
    }
    if conf.tcp.is_some() && conf.http.is_some() {
        r.add(&at, "http and tcp cannot be defined at the same time");
    }
}

pub(super) fn rate_limit(r: &mut Report, spec: &RateLimit) {
    sources(r, &spec.sources, ANY_TAGS);
    selectors::selectors(r, &FieldPath::new("destinations"), &spec.destinations, false, ANY_TAGS);
    let at = FieldPath::new("conf");
    let Some(conf) = &spec.conf else {
        r.add(&at, "must have conf");
        return;
    };
    let Some(http) = &conf.http else {
        // Ours: the incumbent accepts an empty conf, which limits nothing.
        r.add(&at.field("http"), "has to be defined");
        return;
    };
    let at = at.field("http");
    if http.requests == 0 {
        r.add(&at.field("requests"), "requests must be set");
    }
    match &http.interval {
        None => r.add(&at.field("interval"), "interval must be set"),
        Some(d) if is_zero(d) || d.seconds < 0 || d.nanos < 0 => r.add(&at.field("interval"), "interval must be set"),
        // Envoy's token bucket refills at most every 50 ms.
        Some(d) if d.seconds == 0 && d.nanos < 50_000_000 => r.add(&at.field("interval"), "must be at least 50ms"),
        Some(d) => {
            envoy_duration(r, &at.field("interval"), Some(d));
        }
    }
    if let Some(on) = &http.on_rate_limit {
        let at = at.field("onRateLimit");
        if let Some(s) = &on.status
            && !(200..600).contains(&s.value)
        {
            r.add(&at.field("status"), "must be in range [200, 600)");
        }
        for (i, h) in on.headers.iter().enumerate() {
            let at = at.field("headers").index(i);
            if h.key.is_empty() {
                r.add(&at, "key must be set");
            }
            if h.value.is_empty() {
                r.add(&at, "value must be set");
            }
            route::added_header(r, &at.field("key"), &h.key, &at.field("value"), &h.value);
        }
    }
}

/// The protocols a FaultInjection destination may name.
const FAULT_PROTOCOLS: &[&str] = &["http", "http2", "grpc"];

pub(super) fn fault_injection(r: &mut Report, spec: &FaultInjection) {
    sources(r, &spec.sources, ANY_TAGS);
    let at = FieldPath::new("destinations");
    selectors::selectors(r, &at, &spec.destinations, false, ANY_TAGS);
    for (i, s) in spec.destinations.iter().enumerate() {
        let at = at.index(i).field("match");
        match s.r#match.get(selectors::PROTOCOL_TAG) {
            None => r.add(&at, "protocol must be specified"),
            Some(p) if !FAULT_PROTOCOLS.contains(&p.as_str()) => {
                r.add(&at.key(selectors::PROTOCOL_TAG), format!("must be one of the [{}]", FAULT_PROTOCOLS.join(", ")))
            }
            Some(_) => {}
        }
    }
    let at = FieldPath::new("conf");
    let conf = spec.conf.clone().unwrap_or_default();
    let delay = conf.delay.filter(|d| d.percentage.is_some() || d.value.is_some());
    let abort = conf.abort.filter(|a| a.percentage.is_some() || a.http_status.is_some());
    let bandwidth = conf.response_bandwidth.filter(|b| b.percentage.is_some() || b.limit.is_some());
    if delay.is_none() && abort.is_none() && bandwidth.is_none() {
        r.add(&at, "must have at least one of the faults configured");
    }
    let percentage = |r: &mut Report, at: &FieldPath, p: Option<&pbjson_types::DoubleValue>| match p {
        None => r.add(&at.field("percentage"), "cannot be empty"),
        Some(p) if !(0.0..=100.0).contains(&p.value) => {
            r.add(&at.field("percentage"), "has to be in [0.0 - 100.0] range")
        }
        Some(_) => {}
    };
    if let Some(d) = &delay {
        let at = at.field("delay");
        percentage(r, &at, d.percentage.as_ref());
        match &d.value {
            None => r.add(&at.field("value"), "cannot be empty"),
            // Ours: Envoy's fixed delay must be positive.
            Some(v) => positive(r, &at.field("value"), Some(v)),
        }
    }
    if let Some(a) = &abort {
        let at = at.field("abort");
        percentage(r, &at, a.percentage.as_ref());
        match &a.http_status {
            None => r.add(&at.field("httpStatus"), "cannot be empty"),
            Some(s) if !(200..600).contains(&s.value) => {
                r.add(&at.field("httpStatus"), "http status code is incorrect")
            }
            Some(_) => {}
        }
    }
    if let Some(b) = &bandwidth {
        let at = at.field("responseBandwidth");
        percentage(r, &at, b.percentage.as_ref());
        match &b.limit {
            None => r.add(&at.field("limit"), "cannot be empty"),
            Some(l) if bandwidth_kbps(&l.value).is_none() => {
                r.add(&at.field("limit"), "has to be in kbps/mbps/gbps units")
            }
            Some(_) => {}
        }
    }
}

/// A FaultInjection bandwidth limit (`10kbps`, `1 mbps`, `2gbps`) in kbit/s,
/// Envoy's unit.
pub fn bandwidth_kbps(limit: &str) -> Option<u64> {
    let digits = limit.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = limit[..digits].parse().ok()?;
    let factor = match limit[digits..].trim_start() {
        "kbps" => 1,
        "mbps" => 1000,
        "gbps" => 1_000_000,
        _ => return None,
    };
    n.checked_mul(factor).filter(|k| *k > 0)
}

pub(super) fn traffic_permission(r: &mut Report, spec: &TrafficPermission) {
    sources(r, &spec.sources, ANY_TAGS);
    selectors::selectors(r, &FieldPath::new("destinations"), &spec.destinations, false, ANY_TAGS);
}

pub(super) fn traffic_log(r: &mut Report, spec: &TrafficLog) {
    sources(r, &spec.sources, SOURCE);
    service_only(r, &FieldPath::new("destinations"), &spec.destinations);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::mesh::Selector;

    fn sel(pairs: &[(&str, &str)]) -> Vec<Selector> {
        vec![Selector { r#match: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }]
    }

    fn run(check: impl FnOnce(&mut Report)) -> Vec<(String, String)> {
        Report::run(check).into_iter().map(|v| (v.field, v.message)).collect()
    }

    #[test]
    fn destinations_must_be_service_only() {
        let spec = Timeout {
            sources: sel(&[("kuma.io/service", "*")]),
            destinations: sel(&[("kuma.io/service", "web"), ("version", "v1")]),
            conf: Some(crate::pb::mesh::timeout::Conf {
                connect_timeout: Some(Duration { seconds: 1, nanos: 0 }),
                ..Default::default()
            }),
        };
        let v = run(|r| timeout(r, &spec));
        assert_eq!(
            v,
            [
                ("destinations[0].match".into(), "must consist of exactly one tag \"kuma.io/service\"".into()),
                ("destinations[0].match[\"version\"]".into(), "tag \"version\" is not allowed".into()),
            ]
        );
    }

    /// The violations of one policy written in universal YAML (parsed here,
    /// not by `universal`, which depends on this module).
    fn yaml_violations(yaml: &str) -> Vec<(String, String)> {
        let mut value: serde_json::Value = serde_saphyr::from_str(yaml).expect("yaml");
        let obj = value.as_object_mut().expect("a mapping");
        let ty = obj.remove("type").and_then(|t| t.as_str().map(str::to_string)).expect("type");
        obj.remove("mesh");
        obj.remove("name");
        fn spec<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
            serde_json::from_value(v).expect("spec")
        }
        match ty.as_str() {
            "Timeout" => run(|r| timeout(r, &spec(value))),
            "Retry" => run(|r| retry(r, &spec(value))),
            "CircuitBreaker" => run(|r| circuit_breaker(r, &spec(value))),
            "HealthCheck" => run(|r| health_check(r, &spec(value))),
            "RateLimit" => run(|r| rate_limit(r, &spec(value))),
            "FaultInjection" => run(|r| fault_injection(r, &spec(value))),
            other => panic!("no policy type {other}"),
        }
    }

    const HEAD: &str = "mesh: default\nname: p\nsources: [{match: {kuma.io/service: gw}}]\n\
                        destinations: [{match: {kuma.io/service: web}}]\n";

    /// ADVERSARY F2: every value here was accepted and NACKed by Envoy
    /// ("Duration out-of-range", "Expected positive duration", "max_interval
    /// must greater than or equal to the base_interval").
    #[test]
    fn durations_envoy_refuses_are_refused() {
        let too_long = "must be at most 9223372036s (Envoy's limit)";
        let cases: &[(&str, &str, &str)] = &[
            ("Timeout", "conf: {http: {requestTimeout: 9300000000s}}", "conf.http.requestTimeout"),
            ("Timeout", "conf: {connectTimeout: 9223372037s}", "conf.connectTimeout"),
            ("Timeout", "conf: {tcp: {idleTimeout: 9300000000s}}", "conf.tcp.idleTimeout"),
            ("Retry", "conf: {http: {perTryTimeout: 9300000000s}}", "conf.http.perTryTimeout"),
            ("Retry", "conf: {http: {backOff: {baseInterval: 9300000000s}}}", "conf.http.backOff.baseInterval"),
            (
                "HealthCheck",
                "conf: {interval: 9300000000s, timeout: 1s, unhealthyThreshold: 1, healthyThreshold: 1, tcp: {}}",
                "conf.interval",
            ),
            (
                "CircuitBreaker",
                "conf: {interval: 9300000000s, detectors: {totalErrors: {consecutive: 5}}}",
                "conf.interval",
            ),
            ("RateLimit", "conf: {http: {requests: 5, interval: 9300000000s}}", "conf.http.interval"),
        ];
        for (ty, conf, field) in cases {
            let v = yaml_violations(&format!("type: {ty}\n{HEAD}{conf}\n"));
            assert_eq!(v, [(field.to_string(), too_long.to_string())], "{ty} {conf}");
        }
        let positive = "has to be greater than 0 when defined";
        let v = yaml_violations(&format!("type: Timeout\n{HEAD}conf: {{tcp: {{idleTimeout: -5s}}}}\n"));
        assert_eq!(v, [("conf.tcp.idleTimeout".to_string(), positive.to_string())]);
        let v = yaml_violations(&format!(
            "type: CircuitBreaker\n{HEAD}conf: {{baseEjectionTime: -1s, thresholds: {{maxConnections: 1}}}}\n"
        ));
        assert_eq!(v, [("conf.baseEjectionTime".to_string(), positive.to_string())]);
        let v = yaml_violations(&format!(
            "type: Retry\n{HEAD}conf: {{http: {{backOff: {{baseInterval: 10s, maxInterval: 1s}}}}}}\n"
        ));
        assert_eq!(
            v,
            [(
                "conf.http.backOff.maxInterval".to_string(),
                "must be greater than or equal to baseInterval".to_string()
            )]
        );
        let fault = "type: FaultInjection\nmesh: default\nname: f\nsources: [{match: {kuma.io/service: '*'}}]\n\
                     destinations: [{match: {kuma.io/service: web, kuma.io/protocol: http}}]\n";
        for (value, message) in
            [("-3s", "must have a valid value"), ("0s", "must have a positive value"), ("9300000000s", too_long)]
        {
            let v = yaml_violations(&format!("{fault}conf: {{delay: {{percentage: 50, value: {value}}}}}\n"));
            assert_eq!(v, [("conf.delay.value".to_string(), message.to_string())], "delay {value}");
        }
        // The longest Envoy takes is still accepted.
        assert_eq!(yaml_violations(&format!("type: Timeout\n{HEAD}conf: {{connectTimeout: 9223372036s}}\n")), []);
    }

    /// ADVERSARY F6: Envoy NACKed these headers and paths (":-prefixed or
    /// host headers may not be modified", invalid header value, a path with
    /// a control character).
    #[test]
    fn headers_and_paths_envoy_refuses_are_refused() {
        let hc = |http: &str| {
            yaml_violations(&format!(
                "type: HealthCheck\n{HEAD}conf: {{interval: 1s, timeout: 1s, unhealthyThreshold: 1, \
                 healthyThreshold: 1, http: {http}}}\n"
            ))
        };
        let at = "conf.http.requestHeadersToAdd[0].header";
        assert_eq!(
            hc("{path: /h, requestHeadersToAdd: [{header: {key: ':authority', value: v}}]}"),
            [(
                format!("{at}.key"),
                "header \":authority\" cannot be set by a policy (Envoy refuses host and pseudo-headers)".to_string()
            )]
        );
        assert_eq!(
            hc("{path: /h, requestHeadersToAdd: [{header: {key: 'bad key', value: v}}]}"),
            [(format!("{at}.key"), "must be a valid HTTP header name".to_string())]
        );
        assert_eq!(
            hc("{path: /h, requestHeadersToAdd: [{header: {key: x-a, value: \"a\\r\\nb\"}}]}"),
            [(format!("{at}.value"), "must not contain CR, LF or NUL characters".to_string())]
        );
        assert_eq!(
            hc("{path: \"/h\\x01\"}"),
            [("conf.http.path".to_string(), "must not contain control characters (NUL, CR, LF, ...)".to_string())]
        );
        assert_eq!(hc("{path: h}"), [("conf.http.path".to_string(), "must be an absolute path".to_string())]);
        let rl = |headers: &str| {
            yaml_violations(&format!(
                "type: RateLimit\n{HEAD}conf: {{http: {{requests: 5, interval: 1s, onRateLimit: {{headers: {headers}}}}}}}\n"
            ))
        };
        assert_eq!(
            rl("[{key: Host, value: a}]"),
            [(
                "conf.http.onRateLimit.headers[0].key".to_string(),
                "header \"Host\" cannot be set by a policy (Envoy refuses host and pseudo-headers)".to_string()
            )]
        );
        assert_eq!(
            rl("[{key: x-ok, value: \"a\\nb\"}]"),
            [(
                "conf.http.onRateLimit.headers[0].value".to_string(),
                "must not contain CR, LF or NUL characters".to_string()
            )]
        );
        assert_eq!(rl("[{key: x-ok, value: a}]"), []);
    }

    #[test]
    fn bandwidth_units() {
        assert_eq!(bandwidth_kbps("10kbps"), Some(10));
        assert_eq!(bandwidth_kbps("2 mbps"), Some(2000));
        assert_eq!(bandwidth_kbps("1gbps"), Some(1_000_000));
        assert_eq!(bandwidth_kbps("10bps"), None);
        assert_eq!(bandwidth_kbps("mbps"), None);
    }

    #[test]
    fn retry_needs_a_protocol_and_circuit_breaker_a_detector() {
        let spec = Retry {
            sources: sel(&[("kuma.io/service", "*")]),
            destinations: sel(&[("kuma.io/service", "*")]),
            conf: Some(Default::default()),
        };
        assert_eq!(
            run(|r| retry(r, &spec)),
            [("conf".into(), "missing protocol [grpc|http|tcp] configuration".into())]
        );
        let spec = CircuitBreaker {
            sources: sel(&[("kuma.io/service", "*")]),
            destinations: sel(&[("kuma.io/service", "*")]),
            conf: None,
        };
        assert_eq!(
            run(|r| circuit_breaker(r, &spec)),
            [("conf".into(), "must have at least one of the detector or threshold configured".into())]
        );
    }
}

/// Where a `Mesh.logging` backend sends access logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// `type: file`, `conf.path`: lines appended to this file.
    File(String),
    /// `type: tcp`, `conf.address` (`HOST:PORT`): one line per entry over TCP.
    Tcp(String),
}

/// The target of a logging backend, or why it has none (the message and
/// the field under `conf` it is about).
pub fn log_target(backend: &crate::pb::mesh::LoggingBackend) -> Result<LogTarget, (&'static str, String)> {
    use pbjson_types::value::Kind;
    let field = |name: &str| {
        backend.conf.as_ref().and_then(|c| c.fields.get(name)).and_then(|v| match &v.kind {
            Some(Kind::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
    };
    match backend.r#type.as_str() {
        "file" => match field("path") {
            Some(p) if !p.is_empty() => Ok(LogTarget::File(p)),
            _ => Err(("conf.path", "cannot be empty".into())),
        },
        "tcp" => match field("address") {
            Some(a)
                if a.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0)) =>
            {
                Ok(LogTarget::Tcp(a))
            }
            _ => Err(("conf.address", "has to be in format IP:PORT".into())),
        },
        "" => Err(("type", "cannot be empty".into())),
        other => {
            Err(("type", format!("unknown backend type {}; Meridian supports \"file\" and \"tcp\"", quote(other))))
        }
    }
}

/// `Mesh.logging`: backend names unique and non-empty, each backend's
/// target, and a default backend that exists.
pub(super) fn logging(r: &mut Report, spec: &crate::pb::mesh::Mesh) {
    let Some(logging) = &spec.logging else { return };
    let at = FieldPath::new("logging");
    let mut names = std::collections::BTreeSet::new();
    for (i, b) in logging.backends.iter().enumerate() {
        let at = at.field("backends").index(i);
        if b.name.is_empty() {
            r.add(&at.field("name"), "cannot be empty");
        } else if !names.insert(b.name.as_str()) {
            r.add(&at.field("name"), format!("{} name is already used for another backend", quote(&b.name)));
        }
        if let Err((field, message)) = log_target(b) {
            let mut p = at.clone();
            for part in field.split('.') {
                p = p.field(part);
            }
            r.add(&p, message);
        }
    }
    if !logging.default_backend.is_empty() && !names.contains(logging.default_backend.as_str()) {
        r.add(&at.field("defaultBackend"), "has to be set to one of the logging backend in mesh");
    }
}
