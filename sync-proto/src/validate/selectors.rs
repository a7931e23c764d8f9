//! Selectors and tag maps: the rules every `map<string,string>` of tags obeys.

use std::collections::BTreeMap;

use super::{FieldPath, Report, quote};
use crate::pb;

pub(super) const SERVICE_TAG: &str = "kuma.io/service";
pub(super) const PROTOCOL_TAG: &str = "kuma.io/protocol";
const ZONE_TAG: &str = "kuma.io/zone";
const EXTERNAL_SERVICE_TAG: &str = "kuma.io/external-service-name";

/// Tags that describe a Dataplane and so cannot be set by a gateway or listener.
pub(super) const DATAPLANE_TAGS: &[&str] = &[EXTERNAL_SERVICE_TAG, PROTOCOL_TAG, SERVICE_TAG, ZONE_TAG];

/// The protocols a service's `kuma.io/protocol` tag may name (the incumbent's list).
const SUPPORTED_PROTOCOLS: &[&str] = &["grpc", "http", "http2", "kafka", "tcp"];
/// Protocols the incumbent parses but does not advertise.
const OTHER_KNOWN_PROTOCOLS: &[&str] = &["tls", "mysql"];

/// What values a tag map accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum Values {
    /// Selector values: tag characters plus `/`, or exactly `*`.
    #[default]
    Selector,
    /// Tags of a proxy: letters, digits, `.`, `-`, `_`, `:`.
    Tag,
}

/// What a `kuma.io/protocol` tag in the map may say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum Protocol {
    /// Not looked at.
    #[default]
    Any,
    /// One the incumbent knows (inbound tags).
    Known,
    /// Only `tcp` (a delegated or builtin gateway's own tags).
    TcpOnly,
}

/// The rules for one tag map.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct TagRules {
    /// The map cannot be empty.
    pub require_one: bool,
    /// `kuma.io/service` must be present.
    pub require_service: bool,
    /// Keys that must not appear.
    pub forbidden_keys: &'static [&'static str],
    pub values: Values,
    pub protocol: Protocol,
}

impl TagRules {
    /// Selectors of a gateway, a route or a backend destination.
    pub(super) const SERVICE_SELECTOR: TagRules = TagRules {
        require_one: true,
        require_service: true,
        forbidden_keys: &[],
        values: Values::Selector,
        protocol: Protocol::Any,
    };
}

/// A list of selectors at `at` (`selectors`), each checked at `selectors[i].match`.
pub(super) fn selectors(
    r: &mut Report,
    at: &FieldPath,
    list: &[pb::mesh::Selector],
    at_most_one: bool,
    rules: TagRules,
) {
    if list.is_empty() {
        r.add(at, "must have at least one element");
    }
    for (i, selector) in list.iter().enumerate() {
        tags(r, &at.index(i).field("match"), &selector.r#match, rules);
        if i > 0 && at_most_one {
            r.add(&at.index(i), "there can be at most one selector");
        }
    }
}

/// One tag map at `at`: the map-level rules, then each key in order, then the
/// required service tag (the incumbent's order).
pub(super) fn tags(r: &mut Report, at: &FieldPath, map: &BTreeMap<String, String>, rules: TagRules) {
    if rules.require_one && map.is_empty() {
        r.add(at, "must have at least one tag");
    }
    protocol(r, at, map, rules.protocol);
    for (key, value) in map {
        if key.is_empty() {
            r.add(at, "tag name must be non-empty");
        }
        if !key.bytes().all(|c| is_tag_char(c) || c == b'/') {
            r.add(
                &at.key(key),
                "tag name must consist of alphanumeric characters, dots, dashes, slashes and underscores",
            );
        }
        if rules.forbidden_keys.contains(&key.as_str()) {
            r.add(&at.key(key), format!("tag name must not be {}", quote(key)));
        }
        if value.is_empty() {
            r.add(&at.key(key), "tag value must be non-empty");
        }
        match rules.values {
            Values::Selector => {
                if value != "*" && !value.bytes().all(|c| is_tag_char(c) || c == b'/') {
                    r.add(
                        &at.key(key),
                        "tag value must consist of alphanumeric characters, dots, dashes, slashes \
                         and underscores or be \"*\"",
                    );
                }
            }
            Values::Tag => {
                if !value.bytes().all(is_tag_char) {
                    r.add(
                        &at.key(key),
                        "tag value must consist of alphanumeric characters, dots, dashes and underscores",
                    );
                }
            }
        }
    }
    if rules.require_service && !map.contains_key(SERVICE_TAG) {
        r.add(at, format!("mandatory tag {} is missing", quote(SERVICE_TAG)));
    }
}

fn protocol(r: &mut Report, at: &FieldPath, map: &BTreeMap<String, String>, rule: Protocol) {
    let Some(value) = map.get(PROTOCOL_TAG) else { return };
    let lower = value.to_ascii_lowercase();
    match rule {
        Protocol::Any => {}
        Protocol::Known => {
            let known = SUPPORTED_PROTOCOLS.iter().chain(OTHER_KNOWN_PROTOCOLS).any(|p| *p == lower);
            if !known {
                r.add(
                    &at.key(PROTOCOL_TAG),
                    format!(
                        "tag {} has an invalid value {}. Allowed values: {}",
                        quote(PROTOCOL_TAG),
                        quote(value),
                        SUPPORTED_PROTOCOLS.join(", ")
                    ),
                );
            }
        }
        Protocol::TcpOnly => {
            if lower != "tcp" {
                r.add(
                    &at.key(PROTOCOL_TAG),
                    format!("other values than tcp are not allowed, provided value {}", quote(value)),
                );
            }
        }
    }
}

/// `[a-zA-Z0-9.\-_:]`
fn is_tag_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_' | b':')
}
