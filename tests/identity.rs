//! Connection identity over the wire (docs/protocol.md "Identity"): tokens checked at the WebSocket
//! handshake, anonymous connections without one, and the identity services see.

mod collab;
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use collab::{connect_as, refusal, start, token, token_with_info, try_connect_query, try_connect_request, SECRET};
use common::{error_reply, ok_reply, TestServer};
use serde_json::{json, Value};
use snorky::connection::{Connection, Identity};
use snorky::server::ServerConfig;
use snorky::service::{AnyService, Policy, PolicyFuture};
use snorky::services::chat::ChatService;
use snorky::services::cursors::CursorsService;
use snorky::services::messaging::MessagingService;
use snorky::tokens;

fn services() -> Vec<AnyService> {
    vec![
        AnyService::Chat(ChatService::new("chat")),
        AnyService::Cursors(CursorsService::new("cursors")),
        AnyService::Messaging(MessagingService::new("messaging")),
    ]
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970").as_secs()
}

/// A token with these exact header and claims, signed with `secret`.
fn forge(header: &Value, claims: &Value, secret: &str) -> String {
    tokens::sign(header.to_string().as_bytes(), claims.to_string().as_bytes(), secret.as_bytes())
}

fn hs256() -> Value {
    json!({"alg": "HS256", "typ": "JWT"})
}

async fn assert_refused(server: &TestServer, token: &str, expected_text: &str) {
    let (status, body) = refusal(try_connect_query(server, &format!("?token={token}")).await);
    assert_eq!(status, 401, "token {token:?}: {body}");
    assert!(body.contains(expected_text), "token {token:?}: body {body:?} should say {expected_text:?}");
    assert!(body.len() < 100, "a short text: {body:?}");
}

#[tokio::test]
async fn without_a_token_a_connection_is_anonymous() {
    let server = start(services()).await;
    let mut client = server.connect().await;
    let reply = client.call("chat", "join", json!({"channel": "lobby"}), json!(1)).await;
    assert_eq!(reply, error_reply("chat", &json!(1), "Not authenticated"));
    let reply = client.call("cursors", "join", json!({"document": "doc"}), json!(2)).await;
    assert_eq!(reply, error_reply("cursors", &json!(2), "Not authenticated"));
    // Messaging needs no identity.
    let reply = client.call("messaging", "registerParticipant", json!({"name": "anon"}), json!(3)).await;
    assert_eq!(reply, ok_reply("messaging", &json!(3), &Value::Null));
}

#[tokio::test]
async fn a_valid_token_gives_the_connection_its_identity() {
    let server = start(services()).await;
    let mut alice = connect_as(&server, "alice").await;
    let reply = alice.call("chat", "join", json!({"channel": "lobby"}), json!(1)).await;
    assert_eq!(reply, ok_reply("chat", &json!(1), &json!({"members": ["alice"]})));
    // Other query parameters are ignored.
    let mut bob = try_connect_query(&server, &format!("?v=1&token={}&lang=en", token("bob"))).await.expect("accepted");
    let reply = bob.call("chat", "join", json!({"channel": "lobby"}), json!(2)).await;
    assert_eq!(reply, ok_reply("chat", &json!(2), &json!({"members": ["alice", "bob"]})));
    // A query without a token is anonymous.
    let mut anonymous = try_connect_query(&server, "?v=1").await.expect("accepted");
    let reply = anonymous.call("chat", "join", json!({"channel": "lobby"}), json!(3)).await;
    assert_eq!(reply, error_reply("chat", &json!(3), "Not authenticated"));
}

/// Records the identity of every connection it is asked about, and allows everything.
#[derive(Debug, Default)]
struct Recorder {
    seen: Mutex<Vec<Identity>>,
}

impl Policy for Recorder {
    fn decide(&self, connection: &Arc<Connection>, _subject: &Value) -> PolicyFuture {
        self.seen.lock().expect("not poisoned").push(connection.identity().clone());
        Box::pin(async { Ok(true) })
    }
}

#[tokio::test]
async fn services_see_the_identity_and_info_of_the_token() {
    let recorder = Arc::new(Recorder::default());
    let chat = ChatService::new("chat").with_join_policy(Arc::clone(&recorder) as Arc<dyn Policy>);
    let messaging = MessagingService::new("messaging").with_name_policy(Arc::clone(&recorder) as Arc<dyn Policy>);
    let server = start(vec![AnyService::Chat(chat), AnyService::Messaging(messaging)]).await;
    let info = json!({"name": "Alice Liddell", "avatar": "/a.png", "roles": ["editor"], "n": 1});
    let mut alice =
        try_connect_query(&server, &format!("?token={}", token_with_info("alice", &info))).await.expect("accepted");
    let reply = alice.call("chat", "join", json!({"channel": "c"}), json!(1)).await;
    assert_eq!(reply, ok_reply("chat", &json!(1), &json!({"members": ["alice"]})));
    let mut anonymous = server.connect().await;
    let reply = anonymous.call("messaging", "registerParticipant", json!({"name": "x"}), json!(2)).await;
    assert_eq!(reply, ok_reply("messaging", &json!(2), &Value::Null));
    let seen = recorder.seen.lock().expect("not poisoned").clone();
    assert_eq!(seen, vec![Identity { id: Some("alice".into()), info: Some(info) }, Identity::default()]);
}

#[tokio::test]
async fn an_expired_token_fails_the_handshake_with_401() {
    let server = start(services()).await;
    let expired = forge(&hs256(), &json!({"sub": "alice", "exp": now() - 60}), SECRET);
    assert_refused(&server, &expired, "expired").await;
    let long_expired = forge(&hs256(), &json!({"sub": "alice", "exp": 1_000_000_000}), SECRET);
    assert_refused(&server, &long_expired, "expired").await;
    // A token that is still valid (in a second's time) is accepted.
    let fresh = forge(&hs256(), &json!({"sub": "alice", "exp": now() + 30}), SECRET);
    assert!(try_connect_query(&server, &format!("?token={fresh}")).await.is_ok());
}

#[tokio::test]
async fn a_token_signed_with_another_secret_fails_with_401() {
    let server = start(services()).await;
    let foreign =
        tokens::issue("alice", b"some-other-secret-value", Duration::from_secs(60), None).expect("a short token");
    assert_refused(&server, &foreign, "signature").await;
    // A valid token whose claims were swapped for another identity's.
    let valid = token("alice");
    let parts: Vec<&str> = valid.split('.').collect();
    let claims = URL_SAFE_NO_PAD.encode(json!({"sub": "root", "exp": now() + 60}).to_string());
    assert_refused(&server, &format!("{}.{claims}.{}", parts[0], parts[2]), "signature").await;
    // A flipped bit in the signature.
    let mut signature = URL_SAFE_NO_PAD.decode(parts[2]).expect("base64url");
    signature[0] ^= 1;
    let tampered = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(signature));
    assert_refused(&server, &tampered, "signature").await;
}

#[tokio::test]
async fn malformed_tokens_fail_with_401() {
    let server = start(services()).await;
    for token in ["", "garbage", "a.b", "a.b.c", "a.b.c.d", "%7B%7D.%7B%7D.x"] {
        assert_refused(&server, token, "Invalid connection token").await;
    }
    // JSON that is not an object, under a good signature.
    let not_object = tokens::sign(hs256().to_string().as_bytes(), b"[1,2]", SECRET.as_bytes());
    assert_refused(&server, &not_object, "malformed").await;
    // A token given twice cannot be trusted.
    let valid = token("alice");
    let (status, text) = refusal(try_connect_query(&server, &format!("?token={valid}&token={valid}")).await);
    assert_eq!((status, text.as_str()), (401, "Invalid connection token: more than one token"));
}

#[tokio::test]
async fn a_token_without_a_usable_sub_fails_with_401() {
    let server = start(services()).await;
    let exp = now() + 60;
    for claims in [
        json!({"exp": exp}),
        json!({"sub": "", "exp": exp}),
        json!({"sub": 42, "exp": exp}),
        json!({"sub": null, "exp": exp}),
    ] {
        assert_refused(&server, &forge(&hs256(), &claims, SECRET), "sub").await;
    }
}

#[tokio::test]
async fn exp_is_required_and_info_must_be_an_object() {
    let server = start(services()).await;
    assert_refused(&server, &forge(&hs256(), &json!({"sub": "alice"}), SECRET), "exp").await;
    let bad_info = json!({"sub": "alice", "exp": now() + 60, "info": "admin"});
    assert_refused(&server, &forge(&hs256(), &bad_info, SECRET), "info").await;
}

#[tokio::test]
async fn only_hs256_tokens_are_accepted() {
    let server = start(services()).await;
    let claims = json!({"sub": "alice", "exp": now() + 60});
    // The classic forgery: "alg": "none" and no signature.
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT"}).to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    assert_refused(&server, &none, "HS256").await;
    for header in [json!({"alg": "None"}), json!({"alg": "HS384"}), json!({"alg": "RS256"}), json!({"typ": "JWT"})] {
        assert_refused(&server, &forge(&header, &claims, SECRET), "HS256").await;
    }
}

#[tokio::test]
async fn a_token_is_refused_when_the_server_has_no_token_secret() {
    let server = TestServer::start_services(common::test_config(), services(), Vec::new()).await;
    assert_refused(&server, &token("alice"), "server has no token_secret").await;
    // Without a token the connection is accepted, anonymous.
    let mut client = server.connect().await;
    let reply = client.call("chat", "join", json!({"channel": "c"}), json!(1)).await;
    assert_eq!(reply, error_reply("chat", &json!(1), "Not authenticated"));
}

#[tokio::test]
async fn the_origin_is_checked_before_the_token() {
    let config = ServerConfig { allowed_origins: vec!["https://app.example.com".into()], ..collab::config() };
    let server = TestServer::start_services(config, services(), Vec::new()).await;
    let query = format!("?token={}", token("alice"));
    let (status, _) = refusal(try_connect_request(&server, &query, Some("https://evil.example.com")).await);
    assert_eq!(status, 403);
    let (status, _) = refusal(try_connect_request(&server, "?token=bad", Some("https://app.example.com")).await);
    assert_eq!(status, 401);
    let mut client = try_connect_request(&server, &query, Some("https://app.example.com")).await.expect("accepted");
    let reply = client.call("chat", "join", json!({"channel": "c"}), json!(1)).await;
    assert_eq!(reply, ok_reply("chat", &json!(1), &json!({"members": ["alice"]})));
}

#[tokio::test]
async fn a_refused_handshake_opens_no_connection() {
    let server = start(services()).await;
    for _ in 0..3 {
        let (status, _) = refusal(try_connect_query(&server, "?token=nope").await);
        assert_eq!(status, 401);
    }
    assert_eq!(common::metric(&server, "snorky_connections_opened_total").await, 0);
    let _client = connect_as(&server, "alice").await;
    common::eventually(common::WAIT, "the accepted connection to be counted", || async {
        common::metric(&server, "snorky_connections_opened_total").await == 1
    })
    .await;
}
