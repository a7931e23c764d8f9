//! Dataplane tokens on the ADS stream.
//!
//! Envoy presents its token as the gRPC metadata `authorization` (the raw
//! token, as the incumbent's bootstrap sends it; `Bearer <token>` is
//! accepted too). When a stream learns its node id the token is checked
//! against that Dataplane ([`XdsAuth::check`]): a refused stream gets
//! `UNAUTHENTICATED` (no token, bad signature, unknown key, expired,
//! revoked, not a Dataplane token) or `PERMISSION_DENIED` (a token for
//! another Dataplane, mesh or tags) with the reason, and nothing else.
//! While the stream is open the check is made again every [`RECHECK`] and
//! whenever a GlobalSecret (keys, revocation lists) or a Dataplane changes
//! in the store ([`XdsAuth::until_refused`]), so revoking a token at the
//! global cuts the streams that use it.
//!
//! ```text
//!   store change feed ──(GlobalSecret | Dataplane changed)──▶ watch counter ──┐
//!   every RECHECK ─────────────────────────────────────────────────────────────┴▶ until_refused ─▶ Status ends the stream
//! ```

use std::time::Duration;

use futures::StreamExt;
use meridian_store::StoreError;
use meridian_sync_proto::{ResourceType, Spec};
use meridian_tokens::{DataplaneBinding, TokenError, Tokens, check_binding};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Status, metadata::MetadataMap};

use super::cache::ProxyId;

/// How often an open stream's token is checked again, besides on changes
/// (expiry needs no change to happen).
pub const RECHECK: Duration = Duration::from_secs(3);

/// The Dataplane-token check of the xDS server. Cheap to clone.
#[derive(Clone)]
pub struct XdsAuth {
    tokens: Tokens,
    /// Bumped when a GlobalSecret or a Dataplane changes.
    changed: watch::Receiver<u64>,
}

/// The token an ADS stream presents in its `authorization` metadata: raw
/// or `Bearer <token>`; `None` when absent or empty.
pub fn presented(md: &MetadataMap) -> Option<String> {
    let v = md.get("authorization")?.to_str().ok()?.trim();
    let t = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")).unwrap_or(v).trim();
    (!t.is_empty()).then(|| t.to_string())
}

fn status(e: TokenError) -> Status {
    match e {
        TokenError::Store(_) => Status::unavailable(e.to_string()),
        e if e.is_forbidden() => Status::permission_denied(e.to_string()),
        e => Status::unauthenticated(e.to_string()),
    }
}

impl XdsAuth {
    /// Checks with `tokens`; follows the store's change feed until `stop`.
    pub fn new(tokens: Tokens, stop: CancellationToken) -> XdsAuth {
        let (tx, changed) = watch::channel(0u64);
        let store = tokens.manager().store().clone();
        tokio::spawn(async move {
            loop {
                let from = match store.current_revision().await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "xDS auth: cannot read the store revision; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                            () = stop.cancelled() => return,
                        }
                    }
                };
                let mut feed = std::pin::pin!(store.watch(from));
                loop {
                    let next = tokio::select! {
                        n = feed.next() => n,
                        () = stop.cancelled() => return,
                    };
                    match next {
                        Some(Ok(c)) => {
                            let t = c.resource.key.type_name.as_str();
                            if t == ResourceType::GlobalSecret.name() || t == ResourceType::Dataplane.name() {
                                tx.send_modify(|n| *n = n.wrapping_add(1));
                            }
                        }
                        Some(Err(StoreError::Compacted { .. })) | None => break,
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "xDS auth: change feed error; resuming");
                            break;
                        }
                    }
                }
                // Whatever was missed: every stream checks again.
                tx.send_modify(|n| *n = n.wrapping_add(1));
            }
        });
        XdsAuth { tokens, changed }
    }

    /// Checks `token` for Dataplane `id` as stored now. An unregistered
    /// Dataplane is checked on its token and name/mesh only (the stream
    /// then gets `NOT_FOUND` saying how to register it).
    ///
    /// Errors: the `Status` to end the stream with.
    pub async fn check(&self, token: Option<&str>, id: &ProxyId) -> Result<(), Status> {
        if id.is_ingress() {
            // A ZoneIngress token: a Dataplane token with no mesh and the
            // ingress's name (`POST /tokens/dataplane {"type": "ingress"}`).
            let token = token.ok_or(TokenError::Missing(meridian_tokens::TokenKind::Dataplane)).map_err(status)?;
            let claims = self.tokens.verify_dataplane(token).await.map_err(status)?;
            if claims.name.is_empty() {
                return Err(Status::permission_denied(format!(
                    "ZoneIngress {:?}: the token names no ZoneIngress (issue one with type \"ingress\")",
                    id.name
                )));
            }
            check_binding(&claims, &DataplaneBinding::new("", &id.name, None)).map_err(status)?;
            return Ok(());
        }
        let stored = self
            .tokens
            .manager()
            .get(ResourceType::Dataplane, &id.mesh, &id.name)
            .await
            .map_err(|e| Status::unavailable(format!("cannot read Dataplane {id}: {e}")))?;
        let token = token.ok_or(TokenError::Missing(meridian_tokens::TokenKind::Dataplane)).map_err(status)?;
        match stored.map(|e| e.resource.spec) {
            Some(Spec::Dataplane(dp)) => {
                self.tokens.authorize_dataplane(Some(token), &id.mesh, &id.name, Some(&dp)).await.map_err(status)?;
            }
            _ => {
                let mut claims = self.tokens.verify_dataplane(token).await.map_err(status)?;
                claims.tags.clear();
                check_binding(&claims, &DataplaneBinding::new(&id.mesh, &id.name, None)).map_err(status)?;
            }
        }
        Ok(())
    }

    /// Resolves, with the status to end the stream with, once `token` no
    /// longer admits Dataplane `id`: checked every [`RECHECK`] and on every
    /// change to GlobalSecrets or Dataplanes. A store that cannot be read
    /// is not a reason to cut a stream: the check passes.
    pub async fn until_refused(&self, token: Option<String>, id: ProxyId) -> Status {
        let mut changed = self.changed.clone();
        let mut following = true;
        loop {
            if following {
                tokio::select! {
                    () = tokio::time::sleep(RECHECK) => {}
                    r = changed.changed() => following = r.is_ok(), // the follower ended (shutdown): timer only
                }
            } else {
                tokio::time::sleep(RECHECK).await;
            }
            match self.check(token.as_deref(), &id).await {
                Ok(()) => {}
                Err(s) if s.code() == tonic::Code::Unavailable => {}
                Err(s) => return s,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use meridian_core::{Manager, Role};
    use meridian_store::Store;
    use meridian_tokens::{DataplaneRequest, TokenKind};

    use super::*;

    #[tokio::test]
    async fn an_ingress_token_admits_its_zone_ingress_only() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::connect(&format!("sqlite:{}", dir.path().join("z.db").display())).await.expect("store");
        let tokens = Tokens::new(Manager::new(store, Role::Zone { federated: false }));
        tokens.keys(TokenKind::Dataplane).ensure().await.expect("signing key");
        let issue = |mesh: &str| DataplaneRequest {
            name: "ingress-1".into(),
            mesh: mesh.into(),
            tags: BTreeMap::new(),
            valid_for: Duration::from_secs(3600),
        };
        let (ingress, _) = tokens.issue_dataplane(&issue("")).await.expect("ingress token");
        let (dataplane, _) = tokens.issue_dataplane(&issue("default")).await.expect("Dataplane token");
        let stop = CancellationToken::new();
        let auth = XdsAuth::new(tokens, stop.clone());
        let id = |mesh: &str, name: &str| ProxyId { mesh: mesh.into(), name: name.into() };

        assert_eq!(auth.check(Some(&ingress), &id("", "ingress-1")).await.map_err(|s| s.code()), Ok(()));
        let code = |r: Result<(), Status>| r.map_err(|s| s.code());
        assert_eq!(code(auth.check(Some(&ingress), &id("", "ingress-2")).await), Err(tonic::Code::PermissionDenied));
        assert_eq!(
            code(auth.check(Some(&dataplane), &id("", "ingress-1")).await),
            Err(tonic::Code::PermissionDenied),
            "a Dataplane token of mesh default admits no ZoneIngress"
        );
        assert_eq!(
            code(auth.check(Some(&ingress), &id("default", "ingress-1")).await),
            Err(tonic::Code::PermissionDenied),
            "an ingress token admits no Dataplane"
        );
        assert_eq!(code(auth.check(None, &id("", "ingress-1")).await), Err(tonic::Code::Unauthenticated));
        stop.cancel();
    }
}
