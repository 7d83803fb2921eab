//! Webhooks against real processes: real `switchboard-server`s, a real redis-server and a real
//! HTTP receiver started here, whose signature check is independent of the server's code.
//! Each test states the guarantee it proves: signatures (and that tampering breaks them), the
//! exact set of facts from three instances with per-room order and counts that match the
//! participants endpoint, delivery after the receiver was down, another instance delivering a
//! killed instance's backlog with `instance_lost` exactly once, a Redis restart, and a slow
//! receiver that signaling does not wait for.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::json;
use switchboard_e2e::client::Client;
use switchboard_e2e::http::{get_bearer, send_bearer};
use switchboard_e2e::redis::RedisProcess;
use switchboard_e2e::server::{ServerOptions, ServerProcess};
use switchboard_e2e::token::Claims;
use switchboard_e2e::webhook_receiver::{new_secret, verify, Mode, Received, Receiver};

const SECRET: &str = "e2e-webhooks-jwt-secret-0123456789abcdef";
/// How long a test waits for the receiver to have everything.
const ARRIVAL: Duration = Duration::from_secs(40);

fn token(user: &str) -> String {
    Claims::user(user).hs256(SECRET)
}

fn admin() -> String {
    Claims::room_admin().hs256(SECRET)
}

/// A server sending webhooks to `url` with `secret`; fast retries so outages end quickly.
fn options(url: &str, secret: &str, id: &str) -> ServerOptions {
    ServerOptions::with_secret(SECRET)
        .env("SWITCHBOARD_INSTANCE_ID", id)
        .env("SWITCHBOARD_WEBHOOK_URLS", url)
        .env("SWITCHBOARD_WEBHOOK_SECRET", secret)
        .env("SWITCHBOARD_WEBHOOK_RETRY_INITIAL_MS", "100")
        .env("SWITCHBOARD_WEBHOOK_RETRY_MAX_MS", "1000")
        .env("WEBRTC_MAX_USER_CONNECTIONS_PER_INSTANCE", "0")
}

async fn cluster(
    redis: &RedisProcess,
    url: &str,
    secret: &str,
    ids: &[&str],
    ttl: &str,
) -> Vec<ServerProcess> {
    let servers: Vec<ServerProcess> = ids
        .iter()
        .map(|id| {
            options(url, secret, id)
                .env("REDIS_URL", redis.url())
                .env("WEBRTC_ROOM_PRESENCE_TTL", ttl)
                .start()
        })
        .collect();
    for s in &servers {
        s.wait_ready(true, Duration::from_secs(15)).await;
    }
    servers
}

/// The first delivered copy of each event, in delivery order (receivers dedupe by id).
fn dedupe(delivered: &[Received]) -> Vec<Received> {
    let mut seen = HashSet::new();
    delivered
        .iter()
        .filter(|r| seen.insert(r.id.clone()))
        .cloned()
        .collect()
}

/// Events per room, in delivery order.
fn by_room(events: &[Received]) -> BTreeMap<String, Vec<Received>> {
    let mut rooms: BTreeMap<String, Vec<Received>> = BTreeMap::new();
    for e in events {
        rooms
            .entry(e.room().to_owned())
            .or_default()
            .push(e.clone());
    }
    rooms
}

/// (type, participant id) of every participant event.
fn facts(events: &[Received]) -> BTreeSet<(String, String)> {
    events
        .iter()
        .filter(|e| e.kind().starts_with("participant_"))
        .map(|e| (e.kind().to_owned(), e.participant_id().to_owned()))
        .collect()
}

/// Per room: delivered in strictly increasing `seq`, one apart (nothing missing in between),
/// `room_started` exactly when the count leaves 0 and `room_finished` exactly when it comes
/// back. Returns each room's final count.
fn check_rooms(events: &[Received]) -> BTreeMap<String, i64> {
    let mut counts = BTreeMap::new();
    for (room, list) in by_room(events) {
        let seqs: Vec<u64> = list.iter().map(Received::seq).collect();
        for w in seqs.windows(2) {
            assert_eq!(
                w[1],
                w[0] + 1,
                "room {room}: seq not one apart in delivery order: {seqs:?}"
            );
        }
        let mut count = 0i64;
        let mut expect_start = true;
        for (i, e) in list.iter().enumerate() {
            match e.kind() {
                "room_started" => {
                    assert_eq!(count, 0, "room {room}: room_started at count {count}");
                    assert_eq!(
                        list.get(i + 1).map(Received::kind),
                        Some("participant_joined"),
                        "room {room}: room_started not followed by a join"
                    );
                    expect_start = false;
                }
                "participant_joined" => {
                    assert!(
                        !expect_start,
                        "room {room}: a join from 0 without room_started"
                    );
                    count += 1;
                }
                "participant_left" => {
                    count -= 1;
                    assert!(count >= 0, "room {room}: more leaves than joins");
                    if count == 0 {
                        assert_eq!(
                            list.get(i + 1)
                                .map(Received::kind)
                                .unwrap_or("room_finished"),
                            "room_finished",
                            "room {room}: emptied without room_finished"
                        );
                    }
                }
                "room_finished" => {
                    assert_eq!(count, 0, "room {room}: room_finished at count {count}");
                    expect_start = true;
                }
                "participant_updated" => {}
                other => panic!("room {room}: unknown event type {other:?}"),
            }
        }
        counts.insert(room, count);
    }
    counts
}

/// A room's next event was never sent before the previous one got its 2xx: in the log of every
/// attempt (each answered at once), per room, no attempt of seq `s` comes while an earlier seq
/// is undelivered.
fn check_attempt_order(requests: &[Received]) {
    let mut delivered: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut attempted: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for r in requests {
        let room = r.room().to_owned();
        let done = delivered.entry(room.clone()).or_default();
        for earlier in attempted.get(&room).into_iter().flatten() {
            if *earlier < r.seq() {
                assert!(
                    done.contains(earlier),
                    "room {room}: seq {} sent before seq {earlier} was delivered",
                    r.seq()
                );
            }
        }
        attempted.entry(room).or_default().insert(r.seq());
        if r.delivered() {
            done.insert(r.seq());
        }
    }
}

/// The name metrics give an endpoint configured without one: its host, port and path.
fn endpoint_name(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

async fn participant_ids(server: &ServerProcess, room: &str) -> BTreeSet<String> {
    let resp = get_bearer(
        server.addr(),
        &format!("/webrtc/rooms/{room}/participants"),
        &token("probe"),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["participant_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn metric(server: &ServerProcess, line_prefix: &str) -> f64 {
    let body = switchboard_e2e::http::get(server.addr(), "/metrics")
        .await
        .text();
    body.lines()
        .find_map(|l| {
            l.strip_prefix(line_prefix)
                .map(|v| v.trim().parse().unwrap_or(0.0))
        })
        .unwrap_or_else(|| panic!("no {line_prefix:?} in /metrics:\n{body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_signed_per_standard_webhooks_and_a_tampered_one_fails() {
    let receiver = Receiver::start().await;
    let (all_secret, rooms_secret) = (new_secret(1), new_secret(2));
    let endpoints = json!([{
        "url": receiver.url("/rooms"),
        "name": "rooms-only",
        "secret": rooms_secret,
        "events": ["room_started", "room_finished"],
    }]);
    let server = options(&receiver.url("/all"), &all_secret, "solo")
        .env("SWITCHBOARD_WEBHOOK_ENDPOINTS", endpoints.to_string())
        .start();
    let alice_token = Claims::user("alice")
        .metadata(json!({"plan": "pro"}))
        .hs256(SECRET);
    let alice = Client::join(server.addr(), "sig", &alice_token).await;
    let mut bob = Client::join(server.addr(), "sig", &token("bob")).await;
    let bob_id = bob.pid();
    let patch = send_bearer(
        server.addr(),
        "PATCH",
        &format!("/webrtc/api/v1/rooms/sig/participants/{bob_id}"),
        &admin(),
        Some(&json!({"metadata": {"muted": true}})),
    )
    .await;
    assert_eq!(patch.status, 200, "{}", patch.text());
    let alice_id = alice.pid();
    alice.close().await;
    bob.recv_until_type("user-left", Duration::from_secs(5))
        .await;
    bob.close().await;

    let all = receiver
        .wait_until("7 events on /all and 2 on /rooms", ARRIVAL, |d| {
            d.iter().filter(|r| r.path == "/all").count() >= 7
                && d.iter().filter(|r| r.path == "/rooms").count() >= 2
        })
        .await;
    let on_all: Vec<&Received> = all.iter().filter(|r| r.path == "/all").collect();
    let kinds: Vec<(&str, &str)> = on_all
        .iter()
        .map(|r| (r.kind(), r.participant_id()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("room_started", alice_id.as_str()),
            ("participant_joined", alice_id.as_str()),
            ("participant_joined", bob_id.as_str()),
            ("participant_updated", bob_id.as_str()),
            ("participant_left", alice_id.as_str()),
            ("participant_left", bob_id.as_str()),
            ("room_finished", bob_id.as_str()),
        ]
    );
    let now = switchboard_e2e::token::now_secs() as i64;
    for r in &on_all {
        assert!(
            verify(&all_secret, &r.id, &r.timestamp, &r.body, &r.signature),
            "signature of {}",
            r.id
        );
        assert!(
            !verify(&rooms_secret, &r.id, &r.timestamp, &r.body, &r.signature),
            "another endpoint's secret verifies {}",
            r.id
        );
        let mut tampered = r.body.clone();
        let at = tampered.iter().position(|b| *b == b'1').unwrap_or(0);
        tampered[at] = if tampered[at] == b'1' { b'2' } else { b'1' };
        assert!(
            !verify(&all_secret, &r.id, &r.timestamp, &tampered, &r.signature),
            "a tampered body verifies"
        );
        assert!(
            !verify(
                &all_secret,
                &format!("{}x", r.id),
                &r.timestamp,
                &r.body,
                &r.signature
            ),
            "another id verifies"
        );
        let ts: i64 = r.timestamp.parse().unwrap();
        assert!(
            (now - ts).abs() < 120,
            "webhook-timestamp {ts} is not now ({now})"
        );
        assert_eq!(
            r.json["data"]["id"],
            r.id.as_str(),
            "webhook-id is the event id"
        );
        assert_eq!(r.json["data"]["room_id"], "sig");
        assert_eq!(r.json["data"]["instance_id"], "solo");
        assert!(
            switchboard_e2e::client::is_rfc3339_millis_utc(r.json["timestamp"].as_str().unwrap()),
            "{}",
            r.json
        );
    }
    let ids: HashSet<&str> = on_all.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), 7, "every event has its own id");
    let joined = &on_all[1].json["data"]["participant"];
    assert_eq!(joined["user_id"], "alice");
    assert_eq!(joined["username"], "User alice");
    assert_eq!(joined["metadata"], json!({"plan": "pro"}));
    assert_eq!(
        on_all[3].json["data"]["participant"]["metadata"],
        json!({"muted": true})
    );
    assert_eq!(on_all[4].json["data"]["reason"], "closed");
    check_rooms(&dedupe(
        &all.iter()
            .filter(|r| r.path == "/all")
            .cloned()
            .collect::<Vec<_>>(),
    ));

    let on_rooms: Vec<&Received> = all.iter().filter(|r| r.path == "/rooms").collect();
    let kinds: Vec<&str> = on_rooms.iter().map(|r| r.kind()).collect();
    assert_eq!(kinds, ["room_started", "room_finished"], "the filter holds");
    for r in &on_rooms {
        assert!(
            verify(&rooms_secret, &r.id, &r.timestamp, &r.body, &r.signature),
            "its own secret"
        );
        assert!(!verify(
            &all_secret,
            &r.id,
            &r.timestamp,
            &r.body,
            &r.signature
        ));
    }
    assert_eq!(
        metric(
            &server,
            "switchboard_webhook_deliveries_total{endpoint=\"rooms-only\",outcome=\"delivered\"}"
        )
        .await,
        2.0
    );
}

#[test]
fn a_bad_webhook_setting_stops_start_up_with_one_line_naming_it() {
    let out = ServerOptions::with_secret(SECRET)
        .env("SWITCHBOARD_WEBHOOK_URLS", "http://127.0.0.1:9/hook")
        .env("SWITCHBOARD_WEBHOOK_SECRET", "not-a-whsec-secret")
        .run_to_exit(Duration::from_secs(10));
    assert_eq!(out.code, Some(78), "{:?}", out.stderr);
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("config error: webhooks.secret (SWITCHBOARD_WEBHOOK_SECRET / --webhook-secret): expected a Standard Webhooks secret"), "{lines:?}");
    assert!(
        !lines[0].contains("not-a-whsec-secret"),
        "the secret is echoed: {lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_500_joins_and_leaves_20_rooms_give_exactly_the_facts_in_order() {
    let redis = RedisProcess::start();
    let receiver = Receiver::start().await;
    let secret = new_secret(3);
    let servers = cluster(
        &redis,
        &receiver.url("/hook"),
        &secret,
        &["bulk-a", "bulk-b", "bulk-c"],
        "5",
    )
    .await;
    let room = |i: usize| format!("bulk-{}", i % 20);
    let mut present: Vec<(usize, String, Client)> = Vec::new();
    let mut joined: BTreeSet<String> = BTreeSet::new();
    let mut left: BTreeSet<String> = BTreeSet::new();
    for round in 0..5usize {
        let joins = (round * 100..round * 100 + 100).map(|i| {
            let addr = servers[i % 3].addr();
            let (room, user) = (room(i), format!("u{i}"));
            async move {
                (
                    i,
                    room.clone(),
                    Client::join(addr, &room, &token(&user)).await,
                )
            }
        });
        for (i, room, client) in join_all(joins).await {
            joined.insert(client.pid());
            present.push((i, room, client));
        }
        // Some rooms empty completely (their count crosses 0 again), the others lose one.
        let mut leaving = Vec::new();
        let mut kept = Vec::new();
        let mut lost_one: HashSet<String> = HashSet::new();
        for (i, room, client) in present.drain(..) {
            let r = i % 20;
            if (r + round) % 4 == 0 || lost_one.insert(room.clone()) {
                leaving.push(client);
            } else {
                kept.push((i, room, client));
            }
        }
        present = kept;
        for c in &leaving {
            left.insert(c.pid());
        }
        join_all(leaving.into_iter().map(Client::close)).await;
    }
    assert_eq!(joined.len(), 500);
    let mut expected: BTreeSet<(String, String)> = joined
        .iter()
        .map(|p| ("participant_joined".to_owned(), p.clone()))
        .collect();
    expected.extend(
        left.iter()
            .map(|p| ("participant_left".to_owned(), p.clone())),
    );
    let delivered = receiver
        .wait_until("every join and leave", ARRIVAL, |d| {
            facts(&dedupe(d)).is_superset(&expected)
        })
        .await;
    // Give a stray extra event (there must be none) the time to arrive: every queue empty.
    let deadline = Instant::now() + Duration::from_secs(15);
    for s in &servers {
        let depth = format!(
            "switchboard_webhook_queue_depth{{endpoint=\"{}\"}}",
            endpoint_name(&receiver.url("/hook"))
        );
        while metric(s, &depth).await > 0.0 {
            assert!(Instant::now() < deadline, "queue never drained");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    drop(delivered);
    let delivered = dedupe(&receiver.delivered());
    assert_eq!(
        facts(&delivered),
        expected,
        "exactly the facts that happened"
    );
    let per_fact = delivered
        .iter()
        .filter(|e| e.kind().starts_with("participant_"))
        .count();
    assert_eq!(per_fact, expected.len(), "one event per fact");
    let counts = check_rooms(&delivered);
    for r in 0..20 {
        let room = format!("bulk-{r}");
        let ids = participant_ids(&servers[r % 3], &room).await;
        let want: BTreeSet<String> = present
            .iter()
            .filter(|(_, rm, _)| *rm == room)
            .map(|(_, _, c)| c.pid())
            .collect();
        assert_eq!(ids, want, "room {room}: participants endpoint");
        assert_eq!(
            counts.get(&room).copied().unwrap_or(0),
            ids.len() as i64,
            "room {room}: count from the events"
        );
    }
    for e in &delivered {
        assert!(verify(&secret, &e.id, &e.timestamp, &e.body, &e.signature));
    }
    // Delivered everywhere, nothing is kept: the registry empties, the streams of rooms that
    // finished go and those of live rooms are empty.
    let live: BTreeSet<String> = present
        .iter()
        .map(|(_, room, _)| format!("switchboard:room:{{{room}}}:webhooks"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let streams: BTreeSet<String> = redis
            .keys("switchboard:room:*:webhooks")
            .into_iter()
            .collect();
        let registry = redis.command(&["SCARD", "switchboard:webhook_rooms"]);
        let empty = streams
            .iter()
            .all(|k| redis.command(&["XLEN", k]) == switchboard_e2e::redis::Reply::Integer(0));
        if streams == live && empty && registry == switchboard_e2e::redis::Reply::Integer(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still kept after delivery: {streams:?}, registry {registry:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_receiver_outage_of_10_s_every_event_arrives_in_order() {
    let redis = RedisProcess::start();
    let receiver = Receiver::start().await;
    receiver.refuse();
    let secret = new_secret(4);
    let servers = cluster(
        &redis,
        &receiver.url("/hook"),
        &secret,
        &["down-a", "down-b"],
        "5",
    )
    .await;
    let started = Instant::now();
    let mut expected = BTreeSet::new();
    let mut clients = Vec::new();
    for i in 0..30usize {
        let c = Client::join(
            servers[i % 2].addr(),
            &format!("down-{}", i % 5),
            &token(&format!("d{i}")),
        )
        .await;
        expected.insert(("participant_joined".to_owned(), c.pid()));
        clients.push(c);
    }
    for c in clients.drain(..15) {
        expected.insert(("participant_left".to_owned(), c.pid()));
        c.close().await;
    }
    // Connection refused for 5 s, then 500s for 5 s.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(started.elapsed())).await;
    receiver.set_mode(Mode::Status(500));
    receiver.listen_again().await;
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(started.elapsed())).await;
    assert!(receiver.delivered().is_empty());
    assert!(
        !receiver.requests().is_empty(),
        "nothing was tried while the receiver answered 500"
    );
    receiver.set_mode(Mode::Accept);
    receiver
        .wait_until("every event", ARRIVAL, |d| {
            facts(&dedupe(d)).is_superset(&expected)
        })
        .await;
    let delivered = dedupe(&receiver.delivered());
    assert_eq!(facts(&delivered), expected);
    check_rooms(&delivered);
    check_attempt_order(&receiver.requests());
    let mut outcomes = BTreeMap::new();
    for outcome in ["unreachable", "rejected", "delivered"] {
        let mut total = 0.0;
        for s in &servers {
            let name = endpoint_name(&receiver.url("/hook"));
            total += metric(s, &format!("switchboard_webhook_deliveries_total{{endpoint=\"{name}\",outcome=\"{outcome}\"}}")).await;
        }
        outcomes.insert(outcome, total);
    }
    assert!(outcomes.values().all(|n| *n > 0.0), "{outcomes:?}");
    let logs: Vec<String> = servers.iter().flat_map(|s| s.stderr_lines()).collect();
    assert!(
        logs.iter().any(|l| l.contains("webhook endpoint failing")),
        "no failing line"
    );
    assert!(
        logs.iter()
            .any(|l| l.contains("webhook endpoint recovered")),
        "no recovery line"
    );
    assert!(
        !logs.iter().any(|l| l.contains(&secret)),
        "a secret in the logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instances_backlog_is_delivered_by_another_and_instance_lost_comes_once() {
    let redis = RedisProcess::start();
    let receiver = Receiver::start().await;
    receiver.set_mode(Mode::Status(500));
    let secret = new_secret(5);
    let mut servers = cluster(
        &redis,
        &receiver.url("/hook"),
        &secret,
        &["kill-a", "kill-b", "kill-c"],
        "2",
    )
    .await;
    let mut victims = Vec::new();
    for i in 0..6usize {
        victims.push(
            Client::join(
                servers[0].addr(),
                &format!("kill-{}", i % 3),
                &token(&format!("k{i}")),
            )
            .await,
        );
    }
    let mut observer = Client::join(servers[1].addr(), "kill-0", &token("observer")).await;
    let victim_ids: BTreeSet<String> = victims.iter().map(Client::pid).collect();
    receiver
        .wait_until_requests(3, Duration::from_secs(10))
        .await;
    servers[0].sigkill();
    let killed = Instant::now();
    receiver.set_mode(Mode::Accept);
    // The observer hears the victims of its room leave, once each.
    for _ in 0..2 {
        let left = observer.expect_type("user-left").await;
        assert_eq!(left["payload"]["reason"], "instance_lost");
    }
    let delivered = receiver
        .wait_until(
            "the victims' joins and instance_lost leaves",
            ARRIVAL,
            |d| {
                let f = facts(&dedupe(d));
                victim_ids.iter().all(|p| {
                    f.contains(&("participant_joined".into(), p.clone()))
                        && f.contains(&("participant_left".into(), p.clone()))
                }) && dedupe(d)
                    .iter()
                    .filter(|e| e.kind() == "room_finished")
                    .count()
                    == 2
            },
        )
        .await;
    let delivered = dedupe(&delivered);
    for p in &victim_ids {
        let leaves: Vec<&Received> = delivered
            .iter()
            .filter(|e| e.kind() == "participant_left" && e.participant_id() == p)
            .collect();
        assert_eq!(leaves.len(), 1, "{p}: one participant_left");
        assert_eq!(leaves[0].reason(), "instance_lost");
        assert_eq!(leaves[0].json["data"]["instance_id"], "kill-a");
    }
    // Everything was delivered after the kill: by the survivors, from the dead one's backlog.
    assert!(receiver.delivered().iter().all(|r| r.answered > killed));
    let counts = check_rooms(&delivered);
    assert_eq!(counts.get("kill-0"), Some(&1), "the observer stays");
    assert_eq!(counts.get("kill-1"), Some(&0));
    assert_eq!(
        participant_ids(&servers[2], "kill-0").await,
        BTreeSet::from([observer.pid()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_keeps_undelivered_events_and_leaves_during_it_are_told() {
    // Persistence on: a restart keeps what Redis held (and the docs say what happens without).
    let mut redis = RedisProcess::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let receiver = Receiver::start().await;
    receiver.set_mode(Mode::Status(500));
    let secret = new_secret(6);
    let servers = cluster(
        &redis,
        &receiver.url("/hook"),
        &secret,
        &["rr-a", "rr-b"],
        "5",
    )
    .await;
    let mut expected = BTreeSet::new();
    let mut clients = Vec::new();
    for i in 0..6usize {
        let c = Client::join(
            servers[i % 2].addr(),
            &format!("rr-{}", i % 2),
            &token(&format!("r{i}")),
        )
        .await;
        expected.insert(("participant_joined".to_owned(), c.pid()));
        clients.push(c);
    }
    redis.kill();
    for c in clients.drain(..2) {
        expected.insert(("participant_left".to_owned(), c.pid()));
        c.close().await;
    }
    redis.restart_same_port();
    for s in &servers {
        s.wait_ready(true, Duration::from_secs(20)).await;
    }
    for i in 6..8usize {
        let c = Client::join(
            servers[i % 2].addr(),
            &format!("rr-{}", i % 2),
            &token(&format!("r{i}")),
        )
        .await;
        expected.insert(("participant_joined".to_owned(), c.pid()));
        clients.push(c);
    }
    receiver.set_mode(Mode::Accept);
    receiver
        .wait_until("every event across the restart", ARRIVAL, |d| {
            facts(&dedupe(d)).is_superset(&expected)
        })
        .await;
    let delivered = dedupe(&receiver.delivered());
    assert_eq!(facts(&delivered), expected);
    for e in delivered.iter().filter(|e| e.kind() == "participant_left") {
        assert_eq!(
            e.reason(),
            "closed",
            "a leave during the outage keeps its reason"
        );
    }
    let counts = check_rooms(&delivered);
    for r in 0..2 {
        let room = format!("rr-{r}");
        let ids = participant_ids(&servers[0], &room).await;
        assert_eq!(
            counts.get(&room).copied(),
            Some(ids.len() as i64),
            "room {room}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_does_not_hold_up_signaling() {
    let redis = RedisProcess::start();
    let receiver = Receiver::start().await;
    receiver.set_mode(Mode::Slow(Duration::from_secs(5)));
    let secret = new_secret(7);
    let servers = cluster(&redis, &receiver.url("/hook"), &secret, &["slow-a"], "5").await;
    let addr = servers[0].addr();
    let mut a = Client::join(addr, "slow", &token("sa")).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while receiver.in_flight() == 0 {
        assert!(Instant::now() < deadline, "no webhook request arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // While the receiver holds its first request: joins and relays complete.
    let mut b = Client::join(addr, "slow", &token("sb")).await;
    a.expect_type("user-joined").await;
    for _ in 0..20 {
        switchboard_e2e::client::assert_pair_relays(&mut a, &mut b).await;
    }
    let mut others = Vec::new();
    for i in 0..10 {
        others.push(Client::join(addr, &format!("slow-{i}"), &token(&format!("so{i}"))).await);
    }
    assert!(
        receiver.requests().is_empty(),
        "signaling waited for a webhook answer"
    );
    assert!(receiver.in_flight() >= 1);
    receiver.set_mode(Mode::Accept);
    let delivered = receiver
        .wait_until("room_started and the 12 joins", ARRIVAL, |d| {
            dedupe(d)
                .iter()
                .filter(|e| e.kind() == "participant_joined")
                .count()
                == 12
        })
        .await;
    check_rooms(&dedupe(&delivered));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_cluster_each_rooms_events_live_in_its_slot_and_all_arrive() {
    let cluster = switchboard_e2e::redis_cluster::RedisCluster::start(3, 0);
    let receiver = Receiver::start().await;
    let secret = new_secret(8);
    let servers: Vec<ServerProcess> = ["cl-a", "cl-b"]
        .iter()
        .map(|id| {
            options(&receiver.url("/hook"), &secret, id)
                .env("REDIS_CLUSTER_URLS", cluster.urls())
                .env("WEBRTC_ROOM_PRESENCE_TTL", "5")
                .start()
        })
        .collect();
    for s in &servers {
        s.wait_ready(true, Duration::from_secs(20)).await;
    }
    receiver.set_mode(Mode::Status(500));
    let mut expected = BTreeSet::new();
    let mut clients = Vec::new();
    for i in 0..24usize {
        let c = Client::join(
            servers[i % 2].addr(),
            &format!("cl-{}", i % 12),
            &token(&format!("c{i}")),
        )
        .await;
        expected.insert(("participant_joined".to_owned(), c.pid()));
        clients.push(c);
    }
    // While undelivered, each room's stream sits on the master owning the room's slot.
    for r in 0..12 {
        let key = format!("switchboard:room:{{cl-{r}}}:webhooks");
        let owner = cluster.master_of(cluster.keyslot(&key));
        match cluster.command_on(owner, &["XLEN", &key]) {
            switchboard_e2e::redis::Reply::Integer(n) => assert!(n >= 3, "{key}: {n} entries"),
            other => panic!("{key}: {other:?}"),
        }
    }
    for c in clients.drain(..12) {
        expected.insert(("participant_left".to_owned(), c.pid()));
        c.close().await;
    }
    receiver.set_mode(Mode::Accept);
    receiver
        .wait_until("every event on the cluster", ARRIVAL, |d| {
            facts(&dedupe(d)).is_superset(&expected)
        })
        .await;
    let delivered = dedupe(&receiver.delivered());
    assert_eq!(facts(&delivered), expected);
    let counts = check_rooms(&delivered);
    for r in 0..12 {
        let room = format!("cl-{r}");
        let ids = participant_ids(&servers[r % 2], &room).await;
        assert_eq!(
            counts.get(&room).copied(),
            Some(ids.len() as i64),
            "room {room}"
        );
    }
}
