//! The Rust backend client (`snorky::backend_client`) against a real server.

mod common;

use std::time::Duration;

use common::{delivery, TestServer, KEY};
use serde_json::{json, Map, Value};
use snorky::backend_client::{BackendClient, BackendError};

fn params(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("params are an object, not {other}"),
    }
}

fn client(server: &TestServer, key: &str) -> BackendClient {
    BackendClient::new(&server.backend_url(), key, Duration::from_secs(10)).expect("a valid URL and key")
}

#[tokio::test]
async fn publish_through_the_client_reaches_subscribers_in_order() {
    let server = TestServer::start().await;
    let mut subscriber = server.connect().await;
    subscriber.subscribe(json!({"room": 1})).await;
    let backend = client(&server, KEY);
    for n in 0..20 {
        let data = backend
            .call("pubsub_backend", "publish", &params(json!({"channel": {"room": 1}, "message": {"n": n}})))
            .await
            .expect("publish succeeds");
        assert_eq!(data, Value::Null);
    }
    for n in 0..20 {
        assert_eq!(subscriber.recv().await, delivery("pubsub", &json!({"room": 1}), &json!({"n": n})));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_from_clones_all_succeed() {
    let server = TestServer::start().await;
    let mut subscriber = server.connect().await;
    subscriber.subscribe(json!("many")).await;
    let backend = client(&server, KEY);
    let calls = (0..50).map(|n| {
        let backend = backend.clone();
        tokio::spawn(async move {
            backend.call("pubsub_backend", "publish", &params(json!({"channel": "many", "message": n}))).await
        })
    });
    for call in futures_util::future::join_all(calls).await {
        assert_eq!(call.expect("task").expect("publish succeeds"), Value::Null);
    }
    let mut got: Vec<i64> = Vec::new();
    for _ in 0..50 {
        got.push(subscriber.recv().await["message"]["message"].as_i64().expect("a number"));
    }
    got.sort_unstable();
    assert_eq!(got, (0..50).collect::<Vec<_>>());
}

#[tokio::test]
async fn rpc_errors_are_backend_error_rpc() {
    let server = TestServer::start().await;
    let backend = client(&server, KEY);
    let cases = [
        ("nope", json!({}), "Unknown command"),
        ("subscribe", json!({"channel": "c"}), "Unknown command"),
        ("publish", json!({"channel": "c"}), "Invalid params"),
        ("publish", json!({"channel": "c", "message": 1, "extra": 1}), "Invalid params"),
    ];
    for (command, given, text) in cases {
        match backend.call("pubsub_backend", command, &params(given.clone())).await {
            Err(BackendError::Rpc(message)) => assert_eq!(message, text, "{command} {given}"),
            other => panic!("{command} {given}: expected an RPC error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_wrong_key_is_refused_with_401() {
    let server = TestServer::start().await;
    let mut subscriber = server.connect().await;
    subscriber.subscribe(json!("c")).await;
    let backend = client(&server, "not the key");
    match backend.call("pubsub_backend", "publish", &params(json!({"channel": "c", "message": "no"}))).await {
        Err(BackendError::Refused { status, message }) => {
            assert_eq!(status, 401);
            assert!(!message.is_empty(), "the refusal says why");
        }
        other => panic!("expected a 401 refusal, got {other:?}"),
    }
    // Nothing was published: the first delivery is the one made with the right key.
    client(&server, KEY)
        .call("pubsub_backend", "publish", &params(json!({"channel": "c", "message": "yes"})))
        .await
        .expect("publish with the key");
    assert_eq!(subscriber.recv().await, delivery("pubsub", &json!("c"), &json!("yes")));
}

#[tokio::test]
async fn an_unknown_service_is_refused_with_400() {
    let server = TestServer::start().await;
    let backend = client(&server, KEY);
    for service in ["nosuch", "pubsub"] {
        match backend.call(service, "publish", &params(json!({"channel": "c", "message": 1}))).await {
            Err(BackendError::Refused { status, .. }) => {
                assert_eq!(status, 400, "service {service}");
            }
            other => panic!("service {service}: expected a 400 refusal, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_unreachable_server_is_a_connection_error() {
    // A port that was just free: nothing listens there any more.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("loopback binds");
    let address = listener.local_addr().expect("bound");
    drop(listener);
    let url = format!("http://{address}/backend");
    let backend = BackendClient::new(&url, KEY, Duration::from_secs(5)).expect("a valid URL");
    let result =
        common::within(common::WAIT, "the call to fail", backend.call("pubsub_backend", "publish", &Map::new())).await;
    match result {
        Err(error @ BackendError::Connection { .. }) => {
            let text = error.to_string();
            assert!(text.contains(&url), "the error names the URL: {error}");
            assert!(text.to_lowercase().contains("refused"), "the error says the connection was refused: {error}");
        }
        other => panic!("expected a connection error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_server_that_does_not_answer_in_time_is_a_timeout_naming_its_length() {
    // Connections are accepted (by the kernel, into the backlog) and never answered.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("loopback binds");
    let url = format!("http://{}/backend", silent.local_addr().expect("bound"));
    let backend = BackendClient::new(&url, KEY, Duration::from_millis(300)).expect("a valid URL");
    let result =
        common::within(common::WAIT, "the call to time out", backend.call("pubsub_backend", "publish", &Map::new()))
            .await;
    match result {
        Err(error @ BackendError::Connection { .. }) => {
            let text = error.to_string();
            assert!(text.contains(&url), "the error names the URL: {error}");
            assert!(
                text.contains("no answer within 0.3 s"),
                "the error says it timed out, and after how long: {error}"
            );
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    drop(silent);
}

#[tokio::test]
async fn unusable_urls_and_keys_are_configuration_errors() {
    for (url, key) in [("ftp://127.0.0.1/backend", KEY), ("127.0.0.1:5002", KEY), ("http://127.0.0.1:5002/backend", "")]
    {
        match BackendClient::new(url, key, Duration::from_secs(1)) {
            Err(BackendError::Config(_)) => {}
            other => panic!("{url} / {key:?}: expected a configuration error, got {other:?}"),
        }
    }
}
