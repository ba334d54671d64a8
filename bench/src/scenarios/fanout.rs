//! Fan-out: S subscribers on one channel, sequential publishes through the backend.

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use super::common::{
    backend_client, check_clean, drain_idle, record_deliveries, size_note, wait_window, Load, DRAIN_MAX, MESSAGE_SIZE,
    OPEN_MAX,
};
use super::driver::{Ctx, Sizes};
use crate::client::{self, Join, Subscribers};
use crate::procs::{Kind, ServerProcess};
use crate::report::{format_number, Report};
use crate::stats::Deliveries;

/// Scenario 1: S subscribers on one channel, sequential publishes through the backend, each
/// publisher at most `window` messages ahead of the slowest subscriber.
pub(super) async fn fanout(ctx: &Ctx, server: &ServerProcess, report: &mut Report) -> Result<(), String> {
    let sizes = &ctx.sizes;
    let subs = if server.kind == Kind::Channels { sizes.channels_fanout_subs } else { sizes.fanout_subs };
    let summary = fanout_load(ctx, &Load::on(server), subs, &mut report.notes).await?;
    let note = size_note(server.kind, subs, sizes.fanout_subs, "subs");
    record_deliveries(report, server.kind, &prefix(sizes), &summary, &note);
    check_clean(server.kind, &summary)
}

/// The metric prefix of the fan-out rows.
pub(super) fn prefix(sizes: &Sizes) -> String {
    format!(
        "fan-out {} subs × {} msgs",
        format_number(sizes.fanout_subs as f64, 0),
        format_number(sizes.fanout_msgs as f64, 0)
    )
}

/// The fan-out load: `subs` subscribers on one channel spread over `load`'s servers,
/// `fanout_msgs` sequential publishes through `load`'s backend, each at most `window` messages
/// ahead of the slowest subscriber (or until the time budget), then the drain.
pub(super) async fn fanout_load(
    ctx: &Ctx,
    load: &Load<'_>,
    subs: usize,
    notes: &mut Vec<String>,
) -> Result<Deliveries, String> {
    let sizes = &ctx.sizes;
    let channels = Arc::new(vec![json!("bench")]);
    let subscribers = Subscribers::open_spread(
        load.subscribe,
        &channels,
        &vec![0; subs],
        ctx.clock,
        ctx.open_options(sizes.fanout_msgs, true),
        &Join::PubSub,
    );
    let (ready, failed) = subscribers.wait_ready(OPEN_MAX).await;
    if ready == 0 {
        subscribers.finish().await;
        return Err(format!("no subscriber connected ({failed} failed)"));
    }
    let backend = backend_client(load.publish)?;
    let everyone: Vec<usize> = (0..subs).collect();
    let cpu_before = load.cpu_mark().await;
    let start = Instant::now();
    let (mut published, mut errors, mut budget_hit) = (0u64, 0u64, false);
    for seq in 0..sizes.fanout_msgs {
        if start.elapsed() > sizes.budget {
            budget_hit = true;
            break;
        }
        if seq >= sizes.window && !wait_window(&subscribers, &everyone, seq + 1 - sizes.window).await {
            notes.push(format!("fan-out / {}: subscribers stopped making progress", load.kind.name()));
            break;
        }
        let params = client::publish_params(&channels[0], client::payload(seq, ctx.clock.micros(), MESSAGE_SIZE));
        match backend.call("pubsub_backend", "publish", &params).await {
            Ok(_) => published += 1,
            Err(_) => errors += 1,
        }
    }
    subscribers.wait_drained(published * ready as u64, drain_idle(load.kind), Instant::now() + DRAIN_MAX).await;
    let cpu_after = load.cpu_mark().await;
    let results = subscribers.finish().await;
    let mut summary = Deliveries::summarize(results, &[published], errors, start);
    summary.budget_hit = budget_hit;
    cpu_before.charge(&cpu_after, &mut summary);
    Ok(summary)
}
