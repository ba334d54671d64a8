//! The request pipeline both listeners share: envelope, service lookup, request parsing, the
//! call, and the error counter. What differs is only what each side makes of the outcome: a
//! WebSocket client gets a reply frame (or its malformed frame is dropped), the web application
//! an HTTP answer (400 for a message that is not a request).

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use crate::connection::Connection;
use crate::metrics::Metrics;
use crate::protocol::rpc::reply_frame;
use crate::protocol::{Envelope, EnvelopeError, Frame, Request, RequestError, RpcError};
use crate::registry::ServiceRegistry;
use crate::service::Caller;
use crate::services::external::Handled;

use super::App;

/// Messages larger than this are parsed on a blocking worker thread: parsing a body of many
/// megabytes takes long enough to hold up the other connections of a runtime thread.
const PARSE_INLINE_MAX: usize = 64 * 1024;

/// What became of one message.
#[derive(Debug)]
pub enum Outcome<'a> {
    /// The request was handled: reply with `result`.
    Answered {
        /// The name of the service addressed.
        service: &'a str,
        /// The `callId` to echo.
        call_id: Option<Value>,
        /// The command's result.
        result: Result<Value, RpcError>,
    },
    /// A request without `command` or `params` but with a `callId`: "Invalid message".
    InvalidMessage {
        /// The name of the service addressed.
        service: &'a str,
        /// The `callId` to echo.
        call_id: Option<Value>,
    },
    /// An external service will answer later (WebSocket clients only).
    Later,
    /// Not a request the server can answer; the text says why.
    Refused(Refusal),
}

/// Why a message is not a request.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Not an envelope.
    #[error(transparent)]
    NotEnvelope(#[from] EnvelopeError),
    /// No service of this side has the name.
    #[error("Unknown service {0:?}")]
    UnknownService(String),
    /// The message cannot be read as a request, not even its `callId`.
    #[error("Invalid message: {0}")]
    Unreadable(&'static str),
}

/// Runs one message (a frame's text, or a backend body) against `registry`.
pub async fn handle<'a>(
    registry: &'a ServiceRegistry,
    caller: Caller<'_>,
    message: Bytes,
    metrics: &Metrics,
) -> Outcome<'a> {
    if message.len() <= PARSE_INLINE_MAX {
        return answer(registry, caller, Envelope::parse(&message), metrics).await;
    }
    let parsed = tokio::task::spawn_blocking(move || Envelope::parse(&message).map(Envelope::into_owned)).await;
    let parsed = parsed.unwrap_or_else(|err| Err(EnvelopeError::NotJson(format!("the parser failed: {err}"))));
    answer(registry, caller, parsed, metrics).await
}

/// Runs a parsed message against `registry`.
async fn answer<'a>(
    registry: &'a ServiceRegistry,
    caller: Caller<'_>,
    parsed: Result<Envelope<'_>, EnvelopeError>,
    metrics: &Metrics,
) -> Outcome<'a> {
    let envelope = match parsed {
        Ok(envelope) => envelope,
        Err(err) => return Outcome::Refused(Refusal::NotEnvelope(err)),
    };
    let Some(service) = registry.get(&envelope.service) else {
        return Outcome::Refused(Refusal::UnknownService(envelope.service.into_owned()));
    };
    let (call_id, result) = match envelope.request {
        Ok(Request { command, params, call_id }) => {
            let handled = match command {
                Some(command) => service.handle_request(caller, &command, params, call_id.as_ref()).await,
                None => Handled::Reply(Err(RpcError::UnknownCommand)),
            };
            match handled {
                Handled::Reply(result) => (call_id, result),
                Handled::Later => return Outcome::Later,
            }
        }
        Err(RequestError::Unreadable(why)) => return Outcome::Refused(Refusal::Unreadable(why)),
        Err(RequestError::Reply { call_id, error: RpcError::InvalidMessage }) => {
            metrics.rpc_error(service.name());
            return Outcome::InvalidMessage { service: service.name(), call_id };
        }
        Err(RequestError::Reply { call_id, error }) => (call_id, Err(error)),
    };
    if result.is_err() {
        metrics.rpc_error(service.name());
    }
    Outcome::Answered { service: service.name(), call_id, result }
}

/// Handles one text frame of a client and returns the reply to send, if any. Malformed frames
/// are dropped and logged; the connection stays open. The caller sends the reply: the WebSocket
/// reader writes it straight to the socket when it can, other transports queue it.
pub async fn frontend_frame(app: &App, connection: &Arc<Connection>, text: Bytes) -> Option<Frame> {
    match handle(&app.frontend, Caller::Client(connection), text, &app.metrics).await {
        Outcome::Answered { service, call_id, result } => Some(reply_frame(service, call_id.as_ref(), &result)),
        Outcome::InvalidMessage { service, call_id } => {
            Some(reply_frame(service, call_id.as_ref(), &Err(RpcError::InvalidMessage)))
        }
        Outcome::Later => None,
        Outcome::Refused(refusal) => {
            app.metrics.frames_dropped.inc();
            log::debug!("connection {}: dropped a frame: {refusal}", connection.id());
            None
        }
    }
}
