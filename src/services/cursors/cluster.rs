//! Cursors on several nodes. A document's cursors are kept in Redis, so `join` lists every
//! node's; each change goes through the document's broker channel, which every node with
//! members there listens on, published by the script that makes the change, so every member
//! sees the changes in one order and a joiner gets exactly those that followed its listing
//! (see `services::cluster` and its `rooms`). A node keeps its own connections' cursors (it
//! alone changes them) and, per document, the handles its members know.
//!
//! Public handles come from one counter in Redis, so they are unique in every document and
//! increase in creation order. The counter starts from the current time in microseconds, and
//! again if Redis restarts empty: handles issued since a restart are above those issued before
//! it (as long as fewer than a million cursors a second are created, on average), and remain
//! below JavaScript's safe-integer range until the year 2255.
//!
//! In Redis, under the broker's prefix:
//! - `cursors:<service>:doc:<digest>`: a hash, public handle → the cursor (JSON);
//! - `cursors:<service>:node:<node>`: a hash, `<digest>:<handle>` → `[connection, document]`:
//!   the node's records (see `services::cluster`), from which a dead node's cursors are
//!   removed;
//! - `cursors:<service>:holders`: the nodes that may have records;
//! - `cursors:<service>:handles`: the public handle counter;
//! - channel `cursors:<service>:room:<digest>`: the document's events.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};

use serde_json::{json, Value};

use super::{check_new_cursor, Cursor, CursorPush, RemovedCursor, Update};
use crate::broker::{Broker, BrokerError};
use crate::connection::{Connection, ConnectionId};
use crate::protocol::rpc::{push_frame, reply_frame};
use crate::protocol::{errors, Frame, RpcError};
use crate::service::Departure;
use crate::services::cluster::rooms::{JoinReply, Known, RoomEvents, RoomListener, Rooms, View, NOBODY};
use crate::services::cluster::{self, pairs, unavailable, version, Header, Kind, NodeRecords, READ_ROOM};
use crate::services::limits::CursorsLimits;
use crate::value::ValueKey;

/// The next public handle. KEYS: the counter.
static NEXT_HANDLE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        if redis.call('EXISTS', KEYS[1]) == 0 then
            local now = redis.call('TIME')
            redis.call('SET', KEYS[1], string.format('%.0f', now[1] * 1000000 + now[2]))
        end
        return redis.call('INCR', KEYS[1])
        ",
    )
});

/// Creates, changes or puts back a cursor and publishes its event. KEYS: the document's
/// cursors, the node's records, the holders. ARGV: the publish command, the node, the handle,
/// the cursor, the record's field, the record, the broker channel, the event.
static PUT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        redis.call('SADD', KEYS[3], ARGV[2])
        redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
        redis.call('HSET', KEYS[2], ARGV[5], ARGV[6])
        redis.call(ARGV[1], ARGV[7], ARGV[8])
        return 1
        ",
    )
});

/// Removes cursors, publishing each removal once. KEYS: the records' node's records, its
/// liveness key, then each item's document. ARGV: the publish command, reaping (1 or 0), then
/// per item: field, handle, broker channel, event. Returns 0 when reaping a node that is alive
/// after all (nothing done), else 1.
static DROP: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        if ARGV[2] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
        for i = 0, (#ARGV - 2) / 4 - 1 do
            local at = 3 + 4 * i
            if redis.call('HDEL', KEYS[1], ARGV[at]) == 1 then
                redis.call('HDEL', KEYS[3 + i], ARGV[at + 1])
                redis.call(ARGV[1], ARGV[at + 2], ARGV[at + 3])
            end
        end
        return 1
        ",
    )
});

/// The cursors of a document, as this node's members were told: handle → version.
#[derive(Debug, Default)]
pub struct Handles(BTreeMap<u64, u64>);

/// What an event does to a cursor: handle and version.
#[derive(Debug, Clone, Copy)]
pub enum Change {
    /// Cursor created, or put back after an outage.
    Added(u64, u64),
    /// Cursor moved or restyled.
    Updated(u64, u64),
    /// Cursor removed.
    Removed(u64),
}

impl Change {
    fn handle(self) -> u64 {
        match self {
            Change::Added(handle, _) | Change::Updated(handle, _) | Change::Removed(handle) => handle,
        }
    }
}

impl View for Handles {
    type Change = Change;

    fn apply(&mut self, change: Change) -> bool {
        match change {
            // A cursor put back after an outage is news only to those who did not see it so.
            Change::Added(handle, version) => self.0.insert(handle, version) != Some(version),
            Change::Updated(handle, version) => {
                self.0.insert(handle, version);
                true
            }
            Change::Removed(handle) => self.0.remove(&handle).is_some(),
        }
    }
}

/// Cursors' state on one node of a cluster.
#[derive(Debug)]
pub struct CursorsCluster {
    name: String,
    limits: CursorsLimits,
    broker: Broker,
    /// A std `Mutex`: never held across an await; events are queued to members under it, in
    /// the order the broker brings them.
    state: Mutex<State>,
    this: Weak<CursorsCluster>,
    heal_scheduled: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    rooms: Rooms<Handles>,
    /// Each connection's cursors, by private handle.
    owned: HashMap<ConnectionId, HashMap<ValueKey, Own>>,
}

/// A cursor of one of this node's connections.
#[derive(Debug, Clone)]
struct Own {
    document: ValueKey,
    digest: String,
    cursor: Cursor,
}

/// A cursor to remove in Redis.
struct Gone {
    digest: String,
    connection: ConnectionId,
    handle: u64,
    document: Value,
}

impl State {
    /// Takes connection `id`'s cursors in the document of `key` (all of them with `None`), in
    /// creation order.
    fn take_cursors(&mut self, id: ConnectionId, key: Option<&ValueKey>) -> Vec<Gone> {
        let Some(owned) = self.owned.get_mut(&id) else { return Vec::new() };
        let mut gone = Vec::new();
        owned.retain(|_, own| {
            if key.is_some_and(|key| *key != own.document) {
                return true;
            }
            let (handle, document) = (own.cursor.public_handle, own.cursor.document.clone());
            gone.push(Gone { digest: own.digest.clone(), connection: id, handle, document });
            false
        });
        if owned.is_empty() {
            self.owned.remove(&id);
        }
        gone.sort_unstable_by_key(|gone| gone.handle);
        gone
    }
}

impl CursorsCluster {
    /// Cursors' state for a node of `broker`, with its reaper and healer registered.
    pub fn start(name: &str, limits: CursorsLimits, broker: &Broker) -> Arc<CursorsCluster> {
        broker.register_scripts(&[&NEXT_HANDLE, &PUT, &DROP]);
        cluster::register_scripts(broker);
        let cursors = Arc::new_cyclic(|this| CursorsCluster {
            name: name.to_owned(),
            limits,
            broker: broker.clone(),
            state: Mutex::default(),
            this: this.clone(),
            heal_scheduled: AtomicBool::new(false),
        });
        cluster::register_hooks(&cursors);
        cursors
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    fn key(&self, what: &str, digest: &str) -> String {
        self.broker.key(&format!("cursors:{}:{what}:{digest}", self.name))
    }

    fn unavailable(&self, what: &str, err: &BrokerError) -> RpcError {
        unavailable(&self.name, what, err)
    }

    fn heal_later(&self) {
        if let Some(cursors) = self.this.upgrade() {
            cluster::schedule_heal(&cursors);
        }
    }

    /// Whether `connection` joined the document of `key`.
    pub fn is_joined(&self, connection: &Connection, key: &ValueKey) -> bool {
        self.lock().rooms.is_joined(connection.id(), key)
    }

    /// The cursors this node's connections own in `document`.
    pub fn local_cursor_count(&self, document: &Value) -> usize {
        let key = ValueKey::of(document);
        self.lock().owned.values().flat_map(HashMap::values).filter(|own| own.document == key).count()
    }

    /// This node's connections joined to `document`.
    pub fn local_member_count(&self, document: &Value) -> usize {
        self.lock().rooms.active_members(&ValueKey::of(document)).count()
    }

    /// Joins `connection` to `document`; answers every node's cursors there (`None` when it
    /// queued the answer itself).
    pub async fn join(
        &self,
        connection: &Arc<Connection>,
        document: Value,
        reply: JoinReply<'_>,
    ) -> Result<Option<Value>, RpcError> {
        let key = ValueKey::of(&document);
        let (digest, relay) = self.lock().rooms.enter(
            connection,
            &key,
            document,
            self.limits.max_documents,
            errors::TOO_MANY_DOCUMENTS,
        )?;
        let channel = self.key("room", &digest);
        let listener = RoomListener::new(self.this.clone(), key.clone());
        if let Err(err) = relay.get_or_try_init(|| self.broker.subscribe(&channel, listener)).await {
            self.lock().rooms.forget(connection.id(), &key);
            return Err(self.unavailable("a join", &err));
        }
        // The join event is the marker of the listing (see `rooms`).
        let mut invocation = READ_ROOM.prepare_invoke();
        invocation
            .key(self.key("doc", &digest))
            .arg(self.broker.publish_command())
            .arg(&channel)
            .arg(Header::new(Kind::Join, self.broker.node(), connection.id(), None).encode(None));
        let flat: Vec<String> = match self.broker.script(&invocation).await {
            Ok(flat) => flat,
            Err(err) => {
                self.lock().rooms.forget(connection.id(), &key);
                return Err(self.unavailable("a join", &err));
            }
        };
        let cursors = self.parse_cursors(flat);
        let handles = Handles(cursors.iter().map(|(&handle, (text, _))| (handle, version(text))).collect());
        let answer = json!({ "cursors": cursors.into_values().map(|(_, cursor)| cursor).collect::<Vec<Value>>() });
        let queued = match reply {
            JoinReply::Queued(call_id) => Some(reply_frame(&self.name, call_id, &Ok(answer.clone()))),
            JoinReply::Returned => None,
        };
        let returned = queued.is_none().then_some(answer);
        self.lock().rooms.joined(&key, connection, handles, queued);
        Ok(returned)
    }

    /// A document's cursors as Redis holds them (text and value), by public handle: in
    /// creation order.
    fn parse_cursors(&self, flat: Vec<String>) -> BTreeMap<u64, (String, Value)> {
        pairs(flat)
            .into_iter()
            .filter_map(|(handle, text)| {
                let parsed = handle.parse::<u64>().ok().zip(serde_json::from_str::<Value>(&text).ok());
                if parsed.is_none() {
                    log::error!("{:?}: a malformed cursor in the broker: {handle:?} → {text:?}", self.name);
                }
                let (handle, cursor) = parsed?;
                Some((handle, (text, cursor)))
            })
            .collect()
    }

    /// Takes `connection` out of `document`, removing its cursors there.
    pub async fn leave(&self, connection: &Connection, document: &Value) -> Result<(), RpcError> {
        let key = ValueKey::of(document);
        let gone = {
            let mut state = self.lock();
            if state.rooms.forget(connection.id(), &key).is_none() {
                return Err(errors::NOT_JOINED);
            }
            state.take_cursors(connection.id(), Some(&key))
        };
        self.drop_cursors(gone).await;
        Ok(())
    }

    /// Creates a cursor of `connection` in `document`; answers its public handle.
    pub async fn create(
        &self,
        connection: &Connection,
        private_handle: &Value,
        document: Value,
        position: Value,
        status: Value,
    ) -> Result<u64, RpcError> {
        let owner = check_new_cursor(&self.limits, connection, private_handle, &position, &status)?;
        let key = ValueKey::of(&document);
        let private = ValueKey::of(private_handle);
        let digest = {
            let state = self.lock();
            let Some(digest) = state.rooms.active_in(connection.id(), &key) else {
                return Err(errors::NOT_JOINED);
            };
            let cursors = state.owned.get(&connection.id());
            if cursors.is_some_and(|cursors| cursors.contains_key(&private)) {
                return Err(errors::REUSED_HANDLE);
            }
            if cursors.map_or(0, HashMap::len) >= self.limits.max_cursors {
                return Err(errors::TOO_MANY_CURSORS);
            }
            digest.to_owned()
        };
        let mut invocation = NEXT_HANDLE.prepare_invoke();
        invocation.key(self.broker.key(&format!("cursors:{}:handles", self.name)));
        let public_handle: u64 =
            self.broker.script(&invocation).await.map_err(|err| self.unavailable("a new cursor", &err))?;
        let cursor = Cursor { public_handle, document, position, status, owner };
        // Held here before it is in Redis (see `services::cluster` on healing). Requests of one
        // connection run one at a time, so the checks above still hold.
        let own = Own { document: key, digest, cursor };
        self.lock().owned.entry(connection.id()).or_default().insert(private.clone(), own.clone());
        if let Err(err) = self.put(connection.id(), &own, Kind::Added).await {
            self.lock().take_cursor(connection.id(), &private);
            // The script may have run without its answer arriving.
            self.heal_later();
            return Err(self.unavailable("a new cursor", &err));
        }
        Ok(public_handle)
    }

    /// Writes `own` (of connection `id`) to Redis and publishes its event of `kind`.
    async fn put(&self, id: ConnectionId, own: &Own, kind: Kind) -> Result<(), BrokerError> {
        let handle = own.cursor.public_handle;
        let push = if kind == Kind::Added { "cursorAdded" } else { "cursorUpdated" };
        let frame = push_frame(&self.name, CursorPush { kind: push, cursor: &own.cursor });
        let text = serde_json::to_string(&own.cursor).unwrap_or_default();
        let event = Header::new(kind, self.broker.node(), id, None).cursor(handle, Some(version(&text)));
        let event = event.encode(Some(&frame));
        let mut invocation = PUT.prepare_invoke();
        invocation
            .key(self.key("doc", &own.digest))
            .key(self.records_key(self.broker.node()))
            .key(self.holders_key())
            .arg(self.broker.publish_command())
            .arg(self.broker.node())
            .arg(handle)
            .arg(text)
            .arg(format!("{}:{handle}", own.digest))
            .arg(json!([id, own.cursor.document]).to_string())
            .arg(self.key("room", &own.digest))
            .arg(event);
        self.broker.script::<i64>(&invocation).await.map(|_| ())
    }

    /// Moves or restyles a cursor of `connection`.
    pub async fn update(
        &self,
        connection: &Connection,
        private_handle: &Value,
        update: Update,
    ) -> Result<(), RpcError> {
        let private = ValueKey::of(private_handle);
        let mut own = self
            .lock()
            .owned
            .get(&connection.id())
            .and_then(|owned| owned.get(&private))
            .cloned()
            .ok_or(errors::NO_SUCH_CURSOR)?;
        update.apply_to(&mut own.cursor, private_handle, self.limits.max_cursor_size)?;
        self.put(connection.id(), &own, Kind::Updated)
            .await
            .map_err(|err| self.unavailable("a cursor update", &err))?;
        if let Some(held) = self.lock().owned.get_mut(&connection.id()).and_then(|owned| owned.get_mut(&private)) {
            *held = own;
        }
        Ok(())
    }

    /// Removes a cursor of `connection`.
    pub async fn remove(&self, connection: &Connection, private_handle: &Value) -> Result<(), RpcError> {
        let gone =
            self.lock().take_cursor(connection.id(), &ValueKey::of(private_handle)).ok_or(errors::NO_SUCH_CURSOR)?;
        self.drop_cursors(vec![gone]).await;
        Ok(())
    }

    /// Removes cursors from Redis (gone from this node already); a failure is healed later.
    async fn drop_cursors(&self, gone: Vec<Gone>) {
        if gone.is_empty() {
            return;
        }
        let what = format!("removing {} cursors", gone.len());
        cluster::remove_or_heal(&self.this, what, self.drop_in_redis(self.broker.node(), &gone, false)).await;
    }

    async fn drop_in_redis(&self, node: &str, gone: &[Gone], reaping: bool) -> Result<bool, BrokerError> {
        let mut invocation = cluster::removal(self, &DROP, node, reaping);
        for cursor in gone {
            let removed = RemovedCursor { public_handle: cursor.handle, document: &cursor.document };
            let frame = push_frame(&self.name, CursorPush { kind: "cursorRemoved", cursor: &removed });
            let event = Header::new(Kind::Removed, node, cursor.connection, None).cursor(cursor.handle, None);
            invocation
                .key(self.key("doc", &cursor.digest))
                .arg(format!("{}:{}", cursor.digest, cursor.handle))
                .arg(cursor.handle)
                .arg(self.key("room", &cursor.digest))
                .arg(event.encode(Some(&frame)));
        }
        let done: i64 = self.broker.script(&invocation).await?;
        Ok(done == 1)
    }

    /// Takes a closed connection out of its documents here; returns the removal of its cursors
    /// from Redis.
    pub fn departure(&self, connection: &Connection) -> Option<Departure> {
        let gone = {
            let mut state = self.lock();
            state.rooms.forget_all(connection.id());
            state.take_cursors(connection.id(), None)
        };
        if gone.is_empty() {
            return None;
        }
        let cursors = self.this.upgrade()?;
        Some(Box::pin(async move { cursors.drop_cursors(gone).await }))
    }

    /// Reads the cursors of the document of `room` and pushes what this node's members missed.
    async fn sync_room(&self, room: Known) -> Result<(), BrokerError> {
        let Some(marker) = self.lock().rooms.start_sync(&room.key) else { return Ok(()) };
        let mut invocation = READ_ROOM.prepare_invoke();
        invocation
            .key(self.key("doc", &room.digest))
            .arg(self.broker.publish_command())
            .arg(self.key("room", &room.digest))
            .arg(Header::new(Kind::Synced, self.broker.node(), marker, None).encode(None));
        let (cursors, outcome) = match self.broker.script::<Vec<String>>(&invocation).await {
            Ok(flat) => (Some(self.parse_cursors(flat)), Ok(())),
            Err(err) => (None, Err(err)),
        };
        let state = cursors
            .as_ref()
            .map(|cursors| Handles(cursors.iter().map(|(&handle, (text, _))| (handle, version(text))).collect()));
        let me = self.broker.node();
        let mut guard = self.lock();
        // The pushes about a cursor of this node's leave its owner out, as its own would.
        let owners: HashMap<u64, ConnectionId> = guard
            .owned
            .iter()
            .flat_map(|(id, owned)| owned.values().map(move |own| (own.cursor.public_handle, *id)))
            .collect();
        let owner = |handle: u64| owners.get(&handle).copied().unwrap_or(NOBODY);
        let pushes: Vec<(Header, Frame)> = match (guard.rooms.end_sync(&room.key, marker, state), &cursors) {
            (Some(synced), Some(cursors)) => {
                // Cursors changed since the marker were told as they changed.
                let touched: HashSet<u64> = synced.changes.iter().map(|change| change.handle()).collect();
                let removed =
                    synced.before.0.keys().filter(|handle| !synced.after.0.contains_key(handle)).map(|&handle| {
                        let cursor = RemovedCursor { public_handle: handle, document: &room.value };
                        let frame = push_frame(&self.name, CursorPush { kind: "cursorRemoved", cursor: &cursor });
                        (Header::new(Kind::Removed, me, owner(handle), None).cursor(handle, None), frame)
                    });
                let changed = cursors.iter().filter(|(handle, _)| !touched.contains(*handle)).filter_map(
                    |(&handle, (text, cursor))| {
                        let now = version(text);
                        let (kind, push) = match synced.before.0.get(&handle) {
                            Some(&told) if told == now => return None,
                            Some(_) => (Kind::Updated, "cursorUpdated"),
                            None => (Kind::Added, "cursorAdded"),
                        };
                        let header = Header::new(kind, me, owner(handle), None).cursor(handle, Some(now));
                        Some((header, push_frame(&self.name, CursorPush { kind: push, cursor })))
                    },
                );
                removed.chain(changed).collect()
            }
            _ => Vec::new(),
        };
        for (header, frame) in pushes {
            guard.rooms.push(&room.key, me, &header, &frame);
        }
        outcome
    }
}

impl State {
    /// Takes one cursor of connection `id`.
    fn take_cursor(&mut self, id: ConnectionId, private: &ValueKey) -> Option<Gone> {
        let owned = self.owned.get_mut(&id)?;
        let own = owned.remove(private)?;
        if owned.is_empty() {
            self.owned.remove(&id);
        }
        Some(Gone {
            digest: own.digest,
            connection: id,
            handle: own.cursor.public_handle,
            document: own.cursor.document,
        })
    }
}

impl RoomEvents for CursorsCluster {
    fn on_event(&self, key: &ValueKey, header: &Header, frame: Option<Frame>) {
        let version = header.version.unwrap_or_default();
        let change = match (header.kind, header.handle) {
            (Kind::Added, Some(handle)) => Some(Change::Added(handle, version)),
            (Kind::Updated, Some(handle)) => Some(Change::Updated(handle, version)),
            (Kind::Removed, Some(handle)) => Some(Change::Removed(handle)),
            _ => None,
        };
        self.lock().rooms.deliver(key, self.broker.node(), header, frame.as_ref(), change);
    }
}

/// Reads a record: its field `<digest>:<handle>` and value `[connection, document]`.
fn parse_record(field: &str, value: &str) -> Option<Gone> {
    let (digest, handle) = field.split_once(':')?;
    let (connection, document): (ConnectionId, Value) = serde_json::from_str(value).ok()?;
    Some(Gone { digest: digest.to_owned(), connection, handle: handle.parse().ok()?, document })
}

impl NodeRecords for CursorsCluster {
    fn broker(&self) -> &Broker {
        &self.broker
    }

    fn service_name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "cursors"
    }

    fn held(&self) -> HashSet<String> {
        let state = self.lock();
        state
            .owned
            .values()
            .flat_map(HashMap::values)
            .map(|own| format!("{}:{}", own.digest, own.cursor.public_handle))
            .collect()
    }

    async fn remove(&self, node: &str, records: Vec<(String, String)>, reaping: bool) -> Result<bool, BrokerError> {
        let mut gone: Vec<Gone> = Vec::new();
        for (field, value) in &records {
            match parse_record(field, value) {
                Some(cursor) => gone.push(cursor),
                None => log::error!("{:?}: a malformed record in the broker: {field:?} → {value:?}", self.name),
            }
        }
        if gone.is_empty() {
            return Ok(true);
        }
        gone.sort_unstable_by_key(|cursor| cursor.handle);
        self.drop_in_redis(node, &gone, reaping).await
    }

    async fn restore(&self, fields: Vec<String>) -> Result<(), BrokerError> {
        let wanted: HashSet<String> = fields.into_iter().collect();
        let cursors: Vec<(ConnectionId, Own)> = {
            let state = self.lock();
            let mut cursors: Vec<(ConnectionId, Own)> = state
                .owned
                .iter()
                .flat_map(|(id, owned)| owned.values().map(move |own| (*id, own)))
                .filter(|(_, own)| wanted.contains(&format!("{}:{}", own.digest, own.cursor.public_handle)))
                .map(|(id, own)| (id, own.clone()))
                .collect();
            cursors.sort_unstable_by_key(|(_, own)| own.cursor.public_handle);
            cursors
        };
        for (id, own) in cursors {
            self.put(id, &own, Kind::Added).await?;
        }
        Ok(())
    }

    async fn sync(&self) -> Result<(), BrokerError> {
        let known = self.lock().rooms.known();
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
