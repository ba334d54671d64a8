//! Chat on several nodes. Presence is counted in Redis, per channel and identity over every
//! node, so an identity with connections on two nodes is one member, `joined` when its first
//! connection anywhere joins and `left` when its last one anywhere leaves. Every event of a
//! channel (presence, messages, read receipts) goes through the channel's broker channel, which
//! every node with members there listens on, so every member sees one order; presence events
//! are published by the scripts that change the counts (see `services::cluster` for joining).
//!
//! In Redis, under the broker's prefix:
//! - `chat:<service>:members:<digest>`: a hash, identity → its connections in the channel;
//! - `chat:<service>:node:<node>`: a hash, `<digest>:<connection>` → `[identity, channel]`:
//!   the node's records (see `services::cluster`), from which a dead node's `left` presences
//!   are pushed;
//! - channel `chat:<service>:room:<digest>`: the channel's events.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};

use serde_json::{json, Value};
use tokio::sync::OnceCell;

use super::{MessagePush, ReadPush};
use crate::broker::{Broker, BrokerError, Listener, Subscription};
use crate::connection::{Connection, ConnectionId};
use crate::protocol::rpc::push_frame;
use crate::protocol::{errors, timestamp, Frame, RpcError};
use crate::services::cluster::{self, unavailable, Echoes, Header, Kind, NodeRecords};
use crate::services::limits::ChatLimits;
use crate::value::ValueKey;

/// Records connections in channels and publishes their `join` events (with the `joined`
/// presence when a count goes from 0 to 1). KEYS: the node's records, then each item's members
/// hash. ARGV: the publish command, then per item: field, record, identity, broker channel,
/// the event when the identity is new there, the event otherwise (empty: none). Returns the
/// members of the first item's channel.
static JOIN: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        for i = 0, (#ARGV - 1) / 6 - 1 do
            local at = 2 + 6 * i
            local event = ARGV[at + 5]
            if redis.call('HSETNX', KEYS[1], ARGV[at], ARGV[at + 1]) == 1 then
                if redis.call('HINCRBY', KEYS[2 + i], ARGV[at + 2], 1) == 1 then event = ARGV[at + 4] end
            end
            if event ~= '' then redis.call(ARGV[1], ARGV[at + 3], event) end
        end
        return redis.call('HKEYS', KEYS[2])
        ",
    )
});

/// Removes connections from channels, publishing the `left` presence when a count reaches 0.
/// KEYS: the records' node's records, its liveness key, then each item's members hash. ARGV:
/// the publish command, reaping (1 or 0), then per item: field, identity, broker channel, the
/// `left` event. Returns 0 when reaping a node that is alive after all (nothing done), else 1.
static LEAVE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        if ARGV[2] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
        for i = 0, (#ARGV - 2) / 4 - 1 do
            local at = 3 + 4 * i
            if redis.call('HDEL', KEYS[1], ARGV[at]) == 1 then
                local members = KEYS[3 + i]
                if redis.call('HINCRBY', members, ARGV[at + 1], -1) <= 0 then
                    redis.call('HDEL', members, ARGV[at + 1])
                    redis.call(ARGV[1], ARGV[at + 2], ARGV[at + 3])
                end
            end
        end
        return 1
        ",
    )
});

/// Chat's state on one node of a cluster.
#[derive(Debug)]
pub struct ChatCluster {
    name: String,
    limits: ChatLimits,
    broker: Broker,
    /// This node's rooms and memberships. A std `Mutex`: never held across an await; events
    /// are queued to members under it, in the order the broker brings them.
    state: Mutex<State>,
    this: Weak<ChatCluster>,
    heal_scheduled: AtomicBool,
    echoes: Echoes,
}

#[derive(Debug, Default)]
struct State {
    rooms: HashMap<ValueKey, Room>,
    /// Each connection's channels, with the value it gave when joining.
    joined: HashMap<ConnectionId, HashMap<ValueKey, Value>>,
}

/// A channel with members on this node.
#[derive(Debug)]
struct Room {
    digest: String,
    members: HashMap<ConnectionId, Member>,
    /// The node's subscription to the channel's events, made by its first member; dropped with
    /// the room.
    relay: Arc<OnceCell<Subscription>>,
}

#[derive(Debug)]
struct Member {
    connection: Arc<Connection>,
    identity: String,
    /// Whether its `join` event came back: it receives the events that follow it.
    active: bool,
}

/// A membership to record or remove in Redis.
struct Item {
    digest: String,
    connection: ConnectionId,
    identity: String,
    channel: Value,
}

/// Delivers a channel's events to this node's members.
struct RoomListener {
    chat: Weak<ChatCluster>,
    key: ValueKey,
}

impl Listener for RoomListener {
    fn message(&self, payload: &[u8]) {
        let Some(chat) = self.chat.upgrade() else { return };
        let Some((header, frame)) = Header::decode(payload) else { return };
        chat.on_event(&self.key, &header, frame.as_ref());
    }
}

impl ChatCluster {
    /// Chat's state for a node of `broker`, with its reaper and healer registered.
    pub fn start(name: &str, limits: ChatLimits, broker: &Broker) -> Arc<ChatCluster> {
        let chat = Arc::new_cyclic(|this| ChatCluster {
            name: name.to_owned(),
            limits,
            broker: broker.clone(),
            state: Mutex::default(),
            this: this.clone(),
            heal_scheduled: AtomicBool::new(false),
            echoes: Echoes::default(),
        });
        cluster::register_hooks(&chat);
        chat
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    fn key(&self, what: &str, digest: &str) -> String {
        self.broker.key(&format!("chat:{}:{what}:{digest}", self.name))
    }

    fn unavailable(&self, what: &str, err: &BrokerError) -> RpcError {
        unavailable(&self.name, what, err)
    }

    fn presence(&self, identity: &str, channel: &Value, status: &'static str) -> Frame {
        super::presence_frame(&self.name, identity, channel, status)
    }

    /// Whether `connection` joined the channel of `key`.
    pub fn is_joined(&self, connection: &Connection, key: &ValueKey) -> bool {
        self.lock().joined.get(&connection.id()).is_some_and(|channels| channels.contains_key(key))
    }

    /// The identities whose connections on this node are in `channel`, sorted.
    pub fn local_members(&self, channel: &Value) -> Vec<String> {
        let state = self.lock();
        let Some(room) = state.rooms.get(&ValueKey::of(channel)) else { return Vec::new() };
        let mut members: Vec<String> =
            room.members.values().filter(|m| m.active).map(|m| m.identity.clone()).collect();
        members.sort_unstable();
        members.dedup();
        members
    }

    /// Joins `connection` (of `identity`) to `channel`; answers the members of the cluster.
    pub async fn join(&self, connection: &Arc<Connection>, identity: &str, channel: Value) -> Result<Value, RpcError> {
        let key = ValueKey::of(&channel);
        let (digest, relay) = {
            let mut guard = self.lock();
            let state = &mut *guard;
            let channels = state.joined.entry(connection.id()).or_default();
            if channels.contains_key(&key) {
                return Err(errors::ALREADY_JOINED);
            }
            if channels.len() >= self.limits.max_channels {
                return Err(errors::TOO_MANY_CHANNELS);
            }
            channels.insert(key.clone(), channel.clone());
            let room = state.rooms.entry(key.clone()).or_insert_with(|| Room {
                digest: key.digest(),
                members: HashMap::new(),
                relay: Arc::default(),
            });
            let member = Member { connection: Arc::clone(connection), identity: identity.to_owned(), active: false };
            room.members.insert(connection.id(), member);
            (room.digest.clone(), Arc::clone(&room.relay))
        };
        let listener = Arc::new(RoomListener { chat: self.this.clone(), key: key.clone() });
        let room_channel = self.key("room", &digest);
        if let Err(err) = relay.get_or_try_init(|| self.broker.subscribe(&room_channel, listener)).await {
            self.forget(connection.id(), &key);
            return Err(self.unavailable("a join", &err));
        }
        let item = Item { digest, connection: connection.id(), identity: identity.to_owned(), channel };
        let echo = self.echoes.expect();
        let members: Result<Vec<String>, BrokerError> =
            self.broker.script(&self.join_invocation(&[item], Some(echo.id))).await;
        let mut members = match members {
            Ok(members) => members,
            Err(err) => {
                self.echoes.cancel(echo);
                self.forget(connection.id(), &key);
                // The script may have run without its answer arriving.
                if let Some(chat) = self.this.upgrade() {
                    cluster::schedule_heal(&chat);
                }
                return Err(self.unavailable("a join", &err));
            }
        };
        if !self.echoes.wait(echo).await {
            // Its event was lost (the broker connection dropped in between): the connection
            // receives what comes from now on.
            log::warn!("{:?}: a join event did not come back in time", self.name);
            if let Some(member) =
                self.lock().rooms.get_mut(&key).and_then(|room| room.members.get_mut(&connection.id()))
            {
                member.active = true;
            }
        }
        members.sort_unstable();
        Ok(json!({ "members": members }))
    }

    /// The JOIN script for `items`. With `echo` (a member joining, not a membership put back),
    /// the `join` event is published even when the identity was there already, and carries
    /// the echo.
    fn join_invocation(&self, items: &[Item], echo: Option<u64>) -> redis::ScriptInvocation<'static> {
        let mut invocation = JOIN.prepare_invoke();
        invocation.key(self.records_key(self.broker.node()));
        invocation.arg(self.broker.publish_command());
        for item in items {
            let mut header = Header::new(Kind::Join, self.broker.node(), item.connection, Some(&item.identity));
            if let Some(echo) = echo {
                header = header.echo(echo);
            }
            let joined = self.presence(&item.identity, &item.channel, "joined");
            invocation
                .key(self.key("members", &item.digest))
                .arg(format!("{}:{}", item.digest, item.connection))
                .arg(json!([item.identity, item.channel]).to_string())
                .arg(&item.identity)
                .arg(self.key("room", &item.digest))
                .arg(header.encode(Some(&joined)))
                .arg(if echo.is_some() { header.encode(None) } else { Vec::new() });
        }
        invocation
    }

    /// Takes connection `id` out of the channel of `key` on this node only.
    fn forget(&self, id: ConnectionId, key: &ValueKey) -> Option<(String, String)> {
        let mut state = self.lock();
        if let Some(channels) = state.joined.get_mut(&id) {
            channels.remove(key);
            if channels.is_empty() {
                state.joined.remove(&id);
            }
        }
        let room = state.rooms.get_mut(key)?;
        let member = room.members.remove(&id);
        let digest = room.digest.clone();
        if room.members.is_empty() {
            // Dropping the room drops the node's subscription to the channel.
            state.rooms.remove(key);
        }
        member.map(|member| (digest, member.identity))
    }

    /// Takes `connection` out of `channel`, everywhere.
    pub async fn leave(&self, connection: &Connection, channel: &Value) -> Result<(), RpcError> {
        let key = ValueKey::of(channel);
        if !self.is_joined(connection, &key) {
            return Err(errors::NOT_JOINED);
        }
        if let Some((digest, identity)) = self.forget(connection.id(), &key) {
            let item = Item { digest, connection: connection.id(), identity, channel: channel.clone() };
            self.remove_items(vec![item]).await;
        }
        Ok(())
    }

    /// Removes memberships from Redis (gone from this node already); a failure is healed later.
    async fn remove_items(&self, items: Vec<Item>) {
        let node = self.broker.node().to_owned();
        if let Err(err) = self.leave_in_redis(&node, &items, false).await {
            log::warn!("{:?}: {} departures could not reach the broker ({err}); sent when it answers", self.name, items.len());
            if let Some(chat) = self.this.upgrade() {
                cluster::schedule_heal(&chat);
            }
        }
    }

    async fn leave_in_redis(&self, node: &str, items: &[Item], reaping: bool) -> Result<bool, BrokerError> {
        let mut invocation = LEAVE.prepare_invoke();
        invocation
            .key(self.records_key(node))
            .key(self.broker.liveness_key(node))
            .arg(self.broker.publish_command())
            .arg(if reaping { "1" } else { "0" });
        for item in items {
            let header = Header::new(Kind::Leave, node, item.connection, Some(&item.identity));
            let left = self.presence(&item.identity, &item.channel, "left");
            invocation
                .key(self.key("members", &item.digest))
                .arg(format!("{}:{}", item.digest, item.connection))
                .arg(&item.identity)
                .arg(self.key("room", &item.digest))
                .arg(header.encode(Some(&left)));
        }
        let done: i64 = self.broker.script(&invocation).await?;
        Ok(done == 1)
    }

    /// Sends `body` to every member of `channel`, on every node.
    pub async fn send(&self, connection: &Connection, channel: &Value, body: &Value) -> Result<(), RpcError> {
        let digest = {
            let state = self.lock();
            let room = state.rooms.get(&ValueKey::of(channel));
            match (room, connection.identity().id.as_deref()) {
                (Some(room), Some(_)) if room.members.get(&connection.id()).is_some_and(|m| m.active) => {
                    room.digest.clone()
                }
                _ => return Err(errors::NOT_JOINED),
            }
        };
        let from = connection.identity().id.as_deref().unwrap_or_default();
        let timestamp = timestamp::now();
        let frame = push_frame(&self.name, MessagePush { kind: "message", from, channel, body, timestamp: &timestamp });
        // The sender gets its message before its reply.
        let echo = self.echoes.expect();
        let event = Header::new(Kind::All, self.broker.node(), connection.id(), None).echo(echo.id).encode(Some(&frame));
        if let Err(err) = self.broker.publish(&self.key("room", &digest), &event).await {
            self.echoes.cancel(echo);
            return Err(self.unavailable("a message", &err));
        }
        self.echoes.wait(echo).await;
        Ok(())
    }

    /// Tells the caller identity's other connections in `channel`, on every node.
    pub async fn read(&self, connection: &Connection, channel: &Value) -> Result<(), RpcError> {
        let Some(identity) = connection.identity().id.as_deref() else {
            return Ok(());
        };
        let timestamp = timestamp::now();
        let frame = push_frame(&self.name, ReadPush { kind: "read", channel, timestamp: &timestamp });
        let event = Header::new(Kind::Own, self.broker.node(), connection.id(), Some(identity)).encode(Some(&frame));
        let room = self.key("room", &ValueKey::of(channel).digest());
        self.broker.publish(&room, &event).await.map_err(|err| self.unavailable("a read receipt", &err))
    }

    /// Takes a closed connection out of its channels, everywhere.
    pub fn disconnected(&self, connection: &Connection) {
        let Some(channels) = self.lock().joined.remove(&connection.id()) else {
            return;
        };
        let items: Vec<Item> = channels
            .into_iter()
            .filter_map(|(key, channel)| {
                let (digest, identity) = self.forget(connection.id(), &key)?;
                Some(Item { digest, connection: connection.id(), identity, channel })
            })
            .collect();
        if items.is_empty() {
            return;
        }
        let Some(chat) = self.this.upgrade() else { return };
        tokio::spawn(async move { chat.remove_items(items).await });
    }

    /// Queues an event of the channel of `key` to this node's members.
    fn on_event(&self, key: &ValueKey, header: &Header, frame: Option<&Frame>) {
        self.deliver(key, header, frame);
        self.echoes.arrived(header, self.broker.node());
    }

    fn deliver(&self, key: &ValueKey, header: &Header, frame: Option<&Frame>) {
        let mut state = self.lock();
        let Some(room) = state.rooms.get_mut(key) else { return };
        let me = self.broker.node();
        if header.kind == Kind::Join && header.node == me {
            if let Some(member) = room.members.get_mut(&header.connection) {
                member.active = true;
            }
        }
        let Some(frame) = frame else { return };
        let who = header.who.as_deref();
        for (id, member) in &room.members {
            let to = member.active
                && match header.kind {
                    // Presence never goes to the identity concerned.
                    Kind::Join | Kind::Leave => who != Some(member.identity.as_str()),
                    Kind::All => true,
                    Kind::Own => who == Some(member.identity.as_str()) && !header.is(me, *id),
                    Kind::Others | Kind::Direct => false,
                };
            if to {
                member.connection.deliver(frame.clone());
            }
        }
    }
}

/// Reads a record's field, `<digest>:<connection>`.
fn parse_field(field: &str) -> Option<(&str, ConnectionId)> {
    let (digest, connection) = field.split_once(':')?;
    Some((digest, connection.parse().ok()?))
}

impl NodeRecords for ChatCluster {
    fn broker(&self) -> &Broker {
        &self.broker
    }

    fn service_name(&self) -> &str {
        &self.name
    }

    fn records_key(&self, node: &str) -> String {
        self.broker.key(&format!("chat:{}:node:{node}", self.name))
    }

    fn held(&self) -> HashSet<String> {
        let state = self.lock();
        state
            .rooms
            .values()
            .flat_map(|room| room.members.keys().map(move |id| format!("{}:{id}", room.digest)))
            .collect()
    }

    async fn remove(&self, node: &str, records: Vec<(String, String)>, reaping: bool) -> Result<bool, BrokerError> {
        let items: Vec<Item> = records
            .iter()
            .filter_map(|(field, record)| {
                let (digest, connection) = parse_field(field)?;
                let Ok((identity, channel)) = serde_json::from_str::<(String, Value)>(record) else {
                    log::error!("{:?}: a malformed record in the broker: {record:?}", self.name);
                    return None;
                };
                Some(Item { digest: digest.to_owned(), connection, identity, channel })
            })
            .collect();
        if items.is_empty() {
            return Ok(true);
        }
        self.leave_in_redis(node, &items, reaping).await
    }

    async fn restore(&self, fields: Vec<String>) -> Result<(), BrokerError> {
        let items: Vec<Item> = {
            let state = self.lock();
            let rooms: HashMap<&str, (&ValueKey, &Room)> =
                state.rooms.iter().map(|(key, room)| (room.digest.as_str(), (key, room))).collect();
            fields
                .iter()
                .filter_map(|field| {
                    let (digest, connection) = parse_field(field)?;
                    let (key, room) = rooms.get(digest)?;
                    let member = room.members.get(&connection)?;
                    let channel = state.joined.get(&connection)?.get(*key)?.clone();
                    Some(Item { digest: digest.to_owned(), connection, identity: member.identity.clone(), channel })
                })
                .collect()
        };
        if !items.is_empty() {
            let _members: Vec<String> = self.broker.script(&self.join_invocation(&items, None)).await?;
        }
        Ok(())
    }

    fn heal_scheduled(&self) -> &AtomicBool {
        &self.heal_scheduled
    }
}
