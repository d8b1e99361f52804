//! Events as a publisher writes them ([`NewEvent`]) and as a subscriber reads them
//! ([`ReceivedEvent`]), with `data` typed through serde on both sides.
//!
//! Every event leaves the client with an `id` (a UUIDv7 made here when the caller gave none):
//! a publish re-sent after a reconnect then hits the server's dedupe window instead of being
//! stored twice.

use std::collections::BTreeMap;

use herald_core::{Event, EventId, Limits, ParseContext, StoredEvent, Subject};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{Error, Result};

/// An event to publish. Construction checks what the client can check alone (type, id, that
/// `data` encodes); the server checks the rest and names the field it refuses.
#[derive(Clone, Debug)]
pub struct NewEvent {
    id: Option<EventId>,
    event_type: Subject,
    version: Option<String>,
    timestamp: Option<OffsetDateTime>,
    source: Option<String>,
    correlation_id: Option<String>,
    trace_id: Option<String>,
    user_id: Option<String>,
    key: Option<String>,
    data: Box<RawValue>,
    metadata: BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireEvent<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    data: &'a RawValue,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    metadata: &'a BTreeMap<String, String>,
}

impl NewEvent {
    /// An event of `event_type` (such as `photo.uploaded`) carrying `data`.
    pub fn new(event_type: &str, data: &impl Serialize) -> Result<NewEvent> {
        let data = serde_json::value::to_raw_value(data).map_err(Error::Encode)?;
        NewEvent::with_raw_data(event_type, data)
    }

    /// As [`NewEvent::new`], with `data` already JSON.
    pub fn with_raw_data(event_type: &str, data: Box<RawValue>) -> Result<NewEvent> {
        Ok(NewEvent {
            id: None,
            event_type: Subject::new(event_type).map_err(Error::InvalidType)?,
            version: None,
            timestamp: None,
            source: None,
            correlation_id: None,
            trace_id: None,
            user_id: None,
            key: None,
            data,
            metadata: BTreeMap::new(),
        })
    }

    /// Your own id makes your retries safe: the server stores an id once per dedupe window.
    pub fn id(mut self, id: &str) -> Result<NewEvent> {
        self.id = Some(EventId::parse(id).map_err(Error::InvalidId)?);
        Ok(self)
    }

    pub fn version(mut self, version: impl Into<String>) -> NewEvent {
        self.version = Some(version.into());
        self
    }

    /// When it happened; the server uses its receive time otherwise.
    pub fn timestamp(mut self, timestamp: OffsetDateTime) -> NewEvent {
        self.timestamp = Some(timestamp);
        self
    }

    pub fn source(mut self, source: impl Into<String>) -> NewEvent {
        self.source = Some(source.into());
        self
    }

    pub fn correlation_id(mut self, id: impl Into<String>) -> NewEvent {
        self.correlation_id = Some(id.into());
        self
    }

    pub fn trace_id(mut self, id: impl Into<String>) -> NewEvent {
        self.trace_id = Some(id.into());
        self
    }

    pub fn user_id(mut self, id: impl Into<String>) -> NewEvent {
        self.user_id = Some(id.into());
        self
    }

    /// The ordering / aggregate key.
    pub fn key(mut self, key: impl Into<String>) -> NewEvent {
        self.key = Some(key.into());
        self
    }

    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> NewEvent {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Reads an event in its wire form (PRODUCT.md §1: `type`, `data`, and any envelope
    /// field), such as a line of an NDJSON file. Unknown fields are refused, as the server does.
    pub fn from_json(json: &str) -> Result<NewEvent> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Input {
            id: Option<String>,
            #[serde(rename = "type")]
            event_type: String,
            version: Option<String>,
            timestamp: Option<String>,
            source: Option<String>,
            correlation_id: Option<String>,
            trace_id: Option<String>,
            user_id: Option<String>,
            key: Option<String>,
            data: Option<Box<RawValue>>,
            #[serde(default)]
            metadata: BTreeMap<String, String>,
        }
        let input: Input = serde_json::from_str(json).map_err(Error::Encode)?;
        let data = match input.data {
            Some(data) => data,
            None => RawValue::NULL.to_owned(),
        };
        let mut event = NewEvent::with_raw_data(&input.event_type, data)?;
        if let Some(id) = input.id {
            event = event.id(&id)?;
        }
        if let Some(timestamp) = input.timestamp {
            let parsed = OffsetDateTime::parse(&timestamp, &Rfc3339).map_err(|error| {
                Error::InvalidTimestamp {
                    value: timestamp.clone(),
                    reason: error.to_string(),
                }
            })?;
            event.timestamp = Some(parsed);
        }
        event.version = input.version;
        event.source = input.source;
        event.correlation_id = input.correlation_id;
        event.trace_id = input.trace_id;
        event.user_id = input.user_id;
        event.key = input.key;
        event.metadata = input.metadata;
        Ok(event)
    }

    pub fn event_type(&self) -> &str {
        self.event_type.as_str()
    }

    /// The id, made now if the caller set none (so that a re-send is recognised).
    pub(crate) fn ensure_id(&mut self) -> &EventId {
        self.id
            .get_or_insert_with(|| EventId::new_v7(OffsetDateTime::now_utc()))
    }

    /// The wire JSON; `default_source` fills `source` when the event has none.
    pub(crate) fn encode(&mut self, default_source: Option<&str>) -> Result<Box<RawValue>> {
        let id = self.ensure_id().as_str().to_owned();
        let timestamp = match self.timestamp {
            Some(timestamp) => Some(timestamp.format(&Rfc3339).map_err(|error| {
                Error::Protocol(format!("timestamp {timestamp} does not format: {error}"))
            })?),
            None => None,
        };
        let wire = WireEvent {
            id: &id,
            event_type: self.event_type.as_str(),
            version: self.version.as_deref(),
            timestamp,
            source: self.source.as_deref().or(default_source),
            correlation_id: self.correlation_id.as_deref(),
            trace_id: self.trace_id.as_deref(),
            user_id: self.user_id.as_deref(),
            key: self.key.as_deref(),
            data: &self.data,
            metadata: &self.metadata,
        };
        serde_json::value::to_raw_value(&wire).map_err(Error::Encode)
    }
}

/// An event as delivered: the envelope, where it is stored, and `data` as `T`.
#[derive(Clone, Debug)]
pub struct ReceivedEvent<T> {
    pub id: String,
    pub event_type: String,
    pub version: String,
    pub timestamp: OffsetDateTime,
    pub source: Option<String>,
    pub correlation_id: Option<String>,
    pub trace_id: Option<String>,
    pub user_id: Option<String>,
    pub key: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// Absent for an ephemeral subject (delivered live, never stored).
    pub stream: Option<String>,
    pub seq: Option<u64>,
    pub data: T,
    /// The event exactly as the server sent it.
    json: std::sync::Arc<RawValue>,
}

impl<T> ReceivedEvent<T> {
    /// The event's JSON as the server sent it (the stored form, with `stream` and `seq`).
    pub fn json(&self) -> &str {
        self.json.get()
    }
}

/// The client trusts the server's sizes: it only reads what the server already accepted.
const RECEIVE_LIMITS: Limits = Limits {
    event_bytes_max: usize::MAX / 2,
    batch_bytes_max: usize::MAX / 2,
    batch_events_max: usize::MAX / 2,
};

impl<T: DeserializeOwned> ReceivedEvent<T> {
    /// Reads a delivered event: a stored one, or an ephemeral one (no `stream`/`seq`).
    pub fn decode(json: &RawValue) -> Result<ReceivedEvent<T>> {
        let bytes = json.get().as_bytes();
        let (event, position) = match StoredEvent::from_json(bytes, &RECEIVE_LIMITS) {
            Ok(stored) => (stored.event.into_event(), Some((stored.stream, stored.seq))),
            Err(stored_error) => {
                let mut context = ParseContext::new(OffsetDateTime::now_utc());
                context.limits = RECEIVE_LIMITS;
                match Event::from_json(bytes, &context) {
                    Ok(event) => (event, None),
                    Err(_) => {
                        return Err(Error::Decode {
                            id: event_id_of(json),
                            reason: stored_error.to_string(),
                        });
                    }
                }
            }
        };
        let data = serde_json::from_str(event.data.get()).map_err(|error| Error::Decode {
            id: event.id.as_str().to_owned(),
            reason: format!("data is not the expected type: {error}"),
        })?;
        let (stream, seq) = position.unzip();
        Ok(ReceivedEvent {
            id: event.id.as_str().to_owned(),
            event_type: event.event_type.as_str().to_owned(),
            version: event.version.into_owned(),
            timestamp: event.timestamp,
            source: event.source,
            correlation_id: event.correlation_id,
            trace_id: event.trace_id,
            user_id: event.user_id,
            key: event.key,
            metadata: event.metadata,
            stream: stream.map(|stream| stream.to_string()),
            seq,
            data,
            json: std::sync::Arc::from(json.to_owned()),
        })
    }
}

/// The id of an event that does not decode, for the error message.
fn event_id_of(json: &RawValue) -> String {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: Option<String>,
    }
    serde_json::from_str::<IdOnly>(json.get())
        .ok()
        .and_then(|only| only.id)
        .unwrap_or_else(|| "(without id)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn encoded(mut event: NewEvent, source: Option<&str>) -> Value {
        serde_json::from_str(event.encode(source).unwrap().get()).unwrap()
    }

    #[test]
    fn new_event_encodes_envelope_fields() {
        let event = NewEvent::new("photo.uploaded", &json!({"photoId": "p1"}))
            .unwrap()
            .id("evt-1")
            .unwrap()
            .correlation_id("req-1")
            .trace_id("trace-1")
            .user_id("user-1")
            .key("photo-p1")
            .version("2.0")
            .metadata("k", "v")
            .timestamp(time::macros::datetime!(2026-11-22 10:00:00 UTC));
        assert_eq!(
            encoded(event, Some("photo-api")),
            json!({
                "id": "evt-1", "type": "photo.uploaded", "version": "2.0",
                "timestamp": "2026-11-22T10:00:00Z", "source": "photo-api",
                "correlationId": "req-1", "traceId": "trace-1", "userId": "user-1",
                "key": "photo-p1", "data": {"photoId": "p1"}, "metadata": {"k": "v"}
            })
        );
    }

    #[test]
    fn new_event_gets_a_stable_id_and_keeps_its_own_source() {
        let mut event = NewEvent::new("a.b", &1).unwrap().source("mine");
        let first = encoded(event.clone(), None);
        let id = first["id"].as_str().unwrap().to_owned();
        assert_eq!(id.len(), 36, "a UUID: {id}");
        assert_eq!(first["source"], "mine");
        assert!(first.get("timestamp").is_none());
        event.ensure_id();
        let again = encoded(event.clone(), Some("service"));
        let again_id = again["id"].as_str().unwrap().to_owned();
        assert_eq!(encoded(event, Some("service"))["id"], again_id.as_str());
        assert_eq!(again["source"], "mine");
    }

    #[test]
    fn new_event_refuses_what_the_client_can_check() {
        let error = NewEvent::new("photo.*", &1).unwrap_err();
        assert!(error.to_string().contains("wildcard"), "{error}");
        let error = NewEvent::new("a.b", &1).unwrap().id("").unwrap_err();
        assert!(error.to_string().contains("empty"), "{error}");
        let error = NewEvent::new("a..b", &1).unwrap_err();
        assert!(error.to_string().contains("token 2"), "{error}");
    }

    #[test]
    fn new_event_from_json() {
        let line = r#"{"type":"order.placed","id":"o-1","key":"order-1","timestamp":"2026-11-22T10:00:00Z","data":{"total":3},"metadata":{"k":"v"}}"#;
        let event = NewEvent::from_json(line).unwrap();
        assert_eq!(
            encoded(event, None),
            json!({"id": "o-1", "type": "order.placed", "key": "order-1",
                   "timestamp": "2026-11-22T10:00:00Z", "data": {"total": 3}, "metadata": {"k": "v"}})
        );
        let bare = encoded(NewEvent::from_json(r#"{"type":"a.b"}"#).unwrap(), None);
        assert_eq!(bare["data"], Value::Null);
        for (line, want) in [
            (r#"{"type":"a.b","colour":1}"#, "unknown field `colour`"),
            (r#"{"data":1}"#, "missing field `type`"),
            (r#"{"type":"a.>"}"#, "wildcard"),
            (r#"{"type":"a.b","timestamp":"soon"}"#, "timestamp \"soon\""),
            ("[1]", "invalid type"),
        ] {
            let error = NewEvent::from_json(line).unwrap_err().to_string();
            assert!(error.contains(want), "{line}: {error}");
        }
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Photo {
        #[serde(rename = "photoId")]
        photo_id: String,
    }

    #[test]
    fn received_event_decodes_stored_and_ephemeral_events() {
        let stored = RawValue::from_string(
            r#"{"stream":"photo","seq":7,"id":"e1","type":"photo.uploaded","version":"1.0","timestamp":"2026-11-22T10:00:00Z","key":"k","data":{"photoId":"p1"}}"#
                .to_owned(),
        )
        .unwrap();
        let event = ReceivedEvent::<Photo>::decode(&stored).unwrap();
        assert_eq!(event.stream.as_deref(), Some("photo"));
        assert_eq!(event.seq, Some(7));
        assert_eq!(event.key.as_deref(), Some("k"));
        assert_eq!(event.data.photo_id, "p1");
        assert_eq!(event.json(), stored.get());

        let ephemeral = RawValue::from_string(
            r#"{"id":"e2","type":"typing.start","version":"1.0","timestamp":"2026-11-22T10:00:00Z","data":{"photoId":"p2"}}"#
                .to_owned(),
        )
        .unwrap();
        let event = ReceivedEvent::<Photo>::decode(&ephemeral).unwrap();
        assert_eq!((event.stream, event.seq), (None, None));

        let wrong = RawValue::from_string(
            r#"{"stream":"photo","seq":8,"id":"e3","type":"photo.uploaded","version":"1.0","timestamp":"2026-11-22T10:00:00Z","data":{"size":1}}"#
                .to_owned(),
        )
        .unwrap();
        let error = ReceivedEvent::<Photo>::decode(&wrong).unwrap_err();
        assert!(
            matches!(&error, Error::Decode { id, .. } if id == "e3"),
            "{error}"
        );
        let garbage = RawValue::from_string(r#"{"id":"e4","colour":1}"#.to_owned()).unwrap();
        let error = ReceivedEvent::<Value>::decode(&garbage).unwrap_err();
        assert!(
            matches!(&error, Error::Decode { id, .. } if id == "e4"),
            "{error}"
        );
    }
}
