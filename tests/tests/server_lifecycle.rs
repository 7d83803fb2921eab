//! Process lifecycle of the real server: SIGTERM drain (readiness, refused upgrades, jittered
//! `reconnect`, close 1001, exit before the drain timeout), configuration (missing key, every
//! error reported with exit 78, YAML file, precedence flag > env > file), `--dev`, and logs
//! (JSON format, stdout discipline, no secrets).

use std::io::Write;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use switchboard_e2e::client::{
    assert_pair_relays, expect_http_refusal, ws_path, Client, ConnectOptions, Event,
};
use switchboard_e2e::http::{get, get_bearer};
use switchboard_e2e::server::{ServerOptions, ServerProcess};
use switchboard_e2e::token::{now_secs, Claims};

const SECRET: &str = "e2e-lifecycle-secret-0123456789abcdef";
const ROOM: &str = "life-room";
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

fn token(user: &str) -> String {
    Claims::user(user).hs256(SECRET)
}

fn config_file(yaml: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("temp file");
    file.write_all(yaml.as_bytes()).expect("write config");
    file
}

/// The first STUN url `/webrtc/config` reports.
async fn stun_urls(server: &ServerProcess, token: &str) -> Vec<String> {
    let resp = get_bearer(server.addr(), "/webrtc/config", token).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let config = resp.json();
    let mut urls = Vec::new();
    for entry in config["iceServers"].as_array().cloned().unwrap_or_default() {
        match &entry["urls"] {
            Value::String(s) => urls.push(s.clone()),
            Value::Array(list) => {
                urls.extend(list.iter().filter_map(|u| u.as_str().map(String::from)))
            }
            _ => {}
        }
    }
    urls.retain(|u| u.starts_with("stun:"));
    urls
}

// ---------------------------------------------------------------- shutdown

#[tokio::test]
async fn sigterm_drains_with_reconnect_hints_then_exits_zero() {
    const DELAY_MS: u64 = 800;
    const WINDOW_MS: u64 = 1500;
    const TIMEOUT_MS: u64 = 8000;
    let mut server = ServerOptions::with_secret(SECRET)
        .env("SWITCHBOARD_DRAIN_DELAY_MS", DELAY_MS.to_string())
        .env("SWITCHBOARD_DRAIN_WINDOW_MS", WINDOW_MS.to_string())
        .env("SWITCHBOARD_DRAIN_TIMEOUT_MS", TIMEOUT_MS.to_string())
        .start();
    let addr = server.addr();
    let mut clients = Vec::new();
    for (i, room) in [ROOM, ROOM, ROOM, "other-room"].iter().enumerate() {
        clients.push(Client::join(addr, room, &token(&format!("user{i}"))).await);
    }
    // Consume the user-joined messages so the drain messages come next.
    clients[0].expect_type("user-joined").await;
    clients[0].expect_type("user-joined").await;
    clients[1].expect_type("user-joined").await;
    assert_eq!(get(addr, "/webrtc/health/ready").await.status, 200);

    let signalled = Instant::now();
    server.sigterm();
    // Readiness flips at once (well before the endpoint-propagation delay ends).
    loop {
        let status = get(addr, "/webrtc/health/ready").await.status;
        if status == 503 {
            break;
        }
        assert_eq!(status, 200, "ready while draining");
        assert!(
            signalled.elapsed() < Duration::from_millis(DELAY_MS),
            "/webrtc/health/ready still 200 {:?} after SIGTERM",
            signalled.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(addr, "/webrtc/health/live").await.status, 200);

    // A new upgrade is refused with 503 before upgrading.
    let late = ws_path(ROOM, &token("late"));
    let status = expect_http_refusal(addr, &late, &ConnectOptions::default()).await;
    assert_eq!(status, 503, "upgrade while draining");

    // Every client: a reconnect hint within the window, then close 1001 "server draining".
    let mut hint_delays = Vec::new();
    for client in clients.iter_mut() {
        let first = client
            .next_event(Duration::from_millis(DELAY_MS + WINDOW_MS + 5000))
            .await;
        // Clients hear nothing before the endpoint-propagation delay has passed.
        assert!(
            signalled.elapsed() >= Duration::from_millis(DELAY_MS),
            "drain message {first:?} after {:?}, before the {DELAY_MS} ms delay",
            signalled.elapsed()
        );
        let Event::Json(first) = first else {
            panic!("expected a reconnect hint or user-left, got {first:?}");
        };
        let (mut messages, close) = client
            .collect_until_close(Duration::from_millis(WINDOW_MS + 5000))
            .await;
        messages.insert(0, first);
        assert_eq!(close, (1001, "server draining".to_string()));
        let hints: Vec<&Value> = messages
            .iter()
            .filter(|m| m["type"] == "reconnect")
            .collect();
        assert_eq!(hints.len(), 1, "one reconnect hint: {messages:?}");
        let after = hints[0]["payload"]["after_ms"]
            .as_u64()
            .unwrap_or_else(|| panic!("after_ms: {}", hints[0]));
        assert!(
            after < WINDOW_MS,
            "after_ms {after} beyond the {WINDOW_MS} ms window"
        );
        hint_delays.push(after);
        assert_eq!(hints[0]["sender_id"], Value::Null);
        for m in messages.iter().filter(|m| m["type"] != "reconnect") {
            assert_eq!(m["type"], "user-left", "{m}");
            assert_eq!(m["payload"]["reason"], "draining", "{m}");
        }
    }
    // Jittered: four clients do not all get the same delay.
    hint_delays.dedup();
    assert!(
        hint_delays.len() > 1,
        "after_ms not spread: {hint_delays:?}"
    );
    let status = server
        .wait_exit(Duration::from_millis(TIMEOUT_MS + 2000))
        .await
        .unwrap_or_else(|| panic!("still running; stderr:\n{}", server.stderr_tail()));
    assert_eq!(status.code(), Some(0), "stderr:\n{}", server.stderr_tail());
    assert!(
        signalled.elapsed() < Duration::from_millis(TIMEOUT_MS),
        "exited after {:?}, drain timeout {TIMEOUT_MS} ms",
        signalled.elapsed()
    );
}

/// The signal handler exists before `listening on` is printed: a SIGTERM sent the moment the
/// banner appears drains (exit 0) instead of killing the process (no exit code).
#[tokio::test]
async fn sigterm_right_after_the_banner_drains_and_exits_zero() {
    for round in 0..5 {
        // --dev prints more lines after `listening on`, which widens the window a late handler
        // would leave open.
        let mut server = ServerOptions::new()
            .arg("--dev")
            .env("SWITCHBOARD_DRAIN_DELAY_MS", "0")
            .env("SWITCHBOARD_DRAIN_WINDOW_MS", "0")
            .start();
        server.sigterm();
        let status = server
            .wait_exit(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("round {round}: still running 10 s after SIGTERM"));
        assert_eq!(
            status.code(),
            Some(0),
            "round {round}: {status:?}; stderr:\n{}",
            server.stderr_tail()
        );
    }
}

#[tokio::test]
async fn drain_timeout_bounds_exit_even_with_a_client_that_never_reads() {
    const TIMEOUT_MS: u64 = 3000;
    let mut server = ServerOptions::with_secret(SECRET)
        .env("SWITCHBOARD_DRAIN_DELAY_MS", "100")
        .env("SWITCHBOARD_DRAIN_WINDOW_MS", "500")
        .env("SWITCHBOARD_DRAIN_TIMEOUT_MS", TIMEOUT_MS.to_string())
        // Queues big enough that the stuck reader below is never closed as a slow consumer.
        .env("WEBRTC_OUTBOUND_QUEUE_BYTES", (64 << 20).to_string())
        .env("WEBRTC_OUTBOUND_QUEUE_MESSAGES", "100000")
        // Megabytes for one reader on purpose: no byte budget in the way.
        .env("WEBRTC_RATE_LIMIT_BYTES_PER_SECOND", "1000000000")
        .env("WEBRTC_RATE_LIMIT_BYTES_BURST", "1000000000")
        .start();
    // The stuck client never reads again and has a tiny receive buffer: once alice has sent it
    // megabytes, the server cannot deliver its reconnect hint or close frame at all.
    let stuck_opts = ConnectOptions {
        recv_buffer: Some(4096),
        ..ConnectOptions::default()
    };
    let path = ws_path(ROOM, &token("stuck"));
    let mut stuck = Client::connect_with(server.addr(), ROOM, &path, &stuck_opts).await;
    stuck.read_room_state().await;
    let stuck_pid = stuck.pid();
    let mut alice = Client::join(server.addr(), ROOM, &token("alice")).await;
    let filler = "f".repeat(60_000);
    for n in 0..150 {
        alice
            .send_msg(
                "chat-message",
                Some(&stuck_pid),
                json!({"n": n, "fill": filler}),
            )
            .await;
    }
    // Alice's pong: the server has queued all of it for the stuck client.
    alice.assert_alive_and_idle().await;
    let signalled = Instant::now();
    server.sigterm();
    let status = server
        .wait_exit(Duration::from_millis(TIMEOUT_MS + 3000))
        .await;
    assert!(
        status.is_some(),
        "still running {:?} after SIGTERM with a {TIMEOUT_MS} ms drain timeout; stderr:\n{}",
        signalled.elapsed(),
        server.stderr_tail()
    );
    assert!(
        signalled.elapsed() < Duration::from_millis(TIMEOUT_MS + 1000),
        "exited after {:?}",
        signalled.elapsed()
    );
}

// ---------------------------------------------------------------- configuration

#[test]
fn no_jwt_key_without_dev_exits_78_naming_jwt_secret() {
    let out = ServerOptions::new().run_to_exit(EXIT_TIMEOUT);
    assert_eq!(out.code, Some(78), "stderr: {:?}", out.stderr);
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "exactly one stderr line: {lines:?}");
    assert!(lines[0].contains("JWT_SECRET"), "{:?}", lines[0]);
    assert!(
        !out.stdout.iter().any(|l| l.starts_with("listening on")),
        "{:?}",
        out.stdout
    );
}

/// Waits (bounded) until the server has logged a join.
async fn wait_for_joined_log(server: &ServerProcess) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.stderr_lines().iter().any(|l| l.contains("joined")) {
        assert!(
            Instant::now() < deadline,
            "no `joined` log line within 10 s:\n{}",
            server.stderr_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn pretty_logs_to_a_pipe_have_no_colour_codes() {
    let server = ServerOptions::with_secret(SECRET).start();
    // A join logs at info level.
    let _alice = Client::join(server.addr(), ROOM, &Claims::user("alice").hs256(SECRET)).await;
    wait_for_joined_log(&server).await;
    let lines = server.stderr_lines();
    assert!(
        !lines.iter().any(|l| l.contains('\u{1b}')),
        "ANSI escape codes in piped stderr: {lines:?}"
    );
}

#[test]
fn short_jwt_secret_exits_78_naming_jwt_secret() {
    let out = ServerOptions::with_secret("only-twenty-five-bytes!!!").run_to_exit(EXIT_TIMEOUT);
    assert_eq!(out.code, Some(78), "stderr: {:?}", out.stderr);
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "exactly one stderr line: {lines:?}");
    assert!(
        lines[0].contains("jwt.secret")
            && lines[0].contains("JWT_SECRET")
            && lines[0].contains("32"),
        "{:?}",
        lines[0]
    );
    assert!(
        !lines[0].contains("only-twenty-five"),
        "secret echoed: {:?}",
        lines[0]
    );
}

/// Each bad setting (named in the error however it was given) must get its own stderr line.
fn assert_reported(out: &switchboard_e2e::server::ExitOutput, names: &[&[&str]]) {
    assert_eq!(out.code, Some(78), "stderr: {:?}", out.stderr);
    let lines = out.stderr_lines();
    let mut used = Vec::new();
    for aliases in names {
        let line = lines
            .iter()
            .position(|l| aliases.iter().any(|a| l.contains(a)))
            .unwrap_or_else(|| panic!("no stderr line names {aliases:?}: {lines:#?}"));
        used.push(line);
    }
    used.sort();
    used.dedup();
    assert_eq!(used.len(), names.len(), "one line per error: {lines:#?}");
}

#[test]
fn every_bad_env_setting_is_reported_with_exit_78() {
    let out = ServerOptions::with_secret(SECRET)
        .env("WEBRTC_MAX_PARTICIPANTS_PER_ROOM", "many")
        .env("WEBRTC_ICE_TRANSPORT_POLICY", "sometimes")
        .env("WEBRTC_BUNDLE_POLICY", "all-in-one")
        .env("WEBRTC_RATE_LIMIT_PER_SECOND", "-3")
        .env("JWT_ALGORITHM", "HS999")
        .run_to_exit(EXIT_TIMEOUT);
    assert_reported(
        &out,
        &[
            &["WEBRTC_MAX_PARTICIPANTS_PER_ROOM", "max_participants"],
            &["WEBRTC_ICE_TRANSPORT_POLICY", "ice_transport_policy"],
            &["WEBRTC_BUNDLE_POLICY", "bundle_policy"],
            &["WEBRTC_RATE_LIMIT_PER_SECOND", "rate_limit_per_second"],
            &["JWT_ALGORITHM", "jwt.algorithm"],
        ],
    );
}

#[test]
fn bad_settings_in_file_and_flags_are_reported_together() {
    let file = config_file(
        "jwt:\n  secret: e2e-file-secret-0123456789abcdef\nrooms:\n  max_participants: lots\nice:\n  rtcp_mux_policy: sometimes\n",
    );
    let out = ServerOptions::new()
        .arg("--config")
        .arg(file.path().to_string_lossy())
        .arg("--ping-interval")
        .arg("soon")
        .run_to_exit(EXIT_TIMEOUT);
    assert_reported(
        &out,
        &[
            &["rooms.max_participants", "WEBRTC_MAX_PARTICIPANTS_PER_ROOM"],
            &["ice.rtcp_mux_policy", "WEBRTC_RTCP_MUX_POLICY"],
            &["--ping-interval", "ping_interval", "WEBRTC_PING_INTERVAL"],
        ],
    );
}

#[test]
fn rs256_without_a_usable_public_key_exits_78() {
    let out = ServerOptions::new()
        .env("JWT_ALGORITHM", "RS256")
        .run_to_exit(EXIT_TIMEOUT);
    assert_reported(&out, &[&["JWT_PUBLIC_KEY_FILE", "jwt.public_key_file"]]);

    let mut garbage = tempfile::NamedTempFile::new().expect("temp file");
    writeln!(garbage, "this is not a PEM key").expect("write");
    let out = ServerOptions::new()
        .env("JWT_ALGORITHM", "RS256")
        .env("JWT_PUBLIC_KEY_FILE", garbage.path().to_string_lossy())
        .run_to_exit(EXIT_TIMEOUT);
    assert_reported(&out, &[&["JWT_PUBLIC_KEY_FILE", "jwt.public_key_file"]]);
}

/// Runs an RS256/ES256 server with `key_file` as its public key; it must exit 78 with exactly
/// one stderr line naming the setting and containing `reason`, before listening.
fn assert_key_refused(algorithm: &str, key_file: &std::path::Path, reason: &str) {
    let out = ServerOptions::new()
        .env("JWT_ALGORITHM", algorithm)
        .env("JWT_PUBLIC_KEY_FILE", key_file.to_string_lossy())
        .run_to_exit(EXIT_TIMEOUT);
    assert_eq!(
        out.code,
        Some(78),
        "{}: stderr {:?}",
        key_file.display(),
        out.stderr
    );
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "exactly one stderr line: {lines:?}");
    assert!(
        lines[0].contains("jwt.public_key_file")
            && lines[0].contains("JWT_PUBLIC_KEY_FILE")
            && lines[0].contains(reason),
        "{:?}",
        lines[0]
    );
    assert!(
        !lines[0].contains("MII"),
        "key material echoed: {:?}",
        lines[0]
    );
    assert!(
        !out.stdout.iter().any(|l| l.starts_with("listening on")),
        "{:?}",
        out.stdout
    );
}

#[test]
fn key_mistakes_exit_78_with_one_line_naming_the_mistake() {
    use switchboard_e2e::token::fixture;
    assert_key_refused(
        "RS256",
        &fixture("test-only-rsa-private.pem"),
        "is a private key",
    );
    assert_key_refused(
        "RS256",
        &fixture("test-only-rsa-1024-public.pem"),
        "is a 1024-bit RSA key; RS256 needs at least 2048 bits",
    );
    assert_key_refused(
        "ES256",
        &fixture("test-only-ec-p384-public.pem"),
        "is an EC P-384 public key; ES256 needs an EC P-256 key",
    );
    assert_key_refused(
        "ES256",
        &fixture("test-only-rsa-public.pem"),
        "is an RSA public key; ES256 needs an EC P-256 key",
    );
}

#[test]
fn unknown_yaml_key_is_a_config_error() {
    // A typo in a key must not silently fall back to a default.
    let file = config_file("jwt:\n  secret: e2e-file-secret-0123456789abcdef\n  audeince: typo\n");
    let out = ServerOptions::new()
        .arg("--config")
        .arg(file.path().to_string_lossy())
        .run_to_exit(EXIT_TIMEOUT);
    assert_reported(&out, &[&["audeince"]]);
}

#[test]
fn unreadable_config_file_exits_78() {
    let out = ServerOptions::with_secret(SECRET)
        .arg("--config")
        .arg("/nonexistent/switchboard.yaml")
        .run_to_exit(EXIT_TIMEOUT);
    assert_eq!(out.code, Some(78), "stderr: {:?}", out.stderr);
    assert!(
        out.stderr_lines()
            .iter()
            .any(|l| l.contains("/nonexistent/switchboard.yaml")),
        "{:?}",
        out.stderr
    );
}

#[tokio::test]
async fn yaml_config_file_is_used() {
    let file_secret = "e2e-file-secret-0123456789abcdef";
    let file = config_file(&format!(
        "jwt:\n  secret: {file_secret}\nrooms:\n  max_participants: 2\nice:\n  stun_urls:\n    - stun:file.example:3478\n"
    ));
    for server in [
        ServerOptions::new()
            .arg("--config")
            .arg(file.path().to_string_lossy())
            .start(),
        ServerOptions::new()
            .env("SWITCHBOARD_CONFIG", file.path().to_string_lossy())
            .start(),
    ] {
        let tok = |u: &str| Claims::user(u).hs256(file_secret);
        assert_eq!(
            stun_urls(&server, &tok("alice")).await,
            vec!["stun:file.example:3478"]
        );
        let mut a = Client::join(server.addr(), ROOM, &tok("alice")).await;
        let mut b = Client::join(server.addr(), ROOM, &tok("bob")).await;
        a.expect_type("user-joined").await;
        let mut third = Client::connect(server.addr(), ROOM, &tok("carol")).await;
        third.expect_close(1013, "room_full").await;
        assert_pair_relays(&mut a, &mut b).await;
    }
}

/// The layer that won serves its STUN URL to its token; the overridden layer's secret no
/// longer verifies.
async fn assert_winner(server: &ServerProcess, token: &str, stun: &str, overridden: &str) {
    assert_eq!(stun_urls(server, token).await, vec![stun]);
    assert_eq!(
        get_bearer(server.addr(), "/webrtc/config", overridden)
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn flag_overrides_env_overrides_file() {
    let file = config_file(
        "listen: 192.0.2.1:9\njwt:\n  secret: e2e-file-secret-0123456789abcdef\nice:\n  stun_urls: [\"stun:file.example:3478\"]\n",
    );
    let path = file.path().to_string_lossy().to_string();
    let file_token = Claims::user("u").hs256("e2e-file-secret-0123456789abcdef");
    let env_token = Claims::user("u").hs256("e2e-env-secret-0123456789abcdefg");
    let flag_token = Claims::user("u").hs256("e2e-flag-secret-0123456789abcdef");

    // File only; the harness's --listen 127.0.0.1:0 beats the file's unbindable TEST-NET address.
    let server = ServerOptions::new().arg("--config").arg(&path).start();
    assert!(server.addr().ip().is_loopback(), "{}", server.addr());
    assert_eq!(
        stun_urls(&server, &file_token).await,
        vec!["stun:file.example:3478"]
    );
    drop(server);

    // Env beats file.
    let file_and_env = || {
        ServerOptions::new()
            .arg("--config")
            .arg(&path)
            .env("WEBRTC_STUN_URLS", "stun:env.example:3478")
            .env("JWT_SECRET", "e2e-env-secret-0123456789abcdefg")
    };
    let server = file_and_env().start();
    assert_winner(&server, &env_token, "stun:env.example:3478", &file_token).await;
    drop(server);

    // Flag beats env.
    let server = file_and_env()
        .args(["--stun-urls", "stun:flag.example:3478"])
        .args(["--jwt-secret", "e2e-flag-secret-0123456789abcdef"])
        .start();
    assert_winner(&server, &flag_token, "stun:flag.example:3478", &env_token).await;
    let mut refused = Client::connect(server.addr(), ROOM, &env_token).await;
    refused.expect_close(1008, "invalid_token").await;
}

#[tokio::test]
async fn jwt_secret_file_is_read() {
    let mut secret_file = tempfile::NamedTempFile::new().expect("temp file");
    // A trailing newline (as `echo` writes it) is not part of the secret.
    writeln!(secret_file, "e2e-secret-from-file-0123456789abcdef").expect("write");
    let server = ServerOptions::new()
        .env("JWT_SECRET_FILE", secret_file.path().to_string_lossy())
        .start();
    let tok = Claims::user("alice").hs256("e2e-secret-from-file-0123456789abcdef");
    let client = Client::join(server.addr(), ROOM, &tok).await;
    assert_eq!(
        client.room_state.as_ref().unwrap()["payload"]["self"]["user_id"],
        "alice"
    );
}

// ---------------------------------------------------------------- --dev

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("JWT has a payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON")
}

#[tokio::test]
async fn dev_mode_prints_a_working_token_and_demo_url() {
    let mut server = ServerOptions::new().arg("--dev").start();
    let addr = server.addr();
    let token_line = server.wait_stdout_line("dev token: ", Duration::from_secs(5));
    let dev_token = token_line["dev token: ".len()..].trim().to_string();
    const ADMIN: &str = "dev admin token (server API, grant room_admin): ";
    let admin_line = server.wait_stdout_line(ADMIN, Duration::from_secs(5));
    let admin_token = admin_line[ADMIN.len()..].trim().to_string();
    let demo_line = server.wait_stdout_line("demo: ", Duration::from_secs(5));
    assert_eq!(
        demo_line.trim(),
        format!("demo: http://{addr}/?room=demo&autostart=1")
    );
    let identities = server.wait_stdout_line("dev identities: ", Duration::from_secs(5));
    assert!(
        identities.contains(&format!("POST http://{addr}/webrtc/dev/token")),
        "{identities}"
    );
    let claims = claims_of(&dev_token);
    assert_eq!(claims["sub"], "dev");
    assert_eq!(claims["rooms"], json!(["*"]));
    let exp = claims["exp"].as_u64().expect("exp");
    let day = now_secs() + 24 * 3600;
    assert!(
        (day - 120..=day + 5).contains(&exp),
        "exp {exp} is about 24 h away"
    );
    let admin = claims_of(&admin_token);
    assert_eq!(admin["sub"], "dev-admin");
    assert_eq!(admin["grants"], json!({"room_admin": true}));
    // stdout carries nothing else.
    assert_eq!(
        server.stdout_lines().len(),
        5,
        "{:?}",
        server.stdout_lines()
    );

    let mut a = Client::join(addr, "demo", &dev_token).await;
    let mut b = Client::join(addr, "demo", &dev_token).await;
    a.expect_type("user-joined").await;
    assert_pair_relays(&mut a, &mut b).await;
    Client::join(addr, "any-other-room", &dev_token).await;
    // The printed admin token reaches the server API; the participant token does not.
    let rooms = get_bearer(addr, "/webrtc/api/v1/rooms", &admin_token).await;
    assert_eq!(rooms.status, 200, "{}", rooms.text());
    let body = rooms.json();
    let demo = body["rooms"]
        .as_array()
        .and_then(|r| r.iter().find(|x| x["room_id"] == "demo"))
        .unwrap_or_else(|| panic!("demo not listed: {body}"));
    assert_eq!(demo["participant_count"], 2, "{body}");
    let refused = get_bearer(addr, "/webrtc/api/v1/rooms", &dev_token).await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    let page = get(addr, "/").await;
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap_or_default()
        .starts_with("text/html"));
    assert_eq!(get(addr, "/switchboard.js").await.status, 200);

    // Each dev server has its own random secret.
    let mut other = ServerOptions::new().arg("--dev").start();
    let other_token = other.wait_stdout_line("dev token: ", Duration::from_secs(5));
    assert_ne!(other_token.trim(), token_line.trim());
    let mut refused = Client::connect(other.addr(), "demo", &dev_token).await;
    refused.expect_close(1008, "invalid_token").await;
}

// ---------------------------------------------------------------- logs

#[tokio::test]
async fn json_logs_on_stderr_without_tokens_secrets_or_sdp() {
    let turn_secret = "e2e-turn-secret-never-logged";
    let mut server = ServerOptions::with_secret(SECRET)
        .env("SWITCHBOARD_LOG_FORMAT", "json")
        .env("RUST_LOG", "debug")
        .env("WEBRTC_TURN_URLS", "turn:t.example:3478")
        .env("WEBRTC_TURN_SECRET", turn_secret)
        .start();
    let addr = server.addr();
    let alice_token = token("alice");
    let mut alice = Client::join(addr, ROOM, &alice_token).await;
    let mut bob = Client::join(addr, ROOM, &token("bob")).await;
    alice.expect_type("user-joined").await;
    let sdp = "v=0 o=- e2e-sdp-marker-4711 IN IP4 127.0.0.1";
    alice
        .send_msg(
            "offer",
            Some(&bob.pid()),
            json!({"type": "offer", "sdp": sdp}),
        )
        .await;
    bob.expect_type("offer").await;
    assert_eq!(
        get_bearer(addr, "/webrtc/config", &alice_token)
            .await
            .status,
        200
    );
    let bad = Claims::user("mallory").expires_in(-3600).hs256(SECRET);
    Client::connect(addr, ROOM, &bad)
        .await
        .expect_close(1008, "token_expired")
        .await;
    alice.close().await;
    bob.expect_type("user-left").await;

    assert_eq!(
        server.stdout_lines().len(),
        1,
        "stdout: {:?}",
        server.stdout_lines()
    );
    let logs = server.stderr_lines();
    assert!(!logs.is_empty(), "some logs on stderr");
    for line in logs.iter().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<Value>(line).is_ok_and(|v| v.is_object()),
            "not a JSON log line: {line:?}"
        );
        for secret in [
            SECRET,
            turn_secret,
            alice_token.as_str(),
            bad.as_str(),
            "e2e-sdp-marker-4711",
        ] {
            assert!(
                !line.contains(secret),
                "log line leaks a secret/token/SDP: {line}"
            );
        }
    }
}

/// A `sub` and `name` built to forge a log line: a newline, a complete fake log line, a fake
/// field and terminal escape codes.
const HOSTILE_SUB: &str =
    "mallory\n2026-12-01T00:00:00.000000Z  INFO switchboard_server::session: forged admin=true\u{1b}[2J\u{1b}[31m";

/// Joins as [`HOSTILE_SUB`] and returns the server's stderr once the join was logged.
async fn logs_of_a_hostile_join(format: &str) -> Vec<String> {
    let server = ServerOptions::with_secret(SECRET)
        .env("SWITCHBOARD_LOG_FORMAT", format)
        .start();
    let mut claims = Claims::user(HOSTILE_SUB);
    claims.name = Some(HOSTILE_SUB.to_string());
    let _mallory = Client::join(server.addr(), ROOM, &claims.hs256(SECRET)).await;
    wait_for_joined_log(&server).await;
    server.stderr_lines()
}

#[tokio::test]
async fn a_hostile_sub_cannot_forge_log_lines_in_pretty_or_json_logs() {
    let lines = logs_of_a_hostile_join("pretty").await;
    for line in &lines {
        assert!(
            !line.starts_with("2026-12-01T00:00:00"),
            "forged log line: {lines:#?}"
        );
        assert!(!line.contains('\u{1b}'), "raw escape code in {line:?}");
    }
    let joined = lines
        .iter()
        .find(|l| l.contains("joined"))
        .expect("a joined line");
    let escaped = r#"user="mallory\n2026-12-01T00:00:00.000000Z  INFO switchboard_server::session: forged admin=true\u{1b}[2J\u{1b}[31m""#;
    assert!(joined.contains(escaped), "sub not escaped: {joined}");

    let lines = logs_of_a_hostile_join("json").await;
    let mut seen = false;
    for line in lines.iter().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line:?}"));
        assert!(!line.contains('\u{1b}'), "raw escape code in {line:?}");
        if v["fields"]["message"] == "joined" {
            assert_eq!(v["span"]["user"], HOSTILE_SUB, "{line}");
            seen = true;
        }
    }
    assert!(seen, "no joined line: {lines:#?}");
}
