//! `snorky._core.BackendClient`: the fast backend client for the web application.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde_json::{Map, Value};

use super::convert::backend_error;
use crate::backend_client::BackendClient;

/// The runtime and client of one process. Rebuilt after a fork (gunicorn `--preload`, Celery
/// prefork): runtime threads and pooled sockets do not survive `fork()`.
struct PerProcess {
    pid: u32,
    runtime: Arc<ClientRuntime>,
    client: BackendClient,
}

/// The client's runtime, shut down without waiting when dropped. The last reference may be
/// dropped with the GIL held (by Python's garbage collector, or at the end of a call), while a
/// runtime thread needs the GIL to finish (its logging goes to Python's `logging`): waiting for
/// the threads there would deadlock. Nothing of a finished call is left for them to do.
struct ClientRuntime(Option<tokio::runtime::Runtime>);

impl ClientRuntime {
    fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        match &self.0 {
            Some(runtime) => runtime.block_on(future),
            None => unreachable!("the runtime is only taken when the ClientRuntime is dropped"),
        }
    }

    /// Stops the runtime, waiting up to `timeout` for its threads to finish what they were doing.
    /// Called with the GIL released, so a thread that logs (through Python's `logging`) can.
    fn shut_down(mut self, timeout: Duration) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_timeout(timeout);
        }
    }
}

impl Drop for ClientRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// A runtime for a backend client's calls: one worker thread of its own, not a runtime that runs
/// only while a call is in flight. The pooled connections' tasks must run between calls too, so
/// that a connection the other side closed meanwhile (the server's keep-alive limit, a node killed
/// behind a load balancer) leaves the pool before the next request is written into it and lost.
pub(super) fn client_runtime(thread_name: &str) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name(thread_name).enable_all().build()
}

/// A pooled HTTP client for `POST /backend`.
#[pyclass(module = "snorky._core", name = "BackendClient", frozen)]
pub struct PyBackendClient {
    url: String,
    key: String,
    timeout: Duration,
    state: Mutex<Option<PerProcess>>,
}

#[pymethods]
impl PyBackendClient {
    #[new]
    #[pyo3(signature = (url, key, timeout=10.0))]
    fn py_new(url: String, key: String, timeout: f64) -> PyResult<PyBackendClient> {
        let timeout = super::datasync::seconds(timeout, "timeout")?;
        // Validate the URL and key now, not at the first call.
        BackendClient::new(&url, &key, timeout).map_err(backend_error)?;
        Ok(PyBackendClient { url, key, timeout, state: Mutex::new(None) })
    }

    /// The backend URL.
    #[getter]
    fn url(&self) -> &str {
        &self.url
    }

    /// Calls `command` of `service` with `params` (a dict); returns the reply's data.
    #[pyo3(signature = (service, command, params=None))]
    fn call<'py>(
        &self,
        py: Python<'py>,
        service: &str,
        command: &str,
        params: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let params: Map<String, Value> = match params {
            Some(params) => pythonize::depythonize(params.as_any())?,
            None => Map::new(),
        };
        let (runtime, client) = self.per_process()?;
        let result = py.detach(|| runtime.block_on(client.call(service, command, &params)));
        let data = result.map_err(backend_error)?;
        Ok(pythonize::pythonize(py, &data)?)
    }

    /// Closes the pooled connections and stops the client's threads, waiting up to `timeout`
    /// seconds for them; the next call starts them again. Meant for the interpreter's exit: a
    /// thread still running while Python finalizes must not need the GIL (to log), or the process
    /// crashes.
    #[pyo3(signature = (timeout=1.0))]
    fn close(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let timeout = super::datasync::seconds(timeout, "timeout")?;
        let taken = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        let Some(PerProcess { pid, runtime, client }) = taken else { return Ok(()) };
        drop(client);
        // Another thread's call still holds the runtime (or it is a parent process's): it is left
        // to stop when that call drops it.
        if pid == std::process::id() {
            if let Ok(runtime) = Arc::try_unwrap(runtime) {
                py.detach(|| runtime.shut_down(timeout));
            }
        }
        Ok(())
    }
}

impl PyBackendClient {
    fn per_process(&self) -> PyResult<(Arc<ClientRuntime>, BackendClient)> {
        let pid = std::process::id();
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(current) = state.as_ref().filter(|current| current.pid == pid) {
            return Ok((Arc::clone(&current.runtime), current.client.clone()));
        }
        let runtime = client_runtime("snorky-backend-client")
            .map_err(|err| super::ServerError::new_err(format!("cannot start the client runtime: {err}")))?;
        let runtime = Arc::new(ClientRuntime(Some(runtime)));
        let client = BackendClient::new(&self.url, &self.key, self.timeout).map_err(backend_error)?;
        *state = Some(PerProcess { pid, runtime: Arc::clone(&runtime), client: client.clone() });
        Ok((runtime, client))
    }
}
