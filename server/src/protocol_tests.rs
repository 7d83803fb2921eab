//! Table-driven tests of the client codec and the server envelope.

use super::*;
use proptest::prelude::*;

fn decode_err(text: &str) -> ErrorCode {
    match decode_client(text) {
        Err(e) => e.code,
        Ok(m) => panic!("{text:?} decoded as {m:?}"),
    }
}

#[test]
fn invalid_inputs_map_to_error_codes() {
    let cases: &[(&str, ErrorCode)] = &[
        ("", ErrorCode::InvalidMessage),
        ("not json", ErrorCode::InvalidMessage),
        ("[1,2]", ErrorCode::InvalidMessage),
        ("\"offer\"", ErrorCode::InvalidMessage),
        ("42", ErrorCode::InvalidMessage),
        ("null", ErrorCode::InvalidMessage),
        ("{", ErrorCode::InvalidMessage),
        ("{}", ErrorCode::InvalidMessage),
        (r#"{"type": 5, "payload": {}}"#, ErrorCode::InvalidMessage),
        (r#"{"type": null}"#, ErrorCode::InvalidMessage),
        (
            r#"{"type": "offer", "payload": {}}"#,
            ErrorCode::InvalidMessage,
        ),
        (
            r#"{"type": "answer", "payload": {}, "to": null}"#,
            ErrorCode::InvalidMessage,
        ),
        (
            r#"{"type": "ice-candidate", "payload": {}}"#,
            ErrorCode::InvalidMessage,
        ),
        (
            r#"{"type": "offer", "payload": {}, "to": 7}"#,
            ErrorCode::InvalidMessage,
        ),
        (
            r#"{"type": "offer", "payload": {}, "to": ""}"#,
            ErrorCode::InvalidMessage,
        ),
        (
            r#"{"type": "offer", "payload": {}, "to": ["a"]}"#,
            ErrorCode::InvalidMessage,
        ),
        (r#"{"type": "chat-message"}"#, ErrorCode::InvalidMessage),
        (
            r#"{"type": "chat-message", "payload": 1, "payload": 2}"#,
            ErrorCode::InvalidMessage,
        ),
        (r#"{"type": "join", "payload": {}}"#, ErrorCode::UnknownType),
        (
            r#"{"type": "OFFER", "payload": {}, "to": "x"}"#,
            ErrorCode::UnknownType,
        ),
        (
            r#"{"type": "room-state", "payload": {}}"#,
            ErrorCode::UnknownType,
        ),
        (r#"{"type": "", "payload": {}}"#, ErrorCode::UnknownType),
    ];
    for (text, want) in cases {
        assert_eq!(decode_err(text), *want, "input {text:?}");
    }
}

#[test]
fn valid_relays_decode() {
    let m = decode_client(r#"{"type":"offer","payload":{"sdp":"v=0"},"to":"p2","sender_id":"spoof","room_id":"x","timestamp":"t"}"#).unwrap();
    match m {
        ClientMessage::Relay { kind, to, payload } => {
            assert_eq!(kind, RelayKind::Offer);
            assert_eq!(to.as_deref(), Some("p2"));
            assert_eq!(payload.get(), r#"{"sdp":"v=0"}"#);
        }
        other => panic!("{other:?}"),
    }
    for kind in ["media-control", "screen-share-control", "chat-message"] {
        let text = format!(r#"{{"type":"{kind}","payload":{{"a":1}}}}"#);
        match decode_client(&text).unwrap() {
            ClientMessage::Relay { kind: k, to, .. } => {
                assert_eq!(k.as_str(), kind);
                assert_eq!(to, None);
            }
            other => panic!("{other:?}"),
        }
    }
    // Any JSON value is a payload, including null, and is kept verbatim.
    match decode_client(r#"{"type":"chat-message","payload":null}"#).unwrap() {
        ClientMessage::Relay { payload, .. } => assert_eq!(payload.get(), "null"),
        other => panic!("{other:?}"),
    }
    match decode_client(r#"  {"type":"ping"}"#).unwrap() {
        ClientMessage::Ping { payload } => assert!(payload.is_none()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn relay_envelope_has_exact_shape_and_splice_point() {
    let payload = RawValue::from_string(r#"{"sdp":"v=0"}"#.into()).unwrap();
    let frame = encode_relay(RelayKind::IceCandidate, &payload, "p1", "room", Some("p2"));
    assert!(
        frame.as_str().starts_with("{\"type\":"),
        "splice point for a later seq"
    );
    let v: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
    let obj = v.as_object().unwrap();
    let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    let mut want = vec!["payload", "room_id", "sender_id", "timestamp", "to", "type"];
    want.sort();
    let mut got = keys.clone();
    got.sort();
    assert_eq!(got, want);
    assert_eq!(v["type"], "ice-candidate");
    assert_eq!(v["payload"]["sdp"], "v=0");
    assert_eq!(v["sender_id"], "p1");
    assert_eq!(v["room_id"], "room");
    assert_eq!(v["to"], "p2");
    let ts = v["timestamp"].as_str().unwrap();
    assert_eq!(ts.len(), "2026-11-28T16:30:27.123Z".len(), "{ts}");
    assert!(ts.ends_with('Z'));
    assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok());
}

fn participant(id: &str) -> ParticipantInfo {
    ParticipantInfo {
        participant_id: id.into(),
        user_id: format!("u-{id}"),
        username: format!("name {id}"),
        joined_at: "2026-11-28T16:30:27.123Z".into(),
        instance_id: "i".into(),
    }
}

#[test]
fn server_messages() {
    let me = participant("a");
    let all = [participant("b"), me.clone()];
    let v: serde_json::Value =
        serde_json::from_str(encode_room_state("r", &me, &all).as_str()).unwrap();
    assert_eq!(v["type"], "room-state");
    assert_eq!(v["sender_id"], serde_json::Value::Null);
    assert_eq!(v["to"], serde_json::Value::Null);
    assert_eq!(
        v["payload"]["self"],
        serde_json::json!({"participant_id":"a","user_id":"u-a","username":"name a"})
    );
    assert_eq!(v["payload"]["participant_count"], 2);
    assert_eq!(
        v["payload"]["participants"][0],
        serde_json::json!({"participant_id":"b","user_id":"u-b","username":"name b","joined_at":"2026-11-28T16:30:27.123Z"})
    );

    let v: serde_json::Value =
        serde_json::from_str(encode_user_left("r", &me, LeaveReason::SlowConsumer).as_str())
            .unwrap();
    assert_eq!(v["type"], "user-left");
    assert_eq!(
        v["payload"],
        serde_json::json!({"participant_id":"a","user_id":"u-a","username":"name a","joined_at":"2026-11-28T16:30:27.123Z","reason":"slow_consumer"})
    );

    let v: serde_json::Value = serde_json::from_str(encode_user_joined("r", &me).as_str()).unwrap();
    assert_eq!(v["type"], "user-joined");
    assert!(
        v["payload"].get("instance_id").is_none(),
        "internal fields stay internal"
    );

    let v: serde_json::Value =
        serde_json::from_str(encode_error("r", ErrorCode::TargetNotFound, "nobody").as_str())
            .unwrap();
    assert_eq!(
        v["payload"],
        serde_json::json!({"code":"target_not_found","message":"nobody"})
    );

    let v: serde_json::Value = serde_json::from_str(encode_reconnect("r", 1234).as_str()).unwrap();
    assert_eq!(v["type"], "reconnect");
    assert_eq!(v["payload"], serde_json::json!({"after_ms":1234}));

    let v: serde_json::Value = serde_json::from_str(encode_pong("r", None).as_str()).unwrap();
    assert_eq!(v["type"], "pong");
    assert_eq!(v["payload"], serde_json::Value::Null);
}

#[test]
fn error_codes_have_wire_names() {
    for c in ErrorCode::ALL {
        assert_eq!(
            serde_json::to_value(c).unwrap(),
            serde_json::Value::String(c.as_str().into())
        );
    }
    for k in RelayKind::ALL {
        assert_eq!(
            serde_json::to_value(k).unwrap(),
            serde_json::Value::String(k.as_str().into())
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary text never panics the decoder.
    #[test]
    fn decode_never_panics_on_text(s in ".{0,256}") {
        let _ = decode_client(&s);
    }

    /// Arbitrary JSON-ish objects never panic, and a decoded relay re-encodes to valid JSON.
    #[test]
    fn decode_never_panics_on_objects(
        ty in prop_oneof![Just("offer".to_string()), Just("chat-message".to_string()), Just("ping".to_string()), "[a-z-]{0,12}"],
        to in proptest::option::of(prop_oneof![Just("null".to_string()), Just("\"p\"".to_string()), Just("3".to_string()), Just("[]".to_string())]),
        payload in proptest::option::of(prop_oneof![Just("{}".to_string()), Just("null".to_string()), Just("[1,{\"a\":\"\\u0000\"}]".to_string()), "\"[^\"\\\\]{0,20}\""]),
        junk in "[ -~]{0,10}",
    ) {
        let mut text = format!("{{\"type\":{}", serde_json::Value::String(ty));
        if let Some(to) = to { text.push_str(&format!(",\"to\":{to}")); }
        if let Some(p) = payload { text.push_str(&format!(",\"payload\":{p}")); }
        text.push('}');
        text.push_str(&junk);
        if let Ok(ClientMessage::Relay { kind, to, payload }) = decode_client(&text) {
            let frame = encode_relay(kind, &payload, "me", "room", to.as_deref());
            let parsed: Result<serde_json::Value, _> = serde_json::from_str(frame.as_str());
            prop_assert!(parsed.is_ok());
        }
    }
}
