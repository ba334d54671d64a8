//! Rust errors → Python exceptions, in one place.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyString};
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

/// Maps a backend call failure to its Python exception. `BackendError` instances carry `status`:
/// the HTTP status when the server refused the request (401 wrong key, 400 malformed, ...), or
/// None for an error reply of the service.
pub fn backend_error(err: BackendError) -> PyErr {
    match err {
        BackendError::Rpc(text) => with_status(PyBackendError::new_err(text), None),
        BackendError::Refused { status, .. } => with_status(PyBackendError::new_err(err.to_string()), Some(status)),
        BackendError::Protocol(_) => with_status(PyBackendError::new_err(err.to_string()), None),
        BackendError::Connection { .. } => SnorkyConnectionError::new_err(err.to_string()),
        BackendError::Config(text) => ConfigurationError::new_err(text),
    }
}

fn with_status(err: PyErr, status: Option<u16>) -> PyErr {
    Python::attach(|py| {
        if let Err(failed) = err.value(py).setattr("status", status) {
            log::debug!("could not set BackendError.status: {failed}");
        }
    });
    err
}

/// A service's options (its Python keyword arguments) as its limits struct; an unknown name or
/// a wrong type is a `ConfigurationError` naming the service.
pub fn service_options<T: serde::de::DeserializeOwned + Default>(
    options: Option<&Bound<'_, PyDict>>,
    service: &str,
) -> PyResult<T> {
    match options {
        Some(options) => options_from_dict(options, service),
        None => Ok(T::default()),
    }
}

/// Python's `True` is an `int`, so pythonize reads it as 1 where an option is a number, and
/// `max_connections=True` would quietly allow one connection. A boolean is refused for an option
/// that takes the number 2 but not a word: a switch (strict or read by its truth) and an
/// any-value option take both, so they keep their booleans.
fn refuse_booleans_for_numbers<T: serde::de::DeserializeOwned>(
    options: &Bound<'_, PyDict>,
    what: &str,
) -> PyResult<()> {
    let py = options.py();
    let accepts = |name: &Bound<'_, PyAny>, probe: &Bound<'_, PyAny>| -> PyResult<bool> {
        let alone = PyDict::new(py);
        alone.set_item(name, probe)?;
        Ok(pythonize::depythonize::<T>(alone.as_any()).is_ok())
    };
    let two = 2_i64.into_pyobject(py)?.into_any();
    let word = PyString::new(py, "word").into_any();
    for (name, value) in options.iter() {
        if value.is_instance_of::<PyBool>() && accepts(&name, &two)? && !accepts(&name, &word)? {
            return Err(ConfigurationError::new_err(format!(
                "invalid {what} option {name}={}: expected a number, not a boolean",
                value.repr()?
            )));
        }
    }
    Ok(())
}

/// Options given as Python keyword arguments, as the struct they configure (every field with a
/// default). A value of the wrong type is a `ConfigurationError` that names its option and
/// quotes the value (not a secret's, nor an unknown name's): the conversion's own error does not
/// say which option it was, so when the whole dict fails, each option is converted alone to find
/// the one that did.
pub fn options_from_dict<T: serde::de::DeserializeOwned>(options: &Bound<'_, PyDict>, what: &str) -> PyResult<T> {
    refuse_booleans_for_numbers::<T>(options, what)?;
    let whole = match pythonize::depythonize(options.as_any()) {
        Ok(parsed) => return Ok(parsed),
        Err(err) => err,
    };
    let py = options.py();
    for (name, value) in options.iter() {
        let alone = PyDict::new(py);
        alone.set_item(&name, &value)?;
        if let Err(err) = pythonize::depythonize::<T>(alone.as_any()) {
            // Errors end up in logs: the value of an unknown name (a misspelt secret, `API_KEY`,
            // `redis_url`) is not quoted, nor is a secret given with the wrong type.
            if err.to_string().starts_with("unknown field") {
                return Err(ConfigurationError::new_err(format!("invalid {what} option {name}: {err}")));
            }
            let name_text = name.to_string().to_lowercase();
            let secret =
                ["key", "secret", "token", "password", "broker", "url"].iter().any(|word| name_text.contains(word));
            let shown = if secret {
                "...".to_owned()
            } else {
                value.repr().map_or_else(|_| "?".to_owned(), |repr| repr.to_string_lossy().into_owned())
            };
            let shown = if shown.chars().count() > 80 {
                format!("{}...", shown.chars().take(80).collect::<String>())
            } else {
                shown
            };
            return Err(ConfigurationError::new_err(format!("invalid {what} option {name}={shown}: {err}")));
        }
    }
    Err(ConfigurationError::new_err(format!("invalid {what} option: {whole}")))
}
