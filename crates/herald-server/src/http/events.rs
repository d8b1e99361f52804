//! `POST /v1/events`: one event, an array of events, or CloudEvents (structured, batch and
//! binary mode). A request is decoded and checked whole before anything is stored.

use std::time::Instant;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use herald_core::{Event, ParseContext};
use herald_engine::Engine;
use herald_protocol::ErrorCode;
use herald_protocol::http::PublishResult;

use crate::auth::Identity;
use crate::convert::publish_result;
use crate::error::ApiError;
use crate::http::{Caller, read_body};
use crate::state::AppState;

/// How the body is encoded, from its content type and headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    /// Herald events: one object or an array.
    Herald,
    CloudEvent,
    CloudEventBatch,
    /// CloudEvents binary mode: attributes in `ce-*` headers, data in the body.
    CloudEventBinary,
}

fn encoding(headers: &HeaderMap) -> Result<Encoding, ApiError> {
    if headers.contains_key("ce-specversion") {
        return Ok(Encoding::CloudEventBinary);
    }
    let Some(content_type) = headers.get(CONTENT_TYPE) else {
        return Ok(Encoding::Herald);
    };
    let media_type = content_type
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match media_type.as_str() {
        "application/json" | "" => Ok(Encoding::Herald),
        "application/cloudevents+json" => Ok(Encoding::CloudEvent),
        "application/cloudevents-batch+json" => Ok(Encoding::CloudEventBatch),
        other => Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!(
                "content type {:?} is not accepted; send application/json, \
                 application/cloudevents+json, application/cloudevents-batch+json, or a \
                 binary-mode CloudEvent with ce-* headers",
                other.chars().take(64).collect::<String>()
            ),
        )),
    }
}

/// The events of a request, and whether it was a batch (the answer is then an array).
fn decode(
    encoding: Encoding,
    headers: &HeaderMap,
    body: &[u8],
    context: &ParseContext,
) -> Result<(Vec<Event>, bool), ApiError> {
    match encoding {
        Encoding::Herald => match body.iter().find(|byte| !byte.is_ascii_whitespace()) {
            Some(b'[') => Ok((Event::from_json_batch(body, context)?, true)),
            _ => Ok((vec![Event::from_json(body, context)?], false)),
        },
        Encoding::CloudEvent => Ok((vec![Event::from_cloudevent_json(body, context)?], false)),
        Encoding::CloudEventBatch => Ok((Event::from_cloudevent_batch_json(body, context)?, true)),
        Encoding::CloudEventBinary => {
            let mut attributes = Vec::new();
            for (name, value) in headers {
                let Some(attribute) = name.as_str().strip_prefix("ce-") else {
                    continue;
                };
                let value = value.to_str().map_err(|_| {
                    ApiError::new(
                        ErrorCode::InvalidEvent,
                        format!("header {name} is not visible ASCII"),
                    )
                })?;
                attributes.push((attribute.to_owned(), value.to_owned()));
            }
            let content_type = headers
                .get(CONTENT_TYPE)
                .and_then(|value| value.to_str().ok());
            let event = Event::from_cloudevent_binary(&attributes, content_type, body, context)?;
            Ok((vec![event], false))
        }
    }
}

/// Sets `source` to the caller's identity and checks its publish permissions, for every event
/// before any is stored. The error names the index in a batch.
pub fn authorize_events(
    identity: &Identity,
    events: &mut [Event],
    batch: bool,
) -> Result<(), ApiError> {
    for (index, event) in events.iter_mut().enumerate() {
        if let Err(error) = identity.check_publish(&event.event_type) {
            let error = ApiError::from(error);
            return Err(if batch {
                let message = format!("event at index {index}: {}", error.detail.message);
                ApiError::new(error.code(), message)
                    .with_details(serde_json::json!({ "index": index }))
            } else {
                error
            });
        }
        if let Some(name) = identity.name() {
            event.source = Some(name.to_owned());
        }
    }
    Ok(())
}

/// Stores the events and times the engine call. Refuses nothing while the server drains: a
/// `/v1/ws` connection stores every `pub` it has read (docs/PROTOCOL.md); new HTTP requests are
/// refused by [`publish`] instead. Once the engine is closed its `Stopped` is `unavailable`.
pub async fn store(state: &AppState, events: Vec<Event>) -> Result<Vec<PublishResult>, ApiError> {
    let started = Instant::now();
    let outcomes = state.engine.publish(events).await?;
    state.metrics.observe_publish(started.elapsed());
    Ok(outcomes.into_iter().map(publish_result).collect())
}

/// Publish one event, an array of events, or CloudEvents.
#[utoipa::path(
    post,
    path = "/v1/events",
    tag = "events",
    request_body(
        description = "One event object, an array of events, a CloudEvent \
                       (application/cloudevents+json), a CloudEvents batch \
                       (application/cloudevents-batch+json) or a binary-mode CloudEvent \
                       (ce-* headers)",
        content = Object,
    ),
    responses(
        (status = 200, description = "The outcome of each event: an object for one event, an \
                                      array in request order for a batch", body = PublishResult),
        (status = 400, description = "Malformed or invalid event; details.index names it in a \
                                      batch", body = herald_protocol::ErrorBody),
        (status = 401, body = herald_protocol::ErrorBody),
        (status = 403, body = herald_protocol::ErrorBody),
        (status = 413, body = herald_protocol::ErrorBody),
        (status = 415, body = herald_protocol::ErrorBody),
    )
)]
pub async fn publish(
    State(state): State<AppState>,
    Caller(identity): Caller,
    request: Request,
) -> Result<Response, ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "the server is shutting down",
        ));
    }
    let (parts, body) = request.into_parts();
    let encoding = encoding(&parts.headers)?;
    let body = read_body(&state, body).await?;
    let (mut events, batch) = decode(encoding, &parts.headers, &body, &state.parse_context())?;
    authorize_events(&identity, &mut events, batch)?;
    let mut results = store(&state, events).await?;
    Ok(if batch {
        Json(results).into_response()
    } else {
        match results.pop() {
            Some(result) => Json(result).into_response(),
            None => {
                ApiError::new(ErrorCode::Internal, "the engine returned no outcome").into_response()
            }
        }
    })
}
