//! The server API across a cluster: two real server processes on one real redis-server. A call
//! answered by instance A reads and acts on the participants instance B holds: the room list,
//! removing a participant and a user (4001), closing a room (4002), server messages and
//! metadata updates.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchboard_e2e::client::Client;
use switchboard_e2e::http::{get_bearer, send_bearer, HttpResponse};
use switchboard_e2e::redis::{RedisProcess, Reply};
use switchboard_e2e::server::{ServerOptions, ServerProcess};
use switchboard_e2e::token::Claims;

const SECRET: &str = "e2e-redis-api-secret-0123456789abcdef";

fn token(user: &str) -> String {
    Claims::user(user).hs256(SECRET)
}

fn admin() -> String {
    Claims::room_admin().hs256(SECRET)
}

fn ok_json(resp: &HttpResponse) -> Value {
    assert_eq!(resp.status, 200, "body: {}", resp.text());
    resp.json()
}

/// Two instances on one Redis, both ready.
async fn cluster(redis: &RedisProcess) -> (ServerProcess, ServerProcess) {
    let start = |id: &str| {
        ServerOptions::with_secret(SECRET)
            .env("REDIS_URL", redis.url())
            .env("SWITCHBOARD_INSTANCE_ID", id)
            .env("WEBRTC_ROOM_PRESENCE_TTL", "3")
            .start()
    };
    let (a, b) = (start("api-a"), start("api-b"));
    for s in [&a, &b] {
        s.wait_ready(true, Duration::from_secs(15)).await;
    }
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_instance_lists_every_instances_rooms_with_their_creation_time() {
    let redis = RedisProcess::start();
    let (a, b) = cluster(&redis).await;
    let first = Client::join(b.addr(), "shared", &token("on-b")).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut second = Client::join(a.addr(), "shared", &token("on-a")).await;
    let _solo = Client::join(b.addr(), "only-b", &token("solo")).await;

    let room = ok_json(&get_bearer(a.addr(), "/webrtc/api/v1/rooms/shared", &admin()).await);
    assert_eq!(room["participant_count"], 2, "{room}");
    let users: Vec<&str> = room["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["on-b", "on-a"]);
    let created = room["created_at"].as_str().unwrap().to_string();
    let first_joined = room["participants"][0]["joined_at"].as_str().unwrap();
    let second_joined = room["participants"][1]["joined_at"].as_str().unwrap();
    assert!(
        created.as_str() >= first_joined && created.as_str() < second_joined,
        "{room}"
    );

    let list = ok_json(&get_bearer(a.addr(), "/webrtc/api/v1/rooms", &admin()).await);
    assert_eq!(
        list,
        json!({"rooms": [
            {"room_id": "only-b", "created_at": list["rooms"][0]["created_at"], "participant_count": 1},
            {"room_id": "shared", "created_at": created, "participant_count": 2},
        ]})
    );

    // The participant who created the room leaves; the room keeps its creation time.
    first.close().await;
    let left = second.expect_type("user-left").await;
    assert_eq!(left["payload"]["user_id"], "on-b");
    let room = ok_json(&get_bearer(b.addr(), "/webrtc/api/v1/rooms/shared", &admin()).await);
    assert_eq!(room["created_at"], created.as_str());
    assert_eq!(room["participant_count"], 1);

    // Emptied, it is gone everywhere, its creation time included.
    second.close().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let resp = get_bearer(b.addr(), "/webrtc/api/v1/rooms/shared", &admin()).await;
        if resp.status == 404 {
            assert_eq!(resp.json()["error"]["code"], "room_not_found");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "room still listed: {}",
            resp.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Only the departed records are left, and they expire (within one presence TTL).
    let keys = redis.keys("switchboard:room:{shared}:*");
    for key in &keys {
        assert!(key.contains(":departed:"), "{keys:?}");
        match redis.command(&["TTL", key]) {
            Reply::Integer(ttl) => assert!(ttl > 0, "{key} never expires"),
            other => panic!("TTL {key}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_set_on_one_instance_is_seen_on_the_other() {
    let redis = RedisProcess::start();
    let (a, b) = cluster(&redis).await;
    let meta = json!({"role": "host"});
    let mut watcher = Client::join(a.addr(), "m", &token("watcher")).await;
    let host = Client::join(
        b.addr(),
        "m",
        &Claims::user("host").metadata(meta.clone()).hs256(SECRET),
    )
    .await;
    let joined = watcher.expect_type("user-joined").await;
    assert_eq!(joined["payload"]["metadata"], meta);
    let listed = host.room_state.as_ref().unwrap()["payload"]["participants"][1].clone();
    assert_eq!(listed["metadata"], meta);
    let room = ok_json(&get_bearer(a.addr(), "/webrtc/api/v1/rooms/m", &admin()).await);
    assert_eq!(room["participants"][1]["metadata"], meta);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_on_one_instance_removes_closes_and_messages_participants_of_the_other() {
    let redis = RedisProcess::start();
    let (a, b) = cluster(&redis).await;
    let mut on_a = Client::join(a.addr(), "x", &token("on-a")).await;
    let mut on_b = Client::join(b.addr(), "x", &token("on-b")).await;
    let mut also_b = Client::join(b.addr(), "x", &token("also-b")).await;
    on_a.expect_type("user-joined").await;
    on_a.expect_type("user-joined").await;
    on_b.expect_type("user-joined").await;

    // A message sent through A reaches B's participants, and a targeted one only its target.
    let resp = send_bearer(
        a.addr(),
        "POST",
        "/webrtc/api/v1/rooms/x/messages",
        &admin(),
        Some(&json!({"payload": {"hello": "all"}})),
    )
    .await;
    assert_eq!(resp.status, 202, "{}", resp.text());
    assert_eq!(resp.json()["recipients"], 3);
    for client in [&mut on_a, &mut on_b, &mut also_b] {
        let msg = client.expect_type("server-message").await;
        assert_eq!(msg["payload"], json!({"hello": "all"}));
        assert_eq!(msg["sender_id"], Value::Null);
    }
    let resp = send_bearer(
        a.addr(),
        "POST",
        "/webrtc/api/v1/rooms/x/messages",
        &admin(),
        Some(&json!({"to": also_b.pid(), "payload": "psst"})),
    )
    .await;
    assert_eq!(resp.status, 202);
    assert_eq!(
        also_b.expect_type("server-message").await["payload"],
        "psst"
    );

    // Metadata replaced through A: everyone hears it, and B lists it.
    let on_b_pid = on_b.pid();
    let path = format!("/webrtc/api/v1/rooms/x/participants/{on_b_pid}");
    let resp = send_bearer(
        a.addr(),
        "PATCH",
        &path,
        &admin(),
        Some(&json!({"metadata": {"m": 1}})),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    for client in [&mut on_a, &mut on_b, &mut also_b] {
        let msg = client.expect_type("participant-updated").await;
        assert_eq!(msg["payload"]["participant_id"], on_b_pid.as_str());
        assert_eq!(msg["payload"]["metadata"], json!({"m": 1}));
    }
    let room = ok_json(&get_bearer(b.addr(), "/webrtc/api/v1/rooms/x", &admin()).await);
    let listed = room["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["user_id"] == "on-b")
        .unwrap()
        .clone();
    assert_eq!(listed["metadata"], json!({"m": 1}));

    // Removing B's participant through A: 4001 there, user-left removed everywhere.
    let resp = send_bearer(a.addr(), "DELETE", &path, &admin(), None).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    on_b.expect_close(4001, "removed").await;
    for client in [&mut on_a, &mut also_b] {
        let left = client.expect_type("user-left").await;
        assert_eq!(left["payload"]["user_id"], "on-b");
        assert_eq!(left["payload"]["reason"], "removed");
        assert_eq!(left["payload"]["metadata"], json!({"m": 1}));
    }

    // Closing the room through B closes A's participant too.
    let resp = send_bearer(b.addr(), "DELETE", "/webrtc/api/v1/rooms/x", &admin(), None).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    for client in [&mut on_a, &mut also_b] {
        let (messages, close) = client.collect_until_close(Duration::from_secs(5)).await;
        assert_eq!(close, (4002, "room_closed".to_string()), "{messages:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnecting_a_user_through_one_instance_closes_its_connections_on_both() {
    let redis = RedisProcess::start();
    let (a, b) = cluster(&redis).await;
    let mut tab_a = Client::join(a.addr(), "r1", &token("dave")).await;
    let mut tab_b = Client::join(b.addr(), "r2", &token("dave")).await;
    let mut other = Client::join(b.addr(), "r1", &token("erin")).await;
    tab_a.expect_type("user-joined").await;
    let resp = send_bearer(
        a.addr(),
        "DELETE",
        "/webrtc/api/v1/users/dave/connections",
        &admin(),
        None,
    )
    .await;
    let body = ok_json(&resp);
    assert_eq!(body["removed"].as_array().unwrap().len(), 2, "{body}");
    tab_a.expect_close(4001, "removed").await;
    tab_b.expect_close(4001, "removed").await;
    let left = other.expect_type("user-left").await;
    assert_eq!(left["payload"]["reason"], "removed");
    other.assert_alive_and_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_redis_does_not_confirm_is_delivery_unknown_and_still_applied_here() {
    let redis = RedisProcess::start();
    let server = ServerOptions::with_secret(SECRET)
        .env("REDIS_URL", redis.url())
        .env("SWITCHBOARD_INSTANCE_ID", "api-paused")
        .env("WEBRTC_ROOM_PRESENCE_TTL", "3")
        .env("REDIS_PUBLISH_TIMEOUT_SECS", "1")
        .start();
    server.wait_ready(true, Duration::from_secs(15)).await;
    let mut goes = Client::join(server.addr(), "paused", &token("goes")).await;
    let path = format!("/webrtc/api/v1/rooms/paused/participants/{}", goes.pid());
    // Reads still work; the PUBLISH that carries the removal waits past its timeout.
    assert_eq!(
        redis.command(&["CLIENT", "PAUSE", "3000", "WRITE"]),
        switchboard_e2e::redis::Reply::Status("OK".into())
    );
    let resp = send_bearer(server.addr(), "DELETE", &path, &admin(), None).await;
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert_eq!(resp.json()["error"]["code"], "delivery_unknown");
    // This instance applied it anyway: the participant is closed as removed.
    goes.expect_close(4001, "removed").await;
}
