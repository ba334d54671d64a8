//! `python`: Snorky started from Python (`--python`, the project's venv) with a trivial
//! `RPCService` command; request round trips on 1 and 32 connections, beside the built-in
//! PubSub `subscribe`/`unsubscribe` on the same server.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::common::cpu_per_delivery;
use super::services::ServiceSizes;
use crate::client::{self, Target};
use crate::procs::{Kind, ServerProcess};
use crate::report::{Cell, Report};
use crate::stats::Latency;

/// One request of a round-trip run: (service, command, params, the data the reply must carry).
type Request = (&'static str, &'static str, Value, Option<Value>);

/// Request round trips on `conns` connections for `duration`: `request(conn, n)` gives the
/// (service, command, params, expected data) of a connection's `n`-th call.
pub(super) async fn round_trips(
    target: &Target,
    conns: usize,
    duration: Duration,
    request: fn(usize, u64) -> Request,
) -> Result<(u64, f64, Option<Latency>), String> {
    let mut sockets = Vec::with_capacity(conns);
    for _ in 0..conns {
        let ws = tokio::time::timeout(client::SETUP_TIMEOUT, client::connect(target, None))
            .await
            .map_err(|_| "connect timed out".to_owned())??;
        sockets.push(ws);
    }
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(conns);
    for (conn, mut ws) in sockets.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while start.elapsed() < duration {
                n += 1;
                let (service, command, params, expected) = request(conn, n);
                let sent = Instant::now();
                let call = tokio::time::timeout(
                    client::SETUP_TIMEOUT,
                    client::call_service(&mut ws, service, command, params, n),
                );
                match call.await {
                    Ok(Ok(data)) => {
                        if expected.is_some_and(|expected| expected != data) {
                            return (latencies, Some(format!("{service}.{command}: unexpected reply {data}")));
                        }
                        latencies.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
                    }
                    Ok(Err(err)) => return (latencies, Some(err)),
                    Err(_) => return (latencies, Some(format!("{service}.{command} timed out"))),
                }
            }
            (latencies, None)
        }));
    }
    let mut all = Vec::new();
    let mut errors = Vec::new();
    for task in tasks {
        match task.await {
            Ok((mut latencies, error)) => {
                all.append(&mut latencies);
                errors.extend(error);
            }
            Err(err) => errors.push(err.to_string()),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    if let Some(error) = errors.first() {
        return Err(format!("{} failed calls: {error}", errors.len()));
    }
    let count = all.len() as u64;
    Ok((count, count as f64 / elapsed, Latency::of(&mut all)))
}

pub(super) fn echo_request(conn: usize, n: u64) -> Request {
    let value = json!(format!("{conn}-{n}"));
    ("echo", "echo", json!({"value": value}), Some(value))
}

pub(super) fn pubsub_request(conn: usize, n: u64) -> Request {
    let command = if n % 2 == 1 { "subscribe" } else { "unsubscribe" };
    ("pubsub", command, json!({"channel": format!("rpc-{conn}")}), None)
}

/// `python`: the Python-service round trip, beside the built-in PubSub on the same server.
pub(super) async fn python(sizes: &ServiceSizes, report: &mut Report) -> Result<(), String> {
    if !sizes.python.exists() {
        let note = format!(
            "python: skipped: {} does not exist (the project's venv with the built extension)",
            sizes.python.display()
        );
        println!("{note}");
        report.notes.push(note);
        return Ok(());
    }
    let server = ServerProcess::start_python(&sizes.python, include_str!("../python_echo_server.py")).await?;
    let outcome = python_run(sizes, &server, report).await;
    server.stop().await;
    outcome
}

pub(super) async fn python_run(
    sizes: &ServiceSizes,
    server: &ServerProcess,
    report: &mut Report,
) -> Result<(), String> {
    let duration = Duration::from_secs_f64(sizes.rpc_secs);
    let kind = Kind::Snorky;
    for conns in [1, sizes.rpc_conns] {
        let label = if conns == 1 { "1 connection".to_owned() } else { format!("{conns} connections") };
        let cpu_before = server.cpu_time();
        let (py_count, py_rate, py_latency) = round_trips(&server.target, conns, duration, echo_request).await?;
        let py_cpu = cpu_per_delivery(cpu_before, server.cpu_time(), py_count);
        let cpu_before = server.cpu_time();
        let (rs_count, rs_rate, rs_latency) = round_trips(&server.target, conns, duration, pubsub_request).await?;
        let rs_cpu = cpu_per_delivery(cpu_before, server.cpu_time(), rs_count);
        let py = format!("Python RPCService echo, {label}");
        let rs = format!("built-in PubSub subscribe/unsubscribe (same server), {label}");
        report.row_mut(&format!("{py}: requests/s"), false).set(kind, Cell::number(py_rate, 0));
        if let Some(latency) = py_latency {
            report.row_mut(&format!("{py}: p50 (ms)"), false).set(kind, Cell::number(latency.p50_ms, 3));
            report.row_mut(&format!("{py}: p99 (ms)"), false).set(kind, Cell::number(latency.p99_ms, 3));
        }
        if let Some(cpu) = py_cpu {
            report.row_mut(&format!("{py}: server CPU µs/request"), false).set(kind, Cell::number(cpu, 1));
        }
        report.row_mut(&format!("{rs}: requests/s"), false).set(kind, Cell::number(rs_rate, 0));
        if let Some(latency) = rs_latency {
            report.row_mut(&format!("{rs}: p50 (ms)"), false).set(kind, Cell::number(latency.p50_ms, 3));
            report.row_mut(&format!("{rs}: p99 (ms)"), false).set(kind, Cell::number(latency.p99_ms, 3));
        }
        if let Some(cpu) = rs_cpu {
            report.row_mut(&format!("{rs}: server CPU µs/request"), false).set(kind, Cell::number(cpu, 1));
        }
        report
            .row_mut(&format!("Python ÷ built-in requests/s, {label}"), false)
            .set(kind, Cell::number(py_rate / rs_rate.max(1e-9), 2));
        eprintln!(
            "    {label}: Python echo {py_rate:.0}/s (p99 {:.3} ms), built-in PubSub {rs_rate:.0}/s (p99 {:.3} ms)",
            py_latency.map_or(0.0, |l| l.p99_ms),
            rs_latency.map_or(0.0, |l| l.p99_ms)
        );
    }
    Ok(())
}
