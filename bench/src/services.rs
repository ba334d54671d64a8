//! The scenarios of issues 3 and 6, against Snorky only (the ceiling has no equivalent of
//! DataSync, Chat or Python services, so their rows carry absolute numbers):
//!
//! - `routing`: the DataSync router in this process (see `routing.rs`).
//! - `datasync`: `serve-snorky --mode datasync`; `conns` connections each authorize a
//!   subscription through the backend (`authorizeSubscription`, `BackendClient`) and acquire it
//!   over WebSocket; deltas go out in batches of 100 through `publishDeltas`. Two runs: a
//!   Simple dealer keyed by `owner` (each delta reaches one connection) and a Broadcast dealer
//!   (each delta reaches every connection).
//! - `chat`: `serve-snorky --mode chat` with a token secret; `conns` members (each connected
//!   with its own connection token) join one room, and one more member sends messages.
//! - `python`: Snorky started from Python (`--python`, the project's venv) with a trivial
//!   `RPCService` command; request round trips on 1 and 32 connections, beside the built-in
//!   PubSub `subscribe`/`unsubscribe` on the same server.
//!
//! Deliveries are checked as in the PubSub scenarios (missing, duplicated, reordered) and timed
//! from the publishing call to their arrival.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::client::{self, Clock, Join, OpenOptions, Subscribers, Target};
use crate::procs::{Kind, ServerProcess};
use crate::report::{format_number, Cell, Report};
use crate::scenarios::{backend_client, cpu_per_delivery, wait_window};
use crate::stats::{Deliveries, Latency};

/// Deltas per `publishDeltas` call (issue 3).
pub const BATCH: u64 = 100;
/// The secret of the Chat server's connection tokens (loopback only).
const TOKEN_SECRET: &str = "snorky-bench-token-secret";
/// Size of the JSON object in every delta and chat message body.
const MESSAGE_SIZE: usize = 100;
const OPEN_MAX: Duration = Duration::from_secs(300);
const DRAIN_IDLE: Duration = Duration::from_secs(10);
const DRAIN_MAX: Duration = Duration::from_secs(120);

/// Sizes and options of these scenarios.
#[derive(Debug, Clone)]
pub struct ServiceSizes {
    pub conns: usize,
    pub per_owner: u64,
    pub broadcast: u64,
    pub chat_msgs: u64,
    pub window: u64,
    pub concurrency: usize,
    pub source_ips: u8,
    pub rpc_secs: f64,
    pub rpc_conns: usize,
    pub python: PathBuf,
    pub routing_subs: usize,
    pub routing_deltas: usize,
}

impl ServiceSizes {
    fn open_options(&self, max_seq: u64) -> OpenOptions {
        OpenOptions { concurrency: self.concurrency, source_ips: self.source_ips, max_seq, record: true }
    }
}

/// The rows of a delivery scenario (Snorky's column only).
fn record(report: &mut Report, prefix: &str, summary: &Deliveries, extra: &[(&str, f64, usize)]) {
    let kind = Kind::Snorky;
    report.row_mut(&format!("{prefix}: deliveries/s"), false).set(kind, Cell::number(summary.per_second, 0));
    for (name, value, decimals) in extra {
        report.row_mut(&format!("{prefix}: {name}"), false).set(kind, Cell::number(*value, *decimals));
    }
    if let Some(latency) = summary.latency {
        report.row_mut(&format!("{prefix}: latency p50 (ms)"), false).set(kind, Cell::number(latency.p50_ms, 2));
        report.row_mut(&format!("{prefix}: latency p99 (ms)"), false).set(kind, Cell::number(latency.p99_ms, 2));
    }
    report.row_mut(&format!("{prefix}: missing/dup/reordered"), false).set(kind, Cell::text(summary.errors_text()));
    if let Some(cpu) = summary.server_cpu_us_per_delivery {
        report.row_mut(&format!("{prefix}: server CPU µs/delivery"), false).set(kind, Cell::number(cpu, 2));
    }
    if !summary.close_reasons.is_empty() {
        report.notes.push(format!("{prefix}: {}", summary.close_reasons.join("; ")));
    }
    eprintln!(
        "    {} deliveries in {:.2} s = {}/s, p50 {:.2} ms, p99 {:.2} ms, errors {}",
        summary.received,
        summary.elapsed.as_secs_f64(),
        format_number(summary.per_second, 0),
        summary.latency.map_or(0.0, |l| l.p50_ms),
        summary.latency.map_or(0.0, |l| l.p99_ms),
        summary.errors_text()
    );
}

fn clean(summary: &Deliveries) -> Result<(), String> {
    if summary.clean() {
        Ok(())
    } else {
        Err(format!("deliveries not clean: {}", summary.errors_text()))
    }
}

/// `routing`: the router micro-benchmark, in this process.
pub fn routing(sizes: &ServiceSizes, report: &mut Report) -> Result<(), String> {
    let measured = crate::routing::measure(sizes.routing_subs, sizes.routing_deltas)?;
    for m in &measured {
        crate::routing::print(m);
    }
    crate::routing::record(report, &measured);
    Ok(())
}

/// One DataSync delta: an inserted `model` object carrying the benchmark message.
fn delta(model: &str, owner: Option<u64>, seq: u64, ts: u64) -> Value {
    let mut data = client::payload(seq, ts, MESSAGE_SIZE);
    if let (Some(owner), Value::Object(data)) = (owner, &mut data) {
        data.insert("owner".into(), owner.into());
    }
    json!({"type": "insert", "model": model, "data": data})
}

/// `datasync`: both runs (Simple dealer, then Broadcast dealer), each on a fresh server.
pub async fn datasync(sizes: &ServiceSizes, clock: Clock, report: &mut Report) -> Result<(), String> {
    let mut failures = Vec::new();
    for broadcast in [false, true] {
        let server = ServerProcess::start_snorky_with(&["--mode", "datasync"]).await?;
        let outcome = datasync_run(sizes, clock, &server, broadcast, report).await;
        server.stop().await;
        if let Err(err) = outcome {
            failures.push(err);
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

async fn datasync_run(
    sizes: &ServiceSizes,
    clock: Clock,
    server: &ServerProcess,
    broadcast: bool,
    report: &mut Report,
) -> Result<(), String> {
    let conns = sizes.conns.max(1);
    let backend = backend_client(&server.target)?;
    // Authorize every subscription through the backend: one item each.
    let mut tokens = Vec::with_capacity(conns);
    for owner in 0..conns {
        let item = if broadcast {
            json!({"dealer": "all_notes", "query": null})
        } else {
            json!({"dealer": "tasks_by_owner", "query": owner})
        };
        let mut params = Map::new();
        params.insert("items".into(), json!([item]));
        let token = backend
            .call("datasync_backend", "authorizeSubscription", &params)
            .await
            .map_err(|err| format!("authorizeSubscription: {err}"))?;
        tokens.push(token.as_str().ok_or("authorizeSubscription returned no token")?.to_owned());
    }
    // Simple: subscriber i is "channel" i (its owner); Broadcast: everyone on channel 0.
    let (channels, assignment): (Vec<Value>, Vec<usize>) = if broadcast {
        (vec![json!("all_notes")], vec![0; conns])
    } else {
        ((0..conns).map(|owner| json!(owner)).collect(), (0..conns).collect())
    };
    let channels = Arc::new(channels);
    let total = if broadcast { sizes.broadcast } else { sizes.per_owner * conns as u64 };
    let max_seq = if broadcast { sizes.broadcast } else { sizes.per_owner };
    let subscribers = Subscribers::open_with(
        &server.target,
        &channels,
        &assignment,
        clock,
        sizes.open_options(max_seq),
        &Join::DataSync(Arc::new(tokens)),
    );
    let (ready, failed) = subscribers.wait_ready(OPEN_MAX).await;
    if failed > 0 || ready == 0 {
        let results = subscribers.finish().await;
        let reason = results.iter().find_map(|r| r.setup_error.clone()).unwrap_or_default();
        return Err(format!("{failed} of {conns} subscriptions not acquired: {reason}"));
    }
    let everyone: Vec<usize> = (0..conns).collect();
    let mut published = vec![0u64; channels.len()];
    let (mut errors, mut calls) = (0u64, 0u64);
    let cpu_before = server.cpu_time();
    let start = Instant::now();
    let mut next = 0u64;
    while next < total {
        let end = (next + BATCH).min(total);
        // The highest per-subscriber sequence number in this batch; stay at most `window`
        // (Simple) or one batch (Broadcast) ahead of the slowest subscriber.
        let (top, window) =
            if broadcast { (end - 1, BATCH.max(sizes.window)) } else { ((end - 1) / conns as u64, sizes.window) };
        if top + 1 > window && !wait_window(&subscribers, &everyone, top + 1 - window).await {
            report.notes.push("DataSync: subscribers stopped making progress".into());
            break;
        }
        let ts = clock.micros();
        let batch: Vec<Value> = (next..end)
            .map(|j| {
                if broadcast {
                    delta("Note", None, j, ts)
                } else {
                    delta("Task", Some(j % conns as u64), j / conns as u64, ts)
                }
            })
            .collect();
        let mut params = Map::new();
        params.insert("deltas".into(), Value::Array(batch));
        calls += 1;
        match backend.call("datasync_backend", "publishDeltas", &params).await {
            Ok(_) => {
                for j in next..end {
                    published[if broadcast { 0 } else { (j % conns as u64) as usize }] += 1;
                }
            }
            Err(err) => {
                errors += end - next;
                if errors == end - next {
                    report.notes.push(format!("DataSync publishDeltas failed: {err}"));
                }
            }
        }
        next = end;
    }
    let publishing = start.elapsed().as_secs_f64();
    let expected: u64 = if broadcast { published[0] * conns as u64 } else { published.iter().sum() };
    subscribers.wait_drained(expected, DRAIN_IDLE, Instant::now() + DRAIN_MAX).await;
    let cpu_after = server.cpu_time();
    let results = subscribers.finish().await;
    let mut summary = Deliveries::summarize(results, &published, errors, start);
    summary.server_cpu_us_per_delivery = cpu_per_delivery(cpu_before, cpu_after, summary.received);
    let deltas_sent: u64 = published.iter().sum();
    let prefix = if broadcast {
        format!(
            "DataSync {} subs, Broadcast dealer, {} deltas in batches of {BATCH}",
            format_number(conns as f64, 0),
            format_number(total as f64, 0)
        )
    } else {
        format!(
            "DataSync {} subs, Simple dealer (by owner), {} deltas in batches of {BATCH}",
            format_number(conns as f64, 0),
            format_number(total as f64, 0)
        )
    };
    let extra = [
        ("publishDeltas calls/s", calls as f64 / publishing.max(1e-9), 0),
        ("deltas published/s", deltas_sent as f64 / publishing.max(1e-9), 0),
    ];
    record(report, &prefix, &summary, &extra);
    clean(&summary)
}

/// `chat`: one room, `conns` members, one more member sends `chat_msgs` messages (each `send`
/// awaited, at most `window` messages ahead of the slowest member).
pub async fn chat(sizes: &ServiceSizes, clock: Clock, report: &mut Report) -> Result<(), String> {
    let server = ServerProcess::start_snorky_with(&["--mode", "chat", "--token-secret", TOKEN_SECRET]).await?;
    let outcome = chat_run(sizes, clock, &server, report).await;
    server.stop().await;
    outcome
}

fn connection_token(identity: &str) -> String {
    snorky::tokens::issue(identity, TOKEN_SECRET.as_bytes(), Duration::from_secs(3600), None)
}

async fn chat_run(
    sizes: &ServiceSizes,
    clock: Clock,
    server: &ServerProcess,
    report: &mut Report,
) -> Result<(), String> {
    let members = sizes.conns.max(1);
    let msgs = sizes.chat_msgs;
    let room = json!("room");
    let channels = Arc::new(vec![room.clone()]);
    let tokens: Vec<String> = (0..members).map(|i| connection_token(&format!("member-{i}"))).collect();
    let subscribers = Subscribers::open_with(
        &server.target,
        &channels,
        &vec![0; members],
        clock,
        sizes.open_options(msgs),
        &Join::Chat(Arc::new(tokens)),
    );
    let (ready, failed) = subscribers.wait_ready(OPEN_MAX).await;
    if failed > 0 || ready == 0 {
        let results = subscribers.finish().await;
        let reason = results.iter().find_map(|r| r.setup_error.clone()).unwrap_or_default();
        return Err(format!("{failed} of {members} members did not join: {reason}"));
    }
    let url = format!("{}?token={}", server.target.ws_url, connection_token("sender"));
    let mut sender = client::connect_url(&server.target, None, &url).await?;
    client::call_service(&mut sender, "chat", "join", json!({"channel": room}), 1).await?;
    let everyone: Vec<usize> = (0..members).collect();
    let cpu_before = server.cpu_time();
    let start = Instant::now();
    let (mut sent, mut errors) = (0u64, 0u64);
    for seq in 0..msgs {
        if seq >= sizes.window && !wait_window(&subscribers, &everyone, seq + 1 - sizes.window).await {
            report.notes.push("chat: members stopped making progress".into());
            break;
        }
        let params = json!({"channel": room, "body": client::payload(seq, clock.micros(), MESSAGE_SIZE)});
        match client::call_service(&mut sender, "chat", "send", params, seq + 2).await {
            Ok(_) => sent += 1,
            Err(err) => {
                if errors == 0 {
                    report.notes.push(format!("chat send failed: {err}"));
                }
                errors += 1;
            }
        }
    }
    let sending = start.elapsed().as_secs_f64();
    subscribers.wait_drained(sent * members as u64, DRAIN_IDLE, Instant::now() + DRAIN_MAX).await;
    let cpu_after = server.cpu_time();
    let results = subscribers.finish().await;
    drop(sender);
    let mut summary = Deliveries::summarize(results, &[sent], errors, start);
    summary.server_cpu_us_per_delivery = cpu_per_delivery(cpu_before, cpu_after, summary.received);
    let prefix = format!(
        "chat 1 room × {} members, {} msgs from one member",
        format_number(members as f64, 0),
        format_number(msgs as f64, 0)
    );
    record(report, &prefix, &summary, &[("messages sent/s", sent as f64 / sending.max(1e-9), 0)]);
    clean(&summary)
}

/// One request of a round-trip run: (service, command, params, the data the reply must carry).
type Request = (&'static str, &'static str, Value, Option<Value>);

/// Request round trips on `conns` connections for `duration`: `request(conn, n)` gives the
/// (service, command, params, expected data) of a connection's `n`-th call.
async fn round_trips(
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

fn echo_request(conn: usize, n: u64) -> Request {
    let value = json!(format!("{conn}-{n}"));
    ("echo", "echo", json!({"value": value}), Some(value))
}

fn pubsub_request(conn: usize, n: u64) -> Request {
    let command = if n % 2 == 1 { "subscribe" } else { "unsubscribe" };
    ("pubsub", command, json!({"channel": format!("rpc-{conn}")}), None)
}

/// `python`: the Python-service round trip, beside the built-in PubSub on the same server.
pub async fn python(sizes: &ServiceSizes, report: &mut Report) -> Result<(), String> {
    if !sizes.python.exists() {
        let note = format!(
            "python: skipped: {} does not exist (the project's venv with the built extension)",
            sizes.python.display()
        );
        println!("{note}");
        report.notes.push(note);
        return Ok(());
    }
    let server = ServerProcess::start_python(&sizes.python, include_str!("python_echo_server.py")).await?;
    let outcome = python_run(sizes, &server, report).await;
    server.stop().await;
    outcome
}

async fn python_run(sizes: &ServiceSizes, server: &ServerProcess, report: &mut Report) -> Result<(), String> {
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
