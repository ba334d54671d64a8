//! A counting global allocator for the server processes, so the idle-memory scenario can say
//! where per-connection memory goes (live heap bytes by allocation size), not just how much RSS
//! grew.
//!
//! Off unless a server is started with `--alloc-stats` (then every allocation costs two relaxed
//! atomic adds; only the idle scenario turns it on, so throughput runs are unaffected). The
//! server prints a snapshot line (`ALLOC ...`) on SIGUSR1.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// Sizes up to this are counted exactly (to 16 bytes); larger ones by power of two.
const EXACT_LIMIT: usize = 64 * 1024;
const GRAIN: usize = 16;
const EXACT: usize = EXACT_LIMIT / GRAIN + 1;
const BUCKETS: usize = EXACT + 64;

static ENABLED: AtomicBool = AtomicBool::new(false);
static COUNTS: [AtomicI64; BUCKETS] = [const { AtomicI64::new(0) }; BUCKETS];
static BYTES: [AtomicI64; BUCKETS] = [const { AtomicI64::new(0) }; BUCKETS];

/// The allocator: the system allocator, counted when enabled.
pub struct Counting;

fn bucket(size: usize) -> usize {
    if size <= EXACT_LIMIT {
        size.div_ceil(GRAIN)
    } else {
        EXACT + (usize::BITS - size.leading_zeros()) as usize
    }
}

fn record(size: usize, sign: i64) {
    let b = bucket(size);
    COUNTS[b].fetch_add(sign, Ordering::Relaxed);
    // An allocation is at most `isize::MAX` bytes, so the conversion cannot fail.
    BYTES[b].fetch_add(sign * i64::try_from(size).unwrap_or(i64::MAX), Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; counting
// only touches atomics and never allocates.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc(layout);
        if !ptr.is_null() && ENABLED.load(Ordering::Relaxed) {
            record(layout.size(), 1);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc_zeroed(layout);
        if !ptr.is_null() && ENABLED.load(Ordering::Relaxed) {
            record(layout.size(), 1);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ENABLED.load(Ordering::Relaxed) {
            record(layout.size(), -1);
        }
        System.dealloc(ptr, layout);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = System.realloc(ptr, layout, new_size);
        if !new.is_null() && ENABLED.load(Ordering::Relaxed) {
            record(layout.size(), -1);
            record(new_size, 1);
        }
        new
    }
}

/// Starts counting.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// One bucket of a snapshot: (size, live count, live bytes).
pub type Bucket = (usize, i64, i64);

/// A snapshot: `(size, live count, live bytes)` per non-empty bucket, where `size` is the
/// bucket's upper bound.
pub fn snapshot() -> Vec<Bucket> {
    (0..BUCKETS)
        .filter_map(|b| {
            let (count, bytes) = (COUNTS[b].load(Ordering::Relaxed), BYTES[b].load(Ordering::Relaxed));
            let size = if b <= EXACT { b * GRAIN } else { 1usize << (b - EXACT) };
            (count != 0 || bytes != 0).then_some((size, count, bytes))
        })
        .collect()
}

/// The snapshot as one line: `ALLOC tasks=<n> size:count:bytes ...`.
pub fn line(tasks: usize) -> String {
    let mut out = format!("ALLOC tasks={tasks}");
    for (size, count, bytes) in snapshot() {
        let _ = write!(out, " {size}:{count}:{bytes}");
    }
    out
}

/// Parses [`line`]'s output back: (tasks, buckets).
pub fn parse(line: &str) -> Option<(i64, Vec<Bucket>)> {
    let mut words = line.strip_prefix("ALLOC ")?.split_whitespace();
    let tasks = words.next()?.strip_prefix("tasks=")?.parse().ok()?;
    let buckets = words
        .filter_map(|word| {
            let mut parts = word.split(':');
            Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
        })
        .collect();
    Some((tasks, buckets))
}

/// Per-connection difference between two snapshots: total bytes, allocations, and the largest
/// contributors as `count × size` text.
pub fn per_connection(before: &[Bucket], after: &[Bucket], conns: usize) -> (f64, f64, String) {
    let mut diff: std::collections::BTreeMap<usize, (i64, i64)> = std::collections::BTreeMap::new();
    for &(size, count, bytes) in after {
        let entry = diff.entry(size).or_default();
        entry.0 += count;
        entry.1 += bytes;
    }
    for &(size, count, bytes) in before {
        let entry = diff.entry(size).or_default();
        entry.0 -= count;
        entry.1 -= bytes;
    }
    let n = conns.max(1) as f64;
    let total_bytes: i64 = diff.values().map(|v| v.1).sum();
    let total_count: i64 = diff.values().map(|v| v.0).sum();
    let mut top: Vec<Bucket> = diff.into_iter().map(|(size, (count, bytes))| (size, count, bytes)).collect();
    top.sort_by_key(|entry| -entry.2);
    let text = top
        .iter()
        .filter(|(_, count, bytes)| *bytes as f64 / n >= 32.0 && *count > 0)
        .take(10)
        .map(|(size, count, bytes)| format!("{:.2}×{} B ({:.0} B)", *count as f64 / n, size, *bytes as f64 / n))
        .collect::<Vec<_>>()
        .join(", ");
    (total_bytes as f64 / n, total_count as f64 / n, text)
}
