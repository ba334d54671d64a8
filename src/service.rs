//! What every service shares: the [`Service`] trait, who is calling, policy hooks, and the
//! closed set of service kinds ([`AnyService`]) the registries dispatch over.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;

use crate::connection::Connection;
use crate::protocol::{Params, RpcError};
use crate::services::pubsub::{PubSubBackend, PubSubService};

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
}

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
}

impl AnyService {
    /// The service's name.
    pub fn name(&self) -> &str {
        match self {
            AnyService::PubSub(service) => service.name(),
            AnyService::PubSubBackend(service) => service.name(),
        }
    }

    /// Which registry the service belongs in.
    pub fn side(&self) -> Side {
        match self {
            AnyService::PubSub(service) => service.side(),
            AnyService::PubSubBackend(service) => service.side(),
        }
    }

    /// Runs one command.
    pub async fn handle(&self, caller: Caller<'_>, command: &str, params: Params) -> Result<Value, RpcError> {
        match self {
            AnyService::PubSub(service) => service.handle(caller, command, params).await,
            AnyService::PubSubBackend(service) => service.handle(caller, command, params).await,
        }
    }

    /// Forgets a connection that closed.
    pub fn disconnected(&self, connection: &Arc<Connection>) {
        match self {
            AnyService::PubSub(service) => service.disconnected(connection),
            AnyService::PubSubBackend(service) => service.disconnected(connection),
        }
    }
}
