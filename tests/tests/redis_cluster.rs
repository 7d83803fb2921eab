//! Several real `switchboard-server` processes sharing one real redis-server act as one
//! service: cross-instance relay (targeted, broadcast, ordered), one participants list, atomic
//! capacity and per-user limit, crash cleanup after SIGKILL, surviving a Redis restart and a
//! killed subscriber connection without clients reconnecting, and key-prefix isolation. The
//! tests that must hold on a Redis Cluster as well (relay and presence, order, SIGKILL, the
//! capacity race, key prefixes) are written once against a [`RedisEngine`] and run on both.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchboard_e2e::client::{
    assert_pair_relays, assert_relays, sorted_participant_ids, ws_path, Client, ConnectOptions,
    Event,
};
use switchboard_e2e::http;
use switchboard_e2e::redis::{RedisProcess, RedisProxy};
use switchboard_e2e::redis_cluster::RedisEngine;
use switchboard_e2e::server::{ServerOptions, ServerProcess};
use switchboard_e2e::token::Claims;

const SECRET: &str = "e2e-redis-cluster-secret-0123456789abcdef";
/// Presence TTL for these tests: crash cleanup within TTL + one heartbeat.
const TTL_SECS: u64 = 3;

fn token(user: &str) -> String {
    Claims::user(user).hs256(SECRET)
}

fn options(redis: &RedisProcess, instance: &str) -> ServerOptions {
    ServerOptions::with_secret(SECRET)
        .env("REDIS_URL", redis.url())
        .env("SWITCHBOARD_INSTANCE_ID", instance)
        .env("WEBRTC_ROOM_PRESENCE_TTL", TTL_SECS.to_string())
}

/// [`options`] on either engine.
fn options_on(redis: &RedisEngine, instance: &str) -> ServerOptions {
    redis.configure(
        ServerOptions::with_secret(SECRET)
            .env("SWITCHBOARD_INSTANCE_ID", instance)
            .env("WEBRTC_ROOM_PRESENCE_TTL", TTL_SECS.to_string()),
    )
}

/// Starts `n` instances on one Redis and waits until each is ready.
async fn cluster(redis: &RedisProcess, n: usize) -> Vec<ServerProcess> {
    let mut servers = Vec::new();
    for i in 0..n {
        servers.push(options(redis, &format!("sb-{i}")).start());
    }
    for s in &servers {
        s.wait_ready(true, Duration::from_secs(10)).await;
    }
    servers
}

/// [`cluster`] on either engine.
async fn cluster_on(redis: &RedisEngine, n: usize) -> Vec<ServerProcess> {
    let mut servers = Vec::new();
    for i in 0..n {
        servers.push(options_on(redis, &format!("sb-{i}")).start());
    }
    for s in &servers {
        s.wait_ready(true, Duration::from_secs(10)).await;
    }
    servers
}

/// Sorted participant ids from the REST endpoint of one instance.
async fn participants(addr: SocketAddr, room: &str) -> Vec<String> {
    let res = http::get_bearer(
        addr,
        &format!("/webrtc/rooms/{room}/participants"),
        &token("observer"),
    )
    .await;
    assert_eq!(res.status, 200, "participants on {addr}: {}", res.text());
    sorted_participant_ids(&res.json()["participants"])
}

/// The value of the sample named exactly `name` (with labels, if any) in an instance's
/// `/metrics`; panics if it is missing.
async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let text = http::get(addr, "/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics of {addr}:\n{text}"))
}

/// Polls until every instance reports exactly `want` (sorted) in `room`.
async fn wait_participants(
    servers: &[&ServerProcess],
    room: &str,
    want: &[String],
    timeout: Duration,
) {
    let mut want = want.to_vec();
    want.sort();
    let deadline = Instant::now() + timeout;
    loop {
        let mut all = Vec::new();
        for s in servers {
            all.push(participants(s.addr(), room).await);
        }
        if all.iter().all(|l| *l == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "participants did not converge to {want:?} within {timeout:?}: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Joins `user` on `server` and consumes the `user-joined` each of `earlier` receives.
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

/// Reads until a message of type `ty` (skipping presence), within `timeout`.
async fn next_of(client: &mut Client, ty: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next_event(left).await {
            Event::Json(msg) if msg["type"] == ty => return msg,
            Event::Json(msg) if msg["type"] == "user-joined" || msg["type"] == "user-left" => {}
            other => panic!("waiting for {ty} in room {}, got {other:?}", client.room),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_relay_targeted_and_broadcast_and_agree_on_presence() {
    relay_and_presence(&RedisEngine::one()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_relay_and_agree_on_presence_on_a_redis_cluster() {
    relay_and_presence(&RedisEngine::cluster()).await;
}

async fn relay_and_presence(redis: &RedisEngine) {
    let servers = cluster_on(redis, 3).await;
    let room = "spread";
    let mut a = join(&servers[0], room, "alice", &mut []).await;
    let mut b = join(&servers[1], room, "bob", &mut [&mut a]).await;
    let mut c = join(&servers[2], room, "carol", &mut [&mut a, &mut b]).await;
    let mut d = join(&servers[0], room, "dave", &mut [&mut a, &mut b, &mut c]).await;

    // One subscription per instance, however many local participants it has there.
    wait_subscribers(redis, room, 3).await;

    // room-state counts everyone, cluster-wide.
    let state = d.room_state.clone().unwrap();
    assert_eq!(state["payload"]["participant_count"], 4);
    let everyone = sorted_participant_ids(&state["payload"]["participants"]);
    assert_eq!(everyone.len(), 4);
    wait_participants(
        &servers.iter().collect::<Vec<_>>(),
        room,
        &everyone,
        Duration::from_secs(5),
    )
    .await;

    // Targeted: a (instance 0) → c (instance 2); only c receives it.
    a.send_msg("offer", Some(&c.pid()), json!({"sdp": "v=0"}))
        .await;
    let offer = next_of(&mut c, "offer", Duration::from_secs(5)).await;
    assert_eq!(offer["sender_id"], a.pid().as_str());
    assert_eq!(offer["to"], c.pid().as_str());
    assert_eq!(offer["payload"]["sdp"], "v=0");
    // Nothing reached b (remote) or d (local): a marker sent by a after the offer, through
    // the same path, is the next thing each reads (a local pong could overtake a leak that
    // comes in over Redis).
    for other in [&mut b, &mut d] {
        assert_relays(&mut a, other).await;
    }

    // Broadcast from b (instance 1): every other participant exactly once, local and remote.
    b.send_msg("chat-message", None, json!({"text": "hi all"}))
        .await;
    for other in [&mut a, &mut c, &mut d] {
        let msg = next_of(other, "chat-message", Duration::from_secs(5)).await;
        assert_eq!(msg["sender_id"], b.pid().as_str());
        assert_eq!(msg["to"], Value::Null);
        assert_relays(&mut b, other).await;
    }
    // No echo of its own broadcast came back to b over Redis before a later remote marker.
    assert_relays(&mut a, &mut b).await;

    // Broadcast from a reaches its local neighbour d and the remote b and c, once each.
    a.send_msg("media-control", None, json!({"muted": true}))
        .await;
    for other in [&mut b, &mut c, &mut d] {
        let msg = next_of(other, "media-control", Duration::from_secs(5)).await;
        assert_eq!(msg["sender_id"], a.pid().as_str());
        assert_relays(&mut a, other).await;
    }

    // A leave on instance 2 reaches everyone, and every instance forgets c.
    let c_pid = c.pid();
    c.close().await;
    for other in [&mut a, &mut b, &mut d] {
        let left = next_of(other, "user-left", Duration::from_secs(5)).await;
        assert_eq!(left["payload"]["participant_id"], c_pid.as_str());
        assert_eq!(left["payload"]["reason"], "closed");
    }
    let rest: Vec<String> = everyone.into_iter().filter(|p| *p != c_pid).collect();
    wait_participants(
        &servers.iter().collect::<Vec<_>>(),
        room,
        &rest,
        Duration::from_secs(5),
    )
    .await;
    // Instance 2 has nobody left in the room: it unsubscribed from the room's channel.
    wait_subscribers(redis, room, 2).await;
}

/// Waits until exactly `want` connections subscribe to the room's channel (one per instance
/// with local participants there).
async fn wait_subscribers(redis: &RedisEngine, room: &str, want: i64) {
    let channel = format!("switchboard:room:{{{room}}}:events");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = redis.subscribers(&channel);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{channel} has {got} subscribers, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_is_preserved_over_1000_messages_across_instances() {
    order_over_1000_messages(&RedisEngine::one()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_is_preserved_over_1000_messages_on_a_redis_cluster() {
    order_over_1000_messages(&RedisEngine::cluster()).await;
}

async fn order_over_1000_messages(redis: &RedisEngine) {
    let fast = |instance: &str| {
        options_on(redis, instance)
            .env("WEBRTC_RATE_LIMIT_PER_SECOND", "100000")
            .env("WEBRTC_RATE_LIMIT_BURST", "100000")
            .env("WEBRTC_OUTBOUND_QUEUE_MESSAGES", "4096")
            .start()
    };
    let (s1, s2) = (fast("sb-a"), fast("sb-b"));
    s1.wait_ready(true, Duration::from_secs(10)).await;
    s2.wait_ready(true, Duration::from_secs(10)).await;
    let room = "ordered";
    let mut sender = join(&s1, room, "sender", &mut []).await;
    let mut receiver = join(&s2, room, "receiver", &mut [&mut sender]).await;
    let to = receiver.pid();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < 1000 {
            let msg = next_of(&mut receiver, "chat-message", Duration::from_secs(20)).await;
            got.push(msg["payload"]["n"].as_u64().unwrap_or(u64::MAX));
        }
        (got, receiver)
    });
    for n in 0..1000u64 {
        sender
            .send_msg("chat-message", Some(&to), json!({ "n": n }))
            .await;
    }
    let (got, mut receiver) = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("1000 messages within 30 s")
        .expect("reader task");
    assert_eq!(got, (0..1000).collect::<Vec<u64>>());
    // No duplicate for the receiver, no echo for the sender: a marker through Redis after
    // the run is the next message each reads.
    assert_pair_relays(&mut sender, &mut receiver).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_an_instance_is_announced_as_instance_lost_within_ttl() {
    sigkill_is_instance_lost(&RedisEngine::one()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_an_instance_is_announced_once_on_a_redis_cluster() {
    sigkill_is_instance_lost(&RedisEngine::cluster()).await;
}

async fn sigkill_is_instance_lost(redis: &RedisEngine) {
    let mut servers = cluster_on(redis, 3).await;
    let room = "crash";
    let mut a = join(&servers[0], room, "alice", &mut []).await;
    let mut c = join(&servers[2], room, "carol", &mut [&mut a]).await;
    let b1 = join(&servers[1], room, "bob", &mut [&mut a, &mut c]).await;
    let b2 = join(&servers[1], room, "bob-tab-2", &mut [&mut a, &mut c]).await;
    let doomed: HashSet<String> = [b1.pid(), b2.pid()].into();

    let killed_at = Instant::now();
    servers[1].sigkill();
    let bound = Duration::from_secs(TTL_SECS + 5);
    for survivor in [&mut a, &mut c] {
        let mut lost = HashSet::new();
        while lost != doomed {
            let left = survivor
                .next_event(bound.saturating_sub(killed_at.elapsed()))
                .await;
            let Event::Json(msg) = left else {
                panic!("waiting for instance_lost in {room}, got {left:?} after {lost:?}");
            };
            assert_eq!(msg["type"], "user-left", "unexpected {msg}");
            assert_eq!(msg["payload"]["reason"], "instance_lost");
            let pid = msg["payload"]["participant_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(lost.insert(pid.clone()), "user-left for {pid} twice");
        }
    }
    assert!(killed_at.elapsed() < bound);
    // Exactly one survivor cleaned up, and its /metrics says so (each server's registry
    // counts its own bus only).
    let survivors = [servers[0].addr(), servers[2].addr()];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut cleanups = 0.0;
        for addr in survivors {
            cleanups += metric(addr, "switchboard_bus_presence_cleanups_total").await;
        }
        if cleanups >= 1.0 {
            assert_eq!(cleanups, 1.0, "one cleaner");
            break;
        }
        assert!(Instant::now() < deadline, "no cleanup counted within 5 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut publishes = 0.0;
    for addr in survivors {
        let cleaner = metric(addr, "switchboard_bus_presence_cleanups_total").await == 1.0;
        let removed = metric(addr, "switchboard_bus_presence_cleanup_participants_total").await;
        assert_eq!(removed, if cleaner { 2.0 } else { 0.0 }, "{addr}");
        // Its participant's join, plus one user-left per removed participant if it cleaned.
        let count = metric(addr, "switchboard_bus_publish_duration_seconds_count").await;
        assert_eq!(count, 1.0 + removed, "publishes of {addr}");
        let inf = metric(
            addr,
            "switchboard_bus_publish_duration_seconds_bucket{le=\"+Inf\"}",
        )
        .await;
        assert_eq!(
            inf, count,
            "every publish lands in the +Inf bucket of {addr}"
        );
        assert!(
            metric(addr, "switchboard_bus_publish_duration_seconds_sum").await > 0.0,
            "publish latency summed on {addr}"
        );
        publishes += count;
    }
    assert_eq!(publishes, 4.0);
    // Neither survivor got a duplicate user-left over Redis before a later marker.
    assert_pair_relays(&mut a, &mut c).await;
    let alive = [a.pid(), c.pid()];
    wait_participants(
        &[&servers[0], &servers[2]],
        room,
        &alive,
        Duration::from_secs(2),
    )
    .await;
    // Nothing of the dead instance remains but its tombstone (and the expiring lock).
    let leftovers: Vec<String> = redis
        .keys("switchboard:instance:{sb-1}:*")
        .into_iter()
        .filter(|k| !k.ends_with(":lost") && !k.ends_with(":cleanup"))
        .collect();
    assert_eq!(leftovers, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_race_across_three_instances_admits_exactly_the_maximum() {
    capacity_race(&RedisEngine::one()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_race_on_a_redis_cluster_admits_exactly_the_maximum() {
    capacity_race(&RedisEngine::cluster()).await;
}

async fn capacity_race(redis: &RedisEngine) {
    let mut servers = Vec::new();
    for i in 0..3 {
        servers.push(
            options_on(redis, &format!("cap-{i}"))
                .env("WEBRTC_MAX_PARTICIPANTS_PER_ROOM", "50")
                .start(),
        );
    }
    for s in &servers {
        s.wait_ready(true, Duration::from_secs(10)).await;
    }
    let room = "race";
    let mut attempts = Vec::new();
    for i in 0..120 {
        let addr = servers[i % 3].addr();
        let token = token(&format!("user-{i}"));
        attempts.push(tokio::spawn(async move {
            let mut client = Client::connect_with(
                addr,
                room,
                &ws_path(room, &token),
                &ConnectOptions::default(),
            )
            .await;
            let first = client.next_event(Duration::from_secs(20)).await;
            (client, first)
        }));
    }
    let mut admitted = Vec::new();
    let mut refused = 0;
    for attempt in attempts {
        let (client, first) = attempt.await.expect("join task");
        match first {
            Event::Json(msg) if msg["type"] == "room-state" => admitted.push(client),
            Event::Close(Some((1013, reason))) if reason == "room_full" => refused += 1,
            other => panic!("unexpected first event: {other:?}"),
        }
    }
    assert_eq!((admitted.len(), refused), (50, 70));
    for s in &servers {
        assert_eq!(participants(s.addr(), room).await.len(), 50);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_recovers_presence_and_relay_without_reconnects() {
    let mut redis = RedisProcess::start();
    let servers = cluster(&redis, 2).await;
    let room = "outage";
    let mut a = join(&servers[0], room, "alice", &mut []).await;
    let mut b = join(&servers[1], room, "bob", &mut [&mut a]).await;
    let both = [a.pid(), b.pid()];

    redis.kill();
    for s in &servers {
        s.wait_ready(false, Duration::from_secs(10)).await;
    }
    // A message that needs Redis is refused out loud, the sender stays connected. The first
    // one may have been written to the connection Redis just closed (the driver cannot tell
    // whether it went out before): `delivery_unknown`. Once the instance knows Redis is gone,
    // `bus_unavailable`.
    a.send_msg("offer", Some(&b.pid()), json!({"sdp": "lost?"}))
        .await;
    let err = next_of(&mut a, "error", Duration::from_secs(10)).await;
    if err["payload"]["code"] == "delivery_unknown" {
        a.send_msg("offer", Some(&b.pid()), json!({"sdp": "lost again?"}))
            .await;
        let err = next_of(&mut a, "error", Duration::from_secs(10)).await;
        assert_eq!(err["payload"]["code"], "bus_unavailable", "{err}");
    } else {
        assert_eq!(err["payload"]["code"], "bus_unavailable", "{err}");
    }

    redis.restart_same_port();
    for s in &servers {
        s.wait_ready(true, Duration::from_secs(10)).await;
    }
    wait_participants(
        &[&servers[0], &servers[1]],
        room,
        &both,
        Duration::from_secs(10),
    )
    .await;
    // Relaying works again, in both directions, on the same connections.
    a.send_msg("offer", Some(&b.pid()), json!({"sdp": "again"}))
        .await;
    let offer = next_of(&mut b, "offer", Duration::from_secs(5)).await;
    assert_eq!(offer["payload"]["sdp"], "again");
    b.send_msg("answer", Some(&a.pid()), json!({"sdp": "ok"}))
        .await;
    let answer = next_of(&mut a, "answer", Duration::from_secs(5)).await;
    assert_eq!(answer["payload"]["sdp"], "ok");
    // Nobody was told anyone left, nobody was disconnected: a marker through Redis is the
    // next thing each reads.
    assert_pair_relays(&mut a, &mut b).await;
}

/// Joins `user` on `server` as soon as the instance admits joins again (it refuses them with
/// 1013 `bus_unavailable` until its Redis connections are back), within `timeout`.
async fn join_when_admitted(
    server: &ServerProcess,
    room: &str,
    user: &str,
    timeout: Duration,
) -> Client {
    let deadline = Instant::now() + timeout;
    loop {
        let mut client = Client::connect(server.addr(), room, &token(user)).await;
        match client.next_event(Duration::from_secs(5)).await {
            Event::Json(msg) if msg["type"] == "room-state" => {
                client.room_state = Some(msg);
                return client;
            }
            Event::Close(Some((1013, reason))) if reason == "bus_unavailable" => {}
            other => panic!("joining {room} on {}: {other:?}", server.addr()),
        }
        assert!(
            Instant::now() < deadline,
            "{} did not admit joins within {timeout:?}",
            server.addr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads presence until `client` has heard of `pid` (room-state or `user-joined`); panics on
/// anything else or at `deadline`.
async fn wait_heard_of(client: &mut Client, pid: &str, deadline: Instant, what: &str) {
    let state = client.room_state.as_ref().expect("joined");
    if sorted_participant_ids(&state["payload"]["participants"])
        .iter()
        .any(|p| p == pid)
    {
        return;
    }
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next_event(left).await {
            Event::Json(msg)
                if msg["type"] == "user-joined" && msg["payload"]["participant_id"] == pid =>
            {
                return
            }
            Event::Json(msg) if msg["type"] == "user-joined" => {}
            Event::Timeout => panic!("{what}: never heard of {pid}"),
            other => panic!("{what}: waiting for user-joined {pid}, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_right_after_redis_returns_empty_sees_who_was_already_there() {
    // A TTL long enough to tell the two repairs apart: the re-registering instance must
    // announce its members at its next heartbeat (every TTL/3 = 4 s); the reconciliation
    // of missed events only runs after a full TTL (12 s) of working Redis commands.
    const LONG_TTL: Duration = Duration::from_secs(12);
    let mut redis = RedisProcess::start();
    let servers: Vec<ServerProcess> = (0..3)
        .map(|i| {
            options(&redis, &format!("empty-{i}"))
                .env("WEBRTC_ROOM_PRESENCE_TTL", LONG_TTL.as_secs().to_string())
                .start()
        })
        .collect();
    for s in &servers {
        s.wait_ready(true, Duration::from_secs(15)).await;
    }
    let room = "came-back-empty";
    let mut a = join(&servers[0], room, "alice", &mut []).await;

    // Alice's instance is paused so it cannot re-register before bob joins: bob's
    // room-state comes from an empty Redis (the reviewer hit this 0.24 s after a restart).
    servers[0].signal(nix::sys::signal::Signal::SIGSTOP);
    redis.restart_same_port();
    let mut b = join_when_admitted(&servers[2], room, "bob", Duration::from_secs(10)).await;
    assert_eq!(
        sorted_participant_ids(&b.room_state.as_ref().unwrap()["payload"]["participants"]),
        vec![b.pid()],
        "scenario: Redis forgot alice"
    );
    servers[0].signal(nix::sys::signal::Signal::SIGCONT);
    let resumed = Instant::now();

    // Bob hears of alice once her instance re-registers her (one heartbeat), long before a
    // reconciliation could do it.
    wait_heard_of(
        &mut b,
        &a.pid(),
        resumed + Duration::from_secs(8),
        "bob on the third instance",
    )
    .await;
    // Alice's instance missed bob's user-joined (it was paused, its subscriber connection
    // died with Redis): the reconciliation after resubscribing tells her.
    wait_heard_of(
        &mut a,
        &b.pid(),
        resumed + LONG_TTL * 2,
        "alice on the first instance",
    )
    .await;
    assert_pair_relays(&mut a, &mut b).await;
    wait_participants(
        &[&servers[0], &servers[1], &servers[2]],
        room,
        &[a.pid(), b.pid()],
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_missed_while_the_subscriber_was_wedged_is_reconciled() {
    let redis = RedisProcess::start();
    let proxy = RedisProxy::start(redis.port()).await;
    // Alice's instance reaches Redis through a proxy that can wedge its subscriber; bob's
    // and carol's instance talks to Redis directly.
    let behind_proxy = ServerOptions::with_secret(SECRET)
        .env("REDIS_URL", proxy.url())
        .env("SWITCHBOARD_INSTANCE_ID", "wedge-a")
        .env("WEBRTC_ROOM_PRESENCE_TTL", "6")
        .start();
    let direct = options(&redis, "direct-b")
        .env("WEBRTC_ROOM_PRESENCE_TTL", "6")
        .start();
    behind_proxy.wait_ready(true, Duration::from_secs(10)).await;
    direct.wait_ready(true, Duration::from_secs(10)).await;
    let room = "gap";
    let mut a = join(&behind_proxy, room, "alice", &mut []).await;
    let b = join(&direct, room, "bob", &mut [&mut a]).await;
    let bob = b.pid();

    // While alice's instance hears nothing, bob leaves and carol joins: both events are
    // published once and lost for alice's instance.
    assert_eq!(proxy.freeze_subscribers(), 1);
    b.close().await;
    let mut c = Client::join(direct.addr(), room, &token("carol")).await;
    assert_eq!(
        sorted_participant_ids(&c.room_state.as_ref().unwrap()["payload"]["participants"]),
        {
            let mut want = vec![a.pid(), c.pid()];
            want.sort();
            want
        }
    );
    // The instance replaces its wedged subscriber and reconciles: alice learns both.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut left = None;
    let mut joined = None;
    while left.is_none() || joined.is_none() {
        let wait = deadline.saturating_duration_since(Instant::now());
        match a.next_event(wait).await {
            Event::Json(msg) if msg["type"] == "user-left" => left = Some(msg),
            Event::Json(msg) if msg["type"] == "user-joined" => joined = Some(msg),
            other => panic!("alice waiting for bob's leave and carol's join: {other:?}"),
        }
    }
    let left = left.unwrap();
    assert_eq!(left["payload"]["participant_id"], bob.as_str());
    assert_eq!(left["payload"]["reason"], "closed");
    assert_eq!(
        joined.unwrap()["payload"]["participant_id"],
        c.pid().as_str()
    );
    // No ghost: a targeted message to bob is refused out loud, not published into nothing.
    a.send_msg("offer", Some(&bob), json!({"sdp": "to a ghost"}))
        .await;
    let err = a.recv_json().await;
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["payload"]["code"], "target_not_found");
    assert_pair_relays(&mut a, &mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscriber_connection_is_repaired_by_the_instance() {
    let redis = RedisProcess::start();
    let servers = cluster(&redis, 2).await;
    let room = "killed-sub";
    let mut a = join(&servers[0], room, "alice", &mut []).await;
    let mut b = join(&servers[1], room, "bob", &mut [&mut a]).await;
    let a2 = join(&servers[0], room, "alice-tab-2", &mut [&mut a, &mut b]).await;
    let _elsewhere = Client::join(servers[1].addr(), "other-room", &token("eve")).await;

    // One subscriber connection per instance, not per WebSocket or per room.
    assert_eq!(redis.client_kill_pubsub(), 2);
    // Whatever readiness said in between, it is true again within a few seconds…
    for s in &servers {
        s.wait_ready(true, Duration::from_secs(10)).await;
    }
    // …and relaying works again without the clients reconnecting.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        n += 1;
        a.send_msg("chat-message", Some(&b.pid()), json!({ "n": n }))
            .await;
        match b.next_event(Duration::from_millis(500)).await {
            Event::Json(msg) if msg["type"] == "chat-message" => {
                assert_eq!(msg["sender_id"], a.pid().as_str());
                break;
            }
            Event::Timeout => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "relaying did not recover after CLIENT KILL"
        );
    }
    wait_participants(
        &[&servers[0], &servers[1]],
        room,
        &[a.pid(), a2.pid(), b.pid()],
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_prefixes_isolate_clusters_on_one_redis() {
    key_prefixes_isolate(&RedisEngine::one()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_prefixes_isolate_deployments_on_one_redis_cluster() {
    key_prefixes_isolate(&RedisEngine::cluster()).await;
}

async fn key_prefixes_isolate(redis: &RedisEngine) {
    let start = |prefix: &str, instance: &str| {
        options_on(redis, instance)
            .env("REDIS_KEY_PREFIX", prefix)
            .start()
    };
    // Two clusters of two instances each: a participant on each instance, so every relay
    // inside a cluster really goes through Redis (a local-only relay proves nothing).
    let one = [start("team-one", "one-0"), start("team-one", "one-1")];
    let two = [start("team-two", "two-0"), start("team-two", "two-1")];
    for s in one.iter().chain(&two) {
        s.wait_ready(true, Duration::from_secs(10)).await;
    }
    let room = "same-name";
    let mut a1 = join(&one[0], room, "alice", &mut []).await;
    let mut a2 = join(&one[1], room, "alan", &mut [&mut a1]).await;
    let mut b1 = join(&two[0], room, "bob", &mut []).await;
    let mut b2 = join(&two[1], room, "bea", &mut [&mut b1]).await;
    assert_eq!(
        a2.room_state.as_ref().unwrap()["payload"]["participant_count"],
        2
    );
    assert_eq!(
        b1.room_state.as_ref().unwrap()["payload"]["participant_count"],
        1
    );
    assert_eq!(
        b2.room_state.as_ref().unwrap()["payload"]["participant_count"],
        2
    );
    let mut team_one = vec![a1.pid(), a2.pid()];
    team_one.sort();
    let mut team_two = vec![b1.pid(), b2.pid()];
    team_two.sort();
    for s in &one {
        assert_eq!(participants(s.addr(), room).await, team_one);
    }
    for s in &two {
        assert_eq!(participants(s.addr(), room).await, team_two);
    }

    // Broadcasts and targeted messages cross instances inside each cluster.
    b1.send_msg("chat-message", None, json!({"text": "team two only"}))
        .await;
    let chat = next_of(&mut b2, "chat-message", Duration::from_secs(5)).await;
    assert_eq!(chat["sender_id"], b1.pid().as_str());
    b2.send_msg("offer", Some(&b1.pid()), json!({"sdp": "two"}))
        .await;
    let offer = next_of(&mut b1, "offer", Duration::from_secs(5)).await;
    assert_eq!(offer["payload"]["sdp"], "two");
    a1.send_msg("chat-message", None, json!({"text": "team one only"}))
        .await;
    let chat = next_of(&mut a2, "chat-message", Duration::from_secs(5)).await;
    assert_eq!(chat["sender_id"], a1.pid().as_str());

    // Nothing crossed: markers published after everything above, over the same subscriber
    // connections, are the next thing every participant reads.
    assert_pair_relays(&mut a1, &mut a2).await;
    assert_pair_relays(&mut b1, &mut b2).await;

    let keys = redis.keys("*");
    assert!(keys.iter().any(|k| k.starts_with("team-one:")), "{keys:?}");
    assert!(keys.iter().any(|k| k.starts_with("team-two:")), "{keys:?}");
    assert!(
        keys.iter()
            .all(|k| k.starts_with("team-one:") || k.starts_with("team-two:")),
        "every key carries its cluster's prefix: {keys:?}"
    );
    // Channels too: each cluster's room channel has exactly its own two instances.
    for prefix in ["team-one", "team-two"] {
        let channel = format!("{prefix}:room:{{{room}}}:events");
        assert_eq!(redis.subscribers(&channel), 2, "{channel}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_subscriber_turns_readiness_false_and_is_replaced() {
    let redis = RedisProcess::start();
    let proxy = RedisProxy::start(redis.port()).await;
    let through_proxy = |instance: &str| {
        ServerOptions::with_secret(SECRET)
            .env("REDIS_URL", proxy.url())
            .env("SWITCHBOARD_INSTANCE_ID", instance)
            .env("WEBRTC_ROOM_PRESENCE_TTL", TTL_SECS.to_string())
            .start()
    };
    let servers = [through_proxy("wedge-0"), through_proxy("wedge-1")];
    for s in &servers {
        s.wait_ready(true, Duration::from_secs(10)).await;
    }
    let room = "wedged";
    let mut a = join(&servers[0], room, "alice", &mut []).await;
    let mut b = join(&servers[1], room, "bob", &mut [&mut a]).await;

    // The subscriber connections stay open but deliver nothing: no error anywhere, only the
    // canary notices. Readiness must drop, then the instance replaces the connection.
    assert_eq!(proxy.freeze_subscribers(), 2);
    for s in &servers {
        s.wait_ready(false, Duration::from_secs(10)).await;
    }
    for s in &servers {
        s.wait_ready(true, Duration::from_secs(15)).await;
    }
    a.send_msg("offer", Some(&b.pid()), json!({"sdp": "after repair"}))
        .await;
    let offer = next_of(&mut b, "offer", Duration::from_secs(5)).await;
    assert_eq!(offer["payload"]["sdp"], "after repair");
    b.send_msg("chat-message", None, json!({"text": "back"}))
        .await;
    let chat = next_of(&mut a, "chat-message", Duration::from_secs(5)).await;
    assert_eq!(chat["sender_id"], b.pid().as_str());
    assert_pair_relays(&mut a, &mut b).await;
    let metrics = http::get(servers[0].addr(), "/metrics").await.text();
    assert!(
        metrics.lines().any(|l| l
            .starts_with("switchboard_bus_reconnects_total{connection=\"subscriber\"}")
            && !l.ends_with(" 0")),
        "subscriber reconnect counted:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_with_draining_not_instance_lost_and_removes_the_instance() {
    let redis = RedisProcess::start();
    let quick_drain = |instance: &str| {
        options(&redis, instance)
            .env("SWITCHBOARD_DRAIN_DELAY_MS", "100")
            .env("SWITCHBOARD_DRAIN_WINDOW_MS", "200")
            .env("SWITCHBOARD_DRAIN_TIMEOUT_MS", "5000")
            .start()
    };
    let stays = quick_drain("stays");
    let mut goes = quick_drain("goes");
    stays.wait_ready(true, Duration::from_secs(10)).await;
    goes.wait_ready(true, Duration::from_secs(10)).await;
    let room = "drain";
    let mut a = join(&stays, room, "alice", &mut []).await;
    let b = join(&goes, room, "bob", &mut [&mut a]).await;

    goes.sigterm();
    let left = next_of(&mut a, "user-left", Duration::from_secs(10)).await;
    assert_eq!(left["payload"]["participant_id"], b.pid().as_str());
    assert_eq!(left["payload"]["reason"], "draining");
    assert!(
        goes.wait_exit(Duration::from_secs(10)).await.is_some(),
        "drained instance exits"
    );
    assert_eq!(participants(stays.addr(), room).await, vec![a.pid()]);
    assert_eq!(
        redis.keys("switchboard:instance:{goes}:*"),
        Vec::<String>::new()
    );
    assert_eq!(
        redis.command(&["SMEMBERS", "switchboard:instances"]),
        switchboard_e2e::redis::Reply::Array(vec![switchboard_e2e::redis::Reply::Bulk(Some(
            "stays".into()
        ))])
    );
    // A clean exit is not a crash: nobody is announced lost later.
    tokio::time::sleep(Duration::from_secs(TTL_SECS + 1)).await;
    a.assert_alive_and_idle().await;
}

/// The server's JSON log lines whose message is `message`.
fn log_events(server: &ServerProcess, message: &str) -> Vec<Value> {
    server
        .stderr_lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == message)
        .collect()
}

/// Waits (bounded) until the server logged `message` at least once.
async fn wait_logged(server: &ServerProcess, message: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while log_events(server, message).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no {message:?} logged within {timeout:?}; stderr tail:\n{}",
            server.stderr_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_logged_when_it_starts_while_it_lasts_and_when_it_ends() {
    let mut redis = RedisProcess::start();
    let server = options(&redis, "sb-log")
        .env("SWITCHBOARD_LOG_FORMAT", "json")
        .start();
    server.wait_ready(true, Duration::from_secs(10)).await;
    assert!(log_events(&server, "redis unreachable").is_empty());

    redis.kill();
    wait_logged(&server, "redis unreachable", Duration::from_secs(10)).await;
    // Reminders come every presence TTL while the outage lasts.
    wait_logged(
        &server,
        "redis still unreachable",
        Duration::from_secs(TTL_SECS + 5),
    )
    .await;
    redis.restart_same_port();
    wait_logged(&server, "redis reachable again", Duration::from_secs(10)).await;
    server.wait_ready(true, Duration::from_secs(10)).await;

    let started = log_events(&server, "redis unreachable");
    assert_eq!(started.len(), 1, "the start is logged once: {started:?}");
    let start = &started[0];
    assert_eq!(
        (start["level"].as_str(), start["span"]["instance"].as_str()),
        (Some("WARN"), Some("sb-log"))
    );
    // The reason names the failed command and what went wrong: the driver's error behind
    // it, or the command timeout.
    let reason = start["fields"]["reason"].as_str().unwrap_or_default();
    let detail = reason
        .strip_prefix("bus unavailable: redis ")
        .unwrap_or_else(|| panic!("reason: {reason:?}"));
    assert!(
        detail.contains(" failed: ") || detail.ends_with(" timed out"),
        "reason: {reason:?}"
    );
    let reminders = log_events(&server, "redis still unreachable");
    let longest = reminders
        .iter()
        .map(|r| r["fields"]["down_for_ms"].as_u64().unwrap_or(0))
        .max()
        .unwrap_or(0);
    assert!(
        longest >= TTL_SECS * 1000,
        "a reminder comes a TTL into the outage, not before: {reminders:?}"
    );
    let ended = log_events(&server, "redis reachable again");
    assert_eq!(ended.len(), 1, "the end is logged once: {ended:?}");
    assert!(ended[0]["fields"]["down_for_ms"].as_u64().unwrap_or(0) >= longest);
}

/// Whether `client` knows of `pid`: in its `room-state`, or by a `user-joined` within `timeout`.
async fn learns_of(client: &mut Client, pid: &str, timeout: Duration) -> bool {
    let state = client.room_state.as_ref().expect("joined");
    if sorted_participant_ids(&state["payload"]["participants"])
        .iter()
        .any(|p| p == pid)
    {
        return true;
    }
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        match client.next_event(left).await {
            Event::Json(msg)
                if msg["type"] == "user-joined" && msg["payload"]["participant_id"] == pid =>
            {
                return true
            }
            Event::Json(_) => {}
            _ => return false,
        }
    }
}

/// Two participants joining one room at the same moment on two instances each learn of the
/// other: the first from the second's `user-joined`, which is announced after the first's join
/// read the room but possibly before the first was registered on its instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_joins_on_two_instances_see_each_other() {
    const ROOMS: usize = 60;
    let redis = RedisProcess::start();
    let servers = cluster(&redis, 2).await;
    let (a, b) = (servers[0].addr(), servers[1].addr());
    let pairs = futures_util::future::join_all((0..ROOMS).map(|i| async move {
        let room = format!("race-{i}");
        let (tx, ty) = (token(&format!("x{i}")), token(&format!("y{i}")));
        let (x, y) = tokio::join!(Client::join(a, &room, &tx), Client::join(b, &room, &ty));
        (x, y)
    }))
    .await;
    let mut missed = Vec::new();
    for (mut x, mut y) in pairs {
        let (px, py) = (x.pid(), y.pid());
        if !learns_of(&mut x, &py, Duration::from_secs(3)).await {
            missed.push(format!("{} on A never heard of {py}", x.room));
        }
        if !learns_of(&mut y, &px, Duration::from_secs(3)).await {
            missed.push(format!("{} on B never heard of {px}", y.room));
        }
    }
    assert!(
        missed.is_empty(),
        "{} of {} sides: {missed:?}",
        missed.len(),
        2 * ROOMS
    );
}

/// One user's connections to a room count across instances: ten racing connections of one
/// user, five to each of two instances, admit exactly five (default limit); a sixth is closed
/// 1008 `user_room_limit` on either instance while another user still joins, and a
/// connection closed on one instance frees the seat for a join on the other.
#[tokio::test]
async fn the_per_user_room_limit_holds_across_instances() {
    let redis = RedisProcess::start();
    let servers = cluster(&redis, 2).await;
    let room = "user-limit";
    let alice = token("alice");
    let racing: Vec<_> = (0..10)
        .map(|i| {
            let addr = servers[i % 2].addr();
            let alice = alice.clone();
            tokio::spawn(async move {
                let mut c = Client::connect(addr, room, &alice).await;
                let first = c.next_event(Duration::from_secs(10)).await;
                (i % 2, c, first)
            })
        })
        .collect();
    // (instance index, client) of every admitted connection.
    let mut tabs = Vec::new();
    let mut refused = 0;
    for task in racing {
        match task.await.expect("join task") {
            (at, mut c, Event::Json(msg)) if msg["type"] == "room-state" => {
                c.room_state = Some(msg);
                tabs.push((at, c));
            }
            (_, _, Event::Close(Some((1008, reason)))) if reason == "user_room_limit" => {
                refused += 1
            }
            (_, _, other) => {
                panic!("expected room-state or close 1008 user_room_limit: {other:?}")
            }
        }
    }
    assert_eq!((tabs.len(), refused), (5, 5));
    for s in &servers {
        let mut over = Client::connect(s.addr(), room, &alice).await;
        over.expect_close(1008, "user_room_limit").await;
    }
    let mut bob = Client::join(servers[1].addr(), room, &token("bob")).await;
    assert_eq!(
        bob.room_state.as_ref().unwrap()["payload"]["participant_count"],
        6
    );
    // Free a seat on one instance, take it on the other.
    let (at, first) = tabs.remove(0);
    let (here, there) = (&servers[at], &servers[1 - at]);
    first.close().await;
    let mut again = Client::join_retrying(
        there.addr(),
        room,
        &alice,
        (1008, "user_room_limit"),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        again.room_state.as_ref().unwrap()["payload"]["participant_count"],
        6
    );
    let mut over = Client::connect(here.addr(), room, &alice).await;
    over.expect_close(1008, "user_room_limit").await;
    let (_, joined) = bob
        .recv_until_type("user-joined", Duration::from_secs(10))
        .await;
    assert_eq!(joined["payload"]["participant_id"], again.pid().as_str());
    assert_pair_relays(&mut again, &mut bob).await;
}
