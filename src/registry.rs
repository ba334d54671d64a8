//! A registry: the services reachable through one listener, by name.

use std::collections::HashMap;
use std::sync::Arc;

use crate::connection::Connection;
use crate::error::Error;
use crate::service::{AnyService, Side};

/// The services of one side (frontend or backend), looked up by name.
///
/// Cheap to clone: the map is shared and immutable once the server starts.
#[derive(Debug, Clone, Default)]
pub struct ServiceRegistry {
    services: Arc<HashMap<String, AnyService>>,
}

impl ServiceRegistry {
    /// Builds a registry for `side`, refusing duplicate names and services of the other side.
    pub fn new(side: Side, services: Vec<AnyService>) -> Result<ServiceRegistry, Error> {
        let mut map = HashMap::with_capacity(services.len());
        for service in services {
            if service.side() != side {
                return Err(Error::Config(format!(
                    "service {:?} belongs in the {} registry, not the {}",
                    service.name(),
                    side_name(service.side()),
                    side_name(side)
                )));
            }
            let name = service.name().to_owned();
            if map.insert(name.clone(), service).is_some() {
                return Err(Error::Config(format!("two services are named {name:?}: names must be unique")));
            }
        }
        Ok(ServiceRegistry { services: Arc::new(map) })
    }

    /// The service registered as `name`.
    pub fn get(&self, name: &str) -> Option<&AnyService> {
        self.services.get(name)
    }

    /// Every registered service, in no particular order.
    pub fn services(&self) -> impl Iterator<Item = &AnyService> {
        self.services.values()
    }

    /// Tells every service that a connection opened.
    pub async fn connected(&self, connection: &Arc<Connection>) {
        for service in self.services.values() {
            service.connected(connection).await;
        }
    }

    /// Tells every service that a connection closed. Returns the tasks that finish the job
    /// elsewhere (with a broker: in Redis), each bounded by the broker's command timeout.
    pub fn disconnected(&self, connection: &Arc<Connection>) -> Vec<tokio::task::JoinHandle<()>> {
        self.services.values().filter_map(|service| service.disconnected(connection)).map(tokio::spawn).collect()
    }

    /// The registered names, sorted (for logs).
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.services.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Frontend => "frontend",
        Side::Backend => "backend",
    }
}
