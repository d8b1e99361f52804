//! A service listening to rooms (`join` / `leave`, docs/PROTOCOL.md "Listening to rooms"), as a
//! browser socket in the room would: seed 004's `joinRoom` / `subscribeToRoom`.
//!
//! Several [`RoomSubscription`]s may listen to one room; the connection joins it once and
//! leaves it when the last one goes. Rooms outlive connections: each new connection joins them
//! again, and what was sent to a room while the connection was down is gone (room events are
//! live, at most once). Each subscription holds at most `live_buffer_events` events; one that
//! falls further behind is dropped with [`Error::SlowConsumer`], as a live subscription is,
//! without affecting the others. When the server makes the connection leave a room (it fell
//! behind), every subscription to that room ends with the server's reason.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use herald_protocol::ErrorDetail;
use herald_protocol::ws::{Frame, Op};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use crate::connection::{Conn, Control, Incoming, Pending, Reply, SubShared, is_transient};
use crate::error::{Error, Result};
use crate::event::ReceivedEvent;
use crate::subscription::{poll_live, request};

/// Events sent to one room, as they come. Dropping it leaves the room (when no other
/// subscription of this client listens to it).
#[derive(Debug)]
pub struct RoomSubscription<T> {
    pub(crate) room: String,
    pub(crate) local: u64,
    pub(crate) control: mpsc::UnboundedSender<Control>,
    pub(crate) shared: Arc<SubShared>,
    pub(crate) receiver: mpsc::Receiver<Incoming>,
    pub(crate) timeout: Duration,
    pub(crate) ended: bool,
    pub(crate) _data: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> RoomSubscription<T> {
    pub fn room(&self) -> &str {
        &self.room
    }

    /// The next event; an `Err` item for an event whose `data` is not a `T` (the subscription
    /// goes on), and a last `Err` when it ended for a reason (dropped as slow, made to leave by
    /// the server, client closed), then `None`.
    pub async fn next(&mut self) -> Option<Result<ReceivedEvent<T>>> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    /// Stops listening; resolves once the server has confirmed leaving (or at once when
    /// another subscription still listens to the room).
    pub async fn leave(mut self) -> Result<()> {
        self.ended = true;
        let (reply, answer) = oneshot::channel();
        self.control
            .send(Control::Leave {
                local: self.local,
                room: self.room.clone(),
                reply: Some(reply),
            })
            .map_err(|_| Error::Closed)?;
        request(answer, self.timeout).await
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<ReceivedEvent<T>>>> {
        poll_live(&mut self.receiver, &self.shared, &mut self.ended, cx)
    }
}

impl<T: DeserializeOwned> Stream for RoomSubscription<T> {
    type Item = Result<ReceivedEvent<T>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_event(cx)
    }
}

impl<T> Drop for RoomSubscription<T> {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.control.send(Control::Leave {
                local: self.local,
                room: std::mem::take(&mut self.room),
                reply: None,
            });
        }
    }
}

/// One subscription to a room, as the connection task holds it.
pub(crate) struct Listener {
    pub sink: mpsc::Sender<Incoming>,
    pub shared: Arc<SubShared>,
    /// The caller of `join_room`, until the server first confirms.
    pub confirm: Option<Reply<()>>,
}

impl Listener {
    pub fn end(self, reason: Error) {
        match self.confirm {
            Some(confirm) => {
                let _ = confirm.send(Err(reason));
            }
            None => self.shared.close(reason),
        }
    }
}

#[derive(Default)]
struct Room {
    listeners: HashMap<u64, Listener>,
    /// The current connection has joined it (its `join` was answered `ok`).
    joined: bool,
}

/// The rooms the client listens to, owned by the connection task.
#[derive(Default)]
pub(crate) struct Rooms {
    rooms: HashMap<String, Room>,
}

impl Rooms {
    /// Adds a listener; joins the room on `conn` when it is the room's first.
    pub fn add(
        &mut self,
        conn: Option<&mut Conn>,
        rid: u64,
        room: String,
        local: u64,
        listener: Listener,
    ) {
        let entry = self.rooms.entry(room.clone()).or_default();
        let first = entry.listeners.is_empty();
        entry.listeners.insert(local, listener);
        match conn {
            Some(conn) if first => join(conn, rid, room),
            // The room is joined already, or its `join` is on its way: confirm with it.
            Some(_) if entry.joined => confirm(entry),
            _ => {}
        }
    }

    /// Removes a listener; leaves the room on `conn` when it was the last.
    pub fn remove(
        &mut self,
        conn: Option<&mut Conn>,
        rid: u64,
        room: &str,
        local: u64,
        reply: Option<Reply<()>>,
    ) {
        let Some(entry) = self.rooms.get_mut(room) else {
            answer(reply);
            return;
        };
        entry.listeners.remove(&local);
        self.leave_if_empty(conn, rid, room, reply);
    }

    fn leave_if_empty(
        &mut self,
        conn: Option<&mut Conn>,
        rid: u64,
        room: &str,
        reply: Option<Reply<()>>,
    ) {
        let Some(entry) = self.rooms.get(room) else {
            answer(reply);
            return;
        };
        if !entry.listeners.is_empty() {
            answer(reply);
            return;
        }
        let joined = entry.joined;
        self.rooms.remove(room);
        match conn {
            Some(conn) if joined => {
                conn.request(
                    rid,
                    &Frame {
                        op: Some(Op::Leave),
                        rid: Some(rid),
                        room: Some(room.to_owned()),
                        ..Frame::default()
                    },
                    Pending::Leave { reply },
                );
            }
            _ => answer(reply),
        }
    }

    /// Joins every room on a new connection; `rid` gives each `join` its own.
    pub fn rejoin(&self, conn: &mut Conn, mut rid: impl FnMut() -> u64) {
        for room in self.rooms.keys() {
            join(conn, rid(), room.clone());
        }
    }

    /// The server answered `join`.
    pub fn joined(&mut self, room: &str) {
        if let Some(entry) = self.rooms.get_mut(room) {
            entry.joined = true;
            confirm(entry);
        }
    }

    /// The server refused `join`: the callers still waiting get the refusal, and a room that a
    /// new connection failed to join again ends for everyone. Err (drop the connection and try
    /// again later) for a passing refusal of a room the caller already has.
    pub fn refused(&mut self, room: &str, detail: ErrorDetail) -> Result<(), String> {
        let Some(entry) = self.rooms.get_mut(room) else {
            return Ok(());
        };
        let confirmed = entry
            .listeners
            .values()
            .any(|listener| listener.confirm.is_none());
        if confirmed && is_transient(detail.code) {
            return Err(format!("joining room {room:?} again was refused: {detail}"));
        }
        if let Some(entry) = self.rooms.remove(room) {
            for (_, listener) in entry.listeners {
                listener.end(Error::Server(detail.clone()));
            }
        }
        Ok(())
    }

    /// An event sent to `room`; a listener that cannot take it is dropped.
    pub fn deliver(
        &mut self,
        conn: &mut Conn,
        rid: u64,
        room: &str,
        event: Box<RawValue>,
        buffered: usize,
    ) {
        let Some(entry) = self.rooms.get_mut(room) else {
            return; // still in flight for a room just left
        };
        entry.listeners.retain(|_, listener| {
            let incoming = Incoming {
                event: event.clone(),
                delivery: None,
                generation: conn.generation(),
            };
            match listener.sink.try_send(incoming) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    listener.shared.close(Error::SlowConsumer { buffered });
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        if entry.listeners.is_empty() {
            self.leave_if_empty(Some(conn), rid, room, None);
        }
    }

    /// The server made the connection leave `room` (it fell behind).
    pub fn closed(&mut self, room: &str, detail: ErrorDetail) {
        if let Some(entry) = self.rooms.remove(room) {
            for (_, listener) in entry.listeners {
                listener.end(Error::SubscriptionClosed(detail.clone()));
            }
        }
    }

    /// The connection is gone: every room must be joined again on the next.
    pub fn lost(&mut self) {
        for entry in self.rooms.values_mut() {
            entry.joined = false;
        }
    }

    /// The client closed.
    pub fn close_all(&mut self) {
        for (_, entry) in self.rooms.drain() {
            for (_, listener) in entry.listeners {
                listener.end(Error::Closed);
            }
        }
    }
}

fn join(conn: &mut Conn, rid: u64, room: String) {
    let frame = Frame {
        op: Some(Op::Join),
        rid: Some(rid),
        room: Some(room.clone()),
        ..Frame::default()
    };
    conn.request(rid, &frame, Pending::Join { room });
}

fn confirm(entry: &mut Room) {
    for listener in entry.listeners.values_mut() {
        if let Some(confirm) = listener.confirm.take() {
            let _ = confirm.send(Ok(()));
        }
    }
}

fn answer(reply: Option<Reply<()>>) {
    if let Some(reply) = reply {
        let _ = reply.send(Ok(()));
    }
}
