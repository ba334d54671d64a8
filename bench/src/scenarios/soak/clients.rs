//! The soak's load: churning clients and the two publishers.
//!
//! Each client is one browser tab that keeps coming back. A session: connect with a connection
//! token (`?token=`, a JWT for `user-<i>`), `pubsub.subscribe` its channel and
//! `datasync.acquireSubscription` its subscription (authorized through the backend for its
//! owner and identity), receive for a random time, then leave:
//! - most sessions close cleanly (a close frame, read to the server's): the next session
//!   acquires the same subscription token again, a resume that must deliver every delta
//!   published meanwhile, once and in order;
//! - some cancel their subscription and drop the socket without a close frame; the next
//!   session authorizes a new subscription.
//!
//! Every delivery is checked. PubSub: within a session, the messages of a channel arrive without
//! a gap or a repeat, and every message whose publish started after the `subscribe` reply and
//! was answered before the client started leaving arrived. DataSync: over a subscription's whole
//! life (all its sessions), the deltas of its owner arrive without a gap or a repeat, and every
//! delta whose `publishDeltas` started after the authorization and was answered before the
//! cancellation arrived. Before leaving, a client waits (boundedly) for what was accepted.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use snorky::backend_client::BackendClient;
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_tungstenite::tungstenite::Message;

use super::super::common::MESSAGE_SIZE;
use super::super::datasync::delta;
use crate::client::{self, Clock, Target, Ws};

/// The secret the soak's server verifies connection tokens with (loopback only).
pub(super) const TOKEN_SECRET: &str = "snorky-bench-soak-token-secret";
/// The Simple dealer (by `owner`, model `Task`) of `serve-snorky --mode isolation`.
const DEALER: &str = "tasks_by_owner";
/// How long a leaving client waits for what was accepted before it goes.
const DRAIN_MAX: Duration = Duration::from_secs(10);
/// How long an RPC or a close handshake may take.
const REPLY_MAX: Duration = Duration::from_secs(10);
/// A connection token's lifetime (every connection gets a fresh one).
const TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Call ids of the session's RPCs.
const SUBSCRIBE: u64 = 1;
const ACQUIRE: u64 = 2;
const CANCEL: u64 = 3;
/// The first client errors kept for the report.
const ERRORS_KEPT: usize = 20;

/// What the clients and publishers count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Count {
    Sessions,
    Resumes,
    Authorizations,
    Abrupt,
    PubSubReceived,
    DeltasReceived,
    PubSubMissing,
    DeltasMissing,
    Disordered,
    Malformed,
    ServerCloses,
    ConnectErrors,
    RpcErrors,
    Resyncs,
    DrainTimeouts,
    Publishes,
    DeltasPublished,
    PublishErrors,
}

impl Count {
    pub(super) const ALL: [Count; 18] = [
        Count::Sessions,
        Count::Resumes,
        Count::Authorizations,
        Count::Abrupt,
        Count::PubSubReceived,
        Count::DeltasReceived,
        Count::PubSubMissing,
        Count::DeltasMissing,
        Count::Disordered,
        Count::Malformed,
        Count::ServerCloses,
        Count::ConnectErrors,
        Count::RpcErrors,
        Count::Resyncs,
        Count::DrainTimeouts,
        Count::Publishes,
        Count::DeltasPublished,
        Count::PublishErrors,
    ];

    /// What it counts, for the report.
    pub(super) fn label(self) -> &'static str {
        match self {
            Count::Sessions => "sessions (connect, authenticate, subscribe, acquire, receive, leave)",
            Count::Resumes => "DataSync resumes (the same token acquired again by a new connection)",
            Count::Authorizations => "DataSync authorizations (authorizeSubscription with the identity)",
            Count::Abrupt => "sessions ended by cancelling and dropping the socket without a close frame",
            Count::PubSubReceived => "PubSub messages received",
            Count::DeltasReceived => "DataSync deltas received",
            Count::PubSubMissing => "PubSub messages missing (lost while connected)",
            Count::DeltasMissing => "DataSync deltas missing (lost, across resumes)",
            Count::Disordered => "deliveries duplicated or out of order",
            Count::Malformed => "unexpected frames",
            Count::ServerCloses => "connections the server closed or cut",
            Count::ConnectErrors => "failed connects (TCP, handshake or token)",
            Count::RpcErrors => "failed subscribe, acquire, cancel or authorize calls",
            Count::Resyncs => "resumes refused (\"No such subscription\": the client would refetch)",
            Count::DrainTimeouts => "leaving clients that waited in vain for accepted messages",
            Count::Publishes => "PubSub publishes accepted (backend publish)",
            Count::DeltasPublished => "DataSync deltas accepted (backend publishDeltas)",
            Count::PublishErrors => "failed backend publish or publishDeltas calls",
        }
    }

    /// Whether any of it is a failure.
    pub(super) fn is_failure(self) -> bool {
        matches!(
            self,
            Count::PubSubMissing
                | Count::DeltasMissing
                | Count::Disordered
                | Count::Malformed
                | Count::ServerCloses
                | Count::ConnectErrors
                | Count::RpcErrors
                | Count::Resyncs
                | Count::DrainTimeouts
                | Count::PublishErrors
        )
    }
}

/// The counters, shared by every client and publisher.
#[derive(Debug, Default)]
pub(super) struct Counters {
    values: [AtomicU64; Count::ALL.len()],
    /// Clients connected and subscribed right now.
    connected: AtomicI64,
    errors: Mutex<Vec<String>>,
}

impl Counters {
    pub(super) fn add(&self, count: Count, n: u64) {
        self.values[count as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn get(&self, count: Count) -> u64 {
        self.values[count as usize].load(Ordering::Relaxed)
    }

    pub(super) fn connected(&self) -> i64 {
        self.connected.load(Ordering::Relaxed)
    }

    /// Counts a failure and keeps its text if it is among the first.
    fn fail(&self, count: Count, text: String) {
        self.add(count, 1);
        if let Ok(mut errors) = self.errors.lock() {
            if errors.len() < ERRORS_KEPT {
                errors.push(text);
            }
        }
    }

    /// The first failures' texts.
    pub(super) fn errors(&self) -> Vec<String> {
        self.errors.lock().map(|errors| errors.clone()).unwrap_or_default()
    }
}

/// The sequence numbers of one stream (a PubSub channel or a DataSync owner): how many
/// publishes were started, and up to which one they were all accepted.
#[derive(Debug)]
pub(super) struct Streams {
    started: Vec<AtomicU64>,
    accepted: Vec<AtomicU64>,
}

impl Streams {
    pub(super) fn new(count: usize) -> Streams {
        Streams {
            started: (0..count).map(|_| AtomicU64::new(0)).collect(),
            accepted: (0..count).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Takes the next sequence number of stream `index`.
    fn start(&self, index: usize) -> u64 {
        self.started[index].fetch_add(1, Ordering::Relaxed)
    }

    /// Sequence numbers below this one have been started.
    fn started(&self, index: usize) -> u64 {
        self.started[index].load(Ordering::Relaxed)
    }

    /// Every publish below `end` was accepted (the publisher is sequential per stream).
    fn accept(&self, index: usize, end: u64) {
        self.accepted[index].fetch_max(end, Ordering::Relaxed);
    }

    /// Sequence numbers below this one were accepted.
    fn accepted(&self, index: usize) -> u64 {
        self.accepted[index].load(Ordering::Relaxed)
    }
}

/// The shape of the load.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub(super) connections: usize,
    pub(super) channels: usize,
    pub(super) owners: usize,
    pub(super) publish_rate: f64,
    pub(super) delta_rate: f64,
    pub(super) batch: usize,
    pub(super) session_secs: (f64, f64),
    pub(super) pause_max_secs: f64,
    pub(super) abrupt_percent: u8,
    pub(super) ramp_secs: f64,
    pub(super) source_ips: u8,
}

/// What the clients and publishers share.
pub(super) struct Shared {
    pub(super) target: Target,
    pub(super) plan: Plan,
    pub(super) clock: Clock,
    pub(super) pubsub: Streams,
    pub(super) deltas: Streams,
    pub(super) counters: Counters,
}

impl Shared {
    fn channel(index: usize) -> Value {
        json!(format!("room-{index}"))
    }
}

/// Received sequence numbers of one stream, checked as they come.
#[derive(Debug, Clone, Copy, Default)]
struct Sequence {
    /// Everything from here on must arrive (unknown until the subscription is confirmed).
    from: Option<u64>,
    first: Option<u64>,
    /// After the last one received.
    next: Option<u64>,
}

impl Sequence {
    fn starting_at(from: u64) -> Sequence {
        Sequence { from: Some(from), ..Sequence::default() }
    }

    /// Records `seq`; returns (missing, disordered): a gap since the previous one is missing
    /// (both ends arrived, so everything between was published while subscribed), a number not
    /// after the previous one is a duplicate or out of order.
    fn receive(&mut self, seq: u64) -> (u64, u64) {
        match self.next {
            None => {
                self.first = Some(seq);
                self.next = Some(seq + 1);
                (0, 0)
            }
            Some(next) if seq >= next => {
                self.next = Some(seq + 1);
                (seq - next, 0)
            }
            Some(_) => (0, 1),
        }
    }

    /// Whether everything below `end` that must arrive has.
    fn reached(&self, end: u64) -> bool {
        let Some(from) = self.from else { return true };
        end <= from || self.next.is_some_and(|next| next >= end)
    }

    /// What must have arrived below `end` and did not, before the first received and after the
    /// last (gaps between are counted by [`receive`](Self::receive)).
    fn missing(&self, end: u64) -> u64 {
        let Some(from) = self.from else { return 0 };
        let head = self.first.map_or(0, |first| first.min(end).saturating_sub(from));
        let tail = end.saturating_sub(self.next.unwrap_or(from).max(from));
        head + tail
    }
}

/// One client's DataSync subscription, kept over its sessions until cancelled.
#[derive(Debug)]
struct Subscription {
    token: String,
    seq: Sequence,
    acquired_before: bool,
}

/// One client: who it is and what it follows.
struct Client {
    index: usize,
    identity: String,
    channel_index: usize,
    channel: Value,
    owner: usize,
}

/// How a session ended.
enum End {
    /// Its time was up (or the soak is stopping): leave.
    Leave,
    /// The subscription could not be resumed: leave, and authorize a new one.
    Resync,
    /// The server closed or cut the connection (counted); nothing to leave.
    Gone,
}

/// What reading one frame gave.
enum Read {
    /// A delivery (checked and counted) or a frame counted as unexpected.
    Data,
    /// A reply: its call id, whether it succeeded, its text.
    Reply(u64, bool, String),
    /// The deadline passed.
    Timeout,
    /// The connection ended, with why.
    Ended(String),
}

/// Runs client `index` until `stop`; on stop it leaves (cancelling its subscription) and ends.
pub(super) async fn run_client(
    shared: Arc<Shared>,
    backend: Arc<BackendClient>,
    index: usize,
    mut stop: watch::Receiver<bool>,
) {
    let plan = &shared.plan;
    let channel_index = index % plan.channels.max(1);
    let client = Client {
        index,
        identity: format!("user-{index}"),
        channel_index,
        channel: Shared::channel(channel_index),
        owner: index % plan.owners.max(1),
    };
    let mut rng = fastrand::Rng::with_seed(index as u64);
    let mut subscription: Option<Subscription> = None;
    // The first connections spread over the ramp.
    if pause(Duration::from_secs_f64(plan.ramp_secs * rng.f64()), &mut stop).await {
        return;
    }
    loop {
        let stopping = *stop.borrow();
        if subscription.is_none() {
            if stopping {
                return;
            }
            match authorize(&shared, &backend, &client).await {
                Ok(fresh) => subscription = Some(fresh),
                Err(err) => {
                    shared.counters.fail(Count::RpcErrors, format!("{}: {err}", client.identity));
                    if pause(Duration::from_secs(1), &mut stop).await {
                        return;
                    }
                    continue;
                }
            }
        }
        let (low, high) = plan.session_secs;
        let length = if stopping { Duration::ZERO } else { Duration::from_secs_f64(low + (high - low) * rng.f64()) };
        let abrupt = rng.u8(0..100) < plan.abrupt_percent;
        session(&shared, &client, &mut subscription, length, abrupt, &mut stop).await;
        if stopping {
            return;
        }
        if pause(Duration::from_secs_f64(plan.pause_max_secs * rng.f64()), &mut stop).await && subscription.is_none() {
            return;
        }
    }
}

/// Sleeps for `length` unless `stop` comes first; returns whether it did.
async fn pause(length: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        () = sleep(length) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// `authorizeSubscription` for the client's owner, bound to its identity.
async fn authorize(shared: &Shared, backend: &BackendClient, client: &Client) -> Result<Subscription, String> {
    let mut params = Map::new();
    params.insert("items".into(), json!([{"dealer": DEALER, "query": client.owner}]));
    params.insert("identity".into(), json!(client.identity));
    let token = backend
        .call("datasync_backend", "authorizeSubscription", &params)
        .await
        .map_err(|err| format!("authorizeSubscription: {}", chain(&err)))?;
    let token = token.as_str().ok_or("authorizeSubscription returned no token")?.to_owned();
    shared.counters.add(Count::Authorizations, 1);
    // Every delta whose publishing starts from now on is the subscription's to receive.
    let from = shared.deltas.started(client.owner);
    Ok(Subscription { token, seq: Sequence::starting_at(from), acquired_before: false })
}

/// One session of `client`: connect, subscribe and acquire, receive for `length` (or until
/// `stop`), then leave (see the module's documentation).
async fn session(
    shared: &Shared,
    client: &Client,
    subscription: &mut Option<Subscription>,
    length: Duration,
    abrupt: bool,
    stop: &mut watch::Receiver<bool>,
) {
    let counters = &shared.counters;
    let Some(token) = subscription.as_ref().map(|sub| sub.token.clone()) else { return };
    let jwt = snorky::tokens::issue(&client.identity, TOKEN_SECRET.as_bytes(), TOKEN_TTL, None)
        .expect("the soak's identities make short tokens");
    let url = format!("{}?token={jwt}", shared.target.ws_url);
    let source = client::source_ip(client.index, shared.plan.source_ips);
    let ws = match tokio::time::timeout(client::SETUP_TIMEOUT, client::connect_url(&shared.target, source, &url)).await
    {
        Ok(Ok(ws)) => ws,
        Ok(Err(err)) => return counters.fail(Count::ConnectErrors, format!("{}: {err}", client.identity)),
        Err(_) => return counters.fail(Count::ConnectErrors, format!("{}: connect timed out", client.identity)),
    };
    counters.add(Count::Sessions, 1);
    let mut live = Live { shared, client, ws, pubsub: Sequence::default(), subscribed: false };
    let requests = [
        ("pubsub", "subscribe", json!({"channel": client.channel}), SUBSCRIBE),
        ("datasync", "acquireSubscription", json!({"token": token}), ACQUIRE),
    ];
    for (service, command, params, call_id) in requests {
        if let Err(err) = live.send(service, command, params, call_id).await {
            return counters.fail(Count::ServerCloses, format!("{}: {err}", client.identity));
        }
    }
    let end = live.receive(subscription, Instant::now() + length, stop).await;
    let subscribed = live.subscribed;
    match end {
        End::Gone => {}
        End::Leave => {
            // The final stop always cancels and closes cleanly, leaving nothing behind.
            let stopping = *stop.borrow();
            live.leave(subscription, abrupt || stopping, abrupt && !stopping).await;
        }
        End::Resync => {
            *subscription = None;
            live.leave(subscription, false, false).await;
        }
    }
    if subscribed {
        counters.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connected session.
struct Live<'a> {
    shared: &'a Shared,
    client: &'a Client,
    ws: Ws,
    pubsub: Sequence,
    subscribed: bool,
}

impl Live<'_> {
    async fn send(&mut self, service: &str, command: &str, params: Value, call_id: u64) -> Result<(), String> {
        let request = json!({"service": service, "message": {"command": command, "params": params, "callId": call_id}});
        self.ws.send(Message::text(request.to_string())).await.map_err(|err| format!("send {command}: {err}"))
    }

    /// The live part: handles the replies to subscribe and acquire and checks deliveries
    /// until `until` or `stop`.
    async fn receive(
        &mut self,
        subscription: &mut Option<Subscription>,
        until: Instant,
        stop: &mut watch::Receiver<bool>,
    ) -> End {
        let counters = &self.shared.counters;
        let mut replies = 0;
        let replies_deadline = Instant::now() + REPLY_MAX;
        loop {
            // Until both replies came, the session goes on even past its time (a zero-length
            // final session still subscribes and acquires before it leaves).
            let deadline = if replies < 2 { replies_deadline } else { until };
            let read = tokio::select! {
                read = self.read(subscription, deadline) => read,
                _ = stop.changed(), if replies >= 2 => return End::Leave,
            };
            match read {
                Read::Data => {}
                Read::Timeout if replies < 2 => {
                    counters
                        .fail(Count::RpcErrors, format!("{}: no reply to subscribe or acquire", self.client.identity));
                    return End::Leave;
                }
                Read::Timeout => return End::Leave,
                Read::Ended(why) => {
                    counters.fail(Count::ServerCloses, format!("{}: {why}", self.client.identity));
                    return End::Gone;
                }
                Read::Reply(SUBSCRIBE, true, _) => {
                    replies += 1;
                    // Every message whose publishing starts from now on is ours to receive.
                    self.pubsub.from = Some(self.shared.pubsub.started(self.client.channel_index));
                    self.subscribed = true;
                    counters.connected.fetch_add(1, Ordering::Relaxed);
                }
                Read::Reply(ACQUIRE, true, _) => {
                    replies += 1;
                    if let Some(sub) = subscription.as_mut() {
                        if sub.acquired_before {
                            counters.add(Count::Resumes, 1);
                        }
                        sub.acquired_before = true;
                    }
                }
                Read::Reply(ACQUIRE, false, text) if text.contains("No such subscription") => {
                    counters.fail(Count::Resyncs, format!("{}: {text}", self.client.identity));
                    return End::Resync;
                }
                Read::Reply(_, _, text) => {
                    counters.fail(Count::RpcErrors, format!("{}: {text}", self.client.identity));
                    return End::Leave;
                }
            }
        }
    }

    /// Leaves: waits for what was accepted, checks the PubSub session, cancels the subscription
    /// when `cancel` (checking it whole), then closes cleanly, or drops the socket without a
    /// close frame when `drop_socket`.
    async fn leave(mut self, subscription: &mut Option<Subscription>, cancel: bool, drop_socket: bool) {
        let counters = &self.shared.counters;
        let (channel, owner) = (self.client.channel_index, self.client.owner);
        let pubsub_end = self.shared.pubsub.accepted(channel);
        let acquired = subscription.as_ref().is_some_and(|sub| sub.acquired_before);
        let delta_end = if cancel && acquired { self.shared.deltas.accepted(owner) } else { 0 };
        let deadline = Instant::now() + DRAIN_MAX;
        loop {
            let pubsub_done = !self.subscribed || self.pubsub.reached(pubsub_end);
            let deltas_done = subscription.as_ref().is_none_or(|sub| sub.seq.reached(delta_end));
            if pubsub_done && deltas_done {
                break;
            }
            match self.read(subscription, deadline).await {
                Read::Data | Read::Reply(..) => {}
                Read::Timeout => {
                    counters.fail(
                        Count::DrainTimeouts,
                        format!("{}: accepted messages did not come", self.client.identity),
                    );
                    break;
                }
                Read::Ended(why) => {
                    counters.fail(Count::ServerCloses, format!("{}: {why}", self.client.identity));
                    return;
                }
            }
        }
        if self.subscribed {
            counters.add(Count::PubSubMissing, self.pubsub.missing(pubsub_end));
        }
        if cancel && acquired {
            if let Some(token) = subscription.as_ref().map(|sub| sub.token.clone()) {
                if !self.cancel(subscription, &token).await {
                    return;
                }
            }
            if let Some(sub) = subscription.take() {
                counters.add(Count::DeltasMissing, sub.seq.missing(delta_end));
            }
        }
        if drop_socket {
            // Gone without a word: the server learns it from the socket.
            counters.add(Count::Abrupt, 1);
            drop(self.ws);
            return;
        }
        if self.ws.close(None).await.is_ok() {
            let deadline = Instant::now() + REPLY_MAX;
            loop {
                match self.read(subscription, deadline).await {
                    Read::Data | Read::Reply(..) => {}
                    Read::Ended(_) => break,
                    Read::Timeout => {
                        counters.fail(Count::ServerCloses, format!("{}: no close frame back", self.client.identity));
                        break;
                    }
                }
            }
        }
    }

    /// `cancelSubscription`; returns whether it was answered (deliveries meanwhile checked).
    async fn cancel(&mut self, subscription: &mut Option<Subscription>, token: &str) -> bool {
        let counters = &self.shared.counters;
        if let Err(err) = self.send("datasync", "cancelSubscription", json!({"token": token}), CANCEL).await {
            counters.fail(Count::ServerCloses, format!("{}: {err}", self.client.identity));
            return false;
        }
        let deadline = Instant::now() + REPLY_MAX;
        loop {
            match self.read(subscription, deadline).await {
                Read::Data => {}
                Read::Reply(CANCEL, true, _) => return true,
                Read::Reply(_, _, text) => {
                    counters.fail(Count::RpcErrors, format!("{}: {text}", self.client.identity));
                    return true;
                }
                Read::Timeout => {
                    counters.fail(Count::RpcErrors, format!("{}: no reply to cancel", self.client.identity));
                    return false;
                }
                Read::Ended(why) => {
                    counters.fail(Count::ServerCloses, format!("{}: {why}", self.client.identity));
                    return false;
                }
            }
        }
    }

    /// Reads one frame (until `deadline`): deliveries are checked and counted here.
    async fn read(&mut self, subscription: &mut Option<Subscription>, deadline: Instant) -> Read {
        let frame = tokio::select! {
            frame = self.ws.next() => frame,
            () = sleep_until(deadline) => return Read::Timeout,
        };
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => return Read::Ended(format!("closed: {frame:?}")),
            Some(Ok(_)) => return Read::Data,
            Some(Err(err)) => return Read::Ended(err.to_string()),
            None => return Read::Ended("connection ended".into()),
        };
        let counters = &self.shared.counters;
        let Ok(value) = serde_json::from_str::<Value>(text.as_str()) else {
            counters.fail(Count::Malformed, format!("{}: not JSON: {text}", self.client.identity));
            return Read::Data;
        };
        let message = &value["message"];
        match message["type"].as_str() {
            Some(kind @ ("response" | "error")) => {
                Read::Reply(message["callId"].as_u64().unwrap_or(0), kind == "response", text.as_str().to_owned())
            }
            Some("message") if message["channel"] == self.client.channel => {
                let Some(seq) = message["message"]["seq"].as_u64() else {
                    counters.fail(Count::Malformed, format!("{}: {text}", self.client.identity));
                    return Read::Data;
                };
                counters.add(Count::PubSubReceived, 1);
                let (missing, disordered) = self.pubsub.receive(seq);
                counters.add(Count::PubSubMissing, missing);
                counters.add(Count::Disordered, disordered);
                Read::Data
            }
            Some("delta") => {
                let data = &message["delta"]["data"];
                let (seq, owner) = (data["seq"].as_u64(), data["owner"].as_u64());
                let ours = owner.and_then(|owner| usize::try_from(owner).ok()) == Some(self.client.owner);
                match (seq, subscription.as_mut()) {
                    (Some(seq), Some(sub)) if ours => {
                        counters.add(Count::DeltasReceived, 1);
                        let (missing, disordered) = sub.seq.receive(seq);
                        counters.add(Count::DeltasMissing, missing);
                        counters.add(Count::Disordered, disordered);
                    }
                    _ => counters.fail(Count::Malformed, format!("{}: {text}", self.client.identity)),
                }
                Read::Data
            }
            _ => {
                counters.fail(Count::Malformed, format!("{}: {text}", self.client.identity));
                Read::Data
            }
        }
    }
}

/// Publishes to the channels in turn through the backend at `publish_rate` per second, each
/// channel's publishes one after the other, until `stop`.
pub(super) async fn publish_messages(shared: Arc<Shared>, backend: BackendClient, stop: watch::Receiver<bool>) {
    let plan = &shared.plan;
    let channels: Vec<Value> = (0..plan.channels.max(1)).map(Shared::channel).collect();
    let mut tick = ticker(plan.publish_rate);
    let mut turn = 0usize;
    while !*stop.borrow() {
        tick.tick().await;
        let index = turn % channels.len();
        turn += 1;
        let seq = shared.pubsub.start(index);
        let params =
            client::publish_params(&channels[index], client::payload(seq, shared.clock.micros(), MESSAGE_SIZE));
        match backend.call("pubsub_backend", "publish", &params).await {
            Ok(_) => {
                shared.pubsub.accept(index, seq + 1);
                shared.counters.add(Count::Publishes, 1);
            }
            Err(err) => shared.counters.fail(Count::PublishErrors, format!("publish: {}", chain(&err))),
        }
    }
}

/// Publishes deltas for the owners in turn through `publishDeltas`, `batch` per call, at
/// `delta_rate` deltas per second, until `stop`.
pub(super) async fn publish_deltas(shared: Arc<Shared>, backend: BackendClient, stop: watch::Receiver<bool>) {
    let plan = &shared.plan;
    let (owners, batch) = (plan.owners.max(1), plan.batch.max(1));
    let mut tick = ticker(plan.delta_rate / batch as f64);
    let mut turn = 0usize;
    while !*stop.borrow() {
        tick.tick().await;
        let mut deltas = Vec::with_capacity(batch);
        let mut ends = Vec::with_capacity(batch);
        for _ in 0..batch {
            let owner = turn % owners;
            turn += 1;
            let seq = shared.deltas.start(owner);
            deltas.push(delta("Task", Some(owner as u64), seq, shared.clock.micros()));
            ends.push((owner, seq + 1));
        }
        let mut params = Map::new();
        params.insert("deltas".into(), Value::Array(deltas));
        match backend.call("datasync_backend", "publishDeltas", &params).await {
            Ok(_) => {
                for (owner, end) in ends {
                    shared.deltas.accept(owner, end);
                }
                shared.counters.add(Count::DeltasPublished, batch as u64);
            }
            Err(err) => shared.counters.fail(Count::PublishErrors, format!("publishDeltas: {}", chain(&err))),
        }
    }
}

/// An error with its sources (`a: b: c`): a failed backend call says why the connection failed.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A ticker at `rate` per second that does not burst after a slow call.
fn ticker(rate: f64) -> tokio::time::Interval {
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}
