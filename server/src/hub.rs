//! The local registry: which participants of which rooms this instance
//! holds, each with its bounded outbound queue (an [`Outbox`], see
//! [`crate::outbox`]), plus what it knows of remote members — the one record
//! of who is in a room on other instances, which the bus updates through
//! [`LocalHub`] and asks for when it reconciles with its store. Fan-out
//! pushes to queues and never waits on a reader;
//! the hub does no I/O and never talks to the bus (the bus talks to it
//! through [`LocalHub`]).
//!
//! Rooms are spread over [`SHARDS`] locks by their id, so senders in different
//! rooms do not wait on each other. Everything about one room happens under its
//! shard's lock; no code holds two shard locks at once (the whole-hub walks,
//! [`Hub::drain`] and [`Hub::counts`], take them one after another).

use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

// foldhash instead of SipHash (2.3 % of a relay's instructions): seeded per
// process, so a client that picks room or participant ids cannot aim at one bucket.
use foldhash::{HashMap, HashMapExt, HashSet};

use rand::Rng;

use crate::bus::{LocalHub, RelayMessage, RemoteEvent, RemoteSender, RoomAction};
use crate::metrics::Metrics;
use crate::outbox::{CloseCause, Delivery, Outbox, Push};
use crate::protocol::{self, Frame};
use crate::room::{LeaveReason, ParticipantInfo, RoomId};

#[derive(Debug)]
struct Member {
    info: ParticipantInfo,
    /// `Some` for participants held by this instance.
    outbox: Option<Arc<Outbox>>,
}

#[derive(Debug, Default)]
struct RoomMembers {
    members: HashMap<String, Member>,
    /// Local participants whose bus join is under way ([`LocalHub::expect_join`]): the room
    /// is kept, and other instances' presence recorded, from before the bus reads the room's
    /// members until they register, so an event published in that window is not lost.
    joining: HashSet<String>,
    /// Remote participants that left while a join was under way: the member list that join
    /// brings may still name them, and they must not come back with it.
    departed: HashSet<String>,
}

impl RoomMembers {
    fn locals(&self) -> impl Iterator<Item = (&String, &Arc<Outbox>)> {
        self.members
            .iter()
            .filter_map(|(id, m)| m.outbox.as_ref().map(|o| (id, o)))
    }

    fn has_locals(&self) -> bool {
        self.members.values().any(|m| m.outbox.is_some())
    }

    /// Whether the room is still needed: a local member, or one joining.
    fn in_use(&self) -> bool {
        !self.joining.is_empty() || self.has_locals()
    }

    /// Ends one pending join; the last one forgets the departures it had to remember.
    fn end_join(&mut self, participant_id: &str) {
        self.joining.remove(participant_id);
        if self.joining.is_empty() {
            self.departed.clear();
        }
    }
}

fn lock(shard: &Mutex<Rooms>) -> MutexGuard<'_, Rooms> {
    // Plain data: a panic elsewhere cannot leave it inconsistent in a harmful way.
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a relayed message has to go after local delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Every recipient was local and has been served.
    LocalOnly,
    /// Some recipient may be on another instance: publish on the bus.
    Publish,
    /// `to` names nobody in the room.
    TargetNotFound,
}

/// Locks the rooms are spread over (a power of two).
const SHARDS: usize = 16;

type Rooms = HashMap<RoomId, RoomMembers>;

/// The local room registry.
#[derive(Debug)]
pub struct Hub {
    shards: Box<[Mutex<Rooms>]>,
    /// Picks a room's shard.
    shard_hasher: foldhash::fast::RandomState,
    metrics: Arc<Metrics>,
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(Rooms::new())).collect(),
            shard_hasher: foldhash::fast::RandomState::default(),
            metrics,
        }
    }

    /// The shard that holds `room` (and every other room that hashes there).
    fn rooms(&self, room: &RoomId) -> MutexGuard<'_, Rooms> {
        // The low bits of a foldhash are as good as the high ones.
        let i = (self.shard_hasher.hash_one(room) as usize) & (SHARDS - 1);
        lock(&self.shards[i])
    }

    /// Every shard, one at a time.
    fn each_shard(&self) -> impl Iterator<Item = MutexGuard<'_, Rooms>> {
        self.shards.iter().map(lock)
    }

    /// Pushes a presence frame to every local member except `except`.
    fn announce(&self, room: &RoomMembers, except: &str, frame: &Frame) {
        for (id, outbox) in room.locals() {
            if id != except && outbox.push(frame.clone(), Delivery::Presence) == Push::Dropped {
                self.metrics.presence_dropped();
            }
        }
    }

    /// Every member of a room (local and remote), in room-state order. Borrowed:
    /// cloning the records for each `room-state` was 17 % of a join's instructions.
    fn everyone(room: &RoomMembers) -> Vec<&ParticipantInfo> {
        let mut everyone: Vec<&ParticipantInfo> = room.members.values().map(|m| &m.info).collect();
        crate::room::sort_by_join(&mut everyone);
        everyone
    }

    /// Queues a fresh `room-state` for a local participant whose presence
    /// updates were dropped ([`Next::Resync`]). Built and queued under the
    /// room lock, so every later presence update is queued after it and
    /// every earlier one is reflected in it.
    pub fn resync(&self, room_id: &RoomId, participant_id: &str) {
        let rooms = self.rooms(room_id);
        let Some(room) = rooms.get(room_id) else {
            return;
        };
        let Some(Member {
            info,
            outbox: Some(outbox),
        }) = room.members.get(participant_id)
        else {
            return;
        };
        let frame = protocol::encode_room_state(room_id.as_str(), info, &Self::everyone(room));
        // Dropped again (the queue filled up meanwhile): the flag is set
        // again and the next catch-up retries.
        if outbox.push(frame, Delivery::Presence) == Push::Queued {
            self.metrics.presence_resynced();
        } else {
            self.metrics.presence_dropped();
        }
    }

    /// Members of a room this instance knows of, local and remote: the
    /// recipients of a broadcast are this minus its sender.
    pub fn member_count(&self, room_id: &RoomId) -> usize {
        self.rooms(room_id)
            .get(room_id)
            .map_or(0, |r| r.members.len())
    }

    /// Registers a local participant after the bus accepted its join:
    /// records the members of other instances the bus reported, queues
    /// `room-state` (always its first message) and tells the other local
    /// members `user-joined`.
    pub fn register(
        &self,
        room_id: &RoomId,
        me: &ParticipantInfo,
        outbox: Arc<Outbox>,
        participants: &[ParticipantInfo],
    ) {
        let mut rooms = self.rooms(room_id);
        let room = rooms.entry(room_id.clone()).or_default();
        // Participants of this instance are known exactly here: one that the
        // bus listed but that is not registered yet (joining concurrently)
        // announces itself when it registers, and one that already left must
        // not reappear. So only other instances' entries come from the bus.
        for p in participants {
            if p.participant_id != me.participant_id
                && p.instance_id != me.instance_id
                && !room.departed.contains(&p.participant_id)
            {
                room.members
                    .entry(p.participant_id.clone())
                    .or_insert_with(|| Member {
                        info: p.clone(),
                        outbox: None,
                    });
            }
        }
        room.end_join(&me.participant_id);
        room.members.insert(
            me.participant_id.clone(),
            Member {
                info: me.clone(),
                outbox: Some(outbox.clone()),
            },
        );
        // Still under the lock, so nothing can be queued ahead of room-state.
        outbox.push(
            protocol::encode_room_state(room_id.as_str(), me, &Self::everyone(room)),
            Delivery::Must,
        );
        let frame = protocol::encode_user_joined(room_id.as_str(), me);
        self.announce(room, &me.participant_id, &frame);
    }

    /// Removes a local participant and tells the other local members
    /// `user-left` with `reason`. Forgets the room once no local member is left.
    /// Returns the participant's record as the hub last knew it (the server API may have
    /// replaced its metadata since it joined).
    pub fn unregister(
        &self,
        room_id: &RoomId,
        participant_id: &str,
        reason: LeaveReason,
    ) -> Option<ParticipantInfo> {
        let mut rooms = self.rooms(room_id);
        let room = rooms.get_mut(room_id)?;
        let removed = room.members.remove(participant_id).map(|member| {
            let frame = protocol::encode_user_left(room_id.as_str(), &member.info, reason);
            self.announce(room, participant_id, &frame);
            member.info
        });
        if !room.in_use() {
            rooms.remove(room_id);
        }
        removed
    }

    /// Applies a server API action to the local participants of its room (the bus carries it
    /// to the other instances); returns how many local participants it reached.
    pub fn apply(&self, action: &RoomAction) -> usize {
        let mut rooms = self.rooms(action.room_id());
        match rooms.get_mut(action.room_id()) {
            Some(room) => self.apply_in(room, action),
            None => 0,
        }
    }

    fn apply_in(&self, room: &mut RoomMembers, action: &RoomAction) -> usize {
        match action {
            RoomAction::Remove { participant_id, .. } => match room.members.get(participant_id) {
                Some(Member {
                    outbox: Some(outbox),
                    ..
                }) => {
                    // The writer flushes what is queued, then closes 4001.
                    outbox.close_after(None, CloseCause::Removed);
                    1
                }
                _ => 0,
            },
            RoomAction::Close { .. } => {
                let mut n = 0;
                for (_, outbox) in room.locals() {
                    outbox.close_after(None, CloseCause::RoomClosed);
                    n += 1;
                }
                n
            }
            RoomAction::Message { to, frame, .. } => {
                let mut n = 0;
                for (id, outbox) in room.locals() {
                    if to.as_ref().is_none_or(|to| to == id) {
                        outbox.push(frame.clone(), Delivery::Must);
                        n += 1;
                    }
                }
                n
            }
            RoomAction::Updated {
                room_id,
                participant,
            } => {
                let Some(member) = room.members.get_mut(&participant.participant_id) else {
                    return 0;
                };
                member.info = participant.clone();
                let frame = protocol::encode_participant_updated(room_id.as_str(), participant);
                // The participant itself hears it too: its metadata changed.
                self.announce(room, "", &frame);
                room.locals().count()
            }
        }
    }

    /// Delivers a relayed message from a local sender to local recipients and
    /// says whether the bus must carry it further.
    pub fn relay_local(&self, msg: &RelayMessage) -> Route {
        let rooms = self.rooms(&msg.room_id);
        let Some(room) = rooms.get(&msg.room_id) else {
            return Route::TargetNotFound;
        };
        match &msg.to {
            Some(to) => match room.members.get(to) {
                None => Route::TargetNotFound,
                Some(Member {
                    outbox: Some(outbox),
                    ..
                }) => match outbox.push(msg.frame.clone(), Delivery::Must) {
                    // The target's connection has already closed and it is
                    // about to leave: tell the sender rather than lose the
                    // message silently.
                    Push::Dropped => Route::TargetNotFound,
                    Push::Queued | Push::Overflow => {
                        self.metrics.relayed(msg.kind.as_str(), 1);
                        Route::LocalOnly
                    }
                },
                Some(Member { outbox: None, .. }) => {
                    self.metrics.relayed(msg.kind.as_str(), 0);
                    Route::Publish
                }
            },
            None => {
                let n = self.fan_out(room, msg);
                self.metrics.relayed(msg.kind.as_str(), n);
                if room.members.values().any(|m| m.outbox.is_none()) {
                    Route::Publish
                } else {
                    Route::LocalOnly
                }
            }
        }
    }

    /// Pushes a broadcast to every local member except its sender; returns the count.
    fn fan_out(&self, room: &RoomMembers, msg: &RelayMessage) -> usize {
        let mut n = 0;
        for (id, outbox) in room.locals() {
            if *id != msg.sender_id {
                outbox.push(msg.frame.clone(), Delivery::Must);
                n += 1;
            }
        }
        n
    }

    /// Tells every local participant to reconnect after a random delay in
    /// `[0, window)` and marks its connection draining.
    pub fn drain(&self, window: Duration) {
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let mut rng = rand::rng();
        for rooms in self.each_shard() {
            for (room_id, room) in rooms.iter() {
                for (_, outbox) in room.locals() {
                    let after_ms = if window_ms == 0 {
                        0
                    } else {
                        rng.random_range(0..window_ms)
                    };
                    outbox.close_after(
                        Some(protocol::encode_reconnect(room_id.as_str(), after_ms)),
                        CloseCause::Draining,
                    );
                }
            }
        }
    }

    /// (rooms with local participants, local participants).
    pub fn counts(&self) -> (usize, usize) {
        self.each_shard()
            .fold((0, 0), |(n_rooms, n_participants), rooms| {
                let participants: usize = rooms.values().map(|r| r.locals().count()).sum();
                (n_rooms + rooms.len(), n_participants + participants)
            })
    }
}

impl LocalHub for Hub {
    fn deliver(&self, event: RemoteEvent) {
        let mut rooms = self.rooms(event.room_id());
        let Some(room) = rooms.get_mut(event.room_id()) else {
            return;
        };
        match event {
            RemoteEvent::Action(action) => {
                self.apply_in(room, &action);
            }
            RemoteEvent::Relay(msg) => match &msg.to {
                Some(to) => {
                    if let Some(Member {
                        outbox: Some(outbox),
                        ..
                    }) = room.members.get(to)
                    {
                        outbox.push(msg.frame.clone(), Delivery::Must);
                        self.metrics.relayed(msg.kind.as_str(), 1);
                    }
                }
                None => {
                    let n = self.fan_out(room, &msg);
                    self.metrics.relayed(msg.kind.as_str(), n);
                }
            },
            RemoteEvent::Joined {
                room_id,
                participant,
            } => {
                if room.members.contains_key(&participant.participant_id) {
                    return;
                }
                let frame = protocol::encode_user_joined(room_id.as_str(), &participant);
                room.members.insert(
                    participant.participant_id.clone(),
                    Member {
                        info: participant,
                        outbox: None,
                    },
                );
                self.announce(room, "", &frame);
            }
            RemoteEvent::Left {
                room_id,
                participant,
                reason,
            } => {
                // Only remote members: a local one leaves through `unregister`.
                let is_remote = room
                    .members
                    .get(&participant.participant_id)
                    .is_some_and(|m| m.outbox.is_none());
                if !room.joining.is_empty() {
                    room.departed.insert(participant.participant_id.clone());
                }
                if is_remote {
                    if let Some(member) = room.members.remove(&participant.participant_id) {
                        // What the room was told at the join, not what the leave carries.
                        let frame =
                            protocol::encode_user_left(room_id.as_str(), &member.info, reason);
                        self.announce(room, "", &frame);
                    }
                }
            }
        }
    }

    fn expect_join(&self, room: &RoomId, participant_id: &str) {
        self.rooms(room)
            .entry(room.clone())
            .or_default()
            .joining
            .insert(participant_id.to_owned());
    }

    fn join_failed(&self, room_id: &RoomId, participant_id: &str) {
        let mut rooms = self.rooms(room_id);
        if let Some(room) = rooms.get_mut(room_id) {
            room.end_join(participant_id);
            if !room.in_use() {
                rooms.remove(room_id);
            }
        }
    }

    fn relay_sender(&self, room: &RoomId, participant_id: &str, instance: &str) -> RemoteSender {
        let rooms = self.rooms(room);
        // A room kept only for a join under way has nobody to deliver to yet.
        let Some(members) = rooms.get(room).filter(|r| r.has_locals()) else {
            return RemoteSender::NoLocalRoom;
        };
        match members.members.get(participant_id) {
            Some(Member { info, outbox: None }) if info.instance_id == instance => {
                RemoteSender::Member
            }
            _ => RemoteSender::Unknown,
        }
    }

    fn remote_members(&self, room: &RoomId) -> Vec<ParticipantInfo> {
        let mut remote: Vec<ParticipantInfo> = self
            .rooms(room)
            .get(room)
            .map(|r| {
                r.members
                    .values()
                    .filter(|m| m.outbox.is_none())
                    .map(|m| m.info.clone())
                    .collect()
            })
            .unwrap_or_default();
        crate::room::sort_by_join(&mut remote);
        remote
    }
}

#[cfg(test)]
#[path = "hub_tests.rs"]
mod tests;
