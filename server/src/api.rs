//! The server API for application backends, under [`PREFIX`]: list rooms, inspect one, and
//! the OpenAPI document generated from these handlers ([`openapi`]). Every call needs a bearer
//! JWT signed with the server's key that carries `"grants": {"room_admin": true}`; its `rooms`
//! claim limits the rooms it may act on ([`admin_access`], pure). Reads come from the bus's
//! presence records, so on the Redis bus any instance answers for the whole cluster. Errors
//! are the JSON errors of the rest of the REST surface ([`ApiError`]).

use std::collections::HashMap;

use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::auth::{AuthError, Identity};
use crate::bus::{BusError, RoomRecord};
use crate::config::Config;
use crate::http::{rest_token, ApiError, AppState};
use crate::room::{ParticipantInfo, RoomId};

/// Where the server API lives.
pub const PREFIX: &str = "/webrtc/api/v1";

/// The server API's routes, relative to [`PREFIX`]. Request bodies are bounded by
/// `limits.max_message_bytes` (a larger one gets 413 before it is read whole).
pub fn routes(config: &Config) -> Router<AppState> {
    Router::new()
        .route("/rooms", get(list_rooms))
        .route("/rooms/{room_id}", get(get_room))
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
    let room = path
        .ok()
        .and_then(|Path(raw)| RoomId::parse(&raw).ok())
        .ok_or(INVALID_ROOM_ID)?;
    admin_access(identity, Some(&room))?;
    Ok(room)
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
        (status = 401, description = "No token, or the token is invalid or expired (`missing_token`, `invalid_token`, `token_expired`, `invalid_audience`)", body = ErrorBody),
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
        (status = 401, description = "No token, or the token is invalid or expired", body = ErrorBody),
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
        description = "Room administration for application backends: list and inspect rooms. \
                       On the Redis bus every call acts on the whole cluster, whichever instance \
                       answers it.",
        license(name = "Apache-2.0"),
    ),
    paths(list_rooms, get_room),
    components(schemas(RoomList, RoomSummary, Room, Participant, ErrorBody, ErrorDetail)),
    modifiers(&BearerJwt),
    tags((name = "rooms", description = "Rooms and their participants")),
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
    fn the_document_lists_every_route_with_bearer_security() {
        let doc: serde_json::Value = serde_json::from_str(&openapi_text()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for path in ["/webrtc/api/v1/rooms", "/webrtc/api/v1/rooms/{room_id}"] {
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
