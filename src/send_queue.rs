//! The queue between the threads that commit and the one that posts: Django's direct delivery
//! (`DIRECT_SEND = "background"`).
//!
//! Committing threads [`put`](SendQueue::put) one transaction's deltas each; a single sender
//! thread takes them in order with [`next_batch`](SendQueue::next_batch), joining what piled up
//! into one request of at most a batch's worth (a transaction larger than that still goes whole).
//! The request is over when its [`Request`] is dropped: sent, failed, or the sender panicked, so a
//! flush never waits for a request that no one will end.
//!
//! - **Bounded.** At most `limit` deltas wait. A committing thread beyond that waits for room, at
//!   most `wait`, and gets its deltas back if none came. Room is never made by sending from the
//!   committing thread: that would overtake what is queued. A transaction larger than the whole
//!   queue waits for it to empty, then goes.
//! - **Linger.** When the last request ended less than the linger ago (commits follow each other
//!   closely), the sender waits up to that long for company before the next request, unless a
//!   batch's worth is already queued or someone flushes. An isolated commit goes at once.
//! - **Flush.** [`flush`](SendQueue::flush) waits until what was queued is sent (or failed).
//!
//! No lock is held while a request is in flight: the sender holds the lock only to take a batch.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::sync::lock;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct SendQueue {
    state: Mutex<State>,
    /// Signalled for the sender: something was queued, someone flushes, or the queue closed.
    work: Condvar,
    /// Signalled for committing threads and flushers: room was made, a request ended.
    progress: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Transactions not taken yet, in the order they were put.
    transactions: VecDeque<Vec<Value>>,
    /// Deltas in `transactions`.
    queued: usize,
    /// Deltas of the request in flight.
    sending: usize,
    /// The linger of the latest `put`.
    linger: Duration,
    /// Whether the sender waits for company (a `put` then does not wake it for each commit).
    lingering: bool,
    /// Threads in `flush`, which cut a linger short.
    flushing: usize,
    /// When the last request ended.
    last_sent: Option<Instant>,
    /// No more `put`s: the sender ends once the queue is empty.
    closed: bool,
}

/// Why [`SendQueue::put`] gave the deltas back.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue stayed full for the whole wait.
    Full,
    /// The queue was closed.
    Closed,
}

impl SendQueue {
    /// An empty, open queue.
    pub fn new() -> SendQueue {
        SendQueue::default()
    }

    /// Queues one transaction's deltas, waiting up to `wait` for room when more than `limit` would
    /// be queued; gives them back if the room did not come or the queue is closed. `linger`: see
    /// the module documentation; `batch` is the most deltas the sender takes at once.
    pub fn put(
        &self,
        deltas: Vec<Value>,
        limit: usize,
        wait: Duration,
        linger: Duration,
        batch: usize,
    ) -> Result<(), (Vec<Value>, Refused)> {
        let deadline = Instant::now().checked_add(wait);
        let mut state = lock(&self.state);
        loop {
            if state.closed {
                return Err((deltas, Refused::Closed));
            }
            if state.queued == 0 || state.queued + deltas.len() <= limit {
                break;
            }
            let remaining = time_left(deadline);
            if remaining.is_zero() {
                return Err((deltas, Refused::Full));
            }
            state = self.progress.wait_timeout(state, remaining).unwrap_or_else(std::sync::PoisonError::into_inner).0;
        }
        state.queued += deltas.len();
        state.transactions.push_back(deltas);
        state.linger = linger;
        // A lingering sender wakes at its deadline: waking it for each commit would cost the
        // thread switch that lingering saves.
        if !state.lingering || state.queued >= batch {
            self.work.notify_one();
        }
        Ok(())
    }

    /// For the sender: waits for the next request's deltas, at most `batch` of them unless a
    /// single transaction has more; `None` once the queue is closed and empty.
    pub fn next_batch(&self, batch: usize) -> Option<Request<'_>> {
        let mut state = lock(&self.state);
        while state.transactions.is_empty() {
            if state.closed {
                return None;
            }
            state = self.work.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        state = self.wait_for_company(state, batch);
        let mut deltas = state.transactions.pop_front()?;
        while let Some(next) = state.transactions.front() {
            if deltas.len() + next.len() > batch {
                break;
            }
            if let Some(next) = state.transactions.pop_front() {
                deltas.extend(next);
            }
        }
        state.queued -= deltas.len();
        state.sending = deltas.len();
        self.progress.notify_all(); // room for the committing threads
        Some(Request { queue: self, deltas })
    }

    /// With something queued: when the last request ended less than the linger ago, waits up to
    /// the linger for more transactions, unless a batch's worth is queued or someone flushes.
    fn wait_for_company<'a>(
        &self,
        mut state: std::sync::MutexGuard<'a, State>,
        batch: usize,
    ) -> std::sync::MutexGuard<'a, State> {
        let now = Instant::now();
        let linger = state.linger;
        let recent = state.last_sent.is_some_and(|last| now.saturating_duration_since(last) < linger);
        let Some(deadline) = now.checked_add(linger).filter(|_| recent) else { return state };
        state.lingering = true;
        while state.queued < batch && state.flushing == 0 && !state.closed {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            state = self.work.wait_timeout(state, remaining).unwrap_or_else(std::sync::PoisonError::into_inner).0;
        }
        state.lingering = false;
        state
    }

    /// The request of the last batch is over.
    fn request_ended(&self) {
        let mut state = lock(&self.state);
        state.sending = 0;
        state.last_sent = Some(Instant::now());
        self.progress.notify_all();
    }

    /// Waits until everything queued so far is sent or failed; `false` after `timeout`.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        let mut state = lock(&self.state);
        state.flushing += 1; // a lingering sender goes at once
        self.work.notify_one();
        let done = loop {
            if state.queued == 0 && state.sending == 0 {
                break true;
            }
            let remaining = time_left(deadline);
            if remaining.is_zero() {
                break false;
            }
            state = self.progress.wait_timeout(state, remaining).unwrap_or_else(std::sync::PoisonError::into_inner).0;
        };
        state.flushing -= 1;
        done
    }

    /// Deltas queued or being sent.
    pub fn pending(&self) -> usize {
        let state = lock(&self.state);
        state.queued + state.sending
    }

    /// Refuses further `put`s; the sender ends once what is queued is sent.
    pub fn close(&self) {
        let mut state = lock(&self.state);
        state.closed = true;
        self.work.notify_one();
        self.progress.notify_all();
    }
}

/// One request's deltas, taken by the sender; the request ends when this is dropped.
#[must_use = "dropping the request ends it at once"]
#[derive(Debug)]
pub struct Request<'a> {
    queue: &'a SendQueue,
    deltas: Vec<Value>,
}

impl Request<'_> {
    /// The deltas to post (the request stays in flight until it is dropped).
    pub fn take_deltas(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.deltas)
    }
}

impl Drop for Request<'_> {
    fn drop(&mut self) {
        self.queue.request_ended();
    }
}

/// The time until `deadline`; forever without one (a wait too long for the clock).
fn time_left(deadline: Option<Instant>) -> Duration {
    deadline.map_or(Duration::MAX, |deadline| deadline.saturating_duration_since(Instant::now()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::thread;

    use serde_json::json;

    use super::*;

    const NO_WAIT: Duration = Duration::ZERO;
    const LONG: Duration = Duration::from_secs(10);

    fn deltas(first: u64, count: u64) -> Vec<Value> {
        (first..first + count).map(|i| json!(i)).collect()
    }

    /// Takes the next batch and ends its request at once.
    fn sent(queue: &SendQueue, batch: usize) -> Option<Vec<Value>> {
        queue.next_batch(batch).map(|mut request| request.take_deltas())
    }

    #[test]
    fn transactions_are_joined_in_order_up_to_a_batch_and_a_large_one_goes_whole() {
        let queue = SendQueue::new();
        for (first, count) in [(0, 2), (2, 3), (5, 4), (9, 1)] {
            queue.put(deltas(first, count), 100, NO_WAIT, NO_WAIT, 6).expect("queued");
        }
        assert_eq!(sent(&queue, 6), Some(deltas(0, 5)));
        assert_eq!(sent(&queue, 6), Some(deltas(5, 5)));
        queue.put(deltas(10, 8), 100, NO_WAIT, NO_WAIT, 6).expect("queued");
        assert_eq!(sent(&queue, 6), Some(deltas(10, 8)));
        assert_eq!(queue.pending(), 0);
    }

    #[test]
    fn a_full_queue_gives_the_deltas_back_after_the_wait_and_takes_them_once_there_is_room() {
        let queue = Arc::new(SendQueue::new());
        queue.put(deltas(0, 3), 3, NO_WAIT, NO_WAIT, 10).expect("queued");
        let refused = queue.put(deltas(3, 1), 3, Duration::from_millis(50), NO_WAIT, 10);
        assert_eq!(refused, Err((deltas(3, 1), Refused::Full)));
        let writer = {
            let queue = Arc::clone(&queue);
            thread::spawn(move || queue.put(deltas(3, 1), 3, LONG, NO_WAIT, 10))
        };
        let mut request = queue.next_batch(10).expect("a batch");
        assert_eq!(request.take_deltas(), deltas(0, 3));
        assert_eq!(writer.join().expect("the thread ended normally"), Ok(()));
        assert_eq!(queue.pending(), 4, "three in flight, one queued");
        drop(request);
        assert_eq!(queue.pending(), 1);
    }

    #[test]
    fn a_transaction_larger_than_the_queue_waits_for_it_to_empty_then_goes() {
        let queue = SendQueue::new();
        queue.put(deltas(0, 5), 3, NO_WAIT, NO_WAIT, 10).expect("queued");
        assert!(queue.put(deltas(5, 1), 3, NO_WAIT, NO_WAIT, 10).is_err());
        assert_eq!(sent(&queue, 10), Some(deltas(0, 5)));
        queue.put(deltas(5, 7), 3, NO_WAIT, NO_WAIT, 10).expect("queued");
    }

    #[test]
    fn flush_waits_for_the_request_in_flight() {
        let queue = SendQueue::new();
        queue.put(deltas(0, 1), 10, NO_WAIT, NO_WAIT, 10).expect("queued");
        assert!(!queue.flush(Duration::from_millis(20)));
        let mut request = queue.next_batch(10).expect("a batch");
        assert!(!queue.flush(Duration::from_millis(20)), "a request in flight is not sent yet");
        thread::scope(|scope| {
            let batch = request.take_deltas();
            scope.spawn(move || {
                thread::sleep(Duration::from_millis(50));
                drop(request);
            });
            assert!(queue.flush(LONG));
            assert_eq!(batch, deltas(0, 1));
        });
    }

    #[test]
    fn a_sender_that_panics_mid_request_leaves_no_flush_waiting() {
        let queue = SendQueue::new();
        queue.put(deltas(0, 2), 10, NO_WAIT, NO_WAIT, 10).expect("queued");
        thread::scope(|scope| {
            let sender = scope.spawn(|| {
                let _request = queue.next_batch(10);
                panic!("a bug while posting");
            });
            assert!(sender.join().is_err(), "the sender panicked");
        });
        assert!(queue.flush(Duration::from_secs(1)), "the request ended with the panic");
        queue.put(deltas(2, 1), 10, NO_WAIT, NO_WAIT, 10).expect("the queue still takes deltas");
        assert_eq!(sent(&queue, 10), Some(deltas(2, 1)), "and a new sender gets them");
    }

    #[test]
    fn a_commit_right_after_a_request_waits_for_company_unless_someone_flushes() {
        let queue = Arc::new(SendQueue::new());
        queue.put(deltas(0, 1), 10, NO_WAIT, LONG, 10).expect("queued");
        assert_eq!(sent(&queue, 10), Some(deltas(0, 1)), "an isolated commit goes at once");
        queue.put(deltas(1, 1), 10, NO_WAIT, LONG, 10).expect("queued");
        let sender = {
            let queue = Arc::clone(&queue);
            thread::spawn(move || sent(&queue, 10))
        };
        thread::sleep(Duration::from_millis(50));
        queue.put(deltas(2, 1), 10, NO_WAIT, LONG, 10).expect("queued");
        assert!(!sender.is_finished(), "the sender lingers");
        let flusher = {
            let queue = Arc::clone(&queue);
            thread::spawn(move || queue.flush(LONG))
        };
        assert_eq!(sender.join().expect("the thread ended normally"), Some(deltas(1, 2)), "the flush ended the linger");
        assert!(flusher.join().expect("the thread ended normally"));
    }

    #[test]
    fn a_closed_queue_refuses_new_deltas_and_ends_the_sender_once_empty() {
        let queue = SendQueue::new();
        queue.put(deltas(0, 1), 10, NO_WAIT, NO_WAIT, 10).expect("queued");
        queue.close();
        assert_eq!(queue.put(deltas(1, 1), 10, NO_WAIT, NO_WAIT, 10), Err((deltas(1, 1), Refused::Closed)));
        assert_eq!(sent(&queue, 10), Some(deltas(0, 1)));
        assert!(queue.next_batch(10).is_none());
    }
}
