//! Chat on several nodes. Presence is counted in Redis, per channel and identity over every
//! node, so an identity with connections on two nodes is one member, `joined` when its first
//! connection anywhere joins and `left` when its last one anywhere leaves. Every event of a
//! channel (presence, messages, read receipts) goes through the channel's broker channel, which
//! every node with members there listens on, so every member sees one order; presence events
//! are published by the scripts that change the counts (see `services::cluster` for joining,
//! and its `rooms` for what a node does with a channel's events).
//!
//! In Redis, under the broker's prefix:
//! - `chat:<service>:members:<digest>`: a hash, identity → its connections in the channel;
//! - `chat:<service>:node:<node>`: a hash, `<digest>:<connection>` → `[identity, channel]`:
//!   the node's records (see `services::cluster`), from which a dead node's `left` presences
//!   are pushed;
//! - `chat:<service>:holders`: the nodes that may have records;
//! - channel `chat:<service>:room:<digest>`: the channel's events.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};

use serde_json::{json, Value};

use super::{MessagePush, ReadPush};
use crate::broker::{Broker, BrokerError};
use crate::connection::{Connection, ConnectionId};
use crate::protocol::rpc::{push_frame, reply_frame};
use crate::protocol::{errors, timestamp, Frame, RpcError};
use crate::service::Departure;
use crate::services::cluster::rooms::{JoinReply, Known, RoomEvents, RoomListener, Rooms, View, NOBODY};
use crate::services::cluster::{self, pairs, unavailable, Header, Kind, NodeRecords, READ_ROOM};
use crate::services::limits::ChatLimits;
use crate::value::ValueKey;

/// Records connections in channels and publishes their `join` events (with the `joined`
/// presence when a count goes from 0 to 1). KEYS: the node's records, the holders, then each
/// item's members hash. ARGV: the publish command, the node, then per item: field, record,
/// identity, broker channel, the event when the identity is new there, the event otherwise
/// (empty: none). Returns the members of the first item's channel.
static JOIN: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        redis.call('SADD', KEYS[2], ARGV[2])
        for i = 0, (#ARGV - 2) / 6 - 1 do
            local at = 3 + 6 * i
            local event = ARGV[at + 5]
            if redis.call('HSETNX', KEYS[1], ARGV[at], ARGV[at + 1]) == 1 then
                if redis.call('HINCRBY', KEYS[3 + i], ARGV[at + 2], 1) == 1 then event = ARGV[at + 4] end
            end
            if event ~= '' then redis.call(ARGV[1], ARGV[at + 3], event) end
        end
        return redis.call('HKEYS', KEYS[3])
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

/// The identities present in a channel, as this node's members were told.
#[derive(Debug, Default)]
pub struct Present(BTreeSet<String>);

impl View for Present {
    /// An identity, and whether it is now present.
    type Change = (String, bool);

    fn apply(&mut self, (identity, present): (String, bool)) -> bool {
        if present {
            self.0.insert(identity)
        } else {
            self.0.remove(&identity)
        }
    }
}

/// Chat's state on one node of a cluster.
#[derive(Debug)]
pub struct ChatCluster {
    name: String,
    limits: ChatLimits,
    broker: Broker,
    /// This node's channels and memberships. A std `Mutex`: never held across an await;
    /// events are queued to members under it, in the order the broker brings them.
    rooms: Mutex<Rooms<Present>>,
    this: Weak<ChatCluster>,
    heal_scheduled: AtomicBool,
}

/// A membership to record or remove in Redis.
struct Item {
    digest: String,
    connection: ConnectionId,
    identity: String,
    channel: Value,
}

impl ChatCluster {
    /// Chat's state for a node of `broker`, with its reaper and healer registered.
    pub fn start(name: &str, limits: ChatLimits, broker: &Broker) -> Arc<ChatCluster> {
        broker.register_scripts(&[&JOIN, &LEAVE]);
        cluster::register_scripts(broker);
        let chat = Arc::new_cyclic(|this| ChatCluster {
            name: name.to_owned(),
            limits,
            broker: broker.clone(),
            rooms: Mutex::default(),
            this: this.clone(),
            heal_scheduled: AtomicBool::new(false),
        });
        cluster::register_hooks(&chat);
        chat
    }

    fn lock(&self) -> MutexGuard<'_, Rooms<Present>> {
        crate::sync::lock(&self.rooms)
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

    fn heal_later(&self) {
        if let Some(chat) = self.this.upgrade() {
            cluster::schedule_heal(&chat);
        }
    }

    /// Whether `connection` joined the channel of `key`.
    pub fn is_joined(&self, connection: &Connection, key: &ValueKey) -> bool {
        self.lock().is_joined(connection.id(), key)
    }

    /// The identities whose connections on this node are in `channel`, sorted.
    pub fn local_members(&self, channel: &Value) -> Vec<String> {
        let rooms = self.lock();
        let members: BTreeSet<String> =
            rooms.active_members(&ValueKey::of(channel)).filter_map(|c| c.identity().id.clone()).collect();
        members.into_iter().collect()
    }

    /// Joins `connection` (of `identity`) to `channel`; answers the members of the cluster
    /// (`None` when it queued the answer itself).
    pub async fn join(
        &self,
        connection: &Arc<Connection>,
        identity: &str,
        channel: Value,
        reply: JoinReply<'_>,
    ) -> Result<Option<Value>, RpcError> {
        let key = ValueKey::of(&channel);
        let (digest, relay) = self.lock().enter(
            connection,
            &key,
            channel.clone(),
            self.limits.max_channels,
            errors::TOO_MANY_CHANNELS,
        )?;
        let room_channel = self.key("room", &digest);
        let listener = RoomListener::new(self.this.clone(), key.clone());
        if let Err(err) = relay.get_or_try_init(|| self.broker.subscribe(&room_channel, listener)).await {
            self.lock().forget(connection.id(), &key);
            return Err(self.unavailable("a join", &err));
        }
        let item = Item { digest, connection: connection.id(), identity: identity.to_owned(), channel };
        let members: Vec<String> = match self.broker.script(&self.join_invocation(&[item], true)).await {
            Ok(members) => members,
            Err(err) => {
                self.lock().forget(connection.id(), &key);
                // The script may have run without its answer arriving.
                self.heal_later();
                return Err(self.unavailable("a join", &err));
            }
        };
        let present: BTreeSet<String> = members.into_iter().collect();
        let answer = json!({ "members": present });
        // The join event came back before the script's answer (see `services::cluster`).
        let queued = match reply {
            JoinReply::Queued(call_id) => Some(reply_frame(&self.name, call_id, &Ok(answer.clone()))),
            JoinReply::Returned => None,
        };
        let returned = queued.is_none().then_some(answer);
        self.lock().joined(&key, connection, Present(present), queued);
        Ok(returned)
    }

    /// The JOIN script for `items`. With `activate` (a member joining, not a membership put
    /// back), the `join` event is published even when the identity was there already: it makes
    /// the member active.
    fn join_invocation(&self, items: &[Item], activate: bool) -> redis::ScriptInvocation<'static> {
        let mut invocation = JOIN.prepare_invoke();
        invocation
            .key(self.records_key(self.broker.node()))
            .key(self.holders_key())
            .arg(self.broker.publish_command())
            .arg(self.broker.node());
        for item in items {
            let header = Header::new(Kind::Join, self.broker.node(), item.connection, Some(&item.identity));
            let joined = self.presence(&item.identity, &item.channel, "joined");
            invocation
                .key(self.key("members", &item.digest))
                .arg(format!("{}:{}", item.digest, item.connection))
                .arg(json!([item.identity, item.channel]).to_string())
                .arg(&item.identity)
                .arg(self.key("room", &item.digest))
                .arg(header.encode(Some(&joined)))
                .arg(if activate { header.encode(None) } else { Vec::new() });
        }
        invocation
    }

    /// Takes `connection` out of `channel`, everywhere.
    pub async fn leave(&self, connection: &Connection, channel: &Value) -> Result<(), RpcError> {
        let key = ValueKey::of(channel);
        let Some(left) = self.lock().forget(connection.id(), &key) else {
            return Err(errors::NOT_JOINED);
        };
        if let Some(identity) = left.connection.identity().id.clone() {
            let item = Item { digest: left.digest, connection: connection.id(), identity, channel: left.value };
            self.remove_items(vec![item]).await;
        }
        Ok(())
    }

    /// Removes memberships from Redis (gone from this node already); a failure is healed later.
    async fn remove_items(&self, items: Vec<Item>) {
        let what = format!("{} departures", items.len());
        cluster::remove_or_heal(&self.this, what, self.leave_in_redis(self.broker.node(), &items, false)).await;
    }

    async fn leave_in_redis(&self, node: &str, items: &[Item], reaping: bool) -> Result<bool, BrokerError> {
        let mut invocation = cluster::removal(self, &LEAVE, node, reaping);
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
        let (Some(digest), Some(from)) = (
            self.lock().active_in(connection.id(), &ValueKey::of(channel)).map(str::to_owned),
            connection.identity().id.as_deref(),
        ) else {
            return Err(errors::NOT_JOINED);
        };
        let timestamp = timestamp::now();
        let frame = push_frame(&self.name, MessagePush { kind: "message", from, channel, body, timestamp: &timestamp });
        // The sender gets its message before its reply: the broker hands this node's listener
        // the event before `publish` returns.
        let event = Header::new(Kind::All, self.broker.node(), connection.id(), None).encode(Some(&frame));
        self.broker.publish(&self.key("room", &digest), &event).await.map_err(|err| self.unavailable("a message", &err))
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

    /// Takes a closed connection out of its channels here; returns its removal from Redis.
    pub fn departure(&self, connection: &Connection) -> Option<Departure> {
        let items: Vec<Item> = self
            .lock()
            .forget_all(connection.id())
            .into_iter()
            .filter_map(|left| {
                let identity = left.connection.identity().id.clone()?;
                Some(Item { digest: left.digest, connection: connection.id(), identity, channel: left.value })
            })
            .collect();
        if items.is_empty() {
            return None;
        }
        let chat = self.this.upgrade()?;
        Some(Box::pin(async move { chat.remove_items(items).await }))
    }

    /// Reads the state of the channel of `room` and pushes what this node's members missed.
    async fn sync_room(&self, room: Known) -> Result<(), BrokerError> {
        let Some(marker) = self.lock().start_sync(&room.key) else { return Ok(()) };
        let channel = self.key("room", &room.digest);
        let mut invocation = READ_ROOM.prepare_invoke();
        invocation
            .key(self.key("members", &room.digest))
            .arg(self.broker.publish_command())
            .arg(&channel)
            .arg(Header::new(Kind::Synced, self.broker.node(), marker, None).encode(None));
        let (state, outcome) = match self.broker.script::<Vec<String>>(&invocation).await {
            Ok(flat) => (Some(Present(pairs(flat).into_iter().map(|(identity, _)| identity).collect())), Ok(())),
            Err(err) => (None, Err(err)),
        };
        let mut rooms = self.lock();
        let me = self.broker.node();
        let pushes: Vec<(Header, Frame)> = match rooms.end_sync(&room.key, marker, state) {
            Some(synced) => {
                let (before, after) = (&synced.before.0, &synced.after.0);
                let left = before.difference(after).map(|identity| (identity, "left", Kind::Leave));
                let joined = after.difference(before).map(|identity| (identity, "joined", Kind::Join));
                left.chain(joined)
                    .map(|(identity, status, kind)| {
                        (Header::new(kind, me, NOBODY, Some(identity)), self.presence(identity, &room.value, status))
                    })
                    .collect()
            }
            None => Vec::new(),
        };
        for (header, frame) in pushes {
            rooms.push(&room.key, me, &header, &frame);
        }
        outcome
    }
}

impl RoomEvents for ChatCluster {
    fn on_event(&self, key: &ValueKey, header: &Header, frame: Option<Frame>) {
        // A presence (a join or leave event with a frame) changes who is present.
        let change = match (header.kind, &header.who, &frame) {
            (Kind::Join, Some(who), Some(_)) => Some((who.clone(), true)),
            (Kind::Leave, Some(who), Some(_)) => Some((who.clone(), false)),
            _ => None,
        };
        self.lock().deliver(key, self.broker.node(), header, frame.as_ref(), change);
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

    fn kind(&self) -> &'static str {
        "chat"
    }

    fn held(&self) -> HashSet<String> {
        self.lock().memberships().map(|(digest, connection, _)| format!("{digest}:{}", connection.id())).collect()
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
        let wanted: HashSet<&str> = fields.iter().map(String::as_str).collect();
        let items: Vec<Item> = self
            .lock()
            .memberships()
            .filter_map(|(digest, connection, channel)| {
                let field = format!("{digest}:{}", connection.id());
                if !wanted.contains(field.as_str()) {
                    return None;
                }
                let identity = connection.identity().id.clone()?;
                Some(Item {
                    digest: digest.to_owned(),
                    connection: connection.id(),
                    identity,
                    channel: channel.clone(),
                })
            })
            .collect();
        if !items.is_empty() {
            let _members: Vec<String> = self.broker.script(&self.join_invocation(&items, false)).await?;
        }
        Ok(())
    }

    async fn sync(&self) -> Result<(), BrokerError> {
        let known = self.lock().known();
        let mut outcome = Ok(());
        for room in known {
            if let Err(err) = self.sync_room(room).await {
                outcome = Err(err);
            }
        }
        outcome
    }

    fn heal_scheduled(&self) -> &AtomicBool {
        &self.heal_scheduled
    }
}
