//! The WebSocket endpoint: origin check, frame size limit, pings (docs/protocol.md "Transports",
//! "Envelope", "Connection health" and "Precise rules" → "WebSocket").

mod common;

use common::{delivery, http_get, metric, ok_reply, within, TestServer, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{self, Message};

fn refused_status(result: Result<common::Client, tungstenite::Error>) -> u16 {
    match result {
        Ok(_) => panic!("the upgrade should have been refused"),
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
    }
}

#[tokio::test]
async fn only_allowed_origins_may_connect() {
    let server = TestServer::start_with(|config| {
        config.allowed_origins = vec!["https://app.example.com".into(), "http://localhost:8000".into()];
    })
    .await;
    for origin in ["https://app.example.com", "http://localhost:8000"] {
        let mut client = server.try_connect(Some(origin)).await.unwrap_or_else(|err| panic!("{origin}: {err}"));
        client.subscribe(json!("ok")).await;
    }
    for origin in ["https://evil.example.com", "http://app.example.com", "https://app.example.com:8443", "null"] {
        assert_eq!(refused_status(server.try_connect(Some(origin)).await), 403, "origin {origin}");
    }
    // Without an Origin header (not a browser) the upgrade is accepted.
    let mut client = server.connect().await;
    client.subscribe(json!("no origin")).await;
    // A refused upgrade is not a connection.
    assert_eq!(metric(&server, "snorky_connections_opened_total").await, 3);
}

#[tokio::test]
async fn a_star_allows_every_origin() {
    let server = TestServer::start_with(|config| config.allowed_origins = vec!["*".into()]).await;
    for origin in ["https://anything.test", "http://127.0.0.1:3000"] {
        let mut client = server.try_connect(Some(origin)).await.unwrap_or_else(|err| panic!("{origin}: {err}"));
        client.subscribe(json!(origin)).await;
    }
}

#[tokio::test]
async fn with_no_allowed_origins_browsers_are_refused_but_other_clients_connect() {
    let server = TestServer::start().await;
    assert_eq!(refused_status(server.try_connect(Some("https://app.example.com")).await), 403);
    let mut client = server.connect().await;
    client.subscribe(json!("fine")).await;
}

#[tokio::test]
async fn a_frame_of_exactly_the_maximum_size_is_accepted_and_delivered() {
    let server = TestServer::start().await;
    let mut subscriber = server.connect().await;
    subscriber.subscribe(json!("big")).await;
    let mut publisher = server.connect().await;
    let frame_of = |padding: usize| {
        json!({"service": "pubsub", "message": {"command": "publish", "params": {"channel": "big", "message": common::filler(padding)}, "callId": 1}})
            .to_string()
    };
    let overhead = frame_of(0).len();
    let frame = frame_of(1024 * 1024 - overhead);
    assert_eq!(frame.len(), 1024 * 1024, "the default maximum is 1 MiB");
    publisher.send_text(frame).await;
    assert_eq!(publisher.recv().await, ok_reply("pubsub", &json!(1), &Value::Null));
    let got = subscriber.recv().await;
    assert_eq!(got["message"]["message"].as_str().map(str::len), Some(1024 * 1024 - overhead));
    // One byte more closes the publisher with 1009.
    publisher.send_text(frame_of(1024 * 1024 - overhead + 1)).await;
    let (code, _) = publisher.recv_close(WAIT).await;
    assert_eq!(code, 1009);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_mb_frame_closes_with_1009_and_other_clients_are_unaffected() {
    let server = TestServer::start().await;
    let mut bystander = server.connect().await;
    bystander.subscribe(json!("calm")).await;
    let client = server.connect().await;
    let (mut sink, mut stream) = client.ws.split();
    let huge = json!({"service": "pubsub", "message": {"command": "publish", "params": {"channel": "calm", "message": common::filler(10 * 1024 * 1024)}, "callId": 1}})
        .to_string();
    // Sending may fail half way (the server stops reading), so it runs on its own while the
    // close frame is awaited.
    let sender = tokio::spawn(async move {
        let _ = sink.send(Message::text(huge)).await;
        sink
    });
    let code = within(WAIT, "the close frame", async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Close(Some(frame)))) => return Some(u16::from(frame.code)),
                Some(Ok(Message::Text(text))) => panic!("no reply to an oversized frame: {text}"),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await;
    assert_eq!(code, Some(1009), "the oversized frame closes the connection with 1009");
    sender.abort();
    // Nothing was published, and the other client goes on as before.
    let mut publisher = server.connect().await;
    let reply = publisher.call("pubsub", "publish", json!({"channel": "calm", "message": "after"}), json!(2)).await;
    assert_eq!(reply, ok_reply("pubsub", &json!(2), &Value::Null));
    assert_eq!(bystander.recv().await, delivery("pubsub", &json!("calm"), &json!("after")));
    common::eventually(WAIT, "the closed connection to be counted out", || async {
        metric(&server, "snorky_connections").await == 2
    })
    .await;
}

#[tokio::test]
async fn the_queue_bound_always_admits_one_maximum_size_message() {
    // An outgoing bound far below the frame size: a large delivery into an empty queue still goes.
    let server = TestServer::start_with(|config| {
        config.max_frame_size = 256 * 1024;
        config.outbox_limit = 1024;
    })
    .await;
    let mut subscriber = server.connect().await;
    subscriber.subscribe(json!("big")).await;
    let mut publisher = server.connect().await;
    let message = common::filler(250 * 1024);
    let reply = publisher.call("pubsub", "publish", json!({"channel": "big", "message": message}), json!(1)).await;
    assert_eq!(reply, ok_reply("pubsub", &json!(1), &Value::Null));
    assert_eq!(subscriber.recv().await, delivery("pubsub", &json!("big"), &json!(message)));
    assert_eq!(metric(&server, "snorky_slow_consumers_dropped_total").await, 0);
}

#[tokio::test]
async fn the_frontend_health_check_is_not_the_websocket() {
    let server = TestServer::start().await;
    let answer = http_get(&format!("http://{}/health", server.frontend)).await;
    assert_eq!(answer.status, 200);
    // A plain GET on /ws (no upgrade) is refused, not hung.
    let answer = http_get(&server.ws_url().replace("ws://", "http://")).await;
    assert!((400..500).contains(&answer.status), "plain GET /ws: {}", answer.status);
}

#[tokio::test]
async fn a_fragmented_message_is_reassembled_and_one_over_the_maximum_closes_with_1009() {
    let server = TestServer::start_with(|config| config.max_frame_size = 64 * 1024).await;
    let mut raw = common::RawClient::connect(server.frontend).await;
    let request = r#"{"service":"pubsub","message":{"command":"subscribe","params":{"channel":"frag"},"callId":1}}"#;
    let (head, tail) = request.split_at(30);
    raw.send_fragment(false, 0x1, head.as_bytes()).await;
    raw.send_fragment(true, 0x0, tail.as_bytes()).await;
    let frame = raw.read_frame(WAIT).await;
    assert_eq!(frame.opcode, 1);
    let reply: Value = serde_json::from_slice(&frame.payload).expect("JSON");
    assert_eq!(reply, ok_reply("pubsub", &json!(1), &Value::Null));
    // Three fragments of 30 KB each: every frame is small, the message is over 64 KiB.
    let piece = common::filler(30 * 1024);
    raw.send_fragment(false, 0x1, piece.as_bytes()).await;
    raw.send_fragment(false, 0x0, piece.as_bytes()).await;
    raw.send_fragment(true, 0x0, piece.as_bytes()).await;
    let frames = raw.read_until_end(WAIT).await;
    assert_eq!(frames.iter().find_map(common::RawFrame::close_code), Some(1009), "{frames:?}");
}

#[tokio::test]
async fn deeply_nested_json_is_dropped_without_harm() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    let depth = 100_000;
    let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    client.send_text(format!(r#"{{"service":"pubsub","message":{nested}}}"#)).await;
    let deep_channel = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    client
        .send_text(format!(
            r#"{{"service":"pubsub","message":{{"command":"subscribe","params":{{"channel":{deep_channel}}},"callId":1}}}}"#
        ))
        .await;
    let reply = client.call("pubsub", "subscribe", json!({"channel": "shallow"}), json!(2)).await;
    assert_eq!(reply, ok_reply("pubsub", &json!(2), &Value::Null), "the connection survived");
}
