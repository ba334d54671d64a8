//! The SockJS protocol test application: the four services the public SockJS protocol suite
//! expects at the root of a server, on the same code as Snorky's `/sockjs`.
//!
//! - `/echo`: sends every message back; streaming responses end after 4,096 bytes.
//! - `/close`: closes every session at once with 3000 "Go away!".
//! - `/disabled_websocket_echo`: `/echo` without the WebSocket transports.
//! - `/cookie_needed_echo`: `/echo` with the `JSESSIONID` cookie.
//!
//! `snorky sockjs-echo --address 127.0.0.1:PORT` runs it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{routes, Behaviour, Endpoint, Options};
use crate::connections::ConnectionTable;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::registry::ServiceRegistry;
use crate::server::{listener, App, ServerConfig};

/// The streaming response limit the protocol suite expects of its test server.
pub const RESPONSE_LIMIT: usize = 4096;

/// The test application, bound and ready to run.
#[derive(Debug)]
pub struct EchoServer {
    app: Arc<App>,
    listener: TcpListener,
}

impl EchoServer {
    /// Binds `address` (`127.0.0.1:0` picks a free port).
    pub async fn bind(address: &str) -> Result<EchoServer, Error> {
        let config = ServerConfig {
            frontend_address: address.to_owned(),
            // The application has no backend; the key only satisfies the shared validation.
            api_key: Some("sockjs-echo-has-no-backend".into()),
            allowed_origins: vec!["*".into()],
            sockjs_response_limit: RESPONSE_LIMIT,
            ..ServerConfig::default()
        };
        config.validate()?;
        let listener =
            TcpListener::bind(address).await.map_err(|source| Error::Bind { address: address.to_owned(), source })?;
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::register(&mut registry));
        let table = ConnectionTable::with_revocation(
            config.max_connections,
            config.max_connections_per_address,
            config.revocation_bounds(),
        );
        // No services and no broker: the endpoints' behaviours answer the clients themselves.
        let app = App {
            config,
            frontend: ServiceRegistry::default(),
            backend: ServiceRegistry::default(),
            metrics,
            registry,
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
            table,
            broker: None,
        };
        Ok(EchoServer { app: Arc::new(app), listener })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        Ok(self.listener.local_addr()?)
    }

    /// The application's routes.
    pub fn router(app: &Arc<App>) -> Router {
        let base = Options::from_config(&app.config);
        let endpoint = |prefix: &str, behaviour: Behaviour, websocket: bool, cookie_needed: bool| {
            let options = Options { prefix: prefix.to_owned(), websocket, cookie_needed, ..base.clone() };
            routes(Arc::clone(app), Arc::new(Endpoint::new(options, behaviour)))
        };
        Router::new()
            .merge(endpoint("/echo", Behaviour::Echo, true, false))
            .merge(endpoint("/close", Behaviour::Close, true, false))
            .merge(endpoint("/disabled_websocket_echo", Behaviour::Echo, false, false))
            .merge(endpoint("/cookie_needed_echo", Behaviour::Echo, true, true))
    }

    /// Serves until `shutdown` resolves, then closes every session and waits for them.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
        let app = self.app;
        log::info!("sockjs-echo listening on http://{}", self.listener.local_addr()?);
        let token = app.shutdown.clone();
        let trigger = token.clone();
        tokio::spawn(async move {
            shutdown.await;
            trigger.cancel();
        });
        let router = EchoServer::router(&app);
        let grace = app.config.shutdown_grace();
        listener::serve(self.listener, router, app.config.serving("sockjs-echo"), token).await;
        app.connections.close();
        let _ = tokio::time::timeout(grace, app.connections.wait()).await;
        Ok(())
    }
}
