//! PubSub over the wire (docs/protocol.md "PubSub" and the PubSub lines of "Precise rules").

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{backend_call, backend_publish, delivery, error_reply, ok_reply, within, TestServer, WAIT};
use serde_json::{json, Value};
use snorky::connection::Connection;
use snorky::service::{AnyService, Policy, PolicyFuture};
use snorky::services::pubsub::{PubSubBackend, PubSubService};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

#[tokio::test]
async fn subscribe_then_unsubscribe_answer_null() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    let reply = client.call("pubsub", "subscribe", json!({"channel": "news"}), json!(1)).await;
    assert_eq!(reply, ok_reply("pubsub", &json!(1), &Value::Null));
    let reply = client.call("pubsub", "unsubscribe", json!({"channel": "news"}), json!(2)).await;
    assert_eq!(reply, ok_reply("pubsub", &json!(2), &Value::Null));
}

#[tokio::test]
async fn subscribing_twice_is_already_subscribed() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    client.subscribe(json!("news")).await;
    let reply = client.call("pubsub", "subscribe", json!({"channel": "news"}), json!(2)).await;
    assert_eq!(reply, error_reply("pubsub", &json!(2), "Already subscribed"));
    // Another connection is not affected by this one's subscription.
    let mut other = server.connect().await;
    other.subscribe(json!("news")).await;
}

#[tokio::test]
async fn unsubscribing_what_is_not_subscribed_is_not_subscribed() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    let reply = client.call("pubsub", "unsubscribe", json!({"channel": "news"}), json!(1)).await;
    assert_eq!(reply, error_reply("pubsub", &json!(1), "Not subscribed"));
    client.subscribe(json!("news")).await;
    let reply = client.call("pubsub", "unsubscribe", json!({"channel": "news"}), json!(2)).await;
    assert_eq!(reply, ok_reply("pubsub", &json!(2), &Value::Null));
    let reply = client.call("pubsub", "unsubscribe", json!({"channel": "news"}), json!(3)).await;
    assert_eq!(reply, error_reply("pubsub", &json!(3), "Not subscribed"));
    // Another connection's subscription does not count as this one's.
    let mut other = server.connect().await;
    other.subscribe(json!("sport")).await;
    let reply = client.call("pubsub", "unsubscribe", json!({"channel": "sport"}), json!(4)).await;
    assert_eq!(reply, error_reply("pubsub", &json!(4), "Not subscribed"));
}

#[tokio::test]
async fn a_publish_reaches_every_subscriber_with_exactly_the_protocol_fields() {
    let server = TestServer::start().await;
    let mut first = server.connect().await;
    let mut second = server.connect().await;
    let mut bystander = server.connect().await;
    first.subscribe(json!("news")).await;
    second.subscribe(json!("news")).await;
    bystander.subscribe(json!("sport")).await;
    let mut publisher = server.connect().await;
    let message = json!({"headline": "Snorky 0.2", "tags": ["rust", "django"], "n": 3});
    let reply = publisher.call("pubsub", "publish", json!({"channel": "news", "message": message}), json!(9)).await;
    assert_eq!(reply, ok_reply("pubsub", &json!(9), &Value::Null));
    let expected = delivery("pubsub", &json!("news"), &message);
    assert_eq!(first.recv().await, expected);
    assert_eq!(second.recv().await, expected);
    // The bystander gets nothing for "news": its next frame is the reply to a later request.
    let reply = bystander.call("pubsub", "unsubscribe", json!({"channel": "sport"}), json!("next")).await;
    assert_eq!(reply, ok_reply("pubsub", &json!("next"), &Value::Null));
}

#[tokio::test]
async fn a_null_message_is_published_and_delivered_as_null() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    client.subscribe(json!("c")).await;
    let mut publisher = server.connect().await;
    let reply = publisher.call("pubsub", "publish", json!({"channel": "c", "message": null}), json!(1)).await;
    assert_eq!(reply, ok_reply("pubsub", &json!(1), &Value::Null));
    assert_eq!(client.recv().await, delivery("pubsub", &json!("c"), &Value::Null));
}

#[tokio::test]
async fn a_backend_publish_is_delivered_as_from_the_frontend_service() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    client.subscribe(json!("news")).await;
    backend_publish(&server, &json!("news"), &json!({"from": "django"})).await;
    // "service" is the frontend name the client uses, not "pubsub_backend".
    assert_eq!(client.recv().await, delivery("pubsub", &json!("news"), &json!({"from": "django"})));
}

#[tokio::test]
async fn deliveries_carry_the_name_the_service_is_registered_under() {
    // Two PubSub instances under custom names: channels are separate, and each delivery says
    // which instance it comes from (also for backend publishes).
    let alerts = PubSubService::new("alerts");
    let chat = PubSubService::new("chatter");
    let server = TestServer::start_services(
        common::test_config(),
        vec![AnyService::PubSub(alerts.clone()), AnyService::PubSub(chat.clone())],
        vec![
            AnyService::PubSubBackend(PubSubBackend::new("alerts_in", &alerts)),
            AnyService::PubSubBackend(PubSubBackend::new("chatter_in", &chat)),
        ],
    )
    .await;
    let mut client = server.connect().await;
    for service in ["alerts", "chatter"] {
        let reply = client.call(service, "subscribe", json!({"channel": "x"}), json!(service)).await;
        assert_eq!(reply, ok_reply(service, &json!(service), &Value::Null));
    }
    let reply = backend_call(&server, "chatter_in", "publish", json!({"channel": "x", "message": 1})).await;
    assert_eq!(reply, json!({"service": "chatter_in", "message": {"type": "response", "data": null}}));
    assert_eq!(client.recv().await, delivery("chatter", &json!("x"), &json!(1)));
    let reply = client.call("alerts", "publish", json!({"channel": "x", "message": 2}), json!(5)).await;
    let next = client.recv().await;
    let frames = [reply, next];
    assert!(frames.contains(&ok_reply("alerts", &json!(5), &Value::Null)), "{frames:?}");
    assert!(frames.contains(&delivery("alerts", &json!("x"), &json!(2))), "{frames:?}");
}

#[tokio::test]
async fn the_publisher_receives_its_own_message_when_subscribed() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    client.subscribe(json!("echo")).await;
    client.request("pubsub", "publish", json!({"channel": "echo", "message": "hi"}), json!(2)).await;
    let frames = [client.recv().await, client.recv().await];
    assert!(frames.contains(&ok_reply("pubsub", &json!(2), &Value::Null)), "{frames:?}");
    assert!(frames.contains(&delivery("pubsub", &json!("echo"), &json!("hi"))), "{frames:?}");
}

#[tokio::test]
async fn a_publisher_that_is_not_subscribed_gets_only_the_reply() {
    let server = TestServer::start().await;
    let mut subscriber = server.connect().await;
    subscriber.subscribe(json!("c")).await;
    let mut publisher = server.connect().await;
    let reply = publisher.call("pubsub", "publish", json!({"channel": "c", "message": 1}), json!(1)).await;
    assert_eq!(reply, ok_reply("pubsub", &json!(1), &Value::Null));
    let reply = publisher.call("pubsub", "publish", json!({"channel": "c", "message": 2}), json!(2)).await;
    assert_eq!(reply, ok_reply("pubsub", &json!(2), &Value::Null), "no delivery came in between");
    assert_eq!(subscriber.recv().await, delivery("pubsub", &json!("c"), &json!(1)));
    assert_eq!(subscriber.recv().await, delivery("pubsub", &json!("c"), &json!(2)));
}

#[tokio::test]
async fn after_unsubscribe_nothing_more_is_delivered() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    client.subscribe(json!("c")).await;
    backend_publish(&server, &json!("c"), &json!("before")).await;
    assert_eq!(client.recv().await, delivery("pubsub", &json!("c"), &json!("before")));
    let reply = client.call("pubsub", "unsubscribe", json!({"channel": "c"}), json!(1)).await;
    assert_eq!(reply, ok_reply("pubsub", &json!(1), &Value::Null));
    backend_publish(&server, &json!("c"), &json!("after")).await;
    // The next frame is the reply to a later request, not the "after" delivery.
    let reply = client.call("pubsub", "subscribe", json!({"channel": "other"}), json!(2)).await;
    assert_eq!(reply, ok_reply("pubsub", &json!(2), &Value::Null));
}

#[tokio::test]
async fn a_subscribe_reply_means_the_next_publish_reaches_you() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    for round in 0..20 {
        let channel = json!(format!("fresh-{round}"));
        client.subscribe(channel.clone()).await;
        backend_publish(&server, &channel, &json!(round)).await;
        assert_eq!(client.recv().await, delivery("pubsub", &channel, &json!(round)));
    }
    // Pipelined without waiting: the subscribe is processed before the publish behind it.
    client.request("pubsub", "subscribe", json!({"channel": "p"}), json!("s")).await;
    client.request("pubsub", "publish", json!({"channel": "p", "message": "m"}), json!("p")).await;
    assert_eq!(client.recv().await, ok_reply("pubsub", &json!("s"), &Value::Null));
    let frames = [client.recv().await, client.recv().await];
    assert!(frames.contains(&ok_reply("pubsub", &json!("p"), &Value::Null)), "{frames:?}");
    assert!(frames.contains(&delivery("pubsub", &json!("p"), &json!("m"))), "{frames:?}");
}

#[tokio::test]
async fn numbers_are_channels_compared_by_value() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    client
        .send_text(r#"{"service":"pubsub","message":{"command":"subscribe","params":{"channel":1},"callId":1}}"#)
        .await;
    assert_eq!(client.recv().await, ok_reply("pubsub", &json!(1), &Value::Null));
    // 1.0 is the same channel as 1.
    client
        .send_text(r#"{"service":"pubsub","message":{"command":"subscribe","params":{"channel":1.0},"callId":2}}"#)
        .await;
    assert_eq!(client.recv().await, error_reply("pubsub", &json!(2), "Already subscribed"));
    let mut publisher = server.connect().await;
    publisher
        .send_text(r#"{"service":"pubsub","message":{"command":"publish","params":{"channel":1.0,"message":"one"},"callId":3}}"#)
        .await;
    assert_eq!(publisher.recv().await, ok_reply("pubsub", &json!(3), &Value::Null));
    let got = client.recv().await;
    assert_eq!(got["service"], "pubsub");
    assert_eq!(got["message"]["type"], "message");
    assert_eq!(got["message"]["message"], "one");
    assert_eq!(got["message"]["channel"].as_f64(), Some(1.0), "the channel is the number 1: {got}");
    // "1" (a string) is a different channel from 1.
    client
        .send_text(r#"{"service":"pubsub","message":{"command":"unsubscribe","params":{"channel":"1"},"callId":4}}"#)
        .await;
    assert_eq!(client.recv().await, error_reply("pubsub", &json!(4), "Not subscribed"));
    client
        .send_text(r#"{"service":"pubsub","message":{"command":"unsubscribe","params":{"channel":1.0},"callId":5}}"#)
        .await;
    assert_eq!(client.recv().await, ok_reply("pubsub", &json!(5), &Value::Null));
}

/// The text of the number after the last `"name":` in `text`.
fn number_after<'a>(text: &'a str, name: &str) -> &'a str {
    let start = text.rfind(&format!("\"{name}\":")).expect("the field is there") + name.len() + 3;
    let rest = &text[start..];
    &rest[..rest.find([',', '}']).expect("the number ends")]
}

#[tokio::test]
async fn long_and_large_floats_keep_their_value_as_callids_and_messages() {
    // A number whose nearest f64 a best-effort parser misses by one unit in the last place; it
    // must come back as that nearest f64, as a browser's JSON.parse reads the original.
    let sent = "88888888888888888888888888888888888888888888.8888888888882";
    let nearest: f64 = sent.parse().expect("a number");
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    client.subscribe(json!("floats")).await;
    client
        .send_text(format!(
            r#"{{"service":"pubsub","message":{{"command":"publish","params":{{"channel":"floats","message":{sent}}},"callId":{sent}}}}}"#
        ))
        .await;
    for _ in 0..2 {
        let text = client.recv_text().await;
        // The reply's `callId`, then the delivery's `message` (the last field of that name).
        let field = if text.contains("\"callId\"") { "callId" } else { "message" };
        let echoed: f64 = number_after(&text, field).parse().expect("a number");
        assert_eq!(echoed.to_bits(), nearest.to_bits(), "{text} carries {nearest:e}");
    }
}

#[tokio::test]
async fn objects_are_channels_whatever_their_key_order() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    client
        .send_text(r#"{"service":"pubsub","message":{"command":"subscribe","params":{"channel":{"room":7,"kind":"chat","tags":[1,{"b":2,"a":1}]}},"callId":1}}"#)
        .await;
    assert_eq!(client.recv().await, ok_reply("pubsub", &json!(1), &Value::Null));
    let mut publisher = server.connect().await;
    publisher
        .send_text(r#"{"service":"pubsub","message":{"command":"publish","params":{"channel":{"tags":[1,{"a":1,"b":2}],"kind":"chat","room":7.0},"message":"hello"},"callId":2}}"#)
        .await;
    assert_eq!(publisher.recv().await, ok_reply("pubsub", &json!(2), &Value::Null));
    let got = client.recv().await;
    assert_eq!(got["message"]["message"], "hello", "{got}");
    assert_eq!(got["message"]["channel"]["kind"], "chat", "{got}");
    // Array order does matter: [{"a":1,"b":2},1] is another channel.
    publisher
        .send_text(r#"{"service":"pubsub","message":{"command":"publish","params":{"channel":{"tags":[{"a":1,"b":2},1],"kind":"chat","room":7},"message":"other"},"callId":3}}"#)
        .await;
    assert_eq!(publisher.recv().await, ok_reply("pubsub", &json!(3), &Value::Null));
    let reply = client.call("pubsub", "subscribe", json!({"channel": "probe"}), json!(4)).await;
    assert_eq!(reply, ok_reply("pubsub", &json!(4), &Value::Null), "no delivery for another channel");
}

#[tokio::test]
async fn any_json_value_is_a_channel() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    let channels =
        [json!(null), json!(true), json!(false), json!(0), json!(-3.5), json!(""), json!([]), json!({}), json!([null])];
    for channel in &channels {
        client.subscribe(channel.clone()).await;
    }
    for (index, channel) in channels.iter().enumerate() {
        backend_publish(&server, channel, &json!(index)).await;
        assert_eq!(client.recv().await, delivery("pubsub", channel, &json!(index)), "channel {channel}");
    }
    // false and null and 0 and "" are all different channels: each got exactly one delivery.
    let reply = client.call("pubsub", "unsubscribe", json!({"channel": null}), json!(1)).await;
    assert_eq!(reply, ok_reply("pubsub", &json!(1), &Value::Null));
}

#[tokio::test]
async fn by_default_any_connection_may_publish() {
    let server = TestServer::start().await;
    let mut anonymous = server.connect().await;
    let reply = anonymous.call("pubsub", "publish", json!({"channel": "c", "message": 1}), json!(1)).await;
    assert_eq!(reply, ok_reply("pubsub", &json!(1), &Value::Null));
}

/// Refuses publishes to the channel "locked"; fails (like a crashing Python hook) on "broken".
#[derive(Debug)]
struct LockedChannels;

impl Policy for LockedChannels {
    fn decide(&self, _connection: &Arc<Connection>, subject: &Value) -> PolicyFuture {
        let subject = subject.clone();
        Box::pin(async move {
            match subject.as_str() {
                Some("broken") => Err("the hook raised".to_owned()),
                Some("locked") => Ok(false),
                _ => Ok(true),
            }
        })
    }
}

#[tokio::test]
async fn the_publish_policy_refuses_with_not_authorized_but_never_the_backend() {
    let pubsub = PubSubService::new("pubsub").with_publish_policy(Arc::new(LockedChannels));
    let backend = PubSubBackend::new("pubsub_backend", &pubsub);
    let server = TestServer::start_services(
        common::test_config(),
        vec![AnyService::PubSub(pubsub)],
        vec![AnyService::PubSubBackend(backend)],
    )
    .await;
    let mut subscriber = server.connect().await;
    subscriber.subscribe(json!("locked")).await;
    let mut publisher = server.connect().await;
    let reply = publisher.call("pubsub", "publish", json!({"channel": "locked", "message": 1}), json!(1)).await;
    assert_eq!(reply, error_reply("pubsub", &json!(1), "Not authorized"));
    // A failing hook is an internal error, its details kept out of the reply.
    let reply = publisher.call("pubsub", "publish", json!({"channel": "broken", "message": 1}), json!(2)).await;
    assert_eq!(reply, error_reply("pubsub", &json!(2), "Internal error"));
    let reply = publisher.call("pubsub", "publish", json!({"channel": "open", "message": 1}), json!(3)).await;
    assert_eq!(reply, ok_reply("pubsub", &json!(3), &Value::Null));
    // The backend is always allowed, and the refused publish was never delivered.
    backend_publish(&server, &json!("locked"), &json!("from the backend")).await;
    assert_eq!(subscriber.recv().await, delivery("pubsub", &json!("locked"), &json!("from the backend")));
}

#[tokio::test]
async fn the_backend_service_has_only_publish() {
    let server = TestServer::start().await;
    for command in ["subscribe", "unsubscribe"] {
        let reply = backend_call(&server, "pubsub_backend", command, json!({"channel": "c"})).await;
        assert_eq!(
            reply,
            json!({"service": "pubsub_backend", "message": {"type": "error", "message": "Unknown command"}})
        );
    }
    let reply = backend_call(&server, "pubsub_backend", "publish", json!({"channel": "c"})).await;
    assert_eq!(reply, json!({"service": "pubsub_backend", "message": {"type": "error", "message": "Invalid params"}}));
}

#[tokio::test]
async fn closing_removes_every_subscription_within_100_ms() {
    let server = TestServer::start().await;
    let mut leaving = server.connect().await;
    let mut staying = server.connect().await;
    for channel in ["a", "b", "c"] {
        leaving.subscribe(json!(channel)).await;
    }
    staying.subscribe(json!("a")).await;
    assert_eq!(server.hub().subscriber_count(&json!("a")), 2);
    // Measured from the moment the close frame is sent, not from the end of the handshake.
    let close = CloseFrame { code: CloseCode::Normal, reason: "".into() };
    let closed_at = Instant::now();
    within(WAIT, "the close frame to be sent", leaving.ws.close(Some(close))).await.expect("the connection is open");
    let hub = Arc::clone(server.hub());
    common::eventually(WAIT, "the closed connection's subscriptions to go", || {
        let hub = Arc::clone(&hub);
        async move { ["a", "b", "c"].iter().map(|c| hub.subscriber_count(&json!(c))).sum::<usize>() == 1 }
    })
    .await;
    let since_close = closed_at.elapsed();
    assert!(since_close <= Duration::from_millis(100), "took {since_close:?}");
    let (code, _) = leaving.recv_close(WAIT).await;
    assert_eq!(code, 1000, "the server answers a client's close normally");
    // The remaining subscriber still gets its deliveries, and only one delivery was queued.
    let before = common::metric(&server, "snorky_deliveries_total").await;
    backend_publish(&server, &json!("a"), &json!("still here")).await;
    backend_publish(&server, &json!("b"), &json!("nobody")).await;
    assert_eq!(staying.recv().await, delivery("pubsub", &json!("a"), &json!("still here")));
    assert_eq!(common::metric(&server, "snorky_deliveries_total").await - before, 1);
}

#[tokio::test]
async fn dropping_the_tcp_connection_removes_subscriptions_within_100_ms() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    client.subscribe(json!("gone")).await;
    assert_eq!(server.hub().subscriber_count(&json!("gone")), 1);
    drop(client);
    let hub = Arc::clone(server.hub());
    let took = common::eventually(WAIT, "the dropped connection's subscription to go", || {
        let hub = Arc::clone(&hub);
        async move { hub.subscriber_count(&json!("gone")) == 0 }
    })
    .await;
    assert!(took <= Duration::from_millis(100), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_reach_each_subscriber_in_the_order_they_were_accepted() {
    const PER_PUBLISHER: usize = 500;
    let server = TestServer::start().await;
    let mut subscribers = Vec::new();
    for _ in 0..3 {
        let mut client = server.connect().await;
        client.subscribe(json!("ordered")).await;
        subscribers.push(client);
    }
    // Two frontend publishers and the backend publish concurrently.
    let mut tasks = Vec::new();
    for name in ["p1", "p2"] {
        let mut publisher = server.connect().await;
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_PUBLISHER {
                let message = json!({"from": name, "seq": i});
                publisher
                    .request("pubsub", "publish", json!({"channel": "ordered", "message": message}), json!(i))
                    .await;
            }
            for i in 0..PER_PUBLISHER {
                assert_eq!(publisher.recv().await, ok_reply("pubsub", &json!(i), &Value::Null));
            }
        }));
    }
    for i in 0..50 {
        backend_publish(&server, &json!("ordered"), &json!({"from": "backend", "seq": i})).await;
    }
    for task in tasks {
        within(WAIT * 3, "the publishers to finish", task).await.expect("publisher task");
    }
    let total = 2 * PER_PUBLISHER + 50;
    let mut sequences = Vec::new();
    for subscriber in &mut subscribers {
        let mut seen = Vec::with_capacity(total);
        for _ in 0..total {
            let frame = subscriber.recv().await;
            assert_eq!(frame["service"], "pubsub");
            assert_eq!(frame["message"]["channel"], "ordered");
            seen.push(frame["message"]["message"].clone());
        }
        // Each publisher's messages arrive in the order it sent them.
        for name in ["p1", "p2", "backend"] {
            let seqs: Vec<u64> =
                seen.iter().filter(|m| m["from"] == name).map(|m| m["seq"].as_u64().expect("seq")).collect();
            let expected = if name == "backend" { 50 } else { PER_PUBLISHER };
            assert_eq!(seqs, (0..expected as u64).collect::<Vec<_>>(), "{name}'s messages in order");
        }
        sequences.push(seen);
    }
    // Every subscriber saw the one order in which the server accepted the publishes.
    assert_eq!(sequences[0], sequences[1]);
    assert_eq!(sequences[0], sequences[2]);
}
