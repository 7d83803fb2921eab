//! The Redis bus's webhook event log. The presence scripts record events into one stream per
//! room (`keys::room_webhooks`, in the room's slot) with one consumer group per endpoint; this
//! file adds the common argument block those scripts take, the registry of rooms that may
//! hold undelivered events (`keys::webhook_rooms`, a global set touched only by single-key
//! commands, so Redis Cluster is fine), and [`RedisLog`], through which any instance delivers
//! any room's events: a group's pending entry is the hold on a room (renewed while delivering;
//! taken over by another instance after a lease of the presence TTL without renewal).
//!
//! Finding rooms: an instance adds a room to the registry right after each script that may
//! have recorded events there (before it unregisters the room from its own rooms set), the
//! cleaner of a dead instance adds all of that instance's rooms, and a room is removed only
//! after every group had all of its stream (deleted, or emptied while the room lives), then
//! re-checked (a recording that raced the removal adds it back), so no stream with events
//! stays unfound.

use std::sync::Arc;

use async_trait::async_trait;
use redis::{AsyncCommands, Script, ScriptInvocation, Value};

use super::Inner;
use crate::bus::BusError;
use crate::room::{ParticipantInfo, RoomId};
use crate::webhook::{Claim, EventKind, EventLog, GroupStatus, RecordedEvent, Recording, Wakes};

/// How long a room's `seq` counter outlives its last event beyond the retry horizon.
const SEQ_KEEP_SECS: u64 = 86_400;

/// The webhook part of the bus: what to record and whom to wake.
pub(super) struct Webhooks {
    recording: Recording,
    wakes: Arc<Wakes>,
    status: Script,
    claim: Script,
    renew: Script,
    ack: Script,
    settle: Script,
}

impl Webhooks {
    pub(super) fn new(recording: Recording, wakes: Arc<Wakes>) -> Self {
        Webhooks {
            recording,
            wakes,
            status: Script::new(super::scripts::WEBHOOK_STATUS),
            claim: Script::new(super::scripts::WEBHOOK_CLAIM),
            renew: Script::new(super::scripts::WEBHOOK_RENEW),
            ack: Script::new(super::scripts::WEBHOOK_ACK),
            settle: Script::new(super::scripts::WEBHOOK_SETTLE),
        }
    }

    fn horizon_ms(&self) -> u64 {
        u64::try_from(self.recording.horizon.as_millis()).unwrap_or(u64::MAX)
    }
}

impl Inner {
    /// The room's webhook stream and `seq` keys, the presence scripts' last keys, only when
    /// webhooks are on: a key that never exists would make every multi-key script of a slot
    /// being migrated between cluster nodes fail with `TRYAGAIN` (the scripts only touch
    /// these keys when they record).
    pub(super) fn webhook_keys(&self, invocation: &mut ScriptInvocation<'_>, room: &RoomId) {
        if self.webhooks.is_some() {
            invocation
                .key(self.keys.room_webhooks(room))
                .key(self.keys.room_webhook_seq(room));
        }
    }

    /// The common argument block of the presence scripts (see `scripts`): a nonce, the time,
    /// the `seq` lifetime and the endpoint groups, or an empty nonce when webhooks are off.
    pub(super) fn webhook_args(&self, invocation: &mut ScriptInvocation<'_>) {
        match &self.webhooks {
            None => {
                invocation.arg("").arg("").arg(0).arg(0);
            }
            Some(w) => {
                invocation
                    .arg(crate::webhook::event::nonce())
                    .arg(crate::protocol::now_timestamp())
                    .arg(w.recording.horizon.as_secs() + SEQ_KEEP_SECS)
                    .arg(w.recording.groups.len());
                for g in &w.recording.groups {
                    invocation.arg(g);
                }
            }
        }
    }

    /// After a script that may have recorded events in `room`: registers the room for every
    /// instance and wakes our dispatcher. A failed registration is retried by the dispatcher.
    pub(super) async fn webhook_recorded(&self, room: &RoomId) {
        let Some(w) = &self.webhooks else { return };
        let _ = self
            .register_webhook_rooms(std::slice::from_ref(room))
            .await;
        w.wakes.wake(room);
    }

    /// Adds `rooms` to the registry (and wakes our dispatcher for them).
    pub(super) async fn register_webhook_rooms(&self, rooms: &[RoomId]) -> Result<(), BusError> {
        let Some(w) = &self.webhooks else {
            return Ok(());
        };
        if rooms.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let key = self.keys.webhook_rooms();
        let members: Vec<String> = rooms.iter().map(|r| r.as_str().to_owned()).collect();
        let result = self
            .redis("register webhook rooms", async move {
                conn.sadd::<_, _, i64>(key, members).await
            })
            .await;
        for room in rooms {
            w.wakes.wake(room);
        }
        result.map(|_| ())
    }
}

/// [`EventLog`] over the Redis bus's streams.
pub(super) struct RedisLog {
    pub(super) inner: Arc<Inner>,
}

impl RedisLog {
    fn webhooks(&self) -> Result<&Webhooks, BusError> {
        self.inner
            .webhooks
            .as_ref()
            .ok_or_else(|| BusError::Config("webhooks are not configured".into()))
    }

    fn lease_ms(&self) -> u64 {
        u64::try_from(self.inner.timing.ttl.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Text of a reply element (bulk or simple string, or integer).
fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// A stream entry's fields as recorded by the presence scripts; `None` when unreadable.
fn parse_entry(room: &RoomId, fields: &Value) -> Option<RecordedEvent> {
    let Value::Array(items) = fields else {
        return None;
    };
    let mut get = std::collections::HashMap::new();
    for pair in items.chunks(2) {
        if let [k, v] = pair {
            get.insert(text(k)?, text(v)?);
        }
    }
    let participant: ParticipantInfo = serde_json::from_str(get.get("participant")?).ok()?;
    Some(RecordedEvent {
        id: get.get("id")?.clone(),
        kind: EventKind::parse(get.get("type")?)?,
        seq: get.get("seq")?.parse().ok()?,
        time: get.get("time")?.clone(),
        room: room.clone(),
        participant,
        reason: get.get("reason").filter(|r| !r.is_empty()).cloned(),
    })
}

#[async_trait]
impl EventLog for RedisLog {
    async fn pending_rooms(&self) -> Result<Vec<RoomId>, BusError> {
        let mut conn = self.inner.conn.clone();
        let key = self.inner.keys.webhook_rooms();
        let rooms: Vec<String> = self
            .inner
            .redis("webhook rooms", async move { conn.smembers(key).await })
            .await?;
        Ok(rooms.iter().filter_map(|r| RoomId::parse(r).ok()).collect())
    }

    async fn register(&self, room: &RoomId) -> Result<(), BusError> {
        let mut conn = self.inner.conn.clone();
        let key = self.inner.keys.webhook_rooms();
        let member = room.as_str().to_owned();
        self.inner
            .redis("register webhook room", async move {
                conn.sadd::<_, _, i64>(key, member).await
            })
            .await
            .map(|_| ())
    }

    async fn status(&self, room: &RoomId, groups: &[String]) -> Result<Vec<GroupStatus>, BusError> {
        let w = self.webhooks()?;
        let mut invocation = w.status.key(self.inner.keys.room_webhooks(room));
        invocation.arg(self.inner.instance()).arg(self.lease_ms());
        for g in groups {
            invocation.arg(g);
        }
        let mut conn = self.inner.conn.clone();
        let reply: Vec<Vec<i64>> = self
            .inner
            .redis("webhook status", async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        Ok(reply
            .into_iter()
            .map(|s| GroupStatus {
                depth: u64::try_from(s.first().copied().unwrap_or(0)).unwrap_or(0),
                oldest_ms: s.get(1).copied().filter(|t| *t >= 0),
                held_elsewhere: s.get(2).copied() == Some(1),
            })
            .collect())
    }

    async fn claim(&self, room: &RoomId, group: &str) -> Result<Claim, BusError> {
        let w = self.webhooks()?;
        // A trimmed pending entry is acknowledged by the script; then look again (bounded).
        for _ in 0..8 {
            let mut invocation = w.claim.key(self.inner.keys.room_webhooks(room));
            invocation
                .arg(group)
                .arg(self.inner.instance())
                .arg(self.lease_ms());
            let mut conn = self.inner.conn.clone();
            let reply: Value = self
                .inner
                .redis("webhook claim", async move {
                    invocation.invoke_async(&mut conn).await
                })
                .await?;
            let Value::Array(items) = reply else {
                return Ok(Claim::Empty);
            };
            match items.first().and_then(text).as_deref() {
                Some("event") => {
                    let entry = items.get(1).and_then(text).unwrap_or_default();
                    match items.get(2).and_then(|f| parse_entry(room, f)) {
                        Some(event) => {
                            return Ok(Claim::Event {
                                entry,
                                event: Box::new(event),
                            })
                        }
                        None => {
                            // Unreadable (not written by us): skip it rather than block the room.
                            tracing::warn!(room = %room, entry = %entry, "unreadable webhook event skipped");
                            self.ack(room, group, &entry).await?;
                        }
                    }
                }
                Some("busy") => return Ok(Claim::Busy),
                Some("again") => {}
                _ => return Ok(Claim::Empty),
            }
        }
        Ok(Claim::Empty)
    }

    async fn renew(&self, room: &RoomId, group: &str, entry: &str) -> Result<bool, BusError> {
        let w = self.webhooks()?;
        let mut invocation = w.renew.key(self.inner.keys.room_webhooks(room));
        invocation.arg(group).arg(self.inner.instance()).arg(entry);
        let mut conn = self.inner.conn.clone();
        let held: i64 = self
            .inner
            .redis("webhook renew", async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        Ok(held == 1)
    }

    async fn ack(&self, room: &RoomId, group: &str, entry: &str) -> Result<(), BusError> {
        let w = self.webhooks()?;
        let mut invocation = w.ack.key(self.inner.keys.room_webhooks(room));
        invocation
            .arg(group)
            .arg(self.inner.instance())
            .arg(entry)
            .arg(w.horizon_ms());
        let mut conn = self.inner.conn.clone();
        self.inner
            .redis("webhook ack", async move {
                invocation.invoke_async::<i64>(&mut conn).await
            })
            .await
            .map(|_| ())
    }

    async fn settle(&self, room: &RoomId) -> Result<(), BusError> {
        let w = self.webhooks()?;
        let mut invocation = w.settle.key(self.inner.keys.room_webhooks(room));
        invocation
            .key(self.inner.keys.room_participants(room))
            .arg(w.horizon_ms());
        let mut conn = self.inner.conn.clone();
        let gone: i64 = self
            .inner
            .redis("webhook settle", async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        if gone != 1 {
            return Ok(());
        }
        let registry = self.inner.keys.webhook_rooms();
        let member = room.as_str().to_owned();
        let mut conn = self.inner.conn.clone();
        let (k, m) = (registry.clone(), member.clone());
        self.inner
            .redis("forget webhook room", async move {
                conn.srem::<_, _, i64>(k, m).await
            })
            .await?;
        // A recording between the settle and the removal registered the room before our
        // removal: look once more.
        let mut conn = self.inner.conn.clone();
        let stream = self.inner.keys.room_webhooks(room);
        let waiting: i64 = self
            .inner
            .redis("webhook recheck", async move {
                redis::cmd("XLEN").arg(stream).query_async(&mut conn).await
            })
            .await?;
        if waiting > 0 {
            self.register(room).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn entries_parse_back_into_events() {
        let room = RoomId::parse("r").unwrap();
        let info = serde_json::to_string(&crate::test_support::participant("p1", "pod")).unwrap();
        let fields = Value::Array(vec![
            bulk("type"),
            bulk("participant_left"),
            bulk("id"),
            bulk("evt_n-1"),
            bulk("seq"),
            bulk("1764646000000001"),
            bulk("time"),
            bulk("2026-01-01T00:00:00.000Z"),
            bulk("participant"),
            bulk(&info),
            bulk("reason"),
            bulk("instance_lost"),
        ]);
        let event = parse_entry(&room, &fields).unwrap();
        assert_eq!(event.kind, EventKind::ParticipantLeft);
        assert_eq!(event.seq, 1_764_646_000_000_001);
        assert_eq!(event.reason.as_deref(), Some("instance_lost"));
        assert_eq!(event.participant.participant_id, "p1");
        let Value::Array(mut items) = fields else {
            unreachable!()
        };
        items[1] = bulk("room.exploded");
        assert_eq!(parse_entry(&room, &Value::Array(items)), None);
    }
}
