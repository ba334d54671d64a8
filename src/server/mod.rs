//! The axum server: a frontend listener (`GET /ws`, SockJS under `/sockjs`, `GET /health`) and
//! a backend listener
//! (`POST /backend`, `GET /health`, `GET /metrics`), graceful shutdown, and the per-server
//! state connections share.

pub mod backend;
pub mod body;
pub mod config;
pub mod descriptors;
pub mod dispatch;
pub mod listener;
pub mod origin;
pub mod sockjs;
pub mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{ServerConfig, DEFAULT_MAX_CONNECTIONS};

use crate::broker::Broker;
use crate::connections::ConnectionTable;
use crate::error::Error;
use crate::metrics::{self, Metrics};
use crate::registry::ServiceRegistry;
use crate::service::Attachment;

/// What every request handler and connection of one server shares.
#[derive(Debug)]
pub struct App {
    /// The configuration, validated.
    pub config: ServerConfig,
    /// Services browsers may call.
    pub frontend: ServiceRegistry,
    /// Services the web application may call.
    pub backend: ServiceRegistry,
    /// The counters behind `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Cancelled on shutdown; every connection's close signal is a child of it.
    pub shutdown: CancellationToken,
    /// Tracks open connections so shutdown can wait for their close frames.
    pub connections: TaskTracker,
    /// The open connections, with the caps on how many there may be.
    pub table: Arc<ConnectionTable>,
    /// The broker this node shares with others, if any.
    pub broker: Option<Broker>,
}

/// A server that is configured but not yet listening.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    frontend: ServiceRegistry,
    backend: ServiceRegistry,
}

/// A server whose listeners are bound (so their ports are known) and that is ready to run.
#[derive(Debug)]
pub struct BoundServer {
    app: Arc<App>,
    frontend: TcpListener,
    backend: TcpListener,
}

impl Server {
    /// Validates the configuration; nothing is bound yet.
    pub fn new(config: ServerConfig, frontend: ServiceRegistry, backend: ServiceRegistry) -> Result<Server, Error> {
        config.validate()?;
        Ok(Server { config, frontend, backend })
    }

    /// Binds both listeners.
    pub async fn bind(self) -> Result<BoundServer, Error> {
        descriptors::raise_for(self.config.max_connections, self.config.max_connections != DEFAULT_MAX_CONNECTIONS);
        let frontend = bind(&self.config.frontend_address).await?;
        let backend = bind(&self.config.backend_address).await?;
        let unused = self.config.broker_options_without_broker();
        if !unused.is_empty() {
            log::warn!(
                "{} set without a broker: this node runs alone; set broker (Django: SNORKY[\"BROKER\"]; snorky \
                 serve: --broker or SNORKY_BROKER) for several nodes to share a Redis",
                unused.join(", ")
            );
        }
        if self.config.allowed_origins.is_empty() {
            log::warn!(
                "allowed_origins is empty: browsers will be refused (non-browser clients still connect); \
                 set allowed_origins to your site's origins, or [\"*\"]"
            );
        }
        let app = self.into_app().await?;
        Ok(BoundServer { app: Arc::new(app), frontend, backend })
    }

    /// The state connections share, with the broker connected and every service attached:
    /// what [`Server::bind`] serves, without the listeners.
    pub(crate) async fn into_app(self) -> Result<App, Error> {
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::register(&mut registry));
        let table = ConnectionTable::with_revocation(
            self.config.max_connections,
            self.config.max_connections_per_address,
            self.config.revocation_bounds(),
        );
        let shutdown = CancellationToken::new();
        let broker = match self.config.broker_config()? {
            Some(config) => Some(Broker::connect(&config, Arc::clone(&metrics), shutdown.clone()).await?),
            None => None,
        };
        if let Some(broker) = &broker {
            table.share(broker).await?;
        }
        let attachment = Attachment { table: &table, broker: broker.as_ref() };
        for service in self.frontend.services().chain(self.backend.services()) {
            service.attach(&attachment).await?;
        }
        if let Some(broker) = &broker {
            if let Err(err) = broker.load_scripts().await {
                // Each script is then loaded on its first use, as the client library does.
                log::warn!("broker: loading the scripts: {err}");
            }
        }
        Ok(App {
            config: self.config,
            frontend: self.frontend,
            backend: self.backend,
            metrics,
            registry,
            shutdown,
            connections: TaskTracker::new(),
            table,
            broker,
        })
    }
}

async fn bind(address: &str) -> Result<TcpListener, Error> {
    TcpListener::bind(address).await.map_err(|source| Error::Bind { address: address.to_owned(), source })
}

impl BoundServer {
    /// The frontend listener's address (with the real port when 0 was asked for).
    pub fn frontend_addr(&self) -> Result<SocketAddr, Error> {
        Ok(self.frontend.local_addr()?)
    }

    /// The backend listener's address.
    pub fn backend_addr(&self) -> Result<SocketAddr, Error> {
        Ok(self.backend.local_addr()?)
    }

    /// Serves until `shutdown` resolves, then closes every connection with 1001 and waits (up to
    /// `shutdown_timeout`) for them to go.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
        let app = self.app;
        log::info!(
            "snorky listening: frontend ws://{}/ws ({}), backend http://{}/backend ({})",
            self.frontend.local_addr()?,
            app.frontend.names().join(", "),
            self.backend.local_addr()?,
            app.backend.names().join(", "),
        );
        let token = app.shutdown.clone();
        let trigger = token.clone();
        tokio::spawn(async move {
            shutdown.await;
            trigger.cancel();
        });

        let mut frontend_routes =
            Router::new().route("/ws", get(ws::upgrade)).route("/health", get(health)).with_state(Arc::clone(&app));
        if app.config.sockjs {
            let endpoint =
                sockjs::Endpoint::new(sockjs::Options::from_config(&app.config), sockjs::Behaviour::Frontend);
            frontend_routes = frontend_routes.merge(sockjs::routes(Arc::clone(&app), Arc::new(endpoint)));
        }
        let backend_routes = Router::new()
            .route("/backend", post(backend::handle))
            .route("/health", get(health))
            .route("/metrics", get(metrics_text))
            .with_state(Arc::clone(&app));

        let frontend = app.config.serving("frontend");
        let backend = app.config.serving("backend");
        tokio::join!(
            listener::serve(self.frontend, frontend_routes, frontend, token.clone()),
            listener::serve(self.backend, backend_routes, backend, token.clone()),
        );

        app.connections.close();
        if tokio::time::timeout(app.config.shutdown_grace(), app.connections.wait()).await.is_err() {
            log::warn!("shutdown: {} connections did not close in time", app.connections.len());
        }
        let drained = async {
            for service in app.frontend.services() {
                service.drained().await;
            }
        };
        if tokio::time::timeout(app.config.shutdown_grace(), drained).await.is_err() {
            log::warn!("shutdown: the services did not finish their work for closed connections in time");
        }
        log::info!("snorky stopped");
        Ok(())
    }
}

/// `GET /health`: 200 `{"status": "ok"}`, the same with or without a broker, so that a client
/// cannot tell one node from several; with a broker, 503 `{"status": "degraded", "broker":
/// "unreachable"}` while it is down (the node still serves its own connections, but a load
/// balancer should prefer the others).
async fn health(axum::extract::State(app): axum::extract::State<Arc<App>>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match &app.broker {
        Some(broker) if !broker.is_connected() => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "degraded", "broker": "unreachable"})),
        )
            .into_response(),
        _ => axum::Json(serde_json::json!({"status": "ok"})).into_response(),
    }
}

async fn metrics_text(axum::extract::State(app): axum::extract::State<Arc<App>>) -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], metrics::render(&app.registry))
}
