//! The in-process bus's event log: events in memory, per room, until every endpoint has them.
//! Recorded by the in-process bus under its presence lock (so their order is presence order);
//! lost when the process exits — the in-process bus is for one instance, and its docs say so.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::event::{event_id, nonce, EventKind, RecordedEvent};
use super::{Claim, EventLog, GroupStatus, Recording, Wakes};
use crate::bus::BusError;
use crate::room::{ParticipantInfo, RoomId};

/// One fact to record: its kind, the participant, the leave reason.
pub type Fact = (EventKind, ParticipantInfo, Option<String>);

#[derive(Debug, Default)]
struct Cursor {
    /// Entry number of the next event to hand out.
    next: u64,
    /// Handed out, not acknowledged.
    in_flight: bool,
}

#[derive(Debug, Default)]
struct RoomLog {
    /// The room's next `seq`, while it has one.
    next_seq: Option<u64>,
    /// Whether the room has participants (room_started seen, room_finished not yet).
    live: bool,
    /// (entry number, event), oldest first.
    events: VecDeque<(u64, RecordedEvent)>,
    next_entry: u64,
    cursors: HashMap<String, Cursor>,
}

#[derive(Debug, Default)]
struct State {
    rooms: HashMap<RoomId, RoomLog>,
    /// Highest `seq` handed out: a room's new life starts above it.
    max_seq: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct MemoryLog {
    recording: Recording,
    state: Mutex<State>,
    wakes: Arc<Wakes>,
}

/// Microseconds since the Unix epoch: where a room's `seq` starts.
fn now_micros() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_micros()).unwrap_or(0)
}

impl MemoryLog {
    pub fn new(recording: Recording, wakes: Arc<Wakes>) -> Self {
        MemoryLog {
            recording,
            state: Mutex::default(),
            wakes,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Plain data: a panic elsewhere cannot leave it inconsistent in a harmful way.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the facts of one presence change of `room`, in order.
    pub fn record(&self, room: &RoomId, facts: Vec<Fact>) {
        if facts.is_empty() {
            return;
        }
        let nonce = nonce();
        let time = crate::protocol::now_timestamp();
        {
            let mut state = self.state();
            let mut max_seq = state.max_seq;
            let log = state.rooms.entry(room.clone()).or_default();
            for g in &self.recording.groups {
                // A group sees events recorded from its creation on.
                let next = log.next_entry;
                log.cursors.entry(g.clone()).or_insert(Cursor {
                    next,
                    in_flight: false,
                });
            }
            for (i, (kind, participant, reason)) in facts.into_iter().enumerate() {
                let seq = log
                    .next_seq
                    .unwrap_or_else(|| now_micros().max(max_seq + 1));
                log.next_seq = Some(seq + 1);
                max_seq = max_seq.max(seq);
                match kind {
                    EventKind::RoomStarted => log.live = true,
                    EventKind::RoomFinished => log.live = false,
                    _ => {}
                }
                let entry = log.next_entry;
                log.next_entry += 1;
                log.events.push_back((
                    entry,
                    RecordedEvent {
                        id: event_id(&nonce, i + 1),
                        kind,
                        seq,
                        time: time.clone(),
                        room: room.clone(),
                        participant,
                        reason,
                    },
                ));
            }
            state.max_seq = max_seq;
        }
        self.wakes.wake(room);
    }
}

impl RoomLog {
    /// Drops the events every group has.
    fn trim(&mut self) {
        let done = self
            .cursors
            .values()
            .map(|c| c.next)
            .min()
            .unwrap_or(u64::MAX);
        while self.events.front().is_some_and(|(e, _)| *e < done) {
            self.events.pop_front();
        }
    }
}

#[async_trait]
impl EventLog for MemoryLog {
    async fn pending_rooms(&self) -> Result<Vec<RoomId>, BusError> {
        Ok(self.state().rooms.keys().cloned().collect())
    }

    async fn register(&self, _room: &RoomId) -> Result<(), BusError> {
        Ok(())
    }

    async fn status(&self, room: &RoomId, groups: &[String]) -> Result<Vec<GroupStatus>, BusError> {
        let state = self.state();
        let Some(log) = state.rooms.get(room) else {
            return Ok(vec![GroupStatus::default(); groups.len()]);
        };
        Ok(groups
            .iter()
            .map(|g| {
                let next = log.cursors.get(g).map_or(log.next_entry, |c| c.next);
                let oldest = log.events.iter().find(|(e, _)| *e >= next);
                GroupStatus {
                    depth: log.next_entry.saturating_sub(next),
                    oldest_ms: oldest.and_then(|(_, ev)| ev.time_ms()),
                    held_elsewhere: false,
                }
            })
            .collect())
    }

    async fn claim(&self, room: &RoomId, group: &str) -> Result<Claim, BusError> {
        let mut state = self.state();
        let Some(log) = state.rooms.get_mut(room) else {
            return Ok(Claim::Empty);
        };
        let Some(cursor) = log.cursors.get_mut(group) else {
            return Ok(Claim::Empty);
        };
        let next = cursor.next;
        let Some((entry, event)) = log.events.iter().find(|(e, _)| *e >= next) else {
            return Ok(Claim::Empty);
        };
        cursor.in_flight = true;
        Ok(Claim::Event {
            entry: entry.to_string(),
            event: Box::new(event.clone()),
        })
    }

    async fn renew(&self, _room: &RoomId, _group: &str, _entry: &str) -> Result<bool, BusError> {
        Ok(true)
    }

    async fn ack(&self, room: &RoomId, group: &str, entry: &str) -> Result<(), BusError> {
        let Ok(entry) = entry.parse::<u64>() else {
            return Ok(());
        };
        let mut state = self.state();
        if let Some(log) = state.rooms.get_mut(room) {
            if let Some(c) = log.cursors.get_mut(group) {
                c.next = c.next.max(entry + 1);
                c.in_flight = false;
            }
            log.trim();
        }
        Ok(())
    }

    async fn settle(&self, room: &RoomId) -> Result<(), BusError> {
        let mut state = self.state();
        let done = state
            .rooms
            .get(room)
            .is_some_and(|log| log.events.is_empty() && !log.live);
        if done {
            state.rooms.remove(room);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::participant;

    fn log(groups: &[&str]) -> MemoryLog {
        MemoryLog::new(
            Recording {
                groups: groups.iter().map(|g| (*g).to_owned()).collect(),
                horizon: std::time::Duration::from_secs(60),
            },
            Arc::default(),
        )
    }

    async fn take(log: &MemoryLog, room: &RoomId, group: &str) -> Option<RecordedEvent> {
        match log.claim(room, group).await.unwrap() {
            Claim::Event { entry, event } => {
                log.ack(room, group, &entry).await.unwrap();
                Some(*event)
            }
            _ => None,
        }
    }

    #[tokio::test]
    async fn each_group_gets_every_event_in_order_and_seq_climbs_by_one() {
        let log = log(&["a", "b"]);
        let r = RoomId::parse("r").unwrap();
        log.record(
            &r,
            vec![
                (EventKind::RoomStarted, participant("p1", "i"), None),
                (EventKind::ParticipantJoined, participant("p1", "i"), None),
            ],
        );
        log.record(
            &r,
            vec![(
                EventKind::ParticipantLeft,
                participant("p1", "i"),
                Some("closed".into()),
            )],
        );
        for g in ["a", "b"] {
            let mut seen = Vec::new();
            while let Some(e) = take(&log, &r, g).await {
                seen.push(e);
            }
            let kinds: Vec<EventKind> = seen.iter().map(|e| e.kind).collect();
            assert_eq!(
                kinds,
                [
                    EventKind::RoomStarted,
                    EventKind::ParticipantJoined,
                    EventKind::ParticipantLeft
                ]
            );
            assert_eq!(seen[1].seq, seen[0].seq + 1);
            assert_eq!(seen[2].seq, seen[1].seq + 1);
            assert_ne!(seen[0].id, seen[1].id);
            assert_eq!(seen[2].reason.as_deref(), Some("closed"));
        }
        assert_eq!(log.status(&r, &["a".into()]).await.unwrap()[0].depth, 0);
    }

    #[tokio::test]
    async fn an_unacknowledged_event_is_handed_out_again_and_the_room_is_kept_until_done() {
        let log = log(&["a"]);
        let r = RoomId::parse("r").unwrap();
        log.record(
            &r,
            vec![(EventKind::RoomStarted, participant("p", "i"), None)],
        );
        let first = log.claim(&r, "a").await.unwrap();
        assert_eq!(log.claim(&r, "a").await.unwrap(), first);
        let status = log.status(&r, &["a".into()]).await.unwrap();
        assert_eq!(status[0].depth, 1);
        assert!(status[0].oldest_ms.is_some());
        let Claim::Event { entry, .. } = first else {
            panic!("no event")
        };
        log.ack(&r, "a", &entry).await.unwrap();
        log.settle(&r).await.unwrap();
        assert_eq!(
            log.pending_rooms().await.unwrap(),
            vec![r.clone()],
            "still live"
        );
        log.record(
            &r,
            vec![(EventKind::RoomFinished, participant("p", "i"), None)],
        );
        assert!(take(&log, &r, "a").await.is_some());
        log.settle(&r).await.unwrap();
        assert!(log.pending_rooms().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_new_life_of_a_room_continues_above_every_earlier_seq() {
        let log = log(&["a"]);
        let r = RoomId::parse("r").unwrap();
        log.record(
            &r,
            vec![(EventKind::RoomStarted, participant("p", "i"), None)],
        );
        log.record(
            &r,
            vec![(EventKind::RoomFinished, participant("p", "i"), None)],
        );
        let a = take(&log, &r, "a").await.unwrap();
        let b = take(&log, &r, "a").await.unwrap();
        log.settle(&r).await.unwrap();
        log.record(
            &r,
            vec![(EventKind::RoomStarted, participant("q", "i"), None)],
        );
        let c = take(&log, &r, "a").await.unwrap();
        assert!(
            a.seq < b.seq && b.seq < c.seq,
            "{} {} {}",
            a.seq,
            b.seq,
            c.seq
        );
    }
}
