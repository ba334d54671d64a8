//! `POST /backend`, `/health` and `/metrics` (docs/protocol.md "Transports" and "Precise rules" →
//! "Backend HTTP").

mod common;

use common::{
    assert_json_content_type, backend_call, backend_publish, delivery, http_get, http_request, metric, metric_in,
    metrics_text, ok_reply, post_backend, post_backend_keys, TestServer, KEY,
};
use serde_json::{json, Value};

fn publish_body(channel: &str, message: &Value) -> String {
    json!({"service": "pubsub_backend", "message": {"command": "publish", "params": {"channel": channel, "message": message}}})
        .to_string()
}

#[tokio::test]
async fn a_missing_or_wrong_key_is_401_and_nothing_is_processed() {
    let server = TestServer::start().await;
    let mut subscriber = server.connect().await;
    subscriber.subscribe(json!("guarded")).await;
    let wrong_keys = [None, Some("wrong"), Some(""), Some("integration-test-ke"), Some("integration-test-key2")];
    for key in wrong_keys {
        let answer = post_backend(&server, key, publish_body("guarded", &json!({"key": key}))).await;
        assert_eq!(answer.status, 401, "key {key:?}: {}", answer.text());
        assert_json_content_type(&answer, "a 401");
        assert!(answer.json()["error"].is_string(), "a 401 says why: {}", answer.text());
    }
    // A request with two keys is refused, whichever comes first (a proxy that adds the key
    // must not be overridden by one the client sent).
    for keys in [[KEY, "wrong"], ["wrong", KEY], [KEY, KEY]] {
        let answer = post_backend_keys(&server, &keys, publish_body("guarded", &json!("two keys"))).await;
        assert_eq!(answer.status, 401, "keys {keys:?}: {}", answer.text());
        assert_eq!(answer.json()["error"], "More than one X-Backend-Key");
    }
    // The key is checked before the body is looked at: a malformed body with a bad key is a 401.
    let answer = post_backend(&server, Some("wrong"), "{ not json").await;
    assert_eq!(answer.status, 401, "{}", answer.text());
    let answer = post_backend(&server, None, "[]").await;
    assert_eq!(answer.status, 401, "{}", answer.text());
    // None of the refused publishes reached the subscriber: the first delivery is this one.
    backend_publish(&server, &json!("guarded"), &json!("with the key")).await;
    assert_eq!(subscriber.recv().await, delivery("pubsub", &json!("guarded"), &json!("with the key")));
    let reply = subscriber.call("pubsub", "subscribe", json!({"channel": "probe"}), json!(1)).await;
    assert_eq!(reply, ok_reply("pubsub", &json!(1), &Value::Null), "nothing else was delivered");
}

#[tokio::test]
async fn what_the_frontend_would_drop_is_a_400_with_an_error_text() {
    let server = TestServer::start().await;
    let mut subscriber = server.connect().await;
    subscriber.subscribe(json!("c")).await;
    let bodies = [
        ("invalid JSON", "{ not json".to_owned()),
        ("an empty body", String::new()),
        ("an array", "[1, 2]".to_owned()),
        ("a string", "\"publish\"".to_owned()),
        ("null", "null".to_owned()),
        (
            "no service",
            json!({"message": {"command": "publish", "params": {"channel": "c", "message": 1}}}).to_string(),
        ),
        ("no message", json!({"service": "pubsub_backend"}).to_string()),
        (
            "a non-string service",
            json!({"service": 1, "message": {"command": "publish", "params": {"channel": "c", "message": 1}}})
                .to_string(),
        ),
        (
            "an unknown service",
            json!({"service": "nosuch", "message": {"command": "publish", "params": {"channel": "c", "message": 1}}})
                .to_string(),
        ),
        (
            "a frontend-only service",
            json!({"service": "pubsub", "message": {"command": "publish", "params": {"channel": "c", "message": 1}}})
                .to_string(),
        ),
        ("no params", json!({"service": "pubsub_backend", "message": {"command": "publish"}}).to_string()),
        (
            "no params, with a callId",
            json!({"service": "pubsub_backend", "message": {"command": "publish", "callId": 3}}).to_string(),
        ),
        (
            "no command",
            json!({"service": "pubsub_backend", "message": {"params": {"channel": "c", "message": 1}}}).to_string(),
        ),
        ("a number message", json!({"service": "pubsub_backend", "message": 5}).to_string()),
        ("a string message", json!({"service": "pubsub_backend", "message": "publish"}).to_string()),
        ("a null message", json!({"service": "pubsub_backend", "message": null}).to_string()),
        ("an array message", json!({"service": "pubsub_backend", "message": [1]}).to_string()),
    ];
    for (what, body) in bodies {
        post_backend(&server, Some(KEY), body).await.assert_bad_request(what);
    }
    // None of them published anything.
    let reply = subscriber.call("pubsub", "subscribe", json!({"channel": "probe"}), json!(1)).await;
    assert_eq!(reply, ok_reply("pubsub", &json!(1), &Value::Null));
}

#[tokio::test]
async fn methods_other_than_post_are_405() {
    let server = TestServer::start().await;
    for method in [reqwest::Method::GET, reqwest::Method::PUT, reqwest::Method::DELETE, reqwest::Method::PATCH] {
        let answer = http_request(method.clone(), &server.backend_url()).await;
        assert_eq!(answer.status, 405, "{method} /backend");
    }
}

#[tokio::test]
async fn rpc_failures_are_200_with_an_error_reply() {
    let server = TestServer::start().await;
    let cases = [
        ("nope", json!({}), "Unknown command"),
        ("publish", json!({"channel": "c"}), "Invalid params"),
        ("publish", json!({"message": 1}), "Invalid params"),
        ("publish", json!({"channel": "c", "message": 1, "extra": 2}), "Invalid params"),
        ("publish", json!(null), "Invalid params"),
        ("publish", json!([]), "Invalid params"),
        ("publish", json!("c"), "Invalid params"),
    ];
    for (command, params, text) in cases {
        let reply = backend_call(&server, "pubsub_backend", command, params.clone()).await;
        assert_eq!(
            reply,
            json!({"service": "pubsub_backend", "message": {"type": "error", "message": text}}),
            "{command} with {params}"
        );
    }
    // A callId, when given, is echoed on the backend too.
    let body = json!({"service": "pubsub_backend", "message": {"command": "nope", "params": {}, "callId": {"k": 1}}});
    let answer = post_backend(&server, Some(KEY), body.to_string()).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.json(),
        json!({"service": "pubsub_backend", "message": {"type": "error", "callId": {"k": 1}, "message": "Unknown command"}})
    );
}

#[tokio::test]
async fn a_successful_call_is_200_with_a_response_reply() {
    let server = TestServer::start().await;
    let body = json!({"service": "pubsub_backend", "message": {"command": "publish", "params": {"channel": "c", "message": null}, "callId": 42}});
    let answer = post_backend(&server, Some(KEY), body.to_string()).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_json_content_type(&answer, "a reply");
    assert_eq!(answer.json(), ok_reply("pubsub_backend", &json!(42), &Value::Null));
}

#[tokio::test]
async fn a_body_of_one_mebibyte_is_accepted() {
    let server = TestServer::start().await;
    let mut subscriber = server.connect().await;
    subscriber.subscribe(json!("big")).await;
    let empty = publish_body("big", &json!(""));
    let padding = 1024 * 1024 - empty.len();
    let body = publish_body("big", &json!(common::filler(padding)));
    assert_eq!(body.len(), 1024 * 1024);
    let answer = post_backend(&server, Some(KEY), body).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let got = subscriber.recv().await;
    assert_eq!(got["message"]["message"].as_str().map(str::len), Some(padding));
}

#[tokio::test]
async fn health_answers_on_both_listeners() {
    let server = TestServer::start().await;
    for address in [server.frontend, server.backend] {
        let answer = http_get(&format!("http://{address}/health")).await;
        assert_eq!(answer.status, 200, "/health on {address}");
        assert_eq!(answer.json(), json!({"status": "ok"}));
    }
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_count_what_happens() {
    let server = TestServer::start().await;
    let answer = http_get(&format!("http://{}/metrics", server.backend)).await;
    assert_eq!(answer.status, 200);
    let content_type = answer.content_type.clone().unwrap_or_default();
    assert!(content_type.starts_with("text/plain"), "Prometheus text format: {content_type}");
    let text = answer.text();
    for family in ["snorky_connections", "snorky_connections_opened", "snorky_frames_received", "snorky_deliveries"] {
        assert!(text.contains(&format!("# TYPE {family} ")), "{family} is exposed:\n{text}");
    }
    assert_eq!(metric_in(&text, "snorky_connections"), 0);
    let start = |name: &str| metric_in(&text, name);
    let (opened, received, deliveries, dropped, backend) = (
        start("snorky_connections_opened_total"),
        start("snorky_frames_received_total"),
        start("snorky_deliveries_total"),
        start("snorky_frames_dropped_total"),
        start("snorky_backend_requests_total"),
    );

    let mut first = server.connect().await;
    let mut second = server.connect().await;
    first.subscribe(json!("m")).await;
    second.subscribe(json!("m")).await;
    backend_publish(&server, &json!("m"), &json!(1)).await;
    first.recv().await;
    second.recv().await;
    first.send_text("garbage").await;
    let reply = first.call("pubsub", "nope", json!({}), json!(1)).await;
    assert_eq!(reply["message"]["message"], "Unknown command");

    let text = metrics_text(&server).await;
    assert_eq!(metric_in(&text, "snorky_connections"), 2, "two open connections:\n{text}");
    assert_eq!(metric_in(&text, "snorky_connections_opened_total") - opened, 2);
    assert_eq!(metric_in(&text, "snorky_frames_received_total") - received, 4, "{text}");
    assert_eq!(metric_in(&text, "snorky_deliveries_total") - deliveries, 2, "{text}");
    assert_eq!(metric_in(&text, "snorky_frames_dropped_total") - dropped, 1, "{text}");
    assert!(metric_in(&text, "snorky_backend_requests_total") - backend >= 1, "{text}");
    assert!(text.contains("snorky_rpc_errors_total{service=\"pubsub\"} 1"), "errors by service:\n{text}");

    first.close().await;
    second.close().await;
    common::eventually(common::WAIT, "the connections gauge to return to 0", || async {
        metric(&server, "snorky_connections").await == 0
    })
    .await;
}

#[tokio::test]
async fn a_body_over_the_limit_still_gets_an_answer() {
    let server = TestServer::start_with(|config| config.backend_body_limit = 2 * 1024 * 1024).await;
    let body = publish_body("c", &json!(common::filler(3 * 1024 * 1024)));
    let answer = post_backend(&server, Some(KEY), body).await;
    assert_eq!(answer.status, 413, "{}", answer.text());
    assert!(answer.json()["error"].is_string());
}

#[tokio::test]
async fn a_body_sent_too_slowly_is_answered_408_and_the_listener_goes_on() {
    let server = TestServer::start_with(|config| config.body_read_timeout = 0.5).await;
    let mut subscriber = server.connect().await;
    subscriber.subscribe(json!("after")).await;
    let head = format!(
        "POST /backend HTTP/1.1\r\nHost: test\r\nX-Backend-Key: {KEY}\r\nContent-Type: application/json\r\n\
         Content-Length: 1000\r\n\r\n{{\"service\": \"pubsub_backend\""
    );
    // The rest of the body never comes: the answer must, after body_read_timeout.
    let answer = common::answer_to_a_stalled_body(server.backend, &head).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    backend_publish(&server, &json!("after"), &json!("served")).await;
    assert_eq!(subscriber.recv().await, delivery("pubsub", &json!("after"), &json!("served")));
}
