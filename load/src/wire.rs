//! The load generator's side of the wire, pure: probe messages out (stream,
//! sequence number and send time in the payload, padded to a size) and
//! server frames in, classified into the few events the scenarios need.
//! Two dialects: Switchboard's protocol, and the PeerJS server's (for the
//! same relay load against the server most users would otherwise pick).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// What a probe carries: its stream (sender), its number on that stream,
/// and its send time in µs on the run's one clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Probe {
    #[serde(rename = "s")]
    pub stream: u32,
    pub n: u64,
    #[serde(rename = "t")]
    pub sent_us: u64,
}

/// Which server protocol a target speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Switchboard,
    /// PeerJS server 1.x: `{"type":"CANDIDATE","dst":id,"payload":..}`, no rooms.
    PeerJs,
}

/// PeerJS's name for a Switchboard signaling type (PeerJS has no broadcast).
fn peerjs_kind(kind: &str) -> &'static str {
    match kind {
        "offer" => "OFFER",
        "answer" => "ANSWER",
        _ => "CANDIDATE",
    }
}

/// A client message carrying `probe`, `to` a participant (or to the room),
/// padded with `x` so the whole text is `size` bytes when `size` is larger
/// than the bare message.
pub fn encode_probe(
    dialect: Dialect,
    kind: &str,
    to: Option<&str>,
    probe: &Probe,
    size: usize,
) -> String {
    let head = match (dialect, to) {
        (Dialect::PeerJs, to) => format!(
            r#"{{"type":"{}","dst":{},"payload":{{"#,
            peerjs_kind(kind),
            serde_json::Value::from(to.unwrap_or_default())
        ),
        (Dialect::Switchboard, to) => match to {
            // Participant ids come from the server: escape them like any string.
            Some(to) => format!(
                r#"{{"type":"{kind}","to":{},"payload":{{"#,
                serde_json::Value::from(to)
            ),
            None => format!(r#"{{"type":"{kind}","payload":{{"#),
        },
    };
    let body = format!(
        r#""s":{},"n":{},"t":{},"p":""#,
        probe.stream, probe.n, probe.sent_us
    );
    const TAIL: &str = "\"}}";
    let bare = head.len() + body.len() + TAIL.len();
    let pad = size.saturating_sub(bare);
    let mut out = String::with_capacity(bare + pad);
    out.push_str(&head);
    out.push_str(&body);
    out.extend(std::iter::repeat_n('x', pad));
    out.push_str(TAIL);
    out
}

/// A server frame as the scenarios see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `room-state`: our participant id and everyone else already there.
    RoomState {
        self_id: String,
        others: Vec<String>,
    },
    Joined {
        participant_id: String,
    },
    Left {
        participant_id: String,
    },
    /// A relayed message carrying one of our probes.
    Probe(Probe),
    Error {
        code: String,
    },
    /// PeerJS: the server accepted our id.
    Open,
    /// Anything else (`pong`, `ack`, `reconnect`, a foreign relay, ...).
    Other,
}

/// A frame that is not the JSON object the protocol promises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed;

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Id {
    participant_id: String,
}

#[derive(Deserialize)]
struct RoomState {
    #[serde(rename = "self")]
    me: Id,
    #[serde(default)]
    participants: Vec<Id>,
}

#[derive(Deserialize)]
struct ErrorPayload {
    code: String,
}

#[derive(Deserialize)]
struct PeerJsError {
    msg: String,
}

const RELAY_KINDS: [&str; 9] = [
    "OFFER",
    "ANSWER",
    "CANDIDATE",
    "offer",
    "answer",
    "ice-candidate",
    "media-control",
    "screen-share-control",
    "chat-message",
];

fn payload<'a, T: Deserialize<'a>>(raw: Option<&'a RawValue>) -> Result<T, Malformed> {
    let raw = raw.ok_or(Malformed)?;
    serde_json::from_str(raw.get()).map_err(|_| Malformed)
}

/// Classifies one text frame from the server.
pub fn classify(text: &str) -> Result<Event, Malformed> {
    let env: Envelope<'_> = serde_json::from_str(text).map_err(|_| Malformed)?;
    Ok(match env.kind.as_ref() {
        "room-state" => {
            let rs: RoomState = payload(env.payload)?;
            let self_id = rs.me.participant_id;
            let others = rs
                .participants
                .into_iter()
                .map(|p| p.participant_id)
                .filter(|p| *p != self_id)
                .collect();
            Event::RoomState { self_id, others }
        }
        "user-joined" => Event::Joined {
            participant_id: payload::<Id>(env.payload)?.participant_id,
        },
        "user-left" => Event::Left {
            participant_id: payload::<Id>(env.payload)?.participant_id,
        },
        "error" => Event::Error {
            code: payload::<ErrorPayload>(env.payload)?.code,
        },
        "OPEN" => Event::Open,
        "ERROR" => Event::Error {
            code: format!("peerjs: {}", payload::<PeerJsError>(env.payload)?.msg),
        },
        // A message PeerJS could not deliver.
        "EXPIRE" | "ID-TAKEN" => Event::Error {
            code: format!("peerjs: {}", env.kind),
        },
        kind if RELAY_KINDS.contains(&kind) => match payload::<Probe>(env.payload) {
            Ok(p) => Event::Probe(p),
            // Someone else's message in a shared room: not ours to count.
            Err(Malformed) => Event::Other,
        },
        _ => Event::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROBE: Probe = Probe {
        stream: 7,
        n: 42,
        sent_us: 123_456,
    };

    #[test]
    fn probe_is_padded_to_the_exact_size() {
        for size in [200, 1024, 4096] {
            let m = encode_probe(
                Dialect::Switchboard,
                "ice-candidate",
                Some("p-1"),
                &PROBE,
                size,
            );
            assert_eq!(m.len(), size);
            let v: serde_json::Value = serde_json::from_str(&m).unwrap();
            assert_eq!(v["type"], "ice-candidate");
            assert_eq!(v["to"], "p-1");
            assert_eq!(v["payload"]["n"], 42);
        }
    }

    #[test]
    fn small_sizes_give_the_bare_message() {
        let m = encode_probe(Dialect::Switchboard, "chat-message", None, &PROBE, 1);
        assert_eq!(
            m,
            r#"{"type":"chat-message","payload":{"s":7,"n":42,"t":123456,"p":""}}"#
        );
    }

    #[test]
    fn relayed_probe_round_trips_through_a_server_envelope() {
        let sent = encode_probe(Dialect::Switchboard, "offer", Some("b"), &PROBE, 300);
        let v: serde_json::Value = serde_json::from_str(&sent).unwrap();
        // What the server delivers: its envelope around the original payload.
        let delivered = serde_json::json!({
            "type": "offer", "payload": v["payload"], "sender_id": "a",
            "room_id": "r", "timestamp": "2026-01-01T00:00:00.000Z", "to": "b", "seq": 3
        })
        .to_string();
        assert_eq!(classify(&delivered), Ok(Event::Probe(PROBE)));
    }

    #[test]
    fn room_state_lists_others_without_self() {
        let text = r#"{"type":"room-state","payload":{"self":{"participant_id":"me","user_id":"u","username":"n"},
            "participants":[{"participant_id":"a"},{"participant_id":"me"},{"participant_id":"b"}],
            "participant_count":3},"sender_id":null,"room_id":"r","timestamp":"t","to":null}"#;
        assert_eq!(
            classify(text),
            Ok(Event::RoomState {
                self_id: "me".into(),
                others: vec!["a".into(), "b".into()]
            })
        );
    }

    #[test]
    fn presence_errors_and_others() {
        assert_eq!(
            classify(r#"{"type":"user-joined","payload":{"participant_id":"x","user_id":"u"}}"#),
            Ok(Event::Joined {
                participant_id: "x".into()
            })
        );
        assert_eq!(
            classify(r#"{"type":"user-left","payload":{"participant_id":"x","reason":"closed"}}"#),
            Ok(Event::Left {
                participant_id: "x".into()
            })
        );
        assert_eq!(
            classify(r#"{"type":"error","payload":{"code":"rate_limited","message":"slow down"}}"#),
            Ok(Event::Error {
                code: "rate_limited".into()
            })
        );
        assert_eq!(
            classify(r#"{"type":"pong","payload":null}"#),
            Ok(Event::Other)
        );
        assert_eq!(
            classify(r#"{"type":"chat-message","payload":{"text":"hi"}}"#),
            Ok(Event::Other)
        );
    }

    #[test]
    fn peerjs_dialect() {
        let m = encode_probe(Dialect::PeerJs, "ice-candidate", Some("b"), &PROBE, 250);
        assert_eq!(m.len(), 250);
        let v: serde_json::Value = serde_json::from_str(&m).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["dst"].as_str()),
            (Some("CANDIDATE"), Some("b"))
        );
        // What the PeerJS server forwards: the message plus `src`.
        let mut fwd = v.clone();
        fwd["src"] = "a".into();
        assert_eq!(classify(&fwd.to_string()), Ok(Event::Probe(PROBE)));
        assert_eq!(classify(r#"{"type":"OPEN"}"#), Ok(Event::Open));
        assert_eq!(
            classify(r#"{"type":"ERROR","payload":{"msg":"Invalid key provided"}}"#),
            Ok(Event::Error {
                code: "peerjs: Invalid key provided".into()
            })
        );
        assert_eq!(
            classify(r#"{"type":"EXPIRE","src":"b","dst":"a"}"#),
            Ok(Event::Error {
                code: "peerjs: EXPIRE".into()
            })
        );
    }

    #[test]
    fn malformed_frames() {
        assert_eq!(classify("not json"), Err(Malformed));
        assert_eq!(classify(r#"{"payload":{}}"#), Err(Malformed));
        assert_eq!(
            classify(r#"{"type":"room-state","payload":{}}"#),
            Err(Malformed)
        );
        assert_eq!(classify(r#"{"type":"user-joined"}"#), Err(Malformed));
    }
}
