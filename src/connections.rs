//! The table of a server's open connections: caps on how many it holds (in all, and per client
//! address), the lookup by identity, and revocation.
//!
//! Revoking an identity closes every open connection it has (code 4501: do not reconnect with
//! the same token) and, for a while, refuses handshakes with connection tokens of that identity
//! issued at or before the revocation. A token cannot be taken back from whoever holds it, so
//! the refusal must last as long as such a token may be valid: the revocation is remembered for
//! `revocation_window`, which should be at least the longest lifetime the web application gives
//! its tokens. At most `max_revocations` are remembered; the oldest are forgotten first.
//!
//! With a broker, revocations are shared by every node (see [`crate::revocation`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::address_counts::AddressCounts;
use crate::broker::Broker;
use crate::connection::{Connection, ConnectionId};
use crate::error::Error;
use crate::protocol::{codes, RpcError};
use crate::revocation::Revocations;

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

/// How long and how many revocations are remembered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RevocationBounds {
    /// How long a revoked identity's older tokens stay refused.
    pub window: Duration,
    /// The most revocations remembered.
    pub max: usize,
}

impl Default for RevocationBounds {
    /// An hour (the longest default lifetime of a connection token), 100,000 identities.
    fn default() -> Self {
        RevocationBounds { window: Duration::from_secs(3600), max: 100_000 }
    }
}

/// Every open connection of one server.
#[derive(Debug)]
pub struct ConnectionTable {
    max: usize,
    max_per_address: Option<usize>,
    revocation: RevocationBounds,
    /// A std `Mutex`: nothing awaits under it, and every operation is O(1) except
    /// [`ConnectionTable::with_identity`], which is proportional to one identity's connections.
    state: Mutex<TableState>,
    /// With a broker: the revocations the nodes share (set when the server binds).
    shared: Mutex<Option<Arc<Revocations>>>,
}

#[derive(Debug, Default)]
struct TableState {
    /// Admitted connections (a slot is taken at the handshake, before the connection exists).
    admitted: usize,
    per_address: AddressCounts,
    /// Each open connection, with when its connection token was issued (if it said).
    open: HashMap<ConnectionId, (Arc<Connection>, Option<f64>)>,
    by_identity: HashMap<String, HashSet<ConnectionId>>,
    /// When each revoked identity was revoked (seconds since the epoch).
    revoked: HashMap<String, f64>,
    /// The revocations in the order they were made, to forget the oldest.
    revoked_order: VecDeque<(f64, String)>,
}

/// A slot taken at the handshake; dropping it gives the slot back.
#[derive(Debug)]
pub struct Slot {
    table: Arc<ConnectionTable>,
    address: IpAddr,
    connection: Option<ConnectionId>,
}

impl ConnectionTable {
    /// An empty table with these caps and the default revocation bounds.
    pub fn new(max: usize, max_per_address: Option<usize>) -> Arc<ConnectionTable> {
        Self::with_revocation(max, max_per_address, RevocationBounds::default())
    }

    /// An empty table with these caps and revocation bounds.
    pub fn with_revocation(
        max: usize,
        max_per_address: Option<usize>,
        revocation: RevocationBounds,
    ) -> Arc<ConnectionTable> {
        Arc::new(ConnectionTable {
            max,
            max_per_address,
            revocation,
            state: Mutex::default(),
            shared: Mutex::default(),
        })
    }

    /// The revocation window and bound.
    pub fn revocation_bounds(&self) -> RevocationBounds {
        self.revocation
    }

    /// Shares revocations with the other nodes of `broker`: learns those made in the window and
    /// listens for new ones. Called when the server binds.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the node cannot listen on the broker.
    pub async fn share(self: &Arc<Self>, broker: &Broker) -> Result<(), Error> {
        let shared = Revocations::start(self, broker).await?;
        *crate::sync::lock(&self.shared) = Some(shared);
        Ok(())
    }

    /// Revokes `identity` now, on every node when revocations are shared (see [`revoke`]);
    /// returns how many connections were closed.
    ///
    /// # Errors
    ///
    /// [`RpcError::Unavailable`] when the broker is unreachable: this node's connections were
    /// closed and its tokens refused here, the other nodes did not hear of it.
    ///
    /// [`revoke`]: ConnectionTable::revoke
    pub async fn revoke_everywhere(&self, identity: &str) -> Result<usize, RpcError> {
        let shared = crate::sync::lock(&self.shared).clone();
        let now = crate::tokens::now_seconds();
        match shared {
            None => Ok(self.revoke(identity, now)),
            Some(shared) => shared.revoke(identity, now).await,
        }
    }

    /// Records a revocation made elsewhere while this node could not hear of it: refuses the
    /// identity's tokens issued until `at`, and closes its connections opened with such tokens
    /// (those opened later, with newer tokens, stay).
    pub fn learn_revocation(&self, identity: &str, at: f64, now: f64) {
        let connections = {
            let mut state = self.lock();
            if state.revoked.get(identity).is_some_and(|&known| known >= at) {
                return;
            }
            self.record_revocation(&mut state, identity, at, now);
            state
                .by_identity
                .get(identity)
                .map(|ids| {
                    ids.iter()
                        .filter_map(|id| state.open.get(id))
                        .filter(|(_, issued)| issued.is_none_or(|issued| issued <= at))
                        .map(|(connection, _)| Arc::clone(connection))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        };
        for connection in &connections {
            connection.close(codes::REVOKED);
        }
        if !connections.is_empty() {
            log::info!("identity {identity:?} was revoked elsewhere: {} connections closed", connections.len());
        }
    }

    fn record_revocation(&self, state: &mut TableState, identity: &str, at: f64, now: f64) {
        state.forget_old_revocations(now, self.revocation.window);
        if self.revocation.max > 0 {
            if state.revoked.insert(identity.to_owned(), at).is_none() {
                state.revoked_order.push_back((at, identity.to_owned()));
            }
            while state.revoked.len() > self.revocation.max {
                let Some((_, oldest)) = state.revoked_order.pop_front() else { break };
                state.revoked.remove(&oldest);
            }
        }
    }

    /// Revokes `identity` at `now` (seconds since the epoch): closes its open connections with
    /// 4501 and refuses its tokens issued until now, for the revocation window. Returns how many
    /// connections were closed.
    pub fn revoke(&self, identity: &str, now: f64) -> usize {
        let connections = {
            let mut state = self.lock();
            self.record_revocation(&mut state, identity, now, now);
            state
                .by_identity
                .get(identity)
                .map(|ids| {
                    ids.iter().filter_map(|id| state.open.get(id)).map(|(c, _)| Arc::clone(c)).collect::<Vec<_>>()
                })
                .unwrap_or_default()
        };
        for connection in &connections {
            connection.close(codes::REVOKED);
        }
        log::info!("identity {identity:?} revoked: {} connections closed", connections.len());
        connections.len()
    }

    /// Whether a token of `identity` issued at `issued_at` (seconds since the epoch; `None` when
    /// the token does not say) was revoked, as of `now`.
    pub fn is_revoked(&self, identity: &str, issued_at: Option<f64>, now: f64) -> bool {
        let mut state = self.lock();
        state.forget_old_revocations(now, self.revocation.window);
        state.revoked.get(identity).is_some_and(|&revoked_at| issued_at.is_none_or(|issued| issued <= revoked_at))
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
        if !state.per_address.add(address, self.max_per_address) {
            return Err(Refusal::AddressFull);
        }
        state.admitted += 1;
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
}

impl TableState {
    fn forget_old_revocations(&mut self, now: f64, window: Duration) {
        while let Some((at, identity)) = self.revoked_order.front() {
            if now - at <= window.as_secs_f64() {
                break;
            }
            if self.revoked.get(identity) == Some(at) {
                self.revoked.remove(identity);
            }
            self.revoked_order.pop_front();
        }
    }
}

impl Slot {
    /// Records the connection that uses this slot, so it can be found by identity, with when
    /// its connection token was issued (if it said).
    pub fn register(&mut self, connection: &Arc<Connection>, issued_at: Option<f64>) {
        let revoked = {
            let mut state = self.table.lock();
            state.open.insert(connection.id(), (Arc::clone(connection), issued_at));
            if let Some(identity) = &connection.identity().id {
                state.by_identity.entry(identity.clone()).or_default().insert(connection.id());
            }
            self.connection = Some(connection.id());
            // The handshake checked the token, but a revocation may have come between that check
            // and this registration: it did not see this connection, so this sees it instead. Both
            // hold the table's lock, so one of the two always does.
            connection.identity().id.as_ref().is_some_and(|identity| {
                state.revoked.get(identity).is_some_and(|&at| issued_at.is_none_or(|issued| issued <= at))
            })
        };
        if revoked {
            connection.close(codes::REVOKED);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.table.lock();
        state.admitted -= 1;
        state.per_address.remove(self.address);
        let Some(id) = self.connection else { return };
        let Some((connection, _)) = state.open.remove(&id) else { return };
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

    #[test]
    fn a_connection_registered_after_its_identity_was_revoked_is_closed() {
        use crate::connection::{Identity, QueueBounds};
        use crate::metrics::Metrics;

        let table = ConnectionTable::new(10, None);
        let open = |id: u64| {
            let identity = Identity { id: Some("alice".into()), info: None };
            let shutdown = tokio_util::sync::CancellationToken::new();
            let metrics = Arc::new(Metrics::default());
            Connection::new(id, identity, address(1, 1), QueueBounds::default(), &shutdown, metrics)
        };
        // Its handshake passed before the logout; it registers after it.
        let mut slot = table.admit(address(1, 1)).expect("a slot");
        table.revoke("alice", 1000.0);
        let (late, _late_outbox) = open(1);
        slot.register(&late, Some(999.0));
        assert!(late.is_closing(), "a token issued before the revocation");
        assert_eq!(late.close_code(), codes::REVOKED);
        // A token issued after the revocation registers and stays.
        let mut slot = table.admit(address(1, 2)).expect("a slot");
        let (fresh, _fresh_outbox) = open(2);
        slot.register(&fresh, Some(1001.0));
        assert!(!fresh.is_closing());
    }

    #[test]
    fn revocations_refuse_older_tokens_for_the_window_only() {
        let table =
            ConnectionTable::with_revocation(10, None, RevocationBounds { window: Duration::from_secs(60), max: 2 });
        assert_eq!(table.revoke("alice", 1000.0), 0);
        assert!(table.is_revoked("alice", Some(999.0), 1001.0), "issued before");
        assert!(table.is_revoked("alice", Some(1000.0), 1001.0), "issued in the same second");
        assert!(table.is_revoked("alice", None, 1001.0), "a token that does not say when it was issued");
        assert!(!table.is_revoked("alice", Some(1001.0), 1001.0), "a fresh token");
        assert!(!table.is_revoked("bob", Some(999.0), 1001.0));
        assert!(!table.is_revoked("alice", Some(999.0), 1061.0), "forgotten after the window");
        for (i, who) in ["a", "b", "c"].into_iter().enumerate() {
            table.revoke(who, 2000.0 + f64::from(u8::try_from(i).expect("small")));
        }
        assert!(!table.is_revoked("a", None, 2003.0), "the oldest of too many is forgotten");
        assert!(table.is_revoked("c", None, 2003.0));
    }
}
