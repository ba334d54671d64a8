//! The `snorky._core` extension module: the only code that touches pyo3.
//!
//! Classes are thin handles over the Rust types; `python/snorky/` wraps them in typed Python
//! classes. Every wait on Rust happens with the GIL released (`py.detach`), and user Python code
//! runs on worker threads, never inside an async task.

mod backend;
mod client;
mod collab;
mod convert;
mod datasync;
mod exit;
mod hooks;
mod policy;
mod rpc;
mod sender;
mod server;
mod services;
mod tokens;

use pyo3::prelude::*;

pyo3::create_exception!(_core, SnorkyError, pyo3::exceptions::PyException, "Base class of Snorky's errors.");
pyo3::create_exception!(
    _core,
    ConfigurationError,
    SnorkyError,
    "The configuration is wrong; the message says what to set."
);
pyo3::create_exception!(_core, BackendError, SnorkyError, "A backend call was answered with an error.");
pyo3::create_exception!(_core, SnorkyConnectionError, SnorkyError, "The Snorky backend could not be reached.");
pyo3::create_exception!(_core, ServerError, SnorkyError, "The server failed while running.");

/// Drops pyo3-log's cache of Python logger levels, so logging configured after import (Django's
/// LOGGING, `logging.basicConfig`) takes effect.
#[pyfunction]
fn reset_log_cache() {
    if let Some(handle) = LOG_RESET.get() {
        handle.reset();
    }
}

static LOG_RESET: std::sync::OnceLock<pyo3_log::ResetHandle> = std::sync::OnceLock::new();

#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    if let Some(handle) = exit::install_logger(py) {
        let _ = LOG_RESET.set(handle);
    }
    exit::register(m)?;
    m.add("SnorkyError", py.get_type::<SnorkyError>())?;
    m.add("ConfigurationError", py.get_type::<ConfigurationError>())?;
    m.add("BackendError", py.get_type::<BackendError>())?;
    m.add("SnorkyConnectionError", py.get_type::<SnorkyConnectionError>())?;
    m.add("ServerError", py.get_type::<ServerError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEFAULT_FRONTEND_ADDRESS", crate::protocol::defaults::FRONTEND_ADDRESS)?;
    m.add("DEFAULT_BACKEND_ADDRESS", crate::protocol::defaults::BACKEND_ADDRESS)?;
    // What the Django checks hold settings against, so that they never drift from the server.
    m.add("MIN_API_KEY_LENGTH", crate::server::config::MIN_API_KEY_LENGTH)?;
    m.add("DEFAULT_REVOCATION_WINDOW", crate::server::ServerConfig::default().revocation_window)?;
    m.add_function(wrap_pyfunction!(reset_log_cache, m)?)?;
    m.add_function(wrap_pyfunction!(tokens::connection_token, m)?)?;
    m.add_function(wrap_pyfunction!(server::start_sockjs_echo, m)?)?;
    m.add_class::<server::PyServer>()?;
    m.add_class::<server::PyServerHandle>()?;
    m.add_class::<services::PyPubSubService>()?;
    m.add_class::<services::PyPubSubBackend>()?;
    m.add_class::<services::PyConnectionsBackend>()?;
    m.add_class::<datasync::PyDataSyncService>()?;
    m.add_class::<datasync::PyDataSyncBackend>()?;
    m.add_class::<collab::PyChatService>()?;
    m.add_class::<collab::PyCursorsService>()?;
    m.add_class::<collab::PyMessagingService>()?;
    m.add_class::<client::PyClient>()?;
    m.add_class::<backend::PyBackendClient>()?;
    m.add_class::<sender::PyDeltaSender>()?;
    m.add_class::<rpc::PyExternalService>()?;
    m.add_class::<rpc::PyRequest>()?;
    Ok(())
}
