//! The WebSocket upgrade (RFC 6455 §4.2), done here instead of by axum's
//! `WebSocketUpgrade` so the session holds tokio-tungstenite's
//! `WebSocketStream` itself and, through it, the socket: after a read error
//! the stream yields nothing more, and the close handshake is finished on the
//! raw bytes ([`crate::close_drain`]). The request checks and their refusals
//! are the ones axum made.

use std::future::Future;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::{Role, WebSocketConfig};

use crate::read_ahead::ReadAhead;

/// An upgraded connection as the session uses it.
pub type WsStream = WebSocketStream<ReadAhead<TokioIo<Upgraded>>>;

/// Why a request cannot be upgraded; each answers with a plain-text status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MethodNotGet,
    ConnectionNotUpgrade,
    UpgradeNotWebSocket,
    VersionNot13,
    KeyMissing,
    /// The connection cannot switch protocols (HTTP/1.0, or a server
    /// without upgrade support).
    NotUpgradable,
}

impl Refusal {
    fn status_and_text(self) -> (StatusCode, &'static str) {
        match self {
            Refusal::MethodNotGet => (
                StatusCode::METHOD_NOT_ALLOWED,
                "Request method must be `GET`",
            ),
            Refusal::ConnectionNotUpgrade => (
                StatusCode::BAD_REQUEST,
                "Connection header did not include 'upgrade'",
            ),
            Refusal::UpgradeNotWebSocket => (
                StatusCode::BAD_REQUEST,
                "`Upgrade` header did not include 'websocket'",
            ),
            Refusal::VersionNot13 => (
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Version` header did not include '13'",
            ),
            Refusal::KeyMissing => (
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Key` header missing",
            ),
            Refusal::NotUpgradable => (
                StatusCode::UPGRADE_REQUIRED,
                "WebSocket request couldn't be upgraded since no upgrade state was present",
            ),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        self.status_and_text().into_response()
    }
}

/// A request that asks for a WebSocket, checked; [`Upgrade::accept`] answers it.
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Refusal> {
        let key = check_request(&parts.method, parts.version, &parts.headers)?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(Refusal::NotUpgradable)?;
        Ok(Upgrade { key, on_upgrade })
    }
}

impl Upgrade {
    /// Answers 101 (echoing `protocol` when one was chosen) and runs
    /// `session` on the upgraded connection in its own task.
    pub fn accept<F, Fut>(
        self,
        protocol: Option<&'static str>,
        config: WebSocketConfig,
        session: F,
    ) -> Response
    where
        F: FnOnce(WsStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        // Boxed: what an async block captures stays in the task for its whole life, and
        // these are used up once the upgrade is through.
        let (config, session) = (Box::new(config), Box::new(session));
        tokio::spawn(async move {
            // A client that goes away before the switch leaves nothing to serve.
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let socket = WebSocketStream::from_raw_socket(
                ReadAhead::new(TokioIo::new(upgraded)),
                Role::Server,
                Some(*config),
            )
            .await;
            session(socket).await;
        });
        switching_protocols(&self.key, protocol)
    }
}

/// RFC 6455 §4.2.1 on an HTTP/1.1 request: the `Sec-WebSocket-Key` to answer.
fn check_request(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
) -> Result<HeaderValue, Refusal> {
    // The listener speaks HTTP/1 only; the extended CONNECT of HTTP/2
    // WebSockets never reaches this.
    if version > Version::HTTP_11 {
        return Err(Refusal::NotUpgradable);
    }
    if method != Method::GET {
        return Err(Refusal::MethodNotGet);
    }
    if !header_has_token(headers, &header::CONNECTION, "upgrade") {
        return Err(Refusal::ConnectionNotUpgrade);
    }
    if !header_is(headers, &header::UPGRADE, "websocket") {
        return Err(Refusal::UpgradeNotWebSocket);
    }
    if !header_is(headers, &header::SEC_WEBSOCKET_VERSION, "13") {
        return Err(Refusal::VersionNot13);
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .cloned()
        .ok_or(Refusal::KeyMissing)
}

fn header_is(headers: &HeaderMap, name: &header::HeaderName, value: &str) -> bool {
    headers
        .get(name)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

/// Whether header `name` mentions `token` anywhere, case-insensitively
/// (`Connection: keep-alive, Upgrade`): as lenient as axum was.
fn header_has_token(headers: &HeaderMap, name: &header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains(token))
}

/// Whether the client offered subprotocol `protocol` (compared exactly, as
/// RFC 6455 §4.2.2 asks).
pub fn offers_protocol(headers: &HeaderMap, protocol: &str) -> bool {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == protocol)
}

fn switching_protocols(key: &HeaderValue, protocol: Option<&'static str>) -> Response {
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    // Base64 is always a valid header value; the fallback is never taken.
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(protocol) = protocol {
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(protocol),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    const GOOD: &[(&str, &str)] = &[
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "WebSocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn a_well_formed_request_yields_its_key() {
        let key = check_request(&Method::GET, Version::HTTP_11, &headers(GOOD));
        assert_eq!(key.unwrap(), "dGhlIHNhbXBsZSBub25jZQ==");
    }

    #[test]
    fn each_missing_piece_has_its_refusal() {
        let without = |name: &str| {
            let pairs: Vec<_> = GOOD.iter().copied().filter(|(n, _)| *n != name).collect();
            check_request(&Method::GET, Version::HTTP_11, &headers(&pairs))
        };
        assert_eq!(without("connection"), Err(Refusal::ConnectionNotUpgrade));
        assert_eq!(without("upgrade"), Err(Refusal::UpgradeNotWebSocket));
        assert_eq!(without("sec-websocket-version"), Err(Refusal::VersionNot13));
        assert_eq!(without("sec-websocket-key"), Err(Refusal::KeyMissing));
        assert_eq!(
            check_request(&Method::POST, Version::HTTP_11, &headers(GOOD)),
            Err(Refusal::MethodNotGet)
        );
        let mut old = headers(GOOD);
        old.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert_eq!(
            check_request(&Method::GET, Version::HTTP_11, &old),
            Err(Refusal::VersionNot13)
        );
        assert_eq!(
            Refusal::NotUpgradable.into_response().status(),
            StatusCode::UPGRADE_REQUIRED
        );
    }

    #[test]
    fn the_answer_carries_the_rfc_accept_key_and_the_chosen_protocol() {
        // The example of RFC 6455 §1.3.
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        let response = switching_protocols(&key, Some("switchboard.v1"));
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        let h = response.headers();
        assert_eq!(
            h[header::SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(h[header::SEC_WEBSOCKET_PROTOCOL], "switchboard.v1");
        assert_eq!(h[header::UPGRADE], "websocket");
        let bare = switching_protocols(&key, None);
        assert!(bare.headers().get(header::SEC_WEBSOCKET_PROTOCOL).is_none());
    }

    #[test]
    fn only_an_exact_offer_selects_a_protocol() {
        let offered = headers(&[("sec-websocket-protocol", "bearer.abc, switchboard.v1")]);
        assert!(offers_protocol(&offered, "switchboard.v1"));
        let other = headers(&[("sec-websocket-protocol", "Switchboard.v1, bearer.abc")]);
        assert!(!offers_protocol(&other, "switchboard.v1"));
        assert!(!offers_protocol(&HeaderMap::new(), "switchboard.v1"));
    }
}
