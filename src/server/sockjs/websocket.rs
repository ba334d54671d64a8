//! The WebSocket transports: `<server>/<session>/websocket` with SockJS framing (`o`, `h`,
//! `a[...]`, `c[...]`, and incoming frames that are JSON arrays of messages) and the raw
//! `/websocket`, where each WebSocket text frame is one message.
//!
//! A WebSocket session lives exactly as long as its socket and is not in the session table, so
//! (as the protocol allows) two sockets may use one session id. The reader runs messages one at
//! a time, in order; the writer batches whatever is queued into one `a[...]` frame.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use super::adapter::{self, Admission};
use super::framing;
use super::path::Transport;
use super::Shared;
use crate::connection::{Connection, Outbox};
use crate::protocol::{codes, Frame};
use crate::server::ws::{self, Proven};

/// SockJS framing, or none (`/websocket`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `o`, `h`, `a[...]`, `c[...]`.
    SockJs,
    /// One WebSocket text frame per message.
    Raw,
}

/// Upgrades a checked handshake.
pub fn upgrade(
    shared: &Shared,
    upgrade: WebSocketUpgrade,
    remote: SocketAddr,
    identity: Proven,
    admission: Admission,
    framing: Framing,
) -> Response {
    let shared = shared.clone();
    ws::with_limits(upgrade, &shared.app.config)
        .on_upgrade(move |socket| serve(shared, socket, remote, identity, admission, framing))
}

async fn serve(
    shared: Shared,
    socket: WebSocket,
    remote: SocketAddr,
    identity: Proven,
    mut admission: Admission,
    framing: Framing,
) {
    let app = &shared.app;
    let endpoint = &shared.endpoint;
    // Held for the connection's life so that shutdown waits for the close frame.
    let _drain = app.connections.token();
    let (connection, outbox) = adapter::open(app, identity, remote, Transport::WebSocket, &mut admission);
    Box::pin(endpoint.behaviour.opened(app, &connection)).await;
    let (sink, stream) = socket.split();
    let writer = tokio::spawn(write_loop(
        Arc::clone(&connection),
        sink,
        outbox,
        framing,
        endpoint.options.heartbeat,
        app.config.queue_bounds().stall_timeout,
        app.config.close_grace(),
    ));
    read_loop(&shared, &connection, stream, framing).await;
    // Services forget the connection before a normal closure's close frame goes out (see
    // `Behaviour::closed`); a close the server chose is already on its way.
    endpoint.behaviour.closed(app, &connection).await;
    if !adapter::is_closing(&connection) {
        adapter::close(&connection, codes::NORMAL);
    }
    if let Err(err) = writer.await {
        log::error!("sockjs session {}: writer task failed: {err}", connection.id());
    }
    adapter::forget(app, &connection);
    drop(admission);
}

async fn read_loop(
    shared: &Shared,
    connection: &Arc<Connection>,
    mut stream: SplitStream<WebSocket>,
    framing: Framing,
) {
    let app = &shared.app;
    loop {
        let message = tokio::select! {
            () = adapter::closed(connection) => return,
            message = stream.next() => message,
        };
        let text = match message {
            None | Some(Ok(Message::Close(_))) => return,
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Binary(_))) => {
                app.metrics.frames_dropped.inc();
                continue;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Err(err)) => {
                if is_too_big(err) {
                    log::info!("sockjs session {}: frame over max_frame_size, closing with 1009", connection.id());
                    adapter::close(connection, codes::MESSAGE_TOO_BIG);
                }
                return;
            }
        };
        let messages = match framing {
            Framing::Raw => vec![text.as_str().to_owned()],
            // Empty frames are allowed and carry nothing.
            Framing::SockJs if text.is_empty() => continue,
            Framing::SockJs => match framing::parse_messages(text.as_bytes()) {
                Ok(messages) => messages,
                Err(err) => {
                    // Broken framing leaves the stream in an unknown state: end the session.
                    log::debug!("sockjs session {}: {err} closing", connection.id());
                    app.metrics.frames_dropped.inc();
                    adapter::close(connection, framing::INTERRUPTED);
                    return;
                }
            },
        };
        for message in &messages {
            app.metrics.frames_received.inc();
            Box::pin(shared.endpoint.behaviour.message(app, connection, message)).await;
        }
    }
}

fn is_too_big(err: axum::Error) -> bool {
    err.into_inner().downcast::<tungstenite::Error>().is_ok_and(|err| matches!(*err, tungstenite::Error::Capacity(_)))
}

async fn write_loop(
    connection: Arc<Connection>,
    mut sink: SplitSink<WebSocket, Message>,
    mut outbox: Outbox,
    framing: Framing,
    heartbeat: Duration,
    stalled: Duration,
    close_grace: Duration,
) {
    // `stalled`: a peer that stops reading blocks writes; one write that makes no progress for
    // the stall timeout means it is gone, as the stall rule says for `/ws`.
    if framing == Framing::SockJs && write(&mut sink, framing::OPEN.to_owned(), stalled).await.is_err() {
        adapter::close(&connection, codes::GOING_AWAY);
    }
    let mut ticks = interval_at(Instant::now() + heartbeat, heartbeat);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let result = tokio::select! {
            biased;
            () = adapter::closed(&connection) => break,
            frame = adapter::next(&mut outbox) => {
                let Some(first) = frame else { break };
                let batch = adapter::take_batch(&mut outbox, first);
                let sent = send_batch(&mut sink, framing, &batch, stalled).await;
                adapter::written(&mut outbox);
                sent
            }
            _ = ticks.tick() => match framing {
                Framing::SockJs => write(&mut sink, framing::HEARTBEAT.to_owned(), stalled).await,
                Framing::Raw => timed(stalled, sink.send(Message::Ping(axum::body::Bytes::new()))).await,
            },
        };
        if result.is_err() {
            log::debug!("sockjs session {}: write failed or stalled", connection.id());
            adapter::close(&connection, codes::GOING_AWAY);
            break;
        }
    }
    let code = adapter::close_code(&connection);
    let remaining = adapter::take_remaining(&connection, &mut outbox);
    drop(outbox);
    let deadline = Instant::now() + close_grace;
    let goodbye = async {
        if !remaining.is_empty() {
            send_batch(&mut sink, framing, &remaining, stalled).await?;
        }
        let close = match framing {
            // Broken framing ends the socket at once, without a SockJS close frame: the client
            // sent something no SockJS client sends, so it gets no protocol answer.
            Framing::SockJs if code == framing::INTERRUPTED => CloseFrame { code, reason: "Broken framing".into() },
            Framing::SockJs => {
                write(&mut sink, framing::close_frame(code), stalled).await?;
                CloseFrame { code: codes::NORMAL, reason: "".into() }
            }
            Framing::Raw => CloseFrame { code, reason: framing::close_reason(code).into() },
        };
        timed(stalled, sink.send(Message::Close(Some(close)))).await
    };
    let _ = tokio::time::timeout_at(deadline, goodbye).await;
    let _ = tokio::time::timeout(close_grace, sink.close()).await;
}

async fn send_batch(
    sink: &mut SplitSink<WebSocket, Message>,
    framing: Framing,
    batch: &[Frame],
    stalled: Duration,
) -> Result<(), ()> {
    match framing {
        Framing::SockJs => write(sink, framing::message_frame(batch.iter().map(Frame::as_str)), stalled).await,
        Framing::Raw => {
            for frame in batch {
                timed(stalled, sink.feed(Message::Text(frame.clone().into_inner()))).await?;
            }
            timed(stalled, sink.flush()).await
        }
    }
}

async fn write(sink: &mut SplitSink<WebSocket, Message>, text: String, stalled: Duration) -> Result<(), ()> {
    timed(stalled, sink.send(Message::Text(text.into()))).await
}

async fn timed(limit: Duration, write: impl std::future::Future<Output = Result<(), axum::Error>>) -> Result<(), ()> {
    match tokio::time::timeout(limit, write).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}
