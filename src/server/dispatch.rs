//! From a frame's text to a reply: envelope, service lookup, request parsing, the call.

use std::sync::Arc;

use crate::connection::Connection;
use crate::protocol::rpc::reply_frame;
use crate::protocol::{Envelope, Request, RequestError, RpcError};
use crate::service::Caller;
use crate::services::external::Handled;

use super::App;

/// Handles one text frame of a WebSocket client. Malformed frames are dropped and logged; the
/// connection stays open.
pub async fn frontend_frame(app: &App, connection: &Arc<Connection>, text: &str) {
    let envelope = match Envelope::parse(text.as_bytes()) {
        Ok(envelope) => envelope,
        Err(err) => return dropped(app, connection, &err.to_string()),
    };
    let Some(service) = app.frontend.get(&envelope.service) else {
        return dropped(app, connection, &format!("unknown service {:?}", envelope.service));
    };
    let (call_id, result) = match Request::parse(envelope.message) {
        Ok(Request { command, params, call_id }) => {
            let handled = match command {
                Some(command) => {
                    service.handle_request(Caller::Client(connection), command, params, call_id.as_ref()).await
                }
                None => Handled::Reply(Err(RpcError::UnknownCommand)),
            };
            match handled {
                Handled::Reply(result) => (call_id, result),
                Handled::Later => return,
            }
        }
        Err(RequestError::Unreadable(why)) => return dropped(app, connection, why),
        Err(RequestError::Reply { call_id, error }) => (call_id, Err(error)),
    };
    if result.is_err() {
        app.metrics.rpc_error(service.name());
    }
    connection.send(reply_frame(service.name(), call_id.as_ref(), &result));
}

fn dropped(app: &App, connection: &Connection, why: &str) {
    app.metrics.frames_dropped.inc();
    log::debug!("connection {}: dropped a frame: {why}", connection.id());
}
