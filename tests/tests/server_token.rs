//! `switchboard-server token`: the real binary mints a token with the configured key (env or
//! config file; HS256 and RS256 with the private key) and a real server process accepts it for
//! its room and refuses it for another room with the exact close code and reason. Refusals of
//! the command itself: no signing key (exit 78, one line) and bad arguments (exit 64).

use std::io::Write;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use switchboard_e2e::client::Client;
use switchboard_e2e::server::{ExitOutput, ServerOptions};
use switchboard_e2e::token::{fixture, now_secs, rsa_public_key_path};

const SECRET: &str = "e2e-token-command-secret-0123456789abcdef";
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `switchboard-server token <args>` with `options`' environment and flags.
fn mint(options: ServerOptions, args: &[&str]) -> ExitOutput {
    options
        .without_listen_flag()
        .arg("token")
        .args(args.iter().copied())
        .run_to_exit(EXIT_TIMEOUT)
}

/// The single stdout line of a successful run.
fn printed_token(out: &ExitOutput) -> String {
    assert_eq!(out.code, Some(0), "stderr: {:?}", out.stderr);
    assert!(out.stderr_lines().is_empty(), "stderr: {:?}", out.stderr);
    assert_eq!(
        out.stdout.len(),
        1,
        "stdout is the token alone: {:?}",
        out.stdout
    );
    out.stdout[0].clone()
}

/// The JWT's payload, decoded without checking the signature (the server checks that).
fn payload(token: &str) -> Value {
    let part = token.split('.').nth(1).expect("a JWT has a payload");
    let bytes = URL_SAFE_NO_PAD.decode(part).expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON payload")
}

/// The token joins `room` as `user`/`name`, and is closed 1008 `room_forbidden` elsewhere.
async fn assert_accepted_for_room_only(
    addr: std::net::SocketAddr,
    token: &str,
    room: &str,
    user: &str,
    name: &str,
) {
    let client = Client::join(addr, room, token).await;
    let me = &client.room_state.as_ref().expect("room-state")["payload"]["self"];
    assert_eq!(
        (me["user_id"].as_str(), me["username"].as_str()),
        (Some(user), Some(name))
    );
    let mut elsewhere = Client::connect(addr, "token-room-b", token).await;
    elsewhere.expect_close(1008, "room_forbidden").await;
}

#[tokio::test]
async fn hs256_token_joins_its_room_and_is_refused_in_another() {
    let env = |o: ServerOptions| {
        o.env("JWT_ISSUER", "https://backend.example")
            .env("JWT_AUDIENCE", "switchboard")
    };
    let server = env(ServerOptions::with_secret(SECRET)).start();
    let before = now_secs();
    let out = mint(
        env(ServerOptions::with_secret(SECRET)),
        &[
            "--sub",
            "alice",
            "--name",
            "Alice",
            "--room",
            "token-room-a",
            "--ttl",
            "10m",
            "--grant",
            "room_admin",
            "--metadata",
            r#"{"team":"blue","seat":3}"#,
        ],
    );
    let token = printed_token(&out);
    let mut claims = payload(&token);
    let iat = claims["iat"].as_u64().expect("iat");
    assert!((before..=now_secs()).contains(&iat), "iat {iat}");
    assert_eq!(claims["exp"].as_u64(), Some(iat + 600));
    for time in ["iat", "exp"] {
        claims.as_object_mut().expect("object").remove(time);
    }
    assert_eq!(
        claims,
        json!({
            "sub": "alice",
            "name": "Alice",
            "rooms": ["token-room-a"],
            "grants": {"room_admin": true},
            "metadata": {"team": "blue", "seat": 3},
            "iss": "https://backend.example",
            "aud": "switchboard",
        })
    );
    assert_accepted_for_room_only(server.addr(), &token, "token-room-a", "alice", "Alice").await;
}

#[tokio::test]
async fn rs256_token_from_the_config_file_private_key_is_accepted() {
    let mut file = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("temp file");
    // One file for both: the server reads the public key, `token` the private one.
    write!(
        file,
        "jwt:\n  algorithm: RS256\n  public_key_file: {}\n  private_key_file: {}\n",
        rsa_public_key_path().display(),
        fixture("test-only-rsa-private.pem").display()
    )
    .expect("write config");
    let config = file.path().to_string_lossy().into_owned();
    let server = ServerOptions::new().args(["--config", &config]).start();
    let token = printed_token(&mint(
        ServerOptions::new(),
        &[
            "--config",
            &config,
            "--sub",
            "bob",
            "--room",
            "token-room-a",
        ],
    ));
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().expect("header"))
            .expect("base64url header"),
    )
    .expect("JSON header");
    assert_eq!(header["alg"], "RS256");
    assert_accepted_for_room_only(server.addr(), &token, "token-room-a", "bob", "bob").await;
}

#[test]
fn without_a_signing_key_it_exits_78_with_one_line() {
    // The server's configuration holds only the public key.
    let out = mint(
        ServerOptions::new().env("JWT_ALGORITHM", "RS256").env(
            "JWT_PUBLIC_KEY_FILE",
            rsa_public_key_path().to_string_lossy(),
        ),
        &["--sub", "alice"],
    );
    assert_eq!(out.code, Some(78), "stderr: {:?}", out.stderr);
    assert!(out.stdout.is_empty(), "{:?}", out.stdout);
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with(
            "config error: jwt.private_key_file (JWT_PRIVATE_KEY_FILE / --jwt-private-key-file): no signing key"
        ),
        "{lines:?}"
    );
}

#[test]
fn bad_arguments_exit_64_with_one_line_each() {
    let out = mint(
        ServerOptions::with_secret(SECRET),
        &[
            "--sub",
            "alice",
            "--ttl",
            "soon",
            "--metadata",
            "[1]",
            "--room",
            "a/b",
        ],
    );
    assert_eq!(out.code, Some(64), "stderr: {:?}", out.stderr);
    assert!(out.stdout.is_empty(), "{:?}", out.stdout);
    assert_eq!(
        out.stderr_lines(),
        [
            "token error: --room: expected room ids of 1-64 characters A-Z, a-z, 0-9, '_' or '-' (or * for every room), got \"a/b\"",
            "token error: --ttl: expected a lifetime like 90s, 15m, 1h or 7d (at most 365d), got \"soon\"",
            "token error: --metadata: expected a JSON object like '{\"team\":\"blue\"}', got an array",
        ]
    );
}
