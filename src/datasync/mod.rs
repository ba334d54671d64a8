//! DataSync: the `datasync` and `datasync_backend` services, the life cycle of
//! subscriptions, and the routing core that decides which subscriptions a published delta
//! reaches, and as what.
//!
//! The routing core is plain synchronous logic with no I/O, so it is tested without a
//! server; the services wrap it in their shared state. The pieces, one file each:
//!
//! - `crate::value` (shared with PubSub): the protocol's value semantics (docs/protocol.md):
//!   dotted-path [`lookup`], [`values_equal`] (`1 == 1.0`, `"1" != 1`, `true != 1`),
//!   [`compare`] (numbers and strings only), and [`ValueKey`], a hashable form of a value
//!   with the same equality (usable for `pubsub` channels too).
//! - `filter.rs`: the filter language of Filter dealers ([`Filter`]).
//! - `delta.rs`: [`Delta`] parsing with docs/protocol.md's error texts, the
//!   per-subscription translation of updates ([`DeltaShape`]) and the pushed
//!   `{"type": "delta"}` frame ([`DeltaFrame`]).
//! - `dealer.rs`: [`Dealer`]s (Broadcast, Simple, Filter) and the
//!   [`KeyFunction`] trait the Python bindings implement for Simple dealers.
//! - `router.rs`: the [`Router`], which indexes authorized subscription
//!   items and routes deltas without scanning every subscription.
//! - `token.rs`: subscription tokens ([`new_token`]).
//! - `stream.rs`: the [`DeltaStream`], every published delta with its offset, retained by
//!   count, bytes and age; subscriptions read from it instead of buffering.
//! - `limits.rs`: [`Limits`], the timeouts and bounds, and [`LimitsConfig`], the options
//!   users write them as.
//! - `idempotency.rs`: [`RecentKeys`], the idempotency keys of recent batches.
//! - `subscription.rs`: [`Subscriptions`], the life cycle (waiting, acquired, back to
//!   waiting, dropped), positions in the stream, catching up, and timeouts.
//! - `service.rs`: [`DataSyncService`] (frontend: `acquireSubscription`,
//!   `cancelSubscription`) and the [`DataSyncHub`] it shares with its backend twin.
//! - `backend.rs`: [`DataSyncBackend`] (`authorizeSubscription`, `publishDeltas`).
//! - `cluster.rs`: the same on several nodes sharing a broker: subscriptions and the stream
//!   in Redis, each node's stream a mirror of it (its Lua scripts are in `lua/`).

mod backend;
mod cluster;
mod dealer;
mod delta;
mod filter;
mod idempotency;
mod limits;
mod router;
mod service;
mod stream;
mod subscription;
mod token;

pub use crate::value::{compare, lookup, values_equal, ValueKey};
pub use backend::DataSyncBackend;
pub use dealer::{Dealer, DealerKind, KeyFunction, KeyFunctionError, PreparedQuery, SimpleKey};
pub use delta::{Delta, DeltaError, DeltaFrame, DeltaShape, DeltaView, FrameType};
pub use filter::{CompareOp, Filter, FilterError, FilterLimits, MAX_DEPTH, MAX_SIZE};
pub use idempotency::{RecentKeys, MAX_KEY_LENGTH};
pub use limits::{Limits, LimitsConfig};
pub use router::{AuthError, Authorizer, FunctionKeys, PreparedItems, Router, RouterError};
pub use service::{DataSyncHub, DataSyncService, PUBLISH_CHUNK, SWEEP_INTERVAL};
pub use stream::{BadOffset, DeltaStream, Offset, Position, Retention};
pub use subscription::{Adopted, CatchUp, Detached, Resume, SubscriptionError, Subscriptions};
pub use token::{new_token, TOKEN_ALPHABET, TOKEN_LENGTH};
