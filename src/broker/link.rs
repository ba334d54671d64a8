//! The connection to Redis, single server or cluster, behind one interface: commands, publish,
//! subscribe. The client library (`redis`) reconnects by itself and resubscribes after a
//! reconnection; pushed messages (RESP3) reach the closure given at connection time.

use std::time::Duration;

use redis::aio::ConnectionManagerConfig;
use redis::cluster::ClusterClientBuilder;
use redis::{Cmd, FromRedisValue, ProtocolVersion, PushInfo, RedisResult, TlsCertificates};

use super::url::BrokerUrl;
use crate::error::Error;

/// How long a command may take before it counts as failed (Redis answers in microseconds; a
/// broker that does not answer in this time is treated as unreachable).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);

/// An open connection to the broker. Cheap to clone (the client library multiplexes).
#[derive(Clone)]
pub enum Link {
    /// One Redis server.
    Single(redis::aio::ConnectionManager),
    /// A Redis Cluster: pub/sub is sharded.
    Cluster(redis::cluster_async::ClusterConnection),
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Link::Single(_) => "Link::Single",
            Link::Cluster(_) => "Link::Cluster",
        })
    }
}

impl Link {
    /// Connects, delivering pushed messages to `on_push` (called on the connection's task:
    /// it must not block).
    pub async fn connect(
        url: &BrokerUrl,
        ca: Option<Vec<u8>>,
        on_push: impl Fn(PushInfo) -> Result<(), ()> + Send + Sync + 'static,
    ) -> Result<Link, Error> {
        let unreachable =
            |err: redis::RedisError| Error::Config(format!("cannot reach the broker at {}: {err}", url.redacted()));
        let certs = || TlsCertificates { client_tls: None, root_cert: ca.clone() };
        match url {
            BrokerUrl::Single { url: address } => {
                let mut info =
                    redis::IntoConnectionInfo::into_connection_info(address.as_str()).map_err(unreachable)?;
                let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
                info = info.set_redis_settings(settings);
                let client = if ca.is_some() {
                    redis::Client::build_with_tls(info, certs()).map_err(unreachable)?
                } else {
                    redis::Client::open(info).map_err(unreachable)?
                };
                let config = ConnectionManagerConfig::new()
                    .set_push_sender(on_push)
                    .set_automatic_resubscription()
                    .set_connection_timeout(Some(COMMAND_TIMEOUT))
                    .set_response_timeout(Some(COMMAND_TIMEOUT))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(2));
                let manager = client.get_connection_manager_with_config(config).await.map_err(unreachable)?;
                Ok(Link::Single(manager))
            }
            BrokerUrl::Cluster { nodes } => {
                let mut builder = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                    .use_protocol(ProtocolVersion::RESP3)
                    .push_sender(on_push)
                    .connection_timeout(COMMAND_TIMEOUT)
                    .response_timeout(COMMAND_TIMEOUT);
                if ca.is_some() {
                    builder = builder.certs(certs());
                }
                let client = builder.build().map_err(unreachable)?;
                let connection = client.get_async_connection().await.map_err(unreachable)?;
                Ok(Link::Cluster(connection))
            }
        }
    }

    /// Runs one command.
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Link::Single(manager) => cmd.query_async(&mut manager.clone()).await,
            Link::Cluster(connection) => cmd.query_async(&mut connection.clone()).await,
        }
    }

    /// Runs a pipeline (a transaction when `atomic`).
    pub async fn pipeline<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> RedisResult<T> {
        match self {
            Link::Single(manager) => pipe.query_async(&mut manager.clone()).await,
            Link::Cluster(connection) => pipe.query_async(&mut connection.clone()).await,
        }
    }

    /// Publishes `payload` on `channel` (sharded on a cluster).
    pub async fn publish(&self, channel: &str, payload: &[u8]) -> RedisResult<()> {
        match self {
            Link::Single(manager) => {
                redis::cmd("PUBLISH").arg(channel).arg(payload).query_async(&mut manager.clone()).await
            }
            Link::Cluster(connection) => {
                redis::cmd("SPUBLISH").arg(channel).arg(payload).query_async(&mut connection.clone()).await
            }
        }
    }

    /// Subscribes to `channel`; resolves once Redis confirmed.
    pub async fn subscribe(&self, channel: &str) -> RedisResult<()> {
        match self {
            Link::Single(manager) => manager.clone().subscribe(channel).await,
            Link::Cluster(connection) => connection.clone().ssubscribe(channel).await,
        }
    }

    /// Unsubscribes from `channel`.
    pub async fn unsubscribe(&self, channel: &str) -> RedisResult<()> {
        match self {
            Link::Single(manager) => manager.clone().unsubscribe(channel).await,
            Link::Cluster(connection) => connection.clone().sunsubscribe(channel).await,
        }
    }
}
