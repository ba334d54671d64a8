//! Chat, Cursors, Messaging and revocation across nodes sharing a Redis broker: each guarantee
//! of the single server, with consecutive connections on different nodes.

mod cluster;
mod collab;
mod common;

use std::time::Duration;

use cluster::{on_broker, Redis};
use collab::{assert_quiet, connect_as, try_connect_query};
use common::{backend_call, error_reply, ok_reply, Client, TestServer, WAIT};
use serde_json::{json, Value};
use snorky::service::AnyService;
use snorky::services::chat::ChatService;
use snorky::services::connections::ConnectionsBackend;
use snorky::services::cursors::CursorsService;
use snorky::services::limits::MessagingLimits;
use snorky::services::messaging::MessagingService;

/// A node of the test cluster, with its own service objects (as a separate process has).
struct Node {
    server: TestServer,
    messaging: MessagingService,
    chat: ChatService,
    cursors: CursorsService,
}

async fn node_with(redis: &Redis, name: &str, messaging_limits: MessagingLimits) -> Node {
    let messaging = MessagingService::with_limits("messaging", messaging_limits);
    let chat = ChatService::new("chat");
    let cursors = CursorsService::new("cursors");
    let server = TestServer::start_services(
        on_broker(collab::config(), redis, name),
        vec![
            AnyService::Messaging(messaging.clone()),
            AnyService::Chat(chat.clone()),
            AnyService::Cursors(cursors.clone()),
        ],
        vec![AnyService::Connections(ConnectionsBackend::new("connections"))],
    )
    .await;
    Node { server, messaging, chat, cursors }
}

async fn node(redis: &Redis, name: &str) -> Node {
    node_with(redis, name, MessagingLimits::default()).await
}

/// Three nodes on one Redis.
async fn three(redis: &Redis) -> [Node; 3] {
    [node(redis, "one").await, node(redis, "two").await, node(redis, "three").await]
}

async fn anonymous(node: &Node) -> Client {
    node.server.connect().await
}

async fn call(client: &mut Client, service: &str, command: &str, params: Value) -> Value {
    client.call(service, command, params, json!("c")).await
}

async fn ok(client: &mut Client, service: &str, command: &str, params: Value) -> Value {
    let reply = call(client, service, command, params.clone()).await;
    assert_eq!(reply["message"]["type"], "response", "{service}.{command}({params}): {reply}");
    reply["message"]["data"].clone()
}

async fn fails(client: &mut Client, service: &str, command: &str, params: Value, text: &str) {
    let reply = call(client, service, command, params.clone()).await;
    assert_eq!(reply, error_reply(service, &json!("c"), text), "{service}.{command}({params})");
}

// ---------------------------------------------------------------------------------------------
// Messaging

async fn register(client: &mut Client, name: &str) {
    assert_eq!(ok(client, "messaging", "registerParticipant", json!({"name": name})).await, Value::Null);
}

fn delivered(sender: &str, dest: &str, body: &Value) -> Value {
    json!({"service": "messaging", "message": {"type": "message", "sender": sender, "dest": dest, "body": body}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_is_unique_across_the_cluster_and_listed_everywhere() {
    let redis = Redis::start();
    let nodes = three(&redis).await;
    let mut on_one = anonymous(&nodes[0]).await;
    let mut on_two = anonymous(&nodes[1]).await;
    let mut on_three = anonymous(&nodes[2]).await;
    register(&mut on_one, "alice").await;
    fails(&mut on_two, "messaging", "registerParticipant", json!({"name": "alice"}), "Name already registered").await;
    fails(&mut on_one, "messaging", "registerParticipant", json!({"name": "alice"}), "Name already registered").await;
    register(&mut on_two, "bob").await;
    register(&mut on_three, "carol").await;
    register(&mut on_three, "Zed").await;
    for client in [&mut on_one, &mut on_two, &mut on_three] {
        assert_eq!(
            ok(client, "messaging", "listParticipants", json!({})).await,
            json!(["Zed", "alice", "bob", "carol"])
        );
    }
    // Each node's introspection shows its own connections' names.
    assert_eq!(nodes[2].messaging.participants(), vec!["Zed", "carol"]);
    // Unregistering: only the holder, wherever the caller is.
    fails(&mut on_two, "messaging", "unregisterParticipant", json!({"name": "alice"}), "Invalid participant").await;
    fails(&mut on_two, "messaging", "unregisterParticipant", json!({"name": "nobody"}), "Unknown participant").await;
    assert_eq!(ok(&mut on_one, "messaging", "unregisterParticipant", json!({"name": "alice"})).await, Value::Null);
    register(&mut on_two, "alice").await;
    assert_eq!(
        ok(&mut on_three, "messaging", "listParticipants", json!({})).await,
        json!(["Zed", "alice", "bob", "carol"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_reaches_a_name_on_another_node_in_the_order_sent() {
    let redis = Redis::start();
    let nodes = three(&redis).await;
    let mut alice = anonymous(&nodes[0]).await;
    let mut bob = anonymous(&nodes[1]).await;
    let mut carol = anonymous(&nodes[2]).await;
    register(&mut alice, "alice").await;
    register(&mut bob, "bob").await;
    register(&mut carol, "carol").await;
    for n in 0..20 {
        assert_eq!(
            ok(&mut alice, "messaging", "send", json!({"sender": "alice", "dest": "bob", "body": n})).await,
            Value::Null
        );
    }
    for n in 0..20 {
        assert_eq!(bob.recv().await, delivered("alice", "bob", &json!(n)), "in the order sent");
    }
    // To oneself, and to a name on the same node as the sender.
    register(&mut alice, "alice-2").await;
    // The push comes before the reply, on the sender's own connection.
    let push = alice
        .call("messaging", "send", json!({"sender": "alice", "dest": "alice-2", "body": {"x": [1]}}), json!(9))
        .await;
    assert_eq!(push, delivered("alice", "alice-2", &json!({"x": [1]})));
    assert_eq!(alice.recv().await, ok_reply("messaging", &json!(9), &Value::Null));
    // The sender must hold the sender name; the destination must exist somewhere.
    fails(&mut carol, "messaging", "send", json!({"sender": "bob", "dest": "alice", "body": 1}), "Invalid sender")
        .await;
    fails(
        &mut carol,
        "messaging",
        "send",
        json!({"sender": "carol", "dest": "dave", "body": 1}),
        "Unknown destination",
    )
    .await;
    assert_quiet(&mut carol, "messaging").await;
    assert_quiet(&mut bob, "messaging").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connections_names_are_freed_on_every_node() {
    let redis = Redis::start();
    let nodes = three(&redis).await;
    let mut leaving = anonymous(&nodes[0]).await;
    let mut staying = anonymous(&nodes[1]).await;
    register(&mut leaving, "a").await;
    register(&mut leaving, "b").await;
    register(&mut staying, "c").await;
    leaving.close().await;
    let mut elsewhere = anonymous(&nodes[2]).await;
    common::eventually(WAIT, "the closed connection's names to be freed in Redis", || async {
        redis.cli(&["HKEYS", "{snorky}:messaging:messaging:names"]) == "c"
    })
    .await;
    fails(&mut staying, "messaging", "send", json!({"sender": "c", "dest": "a", "body": 1}), "Unknown destination")
        .await;
    register(&mut elsewhere, "a").await;
    assert_eq!(ok(&mut staying, "messaging", "listParticipants", json!({})).await, json!(["a", "c"]));
    // A dropped TCP connection too.
    let mut dropped = anonymous(&nodes[0]).await;
    register(&mut dropped, "d").await;
    drop(dropped);
    common::eventually(WAIT, "the dropped connection's name to be freed", || async {
        !redis.cli(&["HKEYS", "{snorky}:messaging:messaging:names"]).contains('d')
    })
    .await;
    // Nothing of the node's is left in Redis but its live connections' names.
    assert_eq!(redis.cli(&["HLEN", &format!("{{snorky}}:messaging:messaging:node:{}", node_id(&nodes[0]).await)]), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_participants_bounds_the_whole_cluster() {
    let redis = Redis::start();
    let limits = MessagingLimits { max_participants: 3, ..MessagingLimits::default() };
    let one = node_with(&redis, "one", limits).await;
    let two = node_with(&redis, "two", limits).await;
    let mut on_one = anonymous(&one).await;
    let mut on_two = anonymous(&two).await;
    register(&mut on_one, "a").await;
    register(&mut on_two, "b").await;
    register(&mut on_one, "c").await;
    fails(&mut on_two, "messaging", "registerParticipant", json!({"name": "d"}), "Too many participants").await;
    fails(&mut on_one, "messaging", "registerParticipant", json!({"name": "d"}), "Too many participants").await;
    ok(&mut on_one, "messaging", "unregisterParticipant", json!({"name": "a"})).await;
    register(&mut on_two, "d").await;
    assert_eq!(ok(&mut on_one, "messaging", "listParticipants", json!({})).await, json!(["b", "c", "d"]));
}

/// The node id a server announces on `/health`.
async fn node_id(node: &Node) -> String {
    let health = common::http_get(&format!("http://{}/health", node.server.backend)).await.json();
    health["node"].as_str().expect("a node id").to_owned()
}

// ---------------------------------------------------------------------------------------------
// Revocation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_on_one_node_closes_every_nodes_connections_and_refuses_older_tokens_everywhere() {
    let redis = Redis::start();
    let nodes = three(&redis).await;
    let token = collab::token("alice");
    let query = format!("?token={token}");
    let mut on_one = try_connect_query(&nodes[0].server, &query).await.expect("alice connects");
    let mut on_two = connect_as(&nodes[1].server, "alice").await;
    let mut also_two = connect_as(&nodes[1].server, "alice").await;
    let mut bob = connect_as(&nodes[0].server, "bob").await;

    let answer = backend_call(&nodes[2].server, "connections", "disconnect", json!({"identity": "alice"})).await;
    assert_eq!(answer["message"]["data"], json!({"disconnected": 3}), "counted on every node: {answer}");
    for tab in [&mut on_one, &mut on_two, &mut also_two] {
        assert_eq!(collab::close_code(tab).await, 4501);
    }
    for node in &nodes {
        let (status, body) = collab::refusal(try_connect_query(&node.server, &query).await);
        assert_eq!((status, body.as_str()), (401, "Invalid connection token: revoked"));
    }
    assert_quiet(&mut bob, "chat").await;
    // A node that starts later learns it from Redis.
    let late = node(&redis, "late").await;
    let (status, _) = collab::refusal(try_connect_query(&late.server, &query).await);
    assert_eq!(status, 401);
    // A token issued after the revocation works on every node.
    let later = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs() + 2;
    let fresh = snorky::tokens::issue_at("alice", collab::SECRET.as_bytes(), later, Duration::from_secs(3600), None);
    for node in nodes.iter().chain([&late]) {
        let mut again = try_connect_query(&node.server, &format!("?token={fresh}")).await.expect("a fresh token");
        assert_quiet(&mut again, "chat").await;
    }
    // Nobody connected anywhere: nothing closed. (The token is issued first: issued in a
    // later second than the revocation, it would be good.)
    let carol = collab::token("carol");
    let answer = backend_call(&nodes[0].server, "connections", "disconnect", json!({"identity": "carol"})).await;
    assert_eq!(answer["message"]["data"], json!({"disconnected": 0}));
    let (status, _) = collab::refusal(try_connect_query(&nodes[1].server, &format!("?token={carol}")).await);
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_revocation_record_is_bounded_by_the_window_and_max_revocations() {
    let redis = Redis::start();
    let mut config = on_broker(collab::config(), &redis, "bounded");
    config.max_revocations = 3;
    let server = TestServer::start_services(
        config,
        vec![],
        vec![AnyService::Connections(ConnectionsBackend::new("connections"))],
    )
    .await;
    for n in 0..10 {
        backend_call(&server, "connections", "disconnect", json!({"identity": format!("user-{n}")})).await;
    }
    assert_eq!(redis.cli(&["ZCARD", "{snorky}:revocations"]), "3");
    assert_eq!(
        redis.cli(&["ZRANGE", "{snorky}:revocations", "0", "-1"]).lines().collect::<Vec<_>>(),
        ["user-7", "user-8", "user-9"]
    );
}
