//! Accepting and bounding connections: the accept loop (hyper's HTTP/1
//! server per connection, with upgrades for WebSockets), a read timeout and
//! a size bound on every request head, and caps on open connections overall
//! and per client address — behind a trusted proxy, the address it forwards.
//! The admission decisions are plain functions ([`decide`],
//! [`client_address`], [`bucket`]); the loop is the I/O around them. Routing
//! and handlers are `http`'s.
//!
//! A connection over a cap is still read (with a short head timeout, no
//! keep-alive) so the client learns why: 503 `server_busy` or 429
//! `too_many_connections` with a JSON body and `Retry-After`, while the
//! health endpoints are answered normally. Only beyond a small reserve of
//! such refusals are new sockets closed at once.
//!
//! A permit is held by the connection's socket object itself, so an upgraded
//! WebSocket (which takes the socket over from hyper) counts against the caps
//! until it is closed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use axum::response::IntoResponse as _;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::config::ConnectionsConfig;
use crate::http::ApiError;
use crate::metrics::Metrics;
use crate::request_body::{self, BodyLimits};

/// Paths answered even on a refused connection: probes must see a busy
/// replica as alive (and ready, if it is), not as dead.
const HEALTH_PATHS: &[&str] = &[
    "/webrtc/health",
    "/webrtc/health/live",
    "/webrtc/health/ready",
];

/// `Retry-After` on a refusal, seconds.
pub const RETRY_AFTER_SECS: u64 = 5;

/// Refused connections answered per client address on top of its cap;
/// more are closed without an answer.
pub const REFUSALS_PER_ADDRESS: usize = 8;

/// A refused connection gets at most this long to send its request head.
const REFUSED_HEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// File descriptors kept free for everything that is not a client
/// connection (the listener, Redis, files, the runtime).
const FD_HEADROOM: u64 = 64;

/// How long `accept` pauses after an error that is not the peer's (such as
/// running out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(250);

/// At most one "limit reached" log line per this interval.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Refused connections answered overall on top of `max`: a tenth of it, at
/// least 16.
pub fn refusal_reserve(max: usize) -> usize {
    (max / 10).max(16)
}

/// The per-address counting unit: IPv4 addresses as they are (IPv4-mapped
/// IPv6 included), IPv6 addresses by their /64 prefix — one host usually
/// owns a whole /64, so counting single addresses would not limit it.
pub fn bucket(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`, what a dual-stack listener reports)
/// as plain IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies(nets)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// One `trusted_proxies` entry: a CIDR (`10.0.0.0/8`) or a single address.
pub fn parse_trusted_proxy(entry: &str) -> Result<IpNet, String> {
    let entry = entry.trim();
    entry
        .parse::<IpNet>()
        .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| {
            format!("expected an address or CIDR like 10.0.0.0/8 or 192.0.2.7, got {entry:?}")
        })
}

/// One `X-Forwarded-For` entry: an address, optionally with a port
/// (`192.0.2.7:5000`, `[2001:db8::1]:443`) or in brackets.
fn parse_forwarded_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .and_then(|e| e.parse().ok())
        })
        .map(canonical)
}

/// The address a request is counted against. A peer that is not a trusted
/// proxy is the client, whatever headers it sends. Behind trusted proxies,
/// `X-Forwarded-For` is read from the right (each proxy appends the address
/// it received from): the first address that is not itself a trusted proxy
/// is the client; an entry that is not an address ends the walk at the last
/// trusted hop.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let peer = canonical(peer);
    if !trusted.contains(peer) {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    let mut client = peer;
    for entry in entries.iter().rev() {
        let Some(ip) = parse_forwarded_entry(entry) else {
            break;
        };
        client = ip;
        if !trusted.contains(ip) {
            break;
        }
    }
    client
}

/// The caps in force (after fitting `max` to the file-descriptor limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub max: usize,
    pub max_per_ip: usize,
}

/// Why a connection or request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The whole server is at `max` connections: 503 `server_busy`.
    ServerBusy,
    /// This client address is at `max_per_ip`: 429 `too_many_connections`.
    TooManyFromAddress,
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Refusal::ServerBusy => "server_busy",
            Refusal::TooManyFromAddress => "too_many_connections",
        }
    }

    /// The HTTP answer: JSON error body, `Retry-After`, and the connection
    /// is closed after it.
    pub fn response(self) -> Response<Body> {
        let error = match self {
            Refusal::ServerBusy => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: self.code(),
                message: "this server has too many open connections; retry later or connect to another one",
            },
            Refusal::TooManyFromAddress => ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                code: self.code(),
                message: "too many open connections from your address; close some and retry",
            },
        };
        let mut response = error.into_response();
        let headers = response.headers_mut();
        headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    }
}

/// What happens to a new socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admit,
    /// Read its request and answer with the refusal (health paths excepted).
    Refuse(Refusal),
    /// Close at once: even the refusal reserve is used up.
    Close,
}

/// The decision for a new socket, given the sockets open now (`total`, and
/// `from_address` from its address, both counting refused ones still being
/// answered). `from_address` is `None` for a trusted proxy, whose own
/// sockets only count in the total.
pub fn decide(total: usize, from_address: Option<usize>, caps: Caps) -> Verdict {
    let from = from_address.unwrap_or(0);
    if total >= caps.max + refusal_reserve(caps.max)
        || (from_address.is_some() && from >= caps.max_per_ip + REFUSALS_PER_ADDRESS)
    {
        Verdict::Close
    } else if total >= caps.max {
        Verdict::Refuse(Refusal::ServerBusy)
    } else if from_address.is_some() && from >= caps.max_per_ip {
        Verdict::Refuse(Refusal::TooManyFromAddress)
    } else {
        Verdict::Admit
    }
}

/// The largest `max` that leaves room, within `fd_limit` descriptors, for its
/// refusal reserve and [`FD_HEADROOM`]; at least 1.
pub fn fit_to_fd_limit(max: usize, fd_limit: u64) -> usize {
    let budget = usize::try_from(fd_limit.saturating_sub(FD_HEADROOM)).unwrap_or(usize::MAX);
    if max.saturating_add(refusal_reserve(max)) <= budget {
        return max;
    }
    // m + max(m/10, 16) <= budget: start near the closed form, then step
    // to the largest m that fits (integer division makes it off by a few).
    let fits = |m: usize| m + refusal_reserve(m) <= budget;
    let mut m = (budget.saturating_mul(10) / 11).clamp(1, max);
    while m < max && fits(m + 1) {
        m += 1;
    }
    while m > 1 && !fits(m) {
        m -= 1;
    }
    m
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

impl Counts {
    fn open_from(&self, bucket: IpAddr) -> usize {
        self.per_address.get(&bucket).copied().unwrap_or(0)
    }

    fn release(&mut self, total: bool, bucket: Option<IpAddr>) {
        if total {
            self.total = self.total.saturating_sub(1);
        }
        if let Some(b) = bucket {
            if let Some(n) = self.per_address.get_mut(&b) {
                *n -= 1;
                if *n == 0 {
                    self.per_address.remove(&b);
                }
            }
        }
    }
}

/// Open connections, overall and by client address; shared by the accept
/// loop and every connection's permits.
#[derive(Debug)]
pub struct Admission {
    caps: Caps,
    trusted: TrustedProxies,
    counts: Mutex<Counts>,
}

/// One counted connection (or forwarded client); releases its count when
/// dropped.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    total: bool,
    bucket: Option<IpAddr>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.lock().release(self.total, self.bucket);
    }
}

impl Admission {
    pub fn new(caps: Caps, trusted: TrustedProxies) -> Arc<Self> {
        Arc::new(Admission {
            caps,
            trusted,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// Open sockets now, overall (refused ones being answered included).
    pub fn open(&self) -> usize {
        self.lock().total
    }

    /// Counts a new socket from `peer`; `Close` takes no permit.
    pub fn admit_socket(self: &Arc<Self>, peer: IpAddr) -> (Verdict, Option<Permit>) {
        let proxy = self.trusted.contains(peer);
        let b = bucket(peer);
        let mut counts = self.lock();
        let from = (!proxy).then(|| counts.open_from(b));
        let verdict = decide(counts.total, from, self.caps);
        if verdict == Verdict::Close {
            return (verdict, None);
        }
        counts.total += 1;
        let counted = (!proxy).then_some(b);
        if let Some(b) = counted {
            *counts.per_address.entry(b).or_insert(0) += 1;
        }
        let permit = Permit {
            admission: self.clone(),
            total: true,
            bucket: counted,
        };
        (verdict, Some(permit))
    }

    /// Counts one request that a trusted proxy forwarded for `client`
    /// against that client's cap (its socket already counts in the total).
    pub fn admit_forwarded(self: &Arc<Self>, client: IpAddr) -> Result<Permit, Refusal> {
        let b = bucket(client);
        let mut counts = self.lock();
        if counts.open_from(b) >= self.caps.max_per_ip {
            return Err(Refusal::TooManyFromAddress);
        }
        *counts.per_address.entry(b).or_insert(0) += 1;
        Ok(Permit {
            admission: self.clone(),
            total: false,
            bucket: Some(b),
        })
    }
}

/// The accept loop's settings, from [`ConnectionsConfig`] with `max` fitted
/// to the file-descriptor limit.
#[derive(Debug, Clone)]
pub struct Settings {
    pub caps: Caps,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub body_limits: BodyLimits,
    pub trusted_proxies: TrustedProxies,
}

impl Settings {
    /// Reads the file-descriptor limit (raising the soft limit towards the
    /// hard one when `max` needs it) and lowers `max` to fit, with a warning.
    /// Request bodies are bounded at `max_body_bytes`.
    pub fn from_config(cfg: &ConnectionsConfig, max_body_bytes: usize) -> Settings {
        let mut max = cfg.max;
        if let Some(fd_limit) = fd_limit_for(max + refusal_reserve(max) + FD_HEADROOM as usize) {
            let fitted = fit_to_fd_limit(max, fd_limit);
            if fitted < max {
                tracing::warn!(
                    configured = max,
                    effective = fitted,
                    fd_limit,
                    "connections.max lowered to fit the open-file limit (raise it with `ulimit -n`)"
                );
                max = fitted;
            }
        }
        Settings {
            caps: Caps {
                max,
                max_per_ip: cfg.max_per_ip,
            },
            header_read_timeout: cfg.header_read_timeout,
            max_header_bytes: cfg.max_header_bytes,
            body_limits: BodyLimits {
                max_bytes: max_body_bytes,
                read_timeout: cfg.body_read_timeout,
            },
            trusted_proxies: cfg.trusted_proxies.clone(),
        }
    }
}

/// The soft RLIMIT_NOFILE after trying to raise it to `want` (never above
/// the hard limit); `None` where it cannot be read.
#[cfg(unix)]
fn fd_limit_for(want: usize) -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    let want = want as u64;
    if soft < want && hard > soft {
        let raised = want.min(hard);
        if setrlimit(Resource::RLIMIT_NOFILE, raised, hard).is_ok() {
            return Some(raised);
        }
    }
    Some(soft)
}

#[cfg(not(unix))]
fn fd_limit_for(_want: usize) -> Option<u64> {
    None
}

/// The socket as hyper (and, after an upgrade, the WebSocket) sees it. It
/// owns the connection's permits, so they live exactly as long as the
/// socket does.
struct CountedStream {
    stream: TcpStream,
    _socket: Permit,
    _forwarded: Arc<Mutex<Option<Permit>>>,
}

impl AsyncRead for CountedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Per-connection request handling: refusals, forwarded-client counting,
/// the request body read within its bounds, then the router.
struct ConnService {
    app: Router,
    peer: IpAddr,
    refused: Option<Refusal>,
    admission: Arc<Admission>,
    metrics: Arc<Metrics>,
    throttle: Arc<LogThrottle>,
    body_limits: BodyLimits,
    /// The forwarded client's permit for the request in flight; shared
    /// with [`CountedStream`] so a WebSocket keeps it after the upgrade.
    forwarded: Arc<Mutex<Option<Permit>>>,
}

fn is_health(path: &str) -> bool {
    HEALTH_PATHS.contains(&path)
}

impl ConnService {
    fn refuse(&self, refusal: Refusal, client: IpAddr) -> Response<Body> {
        self.metrics.refused(refusal.code());
        self.throttle.log(refusal, client, &self.admission);
        refusal.response()
    }
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let health = is_health(req.uri().path());
        if let Some(refusal) = self.refused.filter(|_| !health) {
            let response = self.refuse(refusal, self.peer);
            return Box::pin(async move { Ok(response) });
        }
        let mut permit = None;
        if !health && self.admission.trusted.contains(self.peer) {
            let client = client_address(self.peer, req.headers(), &self.admission.trusted);
            match self.admission.admit_forwarded(client) {
                Ok(p) => permit = Some(p),
                Err(refusal) => {
                    let response = self.refuse(refusal, client);
                    return Box::pin(async move { Ok(response) });
                }
            }
        }
        let mut app = self.app.clone();
        let forwarded = self.forwarded.clone();
        let body_limits = self.body_limits;
        Box::pin(async move {
            let req = match request_body::read_whole(req, body_limits).await {
                Ok(req) => req,
                Err(refusal) => {
                    tracing::debug!(code = refusal.code(), "request body refused");
                    return Ok(refusal.response());
                }
            };
            let response = tower_service::Service::call(&mut app, req).await?;
            // An upgraded WebSocket counts for as long as it lives (the
            // socket holds this slot); a plain request only while it runs.
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                *lock(&forwarded) = permit;
            }
            Ok(response)
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Limits "refused" log lines to one per [`REFUSAL_LOG_INTERVAL`]: a flood
/// must not become a log flood.
#[derive(Debug, Default)]
struct LogThrottle {
    last: Mutex<Option<Instant>>,
    suppressed: Mutex<u64>,
}

impl LogThrottle {
    fn log(&self, refusal: Refusal, client: IpAddr, admission: &Admission) {
        let mut last = lock(&self.last);
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_INTERVAL) {
            *lock(&self.suppressed) += 1;
            return;
        }
        *last = Some(now);
        let suppressed = std::mem::take(&mut *lock(&self.suppressed));
        let caps = admission.caps();
        tracing::warn!(
            code = refusal.code(),
            client = %client,
            open = admission.open(),
            max = caps.max,
            max_per_ip = caps.max_per_ip,
            suppressed,
            "connection refused: limit reached"
        );
    }
}

/// Errors that concern one peer only; the loop just goes on.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Accepts and serves connections until `stop` completes; then stops
/// accepting, lets every open HTTP connection finish its request
/// (hyper's graceful shutdown) and returns when they are all closed.
/// Upgraded WebSockets are not waited for here: the drain closes them.
pub async fn run(
    listener: TcpListener,
    app: Router,
    settings: Settings,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let admission = Admission::new(settings.caps, settings.trusted_proxies.clone());
    let throttle = Arc::new(LogThrottle::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection task holds a clone; `recv` yields `None` once all
    // are gone.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let mut stop = std::pin::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let (verdict, permit) = admission.admit_socket(peer.ip());
        let Some(permit) = permit else {
            metrics.refused("connection_closed_over_limit");
            drop(stream);
            continue;
        };
        let refused = match verdict {
            Verdict::Refuse(r) => Some(r),
            _ => None,
        };
        let forwarded = Arc::new(Mutex::new(None));
        let service = ConnService {
            app: app.clone(),
            peer: peer.ip(),
            refused,
            admission: admission.clone(),
            metrics: metrics.clone(),
            throttle: throttle.clone(),
            body_limits: settings.body_limits,
            forwarded: forwarded.clone(),
        };
        let io = TokioIo::new(CountedStream {
            stream,
            _socket: permit,
            _forwarded: forwarded,
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .max_header_size(settings.max_header_bytes)
            // hyper's floor for its read buffer is 8 KiB.
            .max_buf_size(settings.max_header_bytes.max(8192))
            .header_read_timeout(if refused.is_some() {
                settings.header_read_timeout.min(REFUSED_HEAD_TIMEOUT)
            } else {
                settings.header_read_timeout
            })
            // A refused connection answers one request, then closes.
            .keep_alive(refused.is_none());
        let mut stop_rx = stop_rx.clone();
        let done = done_tx.clone();
        tokio::spawn(async move {
            let conn = builder.serve_connection(io, service).with_upgrades();
            let mut conn = std::pin::pin!(conn);
            let mut stopping = false;
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            // Timeouts, oversize heads and resets: the peer's doing.
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    changed = stop_rx.wait_for(|s| *s), if !stopping => {
                        stopping = true;
                        if changed.is_ok() {
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
            drop(done);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(done_tx);
    let _ = done_rx.recv().await;
    Ok(())
}

#[cfg(test)]
#[path = "listener_tests.rs"]
mod tests;
