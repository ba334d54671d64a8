//! Server configuration, with the safe defaults of docs/protocol.md, validated before anything
//! binds.

use std::time::Duration;

use serde::Deserialize;

use crate::broker::{BrokerConfig, BrokerUrl};
use crate::connection::QueueBounds;
use crate::connections::RevocationBounds;
use crate::error::Error;
use crate::protocol::defaults;
use crate::seconds::check_seconds;

/// The default of `max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 50_000;

/// The shortest API key accepted: shorter keys can be guessed.
pub const MIN_API_KEY_LENGTH: usize = 16;

/// The sockjs-client build the SockJS iframe page loads unless `sockjs_client_url` says otherwise.
pub const DEFAULT_SOCKJS_CLIENT_URL: &str = "https://cdn.jsdelivr.net/npm/sockjs-client@1.6.1/dist/sockjs.min.js";

/// Checks a listener's address for the mistakes a name lookup would report obscurely: it must be
/// `host:port`, with a host (`":5001"` would be looked up as a name and fail) and a numeric port.
fn check_address(name: &str, address: &str) -> Result<(), Error> {
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(Error::Config(format!("{name} {address:?} is not host:port (\"0.0.0.0:5001\", \"[::1]:5001\")")));
    };
    if port.parse::<u16>().is_err() {
        return Err(Error::Config(format!("{name} {address:?} has no valid port (0 to 65535) after its last ':'")));
    }
    if host.is_empty() {
        return Err(Error::Config(format!(
            "{name} {address:?} has no host: give one, e.g. 0.0.0.0:{port} (every interface) or \
             127.0.0.1:{port} (this machine only)"
        )));
    }
    Ok(())
}

/// A switch given as `True` or `False` only. Python's converter would take any value by its
/// truth, so `sockjs="false"` would turn SockJS on.
fn strict_bool<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    struct Strict;

    impl serde::de::Visitor<'_> for Strict {
        type Value = bool;

        fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("True or False")
        }

        fn visit_bool<E: serde::de::Error>(self, value: bool) -> Result<bool, E> {
            Ok(value)
        }
    }

    deserializer.deserialize_any(Strict)
}

/// Everything a server needs besides its services. Deserialized from the Python keyword
/// arguments (unknown keys are refused, naming the key).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Where browsers connect (`GET /ws`). All interfaces by default.
    pub frontend_address: String,
    /// Where the web application posts (`POST /backend`). Loopback by default: exposing it is a
    /// deliberate choice.
    pub backend_address: String,
    /// The shared secret of the backend (`X-Backend-Key`). Required.
    pub api_key: Option<String>,
    /// Browser origins allowed to open WebSockets (`https://app.example.com`); `"*"` allows any.
    /// Upgrades without an `Origin` header (non-browser clients) are always accepted.
    pub allowed_origins: Vec<String>,
    /// The largest frame a client may send, in bytes (larger closes with 1009).
    pub max_frame_size: usize,
    /// The outgoing queue bound per connection, in bytes. Pushed messages that would overflow it
    /// close the connection with 1008; DataSync deltas wait in their stream instead.
    pub outbox_limit: usize,
    /// Seconds a connection's outgoing queue may stay non-empty before the client counts as not
    /// reading and is closed with 1008, whatever it sends meanwhile.
    pub stall_timeout: f64,
    /// The most WebSocket connections the server holds; the handshake past it gets HTTP 503.
    pub max_connections: usize,
    /// The most WebSocket connections from one client address (`None`: no cap). Behind a
    /// reverse proxy every client has the proxy's address, so this is off by default.
    pub max_connections_per_address: Option<usize>,
    /// The most HTTP connections each listener holds open at once, not counting those upgraded
    /// to WebSocket (`None`: twice `max_connections`, plus 100: a SockJS session holds one while
    /// it receives and one while it sends, and health checks and handshakes need a few). Past it
    /// a listener accepts no more until one closes.
    pub max_http_connections: Option<usize>,
    /// The most of those from one client address (`None`: no cap); past it a new connection is
    /// closed at once. Behind a reverse proxy every client has the proxy's address.
    pub max_http_connections_per_address: Option<usize>,
    /// Seconds a client may take to send a request's head (both listeners); slower ones are
    /// disconnected.
    pub header_read_timeout: f64,
    /// Seconds a client may take to send a request's whole body (`POST /backend`, SockJS's
    /// `xhr_send` and `jsonp_send`); a slower one is answered 408.
    pub body_read_timeout: f64,
    /// Seconds a revoked identity's older connection tokens stay refused; at least the longest
    /// lifetime the web application gives its tokens.
    pub revocation_window: f64,
    /// The most revoked identities remembered (the oldest are forgotten first).
    pub max_revocations: usize,
    /// The broker several nodes share (`redis://host:port/db`, `rediss://...`,
    /// `redis+cluster://host:port,host:port`); `None` keeps everything in this process.
    pub broker: Option<String>,
    /// A PEM file of the root certificate to trust for a `rediss://` broker (default: the
    /// system's roots).
    pub broker_ca_file: Option<String>,
    /// The prefix of the broker's keys and channels, so several applications can share a Redis.
    pub broker_prefix: String,
    /// A readable name for this node in logs and metrics.
    pub node_name: Option<String>,
    /// Seconds within which a node that stopped refreshing its liveness key (it crashed, or its
    /// network was cut) counts as gone: the others remove its presences, names and cursors.
    pub node_timeout: f64,
    /// Seconds between pings; a connection that leaves two unanswered is dropped.
    pub ping_interval: f64,
    /// Seconds a closing connection gets to receive its close frame.
    pub close_timeout: f64,
    /// Seconds graceful shutdown waits for connections to close.
    pub shutdown_timeout: f64,
    /// The largest body `POST /backend` accepts, in bytes.
    pub backend_body_limit: usize,
    /// The secret that signs connection tokens (HS256); without it every connection is anonymous.
    pub token_secret: Option<String>,
    /// Whether the frontend listener also serves SockJS, for browsers and networks without
    /// WebSocket.
    #[serde(deserialize_with = "strict_bool")]
    pub sockjs: bool,
    /// The path SockJS is served under (`/sockjs`): the URL clients give `new SockJS(...)`.
    pub sockjs_prefix: String,
    /// Whether SockJS offers its `websocket` transports; off, `/info` says `websocket: false`
    /// and clients use the HTTP transports only.
    #[serde(deserialize_with = "strict_bool")]
    pub sockjs_websocket: bool,
    /// Whether SockJS responses set a `JSESSIONID` cookie, for load balancers that keep a client
    /// on one node by that cookie.
    #[serde(deserialize_with = "strict_bool")]
    pub sockjs_cookie_needed: bool,
    /// Seconds between SockJS heartbeat frames on an open receiving request.
    pub sockjs_heartbeat_interval: f64,
    /// Seconds a SockJS session lives without a receiving request before it closes; a closed
    /// session's close frame is served for as long again.
    pub sockjs_disconnect_delay: f64,
    /// Bytes a streaming SockJS response carries before the server ends it and the client opens
    /// the next one (so the browser can free what it received).
    pub sockjs_response_limit: usize,
    /// The sockjs-client script the SockJS iframe page loads (iframe-based transports only).
    pub sockjs_client_url: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            frontend_address: defaults::FRONTEND_ADDRESS.into(),
            backend_address: defaults::BACKEND_ADDRESS.into(),
            api_key: None,
            allowed_origins: Vec::new(),
            max_frame_size: 1024 * 1024,
            outbox_limit: 16 * 1024 * 1024,
            stall_timeout: 30.0,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: None,
            max_http_connections: None,
            max_http_connections_per_address: None,
            header_read_timeout: 10.0,
            body_read_timeout: 30.0,
            revocation_window: 3600.0,
            max_revocations: 100_000,
            broker: None,
            broker_ca_file: None,
            broker_prefix: "snorky".into(),
            node_name: None,
            node_timeout: 15.0,
            ping_interval: 30.0,
            close_timeout: 5.0,
            shutdown_timeout: 10.0,
            backend_body_limit: 16 * 1024 * 1024,
            token_secret: None,
            sockjs: true,
            sockjs_prefix: "/sockjs".into(),
            sockjs_websocket: true,
            sockjs_cookie_needed: false,
            sockjs_heartbeat_interval: 25.0,
            sockjs_disconnect_delay: 5.0,
            sockjs_response_limit: 128 * 1024,
            sockjs_client_url: DEFAULT_SOCKJS_CLIENT_URL.into(),
        }
    }
}

impl ServerConfig {
    /// Checks the configuration, saying what to set when something is wrong.
    pub fn validate(&self) -> Result<(), Error> {
        for (name, address) in
            [("frontend_address", &self.frontend_address), ("backend_address", &self.backend_address)]
        {
            check_address(name, address)?;
        }
        match &self.api_key {
            None => {
                return Err(Error::Config(
                    "no API key: set api_key (the shared secret the web application sends as X-Backend-Key; \
                     SNORKY_API_KEY or --api-key for `snorky serve`)"
                        .into(),
                ))
            }
            Some(key) if key.trim().chars().count() < MIN_API_KEY_LENGTH => {
                return Err(Error::Config(format!(
                    "api_key is too short: use at least {MIN_API_KEY_LENGTH} characters of a random secret \
                     (python -c \"import secrets; print(secrets.token_urlsafe(32))\")"
                )))
            }
            Some(_) => {}
        }
        if self.max_frame_size < 1024 {
            return Err(Error::Config(format!(
                "max_frame_size must be at least 1024 bytes, not {}",
                self.max_frame_size
            )));
        }
        if self.backend_body_limit < self.max_frame_size.max(1024 * 1024) {
            return Err(Error::Config("backend_body_limit must be at least 1 MiB and at least max_frame_size".into()));
        }
        for (name, seconds) in [
            ("ping_interval", self.ping_interval),
            ("close_timeout", self.close_timeout),
            ("shutdown_timeout", self.shutdown_timeout),
            ("stall_timeout", self.stall_timeout),
            ("header_read_timeout", self.header_read_timeout),
            ("body_read_timeout", self.body_read_timeout),
            ("revocation_window", self.revocation_window),
            ("node_timeout", self.node_timeout),
            ("sockjs_heartbeat_interval", self.sockjs_heartbeat_interval),
            ("sockjs_disconnect_delay", self.sockjs_disconnect_delay),
        ] {
            check_seconds(name, seconds)?;
        }
        if let Some(url) = &self.broker {
            BrokerUrl::parse(url)?;
        }
        if self.broker_prefix.is_empty() || self.broker_prefix.contains(['{', '}', ' ']) {
            return Err(Error::Config(format!(
                "broker_prefix {:?} must be a non-empty name without braces or spaces",
                self.broker_prefix
            )));
        }
        if self.node_timeout < 1.0 {
            return Err(Error::Config("node_timeout must be at least 1 second".into()));
        }
        if self.max_connections == 0 {
            return Err(Error::Config("max_connections must be at least 1".into()));
        }
        if self.max_connections_per_address == Some(0) {
            return Err(Error::Config("max_connections_per_address must be at least 1 (or None for no cap)".into()));
        }
        for (name, cap, unset) in [
            ("max_http_connections_per_address", self.max_http_connections_per_address, "no cap"),
            ("max_http_connections", self.max_http_connections, "the default"),
        ] {
            if cap.is_some_and(|cap| cap < 2) {
                return Err(Error::Config(format!(
                    "{name} must be at least 2: a SockJS session needs two connections at once (or None for {unset})"
                )));
            }
        }
        for origin in &self.allowed_origins {
            if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return Err(Error::Config(format!(
                    "allowed_origins entry {origin:?} must be \"*\" or an origin such as \"https://app.example.com\""
                )));
            }
        }
        if let Some(secret) = &self.token_secret {
            if secret.len() < 16 {
                return Err(Error::Config("token_secret must be at least 16 characters".into()));
            }
        }
        self.validate_sockjs()
    }

    fn validate_sockjs(&self) -> Result<(), Error> {
        if !self.sockjs {
            return Ok(());
        }
        let prefix = &self.sockjs_prefix;
        let well_formed = prefix.len() > 1
            && prefix.starts_with('/')
            && !prefix.ends_with('/')
            && !prefix.contains("//")
            && prefix.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'));
        if !well_formed {
            return Err(Error::Config(format!(
                "sockjs_prefix {prefix:?} must be a path such as \"/sockjs\" (a leading slash, no trailing slash, \
                 letters, digits, '-', '_', '.'); set sockjs=False to serve no SockJS"
            )));
        }
        if ["/ws", "/health"].iter().any(|taken| prefix == taken || prefix.starts_with(&format!("{taken}/"))) {
            return Err(Error::Config(format!("sockjs_prefix {prefix:?} collides with /ws or /health: pick another")));
        }
        if self.sockjs_response_limit < 1024 {
            return Err(Error::Config(format!(
                "sockjs_response_limit must be at least 1024 bytes, not {}",
                self.sockjs_response_limit
            )));
        }
        let url = &self.sockjs_client_url;
        let url_ok = (url.starts_with("https://") || url.starts_with("http://") || url.starts_with('/'))
            && !url.bytes().any(|b| b.is_ascii_whitespace() || matches!(b, b'"' | b'<' | b'>' | b'\'' | b'&'));
        if !url_ok {
            return Err(Error::Config(format!(
                "sockjs_client_url {url:?} must be an http(s) URL or an absolute path to sockjs-client's script"
            )));
        }
        Ok(())
    }

    /// The bounds of every connection's outgoing queue.
    pub fn queue_bounds(&self) -> QueueBounds {
        QueueBounds { limit: self.queue_limit(), stall_timeout: Duration::from_secs_f64(self.stall_timeout) }
    }

    /// The broker options set to something else than their default while there is no broker
    /// (they then do nothing: worth a warning, since a forgotten `broker` leaves a node alone).
    pub fn broker_options_without_broker(&self) -> Vec<&'static str> {
        if self.broker.is_some() {
            return Vec::new();
        }
        let defaults = ServerConfig::default();
        let mut set = Vec::new();
        if self.node_name.is_some() {
            set.push("node_name");
        }
        if (self.node_timeout - defaults.node_timeout).abs() > f64::EPSILON {
            set.push("node_timeout");
        }
        if self.broker_prefix != defaults.broker_prefix {
            set.push("broker_prefix");
        }
        if self.broker_ca_file.is_some() {
            set.push("broker_ca_file");
        }
        set
    }

    /// The broker's configuration, when one is set (the CA file is read here).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a URL that does not parse or a CA file that cannot be read.
    pub fn broker_config(&self) -> Result<Option<BrokerConfig>, Error> {
        let Some(url) = &self.broker else { return Ok(None) };
        let ca = match &self.broker_ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|err| Error::Config(format!("broker_ca_file {path:?} cannot be read: {err}")))?,
            ),
            None => None,
        };
        Ok(Some(BrokerConfig {
            url: BrokerUrl::parse(url)?,
            ca,
            prefix: self.broker_prefix.clone(),
            node_name: self.node_name.clone(),
            node_timeout: Duration::from_secs_f64(self.node_timeout),
        }))
    }

    /// How long and how many revocations are remembered.
    pub fn revocation_bounds(&self) -> RevocationBounds {
        RevocationBounds { window: Duration::from_secs_f64(self.revocation_window), max: self.max_revocations }
    }

    /// `header_read_timeout` as a duration.
    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.header_read_timeout)
    }

    /// `ping_interval` as a duration.
    pub fn ping_every(&self) -> Duration {
        Duration::from_secs_f64(self.ping_interval)
    }

    /// `close_timeout` as a duration.
    pub fn close_grace(&self) -> Duration {
        Duration::from_secs_f64(self.close_timeout)
    }

    /// `body_read_timeout` as a duration.
    pub fn body_deadline(&self) -> Duration {
        Duration::from_secs_f64(self.body_read_timeout)
    }

    /// `shutdown_timeout` as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs_f64(self.shutdown_timeout)
    }

    /// How the listener called `name` serves its connections.
    pub(crate) fn serving(&self, name: &'static str) -> super::listener::Serving {
        super::listener::Serving {
            name,
            header_timeout: self.header_timeout(),
            // Longer than a WebSocket's own stall rule and close handshake, which act first.
            write_stall: Duration::from_secs_f64(self.stall_timeout + self.close_timeout),
            max_connections: self
                .max_http_connections
                .unwrap_or_else(|| self.max_connections.saturating_mul(2).saturating_add(100)),
            max_per_address: self.max_http_connections_per_address,
            grace: self.shutdown_grace(),
        }
    }

    /// `sockjs_heartbeat_interval` as a duration.
    pub fn sockjs_heartbeat(&self) -> Duration {
        Duration::from_secs_f64(self.sockjs_heartbeat_interval)
    }

    /// `sockjs_disconnect_delay` as a duration.
    pub fn sockjs_disconnect(&self) -> Duration {
        Duration::from_secs_f64(self.sockjs_disconnect_delay)
    }

    /// The queue bound actually applied: never below one maximum-size frame.
    pub fn queue_limit(&self) -> usize {
        self.outbox_limit.max(self.max_frame_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_without_a_host_or_a_port_is_refused_naming_it() {
        for (address, says) in [
            (":5101", "frontend_address \":5101\" has no host: give one, e.g. 0.0.0.0:5101"),
            ("localhost", "is not host:port"),
            ("127.0.0.1:http", "has no valid port"),
            ("127.0.0.1:70000", "has no valid port"),
        ] {
            let config = ServerConfig { frontend_address: address.into(), ..with_key() };
            match config.validate() {
                Err(Error::Config(text)) => assert!(text.contains(says), "{address}: {text}"),
                other => panic!("{address} was not refused: {other:?}"),
            }
        }
        for address in ["0.0.0.0:0", "[::1]:5001", "localhost:5001"] {
            let config = ServerConfig { backend_address: address.into(), ..with_key() };
            assert!(config.validate().is_ok(), "{address}");
        }
    }
    use crate::seconds::MAX_SECONDS;

    fn with_key() -> ServerConfig {
        ServerConfig { api_key: Some("swordfish-swordfish".into()), ..ServerConfig::default() }
    }

    #[test]
    fn defaults_are_safe() {
        let config = ServerConfig::default();
        assert!(config.backend_address.starts_with("127.0.0.1:"));
        assert!(config.allowed_origins.is_empty());
        assert!(config.validate().is_err(), "no API key must refuse to start");
        assert!(with_key().validate().is_ok());
    }

    #[test]
    fn errors_name_what_to_set() {
        let err = ServerConfig::default().validate().expect_err("no key").to_string();
        assert!(err.contains("api_key"), "{err}");
        let config = ServerConfig { allowed_origins: vec!["example.com".into()], ..with_key() };
        assert!(config.validate().expect_err("bad origin").to_string().contains("allowed_origins"));
        let config = ServerConfig { ping_interval: 0.0, ..with_key() };
        assert!(config.validate().expect_err("bad ping").to_string().contains("ping_interval"));
    }

    #[test]
    fn durations_that_would_overflow_a_clock_are_refused() {
        for (name, config) in [
            ("ping_interval", ServerConfig { ping_interval: 1e300, ..with_key() }),
            ("stall_timeout", ServerConfig { stall_timeout: f64::INFINITY, ..with_key() }),
            ("header_read_timeout", ServerConfig { header_read_timeout: f64::NAN, ..with_key() }),
            ("close_timeout", ServerConfig { close_timeout: MAX_SECONDS * 2.0, ..with_key() }),
        ] {
            let err = config.validate().expect_err("refused").to_string();
            assert!(err.contains(name) && err.contains("a year"), "{err}");
        }
        assert!(ServerConfig { ping_interval: MAX_SECONDS, ..with_key() }.validate().is_ok());
    }

    #[test]
    fn short_api_keys_are_refused() {
        let config = ServerConfig { api_key: Some("fifteen-chars!!".into()), ..with_key() };
        let err = config.validate().expect_err("15 characters").to_string();
        assert!(err.contains("at least 16"), "{err}");
        assert!(ServerConfig { api_key: Some("sixteen-chars!!!".into()), ..with_key() }.validate().is_ok());
    }

    #[test]
    fn sockjs_settings_are_checked() {
        for prefix in ["", "/", "sockjs", "/sockjs/", "/a//b", "/ws", "/ws/sockjs", "/health", "/a b", "/{x}"] {
            let config = ServerConfig { sockjs_prefix: prefix.into(), ..with_key() };
            let err = config.validate().expect_err(prefix).to_string();
            assert!(err.contains("sockjs_prefix"), "{prefix:?}: {err}");
        }
        let off = ServerConfig { sockjs: false, sockjs_prefix: String::new(), ..with_key() };
        assert!(off.validate().is_ok(), "a disabled SockJS needs no prefix");
        assert!(ServerConfig { sockjs_prefix: "/a/b-c_d.e".into(), ..with_key() }.validate().is_ok());
        let config = ServerConfig { sockjs_disconnect_delay: -1.0, ..with_key() };
        assert!(config.validate().expect_err("delay").to_string().contains("sockjs_disconnect_delay"));
        let config = ServerConfig { sockjs_heartbeat_interval: f64::NAN, ..with_key() };
        assert!(config.validate().expect_err("heartbeat").to_string().contains("sockjs_heartbeat_interval"));
        let config = ServerConfig { sockjs_response_limit: 10, ..with_key() };
        assert!(config.validate().expect_err("limit").to_string().contains("sockjs_response_limit"));
        for url in ["javascript:alert(1)", "/x\"><script>", "sockjs.js"] {
            let config = ServerConfig { sockjs_client_url: url.into(), ..with_key() };
            assert!(config.validate().expect_err(url).to_string().contains("sockjs_client_url"), "{url}");
        }
    }
}
