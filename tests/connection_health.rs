//! Connection health under abuse (docs/protocol.md "Connection health"): clients that stop reading,
//! clients that vanish without a close frame, clients that never answer pings.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{delivery, metric, ok_reply, within, RawClient, TestServer, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_answers_pings_is_dropped_and_one_that_answers_stays() {
    let server = TestServer::start_with(|config| config.ping_interval = 0.2).await;
    let mut answering = server.connect().await;
    answering.subscribe(json!("alive")).await;
    let mut silent = RawClient::connect(server.frontend).await;
    let started = tokio::time::Instant::now();
    // The silent client reads (so the server's writes go through) but never sends a pong. The
    // answering one is read until the silent one is gone, which makes tungstenite answer its
    // pings; it must get nothing but pings meanwhile.
    let silent_ends = silent.read_until_end(WAIT);
    tokio::pin!(silent_ends);
    let frames = loop {
        tokio::select! {
            frames = &mut silent_ends => break frames,
            message = answering.ws.next() => match message {
                Some(Ok(Message::Ping(_))) => answering.pings += 1,
                other => panic!("the answering client got {other:?}"),
            },
        }
    };
    let lasted = started.elapsed();
    let pings = frames.iter().filter(|frame| frame.opcode == 9).count();
    assert!(pings >= 2, "the server pinged the silent client: {frames:?}");
    assert!(lasted >= Duration::from_millis(400), "not dropped before two pings went unanswered ({lasted:?})");
    // (read_until_end returned: the server ended the connection. docs/protocol.md names no code for
    // this case, so whichever close frame came first is not checked.)
    assert!(frames.iter().all(|frame| frame.opcode != 1), "only control frames: {frames:?}");
    // The answering client was pinged too, survived, and still works.
    assert!(answering.pings >= 2, "the answering client was pinged ({})", answering.pings);
    common::backend_publish(&server, &json!("alive"), &json!("still here")).await;
    assert_eq!(answering.recv().await, delivery("pubsub", &json!("alive"), &json!("still here")));
    common::eventually(WAIT, "the dropped client to be counted out", || async {
        metric(&server, "snorky_connections").await == 1
    })
    .await;
}

#[tokio::test]
async fn pings_answered_by_a_raw_client_keep_it_connected() {
    let server = TestServer::start_with(|config| config.ping_interval = 0.2).await;
    let mut raw = RawClient::connect(server.frontend).await;
    // Answer five pings by hand (a masked pong with the ping's payload), well past the two
    // unanswered pings that would drop a silent client.
    for _ in 0..5 {
        let frame = raw.read_frame(WAIT).await;
        assert_eq!(frame.opcode, 9, "a ping: {frame:?}");
        raw.send_pong(&frame.payload).await;
    }
    raw.send_text(r#"{"service":"pubsub","message":{"command":"subscribe","params":{"channel":"raw"},"callId":1}}"#)
        .await;
    let reply = loop {
        let frame = raw.read_frame(WAIT).await;
        match frame.opcode {
            9 => raw.send_pong(&frame.payload).await,
            1 => break serde_json::from_slice::<Value>(&frame.payload).expect("JSON"),
            other => panic!("unexpected opcode {other}: {frame:?}"),
        }
    };
    assert_eq!(reply, ok_reply("pubsub", &json!(1), &Value::Null));
}

// One story from start to end: the publisher, both subscribers and the checks belong together.
#[allow(clippy::too_many_lines)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_with_1008_while_others_get_everything_in_order() {
    const MESSAGES: u64 = 100_000;
    /// How far the reading subscriber may fall behind the publisher: about 2 MB, half the default
    /// outgoing bound, so it can never be mistaken for a slow consumer itself.
    const WINDOW: u64 = 2_000;
    let server = TestServer::start().await;
    let mut stalled = server.connect().await;
    stalled.subscribe(json!("firehose")).await;
    let mut reader = server.connect().await;
    reader.subscribe(json!("firehose")).await;

    // The reading subscriber counts what it got, checking order as it goes.
    let (progress, mut progress_seen) = watch::channel(0u64);
    let reading = tokio::spawn(async move {
        for expected in 0..MESSAGES {
            // (`recv` skips pings: on a loaded machine the test can outlast a ping interval.)
            let value = reader.recv().await;
            assert_eq!(value["message"]["message"]["seq"], expected, "deliveries in publish order");
            progress.send_replace(expected + 1);
        }
        reader
    });

    // The publisher: ~1 KB messages, its replies read on a task of their own.
    let publisher = server.connect().await;
    let (mut sink, mut replies) = publisher.ws.split();
    let replying = tokio::spawn(async move {
        let mut call_id = 0;
        while call_id < MESSAGES {
            let frame = within(WAIT, "the publisher's next reply", replies.next()).await.expect("open").expect("ok");
            if matches!(frame, Message::Ping(_) | Message::Pong(_)) {
                continue;
            }
            let Message::Text(text) = frame else { panic!("a text frame, got {frame:?}") };
            let value: Value = serde_json::from_str(text.as_str()).expect("JSON");
            assert_eq!(value, ok_reply("pubsub", &json!(call_id), &Value::Null));
            call_id += 1;
        }
    });
    let pad = common::filler(1000);
    let publishing = tokio::spawn(async move {
        for seq in 0..MESSAGES {
            if seq >= WINDOW {
                within(WAIT, "the reading subscriber to keep up", progress_seen.wait_for(|got| *got >= seq - WINDOW))
                    .await
                    .expect("the reading subscriber is alive");
            }
            let frame = json!({"service": "pubsub", "message": {"command": "publish", "params": {"channel": "firehose", "message": {"seq": seq, "pad": pad}}, "callId": seq}});
            sink.feed(Message::text(frame.to_string())).await.expect("the publisher stays connected");
            if seq % 64 == 63 {
                sink.flush().await.expect("the publisher stays connected");
            }
        }
        sink.flush().await.expect("the publisher stays connected");
        sink
    });

    // The stalled client is cut off once its queue overflows, long before the publishing ends.
    common::eventually(Duration::from_secs(120), "the stalled client to be closed as a slow consumer", || async {
        metric(&server, "snorky_slow_consumers_dropped_total").await >= 1
    })
    .await;
    // Reading it now yields what fitted in the buffers, in order and without gaps, then 1008.
    let (code, received) = stalled.recv_close(WAIT).await;
    assert_eq!(code, 1008, "a client that stopped reading is closed with 1008");
    assert!(!received.is_empty(), "it got what fitted in its buffers first");
    for (seq, frame) in received.iter().enumerate() {
        assert_eq!(frame, &delivery("pubsub", &json!("firehose"), &frame["message"]["message"]));
        assert_eq!(frame["message"]["message"]["seq"], seq, "a prefix of the publishes, in order");
    }
    assert!((received.len() as u64) < MESSAGES / 2, "it was cut off early ({} messages)", received.len());

    let _sink = within(Duration::from_secs(300), "the publisher to finish", publishing).await.expect("publisher");
    within(Duration::from_secs(300), "the publisher's replies", replying).await.expect("replies in order");
    let _reader = within(Duration::from_secs(300), "the reading subscriber", reading).await.expect("all messages");
    // Only the stalled client was dropped; the reader and the publisher are still connected.
    assert_eq!(metric(&server, "snorky_slow_consumers_dropped_total").await, 1);
    assert_eq!(server.hub().subscriber_count(&json!("firehose")), 1);
    common::eventually(WAIT, "the stalled client to be counted out", || async {
        metric(&server, "snorky_connections").await == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_vanishing_without_a_close_frame_leave_no_trace() {
    const CLIENTS: usize = 1_000;
    const BATCH: usize = 100;
    let server = TestServer::start().await;
    let server = Arc::new(server);
    let mut watcher = server.connect().await;
    watcher.subscribe(json!("heartbeat")).await;
    for batch in 0..CLIENTS / BATCH {
        let mut clients = JoinSet::new();
        for n in 0..BATCH {
            let server = Arc::clone(&server);
            clients.spawn(async move {
                let stream = within(WAIT, "a TCP connection", tokio::net::TcpStream::connect(server.frontend))
                    .await
                    .expect("the server accepts connections");
                // Half reset the connection (RST), half just close it (FIN); neither says goodbye.
                if n % 2 == 0 {
                    stream.set_zero_linger().expect("SO_LINGER can be set");
                }
                let (ws, _) = within(
                    WAIT,
                    "the handshake",
                    tokio_tungstenite::client_async(server.ws_url(), MaybeTlsStream::Plain(stream)),
                )
                .await
                .expect("the handshake succeeds");
                let mut client = common::Client { ws, pings: 0 };
                client.subscribe(json!("vanish")).await;
                client
            });
        }
        let mut connected = Vec::with_capacity(BATCH);
        while let Some(client) = clients.join_next().await {
            connected.push(client.expect("a client connects and subscribes"));
        }
        assert_eq!(server.hub().subscriber_count(&json!("vanish")), BATCH);
        // Gone, without a close frame: the sockets are simply dropped.
        for client in connected {
            drop(client.ws.into_inner());
        }
        // The server keeps serving the client that stayed.
        common::backend_publish(&server, &json!("heartbeat"), &json!(batch)).await;
        assert_eq!(watcher.recv().await, delivery("pubsub", &json!("heartbeat"), &json!(batch)));
    }
    let hub = Arc::clone(server.hub());
    common::eventually(WAIT, "every vanished client's subscription to go", || {
        let hub = Arc::clone(&hub);
        async move { hub.subscriber_count(&json!("vanish")) == 0 }
    })
    .await;
    common::eventually(WAIT, "the connections gauge to count only the watcher", || async {
        metric(&server, "snorky_connections").await == 1
    })
    .await;
    assert_eq!(
        metric(&server, "snorky_connections_opened_total").await,
        i64::try_from(CLIENTS + 1).expect("a thousand")
    );
    watcher.close().await;
    common::eventually(WAIT, "the connections gauge to return to 0", || async {
        metric(&server, "snorky_connections").await == 0
    })
    .await;
    // And a newcomer is served as usual.
    let mut newcomer = server.connect().await;
    newcomer.subscribe(json!("vanish")).await;
    common::backend_publish(&server, &json!("vanish"), &json!("hello")).await;
    assert_eq!(newcomer.recv().await, delivery("pubsub", &json!("vanish"), &json!("hello")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_by_pings_even_below_the_queue_bound() {
    // A queue bound far above what is published: only the ping rule can notice this client.
    let server = TestServer::start_with(|config| {
        config.ping_interval = 0.2;
        config.close_timeout = 0.5;
        config.outbox_limit = 256 * 1024 * 1024;
    })
    .await;
    let mut stalled = server.connect().await;
    stalled.subscribe(json!("flood")).await;
    // About 24 MB: more than the kernel's socket buffers hold, so the server's writes block.
    let chunk = json!(common::filler(1024 * 1024 - 200));
    for _ in 0..24 {
        common::backend_publish(&server, &json!("flood"), &chunk).await;
    }
    let hub = Arc::clone(server.hub());
    common::eventually(WAIT, "the stalled client to be dropped for not answering pings", || {
        let hub = Arc::clone(&hub);
        async move { hub.subscriber_count(&json!("flood")) == 0 }
    })
    .await;
    common::eventually(WAIT, "the connections gauge to return to 0", || async {
        metric(&server, "snorky_connections").await == 0
    })
    .await;
    assert_eq!(metric(&server, "snorky_slow_consumers_dropped_total").await, 0, "not a queue overflow");
    drop(stalled);
}

#[tokio::test]
async fn a_ping_from_the_client_is_answered_with_a_pong() {
    // The default interval (30 s): no server ping gets in the way.
    let server = TestServer::start().await;
    let mut raw = RawClient::connect(server.frontend).await;
    raw.send_frame(0x9, b"are you there").await;
    let frame = raw.read_frame(WAIT).await;
    assert_eq!(frame, common::RawFrame { opcode: 0xa, payload: b"are you there".to_vec() });
}
