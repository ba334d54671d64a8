//! Prometheus metrics of one server, served as text on the backend listener's `GET /metrics`. A
//! module of its own (not part of `server`) because connections and services update them too.
//!
//! `prometheus-client` (the Prometheus project's own Rust client) is used with a registry per
//! server rather than a process-global recorder, so several servers in one process (tests,
//! embedding) keep separate numbers.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of the per-service error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    /// The service name.
    pub service: String,
}

/// Labels of the SockJS counters: the transport a session opened with.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    /// The SockJS transport (`websocket`, `xhr`, `xhr_streaming`, ...).
    pub transport: &'static str,
}

/// The counters a server keeps. Cloning shares them.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open connections: WebSocket connections and SockJS sessions.
    pub connections: Gauge,
    /// WebSocket connections accepted since start.
    pub connections_opened: Counter,
    /// WebSocket handshakes refused with 503 because a connection cap was reached.
    pub connections_refused: Counter,
    /// Text frames received from clients.
    pub frames_received: Counter,
    /// Frames written to clients.
    pub frames_sent: Counter,
    /// Frames dropped because they were malformed or addressed no known service.
    pub frames_dropped: Counter,
    /// Error replies, by service.
    pub rpc_errors: Family<ServiceLabel, Counter>,
    /// Pushed messages queued to a connection (one per recipient).
    pub deliveries: Counter,
    /// Connections closed with 1008 because they stopped reading.
    pub slow_consumers: Counter,
    /// Backend requests answered, any status.
    pub backend_requests: Counter,
    /// Whether the broker (Redis) answers: 1 or 0 (always 0 without a broker).
    pub broker_connected: Gauge,
    /// Times the broker became unreachable.
    pub broker_disconnections: Counter,
    /// Messages this node published through the broker.
    pub broker_publishes: Counter,
    /// Messages this node received from the broker.
    pub broker_messages: Counter,
    /// Dead nodes whose state this node removed.
    pub broker_nodes_reaped: Counter,
    /// Open SockJS sessions (also counted in `connections`).
    pub sockjs_sessions: Gauge,
    /// SockJS sessions opened, by the transport that opened them.
    pub sockjs_sessions_opened: Family<TransportLabel, Counter>,
    /// SockJS sessions closed because their client stopped polling for the disconnect delay.
    pub sockjs_sessions_expired: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics::default();
        let prefixed = registry.sub_registry_with_prefix("snorky");
        prefixed.register(
            "connections",
            "Open connections (WebSocket and SockJS sessions)",
            metrics.connections.clone(),
        );
        prefixed.register("connections_opened", "WebSocket connections accepted", metrics.connections_opened.clone());
        prefixed.register(
            "connections_refused",
            "WebSocket handshakes refused at a connection cap",
            metrics.connections_refused.clone(),
        );
        prefixed.register("frames_received", "Text frames received from clients", metrics.frames_received.clone());
        prefixed.register("frames_sent", "Frames written to clients", metrics.frames_sent.clone());
        prefixed.register("frames_dropped", "Malformed or unroutable frames dropped", metrics.frames_dropped.clone());
        prefixed.register("rpc_errors", "Error replies by service", metrics.rpc_errors.clone());
        prefixed.register("deliveries", "Pushed messages queued to connections", metrics.deliveries.clone());
        prefixed.register(
            "slow_consumers_dropped",
            "Connections closed because they stopped reading",
            metrics.slow_consumers.clone(),
        );
        prefixed.register("backend_requests", "Backend HTTP requests answered", metrics.backend_requests.clone());
        prefixed.register(
            "broker_connected",
            "Whether the broker answers (1) or not (0)",
            metrics.broker_connected.clone(),
        );
        prefixed.register(
            "broker_disconnections",
            "Times the broker became unreachable",
            metrics.broker_disconnections.clone(),
        );
        prefixed.register(
            "broker_publishes",
            "Messages published through the broker",
            metrics.broker_publishes.clone(),
        );
        prefixed.register("broker_messages", "Messages received from the broker", metrics.broker_messages.clone());
        prefixed.register(
            "broker_nodes_reaped",
            "Dead nodes whose state this node removed",
            metrics.broker_nodes_reaped.clone(),
        );
        prefixed.register("sockjs_sessions", "Open SockJS sessions", metrics.sockjs_sessions.clone());
        prefixed.register(
            "sockjs_sessions_opened",
            "SockJS sessions opened, by transport",
            metrics.sockjs_sessions_opened.clone(),
        );
        prefixed.register(
            "sockjs_sessions_expired",
            "SockJS sessions closed because their client stopped polling",
            metrics.sockjs_sessions_expired.clone(),
        );
        metrics
    }

    /// Counts an error reply of `service`.
    pub fn rpc_error(&self, service: &str) {
        self.rpc_errors.get_or_create(&ServiceLabel { service: service.to_owned() }).inc();
    }
}

/// Renders `registry` in the Prometheus text exposition format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(err) = encode(&mut out, registry) {
        log::error!("could not encode metrics: {err}");
    }
    out
}
