//! The target judgment: the targets table, read from the rows the scenarios recorded.

use super::driver::Sizes;
use crate::procs::Kind;
use crate::report::{format_number, format_ratio, Report, TargetLine};

/// Fills the targets table from the rows.
pub(super) fn judge_targets(sizes: &Sizes, report: &mut Report) {
    let smoke = report.smoke;
    let mut lines = Vec::new();
    let ratio_line = |report: &Report, prefix: &str, other: Kind, at_least: f64, target: &str| {
        let row = report.rows.iter().find(|row| row.metric.starts_with(prefix));
        let ratio = row.and_then(|row| row.ratio(other));
        TargetLine {
            target: target.to_owned(),
            measured: ratio.map_or_else(|| "not measured".to_owned(), |r| format!("{}×", format_ratio(r))),
            met: if smoke { None } else { ratio.map(|r| r >= at_least) },
        }
    };
    let fanout = format!("fan-out {} subs", format_number(sizes.fanout_subs as f64, 0));
    let fanout_rate = format!("{fanout} × {} msgs: deliveries/s", format_number(sizes.fanout_msgs as f64, 0));
    for (other, at_least, target) in [
        (Kind::Ceiling, 0.8, "fan-out 5,000 subs: deliveries/s ≥ 0.8× ceiling"),
        (Kind::Channels, 100.0, "fan-out 5,000 subs: deliveries/s ≥ 100× Channels"),
    ] {
        lines.push(ratio_line(report, &fanout_rate, other, at_least, target));
    }
    let errors = report
        .rows
        .iter()
        .find(|row| row.metric.starts_with(&fanout) && row.metric.ends_with("missing/dup/reordered"))
        .and_then(|row| row.text(Kind::Snorky));
    lines.push(TargetLine {
        target: "fan-out: 0 missing, duplicated, reordered (snorky)".into(),
        met: if smoke { None } else { errors.as_ref().map(|text| text == "0/0/0") },
        measured: errors.unwrap_or_else(|| "not measured".into()),
    });
    let idle = snorky_value(report, |metric| metric.starts_with("idle: server RSS KiB/conn"));
    lines.push(TargetLine {
        target: "idle: ≤ 8 KiB per subscribed connection at 10,000".into(),
        measured: idle.map_or_else(
            || "not measured".into(),
            |kib| format!("{kib:.2} KiB at {}", format_number(sizes.idle_conns as f64, 0)),
        ),
        met: if smoke { None } else { idle.map(|kib| kib <= 8.0) },
    });
    lines.push(ratio_line(report, "set-up: connections/s", Kind::Ceiling, 0.8, "set-up rate ≥ 0.8× ceiling"));
    lines.push(ratio_line(
        report,
        &format!("{} channels ×", format_number(sizes.multi_channels as f64, 0)),
        Kind::Ceiling,
        0.8,
        "1,000 channels × 5 subs via BackendClient: deliveries/s ≥ 0.8× ceiling",
    ));
    let p99 = snorky_value(report, |metric| metric.starts_with("steady") && metric.ends_with("latency p99 (ms)"));
    lines.push(TargetLine {
        target: "latency p99 ≤ 10 ms at 1,000 subs, 200 msg/s".into(),
        measured: p99.map_or_else(|| "not measured".into(), |ms| format!("{ms:.2} ms")),
        met: if smoke { None } else { p99.map(|ms| ms <= 10.0) },
    });
    let routing = snorky_value(report, |metric| {
        metric.starts_with("routing: update through") && metric.contains("equality condition: route µs median")
    });
    lines.push(TargetLine {
        target: "routing an update through 100,000 equality Filter subs: median < 50 µs".into(),
        measured: routing.map_or_else(
            || "not measured".into(),
            |us| format!("{us:.2} µs at {}", format_number(sizes.services.routing_subs as f64, 0)),
        ),
        met: if smoke { None } else { routing.map(|us| us < 50.0) },
    });
    let isolated = snorky_value(report, |metric| {
        metric.starts_with("isolation: PubSub round trip p99") && metric.contains("under the largest")
    });
    lines.push(TargetLine {
        target: "PubSub round trip p99 < 50 ms while the largest authorizations and batches run".into(),
        measured: isolated.map_or_else(|| "not measured".into(), |ms| format!("{ms:.2} ms")),
        met: if smoke { None } else { isolated.map(|ms| ms < 50.0) },
    });
    for (what, starts) in [("DataSync", "DataSync"), ("chat", "chat")] {
        let texts: Vec<String> = report
            .rows
            .iter()
            .filter(|row| row.metric.starts_with(starts) && row.metric.ends_with("missing/dup/reordered"))
            .filter_map(|row| row.text(Kind::Snorky))
            .collect();
        lines.push(TargetLine {
            target: format!("{what}: 0 missing, duplicated, reordered"),
            met: if smoke || texts.is_empty() { None } else { Some(texts.iter().all(|t| t == "0/0/0")) },
            measured: if texts.is_empty() { "not measured".into() } else { texts.join(", ") },
        });
    }
    lines.extend(super::sockjs::targets(report, &sizes.sockjs));
    lines.extend(super::django::targets(report, &sizes.django));
    report.targets = lines;
}

/// Snorky's value in the first row whose metric satisfies `wanted`.
fn snorky_value(report: &Report, wanted: impl Fn(&str) -> bool) -> Option<f64> {
    report.rows.iter().find(|row| wanted(&row.metric)).and_then(|row| row.get(Kind::Snorky)).and_then(|cell| cell.value)
}
