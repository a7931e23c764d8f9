//! Issuing and verifying tokens against the store: the key rings
//! ([`SigningKeys`]) and the revocation lists.

use std::{collections::BTreeMap, time::Duration};

use meridian_core::Manager;
use meridian_sync_proto::{ResourceType, Spec};

use crate::{
    DataplaneBinding, DataplaneClaims, SigningKeys, TokenError, TokenKind, ZONE_REVOCATIONS, ZoneClaims, check_binding,
    dataplane_revocations, jwt,
};

/// What `POST /tokens/dataplane` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataplaneRequest {
    /// The Dataplane's name; empty: any name carrying `tags`.
    pub name: String,
    /// The Dataplane's mesh (must exist).
    pub mesh: String,
    /// Tag → allowed values.
    pub tags: BTreeMap<String, Vec<String>>,
    /// How long the token is valid from now (`exp` = `iat` + this).
    pub valid_for: Duration,
}

/// Issues and verifies zone and Dataplane tokens with the keys and
/// revocation lists in one store. Cheap to clone.
#[derive(Clone)]
pub struct Tokens {
    manager: Manager,
}

fn store_err(e: impl std::fmt::Display) -> TokenError {
    TokenError::Store(e.to_string())
}

/// A random token id (16 bytes, URL-safe base64).
fn new_jti() -> String {
    use base64::Engine;
    let bytes: [u8; 16] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn exp_after(iat: i64, valid_for: Duration) -> i64 {
    iat.saturating_add(i64::try_from(valid_for.as_secs()).unwrap_or(i64::MAX))
}

impl Tokens {
    /// Tokens whose keys and revocation lists live in `manager`'s store.
    pub fn new(manager: Manager) -> Tokens {
        Tokens { manager }
    }

    /// The Manager the keys and lists are read from.
    pub fn manager(&self) -> &Manager {
        &self.manager
    }

    /// The key ring of `kind`.
    pub fn keys(&self, kind: TokenKind) -> SigningKeys {
        SigningKeys::new(self.manager.clone(), kind)
    }

    /// A zone token for `zone`, valid for `valid_for`, signed by the newest
    /// zone key (created on first use).
    pub async fn issue_zone(&self, zone: &str, valid_for: Duration) -> Result<(String, ZoneClaims), TokenError> {
        let iat = jwt::now_secs();
        let claims = ZoneClaims {
            zone: zone.to_string(),
            scope: vec!["cp".to_string()],
            token_type: TokenKind::Zone.type_claim().to_string(),
            jti: new_jti(),
            iat,
            nbf: iat - jwt::NOT_BEFORE_SLACK_SECS,
            exp: exp_after(iat, valid_for),
        };
        let (serial, key) = self.keys(TokenKind::Zone).signing_key().await?;
        Ok((jwt::sign(&claims, serial, &key)?, claims))
    }

    /// A Dataplane token as `req` asks, signed by the newest Dataplane key.
    pub async fn issue_dataplane(&self, req: &DataplaneRequest) -> Result<(String, DataplaneClaims), TokenError> {
        let iat = jwt::now_secs();
        let claims = DataplaneClaims {
            name: req.name.clone(),
            mesh: req.mesh.clone(),
            tags: req.tags.clone(),
            token_type: TokenKind::Dataplane.type_claim().to_string(),
            jti: new_jti(),
            iat,
            nbf: iat - jwt::NOT_BEFORE_SLACK_SECS,
            exp: exp_after(iat, req.valid_for),
        };
        let (serial, key) = self.keys(TokenKind::Dataplane).signing_key().await?;
        Ok((jwt::sign(&claims, serial, &key)?, claims))
    }

    /// Signature (by a key still held), type and validity window of `token`.
    async fn verify_signed<C: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        kind: TokenKind,
    ) -> Result<C, TokenError> {
        let serial = jwt::key_serial(token, kind)?;
        let public = self.keys(kind).public_key(serial).await?.ok_or(TokenError::UnknownKey { kind, serial })?;
        jwt::verify(token, kind, serial, &public, jwt::now_secs())
    }

    /// Checks a zone token presented by a caller claiming to be zone
    /// `claimed`: signature, type, expiry, zone, revocation
    /// ([`ZONE_REVOCATIONS`]).
    pub async fn verify_zone(&self, token: Option<&str>, claimed: &str) -> Result<ZoneClaims, TokenError> {
        let token = token.ok_or(TokenError::Missing(TokenKind::Zone))?;
        let claims: ZoneClaims = self.verify_signed(token, TokenKind::Zone).await?;
        if claims.zone != claimed {
            return Err(TokenError::WrongZone { token_zone: claims.zone, claimed: claimed.to_string() });
        }
        if self.revoked(ZONE_REVOCATIONS, &claims.jti).await? {
            return Err(TokenError::Revoked(TokenKind::Zone));
        }
        Ok(claims)
    }

    /// Checks a Dataplane token on its own: signature, type, validity
    /// window, revocation (`dataplane-token-revocations-<mesh>`). What it
    /// binds is checked by [`check_binding`] (or [`Tokens::authorize_dataplane`]).
    pub async fn verify_dataplane(&self, token: &str) -> Result<DataplaneClaims, TokenError> {
        let claims: DataplaneClaims = self.verify_signed(token, TokenKind::Dataplane).await?;
        if self.revoked(&dataplane_revocations(&claims.mesh), &claims.jti).await? {
            return Err(TokenError::Revoked(TokenKind::Dataplane));
        }
        Ok(claims)
    }

    /// The check both the zone's API and its xDS server make: `token` is a
    /// valid Dataplane token ([`Tokens::verify_dataplane`]) for Dataplane
    /// `name` in `mesh`, whose spec is `dp` (as sent, for a registration;
    /// as stored, for an xDS stream; `None` when not registered: only name
    /// and mesh are checked).
    pub async fn authorize_dataplane(
        &self,
        token: Option<&str>,
        mesh: &str,
        name: &str,
        dp: Option<&meridian_sync_proto::pb::mesh::Dataplane>,
    ) -> Result<DataplaneClaims, TokenError> {
        let token = token.ok_or(TokenError::Missing(TokenKind::Dataplane))?;
        let claims = self.verify_dataplane(token).await?;
        check_binding(&claims, &DataplaneBinding::new(mesh, name, dp))?;
        Ok(claims)
    }

    /// Whether `jti` is listed in the GlobalSecret `list`.
    async fn revoked(&self, list: &str, jti: &str) -> Result<bool, TokenError> {
        let Some(e) = self.manager.get(ResourceType::GlobalSecret, "", list).await.map_err(store_err)? else {
            return Ok(false);
        };
        let Spec::GlobalSecret(s) = e.resource.spec else { return Ok(false) };
        let data = s.data.map(|d| d.value.to_vec()).unwrap_or_default();
        Ok(String::from_utf8_lossy(&data).split([',', '\n', ' ', '\r', '\t']).any(|t| t.trim() == jti))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_core::Role;
    use meridian_store::Store;
    use meridian_sync_proto::{Resource, pb};

    async fn tokens() -> (Tokens, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::connect(&format!("sqlite:{}", dir.path().join("t.db").display())).await.expect("store");
        (Tokens::new(Manager::new(store, Role::Global)), dir)
    }

    async fn put_secret(t: &Tokens, name: &str, data: &str) {
        let r = Resource::new(
            "",
            name,
            Spec::GlobalSecret(pb::system::Secret {
                data: Some(pbjson_types::BytesValue { value: data.as_bytes().to_vec().into() }),
            }),
        );
        t.manager.store().upsert(Manager::encode(&r)).await.expect("write");
    }

    fn dp_req(name: &str) -> DataplaneRequest {
        DataplaneRequest {
            name: name.into(),
            mesh: "default".into(),
            tags: BTreeMap::new(),
            valid_for: Duration::from_secs(3600),
        }
    }

    #[tokio::test]
    async fn zone_tokens_issue_verify_and_refuse() {
        let (t, _dir) = tokens().await;
        let (tok, claims) = t.issue_zone("zone-1", Duration::from_secs(3600)).await.expect("issue");
        assert_eq!(t.verify_zone(Some(&tok), "zone-1").await, Ok(claims.clone()));
        assert_eq!(t.verify_zone(None, "zone-1").await, Err(TokenError::Missing(TokenKind::Zone)));
        assert!(matches!(t.verify_zone(Some(&tok), "zone-2").await, Err(TokenError::WrongZone { .. })));
        let (expired, _) = t.issue_zone("zone-1", Duration::from_secs(0)).await.expect("issue");
        assert!(matches!(t.verify_zone(Some(&expired), "zone-1").await, Err(TokenError::Expired(TokenKind::Zone, _))));
        put_secret(&t, ZONE_REVOCATIONS, &format!("other, {}", claims.jti)).await;
        assert_eq!(t.verify_zone(Some(&tok), "zone-1").await, Err(TokenError::Revoked(TokenKind::Zone)));
        let e = t.verify_zone(Some("mzt1.eyJ9.c2ln"), "zone-1").await.expect_err("legacy");
        assert!(e.to_string().contains("meridianctl generate zone-token --zone NAME"), "{e}");
        // another issuer on the same store (a replica) verifies what this one issued
        let other = Tokens::new(t.manager.clone());
        let (t2, _) = t.issue_zone("zone-3", Duration::from_secs(60)).await.expect("issue");
        assert!(other.verify_zone(Some(&t2), "zone-3").await.is_ok());
    }

    #[tokio::test]
    async fn types_do_not_cross() {
        let (t, _dir) = tokens().await;
        let (zone_token, _) = t.issue_zone("zone-1", Duration::from_secs(60)).await.expect("issue");
        let (dp_token, _) = t.issue_dataplane(&dp_req("gw-1")).await.expect("issue");
        // keys differ per kind, so a zone token names a key the Dataplane ring may not hold;
        // sign a zone-typed token with the Dataplane key to test the Type claim alone
        let (serial, key) = t.keys(TokenKind::Dataplane).signing_key().await.expect("key");
        let zone_typed = jwt::sign(
            &serde_json::json!({"Zone": "zone-1", "Type": "zone", "jti": "x", "iat": 1, "exp": jwt::now_secs() + 60}),
            serial,
            &key,
        )
        .expect("sign");
        assert_eq!(
            t.verify_dataplane(&zone_typed).await,
            Err(TokenError::WrongType { expected: TokenKind::Dataplane, got: "zone".into() })
        );
        assert_eq!(
            t.verify_dataplane(&zone_token).await,
            Err(TokenError::WrongType { expected: TokenKind::Dataplane, got: "zone".into() })
        );
        assert_eq!(
            t.verify_zone(Some(&dp_token), "zone-1").await,
            Err(TokenError::WrongType { expected: TokenKind::Zone, got: "dataplane".into() })
        );
    }

    #[tokio::test]
    async fn rotation_new_key_signs_old_verifies_until_removed() {
        let (t, _dir) = tokens().await;
        let keys = t.keys(TokenKind::Dataplane);
        let (old, _) = t.issue_dataplane(&dp_req("gw-1")).await.expect("issue");
        assert_eq!(jwt::key_serial(&old, TokenKind::Dataplane), Ok(1));
        assert_eq!(keys.rotate().await, Ok(2));
        let (new, _) = t.issue_dataplane(&dp_req("gw-1")).await.expect("issue");
        assert_eq!(jwt::key_serial(&new, TokenKind::Dataplane), Ok(2), "the newest key signs");
        assert!(t.verify_dataplane(&old).await.is_ok(), "the old key still verifies");
        assert!(matches!(keys.remove(2).await, Err(crate::keys::KeyError::Signing { .. })));
        keys.remove(1).await.expect("remove");
        assert_eq!(
            t.verify_dataplane(&old).await,
            Err(TokenError::UnknownKey { kind: TokenKind::Dataplane, serial: 1 })
        );
        assert!(t.verify_dataplane(&new).await.is_ok());
        assert_eq!(keys.serials().await, Ok(vec![2]));
        assert_eq!(keys.public_serials().await, Ok(vec![2]));
        assert!(t.keys(TokenKind::Zone).serials().await.expect("serials").is_empty(), "rings are separate");
    }

    #[tokio::test]
    async fn dataplane_tokens_bind_and_revoke_per_mesh() {
        let (t, _dir) = tokens().await;
        let mut req = dp_req("");
        req.tags.insert("kuma.io/service".into(), vec!["edge".into()]);
        let (tok, claims) = t.issue_dataplane(&req).await.expect("issue");
        let gw = pb::mesh::Dataplane {
            networking: Some(pb::mesh::dataplane::Networking {
                gateway: Some(pb::mesh::dataplane::networking::Gateway {
                    tags: [("kuma.io/service".to_string(), "edge".to_string())].into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        assert!(t.authorize_dataplane(Some(&tok), "default", "any-name", Some(&gw)).await.is_ok());
        let e = t.authorize_dataplane(Some(&tok), "default", "any-name", None).await.expect_err("no tags");
        assert!(e.is_forbidden(), "{e}");
        put_secret(&t, &dataplane_revocations("other-mesh"), &claims.jti).await;
        assert!(t.verify_dataplane(&tok).await.is_ok(), "another mesh's list does not revoke");
        put_secret(&t, &dataplane_revocations("default"), &claims.jti).await;
        assert_eq!(t.verify_dataplane(&tok).await, Err(TokenError::Revoked(TokenKind::Dataplane)));
    }

    #[test]
    fn only_public_halves_and_lists_sync() {
        use meridian_sync_proto::kds::global_secret_syncs;
        assert!(global_secret_syncs(&format!("{}3", TokenKind::Dataplane.public_key_prefix())));
        assert!(global_secret_syncs(&dataplane_revocations("default")));
        assert!(!global_secret_syncs(&format!("{}3", TokenKind::Dataplane.private_key_prefix())));
        assert!(!global_secret_syncs(&format!("{}3", TokenKind::Zone.private_key_prefix())));
        assert!(!global_secret_syncs(&format!("{}3", TokenKind::Zone.public_key_prefix())));
        assert!(!global_secret_syncs(ZONE_REVOCATIONS));
    }
}
