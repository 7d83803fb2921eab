//! This instance's presence in Redis: what it registered ([`Local`]: live local participants
//! per room, rooms whose write failed, leaves not yet announced), joins through the atomic
//! capacity script and leaves, the resync that makes Redis hold exactly the live local
//! presence again (after a Redis restart, an outage or a lapsed heartbeat), the heartbeat,
//! the sweep that finds dead instances and the cleanup that announces their participants as
//! `instance_lost`, the heartbeat task that drives all of it, and deregistration at shutdown.
//! Subscriptions are in `subscriber`; the hub's view of other instances in `remote`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, MutexGuard};
use std::time::Instant;

use redis::{AsyncCommands, Script};
use tokio::sync::RwLock;

use super::link::may_sweep;
use super::{parse_infos, scripts, sorted, Inner};
use crate::bus::{BusError, JoinLimits, JoinOutcome, RemoteEvent};
use crate::room::{LeaveReason, ParticipantInfo, RoomId};

/// How long the tombstone of a cleaned-up instance lives: long enough for an instance that was
/// only cut off to come back and re-announce its participants.
const LOST_TOMBSTONE_SECS: u64 = 3600;

/// Local presence bookkeeping (what this instance registered in Redis), pure.
#[derive(Debug, Default)]
pub(super) struct Local {
    /// room → participant id → info: what a resync writes back.
    rooms: HashMap<RoomId, HashMap<String, ParticipantInfo>>,
    /// Rooms where a Redis write failed: a resync reconciles them.
    dirty: HashSet<RoomId>,
    /// Leave reasons not yet announced because Redis was unreachable.
    pending_left: HashMap<String, LeaveReason>,
    /// Redis may have lost (or never got) this instance's presence.
    pub(super) needs_sync: bool,
    /// Rooms whose subscription a participant that moved to another instance (a resume
    /// there) held: released by the heartbeat task, since the subscriber task that learns
    /// of the move cannot unsubscribe while it handles a message.
    pub(super) moved_away: Vec<RoomId>,
}

impl Local {
    /// A join that Redis accepted.
    pub(super) fn add(&mut self, room: &RoomId, participant: &ParticipantInfo) {
        self.rooms
            .entry(room.clone())
            .or_default()
            .insert(participant.participant_id.clone(), participant.clone());
    }

    /// Replaces the record of a live local participant (its metadata changed), so a resync
    /// writes back the current one; others are not ours and are ignored.
    pub(super) fn update(&mut self, room: &RoomId, participant: &ParticipantInfo) {
        if let Some(p) = self
            .rooms
            .get_mut(room)
            .and_then(|m| m.get_mut(&participant.participant_id))
        {
            *p = participant.clone();
        }
    }

    /// Forgets a local participant; whether it was one.
    pub(super) fn remove(&mut self, room: &RoomId, participant_id: &str) -> bool {
        let removed = self
            .rooms
            .get_mut(room)
            .and_then(|m| m.remove(participant_id))
            .is_some();
        if self.rooms.get(room).is_some_and(HashMap::is_empty) {
            self.rooms.remove(room);
        }
        removed
    }

    /// A join or leave whose outcome Redis may not have seen: the resync removes the record
    /// and announces the leave with `reason`.
    fn write_failed(&mut self, room: &RoomId, participant_id: &str, reason: LeaveReason) {
        self.dirty.insert(room.clone());
        self.pending_left.insert(participant_id.to_owned(), reason);
    }

    /// A room-level write failed (e.g. unregistering the room): the resync reconciles it.
    pub(super) fn room_write_failed(&mut self, room: &RoomId) {
        self.dirty.insert(room.clone());
    }

    /// Whether `room` has live local participants.
    fn has_room(&self, room: &RoomId) -> bool {
        self.rooms.contains_key(room)
    }

    /// Whether `participant_id` is one of this instance's live local participants in `room`.
    pub(super) fn is_live(&self, room: &RoomId, participant_id: &str) -> bool {
        self.rooms
            .get(room)
            .is_some_and(|members| members.contains_key(participant_id))
    }

    /// Starts a resync: what to write back and which rooms to reconcile.
    fn begin_resync(
        &mut self,
    ) -> (
        HashMap<RoomId, HashMap<String, ParticipantInfo>>,
        HashSet<RoomId>,
    ) {
        self.needs_sync = false;
        (self.rooms.clone(), std::mem::take(&mut self.dirty))
    }

    /// A resync failed half-way: everything it took is to do again.
    fn resync_failed(&mut self, dirty: HashSet<RoomId>) {
        self.needs_sync = true;
        self.dirty.extend(dirty);
    }

    /// The instance may forget its rooms set and instance entry at shutdown: nothing it
    /// registered can still be in Redis (every participant left, every failed write was
    /// reconciled).
    fn may_deregister(&self) -> bool {
        self.rooms.values().all(HashMap::is_empty)
            && self.dirty.is_empty()
            && self.pending_left.is_empty()
    }
}

/// Presence state shared with the rest of the bus.
pub(super) struct Presence {
    /// First in the lock order: joins and leaves hold it shared, a resync exclusively, so a
    /// resync never sees a half-done join (registered in Redis, not yet in `local`).
    pub(super) gate: RwLock<()>,
    /// A leaf: held for a few field updates, never across an `.await` or another lock.
    local: std::sync::Mutex<Local>,
    join_script: Script,
    leave_script: Script,
    remove_instance_script: Script,
    sync_script: Script,
}

impl Presence {
    pub(super) fn new() -> Self {
        Presence {
            gate: RwLock::new(()),
            local: std::sync::Mutex::new(Local {
                needs_sync: true,
                ..Local::default()
            }),
            join_script: Script::new(scripts::JOIN),
            leave_script: Script::new(scripts::LEAVE),
            remove_instance_script: Script::new(scripts::REMOVE_INSTANCE),
            sync_script: Script::new(scripts::SYNC_INSTANCE),
        }
    }

    pub(super) fn local(&self) -> MutexGuard<'_, Local> {
        // Plain data: a panic elsewhere cannot leave it inconsistent in a harmful way.
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Redis may have lost (or never got) this instance's presence: resync at the next beat.
    pub(super) fn request_sync(&self) {
        self.local().needs_sync = true;
    }
}

impl Inner {
    /// [`Bus::join`](crate::bus::Bus::join): subscribe the room, run the capacity script,
    /// announce the join.
    pub(super) async fn join(
        &self,
        room: &RoomId,
        participant: &ParticipantInfo,
        limits: JoinLimits,
    ) -> Result<JoinOutcome, BusError> {
        let gate = self.presence.gate.read().await;
        // Before the script reads the room: a member that joins elsewhere after that read
        // announces itself while this participant is not registered in the hub yet.
        self.hub.expect_join(room, &participant.participant_id);
        let outcome = self.join_announced(room, participant, limits, gate).await;
        if !matches!(outcome, Ok(JoinOutcome::Joined { .. })) {
            self.hub.join_failed(room, &participant.participant_id);
        }
        outcome
    }

    /// [`join`](Self::join) once the hub expects the participant.
    async fn join_announced(
        &self,
        room: &RoomId,
        participant: &ParticipantInfo,
        limits: JoinLimits,
        gate: tokio::sync::RwLockReadGuard<'_, ()>,
    ) -> Result<JoinOutcome, BusError> {
        self.acquire_room(room).await?;
        let info = serde_json::to_string(participant).unwrap_or_default();
        let mut invocation = self
            .presence
            .join_script
            .key(self.keys.room_participants(room));
        invocation.key(self.keys.room_created(room));
        self.webhook_keys(&mut invocation, room);
        self.webhook_args(&mut invocation);
        invocation
            .arg(&participant.participant_id)
            .arg(info)
            .arg(limits.capacity)
            .arg(crate::protocol::now_timestamp())
            .arg(&participant.user_id)
            // 0: no per-user limit.
            .arg(limits.per_user.unwrap_or(0));
        let mut conn = self.conn.clone();
        let reply: Result<Vec<String>, BusError> = self
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
                self.presence.local().write_failed(
                    room,
                    &participant.participant_id,
                    LeaveReason::Closed,
                );
                self.release_room(room).await;
                return Err(e);
            }
        };
        let refused = match values.first().map(String::as_str) {
            Some("1") => None,
            Some("2") => Some(JoinOutcome::UserLimit),
            _ => Some(JoinOutcome::RoomFull),
        };
        if let Some(refused) = refused {
            self.release_room(room).await;
            return Ok(refused);
        }
        self.webhook_recorded(room).await;
        self.presence.local().add(room, participant);
        let event = RemoteEvent::Joined {
            room_id: room.clone(),
            participant: participant.clone(),
        };
        if let Err(e) = self.publish_event(room, &event).await {
            // Registered but not announced: undo (a resync finishes it if Redis is gone).
            drop(gate);
            let _ = self.leave(room, participant, LeaveReason::Closed).await;
            return Err(e);
        }
        // The hub records the other instances' members from this list when it registers the
        // participant: it is the only record of them.
        Ok(JoinOutcome::Joined {
            participants: sorted(parse_infos(&values[1..])),
        })
    }

    /// [`Bus::leave`](crate::bus::Bus::leave): remove the record, announce the leave.
    pub(super) async fn leave(
        &self,
        room: &RoomId,
        participant: &ParticipantInfo,
        reason: LeaveReason,
    ) -> Result<(), BusError> {
        let _gate = self.presence.gate.read().await;
        let was_local = self
            .presence
            .local()
            .remove(room, &participant.participant_id);
        let mut conn = self.conn.clone();
        let mut invocation = self
            .presence
            .leave_script
            .key(self.keys.room_participants(room));
        invocation.key(self.keys.room_created(room));
        self.webhook_keys(&mut invocation, room);
        self.webhook_args(&mut invocation);
        invocation
            .arg(&participant.participant_id)
            .arg(reason.as_str())
            .arg(self.instance());
        let resume_keys = self.numbers_deliveries;
        invocation.arg(if resume_keys { "1" } else { "0" });
        if resume_keys {
            invocation
                .key(self.keys.room_seqs(room))
                .key(self.keys.room_sent(room))
                .key(self.keys.inbox(room, &participant.participant_id));
        }
        invocation
            .key(self.keys.room_departed(room, &participant.participant_id))
            .arg(self.timing.ttl.as_secs().max(1));
        let result = async {
            let removed = self
                .redis("leave", async move {
                    invocation.invoke_async::<i64>(&mut conn).await
                })
                .await?;
            if removed == 0 {
                // Another instance adopted it (a resume): the room has not lost it.
                return Ok(());
            }
            // Before the room may leave our rooms set (crash cleanup finds it there).
            self.webhook_recorded(room).await;
            let event = RemoteEvent::Left {
                room_id: room.clone(),
                participant: participant.clone(),
                reason,
            };
            self.publish_event(room, &event).await
        }
        .await;
        if result.is_err() {
            // Announced later by the resync that removes the stale record.
            self.presence
                .local()
                .write_failed(room, &participant.participant_id, reason);
        }
        if was_local {
            self.release_room(room).await;
        }
        result
    }

    /// [`Bus::participants`](crate::bus::Bus::participants): the room's records in Redis.
    pub(super) async fn participants(
        &self,
        room: &RoomId,
    ) -> Result<Vec<ParticipantInfo>, BusError> {
        let mut conn = self.conn.clone();
        let key = self.keys.room_participants(room);
        let values: Vec<String> = self
            .redis("participants", async move { conn.hvals(key).await })
            .await?;
        Ok(sorted(parse_infos(&values)))
    }

    /// Makes Redis hold exactly this instance's live presence (after a Redis restart, an
    /// outage or a lapsed heartbeat). Announces leaves that could not be announced, and
    /// re-announces joins if another instance had declared us lost.
    async fn resync(&self) -> Result<(), BusError> {
        let _gate = self.presence.gate.write().await;
        let (snapshot, dirty) = self.presence.local().begin_resync();
        let result = self.resync_rooms(&snapshot, &dirty).await;
        if result.is_err() {
            self.presence.local().resync_failed(dirty);
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
            let mut invocation = self
                .presence
                .sync_script
                .key(self.keys.room_participants(room));
            self.webhook_keys(&mut invocation, room);
            self.webhook_args(&mut invocation);
            invocation
                .arg(&me)
                .arg(if was_lost.is_some() { "1" } else { "0" });
            // The leaves Redis could not record, with their reasons (the script picks this
            // room's).
            let reasons: Vec<(String, LeaveReason)> = self
                .presence
                .local()
                .pending_left
                .iter()
                .map(|(id, r)| (id.clone(), *r))
                .collect();
            invocation.arg(reasons.len());
            for (id, reason) in &reasons {
                invocation.arg(id).arg(reason.as_str());
            }
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
            self.register_webhook_rooms(std::slice::from_ref(room))
                .await?;
            for info in parse_infos(&removed) {
                let pending = self
                    .presence
                    .local()
                    .pending_left
                    .remove(&info.participant_id);
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
            for info in parse_infos(&added) {
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
        self.presence.local().pending_left.clear();
        if added_total > 0 || removed_total > 0 || was_lost.is_some() {
            tracing::info!(
                rooms = rooms.len(),
                re_registered = added_total,
                removed = removed_total,
                was_declared_lost = was_lost.is_some(),
                "presence re-synchronized with redis"
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
        // Both writes need memory: Redis accepts writes (again).
        self.memory_ok();
        if previous.is_none() {
            self.presence.request_sync();
        }
        Ok(())
    }

    /// Every instance registered in Redis, this one included.
    pub(super) async fn instances(&self) -> Result<Vec<String>, BusError> {
        let mut conn = self.conn.clone();
        let key = self.keys.instances();
        self.redis("list instances", async move { conn.smembers(key).await })
            .await
    }

    /// Finds instances whose heartbeat expired and cleans up after them (one cleaner each).
    async fn sweep(&self) -> Result<(), BusError> {
        let me = self.instance().to_owned();
        for other in self.instances().await?.into_iter().filter(|i| *i != me) {
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
                .presence
                .remove_instance_script
                .key(self.keys.room_participants(&room));
            invocation.key(self.keys.room_created(&room));
            self.webhook_keys(&mut invocation, &room);
            self.webhook_args(&mut invocation);
            invocation.arg(dead);
            let mut conn = self.conn.clone();
            let removed: Vec<String> = self
                .redis("remove instance", async move {
                    invocation.invoke_async(&mut conn).await
                })
                .await?;
            for info in parse_infos(&removed) {
                removed_total += 1;
                let event = RemoteEvent::Left {
                    room_id: room.clone(),
                    participant: info,
                    reason: LeaveReason::InstanceLost,
                };
                // Our own echo is ignored, so serve local participants directly.
                let ours = self.presence.local().has_room(&room);
                if ours {
                    self.deliver(event.clone());
                }
                self.publish_event(&room, &event).await?;
            }
        }
        // Every room of the dead instance, before its rooms set is forgotten: events it
        // recorded just before it died may not be registered yet.
        let dead_rooms: Vec<RoomId> = rooms.iter().filter_map(|r| RoomId::parse(r).ok()).collect();
        self.register_webhook_rooms(&dead_rooms).await?;
        let mut conn = self.conn.clone();
        let lost_key = self.keys.instance_lost(dead);
        let instances_key = self.keys.instances();
        let dead_owned = dead.to_owned();
        // Two steps: the instance's own keys share its `{instance}` slot, the registry of
        // instances lives in a slot of its own (on a cluster one pipeline may not span both).
        self.redis("forget instance", async move {
            redis::pipe()
                .set_ex(lost_key, "1", LOST_TOMBSTONE_SECS)
                .ignore()
                .del(rooms_key)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
        })
        .await?;
        let mut conn = self.conn.clone();
        self.redis("unregister instance", async move {
            conn.srem::<_, _, i64>(instances_key, dead_owned).await
        })
        .await?;
        self.metrics.presence_cleanup(removed_total);
        tracing::warn!(
            dead_instance = %dead,
            rooms = rooms.len(),
            participants = removed_total,
            "removed the presence of a dead instance"
        );
        Ok(())
    }

    /// At shutdown, after every local participant left: forget the instance, or, when
    /// records are still registered, only end the heartbeat so a live instance removes them.
    pub(super) async fn deregister(&self) {
        let me = self.instance().to_owned();
        let mut conn = self.conn.clone();
        let alive = self.keys.instance_alive(&me);
        let rooms = self.keys.instance_rooms(&me);
        let instances = self.keys.instances();
        let may_deregister = self.presence.local().may_deregister();
        if !may_deregister {
            // A drain that timed out or a leave that failed left records behind. Without the
            // rooms set and the instance entry no sweeper would ever find them (ghost seats):
            // end the heartbeat instead, so a live instance removes them as instance_lost.
            tracing::warn!(parent: &self.span, "participants still registered at shutdown; leaving their cleanup to another instance");
            let _ = self
                .redis(
                    "end heartbeat",
                    async move { conn.del::<_, i64>(alive).await },
                )
                .await;
            return;
        }
        // Participants left one by one already; forget the instance itself.
        // The instance's keys first (one slot), then its registry entry (another slot).
        let forgotten = self
            .redis("deregister instance", async move {
                redis::pipe()
                    .del(alive)
                    .ignore()
                    .del(rooms)
                    .ignore()
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await;
        if forgotten.is_ok() {
            let mut conn = self.conn.clone();
            let _ = self
                .redis("unregister instance", async move {
                    conn.srem::<_, _, i64>(instances, me).await
                })
                .await;
        }
    }
}

/// Heartbeat, resync and dead-instance sweep.
pub(super) async fn heartbeat_task(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(inner.timing.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let moved_away = std::mem::take(&mut inner.presence.local().moved_away);
        for room in moved_away {
            inner.release_room(&room).await;
        }
        if inner.heartbeat().await.is_err() {
            continue;
        }
        let needs_sync = inner.presence.local().needs_sync;
        if needs_sync {
            if let Err(e) = inner.resync().await {
                tracing::debug!(
                    error = &e as &dyn std::error::Error,
                    "presence resync failed; retrying"
                );
                continue;
            }
        }
        let settled = may_sweep(&inner.link(), Instant::now(), &inner.timing);
        if !settled {
            continue;
        }
        // Only once every live instance had a full TTL to re-register after an outage: a
        // member missing from Redis before that may merely not be back yet.
        inner.reconcile.wake_if_pending();
        if let Err(e) = inner.sweep().await {
            tracing::debug!(
                error = &e as &dyn std::error::Error,
                "dead-instance sweep failed; retrying"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::participant;

    fn info(id: &str) -> ParticipantInfo {
        participant(id, "a")
    }

    #[test]
    fn only_live_local_participants_count_as_ours_when_we_are_declared_lost() {
        let room = RoomId::parse("r").unwrap();
        let mut local = Local::default();
        assert!(!local.is_live(&room, "new"));
        local.add(&room, &info("new"));
        assert!(local.is_live(&room, "new"));
        // A participant of an earlier incarnation with the same instance id is not live here.
        assert!(!local.is_live(&room, "old"));
        assert!(!local.is_live(&RoomId::parse("other").unwrap(), "new"));
    }

    #[test]
    fn the_last_leave_forgets_the_room() {
        let room = RoomId::parse("r").unwrap();
        let mut local = Local::default();
        local.add(&room, &info("a"));
        local.add(&room, &info("b"));
        assert!(local.remove(&room, "a"));
        assert!(
            !local.remove(&room, "a"),
            "a second leave is not local any more"
        );
        assert!(local.has_room(&room));
        assert!(local.remove(&room, "b"));
        assert!(!local.has_room(&room));
    }

    #[test]
    fn a_failed_resync_keeps_everything_it_had_to_do() {
        let (r1, r2) = (RoomId::parse("r1").unwrap(), RoomId::parse("r2").unwrap());
        let mut local = Local {
            needs_sync: true,
            ..Local::default()
        };
        local.add(&r1, &info("a"));
        local.write_failed(&r2, "gone", LeaveReason::Closed);
        let (snapshot, dirty) = local.begin_resync();
        assert!(!local.needs_sync);
        assert_eq!(snapshot.keys().collect::<Vec<_>>(), [&r1]);
        assert_eq!(dirty, HashSet::from([r2.clone()]));
        // A write that fails while the resync runs is kept apart from the one it took.
        local.room_write_failed(&r1);
        local.resync_failed(dirty);
        assert!(local.needs_sync);
        assert_eq!(local.dirty, HashSet::from([r1, r2]));
        assert_eq!(local.pending_left.get("gone"), Some(&LeaveReason::Closed));
    }

    #[test]
    fn shutdown_deregisters_only_without_registered_presence() {
        let room = RoomId::parse("r").unwrap();
        let mut local = Local::default();
        assert!(local.may_deregister());
        local.rooms.entry(room.clone()).or_default();
        assert!(local.may_deregister(), "an emptied room holds nothing");
        local.add(&room, &info("p"));
        assert!(!local.may_deregister(), "a session still open");
        let mut failed_leave = Local::default();
        failed_leave.write_failed(&room, "p", LeaveReason::Closed);
        assert!(!failed_leave.may_deregister(), "a leave Redis never saw");
    }
}
