//! Upgrade refusals of the real server: token problems, forbidden rooms, bad room ids, origins,
//! and the subprotocol way of passing the token. Every refusal is asserted exactly (close code
//! and reason, or HTTP status) and two participants already in a room must keep relaying to
//! each other without having seen the refused client.

use switchboard_e2e::client::{
    assert_pair_relays, expect_http_refusal, ws_path, Client, ConnectOptions,
};
use switchboard_e2e::server::{ServerOptions, ServerProcess};
use switchboard_e2e::token::{ec_public_key_path, rsa_public_key_path, tamper_signature, Claims};

const SECRET: &str = "e2e-auth-secret-0123456789abcdef";
const ROOM: &str = "auth-room";

/// Two participants already talking in `room`, with HS256 tokens of `secret`.
async fn bystanders(server: &ServerProcess, room: &str, secret: &str) -> (Client, Client) {
    bystanders_signed(server, room, |claims| claims.hs256(secret)).await
}

/// Two participants already talking in `room`, with tokens that `sign` makes of their claims.
async fn bystanders_signed(
    server: &ServerProcess,
    room: &str,
    sign: impl Fn(Claims) -> String,
) -> (Client, Client) {
    let mut b = Client::join(server.addr(), room, &sign(Claims::user("bob"))).await;
    let c = Client::join(server.addr(), room, &sign(Claims::user("carol"))).await;
    let seen = b.expect_type("user-joined").await;
    assert_eq!(seen["payload"]["participant_id"], c.pid().as_str());
    (b, c)
}

/// Connects with `path` and expects close 1008 `reason` as the first thing read; then checks
/// the bystanders relay (and saw no `user-joined`).
async fn assert_refused_at(
    server: &ServerProcess,
    path: &str,
    reason: &str,
    b: &mut Client,
    c: &mut Client,
) {
    let mut bad = Client::connect_with(server.addr(), ROOM, path, &ConnectOptions::default()).await;
    bad.expect_close(1008, reason).await;
    assert_pair_relays(b, c).await;
}

async fn assert_refused(
    server: &ServerProcess,
    token: &str,
    reason: &str,
    b: &mut Client,
    c: &mut Client,
) {
    assert_refused_at(server, &ws_path(ROOM, token), reason, b, c).await;
}

/// [`assert_refused`] for each `(token, reason)` in turn, the bystanders checked after each.
async fn assert_all_refused(
    server: &ServerProcess,
    cases: &[(String, &str)],
    b: &mut Client,
    c: &mut Client,
) {
    for (token, reason) in cases {
        assert_refused(server, token, reason, b, c).await;
    }
}

fn hs_server() -> ServerProcess {
    ServerOptions::with_secret(SECRET).start()
}

#[tokio::test]
async fn missing_token_is_closed_1008_missing_token() {
    let server = hs_server();
    let (mut b, mut c) = bystanders(&server, ROOM, SECRET).await;
    assert_refused_at(
        &server,
        &format!("/webrtc/ws/{ROOM}"),
        "missing_token",
        &mut b,
        &mut c,
    )
    .await;
}

#[tokio::test]
async fn bad_signatures_and_garbage_are_closed_invalid_token() {
    let server = hs_server();
    let (mut b, mut c) = bystanders(&server, ROOM, SECRET).await;
    // exp is required.
    let mut no_exp = Claims::user("mallory");
    no_exp.exp = None;
    let cases = [
        (
            Claims::user("mallory").hs256("some-other-secret-0123456789"),
            "invalid_token",
        ),
        (
            tamper_signature(&Claims::user("mallory").hs256(SECRET)),
            "invalid_token",
        ),
        ("not-a-jwt".to_owned(), "invalid_token"),
        (no_exp.hs256(SECRET), "invalid_token"),
    ];
    assert_all_refused(&server, &cases, &mut b, &mut c).await;
}

#[tokio::test]
async fn overlong_name_or_sub_is_closed_invalid_token() {
    let server = hs_server();
    let (mut b, mut c) = bystanders(&server, ROOM, SECRET).await;
    let mut long_name = Claims::user("mallory");
    long_name.name = Some("n".repeat(257));
    let long_sub = Claims::user(&"s".repeat(257));
    let cases = [
        (long_name.hs256(SECRET), "invalid_token"),
        (long_sub.hs256(SECRET), "invalid_token"),
    ];
    assert_all_refused(&server, &cases, &mut b, &mut c).await;
    // 256 characters are fine.
    let mut at_limit = Claims::user(&"s".repeat(256));
    at_limit.name = Some("n".repeat(256));
    let d = Client::join(server.addr(), ROOM, &at_limit.hs256(SECRET)).await;
    assert_eq!(
        d.room_state.as_ref().expect("room-state")["payload"]["self"]["username"],
        "n".repeat(256)
    );
}

#[tokio::test]
async fn expired_token_is_closed_token_expired() {
    let server = hs_server();
    let (mut b, mut c) = bystanders(&server, ROOM, SECRET).await;
    // An hour ago: beyond any clock-skew leeway.
    let expired = Claims::user("mallory").expires_in(-3600).hs256(SECRET);
    assert_refused(&server, &expired, "token_expired", &mut b, &mut c).await;
}

#[tokio::test]
async fn alg_none_is_closed_invalid_token() {
    let server = hs_server();
    let (mut b, mut c) = bystanders(&server, ROOM, SECRET).await;
    assert_refused(
        &server,
        &Claims::user("mallory").alg_none(),
        "invalid_token",
        &mut b,
        &mut c,
    )
    .await;
}

#[tokio::test]
async fn rs256_server_refuses_hs256_signed_with_its_public_key() {
    let key = rsa_public_key_path();
    let server = ServerOptions::new()
        .env("JWT_ALGORITHM", "RS256")
        .env("JWT_PUBLIC_KEY_FILE", key.to_string_lossy())
        .start();
    let (mut b, mut c) = bystanders_signed(&server, ROOM, |claims| claims.rs256()).await;
    let cases = [
        (
            Claims::user("mallory").hs256_with_rsa_public_key(),
            "invalid_token",
        ),
        // A token with the right algorithm but another key (the EC key) is refused as well.
        (Claims::user("mallory").es256(), "invalid_token"),
        (Claims::user("mallory").alg_none(), "invalid_token"),
    ];
    assert_all_refused(&server, &cases, &mut b, &mut c).await;
}

#[tokio::test]
async fn es256_server_accepts_es256_and_refuses_other_algorithms() {
    let key = ec_public_key_path();
    let server = ServerOptions::new()
        .env("JWT_ALGORITHM", "ES256")
        .env("JWT_PUBLIC_KEY_FILE", key.to_string_lossy())
        .start();
    let (mut b, mut c) = bystanders_signed(&server, ROOM, |claims| claims.es256()).await;
    let cases = [
        (Claims::user("mallory").rs256(), "invalid_token"),
        (Claims::user("mallory").hs256("x"), "invalid_token"),
    ];
    assert_all_refused(&server, &cases, &mut b, &mut c).await;
}

#[tokio::test]
async fn wrong_audience_is_closed_invalid_audience() {
    let server = ServerOptions::with_secret(SECRET)
        .env("JWT_AUDIENCE", "switchboard")
        .start();
    let (mut b, mut c) = bystanders_signed(&server, ROOM, |claims| {
        claims.audience("switchboard").hs256(SECRET)
    })
    .await;
    let cases = [
        (
            Claims::user("mallory")
                .audience("another-service")
                .hs256(SECRET),
            "invalid_audience",
        ),
        // With an audience configured, a token without `aud` is refused the same way.
        (Claims::user("mallory").hs256(SECRET), "invalid_audience"),
    ];
    assert_all_refused(&server, &cases, &mut b, &mut c).await;
}

#[tokio::test]
async fn wrong_issuer_is_closed_invalid_token() {
    let server = ServerOptions::with_secret(SECRET)
        .env("JWT_ISSUER", "https://issuer.example")
        .start();
    let (mut b, mut c) = bystanders_signed(&server, ROOM, |claims| {
        claims.issuer("https://issuer.example").hs256(SECRET)
    })
    .await;
    let cases = [
        (
            Claims::user("mallory")
                .issuer("https://evil.example")
                .hs256(SECRET),
            "invalid_token",
        ),
        // With an issuer configured, a token without `iss` is refused.
        (Claims::user("mallory").hs256(SECRET), "invalid_token"),
    ];
    assert_all_refused(&server, &cases, &mut b, &mut c).await;
}

#[tokio::test]
async fn rooms_claim_limits_rooms() {
    let server = hs_server();
    let (mut b, mut c) = bystanders(&server, ROOM, SECRET).await;
    let limited = Claims::user("dave")
        .rooms(&["other-room", "x"])
        .hs256(SECRET);
    assert_refused(&server, &limited, "room_forbidden", &mut b, &mut c).await;
    // The same token joins a listed room, and a "*" token joins any room.
    let dave = Client::join(server.addr(), "other-room", &limited).await;
    assert_eq!(
        dave.room_state.as_ref().unwrap()["payload"]["self"]["user_id"],
        "dave"
    );
    let star = Claims::user("erin").rooms(&["*"]).hs256(SECRET);
    let mut erin = Client::join(server.addr(), ROOM, &star).await;
    let seen = b.expect_type("user-joined").await;
    assert_eq!(seen["payload"]["participant_id"], erin.pid().as_str());
    c.expect_type("user-joined").await;
    assert_pair_relays(&mut b, &mut erin).await;
}

/// `"rooms": null` is not "no restriction": the token is refused, on the socket and on REST.
#[tokio::test]
async fn rooms_null_is_refused_not_read_as_all_rooms() {
    let server = hs_server();
    let (mut b, mut c) = bystanders(&server, ROOM, SECRET).await;
    let claims = serde_json::json!({
        "sub": "nully",
        "exp": switchboard_e2e::token::now_secs() + 600,
        "rooms": null,
    });
    let nully = switchboard_e2e::token::hs256(&claims, SECRET);
    assert_refused(&server, &nully, "invalid_token", &mut b, &mut c).await;
    let resp = switchboard_e2e::http::get_bearer(server.addr(), "/webrtc/config", &nully).await;
    assert_eq!(resp.status, 401, "{}", resp.text());
    assert_eq!(resp.json()["error"]["code"], "invalid_token");
}

#[tokio::test]
async fn bad_room_ids_are_closed_invalid_room_id() {
    let server = hs_server();
    let (mut b, mut c) = bystanders(&server, ROOM, SECRET).await;
    let token = Claims::user("mallory").hs256(SECRET);
    let too_long = "a".repeat(65);
    for room in [
        too_long.as_str(),
        "..%2Fx",
        "caf%C3%A9",
        "a%00b",
        "a%20b",
        "a.b",
    ] {
        let path = format!("/webrtc/ws/{room}?token={token}");
        let mut bad =
            Client::connect_with(server.addr(), room, &path, &ConnectOptions::default()).await;
        bad.expect_close(1008, "invalid_room_id").await;
    }
    assert_pair_relays(&mut b, &mut c).await;
    // 64 characters of the allowed alphabet are fine.
    let longest = format!("{}_-9Z", "a".repeat(60));
    let ok = Client::join(server.addr(), &longest, &token).await;
    assert_eq!(ok.room_state.as_ref().unwrap()["room_id"], longest.as_str());
}

#[tokio::test]
async fn unroutable_room_paths_get_404() {
    let server = hs_server();
    let token = Claims::user("mallory").hs256(SECRET);
    let opts = ConnectOptions::default();
    // Empty id, an id with a slash, and a literal `../x` do not route at all.
    for room in ["", "a/b", "../x"] {
        let path = format!("/webrtc/ws/{room}?token={token}");
        let status = expect_http_refusal(server.addr(), &path, &opts).await;
        assert_eq!(status, 404, "{room:?}");
    }
}

#[tokio::test]
async fn disallowed_origin_gets_403_before_upgrade() {
    let server = ServerOptions::with_secret(SECRET)
        .env(
            "WEBRTC_ALLOWED_ORIGINS",
            "https://app.example,https://other.example",
        )
        .start();
    let token = Claims::user("alice").hs256(SECRET);
    let path = ws_path(ROOM, &token);
    let evil = ConnectOptions::default().header("Origin", "https://evil.example");
    assert_eq!(expect_http_refusal(server.addr(), &path, &evil).await, 403);
    // A lookalike that only shares a prefix is not allowed either.
    let lookalike = ConnectOptions::default().header("Origin", "https://app.example.evil.example");
    assert_eq!(
        expect_http_refusal(server.addr(), &path, &lookalike).await,
        403
    );
    let mut allowed = Vec::new();
    for origin in ["https://app.example", "https://other.example"] {
        let opts = ConnectOptions::default().header("Origin", origin);
        let mut client = Client::connect_with(server.addr(), ROOM, &path, &opts).await;
        client.read_room_state().await;
        allowed.push(client);
    }
    let (first, second) = allowed.split_at_mut(1);
    first[0].expect_type("user-joined").await;
    assert_pair_relays(&mut first[0], &mut second[0]).await;
}

#[tokio::test]
async fn token_in_subprotocol_selects_switchboard_v1_without_echoing_token() {
    let server = hs_server();
    let token = Claims::user("alice").hs256(SECRET);
    let mut alice = Client::join_subprotocol(server.addr(), ROOM, &token).await;
    assert_eq!(
        alice
            .response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap_or_default()),
        Some("switchboard.v1")
    );
    for (name, value) in alice.response.headers() {
        let value = String::from_utf8_lossy(value.as_bytes());
        assert!(!value.contains(&token), "header {name} echoes the token");
    }
    let state = alice.room_state.clone().unwrap();
    assert_eq!(state["payload"]["self"]["user_id"], "alice");
    let mut bob = Client::join(server.addr(), ROOM, &Claims::user("bob").hs256(SECRET)).await;
    alice.expect_type("user-joined").await;
    assert_pair_relays(&mut alice, &mut bob).await;

    // A bad token in the subprotocol is refused like one in the query.
    let opts = ConnectOptions::default().header(
        "Sec-WebSocket-Protocol",
        &format!("switchboard.v1, bearer.{}", tamper_signature(&token)),
    );
    let mut bad =
        Client::connect_with(server.addr(), ROOM, &format!("/webrtc/ws/{ROOM}"), &opts).await;
    bad.expect_close(1008, "invalid_token").await;
    assert_pair_relays(&mut alice, &mut bob).await;
}
