//! REST endpoints of the real server: auth (401/403 JSON errors), `/webrtc/config` with static
//! and coturn REST TURN credentials (HMAC checked here), participants agreeing with room-state,
//! health/live/ready, stats, and the Prometheus `/metrics` text.

use std::io::Write;

use serde_json::{json, Value};
use switchboard_e2e::client::Client;
use switchboard_e2e::http::{get, get_bearer, send, HttpResponse};
use switchboard_e2e::server::ServerOptions;
use switchboard_e2e::token::{coturn_credential, now_secs, tamper_signature, Claims};

const SECRET: &str = "e2e-rest-secret-0123456789abcdef";
const ROOM: &str = "rest-room";
const TURN_SECRET: &str = "coturn-shared-secret-for-tests";

fn token(user: &str) -> String {
    Claims::user(user).hs256(SECRET)
}

fn assert_json_error(resp: &HttpResponse, status: u16) {
    assert_eq!(resp.status, status, "body: {}", resp.text());
    let ct = resp.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("application/json"), "content-type {ct:?}");
    let body = resp.json();
    assert!(body["error"]["code"].is_string(), "error.code: {body}");
    assert!(
        body["error"]["message"].is_string(),
        "error.message: {body}"
    );
}

/// `urls` as a list whether the server sent a string or a list.
fn urls_of(server: &Value) -> Vec<String> {
    match &server["urls"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(list) => list
            .iter()
            .map(|u| u.as_str().unwrap_or_default().to_string())
            .collect(),
        other => panic!("iceServers entry has no urls: {other}"),
    }
}

fn ice_servers(config: &Value) -> Vec<Value> {
    config["iceServers"]
        .as_array()
        .unwrap_or_else(|| panic!("iceServers is not a list: {config}"))
        .clone()
}

/// The iceServers entries with TURN urls; checks together they list exactly `urls` (the
/// server may group them in one entry or give each its own).
fn turn_entries(config: &Value, urls: &[&str]) -> Vec<Value> {
    let entries: Vec<Value> = ice_servers(config)
        .into_iter()
        .filter(|s| urls_of(s).iter().any(|u| u.starts_with("turn")))
        .collect();
    let mut listed: Vec<String> = entries.iter().flat_map(urls_of).collect();
    listed.sort();
    let mut expected: Vec<String> = urls.iter().map(|u| u.to_string()).collect();
    expected.sort();
    assert_eq!(listed, expected, "TURN urls in {config}");
    entries
}

/// Checks coturn REST credentials on every TURN entry; returns the common expiry.
fn check_coturn(config: &Value, urls: &[&str], user: &str) -> u64 {
    let mut expiries = Vec::new();
    for turn in turn_entries(config, urls) {
        let username = turn["username"].as_str().expect("TURN username");
        let (expiry, name) = username
            .split_once(':')
            .expect("username is <expiry>:<user>");
        assert_eq!(name, user, "{turn}");
        expiries.push(expiry.parse::<u64>().expect("expiry is a unix time"));
        assert_eq!(
            turn["credential"],
            coturn_credential(TURN_SECRET, username),
            "credential is base64(HMAC-SHA1(secret, username)): {turn}"
        );
    }
    expiries.dedup();
    assert_eq!(expiries.len(), 1, "one expiry: {config}");
    expiries[0]
}

const TURN_URLS: [&str; 2] = [
    "turn:turn.example:3478?transport=udp",
    "turns:turn.example:5349",
];

#[tokio::test]
async fn rest_requires_a_valid_token() {
    let server = ServerOptions::with_secret(SECRET).start();
    let addr = server.addr();
    let participants = format!("/webrtc/rooms/{ROOM}/participants");
    for path in ["/webrtc/config", participants.as_str()] {
        assert_json_error(&get(addr, path).await, 401);
        let bad = tamper_signature(&token("alice"));
        assert_json_error(&get_bearer(addr, path, &bad).await, 401);
        let expired = Claims::user("alice").expires_in(-3600).hs256(SECRET);
        assert_json_error(&get_bearer(addr, path, &expired).await, 401);
        let none = Claims::user("alice").alg_none();
        assert_json_error(&get_bearer(addr, path, &none).await, 401);
        assert_eq!(get_bearer(addr, path, &token("alice")).await.status, 200);
        // ?token= works as well.
        let sep = if path.contains('?') { '&' } else { '?' };
        let with_query = format!("{path}{sep}token={}", token("alice"));
        assert_eq!(get(addr, &with_query).await.status, 200);
    }
    // A token that may not use the room: 403.
    let limited = Claims::user("alice").rooms(&["elsewhere"]).hs256(SECRET);
    assert_json_error(&get_bearer(addr, &participants, &limited).await, 403);
    let allowed = Claims::user("alice").rooms(&[ROOM]).hs256(SECRET);
    assert_eq!(get_bearer(addr, &participants, &allowed).await.status, 200);
}

#[tokio::test]
async fn participants_endpoint_agrees_with_room_state() {
    let server = ServerOptions::with_secret(SECRET).start();
    let addr = server.addr();
    let path = format!("/webrtc/rooms/{ROOM}/participants");
    let empty = get_bearer(addr, &path, &token("alice")).await;
    assert_eq!(empty.status, 200);
    assert_eq!(empty.json()["participant_count"], 0);
    assert_eq!(empty.json()["participants"], json!([]));

    let mut alice = Client::join(addr, ROOM, &token("alice")).await;
    let bob = Client::join(addr, ROOM, &token("bob")).await;
    alice.expect_type("user-joined").await;
    let resp = get_bearer(addr, &path, &token("carol")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let body = resp.json();
    assert_eq!(body["room_id"], ROOM);
    assert_eq!(body["participant_count"], 2);
    let sort = |v: &Value| {
        let mut list = v.as_array().cloned().unwrap_or_default();
        list.sort_by_key(|p| p["participant_id"].as_str().unwrap_or_default().to_string());
        list
    };
    let from_rest = sort(&body["participants"]);
    let from_ws = sort(&bob.room_state.as_ref().unwrap()["payload"]["participants"]);
    assert_eq!(from_rest.len(), 2);
    for (rest, ws) in from_rest.iter().zip(&from_ws) {
        for key in ["participant_id", "user_id", "username", "joined_at"] {
            assert_eq!(rest[key], ws[key], "{key}: REST {rest} vs room-state {ws}");
        }
    }
    // After bob leaves, the endpoint shows alice alone.
    bob.close().await;
    alice.expect_type("user-left").await;
    let body = get_bearer(addr, &path, &token("carol")).await.json();
    assert_eq!(body["participant_count"], 1);
    assert_eq!(
        body["participants"][0]["participant_id"],
        alice.pid().as_str()
    );
}

#[tokio::test]
async fn config_with_coturn_secret_issues_time_limited_credentials() {
    let server = ServerOptions::with_secret(SECRET)
        .env("WEBRTC_TURN_URLS", TURN_URLS.join(","))
        .env("WEBRTC_TURN_SECRET", TURN_SECRET)
        .env("WEBRTC_TURN_CREDENTIAL_TTL", "3600")
        .start();
    let addr = server.addr();

    // A JWT expiring in 10 minutes caps the TURN credential below the 1 h TTL.
    let short_exp = now_secs() + 600;
    let short = Claims::user("alice").expires_in(600).hs256(SECRET);
    let resp = get_bearer(addr, "/webrtc/config", &short).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let cache = resp.header("cache-control").unwrap_or_default();
    assert!(cache.contains("no-store"), "Cache-Control: {cache:?}");
    let config = resp.json();
    assert_eq!(config["iceTransportPolicy"], "all");
    assert_eq!(config["bundlePolicy"], "balanced");
    assert_eq!(config["rtcpMuxPolicy"], "require");
    let stun: Vec<Value> = ice_servers(&config)
        .into_iter()
        .filter(|s| urls_of(s).iter().all(|u| u.starts_with("stun")))
        .collect();
    assert_eq!(stun.len(), 1, "{config}");
    assert_eq!(urls_of(&stun[0]), vec!["stun:stun.l.google.com:19302"]);
    let stun_has_creds = stun[0].get("username").is_some_and(|v| !v.is_null())
        || stun[0].get("credential").is_some_and(|v| !v.is_null());
    assert!(!stun_has_creds, "STUN needs no credentials: {config}");
    let expiry = check_coturn(&config, &TURN_URLS, "alice");
    assert!(
        expiry <= short_exp,
        "expiry {expiry} outlives the JWT exp {short_exp}"
    );
    assert!(expiry > now_secs(), "expiry {expiry} is in the past");

    // A long JWT gets the configured TTL.
    let long = Claims::user("bob").expires_in(7 * 86400).hs256(SECRET);
    let before = now_secs();
    let config = get_bearer(addr, "/webrtc/config", &long).await.json();
    let after = now_secs();
    let expiry = check_coturn(&config, &TURN_URLS, "bob");
    assert!(
        (before + 3600..=after + 3600).contains(&expiry),
        "expiry {expiry} should be now + 3600 ({before}..{after})"
    );
}

#[tokio::test]
async fn turn_secret_file_is_read() {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    // A trailing newline (as `echo` writes it) is not part of the secret.
    writeln!(file, "{TURN_SECRET}").expect("write");
    let server = ServerOptions::with_secret(SECRET)
        .env("WEBRTC_TURN_URLS", TURN_URLS.join(","))
        .env("WEBRTC_TURN_SECRET_FILE", file.path().to_string_lossy())
        .start();
    let resp = get_bearer(server.addr(), "/webrtc/config", &token("alice")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    check_coturn(&resp.json(), &TURN_URLS, "alice");
}

#[tokio::test]
async fn config_with_static_turn_credentials_and_policies() {
    let server = ServerOptions::with_secret(SECRET)
        .env(
            "WEBRTC_STUN_URLS",
            "stun:a.example:3478,stun:b.example:3478",
        )
        .env("WEBRTC_TURN_URLS", "turn:t.example:3478")
        .env("WEBRTC_TURN_USERNAME", "static-user")
        .env("WEBRTC_TURN_CREDENTIAL", "static-pass")
        .env("WEBRTC_ICE_TRANSPORT_POLICY", "relay")
        .env("WEBRTC_BUNDLE_POLICY", "max-bundle")
        .env("WEBRTC_RTCP_MUX_POLICY", "negotiate")
        .start();
    let resp = get_bearer(server.addr(), "/webrtc/config", &token("alice")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let config = resp.json();
    assert_eq!(config["iceTransportPolicy"], "relay");
    assert_eq!(config["bundlePolicy"], "max-bundle");
    assert_eq!(config["rtcpMuxPolicy"], "negotiate");
    let all_urls: Vec<String> = ice_servers(&config).iter().flat_map(urls_of).collect();
    for url in [
        "stun:a.example:3478",
        "stun:b.example:3478",
        "turn:t.example:3478",
    ] {
        assert!(
            all_urls.contains(&url.to_string()),
            "{url} missing: {config}"
        );
    }
    assert!(
        !all_urls.iter().any(|u| u.contains("google")),
        "default STUN replaced: {config}"
    );
    let turn = turn_entries(&config, &["turn:t.example:3478"]);
    assert_eq!(turn[0]["username"], "static-user");
    assert_eq!(turn[0]["credential"], "static-pass");
}

#[tokio::test]
async fn config_without_turn_has_only_stun() {
    let server = ServerOptions::with_secret(SECRET).start();
    let config = get_bearer(server.addr(), "/webrtc/config", &token("alice"))
        .await
        .json();
    let servers = ice_servers(&config);
    assert_eq!(servers.len(), 1, "{config}");
    assert_eq!(urls_of(&servers[0]), vec!["stun:stun.l.google.com:19302"]);
}

#[tokio::test]
async fn health_live_ready_stats() {
    let server = ServerOptions::with_secret(SECRET).start();
    let addr = server.addr();
    for path in [
        "/webrtc/health",
        "/webrtc/health/live",
        "/webrtc/health/ready",
    ] {
        let resp = get(addr, path).await;
        assert_eq!(resp.status, 200, "{path}: {}", resp.text());
    }
    let health = get(addr, "/webrtc/health").await;
    assert!(health.json().is_object(), "{}", health.text());
    for path in ["/webrtc/stats", "/webrtc/webrtc-metrics"] {
        let resp = get(addr, path).await;
        assert_eq!(resp.status, 200, "{path}: {}", resp.text());
        assert!(resp.json().is_object(), "{path}: {}", resp.text());
    }
}

/// The value of the sample `series` (`name` or `name{labels}`) in Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test]
async fn metrics_is_prometheus_text_with_live_numbers() {
    let server = ServerOptions::with_secret(SECRET).start();
    let addr = server.addr();
    let mut alice = Client::join(addr, ROOM, &token("alice")).await;
    let mut bob = Client::join(addr, ROOM, &token("bob")).await;
    alice.expect_type("user-joined").await;
    alice
        .send_msg("offer", Some(&bob.pid()), json!({"sdp": "x"}))
        .await;
    bob.expect_type("offer").await;
    alice.send_json(&json!({"type": "dance"})).await;
    alice.expect_type("error").await;

    let resp = get(addr, "/metrics").await;
    assert_eq!(resp.status, 200);
    let ct = resp.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("text/plain"), "content-type {ct:?}");
    let text = resp.text();
    // Every sample line is `series value`.
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (_, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        assert!(value.parse::<f64>().is_ok(), "bad value in {line:?}");
    }
    for (series, expected) in [
        ("switchboard_connections", 2.0),
        ("switchboard_participants", 2.0),
        ("switchboard_rooms", 1.0),
        ("switchboard_draining", 0.0),
        ("switchboard_messages_relayed_total{type=\"offer\"}", 1.0),
        ("switchboard_errors_total{code=\"unknown_type\"}", 1.0),
    ] {
        assert_eq!(
            sample(&text, series),
            Some(expected),
            "{series} in:\n{text}"
        );
    }
    assert!(
        text.contains("# TYPE switchboard_connections gauge"),
        "{text}"
    );
}

// ---------------------------------------------------------------- POST /webrtc/dev/token

const DEV_TOKEN: &str = "/webrtc/dev/token";

async fn mint_dev(
    addr: std::net::SocketAddr,
    body: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    send(addr, "POST", DEV_TOKEN, &all, body.as_bytes()).await
}

fn is_dev_user_id(id: &str, slug: &str) -> bool {
    id.strip_prefix(&format!("dev-{slug}-"))
        .is_some_and(|hex| hex.len() == 6 && hex.chars().all(|c| c.is_ascii_hexdigit()))
}

#[tokio::test]
async fn the_dev_token_endpoint_exists_only_with_dev() {
    let server = ServerOptions::with_secret(SECRET).start();
    let addr = server.addr();
    let post = mint_dev(addr, r#"{"name": "Alice"}"#, &[]).await;
    assert_eq!(post.status, 404, "{}", post.text());
    assert_eq!(get(addr, DEV_TOKEN).await.status, 404);
    // The demo page reads the mode from the health answer.
    assert_eq!(get(addr, "/webrtc/health").await.json()["dev"], false);

    let dev = ServerOptions::new().arg("--dev").start();
    assert_eq!(get(dev.addr(), "/webrtc/health").await.json()["dev"], true);
    assert_eq!(get(dev.addr(), DEV_TOKEN).await.status, 405, "POST only");
}

#[tokio::test]
async fn each_dev_token_is_a_user_of_its_own_that_can_join() {
    let server = ServerOptions::new().arg("--dev").start();
    let addr = server.addr();
    let own_origin = format!("http://{addr}");
    let mut minted = Vec::new();
    // The same name twice (two tabs typing "Alice"), once from the page's own origin.
    for origin in [None, Some(own_origin.as_str())] {
        let headers: Vec<(&str, &str)> = origin.map(|o| ("Origin", o)).into_iter().collect();
        let resp = mint_dev(addr, r#"{"name": "  Alice  "}"#, &headers).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.header("cache-control"), Some("no-store"));
        let body = resp.json();
        assert_eq!(body["name"], "Alice");
        assert_eq!(body["room"], "*");
        let user_id = body["user_id"].as_str().unwrap_or_default().to_string();
        assert!(is_dev_user_id(&user_id, "alice"), "user id {user_id:?}");
        let exp = body["expires_at"].as_u64().unwrap_or_default();
        let day = now_secs() + 24 * 3600;
        assert!((day - 120..=day + 5).contains(&exp), "expires_at {exp}");
        minted.push((
            body["token"].as_str().unwrap_or_default().to_string(),
            user_id,
        ));
    }
    assert_ne!(minted[0].1, minted[1].1, "two mints, two users");

    // Both join one room as two users with the name they typed.
    let mut a = Client::join(addr, "demo", &minted[0].0).await;
    let me = a.room_state.clone().unwrap_or_default();
    assert_eq!(me["payload"]["self"]["user_id"], minted[0].1.as_str());
    assert_eq!(me["payload"]["self"]["username"], "Alice");
    let _b = Client::join(addr, "demo", &minted[1].0).await;
    let joined = a.expect_type("user-joined").await;
    assert_eq!(
        joined["payload"]["user_id"],
        minted[1].1.as_str(),
        "{joined}"
    );

    // A token for one room is refused elsewhere.
    let resp = mint_dev(addr, r#"{"name": "Bob", "room": "standup"}"#, &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let body = resp.json();
    assert_eq!(body["room"], "standup");
    let bob = body["token"].as_str().unwrap_or_default().to_string();
    assert!(
        is_dev_user_id(body["user_id"].as_str().unwrap_or_default(), "bob"),
        "{body}"
    );
    Client::join(addr, "standup", &bob).await;
    Client::connect(addr, "demo", &bob)
        .await
        .expect_close(1008, "room_forbidden")
        .await;
}

#[tokio::test]
async fn bad_dev_token_requests_get_json_errors() {
    let server = ServerOptions::new().arg("--dev").start();
    let addr = server.addr();
    let long = format!(r#"{{"name": "{}"}}"#, "a".repeat(65));
    let huge = format!(r#"{{"name": "{}"}}"#, "a".repeat(2000));
    let cases: [(&str, u16, &str); 9] = [
        ("", 400, "invalid_request"),
        ("name=Alice", 400, "invalid_request"),
        (r#"{"name": 7}"#, 400, "invalid_request"),
        (
            r#"{"name": "Alice", "grants": {"room_admin": true}}"#,
            400,
            "invalid_request",
        ),
        (r#"{"name": "   "}"#, 400, "invalid_name"),
        (r#"{"name": "Al\u0007ice"}"#, 400, "invalid_name"),
        (&long, 400, "invalid_name"),
        (
            r#"{"name": "Alice", "room": "no spaces"}"#,
            400,
            "invalid_room_id",
        ),
        (&huge, 413, "body_too_large"),
    ];
    for (body, status, code) in cases {
        let resp = mint_dev(addr, body, &[]).await;
        assert_json_error(&resp, status);
        assert_eq!(resp.json()["error"]["code"], code, "body {body:?}");
    }
    // Another site's page in the developer's browser may not mint tokens for this server.
    let resp = mint_dev(
        addr,
        r#"{"name": "Alice"}"#,
        &[("Origin", "http://evil.example")],
    )
    .await;
    assert_json_error(&resp, 403);
    assert_eq!(resp.json()["error"]["code"], "origin_forbidden");
    // Nothing broke: the next good request is served.
    assert_eq!(
        mint_dev(addr, r#"{"name": "Alice"}"#, &[]).await.status,
        200
    );
}
