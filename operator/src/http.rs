//! The operator's own HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (liveness:
//! the process serves) and `/readyz` (readiness: the API server answered and the controller
//! or its election loop runs). No Kubernetes I/O happens here.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    /// Flipped by `main` once startup checks passed and the election/controller loop runs.
    pub ready: Arc<AtomicBool>,
}

impl AppState {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// The router, shared by `main` and the tests.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    // A follower replica is ready too: readiness gates rollouts, not leadership.
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

/// Serves `app(state)` on an already bound listener until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get_raw(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_health_readiness_and_metrics() {
        let state = AppState::new(Arc::new(Metrics::new()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, state.clone(), async {
            let _ = rx.await;
        }));

        assert!(get_raw(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        let not_ready = get_raw(addr, "/readyz").await;
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        state.ready.store(true, Ordering::Relaxed);
        assert!(get_raw(addr, "/readyz").await.starts_with("HTTP/1.1 200"));

        state
            .metrics
            .observe_reconcile(std::time::Duration::from_millis(5), None);
        let metrics = get_raw(addr, "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(
            metrics.contains("\nswitchboard_operator_reconciles_total 1\n"),
            "{metrics}"
        );
        assert!(get_raw(addr, "/nope").await.starts_with("HTTP/1.1 404"));

        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
