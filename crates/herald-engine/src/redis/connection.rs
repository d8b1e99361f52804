//! Connections to Redis, standalone or Cluster, behind one type.
//!
//! One shared connection (multiplexed, reconnecting) carries every ordinary command of the
//! engine; concurrent requests are pipelined on it. A blocking read (`XREAD BLOCK`) would stall
//! every other command queued behind it there, so each stream's tail reader opens a dedicated
//! connection of its own ([`Redis::dedicated`]).

use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisFuture, Value};

use super::raw::RawConnection;
use crate::api::EngineError;

/// How long the shared connection waits for a reply before failing the command. Generous:
/// a Lua script publishing a large batch takes a while on a loaded machine.
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection attempt may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The client side of a Redis deployment, able to open connections.
#[derive(Clone)]
pub(crate) enum Redis {
    Standalone(Client),
    /// Boxed: a cluster client is twice a standalone one's size.
    Cluster(Box<ClusterClient>),
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Redis::Standalone(_) => f.write_str("Redis::Standalone"),
            Redis::Cluster(_) => f.write_str("Redis::Cluster"),
        }
    }
}

/// A connection of either kind; cheap to clone (clones share the connection).
#[derive(Clone)]
pub(crate) enum Connection {
    Managed(ConnectionManager),
    Multiplexed(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connection")
    }
}

impl Redis {
    /// `urls` holds one `redis://` URL for a standalone server, or the seed nodes of a Cluster.
    pub fn new(urls: &[String], cluster: bool) -> Result<Redis, EngineError> {
        let invalid = |error: redis::RedisError| {
            EngineError::Config(format!("invalid Redis URL {urls:?}: {error}"))
        };
        if cluster {
            let client = ClusterClient::builder(urls.iter().map(String::as_str))
                .response_timeout(RESPONSE_TIMEOUT)
                .connection_timeout(CONNECT_TIMEOUT)
                .build()
                .map_err(invalid)?;
            return Ok(Redis::Cluster(Box::new(client)));
        }
        let [url] = urls else {
            return Err(EngineError::Config(format!(
                "a standalone Redis takes exactly one URL, got {}",
                urls.len()
            )));
        };
        Client::open(url.as_str())
            .map(Redis::Standalone)
            .map_err(invalid)
    }

    /// The shared connection: reconnects by itself after a failure.
    pub async fn shared(&self) -> Result<Connection, EngineError> {
        match self {
            Redis::Standalone(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_connection_timeout(Some(CONNECT_TIMEOUT));
                client
                    .get_connection_manager_with_config(config)
                    .await
                    .map(Connection::Managed)
                    .map_err(|error| backend("connect", &error))
            }
            Redis::Cluster(client) => client
                .get_async_connection()
                .await
                .map(Connection::Cluster)
                .map_err(|error| backend("connect", &error)),
        }
    }

    /// A plain connection of its own whose replies come back as bytes (`raw.rs`), for the
    /// reads that carry events; `None` for a Cluster (redis-rs routes its commands) or an
    /// address it does not speak.
    pub async fn raw(&self, name: &str) -> Result<Option<RawConnection>, EngineError> {
        match self {
            Redis::Standalone(client) => RawConnection::connect(
                client.get_connection_info(),
                name,
                CONNECT_TIMEOUT,
                RESPONSE_TIMEOUT,
            )
            .await
            .map_err(|error| EngineError::Backend {
                operation: "connect",
                reason: error.to_string(),
            }),
            Redis::Cluster(_) => Ok(None),
        }
    }

    /// A connection of its own, for commands that block (`XREAD BLOCK`); `response_timeout`
    /// must exceed the longest block.
    pub async fn dedicated(&self, response_timeout: Duration) -> Result<Connection, EngineError> {
        match self {
            Redis::Standalone(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_response_timeout(Some(response_timeout))
                    .set_connection_timeout(Some(CONNECT_TIMEOUT));
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Connection::Multiplexed)
                    .map_err(|error| backend("connect", &error))
            }
            Redis::Cluster(client) => client
                .get_async_connection()
                .await
                .map(Connection::Cluster)
                .map_err(|error| backend("connect", &error)),
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Managed(connection) => connection.req_packed_command(cmd),
            Connection::Multiplexed(connection) => connection.req_packed_command(cmd),
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Managed(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
            Connection::Multiplexed(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
            Connection::Cluster(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Managed(connection) => connection.get_db(),
            Connection::Multiplexed(connection) => connection.get_db(),
            Connection::Cluster(connection) => connection.get_db(),
        }
    }
}

/// A failed Redis command as an engine error naming what was being done.
pub(crate) fn backend(operation: &'static str, error: &redis::RedisError) -> EngineError {
    EngineError::Backend {
        operation,
        reason: error.to_string(),
    }
}
