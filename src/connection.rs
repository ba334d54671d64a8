//! One WebSocket client as services see it: identity, a bounded outgoing queue, and the signal
//! that closes it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::protocol::{codes, Frame};

/// A process-unique connection number; never reused while the process lives.
pub type ConnectionId = u64;

/// Who a connection is, as proven by its connection token (PROTOCOL.md "Identity").
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    /// The token's `sub`; `None` for anonymous connections.
    pub id: Option<String>,
    /// The token's optional `info` object: public data about the user.
    pub info: Option<Value>,
}

/// A connected client. Services hold `Arc<Connection>` in their maps and push frames with
/// [`Connection::send`], which never blocks.
#[derive(Debug)]
pub struct Connection {
    id: ConnectionId,
    identity: Identity,
    remote_address: SocketAddr,
    /// Frames waiting for the writer task. Unbounded as a channel, but bounded in bytes by
    /// `queued_bytes`/`queue_limit`: an unbounded channel allocates only what is queued, so an
    /// idle connection costs a few hundred bytes, not a preallocated ring.
    outbox: mpsc::UnboundedSender<Frame>,
    /// Bytes sent to `outbox` and not yet written out.
    queued_bytes: AtomicUsize,
    /// The queue bound in bytes. A frame is always admitted into an empty queue, so the bound
    /// admits at least one frame of any size.
    queue_limit: usize,
    /// Cancelled when the connection must close; a child of the server's shutdown token, so a
    /// shutdown closes every connection.
    closing: CancellationToken,
    /// The close code to send, or 0 for "going away" (shutdown).
    close_code: AtomicU16,
    /// Pings sent since the last pong: two unanswered pings mean a dead peer.
    unanswered_pings: AtomicU8,
    metrics: Arc<Metrics>,
}

/// The receiving half of a connection's queue, owned by its writer task.
pub struct Outbox {
    /// Frames to write, in order.
    pub frames: mpsc::UnboundedReceiver<Frame>,
}

impl Connection {
    /// Creates a connection and the receiving end of its queue.
    pub fn new(
        id: ConnectionId,
        identity: Identity,
        remote_address: SocketAddr,
        queue_limit: usize,
        shutdown: &CancellationToken,
        metrics: Arc<Metrics>,
    ) -> (Arc<Connection>, Outbox) {
        let (outbox, frames) = mpsc::unbounded_channel();
        let connection = Connection {
            id,
            identity,
            remote_address,
            outbox,
            queued_bytes: AtomicUsize::new(0),
            queue_limit,
            closing: shutdown.child_token(),
            close_code: AtomicU16::new(0),
            unanswered_pings: AtomicU8::new(0),
            metrics,
        };
        (Arc::new(connection), Outbox { frames })
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

    /// Queues a reply for the writer. Same bound as deliveries.
    pub fn send(&self, frame: Frame) -> bool {
        self.enqueue(frame)
    }

    /// Queues a pushed message (a delivery), counted in the `deliveries` metric.
    pub fn deliver(&self, frame: Frame) -> bool {
        let queued = self.enqueue(frame);
        if queued {
            self.metrics.deliveries.inc();
        }
        queued
    }

    fn enqueue(&self, frame: Frame) -> bool {
        if self.closing.is_cancelled() {
            return false;
        }
        let size = frame.len();
        let before = self.queued_bytes.fetch_add(size, Ordering::AcqRel);
        if before > 0 && before + size > self.queue_limit {
            self.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            log::warn!(
                "connection {} from {} stopped reading ({before} bytes queued): closing it with 1008",
                self.id,
                self.remote_address
            );
            self.metrics.slow_consumers.inc();
            self.close(codes::POLICY_VIOLATION);
            return false;
        }
        if self.outbox.send(frame).is_err() {
            // The writer is gone: the connection is closing and its queue no longer matters.
            self.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Called by the writer for each frame it takes off the queue.
    pub fn frame_written(&self, size: usize) {
        self.queued_bytes.fetch_sub(size, Ordering::AcqRel);
        self.metrics.frames_sent.inc();
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

    /// Records a ping sent; returns how many are now unanswered.
    pub fn ping_sent(&self) -> u8 {
        self.unanswered_pings.fetch_add(1, Ordering::AcqRel).saturating_add(1)
    }

    /// Records a pong (any pong proves the peer is alive).
    pub fn pong_received(&self) {
        self.unanswered_pings.store(0, Ordering::Release);
    }
}
