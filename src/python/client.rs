//! `snorky._core.Client`: a connection as Python code (policy hooks, Python services) sees it.

use std::sync::Arc;

use pyo3::prelude::*;

use crate::connection::Connection;

/// A connected WebSocket client.
#[pyclass(module = "snorky._core", name = "Client", frozen)]
pub struct PyClient {
    pub(crate) connection: Arc<Connection>,
}

#[pymethods]
impl PyClient {
    /// A process-unique, stable id.
    #[getter]
    fn id(&self) -> u64 {
        self.connection.id()
    }

    /// The identity proven by the connection token, or None for anonymous connections.
    #[getter]
    fn identity(&self) -> Option<String> {
        self.connection.identity().id.clone()
    }

    /// The token's `info` object (public data about the user), or None.
    #[getter]
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match &self.connection.identity().info {
            Some(info) => Ok(pythonize::pythonize(py, info)?),
            None => Ok(py.None().into_bound(py)),
        }
    }

    /// The peer's IP address.
    #[getter]
    fn remote_address(&self) -> String {
        self.connection.remote_address().ip().to_string()
    }

    /// The peer's TCP port.
    #[getter]
    fn remote_port(&self) -> u16 {
        self.connection.remote_address().port()
    }

    fn __repr__(&self) -> String {
        format!(
            "<Client id={} identity={:?} remote={}>",
            self.connection.id(),
            self.connection.identity().id,
            self.connection.remote_address()
        )
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.cast::<PyClient>().is_ok_and(|other| other.get().connection.id() == self.connection.id())
    }

    fn __hash__(&self) -> u64 {
        self.connection.id()
    }
}
