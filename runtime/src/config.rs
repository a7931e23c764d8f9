//! The running configuration as `GET /config` shows it: every flag of the
//! `run` command as resolved from the command line, the environment and the
//! defaults, plus the values derived from them (data directory, store URL),
//! with secrets redacted.
//!
//! Redacted: the admin token, and the password of a store URL (userinfo and
//! a `password=` query parameter). Paths to key and token files are shown;
//! their contents never are.

use std::path::Path;

use serde::{Serialize, Serializer};
use serde_json::{Value, json};

/// What a redacted secret shows in place of its value.
pub const REDACTED: &str = "<redacted>";

/// `Some(secret)` → `"<redacted>"`, `None` → null: shows whether it is set.
pub fn redact_secret<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str(REDACTED),
        None => s.serialize_none(),
    }
}

/// An optional store URL with its password redacted ([`redact_url`]).
pub fn redact_store<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(url) => s.serialize_str(&redact_url(url)),
        None => s.serialize_none(),
    }
}

/// `postgres://user:secret@host/db?password=x&sslmode=require` →
/// `postgres://user:<redacted>@host/db?password=<redacted>&sslmode=require`.
/// URLs without a password (`sqlite:PATH`) come back unchanged.
pub fn redact_url(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let mut out = match head.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let authority = match authority.rsplit_once('@') {
                Some((userinfo, host)) => match userinfo.split_once(':') {
                    Some((user, _password)) => format!("{user}:{REDACTED}@{host}"),
                    None => format!("{userinfo}@{host}"),
                },
                None => authority.to_string(),
            };
            format!("{scheme}://{authority}{path}")
        }
        None => head.to_string(),
    };
    if let Some(q) = query {
        let pairs: Vec<String> = q
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}={REDACTED}"),
                _ => pair.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

/// The `GET /config` document: `{"mode", "dataDir", "storeUrl", "flags"}`.
/// `flags` is the serialised `run` arguments (flag names in camelCase; the
/// argument structs redact their own secrets); `storeUrl` is the store
/// actually opened, redacted.
pub fn document(mode: &str, flags: &impl Serialize, data_dir: &Path, store_url: &str) -> Value {
    json!({
        "mode": mode,
        "dataDir": data_dir.display().to_string(),
        "storeUrl": redact_url(store_url),
        "flags": serde_json::to_value(flags).unwrap_or_else(|e| json!({ "error": e.to_string() })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_lose_their_passwords_only() {
        for (url, want) in [
            ("sqlite:/var/lib/m/global.db", "sqlite:/var/lib/m/global.db"),
            ("postgres://meridian:s3cr3t@db:5432/meridian", "postgres://meridian:<redacted>@db:5432/meridian"),
            ("postgres://me:p%40ss@db/m?sslmode=require", "postgres://me:<redacted>@db/m?sslmode=require"),
            ("postgres://me@db/m?password=x&sslmode=disable", "postgres://me@db/m?password=<redacted>&sslmode=disable"),
            ("postgresql://db/m", "postgresql://db/m"),
        ] {
            assert_eq!(redact_url(url), want, "{url}");
            assert!(!redact_url(url).contains("s3cr3t"));
        }
    }

    #[test]
    fn secrets_show_only_whether_they_are_set() {
        #[derive(Serialize)]
        struct F {
            #[serde(serialize_with = "redact_secret")]
            token: Option<String>,
            #[serde(serialize_with = "redact_secret")]
            unset: Option<String>,
            #[serde(serialize_with = "redact_store")]
            store: Option<String>,
        }
        let f = F { token: Some("abc".into()), unset: None, store: Some("postgres://u:pw@h/d".into()) };
        let doc = document("global", &f, Path::new("/d"), "postgres://u:pw@h/d");
        assert_eq!(
            doc,
            json!({"mode": "global", "dataDir": "/d", "storeUrl": "postgres://u:<redacted>@h/d",
                   "flags": {"token": REDACTED, "unset": null, "store": "postgres://u:<redacted>@h/d"}})
        );
    }
}
