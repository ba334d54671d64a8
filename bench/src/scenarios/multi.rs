//! Many channels: a few subscribers each, publishes with many backend calls in flight.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use super::common::{
    backend_client, check_clean, drain_idle, record_deliveries, wait_window, Load, DRAIN_MAX, MESSAGE_SIZE, OPEN_MAX,
};
use super::driver::Ctx;
use crate::client::{self, Subscribers};
use crate::procs::ServerProcess;
use crate::report::{format_number, Report};
use crate::stats::Deliveries;

/// Scenario 4: many channels with a few subscribers each, publishes from the fast backend
/// client with many calls in flight (each channel's publishes stay sequential, so per-channel
/// order is checked too).
pub(super) async fn multi(ctx: &Ctx, server: &ServerProcess, report: &mut Report) -> Result<(), String> {
    let sizes = &ctx.sizes;
    let (count, per) = (sizes.multi_channels, sizes.multi_per_channel);
    let channels = Arc::new((0..count).map(|c| json!(format!("ch-{c}"))).collect::<Vec<Value>>());
    let assignment: Vec<usize> = (0..count * per).map(|i| i / per).collect();
    let subscribers = Arc::new(Subscribers::open(
        &server.target,
        &channels,
        &assignment,
        ctx.clock,
        ctx.open_options(sizes.multi_msgs, true),
    ));
    let (ready, failed) = subscribers.wait_ready(OPEN_MAX).await;
    if ready == 0 {
        return Err(format!("no subscriber connected ({failed} failed)"));
    }
    let backend = backend_client(&server.target)?;
    let published: Arc<Vec<AtomicU64>> = Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
    let errors = Arc::new(AtomicU64::new(0));
    let stalled = Arc::new(AtomicU64::new(0));
    let inflight = sizes.multi_inflight.clamp(1, count.max(1));
    let cpu_before = Load::on(server).cpu_mark().await;
    let start = Instant::now();
    let mut publishers = Vec::with_capacity(inflight);
    for task in 0..inflight {
        let (backend, subscribers, channels) = (backend.clone(), Arc::clone(&subscribers), Arc::clone(&channels));
        let (published, errors, stalled) = (Arc::clone(&published), Arc::clone(&errors), Arc::clone(&stalled));
        let (window, rounds, budget, clock) = (sizes.window, sizes.multi_msgs, sizes.budget, ctx.clock);
        publishers.push(tokio::spawn(async move {
            let mine: Vec<usize> = (task..channels.len()).step_by(inflight).collect();
            for seq in 0..rounds {
                for &c in &mine {
                    if start.elapsed() > budget {
                        return true;
                    }
                    if seq >= window && !wait_window(&subscribers, &subscribers.by_channel[c], seq + 1 - window).await {
                        stalled.fetch_add(1, Ordering::Relaxed);
                        return false;
                    }
                    let params =
                        client::publish_params(&channels[c], client::payload(seq, clock.micros(), MESSAGE_SIZE));
                    match backend.call("pubsub_backend", "publish", &params).await {
                        Ok(_) => published[c].fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }
            false
        }));
    }
    let mut budget_hit = false;
    for publisher in publishers {
        budget_hit |= publisher.await.unwrap_or(false);
    }
    let publishing = start.elapsed();
    let published: Vec<u64> = published.iter().map(|p| p.load(Ordering::Relaxed)).collect();
    eprintln!(
        "    published {} messages in {:.2} s ({:.0} calls/s)",
        published.iter().sum::<u64>(),
        publishing.as_secs_f64(),
        published.iter().sum::<u64>() as f64 / publishing.as_secs_f64()
    );
    let expected: u64 = published.iter().map(|p| p * per as u64).sum();
    subscribers.wait_drained(expected, drain_idle(server.kind), Instant::now() + DRAIN_MAX).await;
    let cpu_after = Load::on(server).cpu_mark().await;
    let subscribers = Arc::into_inner(subscribers).ok_or("subscribers still shared")?;
    let results = subscribers.finish().await;
    let mut summary = Deliveries::summarize(results, &published, errors.load(Ordering::Relaxed), start);
    summary.budget_hit = budget_hit;
    cpu_before.charge(&cpu_after, &mut summary);
    if stalled.load(Ordering::Relaxed) > 0 {
        report.notes.push(format!("{count} channels / {}: publishers stalled on a subscriber", server.kind.name()));
    }
    let prefix =
        format!("{} channels × {per} subs, {} in flight", format_number(count as f64, 0), sizes.multi_inflight);
    record_deliveries(report, server.kind, &prefix, &summary, "");
    check_clean(server.kind, &summary)
}
