//! The timeouts and bounds of a DataSync service, and the options they are configured from.

use std::time::Duration;

use serde::Deserialize;

use super::filter::FilterLimits;
use super::stream::Retention;
use crate::error::Error;
use crate::seconds::check_seconds;

/// The timeouts and bounds of a DataSync service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long an authorized subscription waits to be acquired before it is dropped.
    pub subscription_timeout: Duration,
    /// How long a subscription whose connection closed waits to be acquired again.
    pub resume_timeout: Duration,
    /// How much of the delta stream is kept for waiting and catching-up subscriptions.
    pub retention: Retention,
    /// The most subscriptions waiting at once; authorizing one more drops the oldest.
    pub max_waiting: usize,
    /// The most subscriptions bound to one identity waiting at once; one more drops that
    /// identity's oldest, so that one user cannot crowd the others out of `max_waiting`.
    pub max_waiting_per_identity: usize,
    /// The most items one authorization may have.
    pub max_items: usize,
    /// The most subscriptions one connection may hold.
    pub max_per_connection: usize,
    /// The bounds on Filter queries.
    pub filter: FilterLimits,
    /// How long the idempotency key of a published batch is remembered.
    pub idempotency_window: Duration,
    /// The most idempotency keys remembered (the oldest are forgotten first).
    pub max_idempotency_keys: usize,
}

impl Default for Limits {
    /// 120 s to acquire, 60 s to resume, the default retention, 100,000 waiting
    /// subscriptions (1,000 per identity), 1,000 items per authorization, 100 subscriptions per connection, the
    /// default filter bounds, idempotency keys remembered for 10 minutes (100,000 of them).
    fn default() -> Self {
        Limits {
            subscription_timeout: Duration::from_secs(120),
            resume_timeout: Duration::from_secs(60),
            retention: Retention::default(),
            max_waiting: 100_000,
            max_waiting_per_identity: 1_000,
            max_items: 1_000,
            max_per_connection: 100,
            filter: FilterLimits::default(),
            idempotency_window: Duration::from_secs(600),
            max_idempotency_keys: 100_000,
        }
    }
}

/// The options of a DataSync service as a user writes them (Python keyword arguments):
/// seconds as numbers, every key optional, unknown keys refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Seconds an authorized subscription waits to be acquired.
    pub subscription_timeout: f64,
    /// Seconds a subscription whose connection closed waits to be acquired again.
    pub resume_timeout: f64,
    /// The most deltas the stream keeps.
    pub retention: usize,
    /// The most bytes the stream keeps.
    pub retention_bytes: usize,
    /// Seconds the stream keeps a delta.
    pub retention_age: f64,
    /// The most subscriptions waiting at once.
    pub max_waiting: usize,
    /// The most subscriptions bound to one identity waiting at once.
    pub max_waiting_per_identity: usize,
    /// The most items in one authorization.
    pub max_items: usize,
    /// The most subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// The most expressions in one filter query.
    pub max_query_size: usize,
    /// The deepest nesting of a filter query.
    pub max_query_depth: usize,
    /// Seconds the idempotency key of a batch is remembered.
    pub idempotency_window: f64,
    /// The most idempotency keys remembered.
    pub max_idempotency_keys: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let limits = Limits::default();
        LimitsConfig {
            subscription_timeout: limits.subscription_timeout.as_secs_f64(),
            resume_timeout: limits.resume_timeout.as_secs_f64(),
            retention: limits.retention.deltas,
            retention_bytes: limits.retention.bytes,
            retention_age: limits.retention.age.as_secs_f64(),
            max_waiting: limits.max_waiting,
            max_waiting_per_identity: limits.max_waiting_per_identity,
            max_items: limits.max_items,
            max_subscriptions: limits.max_per_connection,
            max_query_size: limits.filter.max_size,
            max_query_depth: limits.filter.max_depth,
            idempotency_window: limits.idempotency_window.as_secs_f64(),
            max_idempotency_keys: limits.max_idempotency_keys,
        }
    }
}

impl LimitsConfig {
    /// Checks the options and turns them into [`Limits`].
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the option that is out of range.
    pub fn limits(&self) -> Result<Limits, Error> {
        let seconds = |name: &str, value: f64| check_seconds(name, value).map(|()| Duration::from_secs_f64(value));
        for (name, value) in [
            ("retention", self.retention),
            ("retention_bytes", self.retention_bytes),
            ("max_waiting", self.max_waiting),
            ("max_waiting_per_identity", self.max_waiting_per_identity),
            ("max_items", self.max_items),
            ("max_subscriptions", self.max_subscriptions),
            ("max_query_size", self.max_query_size),
            ("max_query_depth", self.max_query_depth),
        ] {
            if value == 0 {
                return Err(Error::Config(format!("{name} must be at least 1")));
            }
        }
        Ok(Limits {
            subscription_timeout: seconds("subscription_timeout", self.subscription_timeout)?,
            resume_timeout: seconds("resume_timeout", self.resume_timeout)?,
            retention: Retention {
                deltas: self.retention,
                bytes: self.retention_bytes,
                age: seconds("retention_age", self.retention_age)?,
            },
            max_waiting: self.max_waiting,
            max_waiting_per_identity: self.max_waiting_per_identity,
            max_items: self.max_items,
            max_per_connection: self.max_subscriptions,
            filter: FilterLimits { max_depth: self.max_query_depth, max_size: self.max_query_size },
            idempotency_window: seconds("idempotency_window", self.idempotency_window)?,
            max_idempotency_keys: self.max_idempotency_keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_and_bad_values_name_the_option() {
        assert_eq!(LimitsConfig::default().limits().expect("valid"), Limits::default());
        let config = LimitsConfig { resume_timeout: 1e300, ..LimitsConfig::default() };
        assert!(config.limits().expect_err("too long").to_string().contains("resume_timeout"));
        let config = LimitsConfig { max_items: 0, ..LimitsConfig::default() };
        assert!(config.limits().expect_err("zero").to_string().contains("max_items"));
    }
}
