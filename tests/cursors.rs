//! Cursors over the wire (docs/protocol.md "Cursors" and the Cursors lines of "Precise rules").

mod collab;
mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use collab::{assert_quiet, call_skipping_pushes, connect_as, start};
use common::{error_reply, ok_reply, within, Client, TestServer, WAIT};
use serde_json::{json, Value};
use snorky::connection::Connection;
use snorky::service::{AnyService, Policy, PolicyFuture};
use snorky::services::cursors::CursorsService;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

async fn server() -> TestServer {
    start(vec![AnyService::Cursors(CursorsService::new("cursors"))]).await
}

async fn join(client: &mut Client, document: &Value) -> Value {
    let reply = client.call("cursors", "join", json!({"document": document}), json!("join")).await;
    assert_eq!(reply["message"]["type"], "response", "joining {document}: {reply}");
    reply["message"]["data"].clone()
}

/// Creates a cursor, asserting success; returns its public handle.
async fn create(client: &mut Client, private: &Value, document: &Value, position: &Value, status: &Value) -> u64 {
    let params = json!({"privateHandle": private, "document": document, "position": position, "status": status});
    let reply = call_skipping_pushes(client, "cursors", "createCursor", params, json!("create")).await;
    assert_eq!(reply["message"]["type"], "response", "creating {private}: {reply}");
    reply["message"]["data"].as_u64().unwrap_or_else(|| panic!("the public handle is an integer: {reply}"))
}

fn cursor(public: u64, document: &Value, position: &Value, status: &Value, owner: &str) -> Value {
    json!({"publicHandle": public, "document": document, "position": position, "status": status, "owner": owner})
}

fn pushed(kind: &str, cursor: &Value) -> Value {
    json!({"service": "cursors", "message": {"type": kind, "cursor": cursor}})
}

fn removed(public: u64, document: &Value) -> Value {
    pushed("cursorRemoved", &json!({"publicHandle": public, "document": document}))
}

#[tokio::test]
async fn join_answers_the_documents_cursors_and_pushes_nothing() {
    let server = server().await;
    let doc = json!("doc");
    let mut alice = connect_as(&server, "alice").await;
    let reply = alice.call("cursors", "join", json!({"document": "doc"}), json!(1)).await;
    assert_eq!(reply, ok_reply("cursors", &json!(1), &json!({"cursors": []})));
    let first = create(&mut alice, &json!(1), &doc, &json!({"line": 3, "ch": 7}), &json!("typing")).await;
    let second = create(&mut alice, &json!(2), &doc, &Value::Null, &json!({"color": "red"})).await;
    let mut bob = connect_as(&server, "bob").await;
    let reply = bob.call("cursors", "join", json!({"document": "doc"}), json!(2)).await;
    let expected = json!({"cursors": [
        cursor(first, &doc, &json!({"line": 3, "ch": 7}), &json!("typing"), "alice"),
        cursor(second, &doc, &Value::Null, &json!({"color": "red"}), "alice"),
    ]});
    assert_eq!(reply, ok_reply("cursors", &json!(2), &expected));
    assert_quiet(&mut alice, "cursors").await;
    assert_quiet(&mut bob, "cursors").await;
}

#[tokio::test]
async fn join_needs_an_identity_and_is_per_connection() {
    let server = server().await;
    let mut anonymous = server.connect().await;
    let reply = anonymous.call("cursors", "join", json!({"document": "doc"}), json!(1)).await;
    assert_eq!(reply, error_reply("cursors", &json!(1), "Not authenticated"));
    let params = json!({"privateHandle": 1, "document": "doc", "position": 0, "status": null});
    let reply = anonymous.call("cursors", "createCursor", params, json!(2)).await;
    assert_eq!(reply, error_reply("cursors", &json!(2), "Not joined"));

    let mut alice = connect_as(&server, "alice").await;
    join(&mut alice, &json!("doc")).await;
    let reply = alice.call("cursors", "join", json!({"document": "doc"}), json!(3)).await;
    assert_eq!(reply, error_reply("cursors", &json!(3), "Already joined"));
    let mut alice_tab = connect_as(&server, "alice").await;
    assert_eq!(join(&mut alice_tab, &json!("doc")).await, json!({"cursors": []}));
}

#[tokio::test]
async fn leave_answers_null_then_not_joined() {
    let server = server().await;
    let mut alice = connect_as(&server, "alice").await;
    let reply = alice.call("cursors", "leave", json!({"document": "doc"}), json!(1)).await;
    assert_eq!(reply, error_reply("cursors", &json!(1), "Not joined"));
    join(&mut alice, &json!("doc")).await;
    let reply = alice.call("cursors", "leave", json!({"document": "doc"}), json!(2)).await;
    assert_eq!(reply, ok_reply("cursors", &json!(2), &Value::Null));
    let reply = alice.call("cursors", "leave", json!({"document": "doc"}), json!(3)).await;
    assert_eq!(reply, error_reply("cursors", &json!(3), "Not joined"));
    assert_eq!(join(&mut alice, &json!("doc")).await, json!({"cursors": []}));
}

#[tokio::test]
async fn create_cursor_answers_a_public_handle_and_tells_the_other_connections() {
    let server = server().await;
    let doc = json!({"page": 1});
    let mut alice = connect_as(&server, "alice").await;
    let mut alice_tab = connect_as(&server, "alice").await;
    let mut bob = connect_as(&server, "bob").await;
    let mut bob_elsewhere = connect_as(&server, "bob").await;
    join(&mut alice, &doc).await;
    join(&mut alice_tab, &doc).await;
    join(&mut bob, &doc).await;
    join(&mut bob_elsewhere, &json!("other")).await;
    let params = json!({"privateHandle": 5, "document": doc, "position": [1, 2], "status": "idle"});
    let reply = alice.call("cursors", "createCursor", params, json!(1)).await;
    let public = reply["message"]["data"].as_u64().unwrap_or_else(|| panic!("an integer handle: {reply}"));
    assert_eq!(reply, ok_reply("cursors", &json!(1), &json!(public)));
    let added = pushed("cursorAdded", &cursor(public, &doc, &json!([1, 2]), &json!("idle"), "alice"));
    // Other connections, the owner's identity's included; not the creator, not other documents.
    assert_eq!(bob.recv().await, added);
    assert_eq!(alice_tab.recv().await, added);
    assert_quiet(&mut alice, "cursors").await;
    assert_quiet(&mut bob_elsewhere, "cursors").await;
}

#[tokio::test]
async fn create_cursor_errors_in_order_not_joined_reused_handle_too_many() {
    let server = server().await;
    let mut alice = connect_as(&server, "alice").await;
    let params = |handle: Value, document: &str| json!({"privateHandle": handle, "document": document, "position": 0, "status": null});
    let reply = alice.call("cursors", "createCursor", params(json!(1), "a"), json!(1)).await;
    assert_eq!(reply, error_reply("cursors", &json!(1), "Not joined"));
    join(&mut alice, &json!("a")).await;
    join(&mut alice, &json!("b")).await;
    create(&mut alice, &json!(1), &json!("a"), &json!(0), &Value::Null).await;
    // Private handles are per connection, across documents.
    let reply = alice.call("cursors", "createCursor", params(json!(1), "b"), json!(2)).await;
    assert_eq!(reply, error_reply("cursors", &json!(2), "Reused handle"));
    let reply = alice.call("cursors", "createCursor", params(json!(1.0), "a"), json!(3)).await;
    assert_eq!(reply, error_reply("cursors", &json!(3), "Reused handle"), "1.0 is the handle 1");
    // 16 per connection, over all its documents.
    for handle in 2..=16 {
        let document = if handle % 2 == 0 { "a" } else { "b" };
        create(&mut alice, &json!(handle), &json!(document), &json!(0), &Value::Null).await;
    }
    let reply = alice.call("cursors", "createCursor", params(json!(17), "b"), json!(4)).await;
    assert_eq!(reply, error_reply("cursors", &json!(4), "Too many cursors"));
    // "Reused handle" is checked before the limit; "Not joined" before both.
    let reply = alice.call("cursors", "createCursor", params(json!(16), "b"), json!(5)).await;
    assert_eq!(reply, error_reply("cursors", &json!(5), "Reused handle"));
    let reply = alice.call("cursors", "createCursor", params(json!(99), "c"), json!(6)).await;
    assert_eq!(reply, error_reply("cursors", &json!(6), "Not joined"));
    // The limit is the connection's, not the identity's.
    let mut alice_tab = connect_as(&server, "alice").await;
    join(&mut alice_tab, &json!("a")).await;
    let public = create(&mut alice_tab, &json!(17), &json!("a"), &json!(0), &Value::Null).await;
    let added = pushed("cursorAdded", &cursor(public, &json!("a"), &json!(0), &Value::Null, "alice"));
    assert_eq!(alice.recv().await, added);
    // Removing one makes room.
    let reply = alice.call("cursors", "removeCursor", json!({"privateHandle": 3}), json!(7)).await;
    assert_eq!(reply, ok_reply("cursors", &json!(7), &Value::Null));
    create(&mut alice, &json!(17), &json!("b"), &json!(0), &Value::Null).await;
}

#[tokio::test]
async fn private_handles_belong_to_the_connection() {
    let server = server().await;
    let doc = json!("doc");
    let mut alice = connect_as(&server, "alice").await;
    let mut alice_tab = connect_as(&server, "alice").await;
    let mut bob = connect_as(&server, "bob").await;
    for client in [&mut alice, &mut alice_tab, &mut bob] {
        join(client, &doc).await;
    }
    let first = create(&mut alice, &json!("h"), &doc, &json!(1), &Value::Null).await;
    let second = create(&mut alice_tab, &json!("h"), &doc, &json!(2), &Value::Null).await;
    let third = create(&mut bob, &json!("h"), &doc, &json!(3), &Value::Null).await;
    assert_eq!(HashSet::from([first, second, third]).len(), 3, "public handles are unique in the document");
    // bob cannot touch alice's cursor through bob's connection, nor has he any other.
    let reply = bob
        .call("cursors", "updateCursor", json!({"privateHandle": "other", "newData": {"position": 9}}), json!(1))
        .await;
    assert_eq!(reply, error_reply("cursors", &json!(1), "No such cursor"));
    let reply = bob.call("cursors", "removeCursor", json!({"privateHandle": 1}), json!(2)).await;
    assert_eq!(reply, error_reply("cursors", &json!(2), "No such cursor"));
    // "h" on bob's connection is bob's cursor: the update is announced with bob as owner.
    let reply =
        bob.call("cursors", "updateCursor", json!({"privateHandle": "h", "newData": {"position": 30}}), json!(3)).await;
    assert_eq!(reply, ok_reply("cursors", &json!(3), &Value::Null));
    let mut seen_by_alice = Vec::new();
    while seen_by_alice.len() < 3 {
        seen_by_alice.push(alice.recv().await);
    }
    assert_eq!(
        seen_by_alice.last(),
        Some(&pushed("cursorUpdated", &cursor(third, &doc, &json!(30), &Value::Null, "bob")))
    );
}

#[tokio::test]
async fn update_cursor_changes_position_and_or_status_and_tells_the_others() {
    let server = server().await;
    let doc = json!("doc");
    let mut alice = connect_as(&server, "alice").await;
    let mut bob = connect_as(&server, "bob").await;
    join(&mut alice, &doc).await;
    join(&mut bob, &doc).await;
    let public = create(&mut alice, &json!(1), &doc, &json!({"x": 1}), &json!("idle")).await;
    let _added = bob.recv().await;
    let steps = [
        (json!({"position": {"x": 2}}), json!({"x": 2}), json!("idle")),
        (json!({"status": {"typing": true}}), json!({"x": 2}), json!({"typing": true})),
        (json!({"position": null, "status": [1, "two", 3.5]}), Value::Null, json!([1, "two", 3.5])),
    ];
    for (index, (new_data, position, status)) in steps.into_iter().enumerate() {
        let params = json!({"privateHandle": 1, "newData": new_data});
        let reply = alice.call("cursors", "updateCursor", params, json!(index)).await;
        assert_eq!(reply, ok_reply("cursors", &json!(index), &Value::Null));
        assert_eq!(bob.recv().await, pushed("cursorUpdated", &cursor(public, &doc, &position, &status, "alice")));
    }
    assert_quiet(&mut alice, "cursors").await;
    let reply = alice
        .call("cursors", "updateCursor", json!({"privateHandle": 2, "newData": {"position": 1}}), json!("x"))
        .await;
    assert_eq!(reply, error_reply("cursors", &json!("x"), "No such cursor"));
    // newData is an object with position and/or status, and nothing else.
    for new_data in [json!({}), json!({"position": 1, "owner": "mallory"}), json!(null), json!([1]), json!("p")] {
        let params = json!({"privateHandle": 1, "newData": new_data});
        let reply = alice.call("cursors", "updateCursor", params, json!("bad")).await;
        assert_eq!(reply, error_reply("cursors", &json!("bad"), "Invalid params"), "newData {new_data}");
    }
    // A joiner sees the latest state.
    let mut carol = connect_as(&server, "carol").await;
    let expected = json!({"cursors": [cursor(public, &doc, &Value::Null, &json!([1, "two", 3.5]), "alice")]});
    assert_eq!(join(&mut carol, &doc).await, expected);
}

#[tokio::test]
async fn remove_cursor_answers_null_and_tells_the_others() {
    let server = server().await;
    let doc = json!(["doc", 1]);
    let mut alice = connect_as(&server, "alice").await;
    let mut bob = connect_as(&server, "bob").await;
    join(&mut alice, &doc).await;
    join(&mut bob, &doc).await;
    let public = create(&mut alice, &json!(1), &doc, &json!(0), &json!(0)).await;
    let _added = bob.recv().await;
    let reply = alice.call("cursors", "removeCursor", json!({"privateHandle": 1}), json!(1)).await;
    assert_eq!(reply, ok_reply("cursors", &json!(1), &Value::Null));
    assert_eq!(bob.recv().await, removed(public, &doc));
    let reply = alice.call("cursors", "removeCursor", json!({"privateHandle": 1}), json!(2)).await;
    assert_eq!(reply, error_reply("cursors", &json!(2), "No such cursor"));
    let reply =
        alice.call("cursors", "updateCursor", json!({"privateHandle": 1, "newData": {"status": 1}}), json!(3)).await;
    assert_eq!(reply, error_reply("cursors", &json!(3), "No such cursor"));
    // The private handle is free again, and the new cursor gets a new public handle.
    let again = create(&mut alice, &json!(1), &doc, &json!(0), &json!(0)).await;
    assert_ne!(again, public);
    assert_quiet(&mut alice, "cursors").await;
}

#[tokio::test]
async fn public_handles_are_unique_within_a_document() {
    let server = server().await;
    let doc = json!("busy");
    let mut handles = HashSet::new();
    let mut clients = Vec::new();
    for index in 0..4 {
        let mut client = connect_as(&server, &format!("user{index}")).await;
        join(&mut client, &doc).await;
        join(&mut client, &json!("other")).await;
        clients.push(client);
    }
    for (index, client) in clients.iter_mut().enumerate() {
        for handle in 0..8 {
            // The same private handles on every connection.
            let public = create(client, &json!(handle), &doc, &json!(index), &Value::Null).await;
            assert!(handles.insert(public), "public handle {public} given twice");
            let public = create(client, &json!(handle + 100), &json!("other"), &json!(index), &Value::Null).await;
            assert!(handles.insert(public), "public handle {public} given twice");
        }
    }
    // Removing and re-creating never hands out a handle in use.
    let reply =
        call_skipping_pushes(&mut clients[0], "cursors", "removeCursor", json!({"privateHandle": 0}), json!(1)).await;
    assert_eq!(reply["message"]["type"], "response");
    let mut joiner = connect_as(&server, "late").await;
    let listed = join(&mut joiner, &doc).await;
    let listed: Vec<u64> = listed["cursors"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| c["publicHandle"].as_u64().expect("integer"))
        .collect();
    assert_eq!(listed.len(), 31);
    assert_eq!(listed.iter().collect::<HashSet<_>>().len(), 31);
    let fresh = create(&mut joiner, &json!(0), &doc, &json!(0), &Value::Null).await;
    assert!(!listed.contains(&fresh));
}

#[tokio::test]
async fn position_and_status_are_echoed_verbatim() {
    let server = server().await;
    let doc = json!("doc");
    let mut alice = connect_as(&server, "alice").await;
    let mut bob = connect_as(&server, "bob").await;
    join(&mut alice, &doc).await;
    join(&mut bob, &doc).await;
    let values = [
        Value::Null,
        json!(true),
        json!(-0.5),
        json!(12_345_678_901_234_i64),
        json!("héllo \"quoted\" 😀"),
        json!([[], {}, [null]]),
        json!({"nested": {"deep": [1, {"k": "v"}]}, "z": 0, "a": 1}),
    ];
    for (index, value) in values.iter().enumerate() {
        let public = create(&mut alice, &json!(index), &doc, value, value).await;
        assert_eq!(bob.recv().await, pushed("cursorAdded", &cursor(public, &doc, value, value, "alice")));
    }
    // Key order inside objects is kept as sent.
    let text = {
        let mut carol = connect_as(&server, "carol").await;
        carol
            .send_text(r#"{"service":"cursors","message":{"command":"join","params":{"document":"doc"},"callId":1}}"#)
            .await;
        carol.recv_text().await
    };
    assert!(text.contains(r#"{"nested":{"deep":[1,{"k":"v"}]},"z":0,"a":1}"#), "{text}");
}

#[tokio::test]
async fn leaving_removes_the_connections_cursors_there_and_tells_the_others() {
    let cursors = CursorsService::new("cursors");
    let server = start(vec![AnyService::Cursors(cursors.clone())]).await;
    let (doc, other) = (json!("doc"), json!("other"));
    let mut alice = connect_as(&server, "alice").await;
    let mut bob = connect_as(&server, "bob").await;
    for client in [&mut alice, &mut bob] {
        join(client, &doc).await;
        join(client, &other).await;
    }
    let first = create(&mut alice, &json!(1), &doc, &json!(0), &Value::Null).await;
    let second = create(&mut alice, &json!(2), &doc, &json!(0), &Value::Null).await;
    let kept = create(&mut alice, &json!(3), &other, &json!(0), &Value::Null).await;
    for _ in 0..3 {
        let _added = bob.recv().await;
    }
    let reply = alice.call("cursors", "leave", json!({"document": "doc"}), json!(1)).await;
    assert_eq!(reply, ok_reply("cursors", &json!(1), &Value::Null));
    assert_eq!(bob.recv().await, removed(first, &doc));
    assert_eq!(bob.recv().await, removed(second, &doc));
    assert_eq!(cursors.cursor_count(&doc), 0);
    assert_eq!(cursors.cursor_count(&other), 1);
    // The cursor in the other document lives on, and the private handles 1 and 2 are free.
    let reply =
        alice.call("cursors", "updateCursor", json!({"privateHandle": 3, "newData": {"position": 5}}), json!(2)).await;
    assert_eq!(reply, ok_reply("cursors", &json!(2), &Value::Null));
    assert_eq!(bob.recv().await, pushed("cursorUpdated", &cursor(kept, &other, &json!(5), &Value::Null, "alice")));
    create(&mut alice, &json!(1), &other, &json!(0), &Value::Null).await;
    assert_quiet(&mut alice, "cursors").await;
}

#[tokio::test]
async fn disconnecting_removes_cursors_and_tells_the_others_within_100_ms() {
    let cursors = CursorsService::new("cursors");
    let server = start(vec![AnyService::Cursors(cursors.clone())]).await;
    let (doc, other) = (json!("doc"), json!({"other": true}));
    let mut alice = connect_as(&server, "alice").await;
    let mut bob = connect_as(&server, "bob").await;
    let mut carol = connect_as(&server, "carol").await;
    join(&mut alice, &doc).await;
    join(&mut alice, &other).await;
    join(&mut bob, &doc).await;
    join(&mut carol, &other).await;
    let in_doc = create(&mut alice, &json!(1), &doc, &json!(0), &Value::Null).await;
    let in_other = create(&mut alice, &json!(2), &other, &json!(0), &Value::Null).await;
    let _added = bob.recv().await;
    let _added = carol.recv().await;

    let closed_at = Instant::now();
    let close = CloseFrame { code: CloseCode::Normal, reason: "".into() };
    within(WAIT, "the close frame to be sent", alice.ws.close(Some(close))).await.expect("open");
    assert_eq!(bob.recv().await, removed(in_doc, &doc));
    assert_eq!(carol.recv().await, removed(in_other, &other));
    let took = closed_at.elapsed();
    assert!(took <= Duration::from_millis(100), "took {took:?}");
    assert_eq!(cursors.cursor_count(&doc), 0);
    assert_eq!(cursors.member_count(&doc), 1);
    // A dropped TCP connection too.
    let public = create(&mut bob, &json!(1), &doc, &json!(0), &Value::Null).await;
    let mut dave = connect_as(&server, "dave").await;
    assert_eq!(join(&mut dave, &doc).await["cursors"][0]["publicHandle"], json!(public));
    drop(bob);
    let dropped_at = Instant::now();
    assert_eq!(dave.recv().await, removed(public, &doc));
    let took = dropped_at.elapsed();
    assert!(took <= Duration::from_millis(100), "took {took:?}");
    assert_eq!(cursors.member_count(&doc), 1);
}

#[tokio::test]
async fn parameters_are_checked() {
    let server = server().await;
    let mut alice = connect_as(&server, "alice").await;
    join(&mut alice, &json!("doc")).await;
    let cases = [
        ("join", json!({})),
        ("join", json!({"document": "d", "x": 1})),
        ("leave", json!({"document": "doc", "x": 1})),
        ("createCursor", json!({"privateHandle": 1, "document": "doc", "position": 0})),
        ("createCursor", json!({"privateHandle": 1, "document": "doc", "status": 0})),
        ("createCursor", json!({"document": "doc", "position": 0, "status": 0})),
        ("createCursor", json!({"privateHandle": 1, "document": "doc", "position": 0, "status": 0, "owner": "x"})),
        ("updateCursor", json!({"privateHandle": 1})),
        ("updateCursor", json!({"newData": {"position": 1}})),
        ("removeCursor", json!({})),
        ("removeCursor", json!({"privateHandle": 1, "document": "doc"})),
    ];
    for (index, (command, params)) in cases.into_iter().enumerate() {
        let reply = alice.call("cursors", command, params.clone(), json!(index)).await;
        assert_eq!(reply, error_reply("cursors", &json!(index), "Invalid params"), "{command} {params}");
    }
    let reply = alice.call("cursors", "moveCursor", json!({}), json!("m")).await;
    assert_eq!(reply, error_reply("cursors", &json!("m"), "Unknown command"));
}

/// Refuses the document "secret".
#[derive(Debug)]
struct NoSecrets;

impl Policy for NoSecrets {
    fn decide(&self, _connection: &Arc<Connection>, subject: &Value) -> PolicyFuture {
        let allowed = subject != "secret";
        Box::pin(async move { Ok(allowed) })
    }
}

#[tokio::test]
async fn the_join_policy_refuses_with_not_authorized() {
    let cursors = CursorsService::new("cursors").with_join_policy(Arc::new(NoSecrets));
    let server = start(vec![AnyService::Cursors(cursors.clone())]).await;
    let mut alice = connect_as(&server, "alice").await;
    let reply = alice.call("cursors", "join", json!({"document": "secret"}), json!(1)).await;
    assert_eq!(reply, error_reply("cursors", &json!(1), "Not authorized"));
    assert_eq!(cursors.member_count(&json!("secret")), 0);
    let params = json!({"privateHandle": 1, "document": "secret", "position": 0, "status": 0});
    let reply = alice.call("cursors", "createCursor", params, json!(2)).await;
    assert_eq!(reply, error_reply("cursors", &json!(2), "Not joined"));
    assert_eq!(join(&mut alice, &json!("public")).await, json!({"cursors": []}));
}
