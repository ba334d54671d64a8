//! The connection to Redis, single server or cluster, behind one interface: commands, publish,
//! subscribe.
//!
//! A single server is reached through one multiplexed RESP3 connection whose pushed messages
//! reach the callback *synchronously*, in the order Redis wrote them: a message this node
//! publishes on a channel it subscribes to is dispatched before the publish's answer, so local
//! subscribers get it before the publisher's reply. That connection does not reconnect by
//! itself: [`Link::reconnect`] makes a new one (the broker calls it, with backoff, when the
//! old one is lost, then subscribes again). A cluster is reached through the client library's
//! cluster connection, which reconnects and resubscribes on its own.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::cluster::ClusterClientBuilder;
use redis::{AsyncConnectionConfig, Cmd, FromRedisValue, ProtocolVersion, PushInfo, RedisResult, TlsCertificates};

use super::url::BrokerUrl;
use crate::error::Error;

/// How long a command may take before it counts as failed (Redis answers in microseconds; a
/// broker that does not answer in this time is treated as unreachable).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);

/// What receives pushed messages; must not block.
pub type OnPush = Arc<dyn Fn(PushInfo) -> Result<(), ()> + Send + Sync>;

/// An open connection to the broker. Cheap to clone.
#[derive(Clone)]
pub enum Link {
    /// One Redis server, through a connection that is replaced when it is lost.
    Single(Arc<Single>),
    /// A Redis Cluster: pub/sub is sharded.
    Cluster(redis::cluster_async::ClusterConnection),
}

/// A single server's client and its current connection.
pub struct Single {
    client: redis::Client,
    on_push: OnPush,
    connection: RwLock<redis::aio::MultiplexedConnection>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Link::Single(_) => "Link::Single",
            Link::Cluster(_) => "Link::Cluster",
        })
    }
}

impl Single {
    async fn open(client: &redis::Client, on_push: &OnPush) -> RedisResult<redis::aio::MultiplexedConnection> {
        let sink = Arc::clone(on_push);
        let config = AsyncConnectionConfig::new()
            .set_push_sender(move |push: PushInfo| sink(push))
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT));
        client.get_multiplexed_async_connection_with_config(&config).await
    }

    fn current(&self) -> redis::aio::MultiplexedConnection {
        self.connection.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

impl Link {
    /// Connects, delivering pushed messages to `on_push`.
    pub async fn connect(url: &BrokerUrl, ca: Option<Vec<u8>>, on_push: OnPush) -> Result<Link, Error> {
        let unreachable =
            |err: redis::RedisError| Error::Config(format!("cannot reach the broker at {}: {err}", url.redacted()));
        let invalid =
            |err: redis::RedisError| Error::Config(format!("the broker URL {} is not valid: {err}", url.redacted()));
        let certs = || TlsCertificates { client_tls: None, root_cert: ca.clone() };
        match url {
            BrokerUrl::Single { url: address } => {
                let mut info = redis::IntoConnectionInfo::into_connection_info(address.as_str()).map_err(invalid)?;
                let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
                info = info.set_redis_settings(settings);
                let client = if ca.is_some() {
                    redis::Client::build_with_tls(info, certs()).map_err(unreachable)?
                } else {
                    redis::Client::open(info).map_err(unreachable)?
                };
                let connection = Single::open(&client, &on_push).await.map_err(unreachable)?;
                Ok(Link::Single(Arc::new(Single { client, on_push, connection: RwLock::new(connection) })))
            }
            BrokerUrl::Cluster { nodes } => {
                let sink = Arc::clone(&on_push);
                let mut builder = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                    .use_protocol(ProtocolVersion::RESP3)
                    .push_sender(move |push: PushInfo| sink(push))
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

    /// Replaces a single server's lost connection with a new one, which loads `scripts` before
    /// it serves anything else (Redis may have restarted without them). A cluster reconnects by
    /// itself: nothing to do. The caller subscribes again.
    pub async fn reconnect(&self, scripts: &[&redis::Script]) -> RedisResult<()> {
        if let Link::Single(single) = self {
            let mut fresh = Single::open(&single.client, &single.on_push).await?;
            load_into(&mut fresh, scripts).await?;
            *single.connection.write().unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
        }
        Ok(())
    }

    /// Loads `scripts` into Redis (every primary of a cluster).
    pub async fn load(&self, scripts: &[&redis::Script]) -> RedisResult<()> {
        match self {
            Link::Single(single) => load_into(&mut single.current(), scripts).await,
            Link::Cluster(connection) => load_into(&mut connection.clone(), scripts).await,
        }
    }

    /// Whether the client library resubscribes by itself after a reconnection.
    pub fn resubscribes_itself(&self) -> bool {
        matches!(self, Link::Cluster(_))
    }

    /// Runs one command.
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Link::Single(single) => cmd.query_async(&mut single.current()).await,
            Link::Cluster(connection) => cmd.query_async(&mut connection.clone()).await,
        }
    }

    /// Runs a pipeline (a transaction when `atomic`).
    pub async fn pipeline<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> RedisResult<T> {
        match self {
            Link::Single(single) => pipe.query_async(&mut single.current()).await,
            Link::Cluster(connection) => pipe.query_async(&mut connection.clone()).await,
        }
    }

    /// Runs a script.
    pub async fn script<T: FromRedisValue>(&self, invocation: &redis::ScriptInvocation<'_>) -> RedisResult<T> {
        match self {
            Link::Single(single) => invocation.invoke_async(&mut single.current()).await,
            Link::Cluster(connection) => invocation.invoke_async(&mut connection.clone()).await,
        }
    }

    /// Publishes `payload` on `channel` (sharded on a cluster); returns how many connections
    /// received it.
    pub async fn publish(&self, channel: &str, payload: &[u8]) -> RedisResult<usize> {
        match self {
            Link::Single(single) => {
                redis::cmd("PUBLISH").arg(channel).arg(payload).query_async(&mut single.current()).await
            }
            Link::Cluster(connection) => {
                redis::cmd("SPUBLISH").arg(channel).arg(payload).query_async(&mut connection.clone()).await
            }
        }
    }

    /// Subscribes to `channel`; resolves once Redis confirmed.
    pub async fn subscribe(&self, channel: &str) -> RedisResult<()> {
        match self {
            Link::Single(single) => single.current().subscribe(channel).await,
            Link::Cluster(connection) => connection.clone().ssubscribe(channel).await,
        }
    }

    /// Unsubscribes from `channel`.
    pub async fn unsubscribe(&self, channel: &str) -> RedisResult<()> {
        match self {
            Link::Single(single) => single.current().unsubscribe(channel).await,
            Link::Cluster(connection) => connection.clone().sunsubscribe(channel).await,
        }
    }
}

/// Loads `scripts` through `connection`. Fails when Redis cannot be reached; a Redis that refuses
/// `SCRIPT LOAD` (an ACL) is only logged: each script then loads on its first use.
async fn load_into(connection: &mut impl redis::aio::ConnectionLike, scripts: &[&redis::Script]) -> RedisResult<()> {
    for script in scripts {
        match script.load_async(connection).await {
            Ok(_) => {}
            Err(err) if err.is_io_error() || err.is_timeout() || err.is_connection_dropped() => return Err(err),
            Err(err) => {
                log::warn!("broker: loading the scripts: {err}");
                break;
            }
        }
    }
    Ok(())
}
