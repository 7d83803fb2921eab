//! A real HTTP webhook receiver for the tests (hyper, HTTP/1.1 on an ephemeral loopback port)
//! that records every request it gets, answers as the test says (2xx, a status, slowly, or not
//! at all: connection refused), and an independent Standard Webhooks signature check written
//! against the `hmac` and `sha2` crates directly, not the server's code.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use serde_json::Value;
use sha2::Sha256;
use tokio::task::JoinHandle;

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 204 at once.
    Accept,
    /// This status at once.
    Status(u16),
    /// 204 after this long.
    Slow(Duration),
}

/// One request as it arrived, with the status it got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Vec<u8>,
    pub json: Value,
    pub status: u16,
    /// When the answer was sent.
    pub answered: Instant,
}

impl Received {
    pub fn kind(&self) -> &str {
        self.json["type"].as_str().unwrap_or_default()
    }
    pub fn room(&self) -> &str {
        self.json["data"]["room_id"].as_str().unwrap_or_default()
    }
    pub fn seq(&self) -> u64 {
        self.json["data"]["seq"].as_u64().unwrap_or_default()
    }
    pub fn participant_id(&self) -> &str {
        self.json["data"]["participant"]["participant_id"]
            .as_str()
            .unwrap_or_default()
    }
    pub fn reason(&self) -> &str {
        self.json["data"]["reason"].as_str().unwrap_or_default()
    }
    pub fn delivered(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

struct State {
    mode: Mutex<Mode>,
    log: Mutex<Vec<Received>>,
    in_flight: Mutex<usize>,
}

/// The receiver; stops on drop.
pub struct Receiver {
    addr: SocketAddr,
    state: Arc<State>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Receiver {
    /// Listens on a free loopback port, answering [`Mode::Accept`].
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap_or_else(|e| panic!("webhook receiver bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("webhook receiver addr: {e}"));
        let state = Arc::new(State {
            mode: Mutex::new(Mode::Accept),
            log: Mutex::default(),
            in_flight: Mutex::new(0),
        });
        let receiver = Receiver {
            addr,
            state,
            task: Mutex::new(None),
        };
        receiver.serve(listener);
        receiver
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// Stops listening and drops every open connection: senders see "connection refused".
    pub fn refuse(&self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn listen_again(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("webhook receiver cannot listen on {} again: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let state = self.state.clone();
        let task = tokio::spawn(async move {
            // Connections live in this task's set: aborting the task ends them all.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let state = state.clone();
                        conns.spawn(async move {
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let service = service_fn(move |req| handle(state.clone(), req));
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, service)
                                .await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    /// Every request so far, in arrival order of their answers.
    pub fn requests(&self) -> Vec<Received> {
        self.state.log.lock().unwrap().clone()
    }

    /// The requests answered with 2xx.
    pub fn delivered(&self) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| r.delivered())
            .collect()
    }

    /// Requests being held now (in [`Mode::Slow`]).
    pub fn in_flight(&self) -> usize {
        *self.state.in_flight.lock().unwrap()
    }

    /// Polls until at least `n` requests were answered (whatever their status).
    pub async fn wait_until_requests(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.requests().len() < n {
            assert!(
                Instant::now() < deadline,
                "webhook receiver: fewer than {n} requests within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls until `done` holds for the delivered requests; panics with `what` after `timeout`.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let delivered = self.delivered();
            if done(&delivered) {
                return delivered;
            }
            assert!(
                Instant::now() < deadline,
                "webhook receiver: {what} not seen within {timeout:?}; {} requests, {} delivered",
                self.requests().len(),
                delivered.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.refuse();
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (id, timestamp, signature) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let path = req.uri().path().to_owned();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => Vec::new(),
    };
    let mode = *state.mode.lock().unwrap();
    let status = match mode {
        Mode::Accept => 204,
        Mode::Status(s) => s,
        Mode::Slow(d) => {
            *state.in_flight.lock().unwrap() += 1;
            tokio::time::sleep(d).await;
            *state.in_flight.lock().unwrap() -= 1;
            204
        }
    };
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    state.log.lock().unwrap().push(Received {
        path,
        id,
        timestamp,
        signature,
        body,
        json,
        status,
        answered: Instant::now(),
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    Ok(response)
}

/// A fresh Standard Webhooks secret: `whsec_` + base64 of 32 random-enough bytes.
pub fn new_secret(seed: u8) -> String {
    let key: Vec<u8> = (0..32u8)
        .map(|i| i.wrapping_mul(31).wrapping_add(seed))
        .collect();
    format!("whsec_{}", STANDARD.encode(key))
}

/// Verifies a request per the Standard Webhooks specification, independently of the server:
/// HMAC-SHA256 with the base64-decoded key over `id.timestamp.body`, compared in constant time
/// with each `v1,` signature of the header.
pub fn verify(secret: &str, id: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
    let Some(encoded) = secret.strip_prefix("whsec_") else {
        return false;
    };
    let Ok(key) = STANDARD.decode(encoded) else {
        return false;
    };
    header.split(' ').any(|sig| {
        let Some(b64) = sig.strip_prefix("v1,") else {
            return false;
        };
        let Ok(expected) = STANDARD.decode(b64) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
            return false;
        };
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        mac.verify_slice(&expected).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_the_reference_example_and_nothing_else() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let sig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        let body = br#"{"test": 2432232314}"#;
        assert!(verify(
            secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            body,
            sig
        ));
        assert!(verify(
            secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            body,
            &format!("v1,AAAA {sig}")
        ));
        assert!(!verify(
            secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265331",
            body,
            sig
        ));
        assert!(!verify(
            secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            br#"{"test": 2432232315}"#,
            sig
        ));
    }
}
