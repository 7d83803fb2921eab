//! Request bodies are read whole, within a size bound and a deadline, before
//! any handler runs. hyper bounds and times only the request head: a client
//! that sends a head and then trickles its body (one byte a second), or never
//! sends it, would otherwise hold its connection and the handler's buffer for
//! as long as it likes. Reading the body here bounds that for every route,
//! present and future, with one answer: 413 `body_too_large` or 408
//! `body_timeout`, and the connection closed.
//!
//! The deadline runs from the end of the head to the last byte of the body,
//! however the bytes trickle in (a per-read timeout would be reset by every
//! byte). Requests without a body pass through untouched, so WebSocket
//! upgrades keep hyper's upgrade handle.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use axum::response::IntoResponse as _;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};

use crate::http::ApiError;

/// How large a body may be and how long it may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    pub max_bytes: usize,
    pub read_timeout: Duration,
}

/// Why a body was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRefusal {
    /// Declared or read beyond `max_bytes`: 413.
    TooLarge,
    /// Not complete within `read_timeout`: 408.
    Timeout,
    /// The body broke off or its chunked framing is invalid: 400.
    Unreadable,
}

impl BodyRefusal {
    pub fn code(self) -> &'static str {
        match self {
            BodyRefusal::TooLarge => "body_too_large",
            BodyRefusal::Timeout => "body_timeout",
            BodyRefusal::Unreadable => "invalid_body",
        }
    }

    /// The JSON error; the connection is closed after it (the rest of the
    /// body is never read).
    pub fn response(self) -> Response<Body> {
        let error = match self {
            BodyRefusal::TooLarge => ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: self.code(),
                message: "the request body is larger than this server accepts",
            },
            BodyRefusal::Timeout => ApiError {
                status: StatusCode::REQUEST_TIMEOUT,
                code: self.code(),
                message: "the request body did not arrive in time",
            },
            BodyRefusal::Unreadable => ApiError {
                status: StatusCode::BAD_REQUEST,
                code: self.code(),
                message: "the request body could not be read",
            },
        };
        let mut response = error.into_response();
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    }
}

/// The refusal for a declared body size (`Content-Length`), before reading.
pub fn check_declared(declared: Option<u64>, limits: BodyLimits) -> Result<(), BodyRefusal> {
    match declared {
        Some(n) if n > limits.max_bytes as u64 => Err(BodyRefusal::TooLarge),
        _ => Ok(()),
    }
}

/// `req` with its body read whole into memory, or why not. A request that
/// has no body is returned as it is.
pub async fn read_whole<B>(
    req: Request<B>,
    limits: BodyLimits,
) -> Result<Request<Body>, BodyRefusal>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if req.body().is_end_stream() {
        return Ok(req.map(Body::new));
    }
    check_declared(req.body().size_hint().exact(), limits)?;
    let (parts, body) = req.into_parts();
    let read = Limited::new(body, limits.max_bytes).collect();
    match tokio::time::timeout(limits.read_timeout, read).await {
        Err(_) => Err(BodyRefusal::Timeout),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(BodyRefusal::TooLarge),
        Ok(Err(_)) => Err(BodyRefusal::Unreadable),
        Ok(Ok(collected)) => Ok(Request::from_parts(parts, Body::from(collected.to_bytes()))),
    }
}

#[cfg(test)]
#[path = "request_body_tests.rs"]
mod tests;
