//! The life cycle of subscriptions: authorized and waiting, acquired by one connection, back
//! to waiting after a disconnect, and dropped; and how deltas reach each of them.
//!
//! ```text
//!  authorizeSubscription ──▶ waiting ──acquireSubscription──▶ acquired ──cancelSubscription──▶ gone
//!    (deadline: subscription_timeout)  ◀──────────────────── releasing ◀──disconnect──
//!     position: the stream's head        (once the connection's writer is done;
//!                                          deadline: resume_timeout)
//!  waiting ──deadline passed, evicted as the oldest of too many, or its position fell out of
//!            the stream──▶ gone
//! ```
//!
//! Subscriptions hold no deltas. Every published delta goes into the service's stream
//! ([`DeltaStream`]) with an offset, and each subscription keeps a position in it:
//! - A waiting subscription remembers the offset after which it must resume. Acquiring it
//!   replays what the stream has after that, then switches to live delivery.
//! - An acquired subscription is *live*: deltas are routed through the index and offered to
//!   its connection as they are published. When the connection's queue is full the delta is
//!   not dropped and the connection not closed: the subscription falls back to *catching up*
//!   from the stream, a step at a time as the queue drains ([`Subscriptions::catch_up`]), then
//!   goes live again. So a burst larger than the queue reaches a client that reads, at the
//!   speed it reads, and only a client that stops reading is cut (by the stall rule of its
//!   connection).
//! - Frames carry an acknowledgement: the subscription learns which offsets its connection
//!   actually wrote. When the connection closes, the subscription waits for its writer to
//!   finish and resumes after the last delta *written*: deltas queued but never written go
//!   back to the subscription.
//! - What the stream no longer retains is a gap: acquiring answers "No such subscription"
//!   (the client fetches its data again), and a connection whose catch-up meets a gap is
//!   closed with 1008 (it lost deltas and must resync).
//! - A client may opt in to offsets when it acquires ([`Resume`]): its deltas then name the
//!   subscription (its token) and carry their [`Offset`], and it may resume after the offset
//!   it last applied, whatever the server believes was written. Such a resume does not wait for
//!   the previous holder's writer, and what cannot be resumed is reported as
//!   [`SubscriptionError::NotRetained`] (the client resyncs).
//!
//! [`Subscriptions`] is plain data: every method takes the current time, nothing awaits, and
//! the caller keeps it behind a lock (see `service.rs`). Each method's work is bounded (by a
//! batch chunk, a scan budget, or the queue's capacity), so the lock is never held for long.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::time::Instant;

use super::delta::{Delta, DeltaShape};
use super::limits::Limits;
use super::router::{AuthError, FunctionKeys, PreparedItems, Router};
use super::stream::{DeltaStream, Offset, Position};
use super::token::new_token;
use crate::connection::{Ack, Connection, ConnectionId, Offer};
use crate::protocol::codes;
use crate::protocol::rpc::push_frame;
use crate::protocol::Frame;

/// The most stream entries one catch-up step looks at, so that a step holds the lock for a
/// bounded time even when few of the entries concern the subscription.
pub const CATCH_UP_SCAN: usize = 4_096;

/// The most expired subscriptions one sweep drops (the next sweep takes the rest).
pub const SWEEP_BATCH: usize = 10_000;

/// Why a frontend command on a token fails (the service answers with the protocol's texts,
/// "No such subscription" and "Too many subscriptions").
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubscriptionError {
    /// The token names no subscription this connection may acquire or cancel: unknown,
    /// expired, dropped, held by another connection, or bound to another identity. The
    /// client cannot tell which (and need not know).
    #[error("the token names no subscription this connection may take")]
    NoSuchSubscription,
    /// The connection holds `max_per_connection` subscriptions already.
    #[error("the connection holds as many subscriptions as it may")]
    TooMany,
    /// The previous holder is still writing out its queue; retry once it is done.
    #[error("the previous holder is still closing")]
    PreviousHolderClosing(Arc<Connection>),
    /// A client resuming after an offset found the subscription held by another connection
    /// that is still open: most likely its own previous connection, dropped by the network
    /// and not yet noticed. Retry once that connection closes (briefly; if it stays open,
    /// the token is held by another open connection).
    #[error("another open connection holds it")]
    HeldOpen(Arc<Connection>),
    /// An opted-in acquire cannot resume: what followed its offset is no longer retained, or
    /// the offset is not one of this subscription's (before it was authorized, never given,
    /// or of a stream that started over). The subscription is dropped; the client resyncs.
    #[error("the deltas after that offset are no longer retained")]
    NotRetained,
}

impl PartialEq for SubscriptionError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::PreviousHolderClosing(a), Self::PreviousHolderClosing(b))
            | (Self::HeldOpen(a), Self::HeldOpen(b)) => a.id() == b.id(),
            (Self::NoSuchSubscription, Self::NoSuchSubscription)
            | (Self::TooMany, Self::TooMany)
            | (Self::NotRetained, Self::NotRetained) => true,
            _ => false,
        }
    }
}

/// What a catch-up step achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// The subscription is live again (or gone, or no longer this connection's).
    Done,
    /// More remains: call again once the connection's queue has drained.
    More,
}

/// Every subscription of one DataSync service, the router that indexes their items, and the
/// stream of deltas they read from.
pub struct Subscriptions {
    /// The frontend service's name, which delivery frames carry.
    frontend_name: String,
    limits: Limits,
    router: Router,
    stream: DeltaStream,
    /// Every live subscription by id (the id the router knows it by).
    live: HashMap<u64, Subscription>,
    /// Subscription id by token.
    by_token: HashMap<String, u64>,
    /// The subscriptions each connection holds, so a disconnect finds them at once.
    by_connection: HashMap<ConnectionId, HashSet<u64>>,
    /// `(deadline, id)` of every waiting or releasing subscription, earliest first.
    deadlines: BTreeSet<(Instant, u64)>,
    /// Ids of waiting and releasing subscriptions; ids grow with age, so the first is the
    /// oldest (evicted when there are too many).
    waiting: BTreeSet<u64>,
    /// The ids in `waiting` of the subscriptions bound to each identity, oldest first (evicted
    /// when one identity has too many).
    waiting_by_identity: HashMap<String, BTreeSet<u64>>,
    /// The next subscription id; ids are never reused.
    next_id: u64,
    /// With a broker: the stream mirrors the shared one, whose follower alone trims it.
    mirror: bool,
    /// With a broker: subscriptions dropped because they fell behind the stream, which Redis
    /// must forget too (token and lease).
    dropped: Vec<(String, u64)>,
}

struct Subscription {
    token: String,
    /// When set, only a connection with this identity may acquire it.
    identity: Option<String>,
    /// The stream's head when it was authorized: no offset before it is one of its positions.
    start: u64,
    /// The offset of the newest delta the current holder's writer confirmed written. A new
    /// one for each holder, so that a previous holder still writing out its queue cannot
    /// move the position of the next.
    written: Arc<AtomicU64>,
    holder: Holder,
    /// With a broker: the number Redis gave this node's acquisition of it, which its release
    /// or cancellation must name (a later acquisition, here or on another node, has another).
    lease: u64,
}

/// A subscription acquired on another node's authorization, as Redis describes it (see
/// [`Subscriptions::adopt`]).
#[derive(Debug)]
pub struct Adopted {
    /// Its token.
    pub token: String,
    /// Its items, prepared by this node.
    pub items: PreparedItems,
    /// The offset it resumes after.
    pub after: u64,
    /// Whether the client opted in to offsets.
    pub offsets: bool,
    /// The number of this acquisition in Redis.
    pub lease: u64,
}

/// A subscription this node held and no longer does, for Redis ([`Subscriptions::detach`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detached {
    /// Its token.
    pub token: String,
    /// The number of the acquisition that ended.
    pub lease: u64,
    /// The offset of the last delta its connection wrote: where it resumes.
    pub written: u64,
}

enum Holder {
    /// Not held: acquiring it delivers what the stream has after `after`.
    Waiting { deadline: Instant, after: u64 },
    /// Its connection is closing; it waits once the connection's writer is done, so that it
    /// resumes after what was really written.
    Releasing { connection: Arc<Connection>, deadline: Instant },
    /// Held by an open connection.
    Acquired { connection: Arc<Connection>, feed: Feed, offsets: bool },
}

/// How an acquire positions the subscription: the optional parameters of
/// `acquireSubscription`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resume {
    /// The client opted in to offsets: its deltas carry them and name the subscription.
    pub offsets: bool,
    /// Resume after this offset (the last the client applied) instead of after the last
    /// delta the server wrote. Only with `offsets`.
    pub after: Option<Offset>,
}

#[derive(Clone, Copy)]
enum Feed {
    /// Deltas are offered to the connection as they are published.
    Live,
    /// The connection's queue was full at some point: deltas after `after` are read from the
    /// stream as the queue drains.
    CatchingUp { after: u64 },
}

/// What [`Subscriptions::acquire`] and [`Subscriptions::publish`] leave to the caller: the
/// subscriptions of a connection that must catch up from the stream (the caller runs
/// [`Subscriptions::catch_up`] for each as the connection's queue drains).
pub type Lagging = Vec<(u64, Arc<Connection>)>;

impl Subscriptions {
    /// No subscriptions yet; deliveries will say `"service": frontend_name`.
    pub fn new(frontend_name: impl Into<String>, router: Router, limits: Limits) -> Self {
        Subscriptions {
            frontend_name: frontend_name.into(),
            stream: DeltaStream::new(limits.retention),
            limits,
            router,
            live: HashMap::new(),
            by_token: HashMap::new(),
            by_connection: HashMap::new(),
            deadlines: BTreeSet::new(),
            waiting: BTreeSet::new(),
            waiting_by_identity: HashMap::new(),
            next_id: 0,
            mirror: false,
            dropped: Vec::new(),
        }
    }

    /// Makes the stream a mirror of a shared stream (with a broker): sweeps no longer trim it.
    pub fn mirror(&mut self) {
        self.mirror = true;
    }

    /// Whether `connection` holds as many subscriptions as it may.
    pub fn holds_too_many(&self, connection: &Arc<Connection>) -> bool {
        self.by_connection.get(&connection.id()).is_some_and(|ids| ids.len() >= self.limits.max_per_connection)
    }

    /// The connection holding the subscription of `token`, if an open one here does.
    pub fn holder_of(&self, token: &str) -> Option<Arc<Connection>> {
        let id = self.by_token.get(token)?;
        match &self.live.get(id)?.holder {
            Holder::Acquired { connection, .. } => Some(Arc::clone(connection)),
            _ => None,
        }
    }

    /// The tokens and leases of subscriptions `ids`.
    pub fn leases(&self, ids: &[u64]) -> Vec<(String, u64)> {
        ids.iter()
            .filter_map(|id| self.live.get(id))
            .map(|subscription| (subscription.token.clone(), subscription.lease))
            .collect()
    }

    /// With a broker: closes with 1008 every connection holding a subscription here, because
    /// they may have missed deltas that can no longer be read; returns how many. Their
    /// subscriptions go back to Redis as any closed connection's do, and their clients learn on
    /// acquiring again whether they can resume.
    pub fn close_held(&mut self, why: &str) -> usize {
        let holders: HashMap<ConnectionId, Arc<Connection>> = self
            .live
            .values()
            .filter_map(|subscription| match &subscription.holder {
                Holder::Acquired { connection, .. } => Some((connection.id(), Arc::clone(connection))),
                _ => None,
            })
            .collect();
        for connection in holders.values() {
            log::warn!("datasync {:?}: {why}: closing connection {} with 1008", self.frontend_name, connection.id());
            connection.close(codes::POLICY_VIOLATION);
        }
        holders.len()
    }

    /// The subscriptions dropped since the last call because they fell behind the stream
    /// (token and lease), for Redis.
    pub fn take_dropped(&mut self) -> Vec<(String, u64)> {
        std::mem::take(&mut self.dropped)
    }

    /// The router (for its dealers and models).
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The delta stream.
    pub fn stream(&self) -> &DeltaStream {
        &self.stream
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// How many subscriptions exist (waiting, releasing or acquired).
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether there are no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// How many subscriptions are waiting to be acquired (including those whose connection
    /// is still closing).
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// `authorizeSubscription`: registers the prepared items and returns a fresh token; the
    /// subscription waits for `subscription_timeout` and will receive every delta published
    /// from now on. With `identity`, only connections with that identity may acquire it.
    /// When `max_waiting` subscriptions wait already, the oldest is dropped; when
    /// `max_waiting_per_identity` of `identity`'s do, its oldest is.
    ///
    /// # Errors
    ///
    /// [`AuthError::DuplicateSubscription`] (a bug, never caused by a request).
    pub fn authorize(
        &mut self,
        items: PreparedItems,
        identity: Option<String>,
        now: Instant,
    ) -> Result<String, AuthError> {
        let id = self.next_id;
        self.router.insert(id, items)?;
        self.next_id += 1;
        // 165 bits from a CSPRNG do not collide in practice; the loop makes sure of it.
        let token = loop {
            let token = new_token();
            if !self.by_token.contains_key(&token) {
                break token;
            }
        };
        let deadline = now + self.limits.subscription_timeout;
        self.by_token.insert(token.clone(), id);
        let after = self.stream.head();
        self.live.insert(
            id,
            Subscription {
                token: token.clone(),
                identity,
                start: after,
                written: Arc::new(AtomicU64::new(after)),
                holder: Holder::Waiting { deadline, after },
                lease: 0,
            },
        );
        self.mark_waiting(id, deadline);
        Ok(token)
    }

    /// `acquireSubscription`: `connection` takes a waiting subscription. What the stream has
    /// after the subscription's position is delivered first, in order (as much as the
    /// connection's queue takes now; the rest through [`catch_up`](Self::catch_up), which the
    /// caller runs when the returned list is not empty), then deltas flow live. The position
    /// is the one the server kept (after the last delta written), or `resume.after` when the
    /// client gives one. Returns the subscriptions to catch up and the position the
    /// subscription was acquired at (every delta it receives from now on follows it).
    ///
    /// # Errors
    ///
    /// [`SubscriptionError::NoSuchSubscription`] for an unknown, expired or dropped token, one
    /// held by this connection or another open one, one bound to another identity, or one
    /// whose position fell out of the stream (it is dropped then);
    /// [`SubscriptionError::NotRetained`] instead of the last for a client that opted in to
    /// offsets, and when its `after` is not a position of the subscription (dropped too);
    /// [`SubscriptionError::TooMany`] when the connection holds `max_per_connection`;
    /// [`SubscriptionError::PreviousHolderClosing`] when the previous holder's writer is still
    /// finishing and the client gave no offset: wait for that connection's
    /// [`Connection::finished`] and call again; and [`SubscriptionError::HeldOpen`] when the
    /// client gave an offset and another open connection holds the subscription: wait a little
    /// for that connection to close and call again.
    pub fn acquire(
        &mut self,
        token: &str,
        connection: &Arc<Connection>,
        resume: Resume,
        now: Instant,
    ) -> Result<(Lagging, Offset), SubscriptionError> {
        let id = self.id_of(token)?;
        let subscription = self.subscription(id);
        if subscription.identity.as_ref().is_some_and(|bound| connection.identity().id.as_ref() != Some(bound)) {
            return Err(SubscriptionError::NoSuchSubscription);
        }
        if let Holder::Acquired { connection: holder, .. } = &subscription.holder {
            if holder.id() == connection.id() {
                return Err(SubscriptionError::NoSuchSubscription);
            }
            if !holder.is_closing() {
                return Err(if resume.after.is_some() {
                    SubscriptionError::HeldOpen(Arc::clone(holder))
                } else {
                    SubscriptionError::NoSuchSubscription
                });
            }
            // Its disconnect is about to run: do now what it would do.
            let holder = Arc::clone(holder);
            self.release(id, &holder, now);
        }
        self.settle(id);
        match &self.subscription(id).holder {
            Holder::Releasing { connection: previous, deadline } => {
                if resume.after.is_none() {
                    return Err(SubscriptionError::PreviousHolderClosing(Arc::clone(previous)));
                }
                // The client says where it stands: what the old writer still writes does not
                // matter (its acks go to the old holder's position).
                let (deadline, after) = (*deadline, self.subscription(id).written.load(Ordering::Acquire));
                if let Some(subscription) = self.live.get_mut(&id) {
                    subscription.holder = Holder::Waiting { deadline, after };
                }
            }
            Holder::Waiting { deadline, .. } if *deadline <= now => {
                self.drop_subscription(id, "its timeout passed");
                return Err(SubscriptionError::NoSuchSubscription);
            }
            _ => {}
        }
        if connection.is_closing() {
            // Its disconnect is coming (or its queue is gone): leave the subscription waiting.
            return Err(SubscriptionError::NoSuchSubscription);
        }
        if self.by_connection.get(&connection.id()).is_some_and(|ids| ids.len() >= self.limits.max_per_connection) {
            return Err(SubscriptionError::TooMany);
        }
        let subscription = self.subscription(id);
        let Holder::Waiting { deadline, after: kept } = subscription.holder else {
            return Err(SubscriptionError::NoSuchSubscription);
        };
        let after = match resume.after {
            None => kept,
            Some(offset) if offset.epoch == self.stream.epoch() && offset.seq >= subscription.start => offset.seq,
            Some(_) => {
                self.drop_subscription(id, "the client resumed from an offset that is not one of its positions");
                return Err(SubscriptionError::NotRetained);
            }
        };
        if self.stream.position(after) != Position::Retained {
            self.drop_subscription(id, "the deltas it missed are no longer retained");
            return Err(if resume.offsets {
                SubscriptionError::NotRetained
            } else {
                SubscriptionError::NoSuchSubscription
            });
        }
        self.deadlines.remove(&(deadline, id));
        let identity = self.live.get(&id).and_then(|subscription| subscription.identity.clone());
        self.forget_waiting(id, identity.as_deref());
        let lagging = self.hand_over(id, connection, after, resume.offsets);
        Ok((lagging, self.stream.offset(after)))
    }

    /// With a broker: `connection` takes a subscription that Redis says this node now holds
    /// (authorized anywhere, acquired here). It starts after `adopted.after`, which the stream
    /// must retain, as [`acquire`](Self::acquire) does. A subscription of the same token that
    /// this node still has (its previous connection here is closing) is replaced, unless Redis
    /// granted it later (a newer lease).
    ///
    /// # Errors
    ///
    /// [`SubscriptionError::NoSuchSubscription`] when the connection is closing or a newer
    /// acquisition of the token is here,
    /// [`SubscriptionError::TooMany`] when it holds `max_per_connection`,
    /// [`SubscriptionError::NotRetained`] when the stream no longer has what followed `after`;
    /// the caller gives the subscription back to Redis then.
    pub fn adopt(
        &mut self,
        adopted: Adopted,
        connection: &Arc<Connection>,
        now: Instant,
    ) -> Result<Lagging, SubscriptionError> {
        if connection.is_closing() {
            return Err(SubscriptionError::NoSuchSubscription);
        }
        if self.by_connection.get(&connection.id()).is_some_and(|ids| ids.len() >= self.limits.max_per_connection) {
            return Err(SubscriptionError::TooMany);
        }
        if self.stream.position(adopted.after) != Position::Retained {
            return Err(SubscriptionError::NotRetained);
        }
        if let Some(previous) = self.by_token.get(&adopted.token).copied() {
            // Two acquisitions of one token here can finish in either order: the one Redis
            // granted last (the newer lease) keeps it.
            if self.live.get(&previous).is_some_and(|subscription| subscription.lease > adopted.lease) {
                return Err(SubscriptionError::NoSuchSubscription);
            }
            // An open connection still holding it (its client acquired the token twice at once)
            // is told, with 1008, that its deltas stop, rather than left waiting for them.
            if let Some(Subscription { holder: Holder::Acquired { connection: holder, .. }, .. }) =
                self.live.get(&previous)
            {
                if holder.id() != connection.id() && !holder.is_closing() {
                    log::warn!(
                        "datasync {:?}: a subscription connection {} held was acquired again by connection {}: closing \
                         the first with 1008",
                        self.frontend_name,
                        holder.id(),
                        connection.id()
                    );
                    holder.close(codes::POLICY_VIOLATION);
                }
            }
            self.drop_subscription(previous, "it was acquired again");
        }
        let id = self.next_id;
        self.router.insert(id, adopted.items).map_err(|err| {
            log::error!("datasync {:?}: {err}", self.frontend_name);
            SubscriptionError::NoSuchSubscription
        })?;
        self.next_id += 1;
        self.by_token.insert(adopted.token.clone(), id);
        // Nothing before the position is one of its positions on this node: offsets were
        // checked by Redis.
        let written = Arc::new(AtomicU64::new(adopted.after));
        let holder = Holder::Waiting { deadline: now, after: adopted.after };
        let subscription = Subscription {
            token: adopted.token,
            identity: None,
            start: adopted.after,
            written,
            holder,
            lease: adopted.lease,
        };
        self.live.insert(id, subscription);
        Ok(self.hand_over(id, connection, adopted.after, adopted.offsets))
    }

    /// Gives subscription `id` (no longer waiting) to `connection`, positioned after `after`:
    /// what the stream has after it goes first, as much as the queue takes now (the rest is
    /// left to [`catch_up`](Self::catch_up) for the returned subscriptions), then deltas flow
    /// live.
    fn hand_over(&mut self, id: u64, connection: &Arc<Connection>, after: u64, offsets: bool) -> Lagging {
        self.by_connection.entry(connection.id()).or_default().insert(id);
        let feed = if after < self.stream.head() { Feed::CatchingUp { after } } else { Feed::Live };
        if let Some(subscription) = self.live.get_mut(&id) {
            subscription.written = Arc::new(AtomicU64::new(after));
            subscription.holder = Holder::Acquired { connection: Arc::clone(connection), feed, offsets };
        }
        if matches!(feed, Feed::Live) {
            return Vec::new();
        }
        // The backlog that fits now goes before the reply, as a buffer would have.
        match self.catch_up(id, connection) {
            CatchUp::Done => Vec::new(),
            CatchUp::More => vec![(id, Arc::clone(connection))],
        }
    }

    /// `cancelSubscription`: ends a subscription `connection` holds; returns its lease (see
    /// [`adopt`](Self::adopt); 0 without a broker).
    ///
    /// # Errors
    ///
    /// [`SubscriptionError::NoSuchSubscription`] when the token is unknown or this connection
    /// does not hold it.
    pub fn cancel(&mut self, token: &str, connection: &Arc<Connection>) -> Result<u64, SubscriptionError> {
        let id = self.id_of(token)?;
        let subscription = self.subscription(id);
        match &subscription.holder {
            Holder::Acquired { connection: holder, .. } if holder.id() == connection.id() => {
                let lease = subscription.lease;
                self.drop_subscription(id, "it was cancelled");
                Ok(lease)
            }
            _ => Err(SubscriptionError::NoSuchSubscription),
        }
    }

    /// A connection closed: its subscriptions go back to waiting for `resume_timeout`,
    /// positioned after the last delta its writer wrote (known once the writer is done).
    /// Returns their ids.
    pub fn disconnected(&mut self, connection: &Arc<Connection>, now: Instant) -> Vec<u64> {
        let Some(ids) = self.by_connection.get(&connection.id()).cloned() else {
            return Vec::new();
        };
        for &id in &ids {
            self.release(id, connection, now);
        }
        ids.into_iter().collect()
    }

    /// With a broker: removes the subscriptions `ids` whose connection `connection` closed and
    /// finished writing, and says where each resumes, for Redis. Subscriptions that were
    /// acquired again meanwhile are left alone.
    pub fn detach(&mut self, ids: &[u64], connection: &Arc<Connection>) -> Vec<Detached> {
        let mut detached = Vec::new();
        for &id in ids {
            self.settle(id);
            let Some(subscription) = self.live.get(&id) else { continue };
            if matches!(&subscription.holder, Holder::Waiting { .. }) {
                detached.push(Detached {
                    token: subscription.token.clone(),
                    lease: subscription.lease,
                    written: subscription.written.load(Ordering::Acquire),
                });
                self.drop_subscription(id, "its connection closed; Redis keeps it");
            } else if matches!(&subscription.holder, Holder::Releasing { connection: holder, .. } if holder.id() == connection.id())
            {
                log::warn!(
                    "datasync {:?}: connection {} closed and is still writing",
                    self.frontend_name,
                    connection.id()
                );
            }
        }
        detached
    }

    /// With a broker: the token, lease and holder of every subscription held by an open
    /// connection.
    pub fn held(&self) -> Vec<(String, u64, Arc<Connection>)> {
        self.live
            .values()
            .filter_map(|subscription| match &subscription.holder {
                Holder::Acquired { connection, .. } => {
                    Some((subscription.token.clone(), subscription.lease, Arc::clone(connection)))
                }
                _ => None,
            })
            .collect()
    }

    /// Drops the subscriptions `leases` (token and lease) and closes their connections with
    /// 1008: deltas they should have received are lost (the shared stream lost them, or another
    /// node took them over), and the clients must resync. A token acquired here again since (a
    /// newer lease) is left alone. Returns how many were held.
    pub fn lose(&mut self, leases: &[(String, u64)], why: &str) -> usize {
        let mut lost = 0;
        for (token, lease) in leases {
            let Some(id) = self.by_token.get(token).copied() else { continue };
            if self.live.get(&id).is_some_and(|subscription| subscription.lease != *lease) {
                continue;
            }
            if let Some(Subscription { holder: Holder::Acquired { connection, .. }, .. }) = self.live.get(&id) {
                log::warn!(
                    "datasync {:?}: {why}: closing connection {} with 1008",
                    self.frontend_name,
                    connection.id()
                );
                connection.close(codes::POLICY_VIOLATION);
                lost += 1;
            }
            self.drop_subscription(id, why);
        }
        lost
    }

    /// The deltas of a shared stream, mirrored: the stream, to start it over, fill it and read
    /// where it stands (see [`DeltaStream::restart`] and [`DeltaStream::prepend`]).
    pub fn stream_mut(&mut self) -> &mut DeltaStream {
        &mut self.stream
    }

    /// How many subscriptions open connections hold.
    pub fn acquired(&self) -> usize {
        self.by_connection.values().map(HashSet::len).sum()
    }

    /// Routes a chunk of valid deltas, in order: each is appended to the stream and offered
    /// to every live subscription it concerns (at most once each, as the translated shape).
    /// `keys[i]` are the precomputed function keys of `deltas[i]` (missing: computed inline).
    /// Returns how many deliveries were queued, and the subscriptions that fell behind (their
    /// connection's queue was full) and must catch up.
    pub fn publish(
        &mut self,
        deltas: impl IntoIterator<Item = (Delta, FunctionKeys)>,
        now: Instant,
    ) -> (usize, Lagging) {
        let mut delivered = 0;
        let mut lagging = Vec::new();
        let mut expired = Vec::new();
        for (delta, keys) in deltas {
            let routed = self.router.route_with(&delta, &keys);
            let offset = self.stream.head() + 1;
            let mut frames = DeltaFrames::new(&self.frontend_name, &delta, self.stream.offset(offset));
            for (id, shape) in routed {
                let Some(subscription) = self.live.get_mut(&id) else {
                    log::error!("the router routed to subscription {id}, which does not exist");
                    continue;
                };
                match &mut subscription.holder {
                    Holder::Acquired { connection, feed: feed @ Feed::Live, offsets } => {
                        let token = offsets.then_some(subscription.token.as_str());
                        let Some(frame) = frames.frame(shape, token) else { continue };
                        let ack = Ack { position: Arc::clone(&subscription.written), offset };
                        match connection.offer(frame, Some(ack)) {
                            Offer::Queued => delivered += 1,
                            Offer::Full => {
                                *feed = Feed::CatchingUp { after: offset - 1 };
                                lagging.push((id, Arc::clone(connection)));
                            }
                            // Closing: its disconnect releases the subscription, which then
                            // resumes from what was written, this delta included.
                            Offer::Closed => {}
                        }
                    }
                    Holder::Waiting { deadline, .. } if *deadline <= now => expired.push(id),
                    // Waiting, releasing or catching up: the stream keeps the delta for it.
                    _ => {}
                }
            }
            self.stream.append(delta, keys, now);
        }
        for id in expired {
            self.drop_subscription(id, "its timeout passed");
        }
        (delivered, lagging)
    }

    /// One step of catching up for subscription `id` held by `connection`: offers what the
    /// stream has after the subscription's position until the queue is full, the stream's
    /// head is reached (the subscription goes live), or [`CATCH_UP_SCAN`] entries were looked
    /// at. A position that fell out of the stream drops the subscription and closes the
    /// connection with 1008: deltas were lost and the client must resync.
    pub fn catch_up(&mut self, id: u64, connection: &Arc<Connection>) -> CatchUp {
        let Some(subscription) = self.live.get(&id) else { return CatchUp::Done };
        let Holder::Acquired { connection: holder, feed: Feed::CatchingUp { mut after }, offsets } =
            &subscription.holder
        else {
            return CatchUp::Done;
        };
        let token = offsets.then_some(subscription.token.as_str());
        if holder.id() != connection.id() {
            return CatchUp::Done;
        }
        if self.stream.position(after) == Position::Gap {
            log::warn!(
                "datasync {:?}: connection {} fell further behind than the stream retains: closing it with 1008",
                self.frontend_name,
                connection.id()
            );
            connection.close(codes::POLICY_VIOLATION);
            if self.mirror {
                self.dropped.push((subscription.token.clone(), subscription.lease));
            }
            self.drop_subscription(id, "it fell behind what the stream retains");
            return CatchUp::Done;
        }
        let mut outcome = CatchUp::Done;
        for (scanned, entry) in self.stream.after(after).enumerate() {
            if scanned == CATCH_UP_SCAN {
                outcome = CatchUp::More;
                break;
            }
            if let Some(shape) = self.router.shape_for(id, &entry.delta, &entry.keys) {
                let mut frames = DeltaFrames::new(&self.frontend_name, &entry.delta, self.stream.offset(entry.offset));
                let Some(frame) = frames.frame(shape, token) else { continue };
                let ack = Ack { position: Arc::clone(&subscription.written), offset: entry.offset };
                match connection.offer(frame, Some(ack)) {
                    Offer::Queued => {}
                    Offer::Full => {
                        outcome = CatchUp::More;
                        break;
                    }
                    Offer::Closed => return CatchUp::Done,
                }
            }
            after = entry.offset;
        }
        let feed = match outcome {
            CatchUp::Done => Feed::Live,
            CatchUp::More => Feed::CatchingUp { after },
        };
        if let Some(Subscription { holder: Holder::Acquired { feed: current, .. }, .. }) = self.live.get_mut(&id) {
            *current = feed;
        }
        outcome
    }

    /// Drops the waiting subscriptions whose deadline has passed (at most [`SWEEP_BATCH`]),
    /// and trims the stream; returns how many were dropped.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let mut dropped = 0;
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now || dropped == SWEEP_BATCH {
                break;
            }
            self.drop_subscription(id, "nobody acquired it in time");
            dropped += 1;
        }
        if !self.mirror {
            self.stream.trim(now);
        }
        dropped
    }

    /// Moves an acquired subscription whose connection is closing to releasing.
    fn release(&mut self, id: u64, connection: &Arc<Connection>, now: Instant) {
        self.forget_holder(connection.id(), id);
        let deadline = now + self.limits.resume_timeout;
        if let Some(subscription) = self.live.get_mut(&id) {
            if matches!(&subscription.holder, Holder::Acquired { connection: holder, .. } if holder.id() == connection.id())
            {
                subscription.holder = Holder::Releasing { connection: Arc::clone(connection), deadline };
                self.mark_waiting(id, deadline);
            }
        }
    }

    /// A releasing subscription whose connection's writer is done becomes waiting, after the
    /// last delta written.
    fn settle(&mut self, id: u64) {
        let Some(subscription) = self.live.get_mut(&id) else { return };
        if let Holder::Releasing { connection, deadline } = &subscription.holder {
            if connection.is_finished() {
                let after = subscription.written.load(Ordering::Acquire);
                subscription.holder = Holder::Waiting { deadline: *deadline, after };
            }
        }
    }

    /// Records a waiting (or releasing) subscription's deadline, evicting the oldest waiting
    /// ones beyond `max_waiting_per_identity` of its identity's, then beyond `max_waiting`.
    fn mark_waiting(&mut self, id: u64, deadline: Instant) {
        self.deadlines.insert((deadline, id));
        self.waiting.insert(id);
        if let Some(identity) = self.live.get(&id).and_then(|subscription| subscription.identity.clone()) {
            self.waiting_by_identity.entry(identity.clone()).or_default().insert(id);
            let max = self.limits.max_waiting_per_identity;
            while let Some(oldest) = self
                .waiting_by_identity
                .get(&identity)
                .filter(|ids| ids.len() > max)
                .and_then(|ids| ids.first().copied())
            {
                self.drop_subscription(oldest, "its identity had too many waiting (max_waiting_per_identity)");
            }
        }
        while self.waiting.len() > self.limits.max_waiting {
            let Some(&oldest) = self.waiting.first() else { break };
            self.drop_subscription(oldest, "too many subscriptions were waiting (max_waiting)");
        }
    }

    /// Takes subscription `id` (bound to `identity`) off the waiting lists.
    fn forget_waiting(&mut self, id: u64, identity: Option<&str>) {
        self.waiting.remove(&id);
        if let Some(identity) = identity {
            if let Some(ids) = self.waiting_by_identity.get_mut(identity) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.waiting_by_identity.remove(identity);
                }
            }
        }
    }

    fn forget_holder(&mut self, connection: ConnectionId, id: u64) {
        if let Some(ids) = self.by_connection.get_mut(&connection) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_connection.remove(&connection);
            }
        }
    }

    /// Removes a subscription from every map and from the router.
    fn drop_subscription(&mut self, id: u64, why: &str) {
        let Some(subscription) = self.live.remove(&id) else {
            return;
        };
        self.by_token.remove(&subscription.token);
        self.router.remove_subscription(id);
        self.forget_waiting(id, subscription.identity.as_deref());
        match subscription.holder {
            Holder::Waiting { deadline, .. } | Holder::Releasing { deadline, .. } => {
                self.deadlines.remove(&(deadline, id));
            }
            Holder::Acquired { connection, .. } => self.forget_holder(connection.id(), id),
        }
        log::debug!("datasync {:?}: subscription {id} dropped: {why}", self.frontend_name);
    }

    fn id_of(&self, token: &str) -> Result<u64, SubscriptionError> {
        self.by_token.get(token).copied().ok_or(SubscriptionError::NoSuchSubscription)
    }

    fn subscription(&self, id: u64) -> &Subscription {
        self.live.get(&id).expect("by_token lists only live subscriptions")
    }
}

/// The frames pushed for one delta, serialized once per shape and shared by every recipient
/// of that shape. Subscriptions that opted in to offsets get frames of their own, which add
/// the subscription's token and the delta's offset to the shared text (a copy, not another
/// serialization).
struct DeltaFrames<'a> {
    service: &'a str,
    delta: &'a Delta,
    /// The delta's offset, as the wire writes it.
    offset: String,
    shared: [Option<Frame>; 3],
}

impl<'a> DeltaFrames<'a> {
    fn new(service: &'a str, delta: &'a Delta, offset: Offset) -> Self {
        DeltaFrames { service, delta, offset: offset.to_string(), shared: [None, None, None] }
    }

    /// The frame of `shape`: 0.1's `{"type": "delta", "delta"}`, or with `token`, the opted-in
    /// `{"type": "delta", "delta", "subscription": token, "offset"}`.
    fn frame(&mut self, shape: DeltaShape, token: Option<&str>) -> Option<Frame> {
        let slot = &mut self.shared[shape_index(shape)];
        let shared = if let Some(frame) = slot {
            frame
        } else {
            let Some(message) = self.delta.frame(shape) else {
                log::error!("router produced shape {shape:?} for {:?}", self.delta);
                return None;
            };
            slot.insert(push_frame(self.service, message))
        };
        let Some(token) = token else { return Some(shared.clone()) };
        // `{"service":...,"message":{"type":"delta","delta":...}}` ends with the two braces
        // that close the message and the envelope: the fields go before them. Tokens and
        // offsets are made of letters, digits and `-`, which JSON strings take as they are.
        let text = shared.as_str();
        let head = text.strip_suffix("}}")?;
        let mut opted = String::with_capacity(text.len() + token.len() + self.offset.len() + 32);
        opted.push_str(head);
        opted.push_str(",\"subscription\":\"");
        opted.push_str(token);
        opted.push_str("\",\"offset\":\"");
        opted.push_str(&self.offset);
        opted.push_str("\"}}");
        Some(Frame::from_text(opted))
    }
}

fn shape_index(shape: DeltaShape) -> usize {
    match shape {
        DeltaShape::Insert => 0,
        DeltaShape::Update => 1,
        DeltaShape::Delete => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::{Identity, Outbox, QueueBounds};
    use crate::datasync::{Dealer, Retention};
    use crate::metrics::Metrics;
    use serde_json::{json, Value};
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    const SECOND: Duration = Duration::from_secs(1);

    fn subscriptions(limits: Limits) -> Subscriptions {
        let router = Router::new(vec![
            Dealer::broadcast("all", "Task"),
            Dealer::simple_field("by_owner", "Task", "owner"),
            Dealer::filter("filtered", "Task"),
        ])
        .expect("distinct names");
        Subscriptions::new("datasync", router, limits)
    }

    fn limits() -> Limits {
        Limits { subscription_timeout: 10 * SECOND, resume_timeout: 5 * SECOND, ..Limits::default() }
    }

    fn connection_with(id: u64, identity: Option<&str>, queue: usize) -> (Arc<Connection>, Outbox) {
        Connection::new(
            id,
            Identity { id: identity.map(str::to_owned), info: None },
            "127.0.0.1:1".parse().expect("an address"),
            QueueBounds { limit: queue, ..QueueBounds::default() },
            &CancellationToken::new(),
            Arc::new(Metrics::default()),
        )
    }

    fn connection(id: u64) -> (Arc<Connection>, Outbox) {
        connection_with(id, None, 1 << 20)
    }

    fn authorize(s: &mut Subscriptions, items: &Value, identity: Option<&str>, now: Instant) -> String {
        let prepared = s.router().authorizer().prepare(items).expect("valid items");
        s.authorize(prepared, identity.map(str::to_owned), now).expect("authorized")
    }

    fn all(s: &mut Subscriptions, now: Instant) -> String {
        authorize(s, &json!([{"dealer": "all", "query": null}]), None, now)
    }

    fn insert(n: i64) -> Delta {
        Delta::Insert { model: "Task".into(), data: json!({"n": n, "owner": 1}) }
    }

    /// The `n` of every delta taken from `outbox` (asserting each is an insert frame); the
    /// frames count as written.
    fn received(outbox: &mut Outbox) -> Vec<i64> {
        let mut ns = Vec::new();
        while let Some(frame) = outbox.try_recv() {
            let value: Value = serde_json::from_str(frame.as_str()).expect("JSON");
            assert_eq!(value["service"], "datasync");
            assert_eq!(value["message"]["type"], "delta");
            ns.push(value["message"]["delta"]["data"]["n"].as_i64().expect("n"));
        }
        outbox.written();
        ns
    }

    fn publish(s: &mut Subscriptions, range: std::ops::RangeInclusive<i64>, now: Instant) -> Lagging {
        s.publish(range.map(|n| (insert(n), FunctionKeys::default())), now).1
    }

    /// Finishes a connection's writer (drops its queue) so its subscriptions can settle.
    fn finish(connection: &Arc<Connection>, outbox: Outbox, s: &mut Subscriptions, now: Instant) {
        connection.close(codes::NORMAL);
        s.disconnected(connection, now);
        drop(outbox);
    }

    /// Adopts `token` for `connection` as granted by Redis under `lease` (a node on a broker).
    fn adopt(
        s: &mut Subscriptions,
        token: &str,
        lease: u64,
        connection: &Arc<Connection>,
    ) -> Result<(), SubscriptionError> {
        let items = s.router().authorizer().prepare(&json!([{"dealer": "all", "query": null}])).expect("valid items");
        let adopted = Adopted { token: token.into(), items, after: 0, offsets: true, lease };
        s.adopt(adopted, connection, Instant::now()).map(|_| ())
    }

    #[test]
    fn the_newer_lease_keeps_a_token_adopted_twice_and_only_its_loss_closes_it_or_a_newer_adoption() {
        let mut s = subscriptions(limits());
        let (older, _older_out) = connection(1);
        let (newer, _newer_out) = connection(2);
        // Two acquisitions of one token here, finishing in the other order than Redis granted.
        adopt(&mut s, "t", 3, &newer).expect("adopted");
        assert_eq!(adopt(&mut s, "t", 2, &older), Err(SubscriptionError::NoSuchSubscription));
        assert_eq!(s.holder_of("t").map(|holder| holder.id()), Some(2));
        // A loss reported for the older lease (a reassertion listed before) leaves it alone.
        assert_eq!(s.lose(&[("t".into(), 2)], "lost"), 0);
        assert!(!newer.is_closing());
        // A newer adoption by another connection takes it, and the open holder is told (1008).
        let (newest, _newest_out) = connection(3);
        adopt(&mut s, "t", 4, &newest).expect("adopted");
        assert!(newer.is_closing());
        assert_eq!(s.holder_of("t").map(|holder| holder.id()), Some(3));
        assert_eq!(s.lose(&[("t".into(), 4)], "lost"), 1);
        assert!(newest.is_closing());
        assert!(s.holder_of("t").is_none());
    }

    #[test]
    fn deltas_published_before_acquiring_are_replayed_then_flow_live() {
        let now = Instant::now();
        let mut s = subscriptions(limits());
        let token = all(&mut s, now);
        publish(&mut s, 1..=3, now);
        let (conn, mut out) = connection(1);
        assert!(s.acquire(&token, &conn, Resume::default(), now).expect("acquired").0.is_empty());
        assert_eq!(received(&mut out), vec![1, 2, 3]);
        publish(&mut s, 4..=5, now);
        assert_eq!(received(&mut out), vec![4, 5]);
    }

    #[test]
    fn resume_starts_after_the_last_delta_written_not_queued() {
        let now = Instant::now();
        let mut s = subscriptions(limits());
        let token = all(&mut s, now);
        let (conn, mut out) = connection(1);
        s.acquire(&token, &conn, Resume::default(), now).expect("acquired");
        publish(&mut s, 1..=2, now);
        assert_eq!(received(&mut out), vec![1, 2], "written");
        publish(&mut s, 3..=4, now);
        // 3 and 4 were queued but the connection died before writing them.
        finish(&conn, out, &mut s, now);
        publish(&mut s, 5..=5, now);
        let (again, mut out) = connection(2);
        s.acquire(&token, &again, Resume::default(), now + SECOND).expect("resumed");
        assert_eq!(received(&mut out), vec![3, 4, 5], "nothing lost, nothing twice");
    }

    #[test]
    fn a_resume_waits_for_the_previous_writer() {
        let now = Instant::now();
        let mut s = subscriptions(limits());
        let token = all(&mut s, now);
        let (conn, out) = connection(1);
        s.acquire(&token, &conn, Resume::default(), now).expect("acquired");
        conn.close(codes::NORMAL);
        s.disconnected(&conn, now);
        let (again, _out2) = connection(2);
        let err = s.acquire(&token, &again, Resume::default(), now).expect_err("the old writer is still running");
        assert!(matches!(err, SubscriptionError::PreviousHolderClosing(ref c) if c.id() == 1));
        drop(out);
        assert!(s.acquire(&token, &again, Resume::default(), now).is_ok());
    }

    #[test]
    fn a_full_queue_makes_the_subscription_catch_up_instead_of_closing() {
        let now = Instant::now();
        let mut s = subscriptions(limits());
        let token = all(&mut s, now);
        // Room for about three frames.
        let (conn, mut out) = connection_with(1, None, 250);
        s.acquire(&token, &conn, Resume::default(), now).expect("acquired");
        let lagging = publish(&mut s, 1..=20, now);
        assert_eq!(lagging.len(), 1, "it fell behind");
        assert!(!conn.is_closing(), "and stays connected");
        let mut got = received(&mut out);
        while s.catch_up(lagging[0].0, &conn) == CatchUp::More {
            got.extend(received(&mut out));
        }
        got.extend(received(&mut out));
        publish(&mut s, 21..=21, now);
        got.extend(received(&mut out));
        assert_eq!(got, (1..=21).collect::<Vec<_>>(), "everything, in order, live again at the end");
    }

    #[test]
    fn falling_out_of_the_stream_is_reported() {
        let now = Instant::now();
        let small = Limits { retention: Retention { deltas: 5, ..Retention::default() }, ..limits() };
        let mut s = subscriptions(small);
        let token = all(&mut s, now);
        publish(&mut s, 1..=6, now);
        let (conn, _out) = connection(1);
        assert_eq!(s.acquire(&token, &conn, Resume::default(), now).err(), Some(SubscriptionError::NoSuchSubscription));
        assert!(s.is_empty(), "dropped: the client must fetch its data again");

        // A subscription catching up meets the gap: its connection is closed with 1008.
        let token = all(&mut s, now);
        let (conn, _out) = connection_with(2, None, 120);
        s.acquire(&token, &conn, Resume::default(), now).expect("acquired");
        let lagging = publish(&mut s, 7..=20, now);
        assert_eq!(s.catch_up(lagging[0].0, &conn), CatchUp::Done);
        assert_eq!(conn.close_code(), codes::POLICY_VIOLATION);
        assert!(s.is_empty());
    }

    #[test]
    fn identity_bound_tokens_are_acquired_only_by_that_identity() {
        let now = Instant::now();
        let mut s = subscriptions(limits());
        let token = authorize(&mut s, &json!([{"dealer": "all", "query": null}]), Some("alice"), now);
        for (id, who) in [(1, None), (2, Some("mallory"))] {
            let (conn, _out) = connection_with(id, who, 1 << 20);
            assert_eq!(
                s.acquire(&token, &conn, Resume::default(), now).err(),
                Some(SubscriptionError::NoSuchSubscription)
            );
        }
        let (alice, _out) = connection_with(3, Some("alice"), 1 << 20);
        assert!(s.acquire(&token, &alice, Resume::default(), now).is_ok());
    }

    #[test]
    fn waiting_subscriptions_are_capped_oldest_first() {
        let now = Instant::now();
        let mut s = subscriptions(Limits { max_waiting: 3, ..limits() });
        let tokens: Vec<String> = (0..5).map(|_| all(&mut s, now)).collect();
        assert_eq!(s.waiting(), 3);
        let (conn, _out) = connection(1);
        for token in &tokens[..2] {
            assert_eq!(
                s.acquire(token, &conn, Resume::default(), now).err(),
                Some(SubscriptionError::NoSuchSubscription)
            );
        }
        assert!(s.acquire(&tokens[2], &conn, Resume::default(), now).is_ok());
    }

    #[test]
    fn one_identity_cannot_crowd_the_others_out_of_the_waiting_subscriptions() {
        let now = Instant::now();
        let mut s = subscriptions(Limits { max_waiting: 6, max_waiting_per_identity: 2, ..limits() });
        let items = json!([{"dealer": "all", "query": null}]);
        let bob = authorize(&mut s, &items, Some("bob"), now);
        let anonymous: Vec<String> = (0..2).map(|_| authorize(&mut s, &items, None, now)).collect();
        let alice: Vec<String> = (0..4).map(|_| authorize(&mut s, &items, Some("alice"), now)).collect();
        assert_eq!(s.waiting(), 5, "bob's, the two anonymous ones and alice's last two");
        let (alice_connection, _alice_out) = connection_with(1, Some("alice"), 100);
        for token in &alice[..2] {
            assert_eq!(
                s.acquire(token, &alice_connection, Resume::default(), now).err(),
                Some(SubscriptionError::NoSuchSubscription),
                "alice's oldest went first"
            );
        }
        assert!(s.acquire(&alice[3], &alice_connection, Resume::default(), now).is_ok());
        // Acquired, it no longer counts: alice may wait for two again, bob's is still there.
        authorize(&mut s, &items, Some("alice"), now);
        assert!(s.acquire(&alice[2], &alice_connection, Resume::default(), now).is_ok());
        let (bob_connection, _bob_out) = connection_with(2, Some("bob"), 100);
        assert!(s.acquire(&bob, &bob_connection, Resume::default(), now).is_ok());
        let (anonymous_connection, _anonymous_out) = connection(3);
        for token in &anonymous {
            assert!(s.acquire(token, &anonymous_connection, Resume::default(), now).is_ok());
        }
        assert_eq!(s.waiting(), 1);
        assert!(s.waiting_by_identity.values().all(|ids| ids.len() == 1));
    }

    #[test]
    fn a_connection_holds_a_bounded_number_of_subscriptions() {
        let now = Instant::now();
        let mut s = subscriptions(Limits { max_per_connection: 2, ..limits() });
        let (conn, _out) = connection(1);
        for _ in 0..2 {
            let token = all(&mut s, now);
            s.acquire(&token, &conn, Resume::default(), now).expect("within the bound");
        }
        let token = all(&mut s, now);
        assert_eq!(s.acquire(&token, &conn, Resume::default(), now).err(), Some(SubscriptionError::TooMany));
        let (other, _out) = connection(2);
        assert!(
            s.acquire(&token, &other, Resume::default(), now).is_ok(),
            "the token is still good for another connection"
        );
    }

    #[test]
    fn timeouts_are_exact_and_sweeps_reclaim() {
        let now = Instant::now();
        let mut s = subscriptions(limits());
        let token = all(&mut s, now);
        let (conn, _out) = connection(1);
        assert_eq!(
            s.acquire(&token, &conn, Resume::default(), now + 10 * SECOND).err(),
            Some(SubscriptionError::NoSuchSubscription),
            "at the deadline"
        );
        all(&mut s, now);
        assert_eq!(s.sweep(now + 9 * SECOND), 0);
        assert_eq!(s.sweep(now + 10 * SECOND), 1);
        assert!(s.is_empty());
    }

    #[test]
    fn a_token_is_held_by_one_connection() {
        let now = Instant::now();
        let mut s = subscriptions(limits());
        let token = all(&mut s, now);
        let (a, _oa) = connection(1);
        let (b, _ob) = connection(2);
        s.acquire(&token, &a, Resume::default(), now).expect("acquired");
        assert_eq!(s.acquire(&token, &a, Resume::default(), now).err(), Some(SubscriptionError::NoSuchSubscription));
        assert_eq!(s.acquire(&token, &b, Resume::default(), now).err(), Some(SubscriptionError::NoSuchSubscription));
        assert_eq!(s.cancel(&token, &b), Err(SubscriptionError::NoSuchSubscription));
        assert_eq!(s.cancel(&token, &a), Ok(0), "no lease without a broker");
        assert!(s.is_empty());
    }

    fn opted(after: Option<u64>) -> Resume {
        Resume { offsets: true, after: after.map(|seq| Offset { epoch: 0, seq }) }
    }

    /// The `(n, subscription, offset)` of every opted-in delta taken from `outbox` (written).
    fn received_opted(outbox: &mut Outbox) -> Vec<(i64, String, String)> {
        let mut got = Vec::new();
        while let Some(frame) = outbox.try_recv() {
            let value: Value = serde_json::from_str(frame.as_str()).expect("JSON");
            let message = &value["message"];
            assert_eq!(
                message.as_object().map(serde_json::Map::len),
                Some(4),
                "type, delta, subscription, offset: {message}"
            );
            got.push((
                message["delta"]["data"]["n"].as_i64().expect("n"),
                message["subscription"].as_str().expect("a subscription").to_owned(),
                message["offset"].as_str().expect("an offset").to_owned(),
            ));
        }
        outbox.written();
        got
    }

    #[test]
    fn opted_in_deltas_name_their_subscription_and_offset_and_others_see_0_1_frames() {
        let now = Instant::now();
        let mut s = subscriptions(limits());
        let (old, new) = (all(&mut s, now), all(&mut s, now));
        let (old_conn, mut old_out) = connection(1);
        let (new_conn, mut new_out) = connection(2);
        s.acquire(&old, &old_conn, Resume::default(), now).expect("acquired");
        let (_, position) = s.acquire(&new, &new_conn, opted(None), now).expect("acquired");
        assert_eq!(position.to_string(), "0");
        publish(&mut s, 1..=2, now);
        let legacy: Vec<String> = std::iter::from_fn(|| old_out.try_recv()).map(|f| f.as_str().to_owned()).collect();
        assert_eq!(
            legacy,
            vec![
                r#"{"service":"datasync","message":{"type":"delta","delta":{"type":"insert","model":"Task","data":{"n":1,"owner":1}}}}"#,
                r#"{"service":"datasync","message":{"type":"delta","delta":{"type":"insert","model":"Task","data":{"n":2,"owner":1}}}}"#,
            ],
            "exactly 0.1's frames"
        );
        assert_eq!(received_opted(&mut new_out), vec![(1, new.clone(), "1".into()), (2, new.clone(), "2".into())]);
    }

    #[test]
    fn a_resume_after_an_offset_delivers_exactly_what_followed_it() {
        let now = Instant::now();
        let mut s = subscriptions(limits());
        let token = all(&mut s, now);
        let (conn, mut out) = connection(1);
        s.acquire(&token, &conn, opted(None), now).expect("acquired");
        publish(&mut s, 1..=5, now);
        // All five were written, but the network lost 4 and 5 (a silent drop): the server's
        // position is ahead of the client's.
        assert_eq!(received_opted(&mut out).len(), 5);
        finish(&conn, out, &mut s, now);
        publish(&mut s, 6..=6, now);
        let (again, mut out) = connection(2);
        let (_, position) = s.acquire(&token, &again, opted(Some(3)), now).expect("resumed");
        assert_eq!(position.to_string(), "3");
        let got: Vec<i64> = received_opted(&mut out).into_iter().map(|(n, _, _)| n).collect();
        assert_eq!(got, vec![4, 5, 6]);
    }

    #[test]
    fn a_resume_after_an_offset_does_not_wait_for_the_previous_writer() {
        let now = Instant::now();
        let mut s = subscriptions(limits());
        let token = all(&mut s, now);
        let (conn, mut out) = connection(1);
        s.acquire(&token, &conn, opted(None), now).expect("acquired");
        publish(&mut s, 1..=3, now);
        // The old connection is closing and its writer still holds 2 and 3, which the
        // client will never see; it applied 1.
        let first = out.try_recv().expect("1");
        out.written();
        drop(first);
        conn.close(codes::NORMAL);
        s.disconnected(&conn, now);
        let (again, mut out2) = connection(2);
        s.acquire(&token, &again, opted(Some(1)), now).expect("no wait with an offset");
        // The old writer writing out its queue does not move the new holder's position.
        while out.try_recv().is_some() {}
        out.written();
        drop(out);
        let got: Vec<i64> = received_opted(&mut out2).into_iter().map(|(n, _, _)| n).collect();
        assert_eq!(got, vec![2, 3]);
        finish(&again, out2, &mut s, now);
        let (third, mut out3) = connection(3);
        s.acquire(&token, &third, Resume::default(), now).expect("resumed after what the second wrote");
        assert!(received_opted(&mut out3).is_empty(), "the second holder wrote 2 and 3");
    }

    #[test]
    fn offsets_that_cannot_be_resumed_are_reported_and_drop_the_subscription() {
        let now = Instant::now();
        let small = Limits { retention: Retention { deltas: 3, ..Retention::default() }, ..limits() };
        let mut s = subscriptions(small);
        publish(&mut s, 1..=2, now);
        let cases = [
            (Offset { epoch: 0, seq: 1 }, "before the subscription was authorized"),
            (Offset { epoch: 0, seq: 99 }, "never given"),
            (Offset { epoch: 7, seq: 2 }, "of another stream"),
        ];
        for (after, why) in cases {
            let token = all(&mut s, now);
            let (conn, _out) = connection(1);
            let resume = Resume { offsets: true, after: Some(after) };
            assert_eq!(s.acquire(&token, &conn, resume, now).err(), Some(SubscriptionError::NotRetained), "{why}");
            assert_eq!(
                s.acquire(&token, &conn, Resume::default(), now).err(),
                Some(SubscriptionError::NoSuchSubscription)
            );
        }
        let token = all(&mut s, now);
        publish(&mut s, 3..=6, now);
        let (conn, _out) = connection(1);
        assert_eq!(
            s.acquire(&token, &conn, opted(Some(2)), now).err(),
            Some(SubscriptionError::NotRetained),
            "trimmed"
        );
        let token = all(&mut s, now);
        publish(&mut s, 7..=10, now);
        assert_eq!(s.acquire(&token, &conn, opted(None), now).err(), Some(SubscriptionError::NotRetained));
        assert!(s.is_empty());
    }

    #[test]
    fn each_subscription_gets_its_own_translation_once() {
        let now = Instant::now();
        let mut s = subscriptions(limits());
        let token = authorize(
            &mut s,
            &json!([
                {"dealer": "filtered", "query": ["==", "status", "open"]},
                {"dealer": "by_owner", "query": 1},
            ]),
            None,
            now,
        );
        let update = Delta::Update {
            model: "Task".into(),
            old_data: json!({"status": "open", "owner": 2}),
            new_data: json!({"status": "done", "owner": 2}),
        };
        s.publish([(update, FunctionKeys::default())], now);
        let (conn, mut out) = connection(1);
        s.acquire(&token, &conn, Resume::default(), now).expect("acquired");
        let frame = out.try_recv().expect("one frame");
        let value: Value = serde_json::from_str(frame.as_str()).expect("JSON");
        assert_eq!(value["message"]["delta"]["type"], "delete", "it left the view");
        assert!(out.try_recv().is_none());
    }
}
