//! In-process checks through real sockets: `serve` on 127.0.0.1:0 with a
//! oneshot shutdown. The full bad-input matrix lives in the top-level e2e
//! crate; these cover what is easiest to see from inside.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard_e2e::token::{now_secs, Claims};
use switchboard_server::config::{Command, Config};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "in-process-secret-0123456789abcdef";

fn config(extra: &[(&str, &str)]) -> Config {
    let mut env: HashMap<String, String> = HashMap::new();
    env.insert("JWT_SECRET".into(), SECRET.into());
    env.insert("SWITCHBOARD_DRAIN_DELAY_MS".into(), "300".into());
    env.insert("SWITCHBOARD_DRAIN_WINDOW_MS".into(), "200".into());
    for (k, v) in extra {
        env.insert((*k).into(), (*v).into());
    }
    let files: HashMap<String, String> = HashMap::new();
    match Config::load(&["--listen".into(), "127.0.0.1:0".into()], &env, &files) {
        Ok(Command::Run(c)) => *c,
        other => panic!("config: {other:?}"),
    }
}

/// Valid for ten minutes (the TURN test relies on that).
fn token(user: &str, rooms: &[&str]) -> String {
    Claims::user(user)
        .rooms(rooms)
        .expires_in(600)
        .hs256(SECRET)
}

struct Server {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), switchboard_server::ServeError>>,
}

async fn start(extra: &[(&str, &str)]) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(switchboard_server::serve(config(extra), listener, async {
        let _ = rx.await;
    }));
    Server {
        addr,
        stop: Some(tx),
        task,
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no message within 10 s")
            .expect("stream ended")
            .unwrap();
        match m {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Close(f) => panic!("expected JSON, got close {f:?}"),
            _ => {}
        }
    }
}

async fn next_close(ws: &mut Ws) -> (u16, String) {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no close within 10 s");
        match m {
            Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), f.reason.to_string()),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

async fn http_get(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, HashMap<String, String>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let hdrs = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    (status, hdrs, body.to_owned())
}

#[tokio::test]
async fn subprotocol_token_relay_and_participants_endpoint() {
    let server = start(&[]).await;
    let alice = token("alice", &["room1"]);
    let mut req = format!("ws://{}/webrtc/ws/room1", server.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        format!("switchboard.v1, bearer.{alice}").parse().unwrap(),
    );
    let (mut a, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(
        resp.headers().get("sec-websocket-protocol").unwrap(),
        "switchboard.v1",
        "never echoes the token"
    );
    let state = next_json(&mut a).await;
    assert_eq!(state["type"], "room-state");
    let pa = state["payload"]["self"]["participant_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let bob = token("bob", &["*"]);
    let (mut b, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/webrtc/ws/room1?token={bob}",
        server.addr
    ))
    .await
    .unwrap();
    let state_b = next_json(&mut b).await;
    let pb = state_b["payload"]["self"]["participant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(next_json(&mut a).await["type"], "user-joined");

    a.send(Message::text(
        json!({"type":"offer","to":pb,"payload":{"sdp":"v=0"},"sender_id":"evil"}).to_string(),
    ))
    .await
    .unwrap();
    let offer = next_json(&mut b).await;
    assert_eq!(
        (offer["type"].as_str(), offer["sender_id"].as_str()),
        (Some("offer"), Some(pa.as_str()))
    );

    let (status, headers, body) = http_get(
        server.addr,
        "/webrtc/rooms/room1/participants",
        &[("Authorization", &format!("Bearer {alice}"))],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        headers.get("cache-control").map(String::as_str),
        Some("no-store")
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["room_id"], "room1");
    assert_eq!(v["participant_count"], 2);
    assert_eq!(
        v["participants"], state_b["payload"]["participants"],
        "REST agrees with room-state"
    );

    let (status, _, body) = http_get(
        server.addr,
        "/webrtc/rooms/other/participants",
        &[("Authorization", &format!("Bearer {alice}"))],
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["code"],
        "room_forbidden"
    );
    let (status, _, body) = http_get(server.addr, "/webrtc/rooms/room1/participants", &[]).await;
    assert_eq!(status, 401);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["code"],
        "missing_token"
    );

    // A frame far above the limit is refused by the transport and still gets 1009.
    b.send(Message::text("x".repeat(200_000))).await.unwrap();
    assert_eq!(next_close(&mut b).await, (1009, "message_too_big".into()));
    assert_eq!(next_json(&mut a).await["type"], "user-left");
    drop(server.stop);
}

#[tokio::test]
async fn config_endpoint_issues_turn_rest_credentials() {
    let server = start(&[
        ("WEBRTC_TURN_URLS", "turn:turn.example:3478"),
        ("WEBRTC_TURN_SECRET", "north"),
        ("WEBRTC_TURN_CREDENTIAL_TTL", "3600"),
    ])
    .await;
    let t = token("carol", &["*"]);
    let (status, headers, body) =
        http_get(server.addr, &format!("/webrtc/config?token={t}"), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        headers.get("cache-control").map(String::as_str),
        Some("no-store")
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["iceServers"][0]["urls"],
        json!(["stun:stun.l.google.com:19302"])
    );
    let turn = &v["iceServers"][1];
    assert_eq!(turn["urls"], json!(["turn:turn.example:3478"]));
    let username = turn["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, "carol");
    let now = now_secs();
    let expiry: u64 = expiry.parse().unwrap();
    // The TTL is an hour but the token expires in ten minutes: the token wins.
    assert!(
        expiry <= now + 600 && expiry + 30 >= now + 600,
        "{expiry} vs {now}"
    );
    let want = switchboard_server::auth::turn_credential(
        b"north",
        "carol",
        expiry,
        Duration::ZERO,
        u64::MAX,
    );
    assert_eq!(want.username, username);
    assert_eq!(turn["credential"], want.credential);
    assert_eq!(
        (
            v["iceTransportPolicy"].as_str(),
            v["bundlePolicy"].as_str(),
            v["rtcpMuxPolicy"].as_str()
        ),
        (Some("all"), Some("balanced"), Some("require"))
    );
    drop(server.stop);
}

#[tokio::test]
async fn origins_routes_and_refusals() {
    let server = start(&[("WEBRTC_ALLOWED_ORIGINS", "https://app.example")]).await;
    let t = token("dave", &["r"]);
    let mut req = format!("ws://{}/webrtc/ws/r?token={t}", server.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Origin", "https://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    let mut req = format!("ws://{}/webrtc/ws/r?token={t}", server.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Origin", "https://app.example".parse().unwrap());
    let (mut ok, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(next_json(&mut ok).await["type"], "room-state");

    let (mut forbidden, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/webrtc/ws/other?token={t}", server.addr))
            .await
            .unwrap();
    assert_eq!(
        next_close(&mut forbidden).await,
        (1008, "room_forbidden".into())
    );
    let (mut bad, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/webrtc/ws/a%2Fb?token={t}", server.addr))
            .await
            .unwrap();
    assert_eq!(next_close(&mut bad).await, (1008, "invalid_room_id".into()));
    let (mut none, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/webrtc/ws/r", server.addr))
            .await
            .unwrap();
    assert_eq!(next_close(&mut none).await, (1008, "missing_token".into()));
    assert_eq!(http_get(server.addr, "/webrtc/ws/", &[]).await.0, 404);

    let (status, headers, body) = http_get(server.addr, "/metrics", &[]).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].starts_with("text/plain"));
    assert!(
        body.contains("switchboard_closes_total{reason=\"room_forbidden\"} 1"),
        "{body}"
    );
    assert!(body.contains("switchboard_connections 1\n"), "{body}");
    drop(server.stop);
}

#[tokio::test]
async fn drain_flips_readiness_refuses_upgrades_and_sends_reconnect() {
    let mut server = start(&[]).await;
    let t = token("erin", &["*"]);
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/webrtc/ws/d?token={t}", server.addr))
            .await
            .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "room-state");
    assert_eq!(
        http_get(server.addr, "/webrtc/health/ready", &[]).await.0,
        200
    );
    server.stop.take().unwrap().send(()).unwrap();
    // Readiness turns false as soon as the shutdown future completes (the
    // drain delay only holds back the reconnect hints): poll, bounded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, body) = http_get(server.addr, "/webrtc/health/ready", &[]).await;
        if status == 503 {
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "readiness still 200 10 s after shutdown: {body}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, _, body) = http_get(server.addr, "/webrtc/health", &[]).await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["status"],
        "draining"
    );
    match tokio_tungstenite::connect_async(format!("ws://{}/webrtc/ws/d?token={t}", server.addr))
        .await
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("expected 503, got {other:?}"),
    }
    let r = next_json(&mut ws).await;
    assert_eq!(r["type"], "reconnect");
    assert!(r["payload"]["after_ms"].as_u64().unwrap() < 200);
    assert_eq!(next_close(&mut ws).await, (1001, "server draining".into()));
    tokio::time::timeout(Duration::from_secs(10), &mut server.task)
        .await
        .expect("serve returns after the drain")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_reader_keeps_up_with_a_burst_in_order() {
    const COUNT: u64 = 2000;
    // A burst larger than the outbound queue would (by design) close the
    // reader as a slow consumer; the rate limit normally prevents such bursts.
    let server = start(&[
        ("WEBRTC_RATE_LIMIT_PER_SECOND", "100000"),
        ("WEBRTC_RATE_LIMIT_BURST", "100000"),
        ("WEBRTC_OUTBOUND_QUEUE_MESSAGES", "4096"),
    ])
    .await;
    let t = token("u", &["*"]);
    let url = format!("ws://{}/webrtc/ws/burst?token={t}", server.addr);
    let (mut a, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    next_json(&mut a).await;
    let (mut b, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let pb = next_json(&mut b).await["payload"]["self"]["participant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(next_json(&mut a).await["type"], "user-joined");
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < COUNT as usize {
            let v = next_json(&mut b).await;
            got.push(v["payload"]["n"].as_u64().unwrap_or_else(|| panic!("{v}")));
        }
        got
    });
    for n in 0..COUNT {
        let ty = if n % 2 == 0 {
            "chat-message"
        } else {
            "ice-candidate"
        };
        a.feed(Message::text(
            json!({"type": ty, "to": pb, "payload": {"n": n}}).to_string(),
        ))
        .await
        .unwrap();
    }
    a.flush().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("bob got everything")
        .unwrap();
    assert_eq!(got, (0..COUNT).collect::<Vec<_>>());
    drop(server.stop);
}

/// What dashboards and alerts are written against in a `/metrics` scrape: every `# HELP` and
/// `# TYPE` line, and every sample's name and labels (bucket bounds included) without its
/// value, the samples of each family sorted. Values change with traffic; this must not.
fn metrics_shape(text: &str) -> String {
    let mut out = Vec::new();
    let mut samples: Vec<&str> = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if line.starts_with('#') {
            samples.sort_unstable();
            out.append(&mut samples);
            out.push(line);
        } else {
            let (series, _value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("sample without a value: {line:?}"));
            samples.push(series);
        }
    }
    samples.sort_unstable();
    out.append(&mut samples);
    out.iter().map(|l| format!("{l}\n")).collect()
}

/// Asserts the shape of `addr`'s `/metrics` equals the golden file `name` in `tests/golden`.
async fn assert_metrics_shape(addr: std::net::SocketAddr, golden: &str, name: &str) {
    let (status, headers, body) = http_get(addr, "/metrics", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let shape = metrics_shape(&body);
    if std::env::var_os("SWITCHBOARD_BLESS_GOLDEN").is_some() {
        // Regenerates the golden file after an intended change to the metrics.
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name);
        std::fs::write(&path, &shape).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        return;
    }
    if shape != golden {
        let want: Vec<&str> = golden.lines().collect();
        let got: Vec<&str> = shape.lines().collect();
        let missing: Vec<&&str> = want.iter().filter(|l| !got.contains(l)).collect();
        let extra: Vec<&&str> = got.iter().filter(|l| !want.contains(l)).collect();
        panic!(
            "/metrics differs from tests/golden/{name} (missing {missing:#?}, unexpected \
             {extra:#?}; if only the order differs, compare the lists)\n--- scrape:\n{body}"
        );
    }
}

#[tokio::test]
async fn metrics_scrape_keeps_its_names_labels_types_and_buckets() {
    let server = start(&[]).await;
    assert_metrics_shape(
        server.addr,
        include_str!("golden/metrics_fresh.txt"),
        "metrics_fresh.txt",
    )
    .await;

    // Traffic that puts a series into every labelled family: a relay, an error and a refusal
    // (counted before its close frame is sent, so the scrape below sees it).
    let url = |user: &str, room: &str| {
        let t = token(user, &["m"]);
        format!("ws://{}/webrtc/ws/{room}?token={t}", server.addr)
    };
    let (mut a, _) = tokio_tungstenite::connect_async(url("alice", "m"))
        .await
        .unwrap();
    assert_eq!(next_json(&mut a).await["type"], "room-state");
    let (mut b, _) = tokio_tungstenite::connect_async(url("bob", "m"))
        .await
        .unwrap();
    let pb = next_json(&mut b).await["payload"]["self"]["participant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(next_json(&mut a).await["type"], "user-joined");
    a.send(Message::text(
        json!({"type": "offer", "to": pb, "payload": {"sdp": "v=0"}}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut b).await["type"], "offer");
    a.send(Message::text(json!({"type": "dance"}).to_string()))
        .await
        .unwrap();
    assert_eq!(next_json(&mut a).await["payload"]["code"], "unknown_type");
    let (mut refused, _) = tokio_tungstenite::connect_async(url("carol", "elsewhere"))
        .await
        .unwrap();
    assert_eq!(
        next_close(&mut refused).await,
        (1008, "room_forbidden".into())
    );

    assert_metrics_shape(
        server.addr,
        include_str!("golden/metrics_traffic.txt"),
        "metrics_traffic.txt",
    )
    .await;
    drop(server.stop);
}
