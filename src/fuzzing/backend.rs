//! The `backend` target: bodies posted to `POST /backend` through its handler, as the web
//! application (or anyone who has the key, or not) would send them: raw bytes with an honest or
//! lying `Content-Length`, and requests of every backend command with arbitrary arguments,
//! `publishDeltas` and `authorizeSubscription` above all.
//!
//! Besides the checks every answer gets, published deltas are checked end to end: a client
//! holds a Broadcast subscription to every `Task`, so an accepted batch must reach it as
//! exactly its `Task` deltas, in order (or not at all when its idempotency key was seen
//! before), and a refused batch must deliver nothing. Other clients hold subscriptions the
//! fuzzer authorizes, so deltas are routed through every kind of dealer.

use std::collections::HashSet;

use arbitrary::{Result, Unstructured};
use axum::http::StatusCode;
use serde_json::{json, Value};

use super::gen;
use super::server::{request, run, Harness};
use crate::connection::Identity;
use crate::datasync::Delta;

/// The most requests of one input.
const MAX_STEPS: usize = 32;

/// How often the watcher's catch-up gets a chance to deliver what did not fit in its queue.
const CATCH_UP_ROUNDS: usize = 64;

/// Runs one input of the `backend` target.
pub fn backend(data: &[u8]) {
    let mut u = Unstructured::new(data);
    run(async move {
        let mut harness = Harness::new().await;
        let watcher = watch_every_task(&mut harness).await;
        let mut keys = HashSet::new();
        for _ in 0..MAX_STEPS {
            if u.is_empty() || step(&mut u, &mut harness, watcher, &mut keys).await.is_err() {
                break;
            }
        }
        harness.finish().await;
    });
}

/// Connects a client that holds a Broadcast subscription to the `Task` model; returns it.
async fn watch_every_task(harness: &mut Harness) -> usize {
    let identity = Identity { id: Some("watcher".into()), info: None };
    let watcher = harness.connect(identity).await.expect("the table has room for the watcher");
    let token = harness.datasync().authorize(&json!([{"dealer": "all_tasks", "query": null}])).expect("valid items");
    let acquire = request("datasync", &json!("acquireSubscription"), &json!({"token": token}), Some(&json!(0)));
    harness.frame(watcher, &acquire).await;
    let reply = harness.drain(watcher);
    assert_eq!(reply, vec![json!({"service": "datasync", "message": {"type": "response", "callId": 0, "data": null}})]);
    watcher
}

async fn step(
    u: &mut Unstructured<'_>,
    harness: &mut Harness,
    watcher: usize,
    keys: &mut HashSet<String>,
) -> Result<()> {
    match u.choose_index(8)? {
        0 => {
            let body = u.arbitrary::<&[u8]>()?.to_vec();
            let announced = match u.choose_index(4)? {
                0 => Some(u.arbitrary()?),
                1 => Some(body.len() as u64),
                _ => None,
            };
            let (status, _) = harness.backend(body, u.ratio(1, 16)?, announced).await;
            if announced.is_some_and(|length| length > 1024 * 1024) {
                assert!(status == StatusCode::PAYLOAD_TOO_LARGE || status == StatusCode::UNAUTHORIZED);
            }
        }
        1..=3 => publish(u, harness, watcher, keys).await?,
        4 | 5 => {
            let mut params = json!({"items": gen::items(u)?});
            if u.arbitrary()? {
                params["identity"] = gen::value(u, 1)?;
            }
            let body = request("datasync_backend", &json!("authorizeSubscription"), &params, Some(&json!(1)));
            let (_, answer) = harness.backend(body, false, None).await;
            if let Some(token) = answer["message"]["data"].as_str() {
                // Any client but the watcher, which must receive nothing else.
                let client = u.choose_index(watcher)?;
                let acquire = request("datasync", &json!("acquireSubscription"), &json!({"token": token}), None);
                harness.frame(client, &acquire).await;
            }
        }
        6 => {
            let params = json!({"channel": gen::value(u, 1)?, "message": gen::value(u, gen::DEPTH)?});
            harness.backend(request("pubsub_backend", &json!("publish"), &params, None), false, None).await;
        }
        _ => {
            let identity = if u.arbitrary()? { json!("bob") } else { gen::value(u, 1)? };
            let body = request("connections", &json!("disconnect"), &json!({"identity": identity}), None);
            harness.backend(body, false, None).await;
        }
    }
    for client in 0..harness.clients() {
        if client != watcher {
            harness.drain(client);
        }
    }
    Ok(())
}

/// Publishes a batch and checks what the watcher receives.
async fn publish(
    u: &mut Unstructured<'_>,
    harness: &mut Harness,
    watcher: usize,
    keys: &mut HashSet<String>,
) -> Result<()> {
    let deltas = gen::deltas(u)?;
    let mut params = json!({"deltas": deltas});
    let key = if u.arbitrary()? { Some(gen::string(u)?) } else { None };
    if let Some(key) = &key {
        params["key"] = Value::from(key.as_str());
    }
    let watching = harness.connection(watcher).is_some();
    let body = request("datasync_backend", &json!("publishDeltas"), &params, Some(&json!(2)));
    let (status, answer) = harness.backend(body, false, None).await;
    let mut received = Vec::new();
    for _ in 0..CATCH_UP_ROUNDS {
        let frames = harness.drain(watcher);
        if frames.is_empty() {
            break;
        }
        received.extend(frames.into_iter().map(|frame| {
            assert_eq!(frame["message"]["type"], "delta", "the watcher only gets deltas: {frame}");
            frame["message"]["delta"].clone()
        }));
        harness.settle().await;
    }
    if !watching || harness.connection(watcher).is_none() {
        return Ok(());
    }
    let accepted = status == StatusCode::OK && answer["message"]["type"] == "response";
    if !accepted {
        assert!(received.is_empty(), "a refused batch delivers nothing: {answer}, yet {received:?}");
        return Ok(());
    }
    let batch = Delta::parse_batch(deltas, |model| model == "Task" || model == "Player").expect("accepted, so valid");
    let expected: Vec<Value> = batch
        .iter()
        .filter(|delta| delta.model() == "Task")
        .map(|delta| serde_json::to_value(delta).expect("a delta serializes"))
        .collect();
    // A key is remembered for batches that had deltas; a repeat delivers nothing, unless the
    // key was forgotten since (only the most recent keys are kept).
    let repeated = key.is_some_and(|key| !batch.is_empty() && !keys.insert(key));
    if !(repeated && received.is_empty()) {
        assert_eq!(received, expected, "the watcher gets exactly the batch's Task deltas, in order");
    }
    Ok(())
}
