//! The HTTP API of PRODUCT.md §7, with its OpenAPI document generated from these handlers.

pub mod events;
mod groups;
mod ops;
pub mod realtime;
mod streams;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Request};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::routing::{get, post};
use herald_protocol::ErrorCode;
use utoipa::OpenApi;

use crate::auth::{Identity, bearer_token};
use crate::error::ApiError;
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/events", post(events::publish))
        .route("/v1/streams", get(streams::list))
        .route("/v1/streams/{name}", get(streams::one))
        .route("/v1/streams/{name}/events", get(streams::replay))
        .route("/v1/groups", get(groups::list))
        .route(
            "/v1/groups/{name}",
            get(groups::one).put(groups::define).delete(groups::delete),
        )
        .route(
            "/v1/groups/{name}/dead-letters",
            get(groups::dead_letters).delete(groups::purge),
        )
        .route(
            "/v1/groups/{name}/dead-letters/redrive",
            post(groups::redrive),
        )
        .route("/v1/realtime/users/{id}", post(realtime::to_user))
        .route("/v1/realtime/rooms/{room}", post(realtime::to_room))
        .route("/v1/realtime/broadcast", post(realtime::broadcast))
        .route("/v1/stats", get(ops::stats))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi))
        .route("/v1/ws", get(crate::ws::upgrade))
        .fallback(not_found)
        .with_state(state)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "The event bus in one binary: publish events, read streams, manage consumer \
                       groups and dead letters, send events to browsers. Services consume over \
                       the WebSocket protocol at /v1/ws (docs/PROTOCOL.md); browsers connect \
                       with Socket.IO at /socket.io/."
    ),
    paths(
        events::publish,
        streams::list,
        streams::one,
        streams::replay,
        groups::list,
        groups::one,
        groups::define,
        groups::delete,
        groups::dead_letters,
        groups::redrive,
        groups::purge,
        realtime::to_user,
        realtime::to_room,
        realtime::broadcast,
        ops::stats,
        ops::healthz,
        ops::readyz,
        ops::metrics,
    ),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document of this API.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

async fn openapi() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(openapi_document())
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route for {} {}; the API is described at /openapi.json",
        request.method(),
        request.uri().path()
    ))
}

/// The caller, authenticated from the `Authorization` header (anonymous with auth off).
#[derive(Debug)]
pub struct Caller(pub Identity);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        authenticate(state, &parts.headers).map(Caller)
    }
}

pub fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Identity, ApiError> {
    let token = bearer_token(headers)?;
    Ok(state.auth.authenticate(token)?)
}

/// A request body read whole, up to `limits.request_bytes_max`, refused with a JSON 413 past it.
pub async fn read_body(state: &AppState, body: axum::body::Body) -> Result<Bytes, ApiError> {
    let max = state.config.limits.request_bytes_max;
    axum::body::to_bytes(body, max).await.map_err(|error| {
        let too_large = std::error::Error::source(&error)
            .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::new(
                ErrorCode::TooLarge,
                format!("request body exceeds the limit of {max} bytes"),
            )
        } else {
            ApiError::bad_request(format!("reading the request body failed: {error}"))
        }
    })
}

/// A JSON body decoded into `T`, with serde's message (which names the field) on failure.
pub fn json_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|error| ApiError::bad_request(format!("invalid request body: {error}")))
}
