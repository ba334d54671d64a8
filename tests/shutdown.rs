//! Graceful shutdown (docs/protocol.md "Connection health": "On shutdown the server closes every
//! connection with 1001").

mod common;

use std::time::Duration;

use common::{within, RawClient, TestServer, WAIT};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_client_with_1001_and_run_returns() {
    let mut server = TestServer::start().await;
    let mut clients = Vec::new();
    for n in 0..5 {
        let mut client = server.connect().await;
        if n % 2 == 0 {
            client.subscribe(json!("news")).await;
        }
        clients.push(client);
    }
    let (frontend, backend) = (server.frontend, server.backend);
    server.trigger_shutdown();
    let closing = clients.iter_mut().map(|client| client.recv_close(WAIT));
    let codes: Vec<u16> = futures_util::future::join_all(closing).await.into_iter().map(|(code, _)| code).collect();
    assert_eq!(codes, [1001; 5], "every client is told the server is going away");
    server.join(WAIT).await.expect("run() returns Ok after a graceful shutdown");
    // Both listeners are gone.
    assert!(tokio::net::TcpStream::connect(frontend).await.is_err(), "the frontend no longer accepts");
    assert!(tokio::net::TcpStream::connect(backend).await.is_err(), "the backend no longer accepts");
}

#[tokio::test]
async fn shutdown_with_no_clients_returns_at_once() {
    let server = TestServer::start().await;
    within(Duration::from_secs(2), "an idle server to stop", server.shutdown()).await.expect("run() returns Ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_does_not_hold_shutdown_past_its_timeout() {
    let mut server = TestServer::start_with(|config| {
        config.shutdown_timeout = 1.0;
        config.close_timeout = 0.5;
    })
    .await;
    let mut polite = server.connect().await;
    // A raw client that never reads nor answers the close frame.
    let mut silent = RawClient::connect(server.frontend).await;
    server.trigger_shutdown();
    let (code, _) = polite.recv_close(WAIT).await;
    assert_eq!(code, 1001);
    server.join(Duration::from_secs(5)).await.expect("run() returns Ok");
    // The silent client was sent its close frame too.
    let frames = silent.read_until_end(WAIT).await;
    assert_eq!(frames.iter().find_map(common::RawFrame::close_code), Some(1001), "{frames:?}");
}
