//! Policy hooks implemented by Python callables, run on blocking worker threads.

use std::sync::Arc;

use pyo3::prelude::*;
use serde_json::Value;

use super::client::PyClient;
use crate::connection::Connection;
use crate::service::{Policy, PolicyFuture};

/// A Python callable `(client, subject) -> bool` used as a [`Policy`].
#[derive(Debug)]
pub struct PyPolicy {
    /// Shared so the future can own it without touching the GIL to clone a `Py`.
    callable: Arc<Py<PyAny>>,
}

impl PyPolicy {
    /// Wraps a callable.
    pub fn new(callable: Py<PyAny>) -> PyPolicy {
        PyPolicy { callable: Arc::new(callable) }
    }
}

impl Policy for PyPolicy {
    fn decide(&self, connection: &Arc<Connection>, subject: &Value) -> PolicyFuture {
        let callable = Arc::clone(&self.callable);
        let connection = Arc::clone(connection);
        let subject = subject.clone();
        Box::pin(async move {
            // The user's code may block (a database query, a sleep): run it where blocking is
            // allowed, holding the GIL only for the call.
            let outcome = tokio::task::spawn_blocking(move || {
                super::exit::attach(|py| {
                    let decide = || {
                        let client = Py::new(py, PyClient { connection })?;
                        let subject = pythonize::pythonize(py, &subject)?;
                        callable.call1(py, (client, subject))?.bind(py).is_truthy()
                    };
                    decide().map_err(|err| describe(py, &err))
                })
                .unwrap_or_else(|| Err(super::exit::NOT_CALLED_AT_EXIT.to_owned()))
            })
            .await;
            match outcome {
                Ok(result) => result,
                Err(join) => Err(format!("hook thread failed: {join}")),
            }
        })
    }
}

/// The exception with its traceback, for the log.
pub fn describe(py: Python<'_>, err: &PyErr) -> String {
    let formatted = py.import("traceback").and_then(|traceback| {
        let lines = traceback.call_method1("format_exception", (err.clone_ref(py),))?;
        let text: String = pyo3::types::PyString::new(py, "").call_method1("join", (lines,))?.extract()?;
        Ok::<_, PyErr>(text)
    });
    formatted.unwrap_or_else(|_| err.to_string())
}
