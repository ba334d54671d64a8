//! Chat, Cursors, Messaging and revocation across nodes sharing a Redis broker: each guarantee
//! of the single server, with consecutive connections on different nodes.

mod cluster;
mod collab;
mod common;

use std::time::Duration;

use cluster::{node_id, on_broker, on_broker_url, Proxy, Redis};
use collab::{assert_quiet, connect_as, try_connect_query, without_timestamp};
use common::{backend_call, error_reply, ok_reply, within, Client, TestServer, WAIT};
use serde_json::{json, Value};
use snorky::server::ServerConfig;
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
    node_on(on_broker(collab::config(), redis, name), messaging_limits).await
}

/// A node with `config` (its broker set).
async fn node_on(config: ServerConfig, messaging_limits: MessagingLimits) -> Node {
    let messaging = MessagingService::with_limits("messaging", messaging_limits);
    let chat = ChatService::new("chat");
    let cursors = CursorsService::new("cursors");
    let server = TestServer::start_services(
        config,
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
    assert_eq!(redis.cli(&["HLEN", &format!("{{snorky}}:messaging:messaging:node:{}", node_id(&redis, "one"))]), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_freed_by_a_sockjs_close_can_be_taken_on_another_node_once_the_close_returns() {
    let redis = Redis::start();
    let (first, second) = (node(&redis, "one").await, node(&redis, "two").await);
    // SockJS's raw WebSocket transport carries the same frames as /ws.
    let url = format!("ws://{}/sockjs/websocket", first.server.frontend);
    let (ws, _) = within(WAIT, "the SockJS handshake", tokio_tungstenite::connect_async(url)).await.expect("upgrades");
    let mut leaving = Client { ws, pings: 0 };
    register(&mut leaving, "a").await;
    leaving.close().await;
    // No waiting: the close frame came once the name was gone from Redis.
    let mut elsewhere = anonymous(&second).await;
    register(&mut elsewhere, "a").await;
    assert_eq!(ok(&mut elsewhere, "messaging", "listParticipants", json!({})).await, json!(["a"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_accepted_while_its_destination_unregisters_still_reaches_that_connection() {
    let redis = Redis::start();
    let (first, second) = (node(&redis, "one").await, node(&redis, "two").await);
    let mut alice = anonymous(&first).await;
    let mut bob = anonymous(&second).await;
    let mut carol = anonymous(&second).await;
    register(&mut alice, "alice").await;
    // Redis holds writes (PUBLISH and scripts among them) but answers reads: alice's send looks
    // bob up, then waits to publish while bob lets the name go. A lookup
    // held up behind a node's heartbeat misses the race; the scenario is then run again.
    for attempt in 1..=5 {
        register(&mut bob, "bob").await;
        redis.cli(&["CLIENT", "PAUSE", "10000", "WRITE"]);
        alice.request("messaging", "send", json!({"sender": "alice", "dest": "bob", "body": attempt}), json!(1)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        bob.request("messaging", "unregisterParticipant", json!({"name": "bob"}), json!(2)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        redis.cli(&["CLIENT", "UNPAUSE"]);
        let reply = alice.recv().await;
        let mut bobs = vec![bob.recv().await];
        let accepted = reply == ok_reply("messaging", &json!(1), &Value::Null);
        if accepted {
            bobs.push(bob.recv().await);
        }
        assert!(bobs.contains(&ok_reply("messaging", &json!(2), &Value::Null)), "bob let the name go: {bobs:?}");
        if accepted {
            // The message was bob's when alice sent it: bob gets it, and the name is free.
            assert!(bobs.contains(&delivered("alice", "bob", &json!(attempt))), "{bobs:?}");
            register(&mut carol, "bob").await;
            assert_quiet(&mut carol, "messaging").await;
            return;
        }
        assert_eq!(reply, error_reply("messaging", &json!(1), "Unknown destination"));
    }
    panic!("the send never looked bob up before the release");
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

/// The id of the node named `name` (as it registered itself in Redis).
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
    let fresh = snorky::tokens::issue_at("alice", collab::SECRET.as_bytes(), later, Duration::from_secs(3600), None)
        .expect("a short token");
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

// ---------------------------------------------------------------------------------------------
// Chat

async fn join(client: &mut Client, channel: &Value) -> Value {
    ok(client, "chat", "join", json!({"channel": channel})).await
}

fn presence(from: &str, channel: &Value, status: &str) -> Value {
    json!({"service": "chat", "message": {"type": "presence", "from": from, "channel": channel, "status": status}})
}

fn chat_message(from: &str, channel: &Value, body: &Value) -> Value {
    json!({"service": "chat", "message": {"type": "message", "from": from, "channel": channel, "body": body}})
}

fn read_receipt(channel: &Value) -> Value {
    json!({"service": "chat", "message": {"type": "read", "channel": channel}})
}

/// The next frame, with its timestamp checked and removed.
async fn next(client: &mut Client) -> Value {
    without_timestamp(client.recv().await)
}

/// `chat.send`, checking that the sender gets its message, then the reply.
async fn say(client: &mut Client, from: &str, channel: &Value, body: &Value) {
    let push = client.call("chat", "send", json!({"channel": channel, "body": body}), json!("say")).await;
    assert_eq!(without_timestamp(push), chat_message(from, channel, body), "the sender's push before its reply");
    assert_eq!(client.recv().await, ok_reply("chat", &json!("say"), &Value::Null));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_and_presence_span_the_nodes_and_an_identity_counts_once() {
    let redis = Redis::start();
    let nodes = three(&redis).await;
    let lobby = json!("lobby");
    let mut alice = connect_as(&nodes[0].server, "alice").await;
    assert_eq!(join(&mut alice, &lobby).await, json!({"members": ["alice"]}));
    let mut bob = connect_as(&nodes[1].server, "bob").await;
    assert_eq!(join(&mut bob, &lobby).await, json!({"members": ["alice", "bob"]}));
    assert_eq!(next(&mut alice).await, presence("bob", &lobby, "joined"));
    // join pushes nothing to the joiner.
    assert_quiet(&mut bob, "chat").await;
    // bob's second connection, on a third node: listed once, announced to nobody.
    let mut bob_tab = connect_as(&nodes[2].server, "bob").await;
    assert_eq!(join(&mut bob_tab, &lobby).await, json!({"members": ["alice", "bob"]}));
    let mut carol = connect_as(&nodes[2].server, "carol").await;
    assert_eq!(join(&mut carol, &lobby).await, json!({"members": ["alice", "bob", "carol"]}));
    assert_eq!(next(&mut alice).await, presence("carol", &lobby, "joined"));
    assert_eq!(next(&mut bob).await, presence("carol", &lobby, "joined"));
    assert_eq!(next(&mut bob_tab).await, presence("carol", &lobby, "joined"));
    for client in [&mut alice, &mut bob, &mut bob_tab, &mut carol] {
        assert_quiet(client, "chat").await;
    }
    assert_eq!(nodes[2].chat.members(&lobby), vec!["bob", "carol"], "this node's view");

    // One of bob's connections leaves (on node two): bob is still there (on node three).
    assert_eq!(ok(&mut bob, "chat", "leave", json!({"channel": "lobby"})).await, Value::Null);
    assert_quiet(&mut alice, "chat").await;
    assert_quiet(&mut bob_tab, "chat").await;
    let mut dave = connect_as(&nodes[0].server, "dave").await;
    assert_eq!(join(&mut dave, &lobby).await, json!({"members": ["alice", "bob", "carol", "dave"]}));
    assert_eq!(next(&mut alice).await, presence("dave", &lobby, "joined"));
    assert_eq!(next(&mut bob_tab).await, presence("dave", &lobby, "joined"));
    assert_eq!(next(&mut carol).await, presence("dave", &lobby, "joined"));
    // The last one leaves: the others are told on every node, bob's connections are not.
    assert_eq!(ok(&mut bob_tab, "chat", "leave", json!({"channel": "lobby"})).await, Value::Null);
    for client in [&mut alice, &mut carol, &mut dave] {
        assert_eq!(next(client).await, presence("bob", &lobby, "left"));
    }
    assert_quiet(&mut bob, "chat").await;
    assert_quiet(&mut bob_tab, "chat").await;
    // Rejoining is a first connection again.
    join(&mut bob, &lobby).await;
    for client in [&mut alice, &mut carol, &mut dave] {
        assert_eq!(next(client).await, presence("bob", &lobby, "joined"));
    }
    fails(&mut bob, "chat", "join", json!({"channel": "lobby"}), "Already joined").await;
    fails(&mut bob_tab, "chat", "leave", json!({"channel": "lobby"}), "Not joined").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnecting_anywhere_sends_left_once_the_identity_is_gone_from_every_node() {
    let redis = Redis::start();
    let nodes = three(&redis).await;
    let (a, b) = (json!("a"), json!(["b", 2]));
    let mut alice = connect_as(&nodes[0].server, "alice").await;
    let mut carol = connect_as(&nodes[1].server, "carol").await;
    join(&mut alice, &a).await;
    join(&mut carol, &b).await;
    let mut bob = connect_as(&nodes[2].server, "bob").await;
    let mut bob_tab = connect_as(&nodes[0].server, "bob").await;
    join(&mut bob, &a).await;
    join(&mut bob, &b).await;
    join(&mut bob_tab, &a).await;
    assert_eq!(next(&mut alice).await, presence("bob", &a, "joined"));
    assert_eq!(next(&mut carol).await, presence("bob", &b, "joined"));
    bob.close().await;
    // bob's tab on another node keeps him in "a"; "b" had only this connection.
    assert_eq!(next(&mut carol).await, presence("bob", &b, "left"));
    assert_quiet(&mut alice, "chat").await;
    drop(bob_tab);
    assert_eq!(next(&mut alice).await, presence("bob", &a, "left"));
    let mut eve = connect_as(&nodes[1].server, "eve").await;
    assert_eq!(join(&mut eve, &a).await, json!({"members": ["alice", "eve"]}));
    assert_eq!(join(&mut eve, &b).await, json!({"members": ["carol", "eve"]}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_every_member_on_every_node_the_senders_before_its_reply() {
    let redis = Redis::start();
    let nodes = three(&redis).await;
    let lobby = json!({"room": 1});
    let mut alice = connect_as(&nodes[0].server, "alice").await;
    let mut bob = connect_as(&nodes[1].server, "bob").await;
    let mut alice_tab = connect_as(&nodes[2].server, "alice").await;
    let mut outsider = connect_as(&nodes[2].server, "carol").await;
    join(&mut alice, &lobby).await;
    join(&mut bob, &lobby).await;
    join(&mut alice_tab, &lobby).await;
    assert_eq!(next(&mut alice).await, presence("bob", &lobby, "joined"));
    let reply = bob.call("chat", "send", json!({"channel": {"room": 1}, "body": "hi"}), json!(7)).await;
    assert_eq!(without_timestamp(reply), chat_message("bob", &lobby, &json!("hi")), "the push first");
    assert_eq!(bob.recv().await, ok_reply("chat", &json!(7), &Value::Null));
    assert_eq!(next(&mut alice).await, chat_message("bob", &lobby, &json!("hi")));
    assert_eq!(next(&mut alice_tab).await, chat_message("bob", &lobby, &json!("hi")));
    // Not to a connection of the channel's node that did not join; a body may be null.
    assert_quiet(&mut outsider, "chat").await;
    fails(&mut outsider, "chat", "send", json!({"channel": {"room": 1}, "body": null}), "Not joined").await;
    say(&mut alice_tab, "alice", &lobby, &Value::Null).await;
    for client in [&mut alice, &mut bob] {
        assert_eq!(next(client).await, chat_message("alice", &lobby, &Value::Null));
        assert_quiet(client, "chat").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_receipts_reach_the_callers_other_connections_on_other_nodes_only() {
    let redis = Redis::start();
    let nodes = three(&redis).await;
    let channel = json!({"room": 7});
    let mut tab1 = connect_as(&nodes[0].server, "alice").await;
    let mut tab2 = connect_as(&nodes[1].server, "alice").await;
    let mut tab3_elsewhere = connect_as(&nodes[2].server, "alice").await;
    let mut tab4_not_joined = connect_as(&nodes[2].server, "alice").await;
    let mut bob = connect_as(&nodes[2].server, "bob").await;
    join(&mut bob, &channel).await;
    join(&mut tab1, &channel).await;
    join(&mut tab2, &channel).await;
    join(&mut tab3_elsewhere, &json!("other")).await;
    assert_eq!(next(&mut bob).await, presence("alice", &channel, "joined"));
    assert_eq!(ok(&mut tab1, "chat", "read", json!({"channel": channel})).await, Value::Null);
    assert_eq!(next(&mut tab2).await, read_receipt(&channel));
    for client in [&mut tab1, &mut tab3_elsewhere, &mut tab4_not_joined, &mut bob] {
        assert_quiet(client, "chat").await;
    }
    // A connection that is not in the channel may mark it read for the tabs that are.
    ok(&mut tab4_not_joined, "chat", "read", json!({"channel": channel})).await;
    assert_eq!(next(&mut tab1).await, read_receipt(&channel));
    assert_eq!(next(&mut tab2).await, read_receipt(&channel));
    assert_quiet(&mut tab4_not_joined, "chat").await;
    assert_quiet(&mut bob, "chat").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_reply_means_the_next_event_from_any_node_arrives_and_nothing_from_before() {
    let redis = Redis::start();
    let nodes = three(&redis).await;
    let mut speaker = connect_as(&nodes[1].server, "speaker").await;
    let mut listeners = Vec::new();
    for round in 0..20 {
        let channel = json!(format!("fresh-{round}"));
        join(&mut speaker, &channel).await;
        say(&mut speaker, "speaker", &channel, &json!("before")).await;
        let mut listener = connect_as(&nodes[round % 3].server, &format!("listener-{round}")).await;
        join(&mut listener, &channel).await;
        assert_eq!(next(&mut speaker).await["message"]["status"], "joined");
        say(&mut speaker, "speaker", &channel, &json!(round)).await;
        assert_eq!(
            next(&mut listener).await,
            chat_message("speaker", &channel, &json!(round)),
            "only what followed its join"
        );
        listeners.push(listener);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_every_node_see_one_order_of_messages_and_presence() {
    const PER_SENDER: usize = 100;
    let redis = Redis::start();
    let nodes = three(&redis).await;
    let channel = json!("ordered");
    let mut listeners = Vec::new();
    for (index, name) in ["l1", "l2", "l3"].into_iter().enumerate() {
        let mut listener = connect_as(&nodes[index].server, name).await;
        join(&mut listener, &channel).await;
        listeners.push(listener);
    }
    // Skip the presence of the listeners that joined after each.
    for (index, listener) in listeners.iter_mut().enumerate() {
        for _ in index + 1..3 {
            assert_eq!(next(listener).await["message"]["status"], "joined");
        }
    }
    let mut senders = Vec::new();
    for node in &nodes {
        let mut sender = connect_as(&node.server, &format!("s{}", senders.len())).await;
        join(&mut sender, &channel).await;
        senders.push(sender);
    }
    let mut tasks = Vec::new();
    for (index, mut sender) in senders.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_SENDER {
                sender
                    .request("chat", "send", json!({"channel": "ordered", "body": {"s": index, "i": i}}), json!(i))
                    .await;
            }
            // A presence in the middle of the stream too.
            sender.request("chat", "leave", json!({"channel": "ordered"}), json!("leave")).await;
            sender
        }));
    }
    let mut kept = Vec::new();
    for task in tasks {
        kept.push(within(WAIT, "the senders to finish", task).await.expect("sender task"));
    }
    let mut sequences = Vec::new();
    for listener in &mut listeners {
        let mut events = Vec::new();
        let mut messages = 0;
        while messages < 3 * PER_SENDER || events.iter().filter(|e: &&Value| e["status"] == "left").count() < 3 {
            let frame = next(listener).await;
            if frame["message"]["type"] == "message" {
                messages += 1;
            }
            events.push(frame["message"].clone());
        }
        for index in 0..3 {
            let order: Vec<u64> = events
                .iter()
                .filter(|e| e["type"] == "message" && e["body"]["s"] == index)
                .map(|e| e["body"]["i"].as_u64().expect("i"))
                .collect();
            assert_eq!(order, (0..PER_SENDER as u64).collect::<Vec<_>>(), "sender {index} in order");
        }
        sequences.push(events);
    }
    assert_eq!(sequences[0], sequences[1], "every member sees one order");
    assert_eq!(sequences[1], sequences[2], "every member sees one order");
}

// ---------------------------------------------------------------------------------------------
// Cursors

fn cursor(handle: &Value, document: &Value, position: &Value, status: &Value, owner: &str) -> Value {
    json!({"publicHandle": handle, "document": document, "position": position, "status": status, "owner": owner})
}

fn cursor_push(kind: &str, cursor: &Value) -> Value {
    json!({"service": "cursors", "message": {"type": kind, "cursor": cursor}})
}

fn removed(handle: &Value, document: &Value) -> Value {
    cursor_push("cursorRemoved", &json!({"publicHandle": handle, "document": document}))
}

async fn create(client: &mut Client, private: &str, document: &Value, position: &Value) -> Value {
    let params = json!({"privateHandle": private, "document": document, "position": position, "status": "s"});
    let handle = ok(client, "cursors", "createCursor", params).await;
    assert!(handle.is_u64(), "a public handle: {handle}");
    handle
}

async fn join_document(client: &mut Client, document: &Value) -> Vec<Value> {
    let listing = ok(client, "cursors", "join", json!({"document": document})).await;
    listing["cursors"].as_array().unwrap_or_else(|| panic!("a listing: {listing}")).clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_of_every_node_are_listed_and_their_changes_reach_every_node() {
    let redis = Redis::start();
    let nodes = three(&redis).await;
    let doc = json!({"doc": 1});
    let mut alice = connect_as(&nodes[0].server, "alice").await;
    assert_eq!(join_document(&mut alice, &doc).await, Vec::<Value>::new());
    let a = create(&mut alice, "mine", &doc, &json!(1)).await;
    let mut bob = connect_as(&nodes[1].server, "bob").await;
    assert_eq!(join_document(&mut bob, &doc).await, vec![cursor(&a, &doc, &json!(1), &json!("s"), "alice")]);
    // The same private handle on another connection is another cursor.
    let b = create(&mut bob, "mine", &doc, &json!(2)).await;
    assert!(b.as_u64() > a.as_u64(), "handles grow in creation order: {a} < {b}");
    assert_eq!(alice.recv().await, cursor_push("cursorAdded", &cursor(&b, &doc, &json!(2), &json!("s"), "bob")));
    // bob's second connection, on the third node, gets bob's changes too (only the acting
    // connection is left out); carol sees both cursors in creation order.
    let mut bob_tab = connect_as(&nodes[2].server, "bob").await;
    let mut carol = connect_as(&nodes[2].server, "carol").await;
    join_document(&mut bob_tab, &doc).await;
    let listing = join_document(&mut carol, &doc).await;
    assert_eq!(
        listing,
        vec![cursor(&a, &doc, &json!(1), &json!("s"), "alice"), cursor(&b, &doc, &json!(2), &json!("s"), "bob")]
    );
    assert_eq!(nodes[2].cursors.member_count(&doc), 2, "this node's members");
    assert_eq!(nodes[1].cursors.cursor_count(&doc), 1, "this node's cursors");

    let update = json!({"privateHandle": "mine", "newData": {"position": {"line": 3}}});
    assert_eq!(ok(&mut bob, "cursors", "updateCursor", update).await, Value::Null);
    let moved = cursor_push("cursorUpdated", &cursor(&b, &doc, &json!({"line": 3}), &json!("s"), "bob"));
    for client in [&mut alice, &mut bob_tab, &mut carol] {
        assert_eq!(client.recv().await, moved);
    }
    assert_quiet(&mut bob, "cursors").await;
    // Removed: by removeCursor, by leaving, by disconnecting; each once, to every other member.
    assert_eq!(ok(&mut bob, "cursors", "removeCursor", json!({"privateHandle": "mine"})).await, Value::Null);
    for client in [&mut alice, &mut bob_tab, &mut carol] {
        assert_eq!(client.recv().await, removed(&b, &doc));
    }
    let c = create(&mut carol, "c", &doc, &Value::Null).await;
    for client in [&mut alice, &mut bob, &mut bob_tab] {
        assert_eq!(client.recv().await["message"]["type"], "cursorAdded");
    }
    carol.close().await;
    for client in [&mut alice, &mut bob, &mut bob_tab] {
        assert_eq!(client.recv().await, removed(&c, &doc));
    }
    assert_eq!(ok(&mut alice, "cursors", "leave", json!({"document": doc})).await, Value::Null);
    for client in [&mut bob, &mut bob_tab] {
        assert_eq!(client.recv().await, removed(&a, &doc));
        assert_quiet(client, "cursors").await;
    }
    fails(
        &mut alice,
        "cursors",
        "updateCursor",
        json!({"privateHandle": "mine", "newData": {"status": 1}}),
        "No such cursor",
    )
    .await;
    assert_eq!(join_document(&mut alice, &doc).await, Vec::<Value>::new());
    assert_eq!(redis.cli(&["HLEN", &format!("{{snorky}}:cursors:cursors:node:{}", node_id(&redis, "one"))]), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_listing_and_the_updates_after_it_follow_on_without_gap_or_repeat() {
    const MOVES: u64 = 150;
    let redis = Redis::start();
    let nodes = three(&redis).await;
    let doc = json!("busy");
    let mut mover = connect_as(&nodes[1].server, "mover").await;
    join_document(&mut mover, &doc).await;
    create(&mut mover, "m", &doc, &json!(0)).await;
    let moving = tokio::spawn(async move {
        for n in 1..=MOVES {
            let update = json!({"privateHandle": "m", "newData": {"position": n}});
            assert_eq!(ok(&mut mover, "cursors", "updateCursor", update).await, Value::Null);
        }
        mover
    });
    let mut watchers = Vec::new();
    for round in 0..12 {
        let mut watcher = connect_as(&nodes[round % 3].server, &format!("w{round}")).await;
        let listing = join_document(&mut watcher, &doc).await;
        let seen = listing[0]["position"].as_u64().expect("a position");
        watchers.push((watcher, seen));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _mover = within(WAIT, "the moves", moving).await.expect("the mover");
    for (watcher, seen) in &mut watchers {
        for n in *seen + 1..=MOVES {
            let push = watcher.recv().await;
            assert_eq!(push["message"]["cursor"]["position"], json!(n), "the update after {seen}, in order");
        }
        assert_quiet(watcher, "cursors").await;
    }
}

// ---------------------------------------------------------------------------------------------
// A node that dies, a node cut off, Redis going away

/// The node timeout of the test nodes (`cluster::on_broker`).
const NODE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long the survivors may take to reap a dead node: the node timeout, with slack for a
/// small shared machine.
const REAPED_WITHIN: Duration = Duration::from_secs(8);

const CHILD_BROKER: &str = "SNORKY_TEST_CHILD_BROKER";
const CHILD_READY: &str = "SNORKY-TEST-CHILD-READY";

/// A node in a process of its own: this test binary running [`child_node`]. Killed with SIGKILL
/// by [`ChildNode::kill`] (and when dropped).
struct ChildNode {
    child: std::process::Child,
    ws_url: String,
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
                // The harness may print the test's name on the same line first.
                .find_map(|line| line.split_once(CHILD_READY).map(|(_, rest)| rest.trim().to_owned()))
        });
        let address = within(WAIT, "the child node to start", ready).await.expect("the reader").expect("a ready line");
        ChildNode { child, ws_url: format!("ws://{address}/ws") }
    }

    async fn connect_as(&self, identity: &str) -> Client {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let request =
            format!("{}?token={}", self.ws_url, collab::token(identity)).into_client_request().expect("a URL");
        let (ws, _) = within(WAIT, "the handshake", tokio_tungstenite::connect_async(request)).await.expect("accepted");
        Client { ws, pings: 0 }
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): the process freezes with its connections open,
    /// as a node does that stalls (swapping, a paused VM), then goes on.
    fn freeze(&self, frozen: bool) {
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
    }

    /// SIGKILL: no goodbye to Redis, no close frames.
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
#[ignore = "a node for the node-death tests, run in a process of its own"]
async fn child_node() {
    let Ok(spec) = std::env::var(CHILD_BROKER) else { return };
    let Some((url, name)) = spec.split_once(' ') else { return };
    let node = node_on(on_broker_url(collab::config(), url, name), MessagingLimits::default()).await;
    println!("{CHILD_READY} {}", node.server.frontend);
    // Killed by the test long before; bounded so that no orphan outlives a broken test.
    tokio::time::sleep(Duration::from_secs(120)).await;
}

/// What a connection on a doomed node holds: a presence in `lobby`, a cursor in `doc`, a name.
async fn hold_everything(client: &mut Client, lobby: &Value, doc: &Value, name: &str) -> Value {
    join(client, lobby).await;
    join_document(client, doc).await;
    register(client, name).await;
    create(client, "c", doc, &json!("here")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_presences_cursors_and_names_go_within_the_node_timeout_with_one_push_each() {
    let redis = Redis::start();
    let (one, two) = (node(&redis, "one").await, node(&redis, "two").await);
    let mut doomed = ChildNode::start(&redis, "doomed").await;
    let (lobby, doc) = (json!("lobby"), json!("doc"));
    let mut watchers = Vec::new();
    for (index, node) in [&one, &two].into_iter().enumerate() {
        let mut watcher = connect_as(&node.server, &format!("watcher-{index}")).await;
        join(&mut watcher, &lobby).await;
        join_document(&mut watcher, &doc).await;
        watchers.push(watcher);
    }
    assert_eq!(next(&mut watchers[0]).await, presence("watcher-1", &lobby, "joined"));
    // Two identities on the doomed node; one of them has another connection on a live node.
    let mut alice = doomed.connect_as("alice").await;
    let mut bob = doomed.connect_as("bob").await;
    let mut bob_elsewhere = connect_as(&two.server, "bob").await;
    let alices = hold_everything(&mut alice, &lobby, &doc, "alice").await;
    let bobs = hold_everything(&mut bob, &lobby, &doc, "bob").await;
    join(&mut bob_elsewhere, &lobby).await;
    for watcher in &mut watchers {
        assert_eq!(next(watcher).await, presence("alice", &lobby, "joined"));
        assert_eq!(watcher.recv().await["message"]["type"], "cursorAdded");
        assert_eq!(next(watcher).await, presence("bob", &lobby, "joined"));
        assert_eq!(watcher.recv().await["message"]["type"], "cursorAdded");
    }
    let doomed_id = node_id(&redis, "doomed");

    doomed.kill();
    let killed = std::time::Instant::now();
    // Its names are not reaped yet, but a message for them reaches nobody: it is refused.
    register(&mut watchers[0], "watcher").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let send = json!({"sender": "watcher", "dest": "alice", "body": 1});
        let reply = call(&mut watchers[0], "messaging", "send", send).await;
        if reply == error_reply("messaging", &json!("c"), "Unknown destination") {
            break;
        }
        // Until Redis notices the dead node's connection is gone.
        assert_eq!(reply, ok_reply("messaging", &json!("c"), &Value::Null));
        assert!(tokio::time::Instant::now() < deadline, "a send to the dead node's name is refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for watcher in &mut watchers {
        let mut pushes = Vec::new();
        for _ in 0..3 {
            pushes.push(without_timestamp_if_any(
                within(REAPED_WITHIN, "the dead node's removals", watcher.recv()).await,
            ));
        }
        pushes.sort_by_key(Value::to_string);
        let mut expected = vec![presence("alice", &lobby, "left"), removed(&alices, &doc), removed(&bobs, &doc)];
        expected.sort_by_key(Value::to_string);
        assert_eq!(pushes, expected, "alice left; both cursors removed; bob is still on another node");
    }
    eprintln!("the dead node's state was removed {:?} after SIGKILL", killed.elapsed());
    // Exactly once: nothing more, even after the other node had every chance to reap it too.
    tokio::time::sleep(NODE_TIMEOUT).await;
    for watcher in &mut watchers {
        assert_quiet(watcher, "chat").await;
        assert_quiet(watcher, "cursors").await;
    }
    assert_eq!(ok(&mut watchers[1], "messaging", "listParticipants", json!({})).await, json!(["watcher"]));
    let mut late = connect_as(&one.server, "late").await;
    assert_eq!(join(&mut late, &lobby).await, json!({"members": ["bob", "late", "watcher-0", "watcher-1"]}));
    assert_eq!(join_document(&mut late, &doc).await, Vec::<Value>::new());
    register(&mut late, "alice").await;
    for service in ["chat", "cursors", "messaging"] {
        let key = format!("{{snorky}}:{service}:{service}:node:{doomed_id}");
        assert_eq!(redis.cli(&["EXISTS", &key]), "0", "{key} is gone");
        let holders = redis.cli(&["SMEMBERS", &format!("{{snorky}}:{service}:{service}:holders")]);
        assert!(!holders.contains(&doomed_id), "{service}: the dead node is no holder any more: {holders}");
    }
}

/// A push without its timestamp if it has one (presences have, cursor pushes have not).
fn without_timestamp_if_any(frame: Value) -> Value {
    if frame["message"].get("timestamp").is_some() {
        without_timestamp(frame)
    } else {
        frame
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_redis_is_reaped_then_puts_its_state_back_and_catches_up() {
    let redis = Redis::start();
    let proxy = Proxy::start(redis.port).await;
    let one = node(&redis, "one").await;
    let cut = node_on(on_broker_url(collab::config(), &proxy.url(), "cut"), MessagingLimits::default()).await;
    let (lobby, doc) = (json!("lobby"), json!("doc"));
    let mut watcher = connect_as(&one.server, "watcher").await;
    join(&mut watcher, &lobby).await;
    join_document(&mut watcher, &doc).await;
    let mut alice = connect_as(&cut.server, "alice").await;
    let handle = hold_everything(&mut alice, &lobby, &doc, "alice").await;
    assert_eq!(next(&mut watcher).await, presence("alice", &lobby, "joined"));
    let alices = cursor(&handle, &doc, &json!("here"), &json!("s"), "alice");
    assert_eq!(watcher.recv().await, cursor_push("cursorAdded", &alices));

    proxy.cut();
    // The others count it dead: alice is gone for them (each service reaps on its own, in no
    // particular order between services).
    let mut pushes = vec![
        without_timestamp_if_any(within(REAPED_WITHIN, "alice to leave", watcher.recv()).await),
        without_timestamp_if_any(watcher.recv().await),
    ];
    pushes.sort_by_key(Value::to_string);
    let mut expected = vec![presence("alice", &lobby, "left"), removed(&handle, &doc)];
    expected.sort_by_key(Value::to_string);
    assert_eq!(pushes, expected);
    common::eventually(WAIT, "alice's name to be freed", || async {
        redis.cli(&["HEXISTS", "{snorky}:messaging:messaging:names", "alice"]) == "0"
    })
    .await;
    // Meanwhile: bob joins and takes alice's name.
    let mut bob = connect_as(&one.server, "bob").await;
    join(&mut bob, &lobby).await;
    assert_eq!(next(&mut watcher).await, presence("bob", &lobby, "joined"));
    register(&mut bob, "alice").await;
    // The cut node keeps serving its own connection; what needs Redis fails.
    fails(&mut alice, "chat", "send", json!({"channel": "lobby", "body": 1}), "Service unavailable").await;

    proxy.restore();
    // It puts alice back: the others see her come back, with her cursor.
    let mut pushes = vec![
        without_timestamp_if_any(within(WAIT, "alice to come back", watcher.recv()).await),
        without_timestamp_if_any(watcher.recv().await),
    ];
    pushes.sort_by_key(Value::to_string);
    let mut expected = vec![presence("alice", &lobby, "joined"), cursor_push("cursorAdded", &alices)];
    expected.sort_by_key(Value::to_string);
    assert_eq!(pushes, expected);
    assert_eq!(next(&mut bob).await, presence("alice", &lobby, "joined"));
    // alice learns what she missed (once every node had the time to come back).
    assert_eq!(
        without_timestamp(within(REAPED_WITHIN, "alice to catch up", alice.recv()).await),
        presence("bob", &lobby, "joined")
    );
    // The name taken meanwhile stays with its new holder.
    assert_eq!(ok(&mut alice, "messaging", "listParticipants", json!({})).await, json!(["alice"]));
    fails(&mut alice, "messaging", "send", json!({"sender": "alice", "dest": "alice", "body": 1}), "Invalid sender")
        .await;
    // Everything works again from the cut node, and nothing else was pushed.
    say(&mut alice, "alice", &lobby, &json!("back")).await;
    assert_eq!(next(&mut watcher).await, chat_message("alice", &lobby, &json!("back")));
    assert_eq!(next(&mut bob).await, chat_message("alice", &lobby, &json!("back")));
    for client in [&mut watcher, &mut bob, &mut alice] {
        assert_quiet(client, "chat").await;
        assert_quiet(client, "cursors").await;
    }
    let mut late = connect_as(&one.server, "late").await;
    assert_eq!(join(&mut late, &lobby).await, json!({"members": ["alice", "bob", "late", "watcher"]}));
    assert_eq!(join_document(&mut late, &doc).await, vec![alices]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stalls_past_the_node_timeout_is_reaped_then_puts_its_state_back() {
    let redis = Redis::start();
    let one = node(&redis, "one").await;
    let stalling = ChildNode::start(&redis, "stalling").await;
    let lobby = json!("lobby");
    let mut watcher = connect_as(&one.server, "watcher").await;
    join(&mut watcher, &lobby).await;
    let mut alice = stalling.connect_as("alice").await;
    join(&mut alice, &lobby).await;
    assert_eq!(next(&mut watcher).await, presence("alice", &lobby, "joined"));
    // Frozen with its connection to Redis open: the others take it for dead.
    stalling.freeze(true);
    let left = without_timestamp_if_any(within(REAPED_WITHIN, "alice to leave", watcher.recv()).await);
    stalling.freeze(false);
    assert_eq!(left, presence("alice", &lobby, "left"));
    // Going on, it finds itself reaped and puts alice back, as after an outage.
    let back = without_timestamp_if_any(within(REAPED_WITHIN, "alice to come back", watcher.recv()).await);
    assert_eq!(back, presence("alice", &lobby, "joined"));
    let mut late = connect_as(&one.server, "late").await;
    assert_eq!(join(&mut late, &lobby).await, json!({"members": ["alice", "late", "watcher"]}));
    assert_eq!(next(&mut alice).await, presence("late", &lobby, "joined"));
    assert_eq!(next(&mut watcher).await, presence("late", &lobby, "joined"));
    say(&mut alice, "alice", &lobby, &json!("still here")).await;
    assert_eq!(next(&mut watcher).await, chat_message("alice", &lobby, &json!("still here")));
    assert_quiet(&mut alice, "chat").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_restarts_empty_the_nodes_put_their_state_back_and_clients_end_consistent() {
    let mut redis = Redis::start();
    let (one, two) = (node(&redis, "one").await, node(&redis, "two").await);
    let node_three = node(&redis, "three").await;
    let (lobby, doc) = (json!("lobby"), json!("doc"));
    let mut alice = connect_as(&one.server, "alice").await;
    let mut bob = connect_as(&two.server, "bob").await;
    let mut carol = connect_as(&two.server, "carol").await;
    let mut dave = connect_as(&node_three.server, "dave").await;
    let a = hold_everything(&mut alice, &lobby, &doc, "alice").await;
    let b = hold_everything(&mut bob, &lobby, &doc, "bob").await;
    join(&mut carol, &lobby).await;
    let d = hold_everything(&mut dave, &lobby, &doc, "dave").await;
    let (id_one, id_two) = (node_id(&redis, "one"), node_id(&redis, "two"));
    // Let every push of the set-up arrive, then start from quiet clients.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for client in [&mut alice, &mut bob, &mut carol] {
        drain(client).await;
    }

    redis.stop();
    // While Redis is down: carol leaves (accepted here, told to the others later), and node
    // three dies with dave (nobody will ever reap it: Redis forgets it).
    ok(&mut carol, "chat", "leave", json!({"channel": "lobby"})).await;
    drop(dave);
    let Node { server: three_server, chat, cursors, messaging } = node_three;
    drop((chat, cursors, messaging));
    three_server.shutdown().await.expect("node three stops");
    redis.restart();

    // Each node puts back what its connections hold.
    common::eventually(Duration::from_secs(20), "alice's and bob's state to be back in Redis", || async {
        [&id_one, &id_two].iter().all(|id| {
            ["chat", "cursors", "messaging"]
                .iter()
                .all(|service| redis.cli(&["HLEN", &format!("{{snorky}}:{service}:{service}:node:{id}")]) == "1")
        })
    })
    .await;
    // What the clients are told: carol and dave left; dave's cursor went; nothing else (alice
    // and bob never left for anyone).
    for client in [&mut alice, &mut bob] {
        let mut pushes = Vec::new();
        for _ in 0..3 {
            pushes.push(without_timestamp_if_any(within(Duration::from_secs(20), "the catch-up", client.recv()).await));
        }
        pushes.sort_by_key(Value::to_string);
        let mut expected = vec![presence("carol", &lobby, "left"), presence("dave", &lobby, "left"), removed(&d, &doc)];
        expected.sort_by_key(Value::to_string);
        assert_eq!(pushes, expected);
    }
    for client in [&mut alice, &mut bob] {
        assert_quiet(client, "chat").await;
        assert_quiet(client, "cursors").await;
    }
    let mut late = connect_as(&one.server, "late").await;
    assert_eq!(join(&mut late, &lobby).await, json!({"members": ["alice", "bob", "late"]}));
    let listing = join_document(&mut late, &doc).await;
    assert_eq!(listing.iter().map(|c| c["publicHandle"].clone()).collect::<Vec<_>>(), vec![a, b.clone()]);
    assert_eq!(ok(&mut late, "messaging", "listParticipants", json!({})).await, json!(["alice", "bob"]));
    // New cursors get handles above every handle issued before the restart.
    join_document(&mut carol, &doc).await;
    let fresh = create(&mut carol, "new", &doc, &Value::Null).await;
    assert!(fresh.as_u64() > d.as_u64() && fresh.as_u64() > b.as_u64(), "{fresh} after {b} and {d}");
}

/// Reads whatever is pending on `client` (answering an unknown command marks the end).
async fn drain(client: &mut Client) {
    client.request("chat", "noSuchCommand", json!({}), json!("drain")).await;
    while client.recv().await["message"]["callId"] != json!("drain") {}
}

// ---------------------------------------------------------------------------------------------
// On a Redis Cluster

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_cursors_and_messaging_work_on_a_redis_cluster() {
    let redis = cluster::RedisCluster::start();
    let one = node_on(on_broker_url(collab::config(), &redis.url(), "one"), MessagingLimits::default()).await;
    let two = node_on(on_broker_url(collab::config(), &redis.url(), "two"), MessagingLimits::default()).await;
    let (lobby, doc) = (json!("lobby"), json!("doc"));
    let mut alice = connect_as(&one.server, "alice").await;
    let mut bob = connect_as(&two.server, "bob").await;
    assert_eq!(join(&mut alice, &lobby).await, json!({"members": ["alice"]}));
    assert_eq!(join(&mut bob, &lobby).await, json!({"members": ["alice", "bob"]}));
    assert_eq!(next(&mut alice).await, presence("bob", &lobby, "joined"));
    say(&mut bob, "bob", &lobby, &json!("over the cluster")).await;
    assert_eq!(next(&mut alice).await, chat_message("bob", &lobby, &json!("over the cluster")));
    join_document(&mut alice, &doc).await;
    let handle = create(&mut alice, "a", &doc, &json!(1)).await;
    assert_eq!(join_document(&mut bob, &doc).await, vec![cursor(&handle, &doc, &json!(1), &json!("s"), "alice")]);
    register(&mut alice, "alice").await;
    register(&mut bob, "bob").await;
    ok(&mut bob, "messaging", "send", json!({"sender": "bob", "dest": "alice", "body": 1})).await;
    assert_eq!(alice.recv().await, delivered("bob", "alice", &json!(1)));
    alice.close().await;
    let mut pushes = vec![without_timestamp_if_any(bob.recv().await), without_timestamp_if_any(bob.recv().await)];
    pushes.sort_by_key(Value::to_string);
    let mut expected = vec![presence("alice", &lobby, "left"), removed(&handle, &doc)];
    expected.sort_by_key(Value::to_string);
    assert_eq!(pushes, expected);
    assert_eq!(ok(&mut bob, "messaging", "listParticipants", json!({})).await, json!(["bob"]));
}
