//! The crate's top-level error: what can go wrong starting or running a server.

/// Errors of server set-up and operation. RPC failures are not here: they are
/// [`crate::protocol::RpcError`] replies, not failures of the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is wrong; the text says what to set.
    #[error("{0}")]
    Config(String),
    /// A listener could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address asked for.
        address: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Another I/O failure.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
