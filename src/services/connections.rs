//! `connections`: the web application's control over who stays connected. Its one command,
//! `disconnect`, revokes an identity: every open connection of that identity is closed with
//! 4501 (do not reconnect), and its connection tokens issued until then are refused for a while
//! (see [`ConnectionTable::revoke`]). Django calls it when a user logs out, so a revoked user's
//! open pages stop receiving at once.
//!
//! The service acts on the connections of the server it is registered in: the server hands it
//! its [`ConnectionTable`] when it binds ([`ConnectionsBackend::attach`]). With a broker, a
//! revocation reaches every node: `disconnect` answers once each has closed the identity's
//! connections, with how many were closed in all.

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::connections::ConnectionTable;
use crate::protocol::{errors, Params, RpcError};
use crate::service::{Caller, Service, Side};

/// The backend service that revokes identities.
#[derive(Debug, Clone)]
pub struct ConnectionsBackend {
    name: String,
    /// The table of the server it is registered in (the latest one, for a server started
    /// again). A std `Mutex`: only read briefly.
    table: Arc<Mutex<Option<Arc<ConnectionTable>>>>,
}

impl ConnectionsBackend {
    /// A service named `name`; it acts once a server attaches its table.
    pub fn new(name: impl Into<String>) -> ConnectionsBackend {
        ConnectionsBackend { name: name.into(), table: Arc::default() }
    }

    /// Gives the service the connections of the server it serves in.
    pub fn attach(&self, table: &Arc<ConnectionTable>) {
        *crate::sync::lock(&self.table) = Some(Arc::clone(table));
    }

    async fn disconnect(&self, identity: &str) -> Result<Value, RpcError> {
        let Some(table) = crate::sync::lock(&self.table).clone() else {
            log::error!("connections service {:?}: no server attached", self.name);
            return Err(RpcError::Internal);
        };
        let closed = table.revoke_everywhere(identity).await?;
        Ok(json!({"disconnected": closed}))
    }
}

impl Service for ConnectionsBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn side(&self) -> Side {
        Side::Backend
    }

    async fn handle(&self, _caller: Caller<'_>, command: &str, mut params: Params) -> Result<Value, RpcError> {
        match command {
            "disconnect" => {
                let identity = params.take_string("identity", errors::IDENTITY_MUST_BE_STRING)?;
                params.finish()?;
                self.disconnect(&identity).await
            }
            _ => Err(RpcError::UnknownCommand),
        }
    }
}
