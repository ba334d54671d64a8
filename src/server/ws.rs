//! The WebSocket endpoint: the handshake checks, then one reader and one writer per connection.
//!
//! The reader (the upgrade task) parses frames and runs requests one at a time, in order. The
//! writer drains the connection's queue into the socket, batching whatever is queued into one
//! flush, and sends pings. Either side can ask the other to stop through the connection's close
//! signal; the writer always gets to send the close frame (bounded by `close_timeout`).
//!
//! A reply skips the queue when nothing is queued or being written before it and the socket
//! takes it at once: the reader writes it itself. A round trip then wakes no other task, which
//! is most of its cost on a lightly loaded connection (each wake-up of the writer can wake a
//! second runtime thread). The socket's sending half is shared behind a mutex for that; the
//! writer holds it across a batch, so a reply can never overtake frames queued before it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::{Mutex, Notify};
use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior};

use crate::connection::{Connection, Identity, Outbox};
use crate::protocol::{codes, Frame};
use crate::tokens;

use super::{dispatch, origin, App, ServerConfig};
use crate::connections::Slot;

/// Connection ids are process-wide, not per server: one service object may be registered in two
/// servers of one process (tests, embedding), and its maps are keyed by id.
static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// Initial read buffer per connection. Tungstenite's default (128 KiB) would dominate the memory
/// of idle connections; the buffer grows on demand for larger frames.
const READ_BUFFER: usize = 512;
/// Bytes the writer buffers before writing to the socket when it batches frames.
const WRITE_BUFFER: usize = 16 * 1024;
/// Room in a socket's send buffer beyond its largest frame, for control frames (a pong, the
/// close).
const CONTROL_ROOM: usize = 64 * 1024;
/// How often a blocked write re-checks the stall rule while the queue is empty (the writer holds
/// the frames it is writing; new ones restart the stall clock).
const STALL_RECHECK: Duration = Duration::from_secs(1);

/// The sending half of a connection's socket, shared by its writer and its reader.
#[derive(Debug)]
struct SharedSink {
    sink: Mutex<SplitSink<WebSocket, Message>>,
    /// Told when the reader left a reply in the sink's buffers that the socket did not take at
    /// once: the writer flushes it (and watches the stall and ping rules meanwhile).
    flush_needed: Notify,
}

/// `GET /ws`: checks the origin and the connection token, then upgrades.
pub async fn upgrade(
    State(app): State<Arc<App>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    upgrade: WebSocketUpgrade,
) -> Response {
    let origin = headers.get(header::ORIGIN).and_then(|value| value.to_str().ok());
    if !origin::origin_allowed(&app.config.allowed_origins, origin) {
        log::warn!(
            "refused a WebSocket from origin {:?} ({remote}): not in allowed_origins; add it there \
             (Django: SNORKY[\"ALLOWED_ORIGINS\"]; python -m snorky serve: --allowed-origin)",
            origin.unwrap_or_default()
        );
        return (StatusCode::FORBIDDEN, "Origin not allowed").into_response();
    }
    let (identity, issued_at) = match query_identity(&app, query.as_deref()) {
        Ok(identity) => identity,
        Err(text) => {
            log::info!("refused a WebSocket from {remote}: {text}");
            return (StatusCode::UNAUTHORIZED, text).into_response();
        }
    };
    let slot = match app.table.admit(remote) {
        Ok(slot) => slot,
        Err(refusal) => {
            log::warn!("refused a WebSocket from {remote}: {refusal}");
            app.metrics.connections_refused.inc();
            return (StatusCode::SERVICE_UNAVAILABLE, format!("Server busy: {refusal}")).into_response();
        }
    };
    with_limits(upgrade, &app.config).on_upgrade(move |socket| serve(app, socket, remote, identity, issued_at, slot))
}

/// The buffers and bounds of every WebSocket, on `/ws` and on SockJS's websocket transports.
pub(crate) fn with_limits(upgrade: WebSocketUpgrade, config: &ServerConfig) -> WebSocketUpgrade {
    let max = config.max_frame_size;
    // The send buffer's bound. Without one (tungstenite's default), a pong answering each ping
    // joins the buffer even while the socket takes nothing, so a client that sends pings and never
    // reads could grow it without end. Bounded, a pong that does not fit replaces the one waiting.
    // It leaves room for the largest frame a connection is sent (a queue's worth, or a backend
    // body), or writing that frame would fail.
    let largest = config.queue_limit().max(config.backend_body_limit);
    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER.saturating_add(largest).saturating_add(CONTROL_ROOM))
        .max_message_size(max)
        .max_frame_size(max)
}

/// What a handshake proves: who the client is, and when its connection token was issued (if it
/// says; revocations refuse the tokens issued before them).
pub(crate) type Proven = (Identity, Option<f64>);

/// The 401 text of a handshake whose query string repeats `token` (on `/ws` and SockJS alike):
/// which one to trust would depend on the parser, so none is.
pub(crate) const MORE_THAN_ONE_TOKEN: &str = "Invalid connection token: more than one token";

/// What the query string of a handshake proves (its `token` parameter, the connection token of
/// docs/protocol.md "Identity"; others are ignored), or the text of the HTTP 401 answer.
pub(crate) fn query_identity(app: &App, query: Option<&str>) -> Result<Proven, String> {
    let mut tokens = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(name, _)| name == "token")
        .map(|(_, value)| value);
    let token = tokens.next();
    if tokens.next().is_some() {
        return Err(MORE_THAN_ONE_TOKEN.to_owned());
    }
    handshake_identity(app, token.as_deref())
}

/// The identity a handshake proves (see the protocol document, "Identity"): anonymous without
/// a token, the token's `sub` and `info` with a valid one that was not revoked, with when the
/// token was issued (if it says). The error is the text of the HTTP 401 answer.
pub(crate) fn handshake_identity(app: &App, token: Option<&str>) -> Result<Proven, String> {
    let Some(token) = token else {
        return Ok((Identity::default(), None));
    };
    // A token the server cannot check is refused rather than ignored: silently connecting a
    // client that believes it is authenticated as anonymous hides a deployment mistake.
    let Some(secret) = app.config.token_secret.as_deref() else {
        return Err("Invalid connection token: server has no token_secret".to_owned());
    };
    let now = tokens::now_seconds();
    let verified = tokens::verify_claims(token, secret.as_bytes(), now)
        .map_err(|err| format!("Invalid connection token: {err}"))?;
    if let Some(id) = &verified.identity.id {
        if app.table.is_revoked(id, verified.issued_at, now) {
            return Err("Invalid connection token: revoked".to_owned());
        }
    }
    Ok((verified.identity, verified.issued_at))
}

/// A fresh connection id (shared by WebSocket connections and SockJS sessions).
pub(crate) fn next_connection_id() -> u64 {
    NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed)
}

/// Creates the connection of an upgraded socket, registers it in its slot, and tells the
/// services it connected.
pub(crate) async fn open(
    app: &App,
    remote: SocketAddr,
    (identity, issued_at): Proven,
    slot: &mut Slot,
) -> (Arc<Connection>, Outbox) {
    let id = next_connection_id();
    let (connection, outbox) =
        Connection::new(id, identity, remote, app.config.queue_bounds(), &app.shutdown, Arc::clone(&app.metrics));
    slot.register(&connection, issued_at);
    app.metrics.connections.inc();
    app.metrics.connections_opened.inc();
    log::debug!("connection {id} opened from {remote}");
    Box::pin(app.frontend.connected(&connection)).await;
    (connection, outbox)
}

async fn serve(
    app: Arc<App>,
    socket: WebSocket,
    remote: SocketAddr,
    identity: Identity,
    issued_at: Option<f64>,
    mut slot: Slot,
) {
    // Held for the connection's life so that shutdown waits for the close frame.
    let _drain = app.connections.token();
    let (connection, outbox) = open(&app, remote, (identity, issued_at), &mut slot).await;
    let id = connection.id();
    let (sink, stream) = socket.split();
    let sink = Arc::new(SharedSink { sink: Mutex::new(sink), flush_needed: Notify::new() });
    let writer = tokio::spawn(write_loop(
        Arc::clone(&connection),
        Arc::clone(&sink),
        outbox,
        app.config.ping_every(),
        app.config.close_grace(),
    ));
    read_loop(&app, &connection, stream, &sink).await;
    // Disconnect takes effect now, not after the close handshake: subscriptions, names and
    // memberships go at once. With a broker, the close handshake completes once they are gone
    // from Redis too (each removal bounded by the broker's command timeout), so that a name
    // freed here can be registered on another node as soon as the client's close returns.
    for departure in app.frontend.disconnected(&connection) {
        let _ = departure.await;
    }
    // The reader stops either because the client left (close frame, end of stream, read error)
    // or because the connection was already asked to close (shutdown, slow consumer, oversized
    // frame, dead peer). Only the first is a normal closure; in the second case the code already
    // chosen must stand, and shutdown leaves none so that the writer sends 1001.
    if !connection.is_closing() {
        connection.close(codes::NORMAL);
    }
    if let Err(err) = writer.await {
        log::error!("connection {id}: writer task failed: {err}");
    }
    app.metrics.connections.dec();
    log::debug!("connection {id} closed");
}

async fn read_loop(app: &App, connection: &Arc<Connection>, mut stream: SplitStream<WebSocket>, sink: &SharedSink) {
    // One wait for the close signal for the whole loop: a new one per frame would register with
    // the connection's cancellation token and leave it again on every frame.
    let closed = connection.closed();
    tokio::pin!(closed);
    loop {
        let message = tokio::select! {
            biased;
            () = &mut closed => return,
            message = stream.next() => message,
        };
        match message {
            None | Some(Ok(Message::Close(_))) => return,
            Some(Ok(Message::Text(text))) => {
                app.metrics.frames_received.inc();
                // Boxed: the request's future is then allocated only while a frame is handled,
                // instead of living inline in every idle connection's task. It stays small (the
                // services whose futures are large box them: `AnyService::handle_request`), so
                // the allocation is a cheap one.
                if let Some(reply) = Box::pin(dispatch::frontend_frame(app, connection, text.into())).await {
                    send_reply(app, connection, sink, reply);
                }
            }
            Some(Ok(Message::Binary(_))) => {
                app.metrics.frames_received.inc();
                app.metrics.frames_dropped.inc();
                log::debug!("connection {}: dropped a binary frame (text JSON expected)", connection.id());
            }
            Some(Ok(Message::Pong(payload))) => connection.pong_received(&payload),
            // Tungstenite answers pings itself.
            Some(Ok(Message::Ping(_))) => {}
            Some(Err(err)) => {
                if let Some(code) = close_code_for(err) {
                    log::info!("connection {}: closing with {code} after a bad frame", connection.id());
                    connection.close(code);
                }
                return;
            }
        }
    }
}

/// The close code a read error calls for (RFC 6455 section 7.4.1): 1009 for a frame over
/// `max_frame_size`, 1007 for a text frame that is not UTF-8, 1002 for a frame that breaks the
/// protocol; `None` when the peer simply went away.
fn close_code_for(err: axum::Error) -> Option<u16> {
    match err.into_inner().downcast::<tungstenite::Error>() {
        Ok(err) => match *err {
            tungstenite::Error::Capacity(_) => Some(codes::MESSAGE_TOO_BIG),
            tungstenite::Error::Utf8(_) => Some(codes::INVALID_PAYLOAD),
            // A peer that closed its socket without a close frame simply went away.
            tungstenite::Error::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake) => None,
            tungstenite::Error::Protocol(_) => Some(codes::PROTOCOL_ERROR),
            _ => None,
        },
        Err(other) => {
            log::debug!("websocket read error: {other}");
            None
        }
    }
}

/// Sends `reply`: straight to the socket when nothing is queued or being written before it and
/// the socket takes it without waiting, through the queue otherwise.
fn send_reply(app: &App, connection: &Connection, shared: &SharedSink, reply: Frame) {
    let outcome = match shared.sink.try_lock() {
        // Frames leave the queue's count only once written, and the writer holds the sink
        // while it writes: an empty queue here means nothing can be written before the reply.
        Ok(mut sink) if connection.queued_bytes() == 0 && !connection.is_closing() => write_now(&mut sink, reply),
        _ => DirectWrite::NotNow(reply),
    };
    match outcome {
        DirectWrite::Flushed => {
            app.metrics.frames_sent.inc();
        }
        DirectWrite::Buffered => {
            app.metrics.frames_sent.inc();
            shared.flush_needed.notify_one();
        }
        DirectWrite::Failed => connection.close(codes::GOING_AWAY),
        DirectWrite::NotNow(reply) => {
            connection.send(reply);
        }
    }
}

/// What became of a reply the reader tried to write itself.
enum DirectWrite {
    /// On the wire.
    Flushed,
    /// Accepted by the sink but not all flushed: the socket is full for now.
    Buffered,
    /// The socket failed: the connection is gone.
    Failed,
    /// The sink could not take it without waiting: it goes through the queue.
    NotNow(Frame),
}

/// Hands `frame` to the sink and flushes, without waiting for anything.
fn write_now(sink: &mut SplitSink<WebSocket, Message>, frame: Frame) -> DirectWrite {
    match std::future::poll_fn(|cx| sink.poll_ready_unpin(cx)).now_or_never() {
        Some(Ok(())) => {}
        Some(Err(_)) => return DirectWrite::Failed,
        None => return DirectWrite::NotNow(frame),
    }
    if sink.start_send_unpin(Message::Text(frame.into_inner())).is_err() {
        return DirectWrite::Failed;
    }
    match std::future::poll_fn(|cx| sink.poll_flush_unpin(cx)).now_or_never() {
        Some(Ok(())) => DirectWrite::Flushed,
        Some(Err(_)) => DirectWrite::Failed,
        None => DirectWrite::Buffered,
    }
}

async fn write_loop(
    connection: Arc<Connection>,
    shared: Arc<SharedSink>,
    mut outbox: Outbox,
    ping_every: Duration,
    close_grace: Duration,
) {
    let mut pings = interval_at(Instant::now() + ping_every, ping_every);
    pings.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = connection.closed() => break,
            frame = outbox.recv() => {
                let Some(frame) = frame else { break };
                let mut sink = shared.sink.lock().await;
                let write = write_batch(&mut sink, &mut outbox, frame);
                let Some(written) = unless_stuck(&connection, &mut pings, write).await else { break };
                if let Err(err) = written {
                    log::debug!("connection {}: write failed: {err}", connection.id());
                    connection.close(codes::GOING_AWAY);
                    break;
                }
                // A client reading a trickle completes every write and still never empties
                // its queue.
                if connection.stalled(Instant::now()) {
                    break;
                }
            }
            () = shared.flush_needed.notified() => {
                let mut sink = shared.sink.lock().await;
                let Some(flushed) = unless_stuck(&connection, &mut pings, sink.flush()).await else { break };
                if flushed.is_err() {
                    connection.close(codes::GOING_AWAY);
                    break;
                }
            }
            _ = pings.tick() => {
                let Some(payload) = connection.next_ping() else { break };
                let mut sink = shared.sink.lock().await;
                let ping = sink.send(Message::Ping(bytes::Bytes::copy_from_slice(&payload)));
                let Some(sent) = unless_stuck(&connection, &mut pings, ping).await else { break };
                if sent.is_err() {
                    connection.close(codes::GOING_AWAY);
                    break;
                }
            }
        }
    }
    let code = connection.close_code();
    let deadline = Instant::now() + close_grace;
    let mut sink = shared.sink.lock().await;
    if code == codes::GOING_AWAY || code == codes::NORMAL {
        // A graceful close (shutdown, or the client leaving) still delivers what was queued
        // before it, within the grace period, so a resuming client misses nothing.
        let _ = tokio::time::timeout_at(deadline, drain(&mut sink, &mut outbox)).await;
    }
    // Whatever is still queued will never be sent (a slow consumer's backlog, or the grace
    // period ran out): free it before the close handshake.
    drop(outbox);
    let close = CloseFrame { code, reason: "".into() };
    let _ = tokio::time::timeout_at(deadline, sink.send(Message::Close(Some(close)))).await;
    let _ = tokio::time::timeout(close_grace, sink.close()).await;
}

/// Writes every frame still queued.
async fn drain(sink: &mut SplitSink<WebSocket, Message>, outbox: &mut Outbox) {
    while let Some(frame) = outbox.try_recv() {
        if write_batch(sink, outbox, frame).await.is_err() {
            return;
        }
    }
}

/// Awaits `write`, still watching the close signal, the stall deadline and the ping clock;
/// `None` when the connection must close.
///
/// A write blocks when the peer stops reading and the socket buffers are full. A peer that does
/// not read cannot answer pings either, and the pings due meanwhile cannot even be sent, so each
/// tick during a blocked write counts as an unanswered ping: two of them drop the connection.
/// Independently, a queue that stays non-empty past the stall timeout closes it with 1008.
async fn unless_stuck<T>(connection: &Connection, pings: &mut Interval, write: impl Future<Output = T>) -> Option<T> {
    tokio::pin!(write);
    // Most writes complete at once (the socket has room): only a write that blocks needs the
    // timers below, so they are not armed for every frame.
    if let Some(done) = write.as_mut().now_or_never() {
        return Some(done);
    }
    loop {
        let check_stall_at = connection.stall_deadline().unwrap_or_else(|| Instant::now() + STALL_RECHECK);
        tokio::select! {
            biased;
            () = connection.closed() => return None,
            done = &mut write => return Some(done),
            () = tokio::time::sleep_until(check_stall_at) => {
                if connection.stalled(Instant::now()) {
                    return None;
                }
            }
            _ = pings.tick() => {
                connection.next_ping()?;
            }
        }
    }
}

/// Writes `first` and every frame already queued behind it, flushes once, then confirms them.
async fn write_batch(
    sink: &mut SplitSink<WebSocket, Message>,
    outbox: &mut Outbox,
    first: Frame,
) -> Result<(), axum::Error> {
    let mut frame = first;
    loop {
        sink.feed(Message::Text(frame.into_inner())).await?;
        match outbox.try_recv() {
            Some(next) => frame = next,
            None => break,
        }
    }
    sink.flush().await?;
    outbox.written();
    Ok(())
}
