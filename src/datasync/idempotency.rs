//! Idempotency keys of `publishDeltas`: a batch sent again with a key the service has seen
//! recently is accepted and not delivered a second time.
//!
//! The web application's outbox relay gives every batch a key (its entries' ids and database).
//! A relay that dies between the server's answer and its own commit sends the batch again on
//! restart; the key turns that repeat into a no-op, so browsers see each delta once. Keys are
//! remembered for a bounded time and in a bounded number (the oldest are forgotten first).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// The longest key accepted, in characters.
pub const MAX_KEY_LENGTH: usize = 200;

/// The keys seen recently.
#[derive(Debug)]
pub struct RecentKeys {
    window: Duration,
    max: usize,
    /// Keys with the time they were first seen, oldest first.
    order: VecDeque<(Instant, Arc<str>)>,
    seen: HashSet<Arc<str>>,
}

impl RecentKeys {
    /// Remembers keys for `window`, at most `max` of them.
    #[must_use]
    pub fn new(window: Duration, max: usize) -> RecentKeys {
        RecentKeys { window, max, order: VecDeque::new(), seen: HashSet::new() }
    }

    /// Whether `key` was remembered within the window before `now`.
    pub fn contains(&mut self, key: &str, now: Instant) -> bool {
        self.forget_old(now);
        self.seen.contains(key)
    }

    /// Remembers `key` as seen at `now`.
    pub fn remember(&mut self, key: &str, now: Instant) {
        self.forget_old(now);
        if self.max == 0 || self.seen.contains(key) {
            return;
        }
        let key: Arc<str> = Arc::from(key);
        self.seen.insert(Arc::clone(&key));
        self.order.push_back((now, key));
        while self.order.len() > self.max {
            self.pop_oldest();
        }
    }

    /// How many keys are remembered.
    #[must_use]
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no key is remembered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn forget_old(&mut self, now: Instant) {
        while self.order.front().is_some_and(|(at, _)| now.saturating_duration_since(*at) > self.window) {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((_, key)) = self.order.pop_front() {
            self.seen.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_remembered_within_the_window_and_the_bound() {
        let now = Instant::now();
        let mut keys = RecentKeys::new(Duration::from_secs(60), 2);
        assert!(!keys.contains("a", now));
        keys.remember("a", now);
        assert!(keys.contains("a", now + Duration::from_secs(60)));
        assert!(!keys.contains("a", now + Duration::from_secs(61)), "forgotten after the window");
        keys.remember("b", now);
        keys.remember("c", now);
        keys.remember("d", now);
        assert_eq!(keys.len(), 2);
        assert!(!keys.contains("b", now), "the oldest went first");
        assert!(keys.contains("c", now) && keys.contains("d", now));
    }
}
