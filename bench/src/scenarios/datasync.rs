//! `datasync`: `serve-snorky --mode datasync`; every connection authorizes a subscription
//! through the backend (`authorizeSubscription`, `BackendClient`) and acquires it over
//! WebSocket; deltas go out in batches of [`BATCH`] through `publishDeltas`. Two runs: a Simple
//! dealer keyed by `owner` (each delta reaches one connection) and a Broadcast dealer (each
//! delta reaches every connection).

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Map, Value};

use super::common::{backend_client, cpu_per_delivery, wait_window, DRAIN_IDLE, DRAIN_MAX, MESSAGE_SIZE};
use super::services::{clean, record, ServiceSizes, SERVICE_OPEN_MAX};
use snorky::backend_client::BackendClient;

use crate::client::{self, Clock, Join, Subscribers};
use crate::procs::ServerProcess;
use crate::report::{format_number, Report};
use crate::stats::Deliveries;

/// Deltas per `publishDeltas` call.
pub const BATCH: u64 = 100;

/// One DataSync delta: an inserted `model` object carrying the benchmark message.
pub(super) fn delta(model: &str, owner: Option<u64>, seq: u64, ts: u64) -> Value {
    let mut data = client::payload(seq, ts, MESSAGE_SIZE);
    if let (Some(owner), Value::Object(data)) = (owner, &mut data) {
        data.insert("owner".into(), owner.into());
    }
    json!({"type": "insert", "model": model, "data": data})
}

/// `datasync`: both runs (Simple dealer, then Broadcast dealer), each on a fresh server.
pub(super) async fn datasync(sizes: &ServiceSizes, clock: Clock, report: &mut Report) -> Result<(), String> {
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

/// Authorizes one subscription per connection through the backend (one item each); returns
/// their tokens.
async fn authorize(backend: &BackendClient, conns: usize, broadcast: bool) -> Result<Vec<String>, String> {
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
    Ok(tokens)
}

/// The row prefix of a run.
fn prefix(conns: usize, total: u64, broadcast: bool) -> String {
    let dealer = if broadcast { "Broadcast dealer" } else { "Simple dealer (by owner)" };
    format!(
        "DataSync {} subs, {dealer}, {} deltas in batches of {BATCH}",
        format_number(conns as f64, 0),
        format_number(total as f64, 0)
    )
}

pub(super) async fn datasync_run(
    sizes: &ServiceSizes,
    clock: Clock,
    server: &ServerProcess,
    broadcast: bool,
    report: &mut Report,
) -> Result<(), String> {
    let conns = sizes.conns.max(1);
    let backend = backend_client(&server.target)?;
    let tokens = authorize(&backend, conns, broadcast).await?;
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
    let (ready, failed) = subscribers.wait_ready(SERVICE_OPEN_MAX).await;
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
                    // `j % conns` is below `conns`, a `usize`.
                    #[allow(clippy::cast_possible_truncation)]
                    let owner = (j % conns as u64) as usize;
                    published[if broadcast { 0 } else { owner }] += 1;
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
    let prefix = prefix(conns, total, broadcast);
    let extra = [
        ("publishDeltas calls/s", calls as f64 / publishing.max(1e-9), 0),
        ("deltas published/s", deltas_sent as f64 / publishing.max(1e-9), 0),
    ];
    record(report, &prefix, &summary, &extra);
    clean(&summary)
}
