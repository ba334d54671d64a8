//! Revocations shared by the nodes of a cluster.
//!
//! Revoking an identity (`connections.disconnect`) on one node must close its connections on
//! every node and refuse its older tokens on every node. The node that revokes records the
//! revocation in Redis and announces it on a channel every node listens on, in one script; each
//! node closes the identity's connections (as a revocation on one node does) and records it,
//! then answers the revoking node with how many it closed. `disconnect` answers once every node
//! that heard the announcement answered (or after [`COMMAND_TIMEOUT`], with the answers it has).
//!
//! The record (a sorted set, identity → time, trimmed to the revocation window and to
//! `max_revocations`) is for nodes that did not hear the announcement: a node reads it when it
//! starts and after the broker was unreachable, refusing the older tokens of what it finds and
//! closing the connections opened with them.
//!
//! In Redis, under the broker's prefix: `revocations` (the sorted set), channels
//! `revocations` (the announcements) and `revocations:answers:<node>` (the answers).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::broker::{Broker, Listener, ReapFuture, Rejoin, Subscription, COMMAND_TIMEOUT};
use crate::connections::ConnectionTable;
use crate::error::Error;
use crate::protocol::RpcError;

/// Records a revocation, trims the record, and announces it. KEYS: the record. ARGV: the
/// publish command, the announcements' channel, the identity, the time, the oldest time kept,
/// the most kept, the announcement. Returns how many nodes heard it.
static REVOKE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
        redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[5])
        local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[6])
        if excess > 0 then redis.call('ZPOPMIN', KEYS[1], excess) end
        return redis.call(ARGV[1], ARGV[2], ARGV[7])
        ",
    )
});

/// An announcement: `identity` was revoked at `at` by `node`, which waits for answers to
/// request `request`.
#[derive(Debug, Serialize, Deserialize)]
struct Announcement {
    identity: String,
    at: f64,
    node: String,
    request: u64,
}

/// A node's answer: it closed `closed` connections for request `request`.
#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    request: u64,
    closed: usize,
}

/// The revocations of one node's table, shared through the broker.
#[derive(Debug)]
pub struct Revocations {
    broker: Broker,
    table: Weak<ConnectionTable>,
    /// The node's subscriptions (announcements and answers), kept while it serves.
    subscriptions: Mutex<Vec<Subscription>>,
    /// The requests of this node waiting for answers.
    waiting: Mutex<HashMap<u64, mpsc::UnboundedSender<usize>>>,
    next_request: AtomicU64,
}

/// Applies the announcements to this node's table and answers.
struct Announcements(Weak<Revocations>);

impl Listener for Announcements {
    fn message(&self, payload: &[u8]) {
        let Some(shared) = self.0.upgrade() else { return };
        let Ok(announcement) = serde_json::from_slice::<Announcement>(payload) else {
            log::error!("a revocation announcement is malformed: ignored");
            return;
        };
        let Some(table) = shared.table.upgrade() else { return };
        let closed = table.revoke(&announcement.identity, announcement.at);
        let answer = serde_json::to_vec(&Answer { request: announcement.request, closed }).unwrap_or_default();
        let channel = shared.answers_channel(&announcement.node);
        tokio::spawn(async move {
            if let Err(err) = shared.broker.publish(&channel, &answer).await {
                log::warn!("could not answer a revocation: {err}");
            }
        });
    }
}

/// Hands the answers to the waiting requests.
struct Answers(Weak<Revocations>);

impl Listener for Answers {
    fn message(&self, payload: &[u8]) {
        let Some(shared) = self.0.upgrade() else { return };
        let Ok(answer) = serde_json::from_slice::<Answer>(payload) else { return };
        let waiting = crate::sync::lock(&shared.waiting).get(&answer.request).cloned();
        if let Some(waiting) = waiting {
            let _ = waiting.send(answer.closed);
        }
    }
}

/// Reads the record again after an outage.
struct Reload(Weak<Revocations>);

impl Rejoin for Reload {
    fn rejoin(&self) -> ReapFuture {
        let shared = self.0.clone();
        Box::pin(async move {
            let Some(shared) = shared.upgrade() else { return };
            if let Err(err) = shared.load().await {
                log::warn!("could not read the revocations made while the broker was unreachable: {err}");
            }
        })
    }
}

impl Revocations {
    /// Listens for revocations and learns those of the window.
    pub(crate) async fn start(table: &Arc<ConnectionTable>, broker: &Broker) -> Result<Arc<Revocations>, Error> {
        broker.register_scripts(&[&REVOKE]);
        let shared = Arc::new(Revocations {
            broker: broker.clone(),
            table: Arc::downgrade(table),
            subscriptions: Mutex::default(),
            waiting: Mutex::default(),
            next_request: AtomicU64::new(1),
        });
        let listen = |err| Error::Config(format!("cannot listen for revocations on the broker: {err}"));
        let announcements = broker
            .subscribe(&shared.announcements_channel(), Arc::new(Announcements(Arc::downgrade(&shared))))
            .await
            .map_err(listen)?;
        let answers = broker
            .subscribe(&shared.answers_channel(broker.node()), Arc::new(Answers(Arc::downgrade(&shared))))
            .await
            .map_err(listen)?;
        *crate::sync::lock(&shared.subscriptions) = vec![announcements, answers];
        shared
            .load()
            .await
            .map_err(|err| Error::Config(format!("cannot read the revocations on the broker: {err}")))?;
        broker.add_rejoin(Arc::new(Reload(Arc::downgrade(&shared))));
        Ok(shared)
    }

    fn record_key(&self) -> String {
        self.broker.key("revocations")
    }

    fn announcements_channel(&self) -> String {
        self.broker.key("revocations")
    }

    fn answers_channel(&self, node: &str) -> String {
        self.broker.key(&format!("revocations:answers:{node}"))
    }

    /// Learns the revocations of the window from the record.
    async fn load(&self) -> Result<(), crate::broker::BrokerError> {
        let Some(table) = self.table.upgrade() else { return Ok(()) };
        let bounds = table.revocation_bounds();
        let now = crate::tokens::now_seconds();
        let oldest = now - bounds.window.as_secs_f64();
        let cmd = redis::cmd("ZRANGE")
            .arg(self.record_key())
            .arg(oldest)
            .arg("+inf")
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(bounds.max)
            .arg("WITHSCORES")
            .clone();
        let revoked: Vec<(String, f64)> = self.broker.query(&cmd).await?;
        for (identity, at) in revoked {
            table.learn_revocation(&identity, at, now);
        }
        Ok(())
    }

    /// Revokes `identity` at `now` on every node; returns how many connections were closed.
    pub(crate) async fn revoke(&self, identity: &str, now: f64) -> Result<usize, RpcError> {
        let Some(table) = self.table.upgrade() else { return Err(RpcError::Internal) };
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (answers, mut received) = mpsc::unbounded_channel();
        crate::sync::lock(&self.waiting).insert(request, answers);
        let outcome = self.announce(&table, identity, now, request, &mut received).await;
        crate::sync::lock(&self.waiting).remove(&request);
        outcome
    }

    async fn announce(
        &self,
        table: &ConnectionTable,
        identity: &str,
        now: f64,
        request: u64,
        received: &mut mpsc::UnboundedReceiver<usize>,
    ) -> Result<usize, RpcError> {
        let bounds = table.revocation_bounds();
        let announcement =
            Announcement { identity: identity.to_owned(), at: now, node: self.broker.node().to_owned(), request };
        let announcement = serde_json::to_vec(&announcement).unwrap_or_default();
        let mut invocation = REVOKE.prepare_invoke();
        invocation
            .key(self.record_key())
            .arg(self.broker.publish_command())
            .arg(self.announcements_channel())
            .arg(identity)
            .arg(now)
            .arg(now - bounds.window.as_secs_f64())
            .arg(bounds.max)
            .arg(announcement);
        let heard: usize = match self.broker.script(&invocation).await {
            Ok(heard) => heard,
            Err(err) => {
                // This node's connections close and its tokens are refused at once anyway; the
                // web application is told to try again, for the other nodes.
                let closed = table.revoke(identity, now);
                log::warn!("identity {identity:?} revoked on this node only ({closed} closed): {err}");
                return Err(RpcError::Unavailable);
            }
        };
        let mut closed = 0;
        let deadline = tokio::time::Instant::now() + COMMAND_TIMEOUT;
        for answered in 0..heard {
            if let Ok(Some(count)) = tokio::time::timeout_at(deadline, received.recv()).await {
                closed += count;
            } else {
                log::warn!(
                    "identity {identity:?} revoked, but only {answered} of {heard} nodes said how many connections they closed"
                );
                break;
            }
        }
        Ok(closed)
    }
}
