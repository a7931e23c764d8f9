//! The config file: named contexts (API URL + token) and the current one.
//!
//! ```yaml
//! currentContext: prod
//! contexts:
//! - name: prod
//!   apiUrl: https://global.example.com:5681
//!   token: ...
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{cli::ConnArgs, error::CtlError};

/// Where meridianctl connects when nothing else says.
pub const DEFAULT_API_URL: &str = "http://127.0.0.1:5681";

/// The file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigFile {
    /// Name of the context used when no --api-url is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: Vec<Context>,
}

/// One control plane to talk to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Context {
    pub name: String,
    pub api_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// PEM file of a CA trusted for this context's https:// URL
    /// (`--ca-cert` when the context was added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
}

/// Where to connect, resolved from flags, the config file and defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub api_url: String,
    pub token: Option<String>,
    /// The CA to trust: `--ca-cert`, else the context's.
    pub ca_cert: Option<PathBuf>,
}

/// `--config`, else `$HOME/.meridian/meridianctl.yaml`.
pub fn path(conn: &ConnArgs) -> Result<PathBuf, CtlError> {
    if let Some(p) = &conn.config {
        return Ok(p.clone());
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".meridian").join("meridianctl.yaml"))
        .ok_or_else(|| CtlError::input("HOME is not set: pass --config or set MERIDIAN_CONFIG"))
}

impl ConfigFile {
    /// Reads the file; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<ConfigFile, CtlError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ConfigFile::default()),
            Err(e) => {
                return Err(CtlError::input(format!("cannot read config {}: {e}", path.display())));
            }
        };
        if text.trim().is_empty() {
            return Ok(ConfigFile::default());
        }
        serde_saphyr::from_str(&text)
            .map_err(|e| CtlError::input(format!("invalid config file {}: {e}", path.display())))
    }

    /// Writes the file (mode 0600: it holds tokens), creating its directory.
    pub fn save(&self, path: &Path) -> Result<(), CtlError> {
        let fail = |e: std::io::Error| CtlError::input(format!("cannot write config {}: {e}", path.display()));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let text = self.to_yaml()?;
        let tmp = path.with_extension("yaml.tmp");
        std::fs::write(&tmp, text).map_err(fail)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
        }
        std::fs::rename(&tmp, path).map_err(fail)
    }

    pub fn to_yaml(&self) -> Result<String, CtlError> {
        serde_saphyr::to_string(self).map_err(|e| CtlError::input(format!("cannot render config: {e}")))
    }

    pub fn context(&self, name: &str) -> Option<&Context> {
        self.contexts.iter().find(|c| c.name == name)
    }

    pub fn current(&self) -> Option<&Context> {
        self.current_context.as_deref().and_then(|n| self.context(n))
    }

    /// Adds a context and makes it current.
    pub fn add(&mut self, ctx: Context, overwrite: bool) -> Result<(), CtlError> {
        match self.contexts.iter_mut().find(|c| c.name == ctx.name) {
            Some(_) if !overwrite => {
                return Err(CtlError::input(format!(
                    "context {:?} already exists; use --overwrite to replace it",
                    ctx.name
                )));
            }
            Some(existing) => *existing = ctx.clone(),
            None => self.contexts.push(ctx.clone()),
        }
        self.current_context = Some(ctx.name);
        Ok(())
    }

    pub fn use_context(&mut self, name: &str) -> Result<(), CtlError> {
        if self.context(name).is_none() {
            let known: Vec<&str> = self.contexts.iter().map(|c| c.name.as_str()).collect();
            return Err(CtlError::input(format!(
                "no context {name:?}; known: {}",
                if known.is_empty() {
                    "none (add one with `meridianctl config add-context`)".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        self.current_context = Some(name.to_string());
        Ok(())
    }

    /// A copy with tokens replaced by `REDACTED`.
    pub fn redacted(&self) -> ConfigFile {
        let mut out = self.clone();
        for c in &mut out.contexts {
            if c.token.is_some() {
                c.token = Some("REDACTED".into());
            }
        }
        out
    }
}

/// Flags (and their environment variables) first, then the current context,
/// then the default URL. Without `$HOME` and without `--config` (a
/// container, a system service) there is no config file: flags, their
/// environment variables and the default URL decide.
pub fn resolve(conn: &ConnArgs) -> Result<Target, CtlError> {
    let file = match path(conn) {
        Ok(p) => ConfigFile::load(&p)?,
        Err(_) => ConfigFile::default(),
    };
    Ok(resolve_with(conn, &file))
}

fn resolve_with(conn: &ConnArgs, file: &ConfigFile) -> Target {
    let current = file.current();
    let api_url = conn
        .api_url
        .clone()
        .filter(|u| !u.trim().is_empty())
        .or_else(|| current.map(|c| c.api_url.clone()))
        .unwrap_or_else(|| DEFAULT_API_URL.to_string());
    // A context's token and CA belong to its URL only.
    let own = current.filter(|c| conn.api_url.is_none() || conn.api_url.as_deref() == Some(c.api_url.as_str()));
    let token = conn.token.clone().filter(|t| !t.trim().is_empty()).or_else(|| own.and_then(|c| c.token.clone()));
    let ca_cert = conn.ca_cert.clone().or_else(|| own.and_then(|c| c.ca_cert.clone()));
    Target { api_url, token, ca_cert }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(api_url: Option<&str>, token: Option<&str>) -> ConnArgs {
        ConnArgs {
            api_url: api_url.map(Into::into),
            token: token.map(Into::into),
            config: None,
            ca_cert: None,
            timeout: 30,
        }
    }

    #[test]
    fn precedence() {
        let mut file = ConfigFile::default();
        assert_eq!(resolve_with(&conn(None, None), &file).api_url, DEFAULT_API_URL);
        file.add(
            Context {
                name: "a".into(),
                api_url: "http://a:1".into(),
                token: Some("ta".into()),
                ca_cert: Some("/ca.pem".into()),
            },
            false,
        )
        .expect("add");
        let t = resolve_with(&conn(None, None), &file);
        assert_eq!(
            t,
            Target { api_url: "http://a:1".into(), token: Some("ta".into()), ca_cert: Some("/ca.pem".into()) }
        );
        let t = resolve_with(&conn(Some("http://b:2"), None), &file);
        assert_eq!(
            t,
            Target { api_url: "http://b:2".into(), token: None, ca_cert: None },
            "another URL: not the context's CA"
        );
        let t = resolve_with(&conn(None, Some("tb")), &file);
        assert_eq!(t.token.as_deref(), Some("tb"));
    }

    #[test]
    fn contexts_round_trip_and_rules() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("sub").join("c.yaml");
        let mut file = ConfigFile::load(&p).expect("missing is empty");
        file.add(Context { name: "a".into(), api_url: "http://a:1".into(), token: None, ca_cert: None }, false)
            .expect("add");
        assert!(
            file.add(Context { name: "a".into(), api_url: "http://x".into(), token: None, ca_cert: None }, false)
                .is_err()
        );
        file.add(
            Context { name: "b".into(), api_url: "http://b:1".into(), token: Some("s".into()), ca_cert: None },
            false,
        )
        .expect("add");
        assert!(file.use_context("nope").is_err());
        file.use_context("a").expect("use");
        file.save(&p).expect("save");
        assert_eq!(ConfigFile::load(&p).expect("load"), file);
        assert!(!file.redacted().to_yaml().expect("yaml").contains(": s\n"));
    }
}
