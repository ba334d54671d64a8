//! DataSync on several nodes sharing a broker (Redis): subscriptions and the delta stream are
//! kept in Redis, so a subscription authorized through one node is acquired on any other, and
//! deltas published through any node reach every subscriber, on every node, once and in order.
//!
//! **What Redis holds** (every key under the deployment's hash tag, so that Lua scripts may
//! change several at once, on a Redis Cluster too; `<s>` is the frontend service's name):
//! - `datasync:<s>:stream`, a Redis Stream: every published delta, with the id
//!   `<epoch>-<position>`, positions counting 1, 2, 3... within an epoch. A Stream because a
//!   node reads any range of positions in logarithmic time (`XRANGE`), entries carry their own
//!   fields (the delta and when it was added), and trimming the oldest entries is cheap
//!   (`XTRIM MINID`). It is trimmed to the service's retention by count *and bytes* (Redis
//!   bounds a Stream only by count, so `datasync:<s>:meta` keeps the byte total) and by age.
//! - `datasync:<s>:meta`: the stream's epoch, head, first retained position and bytes. The
//!   epoch is the time the stream started; a Redis that lost its data starts a new one, and an
//!   offset of an earlier epoch is no position any more.
//! - `datasync:<s>:sub:<token>`: a subscription's record (items, identity, the position it
//!   started at and the one it resumes after, its state, holder node and lease). A waiting
//!   record expires with its timeout, so the authorization and resume timeouts hold on every
//!   node. `datasync:<s>:waiting` lists waiting tokens by deadline, to bound them
//!   (`max_waiting`, cluster-wide), and `datasync:<s>:waiting=<identity>` those bound to one
//!   identity (`max_waiting_per_identity`); `datasync:<s>:held:<node>` the tokens a node holds,
//!   so that a dead node's are put back to waiting by whoever reaps it.
//! - `datasync:<s>:keys`: the idempotency keys of recent batches, bounded by age and count.
//!
//! **Deltas.** `publishDeltas` validates the batch on the node that receives it, serializes
//! each delta once, and runs one script that appends the whole batch to the stream (batches
//! never interleave), drops it when its idempotency key was seen, and publishes it on the
//! service's channel in messages of [`PUBLISH_CHUNK`] deltas. Nodes with local subscriptions
//! listen on that channel: Redis sends them the messages in script order, so every node sees
//! the stream in one order. A node keeps a *mirror* of the stream (its [`DeltaStream`], the
//! same structure a single server uses) and one task, the *follower*, appends each message's
//! deltas in position order and routes them to the node's subscriptions. A message that does
//! not follow the mirror's head (a missed message: an outage, a full queue) makes the follower
//! read the missing positions from the stream first; a duplicate is ignored. So every node
//! delivers every delta exactly once, in stream order, whatever it missed.
//!
//! **Acquiring.** A script takes the subscription for this node (refusing a token held by
//! another open connection, bound to another identity, expired, or whose position is no longer
//! retained) and answers where it resumes. The follower then makes the mirror hold every delta
//! from there to the stream's head (reading older ones from Redis), and the subscription joins
//! the node's [`Subscriptions`] exactly as on a single server: it catches up from the mirror,
//! then receives deltas live. A node subscribes to the channel with its first local
//! subscription and unsubscribes once it holds none. A record that says this node holds it
//! while no open connection here does (its release is on its way, or was lost) is taken at once
//! by a client that gives its offset: that client needs nothing the release would carry.
//!
//! **Releasing.** When a connection closes, its subscriptions are marked as releasing, and once
//! its writer is done they wait again in Redis, after the last delta written, for the resume
//! timeout. Each acquisition has a *lease* (a number in the record): a release or cancellation
//! naming an older lease changes nothing, so a late write from a previous holder never undoes a
//! newer acquisition. A release moves the lease on as well (also for a subscription the others
//! put back to waiting when they took this node for dead), so that nothing naming the released
//! lease (a reassertion listed before it, a retried release) can take it back for this node.
//! Every script is loaded into Redis when the node starts and into each new connection (see
//! [`Broker::register_scripts`]): a script Redis lacks would run late, after commands sent
//! after it.
//!
//! **Failures.** Anything that must go through Redis and cannot (authorize, publish, acquire)
//! is answered "Service unavailable" (HTTP 503 to the backend). A release or cancellation that
//! fails is retried once Redis answers. A node that comes back from an outage reads what it
//! missed from the stream, and checks that Redis still knows the subscriptions it holds: those
//! it lost (Redis restarted empty) or that another node took meanwhile are closed with 1008,
//! and so are all local holders when the stream started a new epoch or what a node missed is no
//! longer retained: their clients acquire again and learn that they must resync. The
//! subscriptions of a node that died wait again for the resume timeout; clients that opted in
//! to offsets resume them exactly, others (whose position only that node knew) are told "No such
//! subscription".

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::delta::Delta;
use super::limits::Limits;
use super::router::FunctionKeys;
use super::service::{subscription_error, DataSyncHub, OPEN_HOLDER_GRACE, PREVIOUS_HOLDER_WAIT, PUBLISH_CHUNK};
use super::stream::Offset;
use super::subscription::{Adopted, Detached, SubscriptionError};
use crate::broker::{Broker, BrokerError, Listener, ReapFuture, Reaper, Subscription};
use crate::connection::Connection;
use crate::protocol::RpcError;

/// How many deltas one read of the shared stream returns.
const FETCH_PAGE: usize = 1_000;

/// How many records of a dead node one reaping script puts back.
const REAP_BATCH: usize = 200;

/// How many subscriptions one release or removal script handles.
const WRITE_BATCH: usize = 500;

/// How many messages may wait for the follower. Beyond, they are dropped and the follower reads
/// what they carried from the stream instead, so a slow node costs memory in Redis's stream,
/// which is bounded, not in its own queue.
const FOLLOW_QUEUE: usize = 1_024;

/// The most writes to Redis kept for a retry once it answers again (the oldest go first).
const MAX_PENDING: usize = 100_000;

/// How often an acquisition asks Redis again while another holder lets a subscription go: at
/// first, then twice as long each time up to [`HOLDER_POLL_MAX`].
const HOLDER_POLL: Duration = Duration::from_millis(10);
const HOLDER_POLL_MAX: Duration = Duration::from_millis(200);

/// How long an acquisition without an offset waits for a subscription held on another node to
/// be marked as releasing (its connection closed an instant ago) before it is refused.
const RELEASE_NOTICE: Duration = Duration::from_millis(250);

/// How often a node trims the shared stream by age and retries failed writes.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);

/// The attempts at reading what a node missed before it gives up and tells its clients.
const FILL_ATTEMPTS: u32 = 3;

macro_rules! script {
    ($name:ident, $file:literal) => {
        static $name: LazyLock<redis::Script> =
            LazyLock::new(|| redis::Script::new(concat!(include_str!("lua/prelude.lua"), include_str!($file))));
    };
}

script!(AUTHORIZE, "lua/authorize.lua");
script!(ACQUIRE, "lua/acquire.lua");
script!(RELEASING, "lua/releasing.lua");
script!(RELEASE, "lua/release.lua");
script!(DELETE, "lua/delete.lua");
script!(REAP, "lua/reap.lua");
script!(REASSERT, "lua/reassert.lua");
script!(PUBLISH, "lua/publish.lua");
script!(FETCH, "lua/fetch.lua");
script!(TRIM, "lua/trim.lua");

/// The names of a service's keys.
#[derive(Debug)]
struct Keys {
    meta: String,
    stream: String,
    waiting: String,
    idempotency: String,
    channel: String,
    /// Prefix of subscription records (the token follows).
    records: String,
    /// Prefix of the sets of tokens each node holds (the node follows).
    held: String,
    /// Prefix of the nodes' liveness keys.
    liveness: String,
}

impl Keys {
    fn new(broker: &Broker, service: &str) -> Keys {
        let key = |name: &str| broker.key(&format!("datasync:{service}:{name}"));
        Keys {
            meta: key("meta"),
            stream: key("stream"),
            waiting: key("waiting"),
            idempotency: key("keys"),
            channel: key("deltas"),
            records: key("sub:"),
            held: key("held:"),
            liveness: broker.liveness_key(""),
        }
    }

    fn record(&self, token: &str) -> String {
        format!("{}{token}", self.records)
    }

    fn held_by(&self, node: &str) -> String {
        format!("{}{node}", self.held)
    }
}

/// Where a subscription resumes, as [`Cluster::take`] found it.
#[derive(Debug)]
pub(super) struct Taken {
    /// Its items, as authorized (JSON).
    pub items: String,
    /// The stream's epoch.
    pub epoch: u64,
    /// The position it resumes after.
    pub after: u64,
    /// The stream's head when it was taken.
    pub head: u64,
    /// This acquisition's lease.
    pub lease: u64,
}

/// What Redis answered an acquisition.
#[derive(Debug)]
pub(super) enum Take {
    /// Taken for this node.
    Taken(Taken),
    /// No subscription this client may take.
    None,
    /// It cannot resume from its position; it was dropped.
    Gone,
    /// Another holder has it: `releasing` when its connection closed and is finishing.
    Held { holder: String, releasing: bool },
}

/// Why a node's mirror cannot hold what a subscription needs.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum CoverError {
    /// The deltas are no longer retained (or the stream started over).
    Gone,
    /// Redis did not answer.
    Unavailable,
}

/// A write to Redis to retry once it answers.
#[derive(Debug)]
enum Pending {
    Release(Detached),
    Delete(String, u64),
    /// An acquisition of this token got no answer (Redis stalled, or the connection broke): it
    /// may still run once Redis goes on, leaving the subscription held by this node for a
    /// connection that was told "Service unavailable". Given back unless a connection here
    /// holds it by then.
    Unanswered(String),
}

/// What the follower works on, in order.
enum Event {
    /// A message from the channel: deltas at consecutive positions.
    Deltas(Vec<u8>),
    /// Make the mirror hold every delta of `epoch` after `after` up to `head`.
    Cover { epoch: u64, after: u64, head: u64, done: oneshot::Sender<Result<(), CoverError>> },
    /// Messages may have been missed: read the stream up to its head.
    CatchUp,
    /// The node stopped listening: the mirror starts over with the next message or cover.
    Unfollow,
}

/// A service's link to the broker. Shared by its hub and the follower.
pub(super) struct Cluster {
    broker: Broker,
    keys: Keys,
    /// The node's subscription to the channel, while local subscriptions need it.
    relay: tokio::sync::Mutex<Option<Subscription>>,
    /// Acquisitions in progress: they need the relay before they hold a subscription.
    acquiring: AtomicUsize,
    /// The tokens whose acquisition script is on its way to Redis from here, with how many.
    taking: Mutex<HashMap<String, usize>>,
    /// The subscriptions (token and lease) acquisitions here took in Redis and are adopting.
    adopting: Mutex<HashSet<(String, u64)>>,
    events: mpsc::Sender<Event>,
    /// A message or a reconnection could not be queued for the follower.
    missed: Arc<AtomicBool>,
    /// The broker came back after an outage: the follower checks what Redis still knows.
    reconnected: Arc<AtomicBool>,
    /// Writes to Redis that failed, retried when it answers again.
    pending: Mutex<VecDeque<Pending>>,
    /// When maintenance last ran.
    maintained: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("node", &self.broker.node()).field("keys", &self.keys).finish_non_exhaustive()
    }
}

/// Counts an acquisition in progress while it lives.
pub(super) struct Acquiring<'a>(&'a AtomicUsize);

impl Drop for Acquiring<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A subscription an acquisition took in Redis, until the acquisition ends (see
/// [`Cluster::adopting`]).
pub(super) struct Adopting<'a> {
    cluster: &'a Cluster,
    lease: (String, u64),
}

impl Drop for Adopting<'_> {
    fn drop(&mut self) {
        crate::sync::lock(&self.cluster.adopting).remove(&self.lease);
    }
}

/// An acquisition script of `token` on its way, until its answer (or its timeout).
struct Taking<'a> {
    cluster: &'a Cluster,
    token: &'a str,
}

impl Drop for Taking<'_> {
    fn drop(&mut self) {
        let mut taking = crate::sync::lock(&self.cluster.taking);
        if let Some(count) = taking.get_mut(self.token) {
            *count -= 1;
            if *count == 0 {
                taking.remove(self.token);
            }
        }
    }
}

fn unavailable(service: &str, what: &str, err: &BrokerError) -> RpcError {
    log::warn!("datasync {service:?}: {what} could not reach the broker: {err}");
    RpcError::Unavailable
}

fn number(text: &str) -> Result<u64, BrokerError> {
    text.parse().map_err(|_| BrokerError::Unreachable(format!("the broker answered {text:?} for a number")))
}

/// The identity as a record keeps it: `=` and the identity, or empty for none.
fn identity_field(identity: Option<&str>) -> String {
    identity.map_or_else(String::new, |identity| format!("={identity}"))
}

impl Cluster {
    /// Connects the hub to `broker`: starts its follower and registers its reaper.
    pub(super) fn attach(hub: &Arc<DataSyncHub>, broker: &Broker) -> Arc<Cluster> {
        broker.register_scripts(&[
            &AUTHORIZE, &ACQUIRE, &RELEASING, &RELEASE, &DELETE, &REAP, &REASSERT, &PUBLISH, &FETCH, &TRIM,
        ]);
        let (events, receiver) = mpsc::channel(FOLLOW_QUEUE);
        let cluster = Arc::new(Cluster {
            keys: Keys::new(broker, hub.frontend_name()),
            broker: broker.clone(),
            relay: tokio::sync::Mutex::new(None),
            acquiring: AtomicUsize::new(0),
            taking: Mutex::default(),
            adopting: Mutex::default(),
            events,
            missed: Arc::new(AtomicBool::new(false)),
            reconnected: Arc::new(AtomicBool::new(false)),
            pending: Mutex::default(),
            maintained: Mutex::new(None),
        });
        tokio::spawn(follow(Arc::downgrade(hub), Arc::downgrade(&cluster), receiver));
        broker.add_reaper(Arc::new(NodeReaper { hub: Arc::downgrade(hub), cluster: Arc::downgrade(&cluster) }));
        cluster
    }

    /// The broker this is attached to.
    pub(super) fn broker(&self) -> &Broker {
        &self.broker
    }

    fn node(&self) -> &str {
        self.broker.node()
    }

    /// Records an authorization; returns its token.
    pub(super) async fn authorize(
        &self,
        service: &str,
        items: &str,
        identity: Option<&str>,
        limits: &Limits,
    ) -> Result<String, RpcError> {
        let timeout = millis(limits.subscription_timeout);
        loop {
            let token = super::token::new_token();
            let recorded: i64 = self
                .broker
                .script(
                    AUTHORIZE
                        .key(&self.keys.meta)
                        .key(&self.keys.stream)
                        .key(&self.keys.waiting)
                        .key(self.keys.record(&token))
                        .arg(items)
                        .arg(identity_field(identity))
                        .arg(timeout)
                        .arg(limits.max_waiting)
                        .arg(&self.keys.records)
                        .arg(&token)
                        .arg(limits.max_waiting_per_identity),
                )
                .await
                .map_err(|err| unavailable(service, "an authorization", &err))?;
            // 165 bits from a CSPRNG do not collide in practice; the loop makes sure of it.
            if recorded == 1 {
                return Ok(token);
            }
        }
    }

    /// Appends a batch (each delta's JSON) to the shared stream and publishes it; returns how
    /// many were appended (0 when `key` was seen within the idempotency window).
    pub(super) async fn publish(
        &self,
        service: &str,
        deltas: &[String],
        key: Option<&str>,
        limits: &Limits,
    ) -> Result<usize, RpcError> {
        let mut invocation = PUBLISH.prepare_invoke();
        invocation
            .key(&self.keys.meta)
            .key(&self.keys.stream)
            .key(&self.keys.idempotency)
            .key(&self.keys.channel)
            .arg(self.broker.publish_command())
            .arg(key.unwrap_or(""))
            .arg(millis(limits.idempotency_window))
            .arg(limits.max_idempotency_keys)
            .arg(limits.retention.deltas)
            .arg(limits.retention.bytes)
            .arg(millis(limits.retention.age))
            .arg(PUBLISH_CHUNK);
        for delta in deltas {
            invocation.arg(delta);
        }
        self.broker.script(&invocation).await.map_err(|err| unavailable(service, "a publish", &err))
    }

    /// Starts an acquisition: counted until the guard drops, so that the node keeps listening.
    pub(super) fn acquiring(&self) -> Acquiring<'_> {
        self.acquiring.fetch_add(1, Ordering::AcqRel);
        Acquiring(&self.acquiring)
    }

    /// The guard of a subscription [`Cluster::take`] took under `lease` (it recorded it as
    /// adopting, so that it is not mistaken for one an unanswered acquisition left behind):
    /// forgets it when the acquisition ends.
    pub(super) fn adopting(&self, token: &str, lease: u64) -> Adopting<'_> {
        Adopting { cluster: self, lease: (token.to_owned(), lease) }
    }

    /// Gives back the subscriptions that unanswered acquisitions left held by this node with no
    /// connection here (see [`Pending::Unanswered`]); kept for later while Redis fails.
    async fn release_unanswered(
        &self,
        tokens: Vec<String>,
        held_here: impl Fn() -> HashSet<(String, u64)>,
        limits: &Limits,
    ) {
        let mut orphans = Vec::new();
        for token in tokens {
            let cmd =
                redis::cmd("HMGET").arg(self.keys.record(&token)).arg(&["holder", "lease", "state", "after"]).clone();
            match self.broker.query::<(Option<String>, Option<u64>, Option<String>, Option<u64>)>(&cmd).await {
                Ok((Some(holder), Some(lease), Some(state), Some(after))) if self.is_me(&holder) && state == "h" => {
                    orphans.push(Detached { token, lease, written: after });
                }
                Ok(_) => {}
                Err(_) => self.postpone(std::iter::once(Pending::Unanswered(token))),
            }
        }
        // Checked after reading Redis: an acquisition here that took the subscription before
        // the read is adopting it under the lease read, or is done (held here under it); one
        // after the read changed the lease, which the release checks.
        if orphans.is_empty() {
            return;
        }
        let held = held_here();
        let adopting = crate::sync::lock(&self.adopting).clone();
        let taking: HashSet<String> = crate::sync::lock(&self.taking).keys().cloned().collect();
        let mut later = Vec::new();
        orphans.retain(|orphan| {
            if taking.contains(&orphan.token) {
                // Another acquisition's answer is on its way: which lease is whose is known after.
                later.push(Pending::Unanswered(orphan.token.clone()));
                return false;
            }
            let lease = (orphan.token.clone(), orphan.lease);
            !adopting.contains(&lease) && !held.contains(&lease)
        });
        self.postpone(later.into_iter());
        if !orphans.is_empty() {
            log::info!("datasync: giving back {} subscriptions left held by unanswered acquisitions", orphans.len());
            self.release(orphans, limits).await;
        }
    }

    /// Makes sure the node listens on the service's channel (before any position is read, so
    /// that every delta after it arrives).
    pub(super) async fn listen(&self, service: &str) -> Result<(), RpcError> {
        let mut relay = self.relay.lock().await;
        if relay.is_none() {
            let listener = Arc::new(ChannelListener {
                events: self.events.clone(),
                missed: Arc::clone(&self.missed),
                reconnected: Arc::clone(&self.reconnected),
            });
            let subscription = self
                .broker
                .subscribe(&self.keys.channel, listener)
                .await
                .map_err(|err| unavailable(service, "listening for deltas", &err))?;
            *relay = Some(subscription);
        }
        Ok(())
    }

    /// Asks Redis for subscription `token` on behalf of a connection with `identity`, resuming
    /// after `after` when the client gave it. `reclaim`: Redis says this node holds it, but no
    /// open connection here does (see [`DataSyncHub::acquire_shared`]); ignored while another
    /// acquisition of the token is under way here (its script on its way, or adopting), which
    /// this one must not take it from.
    pub(super) async fn take(
        &self,
        token: &str,
        identity: Option<&str>,
        after: Option<Offset>,
        reclaim: bool,
    ) -> Result<Take, BrokerError> {
        let (epoch, seq) = after.map_or((String::new(), 0), |offset| (offset.epoch.to_string(), offset.seq));
        let reclaim = {
            // Checked and counted under one hold of the lock: of two acquisitions of one token
            // here, at most one reclaims.
            let mut taking = crate::sync::lock(&self.taking);
            let under_way = taking.contains_key(token)
                || crate::sync::lock(&self.adopting).iter().any(|(adopted, _)| adopted == token);
            *taking.entry(token.to_owned()).or_insert(0) += 1;
            reclaim && !under_way
        };
        let _taking = Taking { cluster: self, token };
        let reply: Vec<String> = self
            .broker
            .script(
                ACQUIRE
                    .key(&self.keys.meta)
                    .key(&self.keys.stream)
                    .key(&self.keys.waiting)
                    .key(self.keys.record(token))
                    .key(self.keys.held_by(self.node()))
                    .arg(self.node())
                    .arg(identity_field(identity))
                    .arg(epoch)
                    .arg(seq)
                    .arg(&self.keys.liveness)
                    .arg(&self.keys.held)
                    .arg(token)
                    .arg(if reclaim { "1" } else { "0" }),
            )
            .await?;
        Ok(match reply.as_slice() {
            [status] if status == "none" => Take::None,
            [status] if status == "gone" => Take::Gone,
            [status, holder, state] if status == "held" => {
                Take::Held { holder: holder.clone(), releasing: state == "r" }
            }
            [status, items, epoch, after, head, lease] if status == "ok" => {
                let granted = Taken {
                    items: items.clone(),
                    epoch: number(epoch)?,
                    after: number(after)?,
                    head: number(head)?,
                    lease: number(lease)?,
                };
                // Recorded before this acquisition stops counting as on its way (see
                // `release_unanswered`); the caller's `Adopting` guard removes it.
                crate::sync::lock(&self.adopting).insert((token.to_owned(), granted.lease));
                Take::Taken(granted)
            }
            other => return Err(BrokerError::Unreachable(format!("unexpected answer to an acquisition: {other:?}"))),
        })
    }

    /// Whether `holder` is this node.
    pub(super) fn is_me(&self, holder: &str) -> bool {
        holder == self.node()
    }

    /// Has the follower make the mirror hold what follows `after` up to `head`.
    pub(super) async fn cover(&self, epoch: u64, after: u64, head: u64) -> Result<(), CoverError> {
        let (done, outcome) = oneshot::channel();
        if self.events.send(Event::Cover { epoch, after, head, done }).await.is_err() {
            return Err(CoverError::Unavailable);
        }
        outcome.await.unwrap_or(Err(CoverError::Unavailable))
    }

    /// Marks the subscriptions `leases` of a closing connection as releasing.
    pub(super) async fn mark_releasing(&self, leases: &[(String, u64)], limits: &Limits) {
        if leases.is_empty() {
            return;
        }
        let mut invocation = RELEASING.prepare_invoke();
        invocation.arg(self.node()).arg(millis(limits.resume_timeout)).arg(&self.keys.records);
        for (token, lease) in leases {
            invocation.arg(token).arg(lease);
        }
        if let Err(err) = self.broker.script::<()>(&invocation).await {
            log::debug!("datasync: marking subscriptions as releasing: {err}");
        }
    }

    /// Puts subscriptions this node held back to waiting (retried later when Redis fails).
    pub(super) async fn release(&self, detached: Vec<Detached>, limits: &Limits) {
        for chunk in detached.chunks(WRITE_BATCH) {
            if let Err(err) = self.release_now(chunk, limits).await {
                log::warn!(
                    "datasync: {} subscriptions could not be released in Redis (retried later): {err}",
                    chunk.len()
                );
                self.postpone(chunk.iter().cloned().map(Pending::Release));
            }
        }
    }

    async fn release_now(&self, detached: &[Detached], limits: &Limits) -> Result<(), BrokerError> {
        let mut invocation = RELEASE.prepare_invoke();
        invocation
            .key(&self.keys.waiting)
            .key(self.keys.held_by(self.node()))
            .arg(self.node())
            .arg(millis(limits.resume_timeout))
            .arg(limits.max_waiting)
            .arg(&self.keys.records)
            .arg(limits.max_waiting_per_identity);
        for Detached { token, lease, written } in detached {
            invocation.arg(token).arg(lease).arg(written);
        }
        self.broker.script::<()>(&invocation).await
    }

    /// Ends subscriptions this node held (retried later when Redis fails).
    pub(super) async fn delete(&self, ended: Vec<(String, u64)>) {
        for chunk in ended.chunks(WRITE_BATCH) {
            if let Err(err) = self.delete_now(chunk).await {
                log::warn!(
                    "datasync: {} subscriptions could not be removed from Redis (retried later): {err}",
                    chunk.len()
                );
                self.postpone(chunk.iter().cloned().map(|(token, lease)| Pending::Delete(token, lease)));
            }
        }
    }

    async fn delete_now(&self, ended: &[(String, u64)]) -> Result<(), BrokerError> {
        let mut invocation = DELETE.prepare_invoke();
        invocation.key(&self.keys.waiting).key(self.keys.held_by(self.node())).arg(self.node()).arg(&self.keys.records);
        for (token, lease) in ended {
            invocation.arg(token).arg(lease);
        }
        self.broker.script::<()>(&invocation).await
    }

    fn postpone(&self, writes: impl Iterator<Item = Pending>) {
        let mut pending = crate::sync::lock(&self.pending);
        pending.extend(writes);
        while pending.len() > MAX_PENDING {
            pending.pop_front();
            log::warn!("datasync: too many writes wait for the broker: the oldest is dropped");
        }
    }

    /// Puts back to waiting what dead node `node` held, in batches.
    async fn reap(&self, node: &str, limits: &Limits) -> Result<usize, BrokerError> {
        let mut total = 0;
        loop {
            let taken: usize = self
                .broker
                .script(
                    REAP.key(&self.keys.waiting)
                        .key(self.keys.held_by(node))
                        .arg(node)
                        .arg(self.broker.liveness_key(node))
                        .arg(millis(limits.resume_timeout))
                        .arg(limits.max_waiting)
                        .arg(&self.keys.records)
                        .arg(REAP_BATCH)
                        .arg(limits.max_waiting_per_identity),
                )
                .await?;
            total += taken;
            if taken < REAP_BATCH {
                return Ok(total);
            }
        }
    }

    /// Reads the stream from position `from`: its epoch, head and first retained position, and
    /// up to `count` deltas (none when `from` is no longer retained).
    async fn fetch(&self, from: u64, count: usize) -> Result<(u64, u64, u64, Vec<String>), BrokerError> {
        let mut reply: Vec<String> =
            self.broker.script(FETCH.key(&self.keys.meta).key(&self.keys.stream).arg(from).arg(count)).await?;
        if reply.len() < 3 {
            return Err(BrokerError::Unreachable("unexpected answer to a read of the stream".into()));
        }
        let deltas = reply.split_off(3);
        Ok((number(&reply[0])?, number(&reply[1])?, number(&reply[2])?, deltas))
    }
}

/// The milliseconds of `duration`, for Redis (saturating).
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Queues the channel's messages for the follower.
struct ChannelListener {
    events: mpsc::Sender<Event>,
    missed: Arc<AtomicBool>,
    reconnected: Arc<AtomicBool>,
}

impl Listener for ChannelListener {
    fn message(&self, payload: &[u8]) {
        if self.events.try_send(Event::Deltas(payload.to_vec())).is_err() {
            self.missed.store(true, Ordering::Release);
        }
    }

    fn reconnected(&self) {
        self.reconnected.store(true, Ordering::Release);
        if self.events.try_send(Event::CatchUp).is_err() {
            self.missed.store(true, Ordering::Release);
        }
    }
}

/// Puts a dead node's subscriptions back to waiting.
struct NodeReaper {
    hub: Weak<DataSyncHub>,
    cluster: Weak<Cluster>,
}

impl Reaper for NodeReaper {
    fn reap(&self, node: String) -> ReapFuture {
        let (hub, cluster) = (self.hub.clone(), self.cluster.clone());
        Box::pin(async move {
            let (Some(hub), Some(cluster)) = (hub.upgrade(), cluster.upgrade()) else { return };
            match cluster.reap(&node, &hub.limits()).await {
                Ok(0) => {}
                Ok(count) => log::info!(
                    "datasync {:?}: {count} subscriptions held on node {node} wait to be resumed",
                    hub.frontend_name()
                ),
                Err(err) => log::warn!("datasync {:?}: reaping node {node}: {err}", hub.frontend_name()),
            }
        })
    }
}

/// A message's deltas: the epoch, the position of the first, and their JSON texts.
fn parse_message(payload: &[u8]) -> Option<(u64, u64, Vec<&str>)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (header, body) = text.split_once('\n')?;
    let (epoch, first) = header.split_once(' ')?;
    Some((epoch.parse().ok()?, first.parse().ok()?, body.split('\n').collect()))
}

/// A delta from the stream. Every delta in it was valid when published; one that is not (a
/// node of another version wrote it) keeps its position but concerns no model, so it reaches
/// nobody.
fn stream_delta(text: &str) -> Delta {
    serde_json::from_str::<Value>(text).ok().and_then(|value| Delta::parse(value).ok()).unwrap_or_else(|| {
        log::error!("datasync: the shared stream holds a delta this node cannot read: {text:.200}");
        Delta::Insert { model: String::new(), data: Value::Null }
    })
}

/// The follower's own state.
struct Follower {
    hub: Weak<DataSyncHub>,
    cluster: Weak<Cluster>,
    /// Whether the mirror follows the stream (it holds a contiguous part of the current epoch,
    /// up to the last message received).
    following: bool,
}

/// Why the mirror could not be filled.
enum FillError {
    /// The positions are no longer retained, or the stream is in another epoch.
    Gone,
    /// Redis did not answer.
    Unreachable(BrokerError),
}

/// The follower task: applies the channel's messages and the acquisitions' covers, in order.
async fn follow(hub: Weak<DataSyncHub>, cluster: Weak<Cluster>, mut events: mpsc::Receiver<Event>) {
    let mut follower = Follower { hub, cluster, following: false };
    while let Some(event) = events.recv().await {
        let (Some(hub), Some(cluster)) = (follower.hub.upgrade(), follower.cluster.upgrade()) else { return };
        match event {
            Event::Deltas(payload) => follower.message(&hub, &cluster, &payload).await,
            Event::Cover { epoch, after, head, done } => {
                let _ = done.send(follower.cover(&hub, &cluster, epoch, after, head).await);
            }
            Event::CatchUp => follower.catch_up(&hub, &cluster).await,
            Event::Unfollow => {
                follower.following = false;
                let mut state = hub.state();
                if state.acquired() == 0 {
                    // Free the mirror: the next follower starts it where it needs it.
                    let (epoch, head) = (state.stream().epoch(), state.stream().head());
                    state.stream_mut().restart(epoch, head + 1);
                }
            }
        }
        if cluster.missed.swap(false, Ordering::AcqRel) {
            follower.catch_up(&hub, &cluster).await;
        }
    }
}

impl Follower {
    /// A message: its deltas in order after the mirror's head, reading first what the mirror
    /// missed before it.
    async fn message(&mut self, hub: &Arc<DataSyncHub>, cluster: &Cluster, payload: &[u8]) {
        let Some((epoch, first, lines)) = parse_message(payload) else {
            log::error!("datasync {:?}: a message from the broker is not a batch of deltas", hub.frontend_name());
            return;
        };
        let (current, head) = {
            let state = hub.state();
            (state.stream().epoch(), state.stream().head())
        };
        if self.following && epoch < current {
            // Sent before the stream started over, and read after: nothing to deliver.
            return;
        }
        if !self.following || current != epoch {
            self.start(hub, epoch, first, self.following);
        } else if first > head + 1 {
            log::info!("datasync {:?}: reading {} deltas this node missed", hub.frontend_name(), first - head - 1);
            if let Err(err) = self.fill(hub, cluster, head + 1, first - 1).await {
                Self::lost(hub, &err);
                self.start(hub, epoch, first, false);
            }
        }
        let head = hub.state().stream().head();
        let skip = usize::try_from((head + 1).saturating_sub(first)).unwrap_or(usize::MAX);
        let deltas: Vec<Delta> = lines.into_iter().skip(skip).map(stream_delta).collect();
        hub.route(deltas).await;
    }

    /// Starts the mirror over in `epoch` at position `next`; `over` says the previous epoch was
    /// followed, so that the node's subscriptions may have missed deltas of it.
    fn start(&mut self, hub: &DataSyncHub, epoch: u64, next: u64, over: bool) {
        let mut state = hub.state();
        if over && state.stream().epoch() != epoch {
            let closed = state.close_held("the shared stream started over (Redis lost its data)");
            if closed > 0 {
                log::warn!("datasync {:?}: {closed} connections must resync", hub.frontend_name());
            }
        }
        state.stream_mut().restart(epoch, next);
        self.following = true;
    }

    /// The node's subscriptions may have missed deltas that cannot be read any more.
    fn lost(hub: &DataSyncHub, err: &FillError) {
        let why = match err {
            FillError::Gone => "deltas this node missed are no longer retained".to_owned(),
            FillError::Unreachable(err) => format!("deltas this node missed could not be read: {err}"),
        };
        let closed = hub.state().close_held(&why);
        log::warn!("datasync {:?}: {why}: {closed} connections must resync", hub.frontend_name());
    }

    /// Reads positions `from..=to` of the mirror's epoch from the stream and routes them.
    async fn fill(&mut self, hub: &Arc<DataSyncHub>, cluster: &Cluster, from: u64, to: u64) -> Result<(), FillError> {
        let epoch = hub.state().stream().epoch();
        let mut next = from;
        let mut failures = 0;
        while next <= to {
            let count = usize::try_from(to - next + 1).unwrap_or(usize::MAX).min(FETCH_PAGE);
            let (stream_epoch, _, first, texts) = match cluster.fetch(next, count).await {
                Ok(read) => read,
                Err(err) if failures + 1 < FILL_ATTEMPTS => {
                    failures += 1;
                    log::debug!("datasync {:?}: reading the stream: {err}", hub.frontend_name());
                    tokio::time::sleep(HOLDER_POLL_MAX).await;
                    continue;
                }
                Err(err) => return Err(FillError::Unreachable(err)),
            };
            if stream_epoch != epoch || next < first || texts.is_empty() {
                return Err(FillError::Gone);
            }
            next += u64::try_from(texts.len()).unwrap_or(u64::MAX);
            hub.route(texts.iter().map(|text| stream_delta(text)).collect()).await;
        }
        Ok(())
    }

    /// Makes the mirror hold every delta after `after` up to `head` of `epoch`.
    async fn cover(
        &mut self,
        hub: &Arc<DataSyncHub>,
        cluster: &Cluster,
        epoch: u64,
        after: u64,
        head: u64,
    ) -> Result<(), CoverError> {
        let current = hub.state().stream().epoch();
        if self.following && epoch < current {
            // Taken just before the stream started over: its position is gone.
            return Err(CoverError::Gone);
        }
        if !self.following || current != epoch {
            self.start(hub, epoch, after + 1, self.following);
        }
        // Older deltas than the mirror holds go at its front.
        let first = hub.state().stream().first();
        if after + 1 < first {
            let mut older = Vec::new();
            let mut next = after + 1;
            while next < first {
                let count = usize::try_from(first - next).unwrap_or(usize::MAX).min(FETCH_PAGE);
                let (stream_epoch, _, retained, texts) =
                    cluster.fetch(next, count).await.map_err(|_| CoverError::Unavailable)?;
                if stream_epoch != epoch || next < retained || texts.is_empty() {
                    return Err(CoverError::Gone);
                }
                next += u64::try_from(texts.len()).unwrap_or(u64::MAX);
                older.extend(texts.iter().map(|text| stream_delta(text)));
            }
            let older = hub.keyed(older).await;
            if hub.state().stream_mut().prepend(after + 1, older, Instant::now()).is_err() {
                log::error!("datasync {:?}: the mirror changed while it was filled", hub.frontend_name());
                return Err(CoverError::Gone);
            }
        }
        // Newer deltas than it holds (their messages may still be on their way) follow it.
        let mirror_head = hub.state().stream().head();
        if mirror_head < head {
            match self.fill(hub, cluster, mirror_head + 1, head).await {
                Ok(()) => {}
                Err(FillError::Gone) => return Err(CoverError::Gone),
                Err(FillError::Unreachable(_)) => return Err(CoverError::Unavailable),
            }
        }
        Ok(())
    }

    /// Reads what the mirror missed up to the stream's head; after a reconnection, also checks
    /// that Redis still knows the subscriptions this node holds.
    async fn catch_up(&mut self, hub: &Arc<DataSyncHub>, cluster: &Cluster) {
        if cluster.reconnected.swap(false, Ordering::AcqRel) {
            reassert(hub, cluster).await;
        }
        if !self.following {
            return;
        }
        let (epoch, head) = {
            let state = hub.state();
            (state.stream().epoch(), state.stream().head())
        };
        match cluster.fetch(head + 1, 0).await {
            Ok((stream_epoch, stream_head, _, _)) if stream_epoch != epoch => {
                self.start(hub, stream_epoch, stream_head + 1, true);
            }
            Ok((_, stream_head, _, _)) if stream_head > head => {
                log::info!(
                    "datasync {:?}: reading {} deltas this node missed",
                    hub.frontend_name(),
                    stream_head - head
                );
                if let Err(err) = self.fill(hub, cluster, head + 1, stream_head).await {
                    Self::lost(hub, &err);
                    self.start(hub, epoch, stream_head + 1, false);
                }
            }
            Ok(_) => {}
            Err(err) => {
                // Still unreachable: the broker reports its return again, which catches up.
                log::debug!("datasync {:?}: catching up with the stream: {err}", hub.frontend_name());
            }
        }
    }
}

/// After an outage: keeps the subscriptions Redis still gives this node, and closes the
/// connections of those it lost.
async fn reassert(hub: &DataSyncHub, cluster: &Cluster) {
    let held = hub.state().held();
    if held.is_empty() {
        return;
    }
    let mut invocation = REASSERT.prepare_invoke();
    invocation
        .key(&cluster.keys.waiting)
        .key(cluster.keys.held_by(cluster.node()))
        .arg(cluster.node())
        .arg(&cluster.keys.records);
    for (token, lease, _) in &held {
        invocation.arg(token).arg(lease);
    }
    match cluster.broker.script::<Vec<String>>(&invocation).await {
        Ok(lost) if lost.is_empty() => {}
        Ok(lost) => {
            let lost: HashSet<String> = lost.into_iter().collect();
            let leases: Vec<(String, u64)> = held
                .into_iter()
                .filter(|(token, _, _)| lost.contains(token))
                .map(|(token, lease, _)| (token, lease))
                .collect();
            let closed = hub.state().lose(&leases, "Redis lost the subscription, or another node took it");
            log::warn!("datasync {:?}: {closed} connections must resync after the broker outage", hub.frontend_name());
        }
        Err(err) => {
            cluster.reconnected.store(true, Ordering::Release);
            log::debug!("datasync {:?}: checking the subscriptions held: {err}", hub.frontend_name());
        }
    }
}

impl DataSyncHub {
    /// Periodic work of a node on a broker: stops listening when no local subscription needs
    /// it, retries failed writes, trims the shared stream by age.
    pub(super) async fn maintain(self: &Arc<Self>, cluster: &Cluster) {
        if cluster.acquiring.load(Ordering::Acquire) == 0 && self.state().acquired() == 0 {
            if let Ok(mut relay) = cluster.relay.try_lock() {
                if cluster.acquiring.load(Ordering::Acquire) == 0 && self.state().acquired() == 0 && relay.is_some() {
                    *relay = None;
                    let _ = cluster.events.send(Event::Unfollow).await;
                }
            }
        }
        {
            let mut maintained = crate::sync::lock(&cluster.maintained);
            if maintained.is_some_and(|at| at.elapsed() < MAINTENANCE_INTERVAL) {
                return;
            }
            *maintained = Some(Instant::now());
        }
        if !cluster.broker.is_connected() {
            return;
        }
        if cluster.reconnected.load(Ordering::Acquire) {
            // Checking what Redis still knows failed after the last reconnection: again.
            let _ = cluster.events.try_send(Event::CatchUp);
        }
        let pending: Vec<Pending> = crate::sync::lock(&cluster.pending).drain(..).collect();
        let (mut releases, mut deletes, mut unanswered) = (Vec::new(), Vec::new(), Vec::new());
        for write in pending {
            match write {
                Pending::Release(detached) => releases.push(detached),
                Pending::Delete(token, lease) => deletes.push((token, lease)),
                Pending::Unanswered(token) => unanswered.push(token),
            }
        }
        cluster.release(releases, &self.limits()).await;
        cluster.delete(deletes).await;
        let held_here = || self.state().held().into_iter().map(|(token, lease, _)| (token, lease)).collect();
        cluster.release_unanswered(unanswered, held_here, &self.limits()).await;
        let retention = self.limits().retention;
        let trimmed = cluster
            .broker
            .script::<i64>(
                TRIM.key(&cluster.keys.meta)
                    .key(&cluster.keys.stream)
                    .arg(retention.deltas)
                    .arg(retention.bytes)
                    .arg(millis(retention.age)),
            )
            .await;
        if let Err(err) = trimmed {
            log::debug!("datasync {:?}: trimming the stream: {err}", self.frontend_name());
        }
    }

    /// `acquireSubscription` on a broker (see the module documentation).
    pub(super) async fn acquire_shared(
        self: &Arc<Self>,
        cluster: &Arc<Cluster>,
        token: &str,
        connection: &Arc<Connection>,
        offsets: bool,
        after: Option<Offset>,
    ) -> Result<Offset, RpcError> {
        let service = self.frontend_name();
        if self.state().holds_too_many(connection) {
            return Err(subscription_error(SubscriptionError::TooMany));
        }
        let _acquiring = cluster.acquiring();
        cluster.listen(service).await?;
        // The wait for a holder counts from the first answer naming one, not from this call's
        // start: an answer held up by a broker outage (up to the command timeout) must not eat
        // the time the holder's node has to put the subscription back once the broker returns.
        let mut held_since: Option<Instant> = None;
        let mut poll = HOLDER_POLL;
        let mut reclaim = false;
        let granted = loop {
            let reclaiming = std::mem::take(&mut reclaim);
            let take = match cluster.take(token, connection.identity().id.as_deref(), after, reclaiming).await {
                Ok(take) => take,
                Err(err) => {
                    cluster.postpone(std::iter::once(Pending::Unanswered(token.to_owned())));
                    return Err(unavailable(service, "an acquisition", &err));
                }
            };
            let (wait, here) = match take {
                Take::Taken(granted) => break granted,
                Take::None => return Err(no_such()),
                Take::Gone => return Err(gone(offsets)),
                Take::Held { holder, releasing } => {
                    let here = cluster.is_me(&holder);
                    let wait = if releasing {
                        PREVIOUS_HOLDER_WAIT
                    } else if here {
                        match self.state().holder_of(token) {
                            Some(local) if local.id() == connection.id() => return Err(no_such()),
                            Some(local) if !local.is_closing() && after.is_none() => return Err(no_such()),
                            Some(local) if !local.is_closing() => OPEN_HOLDER_GRACE,
                            // No open connection here holds it: its release is on its way (a
                            // closing connection's, or one retried once Redis answers) or was
                            // lost. A client that gives its offset needs nothing that release
                            // carries: it takes the subscription at once, as from a releasing
                            // holder (the release, naming an older lease, then changes nothing).
                            _ if after.is_some() && !reclaiming => {
                                reclaim = true;
                                continue;
                            }
                            // Closing, or being handed over here: its release is on its way.
                            _ => PREVIOUS_HOLDER_WAIT,
                        }
                    } else if after.is_some() {
                        // The client's previous connection may have been on a node that died:
                        // it is known dead within the node timeout.
                        cluster.broker().node_timeout() + OPEN_HOLDER_GRACE
                    } else {
                        // A connection that just closed there is marked as releasing a moment
                        // after its client could have reconnected here.
                        RELEASE_NOTICE
                    };
                    (wait, here)
                }
            };
            if held_since.get_or_insert_with(Instant::now).elapsed() >= wait {
                log::info!(
                    "datasync {service:?}: an acquisition gave up after {wait:?}: the subscription is still held {}",
                    if here { "by this node" } else { "by another node" },
                );
                return Err(no_such());
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(HOLDER_POLL_MAX);
        };
        let lease = granted.lease;
        let _adopting = cluster.adopting(token, lease);
        let give_back = |written: u64| Detached { token: token.to_owned(), lease, written };
        let prepared = match self.prepare_items(&granted.items).await {
            Ok(prepared) => prepared,
            Err(err) => {
                cluster.release(vec![give_back(granted.after)], &self.limits()).await;
                return Err(err);
            }
        };
        match cluster.cover(granted.epoch, granted.after, granted.head).await {
            Ok(()) => {}
            Err(CoverError::Gone) => {
                cluster.delete(vec![(token.to_owned(), lease)]).await;
                return Err(gone(offsets));
            }
            Err(CoverError::Unavailable) => {
                cluster.release(vec![give_back(granted.after)], &self.limits()).await;
                return Err(RpcError::Unavailable);
            }
        }
        let adopted = Adopted { token: token.to_owned(), items: prepared, after: granted.after, offsets, lease };
        let adopted = self.state().adopt(adopted, connection, Instant::now());
        match adopted {
            Ok(lagging) => {
                self.catch_up_later(lagging);
                Ok(Offset { epoch: granted.epoch, seq: granted.after })
            }
            Err(SubscriptionError::NotRetained) => {
                cluster.delete(vec![(token.to_owned(), lease)]).await;
                Err(gone(offsets))
            }
            Err(err) => {
                cluster.release(vec![give_back(granted.after)], &self.limits()).await;
                Err(subscription_error(err))
            }
        }
    }

    /// The subscriptions `ids` of a connection that closed: marked as releasing in Redis, then,
    /// once its writer is done, waiting after what it wrote.
    pub(super) async fn release_shared(
        self: Arc<Self>,
        cluster: Arc<Cluster>,
        connection: Arc<Connection>,
        ids: Vec<u64>,
    ) {
        if !connection.is_finished() {
            let leases = self.state().leases(&ids);
            cluster.mark_releasing(&leases, &self.limits()).await;
            if tokio::time::timeout(PREVIOUS_HOLDER_WAIT, connection.finished()).await.is_err() {
                log::warn!("datasync {:?}: a closing connection took too long to finish", self.frontend_name());
            }
        }
        let detached = self.state().detach(&ids, &connection);
        cluster.release(detached, &self.limits()).await;
    }

    /// Routes deltas that follow the mirror's head: appended and offered to the node's
    /// subscriptions, a chunk per hold of the lock.
    pub(super) async fn route(self: &Arc<Self>, deltas: Vec<Delta>) {
        if deltas.is_empty() {
            return;
        }
        let keyed = self.keyed(deltas).await;
        let mut keyed = keyed.into_iter().peekable();
        while keyed.peek().is_some() {
            let chunk = keyed.by_ref().take(PUBLISH_CHUNK);
            let (_, lagging) = self.state().publish(chunk, Instant::now());
            self.catch_up_later(lagging);
            if keyed.peek().is_some() {
                tokio::task::yield_now().await;
            }
        }
    }

    /// Pairs deltas with the keys of function-keyed dealers, computed on a worker thread (user
    /// code) when some dealer has a key function.
    pub(super) async fn keyed(self: &Arc<Self>, deltas: Vec<Delta>) -> Vec<(Delta, FunctionKeys)> {
        if !self.has_key_functions() {
            return deltas.into_iter().map(|delta| (delta, FunctionKeys::default())).collect();
        }
        let hub = Arc::clone(self);
        let count = deltas.len();
        match tokio::task::spawn_blocking(move || hub.with_keys(deltas)).await {
            Ok(keyed) => keyed,
            Err(err) => {
                log::error!("datasync {:?}: computing keys of {count} deltas failed: {err}", self.frontend_name());
                Vec::new()
            }
        }
    }
}

fn no_such() -> RpcError {
    subscription_error(SubscriptionError::NoSuchSubscription)
}

/// The reply when a subscription cannot resume from its position: the client resyncs.
fn gone(offsets: bool) -> RpcError {
    subscription_error(if offsets { SubscriptionError::NotRetained } else { SubscriptionError::NoSuchSubscription })
}
