//! Events read back from Redis: stream entries (`0-<seq>`, the event's JSON in field `e`)
//! turned into stored events.

use std::sync::Arc;

use bytes::Bytes;
use herald_core::{Event, StoredEvent};
use redis::Value;
use redis::streams::StreamId;

use super::keys::seq_of;
use crate::api::EngineError;

/// Decodes stream entries into stored events.
pub(crate) fn decode_entries(
    stream: &str,
    entries: &[StreamId],
) -> Result<Vec<Arc<StoredEvent>>, EngineError> {
    let mut events = Vec::with_capacity(entries.len());
    for entry in entries {
        let seq = seq_of(&entry.id).ok_or_else(|| EngineError::Corrupt {
            stream: stream.to_owned(),
            seq: 0,
            reason: format!("entry id {:?} is not 0-<seq>", entry.id),
        })?;
        let Some(Value::BulkString(json)) = entry.map.get("e") else {
            return Err(EngineError::Corrupt {
                stream: stream.to_owned(),
                seq,
                reason: "the entry has no event".to_owned(),
            });
        };
        events.push(Arc::new(decode_event(stream, seq, json)?));
    }
    Ok(events)
}

/// Decodes the reply of an `XREADGROUP` (or `XREAD`) as it came off the wire: walked in
/// place, each event's JSON moved into its `StoredEvent` rather than copied, and no map built
/// per entry (redis-rs's `StreamReadReply` clones every field into a `HashMap`).
pub(crate) fn decode_read_reply(
    stream: &str,
    reply: Value,
) -> Result<Vec<Arc<StoredEvent>>, EngineError> {
    let corrupt = |seq: u64, reason: String| EngineError::Corrupt {
        stream: stream.to_owned(),
        seq,
        reason,
    };
    let keys = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(keys) => keys,
        Value::Map(pairs) => pairs
            .into_iter()
            .flat_map(|(key, entries)| [key, entries])
            .collect(),
        other => return Err(corrupt(0, format!("a read replied {other:?}"))),
    };
    let mut events = Vec::new();
    let mut keys = keys.into_iter();
    while let Some(key) = keys.next() {
        // RESP2 gives [key, entries] pairs as arrays; RESP3 a map, flattened above.
        let entries = match key {
            Value::Array(pair) => pair.into_iter().nth(1),
            _ => keys.next(),
        };
        let Some(Value::Array(entries)) = entries else {
            continue;
        };
        events.reserve(entries.len());
        for entry in entries {
            let Value::Array(entry) = entry else {
                return Err(corrupt(0, "an entry is not an array".to_owned()));
            };
            let mut parts = entry.into_iter();
            let (Some(Value::BulkString(id)), Some(Value::Array(fields))) =
                (parts.next(), parts.next())
            else {
                return Err(corrupt(0, "an entry has no id and fields".to_owned()));
            };
            let seq = std::str::from_utf8(&id)
                .ok()
                .and_then(seq_of)
                .ok_or_else(|| {
                    corrupt(
                        0,
                        format!("entry id {:?} is not 0-<seq>", String::from_utf8_lossy(&id)),
                    )
                })?;
            let mut fields = fields.into_iter();
            let mut json = None;
            while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
                if matches!(&name, Value::BulkString(name) if name == b"e")
                    && let Value::BulkString(value) = value
                {
                    json = Some(value);
                    break;
                }
            }
            let json = json.ok_or_else(|| corrupt(seq, "the entry has no event".to_owned()))?;
            events.push(Arc::new(decode_owned_event(
                stream,
                seq,
                Bytes::from(json),
            )?));
        }
    }
    Ok(events)
}

/// One stored event from its JSON, which it keeps.
///
/// Only Herald writes a stream's entries, each the JSON of an event it validated before the
/// `XADD` ([`Event::to_json`]), so reading one back checks its structure only
/// ([`Event::from_stored_json`]), as the embedded engine does with its log: running the
/// publish checks again for every delivery was most of the decode's cost.
fn decode_owned_event(stream: &str, seq: u64, json: Bytes) -> Result<StoredEvent, EngineError> {
    let event = Event::from_stored_json(&json).map_err(|error| EngineError::Corrupt {
        stream: stream.to_owned(),
        seq,
        reason: error.to_string(),
    })?;
    Ok(StoredEvent::from_stored(
        stream.to_owned(),
        seq,
        event,
        json,
    ))
}

/// One stored event from its JSON.
pub(crate) fn decode_event(
    stream: &str,
    seq: u64,
    json: &[u8],
) -> Result<StoredEvent, EngineError> {
    decode_owned_event(stream, seq, Bytes::copy_from_slice(json))
}
