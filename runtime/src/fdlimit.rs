//! The open-file limit and the default connection cap derived from it.
//!
//! A server holds one descriptor per connection; the cap per listener
//! (`--max-connections`) exists so that a flood on one port cannot exhaust
//! the descriptors the other listeners, the store and outgoing
//! connections need. Rather than a fixed 512 (which shed the gateways past
//! the 512th of a zone), the default follows the process's `RLIMIT_NOFILE`:
//! at start the soft limit is raised to the hard limit (as Go's runtime and
//! most servers do; systemd's units here set `LimitNOFILE=65536`), and each
//! listener may take an equal share of it after a reserve:
//! `(limit - RESERVE) / LISTENERS`, at least [`MIN_DEFAULT`].
//! Examples: limit 1024 → 256; 20000 → 6581; 65536 → 21760; 1048576 → 349440.

use std::sync::OnceLock;

/// Descriptors kept for everything but accepted connections: the store's
/// pool and files, logs, outgoing connections (KDS, the global), TLS files.
pub const RESERVE: u64 = 256;
/// Listeners a process shares its descriptors between (REST API, KDS or
/// xDS, diagnostics).
pub const LISTENERS: u64 = 3;
/// The default cap is never below this, whatever the limit (the former
/// fixed default was 512; a tiny limit is the operator's to raise).
pub const MIN_DEFAULT: usize = 256;
/// The default cap is never above this (no listener needs more sockets
/// than a port range has).
pub const MAX_DEFAULT: usize = 1_000_000;

/// The soft `RLIMIT_NOFILE` after raising it to the hard limit (once per
/// process); `None` when it cannot be read (unlimited counts as `u64::MAX`).
pub fn nofile_limit() -> Option<u64> {
    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let now = getrlimit(Resource::Nofile);
        if now.current != now.maximum {
            let raised = rustix::process::Rlimit { current: now.maximum, maximum: now.maximum };
            // Refused (a hardened sandbox): keep the soft limit.
            let _ = setrlimit(Resource::Nofile, raised);
        }
        Some(getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX))
    })
}

/// The default `--max-connections`: this process's share per listener of
/// its open-file limit ([`nofile_limit`]); 512 when the limit is unknown.
pub fn default_max_connections() -> usize {
    nofile_limit().map_or(512, share)
}

/// One listener's share of `limit` descriptors.
pub fn share(limit: u64) -> usize {
    let per = limit.saturating_sub(RESERVE) / LISTENERS;
    usize::try_from(per).unwrap_or(usize::MAX).clamp(MIN_DEFAULT, MAX_DEFAULT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_follows_the_limit() {
        assert_eq!(share(1024), 256);
        assert_eq!(share(20_000), 6581);
        assert_eq!(share(65_536), 21_760);
        assert_eq!(share(u64::MAX), MAX_DEFAULT);
        assert_eq!(share(100), MIN_DEFAULT);
        let limit = nofile_limit().expect("readable on Linux");
        assert_eq!(default_max_connections(), share(limit));
        // Raised to the hard limit (or left where it was when refused).
        let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum.unwrap_or(u64::MAX);
        assert!(limit <= hard);
    }
}
