//! What Chat, Cursors and Messaging share when several nodes run on one broker.
//!
//! **Events.** A node tells the others what happened by publishing an event on a broker
//! channel: a room's channel (a Chat channel, a Cursors document) or a node's own channel
//! (Messaging). An event is a one-line JSON header saying what happened and who did it, then
//! the frame to push, serialized once by the node where it happened; receiving nodes queue that
//! text as it is. The events of one room go through one Redis channel, so every node sees them
//! in one order, and the scripts that change a room's state publish its events themselves, so
//! that order is also the order of the changes.
//!
//! **Joining a room.** A connection joining a room is first added to the node's room as
//! *pending*: it receives nothing. The join script publishes a `join` event, and the node's
//! listener starts keeping the room's events for the connection when that event comes back.
//! Redis writes the event to this node's subscription before it answers the script, and the
//! broker hands it to the listener before the answer (see `broker`), so the script's answer
//! (the room's state: members, cursors) is the state as of that event. The service then queues
//! the `join` reply itself, followed by the events kept, and the connection is active: it gets
//! its listing, then exactly the events that followed it, on every node (see `rooms`). For the
//! same reason a node's own event reaches its members before the request that published it is
//! answered (a Chat message reaches its sender before the sender's reply).
//!
//! **Node records.** Each node records, in a hash of its own, what its connections hold
//! (presences, names, cursors), and adds itself to the service's set of *holders*. [`reap`]
//! removes exactly what a dead node held, each record once with the pushes its removal calls
//! for, however many nodes reap it at once; its scripts check the dead node's liveness key
//! first, so a node that came back keeps what it holds. [`sweep`] reaps every dead holder: on
//! the node that noticed a death, and again after a reap failed. [`heal`] makes Redis agree
//! with this node again after an outage: it removes the records whose removal failed meanwhile
//! (their pushes go out then) and puts back what Redis lost (restarted empty, or this node was
//! reaped while it was cut off). Then, once every live node had the time to do the same (the
//! node timeout), [`NodeRecords::sync`] tells this node's connections what they missed.
//!
//! Race-freedom of [`heal`]: a node adds a record to its local state *before* writing it to
//! Redis and removes it locally *before* removing it from Redis. So a record that is in Redis
//! and not held locally (read in that order) is stale, and a record that was put back and is no
//! longer held afterwards is removed again.

pub mod rooms;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::broker::{Broker, BrokerError, ReapFuture, Reaper, Rejoin};
use crate::connection::ConnectionId;
use crate::protocol::{Frame, RpcError};

/// How many records one script handles: reaping and healing walk a node's records in batches
/// of this size, so no script holds Redis for long.
pub const BATCH: usize = 200;

/// How long after a failed write to Redis the node tries to make Redis agree with it again
/// (an outage that the broker notices triggers that too, when Redis is back).
const HEAL_DELAY: Duration = Duration::from_secs(1);

/// What an event reports; it says which of a room's members get the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A connection joined the room: it becomes active on its node. The frame, if any, goes to
    /// the room's other identities (Chat's `joined` presence).
    #[serde(rename = "j")]
    Join,
    /// A connection left; the frame, if any, goes to the room's other identities (Chat's `left`).
    #[serde(rename = "l")]
    Leave,
    /// The frame goes to every active member (Chat messages).
    #[serde(rename = "m")]
    All,
    /// The frame goes to the active members of identity `who` but the acting connection (Chat's
    /// read receipts).
    #[serde(rename = "r")]
    Own,
    /// Cursor `handle` was created (or put back); the frame goes to every active member but the
    /// acting connection, as for the two kinds that follow.
    #[serde(rename = "a")]
    Added,
    /// Cursor `handle` moved or changed status.
    #[serde(rename = "u")]
    Updated,
    /// Cursor `handle` was removed.
    #[serde(rename = "d")]
    Removed,
    /// The frame goes to connection `connection` of the receiving node, if it still holds the
    /// Messaging name `who`.
    #[serde(rename = "n")]
    Direct,
    /// Node `node` read the room's state here (`connection` is its marker, see `rooms`):
    /// nothing is pushed.
    #[serde(rename = "s")]
    Synced,
}

/// The header of an event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    /// What happened.
    #[serde(rename = "k")]
    pub kind: Kind,
    /// The node of the acting (or addressed) connection.
    #[serde(rename = "n")]
    pub node: String,
    /// The acting (or addressed) connection, numbered by its node.
    #[serde(rename = "c")]
    pub connection: ConnectionId,
    /// The identity concerned (Chat) or the name addressed (Messaging).
    #[serde(rename = "w", default, skip_serializing_if = "Option::is_none")]
    pub who: Option<String>,
    /// The cursor concerned (Cursors).
    #[serde(rename = "h", default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<u64>,
    /// A digest of what the cursor now is (Cursors: [`version`]).
    #[serde(rename = "v", default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// A digest of a value's text (the first 8 bytes of its SHA-256): two nodes compare what they
/// told their members with what Redis holds by it.
pub fn version(text: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(text.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    u64::from_be_bytes(first)
}

impl Header {
    /// A header for an event of `connection` on `node`.
    pub fn new(kind: Kind, node: &str, connection: ConnectionId, who: Option<&str>) -> Header {
        Header { kind, node: node.to_owned(), connection, who: who.map(str::to_owned), handle: None, version: None }
    }

    /// The header with cursor `handle`, and what it now is (`None`: removed).
    #[must_use]
    pub fn cursor(mut self, handle: u64, version: Option<u64>) -> Header {
        self.handle = Some(handle);
        self.version = version;
        self
    }

    /// Whether the event is about connection `id` of node `node`.
    pub fn is(&self, node: &str, id: ConnectionId) -> bool {
        self.connection == id && self.node == node
    }

    /// The event as it travels: the header, a newline, then the frame's text (none for events
    /// that push nothing). A serialized frame never contains a raw newline.
    pub fn encode(&self, frame: Option<&Frame>) -> Vec<u8> {
        let mut payload = serde_json::to_vec(self).unwrap_or_default();
        payload.push(b'\n');
        if let Some(frame) = frame {
            payload.extend_from_slice(frame.as_str().as_bytes());
        }
        payload
    }

    /// Reads an event; `None` (logged) when it is not one.
    pub fn decode(payload: &[u8]) -> Option<(Header, Option<Frame>)> {
        let split = payload.iter().position(|&byte| byte == b'\n');
        let parsed = split.and_then(|at| {
            let header: Header = serde_json::from_slice(&payload[..at]).ok()?;
            let rest = &payload[at + 1..];
            let frame = if rest.is_empty() { None } else { Some(Frame::from_bytes(rest)?) };
            Some((header, frame))
        });
        if parsed.is_none() {
            log::error!("a broker event is malformed ({} bytes): ignored", payload.len());
        }
        parsed
    }
}

/// Logs a failed broker operation of `service` and answers "Service unavailable".
pub fn unavailable(service: &str, what: &str, err: &BrokerError) -> RpcError {
    log::warn!("{service:?}: {what} could not reach the broker: {err}");
    RpcError::Unavailable
}

/// A service whose nodes record in Redis what their connections hold.
pub trait NodeRecords: Send + Sync + 'static {
    /// The broker.
    fn broker(&self) -> &Broker;

    /// The service's name (for logs, and in its keys).
    fn service_name(&self) -> &str;

    /// The kind of service (`chat`, `cursors`, `messaging`), which its keys start with.
    fn kind(&self) -> &'static str;

    /// The hash of node `node`'s records: field → value.
    fn records_key(&self, node: &str) -> String {
        self.broker().key(&format!("{}:{}:node:{node}", self.kind(), self.service_name()))
    }

    /// The set of the nodes that may have records: the scripts that add a node's records add
    /// the node, [`sweep`] takes out the dead ones that have none left.
    fn holders_key(&self) -> String {
        self.broker().key(&format!("{}:{}:holders", self.kind(), self.service_name()))
    }

    /// The fields of every record this node's connections hold now, those being added
    /// included.
    fn held(&self) -> HashSet<String>;

    /// Removes records `(field, value)` of node `node` (and what they stand for), pushing what
    /// the clients must see. When `reaping`, the script first checks that `node` is still dead
    /// and does nothing if it is not; returns whether it removed.
    fn remove(
        &self,
        node: &str,
        records: Vec<(String, String)>,
        reaping: bool,
    ) -> impl Future<Output = Result<bool, BrokerError>> + Send;

    /// Records again what this node holds under `fields`, which Redis lacks.
    fn restore(&self, fields: Vec<String>) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// After an outage: tells this node's connections what they missed, so that what they
    /// were told agrees with Redis again (nothing for a service that pushes nothing about
    /// what others hold).
    fn sync(&self) -> impl Future<Output = Result<(), BrokerError>> + Send {
        std::future::ready(Ok(()))
    }

    /// Set while a heal is scheduled, so that failures in a burst schedule one.
    fn heal_scheduled(&self) -> &AtomicBool;
}

/// Registers the scripts the collaboration services share with `broker` (see
/// [`Broker::register_scripts`]).
pub fn register_scripts(broker: &Broker) {
    broker.register_scripts(&[&FORGET_HOLDER, &READ_ROOM]);
}

/// Takes a dead node out of the holders once it holds nothing. KEYS: the holders, its records,
/// its liveness key. ARGV: the node.
static FORGET_HOLDER: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        if redis.call('EXISTS', KEYS[3]) == 0 and redis.call('EXISTS', KEYS[2]) == 0 then
            redis.call('SREM', KEYS[1], ARGV[1])
        end
        return 0
        ",
    )
});

/// Reads a room's state and publishes a marker event, in one step (see `rooms`). KEYS: the
/// state's hash. ARGV: the publish command, the room's channel, the marker event. Returns the
/// hash, flat.
pub static READ_ROOM: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        redis.call(ARGV[1], ARGV[2], ARGV[3])
        return redis.call('HGETALL', KEYS[1])
        ",
    )
});

/// Reads a hash's fields and values from a flat reply.
pub fn pairs(flat: Vec<String>) -> Vec<(String, String)> {
    let mut flat = flat.into_iter();
    let mut pairs = Vec::new();
    while let (Some(field), Some(value)) = (flat.next(), flat.next()) {
        pairs.push((field, value));
    }
    pairs
}

/// Every record of node `node`, read in batches.
async fn records(broker: &Broker, key: &str) -> Result<Vec<(String, String)>, BrokerError> {
    let mut all = Vec::new();
    let mut cursor = String::from("0");
    loop {
        let (next, flat): (String, Vec<String>) =
            broker.query(redis::cmd("HSCAN").arg(key).arg(&cursor).arg("COUNT").arg(BATCH)).await?;
        all.extend(pairs(flat));
        if next == "0" {
            // HSCAN may return an element twice; the callers' removals are idempotent, but
            // there is no need to do them twice.
            let mut seen = HashSet::new();
            all.retain(|(field, _)| seen.insert(field.clone()));
            return Ok(all);
        }
        cursor = next;
    }
}

/// Removes what dead node `node` held, pushing what the clients must see. Several nodes may
/// reap one node at once: each record is removed once, with its pushes.
pub async fn reap<S: NodeRecords>(service: &S, node: &str) -> Result<(), BrokerError> {
    let key = service.records_key(node);
    let all = records(service.broker(), &key).await?;
    let count = all.len();
    let mut all = all.into_iter().peekable();
    while all.peek().is_some() {
        let batch: Vec<(String, String)> = all.by_ref().take(BATCH).collect();
        if !service.remove(node, batch, true).await? {
            log::warn!(
                "{:?}: node {node} came back while it was being reaped: it keeps the rest",
                service.service_name()
            );
            return Ok(());
        }
    }
    if count > 0 {
        log::info!("{:?}: removed {count} records of node {node}", service.service_name());
    }
    Ok(())
}

/// Reaps every holder whose liveness key expired, and forgets those left with nothing. Runs
/// when the broker finds a dead node, and after this node could not reach Redis (a reap that
/// failed then is done again).
pub async fn sweep<S: NodeRecords>(service: &S) -> Result<(), BrokerError> {
    let broker = service.broker();
    let holders_key = service.holders_key();
    let holders: Vec<String> = broker.query(redis::cmd("SMEMBERS").arg(&holders_key)).await?;
    for node in holders.iter().filter(|node| *node != broker.node()) {
        let alive: bool = broker.query(redis::cmd("EXISTS").arg(broker.liveness_key(node))).await?;
        if alive {
            continue;
        }
        reap(service, node).await?;
        let mut invocation = FORGET_HOLDER.prepare_invoke();
        invocation.key(&holders_key).key(service.records_key(node)).key(broker.liveness_key(node)).arg(node);
        broker.script::<i64>(&invocation).await?;
    }
    Ok(())
}

/// Makes Redis agree with what this node's connections hold: removes the records they no
/// longer hold (pushing what that calls for), puts back those Redis lacks.
pub async fn heal<S: NodeRecords>(service: &S) -> Result<(), BrokerError> {
    let node = service.broker().node().to_owned();
    let key = service.records_key(&node);
    // Read Redis first, then the local state (see the module's note on race-freedom).
    let remote: HashMap<String, String> = records(service.broker(), &key).await?.into_iter().collect();
    let held = service.held();
    let stale: Vec<(String, String)> =
        remote.iter().filter(|(field, _)| !held.contains(*field)).map(|(f, v)| (f.clone(), v.clone())).collect();
    let missing: Vec<String> = held.into_iter().filter(|field| !remote.contains_key(field)).collect();
    for batch in stale.chunks(BATCH) {
        service.remove(&node, batch.to_vec(), false).await?;
    }
    for batch in missing.chunks(BATCH) {
        service.restore(batch.to_vec()).await?;
    }
    // A record put back for a connection that let it go meanwhile: its own removal may have
    // run before the restoration.
    let held = service.held();
    let gone: Vec<&String> = missing.iter().filter(|field| !held.contains(*field)).collect();
    for batch in gone.chunks(BATCH) {
        let values: Vec<Option<String>> = service.broker().query(redis::cmd("HMGET").arg(&key).arg(batch)).await?;
        let records = batch.iter().zip(values).filter_map(|(field, value)| Some(((*field).clone(), value?))).collect();
        service.remove(&node, records, false).await?;
    }
    if !stale.is_empty() || !missing.is_empty() {
        log::info!(
            "{:?}: the broker agrees with this node again ({} records removed, {} put back)",
            service.service_name(),
            stale.len(),
            missing.len()
        );
    }
    Ok(())
}

/// The head of a removal script's invocation (Chat's departures, Cursors' removals): KEYS the
/// records of node `node` and its liveness key, ARGV the publish command and whether reaping
/// (the script then does nothing if `node` is alive).
pub fn removal<S: NodeRecords>(
    service: &S,
    script: &'static redis::Script,
    node: &str,
    reaping: bool,
) -> redis::ScriptInvocation<'static> {
    let broker = service.broker();
    let mut invocation = script.prepare_invoke();
    invocation
        .key(service.records_key(node))
        .key(broker.liveness_key(node))
        .arg(broker.publish_command())
        .arg(if reaping { "1" } else { "0" });
    invocation
}

/// Waits for `removal` of what this node's connections let go (gone from its state already);
/// when Redis cannot be reached, logs `what` and heals later, which does the removal then.
pub async fn remove_or_heal<S: NodeRecords>(
    service: &Weak<S>,
    what: String,
    removal: impl Future<Output = Result<bool, BrokerError>>,
) {
    if let Err(err) = removal.await {
        let Some(service) = service.upgrade() else { return };
        log::warn!("{:?}: {what} could not reach the broker ({err}); done when it answers", service.service_name());
        schedule_heal(&service);
    }
}

/// Heals and sweeps soon, once, after a write to Redis failed. If Redis is still unreachable
/// then, the broker's reconnection does it later.
pub fn schedule_heal<S: NodeRecords>(service: &Arc<S>) {
    if service.heal_scheduled().swap(true, Ordering::AcqRel) {
        return;
    }
    let service = Arc::downgrade(service);
    tokio::spawn(async move {
        tokio::time::sleep(HEAL_DELAY).await;
        let Some(service) = service.upgrade() else { return };
        service.heal_scheduled().store(false, Ordering::Release);
        if let Err(err) = heal_and_sweep(&*service).await {
            log::debug!("{:?}: healing after a failed write: {err}", service.service_name());
        }
    });
}

async fn heal_and_sweep<S: NodeRecords>(service: &S) -> Result<(), BrokerError> {
    heal(service).await?;
    sweep(service).await
}

/// The hooks a service gives the broker: reap dead nodes, heal after an outage.
pub struct Hooks<S>(pub Weak<S>);

impl<S: NodeRecords> Reaper for Hooks<S> {
    fn reap(&self, node: String) -> ReapFuture {
        let service = self.0.clone();
        Box::pin(async move {
            let Some(service) = service.upgrade() else { return };
            if let Err(err) = sweep(&*service).await {
                log::warn!("{:?}: reaping node {node} failed ({err}): retried", service.service_name());
                schedule_heal(&service);
            }
        })
    }
}

impl<S: NodeRecords> Rejoin for Hooks<S> {
    fn rejoin(&self) -> ReapFuture {
        let service = self.0.clone();
        Box::pin(async move {
            let Some(strong) = service.upgrade() else { return };
            if let Err(err) = heal_and_sweep(&*strong).await {
                log::warn!("{:?}: putting this node's state back in the broker failed: {err}", strong.service_name());
                schedule_heal(&strong);
            }
            // Every live node is back within the node timeout (or counts as dead and is
            // reaped): then what Redis holds is what this node's connections are to know.
            let settle = strong.broker().node_timeout();
            drop(strong);
            tokio::time::sleep(settle).await;
            let Some(service) = service.upgrade() else { return };
            if let Err(err) = service.sync().await {
                log::warn!(
                    "{:?}: telling this node's connections what they missed failed: {err}",
                    service.service_name()
                );
            }
        })
    }
}

/// Registers `service`'s hooks with its broker.
pub fn register_hooks<S: NodeRecords>(service: &Arc<S>) {
    let broker = service.broker().clone();
    broker.add_reaper(Arc::new(Hooks(Arc::downgrade(service))));
    broker.add_rejoin(Arc::new(Hooks(Arc::downgrade(service))));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_with_and_without_a_frame() {
        let header = Header::new(Kind::Own, "node-1", 7, Some("alice"));
        let frame = Frame::from_serialize(&serde_json::json!({"text": "line\nbreak"}));
        let (read, pushed) = Header::decode(&header.encode(Some(&frame))).expect("an event");
        assert_eq!(
            (read.kind, read.node.as_str(), read.connection, read.who.as_deref()),
            (Kind::Own, "node-1", 7, Some("alice"))
        );
        assert_eq!(pushed.expect("a frame").as_str(), frame.as_str());
        let (read, pushed) = Header::decode(&Header::new(Kind::Join, "n", 1, None).encode(None)).expect("an event");
        assert!(read.who.is_none() && pushed.is_none());
        assert!(Header::decode(b"not an event").is_none());
        assert!(Header::decode(b"{}\n").is_none());
    }
}
