//! SockJS on the frontend listener: WebSocket emulation for browsers and networks that cannot
//! use `/ws` (proxies that strip `Upgrade`, old browsers), following the SockJS protocol that
//! sockjs-client speaks.
//!
//! A SockJS session is a [`Connection`] like a WebSocket one: it passes the same origin and
//! token checks, counts in the same metrics and limits, and its messages go through the same
//! dispatch to the frontend services.
//!
//! - [`path`]: the URL scheme under the prefix, and the methods of each path.
//! - [`framing`]: the `o`/`h`/`a`/`c` frames, SockJS's JSON quoting, each transport's wrapping.
//! - [`http`]: CORS, caching and cookie headers, error pages, what is read from requests.
//! - [`info`]: the greeting, `/info` and the iframe page.
//! - [`session`]: the HTTP transports' sessions, their single receiver, their expiry.
//! - [`receive`]: the polling and streaming transports.
//! - [`send`]: `xhr_send` and `jsonp_send`.
//! - [`websocket`]: the `websocket` transport and the raw `/websocket`.
//! - [`adapter`]: every use of the [`Connection`] API.
//! - [`echo`]: the protocol test application (`snorky sockjs-echo`).
//!
//! No maintained SockJS server crate works with axum (the `sockjs` crate targets a 2018 actix),
//! so the protocol is implemented here on axum and hyper, which already serve the listener.

pub mod adapter;
pub mod echo;
pub mod framing;
pub mod http;
pub mod info;
pub mod path;
pub mod receive;
pub mod send;
pub mod session;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use bytes::Bytes;

use crate::connection::Connection;
use crate::metrics::TransportLabel;
use crate::server::ws::{self, Proven};
use crate::server::{dispatch, origin, App, ServerConfig};

use self::adapter::Admission;
use self::http::{Refused, RequestInfo};
use self::info::IframePage;
use self::path::{Route, Transport};
use self::session::SessionTable;
use self::websocket::Framing;

/// The settings of one SockJS endpoint.
#[derive(Debug, Clone)]
pub struct Options {
    /// The path the endpoint is served under, without a trailing slash.
    pub prefix: String,
    /// Whether the `websocket` transports are offered.
    pub websocket: bool,
    /// Whether responses set `JSESSIONID` (for cookie-sticky load balancers).
    pub cookie_needed: bool,
    /// Time between heartbeat frames.
    pub heartbeat: Duration,
    /// How long a session lives without a receiving request.
    pub disconnect_delay: Duration,
    /// Bytes a streaming response carries before it is ended.
    pub response_limit: usize,
    /// The sockjs-client script the iframe page loads.
    pub client_url: String,
}

impl Options {
    /// The frontend endpoint's settings, from the server's configuration.
    pub fn from_config(config: &ServerConfig) -> Options {
        Options {
            prefix: config.sockjs_prefix.clone(),
            websocket: config.sockjs_websocket,
            cookie_needed: config.sockjs_cookie_needed,
            heartbeat: config.sockjs_heartbeat(),
            disconnect_delay: config.sockjs_disconnect(),
            response_limit: config.sockjs_response_limit,
            client_url: config.sockjs_client_url.clone(),
        }
    }
}

/// What an endpoint does with its sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Snorky: sessions are frontend connections, messages are envelopes for its services.
    Frontend,
    /// The protocol test application's `echo`: every message comes back.
    Echo,
    /// The protocol test application's `close`: every session closes with 3000 "Go away!".
    Close,
}

impl Behaviour {
    /// A session opened.
    pub async fn opened(self, app: &App, connection: &Arc<Connection>) {
        match self {
            Behaviour::Frontend => app.frontend.connected(connection).await,
            Behaviour::Echo => {}
            Behaviour::Close => adapter::close(connection, framing::GO_AWAY),
        }
    }

    /// The client sent `text`.
    pub async fn message(self, app: &App, connection: &Arc<Connection>, text: &str) {
        match self {
            Behaviour::Frontend => {
                if let Some(reply) =
                    dispatch::frontend_frame(app, connection, Bytes::copy_from_slice(text.as_bytes())).await
                {
                    connection.send(reply);
                }
            }
            Behaviour::Echo => adapter::send_text(connection, text),
            Behaviour::Close => {}
        }
    }

    /// The session closed: services forget the connection. With a broker this returns once
    /// its names and memberships are gone from Redis too (each removal bounded by the broker's
    /// command timeout), as for the WebSocket endpoint, so that a name freed by a close can be
    /// taken on another node as soon as the client has seen the close frame.
    pub async fn closed(self, app: &App, connection: &Arc<Connection>) {
        if self == Behaviour::Frontend {
            for departure in app.frontend.disconnected(connection) {
                let _ = departure.await;
            }
        }
    }
}

/// One SockJS endpoint: its settings, behaviour and sessions.
#[derive(Debug)]
pub struct Endpoint {
    /// The settings.
    pub options: Options,
    /// What sessions do.
    pub behaviour: Behaviour,
    /// The HTTP transports' sessions.
    pub sessions: SessionTable,
    iframe: IframePage,
}

impl Endpoint {
    /// An endpoint with no sessions yet.
    pub fn new(options: Options, behaviour: Behaviour) -> Endpoint {
        let iframe = IframePage::new(&options.client_url);
        Endpoint { options, behaviour, sessions: SessionTable::default(), iframe }
    }
}

/// The state of an endpoint's routes.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The server.
    pub app: Arc<App>,
    /// The endpoint.
    pub endpoint: Arc<Endpoint>,
}

/// The routes of `endpoint`: its prefix and everything under it.
pub fn routes(app: Arc<App>, endpoint: Arc<Endpoint>) -> Router {
    let prefix = endpoint.options.prefix.clone();
    Router::new()
        .route(&prefix, any(handle))
        .route(&format!("{prefix}/"), any(handle))
        .route(&format!("{prefix}/{{*rest}}"), any(handle))
        .with_state(Shared { app, endpoint })
}

async fn handle(
    State(shared): State<Shared>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let options = &shared.endpoint.options;
    let route = parts.uri.path().strip_prefix(options.prefix.as_str()).map_or(Route::NotFound, Route::parse);
    let websocket_route = matches!(route, Route::RawWebSocket | Route::Session { transport: Transport::WebSocket, .. });
    if route == Route::NotFound || (websocket_route && !options.websocket) {
        return http::not_found();
    }
    let info = RequestInfo::from_parts(&parts);
    let methods = route.methods();
    if parts.method == Method::OPTIONS && methods.contains(&Method::OPTIONS) {
        return http::preflight(&info, methods, options.cookie_needed);
    }
    if !methods.contains(&parts.method) {
        return http::method_not_allowed(methods);
    }
    match route {
        Route::Greeting => info::greeting(),
        Route::Info => info::info(&info, options),
        Route::Iframe => shared.endpoint.iframe.respond(&info),
        Route::RawWebSocket => handshake(&shared, &mut parts, &info, remote, Framing::Raw).await,
        Route::Session { session, transport } => match transport {
            Transport::WebSocket => handshake(&shared, &mut parts, &info, remote, Framing::SockJs).await,
            Transport::Xhr | Transport::Jsonp => receive::poll(&shared, &info, remote, &session, transport).await,
            Transport::XhrStreaming | Transport::EventSource | Transport::HtmlFile => {
                receive::stream(&shared, &info, remote, &session, transport).await
            }
            Transport::XhrSend | Transport::JsonpSend => send::send(&shared, &info, &session, transport, body).await,
        },
        Route::NotFound => http::not_found(),
    }
}

async fn handshake(
    shared: &Shared,
    parts: &mut axum::http::request::Parts,
    info: &RequestInfo,
    remote: SocketAddr,
    framing: Framing,
) -> Response {
    let Ok(upgrade) = WebSocketUpgrade::from_request_parts(parts, &()).await else {
        return http::error(StatusCode::BAD_REQUEST, "Not a valid websocket request");
    };
    match admit(&shared.app, info, remote) {
        Ok((identity, admission)) => websocket::upgrade(shared, upgrade, remote, identity, admission, framing),
        Err(refused) => refused.into_response(),
    }
}

/// The checks every later request of a session passes: an allowed origin (403), and the
/// connection token the session was opened with (404, as for a session that does not exist: the
/// answer does not tell that the id is in use).
pub fn may_use(app: &App, session: &session::Session, info: &RequestInfo) -> Result<(), Refused> {
    if !origin::origin_allowed(&app.config.allowed_origins, info.origin.as_deref()) {
        log::warn!(
            "refused a request of SockJS session {} from origin {:?}: not in allowed_origins",
            session.id,
            info.origin
        );
        return Err(Refused::new(StatusCode::FORBIDDEN, "Origin not allowed"));
    }
    if info.token_repeated || !session.carries_its_token(info.token.as_deref()) {
        log::info!("refused a request of SockJS session {}: not the connection token it was opened with", session.id);
        return Err(Refused::new(StatusCode::NOT_FOUND, "Not found"));
    }
    Ok(())
}

/// The checks a new session passes, as a WebSocket handshake on `/ws` does: an allowed origin
/// (403 otherwise), a valid connection token if one is given (401 otherwise), and a place in the
/// connection table (503 otherwise).
pub fn admit(app: &App, info: &RequestInfo, remote: SocketAddr) -> Result<(Proven, Admission), Refused> {
    if !origin::origin_allowed(&app.config.allowed_origins, info.origin.as_deref()) {
        log::warn!("refused a SockJS session from origin {:?} ({remote}): not in allowed_origins", info.origin);
        return Err(Refused::new(StatusCode::FORBIDDEN, "Origin not allowed"));
    }
    let identity = if info.token_repeated {
        Err(ws::MORE_THAN_ONE_TOKEN.to_owned())
    } else {
        ws::handshake_identity(app, info.token.as_deref())
    };
    let identity = identity.map_err(|text| {
        log::info!("refused a SockJS session from {remote}: {text}");
        Refused::new(StatusCode::UNAUTHORIZED, text)
    })?;
    Ok((identity, adapter::admit(app, remote)?))
}

/// The metrics label of a transport.
pub fn transport_label(transport: Transport) -> TransportLabel {
    TransportLabel { transport: transport.name() }
}
