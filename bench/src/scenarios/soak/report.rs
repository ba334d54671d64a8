//! The soak's judgment and its results file (markdown).

use std::fmt::Write as _;
use std::path::Path;

use super::clients::Count;
use super::samples::{spread, Phase, Sample, Spread};
use super::{Outcome, MEMORY_BAND, MEMORY_JUDGED_SECS};
use crate::report::{format_number, render_targets, write_header, TargetLine};

/// When and where the run happened.
pub(super) struct Header {
    command: String,
    date: String,
    revision: String,
    machine: String,
    load_before: String,
    load_after: String,
}

impl Header {
    /// The header of a run starting now.
    pub(super) fn now(command: &str) -> Header {
        Header {
            command: command.to_owned(),
            date: super::super::driver::utc_now(),
            revision: crate::sys::revision(),
            machine: crate::sys::machine(),
            load_before: crate::sys::loadavg(),
            load_after: String::new(),
        }
    }

    /// The same, with the load average at the end.
    pub(super) fn finished(mut self) -> Header {
        self.load_after = crate::sys::loadavg();
        self
    }
}

/// The checks, and the memory spreads they were judged on.
pub(super) struct Judged {
    pub(super) lines: Vec<TargetLine>,
    pub(super) rss: Option<Spread>,
    pub(super) heap: Option<Spread>,
}

/// Judges the outcome.
pub(super) fn judge(outcome: &Outcome) -> Judged {
    let count = |wanted| outcome.counts.iter().find(|(count, _)| *count == wanted).map_or(0, |(_, n)| *n);
    let mut lines = Vec::new();
    let (pubsub_missing, deltas_missing, disordered) =
        (count(Count::PubSubMissing), count(Count::DeltasMissing), count(Count::Disordered));
    let received = count(Count::PubSubReceived) + count(Count::DeltasReceived);
    lines.push(TargetLine {
        target: "0 lost deliveries for connected clients (PubSub while connected, DataSync across resumes), none twice or out of order".into(),
        measured: format!(
            "{pubsub_missing} PubSub and {deltas_missing} DataSync missing, {disordered} duplicated or reordered, of {} received",
            format_number(received as f64, 0)
        ),
        met: Some(pubsub_missing + deltas_missing + disordered == 0),
    });
    let failed: Vec<String> = outcome
        .counts
        .iter()
        .filter(|(count, n)| {
            count.is_failure()
                && *n > 0
                && !matches!(count, Count::PubSubMissing | Count::DeltasMissing | Count::Disordered)
        })
        .map(|(count, n)| format!("{n} {}", count.label()))
        .chain((outcome.stuck > 0).then(|| format!("{} clients stuck", outcome.stuck)))
        .collect();
    lines.push(TargetLine {
        target: "every session connects, authenticates, subscribes, resumes and leaves without an error".into(),
        measured: if failed.is_empty() {
            format!("{} sessions, no error", format_number(count(Count::Sessions) as f64, 0))
        } else {
            failed.join(", ")
        },
        met: Some(failed.is_empty()),
    });
    let warmup = outcome.timing.warmup_secs;
    let rss = spread(&outcome.samples, warmup, |s| s.rss_kib.map(|kib| kib as f64));
    let heap = spread(&outcome.samples, warmup, |s| s.heap_bytes.map(|bytes| bytes as f64));
    let long_enough = outcome.timing.secs >= MEMORY_JUDGED_SECS;
    lines.push(TargetLine {
        target: format!(
            "after the warm-up ({:.0} s), server RSS within ±{:.0}% of its median",
            warmup,
            MEMORY_BAND * 100.0
        ),
        measured: rss.map_or_else(
            || "too few samples after the warm-up".into(),
            |spread| {
                let mut text = spread_text(&spread, 1024.0);
                if !long_enough {
                    let _ = write!(text, " (judged on runs of {:.0} min or more)", MEMORY_JUDGED_SECS / 60.0);
                }
                text
            },
        ),
        met: if long_enough { Some(rss.is_some_and(|spread| spread.worst() <= MEMORY_BAND)) } else { None },
    });
    let baseline = outcome.samples.first();
    let after = outcome.samples.iter().rev().find(|s| s.phase == Phase::After);
    let settled = format!("{:.1} s after the last client left", outcome.settle_secs);
    let fds = baseline.zip(after).and_then(|(b, a)| b.fds.zip(a.fds));
    lines.push(TargetLine {
        target: "file descriptors back to the baseline when the load stops".into(),
        measured: fds.map_or_else(|| "not measured".into(), |(b, a)| format!("{b} → {a}, {settled}")),
        met: Some(fds.is_some_and(|(b, a)| a <= b)),
    });
    let tasks = baseline.zip(after).and_then(|(b, a)| b.tasks.zip(a.tasks));
    lines.push(TargetLine {
        target: "tokio tasks back to the baseline when the load stops".into(),
        measured: tasks.map_or_else(|| "not measured".into(), |(b, a)| format!("{b} → {a}")),
        met: Some(tasks.is_some_and(|(b, a)| a <= b)),
    });
    let (gauges, gauges_back) = baseline.zip(after).map_or((Vec::new(), false), |(b, a)| {
        let texts = b
            .gauges
            .iter()
            .map(|(series, value)| {
                format!("{series} {value} → {}", a.gauge(series).map_or("?".into(), |v| v.to_string()))
            })
            .collect();
        (texts, b.gauges.iter().all(|(series, value)| a.gauge(series) == Some(*value)))
    });
    lines.push(TargetLine {
        target: "every gauge of /metrics back to the baseline when the load stops".into(),
        measured: if gauges.is_empty() { "not measured".into() } else { gauges.join(", ") },
        met: Some(!gauges.is_empty() && gauges_back),
    });
    Judged { lines, rss, heap }
}

/// `median X MiB, −a% / +b% over n samples`, for values in units of `unit` bytes.
fn spread_text(spread: &Spread, unit: f64) -> String {
    format!(
        "median {:.1} MiB, −{:.1}% / +{:.1}% over {} samples",
        spread.median * unit / (1024.0 * 1024.0),
        spread.below * 100.0,
        spread.above * 100.0,
        spread.count
    )
}

/// The results file.
pub(super) fn markdown(header: &Header, outcome: &Outcome, judged: &Judged, plot: Option<&Path>) -> String {
    let plan = &outcome.plan;
    let timing = &outcome.timing;
    let mut out = String::new();
    out.push_str("# Snorky soak results\n\n");
    write_header(
        &mut out,
        &header.command,
        &header.date,
        &header.revision,
        &header.machine,
        (&header.load_before, &header.load_after),
    );
    let _ = writeln!(
        out,
        "- Load: {} connections churning for {:.0} s (first connects spread over {:.0} s): each \
         session connects with a connection token, subscribes to one of {} PubSub channels and \
         acquires its DataSync subscription (one of {} owners, authorized for its identity), stays \
         {:.0}–{:.0} s, then leaves and comes back within {:.1} s; {}% of the sessions end by \
         cancelling the subscription and dropping the socket without a close frame (the next one \
         authorizes anew), the others close cleanly and the next one resumes the subscription. \
         Publishes throughout: {} PubSub messages/s and {} DataSync deltas/s (batches of {}), \
         through the backend.",
        format_number(plan.connections as f64, 0),
        timing.secs,
        plan.ramp_secs,
        plan.channels,
        plan.owners,
        plan.session_secs.0,
        plan.session_secs.1,
        plan.pause_max_secs,
        plan.abrupt_percent,
        plan.publish_rate,
        plan.delta_rate,
        plan.batch
    );
    let _ = writeln!(
        out,
        "- Server: one `serve-snorky --mode isolation` (PubSub and DataSync, connection tokens, \
         default limits) counting its heap; sampled every {:.0} s; warm-up {:.0} s.{}",
        timing.sample_secs,
        timing.warmup_secs,
        outcome
            .server_cpu_secs
            .map(|cpu| format!(" Server CPU: {:.0}% of one core on average.", 100.0 * cpu / timing.secs.max(1.0)))
            .unwrap_or_default()
    );
    if let Some(plot) = plot {
        let name = plot.file_name().map_or_else(|| plot.display().to_string(), |n| n.to_string_lossy().into_owned());
        let _ = writeln!(out, "\n![The soak: server memory, descriptors, tasks and load over time]({name})");
    }
    out.push_str("\n## Checks\n\n");
    out.push_str(&render_targets(&judged.lines));
    if let Some(heap) = &judged.heap {
        let _ = writeln!(out, "\nLive heap after the warm-up (not judged): {}.", spread_text(heap, 1.0));
    }
    out.push_str("\n## Samples\n\n");
    out.push_str(&samples_table(&outcome.samples));
    out.push_str("\n## Counts\n\n| what | count |\n|---|---:|\n");
    for (count, n) in &outcome.counts {
        let _ = writeln!(out, "| {} | {} |", count.label(), format_number(*n as f64, 0));
    }
    if !outcome.leftovers.is_empty() {
        let _ = writeln!(out, "\nNot back at the baseline: {}.", outcome.leftovers.join(", "));
    }
    if !outcome.errors.is_empty() {
        out.push_str("\n## First errors\n\n");
        for error in &outcome.errors {
            let _ = writeln!(out, "- {}", error.replace('\n', " "));
        }
    }
    out
}

/// One row per sample: memory, descriptors, tasks, every gauge, and the rates since the
/// previous sample.
fn samples_table(samples: &[Sample]) -> String {
    let gauges: Vec<&str> =
        samples.first().map(|s| s.gauges.iter().map(|(name, _)| name.as_str()).collect()).unwrap_or_default();
    let mut out = String::from("| min | phase | RSS MiB | live heap MiB | fds | tasks |");
    for gauge in &gauges {
        let _ = write!(out, " {gauge} |");
    }
    out.push_str(" clients connected | deliveries/s | connects/s |\n|---:|---|---:|---:|---:|---:|");
    out.push_str(&"---:|".repeat(gauges.len() + 3));
    out.push('\n');
    let mut previous: Option<&Sample> = None;
    for sample in samples {
        let phase = match sample.phase {
            Phase::Baseline => "baseline",
            Phase::Load => "load",
            Phase::After => "after",
        };
        let _ = write!(
            out,
            "| {:.1} | {phase} | {} | {} | {} | {} |",
            sample.secs / 60.0,
            sample.rss_kib.map_or("?".into(), |kib| format!("{:.1}", kib as f64 / 1024.0)),
            sample.heap_bytes.map_or("?".into(), |bytes| format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))),
            sample.fds.map_or("?".into(), |fds| fds.to_string()),
            sample.tasks.map_or("?".into(), |tasks| tasks.to_string()),
        );
        for gauge in &gauges {
            let _ = write!(out, " {} |", sample.gauge(gauge).map_or("?".into(), |value| value.to_string()));
        }
        let rate = |value: fn(&Sample) -> u64| {
            previous.filter(|p| sample.phase == Phase::Load && sample.secs > p.secs).map_or("–".into(), |p| {
                format_number(value(sample).saturating_sub(value(p)) as f64 / (sample.secs - p.secs), 0)
            })
        };
        let _ = writeln!(out, " {} | {} | {} |", sample.clients, rate(|s| s.received), rate(|s| s.sessions));
        previous = Some(sample);
    }
    out
}
