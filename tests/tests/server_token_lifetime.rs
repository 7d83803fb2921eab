//! A session lives as long as its token, against the real server with short-lived tokens (a few
//! seconds): at `exp` it is closed 1008 `token_expired` and the room sees `user-left` with that
//! reason, unless the client sent a valid `refresh-token` for the same user and room first,
//! which is answered `token-refreshed` and keeps it relaying past the old `exp`. Refused
//! refreshes get an error code and leave the deadline alone. `limits.max_session_secs` ends any
//! session after its length (1001 `session_limit`).

use std::time::Duration;

use serde_json::json;
use switchboard_e2e::client::{assert_error, assert_pair_relays, join_all, Client, Event};
use switchboard_e2e::server::ServerOptions;
use switchboard_e2e::token::{now_secs, Claims};

const SECRET: &str = "e2e-token-lifetime-secret-0123456789abcdef";
const ROOM: &str = "lifetime-room";

/// How long the short-lived tokens live.
const SHORT_SECS: i64 = 3;

fn token(user: &str) -> String {
    Claims::user(user).hs256(SECRET)
}

fn short_token(user: &str) -> String {
    Claims::user(user).expires_in(SHORT_SECS).hs256(SECRET)
}

fn refresh(token: &str) -> serde_json::Value {
    json!({"type": "refresh-token", "payload": {"token": token}})
}

/// The finding: a session whose token expired kept relaying indefinitely. Now it is closed at
/// `exp` with 1008 `token_expired`, and the rest of the room sees it leave for that reason.
#[tokio::test]
async fn a_session_ends_when_its_token_expires() {
    let server = ServerOptions::with_secret(SECRET).start();
    let tokens = [token("alice"), token("bob"), short_token("carol")];
    let exp = now_secs() + SHORT_SECS as u64;
    let mut clients = join_all(server.addr(), ROOM, &tokens).await;
    let mut carol = clients.pop().expect("carol");
    let carol_pid = carol.pid();
    // Carol relays normally until then.
    carol
        .send_msg("chat-message", None, json!({"text": "before exp"}))
        .await;
    for c in clients.iter_mut() {
        assert_eq!(c.recv_json().await["payload"]["text"], "before exp");
    }
    let event = carol
        .next_event(Duration::from_secs(SHORT_SECS as u64 + 5))
        .await;
    assert_eq!(
        event,
        Event::Close(Some((1008, "token_expired".to_string()))),
        "carol's session at exp"
    );
    assert!(now_secs() >= exp, "closed at exp, not before");
    for c in clients.iter_mut() {
        let left = c.expect_type("user-left").await;
        assert_eq!(left["payload"]["participant_id"], carol_pid.as_str());
        assert_eq!(left["payload"]["reason"], "token_expired");
    }
    let (a, b) = clients.split_at_mut(1);
    assert_pair_relays(&mut a[0], &mut b[0]).await;
}

/// A refreshed session outlives its first token; refusals (another user, a room the new token
/// does not allow, an expired or forged token) are errors and change nothing.
#[tokio::test]
async fn a_refreshed_session_outlives_its_first_token() {
    let server = ServerOptions::with_secret(SECRET).start();
    let tokens = [token("alice"), short_token("carol")];
    let first_exp = now_secs() + SHORT_SECS as u64;
    let mut clients = join_all(server.addr(), ROOM, &tokens).await;
    let mut carol = clients.pop().expect("carol");
    let mut alice = clients.pop().expect("alice");

    let refusals = [
        (token("mallory"), "user_mismatch"),
        (
            Claims::user("carol").rooms(&["elsewhere"]).hs256(SECRET),
            "room_forbidden",
        ),
        (
            Claims::user("carol").expires_in(-5).hs256(SECRET),
            "token_expired",
        ),
        (
            Claims::user("carol").hs256("another-secret-0123456789abcdef0123"),
            "invalid_token",
        ),
    ];
    for (bad, code) in &refusals {
        carol.send_json(&refresh(bad)).await;
        assert_error(&carol.recv_json().await, code);
    }

    let renewed = Claims::user("carol").expires_in(3600);
    let new_exp = renewed.exp.expect("exp");
    carol.send_json(&refresh(&renewed.hs256(SECRET))).await;
    let ack = carol.expect_type("token-refreshed").await;
    assert_eq!(ack["payload"]["expires_at"], json!(new_exp));
    // With resume on, a resume token that lasts as long as the new token.
    let resume_token = ack["payload"]["resume_token"].as_str().unwrap_or_default();
    assert!(
        resume_token.starts_with("v1.") && resume_token.contains(&format!(".{new_exp}.")),
        "{ack}"
    );
    assert_eq!(ack["sender_id"], serde_json::Value::Null);

    // Past the first token's exp, carol is still in the room and relays both ways.
    while now_secs() <= first_exp {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_pair_relays(&mut alice, &mut carol).await;
    carol.assert_alive_and_idle().await;
    alice.assert_alive_and_idle().await;
}

#[tokio::test]
async fn max_session_length_closes_1001_session_limit() {
    let server = ServerOptions::with_secret(SECRET)
        .env("WEBRTC_MAX_SESSION_SECS", "2")
        .start();
    let mut alice = Client::join(server.addr(), ROOM, &token("alice")).await;
    // A refresh does not extend the session limit.
    alice.send_json(&refresh(&token("alice"))).await;
    alice.expect_type("token-refreshed").await;
    let event = alice.next_event(Duration::from_secs(7)).await;
    assert_eq!(
        event,
        Event::Close(Some((1001, "session_limit".to_string())))
    );
}
