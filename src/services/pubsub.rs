//! PubSub: browsers subscribe to channels (any JSON value, compared by value); browsers and the
//! web application publish to them.
//!
//! With a broker (several nodes), a publish goes to Redis and comes back to every node that has
//! subscribers of the channel, this one included, which delivers it to them: one order per
//! channel for every subscriber on every node (the order Redis accepted the publishes). A node
//! subscribes to a channel's Redis channel with its first local subscriber (before that
//! subscriber's reply, so the next publish reaches it) and unsubscribes with its last. The
//! frame is serialized once, by the publishing node, and its text is what travels.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::broker::{Broker, Listener, Subscription};
use crate::connection::{Connection, ConnectionId};
use crate::protocol::rpc::push_frame;
use crate::protocol::{errors, Frame, Params, RpcError};
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
    /// The broker, when the server shares PubSub with other nodes (set when it binds), and the
    /// runtime it runs on (for publishes from other threads).
    broker: Mutex<Option<(Broker, tokio::runtime::Handle)>>,
    /// Itself, for the listeners it gives the broker.
    this: Weak<PubSubHub>,
}

#[derive(Debug, Default)]
struct HubState {
    channels: HashMap<ValueKey, Channel>,
    by_connection: HashMap<ConnectionId, HashSet<ValueKey>>,
}

/// A channel with local subscribers.
#[derive(Debug, Default)]
struct Channel {
    subscribers: HashMap<ConnectionId, Arc<Connection>>,
    /// With a broker: the node's subscription to the channel, made once by the first
    /// subscriber while the others wait for it; dropped with the channel.
    relay: Arc<OnceCell<Subscription>>,
}

#[derive(Serialize)]
struct Delivery<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    channel: &'a Value,
    message: &'a Value,
}

/// Delivers what the broker brings back for one channel to this node's subscribers.
struct ChannelListener {
    hub: Weak<PubSubHub>,
    key: ValueKey,
}

impl Listener for ChannelListener {
    fn message(&self, payload: &[u8]) {
        let Some(hub) = self.hub.upgrade() else { return };
        let Some(frame) = Frame::from_bytes(payload) else {
            log::error!("pubsub {:?}: a message from the broker is not UTF-8", hub.frontend_name);
            return;
        };
        hub.deliver_local(&self.key, &frame);
    }
}

impl PubSubHub {
    fn new(frontend_name: String, limits: PubSubLimits) -> Arc<PubSubHub> {
        Arc::new_cyclic(|this| PubSubHub {
            frontend_name,
            limits,
            state: Mutex::default(),
            broker: Mutex::default(),
            this: this.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        crate::sync::lock(&self.state)
    }

    fn broker(&self) -> Option<Broker> {
        crate::sync::lock(&self.broker).as_ref().map(|(broker, _)| broker.clone())
    }

    /// Routes publishes through `broker` (or keeps them in this process when `None`). Called
    /// on the server's runtime.
    pub fn attach(&self, broker: Option<&Broker>) {
        let runtime = tokio::runtime::Handle::current();
        *crate::sync::lock(&self.broker) = broker.map(|broker| (broker.clone(), runtime));
    }

    /// The broker channel of a PubSub channel.
    fn broker_channel(&self, broker: &Broker, key: &ValueKey) -> String {
        broker.channel(&format!("pubsub:{}:{}", self.frontend_name, key.digest()))
    }

    /// Publishes `message` to `channel`: to every subscriber in this process, or through the
    /// broker to every subscriber of every node. Returns how many local subscribers it reached.
    ///
    /// # Errors
    ///
    /// [`RpcError::Unavailable`] when the broker is unreachable (nothing was delivered).
    pub async fn publish(&self, channel: &Value, message: &Value) -> Result<usize, RpcError> {
        let frame = push_frame(&self.frontend_name, Delivery { kind: "message", channel, message });
        let key = ValueKey::of(channel);
        match self.broker() {
            None => Ok(self.deliver_local(&key, &frame)),
            Some(broker) => {
                let name = self.broker_channel(&broker, &key);
                Box::pin(broker.publish(&name, frame.as_str().as_bytes())).await.map_err(|err| {
                    log::warn!("pubsub {:?}: a publish could not reach the broker: {err}", self.frontend_name);
                    RpcError::Unavailable
                })?;
                Ok(self.subscriber_count_key(&key))
            }
        }
    }

    /// [`publish`](Self::publish) from a thread outside the server's runtime (Python code).
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish).
    pub fn publish_blocking(&self, channel: &Value, message: &Value) -> Result<usize, RpcError> {
        let runtime = crate::sync::lock(&self.broker).as_ref().map(|(_, runtime)| runtime.clone());
        match runtime {
            Some(runtime) if tokio::runtime::Handle::try_current().is_err() => {
                runtime.block_on(self.publish(channel, message))
            }
            _ => {
                let frame = push_frame(&self.frontend_name, Delivery { kind: "message", channel, message });
                Ok(self.deliver_local(&ValueKey::of(channel), &frame))
            }
        }
    }

    /// Queues `frame` to this node's subscribers of `key`; returns how many took it.
    fn deliver_local(&self, key: &ValueKey, frame: &Frame) -> usize {
        let state = self.lock();
        let Some(channel) = state.channels.get(key) else {
            return 0;
        };
        channel.subscribers.values().filter(|connection| connection.deliver(frame.clone())).count()
    }

    async fn subscribe(&self, connection: &Arc<Connection>, channel: &Value) -> Result<(), RpcError> {
        check_size(channel, self.limits.max_channel_size, errors::CHANNEL_TOO_LARGE)?;
        let key = ValueKey::of(channel);
        let relay = {
            let mut state = self.lock();
            if state.channels.get(&key).is_some_and(|channel| channel.subscribers.contains_key(&connection.id())) {
                return Err(errors::ALREADY_SUBSCRIBED);
            }
            if state.by_connection.get(&connection.id()).is_some_and(|keys| keys.len() >= self.limits.max_subscriptions)
            {
                return Err(errors::TOO_MANY_SUBSCRIPTIONS);
            }
            let entry = state.channels.entry(key.clone()).or_default();
            entry.subscribers.insert(connection.id(), Arc::clone(connection));
            let relay = Arc::clone(&entry.relay);
            state.by_connection.entry(connection.id()).or_default().insert(key.clone());
            relay
        };
        let Some(broker) = self.broker() else { return Ok(()) };
        let listener = Arc::new(ChannelListener { hub: self.this.clone(), key: key.clone() });
        let name = self.broker_channel(&broker, &key);
        // Boxed: a broker call's state is large, and without a broker a subscribe never holds it.
        if let Err(err) = Box::pin(relay.get_or_try_init(|| broker.subscribe(&name, listener))).await {
            log::warn!("pubsub {:?}: a subscription could not reach the broker: {err}", self.frontend_name);
            self.remove(connection.id(), &key);
            return Err(RpcError::Unavailable);
        }
        Ok(())
    }

    fn unsubscribe(&self, connection: &Arc<Connection>, channel: &Value) -> Result<(), RpcError> {
        let key = ValueKey::of(channel);
        if !self.remove(connection.id(), &key) {
            return Err(errors::NOT_SUBSCRIBED);
        }
        Ok(())
    }

    /// Takes connection `id` off channel `key`; false when it was not subscribed.
    fn remove(&self, id: ConnectionId, key: &ValueKey) -> bool {
        let mut state = self.lock();
        let removed = state.by_connection.get_mut(&id).is_some_and(|keys| keys.remove(key));
        if removed {
            state.remove_subscriber(key, id);
        }
        removed
    }

    fn disconnected(&self, connection: &Arc<Connection>) {
        let mut state = self.lock();
        if let Some(keys) = state.by_connection.remove(&connection.id()) {
            for key in keys {
                state.remove_subscriber(&key, connection.id());
            }
        }
    }

    /// The number of connections subscribed to `channel` on this node (for tests and
    /// introspection).
    pub fn subscriber_count(&self, channel: &Value) -> usize {
        self.subscriber_count_key(&ValueKey::of(channel))
    }

    fn subscriber_count_key(&self, key: &ValueKey) -> usize {
        self.lock().channels.get(key).map_or(0, |channel| channel.subscribers.len())
    }
}

impl HubState {
    fn remove_subscriber(&mut self, key: &ValueKey, id: ConnectionId) {
        if let Some(channel) = self.channels.get_mut(key) {
            channel.subscribers.remove(&id);
            if channel.subscribers.is_empty() {
                // Dropping the channel drops the node's subscription to it.
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
        PubSubService { hub: PubSubHub::new(name.into(), limits), publish_policy: None }
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
        self.hub.publish(&channel, &message).await?;
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
            "subscribe" => self.hub.subscribe(connection, &params.only("channel")?).await.map(|()| Value::Null),
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
                self.hub.publish(&channel, &message).await?;
                Ok(Value::Null)
            }
            _ => Err(RpcError::UnknownCommand),
        }
    }
}
