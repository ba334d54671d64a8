//! Chat over the wire (docs/protocol.md "Chat" and the Chat lines of "Precise rules").

mod collab;
mod common;

use std::sync::Arc;
use std::time::Duration;

use collab::{assert_quiet, connect_as, start, without_timestamp};
use common::{error_reply, ok_reply, within, Client, TestServer, WAIT};
use serde_json::{json, Value};
use snorky::connection::Connection;
use snorky::service::{AnyService, Policy, PolicyFuture};
use snorky::services::chat::ChatService;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

async fn server() -> TestServer {
    start(vec![AnyService::Chat(ChatService::new("chat"))]).await
}

async fn join(client: &mut Client, channel: &Value) -> Value {
    let reply = client.call("chat", "join", json!({"channel": channel}), json!("join")).await;
    assert_eq!(reply["message"]["type"], "response", "joining {channel}: {reply}");
    reply["message"]["data"].clone()
}

fn presence(from: &str, channel: &Value, status: &str) -> Value {
    json!({"service": "chat", "message": {"type": "presence", "from": from, "channel": channel, "status": status}})
}

fn message(from: &str, channel: &Value, body: &Value) -> Value {
    json!({"service": "chat", "message": {"type": "message", "from": from, "channel": channel, "body": body}})
}

fn read(channel: &Value) -> Value {
    json!({"service": "chat", "message": {"type": "read", "channel": channel}})
}

/// The next frame, with its timestamp checked and removed.
async fn next(client: &mut Client) -> Value {
    without_timestamp(client.recv().await)
}

#[tokio::test]
async fn join_answers_the_members_including_the_caller() {
    let server = server().await;
    let mut alice = connect_as(&server, "alice").await;
    let reply = alice.call("chat", "join", json!({"channel": "lobby"}), json!(1)).await;
    assert_eq!(reply, ok_reply("chat", &json!(1), &json!({"members": ["alice"]})));
    let mut bob = connect_as(&server, "bob").await;
    assert_eq!(join(&mut bob, &json!("lobby")).await, json!({"members": ["alice", "bob"]}));
    // Another channel has its own members.
    assert_eq!(join(&mut bob, &json!("kitchen")).await, json!({"members": ["bob"]}));
}

#[tokio::test]
async fn join_needs_an_identity() {
    let server = server().await;
    let mut anonymous = server.connect().await;
    let reply = anonymous.call("chat", "join", json!({"channel": "lobby"}), json!(1)).await;
    assert_eq!(reply, error_reply("chat", &json!(1), "Not authenticated"));
    // Not a member, so everything else is "Not joined"; `read` is always null.
    let reply = anonymous.call("chat", "send", json!({"channel": "lobby", "body": "hi"}), json!(2)).await;
    assert_eq!(reply, error_reply("chat", &json!(2), "Not joined"));
    let reply = anonymous.call("chat", "leave", json!({"channel": "lobby"}), json!(3)).await;
    assert_eq!(reply, error_reply("chat", &json!(3), "Not joined"));
    let reply = anonymous.call("chat", "read", json!({"channel": "lobby"}), json!(4)).await;
    assert_eq!(reply, ok_reply("chat", &json!(4), &Value::Null));
}

#[tokio::test]
async fn joining_twice_on_one_connection_is_already_joined_but_other_connections_may_join() {
    let server = server().await;
    let mut tab1 = connect_as(&server, "alice").await;
    join(&mut tab1, &json!("lobby")).await;
    let reply = tab1.call("chat", "join", json!({"channel": "lobby"}), json!(2)).await;
    assert_eq!(reply, error_reply("chat", &json!(2), "Already joined"));
    // The same identity on another connection joins; it is listed once.
    let mut tab2 = connect_as(&server, "alice").await;
    let reply = tab2.call("chat", "join", json!({"channel": "lobby"}), json!(3)).await;
    assert_eq!(reply, ok_reply("chat", &json!(3), &json!({"members": ["alice"]})));
    let mut bob = connect_as(&server, "bob").await;
    assert_eq!(join(&mut bob, &json!("lobby")).await, json!({"members": ["alice", "bob"]}));
}

#[tokio::test]
async fn leave_answers_null_then_not_joined() {
    let server = server().await;
    let mut alice = connect_as(&server, "alice").await;
    let reply = alice.call("chat", "leave", json!({"channel": "lobby"}), json!(1)).await;
    assert_eq!(reply, error_reply("chat", &json!(1), "Not joined"));
    join(&mut alice, &json!("lobby")).await;
    let reply = alice.call("chat", "leave", json!({"channel": "lobby"}), json!(2)).await;
    assert_eq!(reply, ok_reply("chat", &json!(2), &Value::Null));
    let reply = alice.call("chat", "leave", json!({"channel": "lobby"}), json!(3)).await;
    assert_eq!(reply, error_reply("chat", &json!(3), "Not joined"));
    // Another connection of the same identity did not join, whatever this one did.
    join(&mut alice, &json!("lobby")).await;
    let mut tab2 = connect_as(&server, "alice").await;
    let reply = tab2.call("chat", "leave", json!({"channel": "lobby"}), json!(4)).await;
    assert_eq!(reply, error_reply("chat", &json!(4), "Not joined"));
    // After leaving, joining again works.
    let reply = alice.call("chat", "leave", json!({"channel": "lobby"}), json!(5)).await;
    assert_eq!(reply, ok_reply("chat", &json!(5), &Value::Null));
    assert_eq!(join(&mut alice, &json!("lobby")).await, json!({"members": ["alice"]}));
}

#[tokio::test]
async fn send_reaches_every_connection_in_the_channel_the_senders_included() {
    let server = server().await;
    let mut alice = connect_as(&server, "alice").await;
    let mut alice_tab = connect_as(&server, "alice").await;
    let mut bob = connect_as(&server, "bob").await;
    let mut carol_elsewhere = connect_as(&server, "carol").await;
    let mut alice_elsewhere = connect_as(&server, "alice").await;
    join(&mut alice, &json!("lobby")).await;
    join(&mut alice_tab, &json!("lobby")).await;
    join(&mut bob, &json!("lobby")).await;
    join(&mut carol_elsewhere, &json!("kitchen")).await;
    join(&mut alice_elsewhere, &json!("kitchen")).await;
    // Presence that reached alice's connections when bob joined.
    assert_eq!(next(&mut alice).await, presence("bob", &json!("lobby"), "joined"));
    assert_eq!(next(&mut alice_tab).await, presence("bob", &json!("lobby"), "joined"));
    assert_eq!(next(&mut carol_elsewhere).await, presence("alice", &json!("kitchen"), "joined"));

    let body = json!({"text": "hello", "mentions": ["bob"]});
    bob.request("chat", "send", json!({"channel": "lobby", "body": body}), json!(7)).await;
    // The message is queued before the reply (the effect precedes the answer).
    assert_eq!(next(&mut bob).await, message("bob", &json!("lobby"), &body));
    assert_eq!(bob.recv().await, ok_reply("chat", &json!(7), &Value::Null));
    assert_eq!(next(&mut alice).await, message("bob", &json!("lobby"), &body));
    assert_eq!(next(&mut alice_tab).await, message("bob", &json!("lobby"), &body));
    // Members of other channels get nothing, even alice's connection there.
    assert_quiet(&mut carol_elsewhere, "chat").await;
    assert_quiet(&mut alice_elsewhere, "chat").await;
}

#[tokio::test]
async fn send_needs_membership_and_a_body_that_may_be_null() {
    let server = server().await;
    let mut alice = connect_as(&server, "alice").await;
    let reply = alice.call("chat", "send", json!({"channel": "lobby", "body": "x"}), json!(1)).await;
    assert_eq!(reply, error_reply("chat", &json!(1), "Not joined"));
    // Another connection of the same identity being a member does not make this one one.
    let mut tab = connect_as(&server, "alice").await;
    join(&mut tab, &json!("lobby")).await;
    let reply = alice.call("chat", "send", json!({"channel": "lobby", "body": "x"}), json!(2)).await;
    assert_eq!(reply, error_reply("chat", &json!(2), "Not joined"));
    for body in [Value::Null, json!(0), json!(""), json!([1, {"a": null}]), json!("héllo 😀")] {
        tab.request("chat", "send", json!({"channel": "lobby", "body": body}), json!("s")).await;
        assert_eq!(next(&mut tab).await, message("alice", &json!("lobby"), &body));
        assert_eq!(tab.recv().await, ok_reply("chat", &json!("s"), &Value::Null));
    }
    let reply = tab.call("chat", "send", json!({"channel": "lobby"}), json!(3)).await;
    assert_eq!(reply, error_reply("chat", &json!(3), "Invalid params"));
}

#[tokio::test]
async fn a_first_connection_joining_is_announced_to_the_others_only() {
    let server = server().await;
    let mut alice = connect_as(&server, "alice").await;
    join(&mut alice, &json!("lobby")).await;
    let mut bob = connect_as(&server, "bob").await;
    assert_eq!(join(&mut bob, &json!("lobby")).await, json!({"members": ["alice", "bob"]}));
    assert_eq!(next(&mut alice).await, presence("bob", &json!("lobby"), "joined"));
    // join pushes nothing to the joiner.
    assert_quiet(&mut bob, "chat").await;
    // bob's second connection: no presence anywhere.
    let mut bob_tab = connect_as(&server, "bob").await;
    assert_eq!(join(&mut bob_tab, &json!("lobby")).await, json!({"members": ["alice", "bob"]}));
    assert_quiet(&mut alice, "chat").await;
    assert_quiet(&mut bob, "chat").await;
    assert_quiet(&mut bob_tab, "chat").await;
}

#[tokio::test]
async fn presence_left_goes_out_when_the_last_connection_of_an_identity_leaves() {
    let server = server().await;
    let channel = json!("lobby");
    let mut alice = connect_as(&server, "alice").await;
    join(&mut alice, &channel).await;
    let mut bob = connect_as(&server, "bob").await;
    let mut bob_tab = connect_as(&server, "bob").await;
    join(&mut bob, &channel).await;
    join(&mut bob_tab, &channel).await;
    assert_eq!(next(&mut alice).await, presence("bob", &channel, "joined"));
    // One of bob's two connections leaves: bob is still there.
    let reply = bob.call("chat", "leave", json!({"channel": "lobby"}), json!(1)).await;
    assert_eq!(reply, ok_reply("chat", &json!(1), &Value::Null));
    assert_quiet(&mut alice, "chat").await;
    assert_quiet(&mut bob_tab, "chat").await;
    // The last one leaves: alice is told, bob's connections are not.
    let reply = bob_tab.call("chat", "leave", json!({"channel": "lobby"}), json!(2)).await;
    assert_eq!(reply, ok_reply("chat", &json!(2), &Value::Null));
    assert_eq!(next(&mut alice).await, presence("bob", &channel, "left"));
    assert_quiet(&mut bob, "chat").await;
    assert_quiet(&mut bob_tab, "chat").await;
    // bob rejoining is a first connection again.
    join(&mut bob, &channel).await;
    assert_eq!(next(&mut alice).await, presence("bob", &channel, "joined"));
}

#[tokio::test]
async fn disconnecting_leaves_every_channel_and_sends_left_within_100_ms() {
    let chat = ChatService::new("chat");
    let server = start(vec![AnyService::Chat(chat.clone())]).await;
    let mut alice = connect_as(&server, "alice").await;
    let mut carol = connect_as(&server, "carol").await;
    join(&mut alice, &json!("a")).await;
    join(&mut carol, &json!(["b", 2])).await;
    let mut bob = connect_as(&server, "bob").await;
    join(&mut bob, &json!("a")).await;
    join(&mut bob, &json!(["b", 2])).await;
    assert_eq!(next(&mut alice).await, presence("bob", &json!("a"), "joined"));
    assert_eq!(next(&mut carol).await, presence("bob", &json!(["b", 2]), "joined"));

    let closed_at = Instant::now();
    let close = CloseFrame { code: CloseCode::Normal, reason: "".into() };
    within(WAIT, "the close frame to be sent", bob.ws.close(Some(close))).await.expect("open");
    assert_eq!(next(&mut alice).await, presence("bob", &json!("a"), "left"));
    assert_eq!(next(&mut carol).await, presence("bob", &json!(["b", 2]), "left"));
    let took = closed_at.elapsed();
    assert!(took <= Duration::from_millis(100), "presence took {took:?}");
    assert_eq!(chat.members(&json!("a")), vec!["alice"]);
    assert_eq!(chat.members(&json!(["b", 2])), vec!["carol"]);

    // Dropping the TCP connection has the same effect; the other tab keeps the identity there.
    let mut dave = connect_as(&server, "dave").await;
    let mut dave_tab = connect_as(&server, "dave").await;
    join(&mut dave, &json!("a")).await;
    join(&mut dave_tab, &json!("a")).await;
    assert_eq!(next(&mut alice).await, presence("dave", &json!("a"), "joined"));
    drop(dave);
    common::eventually(WAIT, "dave's first connection to go", || {
        let chat = chat.clone();
        async move { chat.members(&json!("a")) == vec!["alice", "dave"] }
    })
    .await;
    assert_quiet(&mut alice, "chat").await;
    let dropped_at = Instant::now();
    drop(dave_tab);
    assert_eq!(next(&mut alice).await, presence("dave", &json!("a"), "left"));
    let took = dropped_at.elapsed();
    assert!(took <= Duration::from_millis(100), "presence took {took:?}");
}

#[tokio::test]
async fn read_goes_to_the_callers_other_connections_in_that_channel_only() {
    let server = server().await;
    let channel = json!({"room": 7});
    let mut tab1 = connect_as(&server, "alice").await;
    let mut tab2 = connect_as(&server, "alice").await;
    let mut tab3_elsewhere = connect_as(&server, "alice").await;
    let mut tab4_not_joined = connect_as(&server, "alice").await;
    let mut bob = connect_as(&server, "bob").await;
    join(&mut bob, &channel).await;
    join(&mut tab1, &channel).await;
    join(&mut tab2, &channel).await;
    join(&mut tab3_elsewhere, &json!("other")).await;
    assert_eq!(next(&mut bob).await, presence("alice", &channel, "joined"));

    let reply = tab1.call("chat", "read", json!({"channel": {"room": 7}}), json!(1)).await;
    assert_eq!(reply, ok_reply("chat", &json!(1), &Value::Null));
    assert_eq!(next(&mut tab2).await, read(&channel));
    assert_quiet(&mut tab1, "chat").await;
    assert_quiet(&mut tab3_elsewhere, "chat").await;
    assert_quiet(&mut tab4_not_joined, "chat").await;
    assert_quiet(&mut bob, "chat").await;

    // A connection that is not in the channel may still mark it read for the tabs that are.
    let reply = tab4_not_joined.call("chat", "read", json!({"channel": channel}), json!(2)).await;
    assert_eq!(reply, ok_reply("chat", &json!(2), &Value::Null));
    assert_eq!(next(&mut tab1).await, read(&channel));
    assert_eq!(next(&mut tab2).await, read(&channel));
    // Reading a channel nobody of yours is in pushes nothing.
    let reply = bob.call("chat", "read", json!({"channel": "nowhere"}), json!(3)).await;
    assert_eq!(reply, ok_reply("chat", &json!(3), &Value::Null));
    assert_quiet(&mut bob, "chat").await;
}

#[tokio::test]
async fn channels_are_json_values_compared_by_value_and_echoed_as_sent() {
    let server = server().await;
    let mut alice = connect_as(&server, "alice").await;
    let mut bob = connect_as(&server, "bob").await;
    alice
        .send_text(
            r#"{"service":"chat","message":{"command":"join","params":{"channel":{"id":1,"kind":"room"}},"callId":1}}"#,
        )
        .await;
    assert_eq!(alice.recv().await, ok_reply("chat", &json!(1), &json!({"members": ["alice"]})));
    bob.send_text(
        r#"{"service":"chat","message":{"command":"join","params":{"channel":{"kind":"room","id":1.0}},"callId":2}}"#,
    )
    .await;
    assert_eq!(bob.recv().await, ok_reply("chat", &json!(2), &json!({"members": ["alice", "bob"]})));
    let joined = next(&mut alice).await;
    assert_eq!(joined["message"]["status"], "joined");
    assert_eq!(joined["message"]["channel"]["id"].as_f64(), Some(1.0), "{joined}");
    // A string "1" is another channel than the number.
    assert_eq!(join(&mut alice, &json!("1")).await, json!({"members": ["alice"]}));
    assert_eq!(join(&mut bob, &json!(1)).await, json!({"members": ["bob"]}));
    assert_quiet(&mut alice, "chat").await;
}

#[tokio::test]
async fn parameters_are_checked() {
    let server = server().await;
    let mut alice = connect_as(&server, "alice").await;
    let cases = [
        ("join", json!({})),
        ("join", json!({"channel": "c", "extra": 1})),
        ("leave", json!({})),
        ("send", json!({"channel": "c"})),
        ("send", json!({"body": "c"})),
        ("send", json!({"channel": "c", "body": 1, "to": "x"})),
        ("read", json!({})),
        ("read", json!({"channel": "c", "timestamp": 1})),
    ];
    for (index, (command, params)) in cases.into_iter().enumerate() {
        let reply = alice.call("chat", command, params.clone(), json!(index)).await;
        assert_eq!(reply, error_reply("chat", &json!(index), "Invalid params"), "{command} {params}");
    }
    let reply = alice.call("chat", "kick", json!({"channel": "c"}), json!("k")).await;
    assert_eq!(reply, error_reply("chat", &json!("k"), "Unknown command"));
    // A null channel is a channel.
    assert_eq!(join(&mut alice, &Value::Null).await, json!({"members": ["alice"]}));
}

/// Refuses the channel "private" to everyone but "admin"; fails on "broken".
#[derive(Debug)]
struct PrivateRooms;

impl Policy for PrivateRooms {
    fn decide(&self, connection: &Arc<Connection>, subject: &Value) -> PolicyFuture {
        let admin = connection.identity().id.as_deref() == Some("admin");
        let subject = subject.clone();
        Box::pin(async move {
            match subject.as_str() {
                Some("broken") => Err("the hook raised".to_owned()),
                Some("private") => Ok(admin),
                _ => Ok(true),
            }
        })
    }
}

#[tokio::test]
async fn the_join_policy_refuses_with_not_authorized() {
    let chat = ChatService::new("chat").with_join_policy(Arc::new(PrivateRooms));
    let server = start(vec![AnyService::Chat(chat.clone())]).await;
    let mut alice = connect_as(&server, "alice").await;
    let reply = alice.call("chat", "join", json!({"channel": "private"}), json!(1)).await;
    assert_eq!(reply, error_reply("chat", &json!(1), "Not authorized"));
    assert!(chat.members(&json!("private")).is_empty(), "a refused join leaves no trace");
    let reply = alice.call("chat", "join", json!({"channel": "broken"}), json!(2)).await;
    assert_eq!(reply, error_reply("chat", &json!(2), "Internal error"));
    let reply = alice.call("chat", "join", json!({"channel": "public"}), json!(3)).await;
    assert_eq!(reply, ok_reply("chat", &json!(3), &json!({"members": ["alice"]})));
    let mut admin = connect_as(&server, "admin").await;
    let reply = admin.call("chat", "join", json!({"channel": "private"}), json!(4)).await;
    assert_eq!(reply, ok_reply("chat", &json!(4), &json!({"members": ["admin"]})));
    // Identity is checked first: an anonymous connection is "Not authenticated", not refused.
    let mut anonymous = server.connect().await;
    let reply = anonymous.call("chat", "join", json!({"channel": "private"}), json!(5)).await;
    assert_eq!(reply, error_reply("chat", &json!(5), "Not authenticated"));
}

#[tokio::test]
async fn members_see_one_order_of_messages() {
    const PER_SENDER: usize = 100;
    let server = server().await;
    let channel = json!("ordered");
    let mut listeners = Vec::new();
    for name in ["l1", "l2"] {
        let mut listener = connect_as(&server, name).await;
        join(&mut listener, &channel).await;
        listeners.push(listener);
    }
    let mut senders = Vec::new();
    for name in ["s1", "s2"] {
        let mut sender = connect_as(&server, name).await;
        join(&mut sender, &channel).await;
        senders.push(sender);
    }
    let mut tasks = Vec::new();
    for (index, mut sender) in senders.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_SENDER {
                sender
                    .request("chat", "send", json!({"channel": "ordered", "body": {"s": index, "i": i}}), json!(i))
                    .await;
            }
            sender
        }));
    }
    // Kept open until the end: a sender that closed could have requests left unprocessed.
    let mut kept = Vec::new();
    for task in tasks {
        kept.push(within(WAIT, "the senders to finish", task).await.expect("sender task"));
    }
    let mut sequences = Vec::new();
    for listener in &mut listeners {
        let mut bodies = Vec::new();
        while bodies.len() < 2 * PER_SENDER {
            let frame = next(listener).await;
            if frame["message"]["type"] == "message" {
                bodies.push(frame["message"]["body"].clone());
            }
        }
        for index in 0..2 {
            let order: Vec<u64> =
                bodies.iter().filter(|b| b["s"] == index).map(|b| b["i"].as_u64().expect("i")).collect();
            assert_eq!(order, (0..PER_SENDER as u64).collect::<Vec<_>>(), "sender {index} in order");
        }
        sequences.push(bodies);
    }
    assert_eq!(sequences[0], sequences[1], "every member sees one order");
}
