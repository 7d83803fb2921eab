//! CORS on the REST endpoints of a real server: preflights from an allowed origin get the exact
//! allow headers, a refused origin gets none, GETs with `Origin` carry the allow-origin header,
//! unset `allowed_origins` answers any origin, and the upgrade still refuses a foreign origin.

use std::net::SocketAddr;
use std::time::Duration;

use switchboard_e2e::http::{get_with, parse_response, HttpResponse};
use switchboard_e2e::server::{ServerOptions, ServerProcess};
use switchboard_e2e::token::Claims;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "e2e-cors-secret-0123456789abcdef";
const APP: &str = "https://app.example";
const EVIL: &str = "https://evil.example";

fn server_for(origins: &str) -> ServerProcess {
    ServerOptions::with_secret(SECRET)
        .env("WEBRTC_ALLOWED_ORIGINS", origins)
        .start()
}

/// A browser's preflight for `GET path` with an `Authorization` header, sent over raw HTTP/1.1.
async fn preflight(addr: SocketAddr, path: &str, origin: &str) -> HttpResponse {
    let req = format!(
        "OPTIONS {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nOrigin: {origin}\r\n\
         Access-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: authorization\r\n\r\n"
    );
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        parse_response(&raw)
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("OPTIONS {path} timed out"))
        .unwrap_or_else(|e| panic!("OPTIONS {path} failed: {e:#}"))
}

fn list_of(resp: &HttpResponse, name: &str) -> Vec<String> {
    let mut items: Vec<String> = resp
        .header(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", resp.headers))
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    items.sort();
    items
}

#[tokio::test]
async fn preflight_from_an_allowed_origin_gets_exact_allow_headers() {
    let server = server_for(&format!("{APP},https://other.example"));
    let resp = preflight(server.addr(), "/webrtc/config", APP).await;
    assert!(
        resp.status == 200 || resp.status == 204,
        "status {}",
        resp.status
    );
    assert_eq!(resp.header("access-control-allow-origin"), Some(APP));
    assert_eq!(
        list_of(&resp, "access-control-allow-methods"),
        ["delete", "get", "patch", "post"]
    );
    assert_eq!(
        list_of(&resp, "access-control-allow-headers"),
        ["authorization", "content-type"]
    );
    assert_eq!(resp.header("access-control-max-age"), Some("600"));
    assert_eq!(resp.header("access-control-allow-credentials"), None);
    // The answer depends on Origin: caches must keep one per origin.
    assert!(
        resp.headers
            .iter()
            .any(|(k, v)| k == "vary" && v.to_ascii_lowercase().contains("origin")),
        "{:?}",
        resp.headers
    );
}

#[tokio::test]
async fn a_refused_origin_gets_no_allow_origin_header() {
    let server = server_for(APP);
    let token = Claims::user("alice").hs256(SECRET);
    let auth = format!("Bearer {token}");
    for origin in [EVIL, "https://app.example.evil.example", "null"] {
        let resp = preflight(server.addr(), "/webrtc/config", origin).await;
        assert_eq!(
            resp.header("access-control-allow-origin"),
            None,
            "preflight from {origin}"
        );
        let resp = get_with(
            server.addr(),
            "/webrtc/config",
            &[("Origin", origin), ("Authorization", &auth)],
        )
        .await;
        assert_eq!(
            resp.header("access-control-allow-origin"),
            None,
            "GET from {origin}"
        );
    }
}

#[tokio::test]
async fn get_from_an_allowed_origin_carries_the_allow_origin_header() {
    let server = server_for(APP);
    let token = Claims::user("alice").hs256(SECRET);
    let auth = format!("Bearer {token}");
    let headers = [("Origin", APP), ("Authorization", auth.as_str())];
    let resp = get_with(server.addr(), "/webrtc/config", &headers).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("access-control-allow-origin"), Some(APP));
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    // Errors are readable cross-origin too, so the app can show why.
    let resp = get_with(server.addr(), "/webrtc/config", &[("Origin", APP)]).await;
    assert_eq!(resp.status, 401);
    assert_eq!(resp.header("access-control-allow-origin"), Some(APP));
    assert_eq!(resp.json()["error"]["code"], "missing_token");
}

#[tokio::test]
async fn unset_allowed_origins_answers_any_origin() {
    let server = ServerOptions::with_secret(SECRET).start();
    let resp = preflight(server.addr(), "/webrtc/config", EVIL).await;
    assert!(resp.status == 200 || resp.status == 204, "{}", resp.status);
    assert_eq!(resp.header("access-control-allow-origin"), Some("*"));
    let token = Claims::user("alice").hs256(SECRET);
    let path = format!("/webrtc/rooms/cors-room/participants?token={token}");
    let resp = get_with(server.addr(), &path, &[("Origin", EVIL)]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("access-control-allow-origin"), Some("*"));
}

#[tokio::test]
async fn the_upgrade_still_refuses_a_foreign_origin_with_403() {
    let server = server_for(APP);
    let token = Claims::user("alice").hs256(SECRET);
    let path = format!("/webrtc/ws/cors-room?token={token}");
    // The origin check answers before any upgrade header is looked at.
    let resp = get_with(server.addr(), &path, &[("Origin", EVIL)]).await;
    assert_eq!(resp.status, 403, "{}", resp.text());
    assert_eq!(resp.json()["error"]["code"], "origin_forbidden");
    assert_eq!(resp.header("access-control-allow-origin"), None);
}
