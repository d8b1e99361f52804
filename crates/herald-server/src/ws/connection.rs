//! One WebSocket connection: the reader loop that decodes and acts on frames, and the writer
//! task that owns the socket's sending half.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use herald_core::{Event, Pattern};
use herald_engine::Engine;
use herald_protocol::From;
use herald_protocol::ws::{ConnectionLimits, Frame, Op};
use herald_protocol::{ErrorCode, ErrorDetail};
use tokio::sync::{Semaphore, mpsc};

use crate::auth::Identity;
use crate::convert::{check_group_name, check_max_in_flight, group_policy, group_spec, start_at};
use crate::error::ApiError;
use crate::http::events::authorize_events;
use crate::realtime::check_room;
use crate::realtime::listeners::Membership;
use crate::state::{AppState, ConnectionSlot};
use crate::ws::pub_frame::{self, PubFrame};
use crate::ws::publisher::{self, PubRequest, PublishQueue};
use crate::ws::rate::TokenBucket;
use crate::ws::subscriptions::{Kind, Subscriptions};

/// Verbs with an answer (nack, extend, reject, acks with a `rid`) one connection may have
/// waiting on their groups; more wait unread.
const PENDING_VERBS_MAX: usize = 1024;

/// Frames the writer sends in one flush at most.
const WRITE_BATCH_FRAMES_MAX: usize = 256;

/// How long a closing connection waits for its queued publishes to be stored and answered.
const CLOSE_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(state: AppState, identity: Identity, slot: ConnectionSlot, socket: WebSocket) {
    let limits = &state.config.limits;
    let heartbeat = state.config.heartbeat.0;
    let (sink, stream) = socket.split();
    let (outbound, outbound_queue) = mpsc::channel(limits.outbound_frames_max);
    let writer = tokio::spawn(write_loop(sink, outbound_queue, heartbeat));
    let welcome = Frame::welcome(
        slot.id,
        format!("herald/{}", env!("CARGO_PKG_VERSION")),
        u64::try_from(heartbeat.as_millis()).unwrap_or(u64::MAX),
        identity.name().map(str::to_owned),
        ConnectionLimits {
            event_bytes_max: limits.event_bytes_max as u64,
            frame_bytes_max: (limits.request_bytes_max + super::FRAME_OVERHEAD_BYTES) as u64,
            batch_events_max: limits.batch_events_max as u64,
            pending_publishes_max: limits.pending_publishes_max as u64,
            subscriptions_max: limits.subscriptions_per_connection_max as u64,
            publish_events_per_second_max: limits.publish_events_per_second_max,
        },
    );
    let (publishes, publisher) = publisher::spawn(
        state.clone(),
        outbound.clone(),
        limits.pending_publishes_max,
    );
    let mut connection = Connection {
        state: state.clone(),
        identity,
        outbound: outbound.clone(),
        publishes,
        subscriptions: Subscriptions::default(),
        rooms: None,
        connection_id: slot.id,
        bucket: TokenBucket::new(limits.publish_events_per_second_max, Instant::now()),
        verbs_in_flight: Arc::new(Semaphore::new(PENDING_VERBS_MAX)),
    };
    let close = if outbound.send(text(welcome)).await.is_err() {
        None
    } else {
        connection.read_loop(stream, heartbeat * 3).await
    };
    // Leave groups first (their deliveries go to other members at once), then let queued
    // publishes finish so that every `pub` read is answered, then close.
    let Connection {
        subscriptions,
        rooms,
        publishes,
        outbound: own_outbound,
        verbs_in_flight,
        ..
    } = connection;
    // Verbs already read (acks with a `rid`, nacks…) reach their groups before the
    // subscriptions leave them, or a last ack would count as unacked and be redelivered.
    let _ = tokio::time::timeout(
        CLOSE_DRAIN_TIMEOUT,
        verbs_in_flight.acquire_many(PENDING_VERBS_MAX as u32),
    )
    .await;
    drop(subscriptions);
    drop(rooms);
    drop(publishes);
    drop(own_outbound);
    let _ = tokio::time::timeout(CLOSE_DRAIN_TIMEOUT, publisher).await;
    if let Some(close) = close {
        let _ = outbound.send(Message::Close(Some(close))).await;
    }
    drop(outbound);
    let _ = writer.await;
    drop(slot);
}

fn text(frame: Frame) -> Message {
    Message::Text(frame.encode().into())
}

fn close_frame(code: u16, reason: &str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

/// Sends queued frames, several per flush, and a ping every `heartbeat`.
async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut queue: mpsc::Receiver<Message>,
    heartbeat: Duration,
) {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    loop {
        tokio::select! {
            message = queue.recv() => {
                let Some(message) = message else {
                    let _ = sink.close().await;
                    return;
                };
                let mut closing = matches!(message, Message::Close(_));
                if sink.feed(message).await.is_err() {
                    return;
                }
                let mut written = 1;
                while written < WRITE_BATCH_FRAMES_MAX && !closing {
                    let Ok(message) = queue.try_recv() else { break };
                    closing = matches!(message, Message::Close(_));
                    if sink.feed(message).await.is_err() {
                        return;
                    }
                    written += 1;
                }
                if sink.flush().await.is_err() || closing {
                    return;
                }
            }
            _ = ping.tick() => {
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
        }
    }
}

struct Connection {
    state: AppState,
    identity: Identity,
    outbound: mpsc::Sender<Message>,
    publishes: PublishQueue,
    subscriptions: Subscriptions,
    /// The rooms this connection listens to; made at its first `join`.
    rooms: Option<Membership>,
    connection_id: u64,
    bucket: TokenBucket,
    verbs_in_flight: Arc<Semaphore>,
}

/// What a frame's handling asks of the loop.
enum Next {
    Continue,
    Close(CloseFrame),
}

impl Connection {
    /// Reads until the client goes, falls silent, or the server drains; returns the close frame
    /// to send, if any.
    async fn read_loop(
        &mut self,
        mut stream: SplitStream<WebSocket>,
        idle_max: Duration,
    ) -> Option<CloseFrame> {
        let shutdown = self.state.shutdown.clone();
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => {
                    return Some(close_frame(close_code::AWAY, "the server is shutting down"));
                }
                message = tokio::time::timeout(idle_max, stream.next()) => message,
            };
            let message = match message {
                Err(_) => {
                    return Some(close_frame(
                        close_code::POLICY,
                        "no frame or pong within three heartbeats",
                    ));
                }
                Ok(None) => return None,
                Ok(Some(Err(error))) => {
                    tracing::debug!(%error, "websocket read failed");
                    return Some(close_frame(close_code::SIZE, &error.to_string()));
                }
                Ok(Some(Ok(message))) => message,
            };
            let next = match message {
                Message::Text(text) => self.on_frame(text.as_str()).await,
                Message::Binary(_) => {
                    self.refuse(
                        None,
                        None,
                        ApiError::new(
                            ErrorCode::BadFrame,
                            "binary frames are not supported; send JSON text frames",
                        ),
                    )
                    .await
                }
                Message::Close(_) => return None,
                Message::Ping(_) | Message::Pong(_) => Next::Continue,
            };
            if let Next::Close(frame) = next {
                return Some(frame);
            }
        }
    }

    async fn send(&self, frame: Frame) -> Next {
        if self.outbound.send(text(frame)).await.is_err() {
            return Next::Close(close_frame(close_code::ERROR, "writer stopped"));
        }
        Next::Continue
    }

    async fn refuse(&self, rid: Option<u64>, sid: Option<u64>, error: ApiError) -> Next {
        if matches!(error.code(), ErrorCode::BadFrame | ErrorCode::BadRequest) {
            self.state.metrics.bad_frames.inc();
        }
        self.send(Frame::error(rid, sid, error.detail)).await
    }

    async fn on_frame(&mut self, text: &str) -> Next {
        if let Some(PubFrame { rid, events }) = pub_frame::decode(text, &self.state.parse_context())
        {
            return match self.publish(rid, events).await {
                Ok(()) => Next::Continue,
                Err(error) => self.refuse(Some(rid), None, error).await,
            };
        }
        let (op, frame) = match Frame::decode_client(text.as_bytes()) {
            Ok(decoded) => decoded,
            Err(error) => {
                // A frame refused for one bad field still names its request, if it has one.
                let rid = serde_json::from_str::<serde_json::Value>(text)
                    .ok()
                    .and_then(|frame| frame.get("rid")?.as_u64());
                return self
                    .refuse(
                        rid,
                        None,
                        ApiError::new(ErrorCode::BadFrame, error.to_string()),
                    )
                    .await;
            }
        };
        let rid = frame.rid;
        let result = match op {
            Op::Pub => self.on_pub(frame).await,
            Op::Sub => self.on_sub(frame).await,
            Op::Unsub => self.on_unsub(&frame),
            Op::Ack | Op::Nack | Op::Extend | Op::Reject => self.on_verb(op, frame).await,
            Op::Ping => Ok(Some(Frame::pong(rid))),
            Op::Send => self.on_send(frame),
            Op::Join => self.on_join(&frame),
            Op::Leave => self.on_leave(&frame),
            _ => Err(ApiError::new(
                ErrorCode::BadFrame,
                format!("op {op:?} is the server's"),
            )),
        };
        match result {
            Ok(Some(answer)) => self.send(answer).await,
            Ok(None) => Next::Continue,
            Err(error) => self.refuse(rid, None, error).await,
        }
    }

    /// A `pub` frame that `pub_frame::decode` left to the general path: decodes and checks every
    /// event, naming the first that is refused.
    async fn on_pub(&mut self, frame: Frame) -> Result<Option<Frame>, ApiError> {
        let rid = frame.rid.unwrap_or_default();
        let raw_events = frame.events.unwrap_or_default();
        let limits = &self.state.config.limits;
        if raw_events.is_empty() {
            return Err(ApiError::bad_request("\"events\" is empty"));
        }
        if raw_events.len() > limits.batch_events_max {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!(
                    "frame has {} events, more than the limit of {}",
                    raw_events.len(),
                    limits.batch_events_max
                ),
            ));
        }
        let context = self.state.parse_context();
        let mut events = Vec::with_capacity(raw_events.len());
        for (index, raw) in raw_events.iter().enumerate() {
            let event = Event::from_json(raw.get().as_bytes(), &context).map_err(|error| {
                let error = ApiError::from(error);
                ApiError::new(
                    error.code(),
                    format!("event at index {index}: {}", error.detail.message),
                )
                .with_details(serde_json::json!({ "index": index }))
            })?;
            events.push(event);
        }
        self.publish(rid, events).await?;
        Ok(None)
    }

    /// Hands a frame's decoded events to the publisher (waiting, and so reading no further,
    /// while `pendingPublishesMax` frames are unanswered).
    async fn publish(&mut self, rid: u64, mut events: Vec<Event>) -> Result<(), ApiError> {
        let limits = &self.state.config.limits;
        authorize_events(&self.identity, &mut events, true)?;
        if !self.bucket.try_take(events.len() as u64, Instant::now()) {
            self.state
                .metrics
                .rate_limited_events
                .inc_by(events.len() as u64);
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "publish rate above {} events per second on this connection; nothing was \
                     stored, retry later",
                    limits.publish_events_per_second_max
                ),
            ));
        }
        self.publishes
            .send(PubRequest { rid, events })
            .await
            .map_err(|_| ApiError::new(ErrorCode::Unavailable, "the publisher stopped"))
    }

    /// An event for browsers, not stored; answered at once with the sockets it reached.
    fn on_send(&mut self, frame: Frame) -> Result<Option<Frame>, ApiError> {
        let rid = frame.rid.unwrap_or_default();
        let (Some(target), Some(raw)) = (frame.to, frame.event) else {
            return Err(ApiError::new(
                ErrorCode::BadFrame,
                "op \"send\" needs \"to\" and \"event\"",
            ));
        };
        let event = Event::from_json(raw.get().as_bytes(), &self.state.parse_context())?;
        if !self.bucket.try_take(1, Instant::now()) {
            self.state.metrics.rate_limited_events.inc();
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "publish rate above {} events per second on this connection; nothing was \
                     sent, retry later",
                    self.state.config.limits.publish_events_per_second_max
                ),
            ));
        }
        let sent = crate::http::realtime::send(&self.state, &self.identity, &target, event)?;
        Ok(Some(Frame::sent(rid, sent.delivered)))
    }

    /// Listens to a room: checked against the token's `rooms` grants, idempotent, at most
    /// `limits.rooms_per_connection_max` rooms.
    fn on_join(&mut self, frame: &Frame) -> Result<Option<Frame>, ApiError> {
        let rid = frame.rid.unwrap_or_default();
        let room = check_room(frame.room.as_deref().unwrap_or_default())?;
        self.identity.check_room(&room)?;
        if self.state.shutdown.is_cancelled() {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "the server is shutting down",
            ));
        }
        let limits = &self.state.config.limits;
        let rooms = self.rooms.get_or_insert_with(|| {
            self.state.realtime.listeners().membership(
                self.connection_id,
                limits.live_buffer_events,
                self.outbound.clone(),
            )
        });
        rooms.join(&room, limits.rooms_per_connection_max)?;
        Ok(Some(Frame::ok(rid)))
    }

    /// Stops listening to a room; idempotent.
    fn on_leave(&mut self, frame: &Frame) -> Result<Option<Frame>, ApiError> {
        let room = check_room(frame.room.as_deref().unwrap_or_default())?;
        if let Some(rooms) = &self.rooms {
            rooms.leave(&room);
        }
        Ok(Some(Frame::ok(frame.rid.unwrap_or_default())))
    }

    async fn on_sub(&mut self, frame: Frame) -> Result<Option<Frame>, ApiError> {
        let rid = frame.rid.unwrap_or_default();
        let max = self.state.config.limits.subscriptions_per_connection_max;
        if self.subscriptions.len() >= max {
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                format!("this connection has its limit of {max} subscriptions"),
            ));
        }
        let pattern = Pattern::new(frame.pattern.as_deref().unwrap_or_default())?;
        self.identity.check_subscribe(&pattern)?;
        let from = frame.from.unwrap_or(From::Latest);
        match frame.group {
            None => {
                if frame.max_in_flight.is_some() || frame.policy.is_some() || frame.batch.is_some()
                {
                    return Err(ApiError::bad_request(
                        "\"maxInFlight\", \"policy\" and \"batch\" apply to group subscriptions \
                         only",
                    ));
                }
                let subscription = self.state.engine.subscribe(pattern, start_at(from)).await?;
                let sid = self.subscriptions.next_sid();
                if let Next::Close(_) = self.send(Frame::subscribed(rid, sid)).await {
                    return Ok(None);
                }
                self.subscriptions
                    .add_live(&self.state, sid, subscription, self.outbound.clone());
            }
            Some(group) => {
                check_group_name(&group)?;
                let policy = group_policy(frame.policy.as_ref())?;
                let max_in_flight = match frame.max_in_flight {
                    Some(value) => Some(check_max_in_flight(value, "maxInFlight")?),
                    None => None,
                };
                let credit = max_in_flight.unwrap_or(policy.max_in_flight);
                let spec = group_spec(&group, pattern, from, policy)?;
                let member = self.state.engine.join_group(spec, max_in_flight).await?;
                let sid = self.subscriptions.next_sid();
                if let Next::Close(_) = self.send(Frame::subscribed(rid, sid)).await {
                    return Ok(None);
                }
                self.subscriptions.add_group(
                    &self.state,
                    sid,
                    member,
                    credit,
                    self.outbound.clone(),
                    frame.batch == Some(true),
                );
            }
        }
        Ok(None)
    }

    fn on_unsub(&mut self, frame: &Frame) -> Result<Option<Frame>, ApiError> {
        let sid = frame.sid.unwrap_or_default();
        if !self.subscriptions.remove(sid) {
            return Err(unknown_subscription(sid));
        }
        Ok(Some(Frame::ok(frame.rid.unwrap_or_default())))
    }

    /// ack, nack, extend, reject. A delivery this connection was not given (or already settled)
    /// is refused here, without asking the group. Acks without a `rid` are fire-and-forget;
    /// everything else is answered when the group has recorded it, from a task of its own so
    /// that the connection keeps reading.
    async fn on_verb(&mut self, op: Op, frame: Frame) -> Result<Option<Frame>, ApiError> {
        let sid = frame.sid.unwrap_or_default();
        let rid = frame.rid;
        let Some(subscription) = self.subscriptions.get(sid) else {
            return Err(unknown_subscription(sid));
        };
        let Kind::Group { verbs, outstanding } = &subscription.kind else {
            return Err(ApiError::new(
                ErrorCode::BadFrame,
                format!("subscription {sid} is live: only group deliveries are acked"),
            ));
        };
        let ids = match (frame.delivery_id, frame.delivery_ids) {
            (Some(id), _) => vec![id],
            (None, Some(ids)) => ids,
            (None, None) => Vec::new(),
        };
        {
            let mut outstanding = outstanding.lock();
            if let Some(unknown) = ids.iter().find(|id| !outstanding.contains(**id)) {
                return Err(ApiError::new(
                    ErrorCode::UnknownDelivery,
                    format!(
                        "delivery {unknown} is not in flight on subscription {sid} (never \
                         delivered here, or already acked, nacked or rejected)"
                    ),
                )
                .with_details(serde_json::json!({ "sid": sid, "deliveryId": unknown })));
            }
            if op != Op::Extend {
                for id in &ids {
                    outstanding.remove(*id);
                }
            }
        }
        if op == Op::Ack && rid.is_none() {
            verbs.ack_many(&ids).await?;
            return Ok(None);
        }
        let permit = self
            .verbs_in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::new(ErrorCode::Unavailable, "the connection is closing"))?;
        let verbs = verbs.clone();
        let outbound = self.outbound.clone();
        let delay = frame.delay_ms.map(Duration::from_millis);
        let reason = frame.reason;
        tokio::spawn(async move {
            let mut result = Ok(());
            for id in ids {
                result = match op {
                    Op::Ack => verbs.ack_sync(id).await,
                    Op::Nack => verbs.nack(id, delay, reason.clone()).await,
                    Op::Extend => verbs.extend(id).await,
                    _ => verbs.reject(id, reason.clone()).await,
                };
                if result.is_err() {
                    break;
                }
            }
            let answer = match (result, rid) {
                (Ok(()), Some(rid)) => Some(Frame::ok(rid)),
                (Ok(()), None) => None,
                (Err(error), rid) => {
                    let error = ApiError::from(error);
                    Some(Frame::error(rid, Some(sid), error.detail))
                }
            };
            if let Some(answer) = answer {
                let _ = outbound.send(text(answer)).await;
            }
            drop(permit);
        });
        Ok(None)
    }
}

fn unknown_subscription(sid: u64) -> ApiError {
    ApiError {
        detail: ErrorDetail::new(
            ErrorCode::UnknownSubscription,
            format!("no subscription {sid} on this connection"),
        ),
    }
}
