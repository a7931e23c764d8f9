//! Validation of resource specs: every violation with its field path.
//!
//! One function per resource type ([`mesh`], [`mesh_gateway`],
//! [`mesh_gateway_route`], [`dataplane`], [`secret`], [`zone_ingress`]) returns
//! all the violations of a spec, never just the first, in a fixed order: the
//! order of the fields in the spec, list elements by index, map keys sorted.
//!
//! ```text
//!   spec ──check──▶ Report ──▶ Vec<Violation { field: "conf.listeners[0].port",
//!                                              message: "port must be in the range [1, 65535]" }>
//! ```
//!
//! Messages are the incumbent's (Kuma 2.14) wherever it has one, because users
//! search for them. Field paths follow its conventions too (`selectors[0].match`,
//! `tags["kuma.io/service"]`, `conf.http.rules[0].filters[0].request_header`),
//! except where its paths point at the wrong place: a rule's path match is
//! reported at `matches[i].path.value` (not `matches[i].value`), filters keep
//! their real index, and a zone ingress's addresses are not doubled
//! (`networking.advertisedAddress`, not `networking.advertisedAddress.address`).
//!
//! The incumbent leaves gaps that only show up later as Envoy NACKs (route
//! hostnames, weights, regular expressions, TCP routes, redirect codes, header
//! names, TLS secrets); those are checked here with messages of our own.

mod dataplane;
mod gateway;
mod mesh;
mod policies;
mod proxy_template;
pub mod re2;
mod route;
mod secret;
mod selectors;

use std::fmt;

use crate::pb;

pub use mesh::{BUILTIN, PROVIDED, parse_duration};
pub use policies::{LogTarget, bandwidth_kbps, log_target};
pub use proxy_template::MAX_MODIFICATIONS;
pub use secret::tls_secret;

/// One problem with a resource: where (a field path such as
/// `conf.listeners[0].port`) and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// Path of the offending field, empty for the resource as a whole.
    pub field: String,
    /// What is wrong with it, in words a user can act on.
    pub message: String,
}

impl Violation {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Violation {
        Violation { field: field.into(), message: message.into() }
    }
}

/// All violations of one resource, in a deterministic order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    pub violations: Vec<Violation>,
}

impl ValidationError {
    /// `Ok` when there is nothing to report, the error otherwise.
    pub fn from_violations(violations: Vec<Violation>) -> Result<(), ValidationError> {
        if violations.is_empty() { Ok(()) } else { Err(ValidationError { violations }) }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.violations.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", v.field, v.message)?;
        }
        Ok(())
    }
}

/// A field path under construction: `FieldPath::root().field("conf").field("listeners").index(0)`
/// renders as `conf.listeners[0]`, `.key("kuma.io/service")` as `["kuma.io/service"]`.
///
/// Every step returns a new path, so a parent can be reused for its children.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FieldPath(String);

impl FieldPath {
    /// The empty path: the resource itself.
    pub fn root() -> FieldPath {
        FieldPath(String::new())
    }

    /// A path starting at a top-level field.
    pub fn new(name: &str) -> FieldPath {
        FieldPath::root().field(name)
    }

    /// The named field of this one (`a` then `b` is `a.b`).
    pub fn field(&self, name: &str) -> FieldPath {
        let mut s = self.0.clone();
        if !s.is_empty() {
            s.push('.');
        }
        s.push_str(name);
        FieldPath(s)
    }

    /// An element of this list (`a[0]`).
    pub fn index(&self, i: usize) -> FieldPath {
        FieldPath(format!("{}[{i}]", self.0))
    }

    /// An entry of this map, its key quoted (`tags["kuma.io/service"]`).
    pub fn key(&self, key: &str) -> FieldPath {
        FieldPath(format!("{}[{}]", self.0, quote(key)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Collects the violations of one resource while its checks run.
#[derive(Debug, Default)]
struct Report {
    violations: Vec<Violation>,
}

impl Report {
    fn add(&mut self, at: &FieldPath, message: impl Into<String>) {
        self.violations.push(Violation::new(at.as_str(), message));
    }

    fn run(check: impl FnOnce(&mut Report)) -> Vec<Violation> {
        let mut report = Report::default();
        check(&mut report);
        report.violations
    }
}

/// Checks a `Mesh`: its mTLS backends.
pub fn mesh(spec: &pb::mesh::Mesh) -> Vec<Violation> {
    Report::run(|r| {
        mesh::check(r, spec);
        policies::logging(r, spec);
    })
}

/// Checks an update of a `Mesh` against the stored one: the enabled CA
/// backend cannot be swapped while mTLS is on (the incumbent's rule).
pub fn mesh_update(old: &pb::mesh::Mesh, new: &pb::mesh::Mesh) -> Vec<Violation> {
    Report::run(|r| mesh::update(r, old, new))
}

/// Checks a `MeshGateway`: selectors, tags, listeners and how listeners share ports.
pub fn mesh_gateway(spec: &pb::mesh::MeshGateway) -> Vec<Violation> {
    Report::run(|r| gateway::check(r, spec))
}

/// Checks a `MeshGatewayRoute`: selectors and its HTTP or TCP rules.
pub fn mesh_gateway_route(spec: &pb::mesh::MeshGatewayRoute) -> Vec<Violation> {
    Report::run(|r| route::check(r, spec))
}

/// Checks a `Dataplane`: a builtin gateway, a delegated gateway or a service proxy.
pub fn dataplane(spec: &pb::mesh::Dataplane) -> Vec<Violation> {
    Report::run(|r| dataplane::check(r, spec))
}

/// Checks a `Secret`: its data must be present. Whether the data is a usable
/// TLS certificate is [`tls_secret`]'s business, checked when a gateway uses it.
pub fn secret(spec: &pb::system::Secret) -> Vec<Violation> {
    Report::run(|r| secret::check(r, spec))
}

/// Checks a `ZoneIngress`: its addresses and ports and the services it announces.
pub fn zone_ingress(spec: &pb::mesh::ZoneIngress) -> Vec<Violation> {
    Report::run(|r| dataplane::check_zone_ingress(r, spec))
}

/// The longest hostname DNS allows.
const MAX_HOSTNAME_LEN: usize = 253;
/// The longest label DNS allows.
const MAX_LABEL_LEN: usize = 63;

/// The hostname rule shared by listeners, routes and redirects: `*`,
/// `*.` followed by a DNS name, or a lower-case DNS name; at most 253
/// characters, labels at most 63.
///
/// The error is the message to report (the incumbent's where it has one).
pub fn hostname(h: &str) -> Result<(), String> {
    if h == "*" {
        return Ok(());
    }
    if h.is_empty() {
        return Err("cannot be empty".to_owned());
    }
    if h.len() > MAX_HOSTNAME_LEN {
        return Err(format!("must be at most {MAX_HOSTNAME_LEN} characters"));
    }
    let (domain, invalid) = match h.strip_prefix("*.") {
        Some(rest) => (rest, "invalid wildcard domain"),
        None => (h, "invalid hostname"),
    };
    let labels_ok = domain.split('.').all(|label| {
        let b = label.as_bytes();
        let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        let inner = |c: &u8| edge(c) || *c == b'-';
        match (b.first(), b.last()) {
            (Some(first), Some(last)) => edge(first) && edge(last) && b.iter().all(inner),
            _ => false,
        }
    });
    if !labels_ok {
        return Err(invalid.to_owned());
    }
    if domain.split('.').any(|label| label.len() > MAX_LABEL_LEN) {
        return Err(format!("each label must be at most {MAX_LABEL_LEN} characters"));
    }
    Ok(())
}

/// Ports: the incumbent's rule, for every port in every resource.
fn port(r: &mut Report, at: &FieldPath, port: u32) {
    if port == 0 || port > u32::from(u16::MAX) {
        r.add(at, "port must be in the range [1, 65535]");
    }
}

fn is_ip(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok()
}

/// A DNS name in the loose sense the incumbent accepts for addresses (it uses
/// govalidator's `IsDNSName`): labels of letters, digits, `_` and `-` (not
/// first), at most 63 each, an optional final dot.
fn is_dns_name(s: &str) -> bool {
    let name = s.strip_suffix('.').unwrap_or(s);
    if name.is_empty() || name.len() - name.matches('.').count() > 255 || is_ip(s) {
        return false;
    }
    name.split('.').all(|label| {
        let b = label.as_bytes();
        let first_ok = b.first().is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_');
        first_ok && b.len() <= MAX_LABEL_LEN && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
    })
}

/// A proxy's own address (`networking.address` and the like): the incumbent's
/// three messages, at `at`.
fn address(r: &mut Report, at: &FieldPath, address: &str) {
    if address.is_empty() {
        r.add(at, "address can't be empty");
        return;
    }
    if address.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified()) {
        r.add(at, "must not be 0.0.0.0 or ::");
    }
    if !is_ip(address) && !is_dns_name(address) {
        r.add(at, "address has to be valid IP address or domain name");
    }
}

/// Quotes a string the way the incumbent's paths and messages do (Go's `%q`).
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Validates a resource's spec by its type. Identity fields (name, mesh) are
/// checked by [`crate::universal::meta_violations`].
pub fn resource(r: &crate::Resource) -> Result<(), ValidationError> {
    use crate::Spec;
    let violations = match &r.spec {
        Spec::Mesh(s) => mesh(s),
        Spec::MeshGateway(s) => mesh_gateway(s),
        Spec::MeshGatewayRoute(s) => mesh_gateway_route(s),
        Spec::Dataplane(s) => dataplane(s),
        Spec::Secret(s) | Spec::GlobalSecret(s) => secret(s),
        Spec::ZoneIngress(s) => zone_ingress(s),
        Spec::Timeout(s) => Report::run(|r| policies::timeout(r, s)),
        Spec::Retry(s) => Report::run(|r| policies::retry(r, s)),
        Spec::CircuitBreaker(s) => Report::run(|r| policies::circuit_breaker(r, s)),
        Spec::HealthCheck(s) => Report::run(|r| policies::health_check(r, s)),
        Spec::RateLimit(s) => Report::run(|r| policies::rate_limit(r, s)),
        Spec::FaultInjection(s) => Report::run(|r| policies::fault_injection(r, s)),
        Spec::TrafficPermission(s) => Report::run(|r| policies::traffic_permission(r, s)),
        Spec::TrafficLog(s) => Report::run(|r| policies::traffic_log(r, s)),
        Spec::ProxyTemplate(s) => Report::run(|r| proxy_template::validate(r, s)),
        // Written by the control plane itself, never by users.
        Spec::DataplaneInsight(_) | Spec::ZoneIngressInsight(_) | Spec::Zone(_) | Spec::ZoneInsight(_) => Vec::new(),
    };
    if violations.is_empty() { Ok(()) } else { Err(ValidationError { violations }) }
}
