//! A reviewable text dump of a [`ProxyConfig`] for golden files: the
//! `{:#?}` output of the prost structs with every `Any` payload decoded in
//! place (HTTP connection manager, TCP proxy, TLS contexts...) and empty
//! fields (`None`, `[]`, `""`, and zeros outside wrapper values) left out.

use std::fmt::Debug;

use envoy_types::pb::envoy::extensions::{
    filters::{
        http::{header_mutation::v3::HeaderMutation, router::v3::Router},
        listener::tls_inspector::v3::TlsInspector,
        network::{
            connection_limit::v3::ConnectionLimit, http_connection_manager::v3::HttpConnectionManager,
            tcp_proxy::v3::TcpProxy,
        },
    },
    transport_sockets::tls::v3::{DownstreamTlsContext, UpstreamTlsContext},
};
use prost::{Message, Name};

use super::ProxyConfig;

/// The dump: one section per type, then the warnings.
pub fn dump(config: &ProxyConfig) -> String {
    let mut out = String::new();
    section(&mut out, "listeners", &config.listeners);
    section(&mut out, "routes", &config.routes);
    section(&mut out, "clusters", &config.clusters);
    section(&mut out, "endpoints", &config.endpoints);
    section(&mut out, "secrets", &config.secrets);
    out.push_str("# warnings\n");
    for w in &config.warnings {
        out.push_str("- ");
        out.push_str(w);
        out.push('\n');
    }
    out
}

fn section<T: Debug>(out: &mut String, title: &str, items: &[T]) {
    out.push_str(&format!("# {title}\n"));
    for item in items {
        out.push_str(&pretty(item));
        out.push('\n');
    }
}

/// `{:#?}` with `Any` payloads decoded and empty fields dropped.
pub fn pretty<T: Debug>(value: &T) -> String {
    let raw = format!("{value:#?}");
    let expanded = expand_anys(&raw);
    strip_empty(&expanded)
}

fn decode<M: Message + Default + Debug>(bytes: &[u8]) -> Option<String> {
    M::decode(bytes).ok().map(|m| format!("{m:#?}"))
}

/// The Debug text of a known payload.
fn decode_any(type_url: &str, bytes: &[u8]) -> Option<String> {
    let t = type_url;
    if t == HttpConnectionManager::type_url() {
        decode::<HttpConnectionManager>(bytes)
    } else if t == HeaderMutation::type_url() {
        decode::<HeaderMutation>(bytes)
    } else if t == TcpProxy::type_url() {
        decode::<TcpProxy>(bytes)
    } else if t == Router::type_url() {
        decode::<Router>(bytes)
    } else if t == ConnectionLimit::type_url() {
        decode::<ConnectionLimit>(bytes)
    } else if t == TlsInspector::type_url() {
        decode::<TlsInspector>(bytes)
    } else if t == DownstreamTlsContext::type_url() {
        decode::<DownstreamTlsContext>(bytes)
    } else if t == UpstreamTlsContext::type_url() {
        decode::<UpstreamTlsContext>(bytes)
    } else {
        None
    }
}

/// Replaces `value: [ 10, 3, ... ]` after a known `type_url: "..."` line by
/// the decoded message, indented in place (recursively).
fn expand_anys(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<String> = Vec::with_capacity(lines.len());
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        out.push(line.to_string());
        i += 1;
        let Some(url) = line.trim_start().strip_prefix("type_url: \"").and_then(|s| s.strip_suffix("\",")) else {
            continue;
        };
        let Some(next) = lines.get(i) else { continue };
        let indent = &next[..next.len() - next.trim_start().len()];
        let trimmed = next.trim_start();
        let mut bytes = Vec::new();
        let mut end = i;
        if trimmed == "value: []," {
            end = i + 1;
        } else if trimmed == "value: [" {
            let mut j = i + 1;
            while let Some(l) = lines.get(j) {
                let t = l.trim();
                if t == "]," {
                    end = j + 1;
                    break;
                }
                match t.trim_end_matches(',').parse::<u8>() {
                    Ok(b) => bytes.push(b),
                    Err(_) => break,
                }
                j += 1;
            }
        }
        if end == i {
            continue;
        }
        let Some(decoded) = decode_any(url, &bytes) else { continue };
        let decoded = expand_anys(&decoded);
        let mut dl = decoded.lines();
        out.push(format!("{indent}value: {}", dl.next().unwrap_or_default()));
        for l in dl {
            out.push(format!("{indent}{l}"));
        }
        if let Some(last) = out.last_mut() {
            last.push(',');
        }
        i = end;
    }
    out.join("\n")
}

/// Drops lines holding an empty field. Zeros and `false` are kept inside
/// wrapper types (`BoolValue { value: false }` says something).
fn strip_empty(text: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        let empty = t.ends_with(": None,") || t.ends_with(": [],") || t.ends_with(": \"\",") || t.ends_with(": {},");
        let zero = t.ends_with(": 0,") || t.ends_with(": false,") || t.ends_with(": 0.0,");
        let in_wrapper = out.last().is_some_and(|p| p.trim_end().ends_with("Value {"));
        if empty || (zero && !in_wrapper) {
            continue;
        }
        out.push(line);
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::listener::v3::{Filter, filter};
    use envoy_types::util::pack_any;

    #[test]
    fn payloads_are_decoded_and_empties_dropped() {
        let f = Filter {
            name: "tcp".into(),
            config_type: Some(filter::ConfigType::TypedConfig(pack_any(TcpProxy {
                stat_prefix: "stats".into(),
                ..Default::default()
            }))),
        };
        let text = pretty(&f);
        assert!(text.contains("stat_prefix: \"stats\""), "{text}");
        assert!(!text.contains("None"), "{text}");
        assert!(!text.contains("value: ["), "{text}");
    }
}
