//! A node's rooms: the Chat channels or Cursors documents its connections joined, with the
//! members there and what they have been told.
//!
//! A room's events come through one broker channel, which the node listens on from its first
//! member's `join` until its last member leaves. A member is *pending* until its `join` event
//! comes back: it receives nothing. From that event on it is *joining*: the events that follow
//! are kept for it until its `join` reply is queued, then queued after the reply, and the
//! member is *active*. So a client gets its listing, then exactly the changes that followed it
//! (a client that ignores pushes for rooms it has not joined yet misses nothing).
//!
//! **Views.** Per room the node keeps a *view*: what its members have been told (Chat: the
//! identities present; Cursors: the cursors). An event whose change would not change the view
//! is not pushed: a presence put back after an outage that nobody saw go, the removal of a
//! cursor nobody saw. After an outage the node reads each room's state from Redis and pushes
//! the difference from its view (a *sync*), so its members end with Redis's state whatever
//! they missed. A read of the state is ordered with the room's events by a *marker* event that
//! the reading script publishes: the node logs the changes that follow its marker until the
//! answer arrives, then applies them to the state read. A room's first view comes the same way
//! from its first member's `join` answer, its `join` event being the marker; until then events
//! are pushed as they come.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Weak};

use serde_json::Value;
use tokio::sync::OnceCell;

use super::{Header, Kind};
use crate::broker::{Listener, Subscription};
use crate::connection::{Connection, ConnectionId};
use crate::protocol::{codes, errors, Frame, Params, RpcError};
use crate::service::Caller;
use crate::services::external::Handled;
use crate::value::ValueKey;

/// The most changes logged per room while a read of its state is in flight (a read answers
/// within the broker's command timeout). Past it the view may let a duplicate through or hold
/// back a push until the next sync; memory stays bounded.
const MAX_LOG: usize = 65_536;

/// The acting connection of the pushes a node makes on its own (a sync's): none of its
/// connections.
pub const NOBODY: ConnectionId = ConnectionId::MAX;

/// What a room's members have been told.
pub trait View: Default + std::fmt::Debug + Send + 'static {
    /// What an event changes.
    type Change: Clone + std::fmt::Debug + Send;

    /// Applies `change`; whether the event is to be pushed.
    fn apply(&mut self, change: Self::Change) -> bool;
}

/// Receives a room's events: a Chat or Cursors service on a node.
pub trait RoomEvents: Send + Sync + 'static {
    /// An event of the room of `key`, as the broker brought it.
    fn on_event(&self, key: &ValueKey, header: &Header, frame: Option<Frame>);
}

/// The listener a room gives the broker.
pub struct RoomListener<S> {
    service: Weak<S>,
    key: ValueKey,
}

impl<S: RoomEvents> RoomListener<S> {
    /// The listener of the room of `key` of `service`.
    pub fn new(service: Weak<S>, key: ValueKey) -> Arc<RoomListener<S>> {
        Arc::new(RoomListener { service, key })
    }
}

impl<S: RoomEvents> Listener for RoomListener<S> {
    fn message(&self, payload: &[u8]) {
        let Some(service) = self.service.upgrade() else { return };
        let Some((header, frame)) = Header::decode(payload) else { return };
        service.on_event(&self.key, &header, frame);
    }
}

/// The rooms of one service on one node. Kept under the service's lock: events are handled and
/// pushed under it, in the order the broker brings them.
#[derive(Debug)]
pub struct Rooms<V: View> {
    by_key: HashMap<ValueKey, Room<V>>,
    /// Each connection's rooms, with the value it gave when joining.
    joined: HashMap<ConnectionId, HashMap<ValueKey, Value>>,
    next_marker: u64,
}

impl<V: View> Default for Rooms<V> {
    fn default() -> Self {
        Rooms { by_key: HashMap::new(), joined: HashMap::new(), next_marker: 1 }
    }
}

#[derive(Debug)]
struct Room<V: View> {
    digest: String,
    /// The value its first member gave (what the node's own pushes name the room by).
    value: Value,
    members: HashMap<ConnectionId, Member>,
    /// The node's subscription to the room's events, made by the first member; dropped with
    /// the room.
    relay: Arc<OnceCell<Subscription>>,
    /// `None` until the first member's `join` answers.
    view: Option<V>,
    /// Reads of the room's state in flight.
    reads: usize,
    /// While the view is unknown or reads are in flight: the markers and changes since.
    log: Vec<Logged<V::Change>>,
}

#[derive(Debug)]
enum Logged<C> {
    /// The `join` event of a connection of this node.
    Joined(ConnectionId),
    /// A sync marker of this node.
    Synced(u64),
    Change(C),
}

#[derive(Debug)]
struct Member {
    connection: Arc<Connection>,
    state: MemberState,
}

#[derive(Debug)]
enum MemberState {
    /// Its `join` event has not come back: it gets nothing.
    Pending,
    /// Its `join` event came back, its reply is not queued yet: the pushes since, and their
    /// size in bytes.
    Joining(Vec<Frame>, usize),
    /// It gets every push.
    Active,
}

impl Member {
    fn is_active(&self) -> bool {
        matches!(self.state, MemberState::Active)
    }

    /// Queues `frame`, or keeps it until the reply (bounded like the connection's queue: a
    /// member whose kept pushes outgrow it is closed as a slow consumer would be).
    fn push(&mut self, frame: &Frame) {
        match &mut self.state {
            MemberState::Active => {
                self.connection.deliver(frame.clone());
            }
            MemberState::Joining(kept, size) => {
                *size += frame.len();
                if *size > self.connection.bounds().limit {
                    log::warn!(
                        "connection {}: too many pushes waiting for its join reply: closing it",
                        self.connection.id()
                    );
                    self.connection.close(codes::POLICY_VIOLATION);
                    self.state = MemberState::Pending;
                } else {
                    kept.push(frame.clone());
                }
            }
            MemberState::Pending => {}
        }
    }

    /// Its `join` event came back.
    fn event_back(&mut self) {
        if matches!(self.state, MemberState::Pending) {
            self.state = MemberState::Joining(Vec::new(), 0);
        }
    }

    /// Its reply was queued: what was kept for it follows.
    fn activate(&mut self) {
        if let MemberState::Joining(kept, _) = std::mem::replace(&mut self.state, MemberState::Active) {
            for frame in kept {
                self.connection.deliver(frame);
            }
        }
    }
}

/// Who queues the reply of a `join`.
#[derive(Debug, Clone, Copy)]
pub enum JoinReply<'a> {
    /// The service, with this `callId`: before the pushes that follow the join.
    Queued(Option<&'a Value>),
    /// The caller of `Service::handle`, with the value returned: pushes that follow the join
    /// may come before it.
    Returned,
}

/// Runs a request of a service whose `join` may queue its own reply: `join` with
/// [`JoinReply::Queued`] for a client's `join`, `other` for anything else.
pub async fn handle_request<'a, J, O>(
    caller: Caller<'a>,
    command: &str,
    params: Params,
    call_id: Option<&'a Value>,
    join: impl FnOnce(&'a Arc<Connection>, Params, JoinReply<'a>) -> J,
    other: impl FnOnce(Params) -> O,
) -> Handled
where
    J: Future<Output = Result<Option<Value>, RpcError>>,
    O: Future<Output = Result<Value, RpcError>>,
{
    match (caller, command) {
        (Caller::Client(connection), "join") => match join(connection, params, JoinReply::Queued(call_id)).await {
            Ok(Some(answer)) => Handled::Reply(Ok(answer)),
            Ok(None) => Handled::Later,
            Err(err) => Handled::Reply(Err(err)),
        },
        _ => Handled::Reply(other(params).await),
    }
}

/// A membership taken out of a room.
#[derive(Debug)]
pub struct Left {
    /// The room's digest (its keys in Redis).
    pub digest: String,
    /// The value the connection gave when joining.
    pub value: Value,
    /// The connection.
    pub connection: Arc<Connection>,
}

/// A sync's outcome (see [`Rooms::end_sync`]).
#[derive(Debug)]
pub struct Synced<'a, V: View> {
    /// What the members were told.
    pub before: V,
    /// What they are to know.
    pub after: &'a V,
    /// The changes since the marker, which they were told.
    pub changes: Vec<V::Change>,
}

/// A room whose view is known, to sync.
#[derive(Debug)]
pub struct Known {
    /// The room's key.
    pub key: ValueKey,
    /// Its digest.
    pub digest: String,
    /// The value the node's own pushes name it by.
    pub value: Value,
}

impl<V: View> Room<V> {
    fn logging(&self) -> bool {
        self.view.is_none() || self.reads > 0
    }

    fn log(&mut self, entry: Logged<V::Change>) {
        if self.log.len() < MAX_LOG {
            self.log.push(entry);
        }
    }

    /// The changes logged after `marker` (all of them if it is missing: its event was lost).
    fn changes_since(&self, marker: impl Fn(&Logged<V::Change>) -> bool) -> Vec<V::Change> {
        let start = self.log.iter().position(marker).map_or(self.log.len(), |at| at + 1);
        self.log[start..]
            .iter()
            .filter_map(|entry| if let Logged::Change(change) = entry { Some(change.clone()) } else { None })
            .collect()
    }

    /// Ends the log when nothing waits for it any more.
    fn trim(&mut self) {
        if !self.logging() {
            self.log = Vec::new();
        }
    }

    /// Pushes `frame` to the members that an event of `header` goes to (`me`: this node).
    fn push(&mut self, me: &str, header: &Header, frame: &Frame) {
        let who = header.who.as_deref();
        for (id, member) in &mut self.members {
            let identity = member.connection.identity().id.as_deref();
            let to = match header.kind {
                // Presence never goes to the identity concerned.
                Kind::Join | Kind::Leave => identity != who,
                Kind::All => true,
                Kind::Own => identity == who && !header.is(me, *id),
                Kind::Added | Kind::Updated | Kind::Removed => !header.is(me, *id),
                Kind::Direct | Kind::Synced => false,
            };
            if to {
                member.push(frame);
            }
        }
    }
}

impl<V: View> Rooms<V> {
    /// Whether connection `id` joined the room of `key`.
    pub fn is_joined(&self, id: ConnectionId, key: &ValueKey) -> bool {
        self.joined.get(&id).is_some_and(|rooms| rooms.contains_key(key))
    }

    /// Adds `connection` to the room of `key` as a pending member (the room is made if need
    /// be), unless it joined it already or `max` rooms. Returns the room's digest and the
    /// node's subscription to it (to make, if it is the room's first member).
    ///
    /// # Errors
    ///
    /// "Already joined", or `too_many` when the connection joined `max` rooms.
    pub fn enter(
        &mut self,
        connection: &Arc<Connection>,
        key: &ValueKey,
        value: Value,
        max: usize,
        too_many: RpcError,
    ) -> Result<(String, Arc<OnceCell<Subscription>>), RpcError> {
        let rooms = self.joined.get(&connection.id());
        if rooms.is_some_and(|rooms| rooms.contains_key(key)) {
            return Err(errors::ALREADY_JOINED);
        }
        if rooms.map_or(0, HashMap::len) >= max {
            return Err(too_many);
        }
        self.joined.entry(connection.id()).or_default().insert(key.clone(), value.clone());
        let room = self.by_key.entry(key.clone()).or_insert_with(|| Room {
            digest: key.digest(),
            value,
            members: HashMap::new(),
            relay: Arc::default(),
            view: None,
            reads: 0,
            log: Vec::new(),
        });
        room.members
            .insert(connection.id(), Member { connection: Arc::clone(connection), state: MemberState::Pending });
        Ok((room.digest.clone(), Arc::clone(&room.relay)))
    }

    /// The `join` of `connection` found `state` in Redis (as of its `join` event), answered by
    /// `reply` (when the service queues it, see [`JoinReply`]): queues the reply, then what was
    /// kept for the member, which is active from now on; and a room whose view was unknown
    /// knows it now.
    pub fn joined(&mut self, key: &ValueKey, connection: &Connection, mut state: V, reply: Option<Frame>) {
        if let Some(reply) = reply {
            connection.send(reply);
        }
        let id = connection.id();
        let Some(room) = self.by_key.get_mut(key) else { return };
        if let Some(member) = room.members.get_mut(&id) {
            member.activate();
        }
        if room.view.is_some() {
            return;
        }
        for change in room.changes_since(|entry| matches!(entry, Logged::Joined(joined) if *joined == id)) {
            state.apply(change);
        }
        room.view = Some(state);
        room.trim();
    }

    /// Takes connection `id` out of the room of `key`, dropping the room (and the node's
    /// subscription to it) with its last member.
    pub fn forget(&mut self, id: ConnectionId, key: &ValueKey) -> Option<Left> {
        let rooms = self.joined.get_mut(&id)?;
        let value = rooms.remove(key)?;
        if rooms.is_empty() {
            self.joined.remove(&id);
        }
        let room = self.by_key.get_mut(key)?;
        let member = room.members.remove(&id)?;
        let digest = room.digest.clone();
        if room.members.is_empty() {
            self.by_key.remove(key);
        }
        Some(Left { digest, value, connection: member.connection })
    }

    /// Takes connection `id` out of every room.
    pub fn forget_all(&mut self, id: ConnectionId) -> Vec<Left> {
        let keys: Vec<ValueKey> = self.joined.get(&id).map(|rooms| rooms.keys().cloned().collect()).unwrap_or_default();
        keys.iter().filter_map(|key| self.forget(id, key)).collect()
    }

    /// The digest of the room of `key` if connection `id` is an active member there.
    pub fn active_in(&self, id: ConnectionId, key: &ValueKey) -> Option<&str> {
        let room = self.by_key.get(key)?;
        room.members.get(&id).filter(|member| member.is_active()).map(|_| room.digest.as_str())
    }

    /// The connections of the active members of the room of `key`.
    pub fn active_members(&self, key: &ValueKey) -> impl Iterator<Item = &Arc<Connection>> {
        self.by_key
            .get(key)
            .into_iter()
            .flat_map(|room| room.members.values().filter(|member| member.is_active()).map(|member| &member.connection))
    }

    /// Every membership: the room's digest, the connection, and the value it gave.
    pub fn memberships(&self) -> impl Iterator<Item = (&str, &Arc<Connection>, &Value)> {
        self.by_key.iter().flat_map(move |(key, room)| {
            room.members.values().filter_map(move |member| {
                let value = self.joined.get(&member.connection.id())?.get(key)?;
                Some((room.digest.as_str(), &member.connection, value))
            })
        })
    }

    /// Handles an event of the room of `key` (`me`: this node): activates the member whose
    /// `join` it is, applies `change` to the view, and pushes `frame` unless the view says
    /// not to.
    pub fn deliver(
        &mut self,
        key: &ValueKey,
        me: &str,
        header: &Header,
        frame: Option<&Frame>,
        change: Option<V::Change>,
    ) {
        let Some(room) = self.by_key.get_mut(key) else { return };
        if header.node == me {
            match header.kind {
                Kind::Join => {
                    if let Some(member) = room.members.get_mut(&header.connection) {
                        member.event_back();
                    }
                    if room.logging() {
                        room.log(Logged::Joined(header.connection));
                    }
                }
                Kind::Synced if room.logging() => room.log(Logged::Synced(header.connection)),
                _ => {}
            }
        }
        if let Some(change) = change {
            if room.logging() {
                room.log(Logged::Change(change.clone()));
            }
            if let Some(view) = &mut room.view {
                if !view.apply(change) {
                    return;
                }
            }
        }
        if let Some(frame) = frame {
            room.push(me, header, frame);
        }
    }

    /// The rooms whose view is known (to sync after an outage).
    pub fn known(&self) -> Vec<Known> {
        self.by_key
            .iter()
            .filter(|(_, room)| room.view.is_some())
            .map(|(key, room)| Known { key: key.clone(), digest: room.digest.clone(), value: room.value.clone() })
            .collect()
    }

    /// Starts a sync of the room of `key`: the marker its reading script publishes.
    pub fn start_sync(&mut self, key: &ValueKey) -> Option<u64> {
        let room = self.by_key.get_mut(key).filter(|room| room.view.is_some())?;
        room.reads += 1;
        let marker = self.next_marker;
        self.next_marker += 1;
        Some(marker)
    }

    /// The sync of `marker` answered with `state`, Redis's at the marker (`None`: it failed).
    /// Returns what the members were told, what they are to know (the state with the changes
    /// since the marker, which they were told), and those changes; the caller pushes the
    /// difference.
    pub fn end_sync(&mut self, key: &ValueKey, marker: u64, state: Option<V>) -> Option<Synced<'_, V>> {
        let room = self.by_key.get_mut(key)?;
        room.reads = room.reads.saturating_sub(1);
        let Some(mut state) = state else {
            room.trim();
            return None;
        };
        let changes = room.changes_since(|entry| matches!(entry, Logged::Synced(m) if *m == marker));
        for change in changes.iter().cloned() {
            state.apply(change);
        }
        let before = room.view.replace(state);
        room.trim();
        Some(Synced { before: before?, after: room.view.as_ref()?, changes })
    }

    /// Pushes `frame` to the members of the room of `key` that an event of `header` would go
    /// to (`me`: this node).
    pub fn push(&mut self, key: &ValueKey, me: &str, header: &Header, frame: &Frame) {
        if let Some(room) = self.by_key.get_mut(key) {
            room.push(me, header, frame);
        }
    }
}
