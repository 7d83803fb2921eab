//! The Redis bus: cluster-wide presence, atomic room capacity and cross-instance relay over
//! Redis pub/sub, so any number of server instances act as one service. It does not touch
//! WebSockets (the hub serves local participants) and never relays a message to local ones.
//!
//! Per instance: one multiplexed command connection ([`ConnectionManager`]) and one dedicated
//! subscriber connection, subscribed to a room's channel only while this instance has local
//! participants there, plus to its own canary channel. Three background tasks:
//!
//! * subscriber: reads the subscriber connection in order and hands events to the hub;
//!   reconnects (and resubscribes every room) when the connection ends or is declared wedged;
//! * canary: publishes a nonce to this instance's canary channel every few seconds; readiness
//!   holds only while it comes back, and a canary that does not come back gets the subscriber
//!   connection replaced;
//! * heartbeat: renews this instance's heartbeat key (TTL = presence TTL), re-registers local
//!   presence whenever Redis may have lost it (key missing, after an error), and removes the
//!   participants of dead instances (exactly one live instance wins a `SET NX` lock).
//!
//! Key layout: [`keys`]; Lua scripts: [`scripts`]; channel message format: [`wire`].

mod keys;
pub mod metrics;
mod scripts;
mod wire;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use redis::{AsyncCommands, RedisResult, Script};
use tokio::sync::{Notify, RwLock};
use tokio::task::JoinHandle;

pub use keys::{escape_instance_id, Keys, PrefixError, MAX_PREFIX_LEN};

use super::{Bus, BusError, BusHealth, JoinOutcome, LocalHub, RelayMessage, RemoteEvent};
use crate::room::{LeaveReason, ParticipantInfo, RoomId};

/// How long the tombstone of a cleaned-up instance lives: long enough for an instance that was
/// only cut off to come back and re-announce its participants.
const LOST_TOMBSTONE_SECS: u64 = 3600;

/// Intervals derived from the presence TTL (a short TTL in tests makes everything fast).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub ttl: Duration,
    /// Heartbeat renewal, resync and dead-instance sweep period.
    pub heartbeat: Duration,
    /// Canary publication period.
    pub canary: Duration,
    /// Not ready once the last canary came back longer ago than this.
    pub canary_deadline: Duration,
    /// Upper bound for one Redis command; a stuck Redis becomes `bus_unavailable`.
    pub command_timeout: Duration,
}

impl Timing {
    /// Heartbeat every TTL/3 (three renewals per TTL survive one lost beat), canary every
    /// TTL/6 capped at 5 s, deadline two canary periods plus a second of slack.
    pub fn from_ttl(ttl: Duration) -> Self {
        let ttl = ttl.max(Duration::from_secs(1));
        let heartbeat = (ttl / 3).clamp(Duration::from_millis(250), Duration::from_secs(10));
        let canary = (ttl / 6).clamp(Duration::from_millis(250), Duration::from_secs(5));
        Timing {
            ttl,
            heartbeat,
            canary,
            canary_deadline: canary * 2 + Duration::from_secs(1),
            command_timeout: Duration::from_secs(2),
        }
    }
}

/// Connection state that readiness is computed from.
#[derive(Debug, Clone, Default)]
struct Link {
    /// The last command succeeded.
    commands_ok: bool,
    /// The subscriber connection is up and subscribed (since when).
    subscribed_since: Option<Instant>,
    /// When the last canary came back.
    last_canary: Option<Instant>,
    /// When a command last failed: only a canary after it proves the path works again.
    last_failure: Option<Instant>,
    /// Since when commands have been working without a failure.
    commands_ok_since: Option<Instant>,
}

/// Whether this instance may judge others dead: its own commands have worked for a full TTL.
/// Right after an outage every heartbeat may have lapsed at once; the others get one TTL to
/// renew theirs before anyone is declared lost.
fn may_sweep(link: &Link, now: Instant, timing: &Timing) -> bool {
    link.commands_ok
        && link
            .commands_ok_since
            .is_some_and(|t| now.saturating_duration_since(t) >= timing.ttl)
}

/// Readiness, pure: commands work, the subscriber is up and a canary came back recently over
/// the current subscriber connection.
fn ready_at(link: &Link, now: Instant, timing: &Timing) -> bool {
    let Some(since) = link.subscribed_since else {
        return false;
    };
    let after = link.last_failure.map_or(since, |f| f.max(since));
    link.commands_ok
        && link.last_canary.is_some_and(|t| {
            t >= after && now.saturating_duration_since(t) <= timing.canary_deadline
        })
}

/// The subscriber connection looks wedged: connected long enough for a canary to come back,
/// but none did within the deadline (while commands, hence the canary publish, work).
fn subscriber_wedged(link: &Link, now: Instant, timing: &Timing) -> bool {
    let Some(since) = link.subscribed_since else {
        return false;
    };
    // Measured from the latest of: connection, last command failure, last canary.
    let last = [Some(since), link.last_failure, link.last_canary]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(since);
    link.commands_ok && now.saturating_duration_since(last) > timing.canary_deadline
}

/// Local presence bookkeeping (what this instance registered in Redis).
#[derive(Default)]
struct Local {
    /// room → participant id → info: what a resync writes back.
    rooms: HashMap<RoomId, HashMap<String, ParticipantInfo>>,
    /// Rooms where a Redis write failed: a resync reconciles them.
    dirty: HashSet<RoomId>,
    /// Leave reasons not yet announced because Redis was unreachable.
    pending_left: HashMap<String, LeaveReason>,
    /// Redis may have lost (or never got) this instance's presence.
    needs_sync: bool,
}

/// Subscription state, changed only under its async mutex so SUBSCRIBE/UNSUBSCRIBE and the
/// subscriber's reconnect never interleave.
#[derive(Default)]
struct Subs {
    /// room → number of local participants joined or joining.
    refs: HashMap<RoomId, usize>,
    /// The live subscriber connection's command half.
    sink: Option<PubSubSink>,
}

struct Inner {
    keys: Keys,
    timing: Timing,
    client: redis::Client,
    conn: ConnectionManager,
    hub: Arc<dyn LocalHub>,
    subs: tokio::sync::Mutex<Subs>,
    link: Mutex<Link>,
    local: Mutex<Local>,
    /// Joins and leaves hold it shared, a resync exclusively: a resync never sees a
    /// half-done join (registered in Redis, not yet in `local`).
    gate: RwLock<()>,
    /// Wakes the subscriber task to replace its connection.
    repair: Notify,
    /// What this bus has told the hub about other instances' members, per subscribed room
    /// (join results plus delivered joins minus leaves): the view reconciled with Redis.
    remote: Mutex<HashMap<RoomId, HashMap<String, ParticipantInfo>>>,
    /// Events may have been missed (subscriber gap, Redis outage): reconcile the hub's view
    /// of remote members with Redis presence once presence has settled.
    reconcile_pending: AtomicBool,
    /// Wakes the subscriber task to run the reconciliation between two messages.
    reconcile: Notify,
    join_script: Script,
    remove_instance_script: Script,
    sync_script: Script,
    canary_nonce: AtomicU64,
}

/// The Redis bus. See the module documentation.
pub struct RedisBus {
    inner: Arc<Inner>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Settings the Redis bus needs, taken from the server configuration.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` URL, possibly with user and password.
    pub url: String,
    pub key_prefix: String,
    pub instance_id: String,
    pub presence_ttl: Duration,
}

/// The part of a URL that is safe to log: scheme, host and port only.
pub fn redacted_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("?", url));
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = rest.split('/').next().unwrap_or_default();
    format!("{scheme}://{host}")
}

/// A Redis error for logs and health: the error text (which names the failing operation, never
/// the URL or its credentials).
fn describe(e: &redis::RedisError) -> String {
    e.to_string()
}

impl RedisBus {
    /// Validates the settings and starts the background tasks. Redis does not need to be
    /// reachable yet: the bus reports not ready and connects as soon as it can.
    pub async fn start(settings: RedisSettings, hub: Arc<dyn LocalHub>) -> Result<Self, BusError> {
        let keys = Keys::new(&settings.key_prefix, &settings.instance_id)
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        if settings.url.starts_with("rediss://") {
            // rustls needs a process-wide crypto provider; an error only means one is
            // installed already.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = redis::Client::open(settings.url.as_str()).map_err(|e| {
            BusError::Unavailable(format!(
                "invalid redis url {}: {:?}",
                redacted_url(&settings.url),
                e.kind()
            ))
        })?;
        let timing = Timing::from_ttl(settings.presence_ttl);
        // Fail fast instead of queueing behind reconnect attempts: a sender must hear
        // `bus_unavailable` within a couple of seconds, never wait indefinitely.
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(timing.command_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
            .map_err(|e| BusError::Unavailable(format!("redis connection: {}", describe(&e))))?;
        let inner = Arc::new(Inner {
            keys,
            timing,
            client,
            conn,
            hub,
            subs: tokio::sync::Mutex::new(Subs::default()),
            link: Mutex::new(Link::default()),
            local: Mutex::new(Local {
                needs_sync: true,
                ..Local::default()
            }),
            gate: RwLock::new(()),
            repair: Notify::new(),
            remote: Mutex::new(HashMap::new()),
            reconcile_pending: AtomicBool::new(false),
            reconcile: Notify::new(),
            join_script: Script::new(scripts::JOIN),
            remove_instance_script: Script::new(scripts::REMOVE_INSTANCE),
            sync_script: Script::new(scripts::SYNC_INSTANCE),
            canary_nonce: AtomicU64::new(0),
        });
        tracing::info!(
            redis = %redacted_url(&settings.url),
            prefix = %inner.keys.prefix(),
            instance = %inner.keys.instance(),
            ttl_ms = timing.ttl.as_millis() as u64,
            "redis bus starting"
        );
        let tasks = vec![
            tokio::spawn(subscriber_task(inner.clone())),
            tokio::spawn(canary_task(inner.clone())),
            tokio::spawn(heartbeat_task(inner.clone())),
        ];
        Ok(RedisBus {
            inner,
            tasks: Mutex::new(tasks),
        })
    }
}

impl Inner {
    fn link(&self) -> std::sync::MutexGuard<'_, Link> {
        // Plain data: a panic elsewhere cannot leave it inconsistent in a harmful way.
        self.link.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn instance(&self) -> &str {
        self.keys.instance()
    }

    fn remote(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<RoomId, HashMap<String, ParticipantInfo>>> {
        self.remote.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands an event to the hub, keeping the record of remote members the hub was told about.
    fn deliver(&self, event: RemoteEvent) {
        match &event {
            RemoteEvent::Joined {
                room_id,
                participant,
            } if participant.instance_id != self.instance()
                && self.local().rooms.contains_key(room_id) =>
            {
                // Only rooms with local participants: the hub ignores the others, and a
                // stale subscription must not grow this record.
                self.remote()
                    .entry(room_id.clone())
                    .or_default()
                    .insert(participant.participant_id.clone(), participant.clone());
            }
            RemoteEvent::Left {
                room_id,
                participant,
                ..
            } => {
                let mut remote = self.remote();
                if let Some(members) = remote.get_mut(room_id) {
                    members.remove(&participant.participant_id);
                }
            }
            _ => {}
        }
        self.hub.deliver(event);
    }

    /// Runs one Redis operation with the command timeout and records whether Redis works.
    async fn redis<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = RedisResult<T>>,
    ) -> Result<T, BusError> {
        let result = match tokio::time::timeout(self.timing.command_timeout, fut).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(format!("{op}: {}", describe(&e))),
            Err(_) => Err(format!("{op}: timed out")),
        };
        match result {
            Ok(value) => {
                let (recovered, after_failure) = {
                    let mut link = self.link();
                    let recovered = !std::mem::replace(&mut link.commands_ok, true);
                    if recovered {
                        link.commands_ok_since = Some(Instant::now());
                    }
                    (recovered, link.last_failure.is_some())
                };
                if recovered {
                    // Whatever happened while we could not reach Redis, make presence whole.
                    self.local().needs_sync = true;
                    if after_failure {
                        // Events published while we were cut off may be lost.
                        self.reconcile_pending.store(true, Ordering::Relaxed);
                        metrics::reconnected("commands");
                        tracing::info!(instance = %self.instance(), "redis commands work again");
                    } else {
                        tracing::info!(instance = %self.instance(), "redis commands connected");
                    }
                }
                Ok(value)
            }
            Err(message) => {
                let was_ok = {
                    let mut link = self.link();
                    // Readiness needs a canary that made the full trip after this failure.
                    link.last_failure = Some(Instant::now());
                    std::mem::replace(&mut link.commands_ok, false)
                };
                self.local().needs_sync = true;
                if was_ok {
                    tracing::warn!(instance = %self.instance(), error = %message, "redis unreachable");
                }
                Err(BusError::Unavailable(message))
            }
        }
    }

    async fn publish_event(&self, room: &RoomId, event: &RemoteEvent) -> Result<(), BusError> {
        let payload = wire::encode(self.instance(), event);
        let channel = self.keys.room_channel(room);
        let mut conn = self.conn.clone();
        let started = Instant::now();
        self.redis("publish", async move {
            conn.publish::<_, _, i64>(channel, payload).await
        })
        .await?;
        metrics::publish_latency(started.elapsed());
        Ok(())
    }

    /// Counts one more local participant in `room`; the first one registers the room for
    /// crash cleanup and subscribes its channel, before any presence exists there.
    async fn acquire_room(&self, room: &RoomId) -> Result<(), BusError> {
        let mut subs = self.subs.lock().await;
        let count = subs.refs.get(room).copied().unwrap_or(0);
        if count == 0 {
            let mut conn = self.conn.clone();
            let rooms_key = self.keys.instance_rooms(self.instance());
            let room_str = room.as_str().to_owned();
            self.redis("register room", async move {
                conn.sadd::<_, _, i64>(rooms_key, room_str).await
            })
            .await?;
            let Some(sink) = subs.sink.as_mut() else {
                return Err(BusError::Unavailable(
                    "redis subscriber reconnecting".into(),
                ));
            };
            let channel = self.keys.room_channel(room);
            match tokio::time::timeout(self.timing.command_timeout, sink.subscribe(channel)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    self.repair.notify_one();
                    return Err(BusError::Unavailable(format!(
                        "subscribe: {}",
                        describe(&e)
                    )));
                }
                Err(_) => {
                    self.repair.notify_one();
                    return Err(BusError::Unavailable("subscribe: timed out".into()));
                }
            }
        }
        subs.refs.insert(room.clone(), count + 1);
        Ok(())
    }

    /// Undoes one [`acquire_room`](Self::acquire_room); the last one unsubscribes.
    async fn release_room(&self, room: &RoomId) {
        let mut subs = self.subs.lock().await;
        let count = subs.refs.get(room).copied().unwrap_or(0);
        if count > 1 {
            subs.refs.insert(room.clone(), count - 1);
            return;
        }
        subs.refs.remove(room);
        self.remote().remove(room);
        if let Some(sink) = subs.sink.as_mut() {
            let channel = self.keys.room_channel(room);
            // A failure leaves a stale subscription whose messages find no local recipient;
            // the next reconnect drops it.
            let _ =
                tokio::time::timeout(self.timing.command_timeout, sink.unsubscribe(channel)).await;
        }
        let mut conn = self.conn.clone();
        let rooms_key = self.keys.instance_rooms(self.instance());
        let room_str = room.as_str().to_owned();
        let removed = self
            .redis("unregister room", async move {
                conn.srem::<_, _, i64>(rooms_key, room_str).await
            })
            .await;
        if removed.is_err() {
            self.local().dirty.insert(room.clone());
        }
    }

    /// Handles one message from the subscriber connection, in receive order.
    fn on_message(&self, channel: &str, payload: &[u8]) {
        if channel == self.keys.canary_channel() {
            self.link().last_canary = Some(Instant::now());
            return;
        }
        let envelope = match wire::decode(payload) {
            Ok(envelope) => envelope,
            Err(e) => {
                tracing::warn!(channel, error = %e, "dropping malformed bus message");
                return;
            }
        };
        // Local recipients were served directly by the sender's instance.
        if envelope.origin == self.instance() {
            return;
        }
        if let RemoteEvent::Left {
            room_id,
            participant,
            reason: LeaveReason::InstanceLost,
        } = &envelope.event
        {
            if participant.instance_id == self.instance() {
                // Another instance believed us dead (our heartbeat lapsed, e.g. a stall or a
                // slow restart with the same id) and removed every record carrying our id.
                let live = {
                    let mut local = self.local();
                    local.needs_sync = true;
                    is_live_local(&local, room_id, &participant.participant_id)
                };
                if live {
                    // Alive here: the resync puts it back and re-announces it.
                    tracing::warn!(instance = %self.instance(), "our presence was cleaned up by another instance; re-registering");
                    return;
                }
                // A record of an earlier incarnation of this instance: that participant really
                // is gone, and our local participants may have it in their room-state. (A
                // participant whose join is still under way is not in `local` yet; the hub
                // ignores a leave of a local participant, and the resync re-registers it.)
                tracing::info!(instance = %self.instance(), "a past incarnation's participant was cleaned up by another instance");
            }
        }
        self.deliver(envelope.event);
    }

    /// Makes Redis hold exactly this instance's live presence (after a Redis restart, an
    /// outage or a lapsed heartbeat). Announces leaves that could not be announced, and
    /// re-announces joins if another instance had declared us lost.
    async fn resync(&self) -> Result<(), BusError> {
        let _gate = self.gate.write().await;
        let (snapshot, dirty) = {
            let mut local = self.local();
            local.needs_sync = false;
            (local.rooms.clone(), std::mem::take(&mut local.dirty))
        };
        let result = self.resync_rooms(&snapshot, &dirty).await;
        if result.is_err() {
            let mut local = self.local();
            local.needs_sync = true;
            local.dirty.extend(dirty);
        }
        result
    }

    async fn resync_rooms(
        &self,
        snapshot: &HashMap<RoomId, HashMap<String, ParticipantInfo>>,
        dirty: &HashSet<RoomId>,
    ) -> Result<(), BusError> {
        let me = self.instance().to_owned();
        let mut conn = self.conn.clone();
        let lost_key = self.keys.instance_lost(&me);
        let was_lost: Option<String> = self
            .redis(
                "read tombstone",
                async move { conn.get_del(lost_key).await },
            )
            .await?;
        let rooms_key = self.keys.instance_rooms(&me);
        let mut conn = self.conn.clone();
        let key = rooms_key.clone();
        let registered: Vec<String> = self
            .redis("read rooms", async move { conn.smembers(key).await })
            .await?;
        let mut rooms: HashSet<RoomId> = snapshot.keys().cloned().collect();
        rooms.extend(dirty.iter().cloned());
        rooms.extend(registered.iter().filter_map(|r| RoomId::parse(r).ok()));

        // Rooms first, so a crash during the resync still gets cleaned up.
        if !snapshot.is_empty() {
            let mut conn = self.conn.clone();
            let key = rooms_key.clone();
            let live: Vec<String> = snapshot.keys().map(|r| r.as_str().to_owned()).collect();
            self.redis("register rooms", async move {
                conn.sadd::<_, _, i64>(key, live).await
            })
            .await?;
        }
        let mut added_total = 0usize;
        let mut removed_total = 0usize;
        for room in &rooms {
            let mut invocation = self.sync_script.key(self.keys.room_participants(room));
            invocation.arg(&me);
            if let Some(members) = snapshot.get(room) {
                for (id, info) in members {
                    invocation
                        .arg(id)
                        .arg(serde_json::to_string(info).unwrap_or_default());
                }
            }
            let mut conn = self.conn.clone();
            let (added, removed): (Vec<String>, Vec<String>) = self
                .redis("sync presence", async move {
                    invocation.invoke_async(&mut conn).await
                })
                .await?;
            added_total += added.len();
            removed_total += removed.len();
            for info in removed
                .iter()
                .filter_map(|j| serde_json::from_str::<ParticipantInfo>(j).ok())
            {
                let pending = self.local().pending_left.remove(&info.participant_id);
                let event = RemoteEvent::Left {
                    room_id: room.clone(),
                    participant: info,
                    // No recorded leave: a record of an earlier incarnation of this instance
                    // (restarted with the same id before anyone cleaned up after it).
                    reason: pending.unwrap_or(LeaveReason::InstanceLost),
                };
                // Local participants heard about a leave of their own instance already; a
                // past incarnation's participant is news to them too (our echo is dropped).
                if pending.is_none() && snapshot.contains_key(room) {
                    self.deliver(event.clone());
                }
                self.publish_event(room, &event).await?;
            }
            // Re-added records are news to whoever joined since Redis lost them (their
            // room-state came from Redis without them) and to instances told we were lost;
            // the others already know these members and ignore the repeat.
            for info in added
                .iter()
                .filter_map(|j| serde_json::from_str::<ParticipantInfo>(j).ok())
            {
                let event = RemoteEvent::Joined {
                    room_id: room.clone(),
                    participant: info,
                };
                self.publish_event(room, &event).await?;
            }
            if !snapshot.contains_key(room) {
                let mut conn = self.conn.clone();
                let key = rooms_key.clone();
                let room_str = room.as_str().to_owned();
                self.redis("unregister room", async move {
                    conn.srem::<_, _, i64>(key, room_str).await
                })
                .await?;
            }
        }
        self.local().pending_left.clear();
        if added_total > 0 || removed_total > 0 || was_lost.is_some() {
            tracing::info!(
                instance = %me,
                rooms = rooms.len(),
                re_registered = added_total,
                removed = removed_total,
                was_declared_lost = was_lost.is_some(),
                "presence re-synchronized with redis"
            );
        }
        Ok(())
    }

    /// Compares what the hub was told about other instances' members of each subscribed room
    /// with Redis presence and delivers the joins and leaves it missed (a subscriber gap loses
    /// the events published meanwhile for good). Runs on the subscriber task between two
    /// messages: an event published after a room's HVALS is handled after its differences, so
    /// the two cannot cross (a leave read before a stale made-up join would leave a ghost).
    async fn reconcile_remote(&self) -> Result<(), BusError> {
        let rooms: Vec<RoomId> = self.subs.lock().await.refs.keys().cloned().collect();
        let me = self.instance().to_owned();
        let mut joined_total = 0usize;
        let mut left_total = 0usize;
        for room in rooms {
            let mut conn = self.conn.clone();
            let key = self.keys.room_participants(&room);
            let values: Vec<String> = self
                .redis("reconcile presence", async move { conn.hvals(key).await })
                .await?;
            let present: HashMap<String, ParticipantInfo> = parse_infos(&values)
                .into_iter()
                .filter(|p| p.instance_id != me)
                .map(|p| (p.participant_id.clone(), p))
                .collect();
            let known = self.remote().get(&room).cloned().unwrap_or_default();
            let (joined, gone) = remote_differences(&known, &present);
            for participant in gone {
                let mut conn = self.conn.clone();
                let alive_key = self.keys.instance_alive(&participant.instance_id);
                let alive: bool = self
                    .redis(
                        "check heartbeat",
                        async move { conn.exists(alive_key).await },
                    )
                    .await?;
                // A missed leave of a live instance was a plain leave; a dead instance's
                // participants are what an instance_lost cleanup would have announced.
                let reason = if alive {
                    LeaveReason::Closed
                } else {
                    LeaveReason::InstanceLost
                };
                left_total += 1;
                self.deliver(RemoteEvent::Left {
                    room_id: room.clone(),
                    participant,
                    reason,
                });
            }
            joined_total += joined.len();
            // Every member in Redis, not only those missing from our record: the hub ignores
            // members it knows, and one whose join event it dropped (it arrived before the
            // hub registered the room's first local participant) is added too.
            for participant in sorted(present.into_values().collect()) {
                self.deliver(RemoteEvent::Joined {
                    room_id: room.clone(),
                    participant,
                });
            }
        }
        if joined_total > 0 || left_total > 0 {
            tracing::info!(
                instance = %me,
                joined = joined_total,
                left = left_total,
                "remote members reconciled with redis presence"
            );
        }
        Ok(())
    }

    /// Renews the heartbeat; a missing previous value means Redis lost our presence.
    async fn heartbeat(&self) -> Result<(), BusError> {
        let me = self.instance().to_owned();
        let alive_key = self.keys.instance_alive(&me);
        let ttl_ms = u64::try_from(self.timing.ttl.as_millis()).unwrap_or(u64::MAX);
        let mut conn = self.conn.clone();
        let previous: Option<String> = self
            .redis("heartbeat", async move {
                redis::cmd("SET")
                    .arg(alive_key)
                    .arg(chrono::Utc::now().timestamp_millis())
                    .arg("PX")
                    .arg(ttl_ms)
                    .arg("GET")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let mut conn = self.conn.clone();
        let instances_key = self.keys.instances();
        let member = me.clone();
        self.redis("register instance", async move {
            conn.sadd::<_, _, i64>(instances_key, member).await
        })
        .await?;
        if previous.is_none() {
            self.local().needs_sync = true;
        }
        Ok(())
    }

    /// Finds instances whose heartbeat expired and cleans up after them (one cleaner each).
    async fn sweep(&self) -> Result<(), BusError> {
        let me = self.instance().to_owned();
        let mut conn = self.conn.clone();
        let instances_key = self.keys.instances();
        let instances: Vec<String> = self
            .redis("list instances", async move {
                conn.smembers(instances_key).await
            })
            .await?;
        for other in instances.into_iter().filter(|i| *i != me) {
            let mut conn = self.conn.clone();
            let alive_key = self.keys.instance_alive(&other);
            let alive: bool = self
                .redis(
                    "check heartbeat",
                    async move { conn.exists(alive_key).await },
                )
                .await?;
            if alive {
                continue;
            }
            let mut conn = self.conn.clone();
            let lock_key = self.keys.instance_cleanup_lock(&other);
            let ttl_ms = u64::try_from(self.timing.ttl.as_millis()).unwrap_or(u64::MAX);
            let holder = me.clone();
            // The lock outlives a crashed cleaner by one TTL, then someone else retries.
            let won: Option<String> = self
                .redis("cleanup lock", async move {
                    redis::cmd("SET")
                        .arg(lock_key)
                        .arg(holder)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl_ms)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            if won.is_some() {
                self.clean_up_instance(&other).await?;
            }
        }
        Ok(())
    }

    /// Removes a dead instance's participants from every room it had and announces
    /// `user-left` (reason `instance_lost`) to local participants and other instances.
    async fn clean_up_instance(&self, dead: &str) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        let rooms_key = self.keys.instance_rooms(dead);
        let key = rooms_key.clone();
        let rooms: Vec<String> = self
            .redis(
                "dead instance rooms",
                async move { conn.smembers(key).await },
            )
            .await?;
        let mut removed_total = 0usize;
        for room in rooms.iter().filter_map(|r| RoomId::parse(r).ok()) {
            let mut invocation = self
                .remove_instance_script
                .key(self.keys.room_participants(&room));
            invocation.arg(dead);
            let mut conn = self.conn.clone();
            let removed: Vec<String> = self
                .redis("remove instance", async move {
                    invocation.invoke_async(&mut conn).await
                })
                .await?;
            for info in removed
                .iter()
                .filter_map(|j| serde_json::from_str::<ParticipantInfo>(j).ok())
            {
                removed_total += 1;
                let event = RemoteEvent::Left {
                    room_id: room.clone(),
                    participant: info,
                    reason: LeaveReason::InstanceLost,
                };
                // Our own echo is ignored, so serve local participants directly.
                if self.local().rooms.contains_key(&room) {
                    self.deliver(event.clone());
                }
                self.publish_event(&room, &event).await?;
            }
        }
        let mut conn = self.conn.clone();
        let lost_key = self.keys.instance_lost(dead);
        let instances_key = self.keys.instances();
        let dead_owned = dead.to_owned();
        self.redis("forget instance", async move {
            redis::pipe()
                .set_ex(lost_key, "1", LOST_TOMBSTONE_SECS)
                .ignore()
                .del(rooms_key)
                .ignore()
                .srem(instances_key, dead_owned)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
        })
        .await?;
        metrics::presence_cleanup(removed_total);
        tracing::warn!(
            instance = %self.instance(),
            dead_instance = %dead,
            rooms = rooms.len(),
            participants = removed_total,
            "removed the presence of a dead instance"
        );
        Ok(())
    }
}

/// Keeps one subscriber connection alive, subscribed to the canary and every local room.
async fn subscriber_task(inner: Arc<Inner>) {
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        let connected = tokio::time::timeout(
            inner.timing.command_timeout,
            inner.client.get_async_pubsub(),
        )
        .await;
        let pubsub = match connected {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(e)) => {
                tracing::debug!(error = %describe(&e), "redis subscriber connect failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        {
            let mut subs = inner.subs.lock().await;
            let mut channels = vec![inner.keys.canary_channel()];
            channels.extend(subs.refs.keys().map(|r| inner.keys.room_channel(r)));
            let subscribed =
                tokio::time::timeout(inner.timing.command_timeout, sink.subscribe(channels)).await;
            if !matches!(subscribed, Ok(Ok(()))) {
                drop(subs);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
            subs.sink = Some(sink);
            inner.link().subscribed_since = Some(Instant::now());
        }
        backoff = Duration::from_millis(100);
        if first {
            first = false;
            tracing::info!(instance = %inner.instance(), "redis subscriber connected");
        } else {
            // Messages published while we were away are gone (at-most-once); presence is
            // re-checked so the room lists converge.
            inner.local().needs_sync = true;
            inner.reconcile_pending.store(true, Ordering::Relaxed);
            metrics::reconnected("subscriber");
            tracing::info!(instance = %inner.instance(), "redis subscriber reconnected and resubscribed");
        }
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(message) => {
                        let channel = message.get_channel_name().to_owned();
                        inner.on_message(&channel, message.get_payload_bytes());
                    }
                    None => {
                        tracing::warn!(instance = %inner.instance(), "redis subscriber connection lost");
                        break;
                    }
                },
                () = inner.repair.notified() => {
                    tracing::warn!(instance = %inner.instance(), "replacing the redis subscriber connection");
                    break;
                }
                () = inner.reconcile.notified() => {
                    if inner.reconcile_pending.swap(false, Ordering::Relaxed) {
                        if let Err(e) = inner.reconcile_remote().await {
                            tracing::debug!(error = %e, "remote member reconciliation failed; retrying");
                            inner.reconcile_pending.store(true, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        inner.subs.lock().await.sink = None;
        inner.link().subscribed_since = None;
    }
}

/// Publishes the readiness canary and replaces a subscriber that stopped delivering it.
async fn canary_task(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(inner.timing.canary);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let nonce = inner.canary_nonce.fetch_add(1, Ordering::Relaxed);
        let mut conn = inner.conn.clone();
        let channel = inner.keys.canary_channel();
        let _ = inner
            .redis("canary", async move {
                conn.publish::<_, _, i64>(channel, nonce).await
            })
            .await;
        let wedged = subscriber_wedged(&inner.link(), Instant::now(), &inner.timing);
        if wedged {
            tracing::warn!(instance = %inner.instance(), "readiness canary did not come back");
            inner.repair.notify_one();
        }
    }
}

/// Heartbeat, resync and dead-instance sweep.
async fn heartbeat_task(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(inner.timing.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if inner.heartbeat().await.is_err() {
            continue;
        }
        let needs_sync = inner.local().needs_sync;
        if needs_sync {
            if let Err(e) = inner.resync().await {
                tracing::debug!(error = %e, "presence resync failed; retrying");
                continue;
            }
        }
        let settled = may_sweep(&inner.link(), Instant::now(), &inner.timing);
        if !settled {
            continue;
        }
        // Only once every live instance had a full TTL to re-register after an outage: a
        // member missing from Redis before that may merely not be back yet.
        if inner.reconcile_pending.load(Ordering::Relaxed) {
            inner.reconcile.notify_one();
        }
        if let Err(e) = inner.sweep().await {
            tracing::debug!(error = %e, "dead-instance sweep failed; retrying");
        }
    }
}

/// (members in Redis the hub was not told about, members the hub was told about that are no
/// longer in Redis), each in a stable order.
fn remote_differences(
    known: &HashMap<String, ParticipantInfo>,
    present: &HashMap<String, ParticipantInfo>,
) -> (Vec<ParticipantInfo>, Vec<ParticipantInfo>) {
    let joined = present
        .iter()
        .filter(|(id, _)| !known.contains_key(*id))
        .map(|(_, p)| p.clone())
        .collect();
    let gone = known
        .iter()
        .filter(|(id, _)| !present.contains_key(*id))
        .map(|(_, p)| p.clone())
        .collect();
    (sorted(joined), sorted(gone))
}

/// Whether `participant_id` is one of this instance's live local participants in `room`.
fn is_live_local(local: &Local, room: &RoomId, participant_id: &str) -> bool {
    local
        .rooms
        .get(room)
        .is_some_and(|members| members.contains_key(participant_id))
}

/// The instance may forget its rooms set and instance entry at shutdown: nothing it registered
/// can still be in Redis (every participant left, every failed write was reconciled).
fn may_deregister(local: &Local) -> bool {
    local.rooms.values().all(HashMap::is_empty)
        && local.dirty.is_empty()
        && local.pending_left.is_empty()
}

fn sorted(mut participants: Vec<ParticipantInfo>) -> Vec<ParticipantInfo> {
    crate::room::sort_by_join(&mut participants);
    participants
}

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
        capacity: usize,
    ) -> Result<JoinOutcome, BusError> {
        let inner = &self.inner;
        let gate = inner.gate.read().await;
        inner.acquire_room(room).await?;
        let info = serde_json::to_string(participant).unwrap_or_default();
        let mut invocation = inner.join_script.key(inner.keys.room_participants(room));
        invocation
            .arg(&participant.participant_id)
            .arg(info)
            .arg(capacity);
        let mut conn = inner.conn.clone();
        let reply: Result<Vec<String>, BusError> = inner
            .redis(
                "join",
                async move { invocation.invoke_async(&mut conn).await },
            )
            .await;
        let values = match reply {
            Ok(values) => values,
            Err(e) => {
                // The script may have run before the reply was lost: a resync removes the
                // record and announces it as a plain leave.
                {
                    let mut local = inner.local();
                    local.dirty.insert(room.clone());
                    local
                        .pending_left
                        .insert(participant.participant_id.clone(), LeaveReason::Closed);
                }
                inner.release_room(room).await;
                return Err(e);
            }
        };
        if values.first().map(String::as_str) != Some("1") {
            inner.release_room(room).await;
            return Ok(JoinOutcome::RoomFull);
        }
        inner
            .local()
            .rooms
            .entry(room.clone())
            .or_default()
            .insert(participant.participant_id.clone(), participant.clone());
        let event = RemoteEvent::Joined {
            room_id: room.clone(),
            participant: participant.clone(),
        };
        if let Err(e) = inner.publish_event(room, &event).await {
            // Registered but not announced: undo (a resync finishes it if Redis is gone).
            drop(gate);
            let _ = self.leave(room, participant, LeaveReason::Closed).await;
            return Err(e);
        }
        let participants = sorted(parse_infos(&values[1..]));
        {
            // The hub records exactly these other instances' members from the join result.
            let mut remote = inner.remote();
            let members = remote.entry(room.clone()).or_default();
            for p in participants
                .iter()
                .filter(|p| p.instance_id != inner.instance())
            {
                members
                    .entry(p.participant_id.clone())
                    .or_insert_with(|| p.clone());
            }
        }
        Ok(JoinOutcome::Joined { participants })
    }

    async fn leave(
        &self,
        room: &RoomId,
        participant: &ParticipantInfo,
        reason: LeaveReason,
    ) -> Result<(), BusError> {
        let inner = &self.inner;
        let _gate = inner.gate.read().await;
        let was_local = {
            let mut local = inner.local();
            let removed = local
                .rooms
                .get_mut(room)
                .and_then(|m| m.remove(&participant.participant_id))
                .is_some();
            if local.rooms.get(room).is_some_and(HashMap::is_empty) {
                local.rooms.remove(room);
            }
            removed
        };
        let mut conn = inner.conn.clone();
        let key = inner.keys.room_participants(room);
        let id = participant.participant_id.clone();
        let result = async {
            inner
                .redis(
                    "leave",
                    async move { conn.hdel::<_, _, i64>(key, id).await },
                )
                .await?;
            let event = RemoteEvent::Left {
                room_id: room.clone(),
                participant: participant.clone(),
                reason,
            };
            inner.publish_event(room, &event).await
        }
        .await;
        if result.is_err() {
            // Announced later by the resync that removes the stale record.
            let mut local = inner.local();
            local.dirty.insert(room.clone());
            local
                .pending_left
                .insert(participant.participant_id.clone(), reason);
        }
        if was_local {
            inner.release_room(room).await;
        }
        result
    }

    async fn publish(&self, message: RelayMessage) -> Result<(), BusError> {
        let room = message.room_id.clone();
        self.inner
            .publish_event(&room, &RemoteEvent::Relay(message))
            .await
    }

    async fn participants(&self, room: &RoomId) -> Result<Vec<ParticipantInfo>, BusError> {
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        let key = inner.keys.room_participants(room);
        let values: Vec<String> = inner
            .redis("participants", async move { conn.hvals(key).await })
            .await?;
        Ok(sorted(parse_infos(&values)))
    }

    fn is_ready(&self) -> bool {
        ready_at(&self.inner.link(), Instant::now(), &self.inner.timing)
    }

    fn health(&self) -> BusHealth {
        let link = self.inner.link().clone();
        let now = Instant::now();
        let ready = ready_at(&link, now, &self.inner.timing);
        let detail = if !link.commands_ok {
            "redis unreachable".to_owned()
        } else if link.subscribed_since.is_none() {
            "redis subscriber reconnecting".to_owned()
        } else {
            match link.last_canary {
                None => "waiting for the first canary".to_owned(),
                Some(t) if !ready => format!(
                    "canary late ({} ms since the last one)",
                    now.saturating_duration_since(t).as_millis()
                ),
                Some(_) => "ok".to_owned(),
            }
        };
        BusHealth {
            kind: "redis",
            ready,
            detail,
        }
    }

    async fn shutdown(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            task.abort();
        }
        let inner = &self.inner;
        let me = inner.instance().to_owned();
        let mut conn = inner.conn.clone();
        let alive = inner.keys.instance_alive(&me);
        let rooms = inner.keys.instance_rooms(&me);
        let instances = inner.keys.instances();
        if !may_deregister(&inner.local()) {
            // A drain that timed out or a leave that failed left records behind. Without the
            // rooms set and the instance entry no sweeper would ever find them (ghost seats):
            // end the heartbeat instead, so a live instance removes them as instance_lost.
            tracing::warn!(instance = %me, "participants still registered at shutdown; leaving their cleanup to another instance");
            let _ = inner
                .redis(
                    "end heartbeat",
                    async move { conn.del::<_, i64>(alive).await },
                )
                .await;
            return;
        }
        // Participants left one by one already; forget the instance itself.
        let _ = inner
            .redis("deregister instance", async move {
                redis::pipe()
                    .del(alive)
                    .ignore()
                    .del(rooms)
                    .ignore()
                    .srem(instances, me)
                    .ignore()
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await;
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
    fn timing_scales_with_the_ttl() {
        let t = Timing::from_ttl(Duration::from_secs(30));
        assert_eq!(t.heartbeat, Duration::from_secs(10));
        assert_eq!(t.canary, Duration::from_secs(5));
        assert_eq!(t.canary_deadline, Duration::from_secs(11));
        let t = Timing::from_ttl(Duration::from_secs(3));
        assert_eq!(t.heartbeat, Duration::from_secs(1));
        assert_eq!(t.canary, Duration::from_millis(500));
        assert_eq!(t.canary_deadline, Duration::from_secs(2));
        let t = Timing::from_ttl(Duration::from_millis(10));
        assert_eq!(t.ttl, Duration::from_secs(1));
        assert_eq!(t.heartbeat, Duration::from_secs(1) / 3);
        assert_eq!(t.canary, Duration::from_millis(250));
    }

    #[test]
    fn ready_only_while_commands_subscriber_and_canary_work() {
        let timing = Timing::from_ttl(Duration::from_secs(3));
        let t0 = Instant::now();
        let healthy = Link {
            commands_ok: true,
            subscribed_since: Some(t0),
            last_canary: Some(t0),
            last_failure: None,
            commands_ok_since: Some(t0),
        };
        assert!(ready_at(&healthy, t0 + Duration::from_secs(1), &timing));
        assert!(!ready_at(&healthy, t0 + Duration::from_secs(3), &timing));
        let no_canary_yet = Link {
            last_canary: None,
            ..healthy.clone()
        };
        assert!(!ready_at(&no_canary_yet, t0, &timing));
        let down = Link {
            commands_ok: false,
            ..healthy.clone()
        };
        assert!(!ready_at(&down, t0, &timing));
        let unsubscribed = Link {
            subscribed_since: None,
            ..healthy.clone()
        };
        assert!(!ready_at(&unsubscribed, t0, &timing));
        // A canary that came back over the previous subscriber connection proves nothing.
        let resubscribed = Link {
            subscribed_since: Some(t0 + Duration::from_millis(10)),
            ..healthy.clone()
        };
        assert!(!ready_at(
            &resubscribed,
            t0 + Duration::from_millis(20),
            &timing
        ));
        // Nor does one from before a command failure, once commands work again.
        let failed_since = Link {
            last_failure: Some(t0 + Duration::from_millis(10)),
            ..healthy.clone()
        };
        assert!(!ready_at(
            &failed_since,
            t0 + Duration::from_millis(20),
            &timing
        ));
        let canary_after_failure = Link {
            last_canary: Some(t0 + Duration::from_millis(30)),
            ..failed_since
        };
        assert!(ready_at(
            &canary_after_failure,
            t0 + Duration::from_millis(40),
            &timing
        ));
    }

    #[test]
    fn wedged_means_subscribed_but_no_canary_within_the_deadline() {
        let timing = Timing::from_ttl(Duration::from_secs(3));
        let t0 = Instant::now();
        let fresh = Link {
            commands_ok: true,
            subscribed_since: Some(t0),
            last_canary: None,
            last_failure: None,
            commands_ok_since: Some(t0),
        };
        assert!(!subscriber_wedged(
            &fresh,
            t0 + Duration::from_secs(1),
            &timing
        ));
        assert!(subscriber_wedged(
            &fresh,
            t0 + Duration::from_secs(3),
            &timing
        ));
        // A canary from before the current connection does not count as recent.
        let reconnected = Link {
            last_canary: Some(t0),
            subscribed_since: Some(t0 + Duration::from_secs(10)),
            ..fresh.clone()
        };
        assert!(!subscriber_wedged(
            &reconnected,
            t0 + Duration::from_secs(11),
            &timing
        ));
        // A command failure restarts the clock: the canary gets a full deadline to come back
        // before a long-connected, healthy subscriber is declared wedged.
        let recovered = Link {
            last_canary: Some(t0),
            last_failure: Some(t0 + Duration::from_secs(60)),
            ..fresh.clone()
        };
        assert!(!subscriber_wedged(
            &recovered,
            t0 + Duration::from_secs(61),
            &timing
        ));
        assert!(subscriber_wedged(
            &recovered,
            t0 + Duration::from_secs(63),
            &timing
        ));
        // Redis down: not the subscriber's fault, reconnecting it would not help.
        let down = Link {
            commands_ok: false,
            ..fresh
        };
        assert!(!subscriber_wedged(
            &down,
            t0 + Duration::from_secs(30),
            &timing
        ));
    }

    #[test]
    fn dead_instances_are_judged_only_after_a_full_ttl_of_working_commands() {
        let timing = Timing::from_ttl(Duration::from_secs(3));
        let t0 = Instant::now();
        let link = Link {
            commands_ok: true,
            commands_ok_since: Some(t0),
            ..Link::default()
        };
        assert!(!may_sweep(&link, t0 + Duration::from_secs(2), &timing));
        assert!(may_sweep(&link, t0 + Duration::from_secs(3), &timing));
        let down = Link {
            commands_ok: false,
            ..link
        };
        assert!(!may_sweep(&down, t0 + Duration::from_secs(30), &timing));
        assert!(!may_sweep(&Link::default(), t0, &timing));
    }

    #[test]
    fn only_live_local_participants_count_as_ours_when_we_are_declared_lost() {
        let room = RoomId::parse("r").unwrap();
        let info = ParticipantInfo {
            participant_id: "new".into(),
            user_id: "u".into(),
            username: "u".into(),
            joined_at: "2026-01-01T00:00:00.000Z".into(),
            instance_id: "a".into(),
        };
        let mut local = Local::default();
        assert!(!is_live_local(&local, &room, "new"));
        local
            .rooms
            .entry(room.clone())
            .or_default()
            .insert("new".into(), info);
        assert!(is_live_local(&local, &room, "new"));
        // A participant of an earlier incarnation with the same instance id is not live here.
        assert!(!is_live_local(&local, &room, "old"));
        assert!(!is_live_local(
            &local,
            &RoomId::parse("other").unwrap(),
            "new"
        ));
    }

    #[test]
    fn reconciliation_finds_missed_joins_and_leaves() {
        let p = |id: &str| ParticipantInfo {
            participant_id: id.into(),
            user_id: id.into(),
            username: id.into(),
            joined_at: format!("2026-01-01T00:00:0{}.000Z", id.len()),
            instance_id: "other".into(),
        };
        let map = |ids: &[&str]| -> HashMap<String, ParticipantInfo> {
            ids.iter().map(|id| (id.to_string(), p(id))).collect()
        };
        let (joined, gone) = remote_differences(&map(&["a", "ghost"]), &map(&["a", "bb"]));
        let ids = |v: &[ParticipantInfo]| {
            v.iter()
                .map(|p| p.participant_id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&joined), ["bb"]);
        assert_eq!(ids(&gone), ["ghost"]);
        let (joined, gone) = remote_differences(&map(&["a"]), &map(&["a"]));
        assert!(joined.is_empty() && gone.is_empty());
    }

    #[test]
    fn shutdown_deregisters_only_without_registered_presence() {
        let room = RoomId::parse("r").unwrap();
        let mut local = Local::default();
        assert!(may_deregister(&local));
        local.rooms.entry(room.clone()).or_default();
        assert!(may_deregister(&local), "an emptied room holds nothing");
        local.rooms.get_mut(&room).unwrap().insert(
            "p".into(),
            ParticipantInfo {
                participant_id: "p".into(),
                user_id: "u".into(),
                username: "u".into(),
                joined_at: "2026-01-01T00:00:00.000Z".into(),
                instance_id: "a".into(),
            },
        );
        assert!(!may_deregister(&local), "a session still open");
        let mut failed_leave = Local::default();
        failed_leave.dirty.insert(room);
        failed_leave
            .pending_left
            .insert("p".into(), LeaveReason::Closed);
        assert!(!may_deregister(&failed_leave), "a leave Redis never saw");
    }

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
    fn participants_are_listed_in_join_order() {
        let p = |id: &str, at: &str| ParticipantInfo {
            participant_id: id.into(),
            user_id: id.into(),
            username: id.into(),
            joined_at: at.into(),
            instance_id: "i".into(),
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
