//! Chat: authenticated connections join channels, send messages to everyone there, see who
//! else is present, and tell their other tabs what they have read (docs/protocol.md "Chat").
//!
//! Presence is per *identity*, not per connection: a user with three tabs in a channel is one
//! member. `joined` is pushed when an identity's first connection joins and `left` when its
//! last one leaves (by `leave` or by disconnecting), never to that identity's own connections,
//! and `join` pushes nothing to the joiner. A channel is any JSON value compared by value (as
//! in PubSub); pushes echo the value the acting connection gave.
//!
//! Policy: [`ChatService::with_join_policy`] installs a `can_join(client, channel)` hook; when it
//! refuses, `join` answers [`NOT_AUTHORIZED`] ("Not authorized", the text PubSub's publish
//! policy uses), checked after "Not authenticated" and "Already joined".
//!
//! With a broker (several nodes), presence is counted in Redis and a channel's events go
//! through the broker: see the `cluster` submodule.

mod cluster;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use serde_json::{json, Value};

use crate::broker::Broker;
use crate::connection::{Connection, ConnectionId};
use crate::protocol::rpc::push_frame;
use crate::protocol::{errors, timestamp, Frame, Params, RpcError};
use crate::service::{ask_policy, Caller, Departure, Policy, Service, Side};
use crate::services::cluster::rooms::JoinReply;
use crate::services::limits::{check_size, ChatLimits};
use crate::value::ValueKey;

/// A Chat service: `join`, `leave`, `send`, `read`.
#[derive(Debug, Clone)]
pub struct ChatService {
    shared: Arc<ChatShared>,
    /// Decides joins; `None` lets every authenticated connection join any channel.
    join_policy: Option<Arc<dyn Policy>>,
}

#[derive(Debug)]
struct ChatShared {
    /// The name clients address, which every push carries.
    name: String,
    /// How much one connection may join.
    limits: ChatLimits,
    /// Rooms and memberships. A std `Mutex` because nothing awaits while holding it; pushes are
    /// queued under it (queueing never blocks) so that every member of a channel sees that
    /// channel's messages and presence in one order. Unused with a broker.
    state: Mutex<ChatState>,
    /// With a broker: the cluster's presence and events (set when a server binds).
    cluster: Mutex<Option<Arc<cluster::ChatCluster>>>,
}

#[derive(Debug, Default)]
struct ChatState {
    /// The rooms that have at least one connection.
    rooms: HashMap<ValueKey, Room>,
    /// Each connection's channels, with the value it gave when joining (for the `left`
    /// presence its disconnect sends).
    joined: HashMap<ConnectionId, HashMap<ValueKey, Value>>,
}

#[derive(Debug, Default)]
struct Room {
    /// Every connection in the room.
    connections: HashMap<ConnectionId, Arc<Connection>>,
    /// The connections of each identity in the room. A `BTreeMap` so that `members` comes out
    /// sorted by code point, the same for every caller.
    identities: BTreeMap<String, HashSet<ConnectionId>>,
}

/// A message, as every member gets it.
#[derive(Serialize)]
struct MessagePush<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    from: &'a str,
    channel: &'a Value,
    body: &'a Value,
    timestamp: &'a str,
}

#[derive(Serialize)]
struct PresencePush<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    from: &'a str,
    channel: &'a Value,
    status: &'static str,
    timestamp: &'a str,
}

/// A read receipt, as the caller's other connections get it.
#[derive(Serialize)]
struct ReadPush<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    channel: &'a Value,
    timestamp: &'a str,
}

/// A presence push of service `service`, stamped now.
fn presence_frame(service: &str, from: &str, channel: &Value, status: &'static str) -> Frame {
    let timestamp = timestamp::now();
    push_frame(service, PresencePush { kind: "presence", from, channel, status, timestamp: &timestamp })
}

impl ChatShared {
    fn lock(&self) -> MutexGuard<'_, ChatState> {
        crate::sync::lock(&self.state)
    }

    fn cluster(&self) -> Option<Arc<cluster::ChatCluster>> {
        crate::sync::lock(&self.cluster).clone()
    }

    fn presence(&self, from: &str, channel: &Value, status: &'static str) -> Frame {
        presence_frame(&self.name, from, channel, status)
    }

    fn is_joined(&self, connection: &Connection, key: &ValueKey) -> bool {
        self.lock().joined.get(&connection.id()).is_some_and(|channels| channels.contains_key(key))
    }

    fn join(&self, connection: &Arc<Connection>, identity: &str, channel: Value) -> Result<Value, RpcError> {
        let key = ValueKey::of(&channel);
        let mut guard = self.lock();
        // Reborrowed so `joined` and `rooms` can be borrowed separately.
        let state = &mut *guard;
        let channels = state.joined.entry(connection.id()).or_default();
        if channels.contains_key(&key) {
            return Err(errors::ALREADY_JOINED);
        }
        if channels.len() >= self.limits.max_channels {
            return Err(errors::TOO_MANY_CHANNELS);
        }
        channels.insert(key.clone(), channel.clone());
        let room = state.rooms.entry(key).or_default();
        if !room.identities.contains_key(identity) {
            // The identity's first connection here: the members already there learn of it. The
            // joiner is not in the room yet, so it gets nothing.
            let frame = self.presence(identity, &channel, "joined");
            for member in room.connections.values() {
                member.deliver(frame.clone());
            }
        }
        room.identities.entry(identity.to_owned()).or_default().insert(connection.id());
        room.connections.insert(connection.id(), Arc::clone(connection));
        Ok(json!({"members": room.identities.keys().collect::<Vec<_>>()}))
    }

    fn leave(&self, connection: &Connection, channel: &Value) -> Result<(), RpcError> {
        let key = ValueKey::of(channel);
        let mut state = self.lock();
        let removed = state.joined.get_mut(&connection.id()).and_then(|channels| channels.remove(&key));
        if removed.is_none() {
            return Err(errors::NOT_JOINED);
        }
        if state.joined.get(&connection.id()).is_some_and(HashMap::is_empty) {
            state.joined.remove(&connection.id());
        }
        self.remove_from_room(&mut state, connection, &key, channel);
        Ok(())
    }

    /// Takes `connection` out of the room of `key`, pushing `left` when it was its identity's
    /// last connection there, and drops the room when it empties.
    fn remove_from_room(&self, state: &mut ChatState, connection: &Connection, key: &ValueKey, channel: &Value) {
        let Some(room) = state.rooms.get_mut(key) else {
            return;
        };
        room.connections.remove(&connection.id());
        if let Some(identity) = connection.identity().id.as_deref() {
            let last = room.identities.get_mut(identity).is_some_and(|ids| {
                ids.remove(&connection.id());
                ids.is_empty()
            });
            if last {
                room.identities.remove(identity);
                let frame = self.presence(identity, channel, "left");
                for member in room.connections.values() {
                    member.deliver(frame.clone());
                }
            }
        }
        if room.connections.is_empty() {
            state.rooms.remove(key);
        }
    }

    fn send(&self, connection: &Connection, channel: &Value, body: &Value) -> Result<(), RpcError> {
        let key = ValueKey::of(channel);
        let state = self.lock();
        let room = state.rooms.get(&key).filter(|room| room.connections.contains_key(&connection.id()));
        let (Some(room), Some(from)) = (room, connection.identity().id.as_deref()) else {
            return Err(errors::NOT_JOINED);
        };
        let timestamp = timestamp::now();
        let frame = push_frame(&self.name, MessagePush { kind: "message", from, channel, body, timestamp: &timestamp });
        for member in room.connections.values() {
            member.deliver(frame.clone());
        }
        Ok(())
    }

    fn read(&self, connection: &Connection, channel: &Value) {
        let Some(identity) = connection.identity().id.as_deref() else {
            return;
        };
        let state = self.lock();
        let Some(room) = state.rooms.get(&ValueKey::of(channel)) else {
            return;
        };
        let Some(own) = room.identities.get(identity) else {
            return;
        };
        let timestamp = timestamp::now();
        let frame = push_frame(&self.name, ReadPush { kind: "read", channel, timestamp: &timestamp });
        for id in own.iter().filter(|&&id| id != connection.id()) {
            if let Some(tab) = room.connections.get(id) {
                tab.deliver(frame.clone());
            }
        }
    }

    fn disconnected(&self, connection: &Connection) {
        let mut state = self.lock();
        let Some(channels) = state.joined.remove(&connection.id()) else {
            return;
        };
        for (key, channel) in channels {
            self.remove_from_room(&mut state, connection, &key, &channel);
        }
    }
}

impl ChatService {
    /// A Chat service named `name`, with the default limits.
    pub fn new(name: impl Into<String>) -> ChatService {
        Self::with_limits(name, ChatLimits::default())
    }

    /// A Chat service named `name` with these limits.
    pub fn with_limits(name: impl Into<String>, limits: ChatLimits) -> ChatService {
        let shared = ChatShared { name: name.into(), limits, state: Mutex::default(), cluster: Mutex::default() };
        ChatService { shared: Arc::new(shared), join_policy: None }
    }

    /// Installs the policy that decides joins ([`NOT_AUTHORIZED`] when it refuses). Its subject
    /// is the channel.
    #[must_use]
    pub fn with_join_policy(mut self, policy: Arc<dyn Policy>) -> ChatService {
        self.join_policy = Some(policy);
        self
    }

    /// Shares presence and events with the other nodes of `broker` (or keeps them in this
    /// process when `None`). Called when a server binds.
    pub fn attach(&self, broker: Option<&Broker>) {
        let cluster = broker.map(|broker| cluster::ChatCluster::start(&self.shared.name, self.shared.limits, broker));
        *crate::sync::lock(&self.shared.cluster) = cluster;
    }

    /// The identities present in `channel`, sorted (for tests and introspection); with a
    /// broker, those of this node's connections (`join` answers the cluster's).
    pub fn members(&self, channel: &Value) -> Vec<String> {
        if let Some(cluster) = self.shared.cluster() {
            return cluster.local_members(channel);
        }
        let state = self.shared.lock();
        state
            .rooms
            .get(&ValueKey::of(channel))
            .map(|room| room.identities.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// `join`: the members (`None` when the reply was queued already: with a broker, the reply
    /// comes before the pushes that follow the join on every node, see `cluster`).
    pub(crate) async fn join(
        &self,
        connection: &Arc<Connection>,
        params: Params,
        reply: JoinReply<'_>,
    ) -> Result<Option<Value>, RpcError> {
        let channel = params.only("channel")?;
        let Some(identity) = connection.identity().id.as_deref() else {
            return Err(errors::NOT_AUTHENTICATED);
        };
        check_size(&channel, self.shared.limits.max_channel_size, errors::CHANNEL_TOO_LARGE)?;
        // Checked before the policy so a hook is not asked about a join that fails anyway.
        // Requests of one connection run one at a time, so the answer still holds after the
        // hook returns; `join` checks again under the lock regardless.
        let cluster = self.shared.cluster();
        let key = ValueKey::of(&channel);
        let joined = match &cluster {
            Some(cluster) => cluster.is_joined(connection, &key),
            None => self.shared.is_joined(connection, &key),
        };
        if joined {
            return Err(errors::ALREADY_JOINED);
        }
        if !ask_policy(self.join_policy.as_ref(), self.name(), connection, &channel).await? {
            return Err(errors::NOT_AUTHORIZED);
        }
        match cluster {
            Some(cluster) => cluster.join(connection, identity, channel, reply).await,
            None => self.shared.join(connection, identity, channel).map(Some),
        }
    }
}

impl Service for ChatService {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn side(&self) -> Side {
        Side::Frontend
    }

    async fn handle(&self, caller: Caller<'_>, command: &str, mut params: Params) -> Result<Value, RpcError> {
        let Caller::Client(connection) = caller else {
            return Err(RpcError::UnknownCommand);
        };
        let cluster = self.shared.cluster();
        match command {
            "join" => self.join(connection, params, JoinReply::Returned).await.map(Option::unwrap_or_default),
            "leave" => {
                let channel = params.only("channel")?;
                match cluster {
                    Some(cluster) => cluster.leave(connection, &channel).await,
                    None => self.shared.leave(connection, &channel),
                }
                .map(|()| Value::Null)
            }
            "send" => {
                let channel = params.take("channel")?;
                let body = params.take("body")?;
                params.finish()?;
                match cluster {
                    Some(cluster) => cluster.send(connection, &channel, &body).await,
                    None => self.shared.send(connection, &channel, &body),
                }
                .map(|()| Value::Null)
            }
            "read" => {
                let channel = params.only("channel")?;
                match cluster {
                    Some(cluster) => cluster.read(connection, &channel).await?,
                    None => self.shared.read(connection, &channel),
                }
                Ok(Value::Null)
            }
            _ => Err(RpcError::UnknownCommand),
        }
    }

    fn disconnected(&self, connection: &Arc<Connection>) {
        if let Some(departure) = self.departed(connection) {
            tokio::spawn(departure);
        }
    }

    fn departed(&self, connection: &Arc<Connection>) -> Option<Departure> {
        if let Some(cluster) = self.shared.cluster() {
            return cluster.departure(connection);
        }
        self.shared.disconnected(connection);
        None
    }
}
