//! `snorky._core.Server` and the handle of a running server.

use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::PyDict;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::convert::{options_from_dict, server_error};
use super::hooks;
use super::services::extract_service;
use super::ServerError;
use crate::error::Error;
use crate::registry::ServiceRegistry;
use crate::server::sockjs::echo::EchoServer;
use crate::server::{Server, ServerConfig};
use crate::service::{AnyService, Side};

/// How long each GIL-free wait lasts before Python gets a chance to deliver signals.
const WAIT_SLICE: Duration = Duration::from_millis(50);

/// How long a stopped server waits for the Python code still running on its threads (the
/// `client_disconnected` hooks of the connections the stop closed, calls in progress): a moment,
/// not forever.
const PYTHON_AT_STOP: Duration = Duration::from_secs(5);

/// A configured server: services plus settings. `start()` binds and serves in the background.
#[pyclass(module = "snorky._core", name = "Server", frozen)]
pub struct PyServer {
    config: ServerConfig,
    frontend: Vec<AnyService>,
    backend: Vec<AnyService>,
}

#[pymethods]
impl PyServer {
    #[new]
    #[pyo3(signature = (frontend, backend, config))]
    fn py_new(
        frontend: Vec<Bound<'_, PyAny>>,
        backend: Vec<Bound<'_, PyAny>>,
        config: &Bound<'_, PyDict>,
    ) -> PyResult<PyServer> {
        let config: ServerConfig = options_from_dict(config, "server")?;
        config.validate().map_err(server_error)?;
        let frontend = frontend.iter().map(extract_service).collect::<PyResult<Vec<_>>>()?;
        let backend = backend.iter().map(extract_service).collect::<PyResult<Vec<_>>>()?;
        // Build the registries once now so naming mistakes fail at construction.
        registries(&frontend, &backend).map_err(server_error)?;
        Ok(PyServer { config, frontend, backend })
    }

    /// Binds both listeners and serves on background threads. Returns once the ports are bound.
    fn start(&self, py: Python<'_>) -> PyResult<PyServerHandle> {
        let (frontend, backend) = registries(&self.frontend, &self.backend).map_err(server_error)?;
        let server = Server::new(self.config.clone(), frontend, backend).map_err(server_error)?;
        let (runtime, python_hooks) = build_runtime()?;
        let bound = py.detach(|| runtime.block_on(server.bind())).map_err(server_error)?;
        let frontend_port = bound.frontend_addr().map_err(server_error)?.port();
        let backend_port = bound.backend_addr().map_err(server_error)?.port();
        PyServerHandle::spawn(runtime, python_hooks, frontend_port, backend_port, move |stop| {
            bound.run(stop.cancelled_owned())
        })
    }
}

/// Starts the SockJS protocol test application (`snorky sockjs-echo`) on `address`; the handle's
/// `frontend_port` is its port (it has no backend: `backend_port` is 0).
#[pyfunction]
pub fn start_sockjs_echo(py: Python<'_>, address: &str) -> PyResult<PyServerHandle> {
    let (runtime, python_hooks) = build_runtime()?;
    let bound = py.detach(|| runtime.block_on(EchoServer::bind(address))).map_err(server_error)?;
    let port = bound.local_addr().map_err(server_error)?.port();
    PyServerHandle::spawn(runtime, python_hooks, port, 0, move |stop| bound.run(stop.cancelled_owned()))
}

/// A server's runtime, and the tracker of the Python hooks its threads start (see `hooks`).
fn build_runtime() -> PyResult<(tokio::runtime::Runtime, TaskTracker)> {
    let python_hooks = TaskTracker::new();
    let tracked = python_hooks.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("snorky-server")
        .on_thread_start(move || hooks::track_on_this_thread(&tracked))
        .build()
        .map_err(|err| ServerError::new_err(format!("cannot start the runtime: {err}")))?;
    Ok((runtime, python_hooks))
}

fn registries(frontend: &[AnyService], backend: &[AnyService]) -> Result<(ServiceRegistry, ServiceRegistry), Error> {
    Ok((
        ServiceRegistry::new(Side::Frontend, frontend.to_vec())?,
        ServiceRegistry::new(Side::Backend, backend.to_vec())?,
    ))
}

/// A running server.
#[pyclass(module = "snorky._core", name = "ServerHandle", frozen)]
pub struct PyServerHandle {
    /// The bound frontend port.
    #[pyo3(get)]
    frontend_port: u16,
    /// The bound backend port.
    #[pyo3(get)]
    backend_port: u16,
    token: CancellationToken,
    thread: Mutex<Option<JoinHandle<Result<(), Error>>>>,
}

#[pymethods]
impl PyServerHandle {
    /// Whether the server is still serving.
    #[getter]
    fn running(&self) -> bool {
        self.lock().as_ref().is_some_and(|thread| !thread.is_finished())
    }

    /// Asks for a graceful shutdown (every client gets 1001) without waiting.
    fn request_stop(&self) {
        self.token.cancel();
    }

    /// Shuts down gracefully and waits up to `timeout` seconds (forever when None).
    /// Returns whether the server has stopped.
    #[pyo3(signature = (timeout=None))]
    fn stop(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        self.token.cancel();
        self.join(py, timeout)
    }

    /// Waits up to `timeout` seconds (forever when None) for the server to stop. Signals are
    /// delivered while waiting, so Ctrl-C interrupts it.
    #[pyo3(signature = (timeout=None))]
    fn join(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let deadline = match timeout {
            Some(seconds) if !(seconds.is_finite() && seconds >= 0.0) => {
                return Err(pyo3::exceptions::PyValueError::new_err("timeout must be a non-negative number"))
            }
            // A timeout too long to add to the clock is as good as none.
            Some(seconds) => Instant::now().checked_add(Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX)),
            None => None,
        };
        loop {
            let finished = self.lock().as_ref().is_none_or(JoinHandle::is_finished);
            if finished {
                return self.reap();
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Ok(false);
            }
            py.detach(|| std::thread::sleep(WAIT_SLICE));
            py.check_signals()?;
        }
    }
}

impl PyServerHandle {
    /// Runs `serve` (given the stop signal) on its own thread and returns the handle. Once it
    /// returns, the Python hooks it started (`python_hooks`) get to run before the runtime shuts down.
    fn spawn<F, Fut>(
        runtime: tokio::runtime::Runtime,
        python_hooks: TaskTracker,
        frontend_port: u16,
        backend_port: u16,
        serve: F,
    ) -> PyResult<PyServerHandle>
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), Error>>,
    {
        let token = CancellationToken::new();
        let stop = token.clone();
        let thread = std::thread::Builder::new()
            .name("snorky".into())
            .spawn(move || {
                hooks::track_on_this_thread(&python_hooks);
                let (result, deadline) = runtime.block_on(async {
                    let result = serve(stop).await;
                    let deadline = Instant::now() + PYTHON_AT_STOP;
                    python_hooks.close();
                    let waited = tokio::time::timeout_at(deadline.into(), python_hooks.wait()).await;
                    if waited.is_err() {
                        log::warn!(
                            "{} Python hooks (client_disconnected, cancel callbacks) still running {} s after the \
                             server stopped: not waited for",
                            python_hooks.len(),
                            PYTHON_AT_STOP.as_secs()
                        );
                    }
                    (result, deadline)
                });
                runtime.shutdown_timeout(deadline.saturating_duration_since(Instant::now()));
                result
            })
            .map_err(|err| ServerError::new_err(format!("cannot start the server thread: {err}")))?;
        Ok(PyServerHandle { frontend_port, backend_port, token, thread: Mutex::new(Some(thread)) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<JoinHandle<Result<(), Error>>>> {
        self.thread.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Collects the finished thread's result, raising the server's error if it failed.
    fn reap(&self) -> PyResult<bool> {
        let Some(thread) = self.lock().take() else {
            return Ok(true);
        };
        match thread.join() {
            Ok(Ok(())) => Ok(true),
            Ok(Err(err)) => Err(server_error(err)),
            Err(_) => Err(ServerError::new_err("the server thread panicked; see the log")),
        }
    }
}

impl Drop for PyServerHandle {
    fn drop(&mut self) {
        // A forgotten handle must not leave a server listening.
        self.token.cancel();
    }
}
