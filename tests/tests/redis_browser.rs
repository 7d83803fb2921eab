//! The walkthrough of docs/architecture.md, automated: Redis plus three server instances, the
//! demo page opened in two headless Chromium tabs on two different instances; the tabs see each
//! other, open a WebRTC data channel through signaling relayed over Redis, and exchange a
//! message. Needs `redis-server`, `chromium` and `chromium-driver` (never skips without them).

use std::time::Duration;

use serde_json::{json, Value};
use switchboard_e2e::browser::{check, start_instances, ChromeDriver};
use switchboard_e2e::redis::RedisProcess;
use switchboard_e2e::token::Claims;

const SECRET: &str = "redis-browser-test-secret-0123456789";
const ROOM: &str = "demo";
/// Bound for joining plus ICE/DTLS/SCTP between the two browsers.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Fills in the page's message form and presses Send.
const SEND_JS: &str = "
    const input = document.getElementById('message-input');
    const button = document.getElementById('send-button');
    if (input.disabled || button.disabled) return null;
    input.value = arguments[0];
    button.click();
    return 'sent';
";

/// The first received data-channel message with exactly this text, or null.
const RECEIVED_JS: &str = "
    for (const li of document.querySelectorAll('#messages li.received')) {
        if (li.querySelector('.text').textContent === arguments[0]) return li.dataset.from || 'someone';
    }
    return null;
";

#[test]
fn two_tabs_on_different_instances_call_each_other() {
    let redis = RedisProcess::start();
    let servers = start_instances(SECRET, &redis.url(), "sb", 3, &[]);

    let driver = ChromeDriver::start();
    let alice = driver.new_browser("alice");
    let bob = driver.new_browser("bob");
    let both = [&alice, &bob];
    for (browser, user, server) in [(&alice, "alice", &servers[0]), (&bob, "bob", &servers[1])] {
        let token = Claims::user(user).hs256(SECRET);
        let url = server.http_url(&format!("/?room={ROOM}&token={token}&autostart=1"));
        check(
            browser
                .goto(&url)
                .map(|()| Value::Null)
                .map_err(|e| e.to_string()),
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
    let sent = alice.execute(SEND_JS, &[json!("hello across instances")]);
    check(
        sent.map_err(|e| e.to_string()).and_then(|v| {
            if v == "sent" {
                Ok(v)
            } else {
                Err(format!("alice could not send: {v}"))
            }
        }),
        &both,
        &servers,
    );
    let script = format!(
        "return (function() {{ {RECEIVED_JS} }}).apply(null, [{}]);",
        json!("hello across instances")
    );
    check(
        bob.wait_for("message from alice", &script, Duration::from_secs(10)),
        &both,
        &servers,
    );
}
