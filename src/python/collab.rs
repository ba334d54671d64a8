//! Python handles of the collaboration services: Chat, Cursors, Messaging.
//!
//! Each takes its policy hook as an optional callable; `python/snorky/services.py` passes one
//! only when a subclass overrides the method, so the default costs no Python call.

use std::sync::Arc;

use pyo3::prelude::*;

use super::policy::PyPolicy;
use crate::service::Service;
use crate::services::chat::ChatService;
use crate::services::cursors::CursorsService;
use crate::services::messaging::MessagingService;

/// The Chat service.
#[pyclass(module = "snorky._core", name = "ChatService", frozen)]
pub struct PyChatService {
    pub(crate) inner: ChatService,
}

#[pymethods]
impl PyChatService {
    #[new]
    #[pyo3(signature = (name, can_join=None))]
    fn py_new(name: String, can_join: Option<Py<PyAny>>) -> PyChatService {
        let mut inner = ChatService::new(name);
        if let Some(callable) = can_join {
            inner = inner.with_join_policy(Arc::new(PyPolicy::new(callable)));
        }
        PyChatService { inner }
    }

    /// The service name.
    #[getter]
    fn name(&self) -> String {
        self.inner.name().to_owned()
    }

    /// The identities present in `channel`, sorted.
    fn members(&self, py: Python<'_>, channel: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
        let channel: serde_json::Value = pythonize::depythonize(channel)?;
        Ok(py.detach(|| self.inner.members(&channel)))
    }
}

/// The Cursors service.
#[pyclass(module = "snorky._core", name = "CursorsService", frozen)]
pub struct PyCursorsService {
    pub(crate) inner: CursorsService,
}

#[pymethods]
impl PyCursorsService {
    #[new]
    #[pyo3(signature = (name, can_join=None))]
    fn py_new(name: String, can_join: Option<Py<PyAny>>) -> PyCursorsService {
        let mut inner = CursorsService::new(name);
        if let Some(callable) = can_join {
            inner = inner.with_join_policy(Arc::new(PyPolicy::new(callable)));
        }
        PyCursorsService { inner }
    }

    /// The service name.
    #[getter]
    fn name(&self) -> String {
        self.inner.name().to_owned()
    }

    /// The number of cursors in `document`.
    fn cursor_count(&self, py: Python<'_>, document: &Bound<'_, PyAny>) -> PyResult<usize> {
        let document: serde_json::Value = pythonize::depythonize(document)?;
        Ok(py.detach(|| self.inner.cursor_count(&document)))
    }
}

/// The Messaging service.
#[pyclass(module = "snorky._core", name = "MessagingService", frozen)]
pub struct PyMessagingService {
    pub(crate) inner: MessagingService,
}

#[pymethods]
impl PyMessagingService {
    #[new]
    #[pyo3(signature = (name, is_name_allowed=None))]
    fn py_new(name: String, is_name_allowed: Option<Py<PyAny>>) -> PyMessagingService {
        let mut inner = MessagingService::new(name);
        if let Some(callable) = is_name_allowed {
            inner = inner.with_name_policy(Arc::new(PyPolicy::new(callable)));
        }
        PyMessagingService { inner }
    }

    /// The service name.
    #[getter]
    fn name(&self) -> String {
        self.inner.name().to_owned()
    }

    /// Every registered participant name, sorted by code point.
    fn participants(&self, py: Python<'_>) -> Vec<String> {
        py.detach(|| self.inner.participants())
    }
}
