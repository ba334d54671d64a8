//! The sending transports: `xhr_send` (a JSON array of messages in the body) and `jsonp_send`
//! (the same, or in the `d` field of a form post).
//!
//! A body is bounded like a WebSocket frame: over `max_frame_size` it is refused with 413 and
//! the session closes with 1009, as a WebSocket connection would.

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;

use super::framing::{self, PayloadError};
use super::http::{self, RequestInfo};
use super::path::Transport;
use super::{adapter, Shared};
use crate::protocol::codes;
use crate::server::body::{self, BodyError};

/// Handles `xhr_send` or `jsonp_send` for session `id`.
pub async fn send(shared: &Shared, info: &RequestInfo, id: &str, transport: Transport, body: Body) -> Response {
    let app = &shared.app;
    let endpoint = &shared.endpoint;
    let Some(session) = endpoint.sessions.get(id) else {
        return http::not_found();
    };
    if let Err(refused) = super::may_use(app, &session, info) {
        return refused.into_response();
    }
    session.ready().await;
    // One request's messages at a time, in order, as a WebSocket reader handles frames. The
    // lock is taken before the body is read, so that a client sending many requests at once
    // makes the server hold one body per session, not one per request.
    let order = session.inbound().await;
    // The deadline bounds how long the session's turn is held too.
    let bytes = match body::read(body, app.config.max_frame_size, app.config.body_deadline()).await {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge) => {
            log::info!("sockjs session {}: body over max_frame_size, closing with 1009", session.connection.id());
            adapter::close(&session.connection, codes::MESSAGE_TOO_BIG);
            return http::error(StatusCode::PAYLOAD_TOO_LARGE, "Payload too large.");
        }
        Err(BodyError::TooSlow) => {
            log::info!("sockjs session {}: body not received within body_read_timeout", session.connection.id());
            return http::error(StatusCode::REQUEST_TIMEOUT, "Body not received in time.");
        }
        // The client went away while sending: nobody reads this answer.
        Err(BodyError::Broken) => return http::error(StatusCode::BAD_REQUEST, "Broken request."),
    };
    let payload = if transport == Transport::JsonpSend && info.form_body {
        form_field(&bytes).unwrap_or_default()
    } else {
        bytes.to_vec()
    };
    drop(bytes);
    let messages = match framing::parse_messages(&payload) {
        Ok(messages) => messages,
        Err(err @ (PayloadError::Missing | PayloadError::Broken)) => {
            app.metrics.frames_dropped.inc();
            return http::error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string());
        }
    };
    drop(payload);
    for message in &messages {
        if adapter::is_closing(&session.connection) {
            break;
        }
        app.metrics.frames_received.inc();
        Box::pin(endpoint.behaviour.message(app, &session.connection, message)).await;
    }
    drop(order);
    let mut response = match transport {
        // Some browsers mishandle an empty 204 to a form post: JSONP gets a body.
        Transport::JsonpSend => http::response(StatusCode::OK, Some(http::TEXT), "ok"),
        _ => http::response(StatusCode::NO_CONTENT, Some(http::TEXT), Body::empty()),
    };
    let headers = response.headers_mut();
    http::no_cache(headers);
    http::cors(headers, info);
    http::session_cookie(headers, info, endpoint.options.cookie_needed);
    response
}

/// The `d` field of a form body, decoded.
fn form_field(body: &[u8]) -> Option<Vec<u8>> {
    form_urlencoded::parse(body).find(|(name, _)| name == "d").map(|(_, value)| value.into_owned().into_bytes())
}
