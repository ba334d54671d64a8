//! Python handles of the DataSync services, the dealer specs they are built from, and Python
//! key methods as [`KeyFunction`]s.
//!
//! A dealer crosses the boundary as a spec dict, built by `snorky.dealers`:
//! `{"name": str, "model": str, "kind": "broadcast" | "simple" | "filter"}`, plus for a
//! Simple dealer either `"key": "owner.id"` (a field path, evaluated in Rust) or
//! `"key_function": callable` (a Python method). A callable cannot be depythonized, so the
//! dict is read key by key; every mistake is a `ConfigurationError` naming the dealer and key.

use std::time::Duration;

use crate::seconds::check_seconds;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use serde_json::Value;

use super::policy::describe;
use super::ConfigurationError;
use crate::datasync::{DataSyncBackend, DataSyncService, Dealer, KeyFunction, LimitsConfig};
use crate::service::Service;

/// A Python callable `(data) -> key` computing a Simple dealer's keys.
///
/// The router runs it on a blocking worker thread, outside the service's lock; it holds the
/// GIL only for the call (converting the object in, the key out).
struct PyKeyFunction {
    callable: Py<PyAny>,
}

impl KeyFunction for PyKeyFunction {
    fn key(&self, data: &Value) -> Result<Value, String> {
        super::exit::attach(|py| {
            let result = pythonize::pythonize(py, data)
                .map_err(PyErr::from)
                .and_then(|data| self.callable.call1(py, (data,)))
                .and_then(|key| pythonize::depythonize::<Value>(key.bind(py)).map_err(PyErr::from));
            result.map_err(|err| describe(py, &err))
        })
        .unwrap_or_else(|| Err(super::exit::NOT_CALLED_AT_EXIT.to_owned()))
    }
}

/// The keys a dealer spec may have.
const SPEC_KEYS: [&str; 5] = ["name", "model", "kind", "key", "key_function"];

/// Builds a [`Dealer`] from its spec dict.
fn dealer_from_spec(spec: &Bound<'_, PyAny>) -> PyResult<Dealer> {
    let Ok(spec) = spec.cast::<PyDict>() else {
        return Err(ConfigurationError::new_err(format!(
            "a dealer spec must be a dict (snorky.dealers builds them from dealer classes), not {}",
            spec.repr()?
        )));
    };
    let name = spec_string(spec, "name", "the dealer")?
        .ok_or_else(|| ConfigurationError::new_err("a dealer spec needs a \"name\""))?;
    let what = format!("dealer {name:?}");
    for key in spec.keys() {
        let key: String = key.extract().unwrap_or_default();
        if !SPEC_KEYS.contains(&key.as_str()) {
            return Err(ConfigurationError::new_err(format!(
                "{what}: unknown key {key:?} in its spec (expected one of {SPEC_KEYS:?})"
            )));
        }
    }
    let model = spec_string(spec, "model", &what)?.ok_or_else(|| {
        ConfigurationError::new_err(format!(
            "{what} has no model: set model to the name its deltas carry (model = \"Task\")"
        ))
    })?;
    let kind = spec_string(spec, "kind", &what)?.ok_or_else(|| {
        ConfigurationError::new_err(format!("{what}: kind is required (broadcast, simple or filter)"))
    })?;
    let key = spec_string(spec, "key", &what)?;
    let key_function = spec.get_item("key_function")?.filter(|f| !f.is_none());
    if kind != "simple" && (key.is_some() || key_function.is_some()) {
        return Err(ConfigurationError::new_err(format!(
            "{what}: only Simple dealers have a key (this one is {kind})"
        )));
    }
    match kind.as_str() {
        "broadcast" => Ok(Dealer::broadcast(name, model)),
        "filter" => Ok(Dealer::filter(name, model)),
        "simple" => match (key, key_function) {
            (_, Some(function)) => {
                if !function.is_callable() {
                    return Err(ConfigurationError::new_err(format!("{what}: key_function must be callable")));
                }
                let function = PyKeyFunction { callable: function.unbind() };
                Ok(Dealer::simple_fn(name, model, std::sync::Arc::new(function)))
            }
            (Some(path), None) if !path.is_empty() => Ok(Dealer::simple_field(name, model, path)),
            _ => Err(ConfigurationError::new_err(format!(
                "{what} has no key: set key to a field path (key = \"owner.id\") or override \
                 get_key_for_model(self, data)"
            ))),
        },
        other => Err(ConfigurationError::new_err(format!(
            "{what}: unknown kind {other:?} (expected broadcast, simple or filter)"
        ))),
    }
}

/// The string at `key` of a spec (`None` when absent or None); another type is an error.
fn spec_string(spec: &Bound<'_, PyDict>, key: &str, what: &str) -> PyResult<Option<String>> {
    match spec.get_item(key)? {
        None => Ok(None),
        Some(value) if value.is_none() => Ok(None),
        Some(value) => match value.cast::<PyString>() {
            Ok(text) => Ok(Some(text.to_str()?.to_owned())),
            Err(_) => {
                Err(ConfigurationError::new_err(format!("{what}: {key} must be a string, not {}", value.repr()?)))
            }
        },
    }
}

/// Seconds from Python as a duration; a value that is not positive, not finite or longer than a
/// year (which could overflow a clock later) names the option.
pub(super) fn seconds(value: f64, option: &str) -> PyResult<Duration> {
    check_seconds(option, value).map_err(|err| ConfigurationError::new_err(err.to_string()))?;
    Ok(Duration::from_secs_f64(value))
}

/// The browser-facing DataSync service.
#[pyclass(module = "snorky._core", name = "DataSyncService", frozen)]
pub struct PyDataSyncService {
    pub(crate) inner: DataSyncService,
}

#[pymethods]
impl PyDataSyncService {
    #[new]
    #[pyo3(signature = (name, dealers, options=None))]
    fn py_new(
        name: String,
        dealers: Vec<Bound<'_, PyAny>>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<PyDataSyncService> {
        let dealers = dealers.iter().map(dealer_from_spec).collect::<PyResult<Vec<_>>>()?;
        let config: LimitsConfig = super::convert::service_options(options, "DataSync")?;
        let limits = config.limits().map_err(|err| ConfigurationError::new_err(err.to_string()))?;
        let inner = DataSyncService::with_limits(name, dealers, limits)
            .map_err(|err| ConfigurationError::new_err(format!("{err}: dealer names must be unique")))?;
        Ok(PyDataSyncService { inner })
    }

    /// The service name.
    #[getter]
    fn name(&self) -> String {
        self.inner.name().to_owned()
    }

    /// The dealers' names, in the order given.
    #[getter]
    fn dealer_names(&self) -> Vec<String> {
        self.inner.hub().dealers().iter().map(|dealer| dealer.name.clone()).collect()
    }

    /// How many subscriptions exist (waiting or acquired); with a broker, this node's only.
    #[getter]
    fn subscription_count(&self, py: Python<'_>) -> usize {
        py.detach(|| self.inner.hub().subscription_count())
    }

    /// How many subscriptions wait to be acquired (authorized, or their connection closed); with
    /// a broker, only those of connections closing on this node (Redis keeps the waiting ones).
    #[getter]
    fn waiting_count(&self, py: Python<'_>) -> usize {
        py.detach(|| self.inner.hub().waiting_count())
    }
}

/// The web application's DataSync service.
#[pyclass(module = "snorky._core", name = "DataSyncBackend", frozen)]
pub struct PyDataSyncBackend {
    pub(crate) inner: DataSyncBackend,
}

#[pymethods]
impl PyDataSyncBackend {
    #[new]
    fn py_new(name: String, frontend: PyRef<'_, PyDataSyncService>) -> PyDataSyncBackend {
        PyDataSyncBackend { inner: DataSyncBackend::new(name, &frontend.inner) }
    }

    /// The service name.
    #[getter]
    fn name(&self) -> String {
        self.inner.name().to_owned()
    }
}
