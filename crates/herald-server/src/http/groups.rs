//! Consumer groups and their dead letters.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use herald_core::Pattern;
use herald_engine::Engine;
use herald_protocol::From;
use herald_protocol::http::{
    DeadLetterList, GroupDefinition, GroupInfo, GroupList, Purged, Redriven,
};
use serde::Deserialize;

use crate::convert::{check_group_name, dead_letter_info, group_info, group_policy, group_spec};
use crate::error::ApiError;
use crate::http::{Caller, json_body, read_body};
use crate::state::AppState;

/// Every group with its counters.
#[utoipa::path(get, path = "/v1/groups", tag = "groups",
    responses((status = 200, body = GroupList), (status = 401, body = herald_protocol::ErrorBody)))]
pub async fn list(State(state): State<AppState>, _caller: Caller) -> Json<GroupList> {
    let groups = state
        .engine
        .groups()
        .await
        .into_iter()
        .map(group_info)
        .collect();
    Json(GroupList { groups })
}

async fn find(state: &AppState, name: &str) -> Result<GroupInfo, ApiError> {
    state
        .engine
        .groups()
        .await
        .into_iter()
        .find(|group| group.name == name)
        .map(group_info)
        .ok_or_else(|| ApiError::not_found(format!("no group named {name:?}")))
}

/// One group's counters: lag, in flight, dead letters.
#[utoipa::path(get, path = "/v1/groups/{name}", tag = "groups",
    params(("name" = String, Path, description = "Group name")),
    responses((status = 200, body = GroupInfo), (status = 404, body = herald_protocol::ErrorBody)))]
pub async fn one(
    State(state): State<AppState>,
    _caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<GroupInfo>, ApiError> {
    find(&state, &name).await.map(Json)
}

/// Creates a group (or confirms an existing one with the same pattern: 409 otherwise).
#[utoipa::path(put, path = "/v1/groups/{name}", tag = "groups",
    params(("name" = String, Path, description = "Group name")),
    request_body = GroupDefinition,
    responses((status = 200, body = GroupInfo), (status = 400, body = herald_protocol::ErrorBody),
        (status = 403, body = herald_protocol::ErrorBody), (status = 409, body = herald_protocol::ErrorBody)))]
pub async fn define(
    State(state): State<AppState>,
    Caller(identity): Caller,
    Path(name): Path<String>,
    body: axum::body::Body,
) -> Result<Json<GroupInfo>, ApiError> {
    check_group_name(&name)?;
    identity.check_admin(&name)?;
    let body = read_body(&state, body).await?;
    let definition: GroupDefinition = json_body(&body)?;
    let pattern = Pattern::new(&definition.pattern)?;
    let policy = group_policy(definition.policy.as_ref())?;
    let spec = group_spec(
        &name,
        pattern,
        definition.from.unwrap_or(From::Latest),
        policy,
    )?;
    state.engine.create_group(spec).await?;
    find(&state, &name).await.map(Json)
}

/// Deletes a group with its position, in-flight state and dead letters.
#[utoipa::path(delete, path = "/v1/groups/{name}", tag = "groups",
    params(("name" = String, Path, description = "Group name")),
    responses((status = 204), (status = 404, body = herald_protocol::ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Caller(identity): Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    identity.check_admin(&name)?;
    state.engine.delete_group(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterQuery {
    /// Dead letters to return at most, oldest first (100 by default).
    limit: Option<usize>,
}

const DEAD_LETTERS_LIMIT_DEFAULT: usize = 100;

/// A group's dead letters with why each failed.
#[utoipa::path(get, path = "/v1/groups/{name}/dead-letters", tag = "groups",
    params(("name" = String, Path, description = "Group name"), DeadLetterQuery),
    responses((status = 200, body = DeadLetterList), (status = 404, body = herald_protocol::ErrorBody)))]
pub async fn dead_letters(
    State(state): State<AppState>,
    Caller(identity): Caller,
    Path(name): Path<String>,
    query: Result<Query<DeadLetterQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DeadLetterList>, ApiError> {
    let Query(query) = query.map_err(|error| ApiError::bad_request(error.body_text()))?;
    identity.check_admin(&name)?;
    let max = state.config.limits.dead_letters_page_max;
    let limit = query.limit.unwrap_or(DEAD_LETTERS_LIMIT_DEFAULT);
    if limit == 0 || limit > max {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {max}"
        )));
    }
    let dead_letters = state
        .engine
        .dead_letters(&name, limit)
        .await?
        .into_iter()
        .map(dead_letter_info)
        .collect();
    Ok(Json(DeadLetterList { dead_letters }))
}

/// Puts every dead letter back into the group, attempts reset.
#[utoipa::path(post, path = "/v1/groups/{name}/dead-letters/redrive", tag = "groups",
    params(("name" = String, Path, description = "Group name")),
    responses((status = 200, body = Redriven), (status = 404, body = herald_protocol::ErrorBody)))]
pub async fn redrive(
    State(state): State<AppState>,
    Caller(identity): Caller,
    Path(name): Path<String>,
) -> Result<Json<Redriven>, ApiError> {
    identity.check_admin(&name)?;
    let redriven = state.engine.redrive(&name).await?;
    Ok(Json(Redriven { redriven }))
}

/// Drops every dead letter of the group.
#[utoipa::path(delete, path = "/v1/groups/{name}/dead-letters", tag = "groups",
    params(("name" = String, Path, description = "Group name")),
    responses((status = 200, body = Purged), (status = 404, body = herald_protocol::ErrorBody)))]
pub async fn purge(
    State(state): State<AppState>,
    Caller(identity): Caller,
    Path(name): Path<String>,
) -> Result<Json<Purged>, ApiError> {
    identity.check_admin(&name)?;
    let purged = state.engine.purge_dead_letters(&name).await?;
    Ok(Json(Purged { purged }))
}
