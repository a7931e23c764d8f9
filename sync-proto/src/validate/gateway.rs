//! `MeshGateway`: selectors, tags, listeners, and how listeners share a port.

use std::collections::{BTreeMap, BTreeSet};

use super::selectors::{self, DATAPLANE_TAGS, TagRules, Values};
use super::{FieldPath, Report, hostname, port, tls_secret};
use crate::pb::mesh::MeshGateway;
use crate::pb::mesh::mesh_gateway::listener::Protocol;
use crate::pb::mesh::mesh_gateway::tls::{self, Mode};
use crate::pb::mesh::mesh_gateway::{Conf, Listener};
use crate::pb::system::DataSource;
use crate::pb::system::data_source::Type as Source;

/// The most certificates a listener may carry: one RSA and one ECDSA.
const MAX_CERTIFICATES: usize = 2;

/// Gateway and listener tags: any selector value, but none of the tags that
/// describe the Dataplane itself.
const LISTENER_TAGS: TagRules = TagRules {
    require_one: false,
    require_service: false,
    forbidden_keys: DATAPLANE_TAGS,
    values: Values::Selector,
    protocol: selectors::Protocol::Any,
};

pub(super) fn check(r: &mut Report, spec: &MeshGateway) {
    let cross_mesh = spec.conf.iter().flat_map(|c| &c.listeners).any(|l| l.cross_mesh);
    selectors::selectors(r, &FieldPath::new("selectors"), &spec.selectors, cross_mesh, TagRules::SERVICE_SELECTOR);
    selectors::tags(r, &FieldPath::new("tags"), &spec.tags, LISTENER_TAGS);
    conf(r, &FieldPath::new("conf"), spec.conf.as_ref());
}

fn conf(r: &mut Report, at: &FieldPath, conf: Option<&Conf>) {
    let Some(conf) = conf else {
        r.add(at, "cannot be empty");
        return;
    };
    let at = at.field("listeners");
    if conf.listeners.is_empty() {
        r.add(&at, "cannot be empty");
    }
    for (i, l) in conf.listeners.iter().enumerate() {
        listener(r, &at.index(i), l);
    }
    shared_ports(r, &at, &conf.listeners);
}

fn listener(r: &mut Report, at: &FieldPath, l: &Listener) {
    // The hostname is optional: routes may name hosts instead.
    if !l.hostname.is_empty()
        && let Err(message) = hostname(&l.hostname)
    {
        r.add(&at.field("hostname"), message);
    }
    port(r, &at.field("port"), l.port);

    let tls_at = at.field("tls");
    match Protocol::try_from(l.protocol) {
        Ok(Protocol::None) => r.add(&at.field("protocol"), "cannot be empty"),
        Ok(Protocol::Https) => match &l.tls {
            _ if l.cross_mesh => r.add(&at.field("protocol"), "protocol is not supported with crossMesh"),
            None => r.add(&tls_at, "cannot be empty"),
            Some(t) if t.mode == Mode::Passthrough as i32 => {
                r.add(&tls_at.field("mode"), "mode is not supported on HTTPS listeners");
            }
            Some(_) => {}
        },
        // Ours: a TLS listener must say whether it terminates or passes through.
        Ok(Protocol::Tls) if l.tls.is_none() && !l.cross_mesh => r.add(&tls_at, "cannot be empty"),
        Ok(_) => {}
        Err(_) => r.add(&at.field("protocol"), "protocol type is not supported"),
    }

    if let Some(t) = &l.tls {
        if l.cross_mesh {
            if t.mode != Mode::None as i32 || !t.certificates.is_empty() {
                r.add(&tls_at, "must be empty with crossMesh");
            }
        } else {
            tls_conf(r, &tls_at, t);
        }
    }

    selectors::tags(r, &at.field("tags"), &l.tags, LISTENER_TAGS);
}

fn tls_conf(r: &mut Report, at: &FieldPath, t: &tls::Conf) {
    let certs_at = at.field("certificates");
    match Mode::try_from(t.mode) {
        Ok(Mode::None) => r.add(&at.field("mode"), "cannot be empty"),
        Ok(Mode::Terminate) => match t.certificates.len() {
            0 => r.add(&certs_at, "cannot be empty in TLS termination mode"),
            n if n > MAX_CERTIFICATES => {
                r.add(&certs_at, format!("cannot have more than {MAX_CERTIFICATES} certificates"));
            }
            _ => {}
        },
        // Ours (the incumbent's older message): passthrough never uses a certificate.
        Ok(Mode::Passthrough) if !t.certificates.is_empty() => {
            r.add(&certs_at, "must be empty in TLS passthrough mode");
        }
        Ok(Mode::Passthrough) => {}
        Err(_) => r.add(&at.field("mode"), "must be one of TERMINATE, PASSTHROUGH"),
    }
    for (i, source) in t.certificates.iter().enumerate() {
        certificate(r, &certs_at.index(i), source);
    }
}

/// Ours: a certificate source must name something, and inline data must be a
/// usable PEM certificate chain and key (a named Secret is checked when it is
/// resolved, see [`tls_secret`]).
fn certificate(r: &mut Report, at: &FieldPath, source: &DataSource) {
    let inline: Option<&[u8]> = match &source.r#type {
        None => None,
        Some(Source::Secret(s) | Source::File(s) | Source::InlineString(s)) if s.is_empty() => None,
        Some(Source::Inline(b)) if b.value.is_empty() => None,
        Some(Source::Secret(_) | Source::File(_)) => return,
        Some(Source::InlineString(s)) => Some(s.as_bytes()),
        Some(Source::Inline(b)) => Some(&b.value),
    };
    match inline {
        None => r.add(at, "data source cannot be empty"),
        Some(data) => {
            if let Err(message) = tls_secret(data) {
                r.add(at, message);
            }
        }
    }
}

/// Listeners that share a port become one Envoy listener, so they must agree
/// on the protocol and the connection limit and must not repeat a hostname
/// (`""` is `*`). Each conflicting listener is reported, in index order.
fn shared_ports(r: &mut Report, at: &FieldPath, listeners: &[Listener]) {
    let mut protocols: BTreeMap<u32, BTreeSet<i32>> = BTreeMap::new();
    let mut hostnames: BTreeMap<(u32, &str), usize> = BTreeMap::new();
    let mut limits: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
    for l in listeners {
        protocols.entry(l.port).or_default().insert(l.protocol);
        *hostnames.entry((l.port, effective_hostname(l))).or_default() += 1;
        if let Some(limit) = connection_limit(l) {
            limits.entry(l.port).or_default().insert(limit);
        }
    }
    for (i, l) in listeners.iter().enumerate() {
        if conflicting(&protocols, l.port) {
            r.add(&at.index(i), "protocol conflicts with other listeners on this port");
        }
    }
    for (i, l) in listeners.iter().enumerate() {
        if hostnames.get(&(l.port, effective_hostname(l))).is_some_and(|n| *n > 1) {
            r.add(&at.index(i), "multiple listeners for hostname on this port");
        }
    }
    for (i, l) in listeners.iter().enumerate() {
        if connection_limit(l).is_some() && conflicting(&limits, l.port) {
            r.add(&at.index(i).field("resources").field("connectionLimit"), "conflicting values for this port");
        }
    }
}

/// Whether the listeners on `port` hold more than one distinct value.
fn conflicting<T>(values_by_port: &BTreeMap<u32, BTreeSet<T>>, port: u32) -> bool {
    values_by_port.get(&port).is_some_and(|values| values.len() > 1)
}

fn effective_hostname(l: &Listener) -> &str {
    if l.hostname.is_empty() { "*" } else { &l.hostname }
}

fn connection_limit(l: &Listener) -> Option<u32> {
    l.resources.map(|res| res.connection_limit).filter(|limit| *limit != 0)
}
