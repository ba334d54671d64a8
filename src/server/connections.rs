//! The table of a server's open connections: caps on how many it holds (in all, and per client
//! address), and the lookup by identity that revocation needs.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::connection::{Connection, ConnectionId};

/// Why a new connection is refused (answered with HTTP 503 at the handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The server holds `max_connections` already.
    #[error("the server is at max_connections")]
    Full,
    /// This client address holds `max_connections_per_address` already.
    #[error("this address is at max_connections_per_address")]
    AddressFull,
}

/// Every open connection of one server.
#[derive(Debug)]
pub struct ConnectionTable {
    max: usize,
    max_per_address: Option<usize>,
    /// A std `Mutex`: nothing awaits under it, and every operation is O(1) except
    /// [`ConnectionTable::with_identity`], which is proportional to one identity's connections.
    state: Mutex<TableState>,
}

#[derive(Debug, Default)]
struct TableState {
    /// Admitted connections (a slot is taken at the handshake, before the connection exists).
    admitted: usize,
    per_address: HashMap<IpAddr, usize>,
    open: HashMap<ConnectionId, Arc<Connection>>,
    by_identity: HashMap<String, HashSet<ConnectionId>>,
}

/// A slot taken at the handshake; dropping it gives the slot back.
#[derive(Debug)]
pub struct Slot {
    table: Arc<ConnectionTable>,
    address: IpAddr,
    connection: Option<ConnectionId>,
}

impl ConnectionTable {
    /// An empty table with these caps.
    pub fn new(max: usize, max_per_address: Option<usize>) -> Arc<ConnectionTable> {
        Arc::new(ConnectionTable { max, max_per_address, state: Mutex::default() })
    }

    fn lock(&self) -> MutexGuard<'_, TableState> {
        crate::sync::lock(&self.state)
    }

    /// Takes a slot for a connection from `remote`, or says why not.
    ///
    /// # Errors
    ///
    /// The [`Refusal`] when a cap is reached.
    pub fn admit(self: &Arc<Self>, remote: SocketAddr) -> Result<Slot, Refusal> {
        let address = remote.ip();
        let mut state = self.lock();
        if state.admitted >= self.max {
            return Err(Refusal::Full);
        }
        let from_address = state.per_address.get(&address).copied().unwrap_or(0);
        if self.max_per_address.is_some_and(|max| from_address >= max) {
            return Err(Refusal::AddressFull);
        }
        state.admitted += 1;
        state.per_address.insert(address, from_address + 1);
        Ok(Slot { table: Arc::clone(self), address, connection: None })
    }

    /// How many connections are admitted (open, or between handshake and upgrade).
    pub fn len(&self) -> usize {
        self.lock().admitted
    }

    /// Whether no connection is admitted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The open connections of `identity`.
    pub fn with_identity(&self, identity: &str) -> Vec<Arc<Connection>> {
        let state = self.lock();
        state
            .by_identity
            .get(identity)
            .map(|ids| ids.iter().filter_map(|id| state.open.get(id)).cloned().collect())
            .unwrap_or_default()
    }
}

impl Slot {
    /// Records the connection that uses this slot, so it can be found by identity.
    pub fn register(&mut self, connection: &Arc<Connection>) {
        let mut state = self.table.lock();
        state.open.insert(connection.id(), Arc::clone(connection));
        if let Some(identity) = &connection.identity().id {
            state.by_identity.entry(identity.clone()).or_default().insert(connection.id());
        }
        self.connection = Some(connection.id());
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.table.lock();
        state.admitted -= 1;
        if let Some(count) = state.per_address.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                state.per_address.remove(&self.address);
            }
        }
        let Some(id) = self.connection else { return };
        let Some(connection) = state.open.remove(&id) else { return };
        if let Some(identity) = &connection.identity().id {
            if let Some(ids) = state.by_identity.get_mut(identity) {
                ids.remove(&id);
                if ids.is_empty() {
                    state.by_identity.remove(identity);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(last: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], port))
    }

    #[test]
    fn caps_are_enforced_and_slots_come_back() {
        let table = ConnectionTable::new(3, Some(2));
        let a = table.admit(address(1, 1)).expect("first");
        let b = table.admit(address(1, 2)).expect("second from the same address");
        assert_eq!(table.admit(address(1, 3)).err(), Some(Refusal::AddressFull));
        let c = table.admit(address(2, 1)).expect("another address");
        assert_eq!(table.admit(address(3, 1)).err(), Some(Refusal::Full));
        drop(a);
        assert!(table.admit(address(1, 4)).is_ok(), "a slot came back (and went again)");
        drop((b, c));
        assert!(table.is_empty());
    }
}
