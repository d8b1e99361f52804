//! Services listening to rooms: the `/v1/ws` `join` and `leave` frames (docs/PROTOCOL.md).
//!
//! What is sent to a room reaches its sockets through socketioxide, and the service
//! connections that joined it through this registry: room → listening connections. An event
//! is framed once (`{"op":"event","room":…,"event":…}`) and handed to each listener's bounded
//! queue without waiting; one task per listening connection moves its queue to the
//! connection's outbound queue. A listener whose queue is full (it fell
//! `limits.live_buffer_events` frames behind) leaves all its rooms at once, like a live
//! subscriber dropped as slow: its task then sends a `closed` frame for each, so the service
//! knows to join again. Senders never wait for a listener, and a listener never holds more
//! than its queue.
//!
//! Lock order: `RoomListeners::rooms`, then a listener's `state`; neither is held across an
//! `.await`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::extract::ws::{Message, Utf8Bytes};
use herald_core::RoomName;
use herald_protocol::ws::{Frame, encode_room_event_frame};
use herald_protocol::{ErrorCode, ErrorDetail};
use parking_lot::{Mutex, RwLock};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{Notify, mpsc};
use tokio::task::AbortHandle;

use crate::error::ApiError;

/// Every listening connection, by the rooms it joined.
#[derive(Debug, Default)]
pub struct RoomListeners {
    rooms: RwLock<HashMap<String, HashMap<u64, Arc<Listener>>>>,
    /// `herald_realtime_room_listener_sent` and `…_drops`.
    sent: Counter,
    drops: Counter,
}

/// One service connection's side of its rooms.
#[derive(Debug)]
pub struct Listener {
    connection: u64,
    queue: mpsc::Sender<Utf8Bytes>,
    /// Set when the listener is dropped as slow; its task then says so.
    dropped: Notify,
    state: Mutex<ListenerState>,
}

#[derive(Debug, Default)]
struct ListenerState {
    rooms: BTreeSet<String>,
    /// The rooms it was made to leave as slow, for the task's `closed` frames.
    dropped_from: Vec<String>,
}

/// A connection's membership of rooms: leaves them all, and stops its task, when dropped.
#[derive(Debug)]
pub struct Membership {
    listeners: Arc<RoomListeners>,
    listener: Arc<Listener>,
    task: AbortHandle,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.listeners.leave_all(&self.listener);
        self.task.abort();
    }
}

impl Membership {
    /// Joins `room`: `Ok(false)` when the connection is in it already. Refused past `max`
    /// rooms.
    pub fn join(&self, room: &RoomName, max: usize) -> Result<bool, ApiError> {
        self.listeners.join(&self.listener, room, max)
    }

    /// Leaves `room`: false when the connection was not in it.
    pub fn leave(&self, room: &RoomName) -> bool {
        self.listeners.leave(&self.listener, room.as_str())
    }

    pub fn rooms(&self) -> usize {
        self.listener.state.lock().rooms.len()
    }
}

impl RoomListeners {
    pub fn new(sent: Counter, drops: Counter) -> RoomListeners {
        RoomListeners {
            rooms: RwLock::default(),
            sent,
            drops,
        }
    }

    /// A connection's membership, with the task that moves its room events to `outbound`, at
    /// most `buffer` of them waiting.
    pub fn membership(
        self: &Arc<Self>,
        connection: u64,
        buffer: usize,
        outbound: mpsc::Sender<Message>,
    ) -> Membership {
        let (queue, receiver) = mpsc::channel(buffer.max(1));
        let listener = Arc::new(Listener {
            connection,
            queue,
            dropped: Notify::new(),
            state: Mutex::new(ListenerState::default()),
        });
        let task = tokio::spawn(forward(listener.clone(), receiver, outbound, buffer));
        Membership {
            listeners: self.clone(),
            listener,
            task: task.abort_handle(),
        }
    }

    fn join(
        &self,
        listener: &Arc<Listener>,
        room: &RoomName,
        max: usize,
    ) -> Result<bool, ApiError> {
        let mut rooms = self.rooms.write();
        let mut state = listener.state.lock();
        if state.rooms.contains(room.as_str()) {
            return Ok(false);
        }
        if state.rooms.len() >= max {
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "this connection is in {max} rooms, its limit \
                     (limits.rooms_per_connection_max)"
                ),
            ));
        }
        state.rooms.insert(room.as_str().to_owned());
        rooms
            .entry(room.as_str().to_owned())
            .or_default()
            .insert(listener.connection, listener.clone());
        Ok(true)
    }

    fn leave(&self, listener: &Listener, room: &str) -> bool {
        let mut rooms = self.rooms.write();
        let left = listener.state.lock().rooms.remove(room);
        if left {
            remove(&mut rooms, room, listener.connection);
        }
        left
    }

    /// Leaves every room; returns the rooms it was in.
    fn leave_all(&self, listener: &Listener) -> Vec<String> {
        let mut rooms = self.rooms.write();
        let left = std::mem::take(&mut listener.state.lock().rooms);
        for room in &left {
            remove(&mut rooms, room, listener.connection);
        }
        left.into_iter().collect()
    }

    /// Queues `event_json`, sent to `room`, for every connection listening to it; returns how
    /// many it was queued for. Never waits: a listener with a full queue is dropped from its
    /// rooms instead.
    pub fn deliver(&self, room: &str, event_json: &[u8]) -> usize {
        let mut slow = Vec::new();
        let mut delivered = 0;
        {
            let rooms = self.rooms.read();
            let Some(listeners) = rooms.get(room) else {
                return 0;
            };
            let frame = encode_room_event_frame(room, event_json);
            // Event JSON and the frame around it are UTF-8 by construction.
            let Ok(frame) = String::from_utf8(frame) else {
                return 0;
            };
            let frame = Utf8Bytes::from(frame);
            for listener in listeners.values() {
                match listener.queue.try_send(frame.clone()) {
                    Ok(()) => delivered += 1,
                    Err(mpsc::error::TrySendError::Full(_)) => slow.push(listener.clone()),
                    // The connection is closing; its membership is being dropped.
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        }
        self.sent.inc_by(delivered as u64);
        for listener in slow {
            let left = self.leave_all(&listener);
            if !left.is_empty() {
                self.drops.inc();
                tracing::warn!(
                    connection = listener.connection,
                    rooms = left.len(),
                    "a /v1/ws connection fell behind on its rooms; it leaves them"
                );
                listener.state.lock().dropped_from.extend(left);
                listener.dropped.notify_one();
            }
        }
        delivered
    }

    /// Connections listening to `room` (for tests and stats).
    pub fn listening(&self, room: &str) -> usize {
        self.rooms.read().get(room).map_or(0, HashMap::len)
    }
}

fn remove(rooms: &mut HashMap<String, HashMap<u64, Arc<Listener>>>, room: &str, connection: u64) {
    if let Some(listeners) = rooms.get_mut(room) {
        listeners.remove(&connection);
        if listeners.is_empty() {
            rooms.remove(room);
        }
    }
}

/// Moves one connection's room events to its outbound queue; after a drop as slow, sends a
/// `closed` frame for each room left, once what was queued before is sent.
async fn forward(
    listener: Arc<Listener>,
    mut queue: mpsc::Receiver<Utf8Bytes>,
    outbound: mpsc::Sender<Message>,
    buffer: usize,
) {
    loop {
        tokio::select! {
            biased;
            frame = queue.recv() => {
                let Some(frame) = frame else { return };
                if outbound.send(Message::Text(frame)).await.is_err() {
                    return;
                }
            }
            () = listener.dropped.notified() => {
                while let Ok(frame) = queue.try_recv() {
                    if outbound.send(Message::Text(frame)).await.is_err() {
                        return;
                    }
                }
                let rooms = std::mem::take(&mut listener.state.lock().dropped_from);
                for room in rooms {
                    let error = ErrorDetail::new(
                        ErrorCode::RateLimited,
                        format!(
                            "dropped as a slow consumer: {buffer} events sent to rooms were \
                             waiting for this connection (limits.live_buffer_events); join the \
                             room again"
                        ),
                    );
                    let frame = Frame::room_closed(room, error);
                    if outbound.send(Message::Text(frame.encode().into())).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str) -> RoomName {
        RoomName::new(name).unwrap()
    }

    async fn text(outbound: &mut mpsc::Receiver<Message>) -> serde_json::Value {
        match outbound.recv().await {
            Some(Message::Text(text)) => serde_json::from_str(text.as_str()).unwrap(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn joined_connections_get_room_events_framed_once() {
        let listeners = Arc::new(RoomListeners::default());
        let (a_out, mut a_in) = mpsc::channel(16);
        let (b_out, mut b_in) = mpsc::channel(16);
        let a = listeners.membership(1, 8, a_out);
        let b = listeners.membership(2, 8, b_out);
        assert_eq!(a.join(&room("session:abc123"), 2), Ok(true));
        assert_eq!(a.join(&room("session:abc123"), 2), Ok(false));
        assert_eq!(b.join(&room("session:abc123"), 2), Ok(true));
        assert_eq!(a.join(&room("chat.general"), 2), Ok(true));
        let refused = a.join(&room("chat.other"), 2).unwrap_err();
        assert_eq!(refused.code(), ErrorCode::RateLimited);
        assert!(
            refused
                .detail
                .message
                .contains("limits.rooms_per_connection_max")
        );

        assert_eq!(listeners.deliver("session:abc123", br#"{"type":"a.b"}"#), 2);
        assert_eq!(listeners.deliver("nobody", br#"{"type":"a.b"}"#), 0);
        assert_eq!(listeners.sent.get(), 2);
        let expect =
            serde_json::json!({"op":"event","room":"session:abc123","event":{"type":"a.b"}});
        assert_eq!(text(&mut a_in).await, expect);
        assert_eq!(text(&mut b_in).await, expect);

        assert!(a.leave(&room("session:abc123")));
        assert!(!a.leave(&room("session:abc123")));
        assert_eq!(listeners.deliver("session:abc123", br#"{"type":"a.c"}"#), 1);
        assert_eq!(text(&mut b_in).await["event"]["type"], "a.c");
        assert_eq!(listeners.listening("chat.general"), 1);
        drop(a);
        assert_eq!(listeners.listening("chat.general"), 0);
        drop(b);
        assert!(listeners.rooms.read().is_empty());
    }

    #[tokio::test]
    async fn a_slow_listener_leaves_its_rooms_and_is_told() {
        let listeners = Arc::new(RoomListeners::default());
        // The connection's outbound queue holds one frame and is not read: the forwarding task
        // blocks with one frame in hand, and the listener's own queue (2) fills behind it.
        let (slow_out, mut slow_in) = mpsc::channel(1);
        let (fast_out, mut fast_in) = mpsc::channel(64);
        let slow = listeners.membership(1, 2, slow_out);
        let fast = listeners.membership(2, 64, fast_out);
        for member in [&slow, &fast] {
            member.join(&room("r:1"), 4).unwrap();
            member.join(&room("r:2"), 4).unwrap();
        }
        let mut queued_slow = 0;
        for n in 0..20 {
            let json = format!(r#"{{"type":"a.b","data":{n}}}"#);
            let delivered = listeners.deliver("r:1", json.as_bytes());
            queued_slow += delivered - 1;
            if delivered == 1 {
                break;
            }
            // Let the forwarding task move what it can.
            tokio::task::yield_now().await;
        }
        assert_eq!(slow.rooms(), 0, "dropped from every room");
        assert_eq!(fast.rooms(), 2);
        assert_eq!(listeners.listening("r:1"), 1);
        // Fast was never slowed: it has every event.
        for n in 0..=queued_slow {
            assert_eq!(text(&mut fast_in).await["event"]["data"], n);
        }
        // Slow gets what was queued for it, then a closed frame per room.
        for n in 0..queued_slow {
            assert_eq!(text(&mut slow_in).await["event"]["data"], n);
        }
        let mut closed = Vec::new();
        for _ in 0..2 {
            let frame = text(&mut slow_in).await;
            assert_eq!(frame["op"], "closed");
            assert_eq!(frame["error"]["code"], "rate_limited");
            closed.push(frame["room"].as_str().unwrap().to_owned());
        }
        assert_eq!(closed, ["r:1", "r:2"]);
        assert_eq!(listeners.drops.get(), 1);
        // It may join again.
        assert_eq!(slow.join(&room("r:1"), 4), Ok(true));
    }
}
