//! Limits of the real server: message size (1009), rate limit (error then 1008), room capacity
//! (1013 room_full, configured and default 50), slow readers (1013 slow_consumer, never a silent
//! drop), keep-alive (a peer that stops answering pings leaves with reason timeout) and the
//! per-user connection limits (1008 user_room_limit, 1008 user_instance_limit; off under
//! `--dev`). In each case the rest of the room keeps relaying.

use std::time::Duration;

use serde_json::{json, Value};
use switchboard_e2e::client::{
    assert_error, assert_pair_relays, join_all, join_users, ws_path, Client, ConnectOptions,
};
use switchboard_e2e::server::{ServerOptions, ServerProcess};
use switchboard_e2e::token::Claims;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "e2e-limits-secret-0123456789abcdef";
const ROOM: &str = "limits-room";

fn token(user: &str) -> String {
    Claims::user(user).hs256(SECRET)
}

/// Joins `users` in order; nothing is left pending for any of them.
async fn room_of(server: &ServerProcess, room: &str, users: &[&str]) -> Vec<Client> {
    join_users(server.addr(), room, SECRET, users).await
}

/// A `chat-message` broadcast whose serialized form is exactly `size` bytes, and the length of
/// its text.
fn chat_of_size(size: usize) -> (String, usize) {
    let base = json!({"type": "chat-message", "payload": {"text": ""}}).to_string();
    let text_len = size - base.len();
    let msg =
        json!({"type": "chat-message", "payload": {"text": "x".repeat(text_len)}}).to_string();
    assert_eq!(msg.len(), size);
    (msg, text_len)
}

/// Bob and carol (clients[1], clients[2]) see alice leave, then still relay to each other.
async fn others_see_leave_and_relay(clients: &mut [Client], leaver: &str, reason: Option<&str>) {
    let (_, rest) = clients.split_at_mut(1);
    let (bob, carol) = rest.split_at_mut(1);
    for other in [&mut bob[0], &mut carol[0]] {
        let (skipped, left) = other
            .recv_until_type("user-left", Duration::from_secs(10))
            .await;
        assert_eq!(left["payload"]["participant_id"], leaver, "{left}");
        if let Some(reason) = reason {
            assert_eq!(left["payload"]["reason"], reason, "{left}");
        }
        for msg in skipped {
            assert_eq!(
                msg["sender_id"], leaver,
                "unexpected message before user-left: {msg}"
            );
        }
    }
    assert_pair_relays(&mut bob[0], &mut carol[0]).await;
}

/// Every client after the first (the sender) receives its chat message with the whole text.
async fn others_receive_chat(clients: &mut [Client], text_len: usize) {
    for receiver in clients.iter_mut().skip(1) {
        let msg = receiver.recv_json().await;
        assert_eq!(msg["type"], "chat-message");
        assert_eq!(
            msg["payload"]["text"].as_str().map(str::len),
            Some(text_len)
        );
    }
}

/// The first client has just sent more than the limit: it is closed 1009 `message_too_big`
/// with nothing read before the close, and the others see it leave and still relay.
async fn first_closed_too_big(clients: &mut [Client]) {
    let sender = clients[0].pid();
    let (messages, close) = clients[0].collect_until_close(Duration::from_secs(5)).await;
    assert_eq!(close, (1009, "message_too_big".to_string()));
    assert!(
        messages.is_empty(),
        "nothing before the close: {messages:?}"
    );
    others_see_leave_and_relay(clients, &sender, None).await;
}

#[tokio::test]
async fn oversized_message_closes_1009_at_default_limit() {
    let server = ServerOptions::with_secret(SECRET).start();
    let mut clients = room_of(&server, ROOM, &["alice", "bob", "carol"]).await;
    // Just under the 64 KiB default is relayed.
    let (msg, text_len) = chat_of_size(65_000);
    clients[0].send_text(&msg).await;
    others_receive_chat(&mut clients, text_len).await;
    clients[0].send_text(&chat_of_size(65_537).0).await;
    first_closed_too_big(&mut clients).await;
}

#[tokio::test]
async fn oversized_message_closes_1009_at_configured_limit() {
    let server = ServerOptions::with_secret(SECRET)
        .env("WEBRTC_MAX_MESSAGE_BYTES", "2048")
        .start();
    let mut clients = room_of(&server, ROOM, &["alice", "bob", "carol"]).await;
    clients[0].send_text(&chat_of_size(2000).0).await;
    assert_eq!(clients[1].recv_json().await["type"], "chat-message");
    assert_eq!(clients[2].recv_json().await["type"], "chat-message");
    let alice = clients[0].pid();
    clients[0].send_text(&chat_of_size(4096).0).await;
    let (_, close) = clients[0].collect_until_close(Duration::from_secs(5)).await;
    assert_eq!(close, (1009, "message_too_big".to_string()));
    others_see_leave_and_relay(&mut clients, &alice, None).await;
}

#[tokio::test]
async fn flooding_gets_rate_limited_then_closed_1008() {
    const RATE: u64 = 5;
    const BURST: u64 = 5;
    let server = ServerOptions::with_secret(SECRET)
        .env("WEBRTC_RATE_LIMIT_PER_SECOND", RATE.to_string())
        .env("WEBRTC_RATE_LIMIT_BURST", BURST.to_string())
        .start();
    let mut clients = room_of(&server, ROOM, &["alice", "bob", "carol"]).await;
    let alice = clients[0].pid();
    let bob = clients[1].pid();
    let started = std::time::Instant::now();
    for n in 0..60u64 {
        let msg = json!({"type": "chat-message", "to": bob, "payload": {"n": n}}).to_string();
        if clients[0].try_send(Message::text(msg)).await.is_err() {
            break;
        }
    }
    let (messages, close) = clients[0]
        .collect_until_close(Duration::from_secs(10))
        .await;
    let elapsed = started.elapsed().as_secs();
    assert_eq!(close, (1008, "rate_limited".to_string()));
    assert!(
        !messages.is_empty(),
        "the flooder must get `error rate_limited` for rejected messages before the close \
         (got the close {close:?} with no message before it)"
    );
    for msg in &messages {
        assert_error(msg, "rate_limited");
    }
    assert!(
        messages.len() as u64 <= BURST,
        "at most {BURST} rejections: {messages:?}"
    );

    // Bob got only what the bucket allowed, in order, then alice's leave.
    let (relayed, left) = clients[1]
        .recv_until_type("user-left", Duration::from_secs(10))
        .await;
    assert_eq!(left["payload"]["participant_id"], alice.as_str());
    assert_eq!(left["payload"]["reason"], "rate_limited");
    let ns: Vec<u64> = relayed
        .iter()
        .map(|m| {
            assert_eq!(m["type"], "chat-message", "{m}");
            m["payload"]["n"].as_u64().expect("n")
        })
        .collect();
    assert!(!ns.is_empty(), "the first burst is relayed");
    assert!(ns.windows(2).all(|w| w[0] < w[1]), "in order: {ns:?}");
    let allowed = BURST + RATE * (elapsed + 1);
    assert!(
        ns.len() as u64 <= allowed,
        "{} relayed, bucket allows {allowed}",
        ns.len()
    );
    // Carol saw nothing but the leave, and bob and carol still relay.
    let (skipped, left) = clients[2]
        .recv_until_type("user-left", Duration::from_secs(5))
        .await;
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(left["payload"]["reason"], "rate_limited");
    let (_, rest) = clients.split_at_mut(1);
    let (b, c) = rest.split_at_mut(1);
    assert_pair_relays(&mut b[0], &mut c[0]).await;
}

#[tokio::test]
async fn join_beyond_configured_capacity_closes_1013_room_full() {
    let server = ServerOptions::with_secret(SECRET)
        .env("WEBRTC_MAX_PARTICIPANTS_PER_ROOM", "3")
        .start();
    let mut clients = room_of(&server, ROOM, &["alice", "bob", "carol"]).await;
    let mut fourth = Client::connect(server.addr(), ROOM, &token("dave")).await;
    fourth.expect_close(1013, "room_full").await;
    // Nobody heard of dave; everyone still relays.
    {
        let (a, rest) = clients.split_at_mut(1);
        let (b, c) = rest.split_at_mut(1);
        assert_pair_relays(&mut a[0], &mut b[0]).await;
        assert_pair_relays(&mut b[0], &mut c[0]).await;
    }
    // Capacity is per room.
    Client::join(server.addr(), "another-room", &token("dave")).await;
    // When one leaves, the next join fits.
    let carol = clients.pop().unwrap();
    carol.close().await;
    clients[0].expect_type("user-left").await;
    clients[1].expect_type("user-left").await;
    let dave = Client::join(server.addr(), ROOM, &token("dave")).await;
    assert_eq!(
        dave.room_state.as_ref().unwrap()["payload"]["participant_count"],
        3
    );
}

#[tokio::test]
async fn fifty_first_join_closes_1013_room_full_at_default_capacity() {
    let server = ServerOptions::with_secret(SECRET).start();
    let mut clients = Vec::new();
    for i in 0..50 {
        clients.push(Client::join(server.addr(), ROOM, &token(&format!("user{i}"))).await);
    }
    let last = clients.last().unwrap().room_state.clone().unwrap();
    assert_eq!(last["payload"]["participant_count"], 50);
    assert_eq!(
        last["payload"]["participants"].as_array().map(Vec::len),
        Some(50)
    );
    let mut extra = Client::connect(server.addr(), ROOM, &token("user50")).await;
    extra.expect_close(1013, "room_full").await;

    // The first participant heard exactly the 49 others join, then the relay check.
    let first = clients[0].pid();
    let last_pid = clients[49].pid();
    clients[49]
        .send_msg("chat-message", Some(&first), json!({"check": true}))
        .await;
    let (skipped, msg) = clients[0]
        .recv_until_type("chat-message", Duration::from_secs(10))
        .await;
    assert_eq!(msg["sender_id"], last_pid.as_str());
    for m in &skipped {
        assert_eq!(m["type"], "user-joined", "{m}");
    }
    let joined: Vec<&str> = skipped
        .iter()
        .map(|m| m["payload"]["participant_id"].as_str().unwrap_or_default())
        .collect();
    let expected: Vec<String> = clients[1..].iter().map(Client::pid).collect();
    assert_eq!(joined, expected);
}

#[tokio::test]
async fn slow_reader_is_closed_1013_slow_consumer_after_an_in_order_prefix() {
    let server = ServerOptions::with_secret(SECRET)
        // Resume off: a lost connection leaves at once, with the reason it was lost for.
        .env("SWITCHBOARD_RESUME_GRACE_SECS", "0")
        .env("WEBRTC_OUTBOUND_QUEUE_MESSAGES", "16")
        .env("WEBRTC_OUTBOUND_QUEUE_BYTES", "262144")
        .env("WEBRTC_RATE_LIMIT_PER_SECOND", "100000")
        .env("WEBRTC_RATE_LIMIT_BURST", "100000")
        .env("WEBRTC_RATE_LIMIT_BYTES_PER_SECOND", "1000000000")
        .env("WEBRTC_RATE_LIMIT_BYTES_BURST", "1000000000")
        .start();
    // The slow client has a tiny receive buffer so the kernel does not absorb megabytes for it.
    let slow_opts = ConnectOptions {
        recv_buffer: Some(4096),
        ..ConnectOptions::default()
    };
    let mut slow = Client::connect_with(
        server.addr(),
        ROOM,
        &ws_path(ROOM, &token("slow")),
        &slow_opts,
    )
    .await;
    slow.read_room_state().await;
    let slow_pid = slow.pid();
    let mut alice = Client::join(server.addr(), ROOM, &token("alice")).await;
    let mut bob = Client::join(server.addr(), ROOM, &token("bob")).await;
    alice.expect_type("user-joined").await;
    let alice_pid = alice.pid();
    let bob_pid = bob.pid();

    // Bob reads on his own task: alice's chats, until the slow reader's user-left.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let bob_task = tokio::spawn(async move {
        let mut chats = Vec::new();
        loop {
            let msg = bob.recv_json_within(Duration::from_secs(30)).await;
            match msg["type"].as_str() {
                Some("chat-message") => chats.push(msg["payload"]["n"].as_u64().expect("n")),
                Some("user-left") => {
                    let _ = stop_tx.send(true);
                    return (bob, chats, msg);
                }
                _ => panic!("bob got an unexpected message: {msg}"),
            }
        }
    });

    let sdp = "a".repeat(32 * 1024);
    let mut sent = 0u64;
    let mut chats_sent = 0u64;
    while !*stop_rx.borrow_and_update() {
        assert!(
            sent < 2000,
            "slow reader not closed after {sent} offers of 32 KiB"
        );
        alice
            .send_msg("offer", Some(&slow_pid), json!({"n": sent, "sdp": sdp}))
            .await;
        sent += 1;
        if sent.is_multiple_of(8) {
            alice
                .send_msg("chat-message", Some(&bob_pid), json!({"n": chats_sent}))
                .await;
            chats_sent += 1;
        }
        tokio::task::yield_now().await;
    }
    let (mut bob, mut chats, left) = tokio::time::timeout(Duration::from_secs(30), bob_task)
        .await
        .expect("bob's reader finishes")
        .expect("bob's reader does not panic");
    assert_eq!(
        left["payload"]["participant_id"],
        slow_pid.as_str(),
        "{left}"
    );
    assert_eq!(left["payload"]["reason"], "slow_consumer", "{left}");

    // The slow reader now reads: an in-order prefix of the offers, then the close.
    let (messages, close) = slow.collect_until_close(Duration::from_secs(20)).await;
    assert_eq!(close, (1013, "slow_consumer".to_string()));
    let offers: Vec<&Value> = messages.iter().filter(|m| m["type"] == "offer").collect();
    for m in messages.iter().filter(|m| m["type"] != "offer") {
        assert_eq!(
            m["type"], "user-joined",
            "only presence besides offers: {m}"
        );
    }
    let ns: Vec<u64> = offers
        .iter()
        .map(|m| {
            assert_eq!(m["sender_id"], alice_pid.as_str());
            assert_eq!(m["payload"]["sdp"].as_str().map(str::len), Some(sdp.len()));
            m["payload"]["n"].as_u64().expect("n")
        })
        .collect();
    assert_eq!(
        ns,
        (0..ns.len() as u64).collect::<Vec<_>>(),
        "a gap-free prefix"
    );
    assert!(
        !ns.is_empty(),
        "the offers written before the overflow arrive"
    );
    assert!(
        (ns.len() as u64) < sent,
        "the close came before all {sent} offers"
    );

    // Alice: her pending messages are the slow reader's leave and target_not_found for offers
    // sent after it; then alice and bob still relay both ways.
    alice.send_json(&json!({"type": "ping"})).await;
    let (pending, _) = alice.recv_until_type("pong", Duration::from_secs(10)).await;
    for m in &pending {
        match m["type"].as_str() {
            Some("user-left") => assert_eq!(m["payload"]["participant_id"], slow_pid.as_str()),
            Some("error") => {
                assert_error(m, "target_not_found");
            }
            _ => panic!("alice: unexpected {m}"),
        }
    }
    // Alice's pong proves the server has handled all she sent; chats relayed after the leave
    // are still on their way to bob: read them up to his own pong.
    bob.send_json(&json!({"type": "ping"})).await;
    let (late, _) = bob.recv_until_type("pong", Duration::from_secs(10)).await;
    for m in &late {
        assert_eq!(m["type"], "chat-message", "bob: unexpected {m}");
        chats.push(m["payload"]["n"].as_u64().expect("n"));
    }
    assert_eq!(
        chats,
        (0..chats_sent).collect::<Vec<_>>(),
        "bob got every chat, in order"
    );
    assert_pair_relays(&mut alice, &mut bob).await;
}

#[tokio::test]
async fn peer_that_stops_answering_pings_leaves_with_reason_timeout() {
    let server = ServerOptions::with_secret(SECRET)
        // Resume off: a lost connection leaves at once, with the reason it was lost for.
        .env("SWITCHBOARD_RESUME_GRACE_SECS", "0")
        .env("WEBRTC_PING_INTERVAL", "1")
        .env("WEBRTC_PING_TIMEOUT", "1")
        .start();
    let mut alice = Client::join(server.addr(), ROOM, &token("alice")).await;
    // The mute client is never read again, so tungstenite never answers the server's pings.
    let mute = Client::join(server.addr(), ROOM, &token("mute")).await;
    let mute_pid = mute.pid();
    // Alice keeps reading (and so answering pings) while waiting.
    let (skipped, left) = alice
        .recv_until_type("user-left", Duration::from_secs(15))
        .await;
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0]["type"], "user-joined");
    assert_eq!(left["payload"]["participant_id"], mute_pid.as_str());
    assert_eq!(left["payload"]["reason"], "timeout");
    // Alice, who answered, is still there after several ping intervals.
    let mut carol = Client::join(server.addr(), ROOM, &token("carol")).await;
    assert_eq!(
        carol.room_state.as_ref().unwrap()["payload"]["participant_count"],
        2
    );
    alice.expect_type("user-joined").await;
    assert_pair_relays(&mut alice, &mut carol).await;
    drop(mute);
}

/// A peer that stops reading with a full socket must still leave: the keep-alive used to run only
/// in the writer, which was blocked writing to it, so with ~60 messages of 60 KB (enough to fill
/// the kernel buffers, not enough to overflow the default 1 MiB queue) it stayed forever.
#[tokio::test]
async fn peer_that_stops_reading_with_a_full_socket_still_leaves() {
    let server = ServerOptions::with_secret(SECRET)
        // Resume off: a lost connection leaves at once, with the reason it was lost for.
        .env("SWITCHBOARD_RESUME_GRACE_SECS", "0")
        .env("WEBRTC_PING_INTERVAL", "1")
        .env("WEBRTC_PING_TIMEOUT", "1")
        // The burst below fills the socket on purpose: no byte budget in the way.
        .env("WEBRTC_RATE_LIMIT_BYTES_PER_SECOND", "1000000000")
        .env("WEBRTC_RATE_LIMIT_BYTES_BURST", "1000000000")
        .start();
    let mut alice = Client::join(server.addr(), ROOM, &token("alice")).await;
    // A tiny receive buffer so the kernel does not absorb megabytes for the stuck client.
    let stuck_opts = ConnectOptions {
        recv_buffer: Some(4096),
        ..ConnectOptions::default()
    };
    let mut stuck = Client::connect_with(
        server.addr(),
        ROOM,
        &ws_path(ROOM, &token("stuck")),
        &stuck_opts,
    )
    .await;
    stuck.read_room_state().await;
    let stuck_pid = stuck.pid();
    alice.expect_type("user-joined").await;
    // Never read from `stuck` again: no pongs, and its window closes.
    let text = "a".repeat(60_000);
    for n in 0..60 {
        alice
            .send_msg(
                "chat-message",
                Some(&stuck_pid),
                json!({"n": n, "text": text}),
            )
            .await;
    }
    let (skipped, left) = alice
        .recv_until_type("user-left", Duration::from_secs(20))
        .await;
    for m in &skipped {
        assert_eq!(m["type"], "pong", "alice: unexpected {m}");
    }
    assert_eq!(left["payload"]["participant_id"], stuck_pid.as_str());
    let reason = left["payload"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason == "timeout" || reason == "slow_consumer",
        "reason {reason:?}: {left}"
    );
    // The seat is free again: a newcomer sees only alice.
    let mut carol = Client::join(server.addr(), ROOM, &token("carol")).await;
    assert_eq!(
        carol.room_state.as_ref().unwrap()["payload"]["participant_count"],
        2
    );
    alice.expect_type("user-joined").await;
    assert_pair_relays(&mut alice, &mut carol).await;
    drop(stuck);
}

/// Sends `text` as `parts` text-frame fragments (first text, then continuations).
async fn send_fragmented(client: &mut Client, text: &str, parts: usize) {
    let bytes = text.as_bytes();
    let chunk = bytes.len().div_ceil(parts);
    let pieces: Vec<&[u8]> = bytes.chunks(chunk).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let frame = Frame::message(piece.to_vec(), opcode, i + 1 == pieces.len());
        client.send(Message::Frame(frame)).await;
    }
}

#[tokio::test]
async fn fragmented_message_is_limited_by_its_total_size() {
    let server = ServerOptions::with_secret(SECRET)
        .env("WEBRTC_MAX_MESSAGE_BYTES", "4096")
        .start();
    let mut clients = room_of(&server, ROOM, &["alice", "bob", "carol"]).await;
    // Under the limit in three fragments: relayed as one message.
    let (small, text_len) = chat_of_size(3000);
    send_fragmented(&mut clients[0], &small, 3).await;
    others_receive_chat(&mut clients, text_len).await;
    // Every fragment is under the limit, the message is not.
    send_fragmented(&mut clients[0], &chat_of_size(6000).0, 3).await;
    first_closed_too_big(&mut clients).await;
}

#[tokio::test]
async fn oversized_binary_frame_closes_1009() {
    let server = ServerOptions::with_secret(SECRET)
        .env("WEBRTC_MAX_MESSAGE_BYTES", "4096")
        .start();
    let mut clients = room_of(&server, ROOM, &["alice", "bob", "carol"]).await;
    clients[0].send(Message::binary(vec![7u8; 5000])).await;
    first_closed_too_big(&mut clients).await;
}

/// One token can no longer fill a room: at the default of five, its sixth connection to one
/// room is closed 1008 `user_room_limit` (nobody in the room hears of it), other users still
/// join, the same user still joins other rooms, and once one of its connections has closed the
/// user gets that seat back.
#[tokio::test]
async fn a_sixth_connection_of_one_user_to_a_room_closes_1008_user_room_limit() {
    let server = ServerOptions::with_secret(SECRET).start();
    let addr = server.addr();
    let alice = token("alice");
    let mut tabs = join_all(addr, ROOM, &vec![alice.clone(); 5]).await;
    let mut sixth = Client::connect(addr, ROOM, &alice).await;
    sixth.expect_close(1008, "user_room_limit").await;
    for tab in &mut tabs {
        tab.assert_alive_and_idle().await;
    }
    let mut bob = Client::join(addr, ROOM, &token("bob")).await;
    assert_eq!(
        bob.room_state.as_ref().unwrap()["payload"]["participant_count"],
        6
    );
    // The limit is per room.
    Client::join(addr, "another-room", &alice).await;
    let first = tabs.remove(0);
    let first_pid = first.pid();
    first.close().await;
    let (_, left) = bob
        .recv_until_type("user-left", Duration::from_secs(10))
        .await;
    assert_eq!(left["payload"]["participant_id"], first_pid.as_str());
    let mut again = Client::join_retrying(
        addr,
        ROOM,
        &alice,
        (1008, "user_room_limit"),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        again.room_state.as_ref().unwrap()["payload"]["participant_count"],
        6
    );
    let (_, joined) = bob
        .recv_until_type("user-joined", Duration::from_secs(10))
        .await;
    assert_eq!(joined["payload"]["participant_id"], again.pid().as_str());
    assert_pair_relays(&mut again, &mut bob).await;
}

/// One token can no longer take a replica either: at the default of twenty connections on one
/// instance (five in each of four rooms, under the per-room limit), the 21st is closed 1008
/// `user_instance_limit` wherever it goes, other users are not affected, and a closed
/// connection gives its slot back.
#[tokio::test]
async fn a_21st_connection_of_one_user_to_one_instance_closes_1008_user_instance_limit() {
    let server = ServerOptions::with_secret(SECRET).start();
    let addr = server.addr();
    let alice = token("alice");
    let mut held = Vec::new();
    for r in 0..4 {
        held.push(join_all(addr, &format!("room-{r}"), &vec![alice.clone(); 5]).await);
    }
    let mut over = Client::connect(addr, "room-4", &alice).await;
    over.expect_close(1008, "user_instance_limit").await;
    let mut bob = Client::join(addr, "room-4", &token("bob")).await;
    assert_eq!(
        bob.room_state.as_ref().unwrap()["payload"]["participant_count"],
        1,
        "the refused connection never joined"
    );
    held[0].remove(0).close().await;
    let mut alice_in_4 = Client::join_retrying(
        addr,
        "room-4",
        &alice,
        (1008, "user_instance_limit"),
        Duration::from_secs(10),
    )
    .await;
    bob.expect_type("user-joined").await;
    assert_pair_relays(&mut alice_in_4, &mut bob).await;
    // Full again.
    let mut over = Client::connect(addr, "room-0", &alice).await;
    over.expect_close(1008, "user_instance_limit").await;
}

/// `--dev` prints one token (user `dev`) for scripts and local experiments: there the per-user
/// limits are off.
#[tokio::test]
async fn the_dev_token_is_not_limited_per_user() {
    let mut server = ServerOptions::new().arg("--dev").start();
    let line = server.wait_stdout_line("dev token: ", Duration::from_secs(5));
    let dev = line["dev token: ".len()..].trim().to_owned();
    let addr = server.addr();
    let tabs = join_all(addr, "demo", &vec![dev.clone(); 6]).await;
    let others = join_all(addr, "demo-2", &vec![dev.clone(); 15]).await;
    assert_eq!(
        others.last().unwrap().room_state.as_ref().unwrap()["payload"]["participant_count"],
        15
    );
    assert_eq!(tabs.len() + others.len(), 21);
}
