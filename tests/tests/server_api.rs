//! The server API (`/webrtc/api/v1`) of one real server process with the in-process bus: who
//! may call it (no token, a participant token, a grant limited to other rooms), the room list
//! and one room with real creation times, unknown rooms, the OpenAPI document it serves, and
//! participant metadata from the token claim (room-state, user-joined, the REST endpoints, the
//! size limit at join).

use serde_json::{json, Value};
use switchboard_e2e::client::Client;
use switchboard_e2e::http::{get, get_bearer, HttpResponse};
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
