//! `snorky._core.connection_token`: issues the connection token a browser passes as
//! `/ws?token=...` (docs/protocol.md "Identity"), so the web application needs no JWT library.

use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use serde_json::Value;

use crate::tokens;

/// The shortest secret accepted, as the server's `token_secret` check demands.
const MIN_SECRET_LEN: usize = 16;

/// Returns a connection token (an HS256 JWT) proving `identity` for `ttl` seconds, signed with
/// `secret` (the server's `token_secret`). `info`, a dict, reaches services as public data about
/// the user; one that would make the token longer than the server accepts (8 KiB) is a
/// `ValueError`.
#[pyfunction]
#[pyo3(signature = (identity, secret, ttl=3600, info=None))]
pub fn connection_token(identity: &str, secret: &str, ttl: i64, info: Option<&Bound<'_, PyAny>>) -> PyResult<String> {
    if identity.is_empty() {
        return Err(PyValueError::new_err("identity must be a non-empty string"));
    }
    if secret.len() < MIN_SECRET_LEN {
        return Err(PyValueError::new_err("secret must be at least 16 characters (the server refuses shorter ones)"));
    }
    let ttl = u64::try_from(ttl)
        .ok()
        .filter(|&ttl| ttl > 0)
        .ok_or_else(|| PyValueError::new_err("ttl must be a positive number of seconds"))?;
    let info = match info {
        None => None,
        Some(info) if info.is_none() => None,
        Some(info) => match pythonize::depythonize::<Value>(info) {
            Ok(Value::Object(map)) => Some(map),
            Ok(_) => return Err(PyTypeError::new_err("info must be a dict (or None)")),
            Err(err) => return Err(PyValueError::new_err(format!("info must be JSON-serializable: {err}"))),
        },
    };
    tokens::issue(identity, secret.as_bytes(), Duration::from_secs(ttl), info.as_ref())
        .map_err(|err| PyValueError::new_err(err.to_string()))
}
