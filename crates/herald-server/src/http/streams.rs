//! Streams: their counters, and replay of their events.

use axum::Json;
use axum::extract::{Path, Query, State};
use herald_engine::Engine;
use herald_protocol::http::{ReplayPage, StreamInfo, StreamList};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::convert::stream_info;
use crate::error::ApiError;
use crate::http::Caller;
use crate::state::AppState;

/// Every stream with its counters.
#[utoipa::path(get, path = "/v1/streams", tag = "streams",
    responses((status = 200, body = StreamList), (status = 401, body = herald_protocol::ErrorBody)))]
pub async fn list(State(state): State<AppState>, _caller: Caller) -> Json<StreamList> {
    let streams = state
        .engine
        .streams()
        .await
        .into_iter()
        .map(stream_info)
        .collect();
    Json(StreamList { streams })
}

/// One stream's counters.
#[utoipa::path(get, path = "/v1/streams/{name}", tag = "streams",
    params(("name" = String, Path, description = "Stream name")),
    responses((status = 200, body = StreamInfo), (status = 404, body = herald_protocol::ErrorBody)))]
pub async fn one(
    State(state): State<AppState>,
    _caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<StreamInfo>, ApiError> {
    find(&state, &name).await.map(Json)
}

async fn find(state: &AppState, name: &str) -> Result<StreamInfo, ApiError> {
    state
        .engine
        .streams()
        .await
        .into_iter()
        .find(|stream| stream.name == name)
        .map(stream_info)
        .ok_or_else(|| ApiError::not_found(format!("no stream named {name:?}")))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReplayQuery {
    /// First seq to return; the stream's first retained event by default.
    from: Option<u64>,
    /// Events to return at most (100 by default).
    limit: Option<usize>,
}

const REPLAY_LIMIT_DEFAULT: usize = 100;

/// A stream's events from a seq, oldest first. Needs admin rights on the stream, or a
/// subscribe pattern covering `{name}.>`.
#[utoipa::path(get, path = "/v1/streams/{name}/events", tag = "streams",
    params(("name" = String, Path, description = "Stream name"), ReplayQuery),
    responses((status = 200, body = ReplayPage), (status = 404, body = herald_protocol::ErrorBody)))]
pub async fn replay(
    State(state): State<AppState>,
    Caller(identity): Caller,
    Path(name): Path<String>,
    query: Result<Query<ReplayQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ReplayPage>, ApiError> {
    let Query(query) = query.map_err(|error| ApiError::bad_request(error.body_text()))?;
    if identity.check_admin(&name).is_err() {
        let pattern = herald_core::Pattern::new(&format!("{name}.>"))
            .map_err(|_| ApiError::not_found(format!("no stream named {name:?}")))?;
        identity.check_subscribe(&pattern)?;
    }
    let max = state.config.limits.replay_events_max;
    let limit = query.limit.unwrap_or(REPLAY_LIMIT_DEFAULT);
    if limit == 0 || limit > max {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {max}"
        )));
    }
    let info = find(&state, &name).await?;
    let from = query
        .from
        .unwrap_or(info.first_seq)
        .max(info.first_seq)
        .max(1);
    let events = state.engine.read_stream(&name, from, limit).await?;
    let next = events.last().map_or(from, |last| last.seq + 1);
    let events = events
        .iter()
        .map(|stored| {
            RawValue::from_string(String::from_utf8_lossy(&stored.to_json()).into_owned())
                .unwrap_or_else(|_| RawValue::NULL.to_owned())
        })
        .collect();
    Ok(Json(ReplayPage {
        stream: name,
        events,
        next,
    }))
}
