//! `POST /v1/realtime/users/{id}`, `/v1/realtime/rooms/{room}`, `/v1/realtime/broadcast`: a
//! service sends an event to browsers (PRODUCT.md §6). The body is one event as for
//! `POST /v1/events`; it is not stored (like an ephemeral subject) and needs the token's publish
//! permission on its type. The answer says how many sockets it was queued for.

use axum::Json;
use axum::extract::{Path, Request, State};
use herald_core::Event;
use herald_protocol::ErrorCode;
use herald_protocol::realtime::{RealtimeSent, Target};

use crate::auth::Identity;
use crate::error::ApiError;
use crate::http::events::authorize_events;
use crate::http::{Caller, read_body};
use crate::realtime::check_target;
use crate::state::AppState;

/// Checks and sends one event; shared with the `/v1/ws` `send` frame.
pub fn send(
    state: &AppState,
    identity: &Identity,
    target: &Target,
    mut event: Event,
) -> Result<RealtimeSent, ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "the server is shutting down",
        ));
    }
    check_target(target)?;
    authorize_events(identity, std::slice::from_mut(&mut event), false)?;
    let delivered = state.realtime.send(target, &event);
    Ok(RealtimeSent {
        id: event.id.to_string(),
        delivered: delivered as u64,
    })
}

async fn send_body(
    state: &AppState,
    identity: &Identity,
    target: Target,
    request: Request,
) -> Result<Json<RealtimeSent>, ApiError> {
    let body = read_body(state, request.into_body()).await?;
    let event = Event::from_json(&body, &state.parse_context())?;
    send(state, identity, &target, event).map(Json)
}

/// Send an event to every socket of a user.
#[utoipa::path(
    post,
    path = "/v1/realtime/users/{id}",
    tag = "realtime",
    params(("id" = String, Path, description = "The user id: the JWT's sub")),
    request_body(description = "One event, as for POST /v1/events", content = Object),
    responses(
        (status = 200, description = "Queued for `delivered` sockets; not stored", body = RealtimeSent),
        (status = 400, body = herald_protocol::ErrorBody),
        (status = 401, body = herald_protocol::ErrorBody),
        (status = 403, body = herald_protocol::ErrorBody),
        (status = 413, body = herald_protocol::ErrorBody),
    )
)]
pub async fn to_user(
    State(state): State<AppState>,
    Caller(identity): Caller,
    Path(id): Path<String>,
    request: Request,
) -> Result<Json<RealtimeSent>, ApiError> {
    send_body(&state, &identity, Target::User(id), request).await
}

/// Send an event to every socket in a room.
#[utoipa::path(
    post,
    path = "/v1/realtime/rooms/{room}",
    tag = "realtime",
    params(("room" = String, Path, description = "The room: tokens of [A-Za-z0-9_-] separated by '.' or ':', such as session:abc123; user:… is reserved")),
    request_body(description = "One event, as for POST /v1/events", content = Object),
    responses(
        (status = 200, description = "Queued for `delivered` sockets and listening service connections; not stored", body = RealtimeSent),
        (status = 400, body = herald_protocol::ErrorBody),
        (status = 401, body = herald_protocol::ErrorBody),
        (status = 403, body = herald_protocol::ErrorBody),
        (status = 413, body = herald_protocol::ErrorBody),
    )
)]
pub async fn to_room(
    State(state): State<AppState>,
    Caller(identity): Caller,
    Path(room): Path<String>,
    request: Request,
) -> Result<Json<RealtimeSent>, ApiError> {
    send_body(&state, &identity, Target::Room(room), request).await
}

/// Send an event to every connected socket.
#[utoipa::path(
    post,
    path = "/v1/realtime/broadcast",
    tag = "realtime",
    request_body(description = "One event, as for POST /v1/events", content = Object),
    responses(
        (status = 200, description = "Queued for `delivered` sockets; not stored", body = RealtimeSent),
        (status = 400, body = herald_protocol::ErrorBody),
        (status = 401, body = herald_protocol::ErrorBody),
        (status = 403, body = herald_protocol::ErrorBody),
        (status = 413, body = herald_protocol::ErrorBody),
    )
)]
pub async fn broadcast(
    State(state): State<AppState>,
    Caller(identity): Caller,
    request: Request,
) -> Result<Json<RealtimeSent>, ApiError> {
    send_body(&state, &identity, Target::Broadcast(true), request).await
}
