//! Table-driven tests of the client codec and the server envelope.

use super::*;
use proptest::prelude::*;

/// The default `limits.max_json_depth`.
const DEPTH: usize = 32;

fn decode_err(text: &str) -> ErrorCode {
    match decode_client(text, DEPTH) {
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
    let m = decode_client(r#"{"type":"offer","payload":{"sdp":"v=0"},"to":"p2","sender_id":"spoof","room_id":"x","timestamp":"t"}"#, DEPTH).unwrap();
    match m {
        ClientMessage::Relay {
            kind, to, payload, ..
        } => {
            assert_eq!(kind, RelayKind::Offer);
            assert_eq!(to.as_deref(), Some("p2"));
            assert_eq!(payload.get(), r#"{"sdp":"v=0"}"#);
        }
        other => panic!("{other:?}"),
    }
    for kind in ["media-control", "screen-share-control", "chat-message"] {
        let text = format!(r#"{{"type":"{kind}","payload":{{"a":1}}}}"#);
        match decode_client(&text, DEPTH).unwrap() {
            ClientMessage::Relay { kind: k, to, .. } => {
                assert_eq!(k.as_str(), kind);
                assert_eq!(to, None);
            }
            other => panic!("{other:?}"),
        }
    }
    // Any JSON value is a payload, including null, and is kept verbatim.
    match decode_client(r#"{"type":"chat-message","payload":null}"#, DEPTH).unwrap() {
        ClientMessage::Relay { payload, .. } => assert_eq!(payload.get(), "null"),
        other => panic!("{other:?}"),
    }
    match decode_client(r#"  {"type":"ping"}"#, DEPTH).unwrap() {
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
    crate::test_support::participant(id, "i")
}

#[test]
fn server_messages() {
    let me = participant("a");
    let all = [participant("b"), me.clone()];
    let v: serde_json::Value =
        serde_json::from_str(encode_room_state("r", &me, &all, ResumeView::default()).as_str())
            .unwrap();
    assert_eq!(v["type"], "room-state");
    assert_eq!(v["sender_id"], serde_json::Value::Null);
    assert_eq!(v["to"], serde_json::Value::Null);
    assert_eq!(
        v["payload"]["self"],
        serde_json::json!({"participant_id":"a","user_id":"user-a","username":"User a"})
    );
    assert_eq!(v["payload"]["participant_count"], 2);
    assert_eq!(
        v["payload"]["participants"][0],
        serde_json::json!({"participant_id":"b","user_id":"user-b","username":"User b","joined_at":"2026-11-28T16:30:27.123Z"})
    );

    let v: serde_json::Value =
        serde_json::from_str(encode_user_left("r", &me, LeaveReason::SlowConsumer).as_str())
            .unwrap();
    assert_eq!(v["type"], "user-left");
    assert_eq!(
        v["payload"],
        serde_json::json!({"participant_id":"a","user_id":"user-a","username":"User a","joined_at":"2026-11-28T16:30:27.123Z","reason":"slow_consumer"})
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

/// `depth` levels of alternating arrays and objects: `[{"a":[{"a":...}]}]`.
fn nested(depth: usize, leaf: &str) -> String {
    let mut open = String::new();
    let mut close = String::new();
    for level in 0..depth {
        if level % 2 == 0 {
            open.push('[');
            close.insert(0, ']');
        } else {
            open.push_str("{\"a\":");
            close.insert(0, '}');
        }
    }
    format!("{open}{leaf}{close}")
}

/// The nesting depth serde_json sees (the reference the scanner must match).
fn reference_depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(reference_depth).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(reference_depth).max().unwrap_or(0),
        _ => 0,
    }
}

#[test]
fn nesting_depth_table() {
    let cases: &[(&str, usize, bool)] = &[
        ("{}", 1, false),
        ("{}", 0, true),
        (r#"{"payload":{}}"#, 2, false),
        (r#"{"payload":{}}"#, 1, true),
        (r#"{"payload":[[[]]]}"#, 4, false),
        (r#"{"payload":[[[]]]}"#, 3, true),
        // Siblings do not add up; only the deepest path counts.
        (r#"{"a":[1],"b":{"c":[]},"d":[]}"#, 3, false),
        // Brackets inside strings are text, including after escaped quotes.
        (r#"{"payload":"[[[[{{{{"}"#, 1, false),
        (r#"{"payload":"\"[[[[\\"}"#, 1, false),
        (r#"{"payload":"\\\"[[[["}"#, 1, false),
        (r#"{"p":"\\","q":[[]]}"#, 3, false),
        (r#"{"p":"\\","q":[[]]}"#, 2, true),
    ];
    for (text, max, want) in cases {
        assert_eq!(
            nests_deeper_than(text, *max),
            *want,
            "{text} with max {max}"
        );
    }
}

#[test]
fn deep_payloads_are_invalid_messages() {
    // The envelope is level 1: a payload may nest DEPTH - 1 levels.
    let ok = format!(
        r#"{{"type":"chat-message","payload":{}}}"#,
        nested(DEPTH - 1, "1")
    );
    assert!(matches!(
        decode_client(&ok, DEPTH),
        Ok(ClientMessage::Relay { .. })
    ));
    for depth in [DEPTH, 100, 10_000, 200_000] {
        let deep = format!(
            r#"{{"type":"chat-message","payload":{}}}"#,
            nested(depth, "1")
        );
        let err = decode_client(&deep, DEPTH).expect_err("too deep");
        assert_eq!(err.code, ErrorCode::InvalidMessage, "depth {depth}");
        assert!(err.message.contains("32 levels"), "{}", err.message);
    }
    // Every type is bounded, ping (whose payload is echoed) included; a
    // configured bound applies as given.
    let ping = format!(r#"{{"type":"ping","payload":{}}}"#, nested(40, "0"));
    assert_eq!(decode_err(&ping), ErrorCode::InvalidMessage);
    assert!(matches!(
        decode_client(&ping, 64),
        Ok(ClientMessage::Ping { .. })
    ));
}

#[test]
fn refresh_token_decodes() {
    match decode_client(
        r#"{"type":"refresh-token","payload":{"token":"a.b.c"}}"#,
        DEPTH,
    ) {
        Ok(ClientMessage::RefreshToken { token }) => assert_eq!(token, "a.b.c"),
        other => panic!("{other:?}"),
    }
    for bad in [
        r#"{"type":"refresh-token"}"#,
        r#"{"type":"refresh-token","payload":null}"#,
        r#"{"type":"refresh-token","payload":"a.b.c"}"#,
        r#"{"type":"refresh-token","payload":{}}"#,
        r#"{"type":"refresh-token","payload":{"token":""}}"#,
        r#"{"type":"refresh-token","payload":{"token":7}}"#,
        r#"{"type":"refresh-token","payload":{"token":["a.b.c"]}}"#,
    ] {
        assert_eq!(decode_err(bad), ErrorCode::InvalidMessage, "{bad}");
    }
}

#[test]
fn token_refreshed_envelope() {
    let v: serde_json::Value =
        serde_json::from_str(encode_token_refreshed("r", 1_900_000_000, None).as_str()).unwrap();
    assert_eq!(v["type"], "token-refreshed");
    assert_eq!(
        v["payload"],
        serde_json::json!({"expires_at": 1_900_000_000u64})
    );
    assert_eq!(v["sender_id"], serde_json::Value::Null);
    assert_eq!(v["to"], serde_json::Value::Null);
}

/// Arbitrary JSON values, a few levels deep, with strings that may hold
/// brackets, quotes and backslashes.
fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i32>().prop_map(|n| serde_json::json!(n)),
        "[\\[\\]{}\"\\\\a-z ]{0,8}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(12, 64, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map("[\\[\\]{}\"a-z]{0,4}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary text never panics the decoder.
    #[test]
    fn decode_never_panics_on_text(s in ".{0,256}") {
        let _ = decode_client(&s, DEPTH);
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
        if let Ok(ClientMessage::Relay { kind, to, payload, .. }) = decode_client(&text, DEPTH) {
            let frame = encode_relay(kind, payload, "me", "room", to.as_deref());
            let parsed: Result<serde_json::Value, _> = serde_json::from_str(frame.as_str());
            prop_assert!(parsed.is_ok());
        }
    }

    /// The scanner agrees with serde_json's own view of the depth on any
    /// JSON value, at every bound around it.
    #[test]
    fn scanner_depth_matches_serde(v in arb_json()) {
        let text = serde_json::to_string(&v).unwrap();
        let depth = reference_depth(&v);
        prop_assert!(!nests_deeper_than(&text, depth), "{} is {} deep", text, depth);
        if depth > 0 {
            prop_assert!(nests_deeper_than(&text, depth - 1), "{} is {} deep", text, depth);
        }
    }
}

/// The serde path `encode_relay` replaced, as the reference for its bytes.
fn relay_by_serde(
    kind: RelayKind,
    payload: &RawValue,
    sender: &str,
    room: &str,
    timestamp: &str,
    to: Option<&str>,
) -> String {
    encode(kind.as_str(), payload, Some(sender), room, timestamp, to)
        .as_str()
        .to_owned()
}

/// The timestamp a frame carries (for comparing with the reference encoder).
fn frame_timestamp(frame: &Frame) -> String {
    let v: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
    v["timestamp"].as_str().unwrap().to_owned()
}

#[test]
fn hand_written_relay_matches_serde_byte_for_byte() {
    let cases: &[(&str, &str, Option<&str>, &str)] = &[
        ("p1", "room", Some("p2"), r#"{"sdp":"v=0"}"#),
        ("p1", "room", None, "null"),
        ("p1", "room", None, r#" [1, "a\"b", {"c": "\u00e9"}] "#),
        (
            "8f0c7a7e-2d1b-4d5e-9a51-0e6f3c9d2b11",
            "team.daily-01",
            Some("x"),
            "\"é ünï\"",
        ),
        // Ids that need escaping take the serde fallback: still the same bytes.
        ("p\"1", "room", Some("p\\2"), "{}"),
        ("p1", "ro\u{1}om", Some("p\n2"), "{}"),
    ];
    for &(sender, room, to, payload) in cases {
        let payload = RawValue::from_string(payload.to_owned()).unwrap();
        for kind in RelayKind::ALL {
            let frame = encode_relay(kind, &payload, sender, room, to);
            let want = relay_by_serde(kind, &payload, sender, room, &frame_timestamp(&frame), to);
            assert_eq!(frame.as_str(), want, "{kind:?} {sender:?} {room:?} {to:?}");
        }
    }
}

#[test]
fn cached_timestamp_is_current_and_well_formed() {
    let before = chrono::Utc::now().timestamp_millis();
    let a = now_timestamp();
    let b = now_timestamp();
    let after = chrono::Utc::now().timestamp_millis();
    for ts in [&a, &b] {
        let t = chrono::DateTime::parse_from_rfc3339(ts)
            .unwrap()
            .timestamp_millis();
        assert!(
            (before..=after).contains(&t),
            "{ts} not in [{before}, {after}]"
        );
        assert_eq!(ts.len(), "2026-11-28T16:30:27.123Z".len(), "{ts}");
    }
    // A later millisecond is formatted anew, not served from the cache.
    std::thread::sleep(std::time::Duration::from_millis(3));
    let c = now_timestamp();
    assert!(
        chrono::DateTime::parse_from_rfc3339(&c)
            .unwrap()
            .timestamp_millis()
            > after
    );
}

#[test]
fn prefix_field_is_spliced_before_the_shared_body() {
    let payload = RawValue::from_string(r#"{"candidate":"a"}"#.into()).unwrap();
    let frame = encode_relay(RelayKind::IceCandidate, &payload, "p1", "room", Some("p2"));
    let with_seq = frame.with_prefix_field("seq", "42");
    assert_eq!(
        with_seq.as_str(),
        format!("{{\"seq\":42,{}", &frame.as_str()[1..])
    );
    let v: serde_json::Value = serde_json::from_str(with_seq.as_str()).unwrap();
    assert_eq!(v["seq"], 42);
    assert_eq!(v["type"], "ice-candidate");
    // The original is untouched (other recipients share it).
    assert!(frame.as_str().starts_with("{\"type\":"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Any ids and any JSON payload: the hand-written envelope is the serde one.
    #[test]
    fn relay_encoding_matches_serde(
        sender in "[ -~\u{0}-\u{1f}é]{1,12}",
        room in "[ -~é]{1,12}",
        to in proptest::option::of("[ -~\u{7f}]{1,12}"),
        v in arb_json(),
    ) {
        let payload = RawValue::from_string(serde_json::to_string(&v).unwrap()).unwrap();
        let frame = encode_relay(RelayKind::Offer, &payload, &sender, &room, to.as_deref());
        let want = relay_by_serde(RelayKind::Offer, &payload, &sender, &room, &frame_timestamp(&frame), to.as_deref());
        prop_assert_eq!(frame.as_str(), want.as_str());
    }
}

/// The byte-by-byte scanner `nests_deeper_than` replaced: the reference for any text.
fn nests_deeper_than_bytewise(text: &str, max_depth: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[test]
fn string_skipping_scanner_edge_cases() {
    for (text, depth, want) in [
        (r#"{"a":"\\"}"#, 1, false),
        (r#"{"a":"\\\"[[["}"#, 1, false),
        (r#"{"a":"x\"#, 0, true),
        (r#"{"a":"\"#, 1, false),
        ("\"\\", 0, false),
        (r#""[" [[ "#, 1, true),
        (r#"{"k\"{":[{}]}"#, 2, true),
        (r#"{"k\"{":[{}]}"#, 3, false),
    ] {
        assert_eq!(nests_deeper_than(text, depth), want, "{text:?} at {depth}");
        assert_eq!(
            nests_deeper_than_bytewise(text, depth),
            want,
            "{text:?} at {depth}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// On any text, JSON or not, the string-skipping scanner agrees with the byte loop.
    #[test]
    fn scanner_matches_the_byte_loop(text in "[\\[\\]{}\"\\\\a ]{0,40}", depth in 0usize..6) {
        prop_assert_eq!(nests_deeper_than(&text, depth), nests_deeper_than_bytewise(&text, depth));
    }
}

#[test]
fn a_client_seq_is_read_and_answered() {
    // The seq a message decodes with, or its error's code and seq.
    let relay = |extra: &str| {
        let text = format!(r#"{{"type":"ice-candidate","to":"p","payload":{{}}{extra}}}"#);
        match decode_client(&text, DEPTH) {
            Ok(ClientMessage::Relay { seq, .. }) => Ok(seq),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        }
    };
    assert_eq!(relay(r#","seq":7"#), Ok(Some(7)));
    assert_eq!(relay(""), Ok(None));
    for bad in [
        r#","seq":0"#,
        r#","seq":-1"#,
        r#","seq":1.5"#,
        r#","seq":"3""#,
        r#","seq":9007199254740993"#,
    ] {
        assert_eq!(relay(bad).unwrap_err().code, ErrorCode::InvalidSeq, "{bad}");
    }
    // An otherwise invalid message still names the seq its error answers.
    let e = decode_client(r#"{"type":"offer","payload":{},"seq":4}"#, DEPTH).unwrap_err();
    assert_eq!((e.code, e.seq), (ErrorCode::InvalidMessage, Some(4)));
    let e = decode_client(r#"{"type":"nope","seq":5}"#, DEPTH).unwrap_err();
    assert_eq!((e.code, e.seq), (ErrorCode::UnknownType, Some(5)));
}

#[test]
fn seqs_are_spliced_as_the_last_field() {
    let frame = encode_relay(
        RelayKind::Offer,
        &RawValue::from_string("{\"sdp\":\"x\"}".into()).unwrap(),
        "a",
        "r",
        Some("b"),
    );
    let v: serde_json::Value = serde_json::from_str(frame.with_seq(42).as_str()).unwrap();
    assert_eq!(v["seq"], 42);
    assert_eq!(v["payload"]["sdp"], "x");
    assert_eq!(v["type"], "offer");
    assert!(frame.with_seq(1).as_str().starts_with("{\"type\":"));
    // Every digit count, both ends included (`with_seq` sizes its buffer exactly).
    for seq in [0, 1, 9, 10, 99, 100, 999_999, 1_000_000, u64::MAX] {
        let numbered = frame.with_seq(seq);
        let v: serde_json::Value = serde_json::from_str(numbered.as_str()).unwrap();
        assert_eq!(v["seq"].as_u64(), Some(seq));
        assert_eq!(
            numbered.len(),
            frame.len() + ",\"seq\":".len() + seq.to_string().len()
        );
    }
    let ack: serde_json::Value = serde_json::from_str(encode_ack("r", 9).as_str()).unwrap();
    assert_eq!(
        (ack["type"].as_str(), ack["seq"].as_u64()),
        (Some("ack"), Some(9))
    );
    let err: serde_json::Value = serde_json::from_str(
        encode_error_for("r", ErrorCode::BusUnavailable, "m", Some(3)).as_str(),
    )
    .unwrap();
    assert_eq!(err["payload"]["code"], "bus_unavailable");
    assert_eq!(err["seq"], 3);
}

#[test]
fn room_state_carries_the_resume_token_and_says_when_it_resumed() {
    let me = crate::test_support::participant("a", "i1");
    let fresh: serde_json::Value = serde_json::from_str(
        encode_room_state(
            "r",
            &me,
            std::slice::from_ref(&me),
            ResumeView {
                token: Some("tok"),
                resumed: false,
            },
        )
        .as_str(),
    )
    .unwrap();
    assert_eq!(fresh["payload"]["resume_token"], "tok");
    assert!(fresh["payload"].get("resumed").is_none());
    let resumed: serde_json::Value = serde_json::from_str(
        encode_room_state(
            "r",
            &me,
            std::slice::from_ref(&me),
            ResumeView {
                token: Some("tok"),
                resumed: true,
            },
        )
        .as_str(),
    )
    .unwrap();
    assert_eq!(resumed["payload"]["resumed"], true);
}
