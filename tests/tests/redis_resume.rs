//! Resume across real `switchboard-server` processes on one real redis-server: the inboxes
//! live in Redis, so a participant whose server is SIGKILLed or drained resumes on another
//! one with the same participant id, re-sends what was not acked, and its peers get every
//! message once and in order while the room sees no leave or join.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{json, Value};
use switchboard_e2e::client::{Client, Event};
use switchboard_e2e::redis::RedisProcess;
use switchboard_e2e::server::{ServerOptions, ServerProcess};
use switchboard_e2e::token::Claims;

const SECRET: &str = "e2e-redis-resume-secret-0123456789abcdef";
/// Presence TTL: a dead instance's participants would be announced lost within ~2 TTLs.
const TTL_SECS: u64 = 3;

fn token(user: &str) -> String {
    Claims::user(user).hs256(SECRET)
}

fn options(redis: &RedisProcess, instance: &str) -> ServerOptions {
    ServerOptions::with_secret(SECRET)
        .env("REDIS_URL", redis.url())
        .env("SWITCHBOARD_INSTANCE_ID", instance)
        .env("WEBRTC_ROOM_PRESENCE_TTL", TTL_SECS.to_string())
        .env("WEBRTC_RATE_LIMIT_PER_SECOND", "100000")
        .env("WEBRTC_RATE_LIMIT_BURST", "100000")
        .env("WEBRTC_RATE_LIMIT_BYTES_PER_SECOND", "1000000000")
        .env("WEBRTC_RATE_LIMIT_BYTES_BURST", "1000000000")
        .env("SWITCHBOARD_RESUME_INBOX_MESSAGES", "2048")
        .env("SWITCHBOARD_DRAIN_DELAY_MS", "200")
        .env("SWITCHBOARD_DRAIN_WINDOW_MS", "1500")
}

async fn servers(redis: &RedisProcess, n: usize) -> Vec<ServerProcess> {
    let servers: Vec<ServerProcess> = (0..n)
        .map(|i| options(redis, &format!("rs-{i}")).start())
        .collect();
    for s in &servers {
        s.wait_ready(true, Duration::from_secs(10)).await;
    }
    servers
}

/// Joins `user` on `server`; every client in `earlier` consumes its `user-joined`.
async fn join(
    server: &ServerProcess,
    room: &str,
    user: &str,
    earlier: &mut [&mut Client],
) -> Client {
    let client = Client::join(server.addr(), room, &token(user)).await;
    for c in earlier.iter_mut() {
        let (_, msg) = c
            .recv_until_type("user-joined", Duration::from_secs(5))
            .await;
        assert_eq!(msg["payload"]["participant_id"], client.pid().as_str());
    }
    client
}

async fn resume(
    server: &ServerProcess,
    room: &str,
    user: &str,
    resume_token: &str,
    last_seq: u64,
) -> Client {
    let mut client =
        Client::resume(server.addr(), room, &token(user), resume_token, last_seq).await;
    let state = client.read_room_state().await.clone();
    assert_eq!(state["payload"]["resumed"], true, "{state}");
    client
}

fn ice(to: &str, seq: u64, from: &str) -> Value {
    json!({"type": "ice-candidate", "to": to, "seq": seq, "payload": {"n": seq, "from": from}})
}

/// Reads `want` candidates; returns (payload.from, payload.n, delivery seq) of each.
async fn read_candidates(
    client: &mut Client,
    want: usize,
    until: Duration,
) -> Vec<(String, u64, u64)> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + until;
    while got.len() < want {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_event(left).await {
            Event::Json(msg) if msg["type"] == "ice-candidate" => got.push((
                msg["payload"]["from"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                msg["payload"]["n"].as_u64().expect("payload.n"),
                msg["seq"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("delivered without seq: {msg}")),
            )),
            Event::Json(msg) if msg["type"] == "user-left" || msg["type"] == "user-joined" => {
                panic!("the room saw a presence change: {msg}")
            }
            Event::Json(_) => {}
            other => panic!("after {} candidates: {other:?}", got.len()),
        }
    }
    got
}

#[tokio::test]
async fn a_sender_whose_replica_is_sigkilled_resumes_on_another_and_nothing_is_lost() {
    let redis = RedisProcess::start();
    let mut servers = servers(&redis, 3).await;
    let room = "pod-loss";
    let mut carol = join(&servers[2], room, "carol", &mut []).await;
    let mut bob = join(&servers[1], room, "bob", &mut [&mut carol]).await;
    let mut alice = join(&servers[0], room, "alice", &mut [&mut carol, &mut bob]).await;
    let (alice_id, bob_id) = (alice.pid(), bob.pid());
    let alice_token = alice.resume_token();

    for n in 1..=400 {
        alice.send_json(&ice(&bob_id, n, "alice")).await;
    }
    let mut acked = BTreeSet::new();
    while acked.len() < 100 {
        let msg = alice.recv_json_within(Duration::from_secs(10)).await;
        assert_eq!(msg["type"], "ack", "{msg}");
        acked.insert(msg["seq"].as_u64().unwrap());
    }
    // Mid-stream, alice's replica dies.
    servers[0].sigkill();
    alice.drop_connection();

    let mut alice = resume(&servers[1], room, "alice", &alice_token, 0).await;
    let state = alice.room_state.clone().unwrap();
    assert_eq!(
        state["payload"]["self"]["participant_id"],
        alice_id.as_str()
    );
    assert_eq!(state["payload"]["participant_count"], 3, "{state}");
    for n in (1..=400).filter(|n| !acked.contains(n)) {
        alice.send_json(&ice(&bob_id, n, "alice")).await;
    }
    for n in 401..=1000 {
        alice.send_json(&ice(&bob_id, n, "alice")).await;
    }

    let got = read_candidates(&mut bob, 1000, Duration::from_secs(30)).await;
    let ns: Vec<u64> = got.iter().map(|(_, n, _)| *n).collect();
    assert_eq!(
        ns,
        (1..=1000).collect::<Vec<_>>(),
        "every candidate once, in order"
    );
    let seqs: Vec<u64> = got.iter().map(|(_, _, s)| *s).collect();
    assert_eq!(
        seqs,
        (1..=1000).collect::<Vec<_>>(),
        "delivery seqs count by one"
    );
    match bob.next_event(Duration::from_millis(500)).await {
        Event::Timeout => {}
        other => panic!("bob got more than 1,000: {other:?}"),
    }
    // Longer than the dead instance's cleanup takes: alice was adopted, so it is not lost.
    carol
        .assert_no_presence_change(Duration::from_secs(3 * TTL_SECS))
        .await;
    bob.assert_no_presence_change(Duration::from_millis(100))
        .await;
    let res = switchboard_e2e::http::get_bearer(
        servers[2].addr(),
        &format!("/webrtc/rooms/{room}/participants"),
        &token("observer"),
    )
    .await;
    assert_eq!(
        res.json()["participants"].as_array().map(Vec::len),
        Some(3),
        "{}",
        res.text()
    );
}

/// One participant on the draining replica: sends `before` numbered messages, follows the
/// `reconnect` hint to `to`, resumes, re-sends what was not acked and sends `after` more.
async fn drained_sender(
    mut client: Client,
    user: String,
    anchor: String,
    to: std::net::SocketAddr,
    before: u64,
    after: u64,
) -> Result<(), String> {
    let room = client.room.clone();
    let resume_token = client.resume_token();
    for n in 1..=before {
        client.send_json(&ice(&anchor, n, &user)).await;
    }
    let mut acked = BTreeSet::new();
    // Read acks until the server's reconnect hint and close.
    let mut hinted = false;
    loop {
        match client.next_event(Duration::from_secs(20)).await {
            Event::Json(msg) if msg["type"] == "ack" => {
                acked.insert(msg["seq"].as_u64().unwrap_or_default());
            }
            Event::Json(msg) if msg["type"] == "reconnect" => hinted = true,
            Event::Json(msg) => return Err(format!("{user}: unexpected {msg}")),
            Event::Close(Some((1001, _))) | Event::Eof => break,
            other => return Err(format!("{user}: {other:?}")),
        }
    }
    if !hinted {
        return Err(format!("{user}: closed without a reconnect hint"));
    }
    let mut client = Client::resume(to, &room, &token(&user), &resume_token, 0).await;
    let state = client.read_room_state().await.clone();
    if state["payload"]["resumed"] != true {
        return Err(format!("{user}: not resumed: {state}"));
    }
    for n in (1..=before).filter(|n| !acked.contains(n)) {
        client.send_json(&ice(&anchor, n, &user)).await;
    }
    for n in before + 1..=before + after {
        client.send_json(&ice(&anchor, n, &user)).await;
    }
    // Every message acked before the test ends.
    let mut answered = acked.len() as u64;
    let want = before + after;
    let mut seen = acked;
    while answered < want {
        match client.next_event(Duration::from_secs(20)).await {
            Event::Json(msg) if msg["type"] == "ack" => {
                if seen.insert(msg["seq"].as_u64().unwrap_or_default()) {
                    answered += 1;
                }
            }
            Event::Json(_) => {}
            other => return Err(format!("{user} after resume: {other:?}")),
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_drained_replica_s_50_participants_resume_elsewhere_with_nothing_lost() {
    const ROOMS: usize = 10;
    const PER_ROOM: usize = 5;
    const BEFORE: u64 = 10;
    const AFTER: u64 = 10;
    let redis = RedisProcess::start();
    let servers = servers(&redis, 2).await;
    // Per room: an anchor on the replica that stays, five senders on the one that drains.
    let mut anchors = Vec::new();
    let mut senders = Vec::new();
    for r in 0..ROOMS {
        let room = format!("drain-{r}");
        let mut anchor = join(&servers[1], &room, &format!("anchor-{r}"), &mut []).await;
        let mut in_room: Vec<Client> = Vec::new();
        for p in 0..PER_ROOM {
            let user = format!("s{r}-{p}");
            let mut earlier: Vec<&mut Client> = in_room.iter_mut().collect();
            earlier.push(&mut anchor);
            let client = join(&servers[0], &room, &user, &mut earlier).await;
            in_room.push(client);
        }
        let anchor_id = anchor.pid();
        for (p, client) in in_room.into_iter().enumerate() {
            senders.push((client, format!("s{r}-{p}"), anchor_id.clone()));
        }
        anchors.push(anchor);
    }
    let to = servers[1].addr();
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|(client, user, anchor)| {
            tokio::spawn(drained_sender(client, user, anchor, to, BEFORE, AFTER))
        })
        .collect();
    // Let the first messages flow, then drain.
    tokio::time::sleep(Duration::from_millis(300)).await;
    servers[0].sigterm();
    for task in tasks {
        task.await
            .expect("sender task")
            .unwrap_or_else(|e| panic!("{e}"));
    }
    for anchor in anchors.iter_mut() {
        let got = read_candidates(
            anchor,
            PER_ROOM * (BEFORE + AFTER) as usize,
            Duration::from_secs(20),
        )
        .await;
        let mut by_sender: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (from, n, _) in &got {
            by_sender.entry(from.clone()).or_default().push(*n);
        }
        assert_eq!(by_sender.len(), PER_ROOM, "{by_sender:?}");
        for (from, ns) in &by_sender {
            assert_eq!(
                ns,
                &(1..=BEFORE + AFTER).collect::<Vec<_>>(),
                "{from}: once each, in order"
            );
        }
        let seqs: Vec<u64> = got.iter().map(|(_, _, s)| *s).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
        anchor
            .assert_no_presence_change(Duration::from_millis(200))
            .await;
    }
    // After the drained replica's records would have been cleaned up: still nobody left.
    tokio::time::sleep(Duration::from_secs(2 * TTL_SECS)).await;
    for anchor in anchors.iter_mut() {
        anchor
            .assert_no_presence_change(Duration::from_millis(100))
            .await;
    }
}

/// Servers on `redis` whose inboxes are bounded by `bounds` (environment), each holding a
/// lost participant for `grace_secs`.
async fn bounded_servers(
    redis: &RedisProcess,
    n: usize,
    grace_secs: u64,
    bounds: &[(&str, &str)],
) -> Vec<ServerProcess> {
    let servers: Vec<ServerProcess> = (0..n)
        .map(|i| {
            let mut o = options(redis, &format!("rb-{i}"))
                .env("SWITCHBOARD_RESUME_GRACE_SECS", grace_secs.to_string());
            for (k, v) in bounds {
                o = o.env(*k, *v);
            }
            o.start()
        })
        .collect();
    for s in &servers {
        s.wait_ready(true, Duration::from_secs(10)).await;
    }
    servers
}

/// Sends each of `messages` and reads its `ack`.
async fn send_acked(client: &mut Client, messages: &[Value]) {
    for m in messages {
        client.send_json(m).await;
        let ack = client
            .recv_until_type("ack", Duration::from_secs(5))
            .await
            .1;
        assert_eq!(ack["seq"], m["seq"], "{ack}");
    }
}

/// The next `user-left` `client` sees (nothing but acks before it) must be `pid`'s with
/// reason `closed`.
async fn expect_left_closed(client: &mut Client, pid: &str) {
    let (skipped, left) = client
        .recv_until_type("user-left", Duration::from_secs(5))
        .await;
    assert!(skipped.iter().all(|m| m["type"] == "ack"), "{skipped:?}");
    assert_eq!(left["payload"]["participant_id"], pid, "{left}");
    assert_eq!(left["payload"]["reason"], "closed", "{left}");
}

/// A counter or gauge from `/metrics` (0 when absent).
async fn metric(server: &ServerProcess, series: &str) -> u64 {
    let body = switchboard_e2e::http::get(server.addr(), "/metrics")
        .await
        .text();
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

async fn participant_count(server: &ServerProcess, room: &str) -> Option<usize> {
    let res = switchboard_e2e::http::get_bearer(
        server.addr(),
        &format!("/webrtc/rooms/{room}/participants"),
        &token("observer"),
    )
    .await;
    res.json()["participants"].as_array().map(Vec::len)
}

#[tokio::test]
async fn missing_more_than_inbox_messages_refuses_the_resume_and_the_participant_leaves_closed() {
    const GRACE_SECS: u64 = 3;
    let redis = RedisProcess::start();
    let servers = bounded_servers(
        &redis,
        2,
        GRACE_SECS,
        &[("SWITCHBOARD_RESUME_INBOX_MESSAGES", "8")],
    )
    .await;
    let room = "overflow-messages";
    // Bob and carol on one server, alice on the other; bob resumes on alice's.
    let mut carol = join(&servers[0], room, "carol", &mut []).await;
    let bob = join(&servers[0], room, "bob", &mut [&mut carol]).await;
    let mut alice = join(&servers[1], room, "alice", &mut [&mut carol]).await;
    let (bob_id, bob_token) = (bob.pid(), bob.resume_token());
    bob.drop_connection();
    let twelve: Vec<Value> = (1..=12).map(|n| ice(&bob_id, n, "alice")).collect();
    send_acked(&mut alice, &twelve).await;

    let mut refused = Client::resume(servers[1].addr(), room, &token("bob"), &bob_token, 0).await;
    refused.expect_close(1008, "resume_overflow").await;
    // Never a silent gap: bob is gone for the whole room at once, on both servers.
    expect_left_closed(&mut alice, &bob_id).await;
    expect_left_closed(&mut carol, &bob_id).await;
    assert_eq!(participant_count(&servers[0], room).await, Some(2));
    assert_eq!(
        metric(
            &servers[1],
            "switchboard_resumes_total{outcome=\"resume_overflow\"}"
        )
        .await,
        1
    );
    // 12 missed, the newest 8 kept.
    assert_eq!(
        metric(&servers[1], "switchboard_inbox_overflows_total").await,
        4
    );
    // A resume of the gone participant now finds nobody.
    let mut again = Client::resume(servers[0].addr(), room, &token("bob"), &bob_token, 0).await;
    again.expect_close(1008, "resume_expired").await;

    // A fresh join is a new participant, announced everywhere, numbered from 1.
    let mut bob = Client::join(servers[1].addr(), room, &token("bob")).await;
    assert_ne!(bob.pid(), bob_id);
    for c in [&mut alice, &mut carol] {
        let joined = c
            .recv_until_type("user-joined", Duration::from_secs(5))
            .await
            .1;
        assert_eq!(joined["payload"]["participant_id"], bob.pid().as_str());
    }
    let new_id = bob.pid();
    send_acked(&mut alice, &[ice(&new_id, 13, "alice")]).await;
    let got = read_candidates(&mut bob, 1, Duration::from_secs(5)).await;
    assert_eq!(got, [("alice".to_owned(), 13, 1)]);
    // The old participant's grace window passes without a second leave.
    carol
        .assert_no_presence_change(Duration::from_secs(GRACE_SECS + 1))
        .await;
    alice
        .assert_no_presence_change(Duration::from_millis(100))
        .await;
}

#[tokio::test]
async fn missed_messages_over_inbox_bytes_refuse_the_resume_on_the_same_server() {
    let redis = RedisProcess::start();
    let servers =
        bounded_servers(&redis, 1, 30, &[("SWITCHBOARD_RESUME_INBOX_BYTES", "4096")]).await;
    let room = "overflow-bytes";
    let mut alice = join(&servers[0], room, "alice", &mut []).await;
    let bob = join(&servers[0], room, "bob", &mut [&mut alice]).await;
    let (bob_id, bob_token) = (bob.pid(), bob.resume_token());
    bob.drop_connection();
    // Four messages of about 1.6 KiB: two fit into 4 KiB, four do not.
    let big: Vec<Value> = (1..=4)
        .map(|n| {
            json!({"type": "ice-candidate", "to": bob_id, "seq": n,
                   "payload": {"n": n, "from": "alice", "pad": "x".repeat(1500)}})
        })
        .collect();
    send_acked(&mut alice, &big).await;

    let mut refused = Client::resume(servers[0].addr(), room, &token("bob"), &bob_token, 0).await;
    refused.expect_close(1008, "resume_overflow").await;
    expect_left_closed(&mut alice, &bob_id).await;
    assert_eq!(participant_count(&servers[0], room).await, Some(1));
    assert_eq!(
        metric(&servers[0], "switchboard_inbox_overflows_total").await,
        2
    );
    let bob = Client::join(servers[0].addr(), room, &token("bob")).await;
    assert_ne!(bob.pid(), bob_id);
    let joined = alice
        .recv_until_type("user-joined", Duration::from_secs(5))
        .await
        .1;
    assert_eq!(joined["payload"]["participant_id"], bob.pid().as_str());
    alice
        .assert_no_presence_change(Duration::from_millis(300))
        .await;
}

#[tokio::test]
async fn a_resume_that_missed_exactly_inbox_messages_gets_them_all_in_order() {
    let redis = RedisProcess::start();
    let servers =
        bounded_servers(&redis, 2, 30, &[("SWITCHBOARD_RESUME_INBOX_MESSAGES", "8")]).await;
    let room = "at-the-bound";
    let mut bob = join(&servers[0], room, "bob", &mut []).await;
    let mut alice = join(&servers[1], room, "alice", &mut [&mut bob]).await;
    let (bob_id, bob_token) = (bob.pid(), bob.resume_token());
    // Four delivered and processed, then the connection is lost and eight more are missed:
    // twelve in the inbox stream, exactly the bound after last_seq.
    let first: Vec<Value> = (1..=4).map(|n| ice(&bob_id, n, "alice")).collect();
    send_acked(&mut alice, &first).await;
    let got = read_candidates(&mut bob, 4, Duration::from_secs(5)).await;
    assert_eq!(got.last().map(|g| g.2), Some(4));
    bob.drop_connection();
    let missed: Vec<Value> = (5..=12).map(|n| ice(&bob_id, n, "alice")).collect();
    send_acked(&mut alice, &missed).await;

    let mut bob = resume(&servers[1], room, "bob", &bob_token, 4).await;
    let got = read_candidates(&mut bob, 8, Duration::from_secs(5)).await;
    let want: Vec<(String, u64, u64)> = (5..=12).map(|n| ("alice".to_owned(), n, n)).collect();
    assert_eq!(
        got, want,
        "the eight missed ones, in order, with their seqs"
    );
    match bob.next_event(Duration::from_millis(300)).await {
        Event::Timeout => {}
        other => panic!("more than the missed ones: {other:?}"),
    }
    alice
        .assert_no_presence_change(Duration::from_millis(300))
        .await;
    assert_eq!(
        metric(&servers[1], "switchboard_inbox_overflows_total").await,
        0
    );
}
