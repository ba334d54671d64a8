//! The life cycle of subscriptions: authorized and waiting, acquired by one connection, back
//! to waiting after a disconnect, and dropped.
//!
//! ```text
//!  authorizeSubscription ──▶ waiting ──acquireSubscription──▶ acquired ──cancelSubscription──▶ gone
//!      (deadline: subscription_timeout)  ◀──disconnect──────  (deliveries go straight
//!       buffers the deltas it matches      (deadline:          to the connection)
//!                                           resume_timeout)
//!  waiting ──deadline passed, or buffer would exceed resume_buffer──▶ gone
//! ```
//!
//! [`Subscriptions`] is plain data: every method takes the current time, nothing awaits, and
//! the caller keeps it behind a lock (see `service.rs`). Deliveries are queued while that lock
//! is held, which is what keeps every subscription's deltas in publish order, buffered or not.
//!
//! Timeouts are enforced twice. Exactly, when a subscription is touched: acquiring or routing a
//! delta to a waiting subscription whose deadline has passed drops it then, so a timeout takes
//! effect at its nominal time whatever the sweeper does. And eventually, by [`Subscriptions::sweep`],
//! which the service calls periodically so that subscriptions nobody touches again do not stay
//! in memory (and in the router's index) forever. Deadlines are kept ordered, so a sweep costs
//! only the subscriptions that expired.
//!
//! What resume can and cannot promise: deltas published after the server handled the
//! disconnect (and deltas that could not be queued to a connection already closing) are
//! buffered and delivered on the next acquire, in order, none twice. Deltas already queued to
//! the connection when it closed are lost with its queue, as the protocol has no
//! acknowledgements. A connection closed because it stopped reading (code 1008) lost queued
//! deltas for certain, so its subscriptions are dropped instead of resumed: acquiring them
//! answers "No such subscription", which tells the client to fetch its data again.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::delta::{Delta, DeltaShape};
use super::router::{AuthError, FunctionKeys, Router};
use super::token::new_token;
use crate::connection::{Connection, ConnectionId};
use crate::protocol::codes;
use crate::protocol::rpc::push_frame;
use crate::protocol::Frame;

/// The timeouts and bounds of a DataSync service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long an authorized subscription waits to be acquired before it is dropped.
    pub subscription_timeout: Duration,
    /// How long a subscription whose connection closed waits to be acquired again.
    pub resume_timeout: Duration,
    /// The most deltas a waiting subscription buffers; one more drops it.
    pub resume_buffer: usize,
}

impl Default for Limits {
    /// docs/protocol.md's defaults: 120 s, 60 s, 10,000 deltas.
    fn default() -> Self {
        Limits {
            subscription_timeout: Duration::from_secs(120),
            resume_timeout: Duration::from_secs(60),
            resume_buffer: 10_000,
        }
    }
}

/// Why a frontend command on a token fails. The text is docs/protocol.md's reply text: the client
/// cannot tell (and need not know) whether the token is unknown, expired, dropped, or held
/// by another connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionError {
    /// The token names no subscription this connection may acquire or cancel.
    #[error("No such subscription")]
    NoSuchSubscription,
}

/// Every subscription of one DataSync service, with the router that indexes their items.
pub struct Subscriptions {
    /// The frontend service's name, which delivery frames carry.
    frontend_name: String,
    limits: Limits,
    router: Router,
    /// Every live subscription by id (the id the router knows it by).
    live: HashMap<u64, Subscription>,
    /// Subscription id by token.
    by_token: HashMap<String, u64>,
    /// The subscriptions each connection holds, so a disconnect finds them at once.
    by_connection: HashMap<ConnectionId, HashSet<u64>>,
    /// `(deadline, id)` of every waiting subscription, earliest first, for the sweep.
    deadlines: BTreeSet<(Instant, u64)>,
    /// The next subscription id; ids are never reused.
    next_id: u64,
}

struct Subscription {
    token: String,
    holder: Holder,
}

enum Holder {
    /// Not acquired: deltas are buffered until `deadline`.
    Waiting {
        deadline: Instant,
        /// Serialized deliveries, oldest first; frames are shared with other recipients.
        buffer: VecDeque<Frame>,
    },
    /// Acquired: deltas go to the connection's queue.
    Acquired(Arc<Connection>),
}

impl Subscriptions {
    /// No subscriptions yet; deliveries will say `"service": frontend_name`.
    pub fn new(frontend_name: impl Into<String>, router: Router, limits: Limits) -> Self {
        Subscriptions {
            frontend_name: frontend_name.into(),
            limits,
            router,
            live: HashMap::new(),
            by_token: HashMap::new(),
            by_connection: HashMap::new(),
            deadlines: BTreeSet::new(),
            next_id: 0,
        }
    }

    /// The router (for its dealers and models).
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// How many subscriptions exist (waiting or acquired).
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether there are no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// How many subscriptions are waiting to be acquired.
    pub fn waiting(&self) -> usize {
        self.deadlines.len()
    }

    /// `authorizeSubscription`: registers the items (all or nothing) and returns a fresh
    /// token; the subscription waits for `subscription_timeout`.
    ///
    /// # Errors
    ///
    /// The router's [`AuthError`] for the first invalid item.
    pub fn authorize(&mut self, items: &Value, now: Instant) -> Result<String, AuthError> {
        let id = self.next_id;
        self.router.authorize(id, items)?;
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
        self.deadlines.insert((deadline, id));
        self.live.insert(
            id,
            Subscription { token: token.clone(), holder: Holder::Waiting { deadline, buffer: VecDeque::new() } },
        );
        Ok(token)
    }

    /// `acquireSubscription`: `connection` takes a waiting subscription, receiving what it
    /// buffered, in order, before anything published later.
    ///
    /// Any connection presenting a waiting token may take it. A token held by this same
    /// connection, or by another one that is still open, is refused and nothing changes. A
    /// token held by a connection that is already closing is released first (as its
    /// disconnect is about to), so a client that reconnects quickly is not refused.
    ///
    /// # Errors
    ///
    /// [`SubscriptionError::NoSuchSubscription`] for an unknown, expired or dropped token, or
    /// one held as described above.
    pub fn acquire(
        &mut self,
        token: &str,
        connection: &Arc<Connection>,
        now: Instant,
    ) -> Result<(), SubscriptionError> {
        let id = self.id_of(token)?;
        if let Holder::Acquired(holder) = &self.subscription(id).holder {
            if holder.id() == connection.id() || !holder.is_closing() {
                return Err(SubscriptionError::NoSuchSubscription);
            }
            let holder = Arc::clone(holder);
            self.disconnected(&holder, now);
        }
        if connection.is_closing() {
            // Its disconnect is coming (or its queue is gone): leave the subscription waiting.
            return Err(SubscriptionError::NoSuchSubscription);
        }
        // Releasing a holder that stopped reading drops its subscriptions.
        let id = self.id_of(token)?;
        let Some(subscription) = self.live.get_mut(&id) else {
            return Err(SubscriptionError::NoSuchSubscription);
        };
        let Holder::Waiting { deadline, buffer } = &mut subscription.holder else {
            // Held by an open connection: refused above. Kept as an answer, not a panic.
            return Err(SubscriptionError::NoSuchSubscription);
        };
        let deadline = *deadline;
        if deadline <= now {
            self.drop_subscription(id, "its timeout passed");
            return Err(SubscriptionError::NoSuchSubscription);
        }
        let buffered = std::mem::take(buffer);
        subscription.holder = Holder::Acquired(Arc::clone(connection));
        self.deadlines.remove(&(deadline, id));
        self.by_connection.entry(connection.id()).or_default().insert(id);
        let mut buffered = buffered.into_iter();
        while let Some(frame) = buffered.next() {
            if !connection.deliver(frame.clone()) {
                // The connection closed while we were delivering: put the subscription back
                // as its disconnect would, keeping what was not queued.
                let rest = std::iter::once(frame).chain(buffered).collect();
                self.release(id, rest, now);
                break;
            }
        }
        Ok(())
    }

    /// `cancelSubscription`: ends a subscription `connection` holds.
    ///
    /// # Errors
    ///
    /// [`SubscriptionError::NoSuchSubscription`] when the token is unknown or this connection
    /// does not hold it.
    pub fn cancel(&mut self, token: &str, connection: &Arc<Connection>) -> Result<(), SubscriptionError> {
        let id = self.id_of(token)?;
        match &self.subscription(id).holder {
            Holder::Acquired(holder) if holder.id() == connection.id() => {
                self.drop_subscription(id, "it was cancelled");
                Ok(())
            }
            _ => Err(SubscriptionError::NoSuchSubscription),
        }
    }

    /// A connection closed: its subscriptions go back to waiting for `resume_timeout`, or are
    /// dropped if it was closed for not reading (its queued deltas were lost).
    pub fn disconnected(&mut self, connection: &Arc<Connection>, now: Instant) {
        let Some(ids) = self.by_connection.remove(&connection.id()) else {
            return;
        };
        let lost_deltas = connection.close_code() == codes::POLICY_VIOLATION;
        for id in ids {
            if lost_deltas {
                self.drop_subscription(id, "its connection stopped reading and lost deltas");
            } else {
                self.set_waiting(id, now + self.limits.resume_timeout, VecDeque::new());
            }
        }
    }

    /// Routes a batch of valid deltas, in order: each reaches every subscription it concerns
    /// at most once, as the translated shape, queued to the holder or buffered. `keys[i]`
    /// are the precomputed function keys of `deltas[i]` (missing: computed inline). Returns
    /// how many deliveries were queued to connections.
    pub fn publish(&mut self, deltas: &[Delta], keys: &[FunctionKeys], now: Instant) -> usize {
        let none = FunctionKeys::default();
        let mut delivered = 0;
        for (index, delta) in deltas.iter().enumerate() {
            let routed = self.router.route_with(delta, keys.get(index).unwrap_or(&none));
            // Serialized once per shape, shared by every recipient of that shape.
            let mut frames: [Option<Frame>; 3] = [None, None, None];
            for (id, shape) in routed {
                let slot = &mut frames[shape_index(shape)];
                let frame = if let Some(frame) = slot {
                    frame.clone()
                } else {
                    let Some(message) = delta.frame(shape) else {
                        log::error!("router produced shape {shape:?} for {delta:?}");
                        continue;
                    };
                    slot.insert(push_frame(&self.frontend_name, message)).clone()
                };
                if self.deliver(id, frame, now) {
                    delivered += 1;
                }
            }
        }
        delivered
    }

    /// Drops every waiting subscription whose deadline has passed; returns how many.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let mut dropped = 0;
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.drop_subscription(id, "nobody acquired it in time");
            dropped += 1;
        }
        dropped
    }

    /// Queues or buffers one delivery; `true` when it was queued to a connection.
    fn deliver(&mut self, id: u64, frame: Frame, now: Instant) -> bool {
        let bound = self.limits.resume_buffer;
        let Some(subscription) = self.live.get_mut(&id) else {
            log::error!("the router routed to subscription {id}, which does not exist");
            return false;
        };
        match &mut subscription.holder {
            Holder::Acquired(connection) => {
                if connection.deliver(frame.clone()) {
                    return true;
                }
                // The connection is closing and its disconnect has not run yet: buffer the
                // delta now rather than lose it.
                self.release(id, VecDeque::from([frame]), now);
                false
            }
            Holder::Waiting { deadline, .. } if *deadline <= now => {
                self.drop_subscription(id, "its timeout passed");
                false
            }
            Holder::Waiting { buffer, .. } if buffer.len() >= bound => {
                self.drop_subscription(id, "its buffer would exceed resume_buffer");
                false
            }
            Holder::Waiting { buffer, .. } => {
                buffer.push_back(frame);
                false
            }
        }
    }

    /// Takes an acquired subscription from its closing connection, as that connection's
    /// disconnect would, buffering `pending` (deliveries the connection refused).
    fn release(&mut self, id: u64, pending: VecDeque<Frame>, now: Instant) {
        let Some(Holder::Acquired(connection)) = self.live.get(&id).map(|s| &s.holder) else {
            return;
        };
        let connection = Arc::clone(connection);
        self.forget_holder(connection.id(), id);
        if connection.close_code() == codes::POLICY_VIOLATION {
            self.drop_subscription(id, "its connection stopped reading and lost deltas");
            return;
        }
        self.set_waiting(id, now + self.limits.resume_timeout, pending);
    }

    fn set_waiting(&mut self, id: u64, deadline: Instant, buffer: VecDeque<Frame>) {
        if let Some(subscription) = self.live.get_mut(&id) {
            if let Holder::Waiting { deadline: old, .. } = subscription.holder {
                self.deadlines.remove(&(old, id));
            }
            subscription.holder = Holder::Waiting { deadline, buffer };
            self.deadlines.insert((deadline, id));
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
        match subscription.holder {
            Holder::Waiting { deadline, .. } => {
                self.deadlines.remove(&(deadline, id));
            }
            Holder::Acquired(connection) => self.forget_holder(connection.id(), id),
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
    use crate::connection::{Identity, Outbox};
    use crate::datasync::Dealer;
    use crate::metrics::Metrics;
    use serde_json::json;
    use tokio_util::sync::CancellationToken;

    const SECOND: Duration = Duration::from_secs(1);

    fn subscriptions(resume_buffer: usize) -> Subscriptions {
        let router = Router::new(vec![
            Dealer::broadcast("all", "Task"),
            Dealer::simple_field("by_owner", "Task", "owner"),
            Dealer::filter("filtered", "Task"),
        ])
        .expect("distinct names");
        Subscriptions::new(
            "datasync",
            router,
            Limits { subscription_timeout: 10 * SECOND, resume_timeout: 5 * SECOND, resume_buffer },
        )
    }

    fn connection(id: u64) -> (Arc<Connection>, Outbox) {
        Connection::new(
            id,
            Identity::default(),
            "127.0.0.1:1".parse().expect("an address"),
            crate::connection::QueueBounds::default(),
            &CancellationToken::new(),
            Arc::new(Metrics::default()),
        )
    }

    fn insert(n: i64) -> Delta {
        Delta::Insert { model: "Task".into(), data: json!({"n": n, "owner": 1}) }
    }

    /// The `n` of every delta queued to `outbox` so far (asserting each is an insert frame).
    fn received(outbox: &mut Outbox) -> Vec<i64> {
        let mut ns = Vec::new();
        while let Some(frame) = outbox.try_recv() {
            let value: Value = serde_json::from_str(frame.as_str()).expect("JSON");
            assert_eq!(value["service"], "datasync");
            assert_eq!(value["message"]["type"], "delta");
            ns.push(value["message"]["delta"]["data"]["n"].as_i64().expect("n"));
        }
        ns
    }

    fn publish(s: &mut Subscriptions, range: std::ops::Range<i64>, now: Instant) {
        let deltas: Vec<Delta> = range.map(insert).collect();
        s.publish(&deltas, &[], now);
    }

    fn all() -> Value {
        json!([{"dealer": "all", "query": null}])
    }

    #[test]
    fn buffers_until_acquired_then_delivers_in_order() {
        let t0 = Instant::now();
        let mut s = subscriptions(100);
        let token = s.authorize(&all(), t0).expect("valid");
        assert_eq!(token.len(), 32);
        assert_eq!((s.len(), s.waiting()), (1, 1));
        publish(&mut s, 0..3, t0);
        let (c, mut out) = connection(1);
        assert_eq!(s.acquire(&token, &c, t0 + SECOND), Ok(()));
        assert_eq!(received(&mut out), vec![0, 1, 2]);
        assert_eq!(s.waiting(), 0);
        publish(&mut s, 3..5, t0 + SECOND);
        assert_eq!(received(&mut out), vec![3, 4]);
    }

    #[test]
    fn a_token_is_held_by_one_connection() {
        let t0 = Instant::now();
        let mut s = subscriptions(100);
        let token = s.authorize(&all(), t0).expect("valid");
        let (a, mut out_a) = connection(1);
        let (b, mut out_b) = connection(2);
        assert_eq!(s.acquire(&token, &a, t0), Ok(()));
        let refused = Err(SubscriptionError::NoSuchSubscription);
        assert_eq!(s.acquire(&token, &a, t0), refused, "the same connection again");
        assert_eq!(s.acquire(&token, &b, t0), refused, "another connection");
        assert_eq!(s.cancel(&token, &b), refused, "someone else's subscription");
        assert_eq!(s.acquire("nope", &b, t0), refused);
        assert_eq!(s.cancel("nope", &a), refused);
        publish(&mut s, 0..1, t0);
        assert_eq!(received(&mut out_a), vec![0], "nothing changed for the holder");
        assert!(received(&mut out_b).is_empty());
        assert_eq!(s.cancel(&token, &a), Ok(()));
        assert!(s.is_empty() && s.router().subscription_count() == 0);
        assert_eq!(s.acquire(&token, &a, t0), refused, "cancelled");
        assert_eq!(s.cancel(&token, &a), refused);
    }

    #[test]
    fn a_waiting_subscription_cannot_be_cancelled() {
        let t0 = Instant::now();
        let mut s = subscriptions(100);
        let token = s.authorize(&all(), t0).expect("valid");
        let (a, _out) = connection(1);
        assert_eq!(s.cancel(&token, &a), Err(SubscriptionError::NoSuchSubscription));
        assert_eq!(s.acquire(&token, &a, t0), Ok(()));
    }

    #[test]
    fn resume_after_disconnect_gets_what_was_missed_once() {
        let t0 = Instant::now();
        let mut s = subscriptions(100);
        let token = s.authorize(&all(), t0).expect("valid");
        let (a, mut out_a) = connection(1);
        s.acquire(&token, &a, t0).expect("acquired");
        publish(&mut s, 0..2, t0);
        a.close(codes::NORMAL);
        s.disconnected(&a, t0);
        assert_eq!(s.waiting(), 1);
        publish(&mut s, 2..5, t0 + SECOND);
        let (b, mut out_b) = connection(2);
        s.acquire(&token, &b, t0 + 4 * SECOND).expect("resumed");
        assert_eq!(received(&mut out_a), vec![0, 1]);
        assert_eq!(received(&mut out_b), vec![2, 3, 4]);
        publish(&mut s, 5..6, t0 + 4 * SECOND);
        assert_eq!(received(&mut out_b), vec![5]);
    }

    #[test]
    fn a_closing_holder_buffers_and_lets_go() {
        let t0 = Instant::now();
        let mut s = subscriptions(100);
        let token = s.authorize(&all(), t0).expect("valid");
        let (a, _out_a) = connection(1);
        s.acquire(&token, &a, t0).expect("acquired");
        // The connection closed but its disconnect has not run yet.
        a.close(codes::NORMAL);
        publish(&mut s, 0..2, t0);
        assert_eq!(s.waiting(), 1, "the refused delivery put it back to waiting");
        let (b, mut out_b) = connection(2);
        s.acquire(&token, &b, t0).expect("taken over");
        assert_eq!(received(&mut out_b), vec![0, 1]);
        s.disconnected(&a, t0);
        publish(&mut s, 2..3, t0);
        assert_eq!(received(&mut out_b), vec![2], "the late disconnect did not touch it");
        // A closing holder whose deliveries all succeeded is released on acquire too.
        let (c, _out_c) = connection(3);
        b.close(codes::NORMAL);
        s.acquire(&token, &c, t0).expect("taken over from a closing holder");
        // A closing connection cannot acquire.
        let other = s.authorize(&all(), t0).expect("valid");
        assert_eq!(s.acquire(&other, &b, t0), Err(SubscriptionError::NoSuchSubscription));
        assert_eq!(s.waiting(), 1);
    }

    #[test]
    fn a_connection_that_stopped_reading_loses_its_subscriptions() {
        let t0 = Instant::now();
        let mut s = subscriptions(100);
        let token = s.authorize(&all(), t0).expect("valid");
        let (a, _out) = connection(1);
        s.acquire(&token, &a, t0).expect("acquired");
        a.close(codes::POLICY_VIOLATION);
        s.disconnected(&a, t0);
        assert!(s.is_empty());
        let (b, _out_b) = connection(2);
        assert_eq!(s.acquire(&token, &b, t0), Err(SubscriptionError::NoSuchSubscription));
    }

    #[test]
    fn the_buffer_bound_drops_the_subscription() {
        let t0 = Instant::now();
        let mut s = subscriptions(3);
        let token = s.authorize(&all(), t0).expect("valid");
        let kept = s.authorize(&all(), t0).expect("valid");
        publish(&mut s, 0..3, t0);
        let (a, mut out) = connection(1);
        s.acquire(&kept, &a, t0).expect("exactly at the bound");
        assert_eq!(received(&mut out), vec![0, 1, 2]);
        publish(&mut s, 3..4, t0);
        assert_eq!(received(&mut out), vec![3]);
        assert_eq!(s.len(), 1, "the fourth buffered delta dropped the other");
        let (b, _out) = connection(2);
        assert_eq!(s.acquire(&token, &b, t0), Err(SubscriptionError::NoSuchSubscription));
        // The bound applies again after a disconnect.
        a.close(codes::NORMAL);
        s.disconnected(&a, t0);
        publish(&mut s, 4..8, t0);
        assert!(s.is_empty());
        assert_eq!(s.acquire(&kept, &b, t0), Err(SubscriptionError::NoSuchSubscription));
    }

    #[test]
    fn timeouts_take_effect_at_their_nominal_time() {
        let t0 = Instant::now();
        let mut s = subscriptions(100);
        let late = s.authorize(&all(), t0).expect("valid");
        let early = s.authorize(&all(), t0).expect("valid");
        let (a, _out) = connection(1);
        assert_eq!(s.acquire(&early, &a, t0 + 10 * SECOND - Duration::from_millis(1)), Ok(()));
        assert_eq!(
            s.acquire(&late, &a, t0 + 10 * SECOND),
            Err(SubscriptionError::NoSuchSubscription),
            "the authorization timeout"
        );
        a.close(codes::NORMAL);
        let t1 = t0 + 20 * SECOND;
        s.disconnected(&a, t1);
        let (b, _out_b) = connection(2);
        assert_eq!(
            s.acquire(&early, &b, t1 + 5 * SECOND),
            Err(SubscriptionError::NoSuchSubscription),
            "the resume timeout"
        );
        assert!(s.is_empty());
    }

    #[test]
    fn routing_to_an_expired_subscription_drops_it() {
        let t0 = Instant::now();
        let mut s = subscriptions(100);
        s.authorize(&all(), t0).expect("valid");
        publish(&mut s, 0..1, t0 + 10 * SECOND);
        assert!(s.is_empty());
    }

    #[test]
    fn sweep_drops_only_what_expired() {
        let t0 = Instant::now();
        let mut s = subscriptions(100);
        for i in 0..5 {
            s.authorize(&all(), t0 + i * SECOND).expect("valid");
        }
        let held = s.authorize(&all(), t0).expect("valid");
        let (a, _out) = connection(1);
        s.acquire(&held, &a, t0).expect("acquired");
        assert_eq!(s.sweep(t0 + 9 * SECOND), 0);
        assert_eq!(s.sweep(t0 + 11 * SECOND), 2);
        assert_eq!((s.len(), s.waiting()), (4, 3));
        assert_eq!(s.sweep(t0 + 60 * SECOND), 3);
        assert_eq!((s.len(), s.router().subscription_count()), (1, 1));
    }

    #[test]
    fn one_frame_per_shape_shared_and_at_most_once() {
        let t0 = Instant::now();
        let mut subs = subscriptions(100);
        let (a, mut out_a) = connection(1);
        let (b, mut out_b) = connection(2);
        let (c, mut out_c) = connection(3);
        // a sees old and new (update), b only the new (insert), c only the old (delete);
        // a's items overlap, and it still gets one delivery.
        let items = [
            json!([
                {"dealer": "all", "query": null},
                {"dealer": "by_owner", "query": 1},
                {"dealer": "filtered", "query": [">=", "n", 0]},
            ]),
            json!([{"dealer": "filtered", "query": ["==", "n", 2]}]),
            json!([{"dealer": "by_owner", "query": 1}]),
        ];
        for (items, connection) in items.iter().zip([&a, &b, &c]) {
            let token = subs.authorize(items, t0).expect("valid");
            subs.acquire(&token, connection, t0).expect("acquired");
        }
        let update = Delta::Update {
            model: "Task".into(),
            old_data: json!({"n": 1, "owner": 1}),
            new_data: json!({"n": 2, "owner": 2}),
        };
        assert_eq!(subs.publish(&[update.clone(), update], &[], t0), 6);
        let frames = |out: &mut Outbox| {
            let mut frames = Vec::new();
            while let Some(frame) = out.try_recv() {
                frames.push(frame);
            }
            frames
        };
        let (fa, fb, fc) = (frames(&mut out_a), frames(&mut out_b), frames(&mut out_c));
        assert_eq!((fa.len(), fb.len(), fc.len()), (2, 2, 2));
        let kind = |frame: &Frame| {
            let value: Value = serde_json::from_str(frame.as_str()).expect("JSON");
            value["message"]["delta"]["type"].as_str().expect("type").to_owned()
        };
        assert_eq!((kind(&fa[0]), kind(&fb[0]), kind(&fc[0])), ("update".into(), "insert".into(), "delete".into()));
        // Each delta's frames are fresh, and recipients of a shape share the bytes.
        let (fourth, mut out_d) = connection(4);
        let token = subs.authorize(&json!([{"dealer": "all", "query": 7}]), t0).expect("valid");
        subs.acquire(&token, &fourth, t0).expect("acquired");
        let delta = insert(9);
        subs.publish(&[delta], &[], t0);
        let (fa, fd) = (frames(&mut out_a), frames(&mut out_d));
        assert_eq!(fa[0].as_str().as_ptr(), fd[0].as_str().as_ptr(), "one serialization");
    }

    #[test]
    fn a_refused_authorization_registers_nothing() {
        let t0 = Instant::now();
        let mut s = subscriptions(100);
        let bad = json!([{"dealer": "all", "query": null}, {"dealer": "filtered", "query": ["=", "n", 1]}]);
        assert!(s.authorize(&bad, t0).is_err());
        assert!(s.is_empty() && s.router().subscription_count() == 0);
        assert_eq!(s.waiting(), 0);
    }
}
