//! The participant state machine driven through channels instead of sockets.

use super::*;
use crate::auth::RoomAccess;
use crate::bus::InProcessBus;
use futures_channel::mpsc;
use serde_json::{json, Value};

/// The HS256 secret of the world's [`Authenticator`].
const SECRET: &str = "session-tests-secret-0123456789abcdef";

struct World {
    hub: Arc<Hub>,
    bus: Arc<dyn Bus>,
    auth: Arc<Authenticator>,
    metrics: Arc<Metrics>,
    shutdown: Arc<Shutdown>,
    limits: Limits,
    max_participants: usize,
    max_user_connections: Option<usize>,
    resume: Resume,
}

fn limits() -> Limits {
    Limits {
        max_message_bytes: 1024,
        rate_limit_per_second: 1000,
        rate_limit_burst: 1000,
        rate_limit_bytes_per_second: 1 << 30,
        rate_limit_bytes_burst: 1 << 30,
        max_metadata_bytes: 1024,
        max_json_depth: 32,
        max_session: None,
        max_user_connections_per_instance: None,
        outbound_queue_messages: 64,
        outbound_queue_bytes: 1 << 20,
        ping_interval: Duration::from_secs(20),
        ping_timeout: Duration::from_secs(20),
        write_buffer_bytes: 1 << 20,
        close_timeout: Duration::from_secs(5),
    }
}

/// A channel end as the session's sink: any failure is a closed connection.
fn sink<S: Sink<Message> + Unpin>(s: S) -> impl Sink<Message, Error = WriteError> + Unpin {
    ClassifyErrors::new(s, |_| WriteError::Closed)
}

impl World {
    fn new() -> Self {
        let metrics = Arc::new(Metrics::default());
        World {
            hub: Arc::new(Hub::new(metrics.clone())),
            bus: Arc::new(InProcessBus::new()),
            auth: Arc::new(
                Authenticator::new(&crate::config::JwtConfig {
                    algorithm: crate::config::JwtAlgorithm::Hs256,
                    key: crate::config::JwtKey::Secret(crate::config::Secret::new(SECRET)),
                    issuer: None,
                    audience: None,
                })
                .unwrap(),
            ),
            metrics,
            shutdown: Arc::new(Shutdown::new(Duration::from_millis(100))),
            limits: limits(),
            max_participants: 50,
            max_user_connections: None,
            // Off unless a test turns it on: a lost connection leaves at once.
            resume: Resume::new(
                b"session-tests-resume-key".to_vec(),
                Duration::ZERO,
                crate::inbox::InboxLimits {
                    max_messages: 64,
                    max_bytes: 1 << 20,
                },
            ),
        }
    }

    fn ctx(&self, user: &str) -> SessionContext {
        SessionContext {
            room: RoomId::parse("room").unwrap(),
            identity: Identity {
                user_id: user.into(),
                username: user.into(),
                expires_at: u64::MAX,
                rooms: RoomAccess::All,
                room_admin: false,
                metadata: None,
            },
            hub: self.hub.clone(),
            bus: self.bus.clone(),
            auth: self.auth.clone(),
            metrics: self.metrics.clone(),
            limits: Arc::new(self.limits.clone()),
            max_participants: self.max_participants,
            max_user_connections: self.max_user_connections,
            instance_id: "test".into(),
            shutdown: self.shutdown.clone(),
            resume: Arc::new(self.resume.clone()),
            resume_request: None,
        }
    }

    /// Starts a session; returns the client's ends of both channels.
    fn join(&self, user: &str) -> Client {
        self.join_ctx(self.ctx(user))
    }

    /// Starts a session whose token expires at `exp` (Unix seconds).
    fn join_expiring(&self, user: &str, exp: u64) -> Client {
        let mut ctx = self.ctx(user);
        ctx.identity.expires_at = exp;
        self.join_ctx(ctx)
    }

    /// Alice and Bob in the room, Alice having seen Bob join: where two-party tests start.
    async fn alice_and_bob(&self) -> (Client, Client) {
        let mut a = self.join("alice");
        a.joined().await;
        let mut b = self.join("bob");
        b.joined().await;
        a.expect("user-joined").await;
        (a, b)
    }

    fn join_ctx(&self, ctx: SessionContext) -> Client {
        let (to_client, from_server) = mpsc::unbounded::<Message>();
        let (to_server, from_client) = mpsc::unbounded::<Result<Message, ReadError>>();
        let guard = self.shutdown.guard().unwrap();
        let task = tokio::spawn(run(ctx, guard, sink(to_client), from_client));
        Client {
            rx: from_server,
            tx: to_server,
            task,
        }
    }
}

struct Client {
    rx: mpsc::UnboundedReceiver<Message>,
    tx: mpsc::UnboundedSender<Result<Message, ReadError>>,
    task: tokio::task::JoinHandle<Option<End>>,
}

impl Client {
    async fn next(&mut self) -> Message {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(60), self.rx.next())
                .await
                .expect("no message within 60 s")
                .expect("session ended without a close frame");
            if !matches!(m, Message::Ping(_)) {
                return m;
            }
        }
    }

    async fn json(&mut self) -> Value {
        match self.next().await {
            Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    async fn expect(&mut self, ty: &str) -> Value {
        let v = self.json().await;
        assert_eq!(v["type"], ty, "{v}");
        v
    }

    /// The next message is the close frame; answers it, as a WebSocket client does.
    async fn expect_close(&mut self, code: u16, reason: &str) {
        match self.next().await {
            Message::Close(Some(f)) => {
                assert_eq!((u16::from(f.code), f.reason.as_str()), (code, reason))
            }
            other => panic!("expected close {code} {reason}, got {other:?}"),
        }
        let _ = self.tx.unbounded_send(Ok(Message::Close(None)));
    }

    fn send(&self, v: Value) {
        self.send_text(&v.to_string());
    }

    fn send_text(&self, t: &str) {
        self.tx
            .unbounded_send(Ok(Message::Text(t.to_owned().into())))
            .unwrap();
    }

    /// Reads until the server's next WebSocket ping and answers it `rtt`
    /// later, as a client's WebSocket library does while the app reads.
    async fn answer_ping(&mut self, rtt: Duration) {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(60), self.rx.next())
                .await
                .expect("no ping within 60 s")
                .expect("session ended");
            if let Message::Ping(data) = m {
                tokio::time::sleep(rtt).await;
                self.tx.unbounded_send(Ok(Message::Pong(data))).unwrap();
                return;
            }
        }
    }

    async fn joined(&mut self) -> String {
        let v = self.expect("room-state").await;
        v["payload"]["self"]["participant_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

#[tokio::test]
async fn relay_presence_and_leave() {
    let w = World::new();
    let mut a = w.join("alice");
    let pa = a.joined().await;
    let mut b = w.join("bob");
    let pb = b.joined().await;
    let j = a.expect("user-joined").await;
    assert_eq!(j["payload"]["participant_id"], pb.as_str());
    assert_eq!(j["payload"]["user_id"], "bob");

    a.send(json!({"type":"offer","to":pb,"payload":{"sdp":"x"},"sender_id":"spoofed"}));
    let o = b.expect("offer").await;
    assert_eq!(o["sender_id"], pa.as_str());
    assert_eq!(o["to"], pb.as_str());
    assert_eq!(o["room_id"], "room");
    assert_eq!(o["payload"], json!({"sdp":"x"}));

    b.send(json!({"type":"chat-message","payload":"hi"}));
    let c = a.expect("chat-message").await;
    assert_eq!(
        (c["sender_id"].as_str(), &c["to"]),
        (Some(pb.as_str()), &Value::Null)
    );

    a.send(json!({"type":"answer","to":"nobody","payload":{}}));
    assert_eq!(
        a.expect("error").await["payload"]["code"],
        "target_not_found"
    );

    b.tx.unbounded_send(Ok(Message::Close(None))).unwrap();
    assert_eq!(b.task.await.unwrap(), Some(End::ClientClosed));
    let left = a.expect("user-left").await;
    assert_eq!(
        (
            left["payload"]["participant_id"].as_str(),
            left["payload"]["reason"].as_str()
        ),
        (Some(pb.as_str()), Some("closed"))
    );
    assert_eq!(
        w.bus
            .participants(&RoomId::parse("room").unwrap())
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn bad_input_gets_errors_and_the_connection_stays() {
    let w = World::new();
    let mut a = w.join("alice");
    let me = a.joined().await;
    a.send_text("not json");
    assert_eq!(
        a.expect("error").await["payload"]["code"],
        "invalid_message"
    );
    a.send(json!({"type":"teleport","payload":{}}));
    assert_eq!(a.expect("error").await["payload"]["code"], "unknown_type");
    a.send(json!({"type":"offer","payload":{}}));
    assert_eq!(
        a.expect("error").await["payload"]["code"],
        "invalid_message"
    );
    a.tx.unbounded_send(Ok(Message::Binary(bytes::Bytes::from_static(b"\x00\x01"))))
        .unwrap();
    assert_eq!(
        a.expect("error").await["payload"]["code"],
        "invalid_message"
    );
    // An offer to yourself is not echoed back.
    a.send(json!({"type":"offer","to":me,"payload":{}}));
    assert_eq!(
        a.expect("error").await["payload"]["code"],
        "invalid_message"
    );
    a.send(json!({"type":"ping","payload":{"t":1}}));
    assert_eq!(a.expect("pong").await["payload"], json!({"t":1}));
}

#[tokio::test]
async fn too_big_closes_1009() {
    let w = World::new();
    let (mut a, mut b) = w.alice_and_bob().await;
    b.send_text(&format!(
        "{{\"type\":\"chat-message\",\"payload\":\"{}\"}}",
        "x".repeat(2000)
    ));
    b.expect_close(1009, "message_too_big").await;
    assert_eq!(a.expect("user-left").await["payload"]["reason"], "closed");
    // The transport's own limit maps the same way.
    let mut c = w.join("carol");
    c.joined().await;
    c.tx.unbounded_send(Err(ReadError::TooBig)).unwrap();
    c.expect_close(1009, "message_too_big").await;
}

#[tokio::test]
async fn protocol_violations_close_1002_and_bad_utf8_1007() {
    let w = World::new();
    let mut a = w.join("alice");
    a.joined().await;
    for (error, code, reason) in [
        (ReadError::Protocol, 1002, "protocol_error"),
        (ReadError::InvalidUtf8, 1007, "invalid_utf8"),
    ] {
        let mut b = w.join("bob");
        b.joined().await;
        a.expect("user-joined").await;
        b.tx.unbounded_send(Err(error)).unwrap();
        b.expect_close(code, reason).await;
        assert_eq!(a.expect("user-left").await["payload"]["reason"], "closed");
    }
}

#[tokio::test(start_paused = true)]
async fn a_server_close_reads_until_the_clients_close() {
    let mut w = World::new();
    w.limits.rate_limit_per_second = 1;
    w.limits.rate_limit_burst = 1;
    let (mut a, mut b) = w.alice_and_bob().await;
    // One message in the bucket, the first rejection is abuse.
    b.send(json!({"type":"chat-message","payload":1}));
    b.send(json!({"type":"chat-message","payload":2}));
    assert_eq!(a.expect("chat-message").await["payload"], 1);
    match b.next().await {
        Message::Close(Some(f)) => assert_eq!(
            (u16::from(f.code), f.reason.as_str()),
            (1008, "rate_limited")
        ),
        other => panic!("{other:?}"),
    }
    let closed = tokio::time::Instant::now();
    // What bob still sends is read and dropped, never relayed, until his close.
    b.send(json!({"type":"chat-message","payload":"after the close"}));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !b.task.is_finished(),
        "the server stopped reading before bob's close"
    );
    assert!(
        b.tx.is_empty(),
        "what bob sent after the close was not read"
    );
    b.tx.unbounded_send(Ok(Message::Close(None))).unwrap();
    assert_eq!(b.task.await.unwrap(), Some(End::RateLimited));
    assert_eq!(
        closed.elapsed(),
        Duration::from_secs(1),
        "ends at bob's close"
    );
    assert_eq!(
        a.expect("user-left").await["payload"]["reason"],
        "rate_limited"
    );
    a.send(json!({"type":"ping"}));
    a.expect("pong").await;

    // A client that never answers is let go after `limits.close_timeout`.
    let mut c = w.join("carol");
    c.joined().await;
    a.expect("user-joined").await;
    c.send(json!({"type":"chat-message","payload":1}));
    c.send(json!({"type":"chat-message","payload":2}));
    a.expect("chat-message").await;
    assert!(matches!(c.next().await, Message::Close(Some(_))));
    let closed = tokio::time::Instant::now();
    assert_eq!(c.task.await.unwrap(), Some(End::RateLimited));
    assert_eq!(closed.elapsed(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn after_a_read_error_the_session_ends_at_its_close_frame() {
    let w = World::new();
    // The transport ends its stream at its first error: the session writes
    // its close and returns at once, reading nothing more; the HTTP layer
    // finishes the handshake on the raw socket.
    for (error, code, end, aligned) in [
        (ReadError::TooBig, 1009, End::TooBig, false),
        (ReadError::Protocol, 1002, End::Protocol, true),
        (ReadError::InvalidUtf8, 1007, End::InvalidUtf8, true),
    ] {
        let mut a = w.join("alice");
        a.joined().await;
        a.tx.unbounded_send(Err(error)).unwrap();
        let next = a.next().await;
        assert!(
            matches!(next, Message::Close(Some(ref f)) if u16::from(f.code) == code),
            "{next:?}"
        );
        let closed = tokio::time::Instant::now();
        assert_eq!(a.task.await.unwrap(), Some(end));
        assert_eq!(closed.elapsed(), Duration::ZERO, "{error:?}: waited");
        assert_eq!(end.after_close(), AfterClose::Raw { aligned }, "{error:?}");
    }
    assert_eq!(End::RateLimited.after_close(), AfterClose::Drain);
}

#[tokio::test]
async fn a_full_write_buffer_closes_as_a_slow_consumer() {
    let w = World::new();
    let mut a = w.join("alice");
    a.joined().await;
    // Bob's transport reports its write buffer full (pongs he never read) once room-state is out.
    let (to_client, mut from_server) = mpsc::unbounded::<Message>();
    let (_to_server, from_client) = mpsc::unbounded::<Result<Message, ReadError>>();
    let full = ClassifyErrors::new(to_client, |_| WriteError::BufferFull);
    let bob = tokio::spawn(run(
        w.ctx("bob"),
        w.shutdown.guard().unwrap(),
        full,
        from_client,
    ));
    assert!(matches!(from_server.next().await, Some(Message::Text(_))));
    drop(from_server);
    a.expect("user-joined").await;
    a.send(json!({"type":"chat-message","payload":"to a peer that does not read"}));
    assert_eq!(bob.await.unwrap(), Some(End::SlowConsumer));
    assert_eq!(
        a.expect("user-left").await["payload"]["reason"],
        "slow_consumer"
    );
}

#[tokio::test]
async fn ping_frames_spend_the_rate_budget() {
    let mut w = World::new();
    w.limits.rate_limit_per_second = 1;
    w.limits.rate_limit_burst = 3;
    let mut a = w.join("alice");
    a.joined().await;
    for _ in 0..10 {
        a.tx.unbounded_send(Ok(Message::Ping(bytes::Bytes::from_static(b"x"))))
            .unwrap();
    }
    // Over the budget a ping earns no error reply, only the close.
    a.expect_close(1008, "rate_limited").await;
    assert_eq!(a.task.await.unwrap(), Some(End::RateLimited));
}

// SIGSTOP for 60 s, then SIGCONT: every timer is overdue at once, and the
// peer has not been pinged since. It must get a fresh ping and a ping timeout
// to answer, not a 1001 `timeout` on the first tick.
#[tokio::test(start_paused = true)]
async fn a_frozen_server_does_not_blame_its_clients() {
    let w = World::new();
    let mut a = w.join("alice");
    a.joined().await;
    tokio::time::advance(Duration::from_secs(60)).await;
    a.answer_ping(Duration::from_millis(50)).await;
    // Past the grace (ping timeout, 20 s) alice is still there.
    tokio::time::sleep(Duration::from_secs(30)).await;
    a.send(json!({"type":"ping","payload":1}));
    assert_eq!(a.expect("pong").await["payload"], 1);
    // And one that does not answer after the freeze still times out.
    tokio::time::advance(Duration::from_secs(60)).await;
    a.expect_close(1001, "timeout").await;
}

#[test]
fn a_late_tick_gives_the_peer_a_fresh_ping_timeout() {
    let l = limits();
    let mut watch = LivenessWatch::default();
    let on_time = Duration::from_millis(5);
    assert!(watch.is_dead(&l, 0, 41_000, on_time));
    // Resumed after a 60 s stop: no verdict on the late tick, nor for the
    // ping timeout after it...
    assert!(!watch.is_dead(&l, 0, 80_000, Duration::from_secs(60)));
    assert!(!watch.is_dead(&l, 0, 99_999, on_time));
    // ...then the usual rule, from what was heard meanwhile.
    assert!(!watch.is_dead(&l, 80_100, 100_000, on_time));
    assert!(watch.is_dead(&l, 0, 100_000, on_time));
    let mut watch = LivenessWatch::default();
    assert!(
        watch.is_dead(&l, 0, 45_000, STALL_SLACK),
        "a tick late by the slack is still on time"
    );
}

#[tokio::test]
async fn room_full_closes_1013() {
    let mut w = World::new();
    w.max_participants = 1;
    let mut a = w.join("alice");
    a.joined().await;
    let mut b = w.join("bob");
    b.expect_close(1013, "room_full").await;
    assert_eq!(b.task.await.unwrap(), None);
    a.send(json!({"type":"ping"}));
    a.expect("pong").await;
}

#[tokio::test]
async fn a_user_over_its_room_limit_closes_1008_and_others_still_join() {
    let mut w = World::new();
    w.max_user_connections = Some(2);
    let mut tabs = Vec::new();
    for _ in 0..2 {
        let mut tab = w.join("alice");
        tab.joined().await;
        tabs.push(tab);
    }
    let mut third = w.join("alice");
    third.expect_close(1008, "user_room_limit").await;
    assert_eq!(third.task.await.unwrap(), None);
    let mut bob = w.join("bob");
    bob.joined().await;
    // A closed tab gives its seat back once it has left.
    let Client { tx, task, .. } = tabs.remove(0);
    drop(tx);
    assert_eq!(task.await.unwrap(), Some(End::ClientClosed));
    let mut again = w.join("alice");
    again.joined().await;
}

#[tokio::test]
async fn flooding_is_rejected_then_closed() {
    let mut w = World::new();
    w.limits.rate_limit_per_second = 1;
    w.limits.rate_limit_burst = 3;
    let (mut a, mut b) = w.alice_and_bob().await;
    for _ in 0..10 {
        b.send(json!({"type":"chat-message","payload":1}));
    }
    let mut relayed = 0;
    loop {
        match a.json().await {
            v if v["type"] == "chat-message" => relayed += 1,
            v if v["type"] == "user-left" => {
                assert_eq!(v["payload"]["reason"], "rate_limited");
                break;
            }
            v => panic!("{v}"),
        }
    }
    assert!((1..=3).contains(&relayed), "{relayed}");
    let mut errors = 0;
    loop {
        match b.next().await {
            Message::Text(t) if t.as_str().contains("rate_limited") => errors += 1,
            Message::Text(_) => {}
            Message::Close(Some(f)) => {
                assert_eq!(
                    (u16::from(f.code), f.reason.as_str()),
                    (1008, "rate_limited")
                );
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(errors >= 1, "excess messages get error rate_limited first");
}

#[tokio::test(start_paused = true)]
async fn silent_peer_times_out() {
    let w = World::new();
    let (mut a, mut b) = w.alice_and_bob().await;
    // Alice answers pings (any inbound frame counts); Bob never does.
    let keepalive = {
        let tx = a.tx.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                if tx
                    .unbounded_send(Ok(Message::Pong(bytes::Bytes::new())))
                    .is_err()
                {
                    break;
                }
            }
        })
    };
    b.expect_close(1001, "timeout").await;
    assert_eq!(a.expect("user-left").await["payload"]["reason"], "timeout");
    keepalive.abort();
}

// Paused time: bob's close frame can never be flushed, and the bounded
// flush wait should not cost the suite real seconds.
#[tokio::test(start_paused = true)]
async fn slow_reader_is_closed_and_the_room_keeps_going() {
    let w = World::new();
    let mut a = w.join("alice");
    let pa = a.joined().await;
    // Bob's socket accepts nothing: a bounded channel nobody reads, and a small queue.
    let (to_client, _unread) = mpsc::channel::<Message>(0);
    let (to_server, from_client) = mpsc::unbounded::<Result<Message, ReadError>>();
    let mut bob_ctx = w.ctx("bob");
    Arc::make_mut(&mut bob_ctx.limits).outbound_queue_messages = 4;
    let bob = tokio::spawn(run(
        bob_ctx,
        w.shutdown.guard().unwrap(),
        sink(to_client),
        from_client,
    ));
    let pb = a.expect("user-joined").await["payload"]["participant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut c = w.join("carol");
    let pc = c.joined().await;
    a.expect("user-joined").await;
    for i in 0..50 {
        a.send(json!({"type":"ice-candidate","to":pb,"payload":{"i":i}}));
        a.send(json!({"type":"ice-candidate","to":pc,"payload":{"i":i}}));
    }
    // Candidates for Bob relayed after his queue overflowed, before he has
    // left, are refused to Alice as `target_not_found`, never lost silently;
    // how many depends on when his session runs.
    let left = loop {
        let v = a.json().await;
        if v["type"] == "error" {
            assert_eq!(v["payload"]["code"], "target_not_found", "{v}");
            continue;
        }
        break v;
    };
    assert_eq!(
        (
            left["type"].as_str(),
            left["payload"]["participant_id"].as_str(),
            left["payload"]["reason"].as_str()
        ),
        (Some("user-left"), Some(pb.as_str()), Some("slow_consumer"))
    );
    // Carol got every candidate, in order, and the room goes on.
    let mut got = Vec::new();
    while got.len() < 50 {
        let v = c.json().await;
        if v["type"] == "ice-candidate" {
            assert_eq!(v["sender_id"], pa.as_str());
            got.push(v["payload"]["i"].as_u64().unwrap());
        }
    }
    assert_eq!(got, (0..50).collect::<Vec<_>>());
    a.send(json!({"type":"chat-message","payload":"still here"}));
    let m = loop {
        let v = c.json().await;
        if v["type"] == "chat-message" {
            break v;
        }
    };
    assert_eq!(m["sender_id"], pa.as_str());
    drop(to_server);
    let end = tokio::time::timeout(Duration::from_secs(30), bob)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end, Some(End::SlowConsumer));
}

#[tokio::test]
async fn drain_sends_reconnect_then_closes_1001() {
    let w = World::new();
    let mut a = w.join("alice");
    a.joined().await;
    let shutdown = w.shutdown.clone();
    let hub = w.hub.clone();
    let drain = tokio::spawn(async move { shutdown.drain(&hub, Duration::from_millis(10)).await });
    let r = a.expect("reconnect").await;
    assert!(r["payload"]["after_ms"].as_u64().unwrap() < 100);
    a.expect_close(1001, "server draining").await;
    tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .unwrap()
        .unwrap();
    assert!(w.shutdown.guard().is_none());
    assert!(
        w.bus
            .participants(&RoomId::parse("room").unwrap())
            .await
            .unwrap()
            .is_empty(),
        "presence removed"
    );
}

#[test]
fn docs_list_every_close_code_and_error_code() {
    let doc = include_str!("../../docs/protocol.md");
    let ends = [
        End::TooBig,
        End::Protocol,
        End::InvalidUtf8,
        End::RateLimited,
        End::SlowConsumer,
        End::Timeout,
        End::Draining,
        End::TokenExpired,
        End::SessionLimit,
        End::Removed,
        End::RoomClosed,
        End::Superseded,
    ];
    for end in ends {
        let (code, reason) = end.close_frame().unwrap();
        assert!(
            doc.contains(&format!("| {code} | `{reason}` |")),
            "close {code} {reason} missing from docs/protocol.md"
        );
    }
    for e in [
        crate::auth::AuthError::MissingToken,
        crate::auth::AuthError::InvalidToken,
        crate::auth::AuthError::TokenExpired,
        crate::auth::AuthError::InvalidAudience,
        crate::auth::AuthError::RoomForbidden,
        crate::auth::AuthError::MetadataTooLarge,
    ] {
        assert!(
            doc.contains(&format!("| 1008 | `{}` |", e.reason())),
            "{} missing",
            e.reason()
        );
    }
    for refusal in [
        crate::resume::Refusal::Expired,
        crate::resume::Refusal::Invalid,
        crate::resume::Refusal::Overflow,
    ] {
        assert!(
            doc.contains(&format!("| 1008 | `{}` |", refusal.reason())),
            "{} missing",
            refusal.reason()
        );
    }
    for reason in ["room_full", "bus_unavailable"] {
        assert!(
            doc.contains(&format!("| 1013 | `{reason}` |")),
            "{reason} missing"
        );
    }
    for code in crate::protocol::ErrorCode::ALL {
        assert!(
            doc.contains(&format!("| `{}` |", code.as_str())),
            "error code {} missing",
            code.as_str()
        );
    }
}

/// A session whose socket never drains; the client's channel ends are held so it never
/// sees a closed socket either.
struct StuckClient {
    task: tokio::task::JoinHandle<Option<End>>,
    _unread: mpsc::Receiver<Message>,
    to_server: mpsc::UnboundedSender<Result<Message, ReadError>>,
}

/// Alice joins normally; bob's socket takes one frame (room-state) and then blocks forever.
/// Returns once alice has seen bob join.
async fn alice_and_stuck_bob() -> (World, Client, StuckClient) {
    let w = World::new();
    let mut a = w.join("alice");
    a.joined().await;
    let (to_client, unread) = mpsc::channel::<Message>(0);
    let (to_server, from_client) = mpsc::unbounded::<Result<Message, ReadError>>();
    let task = tokio::spawn(run(
        w.ctx("bob"),
        w.shutdown.guard().unwrap(),
        sink(to_client),
        from_client,
    ));
    a.expect("user-joined").await;
    let bob = StuckClient {
        task,
        _unread: unread,
        to_server,
    };
    (w, a, bob)
}

#[tokio::test(start_paused = true)]
async fn drain_removes_a_participant_whose_socket_is_stuck() {
    let (w, mut a, bob) = alice_and_stuck_bob().await;
    // Fill bob's socket so his writer is blocked when the drain starts.
    a.send(json!({"type":"chat-message","payload":1}));
    a.send(json!({"type":"chat-message","payload":2}));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let shutdown = w.shutdown.clone();
    let hub = w.hub.clone();
    let drain = tokio::spawn(async move { shutdown.drain(&hub, Duration::ZERO).await });
    assert_eq!(bob.task.await.unwrap(), Some(End::Draining));
    a.expect("reconnect").await;
    tokio::time::timeout(Duration::from_secs(60), drain)
        .await
        .unwrap()
        .unwrap();
    assert!(w
        .bus
        .participants(&RoomId::parse("room").unwrap())
        .await
        .unwrap()
        .is_empty());
}

// The stall bound is per write step, not per batch: a peer whose socket takes one frame at
// a time, every half ping timeout, keeps up with a burst that takes four ping timeouts to
// drain, and gets all of it.
#[tokio::test(start_paused = true)]
async fn a_slow_reader_that_keeps_reading_is_not_a_slow_consumer() {
    let w = World::new();
    let mut a = w.join("alice");
    a.joined().await;
    let (to_client, mut slow) = mpsc::channel::<Message>(0);
    let (to_server, from_client) = mpsc::unbounded::<Result<Message, ReadError>>();
    let bob = tokio::spawn(run(
        w.ctx("bob"),
        w.shutdown.guard().unwrap(),
        sink(to_client),
        from_client,
    ));
    a.expect("user-joined").await;
    for n in 0..8 {
        a.send(json!({"type":"chat-message","payload":n}));
    }
    let mut got = Vec::new();
    while got.len() < 8 {
        tokio::time::sleep(limits().ping_timeout / 2).await;
        // Bob is never silent either.
        let pong = Ok(Message::Pong(bytes::Bytes::new()));
        if to_server.unbounded_send(pong).is_err() || bob.is_finished() {
            panic!("bob's session ended: {:?}", bob.await);
        }
        let Some(Message::Text(text)) = slow.next().await else {
            continue;
        };
        let v: Value = serde_json::from_str(&text).unwrap();
        if v["type"] == "chat-message" {
            got.push(v["payload"].as_u64().unwrap());
        }
    }
    assert_eq!(got, (0..8).collect::<Vec<_>>());
    assert!(!bob.is_finished());
}

// A peer that stopped reading with its socket full: the writer is blocked in
// `feed`/`flush` and the queue never overflows. It must still be removed
// (the keep-alive used to live in the writer's select and never ran), even
// while it keeps sending pings so that it never looks silent: a write that
// blocks for the ping timeout closes it as a slow consumer.
#[tokio::test(start_paused = true)]
async fn a_peer_whose_socket_is_full_is_removed_even_while_it_pings() {
    let (_w, mut a, bob) = alice_and_stuck_bob().await;
    let talk = |tx: mpsc::UnboundedSender<Result<Message, ReadError>>, every, frame: Message| {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(every)).await;
                if tx.unbounded_send(Ok(frame.clone())).is_err() {
                    break;
                }
            }
        })
    };
    // Alice answers pings; bob pings on his own, far below the rate limit.
    let alice_alive = talk(a.tx.clone(), 10, Message::Pong(bytes::Bytes::new()));
    let bob_alive = talk(bob.to_server.clone(), 5, Message::Ping(bytes::Bytes::new()));
    // A few chats block bob's writer; far fewer than his queue bound (64).
    let blocked = tokio::time::Instant::now();
    for n in 0..3 {
        a.send(json!({"type":"chat-message","payload":n}));
    }
    let end = tokio::time::timeout(Duration::from_secs(120), bob.task)
        .await
        .expect("bob still in the room 120 s after he stopped reading")
        .unwrap();
    assert_eq!(end, Some(End::SlowConsumer));
    let left = a.expect("user-left").await;
    assert_eq!(left["payload"]["reason"], "slow_consumer");
    // Gone one ping timeout (20 s) after his writer blocked, plus the bounded
    // wait for his close frame that never leaves (5 s).
    let waited = blocked.elapsed();
    assert!(
        (Duration::from_secs(25)..Duration::from_secs(26)).contains(&waited),
        "{waited:?}"
    );
    alice_alive.abort();
    bob_alive.abort();
}

#[test]
fn is_dead_after_interval_plus_timeout() {
    let l = limits();
    // 20 s interval + 20 s timeout.
    assert!(!is_dead(&l, 1_000, 41_000));
    assert!(is_dead(&l, 1_000, 41_001));
    assert!(!is_dead(&l, 50_000, 10_000), "clock order never underflows");
}

/// An HS256 token of the world's key.
fn token(sub: &str, exp: u64, rooms: &[&str]) -> String {
    switchboard_e2e::token::hs256(&json!({"sub": sub, "exp": exp, "rooms": rooms}), SECRET)
}

// Real time: the deadline is the token's `exp`, read from the system clock.
#[tokio::test]
async fn an_expired_token_ends_the_session_unless_refreshed() {
    let w = World::new();
    let exp = crate::auth::now_unix() + 2;
    let mut a = w.join_expiring("alice", exp);
    a.joined().await;
    let mut b = w.join_expiring("bob", exp);
    let pb = b.joined().await;
    a.expect("user-joined").await;

    // Refusals leave the deadline where it was.
    let later = crate::auth::now_unix() + 3600;
    for (t, code) in [
        (token("bob", later, &["room"]), "user_mismatch"),
        (token("alice", later, &["elsewhere"]), "room_forbidden"),
        (token("alice", exp - 10, &["room"]), "token_expired"),
        ("x.y.z".to_string(), "invalid_token"),
    ] {
        a.send(json!({"type":"refresh-token","payload":{"token":t}}));
        assert_eq!(a.expect("error").await["payload"]["code"], code);
    }
    a.send(json!({"type":"refresh-token","payload":{"token":token("alice", later, &["*"])}}));
    assert_eq!(
        a.expect("token-refreshed").await["payload"],
        json!({"expires_at": later})
    );

    b.expect_close(1008, "token_expired").await;
    assert_eq!(b.task.await.unwrap(), Some(End::TokenExpired));
    let left = a.expect("user-left").await;
    assert_eq!(
        (
            left["payload"]["participant_id"].as_str(),
            left["payload"]["reason"].as_str()
        ),
        (Some(pb.as_str()), Some("token_expired"))
    );
    // Alice outlived her first token.
    assert!(crate::auth::now_unix() >= exp);
    a.send(json!({"type":"ping"}));
    a.expect("pong").await;
}

#[tokio::test]
async fn max_session_length_closes_1001_session_limit() {
    let mut w = World::new();
    w.limits.max_session = Some(Duration::from_secs(1));
    let mut a = w.join("alice");
    a.joined().await;
    a.expect_close(1001, "session_limit").await;
    assert_eq!(a.task.await.unwrap(), Some(End::SessionLimit));
}

#[tokio::test]
async fn broadcasts_are_charged_per_recipient() {
    let mut w = World::new();
    // One 1,000-byte delivery allowed at once, refilled in ~1000 s.
    w.limits.rate_limit_bytes_burst = 1000;
    w.limits.rate_limit_bytes_per_second = 1;
    let mut a = w.join("alice");
    let pa = a.joined().await;
    let mut b = w.join("bob");
    let pb = b.joined().await;
    a.expect("user-joined").await;
    let mut c = w.join("carol");
    c.joined().await;
    a.expect("user-joined").await;
    b.expect("user-joined").await;
    // ~400 bytes × 2 recipients fits, the same again does not.
    let text = "x".repeat(250);
    b.send(json!({"type":"chat-message","payload":text}));
    assert_eq!(a.expect("chat-message").await["sender_id"], pb.as_str());
    assert_eq!(c.expect("chat-message").await["sender_id"], pb.as_str());
    b.send(json!({"type":"chat-message","payload":text}));
    let e = b.expect("error").await;
    assert_eq!(e["payload"]["code"], "rate_limited");
    // Nobody got the refused broadcast: the next thing they see is alice's.
    a.send(json!({"type":"chat-message","payload":"a"}));
    assert_eq!(c.expect("chat-message").await["sender_id"], pa.as_str());
}

#[tokio::test]
async fn deep_json_is_refused_not_relayed() {
    let w = World::new();
    let mut a = w.join("alice");
    a.joined().await;
    let mut b = w.join("bob");
    let pb = b.joined().await;
    a.expect("user-joined").await;
    // 400 levels keeps it under the 1,024-byte message limit of these tests.
    let deep = format!("{}{}", "[".repeat(400), "]".repeat(400));
    b.send_text(&format!(r#"{{"type":"chat-message","payload":{deep}}}"#));
    let e = b.expect("error").await;
    assert_eq!(e["payload"]["code"], "invalid_message");
    b.send(json!({"type":"chat-message","payload":[[["fine"]]]}));
    let m = a.expect("chat-message").await;
    assert_eq!(
        (m["sender_id"].as_str(), &m["payload"]),
        (Some(pb.as_str()), &json!([[["fine"]]]))
    );
}
