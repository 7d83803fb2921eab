//! The ceiling: a trivial relay on the server's own stack (tokio +
//! tungstenite, one lock over all rooms, JWT verified on join) that speaks
//! just enough of the protocol for every scenario: `room-state`,
//! `user-joined`/`user-left`, targeted and room-wide relays. It runs as a
//! child process of the load generator (`switchboard-load serve-ceiling`),
//! so its memory and CPU are measured like a server's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context as _};
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::Message;

/// Frames written per flush, as the server does.
const WRITE_BATCH: usize = 64;

type Tx = mpsc::UnboundedSender<Message>;

#[derive(Default)]
struct Rooms {
    rooms: Mutex<HashMap<String, HashMap<String, Tx>>>,
    next_id: AtomicU64,
}

impl Rooms {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, Tx>>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Deserialize)]
struct Claims {
    #[allow(dead_code)]
    sub: String,
}

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(borrow, default)]
    to: Option<&'a str>,
    #[serde(borrow)]
    payload: &'a RawValue,
}

/// `(room, token)` from `/webrtc/ws/{room}?token=...`.
pub fn parse_path(path_and_query: &str) -> Option<(String, String)> {
    let (path, query) = path_and_query.split_once('?')?;
    let room = path.strip_prefix("/webrtc/ws/")?;
    if room.is_empty() || room.contains('/') {
        return None;
    }
    let token = query.split('&').find_map(|kv| kv.strip_prefix("token="))?;
    Some((room.to_string(), token.to_string()))
}

fn presence(kind: &str, id: &str) -> Message {
    Message::text(format!(
        r#"{{"type":"{kind}","payload":{{"participant_id":"{id}"}},"sender_id":null,"to":null}}"#
    ))
}

async fn handle(stream: TcpStream, rooms: Arc<Rooms>, key: Arc<DecodingKey>) {
    let _ = stream.set_nodelay(true);
    let mut target = None;
    let mut validation = Validation::new(Algorithm::HS256);
    // `exp` is checked; an audience or issuer the deployment requires is not
    // the ceiling's business.
    validation.validate_aud = false;
    // The signature is tungstenite's handshake callback; its error is the response itself.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let parsed = req
            .uri()
            .path_and_query()
            .and_then(|pq| parse_path(pq.as_str()));
        let Some((room, token)) = parsed else {
            return Err(refuse(StatusCode::NOT_FOUND));
        };
        if jsonwebtoken::decode::<Claims>(&token, &key, &validation).is_err() {
            return Err(refuse(StatusCode::UNAUTHORIZED));
        }
        target = Some(room);
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let Some(room) = target else { return };
    let id = format!("c{:016x}", rooms.next_id.fetch_add(1, Ordering::Relaxed));
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    {
        let mut all = rooms.lock();
        let members = all.entry(room.clone()).or_default();
        let list: Vec<String> = members
            .keys()
            .map(|p| format!(r#"{{"participant_id":"{p}"}}"#))
            .collect();
        let _ = tx.send(Message::text(format!(
            r#"{{"type":"room-state","payload":{{"self":{{"participant_id":"{id}"}},"participants":[{}]}},"sender_id":null,"to":null}}"#,
            list.join(",")
        )));
        let joined = presence("user-joined", &id);
        for other in members.values() {
            let _ = other.send(joined.clone());
        }
        members.insert(id.clone(), tx);
    }
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            if sink.feed(first).await.is_err() {
                return;
            }
            for _ in 0..WRITE_BATCH {
                match rx.try_recv() {
                    Ok(m) => {
                        if sink.feed(m).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    let sender = serde_json::Value::from(id.as_str());
    while let Some(Ok(msg)) = source.next().await {
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(_) => break,
            _ => continue,
        };
        let Ok(m) = serde_json::from_str::<Incoming<'_>>(&text) else {
            continue;
        };
        let to = m.to.map(serde_json::Value::from);
        let frame = Message::text(format!(
            r#"{{"type":{},"payload":{},"sender_id":{sender},"to":{}}}"#,
            serde_json::Value::from(m.kind),
            m.payload.get(),
            to.unwrap_or(serde_json::Value::Null)
        ));
        let all = rooms.lock();
        let Some(members) = all.get(&room) else {
            continue;
        };
        match m.to {
            Some(to) => {
                if let Some(tx) = members.get(to) {
                    let _ = tx.send(frame);
                }
            }
            None => {
                for (pid, tx) in members {
                    if *pid != id {
                        let _ = tx.send(frame.clone());
                    }
                }
            }
        }
    }
    {
        let mut all = rooms.lock();
        if let Some(members) = all.get_mut(&room) {
            if let Some(me) = members.remove(&id) {
                let _ = me.send(Message::Close(None));
            }
            let left = presence("user-left", &id);
            for other in members.values() {
                let _ = other.send(left.clone());
            }
            if members.is_empty() {
                all.remove(&room);
            }
        }
    }
    let _ = writer.await;
}

fn refuse(status: StatusCode) -> ErrorResponse {
    let mut resp = ErrorResponse::new(None);
    *resp.status_mut() = status;
    resp
}

/// Serves the ceiling relay on `listen` until the process is killed; prints
/// `listening on <addr>` on stdout once bound.
pub async fn serve(listen: SocketAddr, secret: Vec<u8>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!("listening on {}", listener.local_addr()?);
    let rooms = Arc::new(Rooms::default());
    let key = Arc::new(DecodingKey::from_secret(&secret));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            // Out of file descriptors and the like: keep serving the others.
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        tokio::spawn(handle(stream, rooms.clone(), key.clone()));
    }
}

/// A ceiling relay child process; killed on drop.
pub struct CeilingProcess {
    child: tokio::process::Child,
    pub addr: SocketAddr,
}

impl CeilingProcess {
    /// Starts `switchboard-load serve-ceiling` on an ephemeral loopback port
    /// with the HS256 `secret` (passed in the environment, never argv).
    pub async fn start(secret: &[u8]) -> anyhow::Result<CeilingProcess> {
        let exe = std::env::current_exe().context("cannot find the switchboard-load binary")?;
        let mut child = tokio::process::Command::new(exe)
            .args(["serve-ceiling", "--listen", "127.0.0.1:0"])
            .env("SWITCHBOARD_LOAD_CEILING_SECRET", hex(secret))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the ceiling relay")?;
        let stdout = child.stdout.take().context("ceiling relay stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(std::time::Duration::from_secs(10), lines.next_line())
            .await
            .context("the ceiling relay did not start within 10 s")??
            .context("the ceiling relay exited before listening")?;
        let Some(addr) = line.strip_prefix("listening on ") else {
            bail!("unexpected first line from the ceiling relay: {line:?}");
        };
        Ok(CeilingProcess {
            addr: addr.trim().parse()?,
            child,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// Lower-case hex, so any secret travels safely through the environment.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_gives_room_and_token() {
        assert_eq!(
            parse_path("/webrtc/ws/r-1?x=1&token=abc.def"),
            Some(("r-1".into(), "abc.def".into()))
        );
        assert_eq!(parse_path("/webrtc/ws/r-1"), None);
        assert_eq!(parse_path("/webrtc/ws/?token=a"), None);
        assert_eq!(parse_path("/other/r?token=a"), None);
    }

    #[test]
    fn hex_round_trips() {
        let secret = b"\x00\xffsecret with spaces";
        assert_eq!(unhex(&hex(secret)).as_deref(), Some(&secret[..]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
