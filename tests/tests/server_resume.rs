//! Resume on one real server process (in-process bus): a connection dropped without a close
//! frame comes back with its resume token and last delivered `seq`, keeps its participant id,
//! gets what it missed in order, re-sends what was not acked, and the room sees no
//! leave/join; the grace window, forged and foreign tokens, and an overflowing inbox are
//! refused with their close reasons, after which a fresh join works.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use switchboard_e2e::client::{Client, Event};
use switchboard_e2e::server::{ServerOptions, ServerProcess};
use switchboard_e2e::token::Claims;

const SECRET: &str = "e2e-resume-secret-0123456789abcdef0123";

fn token(user: &str) -> String {
    Claims::user(user).hs256(SECRET)
}

/// A server whose rate limits let one client send a 1,000-message ICE exchange at once.
fn options() -> ServerOptions {
    ServerOptions::with_secret(SECRET)
        .env("WEBRTC_RATE_LIMIT_PER_SECOND", "100000")
        .env("WEBRTC_RATE_LIMIT_BURST", "100000")
        .env("WEBRTC_RATE_LIMIT_BYTES_PER_SECOND", "1000000000")
        .env("WEBRTC_RATE_LIMIT_BYTES_BURST", "1000000000")
}

/// Joins `users` in order into `room`; every earlier one consumes the later ones' joins.
async fn join(server: &ServerProcess, room: &str, users: &[&str]) -> Vec<Client> {
    switchboard_e2e::client::join_all(
        server.addr(),
        room,
        &users.iter().map(|u| token(u)).collect::<Vec<_>>(),
    )
    .await
}

/// Opens a resume and returns the client and its first message.
async fn resume(
    server: &ServerProcess,
    room: &str,
    user: &str,
    resume_token: &str,
    last_seq: u64,
) -> (Client, Value) {
    let mut client =
        Client::resume(server.addr(), room, &token(user), resume_token, last_seq).await;
    let first = client.recv_json().await;
    (client, first)
}

/// A resume that must be refused with 1008 `reason`.
async fn resume_refused(
    server: &ServerProcess,
    room: &str,
    user: &str,
    resume_token: &str,
    last_seq: u64,
    reason: &str,
) {
    let mut client =
        Client::resume(server.addr(), room, &token(user), resume_token, last_seq).await;
    client.expect_close(1008, reason).await;
}

fn ice(to: &str, n: u64) -> Value {
    json!({"type": "ice-candidate", "to": to, "seq": n, "payload": {"n": n}})
}

/// Reads until `want` candidates arrived or the connection ends; returns (payload n, seq)
/// of each candidate, and whether the stream is still open.
async fn read_candidates(client: &mut Client, want: usize, until: Duration) -> Vec<(u64, u64)> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + until;
    while got.len() < want {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_event(left).await {
            Event::Json(msg) if msg["type"] == "ice-candidate" => got.push((
                msg["payload"]["n"].as_u64().expect("payload.n"),
                msg["seq"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("delivered message without seq: {msg}")),
            )),
            Event::Json(msg) => panic!("unexpected message while reading candidates: {msg}"),
            other => panic!("after {} candidates: {other:?}", got.len()),
        }
    }
    got
}

#[tokio::test]
async fn a_blip_on_both_ends_of_a_1000_message_exchange_loses_nothing() {
    // Bob stays away while alice sends most of the exchange: his inbox holds it all.
    let server = options()
        .env("SWITCHBOARD_RESUME_INBOX_MESSAGES", "1024")
        .start();
    let mut clients = join(&server, "blip", &["alice", "bob", "carol"]).await;
    let mut carol = clients.pop().unwrap();
    let mut bob = clients.pop().unwrap();
    let mut alice = clients.pop().unwrap();
    let (alice_id, bob_id) = (alice.pid(), bob.pid());
    let (alice_token, bob_token) = (alice.resume_token(), bob.resume_token());

    // Alice sends 1..=400 without waiting; she has the acks of what she reads back.
    let mut acked = BTreeSet::new();
    for n in 1..=400 {
        alice.send_json(&ice(&bob_id, n)).await;
    }
    // Bob reads the first 250, then his connection drops (no close frame).
    let mut received = read_candidates(&mut bob, 250, Duration::from_secs(10)).await;
    bob.drop_connection();
    // Alice reads some acks, then her connection drops too, with acks unread.
    while acked.len() < 100 {
        let msg = alice.recv_json().await;
        assert_eq!(msg["type"], "ack", "{msg}");
        acked.insert(msg["seq"].as_u64().unwrap());
    }
    alice.drop_connection();

    // Alice resumes and re-sends everything not acked, then goes on to 1,000.
    let (mut alice, state) = resume(&server, "blip", "alice", &alice_token, 0).await;
    assert_eq!(state["type"], "room-state", "{state}");
    assert_eq!(state["payload"]["resumed"], true, "{state}");
    assert_eq!(
        state["payload"]["self"]["participant_id"],
        alice_id.as_str()
    );
    for n in (1..=400).filter(|n| !acked.contains(n)) {
        alice.send_json(&ice(&bob_id, n)).await;
    }
    for n in 401..=1000 {
        alice.send_json(&ice(&bob_id, n)).await;
    }

    // Bob resumes with the last seq he got.
    let last_seq = received.last().unwrap().1;
    let (mut bob, state) = resume(&server, "blip", "bob", &bob_token, last_seq).await;
    assert_eq!(state["payload"]["resumed"], true, "{state}");
    assert_eq!(state["payload"]["self"]["participant_id"], bob_id.as_str());
    let ids: Vec<&str> = state["payload"]["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["participant_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{state}");
    let rest = 1000 - received.len();
    received.extend(read_candidates(&mut bob, rest, Duration::from_secs(20)).await);

    let ns: Vec<u64> = received.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        ns,
        (1..=1000).collect::<Vec<_>>(),
        "every candidate once, in order"
    );
    let seqs: Vec<u64> = received.iter().map(|(_, s)| *s).collect();
    assert_eq!(
        seqs,
        (1..=1000).collect::<Vec<_>>(),
        "delivery seqs count by one"
    );
    // Nothing more: the re-sent duplicates were dropped.
    match bob.next_event(Duration::from_millis(500)).await {
        Event::Timeout => {}
        other => panic!("bob got more than 1,000: {other:?}"),
    }
    // Every message alice sent after her resume is acked once: the re-sent ones (delivered
    // before or not) and 401..=1000.
    let resent = (1..=400).filter(|n| !acked.contains(n)).count();
    let mut acks = Vec::new();
    while acks.len() < resent + 600 {
        let msg = alice.recv_json().await;
        assert_eq!(msg["type"], "ack", "{msg}");
        acks.push(msg["seq"].as_u64().unwrap());
    }
    let distinct: BTreeSet<u64> = acks.iter().copied().collect();
    assert_eq!(distinct.len(), acks.len(), "one ack per message");
    assert!((401..=1000).all(|n| distinct.contains(&n)));
    assert!(distinct.iter().all(|n| *n > 400 || !acked.contains(n)));
    carol
        .assert_no_presence_change(Duration::from_millis(500))
        .await;

    let metrics = ureq::get(&server.http_url("/metrics"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains("switchboard_resumes_total{outcome=\"ok\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn without_a_resume_the_grace_window_ends_in_user_left_timeout() {
    let server = options().env("SWITCHBOARD_RESUME_GRACE_SECS", "1").start();
    let mut clients = join(&server, "grace", &["alice", "bob"]).await;
    let bob = clients.pop().unwrap();
    let mut alice = clients.pop().unwrap();
    let (bob_id, bob_token) = (bob.pid(), bob.resume_token());
    bob.drop_connection();
    // Within the window bob is still there: a message to him is accepted (acked).
    alice.send_json(&ice(&bob_id, 1)).await;
    let ack = alice.recv_json().await;
    assert_eq!(
        (ack["type"].as_str(), ack["seq"].as_u64()),
        (Some("ack"), Some(1)),
        "{ack}"
    );
    let left = alice.recv_json_within(Duration::from_secs(5)).await;
    assert_eq!(left["type"], "user-left", "{left}");
    assert_eq!(left["payload"]["participant_id"], bob_id.as_str());
    assert_eq!(left["payload"]["reason"], "timeout");
    resume_refused(&server, "grace", "bob", &bob_token, 1, "resume_expired").await;
    // A fresh join works and the room sees it.
    let bob = Client::join(server.addr(), "grace", &token("bob")).await;
    assert_ne!(bob.pid(), bob_id);
    assert_eq!(
        alice.expect_type("user-joined").await["payload"]["participant_id"],
        bob.pid().as_str()
    );
}

#[tokio::test]
async fn forged_foreign_and_ahead_resumes_are_refused_and_change_nothing() {
    let server = options().start();
    let mut clients = join(&server, "forged", &["alice", "bob"]).await;
    let bob = clients.pop().unwrap();
    let mut alice = clients.pop().unwrap();
    let bob_token = bob.resume_token();
    bob.drop_connection();
    let tag_flipped = {
        let (head, tag) = bob_token.rsplit_once('.').unwrap();
        let mut tag: Vec<char> = tag.chars().collect();
        tag[0] = if tag[0] == 'A' { 'B' } else { 'A' };
        format!("{head}.{}", tag.into_iter().collect::<String>())
    };
    let later_expiry = {
        let parts: Vec<&str> = bob_token.split('.').collect();
        format!(
            "{}.{}.{}.{}",
            parts[0], parts[1], 99_999_999_999u64, parts[3]
        )
    };
    resume_refused(&server, "forged", "bob", &tag_flipped, 0, "resume_invalid").await;
    resume_refused(&server, "forged", "bob", &later_expiry, 0, "resume_invalid").await;
    resume_refused(&server, "forged", "bob", "garbage", 0, "resume_invalid").await;
    // Alice's JWT with bob's resume token: another user.
    resume_refused(&server, "forged", "alice", &bob_token, 0, "resume_invalid").await;
    // Bob's token for another room.
    resume_refused(&server, "elsewhere", "bob", &bob_token, 0, "resume_invalid").await;
    // A seq bob was never delivered.
    resume_refused(&server, "forged", "bob", &bob_token, 5, "resume_invalid").await;
    // None of that touched bob: his own resume still works and the room saw nothing.
    let (_bob, state) = resume(&server, "forged", "bob", &bob_token, 0).await;
    assert_eq!(state["payload"]["resumed"], true, "{state}");
    alice
        .assert_no_presence_change(Duration::from_millis(300))
        .await;
}

#[tokio::test]
async fn an_overflowing_inbox_refuses_the_resume_and_a_fresh_join_works() {
    let server = options()
        .env("SWITCHBOARD_RESUME_INBOX_MESSAGES", "5")
        .start();
    let mut clients = join(&server, "overflow", &["alice", "bob"]).await;
    let bob = clients.pop().unwrap();
    let mut alice = clients.pop().unwrap();
    let (bob_id, bob_token) = (bob.pid(), bob.resume_token());
    bob.drop_connection();
    for n in 1..=10 {
        alice.send_json(&ice(&bob_id, n)).await;
        assert_eq!(alice.expect_type("ack").await["seq"], n);
    }
    resume_refused(&server, "overflow", "bob", &bob_token, 0, "resume_overflow").await;
    // Never a silent gap: bob is gone for the room, and a fresh join is a new participant.
    let left = alice.expect_type("user-left").await;
    assert_eq!(left["payload"]["participant_id"], bob_id.as_str());
    let bob = Client::join(server.addr(), "overflow", &token("bob")).await;
    assert_ne!(bob.pid(), bob_id);
    alice.expect_type("user-joined").await;
    // Having missed nothing, a resume within the bound works: last_seq 5 of 10 kept 6..10.
}

#[tokio::test]
async fn a_resume_takes_over_a_connection_the_server_still_thinks_alive() {
    let server = options().start();
    let mut clients = join(&server, "takeover", &["alice", "bob"]).await;
    let mut old = clients.pop().unwrap();
    let mut alice = clients.pop().unwrap();
    let (bob_id, bob_token) = (old.pid(), old.resume_token());
    alice.send_json(&ice(&bob_id, 1)).await;
    let first = old.expect_type("ice-candidate").await;
    assert_eq!(first["seq"], 1);
    // The client believes its connection dead (no traffic) and resumes while the server
    // still holds it: the old one is closed, the new one gets what followed seq 1.
    alice.send_json(&ice(&bob_id, 2)).await;
    alice.expect_type("ack").await;
    alice.expect_type("ack").await;
    let (mut new, state) = resume(&server, "takeover", "bob", &bob_token, 1).await;
    assert_eq!(state["payload"]["self"]["participant_id"], bob_id.as_str());
    let second = new.expect_type("ice-candidate").await;
    assert_eq!(
        (second["seq"].as_u64(), second["payload"]["n"].as_u64()),
        (Some(2), Some(2))
    );
    // The old connection may have got #2 before it was closed; then it is closed 1001.
    loop {
        match old.next_event(Duration::from_secs(5)).await {
            Event::Json(msg) if msg["type"] == "ice-candidate" => continue,
            Event::Close(Some((code, reason))) => {
                assert_eq!((code, reason.as_str()), (1001, "superseded"));
                break;
            }
            other => panic!("old connection: {other:?}"),
        }
    }
    // Live traffic flows to the new connection, numbered on.
    alice.send_json(&ice(&bob_id, 3)).await;
    let third = new.expect_type("ice-candidate").await;
    assert_eq!(third["seq"], 3);
    alice
        .assert_no_presence_change(Duration::from_millis(300))
        .await;
}

#[tokio::test]
async fn errors_carry_the_seq_they_answer() {
    let server = options().start();
    let mut clients = join(&server, "errors", &["alice", "bob"]).await;
    let _bob = clients.pop().unwrap();
    let mut alice = clients.pop().unwrap();
    alice.send_json(&ice("nobody", 7)).await;
    let err = alice.expect_type("error").await;
    assert_eq!(err["payload"]["code"], "target_not_found", "{err}");
    assert_eq!(err["seq"], 7);
    alice
        .send_json(&json!({"type": "offer", "payload": {}, "seq": 8}))
        .await;
    let err = alice.expect_type("error").await;
    assert_eq!(
        (err["payload"]["code"].as_str(), err["seq"].as_u64()),
        (Some("invalid_message"), Some(8))
    );
    alice
        .send_json(&json!({"type": "chat-message", "payload": {}, "seq": "x"}))
        .await;
    let err = alice.expect_type("error").await;
    assert_eq!(err["payload"]["code"], "invalid_seq", "{err}");
}
