//! Set-up rate: connections per second for the handshake and one subscribe round trip.

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use tokio::sync::Semaphore;

use super::common::{cpu_per_delivery, size_note};
use super::driver::Ctx;
use crate::client;
use crate::procs::{Kind, ServerProcess};
use crate::report::{Cell, Report};
use crate::stats::Latency;

/// Scenario 3: connections/s for handshake + subscribe round trip, `concurrency` at a time.
pub(super) async fn setup(ctx: &Ctx, server: &ServerProcess, report: &mut Report) -> Result<(), String> {
    let sizes = &ctx.sizes;
    let conns = if server.kind == Kind::Channels { sizes.channels_setup_conns } else { sizes.setup_conns };
    let gate = Arc::new(Semaphore::new(sizes.concurrency));
    let cpu_before = server.cpu_time();
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(conns);
    for i in 0..conns {
        let gate = Arc::clone(&gate);
        let target = server.target.clone();
        let source = client::source_ip(i, sizes.source_ips);
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await;
            let began = Instant::now();
            let ws = client::connect_and_subscribe(&target, source, &json!(format!("setup-{i}"))).await;
            (ws, began.elapsed(), Instant::now())
        }));
    }
    let mut open = Vec::with_capacity(conns);
    let mut times = Vec::with_capacity(conns);
    let mut failed = 0usize;
    let mut last = start;
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok((Ok(ws), took, done)) => {
                open.push(ws);
                times.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
                last = last.max(done);
            }
            Ok((Err(err), _, _)) => {
                failed += 1;
                first_error.get_or_insert(err);
            }
            Err(err) => {
                failed += 1;
                first_error.get_or_insert(err.to_string());
            }
        }
    }
    let elapsed = last.duration_since(start).as_secs_f64();
    let cpu = cpu_per_delivery(cpu_before, server.cpu_time(), times.len() as u64);
    drop(open);
    let rate = if elapsed > 0.0 { times.len() as f64 / elapsed } else { 0.0 };
    let latency = Latency::of(&mut times).unwrap_or_default();
    let note = size_note(server.kind, conns, sizes.setup_conns, "conns");
    report
        .row_mut(&format!("set-up: connections/s ({} concurrent)", sizes.concurrency), true)
        .set(server.kind, Cell::number(rate, 0).note(&note));
    report.row_mut("set-up: handshake+subscribe p99 (ms)", true).set(server.kind, Cell::number(latency.p99_ms, 2));
    if let Some(cpu) = cpu {
        report.row_mut("set-up: server CPU µs/connection", true).set(server.kind, Cell::number(cpu, 1));
    }
    eprintln!(
        "    {} connections in {elapsed:.2} s = {rate:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {failed} failed",
        times.len(),
        latency.p50_ms,
        latency.p99_ms
    );
    if failed > 0 {
        report.notes.push(format!(
            "set-up / {}: {failed} connections failed ({})",
            server.kind.name(),
            first_error.unwrap_or_default()
        ));
        if server.kind != Kind::Channels {
            return Err(format!("{failed} connections failed"));
        }
    }
    Ok(())
}
