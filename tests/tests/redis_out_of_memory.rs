//! A Redis that is full (`maxmemory` reached under `noeviction`), with a real server on a real
//! redis-server that another client fills: the instance answers not ready, steadily, so load
//! balancers stop sending users to it; joins are refused with 1013 `bus_unavailable`; the log
//! says "redis out of memory", never "unreachable"; and once memory is freed readiness returns
//! and joins work again.

use std::time::Duration;

use switchboard_e2e::client::{assert_pair_relays, Client};
use switchboard_e2e::http;
use switchboard_e2e::redis::{RedisProcess, Reply};
use switchboard_e2e::server::{ServerOptions, ServerProcess};
use switchboard_e2e::token::Claims;

const SECRET: &str = "e2e-redis-oom-secret-0123456789abcdef";
/// A short TTL makes the heartbeat (the write that notices a full Redis) run every second.
const TTL_SECS: u64 = 3;
const ROOM: &str = "oom-room";

fn token(user: &str) -> String {
    Claims::user(user).hs256(SECRET)
}

async fn ready_status(server: &ServerProcess) -> u16 {
    http::get(server.addr(), "/webrtc/health/ready")
        .await
        .status
}

/// `used_memory` from `INFO memory`.
fn used_memory(redis: &RedisProcess) -> u64 {
    let Reply::Bulk(Some(info)) = redis.command(&["INFO", "memory"]) else {
        panic!("INFO memory did not return text");
    };
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no used_memory in INFO memory:\n{info}"))
}

fn log_lines_with(server: &ServerProcess, text: &str) -> usize {
    server
        .stderr_lines()
        .iter()
        .filter(|l| l.contains(text))
        .count()
}

#[tokio::test]
async fn a_full_redis_keeps_the_instance_not_ready_until_memory_is_freed() {
    let redis = RedisProcess::start_with(&["--maxmemory-policy", "noeviction"]);
    let server = ServerOptions::with_secret(SECRET)
        .env("REDIS_URL", redis.url())
        .env("WEBRTC_ROOM_PRESENCE_TTL", TTL_SECS.to_string())
        .start();
    server.wait_ready(true, Duration::from_secs(10)).await;
    let mut alice = Client::join(server.addr(), ROOM, &token("alice")).await;

    // Another client fills Redis: 2 MiB of keys, then a limit 1 MiB below what is in use.
    let value = "x".repeat(64 * 1024);
    let fillers: Vec<String> = (0..32).map(|i| format!("filler:{i}")).collect();
    for key in &fillers {
        assert_eq!(
            redis.command(&["SET", key, &value]),
            Reply::Status("OK".into())
        );
    }
    let limit = used_memory(&redis) - 1024 * 1024;
    assert_eq!(
        redis.command(&["CONFIG", "SET", "maxmemory", &limit.to_string()]),
        Reply::Status("OK".into())
    );
    match redis.command(&["SET", "probe", "1"]) {
        Reply::Error(e) if e.starts_with("OOM") => {}
        other => panic!("Redis still accepts writes: {other:?}"),
    }

    // Not ready within a few heartbeats, and steadily so: every one of 20 samples over 4 s.
    server.wait_ready(false, Duration::from_secs(10)).await;
    let mut samples = Vec::new();
    for _ in 0..20 {
        samples.push(ready_status(&server).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        samples.iter().all(|s| *s == 503),
        "readiness flapped while Redis was full: {samples:?}"
    );
    let health = http::get(server.addr(), "/webrtc/health").await.json();
    assert_eq!(health["ready"], false, "{health}");
    assert_eq!(health["bus"]["detail"], "redis out of memory", "{health}");
    let ready = http::get(server.addr(), "/webrtc/health/ready")
        .await
        .json();
    assert_eq!(ready["reason"], "bus_unavailable", "{ready}");
    // A join needs a write: refused with the reason the client retries on.
    let mut refused = Client::connect(server.addr(), ROOM, &token("bob")).await;
    refused.expect_close(1013, "bus_unavailable").await;
    assert_eq!(
        log_lines_with(&server, "redis out of memory: writes refused"),
        1,
        "one line when it starts; stderr:\n{}",
        server.stderr_tail()
    );

    // Free the memory: DEL is accepted when Redis is full.
    let mut del = vec!["DEL"];
    del.extend(fillers.iter().map(String::as_str));
    assert_eq!(redis.command(&del), Reply::Integer(32));
    server.wait_ready(true, Duration::from_secs(10)).await;
    let mut bob = Client::join(server.addr(), ROOM, &token("bob")).await;
    alice.expect_type("user-joined").await;
    assert_pair_relays(&mut alice, &mut bob).await;
    assert_eq!(
        log_lines_with(&server, "redis out of memory ended"),
        1,
        "one line when it ends; stderr:\n{}",
        server.stderr_tail()
    );
    assert_eq!(
        log_lines_with(&server, "unreachable"),
        0,
        "Redis was full, never unreachable; stderr:\n{}",
        server.stderr_tail()
    );
}
