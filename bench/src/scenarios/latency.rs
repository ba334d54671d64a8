//! Latency under a steady publish rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::common::{backend_client, check_clean, drain_idle, CpuMark, DRAIN_MAX, MESSAGE_SIZE, OPEN_MAX};
use super::driver::Ctx;
use crate::client::{self, Subscribers};
use crate::procs::ServerProcess;
use crate::report::{format_number, Cell, Report};
use crate::stats::Deliveries;

/// Scenario 5: latency under a steady rate: one channel, `latency_subs` subscribers, one
/// publish every 1/`latency_rate` s for `latency_secs`.
pub(super) async fn latency(ctx: &Ctx, server: &ServerProcess, report: &mut Report) -> Result<(), String> {
    let sizes = &ctx.sizes;
    let subs = sizes.latency_subs;
    // `as` saturates; rate × seconds is a small non-negative count.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let total = (sizes.latency_rate as f64 * sizes.latency_secs).ceil() as u64;
    let channels = Arc::new(vec![json!("latency")]);
    let subscribers =
        Subscribers::open(&server.target, &channels, &vec![0; subs], ctx.clock, ctx.open_options(total, true));
    let (ready, failed) = subscribers.wait_ready(OPEN_MAX).await;
    if ready == 0 {
        subscribers.finish().await;
        return Err(format!("no subscriber connected ({failed} failed)"));
    }
    let backend = backend_client(&server.target)?;
    let interval = Duration::from_secs_f64(1.0 / sizes.latency_rate.max(1) as f64);
    let cpu_before = CpuMark::take(server);
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
    subscribers.wait_drained(published * ready as u64, drain_idle(server.kind), Instant::now() + DRAIN_MAX).await;
    let cpu_after = CpuMark::take(server);
    let results = subscribers.finish().await;
    let mut summary = Deliveries::summarize(results, &[published], errors, start);
    summary.budget_hit = budget_hit;
    cpu_before.charge(&cpu_after, &mut summary);
    let achieved = published as f64 / publishing.max(1e-9);
    let prefix = format!("steady {} subs, {} msg/s", format_number(subs as f64, 0), sizes.latency_rate);
    if let Some(latency) = summary.latency {
        report.row_mut(&format!("{prefix}: latency p50 (ms)"), true).set(server.kind, Cell::number(latency.p50_ms, 2));
        report.row_mut(&format!("{prefix}: latency p99 (ms)"), true).set(server.kind, Cell::number(latency.p99_ms, 2));
        report.row_mut(&format!("{prefix}: latency max (ms)"), true).set(server.kind, Cell::number(latency.max_ms, 2));
    }
    report.row_mut(&format!("{prefix}: publishes/s achieved"), true).set(server.kind, Cell::number(achieved, 1));
    report
        .row_mut(&format!("{prefix}: missing/dup/reordered"), false)
        .set(server.kind, Cell::text(summary.errors_text()));
    if let Some(cpu) = summary.server_cpu_us_per_delivery {
        report.row_mut(&format!("{prefix}: server CPU µs/delivery"), true).set(server.kind, Cell::number(cpu, 2));
    }
    if let Some(cpu) = summary.client_cpu_us_per_delivery {
        report
            .row_mut(&format!("{prefix}: load generator CPU µs/delivery"), true)
            .set(server.kind, Cell::number(cpu, 2));
    }
    if !summary.close_reasons.is_empty() {
        report.notes.push(format!("{prefix} / {}: {}", server.kind.name(), summary.close_reasons.join("; ")));
    }
    eprintln!(
        "    {} deliveries at {achieved:.1} publishes/s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, errors {}",
        summary.received,
        summary.latency.map_or(0.0, |l| l.p50_ms),
        summary.latency.map_or(0.0, |l| l.p99_ms),
        summary.latency.map_or(0.0, |l| l.max_ms),
        summary.errors_text()
    );
    check_clean(server.kind, &summary)
}
