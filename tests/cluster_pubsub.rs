//! PubSub across nodes sharing a Redis broker: a publish through any node (a browser's or the
//! backend's) reaches every subscriber on every node exactly once, in one order per channel; a
//! node follows Redis going away and coming back.

mod cluster;
mod common;

use std::time::Duration;

use cluster::{on_broker, Redis};
use common::{delivery, eventually, metric, test_config, Client, TestServer, WAIT};
use serde_json::{json, Value};
use snorky::service::AnyService;
use snorky::services::pubsub::{PubSubBackend, PubSubService};

/// A node with `pubsub` and `pubsub_backend` on the broker.
async fn node(redis: &Redis, name: &str) -> TestServer {
    let pubsub = PubSubService::new("pubsub");
    let backend = PubSubBackend::new("pubsub_backend", &pubsub);
    TestServer::start_services(
        on_broker(test_config(), redis, name),
        vec![AnyService::PubSub(pubsub)],
        vec![AnyService::PubSubBackend(backend)],
    )
    .await
}

async fn publish(client: &mut Client, channel: &Value, message: &Value) {
    let reply = client.call("pubsub", "publish", json!({"channel": channel, "message": message}), json!("p")).await;
    assert_eq!(reply["message"]["type"], "response", "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_on_every_node_gets_each_publish_once_in_one_order() {
    let redis = Redis::start();
    let (one, two, three) = (node(&redis, "one").await, node(&redis, "two").await, node(&redis, "three").await);
    let news = json!("news");
    let mut on_one = one.connect().await;
    on_one.subscribe(news.clone()).await;
    let mut on_two = two.connect().await;
    on_two.subscribe(news.clone()).await;
    let mut publisher = one.connect().await;
    // Publishes through every path: a browser on node one, the backends of nodes two and
    // three (three has no subscriber at all).
    for n in 0..30 {
        match n % 3 {
            0 => publish(&mut publisher, &news, &json!(n)).await,
            1 => common::backend_publish(&two, &news, &json!(n)).await,
            _ => common::backend_publish(&three, &news, &json!(n)).await,
        }
    }
    for subscriber in [&mut on_one, &mut on_two] {
        for n in 0..30 {
            assert_eq!(subscriber.recv().await, delivery("pubsub", &news, &json!(n)), "in order, once");
        }
    }
    // Nothing more arrives: a barrier request is answered next.
    for subscriber in [&mut on_one, &mut on_two] {
        let reply = subscriber.call("pubsub", "nope", json!({}), json!("barrier")).await;
        assert_eq!(reply["message"]["callId"], "barrier", "no duplicate before the barrier");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_reply_means_the_next_publish_from_any_node_arrives() {
    let redis = Redis::start();
    let (one, two) = (node(&redis, "one").await, node(&redis, "two").await);
    for round in 0..20 {
        let channel = json!(format!("fresh-{round}"));
        let mut subscriber = one.connect().await;
        subscriber.subscribe(channel.clone()).await;
        common::backend_publish(&two, &channel, &json!(round)).await;
        assert_eq!(subscriber.recv().await, delivery("pubsub", &channel, &json!(round)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_subscribes_to_a_channel_once_and_leaves_it_with_its_last_subscriber() {
    let redis = Redis::start();
    let one = node(&redis, "one").await;
    let mut first = one.connect().await;
    let mut second = one.connect().await;
    first.subscribe(json!("shared")).await;
    second.subscribe(json!("shared")).await;
    let channels = redis.cli(&["PUBSUB", "CHANNELS"]);
    assert_eq!(
        channels.lines().filter(|line| line.contains("pubsub:pubsub:")).count(),
        1,
        "one Redis channel: {channels}"
    );
    first.close().await;
    let still = redis.cli(&["PUBSUB", "CHANNELS"]);
    assert_eq!(still.lines().filter(|line| line.contains("pubsub:pubsub:")).count(), 1, "{still}");
    second.close().await;
    eventually(WAIT, "the node to unsubscribe from Redis", || async {
        !redis.cli(&["PUBSUB", "CHANNELS"]).contains("pubsub:pubsub:")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_ride_out_redis_going_away_and_coming_back() {
    let mut redis = Redis::start();
    let (one, two) = (node(&redis, "one").await, node(&redis, "two").await);
    let news = json!("news");
    let mut subscriber = one.connect().await;
    subscriber.subscribe(news.clone()).await;
    common::backend_publish(&two, &news, &json!("before")).await;
    assert_eq!(subscriber.recv().await, delivery("pubsub", &news, &json!("before")));

    redis.stop();
    // A backend publish that cannot reach Redis is an HTTP error, not a silent drop.
    let body = json!({"service": "pubsub_backend", "message": {"command": "publish", "params": {"channel": "news", "message": "lost"}}});
    let answer = common::post_backend(&two, Some(common::KEY), body.to_string()).await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    eventually(Duration::from_secs(20), "the node to report the broker down", || async {
        common::http_get(&format!("http://{}/health", one.backend)).await.status == 503
    })
    .await;
    // Local connections keep being served.
    let mut local = one.connect().await;
    let reply = local.call("pubsub", "nope", json!({}), json!(1)).await;
    assert_eq!(reply["message"]["message"], "Unknown command");

    redis.restart();
    eventually(Duration::from_secs(30), "the node to report the broker back", || async {
        common::http_get(&format!("http://{}/health", one.backend)).await.status == 200
    })
    .await;
    // Subscriptions came back with the connection.
    eventually(Duration::from_secs(30), "a publish to reach the subscriber again", || async {
        common::try_backend_publish(&two, &news, &json!("after")).await
    })
    .await;
    let frame = subscriber.recv().await;
    assert_eq!(frame, delivery("pubsub", &news, &json!("after")));
    assert!(metric(&one, "snorky_broker_disconnections_total").await >= 1);
}

/// Publishes through a browser and a backend, checked on two nodes sharing a broker: every
/// channel reaches its subscribers on both nodes, in order. Returns the subscribers (the nodes
/// stay subscribed while they are connected).
async fn publishes_cross_between(one: &TestServer, two: &TestServer) -> [Client; 2] {
    // Several channels, so that on a Redis Cluster they land on different shards.
    let channels: Vec<Value> = (0..6).map(|n| json!(format!("room-{n}"))).collect();
    let mut on_one = one.connect().await;
    let mut on_two = two.connect().await;
    for channel in &channels {
        on_one.subscribe(channel.clone()).await;
        on_two.subscribe(channel.clone()).await;
    }
    let mut publisher = two.connect().await;
    for (n, channel) in channels.iter().enumerate() {
        publish(&mut publisher, channel, &json!(n)).await;
        common::backend_publish(one, channel, &json!(n + 100)).await;
    }
    for subscriber in [&mut on_one, &mut on_two] {
        for (n, channel) in channels.iter().enumerate() {
            assert_eq!(subscriber.recv().await, delivery("pubsub", channel, &json!(n)));
            assert_eq!(subscriber.recv().await, delivery("pubsub", channel, &json!(n + 100)));
        }
    }
    [on_one, on_two]
}

async fn node_at(url: &str, name: &str, configure: impl FnOnce(&mut snorky::server::ServerConfig)) -> TestServer {
    let pubsub = PubSubService::new("pubsub");
    let backend = PubSubBackend::new("pubsub_backend", &pubsub);
    let mut config = cluster::on_broker_url(test_config(), url, name);
    configure(&mut config);
    TestServer::start_services(config, vec![AnyService::PubSub(pubsub)], vec![AnyService::PubSubBackend(backend)]).await
}

/// Why a server on `config` fails to start.
async fn start_up_error(config: snorky::server::ServerConfig) -> String {
    let frontend =
        snorky::ServiceRegistry::new(snorky::service::Side::Frontend, Vec::new()).expect("an empty registry");
    let backend = snorky::ServiceRegistry::new(snorky::service::Side::Backend, Vec::new()).expect("an empty registry");
    let server = snorky::Server::new(config, frontend, backend).expect("a valid configuration");
    match common::within(Duration::from_secs(30), "the start-up to fail", server.bind()).await {
        Ok(_) => panic!("the server started"),
        Err(err) => err.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_carries_publishes_between_nodes_through_sharded_pubsub() {
    let redis = cluster::RedisCluster::start();
    let one = node_at(&redis.url(), "one", |_| {}).await;
    let two = node_at(&redis.url(), "two", |_| {}).await;
    let _subscribers = publishes_cross_between(&one, &two).await;
    // Sharded pub/sub: the channels live on the masters' shard channels, not the global ones.
    let shard_channels: usize = redis
        .nodes
        .iter()
        .map(|node| {
            node.cli(&["PUBSUB", "SHARDCHANNELS"]).lines().filter(|line| line.contains("pubsub:pubsub:")).count()
        })
        .sum();
    assert_eq!(shard_channels, 6, "one shard channel per PubSub channel");
    assert!(redis.nodes.iter().all(|node| node.cli(&["PUBSUB", "CHANNELS"]).is_empty()), "nothing global");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_redis_with_a_password_carries_publishes_between_nodes() {
    let redis = Redis::start_secured("broker-password-0123456789");
    let (one, two) = (node(&redis, "one").await, node(&redis, "two").await);
    assert!(redis.url().starts_with("rediss://"), "{}", redis.url());
    let _subscribers = publishes_cross_between(&one, &two).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_or_an_unknown_authority_fails_at_start_up_saying_why() {
    let redis = Redis::start_secured("broker-password-0123456789");
    let ca_file = redis.secured().map(|secured| secured.ca_file.to_string_lossy().into_owned());
    let url = redis.url();

    let mut wrong_password = cluster::on_broker_url(test_config(), &url.replace("0123456789", "wrong"), "one");
    wrong_password.broker_ca_file.clone_from(&ca_file);
    let error = start_up_error(wrong_password).await;
    assert!(error.contains("cannot reach the broker at rediss://***@127.0.0.1"), "{error}");
    assert!(!error.contains("wrong"), "the password is not logged: {error}");

    // Without broker_ca_file the server's certificate is checked against the system's
    // authorities, which never signed it.
    let unknown_authority = cluster::on_broker_url(test_config(), &url, "one");
    let error = start_up_error(unknown_authority).await;
    assert!(error.contains("cannot reach the broker"), "{error}");
    assert!(!error.contains("0123456789"), "the password is not logged: {error}");

    let mut no_file = cluster::on_broker_url(test_config(), &url, "one");
    no_file.broker_ca_file = Some("/nonexistent/ca.pem".into());
    let error = start_up_error(no_file).await;
    assert!(error.contains("broker_ca_file \"/nonexistent/ca.pem\" cannot be read"), "{error}");
}
