//! The event envelope (PRODUCT.md section 1): the validated [`Event`] and its JSON form.
//!
//! Decoding walks the top-level object once, keeps `data` as raw JSON (never built into a tree),
//! and gives every kind of bad input its own [`EventError`] naming the field, so that a publisher
//! learns exactly what to fix.

mod uuid_v7;
pub(crate) mod wire;

use bytes::Bytes;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde_json::value::RawValue;
use time::OffsetDateTime;

use crate::subject::{Subject, SubjectError, is_valid_token};
use wire::{Members, Top};

/// PRODUCT.md: "An event is at most 1 MiB encoded (configurable)".
pub const EVENT_BYTES_MAX_DEFAULT: usize = 1024 * 1024;
/// A request body holding a batch; bounded separately so one request cannot hold the server.
pub const BATCH_BYTES_MAX_DEFAULT: usize = 16 * 1024 * 1024;
pub const BATCH_EVENTS_MAX_DEFAULT: usize = 1000;
/// Stored events carry `stream` and `seq`, and the id, timestamp and version the server filled
/// in; this much is allowed on top of `event_bytes_max` when reading them back.
pub const STORED_EVENT_OVERHEAD_BYTES_MAX: usize = 1024;

pub const ID_BYTES_MAX: usize = 128;
pub const VERSION_BYTES_MAX: usize = 64;
pub const SOURCE_BYTES_MAX: usize = 256;
pub const CORRELATION_ID_BYTES_MAX: usize = 256;
/// Room for a W3C `traceparent` (55 bytes) and other tracers' ids.
pub const TRACE_ID_BYTES_MAX: usize = 256;
pub const USER_ID_BYTES_MAX: usize = 256;
pub const KEY_BYTES_MAX: usize = 256;
pub const METADATA_ENTRIES_MAX: usize = 64;
pub const METADATA_KEY_BYTES_MAX: usize = 128;
pub const METADATA_VALUE_BYTES_MAX: usize = 4096;
pub const VERSION_DEFAULT: &str = "1.0";

const _: () = assert!(ID_BYTES_MAX <= EVENT_BYTES_MAX_DEFAULT);
const _: () = assert!(EVENT_BYTES_MAX_DEFAULT <= BATCH_BYTES_MAX_DEFAULT);
const _: () = assert!(METADATA_ENTRIES_MAX * METADATA_VALUE_BYTES_MAX <= EVENT_BYTES_MAX_DEFAULT);

/// The configurable limits; the per-field limits are constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub event_bytes_max: usize,
    pub batch_bytes_max: usize,
    pub batch_events_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            event_bytes_max: EVENT_BYTES_MAX_DEFAULT,
            batch_bytes_max: BATCH_BYTES_MAX_DEFAULT,
            batch_events_max: BATCH_EVENTS_MAX_DEFAULT,
        }
    }
}

/// What decoding a published event needs from outside: the receive time (the default
/// timestamp, and the time in generated ids) and the limits.
#[derive(Clone, Copy, Debug)]
pub struct ParseContext {
    pub now: OffsetDateTime,
    pub limits: Limits,
}

impl ParseContext {
    pub fn new(now: OffsetDateTime) -> ParseContext {
        ParseContext {
            now,
            limits: Limits::default(),
        }
    }
}

/// Every way an event can be rejected. Messages name the field and say what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("event is not valid JSON: {message}")]
    Json { message: String },
    #[error("an event must be a JSON object, found {found}")]
    NotAnObject { found: &'static str },
    #[error("event of {bytes} bytes exceeds the limit of {max} bytes")]
    TooLarge { bytes: usize, max: usize },
    #[error(
        "unknown field {name:?}{}; the fields are id, type, version, timestamp, source, \
         correlationId, traceId, userId, key, data, metadata",
        suggestion_text(*.suggestion)
    )]
    UnknownField {
        name: String,
        suggestion: Option<&'static str>,
    },
    #[error(
        "field {name:?} is assigned by the server when the event is stored and cannot be published"
    )]
    ServerAssignedField { name: &'static str },
    #[error("field {name:?} appears more than once")]
    DuplicateField { name: String },
    #[error("missing required field {name:?}")]
    MissingField { name: &'static str },
    #[error("field {field:?} must be {expected}, found {found}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
        found: &'static str,
    },
    #[error("field {field:?} is empty; omit it instead")]
    Empty { field: &'static str },
    #[error("field {field:?} is {bytes} bytes long, more than the limit of {max} bytes")]
    TooLong {
        field: &'static str,
        bytes: usize,
        max: usize,
    },
    #[error("field {field:?} contains a control character")]
    ControlCharacter { field: &'static str },
    #[error("invalid \"type\": {0}")]
    InvalidType(#[source] SubjectError),
    #[error("field {field:?} is not an RFC 3339 timestamp ({value:?}): {reason}")]
    InvalidTimestamp {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("{0}")]
    InvalidId(#[source] EventIdError),
    #[error("metadata value of {key:?} must be a string, found {found}")]
    MetadataNotString { key: String, found: &'static str },
    #[error("metadata has {entries} entries, more than the limit of {max}")]
    MetadataTooManyEntries { entries: usize, max: usize },
    #[error("metadata has an empty key")]
    MetadataKeyEmpty,
    #[error("metadata key {key:?} is {bytes} bytes long, more than the limit of {max} bytes")]
    MetadataKeyTooLong {
        key: String,
        bytes: usize,
        max: usize,
    },
    #[error("metadata value of {key:?} is {bytes} bytes long, more than the limit of {max} bytes")]
    MetadataValueTooLong {
        key: String,
        bytes: usize,
        max: usize,
    },
    #[error("metadata key {key:?} appears more than once")]
    DuplicateMetadataKey { key: String },
    #[error("field \"stream\" must be a stream name ([A-Za-z0-9_-]+), found {value:?}")]
    InvalidStream { value: String },
    #[error("field \"seq\" must be an integer from 1, found {value}")]
    InvalidSeq { value: String },
    #[error("unsupported CloudEvents specversion {value:?}; Herald accepts \"1.0\"")]
    UnsupportedSpecVersion { value: String },
    #[error(
        "unsupported datacontenttype {value:?}; structured mode accepts JSON data only \
         (application/json or a +json type)"
    )]
    UnsupportedDataContentType { value: String },
    #[error(
        "\"data_base64\" is not supported: binary payloads are not accepted in structured mode; \
         send JSON in \"data\""
    )]
    DataBase64NotSupported,
    #[error(
        "invalid CloudEvents attribute name {name:?}: names are 1 to 20 characters of a-z and 0-9"
    )]
    InvalidAttributeName { name: String },
    #[error("CloudEvents extension {name:?} must be a string, number or boolean, found {found}")]
    ExtensionNotScalar { name: String, found: &'static str },
    #[error(
        "CloudEvents extension \"heraldmetadata\" must be a JSON object of strings encoded as a string: {reason}"
    )]
    InvalidHeraldMetadata { reason: String },
}

fn suggestion_text(suggestion: Option<&'static str>) -> String {
    suggestion.map_or_else(String::new, |name| format!(" (did you mean {name:?}?)"))
}

/// User-supplied text quoted in an error is cut short: errors travel back in responses and logs.
pub(crate) fn excerpt(text: &str) -> String {
    const EXCERPT_CHARS_MAX: usize = 64;
    match text.char_indices().nth(EXCERPT_CHARS_MAX) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

/// Why a string is not an event id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventIdError {
    #[error("field \"id\" is empty; omit it and the server assigns one")]
    Empty,
    #[error("field \"id\" is {bytes} bytes long, more than the limit of {max} bytes")]
    TooLong { bytes: usize, max: usize },
    #[error("field \"id\" contains a control character")]
    ControlCharacter,
}

/// An event's id: the publisher's (dedupe relies on it being stable across retries) or a UUIDv7.
///
/// Shared rather than boxed: a publish answers each event with its id (`PublishOutcome`) while
/// the stored event keeps it, and a copy per event was an allocation, a copy and a free on
/// another thread.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(Arc<str>);

impl EventId {
    pub fn parse(text: &str) -> Result<EventId, EventIdError> {
        if text.is_empty() {
            return Err(EventIdError::Empty);
        }
        if text.len() > ID_BYTES_MAX {
            return Err(EventIdError::TooLong {
                bytes: text.len(),
                max: ID_BYTES_MAX,
            });
        }
        if text.chars().any(char::is_control) {
            return Err(EventIdError::ControlCharacter);
        }
        Ok(EventId(text.into()))
    }

    /// A UUIDv7 whose time part is `now` (the caller's clock, so that this crate reads none).
    /// Ids made one after the other sort in the order they were made, within one millisecond
    /// too.
    pub fn new_v7(now: OffsetDateTime) -> EventId {
        EventId::from_uuid(&uuid_v7::next(now))
    }

    /// A UUID's lowercase hyphenated text: what every id Herald makes looks like.
    pub fn from_uuid(uuid: &uuid::Uuid) -> EventId {
        // Encoded into a stack buffer, then one allocation: `to_string` went through the
        // formatter and a growing `String` (one per published event without an id).
        let mut buffer = uuid::Uuid::encode_buffer();
        EventId(Arc::from(&*uuid.hyphenated().encode_lower(&mut buffer)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for EventId {
    type Err = EventIdError;
    fn from_str(text: &str) -> Result<EventId, EventIdError> {
        EventId::parse(text)
    }
}

impl AsRef<str> for EventId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({:?})", &*self.0)
    }
}

/// Who chose an event's id, which decides whether publish dedupe must look it up.
///
/// An id Herald generated because the publisher sent none is a fresh UUIDv7 that no earlier
/// event can have, so engines skip the look-up for [`IdOrigin::Generated`] ids (on Redis that
/// keeps the events' JSON out of Lua). They still record every stored id: a publisher may send
/// a generated id back later as its own, and PRODUCT.md section 3 makes that a duplicate.
///
/// The origin is not part of the stored event: an event read back (and published again by
/// whoever read it) carries an id its new publisher chose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum IdOrigin {
    /// The publisher sent the id, or code built the event with it: dedupe applies.
    #[default]
    Publisher,
    /// Herald made the id while decoding a publish that had none: dedupe does not apply.
    Generated,
}

/// A validated event. Events from [`Event::from_json`] and [`Event::from_cloudevent_json`] are
/// valid; fields are public for the server (which sets `source` to the caller's identity), and
/// [`Event::validate`] checks an event put together in code.
#[derive(Clone, Debug)]
pub struct Event {
    pub id: EventId,
    /// Whether the publisher chose `id` or Herald generated it (publish dedupe looks up only
    /// the former). Not stored, and not compared by `==`: it says how the event was published,
    /// not what it is.
    pub id_origin: IdOrigin,
    pub event_type: Subject,
    /// Borrowed when it is the default, which most events carry: no allocation for it.
    pub version: Cow<'static, str>,
    pub timestamp: OffsetDateTime,
    pub source: Option<String>,
    pub correlation_id: Option<String>,
    pub trace_id: Option<String>,
    pub user_id: Option<String>,
    pub key: Option<String>,
    /// Any JSON value, kept byte for byte as published.
    pub data: Box<RawValue>,
    pub metadata: BTreeMap<String, String>,
}

impl PartialEq for Event {
    fn eq(&self, other: &Event) -> bool {
        self.id == other.id
            && self.event_type == other.event_type
            && self.version == other.version
            && self.timestamp == other.timestamp
            && self.source == other.source
            && self.correlation_id == other.correlation_id
            && self.trace_id == other.trace_id
            && self.user_id == other.user_id
            && self.key == other.key
            && self.data.get() == other.data.get()
            && self.metadata == other.metadata
    }
}

impl Eq for Event {}

/// Herald's name for each optional text field, its limit, and its place in [`Event`].
type TextField = (&'static str, usize, fn(&Event) -> &Option<String>);

const TEXT_FIELDS: [TextField; 5] = [
    ("source", SOURCE_BYTES_MAX, |event| &event.source),
    ("correlationId", CORRELATION_ID_BYTES_MAX, |event| {
        &event.correlation_id
    }),
    ("traceId", TRACE_ID_BYTES_MAX, |event| &event.trace_id),
    ("userId", USER_ID_BYTES_MAX, |event| &event.user_id),
    ("key", KEY_BYTES_MAX, |event| &event.key),
];

const FIELD_NAMES: [&str; 11] = [
    "id",
    "type",
    "version",
    "timestamp",
    "source",
    "correlationId",
    "traceId",
    "userId",
    "key",
    "data",
    "metadata",
];

impl Event {
    /// An event with the defaults a publisher may omit: version "1.0", `data` null, no metadata.
    pub fn new(id: EventId, event_type: Subject, timestamp: OffsetDateTime) -> Event {
        Event {
            id,
            id_origin: IdOrigin::Publisher,
            event_type,
            version: Cow::Borrowed(VERSION_DEFAULT),
            timestamp,
            source: None,
            correlation_id: None,
            trace_id: None,
            user_id: None,
            key: None,
            data: RawValue::NULL.to_owned(),
            metadata: BTreeMap::new(),
        }
    }

    /// The stream an event goes to unless configuration says otherwise.
    pub fn stream_name(&self) -> &str {
        self.event_type.stream_name()
    }

    /// Decodes a published event, filling in id, timestamp, version and data when absent.
    pub fn from_json(bytes: &[u8], context: &ParseContext) -> Result<Event, EventError> {
        check_size(bytes, context.limits.event_bytes_max)?;
        let members = parse_object(bytes)?;
        let (event, _) = decode_members(members, Origin::Publish(context))?;
        Ok(event)
    }

    /// Decodes an event that Herald itself encoded ([`Event::to_json`]) after validating it, read
    /// back from its own log, whose records are checksummed: only its structure is checked.
    ///
    /// Reading a stored backlog is bounded by this decode (a group's task does it for every
    /// event it delivers); re-running the publish checks (ids, subject tokens, text limits,
    /// control characters, duplicate fields, RFC 3339 in full) was most of its cost and could
    /// only fail on a log whose checksums passed over damage, which the checksums rule out.
    pub fn from_stored_json(bytes: &[u8]) -> Result<Event, EventError> {
        let members = parse_object(bytes)?;
        let mut fields = EventFields::default();
        for (name, raw) in members {
            match &*name {
                "id" => fields.id = Some(EventId(stored_string("id", raw)?.into())),
                "type" => {
                    fields.event_type = Some(Subject::from_stored(stored_string("type", raw)?))
                }
                "version" => fields.version = Some(stored_string("version", raw)?),
                "timestamp" => {
                    let text = stored_string("timestamp", raw)?;
                    fields.timestamp =
                        Some(wire::parse_stored_timestamp(&text).map_err(|reason| {
                            EventError::InvalidTimestamp {
                                field: "timestamp",
                                value: excerpt(&text),
                                reason,
                            }
                        })?);
                }
                "source" => fields.source = Some(stored_string("source", raw)?),
                "correlationId" => {
                    fields.correlation_id = Some(stored_string("correlationId", raw)?)
                }
                "traceId" => fields.trace_id = Some(stored_string("traceId", raw)?),
                "userId" => fields.user_id = Some(stored_string("userId", raw)?),
                "key" => fields.key = Some(stored_string("key", raw)?),
                "data" => fields.data = Some(raw.to_owned()),
                "metadata" => fields.metadata = decode_metadata(raw)?,
                other => {
                    return Err(EventError::UnknownField {
                        name: excerpt(other),
                        suggestion: suggest_field(other),
                    });
                }
            }
        }
        if fields.id.is_none() {
            return Err(EventError::MissingField { name: "id" });
        }
        let now = fields
            .timestamp
            .ok_or(EventError::MissingField { name: "timestamp" })?;
        fields.finish(&ParseContext::new(now))
    }

    /// The JSON form, camelCase, with absent optionals omitted and `data` verbatim.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.json_bytes_expected());
        self.write_json(&mut out);
        out
    }

    /// [`Event::to_json`] appended to `out`: a batch of events is encoded into one buffer.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        self.write_members(out);
        out.push(b'}');
    }

    /// Room to make for the JSON form: the envelope's fields rarely take more than 256 bytes.
    pub fn json_bytes_expected(&self) -> usize {
        256 + self.data.get().len()
    }

    /// Checks the limits that the field types do not enforce themselves.
    pub fn validate(&self) -> Result<(), EventError> {
        check_text("version", &self.version, VERSION_BYTES_MAX)?;
        if !wire::is_timestamp_in_range(&self.timestamp) {
            return Err(EventError::InvalidTimestamp {
                field: "timestamp",
                value: self.timestamp.to_string(),
                reason: "out of range (years 0000 to 9999 in UTC)".to_owned(),
            });
        }
        for (field, max, get) in TEXT_FIELDS {
            if let Some(value) = get(self) {
                check_text(field, value, max)?;
            }
        }
        check_metadata(&self.metadata)
    }

    fn write_members(&self, out: &mut Vec<u8>) {
        wire::write_key(out, "id");
        wire::write_string(out, self.id.as_str());
        out.push(b',');
        wire::write_key(out, "type");
        wire::write_string(out, self.event_type.as_str());
        out.push(b',');
        wire::write_key(out, "version");
        wire::write_string(out, &self.version);
        out.push(b',');
        wire::write_key(out, "timestamp");
        wire::write_timestamp(out, self.timestamp);
        for (field, _, get) in TEXT_FIELDS {
            if let Some(value) = get(self) {
                out.push(b',');
                wire::write_key(out, field);
                wire::write_string(out, value);
            }
        }
        out.push(b',');
        wire::write_key(out, "data");
        out.extend_from_slice(self.data.get().as_bytes());
        if !self.metadata.is_empty() {
            out.push(b',');
            wire::write_key(out, "metadata");
            write_string_map(out, &self.metadata);
        }
    }
}

pub(crate) fn write_string_map(out: &mut Vec<u8>, map: &BTreeMap<String, String>) {
    out.push(b'{');
    for (index, (key, value)) in map.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        wire::write_string(out, key);
        out.push(b':');
        wire::write_string(out, value);
    }
    out.push(b'}');
}

/// Decodes a published event where it sits inside a larger JSON document (the events of a
/// WebSocket `pub` frame), in the pass that reads the document. Keeping each event as raw JSON
/// and reading it again afterwards scanned every event twice (a tenth of a publish's
/// instructions, docs/PERFORMANCE.md). The event is checked as [`Event::from_json`]
/// checks it, except for its size, which the caller bounds by the document's. Errors come out as
/// the deserializer's, without the precise [`EventError`]: a caller that needs the message
/// decodes the document again with [`Event::from_json`].
#[derive(Clone, Copy, Debug)]
pub struct PublishedEvent<'a>(pub &'a ParseContext);

impl<'de> serde::de::DeserializeSeed<'de> for PublishedEvent<'_> {
    type Value = Event;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Event, D::Error> {
        use serde::de::Error;
        match <Top<'de> as serde::Deserialize>::deserialize(deserializer)? {
            Top::Object(members) => decode_members(members, Origin::Publish(self.0))
                .map(|(event, _)| event)
                .map_err(D::Error::custom),
            Top::Array(_) | Top::Other(_) => Err(D::Error::custom("an event is a JSON object")),
        }
    }
}

/// An event as stored and delivered: with the stream it lives in and its position there.
///
/// It carries the event's JSON as stored, so that delivering it to many subscribers (and
/// reading it back from the log) copies bytes instead of encoding the event again each time.
/// Build it with [`StoredEvent::new`], [`StoredEvent::from_stored`] or
/// [`StoredEvent::from_log`]; the public fields are for reading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    /// Shared with the stream and every event stored in it: one allocation per stream, not per
    /// event.
    pub stream: Arc<str>,
    pub seq: u64,
    /// The event; read back from a log it is decoded on first use (see [`LazyEvent`]).
    pub event: LazyEvent,
}

/// A stored event's [`Event`], built from its stored JSON the first time a field is read.
///
/// A consumer group delivering a backlog over the wire needs only the type (to match its
/// pattern) and the JSON (copied into the frame): decoding every event read back from the log
/// was a third of the group task's time (docs/PERFORMANCE.md). The type and the timestamp
/// come from a scan of the fixed prefix [`Event::to_json`] writes; the rest waits for a reader.
#[derive(Clone, Debug)]
pub struct LazyEvent {
    /// `Event::to_json()`, shared.
    json: Bytes,
    /// The type and timestamp when the event is not decoded yet.
    head: Option<Head>,
    decoded: std::sync::OnceLock<Event>,
}

#[derive(Clone, Debug)]
struct Head {
    event_type: Subject,
    /// Where the timestamp's text is in the JSON: parsed when asked for, by whoever asks
    /// (a connection's forwarder), not by the group's task that reads the event.
    timestamp: std::ops::Range<usize>,
}

impl PartialEq for LazyEvent {
    /// The JSON is the event's encoding, so equal JSON is equal events.
    fn eq(&self, other: &LazyEvent) -> bool {
        self.json == other.json
    }
}

impl Eq for LazyEvent {}

impl std::ops::Deref for LazyEvent {
    type Target = Event;

    fn deref(&self) -> &Event {
        self.decoded.get_or_init(|| decode_stored(&self.json))
    }
}

impl LazyEvent {
    fn decoded(event: Event, json: Bytes) -> LazyEvent {
        LazyEvent {
            json,
            head: None,
            decoded: std::sync::OnceLock::from(event),
        }
    }

    /// The event itself, decoded if it was not yet.
    pub fn into_event(self) -> Event {
        match self.decoded.into_inner() {
            Some(event) => event,
            None => decode_stored(&self.json),
        }
    }

    /// The type, without decoding the rest. (Without a head the event was built decoded.)
    pub fn event_type(&self) -> &Subject {
        match &self.head {
            Some(head) => &head.event_type,
            None => &std::ops::Deref::deref(self).event_type,
        }
    }

    /// The timestamp, without decoding the rest.
    pub fn timestamp(&self) -> OffsetDateTime {
        match (&self.head, self.decoded.get()) {
            // The bytes as they are: a forwarder asks this of every delivery, and checking
            // them for UTF-8 first cost as much as the parse.
            (Some(head), None) => self
                .json
                .get(head.timestamp.clone())
                .and_then(wire::parse_stored_timestamp_bytes)
                .unwrap_or_else(|| std::ops::Deref::deref(self).timestamp),
            _ => std::ops::Deref::deref(self).timestamp,
        }
    }
}

/// A version as an event keeps it: the default borrowed, any other owned.
fn version(text: String) -> Cow<'static, str> {
    if text == VERSION_DEFAULT {
        Cow::Borrowed(VERSION_DEFAULT)
    } else {
        Cow::Owned(text)
    }
}

/// Decodes JSON whose prefix [`scan_prefix`] accepted. It was written by [`Event::to_json`]
/// and is checksummed by the log, and the round trip is property-tested, so the decode does not
/// fail; were the bytes damaged past their checksum, the event reads as its envelope with
/// `null` data rather than taking the process down (deliveries still carry the stored bytes).
fn decode_stored(json: &[u8]) -> Event {
    Event::from_stored_json(json).unwrap_or_else(|_| {
        let prefix = scan_prefix(json);
        let timestamp = prefix
            .as_ref()
            .and_then(|prefix| std::str::from_utf8(json.get(prefix.timestamp.clone())?).ok())
            .and_then(|text| wire::parse_stored_timestamp(text).ok())
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        fn text(bytes: &[u8]) -> &str {
            std::str::from_utf8(bytes).unwrap_or_default()
        }
        let (id, event_type) = prefix.as_ref().map_or(("", ""), |prefix| {
            (text(prefix.id), text(prefix.event_type))
        });
        let mut event = Event::new(
            EventId(id.into()),
            Subject::from_stored(event_type.to_owned()),
            timestamp,
        );
        if let Some(prefix) = prefix {
            event.version = version(text(prefix.version).to_owned());
        }
        event
    })
}

/// The fields [`Event::to_json`] writes first, in its order: `{"id":…,"type":…,"version":…,
/// "timestamp":…` followed by `,` or `}`.
#[derive(Clone)]
struct Prefix<'a> {
    id: &'a [u8],
    event_type: &'a [u8],
    version: &'a [u8],
    /// Where the timestamp's text is, unparsed.
    timestamp: std::ops::Range<usize>,
}

/// Reads [`Prefix`] off Herald's own encoding without a JSON parser: strings without escapes
/// (ids with quotes or backslashes, rare, return `None` and take the full decode). A group
/// reads every event of its streams through it, so fields stay bytes until one is used (most
/// uses need only the type) and quotes are found with `memchr`: a byte loop and a UTF-8 check
/// per field cost ~1 500 instructions an event (docs/PERFORMANCE.md).
fn scan_prefix(json: &[u8]) -> Option<Prefix<'_>> {
    fn field<'a>(rest: &mut &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
        let after = rest.strip_prefix(key)?;
        let end = memchr::memchr2(b'"', b'\\', after)?;
        if after[end] != b'"' {
            return None;
        }
        *rest = &after[end + 1..];
        Some(&after[..end])
    }
    let mut rest = json;
    let id = field(&mut rest, b"{\"id\":\"")?;
    let event_type = field(&mut rest, b",\"type\":\"")?;
    let version = field(&mut rest, b",\"version\":\"")?;
    let timestamp_text = field(&mut rest, b",\"timestamp\":\"")?;
    if !matches!(rest.first(), Some(b',' | b'}')) || event_type.is_empty() || id.is_empty() {
        return None;
    }
    // Just before `rest` is the closing quote.
    let end = json.len() - rest.len() - 1;
    let timestamp = end - timestamp_text.len()..end;
    Some(Prefix {
        id,
        event_type,
        version,
        timestamp,
    })
}

impl StoredEvent {
    pub fn new(stream: impl Into<Arc<str>>, seq: u64, event: Event) -> StoredEvent {
        let json = Bytes::from(event.to_json());
        StoredEvent {
            stream: stream.into(),
            seq,
            event: LazyEvent::decoded(event, json),
        }
    }

    /// An event read back from storage with the bytes it was decoded from, which must be its
    /// JSON form (`Event::to_json`): the log stores exactly that, checksummed.
    pub fn from_stored(
        stream: impl Into<Arc<str>>,
        seq: u64,
        event: Event,
        json: Bytes,
    ) -> StoredEvent {
        debug_assert_eq!(
            json.as_ref(),
            event.to_json().as_slice(),
            "stored bytes are the event's JSON"
        );
        StoredEvent {
            stream: stream.into(),
            seq,
            event: LazyEvent::decoded(event, json),
        }
    }

    /// An event read back from Herald's own log, as the bytes [`Event::to_json`] wrote: only
    /// its type and timestamp are read now, the rest when a field is first used. Bytes not in
    /// that form are decoded at once (`Event::from_stored_json`), and refused if they do not
    /// decode.
    pub fn from_log(
        stream: impl Into<Arc<str>>,
        seq: u64,
        json: Bytes,
    ) -> Result<StoredEvent, EventError> {
        let prefix = scan_prefix(&json).and_then(|prefix| {
            Some((
                std::str::from_utf8(prefix.event_type).ok()?,
                prefix.timestamp,
            ))
        });
        let event = match prefix {
            Some((event_type, timestamp)) => LazyEvent {
                head: Some(Head {
                    event_type: Subject::from_stored(event_type.to_owned()),
                    timestamp,
                }),
                json,
                decoded: std::sync::OnceLock::new(),
            },
            None => LazyEvent::decoded(Event::from_stored_json(&json)?, json),
        };
        Ok(StoredEvent {
            stream: stream.into(),
            seq,
            event,
        })
    }

    /// The same event with its JSON in an allocation of its own. An event read from a log may
    /// share the buffer of a whole read (hundreds of events): one kept for long (a retry
    /// waiting for its time, a dead letter) is detached first so that it holds only its bytes.
    pub fn detached(&self) -> StoredEvent {
        let mut detached = self.clone();
        detached.event.json = Bytes::copy_from_slice(&self.event.json);
        detached
    }

    /// The event's own JSON (without `stream` and `seq`), as stored.
    pub fn event_json(&self) -> &Bytes {
        &self.event.json
    }

    /// `{"stream":…,"seq":…,` then the event's own fields.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40 + self.stream.len() + self.event.json.len());
        self.write_json(&mut out);
        out
    }

    /// [`StoredEvent::to_json`] appended to `out`: a delivery frame is written in one buffer.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        wire::write_key(out, "stream");
        wire::write_string(out, &self.stream);
        out.push(b',');
        wire::write_key(out, "seq");
        out.extend_from_slice(itoa::Buffer::new().format(self.seq).as_bytes());
        out.push(b',');
        // The event's JSON is an object with at least `id` and `type`: its members follow.
        out.extend_from_slice(self.event.json.get(1..).unwrap_or_default());
    }

    /// Reads a stored or delivered event back: every field the server fills in is required.
    pub fn from_json(bytes: &[u8], limits: &Limits) -> Result<StoredEvent, EventError> {
        check_size(
            bytes,
            limits
                .event_bytes_max
                .saturating_add(STORED_EVENT_OVERHEAD_BYTES_MAX),
        )?;
        let members = parse_object(bytes)?;
        let (event, position) = decode_members(members, Origin::Stored)?;
        let (stream, seq) = position.ok_or(EventError::MissingField { name: "stream" })?;
        Ok(StoredEvent::new(stream, seq, event))
    }
}

pub(crate) fn check_size(bytes: &[u8], max: usize) -> Result<(), EventError> {
    if bytes.len() > max {
        return Err(EventError::TooLarge {
            bytes: bytes.len(),
            max,
        });
    }
    Ok(())
}

pub(crate) fn json_error(error: &serde_json::Error) -> EventError {
    EventError::Json {
        message: error.to_string(),
    }
}

fn parse_object(bytes: &[u8]) -> Result<Members<'_>, EventError> {
    match wire::parse(bytes).map_err(|error| json_error(&error))? {
        Top::Object(members) => Ok(members),
        Top::Array(_) => Err(EventError::NotAnObject { found: "an array" }),
        Top::Other(found) => Err(EventError::NotAnObject { found }),
    }
}

enum Origin<'a> {
    Publish(&'a ParseContext),
    /// Read back from storage: `stream` and `seq` are expected, and nothing is defaulted.
    Stored,
}

/// Decodes Herald's JSON form; returns `(stream, seq)` as well when reading a stored event.
fn decode_members(
    members: Members<'_>,
    origin: Origin<'_>,
) -> Result<(Event, Option<(String, u64)>), EventError> {
    let mut fields = EventFields::default();
    let mut stream = None;
    let mut seq = None;
    let mut seen: Vec<Cow<'_, str>> = Vec::with_capacity(members.len());
    for (name, raw) in members {
        if seen.contains(&name) {
            return Err(EventError::DuplicateField {
                name: excerpt(&name),
            });
        }
        match (&*name, &origin) {
            ("id", _) => fields.id = decode_id(raw)?,
            ("type", _) => fields.event_type = Some(decode_type(raw)?),
            ("version", _) => fields.version = text_field("version", raw, VERSION_BYTES_MAX)?,
            ("timestamp", _) => fields.timestamp = timestamp_field("timestamp", raw)?,
            ("source", _) => fields.source = text_field("source", raw, SOURCE_BYTES_MAX)?,
            ("correlationId", _) => {
                fields.correlation_id = text_field("correlationId", raw, CORRELATION_ID_BYTES_MAX)?;
            }
            ("traceId", _) => fields.trace_id = text_field("traceId", raw, TRACE_ID_BYTES_MAX)?,
            ("userId", _) => fields.user_id = text_field("userId", raw, USER_ID_BYTES_MAX)?,
            ("key", _) => fields.key = text_field("key", raw, KEY_BYTES_MAX)?,
            ("data", _) => fields.data = Some(raw.to_owned()),
            ("metadata", _) => fields.metadata = decode_metadata(raw)?,
            ("stream", Origin::Publish(_)) => {
                return Err(EventError::ServerAssignedField { name: "stream" });
            }
            ("seq", Origin::Publish(_)) => {
                return Err(EventError::ServerAssignedField { name: "seq" });
            }
            ("stream", Origin::Stored) => stream = Some(decode_stream(raw)?),
            ("seq", Origin::Stored) => seq = Some(decode_seq(raw)?),
            (other, _) => {
                return Err(EventError::UnknownField {
                    name: excerpt(other),
                    suggestion: suggest_field(other),
                });
            }
        }
        seen.push(name);
    }
    match origin {
        Origin::Publish(context) => Ok((fields.finish(context)?, None)),
        Origin::Stored => {
            let stream = stream.ok_or(EventError::MissingField { name: "stream" })?;
            let seq = seq.ok_or(EventError::MissingField { name: "seq" })?;
            if fields.id.is_none() {
                return Err(EventError::MissingField { name: "id" });
            }
            let now = fields
                .timestamp
                .ok_or(EventError::MissingField { name: "timestamp" })?;
            let context = ParseContext::new(now);
            Ok((fields.finish(&context)?, Some((stream, seq))))
        }
    }
}

/// Catches the usual spelling slips: `correlation_id`, `CorrelationID`, `trace-id`.
fn suggest_field(name: &str) -> Option<&'static str> {
    let normalize = |text: &str| -> String {
        text.chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect()
    };
    let wanted = normalize(name);
    FIELD_NAMES
        .into_iter()
        .find(|field| normalize(field) == wanted)
}

/// Fields as decoded, before defaults; shared with the CloudEvents decoder.
#[derive(Default)]
pub(crate) struct EventFields {
    pub(crate) id: Option<EventId>,
    pub(crate) event_type: Option<Subject>,
    pub(crate) version: Option<String>,
    pub(crate) timestamp: Option<OffsetDateTime>,
    pub(crate) source: Option<String>,
    pub(crate) correlation_id: Option<String>,
    pub(crate) trace_id: Option<String>,
    pub(crate) user_id: Option<String>,
    pub(crate) key: Option<String>,
    pub(crate) data: Option<Box<RawValue>>,
    pub(crate) metadata: BTreeMap<String, String>,
}

impl EventFields {
    pub(crate) fn finish(self, context: &ParseContext) -> Result<Event, EventError> {
        let event_type = self
            .event_type
            .ok_or(EventError::MissingField { name: "type" })?;
        let (id, id_origin) = match self.id {
            Some(id) => (id, IdOrigin::Publisher),
            None => (EventId::new_v7(context.now), IdOrigin::Generated),
        };
        Ok(Event {
            id,
            id_origin,
            event_type,
            version: self.version.map_or(Cow::Borrowed(VERSION_DEFAULT), version),
            timestamp: self.timestamp.unwrap_or(context.now),
            source: self.source,
            correlation_id: self.correlation_id,
            trace_id: self.trace_id,
            user_id: self.user_id,
            key: self.key,
            data: self.data.unwrap_or_else(|| RawValue::NULL.to_owned()),
            metadata: self.metadata,
        })
    }
}

/// A JSON string, or `None` for null (an explicit null means "absent", as JavaScript's
/// `undefined` often turns into it).
pub(crate) fn string_field(
    field: &'static str,
    raw: &RawValue,
) -> Result<Option<String>, EventError> {
    match wire::kind(raw) {
        "null" => Ok(None),
        "a string" => wire::decode_string(raw)
            .map(Some)
            .map_err(|error| json_error(&error)),
        found => Err(EventError::WrongType {
            field,
            expected: "a string",
            found,
        }),
    }
}

/// A string field of a stored event: the writer ([`wire::write_string`]) escapes only what JSON
/// requires, so most values are copied straight from between their quotes.
fn stored_string(field: &'static str, raw: &RawValue) -> Result<String, EventError> {
    let text = raw.get();
    match text
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    {
        Some(inner) if !inner.contains('\\') => Ok(inner.to_owned()),
        _ => string_field(field, raw)?.ok_or(EventError::WrongType {
            field,
            expected: "a string",
            found: "null",
        }),
    }
}

pub(crate) fn text_field(
    field: &'static str,
    raw: &RawValue,
    max: usize,
) -> Result<Option<String>, EventError> {
    let value = string_field(field, raw)?;
    if let Some(text) = &value {
        check_text(field, text, max)?;
    }
    Ok(value)
}

/// Envelope strings end up in HTTP headers and log lines, so they are single-line and bounded.
pub(crate) fn check_text(field: &'static str, text: &str, max: usize) -> Result<(), EventError> {
    if text.is_empty() {
        return Err(EventError::Empty { field });
    }
    if text.len() > max {
        return Err(EventError::TooLong {
            field,
            bytes: text.len(),
            max,
        });
    }
    if text.chars().any(char::is_control) {
        return Err(EventError::ControlCharacter { field });
    }
    Ok(())
}

pub(crate) fn decode_id(raw: &RawValue) -> Result<Option<EventId>, EventError> {
    string_field("id", raw)?
        .map(|text| EventId::parse(&text).map_err(EventError::InvalidId))
        .transpose()
}

pub(crate) fn decode_type(raw: &RawValue) -> Result<Subject, EventError> {
    if wire::kind(raw) == "null" {
        return Err(EventError::WrongType {
            field: "type",
            expected: "a string",
            found: "null",
        });
    }
    let text = string_field("type", raw)?.unwrap_or_default();
    Subject::new(&text).map_err(EventError::InvalidType)
}

pub(crate) fn timestamp_field(
    field: &'static str,
    raw: &RawValue,
) -> Result<Option<OffsetDateTime>, EventError> {
    let Some(text) = string_field(field, raw)? else {
        return Ok(None);
    };
    wire::parse_timestamp(&text)
        .map(Some)
        .map_err(|reason| EventError::InvalidTimestamp {
            field,
            value: excerpt(&text),
            reason,
        })
}

fn decode_metadata(raw: &RawValue) -> Result<BTreeMap<String, String>, EventError> {
    let mut metadata = BTreeMap::new();
    let members = match wire::kind(raw) {
        "null" => return Ok(metadata),
        "an object" => match wire::parse(raw.get().as_bytes()) {
            Ok(Top::Object(members)) => members,
            Ok(_) => Vec::new(),
            Err(error) => return Err(json_error(&error)),
        },
        found => {
            return Err(EventError::WrongType {
                field: "metadata",
                expected: "an object of strings",
                found,
            });
        }
    };
    if members.len() > METADATA_ENTRIES_MAX {
        return Err(EventError::MetadataTooManyEntries {
            entries: members.len(),
            max: METADATA_ENTRIES_MAX,
        });
    }
    for (key, value) in members {
        let found = wire::kind(value);
        if found != "a string" {
            return Err(EventError::MetadataNotString {
                key: excerpt(&key),
                found,
            });
        }
        let value = wire::decode_string(value).map_err(|error| json_error(&error))?;
        insert_metadata(&mut metadata, key.into_owned(), value)?;
    }
    Ok(metadata)
}

/// Adds one entry, checking its key and value; the entry count is checked by [`check_metadata`].
pub(crate) fn insert_metadata(
    metadata: &mut BTreeMap<String, String>,
    key: String,
    value: String,
) -> Result<(), EventError> {
    check_metadata_entry(&key, &value)?;
    if metadata.contains_key(&key) {
        return Err(EventError::DuplicateMetadataKey { key: excerpt(&key) });
    }
    metadata.insert(key, value);
    Ok(())
}

fn check_metadata_entry(key: &str, value: &str) -> Result<(), EventError> {
    if key.is_empty() {
        return Err(EventError::MetadataKeyEmpty);
    }
    if key.len() > METADATA_KEY_BYTES_MAX {
        return Err(EventError::MetadataKeyTooLong {
            key: excerpt(key),
            bytes: key.len(),
            max: METADATA_KEY_BYTES_MAX,
        });
    }
    if value.len() > METADATA_VALUE_BYTES_MAX {
        return Err(EventError::MetadataValueTooLong {
            key: excerpt(key),
            bytes: value.len(),
            max: METADATA_VALUE_BYTES_MAX,
        });
    }
    Ok(())
}

pub(crate) fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<(), EventError> {
    if metadata.len() > METADATA_ENTRIES_MAX {
        return Err(EventError::MetadataTooManyEntries {
            entries: metadata.len(),
            max: METADATA_ENTRIES_MAX,
        });
    }
    metadata
        .iter()
        .try_for_each(|(key, value)| check_metadata_entry(key, value))
}

fn decode_stream(raw: &RawValue) -> Result<String, EventError> {
    let text = string_field("stream", raw)?.unwrap_or_default();
    if !is_valid_token(&text) {
        return Err(EventError::InvalidStream {
            value: excerpt(&text),
        });
    }
    Ok(text)
}

fn decode_seq(raw: &RawValue) -> Result<u64, EventError> {
    match raw.get().parse::<u64>() {
        Ok(seq) if seq >= 1 => Ok(seq),
        _ => Err(EventError::InvalidSeq {
            value: excerpt(raw.get()),
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests;
