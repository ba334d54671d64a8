//! Python handles of the collaboration services: Chat, Cursors, Messaging.
//!
//! Each takes its policy hook as an optional callable; `python/snorky/services.py` passes one
//! only when a subclass overrides the method, so the default costs no Python call.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::convert::service_options;
use super::policy::PyPolicy;
use crate::service::Service;
use crate::services::chat::ChatService;
use crate::services::cursors::CursorsService;
use crate::services::limits::{ChatLimits, CursorsLimits, MessagingLimits};
use crate::services::messaging::MessagingService;

/// The Chat service.
#[pyclass(module = "snorky._core", name = "ChatService", frozen)]
pub struct PyChatService {
    pub(crate) inner: ChatService,
}

#[pymethods]
impl PyChatService {
    #[new]
    #[pyo3(signature = (name, can_join=None, options=None))]
    fn py_new(
        name: String,
        can_join: Option<Py<PyAny>>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<PyChatService> {
        let limits: ChatLimits = service_options(options, "Chat")?;
        let mut inner = ChatService::with_limits(name, limits);
        if let Some(callable) = can_join {
            inner = inner.with_join_policy(Arc::new(PyPolicy::new(callable)));
        }
        Ok(PyChatService { inner })
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
    #[pyo3(signature = (name, can_join=None, options=None))]
    fn py_new(
        name: String,
        can_join: Option<Py<PyAny>>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<PyCursorsService> {
        let limits: CursorsLimits = service_options(options, "Cursors")?;
        let mut inner = CursorsService::with_limits(name, limits);
        if let Some(callable) = can_join {
            inner = inner.with_join_policy(Arc::new(PyPolicy::new(callable)));
        }
        Ok(PyCursorsService { inner })
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
    #[pyo3(signature = (name, is_name_allowed=None, options=None))]
    fn py_new(
        name: String,
        is_name_allowed: Option<Py<PyAny>>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<PyMessagingService> {
        let limits: MessagingLimits = service_options(options, "Messaging")?;
        let mut inner = MessagingService::with_limits(name, limits);
        if let Some(callable) = is_name_allowed {
            inner = inner.with_name_policy(Arc::new(PyPolicy::new(callable)));
        }
        Ok(PyMessagingService { inner })
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
