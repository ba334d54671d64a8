//! The accept loop both listeners share: HTTP/1.1 with upgrades (WebSocket), a deadline for the
//! request head, `TCP_NODELAY`, the peer's address for handlers, and graceful shutdown.
//!
//! Written on hyper's own connection builder rather than `axum::serve` because the latter offers
//! no timeout for reading a request head: without one, a client that sends half a request holds
//! its socket (and a task) forever.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

/// How long the loop pauses after an accept error that is not about one connection (out of
/// file descriptors, say), so that it does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets requests in flight
/// finish, waiting at most `grace`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let connections = TaskTracker::new();
    loop {
        let (stream, remote) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    log::warn!("accept failed: {err}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        connections.spawn(serve_connection(stream, remote, router.clone(), header_timeout, shutdown.clone()));
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(grace, connections.wait()).await.is_err() {
        log::warn!("shutdown: {} HTTP connections did not finish in time", connections.len());
    }
}

async fn serve_connection(
    stream: TcpStream,
    remote: SocketAddr,
    router: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    // Small frames (replies, deliveries) must leave at once: Nagle's algorithm would hold them
    // back waiting for the peer's ACK and add tens of milliseconds to p99 latency.
    if let Err(err) = stream.set_nodelay(true) {
        log::debug!("could not set TCP_NODELAY: {err}");
    }
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(remote));
        let mut router = router.clone();
        async move { router.call(request.map(Body::new)).await }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let finished = tokio::select! {
        finished = connection.as_mut() => finished,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = finished {
        log::debug!("HTTP connection from {remote} ended: {err}");
    }
}
