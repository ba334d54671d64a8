//! DataSync over the wire (docs/protocol.md "DataSync" and the DataSync lines of "Precise rules"):
//! a real server, browsers over WebSocket, the web application over `POST /backend`.
//!
//! Timeouts are exercised with short real durations rather than a paused clock: the server
//! and the clients share sockets, and a paused clock would jump past every timeout as soon
//! as the runtime waits on I/O. The exact-time semantics are unit-tested in
//! `src/datasync/subscription.rs`, the sweeper under a paused clock in `service.rs`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{backend_call, eventually, ok_reply, test_config, within, Client, TestServer, WAIT};
use futures_util::StreamExt;
use serde_json::{json, Value};
use snorky::datasync::{DataSyncBackend, DataSyncHub, DataSyncService, Dealer, KeyFunction, Limits, Retention};
use snorky::service::AnyService;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// `TasksByTeam`'s key: the team's slug, lowercased; fails (as a Python method raising
/// would) when the object has no team slug.
struct TeamSlug;

impl KeyFunction for TeamSlug {
    fn key(&self, data: &Value) -> Result<Value, String> {
        data.pointer("/team/slug")
            .and_then(Value::as_str)
            .map(|slug| Value::from(slug.to_lowercase()))
            .ok_or_else(|| "KeyError: 'team'".to_owned())
    }
}

/// The dealers of the README's DataSync example, plus one for another model.
fn dealers() -> Vec<Dealer> {
    vec![
        Dealer::broadcast("AllTasks", "Task"),
        Dealer::simple_field("TasksByOwner", "Task", "owner.id"),
        Dealer::simple_fn("TasksByTeam", "Task", Arc::new(TeamSlug)),
        Dealer::filter("FilteredTasks", "Task"),
        Dealer::filter("Players", "Player"),
    ]
}

/// A server with `datasync` and `datasync_backend`, and the hub they share.
struct DataSyncServer {
    server: TestServer,
    hub: Arc<DataSyncHub>,
}

impl DataSyncServer {
    async fn start() -> DataSyncServer {
        DataSyncServer::start_with(Limits::default()).await
    }

    async fn start_with(limits: Limits) -> DataSyncServer {
        let datasync = DataSyncService::with_limits("datasync", dealers(), limits).expect("distinct dealer names");
        let backend = DataSyncBackend::new("datasync_backend", &datasync);
        let hub = Arc::clone(datasync.hub());
        let server = TestServer::start_services(
            test_config(),
            vec![AnyService::DataSync(datasync)],
            vec![AnyService::DataSyncBackend(backend)],
        )
        .await;
        DataSyncServer { server, hub }
    }

    async fn connect(&self) -> Client {
        self.server.connect().await
    }

    /// `authorizeSubscription` through the backend; the whole reply envelope.
    async fn authorize_reply(&self, items: Value) -> Value {
        backend_call(&self.server, "datasync_backend", "authorizeSubscription", json!({"items": items})).await
    }

    /// `authorizeSubscription`, asserting success; the token.
    async fn authorize(&self, items: Value) -> String {
        let reply = self.authorize_reply(items.clone()).await;
        let token = reply["message"]["data"].as_str().unwrap_or_else(|| panic!("authorizing {items} failed: {reply}"));
        token.to_owned()
    }

    /// The error text of a refused `authorizeSubscription`.
    async fn authorize_error(&self, items: Value) -> String {
        error_text(&self.authorize_reply(items).await, "datasync_backend")
    }

    /// `publishDeltas`; the whole reply envelope.
    async fn publish_reply(&self, deltas: Value) -> Value {
        backend_call(&self.server, "datasync_backend", "publishDeltas", json!({"deltas": deltas})).await
    }

    /// `publishDeltas`, asserting the exact success reply.
    async fn publish(&self, deltas: Value) {
        let reply = self.publish_reply(deltas).await;
        assert_eq!(reply, json!({"service": "datasync_backend", "message": {"type": "response", "data": null}}));
    }

    /// The error text of a refused `publishDeltas`.
    async fn publish_error(&self, deltas: Value) -> String {
        error_text(&self.publish_reply(deltas).await, "datasync_backend")
    }
}

fn error_text(reply: &Value, service: &str) -> String {
    assert_eq!(reply["service"], service, "{reply}");
    assert_eq!(reply["message"]["type"], "error", "{reply}");
    reply["message"]["message"].as_str().expect("an error text").to_owned()
}

/// Sends a `datasync` request and reads up to its reply; returns the reply envelope and the
/// frames pushed before it.
async fn rpc(client: &mut Client, command: &str, params: Value) -> (Value, Vec<Value>) {
    let call_id = json!(command);
    client.request("datasync", command, params, call_id.clone()).await;
    let mut pushed = Vec::new();
    loop {
        let frame = client.recv().await;
        if frame["message"]["callId"] == call_id {
            return (frame, pushed);
        }
        pushed.push(frame);
    }
}

/// `acquireSubscription`, asserting success; the deltas delivered before the reply (the
/// buffer), unwrapped.
async fn acquire(client: &mut Client, token: &str) -> Vec<Value> {
    let (reply, pushed) = rpc(client, "acquireSubscription", json!({"token": token})).await;
    assert_eq!(reply, ok_reply("datasync", &json!("acquireSubscription"), &Value::Null));
    pushed.iter().map(unwrap_delta).collect()
}

/// The error text of a refused `datasync` command.
async fn refused(client: &mut Client, command: &str, params: Value) -> String {
    let (reply, pushed) = rpc(client, command, params).await;
    assert!(pushed.is_empty(), "nothing is pushed by a refused command");
    error_text(&reply, "datasync")
}

/// Checks a pushed frame is exactly `{"service": "datasync", "message": {"type": "delta",
/// "delta": ...}}` and returns the delta.
fn unwrap_delta(frame: &Value) -> Value {
    let object = frame.as_object().expect("a frame is an object");
    assert_eq!(object.len(), 2, "only service and message: {frame}");
    assert_eq!(frame["service"], "datasync", "deltas carry the frontend name");
    let message = frame["message"].as_object().expect("message is an object");
    assert_eq!(message.len(), 2, "only type and delta: {frame}");
    assert_eq!(message["type"], "delta");
    message["delta"].clone()
}

/// The next `n` deltas pushed to `client`.
async fn deltas(client: &mut Client, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(unwrap_delta(&client.recv().await));
    }
    out
}

/// Asserts nothing (but pings) arrives for `quiet`.
async fn assert_silent(client: &mut Client, quiet: Duration) {
    let deadline = Instant::now() + quiet;
    loop {
        match tokio::time::timeout_at(deadline, client.ws.next()).await {
            Err(_) => return,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(other) => panic!("expected silence, got {other:?}"),
        }
    }
}

fn insert(data: Value) -> Value {
    json!({"type": "insert", "model": "Task", "data": data})
}

fn update(old: Value, new: Value) -> Value {
    json!({"type": "update", "model": "Task", "newData": new, "oldData": old})
}

fn delete(data: Value) -> Value {
    json!({"type": "delete", "model": "Task", "data": data})
}

fn task(id: i64) -> Value {
    json!({"id": id, "owner": {"id": 42}, "team": {"slug": "Core"}, "status": "open"})
}

fn all_tasks() -> Value {
    json!([{"dealer": "AllTasks", "query": null}])
}

/// Waits until the hub has `waiting` waiting subscriptions.
async fn waiting_becomes(hub: &DataSyncHub, waiting: usize) -> Duration {
    eventually(WAIT, "the subscription to be waiting", || async { hub.waiting_count() == waiting }).await
}

#[tokio::test]
async fn authorize_returns_a_token_and_refuses_bad_items_with_protocol_texts() {
    let ds = DataSyncServer::start().await;
    let reply = ds.authorize_reply(all_tasks()).await;
    let token = reply["message"]["data"].as_str().expect("a token");
    assert_eq!(reply, json!({"service": "datasync_backend", "message": {"type": "response", "data": token}}));
    assert_eq!(token.len(), 32);
    assert!(token.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    assert_ne!(ds.authorize(all_tasks()).await, token, "tokens differ");

    let cases = [
        (json!([{"query": 1}]), "Missing field dealer"),
        (json!([{"dealer": "AllTasks"}]), "Missing field query"),
        (json!([{"dealer": 5, "query": 1}]), "dealer should be a dealer name"),
        (json!([{"dealer": null, "query": 1}]), "dealer should be a dealer name"),
        (json!([{"dealer": "Nope", "query": 1}]), "No such dealer"),
        (json!([{"dealer": "AllTasks", "query": 1}, {"dealer": "Nope", "query": 1}]), "No such dealer"),
        (json!("AllTasks"), "Invalid params"),
        (json!([["AllTasks", null]]), "Invalid params"),
    ];
    for (items, text) in cases {
        assert_eq!(ds.authorize_error(items.clone()).await, text, "{items}");
    }
    // A Filter item whose query is not an expression is refused at authorization.
    for query in [json!(null), json!(["=", "a", 1]), json!(["==", "a"]), json!([])] {
        let items = json!([{"dealer": "FilteredTasks", "query": query}]);
        let text = ds.authorize_error(items).await;
        assert!(text.starts_with("Invalid query"), "{query}: {text}");
    }
    // Broadcast ignores its query (null is present); unknown keys in an item are ignored;
    // an empty list is a subscription that receives nothing.
    ds.authorize(json!([{"dealer": "AllTasks", "query": null, "extra": 1}])).await;
    ds.authorize(json!([])).await;
    // Missing or extra parameters.
    let reply = backend_call(&ds.server, "datasync_backend", "authorizeSubscription", json!({})).await;
    assert_eq!(error_text(&reply, "datasync_backend"), "Invalid params");
    let reply =
        backend_call(&ds.server, "datasync_backend", "authorizeSubscription", json!({"items": [], "more": 1})).await;
    assert_eq!(error_text(&reply, "datasync_backend"), "Invalid params");
    let reply = backend_call(&ds.server, "datasync_backend", "acquireSubscription", json!({})).await;
    assert_eq!(error_text(&reply, "datasync_backend"), "Unknown command");
    // The four valid subscriptions exist, nothing from the refused ones.
    assert_eq!(ds.hub.subscription_count(), 4);
}

#[tokio::test]
async fn frontend_commands_and_their_error_texts() {
    let ds = DataSyncServer::start().await;
    let mut client = ds.connect().await;
    for command in ["acquireSubscription", "cancelSubscription"] {
        for token in [json!(5), json!(null), json!(["x"]), json!({"t": 1})] {
            assert_eq!(refused(&mut client, command, json!({"token": token})).await, "token must be string");
        }
        assert_eq!(refused(&mut client, command, json!({})).await, "Invalid params");
        assert_eq!(refused(&mut client, command, json!({"token": "a", "other": 1})).await, "Invalid params");
        assert_eq!(refused(&mut client, command, json!({"token": "nope"})).await, "No such subscription");
    }
    assert_eq!(
        refused(&mut client, "authorizeSubscription", json!({"items": []})).await,
        "Unknown command",
        "backend commands are not reachable from the frontend service"
    );
    let token = ds.authorize(all_tasks()).await;
    assert!(acquire(&mut client, &token).await.is_empty());
    let (reply, _) = rpc(&mut client, "cancelSubscription", json!({"token": token})).await;
    assert_eq!(reply, ok_reply("datasync", &json!("cancelSubscription"), &Value::Null));
    assert_eq!(
        refused(&mut client, "cancelSubscription", json!({"token": token})).await,
        "No such subscription",
        "cancelled once"
    );
    assert_eq!(
        refused(&mut client, "acquireSubscription", json!({"token": token})).await,
        "No such subscription",
        "a cancelled subscription is gone"
    );
    assert_eq!(ds.hub.subscription_count(), 0);
}

#[tokio::test]
async fn deltas_are_buffered_until_acquired_then_flow_in_order() {
    let ds = DataSyncServer::start().await;
    let token = ds.authorize(all_tasks()).await;
    ds.publish(json!([insert(task(1)), insert(task(2))])).await;
    ds.publish(json!([delete(task(1))])).await;
    let mut client = ds.connect().await;
    assert_eq!(acquire(&mut client, &token).await, vec![insert(task(1)), insert(task(2)), delete(task(1))]);
    ds.publish(json!([update(task(2), task(3))])).await;
    assert_eq!(deltas(&mut client, 1).await, vec![update(task(2), task(3))]);
    assert_silent(&mut client, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn deliveries_have_exactly_the_protocol_fields() {
    let ds = DataSyncServer::start().await;
    let token = ds.authorize(all_tasks()).await;
    let mut client = ds.connect().await;
    acquire(&mut client, &token).await;
    // Extra keys of a published delta are not forwarded; 0.1's update spelling is accepted
    // and delivered as docs/protocol.md's.
    ds.publish(json!([
        {"type": "insert", "model": "Task", "data": {"id": 1}, "extra": true},
        {"type": "update", "model": "Task", "new_data": {"id": 2}, "old_data": {"id": 1}},
    ]))
    .await;
    assert_eq!(
        client.recv_text().await,
        r#"{"service":"datasync","message":{"type":"delta","delta":{"type":"insert","model":"Task","data":{"id":1}}}}"#
    );
    assert_eq!(
        client.recv_text().await,
        r#"{"service":"datasync","message":{"type":"delta","delta":{"type":"update","model":"Task","newData":{"id":2},"oldData":{"id":1}}}}"#
    );
}

#[tokio::test]
async fn resume_after_reconnect_delivers_every_missed_delta_once_in_order() {
    let ds = DataSyncServer::start().await;
    let token = ds.authorize(json!([{"dealer": "TasksByOwner", "query": 42}])).await;
    let mut first = ds.connect().await;
    acquire(&mut first, &token).await;
    ds.publish(json!([insert(task(1)), insert(task(2))])).await;
    assert_eq!(deltas(&mut first, 2).await, vec![insert(task(1)), insert(task(2))]);
    first.close().await;
    let took = waiting_becomes(&ds.hub, 1).await;
    assert!(took < Duration::from_millis(500), "disconnect took effect in {took:?}");
    let missed: Vec<Value> = (3..8).map(|id| insert(task(id))).collect();
    ds.publish(json!(missed[..2])).await;
    ds.publish(json!(missed[2..])).await;
    // A delta for someone else is not buffered.
    ds.publish(json!([insert(json!({"owner": {"id": 7}}))])).await;

    let mut second = ds.connect().await;
    assert_eq!(acquire(&mut second, &token).await, missed);
    ds.publish(json!([delete(task(3))])).await;
    assert_eq!(deltas(&mut second, 1).await, vec![delete(task(3))]);
    assert_silent(&mut second, Duration::from_millis(200)).await;
    // Resume works again, any number of times.
    second.close().await;
    waiting_becomes(&ds.hub, 1).await;
    ds.publish(json!([delete(task(4))])).await;
    let mut third = ds.connect().await;
    assert_eq!(acquire(&mut third, &token).await, vec![delete(task(4))]);
}

#[tokio::test]
async fn missed_deltas_beyond_the_retention_drop_the_subscription() {
    let limits = Limits { retention: Retention { deltas: 3, ..Retention::default() }, ..Limits::default() };
    let ds = DataSyncServer::start_with(limits).await;
    let overflowing = ds.authorize(all_tasks()).await;
    let kept = ds.authorize(all_tasks()).await;
    let mut leaving = ds.connect().await;
    acquire(&mut leaving, &overflowing).await;
    let mut staying = ds.connect().await;
    acquire(&mut staying, &kept).await;
    leaving.close().await;
    waiting_becomes(&ds.hub, 1).await;
    let published: Vec<Value> = (1..=4).map(|id| insert(task(id))).collect();
    ds.publish(json!(published)).await;
    assert_eq!(deltas(&mut staying, 4).await, published, "a connected subscriber gets everything");
    // Four deltas were missed and the stream keeps three: resuming would leave a gap.
    let mut again = ds.connect().await;
    assert_eq!(refused(&mut again, "acquireSubscription", json!({"token": overflowing})).await, "No such subscription");
    // A subscription that missed only what is retained resumes without a gap.
    staying.close().await;
    waiting_becomes(&ds.hub, 1).await;
    let missed: Vec<Value> = (5..=7).map(|id| insert(task(id))).collect();
    ds.publish(json!(missed)).await;
    assert_eq!(acquire(&mut again, &kept).await, missed);
    // The bound holds before the first acquire too.
    let never_acquired = ds.authorize(all_tasks()).await;
    ds.publish(json!(published)).await;
    assert_eq!(deltas(&mut again, 4).await, published);
    assert_eq!(
        refused(&mut again, "acquireSubscription", json!({"token": never_acquired})).await,
        "No such subscription"
    );
}

#[tokio::test]
async fn authorization_and_resume_timeouts() {
    let limits = Limits {
        subscription_timeout: Duration::from_millis(300),
        resume_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let ds = DataSyncServer::start_with(limits).await;
    let expiring = ds.authorize(all_tasks()).await;
    let kept = ds.authorize(all_tasks()).await;
    let mut client = ds.connect().await;
    acquire(&mut client, &kept).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        refused(&mut client, "acquireSubscription", json!({"token": expiring})).await,
        "No such subscription",
        "nobody acquired it within subscription_timeout"
    );
    // The acquired one does not expire.
    ds.publish(json!([insert(task(1))])).await;
    assert_eq!(deltas(&mut client, 1).await, vec![insert(task(1))]);
    client.close().await;
    waiting_becomes(&ds.hub, 1).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut again = ds.connect().await;
    assert_eq!(
        refused(&mut again, "acquireSubscription", json!({"token": kept})).await,
        "No such subscription",
        "nobody resumed it within resume_timeout"
    );
    // Untouched subscriptions are swept from memory within about a second.
    ds.authorize(all_tasks()).await;
    eventually(Duration::from_secs(2), "expired subscriptions to be swept", || async {
        ds.hub.subscription_count() == 0
    })
    .await;
}

#[tokio::test]
async fn a_token_is_held_by_one_connection_at_a_time() {
    let ds = DataSyncServer::start().await;
    let token = ds.authorize(all_tasks()).await;
    let mut owner = ds.connect().await;
    let mut other = ds.connect().await;
    acquire(&mut owner, &token).await;
    assert_eq!(refused(&mut other, "acquireSubscription", json!({"token": token})).await, "No such subscription");
    assert_eq!(
        refused(&mut other, "cancelSubscription", json!({"token": token})).await,
        "No such subscription",
        "cancelling someone else's subscription"
    );
    assert_eq!(
        refused(&mut owner, "acquireSubscription", json!({"token": token})).await,
        "No such subscription",
        "acquiring what this connection already holds"
    );
    // None of that changed anything.
    ds.publish(json!([insert(task(1))])).await;
    assert_eq!(deltas(&mut owner, 1).await, vec![insert(task(1))]);
    assert_silent(&mut other, Duration::from_millis(150)).await;
    let (reply, _) = rpc(&mut owner, "cancelSubscription", json!({"token": token})).await;
    assert_eq!(reply["message"]["type"], "response");
    ds.publish(json!([insert(task(2))])).await;
    assert_silent(&mut owner, Duration::from_millis(150)).await;
}

#[tokio::test]
async fn updates_are_translated_as_objects_enter_and_leave_the_view() {
    let ds = DataSyncServer::start().await;
    let token = ds.authorize(json!([{"dealer": "FilteredTasks", "query": ["==", "status", "open"]}])).await;
    let mut client = ds.connect().await;
    acquire(&mut client, &token).await;
    let open = json!({"id": 1, "status": "open"});
    let done = json!({"id": 1, "status": "done"});
    let open2 = json!({"id": 1, "status": "open", "title": "again"});
    ds.publish(json!([
        update(open.clone(), open2.clone()),
        update(open2.clone(), done.clone()),
        update(done.clone(), json!({"id": 1, "status": "wontfix"})),
        update(done.clone(), open.clone()),
    ]))
    .await;
    assert_eq!(
        deltas(&mut client, 3).await,
        vec![
            update(open.clone(), open2.clone()),
            json!({"type": "delete", "model": "Task", "data": open2}),
            json!({"type": "insert", "model": "Task", "data": open}),
        ]
    );
    assert_silent(&mut client, Duration::from_millis(150)).await;
    // Simple dealers translate too: the task moves from owner 42 to owner 7.
    let by_owner = ds.authorize(json!([{"dealer": "TasksByOwner", "query": 42}])).await;
    acquire(&mut client, &by_owner).await;
    let moved = json!({"id": 2, "owner": {"id": 7}});
    ds.publish(json!([update(task(2), moved)])).await;
    assert_eq!(deltas(&mut client, 1).await, vec![delete(task(2))]);
}

#[tokio::test]
async fn overlapping_items_deliver_each_delta_once() {
    let ds = DataSyncServer::start().await;
    let token = ds
        .authorize(json!([
            {"dealer": "AllTasks", "query": null},
            {"dealer": "TasksByOwner", "query": 42},
            {"dealer": "TasksByOwner", "query": 42.0},
            {"dealer": "TasksByTeam", "query": "core"},
            {"dealer": "FilteredTasks", "query": ["==", "owner.id", 42]},
            {"dealer": "FilteredTasks", "query": ["and", ["==", "team.slug", "Core"], [">", "id", 0]]},
        ]))
        .await;
    let mut client = ds.connect().await;
    acquire(&mut client, &token).await;
    let sent = vec![insert(task(1)), update(task(1), task(2)), delete(task(2))];
    ds.publish(json!(sent)).await;
    assert_eq!(deltas(&mut client, 3).await, sent);
    assert_silent(&mut client, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_failing_key_function_skips_only_its_dealer() {
    let ds = DataSyncServer::start().await;
    let by_team = ds.authorize(json!([{"dealer": "TasksByTeam", "query": "core"}])).await;
    let by_owner = ds.authorize(json!([{"dealer": "TasksByOwner", "query": 42}])).await;
    let mut team = ds.connect().await;
    let mut owner = ds.connect().await;
    acquire(&mut team, &by_team).await;
    acquire(&mut owner, &by_owner).await;
    let teamless = json!({"id": 9, "owner": {"id": 42}});
    ds.publish(json!([insert(teamless.clone()), insert(task(1))])).await;
    assert_eq!(deltas(&mut owner, 2).await, vec![insert(teamless), insert(task(1))]);
    assert_eq!(deltas(&mut team, 1).await, vec![insert(task(1))]);
}

#[tokio::test]
async fn a_bad_delta_refuses_the_whole_batch() {
    let ds = DataSyncServer::start().await;
    let token = ds.authorize(all_tasks()).await;
    let mut client = ds.connect().await;
    acquire(&mut client, &token).await;
    let good = insert(task(1));
    let cases = [
        (json!({"model": "Task", "data": {}}), "Missing field"),
        (json!({"type": "insert", "data": {}}), "Missing field"),
        (json!({"type": "insert", "model": "Task"}), "Missing field"),
        (json!({"type": "update", "model": "Task", "newData": {}}), "Missing field"),
        (json!({"type": "upsert", "model": "Task", "data": {}}), "Invalid delta type"),
        (json!({"type": 3, "model": "Task", "data": {}}), "Invalid delta type"),
        (json!({"type": "insert", "model": 3, "data": {}}), "model must be string"),
        (json!({"type": "insert", "model": null, "data": {}}), "model must be string"),
        (json!({"type": "insert", "model": "Nope", "data": {}}), "Unknown model"),
        (json!("insert"), "Invalid params"),
    ];
    for (bad, text) in cases {
        let batch = json!([good.clone(), bad.clone(), good.clone()]);
        assert_eq!(ds.publish_error(batch).await, text, "{bad}");
    }
    for deltas_param in [json!(null), json!({"0": good}), json!("x")] {
        assert_eq!(ds.publish_error(deltas_param).await, "Invalid params");
    }
    let reply = backend_call(&ds.server, "datasync_backend", "publishDeltas", json!({})).await;
    assert_eq!(error_text(&reply, "datasync_backend"), "Invalid params");
    assert_silent(&mut client, Duration::from_millis(200)).await;
    // The subscription is fine: the next valid batch arrives, alone.
    ds.publish(json!([])).await;
    ds.publish(json!([insert(task(5))])).await;
    assert_eq!(deltas(&mut client, 1).await, vec![insert(task(5))]);
}

#[tokio::test]
async fn many_batches_arrive_in_publish_order() {
    let ds = DataSyncServer::start().await;
    let token = ds.authorize(all_tasks()).await;
    let mut client = ds.connect().await;
    acquire(&mut client, &token).await;
    let mut expected = Vec::new();
    for batch in 0..20 {
        let deltas: Vec<Value> = (0..5).map(|i| insert(task(batch * 5 + i))).collect();
        expected.extend(deltas.iter().cloned());
        ds.publish(json!(deltas)).await;
    }
    let received = within(WAIT, "100 deltas", deltas(&mut client, 100)).await;
    assert_eq!(received, expected);
}

#[tokio::test]
async fn another_model_reaches_only_its_dealers() {
    let ds = DataSyncServer::start().await;
    let tasks = ds.authorize(all_tasks()).await;
    let players = ds.authorize(json!([{"dealer": "Players", "query": ["==", "player.color", "red"]}])).await;
    let mut client = ds.connect().await;
    acquire(&mut client, &tasks).await;
    acquire(&mut client, &players).await;
    let red = json!({"type": "insert", "model": "Player", "data": {"player": {"color": "red"}}});
    let blue = json!({"type": "insert", "model": "Player", "data": {"player": {"color": "blue"}}});
    ds.publish(json!([blue, red.clone()])).await;
    assert_eq!(deltas(&mut client, 1).await, vec![red]);
    assert_silent(&mut client, Duration::from_millis(150)).await;
}
