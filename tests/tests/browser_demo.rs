//! The demo page and `switchboard.js` in real headless Chromium against a real server: two
//! browsers connect over WebRTC (data channel, host candidates on this machine, no STUN) and
//! exchange messages; they follow a drain to a new server; two tabs on the `--dev` URL connect;
//! fake-camera video flows; a forged token ends in `error`; the library refreshes a short-lived
//! token through the app's callback; server API messages, metadata updates and a removal reach
//! the library as events, and a removed client stays out. Needs the Debian packages
//! `chromium` and `chromium-driver`; fails (never skips) without them.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchboard_e2e::browser::{Browser, ChromeDriver};
use switchboard_e2e::server::{ServerOptions, ServerProcess};
use switchboard_e2e::token::Claims;

const SECRET: &str = "browser-demo-test-secret-0123456789";
const ROOM: &str = "browser-demo";
/// Bound for joining plus ICE/DTLS/SCTP between the two browsers.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound for one data-channel message or presence update to show up.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(10);

/// Browser tests run one at a time: two or three Chromium processes at once are plenty for a
/// small CI machine, and ICE timing suffers when the CPU is starved.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serialize() -> MutexGuard<'static, ()> {
    // A panicking test poisons the lock; the next one may still run.
    ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Names shown in the participant list for the page of `browser` (in order).
const PARTICIPANT_NAMES_JS: &str = "return Array.from(document.querySelectorAll('#participants li.participant .name'), (e) => e.textContent);";

/// Where failure screenshots go: a fresh directory under the system temp dir that is kept.
fn diagnostics_dir() -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let dir = std::env::temp_dir().join(format!(
        "switchboard-browser-demo-{}-{stamp}",
        std::process::id()
    ));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// Panics with everything needed to debug a failed step: the reason, each browser's screenshot
/// path and console, and the server's stderr tail.
fn fail(
    reason: &str,
    browsers: &[&Browser<'_>],
    server: &ServerProcess,
    driver: &ChromeDriver,
) -> ! {
    let dir = diagnostics_dir();
    let mut report = format!("{reason}\n\nDiagnostics in {}:\n", dir.display());
    for browser in browsers {
        report.push_str(&browser.diagnostics(&dir));
    }
    report.push_str(&format!(
        "server stderr tail:\n{}\nchromedriver output tail:\n{}",
        server.stderr_tail(),
        tail(&driver.output(), 20)
    ));
    panic!("{report}");
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Sends `text` through the page's message form (as a user would: fill in, press Send).
const SEND_JS: &str = "
    const input = document.getElementById('message-input');
    const button = document.getElementById('send-button');
    if (input.disabled || button.disabled) return 'send form disabled';
    input.value = arguments[0];
    button.click();
    return 'sent';
";

/// Returns the first received message with exactly this text as `{from, text}`, or null.
const RECEIVED_JS: &str = "
    const wanted = arguments[0];
    for (const li of document.querySelectorAll('#messages li.received')) {
        const text = li.querySelector('.text').textContent;
        if (text === wanted) return { from: li.dataset.from, text: text };
    }
    return null;
";

fn send_message(browser: &Browser<'_>, text: &str) -> Result<(), String> {
    match browser.execute(SEND_JS, &[json!(text)]) {
        Ok(Value::String(s)) if s == "sent" => Ok(()),
        Ok(other) => Err(format!("{}: could not send: {other}", browser.name())),
        Err(e) => Err(format!("{}: could not send: {e}", browser.name())),
    }
}

fn wait_received(browser: &Browser<'_>, text: &str) -> Result<Value, String> {
    let script = format!(
        "return (function() {{ {RECEIVED_JS} }}).apply(null, [{}]);",
        json!(text)
    );
    browser.wait_for(
        &format!("message {text:?} received"),
        &script,
        UPDATE_TIMEOUT,
    )
}

fn participant_names(browser: &Browser<'_>) -> Result<Vec<String>, String> {
    let value = browser
        .execute(PARTICIPANT_NAMES_JS, &[])
        .map_err(|e| e.to_string())?;
    serde_json::from_value(value.clone())
        .map_err(|e| format!("{}: participant names {value}: {e}", browser.name()))
}

/// Opens the demo page (joining `ROOM` at once) in each browser with its token; a page that
/// cannot be opened fails the test with diagnostics from `browsers`.
fn open_autostarted(
    pages: &[(&Browser<'_>, &str)],
    browsers: &[&Browser<'_>],
    server: &ServerProcess,
    driver: &ChromeDriver,
) {
    for (browser, token) in pages {
        let url = server.http_url(&format!("/?room={ROOM}&token={token}&autostart=1"));
        if let Err(e) = browser.goto(&url) {
            fail(
                &format!("{}: cannot open the demo page: {e}", browser.name()),
                browsers,
                server,
                driver,
            );
        }
    }
}

/// `GET /webrtc/rooms/{room}/participants` as the server sees it.
fn server_participant_count(server: &ServerProcess, token: &str) -> Result<u64, String> {
    let url = server.http_url(&format!("/webrtc/rooms/{ROOM}/participants"));
    let mut response = ureq::get(&url)
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .map_err(|e| format!("GET {url}: {e}"))?;
    let body: Value = response
        .body_mut()
        .read_json()
        .map_err(|e| format!("GET {url}: body: {e}"))?;
    body["participant_count"]
        .as_u64()
        .ok_or_else(|| format!("GET {url}: no participant_count in {body}"))
}

#[test]
fn two_browsers_connect_over_a_data_channel_and_exchange_messages() {
    let _one = serialize();
    let started = Instant::now();
    // No STUN server: this machine has no route out, and host candidates are all that two
    // browsers on one machine need. An empty list means "no STUN" to the server.
    let server = ServerOptions::with_secret(SECRET)
        .env("WEBRTC_STUN_URLS", "")
        .start();
    let alice_token = Claims::user("alice").hs256(SECRET);
    let bob_token = Claims::user("bob").hs256(SECRET);

    let driver = ChromeDriver::start();
    let alice = driver.new_browser("alice");
    let bob = driver.new_browser("bob");
    let both = [&alice, &bob];

    // The page must not offer an ICE server that cannot be reached from here.
    let config = ureq::get(server.http_url("/webrtc/config"))
        .header("Authorization", &format!("Bearer {alice_token}"))
        .call()
        .map_err(|e| e.to_string())
        .and_then(|mut r| r.body_mut().read_json::<Value>().map_err(|e| e.to_string()));
    match &config {
        Ok(body) if body["iceServers"].as_array().is_some_and(|s| s.is_empty()) => {}
        other => fail(
            &format!(
                "/webrtc/config with WEBRTC_STUN_URLS=\"\" should list no iceServers: {other:?}"
            ),
            &both,
            &server,
            &driver,
        ),
    }

    let pages = [(&alice, alice_token.as_str()), (&bob, bob_token.as_str())];
    open_autostarted(&pages, &both, &server, &driver);

    // Both reach `connected`: joined the room and one data channel open.
    for browser in both {
        if let Err(e) = browser.wait_for(
            "document.body.dataset.state == \"connected\"",
            "return document.body.dataset.state === 'connected' ? 'connected' : null;",
            CONNECT_TIMEOUT,
        ) {
            let state = browser
                .execute("return document.body.dataset.state;", &[])
                .map(|v| v.to_string())
                .unwrap_or_else(|e| e.to_string());
            fail(&format!("{e}; state is {state}"), &both, &server, &driver);
        }
    }
    let connected_after = started.elapsed();

    // Each page lists both participants, with the names from the tokens.
    for browser in both {
        let mut names =
            participant_names(browser).unwrap_or_else(|e| fail(&e, &both, &server, &driver));
        names.sort();
        if names != ["User alice", "User bob"] {
            fail(
                &format!(
                    "{}: participant list shows {names:?}, expected [\"User alice\", \"User bob\"]",
                    browser.name()
                ),
                &both,
                &server,
                &driver,
            );
        }
    }
    match server_participant_count(&server, &alice_token) {
        Ok(2) => {}
        other => fail(
            &format!("the server should count 2 participants in {ROOM}: {other:?}"),
            &both,
            &server,
            &driver,
        ),
    }

    // Data-channel messages both ways; they travel browser to browser, not through the server.
    for (from, to, text) in [
        (&alice, &bob, "hello from alice ✓"),
        (&bob, &alice, "and hello back from bob"),
    ] {
        if let Err(e) = send_message(from, text) {
            fail(&e, &both, &server, &driver);
        }
        match wait_received(to, text) {
            Ok(msg) if msg["from"] == json!(format!("User {}", from.name())) => {}
            Ok(msg) => fail(
                &format!(
                    "{}: message {text:?} attributed to {} instead of User {}",
                    to.name(),
                    msg["from"],
                    from.name()
                ),
                &both,
                &server,
                &driver,
            ),
            Err(e) => fail(&e, &both, &server, &driver),
        }
    }

    // Each page was told that its data channel to the other opened (`channel-open`), and
    // nothing went wrong on the way (peer_failed, target_not_found, invalid_message ...): no
    // notice is shown.
    for (browser, other) in [(&alice, &bob), (&bob, &alice)] {
        let other_id = other.execute(SELF_ID_JS, &[]).unwrap_or_default();
        match browser.execute(
            "return [document.getElementById('log').textContent.includes('data channel open to ' + arguments[0]),
                     document.getElementById('notice').hidden];",
            std::slice::from_ref(&other_id),
        ) {
            Ok(v) if v == json!([true, true]) => {}
            other => fail(
                &format!(
                    "{}: expected `data channel open to {other_id}` in the log and no notice: {other:?}",
                    browser.name()
                ),
                &both,
                &server,
                &driver,
            ),
        }
    }
    // Nothing went wrong on the way (peer_failed, target_not_found, invalid_message ...).
    for browser in both {
        match browser.execute(
            "return document.getElementById('log').textContent.split('\\n').filter((l) => /^\\S+ error /.test(l));",
            &[],
        ) {
            Ok(Value::Array(errors)) if errors.is_empty() => {}
            other => fail(
                &format!("{}: errors in the page's event log: {other:?}", browser.name()),
                &both,
                &server,
                &driver,
            ),
        }
    }

    // Alice leaves: Bob's list drops to himself (user-left) and his page falls back to `joined`.
    if let Err(e) = alice.execute(
        "document.getElementById('leave-button').click(); return true;",
        &[],
    ) {
        fail(
            &format!("alice: cannot click Leave: {e}"),
            &both,
            &server,
            &driver,
        );
    }
    // Her departure shows on his page with the server's reason.
    if let Err(e) = bob.wait_for(
        "only bob listed, state joined and alice's departure shown after she left",
        "const names = Array.from(document.querySelectorAll('#participants li.participant .name'), (e) => e.textContent);
         const left = Array.from(document.querySelectorAll('#departures li.departure'),
             (e) => [e.dataset.reason, e.textContent.includes('User alice left')]);
         return names.length === 1 && names[0] === 'User bob' && document.body.dataset.state === 'joined'
             && JSON.stringify(left) === JSON.stringify([['closed', true]]);",
        UPDATE_TIMEOUT,
    ) {
        fail(&e, &both, &server, &driver);
    }

    // The token was in the page URL and in the WebSocket subprotocol; it must not be logged.
    for token in [&alice_token, &bob_token] {
        if let Some(line) = server
            .stderr_lines()
            .iter()
            .find(|l| l.contains(token.as_str()))
        {
            fail(
                &format!("the server logged a token: {line}"),
                &both,
                &server,
                &driver,
            );
        }
    }

    eprintln!(
        "browser demo: both pages connected after {connected_after:?}, whole test {:?}",
        started.elapsed()
    );
}

/// The library's pure helpers as the browser runs them, and a refused token surfacing on the page.
#[test]
fn the_page_reports_a_refused_token_and_the_library_helpers_behave() {
    let _one = serialize();
    let server = ServerOptions::with_secret(SECRET)
        .env("WEBRTC_STUN_URLS", "")
        .start();
    let driver = ChromeDriver::start();
    let page = driver.new_browser("helpers");
    let both = [&page];

    if let Err(e) = page.goto(&server.http_url("/?room=helpers")) {
        fail(
            &format!("cannot open the demo page: {e}"),
            &both,
            &server,
            &driver,
        );
    }
    // Without autostart nothing happens until Join; without --dev there is no name field.
    if let Err(e) = page.wait_for(
        "the page has found out it is not in dev mode",
        "return document.body.dataset.dev === '0';",
        UPDATE_TIMEOUT,
    ) {
        fail(&e, &both, &server, &driver);
    }
    match page.execute(
        "return [document.body.dataset.state, typeof Switchboard,
                 document.getElementById('name-label').getClientRects().length];",
        &[],
    ) {
        Ok(v) if v == json!(["idle", "function", 0]) => {}
        other => fail(
            &format!("before Join the page should be idle with Switchboard loaded: {other:?}"),
            &both,
            &server,
            &driver,
        ),
    }

    let checks = page.execute(
        "return {
            initiator: [Switchboard.isInitiator('a1', 'b0'), Switchboard.isInitiator('b0', 'a1')],
            ws: Switchboard.wsUrl('https://sig.example/prefix/', 'room-1'),
            wsPlain: Switchboard.wsUrl('http://127.0.0.1:8080/', 'demo'),
            config: Switchboard.toRtcConfiguration({
                iceServers: [{urls: []}, {urls: ['turn:t.example'], username: 'u', credential: 'c'}],
                iceTransportPolicy: 'relay', bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require'
            }),
            backoff: [0, 1, 2, 12].map((a) => Switchboard.backoffMs(a, 15000)),
        };",
        &[],
    );
    let checks = checks.unwrap_or_else(|e| fail(&e.to_string(), &both, &server, &driver));
    let expected = [
        ("initiator", json!([true, false])),
        ("ws", json!("wss://sig.example/prefix/webrtc/ws/room-1")),
        ("wsPlain", json!("ws://127.0.0.1:8080/webrtc/ws/demo")),
        (
            "config",
            json!({
                "iceServers": [{"urls": ["turn:t.example"], "username": "u", "credential": "c"}],
                "iceTransportPolicy": "relay", "bundlePolicy": "max-bundle", "rtcpMuxPolicy": "require"
            }),
        ),
    ];
    for (key, want) in expected {
        if checks[key] != want {
            fail(
                &format!("Switchboard helper {key}: got {}, want {want}", checks[key]),
                &both,
                &server,
                &driver,
            );
        }
    }
    // Jittered exponential backoff: attempt n lies in [ceiling/2, ceiling], ceiling = min(15 s, 0.5 s * 2^n).
    let backoff: Vec<u64> = serde_json::from_value(checks["backoff"].clone()).unwrap_or_default();
    let ceilings = [500, 1000, 2000, 15000];
    if backoff.len() != 4
        || backoff
            .iter()
            .zip(ceilings)
            .any(|(b, c)| *b < c / 2 || *b > c)
    {
        fail(
            &format!("backoff {backoff:?} outside [c/2, c] for ceilings {ceilings:?}"),
            &both,
            &server,
            &driver,
        );
    }

    // A token signed with another secret: /webrtc/config answers 401. A token for another room:
    // the configuration comes, the upgrade is refused with close 1008 `room_forbidden`. Either
    // way the page says `error`, shows the reason where the user looks, and offers Join, not
    // Leave.
    let forged = Claims::user("mallory").hs256("not-the-server-secret");
    let elsewhere = Claims::user("mallory").rooms(&["elsewhere"]).hs256(SECRET);
    for (token, shown) in [
        (&forged, "invalid_token"),
        (
            &elsewhere,
            "Connection refused: the token does not allow this room (room_forbidden), close 1008",
        ),
    ] {
        if let Err(e) = page.execute(
            "document.getElementById('token').value = arguments[0];
             document.getElementById('join-button').click();
             return true;",
            &[json!(token)],
        ) {
            fail(&format!("cannot press Join: {e}"), &both, &server, &driver);
        }
        if let Err(e) = page.wait_for(
            &format!("state error, {shown:?} on the page, Join enabled and Leave not"),
            &format!(
                "const notice = document.getElementById('notice');
                 return document.body.dataset.state === 'error' && !notice.hidden
                     && notice.dataset.kind === 'error' && notice.textContent.includes({})
                     && notice.getClientRects().length > 0
                     && !document.getElementById('join-button').disabled
                     && document.getElementById('leave-button').disabled;",
                json!(shown)
            ),
            UPDATE_TIMEOUT,
        ) {
            let seen = page
                .execute(
                    "return [document.body.dataset.state, document.getElementById('notice').textContent,
                             document.getElementById('join-button').disabled,
                             document.getElementById('leave-button').disabled,
                             document.getElementById('log').textContent];",
                    &[],
                )
                .unwrap_or_default();
            fail(&format!("{e}; page: {seen}"), &both, &server, &driver);
        }
    }
}

/// `switchboard.mjs` as an app uses it: a page of the server's origin that has no classic
/// script imports the module, gets the class as default and named export, and joins a room.
#[test]
fn the_es_module_entry_imports_and_joins() {
    let _one = serialize();
    let server = ServerOptions::with_secret(SECRET)
        .env("WEBRTC_STUN_URLS", "")
        .start();
    let driver = ChromeDriver::start();
    let page = driver.new_browser("module");
    let both = [&page];
    let token = Claims::user("module-user").hs256(SECRET);

    // Any page of the origin without switchboard.js will do.
    if let Err(e) = page.goto(&server.http_url("/webrtc/health/live")) {
        fail(&format!("cannot open a page: {e}"), &both, &server, &driver);
    }
    // WebDriver waits for the promise the script returns.
    let seen = page.execute(
        "const before = typeof window.Switchboard;
         return import('/switchboard.mjs').then(async (m) => {
             const sb = new m.default({ baseUrl: location.origin + '/', room: 'module-room', token: arguments[0] });
             await sb.connect();
             const result = [before, typeof m.default, m.default === m.Switchboard,
                             sb.state, sb.self.user_id, m.default.wsUrl(location.origin + '/', 'r')];
             sb.close();
             return result;
         }, (e) => 'import failed: ' + e);",
        &[json!(token)],
    );
    let ws = server.http_url("/webrtc/ws/r").replacen("http:", "ws:", 1);
    let want = json!(["undefined", "function", true, "joined", "module-user", ws]);
    match seen {
        Ok(v) if v == want => {}
        other => fail(
            &format!("import('/switchboard.mjs') and join: got {other:?}, want {want}"),
            &both,
            &server,
            &driver,
        ),
    }
}

/// Own participant id of the page's client (`window.switchboard` is the demo's handle).
const SELF_ID_JS: &str =
    "return window.switchboard && window.switchboard.self ? window.switchboard.self.participant_id : null;";

/// SIGTERM drains the server: each page gets `reconnect` (after_ms), sees close 1001, keeps
/// retrying, and rejoins a new server on the same address, as behind a load balancer; the peers
/// reconnect with fresh participant ids and the data channel works again.
#[test]
fn pages_follow_a_drain_to_a_new_server_and_reconnect_their_peers() {
    let _one = serialize();
    let options = |listen: &str| {
        ServerOptions::with_secret(SECRET)
            .env("WEBRTC_STUN_URLS", "")
            .env("SWITCHBOARD_DRAIN_DELAY_MS", "0")
            // Every hint says `after_ms: 0`: the hint's delay always runs out before the
            // server's close arrives, the order a client must handle.
            .env("SWITCHBOARD_DRAIN_WINDOW_MS", "0")
            .env("SWITCHBOARD_DRAIN_TIMEOUT_MS", "5000")
            .without_listen_flag()
            .args(["--listen", listen])
    };
    let mut old_server = options("127.0.0.1:0").start();
    let addr = old_server.addr().to_string();
    let alice_token = Claims::user("alice").hs256(SECRET);
    let bob_token = Claims::user("bob").hs256(SECRET);
    let driver = ChromeDriver::start();
    let alice = driver.new_browser("alice");
    let bob = driver.new_browser("bob");
    let both = [&alice, &bob];

    let mut before = Vec::new();
    let pages = [(&alice, alice_token.as_str()), (&bob, bob_token.as_str())];
    open_autostarted(&pages, &both, &old_server, &driver);
    for browser in both {
        if let Err(e) = browser.wait_for(
            "connected before the drain",
            "return document.body.dataset.state === 'connected';",
            CONNECT_TIMEOUT,
        ) {
            fail(&e, &both, &old_server, &driver);
        }
        before.push(browser.execute(SELF_ID_JS, &[]).unwrap_or_default());
    }

    old_server.sigterm();
    let deadline = Instant::now() + Duration::from_secs(10);
    while old_server.try_exit().is_none() {
        if Instant::now() >= deadline {
            fail(
                "the draining server did not exit within 10 s",
                &both,
                &old_server,
                &driver,
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Each page heard the hint and then the server's 1001 close: the client waits for that
    // close instead of closing the socket itself when the hint's delay runs out. Polled until
    // the close is logged, then the order is checked on the log as it stands.
    for browser in both {
        let seen = browser.wait_for(
            "close 1001 in the event log",
            r#"const lines = document.getElementById('log').textContent.split('\n');
               const at = (text) => lines.findIndex((l) => l.includes(text));
               const closed = at('websocket closed 1001 server draining (will reconnect)');
               if (closed < 0) return null;
               return {hint: at('server asks to reconnect in'), closed: closed,
                       ownClose: at('websocket closed 1000'), state: document.body.dataset.state};"#,
            UPDATE_TIMEOUT,
        );
        let order = match seen {
            Ok(order) => order,
            Err(e) => fail(&e, &both, &old_server, &driver),
        };
        let (hint, closed) = (order["hint"].as_i64(), order["closed"].as_i64());
        let in_order = matches!((hint, closed), (Some(h), Some(c)) if h >= 0 && h < c);
        let retrying =
            ["reconnecting", "connecting"].contains(&order["state"].as_str().unwrap_or(""));
        if !in_order || order["ownClose"] != json!(-1) || !retrying {
            fail(
                &format!(
                    "{}: expected the hint, then close 1001, no close of its own, and a retry: {order}",
                    browser.name()
                ),
                &both,
                &old_server,
                &driver,
            );
        }
    }

    let new_server = options(&addr).start();
    for (i, browser) in both.iter().enumerate() {
        if let Err(e) = browser.wait_for(
            "connected again through the new server",
            "return document.body.dataset.state === 'connected';",
            CONNECT_TIMEOUT,
        ) {
            fail(&e, &both, &new_server, &driver);
        }
        let after = browser.execute(SELF_ID_JS, &[]).unwrap_or_default();
        if after.is_null() || after == before[i] {
            fail(
                &format!(
                    "{}: participant id before {} and after {after}: expected a new one",
                    browser.name(),
                    before[i]
                ),
                &both,
                &new_server,
                &driver,
            );
        }
    }
    let text = "after the drain";
    if let Err(e) = send_message(&alice, text).and_then(|()| wait_received(&bob, text).map(|_| ()))
    {
        fail(&e, &both, &new_server, &driver);
    }
}

/// The README promise: `--dev` prints a demo URL, and two tabs of one browser on that URL
/// connect to each other, each as a user of its own (a guest name minted by the page).
#[test]
fn two_tabs_on_the_dev_mode_demo_url_connect() {
    let _one = serialize();
    // The README command as is: default STUN server (unreachable here, which only delays
    // server-reflexive candidates; host candidates on loopback still connect) and the exact URL
    // printed, which carries `autostart=1` so nobody has to press Join.
    let mut server = ServerOptions::new().arg("--dev").start();
    let line = server.wait_stdout_line("demo: ", Duration::from_secs(5));
    let url = line.trim_start_matches("demo: ").trim().to_owned();
    assert!(url.ends_with("/?room=demo&autostart=1"), "{url}");
    let driver = ChromeDriver::start();
    let browser = driver.new_browser("dev-tabs");
    let both = [&browser];

    let tabs = (|| {
        let first = browser.current_tab()?;
        browser.goto(&url)?;
        let second = browser.new_tab()?;
        browser.switch_to_tab(&second)?;
        browser.goto(&url)?;
        Ok::<_, switchboard_e2e::browser::WebDriverError>([first, second])
    })()
    .unwrap_or_else(|e| {
        fail(
            &format!("cannot open two tabs on {url}: {e}"),
            &both,
            &server,
            &driver,
        )
    });

    // Poll both tabs in turn: each must reach `connected` and list two participants, two
    // different guests with two different user ids.
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let mut last = Vec::new();
    loop {
        last.clear();
        for tab in &tabs {
            let seen = browser.switch_to_tab(tab).and_then(|()| {
                browser.execute(
                    "return [document.body.dataset.state,
                        Array.from(document.querySelectorAll('#participants li.participant'),
                            (li) => [li.querySelector('.name').textContent, li.dataset.userId]).sort()];",
                    &[],
                )
            });
            last.push(seen.map_err(|e| e.to_string()));
        }
        let want =
            "connected, two guests with distinct names and user ids, the same list in both tabs";
        let guests_of = |v: &Value| -> Option<Vec<(String, String)>> {
            if v[0] != "connected" {
                return None;
            }
            let list: Vec<(String, String)> = serde_json::from_value(v[1].clone()).ok()?;
            let ok = list.len() == 2
                && list[0].0 != list[1].0
                && list[0].1 != list[1].1
                && list
                    .iter()
                    .all(|(name, id)| name.starts_with("Guest ") && id.starts_with("dev-guest-"));
            ok.then_some(list)
        };
        let seen: Vec<_> = last
            .iter()
            .map(|r| r.as_ref().ok().and_then(guests_of))
            .collect();
        if seen.iter().all(Option::is_some) && seen[0] == seen[1] {
            break;
        }
        if Instant::now() >= deadline {
            fail(
                &format!("two tabs on the --dev demo URL: want both {want} within {CONNECT_TIMEOUT:?}, last seen {last:?}"),
                &both,
                &server,
                &driver,
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // A message typed in the second tab shows up in the first.
    let text = "from the other tab";
    let sent = browser
        .switch_to_tab(&tabs[1])
        .map_err(|e| e.to_string())
        .and_then(|()| send_message(&browser, text));
    let received = sent.and_then(|()| {
        browser
            .switch_to_tab(&tabs[0])
            .map_err(|e| e.to_string())
            .and_then(|()| wait_received(&browser, text))
    });
    if let Err(e) = received {
        fail(&e, &both, &server, &driver);
    }
}

/// `[name, user id]` of every participant the page lists, sorted.
const PARTICIPANT_IDENTITIES_JS: &str =
    "return Array.from(document.querySelectorAll('#participants li.participant'),
    (li) => [li.querySelector('.name').textContent, li.dataset.userId]).sort();";

/// `--dev` without a token in the URL: each page asks for a name, mints a token for it and
/// joins as a user of its own. Alice and Bob, typed into two browsers, see each other by
/// name with two distinct `dev-<name>-<hex>` user ids and connect; then Bob pastes a forged
/// token instead, and the refusal is what his page shows.
#[test]
fn dev_mode_pages_join_under_the_names_typed_into_them() {
    let _one = serialize();
    let server = ServerOptions::new()
        .arg("--dev")
        .env("WEBRTC_STUN_URLS", "")
        .start();
    let driver = ChromeDriver::start();
    let alice = driver.new_browser("dev-alice");
    let bob = driver.new_browser("dev-bob");
    let both = [&alice, &bob];
    let room = "dev-names";

    for (browser, name) in [(&alice, "Alice"), (&bob, "Bob")] {
        if let Err(e) = browser.goto(&server.http_url(&format!("/?room={room}"))) {
            fail(
                &format!("cannot open the demo page: {e}"),
                &both,
                &server,
                &driver,
            );
        }
        // The page has found out it runs against `--dev` and shows the name field.
        let ready = browser.wait_for(
            "dev mode detected and the name field shown",
            "return document.body.dataset.dev === '1'
                && document.getElementById('name-label').getClientRects().length > 0;",
            UPDATE_TIMEOUT,
        );
        let typed = ready.and_then(|_| {
            browser
                .execute(
                    "document.getElementById('name').value = arguments[0];
                     document.getElementById('join-button').click();
                     return true;",
                    &[json!(name)],
                )
                .map_err(|e| e.to_string())
        });
        if let Err(e) = typed {
            fail(&format!("{name}: {e}"), &both, &server, &driver);
        }
    }

    let mut lists = Vec::new();
    for browser in both {
        let seen = browser
            .wait_for(
                "connected with two participants",
                "return document.body.dataset.state === 'connected'
                    && document.querySelectorAll('#participants li.participant').length === 2;",
                CONNECT_TIMEOUT,
            )
            .and_then(|_| {
                browser
                    .execute(PARTICIPANT_IDENTITIES_JS, &[])
                    .map_err(|e| e.to_string())
            })
            .and_then(|v| {
                serde_json::from_value::<Vec<(String, String)>>(v.clone())
                    .map_err(|e| format!("participants {v}: {e}"))
            });
        match seen {
            Ok(list) => lists.push(list),
            Err(e) => fail(&format!("{}: {e}", browser.name()), &both, &server, &driver),
        }
    }
    let dev_id = |id: &str, slug: &str| {
        id.strip_prefix(&format!("dev-{slug}-"))
            .is_some_and(|hex| hex.len() == 6 && hex.chars().all(|c| c.is_ascii_hexdigit()))
    };
    let good = |list: &Vec<(String, String)>| {
        list.len() == 2
            && list[0].0 == "Alice"
            && dev_id(&list[0].1, "alice")
            && list[1].0 == "Bob"
            && dev_id(&list[1].1, "bob")
    };
    if !(lists.iter().all(good) && lists[0] == lists[1]) {
        fail(
            &format!(
                "want Alice and Bob with dev-alice-/dev-bob- user ids on both pages, got {lists:?}"
            ),
            &both,
            &server,
            &driver,
        );
    }

    // The data channel carries a message, shown under the sender's name.
    let text = "hello from Alice";
    match send_message(&alice, text).and_then(|()| wait_received(&bob, text)) {
        Ok(got) if got["from"] == "Alice" => {}
        Ok(got) => fail(
            &format!("Bob got {got}, want it from Alice"),
            &both,
            &server,
            &driver,
        ),
        Err(e) => fail(&e, &both, &server, &driver),
    }

    // Bob leaves and pastes a forged token: his page shows the refusal; Alice's shows him gone.
    let forged = Claims::user("mallory").hs256("not-the-dev-secret");
    let refused = bob
        .execute(
            "document.getElementById('leave-button').click();
             document.getElementById('token').value = arguments[0];
             document.getElementById('join-button').click();
             return true;",
            &[json!(forged)],
        )
        .map_err(|e| e.to_string())
        .and_then(|_| {
            bob.wait_for(
                "state error and invalid_token on the page",
                "const notice = document.getElementById('notice');
                 return document.body.dataset.state === 'error' && !notice.hidden
                     && notice.dataset.kind === 'error' && notice.textContent.includes('invalid_token')
                     && notice.getClientRects().length > 0;",
                UPDATE_TIMEOUT,
            )
        })
        .and_then(|_| {
            alice.wait_for(
                "Bob listed as gone",
                "return Array.from(document.querySelectorAll('#departures li'))
                    .some((li) => li.textContent.includes('Bob left'));",
                UPDATE_TIMEOUT,
            )
        });
    if let Err(e) = refused {
        fail(&e, &both, &server, &driver);
    }
}

/// Videos playing on a page: `figure data-key` (participant id or `local`) of each `<video>`
/// that has decoded frames.
const PLAYING_VIDEOS_JS: &str = "return Array.from(document.querySelectorAll('#videos video'))
    .filter((v) => v.readyState >= 2 && v.videoWidth > 0)
    .map((v) => v.parentElement.dataset.key).sort();";

/// Camera (Chromium's fake device): Alice joins with `camera=1`, Bob without; Bob sees Alice's
/// video. Then Bob ticks the checkbox, which renegotiates, and Alice sees his.
#[test]
fn camera_video_reaches_the_other_page_and_a_late_camera_renegotiates() {
    let _one = serialize();
    let server = ServerOptions::with_secret(SECRET)
        .env("WEBRTC_STUN_URLS", "")
        .start();
    let driver = ChromeDriver::start();
    let alice = driver.new_browser("alice");
    let bob = driver.new_browser("bob");
    let both = [&alice, &bob];
    for (browser, camera) in [(&alice, "&camera=1"), (&bob, "")] {
        let token = Claims::user(browser.name()).hs256(SECRET);
        let url = server.http_url(&format!("/?room={ROOM}&token={token}&autostart=1{camera}"));
        if let Err(e) = browser.goto(&url) {
            fail(
                &format!("{}: cannot open the demo page: {e}", browser.name()),
                &both,
                &server,
                &driver,
            );
        }
    }
    let mut ids = Vec::new();
    for browser in both {
        if let Err(e) = browser.wait_for(
            "connected",
            "return document.body.dataset.state === 'connected';",
            CONNECT_TIMEOUT,
        ) {
            fail(&e, &both, &server, &driver);
        }
        ids.push(browser.execute(SELF_ID_JS, &[]).unwrap_or_default());
    }
    let (alice_id, bob_id) = (ids[0].clone(), ids[1].clone());

    let expect_videos = |browser: &Browser<'_>, want: Value| {
        let script = format!(
            "const got = (function() {{ {PLAYING_VIDEOS_JS} }})(); return JSON.stringify(got) === {} ? got : null;",
            json!(want.to_string())
        );
        if let Err(e) = browser.wait_for(&format!("playing videos {want}"), &script, UPDATE_TIMEOUT)
        {
            let got = browser
                .execute(PLAYING_VIDEOS_JS, &[])
                .map(|v| v.to_string())
                .unwrap_or_default();
            fail(&format!("{e}; playing now: {got}"), &both, &server, &driver);
        }
    };
    expect_videos(&alice, json!(["local"]));
    expect_videos(&bob, json!([alice_id.clone()]));

    if let Err(e) = bob.execute(
        "document.getElementById('camera').click(); return true;",
        &[],
    ) {
        fail(
            &format!("bob: cannot tick the camera box: {e}"),
            &both,
            &server,
            &driver,
        );
    }
    // The page sorts the keys as JavaScript does (UTF-16 code units; ASCII here, so bytes).
    let sorted = |id: &Value| {
        let mut keys = vec![
            "local".to_string(),
            id.as_str().unwrap_or_default().to_string(),
        ];
        keys.sort();
        json!(keys)
    };
    let (with_bob, with_alice) = (sorted(&bob_id), sorted(&alice_id));
    expect_videos(&alice, with_bob);
    expect_videos(&bob, with_alice);
}

/// `switchboard.js` keeps a session alive past its token's `exp` through the app's
/// `refreshToken` callback: halfway through a 4-second token it asks for a new one, sends it as
/// `refresh-token`, gets `token-refreshed`, and the page is still in the room (and the server
/// still counts it) after the first token expired.
#[test]
fn the_library_refreshes_its_token_through_the_app_callback() {
    const SHORT_SECS: i64 = 4;
    let _one = serialize();
    let server = ServerOptions::with_secret(SECRET)
        .env("WEBRTC_STUN_URLS", "")
        .start();
    let driver = ChromeDriver::start();
    let page = driver.new_browser("refresh");
    let both = [&page];
    if let Err(e) = page.goto(&server.http_url("/?room=refresh")) {
        fail(
            &format!("cannot open the demo page: {e}"),
            &both,
            &server,
            &driver,
        );
    }
    let short = Claims::user("ria").expires_in(SHORT_SECS);
    let first_exp = short.exp.unwrap_or_default();
    let renewed = Claims::user("ria").expires_in(3600);
    let renewed_exp = renewed.exp.unwrap_or_default();
    let started = page.execute(
        "const [shortToken, longToken, room] = arguments;
         window.refreshCalls = 0;
         window.refreshed = [];
         window.closes = [];
         const sb = new Switchboard({
             room: room,
             token: shortToken,
             refreshToken: async () => { window.refreshCalls += 1; return longToken; },
         });
         sb.addEventListener('tokenrefreshed', (e) => window.refreshed.push(e.detail.expiresAt));
         sb.addEventListener('closed', (e) => window.closes.push([e.detail.code, e.detail.reason]));
         window.refreshing = sb;
         sb.connect();
         return Switchboard.tokenExpiry(shortToken);",
        &[
            json!(short.hs256(SECRET)),
            json!(renewed.hs256(SECRET)),
            json!(ROOM),
        ],
    );
    match started {
        Ok(v) if v == json!(first_exp) => {}
        other => fail(
            &format!("starting the client: tokenExpiry should read exp {first_exp}: {other:?}"),
            &both,
            &server,
            &driver,
        ),
    }
    if let Err(e) = page.wait_for(
        "token-refreshed for the renewed token",
        &format!(
            "return window.refreshing.state === 'joined' && window.refreshed.length === 1
                && window.refreshed[0] === {renewed_exp};"
        ),
        Duration::from_secs(SHORT_SECS as u64 + 5),
    ) {
        fail(&e, &both, &server, &driver);
    }
    // Past the first token's exp, with a margin: still joined, never closed, one refresh.
    while switchboard_e2e::token::now_secs() <= first_exp + 1 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let state = page.execute(
        "return [window.refreshing.state, window.closes, window.refreshCalls];",
        &[],
    );
    match state {
        Ok(v) if v == json!(["joined", [], 1]) => {}
        other => fail(
            &format!("after the first token's exp: {other:?}"),
            &both,
            &server,
            &driver,
        ),
    }
    match server_participant_count(&server, &Claims::user("observer").hs256(SECRET)) {
        Ok(1) => {}
        other => fail(
            &format!("the server should still count the page: {other:?}"),
            &both,
            &server,
            &driver,
        ),
    }
}

/// The server API as `switchboard.js` sees it: a `server-message` and a `participant-updated`
/// arrive as their events (the library's own `self` follows the new metadata), and after a
/// removal (4001 `removed`) the library does not rejoin on its own.
#[test]
fn the_library_reports_server_api_events_and_stays_out_after_a_removal() {
    let _one = serialize();
    let server = ServerOptions::with_secret(SECRET)
        .env("WEBRTC_STUN_URLS", "")
        .start();
    let driver = ChromeDriver::start();
    let page = driver.new_browser("removed");
    let both = [&page];
    let check = |what: &str, result: Result<(), String>| {
        if let Err(e) = result {
            fail(&format!("{what}: {e}"), &both, &server, &driver);
        }
    };
    let waited = |r: Result<Value, String>| r.map(|_| ());
    check(
        "opening the demo page",
        page.goto(&server.http_url("/?room=removed"))
            .map_err(|e| e.to_string()),
    );
    let started = page.execute(
        "const [token, room] = arguments;
         window.events = [];
         const sb = new Switchboard({room: room, token: token});
         for (const name of ['server-message', 'participant-updated', 'closed']) {
             sb.addEventListener(name, (e) => window.events.push([name, e.detail]));
         }
         window.api = sb;
         sb.connect();
         return true;",
        &[json!(Claims::user("rex").hs256(SECRET)), json!(ROOM)],
    );
    check(
        "starting the client",
        started.map(|_| ()).map_err(|e| e.to_string()),
    );
    check(
        "joining",
        waited(page.wait_for(
            "joined",
            "return window.api.state === 'joined';",
            UPDATE_TIMEOUT,
        )),
    );
    let pid = match page.execute("return window.api.self.participant_id;", &[]) {
        Ok(Value::String(pid)) => pid,
        other => fail(&format!("self: {other:?}"), &both, &server, &driver),
    };
    let admin = format!(
        "Bearer {}",
        Claims::user("backend")
            .grants(json!({"room_admin": true}))
            .hs256(SECRET)
    );
    let participant = server.http_url(&format!("/webrtc/api/v1/rooms/{ROOM}/participants/{pid}"));

    let sent = ureq::post(&server.http_url(&format!("/webrtc/api/v1/rooms/{ROOM}/messages")))
        .header("Authorization", &admin)
        .send_json(json!({"payload": {"hi": 1}}))
        .map(|r| r.status().as_u16());
    check(
        "POST messages",
        match sent {
            Ok(202) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    check(
        "server-message",
        waited(page.wait_for(
            "a server-message event",
            "return window.events.some(([n, d]) => n === 'server-message' && d.payload.hi === 1);",
            UPDATE_TIMEOUT,
        )),
    );

    let patched = ureq::patch(&participant)
        .header("Authorization", &admin)
        .send_json(json!({"metadata": {"role": "host"}}))
        .map(|r| r.status().as_u16());
    check(
        "PATCH participant",
        match patched {
            Ok(200) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    check(
        "participant-updated",
        waited(page.wait_for(
            "a participant-updated event and self's new metadata",
            "return window.events.some(([n, d]) => n === 'participant-updated'
                     && d.participant.metadata.role === 'host')
                 && window.api.self.metadata.role === 'host';",
            UPDATE_TIMEOUT,
        )),
    );

    let removed = ureq::delete(&participant)
        .header("Authorization", &admin)
        .call()
        .map(|r| r.status().as_u16());
    check(
        "DELETE participant",
        match removed {
            Ok(200) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    check(
        "closed 4001",
        waited(page.wait_for(
            "closed 4001 removed without a reconnect",
            "return window.events.some(([n, d]) => n === 'closed' && d.code === 4001
                     && d.reason === 'removed' && d.willReconnect === false);",
            UPDATE_TIMEOUT,
        )),
    );
    // Longer than the library's first reconnect backoff: it stays out.
    std::thread::sleep(Duration::from_secs(3));
    let state = page.execute("return window.api.state;", &[]);
    let count = server_participant_count(&server, &Claims::user("observer").hs256(SECRET));
    match (state, count) {
        (Ok(state), Ok(0)) if state == json!("closed") => {}
        other => fail(
            &format!("after the removal: {other:?}"),
            &both,
            &server,
            &driver,
        ),
    }
}
