//! `snorky._core.DeltaSender`: the sender thread of Django's direct delivery (`DIRECT_SEND =
//! "background"`).
//!
//! A sender written in Python must take the GIL to post, and a thread that saves in a loop then
//! pays for every hand-over: about half of what direct delivery cost such a thread was the Python
//! sender waking. Here the committing thread converts its transaction's deltas to JSON values and
//! queues them ([`SendQueue`]); a Rust thread posts them through its own small runtime without
//! the GIL, and takes the GIL only to hand a failed batch back to Python (which logs it, counts it,
//! retries a refused batch delta by delta and sends `delivery_failed`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use pyo3::prelude::*;
use serde_json::{Map, Value};

use super::convert::backend_error;
use super::{exit, ConfigurationError, ServerError, SnorkyError};
use crate::backend_client::{BackendClient, BackendError};
use crate::send_queue::{Refused, SendQueue};
use crate::sync::lock;

/// The name of the thread, which `delivery_failed` receivers and log records see.
const THREAD_NAME: &str = "snorky-direct-sender";

/// One process's queue and thread posting to one backend URL.
#[pyclass(module = "snorky._core", name = "DeltaSender", frozen)]
pub struct PyDeltaSender {
    shared: Arc<Shared>,
    /// The process that made it: a forked child has the queue but not the thread.
    pid: u32,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// What the sender thread shares with the committing threads.
struct Shared {
    queue: SendQueue,
    url: String,
    key: String,
    timeout: Duration,
    service: String,
    batch: usize,
    /// `on_failure(deltas, error)`, called with the GIL on the sender thread.
    on_failure: Py<PyAny>,
    /// Deltas the server accepted, since the last `take_published`.
    published: AtomicU64,
}

/// Why a batch was not delivered.
enum Failure {
    Backend(BackendError),
    /// The thread could not start its runtime or client.
    Start(String),
}

impl Failure {
    fn into_pyerr(self) -> PyErr {
        match self {
            Failure::Backend(err) => backend_error(err),
            Failure::Start(reason) => ServerError::new_err(reason),
        }
    }

    fn describe(&self) -> String {
        match self {
            Failure::Backend(err) => err.to_string(),
            Failure::Start(reason) => reason.clone(),
        }
    }
}

#[pymethods]
impl PyDeltaSender {
    #[new]
    #[pyo3(signature = (url, key, timeout, service, on_failure, batch=500))]
    fn py_new(
        url: String,
        key: String,
        timeout: f64,
        service: String,
        on_failure: Py<PyAny>,
        batch: usize,
    ) -> PyResult<PyDeltaSender> {
        let timeout = super::datasync::seconds(timeout, "timeout")?;
        // Validate the URL and key now, not in the thread.
        BackendClient::new(&url, &key, timeout).map_err(backend_error)?;
        if batch == 0 {
            return Err(ConfigurationError::new_err("a sender's batch must be at least 1 delta"));
        }
        let shared = Shared {
            queue: SendQueue::new(),
            url,
            key,
            timeout,
            service,
            batch,
            on_failure,
            published: AtomicU64::new(0),
        };
        Ok(PyDeltaSender { shared: Arc::new(shared), pid: std::process::id(), thread: Mutex::new(None) })
    }

    /// Queues one transaction's deltas (a list of JSON-like dicts); waits up to `wait` seconds
    /// while `limit` deltas are queued already; `False` if no room came. `linger`: how long the
    /// sender lets commits that follow its last request closely join the next one.
    fn put(&self, py: Python<'_>, deltas: &Bound<'_, PyAny>, limit: usize, wait: f64, linger: f64) -> PyResult<bool> {
        let wait = super::datasync::seconds(wait, "wait")?;
        let linger = super::datasync::seconds(linger, "linger")?;
        let deltas: Vec<Value> = pythonize::depythonize(deltas)
            .map_err(|err| SnorkyError::new_err(format!("the deltas cannot be sent as JSON: {err}")))?;
        self.start_thread()?;
        let batch = self.shared.batch;
        // Room is the rule: only a full queue makes the committing thread let go of the GIL.
        let result = match self.shared.queue.put(deltas, limit, Duration::ZERO, linger, batch) {
            Err((deltas, Refused::Full)) if !wait.is_zero() => {
                py.detach(|| self.shared.queue.put(deltas, limit, wait, linger, batch))
            }
            result => result,
        };
        match result {
            Ok(()) => Ok(true),
            Err((_, Refused::Full)) => Ok(false),
            Err((_, Refused::Closed)) => Err(SnorkyError::new_err("this sender is closed")),
        }
    }

    /// Waits until everything queued so far is sent or failed; `False` after `timeout` seconds.
    fn flush(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        let timeout = super::datasync::seconds(timeout, "timeout")?;
        Ok(py.detach(|| self.shared.queue.flush(timeout)))
    }

    /// Deltas queued or being sent.
    #[getter]
    fn pending(&self) -> usize {
        self.shared.queue.pending()
    }

    /// The deltas the server accepted since the last call (the count starts again at zero).
    fn take_published(&self) -> u64 {
        self.shared.published.swap(0, Ordering::Relaxed)
    }

    /// Refuses further deltas; the thread sends what is queued, then ends.
    fn close(&self) {
        self.shared.queue.close();
    }
}

impl PyDeltaSender {
    /// Starts the thread at the first `put` (again, should it have died).
    fn start_thread(&self) -> PyResult<()> {
        if self.pid != std::process::id() {
            return Err(SnorkyError::new_err("a DeltaSender cannot be used in a forked process: make a new one"));
        }
        let mut thread = lock(&self.thread);
        if thread.as_ref().is_some_and(|running| !running.is_finished()) {
            return Ok(());
        }
        let shared = Arc::clone(&self.shared);
        let started = std::thread::Builder::new().name(THREAD_NAME.into()).spawn(move || run(&shared));
        *thread = Some(started.map_err(|err| ServerError::new_err(format!("cannot start {THREAD_NAME}: {err}")))?);
        Ok(())
    }
}

impl Drop for PyDeltaSender {
    fn drop(&mut self) {
        // In a forked child the queue's lock may have been held by the parent's thread: leave it.
        if self.pid == std::process::id() {
            self.shared.queue.close();
        }
    }
}

/// The sender thread: posts batches in order until the queue is closed and empty.
fn run(shared: &Shared) {
    let sending = super::backend::client_runtime("snorky-direct-sender-io")
        .map_err(|err| format!("cannot start the sender's runtime: {err}"))
        .and_then(|runtime| {
            let client = BackendClient::new(&shared.url, &shared.key, shared.timeout).map_err(|err| err.to_string())?;
            Ok((runtime, client))
        });
    // Each request ends when `request` is dropped, also if posting panics: the thread then dies,
    // `flush()` still returns, and the next `put` starts a new thread.
    while let Some(mut request) = shared.queue.next_batch(shared.batch) {
        let deltas = request.take_deltas();
        let count = deltas.len() as u64;
        let mut params = Map::new();
        params.insert("deltas".into(), Value::Array(deltas));
        let result = match &sending {
            Ok((runtime, client)) => runtime
                .block_on(client.call(&shared.service, "publishDeltas", &params))
                .map(drop)
                .map_err(Failure::Backend),
            Err(reason) => Err(Failure::Start(reason.clone())),
        };
        match result {
            Ok(()) => {
                shared.published.fetch_add(count, Ordering::Relaxed);
            }
            Err(failure) => {
                let deltas = match params.remove("deltas") {
                    Some(Value::Array(deltas)) => deltas,
                    _ => Vec::new(),
                };
                report(shared, deltas, failure);
            }
        }
    }
}

/// Hands a failed batch to Python's `on_failure`; once the interpreter exits, only logs it.
fn report(shared: &Shared, deltas: Vec<Value>, failure: Failure) {
    let count = deltas.len();
    let text = failure.describe();
    let called = exit::attach(|py| -> PyResult<()> {
        let deltas = pythonize::pythonize(py, &deltas)?;
        let error = failure.into_pyerr();
        shared.on_failure.call1(py, (deltas, error.value(py)))?;
        Ok(())
    });
    match called {
        Some(Ok(())) => {}
        Some(Err(err)) => {
            log::error!("Snorky: could not publish {count} delta(s) ({text}), and on_failure raised {err}");
        }
        None => log::error!("Snorky: could not publish {count} delta(s) to {} at exit: {text}", shared.url),
    }
}
