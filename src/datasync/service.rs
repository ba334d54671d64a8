//! `datasync`: the browser-facing DataSync service (`acquireSubscription`,
//! `cancelSubscription`), and the hub of state it shares with its backend twin
//! ([`DataSyncBackend`](super::DataSyncBackend)).
//!
//! Design of the shared state and its timers:
//! - One [`DataSyncHub`] per service, behind an `Arc`: the dealers, and the
//!   [`Subscriptions`] (router, tokens, holders, buffers) behind a std `Mutex`. Nothing awaits
//!   while it is held, and every mutation and every delivery of a batch happens under it, so
//!   deltas reach each subscription in the order the batches took the lock.
//! - Python key functions never run under the lock, nor on a runtime thread: when a dealer
//!   has one, `publishDeltas` computes the keys of the whole batch first on a blocking worker
//!   thread ([`FunctionKeys`]), then routes under the lock.
//! - Timeouts are exact without any timer: a waiting subscription whose deadline has passed
//!   is dropped the moment it is acquired or routed to (see `subscription.rs`). A sweeper
//!   task only reclaims the memory of subscriptions nobody touches again, every
//!   [`SWEEP_INTERVAL`]. Services are built outside any runtime (Python builds them before
//!   the server starts), so the sweeper is spawned by the first command the service handles,
//!   on the runtime that runs it, and spawned again if that runtime ended (a server stopped
//!   and started again). It holds only a weak reference, so it ends with the service.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::dealer::Dealer;
use super::delta::{Delta, DeltaError};
use super::router::{AuthError, FunctionKeys, Router, RouterError};
use super::subscription::{Limits, SubscriptionError, Subscriptions};
use crate::connection::Connection;
use crate::protocol::{Params, RpcError};
use crate::service::{Caller, Service, Side};

/// How often the sweeper drops expired subscriptions (memory only: expiry itself is exact).
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// The state a DataSync service shares with its backend twin.
pub struct DataSyncHub {
    /// The frontend service's name, which deliveries carry (also for deltas published through
    /// the backend service).
    frontend_name: String,
    /// A copy of the router's dealers, in the router's order, so key functions can run
    /// without the lock.
    dealers: Vec<Dealer>,
    /// The models some dealer handles, to refuse a batch ("Unknown model") without the lock.
    models: HashSet<String>,
    /// Whether some dealer computes keys with a function (then batches take a worker thread).
    key_functions: bool,
    /// Subscriptions and the router. A std `Mutex` because nothing awaits while holding it,
    /// and because queueing every delivery of a batch under it is what keeps each
    /// subscription's deltas in one order.
    state: Mutex<Subscriptions>,
    /// The sweeper task, if one was spawned (see the module documentation).
    sweeper: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for DataSyncHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataSyncHub")
            .field("frontend_name", &self.frontend_name)
            .field("dealers", &self.dealers)
            .finish_non_exhaustive()
    }
}

impl DataSyncHub {
    fn lock(&self) -> MutexGuard<'_, Subscriptions> {
        crate::sync::lock(&self.state)
    }

    /// The frontend service's name.
    pub fn frontend_name(&self) -> &str {
        &self.frontend_name
    }

    /// The dealers, in the order given.
    pub fn dealers(&self) -> &[Dealer] {
        &self.dealers
    }

    /// The timeouts and bounds.
    pub fn limits(&self) -> Limits {
        self.lock().limits()
    }

    /// How many subscriptions exist (waiting or acquired), for tests and introspection.
    pub fn subscription_count(&self) -> usize {
        self.lock().len()
    }

    /// How many subscriptions are waiting to be acquired.
    pub fn waiting_count(&self) -> usize {
        self.lock().waiting()
    }

    /// Authorizes a subscription to `items` (the raw parameter of `authorizeSubscription`)
    /// and returns its token.
    ///
    /// # Errors
    ///
    /// The [`AuthError`] of the first invalid item.
    pub fn authorize(self: &Arc<Self>, items: &Value) -> Result<String, AuthError> {
        self.ensure_sweeper();
        self.lock().authorize(items, Instant::now())
    }

    /// Parses and checks a whole `deltas` parameter (nothing is delivered unless all of it is
    /// valid).
    ///
    /// # Errors
    ///
    /// The first bad delta's [`DeltaError`].
    pub fn parse_deltas(&self, deltas: Value) -> Result<Vec<Delta>, DeltaError> {
        let Value::Array(deltas) = deltas else {
            return Err(DeltaError::InvalidParams);
        };
        deltas
            .into_iter()
            .map(|delta| {
                let delta = Delta::parse(delta)?;
                if self.models.contains(delta.model()) {
                    Ok(delta)
                } else {
                    Err(DeltaError::UnknownModel(delta.model().to_owned()))
                }
            })
            .collect()
    }

    /// Publishes valid deltas, in order; returns how many deliveries were queued to
    /// connections. Key functions run here, on the calling thread: call it where blocking
    /// is allowed (`publish_deltas` does that for the backend service).
    pub fn publish_parsed(&self, deltas: &[Delta]) -> usize {
        let keys: Vec<FunctionKeys> = if self.key_functions {
            deltas.iter().map(|delta| FunctionKeys::compute(&self.dealers, delta)).collect()
        } else {
            Vec::new()
        };
        self.lock().publish(deltas, &keys, Instant::now())
    }

    /// `publishDeltas`: validates the whole batch, then routes it. Key functions, if any,
    /// run on a blocking worker thread before the lock is taken.
    ///
    /// # Errors
    ///
    /// The reply text of the first bad delta, or "Internal error" if the worker failed.
    pub async fn publish_deltas(self: &Arc<Self>, deltas: Value) -> Result<usize, RpcError> {
        self.ensure_sweeper();
        let deltas = self.parse_deltas(deltas).map_err(delta_error)?;
        if deltas.is_empty() {
            return Ok(0);
        }
        if !self.key_functions {
            return Ok(self.lock().publish(&deltas, &[], Instant::now()));
        }
        let hub = Arc::clone(self);
        tokio::task::spawn_blocking(move || hub.publish_parsed(&deltas)).await.map_err(|err| {
            log::error!("datasync {:?}: publishing deltas failed: {err}", self.frontend_name);
            RpcError::Internal
        })
    }

    fn acquire(self: &Arc<Self>, token: &str, connection: &Arc<Connection>) -> Result<(), SubscriptionError> {
        self.ensure_sweeper();
        self.lock().acquire(token, connection, Instant::now())
    }

    fn cancel(&self, token: &str, connection: &Arc<Connection>) -> Result<(), SubscriptionError> {
        self.lock().cancel(token, connection)
    }

    fn disconnected(&self, connection: &Arc<Connection>) {
        self.lock().disconnected(connection, Instant::now());
    }

    /// Drops the subscriptions whose deadline has passed; returns how many.
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
    /// A DataSync service named `name` routing through `dealers`. `subscription_timeout`:
    /// how long an authorized subscription waits to be acquired; `resume_timeout`: how long
    /// it waits after its connection closed; `resume_buffer`: the most deltas a waiting
    /// subscription buffers before it is dropped.
    ///
    /// # Errors
    ///
    /// [`RouterError::DuplicateDealer`] when two dealers share a name.
    pub fn new(
        name: impl Into<String>,
        dealers: Vec<Dealer>,
        subscription_timeout: Duration,
        resume_timeout: Duration,
        resume_buffer: usize,
    ) -> Result<DataSyncService, RouterError> {
        Self::with_limits(name, dealers, Limits { subscription_timeout, resume_timeout, resume_buffer })
    }

    /// As [`new`](Self::new), with the limits in one value ([`Limits::default`] for
    /// docs/protocol.md's defaults).
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
        let router = Router::new(dealers)?;
        let dealers = router.dealers().to_vec();
        let hub = DataSyncHub {
            models: dealers.iter().map(|d| d.model.clone()).collect(),
            key_functions: FunctionKeys::needed(&dealers),
            dealers,
            state: Mutex::new(Subscriptions::new(name.clone(), router, limits)),
            frontend_name: name,
            sweeper: Mutex::new(None),
        };
        Ok(DataSyncService { hub: Arc::new(hub) })
    }

    /// The shared state, for the backend twin and in-process use.
    pub fn hub(&self) -> &Arc<DataSyncHub> {
        &self.hub
    }
}

fn take_token(mut params: Params) -> Result<String, RpcError> {
    let token = params.take_string("token", RpcError::service("token must be string"))?;
    params.finish()?;
    Ok(token)
}

fn subscription_error(error: SubscriptionError) -> RpcError {
    match error {
        SubscriptionError::NoSuchSubscription => RpcError::service("No such subscription"),
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
        let result = match command {
            "acquireSubscription" => self.hub.acquire(&take_token(params)?, connection),
            "cancelSubscription" => self.hub.cancel(&take_token(params)?, connection),
            _ => return Err(RpcError::UnknownCommand),
        };
        result.map(|()| Value::Null).map_err(subscription_error)
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
        DataSyncService::new("datasync", dealers, Duration::from_secs(2), Duration::from_secs(1), 10)
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
        hub.acquire(&token, &connection).expect("acquired");
        let deltas = json!([
            {"type": "insert", "model": "Task", "data": {"owner": 1}},
            {"type": "update", "model": "Task", "oldData": {"owner": 1}, "newData": {"owner": 2}},
        ]);
        // A failing check would have kept the deltas from the subscription.
        assert_eq!(hub.publish_deltas(deltas).await, Ok(2));
        assert_eq!(checking.calls.load(Ordering::SeqCst), 3);
        let mut types = Vec::new();
        while let Some(frame) = outbox.try_recv() {
            let value: Value = serde_json::from_str(frame.as_str()).expect("JSON");
            types.push(value["message"]["delta"]["type"].clone());
        }
        assert_eq!(types, vec![json!("insert"), json!("delete")]);
    }
}
