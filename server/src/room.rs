//! Room vocabulary shared by every layer: validated room ids, participant
//! descriptions and the reasons a participant leaves. Pure data, no I/O.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest room id we accept (DESIGN.md: 1–64 characters).
pub const MAX_ROOM_ID_LEN: usize = 64;

/// A room id that passed validation: 1–64 characters of `[A-Za-z0-9_-]`.
///
/// The restricted alphabet keeps ids safe to embed in Redis keys, channel
/// names (`{room}` hash tags) and log lines without escaping.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RoomId(String);

/// Why a room id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomIdError {
    #[error("room id is empty")]
    Empty,
    #[error("room id is longer than {MAX_ROOM_ID_LEN} characters")]
    TooLong,
    #[error("room id may only contain A-Z, a-z, 0-9, '_' and '-'")]
    InvalidCharacter,
}

impl RoomId {
    /// Validates `raw` against the room-id rules.
    pub fn parse(raw: &str) -> Result<Self, RoomIdError> {
        if raw.is_empty() {
            return Err(RoomIdError::Empty);
        }
        // Checked on bytes: every allowed character is ASCII, so a multi-byte
        // character is refused by the alphabet check below anyway.
        if raw.len() > MAX_ROOM_ID_LEN {
            return Err(RoomIdError::TooLong);
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(RoomIdError::InvalidCharacter);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RoomId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        RoomId::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// Application data about a participant: the token's `metadata` claim (a
/// JSON object, bounded by `limits.max_metadata_bytes`), replaceable through
/// the server API.
pub type Metadata = serde_json::Map<String, serde_json::Value>;

/// One participant (= one WebSocket connection) as the room sees it.
///
/// `instance_id` says which server instance holds the connection; it is not
/// sent to clients but lets a bus remove the participants of a dead instance.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    pub participant_id: String,
    pub user_id: String,
    pub username: String,
    /// RFC 3339 UTC with milliseconds.
    pub joined_at: String,
    pub instance_id: String,
    /// Absent from the record when the token carried none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

/// Size of `metadata` as it travels: compact JSON, in bytes.
pub fn metadata_bytes(metadata: &Metadata) -> usize {
    serde_json::to_vec(metadata).map_or(usize::MAX, |v| v.len())
}

/// Puts a participant list in the one order every client-facing listing uses
/// (room-state and the REST endpoint): by `joined_at`, then `participant_id`.
/// RFC 3339 UTC timestamps of equal precision sort chronologically as strings.
/// Bus implementations may return members in any order, so listings sort here.
pub fn sort_by_join<P: std::borrow::Borrow<ParticipantInfo>>(list: &mut [P]) {
    list.sort_by(|a, b| {
        let (a, b) = (a.borrow(), b.borrow());
        (a.joined_at.as_str(), a.participant_id.as_str())
            .cmp(&(b.joined_at.as_str(), b.participant_id.as_str()))
    });
}

/// Why a participant left a room; sent as `payload.reason` of `user-left`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// The client closed the connection (or it failed without a better reason).
    Closed,
    /// The client stopped answering WebSocket pings.
    Timeout,
    /// The client did not read fast enough and a message could not be queued.
    SlowConsumer,
    /// The client kept flooding past the rate limit.
    RateLimited,
    /// The server instance is shutting down.
    Draining,
    /// The instance holding the participant disappeared (Redis heartbeat expired).
    InstanceLost,
    /// The participant's token expired and was not refreshed.
    TokenExpired,
    /// The session reached `limits.max_session_secs`.
    SessionLimit,
    /// The server API removed the participant (or every connection of its user).
    Removed,
    /// The server API closed the room.
    RoomClosed,
}

impl LeaveReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Closed => "closed",
            LeaveReason::Timeout => "timeout",
            LeaveReason::SlowConsumer => "slow_consumer",
            LeaveReason::RateLimited => "rate_limited",
            LeaveReason::Draining => "draining",
            LeaveReason::InstanceLost => "instance_lost",
            LeaveReason::TokenExpired => "token_expired",
            LeaveReason::SessionLimit => "session_limit",
            LeaveReason::Removed => "removed",
            LeaveReason::RoomClosed => "room_closed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_id_rules() {
        let long_ok = "a".repeat(64);
        let too_long = "a".repeat(65);
        let cases: &[(&str, Result<(), RoomIdError>)] = &[
            ("demo", Ok(())),
            ("A-z_09", Ok(())),
            ("-", Ok(())),
            (&long_ok, Ok(())),
            ("", Err(RoomIdError::Empty)),
            (&too_long, Err(RoomIdError::TooLong)),
            ("../x", Err(RoomIdError::InvalidCharacter)),
            ("a/b", Err(RoomIdError::InvalidCharacter)),
            ("caf\u{e9}", Err(RoomIdError::InvalidCharacter)),
            ("a\0b", Err(RoomIdError::InvalidCharacter)),
            ("%00", Err(RoomIdError::InvalidCharacter)),
            ("a b", Err(RoomIdError::InvalidCharacter)),
            ("{x}", Err(RoomIdError::InvalidCharacter)),
        ];
        for (raw, want) in cases {
            let got = RoomId::parse(raw).map(|_| ());
            assert_eq!(&got, want, "room id {raw:?}");
        }
    }

    #[test]
    fn multibyte_room_id_over_64_bytes_is_too_long() {
        // 33 two-byte characters = 66 bytes: refused whichever rule fires first.
        assert!(RoomId::parse(&"\u{e9}".repeat(33)).is_err());
    }

    #[test]
    fn leave_reason_wire_names() {
        for r in [
            LeaveReason::Closed,
            LeaveReason::Timeout,
            LeaveReason::SlowConsumer,
            LeaveReason::RateLimited,
            LeaveReason::Draining,
            LeaveReason::InstanceLost,
            LeaveReason::TokenExpired,
            LeaveReason::SessionLimit,
            LeaveReason::Removed,
            LeaveReason::RoomClosed,
        ] {
            let json = serde_json::to_value(r).unwrap();
            assert_eq!(json, serde_json::Value::String(r.as_str().into()));
        }
    }
}
