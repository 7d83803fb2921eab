//! How the Redis bus reaches Redis: one Redis or a Redis Cluster, behind one command handle
//! ([`Commands`]) that every part of the bus (presence, scripts, the server API, and whatever
//! else stores keys) uses unchanged, and the publish command that fits the engine (`PUBLISH`
//! on one Redis, `SPUBLISH` on a cluster: classic pub/sub is broadcast to every cluster node,
//! sharded pub/sub stays on the shard owning the channel's slot). It does not subscribe: the
//! subscriber side is in `subscriber` (one Redis) and `shards` (a cluster).
//!
//! On a cluster, redis-rs routes each command by its first key's slot and follows `MOVED` /
//! `ASK` itself; every command and script of the bus touches one hash slot (one room's
//! `{room}` keys, or one instance's `{instance}` keys), and a pipeline only ever groups keys
//! of one slot, so nothing the bus sends can be refused as `CROSSSLOT`.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture, Value};

use crate::bus::BusError;

/// Where the bus finds Redis, as configured.
#[derive(Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `REDIS_URL`: one Redis (`redis://` or `rediss://`, possibly with user and password).
    Single(String),
    /// `REDIS_CLUSTER_URLS`: seed nodes of a Redis Cluster; the rest is discovered.
    Cluster(Vec<String>),
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // URLs may carry passwords: only what `redacted_url` keeps.
        match self {
            Endpoint::Single(url) => write!(f, "Single({})", super::redacted_url(url)),
            Endpoint::Cluster(urls) => f
                .debug_tuple("Cluster")
                .field(
                    &urls
                        .iter()
                        .map(|u| super::redacted_url(u))
                        .collect::<Vec<_>>(),
                )
                .finish(),
        }
    }
}

impl Endpoint {
    /// Scheme, hosts and ports only, for log lines.
    pub fn redacted(&self) -> String {
        match self {
            Endpoint::Single(url) => super::redacted_url(url),
            Endpoint::Cluster(urls) => urls
                .iter()
                .map(|u| super::redacted_url(u))
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    /// `"redis"` or `"redis-cluster"`: the bus kind in `/webrtc/health`.
    pub fn kind(&self) -> &'static str {
        match self {
            Endpoint::Single(_) => "redis",
            Endpoint::Cluster(_) => "redis-cluster",
        }
    }

    fn uses_tls(&self) -> bool {
        match self {
            Endpoint::Single(url) => url.starts_with("rediss://"),
            Endpoint::Cluster(urls) => urls.iter().any(|u| u.starts_with("rediss://")),
        }
    }
}

/// Timeouts of the command connection, from the bus' [`Timing`](super::Timing).
#[derive(Debug, Clone, Copy)]
pub(super) struct CommandTimeouts {
    pub(super) connect: Duration,
    /// The driver's own bound; each caller bounds its wait further.
    pub(super) response: Duration,
}

/// The clonable command handle: a multiplexed connection to one Redis (reconnecting by
/// itself) or a cluster connection (one multiplexed connection per node, slot map refreshed
/// on `MOVED`).
#[derive(Clone)]
pub(super) enum Commands {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// What the subscriber side needs to open its own connections.
#[derive(Clone)]
pub(super) enum Subscribe {
    /// The client of the one Redis.
    Single(redis::Client),
    /// A seed's connection settings (user, password, TLS, RESP version) to open a connection
    /// to any node by replacing its address.
    Cluster(ConnectionInfo),
}

/// Opens the command handle without waiting for Redis: connections are made lazily, so the
/// bus starts (not ready) while Redis is unreachable.
pub(super) fn open(
    endpoint: &Endpoint,
    timeouts: CommandTimeouts,
) -> Result<(Commands, Subscribe), BusError> {
    if endpoint.uses_tls() {
        // rustls needs a process-wide crypto provider; an error only means one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let config_error = |e: redis::RedisError| {
        BusError::Config(format!(
            "invalid redis endpoint {}: {:?}",
            endpoint.redacted(),
            e.kind()
        ))
    };
    match endpoint {
        Endpoint::Single(url) => {
            let client = redis::Client::open(url.as_str()).map_err(config_error)?;
            // Fail fast instead of queueing behind reconnect attempts: a sender must hear
            // `bus_unavailable` within a couple of seconds, never wait indefinitely.
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeouts.connect))
                .set_response_timeout(Some(timeouts.response))
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_millis(500));
            let conn = ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(
                |source| BusError::Redis {
                    op: "connection setup",
                    source,
                },
            )?;
            Ok((Commands::Single(conn), Subscribe::Single(client)))
        }
        Endpoint::Cluster(urls) => {
            let seed = urls
                .first()
                .ok_or_else(|| BusError::Config("no redis cluster seed URL".to_owned()))?
                .as_str()
                .into_connection_info()
                .map_err(config_error)?;
            let client = ClusterClient::builder(urls.iter().map(String::as_str))
                // A MOVED or a node that went away costs a retry; more would only make a
                // sender wait longer for `bus_unavailable` while a slot has no master.
                .retries(2)
                .min_retry_wait(50)
                .max_retry_wait(500)
                .build()
                .map_err(config_error)?;
            let config = ClusterConfig::new()
                .set_connection_timeout(timeouts.connect)
                .set_response_timeout(timeouts.response);
            let conn = client.get_pending_async_connection_with_config(config);
            Ok((Commands::Cluster(conn), Subscribe::Cluster(seed)))
        }
    }
}

impl Commands {
    /// The publish command for a room or canary channel: `PUBLISH` on one Redis, `SPUBLISH`
    /// (routed to the shard owning the channel's slot) on a cluster.
    pub(super) fn publish(&self, channel: &str, payload: impl redis::ToRedisArgs) -> Cmd {
        let mut cmd = redis::cmd(match self {
            Commands::Single(_) => "PUBLISH",
            Commands::Cluster(_) => "SPUBLISH",
        });
        cmd.arg(channel).arg(payload);
        cmd
    }

    /// Whether this handle talks to a cluster.
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Commands::Cluster(_))
    }
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Commands::Single(c) => c.req_packed_command(cmd),
            Commands::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Commands::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Commands::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::Single(c) => c.get_db(),
            Commands::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_never_show_credentials() {
        let single = Endpoint::Single("rediss://u:s3cret@h:6380/0".into());
        assert_eq!(format!("{single:?}"), "Single(rediss://h:6380)");
        assert_eq!(single.kind(), "redis");
        let cluster = Endpoint::Cluster(vec![
            "redis://:pw@a:7000".into(),
            "redis://:pw@b:7001".into(),
        ]);
        assert_eq!(cluster.redacted(), "redis://a:7000,redis://b:7001");
        assert!(!format!("{cluster:?}").contains("pw"));
        assert_eq!(cluster.kind(), "redis-cluster");
    }
}
