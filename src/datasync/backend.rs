//! `datasync_backend`: the web application's side of a DataSync service —
//! `authorizeSubscription` (items → token) and `publishDeltas` (a batch, validated whole
//! before any delta is delivered).

use std::sync::Arc;

use serde_json::Value;

use super::idempotency::MAX_KEY_LENGTH;
use super::service::{DataSyncHub, DataSyncService};
use crate::protocol::{errors, Params, RpcError};
use crate::service::{Caller, Service, Side};

/// An optional string parameter: absent or `null` is `None`; another type gets `type_error`.
fn optional_string(params: &mut Params, name: &str, type_error: RpcError) -> Result<Option<String>, RpcError> {
    match params.take_optional(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(type_error),
    }
}

/// The backend DataSync service, sharing the subscriptions of a [`DataSyncService`].
/// Deliveries it causes carry the frontend service's name.
#[derive(Debug, Clone)]
pub struct DataSyncBackend {
    name: String,
    hub: Arc<DataSyncHub>,
}

impl DataSyncBackend {
    /// A backend service named `name` for `frontend`'s subscriptions.
    pub fn new(name: impl Into<String>, frontend: &DataSyncService) -> DataSyncBackend {
        DataSyncBackend { name: name.into(), hub: Arc::clone(frontend.hub()) }
    }

    /// The shared state.
    pub fn hub(&self) -> &Arc<DataSyncHub> {
        &self.hub
    }
}

impl Service for DataSyncBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn side(&self) -> Side {
        Side::Backend
    }

    async fn handle(&self, _caller: Caller<'_>, command: &str, mut params: Params) -> Result<Value, RpcError> {
        match command {
            "authorizeSubscription" => {
                let items = params.take("items")?;
                let identity = optional_string(&mut params, "identity", errors::IDENTITY_MUST_BE_STRING)?;
                params.finish()?;
                self.hub.authorize_request(items, identity).await.map(Value::String)
            }
            "publishDeltas" => {
                let deltas = params.take("deltas")?;
                let key = optional_string(&mut params, "key", errors::KEY_MUST_BE_A_SHORT_STRING)?;
                if key.as_ref().is_some_and(|key| key.chars().count() > MAX_KEY_LENGTH) {
                    return Err(errors::KEY_MUST_BE_A_SHORT_STRING);
                }
                params.finish()?;
                self.hub.publish_deltas(deltas, key).await.map(|_| Value::Null)
            }
            _ => Err(RpcError::UnknownCommand),
        }
    }
}
