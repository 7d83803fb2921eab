//! Hostile clients against the real server, over raw sockets that write hand-made frames: a ping
//! flood from a client that never reads (memory stays bounded; it is closed), protocol
//! violations and a message flood (each still receives its close frame intact, 1002/1007/1008,
//! and the server ends TCP cleanly instead of resetting it), and a replica frozen with SIGSTOP
//! that must keep its live clients when it resumes. Limits are the defaults unless a test says
//! why not.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use switchboard_e2e::attacker::{memory_kib, opcode, RawClient, RawFrame, ServerEvent};
use switchboard_e2e::client::{assert_error, assert_pair_relays, join_all, ws_path, Client, Event};
use switchboard_e2e::server::{ServerOptions, ServerProcess};
use switchboard_e2e::token::Claims;

const SECRET: &str = "e2e-hostile-secret-0123456789abcdef";
const ROOM: &str = "hostile-room";

/// What a ping flood pushes at the server: the server holds the pongs of every ping it reads
/// unless it bounds them, so an unbounded server grows by about this much.
const FLOOD_BYTES: usize = 32 << 20;
/// Growth of the server's peak RSS allowed while it absorbs [`FLOOD_BYTES`]: a quarter of it.
const FLOOD_RSS_BOUND_KIB: u64 = 8 << 10;
/// The default `limits.close_timeout_ms`, plus slack for a loaded machine.
const CLOSE_WITHIN: Duration = Duration::from_secs(10);
/// The default `limits.max_message_bytes`.
const MAX_MESSAGE_BYTES: usize = 65536;

fn token(user: &str) -> String {
    Claims::user(user).hs256(SECRET)
}

/// Opens a raw connection into `room` as `user` and reads its `room-state`; returns the client
/// and its participant id. A small receive buffer keeps the kernel from absorbing megabytes for
/// an attacker that never reads.
async fn raw_join(server: &ServerProcess, room: &str, user: &str) -> (RawClient, String) {
    let mut raw = RawClient::connect(server.addr(), &ws_path(room, &token(user)), Some(4096)).await;
    let state = match raw.next(Duration::from_secs(5)).await {
        ServerEvent::Text(text) => serde_json::from_str::<Value>(&text).expect("room-state JSON"),
        other => panic!("{user}: expected room-state, got {other:?}"),
    };
    assert_eq!(state["type"], "room-state", "{state}");
    let pid = state["payload"]["self"]["participant_id"]
        .as_str()
        .expect("participant_id")
        .to_owned();
    (raw, pid)
}

/// `watcher` sees `pid` leave with `reason` (skipping whatever `pid` relayed before).
async fn sees_leave(watcher: &mut Client, pid: &str, reason: &str) {
    let (skipped, left) = watcher
        .recv_until_type("user-left", Duration::from_secs(15))
        .await;
    assert_eq!(left["payload"]["participant_id"], pid, "{left}");
    assert_eq!(left["payload"]["reason"], reason, "{left}");
    for msg in skipped {
        assert_eq!(msg["sender_id"], pid, "unexpected before user-left: {msg}");
    }
}

/// Writes `chunk` over and over until `total` bytes went out or the server stops taking them
/// for 2 s (or drops the connection); returns the bytes written. Never reads.
async fn flood(raw: &mut RawClient, chunk: &[u8], total: usize) -> usize {
    let mut sent = 0;
    while sent < total && raw.send_bytes_within(chunk, Duration::from_secs(2)).await {
        sent += chunk.len();
    }
    sent
}

/// 1,000 pings with the largest payload a control frame may carry (125 bytes).
fn ping_chunk() -> Vec<u8> {
    let ping = RawFrame::new(opcode::PING, vec![b'p'; 125]).encode();
    ping.repeat(1000)
}

/// Peak RSS growth of `server` (KiB) since `rss_before` (KiB), checked against the bound.
fn assert_memory_bounded(server: &ServerProcess, rss_before: u64, sent: usize) {
    let (rss, hwm) = memory_kib(server.pid());
    let grew = hwm.saturating_sub(rss_before);
    eprintln!(
        "ping flood: {} MiB sent; server RSS {rss_before} KiB before, {rss} KiB after, peak {hwm} KiB",
        sent >> 20
    );
    assert!(
        grew < FLOOD_RSS_BOUND_KIB,
        "the server's peak RSS grew by {grew} KiB while absorbing {} MiB of pings (bound {} KiB)",
        sent >> 20,
        FLOOD_RSS_BOUND_KIB
    );
}

/// Default limits: pings spend the rate budget like messages, so a ping flood is closed 1008
/// `rate_limited` long before its pongs could add up, and the server keeps reading (and
/// discarding) the rest of the flood after its close.
#[tokio::test]
async fn ping_flood_from_a_client_that_never_reads_is_closed_1008_and_memory_stays_bounded() {
    let server = ServerOptions::with_secret(SECRET).start();
    let mut alice = Client::join(server.addr(), ROOM, &token("alice")).await;
    let (mut mallory, pid) = raw_join(&server, ROOM, "mallory").await;
    alice.expect_type("user-joined").await;
    let (rss_before, _) = memory_kib(server.pid());

    let sent = flood(&mut mallory, &ping_chunk(), FLOOD_BYTES).await;
    sees_leave(&mut alice, &pid, "rate_limited").await;
    assert_memory_bounded(&server, rss_before, sent);
    assert!(
        sent >= FLOOD_BYTES,
        "the server stopped reading the flood instead of draining it after its close"
    );
    // Now mallory reads: pongs for the pings within the budget, then the close, intact.
    let (messages, close) = mallory.collect_until_close(CLOSE_WITHIN).await;
    assert_eq!(close, Some((1008, "rate_limited".to_string())));
    assert!(
        messages.is_empty(),
        "pings over the limit get no error reply: {messages:?}"
    );
    mallory.reply_close(1008).await.expect("reply close");
    mallory.expect_eof(CLOSE_WITHIN, "ping flood").await;
    let mut bob = Client::join(server.addr(), ROOM, &token("bob")).await;
    alice.expect_type("user-joined").await;
    assert_pair_relays(&mut alice, &mut bob).await;
}

/// With the rate limit lifted (this test floods on purpose), the pongs of a client that never
/// reads are held only up to `limits.write_buffer_bytes`; the next frame the server has to write
/// to it closes it 1013 `slow_consumer`.
#[tokio::test]
async fn pongs_for_a_client_that_never_reads_stay_within_the_write_buffer() {
    let server = ServerOptions::with_secret(SECRET)
        // Resume off: the slow consumer leaves at once.
        .env("SWITCHBOARD_RESUME_GRACE_SECS", "0")
        .env("WEBRTC_RATE_LIMIT_PER_SECOND", "1000000")
        .env("WEBRTC_RATE_LIMIT_BURST", "1000000")
        .start();
    let mut alice = Client::join(server.addr(), ROOM, &token("alice")).await;
    let (mut mallory, pid) = raw_join(&server, ROOM, "mallory").await;
    alice.expect_type("user-joined").await;
    let (rss_before, _) = memory_kib(server.pid());

    let sent = flood(&mut mallory, &ping_chunk(), FLOOD_BYTES).await;
    assert!(sent >= FLOOD_BYTES, "the server stopped reading the flood");
    assert_memory_bounded(&server, rss_before, sent);
    // The room goes on; the broadcast meets mallory's full write buffer.
    alice
        .send_msg("chat-message", None, json!({"text": "anyone reading?"}))
        .await;
    sees_leave(&mut alice, &pid, "slow_consumer").await;
    // The server ended the connection: what mallory finally reads ends in a close or the end
    // of the stream, never in silence.
    let end = loop {
        match mallory.next(CLOSE_WITHIN).await {
            ServerEvent::Pong(_) | ServerEvent::Ping(_) => {}
            other => break other,
        }
    };
    assert!(
        matches!(
            end,
            ServerEvent::Close(_) | ServerEvent::Eof | ServerEvent::Reset(_)
        ),
        "mallory's connection still open: {end:?}"
    );
}

/// Frames RFC 6455 forbids get close 1002 (1007 for text that is not UTF-8, 1009 for a frame
/// over the size limit), received intact by the client, and nothing sent behind the bad frame is
/// acted on. The handshake then ends cleanly: the server reads the client's close reply and ends
/// TCP with a FIN, no reset. Its close timeout is far beyond the test's wait, so an end that only
/// came from the timeout would fail it.
#[tokio::test]
async fn protocol_violations_get_their_close_code_intact_and_a_clean_end() {
    let server = ServerOptions::with_secret(SECRET)
        .env("WEBRTC_CLOSE_TIMEOUT_MS", "60000")
        .start();
    let mut alice = Client::join(server.addr(), ROOM, &token("alice")).await;
    let unmasked = RawFrame {
        masked: false,
        ..RawFrame::text(r#"{"type":"ping"}"#)
    };
    let rsv1 = RawFrame {
        rsv: 0b100,
        ..RawFrame::text(r#"{"type":"ping"}"#)
    };
    let fragmented_ping = RawFrame {
        fin: false,
        ..RawFrame::new(opcode::PING, b"x".to_vec())
    };
    let first_half = RawFrame {
        fin: false,
        ..RawFrame::text(r#"{"type":"#)
    }
    .encode();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "text that is not UTF-8",
            RawFrame::new(opcode::TEXT, vec![b'"', 0xff, 0xfe, b'"']).encode(),
            1007,
            "invalid_utf8",
        ),
        (
            "reserved data opcode 0x3",
            RawFrame::new(0x3, b"{}".to_vec()).encode(),
            1002,
            "protocol_error",
        ),
        (
            "reserved control opcode 0xB",
            RawFrame::new(0xB, Vec::new()).encode(),
            1002,
            "protocol_error",
        ),
        ("unmasked frame", unmasked.encode(), 1002, "protocol_error"),
        (
            "RSV1 without an extension",
            rsv1.encode(),
            1002,
            "protocol_error",
        ),
        (
            "continuation without a start",
            RawFrame::new(opcode::CONTINUATION, b"{}".to_vec()).encode(),
            1002,
            "protocol_error",
        ),
        (
            "a new text frame inside a fragmented one",
            [first_half, RawFrame::text("{}").encode()].concat(),
            1002,
            "protocol_error",
        ),
        (
            "fragmented ping",
            fragmented_ping.encode(),
            1002,
            "protocol_error",
        ),
        (
            "ping payload over 125 bytes",
            RawFrame::new(opcode::PING, vec![b'p'; 126]).encode(),
            1002,
            "protocol_error",
        ),
        (
            // Refused at its header: the payload behind it is still unread.
            "a frame one byte over the default limit",
            RawFrame::new(opcode::TEXT, vec![b' '; MAX_MESSAGE_BYTES + 1]).encode(),
            1009,
            "message_too_big",
        ),
    ];
    for (what, bytes, code, reason) in cases {
        let (mut raw, pid) = raw_join(&server, ROOM, "mallory").await;
        alice.expect_type("user-joined").await;
        raw.send_bytes(&bytes).await.expect("write the bad frame");
        // A valid message right behind it must not be processed.
        raw.send(&RawFrame::text(
            r#"{"type":"chat-message","payload":"after"}"#,
        ))
        .await
        .expect("write a message after it");
        let (messages, close) = raw.collect_until_close(CLOSE_WITHIN).await;
        assert_eq!(close, Some((code, reason.to_string())), "{what}");
        assert!(messages.is_empty(), "{what}: {messages:?}");
        raw.reply_close(code).await.expect("reply close");
        raw.expect_eof(CLOSE_WITHIN, what).await;
        let (skipped, left) = alice
            .recv_until_type("user-left", Duration::from_secs(5))
            .await;
        assert!(skipped.is_empty(), "{what}: relayed {skipped:?}");
        assert_eq!(
            (
                left["payload"]["participant_id"].as_str(),
                left["payload"]["reason"].as_str()
            ),
            (Some(pid.as_str()), Some("closed")),
            "{what}"
        );
    }
}

/// A client that writes thousands of messages in one go and only then reads still gets every
/// queued `error rate_limited` and then close 1008 `rate_limited`: the server keeps reading the
/// rest of the flood after its close instead of dropping the socket with unread data (which
/// resets the connection and throws away what the client had not read yet).
#[tokio::test]
async fn a_frame_flood_gets_its_rate_limited_errors_and_the_1008_close_intact() {
    const BURST: usize = 200; // the default limits.rate_limit_burst
    let server = ServerOptions::with_secret(SECRET).start();
    let mut clients = join_all(server.addr(), ROOM, &[token("alice")]).await;
    for frames in [2_000usize, 20_000] {
        let (mut raw, pid) = raw_join(&server, ROOM, "mallory").await;
        clients[0].expect_type("user-joined").await;
        let flood: Vec<u8> = (0..frames)
            .flat_map(|n| {
                RawFrame::text(&json!({"type": "chat-message", "payload": {"n": n}}).to_string())
                    .encode()
            })
            .collect();
        assert!(
            raw.send_bytes_within(&flood, CLOSE_WITHIN).await,
            "{frames} frames: the server stopped reading"
        );
        let (messages, close) = raw.collect_until_close(CLOSE_WITHIN).await;
        assert_eq!(
            close,
            Some((1008, "rate_limited".to_string())),
            "{frames} frames"
        );
        assert!(
            (1..=BURST).contains(&messages.len()),
            "{frames} frames: {} errors before the close",
            messages.len()
        );
        for msg in &messages {
            assert_error(msg, "rate_limited");
        }
        raw.reply_close(1008).await.expect("reply close");
        raw.expect_eof(CLOSE_WITHIN, &format!("{frames} frames"))
            .await;
        sees_leave(&mut clients[0], &pid, "rate_limited").await;
    }
}

/// SIGSTOP for several ping timeouts, then SIGCONT: the server has not run, so its clients had
/// nothing to answer; it must ping them again and keep them, not close them 1001 `timeout` on
/// the first tick after it resumes. A short ping interval keeps this to seconds.
#[tokio::test]
async fn a_replica_resumed_after_sigstop_keeps_its_live_clients() {
    let server = ServerOptions::with_secret(SECRET)
        .env("WEBRTC_PING_INTERVAL", "1")
        .env("WEBRTC_PING_TIMEOUT", "1")
        .start();
    let tokens = [token("alice"), token("bob")];
    let mut clients = join_all(server.addr(), ROOM, &tokens).await;
    server.signal(Signal::SIGSTOP);
    // Past interval + timeout (2 s) more than twice over.
    tokio::time::sleep(Duration::from_secs(5)).await;
    server.signal(Signal::SIGCONT);
    // Both keep reading (and so answering pings) for several intervals: nothing else arrives.
    let (a, b) = clients.split_at_mut(1);
    let (ea, eb) = tokio::join!(
        a[0].next_event(Duration::from_secs(4)),
        b[0].next_event(Duration::from_secs(4))
    );
    assert_eq!(ea, Event::Timeout, "alice after SIGCONT");
    assert_eq!(eb, Event::Timeout, "bob after SIGCONT");
    assert_pair_relays(&mut a[0], &mut b[0]).await;
}
