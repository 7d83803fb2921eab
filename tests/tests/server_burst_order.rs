//! Per-sender order and no slow-consumer close for a receiver that keeps reading, while three
//! senders burst at it at the default limits. Its own test binary on purpose: whether a
//! reader "keeps reading" depends on it getting the CPU, and the fifteen tests beside it in
//! `server_messages` (each with its own server process) took that away on a two-core CI
//! machine, so the server rightly closed it as a slow consumer.

use serde_json::json;
use switchboard_e2e::client::join_users;
use switchboard_e2e::server::{ServerOptions, ServerProcess};

const SECRET: &str = "e2e-burst-order-secret-0123456789abcdef";
const ROOM: &str = "burst-room";

fn start() -> ServerProcess {
    ServerOptions::with_secret(SECRET).start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_sender_order_is_preserved_for_a_reading_receiver_at_default_limits() {
    // Three senders each send 150 messages (within the default burst of 200) to one receiver
    // who reads all the time: 450 messages, more than the default queue of 256 if the server
    // could not keep up with a healthy reader.
    const PER_SENDER: u64 = 150;
    let server = start();
    let mut clients = join_users(
        server.addr(),
        ROOM,
        SECRET,
        &["bob", "alice", "carol", "dave"],
    )
    .await;
    let mut senders = clients.split_off(1);
    let mut bob = clients.pop().unwrap();
    let bob_pid = bob.pid();
    let reader = tokio::spawn(async move {
        let mut got: Vec<(String, u64)> = Vec::new();
        while got.len() < 3 * PER_SENDER as usize {
            let msg = bob.recv_json().await;
            let sender = msg["sender_id"].as_str().unwrap_or_default().to_string();
            got.push((
                sender,
                msg["payload"]["n"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{msg}")),
            ));
        }
        (bob, got)
    });
    let mut tasks = Vec::new();
    for mut sender in senders.drain(..) {
        let to = bob_pid.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..PER_SENDER {
                // Alternate types: order holds across message types too.
                let ty = if n.is_multiple_of(2) {
                    "chat-message"
                } else {
                    "ice-candidate"
                };
                sender.send_msg(ty, Some(&to), json!({"n": n})).await;
            }
            sender
        }));
    }
    let mut senders = Vec::new();
    for task in tasks {
        senders.push(task.await.expect("sender task"));
    }
    let (mut bob, got) = reader.await.expect("bob's reader");
    for sender in &senders {
        let pid = sender.pid();
        let ns: Vec<u64> = got
            .iter()
            .filter(|(s, _)| *s == pid)
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(ns, (0..PER_SENDER).collect::<Vec<_>>(), "order from {pid}");
    }
    bob.assert_alive_and_idle().await;
}
