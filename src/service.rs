//! What every service shares: the [`Service`] trait, who is calling, policy hooks, and the
//! closed set of service kinds ([`AnyService`]) the registries dispatch over.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;

use crate::broker::Broker;
use crate::connection::Connection;
use crate::connections::ConnectionTable;
use crate::datasync::{DataSyncBackend, DataSyncService};
use crate::error::Error;
use crate::protocol::{Params, RpcError};
use crate::services::chat::ChatService;
use crate::services::cluster::rooms;
use crate::services::connections::ConnectionsBackend;
use crate::services::cursors::CursorsService;
use crate::services::external::{ExternalService, Handled};
use crate::services::messaging::MessagingService;
use crate::services::pubsub::{PubSubBackend, PubSubService};

/// What a server gives its services when it binds.
#[derive(Debug, Clone, Copy)]
pub struct Attachment<'a> {
    /// The server's open connections.
    pub table: &'a Arc<ConnectionTable>,
    /// The broker, when the server shares its state with other nodes.
    pub broker: Option<&'a Broker>,
}

/// Which registry a call came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A browser, over WebSocket `/ws`.
    Frontend,
    /// The web application, over HTTP `POST /backend` with the API key.
    Backend,
}

/// The origin of a call.
#[derive(Debug, Clone, Copy)]
pub enum Caller<'a> {
    /// A WebSocket client.
    Client(&'a Arc<Connection>),
    /// The web application (no connection: nothing can be pushed back to it).
    Backend,
}

/// A service: a named RPC endpoint with state.
///
/// Guarantees an implementor must keep:
/// - `handle` has applied the command's effect before it returns, so the reply (queued after)
///   never overtakes the effect: a `subscribe` reply means the next publish reaches the caller.
/// - `handle` never blocks a runtime thread: user (Python) code runs on worker threads and is
///   awaited.
/// - `disconnected` removes every trace of the connection promptly and pushes whatever the
///   protocol says others must see (presence, removed cursors).
pub trait Service: Send + Sync {
    /// The name clients address.
    fn name(&self) -> &str;

    /// Which registry the service belongs in.
    fn side(&self) -> Side;

    /// Runs one command.
    fn handle(
        &self,
        caller: Caller<'_>,
        command: &str,
        params: Params,
    ) -> impl Future<Output = Result<Value, RpcError>> + Send;

    /// Forgets a connection that closed.
    fn disconnected(&self, _connection: &Arc<Connection>) {}

    /// Forgets a connection that closed, as [`disconnected`](Service::disconnected) does, and
    /// returns what remains to be done elsewhere (with a broker: the removals in Redis). The
    /// server runs it before the connection's close handshake completes.
    fn departed(&self, connection: &Arc<Connection>) -> Option<Departure> {
        self.disconnected(connection);
        None
    }
}

/// What remains of a disconnection once the node forgot the connection (see
/// [`Service::departed`]).
pub type Departure = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The future a [`Policy`] returns: `Ok(allowed)` or the text of a failure to log.
pub type PolicyFuture = Pin<Box<dyn Future<Output = Result<bool, String>> + Send>>;

/// A yes/no decision a user may override, such as PubSub's `can_publish(client, channel)`.
/// The Python bindings implement it by running the user's method on a worker thread.
pub trait Policy: Send + Sync + Debug {
    /// Decides whether `connection` may act on `subject` (a channel, a name, ...).
    fn decide(&self, connection: &Arc<Connection>, subject: &Value) -> PolicyFuture;
}

/// Asks an optional policy; no policy means "allowed". A failing policy is logged and answered
/// "Internal error" so that a bug in a hook never silently opens or closes anything.
pub async fn ask_policy(
    policy: Option<&Arc<dyn Policy>>,
    service: &str,
    connection: &Arc<Connection>,
    subject: &Value,
) -> Result<bool, RpcError> {
    let Some(policy) = policy else {
        return Ok(true);
    };
    policy.decide(connection, subject).await.map_err(|err| {
        log::error!("policy hook of service {service:?} failed: {err}");
        RpcError::Internal
    })
}

/// Every kind of service the server knows, so registries dispatch without trait objects.
#[derive(Debug, Clone)]
pub enum AnyService {
    /// PubSub for browsers.
    PubSub(PubSubService),
    /// PubSub publishing for the web application.
    PubSubBackend(PubSubBackend),
    /// DataSync for browsers: acquiring and cancelling subscriptions.
    DataSync(DataSyncService),
    /// DataSync for the web application: authorizing subscriptions, publishing deltas.
    DataSyncBackend(DataSyncBackend),
    /// A service whose commands run outside the core (Python `RPCService`s).
    External(ExternalService),
    /// Chat: channels, messages, presence, read receipts.
    Chat(ChatService),
    /// Cursors: shared cursors in documents.
    Cursors(CursorsService),
    /// Messaging: named participants and messages between them.
    Messaging(MessagingService),
    /// Revocation of identities, for the web application.
    Connections(ConnectionsBackend),
}

/// Applies `$body` to the service inside every built-in variant (not `External`, whose
/// requests take a different path).
macro_rules! each_builtin {
    ($value:expr, $service:ident => $body:expr, external $external:ident => $other:expr) => {
        match $value {
            AnyService::PubSub($service) => $body,
            AnyService::PubSubBackend($service) => $body,
            AnyService::DataSync($service) => $body,
            AnyService::DataSyncBackend($service) => $body,
            AnyService::Chat($service) => $body,
            AnyService::Cursors($service) => $body,
            AnyService::Messaging($service) => $body,
            AnyService::Connections($service) => $body,
            AnyService::External($external) => $other,
        }
    };
}

impl AnyService {
    /// The service's name.
    pub fn name(&self) -> &str {
        each_builtin!(self, service => service.name(), external service => service.name())
    }

    /// Which registry the service belongs in.
    pub fn side(&self) -> Side {
        each_builtin!(self, service => service.side(), external service => service.side())
    }

    /// Runs one request. Built-in services answer at once, but for Chat's and Cursors' `join`
    /// with a broker, which queue their reply themselves; external ones may answer later (the
    /// reply is then written by a task).
    pub async fn handle_request(
        &self,
        caller: Caller<'_>,
        command: &str,
        params: Params,
        call_id: Option<&Value>,
    ) -> Handled {
        match self {
            // PubSub's future is small: it runs inline. The others' hold a broker's calls or a
            // hand-off to Python, kilobytes of state that every request would otherwise allocate
            // and move, so it is boxed: only their own requests pay for it.
            AnyService::PubSub(service) => Handled::Reply(service.handle(caller, command, params).await),
            _ => Box::pin(self.handle_other(caller, command, params, call_id)).await,
        }
    }

    /// [`handle_request`](Self::handle_request) for every service but PubSub.
    async fn handle_other(
        &self,
        caller: Caller<'_>,
        command: &str,
        params: Params,
        call_id: Option<&Value>,
    ) -> Handled {
        // With a broker, Chat's and Cursors' `join` queue their reply themselves, before the
        // pushes that follow the join.
        match self {
            AnyService::Chat(service) => {
                let join = |connection, params, reply| service.join(connection, params, reply);
                let other = |params| service.handle(caller, command, params);
                return rooms::handle_request(caller, command, params, call_id, join, other).await;
            }
            AnyService::Cursors(service) => {
                let join = |connection, params, reply| service.join(connection, params, reply);
                let other = |params| service.handle(caller, command, params);
                return rooms::handle_request(caller, command, params, call_id, join, other).await;
            }
            _ => {}
        }
        each_builtin!(
            self,
            service => Handled::Reply(service.handle(caller, command, params).await),
            external service => {
                let connection = match caller {
                    Caller::Client(connection) => Some(connection),
                    Caller::Backend => None,
                };
                service.handle_request(connection, command.to_owned(), params.into_map(), call_id).await
            }
        )
    }

    /// Gives the service what it needs of the server it is registered in: the server's
    /// connections (the `connections` service), the broker (the services that share state
    /// across nodes).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the service cannot work with this broker.
    pub async fn attach(&self, server: &Attachment<'_>) -> Result<(), Error> {
        match self {
            AnyService::Connections(service) => service.attach(server.table),
            AnyService::PubSub(service) => service.hub().attach(server.broker),
            AnyService::DataSync(service) => service.hub().attach(server.broker),
            AnyService::DataSyncBackend(service) => service.hub().attach(server.broker),
            AnyService::Messaging(service) => service.attach(server.broker).await?,
            AnyService::Chat(service) => service.attach(server.broker),
            AnyService::Cursors(service) => service.attach(server.broker),
            _ => {}
        }
        Ok(())
    }

    /// Waits (the caller bounds it) for the work a service still does for connections that
    /// closed: a DataSync service on a broker gives their subscriptions back to Redis, so that
    /// they resume on another node after this one stopped.
    pub async fn drained(&self) {
        if let AnyService::DataSync(service) = self {
            service.hub().drained().await;
        }
    }

    /// Tells the service a client connected (only external services care).
    pub async fn connected(&self, connection: &Arc<Connection>) {
        if let AnyService::External(service) = self {
            service.connected(connection).await;
        }
    }

    /// Forgets a connection that closed; returns what remains to be done elsewhere (see
    /// [`Service::departed`]).
    pub fn disconnected(&self, connection: &Arc<Connection>) -> Option<Departure> {
        each_builtin!(self, service => service.departed(connection), external service => {
            service.disconnected(connection);
            None
        })
    }
}
