//! DataSync across nodes sharing a Redis broker: a subscription authorized through one node is
//! acquired on another; deltas published through any node reach every subscriber on every node
//! exactly once, in one order; the timeouts, the idempotency keys and the bounds hold
//! cluster-wide; a client resumes on another node exactly after the offset it applied; a node
//! killed with SIGKILL and Redis going away lose nothing silently.

mod cluster;
mod collab;
mod common;
mod proxy;

use std::time::Duration;

use cluster::{node_id, on_broker, Redis};
use common::{error_reply, ok_reply, test_config, within, Client, TestServer, KEY, WAIT};
use proxy::CutProxy;
use serde_json::{json, Value};
use snorky::datasync::{DataSyncBackend, DataSyncService, Dealer, Limits};
use snorky::server::ServerConfig;
use snorky::service::AnyService;

/// The node timeout of the test nodes (`cluster::on_broker`).
const NODE_TIMEOUT: Duration = Duration::from_secs(3);

/// A node with `datasync` (a Broadcast dealer `all` and a Simple dealer `by_owner` on Task) and
/// `datasync_backend`, on the broker.
async fn node(redis: &Redis, name: &str) -> TestServer {
    node_with(on_broker(test_config(), redis, name), Limits::default()).await
}

async fn node_with(config: ServerConfig, limits: Limits) -> TestServer {
    let dealers = vec![Dealer::broadcast("all", "Task"), Dealer::simple_field("by_owner", "Task", "owner")];
    let datasync = DataSyncService::with_limits("datasync", dealers, limits).expect("distinct dealer names");
    let backend = DataSyncBackend::new("datasync_backend", &datasync);
    TestServer::start_services(config, vec![AnyService::DataSync(datasync)], vec![AnyService::DataSyncBackend(backend)])
        .await
}

/// Three nodes on one Redis.
async fn three(redis: &Redis) -> [TestServer; 3] {
    [node(redis, "one").await, node(redis, "two").await, node(redis, "three").await]
}

/// `POST /backend` of `node`; returns the HTTP status and the body.
async fn backend(node: &TestServer, command: &str, params: Value) -> (u16, Value) {
    let body = json!({"service": "datasync_backend", "message": {"command": command, "params": params}});
    let answer = common::post_backend(node, Some(KEY), body.to_string()).await;
    let value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    (answer.status, value)
}

async fn authorize(node: &TestServer, items: Value) -> String {
    authorize_with(node, json!({"items": items})).await
}

/// `authorizeSubscription` with `params`; returns the token.
async fn authorize_with(node: &TestServer, params: Value) -> String {
    let (status, reply) = backend(node, "authorizeSubscription", params).await;
    assert_eq!(status, 200, "{reply}");
    reply["message"]["data"].as_str().unwrap_or_else(|| panic!("authorized: {reply}")).to_owned()
}

async fn authorize_all(node: &TestServer) -> String {
    authorize(node, json!([{"dealer": "all", "query": null}])).await
}

/// Authorizes `all` for the connections of `identity` only.
async fn authorize_as(node: &TestServer, identity: &str) -> String {
    authorize_with(node, json!({"items": [{"dealer": "all", "query": null}], "identity": identity})).await
}

fn inserts(ids: impl IntoIterator<Item = u64>) -> Value {
    ids.into_iter().map(|id| json!({"type": "insert", "model": "Task", "data": {"id": id, "owner": id % 3}})).collect()
}

async fn publish(node: &TestServer, deltas: Value) {
    publish_keyed(node, deltas, None).await;
}

async fn publish_keyed(node: &TestServer, deltas: Value, key: Option<&str>) {
    let mut params = json!({"deltas": deltas});
    if let Some(key) = key {
        params["key"] = json!(key);
    }
    let (status, reply) = backend(node, "publishDeltas", params).await;
    assert_eq!((status, &reply["message"]["type"]), (200, &json!("response")), "{reply}");
}

/// What a client applied: the ids of its deltas, and the offset of the last.
#[derive(Default, Debug)]
struct Applied {
    ids: Vec<u64>,
    last: Option<String>,
}

impl Applied {
    fn apply(&mut self, frame: &Value, token: Option<&str>) {
        let message = &frame["message"];
        assert_eq!(message["type"], "delta", "{frame}");
        if let Some(token) = token {
            assert_eq!(message["subscription"], token, "{frame}");
            self.last = Some(message["offset"].as_str().unwrap_or_else(|| panic!("an offset: {frame}")).to_owned());
        } else {
            assert!(message.get("offset").is_none(), "a 0.1 delta: {frame}");
        }
        self.ids.push(message["delta"]["data"]["id"].as_u64().unwrap_or_else(|| panic!("an id: {frame}")));
    }
}

/// Sends `acquireSubscription` (opted in when `offsets`), applying the deltas that come before
/// the reply; returns the reply.
async fn acquire(client: &mut Client, token: &str, offsets: bool, after: Option<&str>, applied: &mut Applied) -> Value {
    let mut params = json!({"token": token});
    if offsets {
        params["offsets"] = json!(true);
    }
    if let Some(after) = after {
        params["after"] = json!(after);
    }
    client.request("datasync", "acquireSubscription", params, json!("acquire")).await;
    loop {
        let frame = within(Duration::from_secs(30), "the acquire's reply", client.recv()).await;
        if frame["message"]["callId"] == "acquire" {
            return frame;
        }
        applied.apply(&frame, offsets.then_some(token));
    }
}

/// Acquires, asserting success; returns the offset of the reply (opted in) or `None`.
async fn acquired(client: &mut Client, token: &str, offsets: bool, applied: &mut Applied) -> Option<String> {
    let reply = acquire(client, token, offsets, None, applied).await;
    assert_eq!(reply["message"]["type"], "response", "{reply}");
    reply["message"]["data"]["offset"].as_str().map(str::to_owned)
}

async fn read_until(client: &mut Client, token: Option<&str>, applied: &mut Applied, total: usize) {
    while applied.ids.len() < total {
        let frame = client.recv().await;
        applied.apply(&frame, token);
    }
}

/// A request answered at once: its reply being the next frame proves nothing else was queued.
async fn barrier(client: &mut Client) {
    let reply = client.call("datasync", "noSuchCommand", json!({}), json!("barrier")).await;
    assert_eq!(reply, error_reply("datasync", &json!("barrier"), "Unknown command"), "nothing more arrived");
}

/// A client that connects to `node` through a proxy that can cut it.
async fn connect_through(proxy: &CutProxy) -> Client {
    let (ws, _) = within(WAIT, "the WebSocket handshake", tokio_tungstenite::connect_async(proxy.ws_url()))
        .await
        .expect("the server accepts the connection");
    Client { ws, pings: 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorized_on_one_node_acquired_on_others_deltas_from_every_node_reach_everyone_once_in_order() {
    let redis = Redis::start();
    let [one, two, three] = three(&redis).await;
    // Authorized through the third node; deltas published before anyone acquires.
    let (plain, opted) = (authorize_all(&three).await, authorize_all(&three).await);
    publish(&three, inserts(1..=3)).await;
    let mut on_one = one.connect().await;
    let mut on_two = two.connect().await;
    let (mut plain_applied, mut opted_applied) = (Applied::default(), Applied::default());
    assert_eq!(acquired(&mut on_one, &plain, false, &mut plain_applied).await, None);
    let position = acquired(&mut on_two, &opted, true, &mut opted_applied).await.expect("an offset");
    assert!(position.contains('-'), "a broker's offsets name their epoch: {position}");
    assert_eq!(plain_applied.ids, vec![1, 2, 3], "published between authorization and acquisition");
    assert_eq!(opted_applied.ids, vec![1, 2, 3]);
    // Publishes through every node's backend, one with no subscriber at all.
    for n in 4..=60 {
        let through = [&one, &two, &three][usize::try_from(n % 3).expect("small")];
        publish(through, inserts([n])).await;
    }
    read_until(&mut on_one, None, &mut plain_applied, 60).await;
    read_until(&mut on_two, Some(&opted), &mut opted_applied, 60).await;
    let expected: Vec<u64> = (1..=60).collect();
    assert_eq!(plain_applied.ids, expected, "once each, in publish order");
    assert_eq!(opted_applied.ids, expected);
    barrier(&mut on_one).await;
    barrier(&mut on_two).await;
    // A subscription sees only what its items allow, on any node.
    let by_owner = authorize(&one, json!([{"dealer": "by_owner", "query": 1}])).await;
    let mut on_three = three.connect().await;
    let mut owned = Applied::default();
    acquired(&mut on_three, &by_owner, false, &mut owned).await;
    publish(&two, inserts(61..=66)).await;
    read_until(&mut on_three, None, &mut owned, 2).await;
    assert_eq!(owned.ids, vec![61, 64]);
    barrier(&mut on_three).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_held_on_one_node_is_no_such_subscription_on_another() {
    let redis = Redis::start();
    let [one, two, _three] = three(&redis).await;
    let token = authorize_all(&one).await;
    let mut holder = one.connect().await;
    let mut applied = Applied::default();
    acquired(&mut holder, &token, true, &mut applied).await;
    let mut other = two.connect().await;
    let reply = acquire(&mut other, &token, false, None, &mut applied).await;
    assert_eq!(reply, error_reply("datasync", &json!("acquire"), "No such subscription"));
    // Opted in without an offset: refused too, within a moment (only a resume after an offset
    // waits for the holder to go, see below).
    let started = std::time::Instant::now();
    let reply = acquire(&mut other, &token, true, None, &mut applied).await;
    assert_eq!(reply, error_reply("datasync", &json!("acquire"), "No such subscription"));
    assert!(started.elapsed() < Duration::from_secs(1), "no offset, no wait");
    // The holder keeps it, and a second acquire on the same connection is refused too.
    publish(&two, inserts([1])).await;
    read_until(&mut holder, Some(&token), &mut applied, 1).await;
    let reply = acquire(&mut holder, &token, true, None, &mut applied).await;
    assert_eq!(reply, error_reply("datasync", &json!("acquire"), "No such subscription"));
    // Cancelled on its node, it is gone everywhere.
    let reply = holder.call("datasync", "cancelSubscription", json!({"token": token}), json!("c")).await;
    assert_eq!(reply, ok_reply("datasync", &json!("c"), &Value::Null));
    let reply = acquire(&mut other, &token, false, None, &mut applied).await;
    assert_eq!(reply, error_reply("datasync", &json!("acquire"), "No such subscription"));
    assert_eq!(redis.cli(&["KEYS", "*datasync:datasync:sub:*"]), "", "its record went");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_with_an_offset_waits_for_the_holder_on_another_node_to_go() {
    let redis = Redis::start();
    let [one, two, three] = three(&redis).await;
    let token = authorize_all(&three).await;
    let mut first = one.connect().await;
    let mut applied = Applied::default();
    let position = acquired(&mut first, &token, true, &mut applied).await.expect("an offset");
    publish(&three, inserts(1..=3)).await;
    read_until(&mut first, Some(&token), &mut applied, 3).await;
    let after = applied.last.clone().expect("an offset");
    assert_ne!(after, position);
    // Still held open on node one: node two waits, then refuses.
    let mut second = two.connect().await;
    let started = std::time::Instant::now();
    let reply = acquire(&mut second, &token, true, Some(&after), &mut applied).await;
    assert_eq!(reply, error_reply("datasync", &json!("acquire"), "No such subscription"));
    assert!(started.elapsed() >= Duration::from_secs(2), "it gave the holder time: {:?}", started.elapsed());
    // The holder goes while node two waits: node two takes over exactly after the offset.
    let resume = tokio::spawn(async move {
        let mut applied = Applied::default();
        let reply = acquire(&mut second, &token, true, Some(&after), &mut applied).await;
        (second, reply, applied, token)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish(&three, inserts(4..=5)).await;
    first.close().await;
    let (mut second, reply, mut applied, token) = within(WAIT, "the resume", resume).await.expect("no panic");
    assert_eq!(reply["message"]["type"], "response", "{reply}");
    read_until(&mut second, Some(&token), &mut applied, 2).await;
    assert_eq!(applied.ids, vec![4, 5]);
    barrier(&mut second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_mid_batch_on_one_node_resumes_on_another_with_exactly_the_missing_deltas() {
    const TOTAL: u64 = 5_000;
    let redis = Redis::start();
    let [one, two, three] = three(&redis).await;
    let token = authorize_all(&three).await;
    let proxy = CutProxy::start(one.frontend).await;
    let mut client = connect_through(&proxy).await;
    let mut applied = Applied::default();
    acquired(&mut client, &token, true, &mut applied).await;
    publish(&three, inserts(1..=TOTAL)).await;
    read_until(&mut client, Some(&token), &mut applied, 50).await;
    // The network goes: what node one wrote into it is lost, and nobody sends a close frame.
    proxy.cut();
    drop(client);
    let after = applied.last.clone().expect("an offset");
    let mut again = two.connect().await;
    let reply =
        within(Duration::from_secs(30), "the resume", acquire(&mut again, &token, true, Some(&after), &mut applied))
            .await;
    assert_eq!(reply["message"]["data"], json!({"offset": after}), "{reply}");
    publish(&one, inserts([TOTAL + 1])).await;
    read_until(&mut again, Some(&token), &mut applied, usize::try_from(TOTAL + 1).expect("small")).await;
    assert_eq!(applied.ids, (1..=TOTAL + 1).collect::<Vec<_>>(), "every delta once, in order");
    barrier(&mut again).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_0_1_client_resumes_on_another_node_after_what_was_written() {
    let redis = Redis::start();
    let [one, two, three] = three(&redis).await;
    let token = authorize_all(&three).await;
    let mut first = one.connect().await;
    let mut applied = Applied::default();
    acquired(&mut first, &token, false, &mut applied).await;
    publish(&three, inserts(1..=10)).await;
    read_until(&mut first, None, &mut applied, 10).await;
    first.close().await;
    publish(&three, inserts(11..=12)).await;
    let mut second = two.connect().await;
    // The release reaches Redis once node one's writer is done: the acquire waits for it.
    acquired(&mut second, &token, false, &mut applied).await;
    read_until(&mut second, None, &mut applied, 12).await;
    assert_eq!(applied.ids, (1..=12).collect::<Vec<_>>());
    barrier(&mut second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquisition_redis_answers_too_late_does_not_keep_the_subscription_held() {
    let redis = Redis::start();
    let (one, two) = (node(&redis, "one").await, node(&redis, "two").await);
    let mut applied = Applied::default();
    // Node one already follows the stream, so the acquisition below goes straight to Redis.
    let mut other = one.connect().await;
    acquired(&mut other, &authorize_all(&one).await, true, &mut applied).await;
    let token = authorize_all(&one).await;
    let mut first = one.connect().await;
    // Redis stalls: the acquisition gets no answer in time, but runs once Redis goes on.
    redis.freeze(true);
    let reply = acquire(&mut first, &token, true, None, &mut applied).await;
    redis.freeze(false);
    assert_eq!(reply, error_reply("datasync", &json!("acquire"), "Service unavailable"));
    // The client tries again, on another node: node one gives the subscription back, so it is
    // acquired there rather than held forever by a connection that was told it failed.
    let mut second = two.connect().await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let reply = acquire(&mut second, &token, true, None, &mut applied).await;
        if reply["message"]["type"] == "response" {
            break;
        }
        assert_eq!(reply, error_reply("datasync", &json!("acquire"), "No such subscription"));
        assert!(std::time::Instant::now() < deadline, "the subscription was never given back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    publish(&one, inserts([7])).await;
    read_until(&mut second, Some(&token), &mut applied, 1).await;
}

/// The Redis record of subscription `token`.
fn record_key(token: &str) -> String {
    format!("{{snorky}}:datasync:datasync:sub:{token}")
}

/// A subscription a client of node `one` held (with offsets, delta 1 received) and left:
/// returns the client's view, the token and the lease it held, once node one released it.
/// `reaped`: meanwhile put back to waiting as when the other nodes take node one for dead.
async fn held_and_left(redis: &Redis, one: &TestServer, reaped: bool) -> (Applied, String, String) {
    let mut applied = Applied::default();
    let token = authorize_all(one).await;
    let mut first = one.connect().await;
    acquired(&mut first, &token, true, &mut applied).await;
    publish(one, inserts([1])).await;
    read_until(&mut first, Some(&token), &mut applied, 1).await;
    let record = record_key(&token);
    let lease = redis.cli(&["HGET", &record, "lease"]);
    if reaped {
        redis.cli(&["HSET", &record, "state", "w", "holder", "", "exact", "0"]);
        redis.cli(&["SREM", &format!("{{snorky}}:datasync:datasync:held:{}", node_id(redis, "one")), &token]);
    }
    drop(first);
    // A release moves the lease on.
    within(WAIT, "the release", async {
        while redis.cli(&["HGET", &record, "lease"]) == lease {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(redis.cli(&["HGET", &record, "state"]), "w");
    (applied, token, lease)
}

/// Acquires `token` again on a new connection to `node`, after the last delta applied.
async fn resumed(node: &TestServer, token: &str, applied: &mut Applied) -> Client {
    let mut client = node.connect().await;
    let after = applied.last.clone();
    let reply = acquire(&mut client, token, true, after.as_deref(), applied).await;
    assert_eq!(reply["message"]["type"], "response", "{reply}");
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_redis_gives_this_node_but_no_connection_here_holds_resumes_at_once() {
    // Redis says node one holds the subscription, yet none of its connections does: its
    // release was lost, or undone by a late write. A client that gives its offset takes it at
    // once rather than waiting for a release that will not come, and misses nothing.
    let redis = Redis::start();
    let one = node(&redis, "one").await;
    let (mut applied, token, _) = held_and_left(&redis, &one, false).await;
    redis.cli(&["HSET", &record_key(&token), "state", "h", "holder", &node_id(&redis, "one")]);
    publish(&one, inserts([2])).await;
    let mut second = resumed(&one, &token, &mut applied).await;
    read_until(&mut second, Some(&token), &mut applied, 2).await;
    assert_eq!(applied.ids, [1, 2]);
    barrier(&mut second).await;
}

/// How many scripts Redis has cached.
fn cached_scripts(redis: &Redis) -> usize {
    let info = redis.cli(&["INFO", "memory"]);
    let count = info.lines().find_map(|line| line.trim().strip_prefix("number_of_cached_scripts:"));
    count.and_then(|count| count.parse().ok()).unwrap_or_else(|| panic!("no script count in {info:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_loads_its_scripts_at_start_and_into_a_redis_that_restarted_empty() {
    // A script's first use must not meet NOSCRIPT: the client library would load it and run it
    // again, after commands the node sent meanwhile. DataSync alone has ten.
    let mut redis = Redis::start();
    let one = node(&redis, "one").await;
    assert!(cached_scripts(&redis) >= 10, "{} scripts loaded at start", cached_scripts(&redis));
    redis.restart();
    within(WAIT, "the node to load its scripts again", async {
        while !redis.answers() || cached_scripts(&redis) < 10 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // And it serves: a subscription authorized and acquired after the restart gets deltas.
    let mut applied = Applied::default();
    let token = authorize_all(&one).await;
    let mut client = one.connect().await;
    acquired(&mut client, &token, true, &mut applied).await;
    publish(&one, inserts([1])).await;
    read_until(&mut client, Some(&token), &mut applied, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reassertion_older_than_a_release_does_not_take_the_subscription_back() {
    reassertion_older_than_a_release(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reassertion_older_than_a_release_of_a_reaped_subscription_does_not_take_it_back() {
    reassertion_older_than_a_release(true).await;
}

/// After an outage a node tells Redis which subscriptions it still holds, from a list made
/// before it sent the script (a script Redis did not have runs late). One released in between
/// must stay released: were it held again by the node, no connection of which holds it, its
/// client could not resume it. `reaped`: the other nodes had taken the node for dead, putting
/// the subscription back to waiting, before its connection closed.
async fn reassertion_older_than_a_release(reaped: bool) {
    let redis = Redis::start();
    let one = node(&redis, "one").await;
    let (mut applied, token, lease) = held_and_left(&redis, &one, reaped).await;
    // The node's reassertion script, naming the lease it held, run late.
    let script =
        concat!(include_str!("../src/datasync/lua/prelude.lua"), include_str!("../src/datasync/lua/reassert.lua"));
    let node_one = node_id(&redis, "one");
    let lost = redis.cli(&[
        "EVAL",
        script,
        "2",
        "{snorky}:datasync:datasync:waiting",
        &format!("{{snorky}}:datasync:datasync:held:{node_one}"),
        &node_one,
        "{snorky}:datasync:datasync:sub:",
        &token,
        &lease,
    ]);
    assert_eq!(lost, token, "the node learns it no longer holds it");
    assert_eq!(redis.cli(&["HGET", &record_key(&token), "state"]), "w", "still waiting");
    resumed(&one, &token, &mut applied).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorization_and_resume_timeouts_hold_on_every_node() {
    let redis = Redis::start();
    let limits = Limits {
        subscription_timeout: Duration::from_millis(700),
        resume_timeout: Duration::from_millis(700),
        ..Limits::default()
    };
    let one = node_with(on_broker(test_config(), &redis, "one"), limits).await;
    let two = node_with(on_broker(test_config(), &redis, "two"), limits).await;
    let late = authorize_all(&one).await;
    let in_time = authorize_all(&one).await;
    let mut client = two.connect().await;
    let mut applied = Applied::default();
    acquired(&mut client, &in_time, true, &mut applied).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    let reply = acquire(&mut client, &late, false, None, &mut applied).await;
    assert_eq!(reply, error_reply("datasync", &json!("acquire"), "No such subscription"), "authorization expired");
    // Released on node two; acquired again on node one within the resume timeout, then not.
    client.close().await;
    let mut again = one.connect().await;
    acquired(&mut again, &in_time, true, &mut applied).await;
    again.close().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut last = two.connect().await;
    let reply = acquire(&mut last, &in_time, true, None, &mut applied).await;
    assert_eq!(reply, error_reply("datasync", &json!("acquire"), "No such subscription"), "resume expired");
    assert_eq!(redis.cli(&["KEYS", "*datasync:datasync:sub:*"]), "", "expired records are gone from Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sent_again_with_its_key_through_any_node_is_delivered_once() {
    let redis = Redis::start();
    let [one, two, three] = three(&redis).await;
    let token = authorize_all(&one).await;
    let mut client = two.connect().await;
    let mut applied = Applied::default();
    acquired(&mut client, &token, true, &mut applied).await;
    for node in [&one, &two, &three, &one] {
        publish_keyed(node, inserts(1..=2), Some("outbox:1-2")).await;
    }
    publish_keyed(&three, inserts(3..=3), Some("outbox:3")).await;
    read_until(&mut client, Some(&token), &mut applied, 3).await;
    assert_eq!(applied.ids, vec![1, 2, 3]);
    barrier(&mut client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_stream_is_bounded_by_count_and_bytes_and_what_it_lost_is_reported() {
    let redis = Redis::start();
    let limits = Limits {
        retention: snorky::datasync::Retention { deltas: 50, bytes: 16 * 1024, ..Default::default() },
        max_waiting: 3,
        ..Limits::default()
    };
    let one = node_with(on_broker(test_config(), &redis, "one"), limits).await;
    let two = node_with(on_broker(test_config(), &redis, "two"), limits).await;
    let token = authorize_all(&one).await;
    publish(&one, inserts(1..=200)).await;
    assert_eq!(redis.cli(&["XLEN", "{snorky}:datasync:datasync:stream"]), "50", "by count");
    // 1 KiB deltas: 16 KiB hold fewer than 16 of them.
    let big: Value = (201..=300)
        .map(|id| json!({"type": "insert", "model": "Task", "data": {"id": id, "text": "x".repeat(1024)}}))
        .collect();
    publish(&two, big).await;
    let kept: usize = redis.cli(&["XLEN", "{snorky}:datasync:datasync:stream"]).parse().expect("a length");
    assert!((1..16).contains(&kept), "by bytes: {kept} entries of 1 KiB");
    let bytes: usize = redis.cli(&["HGET", "{snorky}:datasync:datasync:meta", "bytes"]).parse().expect("a number");
    assert!(bytes <= 16 * 1024, "{bytes} bytes");
    // The subscription missed more than is retained: the client is told.
    let mut client = two.connect().await;
    let mut applied = Applied::default();
    let reply = acquire(&mut client, &token, true, None, &mut applied).await;
    assert_eq!(reply, error_reply("datasync", &json!("acquire"), "Offset not retained"));
    // Waiting subscriptions are bounded cluster-wide: the fourth evicts the first.
    let tokens = [authorize_all(&one).await, authorize_all(&two).await, authorize_all(&one).await];
    let fourth = authorize_all(&two).await;
    let reply = acquire(&mut client, &tokens[0], false, None, &mut applied).await;
    assert_eq!(reply, error_reply("datasync", &json!("acquire"), "No such subscription"), "evicted");
    acquired(&mut client, &fourth, false, &mut applied).await;
    assert!(applied.ids.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_cannot_crowd_the_others_out_of_the_waiting_subscriptions() {
    let redis = Redis::start();
    let limits = Limits { max_waiting: 10, max_waiting_per_identity: 2, ..Limits::default() };
    let one = node_with(on_broker(collab::config(), &redis, "one"), limits).await;
    let two = node_with(on_broker(collab::config(), &redis, "two"), limits).await;
    let bob = authorize_as(&one, "bob").await;
    let anonymous = authorize_all(&two).await;
    let mut alice = Vec::new();
    for node in [&one, &two, &one, &two] {
        alice.push(authorize_as(node, "alice").await);
    }
    // Alice's two oldest were dropped, wherever they were authorized; the others' were not.
    let mut applied = Applied::default();
    let mut alice_client = collab::connect_as(&two, "alice").await;
    for token in &alice[..2] {
        let reply = acquire(&mut alice_client, token, false, None, &mut applied).await;
        assert_eq!(reply, error_reply("datasync", &json!("acquire"), "No such subscription"), "evicted");
    }
    for token in &alice[2..] {
        acquired(&mut alice_client, token, false, &mut applied).await;
    }
    let mut bob_client = collab::connect_as(&one, "bob").await;
    acquired(&mut bob_client, &bob, false, &mut applied).await;
    let mut anonymous_client = one.connect().await;
    acquired(&mut anonymous_client, &anonymous, false, &mut applied).await;
    // Nothing of alice's waits: Redis keeps no set for her.
    let alices = "{snorky}:datasync:datasync:waiting=alice";
    assert_eq!(redis.cli(&["EXISTS", alices]), "0");
    assert_eq!(redis.cli(&["ZCARD", "{snorky}:datasync:datasync:waiting"]), "0");
    // Her connection closes: hers wait again, counted as hers, and the cap holds for them too.
    alice_client.close().await;
    common::eventually(WAIT, "alice's subscriptions to wait again", || async { redis.cli(&["ZCARD", alices]) == "2" })
        .await;
    authorize_as(&one, "alice").await;
    assert_eq!(redis.cli(&["ZCARD", alices]), "2");
    assert_eq!(redis.cli(&["ZCARD", "{snorky}:datasync:datasync:waiting"]), "2");
    let ttl: i64 = redis.cli(&["PTTL", alices]).parse().expect("a number");
    assert!(ttl > 0, "her set expires with its last deadline: {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_listens_for_deltas_only_while_it_holds_subscriptions() {
    let redis = Redis::start();
    let [one, two, _three] = three(&redis).await;
    let channels = || {
        redis.cli(&["PUBSUB", "NUMSUB", "{snorky}:datasync:datasync:deltas"]).lines().nth(1).unwrap_or("0").to_owned()
    };
    assert_eq!(channels(), "0");
    let (a, b) = (authorize_all(&two).await, authorize_all(&two).await);
    let mut first = one.connect().await;
    let mut second = one.connect().await;
    let mut applied = Applied::default();
    acquired(&mut first, &a, true, &mut applied).await;
    acquired(&mut second, &b, true, &mut applied).await;
    assert_eq!(channels(), "1", "one subscription for the node, not one per client");
    first.close().await;
    assert_eq!(channels(), "1");
    second.close().await;
    common::eventually(WAIT, "node one to stop listening", || async { channels() == "0" }).await;
    // And it listens again, missing nothing, when a subscription is acquired there again.
    publish(&two, inserts(1..=2)).await;
    let mut third = one.connect().await;
    let mut applied = Applied::default();
    acquired(&mut third, &a, true, &mut applied).await;
    assert_eq!(applied.ids, vec![1, 2]);
    publish(&two, inserts([3])).await;
    read_until(&mut third, Some(&a), &mut applied, 3).await;
    assert_eq!(applied.ids, vec![1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_is_a_503_to_the_backend_and_its_return_makes_holders_resync() {
    let mut redis = Redis::start();
    let [one, two, _three] = three(&redis).await;
    let token = authorize_all(&two).await;
    let mut client = one.connect().await;
    let mut applied = Applied::default();
    acquired(&mut client, &token, true, &mut applied).await;
    publish(&two, inserts(1..=2)).await;
    read_until(&mut client, Some(&token), &mut applied, 2).await;

    redis.stop();
    for (command, params) in [
        ("publishDeltas", json!({"deltas": inserts([3])})),
        ("authorizeSubscription", json!({"items": [{"dealer": "all", "query": null}]})),
    ] {
        let (status, reply) = backend(&two, command, params).await;
        assert_eq!(status, 503, "{command}: {reply}");
        assert_eq!(reply["message"]["message"], "Service unavailable", "{command}");
    }
    let mut other = two.connect().await;
    let reply = acquire(&mut other, &token, true, None, &mut applied).await;
    assert_eq!(reply, error_reply("datasync", &json!("acquire"), "Service unavailable"));

    // Redis comes back empty: what it held is gone, so the holder is told to resync.
    redis.restart();
    let (code, frames) = client.recv_close(Duration::from_secs(30)).await;
    assert_eq!(code, 1008, "closed so that the client acquires again: {frames:?}");
    let mut again = one.connect().await;
    let after = applied.last.clone();
    let reply = acquire(&mut again, &token, true, after.as_deref(), &mut applied).await;
    assert_eq!(reply, error_reply("datasync", &json!("acquire"), "No such subscription"), "it must resync");
    // And the cluster works again.
    common::eventually(Duration::from_secs(30), "the backend to reach Redis again", || async {
        backend(&two, "authorizeSubscription", json!({"items": [{"dealer": "all", "query": null}]})).await.0 == 200
    })
    .await;
    let token = authorize_all(&two).await;
    let mut applied = Applied::default();
    acquired(&mut again, &token, true, &mut applied).await;
    publish(&two, inserts([4])).await;
    read_until(&mut again, Some(&token), &mut applied, 1).await;
    assert_eq!(applied.ids, vec![4]);
}

// ---------------------------------------------------------------------------------------------
// A node killed with SIGKILL

const CHILD_BROKER: &str = "SNORKY_TEST_DATASYNC_CHILD_BROKER";
const CHILD_READY: &str = "SNORKY-TEST-DATASYNC-CHILD-READY";

/// A node in a process of its own (this test binary running [`child_node`]), killed with
/// SIGKILL: no goodbye to Redis, no close frames.
struct ChildNode {
    child: std::process::Child,
    frontend: std::net::SocketAddr,
}

impl ChildNode {
    async fn start(redis: &Redis, name: &str) -> ChildNode {
        use std::io::BufRead;
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut child = std::process::Command::new(exe)
            .args(["child_node", "--exact", "--ignored", "--nocapture", "--test-threads", "1"])
            .env(CHILD_BROKER, format!("{} {name}", redis.url()))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the test binary runs");
        let stdout = child.stdout.take().expect("its stdout");
        let ready = tokio::task::spawn_blocking(move || {
            std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                // libtest may have written the test's name on the same line first.
                .find_map(|line| line.split_once(CHILD_READY).map(|(_, rest)| rest.trim().to_owned()))
        });
        let address = within(WAIT, "the child node to start", ready).await.expect("the reader").expect("a ready line");
        ChildNode { child, frontend: address.parse().expect("an address") }
    }

    async fn connect(&self) -> Client {
        let url = format!("ws://{}/ws", self.frontend);
        let (ws, _) = within(WAIT, "the handshake", tokio_tungstenite::connect_async(url)).await.expect("accepted");
        Client { ws, pings: 0 }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The node of [`ChildNode`]: runs only in a child process (its broker in the environment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a node for the node-death test, run in a process of its own"]
async fn child_node() {
    let Ok(spec) = std::env::var(CHILD_BROKER) else { return };
    let Some((url, name)) = spec.split_once(' ') else { return };
    let node = node_with(cluster::on_broker_url(test_config(), url, name), Limits::default()).await;
    println!("{CHILD_READY} {}", node.frontend);
    // Killed by the test long before; bounded so that no orphan outlives a broken test.
    tokio::time::sleep(Duration::from_secs(120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_node_resume_on_another_without_a_gap_or_are_told() {
    let redis = Redis::start();
    let [one, two, _three] = three(&redis).await;
    let mut doomed = ChildNode::start(&redis, "doomed").await;
    let (opted, plain) = (authorize_all(&two).await, authorize_all(&two).await);
    let mut client = doomed.connect().await;
    let mut legacy = doomed.connect().await;
    let mut applied = Applied::default();
    acquired(&mut client, &opted, true, &mut applied).await;
    acquired(&mut legacy, &plain, false, &mut Applied::default()).await;
    publish(&two, inserts(1..=20)).await;
    read_until(&mut client, Some(&opted), &mut applied, 20).await;

    doomed.kill();
    let killed = std::time::Instant::now();
    publish(&two, inserts(21..=25)).await;
    // Reconnected to a live node at once: the acquire waits until the dead node is known dead.
    let mut again = one.connect().await;
    let after = applied.last.clone();
    let reply = within(
        NODE_TIMEOUT * 3,
        "the resume on a live node",
        acquire(&mut again, &opted, true, after.as_deref(), &mut applied),
    )
    .await;
    assert_eq!(reply["message"]["type"], "response", "{reply}");
    eprintln!("resumed {:?} after SIGKILL", killed.elapsed());
    read_until(&mut again, Some(&opted), &mut applied, 25).await;
    assert_eq!(applied.ids, (1..=25).collect::<Vec<_>>(), "nothing lost, nothing twice");
    barrier(&mut again).await;
    // A 0.1 client's position died with the node: it is told to fetch again.
    let mut plain_again = one.connect().await;
    let reply = acquire(&mut plain_again, &plain, false, None, &mut Applied::default()).await;
    assert_eq!(reply, error_reply("datasync", &json!("acquire"), "No such subscription"));
    // Its records are reaped: nothing of the dead node stays held in Redis.
    common::eventually(NODE_TIMEOUT * 3, "the dead node to be reaped", || async {
        redis.cli(&["KEYS", "*datasync:datasync:held:doomed*"]).is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_redis_for_a_moment_reads_what_it_missed_from_the_stream() {
    let redis = Redis::start();
    let [one, two, _three] = three(&redis).await;
    let token = authorize_all(&two).await;
    let mut client = one.connect().await;
    let mut applied = Applied::default();
    acquired(&mut client, &token, true, &mut applied).await;
    publish(&two, inserts(1..=5)).await;
    read_until(&mut client, Some(&token), &mut applied, 5).await;
    // Node one is the only node listening for deltas: its connection to Redis is the one with
    // one channel more than the others (every node also listens to the channels of the services
    // shared by all, such as revocations). Cut it; node two publishes while node one reconnects.
    let clients = redis.cli(&["CLIENT", "LIST"]);
    let subscribed: Vec<(&str, usize)> = clients
        .lines()
        .filter_map(|line| {
            let id = line.strip_prefix("id=")?.split(' ').next()?;
            let channels = line.split(" sub=").nth(1)?.split(' ').next()?.parse().ok()?;
            Some((id, channels))
        })
        .filter(|(_, channels)| *channels > 0)
        .collect();
    let most = subscribed.iter().map(|(_, channels)| *channels).max().unwrap_or(0);
    let listening: Vec<&str> = subscribed.iter().filter(|(_, channels)| *channels == most).map(|(id, _)| *id).collect();
    assert_eq!(listening.len(), 1, "{clients}");
    assert_eq!(redis.cli(&["CLIENT", "KILL", "ID", listening[0]]), "1");
    for n in 6..=30 {
        publish(&two, inserts([n])).await;
    }
    read_until(&mut client, Some(&token), &mut applied, 30).await;
    assert_eq!(applied.ids, (1..=30).collect::<Vec<_>>(), "nothing lost, nothing twice");
    barrier(&mut client).await;
    assert!(common::metric(&one, "snorky_broker_disconnections_total").await >= 1, "it did lose Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_carries_datasync_between_nodes() {
    let redis = cluster::RedisCluster::start();
    let config = |name: &str| cluster::on_broker_url(test_config(), &redis.url(), name);
    let one = node_with(config("one"), Limits { max_waiting: 2, ..Limits::default() }).await;
    let two = node_with(config("two"), Limits { max_waiting: 2, ..Limits::default() }).await;
    let token = authorize_all(&one).await;
    publish(&two, inserts(1..=2)).await;
    let mut client = two.connect().await;
    let mut applied = Applied::default();
    acquired(&mut client, &token, true, &mut applied).await;
    for n in 3..=20 {
        publish_keyed([&one, &two][usize::try_from(n % 2).expect("small")], inserts([n]), Some(&format!("k{n}"))).await;
    }
    publish_keyed(&one, inserts([20]), Some("k20")).await;
    read_until(&mut client, Some(&token), &mut applied, 20).await;
    assert_eq!(applied.ids, (1..=20).collect::<Vec<_>>());
    barrier(&mut client).await;
    // Released, then resumed on the other node after the offset.
    client.close().await;
    publish(&two, inserts([21])).await;
    let mut again = one.connect().await;
    let after = applied.last.clone();
    let reply = acquire(&mut again, &token, true, after.as_deref(), &mut applied).await;
    assert_eq!(reply["message"]["type"], "response", "{reply}");
    read_until(&mut again, Some(&token), &mut applied, 21).await;
    // Evictions (scripts touching records they build the names of) work on a cluster too.
    let first = authorize_all(&one).await;
    for _ in 0..2 {
        authorize_all(&two).await;
    }
    let reply = acquire(&mut again, &first, false, None, &mut applied).await;
    assert_eq!(reply, error_reply("datasync", &json!("acquire"), "No such subscription"));
    // Sharded pub/sub: the node listens on the shard channel of the service.
    let shard_channels: usize = redis
        .nodes
        .iter()
        .map(|node| node.cli(&["PUBSUB", "SHARDCHANNELS"]).lines().filter(|line| line.contains("datasync")).count())
        .sum();
    assert_eq!(shard_channels, 1);
}
