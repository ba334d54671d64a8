//! One client as services see it: identity, a bounded outgoing queue, and the signal that
//! closes it. The transport (WebSocket today) owns the receiving end of the queue, an
//! [`Outbox`], and writes what it takes from it.
//!
//! The queue is bounded in bytes, and what happens at the bound depends on the sender:
//! - [`Connection::deliver`] and [`Connection::send`] (PubSub, Chat, replies, ...) close a
//!   connection whose queue would exceed the bound with 1008: such messages exist nowhere else,
//!   so a client that cannot take them must be told it lost some.
//! - [`Connection::offer`] (DataSync deltas) refuses the frame instead and leaves the connection
//!   open: deltas are kept in their model's stream, so the subscription stops pushing, waits for
//!   the queue to drain ([`Connection::wait_drained`]) and catches up from the stream. A burst
//!   larger than the bound therefore reaches a client that reads, at the speed it reads.
//!
//! A client that stops reading altogether is found by the *stall* rule: a queue that has not
//! been empty for `stall_timeout` closes the connection with 1008, whatever the client sends
//! meanwhile (see [`Connection::stalled`]).
//!
//! Frames may carry an [`Ack`]: a position the transport confirms once the frame is written to
//! the socket ([`Outbox::written`]). DataSync uses it to know which deltas actually left, so a
//! subscription whose connection dies resumes after the last delta written, not after the last
//! one queued.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::protocol::{codes, Frame};

/// A process-unique connection number; never reused while the process lives.
pub type ConnectionId = u64;

/// Who a connection is, as proven by its connection token (docs/protocol.md "Identity").
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    /// The token's `sub`; `None` for anonymous connections.
    pub id: Option<String>,
    /// The token's optional `info` object: public data about the user.
    pub info: Option<Value>,
}

/// The bounds of one connection's outgoing queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueBounds {
    /// The most bytes queued at once. A frame is always admitted into an empty queue, so the
    /// bound admits at least one frame of any size.
    pub limit: usize,
    /// How long the queue may stay non-empty before the client counts as not reading.
    pub stall_timeout: Duration,
}

impl Default for QueueBounds {
    fn default() -> Self {
        QueueBounds { limit: 16 * 1024 * 1024, stall_timeout: Duration::from_secs(30) }
    }
}

/// A position to confirm once a frame has been written: the transport stores `offset` into
/// `position` ([`Outbox::written`]). Positions only move forward.
#[derive(Debug, Clone)]
pub struct Ack {
    /// Where the confirmed offset goes.
    pub position: Arc<AtomicU64>,
    /// The offset the frame carries.
    pub offset: u64,
}

impl Ack {
    fn confirm(&self) {
        self.position.fetch_max(self.offset, Ordering::AcqRel);
    }
}

/// What [`Connection::offer`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued for the writer.
    Queued,
    /// Refused: the queue is at its bound. The connection stays open.
    Full,
    /// Refused: the connection is closing.
    Closed,
}

/// A frame in the queue, with the position to confirm once it is written.
#[derive(Debug)]
struct Queued {
    frame: Frame,
    ack: Option<Ack>,
}

/// A connected client. Services hold `Arc<Connection>` in their maps and push frames with
/// [`Connection::send`], [`Connection::deliver`] or [`Connection::offer`], which never block.
#[derive(Debug)]
pub struct Connection {
    id: ConnectionId,
    identity: Identity,
    remote_address: SocketAddr,
    /// Frames waiting for the writer. Unbounded as a channel, but bounded in bytes by
    /// `queued_bytes`/`bounds`: an unbounded channel allocates only what is queued, so an idle
    /// connection costs a few hundred bytes, not a preallocated ring.
    outbox: mpsc::UnboundedSender<Queued>,
    /// Bytes sent to `outbox` and not yet written: queued, or taken by the writer and not yet
    /// confirmed with [`Outbox::written`]. Counting the frames being written keeps "nothing is
    /// queued" meaning "nothing can still be written before a new frame", which lets a reply
    /// skip the queue (see `server::ws`).
    queued_bytes: AtomicUsize,
    bounds: QueueBounds,
    /// When the connection was created: the origin of the millisecond clocks below.
    created: Instant,
    /// Milliseconds since `created` at which the queue last went from empty to non-empty.
    busy_since_ms: AtomicU64,
    /// Woken whenever the writer has written the last queued frame.
    drained: Notify,
    /// Cancelled when the connection must close; a child of the server's shutdown token, so a
    /// shutdown closes every connection.
    closing: CancellationToken,
    /// The close code to send, or 0 for "going away" (shutdown).
    close_code: AtomicU16,
    /// Cancelled when the writer drops the queue: from then on nothing more is written, so
    /// every [`Ack`] that will ever be confirmed has been.
    finished: CancellationToken,
    /// Pings sent since the last matching pong: two unanswered pings mean a dead peer.
    unanswered_pings: AtomicU8,
    /// The random number carried by the last ping sent; only a pong echoing it counts as an
    /// answer. Random, so that a client that does not read cannot guess it.
    last_ping: AtomicU64,
    metrics: Arc<Metrics>,
}

/// The receiving half of a connection's queue, owned by its writer.
#[derive(Debug)]
pub struct Outbox {
    connection: Arc<Connection>,
    frames: mpsc::UnboundedReceiver<Queued>,
    /// Acks of the frames handed out since the last [`Outbox::written`].
    unconfirmed: Vec<Ack>,
    /// Bytes of the frames handed out since the last [`Outbox::written`].
    in_flight: usize,
}

impl Connection {
    /// Creates a connection and the receiving end of its queue.
    pub fn new(
        id: ConnectionId,
        identity: Identity,
        remote_address: SocketAddr,
        bounds: QueueBounds,
        shutdown: &CancellationToken,
        metrics: Arc<Metrics>,
    ) -> (Arc<Connection>, Outbox) {
        let (outbox, frames) = mpsc::unbounded_channel();
        let connection = Arc::new(Connection {
            id,
            identity,
            remote_address,
            outbox,
            queued_bytes: AtomicUsize::new(0),
            bounds,
            created: Instant::now(),
            busy_since_ms: AtomicU64::new(0),
            drained: Notify::new(),
            closing: shutdown.child_token(),
            close_code: AtomicU16::new(0),
            finished: CancellationToken::new(),
            unanswered_pings: AtomicU8::new(0),
            last_ping: AtomicU64::new(0),
            metrics,
        });
        let outbox = Outbox { connection: Arc::clone(&connection), frames, unconfirmed: Vec::new(), in_flight: 0 };
        (connection, outbox)
    }

    /// The connection's process-unique id.
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// The proven identity (anonymous when `identity().id` is `None`).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.remote_address
    }

    /// The queue's bounds.
    pub fn bounds(&self) -> QueueBounds {
        self.bounds
    }

    /// Queues a reply for the writer. Same bound as deliveries.
    pub fn send(&self, frame: Frame) -> bool {
        self.enqueue_or_close(frame)
    }

    /// Queues a pushed message (a delivery), counted in the `deliveries` metric. A full queue
    /// closes the connection with 1008.
    pub fn deliver(&self, frame: Frame) -> bool {
        let queued = self.enqueue_or_close(frame);
        if queued {
            self.metrics.deliveries.inc();
        }
        queued
    }

    /// Queues a pushed message that its sender can send again later (a delta kept in its
    /// stream): a full queue refuses it and the connection stays open. `ack` is confirmed once
    /// the frame is written.
    pub fn offer(&self, frame: Frame, ack: Option<Ack>) -> Offer {
        if self.closing.is_cancelled() {
            return Offer::Closed;
        }
        let size = frame.len();
        let before = self.queued_bytes.fetch_add(size, Ordering::AcqRel);
        if before > 0 && before + size > self.bounds.limit {
            self.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            return Offer::Full;
        }
        if self.push(Queued { frame, ack }, size, before) {
            self.metrics.deliveries.inc();
            Offer::Queued
        } else {
            Offer::Closed
        }
    }

    fn enqueue_or_close(&self, frame: Frame) -> bool {
        if self.closing.is_cancelled() {
            return false;
        }
        let size = frame.len();
        let before = self.queued_bytes.fetch_add(size, Ordering::AcqRel);
        if before > 0 && before + size > self.bounds.limit {
            self.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            self.slow_consumer(before);
            return false;
        }
        self.push(Queued { frame, ack: None }, size, before)
    }

    /// Sends an admitted frame (its bytes already counted) to the writer.
    fn push(&self, queued: Queued, size: usize, before: usize) -> bool {
        if before == 0 {
            self.busy_since_ms.store(self.millis(Instant::now()), Ordering::Release);
        }
        if self.outbox.send(queued).is_err() {
            // The writer is gone: the connection is closing and its queue no longer matters.
            self.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn slow_consumer(&self, queued: usize) {
        log::warn!(
            "connection {} from {} stopped reading ({queued} bytes queued): closing it with 1008",
            self.id,
            self.remote_address
        );
        self.metrics.slow_consumers.inc();
        self.close(codes::POLICY_VIOLATION);
    }

    /// Bytes queued or being written.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Acquire)
    }

    /// Resolves once the writer has written every queued frame (at once if none is queued), or
    /// when the connection closes.
    pub async fn wait_drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.queued_bytes() == 0 || self.is_closing() {
                return;
            }
            tokio::select! {
                () = &mut notified => {}
                () = self.closed() => return,
            }
        }
    }

    /// Whether the queue has stayed non-empty for longer than the stall timeout at `now`: the
    /// client is not reading. Closes the connection with 1008 when so.
    pub fn stalled(&self, now: Instant) -> bool {
        if self.queued_bytes() == 0 {
            return false;
        }
        let busy_for = self.millis(now).saturating_sub(self.busy_since_ms.load(Ordering::Acquire));
        if u128::from(busy_for) <= self.bounds.stall_timeout.as_millis() {
            return false;
        }
        log::warn!("connection {} from {}: its queue has not drained for {busy_for} ms", self.id, self.remote_address);
        self.slow_consumer(self.queued_bytes());
        true
    }

    /// When the queue, if it stays non-empty, will count as stalled; `None` while it is empty.
    pub fn stall_deadline(&self) -> Option<Instant> {
        if self.queued_bytes() == 0 {
            return None;
        }
        let busy_since = Duration::from_millis(self.busy_since_ms.load(Ordering::Acquire));
        Some(self.created + busy_since + self.bounds.stall_timeout + Duration::from_millis(1))
    }

    fn millis(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.created).as_millis()).unwrap_or(u64::MAX)
    }

    /// Asks the connection to close with `code`. The first code wins.
    pub fn close(&self, code: u16) {
        let _ = self.close_code.compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.closing.cancel();
    }

    /// The code to close with: the one asked for, or "going away" when the server shuts down.
    pub fn close_code(&self) -> u16 {
        match self.close_code.load(Ordering::Acquire) {
            0 => codes::GOING_AWAY,
            code => code,
        }
    }

    /// Whether the connection is closing.
    pub fn is_closing(&self) -> bool {
        self.closing.is_cancelled()
    }

    /// Resolves when the connection must close.
    pub async fn closed(&self) {
        self.closing.cancelled().await;
    }

    /// Whether the writer is done with the queue (see [`Connection::finished`]).
    pub fn is_finished(&self) -> bool {
        self.finished.is_cancelled()
    }

    /// Resolves once the writer has dropped the queue: what was written is final.
    pub async fn finished(&self) {
        self.finished.cancelled().await;
    }

    /// Records a ping about to be sent; returns its payload, or `None` (after asking the
    /// connection to close) when two pings already went unanswered.
    pub fn next_ping(&self) -> Option<[u8; 8]> {
        if self.unanswered_pings.fetch_add(1, Ordering::AcqRel) >= 2 {
            log::info!("connection {} answered no ping twice: dropping it", self.id);
            self.close(codes::GOING_AWAY);
            return None;
        }
        let number: u64 = rand::random();
        self.last_ping.store(number, Ordering::Release);
        Some(number.to_be_bytes())
    }

    /// Records a pong. Only one echoing the last ping's payload answers it: a client cannot
    /// keep itself alive with unsolicited pongs.
    pub fn pong_received(&self, payload: &[u8]) {
        let expected = self.last_ping.load(Ordering::Acquire).to_be_bytes();
        if payload == expected {
            self.unanswered_pings.store(0, Ordering::Release);
        }
    }
}

impl Outbox {
    /// The connection this queue belongs to.
    pub fn connection(&self) -> &Arc<Connection> {
        &self.connection
    }

    /// Waits for the next frame; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<Frame> {
        let queued = self.frames.recv().await?;
        Some(self.take(queued))
    }

    /// The next frame if one is queued.
    pub fn try_recv(&mut self) -> Option<Frame> {
        let queued = self.frames.try_recv().ok()?;
        Some(self.take(queued))
    }

    fn take(&mut self, queued: Queued) -> Frame {
        self.in_flight += queued.frame.len();
        self.connection.metrics.frames_sent.inc();
        if let Some(ack) = queued.ack {
            self.unconfirmed.push(ack);
        }
        queued.frame
    }

    /// Confirms that every frame handed out so far reached the socket: their bytes leave the
    /// queue's count, and their acks are confirmed.
    pub fn written(&mut self) {
        let bytes = std::mem::take(&mut self.in_flight);
        if bytes > 0 {
            let before = self.connection.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            if before == bytes {
                self.connection.drained.notify_waiters();
            }
        }
        for ack in self.unconfirmed.drain(..) {
            ack.confirm();
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.connection.finished.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(limit: usize) -> (Arc<Connection>, Outbox) {
        Connection::new(
            1,
            Identity::default(),
            "127.0.0.1:1".parse().expect("an address"),
            QueueBounds { limit, stall_timeout: Duration::from_secs(1) },
            &CancellationToken::new(),
            Arc::new(Metrics::default()),
        )
    }

    fn frame(text: &str) -> Frame {
        Frame::from_serialize(text)
    }

    #[test]
    fn deliver_closes_a_full_queue_but_offer_only_refuses() {
        let (conn, _outbox) = connection(20);
        assert_eq!(conn.offer(frame("0123456789"), None), Offer::Queued);
        assert_eq!(conn.offer(frame("0123456789"), None), Offer::Full);
        assert!(!conn.is_closing());
        assert!(!conn.deliver(frame("0123456789")));
        assert!(conn.is_closing());
        assert_eq!(conn.close_code(), codes::POLICY_VIOLATION);
        assert_eq!(conn.offer(frame("x"), None), Offer::Closed);
    }

    #[test]
    fn acks_are_confirmed_only_when_written() {
        let (conn, mut outbox) = connection(1000);
        let position = Arc::new(AtomicU64::new(0));
        let ack = |offset| Some(Ack { position: Arc::clone(&position), offset });
        conn.offer(frame("a"), ack(1));
        conn.offer(frame("b"), ack(2));
        assert!(outbox.try_recv().is_some());
        assert_eq!(position.load(Ordering::Acquire), 0, "taken, not yet written");
        outbox.written();
        assert_eq!(position.load(Ordering::Acquire), 1);
        assert!(outbox.try_recv().is_some());
        outbox.written();
        assert_eq!(position.load(Ordering::Acquire), 2);
        assert_eq!(conn.queued_bytes(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_queue_that_does_not_drain_stalls() {
        let (conn, mut outbox) = connection(1000);
        assert!(!conn.stalled(Instant::now()), "an empty queue never stalls");
        conn.send(frame("a"));
        tokio::time::advance(Duration::from_millis(900)).await;
        assert!(!conn.stalled(Instant::now()));
        conn.send(frame("b"));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(conn.stalled(Instant::now()), "non-empty for 1.1 s although frames kept coming");
        assert_eq!(conn.close_code(), codes::POLICY_VIOLATION);
        drop(outbox.try_recv());
    }

    #[tokio::test(start_paused = true)]
    async fn draining_resets_the_stall_clock_and_wakes_waiters() {
        let (conn, mut outbox) = connection(1000);
        conn.send(frame("a"));
        let waiter = {
            let conn = Arc::clone(&conn);
            tokio::spawn(async move { conn.wait_drained().await })
        };
        tokio::time::advance(Duration::from_millis(900)).await;
        assert!(outbox.try_recv().is_some());
        assert!(conn.queued_bytes() > 0, "a frame being written still counts until it is written");
        outbox.written();
        assert_eq!(conn.queued_bytes(), 0);
        tokio::time::timeout(Duration::from_secs(1), waiter).await.expect("woken").expect("no panic");
        conn.send(frame("b"));
        tokio::time::advance(Duration::from_millis(900)).await;
        assert!(!conn.stalled(Instant::now()), "the clock restarted when the queue emptied");
    }

    #[test]
    fn only_a_pong_echoing_the_last_ping_answers_it() {
        let (conn, _outbox) = connection(1000);
        let first = conn.next_ping().expect("first ping");
        conn.pong_received(b"unsolicited");
        let _second = conn.next_ping().expect("second ping");
        conn.pong_received(&first);
        assert!(conn.next_ping().is_none(), "two pings unanswered: a stale or unsolicited pong does not count");
        assert!(conn.is_closing());

        let (conn, _outbox) = connection(1000);
        for _ in 0..5 {
            let ping = conn.next_ping().expect("answered pings keep it alive");
            conn.pong_received(&ping);
        }
    }
}
