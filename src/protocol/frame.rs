//! A serialized outgoing text frame, shared between recipients without copying.

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;

/// One JSON document ready to be written to WebSocket clients.
///
/// Serialization happens once per delivery; cloning a `Frame` clones a reference-counted buffer,
/// so a publish to 5,000 subscribers costs one `serde_json` call and 5,000 pointer copies.
#[derive(Clone, Debug)]
pub struct Frame(Utf8Bytes);

impl Frame {
    /// Serializes `value` into a frame.
    ///
    /// Serializing a `serde_json::Value` or a struct of plain fields cannot fail; the fallback
    /// keeps that promise without a panic path.
    pub fn from_serialize<T: Serialize + ?Sized>(value: &T) -> Frame {
        let text = serde_json::to_string(value).unwrap_or_else(|err| {
            log::error!("could not serialize an outgoing frame: {err}");
            String::from("null")
        });
        Frame(Utf8Bytes::from(text))
    }

    /// A frame from text serialized elsewhere (another node, through the broker); `None` when it
    /// is not UTF-8.
    pub fn from_bytes(bytes: &[u8]) -> Option<Frame> {
        std::str::from_utf8(bytes).ok().map(|text| Frame(Utf8Bytes::from(text.to_owned())))
    }

    /// A frame of `text` as it is, not necessarily JSON: the SockJS protocol test application
    /// echoes whatever its clients send.
    pub(crate) fn text(text: &str) -> Frame {
        Frame(Utf8Bytes::from(text))
    }

    /// A frame from text already serialized as one JSON document.
    pub fn from_text(text: String) -> Frame {
        Frame(Utf8Bytes::from(text))
    }

    /// The frame's size in bytes, used for the outgoing-queue bound.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the frame is empty (never, for a serialized JSON document).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The frame as text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The underlying buffer, for the WebSocket writer.
    pub fn into_inner(self) -> Utf8Bytes {
        self.0
    }
}
