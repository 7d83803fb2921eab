//! The server API for application backends, under [`PREFIX`]: list rooms, inspect one, remove
//! a participant or every connection of a user, close a room, send a `server-message`, replace
//! a participant's metadata, and the OpenAPI document generated from these handlers
//! ([`openapi`]). Every call needs a bearer JWT signed with the server's key that carries
//! `"grants": {"room_admin": true}`; its `rooms` claim limits the rooms it may act on
//! ([`admin_access`], pure). Reads come from the bus's presence records; an action is handed
//! to the bus (the other instances with participants in the room apply it) and then applied
//! to this instance's participants by the hub, so on the Redis bus any instance acts for the
//! whole cluster. Errors are the JSON errors of the rest of the REST surface ([`ApiError`]).

use std::collections::HashMap;

use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::auth::{AuthError, Identity, MAX_IDENTITY_CHARS};
use crate::bus::{BusError, RoomAction, RoomRecord};
use crate::config::Config;
use crate::http::{rest_token, ApiError, AppState};
use crate::protocol;
use crate::room::{metadata_bytes, Metadata, ParticipantInfo, RoomId};

/// Where the server API lives.
pub const PREFIX: &str = "/webrtc/api/v1";

/// The server API's routes, relative to [`PREFIX`]. Request bodies are bounded by
/// `limits.max_message_bytes` (a larger one gets 413 before it is read whole).
pub fn routes(config: &Config) -> Router<AppState> {
    Router::new()
        .route("/rooms", get(list_rooms))
        .route("/rooms/{room_id}", get(get_room).delete(close_room))
        .route(
            "/rooms/{room_id}/participants/{participant_id}",
            delete(remove_participant).patch(update_participant),
        )
        .route("/rooms/{room_id}/messages", post(send_message))
        .route("/users/{user_id}/connections", delete(disconnect_user))
        .route("/openapi.json", get(openapi_json))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(config.limits.max_message_bytes))
}

/// Why a verified token may not make a server API call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `grants.room_admin`: a participant token.
    GrantRequired,
    /// The grant's `rooms` claim does not name this room.
    RoomForbidden,
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::GrantRequired => ApiError {
                status: StatusCode::FORBIDDEN,
                code: "grant_required",
                message:
                    "the token carries no room_admin grant (\"grants\": {\"room_admin\": true})",
            },
            Refusal::RoomForbidden => ApiError {
                status: StatusCode::FORBIDDEN,
                code: "room_forbidden",
                message: "the token's rooms claim does not include this room",
            },
        }
    }
}

/// Whether `identity` may call the server API, on `room` when one is named. Pure.
pub fn admin_access(identity: &Identity, room: Option<&RoomId>) -> Result<(), Refusal> {
    if !identity.room_admin {
        return Err(Refusal::GrantRequired);
    }
    match room {
        Some(room) if !identity.may_join(room) => Err(Refusal::RoomForbidden),
        _ => Ok(()),
    }
}

/// The token of a server API call: `Authorization: Bearer` only. An admin token in a URL
/// would end up in access logs and browser history.
fn admin(state: &AppState, headers: &HeaderMap) -> Result<Identity, ApiError> {
    let no_query = HashMap::new();
    let token = rest_token(headers, &no_query).ok_or(AuthError::MissingToken)?;
    let identity = state.auth.verify(token)?;
    admin_access(&identity, None)?;
    Ok(identity)
}

/// The room of a path, checked against the token's grant.
fn room_in_path(
    identity: &Identity,
    path: Result<Path<String>, PathRejection>,
) -> Result<RoomId, ApiError> {
    let raw = path.map(|Path(raw)| raw).map_err(|_| INVALID_ROOM_ID)?;
    allowed_room(identity, &raw)
}

/// The room and participant of a path, the room checked against the token's grant.
fn participant_in_path(
    identity: &Identity,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<(RoomId, String), ApiError> {
    let (raw, participant_id) = path.map(|Path(p)| p).map_err(|_| INVALID_ROOM_ID)?;
    Ok((allowed_room(identity, &raw)?, participant_id))
}

fn allowed_room(identity: &Identity, raw: &str) -> Result<RoomId, ApiError> {
    let room = RoomId::parse(raw).map_err(|_| INVALID_ROOM_ID)?;
    admin_access(identity, Some(&room))?;
    Ok(room)
}

/// The room's presence record, or 404.
async fn find_room(state: &AppState, room: &RoomId) -> Result<RoomRecord, ApiError> {
    state
        .bus
        .room(room)
        .await
        .map_err(|e| bus_unavailable(&e))?
        .ok_or(ROOM_NOT_FOUND)
}

fn find_participant<'a>(
    record: &'a RoomRecord,
    participant_id: &str,
) -> Result<&'a ParticipantInfo, ApiError> {
    record
        .participants
        .iter()
        .find(|p| p.participant_id == participant_id)
        .ok_or(PARTICIPANT_NOT_FOUND)
}

/// Carries an action to the other instances first (a bus that certainly did not take it
/// leaves nothing half done: 503 `bus_unavailable`, retry), then applies it to this instance's
/// participants. When Redis may have carried it without confirming (`delivery_unknown`), other
/// instances may act on it, so this one does too, and the caller hears that it is unconfirmed.
async fn act(state: &AppState, action: RoomAction) -> Result<(), ApiError> {
    match state.bus.act(action.clone()).await {
        Ok(()) => {
            state.hub.apply(&action);
            Ok(())
        }
        Err(e @ BusError::DeliveryUnknown { .. }) => {
            state.hub.apply(&action);
            tracing::warn!(error = %e, "server API: action not confirmed by the bus");
            Err(DELIVERY_UNKNOWN)
        }
        Err(e) => Err(bus_unavailable(&e)),
    }
}

const DELIVERY_UNKNOWN: ApiError = ApiError {
    status: StatusCode::SERVICE_UNAVAILABLE,
    code: "delivery_unknown",
    message:
        "the bus did not confirm the action: servers may have applied it; check before retrying",
};

/// The request body as UTF-8 text: 413 `body_too_large` over `limits.max_message_bytes`,
/// else 400 `invalid_body` for what cannot be read.
fn body_text(body: &Result<Bytes, BytesRejection>, invalid: ApiError) -> Result<&str, ApiError> {
    match body {
        Ok(bytes) => std::str::from_utf8(bytes).map_err(|_| invalid),
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "body_too_large",
            message: "the request body is larger than limits.max_message_bytes",
        }),
        Err(_) => Err(invalid),
    }
}

const INVALID_ROOM_ID: ApiError = ApiError {
    status: StatusCode::BAD_REQUEST,
    code: "invalid_room_id",
    message: "room ids are 1-64 characters of A-Z, a-z, 0-9, '_' and '-'",
};

const ROOM_NOT_FOUND: ApiError = ApiError {
    status: StatusCode::NOT_FOUND,
    code: "room_not_found",
    message: "nobody is in this room",
};

const PARTICIPANT_NOT_FOUND: ApiError = ApiError {
    status: StatusCode::NOT_FOUND,
    code: "participant_not_found",
    message: "no participant with this id is in the room",
};

const USER_NOT_FOUND: ApiError = ApiError {
    status: StatusCode::NOT_FOUND,
    code: "user_not_found",
    message: "this user has no connection in any room the token allows",
};

const INVALID_USER_ID: ApiError = ApiError {
    status: StatusCode::BAD_REQUEST,
    code: "invalid_user_id",
    message: "user ids are 1-256 characters",
};

const INVALID_MESSAGE_BODY: ApiError = ApiError {
    status: StatusCode::BAD_REQUEST,
    code: "invalid_body",
    message:
        "the body must be a JSON object {\"payload\": any JSON, \"to\": participant id (optional)}",
};

const TOO_DEEP: ApiError = ApiError {
    status: StatusCode::BAD_REQUEST,
    code: "invalid_body",
    message: "the body nests arrays and objects deeper than limits.max_json_depth",
};

const INVALID_METADATA_BODY: ApiError = ApiError {
    status: StatusCode::BAD_REQUEST,
    code: "invalid_body",
    message: "the body must be a JSON object {\"metadata\": object or null}",
};

const METADATA_TOO_LARGE: ApiError = ApiError {
    status: StatusCode::PAYLOAD_TOO_LARGE,
    code: "metadata_too_large",
    message: "the metadata is larger than limits.max_metadata_bytes (compact JSON)",
};

fn bus_unavailable(e: &BusError) -> ApiError {
    tracing::warn!(error = %e, "server API: bus unavailable");
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "bus_unavailable",
        message: "the bus is temporarily unavailable; retry",
    }
}

/// A JSON answer no cache may keep (it describes who is online right now).
fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    (status, [(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

/// A participant as the server API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Participant {
    /// Server-assigned id of this connection.
    pub participant_id: String,
    /// The token's `sub`.
    pub user_id: String,
    /// The token's `name` (else the user id).
    pub username: String,
    /// When it joined, RFC 3339 UTC with milliseconds.
    pub joined_at: String,
    /// Application data: the token's `metadata` claim or the last update through this API.
    /// Absent when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<crate::room::Metadata>,
}

impl From<&ParticipantInfo> for Participant {
    fn from(p: &ParticipantInfo) -> Self {
        Participant {
            participant_id: p.participant_id.clone(),
            user_id: p.user_id.clone(),
            username: p.username.clone(),
            joined_at: p.joined_at.clone(),
            metadata: p.metadata.clone(),
        }
    }
}

/// One room in the list.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoomSummary {
    pub room_id: String,
    /// When its first participant joined (RFC 3339 UTC with milliseconds).
    pub created_at: String,
    /// Participants across every instance.
    pub participant_count: usize,
}

/// `GET /rooms`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoomList {
    /// Rooms with at least one participant, by room id.
    pub rooms: Vec<RoomSummary>,
}

/// `GET /rooms/{room_id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Room {
    pub room_id: String,
    /// When its first participant joined (RFC 3339 UTC with milliseconds).
    pub created_at: String,
    pub participant_count: usize,
    /// Every participant, in join order.
    pub participants: Vec<Participant>,
}

impl From<&RoomRecord> for Room {
    fn from(r: &RoomRecord) -> Self {
        Room {
            room_id: r.room_id.to_string(),
            created_at: r.created_at.clone(),
            participant_count: r.participants.len(),
            participants: r.participants.iter().map(Participant::from).collect(),
        }
    }
}

/// One connection a removal closed.
#[derive(Debug, Serialize, ToSchema)]
pub struct RemovedConnection {
    pub room_id: String,
    pub participant_id: String,
    pub user_id: String,
}

impl RemovedConnection {
    fn new(room: &RoomId, p: &ParticipantInfo) -> Self {
        RemovedConnection {
            room_id: room.to_string(),
            participant_id: p.participant_id.clone(),
            user_id: p.user_id.clone(),
        }
    }
}

/// What a removal or a room close closed. The connections close asynchronously, each
/// right after the messages already queued for it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Removal {
    pub removed: Vec<RemovedConnection>,
}

/// `POST /rooms/{room_id}/messages`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct MessageRequest {
    /// A participant id: only that participant gets the message. Absent or null: every
    /// participant of the room.
    #[serde(default)]
    pub to: Option<String>,
    /// Any JSON value, delivered unchanged as the message's `payload`.
    #[schema(value_type = Value)]
    pub payload: Box<RawValue>,
}

/// The message was handed to every instance with participants in the room.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageAccepted {
    pub room_id: String,
    /// Participants it is addressed to (1 with `to`).
    pub recipients: usize,
}

/// `PATCH /rooms/{room_id}/participants/{participant_id}`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct MetadataUpdate {
    /// Replaces the participant's metadata whole (at most `limits.max_metadata_bytes` as
    /// compact JSON); `null` removes it. Required.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Metadata>,
}

/// The 401 every endpoint can answer (in the OpenAPI document only: handlers answer
/// [`ApiError`]).
#[derive(utoipa::IntoResponses)]
#[response(
    status = 401,
    description = "No token, or the token is invalid or expired (`missing_token`, `invalid_token`, `token_expired`, `invalid_audience`)"
)]
#[allow(dead_code)] // describes responses, never built
struct Unauthorized(ErrorBody);

/// The refusals every action on a room can answer besides [`Unauthorized`] (in the OpenAPI
/// document only).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // describes responses, never built
enum RoomActionErrors {
    #[response(status = 403, description = "`grant_required` or `room_forbidden`")]
    Forbidden(ErrorBody),
    #[response(
        status = 503,
        description = "`bus_unavailable`: nothing was done, retry; `delivery_unknown`: the bus did not confirm the action, servers may have applied it"
    )]
    Unavailable(ErrorBody),
}

/// Every error: a stable code and a human-readable message.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `missing_token`, `grant_required`, `room_not_found`, ...
    pub code: String,
    pub message: String,
}

/// List the rooms that have participants.
///
/// Rooms with at least one participant anywhere in the cluster, with their participant
/// counts and creation times. A grant limited by a `rooms` claim lists only those rooms.
#[utoipa::path(
    get,
    path = "/webrtc/api/v1/rooms",
    tag = "rooms",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The rooms", body = RoomList),
        Unauthorized,
        (status = 403, description = "The token carries no `room_admin` grant (`grant_required`)", body = ErrorBody),
        (status = 503, description = "The bus is unavailable (`bus_unavailable`)", body = ErrorBody),
    )
)]
async fn list_rooms(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let identity = admin(&state, &headers)?;
    let rooms = state.bus.rooms().await.map_err(|e| bus_unavailable(&e))?;
    let rooms = rooms
        .iter()
        .filter(|r| identity.may_join(&r.room_id))
        .map(|r| RoomSummary {
            room_id: r.room_id.to_string(),
            created_at: r.created_at.clone(),
            participant_count: r.participants.len(),
        })
        .collect();
    Ok(json(StatusCode::OK, &RoomList { rooms }))
}

/// Inspect one room.
///
/// The room's creation time and every participant, across all instances, in join order.
#[utoipa::path(
    get,
    path = "/webrtc/api/v1/rooms/{room_id}",
    tag = "rooms",
    security(("bearer" = [])),
    params(("room_id" = String, Path, description = "Room id: 1-64 characters of `A-Za-z0-9_-`")),
    responses(
        (status = 200, description = "The room", body = Room),
        (status = 400, description = "Bad room id (`invalid_room_id`)", body = ErrorBody),
        Unauthorized,
        (status = 403, description = "No `room_admin` grant (`grant_required`), or its `rooms` claim excludes the room (`room_forbidden`)", body = ErrorBody),
        (status = 404, description = "Nobody is in the room (`room_not_found`)", body = ErrorBody),
        (status = 503, description = "The bus is unavailable (`bus_unavailable`)", body = ErrorBody),
    )
)]
async fn get_room(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let identity = admin(&state, &headers)?;
    let room = room_in_path(&identity, path)?;
    let record = state
        .bus
        .room(&room)
        .await
        .map_err(|e| bus_unavailable(&e))?
        .ok_or(ROOM_NOT_FOUND)?;
    Ok(json(StatusCode::OK, &Room::from(&record)))
}

/// Remove a participant.
///
/// Closes that connection with close code 4001, reason `removed`, right after what is already
/// queued for it; the room sees `user-left` with reason `removed`. The client may reconnect
/// if its token still allows it: revoke access in your application (short-lived tokens).
#[utoipa::path(
    delete,
    path = "/webrtc/api/v1/rooms/{room_id}/participants/{participant_id}",
    tag = "participants",
    security(("bearer" = [])),
    params(
        ("room_id" = String, Path, description = "Room id"),
        ("participant_id" = String, Path, description = "The participant's id (from `room-state`, `user-joined` or `GET /rooms/{room_id}`)"),
    ),
    responses(
        (status = 200, description = "The participant is being closed", body = Removal),
        (status = 400, description = "Bad room id (`invalid_room_id`)", body = ErrorBody),
        Unauthorized,
        RoomActionErrors,
        (status = 404, description = "`room_not_found` or `participant_not_found`", body = ErrorBody),
    )
)]
async fn remove_participant(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let identity = admin(&state, &headers)?;
    let (room, participant_id) = participant_in_path(&identity, path)?;
    let record = find_room(&state, &room).await?;
    let participant = find_participant(&record, &participant_id)?;
    let removed = vec![RemovedConnection::new(&room, participant)];
    let action = RoomAction::Remove {
        room_id: room.clone(),
        participant_id,
    };
    act(&state, action).await?;
    tracing::info!(room = %room, participant = %removed[0].participant_id, "server API: participant removed");
    Ok(json(StatusCode::OK, &Removal { removed }))
}

/// Disconnect every connection of a user.
///
/// Closes each of the user's connections (every tab, every room the token allows) with close
/// code 4001, reason `removed`; each room sees `user-left` with reason `removed`.
#[utoipa::path(
    delete,
    path = "/webrtc/api/v1/users/{user_id}/connections",
    tag = "users",
    security(("bearer" = [])),
    params(("user_id" = String, Path, description = "The user id (the participant token's `sub`)")),
    responses(
        (status = 200, description = "The connections being closed", body = Removal),
        (status = 400, description = "Bad user id (`invalid_user_id`)", body = ErrorBody),
        Unauthorized,
        (status = 403, description = "No `room_admin` grant (`grant_required`)", body = ErrorBody),
        (status = 404, description = "The user has no connection in a room the token allows (`user_not_found`)", body = ErrorBody),
        (status = 503, description = "`bus_unavailable`: nothing was done, retry; `delivery_unknown`: the bus did not confirm the action, servers may have applied it", body = ErrorBody),
    )
)]
async fn disconnect_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let identity = admin(&state, &headers)?;
    let user_id = path
        .ok()
        .map(|Path(u)| u)
        .filter(|u| !u.is_empty() && u.chars().count() <= MAX_IDENTITY_CHARS)
        .ok_or(INVALID_USER_ID)?;
    let rooms = state.bus.rooms().await.map_err(|e| bus_unavailable(&e))?;
    let mut removed = Vec::new();
    for record in rooms.iter().filter(|r| identity.may_join(&r.room_id)) {
        for p in record.participants.iter().filter(|p| p.user_id == user_id) {
            let action = RoomAction::Remove {
                room_id: record.room_id.clone(),
                participant_id: p.participant_id.clone(),
            };
            act(&state, action).await?;
            removed.push(RemovedConnection::new(&record.room_id, p));
        }
    }
    if removed.is_empty() {
        return Err(USER_NOT_FOUND);
    }
    tracing::info!(user = %user_id, connections = removed.len(), "server API: user disconnected");
    Ok(json(StatusCode::OK, &Removal { removed }))
}

/// Close a room.
///
/// Closes every participant with close code 4002, reason `room_closed`. The room exists again
/// as soon as someone joins it.
#[utoipa::path(
    delete,
    path = "/webrtc/api/v1/rooms/{room_id}",
    tag = "rooms",
    security(("bearer" = [])),
    params(("room_id" = String, Path, description = "Room id")),
    responses(
        (status = 200, description = "Every participant is being closed", body = Removal),
        (status = 400, description = "Bad room id (`invalid_room_id`)", body = ErrorBody),
        Unauthorized,
        RoomActionErrors,
        (status = 404, description = "Nobody is in the room (`room_not_found`)", body = ErrorBody),
    )
)]
async fn close_room(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let identity = admin(&state, &headers)?;
    let room = room_in_path(&identity, path)?;
    let record = find_room(&state, &room).await?;
    act(
        &state,
        RoomAction::Close {
            room_id: room.clone(),
        },
    )
    .await?;
    let removed: Vec<RemovedConnection> = record
        .participants
        .iter()
        .map(|p| RemovedConnection::new(&room, p))
        .collect();
    tracing::info!(room = %room, participants = removed.len(), "server API: room closed");
    Ok(json(StatusCode::OK, &Removal { removed }))
}

/// Send a message into a room.
///
/// Delivers `{"type": "server-message", "payload": <payload>, "sender_id": null, "to": null,
/// ...}` to every participant of the room, or only to the one named in `to`.
#[utoipa::path(
    post,
    path = "/webrtc/api/v1/rooms/{room_id}/messages",
    tag = "rooms",
    security(("bearer" = [])),
    params(("room_id" = String, Path, description = "Room id")),
    request_body(content = MessageRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Handed to every instance with participants in the room", body = MessageAccepted),
        (status = 400, description = "`invalid_room_id`, or the body is not `{\"payload\", \"to\"?}` or nests too deep (`invalid_body`)", body = ErrorBody),
        Unauthorized,
        RoomActionErrors,
        (status = 404, description = "`room_not_found`, or `to` names nobody in the room (`participant_not_found`)", body = ErrorBody),
        (status = 413, description = "The body is larger than `limits.max_message_bytes` (`body_too_large`)", body = ErrorBody),
    )
)]
async fn send_message(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let identity = admin(&state, &headers)?;
    let room = room_in_path(&identity, path)?;
    let text = body_text(&body, INVALID_MESSAGE_BODY)?;
    // The payload reaches every recipient's JSON parser, like a relayed client message.
    if protocol::nests_deeper_than(text, state.config.limits.max_json_depth) {
        return Err(TOO_DEEP);
    }
    let request: MessageRequest = serde_json::from_str(text).map_err(|_| INVALID_MESSAGE_BODY)?;
    let record = find_room(&state, &room).await?;
    let recipients = match &request.to {
        Some(to) => {
            find_participant(&record, to)?;
            1
        }
        None => record.participants.len(),
    };
    let frame = protocol::encode_server_message(room.as_str(), &request.payload);
    let action = RoomAction::Message {
        room_id: room.clone(),
        to: request.to,
        frame,
    };
    act(&state, action).await?;
    let accepted = MessageAccepted {
        room_id: room.to_string(),
        recipients,
    };
    Ok(json(StatusCode::ACCEPTED, &accepted))
}

/// Replace a participant's metadata.
///
/// The room (the participant included) gets `participant-updated` with the participant's new
/// record; later `room-state`s, `user-left` and the participant lists carry it.
#[utoipa::path(
    patch,
    path = "/webrtc/api/v1/rooms/{room_id}/participants/{participant_id}",
    tag = "participants",
    security(("bearer" = [])),
    params(
        ("room_id" = String, Path, description = "Room id"),
        ("participant_id" = String, Path, description = "The participant's id"),
    ),
    request_body(content = MetadataUpdate, content_type = "application/json"),
    responses(
        (status = 200, description = "The participant with its new metadata", body = Participant),
        (status = 400, description = "`invalid_room_id`, or the body is not `{\"metadata\": object or null}` (`invalid_body`)", body = ErrorBody),
        Unauthorized,
        RoomActionErrors,
        (status = 404, description = "`room_not_found` or `participant_not_found`", body = ErrorBody),
        (status = 413, description = "`metadata_too_large` (over `limits.max_metadata_bytes`) or `body_too_large`", body = ErrorBody),
    )
)]
async fn update_participant(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let identity = admin(&state, &headers)?;
    let (room, participant_id) = participant_in_path(&identity, path)?;
    let text = body_text(&body, INVALID_METADATA_BODY)?;
    let metadata = parse_metadata_update(text)?;
    if metadata
        .as_ref()
        .is_some_and(|m| metadata_bytes(m) > state.config.limits.max_metadata_bytes)
    {
        return Err(METADATA_TOO_LARGE);
    }
    let record = find_room(&state, &room).await?;
    find_participant(&record, &participant_id)?;
    let updated = state
        .bus
        .update_metadata(&room, &participant_id, metadata)
        .await
        .map_err(|e| bus_unavailable(&e))?
        .ok_or(PARTICIPANT_NOT_FOUND)?;
    let view = Participant::from(&updated);
    let action = RoomAction::Updated {
        room_id: room,
        participant: updated,
    };
    act(&state, action).await?;
    Ok(json(StatusCode::OK, &view))
}

/// `{"metadata": {...}}` or `{"metadata": null}`; the key is required, so an empty body never
/// clears metadata by accident. Pure.
fn parse_metadata_update(text: &str) -> Result<Option<Metadata>, ApiError> {
    let body: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|_| INVALID_METADATA_BODY)?;
    match body.get("metadata") {
        Some(serde_json::Value::Object(m)) => Ok(Some(m.clone())),
        Some(serde_json::Value::Null) => Ok(None),
        _ => Err(INVALID_METADATA_BODY),
    }
}

async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_text()).into_response()
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        message: "no such server API endpoint; see /webrtc/api/v1/openapi.json",
    }
}

/// Declares the bearer JWT every operation uses.
struct BearerJwt;

impl Modify for BearerJwt {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.bearer_format = Some("JWT".into());
        http.description = Some(
            "A JWT signed with the server's key carrying \"grants\": {\"room_admin\": true}; \
             an optional \"rooms\" claim limits the rooms it may act on."
                .into(),
        );
        components.add_security_scheme("bearer", SecurityScheme::Http(http));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchboard server API",
        description = "Room administration for application backends: list and inspect rooms, \
                       remove participants or every connection of a user, close rooms, send \
                       server messages, replace participant metadata. On the Redis bus every \
                       call acts on the whole cluster, whichever instance answers it.",
        license(name = "Apache-2.0"),
    ),
    paths(
        list_rooms,
        get_room,
        close_room,
        send_message,
        remove_participant,
        update_participant,
        disconnect_user
    ),
    components(schemas(
        RoomList,
        RoomSummary,
        Room,
        Participant,
        Removal,
        RemovedConnection,
        MessageRequest,
        MessageAccepted,
        MetadataUpdate,
        ErrorBody,
        ErrorDetail
    )),
    modifiers(&BearerJwt),
    tags(
        (name = "rooms", description = "Rooms: list, inspect, close, message"),
        (name = "participants", description = "One participant: remove, replace its metadata"),
        (name = "users", description = "Every connection of one user"),
    ),
)]
struct ApiDoc;

/// The OpenAPI document of the server API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// [`openapi`] as served and as committed in `docs/openapi.json` (pretty JSON, one trailing
/// newline).
pub fn openapi_text() -> String {
    let mut text = openapi().to_pretty_json().unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::RoomAccess;

    fn identity(room_admin: bool, rooms: RoomAccess) -> Identity {
        Identity {
            user_id: "backend".into(),
            username: "backend".into(),
            expires_at: u64::MAX,
            rooms,
            room_admin,
            metadata: None,
        }
    }

    #[test]
    fn only_a_room_admin_grant_opens_the_api_and_its_rooms_limit_it() {
        let (a, b) = (RoomId::parse("a").unwrap(), RoomId::parse("b").unwrap());
        let only_a = RoomAccess::Only(vec!["a".into()]);
        let cases = [
            (
                identity(false, RoomAccess::All),
                None,
                Err(Refusal::GrantRequired),
            ),
            (
                identity(false, RoomAccess::All),
                Some(&a),
                Err(Refusal::GrantRequired),
            ),
            (identity(true, RoomAccess::All), None, Ok(())),
            (identity(true, RoomAccess::All), Some(&b), Ok(())),
            (identity(true, only_a.clone()), None, Ok(())),
            (identity(true, only_a.clone()), Some(&a), Ok(())),
            (
                identity(true, only_a),
                Some(&b),
                Err(Refusal::RoomForbidden),
            ),
        ];
        for (who, room, want) in cases {
            assert_eq!(admin_access(&who, room), want, "{who:?} on {room:?}");
        }
    }

    #[test]
    fn refusals_are_403_with_their_codes() {
        let e = ApiError::from(Refusal::GrantRequired);
        assert_eq!(
            (e.status, e.code),
            (StatusCode::FORBIDDEN, "grant_required")
        );
        let e = ApiError::from(Refusal::RoomForbidden);
        assert_eq!(
            (e.status, e.code),
            (StatusCode::FORBIDDEN, "room_forbidden")
        );
    }

    #[test]
    fn a_metadata_update_names_an_object_or_null() {
        let meta = parse_metadata_update(r#"{"metadata": {"a": 1}}"#).unwrap();
        assert_eq!(meta.unwrap()["a"], 1);
        assert_eq!(
            parse_metadata_update(r#"{"metadata": null}"#).unwrap(),
            None
        );
        for bad in [
            "{}",
            r#"{"metadata": [1]}"#,
            r#"{"metadata": "x"}"#,
            "[]",
            "",
            "nope",
        ] {
            let e = parse_metadata_update(bad).unwrap_err();
            assert_eq!(
                (e.status, e.code),
                (StatusCode::BAD_REQUEST, "invalid_body"),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_document_lists_every_route_with_bearer_security() {
        let doc: serde_json::Value = serde_json::from_str(&openapi_text()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for (path, methods) in [
            ("/webrtc/api/v1/rooms", &["get"][..]),
            ("/webrtc/api/v1/rooms/{room_id}", &["get", "delete"][..]),
            ("/webrtc/api/v1/rooms/{room_id}/messages", &["post"][..]),
            (
                "/webrtc/api/v1/rooms/{room_id}/participants/{participant_id}",
                &["delete", "patch"][..],
            ),
            (
                "/webrtc/api/v1/users/{user_id}/connections",
                &["delete"][..],
            ),
        ] {
            let ops = paths[path]
                .as_object()
                .unwrap_or_else(|| panic!("{path} missing"));
            let mut listed: Vec<&str> = ops.keys().map(String::as_str).collect();
            listed.sort_unstable();
            let mut want = methods.to_vec();
            want.sort_unstable();
            assert_eq!(listed, want, "{path}");
            let ops = paths[path]
                .as_object()
                .unwrap_or_else(|| panic!("{path} missing"));
            for (method, op) in ops {
                assert_eq!(
                    op["security"],
                    serde_json::json!([{"bearer": []}]),
                    "{method} {path}"
                );
                assert!(
                    op["responses"]["401"].is_object(),
                    "{method} {path} documents 401"
                );
            }
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }
}
