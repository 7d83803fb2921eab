//! `POST /webrtc/dev/token` (only with `--dev`): mints a token for a name typed on the demo
//! page, with a user id of its own per request, so two tabs are two users instead of both
//! being `dev`. The checks of the body ([`DevRequest::parse`]) and the user id
//! ([`user_id`]) are pure; the handler adds the same-origin check, the random suffix and the
//! signature with the `--dev` key.
//!
//! Anyone who can reach the endpoint gets a token: it exists only for a laptop (`--dev`
//! listens on 127.0.0.1 unless told otherwise), and a browser page of another origin is
//! refused, so a web site the developer visits cannot mint tokens for the local server.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rand::Rng as _;
use serde::Deserialize;
use serde_json::json;

use crate::auth;
use crate::http::{ApiError, AppState};
use crate::room::RoomId;

/// Where the endpoint lives.
pub const PATH: &str = "/webrtc/dev/token";

/// Longest name accepted, in characters: a label for a person on a demo page.
pub const MAX_NAME_CHARS: usize = 64;

/// Largest request body: `{"name": ..., "room": ...}` fits many times over.
pub const MAX_BODY_BYTES: usize = 1024;

/// Lifetime of a minted token, the same as the token `--dev` prints.
pub const TTL: Duration = Duration::from_secs(24 * 3600);

/// Longest slug of the name inside the user id.
const MAX_SLUG_CHARS: usize = 24;

/// A checked request: the name as given (trimmed) and the one room it is for (`None`: every
/// room).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevRequest {
    pub name: String,
    pub room: Option<RoomId>,
}

/// The body as sent; unknown fields are refused so a typo is not silently ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    name: String,
    #[serde(default)]
    room: Option<String>,
}

/// Why a request body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DevRequestError {
    #[error("the body is not a JSON object with a string name")]
    InvalidBody,
    #[error("the name is empty, too long or has control characters")]
    InvalidName,
    #[error("the room id is not valid")]
    InvalidRoom,
}

impl From<DevRequestError> for ApiError {
    fn from(e: DevRequestError) -> Self {
        match e {
            DevRequestError::InvalidBody => ApiError {
                status: StatusCode::BAD_REQUEST,
                code: "invalid_request",
                message: "expected a JSON body {\"name\": \"Alice\"} (optionally with \"room\")",
            },
            DevRequestError::InvalidName => ApiError {
                status: StatusCode::BAD_REQUEST,
                code: "invalid_name",
                message:
                    "the name must be 1-64 characters (after trimming) without control characters",
            },
            DevRequestError::InvalidRoom => ApiError {
                status: StatusCode::BAD_REQUEST,
                code: "invalid_room_id",
                message: "room ids are 1-64 characters of A-Z, a-z, 0-9, '_' and '-'",
            },
        }
    }
}

impl DevRequest {
    /// Checks a request body. Pure.
    pub fn parse(body: &[u8]) -> Result<DevRequest, DevRequestError> {
        let body: Body = serde_json::from_slice(body).map_err(|_| DevRequestError::InvalidBody)?;
        let name = body.name.trim();
        let chars = name.chars().count();
        if chars == 0 || chars > MAX_NAME_CHARS || name.chars().any(char::is_control) {
            return Err(DevRequestError::InvalidName);
        }
        let room = match body.room.as_deref() {
            None => None,
            Some(raw) => Some(RoomId::parse(raw).map_err(|_| DevRequestError::InvalidRoom)?),
        };
        Ok(DevRequest {
            name: name.to_owned(),
            room,
        })
    }
}

/// `dev-<slug of the name>-<suffix as 6 hex digits>`: readable in logs and the participant
/// list, and different for every request even when two tabs type the same name. The slug
/// keeps lowercase ASCII letters and digits, turns every other run of characters into one
/// `-`, and is `user` when nothing is left (a name in another script). Pure.
pub fn user_id(name: &str, suffix: u32) -> String {
    let mut slug = String::new();
    for c in name.chars() {
        if slug.chars().count() >= MAX_SLUG_CHARS {
            break;
        }
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug.trim_end_matches('-');
    let slug = if slug.is_empty() { "user" } else { slug };
    format!("dev-{slug}-{:06x}", suffix & 0xff_ffff)
}

/// Whether a request may mint: no `Origin` (curl, scripts) or the server's own origin (the
/// demo page it serves). Pure.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let (Ok(origin), Some(Ok(host))) = (
        origin.to_str(),
        headers.get(header::HOST).map(|h| h.to_str()),
    ) else {
        return false;
    };
    let origin = origin.trim_end_matches('/');
    ["http://", "https://"].iter().any(|scheme| {
        origin
            .get(..scheme.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
            && origin[scheme.len()..].eq_ignore_ascii_case(host)
    })
}

/// The handler.
pub async fn mint(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if !same_origin(&headers) {
        return Err(ApiError {
            status: StatusCode::FORBIDDEN,
            code: "origin_forbidden",
            message: "dev tokens are only minted for the server's own page (or no Origin)",
        });
    }
    let body = body.map_err(|_| ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        code: "body_too_large",
        message: "the body is larger than 1024 bytes",
    })?;
    let request = DevRequest::parse(&body)?;
    let user_id = user_id(&request.name, rand::rng().random_range(0..0x100_0000u32));
    let room = request.room.as_ref().map_or("*", RoomId::as_str);
    let now = auth::now_unix();
    let token = auth::dev_token(&state.config.jwt, &user_id, &request.name, room, now, TTL)
        .map_err(|e| {
            tracing::error!(error = %e, "cannot sign a dev token");
            ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                code: "internal_error",
                message: "the dev token could not be signed",
            }
        })?;
    // The user id is built from [a-z0-9-] only; the name is not logged.
    tracing::info!(user_id = %user_id, room, "dev token minted");
    let body = json!({
        "token": token,
        "user_id": user_id,
        "name": request.name,
        "room": room,
        "expires_at": now + TTL.as_secs(),
    });
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn a_name_and_an_optional_room_are_accepted_and_trimmed() {
        let r = DevRequest::parse(br#"{"name": "  Alice  "}"#).unwrap();
        assert_eq!(r.name, "Alice");
        assert_eq!(r.room, None);
        let r = DevRequest::parse(br#"{"name": "Bob", "room": "standup"}"#).unwrap();
        assert_eq!(r.room.as_ref().map(RoomId::as_str), Some("standup"));
        let long = "é".repeat(MAX_NAME_CHARS);
        let body = serde_json::to_vec(&json!({ "name": long })).unwrap();
        assert_eq!(DevRequest::parse(&body).unwrap().name, long);
    }

    #[test]
    fn bad_bodies_names_and_rooms_are_refused() {
        let cases: [(&[u8], DevRequestError); 10] = [
            (b"", DevRequestError::InvalidBody),
            (b"not json", DevRequestError::InvalidBody),
            (b"[]", DevRequestError::InvalidBody),
            (br#"{"name": 5}"#, DevRequestError::InvalidBody),
            (br#"{"nmae": "Alice"}"#, DevRequestError::InvalidBody),
            (
                br#"{"name": "Alice", "admin": true}"#,
                DevRequestError::InvalidBody,
            ),
            (br#"{"name": "   "}"#, DevRequestError::InvalidName),
            (br#"{"name": "Al\nice"}"#, DevRequestError::InvalidName),
            (
                br#"{"name": "Alice", "room": "a b"}"#,
                DevRequestError::InvalidRoom,
            ),
            (
                br#"{"name": "Alice", "room": ""}"#,
                DevRequestError::InvalidRoom,
            ),
        ];
        for (body, want) in cases {
            assert_eq!(
                DevRequest::parse(body),
                Err(want),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let long = "a".repeat(MAX_NAME_CHARS + 1);
        let body = serde_json::to_vec(&json!({ "name": long })).unwrap();
        assert_eq!(DevRequest::parse(&body), Err(DevRequestError::InvalidName));
    }

    #[test]
    fn user_ids_are_a_slug_of_the_name_and_the_suffix() {
        assert_eq!(user_id("Alice", 0xabc), "dev-alice-000abc");
        assert_eq!(
            user_id("Anna-Lena Müller!", 1),
            "dev-anna-lena-m-ller-000001"
        );
        assert_eq!(user_id("  --Bob--  ", 0xffffff), "dev-bob-ffffff");
        assert_eq!(user_id("山田", 2), "dev-user-000002");
        assert_eq!(user_id("x", 0x1234_5678), "dev-x-345678");
        let long = user_id(&"ab".repeat(100), 0);
        assert_eq!(long, format!("dev-{}-000000", "ab".repeat(12)));
        // Only characters that need no escaping anywhere.
        let id = user_id("\u{1b}[31m<script>\"'", 7);
        assert!(
            id.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{id}"
        );
    }

    fn headers(origin: Option<&'static str>, host: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_static(o));
        }
        if let Some(host) = host {
            h.insert(header::HOST, HeaderValue::from_static(host));
        }
        h
    }

    #[test]
    fn only_the_servers_own_origin_or_none_may_mint() {
        let host = Some("127.0.0.1:8080");
        assert!(same_origin(&headers(None, host)));
        assert!(same_origin(&headers(Some("http://127.0.0.1:8080"), host)));
        assert!(same_origin(&headers(Some("https://127.0.0.1:8080/"), host)));
        assert!(same_origin(&headers(
            Some("HTTP://Localhost:8080"),
            Some("localhost:8080")
        )));
        assert!(!same_origin(&headers(Some("http://evil.example"), host)));
        assert!(!same_origin(&headers(Some("http://127.0.0.1:9999"), host)));
        assert!(!same_origin(&headers(Some("null"), host)));
        assert!(!same_origin(&headers(Some("http://127.0.0.1:8080"), None)));
    }
}

/// The server-API token `--dev` prints at start-up (user `dev-admin`, grant `room_admin`,
/// every room, [`TTL`]): with a random secret nobody else knows, it is the only way to try the
/// server API against a `--dev` server. Minted by the `token` command's own code.
pub fn admin_token(cfg: &crate::config::JwtConfig, now: u64) -> Result<String, AdminTokenError> {
    use crate::config::{JwtAlgorithm, JwtKey, SigningConfig, SigningKey};
    use crate::token::{Grant, TokenRequest};
    let JwtKey::Secret(secret) = &cfg.key else {
        return Err(AdminTokenError::NotDevKey);
    };
    let signing = SigningConfig {
        algorithm: JwtAlgorithm::Hs256,
        key: SigningKey::Secret(secret.clone()),
        issuer: cfg.issuer.clone(),
        audience: cfg.audience.clone(),
        verify: Some(cfg.clone()),
    };
    let request = TokenRequest {
        sub: "dev-admin".to_owned(),
        name: "dev admin".to_owned(),
        rooms: vec!["*".to_owned()],
        ttl: TTL,
        grants: vec![Grant::RoomAdmin],
        metadata: None,
    };
    Ok(crate::token::mint(&request, &signing, now)?)
}

/// Why [`admin_token`] failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    #[error("--dev signs with an HS256 secret, and the configured key is not one")]
    NotDevKey,
    #[error(transparent)]
    Mint(#[from] crate::token::MintError),
}
