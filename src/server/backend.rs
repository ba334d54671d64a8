//! `POST /backend`: the web application's RPC endpoint, guarded by the API key.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::protocol::defaults::KEY_HEADER;
use crate::protocol::rpc::reply_envelope;
use crate::protocol::RpcError;
use crate::service::Caller;

use super::body::{self, BodyError};
use super::dispatch::{self, Outcome};
use super::App;

/// Handles one backend request: key first (before the body is even read), then the envelope,
/// then the call. Every request gets an answer.
pub async fn handle(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    app.metrics.backend_requests.inc();
    let mut keys = headers.get_all(KEY_HEADER).iter();
    let (given, None) = (keys.next(), keys.next()) else {
        // Which one counts would depend on where each came from (a proxy adding the key, a
        // client sending its own): none does.
        return error(StatusCode::UNAUTHORIZED, "More than one X-Backend-Key");
    };
    if !key_matches(&app, given) {
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
    let body = match body::read(body, limit, app.config.body_deadline()).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return too_large(),
        Err(BodyError::TooSlow) => {
            return error(StatusCode::REQUEST_TIMEOUT, "Body not received within body_read_timeout");
        }
        Err(BodyError::Broken) => return error(StatusCode::BAD_REQUEST, "Broken request body"),
    };
    match dispatch::handle(&app.backend, Caller::Backend, body, &app.metrics).await {
        Outcome::Answered { service, call_id, result } => {
            // Not now, not a refusal: 503 tells the web application to try again.
            let status =
                if result == Err(RpcError::Unavailable) { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
            (status, Json(reply_envelope(service, call_id.as_ref(), &result))).into_response()
        }
        Outcome::InvalidMessage { .. } => {
            error(StatusCode::BAD_REQUEST, "Invalid message: command and params are required")
        }
        // Backend calls to external services wait for their answer (bounded); this is a bug.
        Outcome::Later => error(StatusCode::INTERNAL_SERVER_ERROR, "Internal error"),
        Outcome::Refused(refusal) => error(StatusCode::BAD_REQUEST, &refusal.to_string()),
    }
}

/// Compares the key in constant time (for keys of equal length; the length itself is not secret
/// enough to matter and `ct_eq` on slices of different lengths answers at once).
fn key_matches(app: &App, given: Option<&HeaderValue>) -> bool {
    let (Some(expected), Some(given)) = (app.config.api_key.as_deref(), given) else {
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
