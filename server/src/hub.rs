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
//!
//! Every local participant has an [`Inbox`]: the messages it must get (relays,
//! server messages) are numbered with its delivery `seq` and kept there, under the
//! room lock, before they are queued on its connection. A participant whose
//! connection was lost stays a member, *detached* (no connection), until a
//! resume attaches a new connection ([`Hub::resume`]: `room-state`, then the
//! missed messages, then live traffic, all queued under the lock) or its grace
//! window ends ([`Hub::expire`]). Each attachment has a generation; a session
//! acts on its participant only while its generation is current, so a
//! connection taken over by a resume can no longer make it leave.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

// foldhash instead of SipHash (2.3 % of a relay's instructions): seeded per
// process, so a client that picks room or participant ids cannot aim at one bucket.
use foldhash::{HashMap, HashMapExt, HashSet};

use rand::Rng;

use crate::bus::{LocalHub, RelayMessage, RelayRef, RemoteEvent, RemoteSender, RoomAction};
use crate::inbox::{Admit, Inbox, InboxLimits, ReplayError};
use crate::metrics::Metrics;
use crate::outbox::{CloseCause, Delivery, Outbox, Push};
use crate::protocol::{self, Frame, ResumeView};
use crate::resume::Refusal;
use crate::room::{LeaveReason, ParticipantInfo, RoomId};

/// Inbox bounds of participants registered without their own ([`Hub::register`]).
const DEFAULT_INBOX: InboxLimits = InboxLimits {
    max_messages: 256,
    max_bytes: 1024 * 1024,
};

#[derive(Debug)]
struct Member {
    info: ParticipantInfo,
    /// `Some` for participants held by this instance.
    local: Option<Local>,
}

impl Member {
    /// The connection of a local, attached member.
    fn outbox(&self) -> Option<&Arc<Outbox>> {
        self.local.as_ref().and_then(|l| l.outbox.as_ref())
    }

    fn is_remote(&self) -> bool {
        self.local.is_none()
    }
}

/// A participant this instance holds.
#[derive(Debug)]
struct Local {
    /// Its connection's queue; `None` while it is detached, waiting for a resume.
    outbox: Option<Arc<Outbox>>,
    numbering: Numbering,
    /// Of the current attachment (see the module documentation).
    generation: u64,
    /// Sent in every `room-state`; `None` when resuming is off.
    resume_token: Option<String>,
}

/// Who numbers a local participant's messages.
#[derive(Debug)]
enum Numbering {
    /// This hub, keeping them in memory (the in-process bus).
    Inbox(Inbox),
    /// The bus, keeping them in its store ([`crate::bus::Bus::numbers_deliveries`]): the hub
    /// delivers what comes numbered, in order.
    Bus(BusSeq),
}

/// A participant's delivery seqs as the bus gives them and as its client sees them. They are
/// the same until the bus's counter starts again from 1 (Redis restarted empty): from then on
/// the client's seqs go on from the last one it got, so they never go back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct BusSeq {
    /// The last seq the client was given.
    delivered: u64,
    /// The last seq the bus gave.
    last_bus: u64,
    /// Client seq = bus seq + offset.
    offset: u64,
}

impl BusSeq {
    /// Numbering from `seq`, the last one the client had (a join: 0, a resume: the bus's).
    fn at(seq: u64) -> Self {
        BusSeq {
            delivered: seq,
            last_bus: seq,
            offset: 0,
        }
    }

    /// The client seq of the next live message, which the bus numbered `bus_seq`. Live
    /// messages come in the bus's order with no repeat, so a seq that is not above the last
    /// one means its counter started again.
    fn next(&mut self, bus_seq: u64) -> u64 {
        if bus_seq <= self.last_bus {
            self.offset = self.delivered;
        }
        self.last_bus = bus_seq;
        self.delivered = self.offset + bus_seq;
        self.delivered
    }
}

/// What the hub does with a must-deliver message for one local member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivered {
    /// Numbered, kept, and queued on the connection (or held for a resume).
    Kept,
    /// A re-send of a message this member already got.
    Duplicate,
    /// The connection has closed and the participant cannot resume: lost with it.
    Gone,
}

/// Numbers `frame` for `local`, keeps it and queues it on its connection.
fn deliver_to(
    metrics: &Metrics,
    local: &mut Local,
    sender: Option<(&str, u64)>,
    frame: &Frame,
) -> Delivered {
    let Numbering::Inbox(inbox) = &mut local.numbering else {
        // Numbered by the bus: only what the bus carries is kept. A message queued here
        // directly (a server message) is delivered as it is.
        if let Some(outbox) = &local.outbox {
            outbox.push(frame.clone(), Delivery::Must);
        }
        return Delivered::Kept;
    };
    let (admit, evicted) = inbox.admit(sender, frame);
    if evicted > 0 && local.outbox.is_none() {
        metrics.inbox_overflowed(evicted);
    }
    match admit {
        Admit::Duplicate => Delivered::Duplicate,
        Admit::Deliver(seq) => match &local.outbox {
            Some(outbox) => match outbox.push(frame.with_seq(seq), Delivery::Must) {
                Push::Dropped if local.resume_token.is_none() => Delivered::Gone,
                _ => Delivered::Kept,
            },
            None => Delivered::Kept,
        },
    }
}

fn sender_of(msg: RelayRef<'_>) -> Option<(&str, u64)> {
    msg.sender_seq.map(|seq| (msg.sender_id, seq))
}

/// How a local participant joins: its connection, inbox bounds and resume token.
#[derive(Debug)]
pub struct Attach {
    pub outbox: Arc<Outbox>,
    pub inbox: InboxLimits,
    pub resume_token: Option<String>,
    /// The bus numbers this participant's messages (and keeps its inbox).
    pub numbered_by_bus: bool,
}

/// A session's claim on its participant: the participant id and the generation of
/// the attachment it made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub participant_id: String,
    pub generation: u64,
}

/// The held messages after `after` in seq order, each with its seq, marking them delivered.
fn take_in_order(local: &mut Local, mut held: Vec<(u64, Frame)>, after: u64) -> Vec<Frame> {
    held.sort_by_key(|(seq, _)| *seq);
    let mut last = after;
    let mut out = Vec::new();
    for (seq, frame) in held {
        if seq > last {
            out.push(frame.with_seq(seq));
            last = seq;
        }
    }
    if let Numbering::Bus(seqs) = &mut local.numbering {
        *seqs = BusSeq::at(seqs.delivered.max(last));
    }
    out
}

/// A refused resume: why, and the held participant that left because of it (for the bus).
#[derive(Debug)]
pub struct ResumeRefused {
    pub refusal: Refusal,
    pub left: Option<Box<ParticipantInfo>>,
}

impl ResumeRefused {
    fn only(refusal: Refusal) -> Self {
        ResumeRefused {
            refusal,
            left: None,
        }
    }
}

/// The session no longer owns its participant: a resume took it over (or it left).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotOwner;

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
    /// Numbered messages for participants whose join or resume is under way, held until they
    /// register: the bus may deliver to them before.
    held: HashMap<String, Vec<(u64, Frame)>>,
}

impl RoomMembers {
    /// Local members with a connection.
    fn locals(&self) -> impl Iterator<Item = (&String, &Arc<Outbox>)> {
        self.members
            .iter()
            .filter_map(|(id, m)| m.outbox().map(|o| (id, o)))
    }

    /// Local members, attached or detached.
    fn has_locals(&self) -> bool {
        self.members.values().any(|m| m.local.is_some())
    }

    /// The local member `id` whose attachment is `generation`.
    fn owned(&mut self, id: &str, generation: u64) -> Option<&mut Local> {
        self.members
            .get_mut(id)
            .and_then(|m| m.local.as_mut())
            .filter(|l| l.generation == generation)
    }

    /// Whether the room is still needed: a local member, or one joining.
    fn in_use(&self) -> bool {
        !self.joining.is_empty() || self.has_locals()
    }

    /// Ends one pending join; the last one forgets the departures it had to remember.
    fn end_join(&mut self, participant_id: &str) {
        self.joining.remove(participant_id);
        self.held.remove(participant_id);
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
    /// Source of attachment generations.
    generations: AtomicU64,
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(Rooms::new())).collect(),
            shard_hasher: foldhash::fast::RandomState::default(),
            metrics,
            generations: AtomicU64::new(1),
        }
    }

    fn next_generation(&self) -> u64 {
        self.generations.fetch_add(1, Ordering::Relaxed)
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

    /// Records the members of other instances that the bus listed for `me`'s join or resume.
    /// Participants of this instance are known exactly here: one that the bus listed but that
    /// is not registered yet (joining concurrently) announces itself when it registers, and
    /// one that already left must not reappear. So only other instances' entries come from
    /// the bus. One this instance did not know yet is announced to the local members now: its
    /// own `user-joined`, arriving later, finds it known and says nothing, so otherwise they
    /// would never hear of it.
    fn learn_listed(
        &self,
        room_id: &RoomId,
        room: &mut RoomMembers,
        me: &ParticipantInfo,
        listed: &[ParticipantInfo],
    ) {
        let mut learned: Vec<&ParticipantInfo> = Vec::new();
        for p in listed {
            if p.participant_id == me.participant_id
                || p.instance_id == me.instance_id
                || room.departed.contains(&p.participant_id)
                || room.members.contains_key(&p.participant_id)
            {
                continue;
            }
            room.members.insert(
                p.participant_id.clone(),
                Member {
                    info: p.clone(),
                    local: None,
                },
            );
            learned.push(p);
        }
        crate::room::sort_by_join(&mut learned);
        for p in learned {
            let frame = protocol::encode_user_joined(room_id.as_str(), p);
            self.announce(room, &me.participant_id, &frame);
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
        let Some(member) = room.members.get(participant_id) else {
            return;
        };
        let (Some(outbox), Some(local)) = (member.outbox(), member.local.as_ref()) else {
            return;
        };
        let view = ResumeView {
            token: local.resume_token.as_deref(),
            resumed: false,
        };
        let frame = protocol::encode_room_state(
            room_id.as_str(),
            &member.info,
            &Self::everyone(room),
            view,
        );
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
    ) -> Claim {
        let attach = Attach {
            outbox,
            inbox: DEFAULT_INBOX,
            resume_token: None,
            numbered_by_bus: false,
        };
        self.join(room_id, me, attach, participants)
    }

    /// [`register`](Self::register) with the participant's own inbox bounds and resume
    /// token; returns the session's claim on it.
    pub fn join(
        &self,
        room_id: &RoomId,
        me: &ParticipantInfo,
        attach: Attach,
        participants: &[ParticipantInfo],
    ) -> Claim {
        let generation = self.next_generation();
        let mut rooms = self.rooms(room_id);
        let room = rooms.entry(room_id.clone()).or_default();
        self.learn_listed(room_id, room, me, participants);
        let held = room.held.remove(&me.participant_id).unwrap_or_default();
        room.end_join(&me.participant_id);
        let Attach {
            outbox,
            inbox,
            resume_token,
            numbered_by_bus,
        } = attach;
        let numbering = if numbered_by_bus {
            Numbering::Bus(BusSeq::at(0))
        } else {
            Numbering::Inbox(Inbox::new(inbox))
        };
        let mut local = Local {
            outbox: Some(outbox.clone()),
            numbering,
            generation,
            resume_token: resume_token.clone(),
        };
        // Listed in its own room-state; attached below.
        room.members.insert(
            me.participant_id.clone(),
            Member {
                info: me.clone(),
                local: None,
            },
        );
        // Still under the lock, so nothing can be queued ahead of room-state.
        let view = ResumeView {
            token: resume_token.as_deref(),
            resumed: false,
        };
        outbox.push(
            protocol::encode_room_state(room_id.as_str(), me, &Self::everyone(room), view),
            Delivery::Must,
        );
        // Numbered by the bus before it registered here (a few at most).
        for frame in take_in_order(&mut local, held, 0) {
            outbox.push(frame, Delivery::Must);
        }
        if let Some(member) = room.members.get_mut(&me.participant_id) {
            member.local = Some(local);
        }
        let frame = protocol::encode_user_joined(room_id.as_str(), me);
        self.announce(room, &me.participant_id, &frame);
        Claim {
            participant_id: me.participant_id.clone(),
            generation,
        }
    }

    /// Attaches `outbox` to the held participant `participant_id` of `user_id`, which
    /// last got delivery `last_seq`: queues `room-state` (`resumed: true`) and every
    /// message after `last_seq`, and closes a connection still attached to it
    /// ([`CloseCause::Superseded`]). The room is told nothing: for it the participant
    /// never left. A participant whose missed messages are no longer all kept leaves
    /// (`user-left` reason `closed`) and is returned with the refusal, for the bus.
    pub fn resume(
        &self,
        room_id: &RoomId,
        participant_id: &str,
        user_id: &str,
        last_seq: u64,
        outbox: Arc<Outbox>,
    ) -> Result<(ParticipantInfo, Claim), ResumeRefused> {
        let generation = self.next_generation();
        let mut rooms = self.rooms(room_id);
        let Some(room) = rooms.get_mut(room_id) else {
            return Err(ResumeRefused::only(Refusal::Expired));
        };
        // Owned: the member is changed below (a resume is rare; the copy is cheap).
        let everyone: Vec<ParticipantInfo> = Self::everyone(room).into_iter().cloned().collect();
        let Some(member) = room.members.get_mut(participant_id) else {
            return Err(ResumeRefused::only(Refusal::Expired));
        };
        if member.info.user_id != user_id {
            return Err(ResumeRefused::only(Refusal::Invalid));
        }
        let Some(local) = member.local.as_mut() else {
            // Held by another instance.
            return Err(ResumeRefused::only(Refusal::Expired));
        };
        let Numbering::Inbox(inbox) = &local.numbering else {
            // The bus keeps this participant's inbox: only `adopt` resumes it.
            return Err(ResumeRefused::only(Refusal::Expired));
        };
        let replay = match inbox.replay_after(last_seq) {
            Ok(replay) => replay,
            Err(ReplayError::Ahead) => return Err(ResumeRefused::only(Refusal::Invalid)),
            Err(ReplayError::Overflow) => {
                let info = self.remove_overflowed_in(&mut rooms, room_id, participant_id);
                return Err(ResumeRefused {
                    refusal: Refusal::Overflow,
                    left: info.map(Box::new),
                });
            }
        };
        if let Some(old) = local.outbox.take() {
            old.close_after(None, CloseCause::Superseded);
        }
        local.generation = generation;
        let view = ResumeView {
            token: local.resume_token.as_deref(),
            resumed: true,
        };
        let state = protocol::encode_room_state(room_id.as_str(), &member.info, &everyone, view);
        self.metrics.replayed(replay.len());
        outbox.preload(std::iter::once(state).chain(replay));
        local.outbox = Some(outbox);
        Ok((
            member.info.clone(),
            Claim {
                participant_id: participant_id.to_owned(),
                generation,
            },
        ))
    }

    /// The session with `claim` lost its connection: the participant stays in the room,
    /// detached, for a resume. `Err` when a resume has taken it over already.
    pub fn detach(&self, room_id: &RoomId, claim: &Claim) -> Result<(), NotOwner> {
        let mut rooms = self.rooms(room_id);
        let local = rooms
            .get_mut(room_id)
            .and_then(|r| r.owned(&claim.participant_id, claim.generation))
            .ok_or(NotOwner)?;
        local.outbox = None;
        Ok(())
    }

    /// The grace window of a detached participant ended: if no resume attached it since
    /// `claim`, it leaves (`user-left` reason `timeout`) and is returned, for the bus.
    pub fn expire(&self, room_id: &RoomId, claim: &Claim) -> Option<ParticipantInfo> {
        let mut rooms = self.rooms(room_id);
        let still_detached = rooms
            .get_mut(room_id)
            .and_then(|r| r.owned(&claim.participant_id, claim.generation))
            .is_some_and(|l| l.outbox.is_none());
        if !still_detached {
            return None;
        }
        self.remove_member(
            &mut rooms,
            room_id,
            &claim.participant_id,
            LeaveReason::Timeout,
        )
    }

    /// Every detached participant leaves with `reason` (the server is stopping: nobody will
    /// resume them here); returned for the bus.
    pub fn release_detached(&self, reason: LeaveReason) -> Vec<(RoomId, ParticipantInfo)> {
        let mut out = Vec::new();
        for mut rooms in self.each_shard() {
            let detached: Vec<(RoomId, String)> = rooms
                .iter()
                .flat_map(|(room_id, room)| {
                    room.members
                        .iter()
                        .filter(|(_, m)| m.local.as_ref().is_some_and(|l| l.outbox.is_none()))
                        .map(move |(id, _)| (room_id.clone(), id.clone()))
                })
                .collect();
            for (room_id, id) in detached {
                if let Some(info) = self.remove_member(&mut rooms, &room_id, &id, reason) {
                    out.push((room_id, info));
                }
            }
        }
        out
    }

    /// A resume of `participant_id` was refused `resume_overflow` (it missed more than its
    /// inbox kept, here or in the bus' store): nobody will resume it, so it leaves at once —
    /// a connection still attached to it closes, the local members see `user-left` reason
    /// `closed` — and is returned as the hub knew it (`None` when it was not here). Leaving
    /// the bus is the caller's.
    pub fn remove_overflowed(
        &self,
        room_id: &RoomId,
        participant_id: &str,
    ) -> Option<ParticipantInfo> {
        let mut rooms = self.rooms(room_id);
        self.remove_overflowed_in(&mut rooms, room_id, participant_id)
    }

    fn remove_overflowed_in(
        &self,
        rooms: &mut HashMap<RoomId, RoomMembers>,
        room_id: &RoomId,
        participant_id: &str,
    ) -> Option<ParticipantInfo> {
        if let Some(old) = rooms
            .get(room_id)
            .and_then(|r| r.members.get(participant_id))
            .and_then(|m| m.local.as_ref())
            .and_then(|l| l.outbox.as_ref())
        {
            old.close_after(None, CloseCause::Superseded);
        }
        self.remove_member(rooms, room_id, participant_id, LeaveReason::Closed)
    }

    /// Removes a member, tells the local members `user-left`, forgets the room once no
    /// local member is left; the member's record as the hub last knew it.
    fn remove_member(
        &self,
        rooms: &mut HashMap<RoomId, RoomMembers>,
        room_id: &RoomId,
        participant_id: &str,
        reason: LeaveReason,
    ) -> Option<ParticipantInfo> {
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

    /// A resume of `participant_id` through the bus is under way: numbered messages for it
    /// are held from now on (the bus subscribes the room before it adopts the participant),
    /// and the room is kept, as for a join.
    pub fn expect_adopt(&self, room_id: &RoomId, participant_id: &str) {
        let mut rooms = self.rooms(room_id);
        let room = rooms.entry(room_id.clone()).or_default();
        room.joining.insert(participant_id.to_owned());
        room.held.insert(participant_id.to_owned(), Vec::new());
    }

    /// Ends an [`expect_adopt`](Self::expect_adopt) whose resume did not happen.
    pub fn adopt_failed(&self, room_id: &RoomId, participant_id: &str) {
        LocalHub::join_failed(self, room_id, participant_id);
    }

    /// The bus adopted `adopted` for a resume on this instance: attaches `attach`'s
    /// connection (closing one still attached here), queues `room-state` (`resumed: true`),
    /// the replay (the seqs up to `adopted.last_seq`) and what arrived meanwhile. The room is
    /// told nothing.
    pub fn attach_adopted(
        &self,
        room_id: &RoomId,
        adopted: &crate::bus::Adopted,
        attach: Attach,
    ) -> Claim {
        let generation = self.next_generation();
        let me = &adopted.participant;
        let mut rooms = self.rooms(room_id);
        let room = rooms.entry(room_id.clone()).or_default();
        self.learn_listed(room_id, room, me, &adopted.participants);
        let held = room.held.remove(&me.participant_id).unwrap_or_default();
        room.end_join(&me.participant_id);
        if let Some(old) = room
            .members
            .get_mut(&me.participant_id)
            .and_then(|m| m.local.as_mut())
            .and_then(|l| l.outbox.take())
        {
            old.close_after(None, CloseCause::Superseded);
        }
        let mut local = Local {
            outbox: Some(attach.outbox.clone()),
            numbering: Numbering::Bus(BusSeq::at(adopted.last_seq)),
            generation,
            resume_token: attach.resume_token,
        };
        room.members.insert(
            me.participant_id.clone(),
            Member {
                info: me.clone(),
                local: None,
            },
        );
        let view = ResumeView {
            token: local.resume_token.as_deref(),
            resumed: true,
        };
        let mut first = vec![protocol::encode_room_state(
            room_id.as_str(),
            me,
            &Self::everyone(room),
            view,
        )];
        let replay_from = adopted.last_seq - adopted.replay.len() as u64;
        first.extend(
            adopted
                .replay
                .iter()
                .zip(replay_from + 1..)
                .map(|(frame, seq)| frame.with_seq(seq)),
        );
        self.metrics.replayed(adopted.replay.len());
        first.extend(take_in_order(&mut local, held, adopted.last_seq));
        attach.outbox.preload(first);
        if let Some(member) = room.members.get_mut(&me.participant_id) {
            member.local = Some(local);
        }
        Claim {
            participant_id: me.participant_id.clone(),
            generation,
        }
    }

    /// Who a relay goes to, every instance's participants: `None` when `to` names nobody.
    pub fn recipients(&self, msg: &RelayMessage) -> Option<Vec<String>> {
        let rooms = self.rooms(&msg.room_id);
        let room = rooms.get(&msg.room_id)?;
        match &msg.to {
            Some(to) => room.members.contains_key(to).then(|| vec![to.clone()]),
            None => Some(
                room.members
                    .keys()
                    .filter(|id| **id != msg.sender_id)
                    .cloned()
                    .collect(),
            ),
        }
    }

    /// Whether this instance holds `participant_id` (attached or detached).
    pub fn is_local(&self, room_id: &RoomId, participant_id: &str) -> bool {
        self.rooms(room_id)
            .get(room_id)
            .and_then(|r| r.members.get(participant_id))
            .is_some_and(|m| m.local.is_some())
    }

    /// Delivers a relay the bus numbered to the local recipients it names, in seq order:
    /// what was delivered already is skipped, what is for a join or resume under way held.
    fn deliver_numbered(
        &self,
        room: &mut RoomMembers,
        msg: &RelayMessage,
        seqs: &std::collections::BTreeMap<String, u64>,
    ) {
        let mut n = 0;
        for (id, seq) in seqs {
            if let Some(held) = room.held.get_mut(id) {
                held.push((*seq, msg.frame.clone()));
                continue;
            }
            let Some(local) = room.members.get_mut(id).and_then(|m| m.local.as_mut()) else {
                continue;
            };
            let Numbering::Bus(seqs) = &mut local.numbering else {
                continue;
            };
            let client_seq = seqs.next(*seq);
            if let Some(outbox) = &local.outbox {
                outbox.push(msg.frame.with_seq(client_seq), Delivery::Must);
                n += 1;
            }
        }
        self.metrics.relayed(msg.kind.as_str(), n);
    }

    /// Replaces the resume token later `room-state`s of `claim`'s participant carry (after
    /// a `refresh-token`).
    pub fn set_resume_token(&self, room_id: &RoomId, claim: &Claim, token: &str) {
        let mut rooms = self.rooms(room_id);
        if let Some(local) = rooms
            .get_mut(room_id)
            .and_then(|r| r.owned(&claim.participant_id, claim.generation))
        {
            local.resume_token = Some(token.to_owned());
        }
    }

    /// (participants held for a resume, messages kept in local inboxes).
    pub fn inbox_counts(&self) -> (usize, usize) {
        let mut totals = (0, 0);
        for rooms in self.each_shard() {
            let locals = rooms
                .values()
                .flat_map(|r| r.members.values())
                .filter_map(|m| m.local.as_ref());
            totals = locals.fold(totals, |(held, kept), l| {
                let n = match &l.numbering {
                    Numbering::Inbox(inbox) => inbox.len(),
                    Numbering::Bus(_) => 0,
                };
                (held + usize::from(l.outbox.is_none()), kept + n)
            });
        }
        totals
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
        self.remove_member(&mut rooms, room_id, participant_id, reason)
    }

    /// [`unregister`](Self::unregister) by the session holding `claim`; `Err` when a
    /// resume took the participant over (or it already left), and nothing changed.
    pub fn leave(
        &self,
        room_id: &RoomId,
        claim: &Claim,
        reason: LeaveReason,
    ) -> Result<ParticipantInfo, NotOwner> {
        let mut rooms = self.rooms(room_id);
        rooms
            .get_mut(room_id)
            .and_then(|r| r.owned(&claim.participant_id, claim.generation))
            .ok_or(NotOwner)?;
        self.remove_member(&mut rooms, room_id, &claim.participant_id, reason)
            .ok_or(NotOwner)
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
            RoomAction::Remove { participant_id, .. } => {
                match room.members.get(participant_id).and_then(Member::outbox) {
                    Some(outbox) => {
                        // The writer flushes what is queued, then closes 4001.
                        outbox.close_after(None, CloseCause::Removed);
                        1
                    }
                    None => 0,
                }
            }
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
                for (id, member) in room.members.iter_mut() {
                    let Some(local) = member.local.as_mut() else {
                        continue;
                    };
                    if to.as_ref().is_none_or(|to| to == id) {
                        deliver_to(&self.metrics, local, None, frame);
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
    pub fn relay_local(&self, msg: RelayRef<'_>) -> Route {
        let mut rooms = self.rooms(msg.room_id);
        let Some(room) = rooms.get_mut(msg.room_id) else {
            return Route::TargetNotFound;
        };
        match msg.to {
            Some(to) => match room.members.get_mut(to) {
                None => Route::TargetNotFound,
                Some(Member {
                    local: Some(local), ..
                }) => match deliver_to(&self.metrics, local, sender_of(msg), msg.frame) {
                    // The target's connection has already closed and it is
                    // about to leave: tell the sender rather than lose the
                    // message silently.
                    Delivered::Gone => Route::TargetNotFound,
                    Delivered::Kept => {
                        self.metrics.relayed(msg.kind.as_str(), 1);
                        Route::LocalOnly
                    }
                    Delivered::Duplicate => {
                        self.metrics.duplicate_dropped();
                        Route::LocalOnly
                    }
                },
                Some(Member { local: None, .. }) => {
                    self.metrics.relayed(msg.kind.as_str(), 0);
                    Route::Publish
                }
            },
            None => {
                let n = self.fan_out(room, msg);
                self.metrics.relayed(msg.kind.as_str(), n);
                if room.members.values().any(Member::is_remote) {
                    Route::Publish
                } else {
                    Route::LocalOnly
                }
            }
        }
    }

    /// Delivers a broadcast to every local member except its sender; returns the count.
    fn fan_out(&self, room: &mut RoomMembers, msg: RelayRef<'_>) -> usize {
        let mut n = 0;
        for (id, member) in room.members.iter_mut() {
            let Some(local) = member.local.as_mut() else {
                continue;
            };
            if id != msg.sender_id {
                match deliver_to(&self.metrics, local, sender_of(msg), msg.frame) {
                    Delivered::Duplicate => self.metrics.duplicate_dropped(),
                    Delivered::Kept | Delivered::Gone => n += 1,
                }
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
            RemoteEvent::Relay(msg) if msg.seqs.is_some() => {
                if let Some(seqs) = &msg.seqs {
                    self.deliver_numbered(room, &msg, seqs);
                }
            }
            RemoteEvent::Relay(msg) => match &msg.to {
                Some(to) => {
                    if let Some(Member {
                        local: Some(local), ..
                    }) = room.members.get_mut(to)
                    {
                        match deliver_to(
                            &self.metrics,
                            local,
                            sender_of(msg.borrowed()),
                            &msg.frame,
                        ) {
                            Delivered::Duplicate => self.metrics.duplicate_dropped(),
                            Delivered::Kept | Delivered::Gone => {
                                self.metrics.relayed(msg.kind.as_str(), 1)
                            }
                        }
                    }
                }
                None => {
                    let n = self.fan_out(room, msg.borrowed());
                    self.metrics.relayed(msg.kind.as_str(), n);
                }
            },
            RemoteEvent::Joined {
                room_id,
                participant,
            } => {
                if let Some(member) = room.members.get_mut(&participant.participant_id) {
                    if member.info.instance_id != participant.instance_id {
                        // A resume moved it to that instance: the room is told nothing. Held
                        // here, it is no longer ours.
                        if let Some(old) = member.local.take().and_then(|l| l.outbox) {
                            old.close_after(None, CloseCause::Superseded);
                        }
                        member.info = participant;
                    }
                    return;
                }
                let frame = protocol::encode_user_joined(room_id.as_str(), &participant);
                room.members.insert(
                    participant.participant_id.clone(),
                    Member {
                        info: participant,
                        local: None,
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
                    .is_some_and(Member::is_remote);
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
        let mut rooms = self.rooms(room);
        let room = rooms.entry(room.clone()).or_default();
        room.joining.insert(participant_id.to_owned());
        room.held.insert(participant_id.to_owned(), Vec::new());
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
            Some(Member { info, local: None }) if info.instance_id == instance => {
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
                    .filter(|m| m.is_remote())
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
