//! The WebSocket side of the load generator: connecting, PubSub RPCs, and subscribers that
//! check every delivery (missing, duplicated, out of order) and time it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A client WebSocket.
pub type Ws = WebSocketStream<TcpStream>;

/// How long one connect + handshake + subscribe may take before it counts as failed.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a server listens.
#[derive(Debug, Clone)]
pub struct Target {
    pub ws_url: String,
    pub ws_addr: SocketAddr,
    pub backend_url: String,
}

impl Target {
    pub fn new(ws_url: &str, backend_url: &str) -> Result<Target, String> {
        let authority = ws_url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .ok_or_else(|| format!("bad ws url {ws_url:?}"))?;
        let ws_addr = authority.parse().map_err(|_| format!("ws url {ws_url:?} must be ws://<ip>:<port>/..."))?;
        if !is_loopback(ws_addr) {
            return Err(format!("{ws_url} is not a loopback address: the benchmark only targets 127.0.0.0/8"));
        }
        Ok(Target { ws_url: ws_url.to_owned(), ws_addr, backend_url: backend_url.to_owned() })
    }
}

fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// The source address of the `index`-th connection when spreading over `source_ips` loopback
/// addresses (`None`: let the kernel pick, i.e. 127.0.0.1).
pub fn source_ip(index: usize, source_ips: u8) -> Option<IpAddr> {
    if source_ips <= 1 {
        return None;
    }
    let last = 1 + u8::try_from(index % usize::from(source_ips)).unwrap_or(0);
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
}

/// Opens a WebSocket to `target` (optionally from a given loopback source address).
pub async fn connect(target: &Target, source: Option<IpAddr>) -> Result<Ws, String> {
    connect_url(target, source, &target.ws_url).await
}

/// [`connect`] to `url` (the target's address with, e.g., a `?token=` query).
pub async fn connect_url(target: &Target, source: Option<IpAddr>, url: &str) -> Result<Ws, String> {
    let stream = match source {
        None => TcpStream::connect(target.ws_addr).await,
        Some(ip) => {
            let socket = TcpSocket::new_v4().map_err(|err| format!("socket: {err}"))?;
            socket.bind(SocketAddr::new(ip, 0)).map_err(|err| format!("bind {ip}: {err}"))?;
            socket.connect(target.ws_addr).await
        }
    }
    .map_err(|err| format!("connect: {err}"))?;
    let _ = stream.set_nodelay(true);
    // Client buffers: the deliveries are small, so 8 KiB reads hold many of them.
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(|err| format!("handshake: {err}"))?;
    Ok(ws)
}

/// A PubSub RPC on `ws`: sends `command` for `channel` and waits for its reply. Other frames
/// (there should be none) are skipped.
pub async fn call(ws: &mut Ws, command: &str, channel: &Value, call_id: u64) -> Result<(), String> {
    let request = json!({"service": "pubsub", "message": {"command": command, "params": {"channel": channel}, "callId": call_id}});
    ws.send(Message::text(request.to_string())).await.map_err(|err| format!("send: {err}"))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let reply: Value =
                    serde_json::from_str(text.as_str()).map_err(|_| format!("reply is not JSON: {text}"))?;
                let message = &reply["message"];
                if message["callId"] != json!(call_id) {
                    continue;
                }
                return match message["type"].as_str() {
                    Some("response") => Ok(()),
                    _ => Err(format!("{command} failed: {text}")),
                };
            }
            Some(Ok(Message::Close(frame))) => return Err(format!("closed during {command}: {frame:?}")),
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(format!("{command}: {err}")),
            None => return Err(format!("connection ended during {command}")),
        }
    }
}

/// Any RPC on `ws`: sends `{"service", "message": {"command", "params", "callId"}}` and waits
/// for the reply with that `callId` (other frames, e.g. pushes, are skipped); returns its
/// `data`.
pub async fn call_service(
    ws: &mut Ws,
    service: &str,
    command: &str,
    params: Value,
    call_id: u64,
) -> Result<Value, String> {
    let request = json!({"service": service, "message": {"command": command, "params": params, "callId": call_id}});
    ws.send(Message::text(request.to_string())).await.map_err(|err| format!("send: {err}"))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                // Pushes carry no callId: skip them without parsing.
                if !text.as_str().contains("\"callId\"") {
                    continue;
                }
                let mut reply: Value =
                    serde_json::from_str(text.as_str()).map_err(|_| format!("reply is not JSON: {text}"))?;
                let message = &mut reply["message"];
                if message["callId"] != json!(call_id) {
                    continue;
                }
                return match message["type"].as_str() {
                    Some("response") => Ok(message["data"].take()),
                    _ => Err(format!("{service}.{command} failed: {text}")),
                };
            }
            Some(Ok(Message::Close(frame))) => return Err(format!("closed during {command}: {frame:?}")),
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(format!("{command}: {err}")),
            None => return Err(format!("connection ended during {command}")),
        }
    }
}

/// How a subscriber joins what it listens to, and what its deliveries look like.
#[derive(Debug, Clone)]
pub enum Join {
    /// `pubsub.subscribe` to its channel; deliveries are PubSub messages.
    PubSub,
    /// `datasync.acquireSubscription` with the token of its index (authorized beforehand
    /// through the backend); deliveries are `delta` frames whose object holds `seq`/`ts`.
    DataSync(Arc<Vec<String>>),
    /// Connects with the connection token of its index (`?token=`), then `chat.join` its
    /// channel; deliveries are chat messages whose body holds `seq`/`ts` (presence pushes
    /// are skipped).
    Chat(Arc<Vec<String>>),
}

/// Connects and joins as `join` says, within [`SETUP_TIMEOUT`].
pub async fn connect_and_join(
    target: &Target,
    source: Option<IpAddr>,
    channel: &Value,
    join: &Join,
    index: usize,
) -> Result<Ws, String> {
    match join {
        Join::PubSub => connect_and_subscribe(target, source, channel).await,
        Join::DataSync(tokens) => tokio::time::timeout(SETUP_TIMEOUT, async {
            let mut ws = connect(target, source).await?;
            let token = tokens.get(index).ok_or("no subscription token")?;
            call_service(&mut ws, "datasync", "acquireSubscription", json!({"token": token}), 1).await?;
            Ok(ws)
        })
        .await
        .map_err(|_| "connect + acquire timed out".to_owned())?,
        Join::Chat(tokens) => tokio::time::timeout(SETUP_TIMEOUT, async {
            let token = tokens.get(index).ok_or("no connection token")?;
            let url = format!("{}?token={token}", target.ws_url);
            let mut ws = connect_url(target, source, &url).await?;
            call_service(&mut ws, "chat", "join", json!({"channel": channel}), 1).await?;
            Ok(ws)
        })
        .await
        .map_err(|_| "connect + join timed out".to_owned())?,
    }
}

/// Connects and subscribes, within [`SETUP_TIMEOUT`].
pub async fn connect_and_subscribe(target: &Target, source: Option<IpAddr>, channel: &Value) -> Result<Ws, String> {
    tokio::time::timeout(SETUP_TIMEOUT, async {
        let mut ws = connect(target, source).await?;
        call(&mut ws, "subscribe", channel, 1).await?;
        Ok(ws)
    })
    .await
    .map_err(|_| "connect + subscribe timed out".to_owned())?
}

/// Microseconds since the load generator's epoch (the clock in every benchmark message).
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn new() -> Clock {
        Clock(Instant::now())
    }

    pub fn micros(self) -> u64 {
        u64::try_from(self.0.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

/// The benchmark message: `{"seq": n, "ts": micros, "pad": "..."}`, padded to `size` bytes of
/// JSON.
pub fn payload(seq: u64, ts: u64, size: usize) -> Value {
    let bare = format!(r#"{{"seq":{seq},"ts":{ts},"pad":""}}"#).len();
    let pad = "x".repeat(size.saturating_sub(bare));
    let mut message = Map::new();
    message.insert("seq".into(), seq.into());
    message.insert("ts".into(), ts.into());
    message.insert("pad".into(), pad.into());
    Value::Object(message)
}

/// The `publish` params for the backend call.
pub fn publish_params(channel: &Value, message: Value) -> Map<String, Value> {
    let mut params = Map::new();
    params.insert("channel".into(), channel.clone());
    params.insert("message".into(), message);
    params
}

/// What one subscriber saw.
#[derive(Debug, Default)]
pub struct SubResult {
    /// Index of the channel it subscribed to.
    pub channel: usize,
    /// Connect/subscribe failure, if it never got going.
    pub setup_error: Option<String>,
    /// Deliveries received (duplicates included).
    pub received: u64,
    /// Distinct sequence numbers received.
    pub unique: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Frames that were not a well-formed delivery of the expected channel.
    pub malformed: u64,
    /// Why the connection ended before the scenario did (a close code from the server, EOF...).
    pub closed: Option<String>,
    /// Latency of each delivery, in microseconds.
    pub latencies: Vec<u32>,
    /// When the last delivery arrived.
    pub last_delivery: Option<Instant>,
}

/// Progress of every subscriber (distinct deliveries), read by publishers for pacing.
/// A subscriber that is gone reports `u64::MAX` so it never holds publishers back.
pub struct Progress(Vec<AtomicU64>);

impl Progress {
    pub fn new(count: usize) -> Progress {
        Progress((0..count).map(|_| AtomicU64::new(0)).collect())
    }

    pub fn get(&self, index: usize) -> u64 {
        self.0[index].load(Ordering::Relaxed)
    }

    fn set(&self, index: usize, value: u64) {
        self.0[index].store(value, Ordering::Relaxed);
    }

    /// Distinct deliveries so far over all live subscribers.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|p| p.load(Ordering::Relaxed)).filter(|p| *p != u64::MAX).sum()
    }

    /// The least progress among `indices`.
    pub fn min_of(&self, indices: impl Iterator<Item = usize>) -> u64 {
        indices.map(|i| self.get(i)).min().unwrap_or(u64::MAX)
    }
}

/// A set of subscribers, each on one channel, reading in their own tasks.
pub struct Subscribers {
    pub progress: Arc<Progress>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<SubResult>>,
    ready: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    /// Which subscribers are on each channel.
    pub by_channel: Vec<Vec<usize>>,
}

/// How subscribers are opened.
#[derive(Debug, Clone, Copy)]
pub struct OpenOptions {
    pub concurrency: usize,
    pub source_ips: u8,
    /// Largest sequence number expected per channel (sizes the duplicate-detection bitmaps).
    pub max_seq: u64,
    /// Whether to check and time deliveries (idle connections only keep the socket serviced).
    pub record: bool,
}

impl Subscribers {
    /// Opens one subscriber per entry of `assignment` (the index of its channel in `channels`),
    /// `concurrency` connection attempts at a time.
    pub fn open(
        target: &Target,
        channels: &Arc<Vec<Value>>,
        assignment: &[usize],
        clock: Clock,
        options: OpenOptions,
    ) -> Subscribers {
        Self::open_with(target, channels, assignment, clock, options, &Join::PubSub)
    }

    /// [`open`](Self::open) for any service: subscriber `i` joins as `join` says.
    pub fn open_with(
        target: &Target,
        channels: &Arc<Vec<Value>>,
        assignment: &[usize],
        clock: Clock,
        options: OpenOptions,
        join: &Join,
    ) -> Subscribers {
        Self::open_spread(std::slice::from_ref(target), channels, assignment, clock, options, join)
    }

    /// [`open_with`](Self::open_with) over several servers: subscriber `i` connects to
    /// `targets[i % targets.len()]` (the nodes of a cluster get equal shares).
    pub fn open_spread(
        targets: &[Target],
        channels: &Arc<Vec<Value>>,
        assignment: &[usize],
        clock: Clock,
        options: OpenOptions,
        join: &Join,
    ) -> Subscribers {
        let progress = Arc::new(Progress::new(assignment.len()));
        let (stop, stop_rx) = watch::channel(false);
        let ready = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Semaphore::new(options.concurrency.max(1)));
        let mut by_channel = vec![Vec::new(); channels.len()];
        let mut tasks = Vec::with_capacity(assignment.len());
        for (index, &channel_index) in assignment.iter().enumerate() {
            by_channel[channel_index].push(index);
            let target = targets.get(index % targets.len().max(1)).cloned();
            let channels = Arc::clone(channels);
            let progress = Arc::clone(&progress);
            let gate = Arc::clone(&gate);
            let ready = Arc::clone(&ready);
            let failed = Arc::clone(&failed);
            let mut stop_rx = stop_rx.clone();
            let join = join.clone();
            tasks.push(tokio::spawn(async move {
                let channel = &channels[channel_index];
                let mut result = SubResult { channel: channel_index, ..SubResult::default() };
                let permit = gate.acquire().await;
                let ws = match &target {
                    Some(target) => {
                        connect_and_join(target, source_ip(index, options.source_ips), channel, &join, index).await
                    }
                    None => Err("no server to connect to".to_owned()),
                };
                drop(permit);
                let mut ws = match ws {
                    Ok(ws) => ws,
                    Err(err) => {
                        progress.set(index, u64::MAX);
                        failed.fetch_add(1, Ordering::Relaxed);
                        result.setup_error = Some(err);
                        return result;
                    }
                };
                ready.fetch_add(1, Ordering::Relaxed);
                let shape = Shape::of(&join);
                receive(&mut ws, channel, shape, index, &progress, &mut stop_rx, clock, options, &mut result).await;
                result
            }));
        }
        Subscribers { progress, stop, tasks, ready, failed, by_channel }
    }

    /// Waits (up to `timeout`) until every subscriber is subscribed or has failed; returns
    /// (subscribed, failed).
    pub async fn wait_ready(&self, timeout: Duration) -> (usize, usize) {
        let deadline = Instant::now() + timeout;
        loop {
            let (ready, failed) = (self.ready.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed));
            if ready + failed >= self.tasks.len() || Instant::now() > deadline {
                return (ready, failed);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until subscribers have `expected` distinct deliveries in total, or nothing arrived
    /// for `idle`, or `deadline` passed. Returns whether everything arrived.
    pub async fn wait_drained(&self, expected: u64, idle: Duration, deadline: Instant) -> bool {
        let mut last = self.progress.total();
        let mut last_change = Instant::now();
        loop {
            let total = self.progress.total();
            if total >= expected {
                return true;
            }
            if total != last {
                last = total;
                last_change = Instant::now();
            }
            if last_change.elapsed() > idle || Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Stops every subscriber and collects what each saw.
    pub async fn finish(self) -> Vec<SubResult> {
        let _ = self.stop.send(true);
        let mut results = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            match tokio::time::timeout(Duration::from_secs(30), task).await {
                Ok(Ok(result)) => results.push(result),
                Ok(Err(err)) => {
                    results.push(SubResult { closed: Some(format!("task failed: {err}")), ..SubResult::default() });
                }
                Err(_) => results.push(SubResult { closed: Some("did not stop".into()), ..SubResult::default() }),
            }
        }
        results
    }
}

/// Reads deliveries until told to stop.
#[allow(clippy::too_many_arguments)]
async fn receive(
    ws: &mut Ws,
    channel: &Value,
    shape: Shape,
    index: usize,
    progress: &Progress,
    stop: &mut watch::Receiver<bool>,
    clock: Clock,
    options: OpenOptions,
    result: &mut SubResult,
) {
    let mut seen = vec![0u64; usize::try_from(options.max_seq / 64 + 1).unwrap_or(1)];
    let mut highest: Option<u64> = None;
    let mut checked_shape = false;
    loop {
        let message = tokio::select! {
            biased;
            _ = stop.changed() => break,
            message = ws.next() => message,
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                result.closed = Some(
                    frame.map_or_else(|| "close frame".to_owned(), |f| format!("closed with {}", u16::from(f.code))),
                );
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(err)) => {
                result.closed = Some(format!("error: {err}"));
                break;
            }
            None => {
                result.closed = Some("connection ended".into());
                break;
            }
        };
        if !options.record || (shape == Shape::Chat && text.as_str().contains("\"type\":\"presence\"")) {
            continue;
        }
        let now = clock.micros();
        // The first frame is checked in full (envelope, type, channel); after that the two
        // numbers are read straight from the text to keep the client's cost per delivery low.
        if !checked_shape {
            checked_shape = true;
            if !shape.well_formed(text.as_str(), channel) {
                result.malformed += 1;
                continue;
            }
        }
        let (Some(seq), Some(ts)) = (number_after(text.as_str(), "\"seq\":"), number_after(text.as_str(), "\"ts\":"))
        else {
            result.malformed += 1;
            continue;
        };
        result.received += 1;
        result.latencies.push(u32::try_from(now.saturating_sub(ts)).unwrap_or(u32::MAX));
        result.last_delivery = Some(Instant::now());
        let (word, bit) = (usize::try_from(seq / 64).unwrap_or(usize::MAX), seq % 64);
        match seen.get_mut(word) {
            Some(slot) if *slot & (1 << bit) != 0 => {
                result.duplicated += 1;
                continue;
            }
            Some(slot) => *slot |= 1 << bit,
            None => {
                result.malformed += 1;
                continue;
            }
        }
        if highest.is_some_and(|h| seq < h) {
            result.reordered += 1;
        }
        highest = Some(highest.map_or(seq, |h| h.max(seq)));
        result.unique += 1;
        progress.set(index, result.unique);
    }
    if result.closed.is_some() {
        progress.set(index, u64::MAX);
    }
}

/// The kind of delivery a subscriber expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    PubSub,
    DataSync,
    Chat,
}

impl Shape {
    fn of(join: &Join) -> Shape {
        match join {
            Join::PubSub => Shape::PubSub,
            Join::DataSync(_) => Shape::DataSync,
            Join::Chat(_) => Shape::Chat,
        }
    }

    /// Whether `text` is a well-formed delivery of this kind (for `channel`).
    fn well_formed(self, text: &str, channel: &Value) -> bool {
        match self {
            Shape::PubSub => well_formed(text, channel),
            Shape::DataSync => {
                let Ok(frame) = serde_json::from_str::<Value>(text) else {
                    return false;
                };
                let message = &frame["message"];
                frame["service"] == json!("datasync")
                    && message["type"] == json!("delta")
                    && message["delta"]["type"] == json!("insert")
                    && message["delta"]["data"]["seq"].is_u64()
            }
            Shape::Chat => {
                let Ok(frame) = serde_json::from_str::<Value>(text) else {
                    return false;
                };
                let message = &frame["message"];
                frame["service"] == json!("chat")
                    && message["type"] == json!("message")
                    && &message["channel"] == channel
                    && message["from"].is_string()
                    && message["body"]["seq"].is_u64()
            }
        }
    }
}

fn well_formed(text: &str, channel: &Value) -> bool {
    let Ok(Value::Object(frame)) = serde_json::from_str::<Value>(text) else {
        return false;
    };
    let Some(Value::Object(message)) = frame.get("message") else {
        return false;
    };
    frame.len() == 2
        && frame.get("service") == Some(&json!("pubsub"))
        && message.len() == 3
        && message.get("type") == Some(&json!("message"))
        && message.get("channel") == Some(channel)
        && message.get("message").and_then(|m| m.get("seq")).is_some_and(Value::is_u64)
}

fn number_after(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let digits = text[start..].bytes().take_while(u8::is_ascii_digit).count();
    text[start..start + digits].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_the_requested_size() {
        for (seq, ts) in [(0, 0), (12345, 987_654_321)] {
            assert_eq!(payload(seq, ts, 100).to_string().len(), 100);
        }
    }

    #[test]
    fn numbers_are_read_from_a_delivery() {
        let frame = json!({"service": "pubsub", "message": {"type": "message", "channel": "c", "message": payload(42, 7, 100)}})
            .to_string();
        assert!(well_formed(&frame, &json!("c")));
        assert!(!well_formed(&frame, &json!("d")));
        assert_eq!(number_after(&frame, "\"seq\":"), Some(42));
        assert_eq!(number_after(&frame, "\"ts\":"), Some(7));
    }
}
