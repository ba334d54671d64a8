//! The DataSync routing micro-benchmark: `snorky::datasync::Router` driven directly in this
//! process (no sockets, no server), in the build's profile (`bench/run.sh` builds release).
//!
//! Two routers, both on model `Task`:
//! - **equality**: `subs` subscriptions on a Filter dealer, each
//!   `["and", ["==", "owner", <its own owner>], [">=", "priority", 0]]`. An update delta
//!   (same owner before and after) reaches exactly one subscription. This is the target:
//!   median < 50 µs per delta.
//! - **mixed**: `subs` subscriptions spread over the three dealers: 1% on a Broadcast dealer,
//!   39% on a Simple dealer keyed by `owner`, 50% on the Filter dealer with an equality
//!   condition (as above) and 10% on it with no equality condition (`[">=", "priority", <n>]`
//!   and `["or", ...]` forms, which sit in the scan list every delta walks). An update reaches
//!   the Broadcast subscriptions plus about one of each other kind.
//!
//! For each: the time of `Router::route` per delta (median, p99 over `deltas` deltas, each
//! timed alone; a tenth of that for mixed), the same for `Router::route_naive` (over fewer deltas: it is slow), their
//! ratio, and throughput (deltas routed back to back per second). Every naive result is
//! compared with the indexed one.

use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};
use snorky::datasync::{Dealer, Delta, Router};

use crate::procs::Kind;
use crate::report::{format_number, Cell, Report};

/// `snorky-bench routing`.
#[derive(Args, Debug, Clone)]
pub struct RoutingArgs {
    /// Subscriptions in each router.
    #[arg(long, default_value_t = 100_000)]
    pub subs: usize,
    /// Deltas timed one by one with `route` (the naive scan gets 1%, between 10 and 30: it takes
    /// tens of milliseconds a delta at 100,000).
    #[arg(long, default_value_t = 20_000)]
    pub deltas: usize,
}

/// What one router measured.
#[derive(Debug, Clone)]
pub struct Measured {
    pub name: &'static str,
    pub subs: usize,
    /// Subscriptions one delta reaches (average).
    pub reached: f64,
    pub median: Duration,
    pub p99: Duration,
    pub naive_median: Duration,
    pub naive_p99: Duration,
    pub per_second: f64,
    pub naive_per_second: f64,
}

/// The two measurements.
pub fn measure(subs: usize, deltas: usize) -> Result<Vec<Measured>, String> {
    let subs = subs.max(10);
    let deltas = deltas.max(10);
    // A mixed delta reaches the 1% of Broadcast subscriptions (1,000 at 100,000): a tenth of
    // the deltas keeps that measurement to seconds.
    Ok(vec![
        run("equality", equality_router(subs)?, subs, deltas)?,
        run("mixed", mixed_router(subs)?, subs, (deltas / 10).max(10))?,
    ])
}

fn dealers() -> Vec<Dealer> {
    vec![
        Dealer::broadcast("all_tasks", "Task"),
        Dealer::simple_field("tasks_by_owner", "Task", "owner"),
        Dealer::filter("tasks", "Task"),
    ]
}

fn equality_query(owner: u64) -> Value {
    json!(["and", ["==", "owner", owner], [">=", "priority", 0]])
}

fn equality_router(subs: usize) -> Result<Router, String> {
    let mut router = Router::new(dealers()).map_err(|e| e.to_string())?;
    for sub in 0..subs as u64 {
        router
            .authorize(sub, &json!([{"dealer": "tasks", "query": equality_query(sub)}]))
            .map_err(|e| e.to_string())?;
    }
    Ok(router)
}

fn mixed_router(subs: usize) -> Result<Router, String> {
    let mut router = Router::new(dealers()).map_err(|e| e.to_string())?;
    let owners = (subs as u64 / 2).max(1);
    for sub in 0..subs as u64 {
        let owner = sub % owners;
        let item = match sub % 100 {
            0 => json!({"dealer": "all_tasks", "query": null}),
            1..=39 => json!({"dealer": "tasks_by_owner", "query": owner}),
            40..=89 => json!({"dealer": "tasks", "query": equality_query(owner)}),
            // No equality condition: these are evaluated for every delta. Priorities in the
            // deltas are 1 and 2, so they match nothing.
            n if n % 2 == 0 => json!({"dealer": "tasks", "query": [">=", "priority", 100 + sub % 50]}),
            _ => json!({"dealer": "tasks", "query": ["or", ["<", "priority", -1], [">", "priority", 1000 + sub % 7]]}),
        };
        router.authorize(sub, &json!([item])).map_err(|e| e.to_string())?;
    }
    Ok(router)
}

/// The `i`-th update delta: one owner's task changes priority and title.
fn delta(i: u64, owners: u64) -> Delta {
    let owner = i.wrapping_mul(7_919) % owners.max(1);
    Delta::Update {
        model: "Task".into(),
        old_data: json!({"id": i, "owner": owner, "priority": 1, "title": "before"}),
        new_data: json!({"id": i, "owner": owner, "priority": 2, "title": "after"}),
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[crate::stats::rank(sorted.len(), q) - 1]
}

fn run(name: &'static str, router: Router, subs: usize, count: usize) -> Result<Measured, String> {
    let owners = if name == "equality" { subs as u64 } else { (subs as u64 / 2).max(1) };
    let deltas: Vec<Delta> = (0..count as u64).map(|i| delta(i, owners)).collect();
    // Warm up (caches, allocator).
    for d in deltas.iter().take(100) {
        std::hint::black_box(router.route(d));
    }
    let mut times = Vec::with_capacity(count);
    let mut reached = 0usize;
    for d in &deltas {
        let start = Instant::now();
        let targets = router.route(d);
        times.push(start.elapsed());
        reached += targets.len();
        std::hint::black_box(targets);
    }
    times.sort_unstable();
    let start = Instant::now();
    for d in &deltas {
        std::hint::black_box(router.route(d));
    }
    let per_second = count as f64 / start.elapsed().as_secs_f64();

    let naive_count = (count / 100).clamp(10, 30).min(count);
    let mut naive_times = Vec::with_capacity(naive_count);
    for d in deltas.iter().take(naive_count) {
        let start = Instant::now();
        let naive = router.route_naive(d);
        naive_times.push(start.elapsed());
        if naive != router.route(d) {
            return Err(format!("routing / {name}: route and route_naive disagree on {d:?}"));
        }
    }
    naive_times.sort_unstable();
    let naive_total: Duration = naive_times.iter().sum();
    Ok(Measured {
        name,
        subs,
        reached: reached as f64 / count as f64,
        median: percentile(&times, 0.5),
        p99: percentile(&times, 0.99),
        naive_median: percentile(&naive_times, 0.5),
        naive_p99: percentile(&naive_times, 0.99),
        per_second,
        naive_per_second: naive_count as f64 / naive_total.as_secs_f64(),
    })
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Adds the rows of `measured` to the report (Snorky's column; the naive scan's ratio is in
/// the metric's name).
pub fn record(report: &mut Report, measured: &[Measured]) {
    for m in measured {
        let prefix = match m.name {
            "equality" => format!(
                "routing: update through {} Filter subs with an equality condition",
                format_number(m.subs as f64, 0)
            ),
            _ => format!(
                "routing: update through {} subs over Broadcast 1% / Simple 39% / Filter 60% (10% without equality)",
                format_number(m.subs as f64, 0)
            ),
        };
        let kind = Kind::Snorky;
        report.row_mut(&format!("{prefix}: route µs median"), false).set(kind, Cell::number(micros(m.median), 2));
        report.row_mut(&format!("{prefix}: route µs p99"), false).set(kind, Cell::number(micros(m.p99), 2));
        report
            .row_mut(&format!("{prefix}: naive scan µs median"), false)
            .set(kind, Cell::number(micros(m.naive_median), 1));
        report
            .row_mut(&format!("{prefix}: naive ÷ route (median)"), false)
            .set(kind, Cell::number(micros(m.naive_median) / micros(m.median).max(1e-9), 0));
        report.row_mut(&format!("{prefix}: deltas routed/s"), false).set(kind, Cell::number(m.per_second, 0));
        report
            .row_mut(&format!("{prefix}: deltas routed/s, naive scan"), false)
            .set(kind, Cell::number(m.naive_per_second, 0));
        report.row_mut(&format!("{prefix}: subscriptions reached/delta"), false).set(kind, Cell::number(m.reached, 2));
    }
}

/// Prints one measurement.
pub fn print(m: &Measured) {
    eprintln!(
        "    routing / {}: {} subs, {:.2} reached/delta: route median {:.2} µs, p99 {:.2} µs, {}/s; naive median {:.1} µs, p99 {:.1} µs, {}/s; ratio {:.0}×",
        m.name,
        m.subs,
        m.reached,
        micros(m.median),
        micros(m.p99),
        format_number(m.per_second, 0),
        micros(m.naive_median),
        micros(m.naive_p99),
        format_number(m.naive_per_second, 0),
        micros(m.naive_median) / micros(m.median).max(1e-9)
    );
}

/// `snorky-bench routing`: prints the measurements and the target's verdict.
pub fn main(args: &RoutingArgs) -> Result<(), String> {
    if cfg!(debug_assertions) {
        eprintln!(
            "note: a debug build; use the release build (cargo build --release -p snorky-bench) for real numbers"
        );
    }
    let measured = measure(args.subs, args.deltas)?;
    for m in &measured {
        print(m);
    }
    let mut report = Report::default();
    record(&mut report, &measured);
    println!("{}", report.table());
    if let Some(m) = measured.iter().find(|m| m.name == "equality") {
        let met = micros(m.median) < 50.0;
        println!(
            "target: median route of an update through {} equality Filter subs < 50 µs: {:.2} µs, {}",
            format_number(m.subs as f64, 0),
            micros(m.median),
            if met { "met" } else { "NOT met" }
        );
    }
    Ok(())
}
