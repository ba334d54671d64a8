//! The broker: how several Snorky nodes share one Redis (or Valkey) and behave as one server.
//!
//! Without a broker (the default) a server keeps everything in its process. With one, each
//! node connects to Redis and the services route through it: PubSub publishes go through Redis
//! pub/sub so every node delivers them to its own subscribers; the services that keep shared
//! state (DataSync subscriptions, Chat presence, Cursors, Messaging names) keep it in Redis.
//! There is no clustering of our own: no discovery, no gossip; Redis is the meeting point.
//!
//! What this module gives the services:
//! - [`Broker::publish`] and [`Broker::subscribe`]: channels, subscribed once per node however
//!   many local listeners a channel has, unsubscribed with the last one. A message published by
//!   this node reaches this node's listeners before `publish` returns (Redis writes a message
//!   to subscribers before it answers the publisher, on the same connection).
//! - [`Broker::query`] for commands, each bounded by [`link::COMMAND_TIMEOUT`].
//! - Node liveness: each node refreshes a key that lives three quarters of `node_timeout`
//!   every quarter of it; a node whose key expired (it crashed) is *reaped* by the first live
//!   node that notices, within `node_timeout` of its last refresh: every registered [`Reaper`]
//!   removes what the dead node held and tells the clients that must know (the `left`
//!   presence, removed cursors). When Redis answers again after an outage, the node refreshes
//!   its key, then every registered [`Rejoin`] puts back what Redis lost of it. So does a node
//!   that finds it was reaped while it stayed connected (it stalled for longer than the node
//!   timeout): its listeners are told they may have missed messages, as after an outage.
//! - Connection health: the client library reconnects by itself and resubscribes; the broker
//!   logs the loss and the return once each, counts them, reports them on `/health`, and tells
//!   listeners that they may have missed messages ([`Listener::reconnected`]).

pub mod url;

mod link;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::{FromRedisValue, PushInfo, PushKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use link::Link;
pub use link::COMMAND_TIMEOUT;
pub use url::BrokerUrl;

use crate::error::Error;
use crate::metrics::Metrics;

/// The listeners of each channel, by subscription id.
type Listeners = Mutex<HashMap<String, Vec<(u64, Arc<dyn Listener>)>>>;

/// A future a [`Reaper`] returns.
pub type ReapFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Receives the messages of a channel.
pub trait Listener: Send + Sync {
    /// A message published on the channel, by any node (this one included). Called on the
    /// broker connection's task: it must not block (queueing frames is fine).
    fn message(&self, payload: &[u8]);

    /// The broker connection was lost and is back: messages published meanwhile were missed.
    fn reconnected(&self) {}
}

/// Removes what a dead node held.
pub trait Reaper: Send + Sync {
    /// Node `node` stopped refreshing its liveness key. Called on one live node only.
    fn reap(&self, node: String) -> ReapFuture;
}

/// Puts back in Redis what this node's connections hold, after the broker was unreachable.
pub trait Rejoin: Send + Sync {
    /// Redis answers again after an outage: what this node wrote meanwhile failed, and Redis may
    /// have restarted empty, or this node may have been reaped by the others while it was cut
    /// off. Called on a task of its own (it may take a while), once per reconnection.
    fn rejoin(&self) -> ReapFuture;
}

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Redis did not answer, or answered with an error.
    #[error("broker unreachable: {0}")]
    Unreachable(String),
}

impl From<redis::RedisError> for BrokerError {
    fn from(err: redis::RedisError) -> Self {
        BrokerError::Unreachable(err.to_string())
    }
}

/// What the broker is configured with.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Where Redis is.
    pub url: BrokerUrl,
    /// A PEM root certificate to trust for `rediss://` (default: the system's).
    pub ca: Option<Vec<u8>>,
    /// The prefix of every key and channel, so several applications can share one Redis.
    pub prefix: String,
    /// A readable name for this node (logs, metrics); a random id makes it unique.
    pub node_name: Option<String>,
    /// How long a node that stopped refreshing its liveness key counts as alive.
    pub node_timeout: Duration,
}

/// A connection to the broker, shared by the services of one server. Cheap to clone.
#[derive(Clone)]
pub struct Broker(Arc<Shared>);

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("node", &self.0.node).finish_non_exhaustive()
    }
}

struct Shared {
    /// This node's id: its name (if any) and a random suffix.
    node: String,
    prefix: String,
    node_timeout: Duration,
    link: Link,
    /// Whether Redis answered the last time it was asked.
    connected: AtomicBool,
    /// The listeners of each channel, by subscription id. A std `Mutex`: held for map updates
    /// and to clone a channel's listeners, never across an await.
    listeners: Arc<Listeners>,
    next_listener: AtomicU64,
    /// Subscribe and unsubscribe requests, applied in order by one task.
    requests: mpsc::UnboundedSender<Request>,
    reapers: Mutex<Vec<Arc<dyn Reaper>>>,
    rejoins: Mutex<Vec<Arc<dyn Rejoin>>>,
    /// The Lua scripts the services run (see [`Broker::register_scripts`]).
    scripts: Mutex<Vec<&'static redis::Script>>,
    /// How many times [`Broker::rejoin`] ran, so that the liveness loop can tell a rejoin
    /// after an outage (already under way) from finding this node reaped while connected.
    rejoined: AtomicU64,
    metrics: Arc<Metrics>,
}

enum Request {
    Subscribe(String, tokio::sync::oneshot::Sender<Result<(), BrokerError>>),
    Unsubscribe(String),
    /// The connection reported it was lost.
    Lost,
}

/// The pause before the first attempt to reconnect, doubled after each failure up to
/// [`RECONNECT_MAX`].
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// A listener's place on a channel; dropping it removes the listener (and unsubscribes the
/// node from the channel when it was the last).
pub struct Subscription {
    broker: Weak<Shared>,
    channel: String,
    id: u64,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("channel", &self.channel).finish_non_exhaustive()
    }
}

impl Broker {
    /// Connects to Redis and starts the node's liveness loop (ended by `shutdown`).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when Redis cannot be reached, naming the URL (without its password).
    pub async fn connect(
        config: &BrokerConfig,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Broker, Error> {
        // rustls needs a process-wide crypto provider for `rediss://`; a second install (another
        // server in this process) is refused harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listeners: Arc<Listeners> = Arc::default();
        let (requests, receiver) = mpsc::unbounded_channel();
        let on_push: link::OnPush = {
            let listeners = Arc::clone(&listeners);
            let metrics = Arc::clone(&metrics);
            let requests = requests.clone();
            Arc::new(move |push: PushInfo| {
                if dispatch(&listeners, &metrics, push) {
                    let _ = requests.send(Request::Lost);
                }
                Ok(())
            })
        };
        let link = Link::connect(&config.url, config.ca.clone(), on_push).await?;
        let random: u64 = rand::random();
        let node = match &config.node_name {
            Some(name) => format!("{name}-{random:016x}"),
            None => format!("{random:016x}"),
        };
        let shared = Arc::new(Shared {
            node,
            prefix: config.prefix.clone(),
            node_timeout: config.node_timeout,
            link,
            connected: AtomicBool::new(true),
            listeners,
            next_listener: AtomicU64::new(1),
            requests,
            reapers: Mutex::default(),
            rejoins: Mutex::default(),
            scripts: Mutex::default(),
            rejoined: AtomicU64::new(0),
            metrics,
        });
        let broker = Broker(shared);
        broker
            .heartbeat()
            .await
            .map_err(|err| Error::Config(format!("cannot reach the broker at {}: {err}", config.url.redacted())))?;
        broker.0.metrics.broker_connected.set(1);
        tokio::spawn(apply_requests(Arc::downgrade(&broker.0), receiver, shutdown.clone()));
        tokio::spawn(liveness(broker.clone(), shutdown));
        log::info!("broker {}: node {} joined", config.url.redacted(), broker.0.node);
        Ok(broker)
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.0.node
    }

    /// The key or channel name `name` under this deployment's prefix (hash-tagged, so that
    /// every key of a deployment lives on one Redis Cluster slot and scripts may touch several).
    pub fn key(&self, name: &str) -> String {
        format!("{{{}}}:{name}", self.0.prefix)
    }

    /// A pub/sub channel name under the prefix (not hash-tagged: channels spread over a
    /// cluster's shards).
    pub fn channel(&self, name: &str) -> String {
        format!("{}:{name}", self.0.prefix)
    }

    /// The key whose existence says node `node` is alive (it refreshes it; it expires within
    /// `node_timeout` after the node stopped). Reaping scripts check it, so that a node that
    /// came back meanwhile keeps what it holds.
    pub fn liveness_key(&self, node: &str) -> String {
        self.key(&format!("node:{node}"))
    }

    /// The command that publishes to a channel from a Lua script: `PUBLISH`, or `SPUBLISH` on a
    /// Redis Cluster (where the channel must then be hash-tagged like the script's keys, as
    /// [`Broker::key`] names are).
    pub fn publish_command(&self) -> &'static str {
        match self.0.link {
            Link::Single(_) => "PUBLISH",
            Link::Cluster(_) => "SPUBLISH",
        }
    }

    /// How long a node that stopped refreshing its liveness key counts as alive, at most.
    pub fn node_timeout(&self) -> Duration {
        self.0.node_timeout
    }

    /// Whether Redis answered the last time it was asked.
    pub fn is_connected(&self) -> bool {
        self.0.connected.load(Ordering::Acquire)
    }

    /// Runs one command, bounded by [`COMMAND_TIMEOUT`].
    ///
    /// # Errors
    ///
    /// [`BrokerError::Unreachable`] when Redis fails or does not answer in time.
    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, BrokerError> {
        self.bounded(self.0.link.query(cmd)).await
    }

    /// Runs a pipeline, bounded by [`COMMAND_TIMEOUT`].
    ///
    /// # Errors
    ///
    /// [`BrokerError::Unreachable`] when Redis fails or does not answer in time.
    pub async fn pipeline<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, BrokerError> {
        self.bounded(self.0.link.pipeline(pipe)).await
    }

    /// Runs a Lua script, bounded by [`COMMAND_TIMEOUT`].
    ///
    /// # Errors
    ///
    /// [`BrokerError::Unreachable`] when Redis fails or does not answer in time.
    pub async fn script<T: FromRedisValue>(&self, invocation: &redis::ScriptInvocation<'_>) -> Result<T, BrokerError> {
        self.bounded(self.0.link.script(invocation)).await
    }

    async fn bounded<T>(&self, operation: impl Future<Output = redis::RedisResult<T>>) -> Result<T, BrokerError> {
        match tokio::time::timeout(COMMAND_TIMEOUT, operation).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(err.into()),
            Err(_) => Err(BrokerError::Unreachable("no answer in time".into())),
        }
    }

    /// Publishes `payload` on `channel`. When this node listens on the channel, its listeners
    /// have the message when this returns.
    ///
    /// # Errors
    ///
    /// [`BrokerError::Unreachable`] when Redis is unreachable: the message was not published.
    pub async fn publish(&self, channel: &str, payload: &[u8]) -> Result<(), BrokerError> {
        self.publish_counted(channel, payload).await.map(|_| ())
    }

    /// [`publish`](Self::publish), returning how many nodes listen on `channel` (Redis counts
    /// subscribed connections, one per node; on a Redis Cluster, those of the channel's shard,
    /// which are all of them).
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish).
    pub async fn publish_counted(&self, channel: &str, payload: &[u8]) -> Result<usize, BrokerError> {
        let receivers = self.bounded(self.0.link.publish(channel, payload)).await?;
        self.0.metrics.broker_publishes.inc();
        Ok(receivers)
    }

    /// Adds `listener` to `channel`, subscribing the node when it is the first; resolves once
    /// Redis confirmed, so a message published after it returns reaches the listener.
    ///
    /// # Errors
    ///
    /// [`BrokerError::Unreachable`] when the subscription could not be made.
    pub async fn subscribe(&self, channel: &str, listener: Arc<dyn Listener>) -> Result<Subscription, BrokerError> {
        let id = self.0.next_listener.fetch_add(1, Ordering::Relaxed);
        crate::sync::lock(&self.0.listeners).entry(channel.to_owned()).or_default().push((id, listener));
        let subscription = Subscription { broker: Arc::downgrade(&self.0), channel: channel.to_owned(), id };
        let (done, confirmed) = tokio::sync::oneshot::channel();
        if self.0.requests.send(Request::Subscribe(channel.to_owned(), done)).is_err() {
            return Err(BrokerError::Unreachable("the broker is shutting down".into()));
        }
        match tokio::time::timeout(COMMAND_TIMEOUT, confirmed).await {
            Ok(Ok(Ok(()))) => Ok(subscription),
            Ok(Ok(Err(err))) => Err(err),
            Ok(Err(_)) | Err(_) => Err(BrokerError::Unreachable("no answer in time".into())),
        }
    }

    /// Registers Lua scripts a service runs, for [`load_scripts`](Self::load_scripts) and every
    /// later connection to load before it serves a command.
    ///
    /// Why: the first use of a script Redis does not have is answered NOSCRIPT, and the client
    /// library then loads the script and runs it again, two round trips later. Commands this
    /// node sent meanwhile run first, so a script could run after one it preceded (a
    /// reassertion of the subscriptions held, listed before a release, after that release).
    pub fn register_scripts(&self, scripts: &[&'static redis::Script]) {
        let mut registered = crate::sync::lock(&self.0.scripts);
        for script in scripts {
            if !registered.iter().any(|known| known.get_hash() == script.get_hash()) {
                registered.push(script);
            }
        }
    }

    /// Loads the registered scripts into Redis (at start, once the services registered theirs).
    ///
    /// # Errors
    ///
    /// [`BrokerError::Unreachable`] when Redis fails or does not answer in time.
    pub async fn load_scripts(&self) -> Result<(), BrokerError> {
        self.bounded(self.0.link.load(&self.scripts())).await
    }

    fn scripts(&self) -> Vec<&'static redis::Script> {
        crate::sync::lock(&self.0.scripts).clone()
    }

    /// Registers what to run when a node dies.
    pub fn add_reaper(&self, reaper: Arc<dyn Reaper>) {
        crate::sync::lock(&self.0.reapers).push(reaper);
    }

    /// Registers what to run when Redis answers again after an outage.
    pub fn add_rejoin(&self, rejoin: Arc<dyn Rejoin>) {
        crate::sync::lock(&self.0.rejoins).push(rejoin);
    }

    /// Refreshes this node's liveness key and membership. The key lives three quarters of the
    /// node timeout and is refreshed every quarter ([`liveness`]), so a node that stops is
    /// noticed within the node timeout, and a live one may miss two refreshes in a row.
    ///
    /// Returns true when this node was not a member of the cluster: the others reaped it (it
    /// stalled for longer than the node timeout) or Redis lost its data.
    async fn heartbeat(&self) -> Result<bool, BrokerError> {
        let ttl = u64::try_from((self.0.node_timeout * 3 / 4).as_millis()).unwrap_or(u64::MAX).max(1);
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.key(&format!("node:{}", self.0.node)))
            .arg(1)
            .arg("PX")
            .arg(ttl)
            .ignore()
            .cmd("SADD")
            .arg(self.key("nodes"))
            .arg(&self.0.node);
        let (added,): (i64,) = self.pipeline(&pipe).await?;
        Ok(added == 1)
    }

    /// Finds the nodes whose liveness key expired and reaps each (once, cluster-wide: the
    /// node that removes it from the membership set does the reaping).
    async fn reap_dead_nodes(&self) -> Result<(), BrokerError> {
        let nodes: Vec<String> = self.query(redis::cmd("SMEMBERS").arg(self.key("nodes"))).await?;
        for node in nodes.into_iter().filter(|node| node != &self.0.node) {
            let alive: bool = self.query(redis::cmd("EXISTS").arg(self.key(&format!("node:{node}")))).await?;
            if alive {
                continue;
            }
            let claimed: i64 = self.query(redis::cmd("SREM").arg(self.key("nodes")).arg(&node)).await?;
            if claimed == 1 {
                // A node that stopped gracefully deleted its key to be reaped at once; one that
                // died let it expire.
                log::warn!(
                    "broker: node {node} is gone (it stopped, or was silent for the node timeout of {:?}): removing what \
                     it held",
                    self.0.node_timeout
                );
                self.0.metrics.broker_nodes_reaped.inc();
                let reapers: Vec<Arc<dyn Reaper>> = crate::sync::lock(&self.0.reapers).clone();
                for reaper in reapers {
                    reaper.reap(node.clone()).await;
                }
            }
        }
        Ok(())
    }

    /// Leaves the cluster on shutdown: its liveness key and membership go at once, so the
    /// others do not wait for the timeout.
    async fn leave(&self) {
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(self.key(&format!("node:{}", self.0.node))).ignore();
        if let Err(err) = self.pipeline::<()>(&pipe).await {
            log::debug!("broker: could not remove this node's liveness key: {err}");
        }
    }

    fn set_connected(&self, connected: bool) {
        let was = self.0.connected.swap(connected, Ordering::AcqRel);
        if was == connected {
            return;
        }
        self.0.metrics.broker_connected.set(i64::from(connected));
        if connected {
            log::warn!("broker reachable again: resuming");
            self.rejoin(true);
        } else {
            self.0.metrics.broker_disconnections.inc();
            log::warn!("broker unreachable: serving local connections only until it is back");
        }
    }
}

impl Broker {
    /// Tells the listeners that they may have missed messages, and has every [`Rejoin`] put back
    /// what Redis lost of this node: after an outage, or after the others reaped this node.
    /// `refresh` first refreshes the liveness key, so that no other node reaps what is put back
    /// (Redis may have restarted without it).
    fn rejoin(&self, refresh: bool) {
        self.0.rejoined.fetch_add(1, Ordering::AcqRel);
        let listeners: Vec<Arc<dyn Listener>> =
            crate::sync::lock(&self.0.listeners).values().flatten().map(|(_, l)| Arc::clone(l)).collect();
        for listener in listeners {
            listener.reconnected();
        }
        let rejoins: Vec<Arc<dyn Rejoin>> = crate::sync::lock(&self.0.rejoins).clone();
        let broker = self.clone();
        tokio::spawn(async move {
            if refresh {
                if let Err(err) = broker.heartbeat().await {
                    log::debug!("broker: refreshing this node's liveness key: {err}");
                }
            }
            for rejoin in rejoins {
                tokio::spawn(rejoin.rejoin());
            }
        });
    }
}

/// Delivers a pushed message to the listeners of its channel; true when the push says the
/// connection was lost.
fn dispatch(listeners: &Listeners, metrics: &Metrics, push: PushInfo) -> bool {
    match push.kind {
        PushKind::Message | PushKind::SMessage => {
            let [redis::Value::BulkString(channel), redis::Value::BulkString(payload)] = push.data.as_slice() else {
                return false;
            };
            let Ok(channel) = std::str::from_utf8(channel) else { return false };
            metrics.broker_messages.inc();
            let targets: Vec<Arc<dyn Listener>> = crate::sync::lock(listeners)
                .get(channel)
                .map(|listeners| listeners.iter().map(|(_, l)| Arc::clone(l)).collect())
                .unwrap_or_default();
            for listener in targets {
                listener.message(payload);
            }
            false
        }
        PushKind::Disconnection => true,
        _ => false,
    }
}

/// Applies subscribe and unsubscribe requests in order, so that an unsubscription and a new
/// subscription to the same channel can never overtake each other; and reconnects a lost
/// connection, subscribing again to every channel before taking the next request.
async fn apply_requests(
    shared: Weak<Shared>,
    mut requests: mpsc::UnboundedReceiver<Request>,
    shutdown: CancellationToken,
) {
    let mut subscribed: std::collections::HashSet<String> = std::collections::HashSet::new();
    while let Some(request) = requests.recv().await {
        let Some(shared) = shared.upgrade() else { return };
        let broker = Broker(shared);
        match request {
            Request::Lost => {
                if broker.0.link.resubscribes_itself() {
                    continue;
                }
                if broker.query::<()>(&redis::cmd("PING")).await.is_ok() {
                    // Slow, not lost: the same connection still holds every subscription.
                    broker.set_connected(true);
                    continue;
                }
                broker.set_connected(false);
                reconnect(&broker, &subscribed, &shutdown).await;
            }
            Request::Subscribe(channel, done) => {
                let outcome = if subscribed.contains(&channel) {
                    Ok(())
                } else {
                    match broker.bounded(broker.0.link.subscribe(&channel)).await {
                        Ok(()) => {
                            subscribed.insert(channel);
                            Ok(())
                        }
                        Err(err) => Err(err),
                    }
                };
                let _ = done.send(outcome);
            }
            Request::Unsubscribe(channel) => {
                let still_listened =
                    crate::sync::lock(&broker.0.listeners).get(&channel).is_some_and(|listeners| !listeners.is_empty());
                if !still_listened && subscribed.remove(&channel) {
                    if let Err(err) = broker.bounded(broker.0.link.unsubscribe(&channel)).await {
                        log::debug!("broker: unsubscribing from {channel}: {err}");
                    }
                }
            }
        }
    }
}

/// Makes a new connection (with backoff) and subscribes again to `channels`, until it works or
/// the server shuts down.
async fn reconnect(broker: &Broker, channels: &std::collections::HashSet<String>, shutdown: &CancellationToken) {
    let mut pause = RECONNECT_MIN;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(RECONNECT_MAX);
        if broker.bounded(broker.0.link.reconnect(&broker.scripts())).await.is_err() {
            continue;
        }
        let mut resubscribed = true;
        for channel in channels {
            if broker.bounded(broker.0.link.subscribe(channel)).await.is_err() {
                resubscribed = false;
                break;
            }
        }
        if resubscribed {
            broker.set_connected(true);
            return;
        }
    }
}

/// Refreshes the liveness key every quarter of the node timeout, reaps dead nodes, and tracks
/// whether Redis answers. Leaves the cluster when `shutdown` is cancelled.
async fn liveness(broker: Broker, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(broker.0.node_timeout / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rejoined = broker.0.rejoined.load(Ordering::Acquire);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                broker.leave().await;
                return;
            }
            _ = tick.tick() => {}
        }
        let beat = broker.heartbeat().await;
        if beat.is_err() {
            broker.set_connected(false);
            // A single server's connection is replaced by the request task; make sure it knows.
            let _ = broker.0.requests.send(Request::Lost);
        } else if broker.0.link.resubscribes_itself() {
            broker.set_connected(true);
        }
        // Not a member any more, with no reconnection since the last beat (whose rejoin would
        // be under way): the others reaped this node while it stayed connected (it stalled for
        // longer than the node timeout). What it held is gone from Redis and it may have missed
        // messages, as after an outage. It is a member again (the heartbeat added it), so
        // nothing it puts back is reaped.
        if let Ok(true) = beat {
            if broker.0.rejoined.load(Ordering::Acquire) == rejoined {
                log::warn!("broker: node {} was taken for dead by the others: putting its state back", broker.0.node);
                broker.rejoin(false);
            }
        }
        rejoined = broker.0.rejoined.load(Ordering::Acquire);
        if beat.is_ok() {
            if let Err(err) = broker.reap_dead_nodes().await {
                log::debug!("broker: looking for dead nodes: {err}");
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(shared) = self.broker.upgrade() else { return };
        let mut listeners = crate::sync::lock(&shared.listeners);
        let Some(list) = listeners.get_mut(&self.channel) else { return };
        list.retain(|(id, _)| *id != self.id);
        if list.is_empty() {
            listeners.remove(&self.channel);
            let _ = shared.requests.send(Request::Unsubscribe(self.channel.clone()));
        }
    }
}
