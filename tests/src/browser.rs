//! Drives headless Chromium through `chromedriver`'s W3C WebDriver HTTP API (plain JSON over a
//! blocking HTTP client): start chromedriver on an ephemeral port, open sessions, run scripts,
//! take screenshots, read console logs. Not a general WebDriver client.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

/// How long chromedriver may take to say it listens.
const DRIVER_START_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one WebDriver command (creating a session starts a browser, the slowest one).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How often [`Browser::wait_for`] polls.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Where the Debian packages `chromium` and `chromium-driver` put their programs.
const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";
const DEFAULT_CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Flags for a quiet, reproducible headless browser that can do WebRTC between two instances
/// on one machine with fake media devices.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--window-size=1200,900",
    // Camera/microphone without a permission prompt and without real devices.
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    // ICE host candidates on 127.0.0.1 (and real IPs instead of mDNS `.local` names, which
    // would need a working multicast resolver) so two browsers connect with no STUN server.
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    // Background tabs must not throttle timers or the data channel.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
];

/// Path of a required program: the env override if set, else the Debian default. Panics with
/// the install command when missing: browser tests never skip.
fn required_program(env: &str, default: &str, package: &str) -> PathBuf {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    assert!(
        path.is_file(),
        "{} not found (set {env} to override): install it with `apt-get install -y {package}`",
        path.display()
    );
    path
}

/// The Chromium binary (`CHROMIUM_BIN` overrides).
pub fn chromium_binary() -> PathBuf {
    required_program("CHROMIUM_BIN", DEFAULT_CHROMIUM, "chromium")
}

/// The chromedriver binary (`CHROMEDRIVER_BIN` overrides).
pub fn chromedriver_binary() -> PathBuf {
    required_program("CHROMEDRIVER_BIN", DEFAULT_CHROMEDRIVER, "chromium-driver")
}

/// Parses chromedriver's "ChromeDriver was started successfully on port 38027." line.
pub fn parse_started_port(line: &str) -> Option<u16> {
    let rest = line.split("started successfully on port ").nth(1)?;
    rest.trim().trim_end_matches('.').parse().ok()
}

/// A WebDriver error or an unexpected response, with what was asked.
#[derive(Debug)]
pub struct WebDriverError(pub String);

impl std::fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WebDriverError {}

/// A running chromedriver on an ephemeral loopback port; killed on drop.
pub struct ChromeDriver {
    child: Child,
    base: String,
    agent: ureq::Agent,
    chromium: PathBuf,
    output: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ChromeDriver {
    /// Starts chromedriver with `--port=0` and waits (bounded) for the port it picked.
    pub fn start() -> ChromeDriver {
        let chromium = chromium_binary();
        let driver = chromedriver_binary();
        let mut child = Command::new(&driver)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", driver.display()));
        let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let sink = std::sync::Arc::clone(&output);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(port) = parse_started_port(&line) {
                    let _ = tx.send(port);
                }
                sink.lock().expect("output lock").push(line);
            }
        });
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = std::sync::Arc::clone(&output);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().expect("output lock").push(line);
            }
        });
        let port = match rx.recv_timeout(DRIVER_START_TIMEOUT) {
            Ok(port) => port,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "chromedriver did not report its port within {DRIVER_START_TIMEOUT:?}; output:\n{}",
                    output.lock().expect("output lock").join("\n")
                );
            }
        };
        let config = ureq::Agent::config_builder()
            // WebDriver errors come as 4xx/5xx with a JSON body worth reading.
            .http_status_as_error(false)
            .timeout_global(Some(COMMAND_TIMEOUT))
            .build();
        ChromeDriver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            agent: config.into(),
            chromium,
            output,
        }
    }

    /// chromedriver's own output so far (for failure messages).
    pub fn output(&self) -> String {
        self.output.lock().expect("output lock").join("\n")
    }

    /// Sends one command; returns the `value` of a successful answer.
    fn command(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, WebDriverError> {
        let url = format!("{}{}", self.base, path);
        let response = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, body) => self
                .agent
                .post(&url)
                .send_json(body.unwrap_or_else(|| json!({}))),
        };
        let mut response = response.map_err(|e| WebDriverError(format!("{method} {path}: {e}")))?;
        let status = response.status().as_u16();
        let body: Value = response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_json()
            .map_err(|e| {
                WebDriverError(format!(
                    "{method} {path}: HTTP {status}, unreadable body: {e}"
                ))
            })?;
        let value = body.get("value").cloned().unwrap_or(Value::Null);
        if status >= 400 || value.get("error").is_some_and(Value::is_string) {
            return Err(WebDriverError(format!(
                "{method} {path}: HTTP {status}: {} {}",
                value["error"].as_str().unwrap_or("?"),
                value["message"].as_str().unwrap_or("")
            )));
        }
        Ok(value)
    }

    /// Starts a fresh headless Chromium (own temporary profile) as a new WebDriver session.
    /// `name` labels it in failure messages and screenshot file names.
    pub fn new_browser(&self, name: &str) -> Browser<'_> {
        let profile = tempfile::Builder::new()
            .prefix(&format!("switchboard-chromium-{name}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a Chromium profile dir: {e}"));
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| f.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": self.chromium.display().to_string(),
                        "args": args,
                    },
                    "goog:loggingPrefs": {"browser": "ALL"},
                }
            }
        });
        let value = self
            .command("POST", "/session", Some(capabilities))
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start Chromium ({}) through chromedriver: {e}\nchromedriver output:\n{}",
                    self.chromium.display(),
                    self.output()
                )
            });
        let session = value["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("new session answer has no sessionId: {value}"))
            .to_string();
        Browser {
            driver: self,
            session,
            name: name.to_string(),
            _profile: profile,
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One WebDriver session (one Chromium process); closed on drop.
pub struct Browser<'d> {
    driver: &'d ChromeDriver,
    session: String,
    name: String,
    // Removed only after `Drop::drop` has ended the session, so Chromium no longer uses it.
    _profile: tempfile::TempDir,
}

impl Browser<'_> {
    /// The label given at creation.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn command(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, WebDriverError> {
        self.driver
            .command(method, &format!("/session/{}{}", self.session, path), body)
    }

    /// Navigates and waits for the page load.
    pub fn goto(&self, url: &str) -> Result<(), WebDriverError> {
        self.command("POST", "/url", Some(json!({ "url": url })))
            .map(|_| ())
    }

    /// Opens a new tab in this browser (same profile) and returns its window handle; the
    /// current tab stays current.
    pub fn new_tab(&self) -> Result<String, WebDriverError> {
        let value = self.command("POST", "/window/new", Some(json!({ "type": "tab" })))?;
        value["handle"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| WebDriverError(format!("new window answer has no handle: {value}")))
    }

    /// The handle of the current tab.
    pub fn current_tab(&self) -> Result<String, WebDriverError> {
        let value = self.command("GET", "/window", None)?;
        value
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| WebDriverError(format!("window handle is not a string: {value}")))
    }

    /// Makes `handle` the tab that later commands (navigation, scripts, screenshots) act on.
    pub fn switch_to_tab(&self, handle: &str) -> Result<(), WebDriverError> {
        self.command("POST", "/window", Some(json!({ "handle": handle })))
            .map(|_| ())
    }

    /// Runs `script` as a function body (use `return`), `arguments` available as `arguments[i]`.
    pub fn execute(&self, script: &str, args: &[Value]) -> Result<Value, WebDriverError> {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Polls `script` (a function body returning a value) until it returns something truthy
    /// (not null/false/""/0), bounded by `timeout`. Returns the last value on timeout as error.
    pub fn wait_for(&self, what: &str, script: &str, timeout: Duration) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            match self.execute(script, &[]) {
                Ok(value) if is_truthy(&value) => return Ok(value),
                Ok(value) => last = value,
                Err(e) => last = Value::String(format!("script error: {e}")),
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{}: {what} not reached within {timeout:?} (last value: {last})",
                    self.name
                ));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Saves a PNG screenshot of the viewport to `path`.
    pub fn screenshot(&self, path: &Path) -> Result<(), WebDriverError> {
        let value = self.command("GET", "/screenshot", None)?;
        let b64 = value
            .as_str()
            .ok_or_else(|| WebDriverError(format!("screenshot is not a string: {value}")))?;
        let png = STANDARD
            .decode(b64)
            .map_err(|e| WebDriverError(format!("screenshot is not base64: {e}")))?;
        std::fs::write(path, png)
            .map_err(|e| WebDriverError(format!("write {}: {e}", path.display())))
    }

    /// Browser console messages since the last call (chromedriver's log endpoint), one line each.
    pub fn console_log(&self) -> Result<Vec<String>, WebDriverError> {
        let value = self.command("POST", "/se/log", Some(json!({ "type": "browser" })))?;
        Ok(value
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| {
                        format!(
                            "[{}] {}",
                            e["level"].as_str().unwrap_or("?"),
                            e["message"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Everything useful after a failure: a screenshot under `dir` (path returned in the text)
    /// and the console log. Never panics: it runs while a test is already failing.
    pub fn diagnostics(&self, dir: &Path) -> String {
        let mut out = String::new();
        let shot = dir.join(format!("{}.png", self.name));
        match self.screenshot(&shot) {
            Ok(()) => out.push_str(&format!(
                "screenshot of {}: {}\n",
                self.name,
                shot.display()
            )),
            Err(e) => out.push_str(&format!("screenshot of {} failed: {e}\n", self.name)),
        }
        match self.console_log() {
            Ok(lines) => {
                out.push_str(&format!(
                    "console of {} ({} lines):\n",
                    self.name,
                    lines.len()
                ));
                for line in lines {
                    out.push_str("  ");
                    out.push_str(&line);
                    out.push('\n');
                }
            }
            Err(e) => out.push_str(&format!("console of {} unavailable: {e}\n", self.name)),
        }
        // The negotiation state of each peer connection of a page that exposes its client.
        match self.execute(PEERS_JS, &[]) {
            Ok(peers) if !peers.is_null() => {
                out.push_str(&format!("peer connections of {}: {peers}\n", self.name))
            }
            Ok(_) => {}
            Err(e) => out.push_str(&format!("peers of {} unavailable: {e}\n", self.name)),
        }
        out
    }
}

/// Each `RTCPeerConnection` of `window.switchboard` (the demo page sets it): signaling,
/// ICE and connection state, and every transceiver's mid and directions.
const PEERS_JS: &str = "const sb = window.switchboard;
    if (!sb || !sb._peers) return null;
    return Array.from(sb._peers.values(), (p) => ({
        id: p.id, initiator: p.initiator, makingOffer: p.makingOffer,
        signaling: p.pc.signalingState, ice: p.pc.iceConnectionState, connection: p.pc.connectionState,
        transceivers: p.pc.getTransceivers().map((t) => ({
            mid: t.mid, kind: t.receiver.track.kind, direction: t.direction,
            current: t.currentDirection, sending: !!t.sender.track })),
    }));";

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        let _ = self.command("DELETE", "", None);
    }
}

/// JavaScript truthiness of a JSON value.
pub fn is_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// The value of a step of a browser test, or a panic with `error` and everything needed to see
/// why: each page's diagnostics (screenshot, console, peer connections) and each server's
/// stderr tail.
pub fn check<T>(
    result: Result<T, String>,
    browsers: &[&Browser<'_>],
    servers: &[crate::server::ServerProcess],
) -> T {
    match result {
        Ok(value) => value,
        Err(error) => {
            let dir =
                std::env::temp_dir().join(format!("switchboard-browser-{}", std::process::id()));
            let _ = std::fs::create_dir_all(&dir);
            let mut report = format!("{error}\n");
            for browser in browsers {
                report.push_str(&browser.diagnostics(&dir));
            }
            for server in servers {
                report.push_str(&format!(
                    "\nserver {} stderr:\n{}",
                    server.addr(),
                    server.stderr_tail()
                ));
            }
            panic!("{report}");
        }
    }
}

/// `n` server instances on the Redis at `redis_url` for pages to call each other through, named
/// `<prefix>-<i>`, with `env` on top; no STUN (no route out of this machine; host candidates
/// suffice locally). Returns once every one is ready.
pub fn start_instances(
    secret: &str,
    redis_url: &str,
    prefix: &str,
    n: usize,
    env: &[(&str, &str)],
) -> Vec<crate::server::ServerProcess> {
    let servers: Vec<_> = (0..n)
        .map(|i| {
            let mut options = crate::server::ServerOptions::with_secret(secret)
                .env("REDIS_URL", redis_url)
                .env("SWITCHBOARD_INSTANCE_ID", format!("{prefix}-{i}"))
                .env("WEBRTC_STUN_URLS", "");
            for (key, value) in env {
                options = options.env(*key, *value);
            }
            options.start()
        })
        .collect();
    crate::server::wait_all_ready_blocking(&servers, true, Duration::from_secs(15));
    servers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_started_line() {
        assert_eq!(
            parse_started_port("ChromeDriver was started successfully on port 38027."),
            Some(38027)
        );
        assert_eq!(
            parse_started_port("Only local connections are allowed."),
            None
        );
        assert_eq!(
            parse_started_port("ChromeDriver was started successfully on port x."),
            None
        );
    }

    #[test]
    fn truthiness_follows_javascript() {
        for (value, truthy) in [
            (json!(null), false),
            (json!(false), false),
            (json!(0), false),
            (json!(""), false),
            (json!(true), true),
            (json!(2), true),
            (json!("connected"), true),
            (json!([]), true),
            (json!({}), true),
        ] {
            assert_eq!(is_truthy(&value), truthy, "{value}");
        }
    }
}
