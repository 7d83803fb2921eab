//! Messages through the real server: room-state and presence, targeted and broadcast relay,
//! server-stamped sender ids, and every kind of bad client message (answered with an `error`,
//! the connection stays open, and the rest of the room is unaffected).

use serde_json::{json, Value};
use switchboard_e2e::client::{
    assert_envelope, assert_error, assert_pair_relays, assert_relays, join_users,
    sorted_participant_ids, Client,
};
use switchboard_e2e::server::{ServerOptions, ServerProcess};
use switchboard_e2e::token::Claims;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "e2e-messages-secret-0123456789abcdef";
const ROOM: &str = "msg-room";

fn start() -> ServerProcess {
    ServerOptions::with_secret(SECRET).start()
}

fn token(user: &str) -> String {
    Claims::user(user).hs256(SECRET)
}

/// Joins `users` in order; nothing is left pending for any of them.
async fn room_of(server: &ServerProcess, room: &str, users: &[&str]) -> Vec<Client> {
    join_users(server.addr(), room, SECRET, users).await
}

#[tokio::test]
async fn room_state_describes_self_and_everyone_present() {
    let server = start();
    let mut alice = Client::join(server.addr(), ROOM, &token("alice")).await;
    let state = alice.room_state.clone().unwrap();
    assert_envelope(&state, "room-state", ROOM);
    assert_eq!(state["sender_id"], Value::Null);
    assert_eq!(state["to"], Value::Null);
    let me = &state["payload"]["self"];
    assert_eq!(me["user_id"], "alice");
    assert_eq!(me["username"], "User alice");
    assert!(!alice.pid().is_empty());
    assert_eq!(state["payload"]["participant_count"], 1);
    assert_eq!(
        sorted_participant_ids(&state["payload"]["participants"]),
        vec![alice.pid()]
    );

    let bob = Client::join(server.addr(), ROOM, &token("bob")).await;
    let joined = alice.expect_type("user-joined").await;
    assert_envelope(&joined, "user-joined", ROOM);
    assert_eq!(joined["sender_id"], Value::Null);
    assert_eq!(joined["to"], Value::Null);
    assert_eq!(joined["payload"]["participant_id"], bob.pid().as_str());
    assert_eq!(joined["payload"]["user_id"], "bob");
    assert_eq!(joined["payload"]["username"], "User bob");
    assert!(joined["payload"]["joined_at"].is_string(), "{joined}");

    let state = bob.room_state.clone().unwrap();
    assert_eq!(state["payload"]["participant_count"], 2);
    let mut expected = vec![alice.pid(), bob.pid()];
    expected.sort();
    assert_eq!(
        sorted_participant_ids(&state["payload"]["participants"]),
        expected
    );
    let alice_entry = state["payload"]["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["participant_id"] == alice.pid().as_str())
        .unwrap()
        .clone();
    assert_eq!(alice_entry["user_id"], "alice");
    assert_eq!(alice_entry["username"], "User alice");
    assert!(alice_entry["joined_at"].is_string(), "{alice_entry}");
}

#[tokio::test]
async fn same_user_twice_gets_two_participants() {
    let server = start();
    let mut tabs = room_of(&server, ROOM, &["alice", "alice"]).await;
    assert_ne!(tabs[0].pid(), tabs[1].pid());
    let (first, second) = tabs.split_at_mut(1);
    assert_pair_relays(&mut first[0], &mut second[0]).await;
}

#[tokio::test]
async fn two_participants_exchange_offer_answer_candidates() {
    let server = start();
    let mut clients = room_of(&server, ROOM, &["alice", "bob"]).await;
    let (a, b) = clients.split_at_mut(1);
    let (a, b) = (&mut a[0], &mut b[0]);
    let sdp = json!({"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"});
    a.send_msg("offer", Some(&b.pid()), sdp.clone()).await;
    let offer = b.recv_json().await;
    assert_envelope(&offer, "offer", ROOM);
    assert_eq!(offer["payload"], sdp);
    assert_eq!(offer["sender_id"], a.pid().as_str());
    assert_eq!(offer["to"], b.pid().as_str());

    let answer = json!({"type": "answer", "sdp": "v=0\r\n"});
    b.send_msg("answer", Some(&a.pid()), answer.clone()).await;
    let got = a.recv_json().await;
    assert_envelope(&got, "answer", ROOM);
    assert_eq!(got["payload"], answer);
    assert_eq!(got["sender_id"], b.pid().as_str());

    let cand = json!({"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host", "sdpMid": "0", "sdpMLineIndex": 0});
    b.send_msg("ice-candidate", Some(&a.pid()), cand.clone())
        .await;
    let got = a.recv_json().await;
    assert_envelope(&got, "ice-candidate", ROOM);
    assert_eq!(got["payload"], cand);
    // Nothing came back to the senders.
    a.assert_alive_and_idle().await;
    b.assert_alive_and_idle().await;
}

#[tokio::test]
async fn targeted_offer_reaches_only_its_target_and_broadcast_all_but_sender() {
    let server = start();
    let mut clients = room_of(&server, ROOM, &["alice", "bob", "carol"]).await;
    let pid_b = clients[1].pid();
    clients[0]
        .send_msg("offer", Some(&pid_b), json!({"sdp": "x"}))
        .await;
    let offer = clients[1].recv_json().await;
    assert_eq!(offer["type"], "offer");
    assert_eq!(offer["sender_id"], clients[0].pid().as_str());

    // A broadcast from alice: carol's next message must be the broadcast (not the offer).
    clients[0]
        .send_msg("chat-message", None, json!({"text": "hi all"}))
        .await;
    let mut copies = Vec::new();
    for receiver in 1..3 {
        let msg = clients[receiver].recv_json().await;
        assert_envelope(&msg, "chat-message", ROOM);
        assert_eq!(msg["payload"], json!({"text": "hi all"}));
        assert_eq!(msg["sender_id"], clients[0].pid().as_str());
        assert_eq!(msg["to"], Value::Null);
        copies.push(msg);
    }
    // One message, serialized once: every recipient gets the same envelope (same timestamp),
    // numbered with its own delivery seq (bob got the offer first).
    assert_eq!(
        (copies[0]["seq"].as_u64(), copies[1]["seq"].as_u64()),
        (Some(2), Some(1))
    );
    for copy in copies.iter_mut() {
        copy.as_object_mut().unwrap().remove("seq");
    }
    assert_eq!(copies[0], copies[1]);
    // The sender gets neither its broadcast nor anything else.
    clients[0].assert_alive_and_idle().await;

    for ty in ["media-control", "screen-share-control"] {
        clients[2].send_msg(ty, None, json!({"audio": false})).await;
        for receiver in 0..2 {
            let msg = clients[receiver].recv_json().await;
            assert_eq!(msg["type"], ty);
            assert_eq!(msg["payload"], json!({"audio": false}));
            assert_eq!(msg["sender_id"], clients[2].pid().as_str());
        }
        let pid_a = clients[0].pid();
        clients[2]
            .send_msg(ty, Some(&pid_a), json!([1, "two"]))
            .await;
        let msg = clients[0].recv_json().await;
        assert_eq!(msg["type"], ty);
        assert_eq!(msg["payload"], json!([1, "two"]));
        assert_eq!(msg["to"], pid_a.as_str());
        clients[1].assert_alive_and_idle().await;
    }
}

#[tokio::test]
async fn user_left_reason_closed_and_room_state_shrinks() {
    let server = start();
    let mut clients = room_of(&server, ROOM, &["alice", "bob", "carol"]).await;
    let carol = clients.pop().unwrap();
    let carol_pid = carol.pid();
    carol.close().await;
    for client in clients.iter_mut() {
        let left = client.expect_type("user-left").await;
        assert_envelope(&left, "user-left", ROOM);
        assert_eq!(left["payload"]["participant_id"], carol_pid.as_str());
        assert_eq!(left["payload"]["user_id"], "carol");
        assert_eq!(left["payload"]["username"], "User carol");
        assert_eq!(left["payload"]["reason"], "closed");
        assert!(left["payload"]["joined_at"].is_string(), "{left}");
    }
    let dave = Client::join(server.addr(), ROOM, &token("dave")).await;
    let state = dave.room_state.clone().unwrap();
    assert_eq!(state["payload"]["participant_count"], 3);
    let mut expected = vec![clients[0].pid(), clients[1].pid(), dave.pid()];
    expected.sort();
    assert_eq!(
        sorted_participant_ids(&state["payload"]["participants"]),
        expected
    );
}

#[tokio::test]
async fn rooms_are_isolated() {
    let server = start();
    let mut one = room_of(&server, "room-one", &["alice", "bob"]).await;
    let mut two = room_of(&server, "room-two", &["carol"]).await;
    one[0]
        .send_msg("chat-message", None, json!({"text": "one"}))
        .await;
    assert_eq!(one[1].recv_json().await["payload"]["text"], "one");
    two[0].assert_alive_and_idle().await;
    // A target in another room is not found.
    let carol = two[0].pid();
    one[0].send_msg("offer", Some(&carol), json!({})).await;
    assert_error(&one[0].recv_json().await, "target_not_found");
    two[0].assert_alive_and_idle().await;
}

#[tokio::test]
async fn ping_gets_pong() {
    let server = start();
    let mut alice = Client::join(server.addr(), ROOM, &token("alice")).await;
    alice.send_json(&json!({"type": "ping"})).await;
    let pong = alice.recv_json().await;
    assert_envelope(&pong, "pong", ROOM);
    assert_eq!(pong["sender_id"], Value::Null);
    assert_eq!(pong["to"], Value::Null);
}

#[tokio::test]
async fn spoofed_sender_id_is_replaced_by_the_real_one() {
    let server = start();
    let mut clients = room_of(&server, ROOM, &["alice", "bob", "carol"]).await;
    let bob = clients[1].pid();
    let carol = clients[2].pid();
    clients[0]
        .send_json(
            &json!({"type": "chat-message", "to": carol, "sender_id": bob, "payload": {"t": 1}}),
        )
        .await;
    let msg = clients[2].recv_json().await;
    assert_eq!(msg["sender_id"], clients[0].pid().as_str());
    assert_eq!(msg["payload"], json!({"t": 1}));
    // room_id and timestamp are the server's too.
    clients[0]
        .send_json(
            &json!({"type": "chat-message", "to": carol, "room_id": "elsewhere",
            "timestamp": "1999-01-01T00:00:00.000Z", "payload": {"t": 2}}),
        )
        .await;
    let msg = clients[2].recv_json().await;
    assert_envelope(&msg, "chat-message", ROOM);
    assert_eq!(msg["payload"], json!({"t": 2}));
    assert_ne!(msg["timestamp"], "1999-01-01T00:00:00.000Z");
    // A broadcast with a spoofed sender_id as well.
    clients[0]
        .send_json(&json!({"type": "chat-message", "sender_id": "server", "payload": "p"}))
        .await;
    for receiver in 1..3 {
        let msg = clients[receiver].recv_json().await;
        assert_eq!(msg["sender_id"], clients[0].pid().as_str());
        assert_eq!(msg["payload"], "p");
    }
}

/// Sends `bad` from alice; she gets `error code` and stays connected; bob and carol see nothing
/// and still relay.
async fn assert_rejected(clients: &mut [Client], bad: Message, code: &str) {
    let label = format!("{bad:?}");
    clients[0].send(bad).await;
    let msg = clients[0].recv_json().await;
    assert_eq!(msg["type"], "error", "after sending {label}: {msg}");
    assert_envelope(&msg, "error", ROOM);
    assert_eq!(msg["payload"]["code"], code, "after sending {label}: {msg}");
    assert_error(&msg, code);
    clients[0].assert_alive_and_idle().await;
    let (alice, rest) = clients.split_at_mut(1);
    let (bob, carol) = rest.split_at_mut(1);
    // Their next message is the relay check: the bad message reached nobody.
    assert_relays(&mut alice[0], &mut bob[0]).await;
    assert_pair_relays(&mut bob[0], &mut carol[0]).await;
    assert_relays(&mut carol[0], &mut alice[0]).await;
}

#[tokio::test]
async fn non_json_and_wrong_shapes_get_invalid_message() {
    let server = start();
    let mut clients = room_of(&server, ROOM, &["alice", "bob", "carol"]).await;
    for bad in [
        "hello".to_string(),
        "{\"type\": \"chat-message\"".to_string(),
        "[1, 2, 3]".to_string(),
        "42".to_string(),
        json!({"payload": {}}).to_string(),
        json!({"type": 5, "payload": {}}).to_string(),
        json!({"type": "chat-message", "to": 5, "payload": {}}).to_string(),
        json!({"type": "offer", "to": ["a"], "payload": {}}).to_string(),
        json!({"type": "offer", "to": "", "payload": {}}).to_string(),
        // `payload` is required (any JSON value, null included).
        json!({"type": "chat-message"}).to_string(),
    ] {
        assert_rejected(&mut clients, Message::text(bad), "invalid_message").await;
    }
}

#[tokio::test]
async fn missing_to_on_offer_answer_candidate_is_invalid_message() {
    let server = start();
    let mut clients = room_of(&server, ROOM, &["alice", "bob", "carol"]).await;
    for ty in ["offer", "answer", "ice-candidate"] {
        let bad = json!({"type": ty, "payload": {"sdp": "x"}}).to_string();
        assert_rejected(&mut clients, Message::text(bad), "invalid_message").await;
    }
}

#[tokio::test]
async fn unknown_type_is_unknown_type() {
    let server = start();
    let mut clients = room_of(&server, ROOM, &["alice", "bob", "carol"]).await;
    let bad = json!({"type": "dance", "payload": {}}).to_string();
    assert_rejected(&mut clients, Message::text(bad), "unknown_type").await;
    // Server-to-client types are not accepted from clients either.
    let bad = json!({"type": "user-left", "payload": {}}).to_string();
    let label = bad.clone();
    clients[0].send_text(&bad).await;
    let msg = clients[0].recv_json().await;
    assert_eq!(msg["type"], "error", "{label}: {msg}");
    let code = msg["payload"]["code"].as_str().unwrap_or_default();
    assert!(
        code == "unknown_type" || code == "invalid_message",
        "{label}: unexpected code {msg}"
    );
}

#[tokio::test]
async fn target_naming_nobody_is_target_not_found() {
    let server = start();
    let mut clients = room_of(&server, ROOM, &["alice", "bob", "carol"]).await;
    for ty in ["offer", "answer", "ice-candidate", "chat-message"] {
        let bad = json!({"type": ty, "to": "no-such-participant", "payload": {}}).to_string();
        assert_rejected(&mut clients, Message::text(bad), "target_not_found").await;
    }
}

#[tokio::test]
async fn addressing_yourself_or_an_overlong_to_is_invalid_message() {
    let server = start();
    let mut clients = room_of(&server, ROOM, &["alice", "bob", "carol"]).await;
    let me = clients[0].pid();
    for ty in ["offer", "answer", "ice-candidate", "chat-message"] {
        let bad = json!({"type": ty, "to": me, "payload": {}}).to_string();
        assert_rejected(&mut clients, Message::text(bad), "invalid_message").await;
    }
    let bad = json!({"type": "offer", "to": "x".repeat(129), "payload": {}}).to_string();
    assert_rejected(&mut clients, Message::text(bad), "invalid_message").await;
}

#[tokio::test]
async fn binary_frame_is_invalid_message_and_connection_stays() {
    let server = start();
    let mut clients = room_of(&server, ROOM, &["alice", "bob", "carol"]).await;
    let frame = Message::binary(json!({"type": "ping"}).to_string().into_bytes());
    assert_rejected(&mut clients, frame, "invalid_message").await;
}

#[tokio::test]
async fn left_participant_is_no_longer_a_target() {
    let server = start();
    let mut clients = room_of(&server, ROOM, &["alice", "bob"]).await;
    let bob = clients.pop().unwrap();
    let bob_pid = bob.pid();
    bob.close().await;
    clients[0].expect_type("user-left").await;
    clients[0]
        .send_msg("offer", Some(&bob_pid), json!({}))
        .await;
    assert_error(&clients[0].recv_json().await, "target_not_found");
}
