//! Snorky: live data for Django. This crate is the server core (WebSocket frontend, HTTP
//! backend, the built-in services) and, behind the `python` feature, the `snorky._core`
//! extension module.
//!
//! - [`protocol`]: the wire contract: envelopes, RPC, error texts, close codes.
//! - [`connection`]: one client as services see it, with its bounded outgoing queue.
//! - [`connections`]: a server's table of open connections: caps, lookup by identity, and
//!   revocation.
//! - [`service`] and [`registry`]: the `Service` trait and the name → service maps.
//! - [`services`]: PubSub, Chat, Cursors, Messaging and the other built-in services.
//! - [`tokens`]: connection tokens (JWT HS256), which give a connection its identity.
//! - [`datasync`]: subscriptions, dealers, filters and deltas.
//! - [`server`]: the axum listeners, health, metrics and shutdown.
//! - [`metrics`]: the Prometheus counters and gauges a server keeps, which services update.
//! - [`value`]: JSON value semantics shared by channels, keys and filters.
//! - [`backend_client`]: the fast HTTP client the web application uses.
//! - [`send_queue`]: the bounded, ordered queue of Django's direct-delivery sender thread.
//! - [`broker`]: several nodes sharing one Redis: channels, shared state, node liveness.
//! - [`revocation`]: revocations shared by the nodes of a cluster.
//! - [`error`]: the crate's [`Error`] (configuration, binding, I/O).
//! - [`seconds`]: duration settings, checked so that none can overflow a clock.
//! - [`sync`]: locking the std `Mutex`es that guard service state, recovering from poisoning.
//! - `fuzzing` (behind the `fuzzing` feature, hidden): the entry points of the fuzz targets.
//! - `python` (behind the `python` feature): the pyo3 bindings, the extension module
//!   `snorky._core`; the only module that uses pyo3.
//!
//! The wire protocol these modules implement is described in `docs/protocol.md`.

// No unsafe code in the core (the workspace lint only denies it, for the benchmark's sake).
#![forbid(unsafe_code)]

pub mod address_counts;
pub mod backend_client;
pub mod broker;
pub mod connection;
pub mod connections;
pub mod datasync;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod protocol;
pub mod registry;
pub mod revocation;
pub mod seconds;
pub mod send_queue;
pub mod server;
pub mod service;
pub mod services;
pub mod sync;
pub mod tokens;
pub mod value;

#[cfg(feature = "python")]
mod python;

pub use error::Error;
pub use registry::ServiceRegistry;
pub use server::{BoundServer, Server, ServerConfig};
