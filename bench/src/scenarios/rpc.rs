//! RPC and backend round trips: subscribe/unsubscribe ping-pong over WebSocket, then backend
//! `publish` calls to a channel nobody listens to.

use std::time::{Duration, Instant};

use serde_json::json;

use super::common::{backend_client, cpu_per_delivery, MESSAGE_SIZE};
use super::driver::Ctx;
use crate::client;
use crate::procs::{Kind, ServerProcess};
use crate::report::{Cell, Report};
use crate::sys;

/// Scenario 6: RPC round trips per second: subscribe/unsubscribe ping-pong, each connection
/// sequential, on one connection and on `rpc_conns` connections.
pub(super) async fn rpc(ctx: &Ctx, server: &ServerProcess, report: &mut Report) -> Result<(), String> {
    let sizes = &ctx.sizes;
    for conns in [1, sizes.rpc_conns] {
        let duration = Duration::from_secs_f64(sizes.rpc_secs);
        let mut sockets = Vec::with_capacity(conns);
        for i in 0..conns {
            let ws = tokio::time::timeout(
                client::SETUP_TIMEOUT,
                client::connect(&server.target, client::source_ip(i, sizes.source_ips)),
            )
            .await
            .map_err(|_| "connect timed out".to_owned())??;
            sockets.push(ws);
        }
        let cpu_before = server.cpu_time();
        let switches_before = sys::context_switches(server.pid());
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(conns);
        for (i, mut ws) in sockets.into_iter().enumerate() {
            tasks.push(tokio::spawn(async move {
                let channel = json!(format!("rpc-{i}"));
                let (mut trips, mut call_id) = (0u64, 0u64);
                while start.elapsed() < duration {
                    for command in ["subscribe", "unsubscribe"] {
                        call_id += 1;
                        let call = tokio::time::timeout(
                            client::SETUP_TIMEOUT,
                            client::call(&mut ws, command, &channel, call_id),
                        );
                        match call.await {
                            Ok(Ok(())) => trips += 1,
                            Ok(Err(err)) => return (trips, Some(err)),
                            Err(_) => return (trips, Some("timed out".into())),
                        }
                    }
                }
                (trips, None)
            }));
        }
        let mut trips = 0u64;
        let mut errors = Vec::new();
        for task in tasks {
            match task.await {
                Ok((count, error)) => {
                    trips += count;
                    errors.extend(error);
                }
                Err(err) => errors.push(err.to_string()),
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        let cpu = cpu_per_delivery(cpu_before, server.cpu_time(), trips);
        let rate = trips as f64 / elapsed;
        let label = if conns == 1 { "1 connection".to_owned() } else { format!("{conns} connections") };
        report.row_mut(&format!("RPC: round trips/s, {label}"), true).set(server.kind, Cell::number(rate, 0));
        if let Some(cpu) = cpu {
            report
                .row_mut(&format!("RPC: server CPU µs/round trip, {label}"), true)
                .set(server.kind, Cell::number(cpu, 2));
        }
        if let (Some(before), Some(after)) = (switches_before, sys::context_switches(server.pid())) {
            let per_trip = after.saturating_sub(before) as f64 / trips.max(1) as f64;
            report
                .row_mut(&format!("RPC: server context switches/round trip, {label}"), true)
                .set(server.kind, Cell::number(per_trip, 2));
        }
        eprintln!("    {label}: {trips} round trips in {elapsed:.2} s = {rate:.0}/s, {} errors", errors.len());
        if !errors.is_empty() {
            report.notes.push(format!("RPC {label} / {}: {} errors ({})", server.kind.name(), errors.len(), errors[0]));
            if server.kind != Kind::Channels {
                return Err(format!("RPC errors: {}", errors[0]));
            }
        }
    }
    backend_calls(ctx, server, report).await
}

/// Backend round trips: `publish` to a channel nobody listens to, through the fast client,
/// one call in flight and `multi_inflight` in flight. Isolates the HTTP path.
pub(super) async fn backend_calls(ctx: &Ctx, server: &ServerProcess, report: &mut Report) -> Result<(), String> {
    let sizes = &ctx.sizes;
    let backend = backend_client(&server.target)?;
    let duration = Duration::from_secs_f64(sizes.rpc_secs);
    for inflight in [1, sizes.multi_inflight] {
        let cpu_before = server.cpu_time();
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(inflight);
        for task in 0..inflight {
            let backend = backend.clone();
            tasks.push(tokio::spawn(async move {
                let channel = json!(format!("nobody-{task}"));
                let (mut calls, mut errors) = (0u64, 0u64);
                while start.elapsed() < duration {
                    let params = client::publish_params(&channel, client::payload(calls, 0, MESSAGE_SIZE));
                    match backend.call("pubsub_backend", "publish", &params).await {
                        Ok(_) => calls += 1,
                        Err(_) => errors += 1,
                    }
                }
                (calls, errors)
            }));
        }
        let (mut calls, mut errors) = (0u64, 0u64);
        for task in tasks {
            let (c, e) = task.await.unwrap_or((0, 1));
            calls += c;
            errors += e;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let cpu = cpu_per_delivery(cpu_before, server.cpu_time(), calls);
        let rate = calls as f64 / elapsed;
        report
            .row_mut(&format!("backend publish calls/s (no subscribers), {inflight} in flight"), true)
            .set(server.kind, Cell::number(rate, 0));
        if let Some(cpu) = cpu {
            report
                .row_mut(&format!("backend: server CPU µs/call, {inflight} in flight"), true)
                .set(server.kind, Cell::number(cpu, 2));
        }
        eprintln!("    backend, {inflight} in flight: {calls} calls in {elapsed:.2} s = {rate:.0}/s, {errors} errors");
        if errors > 0 {
            report.notes.push(format!("backend calls / {}: {errors} errors", server.kind.name()));
            if server.kind != Kind::Channels {
                return Err(format!("{errors} backend call errors"));
            }
        }
    }
    Ok(())
}
