//! Python handles of the built-in services.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::convert::service_options;
use super::policy::PyPolicy;
use crate::service::AnyService;
use crate::services::connections::ConnectionsBackend;
use crate::services::limits::PubSubLimits;
use crate::services::pubsub::{PubSubBackend, PubSubService};

/// The browser-facing PubSub service.
#[pyclass(module = "snorky._core", name = "PubSubService", frozen)]
pub struct PyPubSubService {
    pub(crate) inner: PubSubService,
}

#[pymethods]
impl PyPubSubService {
    #[new]
    #[pyo3(signature = (name, can_publish=None, options=None))]
    fn py_new(
        name: String,
        can_publish: Option<Py<PyAny>>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<PyPubSubService> {
        let limits: PubSubLimits = service_options(options, "PubSub")?;
        let mut inner = PubSubService::with_limits(name, limits);
        if let Some(callable) = can_publish {
            inner = inner.with_publish_policy(std::sync::Arc::new(PyPolicy::new(callable)));
        }
        Ok(PyPubSubService { inner })
    }

    /// The service name.
    #[getter]
    fn name(&self) -> String {
        crate::service::Service::name(&self.inner).to_owned()
    }

    /// Publishes from Python, in-process; returns the number of subscribers reached.
    fn publish(&self, py: Python<'_>, channel: &Bound<'_, PyAny>, message: &Bound<'_, PyAny>) -> PyResult<usize> {
        let channel: serde_json::Value = pythonize::depythonize(channel)?;
        let message: serde_json::Value = pythonize::depythonize(message)?;
        py.detach(|| self.inner.hub().publish_blocking(&channel, &message))
            .map_err(|err| super::ServerError::new_err(format!("publish failed: {err}")))
    }
}

/// The web application's PubSub service.
#[pyclass(module = "snorky._core", name = "PubSubBackend", frozen)]
pub struct PyPubSubBackend {
    pub(crate) inner: PubSubBackend,
}

#[pymethods]
impl PyPubSubBackend {
    #[new]
    fn py_new(name: String, frontend: PyRef<'_, PyPubSubService>) -> PyPubSubBackend {
        PyPubSubBackend { inner: PubSubBackend::new(name, &frontend.inner) }
    }

    /// The service name.
    #[getter]
    fn name(&self) -> String {
        crate::service::Service::name(&self.inner).to_owned()
    }
}

/// Extracts the Rust service behind any of the service handles.
/// The web application's control over connections: `disconnect` revokes an identity.
#[pyclass(module = "snorky._core", name = "ConnectionsBackend", frozen)]
pub struct PyConnectionsBackend {
    pub(crate) inner: ConnectionsBackend,
}

#[pymethods]
impl PyConnectionsBackend {
    #[new]
    fn py_new(name: String) -> PyConnectionsBackend {
        PyConnectionsBackend { inner: ConnectionsBackend::new(name) }
    }

    /// The service name.
    #[getter]
    fn name(&self) -> String {
        crate::service::Service::name(&self.inner).to_owned()
    }
}

pub fn extract_service(object: &Bound<'_, PyAny>) -> PyResult<AnyService> {
    if let Ok(service) = object.cast::<PyPubSubService>() {
        return Ok(AnyService::PubSub(service.get().inner.clone()));
    }
    if let Ok(service) = object.cast::<PyPubSubBackend>() {
        return Ok(AnyService::PubSubBackend(service.get().inner.clone()));
    }
    if let Ok(service) = object.cast::<super::datasync::PyDataSyncService>() {
        return Ok(AnyService::DataSync(service.get().inner.clone()));
    }
    if let Ok(service) = object.cast::<super::datasync::PyDataSyncBackend>() {
        return Ok(AnyService::DataSyncBackend(service.get().inner.clone()));
    }
    if let Ok(service) = object.cast::<super::rpc::PyExternalService>() {
        return Ok(AnyService::External(service.get().inner.clone()));
    }
    if let Ok(service) = object.cast::<super::collab::PyChatService>() {
        return Ok(AnyService::Chat(service.get().inner.clone()));
    }
    if let Ok(service) = object.cast::<super::collab::PyCursorsService>() {
        return Ok(AnyService::Cursors(service.get().inner.clone()));
    }
    if let Ok(service) = object.cast::<super::collab::PyMessagingService>() {
        return Ok(AnyService::Messaging(service.get().inner.clone()));
    }
    if let Ok(service) = object.cast::<PyConnectionsBackend>() {
        return Ok(AnyService::Connections(service.get().inner.clone()));
    }
    Err(super::ConfigurationError::new_err(format!(
        "{} is not a Snorky service (expected PubSubService, PubSubBackend, ...)",
        object.repr()?
    )))
}
