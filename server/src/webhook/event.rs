//! What a webhook says: the event kinds, one recorded fact as the event log keeps it
//! ([`RecordedEvent`]), and the exact JSON body sent for it (Standard Webhooks' `type`,
//! `timestamp`, `data`). Pure data and serialization; recording and delivery live elsewhere.

use serde::{Deserialize, Serialize};

use crate::room::{Metadata, ParticipantInfo, RoomId};

/// The kind of an event: the body's `type` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The room's participant count went from 0 to 1.
    RoomStarted,
    /// The room's participant count went from 1 to 0.
    RoomFinished,
    ParticipantJoined,
    /// With the leave reason.
    ParticipantLeft,
    /// The server API replaced the participant's metadata.
    ParticipantUpdated,
}

impl EventKind {
    pub const ALL: [EventKind; 5] = [
        EventKind::RoomStarted,
        EventKind::RoomFinished,
        EventKind::ParticipantJoined,
        EventKind::ParticipantLeft,
        EventKind::ParticipantUpdated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::RoomStarted => "room_started",
            EventKind::RoomFinished => "room_finished",
            EventKind::ParticipantJoined => "participant_joined",
            EventKind::ParticipantLeft => "participant_left",
            EventKind::ParticipantUpdated => "participant_updated",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A set of event kinds (an endpoint's filter), as a bit set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventFilter(u8);

impl EventFilter {
    /// Every kind.
    pub const ALL: EventFilter = EventFilter(0b1_1111);

    pub fn of(kinds: &[EventKind]) -> EventFilter {
        EventFilter(kinds.iter().fold(0, |bits, k| bits | Self::bit(*k)))
    }

    pub fn contains(self, kind: EventKind) -> bool {
        self.0 & Self::bit(kind) != 0
    }

    fn bit(kind: EventKind) -> u8 {
        1 << (kind as u8)
    }
}

/// One fact as the event log holds it, before delivery. `seq` increases by one per event of
/// the room (see `docs/webhooks.md` for where it starts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedEvent {
    /// Unique: `evt_` + the recording step's random nonce + `-` + its position in that step.
    pub id: String,
    pub kind: EventKind,
    pub seq: u64,
    /// When it happened, RFC 3339 UTC with milliseconds.
    pub time: String,
    pub room: RoomId,
    /// The participant whose join, leave or update this is (for room events: the one whose
    /// join started or whose leave finished the room).
    pub participant: ParticipantInfo,
    /// `participant_left` only: `closed`, `timeout`, `instance_lost`, `removed`, ...
    pub reason: Option<String>,
}

/// The participant as a webhook shows it (the instance is a field of the event).
#[derive(Serialize)]
struct BodyParticipant<'a> {
    participant_id: &'a str,
    user_id: &'a str,
    username: &'a str,
    joined_at: &'a str,
    metadata: Option<&'a Metadata>,
}

#[derive(Serialize)]
struct BodyData<'a> {
    id: &'a str,
    seq: u64,
    room_id: &'a str,
    /// The instance that holds (or held) the participant.
    instance_id: &'a str,
    participant: BodyParticipant<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: &'a str,
    data: BodyData<'a>,
}

impl RecordedEvent {
    /// The request body: compact JSON, the same bytes on every attempt (the signature covers
    /// them).
    pub fn body(&self) -> Vec<u8> {
        let p = &self.participant;
        let body = Body {
            kind: self.kind.as_str(),
            timestamp: &self.time,
            data: BodyData {
                id: &self.id,
                seq: self.seq,
                room_id: self.room.as_str(),
                instance_id: &p.instance_id,
                participant: BodyParticipant {
                    participant_id: &p.participant_id,
                    user_id: &p.user_id,
                    username: &p.username,
                    joined_at: &p.joined_at,
                    metadata: p.metadata.as_ref(),
                },
                reason: self.reason.as_deref(),
            },
        };
        // Plain structs of strings and numbers always serialize.
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// Milliseconds since the Unix epoch of [`time`](Self::time), if it parses.
    pub fn time_ms(&self) -> Option<i64> {
        chrono::DateTime::parse_from_rfc3339(&self.time)
            .ok()
            .map(|t| t.timestamp_millis())
    }
}

/// A fresh nonce for one recording step; event ids are `evt_<nonce>-<n>`.
pub fn nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The id of the `n`th event (from 1) of the recording step with `nonce`.
pub fn event_id(nonce: &str, n: usize) -> String {
    format!("evt_{nonce}-{n}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, reason: Option<&str>) -> RecordedEvent {
        let mut meta = Metadata::new();
        meta.insert("role".into(), serde_json::json!("host"));
        RecordedEvent {
            id: event_id("abc", 2),
            kind,
            seq: 17,
            time: "2026-01-02T03:04:05.678Z".into(),
            room: RoomId::parse("demo").unwrap(),
            participant: ParticipantInfo {
                participant_id: "p1".into(),
                user_id: "alice".into(),
                username: "Alice".into(),
                joined_at: "2026-01-02T03:00:00.000Z".into(),
                instance_id: "pod-1".into(),
                metadata: Some(meta),
            },
            reason: reason.map(str::to_owned),
        }
    }

    #[test]
    fn the_body_carries_every_field_in_a_fixed_order() {
        let body =
            String::from_utf8(event(EventKind::ParticipantLeft, Some("timeout")).body()).unwrap();
        assert_eq!(
            body,
            r#"{"type":"participant_left","timestamp":"2026-01-02T03:04:05.678Z","data":{"id":"evt_abc-2","seq":17,"room_id":"demo","instance_id":"pod-1","participant":{"participant_id":"p1","user_id":"alice","username":"Alice","joined_at":"2026-01-02T03:00:00.000Z","metadata":{"role":"host"}},"reason":"timeout"}}"#
        );
        let joined = String::from_utf8(event(EventKind::ParticipantJoined, None).body()).unwrap();
        assert!(joined.starts_with(r#"{"type":"participant_joined","#));
        assert!(!joined.contains("reason"));
    }

    #[test]
    fn kinds_round_trip_and_filters_hold_what_they_name() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
            assert!(EventFilter::ALL.contains(kind));
        }
        assert_eq!(EventKind::parse("room.started"), None);
        let f = EventFilter::of(&[EventKind::RoomStarted, EventKind::RoomFinished]);
        assert!(f.contains(EventKind::RoomFinished));
        assert!(!f.contains(EventKind::ParticipantJoined));
    }

    #[test]
    fn event_time_parses_to_milliseconds() {
        assert_eq!(
            event(EventKind::RoomStarted, None).time_ms(),
            Some(1_767_323_045_678)
        );
    }
}
