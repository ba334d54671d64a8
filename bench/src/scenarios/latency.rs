//! Latency under a steady publish rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::common::{backend_client, check_clean, drain_idle, record_cpu, Load, DRAIN_MAX, MESSAGE_SIZE, OPEN_MAX};
use super::driver::Ctx;
use crate::client::{self, Join, Subscribers};
use crate::procs::ServerProcess;
use crate::report::{format_number, Cell, Column, Report};
use crate::stats::Deliveries;

/// Scenario 5: latency under a steady rate: one channel, `latency_subs` subscribers, one
/// publish every 1/`latency_rate` s for `latency_secs`.
pub(super) async fn latency(ctx: &Ctx, server: &ServerProcess, report: &mut Report) -> Result<(), String> {
    let sizes = &ctx.sizes;
    let (summary, achieved) = steady_load(ctx, &Load::on(server), sizes.latency_rate).await?;
    let prefix = format!("steady {} subs, {} msg/s", format_number(sizes.latency_subs as f64, 0), sizes.latency_rate);
    record_steady(report, server.kind, &prefix, &summary, achieved);
    check_clean(server.kind, &summary)
}

/// The steady load: `latency_subs` subscribers on one channel spread over `load`'s servers, one
/// publish through `load`'s backend every 1/`rate` s for `latency_secs` (or until the time
/// budget), then the drain. Returns the deliveries and the publish rate achieved.
pub(super) async fn steady_load(ctx: &Ctx, load: &Load<'_>, rate: u64) -> Result<(Deliveries, f64), String> {
    let sizes = &ctx.sizes;
    let subs = sizes.latency_subs;
    // `as` saturates; rate × seconds is a small non-negative count.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let total = (rate as f64 * sizes.latency_secs).ceil() as u64;
    let channels = Arc::new(vec![json!("latency")]);
    let subscribers = Subscribers::open_spread(
        load.subscribe,
        &channels,
        &vec![0; subs],
        ctx.clock,
        ctx.open_options(total, true),
        &Join::PubSub,
    );
    let (ready, failed) = subscribers.wait_ready(OPEN_MAX).await;
    if ready == 0 {
        subscribers.finish().await;
        return Err(format!("no subscriber connected ({failed} failed)"));
    }
    let backend = backend_client(load.publish)?;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let cpu_before = load.cpu_mark().await;
    let start = Instant::now();
    let (mut published, mut errors, mut budget_hit) = (0u64, 0u64, false);
    for seq in 0..total {
        let due = start + interval.mul_f64(seq as f64);
        tokio::time::sleep_until(due.into()).await;
        if start.elapsed() > sizes.budget {
            budget_hit = true;
            break;
        }
        let params = client::publish_params(&channels[0], client::payload(seq, ctx.clock.micros(), MESSAGE_SIZE));
        match backend.call("pubsub_backend", "publish", &params).await {
            Ok(_) => published += 1,
            Err(_) => errors += 1,
        }
    }
    let publishing = start.elapsed().as_secs_f64();
    subscribers.wait_drained(published * ready as u64, drain_idle(load.kind), Instant::now() + DRAIN_MAX).await;
    let cpu_after = load.cpu_mark().await;
    let results = subscribers.finish().await;
    let mut summary = Deliveries::summarize(results, &[published], errors, start);
    summary.budget_hit = budget_hit;
    cpu_before.charge(&cpu_after, &mut summary);
    Ok((summary, published as f64 / publishing.max(1e-9)))
}

/// Records the rows of a steady-rate run, in the table of `column`.
pub(super) fn record_steady<C: Column>(
    report: &mut Report,
    column: C,
    prefix: &str,
    summary: &Deliveries,
    achieved: f64,
) {
    let table = C::table_mut(report);
    if let Some(latency) = summary.latency {
        table.row_mut(&format!("{prefix}: latency p50 (ms)"), true).set(column, Cell::number(latency.p50_ms, 2));
        table.row_mut(&format!("{prefix}: latency p99 (ms)"), true).set(column, Cell::number(latency.p99_ms, 2));
        table.row_mut(&format!("{prefix}: latency max (ms)"), true).set(column, Cell::number(latency.max_ms, 2));
    }
    table.row_mut(&format!("{prefix}: publishes/s achieved"), true).set(column, Cell::number(achieved, 1));
    table.row_mut(&format!("{prefix}: missing/dup/reordered"), false).set(column, Cell::text(summary.errors_text()));
    record_cpu(table, column, prefix, summary);
    if !summary.close_reasons.is_empty() {
        report.notes.push(format!("{prefix} / {}: {}", column.header(), summary.close_reasons.join("; ")));
    }
    eprintln!(
        "    {} deliveries at {achieved:.1} publishes/s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, errors {}",
        summary.received,
        summary.latency.map_or(0.0, |l| l.p50_ms),
        summary.latency.map_or(0.0, |l| l.p99_ms),
        summary.latency.map_or(0.0, |l| l.max_ms),
        summary.errors_text()
    );
}
