//! The envelope and RPC rules over WebSocket (docs/protocol.md "Envelope", "RPC", and "Precise
//! rules" → "Envelope and RPC").

mod common;

use common::{error_reply, metric, ok_reply, Client, TestServer};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Proves the connection still works and that nothing was sent to it since the last frame read:
/// the very next frame must be the reply to a fresh request.
async fn assert_still_serving(client: &mut Client, what: &str) {
    let reply = client.call("pubsub", "unsubscribe", json!({"channel": "probe"}), json!(what)).await;
    assert_eq!(reply, error_reply("pubsub", &json!(what), "Not subscribed"), "after {what}");
}

#[tokio::test]
async fn call_ids_of_any_type_are_echoed_verbatim() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    let call_ids = [
        json!(7),
        json!(0),
        json!(-12),
        json!(1.5),
        json!(18_446_744_073_709_551_615_u64),
        json!("a string id"),
        json!(""),
        json!({"nested": {"id": [1, 2, 3]}, "tab": 2}),
        json!([1, "two"]),
        json!(true),
    ];
    for call_id in &call_ids {
        let reply = client.call("pubsub", "subscribe", json!({"channel": "c"}), call_id.clone()).await;
        assert_eq!(reply, ok_reply("pubsub", call_id, &Value::Null), "callId {call_id}");
        let reply = client.call("pubsub", "unsubscribe", json!({"channel": "c"}), call_id.clone()).await;
        assert_eq!(reply, ok_reply("pubsub", call_id, &Value::Null), "callId {call_id}");
        // Error replies echo it too.
        let reply = client.call("pubsub", "unsubscribe", json!({"channel": "c"}), call_id.clone()).await;
        assert_eq!(reply, error_reply("pubsub", call_id, "Not subscribed"), "callId {call_id}");
    }
}

#[tokio::test]
async fn a_request_without_call_id_gets_a_reply_without_call_id() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    client
        .send_json(&json!({"service": "pubsub", "message": {"command": "subscribe", "params": {"channel": 1}}}))
        .await;
    let reply = client.recv().await;
    assert_eq!(reply, json!({"service": "pubsub", "message": {"type": "response", "data": null}}));
    client
        .send_json(&json!({"service": "pubsub", "message": {"command": "subscribe", "params": {"channel": 1}}}))
        .await;
    let reply = client.recv().await;
    assert_eq!(reply, json!({"service": "pubsub", "message": {"type": "error", "message": "Already subscribed"}}));
    client.send_json(&json!({"service": "pubsub", "message": {"command": "nope", "params": {}}})).await;
    let reply = client.recv().await;
    assert_eq!(reply, json!({"service": "pubsub", "message": {"type": "error", "message": "Unknown command"}}));
    // Both keys present, params not an object: answerable, so answered (without a callId).
    client.send_json(&json!({"service": "pubsub", "message": {"command": "subscribe", "params": null}})).await;
    let reply = client.recv().await;
    assert_eq!(reply, json!({"service": "pubsub", "message": {"type": "error", "message": "Invalid params"}}));
}

#[tokio::test]
async fn an_unknown_command_is_unknown_command() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    for (n, command) in
        [json!("nope"), json!("Subscribe"), json!(""), json!(5), json!(null), json!({"a": 1})].into_iter().enumerate()
    {
        client
            .send_json(&json!({"service": "pubsub", "message": {"command": command, "params": {}, "callId": n}}))
            .await;
        assert_eq!(client.recv().await, error_reply("pubsub", &json!(n), "Unknown command"), "command {command}");
    }
}

#[tokio::test]
async fn missing_extra_or_non_object_params_are_invalid_params() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    let cases = [
        ("subscribe", json!({})),
        ("subscribe", json!({"channel": "a", "extra": 1})),
        ("subscribe", json!({"chanel": "a"})),
        ("unsubscribe", json!({})),
        ("publish", json!({"channel": "a"})),
        ("publish", json!({"message": "m"})),
        ("publish", json!({"channel": "a", "message": "m", "extra": null})),
        ("subscribe", json!(null)),
        ("subscribe", json!([])),
        ("subscribe", json!(["channel"])),
        ("subscribe", json!("channel")),
        ("subscribe", json!(3)),
        ("subscribe", json!(true)),
    ];
    for (n, (command, params)) in cases.iter().enumerate() {
        let reply = client.call("pubsub", command, params.clone(), json!(n)).await;
        assert_eq!(reply, error_reply("pubsub", &json!(n), "Invalid params"), "{command} with params {params}");
    }
    // None of them subscribed to anything.
    assert_still_serving(&mut client, "invalid params").await;
}

#[tokio::test]
async fn a_request_lacking_command_or_params_with_a_call_id_is_invalid_message() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    let cases = [
        json!({"params": {"channel": "a"}, "callId": 1}),
        json!({"command": "subscribe", "callId": "two"}),
        json!({"callId": {"three": 3}}),
        json!({"command": "subscribe", "parameters": {"channel": "a"}, "callId": [4]}),
    ];
    for message in cases {
        let call_id = message["callId"].clone();
        client.send_json(&json!({"service": "pubsub", "message": message})).await;
        assert_eq!(client.recv().await, error_reply("pubsub", &call_id, "Invalid message"), "message {message}");
    }
}

#[tokio::test]
async fn malformed_frames_are_dropped_and_the_connection_stays_open() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    let frames = [
        "not json at all",
        "{\"service\": \"pubsub\", \"message\": ",
        "",
        "[1, 2, 3]",
        "\"a string\"",
        "42",
        "null",
        "true",
        r#"{"message": {"command": "subscribe", "params": {"channel": "a"}, "callId": 1}}"#,
        r#"{"service": "pubsub"}"#,
        r#"{"service": 5, "message": {"command": "subscribe", "params": {"channel": "a"}, "callId": 1}}"#,
        r#"{"service": null, "message": {"command": "subscribe", "params": {"channel": "a"}, "callId": 1}}"#,
        r#"{"service": "nosuch", "message": {"command": "subscribe", "params": {"channel": "a"}, "callId": 1}}"#,
        r#"{"service": "PubSub", "message": {"command": "subscribe", "params": {"channel": "a"}, "callId": 1}}"#,
        // The backend twin is not reachable from a browser.
        r#"{"service": "pubsub_backend", "message": {"command": "publish", "params": {"channel": "a", "message": 1}, "callId": 1}}"#,
        // Not RPC requests, and no callId to answer to.
        r#"{"service": "pubsub", "message": 5}"#,
        r#"{"service": "pubsub", "message": "subscribe"}"#,
        r#"{"service": "pubsub", "message": null}"#,
        r#"{"service": "pubsub", "message": [1]}"#,
        r#"{"service": "pubsub", "message": {"command": "subscribe"}}"#,
        r#"{"service": "pubsub", "message": {"params": {"channel": "a"}}}"#,
        r#"{"service": "pubsub", "message": {}}"#,
    ];
    let dropped_before = metric(&server, "snorky_frames_dropped_total").await;
    for frame in frames {
        client.send_text(frame).await;
        assert_still_serving(&mut client, frame).await;
    }
    // The frames were dropped, not answered; none of them subscribed the client to "a".
    let reply = client.call("pubsub", "unsubscribe", json!({"channel": "a"}), json!("a")).await;
    assert_eq!(reply, error_reply("pubsub", &json!("a"), "Not subscribed"));
    let dropped = metric(&server, "snorky_frames_dropped_total").await - dropped_before;
    assert_eq!(dropped, i64::try_from(frames.len()).expect("a few frames"), "each dropped frame is counted");
}

#[tokio::test]
async fn a_binary_frame_is_dropped_and_the_connection_stays_open() {
    use futures_util::SinkExt;
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    let valid =
        json!({"service": "pubsub", "message": {"command": "subscribe", "params": {"channel": "a"}, "callId": 1}});
    client.ws.send(Message::binary(valid.to_string().into_bytes())).await.expect("connection open");
    client.ws.send(Message::binary(vec![0xff, 0x00, 0x13])).await.expect("connection open");
    assert_still_serving(&mut client, "binary frames").await;
    // The binary frame was not interpreted: the client is not subscribed to "a".
    let reply = client.call("pubsub", "unsubscribe", json!({"channel": "a"}), json!(2)).await;
    assert_eq!(reply, error_reply("pubsub", &json!(2), "Not subscribed"));
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    // 300 requests sent back to back; their outcomes depend on the ones before them.
    let mut expected = Vec::new();
    for i in 0..100 {
        let channel = json!(i % 7);
        let first_time = i < 7;
        client.request("pubsub", "subscribe", json!({"channel": channel}), json!(3 * i)).await;
        expected.push(if first_time {
            ok_reply("pubsub", &json!(3 * i), &Value::Null)
        } else {
            error_reply("pubsub", &json!(3 * i), "Already subscribed")
        });
        client.request("pubsub", "frobnicate", json!({}), json!(3 * i + 1)).await;
        expected.push(error_reply("pubsub", &json!(3 * i + 1), "Unknown command"));
        client.request("pubsub", "subscribe", json!({}), json!(3 * i + 2)).await;
        expected.push(error_reply("pubsub", &json!(3 * i + 2), "Invalid params"));
    }
    for (n, want) in expected.iter().enumerate() {
        assert_eq!(&client.recv().await, want, "reply number {n}");
    }
}

#[tokio::test]
async fn the_reply_names_the_service_that_was_addressed_and_nothing_more() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    let text = {
        client.request("pubsub", "subscribe", json!({"channel": "x"}), json!(1)).await;
        client.recv_text().await
    };
    let reply: Value = serde_json::from_str(&text).expect("JSON");
    let envelope = reply.as_object().expect("an object");
    assert_eq!(envelope.keys().collect::<Vec<_>>().len(), 2, "only service and message: {text}");
    assert_eq!(reply["service"], "pubsub");
    let message = reply["message"].as_object().expect("message is an object");
    let mut keys: Vec<&str> = message.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["callId", "data", "type"], "{text}");
}
