//! Raw loopback TCP for the connection-limit tests: sockets from a chosen `127.0.0.x` source
//! address (Linux routes all of 127.0.0.0/8 to `lo`, so each test can be its own "client
//! address"), requests written by hand, and waiting (bounded) for the server to close a socket.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::http::{parse_response, HttpResponse};

/// Bound on one request written and answered by hand.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `addr` from `source` (port chosen by the kernel).
pub async fn connect_from(source: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .expect("tcp socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .unwrap_or_else(|e| panic!("bind {source}: {e}"));
    tokio::time::timeout(REQUEST_TIMEOUT, socket.connect(addr))
        .await
        .unwrap_or_else(|_| panic!("connect from {source} to {addr} timed out"))
        .unwrap_or_else(|e| panic!("connect from {source} to {addr}: {e}"))
}

/// `GET path HTTP/1.1` with `headers`, keep-alive unless `close`; the request head as bytes.
pub fn get_request(path: &str, headers: &[(&str, &str)], close: bool) -> Vec<u8> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: switchboard.test\r\n");
    if close {
        req.push_str("Connection: close\r\n");
    }
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// A WebSocket upgrade request head for `path` (with `headers`), for sockets that should
/// upgrade and then be left alone.
pub fn upgrade_request(path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut all = vec![
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    all.extend_from_slice(headers);
    get_request(path, &all, false)
}

/// Writes `request` and reads one response head and its body up to `Content-Length` (or to the
/// close for responses without one); the socket stays open if the server keeps it.
pub async fn exchange(stream: &mut TcpStream, request: &[u8]) -> HttpResponse {
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        stream.write_all(request).await.expect("write request");
        read_response(stream).await
    })
    .await
    .unwrap_or_else(|_| panic!("no response within {REQUEST_TIMEOUT:?}"))
}

/// Reads one response (see [`exchange`]).
pub async fn read_response(stream: &mut TcpStream) -> HttpResponse {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let upgrade = head.starts_with("http/1.1 101");
            match length {
                Some(n) if raw.len() >= end + 4 + n => break,
                None if upgrade => break,
                _ => {}
            }
        }
        let n = stream.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    parse_response(&raw)
        .unwrap_or_else(|e| panic!("bad response ({e:#}): {:?}", String::from_utf8_lossy(&raw)))
}

/// Opens a socket from `source`, sends one `GET path` with `Connection: close` and `headers`,
/// and returns the response.
pub async fn get_from(
    source: IpAddr,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    let mut stream = connect_from(source, addr).await;
    exchange(&mut stream, &get_request(path, headers, true)).await
}

/// Waits up to `timeout` for the server to close `stream` (EOF or reset), discarding what it
/// sends; returns when that happened, or `None` if the socket is still open.
pub async fn wait_closed(stream: &mut TcpStream, timeout: Duration) -> Option<Instant> {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(Instant::now()),
            Ok(Ok(_)) => {}
        }
    }
}

/// True if the server has not closed `stream` yet (nothing to read, no EOF) — checked without
/// waiting.
pub async fn still_open(stream: &mut TcpStream) -> bool {
    wait_closed(stream, Duration::from_millis(1))
        .await
        .is_none()
}
