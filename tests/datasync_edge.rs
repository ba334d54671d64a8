//! DataSync at its edges: bursts larger than a connection's queue, backlogs larger than it on
//! resume, the bounds on what authorizations and waiting subscriptions may hold, tokens bound
//! to an identity, and batches sent twice with the same idempotency key.

mod collab;
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{eventually, ok_reply, Client, TestServer, WAIT};
use serde_json::{json, Value};
use snorky::datasync::{DataSyncBackend, DataSyncHub, DataSyncService, Dealer, Limits, Retention};
use snorky::server::ServerConfig;
use snorky::service::AnyService;

/// A server with one DataSync service (`Task`: Broadcast `All`, Filter `Filtered`), tokens
/// enabled, and the hub.
async fn start(limits: Limits, configure: impl FnOnce(&mut ServerConfig)) -> (TestServer, Arc<DataSyncHub>) {
    let dealers = vec![Dealer::broadcast("All", "Task"), Dealer::filter("Filtered", "Task")];
    let datasync = DataSyncService::with_limits("datasync", dealers, limits).expect("distinct dealer names");
    let backend = DataSyncBackend::new("datasync_backend", &datasync);
    let hub = Arc::clone(datasync.hub());
    let mut config = collab::config();
    configure(&mut config);
    let server = TestServer::start_services(
        config,
        vec![AnyService::DataSync(datasync)],
        vec![AnyService::DataSyncBackend(backend)],
    )
    .await;
    (server, hub)
}

async fn backend(server: &TestServer, command: &str, params: Value) -> Value {
    common::backend_call(server, "datasync_backend", command, params).await
}

async fn authorize(server: &TestServer, params: Value) -> String {
    let reply = backend(server, "authorizeSubscription", params).await;
    reply["message"]["data"].as_str().unwrap_or_else(|| panic!("a token: {reply}")).to_owned()
}

async fn authorize_error(server: &TestServer, params: Value) -> String {
    let reply = backend(server, "authorizeSubscription", params).await;
    assert_eq!(reply["message"]["type"], "error", "{reply}");
    reply["message"]["message"].as_str().expect("an error text").to_owned()
}

async fn publish(server: &TestServer, params: Value) -> Value {
    backend(server, "publishDeltas", params).await
}

fn insert(n: usize) -> Value {
    json!({"type": "insert", "model": "Task", "data": {"id": n, "pad": "x".repeat(100)}})
}

/// `acquireSubscription`'s reply, after any deltas pushed before it (returned).
async fn acquire(client: &mut Client, token: &str) -> (Value, Vec<Value>) {
    client.request("datasync", "acquireSubscription", json!({"token": token}), json!("acquire")).await;
    let mut pushed = Vec::new();
    loop {
        let frame = client.recv().await;
        if frame["message"]["callId"] == json!("acquire") {
            return (frame, pushed);
        }
        pushed.push(frame);
    }
}

async fn acquire_ok(client: &mut Client, token: &str) -> Vec<Value> {
    let (reply, pushed) = acquire(client, token).await;
    assert_eq!(reply, ok_reply("datasync", &json!("acquire"), &Value::Null));
    pushed
}

async fn acquire_error(client: &mut Client, token: &str) -> String {
    let (reply, pushed) = acquire(client, token).await;
    assert!(pushed.is_empty());
    reply["message"]["message"].as_str().unwrap_or_else(|| panic!("an error: {reply}")).to_owned()
}

/// Reads deltas until `count` have arrived (counting those already `received`), checking that
/// their ids run 0, 1, 2, ... in order.
async fn read_in_order(client: &mut Client, received: Vec<Value>, count: usize) {
    let mut next = 0;
    let check = |frame: &Value, next: &mut usize| {
        assert_eq!(frame["message"]["delta"]["data"]["id"], json!(*next), "in order, none missing or twice");
        *next += 1;
    };
    for frame in &received {
        check(frame, &mut next);
    }
    while next < count {
        let frame = client.recv().await;
        check(&frame, &mut next);
    }
}

/// A queue of 64 KiB: every burst below is many times what it holds.
fn small_queue(config: &mut ServerConfig) {
    config.max_frame_size = 16 * 1024;
    config.outbox_limit = 64 * 1024;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_gets_every_delta_of_a_batch_far_larger_than_its_queue() {
    const DELTAS: usize = 20_000; // about 3 MB of frames, 45 times the queue
    let (server, _hub) = start(Limits::default(), small_queue).await;
    let mut client = server.connect().await;
    // Two subscriptions on one connection that both match every delta: twice the frames.
    let first = authorize(&server, json!({"items": [{"dealer": "All", "query": null}]})).await;
    let second = authorize(&server, json!({"items": [{"dealer": "Filtered", "query": [">=", "id", 0]}]})).await;
    acquire_ok(&mut client, &first).await;
    acquire_ok(&mut client, &second).await;
    let batch: Vec<Value> = (0..DELTAS).map(insert).collect();
    let answer = publish(&server, json!({"deltas": batch})).await;
    assert_eq!(answer["message"]["type"], "response", "{answer}");
    // Deliveries of the two subscriptions interleave; each one's own are complete and ordered.
    let mut next = [0usize, 0];
    common::within(Duration::from_secs(120), "every delta of both subscriptions", async {
        while next != [DELTAS, DELTAS] {
            let frame = client.recv().await;
            let id = frame["message"]["delta"]["data"]["id"].as_u64().and_then(|id| usize::try_from(id).ok());
            let id = id.expect("an id");
            let slot = usize::from(next[0] != id);
            assert_eq!(next[slot], id, "ids in order for each subscription");
            next[slot] += 1;
        }
    })
    .await;
    assert_eq!(common::metric(&server, "snorky_slow_consumers_dropped_total").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_far_larger_than_the_queue_is_resumed_whole() {
    const DELTAS: usize = 10_000;
    let (server, hub) = start(Limits::default(), small_queue).await;
    let token = authorize(&server, json!({"items": [{"dealer": "All", "query": null}]})).await;
    let mut first = server.connect().await;
    acquire_ok(&mut first, &token).await;
    first.close().await;
    eventually(WAIT, "the subscription to wait", || async { hub.waiting_count() == 1 }).await;
    let batch: Vec<Value> = (0..DELTAS).map(insert).collect();
    publish(&server, json!({"deltas": batch})).await;
    let mut again = server.connect().await;
    let pushed = acquire_ok(&mut again, &token).await;
    assert!(pushed.len() < DELTAS, "the queue cannot hold it all before the reply");
    common::within(Duration::from_secs(120), "the whole backlog", read_in_order(&mut again, pushed, DELTAS)).await;
}

#[tokio::test]
async fn waiting_subscriptions_are_capped_and_hold_no_deltas_of_their_own() {
    let limits = Limits {
        max_waiting: 50,
        retention: Retention { bytes: 256 * 1024, ..Retention::default() },
        ..Limits::default()
    };
    let (server, hub) = start(limits, |_| {}).await;
    let mut tokens = Vec::new();
    for _ in 0..60 {
        tokens.push(authorize(&server, json!({"items": [{"dealer": "All", "query": null}]})).await);
    }
    assert_eq!(hub.waiting_count(), 50, "the ten oldest were dropped");
    let mut client = server.connect().await;
    assert_eq!(acquire_error(&mut client, &tokens[0]).await, "No such subscription");
    // 5,000 deltas of ~170 bytes for 50 waiting subscriptions: the stream keeps its bound,
    // whatever the number of subscriptions.
    for chunk in 0..5 {
        let batch: Vec<Value> = (chunk * 1000..(chunk + 1) * 1000).map(insert).collect();
        publish(&server, json!({"deltas": batch})).await;
    }
    let (_, bytes) = hub.stream_size();
    assert!(bytes <= 256 * 1024, "the stream holds {bytes} bytes");
    // Their missed deltas are gone: acquiring tells the client to fetch its data again.
    assert_eq!(acquire_error(&mut client, &tokens[59]).await, "No such subscription");
}

#[tokio::test]
async fn a_connection_holds_a_bounded_number_of_subscriptions() {
    let (server, _hub) = start(Limits { max_per_connection: 3, ..Limits::default() }, |_| {}).await;
    let mut client = server.connect().await;
    for _ in 0..3 {
        let token = authorize(&server, json!({"items": [{"dealer": "All", "query": null}]})).await;
        acquire_ok(&mut client, &token).await;
    }
    let token = authorize(&server, json!({"items": [{"dealer": "All", "query": null}]})).await;
    assert_eq!(acquire_error(&mut client, &token).await, "Too many subscriptions");
}

#[tokio::test]
async fn authorizations_are_bounded_in_items_and_query_size() {
    let limits = Limits {
        max_items: 10,
        filter: snorky::datasync::FilterLimits { max_size: 50, max_depth: 5 },
        ..Limits::default()
    };
    let (server, _hub) = start(limits, |_| {}).await;
    let items: Vec<Value> = (0..11).map(|_| json!({"dealer": "All", "query": null})).collect();
    assert_eq!(authorize_error(&server, json!({"items": items})).await, "Too many items");
    let mut big = vec![json!("and")];
    big.extend((0..50).map(|i| json!(["==", "id", i])));
    let text = authorize_error(&server, json!({"items": [{"dealer": "Filtered", "query": big}]})).await;
    assert_eq!(text, "Invalid query for dealer \"Filtered\": expression has more than 50 parts");
    let deep = json!(["not", ["not", ["not", ["not", ["not", ["==", "id", 1]]]]]]);
    let text = authorize_error(&server, json!({"items": [{"dealer": "Filtered", "query": deep}]})).await;
    assert_eq!(text, "Invalid query for dealer \"Filtered\": expression nested deeper than 5 levels");
}

#[tokio::test]
async fn field_paths_leave_the_index_with_their_last_subscription() {
    let (server, hub) = start(Limits::default(), |_| {}).await;
    let mut client = server.connect().await;
    let mut tokens = Vec::new();
    for i in 0..20 {
        let query = json!(["==", format!("field{i}"), 1]);
        let token = authorize(&server, json!({"items": [{"dealer": "Filtered", "query": query}]})).await;
        tokens.push(token);
    }
    assert_eq!(hub.indexed_paths(), 20);
    for token in &tokens[..10] {
        acquire_ok(&mut client, token).await;
        let reply = client.call("datasync", "cancelSubscription", json!({"token": token}), json!(1)).await;
        assert_eq!(reply, ok_reply("datasync", &json!(1), &Value::Null));
    }
    assert_eq!(hub.indexed_paths(), 10);
}

#[tokio::test]
async fn a_token_bound_to_an_identity_is_acquired_and_resumed_only_by_it() {
    let (server, hub) = start(Limits::default(), |_| {}).await;
    let token = authorize(&server, json!({"items": [{"dealer": "All", "query": null}], "identity": "alice"})).await;
    let mut anonymous = server.connect().await;
    assert_eq!(acquire_error(&mut anonymous, &token).await, "No such subscription");
    let mut mallory = collab::connect_as(&server, "mallory").await;
    assert_eq!(acquire_error(&mut mallory, &token).await, "No such subscription");
    let mut alice = collab::connect_as(&server, "alice").await;
    acquire_ok(&mut alice, &token).await;
    // Alice's tab closes with private deltas published meanwhile: only alice may resume.
    alice.close().await;
    eventually(WAIT, "the subscription to wait", || async { hub.waiting_count() == 1 }).await;
    publish(&server, json!({"deltas": [insert(0), insert(1)]})).await;
    assert_eq!(acquire_error(&mut anonymous, &token).await, "No such subscription");
    let mut alice_again = collab::connect_as(&server, "alice").await;
    let pushed = acquire_ok(&mut alice_again, &token).await;
    assert_eq!(pushed.len(), 2, "alice gets what she missed");
    let wrong = backend(&server, "authorizeSubscription", json!({"items": [], "identity": 5})).await;
    assert_eq!(wrong["message"]["message"], "identity must be string");
}

#[tokio::test]
async fn a_batch_sent_twice_with_its_key_is_delivered_once() {
    let (server, _hub) = start(Limits::default(), |_| {}).await;
    let token = authorize(&server, json!({"items": [{"dealer": "All", "query": null}]})).await;
    let mut client = server.connect().await;
    acquire_ok(&mut client, &token).await;
    for _ in 0..2 {
        let answer = publish(&server, json!({"deltas": [insert(0)], "key": "outbox:default:1-1"})).await;
        assert_eq!(answer["message"]["type"], "response", "a repeat is accepted: {answer}");
    }
    publish(&server, json!({"deltas": [insert(1)], "key": "outbox:default:2-2"})).await;
    read_in_order(&mut client, Vec::new(), 2).await;
    client.request("datasync", "cancelSubscription", json!({"token": token}), json!("end")).await;
    assert_eq!(client.recv().await["message"]["callId"], "end", "nothing else came: the repeat was dropped");
    for key in [json!(5), json!("k".repeat(201))] {
        let answer = publish(&server, json!({"deltas": [insert(2)], "key": key})).await;
        assert_eq!(answer["message"]["message"], "key must be a string of at most 200 characters");
    }
}
