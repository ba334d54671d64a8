//! The `{"service": ..., "message": ...}` envelope that wraps every frame, both directions.

use serde::Serialize;
use serde_json::Value;

/// A parsed incoming envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The service the message is addressed to.
    pub service: String,
    /// The service-specific message (for RPC services, a request object).
    pub message: Value,
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

impl Envelope {
    /// Parses a frame's text (or an HTTP body) into an envelope.
    pub fn parse(text: &[u8]) -> Result<Envelope, EnvelopeError> {
        let value: Value = serde_json::from_slice(text).map_err(|err| EnvelopeError::NotJson(err.to_string()))?;
        let Value::Object(mut object) = value else {
            return Err(EnvelopeError::NotObject);
        };
        let Some(Value::String(service)) = object.remove("service") else {
            return Err(EnvelopeError::MissingService);
        };
        let message = object.remove("message").ok_or(EnvelopeError::MissingMessage)?;
        Ok(Envelope { service, message })
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_a_well_formed_envelope() {
        let envelope = Envelope::parse(br#"{"service": "pubsub", "message": {"a": 1}}"#).expect("valid");
        assert_eq!(envelope.service, "pubsub");
        assert_eq!(envelope.message, json!({"a": 1}));
    }

    #[test]
    fn refuses_each_kind_of_malformed_frame() {
        assert!(matches!(Envelope::parse(b"{nope"), Err(EnvelopeError::NotJson(_))));
        assert_eq!(Envelope::parse(b"[1, 2]"), Err(EnvelopeError::NotObject));
        assert_eq!(Envelope::parse(b"\"text\""), Err(EnvelopeError::NotObject));
        assert_eq!(Envelope::parse(br#"{"message": 1}"#), Err(EnvelopeError::MissingService));
        assert_eq!(Envelope::parse(br#"{"service": 3, "message": 1}"#), Err(EnvelopeError::MissingService));
        assert_eq!(Envelope::parse(br#"{"service": "x"}"#), Err(EnvelopeError::MissingMessage));
    }

    #[test]
    fn a_null_message_is_present() {
        let envelope = Envelope::parse(br#"{"service": "x", "message": null}"#).expect("valid");
        assert_eq!(envelope.message, Value::Null);
    }
}
