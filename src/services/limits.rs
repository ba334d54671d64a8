//! The bounds of the built-in services: how much one connection may make a service hold, and
//! how large the values it keys state by may be. Every default is far above what a real
//! application needs and low enough that a hostile client cannot exhaust the server's memory
//! with one connection (the connection caps bound how many connections there are).
//!
//! Sizes are measured as JSON with [`json_size`] (an estimate within a few bytes); names as
//! UTF-8 bytes. Each struct deserializes from the Python keyword arguments of its service,
//! refusing unknown names.

use serde::Deserialize;
use serde_json::Value;

use crate::protocol::RpcError;
use crate::value::json_size;

/// PubSub's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PubSubLimits {
    /// The most channels one connection may subscribe to ("Too many subscriptions").
    pub max_subscriptions: usize,
    /// The largest channel, as JSON bytes ("Channel too large").
    pub max_channel_size: usize,
}

impl Default for PubSubLimits {
    /// 1,000 subscriptions of channels up to 1 KiB.
    fn default() -> Self {
        PubSubLimits { max_subscriptions: 1_000, max_channel_size: 1024 }
    }
}

/// Chat's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChatLimits {
    /// The most channels one connection may join ("Too many channels").
    pub max_channels: usize,
    /// The largest channel, as JSON bytes ("Channel too large").
    pub max_channel_size: usize,
}

impl Default for ChatLimits {
    /// 100 channels of up to 1 KiB.
    fn default() -> Self {
        ChatLimits { max_channels: 100, max_channel_size: 1024 }
    }
}

/// Cursors' bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CursorsLimits {
    /// The most documents one connection may join ("Too many documents").
    pub max_documents: usize,
    /// The largest document value, as JSON bytes ("Document too large").
    pub max_document_size: usize,
    /// The most cursors one connection may own ("Too many cursors").
    pub max_cursors: usize,
    /// The largest cursor: its private handle, position and status together, as JSON bytes
    /// ("Cursor too large").
    pub max_cursor_size: usize,
}

impl Default for CursorsLimits {
    /// 100 documents of up to 1 KiB, 16 cursors of up to 4 KiB.
    fn default() -> Self {
        CursorsLimits { max_documents: 100, max_document_size: 1024, max_cursors: 16, max_cursor_size: 4096 }
    }
}

/// Messaging's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MessagingLimits {
    /// The most names one connection may register ("Too many names").
    pub max_names: usize,
    /// The longest name, in UTF-8 bytes ("Name too long").
    pub max_name_length: usize,
    /// The most names registered on the service at once ("Too many participants"); it also
    /// bounds the size of a `listParticipants` reply.
    pub max_participants: usize,
}

impl Default for MessagingLimits {
    /// 16 names of up to 256 bytes per connection, 10,000 names in all (a `listParticipants`
    /// reply of at most about 2.6 MB).
    fn default() -> Self {
        MessagingLimits { max_names: 16, max_name_length: 256, max_participants: 10_000 }
    }
}

/// Refuses `value` with `error` when it is larger than `max` bytes of JSON.
pub fn check_size(value: &Value, max: usize, error: RpcError) -> Result<(), RpcError> {
    if json_size(value) > max {
        Err(error)
    } else {
        Ok(())
    }
}
