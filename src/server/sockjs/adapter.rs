//! Every use SockJS makes of [`Connection`] and of the server's connection table, in one place.
//!
//! A SockJS session is a [`Connection`] like a WebSocket one: services see no difference. This
//! module admits one (the table's caps), opens it (id, queue bounds, shutdown signal, metrics),
//! takes frames off its queue for a response and confirms them once handed to the response,
//! and reads its close code. Keeping the calls here means a change to the connection API touches
//! one small file.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::time::Instant;

use crate::connection::{Connection, Outbox};
use crate::connections::Slot;
use crate::protocol::{codes, Frame};
use crate::server::ws::{self, Proven};
use crate::server::App;

use super::http::Refused;
use super::path::Transport;

/// A place in the server's connection table, held for the session's life.
pub type Admission = Slot;

/// Takes a place in the connection table for a new session: 503 when a cap is reached.
pub fn admit(app: &App, remote: SocketAddr) -> Result<Admission, Refused> {
    app.table.admit(remote).map_err(|refusal| {
        log::warn!("refused a SockJS session from {remote}: {refusal}");
        app.metrics.connections_refused.inc();
        Refused::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, format!("Server busy: {refusal}"))
    })
}

/// Opens the connection of a new session and counts it in the connection gauges.
pub fn open(
    app: &App,
    (identity, issued_at): Proven,
    remote: SocketAddr,
    transport: Transport,
    admission: &mut Admission,
) -> (Arc<Connection>, Outbox) {
    let (connection, outbox) = Connection::new(
        ws::next_connection_id(),
        identity,
        remote,
        app.config.queue_bounds(),
        &app.shutdown,
        Arc::clone(&app.metrics),
    );
    admission.register(&connection, issued_at);
    app.metrics.connections.inc();
    app.metrics.connections_opened.inc();
    app.metrics.sockjs_sessions.inc();
    app.metrics.sockjs_sessions_opened.get_or_create(&super::transport_label(transport)).inc();
    log::debug!("sockjs session {} opened from {remote} ({})", connection.id(), transport.name());
    (connection, outbox)
}

/// Uncounts a session that has ended (its services were told already).
pub fn forget(app: &App, connection: &Connection) {
    app.metrics.connections.dec();
    app.metrics.sockjs_sessions.dec();
    log::debug!("sockjs session {} closed", connection.id());
}

/// Waits for the next queued frame; `None` once the queue's sender is gone.
pub async fn next(outbox: &mut Outbox) -> Option<Frame> {
    outbox.recv().await
}

/// `first` and every frame queued behind it: they leave in one response or WebSocket message.
pub fn take_batch(outbox: &mut Outbox, first: Frame) -> Vec<Frame> {
    let mut batch = vec![first];
    while let Some(frame) = outbox.try_recv() {
        batch.push(frame);
    }
    batch
}

/// Confirms the frames taken so far: they were handed to the response or the socket.
pub fn written(outbox: &mut Outbox) {
    outbox.written();
}

/// Every frame still queued, for the last response of a closing session. Empty when the close
/// was for falling behind: that backlog is what must not be sent.
pub fn take_remaining(connection: &Connection, outbox: &mut Outbox) -> Vec<Frame> {
    let mut remaining = Vec::new();
    while let Some(frame) = outbox.try_recv() {
        remaining.push(frame);
    }
    if connection.close_code() == codes::POLICY_VIOLATION {
        remaining.clear();
    }
    remaining
}

/// When the queue, if it stays non-empty, counts as stalled (the client is not reading).
pub fn stall_deadline(connection: &Connection) -> Option<Instant> {
    connection.stall_deadline()
}

/// Whether the queue has stalled; closes the connection with 1008 when so.
pub fn stalled(connection: &Connection) -> bool {
    connection.stalled(Instant::now())
}

/// The close code a closing session reports to its client.
pub fn close_code(connection: &Connection) -> u16 {
    connection.close_code()
}

/// Asks the session's connection to close with `code` (the first code asked for wins).
pub fn close(connection: &Connection, code: u16) {
    connection.close(code);
}

/// Whether the session's connection is closing.
pub fn is_closing(connection: &Connection) -> bool {
    connection.is_closing()
}

/// Resolves when the session's connection must close.
pub async fn closed(connection: &Connection) {
    connection.closed().await;
}

/// Queues a frame of plain text (the protocol test application's echo).
pub fn send_text(connection: &Connection, text: &str) {
    connection.send(Frame::text(text));
}
