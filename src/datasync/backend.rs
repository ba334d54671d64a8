//! `datasync_backend`: the web application's side of a DataSync service —
//! `authorizeSubscription` (items → token) and `publishDeltas` (a batch, validated whole
//! before any delta is delivered).

use std::sync::Arc;

use serde_json::Value;

use super::service::{auth_error, DataSyncHub, DataSyncService};
use crate::protocol::{Params, RpcError};
use crate::service::{Caller, Service, Side};

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
                params.finish()?;
                self.hub.authorize(&items).map(Value::String).map_err(auth_error)
            }
            "publishDeltas" => {
                let deltas = params.take("deltas")?;
                params.finish()?;
                self.hub.publish_deltas(deltas).await.map(|_| Value::Null)
            }
            _ => Err(RpcError::UnknownCommand),
        }
    }
}
