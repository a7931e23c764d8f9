//! The signing-key ring of one token kind, kept in the store as GlobalSecrets
//! so that every replica of the issuer on one database signs and verifies
//! alike:
//!
//! - `<kind>-token-signing-key-<n>`: the private key (PKCS#8 PEM), read only
//!   by the issuer; never synced.
//! - `<kind>-token-signing-public-key-<n>`: its public key (SPKI PEM), what
//!   verifiers read (Dataplane ones reach zones over KDS).
//!
//! Both halves are written in one store transaction. The newest serial
//! signs; every serial still stored verifies (the incumbent's rotation
//! rule). Removing a key makes the tokens it signed fail with
//! [`TokenError::UnknownKey`].

use meridian_core::{Manager, ManagerError};
use meridian_store::{StoreError, WriteOp};
use meridian_sync_proto::{Resource, ResourceType, Spec, pb};

use crate::{TokenError, TokenKind, jwt};

/// The key ring of one [`TokenKind`] in the store of `manager`.
#[derive(Clone)]
pub struct SigningKeys {
    manager: Manager,
    kind: TokenKind,
}

fn store_err(e: impl std::fmt::Display) -> TokenError {
    TokenError::Store(e.to_string())
}

/// The data of a GlobalSecret entry.
fn secret_data(e: &meridian_core::Entry) -> Option<Vec<u8>> {
    match &e.resource.spec {
        Spec::GlobalSecret(s) => s.data.as_ref().map(|d| d.value.to_vec()),
        _ => None,
    }
}

fn global_secret(name: String, data: &[u8]) -> Resource {
    Resource::new(
        "",
        &name,
        Spec::GlobalSecret(pb::system::Secret { data: Some(pbjson_types::BytesValue { value: data.to_vec().into() }) }),
    )
}

impl SigningKeys {
    /// The ring of `kind` in `manager`'s store (nothing is read or written yet).
    pub fn new(manager: Manager, kind: TokenKind) -> SigningKeys {
        SigningKeys { manager, kind }
    }

    /// Which tokens these keys sign.
    pub fn kind(&self) -> TokenKind {
        self.kind
    }

    fn private_name(&self, serial: u64) -> String {
        format!("{}{serial}", self.kind.private_key_prefix())
    }

    fn public_name(&self, serial: u64) -> String {
        format!("{}{serial}", self.kind.public_key_prefix())
    }

    /// Serials of the private keys held here, ascending (empty on a
    /// verifier, which holds public keys only).
    pub async fn serials(&self) -> Result<Vec<u64>, TokenError> {
        self.serials_with(self.kind.private_key_prefix()).await
    }

    /// Serials of the public keys held here, ascending.
    pub async fn public_serials(&self) -> Result<Vec<u64>, TokenError> {
        self.serials_with(self.kind.public_key_prefix()).await
    }

    async fn serials_with(&self, prefix: &str) -> Result<Vec<u64>, TokenError> {
        let (items, _) = self
            .manager
            .list(ResourceType::GlobalSecret, None, Default::default(), 0, None)
            .await
            .map_err(store_err)?;
        let mut serials: Vec<u64> = items
            .iter()
            .filter_map(|e| e.resource.meta.name.strip_prefix(prefix).and_then(|s| s.parse::<u64>().ok()))
            .collect();
        serials.sort_unstable();
        Ok(serials)
    }

    /// The public key (SPKI PEM) of `serial`, `None` when not held.
    pub async fn public_key(&self, serial: u64) -> Result<Option<Vec<u8>>, TokenError> {
        let e = self.manager.get(ResourceType::GlobalSecret, "", &self.public_name(serial)).await.map_err(store_err)?;
        Ok(e.as_ref().and_then(secret_data))
    }

    /// The newest private key and its serial, creating serial 1 when there
    /// is none (the first issuance, or [`SigningKeys::ensure`] at start).
    pub async fn signing_key(&self) -> Result<(u64, Vec<u8>), TokenError> {
        loop {
            if let Some(&serial) = self.serials().await?.last() {
                let e = self
                    .manager
                    .get(ResourceType::GlobalSecret, "", &self.private_name(serial))
                    .await
                    .map_err(store_err)?;
                if let Some(data) = e.as_ref().and_then(secret_data) {
                    return Ok((serial, data));
                }
                continue; // removed meanwhile: look again
            }
            // None yet: create serial 1 (a replica racing us makes the same).
            self.create(1).await?;
        }
    }

    /// Makes sure a signing key exists (creates serial 1 otherwise); returns
    /// the newest serial. Called at start, so that the public key is in
    /// place (and synced to zones) before the first token is issued.
    pub async fn ensure(&self) -> Result<u64, TokenError> {
        Ok(self.signing_key().await?.0)
    }

    /// Creates key `serial` (both halves, one transaction). Another replica
    /// creating the same serial first is not an error.
    async fn create(&self, serial: u64) -> Result<(), TokenError> {
        let (private, public) = jwt::generate_key_pair()?;
        let ops = vec![
            WriteOp::Create(Manager::encode(&global_secret(self.private_name(serial), private.as_bytes()))),
            WriteOp::Create(Manager::encode(&global_secret(self.public_name(serial), public.as_bytes()))),
        ];
        match self.manager.store().apply_batch(ops).await {
            Ok(_) | Err(StoreError::AlreadyExists(_)) => Ok(()),
            Err(e) => Err(store_err(e)),
        }
    }

    /// Adds a key with the next serial, which signs from now on; older keys
    /// keep verifying until removed. Returns the new serial.
    pub async fn rotate(&self) -> Result<u64, TokenError> {
        let next = self.serials().await?.last().map_or(1, |s| s + 1);
        self.create(next).await?;
        tracing::info!(kind = %self.kind, serial = next, "signing key rotated");
        Ok(next)
    }

    /// Removes key `serial` (both halves): tokens it signed stop working.
    ///
    /// Errors: [`KeyError::NotFound`]; [`KeyError::Signing`] for the newest
    /// key, which signs new tokens (rotate first).
    pub async fn remove(&self, serial: u64) -> Result<(), KeyError> {
        let serials = self.serials().await.map_err(|e| KeyError::Store(e.to_string()))?;
        if !serials.contains(&serial) {
            return Err(KeyError::NotFound { kind: self.kind, serial, held: serials });
        }
        if serials.last() == Some(&serial) {
            return Err(KeyError::Signing { kind: self.kind, serial });
        }
        let ops = [self.private_name(serial), self.public_name(serial)]
            .into_iter()
            .map(|name| WriteOp::Delete {
                key: Manager::key(ResourceType::GlobalSecret, "", &name),
                expected_revision: None,
            })
            .collect();
        match self.manager.store().apply_batch(ops).await {
            Ok(_) => {
                tracing::info!(kind = %self.kind, serial, "signing key removed");
                Ok(())
            }
            Err(e) => Err(KeyError::Store(ManagerError::Store(e).to_string())),
        }
    }
}

/// Why a key cannot be removed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("there is no {kind} token signing key {serial} (held: {held:?})")]
    NotFound { kind: TokenKind, serial: u64, held: Vec<u64> },
    #[error(
        "{kind} token signing key {serial} is the newest and signs new tokens: rotate first (meridianctl rotate signing-key --type {}), then remove it",
        .kind.type_claim()
    )]
    Signing { kind: TokenKind, serial: u64 },
    #[error("store: {0}")]
    Store(String),
}
