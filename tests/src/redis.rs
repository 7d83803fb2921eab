//! A real `redis-server` child process on an ephemeral loopback port for the multi-instance
//! tests, plus a tiny synchronous RESP client to poke it (PING, CLIENT KILL, KEYS).
//!
//! It never touches the Redis on the default port 6379: every instance gets a fresh free port,
//! no persistence (`--save "" --appendonly no`) and is killed when dropped. [`RedisProxy`] sits
//! in front of one to wedge subscriber connections on demand.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long we wait for a freshly started redis-server to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A `redis-server` child process; killed (SIGKILL) and reaped on drop.
pub struct RedisProcess {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// Extra `redis-server` arguments, kept for restarts.
    extra: Vec<String>,
    /// While killed: a socket bound (not listening) to the port, so nothing else in this or
    /// another process gets it before [`restart_same_port`](Self::restart_same_port); a client
    /// still sees "connection refused", exactly like a stopped Redis.
    reservation: Option<tokio::net::TcpSocket>,
}

/// Makes working directories unique per `RedisProcess`: two in one process can get the same
/// port one after the other (after a kill freed it), and one's drop must not delete the other's.
static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

impl RedisProcess {
    /// Starts `redis-server` from PATH on a free 127.0.0.1 port and waits until it answers PING.
    ///
    /// Panics with an instruction when `redis-server` is not installed: these tests must never
    /// be skipped silently.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`start`](Self::start), with extra `redis-server` arguments (TLS, ACL files, ...).
    /// The plain port stays enabled for [`command`](Self::command).
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_on(extra, free_port)
    }

    /// Like [`start_with`](Self::start_with) on a port from `pick` (a cluster node needs one
    /// whose bus port, +10000, is free too).
    pub(crate) fn start_on(extra: &[&str], pick: fn() -> u16) -> Self {
        let extra: Vec<String> = extra.iter().map(|a| (*a).to_owned()).collect();
        // Another process may grab the free port between our probe and redis' bind: retry.
        for _ in 0..5 {
            let port = pick();
            let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!(
                "switchboard-redis-{}-{n}-{port}",
                std::process::id()
            ));
            // The working directory keeps any stray dump file out of the repository.
            if let Err(e) = std::fs::create_dir_all(&dir) {
                panic!("cannot create {}: {e}", dir.display());
            }
            let mut redis = RedisProcess {
                child: Some(spawn_child(port, &dir, &extra)),
                port,
                dir,
                extra: extra.clone(),
                reservation: None,
            };
            if redis.try_wait_ready(START_TIMEOUT) {
                return redis;
            }
        }
        panic!("redis-server did not start on a free port within {START_TIMEOUT:?} (5 attempts)");
    }

    /// The TCP port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`, for `REDIS_URL`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILLs the server (all data is lost: it never persists) and waits until it has exited.
    /// The port stays reserved for [`restart_same_port`](Self::restart_same_port).
    pub fn kill(&mut self) {
        self.stop();
        if self.reservation.is_none() {
            self.reservation = reserve_port(self.port);
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a fresh, empty server on the same port after [`kill`](Self::kill) (or kills the
    /// running one first). Clients see the same address come back with no keys at all.
    pub fn restart_same_port(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            // The port may linger briefly; redis-server exits at once if it cannot bind.
            self.reservation = None;
            self.child = Some(spawn_child(self.port, &self.dir, &self.extra));
            if self.try_wait_ready(Duration::from_secs(2)) {
                return;
            }
            self.kill();
            if Instant::now() > deadline {
                panic!("redis-server did not come back on port {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the process is running (not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Sends one command over a fresh connection and returns its reply.
    pub fn command(&self, args: &[&str]) -> Reply {
        match send_command(self.port, args) {
            Ok(reply) => reply,
            Err(e) => panic!("redis command {:?} failed: {e}", args.first()),
        }
    }

    /// Kills every pub/sub client connection on the Redis side (`CLIENT KILL TYPE pubsub`) and
    /// returns how many were killed.
    pub fn client_kill_pubsub(&self) -> i64 {
        match self.command(&["CLIENT", "KILL", "TYPE", "pubsub"]) {
            Reply::Integer(n) => n,
            other => panic!("unexpected CLIENT KILL reply: {other:?}"),
        }
    }

    /// All keys matching `pattern` (KEYS; fine for a test server), sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys = match self.command(&["KEYS", pattern]) {
            Reply::Array(items) => items
                .into_iter()
                .filter_map(|r| match r {
                    Reply::Bulk(Some(s)) => Some(s),
                    _ => None,
                })
                .collect::<Vec<_>>(),
            other => panic!("unexpected KEYS reply: {other:?}"),
        };
        keys.sort();
        keys
    }

    fn try_wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_status)) = child.try_wait() {
                    // Exited (port taken?): not ready, let the caller decide.
                    self.child = None;
                    return false;
                }
            }
            if matches!(send_command(self.port, &["PING"]), Ok(Reply::Status(ref s)) if s == "PONG")
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP proxy in front of a Redis that can wedge subscriber connections: after
/// [`freeze_subscribers`](Self::freeze_subscribers), every connection that had sent a
/// SUBSCRIBE stays open but never again delivers a byte from Redis to the client, the way a
/// half-dead NAT entry or proxy would. Connections opened later work normally.
pub struct RedisProxy {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<Arc<ProxiedConn>>>>,
    /// While set, new connections are closed at once (a partition).
    refusing: Arc<AtomicBool>,
    /// Ends every proxied connection open now.
    cut: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct ProxiedConn {
    subscriber: AtomicBool,
    frozen: AtomicBool,
}

impl RedisProxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:<upstream_port>`.
    pub async fn start(upstream_port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap_or_else(|e| panic!("proxy bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("proxy addr: {e}"));
        let conns: Arc<Mutex<Vec<Arc<ProxiedConn>>>> = Arc::default();
        let refusing = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(tokio::sync::Notify::new());
        let (registry, refuse, cut_all) = (conns.clone(), refusing.clone(), cut.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if refuse.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let state = Arc::new(ProxiedConn::default());
                registry
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(state.clone());
                tokio::spawn(proxy_connection(
                    client,
                    upstream_port,
                    state,
                    cut_all.clone(),
                ));
            }
        });
        RedisProxy {
            addr,
            conns,
            refusing,
            cut,
            task,
        }
    }

    /// `redis://127.0.0.1:<proxy port>/`.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Wedges every subscriber connection open now; returns how many.
    pub fn freeze_subscribers(&self) -> usize {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        for c in conns.iter() {
            if c.subscriber.load(Ordering::SeqCst) {
                c.frozen.store(true, Ordering::SeqCst);
                n += 1;
            }
        }
        n
    }
}

impl RedisProxy {
    /// Cuts every connection and refuses new ones until [`heal`](Self::heal): Redis keeps
    /// running (and expiring keys) but nobody behind the proxy can reach it.
    pub fn partition(&self) {
        self.refusing.store(true, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    /// Accepts connections again.
    pub fn heal(&self) {
        self.refusing.store(false, Ordering::SeqCst);
    }
}

impl Drop for RedisProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn proxy_connection(
    client: tokio::net::TcpStream,
    upstream_port: u16,
    state: Arc<ProxiedConn>,
    cut: Arc<tokio::sync::Notify>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Created before any await, so a cut during the upstream connect is not missed.
    let cut = cut.notified();
    let Ok(upstream) = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, upstream_port)).await
    else {
        return;
    };
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut up_rd, mut up_wr) = upstream.into_split();
    let to_redis_state = state.clone();
    let to_redis = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match client_rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if buf[..n]
                .windows(9)
                .any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE"))
            {
                to_redis_state.subscriber.store(true, Ordering::SeqCst);
            }
            if up_wr.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let to_client = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match up_rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // Frozen: swallow everything, keep the socket open.
            if state.frozen.load(Ordering::SeqCst) {
                continue;
            }
            if client_wr.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // Either side closing ends the proxied connection.
    tokio::select! {
        () = to_redis => {}
        () = to_client => {}
        () = cut => {}
    }
}

/// A RESP reply, reduced to what the tests need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Integer(i64),
    Bulk(Option<String>),
    Array(Vec<Reply>),
}

fn spawn_child(port: u16, dir: &std::path::Path, extra: &[String]) -> Child {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir.to_string_lossy(),
            "--loglevel",
            "warning",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn();
    match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "redis-server not found in PATH: install redis-server (tests/run.sh does: \
             apt-get install -y redis-server)"
        ),
        Err(e) => panic!("cannot start redis-server: {e}"),
    }
}

/// A port that was free a moment ago (bind to :0, read it back, release it).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap_or_else(|e| panic!("cannot bind an ephemeral port: {e}"));
    match listener.local_addr() {
        Ok(addr) => addr.port(),
        Err(e) => panic!("cannot read the ephemeral port: {e}"),
    }
}

/// Binds (without listening) a socket to `127.0.0.1:port`, best effort: ephemeral port
/// allocation skips a bound port, and a connect to it is refused.
fn reserve_port(port: u16) -> Option<tokio::net::TcpSocket> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    // Redis' own listener used SO_REUSEADDR; ours must be allowed next to its TIME_WAITs.
    socket.set_reuseaddr(true).ok()?;
    socket
        .bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .ok()?;
    Some(socket)
}

/// Sends one command over a fresh connection and reads one reply.
pub(crate) fn send_command(port: u16, args: &[&str]) -> std::io::Result<Reply> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(&encode_command(args))?;
    let mut reader = BufReader::new(stream);
    read_reply(&mut reader)
}

/// Encodes a command as a RESP array of bulk strings.
fn encode_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn read_reply(reader: &mut impl BufRead) -> std::io::Result<Reply> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at(line.len().min(1));
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    match kind {
        "+" => Ok(Reply::Status(rest.to_string())),
        "-" => Ok(Reply::Error(rest.to_string())),
        ":" => rest.parse().map(Reply::Integer).map_err(|_| bad("integer")),
        "$" => {
            let len: i64 = rest.parse().map_err(|_| bad("bulk length"))?;
            if len < 0 {
                return Ok(Reply::Bulk(None));
            }
            let len = usize::try_from(len).map_err(|_| bad("bulk length"))?;
            let mut buf = vec![0; len + 2];
            reader.read_exact(&mut buf)?;
            buf.truncate(len);
            Ok(Reply::Bulk(Some(
                String::from_utf8_lossy(&buf).into_owned(),
            )))
        }
        "*" => {
            let len: i64 = rest.parse().map_err(|_| bad("array length"))?;
            let mut items = Vec::new();
            for _ in 0..len.max(0) {
                items.push(read_reply(reader)?);
            }
            Ok(Reply::Array(items))
        }
        _ => Err(bad("unknown RESP type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands_as_resp_arrays() {
        assert_eq!(
            encode_command(&["CLIENT", "KILL"]),
            b"*2\r\n$6\r\nCLIENT\r\n$4\r\nKILL\r\n".to_vec()
        );
    }

    #[test]
    fn parses_nested_replies() {
        let mut input: &[u8] = b"*3\r\n$3\r\nabc\r\n:7\r\n$-1\r\n";
        assert_eq!(
            read_reply(&mut input).ok(),
            Some(Reply::Array(vec![
                Reply::Bulk(Some("abc".into())),
                Reply::Integer(7),
                Reply::Bulk(None),
            ]))
        );
    }

    #[test]
    fn starts_answers_and_restarts_empty_on_the_same_port() {
        let mut redis = RedisProcess::start();
        assert_ne!(redis.port(), 6379);
        assert_eq!(
            redis.command(&["SET", "k", "v"]),
            Reply::Status("OK".into())
        );
        assert_eq!(redis.keys("*"), vec!["k".to_string()]);
        let port = redis.port();
        redis.restart_same_port();
        assert_eq!(redis.port(), port);
        assert_eq!(redis.keys("*"), Vec::<String>::new());
        assert_eq!(redis.client_kill_pubsub(), 0);
    }
}
