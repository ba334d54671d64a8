//! Services implemented outside the Rust core (in Python, through the bindings): the server
//! side of `RPCService`.
//!
//! The core knows nothing of Python: it hands each call to an [`ExternalHandler`] with a
//! [`Responder`] and awaits the handler's *dispatch* (the user's method returning), which keeps
//! calls of one connection in order. The reply may come with the dispatch (an ordinary command)
//! or later, from any thread (a deferred or async command); then the reply is written when it
//! arrives, without holding up the connection's next requests.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::connection::{Connection, ConnectionId};
use crate::protocol::rpc::{push_frame, reply_frame};
use crate::protocol::{errors, Frame, RpcError};
use crate::service::Side;

/// How long a backend call waits for a deferred reply before answering "Internal error".
const BACKEND_REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// A boxed future, as handlers return them.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One call handed to an external handler.
#[derive(Debug)]
pub struct ExternalCall {
    /// Cancelled when nobody waits for the answer any more (the calling connection closed, or a
    /// backend call timed out): the handler should stop working on it and free what it holds.
    pub cancelled: CancellationToken,
    /// The calling connection; `None` for backend calls.
    pub connection: Option<Arc<Connection>>,
    /// The command name.
    pub command: String,
    /// The parameters object.
    pub params: Map<String, Value>,
    /// The `callId`, for handlers that want to show it.
    pub call_id: Option<Value>,
    /// Where the answer goes.
    pub responder: Responder,
}

/// The single-use answer channel of a call. Dropping it unanswered answers "Internal error"
/// (backend calls) or nothing (WebSocket calls), and logs the omission.
#[derive(Debug)]
pub struct Responder(oneshot::Sender<Result<Value, RpcError>>);

impl Responder {
    /// Answers with `result`; returns false when the caller is gone.
    pub fn send(self, result: Result<Value, RpcError>) -> bool {
        self.0.send(result).is_ok()
    }
}

/// The code behind an external service (the Python bindings implement it).
pub trait ExternalHandler: Send + Sync + Debug {
    /// Runs a call up to the point where the user's command returns. Must not block the
    /// runtime: run user code on a blocking worker thread and await it.
    fn dispatch(&self, call: ExternalCall) -> BoxFuture;

    /// A WebSocket client connected (only called when [`ExternalHandler::wants_connection_events`]).
    fn connected(&self, connection: &Arc<Connection>) -> BoxFuture;

    /// A WebSocket client disconnected (same condition).
    fn disconnected(&self, connection: &Arc<Connection>);

    /// Whether the handler wants connect/disconnect events.
    fn wants_connection_events(&self) -> bool;
}

/// The most calls of one connection that may wait for a deferred answer at once, by default.
pub const MAX_PENDING_CALLS: usize = 100;

/// What handling a request produced.
#[derive(Debug)]
pub enum Handled {
    /// Send this reply now.
    Reply(Result<Value, RpcError>),
    /// The reply will be written by a task when it comes.
    Later,
}

/// A service whose commands run outside the core.
#[derive(Debug, Clone)]
pub struct ExternalService {
    name: String,
    side: Side,
    handler: Arc<dyn ExternalHandler>,
    /// Every connected client, for `broadcast` and `send_to`. A std `Mutex`: nothing awaits
    /// under it.
    clients: Arc<Mutex<HashMap<ConnectionId, Arc<Connection>>>>,
    /// Calls waiting for a deferred answer, per connection, and the most allowed.
    pending: Arc<Mutex<HashMap<ConnectionId, usize>>>,
    max_pending: usize,
}

impl ExternalService {
    /// A service named `name` on `side`, run by `handler`.
    pub fn new(name: impl Into<String>, side: Side, handler: Arc<dyn ExternalHandler>) -> ExternalService {
        ExternalService {
            name: name.into(),
            side,
            handler,
            clients: Arc::default(),
            pending: Arc::default(),
            max_pending: MAX_PENDING_CALLS,
        }
    }

    /// Sets how many calls of one connection may wait for a deferred answer at once ("Too many
    /// pending calls" beyond).
    #[must_use]
    pub fn with_max_pending(mut self, max_pending: usize) -> ExternalService {
        self.max_pending = max_pending;
        self
    }

    /// How many calls of `connection` wait for a deferred answer.
    pub fn pending_calls(&self, connection: ConnectionId) -> usize {
        crate::sync::lock(&self.pending).get(&connection).copied().unwrap_or(0)
    }

    /// How many calls wait for a deferred answer, over every connection.
    pub fn pending_total(&self) -> usize {
        crate::sync::lock(&self.pending).values().sum()
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which registry it belongs in.
    pub fn side(&self) -> Side {
        self.side
    }

    fn clients(&self) -> MutexGuard<'_, HashMap<ConnectionId, Arc<Connection>>> {
        crate::sync::lock(&self.clients)
    }

    /// Handles one request: dispatches it, then answers now or when the reply comes.
    ///
    /// A connection's calls that wait for a deferred answer are bounded (`max_pending`), and
    /// cancelled when the connection closes, so a client cannot pile up work that outlives it.
    pub async fn handle_request(
        &self,
        connection: Option<&Arc<Connection>>,
        command: String,
        params: Map<String, Value>,
        call_id: Option<&Value>,
    ) -> Handled {
        if connection.is_some_and(|connection| self.pending_calls(connection.id()) >= self.max_pending) {
            return Handled::Reply(Err(errors::TOO_MANY_PENDING_CALLS));
        }
        let (sender, mut receiver) = oneshot::channel();
        let cancelled = CancellationToken::new();
        let call = ExternalCall {
            cancelled: cancelled.clone(),
            connection: connection.cloned(),
            command,
            params,
            call_id: call_id.cloned(),
            responder: Responder(sender),
        };
        self.handler.dispatch(call).await;
        match receiver.try_recv() {
            Ok(result) => Handled::Reply(result),
            Err(oneshot::error::TryRecvError::Closed) => {
                log::error!("service {:?}: a request was dropped without a reply", self.name);
                Handled::Reply(Err(RpcError::Internal))
            }
            Err(oneshot::error::TryRecvError::Empty) => match connection {
                None => {
                    if let Ok(Ok(result)) = tokio::time::timeout(BACKEND_REPLY_TIMEOUT, receiver).await {
                        Handled::Reply(result)
                    } else {
                        cancelled.cancel();
                        log::error!("service {:?}: a backend request got no reply", self.name);
                        Handled::Reply(Err(RpcError::Internal))
                    }
                }
                Some(connection) => {
                    let pending = PendingCall::start(&self.pending, connection.id());
                    let connection = Arc::clone(connection);
                    let name = self.name.clone();
                    let call_id = call_id.cloned();
                    tokio::spawn(async move {
                        let _pending = pending;
                        tokio::select! {
                            result = receiver => match result {
                                Ok(result) => {
                                    connection.send(reply_frame(&name, call_id.as_ref(), &result));
                                }
                                Err(_) => log::error!("service {name:?}: a deferred request was dropped without a reply"),
                            },
                            () = connection.closed() => cancelled.cancel(),
                        }
                    });
                    Handled::Later
                }
            },
        }
    }

    /// Records a new client and tells the handler.
    pub async fn connected(&self, connection: &Arc<Connection>) {
        self.clients().insert(connection.id(), Arc::clone(connection));
        if self.handler.wants_connection_events() {
            self.handler.connected(connection).await;
        }
    }

    /// Forgets a client and tells the handler.
    pub fn disconnected(&self, connection: &Arc<Connection>) {
        let known = self.clients().remove(&connection.id()).is_some();
        if known && self.handler.wants_connection_events() {
            self.handler.disconnected(connection);
        }
    }

    /// Pushes `message` to every connected client; returns how many it reached.
    pub fn broadcast(&self, message: &Value) -> usize {
        let frame = push_frame(&self.name, message);
        let clients: Vec<Arc<Connection>> = self.clients().values().cloned().collect();
        clients.iter().filter(|client| client.deliver(frame.clone())).count()
    }

    /// Pushes `message` to one client; returns false when it is gone or closing.
    pub fn send_to(&self, connection: &Connection, message: &Value) -> bool {
        let frame: Frame = push_frame(&self.name, message);
        connection.deliver(frame)
    }

    /// The number of connected clients.
    pub fn client_count(&self) -> usize {
        self.clients().len()
    }
}

/// One call counted as waiting for its deferred answer; dropping it uncounts it.
struct PendingCall {
    pending: Arc<Mutex<HashMap<ConnectionId, usize>>>,
    connection: ConnectionId,
}

impl PendingCall {
    fn start(pending: &Arc<Mutex<HashMap<ConnectionId, usize>>>, connection: ConnectionId) -> PendingCall {
        *crate::sync::lock(pending).entry(connection).or_default() += 1;
        PendingCall { pending: Arc::clone(pending), connection }
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        let mut pending = crate::sync::lock(&self.pending);
        if let Some(count) = pending.get_mut(&self.connection) {
            *count -= 1;
            if *count == 0 {
                pending.remove(&self.connection);
            }
        }
    }
}
