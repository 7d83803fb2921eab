//! The bus connects server instances: cluster-wide room presence (with an
//! atomic capacity check) and delivery of relayed messages and presence
//! events to participants held by *other* instances. It never touches
//! WebSockets; local delivery is the hub's job.
//!
//! # Contract (shared with `bus/redis.rs`)
//!
//! * The session layer calls [`Bus::join`] before a participant is
//!   registered in the local hub and [`Bus::leave`] after it is removed.
//!   Both also announce the presence change to *remote* instances
//!   (`user-joined` / `user-left`); the local hub announces it to local
//!   participants itself.
//! * A relayed message is first delivered by the hub to local recipients
//!   (no round trip), then handed to [`Bus::publish`] only if some recipient
//!   may live on another instance. A bus delivers it to remote instances,
//!   which call [`LocalHub::deliver`] with [`RemoteEvent::Relay`]. An instance
//!   must ignore its own publications (compare [`BusEnvelope::origin`] with
//!   its instance id) so nobody receives a message twice.
//! * Ordering: for one sender, `publish` calls are awaited one after the
//!   other; a bus must deliver them to each remote instance in call order
//!   (one publishing connection and one subscriber connection per instance
//!   give this with Redis pub/sub), and remote instances must call
//!   [`LocalHub::deliver`] in receive order from a single task.
//! * Remote events reach local participants through the [`LocalHub`] handed
//!   to [`from_config`]: `deliver` never blocks (it only pushes to bounded
//!   per-connection queues), so a subscriber task may call it inline.
//! * The hub is the one record of who is in a room on other instances: it
//!   learns them from [`JoinOutcome::Joined`] (handed to it at registration)
//!   and from [`RemoteEvent`]s, and a bus asks it through
//!   [`LocalHub::remote_members`] instead of keeping a second copy that could
//!   drift. After its store lost state (a Redis restart) a bus re-registers
//!   the live local participants (the Redis bus keeps its own record of what
//!   it registered: successful `join`s minus `leave`s, which the session layer
//!   guarantees to pair) and resubscribes their rooms by itself.
//! * Any failure to reach the backing store is a [`BusError`] (every variant
//!   but [`BusError::Config`], which only start-up reports); senders then get an `error` with code `bus_unavailable`, joins are
//!   refused with close 1013 `bus_unavailable`, and readiness is false while
//!   [`Bus::is_ready`] is false.
//!
//! Async methods use the `async-trait` crate so the bus can be used as
//! `Arc<dyn Bus>` (each call boxes one future; negligible next to a network
//! round trip).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::protocol::{Frame, RelayKind};
use crate::room::{LeaveReason, Metadata, ParticipantInfo, RoomId};

pub mod redis;

/// Errors a bus reports. At run time every variant maps to the
/// `bus_unavailable` error code (the operation certainly did not happen)
/// except [`BusError::DeliveryUnknown`] (it may have); [`BusError::Config`]
/// only stops start-up.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// Redis answered `op` with an error or the connection failed under it.
    #[error("bus unavailable: redis {op} failed")]
    Redis {
        op: &'static str,
        #[source]
        source: ::redis::RedisError,
    },
    /// Redis did not answer `op` within the command timeout.
    #[error("bus unavailable: redis {op} timed out")]
    Timeout { op: &'static str },
    /// Redis refused `op` because it reached `maxmemory` (policy `noeviction`): it answers,
    /// but accepts no writes.
    #[error("bus unavailable: redis out of memory, {op} refused")]
    OutOfMemory {
        op: &'static str,
        #[source]
        source: ::redis::RedisError,
    },
    /// `op` (a PUBLISH) was handed to the connection, but Redis did not confirm it: the reply
    /// timed out or the connection failed while it was in flight. Redis may have carried it.
    #[error("delivery unknown: redis {op} was sent but not confirmed")]
    DeliveryUnknown {
        op: &'static str,
        #[source]
        source: Option<::redis::RedisError>,
    },
    /// The subscriber connection is being replaced: nothing can be subscribed now.
    #[error("bus unavailable: redis subscriber reconnecting")]
    SubscriberDown,
    /// The bus settings cannot be used. The text never holds credentials: for
    /// a URL it names only scheme, host and port and the kind of error (the
    /// driver's own message may repeat the URL).
    #[error("invalid bus configuration: {0}")]
    Config(String),
}

impl BusError {
    /// Label for the `errors` metric and the client-facing error code.
    pub fn metric_label(&self) -> &'static str {
        match self {
            BusError::Config(_) => "bus_config",
            BusError::DeliveryUnknown { .. } => "delivery_unknown",
            _ => "bus_unavailable",
        }
    }
}

/// A room as presence records it, for the server API: who is in it and
/// since when it exists (its first participant's join; a room with nobody
/// in it does not exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRecord {
    pub room_id: RoomId,
    /// RFC 3339 UTC with milliseconds, recorded when the first participant
    /// joined the empty room.
    pub created_at: String,
    /// Cluster-wide, in join order.
    pub participants: Vec<ParticipantInfo>,
}

/// What [`Bus::join`] enforces, cluster-wide and in the same atomic step as the registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinLimits {
    /// Participants per room.
    pub capacity: usize,
    /// Participants per room with the new participant's `user_id`; `None` = no limit.
    pub per_user: Option<usize>,
}

impl JoinLimits {
    /// Why `members` (the room as it is) cannot take `newcomer`, if they cannot. The room's
    /// capacity is checked first.
    pub fn refusal(
        &self,
        members: &[ParticipantInfo],
        newcomer: &ParticipantInfo,
    ) -> Option<JoinOutcome> {
        if members.len() >= self.capacity {
            return Some(JoinOutcome::RoomFull);
        }
        let per_user = self.per_user?;
        let held = members
            .iter()
            .filter(|m| m.user_id == newcomer.user_id)
            .count();
        (held >= per_user).then_some(JoinOutcome::UserLimit)
    }
}

/// Result of [`Bus::join`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinOutcome {
    /// Registered. `participants` is the cluster-wide list *including* the
    /// new participant, in join order where the bus knows it.
    Joined { participants: Vec<ParticipantInfo> },
    /// The room already holds `capacity` participants; nothing was registered.
    RoomFull,
    /// The room already holds `per_user` participants of this user; nothing was registered.
    UserLimit,
}

/// A relay as the hub delivers it to local participants: [`RelayMessage`]'s fields,
/// borrowed, so a relay that stays on this instance copies no ids.
#[derive(Debug, Clone, Copy)]
pub struct RelayRef<'a> {
    pub room_id: &'a RoomId,
    pub kind: RelayKind,
    pub sender_id: &'a str,
    pub to: Option<&'a str>,
    pub sender_seq: Option<u64>,
    pub frame: &'a Frame,
}

impl RelayMessage {
    pub fn borrowed(&self) -> RelayRef<'_> {
        RelayRef {
            room_id: &self.room_id,
            kind: self.kind,
            sender_id: &self.sender_id,
            to: self.to.as_deref(),
            sender_seq: self.sender_seq,
            frame: &self.frame,
        }
    }
}

/// A relayed message as it crosses the bus: routing metadata plus the frame
/// serialized exactly once by the sending instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayMessage {
    pub room_id: RoomId,
    pub kind: RelayKind,
    /// The sender's participant id (never delivered back to the sender).
    pub sender_id: String,
    /// Target participant id, or `None` for "everyone but the sender".
    pub to: Option<String>,
    /// The client's `seq` for this message: recipients drop a re-send by (sender, seq).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_seq: Option<u64>,
    /// Set by a bus that numbers deliveries ([`Bus::numbers_deliveries`]): each recipient's
    /// delivery seq. Every instance, the sender's included, delivers it to its local
    /// recipients named here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seqs: Option<BTreeMap<String, u64>>,
    /// The complete server → client envelope.
    pub frame: Frame,
}

/// What the server API asks of every instance that holds participants of a room. The
/// instance answering the call applies it to its own participants through the hub
/// (`Hub::apply`) and hands it to [`Bus::act`] for the others, which apply it on receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum RoomAction {
    /// Close one participant: 4001 `removed`; the room sees `user-left` reason `removed`.
    Remove {
        room_id: RoomId,
        participant_id: String,
    },
    /// Close every participant: 4002 `room_closed`.
    Close { room_id: RoomId },
    /// Deliver a `server-message` frame to every participant, or to the one named in `to`.
    Message {
        room_id: RoomId,
        to: Option<String>,
        frame: Frame,
    },
    /// A participant's record changed (its metadata): replace it and tell the room
    /// `participant-updated`.
    Updated {
        room_id: RoomId,
        participant: ParticipantInfo,
    },
}

impl RoomAction {
    pub fn room_id(&self) -> &RoomId {
        match self {
            RoomAction::Remove { room_id, .. }
            | RoomAction::Close { room_id }
            | RoomAction::Message { room_id, .. }
            | RoomAction::Updated { room_id, .. } => room_id,
        }
    }
}

/// An event coming from another instance, for local participants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RemoteEvent {
    /// A relayed message to fan out to local recipients.
    Relay(RelayMessage),
    /// A participant joined on another instance.
    Joined {
        room_id: RoomId,
        participant: ParticipantInfo,
    },
    /// A participant left on another instance (or its instance was lost).
    Left {
        room_id: RoomId,
        participant: ParticipantInfo,
        reason: LeaveReason,
    },
    /// A server API action for the local participants of its room.
    Action(RoomAction),
}

impl RemoteEvent {
    pub fn room_id(&self) -> &RoomId {
        match self {
            RemoteEvent::Relay(m) => &m.room_id,
            RemoteEvent::Joined { room_id, .. } | RemoteEvent::Left { room_id, .. } => room_id,
            RemoteEvent::Action(action) => action.room_id(),
        }
    }
}

/// What a bus puts on the wire between instances: the event plus the
/// instance that published it, so the publisher can skip its own echo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusEnvelope {
    pub origin: String,
    pub event: RemoteEvent,
}

/// The local side a bus delivers into (implemented by [`crate::hub::Hub`]).
pub trait LocalHub: Send + Sync + 'static {
    /// Delivers an event from another instance to local participants of its
    /// room. Never blocks and never fails: recipients whose queues overflow
    /// are closed with `slow_consumer` by the hub. Events for rooms without
    /// local participants (or joins under way) are ignored.
    fn deliver(&self, event: RemoteEvent);

    /// A local participant's join is under way: from now until it registers
    /// (or [`join_failed`](Self::join_failed)), presence events of the room
    /// are recorded, although it has no local member yet. Called before the
    /// bus reads the room's members, so an announcement published after that
    /// read and before the registration is not lost.
    fn expect_join(&self, room: &RoomId, participant_id: &str);

    /// Ends an [`expect_join`](Self::expect_join) whose join did not happen.
    fn join_failed(&self, room: &RoomId, participant_id: &str);

    /// Whether the sender of a relay from another instance is a member of `room` that this
    /// hub knows on `instance` (a bus drops relays from anyone else).
    fn relay_sender(&self, room: &RoomId, participant_id: &str, instance: &str) -> RemoteSender;

    /// The members of `room` this hub knows on *other* instances (empty for
    /// a room without local participants): the one record a bus reconciles
    /// with its store after it may have missed events.
    fn remote_members(&self, room: &RoomId) -> Vec<ParticipantInfo>;
}

/// What the hub knows of the sender of a relay that came from another instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteSender {
    /// A member of the room on the instance that published the relay.
    Member,
    /// The room has no local participants: the relay has nobody to reach here anyway.
    NoLocalRoom,
    /// Nobody the hub knows in that room on that instance.
    Unknown,
}

/// What [`Bus::deliver`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// Numbered, kept and published.
    Sent,
    /// The sender used this client seq before: a re-send, not delivered again.
    Duplicate,
    /// Not delivered: the relay it follows (sent before it on the same connection, see
    /// [`crate::in_flight`]) was not taken. The client sends both again, in order.
    Behind,
}

/// One relay for [`Bus::deliver`].
#[derive(Debug, Clone)]
pub struct RelayDelivery {
    pub message: RelayMessage,
    /// Every recipient, whichever instance it is on.
    pub recipients: Vec<String>,
    /// The client seq of a relay earlier in the same call that must have been taken first
    /// ([`Delivered::Behind`] otherwise).
    pub follows: Option<u64>,
}

/// A participant a resume took over on this instance ([`Bus::adopt`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    /// Its record, now naming this instance.
    pub participant: ParticipantInfo,
    /// The last delivery seq it was given; later deliveries have higher ones.
    pub last_seq: u64,
    /// Every message after the client's `last_seq` up to `last_seq`, in order, without seq.
    pub replay: Vec<Frame>,
    /// The room's participants, cluster-wide, itself included.
    pub participants: Vec<ParticipantInfo>,
}

/// The answer of [`Bus::adopt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adoption {
    Adopted(Box<Adopted>),
    /// The client missed more than the participant's inbox keeps (`resume.inbox_messages`,
    /// `resume.inbox_bytes`): the resume is refused `resume_overflow`. The participant was
    /// taken over all the same (its old instance lets go of it), so that the caller can make
    /// it leave at once ([`Bus::leave`], reason `closed`) rather than at the end of the grace
    /// window.
    Overflowed {
        /// Its record, now naming this instance.
        participant: Box<ParticipantInfo>,
        /// How many of the missed messages were no longer kept.
        lost: usize,
    },
    Refused(crate::resume::Refusal),
}

impl Adoption {
    /// The participant taken over on this instance, adopted or overflowed.
    pub fn moved(&self) -> Option<&ParticipantInfo> {
        match self {
            Adoption::Adopted(adopted) => Some(&adopted.participant),
            Adoption::Overflowed { participant, .. } => Some(participant),
            Adoption::Refused(_) => None,
        }
    }
}

/// Health of the bus for `/webrtc/health` and readiness.
#[derive(Debug, Clone, Serialize)]
pub struct BusHealth {
    /// `in-process` or `redis`.
    pub kind: &'static str,
    pub ready: bool,
    /// Short human-readable state, never containing credentials.
    pub detail: String,
}

/// The cluster bus. See the module documentation for the full contract.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Registers `participant` in `room` if fewer than `limits.capacity`
    /// participants are in it cluster-wide and fewer than `limits.per_user` of
    /// them are the same user, atomically (two instances racing for the last
    /// seat cannot both win). On success announces `user-joined` to remote
    /// instances and returns the full participant list including the new one;
    /// otherwise returns [`JoinOutcome::RoomFull`] or
    /// [`JoinOutcome::UserLimit`] (see [`JoinLimits::refusal`]) and changes
    /// nothing.
    async fn join(
        &self,
        room: &RoomId,
        participant: &ParticipantInfo,
        limits: JoinLimits,
    ) -> Result<JoinOutcome, BusError>;

    /// Removes `participant` from `room` and announces `user-left` with
    /// `reason` to remote instances. Removing an unknown participant is Ok.
    async fn leave(
        &self,
        room: &RoomId,
        participant: &ParticipantInfo,
        reason: LeaveReason,
    ) -> Result<(), BusError>;

    /// Hands a relayed message to remote instances (not to local ones: the
    /// hub already served them). Returns once the message is accepted by the
    /// store; calls from one sender are delivered in call order.
    async fn publish(&self, message: RelayMessage) -> Result<(), BusError>;

    /// The cluster-wide participant list of `room` (empty if nobody is there).
    async fn participants(&self, room: &RoomId) -> Result<Vec<ParticipantInfo>, BusError>;

    /// One room with its creation time and participants, cluster-wide;
    /// `None` when nobody is in it.
    async fn room(&self, room: &RoomId) -> Result<Option<RoomRecord>, BusError>;

    /// Every room with participants, cluster-wide, ordered by room id.
    async fn rooms(&self) -> Result<Vec<RoomRecord>, BusError>;

    /// Hands a server API action to the other instances with participants in its room (the
    /// caller applied it to local participants through the hub already). Returns once the
    /// store accepted it.
    async fn act(&self, action: RoomAction) -> Result<(), BusError>;

    /// Replaces the metadata of `participant_id` in `room`'s presence record and returns the
    /// updated record, or `None` when it is not in the room. Announcing the change is the
    /// caller's ([`RoomAction::Updated`]).
    async fn update_metadata(
        &self,
        room: &RoomId,
        participant_id: &str,
        metadata: Option<Metadata>,
    ) -> Result<Option<ParticipantInfo>, BusError>;

    /// Whether the bus numbers deliveries and keeps the inboxes in its store, so that a
    /// participant can resume on any instance: relays then go through [`Bus::deliver`]
    /// (never to local recipients directly) and resumes through [`Bus::adopt`].
    fn numbers_deliveries(&self) -> bool {
        false
    }

    /// Numbers each delivery's message for each of its recipients (every instance's), keeps
    /// it in their inboxes and hands it to every instance, this one included, with the seqs:
    /// in order, in one round trip, and each one only if the relay it `follows` was taken
    /// ([`Delivered::Behind`] otherwise). Returns each one's outcome, in the same order. Only
    /// for a bus that [numbers deliveries](Bus::numbers_deliveries); one sender's calls must
    /// not overlap (the next waits for this one's answer), so they reach the store in order.
    async fn deliver(&self, deliveries: Vec<RelayDelivery>) -> Vec<Result<Delivered, BusError>> {
        let refused = BusError::Config("this bus does not number deliveries".into());
        vec![Err(refused); deliveries.len()]
    }

    /// Takes `participant_id` of `user_id` over for a resume on this instance, the client
    /// having processed `last_seq`: registers it here, announces the move to the other
    /// instances (a `Joined` naming this instance, which the room is not told), and returns
    /// what it missed, or [`Adoption::Overflowed`] when that is more than its inbox keeps.
    /// The caller has asked the hub to expect it (messages published from now on are held for
    /// it). Only for a bus that numbers deliveries.
    async fn adopt(
        &self,
        _room: &RoomId,
        _participant_id: &str,
        _user_id: &str,
        _last_seq: u64,
    ) -> Result<Adoption, BusError> {
        Ok(Adoption::Refused(crate::resume::Refusal::Expired))
    }

    /// Forgets a local registration without touching the store: the participant moved to
    /// another instance (a resume there).
    async fn release(&self, _room: &RoomId, _participant_id: &str) {}

    /// Whether the bus can currently carry messages (readiness).
    fn is_ready(&self) -> bool;

    /// Kind, readiness and a short state description.
    fn health(&self) -> BusHealth;

    /// Called once at the end of shutdown, after every local participant
    /// left: release instance-level state (e.g. the heartbeat key).
    async fn shutdown(&self);

    /// Where this bus records webhook events, when webhooks are configured: every join,
    /// leave and metadata update above records its facts in the same atomic step.
    fn event_log(&self) -> Option<Arc<dyn crate::webhook::EventLog>> {
        None
    }
}

/// Builds the bus the configuration asks for: the in-process bus unless a
/// Redis URL or Redis Cluster seeds are configured. `hub` receives events from other
/// instances; a Redis bus records into `metrics`. With webhook endpoints configured the bus
/// records webhook events and tells `wakes` which rooms got some.
pub async fn from_config(
    config: &Config,
    hub: Arc<dyn LocalHub>,
    metrics: redis::metrics::BusMetrics,
    wakes: Arc<crate::webhook::Wakes>,
) -> Result<Arc<dyn Bus>, BusError> {
    let recording = (!config.webhooks.endpoints.is_empty()).then(|| crate::webhook::Recording {
        groups: config
            .webhooks
            .endpoints
            .iter()
            .map(|e| crate::webhook::endpoint_group(e.url.expose()))
            .collect(),
        horizon: config.webhooks.retry_horizon,
    });
    let endpoint = match (&config.redis.url, &config.redis.cluster_urls) {
        (Some(url), _) => Some(redis::Endpoint::Single(url.expose().to_owned())),
        (None, Some(urls)) => Some(redis::Endpoint::Cluster(
            urls.iter().map(|u| u.expose().to_owned()).collect(),
        )),
        (None, None) => None,
    };
    match endpoint {
        None => Ok(Arc::new(match recording {
            Some(recording) => InProcessBus::with_events(Arc::new(
                crate::webhook::memory::MemoryLog::new(recording, wakes),
            )),
            None => InProcessBus::new(),
        })),
        Some(endpoint) => {
            let settings = redis::RedisSettings {
                endpoint,
                key_prefix: config.redis.key_prefix.clone(),
                instance_id: config.instance_id.clone(),
                presence_ttl: config.rooms.presence_ttl,
                max_message_bytes: config.limits.max_message_bytes,
                max_json_depth: config.limits.max_json_depth,
                max_metadata_bytes: config.limits.max_metadata_bytes,
                publish_timeout: config.redis.publish_timeout,
                webhooks: recording.map(|r| (r, wakes)),
                resume_grace: config.resume.grace,
                inbox_messages: config.resume.inbox_messages,
                inbox_bytes: config.resume.inbox_bytes,
            };
            Ok(Arc::new(
                redis::RedisBus::start(settings, hub, metrics).await?,
            ))
        }
    }
}

/// One room of the in-process bus.
#[derive(Debug)]
struct LocalRoom {
    /// When its first participant joined.
    created_at: String,
    members: Vec<ParticipantInfo>,
}

/// The single-instance bus: presence in a map, nothing to publish because
/// every participant is local. Webhook events, when configured, are recorded in memory
/// under the same lock as presence (lock order: `rooms`, then the log's own).
#[derive(Debug, Default)]
pub struct InProcessBus {
    rooms: Mutex<HashMap<RoomId, LocalRoom>>,
    events: Option<Arc<crate::webhook::memory::MemoryLog>>,
}

impl InProcessBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// An in-process bus that records webhook events into `log`.
    pub fn with_events(log: Arc<crate::webhook::memory::MemoryLog>) -> Self {
        InProcessBus {
            rooms: Mutex::default(),
            events: Some(log),
        }
    }

    fn record(&self, room: &RoomId, facts: Vec<crate::webhook::memory::Fact>) {
        if let Some(log) = &self.events {
            log.record(room, facts);
        }
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<RoomId, LocalRoom>> {
        // A poisoned lock only means another thread panicked mid-update of a
        // plain map; the data is still usable.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Bus for InProcessBus {
    async fn join(
        &self,
        room: &RoomId,
        participant: &ParticipantInfo,
        limits: JoinLimits,
    ) -> Result<JoinOutcome, BusError> {
        let mut rooms = self.rooms();
        let members = rooms.get(room).map_or(&[][..], |r| &r.members[..]);
        if let Some(refused) = limits.refusal(members, participant) {
            return Ok(refused);
        }
        let entry = rooms.entry(room.clone()).or_insert_with(|| LocalRoom {
            created_at: crate::protocol::now_timestamp(),
            members: Vec::new(),
        });
        use crate::webhook::EventKind;
        let mut facts = Vec::new();
        if entry.members.is_empty() {
            facts.push((EventKind::RoomStarted, participant.clone(), None));
        }
        facts.push((EventKind::ParticipantJoined, participant.clone(), None));
        entry.members.push(participant.clone());
        let participants = entry.members.clone();
        self.record(room, facts);
        Ok(JoinOutcome::Joined { participants })
    }

    async fn leave(
        &self,
        room: &RoomId,
        participant: &ParticipantInfo,
        reason: LeaveReason,
    ) -> Result<(), BusError> {
        use crate::webhook::EventKind;
        let mut rooms = self.rooms();
        if let Some(entry) = rooms.get_mut(room) {
            let position = entry
                .members
                .iter()
                .position(|p| p.participant_id == participant.participant_id);
            // The record as presence holds it (its metadata may have been replaced).
            let Some(left) = position.map(|i| entry.members.remove(i)) else {
                return Ok(());
            };
            let mut facts = vec![(
                EventKind::ParticipantLeft,
                left.clone(),
                Some(reason.as_str().to_owned()),
            )];
            if entry.members.is_empty() {
                rooms.remove(room);
                facts.push((EventKind::RoomFinished, left, None));
            }
            self.record(room, facts);
        }
        Ok(())
    }

    async fn publish(&self, _message: RelayMessage) -> Result<(), BusError> {
        // Every recipient is local and was served by the hub already.
        Ok(())
    }

    async fn participants(&self, room: &RoomId) -> Result<Vec<ParticipantInfo>, BusError> {
        Ok(self
            .rooms()
            .get(room)
            .map(|r| r.members.clone())
            .unwrap_or_default())
    }

    async fn room(&self, room: &RoomId) -> Result<Option<RoomRecord>, BusError> {
        Ok(self.rooms().get(room).map(|r| record(room, r)))
    }

    async fn act(&self, _action: RoomAction) -> Result<(), BusError> {
        // Every participant is local and the hub applied the action already.
        Ok(())
    }

    async fn update_metadata(
        &self,
        room: &RoomId,
        participant_id: &str,
        metadata: Option<Metadata>,
    ) -> Result<Option<ParticipantInfo>, BusError> {
        let mut rooms = self.rooms();
        let member = rooms.get_mut(room).and_then(|r| {
            r.members
                .iter_mut()
                .find(|p| p.participant_id == participant_id)
        });
        let updated = member.map(|p| {
            p.metadata = metadata;
            p.clone()
        });
        if let Some(p) = &updated {
            self.record(
                room,
                vec![(
                    crate::webhook::EventKind::ParticipantUpdated,
                    p.clone(),
                    None,
                )],
            );
        }
        Ok(updated)
    }

    async fn rooms(&self) -> Result<Vec<RoomRecord>, BusError> {
        let mut list: Vec<RoomRecord> = self.rooms().iter().map(|(id, r)| record(id, r)).collect();
        list.sort_by(|a, b| a.room_id.cmp(&b.room_id));
        Ok(list)
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn health(&self) -> BusHealth {
        BusHealth {
            kind: "in-process",
            ready: true,
            detail: "ok".into(),
        }
    }

    async fn shutdown(&self) {}

    fn event_log(&self) -> Option<Arc<dyn crate::webhook::EventLog>> {
        self.events
            .clone()
            .map(|log| log as Arc<dyn crate::webhook::EventLog>)
    }
}

fn record(room: &RoomId, r: &LocalRoom) -> RoomRecord {
    let mut participants = r.members.clone();
    crate::room::sort_by_join(&mut participants);
    RoomRecord {
        room_id: room.clone(),
        created_at: r.created_at.clone(),
        participants,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: &str) -> ParticipantInfo {
        crate::test_support::participant(id, "i1")
    }

    fn room(s: &str) -> RoomId {
        RoomId::parse(s).unwrap()
    }

    fn cap(capacity: usize) -> JoinLimits {
        JoinLimits {
            capacity,
            per_user: None,
        }
    }

    fn of_user(id: &str, user: &str) -> ParticipantInfo {
        ParticipantInfo {
            user_id: user.into(),
            ..p(id)
        }
    }

    #[tokio::test]
    async fn join_enforces_capacity_and_returns_everyone() {
        let bus = InProcessBus::new();
        let r = room("r");
        assert_eq!(
            bus.join(&r, &p("a"), cap(2)).await.unwrap(),
            JoinOutcome::Joined {
                participants: vec![p("a")]
            }
        );
        assert_eq!(
            bus.join(&r, &p("b"), cap(2)).await.unwrap(),
            JoinOutcome::Joined {
                participants: vec![p("a"), p("b")]
            }
        );
        assert_eq!(
            bus.join(&r, &p("c"), cap(2)).await.unwrap(),
            JoinOutcome::RoomFull
        );
        assert_eq!(bus.participants(&r).await.unwrap(), vec![p("a"), p("b")]);
        bus.leave(&r, &p("a"), LeaveReason::Closed).await.unwrap();
        assert!(matches!(
            bus.join(&r, &p("c"), cap(2)).await.unwrap(),
            JoinOutcome::Joined { .. }
        ));
        assert_eq!(bus.participants(&r).await.unwrap(), vec![p("b"), p("c")]);
    }

    #[tokio::test]
    async fn a_room_is_created_by_its_first_join_and_keeps_that_time() {
        let bus = InProcessBus::new();
        let (r, other) = (room("r"), room("other"));
        assert_eq!(bus.room(&r).await.unwrap(), None);
        bus.join(&r, &p("a"), cap(5)).await.unwrap();
        let created = bus.room(&r).await.unwrap().unwrap().created_at;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        bus.join(&r, &p("b"), cap(5)).await.unwrap();
        bus.leave(&r, &p("a"), LeaveReason::Closed).await.unwrap();
        bus.join(&other, &p("c"), cap(5)).await.unwrap();
        let record = bus.room(&r).await.unwrap().unwrap();
        assert_eq!(record.created_at, created, "later joins and leaves keep it");
        assert_eq!(record.participants, vec![p("b")]);
        let ids: Vec<String> = Bus::rooms(&bus)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.room_id.to_string())
            .collect();
        assert_eq!(ids, ["other", "r"]);
        // Emptied, the room is gone; the next join creates it anew.
        bus.leave(&r, &p("b"), LeaveReason::Closed).await.unwrap();
        assert_eq!(bus.room(&r).await.unwrap(), None);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        bus.join(&r, &p("d"), cap(5)).await.unwrap();
        assert!(bus.room(&r).await.unwrap().unwrap().created_at > created);
    }

    #[tokio::test]
    async fn join_enforces_the_per_user_limit_and_frees_it_on_leave() {
        let bus = InProcessBus::new();
        let r = room("r");
        let limits = JoinLimits {
            capacity: 10,
            per_user: Some(2),
        };
        for id in ["a1", "a2"] {
            assert!(matches!(
                bus.join(&r, &of_user(id, "alice"), limits).await.unwrap(),
                JoinOutcome::Joined { .. }
            ));
        }
        assert_eq!(
            bus.join(&r, &of_user("a3", "alice"), limits).await.unwrap(),
            JoinOutcome::UserLimit
        );
        // Another user is not affected, nor is alice in another room.
        assert!(matches!(
            bus.join(&r, &of_user("b1", "bob"), limits).await.unwrap(),
            JoinOutcome::Joined { .. }
        ));
        assert!(matches!(
            bus.join(&room("other"), &of_user("a3", "alice"), limits)
                .await
                .unwrap(),
            JoinOutcome::Joined { .. }
        ));
        bus.leave(&r, &of_user("a1", "alice"), LeaveReason::Closed)
            .await
            .unwrap();
        assert!(matches!(
            bus.join(&r, &of_user("a4", "alice"), limits).await.unwrap(),
            JoinOutcome::Joined { .. }
        ));
        assert_eq!(bus.participants(&r).await.unwrap().len(), 3);
    }

    #[test]
    fn a_full_room_is_reported_before_the_per_user_limit() {
        let members = [of_user("a1", "alice"), of_user("b1", "bob")];
        let both = JoinLimits {
            capacity: 2,
            per_user: Some(1),
        };
        assert_eq!(
            both.refusal(&members, &of_user("a2", "alice")),
            Some(JoinOutcome::RoomFull)
        );
        let roomy = JoinLimits {
            capacity: 3,
            ..both
        };
        assert_eq!(
            roomy.refusal(&members, &of_user("a2", "alice")),
            Some(JoinOutcome::UserLimit)
        );
        assert_eq!(roomy.refusal(&members, &of_user("c1", "carol")), None);
        let unlimited = JoinLimits {
            per_user: None,
            ..roomy
        };
        assert_eq!(unlimited.refusal(&members, &of_user("a2", "alice")), None);
    }

    #[tokio::test]
    async fn empty_rooms_are_forgotten() {
        let bus = InProcessBus::new();
        let r = room("r");
        bus.join(&r, &p("a"), cap(5)).await.unwrap();
        bus.leave(&r, &p("a"), LeaveReason::Timeout).await.unwrap();
        bus.leave(&r, &p("zz"), LeaveReason::Closed).await.unwrap();
        assert!(bus.rooms().is_empty());
        assert!(bus.participants(&r).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn metadata_is_replaced_only_for_a_present_participant() {
        let bus = InProcessBus::new();
        let r = room("r");
        bus.join(&r, &p("a"), cap(5)).await.unwrap();
        let mut meta = Metadata::new();
        meta.insert("k".into(), serde_json::json!(1));
        let updated = bus
            .update_metadata(&r, "a", Some(meta.clone()))
            .await
            .unwrap();
        assert_eq!(
            updated.as_ref().and_then(|p| p.metadata.clone()),
            Some(meta)
        );
        assert_eq!(bus.participants(&r).await.unwrap(), vec![updated.unwrap()]);
        assert_eq!(bus.update_metadata(&r, "zz", None).await.unwrap(), None);
        assert_eq!(
            bus.update_metadata(&room("x"), "a", None).await.unwrap(),
            None
        );
    }

    #[test]
    fn actions_round_trip_through_json() {
        let frame = crate::protocol::encode_user_joined("r", &p("a"));
        for action in [
            RoomAction::Remove {
                room_id: room("r"),
                participant_id: "a".into(),
            },
            RoomAction::Close { room_id: room("r") },
            RoomAction::Message {
                room_id: room("r"),
                to: Some("a".into()),
                frame,
            },
            RoomAction::Updated {
                room_id: room("r"),
                participant: p("a"),
            },
        ] {
            let env = BusEnvelope {
                origin: "i1".into(),
                event: RemoteEvent::Action(action),
            };
            let json = serde_json::to_string(&env).unwrap();
            let back: BusEnvelope = serde_json::from_str(&json).unwrap();
            assert_eq!(back, env);
        }
    }

    #[test]
    fn envelope_round_trips_through_json() {
        let frame = crate::protocol::encode_user_joined("r", &p("a"));
        let env = BusEnvelope {
            origin: "i1".into(),
            event: RemoteEvent::Relay(RelayMessage {
                room_id: room("r"),
                kind: RelayKind::Offer,
                sender_id: "a".into(),
                to: Some("b".into()),
                sender_seq: Some(3),
                seqs: Some(BTreeMap::from([("b".to_owned(), 7)])),
                frame,
            }),
        };
        let json = serde_json::to_string(&env).unwrap();
        let back: BusEnvelope = serde_json::from_str(&json).unwrap();
        assert_eq!(back, env);
    }
}
