//! The server's edge under hostile clients: connection caps, slow request heads, clients that
//! never read however they pretend otherwise, bad UTF-8, and oversized backend bodies. Each test
//! reproduces an attack and checks the server sheds it while serving everybody else.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{metric, within, RawClient, TestServer, KEY, WAIT};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Opens a TCP connection to `server` from the loopback address `source` (any 127.x.y.z works
/// on Linux), so tests can act as several client addresses.
async fn tcp_from(source: [u8; 4], server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket.bind(SocketAddr::from((source, 0))).expect("loopback source address");
    within(WAIT, "a TCP connection", socket.connect(server)).await.expect("connects")
}

/// Sends a WebSocket upgrade request on `stream` and returns the status line's code.
async fn upgrade_status(stream: &mut TcpStream) -> u16 {
    let request = "GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    stream.write_all(request.as_bytes()).await.expect("request sent");
    let mut head = Vec::new();
    within(WAIT, "the handshake's answer", async {
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.expect("readable") == 0 {
                break;
            }
            head.push(byte[0]);
        }
    })
    .await;
    let line = String::from_utf8_lossy(&head);
    line.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or_else(|| panic!("a status line: {line:?}"))
}

#[tokio::test]
async fn past_max_connections_the_handshake_gets_503_and_a_freed_slot_is_reused() {
    let server = TestServer::start_with(|config| config.max_connections = 3).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut stream = tcp_from([127, 0, 0, 1], server.frontend).await;
        assert_eq!(upgrade_status(&mut stream).await, 101);
        open.push(stream);
    }
    let mut refused = tcp_from([127, 0, 0, 1], server.frontend).await;
    assert_eq!(upgrade_status(&mut refused).await, 503, "the fourth connection is refused");
    assert_eq!(metric(&server, "snorky_connections_refused_total").await, 1);
    drop(open.pop());
    common::eventually(WAIT, "the closed connection's slot to come back", || async {
        metric(&server, "snorky_connections").await == 2
    })
    .await;
    let mut again = server.connect().await;
    again.subscribe(json!("works")).await;
}

#[tokio::test]
async fn the_cap_per_address_refuses_one_address_and_not_another() {
    let server = TestServer::start_with(|config| config.max_connections_per_address = Some(2)).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = tcp_from([127, 0, 0, 2], server.frontend).await;
        assert_eq!(upgrade_status(&mut stream).await, 101);
        held.push(stream);
    }
    let mut third = tcp_from([127, 0, 0, 2], server.frontend).await;
    assert_eq!(upgrade_status(&mut third).await, 503, "a third connection from 127.0.0.2");
    let mut other = tcp_from([127, 0, 0, 3], server.frontend).await;
    assert_eq!(upgrade_status(&mut other).await, 101, "another address still gets in");
}

#[tokio::test]
async fn past_max_http_connections_a_listener_waits_for_one_to_close_and_websockets_do_not_count() {
    let server = TestServer::start_with(|config| config.max_http_connections = Some(2)).await;
    // A WebSocket leaves the count once upgraded: three fit under a cap of two.
    let mut clients = Vec::new();
    for n in 0..3 {
        let mut client = server.connect().await;
        client.subscribe(json!(n)).await;
        clients.push(client);
    }
    // Two connections that send nothing hold the frontend's two places...
    let mut idle =
        vec![tcp_from([127, 0, 0, 1], server.frontend).await, tcp_from([127, 0, 0, 1], server.frontend).await];
    let mut third = tcp_from([127, 0, 0, 1], server.frontend).await;
    third.write_all(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n").await.expect("a request sent");
    let mut answer = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(300), third.read(&mut answer)).await;
    assert!(early.is_err(), "a third connection is not served while two are open");
    // ...the backend listener has places of its own...
    common::backend_publish(&server, &json!("elsewhere"), &json!(1)).await;
    // ...and the third is served once one of them closes.
    drop(idle.pop());
    let read = within(WAIT, "the third connection to be served", third.read(&mut answer)).await.expect("an answer");
    assert!(answer[..read].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&answer[..read]));
}

#[tokio::test]
async fn past_max_http_connections_per_address_one_address_is_closed_at_once_and_another_served() {
    let server = TestServer::start_with(|config| config.max_http_connections_per_address = Some(2)).await;
    let _held = [tcp_from([127, 0, 0, 2], server.frontend).await, tcp_from([127, 0, 0, 2], server.frontend).await];
    let health = b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n";
    let mut third = tcp_from([127, 0, 0, 2], server.frontend).await;
    let _ = third.write_all(health).await;
    let mut answer = [0u8; 64];
    let read = within(WAIT, "the third connection from 127.0.0.2 to be closed", third.read(&mut answer)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "closed without an answer: {read:?}");
    let mut other = tcp_from([127, 0, 0, 3], server.frontend).await;
    other.write_all(health).await.expect("a request sent");
    let read = within(WAIT, "another address to be served", other.read(&mut answer)).await.expect("an answer");
    assert!(answer[..read].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&answer[..read]));
}

#[tokio::test]
async fn a_client_that_stops_reading_its_answers_loses_its_connection_and_its_place() {
    let server = TestServer::start_with(|config| {
        config.max_http_connections = Some(2);
        config.stall_timeout = 0.5;
        config.close_timeout = 0.5;
    })
    .await;
    // Two connections send pipelined requests whose answers they never read, through a tiny
    // receive buffer: the server's writes block while they hold both places.
    let mut floods = Vec::new();
    for _ in 0..2 {
        let socket = TcpSocket::new_v4().expect("a socket");
        socket.set_recv_buffer_size(1024).expect("a small receive buffer");
        let stream = within(WAIT, "a TCP connection", socket.connect(server.frontend)).await.expect("connects");
        let (reader, mut writer) = stream.into_split();
        let flood = tokio::spawn(async move {
            let requests = b"GET /sockjs/iframe.html HTTP/1.1\r\nHost: test\r\n\r\n".repeat(1000);
            for _ in 0..40 {
                if writer.write_all(&requests).await.is_err() {
                    break;
                }
            }
            writer
        });
        floods.push((flood, reader));
    }
    // Once its writes have been blocked for stall_timeout + close_timeout, it is cut off and the
    // next client is served.
    let mut next = tcp_from([127, 0, 0, 1], server.frontend).await;
    next.write_all(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n").await.expect("a request sent");
    let mut answer = [0u8; 64];
    let read = within(WAIT, "the next client to be served", next.read(&mut answer)).await.expect("an answer");
    assert!(answer[..read].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&answer[..read]));
    for (flood, _reader) in floods {
        flood.abort();
    }
}

#[tokio::test]
async fn half_sent_request_heads_are_cut_off_on_both_listeners() {
    let server = TestServer::start_with(|config| config.header_read_timeout = 0.5).await;
    let mut streams = Vec::new();
    for listener in [server.frontend, server.backend] {
        for _ in 0..50 {
            let mut stream = tcp_from([127, 0, 0, 1], listener).await;
            stream.write_all(b"GET /ws HTTP/1.1\r\nHost: test\r\nX-Slow: ").await.expect("half a head sent");
            streams.push(stream);
        }
    }
    // Every one of them is closed by the server (end of stream, possibly after a 408 answer).
    for stream in &mut streams {
        within(WAIT, "the server to drop a connection with a half-sent head", async {
            let mut buffer = [0u8; 512];
            while stream.read(&mut buffer).await.is_ok_and(|read| read > 0) {}
        })
        .await;
    }
    // Meanwhile and afterwards, real clients are served on both listeners.
    let mut client = server.connect().await;
    client.subscribe(json!("fine")).await;
    common::backend_publish(&server, &json!("fine"), &json!(1)).await;
    assert_eq!(client.recv().await["message"]["message"], 1);
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_by_the_stall_rule_whatever_pongs_it_sends() {
    // Pings far apart: only the stall rule can notice this client within the test.
    let server = TestServer::start_with(|config| {
        config.ping_interval = 3600.0;
        config.stall_timeout = 1.0;
        config.close_timeout = 0.5;
        config.outbox_limit = 256 * 1024 * 1024;
    })
    .await;
    let mut stalled = RawClient::connect(server.frontend).await;
    stalled
        .send_text(r#"{"service":"pubsub","message":{"command":"subscribe","params":{"channel":"flood"},"callId":1}}"#)
        .await;
    // About 24 MB, far below the queue bound but more than the socket buffers hold.
    let chunk = json!(common::filler(1024 * 1024 - 200));
    for _ in 0..24 {
        common::backend_publish(&server, &json!("flood"), &chunk).await;
    }
    // The client keeps sending pongs (solicited-looking or not) and never reads.
    let hub = std::sync::Arc::clone(server.hub());
    let dropped = async {
        while hub.subscriber_count(&json!("flood")) != 0 {
            stalled.send_pong(&[0, 0, 0, 0, 0, 0, 0, 1]).await;
            stalled.send_pong(b"").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    within(WAIT, "the stalled client to be dropped", dropped).await;
    assert_eq!(metric(&server, "snorky_slow_consumers_dropped_total").await, 1, "closed as a slow consumer");
    // Its socket is still full, so the close frame may not have fitted; if it did, it says 1008.
    let frames = stalled.read_until_end(WAIT).await;
    if let Some(close) = frames.iter().find(|frame| frame.opcode == 8) {
        assert_eq!(close.close_code(), Some(1008));
    }
    common::eventually(WAIT, "the connections gauge to return to 0", || async {
        metric(&server, "snorky_connections").await == 0
    })
    .await;
}

#[tokio::test]
async fn unsolicited_pongs_do_not_answer_pings() {
    let server = TestServer::start_with(|config| {
        config.ping_interval = 0.2;
        config.close_timeout = 0.5;
    })
    .await;
    let mut pretender = RawClient::connect(server.frontend).await;
    // It reads everything (so nothing blocks) but answers each ping with a pong of its own
    // invention: it is still dropped as a dead peer.
    let frames = within(
        WAIT,
        "the pretender to be dropped",
        Box::pin(async {
            let mut frames = Vec::new();
            loop {
                let frame = pretender.read_frame(WAIT).await;
                let done = frame.opcode == 8;
                if frame.opcode == 9 {
                    pretender.send_pong(b"not your payload").await;
                }
                frames.push(frame);
                if done {
                    return frames;
                }
            }
        }),
    )
    .await;
    assert!(frames.iter().filter(|frame| frame.opcode == 9).count() >= 2, "pinged twice first: {frames:?}");
}

#[tokio::test]
async fn a_text_frame_that_is_not_utf8_closes_with_1007() {
    let server = TestServer::start().await;
    let mut raw = RawClient::connect(server.frontend).await;
    raw.send_frame(0x1, b"{\"service\": \"\xff\xfe\"}").await;
    let frames = raw.read_until_end(WAIT).await;
    let close = frames.iter().find(|frame| frame.opcode == 8).expect("a close frame");
    assert_eq!(close.close_code(), Some(1007));
}

#[tokio::test]
async fn frames_that_break_the_websocket_protocol_close_with_1002() {
    let server = TestServer::start().await;
    // An unmasked text frame, a frame with a reserved opcode, a ping of 126 bytes, a continuation
    // frame with nothing to continue, a frame with a reserved bit.
    let unmasked = vec![0x81, 0x02, b'{', b'}'];
    let reserved_opcode = vec![0x83, 0x80, 0, 0, 0, 0];
    let mut long_ping = vec![0x89, 0xfe, 0x00, 0x7e, 0, 0, 0, 0];
    long_ping.extend(std::iter::repeat_n(0u8, 126));
    let stray_continuation = vec![0x80, 0x80, 0, 0, 0, 0];
    let reserved_bit = vec![0xc1, 0x80, 0, 0, 0, 0];
    for bytes in [unmasked, reserved_opcode, long_ping, stray_continuation, reserved_bit] {
        let mut raw = RawClient::connect(server.frontend).await;
        raw.stream.write_all(&bytes).await.expect("the frame is sent");
        let frames = raw.read_until_end(WAIT).await;
        let close = frames.iter().find(|frame| frame.opcode == 8).expect("a close frame");
        assert_eq!(close.close_code(), Some(1002), "after {bytes:02x?}");
    }
}

#[tokio::test]
async fn a_backend_body_announced_over_the_limit_gets_413_before_it_is_sent() {
    let server = TestServer::start().await;
    let mut stream = tcp_from([127, 0, 0, 1], server.backend).await;
    let head = format!(
        "POST /backend HTTP/1.1\r\nHost: test\r\nX-Backend-Key: {KEY}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        100 * 1024 * 1024
    );
    stream.write_all(head.as_bytes()).await.expect("head sent");
    // Not a byte of the body follows: the answer must come from the head alone.
    let mut answer = vec![0u8; 512];
    let read = within(WAIT, "the 413 answer", stream.read(&mut answer)).await.expect("readable");
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("backend_body_limit"), "the answer names the setting: {answer}");
}
