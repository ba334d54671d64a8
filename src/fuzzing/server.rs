//! A server without sockets: the [`App`] that `Server::bind` would serve, with every built-in
//! service registered (small limits, so the fuzzer reaches them), connections opened as the
//! WebSocket endpoint opens them, frames handled by the endpoint's dispatch, and backend
//! bodies by the `POST /backend` handler itself. Only the socket is missing: the harness plays
//! the transport, taking frames from the connections' queues and closing a connection the way
//! the endpoint does (services told at once, the queue dropped).
//!
//! The invariants checked on everything the server says:
//! - every frame queued for a client is a JSON envelope naming a frontend service, whose
//!   message is an object with a string `type`; a reply echoes a `callId` that was sent;
//! - every backend answer is JSON with a status the protocol names (never 500);
//! - once every client is gone, no service holds anything of them: no subscriber, member,
//!   cursor, participant, pending call or connection slot.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use bytes::Bytes;
use serde_json::Value;

use crate::connection::{Connection, Identity, Outbox};
use crate::connections::Slot;
use crate::datasync::{DataSyncBackend, DataSyncHub, DataSyncService, Dealer, KeyFunction, Limits};
use crate::protocol::defaults::KEY_HEADER;
use crate::protocol::{codes, RpcError};
use crate::registry::ServiceRegistry;
use crate::server::{backend, dispatch, ws, App, Server, ServerConfig};
use crate::service::{AnyService, Policy, PolicyFuture, Side};
use crate::services::chat::ChatService;
use crate::services::connections::ConnectionsBackend;
use crate::services::cursors::CursorsService;
use crate::services::external::{BoxFuture, ExternalCall, ExternalHandler, ExternalService};
use crate::services::limits::{ChatLimits, CursorsLimits, MessagingLimits, PubSubLimits};
use crate::services::messaging::MessagingService;
use crate::services::pubsub::{PubSubBackend, PubSubService};

/// The backend key of the harness's server.
pub const API_KEY: &str = "fuzzing-backend-key";
/// The connection-token secret of the harness's server.
pub const TOKEN_SECRET: &str = "fuzzing-token-secret";
/// The largest frame a client may send (the transport refuses larger ones with 1009).
pub const MAX_FRAME: usize = 4096;

/// A command: its name and its parameters' names.
pub type Command = (&'static str, &'static [&'static str]);
/// A service: its name and its commands.
pub type ServiceCommands = (&'static str, &'static [Command]);

/// The frontend services: name, commands, and each command's parameters.
pub const FRONTEND: &[ServiceCommands] = &[
    ("pubsub", &[("subscribe", &["channel"]), ("unsubscribe", &["channel"]), ("publish", &["channel", "message"])]),
    ("datasync", &[("acquireSubscription", &["token", "offsets", "after"]), ("cancelSubscription", &["token"])]),
    (
        "chat",
        &[("join", &["channel"]), ("leave", &["channel"]), ("send", &["channel", "body"]), ("read", &["channel"])],
    ),
    (
        "cursors",
        &[
            ("join", &["document"]),
            ("leave", &["document"]),
            ("createCursor", &["privateHandle", "document", "position", "status"]),
            ("updateCursor", &["privateHandle", "newData"]),
            ("removeCursor", &["privateHandle"]),
        ],
    ),
    (
        "messaging",
        &[
            ("registerParticipant", &["name"]),
            ("unregisterParticipant", &["name"]),
            ("listParticipants", &[]),
            ("send", &["sender", "dest", "body"]),
        ],
    ),
    ("rpc", HANDLER_COMMANDS),
];

/// The backend services, as [`FRONTEND`].
pub const BACKEND: &[ServiceCommands] = &[
    ("pubsub_backend", &[("publish", &["channel", "message"])]),
    ("datasync_backend", &[("authorizeSubscription", &["items", "identity"]), ("publishDeltas", &["deltas", "key"])]),
    ("connections", &[("disconnect", &["identity"])]),
    ("rpc_backend", HANDLER_COMMANDS),
];

/// The commands of the external services' handler (see [`Handler`]).
const HANDLER_COMMANDS: &[(&str, &[&str])] =
    &[("echo", &["value"]), ("later", &[]), ("hold", &[]), ("fail", &[]), ("drop", &[]), ("dropLater", &[])];

/// The identities of the harness's clients, by client number (`None`: anonymous).
pub const IDENTITIES: &[Option<&str>] = &[None, Some("alice"), Some("alice"), Some("bob")];

/// The built-in services of the harness, kept for the checks once every client left.
#[derive(Debug)]
struct Services {
    pubsub: PubSubService,
    datasync: Arc<DataSyncHub>,
    chat: ChatService,
    cursors: CursorsService,
    messaging: MessagingService,
    external: ExternalService,
}

/// One client: its connection, the queue the transport reads, its slot in the table.
#[derive(Debug)]
struct Client {
    connection: Arc<Connection>,
    /// `None` once the transport closed (the writer dropped the queue).
    outbox: Option<Outbox>,
    slot: Option<Slot>,
}

/// A server with clients, driven one frame or body at a time.
#[derive(Debug)]
pub struct Harness {
    /// The state the server's listeners would share.
    pub app: Arc<App>,
    services: Services,
    handler: Arc<Handler>,
    clients: Vec<Client>,
    /// Every `callId` sent so far: replies may only echo these.
    call_ids: Vec<Value>,
    /// Channels and documents named in requests, to check nothing is left of them at the end.
    named: Vec<Value>,
}

impl Harness {
    /// A server with every service and one client per entry of [`IDENTITIES`].
    pub async fn new() -> Harness {
        let handler = Arc::new(Handler::default());
        let policy: Arc<dyn Policy> = Arc::new(RefuseSome);
        let pubsub = PubSubService::with_limits("pubsub", PubSubLimits { max_subscriptions: 3, max_channel_size: 64 })
            .with_publish_policy(Arc::clone(&policy));
        let datasync = DataSyncService::with_limits("datasync", dealers(), datasync_limits())
            .expect("the harness's dealers have distinct names");
        let chat = ChatService::with_limits("chat", ChatLimits { max_channels: 3, max_channel_size: 64 })
            .with_join_policy(Arc::clone(&policy));
        let cursors = CursorsService::with_limits(
            "cursors",
            CursorsLimits { max_documents: 2, max_document_size: 64, max_cursors: 2, max_cursor_size: 256 },
        )
        .with_join_policy(Arc::clone(&policy));
        let messaging = MessagingService::with_limits(
            "messaging",
            MessagingLimits { max_names: 2, max_name_length: 16, max_participants: 4 },
        )
        .with_name_policy(policy);
        let external = ExternalService::new("rpc", Side::Frontend, handler.clone()).with_max_pending(2);
        let services = Services {
            pubsub: pubsub.clone(),
            datasync: Arc::clone(datasync.hub()),
            chat: chat.clone(),
            cursors: cursors.clone(),
            messaging: messaging.clone(),
            external: external.clone(),
        };
        let backend = vec![
            AnyService::PubSubBackend(PubSubBackend::new("pubsub_backend", &pubsub)),
            AnyService::DataSyncBackend(DataSyncBackend::new("datasync_backend", &datasync)),
            AnyService::Connections(ConnectionsBackend::new("connections")),
            AnyService::External(ExternalService::new("rpc_backend", Side::Backend, handler.clone())),
        ];
        let frontend = vec![
            AnyService::PubSub(pubsub),
            AnyService::DataSync(datasync),
            AnyService::Chat(chat),
            AnyService::Cursors(cursors),
            AnyService::Messaging(messaging),
            AnyService::External(external),
        ];
        let frontend = ServiceRegistry::new(Side::Frontend, frontend).expect("frontend services");
        let backend = ServiceRegistry::new(Side::Backend, backend).expect("backend services");
        let server = Server::new(config(), frontend, backend).expect("the harness's configuration is valid");
        let app = Arc::new(server.into_app().await.expect("no broker to connect to"));
        let mut harness =
            Harness { app, services, handler, clients: Vec::new(), call_ids: Vec::new(), named: Vec::new() };
        for identity in IDENTITIES {
            let identity = Identity { id: identity.map(str::to_owned), info: None };
            harness.connect(identity).await;
        }
        harness
    }

    /// Opens a connection as the WebSocket endpoint does after the handshake; returns its
    /// client number, or `None` when the table refuses it.
    pub async fn connect(&mut self, identity: Identity) -> Option<usize> {
        let remote = SocketAddr::from(([127, 0, 0, 1], 40_000));
        let mut slot = self.app.table.admit(remote).ok()?;
        let (connection, outbox) = ws::open(&self.app, remote, (identity, None), &mut slot).await;
        self.clients.push(Client { connection, outbox: Some(outbox), slot: Some(slot) });
        Some(self.clients.len() - 1)
    }

    /// Opens a new connection with the identity of client `client`, as a browser reconnecting.
    pub async fn reconnect(&mut self, client: usize) -> Option<usize> {
        let identity = self.clients.get(client)?.connection.identity().clone();
        self.connect(identity).await
    }

    /// How many clients there have been.
    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    /// Client `client`'s connection, while it is open.
    pub fn connection(&self, client: usize) -> Option<&Arc<Connection>> {
        self.clients.get(client).filter(|c| c.outbox.is_some()).map(|c| &c.connection)
    }

    /// Sends `bytes` as one text frame of client `client`, as the endpoint's reader would:
    /// nothing for a closed client, the connection closed for a frame that is too large or not
    /// UTF-8, otherwise the frame dispatched.
    pub async fn frame(&mut self, client: usize, bytes: &[u8]) {
        let Some(connection) = self.connection(client).cloned() else {
            return;
        };
        if bytes.len() > MAX_FRAME {
            connection.close(codes::MESSAGE_TOO_BIG);
        } else if let Ok(text) = std::str::from_utf8(bytes) {
            self.note_request(text.as_bytes());
            // The reply goes through the queue, as on the transports whose reader cannot write
            // to the socket itself (the WebSocket reader writes it directly when it can).
            if let Some(reply) =
                dispatch::frontend_frame(&self.app, &connection, Bytes::copy_from_slice(text.as_bytes())).await
            {
                connection.send(reply);
            }
        } else {
            connection.close(codes::INVALID_PAYLOAD);
        }
        self.settle().await;
    }

    /// Posts `body` to `/backend` through its handler, with the right key unless `wrong_key`,
    /// and a `Content-Length` of `announced` when given; returns the answer after checking it.
    pub async fn backend(&mut self, body: Vec<u8>, wrong_key: bool, announced: Option<u64>) -> (StatusCode, Value) {
        self.note_request(&body);
        let mut headers = HeaderMap::new();
        let key = if wrong_key { "fuzzing-backend-kez" } else { API_KEY };
        headers.insert(KEY_HEADER, HeaderValue::from_static(key));
        if let Some(length) = announced {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
        let response = backend::handle(State(Arc::clone(&self.app)), headers, Body::from(body)).await;
        let status = response.status();
        let body = to_bytes(response.into_body(), usize::MAX).await.expect("an answer's body is in memory");
        let answer: Value = serde_json::from_slice(&body).expect("every backend answer is JSON");
        match status {
            StatusCode::OK => check_reply(&answer, BACKEND, &self.call_ids),
            StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED | StatusCode::PAYLOAD_TOO_LARGE => {
                assert!(answer["error"].is_string(), "a refusal says why: {answer}");
            }
            other => panic!("unexpected backend status {other}: {answer}"),
        }
        assert_eq!(status == StatusCode::UNAUTHORIZED, wrong_key, "only a wrong key is refused with 401");
        self.settle().await;
        (status, answer)
    }

    /// Takes every frame queued for client `client`, checking each; nothing once it closed.
    pub fn drain(&mut self, client: usize) -> Vec<Value> {
        let Some(outbox) = self.clients.get_mut(client).and_then(|c| c.outbox.as_mut()) else {
            return Vec::new();
        };
        let mut frames = Vec::new();
        while let Some(frame) = outbox.try_recv() {
            let frame: Value = serde_json::from_str(frame.as_str()).expect("every frame is JSON");
            check_frame(&frame, &self.call_ids);
            frames.push(frame);
        }
        outbox.written();
        frames
    }

    /// Client `client` goes away (a close frame, a dropped network).
    pub async fn close(&mut self, client: usize) {
        if let Some(connection) = self.connection(client) {
            connection.close(codes::NORMAL);
        }
        self.settle().await;
    }

    /// Lets spawned tasks run (deferred replies, catch-ups), then closes, as the endpoint
    /// would, every connection that was asked to close (slow consumer, revoked, bad frame).
    pub async fn settle(&mut self) {
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        for client in 0..self.clients.len() {
            if self.clients[client].outbox.is_some() && self.clients[client].connection.is_closing() {
                // What the endpoint does once its reader stops: services first, then the writer
                // drops the queue (it may still write what is queued, which nobody reads here).
                self.drain(client);
                let departures = self.app.frontend.disconnected(&self.clients[client].connection);
                for departure in departures {
                    departure.await.expect("a service's departure task does not panic");
                }
                let Client { outbox, slot, .. } = &mut self.clients[client];
                drop(outbox.take());
                drop(slot.take());
                self.app.metrics.connections.dec();
            }
        }
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }

    /// Remembers the `callId` and the channel or document of a request, if it has them.
    fn note_request(&mut self, bytes: &[u8]) {
        let Ok(Value::Object(mut envelope)) = serde_json::from_slice::<Value>(bytes) else {
            return;
        };
        let Some(Value::Object(mut message)) = envelope.remove("message") else {
            return;
        };
        if let Some(call_id) = message.remove("callId") {
            self.call_ids.push(call_id);
        }
        if let Some(Value::Object(params)) = message.remove("params") {
            self.named.extend(["channel", "document"].iter().filter_map(|name| params.get(*name).cloned()));
        }
    }

    /// Closes every client, then checks that no service kept anything of them.
    pub async fn finish(mut self) {
        for client in 0..self.clients.len() {
            self.drain(client);
            self.close(client).await;
        }
        let services = &self.services;
        assert!(self.app.table.is_empty(), "every connection slot is given back");
        for value in &self.named {
            assert_eq!(services.pubsub.hub().subscriber_count(value), 0, "no subscriber left on {value}");
            assert!(services.chat.members(value).is_empty(), "no member left in chat {value}");
            assert_eq!(services.cursors.cursor_count(value), 0, "no cursor left in {value}");
            assert_eq!(services.cursors.member_count(value), 0, "no member left in document {value}");
        }
        assert!(services.messaging.participants().is_empty(), "no participant left");
        assert_eq!(services.external.client_count(), 0, "the external service forgot every client");
        assert_eq!(services.external.pending_total(), 0, "no deferred call outlives its connection");
        let connected = self.handler.connected.load(Ordering::Acquire);
        assert_eq!(self.handler.disconnected.load(Ordering::Acquire), connected, "one disconnect per connect");
        // DataSync subscriptions whose connection left are not checked: they wait to be resumed
        // until their timeout, which no input lasts long enough to reach.
    }

    /// The DataSync hub, for targets that authorize subscriptions directly.
    pub fn datasync(&self) -> &Arc<DataSyncHub> {
        &self.services.datasync
    }
}

/// The server configuration: small queues and frames, so limits are within the fuzzer's reach.
fn config() -> ServerConfig {
    ServerConfig {
        frontend_address: "127.0.0.1:0".into(),
        backend_address: "127.0.0.1:0".into(),
        api_key: Some(API_KEY.into()),
        token_secret: Some(TOKEN_SECRET.into()),
        max_frame_size: MAX_FRAME,
        outbox_limit: MAX_FRAME,
        backend_body_limit: 1024 * 1024,
        max_connections: 12,
        ..ServerConfig::default()
    }
}

/// The dealers of the DataSync service: every kind, on two models.
pub fn dealers() -> Vec<Dealer> {
    vec![
        Dealer::broadcast("all_tasks", "Task"),
        Dealer::simple_field("tasks_by_owner", "Task", "owner.id"),
        Dealer::simple_fn("tasks_by_fn", "Task", Arc::new(KeyByOwner)),
        Dealer::filter("tasks", "Task"),
        Dealer::filter("players", "Player"),
    ]
}

/// DataSync limits small enough to be reached.
fn datasync_limits() -> Limits {
    let mut limits = Limits { max_waiting: 6, max_items: 6, max_per_connection: 3, ..Limits::default() };
    limits.filter.max_depth = 8;
    limits.filter.max_size = 40;
    limits.max_idempotency_keys = 4;
    limits
}

/// The key function of the `tasks_by_fn` dealer, as a user's Python method would be: the
/// object's `owner`, and a failure for objects with an `explode` field.
#[derive(Debug)]
pub struct KeyByOwner;

impl KeyFunction for KeyByOwner {
    fn key(&self, data: &Value) -> Result<Value, String> {
        if data.get("explode").is_some() {
            return Err("ZeroDivisionError: division by zero".to_owned());
        }
        Ok(data.get("owner").cloned().unwrap_or(Value::Null))
    }
}

/// A user's policy: refuses the subject `"revoked"`, fails on `"explode"`, allows the rest.
#[derive(Debug)]
struct RefuseSome;

impl Policy for RefuseSome {
    fn decide(&self, _connection: &Arc<Connection>, subject: &Value) -> PolicyFuture {
        let decision = match subject.as_str() {
            Some("revoked") => Ok(false),
            Some("explode") => Err("RuntimeError: policy failed".to_owned()),
            _ => Ok(true),
        };
        Box::pin(async move { decision })
    }
}

/// The code behind the external services, as a user's `RPCService` would be: `echo` answers
/// with its params, `later` answers from a task, `hold` answers a client only when the call is
/// cancelled (its connection closed), `fail` answers with an error, `drop` never answers,
/// `dropLater` drops the answer in a task.
#[derive(Debug, Default)]
struct Handler {
    connected: AtomicUsize,
    disconnected: AtomicUsize,
}

impl ExternalHandler for Handler {
    fn dispatch(&self, call: ExternalCall) -> BoxFuture {
        let ExternalCall { command, params, responder, cancelled, connection, .. } = call;
        let answer: Pin<Box<dyn Future<Output = ()> + Send>> = match command.as_str() {
            // Held calls pile up until "Too many pending calls". A backend call waits for its
            // answer, so it is not held.
            "hold" if connection.is_some() => {
                tokio::spawn(async move {
                    cancelled.cancelled().await;
                    drop(responder);
                });
                Box::pin(async {})
            }
            "echo" => Box::pin(async move {
                responder.send(Ok(Value::Object(params)));
            }),
            "later" | "hold" => {
                tokio::spawn(async move {
                    tokio::task::yield_now().await;
                    responder.send(Ok(Value::Null));
                });
                Box::pin(async {})
            }
            "fail" => Box::pin(async move {
                responder.send(Err(RpcError::service("Failed")));
            }),
            "drop" => Box::pin(async move { drop(responder) }),
            "dropLater" => {
                tokio::spawn(async move {
                    tokio::task::yield_now().await;
                    drop(responder);
                });
                Box::pin(async {})
            }
            _ => Box::pin(async move {
                responder.send(Err(RpcError::UnknownCommand));
            }),
        };
        answer
    }

    fn connected(&self, _connection: &Arc<Connection>) -> BoxFuture {
        self.connected.fetch_add(1, Ordering::AcqRel);
        Box::pin(async {})
    }

    fn disconnected(&self, _connection: &Arc<Connection>) {
        self.disconnected.fetch_add(1, Ordering::AcqRel);
    }

    fn wants_connection_events(&self) -> bool {
        true
    }
}

/// Checks one frame queued for a client.
fn check_frame(frame: &Value, call_ids: &[Value]) {
    let service = frame["service"].as_str().expect("a frame names its service");
    assert!(FRONTEND.iter().any(|(name, _)| *name == service), "a frame from an unknown service: {frame}");
    let kind = frame["message"]["type"].as_str().expect("a frame's message has a type");
    if kind == "response" || kind == "error" {
        check_reply(frame, FRONTEND, call_ids);
    }
}

/// Checks a reply envelope: a known service, a type, an echoed `callId`, an error text.
fn check_reply(reply: &Value, services: &[ServiceCommands], call_ids: &[Value]) {
    let service = reply["service"].as_str().expect("a reply names its service");
    assert!(services.iter().any(|(name, _)| *name == service), "a reply from an unknown service: {reply}");
    let message = reply["message"].as_object().expect("a reply's message is an object");
    match message.get("type").and_then(Value::as_str) {
        Some("response") => assert!(message.contains_key("data"), "a response has data: {reply}"),
        Some("error") => assert!(message["message"].is_string(), "an error has a text: {reply}"),
        _ => panic!("a reply is a response or an error: {reply}"),
    }
    if let Some(call_id) = message.get("callId") {
        assert!(call_ids.contains(call_id), "a reply echoes a callId that was sent: {reply}");
    }
}

/// Runs `future` on a runtime of its own, as each fuzz input gets a fresh server: a
/// current-thread runtime, so that one input always runs the same way.
pub fn run<F: Future<Output = ()>>(future: F) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime can always be built");
    runtime.block_on(future);
}

/// The envelope of a request, as text.
pub fn request(service: &str, command: &Value, params: &Value, call_id: Option<&Value>) -> Vec<u8> {
    let mut message = serde_json::Map::new();
    message.insert("command".into(), command.clone());
    message.insert("params".into(), params.clone());
    if let Some(call_id) = call_id {
        message.insert("callId".into(), call_id.clone());
    }
    serde_json::to_vec(&serde_json::json!({"service": service, "message": message}))
        .expect("JSON values always serialize")
}
