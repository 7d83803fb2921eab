//! HTTP surface: the WebSocket upgrade (origin check, token from query or
//! subprotocol, refusals as close frames), the REST endpoints with JSON
//! errors and CORS for the allowed origins, metrics and the embedded demo page. `app(state)` builds the
//! router for `serve` and for tests.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::Message;

use crate::auth::{self, AuthError, Authenticator, Identity};
use crate::bus::Bus;
use crate::close_drain;
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::{Gauges, Metrics};
use crate::protocol;
use crate::room::RoomId;
use crate::session::{self, close, AfterClose, ReadError, SessionContext, WriteError};
use crate::shutdown::Shutdown;
use crate::upgrade::{self, Upgrade, WsStream};
use crate::user_connections::{UserConnection, UserConnections};

/// Read buffer of each WebSocket, held by every participant for its whole
/// life. tungstenite's default (128 KiB) is zero-filled on the first read, so
/// every idle participant kept 128 KiB resident (measured: 144 KiB per
/// participant); signaling messages are a few hundred bytes, and a larger
/// message grows the buffer for itself. The system calls do not read into it:
/// [`crate::read_ahead::ReadAhead`] below it reads 16 KiB at a time and keeps
/// nothing once a connection is idle, so this size decides memory, not reads
/// (2 KiB: 10.0 KiB per idle participant at 10,000; 1 KiB: 9.0 KiB, the same
/// relay rate).
const WS_READ_BUFFER_BYTES: usize = 1024;

/// The subprotocol clients must offer; the token travels next to it as `bearer.<jwt>`.
pub const SUBPROTOCOL: &str = "switchboard.v1";
const BEARER_PROTOCOL_PREFIX: &str = "bearer.";

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub hub: Arc<Hub>,
    pub bus: Arc<dyn Bus>,
    pub auth: Arc<Authenticator>,
    pub metrics: Arc<Metrics>,
    pub shutdown: Arc<Shutdown>,
    /// Each user's open connections on this instance.
    pub user_connections: Arc<UserConnections>,
    /// Resume tokens and settings.
    pub resume: Arc<crate::resume::Resume>,
    pub started: Instant,
    /// Delivers webhook events while it lives; `None` without endpoints.
    pub webhooks: Option<Arc<crate::webhook::dispatcher::Dispatcher>>,
}

impl AppState {
    fn gauges(&self) -> Gauges {
        let (rooms, participants) = self.hub.counts();
        let (held, inbox_messages) = self.hub.inbox_counts();
        Gauges {
            rooms,
            participants,
            bus_ready: self.bus.is_ready(),
            draining: self.shutdown.is_draining(),
            held,
            inbox_messages,
        }
    }

    fn is_ready(&self) -> bool {
        !self.shutdown.is_draining() && self.bus.is_ready()
    }
}

/// The router with every route.
pub fn app(state: AppState) -> Router {
    let cors = cors_layer(&state.config);
    let mut router = Router::new();
    if state.config.dev {
        // Only with `--dev`: without it the route does not exist (404).
        router = router.route(
            crate::dev_identity::PATH,
            post(crate::dev_identity::mint)
                .layer(DefaultBodyLimit::max(crate::dev_identity::MAX_BODY_BYTES)),
        );
    }
    router
        .route("/", get(index))
        .route("/switchboard.js", get(script))
        .route("/switchboard.mjs", get(module_script))
        .route("/switchboard.d.ts", get(types))
        .route("/switchboard.d.mts", get(module_types))
        .route("/webrtc/ws/{room_id}", get(ws_upgrade))
        .route("/webrtc/config", get(webrtc_config))
        .route("/webrtc/rooms/{room_id}/participants", get(participants))
        .route("/webrtc/health", get(health))
        .route("/webrtc/health/live", get(live))
        .route("/webrtc/health/ready", get(ready))
        .route("/webrtc/stats", get(stats))
        .route("/webrtc/webrtc-metrics", get(webrtc_metrics))
        .route("/metrics", get(prometheus))
        .nest(crate::api::PREFIX, crate::api::routes(&state.config))
        .layer(cors)
        .with_state(state)
}

/// How long a browser may reuse a preflight answer.
const CORS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// CORS for the same `allowed_origins` that guard the upgrade, so an app on
/// another origin can call the REST endpoints with a bearer token. The
/// upgrade itself is still refused with 403 by `ws_upgrade`: CORS only tells
/// browsers what they may read, it refuses nothing.
fn cors_layer(config: &Config) -> CorsLayer {
    let origins = match config.allowed_origins.clone() {
        None => AllowOrigin::any(),
        Some(list) => AllowOrigin::predicate(move |origin: &HeaderValue, _| {
            origin.to_str().is_ok_and(|o| origin_in_list(&list, o))
        }),
    };
    // Tokens travel in `Authorization`, never in cookies: no credentials mode.
    // `Cache-Control` and `Content-Type` are CORS-safelisted response headers,
    // readable without `expose_headers`.
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(CORS_MAX_AGE)
}

/// A JSON error response: `{"error": {"code", "message"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: &'static str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": {"code": self.code, "message": self.message}}));
        (self.status, [(header::CACHE_CONTROL, "no-store")], body).into_response()
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let status = match e {
            AuthError::RoomForbidden => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        };
        let message = match e {
            AuthError::MissingToken => "a token is required (Authorization: Bearer or ?token=)",
            AuthError::InvalidToken => "the token is invalid",
            AuthError::TokenExpired => "the token has expired",
            AuthError::InvalidAudience => "the token is not meant for this service",
            AuthError::RoomForbidden => "the token does not allow this room",
            AuthError::MetadataTooLarge => {
                "the token's metadata claim is larger than limits.max_metadata_bytes"
            }
        };
        ApiError {
            status,
            code: e.reason(),
            message,
        }
    }
}

/// The token of a REST request: `Authorization: Bearer`, else `?token=`.
pub(crate) fn rest_token<'a>(
    headers: &'a HeaderMap,
    query: &'a HashMap<String, String>,
) -> Option<&'a str> {
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    from_header.or_else(|| query.get("token").map(String::as_str))
}

/// The token of an upgrade: `?token=`, else a `bearer.<jwt>` subprotocol.
fn ws_token<'a>(headers: &'a HeaderMap, query: &'a HashMap<String, String>) -> Option<&'a str> {
    if let Some(t) = query.get("token").filter(|t| !t.is_empty()) {
        return Some(t);
    }
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| p.strip_prefix(BEARER_PROTOCOL_PREFIX))
}

fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Identity, ApiError> {
    let token = rest_token(headers, query).ok_or(AuthError::MissingToken)?;
    state.auth.verify(token).map_err(ApiError::from)
}

fn origin_allowed(config: &Config, headers: &HeaderMap) -> bool {
    let Some(allowed) = &config.allowed_origins else {
        return true;
    };
    match headers.get(header::ORIGIN).map(HeaderValue::to_str) {
        // Non-browser clients send no Origin; the check protects browsers.
        None => true,
        Some(Ok(origin)) => origin_in_list(allowed, origin),
        Some(Err(_)) => false,
    }
}

/// Whether `origin` is one of `allowed` (scheme and host are case-insensitive;
/// a trailing `/` is ignored). Shared by the upgrade check and CORS.
fn origin_in_list(allowed: &[String], origin: &str) -> bool {
    let origin = origin.trim_end_matches('/');
    allowed.iter().any(|a| a.eq_ignore_ascii_case(origin))
}

async fn ws_upgrade(
    State(state): State<AppState>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    ws: Result<Upgrade, upgrade::Refusal>,
) -> Response {
    if !origin_allowed(&state.config, &headers) {
        state.metrics.refused("origin_forbidden");
        return ApiError {
            status: StatusCode::FORBIDDEN,
            code: "origin_forbidden",
            message: "this Origin may not connect",
        }
        .into_response();
    }
    let guard = match state.shutdown.guard() {
        Some(g) if !state.shutdown.is_draining() => g,
        _ => {
            return ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "draining",
                message: "this server is shutting down; connect to another one",
            }
            .into_response()
        }
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let query = query.map(|q| q.0).unwrap_or_default();
    let resume_request = crate::resume::ResumeRequest::from_query(
        query.get("resume").map(String::as_str),
        query.get("last_seq").map(String::as_str),
    );
    let room = path.ok().and_then(|Path(raw)| RoomId::parse(&raw).ok());
    // Decide before upgrading, refuse after: browsers only expose close
    // codes and reasons, never the HTTP status of a failed upgrade.
    let decision = match room {
        None => Err("invalid_room_id"),
        Some(room) => state
            .auth
            .authorize(ws_token(&headers, &query), &room)
            .map_err(AuthError::reason)
            .and_then(|identity| {
                // Taken before the upgrade so that a burst of upgrades counts
                // at once; the slot is freed when the connection ends however
                // it ends (a failed upgrade drops it with the callback).
                let cap = state.config.limits.max_user_connections_per_instance;
                match state.user_connections.try_open(&identity.user_id, cap) {
                    Some(slot) => Ok((room, identity, slot)),
                    None => Err("user_instance_limit"),
                }
            }),
    };
    let limits = &state.config.limits;
    let limit = limits.max_message_bytes;
    let config = WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit))
        // tungstenite answers every ping with a pong into this buffer; with
        // no bound, a client that pings and never reads grows it forever.
        .write_buffer_size(WS_WRITE_BATCH)
        .max_write_buffer_size(WS_WRITE_BATCH + limits.write_buffer_bytes)
        .read_buffer_size(WS_READ_BUFFER_BYTES);
    // Browsers fail a connection whose answer names a protocol they did not
    // offer, so it is echoed only when offered (a token-only offer gets none).
    let protocol = upgrade::offers_protocol(&headers, SUBPROTOCOL).then_some(SUBPROTOCOL);
    ws.accept(protocol, config, move |socket| {
        handle_socket(state, decision, resume_request, guard, socket)
    })
}

/// Bytes tungstenite collects before writing to the socket (its default);
/// `limits.write_buffer_bytes` is the room it may use beyond that.
const WS_WRITE_BATCH: usize = 128 * 1024;

fn classify(e: tungstenite::Error) -> ReadError {
    use tungstenite::error::ProtocolError as P;
    match e {
        tungstenite::Error::Capacity(_) => ReadError::TooBig,
        tungstenite::Error::Utf8(_) => ReadError::InvalidUtf8,
        // Frames RFC 6455 forbids; tungstenite has consumed each one whole.
        tungstenite::Error::Protocol(
            P::NonZeroReservedBits
            | P::UnmaskedFrameFromClient
            | P::FragmentedControlFrame
            | P::ControlFrameTooBig
            | P::UnknownControlFrameType(_)
            | P::UnknownDataFrameType(_)
            | P::UnexpectedContinueFrame
            | P::ExpectedFragment(_)
            | P::InvalidOpcode(_)
            | P::InvalidCloseSequence,
        ) => ReadError::Protocol,
        // Resets, EOF without a close, I/O errors: nobody left to tell.
        _ => ReadError::Transport,
    }
}

fn classify_write(e: tungstenite::Error) -> WriteError {
    match e {
        tungstenite::Error::WriteBufferFull(_) => WriteError::BufferFull,
        _ => WriteError::Closed,
    }
}

/// The socket's task: a refused upgrade gets its close, an accepted one its session.
/// Not `async` itself: what only the start needs (the app state, the decision, the
/// socket before its split) is used up here instead of being kept, as an `async fn`
/// keeps its arguments, for the whole life of the connection.
fn handle_socket(
    state: AppState,
    decision: Result<(RoomId, Identity, UserConnection), &'static str>,
    resume_request: Option<crate::resume::ResumeRequest>,
    guard: crate::shutdown::DrainGuard,
    socket: WsStream,
) -> impl std::future::Future<Output = ()> + Send {
    let (sink, stream) = socket.split();
    let sink = session::ClassifyErrors::new(sink, classify_write as fn(_) -> _);
    let stream = stream.map(classify_read as fn(_) -> _);
    let close_timeout = state.config.limits.close_timeout;
    let start = match decision {
        Ok((room, identity, slot)) => Ok((
            Arc::new(SessionContext {
                room,
                identity,
                hub: state.hub.clone(),
                bus: state.bus.clone(),
                auth: state.auth.clone(),
                metrics: state.metrics.clone(),
                limits: state.config.limits.clone(),
                max_participants: state.config.rooms.max_participants,
                max_user_connections: state.config.rooms.max_user_connections,
                instance_id: state.config.instance_id.clone(),
                shutdown: state.shutdown.clone(),
                resume: state.resume.clone(),
                resume_request,
            }),
            // Lives until the session has ended.
            slot,
        )),
        Err(reason) => Err((reason, state.metrics.clone())),
    };
    serve_socket(start, guard, sink, stream, close_timeout)
}

type WsSink = session::ClassifyErrors<
    futures_util::stream::SplitSink<WsStream, Message>,
    fn(tungstenite::Error) -> WriteError,
>;
type WsRead = futures_util::stream::Map<
    futures_util::stream::SplitStream<WsStream>,
    fn(Result<Message, tungstenite::Error>) -> Result<Message, ReadError>,
>;

/// What [`serve_socket`] starts from: the session's context and the user's connection slot,
/// or why the upgrade was refused.
type SocketStart = Result<(Arc<SessionContext>, UserConnection), (&'static str, Arc<Metrics>)>;

async fn serve_socket(
    start: SocketStart,
    guard: crate::shutdown::DrainGuard,
    mut sink: WsSink,
    mut stream: WsRead,
    close_timeout: std::time::Duration,
) {
    let (ctx, _slot) = match start {
        Ok(ok) => ok,
        Err((reason, metrics)) => {
            tracing::info!(reason, "upgrade refused");
            metrics.refused(reason);
            session::close_handshake(
                &mut sink,
                &mut stream,
                Vec::new(),
                (close::POLICY, reason),
                AfterClose::Drain,
                close_timeout,
            )
            .await;
            return;
        }
    };
    let end = session::run_shared(ctx, guard, &mut sink, &mut stream).await;
    if let Some(AfterClose::Raw { aligned }) = end.map(session::End::after_close) {
        // The close frame is out; tungstenite reads nothing more, so the
        // client's answer is read from the socket itself.
        let Ok(mut socket) = stream.into_inner().reunite(sink.into_inner()) else {
            return;
        };
        let ended = close_drain::finish(socket.get_mut(), aligned, close_timeout).await;
        tracing::debug!(?ended, "connection closed after a read error");
    }
}

fn classify_read(r: Result<Message, tungstenite::Error>) -> Result<Message, ReadError> {
    r.map_err(classify)
}

async fn webrtc_config(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let identity = authenticate(&state, &headers, &query)?;
    let ice = &state.config.ice;
    let mut servers = Vec::new();
    if !ice.stun_urls.is_empty() {
        servers.push(json!({"urls": ice.stun_urls}));
    }
    if !ice.turn_urls.is_empty() {
        if let Some(secret) = &ice.turn_secret {
            let cred = auth::turn_credential(
                secret.expose().as_bytes(),
                &identity.user_id,
                auth::now_unix(),
                ice.turn_credential_ttl,
                identity.expires_at,
            );
            servers.push(json!({"urls": ice.turn_urls, "username": cred.username, "credential": cred.credential}));
        } else if let (Some(u), Some(c)) = (&ice.turn_username, &ice.turn_credential) {
            servers.push(json!({"urls": ice.turn_urls, "username": u, "credential": c.expose()}));
        } else {
            servers.push(json!({"urls": ice.turn_urls}));
        }
    }
    let body = json!({
        "iceServers": servers,
        "iceTransportPolicy": ice.ice_transport_policy,
        "bundlePolicy": ice.bundle_policy,
        "rtcpMuxPolicy": ice.rtcp_mux_policy,
    });
    // Credentials inside: no cache may keep them.
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
}

async fn participants(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let identity = authenticate(&state, &headers, &query)?;
    let room = RoomId::parse(&raw).map_err(|_| ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "invalid_room_id",
        message: "room ids are 1-64 characters of A-Z, a-z, 0-9, '_' and '-'",
    })?;
    if !identity.may_join(&room) {
        return Err(AuthError::RoomForbidden.into());
    }
    let mut list = state.bus.participants(&room).await.map_err(|e| {
        tracing::warn!(error = %e, room = %room, "participants lookup failed");
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "bus_unavailable",
            message: "the participant list is temporarily unavailable",
        }
    })?;
    // Same order as room-state, whatever order the bus keeps.
    crate::room::sort_by_join(&mut list);
    let body = json!({
        "room_id": room,
        "participants": protocol::public_participants(&list),
        "participant_count": list.len(),
    });
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
}

async fn health(State(state): State<AppState>) -> Response {
    let bus = state.bus.health();
    let draining = state.shutdown.is_draining();
    let status = if draining {
        "draining"
    } else if bus.ready {
        "ok"
    } else {
        "degraded"
    };
    let (rooms, participants) = state.hub.counts();
    Json(json!({
        "status": status,
        "instance_id": state.config.instance_id,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": state.started.elapsed().as_secs(),
        "draining": draining,
        "ready": state.is_ready(),
        "bus": bus,
        "rooms": rooms,
        "connections": participants,
        // The demo page asks for a name (and mints a token at /webrtc/dev/token) only then.
        "dev": state.config.dev,
    }))
    .into_response()
}

async fn live() -> Response {
    Json(json!({"status": "alive"})).into_response()
}

async fn ready(State(state): State<AppState>) -> Response {
    if state.shutdown.is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": "draining"})),
        )
            .into_response()
    } else if !state.bus.is_ready() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": "bus_unavailable"})),
        )
            .into_response()
    } else {
        Json(json!({"status": "ready"})).into_response()
    }
}

async fn stats(State(state): State<AppState>) -> Response {
    let g = state.gauges();
    let limits = &state.config.limits;
    Json(json!({
        "instance_id": state.config.instance_id,
        "uptime_secs": state.started.elapsed().as_secs(),
        "rooms": g.rooms,
        "participants": g.participants,
        "connections": state.metrics.active_connections(),
        "draining": g.draining,
        "bus": state.bus.health(),
        "limits": {
            "max_participants_per_room": state.config.rooms.max_participants,
            // null: no limit.
            "max_user_connections_per_room": state.config.rooms.max_user_connections,
            "max_user_connections_per_instance": limits.max_user_connections_per_instance,
            "max_message_bytes": limits.max_message_bytes,
            "rate_limit_per_second": limits.rate_limit_per_second,
            "rate_limit_burst": limits.rate_limit_burst,
            "rate_limit_bytes_per_second": limits.rate_limit_bytes_per_second,
            "rate_limit_bytes_burst": limits.rate_limit_bytes_burst,
            "max_json_depth": limits.max_json_depth,
            "outbound_queue_messages": limits.outbound_queue_messages,
            "outbound_queue_bytes": limits.outbound_queue_bytes,
        },
    }))
    .into_response()
}

async fn webrtc_metrics(State(state): State<AppState>) -> Response {
    Json(state.metrics.to_json(state.gauges())).into_response()
}

async fn prometheus(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render_prometheus(state.gauges()),
    )
        .into_response()
}

async fn index() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("../static/index.html"),
    )
        .into_response()
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../static/switchboard.js"),
    )
        .into_response()
}

/// The ES module entry: imports `switchboard.js` next to it and exports its class.
async fn module_script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../static/switchboard.mjs"),
    )
        .into_response()
}

/// TypeScript declarations, served as text to download next to the app's code.
async fn types() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        include_str!("../static/switchboard.d.ts"),
    )
        .into_response()
}

async fn module_types() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        include_str!("../static/switchboard.d.mts"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::origin_in_list;

    #[test]
    fn origins_match_case_insensitively_and_ignore_a_trailing_slash() {
        let allowed = vec!["https://app.example".to_string()];
        for (origin, expected) in [
            ("https://app.example", true),
            ("HTTPS://App.Example", true),
            ("https://app.example/", true),
            ("http://app.example", false),
            ("https://app.example:8443", false),
            ("https://evil.example", false),
            ("null", false),
        ] {
            assert_eq!(origin_in_list(&allowed, origin), expected, "{origin}");
        }
    }
}
