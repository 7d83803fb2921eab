//! Starts the real `switchboard-server` binary as a child process on an ephemeral loopback port,
//! learns its address from stdout, and kills it on drop. It does not build the binary.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a server may take to print `listening on`.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How many stderr lines a failure message shows.
const STDERR_TAIL_LINES: usize = 40;

/// Environment variables passed through from the test process; everything else is cleared so
/// that a developer's `REDIS_URL` or `JWT_SECRET` never leaks into a test server.
const PASSTHROUGH_ENV: &[&str] = &["PATH", "RUST_LOG", "RUST_BACKTRACE", "HOME", "TMPDIR"];

/// Path of the `switchboard-server` binary: `SWITCHBOARD_SERVER_BIN` if set, else the one cargo
/// put next to the test executable (`<target>/<profile>/switchboard-server`).
///
/// Panics with the build command when it does not exist: these tests never skip.
pub fn server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SWITCHBOARD_SERVER_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "SWITCHBOARD_SERVER_BIN={} does not exist",
            path.display()
        );
        return path;
    }
    let exe = std::env::current_exe().expect("current_exe of the test binary");
    // The test executable lives in <target>/<profile>/deps/; the server binary in <target>/<profile>/.
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable has no <profile>/deps parent")
        .to_path_buf();
    let path = profile_dir.join("switchboard-server");
    assert!(
        path.is_file(),
        "switchboard-server binary not found at {}: build it first: cargo build -p switchboard-server \
         (with the same CARGO_TARGET_DIR and profile as the tests)",
        path.display()
    );
    path
}

/// What to run: extra flags and environment for one server process.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Whether to add `--listen 127.0.0.1:0` (off for tests of the listen setting itself).
    no_listen_flag: bool,
    /// Soft and hard RLIMIT_NOFILE of the child, when set.
    fd_limit: Option<u64>,
}

impl ServerOptions {
    /// No flags, no environment (the server will refuse to start without a JWT key).
    pub fn new() -> Self {
        Self::default()
    }

    /// HS256 with this secret given as `JWT_SECRET`: the common case.
    pub fn with_secret(secret: &str) -> Self {
        Self::new().env("JWT_SECRET", secret)
    }

    /// Adds one CLI argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds several CLI arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets one environment variable for the child.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Do not add `--listen 127.0.0.1:0`.
    pub fn without_listen_flag(mut self) -> Self {
        self.no_listen_flag = true;
        self
    }

    /// Runs the server with at most `n` open file descriptors (soft and hard limit, so the
    /// server cannot raise it), as in a container with a low `nofile` limit.
    pub fn fd_limit(mut self, n: u64) -> Self {
        self.fd_limit = Some(n);
        self
    }

    fn command(&self) -> Command {
        let mut cmd = match self.fd_limit {
            None => Command::new(server_binary()),
            // `ulimit -n` without -S/-H sets both limits; `exec` keeps the pid.
            Some(n) => {
                let mut sh = Command::new("/bin/sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(server_binary());
                sh
            }
        };
        cmd.env_clear();
        for key in PASSTHROUGH_ENV {
            if let Some(value) = std::env::var_os(key) {
                cmd.env(key, value);
            }
        }
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
        if !self.no_listen_flag {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(&self.args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Starts the server and waits (bounded) for its `listening on` line. Panics with the stderr
    /// tail if it exits or stays silent.
    pub fn start(&self) -> ServerProcess {
        ServerProcess::start(self)
    }

    /// Runs the server expecting it to exit by itself (bad configuration): returns its exit code
    /// and output. Panics if it is still running after `timeout` (it is killed first).
    pub fn run_to_exit(&self, timeout: Duration) -> ExitOutput {
        let mut child = self
            .command()
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", server_binary().display()));
        let stdout = collect_lines(child.stdout.take().expect("piped stdout"));
        let stderr = collect_lines(child.stderr.take().expect("piped stderr"));
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "server still running after {timeout:?} (expected it to exit); stderr:\n{}",
                        tail(&stderr.lock().expect("stderr lock"), STDERR_TAIL_LINES)
                    );
                }
                Err(e) => panic!("waiting for server: {e}"),
            }
        };
        // The reader threads end at EOF, shortly after exit.
        let stdout = join_lines(stdout);
        let stderr = join_lines(stderr);
        ExitOutput {
            code: status.code(),
            stdout,
            stderr,
        }
    }
}

/// Output of a server process that exited by itself.
#[derive(Debug)]
pub struct ExitOutput {
    /// Exit code (None if killed by a signal).
    pub code: Option<i32>,
    /// Lines printed on stdout.
    pub stdout: Vec<String>,
    /// Lines printed on stderr.
    pub stderr: Vec<String>,
}

impl ExitOutput {
    /// Non-empty stderr lines.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .collect()
    }
}

/// A running `switchboard-server`; killed (SIGKILL) on drop.
pub struct ServerProcess {
    child: Child,
    addr: SocketAddr,
    stdout_rx: Receiver<String>,
    stdout_seen: Vec<String>,
    stderr: Arc<Mutex<Vec<String>>>,
    exit: Option<ExitStatus>,
}

impl ServerProcess {
    /// Starts the server with `options`, see [`ServerOptions::start`].
    pub fn start(options: &ServerOptions) -> ServerProcess {
        let mut child = options
            .command()
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", server_binary().display()));
        let stderr = collect_lines(child.stderr.take().expect("piped stderr"));
        let (tx, stdout_rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut process = ServerProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stdout_rx,
            stdout_seen: Vec::new(),
            stderr,
            exit: None,
        };
        let line = process.wait_stdout_line("listening on ", START_TIMEOUT);
        let addr = line.trim_start_matches("listening on ").trim();
        process.addr = addr.parse().unwrap_or_else(|e| {
            panic!("`listening on` line has no socket address ({e}): {line:?}")
        });
        process
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr><path>`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every stdout line printed so far (including `listening on`).
    pub fn stdout_lines(&mut self) -> &[String] {
        while let Ok(line) = self.stdout_rx.try_recv() {
            self.stdout_seen.push(line);
        }
        &self.stdout_seen
    }

    /// Waits (bounded) for a stdout line starting with `prefix`, also searching lines already
    /// seen; returns the whole line. Panics with the stderr tail on timeout or exit.
    pub fn wait_stdout_line(&mut self, prefix: &str, timeout: Duration) -> String {
        if let Some(line) = self.stdout_seen.iter().find(|l| l.starts_with(prefix)) {
            return line.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout_rx.recv_timeout(left) {
                Ok(line) => {
                    self.stdout_seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "server printed no stdout line starting with {prefix:?} within {timeout:?}; \
                     stdout so far: {:?}; stderr tail:\n{}",
                    self.stdout_seen,
                    self.stderr_tail()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    // Give the stderr reader a moment to catch the last lines of a crash.
                    std::thread::sleep(Duration::from_millis(100));
                    let status = self.child.try_wait().ok().flatten();
                    panic!(
                        "server closed stdout (exit status {status:?}) before printing a line \
                         starting with {prefix:?}; stdout: {:?}; stderr tail:\n{}",
                        self.stdout_seen,
                        self.stderr_tail()
                    )
                }
            }
        }
    }

    /// The last stderr lines, for failure messages.
    pub fn stderr_tail(&self) -> String {
        tail(&self.stderr.lock().expect("stderr lock"), STDERR_TAIL_LINES)
    }

    /// All stderr lines so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits in i32"));
        kill(pid, signal).unwrap_or_else(|e| panic!("kill({pid}, {signal}): {e}"));
    }

    /// SIGTERM: starts the drain.
    pub fn sigterm(&self) {
        self.signal(Signal::SIGTERM);
    }

    /// SIGKILL and reap: an instance crash.
    pub fn sigkill(&mut self) {
        if self.exit.is_some() {
            return;
        }
        let _ = self.child.kill();
        self.exit = self.child.wait().ok();
    }

    /// Non-blocking: the exit status if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Whether `/webrtc/health/ready` answers 200, for tests without a runtime (the browser
    /// tests drive WebDriver synchronously).
    pub fn is_ready_blocking(&self) -> bool {
        ureq::get(self.http_url("/webrtc/health/ready"))
            .call()
            .is_ok_and(|r| r.status() == 200)
    }

    /// Whether `/webrtc/health/ready` answers 200.
    pub async fn is_ready(&self) -> bool {
        crate::http::get(self.addr(), "/webrtc/health/ready")
            .await
            .status
            == 200
    }

    /// Polls readiness until it is `want`; panics with the stderr tail after `timeout`.
    pub async fn wait_ready(&self, want: bool, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.is_ready().await != want {
            assert!(
                Instant::now() < deadline,
                "readiness of {} did not become {want} within {timeout:?}; stderr:\n{}",
                self.addr(),
                self.stderr_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (bounded, without blocking the async runtime) for the process to exit; None on
    /// timeout.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl std::fmt::Debug for ServerProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerProcess")
            .field("pid", &self.child.id())
            .field("addr", &self.addr)
            .finish()
    }
}

/// Reads lines from a pipe in a thread into a shared buffer.
fn collect_lines(pipe: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            sink.lock().expect("lines lock").push(line);
        }
    });
    lines
}

/// Copies a shared line buffer after giving its reader thread a moment to reach EOF.
fn join_lines(lines: Arc<Mutex<Vec<String>>>) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(2);
    // The reader thread holds the other Arc until it sees EOF.
    while Arc::strong_count(&lines) > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let guard = lines.lock().expect("lines lock");
    guard.clone()
}

fn tail(lines: &[String], n: usize) -> String {
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// Blocks until every server answers `/webrtc/health/ready` with 200 (`want`) or stops doing so
/// (`!want`); panics naming the first laggard after `timeout`.
pub fn wait_all_ready_blocking(servers: &[ServerProcess], want: bool, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while let Some(laggard) = servers.iter().find(|s| s.is_ready_blocking() != want) {
        assert!(
            Instant::now() < deadline,
            "readiness of {} did not become {want} within {timeout:?}; stderr:\n{}",
            laggard.addr(),
            laggard.stderr_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
