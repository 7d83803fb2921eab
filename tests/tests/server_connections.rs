//! Connections that never finish their request, and too many of them, against the real server:
//! idle and slow-header sockets closed by the header read timeout while a real client joins,
//! oversize heads refused with 431, the per-address cap (429) and the overall cap (503) with
//! health endpoints still answered, WebSockets counted for as long as they live, and client
//! addresses from a trusted proxy's `X-Forwarded-For` (an untrusted one's ignored).
//!
//! Each test uses its own `127.0.0.x` source addresses for the sockets it piles up, so the real
//! client (from 127.0.0.1) is never the one being limited.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use switchboard_e2e::client::{ws_path, Client, ConnectOptions};
use switchboard_e2e::http::{get, HttpResponse};
use switchboard_e2e::server::{ServerOptions, ServerProcess};
use switchboard_e2e::tcp::{
    connect_from, exchange, get_from, get_request, still_open, upgrade_request, wait_closed,
};
use switchboard_e2e::token::Claims;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const SECRET: &str = "e2e-connections-secret-0123456789abcdef";
/// The default per-address cap (`connections.max_per_ip`).
const DEFAULT_MAX_PER_IP: usize = 100;
/// Refused connections answered per address on top of its cap.
const REFUSALS_PER_ADDRESS: usize = 8;
/// The default largest request head (`connections.max_header_bytes`).
const DEFAULT_MAX_HEADER_BYTES: usize = 16384;
/// Extra time allowed for a close the server owes, on a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(3);

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn token(user: &str) -> String {
    Claims::user(user).hs256(SECRET)
}

fn server(env: &[(&str, &str)]) -> ServerProcess {
    let mut options = ServerOptions::with_secret(SECRET);
    for (k, v) in env {
        options = options.env(*k, *v);
    }
    options.start()
}

/// The exact refusal: status, JSON error code, `Retry-After`, and the connection closed after it.
fn assert_refusal(resp: &HttpResponse, status: u16, code: &str) {
    assert_eq!(resp.status, status, "{}", resp.text());
    let body = resp.json();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_eq!(resp.header("retry-after"), Some("5"), "{:?}", resp.headers);
    assert_eq!(
        resp.header("connection"),
        Some("close"),
        "{:?}",
        resp.headers
    );
}

fn assert_alive(resp: &HttpResponse) {
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["status"], "alive");
}

/// Opens `n` sockets from `source`, each with one answered keep-alive request: admitted and
/// counted, idle until the header read timeout.
async fn held_sockets(server: &ServerProcess, source: IpAddr, n: usize) -> Vec<TcpStream> {
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        sockets.push(held_socket(server, source, "/webrtc/health/live", &[]).await);
    }
    sockets
}

/// One socket from `source` whose keep-alive `GET path` (with `headers`) was answered 200.
async fn held_socket(
    server: &ServerProcess,
    source: IpAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> TcpStream {
    let mut s = connect_from(source, server.addr()).await;
    let resp = exchange(&mut s, &get_request(path, headers, false)).await;
    assert_eq!(
        resp.status,
        200,
        "held socket from {source}: {}",
        resp.text()
    );
    s
}

/// A WebSocket upgrade (valid token) from `source`, answered with anything but 101.
async fn upgrade_from(
    source: IpAddr,
    server: &ServerProcess,
    room: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    let mut s = connect_from(source, server.addr()).await;
    let request = upgrade_request(&ws_path(room, &token("upgrader")), headers);
    exchange(&mut s, &request).await
}

/// Polls (bounded) until a request from `source` is served again after a slot was freed.
async fn wait_admitted(server: &ServerProcess, source: IpAddr, headers: &[(&str, &str)]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let resp = get_from(source, server.addr(), "/webrtc/stats", headers).await;
        if resp.status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "a freed slot was not reused within 5 s: {} {}",
            resp.status,
            resp.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn idle_and_slow_header_sockets_are_closed_by_the_header_timeout_while_a_client_joins() {
    const TIMEOUT_MS: u64 = 1000;
    const IDLE: usize = 40;
    const SLOW: usize = 40;
    let server = server(&[("SWITCHBOARD_HEADER_READ_TIMEOUT_MS", "1000")]);
    let addr = server.addr();
    let opened = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..IDLE {
        idle.push(connect_from(loopback(2), addr).await);
    }
    // Slow headers: one byte every 100 ms, never the end of the head.
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let stream = connect_from(loopback(3), addr).await;
        slow.push(tokio::spawn(async move {
            let mut stream = stream;
            let head = b"GET /webrtc/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ";
            let mut sent = 0usize;
            let started = Instant::now();
            loop {
                let byte = head.get(sent).copied().unwrap_or(b'a');
                if stream.write_all(&[byte]).await.is_err() {
                    break;
                }
                sent += 1;
                if started.elapsed() > Duration::from_millis(TIMEOUT_MS) + SLACK {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Still being written to when the server gave up on it: wait for the close.
            let closed = wait_closed(&mut stream, SLACK).await;
            (sent, closed)
        }));
    }
    // A real client joins and relays while the sockets are open.
    let mut alice = Client::join(addr, "slow-room", &token("alice")).await;
    let mut bob = Client::join(addr, "slow-room", &token("bob")).await;
    alice.expect_type("user-joined").await;
    switchboard_e2e::client::assert_pair_relays(&mut alice, &mut bob).await;
    assert_alive(&get(addr, "/webrtc/health/live").await);
    // Nothing is closed early: at half the timeout every idle socket is still open.
    let half = opened + Duration::from_millis(TIMEOUT_MS / 2);
    if Instant::now() < half {
        tokio::time::sleep_until(half.into()).await;
        for (i, s) in idle.iter_mut().enumerate() {
            assert!(
                still_open(s).await,
                "idle socket {i} closed before the header timeout"
            );
        }
    }
    let bound = Duration::from_millis(TIMEOUT_MS) + SLACK;
    for (i, s) in idle.iter_mut().enumerate() {
        let left = bound.saturating_sub(opened.elapsed());
        let closed = wait_closed(s, left).await;
        assert!(
            closed.is_some(),
            "idle socket {i} still open {:?} after connecting (header timeout {TIMEOUT_MS} ms)",
            opened.elapsed()
        );
    }
    for (i, task) in slow.into_iter().enumerate() {
        let (sent, closed) = task.await.expect("slow-header task");
        let closed = closed.unwrap_or_else(|| {
            panic!("slow-header socket {i} still open after sending {sent} bytes over {bound:?}")
        });
        assert!(
            closed.duration_since(opened) < bound + SLACK,
            "slow-header socket {i} closed after {:?}",
            closed.duration_since(opened)
        );
    }
    // The joined clients were never subject to it.
    switchboard_e2e::client::assert_pair_relays(&mut alice, &mut bob).await;
}

#[tokio::test]
async fn oversize_request_heads_get_431_and_heads_within_the_bound_are_served() {
    let server = server(&[]);
    let addr = server.addr();
    let live_with_header_of = |len: usize| {
        let fill = "a".repeat(len);
        async move {
            get_from(
                loopback(8),
                addr,
                "/webrtc/health/live",
                &[("X-Fill", &fill)],
            )
            .await
        }
    };
    assert_alive(&live_with_header_of(DEFAULT_MAX_HEADER_BYTES - 1000).await);
    let resp = live_with_header_of(DEFAULT_MAX_HEADER_BYTES + 100).await;
    assert_eq!(resp.status, 431, "{}", resp.text());
    // A head that never ends (the 390 KB half-sent header): refused once the bound is reached,
    // not buffered.
    let mut s = connect_from(loopback(8), addr).await;
    let mut head = b"GET /webrtc/health/live HTTP/1.1\r\nHost: x\r\nX-Fill: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 2 * DEFAULT_MAX_HEADER_BYTES));
    s.write_all(&head).await.expect("write the unfinished head");
    let resp = switchboard_e2e::tcp::read_response(&mut s).await;
    assert_eq!(resp.status, 431, "{}", resp.text());
    assert!(
        wait_closed(&mut s, SLACK).await.is_some(),
        "socket kept open after 431"
    );
}

#[tokio::test]
async fn per_address_cap_refuses_with_429_while_health_still_answers() {
    // Defaults: 100 per address, 10 s header timeout (this test takes far less).
    let server = server(&[]);
    let addr = server.addr();
    let crowd = loopback(4);
    let mut held = held_sockets(&server, crowd, DEFAULT_MAX_PER_IP).await;

    let resp = get_from(crowd, addr, "/webrtc/stats", &[]).await;
    assert_refusal(&resp, 429, "too_many_connections");
    // An upgrade from that address is refused the same way, before it becomes a socket.
    let resp = upgrade_from(crowd, &server, "cap-room", &[]).await;
    assert_refusal(&resp, 429, "too_many_connections");
    // Probes from that address are still answered.
    assert_alive(&get_from(crowd, addr, "/webrtc/health/live", &[]).await);
    let ready = get_from(crowd, addr, "/webrtc/health/ready", &[]).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["status"], "ready");
    // Other addresses are not affected.
    let stats = get(addr, "/webrtc/stats").await;
    assert_eq!(stats.status, 200, "{}", stats.text());
    let _carol = Client::join(addr, "cap-room", &token("carol")).await;

    // Closing one held socket frees its slot.
    drop(held.pop());
    wait_admitted(&server, crowd, &[]).await;
}

#[tokio::test]
async fn overall_cap_refuses_with_503_and_websockets_count_while_they_live() {
    const MAX: usize = 6;
    let server = server(&[
        ("SWITCHBOARD_MAX_CONNECTIONS", "6"),
        ("SWITCHBOARD_HEADER_READ_TIMEOUT_MS", "1000"),
    ]);
    let addr = server.addr();
    let mut clients = Vec::new();
    for i in 0..MAX {
        clients.push(Client::join(addr, "busy-room", &token(&format!("u{i}"))).await);
    }
    // Past the header read timeout: upgraded sockets are not subject to it, and still count.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let other = loopback(5);
    let resp = get_from(other, addr, "/webrtc/stats", &[]).await;
    assert_refusal(&resp, 503, "server_busy");
    let resp = upgrade_from(other, &server, "busy-room", &[]).await;
    assert_refusal(&resp, 503, "server_busy");
    assert_alive(&get_from(other, addr, "/webrtc/health/live", &[]).await);
    assert_alive(&get(addr, "/webrtc/health/live").await);
    let health = get(addr, "/webrtc/health").await;
    assert_eq!(health.status, 200, "{}", health.text());
    assert_eq!(
        health.json()["connections"],
        MAX as u64,
        "{}",
        health.text()
    );
    // The joined clients still relay (the last two: one `user-joined` to read first).
    let (older, last) = clients.split_at_mut(MAX - 1);
    let second_last = &mut older[MAX - 2];
    second_last.expect_type("user-joined").await;
    switchboard_e2e::client::assert_pair_relays(second_last, &mut last[0]).await;

    // A WebSocket that closes gives its slot back.
    clients.pop().expect("a client").close().await;
    wait_admitted(&server, other, &[]).await;
}

/// WebSocket through the "proxy" at `source`, forwarding for `client`.
async fn proxied_ws(server: &ServerProcess, source: IpAddr, client: &str, user: &str) -> Client {
    let options = ConnectOptions {
        source: Some(source),
        ..ConnectOptions::default()
    }
    .header("X-Forwarded-For", client);
    let mut c = Client::connect_with(
        server.addr(),
        "proxy-room",
        &ws_path("proxy-room", &token(user)),
        &options,
    )
    .await;
    c.read_room_state().await;
    c
}

#[tokio::test]
async fn a_trusted_proxys_forwarded_address_is_counted_and_an_untrusted_header_is_ignored() {
    let proxy = loopback(6);
    let server = server(&[
        ("SWITCHBOARD_TRUSTED_PROXIES", "127.0.0.6"),
        ("SWITCHBOARD_MAX_CONNECTIONS_PER_IP", "2"),
    ]);
    let addr = server.addr();
    let client = "203.0.113.7";
    // Two WebSockets for one client through the proxy fill that client's cap ...
    let _w1 = proxied_ws(&server, proxy, client, "w1").await;
    let w2 = proxied_ws(&server, proxy, client, "w2").await;
    let xff = [("X-Forwarded-For", client)];
    assert_refusal(
        &get_from(proxy, addr, "/webrtc/stats", &xff).await,
        429,
        "too_many_connections",
    );
    let resp = upgrade_from(proxy, &server, "proxy-room", &xff).await;
    assert_refusal(&resp, 429, "too_many_connections");
    // ... and prepending a made-up address does not escape it (the rightmost entry counts).
    let spoofed = [("X-Forwarded-For", "198.51.100.1, 203.0.113.7")];
    assert_refusal(
        &get_from(proxy, addr, "/webrtc/stats", &spoofed).await,
        429,
        "too_many_connections",
    );
    // Other clients of the same proxy are served, although the proxy itself holds more than
    // two sockets: its own sockets are not capped per address.
    let other = [("X-Forwarded-For", "203.0.113.8")];
    let resp = get_from(proxy, addr, "/webrtc/stats", &other).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let _w4 = proxied_ws(&server, proxy, "203.0.113.8", "w4").await;

    // An untrusted peer's header is ignored: naming the capped client does not refuse it, and
    // naming fresh addresses does not lift its own cap of two.
    let untrusted = loopback(7);
    let _u1 = held_socket(&server, untrusted, "/webrtc/stats", &xff).await;
    let _u2 = held_socket(&server, untrusted, "/webrtc/stats", &other).await;
    let fresh = [("X-Forwarded-For", "192.0.2.99")];
    assert_refusal(
        &get_from(untrusted, addr, "/webrtc/stats", &fresh).await,
        429,
        "too_many_connections",
    );

    // The forwarded client's slot lives as long as its WebSocket.
    w2.close().await;
    wait_admitted(&server, proxy, &xff).await;
}

/// The open-file limit the fd tests give the server (soft and hard, so it cannot raise it).
const LOW_FD_LIMIT: u64 = 256;
/// `connections.max` fitted to [`LOW_FD_LIMIT`]: 256 less 64 descriptors of headroom is 192,
/// which holds 175 connections and their refusal reserve of 17.
const FITTED_MAX: usize = 175;

/// Opens `n` sockets from `source` and sends nothing on them. Sockets the server closes at
/// once are still returned (reading them gives EOF).
async fn idle_sockets(server: &ServerProcess, source: IpAddr, n: usize) -> Vec<TcpStream> {
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        sockets.push(connect_from(source, server.addr()).await);
    }
    sockets
}

/// How many of `sockets` the server has not closed.
async fn open_count(sockets: &mut [TcpStream]) -> usize {
    let mut open = 0;
    for s in sockets.iter_mut() {
        if still_open(s).await {
            open += 1;
        }
    }
    open
}

/// The server never failed to accept (out of descriptors) and still runs.
fn assert_never_out_of_descriptors(server: &mut ServerProcess) {
    assert!(server.try_exit().is_none(), "{}", server.stderr_tail());
    let lines = server.stderr_lines();
    assert!(
        !lines.iter().any(|l| l.contains("accept failed")),
        "the server ran out of file descriptors: {lines:#?}"
    );
}

/// The finding: with a lower file-descriptor limit, idle sockets made real joins and
/// `/webrtc/health/live` time out. With 256 descriptors `connections.max` is lowered to fit
/// (and says so), and 400 idle sockets from one address hold only that address's cap plus its
/// refusals: real clients join and relay, and every probe is answered, while they are open.
#[tokio::test]
async fn with_256_file_descriptors_idle_sockets_from_one_address_leave_joins_and_probes_alone() {
    let mut server = ServerOptions::with_secret(SECRET)
        .fd_limit(LOW_FD_LIMIT)
        .start();
    // Logged on stderr around the `listening on` line: wait for it (bounded).
    let deadline = Instant::now() + Duration::from_secs(5);
    let lowered = loop {
        let found = server
            .stderr_lines()
            .into_iter()
            .find(|l| l.contains("connections.max lowered"));
        match found {
            Some(line) => break line,
            None if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            None => panic!("no warning about the lowered cap: {}", server.stderr_tail()),
        }
    };
    assert!(
        lowered.contains(&format!("effective={FITTED_MAX}")) && lowered.contains("fd_limit=256"),
        "{lowered}"
    );
    let addr = server.addr();
    let mut idle = idle_sockets(&server, loopback(9), 400).await;

    let mut alice = Client::join(addr, "fd-room", &token("alice")).await;
    let mut bob = Client::join(addr, "fd-room", &token("bob")).await;
    alice.expect_type("user-joined").await;
    switchboard_e2e::client::assert_pair_relays(&mut alice, &mut bob).await;
    assert_alive(&get(addr, "/webrtc/health/live").await);
    let ready = get(addr, "/webrtc/health/ready").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    // The server holds the address's cap, and its refusals (for 2 s); it closed the rest.
    let held = open_count(&mut idle).await;
    assert!(
        (DEFAULT_MAX_PER_IP..=DEFAULT_MAX_PER_IP + REFUSALS_PER_ADDRESS).contains(&held),
        "{held} of 400 idle sockets from one address held"
    );
    assert_never_out_of_descriptors(&mut server);
}

/// Idle sockets from many addresses fill the fitted `connections.max` of a server with 256
/// descriptors: it never runs out of them (sockets past the cap and its reserve are closed at
/// once), `/webrtc/health/live` is answered, a join is refused with a clear 503
/// `server_busy` instead of timing out, and once the header timeout has closed the idle
/// sockets, real clients join again.
#[tokio::test]
async fn with_256_file_descriptors_a_full_server_refuses_with_503_answers_probes_and_recovers() {
    const TIMEOUT_MS: u64 = 8000;
    let mut server = ServerOptions::with_secret(SECRET)
        .fd_limit(LOW_FD_LIMIT)
        .env("SWITCHBOARD_HEADER_READ_TIMEOUT_MS", TIMEOUT_MS.to_string())
        .start();
    let addr = server.addr();
    let opened = Instant::now();
    let mut idle = Vec::new();
    // 600 sockets, far more than the 256 descriptors.
    for last in 10..16 {
        idle.extend(idle_sockets(&server, loopback(last), 100).await);
    }
    // The refused sockets in the reserve get 2 s for their head; the admitted ones the full
    // header timeout.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        opened.elapsed() < Duration::from_millis(TIMEOUT_MS - 2000),
        "opening the sockets took {:?}; the test cannot tell the timeouts apart",
        opened.elapsed()
    );
    assert_eq!(open_count(&mut idle).await, FITTED_MAX, "sockets held");
    assert_alive(&get(addr, "/webrtc/health/live").await);
    let resp = upgrade_from(loopback(1), &server, "fd-room", &[]).await;
    assert_refusal(&resp, 503, "server_busy");

    // The idle sockets are closed by the header timeout; then the server takes joins again.
    let bound = Duration::from_millis(TIMEOUT_MS) + SLACK;
    for (i, s) in idle.iter_mut().enumerate() {
        let left = bound.saturating_sub(opened.elapsed());
        assert!(
            wait_closed(s, left).await.is_some(),
            "idle socket {i} still open {:?} after connecting",
            opened.elapsed()
        );
    }
    let mut alice = Client::join(addr, "fd-room", &token("alice")).await;
    let mut bob = Client::join(addr, "fd-room", &token("bob")).await;
    alice.expect_type("user-joined").await;
    switchboard_e2e::client::assert_pair_relays(&mut alice, &mut bob).await;
    assert_never_out_of_descriptors(&mut server);
}

/// Below what the caps can be fitted to (16 descriptors: `connections.max` is 1, and its
/// refusal reserve alone needs more), idle sockets do exhaust the descriptors and `accept`
/// fails. The server must neither exit nor spin on the failing `accept`: it pauses (250 ms)
/// between attempts, so it logs at most a few failures a second, and serves again once the
/// sockets are gone.
#[tokio::test]
async fn out_of_file_descriptors_the_accept_loop_backs_off_and_recovers() {
    const PAUSE_MS: u128 = 250;
    let mut server = ServerOptions::with_secret(SECRET).fd_limit(16).start();
    let addr = server.addr();
    let failures = |server: &ServerProcess| {
        server
            .stderr_lines()
            .iter()
            .filter(|l| l.contains("accept failed"))
            .count()
    };
    let started = Instant::now();
    let mut idle = Vec::new();
    for last in 20..24 {
        idle.extend(idle_sockets(&server, loopback(last), 10).await);
    }
    // Past several pauses: every attempt in between fails, as there is still no descriptor.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let failed = failures(&server);
    let bound = (started.elapsed().as_millis() / PAUSE_MS) as usize + 2;
    assert!(
        failed >= 1,
        "accept never ran out of descriptors: {}",
        server.stderr_tail()
    );
    assert!(
        failed <= bound,
        "{failed} failed accepts logged in {:?}: the loop does not back off",
        started.elapsed()
    );
    assert!(server.try_exit().is_none(), "{}", server.stderr_tail());

    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = connect_from(loopback(1), addr).await;
        let request = get_request("/webrtc/health/live", &[], true);
        s.write_all(&request).await.expect("write the probe");
        let mut raw = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(2), async {
            use tokio::io::AsyncReadExt as _;
            let _ = s.read_to_end(&mut raw).await;
        })
        .await;
        if read.is_ok() && raw.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not answer /webrtc/health/live again: {}",
            server.stderr_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _alice = Client::join(addr, "fd-room", &token("alice")).await;
    assert!(server.try_exit().is_none(), "{}", server.stderr_tail());
}

/// `POST /webrtc/dev/token` (a route that reads its body) announcing `length` body bytes.
fn dev_token_head(length: usize) -> String {
    format!(
        "POST /webrtc/dev/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\n\r\n"
    )
}

/// Sends a head announcing 40 body bytes from `source`, then the body one byte every
/// `gap` (never, for `None`) until the server answers; returns the answer and when the
/// connection ended.
async fn slow_body(
    addr: std::net::SocketAddr,
    source: IpAddr,
    gap: Option<Duration>,
) -> (HttpResponse, Instant) {
    use tokio::io::AsyncReadExt as _;
    let (mut reader, mut writer) = connect_from(source, addr).await.into_split();
    writer
        .write_all(dev_token_head(40).as_bytes())
        .await
        .expect("write the head");
    let trickle = async {
        if let Some(gap) = gap {
            for _ in 0..40 {
                if writer.write_all(b" ").await.is_err() {
                    break;
                }
                tokio::time::sleep(gap).await;
            }
        }
        std::future::pending::<()>().await
    };
    let mut raw = Vec::new();
    let read = async {
        let _ = tokio::time::timeout(Duration::from_secs(20), reader.read_to_end(&mut raw)).await;
    };
    tokio::select! {
        () = trickle => unreachable!(),
        () = read => {}
    }
    let ended = Instant::now();
    let response = switchboard_e2e::http::parse_response(&raw).unwrap_or_else(|e| {
        panic!(
            "no answer to a slow body ({e:#}): {:?}",
            String::from_utf8_lossy(&raw)
        )
    });
    (response, ended)
}

/// A client that sends a request head and then trickles the body a byte every 250 ms (it
/// would take 10 s), or never sends it, is answered 408 `body_timeout` and disconnected once
/// `connections.body_read_timeout_ms` has passed since its head — the trickle does not
/// extend it — while a real client mints its token and joins.
#[tokio::test]
async fn a_request_body_trickled_or_never_sent_gets_408_at_the_body_timeout() {
    const TIMEOUT_MS: u64 = 1500;
    const EACH: usize = 20;
    let server = ServerOptions::new()
        .arg("--dev")
        .env("SWITCHBOARD_BODY_READ_TIMEOUT_MS", TIMEOUT_MS.to_string())
        .start();
    let addr = server.addr();
    let started = Instant::now();
    let mut attackers = Vec::new();
    for gap in [Some(Duration::from_millis(250)), None] {
        for _ in 0..EACH {
            attackers.push(tokio::spawn(slow_body(addr, loopback(12), gap)));
        }
    }
    let mint = |name: &'static str| async move {
        let body = format!(r#"{{"name": "{name}"}}"#);
        let headers = [("Content-Type", "application/json")];
        let resp = switchboard_e2e::http::send(
            addr,
            "POST",
            "/webrtc/dev/token",
            &headers,
            body.as_bytes(),
        )
        .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        resp.json()["token"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let mut alice = Client::join(addr, "body-room", &mint("Alice").await).await;
    let mut bob = Client::join(addr, "body-room", &mint("Bob").await).await;
    alice.expect_type("user-joined").await;
    switchboard_e2e::client::assert_pair_relays(&mut alice, &mut bob).await;

    let bound = Duration::from_millis(TIMEOUT_MS) + SLACK;
    for (i, task) in attackers.into_iter().enumerate() {
        let (resp, ended) = task.await.expect("slow body task");
        assert_eq!(resp.status, 408, "attacker {i}: {}", resp.text());
        assert_eq!(resp.json()["error"]["code"], "body_timeout", "attacker {i}");
        assert_eq!(resp.header("connection"), Some("close"), "attacker {i}");
        let took = ended.duration_since(started);
        assert!(
            took >= Duration::from_millis(TIMEOUT_MS) && took < bound,
            "attacker {i} answered after {took:?} (body timeout {TIMEOUT_MS} ms)"
        );
    }
    switchboard_e2e::client::assert_pair_relays(&mut alice, &mut bob).await;
}

/// A body announced larger than the bound (`limits.max_message_bytes`, 65536 by default) is
/// refused 413 `body_too_large` before a byte of it is read, on any route.
#[tokio::test]
async fn a_request_body_over_the_bound_gets_413_before_it_is_read() {
    let server = server(&[]);
    let mut s = connect_from(loopback(13), server.addr()).await;
    let head = "POST /webrtc/health/live HTTP/1.1\r\nHost: x\r\nContent-Length: 65537\r\n\r\n";
    let resp = exchange(&mut s, head.as_bytes()).await;
    assert_eq!(resp.status, 413, "{}", resp.text());
    assert_eq!(resp.json()["error"]["code"], "body_too_large");
    assert!(
        wait_closed(&mut s, SLACK).await.is_some(),
        "socket kept open after 413"
    );
}
