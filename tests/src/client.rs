//! WebSocket test client for the signaling endpoint (tokio-tungstenite): connect with the token
//! in the query or the subprotocol header, read JSON with timeouts, assert close frames.
//! Pings are answered by tungstenite only while the client is being read; a client that is not
//! read answers nothing (that is how the keep-alive and slow-reader tests misbehave).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{client_async, WebSocketStream};

use crate::token::Claims;

/// Default bound for one expected message.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// The WebSocket stream type every helper uses.
pub type WsStream = WebSocketStream<TcpStream>;

/// `/webrtc/ws/<room>?token=<token>`.
pub fn ws_path(room: &str, token: &str) -> String {
    format!("/webrtc/ws/{room}?token={token}")
}

/// `/webrtc/ws/<room>?token=<token>&resume=<resume_token>&last_seq=<last_seq>`.
pub fn resume_path(room: &str, token: &str, resume_token: &str, last_seq: u64) -> String {
    format!("/webrtc/ws/{room}?token={token}&resume={resume_token}&last_seq={last_seq}")
}

/// One thing read from the socket (pings and pongs are skipped).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A text frame holding JSON.
    Json(Value),
    /// A text frame that is not JSON.
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
    /// A close frame: code and reason (None: close without a frame body).
    Close(Option<(u16, String)>),
    /// The stream ended without a close frame.
    Eof,
    /// A read error (reset, protocol error).
    Error(String),
    /// Nothing within the timeout.
    Timeout,
}

/// How to open the connection.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Extra request headers (Origin, Sec-WebSocket-Protocol, ...).
    pub headers: Vec<(String, String)>,
    /// SO_RCVBUF for the client socket; a small value keeps the kernel from buffering megabytes
    /// for a client that does not read (autotuning is off once it is set).
    pub recv_buffer: Option<u32>,
    /// TCP_MAXSEG for the client socket. The server sizes its send buffer for a connection
    /// from the segment size (about 2.6 MB with loopback's 64 KiB segments), so a small value
    /// keeps the server's kernel from absorbing megabytes for a client that does not read.
    pub max_segment: Option<u32>,
    /// Source address to connect from (a `127.0.0.x` of its own); default: the kernel's choice.
    pub source: Option<std::net::IpAddr>,
}

impl ConnectOptions {
    /// Adds a request header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// Opens a WebSocket to `path` (path and query). Returns the handshake error as is, so tests
/// can assert an HTTP refusal (`WsError::Http(response)`).
pub async fn open(
    addr: SocketAddr,
    path: &str,
    options: &ConnectOptions,
) -> Result<(WsStream, Response), WsError> {
    let mut request = format!("ws://{addr}{path}").into_client_request()?;
    for (name, value) in &options.headers {
        let name: tokio_tungstenite::tungstenite::http::HeaderName =
            name.parse().expect("valid header name");
        let value = HeaderValue::from_str(value).expect("valid header value");
        request.headers_mut().append(name, value);
    }
    let socket = TcpSocket::new_v4().map_err(WsError::Io)?;
    if let Some(size) = options.recv_buffer {
        socket.set_recv_buffer_size(size).map_err(WsError::Io)?;
    }
    if let Some(mss) = options.max_segment {
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::TcpMaxSeg, &mss)
            .map_err(|e| WsError::Io(e.into()))?;
    }
    if let Some(source) = options.source {
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(WsError::Io)?;
    }
    let stream = socket.connect(addr).await.map_err(WsError::Io)?;
    stream.set_nodelay(true).map_err(WsError::Io)?;
    tokio::time::timeout(RECV_TIMEOUT, client_async(request, stream))
        .await
        .unwrap_or_else(|_| panic!("WebSocket handshake to {path} timed out"))
}

/// The HTTP status of a refused upgrade; panics if the upgrade succeeded or failed otherwise.
pub async fn expect_http_refusal(addr: SocketAddr, path: &str, options: &ConnectOptions) -> u16 {
    match open(addr, path, options).await {
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("upgrade to {path}: expected an HTTP refusal, got error {e}"),
        Ok((_, response)) => panic!(
            "upgrade to {path}: expected an HTTP refusal, got 101 ({:?})",
            response.headers()
        ),
    }
}

/// A connected participant (or a connection about to be refused).
#[derive(Debug)]
pub struct Client {
    ws: WsStream,
    /// The handshake response.
    pub response: Response,
    /// The `room-state` message, once joined.
    pub room_state: Option<Value>,
    /// The room this client connected to.
    pub room: String,
}

impl Client {
    /// Opens the WebSocket (token in the query) without reading anything. Panics if the upgrade
    /// is refused.
    pub async fn connect(addr: SocketAddr, room: &str, token: &str) -> Client {
        Self::connect_with(
            addr,
            room,
            &ws_path(room, token),
            &ConnectOptions::default(),
        )
        .await
    }

    /// Opens the WebSocket at `path` with `options`; panics if the upgrade is refused.
    pub async fn connect_with(
        addr: SocketAddr,
        room: &str,
        path: &str,
        options: &ConnectOptions,
    ) -> Client {
        let (ws, response) = open(addr, path, options)
            .await
            .unwrap_or_else(|e| panic!("upgrade to {path} refused: {}", describe_ws_error(&e)));
        Client {
            ws,
            response,
            room_state: None,
            room: room.to_string(),
        }
    }

    /// Wraps an already opened WebSocket (see [`open`]).
    pub fn from_parts(ws: WsStream, response: Response, room: &str) -> Client {
        Client {
            ws,
            response,
            room_state: None,
            room: room.to_string(),
        }
    }

    /// Connects with `?token=` and waits for `room-state`.
    pub async fn join(addr: SocketAddr, room: &str, token: &str) -> Client {
        let mut client = Self::connect(addr, room, token).await;
        client.read_room_state().await;
        client
    }

    /// Joins like [`join`](Self::join), connecting again (every 50 ms, for at most `timeout`)
    /// while the join is refused with exactly `refusal` (close code and reason): for a seat that
    /// is being freed. A room hears `user-left` a moment before the server has recorded the
    /// leave, so a join right after it may still be refused. Panics on any other answer, or
    /// when the refusal lasts past `timeout`.
    pub async fn join_retrying(
        addr: SocketAddr,
        room: &str,
        token: &str,
        refusal: (u16, &str),
        timeout: Duration,
    ) -> Client {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut client = Self::connect(addr, room, token).await;
            match client.next_event(RECV_TIMEOUT).await {
                Event::Json(msg) if msg["type"] == "room-state" => {
                    client.room_state = Some(msg);
                    return client;
                }
                Event::Close(Some((code, reason)))
                    if (code, reason.as_str()) == refusal
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => panic!(
                    "room {room}: expected room-state (or close {refusal:?} for at most \
                     {timeout:?}), got {other:?}"
                ),
            }
        }
    }

    /// Connects with the token in `Sec-WebSocket-Protocol: switchboard.v1, bearer.<jwt>` and
    /// waits for `room-state`.
    pub async fn join_subprotocol(addr: SocketAddr, room: &str, token: &str) -> Client {
        let options = ConnectOptions::default().header(
            "Sec-WebSocket-Protocol",
            &format!("switchboard.v1, bearer.{token}"),
        );
        let mut client =
            Self::connect_with(addr, room, &format!("/webrtc/ws/{room}"), &options).await;
        client.read_room_state().await;
        client
    }

    /// Reads the first message, which must be `room-state`, and remembers it.
    pub async fn read_room_state(&mut self) -> &Value {
        let msg = self.recv_json().await;
        assert_eq!(
            msg["type"], "room-state",
            "first message in room {} must be room-state, got {msg}",
            self.room
        );
        self.room_state = Some(msg);
        self.room_state.as_ref().expect("just set")
    }

    /// This participant's id from `room-state`.
    pub fn pid(&self) -> String {
        let state = self
            .room_state
            .as_ref()
            .expect("client has not received room-state");
        state["payload"]["self"]["participant_id"]
            .as_str()
            .unwrap_or_else(|| panic!("room-state has no payload.self.participant_id: {state}"))
            .to_string()
    }

    /// Sends a JSON value as a text frame.
    pub async fn send_json(&mut self, value: &Value) {
        self.send(Message::text(value.to_string())).await;
    }

    /// Sends a text frame as is.
    pub async fn send_text(&mut self, text: &str) {
        self.send(Message::text(text.to_string())).await;
    }

    /// Sends any frame; panics if the socket is gone.
    pub async fn send(&mut self, message: Message) {
        tokio::time::timeout(RECV_TIMEOUT, self.ws.send(message))
            .await
            .expect("send timed out")
            .unwrap_or_else(|e| panic!("send failed: {e}"));
    }

    /// Sends a frame, returning the error instead of panicking (for a socket that may be closed).
    pub async fn try_send(&mut self, message: Message) -> Result<(), WsError> {
        match tokio::time::timeout(RECV_TIMEOUT, self.ws.send(message)).await {
            Ok(result) => result,
            Err(_) => Err(WsError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "send timed out",
            ))),
        }
    }

    /// Sends `{"type": ty, "payload": payload, "to": to}` (`to` left out when None).
    pub async fn send_msg(&mut self, ty: &str, to: Option<&str>, payload: Value) {
        let mut msg = json!({"type": ty, "payload": payload});
        if let Some(to) = to {
            msg["to"] = json!(to);
        }
        self.send_json(&msg).await;
    }

    /// The next event (pings/pongs skipped) within `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Event {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let read = tokio::time::timeout_at(deadline, self.ws.next()).await;
            let item = match read {
                Err(_) => return Event::Timeout,
                Ok(None) => return Event::Eof,
                Ok(Some(item)) => item,
            };
            return match item {
                Ok(Message::Text(text)) => match serde_json::from_str(text.as_str()) {
                    Ok(value) => Event::Json(value),
                    Err(_) => Event::Text(text.to_string()),
                },
                Ok(Message::Binary(bytes)) => Event::Binary(bytes.to_vec()),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                Ok(Message::Close(frame)) => {
                    Event::Close(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
                }
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Event::Eof,
                Err(e) => Event::Error(e.to_string()),
            };
        }
    }

    /// The next JSON message within [`RECV_TIMEOUT`]; panics on anything else.
    pub async fn recv_json(&mut self) -> Value {
        self.recv_json_within(RECV_TIMEOUT).await
    }

    /// The next JSON message within `timeout`; panics on anything else.
    pub async fn recv_json_within(&mut self, timeout: Duration) -> Value {
        match self.next_event(timeout).await {
            Event::Json(value) => value,
            other => panic!(
                "room {}: expected a JSON message within {timeout:?}, got {other:?}",
                self.room
            ),
        }
    }

    /// The next message, which must have `type` == `ty`.
    pub async fn expect_type(&mut self, ty: &str) -> Value {
        let msg = self.recv_json().await;
        assert_eq!(msg["type"], ty, "expected a {ty} message, got {msg}");
        msg
    }

    /// Reads until a message of type `ty` arrives (within `timeout` in total); returns the skipped
    /// messages and the match. Panics on close or timeout.
    pub async fn recv_until_type(&mut self, ty: &str, timeout: Duration) -> (Vec<Value>, Value) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Event::Json(msg) if msg["type"] == ty => return (skipped, msg),
                Event::Json(msg) => skipped.push(msg),
                other => panic!(
                    "room {}: waiting for a {ty} message, got {other:?} after {skipped:?}",
                    self.room
                ),
            }
        }
    }

    /// The next event must be a close frame with `code` and `reason` (no message before it).
    pub async fn expect_close(&mut self, code: u16, reason: &str) {
        let event = self.next_event(RECV_TIMEOUT).await;
        assert_eq!(
            event,
            Event::Close(Some((code, reason.to_string()))),
            "room {}: expected close {code} {reason:?}",
            self.room
        );
    }

    /// Reads JSON messages until the close frame (within `timeout`); returns them and the close
    /// code/reason. Panics on a non-JSON frame, EOF without close, error or timeout.
    pub async fn collect_until_close(&mut self, timeout: Duration) -> (Vec<Value>, (u16, String)) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut messages = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Event::Json(msg) => messages.push(msg),
                Event::Close(Some(frame)) => return (messages, frame),
                other => panic!(
                    "room {}: waiting for a close frame, got {other:?} after {} messages (last: {:?})",
                    self.room,
                    messages.len(),
                    messages.last()
                ),
            }
        }
    }

    /// Sends `ping` and expects `pong` as the next message: proves the connection is open and
    /// that nothing else was queued for this client before it.
    pub async fn assert_alive_and_idle(&mut self) {
        self.send_json(&json!({"type": "ping"})).await;
        let msg = self.recv_json().await;
        assert_eq!(
            msg["type"], "pong",
            "room {}: expected pong as the next message (nothing else pending), got {msg}",
            self.room
        );
    }

    /// Reads whatever arrives within `quiet` (in all, not per message): no `user-left` or
    /// `user-joined` may be among it. What a bystander checks while someone else resumes.
    pub async fn assert_no_presence_change(&mut self, quiet: Duration) {
        let deadline = tokio::time::Instant::now() + quiet;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Event::Timeout => return,
                Event::Json(msg) => assert!(
                    msg["type"] != "user-left" && msg["type"] != "user-joined",
                    "room {}: the room saw a presence change: {msg}",
                    self.room
                ),
                other => panic!("room {}: bystander got {other:?}", self.room),
            }
        }
    }

    /// Opens a resume of the participant `resume_token` names, joined with `token` and having
    /// seen every delivery up to `last_seq`; the caller reads the outcome (`room-state` with
    /// `resumed: true`, or a close).
    pub async fn resume(
        addr: SocketAddr,
        room: &str,
        token: &str,
        resume_token: &str,
        last_seq: u64,
    ) -> Client {
        let path = resume_path(room, token, resume_token, last_seq);
        Client::connect_with(addr, room, &path, &ConnectOptions::default()).await
    }

    /// This participant's resume token from `room-state`.
    pub fn resume_token(&self) -> String {
        let state = self
            .room_state
            .as_ref()
            .expect("client has not received room-state");
        state["payload"]["resume_token"]
            .as_str()
            .unwrap_or_else(|| panic!("room-state has no payload.resume_token: {state}"))
            .to_string()
    }

    /// Drops the TCP connection without a close frame, as a network blip or a killed
    /// client does: the server sees the connection end, not a close.
    pub fn drop_connection(self) {
        drop(self.ws);
    }

    /// Closes the WebSocket normally (1000) and waits for the server's close reply.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(RECV_TIMEOUT, self.ws.close(None)).await;
        let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, self.ws.next()).await {}
    }
}

/// Joins one client per token into `room`, in order. Every earlier client must get the
/// newcomer's `user-joined` (consumed here), so the returned clients have nothing pending.
pub async fn join_all(addr: SocketAddr, room: &str, tokens: &[String]) -> Vec<Client> {
    let mut clients: Vec<Client> = Vec::new();
    for token in tokens {
        let client = Client::join(addr, room, token).await;
        for earlier in clients.iter_mut() {
            let msg = earlier.expect_type("user-joined").await;
            assert_eq!(msg["payload"]["participant_id"], client.pid().as_str());
        }
        clients.push(client);
    }
    clients
}

/// Joins one client per user of `users` into `room`, in order, each with an HS256 token of
/// `secret` ([`Claims::user`]); what [`join_all`] says holds for them.
pub async fn join_users(addr: SocketAddr, room: &str, secret: &str, users: &[&str]) -> Vec<Client> {
    let tokens: Vec<String> = users
        .iter()
        .map(|u| Claims::user(u).hs256(secret))
        .collect();
    join_all(addr, room, &tokens).await
}

/// The sorted `participant_id`s of a participant list (a room-state's or the REST API's).
pub fn sorted_participant_ids(participants: &Value) -> Vec<String> {
    let mut ids: Vec<String> = participants
        .as_array()
        .unwrap_or_else(|| panic!("participants is not a list: {participants}"))
        .iter()
        .map(|p| p["participant_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    ids.sort();
    ids
}

/// A readable description of a handshake error (the HTTP status and body for refusals).
pub fn describe_ws_error(error: &WsError) -> String {
    match error {
        WsError::Http(response) => format!(
            "HTTP {} body {:?}",
            response.status(),
            response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
        ),
        other => other.to_string(),
    }
}

static NONCE: AtomicU64 = AtomicU64::new(1);

/// A process-unique number for message payloads.
pub fn nonce() -> u64 {
    NONCE.fetch_add(1, Ordering::Relaxed)
}

/// `from` sends a targeted chat-message to `to`; it must be the very next message `to` reads,
/// with `from`'s participant id as `sender_id`. Proves the two still relay (and that nothing
/// else, e.g. a `user-joined` for a refused client, was queued for `to` before it).
pub async fn assert_relays(from: &mut Client, to: &mut Client) {
    let n = nonce();
    let to_pid = to.pid();
    from.send_msg(
        "chat-message",
        Some(&to_pid),
        json!({"text": "relay check", "n": n}),
    )
    .await;
    let msg = to.recv_json().await;
    assert_eq!(
        msg["type"], "chat-message",
        "expected the relay check, got {msg}"
    );
    assert_eq!(msg["payload"]["n"], n, "relay check payload: {msg}");
    assert_eq!(
        msg["sender_id"],
        json!(from.pid()),
        "relay check sender: {msg}"
    );
    assert_eq!(msg["to"], json!(to_pid), "relay check target: {msg}");
}

/// Both directions of [`assert_relays`].
pub async fn assert_pair_relays(a: &mut Client, b: &mut Client) {
    assert_relays(a, b).await;
    assert_relays(b, a).await;
}

/// Checks an `error` message: envelope and code; returns its `message` text.
pub fn assert_error(msg: &Value, code: &str) -> String {
    assert_eq!(msg["type"], "error", "expected an error message, got {msg}");
    assert_eq!(msg["payload"]["code"], code, "error code: {msg}");
    assert_eq!(msg["sender_id"], Value::Null, "error sender_id: {msg}");
    assert_eq!(msg["to"], Value::Null, "error to: {msg}");
    msg["payload"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("error payload.message is not a string: {msg}"))
        .to_string()
}

/// Whether `ts` is RFC 3339 UTC with exactly millisecond precision, e.g. `2026-11-28T16:30:27.123Z`.
pub fn is_rfc3339_millis_utc(ts: &str) -> bool {
    let b = ts.as_bytes();
    let digits = |range: std::ops::Range<usize>| range.into_iter().all(|i| b[i].is_ascii_digit());
    b.len() == 24
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..23)
        && b[23] == b'Z'
}

/// Checks the envelope keys every server message carries and the timestamp format.
pub fn assert_envelope(msg: &Value, ty: &str, room: &str) {
    assert_eq!(msg["type"], ty, "type: {msg}");
    for key in ["type", "payload", "sender_id", "room_id", "timestamp", "to"] {
        assert!(msg.get(key).is_some(), "envelope lacks {key:?}: {msg}");
    }
    assert_eq!(msg["room_id"], room, "room_id: {msg}");
    let ts = msg["timestamp"].as_str().unwrap_or_default();
    assert!(
        is_rfc3339_millis_utc(ts),
        "timestamp {ts:?} is not RFC 3339 UTC with milliseconds: {msg}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_format_is_exact() {
        assert!(is_rfc3339_millis_utc("2026-11-28T16:30:27.123Z"));
        for bad in [
            "2026-11-28T16:30:27Z",
            "2026-11-28T16:30:27.123456Z",
            "2026-11-28T16:30:27.123+00:00",
            "2026-11-28 16:30:27.123Z",
            "",
        ] {
            assert!(!is_rfc3339_millis_utc(bad), "{bad}");
        }
    }
}
