//! Python's exit, as the extension's own threads must see it.
//!
//! The server's and the backend client's runtimes run on threads Python does not know. Such a
//! thread that attaches to the interpreter once it finalizes (to log a line through `logging`,
//! to call a hook) is ended by CPython with `pthread_exit`, which unwinds through Rust frames and
//! kills the process. `Py_IsFinalizing` would tell when, but the stable ABI has it only from
//! 3.13. So an `atexit` handler raises a flag instead: registered when the module loads, it runs
//! after every handler registered later (those that stop servers and clients, Django's last
//! deliveries). From then on log records go to standard error and Python code is not called.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::prelude::*;

static EXIT_BEGUN: AtomicBool = AtomicBool::new(false);

/// The error of a Python hook that was not called because the interpreter is exiting.
pub const NOT_CALLED_AT_EXIT: &str = "not called: the Python interpreter is exiting";

/// Whether the interpreter has begun to exit.
pub fn exiting() -> bool {
    EXIT_BEGUN.load(Ordering::Acquire)
}

#[pyfunction]
fn mark_exiting() {
    EXIT_BEGUN.store(true, Ordering::Release);
}

/// Registers the handler that raises the flag.
pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    let handler = wrap_pyfunction!(mark_exiting, module)?;
    module.py().import("atexit")?.call_method1("register", (handler,))?;
    Ok(())
}

/// Runs `f` attached to the interpreter, or returns None when it is exiting.
pub fn attach<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> Option<R> {
    if exiting() {
        return None;
    }
    Some(Python::attach(f))
}

/// pyo3-log's logger (records into Python's `logging`) until the interpreter exits; then
/// warnings and errors are written to standard error, and the rest dropped.
struct ExitAwareLogger(pyo3_log::Logger);

impl log::Log for ExitAwareLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        if exiting() {
            metadata.level() <= log::Level::Warn
        } else {
            self.0.enabled(metadata)
        }
    }

    fn log(&self, record: &log::Record<'_>) {
        if !exiting() {
            self.0.log(record);
        } else if record.level() <= log::Level::Warn {
            // Nothing to do if standard error is gone too.
            let _ = writeln!(std::io::stderr(), "{} {}: {}", record.level(), record.target(), record.args());
        }
    }

    fn flush(&self) {
        if !exiting() {
            self.0.flush();
        }
    }
}

/// Installs the logger; returns the handle that drops pyo3-log's cache of Python's logger
/// levels, or None when another logger was installed first.
pub fn install_logger(py: Python<'_>) -> Option<pyo3_log::ResetHandle> {
    let logger = pyo3_log::Logger::new(py, pyo3_log::Caching::LoggersAndLevels).ok()?;
    let handle = logger.reset_handle();
    log::set_boxed_logger(Box::new(ExitAwareLogger(logger))).ok()?;
    // pyo3-log's default filter; Python's logging decides below it.
    log::set_max_level(log::LevelFilter::Debug);
    Some(handle)
}
