//! A raw-socket WebSocket client for attack tests: it does the upgrade by hand and then writes
//! frames built byte by byte (bad opcodes, reserved bits, unmasked, invalid UTF-8, floods), and
//! reads the server's frames without answering anything by itself, so a test decides whether it
//! reads at all. No WebSocket library sits in between to fix up or refuse what it sends.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use serde_json::Value;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// Opcodes (RFC 6455 §5.2).
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// The masking key every masked frame uses; a fixed key keeps failures reproducible.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Largest server frame payload the reader accepts (the server never sends more than a message).
const MAX_READ_PAYLOAD: usize = 16 << 20;

/// One frame to write. Built with [`RawFrame::new`] and adjusted field by field.
#[derive(Debug, Clone)]
pub struct RawFrame {
    pub fin: bool,
    /// RSV1..RSV3 as the low three bits (`0b100` = RSV1).
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// A final, masked frame with no reserved bits: what a correct client sends.
    pub fn new(opcode: u8, payload: impl Into<Vec<u8>>) -> Self {
        RawFrame {
            fin: true,
            rsv: 0,
            opcode,
            masked: true,
            payload: payload.into(),
        }
    }

    /// A text frame with `text`.
    pub fn text(text: &str) -> Self {
        Self::new(opcode::TEXT, text.as_bytes())
    }

    /// The wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload.len() + 14);
        out.push((u8::from(self.fin) << 7) | ((self.rsv & 0b111) << 4) | (self.opcode & 0x0f));
        let mask_bit = u8::from(self.masked) << 7;
        let len = self.payload.len();
        if len < 126 {
            out.push(mask_bit | len as u8);
        } else if let Ok(len16) = u16::try_from(len) {
            out.push(mask_bit | 126);
            out.extend_from_slice(&len16.to_be_bytes());
        } else {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        if self.masked {
            out.extend_from_slice(&MASK);
            out.extend(
                self.payload
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ MASK[i % 4]),
            );
        } else {
            out.extend_from_slice(&self.payload);
        }
        out
    }
}

/// The payload of a close frame: code and reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    payload
}

/// What one read from the server produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// A text frame (always sent whole by the server).
    Text(String),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// Another data frame: opcode and payload.
    Other(u8, Vec<u8>),
    /// A close frame: code and reason, `None` for an empty close.
    Close(Option<(u16, String)>),
    /// The server closed TCP cleanly (FIN) with nothing more to read.
    Eof,
    /// The connection was reset (RST) or failed otherwise: what a client library reports as
    /// 1006 "abnormal closure".
    Reset(String),
    /// Nothing within the timeout.
    Timeout,
}

/// One raw connection after a successful upgrade.
#[derive(Debug)]
pub struct RawClient {
    stream: TcpStream,
    /// Bytes read but not yet parsed into frames.
    buf: Vec<u8>,
}

impl RawClient {
    /// Upgrades `path` on `addr` by hand. `recv_buffer` sets SO_RCVBUF before connecting: a small
    /// value keeps the kernel from absorbing megabytes for a client that never reads. Panics if
    /// the server does not answer 101 with the right `Sec-WebSocket-Accept` within 5 s.
    pub async fn connect(addr: SocketAddr, path: &str, recv_buffer: Option<u32>) -> RawClient {
        let socket = TcpSocket::new_v4().expect("tcp socket");
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        let mut stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        let key =
            base64::engine::general_purpose::STANDARD.encode(crate::client::nonce().to_be_bytes());
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write upgrade request");
        let mut buf = Vec::new();
        let head_end = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    return end + 4;
                }
                let mut chunk = [0u8; 4096];
                let n = stream
                    .read(&mut chunk)
                    .await
                    .expect("read upgrade response");
                assert!(
                    n > 0,
                    "server closed during the upgrade: {:?}",
                    String::from_utf8_lossy(&buf)
                );
                buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .expect("no upgrade response within 5 s");
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "upgrade of {path} refused: {head}"
        );
        let accept = base64::engine::general_purpose::STANDARD.encode(Sha1::digest(
            format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
        ));
        assert!(
            head.lines().any(|l| {
                l.split_once(':').is_some_and(|(name, value)| {
                    name.eq_ignore_ascii_case("sec-websocket-accept") && value.trim() == accept
                })
            }),
            "wrong or missing Sec-WebSocket-Accept: {head}"
        );
        buf.drain(..head_end);
        RawClient { stream, buf }
    }

    /// Writes `frame`.
    pub async fn send(&mut self, frame: &RawFrame) -> io::Result<()> {
        self.stream.write_all(&frame.encode()).await
    }

    /// Writes raw bytes (several frames at once, or a deliberately broken one).
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Writes `bytes` unless that blocks longer than `stall`; returns whether all of it went out.
    /// A flood stops when the server stops reading or drops the connection.
    pub async fn send_bytes_within(&mut self, bytes: &[u8], stall: Duration) -> bool {
        matches!(
            tokio::time::timeout(stall, self.stream.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    /// Answers the server's close (masked, echoing `code`).
    pub async fn reply_close(&mut self, code: u16) -> io::Result<()> {
        self.send(&RawFrame::new(opcode::CLOSE, close_payload(code, "")))
            .await
    }

    /// The next frame from the server within `timeout`; pings and pongs are returned too and
    /// never answered.
    pub async fn next(&mut self, timeout: Duration) -> ServerEvent {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = self.parse_one() {
                return event;
            }
            let mut chunk = [0u8; 64 * 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return ServerEvent::Timeout,
                Ok(Ok(0)) if self.buf.is_empty() => return ServerEvent::Eof,
                Ok(Ok(0)) => {
                    return ServerEvent::Reset(format!(
                        "EOF inside a frame ({} bytes pending)",
                        self.buf.len()
                    ))
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return ServerEvent::Reset(e.to_string()),
            }
        }
    }

    /// Reads until the close frame within `timeout` (pings and pongs skipped). Returns the
    /// JSON text messages before it and the close; panics on anything else (a reset, EOF or
    /// timeout is exactly what these tests exist to catch).
    pub async fn collect_until_close(
        &mut self,
        timeout: Duration,
    ) -> (Vec<Value>, Option<(u16, String)>) {
        let deadline = Instant::now() + timeout;
        let mut messages = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                ServerEvent::Ping(_) | ServerEvent::Pong(_) => {}
                ServerEvent::Text(text) => messages.push(
                    serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("server sent non-JSON text {text:?}: {e}")),
                ),
                ServerEvent::Close(close) => return (messages, close),
                other => panic!(
                    "expected a close frame, got {other:?} after {} messages (last: {:?})",
                    messages.len(),
                    messages.last()
                ),
            }
        }
    }

    /// After the close exchange: the server must end TCP with a FIN (read returns 0) within
    /// `timeout`, not reset it, and send nothing more. `what` names the case in the failure.
    pub async fn expect_eof(&mut self, timeout: Duration, what: &str) {
        let event = self.next(timeout).await;
        assert_eq!(event, ServerEvent::Eof, "{what}: after the close handshake");
    }

    /// The server ends the connection within `timeout`: a FIN or a reset, with nothing but
    /// pings and pongs before it. `what` names the case in the failure.
    pub async fn expect_end(&mut self, timeout: Duration, what: &str) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                ServerEvent::Eof | ServerEvent::Reset(_) => return,
                ServerEvent::Ping(_) | ServerEvent::Pong(_) => {}
                other => panic!("{what}: expected the connection to end, got {other:?}"),
            }
        }
    }

    /// Parses one complete frame from the buffer, if there is one.
    fn parse_one(&mut self) -> Option<ServerEvent> {
        let buf = &self.buf;
        if buf.len() < 2 {
            return None;
        }
        let op = buf[0] & 0x0f;
        let masked = buf[1] & 0x80 != 0;
        let (len, mut at) = match buf[1] & 0x7f {
            126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
            127 if buf.len() >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                (
                    usize::try_from(u64::from_be_bytes(b)).unwrap_or(usize::MAX),
                    10,
                )
            }
            126 | 127 => return None,
            n => (usize::from(n), 2),
        };
        assert!(
            !masked,
            "the server sent a masked frame (RFC 6455 §5.1 forbids it)"
        );
        assert!(len <= MAX_READ_PAYLOAD, "server frame of {len} bytes");
        if buf.len() < at + len {
            return None;
        }
        let payload = buf[at..at + len].to_vec();
        at += len;
        self.buf.drain(..at);
        Some(match op {
            opcode::TEXT => ServerEvent::Text(
                String::from_utf8(payload)
                    .unwrap_or_else(|e| panic!("server text is not UTF-8: {e}")),
            ),
            opcode::PING => ServerEvent::Ping(payload),
            opcode::PONG => ServerEvent::Pong(payload),
            opcode::CLOSE if payload.len() >= 2 => ServerEvent::Close(Some((
                u16::from_be_bytes([payload[0], payload[1]]),
                String::from_utf8_lossy(&payload[2..]).into_owned(),
            ))),
            opcode::CLOSE => ServerEvent::Close(None),
            other => ServerEvent::Other(other, payload),
        })
    }
}

/// `VmRSS` and `VmHWM` (peak) of process `pid` in KiB, from `/proc/<pid>/status`.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}
