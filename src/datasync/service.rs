//! `datasync`: the browser-facing DataSync service (`acquireSubscription`,
//! `cancelSubscription`), and the hub of state it shares with its backend twin
//! ([`DataSyncBackend`](super::DataSyncBackend)).
//!
//! Design of the shared state, its locks and its tasks:
//! - One [`DataSyncHub`] per service, behind an `Arc`: the dealers ([`Authorizer`], immutable,
//!   outside any lock), and the [`Subscriptions`] (router, stream, tokens, holders) behind a
//!   std `Mutex`. Nothing awaits while it is held, and every piece of work done under it is
//!   bounded: authorizations are prepared (filters parsed) before it is taken, batches are
//!   routed in chunks of [`PUBLISH_CHUNK`] deltas with the lock released between them, a
//!   catch-up step scans a bounded part of the stream, a sweep drops a bounded number.
//! - Batches are published one at a time, in arrival order, through an async gate (a tokio
//!   `Mutex` that no thread blocks on): the chunks of one batch are never interleaved with
//!   another's, so every subscription receives deltas in publish order.
//! - Python key functions never run under the lock, nor on a runtime thread: when a dealer
//!   has one, `publishDeltas` computes the keys of the whole batch first on a blocking worker
//!   thread ([`FunctionKeys`]), and the stream keeps them for replays.
//! - A subscription whose connection's queue was full catches up in a task of its own, a
//!   step each time the queue drains ([`Connection::wait_drained`]).
//! - Timeouts are exact without any timer: a waiting subscription whose deadline has passed
//!   is dropped the moment it is acquired or routed to. A sweeper task only reclaims the
//!   memory of subscriptions nobody touches again (and trims the stream by age), every
//!   [`SWEEP_INTERVAL`]. Services are built outside any runtime (Python builds them before
//!   the server starts), so the sweeper is spawned by the first command the service handles,
//!   on the runtime that runs it, and spawned again if that runtime ended (a server stopped
//!   and started again). It holds only a weak reference, so it ends with the service.
//! - With a broker (several nodes), subscriptions and the stream live in Redis and each node's
//!   stream mirrors it (see `cluster.rs`); the hub holds the link in an `Option` that is read
//!   once per command, so a server without a broker does exactly what it did before.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::task::TaskTracker;

use super::cluster::Cluster;
use super::dealer::Dealer;
use super::delta::{Delta, DeltaError};
use super::idempotency::RecentKeys;
use super::limits::Limits;
use super::router::{AuthError, Authorizer, FunctionKeys, PreparedItems, Router, RouterError};
use super::stream::Offset;
use super::subscription::{CatchUp, Lagging, Resume, SubscriptionError, Subscriptions};
use crate::broker::Broker;
use crate::connection::Connection;
use crate::protocol::{errors, Params, RpcError};
use crate::service::{Caller, Service, Side};

/// How often the sweeper drops expired subscriptions (memory only: expiry itself is exact).
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// How many deltas of a batch are routed per hold of the lock.
pub const PUBLISH_CHUNK: usize = 256;

/// How long `acquireSubscription` waits for the previous holder's writer to finish (it is
/// bounded by twice the server's close timeout).
pub(super) const PREVIOUS_HOLDER_WAIT: Duration = Duration::from_secs(15);

/// How long a resume after an offset waits for another open connection holding the
/// subscription to close: the client's previous connection, cut by the network, is usually
/// noticed by then (its socket ends); a connection that stays open holds the token for real.
pub const OPEN_HOLDER_GRACE: Duration = Duration::from_secs(2);

/// The state a DataSync service shares with its backend twin.
pub struct DataSyncHub {
    /// The frontend service's name, which deliveries carry (also for deltas published through
    /// the backend service).
    frontend_name: String,
    /// The dealers, for preparing authorizations and checking batches without the lock.
    authorizer: Authorizer,
    limits: Limits,
    /// Whether some dealer computes keys with a function (then batches take a worker thread).
    key_functions: bool,
    /// Subscriptions, the router and the stream. A std `Mutex`: nothing awaits while holding
    /// it, and each hold does a bounded amount of work (see the module documentation).
    state: Mutex<Subscriptions>,
    /// Lets one batch publish at a time, in arrival order.
    publishing: tokio::sync::Mutex<()>,
    /// Idempotency keys of recent batches. Only touched by the batch holding `publishing`.
    recent_keys: Mutex<RecentKeys>,
    /// The sweeper task, if one was spawned (see the module documentation).
    sweeper: Mutex<Option<JoinHandle<()>>>,
    /// The link to the broker, when the server shares DataSync with other nodes.
    cluster: RwLock<Option<Arc<Cluster>>>,
    /// With a broker: the tasks giving the subscriptions of closed connections back to Redis,
    /// which a stopping server waits for.
    releases: TaskTracker,
}

impl fmt::Debug for DataSyncHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataSyncHub")
            .field("frontend_name", &self.frontend_name)
            .field("dealers", &self.dealers())
            .finish_non_exhaustive()
    }
}

impl DataSyncHub {
    fn lock(&self) -> MutexGuard<'_, Subscriptions> {
        crate::sync::lock(&self.state)
    }

    /// The subscriptions, the router and the stream, locked (see the module documentation).
    pub(super) fn state(&self) -> MutexGuard<'_, Subscriptions> {
        self.lock()
    }

    /// The link to the broker, if any.
    fn cluster(&self) -> Option<Arc<Cluster>> {
        self.cluster.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Shares the subscriptions and the stream through `broker` (or keeps them in this process
    /// when `None`). Called on the server's runtime when it binds; again with the same broker
    /// (the backend twin) it changes nothing.
    pub fn attach(self: &Arc<Self>, broker: Option<&Broker>) {
        let mut cluster = self.cluster.write().unwrap_or_else(PoisonError::into_inner);
        match broker {
            None => *cluster = None,
            Some(broker) if cluster.as_ref().is_some_and(|current| current.broker().node() == broker.node()) => {}
            Some(broker) => {
                self.lock().mirror();
                *cluster = Some(Cluster::attach(self, broker));
            }
        }
        drop(cluster);
        self.ensure_sweeper();
    }

    /// Whether some dealer computes keys with a function (user code, run off the runtime).
    pub(super) fn has_key_functions(&self) -> bool {
        self.key_functions
    }

    /// Prepares authorized items (as JSON) on a worker thread.
    pub(super) async fn prepare_items(self: &Arc<Self>, items: &str) -> Result<PreparedItems, RpcError> {
        let items: Value = serde_json::from_str(items).map_err(|err| {
            log::error!("datasync {:?}: a subscription's items in Redis are not JSON: {err}", self.frontend_name);
            RpcError::Internal
        })?;
        let hub = Arc::clone(self);
        tokio::task::spawn_blocking(move || hub.authorizer.prepare(&items))
            .await
            .map_err(|err| {
                log::error!("datasync {:?}: preparing items failed: {err}", self.frontend_name);
                RpcError::Internal
            })?
            .map_err(|err| {
                log::error!("datasync {:?}: a subscription's items in Redis are refused: {err}", self.frontend_name);
                RpcError::Internal
            })
    }

    /// The frontend service's name.
    pub fn frontend_name(&self) -> &str {
        &self.frontend_name
    }

    /// The dealers, in the order given.
    pub fn dealers(&self) -> &[Dealer] {
        self.authorizer.dealers()
    }

    /// The timeouts and bounds.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// How many subscriptions exist (waiting or acquired), for tests and introspection.
    pub fn subscription_count(&self) -> usize {
        self.lock().len()
    }

    /// How many subscriptions are waiting to be acquired.
    pub fn waiting_count(&self) -> usize {
        self.lock().waiting()
    }

    /// How many deltas the stream retains, and their estimated bytes.
    pub fn stream_size(&self) -> (usize, usize) {
        let state = self.lock();
        (state.stream().len(), state.stream().bytes())
    }

    /// How many field paths the Filter dealers index.
    pub fn indexed_paths(&self) -> usize {
        self.lock().router().indexed_paths()
    }

    /// Authorizes a subscription to `items` (the raw parameter of `authorizeSubscription`),
    /// preparing them on the calling thread, and returns its token.
    ///
    /// # Errors
    ///
    /// The [`AuthError`] of the first invalid item, or [`AuthError::TooManyItems`].
    pub fn authorize(self: &Arc<Self>, items: &Value) -> Result<String, AuthError> {
        self.authorize_for(items, None)
    }

    /// [`authorize`](Self::authorize), bound to `identity` when given: only connections with
    /// that identity may acquire or resume the subscription.
    ///
    /// # Errors
    ///
    /// As [`authorize`](Self::authorize).
    pub fn authorize_for(self: &Arc<Self>, items: &Value, identity: Option<String>) -> Result<String, AuthError> {
        self.ensure_sweeper();
        if items.as_array().is_some_and(|items| items.len() > self.limits.max_items) {
            return Err(AuthError::TooManyItems(self.limits.max_items));
        }
        let prepared = self.authorizer.prepare(items)?;
        self.lock().authorize(prepared, identity, Instant::now())
    }

    /// `authorizeSubscription`: as [`authorize_for`](Self::authorize_for), with the items
    /// prepared (filters parsed, indexes chosen) on a blocking worker thread, since a large
    /// authorization takes a while and must not hold up a runtime thread.
    ///
    /// # Errors
    ///
    /// As [`authorize`](Self::authorize), or "Internal error" if the worker failed.
    pub async fn authorize_request(
        self: &Arc<Self>,
        items: Value,
        identity: Option<String>,
    ) -> Result<String, RpcError> {
        let hub = Arc::clone(self);
        let Some(cluster) = self.cluster() else {
            return tokio::task::spawn_blocking(move || hub.authorize_for(&items, identity))
                .await
                .map_err(|err| {
                    log::error!("datasync {:?}: authorizing failed: {err}", self.frontend_name);
                    RpcError::Internal
                })?
                .map_err(auth_error);
        };
        // Checked here, recorded in Redis, prepared again by the node that acquires it.
        let items = tokio::task::spawn_blocking(move || hub.check_items(&items).map(|()| items.to_string()))
            .await
            .map_err(|err| {
                log::error!("datasync {:?}: authorizing failed: {err}", self.frontend_name);
                RpcError::Internal
            })?
            .map_err(auth_error)?;
        cluster.authorize(&self.frontend_name, &items, identity.as_deref(), &self.limits).await
    }

    /// Checks the raw items of an authorization.
    fn check_items(&self, items: &Value) -> Result<(), AuthError> {
        if items.as_array().is_some_and(|items| items.len() > self.limits.max_items) {
            return Err(AuthError::TooManyItems(self.limits.max_items));
        }
        self.authorizer.prepare(items).map(|_| ())
    }

    /// Parses and checks a whole `deltas` parameter (nothing is delivered unless all of it is
    /// valid).
    ///
    /// # Errors
    ///
    /// The first bad delta's [`DeltaError`].
    pub fn parse_deltas(&self, deltas: Value) -> Result<Vec<Delta>, DeltaError> {
        Delta::parse_batch(deltas, |model| self.authorizer.known_model(model))
    }

    /// `publishDeltas`: validates the whole batch, then routes it, a chunk per hold of the
    /// lock. A batch whose `key` was seen within the idempotency window is accepted and not
    /// delivered again. Key functions, if any, run on a blocking worker thread first.
    ///
    /// # Errors
    ///
    /// The reply text of the first bad delta, or "Internal error" if the worker failed.
    pub async fn publish_deltas(self: &Arc<Self>, deltas: Value, key: Option<String>) -> Result<usize, RpcError> {
        self.ensure_sweeper();
        let deltas = self.parse_deltas(deltas).map_err(delta_error)?;
        if deltas.is_empty() {
            return Ok(0);
        }
        if let Some(cluster) = self.cluster() {
            // Serialized once here; every node parses them from the stream.
            let texts =
                deltas.iter().map(serde_json::to_string).collect::<Result<Vec<String>, _>>().map_err(|err| {
                    log::error!("datasync {:?}: serializing deltas failed: {err}", self.frontend_name);
                    RpcError::Internal
                })?;
            return cluster.publish(&self.frontend_name, &texts, key.as_deref(), &self.limits).await;
        }
        let _turn = self.publishing.lock().await;
        if let Some(key) = &key {
            if crate::sync::lock(&self.recent_keys).contains(key, Instant::now()) {
                log::debug!("datasync {:?}: batch {key:?} was already published", self.frontend_name);
                return Ok(0);
            }
        }
        let batch = if self.key_functions {
            let hub = Arc::clone(self);
            tokio::task::spawn_blocking(move || hub.with_keys(deltas)).await.map_err(|err| {
                log::error!("datasync {:?}: computing keys failed: {err}", self.frontend_name);
                RpcError::Internal
            })?
        } else {
            deltas.into_iter().map(|delta| (delta, FunctionKeys::default())).collect()
        };
        let mut delivered = 0;
        let mut batch = batch.into_iter().peekable();
        while batch.peek().is_some() {
            let chunk = batch.by_ref().take(PUBLISH_CHUNK);
            let (queued, lagging) = self.lock().publish(chunk, Instant::now());
            delivered += queued;
            self.catch_up_later(lagging);
            if batch.peek().is_some() {
                tokio::task::yield_now().await;
            }
        }
        if let Some(key) = &key {
            crate::sync::lock(&self.recent_keys).remember(key, Instant::now());
        }
        Ok(delivered)
    }

    /// Pairs each delta with the keys its function-keyed dealers compute (runs user code).
    pub(super) fn with_keys(&self, deltas: Vec<Delta>) -> Vec<(Delta, FunctionKeys)> {
        deltas
            .into_iter()
            .map(|delta| {
                let keys = if self.key_functions {
                    FunctionKeys::compute(self.dealers(), &delta)
                } else {
                    FunctionKeys::default()
                };
                (delta, keys)
            })
            .collect()
    }

    /// Runs the catch-up of each lagging subscription in a task of its own: a step every
    /// time the connection's queue drains, until it is live again or the connection closes.
    pub(super) fn catch_up_later(self: &Arc<Self>, lagging: Lagging) {
        for (id, connection) in lagging {
            let hub = Arc::downgrade(self);
            tokio::spawn(async move {
                loop {
                    connection.wait_drained().await;
                    if connection.is_closing() {
                        return;
                    }
                    let Some(hub) = hub.upgrade() else { return };
                    let step = hub.lock().catch_up(id, &connection);
                    if step == CatchUp::Done {
                        hub.forget_dropped().await;
                        return;
                    }
                    drop(hub);
                    tokio::task::yield_now().await;
                }
            });
        }
    }

    /// `acquireSubscription`; returns the position it was acquired at. When the previous
    /// holder's connection is still writing out its queue and the client gave no offset, waits
    /// for it (bounded) so the subscription resumes exactly after what it wrote.
    async fn acquire(
        self: &Arc<Self>,
        token: &str,
        connection: &Arc<Connection>,
        resume: Resume,
    ) -> Result<Offset, SubscriptionError> {
        self.ensure_sweeper();
        let mut waited = false;
        loop {
            let result = self.lock().acquire(token, connection, resume, Instant::now());
            match result {
                Ok((lagging, position)) => {
                    self.catch_up_later(lagging);
                    return Ok(position);
                }
                Err(SubscriptionError::PreviousHolderClosing(previous)) if !waited => {
                    waited = true;
                    if tokio::time::timeout(PREVIOUS_HOLDER_WAIT, previous.finished()).await.is_err() {
                        log::warn!("datasync {:?}: a previous holder took too long to close", self.frontend_name);
                    }
                }
                Err(SubscriptionError::HeldOpen(holder)) if !waited => {
                    waited = true;
                    let _ = tokio::time::timeout(OPEN_HOLDER_GRACE, holder.closed()).await;
                }
                Err(SubscriptionError::PreviousHolderClosing(_) | SubscriptionError::HeldOpen(_)) => {
                    return Err(SubscriptionError::NoSuchSubscription);
                }
                Err(other) => return Err(other),
            }
        }
    }

    async fn cancel(&self, token: &str, connection: &Arc<Connection>) -> Result<(), SubscriptionError> {
        let lease = self.lock().cancel(token, connection)?;
        if let Some(cluster) = self.cluster() {
            cluster.delete(vec![(token.to_owned(), lease)]).await;
        }
        Ok(())
    }

    fn disconnected(self: &Arc<Self>, connection: &Arc<Connection>) {
        let ids = self.lock().disconnected(connection, Instant::now());
        if let Some(cluster) = self.cluster() {
            if !ids.is_empty() {
                self.releases.spawn(Arc::clone(self).release_shared(cluster, Arc::clone(connection), ids));
            }
        }
    }

    /// Resolves once the subscriptions of the connections closed so far are back in Redis
    /// (at once without a broker).
    pub async fn drained(&self) {
        self.releases.close();
        self.releases.wait().await;
        // A server started again tracks its releases anew.
        self.releases.reopen();
    }

    /// With a broker: removes from Redis the subscriptions this node dropped because they fell
    /// behind what the stream retains (their clients must resync).
    async fn forget_dropped(&self) {
        let Some(cluster) = self.cluster() else { return };
        let dropped = self.lock().take_dropped();
        cluster.delete(dropped).await;
    }

    /// Drops the subscriptions whose deadline has passed and trims the stream; returns how
    /// many were dropped.
    pub fn sweep(&self) -> usize {
        self.lock().sweep(Instant::now())
    }

    /// Spawns the sweeper on the current runtime unless one is running.
    fn ensure_sweeper(self: &Arc<Self>) {
        let mut sweeper = self.sweeper.lock().unwrap_or_else(PoisonError::into_inner);
        if sweeper.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        *sweeper = Some(runtime.spawn(sweep_periodically(Arc::downgrade(self))));
    }
}

async fn sweep_periodically(hub: Weak<DataSyncHub>) {
    let mut interval = tokio::time::interval(SWEEP_INTERVAL);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(hub) = hub.upgrade() else {
            return;
        };
        let dropped = hub.sweep();
        if dropped > 0 {
            log::debug!("datasync {:?}: {dropped} subscriptions expired", hub.frontend_name);
        }
        if let Some(cluster) = hub.cluster() {
            hub.forget_dropped().await;
            hub.maintain(&cluster).await;
        }
    }
}

/// The reply for a refused batch of deltas.
fn delta_error(error: DeltaError) -> RpcError {
    match error {
        DeltaError::InvalidParams => RpcError::InvalidParams,
        other => RpcError::Service(Cow::Owned(other.to_string())),
    }
}

/// The reply for refused authorization items.
pub(super) fn auth_error(error: AuthError) -> RpcError {
    match error {
        AuthError::InvalidParams => RpcError::InvalidParams,
        AuthError::DuplicateSubscription(_) => {
            log::error!("datasync: {error}");
            RpcError::Internal
        }
        other => RpcError::Service(Cow::Owned(other.to_string())),
    }
}

/// The browser-facing DataSync service: `acquireSubscription`, `cancelSubscription`.
#[derive(Debug, Clone)]
pub struct DataSyncService {
    hub: Arc<DataSyncHub>,
}

impl DataSyncService {
    /// A DataSync service named `name` routing through `dealers`, with the default limits
    /// but for the two timeouts: `subscription_timeout` (how long an authorized subscription
    /// waits to be acquired) and `resume_timeout` (how long it waits after its connection
    /// closed).
    ///
    /// # Errors
    ///
    /// [`RouterError::DuplicateDealer`] when two dealers share a name.
    pub fn new(
        name: impl Into<String>,
        dealers: Vec<Dealer>,
        subscription_timeout: Duration,
        resume_timeout: Duration,
    ) -> Result<DataSyncService, RouterError> {
        Self::with_limits(name, dealers, Limits { subscription_timeout, resume_timeout, ..Limits::default() })
    }

    /// As [`new`](Self::new), with every limit given ([`Limits::default`] for the defaults).
    ///
    /// # Errors
    ///
    /// [`RouterError::DuplicateDealer`] when two dealers share a name.
    pub fn with_limits(
        name: impl Into<String>,
        dealers: Vec<Dealer>,
        limits: Limits,
    ) -> Result<DataSyncService, RouterError> {
        let name = name.into();
        let authorizer = Authorizer::new(dealers, limits.filter)?;
        let router = Router::with_authorizer(authorizer.clone());
        let hub = DataSyncHub {
            key_functions: FunctionKeys::needed(authorizer.dealers()),
            authorizer,
            limits,
            state: Mutex::new(Subscriptions::new(name.clone(), router, limits)),
            publishing: tokio::sync::Mutex::new(()),
            recent_keys: Mutex::new(RecentKeys::new(limits.idempotency_window, limits.max_idempotency_keys)),
            frontend_name: name,
            sweeper: Mutex::new(None),
            cluster: RwLock::new(None),
            releases: TaskTracker::new(),
        };
        Ok(DataSyncService { hub: Arc::new(hub) })
    }

    /// The shared state, for the backend twin and in-process use.
    pub fn hub(&self) -> &Arc<DataSyncHub> {
        &self.hub
    }
}

fn take_token(mut params: Params) -> Result<String, RpcError> {
    let token = params.take_string("token", errors::TOKEN_MUST_BE_STRING)?;
    params.finish()?;
    Ok(token)
}

/// The parameters of `acquireSubscription`: `token`, and the optional `offsets` (a boolean;
/// `false` is the same as absent) and `after` (an offset string, only with `offsets`).
fn acquire_params(mut params: Params) -> Result<(String, Resume), RpcError> {
    let token = params.take_string("token", errors::TOKEN_MUST_BE_STRING)?;
    let offsets = match params.take_optional("offsets") {
        None | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(_) => return Err(RpcError::InvalidParams),
    };
    let after = match params.take_optional("after") {
        None => None,
        Some(_) if !offsets => return Err(RpcError::InvalidParams),
        Some(Value::String(text)) => Some(text.parse::<Offset>().map_err(|_| errors::INVALID_OFFSET)?),
        Some(_) => return Err(errors::INVALID_OFFSET),
    };
    params.finish()?;
    Ok((token, Resume { offsets, after }))
}

/// The reply for a refused frontend command.
pub(super) fn subscription_error(error: SubscriptionError) -> RpcError {
    match error {
        SubscriptionError::TooMany => errors::TOO_MANY_SUBSCRIPTIONS,
        SubscriptionError::NotRetained => errors::OFFSET_NOT_RETAINED,
        SubscriptionError::NoSuchSubscription
        | SubscriptionError::PreviousHolderClosing(_)
        | SubscriptionError::HeldOpen(_) => errors::NO_SUCH_SUBSCRIPTION,
    }
}

impl Service for DataSyncService {
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
            "acquireSubscription" => {
                let (token, resume) = acquire_params(params)?;
                let position = match self.hub.cluster() {
                    Some(cluster) => {
                        self.hub.acquire_shared(&cluster, &token, connection, resume.offsets, resume.after).await?
                    }
                    None => self.hub.acquire(&token, connection, resume).await.map_err(subscription_error)?,
                };
                // Opted in: the reply says where the subscription stands, so a client that has
                // received no delta yet still has an offset to resume after.
                Ok(if resume.offsets { serde_json::json!({"offset": position.to_string()}) } else { Value::Null })
            }
            "cancelSubscription" => self
                .hub
                .cancel(&take_token(params)?, connection)
                .await
                .map(|()| Value::Null)
                .map_err(subscription_error),
            _ => Err(RpcError::UnknownCommand),
        }
    }

    fn disconnected(&self, connection: &Arc<Connection>) {
        self.hub.disconnected(connection);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasync::KeyFunction;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;

    fn service(dealers: Vec<Dealer>) -> DataSyncService {
        DataSyncService::new("datasync", dealers, Duration::from_secs(2), Duration::from_secs(1))
            .expect("distinct dealer names")
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_reclaims_expired_subscriptions() {
        let service = service(vec![Dealer::broadcast("all", "Task")]);
        let hub = service.hub();
        hub.authorize(&json!([{"dealer": "all", "query": null}])).expect("valid");
        assert_eq!(hub.subscription_count(), 1);
        tokio::time::sleep(Duration::from_millis(1900)).await;
        assert_eq!(hub.subscription_count(), 1);
        tokio::time::sleep(SWEEP_INTERVAL + Duration::from_millis(150)).await;
        assert_eq!(hub.subscription_count(), 0, "swept within one interval");
        // The sweeper holds the hub weakly: the service can go away.
        let weak = Arc::downgrade(hub);
        drop(service);
        assert!(weak.upgrade().is_none());
    }

    #[test]
    fn duplicate_dealers_are_refused() {
        let err = DataSyncService::with_limits(
            "datasync",
            vec![Dealer::broadcast("a", "X"), Dealer::filter("a", "Y")],
            Limits::default(),
        )
        .err();
        assert_eq!(err, Some(RouterError::DuplicateDealer("a".into())));
    }

    #[test]
    fn batches_are_checked_whole() {
        let service = service(vec![Dealer::broadcast("all", "Task")]);
        let hub = service.hub();
        let ok = json!({"type": "insert", "model": "Task", "data": {}});
        assert_eq!(hub.parse_deltas(json!([ok.clone(), ok.clone()])).map(|d| d.len()), Ok(2));
        assert_eq!(
            hub.parse_deltas(json!([ok.clone(), {"type": "insert", "model": "Nope", "data": {}}])),
            Err(DeltaError::UnknownModel("Nope".into()))
        );
        assert_eq!(delta_error(DeltaError::UnknownModel("Nope".into())), RpcError::service("Unknown model"));
        assert_eq!(delta_error(DeltaError::InvalidParams), RpcError::InvalidParams);
        assert_eq!(auth_error(AuthError::MissingField("query")), RpcError::service("Missing field query"));
        assert_eq!(auth_error(AuthError::InvalidParams), RpcError::InvalidParams);
        assert_eq!(auth_error(AuthError::DuplicateSubscription(1)), RpcError::Internal);
    }

    /// A key function that checks it runs without the hub's lock held, off the runtime's
    /// worker threads.
    struct Checking {
        hub: OnceLock<Weak<DataSyncHub>>,
        calls: AtomicUsize,
    }

    impl KeyFunction for Checking {
        fn key(&self, data: &Value) -> Result<Value, String> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let hub = self.hub.get().and_then(Weak::upgrade).ok_or("no hub")?;
            if hub.state.try_lock().is_err() {
                return Err("called with the lock held".into());
            }
            if tokio::runtime::Handle::try_current().is_ok_and(|h| {
                h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
                    && std::thread::current().name() == Some("tokio-runtime-worker")
            }) {
                return Err("called on a runtime worker thread".into());
            }
            Ok(data.get("owner").cloned().unwrap_or(Value::Null))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn key_functions_run_off_the_lock_and_the_runtime() {
        let checking = Arc::new(Checking { hub: OnceLock::new(), calls: AtomicUsize::new(0) });
        let service = service(vec![Dealer::simple_fn("by_owner", "Task", checking.clone())]);
        let hub = service.hub();
        checking.hub.set(Arc::downgrade(hub)).expect("set once");
        let token = hub.authorize(&json!([{"dealer": "by_owner", "query": 1}])).expect("valid");
        let (connection, mut outbox) = crate::connection::Connection::new(
            1,
            crate::connection::Identity::default(),
            "127.0.0.1:1".parse().expect("an address"),
            crate::connection::QueueBounds::default(),
            &tokio_util::sync::CancellationToken::new(),
            Arc::new(crate::metrics::Metrics::default()),
        );
        hub.acquire(&token, &connection, Resume::default()).await.expect("acquired");
        let deltas = json!([
            {"type": "insert", "model": "Task", "data": {"owner": 1}},
            {"type": "update", "model": "Task", "oldData": {"owner": 1}, "newData": {"owner": 2}},
        ]);
        // A failing check would have kept the deltas from the subscription.
        assert_eq!(hub.publish_deltas(deltas, None).await, Ok(2));
        assert_eq!(checking.calls.load(Ordering::SeqCst), 3);
        let mut types = Vec::new();
        while let Some(frame) = outbox.try_recv() {
            let value: Value = serde_json::from_str(frame.as_str()).expect("JSON");
            types.push(value["message"]["delta"]["type"].clone());
        }
        assert_eq!(types, vec![json!("insert"), json!("delete")]);
    }
}
