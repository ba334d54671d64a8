//! Messaging over the wire (docs/protocol.md "Messaging" and the Messaging lines of "Precise
//! rules").

mod collab;
mod common;

use std::sync::Arc;
use std::time::Duration;

use collab::{assert_quiet, connect_as, start};
use common::{error_reply, ok_reply, within, Client, TestServer, WAIT};
use serde_json::{json, Value};
use snorky::connection::Connection;
use snorky::service::{AnyService, Policy, PolicyFuture};
use snorky::services::messaging::MessagingService;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

async fn server() -> (TestServer, MessagingService) {
    let messaging = MessagingService::new("messaging");
    (start(vec![AnyService::Messaging(messaging.clone())]).await, messaging)
}

async fn register(client: &mut Client, name: &str) {
    let reply = client.call("messaging", "registerParticipant", json!({"name": name}), json!("reg")).await;
    assert_eq!(reply, ok_reply("messaging", &json!("reg"), &Value::Null), "registering {name:?}");
}

async fn list(client: &mut Client) -> Value {
    let reply = client.call("messaging", "listParticipants", json!({}), json!("list")).await;
    assert_eq!(reply["message"]["type"], "response", "{reply}");
    reply["message"]["data"].clone()
}

fn delivered(sender: &str, dest: &str, body: &Value) -> Value {
    json!({"service": "messaging", "message": {"type": "message", "sender": sender, "dest": dest, "body": body}})
}

#[tokio::test]
async fn register_answers_null_and_a_taken_name_is_already_registered() {
    let (server, _) = server().await;
    // No identity needed.
    let mut first = server.connect().await;
    let reply = first.call("messaging", "registerParticipant", json!({"name": "alice"}), json!(1)).await;
    assert_eq!(reply, ok_reply("messaging", &json!(1), &Value::Null));
    let reply = first.call("messaging", "registerParticipant", json!({"name": "alice"}), json!(2)).await;
    assert_eq!(reply, error_reply("messaging", &json!(2), "Name already registered"));
    let mut second = connect_as(&server, "alice").await;
    let reply = second.call("messaging", "registerParticipant", json!({"name": "alice"}), json!(3)).await;
    assert_eq!(reply, error_reply("messaging", &json!(3), "Name already registered"));
    // A connection may hold several names.
    register(&mut first, "alice-work").await;
    register(&mut second, "bob").await;
    assert_eq!(list(&mut second).await, json!(["alice", "alice-work", "bob"]));
}

#[tokio::test]
async fn unregister_frees_only_ones_own_names() {
    let (server, _) = server().await;
    let mut alice = server.connect().await;
    let mut bob = server.connect().await;
    register(&mut alice, "alice").await;
    let reply = bob.call("messaging", "unregisterParticipant", json!({"name": "alice"}), json!(1)).await;
    assert_eq!(reply, error_reply("messaging", &json!(1), "Invalid participant"));
    let reply = bob.call("messaging", "unregisterParticipant", json!({"name": "nobody"}), json!(2)).await;
    assert_eq!(reply, error_reply("messaging", &json!(2), "Unknown participant"));
    let reply = alice.call("messaging", "unregisterParticipant", json!({"name": "alice"}), json!(3)).await;
    assert_eq!(reply, ok_reply("messaging", &json!(3), &Value::Null));
    let reply = alice.call("messaging", "unregisterParticipant", json!({"name": "alice"}), json!(4)).await;
    assert_eq!(reply, error_reply("messaging", &json!(4), "Unknown participant"));
    // The name is free for anyone now.
    register(&mut bob, "alice").await;
    assert_eq!(list(&mut alice).await, json!(["alice"]));
}

#[tokio::test]
async fn list_participants_is_every_name_sorted_by_code_point() {
    let (server, _) = server().await;
    let mut clients = [server.connect().await, server.connect().await];
    assert_eq!(list(&mut clients[0]).await, json!([]));
    // U+FF5E sorts before U+1F600 by code point, but after it in UTF-16 order; "Z" < "a" < "é".
    for (index, name) in ["é", "a", "😀", "\u{ff5e}", "Z", "ab", ""].into_iter().enumerate() {
        register(&mut clients[index % 2], name).await;
    }
    let [mut one, mut two] = clients;
    let expected = json!(["", "Z", "a", "ab", "é", "\u{ff5e}", "😀"]);
    assert_eq!(list(&mut one).await, expected);
    assert_eq!(list(&mut two).await, expected);
    let reply = one.call("messaging", "listParticipants", json!({"all": true}), json!(1)).await;
    assert_eq!(reply, error_reply("messaging", &json!(1), "Invalid params"));
}

#[tokio::test]
async fn send_delivers_to_the_destination_with_exactly_the_protocol_fields() {
    let (server, _) = server().await;
    let mut alice = server.connect().await;
    let mut bob = server.connect().await;
    let mut carol = server.connect().await;
    register(&mut alice, "alice").await;
    register(&mut bob, "bob").await;
    register(&mut carol, "carol").await;
    for (index, body) in
        [json!({"text": "hi"}), Value::Null, json!([1, "two"]), json!("😀"), json!(0)].iter().enumerate()
    {
        let params = json!({"sender": "alice", "dest": "bob", "body": body});
        let reply = alice.call("messaging", "send", params, json!(index)).await;
        assert_eq!(reply, ok_reply("messaging", &json!(index), &Value::Null));
        assert_eq!(bob.recv().await, delivered("alice", "bob", body));
    }
    // Only the destination receives it.
    assert_quiet(&mut carol, "messaging").await;
    assert_quiet(&mut alice, "messaging").await;
    // Sending to one's own name works.
    alice.request("messaging", "send", json!({"sender": "alice", "dest": "alice", "body": 1}), json!("self")).await;
    assert_eq!(alice.recv().await, delivered("alice", "alice", &json!(1)));
    assert_eq!(alice.recv().await, ok_reply("messaging", &json!("self"), &Value::Null));
}

#[tokio::test]
async fn send_refuses_a_sender_that_is_not_yours_and_an_unknown_destination() {
    let (server, _) = server().await;
    let mut alice = server.connect().await;
    let mut bob = server.connect().await;
    register(&mut alice, "alice").await;
    register(&mut bob, "bob").await;
    let reply = alice.call("messaging", "send", json!({"sender": "nobody", "dest": "bob", "body": 1}), json!(1)).await;
    assert_eq!(reply, error_reply("messaging", &json!(1), "Invalid sender"));
    let reply = alice.call("messaging", "send", json!({"sender": "bob", "dest": "bob", "body": 1}), json!(2)).await;
    assert_eq!(reply, error_reply("messaging", &json!(2), "Invalid sender"));
    let reply =
        alice.call("messaging", "send", json!({"sender": "alice", "dest": "nobody", "body": 1}), json!(3)).await;
    assert_eq!(reply, error_reply("messaging", &json!(3), "Unknown destination"));
    // The sender is checked first.
    let reply = alice.call("messaging", "send", json!({"sender": "bob", "dest": "nobody", "body": 1}), json!(4)).await;
    assert_eq!(reply, error_reply("messaging", &json!(4), "Invalid sender"));
    assert_quiet(&mut bob, "messaging").await;
}

#[tokio::test]
async fn parameters_are_checked() {
    let (server, _) = server().await;
    let mut alice = server.connect().await;
    register(&mut alice, "alice").await;
    let cases = [
        ("registerParticipant", json!({})),
        ("registerParticipant", json!({"name": 7})),
        ("registerParticipant", json!({"name": null})),
        ("registerParticipant", json!({"name": "x", "extra": 1})),
        ("unregisterParticipant", json!({"name": ["alice"]})),
        ("send", json!({"sender": "alice", "dest": "alice"})),
        ("send", json!({"sender": "alice", "body": 1})),
        ("send", json!({"sender": 1, "dest": "alice", "body": 1})),
        ("send", json!({"sender": "alice", "dest": null, "body": 1})),
        ("send", json!({"sender": "alice", "dest": "alice", "body": 1, "cc": "x"})),
    ];
    for (index, (command, params)) in cases.into_iter().enumerate() {
        let reply = alice.call("messaging", command, params.clone(), json!(index)).await;
        assert_eq!(reply, error_reply("messaging", &json!(index), "Invalid params"), "{command} {params}");
    }
    let reply = alice.call("messaging", "broadcast", json!({}), json!("b")).await;
    assert_eq!(reply, error_reply("messaging", &json!("b"), "Unknown command"));
}

#[tokio::test]
async fn disconnecting_frees_every_name_within_100_ms() {
    let (server, messaging) = server().await;
    let mut leaving = server.connect().await;
    let mut staying = server.connect().await;
    register(&mut leaving, "a").await;
    register(&mut leaving, "b").await;
    register(&mut staying, "c").await;
    let closed_at = Instant::now();
    let close = CloseFrame { code: CloseCode::Normal, reason: "".into() };
    within(WAIT, "the close frame to be sent", leaving.ws.close(Some(close))).await.expect("open");
    let service = messaging.clone();
    common::eventually(WAIT, "the closed connection's names to be freed", || {
        let service = service.clone();
        async move { service.participants() == vec!["c"] }
    })
    .await;
    let took = closed_at.elapsed();
    assert!(took <= Duration::from_millis(100), "took {took:?}");
    assert_eq!(list(&mut staying).await, json!(["c"]));
    let reply = staying.call("messaging", "send", json!({"sender": "c", "dest": "a", "body": 1}), json!(1)).await;
    assert_eq!(reply, error_reply("messaging", &json!(1), "Unknown destination"));
    register(&mut staying, "a").await;
    // A dropped TCP connection too.
    let mut dropped = server.connect().await;
    register(&mut dropped, "d").await;
    drop(dropped);
    let took = common::eventually(WAIT, "the dropped connection's name to be freed", || {
        let service = messaging.clone();
        async move { service.participants() == vec!["a", "c"] }
    })
    .await;
    assert!(took <= Duration::from_millis(100), "took {took:?}");
}

/// Allows only names that start with the connection's identity; fails on "boom".
#[derive(Debug)]
struct OwnPrefix;

impl Policy for OwnPrefix {
    fn decide(&self, connection: &Arc<Connection>, subject: &Value) -> PolicyFuture {
        let identity = connection.identity().id.clone().unwrap_or_default();
        let name = subject.as_str().unwrap_or_default().to_owned();
        Box::pin(async move {
            if name == "boom" {
                return Err("the hook raised".to_owned());
            }
            Ok(!identity.is_empty() && name.starts_with(&identity))
        })
    }
}

#[tokio::test]
async fn the_name_policy_refuses_with_name_not_allowed() {
    let messaging = MessagingService::new("messaging").with_name_policy(Arc::new(OwnPrefix));
    let server = start(vec![AnyService::Messaging(messaging.clone())]).await;
    let mut alice = connect_as(&server, "alice").await;
    let reply = alice.call("messaging", "registerParticipant", json!({"name": "bob"}), json!(1)).await;
    assert_eq!(reply, error_reply("messaging", &json!(1), "Name not allowed"));
    let reply = alice.call("messaging", "registerParticipant", json!({"name": "boom"}), json!(2)).await;
    assert_eq!(reply, error_reply("messaging", &json!(2), "Internal error"));
    register(&mut alice, "alice:desk").await;
    // A taken name is "already registered" whatever the policy would say.
    let mut mallory = connect_as(&server, "mallory").await;
    let reply = mallory.call("messaging", "registerParticipant", json!({"name": "alice:desk"}), json!(3)).await;
    assert_eq!(reply, error_reply("messaging", &json!(3), "Name already registered"));
    let mut anonymous = server.connect().await;
    let reply = anonymous.call("messaging", "registerParticipant", json!({"name": "x"}), json!(4)).await;
    assert_eq!(reply, error_reply("messaging", &json!(4), "Name not allowed"));
    assert_eq!(messaging.participants(), vec!["alice:desk"]);
}
