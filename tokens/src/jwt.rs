//! The JWT layer, with no store: sign claims with one private key, read a
//! token's key serial (`kid`), verify a token with one public key, and the
//! checks every token gets (type, validity window). The store-backed key ring
//! ([`crate::keys`]) and the token kinds ([`crate::dataplane`],
//! [`crate::zone`]) build on it.
//!
//! Algorithm: ES256 (ECDSA P-256, SHA-256). The incumbent signs with RS256;
//! an asymmetric algorithm is what matters (zones only ever hold public
//! keys), and P-256 keys are small enough to sync and quick to verify.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Serialize, de::DeserializeOwned};

use crate::{TokenError, TokenKind};

/// The only algorithm issued and accepted.
pub const ALGORITHM: Algorithm = Algorithm::ES256;

/// How far back `nbf` is set from `iat`, in seconds (the incumbent's 5 s,
/// for clocks slightly behind the issuer's).
pub const NOT_BEFORE_SLACK_SECS: i64 = 5;

/// The prefix of the zone tokens Meridian issued before JWTs.
pub const LEGACY_ZONE_PREFIX: &str = "mzt1.";

/// Uses the RustCrypto backend of `jsonwebtoken` (the only one compiled in)
/// for this process; idempotent.
fn ensure_provider() {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
}

/// Now, in unix seconds.
pub fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `secs` (unix seconds) as RFC 3339, for messages.
pub fn rfc3339(secs: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A fresh ES256 key pair as (PKCS#8 private key PEM, SPKI public key PEM).
///
/// Errors: the key generator failed (no system randomness).
pub fn generate_key_pair() -> Result<(String, String), TokenError> {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| TokenError::Store(format!("cannot generate a signing key: {e}")))?;
    Ok((kp.serialize_pem(), kp.public_key_pem()))
}

/// Signs `claims` with the private key `private_pem` (PKCS#8 PEM) of serial
/// `serial`, which goes in the header's `kid`.
///
/// Errors: the key is not an ES256 private key (a corrupt store).
pub fn sign<C: Serialize>(claims: &C, serial: u64, private_pem: &[u8]) -> Result<String, TokenError> {
    ensure_provider();
    let key = EncodingKey::from_ec_pem(private_pem)
        .map_err(|e| TokenError::Store(format!("signing key {serial} is not a valid ES256 private key: {e}")))?;
    let mut header = Header::new(ALGORITHM);
    header.kid = Some(serial.to_string());
    jsonwebtoken::encode(&header, claims, &key).map_err(|e| TokenError::Store(format!("cannot sign the token: {e}")))
}

/// The serial of the key that signed `token` (its `kid`), after the
/// checks that need no key: present, not the legacy `mzt1.` format, a JWT
/// header naming ES256 and a numeric `kid`.
pub fn key_serial(token: &str, kind: TokenKind) -> Result<u64, TokenError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(TokenError::Missing(kind));
    }
    if token.starts_with(LEGACY_ZONE_PREFIX) {
        return Err(TokenError::Legacy);
    }
    let header =
        jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(kind, format!("not a JWT ({e})")))?;
    if header.alg != ALGORITHM {
        return Err(TokenError::Malformed(kind, format!("algorithm {:?} is not accepted (only ES256)", header.alg)));
    }
    // Each kind has its own keys, so a token of another kind would only
    // fail its signature check; name the real fault instead. (An unverified
    // claim only ever refuses here, never admits.)
    if let Some(got) = unverified_type(token)
        && got != kind.type_claim()
    {
        return Err(TokenError::WrongType { expected: kind, got });
    }
    let kid = header.kid.ok_or_else(|| TokenError::Malformed(kind, "the header has no kid (key serial)".into()))?;
    kid.parse::<u64>().map_err(|_| TokenError::Malformed(kind, format!("kid {kid:?} is not a key serial")))
}

/// The `Type` claim of a token, read without checking anything.
fn unverified_type(token: &str) -> Option<String> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("Type")?.as_str().map(str::to_string)
}

/// Verifies `token`'s signature with `public_pem` (SPKI PEM of the key
/// [`key_serial`] named) and returns its claims after the checks every
/// token gets: `Type` is `kind` (the incumbent writes this claim but never
/// checks it), `exp` is in the future and `nbf` (when present) in the past.
/// What the claims bind (zone, Dataplane) is checked by the caller.
pub fn verify<C: DeserializeOwned>(
    token: &str,
    kind: TokenKind,
    serial: u64,
    public_pem: &[u8],
    now: i64,
) -> Result<C, TokenError> {
    ensure_provider();
    let key = DecodingKey::from_ec_pem(public_pem)
        .map_err(|e| TokenError::Store(format!("public key {serial} is not a valid ES256 key: {e}")))?;
    let mut validation = Validation::new(ALGORITHM);
    // Time and claims are checked below, with precise messages.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data =
        jsonwebtoken::decode::<serde_json::Value>(token.trim(), &key, &validation).map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature | ErrorKind::InvalidEcdsaKey => TokenError::BadSignature(kind),
            _ => TokenError::Malformed(kind, e.to_string()),
        })?;
    let claims = data.claims;
    let ty = claims.get("Type").and_then(|v| v.as_str()).unwrap_or("");
    if ty != kind.type_claim() {
        return Err(TokenError::WrongType { expected: kind, got: ty.to_string() });
    }
    let exp = claims
        .get("exp")
        .and_then(serde_json::Value::as_i64)
        .ok_or_else(|| TokenError::Malformed(kind, "no exp claim".into()))?;
    if exp <= now {
        return Err(TokenError::Expired(kind, exp));
    }
    if let Some(nbf) = claims.get("nbf").and_then(serde_json::Value::as_i64)
        && nbf > now
    {
        return Err(TokenError::NotYetValid(kind, nbf));
    }
    serde_json::from_value(claims).map_err(|e| TokenError::Malformed(kind, format!("claims: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DataplaneClaims;

    fn claims(exp: i64) -> DataplaneClaims {
        DataplaneClaims {
            name: "gw-1".into(),
            mesh: "default".into(),
            tags: Default::default(),
            token_type: "dataplane".into(),
            jti: "j1".into(),
            iat: now_secs(),
            nbf: now_secs() - NOT_BEFORE_SLACK_SECS,
            exp,
        }
    }

    #[test]
    fn signs_and_verifies_with_kid() {
        let (private, public) = generate_key_pair().expect("key pair");
        let token = sign(&claims(now_secs() + 60), 7, private.as_bytes()).expect("sign");
        assert_eq!(key_serial(&token, TokenKind::Dataplane), Ok(7));
        let got: DataplaneClaims =
            verify(&token, TokenKind::Dataplane, 7, public.as_bytes(), now_secs()).expect("verify");
        assert_eq!(got.name, "gw-1");
        // the wire claims are the incumbent's names
        let payload = token.split('.').nth(1).expect("payload");
        let json: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).expect("b64"),
        )
        .expect("json");
        for k in ["Name", "Mesh", "Type", "jti", "iat", "nbf", "exp"] {
            assert!(json.get(k).is_some(), "claim {k} in {json}");
        }
        assert_eq!(json["nbf"].as_i64(), Some(json["iat"].as_i64().expect("iat") - 5));
    }

    #[test]
    fn refuses_other_keys_expiry_and_types() {
        let (private, public) = generate_key_pair().expect("key pair");
        let (_, other_public) = generate_key_pair().expect("key pair");
        let token = sign(&claims(now_secs() + 60), 1, private.as_bytes()).expect("sign");
        assert_eq!(
            verify::<DataplaneClaims>(&token, TokenKind::Dataplane, 1, other_public.as_bytes(), now_secs()),
            Err(TokenError::BadSignature(TokenKind::Dataplane))
        );
        let expired = sign(&claims(now_secs() - 1), 1, private.as_bytes()).expect("sign");
        assert!(matches!(
            verify::<DataplaneClaims>(&expired, TokenKind::Dataplane, 1, public.as_bytes(), now_secs()),
            Err(TokenError::Expired(TokenKind::Dataplane, _))
        ));
        assert_eq!(
            verify::<DataplaneClaims>(&token, TokenKind::Zone, 1, public.as_bytes(), now_secs()),
            Err(TokenError::WrongType { expected: TokenKind::Zone, got: "dataplane".into() })
        );
        let tampered = {
            let mut parts: Vec<&str> = token.split('.').collect();
            let forged = base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                br#"{"Name":"other","Mesh":"default","Type":"dataplane","jti":"j","iat":1,"exp":9999999999}"#,
            );
            parts[1] = &forged;
            parts.join(".")
        };
        assert_eq!(
            verify::<DataplaneClaims>(&tampered, TokenKind::Dataplane, 1, public.as_bytes(), now_secs()),
            Err(TokenError::BadSignature(TokenKind::Dataplane))
        );
    }

    #[test]
    fn legacy_and_garbage_are_named() {
        let e = key_serial("mzt1.eyJ6b25lIjoieiJ9.c2ln", TokenKind::Zone).expect_err("legacy");
        assert_eq!(e, TokenError::Legacy);
        assert!(e.to_string().contains("meridianctl generate zone-token --zone NAME"), "{e}");
        assert_eq!(key_serial("  ", TokenKind::Zone), Err(TokenError::Missing(TokenKind::Zone)));
        assert!(matches!(key_serial("garbage", TokenKind::Dataplane), Err(TokenError::Malformed(..))));
    }
}
