//! The accept loop both listeners share: HTTP/1.1 with upgrades (WebSocket), a deadline for the
//! request head, a deadline for a stalled write, a cap on open HTTP connections, `TCP_NODELAY`,
//! the peer's address for handlers, and graceful shutdown.
//!
//! Written on hyper's own connection builder rather than `axum::serve` because the latter offers
//! no timeout for reading a request head: without one, a client that sends half a request holds
//! its socket (and a task) forever.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::address_counts::AddressCounts;

/// How long the loop pauses after an accept error that is not about one connection (out of
/// file descriptors, say), so that it does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How a listener serves its connections.
#[derive(Debug, Clone, Copy)]
pub struct Serving {
    /// The listener's name in logs: `"frontend"`, `"backend"`.
    pub name: &'static str,
    /// How long a client may take to send a request's head.
    pub header_timeout: Duration,
    /// How long a write to the client may stay blocked (it takes nothing: it stopped reading)
    /// before the connection is dropped.
    pub write_stall: Duration,
    /// The most HTTP connections open at once (an upgraded one leaves the count: WebSockets
    /// have their own cap). Past it the loop stops accepting until one closes, so that idle or
    /// slow requests cannot take every file descriptor of the process, which its WebSockets and
    /// its own connections (Redis, the web application) need too.
    pub max_connections: usize,
    /// The most of those from one client address (`None`: no cap); past it a new one is closed
    /// at once.
    pub max_per_address: Option<usize>,
    /// How long shutdown lets requests in flight finish.
    pub grace: Duration,
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets requests in flight
/// finish, waiting at most `serving.grace`.
pub async fn serve(listener: TcpListener, router: Router, serving: Serving, shutdown: CancellationToken) {
    let connections = TaskTracker::new();
    // A semaphore holds at most MAX_PERMITS (more than a process can have sockets).
    let slots = Arc::new(Semaphore::new(serving.max_connections.min(Semaphore::MAX_PERMITS)));
    let mut saturated = false;
    let per_address = PerAddress::new(serving.max_per_address);
    loop {
        let Some(slot) = free_slot(&slots, &mut saturated, &serving, &shutdown).await else { break };
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
        let Some(address_slot) = per_address.admit(remote.ip()) else {
            log::debug!(
                "{} listener: closed a connection from {remote}: max_http_connections_per_address",
                serving.name
            );
            continue;
        };
        let stream = WriteDeadline::new(stream, serving.write_stall);
        let connection = serve_connection(stream, remote, router.clone(), serving.header_timeout, shutdown.clone());
        connections.spawn(counted(connection, (slot, address_slot)));
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(serving.grace, connections.wait()).await.is_err() {
        log::warn!("shutdown: {} HTTP connections did not finish in time", connections.len());
    }
}

/// A place for the next connection, waiting for one to close when every place is taken (said
/// once per such wait); `None` on shutdown.
async fn free_slot(
    slots: &Arc<Semaphore>,
    saturated: &mut bool,
    serving: &Serving,
    shutdown: &CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(slot) = Arc::clone(slots).try_acquire_owned() {
        *saturated = false;
        return Some(slot);
    }
    if !*saturated {
        *saturated = true;
        log::warn!(
            "{} listener: {} HTTP connections are open (max_http_connections): new ones wait until one closes",
            serving.name,
            serving.max_connections
        );
    }
    tokio::select! {
        () = shutdown.cancelled() => None,
        slot = Arc::clone(slots).acquire_owned() => slot.ok(),
    }
}

/// Holds `slots` while `connection` is served: until the connection closes, or is upgraded and
/// handed over.
async fn counted<Slots>(connection: impl Future<Output = ()>, slots: Slots) {
    connection.await;
    drop(slots);
}

/// The open HTTP connections of each client address, under a cap (none are counted without
/// one).
struct PerAddress {
    cap: Option<usize>,
    counts: Arc<std::sync::Mutex<AddressCounts>>,
}

impl PerAddress {
    fn new(cap: Option<usize>) -> Self {
        PerAddress { cap, counts: Arc::default() }
    }

    /// A place for one more connection from `address`; `None` when it holds `cap` already.
    fn admit(&self, address: IpAddr) -> Option<AddressSlot> {
        if self.cap.is_none() {
            return Some(AddressSlot(None));
        }
        let added = crate::sync::lock(&self.counts).add(address, self.cap);
        added.then(|| AddressSlot(Some((Arc::clone(&self.counts), address))))
    }
}

/// One connection's place among its address's (if counted); given back when dropped.
struct AddressSlot(Option<(Arc<std::sync::Mutex<AddressCounts>>, IpAddr)>);

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let Some((counts, address)) = &self.0 {
            crate::sync::lock(counts).remove(*address);
        }
    }
}

async fn serve_connection(
    stream: WriteDeadline<TcpStream>,
    remote: SocketAddr,
    router: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    // Small frames (replies, deliveries) must leave at once: Nagle's algorithm would hold them
    // back waiting for the peer's ACK and add tens of milliseconds to p99 latency.
    if let Err(err) = stream.inner.set_nodelay(true) {
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

/// A socket whose writes may not stay blocked longer than `limit`: a client that takes nothing
/// for that long (it stopped reading, or reads a byte now and then) is cut off. Without it, such
/// a client holds its connection, and its place under `max_http_connections`, for as long as it
/// likes: hyper's own deadline covers only reading a request head. Any progress starts the clock
/// again. It stays under an upgraded WebSocket too, where the connection's stall rule closes
/// first (the limit is longer).
pub struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    /// The deadline, one timer per connection, set again at each stall.
    clock: Pin<Box<tokio::time::Sleep>>,
    /// Whether a write or flush waits for the client (the clock runs).
    stalled: bool,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, limit: Duration) -> Self {
        WriteDeadline { inner, limit, clock: Box::pin(tokio::time::sleep(limit)), stalled: false }
    }

    /// After the socket answered `outcome`: progress stops the clock; waiting starts it, and
    /// fails the write once it ran out.
    fn watch<T>(&mut self, outcome: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if outcome.is_ready() {
            self.stalled = false;
            return outcome;
        }
        let limit = self.limit;
        if !self.stalled {
            self.stalled = true;
            self.clock.as_mut().reset(tokio::time::Instant::now() + limit);
        }
        match self.clock.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client took nothing for {limit:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let outcome = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(outcome, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let outcome = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(outcome, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let outcome = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(outcome, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
