//! The `{"service": ..., "message": ...}` envelope that wraps every frame, both directions.
//!
//! An incoming frame is read in one pass, straight into the envelope and the RPC request it
//! carries: the service name and the command borrow from the frame's text (unless they contain
//! escapes), and only `params` and `callId` become [`Value`]s. Anything else the frame holds
//! (other fields, a `service` that is not a string, a `message` that is not an object) is still
//! read as a [`Value`] and dropped, so that a frame is accepted or refused, with the same error
//! text, exactly as parsing the whole frame into a [`Value`] first would.

use std::borrow::Cow;
use std::fmt;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::params::Params;
use super::rpc::{Request, RequestError, RpcError};

/// A parsed incoming envelope, with its message already read as an RPC request.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<'a> {
    /// The service the message is addressed to.
    pub service: Cow<'a, str>,
    /// The service message as an RPC request, or why it is not one.
    pub request: Result<Request<'a>, RequestError>,
}

/// Why a frame is not an envelope. The frontend drops such frames (and logs the reason); the
/// backend answers HTTP 400 with the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The frame is not JSON.
    #[error("Invalid JSON: {0}")]
    NotJson(String),
    /// The frame is JSON but not an object.
    #[error("Message must be a JSON object")]
    NotObject,
    /// `service` is absent or not a string.
    #[error("Missing field service (a string)")]
    MissingService,
    /// `message` is absent.
    #[error("Missing field message")]
    MissingMessage,
}

impl Envelope<'_> {
    /// Parses a frame's text (or an HTTP body) into an envelope and its request.
    ///
    /// The rules, in order: the text must be JSON, then an object, with a string `service`
    /// and a `message`; a repeated field counts once, its last occurrence (as in a JSON object
    /// read into a map). The message is then read as a request ([`Request`]'s rules).
    pub fn parse(text: &[u8]) -> Result<Envelope<'_>, EnvelopeError> {
        let parsed: Parsed<'_> = serde_json::from_slice(text).map_err(|err| EnvelopeError::NotJson(err.to_string()))?;
        let Parsed::Object { service, message } = parsed else {
            return Err(EnvelopeError::NotObject);
        };
        let Some(Text::Str(service)) = service else {
            return Err(EnvelopeError::MissingService);
        };
        let message = message.ok_or(EnvelopeError::MissingMessage)?;
        Ok(Envelope { service, request: message.into_request() })
    }

    /// The same envelope, owning its text.
    pub fn into_owned(self) -> Envelope<'static> {
        Envelope { service: Cow::Owned(self.service.into_owned()), request: self.request.map(Request::into_owned) }
    }
}

/// An outgoing envelope, serialized with the fields in protocol order.
#[derive(Debug, Serialize)]
pub struct OutgoingEnvelope<'a, M: Serialize> {
    /// The name of the service the recipient addressed (replies) or uses (pushed messages).
    pub service: &'a str,
    /// The service's message.
    pub message: M,
}

/// A frame read in one pass: an object's `service` and `message` (each the last occurrence), or
/// any other JSON document.
enum Parsed<'a> {
    Object { service: Option<Text<'a>>, message: Option<RawRequest<'a>> },
    NotObject,
}

/// A field that should be a string: its text, or the fact that it was something else.
enum Text<'a> {
    Str(Cow<'a, str>),
    Other,
}

/// The fields of a service message that make a request, as found; or a message that is not an
/// object.
enum RawRequest<'a> {
    Object { command: Option<Text<'a>>, params: Option<Value>, call_id: Option<Value> },
    NotObject,
}

impl<'a> RawRequest<'a> {
    /// Applies docs/protocol.md's rules, in order: a non-object is unreadable; an absent
    /// `command` or `params` is "Invalid message" when a `callId` can be echoed and unreadable
    /// otherwise; a present `params` that is not an object (including `null`) is "Invalid
    /// params"; a `command` that is not a string is kept as `None` ("Unknown command").
    fn into_request(self) -> Result<Request<'a>, RequestError> {
        let RawRequest::Object { command, params, call_id } = self else {
            return Err(RequestError::Unreadable("message is not an object"));
        };
        let (Some(command), Some(params)) = (command, params) else {
            return match call_id {
                Some(call_id) => Err(RequestError::Reply { call_id: Some(call_id), error: RpcError::InvalidMessage }),
                None => Err(RequestError::Unreadable("request without command or params, and no callId")),
            };
        };
        let Value::Object(params) = params else {
            return Err(RequestError::Reply { call_id, error: RpcError::InvalidParams });
        };
        let command = match command {
            Text::Str(command) => Some(command),
            Text::Other => None,
        };
        Ok(Request { command, params: Params::new(params), call_id })
    }
}

/// The fields of an envelope or a request this parser looks at; every other key is `Other`.
enum Key {
    Service,
    Message,
    Command,
    Params,
    CallId,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "service" => Key::Service,
                    "message" => Key::Message,
                    "command" => Key::Command,
                    "params" => Key::Params,
                    "callId" => Key::CallId,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Reads an object or array that this parser has no use for as a [`Value`] and drops it, so
/// that it is checked exactly as a [`Value`] would check it (nesting depth, numbers in range).
fn drop_map<'de, A: MapAccess<'de>>(map: A) -> Result<(), A::Error> {
    Value::deserialize(MapAccessDeserializer::new(map)).map(drop)
}

/// As [`drop_map`], for an array.
fn drop_seq<'de, A: SeqAccess<'de>>(seq: A) -> Result<(), A::Error> {
    Value::deserialize(SeqAccessDeserializer::new(seq)).map(drop)
}

/// Implements the visits of every JSON type but strings and objects for a visitor whose value
/// is `$other`: scalars are already checked by the parser, arrays are read and dropped.
macro_rules! other_values {
    ($other:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            drop_seq(seq)?;
            Ok($other)
        }
    };
}

impl<'de> Deserialize<'de> for Parsed<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Parsed<'de>, D::Error> {
        struct EnvelopeVisitor;
        impl<'de> Visitor<'de> for EnvelopeVisitor {
            type Value = Parsed<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON document")
            }
            other_values!(Parsed::NotObject);
            fn visit_str<E>(self, _: &str) -> Result<Parsed<'de>, E> {
                Ok(Parsed::NotObject)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parsed<'de>, A::Error> {
                let (mut service, mut message) = (None, None);
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Service => service = Some(map.next_value::<Text<'de>>()?),
                        Key::Message => message = Some(map.next_value::<RawRequest<'de>>()?),
                        _ => drop(map.next_value::<Value>()?),
                    }
                }
                Ok(Parsed::Object { service, message })
            }
        }
        deserializer.deserialize_any(EnvelopeVisitor)
    }
}

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Text<'de>, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            other_values!(Text::Other);
            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Text<'de>, E> {
                Ok(Text::Str(Cow::Borrowed(text)))
            }
            fn visit_str<E>(self, text: &str) -> Result<Text<'de>, E> {
                Ok(Text::Str(Cow::Owned(text.to_owned())))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Text<'de>, A::Error> {
                drop_map(map)?;
                Ok(Text::Other)
            }
        }
        deserializer.deserialize_any(TextVisitor)
    }
}

impl<'de> Deserialize<'de> for RawRequest<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RawRequest<'de>, D::Error> {
        struct RequestVisitor;
        impl<'de> Visitor<'de> for RequestVisitor {
            type Value = RawRequest<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            other_values!(RawRequest::NotObject);
            fn visit_str<E>(self, _: &str) -> Result<RawRequest<'de>, E> {
                Ok(RawRequest::NotObject)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawRequest<'de>, A::Error> {
                let (mut command, mut params, mut call_id) = (None, None, None);
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Command => command = Some(map.next_value::<Text<'de>>()?),
                        Key::Params => params = Some(map.next_value::<Value>()?),
                        Key::CallId => call_id = Some(map.next_value::<Value>()?),
                        _ => drop(map.next_value::<Value>()?),
                    }
                }
                Ok(RawRequest::Object { command, params, call_id })
            }
        }
        deserializer.deserialize_any(RequestVisitor)
    }
}

/// Reads a request from a message already parsed into a [`Value`] (for the tests of the request
/// rules).
#[cfg(test)]
pub(crate) fn request_of(message: Value) -> Result<Request<'static>, RequestError> {
    match RawRequest::deserialize(message) {
        Ok(raw) => raw.into_request(),
        Err(err) => unreachable!("a Value always reads as a request: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(text: &str) -> Request<'_> {
        Envelope::parse(text.as_bytes()).expect("an envelope").request.expect("a request")
    }

    #[test]
    fn parses_a_well_formed_envelope() {
        let text = r#"{"service": "pubsub", "message": {"command": "subscribe", "params": {"a": 1}, "callId": 7}}"#;
        let envelope = Envelope::parse(text.as_bytes()).expect("valid");
        assert_eq!(envelope.service, "pubsub");
        assert!(matches!(envelope.service, Cow::Borrowed(_)), "no escapes: borrowed from the frame");
        let request = envelope.request.expect("a request");
        assert_eq!(request.command.as_deref(), Some("subscribe"));
        assert_eq!(request.call_id, Some(json!(7)));
        assert_eq!(request.params.into_map(), json!({"a": 1}).as_object().cloned().expect("an object"));
    }

    #[test]
    fn escaped_names_are_unescaped() {
        let text = r#"{"service": "pub\u0073ub", "message": {"command": "sub\"scribe", "params": {}}}"#;
        let envelope = Envelope::parse(text.as_bytes()).expect("valid");
        assert_eq!(envelope.service, "pubsub");
        assert_eq!(envelope.request.expect("a request").command.as_deref(), Some("sub\"scribe"));
    }

    #[test]
    fn refuses_each_kind_of_malformed_frame() {
        assert!(matches!(Envelope::parse(b"{nope"), Err(EnvelopeError::NotJson(_))));
        assert_eq!(Envelope::parse(b"[1, 2]"), Err(EnvelopeError::NotObject));
        assert_eq!(Envelope::parse(b"\"text\""), Err(EnvelopeError::NotObject));
        assert_eq!(Envelope::parse(b"3"), Err(EnvelopeError::NotObject));
        assert_eq!(Envelope::parse(br#"{"message": 1}"#), Err(EnvelopeError::MissingService));
        assert_eq!(Envelope::parse(br#"{"service": 3, "message": 1}"#), Err(EnvelopeError::MissingService));
        assert_eq!(Envelope::parse(br#"{"service": {"a": [1]}, "message": 1}"#), Err(EnvelopeError::MissingService));
        assert_eq!(Envelope::parse(br#"{"service": "x"}"#), Err(EnvelopeError::MissingMessage));
    }

    #[test]
    fn a_repeated_field_counts_once_its_last_occurrence() {
        let envelope = Envelope::parse(br#"{"service": 1, "service": "x", "message": 1}"#).expect("valid");
        assert_eq!(envelope.service, "x");
        assert_eq!(
            Envelope::parse(br#"{"service": "x", "service": null, "message": 1}"#),
            Err(EnvelopeError::MissingService)
        );
        assert_eq!(
            request(r#"{"service": "x", "message": {"command": "a", "command": "b", "params": {}}}"#)
                .command
                .as_deref(),
            Some("b")
        );
    }

    /// Whatever the fields this parser does not keep hold, a frame is refused exactly when
    /// reading it into a `Value` fails, with the same text.
    #[test]
    fn refuses_exactly_what_a_value_refuses_with_the_same_text() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let frames = [
            r#"{"service": "x", "message": {"command": "a", "params": {}, "other": 1e400}}"#.to_owned(),
            r#"{"service": "x", "message": {"command": "a", "params": {}}, "extra": 1e400}"#.to_owned(),
            r#"{"service": [1e400], "message": 1}"#.to_owned(),
            r#"{"service": "x", "message": [1, 1e400]}"#.to_owned(),
            r#"{"service": "x", "message": {"command": {"k": 1e400}, "params": {}}}"#.to_owned(),
            format!(r#"{{"service": "x", "message": {{"command": "a", "params": {{}}, "o": {deep}}}}}"#),
            format!(r#"{{"service": {deep}, "message": 1}}"#),
            r#"{"service": "x", "message": {"command": "a", "params": {}}} trailing"#.to_owned(),
            r#"{"service": "x", "message": {"command": "a\ud800", "params": {}}}"#.to_owned(),
            r#"{"service": "x", 1: 2}"#.to_owned(),
            r#"{"service": "x", "message": {"command": "a", "params": {}},}"#.to_owned(),
        ];
        for frame in &frames {
            let expected = serde_json::from_str::<Value>(frame).expect_err("not JSON").to_string();
            assert_eq!(Envelope::parse(frame.as_bytes()), Err(EnvelopeError::NotJson(expected)), "{frame}");
        }
    }

    #[test]
    fn a_null_message_is_present_but_not_a_request() {
        let envelope = Envelope::parse(br#"{"service": "x", "message": null}"#).expect("valid");
        assert_eq!(envelope.request, Err(RequestError::Unreadable("message is not an object")));
    }
}
