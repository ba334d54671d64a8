//! Python services: `snorky._core.ExternalService` (the handle an `RPCService` holds) and
//! `snorky._core.Request` (one call, answerable once, from any thread).

use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde_json::Value;

use super::client::PyClient;
use super::policy::describe;
use super::ConfigurationError;
use crate::connection::Connection;
use crate::protocol::RpcError;
use crate::service::Side;
use crate::services::external::{BoxFuture, ExternalCall, ExternalHandler, ExternalService, Responder};
use tokio_util::sync::CancellationToken;

/// Calls into a Python `RPCService` object: `_dispatch(request)`, `client_connected(client)`,
/// `client_disconnected(client)`, each on a blocking worker thread with the GIL held only there.
#[derive(Debug)]
struct PyHandler {
    target: Arc<Py<PyAny>>,
    connection_events: bool,
    name: String,
}

impl PyHandler {
    fn call_hook(target: &Py<PyAny>, name: &str, hook: &str, connection: Arc<Connection>) {
        let called = super::exit::attach(|py| {
            let outcome =
                Py::new(py, PyClient { connection }).and_then(|client| target.call_method1(py, hook, (client,)));
            if let Err(err) = outcome {
                log::error!("service {name:?}: {hook} failed: {}", describe(py, &err));
            }
        });
        if called.is_none() {
            log::debug!("service {name:?}: {hook} {}", super::exit::NOT_CALLED_AT_EXIT);
        }
    }
}

impl ExternalHandler for PyHandler {
    fn dispatch(&self, call: ExternalCall) -> BoxFuture {
        let target = Arc::clone(&self.target);
        let name = self.name.clone();
        Box::pin(async move {
            // Not called once Python exits: the call is dropped with its connection's, which
            // is closing.
            let ran = tokio::task::spawn_blocking(move || {
                super::exit::attach(|py| {
                    let dispatch = || {
                        let request = PyRequest::create(py, call)?;
                        target.call_method1(py, "_dispatch", (request.clone_ref(py),))?;
                        Ok::<_, PyErr>(request)
                    };
                    dispatch()
                        .map_err(|err| log::error!("service {name:?}: dispatch failed: {}", describe(py, &err)))
                        .ok()
                })
                .flatten()
            })
            .await;
            match ran {
                Ok(Some(request)) => watch_for_cancellation(request),
                Ok(None) => {}
                Err(err) => log::error!("a Python service worker failed: {err}"),
            }
        })
    }

    fn connected(&self, connection: &Arc<Connection>) -> BoxFuture {
        let target = Arc::clone(&self.target);
        let name = self.name.clone();
        let connection = Arc::clone(connection);
        Box::pin(async move {
            let hook = move || PyHandler::call_hook(&target, &name, "client_connected", connection);
            if let Err(err) = tokio::task::spawn_blocking(hook).await {
                log::error!("a Python service worker failed: {err}");
            }
        })
    }

    fn disconnected(&self, connection: &Arc<Connection>) {
        let target = Arc::clone(&self.target);
        let name = self.name.clone();
        let connection = Arc::clone(connection);
        // Fire and forget: disconnect clean-up in the core must not wait for user code. (The
        // server's stop waits for it, see `hooks`.)
        super::hooks::spawn(move || PyHandler::call_hook(&target, &name, "client_disconnected", connection));
    }

    fn wants_connection_events(&self) -> bool {
        self.connection_events
    }
}

/// Runs the cancel callbacks of a request that was not answered during its dispatch, if it is
/// cancelled (its connection closed) before it is answered.
fn watch_for_cancellation(request: Py<PyRequest>) {
    let (cancelled, answered) = {
        let state = request.get();
        (state.cancelled.clone(), state.answered_signal.clone())
    };
    if answered.is_cancelled() {
        return;
    }
    tokio::spawn(async move {
        tokio::select! {
            () = answered.cancelled() => {}
            () = cancelled.cancelled() => {
                let run = super::hooks::spawn(move || {
                    super::exit::attach(|py| request.get().run_cancel_callbacks(py));
                });
                if let Err(err) = run.await {
                    log::error!("a Python service worker failed: {err}");
                }
            }
        }
    });
}

/// One call to a Python service. Answer it once with `reply()` or `error()`, from any thread.
#[pyclass(module = "snorky._core", name = "Request", frozen)]
pub struct PyRequest {
    /// The calling client, or None for backend calls.
    #[pyo3(get)]
    client: Option<Py<PyClient>>,
    /// The command name.
    #[pyo3(get)]
    command: String,
    /// The parameters (a dict).
    #[pyo3(get)]
    params: Py<PyDict>,
    /// The request's callId (None when absent).
    #[pyo3(get)]
    call_id: Py<PyAny>,
    responder: Mutex<Option<Responder>>,
    /// Cancelled when nobody waits for the answer any more.
    cancelled: CancellationToken,
    /// Cancelled once the request is answered.
    answered_signal: CancellationToken,
    /// What to call if the request is cancelled before it is answered.
    cancel_callbacks: Mutex<Vec<Py<PyAny>>>,
}

impl PyRequest {
    fn create(py: Python<'_>, call: ExternalCall) -> PyResult<Py<PyRequest>> {
        let client = match call.connection {
            Some(connection) => Some(Py::new(py, PyClient { connection })?),
            None => None,
        };
        let params = pythonize::pythonize(py, &Value::Object(call.params))?.cast_into::<PyDict>()?.unbind();
        let call_id = match &call.call_id {
            Some(call_id) => pythonize::pythonize(py, call_id)?.unbind(),
            None => py.None(),
        };
        let request = PyRequest {
            client,
            command: call.command,
            params,
            call_id,
            responder: Mutex::new(Some(call.responder)),
            cancelled: call.cancelled,
            answered_signal: CancellationToken::new(),
            cancel_callbacks: Mutex::new(Vec::new()),
        };
        Py::new(py, request)
    }

    fn answer(&self, result: Result<Value, RpcError>) -> PyResult<bool> {
        let responder = self.responder.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        match responder {
            Some(responder) => {
                self.answered_signal.cancel();
                self.cancel_callbacks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
                Ok(responder.send(result))
            }
            None => Err(pyo3::exceptions::PyRuntimeError::new_err("this request was already answered")),
        }
    }

    /// Calls (and forgets) the cancel callbacks; a failing one is logged.
    fn run_cancel_callbacks(&self, py: Python<'_>) {
        let callbacks =
            std::mem::take(&mut *self.cancel_callbacks.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for callback in callbacks {
            if let Err(err) = callback.call0(py) {
                log::error!("a cancel callback of request {:?} failed: {}", self.command, describe(py, &err));
            }
        }
    }
}

#[pymethods]
impl PyRequest {
    /// Answers with `data` (any JSON-serializable value). Returns False when the client is gone.
    #[pyo3(signature = (data=None))]
    fn reply(&self, data: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
        let value: Value = match data {
            Some(data) => pythonize::depythonize(data)
                .map_err(|err| pyo3::exceptions::PyTypeError::new_err(format!("reply data is not JSON: {err}")))?,
            None => Value::Null,
        };
        self.answer(Ok(value))
    }

    /// Answers with an error reply whose text is `message`.
    fn error(&self, message: String) -> PyResult<bool> {
        self.answer(Err(RpcError::Service(message.into())))
    }

    /// Whether nobody waits for the answer any more (the calling connection closed).
    #[getter]
    fn cancelled(&self) -> bool {
        self.cancelled.is_cancelled()
    }

    /// Calls `callback()` (on a worker thread) if the request is cancelled before it is
    /// answered; at once if it already is.
    fn on_cancel(&self, py: Python<'_>, callback: Py<PyAny>) -> PyResult<()> {
        if self.cancelled.is_cancelled() {
            callback.call0(py)?;
            return Ok(());
        }
        self.cancel_callbacks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(callback);
        Ok(())
    }

    /// Whether the request was answered.
    #[getter]
    fn answered(&self) -> bool {
        self.responder.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_none()
    }

    fn __repr__(&self) -> String {
        format!("<Request {:?}>", self.command)
    }
}

/// The server-side handle of a Python service.
#[pyclass(module = "snorky._core", name = "ExternalService", frozen)]
pub struct PyExternalService {
    pub(crate) inner: ExternalService,
}

#[pymethods]
impl PyExternalService {
    #[new]
    #[pyo3(signature = (name, target, side="frontend", connection_events=false, max_pending_calls=100))]
    fn py_new(
        name: String,
        target: Py<PyAny>,
        side: &str,
        connection_events: bool,
        max_pending_calls: usize,
    ) -> PyResult<PyExternalService> {
        let side = match side {
            "frontend" => Side::Frontend,
            "backend" => Side::Backend,
            other => {
                return Err(ConfigurationError::new_err(format!(
                    "side must be \"frontend\" or \"backend\", not {other:?}"
                )))
            }
        };
        let handler = PyHandler { target: Arc::new(target), connection_events, name: name.clone() };
        if max_pending_calls == 0 {
            return Err(ConfigurationError::new_err("max_pending_calls must be at least 1"));
        }
        let inner = ExternalService::new(name, side, Arc::new(handler)).with_max_pending(max_pending_calls);
        Ok(PyExternalService { inner })
    }

    /// The service name.
    #[getter]
    fn name(&self) -> String {
        self.inner.name().to_owned()
    }

    /// Pushes `message` to every connected client; returns how many it reached.
    fn broadcast(&self, py: Python<'_>, message: &Bound<'_, PyAny>) -> PyResult<usize> {
        let message: Value = pythonize::depythonize(message)?;
        Ok(py.detach(|| self.inner.broadcast(&message)))
    }

    /// Pushes `message` to `client`; returns False when it is gone.
    fn send_message_to(&self, client: &Bound<'_, PyClient>, message: &Bound<'_, PyAny>) -> PyResult<bool> {
        let message: Value = pythonize::depythonize(message)?;
        Ok(self.inner.send_to(&client.get().connection, &message))
    }

    /// The number of connected clients.
    #[getter]
    fn client_count(&self) -> usize {
        self.inner.client_count()
    }

    /// The number of calls waiting for a deferred answer, over every connection.
    #[getter]
    fn pending_calls(&self) -> usize {
        self.inner.pending_total()
    }
}
