//! Who may write: the admin token, required for writes and Secrets from any
//! address but loopback (loopback can be made to need it too).

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use base64::Engine;
use http::HeaderMap;
use rand::RngCore;

/// The admin credential and the loopback policy.
#[derive(Clone)]
pub struct Auth {
    admin_token: String,
    /// Requests from 127.0.0.0/8 and ::1 count as authorised without a token.
    trust_loopback: bool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("trust_loopback", &self.trust_loopback).finish_non_exhaustive()
    }
}

impl Auth {
    pub fn new(admin_token: String, trust_loopback: bool) -> Auth {
        Auth { admin_token, trust_loopback }
    }

    /// Reads `<data_dir>/admin-token`, creating it (mode 0600) with a fresh
    /// random token on first start.
    pub fn load_or_create_token(data_dir: &Path) -> std::io::Result<(String, PathBuf)> {
        let path = data_dir.join("admin-token");
        match std::fs::read_to_string(&path) {
            Ok(t) if !t.trim().is_empty() => return Ok((t.trim().to_string(), path)),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(data_dir)?;
        let token = random_token();
        let tmp = data_dir.join(".admin-token.tmp");
        std::fs::write(&tmp, format!("{token}\n"))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        }
        std::fs::rename(&tmp, &path)?;
        Ok((token, path))
    }

    /// Whether the caller holds admin rights.
    pub fn is_admin(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> bool {
        if self.trust_loopback && peer.is_some_and(|ip| ip.is_loopback()) {
            return true;
        }
        bearer(headers).is_some_and(|t| constant_time_eq(t.as_bytes(), self.admin_token.as_bytes()))
    }

    /// Whether a token was presented at all (to tell "missing" from "wrong").
    pub fn presented(headers: &HeaderMap) -> bool {
        bearer(headers).is_some()
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let t = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))?;
    Some(t.trim())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 32 random bytes, URL-safe base64.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_rules() {
        let auth = Auth::new("s3cret".into(), true);
        let mut h = HeaderMap::new();
        let remote: IpAddr = [10, 1, 2, 3].into();
        let local: IpAddr = [127, 0, 0, 1].into();
        assert!(!auth.is_admin(&h, Some(remote)));
        assert!(auth.is_admin(&h, Some(local)));
        h.insert(http::header::AUTHORIZATION, "Bearer nope".parse().expect("header"));
        assert!(!auth.is_admin(&h, Some(remote)));
        h.insert(http::header::AUTHORIZATION, "Bearer s3cret".parse().expect("header"));
        assert!(auth.is_admin(&h, Some(remote)));
        let strict = Auth::new("s3cret".into(), false);
        assert!(!strict.is_admin(&HeaderMap::new(), Some(local)));
    }

    #[test]
    fn token_file_is_created_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, path) = Auth::load_or_create_token(dir.path()).expect("create");
        let (b, _) = Auth::load_or_create_token(dir.path()).expect("reload");
        assert_eq!(a, b);
        assert!(path.exists());
        assert!(a.len() >= 40);
    }
}
