//! Frames of the `/v1/ws` protocol (docs/PROTOCOL.md): JSON text frames, each an object with an
//! `op`. Both directions share one flat [`Frame`] so that an event passes through as raw JSON
//! and every frame decodes in one pass; [`Frame::check`] then enforces, from one table, which
//! fields each op takes.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::From;
use crate::error::ErrorDetail;
use crate::http::{GroupPolicyConfig, PublishResult};
use crate::realtime::Target;

/// How much a WebSocket connection reads from its socket at a time, on either side.
///
/// tungstenite zero-fills this much of its read buffer before every read, including reads that
/// find nothing: its default (128 KiB) made that fill the largest single cost of a connection
/// carrying one small frame per read. 32 KiB still takes a `pub` frame of 100 events in one read.
pub const WS_READ_BUFFER_BYTES: usize = 32 * 1024;

/// A WebSocket frame's operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    // Client → server.
    /// Publish `events`; answered by `puback` (or `error`) with the same `rid`.
    Pub,
    /// Subscribe to `pattern`, live or in `group`; answered by `subscribed` with a `sid`.
    Sub,
    /// End subscription `sid`; answered by `ok`.
    Unsub,
    /// Ack `deliveryId` (or each of `deliveryIds`); answered by `ok` only when `rid` is given.
    Ack,
    /// Redeliver `deliveryId` after `delayMs` (or the group's backoff), noting `reason`.
    Nack,
    /// Restart the ack timer of `deliveryId`.
    Extend,
    /// Dead-letter `deliveryId` now, with `reason`.
    Reject,
    /// Answered by `pong`.
    Ping,
    /// Send `event` to browsers (`to` a user, a room, or everyone) without storing it;
    /// answered by `ok` with `delivered`.
    Send,
    /// Listen to `room`: what is sent to it arrives as `event` frames with `room`; answered by
    /// `ok`.
    Join,
    /// Stop listening to `room`; answered by `ok`.
    Leave,
    // Server → client.
    /// First frame of a connection.
    Welcome,
    Puback,
    Subscribed,
    /// An event for subscription `sid` (in a group with `deliveryId` and `attempt`), or sent
    /// to `room`, which the connection joined.
    Event,
    /// Several events for subscription `sid`, which asked for them with `batch`: `events`
    /// holds one [`EventItem`] per event, in delivery order.
    Events,
    Ok,
    /// A refused request (`rid` when it had one), or a connection-level problem.
    Error,
    /// Subscription `sid` ended, or the connection was made to leave `room`, with `error`; no
    /// more events follow for it.
    Closed,
    Pong,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Pub => "pub",
            Op::Sub => "sub",
            Op::Unsub => "unsub",
            Op::Ack => "ack",
            Op::Nack => "nack",
            Op::Extend => "extend",
            Op::Reject => "reject",
            Op::Ping => "ping",
            Op::Send => "send",
            Op::Join => "join",
            Op::Leave => "leave",
            Op::Welcome => "welcome",
            Op::Puback => "puback",
            Op::Subscribed => "subscribed",
            Op::Event => "event",
            Op::Events => "events",
            Op::Ok => "ok",
            Op::Error => "error",
            Op::Closed => "closed",
            Op::Pong => "pong",
        }
    }

    /// The fields this op must have, and those it may have (besides `op`).
    fn fields(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            Op::Pub => (&["rid", "events"], &[]),
            Op::Sub => (
                &["rid", "pattern"],
                &["group", "from", "maxInFlight", "policy", "batch"],
            ),
            Op::Unsub => (&["rid", "sid"], &[]),
            Op::Ack => (&["sid"], &["rid", "deliveryId", "deliveryIds"]),
            Op::Nack => (&["sid", "deliveryId"], &["rid", "delayMs", "reason"]),
            Op::Extend => (&["sid", "deliveryId"], &["rid"]),
            Op::Reject => (&["sid", "deliveryId"], &["rid", "reason"]),
            Op::Ping => (&[], &["rid"]),
            Op::Send => (&["rid", "to", "event"], &[]),
            Op::Join | Op::Leave => (&["rid", "room"], &[]),
            Op::Welcome => (
                &["connectionId", "server", "heartbeatMs", "limits"],
                &["identity"],
            ),
            Op::Puback => (&["rid", "results"], &[]),
            Op::Subscribed => (&["rid", "sid"], &[]),
            Op::Event => (&["event"], &["sid", "room", "deliveryId", "attempt"]),
            Op::Events => (&["sid", "events"], &[]),
            Op::Ok => (&["rid"], &["delivered"]),
            Op::Error => (&["error"], &["rid", "sid"]),
            Op::Closed => (&["error"], &["sid", "room"]),
            Op::Pong => (&[], &["rid"]),
        }
    }

    /// Whether clients send this op (the others are the server's).
    pub fn is_client_op(self) -> bool {
        matches!(
            self,
            Op::Pub
                | Op::Sub
                | Op::Unsub
                | Op::Ack
                | Op::Nack
                | Op::Extend
                | Op::Reject
                | Op::Ping
                | Op::Send
                | Op::Join
                | Op::Leave
        )
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The limits a connection works within, announced in `welcome`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionLimits {
    pub event_bytes_max: u64,
    pub frame_bytes_max: u64,
    pub batch_events_max: u64,
    /// `pub` frames a connection may have unanswered; further frames wait unread.
    pub pending_publishes_max: u64,
    pub subscriptions_max: u64,
    pub publish_events_per_second_max: u64,
}

/// Any frame, either direction. Build server frames with the constructors; decode client frames
/// with [`Frame::decode`], which also checks the fields against the op.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Frame {
    pub op: Option<Op>,
    /// The client's request id, echoed in the answer. Any integer the client likes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Option<u64>,
    /// A subscription, numbered by the server per connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<Box<RawValue>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<PublishResult>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<From>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<GroupPolicyConfig>,
    /// In a `sub`: `true` lets the server put several of its events in one `events` frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_ids: Option<Vec<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ConnectionLimits>,
    /// Who a `send` goes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Target>,
    /// In the `ok` answering a `send`: the sockets (and listening connections) the event was
    /// queued for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered: Option<u64>,
    /// The room a `join` or `leave` names, or that an `event` or `closed` is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
}

/// Why a frame was refused before it was acted on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame is not a valid JSON frame: {0}")]
    Json(String),
    #[error("frame has no \"op\"")]
    MissingOp,
    #[error("op \"{op}\" is sent by the server, not by clients")]
    ServerOp { op: Op },
    #[error("op \"{op}\" needs field {field:?}")]
    MissingField { op: Op, field: &'static str },
    #[error("field {field:?} does not belong in op \"{op}\"")]
    ExtraField { op: Op, field: &'static str },
    #[error("op \"ack\" needs \"deliveryId\" or \"deliveryIds\", not both and not neither")]
    AckTarget,
    #[error("op \"{op}\" needs \"sid\" or \"room\", not both and not neither")]
    SidOrRoom { op: Op },
    #[error("op \"event\" for a room has no \"deliveryId\" or \"attempt\"")]
    RoomDelivery,
}

impl Frame {
    /// Decodes a client's frame and checks it against its op.
    pub fn decode_client(bytes: &[u8]) -> Result<(Op, Frame), FrameError> {
        let frame = Frame::decode(bytes)?;
        let op = frame.check()?;
        if !op.is_client_op() {
            return Err(FrameError::ServerOp { op });
        }
        Ok((op, frame))
    }

    /// Decodes any frame without checking its fields (clients read server frames with it).
    pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
        serde_json::from_slice(bytes).map_err(|error| FrameError::Json(error.to_string()))
    }

    /// The frame's op, once its fields are those the op takes.
    pub fn check(&self) -> Result<Op, FrameError> {
        let op = self.op.ok_or(FrameError::MissingOp)?;
        let (required, optional) = op.fields();
        let present = self.present_fields();
        if let Some(field) = required.iter().find(|field| !present.contains(field)) {
            return Err(FrameError::MissingField { op, field });
        }
        if let Some(field) = present
            .iter()
            .find(|field| !required.contains(field) && !optional.contains(field))
        {
            return Err(FrameError::ExtraField { op, field });
        }
        if op == Op::Ack && self.delivery_id.is_some() == self.delivery_ids.is_some() {
            return Err(FrameError::AckTarget);
        }
        if matches!(op, Op::Event | Op::Closed) && self.sid.is_some() == self.room.is_some() {
            return Err(FrameError::SidOrRoom { op });
        }
        if op == Op::Event
            && self.room.is_some()
            && (self.delivery_id.is_some() || self.attempt.is_some())
        {
            return Err(FrameError::RoomDelivery);
        }
        Ok(op)
    }

    fn present_fields(&self) -> Vec<&'static str> {
        let fields: [(&'static str, bool); 26] = [
            ("rid", self.rid.is_some()),
            ("sid", self.sid.is_some()),
            ("events", self.events.is_some()),
            ("results", self.results.is_some()),
            ("pattern", self.pattern.is_some()),
            ("group", self.group.is_some()),
            ("from", self.from.is_some()),
            ("maxInFlight", self.max_in_flight.is_some()),
            ("policy", self.policy.is_some()),
            ("batch", self.batch.is_some()),
            ("deliveryId", self.delivery_id.is_some()),
            ("deliveryIds", self.delivery_ids.is_some()),
            ("attempt", self.attempt.is_some()),
            ("event", self.event.is_some()),
            ("delayMs", self.delay_ms.is_some()),
            ("reason", self.reason.is_some()),
            ("error", self.error.is_some()),
            ("connectionId", self.connection_id.is_some()),
            ("server", self.server.is_some()),
            ("heartbeatMs", self.heartbeat_ms.is_some()),
            ("identity", self.identity.is_some()),
            ("limits", self.limits.is_some()),
            ("to", self.to.is_some()),
            ("delivered", self.delivered.is_some()),
            ("room", self.room.is_some()),
            ("op", false),
        ];
        fields
            .iter()
            .filter(|(_, present)| *present)
            .map(|(name, _)| *name)
            .collect()
    }

    pub fn encode(&self) -> String {
        // A Frame holds only strings, numbers and already-valid raw JSON: it always encodes.
        serde_json::to_string(self).unwrap_or_default()
    }

    fn new(op: Op) -> Frame {
        Frame {
            op: Some(op),
            ..Frame::default()
        }
    }

    pub fn welcome(
        connection_id: u64,
        server: String,
        heartbeat_ms: u64,
        identity: Option<String>,
        limits: ConnectionLimits,
    ) -> Frame {
        Frame {
            connection_id: Some(connection_id),
            server: Some(server),
            heartbeat_ms: Some(heartbeat_ms),
            identity,
            limits: Some(limits),
            ..Frame::new(Op::Welcome)
        }
    }

    pub fn puback(rid: u64, results: Vec<PublishResult>) -> Frame {
        Frame {
            rid: Some(rid),
            results: Some(results),
            ..Frame::new(Op::Puback)
        }
    }

    /// [`Frame::puback`] encoded, written directly from borrowed results: what a server
    /// answers every `pub` frame with (the hot path), without a `PublishResult` (an owned copy
    /// of each id) per event nor a walk of every field of a `Frame`. The bytes are those of
    /// `Frame::puback(rid, results).encode()`.
    pub fn encode_puback<'a>(
        rid: u64,
        results: impl ExactSizeIterator<Item = PublishResultRef<'a>>,
    ) -> String {
        // An id is at most a few dozen bytes; a result about 90 with its keys. Numbers go
        // through `itoa`: `write!` cost a third of the frame (docs/PERFORMANCE.md).
        let mut out = String::with_capacity(32 + results.len() * 96);
        let mut digits = itoa::Buffer::new();
        out.push_str("{\"op\":\"puback\",\"rid\":");
        out.push_str(digits.format(rid));
        out.push_str(",\"results\":[");
        for (at, result) in results.enumerate() {
            if at > 0 {
                out.push(',');
            }
            out.push_str("{\"id\":");
            push_json_string(&mut out, result.id);
            if let Some(stream) = result.stream {
                out.push_str(",\"stream\":");
                push_json_string(&mut out, stream);
            }
            if let Some(seq) = result.seq {
                out.push_str(",\"seq\":");
                out.push_str(digits.format(seq));
            }
            out.push_str(if result.duplicate {
                ",\"duplicate\":true}"
            } else {
                ",\"duplicate\":false}"
            });
        }
        out.push_str("]}");
        out
    }

    pub fn subscribed(rid: u64, sid: u64) -> Frame {
        Frame {
            rid: Some(rid),
            sid: Some(sid),
            ..Frame::new(Op::Subscribed)
        }
    }

    pub fn ok(rid: u64) -> Frame {
        Frame {
            rid: Some(rid),
            ..Frame::new(Op::Ok)
        }
    }

    /// The answer to a `send`.
    pub fn sent(rid: u64, delivered: u64) -> Frame {
        Frame {
            rid: Some(rid),
            delivered: Some(delivered),
            ..Frame::new(Op::Ok)
        }
    }

    pub fn pong(rid: Option<u64>) -> Frame {
        Frame {
            rid,
            ..Frame::new(Op::Pong)
        }
    }

    pub fn error(rid: Option<u64>, sid: Option<u64>, error: ErrorDetail) -> Frame {
        Frame {
            rid,
            sid,
            error: Some(error),
            ..Frame::new(Op::Error)
        }
    }

    pub fn closed(sid: u64, error: ErrorDetail) -> Frame {
        Frame {
            sid: Some(sid),
            error: Some(error),
            ..Frame::new(Op::Closed)
        }
    }

    /// The connection no longer listens to `room` (it fell behind), for `error`.
    pub fn room_closed(room: String, error: ErrorDetail) -> Frame {
        Frame {
            room: Some(room),
            error: Some(error),
            ..Frame::new(Op::Closed)
        }
    }
}

/// One result of a `puback`, borrowed from whatever holds it ([`Frame::encode_puback`]).
#[derive(Clone, Copy, Debug)]
pub struct PublishResultRef<'a> {
    pub id: &'a str,
    pub stream: Option<&'a str>,
    pub seq: Option<u64>,
    pub duplicate: bool,
}

/// `text` as a JSON string. Ids and stream names rarely need escaping: those that do not are
/// copied as they are.
fn push_json_string(out: &mut String, text: &str) {
    let plain = text.bytes().fold(true, |plain, byte| {
        plain & (byte >= 0x20 && byte != b'"' && byte != b'\\')
    });
    if plain {
        out.push('"');
        out.push_str(text);
        out.push('"');
    } else {
        // A string always encodes.
        out.push_str(&serde_json::to_string(text).unwrap_or_default());
    }
}

/// The `event` frame for an event sent to a room the connection joined, written around the
/// event's JSON once per event, whatever the number of listening connections.
pub fn encode_room_event_frame(room: &str, event_json: &[u8]) -> Vec<u8> {
    // A string always encodes.
    let room = serde_json::to_string(room).unwrap_or_default();
    let mut out = Vec::with_capacity(event_json.len() + room.len() + 32);
    out.extend_from_slice(b"{\"op\":\"event\",\"room\":");
    out.extend_from_slice(room.as_bytes());
    out.extend_from_slice(b",\"event\":");
    out.extend_from_slice(event_json);
    out.push(b'}');
    out
}

/// One event of an `events` frame: what an `event` frame holds besides `op` and `sid`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventItem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    pub event: Box<RawValue>,
}

/// Writes the `event` frame into `out`, around the event that `write_event` appends (the hot
/// path: the stored JSON is copied once, into the frame, and never encoded again).
/// `delivery` is `(deliveryId, attempt)` for a group.
pub fn write_event_frame(
    out: &mut Vec<u8>,
    sid: u64,
    delivery: Option<(u64, u32)>,
    write_event: impl FnOnce(&mut Vec<u8>),
) {
    out.extend_from_slice(b"{\"op\":\"event\",\"sid\":");
    push_number(out, sid);
    out.push(b',');
    write_event_item(out, delivery, write_event);
}

/// The `event` frame around already-encoded event JSON.
pub fn encode_event_frame(sid: u64, delivery: Option<(u64, u32)>, event_json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(event_json.len() + 80);
    write_event_frame(&mut out, sid, delivery, |out| {
        out.extend_from_slice(event_json);
    });
    out
}

/// Appends a number: through `itoa`, as `write!` cost ~300 instructions per delivery
/// (docs/PERFORMANCE.md).
fn push_number(out: &mut Vec<u8>, number: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(number).as_bytes());
}

/// Writes the start of an `events` frame; follow with [`write_events_item`] per event, then
/// [`finish_events_frame`].
pub fn start_events_frame(out: &mut Vec<u8>, sid: u64) {
    out.extend_from_slice(b"{\"op\":\"events\",\"sid\":");
    push_number(out, sid);
    out.extend_from_slice(b",\"events\":[");
}

/// Appends one [`EventItem`] to an `events` frame begun by [`start_events_frame`].
pub fn write_events_item(
    out: &mut Vec<u8>,
    delivery: Option<(u64, u32)>,
    write_event: impl FnOnce(&mut Vec<u8>),
) {
    if out.last() != Some(&b'[') {
        out.push(b',');
    }
    out.push(b'{');
    write_event_item(out, delivery, write_event);
}

pub fn finish_events_frame(out: &mut Vec<u8>) {
    out.extend_from_slice(b"]}");
}

/// `"deliveryId":…,"attempt":…,"event":` + the event + `}`.
fn write_event_item(
    out: &mut Vec<u8>,
    delivery: Option<(u64, u32)>,
    write_event: impl FnOnce(&mut Vec<u8>),
) {
    if let Some((delivery_id, attempt)) = delivery {
        out.extend_from_slice(b"\"deliveryId\":");
        push_number(out, delivery_id);
        out.extend_from_slice(b",\"attempt\":");
        push_number(out, attempt);
        out.push(b',');
    }
    out.extend_from_slice(b"\"event\":");
    write_event(out);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `events` frame is what several `event` frames hold, each item decodable on its own.
    #[test]
    fn events_frame_items_decode() {
        let mut out = Vec::new();
        start_events_frame(&mut out, 3);
        write_events_item(&mut out, Some((9, 1)), |out| {
            out.extend_from_slice(b"{\"a\":1}")
        });
        write_events_item(&mut out, Some((10, 2)), |out| {
            out.extend_from_slice(b"{\"b\":[]}")
        });
        finish_events_frame(&mut out);
        let frame = Frame::decode(&out).unwrap();
        assert_eq!(frame.check().unwrap(), Op::Events);
        assert_eq!(frame.sid, Some(3));
        let items: Vec<EventItem> = frame
            .events
            .unwrap()
            .iter()
            .map(|item| serde_json::from_str(item.get()).unwrap())
            .collect();
        let got: Vec<(Option<u64>, Option<u32>, &str)> = items
            .iter()
            .map(|item| (item.delivery_id, item.attempt, item.event.get()))
            .collect();
        assert_eq!(
            got,
            [
                (Some(9), Some(1), "{\"a\":1}"),
                (Some(10), Some(2), "{\"b\":[]}")
            ]
        );
        assert_eq!(
            encode_event_frame(3, Some((9, 1)), b"{}"),
            br#"{"op":"event","sid":3,"deliveryId":9,"attempt":1,"event":{}}"#
        );
        assert_eq!(
            encode_event_frame(3, None, b"{}"),
            br#"{"op":"event","sid":3,"event":{}}"#
        );
    }

    fn check(input: &str, expect: Result<Op, &str>) {
        match (Frame::decode_client(input.as_bytes()), expect) {
            (Ok((op, _)), Ok(want)) => assert_eq!(op, want, "{input}"),
            (Err(error), Err(want)) => {
                let text = error.to_string();
                assert!(text.contains(want), "{input}: {text:?} lacks {want:?}");
            }
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn a_puback_written_directly_is_the_encoded_frame() {
        let results = [
            PublishResult {
                id: "0193a1b2-0000-7000-8000-000000000001".into(),
                stream: Some("user".into()),
                seq: Some(u64::MAX),
                duplicate: false,
            },
            PublishResult {
                id: "client \"quoted\" id\\ with \u{1} and é".into(),
                stream: Some("user".into()),
                seq: Some(7),
                duplicate: true,
            },
            PublishResult {
                id: "ephemeral".into(),
                stream: None,
                seq: None,
                duplicate: false,
            },
        ];
        for count in 0..=results.len() {
            let results = &results[..count];
            let direct = Frame::encode_puback(
                9,
                results.iter().map(|result| PublishResultRef {
                    id: &result.id,
                    stream: result.stream.as_deref(),
                    seq: result.seq,
                    duplicate: result.duplicate,
                }),
            );
            assert_eq!(direct, Frame::puback(9, results.to_vec()).encode());
        }
    }

    #[test]
    fn client_frames() {
        check(
            r#"{"op":"pub","rid":1,"events":[{"type":"a.b"}]}"#,
            Ok(Op::Pub),
        );
        check(r#"{"op":"sub","rid":2,"pattern":"a.*"}"#, Ok(Op::Sub));
        check(
            r#"{"op":"sub","rid":2,"pattern":"a.*","group":"g","from":"earliest","maxInFlight":5,"policy":{"maxRetries":1}}"#,
            Ok(Op::Sub),
        );
        check(r#"{"op":"ack","sid":1,"deliveryId":9}"#, Ok(Op::Ack));
        check(
            r#"{"op":"ack","sid":1,"deliveryIds":[9,10],"rid":3}"#,
            Ok(Op::Ack),
        );
        check(
            r#"{"op":"nack","sid":1,"deliveryId":9,"delayMs":100,"reason":"x"}"#,
            Ok(Op::Nack),
        );
        check(r#"{"op":"ping"}"#, Ok(Op::Ping));
        check(
            r#"{"op":"send","rid":4,"to":{"user":"u1"},"event":{"type":"a.b"}}"#,
            Ok(Op::Send),
        );
        check(
            r#"{"op":"send","rid":4,"to":{"broadcast":true},"event":{"type":"a.b"}}"#,
            Ok(Op::Send),
        );
        check(
            r#"{"op":"send","rid":4,"event":{"type":"a.b"}}"#,
            Err("op \"send\" needs field \"to\""),
        );
        check(
            r#"{"op":"send","rid":4,"to":{"user":"u1","room":"r"},"event":{}}"#,
            Err("not a valid JSON frame"),
        );
        check(
            r#"{"op":"pub","rid":4,"to":{"user":"u1"},"events":[]}"#,
            Err("field \"to\" does not belong in op \"pub\""),
        );
        check(
            r#"{"op":"pub","events":[]}"#,
            Err("op \"pub\" needs field \"rid\""),
        );
        check(
            r#"{"op":"join","rid":5,"room":"session:abc123"}"#,
            Ok(Op::Join),
        );
        check(
            r#"{"op":"leave","rid":6,"room":"chat.general"}"#,
            Ok(Op::Leave),
        );
        check(
            r#"{"op":"join","rid":5}"#,
            Err("op \"join\" needs field \"room\""),
        );
        check(
            r#"{"op":"leave","room":"a"}"#,
            Err("op \"leave\" needs field \"rid\""),
        );
        check(
            r#"{"op":"join","rid":5,"room":"a","sid":1}"#,
            Err("field \"sid\" does not belong in op \"join\""),
        );
        check(
            r#"{"op":"sub","rid":5,"pattern":"a","room":"a"}"#,
            Err("field \"room\" does not belong in op \"sub\""),
        );
        check(r#"{"op":"ack","sid":1}"#, Err("not both and not neither"));
        check(
            r#"{"op":"ack","sid":1,"deliveryId":1,"deliveryIds":[2]}"#,
            Err("not both"),
        );
        check(
            r#"{"op":"ack","sid":1,"deliveryId":1,"pattern":"a"}"#,
            Err("field \"pattern\" does not belong in op \"ack\""),
        );
        check(r#"{"op":"welcome"}"#, Err("needs field"));
        check(r#"{"op":"pong"}"#, Err("sent by the server"));
        check(r#"{"op":"fly"}"#, Err("unknown variant"));
        check(r#"{"rid":1}"#, Err("no \"op\""));
        check(r#"{"op":"ping","colour":1}"#, Err("unknown field `colour`"));
        check(
            r#"{"op":"ack","sid":"one","deliveryId":1}"#,
            Err("invalid type"),
        );
        check("[1]", Err("not a valid JSON frame"));
        check("{", Err("not a valid JSON frame"));
    }

    #[test]
    fn event_frame_decodes_as_a_frame() {
        let bytes = encode_event_frame(3, Some((7, 2)), br#"{"stream":"a","seq":1}"#);
        let frame = Frame::decode(&bytes).unwrap();
        assert_eq!(frame.check().unwrap(), Op::Event);
        assert_eq!(
            (frame.sid, frame.delivery_id, frame.attempt),
            (Some(3), Some(7), Some(2))
        );
        assert_eq!(frame.event.unwrap().get(), r#"{"stream":"a","seq":1}"#);
    }

    #[test]
    fn room_event_frame_decodes_as_a_frame() {
        let bytes = encode_room_event_frame("session:\"x\"", br#"{"type":"a.b"}"#);
        let frame = Frame::decode(&bytes).unwrap();
        assert_eq!(frame.check().unwrap(), Op::Event);
        assert_eq!(frame.room.as_deref(), Some("session:\"x\""));
        assert_eq!(frame.sid, None);
        assert_eq!(frame.event.unwrap().get(), r#"{"type":"a.b"}"#);
    }

    #[test]
    fn events_and_closes_name_a_subscription_or_a_room() {
        for (input, expect) in [
            (r#"{"op":"event","sid":1,"event":{}}"#, Ok(Op::Event)),
            (r#"{"op":"event","room":"r","event":{}}"#, Ok(Op::Event)),
            (
                r#"{"op":"event","event":{}}"#,
                Err("not both and not neither"),
            ),
            (
                r#"{"op":"event","sid":1,"room":"r","event":{}}"#,
                Err("not both"),
            ),
            (
                r#"{"op":"event","room":"r","deliveryId":1,"attempt":1,"event":{}}"#,
                Err("for a room has no"),
            ),
            (
                r#"{"op":"closed","room":"r","error":{"code":"rate_limited","message":"x"}}"#,
                Ok(Op::Closed),
            ),
            (
                r#"{"op":"closed","error":{"code":"rate_limited","message":"x"}}"#,
                Err("not both"),
            ),
        ] {
            let got = Frame::decode(input.as_bytes()).unwrap().check();
            match (got, expect) {
                (Ok(op), Ok(want)) => assert_eq!(op, want, "{input}"),
                (Err(error), Err(want)) => {
                    assert!(error.to_string().contains(want), "{input}: {error}")
                }
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn server_frames_pass_their_own_check() {
        let frames = [
            Frame::puback(1, vec![]),
            Frame::subscribed(1, 2),
            Frame::ok(1),
            Frame::sent(1, 3),
            Frame::pong(None),
            Frame::error(
                Some(1),
                None,
                ErrorDetail::new(crate::ErrorCode::BadFrame, "x"),
            ),
            Frame::closed(1, ErrorDetail::new(crate::ErrorCode::Unavailable, "x")),
            Frame::room_closed(
                "session:a".into(),
                ErrorDetail::new(crate::ErrorCode::RateLimited, "x"),
            ),
        ];
        for frame in frames {
            let decoded = Frame::decode(frame.encode().as_bytes()).unwrap();
            assert_eq!(decoded.check().unwrap(), frame.op.unwrap());
        }
    }
}
