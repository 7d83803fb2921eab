//! Forged bus input: whoever can PUBLISH on a room's Redis channel posts text that is not an
//! envelope, a participant who never joined, a leave of a peer who is present, relays from
//! nobody, oversize and overly deep JSON. Two real servers and a real redis-server; the
//! forgeries go in over a separate Redis connection. None may reach a client, change what a
//! later joiner is told, or make a present peer unreachable; each is counted by reason in
//! `/metrics` and logged once per reason, escaped. And the check does not drop what is real:
//! a participant that joins and leaves again before another server has checked its join.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchboard_e2e::client::Client;
use switchboard_e2e::http;
use switchboard_e2e::redis::{RedisProcess, Reply};
use switchboard_e2e::server::{ServerOptions, ServerProcess};
use switchboard_e2e::token::Claims;

const SECRET: &str = "e2e-redis-bus-input-secret-0123456789abcdef";
const ROOM: &str = "forge";
const CHANNEL: &str = "switchboard:room:{forge}:events";
/// A forged log line hidden in a forged message: it must never start a line of its own.
const FAKE_LOG_LINE: &str = "2026-01-01T00:00:00.000000Z  INFO switchboard: admin logged in";

fn token(user: &str) -> String {
    Claims::user(user).hs256(SECRET)
}

fn server(redis: &RedisProcess, instance: &str) -> ServerProcess {
    ServerOptions::with_secret(SECRET)
        .env("REDIS_URL", redis.url())
        .env("SWITCHBOARD_INSTANCE_ID", instance)
        .env("WEBRTC_ROOM_PRESENCE_TTL", "10")
        .start()
}

/// `switchboard_bus_messages_dropped_total` by reason, from `/metrics`.
async fn dropped(server: &ServerProcess, reason: &str) -> u64 {
    let body = http::get(server.addr(), "/metrics").await.text();
    let series = format!("switchboard_bus_messages_dropped_total{{reason=\"{reason}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .unwrap_or_else(|| panic!("no {series:?} in /metrics:\n{body}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{series}: {e}"))
}

fn publish(redis: &RedisProcess, payload: &str) {
    match redis.command(&["PUBLISH", CHANNEL, payload]) {
        Reply::Integer(n) => assert_eq!(n, 2, "both instances are subscribed to {CHANNEL}"),
        other => panic!("PUBLISH answered {other:?}"),
    }
}

fn header(fields: Value) -> String {
    let mut header = json!({"v": 1});
    for (k, v) in fields.as_object().expect("an object") {
        header[k] = v.clone();
    }
    format!("{header}\n")
}

/// A relay envelope as a server would publish it, from `sender` on `origin` to `to`.
fn relay(origin: &str, sender: &str, to: &str, payload: &str) -> String {
    let frame = format!(
        "{{\"type\":\"chat-message\",\"payload\":{payload},\"sender_id\":\"{sender}\",\"room_id\":\"{ROOM}\",\"timestamp\":\"2026-12-01T10:00:00.000Z\",\"to\":\"{to}\"}}"
    );
    header(
        json!({"origin": origin, "k": "relay", "room_id": ROOM, "kind": "chat-message",
        "sender_id": sender, "to": to}),
    ) + &frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_bus_messages_never_reach_a_client() {
    let redis = RedisProcess::start();
    let one = server(&redis, "in-a");
    let two = server(&redis, "in-b");
    one.wait_ready(true, Duration::from_secs(15)).await;
    two.wait_ready(true, Duration::from_secs(15)).await;
    let mut alice = Client::join(one.addr(), ROOM, &token("alice")).await;
    let mut bob = Client::join(two.addr(), ROOM, &token("bob")).await;
    let joined = alice.expect_type("user-joined").await;
    let (a, b) = (alice.pid(), bob.pid());
    assert_eq!(joined["payload"]["participant_id"], b.as_str());
    // Bob exactly as his instance registered him, to forge his leave convincingly.
    let mut bob_info = joined["payload"].clone();
    bob_info["instance_id"] = json!("in-b");

    let ghost = json!({"participant_id": "ghost-1", "user_id": "ghost", "username": "Ghost",
        "joined_at": "2026-12-01T10:00:00.000Z", "instance_id": "in-b"});
    let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
    let huge = format!("\"{}\"", "x".repeat(70 * 1024));
    let forged: Vec<(&str, String)> = vec![
        // Text that is no envelope at all, twice (one log line), with a line break and a
        // made-up log line in it.
        ("malformed", format!("hello browsers\n{FAKE_LOG_LINE}")),
        (
            "malformed",
            "{\"type\":\"chat-message\",\"payload\":1}".to_owned(),
        ),
        // A header fine, the frame not JSON (it starts the way every frame does).
        (
            "invalid_frame",
            header(json!({"origin": "in-b", "k": "relay", "room_id": ROOM,
                "kind": "chat-message", "sender_id": b, "to": a}))
                + "{\"type\":\"chat-message\" <script>",
        ),
        // Somebody who never joined.
        (
            "presence_mismatch",
            header(json!({"origin": "in-b", "k": "joined", "room_id": ROOM, "participant": ghost})),
        ),
        // Bob left, says someone, while he is present and his instance alive: once as his own
        // instance, once as a cleaner.
        (
            "presence_mismatch",
            header(json!({"origin": "in-b", "k": "left", "room_id": ROOM,
                "participant": bob_info, "reason": "closed"})),
        ),
        (
            "presence_mismatch",
            header(json!({"origin": "in-x", "k": "left", "room_id": ROOM,
                "participant": bob_info, "reason": "instance_lost"})),
        ),
        // Relays from nobody, and from Bob but through another instance than his.
        (
            "unknown_sender",
            relay("in-b", "ghost-1", &a, "{\"forged\":1}"),
        ),
        ("unknown_sender", relay("in-x", &b, &a, "{\"forged\":2}")),
        ("too_deep", relay("in-b", &b, &a, &deep)),
        ("too_large", relay("in-b", &b, &a, &huge)),
        // The message names another room than the channel it came on.
        (
            "room_mismatch",
            header(
                json!({"origin": "in-b", "k": "joined", "room_id": "elsewhere",
                "participant": ghost}),
            ),
        ),
    ];
    let reasons = [
        "malformed",
        "invalid_frame",
        "presence_mismatch",
        "unknown_sender",
        "too_deep",
        "too_large",
        "room_mismatch",
    ];
    for (_, message) in &forged {
        publish(&redis, message);
    }
    // Nothing reached either client: the next thing each gets is the real relay published
    // after the forgeries on the same channel (so each instance handled them all before it),
    // and Bob is still reachable.
    alice
        .send_msg("offer", Some(&b), json!({"sdp": "real"}))
        .await;
    let offer = bob.recv_json().await;
    assert_eq!(
        (offer["type"].as_str(), offer["sender_id"].as_str()),
        (Some("offer"), Some(a.as_str())),
        "bob's first message after the forgeries: {offer}"
    );
    bob.send_msg("answer", Some(&a), json!({"sdp": "real"}))
        .await;
    let answer = alice.recv_json().await;
    assert_eq!(
        (answer["type"].as_str(), answer["sender_id"].as_str()),
        (Some("answer"), Some(b.as_str())),
        "alice's first message after the forgeries: {answer}"
    );

    // Later joiners on either instance are told about exactly the real members.
    let mut want = vec![a.clone(), b.clone()];
    let mut later = Vec::new();
    for (server, name) in [(&one, "carol"), (&two, "dave")] {
        let joiner = Client::join(server.addr(), ROOM, &token(name)).await;
        let state = joiner.room_state.clone().expect("room-state");
        let mut ids: Vec<String> = state["payload"]["participants"]
            .as_array()
            .expect("participants")
            .iter()
            .map(|p| p["participant_id"].as_str().unwrap_or_default().to_owned())
            .collect();
        ids.sort();
        want.push(joiner.pid());
        want.sort();
        assert_eq!(ids, want, "{name}'s room-state: {state}");
        assert_eq!(state["payload"]["participant_count"], want.len());
        later.push(joiner);
    }

    // Every forgery was counted under its reason.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut counts = Vec::new();
        for reason in reasons {
            counts.push(dropped(&one, reason).await);
        }
        let want: Vec<u64> = reasons
            .iter()
            .map(|r| forged.iter().filter(|(f, _)| f == r).count() as u64)
            .collect();
        if counts == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dropped counts by reason {reasons:?}: got {counts:?}, want {want:?}; stderr:\n{}",
            one.stderr_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The other instance dropped them too, except those that claim to come from it (its own
    // echo, ignored unread).
    assert_eq!(dropped(&two, "malformed").await, 2);
    assert_eq!(dropped(&two, "unknown_sender").await, 1);

    // One log line per reason however many drops, and the forged text cannot start a line.
    let logs = one.stderr_lines();
    let lines = |reason: &str| {
        logs.iter()
            .filter(|l| {
                l.contains("dropping a bus message") && l.contains(&format!("reason={reason}"))
            })
            .count()
    };
    assert_eq!(
        lines("malformed"),
        1,
        "rate-limited log:\n{}",
        logs.join("\n")
    );
    assert_eq!(
        lines("presence_mismatch"),
        1,
        "rate-limited log:\n{}",
        logs.join("\n")
    );
    assert!(
        !logs.iter().any(|l| l.starts_with(FAKE_LOG_LINE)),
        "forged text started a log line:\n{}",
        logs.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_and_a_leave_in_quick_succession_are_both_announced_elsewhere() {
    // Each visitor joins on server b and leaves as soon as it has its room-state: server a
    // often checks the join announcement against Redis only after the leave removed the
    // record. The watcher on a must still see every visitor arrive and then leave.
    const VISITORS: usize = 20;
    let redis = RedisProcess::start();
    let a = server(&redis, "quick-a");
    let b = server(&redis, "quick-b");
    a.wait_ready(true, Duration::from_secs(15)).await;
    b.wait_ready(true, Duration::from_secs(15)).await;
    let mut watcher = Client::join(a.addr(), ROOM, &token("watcher")).await;
    let mut visitors = Vec::new();
    for i in 0..VISITORS {
        let visitor = Client::join(b.addr(), ROOM, &token(&format!("visitor-{i}"))).await;
        visitors.push(visitor.pid());
        visitor.close().await;
    }
    let mut seen: Vec<(String, String)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 2 * VISITORS {
        let left = deadline.saturating_duration_since(Instant::now());
        match watcher.next_event(left).await {
            switchboard_e2e::client::Event::Json(msg)
                if msg["type"] == "user-joined" || msg["type"] == "user-left" =>
            {
                seen.push((
                    msg["type"].as_str().unwrap_or_default().to_owned(),
                    msg["payload"]["participant_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                ));
            }
            switchboard_e2e::client::Event::Json(_) => {}
            other => panic!(
                "after {} of {} presence events ({seen:?}): {other:?}; dropped as mismatch: {}",
                seen.len(),
                2 * VISITORS,
                dropped(&a, "presence_mismatch").await
            ),
        }
    }
    for pid in &visitors {
        let events: Vec<&str> = seen
            .iter()
            .filter(|(_, p)| p == pid)
            .map(|(t, _)| t.as_str())
            .collect();
        assert_eq!(events, ["user-joined", "user-left"], "{pid}: {seen:?}");
    }
    assert_eq!(dropped(&a, "presence_mismatch").await, 0);
    watcher
        .assert_no_presence_change(Duration::from_millis(300))
        .await;
}
