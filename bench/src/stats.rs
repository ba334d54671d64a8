//! Summaries of what subscribers saw.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::client::SubResult;

/// The 1-based rank of the `q` quantile (0 < q ≤ 1) among `len` sorted samples (nearest rank).
pub fn rank(len: usize, q: f64) -> usize {
    // `as` saturates, and `q * len` is a small non-negative number here.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let rank = (q * len as f64).ceil() as usize;
    rank.clamp(1, len)
}

/// Percentiles of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
// The unit is part of each field's name on purpose.
#[allow(clippy::struct_field_names)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// From microsecond samples (sorted in place).
    pub fn of(samples: &mut [u32]) -> Option<Latency> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let at = |q: f64| f64::from(samples[rank(samples.len(), q) - 1]) / 1000.0;
        Some(Latency { p50_ms: at(0.50), p99_ms: at(0.99), max_ms: at(1.0) })
    }
}

/// Totals over a set of subscribers for one delivery scenario.
#[derive(Debug, Clone, Default)]
pub struct Deliveries {
    pub setup_failures: usize,
    pub publish_errors: u64,
    pub expected: u64,
    pub received: u64,
    pub missing: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub malformed: u64,
    /// Subscribers whose connection ended during the scenario (e.g. closed with 1008).
    pub closed: usize,
    pub close_reasons: Vec<String>,
    pub per_second: f64,
    pub elapsed: Duration,
    pub latency: Option<Latency>,
    /// Whether publishing stopped early because of the time budget.
    pub budget_hit: bool,
    /// Server CPU time per delivery, in microseconds.
    pub server_cpu_us_per_delivery: Option<f64>,
    /// Load generator CPU time per delivery, in microseconds.
    pub client_cpu_us_per_delivery: Option<f64>,
    /// Messages published (over every channel).
    pub published: u64,
    /// The broker's (Redis's) CPU time per publish, in microseconds, when there is one.
    pub broker_cpu_us_per_publish: Option<f64>,
    /// The broker's CPU time per delivery, in microseconds.
    pub broker_cpu_us_per_delivery: Option<f64>,
}

impl Deliveries {
    /// Sums `results`; `published[c]` is how many messages went to channel `c`; the rate is
    /// measured from `start` to the last delivery.
    pub fn summarize(results: Vec<SubResult>, published: &[u64], publish_errors: u64, start: Instant) -> Deliveries {
        let mut summary = Deliveries { publish_errors, published: published.iter().sum(), ..Deliveries::default() };
        let mut latencies = Vec::new();
        let mut last = None::<Instant>;
        for mut result in results {
            if let Some(err) = result.setup_error {
                summary.setup_failures += 1;
                if summary.close_reasons.len() < 5 {
                    summary.close_reasons.push(format!("setup: {err}"));
                }
                continue;
            }
            let expected = published.get(result.channel).copied().unwrap_or(0);
            summary.expected += expected;
            summary.received += result.received;
            summary.missing += expected.saturating_sub(result.unique);
            summary.duplicated += result.duplicated;
            summary.reordered += result.reordered;
            summary.malformed += result.malformed;
            if let Some(reason) = result.closed {
                summary.closed += 1;
                if summary.close_reasons.len() < 5 {
                    summary.close_reasons.push(reason);
                }
            }
            latencies.append(&mut result.latencies);
            last = last.max(result.last_delivery);
        }
        summary.elapsed = last.map_or(Duration::ZERO, |last| last.saturating_duration_since(start));
        let seconds = summary.elapsed.as_secs_f64();
        summary.per_second = if seconds > 0.0 { summary.received as f64 / seconds } else { 0.0 };
        summary.latency = Latency::of(&mut latencies);
        summary
    }

    /// Whether every delivery arrived once, in order, and no subscriber was lost.
    pub fn clean(&self) -> bool {
        self.setup_failures == 0
            && self.missing == 0
            && self.duplicated == 0
            && self.reordered == 0
            && self.malformed == 0
            && self.closed == 0
            && self.publish_errors == 0
    }

    /// `missing/duplicated/reordered` plus anything else that went wrong.
    pub fn errors_text(&self) -> String {
        let mut text = format!("{}/{}/{}", self.missing, self.duplicated, self.reordered);
        if self.closed > 0 {
            let _ = write!(text, ", {} closed", self.closed);
        }
        if self.setup_failures > 0 {
            let _ = write!(text, ", {} not connected", self.setup_failures);
        }
        if self.malformed > 0 {
            let _ = write!(text, ", {} malformed", self.malformed);
        }
        if self.publish_errors > 0 {
            let _ = write!(text, ", {} publish errors", self.publish_errors);
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut samples: Vec<u32> = (1..=100).map(|ms| ms * 1000).collect();
        let latency = Latency::of(&mut samples).expect("samples");
        assert!((latency.p50_ms - 50.0).abs() < 1e-9);
        assert!((latency.p99_ms - 99.0).abs() < 1e-9);
        assert!((latency.max_ms - 100.0).abs() < 1e-9);
    }
}
