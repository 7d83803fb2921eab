//! What the Redis bus publishes on a room channel, pure: a one-line JSON header (origin
//! instance, event kind, routing) followed by the relayed frame's bytes as they are, so a
//! frame serialized once by the sender is neither re-escaped nor re-serialized in transit.
//!
//! `<header JSON>\n<frame bytes>` for relays, `<header JSON>\n` for presence events. A JSON
//! header never contains a raw newline, so the first `\n` always ends it.

use serde::{Deserialize, Serialize};

use crate::bus::{BusEnvelope, RelayMessage, RemoteEvent};
use crate::protocol::{Frame, RelayKind};
use crate::room::{LeaveReason, ParticipantInfo, RoomId};

/// Bumped when the header changes incompatibly; other versions are dropped (and counted).
const VERSION: u8 = 1;

/// Why an incoming bus message was dropped.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("bus message has no header line")]
    NoHeader,
    #[error("bus message header is not valid: {0}")]
    Header(#[source] serde_json::Error),
    #[error("bus message version {0} is not supported")]
    Version(u8),
    #[error("relayed frame is not UTF-8 JSON")]
    Frame,
}

#[derive(Serialize, Deserialize)]
struct Header {
    v: u8,
    origin: String,
    #[serde(flatten)]
    body: Body,
}

#[derive(Deserialize)]
struct VersionOnly {
    v: u8,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
enum Body {
    Relay {
        room_id: RoomId,
        kind: RelayKind,
        sender_id: String,
        to: Option<String>,
    },
    Joined {
        room_id: RoomId,
        participant: ParticipantInfo,
    },
    Left {
        room_id: RoomId,
        participant: ParticipantInfo,
        reason: LeaveReason,
    },
}

/// Serializes an envelope for PUBLISH.
pub fn encode(origin: &str, event: &RemoteEvent) -> Vec<u8> {
    let (body, frame) = match event {
        RemoteEvent::Relay(m) => (
            Body::Relay {
                room_id: m.room_id.clone(),
                kind: m.kind,
                sender_id: m.sender_id.clone(),
                to: m.to.clone(),
            },
            Some(&m.frame),
        ),
        RemoteEvent::Joined {
            room_id,
            participant,
        } => (
            Body::Joined {
                room_id: room_id.clone(),
                participant: participant.clone(),
            },
            None,
        ),
        RemoteEvent::Left {
            room_id,
            participant,
            reason,
        } => (
            Body::Left {
                room_id: room_id.clone(),
                participant: participant.clone(),
                reason: *reason,
            },
            None,
        ),
    };
    let header = Header {
        v: VERSION,
        origin: origin.to_owned(),
        body,
    };
    // Serializing plain strings and enums into a Vec cannot fail.
    let mut out = serde_json::to_vec(&header).unwrap_or_default();
    out.push(b'\n');
    if let Some(frame) = frame {
        out.extend_from_slice(frame.as_bytes());
    }
    out
}

/// Parses a message received on a room channel.
pub fn decode(bytes: &[u8]) -> Result<BusEnvelope, WireError> {
    let split = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or(WireError::NoHeader)?;
    // The version first: a future header may not parse as this one.
    let version: VersionOnly =
        serde_json::from_slice(&bytes[..split]).map_err(WireError::Header)?;
    if version.v != VERSION {
        return Err(WireError::Version(version.v));
    }
    let header: Header = serde_json::from_slice(&bytes[..split]).map_err(WireError::Header)?;
    let rest = &bytes[split + 1..];
    let event = match header.body {
        Body::Relay {
            room_id,
            kind,
            sender_id,
            to,
        } => {
            let text = std::str::from_utf8(rest).map_err(|_| WireError::Frame)?;
            // Frames always start like this (see `Frame`): keeps a foreign publisher from
            // injecting something that is not an envelope.
            if !text.starts_with("{\"type\":") {
                return Err(WireError::Frame);
            }
            RemoteEvent::Relay(RelayMessage {
                room_id,
                kind,
                sender_id,
                to,
                frame: Frame::from_json_text(text.to_owned()),
            })
        }
        Body::Joined {
            room_id,
            participant,
        } => RemoteEvent::Joined {
            room_id,
            participant,
        },
        Body::Left {
            room_id,
            participant,
            reason,
        } => RemoteEvent::Left {
            room_id,
            participant,
            reason,
        },
    };
    Ok(BusEnvelope {
        origin: header.origin,
        event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::participant;

    /// A name with quotes and a newline, which the header must escape.
    fn p(id: &str) -> ParticipantInfo {
        ParticipantInfo {
            username: format!("name \"{id}\"\n"),
            ..participant(id, "i1")
        }
    }

    fn room() -> RoomId {
        RoomId::parse("r").unwrap()
    }

    #[test]
    fn relay_frame_travels_verbatim_after_the_header() {
        let frame = Frame::from_json_text(
            "{\"type\":\"offer\",\"payload\":{\"sdp\":\"v=0\\r\\n\"},\"to\":\"b\"}".into(),
        );
        let event = RemoteEvent::Relay(RelayMessage {
            room_id: room(),
            kind: RelayKind::Offer,
            sender_id: "a".into(),
            to: Some("b".into()),
            frame: frame.clone(),
        });
        let bytes = encode("inst-1", &event);
        assert!(
            bytes.ends_with(frame.as_bytes()),
            "frame must not be re-encoded"
        );
        let back = decode(&bytes).unwrap();
        assert_eq!(back.origin, "inst-1");
        assert_eq!(back.event, event);
    }

    #[test]
    fn presence_events_round_trip_even_with_newlines_in_names() {
        for event in [
            RemoteEvent::Joined {
                room_id: room(),
                participant: p("a"),
            },
            RemoteEvent::Left {
                room_id: room(),
                participant: p("b"),
                reason: LeaveReason::InstanceLost,
            },
        ] {
            let bytes = encode("x", &event);
            assert_eq!(bytes.iter().filter(|b| **b == b'\n').count(), 1);
            assert_eq!(decode(&bytes).unwrap().event, event);
        }
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert!(matches!(decode(b"no newline"), Err(WireError::NoHeader)));
        assert!(matches!(decode(b"{]\n"), Err(WireError::Header(_))));
        assert!(matches!(
            decode(b"{\"v\":9,\"origin\":\"o\",\"k\":\"joined\"}\n"),
            Err(WireError::Version(9))
        ));
        let relay = b"{\"v\":1,\"origin\":\"o\",\"k\":\"relay\",\"room_id\":\"r\",\"kind\":\"offer\",\"sender_id\":\"a\",\"to\":null}\n";
        let mut not_a_frame = relay.to_vec();
        not_a_frame.extend_from_slice(b"[1]");
        assert!(matches!(decode(&not_a_frame), Err(WireError::Frame)));
        let mut bad_room = relay.to_vec();
        bad_room.extend_from_slice(b"{\"type\":\"offer\"}");
        let bad_room = String::from_utf8(bad_room)
            .unwrap()
            .replace("\"r\"", "\"../x\"");
        assert!(matches!(
            decode(bad_room.as_bytes()),
            Err(WireError::Header(_))
        ));
    }
}
