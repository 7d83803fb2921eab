use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use bytes::Bytes;
use http_body_util::StreamBody;

use super::*;

const LIMITS: BodyLimits = BodyLimits {
    max_bytes: 16,
    read_timeout: Duration::from_secs(10),
};

/// A body whose chunks arrive one every `gap`.
fn trickle(
    chunks: usize,
    gap: Duration,
) -> StreamBody<impl futures_util::Stream<Item = Result<http_body::Frame<Bytes>, Infallible>>> {
    let stream = futures_util::stream::unfold(0, move |n| async move {
        if n == chunks {
            return None;
        }
        tokio::time::sleep(gap).await;
        Some((Ok(http_body::Frame::data(Bytes::from_static(b"x"))), n + 1))
    });
    StreamBody::new(stream)
}

async fn body_of(req: Request<Body>) -> Bytes {
    axum::body::to_bytes(req.into_body(), 1024).await.unwrap()
}

#[tokio::test]
async fn a_body_within_the_bounds_is_read_whole() {
    let req = Request::new(Body::from("0123456789abcdef"));
    let req = read_whole(req, LIMITS).await.unwrap();
    assert_eq!(body_of(req).await, "0123456789abcdef");
    let req = read_whole(Request::new(Body::empty()), LIMITS)
        .await
        .unwrap();
    assert!(body_of(req).await.is_empty());
}

#[tokio::test]
async fn a_larger_body_is_refused_declared_or_streamed() {
    let req = Request::new(Body::from("0123456789abcdef!"));
    assert_eq!(
        read_whole(req, LIMITS).await.unwrap_err(),
        BodyRefusal::TooLarge
    );
    // No declared length (chunked): refused once the bound is passed.
    let req = Request::new(trickle(17, Duration::ZERO));
    assert_eq!(
        read_whole(req, LIMITS).await.unwrap_err(),
        BodyRefusal::TooLarge
    );
    assert_eq!(check_declared(Some(17), LIMITS), Err(BodyRefusal::TooLarge));
    assert_eq!(check_declared(Some(16), LIMITS), Ok(()));
    assert_eq!(check_declared(None, LIMITS), Ok(()));
}

/// One byte a second never resets the deadline: it runs from the head to the last byte.
#[tokio::test(start_paused = true)]
async fn a_trickled_body_times_out_at_the_deadline_not_per_byte() {
    let started = tokio::time::Instant::now();
    let req = Request::new(trickle(16, Duration::from_secs(1)));
    assert_eq!(
        read_whole(req, LIMITS).await.unwrap_err(),
        BodyRefusal::Timeout
    );
    assert_eq!(started.elapsed(), LIMITS.read_timeout);
    // The same body at a byte every half second is complete after 8 s: accepted.
    let req = Request::new(trickle(16, Duration::from_millis(500)));
    assert_eq!(
        body_of(read_whole(req, LIMITS).await.unwrap()).await.len(),
        16
    );
}

#[tokio::test]
async fn refusals_are_json_and_close_the_connection() {
    for (refusal, status, code) in [
        (
            BodyRefusal::TooLarge,
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            BodyRefusal::Timeout,
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
        ),
        (
            BodyRefusal::Unreadable,
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
    ] {
        let response = refusal.response();
        assert_eq!(response.status(), status);
        assert_eq!(response.headers()[header::CONNECTION], "close");
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["code"], code, "{json}");
    }
}
