//! PubSub: browsers subscribe to channels (any JSON value, compared by value); browsers and the
//! web application publish to them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use serde_json::Value;

use crate::connection::{Connection, ConnectionId};
use crate::protocol::rpc::push_frame;
use crate::protocol::{errors, Params, RpcError};
use crate::service::{ask_policy, Caller, Policy, Service, Side};
use crate::services::limits::{check_size, PubSubLimits};
use crate::value::ValueKey;

/// The state shared by a PubSub service and its backend twin.
#[derive(Debug)]
pub struct PubSubHub {
    /// The frontend service's name, which deliveries carry (also those published through the
    /// backend service).
    frontend_name: String,
    /// How much one connection may subscribe to.
    limits: PubSubLimits,
    /// Subscriptions. A std `Mutex` because nothing awaits while holding it, and because queueing
    /// a delivery to every subscriber under the lock is what keeps publishes in one order for
    /// every subscriber of a channel.
    state: Mutex<HubState>,
}

#[derive(Debug, Default)]
struct HubState {
    channels: HashMap<ValueKey, HashMap<ConnectionId, Arc<Connection>>>,
    by_connection: HashMap<ConnectionId, HashSet<ValueKey>>,
}

#[derive(Serialize)]
struct Delivery<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    channel: &'a Value,
    message: &'a Value,
}

impl PubSubHub {
    fn lock(&self) -> MutexGuard<'_, HubState> {
        crate::sync::lock(&self.state)
    }

    /// Delivers `message` to every subscriber of `channel`; returns how many it reached.
    /// The frame is serialized once and shared.
    pub fn publish(&self, channel: &Value, message: &Value) -> usize {
        let key = ValueKey::of(channel);
        let state = self.lock();
        let Some(subscribers) = state.channels.get(&key) else {
            return 0;
        };
        let frame = push_frame(&self.frontend_name, Delivery { kind: "message", channel, message });
        subscribers.values().filter(|connection| connection.deliver(frame.clone())).count()
    }

    fn subscribe(&self, connection: &Arc<Connection>, channel: &Value) -> Result<(), RpcError> {
        check_size(channel, self.limits.max_channel_size, errors::CHANNEL_TOO_LARGE)?;
        let key = ValueKey::of(channel);
        let mut state = self.lock();
        if state.channels.get(&key).is_some_and(|subscribers| subscribers.contains_key(&connection.id())) {
            return Err(errors::ALREADY_SUBSCRIBED);
        }
        if state.by_connection.get(&connection.id()).is_some_and(|keys| keys.len() >= self.limits.max_subscriptions) {
            return Err(errors::TOO_MANY_SUBSCRIPTIONS);
        }
        state.channels.entry(key.clone()).or_default().insert(connection.id(), Arc::clone(connection));
        state.by_connection.entry(connection.id()).or_default().insert(key);
        Ok(())
    }

    fn unsubscribe(&self, connection: &Arc<Connection>, channel: &Value) -> Result<(), RpcError> {
        let key = ValueKey::of(channel);
        let mut state = self.lock();
        let removed = state.by_connection.get_mut(&connection.id()).is_some_and(|keys| keys.remove(&key));
        if !removed {
            return Err(errors::NOT_SUBSCRIBED);
        }
        state.remove_subscriber(&key, connection.id());
        Ok(())
    }

    fn disconnected(&self, connection: &Arc<Connection>) {
        let mut state = self.lock();
        if let Some(keys) = state.by_connection.remove(&connection.id()) {
            for key in keys {
                state.remove_subscriber(&key, connection.id());
            }
        }
    }

    /// The number of connections subscribed to `channel` (for tests and introspection).
    pub fn subscriber_count(&self, channel: &Value) -> usize {
        self.lock().channels.get(&ValueKey::of(channel)).map_or(0, HashMap::len)
    }
}

impl HubState {
    fn remove_subscriber(&mut self, key: &ValueKey, id: ConnectionId) {
        if let Some(subscribers) = self.channels.get_mut(key) {
            subscribers.remove(&id);
            if subscribers.is_empty() {
                self.channels.remove(key);
            }
        }
    }
}

/// The browser-facing PubSub service: `subscribe`, `unsubscribe`, `publish`.
#[derive(Debug, Clone)]
pub struct PubSubService {
    hub: Arc<PubSubHub>,
    /// Decides browser publishes; `None` allows every connection to publish (the default).
    publish_policy: Option<Arc<dyn Policy>>,
}

impl PubSubService {
    /// A PubSub service named `name`, with the default limits.
    pub fn new(name: impl Into<String>) -> PubSubService {
        Self::with_limits(name, PubSubLimits::default())
    }

    /// A PubSub service named `name` with these limits.
    pub fn with_limits(name: impl Into<String>, limits: PubSubLimits) -> PubSubService {
        let hub = PubSubHub { frontend_name: name.into(), limits, state: Mutex::default() };
        PubSubService { hub: Arc::new(hub), publish_policy: None }
    }

    /// Installs the policy that decides browser publishes ("Not authorized" when it refuses).
    #[must_use]
    pub fn with_publish_policy(mut self, policy: Arc<dyn Policy>) -> PubSubService {
        self.publish_policy = Some(policy);
        self
    }

    /// The shared state, for the backend twin and in-process publishing.
    pub fn hub(&self) -> &Arc<PubSubHub> {
        &self.hub
    }

    async fn publish(&self, connection: &Arc<Connection>, mut params: Params) -> Result<Value, RpcError> {
        let channel = params.take("channel")?;
        let message = params.take("message")?;
        params.finish()?;
        check_size(&channel, self.hub.limits.max_channel_size, errors::CHANNEL_TOO_LARGE)?;
        if !ask_policy(self.publish_policy.as_ref(), self.name(), connection, &channel).await? {
            return Err(errors::NOT_AUTHORIZED);
        }
        self.hub.publish(&channel, &message);
        Ok(Value::Null)
    }
}

impl Service for PubSubService {
    fn name(&self) -> &str {
        &self.hub.frontend_name
    }

    fn side(&self) -> Side {
        Side::Frontend
    }

    async fn handle(&self, caller: Caller<'_>, command: &str, params: Params) -> Result<Value, RpcError> {
        let Caller::Client(connection) = caller else {
            return Err(RpcError::UnknownCommand);
        };
        match command {
            "subscribe" => self.hub.subscribe(connection, &params.only("channel")?).map(|()| Value::Null),
            "unsubscribe" => self.hub.unsubscribe(connection, &params.only("channel")?).map(|()| Value::Null),
            "publish" => self.publish(connection, params).await,
            _ => Err(RpcError::UnknownCommand),
        }
    }

    fn disconnected(&self, connection: &Arc<Connection>) {
        self.hub.disconnected(connection);
    }
}

/// The web application's PubSub service: `publish`, always allowed.
#[derive(Debug, Clone)]
pub struct PubSubBackend {
    name: String,
    hub: Arc<PubSubHub>,
}

impl PubSubBackend {
    /// A backend service named `name` publishing through `frontend`'s channels.
    pub fn new(name: impl Into<String>, frontend: &PubSubService) -> PubSubBackend {
        PubSubBackend { name: name.into(), hub: Arc::clone(&frontend.hub) }
    }
}

impl Service for PubSubBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn side(&self) -> Side {
        Side::Backend
    }

    async fn handle(&self, _caller: Caller<'_>, command: &str, mut params: Params) -> Result<Value, RpcError> {
        match command {
            "publish" => {
                let channel = params.take("channel")?;
                let message = params.take("message")?;
                params.finish()?;
                self.hub.publish(&channel, &message);
                Ok(Value::Null)
            }
            _ => Err(RpcError::UnknownCommand),
        }
    }
}
