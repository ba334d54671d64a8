//! The fast backend client: what the web application uses to call `POST /backend`.
//!
//! Built on `reqwest` (hyper underneath) for its keep-alive connection pool: consecutive calls
//! reuse one TCP connection instead of paying a handshake each time, and concurrent calls from
//! several threads each get a pooled connection.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::protocol::defaults::KEY_HEADER;

/// How long an idle pooled connection is kept for the next call.
const IDLE_CONNECTION_LIFETIME: Duration = Duration::from_secs(4);

/// Why a backend call failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The service answered with an error reply (`{"type": "error", "message": ...}`).
    #[error("{0}")]
    Rpc(String),
    /// The server refused the request (401 wrong key, 400 malformed, 413 too large...).
    #[error("backend refused the request (HTTP {status}): {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The server's `error` text.
        message: String,
    },
    /// The server could not be reached, the connection failed mid-request, or no answer came
    /// within the client's timeout.
    #[error("cannot reach the Snorky backend at {url}: {reason}")]
    Connection {
        /// The URL called.
        url: String,
        /// What went wrong, in words: the timeout and its length, or the transport's error
        /// with its underlying cause (connection refused, reset...).
        reason: String,
        /// The transport error.
        source: reqwest::Error,
    },
    /// The server answered something that is not a reply envelope.
    #[error("unexpected answer from the Snorky backend: {0}")]
    Protocol(String),
    /// The URL or options are unusable.
    #[error("{0}")]
    Config(String),
}

/// A pooled client for one backend URL and key. Cheap to clone (the pool is shared).
#[derive(Debug, Clone)]
pub struct BackendClient {
    url: String,
    key: String,
    timeout: Duration,
    http: reqwest::Client,
}

#[derive(Serialize)]
struct Call<'a> {
    service: &'a str,
    message: CallMessage<'a>,
}

#[derive(Serialize)]
struct CallMessage<'a> {
    command: &'a str,
    params: &'a Map<String, Value>,
}

impl BackendClient {
    /// A client for `url` (for example `http://127.0.0.1:5002/backend`) sending `key`.
    pub fn new(url: &str, key: &str, timeout: Duration) -> Result<BackendClient, BackendError> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(BackendError::Config(format!(
                "backend URL {url:?} must start with http:// (for example http://127.0.0.1:5002/backend)"
            )));
        }
        if url.starts_with("https://") {
            return Err(BackendError::Config(
                "https backend URLs are not supported yet: keep the backend on loopback or a private network".into(),
            ));
        }
        if key.is_empty() {
            return Err(BackendError::Config("the backend API key is empty".into()));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            // Below the server's keep-alive limit (`header_read_timeout`, 10 s by default): a
            // connection the server is about to close must not be picked for a request, or the
            // request races the close and fails.
            .pool_idle_timeout(IDLE_CONNECTION_LIFETIME)
            .tcp_nodelay(true)
            .build()
            .map_err(|source| BackendError::Connection {
                url: url.to_owned(),
                reason: transport_failure(&source, timeout),
                source,
            })?;
        Ok(BackendClient { url: url.to_owned(), key: key.to_owned(), timeout, http })
    }

    /// Calls `command` of `service` with `params`; returns the reply's `data`.
    pub async fn call(&self, service: &str, command: &str, params: &Map<String, Value>) -> Result<Value, BackendError> {
        let body = Call { service, message: CallMessage { command, params } };
        let response = self
            .http
            .post(&self.url)
            .header(KEY_HEADER, &self.key)
            .json(&body)
            .send()
            .await
            .map_err(|source| self.connection_error(source))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|source| self.connection_error(source))?;
        let answer: Value = serde_json::from_slice(&bytes)
            .map_err(|_| BackendError::Protocol(format!("HTTP {status} with a body that is not JSON")))?;
        if !status.is_success() {
            // A refused request says why in `error`; a reply envelope (503 "Service
            // unavailable": the broker is down) in its message.
            let message = answer
                .get("error")
                .or_else(|| answer.pointer("/message/message"))
                .and_then(Value::as_str)
                .unwrap_or("no error text")
                .to_owned();
            return Err(BackendError::Refused { status: status.as_u16(), message });
        }
        parse_reply(answer)
    }

    fn connection_error(&self, source: reqwest::Error) -> BackendError {
        BackendError::Connection { url: self.url.clone(), reason: transport_failure(&source, self.timeout), source }
    }
}

/// A transport error in words. reqwest's own text names only the step that failed ("error
/// sending request for url ..."), the same for a refused connection, a reset one and a timeout:
/// a timeout says so with its length, anything else gets its innermost cause appended.
fn transport_failure(source: &reqwest::Error, timeout: Duration) -> String {
    if source.is_timeout() {
        return format!("no answer within {:.1} s (the client's timeout)", timeout.as_secs_f64());
    }
    let outer = source.to_string();
    let mut innermost = None;
    let mut next = std::error::Error::source(source);
    while let Some(inner) = next {
        innermost = Some(inner);
        next = inner.source();
    }
    match innermost.map(ToString::to_string) {
        Some(cause) if !outer.contains(&cause) => format!("{outer}: {cause}"),
        _ => outer,
    }
}

fn parse_reply(answer: Value) -> Result<Value, BackendError> {
    let Value::Object(mut envelope) = answer else {
        return Err(BackendError::Protocol("reply is not an object".into()));
    };
    let Some(Value::Object(mut message)) = envelope.remove("message") else {
        return Err(BackendError::Protocol("reply has no message object".into()));
    };
    match message.get("type").and_then(Value::as_str) {
        Some("response") => Ok(message.remove("data").unwrap_or(Value::Null)),
        Some("error") => {
            let text = message.remove("message").and_then(|m| m.as_str().map(str::to_owned));
            Err(BackendError::Rpc(text.unwrap_or_else(|| "error without a message".into())))
        }
        _ => Err(BackendError::Protocol("reply type is neither response nor error".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::IDLE_CONNECTION_LIFETIME;
    use crate::server::ServerConfig;

    #[test]
    fn pooled_connections_are_dropped_before_the_server_closes_them() {
        // Otherwise a call made as the server closes an idle connection fails ("error sending
        // request"): about 1 call in 320 spaced at the server's limit did.
        assert!(IDLE_CONNECTION_LIFETIME < ServerConfig::default().header_timeout() / 2);
    }
}
