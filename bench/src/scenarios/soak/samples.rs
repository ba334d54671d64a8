//! What the soak samples every interval: the server's resident memory, live heap, open file
//! descriptors, tokio tasks and the gauges of its `/metrics`, beside the clients' own counts.

use std::time::Duration;

use super::super::common::http_get;
use super::clients::{Count, Shared};
use crate::procs::ServerProcess;

/// Which part of the soak a sample was taken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Before any client connected.
    Baseline,
    /// Under load.
    Load,
    /// After every client left and the server settled.
    After,
}

/// One sample.
#[derive(Debug, Clone)]
pub(super) struct Sample {
    /// Seconds since the load started.
    pub(super) secs: f64,
    pub(super) phase: Phase,
    pub(super) rss_kib: Option<u64>,
    /// Live heap bytes (the server counts its allocations).
    pub(super) heap_bytes: Option<i64>,
    /// Alive tokio tasks.
    pub(super) tasks: Option<i64>,
    pub(super) fds: Option<usize>,
    /// Every gauge series of `/metrics`: (series, value).
    pub(super) gauges: Vec<(String, f64)>,
    /// Clients connected and subscribed (the load generator's count).
    pub(super) clients: i64,
    /// Deliveries received by the clients so far (PubSub and DataSync).
    pub(super) received: u64,
    /// Sessions started so far.
    pub(super) sessions: u64,
}

impl Sample {
    /// Takes one.
    pub(super) async fn take(server: &ServerProcess, shared: &Shared, secs: f64, phase: Phase) -> Sample {
        // The process figures first: the `/metrics` request is a connection (a descriptor and
        // a task for a moment) of its own.
        let snapshot = server.alloc_snapshot().await;
        let (rss_kib, fds) = (server.rss_kib(), crate::sys::open_fds(server.pid()));
        let metrics_url = server.target.backend_url.replace("/backend", "/metrics");
        let gauges = match http_get(&metrics_url).await {
            Ok(text) => gauges(&text),
            Err(err) => {
                eprintln!("    /metrics: {err}");
                Vec::new()
            }
        };
        let counters = &shared.counters;
        Sample {
            secs,
            phase,
            rss_kib,
            heap_bytes: snapshot.as_ref().map(|(_, buckets)| buckets.iter().map(|bucket| bucket.2).sum()),
            tasks: snapshot.map(|(tasks, _)| tasks),
            fds,
            gauges,
            clients: counters.connected(),
            received: counters.get(Count::PubSubReceived) + counters.get(Count::DeltasReceived),
            sessions: counters.get(Count::Sessions),
        }
    }

    /// The value of gauge `series`.
    pub(super) fn gauge(&self, series: &str) -> Option<f64> {
        self.gauges.iter().find(|(name, _)| name == series).map(|(_, value)| *value)
    }

    /// A one-line summary for the progress log.
    pub(super) fn line(&self) -> String {
        format!(
            "[{:>6.1} min] RSS {} MiB, heap {} MiB, fds {}, tasks {}, connections {}, clients {}",
            self.secs / 60.0,
            mib(self.rss_kib.map(|kib| kib as f64 * 1024.0)),
            mib(self.heap_bytes.map(|bytes| bytes as f64)),
            self.fds.map_or_else(|| "?".into(), |fds| fds.to_string()),
            self.tasks.map_or_else(|| "?".into(), |tasks| tasks.to_string()),
            self.gauge("snorky_connections").map_or_else(|| "?".into(), |value| format!("{value:.0}")),
            self.clients,
        )
    }
}

fn mib(bytes: Option<f64>) -> String {
    bytes.map_or_else(|| "?".into(), |bytes| format!("{:.1}", bytes / (1024.0 * 1024.0)))
}

/// The gauge series of a Prometheus text exposition: those whose `# TYPE` says `gauge`.
pub(super) fn gauges(text: &str) -> Vec<(String, f64)> {
    let names: Vec<&str> =
        text.lines().filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" gauge")).collect();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            if !names.contains(&name) {
                return None;
            }
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Whether the server is back where it started: no more descriptors, tasks and gauges than
/// at the baseline. Returns what is not, if anything.
pub(super) fn differences(baseline: &Sample, now: &Sample) -> Vec<String> {
    let mut out = Vec::new();
    if let (Some(before), Some(after)) = (baseline.fds, now.fds) {
        if after > before {
            out.push(format!("{after} file descriptors (baseline {before})"));
        }
    }
    if let (Some(before), Some(after)) = (baseline.tasks, now.tasks) {
        if after > before {
            out.push(format!("{after} tasks (baseline {before})"));
        }
    }
    for (series, before) in &baseline.gauges {
        match now.gauge(series) {
            Some(after) if (after - before).abs() < f64::EPSILON => {}
            after => out.push(format!("{series} = {after:?} (baseline {before})")),
        }
    }
    out
}

/// How far a value strayed after the warm-up: the median of the samples taken under load after
/// `warmup_secs`, and the largest deviation below and above it, as fractions. `None` with
/// fewer than 3 such samples.
pub(super) fn spread(samples: &[Sample], warmup_secs: f64, value: impl Fn(&Sample) -> Option<f64>) -> Option<Spread> {
    let mut values: Vec<f64> =
        samples.iter().filter(|s| s.phase == Phase::Load && s.secs >= warmup_secs).filter_map(&value).collect();
    if values.len() < 3 {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let median = values[values.len() / 2];
    if median <= 0.0 {
        return None;
    }
    let (low, high) = (values[0], values[values.len() - 1]);
    Some(Spread { median, below: (median - low) / median, above: (high - median) / median, count: values.len() })
}

/// See [`spread`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Spread {
    pub(super) median: f64,
    pub(super) below: f64,
    pub(super) above: f64,
    pub(super) count: usize,
}

impl Spread {
    /// The larger deviation.
    pub(super) fn worst(&self) -> f64 {
        self.below.max(self.above)
    }
}

/// How often to poll while waiting for the server to settle.
pub(super) const SETTLE_POLL: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_gauges_are_read() {
        let text = "# HELP snorky_connections Open connections\n# TYPE snorky_connections gauge\n\
                    snorky_connections 12\n# TYPE snorky_deliveries counter\nsnorky_deliveries_total 99\n\
                    # TYPE snorky_queue gauge\nsnorky_queue{service=\"a b\"} 3.5\n# EOF\n";
        assert_eq!(
            gauges(text),
            vec![("snorky_connections".to_owned(), 12.0), ("snorky_queue{service=\"a b\"}".to_owned(), 3.5)]
        );
    }
}
