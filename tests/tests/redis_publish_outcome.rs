//! What a sender is told when Redis does not confirm a relayed message: `bus_unavailable` only
//! when it certainly was not delivered (a client may resend it), `delivery_unknown` when Redis
//! may still carry it. Two real servers and a real redis-server that stops executing writes for
//! three seconds (`CLIENT PAUSE 3000 WRITE`) while a client relays 120 tagged messages, with
//! the publish timeout lowered to one second; a burst of numbered messages cut by Redis
//! dropping the servers' command connections, re-sent until acked, arrives once each and in
//! order, with every answer in the order the messages were sent.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use switchboard_e2e::client::{Client, Event};
use switchboard_e2e::redis::{RedisProcess, Reply};
use switchboard_e2e::server::{ServerOptions, ServerProcess};
use switchboard_e2e::token::Claims;

const SECRET: &str = "e2e-redis-publish-outcome-secret-0123456789";
const ROOM: &str = "paused";
const MESSAGES: u64 = 120;
/// The message after which Redis stops executing writes.
const PAUSE_AFTER: u64 = 20;

fn server(redis: &RedisProcess, instance: &str) -> ServerProcess {
    ServerOptions::with_secret(SECRET)
        .env("REDIS_URL", redis.url())
        .env("SWITCHBOARD_INSTANCE_ID", instance)
        .env("REDIS_PUBLISH_TIMEOUT_SECS", "1")
        // A burst on purpose: the rate limits are not under test here.
        .env("WEBRTC_RATE_LIMIT_PER_SECOND", "100000")
        .env("WEBRTC_RATE_LIMIT_BURST", "100000")
        .env("WEBRTC_RATE_LIMIT_BYTES_PER_SECOND", "100000000")
        .env("WEBRTC_RATE_LIMIT_BYTES_BURST", "100000000")
        .start()
}

/// Two servers on `redis`, ready; alice joined on the first, bob on the second, and alice has
/// seen bob arrive.
async fn pair(
    redis: &RedisProcess,
    prefix: &str,
) -> (ServerProcess, ServerProcess, Client, Client) {
    let one = server(redis, &format!("{prefix}-a"));
    let two = server(redis, &format!("{prefix}-b"));
    one.wait_ready(true, Duration::from_secs(15)).await;
    two.wait_ready(true, Duration::from_secs(15)).await;
    let token = |user: &str| Claims::user(user).hs256(SECRET);
    let mut alice = Client::join(one.addr(), ROOM, &token("alice")).await;
    let bob = Client::join(two.addr(), ROOM, &token("bob")).await;
    alice.expect_type("user-joined").await;
    (one, two, alice, bob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_answered_bus_unavailable_is_never_delivered() {
    let redis = RedisProcess::start();
    let (one, _two, mut alice, mut bob) = pair(&redis, "pause").await;
    let b = bob.pid();

    // Each relay is followed by a ping carrying its id: the session handles a client's
    // messages in order, so an error for relay `i` arrives just before the pong of `i`.
    for id in 0..MESSAGES {
        alice
            .send_msg("chat-message", Some(&b), json!({"id": id}))
            .await;
        alice
            .send_json(&json!({"type": "ping", "payload": {"id": id}}))
            .await;
        if id == PAUSE_AFTER {
            assert_eq!(
                redis.command(&["CLIENT", "PAUSE", "3000", "WRITE"]),
                Reply::Status("OK".into())
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // What alice was told about each message (no entry: nothing, it was confirmed).
    let mut answered: BTreeMap<u64, String> = BTreeMap::new();
    let mut pending_error: Option<String> = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match alice.next_event(left).await {
            Event::Json(msg) if msg["type"] == "error" => {
                let code = msg["payload"]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                assert!(pending_error.is_none(), "two errors for one message: {msg}");
                pending_error = Some(code);
            }
            Event::Json(msg) if msg["type"] == "pong" => {
                let id = msg["payload"]["id"].as_u64().expect("pong id");
                if let Some(code) = pending_error.take() {
                    answered.insert(id, code);
                }
                if id == MESSAGES - 1 {
                    break;
                }
            }
            other => panic!("alice: unexpected {other:?}"),
        }
    }
    for code in answered.values() {
        assert!(
            code == "delivery_unknown" || code == "bus_unavailable",
            "unexpected error code {code}: {answered:?}"
        );
    }
    assert!(
        !answered.is_empty(),
        "the pause must have left some publish unconfirmed; stderr:\n{}",
        one.stderr_tail()
    );

    // What bob received: every message nobody was told about, maybe some of the unknown ones,
    // none answered bus_unavailable, each at most once and in order.
    let must_arrive = (0..MESSAGES)
        .filter(|id| !answered.contains_key(id))
        .count();
    let mut delivered: Vec<u64> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let arrived = delivered
            .iter()
            .filter(|id| !answered.contains_key(id))
            .count();
        // Once every confirmed message is in, give stragglers one more second.
        let wait = if arrived >= must_arrive {
            Duration::from_secs(1)
        } else {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        match bob.next_event(wait).await {
            Event::Json(msg) if msg["type"] == "chat-message" => {
                delivered.push(msg["payload"]["id"].as_u64().expect("chat id"));
            }
            Event::Timeout if arrived >= must_arrive => break,
            other => panic!(
                "bob: {other:?} with {arrived} of {must_arrive} confirmed messages in: {delivered:?}"
            ),
        }
    }
    let both: Vec<u64> = delivered
        .iter()
        .copied()
        .filter(|id| answered.get(id).map(String::as_str) == Some("bus_unavailable"))
        .collect();
    assert!(
        both.is_empty(),
        "answered bus_unavailable and delivered anyway: {both:?} (answers {answered:?})"
    );
    // A publish that Redis received but did not answer in time is the unknown case.
    assert!(
        answered.values().any(|c| c == "delivery_unknown"),
        "a paused publish must be answered delivery_unknown: {answered:?}"
    );
    let mut sorted = delivered.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted, delivered, "in order and never twice");
    let unconfirmed: Vec<&u64> = answered.keys().collect();
    let confirmed_missing: Vec<u64> = (0..MESSAGES)
        .filter(|id| !answered.contains_key(id) && !delivered.contains(id))
        .collect();
    assert!(
        confirmed_missing.is_empty(),
        "confirmed but lost: {confirmed_missing:?} (unconfirmed {unconfirmed:?})"
    );
}

/// The next message alice gets that answers a numbered one: `(seq, None)` for an ack,
/// `(seq, Some(code))` for an error. Presence and pongs in between are skipped.
async fn answer(client: &mut Client) -> (u64, Option<String>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_event(left).await {
            Event::Json(msg) if msg["type"] == "ack" => {
                return (msg["seq"].as_u64().expect("ack seq"), None);
            }
            Event::Json(msg) if msg["type"] == "error" => {
                let seq = msg["seq"].as_u64();
                let code = msg["payload"]["code"].as_str().unwrap_or_default();
                return (seq.expect("error answers a seq"), Some(code.to_owned()));
            }
            Event::Json(_) => continue,
            other => panic!("no answer: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_seq_waits_behind_one_the_client_must_resend() {
    // An offer refused while Redis is down (bus_unavailable or delivery_unknown), then its ICE
    // candidate sent once Redis is back: relaying the candidate first would put it ahead of its
    // offer. The server holds it back
    // (bus_unavailable) until the offer is sent again, and bob gets them in seq order.
    let mut redis = RedisProcess::start();
    let (one, two, mut alice, mut bob) = pair(&redis, "order").await;
    let b = bob.pid();
    let numbered =
        |ty: &str, seq: u64| json!({"type": ty, "to": b, "seq": seq, "payload": {"n": seq}});

    redis.kill();
    one.wait_ready(false, Duration::from_secs(15)).await;
    alice.send_json(&numbered("offer", 1)).await;
    // Either answer tells the client to send it again (Redis may have died mid-command).
    let (seq, code) = answer(&mut alice).await;
    assert_eq!(seq, 1);
    assert!(
        matches!(
            code.as_deref(),
            Some("bus_unavailable" | "delivery_unknown")
        ),
        "{code:?}"
    );

    redis.restart_same_port();
    one.wait_ready(true, Duration::from_secs(30)).await;
    two.wait_ready(true, Duration::from_secs(30)).await;
    // In flight before alice saw the refusal of 1: held back, not relayed.
    alice.send_json(&numbered("ice-candidate", 2)).await;
    assert_eq!(
        answer(&mut alice).await,
        (2, Some("bus_unavailable".into()))
    );
    // The client re-sends in seq order; now both go through. Right after a restart the
    // servers may still be re-announcing presence: re-send until acked, as the client does.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for (ty, seq) in [("offer", 1), ("ice-candidate", 2)] {
        loop {
            alice.send_json(&numbered(ty, seq)).await;
            match answer(&mut alice).await {
                (s, None) if s == seq => break,
                (s, Some(code)) if s == seq && code == "bus_unavailable" => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "seq {seq} never acked"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => panic!("seq {seq}: unexpected answer {other:?}"),
            }
        }
    }
    let mut relayed = Vec::new();
    while relayed.len() < 2 {
        match bob.next_event(Duration::from_secs(10)).await {
            Event::Json(msg) if msg["type"] == "offer" || msg["type"] == "ice-candidate" => {
                relayed.push((
                    msg["type"].as_str().unwrap_or_default().to_owned(),
                    msg["payload"]["n"].as_u64(),
                ));
            }
            Event::Json(_) => continue,
            other => panic!("bob got {relayed:?}, then {other:?}"),
        }
    }
    assert_eq!(
        relayed,
        [
            ("offer".to_owned(), Some(1)),
            ("ice-candidate".to_owned(), Some(2))
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_cut_by_lost_redis_connections_arrives_once_in_order_after_resends() {
    // Alice sends numbered messages in bursts, without waiting for answers (the server has
    // up to 32 of them in flight to Redis at once), with a ping after every tenth. Halfway
    // through, Redis drops every command connection (`CLIENT KILL TYPE normal`; pub/sub ones
    // stay): what was in flight is lost, refused or taken. Alice re-sends what was not acked,
    // in seq order, as the client library does. Bob, on the same server (every delivery goes
    // through Redis there too), must get every message exactly once and in seq order, and
    // every answer must come in the order alice sent the messages.
    const BURST: u64 = 400;
    let redis = RedisProcess::start();
    let one = server(&redis, "burst-a");
    one.wait_ready(true, Duration::from_secs(15)).await;
    let token = |user: &str| Claims::user(user).hs256(SECRET);
    let mut alice = Client::join(one.addr(), ROOM, &token("alice")).await;
    let mut bob = Client::join(one.addr(), ROOM, &token("bob")).await;
    alice.expect_type("user-joined").await;
    let b = bob.pid();
    let numbered =
        |seq: u64| json!({"type": "ice-candidate", "to": b, "seq": seq, "payload": {"n": seq}});

    let mut unacked: Vec<u64> = (1..=BURST).collect();
    let mut killed = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut round = 0;
    while !unacked.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} messages never acked after {round} rounds: {:?}",
            unacked.len(),
            &unacked[..unacked.len().min(10)]
        );
        round += 1;
        // Answers expected, in order: a seq's answer, or a pong carrying the seq before it.
        let mut expected = Vec::new();
        for (i, &seq) in unacked.iter().enumerate() {
            alice.send_json(&numbered(seq)).await;
            expected.push(Expect::Answer(seq));
            if seq % 10 == 0 {
                alice
                    .send_json(&json!({"type": "ping", "payload": {"after": seq}}))
                    .await;
                expected.push(Expect::Pong(seq));
            }
            if round == 1 && i as u64 == BURST / 2 {
                killed = match redis.command(&["CLIENT", "KILL", "TYPE", "normal"]) {
                    Reply::Integer(n) => n,
                    other => panic!("CLIENT KILL: {other:?}"),
                };
            }
        }
        let mut refused = Vec::new();
        for want in expected {
            let got = next_answer_or_pong(&mut alice).await;
            assert_eq!(got.0, want, "answers out of order (round {round})");
            if let Some(code) = got.1 {
                assert!(
                    matches!(code.as_str(), "bus_unavailable" | "delivery_unknown"),
                    "seq {want:?}: final error {code}"
                );
                if let Expect::Answer(seq) = want {
                    refused.push(seq);
                }
            }
        }
        unacked = refused;
        if !unacked.is_empty() {
            // Back off like the client: Redis connections are being re-established.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(killed > 0, "no command connection was killed");
    // The first command on a killed connection fails, so something had to be sent again.
    assert!(round > 1, "nothing was refused: the kill tested nothing");

    let mut got = Vec::new();
    while got.len() < BURST as usize {
        match bob.next_event(Duration::from_secs(10)).await {
            Event::Json(msg) if msg["type"] == "ice-candidate" => {
                got.push(msg["payload"]["n"].as_u64().expect("n"));
            }
            Event::Json(_) => continue,
            other => panic!("bob got {} messages, then {other:?}", got.len()),
        }
    }
    let expected: Vec<u64> = (1..=BURST).collect();
    if got != expected {
        let first_bad = got.iter().zip(&expected).position(|(g, e)| g != e);
        panic!(
            "bob's messages not 1..={BURST} once each in order; first difference at index {first_bad:?}: {:?}",
            &got[first_bad.unwrap_or(0).saturating_sub(3)..(first_bad.unwrap_or(0) + 5).min(got.len())]
        );
    }
    // Nothing more arrives (no late duplicate).
    match bob.next_event(Duration::from_millis(500)).await {
        Event::Timeout => {}
        Event::Json(msg) if msg["type"] != "ice-candidate" => {}
        other => panic!("bob got more: {other:?}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// `ack` or `error` for this seq.
    Answer(u64),
    /// The pong of the ping sent after this seq.
    Pong(u64),
}

/// The next answer (ack or error, with its code) or pong alice gets; presence is skipped.
async fn next_answer_or_pong(client: &mut Client) -> (Expect, Option<String>) {
    loop {
        match client.next_event(Duration::from_secs(20)).await {
            Event::Json(msg) if msg["type"] == "pong" => {
                let after = msg["payload"]["after"].as_u64().expect("pong payload");
                return (Expect::Pong(after), None);
            }
            Event::Json(msg) if msg["type"] == "ack" || msg["type"] == "error" => {
                let seq = msg["seq"].as_u64().expect("answer seq");
                let code = msg["payload"]["code"].as_str().map(str::to_owned);
                return (Expect::Answer(seq), code);
            }
            Event::Json(_) => continue,
            other => panic!("no answer: {other:?}"),
        }
    }
}
