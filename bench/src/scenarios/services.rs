//! What the Snorky-only scenarios (DataSync, Chat, the Python service) share: their sizes, how
//! they record their rows (Snorky's column only: the ceiling has no DataSync, Chat or Python
//! services, so these rows carry absolute numbers) and judge their deliveries.

use std::path::PathBuf;
use std::time::Duration;

use super::common::print_summary;
use crate::client::OpenOptions;
use crate::procs::Kind;
use crate::report::{Cell, Report};
use crate::stats::Deliveries;

/// How long opening all subscribers (members) may take at most.
pub(super) const SERVICE_OPEN_MAX: Duration = Duration::from_secs(300);

/// Sizes and options of these scenarios.
#[derive(Debug, Clone)]
pub struct ServiceSizes {
    pub conns: usize,
    pub per_owner: u64,
    pub broadcast: u64,
    pub chat_msgs: u64,
    pub window: u64,
    pub concurrency: usize,
    pub source_ips: u8,
    pub rpc_secs: f64,
    pub rpc_conns: usize,
    pub python: PathBuf,
    pub routing_subs: usize,
    pub routing_deltas: usize,
    /// Items in the isolation scenario's authorization.
    pub isolation_items: usize,
    /// Parts of each of their Filter queries.
    pub isolation_parts: usize,
    /// Deltas in the isolation scenario's batch.
    pub isolation_deltas: usize,
}

impl ServiceSizes {
    pub(super) fn open_options(&self, max_seq: u64) -> OpenOptions {
        OpenOptions { concurrency: self.concurrency, source_ips: self.source_ips, max_seq, record: true }
    }
}

/// The rows of a delivery scenario (Snorky's column only).
pub(super) fn record(report: &mut Report, prefix: &str, summary: &Deliveries, extra: &[(&str, f64, usize)]) {
    let kind = Kind::Snorky;
    report.row_mut(&format!("{prefix}: deliveries/s"), false).set(kind, Cell::number(summary.per_second, 0));
    for (name, value, decimals) in extra {
        report.row_mut(&format!("{prefix}: {name}"), false).set(kind, Cell::number(*value, *decimals));
    }
    if let Some(latency) = summary.latency {
        report.row_mut(&format!("{prefix}: latency p50 (ms)"), false).set(kind, Cell::number(latency.p50_ms, 2));
        report.row_mut(&format!("{prefix}: latency p99 (ms)"), false).set(kind, Cell::number(latency.p99_ms, 2));
    }
    report.row_mut(&format!("{prefix}: missing/dup/reordered"), false).set(kind, Cell::text(summary.errors_text()));
    if let Some(cpu) = summary.server_cpu_us_per_delivery {
        report.row_mut(&format!("{prefix}: server CPU µs/delivery"), false).set(kind, Cell::number(cpu, 2));
    }
    if !summary.close_reasons.is_empty() {
        report.notes.push(format!("{prefix}: {}", summary.close_reasons.join("; ")));
    }
    print_summary(summary);
}

/// An error when any delivery was missing, duplicated or reordered.
pub(super) fn clean(summary: &Deliveries) -> Result<(), String> {
    if summary.clean() {
        Ok(())
    } else {
        Err(format!("deliveries not clean: {}", summary.errors_text()))
    }
}
