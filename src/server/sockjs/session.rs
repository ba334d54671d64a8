//! Sessions of the HTTP transports: the table by session id, the one receiving request a
//! session may have at a time, and the task that closes a session whose client went away.
//!
//! A session outlives the requests that carry it. Its outgoing queue (the connection's
//! [`Outbox`]) sits in the session while no request is receiving; a receiving request *takes*
//! it for its duration and puts it back when done. So a second receiver finds no queue and gets
//! `c[2010,...]`, and nothing else needs a lock on the message path.
//!
//! The session task watches for two ends: the connection closing (a service, the queue bound,
//! shutdown) and the client not polling for `disconnect_delay`. Either way services forget the
//! connection at once; the session stays in the table for another `disconnect_delay` so that a
//! client polling again learns the close code, then its state is freed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use subtle::ConstantTimeEq;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::connection::{Connection, Outbox};
use crate::protocol::{codes, Frame};
use crate::server::App;

use super::adapter::{self, Admission};
use super::{framing, Endpoint};

/// How often a session whose queue is empty looks at it again for the stall rule.
const STALL_RECHECK: Duration = Duration::from_secs(1);

/// One session of an HTTP transport.
pub struct Session {
    /// The client-chosen id (the table's key).
    pub id: String,
    /// The connection services see.
    pub connection: Arc<Connection>,
    /// The outgoing queue while no request is receiving.
    ///
    /// A std mutex: it is held only to take or put back the queue, never across an await.
    outbox: Mutex<Option<Outbox>>,
    /// Whether a request is receiving; the session task restarts the disconnect delay on each
    /// change.
    receiving: watch::Sender<bool>,
    /// Becomes true once services have been told of the connection, before any message of the
    /// client is handled.
    ready: watch::Sender<bool>,
    /// Serializes the sending requests of one session, so messages are handled in the order the
    /// client sent them even if two `xhr_send` requests overlap.
    inbound: tokio::sync::Mutex<()>,
    /// The connection token the session was opened with (`None`: anonymous). Every later request
    /// must carry the same one (sockjs-client repeats the URL's query on each): the session id
    /// alone, which proxies log with the path, would otherwise let anyone read and send as the
    /// session's user.
    token: Option<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("connection", &self.connection.id())
            .field("receiving", &*self.receiving.borrow())
            .finish_non_exhaustive()
    }
}

/// The sessions of one endpoint, by id.
#[derive(Debug, Default)]
pub struct SessionTable {
    /// A std mutex: lookups and inserts only, never held across an await.
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

/// Why a receiving request cannot attach to a session.
pub enum Refusal {
    /// The session has closed: the close frame to send.
    Closed(String),
    /// Another request is receiving: send `c[2010,...]`, the session stays as it is.
    Busy,
}

impl SessionTable {
    /// The session `id`, if it exists.
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.lock().get(id).cloned()
    }

    /// How many sessions the table holds (open, or closed and serving their close frame).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The session `id`, or a new one made by `open`; a new one comes with its place in the
    /// connection table, for [`spawn`].
    pub fn get_or_insert<E>(
        &self,
        id: &str,
        token: Option<&str>,
        open: impl FnOnce() -> Result<(Arc<Connection>, Outbox, Admission), E>,
    ) -> Result<(Arc<Session>, Option<Admission>), E> {
        let mut sessions = self.lock();
        if let Some(session) = sessions.get(id) {
            return Ok((Arc::clone(session), None));
        }
        let (connection, outbox, admission) = open()?;
        let session = Arc::new(Session {
            id: id.to_owned(),
            connection,
            outbox: Mutex::new(Some(outbox)),
            receiving: watch::Sender::new(false),
            ready: watch::Sender::new(false),
            inbound: tokio::sync::Mutex::new(()),
            token: token.map(str::to_owned),
        });
        sessions.insert(id.to_owned(), Arc::clone(&session));
        Ok((session, Some(admission)))
    }

    fn remove(&self, session: &Arc<Session>) {
        let mut sessions = self.lock();
        // Only this session: the id may already name a newer one.
        if sessions.get(&session.id).is_some_and(|current| Arc::ptr_eq(current, session)) {
            sessions.remove(&session.id);
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Session {
    /// Whether a later request carrying `token` (the connection token of its query, if one) may
    /// use this session: the same token it was opened with, or none for both.
    pub fn carries_its_token(&self, token: Option<&str>) -> bool {
        match (&self.token, token) {
            (None, None) => true,
            (Some(expected), Some(given)) => bool::from(expected.as_bytes().ct_eq(given.as_bytes())),
            _ => false,
        }
    }

    /// Makes this request the session's receiver.
    pub fn attach(self: &Arc<Session>) -> Result<Receiver, Refusal> {
        if adapter::is_closing(&self.connection) {
            return Err(Refusal::Closed(framing::close_frame(adapter::close_code(&self.connection))));
        }
        let outbox = self.outbox.lock().unwrap_or_else(PoisonError::into_inner).take();
        let Some(outbox) = outbox else {
            return Err(Refusal::Busy);
        };
        self.receiving.send_replace(true);
        Ok(Receiver { session: Arc::clone(self), outbox: Some(outbox), finished: false })
    }

    /// Waits up to `limit` for no request to be receiving; whether that happened.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let mut receiving = self.receiving.subscribe();
        tokio::time::timeout(limit, receiving.wait_for(|receiving| !*receiving)).await.is_ok_and(|idle| idle.is_ok())
    }

    /// Waits until services know of the connection (at once, except just after opening).
    pub async fn ready(&self) {
        let mut ready = self.ready.subscribe();
        // An error means the sender is gone, which cannot happen while `self` lives.
        let _ = ready.wait_for(|ready| *ready).await;
    }

    /// Takes the lock that keeps one session's messages in order.
    pub async fn inbound(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inbound.lock().await
    }
}

/// What a receiving request sends next.
pub enum Event {
    /// Messages: the `a[...]` frame.
    Messages(String),
    /// Nothing to send for a heartbeat interval: `h`.
    Heartbeat,
    /// The session closed: the last frames (queued messages if any, then `c[...]`).
    Closed(Vec<String>),
}

/// The request currently receiving for a session. Dropping it gives the queue back; dropping it
/// before [`Receiver::finish`] means the request was cut (the client went away mid-response),
/// which closes the session with 1002 as the protocol asks.
pub struct Receiver {
    session: Arc<Session>,
    outbox: Option<Outbox>,
    finished: bool,
}

impl Receiver {
    /// The session received for.
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// Waits for messages, a heartbeat interval, or the session's end.
    pub async fn next_event(&mut self, heartbeat: Duration) -> Event {
        let connection = Arc::clone(&self.session.connection);
        let Some(outbox) = self.outbox.as_mut() else {
            return Event::Closed(vec![framing::close_frame(codes::GOING_AWAY)]);
        };
        if adapter::is_closing(&connection) {
            return Event::Closed(closing_frames(&connection, outbox));
        }
        tokio::select! {
            biased;
            () = adapter::closed(&connection) => Event::Closed(closing_frames(&connection, outbox)),
            frame = adapter::next(outbox) => match frame {
                Some(first) => {
                    let frame = message_frame(&adapter::take_batch(outbox, first));
                    adapter::written(outbox);
                    Event::Messages(frame)
                }
                None => Event::Closed(vec![framing::close_frame(adapter::close_code(&connection))]),
            },
            () = tokio::time::sleep(heartbeat) => Event::Heartbeat,
        }
    }

    /// Marks the response complete: the client got everything it was sent.
    pub fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if !self.finished {
            log::debug!("sockjs session {}: receiving request cut, closing with 1002", self.session.connection.id());
            adapter::close(&self.session.connection, framing::INTERRUPTED);
        }
        *self.session.outbox.lock().unwrap_or_else(PoisonError::into_inner) = self.outbox.take();
        self.session.receiving.send_replace(false);
    }
}

fn message_frame(frames: &[Frame]) -> String {
    framing::message_frame(frames.iter().map(Frame::as_str))
}

fn closing_frames(connection: &Connection, outbox: &mut Outbox) -> Vec<String> {
    let remaining = adapter::take_remaining(connection, outbox);
    adapter::written(outbox);
    let mut frames = Vec::with_capacity(2);
    if !remaining.is_empty() {
        frames.push(message_frame(&remaining));
    }
    frames.push(framing::close_frame(adapter::close_code(connection)));
    frames
}

/// Runs a new session to its end: tells services it opened, closes it when its client stops
/// polling or reading, tells services it closed, and frees it after serving its close frame for
/// a while. The session holds `admission` until services have forgotten it.
pub fn spawn(app: Arc<App>, endpoint: Arc<Endpoint>, session: Arc<Session>, admission: Admission) {
    let drain = app.connections.token();
    tokio::spawn(async move {
        let _drain = drain;
        run(&app, &endpoint, &session, admission).await;
    });
}

async fn run(app: &App, endpoint: &Endpoint, session: &Arc<Session>, admission: Admission) {
    let connection = &session.connection;
    Box::pin(endpoint.behaviour.opened(app, connection)).await;
    session.ready.send_replace(true);

    let delay = endpoint.options.disconnect_delay;
    let mut receiving = session.receiving.subscribe();
    // When the session closes for want of a receiving request; set when it becomes idle, and
    // dropped at every change of receiver (a request that came and went is activity too).
    let mut expires: Option<Instant> = None;
    loop {
        if *receiving.borrow_and_update() {
            expires = None;
        } else if expires.is_none() {
            expires = Some(Instant::now() + delay);
        }
        // A queue that does not drain (no receiver takes it, or the receiver's client does not
        // read its response) closes the session with 1008, as for a WebSocket.
        let stall_check = adapter::stall_deadline(connection).unwrap_or_else(|| Instant::now() + STALL_RECHECK);
        tokio::select! {
            () = adapter::closed(connection) => break,
            changed = receiving.changed() => {
                if changed.is_err() {
                    break;
                }
                expires = None;
            }
            () = tokio::time::sleep_until(stall_check) => {
                adapter::stalled(connection);
            }
            () = sleep_until(expires) => {
                log::debug!("sockjs session {}: no receiving request for {delay:?}, closing it", connection.id());
                app.metrics.sockjs_sessions_expired.inc();
                adapter::close(connection, codes::NORMAL);
                break;
            }
        }
    }
    // Services forget the connection now; only the close frame remains to be served.
    endpoint.behaviour.closed(app, connection).await;
    adapter::forget(app, connection);
    drop(admission);
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        () = app.shutdown.cancelled() => {}
    }
    endpoint.sessions.remove(session);
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending::<()>().await,
    }
}
