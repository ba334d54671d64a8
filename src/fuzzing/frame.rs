//! The `frame` target: raw text frames from several clients, through the WebSocket endpoint's
//! dispatch into every frontend service.
//!
//! The input is a series of frames separated by the byte `0xFF` (which UTF-8 never uses).
//! Each frame's first byte picks the client (its low bits) and what the transport does
//! around it (its high bits: keep the queues undrained, so clients fall behind and get closed
//! as slow consumers; or, for an empty frame, disconnect or reconnect the client); the rest is
//! the frame's text: not UTF-8, not JSON, not an envelope, or a request of any shape.

use super::server::{run, Harness};

/// Separates frames in an input.
const SEPARATOR: u8 = 0xFF;

/// Runs one input of the `frame` target.
pub fn frame(data: &[u8]) {
    run(async {
        let mut harness = Harness::new().await;
        for chunk in data.split(|&byte| byte == SEPARATOR) {
            let Some((&selector, text)) = chunk.split_first() else {
                continue;
            };
            let client = usize::from(selector & 0x0F) % harness.clients();
            match (text.is_empty(), selector & 0x30) {
                (true, 0x10) => harness.close(client).await,
                (true, 0x20) => {
                    harness.reconnect(client).await;
                }
                _ => harness.frame(client, text).await,
            }
            if selector & 0x80 == 0 {
                for client in 0..harness.clients() {
                    harness.drain(client);
                }
            }
        }
        harness.finish().await;
    });
}
