//! Where a zone dials its global: every `--global-address` (repeated, or
//! comma-separated, also in `MERIDIAN_GLOBAL_ADDRESS`), each a DNS name or
//! an IP, and every address a name resolves to. The KDS client
//! ([`crate::kds::run`]) takes them in turn: one fails, the next is tried
//! after the backoff; once all were tried the names are resolved again.
//!
//! ```text
//!   grpcs://global.example:5685,grpcs://10.0.0.9:5685
//!     └─ resolve ─▶ 10.0.0.7:5685, 10.0.0.8:5685, 10.0.0.9:5685 ─▶ dial in turn
//! ```
//!
//! TLS verifies the certificate against the configured host name (not the
//! resolved IP), so one certificate naming `global.example` serves every
//! replica behind it.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// HTTP/2 PING interval and timeout: a global that stops answering is
/// noticed within their sum (10 s).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// A global that does not accept the TCP connection within this is skipped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the configured addresses cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("--global-address is empty")]
    Empty,
    #[error("--global-address {0:?} must start with grpcs:// (TLS) or grpc:// (plaintext)")]
    Scheme(String),
    #[error("--global-address {0:?} must be <scheme>://<host>:<port>")]
    Shape(String),
    #[error(
        "grpcs:// needs --global-ca (the CA of the global's KDS certificate, e.g. <global data dir>/kds-ca.crt); use grpc:// for plaintext"
    )]
    NoCa,
    #[error("cannot read --global-ca {path}: {source}")]
    Ca { path: PathBuf, source: std::io::Error },
    #[error("invalid endpoint for {address:?}: {source}")]
    Endpoint { address: String, source: tonic::transport::Error },
    #[error("none of the global addresses resolved ({0})")]
    NothingResolved(String),
}

/// One configured address, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalAddress {
    /// As the user wrote it (`grpcs://global.example:5685`).
    pub text: String,
    /// `grpcs://` (true) or `grpc://`.
    pub tls: bool,
    /// Host name or IP, without brackets.
    pub host: String,
    pub port: u16,
}

impl GlobalAddress {
    /// Parses `grpcs://host:port` or `grpc://host:port` (IPv6 in brackets).
    ///
    /// Errors: another scheme, or no `host:port`.
    pub fn parse(text: &str) -> Result<GlobalAddress, AddressError> {
        let text = text.trim();
        let (tls, rest) = if let Some(r) = text.strip_prefix("grpcs://") {
            (true, r)
        } else if let Some(r) = text.strip_prefix("grpc://") {
            (false, r)
        } else {
            return Err(AddressError::Scheme(text.to_string()));
        };
        let rest = rest.trim_end_matches('/');
        let shape = || AddressError::Shape(text.to_string());
        let (host, port) = rest.rsplit_once(':').ok_or_else(shape)?;
        let host = host.trim_matches(['[', ']']);
        let port: u16 = port.parse().map_err(|_| shape())?;
        if host.is_empty() || host.contains('/') {
            return Err(shape());
        }
        Ok(GlobalAddress { text: text.to_string(), tls, host: host.to_string(), port })
    }
}

/// One dialable address: a resolved IP of one configured address.
pub struct Target {
    /// For logs: the configured address, and the IP when it was a name.
    pub label: String,
    pub endpoint: Endpoint,
}

/// The configured addresses and the ones left to try in this round.
pub struct Targets {
    addresses: Vec<GlobalAddress>,
    ca: Option<Certificate>,
    queue: VecDeque<Target>,
}

impl Targets {
    /// Parses every address (entries may hold several, comma-separated) and
    /// reads the CA when one of them is `grpcs://`.
    ///
    /// Errors: no address, a bad address, or a missing or unreadable CA.
    pub fn new(addresses: &[String], ca: Option<&Path>) -> Result<Targets, AddressError> {
        let addresses = addresses
            .iter()
            .flat_map(|a| a.split(','))
            .filter(|a| !a.trim().is_empty())
            .map(GlobalAddress::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if addresses.is_empty() {
            return Err(AddressError::Empty);
        }
        let ca = if addresses.iter().any(|a| a.tls) {
            let path = ca.ok_or(AddressError::NoCa)?;
            let pem = std::fs::read(path).map_err(|source| AddressError::Ca { path: path.to_path_buf(), source })?;
            Some(Certificate::from_pem(pem))
        } else {
            None
        };
        let targets = Targets { addresses, ca, queue: VecDeque::new() };
        // Fail at start on an address tonic would refuse.
        for a in &targets.addresses {
            targets.endpoint(a, SocketAddr::from(([127, 0, 0, 1], a.port)))?;
        }
        Ok(targets)
    }

    /// The configured addresses, in order.
    pub fn addresses(&self) -> &[GlobalAddress] {
        &self.addresses
    }

    fn endpoint(&self, a: &GlobalAddress, ip: SocketAddr) -> Result<Endpoint, AddressError> {
        let scheme = if a.tls { "https" } else { "http" };
        let err = |source| AddressError::Endpoint { address: a.text.clone(), source };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{ip}"))
            .map_err(err)?
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true)
            .connect_timeout(CONNECT_TIMEOUT);
        if a.tls {
            let mut tls = ClientTlsConfig::new().domain_name(a.host.clone());
            if let Some(ca) = &self.ca {
                tls = tls.ca_certificate(ca.clone());
            }
            ep = ep.tls_config(tls).map_err(err)?;
        }
        Ok(ep)
    }

    /// The next address to dial. When this round is used up, every
    /// configured address is resolved again (a name may now resolve to
    /// other replicas); names that do not resolve are skipped and logged.
    ///
    /// Errors: no configured address resolved.
    pub async fn next(&mut self) -> Result<Target, AddressError> {
        if self.queue.is_empty() {
            self.refill().await?;
        }
        self.queue.pop_front().ok_or_else(|| AddressError::NothingResolved("no address".into()))
    }

    async fn refill(&mut self) -> Result<(), AddressError> {
        let mut failures = Vec::new();
        for a in &self.addresses {
            match tokio::net::lookup_host((a.host.as_str(), a.port)).await {
                Ok(ips) => {
                    let mut seen = Vec::new();
                    for ip in ips {
                        if seen.contains(&ip) {
                            continue;
                        }
                        seen.push(ip);
                        let label = if a.host.parse::<std::net::IpAddr>().is_ok() {
                            a.text.clone()
                        } else {
                            format!("{} ({ip})", a.text)
                        };
                        self.queue.push_back(Target { label, endpoint: self.endpoint(a, ip)? });
                    }
                }
                Err(e) => {
                    tracing::warn!(global = %a.text, error = %e, "cannot resolve the global's address; skipping it");
                    failures.push(format!("{}: {e}", a.text));
                }
            }
        }
        if self.queue.is_empty() {
            return Err(AddressError::NothingResolved(failures.join("; ")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_their_scheme_host_and_port() {
        let a = GlobalAddress::parse("grpcs://global.example:5685").expect("parses");
        assert_eq!((a.tls, a.host.as_str(), a.port), (true, "global.example", 5685));
        let b = GlobalAddress::parse("grpc://[::1]:5685/").expect("parses");
        assert_eq!((b.tls, b.host.as_str(), b.port), (false, "::1", 5685));
        assert!(matches!(GlobalAddress::parse("http://x:1"), Err(AddressError::Scheme(_))));
        assert!(matches!(GlobalAddress::parse("grpc://x"), Err(AddressError::Shape(_))));
        assert!(matches!(GlobalAddress::parse("grpc://:1"), Err(AddressError::Shape(_))));
    }

    #[tokio::test]
    async fn every_address_and_every_resolved_ip_is_tried_in_turn() {
        let mut t = Targets::new(&["grpc://127.0.0.1:1,grpc://127.0.0.2:2".into(), "grpc://localhost:3".into()], None)
            .expect("valid");
        assert_eq!(t.addresses().len(), 3);
        let mut labels = Vec::new();
        for _ in 0..3 {
            labels.push(t.next().await.expect("a target").label);
        }
        assert_eq!(labels[0], "grpc://127.0.0.1:1");
        assert_eq!(labels[1], "grpc://127.0.0.2:2");
        assert!(labels[2].starts_with("grpc://localhost:3 ("), "a name shows what it resolved to: {}", labels[2]);
        // A round ends; the next starts again from the first.
        while !t.queue.is_empty() {
            t.next().await.expect("rest of the round");
        }
        assert_eq!(t.next().await.expect("next round").label, "grpc://127.0.0.1:1");
    }

    #[test]
    fn tls_needs_a_ca() {
        assert!(matches!(Targets::new(&["grpcs://g:5685".into()], None), Err(AddressError::NoCa)));
        assert!(matches!(Targets::new(&[], None), Err(AddressError::Empty)));
    }
}
