//! What a browser receives, and getting it to sockets.
//!
//! An event reaches a browser as `socket.on(type, (data, meta) => …)`: the event's `data`, and
//! its envelope without `data` (`id`, `type`, `timestamp`, `source`, …, and `stream`/`seq` for
//! stored events). The payload is parsed once per event, whatever the number of sockets.
//!
//! Each socket's outbound queue is bounded (`realtime.limits.outbound_buffer_packets`,
//! socketioxide's `max_buffer_size`). A socket whose queue is full is too slow: nothing more is
//! sent to it, it is told why with a `herald:error` event as soon as its queue has room, and
//! disconnected. If it never drains, engine.io's own heartbeat closes it, since the ping cannot
//! be queued either. Memory per socket stays bounded either way.

use std::time::Duration;

use serde_json::{Map, Value};
use socketioxide::extract::SocketRef;
use socketioxide::{SendError, SocketError};

use crate::realtime::Realtime;

/// The event a socket is told why it is being disconnected with.
pub const ERROR_EVENT: &str = "herald:error";

/// How often a slow socket's queue is checked for room for the disconnect, and for how long
/// (engine.io's heartbeat, 25 s by default, closes it anyway once its ping cannot be queued).
const SLOW_DISCONNECT_RETRY: Duration = Duration::from_millis(100);
const SLOW_DISCONNECT_ATTEMPTS: u32 = 300;

/// One event as browsers receive it.
#[derive(Clone, Debug, PartialEq)]
pub struct Payload {
    pub event_type: String,
    pub data: Value,
    pub meta: Value,
}

impl Payload {
    /// From an event's JSON (stored or not); `None` if it is not an object with a `type`, which
    /// the engine's events always are.
    pub fn from_json(json: &[u8]) -> Option<Payload> {
        let mut meta: Map<String, Value> = serde_json::from_slice(json).ok()?;
        let data = meta.remove("data").unwrap_or(Value::Null);
        let event_type = meta.get("type")?.as_str()?.to_owned();
        Some(Payload {
            event_type,
            data,
            meta: Value::Object(meta),
        })
    }
}

/// Emits to one socket; false when it was not sent (the socket is gone or too slow).
pub fn emit(realtime: &Realtime, socket: &SocketRef, payload: &Payload) -> bool {
    let session = realtime.session(socket.id);
    if session.as_ref().is_some_and(|session| session.is_slow()) {
        return false;
    }
    // A tuple is sent as separate arguments: the handler gets (data, meta).
    match socket.emit(&payload.event_type, &(&payload.data, &payload.meta)) {
        Ok(()) => true,
        Err(SendError::Socket(SocketError::InternalChannelFull)) => {
            if let Some(session) = session
                && session.mark_slow()
            {
                disconnect_slow(realtime, socket.clone(), session.user.clone());
            }
            false
        }
        Err(error) => {
            tracing::debug!(sid = %socket.id, %error, "emit to a socket failed");
            false
        }
    }
}

fn disconnect_slow(realtime: &Realtime, socket: SocketRef, user: Option<String>) {
    let buffer = realtime.config.limits.outbound_buffer_packets;
    realtime.metrics.slow_disconnects.inc();
    tracing::warn!(
        sid = %socket.id,
        user = user.as_deref().unwrap_or("anonymous"),
        buffer,
        "disconnecting a slow browser socket"
    );
    let reason = serde_json::json!({
        "code": "slow_consumer",
        "message": format!(
            "disconnected as too slow: {buffer} packets were waiting for this socket \
             (realtime.limits.outbound_buffer_packets)"
        ),
    });
    tokio::spawn(async move {
        let mut told = false;
        for _ in 0..SLOW_DISCONNECT_ATTEMPTS {
            if !socket.connected() {
                return;
            }
            if !told {
                told = socket.emit(ERROR_EVENT, &reason).is_ok();
            }
            if told && socket.clone().disconnect().is_ok() {
                return;
            }
            tokio::time::sleep(SLOW_DISCONNECT_RETRY).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payload_splits_data_from_the_envelope() {
        let stored = br#"{"stream":"photo","seq":3,"id":"e1","type":"photo.done","version":"1.0","timestamp":"2026-01-01T00:00:00Z","userId":"u1","data":{"progress":50}}"#;
        let payload = Payload::from_json(stored).unwrap();
        assert_eq!(payload.event_type, "photo.done");
        assert_eq!(payload.data, json!({"progress": 50}));
        assert_eq!(
            payload.meta,
            json!({"stream":"photo","seq":3,"id":"e1","type":"photo.done","version":"1.0",
                   "timestamp":"2026-01-01T00:00:00Z","userId":"u1"})
        );
        let without_data = Payload::from_json(br#"{"type":"a.b"}"#).unwrap();
        assert_eq!(without_data.data, Value::Null);
        assert!(Payload::from_json(br#"{"data":1}"#).is_none());
        assert!(Payload::from_json(b"[1]").is_none());
    }
}
