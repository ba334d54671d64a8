//! SockJS on Snorky's frontend listener: sessions are connections like WebSocket ones (services,
//! identity, origins, limits, metrics, shutdown), over real sockets.
//!
//! The protocol itself, transport by transport, is tested against both this server and the
//! npm SockJS server in `tests/python/test_sockjs_protocol.py`; this file tests what Snorky adds.

mod common;

use std::time::Duration;

use common::{backend_publish, delivery, eventually, metric, ok_reply, within, TestServer, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use snorky::tokens;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "a-sockjs-test-secret";

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(WAIT).build().expect("a plain HTTP client builds")
}

fn base(server: &TestServer) -> String {
    format!("http://{}/sockjs", server.frontend)
}

fn new_session(server: &TestServer) -> String {
    format!("{}/000/{}", base(server), rand_id())
}

fn rand_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// POSTs `body` and returns the status and text.
async fn post(url: &str, body: impl Into<reqwest::Body>, headers: &[(&str, &str)]) -> (u16, String) {
    let mut request = http().post(url).body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = within(WAIT, url, request.send()).await.expect("the server answers");
    let status = response.status().as_u16();
    (status, response.text().await.expect("a text body"))
}

/// The xhr_send body carrying these Snorky messages.
fn send_body(messages: &[Value]) -> String {
    let texts: Vec<String> = messages.iter().map(Value::to_string).collect();
    serde_json::to_string(&texts).expect("strings serialize")
}

fn subscribe(channel: &str, call_id: u64) -> Value {
    json!({"service": "pubsub", "message": {"command": "subscribe", "params": {"channel": channel}, "callId": call_id}})
}

/// The Snorky messages in an `a[...]` frame.
fn messages_of(frame: &str) -> Vec<Value> {
    let payload = frame.strip_prefix('a').unwrap_or_else(|| panic!("not a message frame: {frame:?}"));
    let texts: Vec<String> = serde_json::from_str(payload).expect("a JSON array of strings");
    texts.iter().map(|text| serde_json::from_str(text).expect("each message is JSON")).collect()
}

/// A streaming response, read frame by frame (one frame per line).
struct Streaming {
    response: reqwest::Response,
    buffer: String,
}

impl Streaming {
    async fn open(url: &str) -> Streaming {
        let response = within(WAIT, "the streaming response", http().post(url).send()).await.expect("answers");
        assert_eq!(response.status(), 200);
        let mut stream = Streaming { response, buffer: String::new() };
        let prelude = stream.frame().await.expect("the prelude");
        assert_eq!(prelude.len(), 2048);
        stream
    }

    /// The next frame, or `None` when the response ends.
    async fn frame(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buffer.find('\n') {
                let frame: String = self.buffer.drain(..=end).collect();
                return Some(frame.trim_end_matches('\n').to_owned());
            }
            let chunk = within(WAIT, "a frame", self.response.chunk()).await.expect("the body reads")?;
            self.buffer.push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
    }

    /// The next frame that is not a heartbeat.
    async fn next(&mut self) -> String {
        loop {
            let frame = self.frame().await.expect("the response goes on");
            if frame != "h" {
                return frame;
            }
        }
    }
}

#[tokio::test]
async fn pubsub_works_over_xhr_streaming_and_xhr_send() {
    let server = TestServer::start().await;
    let url = new_session(&server);
    let mut stream = Streaming::open(&format!("{url}/xhr_streaming")).await;
    assert_eq!(stream.next().await, "o");
    let (status, _) = post(&format!("{url}/xhr_send"), send_body(&[subscribe("news", 1)]), &[]).await;
    assert_eq!(status, 204);
    assert_eq!(messages_of(&stream.next().await), vec![ok_reply("pubsub", &json!(1), &Value::Null)]);
    backend_publish(&server, &json!("news"), &json!({"headline": "SockJS works"})).await;
    let delivered = messages_of(&stream.next().await);
    assert_eq!(delivered, vec![delivery("pubsub", &json!("news"), &json!({"headline": "SockJS works"}))]);
    assert_eq!(metric(&server, "snorky_sockjs_sessions").await, 1);
    assert_eq!(metric(&server, "snorky_connections").await, 1);
}

#[tokio::test]
async fn every_polling_transport_reaches_the_services() {
    let server = TestServer::start().await;
    // xhr polling.
    let url = new_session(&server);
    assert_eq!(post(&format!("{url}/xhr"), "", &[]).await, (200, "o\n".to_owned()));
    post(&format!("{url}/xhr_send"), send_body(&[subscribe("a", 1), subscribe("b", 2)]), &[]).await;
    let (_, body) = post(&format!("{url}/xhr"), "", &[]).await;
    let replies = messages_of(body.trim_end());
    assert_eq!(replies, vec![ok_reply("pubsub", &json!(1), &Value::Null), ok_reply("pubsub", &json!(2), &Value::Null)]);
    // JSONP polling with form posts.
    let url = new_session(&server);
    let poll = format!("{url}/jsonp?c=cb");
    let opened = within(WAIT, "jsonp", http().get(&poll).send()).await.expect("answers").text().await.expect("text");
    assert_eq!(opened, "/**/cb(\"o\");\r\n");
    let form = format!("d={}", urlencode(&send_body(&[subscribe("c", 3)])));
    let sent = post(&format!("{url}/jsonp_send"), form, &[("content-type", "application/x-www-form-urlencoded")]).await;
    assert_eq!(sent, (200, "ok".to_owned()));
    let body = within(WAIT, "jsonp", http().get(&poll).send()).await.expect("answers").text().await.expect("text");
    let quoted = body.strip_prefix("/**/cb(").and_then(|rest| rest.strip_suffix(");\r\n")).expect("a JSONP call");
    let frame: String = serde_json::from_str(quoted).expect("a JSON string");
    assert_eq!(messages_of(&frame), vec![ok_reply("pubsub", &json!(3), &Value::Null)]);
    assert_eq!(server.hub().subscriber_count(&json!("c")), 1);
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

#[tokio::test]
async fn the_websocket_transport_carries_snorky_frames() {
    let server = TestServer::start().await;
    let url = format!("ws://{}/sockjs/000/{}/websocket", server.frontend, rand_id());
    let (mut socket, _) = within(WAIT, "the handshake", tokio_tungstenite::connect_async(url)).await.expect("upgrades");
    let text = |message: Option<Result<Message, _>>| match message {
        Some(Ok(Message::Text(text))) => text.to_string(),
        other => panic!("expected a text frame, got {other:?}"),
    };
    assert_eq!(text(within(WAIT, "o", socket.next()).await), "o");
    socket.send(Message::text(send_body(&[subscribe("ws", 9)]))).await.expect("sends");
    let reply = text(within(WAIT, "the reply", socket.next()).await);
    assert_eq!(messages_of(&reply), vec![ok_reply("pubsub", &json!(9), &Value::Null)]);
    // The raw endpoint is plain Snorky over WebSocket: one message per frame, no framing.
    let raw = format!("ws://{}/sockjs/websocket", server.frontend);
    let (mut raw, _) = within(WAIT, "the handshake", tokio_tungstenite::connect_async(raw)).await.expect("upgrades");
    raw.send(Message::text(subscribe("raw", 1).to_string())).await.expect("sends");
    let reply: Value = serde_json::from_str(&text(within(WAIT, "the reply", raw.next()).await)).expect("JSON");
    assert_eq!(reply, ok_reply("pubsub", &json!(1), &Value::Null));
    assert_eq!(metric(&server, "snorky_sockjs_sessions").await, 2);
}

#[tokio::test]
async fn a_connection_token_gives_the_session_its_identity_and_a_bad_one_is_refused() {
    let server = TestServer::start_with(|config| config.token_secret = Some(SECRET.into())).await;
    let token = tokens::issue("alice", SECRET.as_bytes(), Duration::from_secs(60), None).expect("a short token");
    let url = new_session(&server);
    assert_eq!(post(&format!("{url}/xhr?token={token}"), "", &[]).await, (200, "o\n".to_owned()));
    let forged =
        tokens::issue("alice", b"not-the-servers-secret", Duration::from_secs(60), None).expect("a short token");
    let (status, text) = post(&format!("{}/xhr?token={forged}", new_session(&server)), "", &[]).await;
    assert_eq!(status, 401);
    assert!(text.starts_with("Invalid connection token"), "{text}");
    let (status, _) = post(&format!("{}/xhr?token=a&token=b", new_session(&server)), "", &[]).await;
    assert_eq!(status, 401, "two tokens are refused");
    // A WebSocket handshake is checked the same way.
    let ws = format!("ws://{}/sockjs/000/{}/websocket?token={forged}", server.frontend, rand_id());
    assert!(tokio_tungstenite::connect_async(ws).await.is_err());
}

#[tokio::test]
async fn origins_are_checked_as_for_websocket() {
    let server = TestServer::start_with(|config| config.allowed_origins = vec!["https://app.test".into()]).await;
    let evil = [("origin", "https://evil.test")];
    assert_eq!(post(&format!("{}/xhr", new_session(&server)), "", &evil).await.0, 403);
    assert_eq!(post(&format!("{}/xhr_streaming", new_session(&server)), "", &evil).await.0, 403);
    let url = new_session(&server);
    let allowed = [("origin", "https://app.test")];
    assert_eq!(post(&format!("{url}/xhr"), "", &allowed).await, (200, "o\n".to_owned()));
    assert_eq!(metric(&server, "snorky_sockjs_sessions").await, 1, "refused requests open no session");
}

#[tokio::test]
async fn a_body_over_the_frame_limit_is_refused_and_closes_the_session_with_1009() {
    let server = TestServer::start_with(|config| config.max_frame_size = 1024).await;
    let url = new_session(&server);
    post(&format!("{url}/xhr"), "", &[]).await;
    let big = send_body(&[json!({"service": "pubsub", "message": "x".repeat(2000)})]);
    let (status, _) = post(&format!("{url}/xhr_send"), big, &[]).await;
    assert_eq!(status, 413);
    let (_, body) = post(&format!("{url}/xhr"), "", &[]).await;
    assert_eq!(body, "c[1009,\"Message too big\"]\n");
}

#[tokio::test]
async fn malformed_messages_are_refused_without_closing_the_session() {
    let server = TestServer::start().await;
    let url = new_session(&server);
    post(&format!("{url}/xhr"), "", &[]).await;
    for (body, text) in
        [("[\"x", "Broken JSON encoding."), ("", "Payload expected."), ("[1,2]", "Broken JSON encoding.")]
    {
        let (status, answer) = post(&format!("{url}/xhr_send"), body, &[]).await;
        assert_eq!((status, answer.as_str()), (500, text), "{body:?}");
    }
    // A message that is a string but not an envelope is dropped, as over WebSocket.
    post(&format!("{url}/xhr_send"), "[\"not json\", \"{}\"]", &[]).await;
    post(&format!("{url}/xhr_send"), send_body(&[subscribe("still", 5)]), &[]).await;
    let (_, body) = post(&format!("{url}/xhr"), "", &[]).await;
    assert_eq!(messages_of(body.trim_end()), vec![ok_reply("pubsub", &json!(5), &Value::Null)]);
    assert!(metric(&server, "snorky_frames_dropped_total").await >= 5);
}

#[tokio::test]
async fn a_session_whose_client_stopped_polling_is_dropped_after_the_disconnect_delay() {
    // Longer than the session task's one-second stall re-check, which must not restart it.
    let server = TestServer::start_with(|config| config.sockjs_disconnect_delay = 1.5).await;
    let url = new_session(&server);
    post(&format!("{url}/xhr"), "", &[]).await;
    post(&format!("{url}/xhr_send"), send_body(&[subscribe("gone", 1)]), &[]).await;
    assert_eq!(server.hub().subscriber_count(&json!("gone")), 1);
    // The client never polls again: services forget it after the delay...
    let took =
        eventually(WAIT, "the subscription to go", || async { server.hub().subscriber_count(&json!("gone")) == 0 })
            .await;
    assert!(took >= Duration::from_millis(1400), "dropped after {took:?}, before the delay");
    assert!(took < Duration::from_secs(3), "dropped after {took:?}, long after the delay");
    assert_eq!(metric(&server, "snorky_sockjs_sessions").await, 0);
    assert_eq!(metric(&server, "snorky_connections").await, 0);
    assert_eq!(metric(&server, "snorky_sockjs_sessions_expired_total").await, 1);
    // ...then the close frame is served for another delay, then the id is free again.
    let (_, body) = post(&format!("{url}/xhr"), "", &[]).await;
    assert_eq!(body, "c[1000,\"Normal closure\"]\n");
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_eq!(post(&format!("{url}/xhr"), "", &[]).await.1, "o\n", "the old session's state is gone");
}

#[tokio::test]
async fn a_polling_client_keeps_its_session_and_gets_heartbeats() {
    let server = TestServer::start_with(|config| {
        config.sockjs_disconnect_delay = 0.3;
        config.sockjs_heartbeat_interval = 0.2;
    })
    .await;
    let url = new_session(&server);
    post(&format!("{url}/xhr"), "", &[]).await;
    post(&format!("{url}/xhr_send"), send_body(&[subscribe("kept", 1)]), &[]).await;
    post(&format!("{url}/xhr"), "", &[]).await;
    // Polls that each wait a heartbeat interval keep the session alive past several delays.
    for _ in 0..5 {
        assert_eq!(post(&format!("{url}/xhr"), "", &[]).await.1, "h\n");
    }
    assert_eq!(server.hub().subscriber_count(&json!("kept")), 1);
    let mut stream = Streaming::open(&format!("{url}/xhr_streaming")).await;
    assert_eq!(stream.frame().await.as_deref(), Some("h"));
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_with_1008() {
    let server = TestServer::start_with(|config| {
        config.max_frame_size = 1024;
        config.outbox_limit = 1024;
    })
    .await;
    let url = new_session(&server);
    post(&format!("{url}/xhr"), "", &[]).await;
    post(&format!("{url}/xhr_send"), send_body(&[subscribe("flood", 1)]), &[]).await;
    for n in 0..100 {
        server.hub().publish(&json!("flood"), &json!({"n": n, "padding": "x".repeat(100)})).await.expect("published");
    }
    eventually(WAIT, "the slow consumer to be dropped", || async {
        metric(&server, "snorky_slow_consumers_dropped_total").await == 1
    })
    .await;
    // Its backlog is not sent; the close code tells it to resync.
    let (_, body) = post(&format!("{url}/xhr"), "", &[]).await;
    assert_eq!(body, "c[1008,\"Client stopped reading\"]\n");
}

#[tokio::test]
async fn shutdown_ends_streaming_sessions_with_1001() {
    let mut server = TestServer::start().await;
    let url = new_session(&server);
    let mut stream = Streaming::open(&format!("{url}/xhr_streaming")).await;
    assert_eq!(stream.next().await, "o");
    server.trigger_shutdown();
    assert_eq!(stream.next().await, "c[1001,\"Going away\"]");
    assert_eq!(within(WAIT, "the end", stream.frame()).await, None, "the response ends");
    within(WAIT, "the server to stop", server.join(WAIT)).await.expect("stops cleanly");
}

#[tokio::test]
async fn sockjs_can_be_moved_or_turned_off() {
    let server = TestServer::start_with(|config| config.sockjs_prefix = "/live/sockjs".into()).await;
    let info = http().get(format!("http://{}/live/sockjs/info", server.frontend)).send().await.expect("answers");
    assert_eq!(info.status(), 200);
    assert_eq!(http().get(format!("{}/info", base(&server))).send().await.expect("answers").status(), 404);

    let off = TestServer::start_with(|config| config.sockjs = false).await;
    assert_eq!(http().get(format!("{}/info", base(&off))).send().await.expect("answers").status(), 404);

    let no_ws = TestServer::start_with(|config| config.sockjs_websocket = false).await;
    let info: Value =
        http().get(format!("{}/info", base(&no_ws))).send().await.expect("answers").json().await.expect("JSON");
    assert_eq!(info["websocket"], false);
    let ws = format!("ws://{}/sockjs/000/{}/websocket", no_ws.frontend, rand_id());
    assert!(tokio_tungstenite::connect_async(ws).await.is_err());
}

#[tokio::test]
async fn sessions_count_against_the_connection_caps() {
    let server = TestServer::start_with(|config| {
        config.max_connections_per_address = Some(2);
        config.sockjs_disconnect_delay = 0.2;
    })
    .await;
    let ws = format!("ws://{}/ws", server.frontend);
    let (_socket, _) = within(WAIT, "the handshake", tokio_tungstenite::connect_async(ws)).await.expect("upgrades");
    assert_eq!(post(&format!("{}/xhr", new_session(&server)), "", &[]).await.1, "o\n");
    let (status, text) = post(&format!("{}/xhr", new_session(&server)), "", &[]).await;
    assert_eq!(status, 503, "a WebSocket and a session fill a cap of two: {text}");
    assert!(text.contains("max_connections_per_address"), "{text}");
    assert_eq!(metric(&server, "snorky_connections_refused_total").await, 1);
    // The session's client stops polling: its place comes back after the disconnect delay.
    eventually(WAIT, "the place to come back", || async {
        post(&format!("{}/xhr", new_session(&server)), "", &[]).await.0 == 200
    })
    .await;
}

#[tokio::test]
async fn concurrent_sends_to_one_session_are_all_handled() {
    let server = TestServer::start().await;
    let url = new_session(&server);
    post(&format!("{url}/xhr"), "", &[]).await;
    let sends = (0..20).map(|n| {
        let url = format!("{url}/xhr_send");
        async move { post(&url, send_body(&[subscribe(&format!("c{n}"), n)]), &[]).await.0 }
    });
    let statuses = futures_util::future::join_all(sends).await;
    assert!(statuses.iter().all(|status| *status == 204), "{statuses:?}");
    let mut replies = Vec::new();
    while replies.len() < 20 {
        let (_, body) = post(&format!("{url}/xhr"), "", &[]).await;
        replies.extend(messages_of(body.trim_end()));
    }
    let mut ids: Vec<u64> = replies.iter().map(|reply| reply["message"]["callId"].as_u64().expect("an id")).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..20).collect::<Vec<u64>>());
    assert!((0..20).all(|n| server.hub().subscriber_count(&json!(format!("c{n}"))) == 1));
}

#[tokio::test]
async fn an_xhr_send_body_sent_too_slowly_is_answered_408_and_frees_the_session() {
    let server = TestServer::start_with(|config| config.body_read_timeout = 0.5).await;
    let id = rand_id();
    let url = format!("{}/000/{id}", base(&server));
    let mut stream = Streaming::open(&format!("{url}/xhr_streaming")).await;
    assert_eq!(stream.next().await, "o");
    let head = format!(
        "POST /sockjs/000/{id}/xhr_send HTTP/1.1\r\nHost: test\r\nContent-Length: 1000000\r\n\r\n[\"{{\\\"serv"
    );
    let answer = common::answer_to_a_stalled_body(server.frontend, &head).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // The slow body held the session's turn to send; the next request has it.
    let (status, _) = post(&format!("{url}/xhr_send"), send_body(&[subscribe("news", 1)]), &[]).await;
    assert_eq!(status, 204);
    assert_eq!(messages_of(&stream.next().await), vec![ok_reply("pubsub", &json!(1), &Value::Null)]);
}

#[tokio::test]
async fn only_requests_from_an_allowed_origin_with_the_sessions_own_token_may_use_it() {
    let server = TestServer::start_with(|config| {
        config.token_secret = Some(SECRET.into());
        config.allowed_origins = vec!["https://app.test".into()];
    })
    .await;
    let alice = tokens::issue("alice", SECRET.as_bytes(), Duration::from_secs(60), None).expect("a short token");
    let mallory = tokens::issue("mallory", SECRET.as_bytes(), Duration::from_secs(60), None).expect("a short token");
    let app = [("origin", "https://app.test")];
    let url = new_session(&server);
    assert_eq!(post(&format!("{url}/xhr?token={alice}"), "", &app).await, (200, "o\n".to_owned()));
    let send = send_body(&[subscribe("alice-only", 1)]);
    // Someone who learned the session's id (a proxy's log, say) but not alice's token.
    for token in [String::new(), format!("?token={mallory}"), format!("?token={alice}&token={alice}")] {
        assert_eq!(post(&format!("{url}/xhr_send{token}"), send.clone(), &app).await.0, 404, "send with {token:?}");
        assert_eq!(post(&format!("{url}/xhr{token}"), "", &app).await.0, 404, "poll with {token:?}");
    }
    // A page of another origin, even with the token.
    let evil = [("origin", "https://evil.test")];
    assert_eq!(post(&format!("{url}/xhr_send?token={alice}"), send.clone(), &evil).await.0, 403);
    assert_eq!(post(&format!("{url}/xhr?token={alice}"), "", &evil).await.0, 403);
    // Alice's own requests work, and nothing of the refused ones was handled.
    assert_eq!(post(&format!("{url}/xhr_send?token={alice}"), send, &app).await.0, 204);
    let (status, body) = post(&format!("{url}/xhr?token={alice}"), "", &app).await;
    assert_eq!(status, 200);
    assert_eq!(messages_of(body.trim_end()), vec![ok_reply("pubsub", &json!(1), &Value::Null)]);
    // An anonymous session refuses a request that brings a token.
    let anonymous = new_session(&server);
    assert_eq!(post(&format!("{anonymous}/xhr"), "", &app).await, (200, "o\n".to_owned()));
    assert_eq!(post(&format!("{anonymous}/xhr?token={mallory}"), "", &app).await.0, 404);
}
