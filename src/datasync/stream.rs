//! The delta stream of a DataSync service: every published delta, numbered, kept for a while.
//!
//! Each delta published through a service takes the next *offset* (1, 2, 3, ... for the life
//! of the service). The stream keeps the most recent deltas within its [`Retention`] (by
//! count, by bytes and by age; whichever is reached first trims the oldest). A subscription
//! never buffers deltas of its own: while it waits, or while its connection's queue is full,
//! it keeps only the offset it has reached and reads what followed from the stream when it
//! can take it. What fell out of the stream is reported as a gap, never skipped silently.
//!
//! One stream serves all the models of a service, so a subscription whose items span several
//! models has one position and receives their deltas in publish order.
//!
//! Clients that opt in see positions as [`Offset`]s: opaque strings on the wire. A stream has an
//! *epoch* besides its numbers: 0 for the stream of one server, which is `"17"` on the wire; with
//! a broker, the epoch of the shared stream in Redis, which is `"1714560000000-17"` (the form
//! of a Redis Stream id). An epoch changes only when the shared stream starts over (Redis lost
//! its data), and an offset of another epoch is not a position in this stream.
//!
//! With a broker, a node's stream is a *mirror* of part of the shared one: it starts where the
//! node began to follow the shared stream ([`DeltaStream::restart`]), grows as deltas arrive
//! in order, and takes older deltas fetched from Redis at its front ([`DeltaStream::prepend`])
//! when a subscription acquired on this node must resume from before them.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tokio::time::Instant;

use super::delta::Delta;
use super::router::FunctionKeys;

/// How much of the stream is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The most deltas kept.
    pub deltas: usize,
    /// The most bytes kept (as the deltas' JSON size, estimated).
    pub bytes: usize,
    /// The longest a delta is kept.
    pub age: Duration,
}

impl Default for Retention {
    /// 100,000 deltas, 64 MiB, 5 minutes.
    fn default() -> Self {
        Retention { deltas: 100_000, bytes: 64 * 1024 * 1024, age: Duration::from_secs(300) }
    }
}

/// One delta in the stream.
#[derive(Debug)]
pub struct Entry {
    /// Its position.
    pub offset: u64,
    /// The delta as published.
    pub delta: Delta,
    /// The keys its model's function-keyed dealers computed when it was published, so that
    /// replaying it routes it exactly as it was routed live.
    pub keys: FunctionKeys,
    bytes: usize,
    at: Instant,
}

/// The retained deltas of one service.
#[derive(Debug)]
pub struct DeltaStream {
    retention: Retention,
    entries: VecDeque<Entry>,
    /// The offset the next delta takes.
    next: u64,
    bytes: usize,
    /// The epoch of the offsets (0 on a single server).
    epoch: u64,
}

/// A position in a stream as clients see it: an epoch and a number. Written `"17"` when the
/// epoch is 0, `"<epoch>-17"` otherwise; [`FromStr`] reads both forms back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset {
    /// The stream's epoch.
    pub epoch: u64,
    /// The number of the delta in that epoch (0: before the first).
    pub seq: u64,
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.epoch == 0 {
            write!(f, "{}", self.seq)
        } else {
            write!(f, "{}-{}", self.epoch, self.seq)
        }
    }
}

/// A string that is not an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not an offset")]
pub struct BadOffset;

impl FromStr for Offset {
    type Err = BadOffset;

    fn from_str(text: &str) -> Result<Offset, BadOffset> {
        // Digits only: `u64::from_str` would also take a leading `+`.
        let number = |part: &str| {
            if part.is_empty() || part.len() > 20 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(BadOffset);
            }
            part.parse::<u64>().map_err(|_| BadOffset)
        };
        match text.split_once('-') {
            None => Ok(Offset { epoch: 0, seq: number(text)? }),
            Some((epoch, seq)) => Ok(Offset { epoch: number(epoch)?, seq: number(seq)? }),
        }
    }
}

/// Where a position stands in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// Every delta after it is retained (possibly none).
    Retained,
    /// Some deltas after it were trimmed: whoever stands there has missed them.
    Gap,
    /// It is beyond the newest delta (an offset this stream never gave).
    Ahead,
}

impl DeltaStream {
    /// An empty stream.
    #[must_use]
    pub fn new(retention: Retention) -> DeltaStream {
        DeltaStream { retention, entries: VecDeque::new(), next: 1, bytes: 0, epoch: 0 }
    }

    /// The epoch of its offsets.
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The wire form of position `seq`.
    #[must_use]
    pub fn offset(&self, seq: u64) -> Offset {
        Offset { epoch: self.epoch, seq }
    }

    /// The offset of the newest delta (0 before the first).
    #[must_use]
    pub fn head(&self) -> u64 {
        self.next - 1
    }

    /// The offset of the oldest delta retained (the head's successor when none is).
    #[must_use]
    pub fn first(&self) -> u64 {
        self.entries.front().map_or(self.next, |entry| entry.offset)
    }

    /// Empties the stream and starts it over in `epoch`, its next delta taking offset `next`
    /// (a mirror that starts following a shared stream, or follows a new epoch of it).
    pub fn restart(&mut self, epoch: u64, next: u64) {
        self.entries.clear();
        self.bytes = 0;
        self.epoch = epoch;
        self.next = next.max(1);
    }

    /// Puts `older`, the deltas just before the oldest retained one and in order, at the front
    /// (deltas a mirror fetched so that a reader may start before what it holds). Nothing is
    /// trimmed: whoever fetched them is about to read them.
    ///
    /// # Errors
    ///
    /// [`BadOffset`] when they do not end right before the oldest retained delta.
    pub fn prepend(&mut self, from: u64, older: Vec<(Delta, FunctionKeys)>, now: Instant) -> Result<(), BadOffset> {
        let count = u64::try_from(older.len()).map_err(|_| BadOffset)?;
        if from == 0 || from.checked_add(count) != Some(self.first()) {
            return Err(BadOffset);
        }
        let mut offset = from + count;
        for (delta, keys) in older.into_iter().rev() {
            offset -= 1;
            let bytes = delta_size(&delta);
            self.bytes += bytes;
            self.entries.push_front(Entry { offset, delta, keys, bytes, at: now });
        }
        Ok(())
    }

    /// How many deltas are retained.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no delta is retained.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The estimated bytes retained.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Appends a delta and returns its offset, trimming what the retention no longer allows
    /// (never the delta just appended).
    pub fn append(&mut self, delta: Delta, keys: FunctionKeys, now: Instant) -> u64 {
        let offset = self.next;
        self.next += 1;
        let bytes = delta_size(&delta);
        self.bytes += bytes;
        self.entries.push_back(Entry { offset, delta, keys, bytes, at: now });
        self.trim(now);
        offset
    }

    /// Drops the oldest deltas beyond the retention at `now`.
    pub fn trim(&mut self, now: Instant) {
        while self.entries.len() > 1 {
            let Some(oldest) = self.entries.front() else { break };
            let over = self.entries.len() > self.retention.deltas
                || self.bytes > self.retention.bytes
                || now.saturating_duration_since(oldest.at) > self.retention.age;
            if !over {
                break;
            }
            self.bytes -= oldest.bytes;
            self.entries.pop_front();
        }
        // The newest delta goes too once it is older than the age limit.
        if self.entries.len() == 1
            && self.entries.front().is_some_and(|e| now.saturating_duration_since(e.at) > self.retention.age)
        {
            self.bytes = 0;
            self.entries.clear();
        }
    }

    /// Where `after` (the offset a reader has reached) stands.
    #[must_use]
    pub fn position(&self, after: u64) -> Position {
        if after > self.head() {
            return Position::Ahead;
        }
        if after + 1 >= self.first() {
            Position::Retained
        } else {
            Position::Gap
        }
    }

    /// The retained deltas after offset `after`, oldest first. Check [`position`](Self::position)
    /// first: after a gap this starts at the oldest retained delta.
    pub fn after(&self, after: u64) -> impl Iterator<Item = &Entry> {
        let skip = usize::try_from(after.saturating_add(1).saturating_sub(self.first())).unwrap_or(usize::MAX);
        self.entries.iter().skip(skip)
    }
}

/// A cheap estimate of a delta's JSON size: the bytes its strings and numbers take, plus a
/// few for punctuation. Exact sizes would cost a serialization per delta.
fn delta_size(delta: &Delta) -> usize {
    let objects = [delta.old_object(), delta.new_object()];
    64 + delta.model().len() + objects.iter().flatten().map(|value| crate::value::json_size(value)).sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn insert(n: i64) -> Delta {
        Delta::Insert { model: "Task".into(), data: json!({"n": n}) }
    }

    fn offsets(stream: &DeltaStream, after: u64) -> Vec<u64> {
        stream.after(after).map(|entry| entry.offset).collect()
    }

    #[test]
    fn offsets_count_from_one_and_readers_get_what_followed() {
        let now = Instant::now();
        let mut stream = DeltaStream::new(Retention::default());
        assert_eq!(stream.head(), 0);
        assert_eq!(stream.position(0), Position::Retained);
        assert_eq!(stream.append(insert(1), FunctionKeys::default(), now), 1);
        assert_eq!(stream.append(insert(2), FunctionKeys::default(), now), 2);
        assert_eq!(offsets(&stream, 0), vec![1, 2]);
        assert_eq!(offsets(&stream, 1), vec![2]);
        assert_eq!(offsets(&stream, 2), Vec::<u64>::new());
        assert_eq!(stream.position(3), Position::Ahead);
    }

    #[test]
    fn offsets_read_back_from_their_wire_form() {
        for (text, offset) in [("0", (0, 0)), ("17", (0, 17)), ("1714560000000-3", (1_714_560_000_000, 3))] {
            let parsed: Offset = text.parse().expect("an offset");
            assert_eq!((parsed.epoch, parsed.seq), offset);
            assert_eq!(parsed.to_string(), text);
        }
        for bad in ["", "-", "1-", "-1", "+1", "1-2-3", "x", " 1", "18446744073709551616", "1.5"] {
            assert_eq!(bad.parse::<Offset>(), Err(BadOffset), "{bad:?}");
        }
    }

    #[test]
    fn a_mirror_restarts_anywhere_and_takes_older_deltas_at_its_front() {
        let now = Instant::now();
        let mut stream = DeltaStream::new(Retention::default());
        stream.append(insert(1), FunctionKeys::default(), now);
        stream.restart(1_714_560_000_000, 40);
        assert_eq!((stream.head(), stream.first(), stream.len()), (39, 40, 0));
        assert_eq!(stream.offset(39).to_string(), "1714560000000-39");
        assert_eq!(stream.position(39), Position::Retained);
        assert_eq!(stream.position(38), Position::Gap);
        assert_eq!(stream.append(insert(40), FunctionKeys::default(), now), 40);
        let older = |range: std::ops::Range<i64>| range.map(|n| (insert(n), FunctionKeys::default())).collect();
        assert_eq!(stream.prepend(30, older(30..38), now), Err(BadOffset), "not adjacent");
        assert_eq!(stream.prepend(0, Vec::new(), now), Err(BadOffset));
        assert_eq!(stream.prepend(35, older(35..40), now), Ok(()));
        assert_eq!(offsets(&stream, 34), (35..=40).collect::<Vec<_>>());
        assert_eq!(stream.position(34), Position::Retained);
        assert_eq!(stream.append(insert(41), FunctionKeys::default(), now), 41);
    }

    #[test]
    fn retention_by_count_leaves_a_gap_behind() {
        let now = Instant::now();
        let mut stream = DeltaStream::new(Retention { deltas: 3, ..Retention::default() });
        for n in 1..=5 {
            stream.append(insert(n), FunctionKeys::default(), now);
        }
        assert_eq!(stream.len(), 3);
        assert_eq!(offsets(&stream, 2), vec![3, 4, 5]);
        assert_eq!(stream.position(2), Position::Retained, "nothing after 2 was trimmed");
        assert_eq!(stream.position(1), Position::Gap, "delta 2 was trimmed");
    }

    #[test]
    fn retention_by_bytes_and_age() {
        let now = Instant::now();
        let mut stream = DeltaStream::new(Retention { bytes: 300, ..Retention::default() });
        for n in 1..=10 {
            stream.append(insert(n), FunctionKeys::default(), now);
        }
        assert!(stream.bytes() <= 300 && !stream.is_empty(), "{} bytes", stream.bytes());
        let mut stream = DeltaStream::new(Retention { age: Duration::from_secs(10), ..Retention::default() });
        stream.append(insert(1), FunctionKeys::default(), now);
        stream.append(insert(2), FunctionKeys::default(), now + Duration::from_secs(6));
        stream.trim(now + Duration::from_secs(11));
        assert_eq!(offsets(&stream, 0), vec![2]);
        stream.trim(now + Duration::from_secs(17));
        assert!(stream.is_empty());
        assert_eq!(stream.position(2), Position::Retained, "a reader at the head missed nothing");
        assert_eq!(stream.position(1), Position::Gap);
        assert_eq!(stream.append(insert(3), FunctionKeys::default(), now), 3, "offsets continue");
    }
}
