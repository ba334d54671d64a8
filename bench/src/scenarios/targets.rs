//! The target judgment: the targets table, read from the rows the scenarios recorded.

use std::fmt::Write as _;

use super::driver::Sizes;
use super::{cluster, fanout};
use crate::procs::{Kind, Setup};
use crate::report::{format_number, format_ratio, Column, Report, Table, TargetLine};

/// Fills the targets table from the rows.
pub(super) fn judge_targets(sizes: &Sizes, report: &mut Report) {
    let smoke = report.smoke;
    let mut lines = Vec::new();
    let ratio_line = |report: &Report, prefix: &str, other: Kind, at_least: f64, target: &str| {
        ratio_target(&report.main, prefix, other, at_least, target, smoke)
    };
    let fanout_rows = fanout::prefix(sizes);
    let fanout_rate = format!("{fanout_rows}: deliveries/s");
    for (other, at_least, target) in [
        (Kind::Ceiling, 0.8, "fan-out 5,000 subs: deliveries/s ≥ 0.8× ceiling"),
        (Kind::Channels, 100.0, "fan-out 5,000 subs: deliveries/s ≥ 100× Channels"),
    ] {
        lines.push(ratio_line(report, &fanout_rate, other, at_least, target));
    }
    lines.push(clean_target(
        &report.main,
        &fanout_rows,
        Kind::Snorky,
        "fan-out: 0 missing, duplicated, reordered (snorky)",
        smoke,
    ));
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
    lines.extend(rpc_targets(report));
    for (what, starts) in [("DataSync", "DataSync"), ("chat", "chat")] {
        let texts: Vec<String> = report
            .main
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
    cluster_targets(sizes, report, &mut lines);
    lines.extend(super::django::targets(report, &sizes.django));
    report.targets = lines;
}

/// The targets of a request/reply round trip on one connection: the server wakes about once per
/// round trip, and spends at most 1.15× the ceiling's CPU on it.
fn rpc_targets(report: &Report) -> [TargetLine; 2] {
    let smoke = report.smoke;
    let row = |metric: &str| report.main.find(|found| found == metric);
    let switches = row("RPC: server context switches/round trip, 1 connection").and_then(|row| row.value(Kind::Snorky));
    let cpu = row("RPC: server CPU µs/round trip, 1 connection").and_then(|row| row.ratio(Kind::Ceiling));
    [
        TargetLine {
            target: "RPC, 1 connection: ≤ 1.5 server context switches per round trip".into(),
            measured: switches.map_or_else(|| "not measured".into(), |count| format!("{count:.2}")),
            met: if smoke { None } else { switches.map(|count| count <= 1.5) },
        },
        TargetLine {
            target: "RPC, 1 connection: server CPU per round trip ≤ 1.15× ceiling".into(),
            measured: cpu.map_or_else(|| "not measured".into(), |ratio| format!("{}×", format_ratio(ratio))),
            met: if smoke { None } else { cpu.map(|ratio| ratio <= 1.15) },
        },
    ]
}

/// The targets of several nodes on Redis, from the cluster table.
fn cluster_targets(sizes: &Sizes, report: &Report, lines: &mut Vec<TargetLine>) {
    let smoke = report.smoke;
    let table = &report.cluster;
    let fanout_rate = format!("{}: deliveries/s", fanout::prefix(sizes));
    lines.push(ratio_target(
        table,
        &fanout_rate,
        Setup::Single,
        0.7,
        "several nodes: fan-out 5,000 subs over 2 nodes on Redis, publishing through a 3rd: deliveries/s ≥ 0.7× 1 node",
        smoke,
    ));
    lines.push(clean_target(
        table,
        &fanout::prefix(sizes),
        Setup::Cluster,
        "several nodes: fan-out: 0 missing, duplicated, reordered (cluster)",
        smoke,
    ));
    for rate in cluster::hop_rates(sizes) {
        lines.push(hop_target(table, sizes, rate, smoke));
    }
    lines.push(ratio_target(
        table,
        &fanout_rate,
        Setup::ChannelsRedis,
        100.0,
        "several nodes: fan-out: deliveries/s ≥ 100× Channels on channels_redis (2 workers + 1 publishing)",
        smoke,
    ));
}

/// The Redis hop's target at `rate`: the cluster's latency p50 at most 1 ms over one node's.
/// Judged only when both kept the rate (within 5%): a setup that fell behind carried less load,
/// and its latency is not comparable.
fn hop_target(table: &Table<Setup>, sizes: &Sizes, rate: u64, smoke: bool) -> TargetLine {
    let prefix = cluster::hop_prefix(sizes, rate);
    let value = |setup, metric: &str| {
        table.find(|m| m.starts_with(&prefix) && m.ends_with(metric)).and_then(|row| row.value(setup))
    };
    let p50 = value(Setup::Cluster, "latency p50 (ms)").zip(value(Setup::Single, "latency p50 (ms)"));
    let achieved = value(Setup::Cluster, "publishes/s achieved").zip(value(Setup::Single, "publishes/s achieved"));
    let kept = achieved.is_some_and(|(cluster, single)| cluster.min(single) >= 0.95 * rate as f64);
    let target = format!(
        "several nodes: Redis hop at {} subs, {rate} msg/s: p50 ≤ 1 node's + 1 ms",
        format_number(sizes.latency_subs as f64, 0)
    );
    let Some((cluster, single)) = p50 else {
        return TargetLine { target, measured: "not measured".into(), met: None };
    };
    let mut measured = format!("{:+.2} ms ({cluster:.2} ms vs {single:.2} ms)", cluster - single);
    if let (false, Some((cluster_rate, single_rate))) = (kept, achieved) {
        let _ = write!(
            measured,
            "; not judged: the rate was not kept (cluster {cluster_rate:.0} msg/s, 1 node {single_rate:.0} msg/s)"
        );
    }
    TargetLine { target, measured, met: if smoke || !kept { None } else { Some(cluster - single <= 1.0) } }
}

/// A target on the ratio of the subject's value to `other`'s in the first row of `table` whose
/// metric starts with `prefix`.
fn ratio_target<C: Column>(
    table: &Table<C>,
    prefix: &str,
    other: C,
    at_least: f64,
    target: &str,
    smoke: bool,
) -> TargetLine {
    let ratio = table.find(|metric| metric.starts_with(prefix)).and_then(|row| row.ratio(other));
    TargetLine {
        target: target.to_owned(),
        measured: ratio.map_or_else(|| "not measured".to_owned(), |r| format!("{}×", format_ratio(r))),
        met: if smoke { None } else { ratio.map(|r| r >= at_least) },
    }
}

/// A target on `column` having delivered everything once and in order, in the rows of `prefix`.
fn clean_target<C: Column>(table: &Table<C>, prefix: &str, column: C, target: &str, smoke: bool) -> TargetLine {
    let errors = table
        .find(|metric| metric.starts_with(prefix) && metric.ends_with("missing/dup/reordered"))
        .and_then(|row| row.text(column));
    TargetLine {
        target: target.to_owned(),
        met: if smoke { None } else { errors.as_ref().map(|text| text == "0/0/0") },
        measured: errors.unwrap_or_else(|| "not measured".into()),
    }
}

/// Snorky's value in the first row whose metric satisfies `wanted`.
fn snorky_value(report: &Report, wanted: impl Fn(&str) -> bool) -> Option<f64> {
    report.main.find(wanted).and_then(|row| row.value(Kind::Snorky))
}
