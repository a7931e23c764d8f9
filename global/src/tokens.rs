//! Zone tokens: the global signs a token bound to one zone name; the zone
//! presents it on every KDS call.
//!
//! Format: `mzt1.<base64url(JSON claims)>.<base64url(HMAC-SHA256)>` with claims
//! `{"zone", "iat", "exp", "jti"}`. The signing key is a GlobalSecret
//! (`zone-token-signing-key`) in the store, created on first use, so every
//! global replica on one database verifies what any replica issued.
//! Revocation: the GlobalSecret `zone-token-revocations` holds token ids
//! (`jti`), separated by commas or newlines.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use meridian_core::{Manager, ManagerError};
use meridian_store::{StoreError, WriteResource};
use meridian_sync_proto::{Resource, ResourceType, Spec, pb};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::OnceCell;

pub const SIGNING_KEY_NAME: &str = "zone-token-signing-key";
pub const REVOCATIONS_NAME: &str = "zone-token-revocations";
const PREFIX: &str = "mzt1";

/// What a zone token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub zone: String,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Expires at, unix seconds.
    pub exp: i64,
    /// Token id, for revocation.
    pub jti: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error(
        "no zone token presented (send 'authorization: Bearer <token>'; generate one with 'meridianctl generate zone-token --zone NAME')"
    )]
    Missing,
    #[error("zone token is malformed")]
    Malformed,
    #[error("zone token signature is not valid (forged, or signed by another global)")]
    BadSignature,
    #[error("zone token expired at {0}")]
    Expired(i64),
    #[error("zone token was revoked")]
    Revoked,
    #[error("zone token is for zone {token_zone:?}, but the caller says it is {claimed:?}")]
    WrongZone { token_zone: String, claimed: String },
    #[error("cannot check the token: {0}")]
    Store(String),
}

/// Issues and verifies zone tokens.
#[derive(Clone)]
pub struct ZoneTokens {
    manager: Manager,
    key: std::sync::Arc<OnceCell<Vec<u8>>>,
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl ZoneTokens {
    pub fn new(manager: Manager) -> ZoneTokens {
        ZoneTokens { manager, key: std::sync::Arc::new(OnceCell::new()) }
    }

    /// The signing key, created in the store the first time any replica needs it.
    async fn key(&self) -> Result<&[u8], ManagerError> {
        self.key
            .get_or_try_init(|| async {
                if let Some(k) = self.read_key().await? {
                    return Ok(k);
                }
                let key = meridian_rest::auth::random_token().into_bytes();
                let spec = Spec::GlobalSecret(pb::system::Secret {
                    data: Some(pbjson_types::BytesValue { value: key.clone().into() }),
                });
                let r = Resource::new("", SIGNING_KEY_NAME, spec);
                match self.manager.store().create(Manager::encode(&r)).await {
                    Ok(_) => Ok(key),
                    // Another replica won the race: use its key.
                    Err(StoreError::AlreadyExists(_)) => {
                        self.read_key().await?.ok_or_else(|| ManagerError::Forbidden("signing key vanished".into()))
                    }
                    Err(e) => Err(ManagerError::Store(e)),
                }
            })
            .await
            .map(Vec::as_slice)
    }

    async fn read_key(&self) -> Result<Option<Vec<u8>>, ManagerError> {
        Ok(self.manager.get(ResourceType::GlobalSecret, "", SIGNING_KEY_NAME).await?.and_then(|e| {
            match e.resource.spec {
                Spec::GlobalSecret(s) => s.data.map(|d| d.value.to_vec()),
                _ => None,
            }
        }))
    }

    /// A token for `zone`, valid for `valid_for`.
    pub async fn issue(&self, zone: &str, valid_for: Duration) -> Result<(String, Claims), ManagerError> {
        let iat = now_secs();
        let claims = Claims {
            zone: zone.to_string(),
            iat,
            exp: iat.saturating_add(i64::try_from(valid_for.as_secs()).unwrap_or(i64::MAX)),
            jti: meridian_rest::auth::random_token()[..22].to_string(),
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let signed = format!("{PREFIX}.{payload}");
        let sig = URL_SAFE_NO_PAD.encode(sign(self.key().await?, signed.as_bytes()));
        Ok((format!("{signed}.{sig}"), claims))
    }

    /// Checks a token presented by a caller claiming to be zone `claimed`.
    pub async fn verify(&self, token: Option<&str>, claimed: &str) -> Result<Claims, TokenError> {
        let token = token.map(str::trim).filter(|t| !t.is_empty()).ok_or(TokenError::Missing)?;
        let mut parts = token.split('.');
        let (Some(prefix), Some(payload), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        if prefix != PREFIX {
            return Err(TokenError::Malformed);
        }
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| TokenError::Malformed)?;
        let key = self.key().await.map_err(|e| TokenError::Store(e.to_string()))?;
        let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(|_| TokenError::Malformed)?;
        mac.update(format!("{prefix}.{payload}").as_bytes());
        mac.verify_slice(&sig).map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if claims.exp <= now_secs() {
            return Err(TokenError::Expired(claims.exp));
        }
        if claims.zone != claimed {
            return Err(TokenError::WrongZone { token_zone: claims.zone, claimed: claimed.to_string() });
        }
        if self.revoked(&claims.jti).await.map_err(|e| TokenError::Store(e.to_string()))? {
            return Err(TokenError::Revoked);
        }
        Ok(claims)
    }

    async fn revoked(&self, jti: &str) -> Result<bool, ManagerError> {
        let Some(e) = self.manager.get(ResourceType::GlobalSecret, "", REVOCATIONS_NAME).await? else {
            return Ok(false);
        };
        let Spec::GlobalSecret(s) = e.resource.spec else { return Ok(false) };
        let data = s.data.map(|d| d.value.to_vec()).unwrap_or_default();
        Ok(String::from_utf8_lossy(&data).split([',', '\n', ' ']).any(|t| t.trim() == jti))
    }
}

fn sign(key: &[u8], msg: &[u8]) -> Vec<u8> {
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(msg);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(), // HMAC takes keys of any length; unreachable
    }
}

/// Stores a revocation list (used by tests and `meridianctl`-less setups).
pub fn revocations_resource(jtis: &[&str]) -> WriteResource {
    let spec = Spec::GlobalSecret(pb::system::Secret {
        data: Some(pbjson_types::BytesValue { value: jtis.join(",").into_bytes().into() }),
    });
    Manager::encode(&Resource::new("", REVOCATIONS_NAME, spec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_core::Role;
    use meridian_store::Store;

    #[tokio::test]
    async fn issue_verify_and_refuse() {
        // (no tempfile dev-dependency in this crate: a unique directory, removed at the end)
        let dir =
            std::env::temp_dir().join(format!("meridian-tokens-{}-{:08x}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let store = Store::connect(&format!("sqlite:{}", dir.join("t.db").display())).await.expect("store");
        let tokens = ZoneTokens::new(Manager::new(store.clone(), Role::Global));
        let (t, claims) = tokens.issue("zone-1", Duration::from_secs(3600)).await.expect("issue");
        assert_eq!(tokens.verify(Some(&t), "zone-1").await, Ok(claims.clone()));
        assert_eq!(tokens.verify(None, "zone-1").await, Err(TokenError::Missing));
        assert!(matches!(tokens.verify(Some(&t), "zone-2").await, Err(TokenError::WrongZone { .. })));
        let forged = format!("{}x", &t[..t.len() - 1]);
        assert!(matches!(
            tokens.verify(Some(&forged), "zone-1").await,
            Err(TokenError::BadSignature | TokenError::Malformed)
        ));
        assert_eq!(tokens.verify(Some("garbage"), "zone-1").await, Err(TokenError::Malformed));
        let (expired, _) = tokens.issue("zone-1", Duration::from_secs(0)).await.expect("issue");
        assert!(matches!(tokens.verify(Some(&expired), "zone-1").await, Err(TokenError::Expired(_))));
        store.upsert(revocations_resource(&[&claims.jti])).await.expect("revoke");
        assert_eq!(tokens.verify(Some(&t), "zone-1").await, Err(TokenError::Revoked));
        // a second issuer on the same store (another replica) shares the key
        let other = ZoneTokens::new(Manager::new(store, Role::Global));
        let (t2, _) = tokens.issue("zone-3", Duration::from_secs(60)).await.expect("issue");
        assert!(other.verify(Some(&t2), "zone-3").await.is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
