//! `meridian-tokens`: zone tokens and Dataplane tokens, as ES256 JWTs.
//!
//! ```text
//!   issuer (global, or a standalone zone)              verifier (global for zone tokens, every zone for Dataplane tokens)
//!   GlobalSecret <kind>-token-signing-key-<n>  (private, never leaves)
//!   GlobalSecret <kind>-token-signing-public-key-<n> ──KDS (Dataplane kind)──▶ same GlobalSecret in each zone
//!   issue: newest <n> signs, header kid = <n>          verify: kid → public key <n>, signature, Type, exp/nbf,
//!                                                              revocation list, then what the token binds
//! ```
//!
//! - [`jwt`]: signing and verifying with one key, no store.
//! - [`keys`]: the key ring in the store: create on first use, rotate
//!   (the newest serial signs, every stored key verifies), remove.
//! - [`Tokens`]: issuing and verifying against the store, revocation lists.
//! - [`dataplane`]: what a Dataplane token binds (name, mesh, tags) and the
//!   check against a Dataplane resource.
//!
//! Claims follow the incumbent (Kuma 2.14, `pkg/core/tokens`): Dataplane
//! tokens carry `Name`, `Mesh`, `Tags` {key: [values]}, `Type`
//! (`"dataplane"`), `jti`, `iat`, `nbf` (= `iat` − 5 s), `exp`; zone tokens
//! `Zone`, `Scope`, `Type` (`"zone"`) and the same registered claims.
//! Unlike the incumbent, `Type` is checked: a zone token is not a Dataplane
//! token, nor the reverse.
//!
//! Revocation lists are GlobalSecrets whose data is token ids (`jti`)
//! separated by commas, spaces or newlines: `zone-token-revocations` for
//! zone tokens and `dataplane-token-revocations-<mesh>` for Dataplane
//! tokens of mesh `<mesh>` (the name the incumbent's code reads since 2.10;
//! Meridian's docs name the same one). Both the Dataplane public keys and
//! these lists reach zones over KDS
//! ([`meridian_sync_proto::kds::global_secret_syncs`]).

pub mod dataplane;
pub mod jwt;
pub mod keys;
mod tokens;

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

pub use dataplane::{DataplaneBinding, check_binding};
pub use keys::SigningKeys;
pub use tokens::{DataplaneRequest, Tokens};

/// Which token: decides the key ring, the `Type` claim and the revocation list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// Presented by a gateway's Envoy on its xDS stream and when it
    /// registers its Dataplane through a zone's API.
    Dataplane,
    /// Presented by a zone control plane on every KDS call to the global.
    Zone,
}

impl TokenKind {
    /// The `Type` claim.
    pub fn type_claim(self) -> &'static str {
        match self {
            TokenKind::Dataplane => "dataplane",
            TokenKind::Zone => "zone",
        }
    }

    /// Parses `dataplane` or `zone` (as `meridianctl rotate signing-key --type` takes it).
    pub fn parse(s: &str) -> Option<TokenKind> {
        match s {
            "dataplane" => Some(TokenKind::Dataplane),
            "zone" => Some(TokenKind::Zone),
            _ => None,
        }
    }

    /// Name prefix of the private signing keys (GlobalSecrets, issuer only):
    /// `<prefix><serial>`.
    pub fn private_key_prefix(self) -> &'static str {
        match self {
            TokenKind::Dataplane => "dataplane-token-signing-key-",
            TokenKind::Zone => "zone-token-signing-key-",
        }
    }

    /// Name prefix of the public keys (GlobalSecrets): `<prefix><serial>`;
    /// the Dataplane ones sync to zones.
    pub fn public_key_prefix(self) -> &'static str {
        match self {
            TokenKind::Dataplane => meridian_sync_proto::kds::DATAPLANE_TOKEN_PUBLIC_KEY_PREFIX,
            TokenKind::Zone => "zone-token-signing-public-key-",
        }
    }

    /// How to get a token of this kind, for messages.
    fn how_to_get(self) -> &'static str {
        match self {
            TokenKind::Dataplane => "meridianctl generate dataplane-token --mesh MESH --name NAME",
            TokenKind::Zone => "meridianctl generate zone-token --zone NAME",
        }
    }
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenKind::Dataplane => "Dataplane",
            TokenKind::Zone => "zone",
        })
    }
}

/// The GlobalSecret listing revoked zone-token ids.
pub const ZONE_REVOCATIONS: &str = "zone-token-revocations";

/// The GlobalSecret listing revoked Dataplane-token ids of `mesh`:
/// `dataplane-token-revocations-<mesh>`.
pub fn dataplane_revocations(mesh: &str) -> String {
    format!("{}{mesh}", meridian_sync_proto::kds::DATAPLANE_TOKEN_REVOCATIONS_PREFIX)
}

/// What a Dataplane token says (the incumbent's claim names on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataplaneClaims {
    /// The Dataplane's name; empty: any name (then `tags` should bind it).
    #[serde(rename = "Name", default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The Dataplane's mesh.
    #[serde(rename = "Mesh")]
    pub mesh: String,
    /// Tags the Dataplane must carry, each with the values it may take.
    #[serde(rename = "Tags", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, Vec<String>>,
    /// `"dataplane"`.
    #[serde(rename = "Type")]
    pub token_type: String,
    /// Token id, for revocation.
    pub jti: String,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Not before, unix seconds (`iat` − 5).
    pub nbf: i64,
    /// Expires at, unix seconds.
    pub exp: i64,
}

/// What a zone token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneClaims {
    /// The zone the token is for.
    #[serde(rename = "Zone")]
    pub zone: String,
    /// What the token may be used for: `["cp"]`, a zone control plane's
    /// KDS calls (the incumbent's zone tokens carry `ingress`/`egress`).
    #[serde(rename = "Scope", default)]
    pub scope: Vec<String>,
    /// `"zone"`.
    #[serde(rename = "Type")]
    pub token_type: String,
    /// Token id, for revocation.
    pub jti: String,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Not before, unix seconds (`iat` − 5).
    pub nbf: i64,
    /// Expires at, unix seconds.
    pub exp: i64,
}

/// Why a token is refused. [`TokenError::is_forbidden`] tells a valid token
/// presented for the wrong thing (403, `PERMISSION_DENIED`) from a token
/// that is not valid at all (401, `UNAUTHENTICATED`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no {kind} token presented (send it in the 'authorization' header; get one with '{how}')", kind = .0, how = .0.how_to_get())]
    Missing(TokenKind),
    #[error(
        "this is an old-format (mzt1.) zone token, which is no longer accepted: issue a new one on the global with 'meridianctl generate zone-token --zone NAME'"
    )]
    Legacy,
    /// Not a JWT, the wrong algorithm, no `kid`, or claims of the wrong shape.
    #[error("{0} token is malformed: {1}")]
    Malformed(TokenKind, String),
    #[error("{0} token signature is not valid (forged, or signed by another control plane)")]
    BadSignature(TokenKind),
    #[error(
        "{kind} token was signed by key {serial}, which this control plane does not hold: the key was removed (tokens it signed stop working; issue a new token), or has not reached this zone yet"
    )]
    UnknownKey { kind: TokenKind, serial: u64 },
    #[error("{kind} token expired at {at}", kind = .0, at = jwt::rfc3339(*.1))]
    Expired(TokenKind, i64),
    #[error("{kind} token is not valid before {at}", kind = .0, at = jwt::rfc3339(*.1))]
    NotYetValid(TokenKind, i64),
    #[error("{0} token was revoked")]
    Revoked(TokenKind),
    #[error("this is a {got:?} token where a {expected} token is required")]
    WrongType { expected: TokenKind, got: String },
    #[error("zone token is for zone {token_zone:?}, but the caller says it is {claimed:?}")]
    WrongZone { token_zone: String, claimed: String },
    #[error("Dataplane token is for {what} {token:?}, not {actual:?}")]
    WrongDataplane { what: &'static str, token: String, actual: String },
    #[error("Dataplane token requires tag {tag:?}, which the Dataplane does not carry")]
    MissingTag { tag: String },
    #[error("Dataplane token allows tag {tag:?} to be {allowed:?}, but the Dataplane has {value:?}")]
    TagNotAllowed { tag: String, value: String, allowed: Vec<String> },
    #[error("cannot check the token: {0}")]
    Store(String),
}

impl TokenError {
    /// Whether the token is valid but not for this (wrong zone, Dataplane
    /// name, mesh or tags): 403 / `PERMISSION_DENIED` rather than 401 /
    /// `UNAUTHENTICATED`.
    pub fn is_forbidden(&self) -> bool {
        matches!(
            self,
            TokenError::WrongZone { .. }
                | TokenError::WrongDataplane { .. }
                | TokenError::MissingTag { .. }
                | TokenError::TagNotAllowed { .. }
        )
    }
}
