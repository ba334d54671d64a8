//! Reading a request's body, bounded in bytes and in time.
//!
//! A request's head must arrive within `header_read_timeout` (the accept loop's deadline); its
//! body gets `body_read_timeout` as a whole. Without that, a client that announces a large body
//! and trickles it (a byte a second) would hold its socket, a task and whatever its handler holds
//! while reading (a SockJS session's turn to send) for as long as it likes, and enough such
//! clients would use up the process's file descriptors.

use std::time::Duration;

use axum::body::{to_bytes, Body, Bytes};
use http_body_util::LengthLimitError;

/// Why a body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Longer than the limit.
    TooLarge,
    /// Not all there within the deadline.
    TooSlow,
    /// The client went away or sent something that is not a body (a broken chunked encoding).
    Broken,
}

/// Reads `body` whole: at most `limit` bytes, within `deadline`.
pub async fn read(body: Body, limit: usize, deadline: Duration) -> Result<Bytes, BodyError> {
    match tokio::time::timeout(deadline, to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(err)) => {
            Err(if err.into_inner().is::<LengthLimitError>() { BodyError::TooLarge } else { BodyError::Broken })
        }
        Err(_) => Err(BodyError::TooSlow),
    }
}
