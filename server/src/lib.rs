//! Switchboard signaling server: rooms over WebSocket, JWT auth, TURN
//! credentials, a pluggable bus for scale-out. `main.rs` is a thin wrapper
//! around [`serve`]; tests call [`serve`] with their own listener and
//! shutdown future, or [`http::app`] without a socket.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod bus;
pub mod close_drain;
pub mod config;
pub mod dev_identity;
pub mod http;
pub mod hub;
pub mod in_flight;
pub mod inbox;
pub mod lifetime;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod ratelimit;
pub mod read_ahead;
pub mod request_body;
pub mod resend_order;
pub mod resume;
pub mod room;
pub mod session;
pub mod shutdown;
pub mod token;
pub mod upgrade;
pub mod user_connections;
pub mod webhook;

#[cfg(test)]
mod test_support;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use crate::bus::LocalHub;
use crate::config::Config;
use crate::http::AppState;

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Key(#[from] auth::KeyError),
    #[error("cannot start the bus: {0}")]
    Bus(#[from] bus::BusError),
    #[error("http server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Builds the shared state: metrics, hub, bus (per configuration) and the
/// token verifier.
pub async fn build_state(config: Config) -> Result<AppState, ServeError> {
    let auth = auth::Authenticator::new(&config.jwt)?
        .with_max_metadata_bytes(config.limits.max_metadata_bytes);
    let metrics = Arc::new(metrics::Metrics::default());
    let hub = Arc::new(hub::Hub::new(metrics.clone()));
    let wakes = Arc::new(webhook::Wakes::default());
    let bus = bus::from_config(
        &config,
        hub.clone() as Arc<dyn LocalHub>,
        metrics.bus(),
        wakes.clone(),
    )
    .await?;
    let webhooks = bus.event_log().map(|log| {
        Arc::new(webhook::dispatcher::Dispatcher::start(
            webhook_settings(&config),
            log,
            wakes,
            metrics.webhooks(),
            &config.instance_id,
        ))
    });
    let shutdown = Arc::new(shutdown::Shutdown::new(config.shutdown.drain_window));
    let resume = Arc::new(resume_from_config(&config));
    Ok(AppState {
        config: Arc::new(config),
        hub,
        bus,
        auth: Arc::new(auth),
        metrics,
        shutdown,
        user_connections: user_connections::UserConnections::new(),
        resume,
        started: Instant::now(),
        webhooks,
    })
}

/// The dispatcher's settings from the configuration. Scans follow the heartbeat period and a
/// held room is renewed four times per lease (the presence TTL), so a dead instance's rooms are
/// taken over about one TTL after its last renewal.
fn webhook_settings(config: &Config) -> webhook::dispatcher::Settings {
    let w = &config.webhooks;
    let timing = bus::redis::Timing::from_ttl(config.rooms.presence_ttl);
    webhook::dispatcher::Settings {
        endpoints: w
            .endpoints
            .iter()
            .filter_map(|e| {
                // Validated at load time.
                let url = e.url.expose().parse().ok()?;
                Some(webhook::dispatcher::Endpoint {
                    name: e.name.clone(),
                    url,
                    secret: e.secret.clone(),
                    filter: e.events,
                    group: webhook::endpoint_group(e.url.expose()),
                })
            })
            .collect(),
        timeout: w.timeout,
        backoff: webhook::retry::Backoff {
            initial: w.retry_initial,
            max: w.retry_max,
        },
        horizon: w.retry_horizon,
        max_in_flight: w.max_in_flight,
        scan_interval: timing.heartbeat,
        renew_interval: (timing.ttl / 4).max(std::time::Duration::from_millis(100)),
    }
}

/// The resume key and settings: the configured key, else one derived from the HS256 JWT
/// secret (the same on every replica), else a random one (resuming on this replica only).
fn resume_from_config(config: &Config) -> resume::Resume {
    let key = match (&config.resume.secret, &config.jwt.key) {
        (Some(secret), _) => secret.expose().as_bytes().to_vec(),
        (None, config::JwtKey::Secret(secret)) => {
            resume::derive_key(Some(secret.expose().as_bytes())).0
        }
        (None, config::JwtKey::PublicKeyPem(_)) => {
            if (config.redis.url.is_some() || config.redis.cluster_urls.is_some())
                && !config.resume.grace.is_zero()
            {
                tracing::warn!("resume.secret is not set and the JWT key is public: resume tokens are valid on this instance only; set resume.secret to the same value on every instance");
            }
            resume::derive_key(None).0
        }
    };
    resume::Resume::new(
        key,
        config.resume.grace,
        inbox::InboxLimits {
            max_messages: config.resume.inbox_messages,
            max_bytes: config.resume.inbox_bytes,
        },
    )
}

/// Serves until `shutdown` completes, then drains (see [`shutdown::Shutdown`])
/// and returns by `drain_timeout` at the latest.
pub async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let state = build_state(config).await?;
    serve_state(state, listener, shutdown).await
}

/// [`serve`] with a prepared state (tests inspect the state while it runs).
pub async fn serve_state(
    state: AppState,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, instance = %state.config.instance_id, bus = state.bus.health().kind, "serving");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let app = http::app(state.clone());
    // Every REST body is one client message's worth, or a metadata object
    // with its wrapper.
    let limits = &state.config.limits;
    let max_body = limits
        .max_message_bytes
        .max(limits.max_metadata_bytes + 1024);
    let settings = listener::Settings::from_config(&state.config.connections, max_body);
    // Upgraded WebSockets leave hyper's connection tracking, so the
    // graceful stop below only waits for plain HTTP requests.
    let mut server = tokio::spawn(listener::run(
        listener,
        app,
        settings,
        state.metrics.clone(),
        async {
            let _ = stop_rx.await;
        },
    ));
    tokio::select! {
        () = shutdown => {}
        result = &mut server => {
            // The server stopped on its own: an accept loop error.
            return match result {
                Ok(r) => r.map_err(ServeError::Io),
                Err(e) => Err(ServeError::Io(std::io::Error::other(e))),
            };
        }
    }
    let deadline = tokio::time::Instant::now() + state.config.shutdown.drain_timeout;
    let drained = tokio::time::timeout_at(
        deadline,
        state
            .shutdown
            .drain(&state.hub, state.config.shutdown.drain_delay),
    )
    .await;
    if drained.is_err() {
        let (rooms, participants) = state.hub.counts();
        tracing::warn!(
            rooms,
            participants,
            "drain timeout reached; exiting with sessions still open"
        );
    }
    if state.bus.numbers_deliveries() {
        // The drained clients resume on other instances, each adopting its participant (and
        // this instance letting go of it): wait for that within the drain timeout, so that
        // only who does not come back leaves.
        while state.hub.inbox_counts().0 > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    // Participants whose connection was lost wait for a resume here no longer.
    for (room, participant) in state.hub.release_detached(room::LeaveReason::Draining) {
        if let Err(e) = state
            .bus
            .leave(&room, &participant, room::LeaveReason::Draining)
            .await
        {
            tracing::warn!(error = %e, "leave not recorded on the bus");
        }
    }
    let _ = stop_tx.send(());
    if tokio::time::timeout_at(deadline, &mut server)
        .await
        .is_err()
    {
        server.abort();
    }
    // Bounded too: a bus that cannot reach its store must not hold the exit.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), state.bus.shutdown()).await;
    tracing::info!("stopped");
    Ok(())
}
