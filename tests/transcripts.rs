//! The shared protocol transcripts (`tests/fixtures/protocol/`), replayed against a real server
//! started in this process: real WebSockets, real HTTP. The Python tests and the TypeScript
//! client's tests replay the same files; `tests/fixtures/protocol/README.md` describes the
//! format.
//!
//! Also here: the check that every error text and every command of docs/protocol.md's tables
//! appears in some transcript, and the check that `close-codes.json` lists exactly the close
//! codes of `src/protocol/codes.rs`.

mod cluster;
mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use snorky::connection::Connection;
use snorky::datasync::{DataSyncBackend, DataSyncService, Dealer, Limits, LimitsConfig};
use snorky::server::ServerConfig;
use snorky::service::{AnyService, Policy, PolicyFuture};
use snorky::services::chat::ChatService;
use snorky::services::connections::ConnectionsBackend;
use snorky::services::cursors::CursorsService;
use snorky::services::messaging::MessagingService;
use snorky::services::pubsub::{PubSubBackend, PubSubService};
use snorky::tokens;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use common::{Client, TestServer, KEY, WAIT};

/// The secret that signs the transcripts' connection tokens (`"$secret"` in a server config).
const SECRET: &str = "transcript-token-secret-0123456789";

/// How long the end of an exchange waits for a frame nobody expected.
const LEFTOVER_WAIT: Duration = Duration::from_millis(20);

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/protocol")
}

/// Every transcript file, sorted by name, with its parsed content.
fn transcripts() -> Vec<(String, Value)> {
    let dir = fixtures().join("transcripts");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("{} is readable: {err}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no transcripts in {}", dir.display());
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("a transcript is readable");
            let value = serde_json::from_str(&text).unwrap_or_else(|err| panic!("{} is JSON: {err}", path.display()));
            (path.file_name().expect("a file name").to_string_lossy().into_owned(), value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transcript_replays_against_a_real_server() {
    replay_all(None).await;
}

/// The same exchanges against three nodes sharing a Redis: consecutive connections go to the
/// first two nodes in turn, backend calls to the third. A client cannot tell the difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transcript_replays_against_three_nodes_on_a_broker() {
    let redis = cluster::Redis::start();
    replay_all(Some(&redis)).await;
}

/// The kinds of service that share their state across nodes so far; transcripts using another
/// kind are replayed on one node only.
const ON_SEVERAL_NODES: &[&str] =
    &["pubsub", "pubsub_backend", "datasync", "datasync_backend", "chat", "cursors", "messaging", "connections"];

async fn replay_all(broker: Option<&cluster::Redis>) {
    let mut failures = Vec::new();
    let mut exchanges = 0;
    for (file, transcript) in transcripts() {
        if broker.is_some()
            && (transcript.get("single_node").is_some() || !runs_on_several_nodes(&transcript["server"]))
        {
            continue;
        }
        for exchange in transcript["exchanges"].as_array().unwrap_or_else(|| panic!("{file}: no exchanges")) {
            exchanges += 1;
            let name = exchange["name"].as_str().unwrap_or("(unnamed)");
            if let Err(err) = replay(&transcript["server"], exchange, broker, exchanges).await {
                failures.push(format!("{file} / {name}: {err}"));
            }
        }
    }
    assert!(exchanges > 0, "the transcripts hold exchanges");
    assert!(failures.is_empty(), "{} of {exchanges} exchanges failed:\n{}", failures.len(), failures.join("\n"));
}

fn runs_on_several_nodes(server: &Value) -> bool {
    ["frontend", "backend"]
        .iter()
        .flat_map(|side| server[side].as_array().into_iter().flatten())
        .all(|spec| spec["kind"].as_str().is_some_and(|kind| ON_SEVERAL_NODES.contains(&kind)))
}

// ---------------------------------------------------------------------------------------------
// The server a transcript asks for
// ---------------------------------------------------------------------------------------------

/// A policy decided by lists: subjects in `deny` are refused, subjects in `fail` make the hook
/// fail, any other is allowed.
#[derive(Debug)]
struct Listed {
    deny: Vec<Value>,
    fail: Vec<Value>,
}

impl Policy for Listed {
    fn decide(&self, _connection: &Arc<Connection>, subject: &Value) -> PolicyFuture {
        let outcome = if self.fail.contains(subject) {
            Err(format!("the transcript's policy fails for {subject}"))
        } else {
            Ok(!self.deny.contains(subject))
        };
        Box::pin(async move { outcome })
    }
}

fn policy(spec: &Value) -> Option<Arc<dyn Policy>> {
    let policy = spec.get("policy")?;
    let list = |key: &str| policy.get(key).and_then(Value::as_array).cloned().unwrap_or_default();
    Some(Arc::new(Listed { deny: list("deny"), fail: list("fail") }))
}

fn text<'a>(spec: &'a Value, key: &str) -> Result<&'a str, String> {
    spec.get(key).and_then(Value::as_str).ok_or_else(|| format!("{spec}: no string {key:?}"))
}

fn dealer(spec: &Value) -> Result<Dealer, String> {
    let (name, model) = (text(spec, "name")?, text(spec, "model")?);
    Ok(match text(spec, "kind")? {
        "broadcast" => Dealer::broadcast(name, model),
        "simple" => Dealer::simple_field(name, model, text(spec, "key")?),
        "filter" => Dealer::filter(name, model),
        other => return Err(format!("unknown dealer kind {other:?}")),
    })
}

/// The limits of a DataSync service from the options a transcript gives (the names of the
/// Python keyword arguments).
fn limits(spec: Option<&Value>) -> Result<Limits, String> {
    let Some(spec) = spec else { return Ok(Limits::default()) };
    let config: LimitsConfig = serde_json::from_value(spec.clone()).map_err(|err| format!("limits: {err}"))?;
    config.limits().map_err(|err| err.to_string())
}

/// A built-in service's limits from the options a transcript gives (`"limits"`, the names of
/// the Python keyword arguments); the defaults without them.
fn service_limits<T: serde::de::DeserializeOwned + Default>(spec: &Value) -> Result<T, String> {
    match spec.get("limits") {
        Some(limits) => serde_json::from_value(limits.clone()).map_err(|err| format!("limits: {err}")),
        None => Ok(T::default()),
    }
}

/// The frontend and backend services of a transcript's `server`.
fn services(server: &Value) -> Result<(Vec<AnyService>, Vec<AnyService>), String> {
    let mut pubsubs: HashMap<String, PubSubService> = HashMap::new();
    let mut datasyncs: HashMap<String, DataSyncService> = HashMap::new();
    let mut frontend = Vec::new();
    for spec in server["frontend"].as_array().into_iter().flatten() {
        let name = text(spec, "name")?;
        frontend.push(match text(spec, "kind")? {
            "pubsub" => {
                let mut service = PubSubService::with_limits(name, service_limits(spec)?);
                if let Some(policy) = policy(spec) {
                    service = service.with_publish_policy(policy);
                }
                pubsubs.insert(name.to_owned(), service.clone());
                AnyService::PubSub(service)
            }
            "chat" => {
                let service = ChatService::with_limits(name, service_limits(spec)?);
                AnyService::Chat(policy(spec).map_or(service.clone(), |policy| service.with_join_policy(policy)))
            }
            "cursors" => {
                let service = CursorsService::with_limits(name, service_limits(spec)?);
                AnyService::Cursors(policy(spec).map_or(service.clone(), |policy| service.with_join_policy(policy)))
            }
            "messaging" => {
                let service = MessagingService::with_limits(name, service_limits(spec)?);
                AnyService::Messaging(policy(spec).map_or(service.clone(), |policy| service.with_name_policy(policy)))
            }
            "datasync" => {
                let dealers = spec["dealers"].as_array().into_iter().flatten().map(dealer).collect::<Result<_, _>>()?;
                let service = DataSyncService::with_limits(name, dealers, limits(spec.get("limits"))?)
                    .map_err(|err| err.to_string())?;
                datasyncs.insert(name.to_owned(), service.clone());
                AnyService::DataSync(service)
            }
            other => return Err(format!("unknown frontend service kind {other:?}")),
        });
    }
    let mut backend = Vec::new();
    for spec in server["backend"].as_array().into_iter().flatten() {
        let name = text(spec, "name")?;
        if text(spec, "kind")? == "connections" {
            backend.push(AnyService::Connections(ConnectionsBackend::new(name)));
            continue;
        }
        let twin = text(spec, "frontend")?;
        backend.push(match text(spec, "kind")? {
            "pubsub_backend" => {
                let frontend = pubsubs.get(twin).ok_or_else(|| format!("no pubsub service {twin:?}"))?;
                AnyService::PubSubBackend(PubSubBackend::new(name, frontend))
            }
            "datasync_backend" => {
                let frontend = datasyncs.get(twin).ok_or_else(|| format!("no datasync service {twin:?}"))?;
                AnyService::DataSyncBackend(DataSyncBackend::new(name, frontend))
            }
            other => return Err(format!("unknown backend service kind {other:?}")),
        });
    }
    Ok((frontend, backend))
}

/// The transcript's settings on top of loopback listeners on free ports and the test key.
fn config(server: &Value) -> Result<ServerConfig, String> {
    let mut config = Map::new();
    config.insert("frontend_address".into(), json!("127.0.0.1:0"));
    config.insert("backend_address".into(), json!("127.0.0.1:0"));
    config.insert("api_key".into(), json!(KEY));
    for (key, value) in server["config"].as_object().into_iter().flatten() {
        let value = if value == "$secret" { json!(SECRET) } else { value.clone() };
        config.insert(key.clone(), value);
    }
    serde_json::from_value(Value::Object(config)).map_err(|err| format!("the server config: {err}"))
}

// ---------------------------------------------------------------------------------------------
// Values that vary
// ---------------------------------------------------------------------------------------------

/// The values remembered by `$any:NAME`, `$token:NAME` and `$int:NAME`.
type Captures = HashMap<String, Value>;

/// Where `$offset:N` remembers the epoch of the offsets received (`"<epoch>-"`), which no
/// transcript can name.
const EPOCH: &str = "$offset epoch";

fn is_timestamp(text: &str) -> bool {
    // `d` stands for any digit; everything else is literal.
    const SHAPE: &[u8] = b"dddd-dd-ddTdd:dd:dd.ddd+00:00";
    text.len() == SHAPE.len()
        && text.bytes().zip(SHAPE).all(|(c, &s)| if s == b'd' { c.is_ascii_digit() } else { c == s })
}

fn is_token(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Checks `actual` against `expected` (exact, but for the notations), remembering captures.
fn check(expected: &Value, actual: &Value, captures: &mut Captures, at: &str) -> Result<(), String> {
    let mismatch = || Err(format!("at {at}: expected {expected}, got {actual}"));
    match expected {
        Value::String(pattern) if pattern.starts_with('$') && !pattern.starts_with("$$") => {
            let (kind, name) = pattern[1..].split_once(':').unwrap_or((&pattern[1..], ""));
            let fits = match kind {
                "any" => true,
                "timestamp" => actual.as_str().is_some_and(is_timestamp),
                "token" => actual.as_str().is_some_and(is_token),
                "int" => actual.is_i64() || actual.is_u64(),
                "prefix" => {
                    return if actual.as_str().is_some_and(|text| text.starts_with(name)) { Ok(()) } else { mismatch() }
                }
                "ref" => return if captures.get(name) == Some(actual) { Ok(()) } else { mismatch() },
                "offset" => {
                    // `N`, or `<epoch>-N` from nodes sharing a broker: the epoch is remembered for
                    // the offsets the exchange sends later.
                    let Some(text) = actual.as_str() else { return mismatch() };
                    let (epoch, position) = text.split_once('-').unwrap_or(("", text));
                    if position != name || !epoch.bytes().all(|b| b.is_ascii_digit()) {
                        return mismatch();
                    }
                    if !epoch.is_empty() {
                        captures.insert(EPOCH.into(), json!(format!("{epoch}-")));
                    }
                    return Ok(());
                }
                _ => return Err(format!("at {at}: unknown notation {pattern:?}")),
            };
            if !fits {
                return mismatch();
            }
            if !name.is_empty() {
                captures.insert(name.to_owned(), actual.clone());
            }
            Ok(())
        }
        Value::String(literal) => {
            let literal = literal.strip_prefix('$').unwrap_or(literal);
            if actual.as_str() == Some(literal) {
                Ok(())
            } else {
                mismatch()
            }
        }
        Value::Object(fields) => {
            let Value::Object(got) = actual else { return mismatch() };
            let (want, have): (BTreeSet<&String>, BTreeSet<&String>) = (fields.keys().collect(), got.keys().collect());
            if want != have {
                return Err(format!("at {at}: expected the fields {want:?}, got {have:?} in {actual}"));
            }
            fields.iter().try_for_each(|(key, value)| check(value, &got[key], captures, &format!("{at}.{key}")))
        }
        Value::Array(items) => {
            let Value::Array(got) = actual else { return mismatch() };
            if items.len() != got.len() {
                return mismatch();
            }
            items.iter().zip(got).enumerate().try_for_each(|(i, (e, a))| check(e, a, captures, &format!("{at}[{i}]")))
        }
        Value::Number(number) => {
            if actual.as_f64().is_some_and(|got| Some(got) == number.as_f64()) {
                Ok(())
            } else {
                mismatch()
            }
        }
        _ if expected == actual => Ok(()),
        _ => mismatch(),
    }
}

/// A value to send, with `$ref:NAME` replaced by what was remembered and `$$` unescaped.
fn resolve(value: &Value, captures: &Captures) -> Result<Value, String> {
    Ok(match value {
        Value::String(text) if text.starts_with("$ref:") => {
            captures.get(&text[5..]).cloned().ok_or_else(|| format!("nothing remembered as {:?}", &text[5..]))?
        }
        Value::String(text) if text.starts_with("$$") => Value::String(text[1..].to_owned()),
        Value::String(text) if text.starts_with("$offset:") => {
            let epoch = captures.get(EPOCH).and_then(Value::as_str).unwrap_or("");
            Value::String(format!("{epoch}{}", &text[8..]))
        }
        Value::String(text) if text.starts_with('$') => return Err(format!("{text:?} cannot be sent")),
        Value::Array(items) => {
            Value::Array(items.iter().map(|item| resolve(item, captures)).collect::<Result<_, _>>()?)
        }
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(key, value)| Ok((key.clone(), resolve(value, captures)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// A token's claims with `"$now"`, `"$now+N"` and `"$now-N"` replaced by Unix times.
fn claims(value: &Value) -> Value {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    match value {
        Value::String(text) if text.starts_with("$now") => {
            let offset: i64 = text[4..].trim_start_matches('+').parse().unwrap_or(0);
            json!(now + offset)
        }
        Value::Object(fields) => Value::Object(fields.iter().map(|(k, v)| (k.clone(), claims(v))).collect()),
        other => other.clone(),
    }
}

/// The token text a `connect` step's `token` describes.
fn token(spec: &Value) -> Result<String, String> {
    if let Some(raw) = spec.get("raw").and_then(Value::as_str) {
        let repeat = spec.get("repeat").and_then(Value::as_u64).unwrap_or(1);
        return Ok(raw.repeat(usize::try_from(repeat).map_err(|err| err.to_string())?));
    }
    let header = spec.get("header").cloned().unwrap_or_else(|| json!({"alg": "HS256", "typ": "JWT"}));
    let secret = spec.get("secret").and_then(Value::as_str).unwrap_or(SECRET);
    let payload = claims(spec.get("claims").ok_or("a token needs raw or claims")?);
    Ok(tokens::sign(header.to_string().as_bytes(), payload.to_string().as_bytes(), secret.as_bytes()))
}

// ---------------------------------------------------------------------------------------------
// Replaying
// ---------------------------------------------------------------------------------------------

struct Replay {
    /// One node, or three sharing a broker (browsers on the first two, the backend on the last).
    servers: Vec<TestServer>,
    /// Connections opened so far, to alternate their nodes.
    opened: usize,
    clients: HashMap<String, Client>,
    captures: Captures,
}

async fn replay(
    server_spec: &Value,
    exchange: &Value,
    broker: Option<&cluster::Redis>,
    run: usize,
) -> Result<(), String> {
    let mut servers = Vec::new();
    for node in 0..if broker.is_some() { 3 } else { 1 } {
        let (frontend, backend) = services(server_spec)?;
        let mut config = config(server_spec)?;
        if let Some(redis) = broker {
            config = cluster::on_broker(config, redis, &format!("node{node}"));
            // A prefix of its own: every exchange starts from an empty cluster state.
            config.broker_prefix = format!("transcript{run}");
        }
        servers.push(TestServer::start_services(config, frontend, backend).await);
    }
    let mut replay = Replay { servers, opened: 0, clients: HashMap::new(), captures: Captures::new() };
    for (index, step) in exchange["steps"].as_array().ok_or("no steps")?.iter().enumerate() {
        replay.step(step).await.map_err(|err| format!("step {} {step}: {err}", index + 1))?;
    }
    for (name, client) in &mut replay.clients {
        if let Ok(Some(Ok(message))) = timeout(LEFTOVER_WAIT, client.ws.next()).await {
            if !matches!(message, Message::Ping(_) | Message::Pong(_)) {
                return Err(format!("client {name} received a frame no step expected: {message:?}"));
            }
        }
    }
    Ok(())
}

impl Replay {
    async fn step(&mut self, step: &Value) -> Result<(), String> {
        if let Some(name) = step.get("connect").and_then(Value::as_str) {
            self.connect(name, step).await
        } else if let Some(name) = step.get("send").and_then(Value::as_str) {
            let message = self.outgoing(step)?;
            let client = self.client(name)?;
            timeout(WAIT, client.ws.send(message))
                .await
                .map_err(|_| "sending timed out")?
                .map_err(|err| err.to_string())
        } else if let Some(name) = step.get("recv").and_then(Value::as_str) {
            let frame = next_text(self.client(name)?).await?;
            let frame: Value = serde_json::from_str(&frame).map_err(|err| format!("not JSON ({err}): {frame}"))?;
            check(&step["frame"], &frame, &mut self.captures, "frame")
        } else if let Some(name) = step.get("closed").and_then(Value::as_str) {
            let code = next_close(self.client(name)?).await?;
            check(&step["code"], &json!(code), &mut self.captures, "close code")
        } else if let Some(name) = step.get("close").and_then(Value::as_str) {
            let client = self.client(name)?;
            let frame = CloseFrame { code: CloseCode::Normal, reason: "".into() };
            timeout(WAIT, client.ws.close(Some(frame))).await.map_err(|_| "closing timed out")?.ok();
            let () = timeout(WAIT, async { while client.ws.next().await.is_some() {} })
                .await
                .map_err(|_| "the server did not end the connection")?;
            self.clients.remove(name);
            Ok(())
        } else if let Some(seconds) = step.get("wait").and_then(Value::as_f64) {
            tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
            Ok(())
        } else if step.get("shutdown").is_some() {
            for server in &mut self.servers {
                server.trigger_shutdown();
            }
            Ok(())
        } else if let Some(request) = step.get("http") {
            self.http(request, step).await
        } else {
            Err("unknown step".into())
        }
    }

    fn client(&mut self, name: &str) -> Result<&mut Client, String> {
        self.clients.get_mut(name).ok_or_else(|| format!("no open client {name:?}"))
    }

    /// The WebSocket message a `send` step describes.
    fn outgoing(&self, step: &Value) -> Result<Message, String> {
        if let Some(binary) = step.get("binary").and_then(Value::as_str) {
            return Ok(Message::binary(STANDARD.decode(binary).map_err(|err| err.to_string())?));
        }
        if let Some(bytes) = step.get("text_bytes").and_then(Value::as_str) {
            // A text frame built by hand: tungstenite's text messages must be valid UTF-8.
            let payload = STANDARD.decode(bytes).map_err(|err| err.to_string())?;
            return Ok(Message::Frame(Frame::message(payload, OpCode::Data(Data::Text), true)));
        }
        let mut text = match (step.get("frame"), step.get("text").and_then(Value::as_str)) {
            (Some(frame), _) => resolve(frame, &self.captures)?.to_string(),
            (None, Some(text)) => text.to_owned(),
            (None, None) => return Err("a send needs frame, text or binary".into()),
        };
        pad(&mut text, step)?;
        Ok(Message::text(text))
    }

    async fn connect(&mut self, name: &str, step: &Value) -> Result<(), String> {
        let mut query = String::new();
        if let Some(identity) = step.get("identity").and_then(Value::as_str) {
            let token =
                tokens::issue(identity, SECRET.as_bytes(), Duration::from_secs(3600), None).expect("a short token");
            query = format!("?token={token}");
        } else if let Some(spec) = step.get("token") {
            query = format!("?token={}", token(spec)?);
        } else if let Some(raw) = step.get("query").and_then(Value::as_str) {
            query = format!("?{raw}");
        }
        let node = if self.servers.len() == 1 { 0 } else { self.opened % (self.servers.len() - 1) };
        self.opened += 1;
        let url = self.servers[node].ws_url();
        let mut request = format!("{url}{query}").into_client_request().map_err(|err| err.to_string())?;
        if let Some(origin) = step.get("origin").and_then(Value::as_str) {
            request.headers_mut().insert("origin", HeaderValue::from_str(origin).map_err(|err| err.to_string())?);
        }
        let outcome = timeout(WAIT, tokio_tungstenite::connect_async(request)).await.map_err(|_| "no handshake")?;
        match (outcome, step.get("refused")) {
            (Ok((ws, _)), None) => {
                self.clients.insert(name.to_owned(), Client { ws, pings: 0 });
                Ok(())
            }
            (Ok(_), Some(_)) => Err("the handshake succeeded; a refusal was expected".into()),
            (Err(WsError::Http(response)), Some(refused)) => {
                let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default().into_owned();
                check(&refused["status"], &json!(response.status().as_u16()), &mut self.captures, "status")?;
                check(&refused["body"], &json!(body), &mut self.captures, "body")
            }
            (Err(err), _) => Err(format!("the handshake failed: {err}")),
        }
    }

    async fn http(&mut self, request: &Value, step: &Value) -> Result<(), String> {
        let server = self.servers.last().ok_or("no server")?;
        let address = if request.get("listener").and_then(Value::as_str) == Some("frontend") {
            server.frontend
        } else {
            server.backend
        };
        let path = request.get("path").and_then(Value::as_str).unwrap_or("/backend");
        let method = request.get("method").and_then(Value::as_str).unwrap_or("POST");
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|err| err.to_string())?;
        let client = reqwest::Client::builder().no_proxy().timeout(WAIT).build().map_err(|err| err.to_string())?;
        let mut builder = client.request(method, format!("http://{address}{path}"));
        let keys = match request.get("key") {
            None => vec![KEY],
            Some(Value::Null) => Vec::new(),
            Some(Value::Array(keys)) => keys.iter().map(|key| key.as_str().unwrap_or_default()).collect(),
            Some(key) => vec![key.as_str().unwrap_or_default()],
        };
        for key in keys {
            builder = builder.header("x-backend-key", if key == "$key" { KEY } else { key });
        }
        let body = match (request.get("body"), request.get("text").and_then(Value::as_str)) {
            (Some(body), _) => Some(resolve(body, &self.captures)?.to_string()),
            (None, Some(text)) => Some(text.to_owned()),
            (None, None) => None,
        };
        if let Some(mut body) = body {
            pad(&mut body, request)?;
            builder = builder.header("content-type", "application/json").body(body);
        }
        let response = builder.send().await.map_err(|err| format!("the request failed: {err}"))?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|err| err.to_string())?;
        check(&step["status"], &json!(status), &mut self.captures, "status")?;
        if let Some(expected) = step.get("answer_text").and_then(Value::as_str) {
            return if body.contains(expected) { Ok(()) } else { Err(format!("{expected:?} is not in {body:?}")) };
        }
        let answer: Value = serde_json::from_str(&body).map_err(|err| format!("not JSON ({err}): {body:?}"))?;
        check(&step["answer"], &answer, &mut self.captures, "answer")
    }
}

/// Pads `text` with trailing spaces to the `pad_to` of `spec`, if any.
fn pad(text: &mut String, spec: &Value) -> Result<(), String> {
    if let Some(size) = spec.get("pad_to").and_then(Value::as_u64) {
        let size = usize::try_from(size).map_err(|err| err.to_string())?;
        if size < text.len() {
            return Err(format!("pad_to {size} is shorter than the text ({} bytes)", text.len()));
        }
        text.extend(std::iter::repeat_n(' ', size - text.len()));
    }
    Ok(())
}

/// The next text frame of `client` (pings and pongs skipped).
async fn next_text(client: &mut Client) -> Result<String, String> {
    loop {
        match timeout(WAIT, client.ws.next()).await {
            Err(_) => return Err(format!("no frame within {WAIT:?}")),
            Ok(None) => return Err("the connection ended".into()),
            Ok(Some(Err(err))) => return Err(format!("the connection failed: {err}")),
            Ok(Some(Ok(Message::Text(text)))) => return Ok(text.as_str().to_owned()),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(Some(Ok(other))) => return Err(format!("expected a text frame, got {other:?}")),
        }
    }
}

/// The code of the server's close frame, which must come next.
async fn next_close(client: &mut Client) -> Result<u16, String> {
    loop {
        match timeout(WAIT, client.ws.next()).await {
            Err(_) => return Err(format!("no close frame within {WAIT:?}")),
            Ok(Some(Ok(Message::Close(Some(frame))))) => return Ok(u16::from(frame.code)),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(other) => return Err(format!("expected a close frame, got {other:?}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The document and the transcripts agree
// ---------------------------------------------------------------------------------------------

/// Every string a transcript expects or sends, and every command it sends.
fn transcript_strings() -> (Vec<String>, BTreeSet<String>) {
    fn walk(value: &Value, strings: &mut Vec<String>, commands: &mut BTreeSet<String>) {
        match value {
            Value::String(text) => strings.push(text.clone()),
            Value::Array(items) => items.iter().for_each(|item| walk(item, strings, commands)),
            Value::Object(fields) => {
                if let (Some(Value::String(command)), Some(_)) = (fields.get("command"), fields.get("params")) {
                    commands.insert(command.clone());
                }
                fields.values().for_each(|item| walk(item, strings, commands));
            }
            _ => {}
        }
    }
    let (mut strings, mut commands) = (Vec::new(), BTreeSet::new());
    for (_, transcript) in transcripts() {
        walk(&transcript, &mut strings, &mut commands);
    }
    (strings, commands)
}

/// The cells of the column whose header contains `header` in every table of `markdown`, and
/// the first cells of tables whose first header is `first`.
fn table_cells(markdown: &str, header: &str) -> Vec<String> {
    let mut cells = Vec::new();
    let mut column: Option<usize> = None;
    let mut in_table = false;
    for line in markdown.lines() {
        let line = line.trim();
        if !line.starts_with('|') {
            in_table = false;
            column = None;
            continue;
        }
        let row: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if !in_table {
            in_table = true;
            column = row.iter().position(|cell| cell.to_lowercase().contains(header));
            continue;
        }
        if row.iter().all(|cell| cell.chars().all(|c| c == '-' || c == ':')) {
            continue;
        }
        if let Some(cell) = column.and_then(|column| row.get(column)) {
            cells.push((*cell).to_owned());
        }
    }
    cells
}

/// The quoted texts (`` `"..."` ``) of a table cell.
fn quoted(cell: &str) -> Vec<String> {
    cell.split("`\"").skip(1).filter_map(|part| part.split_once("\"`").map(|(text, _)| text.to_owned())).collect()
}

/// Whether `pattern` matches `candidate`, where each placeholder of the pattern (`<name>`: a
/// name of lowercase letters and spaces in angle brackets) stands for one or more characters.
/// Any other `<` is literal (`<=` in a text).
fn text_matches(pattern: &str, candidate: &str) -> bool {
    let placeholder = pattern.char_indices().find_map(|(at, c)| {
        let name_end = pattern[at + 1..].find('>')?;
        let name = &pattern[at + 1..at + 1 + name_end];
        let is_name = !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == ' ');
        (c == '<' && is_name).then_some((at, at + 1 + name_end + 1))
    });
    let Some((start, end)) = placeholder else { return pattern == candidate };
    let Some(after) = candidate.strip_prefix(&pattern[..start]) else { return false };
    (1..=after.len()).filter(|&n| after.is_char_boundary(n)).any(|n| text_matches(&pattern[end..], &after[n..]))
}

fn document() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/protocol.md");
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{} is readable: {err}", path.display()))
}

#[test]
fn every_error_text_of_the_document_is_in_a_transcript() {
    let (strings, _) = transcript_strings();
    let texts: BTreeSet<String> = table_cells(&document(), "error").iter().flat_map(|cell| quoted(cell)).collect();
    assert!(texts.len() > 40, "the document's error columns hold the error texts: {texts:?}");
    let missing: Vec<&String> = texts
        .iter()
        .filter(|text| {
            !strings.iter().any(|candidate| match candidate.strip_prefix("$prefix:") {
                // A transcript that only knows how the text starts covers a document text
                // made of that start and one placeholder.
                Some(prefix) => {
                    text.strip_suffix('>').and_then(|t| t.rsplit_once('<')).is_some_and(|(head, _)| head == prefix)
                }
                None => text_matches(text, candidate),
            })
        })
        .collect();
    assert!(missing.is_empty(), "error texts of docs/protocol.md no transcript shows: {missing:?}");
}

#[test]
fn every_command_of_the_document_is_in_a_transcript() {
    let (_, commands) = transcript_strings();
    let documented: BTreeSet<String> = table_cells(&document(), "command")
        .iter()
        .filter_map(|cell| {
            cell.strip_prefix('`').and_then(|cell| cell.split_once('`')).map(|(name, _)| name.to_owned())
        })
        .collect();
    assert!(documented.len() > 15, "the document's command tables hold the commands: {documented:?}");
    let missing: Vec<&String> = documented.difference(&commands).collect();
    assert!(missing.is_empty(), "commands of docs/protocol.md no transcript sends: {missing:?}");
}

#[test]
fn the_coverage_check_sees_a_missing_text() {
    let markdown = "| command | errors |\n|---|---|\n| `a` | `\"Gone\"`, `\"Missing field <name>\"` |\n";
    let texts: Vec<String> = table_cells(markdown, "error").iter().flat_map(|cell| quoted(cell)).collect();
    assert_eq!(texts, ["Gone", "Missing field <name>"]);
    assert!(text_matches("Missing field <name>", "Missing field query"));
    assert!(!text_matches("Missing field <name>", "Missing field"));
    assert!(!text_matches("Gone", "Gone away"));
    assert!(text_matches("Invalid query for dealer <dealer>: <reason>", "Invalid query for dealer \"f\": bad"));
    assert!(text_matches("unknown operator <op> (expected <, <=)", "unknown operator \"=\" (expected <, <=)"));
    assert!(!text_matches("unknown operator <op> (expected <, <=)", "unknown operator \"=\" (expected <)"));
}

#[test]
fn the_matcher_reports_what_differs() {
    let mut captures = Captures::new();
    let frame = json!({"service": "s", "message": {"type": "response", "callId": 1, "data": "abcdefghijklmnopqrstuvwxyz012345"}});
    let pattern = json!({"service": "s", "message": {"type": "response", "callId": 1, "data": "$token:t"}});
    assert_eq!(check(&pattern, &frame, &mut captures, "frame"), Ok(()));
    assert_eq!(captures["t"], json!("abcdefghijklmnopqrstuvwxyz012345"));
    assert_eq!(
        resolve(&json!({"token": "$ref:t", "text": "$$1"}), &captures),
        Ok(json!({"token": frame["message"]["data"], "text": "$1"}))
    );
    let extra = json!({"service": "s", "message": {"type": "response", "callId": 1, "data": null, "more": 1}});
    assert!(check(
        &json!({"service": "s", "message": {"type": "response", "callId": 1, "data": null}}),
        &extra,
        &mut captures,
        "frame"
    )
    .is_err_and(|err| err.contains("more")));
    assert!(check(&json!("$timestamp"), &json!("2026-05-01T12:34:56.789+00:00"), &mut captures, "t").is_ok());
    assert!(check(&json!("$timestamp"), &json!("2026-05-01T12:34:56Z"), &mut captures, "t").is_err());
    assert!(check(&json!("$prefix:Invalid JSON: "), &json!("Invalid JSON: expected value"), &mut captures, "t").is_ok());
    assert!(check(&json!([1, 2]), &json!([2, 1]), &mut captures, "t").is_err());
    assert!(check(&json!("$nonsense"), &json!(1), &mut captures, "t").is_err());
    // Offsets: one server's, then a broker's, whose epoch the offsets sent later take.
    assert_eq!(resolve(&json!("$offset:3"), &captures), Ok(json!("3")));
    assert!(check(&json!("$offset:2"), &json!("2"), &mut captures, "t").is_ok());
    assert!(check(&json!("$offset:2"), &json!("12"), &mut captures, "t").is_err());
    assert!(check(&json!("$offset:2"), &json!("x-2"), &mut captures, "t").is_err());
    assert!(check(&json!("$offset:2"), &json!("1714560000000-2"), &mut captures, "t").is_ok());
    assert_eq!(resolve(&json!({"after": "$offset:3"}), &captures), Ok(json!({"after": "1714560000000-3"})));
}

// ---------------------------------------------------------------------------------------------
// Close codes
// ---------------------------------------------------------------------------------------------

/// `(name, code)` of every `pub const NAME: u16 = CODE;` in src/protocol/codes.rs.
fn codes_rs() -> Vec<(String, u16)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/protocol/codes.rs");
    let source = std::fs::read_to_string(&path).expect("codes.rs is readable");
    source
        .lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("pub const ")?;
            let (name, rest) = rest.split_once(": u16 = ")?;
            Some((name.to_owned(), rest.trim_end_matches(';').trim().parse().ok()?))
        })
        .collect()
}

#[test]
fn the_close_code_table_lists_exactly_the_codes_the_server_sends() {
    let text = std::fs::read_to_string(fixtures().join("close-codes.json")).expect("close-codes.json is readable");
    let table: Value = serde_json::from_str(&text).expect("close-codes.json is JSON");
    let mut listed: Vec<(String, u16)> = table["server"]
        .as_array()
        .expect("a server list")
        .iter()
        .map(|entry| {
            let name = entry["name"].as_str().expect("a name").to_owned();
            (name, u16::try_from(entry["code"].as_u64().expect("a code")).expect("a u16"))
        })
        .collect();
    let mut defined = codes_rs();
    listed.sort();
    defined.sort();
    assert!(!defined.is_empty(), "codes.rs defines the close codes");
    assert_eq!(listed, defined, "close-codes.json's server list and src/protocol/codes.rs");
    // The constants the parse found are the ones the crate exports.
    let exported = [
        ("NORMAL", snorky::protocol::codes::NORMAL),
        ("GOING_AWAY", snorky::protocol::codes::GOING_AWAY),
        ("POLICY_VIOLATION", snorky::protocol::codes::POLICY_VIOLATION),
        ("MESSAGE_TOO_BIG", snorky::protocol::codes::MESSAGE_TOO_BIG),
        ("INVALID_PAYLOAD", snorky::protocol::codes::INVALID_PAYLOAD),
        ("REVOKED", snorky::protocol::codes::REVOKED),
    ];
    for (name, code) in exported {
        assert!(defined.contains(&(name.to_owned(), code)), "{name} = {code} is in codes.rs");
    }
    // Every code the server sends is in the client's table, and only the codes that mean "do not
    // reconnect" (REVOKED) are in the range reserved for that, where the client does not
    // reconnect.
    let client = table["client"].as_array().expect("a client list");
    let reserved = &table["reserved"];
    let (low, high) = (reserved["from"].as_u64().expect("from"), reserved["to"].as_u64().expect("to"));
    for (name, code) in &defined {
        let entry = client.iter().find(|e| e["code"].as_u64() == Some(u64::from(*code)));
        let entry = entry.unwrap_or_else(|| panic!("{name} ({code}) is in the client's table"));
        let terminal = name == "REVOKED";
        assert_eq!((low..=high).contains(&u64::from(*code)), terminal, "{name} ({code}) and the reserved range");
        if terminal {
            assert_eq!(entry["reconnect"], false, "{name}: the client does not reconnect");
        }
    }
}

#[test]
fn every_error_text_of_the_services_is_in_the_document() {
    let document = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md"))
        .expect("docs/protocol.md is readable");
    let missing: Vec<&str> = snorky::protocol::errors::ALL
        .iter()
        .copied()
        .filter(|text| !document.contains(&format!("`\"{text}\"`")))
        .collect();
    assert!(missing.is_empty(), "error texts of src/protocol/errors.rs docs/protocol.md does not list: {missing:?}");
}
