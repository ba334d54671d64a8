//! What the PubSub scenarios share: the publish size, the drain and window waits, the backend
//! client, and how a delivery scenario records its rows and judges its deliveries.

use std::time::{Duration, Instant};

use snorky::backend_client::BackendClient;

use crate::client::{Subscribers, Target};
use crate::procs::{Kind, ServerProcess};
use crate::report::{format_number, Cell, Report};
use crate::stats::Deliveries;
use crate::sys;

/// Size of the `message` of every publish, in bytes of JSON.
pub(super) const MESSAGE_SIZE: usize = 100;
/// How long the drain after the last publish may go without progress before giving up.
pub(super) const DRAIN_IDLE: Duration = Duration::from_secs(10);
/// Channels delivers one publish to 5,000 subscribers in tens of seconds: give it longer.
pub(super) const DRAIN_IDLE_CHANNELS: Duration = Duration::from_secs(60);

pub(super) fn drain_idle(kind: Kind) -> Duration {
    if kind == Kind::Channels {
        DRAIN_IDLE_CHANNELS
    } else {
        DRAIN_IDLE
    }
}
/// How long the drain may take at most.
pub(super) const DRAIN_MAX: Duration = Duration::from_secs(120);
/// How long opening all subscribers may take at most.
pub(super) const OPEN_MAX: Duration = Duration::from_secs(600);
/// How long a publisher waits for the slowest subscriber before giving up.
pub(super) const WINDOW_WAIT_MAX: Duration = Duration::from_secs(30);

/// A backend client for `target` with the benchmark's key.
pub(crate) fn backend_client(target: &Target) -> Result<BackendClient, String> {
    BackendClient::new(&target.backend_url, crate::KEY, Duration::from_secs(30)).map_err(|err| err.to_string())
}

/// Waits until every subscriber in `indices` has at least `needed` deliveries. False when the
/// slowest made no progress for [`WINDOW_WAIT_MAX`].
pub(crate) async fn wait_window(subscribers: &Subscribers, indices: &[usize], needed: u64) -> bool {
    let mut last = subscribers.progress.min_of(indices.iter().copied());
    let mut since = Instant::now();
    loop {
        let min = subscribers.progress.min_of(indices.iter().copied());
        if min >= needed {
            return true;
        }
        if min != last {
            last = min;
            since = Instant::now();
        } else if since.elapsed() > WINDOW_WAIT_MAX {
            return false;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// The size note of a cell when a kind ran at a different size than the others.
pub(super) fn size_note(kind: Kind, size: usize, full: usize, what: &str) -> String {
    if kind == Kind::Channels && size != full {
        format!("{} {what}", format_number(size as f64, 0))
    } else {
        String::new()
    }
}

/// Records the rows every delivery scenario has.
pub(super) fn record_deliveries(report: &mut Report, kind: Kind, prefix: &str, summary: &Deliveries, note: &str) {
    let mut rate = Cell::number(summary.per_second, 0).note(note);
    if summary.budget_hit {
        rate = rate.note("publishing stopped at the time budget");
    }
    report.row_mut(&format!("{prefix}: deliveries/s"), true).set(kind, rate);
    if let Some(latency) = summary.latency {
        report.row_mut(&format!("{prefix}: latency p50 (ms)"), true).set(kind, Cell::number(latency.p50_ms, 2));
        report.row_mut(&format!("{prefix}: latency p99 (ms)"), true).set(kind, Cell::number(latency.p99_ms, 2));
    }
    report.row_mut(&format!("{prefix}: missing/dup/reordered"), false).set(kind, Cell::text(summary.errors_text()));
    if let Some(cpu) = summary.server_cpu_us_per_delivery {
        report.row_mut(&format!("{prefix}: server CPU µs/delivery"), true).set(kind, Cell::number(cpu, 2));
    }
    if let Some(cpu) = summary.client_cpu_us_per_delivery {
        report.row_mut(&format!("{prefix}: load generator CPU µs/delivery"), true).set(kind, Cell::number(cpu, 2));
    }
    if !summary.close_reasons.is_empty() {
        report.notes.push(format!("{prefix} / {}: {}", kind.name(), summary.close_reasons.join("; ")));
    }
    print_summary(summary);
}

/// Prints a delivery scenario's outcome on one line.
pub(super) fn print_summary(summary: &Deliveries) {
    eprintln!(
        "    {} deliveries in {:.2} s = {}/s, p50 {:.2} ms, p99 {:.2} ms, errors {}",
        summary.received,
        summary.elapsed.as_secs_f64(),
        format_number(summary.per_second, 0),
        summary.latency.map_or(0.0, |l| l.p50_ms),
        summary.latency.map_or(0.0, |l| l.p99_ms),
        summary.errors_text()
    );
}

pub(super) fn check_clean(kind: Kind, summary: &Deliveries) -> Result<(), String> {
    if kind != Kind::Channels && !summary.clean() {
        return Err(format!("deliveries not clean: {}", summary.errors_text()));
    }
    Ok(())
}

/// The CPU time the server and the load generator had used at one moment.
pub(super) struct CpuMark {
    server: Option<Duration>,
    own: Option<Duration>,
}

impl CpuMark {
    /// Reads both clocks now.
    pub(super) fn take(server: &ServerProcess) -> CpuMark {
        CpuMark { server: server.cpu_time(), own: sys::cpu_time(std::process::id()) }
    }

    /// Sets the per-delivery CPU figures of `summary` from this mark to `after`.
    pub(super) fn charge(&self, after: &CpuMark, summary: &mut Deliveries) {
        summary.server_cpu_us_per_delivery = cpu_per_delivery(self.server, after.server, summary.received);
        summary.client_cpu_us_per_delivery = cpu_per_delivery(self.own, after.own, summary.received);
    }
}

/// Server CPU microseconds per counted unit (delivery, request) between two readings.
pub(crate) fn cpu_per_delivery(before: Option<Duration>, after: Option<Duration>, deliveries: u64) -> Option<f64> {
    let spent = after?.checked_sub(before?)?;
    (deliveries > 0).then(|| spent.as_secs_f64() * 1e6 / deliveries as f64)
}
