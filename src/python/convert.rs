//! Rust errors → Python exceptions, in one place.

use pyo3::PyErr;

use super::{BackendError as PyBackendError, ConfigurationError, ServerError, SnorkyConnectionError};
use crate::backend_client::BackendError;
use crate::error::Error;

/// Maps a server error to its Python exception.
pub fn server_error(err: Error) -> PyErr {
    match err {
        Error::Config(text) => ConfigurationError::new_err(text),
        Error::Bind { .. } => ConfigurationError::new_err(err.to_string()),
        Error::Io(_) => ServerError::new_err(err.to_string()),
    }
}

/// Maps a backend call failure to its Python exception.
pub fn backend_error(err: BackendError) -> PyErr {
    match err {
        BackendError::Rpc(text) => PyBackendError::new_err(text),
        BackendError::Refused { .. } | BackendError::Protocol(_) => PyBackendError::new_err(err.to_string()),
        BackendError::Connection { .. } => SnorkyConnectionError::new_err(err.to_string()),
        BackendError::Config(text) => ConfigurationError::new_err(text),
    }
}
