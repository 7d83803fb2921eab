//! The Redis bus: cluster-wide presence, atomic room capacity and cross-instance relay over
//! Redis pub/sub, so any number of server instances act as one service. It does not touch
//! WebSockets (the hub serves local participants) and never relays a message to local ones.
//!
//! Per instance: one command handle (`conn`: a multiplexed connection to one Redis, or a
//! cluster connection routing each command to the shard owning its slot) and dedicated
//! subscriber connections, subscribed to a room's channel only while this instance has local
//! participants there, plus to its own canary channel. This file holds the [`Bus`] entry
//! points, the state the parts share ([`Inner`]) and publishing; each part owns its own state:
//!
//! | module | owns |
//! |---|---|
//! | `link` | link state and readiness: [`Timing`], `Link`, `ready_at`, wedge detection, the command wrapper that keeps `Link` current |
//! | `subscriber` | room subscriptions (reference counts), the one-Redis subscriber connection and task, the canary task |
//! | `shards` | on a Redis Cluster: the slot map, one subscriber connection per master with its reader task, where each room channel is subscribed, the per-shard canaries |
//! | `slots` | nothing: hash slots and the `CLUSTER SLOTS` map, pure |
//! | `inbound` | what is accepted from the subscriber connection: validation against the hub and Redis presence, dropped-input metrics and log lines |
//! | `presence` | local registrations, join/leave, resync, heartbeat, dead-instance sweep and `instance_lost` cleanup, the heartbeat task |
//! | `remote` | what crosses to the hub: event delivery and reconciling the hub's record of remote members with Redis |
//! | `admin` | nothing: the server API's reads of rooms from presence records, its actions on the room channels, metadata updates |
//! | `conn` | nothing: how Redis is reached (one Redis or a cluster), the command handle every part uses, the publish command |
//! | `webhooks` | the webhook event log: registry of rooms with events, delivery scripts' calls ([`crate::webhook::EventLog`]) |
//! | `resume` | the inbox bounds and scripts: numbered delivery into Redis inboxes, adopting a participant for a resume |
//! | `keys`, `scripts`, `wire`, [`metrics`] | key layout, Lua scripts, channel message format, bus metrics |
//!
//! Three background tasks, each in a `redis_bus` span carrying `instance` and `task`:
//! subscriber (`subscriber` on one Redis, `shards` on a cluster, which also runs one reader
//! task per master) and canary (`subscriber`), heartbeat (`presence`).
//!
//! # Lock order
//!
//! Outermost first; a lock is only ever taken while holding locks above it:
//!
//! 1. `presence.gate` (async `RwLock`): joins and leaves hold it shared for their whole run, a
//!    resync exclusively, so a resync never sees a half-done join.
//! 2. `subscriber.subs` (async `Mutex`): held across SUBSCRIBE/UNSUBSCRIBE and the room's
//!    registration for crash cleanup, and by the subscriber task while it (re)subscribes.
//! 3. `presence.local`, `link` and `shards.state` (std `Mutex`es): leaves, held for a few
//!    field updates only — never across an `.await`, never together, never while calling the
//!    hub.
//!
//! The hub's own lock is taken inside [`LocalHub`] calls, which the bus makes with no std lock
//! held (possibly inside 1 or 2); the hub never calls back into the bus.

mod admin;
mod conn;
mod inbound;
mod keys;
mod link;
pub mod metrics;
mod presence;
mod remote;
mod resume;
mod scripts;
mod shards;
mod slots;
mod subscriber;
mod webhooks;
mod wire;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::task::JoinHandle;
use tracing::Instrument;

pub use conn::Endpoint;
pub use keys::{escape_instance_id, Keys, PrefixError, MAX_PREFIX_LEN};
pub use link::Timing;

use super::{
    Adoption, Bus, BusError, BusHealth, Delivered, JoinLimits, JoinOutcome, LocalHub,
    RelayDelivery, RelayMessage, RemoteEvent, RoomAction, RoomRecord,
};
use crate::room::{LeaveReason, Metadata, ParticipantInfo, RoomId};

/// What every part of the bus shares. Each part's state sits in its own field; see the
/// module documentation for who owns what and the lock order.
struct Inner {
    keys: Keys,
    timing: Timing,
    /// How the subscriber side opens its connections.
    subscribe: conn::Subscribe,
    /// The command handle: every command, script and publish of the bus goes through it.
    conn: conn::Commands,
    hub: Arc<dyn LocalHub>,
    metrics: metrics::BusMetrics,
    /// Bounds of what is accepted from the room channels.
    input_limits: wire::InputLimits,
    /// How long a PUBLISH may wait for Redis' reply before its outcome is unknown.
    publish_timeout: Duration,
    /// Carries `instance`; parent of events not raised inside a bus task.
    span: tracing::Span,
    link: Mutex<link::Link>,
    subscriber: subscriber::Subscriber,
    /// Where each room channel is subscribed on a cluster (empty on one Redis).
    shards: shards::Shards,
    presence: presence::Presence,
    reconcile: remote::Reconcile,
    /// Set when webhook endpoints are configured: the presence scripts record events.
    webhooks: Option<webhooks::Webhooks>,
    /// Inbox bounds and scripts; used only when `numbers_deliveries`.
    resume: resume::ResumeStore,
    /// Resume is on: deliveries are numbered and kept in Redis.
    numbers_deliveries: bool,
}

/// The Redis bus. See the module documentation.
pub struct RedisBus {
    inner: Arc<Inner>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Settings the Redis bus needs, taken from the server configuration.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// One Redis or a Redis Cluster.
    pub endpoint: Endpoint,
    pub key_prefix: String,
    pub instance_id: String,
    pub presence_ttl: Duration,
    /// `limits.max_message_bytes`: bounds relayed frames read from Redis.
    pub max_message_bytes: usize,
    /// `limits.max_json_depth`: bounds the nesting of relayed frames read from Redis.
    pub max_json_depth: usize,
    /// `limits.max_metadata_bytes`: bounds participants' metadata read from Redis.
    pub max_metadata_bytes: usize,
    /// `redis.publish_timeout_secs`: how long a PUBLISH waits for Redis' reply.
    pub publish_timeout: Duration,
    /// What to record for webhooks and whom to tell, when endpoints are configured.
    pub webhooks: Option<(crate::webhook::Recording, Arc<crate::webhook::Wakes>)>,
    /// `resume.grace_secs`: zero turns numbered delivery (and resuming) off.
    pub resume_grace: Duration,
    /// `resume.inbox_messages`: messages kept per participant in Redis.
    pub inbox_messages: usize,
    /// `resume.inbox_bytes`: bytes of the missed messages a resume may replay from Redis.
    pub inbox_bytes: usize,
}

/// The part of a URL that is safe to log: scheme, host and port only.
pub fn redacted_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("?", url));
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = rest.split('/').next().unwrap_or_default();
    format!("{scheme}://{host}")
}

impl RedisBus {
    /// Validates the settings and starts the background tasks. Redis does not need to be
    /// reachable yet: the bus reports not ready and connects as soon as it can. It records
    /// into `metrics` (the server passes the handle registered for its `/metrics`).
    pub async fn start(
        settings: RedisSettings,
        hub: Arc<dyn LocalHub>,
        metrics: metrics::BusMetrics,
    ) -> Result<Self, BusError> {
        let keys = Keys::new(&settings.key_prefix, &settings.instance_id)
            .map_err(|e| BusError::Config(format!("key prefix: {e}")))?;
        let timing = Timing::from_ttl(settings.presence_ttl);
        let (conn, subscribe) = conn::open(
            &settings.endpoint,
            conn::CommandTimeouts {
                connect: Duration::from_secs(1),
                // Each caller bounds its own wait (commands and publishes have their own
                // timeouts); this only keeps the driver from giving up before either.
                response: timing.command_timeout.max(settings.publish_timeout),
            },
        )?;
        let span = tracing::info_span!(parent: None, "redis_bus", instance = %keys.instance());
        let inner = Arc::new(Inner {
            keys,
            timing,
            subscribe,
            conn,
            hub,
            metrics,
            input_limits: wire::InputLimits::new(
                settings.max_message_bytes,
                settings.max_json_depth,
                settings.max_metadata_bytes,
            ),
            publish_timeout: settings.publish_timeout,
            span,
            link: Mutex::new(link::Link::default()),
            subscriber: subscriber::Subscriber::default(),
            shards: shards::Shards::default(),
            presence: presence::Presence::new(),
            reconcile: remote::Reconcile::default(),
            webhooks: settings
                .webhooks
                .map(|(recording, wakes)| webhooks::Webhooks::new(recording, wakes)),
            resume: resume::ResumeStore::new(
                settings.inbox_messages,
                settings.inbox_bytes,
                settings.resume_grace + settings.presence_ttl,
            ),
            numbers_deliveries: !settings.resume_grace.is_zero(),
        });
        tracing::info!(
            parent: &inner.span,
            redis = %settings.endpoint.redacted(),
            prefix = %inner.keys.prefix(),
            ttl_ms = timing.ttl.as_millis() as u64,
            "redis bus starting"
        );
        let task_span = |task: &'static str| tracing::info_span!(parent: None, "redis_bus", instance = %inner.instance(), task);
        let receiving = if inner.conn.is_cluster() {
            tokio::spawn(shards::shards_task(inner.clone()).instrument(task_span("subscriber")))
        } else {
            tokio::spawn(
                subscriber::subscriber_task(inner.clone()).instrument(task_span("subscriber")),
            )
        };
        let tasks = vec![
            receiving,
            tokio::spawn(subscriber::canary_task(inner.clone()).instrument(task_span("canary"))),
            tokio::spawn(
                presence::heartbeat_task(inner.clone()).instrument(task_span("heartbeat")),
            ),
        ];
        Ok(RedisBus {
            inner,
            tasks: Mutex::new(tasks),
        })
    }
}

impl Inner {
    fn link(&self) -> std::sync::MutexGuard<'_, link::Link> {
        // Plain data: a panic elsewhere cannot leave it inconsistent in a harmful way.
        self.link.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn instance(&self) -> &str {
        self.keys.instance()
    }

    /// Publishes an event on its room's channel (for the other instances; our echo is
    /// dropped on receipt).
    async fn publish_event(&self, room: &RoomId, event: &RemoteEvent) -> Result<(), BusError> {
        let payload = wire::encode(self.instance(), event);
        let channel = self.keys.room_channel(room);
        let mut conn = self.conn.clone();
        let cmd = conn.publish(&channel, payload);
        let started = Instant::now();
        self.redis_within("publish", self.publish_timeout, async move {
            cmd.query_async::<i64>(&mut conn).await
        })
        .await
        .map_err(publish_failure)?;
        self.metrics.publish_latency(started.elapsed());
        Ok(())
    }
}

/// What a failed PUBLISH means for its sender: `bus_unavailable` only when Redis certainly did
/// not run it, [`BusError::DeliveryUnknown`] when it may have (a client that retries the
/// first would not send a duplicate; one that retries the second might).
fn publish_failure(error: BusError) -> BusError {
    match error {
        BusError::Timeout { op } => BusError::DeliveryUnknown { op, source: None },
        BusError::Redis { op, source } if !certainly_not_run(&source) => {
            BusError::DeliveryUnknown {
                op,
                source: Some(source),
            }
        }
        other => other,
    }
}

/// Whether a command that failed with `e` certainly did not run in Redis: Redis answered with
/// an error, or no connection could be made (refused, wrong credentials, bad configuration).
/// Anything else — a timeout, a connection that broke (the driver cannot tell whether that was
/// before or after the command was written), a reply it could not read — may have run.
fn certainly_not_run(e: &redis::RedisError) -> bool {
    match e.kind() {
        redis::ErrorKind::Server(_)
        | redis::ErrorKind::Extension
        | redis::ErrorKind::AuthenticationFailed
        | redis::ErrorKind::InvalidClientConfig => true,
        redis::ErrorKind::Io => e.is_connection_refusal(),
        _ => false,
    }
}

fn sorted(mut participants: Vec<ParticipantInfo>) -> Vec<ParticipantInfo> {
    crate::room::sort_by_join(&mut participants);
    participants
}

/// Presence records as Redis holds them (`ParticipantInfo` JSON); unreadable ones are skipped.
fn parse_infos(values: &[String]) -> Vec<ParticipantInfo> {
    values
        .iter()
        .filter_map(|j| serde_json::from_str::<ParticipantInfo>(j).ok())
        .collect()
}

#[async_trait]
impl Bus for RedisBus {
    async fn join(
        &self,
        room: &RoomId,
        participant: &ParticipantInfo,
        limits: JoinLimits,
    ) -> Result<JoinOutcome, BusError> {
        self.inner.join(room, participant, limits).await
    }

    async fn leave(
        &self,
        room: &RoomId,
        participant: &ParticipantInfo,
        reason: LeaveReason,
    ) -> Result<(), BusError> {
        self.inner.leave(room, participant, reason).await
    }

    async fn publish(&self, message: RelayMessage) -> Result<(), BusError> {
        let room = message.room_id.clone();
        self.inner
            .publish_event(&room, &RemoteEvent::Relay(message))
            .await
    }

    async fn participants(&self, room: &RoomId) -> Result<Vec<ParticipantInfo>, BusError> {
        self.inner.participants(room).await
    }

    async fn room(&self, room: &RoomId) -> Result<Option<RoomRecord>, BusError> {
        self.inner.room(room).await
    }

    async fn rooms(&self) -> Result<Vec<RoomRecord>, BusError> {
        self.inner.rooms().await
    }

    async fn act(&self, action: RoomAction) -> Result<(), BusError> {
        self.inner.act(action).await
    }

    async fn update_metadata(
        &self,
        room: &RoomId,
        participant_id: &str,
        metadata: Option<Metadata>,
    ) -> Result<Option<ParticipantInfo>, BusError> {
        self.inner
            .update_metadata(room, participant_id, metadata)
            .await
    }

    fn numbers_deliveries(&self) -> bool {
        self.inner.numbers_deliveries
    }

    async fn deliver(&self, deliveries: Vec<RelayDelivery>) -> Vec<Result<Delivered, BusError>> {
        self.inner.deliver_numbered(deliveries).await
    }

    async fn adopt(
        &self,
        room: &RoomId,
        participant_id: &str,
        user_id: &str,
        last_seq: u64,
    ) -> Result<Adoption, BusError> {
        self.inner
            .adopt(room, participant_id, user_id, last_seq)
            .await
    }

    async fn release(&self, room: &RoomId, participant_id: &str) {
        self.inner.release_moved(room, participant_id).await;
    }

    fn is_ready(&self) -> bool {
        link::ready_at(&self.inner.link(), Instant::now(), &self.inner.timing)
    }

    fn health(&self) -> BusHealth {
        let link = self.inner.link().clone();
        let (ready, detail) = link::health_at(&link, Instant::now(), &self.inner.timing);
        BusHealth {
            kind: if self.inner.conn.is_cluster() {
                "redis-cluster"
            } else {
                "redis"
            },
            ready,
            detail,
        }
    }

    fn event_log(&self) -> Option<Arc<dyn crate::webhook::EventLog>> {
        self.inner.webhooks.as_ref()?;
        Some(Arc::new(webhooks::RedisLog {
            inner: self.inner.clone(),
        }))
    }

    async fn shutdown(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            task.abort();
        }
        self.inner.deregister().await;
    }
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        for task in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_logged_without_credentials() {
        assert_eq!(
            redacted_url("rediss://user:s3cret@redis.example:6380/0"),
            "rediss://redis.example:6380"
        );
        assert_eq!(
            redacted_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(redacted_url("redis://:p@ss@h:1/"), "redis://h:1");
    }

    #[test]
    fn a_publish_is_unavailable_only_when_redis_certainly_did_not_run_it() {
        use redis::{ErrorKind, RedisError, ServerErrorKind};
        let io = |kind: std::io::ErrorKind| RedisError::from(std::io::Error::from(kind));
        let unknown = |e: &BusError| matches!(e, BusError::DeliveryUnknown { .. });
        let failed = |source| {
            publish_failure(BusError::Redis {
                op: "publish",
                source,
            })
        };
        // Not sent, or refused by Redis: the sender may retry.
        for source in [
            io(std::io::ErrorKind::ConnectionRefused),
            RedisError::from((ErrorKind::AuthenticationFailed, "wrong password")),
            RedisError::from((ErrorKind::Server(ServerErrorKind::ResponseError), "NOPERM")),
        ] {
            let e = failed(source);
            assert!(!unknown(&e), "{e}");
            assert_eq!(e.metric_label(), "bus_unavailable");
        }
        // Written, maybe carried: a retry could duplicate it.
        for source in [
            io(std::io::ErrorKind::BrokenPipe),
            io(std::io::ErrorKind::ConnectionReset),
            io(std::io::ErrorKind::TimedOut),
            RedisError::from((ErrorKind::Parse, "garbled reply")),
        ] {
            let e = failed(source);
            assert!(unknown(&e), "{e}");
            assert_eq!(e.metric_label(), "delivery_unknown");
        }
        let e = publish_failure(BusError::Timeout { op: "publish" });
        assert!(unknown(&e), "{e}");
        let e = publish_failure(BusError::SubscriberDown);
        assert_eq!(e.metric_label(), "bus_unavailable");
    }

    #[test]
    fn participants_are_listed_in_join_order() {
        let p = |id: &str, at: &str| ParticipantInfo {
            joined_at: at.into(),
            ..crate::test_support::participant(id, "i")
        };
        let list = sorted(vec![
            p("b", "2026-01-01T00:00:01.000Z"),
            p("c", "2026-01-01T00:00:00.500Z"),
            p("a", "2026-01-01T00:00:01.000Z"),
        ]);
        let ids: Vec<&str> = list.iter().map(|p| p.participant_id.as_str()).collect();
        assert_eq!(ids, ["c", "a", "b"]);
    }
}
