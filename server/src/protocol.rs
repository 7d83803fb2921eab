//! Wire codec, pure: bytes → typed [`ClientMessage`] (validation errors carry
//! the error code to send back) and typed server messages → [`Frame`] bytes.
//! No I/O and no room logic here.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::fmt::Write as _;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tungstenite::Utf8Bytes;

use crate::room::{LeaveReason, Metadata, ParticipantInfo};

/// A serialized server → client message: one JSON object, cheap to clone.
///
/// A relayed message is serialized once and the same `Frame` (reference
/// counted, UTF-8 checked once when it is built) is queued to every
/// recipient; handing it to the WebSocket neither copies nor re-validates it.
/// The bytes always start with `{"type":`, so a per-recipient field such as a
/// delivery `seq` is spliced in front of the shared body without
/// re-serializing it: [`Frame::with_prefix_field`].
#[derive(Clone, PartialEq, Eq)]
pub struct Frame(Utf8Bytes);

impl Frame {
    /// Wraps already-serialized JSON text. Callers outside this module should
    /// only pass bytes that came from [`Frame::as_str`] of another frame
    /// (e.g. a frame carried across the bus).
    pub fn from_json_text(text: String) -> Self {
        Frame(Utf8Bytes::from(text))
    }

    pub fn as_bytes(&self) -> &Bytes {
        self.0.as_ref()
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The frame as WebSocket text. Moved, not cloned: a clone of a frame's bytes that
    /// no one else holds allocates their shared header, and the writer dropped the frame
    /// right after (a malloc, a free and two atomic counts per delivered frame).
    pub fn into_text(self) -> Utf8Bytes {
        self.0
    }

    /// This frame with `"name":value_json` as its first field, for what differs per
    /// recipient (a delivery sequence number): one copy of the body, no re-serializing.
    /// `value_json` must be one JSON value (a number, say) and `name` a plain key.
    pub fn with_prefix_field(&self, name: &str, value_json: &str) -> Frame {
        let body = self.as_str();
        let rest = body.strip_prefix('{').unwrap_or(body);
        let mut out = String::with_capacity(name.len() + value_json.len() + 5 + rest.len());
        out.push_str("{\"");
        out.push_str(name);
        out.push_str("\":");
        out.push_str(value_json);
        out.push(',');
        out.push_str(rest);
        Frame::from_json_text(out)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// This frame with `"seq": seq` as its last field: the per-recipient delivery seq of a
    /// kept message, or the client seq an `ack`/`error` answers. One copy of the bytes, no
    /// re-serialization.
    pub fn with_seq(&self, seq: u64) -> Frame {
        let text = self.as_str();
        let Some(body) = text.strip_suffix('}') else {
            return self.clone();
        };
        // `{}` has no field to follow; ours always have `type`.
        let comma = body.len() > 1;
        let digits = seq.checked_ilog10().map_or(1, |log| log as usize + 1);
        // Exactly the length: bytes gives a buffer with spare capacity a shared header of
        // its own at once (a second allocation per delivered frame), an exact one only
        // when it is first cloned.
        let len = body.len() + usize::from(comma) + "\"seq\":".len() + digits + 1;
        let mut out = String::with_capacity(len);
        out.push_str(body);
        if comma {
            out.push(',');
        }
        out.push_str("\"seq\":");
        // Writing to a String cannot fail.
        let _ = write!(out, "{seq}}}");
        debug_assert_eq!(out.len(), len);
        Frame::from_json_text(out)
    }
}

impl fmt::Debug for Frame {
    // Payloads may hold SDP; never print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Frame({} bytes)", self.0.len())
    }
}

impl Serialize for Frame {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Frame {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if !text.starts_with("{\"type\":") {
            return Err(serde::de::Error::custom("not a switchboard frame"));
        }
        Ok(Frame::from_json_text(text))
    }
}

/// Client message types that are relayed to other participants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RelayKind {
    Offer,
    Answer,
    IceCandidate,
    MediaControl,
    ScreenShareControl,
    ChatMessage,
}

impl RelayKind {
    pub const ALL: [RelayKind; 6] = [
        RelayKind::Offer,
        RelayKind::Answer,
        RelayKind::IceCandidate,
        RelayKind::MediaControl,
        RelayKind::ScreenShareControl,
        RelayKind::ChatMessage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RelayKind::Offer => "offer",
            RelayKind::Answer => "answer",
            RelayKind::IceCandidate => "ice-candidate",
            RelayKind::MediaControl => "media-control",
            RelayKind::ScreenShareControl => "screen-share-control",
            RelayKind::ChatMessage => "chat-message",
        }
    }

    fn from_wire(s: &str) -> Option<Self> {
        RelayKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Offer, answer and ICE candidates must name their target.
    pub fn requires_target(self) -> bool {
        matches!(
            self,
            RelayKind::Offer | RelayKind::Answer | RelayKind::IceCandidate
        )
    }
}

/// Error codes sent in `error` payloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidMessage,
    UnknownType,
    TargetNotFound,
    RateLimited,
    /// The message certainly did not reach the other instances: sending it again is safe.
    BusUnavailable,
    /// The message was handed to Redis, which did not confirm it: it may or may not have
    /// been delivered.
    DeliveryUnknown,
    /// `refresh-token`: the new token is malformed, badly signed or not acceptable.
    InvalidToken,
    /// `refresh-token`: the new token has already expired.
    TokenExpired,
    /// `refresh-token`: the new token is not meant for this service.
    InvalidAudience,
    /// `refresh-token`: the new token does not allow this room.
    RoomForbidden,
    /// `refresh-token`: the new token names another user (`sub`).
    UserMismatch,
    /// `seq` is not a positive integer (at most 2^53).
    InvalidSeq,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::InvalidMessage,
        ErrorCode::UnknownType,
        ErrorCode::TargetNotFound,
        ErrorCode::RateLimited,
        ErrorCode::BusUnavailable,
        ErrorCode::DeliveryUnknown,
        ErrorCode::InvalidToken,
        ErrorCode::TokenExpired,
        ErrorCode::InvalidAudience,
        ErrorCode::RoomForbidden,
        ErrorCode::UserMismatch,
        ErrorCode::InvalidSeq,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::TargetNotFound => "target_not_found",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::BusUnavailable => "bus_unavailable",
            ErrorCode::DeliveryUnknown => "delivery_unknown",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::InvalidAudience => "invalid_audience",
            ErrorCode::RoomForbidden => "room_forbidden",
            ErrorCode::UserMismatch => "user_mismatch",
            ErrorCode::InvalidSeq => "invalid_seq",
        }
    }
}

/// A validated client → server message, borrowing from the text it was decoded from.
#[derive(Debug)]
pub enum ClientMessage<'a> {
    /// A message to relay to `to`, or to every other participant when `to` is `None`.
    Relay {
        kind: RelayKind,
        /// Borrowed from the message text unless it had escapes.
        to: Option<Cow<'a, str>>,
        payload: &'a RawValue,
        /// The client's `seq`: answered with `ack` (or an `error` carrying it), and the
        /// key, with the sender, under which a re-send is recognised.
        seq: Option<u64>,
    },
    /// `ping`; the optional payload is echoed in the `pong`.
    Ping { payload: Option<&'a RawValue> },
    /// `refresh-token`: a new JWT that extends this session past the
    /// current token's `exp` (verified by the session, not here).
    RefreshToken { token: String },
}

/// Why a client message was refused; the connection stays open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub code: ErrorCode,
    pub message: Cow<'static, str>,
    /// The message's `seq` when it could be read: the error answers it.
    pub seq: Option<u64>,
}

impl DecodeError {
    fn invalid(message: impl Into<Cow<'static, str>>) -> Self {
        DecodeError {
            code: ErrorCode::InvalidMessage,
            message: message.into(),
            seq: None,
        }
    }

    fn answering(mut self, seq: Option<u64>) -> Self {
        self.seq = seq;
        self
    }
}

/// Largest client `seq`: JavaScript numbers are exact up to 2^53.
pub const MAX_SEQ: u64 = 1 << 53;

/// Raw shape of a client message. `sender_id`, `room_id` and `timestamp`
/// are deliberately absent: whatever the client writes there is ignored.
/// Nothing is allocated for a valid message: `type` and `to` are borrowed
/// from the text (unless escaped), the payload is relayed as the client wrote it.
#[derive(Deserialize)]
struct WireClientMessage<'a> {
    #[serde(rename = "type", default, borrow, deserialize_with = "present")]
    kind: Option<JsonStr<'a>>,
    #[serde(default, borrow, deserialize_with = "present_raw")]
    payload: Option<&'a RawValue>,
    #[serde(default, borrow)]
    to: Option<JsonStr<'a>>,
    #[serde(default)]
    seq: Option<serde_json::Value>,
}

/// A JSON value read only for whether it is a string, and which.
enum JsonStr<'a> {
    Str(Cow<'a, str>),
    /// Any other JSON value, `null` included (outside an `Option`).
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for JsonStr<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonStrVisitor(std::marker::PhantomData))
    }
}

struct JsonStrVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> serde::de::Visitor<'de> for JsonStrVisitor<'a> {
    type Value = JsonStr<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(JsonStr::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(JsonStr::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(JsonStr::Str(Cow::Owned(v)))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(JsonStr::Other)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(JsonStr::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(JsonStr::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(JsonStr::Other)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(JsonStr::Other)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(JsonStr::Other)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        while a
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        Ok(JsonStr::Other)
    }
}

/// A field that is present, whatever its value: `"type": null` is a `type` that is not a string.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<JsonStr<'de>>, D::Error> {
    JsonStr::deserialize(d).map(Some)
}

/// Distinguishes `"payload": null` (a JSON value, relayed) from a missing field.
fn present_raw<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// `refresh-token` payload.
#[derive(Deserialize)]
struct RefreshPayload {
    token: Option<serde_json::Value>,
}

/// Longest participant id we accept in `to`; ours are 36-character UUIDs.
const MAX_TARGET_LEN: usize = 128;

/// Whether arrays and objects in `text` nest deeper than `max_depth` levels,
/// the outermost counting as level 1 (`{"payload":{}}` is 2 deep). A linear
/// scan without recursion that stops at the first level too deep, so it is
/// safe on any input; text that is not JSON is left to the parser. Strings,
/// most of a signaling message, are skipped with `memchr` (SIMD) rather than
/// byte by byte: the byte loop was 15 % of a relay's instructions.
pub fn nests_deeper_than(text: &str, max_depth: usize) -> bool {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => {
                // To the closing quote: the next quote not escaped by a backslash.
                i += 1;
                loop {
                    let Some(j) = bytes
                        .get(i..)
                        .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
                    else {
                        // Unterminated: nothing after it nests.
                        return false;
                    };
                    i += j;
                    if bytes[i] == b'\\' {
                        i += 2;
                    } else {
                        break;
                    }
                }
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    false
}

/// Decodes one text frame from a client. JSON nesting deeper than
/// `max_depth` levels (see [`nests_deeper_than`]) is refused before parsing:
/// relayed payloads are forwarded verbatim and must not carry a structure
/// that overflows the recursion of a recipient's JSON parser.
pub fn decode_client(text: &str, max_depth: usize) -> Result<ClientMessage<'_>, DecodeError> {
    let trimmed = text.trim_start();
    if !trimmed.starts_with('{') {
        return Err(DecodeError::invalid("message must be a JSON object"));
    }
    if nests_deeper_than(text, max_depth) {
        return Err(DecodeError::invalid(format!(
            "message nests deeper than {max_depth} levels of arrays and objects"
        )));
    }
    let wire: WireClientMessage = serde_json::from_str(text)
        .map_err(|_| DecodeError::invalid("message is not valid JSON of the expected shape"))?;
    let seq = match &wire.seq {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_SEQ).contains(&n) => Some(n),
            _ => {
                return Err(DecodeError {
                    code: ErrorCode::InvalidSeq,
                    message: "\"seq\" must be a positive integer (at most 2^53)".into(),
                    seq: None,
                })
            }
        },
    };
    decode_fields(wire)
        .map_err(|e| e.answering(seq))
        .map(|msg| match msg {
            ClientMessage::Relay {
                kind, to, payload, ..
            } => ClientMessage::Relay {
                kind,
                to,
                payload,
                seq,
            },
            other => other,
        })
}

fn decode_fields(wire: WireClientMessage<'_>) -> Result<ClientMessage<'_>, DecodeError> {
    let kind = match wire.kind {
        Some(JsonStr::Str(s)) => s,
        Some(JsonStr::Other) => return Err(DecodeError::invalid("\"type\" must be a string")),
        None => return Err(DecodeError::invalid("\"type\" is required")),
    };
    let to = match wire.to {
        // `Option` reads `"to": null` as `None`.
        None => None,
        Some(JsonStr::Str(s)) if !s.is_empty() && s.len() <= MAX_TARGET_LEN => Some(s),
        Some(_) => {
            return Err(DecodeError::invalid(
                "\"to\" must be a participant id string or null",
            ))
        }
    };
    if kind == "ping" {
        return Ok(ClientMessage::Ping {
            payload: wire.payload,
        });
    }
    if kind == "refresh-token" {
        return decode_refresh(wire.payload);
    }
    let Some(kind) = RelayKind::from_wire(&kind) else {
        return Err(DecodeError {
            code: ErrorCode::UnknownType,
            message: "unknown message type".into(),
            seq: None,
        });
    };
    if kind.requires_target() && to.is_none() {
        return Err(DecodeError::invalid(format!(
            "\"{}\" requires \"to\"",
            kind.as_str()
        )));
    }
    let Some(payload) = wire.payload else {
        return Err(DecodeError::invalid("\"payload\" is required"));
    };
    Ok(ClientMessage::Relay {
        kind,
        to,
        payload,
        seq: None,
    })
}

/// The `seq` of a client message that is not decoded further (one refused by the rate
/// limit), so its error can answer it.
pub fn peek_seq(text: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct SeqOnly {
        seq: Option<u64>,
    }
    serde_json::from_str::<SeqOnly>(text)
        .ok()
        .and_then(|m| m.seq)
        .filter(|s| (1..=MAX_SEQ).contains(s))
}

fn decode_refresh(payload: Option<&RawValue>) -> Result<ClientMessage<'static>, DecodeError> {
    let refused = || DecodeError::invalid("\"refresh-token\" needs payload {\"token\": \"<jwt>\"}");
    let payload = payload.ok_or_else(refused)?;
    let parsed: RefreshPayload = serde_json::from_str(payload.get()).map_err(|_| refused())?;
    match parsed.token {
        Some(serde_json::Value::String(token)) if !token.is_empty() => {
            Ok(ClientMessage::RefreshToken { token })
        }
        _ => Err(refused()),
    }
}

/// The current time as RFC 3339 UTC with milliseconds (`2026-11-28T16:30:27.123Z`).
pub fn now_timestamp() -> String {
    with_timestamp(str::to_owned)
}

thread_local! {
    /// The last timestamp this thread formatted and its millisecond: every message of a
    /// busy millisecond carries the same text, and formatting it was 1.5 % of a relay.
    static TIMESTAMP: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
}

/// Calls `f` with [`now_timestamp`]'s text, formatted at most once per millisecond per thread.
fn with_timestamp<T>(f: impl FnOnce(&str) -> T) -> T {
    let now = chrono::Utc::now();
    let millis = now.timestamp_millis();
    TIMESTAMP.with(|cell| match cell.try_borrow_mut() {
        Ok(mut cached) => {
            if cached.0 != millis {
                cached.1.clear();
                cached.1.push_str(&format_timestamp(now));
                cached.0 = millis;
            }
            f(&cached.1)
        }
        // Only if `f` itself asked for a timestamp; never in this module.
        Err(_) => f(&format_timestamp(now)),
    })
}

fn format_timestamp(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The envelope every server → client message uses, in wire field order.
#[derive(Serialize)]
struct Envelope<'a, P: Serialize + ?Sized> {
    #[serde(rename = "type")]
    kind: &'a str,
    payload: &'a P,
    sender_id: Option<&'a str>,
    room_id: &'a str,
    timestamp: &'a str,
    to: Option<&'a str>,
}

fn encode<P: Serialize + ?Sized>(
    kind: &str,
    payload: &P,
    sender_id: Option<&str>,
    room_id: &str,
    timestamp: &str,
    to: Option<&str>,
) -> Frame {
    let env = Envelope {
        kind,
        payload,
        sender_id,
        room_id,
        timestamp,
        to,
    };
    // Serializing plain structs, strings and already-valid RawValues into a
    // String cannot fail; fall back to an error frame rather than panic.
    match serde_json::to_string(&env) {
        Ok(text) => Frame::from_json_text(text),
        Err(_) => Frame::from_json_text(format!(
            "{{\"type\":\"error\",\"payload\":{{\"code\":\"invalid_message\",\"message\":\"encoding failed\"}},\"sender_id\":null,\"room_id\":{},\"timestamp\":\"{}\",\"to\":null}}",
            serde_json::Value::String(room_id.to_owned()),
            timestamp
        )),
    }
}

/// A relayed client message, stamped with the server-known sender.
///
/// The hot path of every relay, so written by hand instead of through serde's
/// generic map serializer (17 % of a relay's instructions): the same bytes
/// [`encode`] writes, field by field, into one allocation of the exact size.
pub fn encode_relay(
    kind: RelayKind,
    payload: &RawValue,
    sender_id: &str,
    room_id: &str,
    to: Option<&str>,
) -> Frame {
    with_timestamp(|timestamp| {
        let plain = |s: &str| !s.bytes().any(needs_escape);
        if !(plain(sender_id) && plain(room_id) && plain(timestamp) && to.is_none_or(plain)) {
            // Ids are UUIDs and room ids are validated, so this is for odd input only.
            return encode(
                kind.as_str(),
                payload,
                Some(sender_id),
                room_id,
                timestamp,
                to,
            );
        }
        let kind = kind.as_str();
        let payload = payload.get();
        let to_len = to.map_or(4, |t| t.len() + 2);
        let len = RELAY_FIXED_BYTES
            + kind.len()
            + payload.len()
            + sender_id.len()
            + room_id.len()
            + timestamp.len()
            + to_len;
        let mut out = String::with_capacity(len);
        out.push_str("{\"type\":\"");
        out.push_str(kind);
        out.push_str("\",\"payload\":");
        out.push_str(payload);
        out.push_str(",\"sender_id\":\"");
        out.push_str(sender_id);
        out.push_str("\",\"room_id\":\"");
        out.push_str(room_id);
        out.push_str("\",\"timestamp\":\"");
        out.push_str(timestamp);
        out.push_str("\",\"to\":");
        match to {
            Some(to) => {
                out.push('"');
                out.push_str(to);
                out.push('"');
            }
            None => out.push_str("null"),
        }
        out.push('}');
        debug_assert_eq!(out.len(), len);
        Frame::from_json_text(out)
    })
}

/// The bytes of [`encode_relay`]'s output that are not its variable parts.
const RELAY_FIXED_BYTES: usize =
    r#"{"type":"","payload":,"sender_id":"","room_id":"","timestamp":"","to":}"#.len();

/// Whether serde_json escapes this byte inside a string (quote, backslash, control).
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

#[derive(Serialize)]
struct SelfView<'a> {
    participant_id: &'a str,
    user_id: &'a str,
    username: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a Metadata>,
}

#[derive(Serialize)]
struct PublicParticipant<'a> {
    participant_id: &'a str,
    user_id: &'a str,
    username: &'a str,
    joined_at: &'a str,
    /// Only when the participant has metadata (its token's claim, or what
    /// the server API set).
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a Metadata>,
}

impl<'a> From<&'a ParticipantInfo> for PublicParticipant<'a> {
    fn from(p: &'a ParticipantInfo) -> Self {
        PublicParticipant {
            participant_id: &p.participant_id,
            user_id: &p.user_id,
            username: &p.username,
            joined_at: &p.joined_at,
            metadata: p.metadata.as_ref(),
        }
    }
}

/// The JSON list of participants used by `room-state` and the REST endpoint
/// (no internal fields such as `instance_id`).
pub fn public_participants(list: &[ParticipantInfo]) -> serde_json::Value {
    let public: Vec<PublicParticipant<'_>> = list.iter().map(PublicParticipant::from).collect();
    serde_json::to_value(public).unwrap_or(serde_json::Value::Array(Vec::new()))
}

/// What a `room-state` says about resuming.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResumeView<'a> {
    /// The token to resume this participant with; absent when resuming is off.
    pub token: Option<&'a str>,
    /// This `room-state` answers a resume: the missed messages follow.
    pub resumed: bool,
}

/// `room-state`: the first message after joining. `participants` includes self.
pub fn encode_room_state<P: std::borrow::Borrow<ParticipantInfo>>(
    room_id: &str,
    me: &ParticipantInfo,
    participants: &[P],
    resume: ResumeView<'_>,
) -> Frame {
    #[derive(Serialize)]
    struct RoomState<'a> {
        #[serde(rename = "self")]
        me: SelfView<'a>,
        participants: Vec<PublicParticipant<'a>>,
        participant_count: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        resume_token: Option<&'a str>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        resumed: bool,
    }
    let payload = RoomState {
        me: SelfView {
            participant_id: &me.participant_id,
            user_id: &me.user_id,
            username: &me.username,
            metadata: me.metadata.as_ref(),
        },
        participants: participants
            .iter()
            .map(|p| PublicParticipant::from(p.borrow()))
            .collect(),
        participant_count: participants.len(),
        resume_token: resume.token,
        resumed: resume.resumed,
    };
    encode(
        "room-state",
        &payload,
        None,
        room_id,
        &now_timestamp(),
        None,
    )
}

/// `user-joined`.
pub fn encode_user_joined(room_id: &str, p: &ParticipantInfo) -> Frame {
    encode(
        "user-joined",
        &PublicParticipant::from(p),
        None,
        room_id,
        &now_timestamp(),
        None,
    )
}

/// `user-left` with its reason.
pub fn encode_user_left(room_id: &str, p: &ParticipantInfo, reason: LeaveReason) -> Frame {
    #[derive(Serialize)]
    struct Left<'a> {
        #[serde(flatten)]
        p: PublicParticipant<'a>,
        reason: LeaveReason,
    }
    let payload = Left {
        p: PublicParticipant::from(p),
        reason,
    };
    encode("user-left", &payload, None, room_id, &now_timestamp(), None)
}

/// `participant-updated`: the server API replaced a participant's metadata.
pub fn encode_participant_updated(room_id: &str, p: &ParticipantInfo) -> Frame {
    encode(
        "participant-updated",
        &PublicParticipant::from(p),
        None,
        room_id,
        &now_timestamp(),
        None,
    )
}

/// `server-message`: a message the application backend sent through the
/// server API, to the whole room or one participant. Like every
/// server-originated message it carries `sender_id: null` and `to: null`.
pub fn encode_server_message(room_id: &str, payload: &RawValue) -> Frame {
    encode(
        "server-message",
        payload,
        None,
        room_id,
        &now_timestamp(),
        None,
    )
}

/// `pong`, echoing the ping's payload (or `null`).
pub fn encode_pong(room_id: &str, payload: Option<&RawValue>) -> Frame {
    match payload {
        Some(p) => encode("pong", p, None, room_id, &now_timestamp(), None),
        None => encode("pong", &(), None, room_id, &now_timestamp(), None),
    }
}

/// `reconnect`: the server is draining; reconnect after `after_ms`.
pub fn encode_reconnect(room_id: &str, after_ms: u64) -> Frame {
    #[derive(Serialize)]
    struct Reconnect {
        after_ms: u64,
    }
    encode(
        "reconnect",
        &Reconnect { after_ms },
        None,
        room_id,
        &now_timestamp(),
        None,
    )
}

/// `token-refreshed`: the answer to an accepted `refresh-token`; the session
/// now lasts until `expires_at` (Unix seconds).
pub fn encode_token_refreshed(room_id: &str, expires_at: u64, resume_token: Option<&str>) -> Frame {
    #[derive(Serialize)]
    struct Refreshed<'a> {
        expires_at: u64,
        /// A resume token that lasts as long as the new token.
        #[serde(skip_serializing_if = "Option::is_none")]
        resume_token: Option<&'a str>,
    }
    encode(
        "token-refreshed",
        &Refreshed {
            expires_at,
            resume_token,
        },
        None,
        room_id,
        &now_timestamp(),
        None,
    )
}

/// `ack`: the client message with this `seq` was handed to the bus (or delivered locally).
pub fn encode_ack(room_id: &str, seq: u64) -> Frame {
    encode("ack", &(), None, room_id, &now_timestamp(), None).with_seq(seq)
}

/// `error` answering the client message with `seq` (when it had one).
pub fn encode_error_for(room_id: &str, code: ErrorCode, message: &str, seq: Option<u64>) -> Frame {
    let frame = encode_error(room_id, code, message);
    match seq {
        Some(seq) => frame.with_seq(seq),
        None => frame,
    }
}

/// `error` with a code and a human-readable message.
pub fn encode_error(room_id: &str, code: ErrorCode, message: &str) -> Frame {
    #[derive(Serialize)]
    struct ErrorPayload<'a> {
        code: ErrorCode,
        message: &'a str,
    }
    encode(
        "error",
        &ErrorPayload { code, message },
        None,
        room_id,
        &now_timestamp(),
        None,
    )
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
