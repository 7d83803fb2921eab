//! One participant's connection: a server URL, the WebSocket upgrade with
//! the token, waiting for `room-state`, and why a join failed (as a short
//! label the report counts).

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use url::Url;

use crate::wire::{self, Dialect, Event};

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
pub type Sink = SplitSink<Socket, Message>;
pub type Stream = SplitStream<Socket>;

/// A server to load: `http://host:port` (or `ws://`) for Switchboard,
/// `peerjs://host:port` for a PeerJS server (key `peerjs`, path `/`).
#[derive(Debug, Clone)]
pub struct Target {
    pub url: Url,
    pub dialect: Dialect,
}

impl Target {
    pub fn parse(text: &str) -> anyhow::Result<Target> {
        let url = Url::parse(text).with_context(|| format!("--url {text:?} is not a URL"))?;
        let dialect = match url.scheme() {
            "peerjs" => Dialect::PeerJs,
            _ => Dialect::Switchboard,
        };
        match url.scheme() {
            "http" | "ws" | "peerjs" => {}
            "https" | "wss" => bail!(
                "--url {text}: TLS is not supported by the load generator; point it at the pods' or the Service's plain port"
            ),
            other => bail!("--url {text}: scheme {other:?}, expected http://, ws:// or peerjs://"),
        }
        if url.host_str().is_none() || url.port_or_known_default().is_none() {
            bail!("--url {text}: no host and port");
        }
        Ok(Target { url, dialect })
    }

    fn authority(&self) -> String {
        let host = self.url.host_str().unwrap_or("127.0.0.1");
        match self.url.port_or_known_default() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        }
    }

    /// The base URL without trailing slash, as the report names it.
    pub fn label(&self) -> String {
        match self.dialect {
            Dialect::Switchboard => format!("http://{}", self.authority()),
            Dialect::PeerJs => format!("peerjs://{}", self.authority()),
        }
    }

    /// The upgrade URL; PeerJS has no rooms and no JWT: the participant
    /// picks its id (`user`) and a random token.
    pub fn ws_url(&self, room: &str, token: &str, user: &str) -> String {
        match self.dialect {
            Dialect::Switchboard => {
                format!("ws://{}/webrtc/ws/{room}?token={token}", self.authority())
            }
            Dialect::PeerJs => format!(
                "ws://{}/peerjs?key=peerjs&id={room}-{user}&token={:08x}",
                self.authority(),
                rand::random::<u32>()
            ),
        }
    }

    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.authority())
    }

    pub fn port(&self) -> Option<u16> {
        self.url.port_or_known_default()
    }

    /// Whether the server runs on this machine (so `/proc` can be read).
    pub fn is_loopback(&self) -> bool {
        match self.url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            // peerjs:// is not a special scheme: its host stays a string.
            Some(url::Host::Domain(d)) => {
                d == "localhost"
                    || d.parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            None => false,
        }
    }
}

/// A joined participant.
pub struct Participant {
    pub id: String,
    /// Participants already in the room when we joined.
    pub others: Vec<String>,
    pub sink: Sink,
    pub stream: Stream,
    /// From the TCP connect to `room-state`.
    pub join_time: Duration,
}

/// Why a join failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinFailure {
    Connect(String),
    Http(u16),
    Closed { code: u16, reason: String },
    Timeout,
    Protocol,
}

impl JoinFailure {
    /// Short label counted in the report (`http_403`, `close_1013_room_full`, ...).
    pub fn label(&self) -> String {
        match self {
            JoinFailure::Connect(kind) => format!("connect_{kind}"),
            JoinFailure::Http(status) => format!("http_{status}"),
            JoinFailure::Closed { code, reason } if reason.is_empty() => format!("close_{code}"),
            JoinFailure::Closed { code, reason } => format!("close_{code}_{reason}"),
            JoinFailure::Timeout => "timeout".to_string(),
            JoinFailure::Protocol => "protocol_error".to_string(),
        }
    }
}

fn io_kind(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "refused".into(),
        std::io::ErrorKind::ConnectionReset => "reset".into(),
        std::io::ErrorKind::AddrNotAvailable => "no_local_port".into(),
        std::io::ErrorKind::TimedOut => "timed_out".into(),
        _ if e.raw_os_error() == Some(24) => "too_many_open_files".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Connects, upgrades and waits for `room-state`, bounded by `timeout`.
pub async fn join(
    target: &Target,
    room: &str,
    user: &str,
    token: &str,
    config: WebSocketConfig,
    timeout: Duration,
) -> Result<Participant, JoinFailure> {
    let started = Instant::now();
    let url = target.ws_url(room, token, user);
    let attempt = async {
        let (socket, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
            .await
            .map_err(|e| match e {
                WsError::Io(io) => JoinFailure::Connect(io_kind(&io)),
                WsError::Http(resp) => JoinFailure::Http(resp.status().as_u16()),
                _ => JoinFailure::Protocol,
            })?;
        let (sink, mut stream) = socket.split();
        loop {
            match stream.next().await {
                Some(Ok(Message::Text(text))) => match wire::classify(&text) {
                    Ok(Event::RoomState { self_id, others }) => {
                        return Ok(Participant {
                            id: self_id,
                            others,
                            sink,
                            stream,
                            join_time: started.elapsed(),
                        })
                    }
                    Ok(Event::Open) => {
                        return Ok(Participant {
                            id: format!("{room}-{user}"),
                            others: Vec::new(),
                            sink,
                            stream,
                            join_time: started.elapsed(),
                        })
                    }
                    Ok(Event::Error { code }) => {
                        return Err(JoinFailure::Closed {
                            code: 1008,
                            reason: code,
                        })
                    }
                    _ => return Err(JoinFailure::Protocol),
                },
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    return Err(JoinFailure::Closed { code, reason });
                }
                Some(Ok(_)) => continue,
                Some(Err(WsError::Io(io))) => return Err(JoinFailure::Connect(io_kind(&io))),
                Some(Err(_)) => return Err(JoinFailure::Protocol),
                None => {
                    return Err(JoinFailure::Closed {
                        code: 1006,
                        reason: String::new(),
                    })
                }
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(JoinFailure::Timeout),
    }
}

/// The client-side socket settings: small buffers, so that ten thousand
/// participants in one load generator stay affordable.
pub fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(16 * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_map_to_ws_and_metrics_urls() {
        let t = Target::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(
            t.ws_url("r-1", "abc", "u"),
            "ws://127.0.0.1:8080/webrtc/ws/r-1?token=abc"
        );
        assert_eq!(t.metrics_url(), "http://127.0.0.1:8080/metrics");
        assert_eq!(t.label(), "http://127.0.0.1:8080");
        assert!(t.is_loopback());
        let w = Target::parse("ws://signal.example:9000").unwrap();
        assert!(!w.is_loopback());
        assert_eq!(w.port(), Some(9000));
        let p = Target::parse("peerjs://127.0.0.1:9000").unwrap();
        assert_eq!(p.dialect, Dialect::PeerJs);
        assert_eq!(p.label(), "peerjs://127.0.0.1:9000");
        assert!(p.is_loopback());
        assert!(p
            .ws_url("r", "t", "u")
            .starts_with("ws://127.0.0.1:9000/peerjs?key=peerjs&id=r-u&token="));
        assert!(Target::parse("https://x").is_err());
        assert!(Target::parse("ftp://x").is_err());
        assert!(Target::parse("nonsense").is_err());
    }

    #[test]
    fn failure_labels() {
        assert_eq!(JoinFailure::Http(403).label(), "http_403");
        assert_eq!(
            JoinFailure::Closed {
                code: 1013,
                reason: "room_full".into()
            }
            .label(),
            "close_1013_room_full"
        );
        assert_eq!(
            JoinFailure::Closed {
                code: 1006,
                reason: String::new()
            }
            .label(),
            "close_1006"
        );
        assert_eq!(
            JoinFailure::Connect("refused".into()).label(),
            "connect_refused"
        );
    }
}
