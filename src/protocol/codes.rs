//! WebSocket close codes the server sends, and what a client should do on each.
//!
//! The server sends standard codes (RFC 6455, 1000–1015), which any WebSocket client
//! understands, and one code of the application range. A client should reconnect after
//! [`GOING_AWAY`] (the server restarts) and after [`POLICY_VIOLATION`] (it fell behind:
//! reconnect and resync); after [`MESSAGE_TOO_BIG`] reconnecting and resending the same frame
//! would fail again, so it should reconnect without repeating the frame.
//!
//! The application range 4500–4999 is reserved for closes that mean "do not reconnect": the
//! server ends a connection for good. It sends [`REVOKED`] when the web application revokes the
//! connection's identity; the TypeScript client (`js/src/codes.ts`) does not reconnect after any
//! code of the range. `tests/fixtures/protocol/close-codes.json` is the table both sides are tested against:
//! every constant here must be listed there (`tests/transcripts.rs`), and docs/protocol.md
//! ("Connection health and close codes") says the same.

/// Normal closure, used when the client closed first.
pub const NORMAL: u16 = 1000;
/// The server is shutting down (graceful shutdown). Reconnect with backoff.
pub const GOING_AWAY: u16 = 1001;
/// A frame that breaks the WebSocket protocol (RFC 6455 section 7.4.1): unmasked, a reserved
/// opcode or bit, a control frame over 125 bytes or fragmented, a continuation with nothing to
/// continue. Do not resend it.
pub const PROTOCOL_ERROR: u16 = 1002;
/// A text frame that is not valid UTF-8 (RFC 6455 section 7.4.1). Do not resend it.
pub const INVALID_PAYLOAD: u16 = 1007;
/// The connection's outgoing queue overflowed because the client stopped reading. Reconnect and
/// resync: messages were dropped.
pub const POLICY_VIOLATION: u16 = 1008;
/// The client sent a frame larger than the configured maximum.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// The connection's identity was revoked (the user logged out, or was locked out): the
/// application range 4500–4999 means "do not reconnect". Connecting again needs a new token.
pub const REVOKED: u16 = 4501;
