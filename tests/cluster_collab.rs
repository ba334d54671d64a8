//! Chat, Cursors, Messaging and revocation across nodes sharing a Redis broker: each guarantee
//! of the single server, with consecutive connections on different nodes.

mod cluster;
mod collab;
mod common;

use std::time::Duration;

use cluster::{on_broker, Redis};
use collab::{assert_quiet, connect_as, try_connect_query, without_timestamp};
use common::{backend_call, error_reply, ok_reply, within, Client, TestServer, WAIT};
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
        assert_eq!(next(&mut listener).await, chat_message("speaker", &channel, &json!(round)), "only what followed its join");
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
                sender.request("chat", "send", json!({"channel": "ordered", "body": {"s": index, "i": i}}), json!(i)).await;
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
