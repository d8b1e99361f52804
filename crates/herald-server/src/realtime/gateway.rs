//! The socketioxide handlers of the `/` namespace.
//!
//! Handshake: a connect middleware admits the socket (not draining, under
//! `realtime.limits.connections_max`, a valid token in `auth.token` or anonymous sockets
//! allowed) or refuses it with a `connect_error` whose message is `<code>: <reason>`, such as
//! `unauthorized: the token has expired`. An admitted socket joins `user:<sub>`, and its
//! session and event handlers are in place before the client hears it is connected, so that
//! its first `join` cannot arrive before the handler does. Its session is forgotten when it
//! disconnects, or, should the connect packet never go out, when socketioxide drops the
//! socket (a guard in its extensions).
//!
//! Then, each answered through the Socket.IO ack callback with `{ok: true}` (publish adds the
//! stored event's `id`, `stream`, `seq`, `duplicate`) or `{error: {code, message}}`:
//!
//! | event | argument | checked against |
//! | --- | --- | --- |
//! | `join`, `leave` | a room name, or `{room}` | the token's `rooms` patterns (join only) |
//! | `subscribe`, `unsubscribe` | a pattern, or `{pattern}` | the token's `subscribe` patterns |
//! | `publish` | an event `{type, data, …}` as for `POST /v1/events` | the token's `publish` patterns |
//!
//! Join, leave, subscribe and unsubscribe are idempotent. A subscription is live from the
//! moment it is acknowledged; when the engine ends it (the socket fell behind) the socket gets
//! `herald:unsubscribed` with `{pattern, error}`.

use std::future::Future;
use std::sync::Arc;

use herald_core::{Event, Pattern};
use herald_engine::{Engine, StartAt};
use herald_protocol::{ErrorCode, ErrorDetail};
use serde_json::{Value, json};
use socketioxide::extract::{AckSender, Event as EventName, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::socket::DisconnectReason;

use crate::error::ApiError;
use crate::http::events::store;
use crate::realtime::fanout::{self, Payload};
use crate::realtime::{Realtime, Session, check_room, user_room};
use crate::state::AppState;

/// The `source` of events browsers publish: they are not services, and may not pose as one.
pub const BROWSER_SOURCE: &str = "browser";

/// The event a socket gets when the engine ends one of its subscriptions.
pub const UNSUBSCRIBED_EVENT: &str = "herald:unsubscribed";

/// Registers the namespace's handlers; sockets are served from then on.
pub fn register(state: &AppState) {
    let auth_state = state.clone();
    let middleware = move |socket: SocketRef, TryData(auth): TryData<Value>| {
        let state = auth_state.clone();
        async move { admit(&state, &socket, auth.ok()) }
    };
    let handler = |socket: SocketRef| async move {
        tracing::debug!(sid = %socket.id, "browser socket connected");
    };
    state.realtime.io().ns("/", handler.with(middleware));
}

/// Forgets a socket's session when socketioxide drops the socket, whatever the reason.
#[derive(Debug)]
struct SessionGuard {
    realtime: std::sync::Weak<Realtime>,
    sid: socketioxide::socket::Sid,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if let Some(realtime) = self.realtime.upgrade() {
            realtime.remove_session(self.sid);
        }
    }
}

/// Decides whether a socket may connect; on success records its session, joins its user room
/// and registers its handlers.
fn admit(state: &AppState, socket: &SocketRef, auth: Option<Value>) -> Result<(), ErrorDetail> {
    let realtime = &state.realtime;
    let refuse = |code: ErrorCode, message: String| -> Result<(), ErrorDetail> {
        realtime.metrics.refused.inc();
        Err(ErrorDetail::new(code, message))
    };
    if state.shutdown.is_cancelled() {
        return refuse(ErrorCode::Unavailable, "the server is shutting down".into());
    }
    let config = realtime.config();
    let max = config.limits.connections_max;
    let token = match auth.as_ref().and_then(|auth| auth.get("token")) {
        None | Some(Value::Null) => None,
        Some(Value::String(token)) => Some(token.as_str()),
        Some(_) => {
            return refuse(
                ErrorCode::BadRequest,
                "auth.token must be a string (a JWT)".into(),
            );
        }
    };
    let rate = config.limits.publish_events_per_second_max;
    let session = match (token, &realtime.verifier) {
        (Some(token), Some(verifier)) => match verifier.verify(token) {
            Ok(claims) => Session::new(Some(claims.sub), claims.grants, rate),
            Err(error) => return refuse(ErrorCode::Unauthorized, error.to_string()),
        },
        (Some(_), None) => {
            return refuse(
                ErrorCode::Unauthorized,
                "this server takes no browser tokens ([realtime.jwt] is not configured)".into(),
            );
        }
        (None, _) if config.allow_anonymous => Session::new(None, realtime.anonymous.clone(), rate),
        (None, _) => {
            return refuse(
                ErrorCode::Unauthorized,
                "a token is required: connect with io(url, { auth: { token } })".into(),
            );
        }
    };
    let session = Arc::new(session);
    if !realtime.add_session(socket.id, session.clone(), max) {
        return refuse(
            ErrorCode::RateLimited,
            format!("the server is at its limit of {max} browser connections"),
        );
    }
    // An `Arc` so that the clones `extensions.get` hands out do not trigger it.
    socket.extensions.insert(Arc::new(SessionGuard {
        realtime: Arc::downgrade(realtime),
        sid: socket.id,
    }));
    if let Some(user) = &session.user {
        socket.join(user_room(user));
    }
    register_handlers(state, socket);
    Ok(())
}

fn register_handlers(state: &AppState, socket: &SocketRef) {
    on(socket, state, "join", join);
    on(socket, state, "leave", leave);
    on(socket, state, "subscribe", subscribe);
    on(socket, state, "unsubscribe", unsubscribe);
    on(socket, state, "publish", publish);
    socket.on_fallback(|EventName(name): EventName, ack: AckSender| async move {
        let error = ErrorDetail::new(
            ErrorCode::BadRequest,
            format!(
                "unknown event {:?}: a socket may emit join, leave, subscribe, unsubscribe and \
                 publish",
                name.chars().take(64).collect::<String>()
            ),
        );
        let _ = ack.send(&json!({ "error": error }));
    });
    let disconnect_state = state.clone();
    socket.on_disconnect(move |socket: SocketRef, reason: DisconnectReason| {
        let state = disconnect_state.clone();
        async move {
            tracing::debug!(sid = %socket.id, %reason, "browser socket disconnected");
            state.realtime.remove_session(socket.id);
        }
    });
}

/// Registers `op` for `event`, answering through the ack callback.
fn on<F, Fut>(socket: &SocketRef, state: &AppState, event: &'static str, op: F)
where
    F: Fn(AppState, SocketRef, Arc<Session>, Value) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, ApiError>> + Send + 'static,
{
    let state = state.clone();
    socket.on(
        event,
        move |socket: SocketRef, TryData(data): TryData<Value>, ack: AckSender| {
            let state = state.clone();
            let op = op.clone();
            async move {
                let answer = match (state.realtime.session(socket.id), data) {
                    (None, _) => Err(super::socket_gone()),
                    (Some(_), Err(error)) => Err(ApiError::bad_request(format!(
                        "{event}: the argument is missing or not JSON: {error}"
                    ))),
                    (Some(session), Ok(data)) => op(state, socket, session, data).await,
                };
                let body = match answer {
                    Ok(body) => body,
                    Err(error) => json!({ "error": error.detail }),
                };
                // A socket that asked for no ack, or is gone, gets none.
                let _ = ack.send(&body);
            }
        },
    );
}

fn ok() -> Value {
    json!({ "ok": true })
}

/// The argument of join/leave/subscribe/unsubscribe: a string, or an object with `field`.
fn string_argument(data: &Value, field: &str) -> Result<String, ApiError> {
    let value = match data {
        Value::Object(object) => object.get(field),
        other => Some(other),
    };
    match value {
        Some(Value::String(text)) => Ok(text.clone()),
        _ => Err(ApiError::bad_request(format!(
            "expected a {field} name: a string, or {{\"{field}\": \"…\"}}"
        ))),
    }
}

fn forbidden(session: &Session, verb: &str, what: &str, field: &str) -> ApiError {
    let who = session.user.as_deref().map_or_else(
        || "this anonymous socket".to_owned(),
        |user| format!("user {user:?}"),
    );
    ApiError::new(
        ErrorCode::Forbidden,
        format!(
            "{who} may not {verb} {what} ({})",
            session.grants.list(field)
        ),
    )
}

async fn join(
    state: AppState,
    socket: SocketRef,
    session: Arc<Session>,
    data: Value,
) -> Result<Value, ApiError> {
    let room = string_argument(&data, "room")?;
    let subject = check_room(&room)?;
    if !session.grants.may_join(&subject) {
        return Err(forbidden(
            &session,
            "join",
            &format!("room {room:?}"),
            "rooms",
        ));
    }
    if state.realtime.join_room(socket.id, &room)? {
        socket.join(room);
    }
    Ok(ok())
}

async fn leave(
    state: AppState,
    socket: SocketRef,
    _session: Arc<Session>,
    data: Value,
) -> Result<Value, ApiError> {
    let room = string_argument(&data, "room")?;
    check_room(&room)?;
    if state.realtime.leave_room(socket.id, &room) {
        socket.leave(room);
    }
    Ok(ok())
}

async fn subscribe(
    state: AppState,
    socket: SocketRef,
    session: Arc<Session>,
    data: Value,
) -> Result<Value, ApiError> {
    let text = string_argument(&data, "pattern")?;
    let pattern = Pattern::new(&text)?;
    if !session.grants.may_subscribe(&pattern) {
        return Err(forbidden(
            &session,
            "subscribe to",
            &format!("{text:?}"),
            "subscribe",
        ));
    }
    let realtime = state.realtime.clone();
    if !realtime.may_add_subscription(&session, &text)? {
        return Ok(ok());
    }
    let subscription = state.engine.subscribe(pattern, StartAt::Latest).await?;
    let task = tokio::spawn(forward_subscription(
        realtime.clone(),
        socket.clone(),
        session,
        text.clone(),
        subscription,
    ));
    realtime.add_subscription(socket.id, text, task.abort_handle())?;
    Ok(ok())
}

/// Moves one subscription's events to its socket until the socket unsubscribes or goes.
async fn forward_subscription(
    realtime: Arc<Realtime>,
    socket: SocketRef,
    session: Arc<Session>,
    pattern: String,
    mut subscription: herald_engine::LiveSubscription,
) {
    let closed = loop {
        match subscription.recv().await {
            Ok(event) => {
                if let Some(payload) = Payload::from_json(&event.to_json())
                    && fanout::emit(&realtime, &socket, &payload)
                {
                    realtime.metrics.sent.inc();
                }
            }
            Err(closed) => break closed,
        }
    };
    let error = ErrorDetail::new(ErrorCode::RateLimited, closed.to_string());
    let _ = socket.emit(
        UNSUBSCRIBED_EVENT,
        &json!({ "pattern": pattern, "error": error }),
    );
    // Last: removing the entry aborts this task, which has nothing left to do.
    realtime.remove_subscription(&session, &pattern);
}

async fn unsubscribe(
    state: AppState,
    _socket: SocketRef,
    session: Arc<Session>,
    data: Value,
) -> Result<Value, ApiError> {
    let text = string_argument(&data, "pattern")?;
    Pattern::new(&text)?;
    state.realtime.remove_subscription(&session, &text);
    Ok(ok())
}

async fn publish(
    state: AppState,
    _socket: SocketRef,
    session: Arc<Session>,
    data: Value,
) -> Result<Value, ApiError> {
    if !data.is_object() {
        return Err(ApiError::bad_request(
            "publish takes an event: {type, data, …} as for POST /v1/events",
        ));
    }
    // Re-encoding a JSON value cannot fail.
    let bytes = serde_json::to_vec(&data).unwrap_or_default();
    let mut event = Event::from_json(&bytes, &state.parse_context())?;
    if !session.grants.may_publish(&event.event_type) {
        return Err(forbidden(
            &session,
            "publish",
            &format!("{:?}", event.event_type.as_str()),
            "publish",
        ));
    }
    if !session.take_publish_tokens(1) {
        state.metrics.rate_limited_events.inc();
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            format!(
                "publish rate above {} events per second on this socket \
                 (realtime.limits.publish_events_per_second_max); nothing was stored",
                state.realtime.config().limits.publish_events_per_second_max
            ),
        ));
    }
    if state.shutdown.is_cancelled() {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "the server is shutting down",
        ));
    }
    // Who published is the token's, never the payload's.
    event.source = Some(BROWSER_SOURCE.to_owned());
    event.user_id = session.user.clone();
    let mut results = store(&state, vec![event]).await?;
    let result = results
        .pop()
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "the engine returned no outcome"))?;
    let mut body = serde_json::to_value(result).unwrap_or_else(|_| json!({}));
    if let Value::Object(object) = &mut body {
        object.insert("ok".into(), Value::Bool(true));
    }
    Ok(body)
}

/// The path every Socket.IO request starts with.
const SOCKET_IO_PATH: &str = "/socket.io/";

/// Middleware before the Socket.IO layer. socketioxide keeps each socket's handshake request for
/// the socket's lifetime, and hyper's header values and URI are slices of the connection's read
/// buffer (about 16 KiB), so every idle socket would pin one. Owned copies let the buffer go
/// (measured with heaptrack: 16 of 39 KiB per idle socket).
pub async fn own_handshake_request(request: axum::extract::Request) -> axum::extract::Request {
    if !request.uri().path().starts_with(SOCKET_IO_PATH) {
        return request;
    }
    let (mut parts, body) = request.into_parts();
    let mut headers = axum::http::HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        // `from_bytes` copies; a value that was valid stays valid.
        if let Ok(mut copy) = axum::http::HeaderValue::from_bytes(value.as_bytes()) {
            copy.set_sensitive(value.is_sensitive());
            headers.append(name.clone(), copy);
        }
    }
    parts.headers = headers;
    if let Ok(uri) = axum::http::Uri::try_from(parts.uri.to_string()) {
        // axum's router keeps the URI as it arrived too.
        if let Some(original) = parts.extensions.get_mut::<axum::extract::OriginalUri>() {
            original.0 = uri.clone();
        }
        parts.uri = uri;
    }
    axum::extract::Request::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_a_string_or_an_object() {
        for (data, expect) in [
            (json!("chat.a"), Ok("chat.a")),
            (json!({"room": "chat.a"}), Ok("chat.a")),
            (json!({"name": "chat.a"}), Err(())),
            (json!(7), Err(())),
            (json!(null), Err(())),
        ] {
            let got = string_argument(&data, "room");
            match (got, expect) {
                (Ok(room), Ok(want)) => assert_eq!(room, want),
                (Err(error), Err(())) => {
                    assert!(error.detail.message.contains("expected a room name"))
                }
                (got, want) => panic!("{data}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[tokio::test]
    async fn handshake_requests_keep_their_meaning_in_owned_copies() {
        let uri = "/socket.io/?EIO=4&transport=websocket";
        let mut request = axum::extract::Request::builder()
            .uri(uri)
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("x-custom", "a")
            .header("x-custom", "b")
            .body(axum::body::Body::empty())
            .unwrap();
        request
            .extensions_mut()
            .insert(axum::extract::OriginalUri(uri.parse().unwrap()));
        let before = request.headers().clone();
        let owned = own_handshake_request(request).await;
        assert_eq!(owned.uri(), uri);
        assert_eq!(owned.headers(), &before);
        let original = owned.extensions().get::<axum::extract::OriginalUri>();
        assert_eq!(
            original.map(|original| original.0.to_string()),
            Some(uri.into())
        );
    }
}
