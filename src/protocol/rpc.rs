//! RPC requests and replies: `{"command", "params", "callId"}` answered by
//! `{"type": "response", "callId", "data"}` or `{"type": "error", "callId", "message"}`.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::Value;

use super::envelope::OutgoingEnvelope;
use super::frame::Frame;
use super::params::Params;

/// An error reply's text. The generic texts of the protocol's RPC section are variants; every
/// service-specific text ("Already subscribed", "No such dealer", ...) is a [`RpcError::Service`]
/// (the built-in services' are constants in [`super::errors`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcError {
    /// The service has no such command.
    UnknownCommand,
    /// Missing, extra or wrongly typed parameters.
    InvalidParams,
    /// A bug or a failing Python callback; details go to the log, never to the client.
    Internal,
    /// The request lacks `command` or `params`.
    InvalidMessage,
    /// The server cannot do it now (the broker shared by the nodes is unreachable); the same
    /// request may succeed later. The backend answers it with HTTP 503.
    Unavailable,
    /// A service-specific failure, shown to the client verbatim.
    Service(Cow<'static, str>),
}

impl RpcError {
    /// A service-specific error with a fixed text.
    pub const fn service(text: &'static str) -> RpcError {
        RpcError::Service(Cow::Borrowed(text))
    }

    /// The text the reply carries: the one definition of every generic text, which `Display`
    /// shows too.
    pub fn text(&self) -> &str {
        match self {
            RpcError::UnknownCommand => "Unknown command",
            RpcError::InvalidParams => "Invalid params",
            RpcError::Internal => "Internal error",
            RpcError::InvalidMessage => "Invalid message",
            RpcError::Unavailable => "Service unavailable",
            RpcError::Service(text) => text,
        }
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text())
    }
}

impl std::error::Error for RpcError {}

/// A request that passed the envelope-level checks (read by [`Envelope::parse`]).
///
/// [`Envelope::parse`]: super::Envelope::parse
#[derive(Debug, Clone, PartialEq)]
pub struct Request<'a> {
    /// The command name, borrowed from the frame unless it has escapes. A non-string `command`
    /// is kept as `None` and answered "Unknown command".
    pub command: Option<Cow<'a, str>>,
    /// The parameters object.
    pub params: Params,
    /// The caller's `callId`, echoed verbatim; `None` when the request had none.
    pub call_id: Option<Value>,
}

impl Request<'_> {
    /// The same request, owning its command.
    pub fn into_owned(self) -> Request<'static> {
        Request { command: self.command.map(|command| Cow::Owned(command.into_owned())), ..self }
    }
}

/// Why a message is not a request.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestError {
    /// Not even a `callId` can be read: the frame is dropped.
    Unreadable(&'static str),
    /// The request can be answered, with this error.
    Reply {
        /// The `callId` to echo.
        call_id: Option<Value>,
        /// The error to send.
        error: RpcError,
    },
}

/// The `message` part of a reply, in protocol field order.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ReplyMessage<'a> {
    Response {
        #[serde(rename = "callId", skip_serializing_if = "Option::is_none")]
        call_id: Option<&'a Value>,
        data: &'a Value,
    },
    Error {
        #[serde(rename = "callId", skip_serializing_if = "Option::is_none")]
        call_id: Option<&'a Value>,
        message: &'a str,
    },
}

/// Serializes the reply to a request addressed to `service`.
pub fn reply_frame(service: &str, call_id: Option<&Value>, result: &Result<Value, RpcError>) -> Frame {
    Frame::from_serialize(&reply_envelope(service, call_id, result))
}

/// The reply envelope as a value (the backend's HTTP answer is the same document).
pub fn reply_envelope<'a>(
    service: &'a str,
    call_id: Option<&'a Value>,
    result: &'a Result<Value, RpcError>,
) -> impl Serialize + 'a {
    let message = match result {
        Ok(data) => ReplyMessage::Response { call_id, data },
        Err(error) => ReplyMessage::Error { call_id, message: error.text() },
    };
    OutgoingEnvelope { service, message }
}

/// Builds a pushed message's frame: `{"service": service, "message": message}`.
pub fn push_frame<M: Serialize>(service: &str, message: M) -> Frame {
    Frame::from_serialize(&OutgoingEnvelope { service, message })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<Request<'static>, RequestError> {
        crate::protocol::envelope::request_of(value)
    }

    #[test]
    fn a_complete_request_parses() {
        let request = parse(json!({"command": "subscribe", "params": {"channel": "a"}, "callId": 7})).expect("valid");
        assert_eq!(request.command.as_deref(), Some("subscribe"));
        assert_eq!(request.call_id, Some(json!(7)));
    }

    #[test]
    fn missing_command_or_params_is_invalid_message_only_with_a_call_id() {
        let error = parse(json!({"params": {}, "callId": "x"})).expect_err("no command");
        assert_eq!(error, RequestError::Reply { call_id: Some(json!("x")), error: RpcError::InvalidMessage });
        let error = parse(json!({"command": "a", "callId": {"k": 1}})).expect_err("no params");
        assert_eq!(error, RequestError::Reply { call_id: Some(json!({"k": 1})), error: RpcError::InvalidMessage });
        assert!(matches!(parse(json!({"command": "a"})), Err(RequestError::Unreadable(_))));
        assert!(matches!(parse(json!([1])), Err(RequestError::Unreadable(_))));
    }

    #[test]
    fn params_that_are_not_an_object_are_invalid_params() {
        for params in [Value::Null, json!([]), json!("x"), json!(3)] {
            let error = parse(json!({"command": "a", "params": params, "callId": 1})).expect_err("bad params");
            assert_eq!(error, RequestError::Reply { call_id: Some(json!(1)), error: RpcError::InvalidParams });
        }
    }

    #[test]
    fn replies_carry_exactly_the_protocol_fields() {
        let ok = reply_frame("pubsub", Some(&json!(7)), &Ok(Value::Null));
        assert_eq!(ok.as_str(), r#"{"service":"pubsub","message":{"type":"response","callId":7,"data":null}}"#);
        let err = reply_frame("pubsub", None, &Err(RpcError::service("Not subscribed")));
        assert_eq!(err.as_str(), r#"{"service":"pubsub","message":{"type":"error","message":"Not subscribed"}}"#);
    }
}
