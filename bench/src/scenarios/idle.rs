//! Idle memory: server memory per idle subscribed connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::common::{size_note, OPEN_MAX};
use super::driver::Ctx;
use crate::client::Subscribers;
use crate::procs::{Kind, ServerProcess};
use crate::report::{format_number, Cell, Report};

/// Scenario 2: server memory per idle subscribed connection.
pub(super) async fn idle(ctx: &Ctx, server: &ServerProcess, report: &mut Report) -> Result<(), String> {
    let sizes = &ctx.sizes;
    let conns = if server.kind == Kind::Channels { sizes.channels_idle_conns } else { sizes.idle_conns };
    // One connection first, so one-time costs (first accept, lazily built state) are in the
    // baseline rather than spread over the connections.
    let warm = Arc::new(vec![json!("idle-warm-up")]);
    let warm_up = Subscribers::open(&server.target, &warm, &[0], ctx.clock, ctx.open_options(1, false));
    warm_up.wait_ready(Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.rss_kib().ok_or("cannot read the server's VmRSS")?;
    let heap_before = server.alloc_snapshot().await;
    let channels = Arc::new((0..conns).map(|i| json!(format!("idle-{i}"))).collect::<Vec<Value>>());
    let assignment: Vec<usize> = (0..conns).collect();
    let opened = Instant::now();
    let subscribers = Subscribers::open(&server.target, &channels, &assignment, ctx.clock, ctx.open_options(1, false));
    let (ready, failed) = subscribers.wait_ready(OPEN_MAX).await;
    let open_time = opened.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.rss_kib().ok_or("cannot read the server's VmRSS")?;
    let hwm = crate::sys::proc_status_kib(server.pid(), "VmHWM");
    let heap_after = server.alloc_snapshot().await;
    let nodelay = crate::sys::nodelay_sockets(server.pid(), 1000);
    let results = subscribers.finish().await;
    let closed = results.iter().filter(|r| r.closed.is_some()).count();
    warm_up.finish().await;
    if ready == 0 {
        return Err(format!("no connection subscribed ({failed} failed)"));
    }
    let per_conn = (after.saturating_sub(before)) as f64 / ready as f64;
    let note = size_note(server.kind, conns, sizes.idle_conns, "conns");
    let metric = format!("idle: server RSS KiB/conn at {} conns", format_number(sizes.idle_conns as f64, 0));
    report.row_mut(&metric, true).set(server.kind, Cell::number(per_conn, 2).note(&note));
    report
        .row_mut("idle: server RSS MiB (before → with conns)", false)
        .set(server.kind, Cell::text(format!("{:.1} → {:.1}", before as f64 / 1024.0, after as f64 / 1024.0)));
    eprintln!(
        "    {ready} connections ({failed} failed, {closed} closed) opened in {:.1} s: RSS {before} → {after} KiB (peak {}) = {per_conn:.2} KiB/conn",
        open_time.as_secs_f64(),
        hwm.unwrap_or(0)
    );
    if let Some((with, total)) = nodelay {
        report
            .row_mut("server's accepted sockets with TCP_NODELAY", false)
            .set(server.kind, Cell::text(format!("{with} of {total}")));
    }
    if let (Some((tasks_before, before)), Some((tasks_after, after))) = (heap_before, heap_after) {
        let (bytes, count, top) = crate::alloc::per_connection(&before, &after, ready);
        let tasks = (tasks_after - tasks_before) as f64 / ready as f64;
        report.row_mut("idle: live heap B/conn", true).set(server.kind, Cell::number(bytes, 0));
        report
            .row_mut("idle: heap allocations/conn, tasks/conn", false)
            .set(server.kind, Cell::text(format!("{count:.1}, {tasks:.2}")));
        report.notes.push(format!(
            "idle / {}: live heap per connection {bytes:.0} B in {count:.1} allocations, {tasks:.2} tasks; largest: {top}",
            server.kind.name()
        ));
        eprintln!("    heap/conn {bytes:.0} B in {count:.1} allocations, {tasks:.2} tasks/conn: {top}");
    }
    if failed > 0 || closed > 0 {
        report.notes.push(format!("idle / {}: {failed} connections failed, {closed} closed", server.kind.name()));
        if server.kind != Kind::Channels {
            return Err(format!("{failed} connections failed, {closed} closed"));
        }
    }
    Ok(())
}
