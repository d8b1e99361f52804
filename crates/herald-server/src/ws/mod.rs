//! The `/v1/ws` protocol for services (docs/PROTOCOL.md).
//!
//! Per connection: the reader (this connection's task) decodes frames and acts on them; one
//! writer task owns the socket's sending half and drains a bounded queue of outbound frames; one
//! publisher task stores `pub` frames in arrival order, several at a time; one forwarding task
//! per subscription moves events from the engine to the outbound queue. Every queue is
//! bounded, so a slow socket slows only its own connection: its live subscriptions are dropped
//! by the engine as slow consumers and its group deliveries stop at `maxInFlight`.

mod connection;
mod pub_frame;
mod publisher;
pub(crate) mod rate;
mod subscriptions;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use herald_protocol::ErrorCode;
use serde::Deserialize;

use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
pub struct UpgradeQuery {
    /// For clients that cannot set headers on the upgrade request.
    token: Option<String>,
}

/// Slack over `request_bytes_max` for the frame's own fields around its events.
const FRAME_OVERHEAD_BYTES: usize = 64 * 1024;

pub async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<UpgradeQuery>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let identity = match query.token.as_deref() {
        Some(token) => state.auth.authenticate(Some(token))?,
        None => crate::http::authenticate(&state, &headers)?,
    };
    if state.shutdown.is_cancelled() {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "the server is shutting down",
        ));
    }
    let Some(slot) = state.admit_connection() else {
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            format!(
                "the server is at its limit of {} connections",
                state.config.limits.connections_max
            ),
        ));
    };
    let frame_bytes_max = state.config.limits.request_bytes_max + FRAME_OVERHEAD_BYTES;
    Ok(upgrade
        .max_message_size(frame_bytes_max)
        .max_frame_size(frame_bytes_max)
        .read_buffer_size(herald_protocol::ws::WS_READ_BUFFER_BYTES)
        .on_upgrade(move |socket| connection::run(state, identity, slot, socket))
        .into_response())
}
