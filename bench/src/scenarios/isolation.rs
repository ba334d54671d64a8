//! `isolation`: one client's heavy DataSync requests must not stall the others. While the
//! backend keeps sending the largest authorization the limits allow (`max_items` items, each a
//! Filter query of `max_query_size` parts, as much as the body limit holds) and the largest
//! batch (a `publishDeltas` body near `backend_body_limit`, read by a few subscribers), another
//! connection measures PubSub round trips (`subscribe` then `unsubscribe`, each timed). The
//! round trips are measured first with the server idle, then under that load, side by side.
//!
//! Serves `serve-snorky --mode isolation` (PubSub and DataSync with a Filter and a Simple dealer).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::common::backend_client;
use super::services::ServiceSizes;
use crate::client;
use crate::procs::{Kind, ServerProcess};
use crate::report::{format_number, Cell, Report};
use crate::stats::Latency;

/// How many subscribers read the big batches.
const READERS: u64 = 10;

/// `isolation`, on a fresh server.
pub(super) async fn isolation(sizes: &ServiceSizes, report: &mut Report) -> Result<(), String> {
    let server = ServerProcess::start_snorky_with(&["--mode", "isolation"]).await?;
    let outcome = run(sizes, &server, report).await;
    server.stop().await;
    outcome
}

async fn run(sizes: &ServiceSizes, server: &ServerProcess, report: &mut Report) -> Result<(), String> {
    let secs = Duration::from_secs_f64(sizes.rpc_secs.max(0.3) * 2.0);
    let mut pinger = client::connect(&server.target, None).await?;
    let idle = round_trips(&mut pinger, secs).await?;

    let backend = backend_client(&server.target)?;
    let (authorization, parts) = big_authorization(sizes);
    let batch = big_batch(sizes);
    let readers = start_readers(server, &backend).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let mut load = Vec::new();
    for (command, params) in [("authorizeSubscription", authorization), ("publishDeltas", batch)] {
        let (backend, stop, done) = (backend.clone(), Arc::clone(&stop), Arc::clone(&done));
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                backend.call("datasync_backend", command, &params).await.map_err(|err| format!("{command}: {err}"))?;
                let counter = if command == "publishDeltas" { &done.1 } else { &done.0 };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        }));
    }
    let loaded = round_trips(&mut pinger, secs).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.map_err(|err| err.to_string())??;
    }
    for reader in readers {
        reader.abort();
    }
    let loaded = loaded?;
    let (authorizations, batches) = (done.0.load(Ordering::Relaxed), done.1.load(Ordering::Relaxed));
    let load_text = format!(
        "{} authorizations of {} items × {} parts, {} batches of {} deltas",
        authorizations,
        format_number(sizes.isolation_items as f64, 0),
        format_number(parts as f64, 0),
        batches,
        format_number(sizes.isolation_deltas as f64, 0)
    );
    eprintln!("    isolation: idle p99 {:.2} ms, under load p99 {:.2} ms ({load_text})", idle.1, loaded.1);
    for (label, (p50, p99, trips)) in [("idle", idle), ("under the largest authorizations and batches", loaded)] {
        report
            .row_mut(&format!("isolation: PubSub round trip p50 (ms), {label}"), false)
            .set(Kind::Snorky, Cell::number(p50, 2));
        report
            .row_mut(&format!("isolation: PubSub round trip p99 (ms), {label}"), false)
            .set(Kind::Snorky, Cell::number(p99, 2));
        report
            .row_mut(&format!("isolation: PubSub round trips measured, {label}"), false)
            .set(Kind::Snorky, Cell::number(trips as f64, 0));
    }
    report.notes.push(format!("isolation load: {load_text}"));
    if authorizations == 0 || batches == 0 {
        return Err("the load did not complete a single request during the measurement".into());
    }
    Ok(())
}

/// Times `subscribe`/`unsubscribe` calls on `ws` for `duration`; returns p50, p99 (ms) and the
/// number of calls.
async fn round_trips(ws: &mut client::Ws, duration: Duration) -> Result<(f64, f64, u64), String> {
    let channel = json!("isolation");
    let mut micros: Vec<u32> = Vec::new();
    let start = Instant::now();
    let mut call_id = 0u64;
    while start.elapsed() < duration {
        for command in ["subscribe", "unsubscribe"] {
            call_id += 1;
            let sent = Instant::now();
            tokio::time::timeout(client::SETUP_TIMEOUT, client::call(ws, command, &channel, call_id))
                .await
                .map_err(|_| format!("{command} timed out"))??;
            micros.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let trips = micros.len() as u64;
    let latency = Latency::of(&mut micros).ok_or("no round trip was measured")?;
    Ok((latency.p50_ms, latency.p99_ms, trips))
}

/// The largest authorization: `isolation_items` items, each a Filter query of as many parts as
/// `max_query_size` allows; returns the params and the parts per query.
fn big_authorization(sizes: &ServiceSizes) -> (Map<String, Value>, usize) {
    let parts = sizes.isolation_parts;
    let mut query = vec![json!("and")];
    query.extend((1..parts).map(|i| json!(["==", format!("field{}", i % 50), i])));
    let items: Vec<Value> =
        (0..sizes.isolation_items).map(|_| json!({"dealer": "filtered_tasks", "query": query})).collect();
    let mut params = Map::new();
    params.insert("items".into(), Value::Array(items));
    (params, parts)
}

/// The largest batch: `isolation_deltas` small deltas spread over 100 owners.
fn big_batch(sizes: &ServiceSizes) -> Map<String, Value> {
    let deltas: Vec<Value> = (0..sizes.isolation_deltas)
        .map(|i| json!({"type": "insert", "model": "Task", "data": {"id": i, "owner": i % 100, "title": "a task to do"}}))
        .collect();
    let mut params = Map::new();
    params.insert("deltas".into(), Value::Array(deltas));
    params
}

/// [`READERS`] connections, each holding a subscription to one owner's tasks and reading
/// everything it receives.
async fn start_readers(
    server: &ServerProcess,
    backend: &snorky::backend_client::BackendClient,
) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
    let mut readers = Vec::new();
    for owner in 0..READERS {
        let mut params = Map::new();
        params.insert("items".into(), json!([{"dealer": "tasks_by_owner", "query": owner}]));
        let token = backend
            .call("datasync_backend", "authorizeSubscription", &params)
            .await
            .map_err(|err| format!("authorizeSubscription: {err}"))?;
        let mut ws = client::connect(&server.target, None).await?;
        client::call_service(&mut ws, "datasync", "acquireSubscription", json!({"token": token}), 1).await?;
        readers.push(tokio::spawn(async move {
            use futures_util::StreamExt;
            while let Some(Ok(_)) = ws.next().await {}
        }));
    }
    Ok(readers)
}
