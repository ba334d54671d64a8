//! `POST /backend`: the web application's RPC endpoint, guarded by the API key.

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::protocol::rpc::reply_envelope;
use crate::protocol::{Envelope, Request, RequestError, RpcError};
use crate::service::Caller;
use crate::services::external::Handled;

use super::App;

/// The header carrying the API key.
pub const KEY_HEADER: &str = "x-backend-key";

/// Handles one backend request: key first (before the body is even read), then the envelope,
/// then the call. Every request gets an answer.
pub async fn handle(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    app.metrics.backend_requests.inc();
    if !key_matches(&app, &headers) {
        return error(StatusCode::UNAUTHORIZED, "Missing or wrong X-Backend-Key");
    }
    // A body announced over the limit is refused from the head alone, before a byte of it is
    // read; one that does not announce its size is cut off at the limit.
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let limit = app.config.backend_body_limit;
    if announced.is_some_and(|length| length > limit as u64) {
        return too_large();
    }
    let Ok(body) = to_bytes(body, limit).await else {
        return too_large();
    };
    let envelope = match Envelope::parse(&body) {
        Ok(envelope) => envelope,
        Err(err) => return error(StatusCode::BAD_REQUEST, &err.to_string()),
    };
    let Some(service) = app.backend.get(&envelope.service) else {
        return error(StatusCode::BAD_REQUEST, &format!("Unknown service {:?}", envelope.service));
    };
    let (call_id, result) = match Request::parse(envelope.message) {
        Ok(Request { command, params, call_id }) => {
            let handled = match command {
                Some(command) => service.handle_request(Caller::Backend, command, params, call_id.as_ref()).await,
                None => Handled::Reply(Err(RpcError::UnknownCommand)),
            };
            match handled {
                Handled::Reply(result) => (call_id, result),
                Handled::Later => (call_id, Err(RpcError::Internal)),
            }
        }
        Err(RequestError::Unreadable(why)) => {
            return error(StatusCode::BAD_REQUEST, &format!("Invalid message: {why}"))
        }
        Err(RequestError::Reply { error: RpcError::InvalidMessage, .. }) => {
            return error(StatusCode::BAD_REQUEST, "Invalid message: command and params are required")
        }
        Err(RequestError::Reply { call_id, error }) => (call_id, Err(error)),
    };
    if result.is_err() {
        app.metrics.rpc_error(service.name());
    }
    Json(reply_envelope(service.name(), call_id.as_ref(), &result)).into_response()
}

/// Compares the key in constant time (for keys of equal length; the length itself is not secret
/// enough to matter and `ct_eq` on slices of different lengths answers at once).
fn key_matches(app: &App, headers: &HeaderMap) -> bool {
    let Some(expected) = app.config.api_key.as_deref() else {
        return false;
    };
    let Some(given) = headers.get(KEY_HEADER) else {
        return false;
    };
    bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

fn too_large() -> Response {
    error(StatusCode::PAYLOAD_TOO_LARGE, "Body too large (backend_body_limit)")
}

fn error(status: StatusCode, text: &str) -> Response {
    (status, Json(json!({"error": text}))).into_response()
}
