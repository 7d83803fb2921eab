//! What one client can make the room pay, against the real server: a broadcast burst is
//! charged per recipient so the sender is throttled while every fast reader stays (default
//! limits); a reader that stalls through join/leave churn ends up with the same participants as
//! the REST endpoint (the missed presence comes back as a fresh `room-state`); JSON nested too
//! deep is refused with `invalid_message` instead of being relayed.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchboard_e2e::client::{
    assert_error, assert_pair_relays, assert_relays, join_all, ws_path, Client, ConnectOptions,
    Event,
};
use switchboard_e2e::http::get_bearer;
use switchboard_e2e::server::{ServerOptions, ServerProcess};
use switchboard_e2e::token::Claims;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "e2e-room-budget-secret-0123456789abcdef";
const ROOM: &str = "budget-room";

fn token(user: &str) -> String {
    Claims::user(user).hs256(SECRET)
}

/// Sends a ping and reads up to its pong: what was still queued for `client` before it.
async fn pending_until_pong(client: &mut Client) -> Vec<Value> {
    client.send_json(&json!({"type": "ping"})).await;
    client
        .recv_until_type("pong", Duration::from_secs(20))
        .await
        .0
}

/// Reads `client` on its own task as fast as it can until `stop` changes, then returns it with
/// everything it received (including what was still queued then, see [`pending_until_pong`]).
/// A close or an error while reading fails the test.
fn read_in_background(
    mut client: Client,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<(Client, Vec<Value>)> {
    tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            tokio::select! {
                event = client.next_event(Duration::from_secs(60)) => match event {
                    Event::Json(msg) => got.push(msg),
                    other => panic!(
                        "reader {}: {other:?} after {} messages",
                        client.pid(),
                        got.len()
                    ),
                },
                _ = stop.changed() => break,
            }
        }
        got.extend(pending_until_pong(&mut client).await);
        (client, got)
    })
}

/// The default delivered-bytes refill (`limits.rate_limit_bytes_per_second`).
const DEFAULT_BYTES_PER_SECOND: f64 = 262_144.0;

/// The finding, replayed with the default limits: one sender bursts 200 broadcasts of 60 KB
/// into a room of 50. It used to close all 49 readers with 1013 `slow_consumer` within a
/// second. Now the burst is charged size × recipients: the sender gets `rate_limited`, every
/// reader (reading as fast as it can) gets the same few broadcasts and stays, and a sender that
/// keeps going is closed 1008 `rate_limited`.
#[tokio::test]
async fn broadcast_burst_throttles_the_sender_and_closes_no_reader() {
    const ROOM_SIZE: usize = 50;
    const BURST: usize = 200;
    let server = ServerOptions::with_secret(SECRET).start();
    let tokens: Vec<String> = (0..ROOM_SIZE).map(|i| token(&format!("user{i}"))).collect();
    let mut clients = join_all(server.addr(), ROOM, &tokens).await;
    let mut attacker = clients.remove(0);
    let attacker_pid = attacker.pid();

    // Every reader reads on its own task until told the burst is over, then proves it is
    // still connected with a ping of its own.
    let (over_tx, over_rx) = tokio::sync::watch::channel(false);
    let readers: Vec<_> = clients
        .into_iter()
        .map(|reader| read_in_background(reader, over_rx.clone()))
        .collect();

    let text = "x".repeat(60_000);
    let started = Instant::now();
    for n in 0..BURST {
        let msg = json!({"type": "chat-message", "payload": {"n": n, "text": text}});
        attacker.send_json(&msg).await;
    }
    // The pong proves the server has handled the whole burst.
    attacker.send_json(&json!({"type": "ping"})).await;
    let (replies, _) = attacker
        .recv_until_type("pong", Duration::from_secs(30))
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    for reply in &replies {
        assert_ne!(
            reply["type"], "user-left",
            "a reader was closed by the burst instead of the sender being throttled: {reply}"
        );
        assert_error(reply, "rate_limited");
    }
    let delivered = BURST - replies.len();
    // One broadcast costs about 60 KB × 49 = 2.9 MB of the 512 KiB bucket: the first goes out
    // on the full bucket, the debt is paid back at 256 KiB/s.
    let cost = 60_000.0 * (ROOM_SIZE - 1) as f64;
    let allowed = 1 + (elapsed * DEFAULT_BYTES_PER_SECOND / cost).ceil() as usize;
    assert!(
        (1..=allowed).contains(&delivered),
        "{delivered} of {BURST} broadcasts relayed in {elapsed:.1} s; the byte budget allows \
         1 to {allowed}"
    );

    let _ = over_tx.send(true);
    // Every reader is kept until all have finished: one dropped early would show up in the
    // others' reads as a user-left.
    let mut results = Vec::new();
    for task in readers {
        results.push(
            tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("reader finishes")
                .expect("reader task did not panic"),
        );
    }
    for (reader, got) in &results {
        let ns: Vec<u64> = got
            .iter()
            .map(|m| {
                assert_eq!(m["type"], "chat-message", "reader {}: {m}", reader.pid());
                assert_eq!(m["sender_id"], attacker_pid.as_str());
                assert_eq!(
                    m["payload"]["text"].as_str().map(str::len),
                    Some(text.len())
                );
                m["payload"]["n"].as_u64().expect("n")
            })
            .collect();
        assert_eq!(
            ns.len(),
            delivered,
            "reader {} got {ns:?}; every reader gets each relayed broadcast",
            reader.pid()
        );
        assert!(ns.windows(2).all(|w| w[0] < w[1]), "in order: {ns:?}");
    }

    // A sender that keeps going reaches `rate_limit_burst` rejections within 10 s: closed.
    // One message at a time, each answered, so the server has read everything when it closes.
    let mut close = None;
    for n in 0..BURST {
        let msg = json!({"type": "chat-message", "payload": {"n": BURST + n, "text": "more"}});
        attacker.send_json(&msg).await;
        match attacker.next_event(Duration::from_secs(5)).await {
            Event::Json(reply) => {
                assert_error(&reply, "rate_limited");
            }
            Event::Close(frame) => {
                close = frame;
                break;
            }
            other => panic!("attacker: {other:?}"),
        }
    }
    assert_eq!(close, Some((1008, "rate_limited".to_string())));
}

/// Participant ids of a `room-state` or REST participants list.
fn ids(list: &Value) -> BTreeSet<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a participant list: {list}"))
        .iter()
        .map(|p| {
            p["participant_id"]
                .as_str()
                .expect("participant_id")
                .to_string()
        })
        .collect()
}

/// A client's picture of the room, kept the way a client has to: `room-state` replaces it,
/// `user-joined` / `user-left` change it.
#[derive(Debug, Default)]
struct View {
    members: BTreeSet<String>,
    room_states: usize,
}

impl View {
    fn apply(&mut self, msg: &Value) {
        match msg["type"].as_str() {
            Some("room-state") => {
                self.members = ids(&msg["payload"]["participants"]);
                self.room_states += 1;
            }
            Some("user-joined") => {
                self.members.insert(
                    msg["payload"]["participant_id"]
                        .as_str()
                        .expect("id")
                        .into(),
                );
            }
            Some("user-left") => {
                self.members
                    .remove(msg["payload"]["participant_id"].as_str().expect("id"));
            }
            _ => panic!("unexpected message in a presence-only room: {msg}"),
        }
    }
}

/// The REST view of the room.
async fn rest_members(server: &ServerProcess) -> BTreeSet<String> {
    let path = format!("/webrtc/rooms/{ROOM}/participants");
    let response = get_bearer(server.addr(), &path, &token("observer")).await;
    assert_eq!(response.status, 200, "{}", response.text());
    ids(&response.json()["participants"])
}

/// A counter from `/metrics`.
async fn metric(server: &ServerProcess, name: &str) -> u64 {
    let body = switchboard_e2e::http::get(server.addr(), "/metrics")
        .await
        .text();
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// A token whose display name is long, so presence frames are big and the churn overflows a
/// stalled reader's socket buffers sooner.
fn churn_token(user: &str) -> String {
    let mut claims = Claims::user(user);
    claims.name = Some(format!("{user} {}", "n".repeat(200)));
    claims.hs256(SECRET)
}

/// The finding: a reader stalled during join/leave churn lost presence updates (they are
/// droppable), was never closed, and then believed departed participants present and present
/// ones absent. Now a reader whose presence was dropped gets a fresh `room-state` once it has
/// caught up, and its view matches the participants endpoint. The queue is small so that a
/// few hundred joins overflow it; the rate limit plays no part (the churn sends no messages).
#[tokio::test]
async fn a_reader_that_stalled_through_churn_catches_up_with_the_room() {
    const CHURNERS: usize = 4;
    const CYCLES_PER_ROUND: usize = 10;
    const MAX_ROUNDS: usize = 40;
    let server = ServerOptions::with_secret(SECRET)
        .env("WEBRTC_OUTBOUND_QUEUE_MESSAGES", "8")
        .start();
    let addr = server.addr();
    // Members that leave during the churn, and one that stays and reads throughout.
    let tokens: Vec<String> = ["early0", "early1", "early2", "anchor"]
        .iter()
        .map(|u| token(u))
        .collect();
    let mut early = join_all(addr, ROOM, &tokens).await;
    let mut anchor = early.pop().expect("anchor");
    // The stalled reader: tiny socket buffers on both ends, and it reads nothing until the
    // churn is over.
    let stalled_opts = ConnectOptions {
        recv_buffer: Some(4096),
        max_segment: Some(536),
        ..ConnectOptions::default()
    };
    let mut stalled =
        Client::connect_with(addr, ROOM, &ws_path(ROOM, &token("stalled")), &stalled_opts).await;
    let mut view = View::default();
    view.apply(&stalled.read_room_state().await.clone());
    anchor.expect_type("user-joined").await;
    for c in early.iter_mut() {
        c.expect_type("user-joined").await;
    }

    // The anchor keeps reading throughout; a reader that keeps up has to agree as well.
    let mut anchor_view = View::default();
    anchor_view.apply(anchor.room_state.as_ref().expect("anchor joined"));
    anchor_view.members.insert(stalled.pid());
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let anchor_task = read_in_background(anchor, done_rx);

    // The three early members leave while the churn runs: their user-left may be dropped too.
    let leavers = tokio::spawn(async move {
        for c in early {
            c.close().await;
        }
    });
    // Churn in rounds until presence has been dropped (for the stalled reader, whose socket
    // takes only a few KB), bounded.
    let mut rounds = 0;
    loop {
        let churn: Vec<_> = (0..CHURNERS)
            .map(|t| {
                tokio::spawn(async move {
                    for i in 0..CYCLES_PER_ROUND {
                        let user = format!("churn{rounds}-{t}-{i}");
                        Client::join(addr, ROOM, &churn_token(&user))
                            .await
                            .close()
                            .await;
                    }
                })
            })
            .collect();
        for task in churn {
            task.await.expect("churn task");
        }
        rounds += 1;
        if metric(&server, "switchboard_presence_dropped_total").await > 0 {
            break;
        }
        assert!(
            rounds < MAX_ROUNDS,
            "{} join/leave cycles did not overflow the stalled reader's queue",
            rounds * CHURNERS * CYCLES_PER_ROUND
        );
    }
    // A few more rounds after the first drop, so that joins *and* leaves are lost, then
    // stayers that join last (their user-joined is lost as well).
    for round in 0..3 {
        for i in 0..CHURNERS * CYCLES_PER_ROUND {
            let user = format!("late{round}-{i}");
            Client::join(addr, ROOM, &churn_token(&user))
                .await
                .close()
                .await;
        }
    }
    leavers.await.expect("leavers");
    let mut stayers = Vec::new();
    for t in 0..CHURNERS {
        stayers.push(Client::join(addr, ROOM, &churn_token(&format!("stayer{t}"))).await);
    }
    let want = rest_members(&server).await;
    assert_eq!(
        want.len(),
        2 + CHURNERS,
        "anchor, stalled and the stayers: {want:?}"
    );

    // The stalled reader catches up: its view has to become the REST view, through a fresh
    // room-state (lost joins and their leaves can cancel out, so the deltas alone may match
    // before the room-state arrives).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while view.members != want || view.room_states < 2 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match stalled.next_event(left).await {
            Event::Json(msg) => view.apply(&msg),
            other => panic!(
                "stalled reader: {other:?} with a view that still differs from the \
                 participants endpoint or no fresh room-state ({} so far): has {:?}, should \
                 have {want:?}",
                view.room_states, view.members
            ),
        }
    }
    assert!(
        view.room_states >= 2,
        "the catch-up came through a fresh room-state"
    );
    assert!(metric(&server, "switchboard_presence_resyncs_total").await >= 1);
    // Nothing contradicting it is still pending.
    for msg in &pending_until_pong(&mut stalled).await {
        view.apply(msg);
    }
    assert_eq!(view.members, want);
    // The reader that kept up agrees as well.
    let _ = done_tx.send(true);
    let (_anchor, got) = tokio::time::timeout(Duration::from_secs(30), anchor_task)
        .await
        .expect("anchor finishes")
        .expect("anchor task did not panic");
    for msg in &got {
        anchor_view.apply(msg);
    }
    assert_eq!(anchor_view.members, want);
    drop(stayers);
}

/// `[[[ ... ]]]`, `depth` levels.
fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// The finding: JSON nested 10,000 levels deep was relayed unchanged to every recipient. Now
/// the default bound of 32 levels (the envelope counts as one) refuses it with
/// `invalid_message`, the connection stays, and nobody receives it.
#[tokio::test]
async fn deeply_nested_json_is_refused_at_the_default_depth() {
    let server = ServerOptions::with_secret(SECRET).start();
    let tokens = [token("alice"), token("bob")];
    let mut clients = join_all(server.addr(), ROOM, &tokens).await;
    let (a, b) = clients.split_at_mut(1);
    let (alice, bob) = (&mut a[0], &mut b[0]);
    for depth in [10_000, 32] {
        let text = format!(r#"{{"type":"chat-message","payload":{}}}"#, nested(depth));
        bob.send_text(&text).await;
        let reply = bob.recv_json().await;
        let message = assert_error(&reply, "invalid_message");
        assert!(message.contains("32 levels"), "{message}");
    }
    // 31 levels of payload is within the bound and relayed verbatim.
    let text = format!(r#"{{"type":"chat-message","payload":{}}}"#, nested(31));
    bob.send_text(&text).await;
    let msg = alice.recv_json().await;
    assert_eq!(msg["type"], "chat-message");
    assert_eq!(msg["payload"].to_string(), nested(31));
    // Alice received nothing else; both still relay.
    assert_pair_relays(alice, bob).await;
}

#[tokio::test]
async fn the_depth_bound_is_configurable() {
    let server = ServerOptions::with_secret(SECRET)
        .env("WEBRTC_MAX_JSON_DEPTH", "4")
        .start();
    let tokens = [token("alice"), token("bob")];
    let mut clients = join_all(server.addr(), ROOM, &tokens).await;
    let (a, b) = clients.split_at_mut(1);
    let (alice, bob) = (&mut a[0], &mut b[0]);
    let alice_pid = alice.pid();
    let offer = |payload: &str| {
        format!(r#"{{"type":"offer","to":"{alice_pid}","payload":{{"sdp":{payload}}}}}"#)
    };
    // Envelope, payload object and two more levels: 4.
    bob.send_text(&offer("[[1]]")).await;
    assert_eq!(alice.recv_json().await["payload"], json!({"sdp": [[1]]}));
    bob.send_text(&offer("[[[1]]]")).await;
    assert_error(&bob.recv_json().await, "invalid_message");
    bob.send(Message::text(
        json!({"type": "ping", "payload": [[[[1]]]]}).to_string(),
    ))
    .await;
    assert_error(&bob.recv_json().await, "invalid_message");
    assert_relays(bob, alice).await;
}
