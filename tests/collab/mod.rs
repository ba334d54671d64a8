//! Helpers for the tests of identity and the collaboration services (Chat, Cursors, Messaging):
//! servers with a `token_secret`, connections that present a connection token, and checks on
//! pushed messages. Built on `common`, which each test binary declares next to this module.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::{json, Map, Value};
use snorky::server::ServerConfig;
use snorky::service::AnyService;
use snorky::tokens;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{error_reply, test_config, within, Client, TestServer, WAIT};

/// The `token_secret` of every test server here.
pub const SECRET: &str = "integration-token-secret";

/// A token for `identity`, valid for an hour.
pub fn token(identity: &str) -> String {
    tokens::issue(identity, SECRET.as_bytes(), Duration::from_secs(3600), None).expect("a short token")
}

/// A token for `identity` carrying `info`.
pub fn token_with_info(identity: &str, info: &Value) -> String {
    let info: Option<&Map<String, Value>> = info.as_object();
    tokens::issue(identity, SECRET.as_bytes(), Duration::from_secs(3600), info).expect("a short token")
}

/// The test configuration with [`SECRET`] as `token_secret`.
pub fn config() -> ServerConfig {
    ServerConfig { token_secret: Some(SECRET.into()), ..test_config() }
}

/// A server with `services` on the frontend, nothing on the backend, and [`SECRET`].
pub async fn start(services: Vec<AnyService>) -> TestServer {
    TestServer::start_services(config(), services, Vec::new()).await
}

/// Connects to `/ws` plus `query` (such as `"?token=..."`); returns the handshake error when
/// refused.
pub async fn try_connect_query(
    server: &TestServer,
    query: &str,
) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
    try_connect_request(server, query, None).await
}

/// Connects with `query` and an optional `Origin` header.
pub async fn try_connect_request(
    server: &TestServer,
    query: &str,
    origin: Option<&str>,
) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
    let mut request = format!("{}{query}", server.ws_url()).into_client_request().expect("the URL is valid");
    if let Some(origin) = origin {
        request.headers_mut().insert("origin", HeaderValue::from_str(origin).expect("a valid header value"));
    }
    let (ws, _) = within(WAIT, "the WebSocket handshake", tokio_tungstenite::connect_async(request)).await?;
    Ok(Client { ws, pings: 0 })
}

/// Connects as `identity` (with a fresh valid token).
pub async fn connect_as(server: &TestServer, identity: &str) -> Client {
    try_connect_query(server, &format!("?token={}", token(identity)))
        .await
        .unwrap_or_else(|err| panic!("a valid token for {identity:?} is accepted: {err}"))
}

/// The status and body of a refused handshake.
pub fn refusal(result: Result<Client, tokio_tungstenite::tungstenite::Error>) -> (u16, String) {
    match result {
        Ok(_) => panic!("the handshake was expected to be refused"),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default().into_owned();
            (response.status().as_u16(), body)
        }
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
    }
}

/// Sends a request and returns its reply (the whole envelope), skipping pushed messages that
/// arrive before it (for helpers whose callers do not care about them).
pub async fn call_skipping_pushes(
    client: &mut Client,
    service: &str,
    command: &str,
    params: Value,
    call_id: Value,
) -> Value {
    client.request(service, command, params, call_id.clone()).await;
    loop {
        let frame = client.recv().await;
        let message = &frame["message"];
        if (message["type"] == "response" || message["type"] == "error") && message["callId"] == call_id {
            return frame;
        }
    }
}

/// Asserts that nothing was queued for `client`: a request for an unknown command of `service`
/// is answered before anything else arrives. (A push caused by an earlier, answered request
/// would have been queued before this reply.)
pub async fn assert_quiet(client: &mut Client, service: &str) {
    let reply = client.call(service, "noSuchCommand", json!({}), json!("quiet?")).await;
    assert_eq!(reply, error_reply(service, &json!("quiet?"), "Unknown command"), "nothing else was pending");
}

/// Removes `message.timestamp` from a pushed frame, checks it is ISO 8601 with an offset
/// (`2026-05-01T12:34:56.789+00:00`), and returns the frame without it (to compare the rest
/// exactly).
pub fn without_timestamp(mut frame: Value) -> Value {
    let timestamp = frame
        .get_mut("message")
        .and_then(Value::as_object_mut)
        .and_then(|message| message.remove("timestamp"))
        .unwrap_or_else(|| panic!("a timestamp in {frame}"));
    let text = timestamp.as_str().unwrap_or_else(|| panic!("the timestamp is a string: {timestamp}"));
    check_timestamp(text);
    frame
}

/// Checks a protocol timestamp's shape.
pub fn check_timestamp(text: &str) {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> u64 {
        text.get(range.clone())
            .filter(|part| part.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|part| part.parse().ok())
            .unwrap_or_else(|| panic!("digits at {range:?} of {text:?}"))
    };
    assert_eq!(bytes.len(), 29, "{text:?}");
    for (index, separator) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':'), (19, b'.')] {
        assert_eq!(bytes[index], separator, "{text:?}");
    }
    assert!(text.ends_with("+00:00"), "an explicit offset: {text:?}");
    let (year, month, day) = (digits(0..4), digits(5..7), digits(8..10));
    let (hour, minute, second, _millis) = (digits(11..13), digits(14..16), digits(17..19), digits(20..23));
    assert!((2025..=2200).contains(&year) && (1..=12).contains(&month) && (1..=31).contains(&day), "{text:?}");
    assert!(hour < 24 && minute < 60 && second < 60, "{text:?}");
}

/// Reads until the server closes `client`; returns the close code (0 when the connection ended
/// without one).
pub async fn close_code(client: &mut Client) -> u16 {
    within(WAIT, "the server to close the connection", async {
        loop {
            match client.ws.next().await {
                Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
                Some(Ok(Message::Close(None)) | Err(_)) | None => return 0,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
}
