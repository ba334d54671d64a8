//! The entry points of the fuzz targets (fuzz/, cargo-fuzz), behind the `fuzzing` feature and
//! hidden from the documentation: not part of the public API.
//!
//! Each entry point takes the fuzzer's bytes and drives the server's own code with them:
//! real services, the WebSocket endpoint's dispatch, the `POST /backend` handler, the token
//! check of the handshake. A failed check panics, which libFuzzer reports as a crash; the same
//! functions replay the committed corpora in `cargo test` (tests/fuzz_corpus.rs).
//!
//! - [`frame`]: text frames of several clients, as raw bytes.
//! - [`rpc`]: requests for every command of every service, frontend and backend, with every
//!   parameter present, missing or of any type.
//! - [`backend`]: `POST /backend` bodies (raw, and `publishDeltas`, `authorizeSubscription` and
//!   the other commands with arbitrary arguments); published deltas must reach a subscriber
//!   exactly as sent, or not at all.
//! - [`filter`]: filter expressions against objects, and routing: `Router::route` must equal
//!   `Router::route_naive`.
//! - [`token`]: the `?token=` query string of the WebSocket handshake.
//!
//! Inputs are bounded only by libFuzzer's `-max_len`; what a target builds from them is
//! bounded by the generators in `gen` and by the server's own limits.

mod backend;
mod filter;
mod frame;
mod gen;
mod rpc;
mod server;
mod token;

pub use backend::backend;
pub use filter::filter;
pub use frame::frame;
pub use rpc::rpc;
pub use token::token;

/// A fuzz target's entry point: one input, any bytes.
pub type Target = fn(&[u8]);

/// The fuzz targets, by name: what `cargo fuzz run <name>` runs and tests/fuzz_corpus.rs
/// replays from fuzz/corpus/<name>/ and fuzz/regressions/<name>/.
pub const TARGETS: &[(&str, Target)] =
    &[("frame", frame), ("rpc", rpc), ("backend", backend), ("filter", filter), ("token", token)];
