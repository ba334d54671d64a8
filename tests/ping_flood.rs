//! A client that sends pings as fast as it can and never reads. The server answers every ping
//! with a pong, which the socket cannot take: the pongs must not pile up in the server's memory.
//!
//! SockJS's websocket transports get the same bound (`ws::with_limits`). This is its own test
//! binary, so that no other test's allocations move the resident memory it measures.

mod common;

use std::time::{Duration, Instant};

use common::{RawClient, TestServer};
use tokio::io::AsyncWriteExt;

/// What the client sends: more than the bound could hide, and little enough to send in seconds.
const FLOOD: usize = 96 * 1024 * 1024;
/// How long the client floods at most (a server that stops reading makes its writes wait).
const FLOOD_FOR: Duration = Duration::from_secs(10);

/// This process's resident memory, in bytes.
fn resident() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux's /proc");
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).expect("a VmRSS line");
    let kib: usize = line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("a number of KiB");
    kib * 1024
}

/// One masked ping frame with a 125-byte payload (the most a control frame carries).
fn ping() -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut frame = vec![0x89, 0x80 | 0x7d]; // FIN and ping; masked, 125 bytes
    frame.extend_from_slice(&mask);
    frame.extend((0..125).map(|i| b'p' ^ mask[i % 4]));
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_floods_pings_and_never_reads_cannot_grow_the_servers_memory() {
    let server = TestServer::start_with(|config| {
        config.outbox_limit = 1024 * 1024;
        config.backend_body_limit = 1024 * 1024;
        // The server's own pings must not end the flood early: this is about the pongs.
        config.ping_interval = 60.0;
    })
    .await;
    let mut flooder = RawClient::connect(server.frontend).await;
    let batch: Vec<u8> = std::iter::repeat_n(ping(), 512).flatten().collect();
    let before = resident();
    let mut peak = before;
    let mut sent = 0;
    let started = Instant::now();
    while sent < FLOOD && started.elapsed() < FLOOD_FOR {
        let left = FLOOD_FOR.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, flooder.stream.write_all(&batch)).await {
            Ok(Ok(())) => sent += batch.len(),
            Ok(Err(_)) | Err(_) => break, // the server closed the connection, or stopped reading
        }
        peak = peak.max(resident());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    peak = peak.max(resident());
    let grown = peak.saturating_sub(before);
    // The send buffer's bound here is about 1.1 MiB (the 1 MiB queue bound, a 16 KiB batch, room
    // for control frames); before it, the pongs of this flood took about as much as the flood.
    assert!(
        grown < 32 * 1024 * 1024,
        "the server's memory grew by {} MiB while the client sent {} MiB of pings",
        grown >> 20,
        sent >> 20
    );
    assert!(sent >= 16 * 1024 * 1024, "the flood must be large enough to tell: only {} MiB sent", sent >> 20);
}
