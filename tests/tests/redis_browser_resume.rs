//! A call survives the death of a signaling server: two headless Chromium tabs on the demo
//! page, each behind its own load-balancer stand-in (a TCP proxy in this test) in front of a
//! different server instance of one Redis, open a data channel; then the instance behind
//! alice's proxy is SIGKILLed and the proxy sends her reconnect to another instance. The
//! bundled client resumes there: the same `RTCPeerConnection` object stays `connected`, the
//! page goes `reconnecting` → `joined`/`connected` without rebuilding peers, and messages keep
//! flowing both ways. And a negotiation survives Redis: its first offer or answer is in flight
//! when Redis is SIGKILLed and comes back empty; the pages finish on their own. Needs
//! `redis-server`, `chromium` and `chromium-driver`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchboard_e2e::browser::{check, start_instances, Browser, ChromeDriver};
use switchboard_e2e::redis::RedisProcess;
use switchboard_e2e::server::wait_all_ready_blocking;
use switchboard_e2e::token::Claims;

const SECRET: &str = "redis-browser-resume-secret-0123456789";
const ROOM: &str = "call";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Presence refreshed every second: a killed instance's participants are noticed quickly.
const PRESENCE_TTL: &[(&str, &str)] = &[("WEBRTC_ROOM_PRESENCE_TTL", "3")];

/// A TCP proxy whose upstream can be switched: what a load balancer does when a pod dies.
/// New connections go to the current upstream; open ones stay where they are.
struct Proxy {
    addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let upstream = Arc::new(Mutex::new(upstream));
        let target = upstream.clone();
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let to = *target.lock().expect("proxy lock");
                thread::spawn(move || {
                    let Ok(server) = TcpStream::connect(to) else {
                        return;
                    };
                    pipe(client, server);
                });
            }
        });
        Proxy { addr, upstream }
    }

    fn switch_to(&self, upstream: SocketAddr) {
        *self.upstream.lock().expect("proxy lock") = upstream;
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

/// Copies both ways until either side ends, then ends both.
fn pipe(a: TcpStream, b: TcpStream) {
    let copy = |mut from: TcpStream, mut to: TcpStream| {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
        let _ = from.shutdown(std::net::Shutdown::Both);
    };
    let (a2, b2) = match (a.try_clone(), b.try_clone()) {
        (Ok(a2), Ok(b2)) => (a2, b2),
        _ => return,
    };
    thread::spawn(move || copy(a2, b2));
    copy(b, a);
}

/// Sends a data-channel message to every peer through the page's client.
fn send(browser: &Browser<'_>, text: &str) -> Result<Value, String> {
    browser
        .execute(
            "return window.switchboard.send(arguments[0]);",
            &[json!(text)],
        )
        .map_err(|e| e.to_string())
}

/// Waits until the page received a data-channel message with exactly `text`.
fn wait_received(browser: &Browser<'_>, text: &str) -> Result<Value, String> {
    let script = format!(
        "for (const li of document.querySelectorAll('#messages li.received')) {{
            if (li.querySelector('.text').textContent === {}) return 'got';
        }}
        return null;",
        json!(text)
    );
    browser.wait_for(
        &format!("message {text:?}"),
        &script,
        Duration::from_secs(15),
    )
}

#[test]
fn a_data_channel_survives_sigkill_of_one_pages_signaling_server() {
    let redis = RedisProcess::start();
    let mut servers = start_instances(SECRET, &redis.url(), "br", 3, PRESENCE_TTL);
    let alice_lb = Proxy::start(servers[0].addr());
    let bob_lb = Proxy::start(servers[1].addr());

    let driver = ChromeDriver::start();
    let alice = driver.new_browser("alice");
    let bob = driver.new_browser("bob");
    let both = [&alice, &bob];
    for (browser, user, lb) in [(&alice, "alice", &alice_lb), (&bob, "bob", &bob_lb)] {
        let token = Claims::user(user).hs256(SECRET);
        let url = lb.url(&format!("/?room={ROOM}&token={token}&autostart=1"));
        check(
            browser.goto(&url).map_err(|e| e.to_string()),
            &both,
            &servers,
        );
    }
    for browser in both {
        check(
            browser.wait_for(
                "data channel open (state connected)",
                "return document.body.dataset.state === 'connected' ? 'connected' : null;",
                CONNECT_TIMEOUT,
            ),
            &both,
            &servers,
        );
    }
    check(send(&alice, "before"), &both, &servers);
    check(wait_received(&bob, "before"), &both, &servers);

    // Mark alice's peer connection object and record what the client goes through.
    let marked = alice.execute(
        "const sb = window.switchboard;
         window.__pcs = sb._peers.size;
         for (const p of sb._peers.values()) p.pc.__mark = 'kept';
         window.__states = [];
         window.__resumed = false;
         sb.addEventListener('state', (e) => window.__states.push(e.detail.state));
         sb.addEventListener('joined', (e) => { if (e.detail.resumed) window.__resumed = true; });
         return window.__pcs;",
        &[],
    );
    assert_eq!(
        check(marked.map_err(|e| e.to_string()), &both, &servers),
        json!(1)
    );

    // Alice's signaling server dies; her load balancer sends the reconnect elsewhere.
    alice_lb.switch_to(servers[2].addr());
    servers[0].sigkill();

    check(
        alice.wait_for(
            "a resumed session",
            "return window.__resumed && window.switchboard.state === 'joined' ? 'resumed' : null;",
            Duration::from_secs(20),
        ),
        &both,
        &servers,
    );
    let after = alice.execute(
        "const sb = window.switchboard;
         const pcs = Array.from(sb._peers.values()).map((p) => [p.pc.__mark || null, p.pc.connectionState]);
         return {pcs: pcs, states: window.__states, page: document.body.dataset.state};",
        &[],
    );
    let after = check(after.map_err(|e| e.to_string()), &both, &servers);
    assert_eq!(after["pcs"], json!([["kept", "connected"]]), "{after}");
    assert_eq!(
        after["states"],
        json!(["reconnecting", "joined"]),
        "{after}"
    );
    assert_eq!(after["page"], "connected", "{after}");
    // Messages keep flowing both ways over the same channel.
    check(send(&alice, "after from alice"), &both, &servers);
    check(wait_received(&bob, "after from alice"), &both, &servers);
    check(send(&bob, "after from bob"), &both, &servers);
    check(wait_received(&alice, "after from bob"), &both, &servers);
    // Bob never saw alice leave.
    let left = bob.execute(
        "return document.querySelectorAll('#departures li.departure').length;",
        &[],
    );
    assert_eq!(
        check(left.map_err(|e| e.to_string()), &both, &servers),
        json!(0)
    );
}

/// Installed in a page before it joins: from the first offer or answer on, every message the
/// client sends is held in the page (as if stuck in flight) until `window.__release()`. Then
/// it records what the client is told (`error` codes) and which signals it receives, in order.
const HOLD_SIGNALING_JS: &str = "
    const send = WebSocket.prototype.send;
    window.__held = [];
    window.__released = false;
    WebSocket.prototype.send = function (data) {
        let type = null;
        try { type = JSON.parse(data).type; } catch (e) {}
        if (!window.__released && (window.__held.length > 0 || type === 'offer' || type === 'answer')) {
            window.__held.push([this, data]);
            return;
        }
        return send.call(this, data);
    };
    window.__release = () => {
        window.__released = true;
        for (const [ws, data] of window.__held) send.call(ws, data);
        return window.__held.length;
    };
    return true;";

const RECORD_JS: &str = "
    const sb = window.switchboard;
    window.__errors = [];
    window.__signals = [];
    window.__states = [];
    sb.addEventListener('error', (e) => window.__errors.push(e.detail.code));
    sb.addEventListener('signal', (e) => window.__signals.push(e.detail.message.type));
    sb.addEventListener('state', (e) => window.__states.push(e.detail.state));
    return true;";

#[test]
fn a_negotiation_in_flight_when_redis_restarts_empty_finishes_by_itself() {
    let mut redis = RedisProcess::start();
    let servers = start_instances(SECRET, &redis.url(), "rr", 2, PRESENCE_TTL);
    let driver = ChromeDriver::start();
    let alice = driver.new_browser("alice");
    let bob = driver.new_browser("bob");
    let both = [&alice, &bob];
    for (browser, user, server) in [(&alice, "alice", &servers[0]), (&bob, "bob", &servers[1])] {
        let token = Claims::user(user).hs256(SECRET);
        let url = server.http_url(&format!("/?room={ROOM}&token={token}"));
        check(
            browser.goto(&url).map_err(|e| e.to_string()),
            &both,
            &servers,
        );
        check(
            browser
                .execute(HOLD_SIGNALING_JS, &[])
                .map_err(|e| e.to_string()),
            &both,
            &servers,
        );
        check(
            browser
                .execute(
                    "document.getElementById('join').requestSubmit(); return true;",
                    &[],
                )
                .map_err(|e| e.to_string()),
            &both,
            &servers,
        );
        check(
            browser.wait_for(
                "joined",
                "return window.switchboard && window.switchboard.state === 'joined' ? 'joined' : null;",
                Duration::from_secs(15),
            ),
            &both,
            &servers,
        );
        check(
            browser.execute(RECORD_JS, &[]).map_err(|e| e.to_string()),
            &both,
            &servers,
        );
    }
    // The initiating page has its offer in flight.
    let holding = |b: &Browser<'_>| {
        b.execute("return window.__held.length;", &[])
            .is_ok_and(|n| n.as_u64().unwrap_or(0) > 0)
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let holder = loop {
        if let Some(b) = both.into_iter().find(|b| holding(b)) {
            break b;
        }
        if Instant::now() > deadline {
            check::<()>(Err("no page sent an offer".into()), &both, &servers);
        }
        thread::sleep(Duration::from_millis(50));
    };

    // Redis dies with the offer in flight: it reaches the server and is refused.
    redis.kill();
    wait_all_ready_blocking(&servers, false, Duration::from_secs(15));
    for browser in both {
        check(
            browser
                .execute("return window.__release();", &[])
                .map_err(|e| e.to_string()),
            &both,
            &servers,
        );
    }
    check(
        holder.wait_for(
            "the offer refused (to be re-sent)",
            "return window.__errors.some((c) => c === 'bus_unavailable' || c === 'delivery_unknown') ? 'refused' : null;",
            Duration::from_secs(15),
        ),
        &both,
        &servers,
    );

    // Redis comes back on the same address with nothing in it; nobody touches the pages.
    redis.restart_same_port();
    for browser in both {
        check(
            browser.wait_for(
                "data channel open (state connected)",
                "return document.body.dataset.state === 'connected' ? 'connected' : null;",
                Duration::from_secs(45),
            ),
            &both,
            &servers,
        );
    }
    check(
        send(&alice, "after the restart from alice"),
        &both,
        &servers,
    );
    check(
        wait_received(&bob, "after the restart from alice"),
        &both,
        &servers,
    );
    check(send(&bob, "after the restart from bob"), &both, &servers);
    check(
        wait_received(&alice, "after the restart from bob"),
        &both,
        &servers,
    );
    for browser in both {
        let seen = check(
            browser
                .execute(
                    "return {signals: window.__signals, states: window.__states,
                             departures: document.querySelectorAll('#departures li.departure').length};",
                    &[],
                )
                .map_err(|e| e.to_string()),
            &both,
            &servers,
        );
        // The call was negotiated once, on the same participants: nobody left or rejoined,
        // and every ICE candidate came after the description it belongs to.
        assert_eq!(seen["departures"], json!(0), "{}: {seen}", browser.name());
        let signals: Vec<&str> = seen["signals"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let first_description = signals.iter().position(|t| *t == "offer" || *t == "answer");
        let first_candidate = signals.iter().position(|t| *t == "ice-candidate");
        if let Some(candidate) = first_candidate {
            assert!(
                first_description.is_some_and(|d| d < candidate),
                "{}: an ICE candidate before any offer/answer: {seen}",
                browser.name()
            );
        }
        assert!(
            !signals.contains(&"user-left"),
            "{}: saw a leave: {seen}",
            browser.name()
        );
    }
}
