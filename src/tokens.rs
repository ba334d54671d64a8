//! Connection tokens (docs/protocol.md "Identity"): the JWT a browser passes as `/ws?token=...` to
//! prove who it is, and the function the web application (through `snorky.connection_token`)
//! uses to issue one.
//!
//! A token is a compact JWS signed with HS256 (HMAC-SHA256) under the server's `token_secret`.
//! Its claims: `sub` (required, a non-empty string: the identity), `exp` (required, a NumericDate
//! in the future), `info` (optional, an object: public data about the user, passed to services),
//! `nbf` (optional, honoured when present), `iat` (optional, read only to tell whether the token
//! predates a revocation of its identity); any other claim (`jti`, ...) is ignored.
//!
//! **Why a small codec on RustCrypto rather than `jsonwebtoken`.** Snorky needs one algorithm.
//! `jsonwebtoken` 11 requires choosing a crypto backend: `rust_crypto` compiles the RSA, ECDSA and
//! EdDSA crates too (a large share of this crate's build on a 2-core machine), `aws_lc_rs` needs
//! a C toolchain and CMake. `hmac` 0.12 + `sha2` 0.10 share `digest` 0.10 with tungstenite's
//! SHA-1, so HS256 costs two small, audited crates; base64url is the `base64` crate. What is
//! left here is the JWS framing, which is short and fully tested below.
//!
//! **What verification refuses**, each with its own [`TokenError`]:
//! - anything but three base64url (unpadded, canonical) segments, or a token over
//!   [`MAX_TOKEN_LEN`] bytes;
//! - a header whose `alg` is not exactly `"HS256"` (`"none"`, `"HS512"`, `"RS256"`, ...) or that
//!   carries `crit` (no extension is understood). The algorithm is checked before the signature,
//!   and the key is only ever used as an HMAC key, so algorithm-confusion attacks have nothing
//!   to work with;
//! - a signature that does not match, compared in constant time (`hmac`'s `verify_slice`);
//! - a missing or non-numeric `exp`, or one in the past: a token is expired once
//!   `now >= exp + LEEWAY` ([`LEEWAY`] is 5 s, to absorb clock skew between the web application
//!   and this server); likewise a present `nbf` is honoured once `now + LEEWAY >= nbf`;
//! - a missing, empty or non-string `sub`; an `info` that is present but not an object
//!   (`null` included).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::Sha256;

use crate::connection::Identity;

type HmacSha256 = Hmac<Sha256>;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY: f64 = 5.0;

/// The longest token accepted, in bytes. Real tokens are a few hundred bytes; the bound keeps
/// an abusive query string from costing more than a hash of 8 KiB.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The header every issued token carries.
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Why a token was refused. The text is what the failed handshake answers (HTTP 401), so it is
/// short and reveals nothing about the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a compact JWS (three base64url segments of JSON objects), or too long.
    #[error("malformed token")]
    Malformed,
    /// The header names another algorithm than HS256, or asks for extensions (`crit`).
    #[error("unsupported token algorithm (HS256 only)")]
    Algorithm,
    /// The signature does not match the server's secret.
    #[error("bad token signature")]
    Signature,
    /// `exp` is missing or not a number.
    #[error("token has no exp")]
    MissingExpiry,
    /// `exp` is past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is still in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `sub` is missing, empty or not a string.
    #[error("token has no sub")]
    MissingSubject,
    /// `info` is present but not an object.
    #[error("token info must be an object")]
    InvalidInfo,
}

/// Seconds since the Unix epoch, with a fraction.
pub fn now_seconds() -> f64 {
    // A clock before 1970 is a broken host; treating it as the epoch makes every token expired
    // rather than valid.
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs_f64()
}

fn mac(secret: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length")
}

/// Verifies `token` with `secret` now; returns the identity it proves.
pub fn verify(token: &str, secret: &[u8]) -> Result<Identity, TokenError> {
    verify_at(token, secret, now_seconds())
}

/// What a valid token says: the identity, and when the token was issued (its `iat`, when it
/// has a numeric one).
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The identity the token proves.
    pub identity: Identity,
    /// The token's `iat`, seconds since the epoch.
    pub issued_at: Option<f64>,
}

/// Verifies `token` with `secret` as if the time were `now` (seconds since the epoch).
pub fn verify_at(token: &str, secret: &[u8], now: f64) -> Result<Identity, TokenError> {
    verify_claims(token, secret, now).map(|verified| verified.identity)
}

/// As [`verify_at`], with the token's issue time too.
pub fn verify_claims(token: &str, secret: &[u8], now: f64) -> Result<Verified, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let Value::Object(header_fields) = decode_json(header)? else {
        return Err(TokenError::Malformed);
    };
    if header_fields.get("alg").and_then(Value::as_str) != Some("HS256") || header_fields.contains_key("crit") {
        return Err(TokenError::Algorithm);
    }
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Malformed)?;
    let mut mac = mac(secret);
    mac.update(header.as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    mac.verify_slice(&signature).map_err(|_| TokenError::Signature)?;

    let Value::Object(mut claims) = decode_json(payload)? else {
        return Err(TokenError::Malformed);
    };
    let exp = claims.get("exp").and_then(Value::as_f64).ok_or(TokenError::MissingExpiry)?;
    if now >= exp + LEEWAY {
        return Err(TokenError::Expired);
    }
    match claims.get("nbf") {
        None => {}
        Some(nbf) => match nbf.as_f64() {
            Some(nbf) if now + LEEWAY >= nbf => {}
            Some(_) => return Err(TokenError::NotYetValid),
            None => return Err(TokenError::Malformed),
        },
    }
    let sub = match claims.remove("sub") {
        Some(Value::String(sub)) if !sub.is_empty() => sub,
        _ => return Err(TokenError::MissingSubject),
    };
    let info = match claims.remove("info") {
        None => None,
        Some(info @ Value::Object(_)) => Some(info),
        Some(_) => return Err(TokenError::InvalidInfo),
    };
    let issued_at = claims.get("iat").and_then(Value::as_f64);
    Ok(Verified { identity: Identity { id: Some(sub), info }, issued_at })
}

fn decode_json(segment: &str) -> Result<Value, TokenError> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
}

/// The claims of an issued token, in this order.
#[derive(Serialize)]
struct IssuedClaims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<&'a Map<String, Value>>,
}

/// A token that would be longer than [`MAX_TOKEN_LEN`] is not issued: the server would refuse
/// it as malformed, and the browser holding it could never connect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the connection token would be {length} bytes, over the {MAX_TOKEN_LEN} the server accepts: make its info smaller"
)]
pub struct TokenTooLong {
    /// The length the token would have had.
    pub length: usize,
}

/// Issues a token for `identity`, valid for `ttl` from now, signed with `secret`.
///
/// # Errors
/// [`TokenTooLong`] when `info` (or `identity`) makes the token longer than [`MAX_TOKEN_LEN`].
pub fn issue(
    identity: &str,
    secret: &[u8],
    ttl: Duration,
    info: Option<&Map<String, Value>>,
) -> Result<String, TokenTooLong> {
    // Whole seconds, as NumericDate is usually written; `exp` rounds the lifetime up so a token
    // never lives shorter than asked.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    issue_at(identity, secret, now.as_secs(), ttl, info)
}

/// Issues a token as if the time were `now` (whole seconds since the epoch).
///
/// # Errors
/// [`TokenTooLong`], as [`issue`].
pub fn issue_at(
    identity: &str,
    secret: &[u8],
    now: u64,
    ttl: Duration,
    info: Option<&Map<String, Value>>,
) -> Result<String, TokenTooLong> {
    let lifetime = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    let claims = IssuedClaims { sub: identity, iat: now, exp: now.saturating_add(lifetime), info };
    // Serializing a struct of strings, integers and a JSON map cannot fail.
    let payload = serde_json::to_vec(&claims).unwrap_or_default();
    let token = sign(HEADER.as_bytes(), &payload, secret);
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenTooLong { length: token.len() });
    }
    Ok(token)
}

/// Encodes and signs a header and payload (raw JSON bytes) into a compact JWS. Public so tests
/// can forge tokens with unusual headers or claims.
pub fn sign(header: &[u8], payload: &[u8], secret: &[u8]) -> String {
    let signing_input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
    let mut mac = mac(secret);
    mac.update(signing_input.as_bytes());
    let signature = mac.finalize().into_bytes();
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"a-test-secret-of-some-length";
    const NOW: u64 = 1_700_000_000;

    fn claims(value: &Value) -> Vec<u8> {
        serde_json::to_vec(value).expect("a JSON value serializes")
    }

    fn at_now(token: &str) -> Result<Identity, TokenError> {
        #[allow(clippy::cast_precision_loss)]
        verify_at(token, SECRET, NOW as f64)
    }

    #[test]
    fn an_issued_token_verifies_to_its_identity_and_info() {
        let info = json!({"name": "Alice", "avatar": null});
        let token = issue_at("alice", SECRET, NOW, Duration::from_secs(60), info.as_object()).expect("a short token");
        let identity = at_now(&token).expect("valid");
        assert_eq!(identity, Identity { id: Some("alice".into()), info: Some(info) });
        let token = issue_at("bob", SECRET, NOW, Duration::from_secs(60), None).expect("a short token");
        assert_eq!(at_now(&token), Ok(Identity { id: Some("bob".into()), info: None }));
    }

    #[test]
    fn a_token_the_server_would_refuse_as_too_long_is_not_issued() {
        // The longest info that fits is accepted; one byte more is refused at issue time.
        let with = |length: usize| {
            let info = json!({"bio": "b".repeat(length)});
            issue_at("alice", SECRET, NOW, Duration::from_secs(60), info.as_object())
        };
        let mut fits = 0;
        while let Ok(token) = with(fits + 1) {
            assert!(token.len() <= MAX_TOKEN_LEN);
            fits += 1;
        }
        let longest = with(fits).expect("fits");
        assert!(at_now(&longest).is_ok(), "the longest token issued is accepted");
        let refused = with(fits + 3).expect_err("too long");
        assert!(refused.length > MAX_TOKEN_LEN);
        assert!(refused.to_string().contains("make its info smaller"), "{refused}");
    }

    #[test]
    fn the_issued_token_is_a_standard_hs256_jwt() {
        // Header and claims base64url without padding, HMAC-SHA256 over "header.claims": the
        // expected text was computed independently with Python's `hmac` and `base64` modules.
        let token = sign(HEADER.as_bytes(), br#"{"sub":"x","exp":1}"#, b"secret");
        assert_eq!(
            token,
            concat!(
                "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ4IiwiZXhwIjoxfQ.",
                "OiQBpOP5rlp8F1cia6UFlsrHD3S5FQQq4rtTO_u3YIo"
            )
        );
    }

    #[test]
    fn expiry_is_required_and_honoured_with_the_leeway() {
        let exp = |offset: i64| -> String {
            let exp = NOW.checked_add_signed(offset).expect("in range");
            sign(HEADER.as_bytes(), &claims(&json!({"sub": "a", "exp": exp})), SECRET)
        };
        assert!(at_now(&exp(60)).is_ok());
        assert!(at_now(&exp(-4)).is_ok(), "within the leeway");
        assert_eq!(at_now(&exp(-5)), Err(TokenError::Expired));
        assert_eq!(at_now(&exp(-3600)), Err(TokenError::Expired));
        let no_exp = sign(HEADER.as_bytes(), &claims(&json!({"sub": "a"})), SECRET);
        assert_eq!(at_now(&no_exp), Err(TokenError::MissingExpiry));
        let text_exp = sign(HEADER.as_bytes(), &claims(&json!({"sub": "a", "exp": "tomorrow"})), SECRET);
        assert_eq!(at_now(&text_exp), Err(TokenError::MissingExpiry));
        // NumericDate may have a fraction.
        let float_exp = sign(HEADER.as_bytes(), &claims(&json!({"sub": "a", "exp": 1_700_000_010.5})), SECRET);
        assert!(at_now(&float_exp).is_ok());
    }

    #[test]
    fn not_before_is_honoured() {
        let token = sign(HEADER.as_bytes(), &claims(&json!({"sub": "a", "exp": NOW + 60, "nbf": NOW + 30})), SECRET);
        assert_eq!(at_now(&token), Err(TokenError::NotYetValid));
        let token = sign(HEADER.as_bytes(), &claims(&json!({"sub": "a", "exp": NOW + 60, "nbf": NOW + 2})), SECRET);
        assert!(at_now(&token).is_ok(), "within the leeway");
    }

    #[test]
    fn sub_must_be_a_non_empty_string() {
        for sub in [None, Some(json!("")), Some(json!(7)), Some(Value::Null), Some(json!(["a"]))] {
            let mut payload = json!({"exp": NOW + 60});
            if let Some(sub) = sub.clone() {
                payload["sub"] = sub;
            }
            let token = sign(HEADER.as_bytes(), &claims(&payload), SECRET);
            assert_eq!(at_now(&token), Err(TokenError::MissingSubject), "sub {sub:?}");
        }
    }

    #[test]
    fn info_must_be_an_object_when_present() {
        for info in [Value::Null, json!("x"), json!([1]), json!(3)] {
            let token = sign(HEADER.as_bytes(), &claims(&json!({"sub": "a", "exp": NOW + 60, "info": info})), SECRET);
            assert_eq!(at_now(&token), Err(TokenError::InvalidInfo), "info {info}");
        }
    }

    #[test]
    fn a_wrong_secret_or_a_tampered_token_is_a_bad_signature() {
        let token = issue_at("alice", SECRET, NOW, Duration::from_secs(60), None).expect("a short token");
        #[allow(clippy::cast_precision_loss)]
        let other = verify_at(&token, b"another-secret-entirely", NOW as f64);
        assert_eq!(other, Err(TokenError::Signature));
        // Same header and signature, claims changed to another identity.
        let parts: Vec<&str> = token.split('.').collect();
        let forged_claims = URL_SAFE_NO_PAD.encode(claims(&json!({"sub": "mallory", "iat": NOW, "exp": NOW + 60})));
        let forged = format!("{}.{forged_claims}.{}", parts[0], parts[2]);
        assert_eq!(at_now(&forged), Err(TokenError::Signature));
        // A truncated signature.
        let truncated = &token[..token.len() - 4];
        assert!(matches!(at_now(truncated), Err(TokenError::Signature | TokenError::Malformed)));
        // An empty signature.
        let unsigned = format!("{}.{}.", parts[0], parts[1]);
        assert_eq!(at_now(&unsigned), Err(TokenError::Signature));
    }

    #[test]
    fn only_hs256_is_accepted() {
        let payload = claims(&json!({"sub": "a", "exp": NOW + 60}));
        for header in [
            json!({"alg": "none", "typ": "JWT"}),
            json!({"alg": "HS512"}),
            json!({"alg": "RS256"}),
            json!({"alg": "hs256"}),
            json!({"typ": "JWT"}),
            json!({"alg": "HS256", "crit": ["exp"]}),
        ] {
            let token = sign(&claims(&header), &payload, SECRET);
            assert_eq!(at_now(&token), Err(TokenError::Algorithm), "header {header}");
        }
        // The classic "alg: none" token, with an empty signature.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(&payload)
        );
        assert_eq!(at_now(&none), Err(TokenError::Algorithm));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = issue_at("alice", SECRET, NOW, Duration::from_secs(60), None).expect("a short token");
        let mut cases = vec![
            String::new(),
            "abc".to_owned(),
            "a.b".to_owned(),
            "a.b.c.d".to_owned(),
            format!("{good}.extra"),
            "!!!.???.***".to_owned(),
            "x".repeat(MAX_TOKEN_LEN + 1),
        ];
        // Padding is not base64url as JWS writes it.
        let parts: Vec<&str> = good.split('.').collect();
        cases.push(format!("{}=.{}.{}", parts[0], parts[1], parts[2]));
        // A header that is JSON but not an object.
        cases.push(sign(b"[1]", &claims(&json!({"sub": "a", "exp": NOW + 60})), SECRET));
        // Claims that are not JSON, or not an object, under a valid signature.
        cases.push(sign(HEADER.as_bytes(), b"not json", SECRET));
        cases.push(sign(HEADER.as_bytes(), b"[\"a\"]", SECRET));
        for token in cases {
            assert_eq!(at_now(&token), Err(TokenError::Malformed), "token {token:?}");
        }
    }

    #[test]
    fn issuing_rounds_the_lifetime_up() {
        let token = issue_at("a", SECRET, NOW, Duration::from_millis(1500), None).expect("a short token");
        let payload = token.split('.').nth(1).expect("three parts");
        let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64")).expect("json");
        assert_eq!(claims, json!({"sub": "a", "iat": NOW, "exp": NOW + 2}));
    }
}
