//! Messaging: connections register participant names and send each other messages by name
//! (docs/protocol.md "Messaging"). No identity is needed: a name belongs to the connection that
//! registered it until it unregisters it or disconnects.
//!
//! Names are strings (another type is "Invalid params"). `listParticipants` lists every name
//! registered on the service, sorted by code point.
//!
//! Policy: [`MessagingService::with_name_policy`] installs an `is_name_allowed(client, name)`
//! hook; when it refuses, `registerParticipant` answers "Name not allowed". It is asked only
//! about names that are free (a taken name is "Name already registered" first, as in 0.1).
//!
//! With a broker (several nodes), names live in Redis: see the `cluster` submodule.

mod cluster;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use serde_json::Value;

use crate::broker::Broker;
use crate::connection::{Connection, ConnectionId};
use crate::error::Error;
use crate::protocol::rpc::push_frame;
use crate::protocol::{errors, Params, RpcError};
use crate::service::{ask_policy, Caller, Departure, Policy, Service, Side};
use crate::services::limits::MessagingLimits;

/// A Messaging service: `registerParticipant`, `unregisterParticipant`, `listParticipants`,
/// `send`.
#[derive(Debug, Clone)]
pub struct MessagingService {
    shared: Arc<MessagingShared>,
    /// Decides which names a connection may register; `None` allows every name (the default).
    name_policy: Option<Arc<dyn Policy>>,
}

#[derive(Debug)]
struct MessagingShared {
    /// The name clients address, which every push carries.
    name: String,
    /// How many and how long the names may be.
    limits: MessagingLimits,
    /// The registered names. A std `Mutex` because nothing awaits while holding it; a message
    /// is queued under it, so messages to one participant arrive in the order they were sent.
    /// Unused with a broker.
    state: Mutex<MessagingState>,
    /// With a broker: the names of the cluster (set when a server binds).
    cluster: Mutex<Option<Arc<cluster::MessagingCluster>>>,
}

#[derive(Debug, Default)]
struct MessagingState {
    /// Every registered name and its connection. A `BTreeMap` because `listParticipants` is
    /// sorted by code point, which is the order of Rust strings.
    names: BTreeMap<String, Arc<Connection>>,
    /// The names of each connection, to free them on disconnect.
    by_connection: HashMap<ConnectionId, HashSet<String>>,
}

/// The push a recipient gets.
#[derive(Serialize)]
struct MessagePush<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sender: &'a str,
    dest: &'a str,
    body: &'a Value,
}

const TAKEN: RpcError = errors::NAME_ALREADY_REGISTERED;

impl MessagingShared {
    fn lock(&self) -> MutexGuard<'_, MessagingState> {
        crate::sync::lock(&self.state)
    }

    fn cluster(&self) -> Option<Arc<cluster::MessagingCluster>> {
        crate::sync::lock(&self.cluster).clone()
    }

    fn register(&self, connection: &Arc<Connection>, name: String) -> Result<(), RpcError> {
        let mut state = self.lock();
        if state.names.contains_key(&name) {
            return Err(TAKEN);
        }
        if state.by_connection.get(&connection.id()).is_some_and(|names| names.len() >= self.limits.max_names) {
            return Err(errors::TOO_MANY_NAMES);
        }
        if state.names.len() >= self.limits.max_participants {
            return Err(errors::TOO_MANY_PARTICIPANTS);
        }
        state.by_connection.entry(connection.id()).or_default().insert(name.clone());
        state.names.insert(name, Arc::clone(connection));
        Ok(())
    }

    fn unregister(&self, connection: &Connection, name: &str) -> Result<(), RpcError> {
        let mut state = self.lock();
        match state.names.get(name) {
            None => return Err(errors::UNKNOWN_PARTICIPANT),
            Some(owner) if owner.id() != connection.id() => return Err(errors::INVALID_PARTICIPANT),
            Some(_) => {}
        }
        state.names.remove(name);
        if let Some(names) = state.by_connection.get_mut(&connection.id()) {
            names.remove(name);
            if names.is_empty() {
                state.by_connection.remove(&connection.id());
            }
        }
        Ok(())
    }

    fn send(&self, connection: &Connection, sender: &str, dest: &str, body: &Value) -> Result<(), RpcError> {
        let state = self.lock();
        if state.names.get(sender).is_none_or(|owner| owner.id() != connection.id()) {
            return Err(errors::INVALID_SENDER);
        }
        let Some(recipient) = state.names.get(dest) else {
            return Err(errors::UNKNOWN_DESTINATION);
        };
        recipient.deliver(push_frame(&self.name, MessagePush { kind: "message", sender, dest, body }));
        Ok(())
    }

    fn disconnected(&self, connection: &Connection) {
        let mut state = self.lock();
        if let Some(names) = state.by_connection.remove(&connection.id()) {
            for name in names {
                state.names.remove(&name);
            }
        }
    }
}

impl MessagingService {
    /// A Messaging service named `name`, with the default limits.
    pub fn new(name: impl Into<String>) -> MessagingService {
        Self::with_limits(name, MessagingLimits::default())
    }

    /// A Messaging service named `name` with these limits.
    pub fn with_limits(name: impl Into<String>, limits: MessagingLimits) -> MessagingService {
        let shared = MessagingShared { name: name.into(), limits, state: Mutex::default(), cluster: Mutex::default() };
        MessagingService { shared: Arc::new(shared), name_policy: None }
    }

    /// Installs the policy that decides names ("Name not allowed" when it refuses). Its subject
    /// is the name, a JSON string.
    #[must_use]
    pub fn with_name_policy(mut self, policy: Arc<dyn Policy>) -> MessagingService {
        self.name_policy = Some(policy);
        self
    }

    /// Shares the names with the other nodes of `broker` (or keeps them in this process when
    /// `None`). Called when a server binds.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the node cannot listen on the broker.
    pub async fn attach(&self, broker: Option<&Broker>) -> Result<(), Error> {
        let cluster = match broker {
            Some(broker) => {
                Some(cluster::MessagingCluster::start(&self.shared.name, self.shared.limits, broker).await?)
            }
            None => None,
        };
        *crate::sync::lock(&self.shared.cluster) = cluster;
        Ok(())
    }

    /// Every registered name, sorted by code point; with a broker, the names of this node's
    /// connections (`listParticipants` lists the cluster's).
    pub fn participants(&self) -> Vec<String> {
        match self.shared.cluster() {
            Some(cluster) => cluster.local_names(),
            None => self.shared.lock().names.keys().cloned().collect(),
        }
    }

    async fn list(&self) -> Result<Value, RpcError> {
        match self.shared.cluster() {
            Some(cluster) => cluster.list().await.map(Value::from),
            None => Ok(Value::from(self.participants())),
        }
    }

    async fn register(&self, connection: &Arc<Connection>, mut params: Params) -> Result<Value, RpcError> {
        let name = take_name(&mut params, "name")?;
        params.finish()?;
        if name.len() > self.shared.limits.max_name_length {
            return Err(errors::NAME_TOO_LONG);
        }
        // Checked before the policy so a hook is not asked about a name that is taken anyway;
        // `register` checks again (under the lock, or in Redis), since another connection may
        // take the name while the hook runs.
        let cluster = self.shared.cluster();
        let taken = match &cluster {
            Some(cluster) => cluster.is_taken(&name).await?,
            None => self.shared.lock().names.contains_key(&name),
        };
        if taken {
            return Err(TAKEN);
        }
        let subject = Value::String(name.clone());
        if !ask_policy(self.name_policy.as_ref(), self.name(), connection, &subject).await? {
            return Err(errors::NAME_NOT_ALLOWED);
        }
        match cluster {
            Some(cluster) => cluster.register(connection, name).await.map(|()| Value::Null),
            None => self.shared.register(connection, name).map(|()| Value::Null),
        }
    }
}

fn take_name(params: &mut Params, key: &str) -> Result<String, RpcError> {
    params.take_string(key, RpcError::InvalidParams)
}

impl Service for MessagingService {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn side(&self) -> Side {
        Side::Frontend
    }

    async fn handle(&self, caller: Caller<'_>, command: &str, mut params: Params) -> Result<Value, RpcError> {
        let Caller::Client(connection) = caller else {
            return Err(RpcError::UnknownCommand);
        };
        match command {
            "registerParticipant" => self.register(connection, params).await,
            "unregisterParticipant" => {
                let name = take_name(&mut params, "name")?;
                params.finish()?;
                match self.shared.cluster() {
                    Some(cluster) => cluster.unregister(connection, &name).await,
                    None => self.shared.unregister(connection, &name),
                }
                .map(|()| Value::Null)
            }
            "listParticipants" => {
                params.finish()?;
                self.list().await
            }
            "send" => {
                let sender = take_name(&mut params, "sender")?;
                let dest = take_name(&mut params, "dest")?;
                let body = params.take("body")?;
                params.finish()?;
                match self.shared.cluster() {
                    Some(cluster) => cluster.send(connection, &sender, &dest, &body).await,
                    None => self.shared.send(connection, &sender, &dest, &body),
                }
                .map(|()| Value::Null)
            }
            _ => Err(RpcError::UnknownCommand),
        }
    }

    fn disconnected(&self, connection: &Arc<Connection>) {
        if let Some(departure) = self.departed(connection) {
            tokio::spawn(departure);
        }
    }

    fn departed(&self, connection: &Arc<Connection>) -> Option<Departure> {
        if let Some(cluster) = self.shared.cluster() {
            return cluster.departure(connection);
        }
        self.shared.disconnected(connection);
        None
    }
}
