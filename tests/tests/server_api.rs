//! The server API (`/webrtc/api/v1`) of one real server process with the in-process bus: who
//! may call each endpoint (no token, a participant token, a grant limited to other rooms), the
//! room list and one room with real creation times, unknown rooms and participants, removing
//! a participant or a user (the close codes the removed see, `user-left` `removed`), closing a
//! room, server messages, replacing metadata (`participant-updated`), bad bodies, the OpenAPI
//! document it serves, and metadata from the token claim (room-state, user-joined, the REST
//! endpoints, the size limit at join).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchboard_e2e::client::Client;
use switchboard_e2e::http::{get, get_bearer, send, send_bearer, HttpResponse};
use switchboard_e2e::server::{ServerOptions, ServerProcess};
use switchboard_e2e::token::{tamper_signature, Claims};

const SECRET: &str = "e2e-server-api-secret-0123456789ab";
/// The default `limits.max_metadata_bytes`.
const MAX_METADATA_BYTES: usize = 1024;

fn server() -> ServerProcess {
    ServerOptions::with_secret(SECRET).start()
}

fn admin() -> String {
    Claims::room_admin().hs256(SECRET)
}

fn user(name: &str) -> String {
    Claims::user(name).hs256(SECRET)
}

/// Asserts a JSON error with this status and code.
fn assert_error(resp: &HttpResponse, status: u16, code: &str) {
    assert_eq!(resp.status, status, "body: {}", resp.text());
    let ct = resp.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("application/json"), "content-type {ct:?}");
    let body = resp.json();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

fn ok_json(resp: &HttpResponse) -> Value {
    assert_eq!(resp.status, 200, "body: {}", resp.text());
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    resp.json()
}

#[tokio::test]
async fn only_a_room_admin_grant_may_call_the_api() {
    let server = server();
    let addr = server.addr();
    let _alice = Client::join(addr, "a-room", &user("alice")).await;
    for path in ["/webrtc/api/v1/rooms", "/webrtc/api/v1/rooms/a-room"] {
        assert_error(&get(addr, path).await, 401, "missing_token");
        let tampered = tamper_signature(&admin());
        assert_error(
            &get_bearer(addr, path, &tampered).await,
            401,
            "invalid_token",
        );
        let expired = Claims::room_admin().expires_in(-10).hs256(SECRET);
        assert_error(
            &get_bearer(addr, path, &expired).await,
            401,
            "token_expired",
        );
        // A participant token, even one that may join the room, never opens the API.
        assert_error(
            &get_bearer(addr, path, &user("alice")).await,
            403,
            "grant_required",
        );
        let false_grant = Claims::user("x")
            .grants(json!({"room_admin": false}))
            .hs256(SECRET);
        assert_error(
            &get_bearer(addr, path, &false_grant).await,
            403,
            "grant_required",
        );
        // The admin token in the query is not accepted: it would end up in access logs.
        let in_query = format!("{path}?token={}", admin());
        assert_error(&get(addr, &in_query).await, 401, "missing_token");
        assert_eq!(get_bearer(addr, path, &admin()).await.status, 200);
    }
    // A malformed grant is an invalid token, not a missing grant.
    let bad = Claims::user("x")
        .grants(json!({"room_admin": "yes"}))
        .hs256(SECRET);
    assert_error(
        &get_bearer(addr, "/webrtc/api/v1/rooms", &bad).await,
        401,
        "invalid_token",
    );
}

#[tokio::test]
async fn a_grant_limited_to_some_rooms_sees_and_acts_on_only_those() {
    let server = server();
    let addr = server.addr();
    let _a = Client::join(addr, "mine", &user("a")).await;
    let _b = Client::join(addr, "theirs", &user("b")).await;
    let limited = Claims::room_admin().rooms(&["mine"]).hs256(SECRET);
    let list = ok_json(&get_bearer(addr, "/webrtc/api/v1/rooms", &limited).await);
    let ids: Vec<&str> = list["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["room_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["mine"], "{list}");
    assert_eq!(
        get_bearer(addr, "/webrtc/api/v1/rooms/mine", &limited)
            .await
            .status,
        200
    );
    let other = get_bearer(addr, "/webrtc/api/v1/rooms/theirs", &limited).await;
    assert_error(&other, 403, "room_forbidden");
    // Forbidden whether or not anyone is there: the grant decides before presence is read.
    let empty = get_bearer(addr, "/webrtc/api/v1/rooms/nobody-here", &limited).await;
    assert_error(&empty, 403, "room_forbidden");
}

#[tokio::test]
async fn rooms_are_listed_with_counts_and_their_real_creation_time() {
    let server = server();
    let addr = server.addr();
    let empty = ok_json(&get_bearer(addr, "/webrtc/api/v1/rooms", &admin()).await);
    assert_eq!(empty, json!({"rooms": []}));

    let first = Client::join(addr, "alpha", &user("first")).await;
    let first_joined = first.room_state.as_ref().unwrap()["payload"]["participants"][0]
        ["joined_at"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let mut second = Client::join(addr, "alpha", &user("second")).await;
    let _other = Client::join(addr, "beta", &user("third")).await;

    let room = ok_json(&get_bearer(addr, "/webrtc/api/v1/rooms/alpha", &admin()).await);
    let created = room["created_at"].as_str().unwrap().to_string();
    assert!(
        created >= first_joined,
        "{created} before the first join {first_joined}"
    );
    let second_joined = room["participants"][1]["joined_at"].as_str().unwrap();
    assert!(created.as_str() < second_joined, "{room}");
    assert_eq!(room["participant_count"], 2);
    assert_eq!(room["room_id"], "alpha");
    assert_eq!(room["participants"][0]["user_id"], "first");
    assert_eq!(room["participants"][0]["username"], "User first");
    assert_eq!(
        room["participants"][0]["participant_id"],
        first.pid().as_str()
    );
    assert_eq!(
        room["participants"][1]["participant_id"],
        second.pid().as_str()
    );
    assert!(
        room["participants"][0].get("instance_id").is_none(),
        "{room}"
    );

    // The first participant leaves: the room keeps the time it was created, which is then
    // earlier than every remaining participant's join.
    first.close().await;
    second.expect_type("user-left").await;
    let room = ok_json(&get_bearer(addr, "/webrtc/api/v1/rooms/alpha", &admin()).await);
    assert_eq!(room["created_at"], created.as_str());
    assert_eq!(room["participant_count"], 1);

    let list = ok_json(&get_bearer(addr, "/webrtc/api/v1/rooms", &admin()).await);
    let rooms = list["rooms"].as_array().unwrap();
    assert_eq!(rooms.len(), 2, "{list}");
    assert_eq!(rooms[0]["room_id"], "alpha");
    assert_eq!(rooms[0]["participant_count"], 1);
    assert_eq!(rooms[0]["created_at"], created.as_str());
    assert_eq!(rooms[1]["room_id"], "beta");
    assert_eq!(rooms[1]["participant_count"], 1);

    // Emptied, the room is gone.
    second.close().await;
    let gone = get_bearer(addr, "/webrtc/api/v1/rooms/alpha", &admin()).await;
    assert_error(&gone, 404, "room_not_found");
}

#[tokio::test]
async fn unknown_rooms_bad_ids_and_unknown_endpoints_are_json_errors() {
    let server = server();
    let addr = server.addr();
    let token = admin();
    assert_error(
        &get_bearer(addr, "/webrtc/api/v1/rooms/nobody", &token).await,
        404,
        "room_not_found",
    );
    assert_error(
        &get_bearer(addr, "/webrtc/api/v1/rooms/bad%20id", &token).await,
        400,
        "invalid_room_id",
    );
    let long = format!("/webrtc/api/v1/rooms/{}", "a".repeat(65));
    assert_error(
        &get_bearer(addr, &long, &token).await,
        400,
        "invalid_room_id",
    );
    assert_error(
        &get_bearer(addr, "/webrtc/api/v1/nothing", &token).await,
        404,
        "not_found",
    );
}

#[tokio::test]
async fn the_served_openapi_document_is_the_committed_one() {
    let server = server();
    let resp = get(server.addr(), "/webrtc/api/v1/openapi.json").await;
    assert_eq!(resp.status, 200);
    let committed = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json"),
    )
    .expect("docs/openapi.json");
    assert_eq!(resp.text(), committed);
    let doc = resp.json();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    assert!(doc["paths"]["/webrtc/api/v1/rooms/{room_id}"]["get"].is_object());
}

#[tokio::test]
async fn token_metadata_travels_with_the_participant() {
    let server = server();
    let addr = server.addr();
    let meta = json!({"team": "blue", "seat": 7, "tags": ["a", "b"]});
    let with_meta = Claims::user("meta").metadata(meta.clone()).hs256(SECRET);
    let mut plain = Client::join(addr, "meta-room", &user("plain")).await;
    let joined = Client::join(addr, "meta-room", &with_meta).await;

    let state = &joined.room_state.as_ref().unwrap()["payload"];
    assert_eq!(state["self"]["metadata"], meta);
    let listed = state["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["user_id"] == "meta")
        .unwrap();
    assert_eq!(listed["metadata"], meta);
    // Without a claim there is no metadata field.
    let plain_entry = state["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["user_id"] == "plain")
        .unwrap();
    assert!(plain_entry.get("metadata").is_none(), "{plain_entry}");

    let announced = plain.expect_type("user-joined").await;
    assert_eq!(announced["payload"]["metadata"], meta);

    let rest =
        ok_json(&get_bearer(addr, "/webrtc/rooms/meta-room/participants", &user("plain")).await);
    let entry = rest["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["user_id"] == "meta")
        .unwrap();
    assert_eq!(entry["metadata"], meta);
    let api = ok_json(&get_bearer(addr, "/webrtc/api/v1/rooms/meta-room", &admin()).await);
    assert_eq!(api["participants"][1]["metadata"], meta);
    assert!(api["participants"][0].get("metadata").is_none(), "{api}");
}

/// `{"k":"xxx…"}` of exactly `bytes` bytes as compact JSON.
fn metadata_of(bytes: usize) -> Value {
    let value = json!({"k": "x".repeat(bytes - r#"{"k":""}"#.len())});
    assert_eq!(serde_json::to_vec(&value).unwrap().len(), bytes);
    value
}

#[tokio::test]
async fn metadata_over_the_limit_is_refused_at_join_with_a_reason() {
    let server = server();
    let addr = server.addr();
    let at_limit = Claims::user("fits")
        .metadata(metadata_of(MAX_METADATA_BYTES))
        .hs256(SECRET);
    let joined = Client::join(addr, "limits", &at_limit).await;
    assert_eq!(
        joined.room_state.as_ref().unwrap()["payload"]["self"]["metadata"],
        metadata_of(MAX_METADATA_BYTES)
    );

    let over = Claims::user("big")
        .metadata(metadata_of(MAX_METADATA_BYTES + 1))
        .hs256(SECRET);
    let mut refused = Client::connect(addr, "limits", &over).await;
    refused.expect_close(1008, "metadata_too_large").await;

    // Metadata must be an object: anything else makes the token invalid.
    let not_object = Claims::user("odd").metadata(json!(["a"])).hs256(SECRET);
    let mut refused = Client::connect(addr, "limits", &not_object).await;
    refused.expect_close(1008, "invalid_token").await;

    // Nobody was admitted but the first.
    let room = ok_json(&get_bearer(addr, "/webrtc/api/v1/rooms/limits", &admin()).await);
    assert_eq!(room["participant_count"], 1);
}

#[tokio::test]
async fn the_metadata_limit_is_configurable() {
    let server = ServerOptions::with_secret(SECRET)
        .env("WEBRTC_MAX_METADATA_BYTES", "64")
        .start();
    let addr = server.addr();
    let fits = Claims::user("a").metadata(metadata_of(64)).hs256(SECRET);
    let _ok = Client::join(addr, "small", &fits).await;
    let over = Claims::user("b").metadata(metadata_of(65)).hs256(SECRET);
    let mut refused = Client::connect(addr, "small", &over).await;
    refused.expect_close(1008, "metadata_too_large").await;
}

/// Every endpoint with a method and a body, for `room` and `participant`.
fn endpoints(room: &str, participant: &str) -> Vec<(&'static str, String, Option<Value>)> {
    vec![
        ("GET", "/webrtc/api/v1/rooms".into(), None),
        ("GET", format!("/webrtc/api/v1/rooms/{room}"), None),
        ("DELETE", format!("/webrtc/api/v1/rooms/{room}"), None),
        (
            "POST",
            format!("/webrtc/api/v1/rooms/{room}/messages"),
            Some(json!({"payload": 1})),
        ),
        (
            "DELETE",
            format!("/webrtc/api/v1/rooms/{room}/participants/{participant}"),
            None,
        ),
        (
            "PATCH",
            format!("/webrtc/api/v1/rooms/{room}/participants/{participant}"),
            Some(json!({"metadata": {"a": 1}})),
        ),
        (
            "DELETE",
            "/webrtc/api/v1/users/alice/connections".into(),
            None,
        ),
    ]
}

#[tokio::test]
async fn every_endpoint_refuses_missing_tokens_and_participant_tokens() {
    let server = server();
    let addr = server.addr();
    let mut alice = Client::join(addr, "guarded", &user("alice")).await;
    let pid = alice.pid();
    for (method, path, body) in endpoints("guarded", &pid) {
        let raw = body
            .as_ref()
            .map(|b| serde_json::to_vec(b).unwrap())
            .unwrap_or_default();
        assert_error(
            &send(addr, method, &path, &[], &raw).await,
            401,
            "missing_token",
        );
        let as_user = send_bearer(addr, method, &path, &user("alice"), body.as_ref()).await;
        assert_error(&as_user, 403, "grant_required");
    }
    // Nothing happened to alice.
    alice.assert_alive_and_idle().await;
}

#[tokio::test]
async fn a_grant_for_other_rooms_may_not_act_on_this_one() {
    let server = server();
    let addr = server.addr();
    let mut alice = Client::join(addr, "guarded", &user("alice")).await;
    let pid = alice.pid();
    let elsewhere = Claims::room_admin().rooms(&["elsewhere"]).hs256(SECRET);
    for (method, path, body) in endpoints("guarded", &pid) {
        let resp = send_bearer(addr, method, &path, &elsewhere, body.as_ref()).await;
        if path == "/webrtc/api/v1/rooms" {
            assert_eq!(resp.json(), json!({"rooms": []}));
        } else if path.starts_with("/webrtc/api/v1/users/") {
            // The user has connections, but none in a room this grant allows.
            assert_error(&resp, 404, "user_not_found");
        } else {
            assert_error(&resp, 403, "room_forbidden");
        }
    }
    alice.assert_alive_and_idle().await;
}

#[tokio::test]
async fn unknown_rooms_and_participants_are_404() {
    let server = server();
    let addr = server.addr();
    let _alice = Client::join(addr, "here", &user("alice")).await;
    for (method, path, body) in endpoints("nobody-here", "no-such-participant") {
        if path == "/webrtc/api/v1/rooms" || path.starts_with("/webrtc/api/v1/users/") {
            continue;
        }
        let resp = send_bearer(addr, method, &path, &admin(), body.as_ref()).await;
        assert_error(&resp, 404, "room_not_found");
    }
    for (method, path, body) in endpoints("here", "no-such-participant") {
        if path.contains("/participants/") {
            let resp = send_bearer(addr, method, &path, &admin(), body.as_ref()).await;
            assert_error(&resp, 404, "participant_not_found");
        }
    }
    let to_nobody = send_bearer(
        addr,
        "POST",
        "/webrtc/api/v1/rooms/here/messages",
        &admin(),
        Some(&json!({"to": "no-such-participant", "payload": 1})),
    )
    .await;
    assert_error(&to_nobody, 404, "participant_not_found");
    let nobody = send_bearer(
        addr,
        "DELETE",
        "/webrtc/api/v1/users/nobody/connections",
        &admin(),
        None,
    )
    .await;
    assert_error(&nobody, 404, "user_not_found");
}

/// Waits (bounded) until the room's participant count is `n` (0: the room is gone).
async fn wait_count(addr: std::net::SocketAddr, room: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let path = format!("/webrtc/api/v1/rooms/{room}");
    loop {
        let resp = get_bearer(addr, &path, &admin()).await;
        let count = if resp.status == 404 {
            0
        } else {
            resp.json()["participant_count"].as_u64().unwrap() as usize
        };
        if count == n {
            return;
        }
        assert!(Instant::now() < deadline, "{room} has {count}, want {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_removed_participant_is_closed_4001_and_the_room_sees_removed() {
    let server = server();
    let addr = server.addr();
    let mut stays = Client::join(addr, "kick", &user("stays")).await;
    let mut goes = Client::join(addr, "kick", &user("goes")).await;
    stays.expect_type("user-joined").await;
    let path = format!("/webrtc/api/v1/rooms/kick/participants/{}", goes.pid());
    let resp = send_bearer(addr, "DELETE", &path, &admin(), None).await;
    let body = ok_json(&resp);
    assert_eq!(
        body,
        json!({"removed": [{"room_id": "kick", "participant_id": goes.pid(), "user_id": "goes"}]})
    );
    goes.expect_close(4001, "removed").await;
    let left = stays.expect_type("user-left").await;
    assert_eq!(left["payload"]["participant_id"], goes.pid().as_str());
    assert_eq!(left["payload"]["reason"], "removed");
    wait_count(addr, "kick", 1).await;
    // Gone: a second removal is 404.
    let again = send_bearer(addr, "DELETE", &path, &admin(), None).await;
    assert_error(&again, 404, "participant_not_found");
    stays.assert_alive_and_idle().await;
}

#[tokio::test]
async fn disconnecting_a_user_closes_each_of_its_connections_and_nobody_else() {
    let server = server();
    let addr = server.addr();
    let mut bob = Client::join(addr, "one", &user("bob")).await;
    let mut tab1 = Client::join(addr, "one", &user("alice")).await;
    let mut tab2 = Client::join(addr, "two", &user("alice")).await;
    bob.expect_type("user-joined").await;
    let resp = send_bearer(
        addr,
        "DELETE",
        "/webrtc/api/v1/users/alice/connections",
        &admin(),
        None,
    )
    .await;
    let body = ok_json(&resp);
    let mut removed: Vec<(String, String)> = body["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["user_id"], "alice");
            (
                r["room_id"].as_str().unwrap().to_string(),
                r["participant_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    removed.sort();
    assert_eq!(
        removed,
        [
            ("one".to_string(), tab1.pid()),
            ("two".to_string(), tab2.pid())
        ]
    );
    tab1.expect_close(4001, "removed").await;
    tab2.expect_close(4001, "removed").await;
    let left = bob.expect_type("user-left").await;
    assert_eq!(left["payload"]["reason"], "removed");
    bob.assert_alive_and_idle().await;
}

#[tokio::test]
async fn a_user_is_disconnected_only_in_the_rooms_a_limited_grant_allows() {
    let server = server();
    let addr = server.addr();
    let mut in_a = Client::join(addr, "room-a", &user("carol")).await;
    let mut in_b = Client::join(addr, "room-b", &user("carol")).await;
    let only_a = Claims::room_admin().rooms(&["room-a"]).hs256(SECRET);
    let resp = send_bearer(
        addr,
        "DELETE",
        "/webrtc/api/v1/users/carol/connections",
        &only_a,
        None,
    )
    .await;
    assert_eq!(ok_json(&resp)["removed"].as_array().unwrap().len(), 1);
    in_a.expect_close(4001, "removed").await;
    in_b.assert_alive_and_idle().await;
}

#[tokio::test]
async fn closing_a_room_closes_everyone_in_it_with_4002() {
    let server = server();
    let addr = server.addr();
    let tokens = [user("a"), user("b"), user("c")];
    let mut clients = switchboard_e2e::client::join_all(addr, "closing", &tokens).await;
    let mut elsewhere = Client::join(addr, "other", &user("d")).await;
    let resp = send_bearer(
        addr,
        "DELETE",
        "/webrtc/api/v1/rooms/closing",
        &admin(),
        None,
    )
    .await;
    assert_eq!(ok_json(&resp)["removed"].as_array().unwrap().len(), 3);
    for client in &mut clients {
        // Presence of the others closing may come first; then the close frame.
        let (messages, close) = client.collect_until_close(Duration::from_secs(5)).await;
        assert_eq!(close, (4002, "room_closed".to_string()), "{messages:?}");
        for m in messages {
            assert_eq!(m["type"], "user-left", "{m}");
            assert_eq!(m["payload"]["reason"], "room_closed", "{m}");
        }
    }
    wait_count(addr, "closing", 0).await;
    elsewhere.assert_alive_and_idle().await;
    // The room is open again for the next join.
    let _back = Client::join(addr, "closing", &user("a")).await;
}

#[tokio::test]
async fn server_messages_reach_the_room_or_one_participant_with_a_null_sender() {
    let server = server();
    let addr = server.addr();
    let tokens = [user("a"), user("b")];
    let mut clients = switchboard_e2e::client::join_all(addr, "news", &tokens).await;
    let payload = json!({"text": "hello", "n": [1, 2]});
    let resp = send_bearer(
        addr,
        "POST",
        "/webrtc/api/v1/rooms/news/messages",
        &admin(),
        Some(&json!({"payload": payload})),
    )
    .await;
    assert_eq!(resp.status, 202, "{}", resp.text());
    assert_eq!(resp.json(), json!({"room_id": "news", "recipients": 2}));
    for client in &mut clients {
        let msg = client.expect_type("server-message").await;
        assert_eq!(msg["payload"], payload);
        assert_eq!(msg["sender_id"], Value::Null);
        assert_eq!(msg["to"], Value::Null);
        assert_eq!(msg["room_id"], "news");
    }
    let target = clients[1].pid();
    let resp = send_bearer(
        addr,
        "POST",
        "/webrtc/api/v1/rooms/news/messages",
        &admin(),
        Some(&json!({"to": target, "payload": "only you"})),
    )
    .await;
    assert_eq!(resp.json(), json!({"room_id": "news", "recipients": 1}));
    let msg = clients[1].expect_type("server-message").await;
    assert_eq!(msg["payload"], "only you");
    assert_eq!(msg["sender_id"], Value::Null);
    clients[0].assert_alive_and_idle().await;
    clients[1].assert_alive_and_idle().await;
}

#[tokio::test]
async fn bad_bodies_are_400_or_413_and_change_nothing() {
    let server = server();
    let addr = server.addr();
    let mut alice = Client::join(addr, "bodies", &user("alice")).await;
    let messages = "/webrtc/api/v1/rooms/bodies/messages";
    let auth = format!("Bearer {}", admin());
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    for bad in [
        &b"not json"[..],
        b"{}",
        b"[1]",
        b"{\"to\": 5, \"payload\": 1}",
        b"\xff\xfe",
    ] {
        let resp = send(addr, "POST", messages, &headers, bad).await;
        assert_error(&resp, 400, "invalid_body");
    }
    let deep = format!("{{\"payload\": {}{}}}", "[".repeat(40), "]".repeat(40));
    let resp = send(addr, "POST", messages, &headers, deep.as_bytes()).await;
    assert_error(&resp, 400, "invalid_body");
    // Over limits.max_message_bytes (65536 by default).
    let huge = format!("{{\"payload\": \"{}\"}}", "x".repeat(70_000));
    let resp = send(addr, "POST", messages, &headers, huge.as_bytes()).await;
    assert_error(&resp, 413, "body_too_large");

    let patch = format!("/webrtc/api/v1/rooms/bodies/participants/{}", alice.pid());
    for bad in [
        &b"{}"[..],
        b"{\"metadata\": [1]}",
        b"{\"metadata\": \"x\"}",
        b"nope",
    ] {
        let resp = send(addr, "PATCH", &patch, &headers, bad).await;
        assert_error(&resp, 400, "invalid_body");
    }
    let too_big = json!({"metadata": metadata_of(MAX_METADATA_BYTES + 1)});
    let resp = send_bearer(addr, "PATCH", &patch, &admin(), Some(&too_big)).await;
    assert_error(&resp, 413, "metadata_too_large");
    alice.assert_alive_and_idle().await;
}

#[tokio::test]
async fn replacing_metadata_tells_the_room_and_sticks() {
    let server = server();
    let addr = server.addr();
    let original = Claims::user("alice")
        .metadata(json!({"role": "guest"}))
        .hs256(SECRET);
    let mut alice = Client::join(addr, "meta", &original).await;
    let mut bob = Client::join(addr, "meta", &user("bob")).await;
    alice.expect_type("user-joined").await;
    let path = format!("/webrtc/api/v1/rooms/meta/participants/{}", alice.pid());
    let new = json!({"role": "presenter", "slides": 12});
    let fits = metadata_of(MAX_METADATA_BYTES);
    let resp = send_bearer(
        addr,
        "PATCH",
        &path,
        &admin(),
        Some(&json!({"metadata": new})),
    )
    .await;
    let body = ok_json(&resp);
    assert_eq!(body["participant_id"], alice.pid().as_str());
    assert_eq!(body["metadata"], new);
    for client in [&mut alice, &mut bob] {
        let msg = client.expect_type("participant-updated").await;
        assert_eq!(msg["payload"]["participant_id"], body["participant_id"]);
        assert_eq!(msg["payload"]["user_id"], "alice");
        assert_eq!(msg["payload"]["metadata"], new);
        assert_eq!(msg["sender_id"], Value::Null);
    }
    let room = ok_json(&get_bearer(addr, "/webrtc/api/v1/rooms/meta", &admin()).await);
    assert_eq!(room["participants"][0]["metadata"], new);
    // Exactly at the limit is accepted; null removes it.
    let resp = send_bearer(
        addr,
        "PATCH",
        &path,
        &admin(),
        Some(&json!({"metadata": fits})),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    bob.expect_type("participant-updated").await;
    let resp = send_bearer(
        addr,
        "PATCH",
        &path,
        &admin(),
        Some(&json!({"metadata": null})),
    )
    .await;
    assert!(ok_json(&resp).get("metadata").is_none());
    let cleared = bob.expect_type("participant-updated").await;
    assert!(cleared["payload"].get("metadata").is_none(), "{cleared}");
    // A later joiner's room-state has the current record.
    let carol = Client::join(addr, "meta", &user("carol")).await;
    let listed = &carol.room_state.as_ref().unwrap()["payload"]["participants"][0];
    assert_eq!(listed["user_id"], "alice");
    assert!(listed.get("metadata").is_none(), "{listed}");
    // And the user-left of alice carries what she had last.
    let resp = send_bearer(
        addr,
        "PATCH",
        &path,
        &admin(),
        Some(&json!({"metadata": {"v": 2}})),
    )
    .await;
    assert_eq!(resp.status, 200);
    bob.expect_type("user-joined").await;
    bob.expect_type("participant-updated").await;
    alice.close().await;
    let left = bob.expect_type("user-left").await;
    assert_eq!(left["payload"]["metadata"], json!({"v": 2}));
}
