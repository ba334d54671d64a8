//! Cursors: authenticated connections join documents and share cursors (a position and a
//! status, any JSON values) that the other connections in the document see appear, move and
//! disappear (docs/protocol.md "Cursors").
//!
//! Each cursor has two handles. The *private* handle is chosen by the connection that owns the
//! cursor and names it in `updateCursor`/`removeCursor`; it is scoped to that connection, so
//! two connections (even of one identity) may use the same values. The *public* handle is
//! chosen by the server and shown to everyone; it comes from one counter per service, so it is
//! unique within every document **(fixed: 0.1 drew random 16-bit numbers that could collide)**.
//! Private handles and documents are any JSON values compared by value.
//!
//! A connection owns at most `max_cursors` cursors (16 by default), over all its documents. Leaving a document
//! or disconnecting removes the connection's cursors there and tells the others.
//!
//! Policy: [`CursorsService::with_join_policy`] installs a `can_join(client, document)` hook;
//! when it refuses, `join` answers [`NOT_AUTHORIZED`] ("Not authorized"), checked after "Not
//! authenticated" and "Already joined".
//!
//! With a broker (several nodes), a document's cursors are kept in Redis and its changes go
//! through the broker: see the `cluster` submodule.

mod cluster;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use serde_json::{json, Value};

use crate::broker::Broker;
use crate::connection::{Connection, ConnectionId};
use crate::protocol::rpc::push_frame;
use crate::protocol::{errors, Frame, Params, RpcError};
use crate::service::{ask_policy, Caller, Departure, Policy, Service, Side};
use crate::services::cluster::rooms::JoinReply;
use crate::services::limits::{check_size, CursorsLimits};
use crate::value::{json_size, ValueKey};

/// A Cursors service: `join`, `leave`, `createCursor`, `updateCursor`, `removeCursor`.
#[derive(Debug, Clone)]
pub struct CursorsService {
    shared: Arc<CursorsShared>,
    /// Decides joins; `None` lets every authenticated connection join any document.
    join_policy: Option<Arc<dyn Policy>>,
}

#[derive(Debug)]
struct CursorsShared {
    /// The name clients address, which every push carries.
    name: String,
    /// How much one connection may join and own.
    limits: CursorsLimits,
    /// Documents, cursors and memberships. A std `Mutex` because nothing awaits while holding
    /// it; pushes are queued under it so every member sees a document's changes in one order.
    /// Unused with a broker.
    state: Mutex<CursorsState>,
    /// With a broker: the cluster's cursors and events (set when a server binds).
    cluster: Mutex<Option<Arc<cluster::CursorsCluster>>>,
}

#[derive(Debug)]
struct CursorsState {
    /// Documents with at least one member.
    documents: HashMap<ValueKey, Document>,
    /// What each connection joined and owns.
    connections: HashMap<ConnectionId, Joined>,
    /// The next public handle. Never reused while the service lives, so handles are unique in
    /// every document; at a million cursors a second it would take 285,000 years to pass
    /// JavaScript's safe-integer range.
    next_public_handle: u64,
}

#[derive(Debug, Default)]
struct Document {
    /// The connections joined to the document.
    members: HashMap<ConnectionId, Arc<Connection>>,
    /// The document's cursors by public handle: a `BTreeMap` so `join` lists them in creation
    /// order.
    cursors: BTreeMap<u64, Cursor>,
}

#[derive(Debug, Default)]
struct Joined {
    /// The documents the connection joined, with the value it gave.
    documents: HashMap<ValueKey, Value>,
    /// The connection's cursors by private handle.
    cursors: HashMap<ValueKey, OwnCursor>,
}

/// Where a connection's cursor lives.
#[derive(Debug, Clone)]
struct OwnCursor {
    document: ValueKey,
    public_handle: u64,
}

/// A cursor, serialized as docs/protocol.md's `{"publicHandle", "document", "position", "status",
/// "owner"}`.
#[derive(Debug, Clone, Serialize)]
struct Cursor {
    #[serde(rename = "publicHandle")]
    public_handle: u64,
    document: Value,
    position: Value,
    status: Value,
    owner: String,
}

#[derive(Serialize)]
struct CursorPush<'a, C: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    cursor: &'a C,
}

#[derive(Serialize)]
struct RemovedCursor<'a> {
    #[serde(rename = "publicHandle")]
    public_handle: u64,
    document: &'a Value,
}

/// What `updateCursor` changes.
struct Update {
    position: Option<Value>,
    status: Option<Value>,
}

impl Update {
    /// Changes `cursor` (of private handle `private_handle`), unless it would then be larger
    /// than `max_size` ("Cursor too large": it is left as it was).
    fn apply_to(self, cursor: &mut Cursor, private_handle: &Value, max_size: usize) -> Result<(), RpcError> {
        let size = cursor_size(
            private_handle,
            self.position.as_ref().unwrap_or(&cursor.position),
            self.status.as_ref().unwrap_or(&cursor.status),
        );
        if size > max_size {
            return Err(errors::CURSOR_TOO_LARGE);
        }
        if let Some(position) = self.position {
            cursor.position = position;
        }
        if let Some(status) = self.status {
            cursor.status = status;
        }
        Ok(())
    }
}

impl Document {
    /// Queues `frame` to every member but `except`.
    fn to_others(&self, except: ConnectionId, frame: &Frame) {
        for (id, member) in &self.members {
            if *id != except {
                member.deliver(frame.clone());
            }
        }
    }
}

impl CursorsShared {
    fn lock(&self) -> MutexGuard<'_, CursorsState> {
        crate::sync::lock(&self.state)
    }

    fn cluster(&self) -> Option<Arc<cluster::CursorsCluster>> {
        crate::sync::lock(&self.cluster).clone()
    }

    fn push<C: Serialize>(&self, kind: &'static str, cursor: &C) -> Frame {
        push_frame(&self.name, CursorPush { kind, cursor })
    }

    fn is_joined(&self, connection: &Connection, key: &ValueKey) -> bool {
        self.lock().connections.get(&connection.id()).is_some_and(|joined| joined.documents.contains_key(key))
    }

    fn join(&self, connection: &Arc<Connection>, document: Value) -> Result<Value, RpcError> {
        let key = ValueKey::of(&document);
        let mut guard = self.lock();
        let state = &mut *guard;
        let joined = state.connections.entry(connection.id()).or_default();
        if joined.documents.contains_key(&key) {
            return Err(errors::ALREADY_JOINED);
        }
        if joined.documents.len() >= self.limits.max_documents {
            return Err(errors::TOO_MANY_DOCUMENTS);
        }
        joined.documents.insert(key.clone(), document);
        let entry = state.documents.entry(key).or_default();
        entry.members.insert(connection.id(), Arc::clone(connection));
        Ok(json!({"cursors": entry.cursors.values().collect::<Vec<_>>()}))
    }

    fn leave(&self, connection: &Connection, document: &Value) -> Result<(), RpcError> {
        let key = ValueKey::of(document);
        let mut guard = self.lock();
        let state = &mut *guard;
        let left = state.connections.get_mut(&connection.id()).and_then(|joined| joined.documents.remove(&key));
        if left.is_none() {
            return Err(errors::NOT_JOINED);
        }
        self.remove_cursors_in(state, connection.id(), &key);
        Self::remove_member(state, connection.id(), &key);
        if state.connections.get(&connection.id()).is_some_and(|joined| joined.documents.is_empty()) {
            state.connections.remove(&connection.id());
        }
        Ok(())
    }

    fn create(
        &self,
        connection: &Connection,
        private_handle: &Value,
        document: Value,
        position: Value,
        status: Value,
    ) -> Result<u64, RpcError> {
        let owner = check_new_cursor(&self.limits, connection, private_handle, &position, &status)?;
        let doc_key = ValueKey::of(&document);
        let handle_key = ValueKey::of(private_handle);
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(joined) =
            state.connections.get_mut(&connection.id()).filter(|joined| joined.documents.contains_key(&doc_key))
        else {
            return Err(errors::NOT_JOINED);
        };
        if joined.cursors.contains_key(&handle_key) {
            return Err(errors::REUSED_HANDLE);
        }
        if joined.cursors.len() >= self.limits.max_cursors {
            return Err(errors::TOO_MANY_CURSORS);
        }
        let public_handle = state.next_public_handle;
        state.next_public_handle += 1;
        joined.cursors.insert(handle_key, OwnCursor { document: doc_key.clone(), public_handle });
        let Some(entry) = state.documents.get_mut(&doc_key) else {
            // Every joined document has an entry (both maps change under this lock).
            return Err(RpcError::Internal);
        };
        let cursor = Cursor { public_handle, document, position, status, owner };
        entry.to_others(connection.id(), &self.push("cursorAdded", &cursor));
        entry.cursors.insert(public_handle, cursor);
        Ok(public_handle)
    }

    fn update(&self, connection: &Connection, private_handle: &Value, update: Update) -> Result<(), RpcError> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let own = state
            .connections
            .get(&connection.id())
            .and_then(|joined| joined.cursors.get(&ValueKey::of(private_handle)))
            .ok_or(errors::NO_SUCH_CURSOR)?;
        let Some(entry) = state.documents.get_mut(&own.document) else {
            return Err(RpcError::Internal);
        };
        let Some(cursor) = entry.cursors.get_mut(&own.public_handle) else {
            return Err(RpcError::Internal);
        };
        update.apply_to(cursor, private_handle, self.limits.max_cursor_size)?;
        let frame = self.push("cursorUpdated", cursor);
        entry.to_others(connection.id(), &frame);
        Ok(())
    }

    fn remove(&self, connection: &Connection, private_handle: &Value) -> Result<(), RpcError> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let own = state
            .connections
            .get_mut(&connection.id())
            .and_then(|joined| joined.cursors.remove(&ValueKey::of(private_handle)))
            .ok_or(errors::NO_SUCH_CURSOR)?;
        if let Some(entry) = state.documents.get_mut(&own.document) {
            self.remove_cursor(entry, connection.id(), own.public_handle);
        }
        Ok(())
    }

    /// Removes cursor `public_handle` from `document` and tells the other members.
    fn remove_cursor(&self, document: &mut Document, owner: ConnectionId, public_handle: u64) {
        if let Some(cursor) = document.cursors.remove(&public_handle) {
            let removed = RemovedCursor { public_handle, document: &cursor.document };
            document.to_others(owner, &self.push("cursorRemoved", &removed));
        }
    }

    /// Removes every cursor `connection` owns in the document `key`.
    fn remove_cursors_in(&self, state: &mut CursorsState, connection: ConnectionId, key: &ValueKey) {
        let Some(joined) = state.connections.get_mut(&connection) else {
            return;
        };
        let mut handles: Vec<u64> = Vec::new();
        joined.cursors.retain(|_, own| {
            let here = own.document == *key;
            if here {
                handles.push(own.public_handle);
            }
            !here
        });
        if let Some(document) = state.documents.get_mut(key) {
            // In creation order, as `join` lists them.
            handles.sort_unstable();
            for handle in handles {
                self.remove_cursor(document, connection, handle);
            }
        }
    }

    /// Takes `connection` out of the members of `key`, dropping the document when it empties.
    fn remove_member(state: &mut CursorsState, connection: ConnectionId, key: &ValueKey) {
        if let Some(document) = state.documents.get_mut(key) {
            document.members.remove(&connection);
            if document.members.is_empty() {
                state.documents.remove(key);
            }
        }
    }

    fn disconnected(&self, connection: &Connection) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(joined) = state.connections.get(&connection.id()) else {
            return;
        };
        let keys: Vec<ValueKey> = joined.documents.keys().cloned().collect();
        for key in keys {
            self.remove_cursors_in(state, connection.id(), &key);
            Self::remove_member(state, connection.id(), &key);
        }
        state.connections.remove(&connection.id());
    }
}

impl CursorsService {
    /// A Cursors service named `name`, with the default limits.
    pub fn new(name: impl Into<String>) -> CursorsService {
        Self::with_limits(name, CursorsLimits::default())
    }

    /// A Cursors service named `name` with these limits.
    pub fn with_limits(name: impl Into<String>, limits: CursorsLimits) -> CursorsService {
        let state = CursorsState { documents: HashMap::new(), connections: HashMap::new(), next_public_handle: 1 };
        let shared = CursorsShared { name: name.into(), limits, state: Mutex::new(state), cluster: Mutex::default() };
        CursorsService { shared: Arc::new(shared), join_policy: None }
    }

    /// Installs the policy that decides joins ([`NOT_AUTHORIZED`] when it refuses). Its subject
    /// is the document.
    #[must_use]
    pub fn with_join_policy(mut self, policy: Arc<dyn Policy>) -> CursorsService {
        self.join_policy = Some(policy);
        self
    }

    /// Shares documents and cursors with the other nodes of `broker` (or keeps them in this
    /// process when `None`). Called when a server binds.
    pub fn attach(&self, broker: Option<&Broker>) {
        let cluster =
            broker.map(|broker| cluster::CursorsCluster::start(&self.shared.name, self.shared.limits, broker));
        *crate::sync::lock(&self.shared.cluster) = cluster;
    }

    /// The number of cursors in `document` (for tests and introspection); with a broker, those
    /// of this node's connections.
    pub fn cursor_count(&self, document: &Value) -> usize {
        if let Some(cluster) = self.shared.cluster() {
            return cluster.local_cursor_count(document);
        }
        self.shared.lock().documents.get(&ValueKey::of(document)).map_or(0, |document| document.cursors.len())
    }

    /// The number of connections joined to `document` (for tests and introspection); with a
    /// broker, on this node.
    pub fn member_count(&self, document: &Value) -> usize {
        if let Some(cluster) = self.shared.cluster() {
            return cluster.local_member_count(document);
        }
        self.shared.lock().documents.get(&ValueKey::of(document)).map_or(0, |document| document.members.len())
    }

    /// `join`: the cursors (`None` when the reply was queued already: with a broker, the reply
    /// comes before the pushes that follow the join on every node, see `cluster`).
    pub(crate) async fn join(
        &self,
        connection: &Arc<Connection>,
        mut params: Params,
        reply: JoinReply<'_>,
    ) -> Result<Option<Value>, RpcError> {
        let document = params.take("document")?;
        params.finish()?;
        if connection.identity().id.is_none() {
            return Err(errors::NOT_AUTHENTICATED);
        }
        check_size(&document, self.shared.limits.max_document_size, errors::DOCUMENT_TOO_LARGE)?;
        // Checked before the policy so a hook is not asked about a join that fails anyway;
        // `join` checks again under the lock. Requests of one connection run one at a time.
        let cluster = self.shared.cluster();
        let key = ValueKey::of(&document);
        let joined = match &cluster {
            Some(cluster) => cluster.is_joined(connection, &key),
            None => self.shared.is_joined(connection, &key),
        };
        if joined {
            return Err(errors::ALREADY_JOINED);
        }
        if !ask_policy(self.join_policy.as_ref(), self.name(), connection, &document).await? {
            return Err(errors::NOT_AUTHORIZED);
        }
        match cluster {
            Some(cluster) => cluster.join(connection, document, reply).await,
            None => self.shared.join(connection, document).map(Some),
        }
    }
}

/// The checks of `createCursor` that need no state: an identity (the owner, answered) and the
/// cursor's size.
fn check_new_cursor(
    limits: &CursorsLimits,
    connection: &Connection,
    private_handle: &Value,
    position: &Value,
    status: &Value,
) -> Result<String, RpcError> {
    let Some(owner) = connection.identity().id.clone() else {
        return Err(errors::NOT_JOINED);
    };
    if cursor_size(private_handle, position, status) > limits.max_cursor_size {
        return Err(errors::CURSOR_TOO_LARGE);
    }
    Ok(owner)
}

/// What a cursor costs to keep: its private handle, position and status, as JSON bytes.
fn cursor_size(private_handle: &Value, position: &Value, status: &Value) -> usize {
    json_size(private_handle) + json_size(position) + json_size(status)
}

/// Reads `newData`: an object with `position`, `status` or both, and nothing else.
fn take_update(params: &mut Params) -> Result<Update, RpcError> {
    let Value::Object(mut fields) = params.take("newData")? else {
        return Err(RpcError::InvalidParams);
    };
    let update = Update { position: fields.remove("position"), status: fields.remove("status") };
    if !fields.is_empty() || (update.position.is_none() && update.status.is_none()) {
        return Err(RpcError::InvalidParams);
    }
    Ok(update)
}

impl Service for CursorsService {
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
                let document = params.take("document")?;
                params.finish()?;
                match cluster {
                    Some(cluster) => cluster.leave(connection, &document).await,
                    None => self.shared.leave(connection, &document),
                }
                .map(|()| Value::Null)
            }
            "createCursor" => {
                let private_handle = params.take("privateHandle")?;
                let document = params.take("document")?;
                let position = params.take("position")?;
                let status = params.take("status")?;
                params.finish()?;
                let handle = match cluster {
                    Some(cluster) => cluster.create(connection, &private_handle, document, position, status).await,
                    None => self.shared.create(connection, &private_handle, document, position, status),
                }?;
                Ok(Value::from(handle))
            }
            "updateCursor" => {
                let private_handle = params.take("privateHandle")?;
                let update = take_update(&mut params)?;
                params.finish()?;
                match cluster {
                    Some(cluster) => cluster.update(connection, &private_handle, update).await,
                    None => self.shared.update(connection, &private_handle, update),
                }
                .map(|()| Value::Null)
            }
            "removeCursor" => {
                let private_handle = params.take("privateHandle")?;
                params.finish()?;
                match cluster {
                    Some(cluster) => cluster.remove(connection, &private_handle).await,
                    None => self.shared.remove(connection, &private_handle),
                }
                .map(|()| Value::Null)
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
