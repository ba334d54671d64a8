//! The `token` target: the query string of the WebSocket handshake, `?token=...`, through the
//! endpoint's own check (the query parsed as axum parses it, the token verified, revocations
//! consulted).
//!
//! The query is either arbitrary text, or a token built from the fuzzer's bytes: a JWS with an
//! arbitrary header and claims signed with the server's secret (or with a damaged signature),
//! or a token issued by `tokens::issue_at` as the web application issues them. Whatever the
//! query, the check must answer without panicking, with the 401 text the protocol gives; and:
//! - a token whose signature was damaged, whose algorithm is not HS256, or whose identity was
//!   revoked after it was issued is refused;
//! - an accepted token proves exactly its `sub` and `info`;
//! - a token issued for a non-empty identity with a lifetime of at least a minute is accepted;
//!   `issue_at` refuses to issue one only when it would be longer than the server accepts.

use std::time::Duration;

use arbitrary::{Result, Unstructured};
use axum::http::Uri;
use serde_json::{json, Map, Value};

use super::gen;
use super::server::{request, run, Harness, TOKEN_SECRET};
use crate::connection::Identity;
use crate::server::ws;
use crate::tokens;

/// The identity revoked before each input.
const REVOKED: &str = "revoked";

/// What the query carries, and what the check must answer.
enum Case {
    /// Arbitrary text: any answer will do, as long as there is one.
    Raw(String),
    /// A token that must be refused.
    Refused(String),
    /// A token with these claims; the answer depends on them.
    Signed(String, Map<String, Value>),
    /// A token that must be accepted, proving this identity.
    Valid(String, Identity),
}

/// Runs one input of the `token` target.
pub fn token(data: &[u8]) {
    let mut u = Unstructured::new(data);
    run(async move {
        let mut harness = Harness::new().await;
        let revoke = request("connections", &json!("disconnect"), &json!({"identity": REVOKED}), None);
        harness.backend(revoke, false, None).await;
        let now = tokens::now_seconds();
        let Ok(mut case) = case(&mut u, now) else {
            return;
        };
        let Ok(query) = query(&mut u, &mut case) else {
            return;
        };
        // A request target that is not a URI never reaches the handler: hyper answers 400.
        let Ok(uri) = format!("/ws?{query}").parse::<Uri>() else {
            return;
        };
        let answer = ws::query_identity(&harness.app, uri.query()).map(|(identity, issued_at)| {
            // The issue time revocations are checked against is the token's own `iat`.
            if let Case::Signed(_, claims) = &case {
                assert_eq!(issued_at, claims.get("iat").and_then(Value::as_f64), "issued_at is the token's iat");
            }
            identity
        });
        if let Err(text) = &answer {
            assert!(text.starts_with("Invalid connection token: "), "the 401 text names the problem: {text}");
        }
        let proven = answer.as_ref().ok().filter(|identity| identity.id.is_some());
        if let Some(identity) = proven {
            assert!(identity.id.as_deref().is_some_and(|id| !id.is_empty()), "an identity is never empty");
            assert!(identity.info.as_ref().is_none_or(Value::is_object), "info is an object");
        }
        match case {
            Case::Raw(_) => {}
            Case::Refused(token) => assert!(answer.is_err(), "{token} must be refused, yet proves {answer:?}"),
            Case::Valid(token, identity) => {
                assert_eq!(answer, Ok(identity), "{token} was issued for this identity");
            }
            Case::Signed(token, claims) => {
                if let Some(identity) = proven {
                    assert_eq!(
                        identity.id.as_ref(),
                        claims.get("sub").and_then(Value::as_str).map(str::to_owned).as_ref()
                    );
                    assert_eq!(identity.info.as_ref(), claims.get("info"), "{token} proves its info");
                    // Revoked a moment before `now`: older tokens (and those without a numeric
                    // `iat`) of the identity are refused.
                    let older = claims.get("iat").and_then(Value::as_f64).is_none_or(|iat| iat < now - 1.0);
                    assert!(identity.id.as_deref() != Some(REVOKED) || !older, "{token} was revoked");
                }
            }
        }
        harness.finish().await;
    });
}

fn case(u: &mut Unstructured<'_>, now: f64) -> Result<Case> {
    let secret = TOKEN_SECRET.as_bytes();
    Ok(match u.choose_index(4)? {
        0 => Case::Raw(u.arbitrary::<&str>()?.to_owned()),
        1 => {
            let identity = if u.ratio(1, 8)? { REVOKED.to_owned() } else { gen::string(u)? };
            let info = if u.arbitrary()? { gen::object(u, 2)? } else { Value::Null };
            let lifetime = Duration::from_secs(u.int_in_range(60..=86_400)?);
            // Whole seconds, as tokens carry them; a revoked identity's token predates the
            // revocation.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let issued = (now as u64).saturating_sub(if identity == REVOKED { 10 } else { 0 });
            let token = match tokens::issue_at(&identity, secret, issued, lifetime, info.as_object()) {
                Ok(token) => token,
                Err(refused) => {
                    // Only a token the server would refuse as too long is not issued.
                    assert!(refused.length > tokens::MAX_TOKEN_LEN, "{refused}");
                    return Ok(Case::Raw(String::new()));
                }
            };
            if identity.is_empty() || identity == REVOKED {
                Case::Refused(token)
            } else {
                let identity = Identity { id: Some(identity), info: info.as_object().map(|_| info.clone()) };
                Case::Valid(token, identity)
            }
        }
        _ => {
            let mut header = json!({"alg": "HS256", "typ": "JWT"});
            let mut refused = false;
            if u.ratio(1, 4)? {
                header = gen::object(u, 1)?;
                if u.arbitrary()? {
                    header["alg"] = Value::from(*u.choose(&["HS256", "none", "HS512", "RS256", "hs256"])?);
                }
                refused |= header.get("alg") != Some(&json!("HS256")) || header.get("crit").is_some();
            }
            let claims = claims(u, now)?;
            let header = if u.ratio(1, 16)? { u.arbitrary::<&[u8]>()?.to_vec() } else { json_bytes(&header) };
            let payload = if u.ratio(1, 16)? { u.arbitrary::<&[u8]>()?.to_vec() } else { json_bytes(&claims) };
            let mut token = tokens::sign(&header, &payload, secret);
            if u.ratio(1, 4)? {
                damage(u, &mut token)?;
                refused = true;
            }
            match claims {
                _ if refused => Case::Refused(token),
                Value::Object(claims) => Case::Signed(token, claims),
                _ => Case::Raw(token),
            }
        }
    })
}

/// Claims around `now`: each standard one present, absent, or of another type.
fn claims(u: &mut Unstructured<'_>, now: f64) -> Result<Value> {
    let mut claims = if u.ratio(1, 8)? { gen::object(u, 1)? } else { json!({}) };
    if u.ratio(7, 8)? {
        claims["sub"] = if u.ratio(7, 8)? { Value::String(gen::string(u)?) } else { gen::value(u, 1)? };
    }
    for (name, offsets) in [("exp", [3600.0, 5.1, 4.9, -4.9, -5.0]), ("nbf", [-3600.0, -5.1, 4.9, 5.0, 3600.0])] {
        match u.choose_index(8)? {
            0 => {}
            1 => claims[name] = gen::value(u, 1)?,
            _ => claims[name] = Value::from(now + u.choose(&offsets)?),
        }
    }
    if u.arbitrary()? {
        claims["iat"] = if u.arbitrary()? { Value::from(now - 3600.0) } else { gen::value(u, 1)? };
    }
    if u.arbitrary()? {
        claims["info"] = if u.ratio(3, 4)? { gen::object(u, 2)? } else { gen::value(u, 1)? };
    }
    Ok(claims)
}

fn json_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// Changes the signature, or the segments around it, so the token no longer verifies.
fn damage(u: &mut Unstructured<'_>, token: &mut String) -> Result<()> {
    let signature_start = token.rfind('.').map_or(0, |dot| dot + 1);
    match u.choose_index(4)? {
        0 => token.truncate(signature_start),
        1 => token.push_str(".x"),
        2 => {
            // Another base64url character at one place of the signature.
            let at = signature_start + u.choose_index(token.len() - signature_start)?;
            let old = token.as_bytes()[at];
            let new = if old == b'A' { "B" } else { "A" };
            token.replace_range(at..=at, new);
        }
        _ => token.insert(signature_start, 'A'),
    }
    Ok(())
}

/// The query string carrying the case's token: alone, among other parameters, or twice (which
/// is refused whatever the token: a repeated `token` cannot be trusted).
fn query(u: &mut Unstructured<'_>, case: &mut Case) -> Result<String> {
    let token = match case {
        Case::Raw(text) => return Ok(text.clone()),
        Case::Refused(token) | Case::Signed(token, _) | Case::Valid(token, _) => token.clone(),
    };
    Ok(match u.choose_index(8)? {
        0 => format!("v=2&token={token}&x"),
        1 => {
            *case = Case::Refused(token.clone());
            format!("token={token}&token={token}")
        }
        _ => format!("token={token}"),
    })
}
