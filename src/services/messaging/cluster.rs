//! Messaging on several nodes: names are registered in Redis, so a name is unique across the
//! cluster, `listParticipants` lists every node's names and `send` reaches a name registered on
//! any node (through that node's broker channel; directly when it is on this node).
//!
//! In Redis, under the broker's prefix:
//! - `messaging:<service>:names`: a hash, name → `<connection>@<node>` (its holder);
//! - `messaging:<service>:node:<node>`: a hash, name → connection: the node's records (see
//!   `services::cluster`);
//! - `messaging:<service>:holders`: the nodes that may have records;
//! - channel `messaging:<service>:to:<node>`: the messages for the node's connections.
//!
//! A message goes to the connection that held the name when the sender looked it up: if that
//! connection let the name go meanwhile (and is still connected), it still gets the message, as
//! on one node, where a send and an unregister happen one after the other; a connection that
//! took the name since never gets a message meant for its predecessor.
//!
//! `max_participants` bounds the names of the whole cluster. A send to a name whose node is
//! gone (no node listens on its channel; its names are not reaped yet) is "Unknown
//! destination", as it will be once they are.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::MessagePush;
use crate::broker::{Broker, BrokerError, Listener, Subscription};
use crate::connection::{Connection, ConnectionId};
use crate::error::Error;
use crate::protocol::rpc::push_frame;
use crate::protocol::{errors, RpcError};
use crate::service::Departure;
use crate::services::cluster::{self, unavailable, Header, Kind, NodeRecords};
use crate::services::limits::MessagingLimits;

/// Registers a name unless another holder has it or the cluster has `max_participants`.
/// KEYS: names, this node's records, the holders. ARGV: name, holder, connection,
/// max_participants, this node. Returns 0 (registered), 1 (taken), 2 (too many participants),
/// 3 (this holder had it).
static REGISTER: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local holder = redis.call('HGET', KEYS[1], ARGV[1])
        if holder == ARGV[2] then return 3 end
        if holder then return 1 end
        if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then return 2 end
        redis.call('SADD', KEYS[3], ARGV[5])
        redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
        redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
        return 0
        ",
    )
});

/// Frees names, each only from its holder. KEYS: names, the node's records, the node's
/// liveness key. ARGV: reaping (1 or 0), then pairs name, holder. Returns 0 when reaping a node
/// that is alive after all (nothing done), 1 otherwise.
static FREE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        if ARGV[1] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
        for i = 2, #ARGV, 2 do
            redis.call('HDEL', KEYS[2], ARGV[i])
            if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then redis.call('HDEL', KEYS[1], ARGV[i]) end
        end
        return 1
        ",
    )
});

/// Messaging's state on one node of a cluster.
#[derive(Debug)]
pub struct MessagingCluster {
    name: String,
    limits: MessagingLimits,
    broker: Broker,
    /// The names this node's connections hold. A std `Mutex`: never held across an await.
    state: Mutex<State>,
    /// This node's channel, kept while the service serves.
    inbox: Mutex<Option<Subscription>>,
    heal_scheduled: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    /// Each name held here, with whether Redis confirmed it (an unconfirmed name is being
    /// registered: it is held, so that a heal keeps it, but receives nothing yet).
    names: HashMap<String, (Arc<Connection>, bool)>,
    by_connection: HashMap<ConnectionId, HashSet<String>>,
    /// Names unregistered here lately, oldest first, with their holders: a message a sender
    /// addressed to the holder before it let the name go may still be on its way.
    released: VecDeque<Released>,
}

/// A name a live connection let go of (see [`State::released`]).
#[derive(Debug)]
struct Released {
    name: String,
    holder: Weak<Connection>,
    at: Instant,
}

/// How long a released name's holder still gets the messages addressed to it: longer than a
/// send takes between its lookup and its publish (two broker commands, each bounded by the
/// broker's command timeout).
const RELEASED_FOR: Duration = Duration::from_secs(30);

/// At most this many released names are remembered (the oldest are forgotten first), so that
/// clients registering and unregistering in a loop cannot grow the node's memory.
const MAX_RELEASED: usize = 4096;

impl State {
    /// Remembers that `holder` let `name` go (see [`State::released`]).
    fn remember_release(&mut self, name: &str, holder: &Arc<Connection>) {
        let now = Instant::now();
        while self.released.front().is_some_and(|old| now.duration_since(old.at) > RELEASED_FOR)
            || self.released.len() >= MAX_RELEASED
        {
            self.released.pop_front();
        }
        self.released.push_back(Released { name: name.to_owned(), holder: Arc::downgrade(holder), at: now });
    }

    /// The connection `id` if it held `name` and let it go lately, and is still open.
    fn released_holder(&self, name: &str, id: ConnectionId) -> Option<Arc<Connection>> {
        let now = Instant::now();
        self.released
            .iter()
            .rev()
            .take_while(|old| now.duration_since(old.at) <= RELEASED_FOR)
            .filter(|old| old.name == name)
            .find_map(|old| old.holder.upgrade().filter(|holder| holder.id() == id))
    }
}

/// Delivers the messages other nodes send to this node's names.
struct Inbox(Weak<MessagingCluster>);

impl Listener for Inbox {
    fn message(&self, payload: &[u8]) {
        let Some(cluster) = self.0.upgrade() else { return };
        let Some((header, Some(frame))) = Header::decode(payload) else { return };
        let Some(name) = header.who.as_deref() else { return };
        let state = cluster.lock();
        // Delivered to the connection the sender found holding the name, never to a successor
        // that took it since.
        if let Some((holder, true)) = state.names.get(name) {
            if holder.id() == header.connection {
                holder.deliver(frame);
                return;
            }
        }
        if let Some(holder) = state.released_holder(name, header.connection) {
            holder.deliver(frame);
        }
    }
}

impl MessagingCluster {
    /// Joins the cluster: listens on this node's channel and registers the reaper and healer.
    pub async fn start(name: &str, limits: MessagingLimits, broker: &Broker) -> Result<Arc<MessagingCluster>, Error> {
        broker.register_scripts(&[&REGISTER, &FREE]);
        crate::services::cluster::register_scripts(broker);
        let cluster = Arc::new(MessagingCluster {
            name: name.to_owned(),
            limits,
            broker: broker.clone(),
            state: Mutex::default(),
            inbox: Mutex::default(),
            heal_scheduled: AtomicBool::new(false),
        });
        let channel = cluster.inbox_channel(broker.node());
        let inbox = broker
            .subscribe(&channel, Arc::new(Inbox(Arc::downgrade(&cluster))))
            .await
            .map_err(|err| Error::Config(format!("messaging service {name:?}: cannot listen on the broker: {err}")))?;
        *crate::sync::lock(&cluster.inbox) = Some(inbox);
        cluster::register_hooks(&cluster);
        Ok(cluster)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    fn key(&self, what: &str) -> String {
        self.broker.key(&format!("messaging:{}:{what}", self.name))
    }

    fn inbox_channel(&self, node: &str) -> String {
        self.broker.key(&format!("messaging:{}:to:{node}", self.name))
    }

    fn holder(&self, connection: ConnectionId) -> String {
        format!("{connection}@{}", self.broker.node())
    }

    fn unavailable(&self, what: &str, err: &BrokerError) -> RpcError {
        unavailable(&self.name, what, err)
    }

    /// Whether any connection holds `name`, in the cluster.
    pub async fn is_taken(&self, name: &str) -> Result<bool, RpcError> {
        if self.lock().names.contains_key(name) {
            return Ok(true);
        }
        let cmd = redis::cmd("HEXISTS").arg(self.key("names")).arg(name).clone();
        self.broker.query(&cmd).await.map_err(|err| self.unavailable("a name lookup", &err))
    }

    /// Registers `name` for `connection` (the name policy has allowed it).
    pub async fn register(self: &Arc<Self>, connection: &Arc<Connection>, name: String) -> Result<(), RpcError> {
        {
            let mut state = self.lock();
            if state.names.contains_key(&name) {
                return Err(errors::NAME_ALREADY_REGISTERED);
            }
            if state.by_connection.get(&connection.id()).is_some_and(|names| names.len() >= self.limits.max_names) {
                return Err(errors::TOO_MANY_NAMES);
            }
            state.names.insert(name.clone(), (Arc::clone(connection), false));
            state.by_connection.entry(connection.id()).or_default().insert(name.clone());
        }
        let outcome = self.register_in_redis(&name, connection.id()).await;
        let mut state = self.lock();
        if let Ok(0 | 3) = outcome {
            if let Some(entry) = state.names.get_mut(&name) {
                entry.1 = true;
            }
            return Ok(());
        }
        drop_name(&mut state, connection.id(), &name);
        drop(state);
        match outcome {
            Ok(2) => Err(errors::TOO_MANY_PARTICIPANTS),
            Ok(_) => Err(errors::NAME_ALREADY_REGISTERED),
            Err(err) => {
                // The script may have run without its answer arriving.
                cluster::schedule_heal(self);
                Err(self.unavailable("a registration", &err))
            }
        }
    }

    async fn register_in_redis(&self, name: &str, connection: ConnectionId) -> Result<i64, BrokerError> {
        let mut invocation = REGISTER.prepare_invoke();
        invocation
            .key(self.key("names"))
            .key(self.records_key(self.broker.node()))
            .key(self.holders_key())
            .arg(name)
            .arg(self.holder(connection))
            .arg(connection)
            .arg(self.limits.max_participants)
            .arg(self.broker.node());
        self.broker.script(&invocation).await
    }

    /// Frees `name` of `connection`.
    pub async fn unregister(self: &Arc<Self>, connection: &Connection, name: &str) -> Result<(), RpcError> {
        let holder = self.lock().names.get(name).map(|(holder, _)| holder.id());
        match holder {
            Some(id) if id == connection.id() => {
                {
                    let mut state = self.lock();
                    if let Some((holder, true)) = state.names.get(name) {
                        let holder = Arc::clone(holder);
                        state.remember_release(name, &holder);
                    }
                    drop_name(&mut state, id, name);
                }
                self.free(vec![(name.to_owned(), self.holder(id))]).await;
                Ok(())
            }
            Some(_) => Err(errors::INVALID_PARTICIPANT),
            None if self.is_taken(name).await? => Err(errors::INVALID_PARTICIPANT),
            None => Err(errors::UNKNOWN_PARTICIPANT),
        }
    }

    /// Frees names in Redis; a failure is healed later (the names are gone here already).
    async fn free(self: &Arc<Self>, names: Vec<(String, String)>) {
        if let Err(err) = self.free_in_redis(self.broker.node(), &names, false).await {
            log::warn!(
                "{:?}: freeing {} names failed ({err}); retried when the broker answers",
                self.name,
                names.len()
            );
            cluster::schedule_heal(self);
        }
    }

    async fn free_in_redis(&self, node: &str, names: &[(String, String)], reaping: bool) -> Result<bool, BrokerError> {
        let mut invocation = FREE.prepare_invoke();
        invocation
            .key(self.key("names"))
            .key(self.records_key(node))
            .key(self.broker.liveness_key(node))
            .arg(if reaping { "1" } else { "0" });
        for (name, holder) in names {
            invocation.arg(name).arg(holder);
        }
        let done: i64 = self.broker.script(&invocation).await?;
        Ok(done == 1)
    }

    /// Sends `body` from `sender` (a name `connection` holds) to `dest`, wherever it is.
    pub async fn send(&self, connection: &Connection, sender: &str, dest: &str, body: &Value) -> Result<(), RpcError> {
        {
            let state = self.lock();
            if !state.names.get(sender).is_some_and(|(holder, confirmed)| *confirmed && holder.id() == connection.id())
            {
                return Err(errors::INVALID_SENDER);
            }
            if let Some((recipient, true)) = state.names.get(dest) {
                recipient.deliver(push_frame(&self.name, MessagePush { kind: "message", sender, dest, body }));
                return Ok(());
            }
        }
        let cmd = redis::cmd("HGET").arg(self.key("names")).arg(dest).clone();
        let holder: Option<String> = self.broker.query(&cmd).await.map_err(|err| self.unavailable("a send", &err))?;
        let Some((id, node)) = holder.as_deref().and_then(|holder| holder.split_once('@')) else {
            return Err(errors::UNKNOWN_DESTINATION);
        };
        let Ok(id) = id.parse::<ConnectionId>() else {
            log::error!("{:?}: name {dest:?} has a malformed holder {holder:?} in the broker", self.name);
            return Err(errors::UNKNOWN_DESTINATION);
        };
        if node == self.broker.node() {
            // Held here, but not confirmed yet (or let go since): not a destination yet.
            return Err(errors::UNKNOWN_DESTINATION);
        }
        let frame = push_frame(&self.name, MessagePush { kind: "message", sender, dest, body });
        let event = Header::new(Kind::Direct, node, id, Some(dest)).encode(Some(&frame));
        let channel = self.inbox_channel(node);
        let listeners =
            self.broker.publish_counted(&channel, &event).await.map_err(|err| self.unavailable("a send", &err))?;
        if listeners == 0 {
            // The holder's node is gone (its name is not reaped yet): nobody gets the message.
            return Err(errors::UNKNOWN_DESTINATION);
        }
        Ok(())
    }

    /// Every name in the cluster, sorted by code point.
    pub async fn list(&self) -> Result<Vec<String>, RpcError> {
        let cmd = redis::cmd("HKEYS").arg(self.key("names")).clone();
        let mut names: Vec<String> =
            self.broker.query(&cmd).await.map_err(|err| self.unavailable("listParticipants", &err))?;
        names.sort_unstable();
        Ok(names)
    }

    /// The names this node's connections hold, sorted.
    pub fn local_names(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.lock().names.iter().filter(|(_, (_, confirmed))| *confirmed).map(|(name, _)| name.clone()).collect();
        names.sort_unstable();
        names
    }

    /// Forgets the names of a connection that closed here; returns their release in Redis.
    pub fn departure(self: &Arc<Self>, connection: &Connection) -> Option<Departure> {
        let names = {
            let mut state = self.lock();
            let names = state.by_connection.remove(&connection.id()).unwrap_or_default();
            for name in &names {
                state.names.remove(name);
            }
            names
        };
        if names.is_empty() {
            return None;
        }
        let holder = self.holder(connection.id());
        let names = names.into_iter().map(|name| (name, holder.clone())).collect();
        let this = Arc::clone(self);
        Some(Box::pin(async move { this.free(names).await }))
    }
}

/// Takes `name` from connection `id` in the local state.
fn drop_name(state: &mut State, id: ConnectionId, name: &str) {
    state.names.remove(name);
    if let Some(names) = state.by_connection.get_mut(&id) {
        names.remove(name);
        if names.is_empty() {
            state.by_connection.remove(&id);
        }
    }
}

impl NodeRecords for MessagingCluster {
    fn broker(&self) -> &Broker {
        &self.broker
    }

    fn service_name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "messaging"
    }

    fn held(&self) -> HashSet<String> {
        self.lock().names.keys().cloned().collect()
    }

    async fn remove(&self, node: &str, records: Vec<(String, String)>, reaping: bool) -> Result<bool, BrokerError> {
        let names: Vec<(String, String)> =
            records.into_iter().map(|(name, connection)| (name, format!("{connection}@{node}"))).collect();
        self.free_in_redis(node, &names, reaping).await
    }

    async fn restore(&self, fields: Vec<String>) -> Result<(), BrokerError> {
        for name in fields {
            let Some(id) = self.lock().names.get(&name).map(|(holder, _)| holder.id()) else { continue };
            let code = self.register_in_redis(&name, id).await?;
            if code == 1 || code == 2 {
                // Another connection took it while this node was cut off (or the cluster is
                // full): that registration went through the broker, so it stands.
                log::warn!("{:?}: name {name:?} was taken elsewhere while this node was cut off: dropped", self.name);
                let mut state = self.lock();
                if state.names.get(&name).is_some_and(|(holder, _)| holder.id() == id) {
                    drop_name(&mut state, id, &name);
                }
            }
        }
        Ok(())
    }

    fn heal_scheduled(&self) -> &AtomicBool {
        &self.heal_scheduled
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio_util::sync::CancellationToken;

    use super::{State, MAX_RELEASED};
    use crate::connection::{Connection, Identity, Outbox, QueueBounds};
    use crate::metrics::Metrics;

    fn connection(id: u64) -> (Arc<Connection>, Outbox) {
        Connection::new(
            id,
            Identity { id: None, info: None },
            "127.0.0.1:1".parse().expect("an address"),
            QueueBounds::default(),
            &CancellationToken::new(),
            Arc::new(Metrics::default()),
        )
    }

    #[test]
    fn released_names_are_bounded_and_found_only_for_their_holder() {
        let mut state = State::default();
        let (first, _first_outbox) = connection(1);
        let (second, _second_outbox) = connection(2);
        state.remember_release("early", &first);
        for n in 0..MAX_RELEASED {
            state.remember_release(&format!("name-{n}"), &second);
        }
        assert_eq!(state.released.len(), MAX_RELEASED, "the oldest are forgotten");
        assert!(state.released_holder("early", 1).is_none(), "forgotten once over the bound");
        let last = format!("name-{}", MAX_RELEASED - 1);
        assert_eq!(state.released_holder(&last, 2).map(|holder| holder.id()), Some(2));
        assert!(state.released_holder(&last, 1).is_none(), "only the connection that held it");
        assert!(state.released_holder("name-unknown", 2).is_none());
    }
}
