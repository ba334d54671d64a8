//! The bounds of the built-in services: what one connection may make PubSub, Chat, Cursors and
//! Messaging hold, in count and in bytes. Each test fills a service up to its bound, checks the
//! next request gets the documented error, and that the state already held still works.

mod collab;
mod common;

use common::{error_reply, ok_reply, Client};
use serde_json::{json, Value};
use snorky::service::AnyService;
use snorky::services::chat::ChatService;
use snorky::services::cursors::CursorsService;
use snorky::services::limits::{ChatLimits, CursorsLimits, MessagingLimits, PubSubLimits};
use snorky::services::messaging::MessagingService;
use snorky::services::pubsub::PubSubService;

async fn call(client: &mut Client, service: &str, command: &str, params: Value) -> Value {
    collab::call_skipping_pushes(client, service, command, params, json!(1)).await
}

fn ok(service: &str) -> Value {
    ok_reply(service, &json!(1), &Value::Null)
}

fn refused(service: &str, text: &str) -> Value {
    error_reply(service, &json!(1), text)
}

/// A channel (any JSON value) of about `bytes` bytes as JSON.
fn big(bytes: usize) -> Value {
    json!({"room": common::filler(bytes)})
}

#[tokio::test]
async fn pubsub_bounds_subscriptions_per_connection_and_channel_size() {
    let limits = PubSubLimits { max_subscriptions: 3, max_channel_size: 100 };
    let server = collab::start(vec![AnyService::PubSub(PubSubService::with_limits("pubsub", limits))]).await;
    let mut client = server.connect().await;
    for channel in 0..3 {
        assert_eq!(call(&mut client, "pubsub", "subscribe", json!({"channel": channel})).await, ok("pubsub"));
    }
    let reply = call(&mut client, "pubsub", "subscribe", json!({"channel": 3})).await;
    assert_eq!(reply, refused("pubsub", "Too many subscriptions"));
    // Leaving one makes room again; another connection has its own allowance.
    assert_eq!(call(&mut client, "pubsub", "unsubscribe", json!({"channel": 0})).await, ok("pubsub"));
    assert_eq!(call(&mut client, "pubsub", "subscribe", json!({"channel": 3})).await, ok("pubsub"));
    let mut other = server.connect().await;
    assert_eq!(call(&mut other, "pubsub", "subscribe", json!({"channel": 0})).await, ok("pubsub"));
    for command in ["subscribe", "publish"] {
        let params = if command == "publish" {
            json!({"channel": big(200), "message": 1})
        } else {
            json!({"channel": big(200)})
        };
        let reply = call(&mut other, "pubsub", command, params).await;
        assert_eq!(reply, refused("pubsub", "Channel too large"), "{command}");
    }
}

#[tokio::test]
async fn chat_bounds_channels_per_connection_and_channel_size() {
    let limits = ChatLimits { max_channels: 2, max_channel_size: 100 };
    let server = collab::start(vec![AnyService::Chat(ChatService::with_limits("chat", limits))]).await;
    let mut alice = collab::connect_as(&server, "alice").await;
    for channel in ["a", "b"] {
        let reply = call(&mut alice, "chat", "join", json!({"channel": channel})).await;
        assert_eq!(reply["message"]["type"], "response", "{reply}");
    }
    assert_eq!(call(&mut alice, "chat", "join", json!({"channel": "c"})).await, refused("chat", "Too many channels"));
    let reply = call(&mut alice, "chat", "join", json!({"channel": big(200)})).await;
    assert_eq!(reply, refused("chat", "Channel too large"));
    assert_eq!(call(&mut alice, "chat", "leave", json!({"channel": "a"})).await, ok("chat"));
    let reply = call(&mut alice, "chat", "join", json!({"channel": "c"})).await;
    assert_eq!(reply["message"]["type"], "response", "room again after leaving: {reply}");
}

#[tokio::test]
async fn cursors_bound_documents_cursors_and_their_size() {
    let limits = CursorsLimits { max_documents: 2, max_document_size: 100, max_cursors: 2, max_cursor_size: 300 };
    let server = collab::start(vec![AnyService::Cursors(CursorsService::with_limits("cursors", limits))]).await;
    let mut alice = collab::connect_as(&server, "alice").await;
    for document in ["d1", "d2"] {
        let reply = call(&mut alice, "cursors", "join", json!({"document": document})).await;
        assert_eq!(reply["message"]["type"], "response", "{reply}");
    }
    let reply = call(&mut alice, "cursors", "join", json!({"document": "d3"})).await;
    assert_eq!(reply, refused("cursors", "Too many documents"));
    let reply = call(&mut alice, "cursors", "join", json!({"document": big(200)})).await;
    assert_eq!(reply, refused("cursors", "Document too large"));
    let cursor = |handle: i64, position: Value| json!({"privateHandle": handle, "document": "d1", "position": position, "status": null});
    let reply = call(&mut alice, "cursors", "createCursor", cursor(1, json!(common::filler(400)))).await;
    assert_eq!(reply, refused("cursors", "Cursor too large"));
    for handle in [1, 2] {
        let reply = call(&mut alice, "cursors", "createCursor", cursor(handle, json!(0))).await;
        assert_eq!(reply["message"]["type"], "response", "{reply}");
    }
    let reply = call(&mut alice, "cursors", "createCursor", cursor(3, json!(0))).await;
    assert_eq!(reply, refused("cursors", "Too many cursors"));
    // An update cannot grow a cursor past the bound either, and leaves it as it was.
    let grow = json!({"privateHandle": 1, "newData": {"status": common::filler(400)}});
    assert_eq!(call(&mut alice, "cursors", "updateCursor", grow).await, refused("cursors", "Cursor too large"));
    let small = json!({"privateHandle": 1, "newData": {"status": "typing"}});
    assert_eq!(call(&mut alice, "cursors", "updateCursor", small).await, ok("cursors"));
}

#[tokio::test]
async fn messaging_bounds_names_per_connection_their_length_and_the_total() {
    let limits = MessagingLimits { max_names: 2, max_name_length: 10, max_participants: 3 };
    let server = collab::start(vec![AnyService::Messaging(MessagingService::with_limits("messaging", limits))]).await;
    let mut first = server.connect().await;
    for name in ["a", "b"] {
        assert_eq!(call(&mut first, "messaging", "registerParticipant", json!({"name": name})).await, ok("messaging"));
    }
    let reply = call(&mut first, "messaging", "registerParticipant", json!({"name": "c"})).await;
    assert_eq!(reply, refused("messaging", "Too many names"));
    let mut second = server.connect().await;
    let reply = call(&mut second, "messaging", "registerParticipant", json!({"name": "elevenchars"})).await;
    assert_eq!(reply, refused("messaging", "Name too long"));
    let reply = call(&mut second, "messaging", "registerParticipant", json!({"name": "ten-chars!"})).await;
    assert_eq!(reply, ok("messaging"));
    let reply = call(&mut second, "messaging", "registerParticipant", json!({"name": "d"})).await;
    assert_eq!(reply, refused("messaging", "Too many participants"));
    // The list is bounded by the total, and names still work.
    let reply = call(&mut second, "messaging", "listParticipants", json!({})).await;
    assert_eq!(reply["message"]["data"], json!(["a", "b", "ten-chars!"]));
}
