//! What the Redis bus publishes on a room channel, and the strict decoding of what it reads
//! back, pure: a one-line JSON header (origin instance, event kind, routing) followed by the
//! relayed frame's bytes as they are, so a frame serialized once by the sender is neither
//! re-escaped nor re-serialized in transit.
//!
//! `<header JSON>\n<frame bytes>` for relays and server API messages, `<header JSON>\n` for
//! presence events and the other server API actions. A JSON header never contains a raw
//! newline, so the first `\n` always ends it.
//!
//! Anyone who can PUBLISH to the Redis channels can put anything there, so [`decode`] accepts
//! only what an instance of this version could have written: bounded sizes, a header with
//! exactly the expected fields, ids in their formats, the room of the channel it came on,
//! and for relays a frame that is the complete envelope the header describes, valid JSON no
//! deeper than the client limit. Whether the sender or a presence change is real is checked
//! against the hub and Redis by `inbound`; this module does no I/O.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::inbound::DropReason;
use crate::bus::{BusEnvelope, RelayMessage, RemoteEvent, RoomAction};
use crate::protocol::{nests_deeper_than, Frame, RelayKind};
use crate::room::{LeaveReason, ParticipantInfo, RoomId};

/// Bumped when the header changes incompatibly; other versions are dropped (and counted).
const VERSION: u8 = 1;

/// Largest header line accepted, besides the participant's `metadata`. The biggest legitimate
/// one is a presence event whose user id and name are 256 characters each, escaped as `\u0000`
/// in the worst case (about 3.3 KiB).
pub const BASE_HEADER_BYTES: usize = 8 * 1024;

/// What a relayed frame may add to the client message it carries: the server-stamped
/// `sender_id`, `room_id`, `timestamp`, `to` and their keys (about 300 bytes at most).
pub const FRAME_OVERHEAD_BYTES: usize = 1024;

/// Longest participant id accepted on the bus (ours are 36-character UUIDs).
pub const MAX_PARTICIPANT_ID_LEN: usize = 64;

/// Longest user id and name (the limit on a token's `sub` and `name`).
pub const MAX_IDENTITY_CHARS: usize = crate::auth::MAX_IDENTITY_CHARS;

/// Longest instance id (the limit of the `instance_id` setting).
pub const MAX_INSTANCE_ID_LEN: usize = 128;

/// The bounds a received message must keep, from the server's client limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    /// Largest relayed frame: `limits.max_message_bytes` plus [`FRAME_OVERHEAD_BYTES`].
    pub max_frame_bytes: usize,
    /// `limits.max_json_depth`: the frame nests no deeper than a client message may.
    pub max_json_depth: usize,
    /// `limits.max_metadata_bytes`: a participant's metadata, compact JSON.
    pub max_metadata_bytes: usize,
}

impl InputLimits {
    pub fn new(max_message_bytes: usize, max_json_depth: usize, max_metadata_bytes: usize) -> Self {
        InputLimits {
            max_frame_bytes: max_message_bytes.saturating_add(FRAME_OVERHEAD_BYTES),
            max_json_depth,
            max_metadata_bytes,
        }
    }

    /// Largest header line: [`BASE_HEADER_BYTES`] plus the metadata it may carry.
    pub fn max_header_bytes(&self) -> usize {
        BASE_HEADER_BYTES.saturating_add(self.max_metadata_bytes)
    }
}

/// Why an incoming bus message was dropped.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("bus message is larger than any this version sends")]
    TooLarge,
    #[error("bus message has no header line")]
    NoHeader,
    #[error("bus message header is not valid: {0}")]
    Header(#[source] serde_json::Error),
    #[error("bus message version {0} is not supported")]
    Version(u8),
    #[error("bus message field {0} is not in its format")]
    Field(&'static str),
    #[error("bus message names another room than its channel's")]
    RoomMismatch,
    #[error("relayed frame nests deeper than the client limit")]
    TooDeep,
    #[error("relayed frame is not a valid envelope: {0}")]
    Frame(&'static str),
}

impl WireError {
    /// The reason this drop is counted and logged under.
    pub(super) fn reason(&self) -> DropReason {
        match self {
            WireError::TooLarge => DropReason::TooLarge,
            WireError::NoHeader | WireError::Header(_) | WireError::Field(_) => {
                DropReason::Malformed
            }
            WireError::Version(_) => DropReason::UnsupportedVersion,
            WireError::RoomMismatch => DropReason::RoomMismatch,
            WireError::TooDeep => DropReason::TooDeep,
            WireError::Frame(_) => DropReason::InvalidFrame,
        }
    }
}

/// The header line. Every variant carries `v` and `origin`; nothing else is accepted, so a
/// header this version does not fully understand is refused rather than half-read.
#[derive(Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case", deny_unknown_fields)]
enum Header {
    Relay {
        v: u8,
        origin: String,
        room_id: RoomId,
        kind: RelayKind,
        sender_id: String,
        to: Option<String>,
        /// The sender's client `seq` (absent when the client gave none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sender_seq: Option<u64>,
        /// Each recipient's delivery seq, added by the delivery script (resume). Always the
        /// last field: the script appends it to the header this module writes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seqs: Option<std::collections::BTreeMap<String, u64>>,
    },
    Joined {
        v: u8,
        origin: String,
        room_id: RoomId,
        participant: ParticipantInfo,
    },
    Left {
        v: u8,
        origin: String,
        room_id: RoomId,
        participant: ParticipantInfo,
        reason: LeaveReason,
    },
    /// Server API: close one participant (4001).
    Remove {
        v: u8,
        origin: String,
        room_id: RoomId,
        participant_id: String,
    },
    /// Server API: close every participant (4002).
    CloseRoom {
        v: u8,
        origin: String,
        room_id: RoomId,
    },
    /// Server API: a `server-message`, whose frame follows the header line.
    ServerMessage {
        v: u8,
        origin: String,
        room_id: RoomId,
        to: Option<String>,
    },
    /// Server API: a participant's record (its metadata) was replaced.
    Updated {
        v: u8,
        origin: String,
        room_id: RoomId,
        participant: ParticipantInfo,
    },
}

#[derive(Deserialize)]
struct VersionOnly {
    v: u8,
}

/// [`Header::Relay`] as a plain struct of borrowed fields, for the decoder's fast path:
/// nearly every bus message is a relay, and serde reads an internally tagged enum through
/// an owned intermediate copy of every field. It accepts only what `Header::Relay` accepts
/// (the same fields, none unknown, the same types); anything it refuses, including ids with
/// escapes, goes the general way, which decides (and reports) as before.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RelayHeader<'a> {
    k: &'a str,
    v: u8,
    origin: &'a str,
    room_id: RoomId,
    kind: RelayKind,
    sender_id: &'a str,
    #[serde(default)]
    to: Option<&'a str>,
    #[serde(default)]
    sender_seq: Option<u64>,
    #[serde(default)]
    seqs: Option<std::collections::BTreeMap<String, u64>>,
}

/// The same header for [`encode`], borrowing instead of cloning its fields; serialized
/// exactly like [`Header::Relay`] (a test holds the two to the same bytes).
#[derive(Serialize)]
#[serde(tag = "k", rename = "relay")]
struct RelayHeaderOut<'a> {
    v: u8,
    origin: &'a str,
    room_id: &'a RoomId,
    kind: RelayKind,
    sender_id: &'a str,
    to: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sender_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seqs: Option<&'a std::collections::BTreeMap<String, u64>>,
}

/// What follows the kind in every header [`encode`] writes, up to the origin's value.
const AFTER_KIND: &[u8] = b"\",\"v\":1,\"origin\":";

/// Whether `bytes` is a header [`encode`] wrote with `origin` (this instance's id): the
/// instance's own echo on a room channel, which needs no decoding (the local recipients
/// were served when it was sent). A message from anyone else that claims this origin is
/// ignored the same way; it could not have been delivered either.
pub fn is_own_echo(bytes: &[u8], origin: &str) -> bool {
    let Some(rest) = bytes.strip_prefix(b"{\"k\":\"") else {
        return false;
    };
    let Some(end) = memchr::memchr(b'"', rest) else {
        return false;
    };
    let Some(rest) = rest[end..].strip_prefix(AFTER_KIND) else {
        return false;
    };
    // Instance ids are printable ASCII; only a quote or backslash in one needs escaping.
    let matches = |quoted: &[u8]| {
        rest.strip_prefix(quoted)
            .is_some_and(|r| r.first() == Some(&b','))
    };
    if origin.bytes().any(|b| b == b'"' || b == b'\\') {
        serde_json::to_vec(origin).is_ok_and(|quoted| matches(&quoted))
    } else {
        let quoted = [b"\"", origin.as_bytes(), b"\""].concat();
        matches(&quoted)
    }
}

/// A relayed frame as [`crate::protocol::encode_relay`] writes it: exactly these fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RelayFrame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(borrow)]
    #[allow(dead_code)] // Parsed only to prove it is JSON; relayed as it is.
    payload: &'a RawValue,
    sender_id: Option<&'a str>,
    room_id: &'a str,
    timestamp: &'a str,
    to: Option<&'a str>,
}

/// The header line of a relay without its closing brace, for the delivery script to append
/// `,"seqs":{...}}` to (see `scripts::DELIVER`); the frame is sent separately.
pub fn relay_header_prefix(origin: &str, m: &RelayMessage) -> String {
    let header = Header::Relay {
        v: VERSION,
        origin: origin.to_owned(),
        room_id: m.room_id.clone(),
        kind: m.kind,
        sender_id: m.sender_id.clone(),
        to: m.to.clone(),
        sender_seq: m.sender_seq,
        seqs: None,
    };
    // Serializing plain strings and enums cannot fail; the JSON object ends with `}`.
    let mut text = serde_json::to_string(&header).unwrap_or_default();
    text.pop();
    text
}

/// Serializes an envelope for PUBLISH.
pub fn encode(origin: &str, event: &RemoteEvent) -> Vec<u8> {
    if let RemoteEvent::Relay(m) = event {
        let header = RelayHeaderOut {
            v: VERSION,
            origin,
            room_id: &m.room_id,
            kind: m.kind,
            sender_id: &m.sender_id,
            to: m.to.as_deref(),
            sender_seq: m.sender_seq,
            seqs: m.seqs.as_ref(),
        };
        let mut out = Vec::with_capacity(160 + m.frame.len());
        // Serializing plain strings and enums into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, &header);
        out.push(b'\n');
        out.extend_from_slice(m.frame.as_bytes());
        return out;
    }
    let origin = origin.to_owned();
    let (header, frame) = match event {
        RemoteEvent::Relay(_) => return Vec::new(), // written above
        RemoteEvent::Joined {
            room_id,
            participant,
        } => (
            Header::Joined {
                v: VERSION,
                origin,
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
            Header::Left {
                v: VERSION,
                origin,
                room_id: room_id.clone(),
                participant: participant.clone(),
                reason: *reason,
            },
            None,
        ),
        RemoteEvent::Action(action) => encode_action(origin, action),
    };
    // Serializing plain strings and enums into a Vec cannot fail.
    let mut out = serde_json::to_vec(&header).unwrap_or_default();
    out.push(b'\n');
    if let Some(frame) = frame {
        out.extend_from_slice(frame.as_bytes());
    }
    out
}

fn encode_action(origin: String, action: &RoomAction) -> (Header, Option<&Frame>) {
    match action {
        RoomAction::Remove {
            room_id,
            participant_id,
        } => (
            Header::Remove {
                v: VERSION,
                origin,
                room_id: room_id.clone(),
                participant_id: participant_id.clone(),
            },
            None,
        ),
        RoomAction::Close { room_id } => (
            Header::CloseRoom {
                v: VERSION,
                origin,
                room_id: room_id.clone(),
            },
            None,
        ),
        RoomAction::Message { room_id, to, frame } => (
            Header::ServerMessage {
                v: VERSION,
                origin,
                room_id: room_id.clone(),
                to: to.clone(),
            },
            Some(frame),
        ),
        RoomAction::Updated {
            room_id,
            participant,
        } => (
            Header::Updated {
                v: VERSION,
                origin,
                room_id: room_id.clone(),
                participant: participant.clone(),
            },
            None,
        ),
    }
}

/// Parses and checks a message received on the channel of `channel_room`. Only what an
/// instance of this version could have published passes (see the module documentation).
pub fn decode(
    bytes: &[u8],
    channel_room: &RoomId,
    limits: &InputLimits,
) -> Result<BusEnvelope, WireError> {
    if bytes.len() > limits.max_header_bytes() + 1 + limits.max_frame_bytes {
        return Err(WireError::TooLarge);
    }
    let split = memchr::memchr(b'\n', bytes).ok_or(WireError::NoHeader)?;
    let (head, rest) = (&bytes[..split], &bytes[split + 1..]);
    if head.len() > limits.max_header_bytes() {
        return Err(WireError::TooLarge);
    }
    if let Some(envelope) = decode_relay_fast(head, rest, channel_room, limits)? {
        return Ok(envelope);
    }
    // The version first: a future header may not parse as this one.
    let version: VersionOnly = serde_json::from_slice(head).map_err(WireError::Header)?;
    if version.v != VERSION {
        return Err(WireError::Version(version.v));
    }
    let header: Header = serde_json::from_slice(head).map_err(WireError::Header)?;
    let (origin, event) = match header {
        Header::Relay {
            origin,
            room_id,
            kind,
            sender_id,
            to,
            sender_seq,
            seqs,
            ..
        } => {
            check_participant_id(&sender_id, "sender_id")?;
            check_seqs(seqs.as_ref(), sender_seq)?;
            if let Some(to) = &to {
                check_participant_id(to, "to")?;
            }
            let frame = decode_frame(rest, limits, &room_id, kind, &sender_id, to.as_deref())?;
            (
                origin,
                RemoteEvent::Relay(RelayMessage {
                    room_id,
                    kind,
                    sender_id,
                    to,
                    sender_seq,
                    seqs,
                    frame,
                }),
            )
        }
        Header::Joined {
            origin,
            room_id,
            participant,
            ..
        } => {
            no_frame(rest)?;
            check_participant(&participant, limits)?;
            // Only the instance that holds a participant announces its join.
            if participant.instance_id != origin {
                return Err(WireError::Field("participant.instance_id"));
            }
            (
                origin,
                RemoteEvent::Joined {
                    room_id,
                    participant,
                },
            )
        }
        Header::Left {
            origin,
            room_id,
            participant,
            reason,
            ..
        } => {
            no_frame(rest)?;
            check_participant(&participant, limits)?;
            // Another instance announces a leave only when it cleaned up a dead one.
            if participant.instance_id != origin && reason != LeaveReason::InstanceLost {
                return Err(WireError::Field("participant.instance_id"));
            }
            (
                origin,
                RemoteEvent::Left {
                    room_id,
                    participant,
                    reason,
                },
            )
        }
        Header::Remove {
            origin,
            room_id,
            participant_id,
            ..
        } => {
            no_frame(rest)?;
            check_participant_id(&participant_id, "participant_id")?;
            let action = RoomAction::Remove {
                room_id,
                participant_id,
            };
            (origin, RemoteEvent::Action(action))
        }
        Header::CloseRoom {
            origin, room_id, ..
        } => {
            no_frame(rest)?;
            (origin, RemoteEvent::Action(RoomAction::Close { room_id }))
        }
        Header::ServerMessage {
            origin,
            room_id,
            to,
            ..
        } => {
            if let Some(to) = &to {
                check_participant_id(to, "to")?;
            }
            let frame = decode_server_frame(rest, limits, &room_id)?;
            let action = RoomAction::Message { room_id, to, frame };
            (origin, RemoteEvent::Action(action))
        }
        Header::Updated {
            origin,
            room_id,
            participant,
            ..
        } => {
            no_frame(rest)?;
            check_participant(&participant, limits)?;
            let action = RoomAction::Updated {
                room_id,
                participant,
            };
            (origin, RemoteEvent::Action(action))
        }
    };
    check_instance_id(&origin, "origin")?;
    if event.room_id() != channel_room {
        return Err(WireError::RoomMismatch);
    }
    Ok(BusEnvelope { origin, event })
}

/// The relay decoder's fast path: `Ok(None)` when the header is not a plain relay header
/// of this version (the general path then decides); otherwise the same checks, in the same
/// order, and the same result as the general path.
fn decode_relay_fast(
    head: &[u8],
    rest: &[u8],
    channel_room: &RoomId,
    limits: &InputLimits,
) -> Result<Option<BusEnvelope>, WireError> {
    if !head.starts_with(b"{\"k\":\"relay\",") {
        return Ok(None);
    }
    let Ok(h) = serde_json::from_slice::<RelayHeader<'_>>(head) else {
        return Ok(None);
    };
    if h.k != "relay" || h.v != VERSION {
        return Ok(None);
    }
    check_participant_id(h.sender_id, "sender_id")?;
    check_seqs(h.seqs.as_ref(), h.sender_seq)?;
    if let Some(to) = h.to {
        check_participant_id(to, "to")?;
    }
    let frame = decode_frame(rest, limits, &h.room_id, h.kind, h.sender_id, h.to)?;
    check_instance_id(h.origin, "origin")?;
    if &h.room_id != channel_room {
        return Err(WireError::RoomMismatch);
    }
    Ok(Some(BusEnvelope {
        origin: h.origin.to_owned(),
        event: RemoteEvent::Relay(RelayMessage {
            room_id: h.room_id,
            kind: h.kind,
            sender_id: h.sender_id.to_owned(),
            to: h.to.map(str::to_owned),
            sender_seq: h.sender_seq,
            seqs: h.seqs,
            frame,
        }),
    }))
}

/// A relay header's delivery seqs (ids that could be participants', none zero) and the
/// sender's client seq (within the protocol's range).
fn check_seqs(
    seqs: Option<&std::collections::BTreeMap<String, u64>>,
    sender_seq: Option<u64>,
) -> Result<(), WireError> {
    for (id, seq) in seqs.into_iter().flatten() {
        check_participant_id(id, "seqs")?;
        if *seq == 0 {
            return Err(WireError::Field("seqs"));
        }
    }
    if sender_seq.is_some_and(|s| s == 0 || s > crate::protocol::MAX_SEQ) {
        return Err(WireError::Field("sender_seq"));
    }
    Ok(())
}

/// A presence event carries nothing after its header line.
fn no_frame(rest: &[u8]) -> Result<(), WireError> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(WireError::Field("frame"))
    }
}

/// The relayed frame: bounded, UTF-8, no deeper than a client message may nest, and exactly
/// the envelope the header describes (same kind, sender, room and target).
fn decode_frame(
    rest: &[u8],
    limits: &InputLimits,
    room: &RoomId,
    kind: RelayKind,
    sender_id: &str,
    to: Option<&str>,
) -> Result<Frame, WireError> {
    if rest.len() > limits.max_frame_bytes {
        return Err(WireError::TooLarge);
    }
    let text = std::str::from_utf8(rest).map_err(|_| WireError::Frame("not UTF-8"))?;
    // Frames always start like this (see `Frame`); a later `seq` splice relies on it.
    if !text.starts_with("{\"type\":") {
        return Err(WireError::Frame("does not start with the type"));
    }
    if nests_deeper_than(text, limits.max_json_depth) {
        return Err(WireError::TooDeep);
    }
    let frame: RelayFrame<'_> =
        serde_json::from_str(text).map_err(|_| WireError::Frame("not the relay envelope"))?;
    if frame.kind != kind.as_str() {
        return Err(WireError::Frame("type differs from the header"));
    }
    if frame.sender_id != Some(sender_id) {
        return Err(WireError::Frame("sender_id differs from the header"));
    }
    if frame.room_id != room.as_str() {
        return Err(WireError::Frame("room_id differs from the header"));
    }
    if frame.to != to {
        return Err(WireError::Frame("to differs from the header"));
    }
    if !is_timestamp(frame.timestamp) {
        return Err(WireError::Frame(
            "timestamp is not RFC 3339 UTC with milliseconds",
        ));
    }
    Ok(Frame::from_json_text(text.to_owned()))
}

/// A `server-message` frame as [`crate::protocol::encode_server_message`] writes it: bounded,
/// UTF-8, no deeper than a client message may nest, `sender_id` and `to` null, the room of the
/// header.
fn decode_server_frame(
    rest: &[u8],
    limits: &InputLimits,
    room: &RoomId,
) -> Result<Frame, WireError> {
    if rest.len() > limits.max_frame_bytes {
        return Err(WireError::TooLarge);
    }
    let text = std::str::from_utf8(rest).map_err(|_| WireError::Frame("not UTF-8"))?;
    if !text.starts_with("{\"type\":") {
        return Err(WireError::Frame("does not start with the type"));
    }
    if nests_deeper_than(text, limits.max_json_depth) {
        return Err(WireError::TooDeep);
    }
    let frame: RelayFrame<'_> = serde_json::from_str(text)
        .map_err(|_| WireError::Frame("not the server-message envelope"))?;
    if frame.kind != "server-message" || frame.sender_id.is_some() || frame.to.is_some() {
        return Err(WireError::Frame("not a server-message"));
    }
    if frame.room_id != room.as_str() {
        return Err(WireError::Frame("room_id differs from the header"));
    }
    if !is_timestamp(frame.timestamp) {
        return Err(WireError::Frame(
            "timestamp is not RFC 3339 UTC with milliseconds",
        ));
    }
    Ok(Frame::from_json_text(text.to_owned()))
}

/// 1–64 characters of `[A-Za-z0-9_-]`: every id this server assigns (UUIDs) fits, and such
/// an id is safe in keys and log lines.
pub fn is_participant_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_PARTICIPANT_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// What the `instance_id` setting accepts: 1–128 printable ASCII characters, no spaces.
pub fn is_instance_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_INSTANCE_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

/// `2026-11-28T16:30:27.123Z`: what [`crate::protocol::now_timestamp`] writes.
pub fn is_timestamp(ts: &str) -> bool {
    const SHAPE: &[u8; 24] = b"dddd-dd-ddTdd:dd:dd.dddZ";
    ts.len() == SHAPE.len()
        && ts.bytes().zip(SHAPE.iter()).all(|(b, want)| match want {
            b'd' => b.is_ascii_digit(),
            want => b == *want,
        })
}

fn check_participant_id(id: &str, field: &'static str) -> Result<(), WireError> {
    if is_participant_id(id) {
        Ok(())
    } else {
        Err(WireError::Field(field))
    }
}

fn check_instance_id(id: &str, field: &'static str) -> Result<(), WireError> {
    if is_instance_id(id) {
        Ok(())
    } else {
        Err(WireError::Field(field))
    }
}

/// Every field of a participant in the format the server creates it with.
pub fn check_participant(p: &ParticipantInfo, limits: &InputLimits) -> Result<(), WireError> {
    if p.metadata
        .as_ref()
        .is_some_and(|m| crate::room::metadata_bytes(m) > limits.max_metadata_bytes)
    {
        return Err(WireError::Field("participant.metadata"));
    }
    check_participant_id(&p.participant_id, "participant.participant_id")?;
    let identity = |s: &str| s.chars().count() <= MAX_IDENTITY_CHARS;
    if p.user_id.is_empty() || !identity(&p.user_id) {
        return Err(WireError::Field("participant.user_id"));
    }
    if !identity(&p.username) {
        return Err(WireError::Field("participant.username"));
    }
    if !is_timestamp(&p.joined_at) {
        return Err(WireError::Field("participant.joined_at"));
    }
    check_instance_id(&p.instance_id, "participant.instance_id")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::participant;

    const LIMITS: InputLimits = InputLimits {
        max_frame_bytes: 64 * 1024 + FRAME_OVERHEAD_BYTES,
        max_json_depth: 32,
        max_metadata_bytes: 1024,
    };

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

    fn relay(payload: &str, to: Option<&str>) -> RemoteEvent {
        let payload = RawValue::from_string(payload.to_owned()).unwrap();
        RemoteEvent::Relay(RelayMessage {
            room_id: room(),
            kind: RelayKind::Offer,
            sender_id: "a".into(),
            to: to.map(str::to_owned),
            sender_seq: Some(1),
            seqs: None,
            frame: crate::protocol::encode_relay(RelayKind::Offer, &payload, "a", "r", to),
        })
    }

    fn decode_on(bytes: &[u8], channel: &str) -> Result<BusEnvelope, WireError> {
        decode(bytes, &RoomId::parse(channel).unwrap(), &LIMITS)
    }

    /// A relay header followed by `frame`, as raw text.
    fn raw_relay(header_extra: &str, frame: &str) -> Vec<u8> {
        format!(
            "{{\"v\":1,\"origin\":\"o\",\"k\":\"relay\",\"room_id\":\"r\",\"kind\":\"offer\",\"sender_id\":\"a\",\"to\":\"b\"{header_extra}}}\n{frame}"
        )
        .into_bytes()
    }

    fn frame_text(payload: &str) -> String {
        format!("{{\"type\":\"offer\",\"payload\":{payload},\"sender_id\":\"a\",\"room_id\":\"r\",\"timestamp\":\"2026-11-28T16:30:27.123Z\",\"to\":\"b\"}}")
    }

    /// The general decoder alone (the fast path bypassed), as the reference.
    fn decode_general(bytes: &[u8], channel: &str) -> Result<BusEnvelope, WireError> {
        let split = bytes.iter().position(|b| *b == b'\n').unwrap();
        let mut forced = b"{\"v\":1,".to_vec();
        // Moving `k` off the front takes the general path with the same fields.
        let head = std::str::from_utf8(&bytes[1..split]).unwrap();
        let (k, others) = head.split_once(',').unwrap();
        forced.extend_from_slice(others.replacen("\"v\":1,", "", 1).as_bytes());
        forced.pop();
        forced.extend_from_slice(format!(",{k}}}\n").as_bytes());
        forced.extend_from_slice(&bytes[split + 1..]);
        assert!(!forced.starts_with(b"{\"k\":"));
        decode_on(&forced, channel)
    }

    #[test]
    fn relay_header_out_is_the_header_relay_bytes() {
        for to in [None, Some("b")] {
            let RemoteEvent::Relay(m) = relay("{}", to) else {
                unreachable!()
            };
            let general = serde_json::to_vec(&Header::Relay {
                v: VERSION,
                origin: "o\"x".into(),
                room_id: m.room_id.clone(),
                kind: m.kind,
                sender_id: m.sender_id.clone(),
                to: m.to.clone(),
                sender_seq: m.sender_seq,
                seqs: m.seqs.clone(),
            })
            .unwrap();
            let mut want = general;
            want.push(b'\n');
            want.extend_from_slice(m.frame.as_bytes());
            assert_eq!(encode("o\"x", &RemoteEvent::Relay(m)), want);
        }
    }

    #[test]
    fn fast_relay_path_decides_like_the_general_one() {
        // Numbered as the delivery script publishes them (resume on): `seqs` last.
        let numbered = |payload: &str, to: Option<&str>| {
            let RemoteEvent::Relay(mut m) = relay(payload, to) else {
                unreachable!()
            };
            m.sender_seq = Some(7);
            m.seqs = Some([("b".to_owned(), 3), ("c".to_owned(), 9)].into());
            RemoteEvent::Relay(m)
        };
        let ok = [
            relay("{\"sdp\":\"v=0\"}", Some("b")),
            relay("null", None),
            numbered("{\"candidate\":\"x\"}", Some("b")),
            numbered("null", None),
        ];
        for event in &ok {
            let bytes = encode("o", event);
            let fast = decode_on(&bytes, "r").unwrap();
            assert_eq!(fast.event, *event);
            assert_eq!(fast.origin, "o");
            let general = decode_general(&bytes, "r").unwrap();
            assert_eq!(general.event, fast.event);
            assert_eq!(general.origin, fast.origin);
        }
        // Refusals on the fast path give the general path's error.
        let bytes = encode("o", &ok[0]);
        for (case, bytes) in [
            ("other room", bytes.clone()),
            (
                "bad sender",
                String::from_utf8(bytes.clone())
                    .unwrap()
                    .replacen("\"sender_id\":\"a\"", "\"sender_id\":\"a b\"", 1)
                    .into_bytes(),
            ),
            (
                "extra field",
                String::from_utf8(bytes.clone())
                    .unwrap()
                    .replacen("\"to\":\"b\"}", "\"to\":\"b\",\"x\":1}", 1)
                    .into_bytes(),
            ),
            (
                "bad origin",
                String::from_utf8(bytes.clone())
                    .unwrap()
                    .replacen("\"origin\":\"o\"", "\"origin\":\"o o\"", 1)
                    .into_bytes(),
            ),
            (
                "version 2",
                String::from_utf8(bytes.clone())
                    .unwrap()
                    .replacen("\"v\":1", "\"v\":2", 1)
                    .into_bytes(),
            ),
            (
                "delivery seq zero",
                String::from_utf8(encode("o", &ok[2]))
                    .unwrap()
                    .replacen("\"c\":9", "\"c\":0", 1)
                    .into_bytes(),
            ),
            (
                "bad id in seqs",
                String::from_utf8(encode("o", &ok[2]))
                    .unwrap()
                    .replacen("\"c\":9", "\"c c\":9", 1)
                    .into_bytes(),
            ),
            (
                "sender seq zero",
                String::from_utf8(encode("o", &ok[2]))
                    .unwrap()
                    .replacen("\"sender_seq\":7", "\"sender_seq\":0", 1)
                    .into_bytes(),
            ),
        ] {
            let channel = if case == "other room" { "other" } else { "r" };
            let fast = decode_on(&bytes, channel)
                .map(|_| ())
                .map_err(|e| e.to_string());
            let general = if case == "version 2" {
                // The general path reads the version before anything else.
                Err(WireError::Version(2).to_string())
            } else {
                decode_general(&bytes, channel)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            };
            assert!(fast.is_err(), "{case}");
            assert_eq!(fast, general, "{case}");
        }
    }

    #[test]
    fn own_echo_is_recognized_from_the_header_alone() {
        let events = [
            relay("{}", Some("b")),
            RemoteEvent::Joined {
                room_id: room(),
                participant: p("a"),
            },
            RemoteEvent::Left {
                room_id: room(),
                participant: p("a"),
                reason: LeaveReason::Closed,
            },
            RemoteEvent::Action(RoomAction::Close { room_id: room() }),
        ];
        for event in &events {
            for origin in ["pod-1", "p\"o\\d"] {
                let bytes = encode(origin, event);
                assert!(
                    is_own_echo(&bytes, origin),
                    "{origin} {}",
                    String::from_utf8_lossy(&bytes)
                );
                assert!(!is_own_echo(&bytes, "pod-2"));
                assert!(
                    !is_own_echo(&bytes, "pod"),
                    "a prefix of the origin is another instance"
                );
                assert!(!is_own_echo(&bytes, &format!("{origin}x")));
            }
        }
        assert!(!is_own_echo(b"", "o"));
        assert!(!is_own_echo(b"{\"k\":\"relay", "o"));
    }

    #[test]
    fn server_api_actions_round_trip_and_a_message_frame_follows_the_header() {
        let payload = RawValue::from_string("{\"text\":\"a\\nb\"}".into()).unwrap();
        let frame = crate::protocol::encode_server_message("r", &payload);
        for action in [
            RoomAction::Message {
                room_id: room(),
                to: None,
                frame: frame.clone(),
            },
            RoomAction::Message {
                room_id: room(),
                to: Some("b".into()),
                frame: frame.clone(),
            },
            RoomAction::Updated {
                room_id: room(),
                participant: p("a"),
            },
            RoomAction::Remove {
                room_id: room(),
                participant_id: "a".into(),
            },
            RoomAction::Close { room_id: room() },
        ] {
            let event = RemoteEvent::Action(action);
            let bytes = encode("x", &event);
            assert_eq!(decode_on(&bytes, "r").unwrap().event, event);
            // On another room's channel it is refused like any event.
            assert!(matches!(
                decode_on(&bytes, "other"),
                Err(WireError::RoomMismatch)
            ));
        }
        let message = encode(
            "x",
            &RemoteEvent::Action(RoomAction::Message {
                room_id: room(),
                to: None,
                frame: frame.clone(),
            }),
        );
        assert!(
            message.ends_with(frame.as_bytes()),
            "frame after the header"
        );
    }

    #[test]
    fn forged_server_api_actions_are_refused() {
        let head = |rest: &str| format!("{{\"v\":1,\"origin\":\"o\",{rest}}}\n");
        let message = |frame: &str| {
            format!(
                "{}{frame}",
                head("\"k\":\"server_message\",\"room_id\":\"r\",\"to\":null")
            )
        };
        let ts = "2026-11-28T16:30:27.123Z";
        // A relay's frame passed off as a server message, or one naming a sender.
        let relay_frame = frame_text("1");
        assert!(matches!(
            decode_on(message(&relay_frame).as_bytes(), "r"),
            Err(WireError::Frame(_))
        ));
        let with_sender = format!("{{\"type\":\"server-message\",\"payload\":1,\"sender_id\":\"a\",\"room_id\":\"r\",\"timestamp\":\"{ts}\",\"to\":null}}");
        assert!(matches!(
            decode_on(message(&with_sender).as_bytes(), "r"),
            Err(WireError::Frame(_))
        ));
        let other_room = format!("{{\"type\":\"server-message\",\"payload\":1,\"sender_id\":null,\"room_id\":\"x\",\"timestamp\":\"{ts}\",\"to\":null}}");
        assert!(matches!(
            decode_on(message(&other_room).as_bytes(), "r"),
            Err(WireError::Frame(_))
        ));
        let deep = format!("{{\"type\":\"server-message\",\"payload\":{}{},\"sender_id\":null,\"room_id\":\"r\",\"timestamp\":\"{ts}\",\"to\":null}}", "[".repeat(40), "]".repeat(40));
        assert!(matches!(
            decode_on(message(&deep).as_bytes(), "r"),
            Err(WireError::TooDeep)
        ));
        let good = format!("{{\"type\":\"server-message\",\"payload\":1,\"sender_id\":null,\"room_id\":\"r\",\"timestamp\":\"{ts}\",\"to\":null}}");
        assert!(decode_on(message(&good).as_bytes(), "r").is_ok());
        // A removal of an id that is no participant id, a close carrying a frame.
        let bad_id = head("\"k\":\"remove\",\"room_id\":\"r\",\"participant_id\":\"a b\"");
        assert!(matches!(
            decode_on(bad_id.as_bytes(), "r"),
            Err(WireError::Field("participant_id"))
        ));
        let close_with_frame = format!("{}{good}", head("\"k\":\"close_room\",\"room_id\":\"r\""));
        assert!(matches!(
            decode_on(close_with_frame.as_bytes(), "r"),
            Err(WireError::Field("frame"))
        ));
        let extra = head("\"k\":\"close_room\",\"room_id\":\"r\",\"all\":true");
        assert!(matches!(
            decode_on(extra.as_bytes(), "r"),
            Err(WireError::Header(_))
        ));
    }

    #[test]
    fn relay_frame_travels_verbatim_after_the_header() {
        let event = relay("{\"sdp\":\"v=0\\r\\n\"}", Some("b"));
        let RemoteEvent::Relay(m) = &event else {
            unreachable!()
        };
        let bytes = encode("inst-1", &event);
        assert!(
            bytes.ends_with(m.frame.as_bytes()),
            "frame must not be re-encoded"
        );
        let back = decode(&bytes, &room(), &LIMITS).unwrap();
        assert_eq!(back.origin, "inst-1");
        assert_eq!(back.event, event);
        let broadcast = relay("[1,{\"x\":null}]", None);
        assert_eq!(
            decode(&encode("i", &broadcast), &room(), &LIMITS)
                .unwrap()
                .event,
            broadcast
        );
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
                reason: LeaveReason::Closed,
            },
        ] {
            let bytes = encode("i1", &event);
            assert_eq!(bytes.iter().filter(|b| **b == b'\n').count(), 1);
            assert_eq!(decode(&bytes, &room(), &LIMITS).unwrap().event, event);
        }
        let mut with_metadata = p("m");
        with_metadata.metadata = serde_json::from_str("{\"role\":\"host\",\"n\":[1,2]}").ok();
        let event = RemoteEvent::Joined {
            room_id: room(),
            participant: with_metadata,
        };
        assert_eq!(
            decode(&encode("i1", &event), &room(), &LIMITS)
                .unwrap()
                .event,
            event
        );
        // A cleaner announces another (dead) instance's participants.
        let lost = RemoteEvent::Left {
            room_id: room(),
            participant: p("c"),
            reason: LeaveReason::InstanceLost,
        };
        assert_eq!(
            decode(&encode("cleaner", &lost), &room(), &LIMITS)
                .unwrap()
                .event,
            lost
        );
    }

    #[test]
    fn the_previous_header_field_order_still_decodes() {
        // Rolling upgrades: the header used to start with `v` and `origin`.
        let bytes = raw_relay("", &frame_text("{}"));
        let env = decode(&bytes, &room(), &LIMITS).unwrap();
        assert_eq!(env.origin, "o");
    }

    /// Table of refused input: (what, bytes, channel room, expected reason label).
    #[test]
    fn forged_input_is_refused_with_its_reason() {
        let joined = |participant: &str, origin: &str| {
            format!("{{\"v\":1,\"origin\":\"{origin}\",\"k\":\"joined\",\"room_id\":\"r\",\"participant\":{participant}}}\n")
                .into_bytes()
        };
        let good_p = |field: &str, value: &str| {
            let mut v = serde_json::to_value(p("x")).unwrap();
            v[field] = serde_json::from_str(value).unwrap();
            v.to_string()
        };
        let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
        let huge = format!("\"{}\"", "x".repeat(LIMITS.max_frame_bytes));
        let frame_with = |from: &str, to: &str| frame_text("{}").replace(from, to);
        let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
            ("plain text", b"hello".to_vec(), "r", "malformed"),
            ("text after a newline", b"hi\n{}".to_vec(), "r", "malformed"),
            ("broken header", b"{]\n".to_vec(), "r", "malformed"),
            (
                "future version",
                b"{\"v\":9,\"origin\":\"o\",\"k\":\"joined\"}\n".to_vec(),
                "r",
                "unsupported_version",
            ),
            (
                "unknown header field",
                raw_relay(",\"admin\":true", &frame_text("{}")),
                "r",
                "malformed",
            ),
            (
                "on another room's channel",
                raw_relay("", &frame_text("{}")),
                "other",
                "room_mismatch",
            ),
            (
                "sender not an id",
                String::from_utf8(raw_relay("", &frame_text("{}")))
                    .unwrap()
                    .replacen("\"sender_id\":\"a\"", "\"sender_id\":\"a b\"", 1)
                    .into_bytes(),
                "r",
                "malformed",
            ),
            (
                "non-JSON frame",
                raw_relay("", "{\"type\":oops"),
                "r",
                "invalid_frame",
            ),
            (
                "frame not an object",
                raw_relay("", "[1]"),
                "r",
                "invalid_frame",
            ),
            (
                "frame with an extra field",
                raw_relay("", &frame_with("\"to\":\"b\"}", "\"to\":\"b\",\"seq\":1}")),
                "r",
                "invalid_frame",
            ),
            (
                "frame from another sender",
                raw_relay(
                    "",
                    &frame_with("\"sender_id\":\"a\"", "\"sender_id\":\"z\""),
                ),
                "r",
                "invalid_frame",
            ),
            (
                "frame of another kind",
                raw_relay("", &frame_with("\"offer\"", "\"answer\"")),
                "r",
                "invalid_frame",
            ),
            (
                "frame for another target",
                raw_relay("", &frame_with("\"to\":\"b\"", "\"to\":\"c\"")),
                "r",
                "invalid_frame",
            ),
            (
                "frame for another room",
                raw_relay("", &frame_with("\"room_id\":\"r\"", "\"room_id\":\"q\"")),
                "r",
                "invalid_frame",
            ),
            (
                "frame without a timestamp",
                raw_relay("", &frame_with("2026-11-28T16:30:27.123Z", "now")),
                "r",
                "invalid_frame",
            ),
            (
                "frame without a payload",
                raw_relay("", &frame_with("\"payload\":{},", "")),
                "r",
                "invalid_frame",
            ),
            (
                "deep payload",
                raw_relay("", &frame_text(&deep)),
                "r",
                "too_deep",
            ),
            (
                "huge payload",
                raw_relay("", &frame_text(&huge)),
                "r",
                "too_large",
            ),
            (
                "huge header",
                format!(
                    "{{\"v\":1,\"pad\":\"{}\"}}\n",
                    "x".repeat(LIMITS.max_header_bytes())
                )
                .into_bytes(),
                "r",
                "too_large",
            ),
            (
                "presence with a frame",
                {
                    let mut b = joined(&serde_json::to_string(&p("x")).unwrap(), "i1");
                    b.extend_from_slice(b"{}");
                    b
                },
                "r",
                "malformed",
            ),
            (
                "joined for another instance",
                joined(&serde_json::to_string(&p("x")).unwrap(), "i2"),
                "r",
                "malformed",
            ),
            (
                "participant id with a slash",
                joined(&good_p("participant_id", "\"a/b\""), "i1"),
                "r",
                "malformed",
            ),
            (
                "empty user id",
                joined(&good_p("user_id", "\"\""), "i1"),
                "r",
                "malformed",
            ),
            (
                "user id too long",
                joined(
                    &good_p("user_id", &format!("\"{}\"", "u".repeat(257))),
                    "i1",
                ),
                "r",
                "malformed",
            ),
            (
                "name too long",
                joined(
                    &good_p("username", &format!("\"{}\"", "n".repeat(257))),
                    "i1",
                ),
                "r",
                "malformed",
            ),
            (
                "joined_at not a time",
                joined(&good_p("joined_at", "\"yesterday\""), "i1"),
                "r",
                "malformed",
            ),
            (
                "instance id with a space",
                joined(&good_p("instance_id", "\"a b\""), "a b"),
                "r",
                "malformed",
            ),
            (
                "metadata too large",
                joined(
                    &good_p("metadata", &format!("{{\"k\":\"{}\"}}", "m".repeat(1024))),
                    "i1",
                ),
                "r",
                "malformed",
            ),
            (
                "metadata not an object",
                joined(&good_p("metadata", "[1]"), "i1"),
                "r",
                "malformed",
            ),
        ];
        for (what, bytes, channel, reason) in cases {
            match decode_on(&bytes, channel) {
                Ok(env) => panic!("{what}: accepted {env:?}"),
                Err(e) => assert_eq!(e.reason().as_str(), reason, "{what}: {e}"),
            }
        }
    }

    #[test]
    fn a_plain_leave_comes_only_from_the_participants_instance() {
        let left = |reason: &str| {
            format!(
                "{{\"v\":1,\"origin\":\"other\",\"k\":\"left\",\"room_id\":\"r\",\"participant\":{},\"reason\":\"{reason}\"}}\n",
                serde_json::to_string(&p("x")).unwrap()
            )
        };
        assert!(matches!(
            decode_on(left("closed").as_bytes(), "r"),
            Err(WireError::Field("participant.instance_id"))
        ));
        assert!(decode_on(left("instance_lost").as_bytes(), "r").is_ok());
        assert!(decode_on(left("made_up").as_bytes(), "r").is_err());
    }

    #[test]
    fn id_and_time_formats() {
        assert!(is_participant_id("0b6f3a52-8d3e-4a4e-9b1e-1c2d3e4f5a6b"));
        assert!(is_participant_id("p_1"));
        for bad in ["", "a b", "a/b", "caf\u{e9}", &"x".repeat(65)] {
            assert!(!is_participant_id(bad), "{bad:?}");
        }
        assert!(is_instance_id("host-1.ns:abc{}"));
        for bad in ["", "a b", "tab\t", &"i".repeat(129)] {
            assert!(!is_instance_id(bad), "{bad:?}");
        }
        assert!(is_timestamp("2026-11-28T16:30:27.123Z"));
        assert!(is_timestamp(&crate::protocol::now_timestamp()));
        for bad in [
            "2026-11-28T16:30:27Z",
            "2026-11-28 16:30:27.123Z",
            "2026-11-28T16:30:27.123+",
            "x",
        ] {
            assert!(!is_timestamp(bad), "{bad:?}");
        }
    }
}
