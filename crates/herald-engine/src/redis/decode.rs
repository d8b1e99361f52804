//! Events read back from Redis: stream entries (`0-<seq>`, the event's JSON in field `e`)
//! turned into stored events.

use std::sync::Arc;

use bytes::Bytes;
use herald_core::StoredEvent;
use redis::Value;
use redis::streams::StreamId;

use super::keys::seq_of;
use super::raw::{Header, RawError, header, length};
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
    let corrupt = |seq: u64, reason: String| corrupt(stream, seq, reason);
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

/// Decodes the reply of an `XREADGROUP` read on a [`RawConnection`](super::raw::RawConnection):
/// `frame` is the whole RESP2 reply, complete (`raw::Framing`). Walked header by header;
/// each event's JSON is a slice of `frame` (no copy), and bulk strings other than the `e`
/// field are skipped by their length.
pub(crate) fn decode_raw_read_reply(
    stream: &str,
    frame: Bytes,
) -> Result<Vec<Arc<StoredEvent>>, EngineError> {
    let corrupt = |seq: u64, reason: String| corrupt(stream, seq, reason);
    let protocol = |error: RawError| corrupt(0, error.to_string());
    let mut walker = Walker {
        frame: &frame,
        at: 0,
    };
    let keys = match walker.array().map_err(protocol)? {
        None => return Ok(Vec::new()),
        Some(keys) => keys,
    };
    let mut events = Vec::new();
    for _ in 0..keys {
        if walker.array().map_err(protocol)? != Some(2) {
            return Err(corrupt(
                0,
                "a stream's reply is not [key, entries]".to_owned(),
            ));
        }
        walker.bulk().map_err(protocol)?;
        let Some(entries) = walker.array().map_err(protocol)? else {
            continue;
        };
        events.reserve(entries);
        for _ in 0..entries {
            if walker.array().map_err(protocol)? != Some(2) {
                return Err(corrupt(0, "an entry is not [id, fields]".to_owned()));
            }
            let id = walker.bulk().map_err(protocol)?.unwrap_or_default();
            let seq = std::str::from_utf8(&frame[id.clone()])
                .ok()
                .and_then(seq_of)
                .ok_or_else(|| {
                    corrupt(
                        0,
                        format!(
                            "entry id {:?} is not 0-<seq>",
                            String::from_utf8_lossy(&frame[id.clone()])
                        ),
                    )
                })?;
            let Some(fields) = walker.array().map_err(protocol)? else {
                return Err(corrupt(seq, "an entry has no fields".to_owned()));
            };
            let mut json = None;
            for _ in 0..fields / 2 {
                let name = walker.bulk().map_err(protocol)?;
                let value = walker.bulk().map_err(protocol)?;
                if json.is_none() && name.is_some_and(|name| &frame[name] == b"e") {
                    json = value;
                }
            }
            if fields % 2 == 1 {
                walker.bulk().map_err(protocol)?;
            }
            let json = json.ok_or_else(|| corrupt(seq, "the entry has no event".to_owned()))?;
            events.push(Arc::new(decode_owned_event(
                stream,
                seq,
                frame.slice(json),
            )?));
        }
    }
    Ok(events)
}

/// A stream's entry that is not what Herald writes.
fn corrupt(stream: &str, seq: u64, reason: String) -> EngineError {
    EngineError::Corrupt {
        stream: stream.to_owned(),
        seq,
        reason,
    }
}

/// Reads a complete RESP2 frame header by header.
struct Walker<'a> {
    frame: &'a [u8],
    at: usize,
}

impl Walker<'_> {
    fn next_header(&mut self, expected: u8) -> Result<i64, RawError> {
        let Header { kind, line, next } = header(self.frame, self.at)?
            .ok_or_else(|| RawError::Protocol("the reply ends early".to_owned()))?;
        if kind != expected {
            return Err(RawError::Protocol(format!(
                "expected {:?}, found {:?}",
                expected as char, kind as char
            )));
        }
        self.at = next;
        length(line)
    }

    /// An array's length; `None` for a nil array.
    fn array(&mut self) -> Result<Option<usize>, RawError> {
        let len = self.next_header(b'*')?;
        Ok(usize::try_from(len).ok())
    }

    /// Where a bulk string's bytes are in the frame; `None` for a nil one.
    fn bulk(&mut self) -> Result<Option<std::ops::Range<usize>>, RawError> {
        let Ok(len) = usize::try_from(self.next_header(b'$')?) else {
            return Ok(None);
        };
        let range = self.at..self.at + len;
        if self.frame.len() < range.end + 2 {
            return Err(RawError::Protocol("the reply ends early".to_owned()));
        }
        self.at = range.end + 2;
        Ok(Some(range))
    }
}

/// One stored event from its JSON, which it keeps.
///
/// Only Herald writes a stream's entries, each the JSON of an event it validated before the
/// `XADD` ([`herald_core::Event::to_json`]), so reading one back reads only its type and timestamp off the
/// JSON's prefix ([`StoredEvent::from_log`], as the embedded engine does with its log): the
/// group task needs the type to match its pattern, the connection copies the JSON into its
/// frame, and nothing on that path needs the rest. Decoding every event on its way out was
/// 16% of the Herald process's consume profile (docs/PERFORMANCE.md).
fn decode_owned_event(stream: &str, seq: u64, json: Bytes) -> Result<StoredEvent, EngineError> {
    StoredEvent::from_log(stream, seq, json).map_err(|error| EngineError::Corrupt {
        stream: stream.to_owned(),
        seq,
        reason: error.to_string(),
    })
}

/// One stored event from its JSON.
pub(crate) fn decode_event(
    stream: &str,
    seq: u64,
    json: &[u8],
) -> Result<StoredEvent, EngineError> {
    decode_owned_event(stream, seq, Bytes::copy_from_slice(json))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::event;

    fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\r\n");
    }

    /// An `XREADGROUP` reply in RESP2, as Redis writes it: one stream, entries `(id, fields)`.
    /// An entry's fields: `(name, value)`.
    type Fields<'a> = Vec<(&'a [u8], &'a [u8])>;

    fn reply(entries: &[(&str, Fields<'_>)]) -> Vec<u8> {
        let mut out = b"*1\r\n*2\r\n".to_vec();
        bulk(&mut out, b"P:{s}:events");
        out.extend_from_slice(format!("*{}\r\n", entries.len()).as_bytes());
        for (id, fields) in entries {
            out.extend_from_slice(b"*2\r\n");
            bulk(&mut out, id.as_bytes());
            out.extend_from_slice(format!("*{}\r\n", fields.len() * 2).as_bytes());
            for (name, value) in fields {
                bulk(&mut out, name);
                bulk(&mut out, value);
            }
        }
        out
    }

    #[test]
    fn raw_replies_decode_to_the_stored_events() {
        let first = event("a.b", r#"{"n":1}"#).to_json();
        let second = event("c.d", "\"x\\r\\n\"").to_json();
        let frame = reply(&[
            ("0-7", vec![(b"e".as_slice(), first.as_slice())]),
            ("0-8", vec![(b"x", b"e"), (b"e", second.as_slice())]),
        ]);
        assert_eq!(
            super::super::raw::frame_len(&frame).unwrap(),
            Some(frame.len())
        );
        let events = decode_raw_read_reply("s", Bytes::from(frame)).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!((events[0].seq, events[1].seq), (7, 8));
        assert_eq!(events[0].event_json().as_ref(), first.as_slice());
        assert_eq!(events[1].event_json().as_ref(), second.as_slice());
        assert_eq!(events[1].event.event_type().as_str(), "c.d");
        assert_eq!(&*events[0].stream, "s");
    }

    #[test]
    fn an_empty_read_is_no_events() {
        assert!(
            decode_raw_read_reply("s", Bytes::from_static(b"*-1\r\n"))
                .unwrap()
                .is_empty()
        );
        assert!(
            decode_raw_read_reply("s", Bytes::from(reply(&[])))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn broken_entries_are_corrupt() {
        let no_event = reply(&[("0-1", vec![(b"x".as_slice(), b"y".as_slice())])]);
        let bad_id = reply(&[("1-0", vec![(b"e".as_slice(), b"{}".as_slice())])]);
        let not_json = reply(&[("0-1", vec![(b"e".as_slice(), b"nope".as_slice())])]);
        for frame in [no_event, bad_id, not_json] {
            assert!(matches!(
                decode_raw_read_reply("s", Bytes::from(frame)),
                Err(EngineError::Corrupt { .. })
            ));
        }
        let cut = reply(&[("0-1", vec![(b"e".as_slice(), b"{}".as_slice())])]);
        assert!(decode_raw_read_reply("s", Bytes::copy_from_slice(&cut[..cut.len() - 3])).is_err());
    }
}
