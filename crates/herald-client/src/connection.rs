//! The background task that owns the WebSocket: one connection at a time, reconnected with
//! backoff, with the client's subscriptions re-created on each new connection.
//!
//! Everything the client asks for arrives on two channels: publishes on a bounded one, read
//! only while the connection has room for another `pub` frame (so a fast publisher waits
//! instead of piling frames up), and everything else on an unbounded one that is always read
//! (acks must never wait behind publishes). A second small task writes to the socket so that
//! this one never stops reading: a client that stops reading while the server stops reading
//! is how two WebSocket peers deadlock.
//!
//! Publishes are merged: requests that queue up while a frame is written go out together in
//! the next `pub` frame, and the `puback` is split back into each request's results. If the
//! server refuses a merged frame, its requests are sent again one frame each, so that one
//! caller's bad event never fails another caller's publish.
//!
//! On a lost connection, `pub` frames without an answer are sent again on the next connection.
//! Every event carries an id made by the client, so the server's dedupe window turns a re-send
//! of an event that was in fact stored into a `duplicate: true` answer instead of a copy.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use herald_protocol::From;
use herald_protocol::http::{GroupPolicyConfig, PublishResult};
use herald_protocol::ws::{ConnectionLimits, EventItem, Frame, Op};
use herald_protocol::{ErrorCode, ErrorDetail};
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::error::{Error, Result};
use crate::options::{ClientOptions, backoff_delay};
use crate::rooms::{Listener, Rooms};
use herald_protocol::ws::WS_READ_BUFFER_BYTES;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Room kept in a frame for everything around the events.
const FRAME_OVERHEAD_BYTES: usize = 1024;
/// Heartbeats of silence after which the connection counts as dead (docs/PROTOCOL.md).
const SILENT_HEARTBEATS_MAX: u32 = 3;

pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

pub(crate) struct PublishRequest {
    pub events: Vec<Box<RawValue>>,
    pub bytes: usize,
    pub reply: Reply<Vec<PublishResult>>,
    /// Send in a frame of its own (after a merged frame was refused).
    pub alone: bool,
}

impl PublishRequest {
    pub fn new(events: Vec<Box<RawValue>>, reply: Reply<Vec<PublishResult>>) -> PublishRequest {
        let bytes = events.iter().map(|event| event.get().len() + 1).sum();
        PublishRequest {
            events,
            bytes,
            reply,
            alone: false,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct SubSpec {
    pub pattern: String,
    pub group: Option<String>,
    pub from: Option<From>,
    pub max_in_flight: Option<u32>,
    pub policy: Option<GroupPolicyConfig>,
}

/// One event for a subscription, tagged with the connection that brought it.
#[derive(Debug)]
pub(crate) struct Incoming {
    pub event: Box<RawValue>,
    /// `(deliveryId, attempt)` in a group.
    pub delivery: Option<(u64, u32)>,
    pub generation: u64,
}

pub(crate) enum SubSink {
    Live(mpsc::Sender<Incoming>),
    Group(mpsc::UnboundedSender<Incoming>),
}

/// What a subscription's handle and the task share.
#[derive(Debug, Default)]
pub(crate) struct SubShared {
    /// The connection the subscription currently lives on; 0 while it has none. A delivery from
    /// another connection is stale: the server has already handed its event out again.
    pub generation: AtomicU64,
    /// Why the subscription ended, read by the handle once its channel is drained.
    pub closed: Mutex<Option<Error>>,
}

impl SubShared {
    pub fn close(&self, error: Error) {
        if let Ok(mut closed) = self.closed.lock()
            && closed.is_none()
        {
            *closed = Some(error);
        }
    }

    pub fn take_closed(&self) -> Option<Error> {
        self.closed.lock().ok().and_then(|mut closed| closed.take())
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Verb {
    Ack,
    Nack {
        delay_ms: Option<u64>,
        reason: Option<String>,
    },
    Extend,
    Reject {
        reason: Option<String>,
    },
}

pub(crate) enum Control {
    Subscribe {
        local: u64,
        spec: SubSpec,
        sink: SubSink,
        shared: Arc<SubShared>,
        confirm: Reply<()>,
    },
    Unsubscribe {
        local: u64,
        reply: Option<Reply<()>>,
    },
    Verb {
        local: u64,
        generation: u64,
        delivery_id: u64,
        verb: Verb,
        /// Without a reply the verb is fire-and-forget (no `rid`).
        reply: Option<Reply<()>>,
    },
    Ping {
        reply: Reply<()>,
    },
    Join {
        local: u64,
        room: String,
        listener: Listener,
    },
    Leave {
        local: u64,
        room: String,
        reply: Option<Reply<()>>,
    },
    Close,
}

struct Sub {
    spec: SubSpec,
    sink: SubSink,
    shared: Arc<SubShared>,
    /// The caller of `subscribe`, until the server first confirms.
    confirm: Option<Reply<()>>,
    sid: Option<u64>,
}

pub(crate) enum Pending {
    Sub { local: u64 },
    Unsub { reply: Option<Reply<()>> },
    Verb { reply: Reply<()> },
    Ping { reply: Reply<()> },
    Join { room: String },
    Leave { reply: Option<Reply<()>> },
}

/// One open connection.
pub(crate) struct Conn {
    stream: SplitStream<WsStream>,
    writer: mpsc::UnboundedSender<Message>,
    generation: u64,
    heartbeat: Duration,
    limits: ConnectionLimits,
    pending: HashMap<u64, Pending>,
    /// Unanswered `pub` frames by rid (rids grow, so this is send order).
    publishes: BTreeMap<u64, Vec<PublishRequest>>,
    sids: HashMap<u64, u64>,
    last_heard: Instant,
}

impl Conn {
    fn send(&self, frame: &Frame) -> bool {
        self.writer
            .send(Message::Text(frame.encode().into()))
            .is_ok()
    }

    /// Sends `frame` and waits for the answer to its `rid`.
    pub(crate) fn request(&mut self, rid: u64, frame: &Frame, pending: Pending) {
        self.send(frame);
        self.pending.insert(rid, pending);
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }
}

/// Refusals that a later attempt on a new connection may not meet again.
pub(crate) fn is_transient(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Unavailable | ErrorCode::Internal | ErrorCode::RateLimited
    )
}

/// Opens a connection and reads its `welcome`.
pub(crate) async fn connect(
    ws_url: &str,
    token: Option<&str>,
    timeout: Duration,
    generation: u64,
) -> Result<Conn> {
    let connect_error = |reason: String| Error::Connect {
        url: ws_url.to_owned(),
        reason,
    };
    let mut request = ws_url
        .into_client_request()
        .map_err(|error| connect_error(error.to_string()))?;
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| connect_error("the token is not a valid header value".to_owned()))?;
        request.headers_mut().insert("authorization", value);
    }
    let opened = tokio::time::timeout(timeout, async {
        let (socket, _) =
            tokio_tungstenite::connect_async_with_config(request, Some(read_buffer_config()), true)
                .await
                .map_err(|error| connect_error(handshake_reason(error)))?;
        let (sink, mut stream) = socket.split();
        let welcome = loop {
            match stream.next().await {
                Some(Ok(Message::Text(text))) => break text,
                Some(Ok(Message::Close(close))) => {
                    return Err(connect_error(format!("closed before welcome: {close:?}")));
                }
                Some(Ok(_)) => continue,
                Some(Err(error)) => return Err(connect_error(error.to_string())),
                None => return Err(connect_error("closed before welcome".to_owned())),
            }
        };
        Ok((sink, stream, welcome))
    })
    .await
    .map_err(|_| connect_error(format!("no welcome within {timeout:?}")))?;
    let (sink, stream, welcome) = opened?;
    let frame = Frame::decode(welcome.as_bytes())
        .map_err(|error| Error::Protocol(format!("welcome: {error}")))?;
    let (Some(Op::Welcome), Some(heartbeat_ms), Some(limits)) =
        (frame.op, frame.heartbeat_ms, frame.limits)
    else {
        return Err(Error::Protocol(format!(
            "expected welcome as the first frame, got {welcome}"
        )));
    };
    let (writer, queue) = mpsc::unbounded_channel();
    tokio::spawn(write_loop(sink, queue));
    Ok(Conn {
        stream,
        writer,
        generation,
        heartbeat: Duration::from_millis(heartbeat_ms.max(1)),
        limits,
        pending: HashMap::new(),
        publishes: BTreeMap::new(),
        sids: HashMap::new(),
        last_heard: Instant::now(),
    })
}

/// A refused upgrade carries the server's JSON error in its body; show that, not just a status.
fn handshake_reason(error: tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match error {
        WsError::Http(response) => {
            let status = response.status();
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .into_owned();
            match serde_json::from_str::<herald_protocol::ErrorBody>(&body) {
                Ok(body) => format!("HTTP {status}: {}", body.error),
                Err(_) => format!("HTTP {status}: {body}"),
            }
        }
        other => other.to_string(),
    }
}

/// Writes frames as they come, flushing once the queue is empty.
async fn write_loop(
    mut sink: SplitSink<WsStream, Message>,
    mut queue: mpsc::UnboundedReceiver<Message>,
) {
    while let Some(message) = queue.recv().await {
        if sink.feed(message).await.is_err() {
            return;
        }
        while let Ok(message) = queue.try_recv() {
            if sink.feed(message).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    let _ = sink.close().await;
}

/// Why a connection ended.
enum Ended {
    Lost(String),
    ClientGone,
}

pub(crate) struct Task {
    pub options: Arc<ClientOptions>,
    pub ws_url: String,
    pub control: mpsc::UnboundedReceiver<Control>,
    pub publishes: mpsc::Receiver<PublishRequest>,
    publishes_open: bool,
    subs: HashMap<u64, Sub>,
    rooms: Rooms,
    /// Publishes waiting for a connection (or for room on it), oldest first.
    buffer: VecDeque<PublishRequest>,
    buffered_events: usize,
    generation: u64,
    next_rid: u64,
}

impl Task {
    pub fn new(
        options: Arc<ClientOptions>,
        ws_url: String,
        control: mpsc::UnboundedReceiver<Control>,
        publishes: mpsc::Receiver<PublishRequest>,
        generation: u64,
    ) -> Task {
        Task {
            options,
            ws_url,
            control,
            publishes,
            publishes_open: true,
            subs: HashMap::new(),
            rooms: Rooms::default(),
            buffer: VecDeque::new(),
            buffered_events: 0,
            generation,
            next_rid: 1,
        }
    }

    pub async fn run(mut self, mut conn: Conn) {
        loop {
            match self.serve(&mut conn).await {
                Ended::ClientGone => {
                    self.shut_down(conn);
                    return;
                }
                Ended::Lost(reason) => {
                    tracing::warn!(url = %self.ws_url, %reason, "herald connection lost; reconnecting");
                    self.lost(conn);
                }
            }
            match self.reconnect().await {
                Some(new) => conn = new,
                None => {
                    self.fail_everything();
                    return;
                }
            }
        }
    }

    fn rid(&mut self) -> u64 {
        let rid = self.next_rid;
        self.next_rid += 1;
        rid
    }

    /// Serves one connection until it is lost or the client goes away.
    async fn serve(&mut self, conn: &mut Conn) -> Ended {
        for local in self.subs.keys().copied().collect::<Vec<_>>() {
            self.send_sub(conn, local);
        }
        let next_rid = &mut self.next_rid;
        self.rooms.rejoin(conn, || {
            let rid = *next_rid;
            *next_rid += 1;
            rid
        });
        let silence_max = conn.heartbeat * SILENT_HEARTBEATS_MAX;
        // Set once the client closes: publishes already taken are still sent and answered.
        let mut closing: Option<Instant> = None;
        loop {
            self.send_publishes(conn).await;
            if let Some(until) = closing
                && ((self.buffer.is_empty() && conn.publishes.is_empty())
                    || Instant::now() >= until)
            {
                return Ended::ClientGone;
            }
            let room = closing.is_none() && conn.publishes.len() < pending_publishes_max(conn);
            let deadline = match closing {
                Some(until) => until,
                None => conn.last_heard + silence_max,
            };
            tokio::select! {
                message = conn.stream.next() => {
                    conn.last_heard = Instant::now();
                    match message {
                        Some(Ok(Message::Text(text))) => {
                            if let Err(reason) = self.on_frame(conn, text.as_bytes()) {
                                return Ended::Lost(reason);
                            }
                        }
                        Some(Ok(Message::Close(close))) => {
                            return Ended::Lost(format!("closed by the server: {close:?}"));
                        }
                        Some(Ok(_)) => {}
                        Some(Err(error)) => return Ended::Lost(error.to_string()),
                        None => return Ended::Lost("the connection ended".to_owned()),
                    }
                }
                control = self.control.recv(), if closing.is_none() => match control {
                    Some(Control::Close) | None => {
                        closing = Some(Instant::now() + self.options.timeout);
                    }
                    Some(control) => self.on_control_connected(conn, control),
                },
                request = self.publishes.recv(), if self.publishes_open && room => match request {
                    Some(request) => self.enqueue(request),
                    None => self.publishes_open = false,
                },
                () = tokio::time::sleep_until(deadline) => {
                    if closing.is_none() && conn.last_heard + silence_max <= Instant::now() {
                        return Ended::Lost(format!("nothing heard for {silence_max:?}"));
                    }
                }
            }
        }
    }

    /// Queues a publish; fails it at once when the buffer is full.
    fn enqueue(&mut self, request: PublishRequest) {
        let events = request.events.len();
        if self.buffered_events > 0
            && self.buffered_events + events > self.options.publish_buffer_events
        {
            let _ = request.reply.send(Err(Error::BufferFull {
                events: self.buffered_events,
            }));
            return;
        }
        self.buffered_events += events;
        self.buffer.push_back(request);
    }

    fn take_buffered(&mut self) -> Option<PublishRequest> {
        let request = self.buffer.pop_front()?;
        self.buffered_events -= request.events.len();
        Some(request)
    }

    /// Sends buffered publishes as merged frames while the connection has room.
    async fn send_publishes(&mut self, conn: &mut Conn) {
        let frame_bytes_max = usize::try_from(conn.limits.frame_bytes_max)
            .unwrap_or(usize::MAX)
            .saturating_sub(FRAME_OVERHEAD_BYTES);
        let batch_max = self
            .options
            .batch_events_max
            .min(usize::try_from(conn.limits.batch_events_max).unwrap_or(usize::MAX))
            .max(1);
        while conn.publishes.len() < pending_publishes_max(conn) {
            if self.buffer.is_empty() {
                self.pull_publishes();
                if self.buffer.is_empty() {
                    return;
                }
            }
            let mut batch: Vec<PublishRequest> = Vec::new();
            let (mut events, mut bytes) = (0, 0);
            let linger_until = Instant::now() + self.options.linger;
            loop {
                let Some(next) = self.buffer.front() else {
                    self.pull_publishes();
                    if self.buffer.is_empty() && !self.options.linger.is_zero() {
                        self.linger(linger_until).await;
                    }
                    if self.buffer.is_empty() {
                        break;
                    }
                    continue;
                };
                let fits = batch.is_empty()
                    || (!next.alone
                        && !batch[0].alone
                        && events + next.events.len() <= batch_max
                        && bytes + next.bytes <= frame_bytes_max);
                if !fits {
                    break;
                }
                let Some(request) = self.take_buffered() else {
                    break;
                };
                if request.reply.is_closed() {
                    // The caller gave up (timeout); it was told the publish failed.
                    continue;
                }
                if request.bytes > frame_bytes_max {
                    let _ = request.reply.send(Err(Error::Server(ErrorDetail::new(
                        ErrorCode::TooLarge,
                        format!(
                            "the publish is {} bytes, more than the server's frame limit of {} bytes",
                            request.bytes, conn.limits.frame_bytes_max
                        ),
                    ))));
                    continue;
                }
                events += request.events.len();
                bytes += request.bytes;
                batch.push(request);
            }
            if batch.is_empty() {
                continue;
            }
            let rid = self.rid();
            let all: Vec<Box<RawValue>> = batch
                .iter()
                .flat_map(|request| request.events.iter().cloned())
                .collect();
            let frame = Frame {
                op: Some(Op::Pub),
                rid: Some(rid),
                events: Some(all),
                ..Frame::default()
            };
            conn.send(&frame);
            conn.publishes.insert(rid, batch);
        }
    }

    /// Moves publishes already waiting on the channel into the buffer, without waiting.
    fn pull_publishes(&mut self) {
        if !self.publishes_open {
            return;
        }
        while self.buffered_events < self.options.batch_events_max {
            match self.publishes.try_recv() {
                Ok(request) => self.enqueue(request),
                Err(mpsc::error::TryRecvError::Empty) => return,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.publishes_open = false;
                    return;
                }
            }
        }
    }

    async fn linger(&mut self, until: Instant) {
        if !self.publishes_open {
            return;
        }
        if let Ok(Some(request)) = tokio::time::timeout_at(until, self.publishes.recv()).await {
            self.enqueue(request);
        }
    }

    fn send_sub(&mut self, conn: &mut Conn, local: u64) {
        let rid = self.rid();
        let Some(sub) = self.subs.get(&local) else {
            return;
        };
        // A live subscription resumes from the latest event: what it missed while the
        // connection was down is gone (at-most-once). A group resumes where the group is.
        let from = if sub.confirm.is_none() && sub.spec.group.is_none() {
            None
        } else {
            sub.spec.from
        };
        let frame = Frame {
            op: Some(Op::Sub),
            rid: Some(rid),
            pattern: Some(sub.spec.pattern.clone()),
            group: sub.spec.group.clone(),
            from,
            max_in_flight: sub.spec.max_in_flight,
            policy: sub.spec.policy.clone(),
            // Group deliveries arrive several per `events` frame (live ones one per frame).
            batch: sub.spec.group.is_some().then_some(true),
            ..Frame::default()
        };
        conn.send(&frame);
        conn.pending.insert(rid, Pending::Sub { local });
    }

    fn send_unsub(&mut self, conn: &mut Conn, sid: u64, reply: Option<Reply<()>>) {
        let rid = self.rid();
        conn.sids.remove(&sid);
        conn.send(&Frame {
            op: Some(Op::Unsub),
            rid: Some(rid),
            sid: Some(sid),
            ..Frame::default()
        });
        conn.pending.insert(rid, Pending::Unsub { reply });
    }

    /// Ends a subscription on the client's side, telling the server when it has a sid.
    fn drop_sub(&mut self, conn: Option<&mut Conn>, local: u64, reason: Option<Error>) {
        let Some(sub) = self.subs.remove(&local) else {
            return;
        };
        sub.shared.generation.store(0, Ordering::Release);
        if let Some(reason) = reason {
            sub.shared.close(reason);
        }
        if let (Some(conn), Some(sid)) = (conn, sub.sid) {
            self.send_unsub(conn, sid, None);
        }
    }

    fn on_control_connected(&mut self, conn: &mut Conn, control: Control) {
        match control {
            Control::Subscribe {
                local,
                spec,
                sink,
                shared,
                confirm,
            } => {
                self.subs.insert(
                    local,
                    Sub {
                        spec,
                        sink,
                        shared,
                        confirm: Some(confirm),
                        sid: None,
                    },
                );
                self.send_sub(conn, local);
            }
            Control::Unsubscribe { local, reply } => {
                match self.subs.remove(&local) {
                    Some(Sub {
                        sid: Some(sid),
                        shared,
                        ..
                    }) => {
                        shared.generation.store(0, Ordering::Release);
                        self.send_unsub(conn, sid, reply);
                    }
                    // Not confirmed yet: its `subscribed` will be answered with an unsub.
                    Some(_) | None => {
                        if let Some(reply) = reply {
                            let _ = reply.send(Ok(()));
                        }
                    }
                }
            }
            Control::Verb {
                local,
                generation,
                delivery_id,
                verb,
                reply,
            } => {
                let sid = self.subs.get(&local).and_then(|sub| sub.sid);
                let (Some(sid), true) = (sid, generation == conn.generation) else {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(Error::DeliveryExpired { delivery_id }));
                    }
                    return;
                };
                let rid = reply.as_ref().map(|_| self.rid());
                let mut frame = Frame {
                    rid,
                    sid: Some(sid),
                    delivery_id: Some(delivery_id),
                    ..Frame::default()
                };
                frame.op = Some(match verb {
                    Verb::Ack => Op::Ack,
                    Verb::Nack { delay_ms, reason } => {
                        frame.delay_ms = delay_ms;
                        frame.reason = reason;
                        Op::Nack
                    }
                    Verb::Extend => Op::Extend,
                    Verb::Reject { reason } => {
                        frame.reason = reason;
                        Op::Reject
                    }
                });
                conn.send(&frame);
                if let (Some(rid), Some(reply)) = (rid, reply) {
                    conn.pending.insert(rid, Pending::Verb { reply });
                }
            }
            Control::Ping { reply } => {
                let rid = self.rid();
                conn.send(&Frame {
                    op: Some(Op::Ping),
                    rid: Some(rid),
                    ..Frame::default()
                });
                conn.pending.insert(rid, Pending::Ping { reply });
            }
            Control::Join {
                local,
                room,
                listener,
            } => {
                let rid = self.rid();
                self.rooms.add(Some(conn), rid, room, local, listener);
            }
            Control::Leave { local, room, reply } => {
                let rid = self.rid();
                self.rooms.remove(Some(conn), rid, &room, local, reply);
            }
            Control::Close => {}
        }
    }

    /// Acts on one server frame; an error means the connection cannot be trusted any more.
    fn on_frame(&mut self, conn: &mut Conn, bytes: &[u8]) -> Result<(), String> {
        let frame = Frame::decode(bytes).map_err(|error| error.to_string())?;
        let Some(op) = frame.op else {
            return Err("a frame without op".to_owned());
        };
        match op {
            Op::Event if frame.room.is_some() => {
                let (Some(room), Some(event)) = (frame.room, frame.event) else {
                    return Err("room event without event".to_owned());
                };
                let rid = self.rid();
                let buffered = self.options.live_buffer_events;
                self.rooms.deliver(conn, rid, &room, event, buffered);
            }
            Op::Event => self.on_event(conn, frame),
            Op::Events => {
                let (Some(sid), Some(items)) = (frame.sid, frame.events) else {
                    return Err("events frame without sid or events".to_owned());
                };
                for item in items {
                    let item: EventItem = serde_json::from_str(item.get())
                        .map_err(|error| format!("bad item in an events frame: {error}"))?;
                    self.on_event(
                        conn,
                        Frame {
                            sid: Some(sid),
                            delivery_id: item.delivery_id,
                            attempt: item.attempt,
                            event: Some(item.event),
                            ..Frame::default()
                        },
                    );
                }
            }
            Op::Puback => {
                let (Some(rid), Some(results)) = (frame.rid, frame.results) else {
                    return Err("puback without rid or results".to_owned());
                };
                let Some(batch) = conn.publishes.remove(&rid) else {
                    return Err(format!("puback for unknown rid {rid}"));
                };
                let expected: usize = batch.iter().map(|request| request.events.len()).sum();
                if expected != results.len() {
                    return Err(format!(
                        "puback {rid} has {} results for {expected} events",
                        results.len()
                    ));
                }
                let mut results = results.into_iter();
                for request in batch {
                    let mine = results.by_ref().take(request.events.len()).collect();
                    let _ = request.reply.send(Ok(mine));
                }
            }
            Op::Subscribed => {
                let (Some(rid), Some(sid)) = (frame.rid, frame.sid) else {
                    return Err("subscribed without rid or sid".to_owned());
                };
                let Some(Pending::Sub { local }) = conn.pending.remove(&rid) else {
                    return Err(format!("subscribed for unknown rid {rid}"));
                };
                match self.subs.get_mut(&local) {
                    Some(sub) => {
                        sub.sid = Some(sid);
                        sub.shared
                            .generation
                            .store(conn.generation, Ordering::Release);
                        conn.sids.insert(sid, local);
                        if let Some(confirm) = sub.confirm.take() {
                            let _ = confirm.send(Ok(()));
                        }
                    }
                    None => self.send_unsub(conn, sid, None),
                }
            }
            Op::Ok | Op::Pong => {
                let Some(rid) = frame.rid else {
                    // A pong to a ping without rid; the client sends none.
                    return Ok(());
                };
                match conn.pending.remove(&rid) {
                    Some(
                        Pending::Verb { reply }
                        | Pending::Ping { reply }
                        | Pending::Unsub { reply: Some(reply) },
                    ) => {
                        let _ = reply.send(Ok(()));
                    }
                    Some(Pending::Unsub { reply: None } | Pending::Leave { reply: None }) => {}
                    Some(Pending::Leave { reply: Some(reply) }) => {
                        let _ = reply.send(Ok(()));
                    }
                    Some(Pending::Join { room }) => self.rooms.joined(&room),
                    Some(Pending::Sub { .. }) | None => {
                        return Err(format!("{op} for unknown rid {rid}"));
                    }
                }
            }
            Op::Error => {
                let detail = frame
                    .error
                    .unwrap_or_else(|| ErrorDetail::new(ErrorCode::Internal, "error frame"));
                return self.on_error(conn, frame.rid, frame.sid, detail);
            }
            Op::Closed if frame.room.is_some() => {
                let (Some(room), Some(detail)) = (frame.room, frame.error) else {
                    return Err("room closed without error".to_owned());
                };
                self.rooms.closed(&room, detail);
            }
            Op::Closed => {
                let (Some(sid), Some(detail)) = (frame.sid, frame.error) else {
                    return Err("closed without sid or error".to_owned());
                };
                if detail.code == ErrorCode::Unavailable {
                    // The server is stopping: reconnect (to it or a sibling) and re-subscribe.
                    return Err(format!("subscription closed: {detail}"));
                }
                if let Some(local) = conn.sids.remove(&sid) {
                    if let Some(sub) = self.subs.get_mut(&local) {
                        sub.sid = None;
                    }
                    self.drop_sub(None, local, Some(Error::SubscriptionClosed(detail)));
                }
            }
            Op::Welcome => return Err("a second welcome".to_owned()),
            other => return Err(format!("the server sent client op {other}")),
        }
        Ok(())
    }

    fn on_event(&mut self, conn: &mut Conn, frame: Frame) {
        let (Some(sid), Some(event)) = (frame.sid, frame.event) else {
            tracing::warn!("event frame without sid or event");
            return;
        };
        let Some(&local) = conn.sids.get(&sid) else {
            // Events still in flight for a subscription just ended.
            return;
        };
        let Some(sub) = self.subs.get(&local) else {
            return;
        };
        let delivery = frame.delivery_id.zip(frame.attempt.or(Some(1)));
        let incoming = Incoming {
            event,
            delivery,
            generation: conn.generation,
        };
        let failure = match &sub.sink {
            SubSink::Live(sender) => match sender.try_send(incoming) {
                Ok(()) => None,
                Err(mpsc::error::TrySendError::Full(_)) => Some(Some(Error::SlowConsumer {
                    buffered: self.options.live_buffer_events,
                })),
                Err(mpsc::error::TrySendError::Closed(_)) => Some(None),
            },
            SubSink::Group(sender) => sender.send(incoming).err().map(|_| None),
        };
        if let Some(reason) = failure {
            self.drop_sub(Some(conn), local, reason);
        }
    }

    fn on_error(
        &mut self,
        conn: &mut Conn,
        rid: Option<u64>,
        sid: Option<u64>,
        detail: ErrorDetail,
    ) -> Result<(), String> {
        let Some(rid) = rid else {
            tracing::warn!(?sid, error = %detail, "herald reported an error");
            return Ok(());
        };
        if let Some(batch) = conn.publishes.remove(&rid) {
            if batch.len() > 1 {
                // Someone's event spoiled a merged frame: send each request on its own.
                for mut request in batch.into_iter().rev() {
                    request.alone = true;
                    self.buffered_events += request.events.len();
                    self.buffer.push_front(request);
                }
            } else {
                for request in batch {
                    let _ = request.reply.send(Err(Error::Server(detail.clone())));
                }
            }
            return Ok(());
        }
        match conn.pending.remove(&rid) {
            Some(Pending::Sub { local }) => {
                let Some(mut sub) = self.subs.remove(&local) else {
                    return Ok(());
                };
                let transient = is_transient(detail.code);
                match sub.confirm.take() {
                    Some(confirm) => {
                        let _ = confirm.send(Err(Error::Server(detail)));
                    }
                    // A subscription the caller already has must not end over a passing
                    // refusal (a server still starting, a limit for a moment): try it again
                    // on a new connection, after the reconnect backoff.
                    None if transient => {
                        self.subs.insert(local, sub);
                        return Err(format!("re-subscribing was refused: {detail}"));
                    }
                    None => {
                        sub.shared.generation.store(0, Ordering::Release);
                        sub.shared.close(Error::SubscriptionClosed(detail));
                    }
                }
            }
            Some(Pending::Join { room }) => return self.rooms.refused(&room, detail),
            Some(
                Pending::Verb { reply }
                | Pending::Ping { reply }
                | Pending::Unsub { reply: Some(reply) }
                | Pending::Leave { reply: Some(reply) },
            ) => {
                let _ = reply.send(Err(Error::Server(detail)));
            }
            Some(Pending::Unsub { reply: None } | Pending::Leave { reply: None }) | None => {
                tracing::debug!(rid, error = %detail, "herald refused a request nobody waits for");
            }
        }
        Ok(())
    }

    /// The connection is gone: unanswered publishes go back to the front of the buffer,
    /// subscriptions wait for the next connection, and waiting verbs learn their fate.
    fn lost(&mut self, conn: Conn) {
        let Conn {
            pending, publishes, ..
        } = conn;
        for (_, batch) in publishes.into_iter().rev() {
            for request in batch.into_iter().rev() {
                self.buffered_events += request.events.len();
                self.buffer.push_front(request);
            }
        }
        for sub in self.subs.values_mut() {
            sub.sid = None;
            sub.shared.generation.store(0, Ordering::Release);
        }
        for (_, pending) in pending {
            match pending {
                Pending::Verb { reply } | Pending::Ping { reply } => {
                    let _ = reply.send(Err(Error::ConnectionLost));
                }
                // Closing the connection left its rooms too.
                Pending::Unsub { reply: Some(reply) } | Pending::Leave { reply: Some(reply) } => {
                    let _ = reply.send(Ok(()));
                }
                Pending::Unsub { reply: None }
                | Pending::Leave { reply: None }
                | Pending::Sub { .. }
                | Pending::Join { .. } => {}
            }
        }
        self.rooms.lost();
    }

    /// Reconnects with backoff, serving the channels meanwhile; None once the client is gone.
    async fn reconnect(&mut self) -> Option<Conn> {
        let options = self.options.clone();
        let ws_url = self.ws_url.clone();
        let mut attempt = 0u32;
        loop {
            self.generation += 1;
            let connecting = connect(
                &ws_url,
                options.token.as_deref(),
                options.timeout,
                self.generation,
            );
            tokio::pin!(connecting);
            let error = loop {
                tokio::select! {
                    result = &mut connecting => match result {
                        Ok(conn) => {
                            tracing::info!(url = %ws_url, "herald connection re-established");
                            return Some(conn);
                        }
                        Err(error) => break error,
                    },
                    ended = self.serve_disconnected() => if ended { return None },
                }
            };
            let delay = backoff_delay(
                attempt,
                options.reconnect_delay_initial,
                options.reconnect_delay_max,
            );
            attempt = attempt.saturating_add(1);
            tracing::debug!(%error, ?delay, "herald reconnect failed");
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    ended = self.serve_disconnected() => if ended { return None },
                }
            }
        }
    }

    /// Handles one request while there is no connection; true when the client is gone.
    async fn serve_disconnected(&mut self) -> bool {
        tokio::select! {
            control = self.control.recv() => match control {
                Some(Control::Close) | None => return true,
                Some(control) => self.on_control_disconnected(control),
            },
            request = self.publishes.recv(), if self.publishes_open => match request {
                Some(request) => self.enqueue(request),
                None => self.publishes_open = false,
            },
        }
        false
    }

    fn on_control_disconnected(&mut self, control: Control) {
        match control {
            Control::Subscribe {
                local,
                spec,
                sink,
                shared,
                confirm,
            } => {
                self.subs.insert(
                    local,
                    Sub {
                        spec,
                        sink,
                        shared,
                        confirm: Some(confirm),
                        sid: None,
                    },
                );
            }
            Control::Unsubscribe { local, reply } => {
                self.drop_sub(None, local, None);
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
            }
            Control::Verb {
                delivery_id, reply, ..
            } => {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(Error::DeliveryExpired { delivery_id }));
                }
            }
            Control::Ping { reply } => {
                let _ = reply.send(Err(Error::ConnectionLost));
            }
            Control::Join {
                local,
                room,
                listener,
            } => self.rooms.add(None, 0, room, local, listener),
            Control::Leave { local, room, reply } => {
                self.rooms.remove(None, 0, &room, local, reply);
            }
            Control::Close => {}
        }
    }

    /// The client closed: answer everyone, then say goodbye to the server.
    fn shut_down(&mut self, conn: Conn) {
        let writer = conn.writer.clone();
        self.lost(conn);
        self.fail_everything();
        let _ = writer.send(Message::Close(None));
    }

    fn fail_everything(&mut self) {
        while let Some(request) = self.take_buffered() {
            let _ = request.reply.send(Err(Error::Closed));
        }
        for (_, sub) in self.subs.drain() {
            sub.shared.generation.store(0, Ordering::Release);
            sub.shared.close(Error::Closed);
            if let Some(confirm) = sub.confirm {
                let _ = confirm.send(Err(Error::Closed));
            }
        }
        self.rooms.close_all();
        self.publishes.close();
        while let Ok(request) = self.publishes.try_recv() {
            let _ = request.reply.send(Err(Error::Closed));
        }
        self.control.close();
        while let Ok(control) = self.control.try_recv() {
            match control {
                Control::Subscribe { confirm, .. } => {
                    let _ = confirm.send(Err(Error::Closed));
                }
                Control::Unsubscribe {
                    reply: Some(reply), ..
                }
                | Control::Leave {
                    reply: Some(reply), ..
                } => {
                    let _ = reply.send(Ok(()));
                }
                Control::Join { listener, .. } => listener.end(Error::Closed),
                Control::Verb {
                    reply: Some(reply), ..
                }
                | Control::Ping { reply } => {
                    let _ = reply.send(Err(Error::Closed));
                }
                Control::Unsubscribe { reply: None, .. }
                | Control::Leave { reply: None, .. }
                | Control::Verb { reply: None, .. }
                | Control::Close => {}
            }
        }
    }
}

fn pending_publishes_max(conn: &Conn) -> usize {
    usize::try_from(conn.limits.pending_publishes_max)
        .unwrap_or(usize::MAX)
        .max(1)
}

/// Makes the ids that tell subscriptions apart across reconnects.
#[derive(Debug, Default)]
pub(crate) struct LocalIds(AtomicU64);

impl LocalIds {
    pub fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// Reads of [`WS_READ_BUFFER_BYTES`]: tungstenite zero-fills its whole read size before each read.
fn read_buffer_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(WS_READ_BUFFER_BYTES)
}
