//! The wire contract (docs/protocol.md): envelopes, RPC requests and replies, parameter extraction,
//! the error texts clients see, WebSocket close codes, and the format of timestamps.
//!
//! Nothing here does I/O; the server feeds text in and gets typed values or ready-to-send frames
//! out, so every rule is testable without a socket.

pub mod codes;
pub mod defaults;
pub mod envelope;
pub mod errors;
pub mod frame;
pub mod params;
pub mod rpc;
pub mod timestamp;

pub use envelope::{Envelope, EnvelopeError};
pub use frame::Frame;
pub use params::Params;
pub use rpc::{Request, RequestError, RpcError};
