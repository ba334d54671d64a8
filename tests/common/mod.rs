//! Helpers shared by the integration tests: a real server on `127.0.0.1:0`, a WebSocket client
//! whose every wait is bounded, a hand-made WebSocket client for what tungstenite will not do
//! (never answering pings), and backend HTTP helpers.
//!
//! Every helper that waits takes at most [`WAIT`] (or the timeout it is given) and panics with a
//! sentence saying what did not happen, so a broken server fails a test instead of hanging it.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use snorky::server::{BoundServer, ServerConfig};
use snorky::service::{AnyService, Side};
use snorky::services::pubsub::{PubSubBackend, PubSubHub, PubSubService};
use snorky::{Server, ServiceRegistry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The backend key every test server uses.
pub const KEY: &str = "integration-test-key";

/// The bound on any single wait for something the server should do promptly. Generous because
/// the machine is small and shared; a correct server answers in milliseconds.
pub const WAIT: Duration = Duration::from_secs(10);

/// Runs `future`, failing the test with `what` if it takes longer than `limit`.
pub async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    timeout(limit, future).await.unwrap_or_else(|_elapsed| panic!("timed out after {limit:?} waiting for {what}"))
}

/// Polls `check` every few milliseconds until it holds, failing with `what` after `limit`. For
/// conditions no event announces (a gauge returning to 0, a subscription disappearing).
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A configuration for tests: both listeners on an ephemeral loopback port, the test key.
pub fn test_config() -> ServerConfig {
    ServerConfig {
        frontend_address: "127.0.0.1:0".into(),
        backend_address: "127.0.0.1:0".into(),
        api_key: Some(KEY.into()),
        ..ServerConfig::default()
    }
}

/// A running server. Dropping it triggers shutdown (the test runtime ends its tasks anyway).
pub struct TestServer {
    /// The frontend listener (`/ws`, `/health`).
    pub frontend: SocketAddr,
    /// The backend listener (`/backend`, `/health`, `/metrics`).
    pub backend: SocketAddr,
    hub: Option<Arc<PubSubHub>>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), snorky::Error>>>,
}

impl TestServer {
    /// The usual server: `pubsub` on the frontend, `pubsub_backend` on the backend, default
    /// configuration.
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// The usual services with a configuration adjusted by `configure`.
    pub async fn start_with(configure: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let mut config = test_config();
        configure(&mut config);
        let pubsub = PubSubService::new("pubsub");
        let backend = PubSubBackend::new("pubsub_backend", &pubsub);
        let hub = Arc::clone(pubsub.hub());
        let mut server = TestServer::start_services(
            config,
            vec![AnyService::PubSub(pubsub)],
            vec![AnyService::PubSubBackend(backend)],
        )
        .await;
        server.hub = Some(hub);
        server
    }

    /// A server with the given configuration and services.
    pub async fn start_services(
        config: ServerConfig,
        frontend: Vec<AnyService>,
        backend: Vec<AnyService>,
    ) -> TestServer {
        let _ = env_logger::builder().is_test(true).try_init();
        let frontend = ServiceRegistry::new(Side::Frontend, frontend).expect("frontend services are frontend ones");
        let backend = ServiceRegistry::new(Side::Backend, backend).expect("backend services are backend ones");
        let server = Server::new(config, frontend, backend).expect("the test configuration is valid");
        let bound: BoundServer = within(WAIT, "the listeners to bind", server.bind()).await.expect("loopback binds");
        let frontend = bound.frontend_addr().expect("a bound listener has an address");
        let backend = bound.backend_addr().expect("a bound listener has an address");
        let (trigger, triggered) = oneshot::channel::<()>();
        let handle = tokio::spawn(bound.run(async move {
            let _ = triggered.await;
        }));
        TestServer { frontend, backend, hub: None, shutdown: Some(trigger), handle: Some(handle) }
    }

    /// The hub of the `pubsub` service (only for servers made by [`TestServer::start_with`]).
    pub fn hub(&self) -> &Arc<PubSubHub> {
        self.hub.as_ref().expect("this server was started with the usual PubSub services")
    }

    /// `ws://.../ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.frontend)
    }

    /// `http://.../backend`.
    pub fn backend_url(&self) -> String {
        format!("http://{}/backend", self.backend)
    }

    /// Connects a WebSocket client without an `Origin` header (as non-browser clients do).
    pub async fn connect(&self) -> Client {
        self.try_connect(None).await.expect("the server accepts a WebSocket without Origin")
    }

    /// Connects, optionally sending `Origin`; returns the handshake error when refused.
    pub async fn try_connect(&self, origin: Option<&str>) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let mut request = self.ws_url().into_client_request().expect("the URL is valid");
        if let Some(origin) = origin {
            request.headers_mut().insert("origin", HeaderValue::from_str(origin).expect("a valid header value"));
        }
        let (ws, _) = within(WAIT, "the WebSocket handshake", tokio_tungstenite::connect_async(request)).await?;
        Ok(Client { ws, pings: 0 })
    }

    /// Triggers graceful shutdown without waiting for it.
    pub fn trigger_shutdown(&mut self) {
        if let Some(trigger) = self.shutdown.take() {
            let _ = trigger.send(());
        }
    }

    /// Waits (bounded by `limit`) for `run()` to return, and returns its result.
    pub async fn join(&mut self, limit: Duration) -> Result<(), snorky::Error> {
        let handle = self.handle.take().expect("join is called once");
        within(limit, "run() to return after shutdown", handle).await.expect("the server task does not panic")
    }

    /// Triggers shutdown and waits for `run()` to return.
    pub async fn shutdown(mut self) -> Result<(), snorky::Error> {
        self.trigger_shutdown();
        self.join(WAIT).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.trigger_shutdown();
    }
}

/// A WebSocket client. Every receive is bounded by [`WAIT`]; pings are answered by tungstenite
/// while reading and counted in `pings`.
pub struct Client {
    /// The underlying stream, for tests that need raw access.
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Pings received so far.
    pub pings: usize,
}

impl Client {
    /// Sends one text frame.
    pub async fn send_text(&mut self, text: impl Into<String>) {
        let text: String = text.into();
        within(WAIT, "a frame to be sent", self.ws.send(Message::text(text))).await.expect("the connection is open");
    }

    /// Sends a JSON document as one text frame.
    pub async fn send_json(&mut self, value: &Value) {
        self.send_text(value.to_string()).await;
    }

    /// Sends an RPC request without waiting for the reply.
    pub async fn request(&mut self, service: &str, command: &str, params: Value, call_id: Value) {
        let frame = json!({"service": service, "message": {"command": command, "params": params, "callId": call_id}});
        self.send_json(&frame).await;
    }

    /// Sends a request and returns the next frame, which must be its reply (as the whole envelope).
    pub async fn call(&mut self, service: &str, command: &str, params: Value, call_id: Value) -> Value {
        self.request(service, command, params, call_id).await;
        self.recv().await
    }

    /// `pubsub.subscribe`, asserting success.
    pub async fn subscribe(&mut self, channel: Value) {
        let reply = self.call("pubsub", "subscribe", json!({"channel": channel}), json!("sub")).await;
        assert_eq!(reply, ok_reply("pubsub", &json!("sub"), &Value::Null), "subscribing to {channel}");
    }

    /// The next message that is not a ping or pong.
    pub async fn recv_message(&mut self) -> Message {
        within(WAIT, "a frame from the server", self.next_message()).await
    }

    async fn next_message(&mut self) -> Message {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Ping(_))) => self.pings += 1,
                Some(Ok(Message::Pong(_))) => {}
                Some(Ok(message)) => return message,
                Some(Err(err)) => panic!("the connection failed while a frame was expected: {err}"),
                None => panic!("the connection ended while a frame was expected"),
            }
        }
    }

    /// The next text frame, parsed as JSON.
    pub async fn recv(&mut self) -> Value {
        match self.recv_message().await {
            Message::Text(text) => serde_json::from_str(text.as_str()).expect("the server sends JSON"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next text frame, unparsed (to check bytes verbatim).
    pub async fn recv_text(&mut self) -> String {
        match self.recv_message().await {
            Message::Text(text) => text.as_str().to_owned(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Reads until the server's close frame and returns its code; text frames before it are
    /// returned too. Fails if the connection ends without a close frame.
    pub async fn recv_close(&mut self, limit: Duration) -> (u16, Vec<Value>) {
        let mut before = Vec::new();
        within(limit, "the server's close frame", async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Close(Some(frame)))) => return (u16::from(frame.code), before),
                    Some(Ok(Message::Close(None))) => panic!("the server closed without a code"),
                    Some(Ok(Message::Text(text))) => {
                        before.push(serde_json::from_str(text.as_str()).expect("the server sends JSON"));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(err)) => panic!("the connection failed before a close frame: {err}"),
                    None => panic!("the connection ended without a close frame"),
                }
            }
        })
        .await
    }

    /// Closes the connection politely (close frame, then waits for the server's).
    pub async fn close(mut self) {
        let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame { code: CloseCode::Normal, reason: "".into() };
        let _ = within(WAIT, "the close handshake", self.ws.close(Some(frame))).await;
        let () = within(WAIT, "the connection to end", async { while self.ws.next().await.is_some() {} }).await;
    }
}

/// `{"service", "message": {"type": "response", "callId", "data"}}`.
pub fn ok_reply(service: &str, call_id: &Value, data: &Value) -> Value {
    json!({"service": service, "message": {"type": "response", "callId": call_id, "data": data}})
}

/// `{"service", "message": {"type": "error", "callId", "message"}}`.
pub fn error_reply(service: &str, call_id: &Value, text: &str) -> Value {
    json!({"service": service, "message": {"type": "error", "callId": call_id, "message": text}})
}

/// A PubSub delivery as the frontend service `service` pushes it.
pub fn delivery(service: &str, channel: &Value, message: &Value) -> Value {
    json!({"service": service, "message": {"type": "message", "channel": channel, "message": message}})
}

/// A WebSocket client written by hand over a TCP socket, for behaviour tungstenite will not
/// produce: it never answers pings and never reads unless asked.
pub struct RawClient {
    /// The socket, after the handshake.
    pub stream: TcpStream,
    buffer: Vec<u8>,
}

/// A frame a [`RawClient`] read.
#[derive(Debug, Clone, PartialEq)]
pub struct RawFrame {
    /// The opcode (1 text, 8 close, 9 ping, 10 pong).
    pub opcode: u8,
    /// The payload.
    pub payload: Vec<u8>,
}

impl RawClient {
    /// Opens a TCP connection and performs the WebSocket handshake by hand.
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let mut stream = within(WAIT, "a TCP connection", TcpStream::connect(addr)).await.expect("the server listens");
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        within(WAIT, "the handshake to be sent", stream.write_all(request.as_bytes())).await.expect("socket open");
        let mut buffer = Vec::new();
        let header_end = within(WAIT, "the handshake response", async {
            loop {
                if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
                    return end + 4;
                }
                let mut chunk = [0u8; 1024];
                let read = stream.read(&mut chunk).await.expect("socket open");
                assert!(read > 0, "the server closed during the handshake");
                buffer.extend_from_slice(&chunk[..read]);
            }
        })
        .await;
        let head = String::from_utf8_lossy(&buffer[..header_end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "the upgrade must succeed: {head}");
        buffer.drain(..header_end);
        RawClient { stream, buffer }
    }

    /// Sends a masked text frame (clients must mask).
    pub async fn send_text(&mut self, text: &str) {
        self.send_frame(0x1, text.as_bytes()).await;
    }

    /// Answers a ping with a pong carrying its payload.
    pub async fn send_pong(&mut self, payload: &[u8]) {
        self.send_frame(0xa, payload).await;
    }

    /// Sends one final, masked frame with `opcode`.
    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        self.send_fragment(true, opcode, payload).await;
    }

    /// Sends one masked frame; `fin: false` starts or continues a fragmented message (opcode 0
    /// for continuation frames).
    pub async fn send_fragment(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            len if len < 126 => frame.push(0x80 | u8::try_from(len).expect("checked")),
            len if len <= 0xffff => {
                frame.push(0x80 | 0x7e);
                frame.extend_from_slice(&u16::try_from(len).expect("checked").to_be_bytes());
            }
            len => {
                frame.push(0x80 | 0x7f);
                frame.extend_from_slice(&u64::try_from(len).expect("fits").to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, byte)| byte ^ mask[i % 4]));
        within(WAIT, "a raw frame to be sent", self.stream.write_all(&frame)).await.expect("socket open");
    }

    /// Reads frames until the server ends the TCP connection (EOF or reset), bounded by `limit`.
    pub async fn read_until_end(&mut self, limit: Duration) -> Vec<RawFrame> {
        let mut frames = Vec::new();
        within(limit, "the server to end the connection", async {
            loop {
                while let Some(frame) = self.parse_frame() {
                    frames.push(frame);
                }
                let mut chunk = [0u8; 4096];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(read) => self.buffer.extend_from_slice(&chunk[..read]),
                }
            }
        })
        .await;
        frames
    }

    /// Reads the next frame, bounded by `limit`.
    pub async fn read_frame(&mut self, limit: Duration) -> RawFrame {
        within(limit, "a raw frame", async {
            loop {
                if let Some(frame) = self.parse_frame() {
                    return frame;
                }
                let mut chunk = [0u8; 4096];
                let read = self.stream.read(&mut chunk).await.expect("socket open");
                assert!(read > 0, "the server ended the connection while a frame was expected");
                self.buffer.extend_from_slice(&chunk[..read]);
            }
        })
        .await
    }

    fn parse_frame(&mut self) -> Option<RawFrame> {
        let buffer = &self.buffer;
        if buffer.len() < 2 {
            return None;
        }
        let opcode = buffer[0] & 0x0f;
        assert_eq!(buffer[1] & 0x80, 0, "server frames are never masked");
        let (len, header) = match buffer[1] & 0x7f {
            126 if buffer.len() >= 4 => (usize::from(u16::from_be_bytes([buffer[2], buffer[3]])), 4),
            127 if buffer.len() >= 10 => {
                let bytes: [u8; 8] = buffer[2..10].try_into().expect("eight bytes");
                (usize::try_from(u64::from_be_bytes(bytes)).expect("fits"), 10)
            }
            126 | 127 => return None,
            len => (usize::from(len), 2),
        };
        if buffer.len() < header + len {
            return None;
        }
        let payload = buffer[header..header + len].to_vec();
        self.buffer.drain(..header + len);
        Some(RawFrame { opcode, payload })
    }
}

impl RawFrame {
    /// The close code of a close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 8 && self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// An HTTP answer, read whole.
#[derive(Debug)]
pub struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpAnswer {
    /// The body parsed as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("HTTP {} body is not JSON ({err}): {:?}", self.status, self.text()))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts a 400 answer with `{"error": "<text>"}` (and nothing else), as JSON.
    pub fn assert_bad_request(&self, what: &str) {
        assert_eq!(self.status, 400, "{what}: {}", self.text());
        assert_json_content_type(self, what);
        let body = self.json();
        let object = body.as_object().unwrap_or_else(|| panic!("{what}: the 400 body is an object"));
        assert_eq!(object.len(), 1, "{what}: only an error field: {body}");
        let text =
            object.get("error").and_then(Value::as_str).unwrap_or_else(|| panic!("{what}: no error text: {body}"));
        assert!(!text.is_empty(), "{what}: the error text says something");
    }
}

/// Asserts the answer is `application/json`.
pub fn assert_json_content_type(answer: &HttpAnswer, what: &str) {
    let content_type = answer.content_type.as_deref().unwrap_or_default();
    assert!(content_type.starts_with("application/json"), "{what}: Content-Type is {content_type:?}");
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(WAIT).build().expect("a plain HTTP client builds")
}

async fn answer(response: reqwest::Response) -> HttpAnswer {
    let status = response.status().as_u16();
    let content_type = response.headers().get("content-type").and_then(|value| value.to_str().ok()).map(str::to_owned);
    let body = response.bytes().await.expect("the body arrives").to_vec();
    HttpAnswer { status, content_type, body }
}

/// `POST /backend` with `body`, sending `key` as `X-Backend-Key` when given.
pub async fn post_backend(server: &TestServer, key: Option<&str>, body: impl Into<Vec<u8>>) -> HttpAnswer {
    post_backend_keys(server, key.as_slice(), body).await
}

/// `POST /backend` with `body` and an `X-Backend-Key` header for each of `keys`.
pub async fn post_backend_keys(server: &TestServer, keys: &[&str], body: impl Into<Vec<u8>>) -> HttpAnswer {
    let mut request = http().post(server.backend_url()).header("content-type", "application/json").body(body.into());
    for key in keys {
        request = request.header("x-backend-key", *key);
    }
    answer(within(WAIT, "the backend to answer", request.send()).await.expect("the backend answers")).await
}

/// Calls a backend service with the right key; asserts HTTP 200 and returns the reply envelope.
pub async fn backend_call(server: &TestServer, service: &str, command: &str, params: Value) -> Value {
    let body = json!({"service": service, "message": {"command": command, "params": params}});
    let answer = post_backend(server, Some(KEY), body.to_string()).await;
    assert_eq!(answer.status, 200, "{service}.{command}: {}", answer.text());
    assert_json_content_type(&answer, "a backend reply");
    answer.json()
}

/// Publishes through `pubsub_backend`, asserting success.
pub async fn backend_publish(server: &TestServer, channel: &Value, message: &Value) {
    let reply =
        backend_call(server, "pubsub_backend", "publish", json!({"channel": channel, "message": message})).await;
    assert_eq!(reply, json!({"service": "pubsub_backend", "message": {"type": "response", "data": null}}));
}

/// A backend publish that may fail (the broker down): whether the server accepted it.
pub async fn try_backend_publish(server: &TestServer, channel: &Value, message: &Value) -> bool {
    let body = json!({"service": "pubsub_backend", "message": {"command": "publish", "params": {"channel": channel, "message": message}}});
    post_backend(server, Some(KEY), body.to_string()).await.status == 200
}

/// Any request to `url`.
pub async fn http_request(method: reqwest::Method, url: &str) -> HttpAnswer {
    let response = within(WAIT, "an HTTP answer", http().request(method, url).send()).await.expect("server answers");
    answer(response).await
}

/// `GET url`.
pub async fn http_get(url: &str) -> HttpAnswer {
    http_request(reqwest::Method::GET, url).await
}

/// The backend's `/metrics` text.
pub async fn metrics_text(server: &TestServer) -> String {
    let answer = http_get(&format!("http://{}/metrics", server.backend)).await;
    assert_eq!(answer.status, 200, "/metrics answers");
    answer.text()
}

/// The value of metric `name` (summed over its label sets) in Prometheus text; 0 when absent.
/// Every Snorky metric is a counter or a gauge of whole numbers.
pub fn metric_in(text: &str, name: &str) -> i64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let series_name = series.split('{').next()?;
            (series_name == name)
                .then(|| value.parse::<i64>().unwrap_or_else(|_| panic!("{name} is a whole number: {line}")))
        })
        .sum()
}

/// The current value of metric `name`.
pub async fn metric(server: &TestServer, name: &str) -> i64 {
    metric_in(&metrics_text(server).await, name)
}

/// A large JSON-safe string of `len` ASCII bytes.
pub fn filler(len: usize) -> String {
    "x".repeat(len)
}

/// Sends `head` (a request's head and the start of its body, which never ends) on a new
/// connection to `addr`, and returns the head of the answer the server sends anyway.
pub async fn answer_to_a_stalled_body(addr: SocketAddr, head: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("the server listens");
    stream.write_all(head.as_bytes()).await.expect("the head is sent");
    within(WAIT, "an answer to a body that stopped", async {
        let mut answer = Vec::new();
        let mut chunk = [0u8; 1024];
        while !answer.windows(4).any(|window| window == b"\r\n\r\n") {
            let read = stream.read(&mut chunk).await.expect("the connection stays readable");
            assert!(read > 0, "the server closed without an answer");
            answer.extend_from_slice(&chunk[..read]);
        }
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
}
