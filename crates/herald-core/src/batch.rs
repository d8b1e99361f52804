//! Batches: a JSON array of events in one request (`POST /v1/events` with an array, or
//! `application/cloudevents-batch+json`). A batch is accepted or rejected as a whole, and a
//! rejection names every offending index, so a publisher can fix them all in one round.

use std::fmt;

use crate::event::wire::{self, Top};
use crate::event::{Event, EventError, ParseContext};

/// One rejected element of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexedEventError {
    /// Position in the array, from 0.
    pub index: usize,
    pub error: EventError,
}

impl fmt::Display for IndexedEventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "event at index {}: {}", self.index, self.error)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch is not valid JSON: {message}")]
    Json { message: String },
    #[error("a batch must be a JSON array of events, found {found}")]
    NotAnArray { found: &'static str },
    #[error("batch of {bytes} bytes exceeds the limit of {max} bytes")]
    TooLarge { bytes: usize, max: usize },
    #[error("batch has {events} events, more than the limit of {max}")]
    TooManyEvents { events: usize, max: usize },
    #[error("batch is empty")]
    Empty,
    #[error("{}", render_invalid(.errors))]
    InvalidEvents { errors: Vec<IndexedEventError> },
}

fn render_invalid(errors: &[IndexedEventError]) -> String {
    const SHOWN_MAX: usize = 3;
    let mut text = errors
        .iter()
        .take(SHOWN_MAX)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    if errors.len() > SHOWN_MAX {
        text.push_str(&format!(
            "; and {} more invalid events",
            errors.len() - SHOWN_MAX
        ));
    }
    text
}

impl Event {
    /// Herald events in a JSON array.
    pub fn from_json_batch(bytes: &[u8], context: &ParseContext) -> Result<Vec<Event>, BatchError> {
        decode_batch(bytes, context, Event::from_json)
    }

    /// `application/cloudevents-batch+json`: structured-mode CloudEvents in a JSON array.
    pub fn from_cloudevent_batch_json(
        bytes: &[u8],
        context: &ParseContext,
    ) -> Result<Vec<Event>, BatchError> {
        decode_batch(bytes, context, Event::from_cloudevent_json)
    }
}

fn decode_batch(
    bytes: &[u8],
    context: &ParseContext,
    decode: fn(&[u8], &ParseContext) -> Result<Event, EventError>,
) -> Result<Vec<Event>, BatchError> {
    let limits = &context.limits;
    if bytes.len() > limits.batch_bytes_max {
        return Err(BatchError::TooLarge {
            bytes: bytes.len(),
            max: limits.batch_bytes_max,
        });
    }
    let elements = match wire::parse(bytes) {
        Ok(Top::Array(elements)) => elements,
        Ok(Top::Object(_)) => return Err(BatchError::NotAnArray { found: "an object" }),
        Ok(Top::Other(found)) => return Err(BatchError::NotAnArray { found }),
        Err(error) => {
            return Err(BatchError::Json {
                message: error.to_string(),
            });
        }
    };
    if elements.is_empty() {
        return Err(BatchError::Empty);
    }
    if elements.len() > limits.batch_events_max {
        return Err(BatchError::TooManyEvents {
            events: elements.len(),
            max: limits.batch_events_max,
        });
    }
    let mut events = Vec::with_capacity(elements.len());
    let mut errors = Vec::new();
    for (index, element) in elements.into_iter().enumerate() {
        match decode(element.get().as_bytes(), context) {
            Ok(event) => events.push(event),
            Err(error) => errors.push(IndexedEventError { index, error }),
        }
    }
    if errors.is_empty() {
        Ok(events)
    } else {
        Err(BatchError::InvalidEvents { errors })
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn check(json: &str, expect: &str) {
        let context = ParseContext::new(datetime!(2026-11-22 10:00:00 UTC));
        let found = match Event::from_json_batch(json.as_bytes(), &context) {
            Ok(events) => format!(
                "ok: {}",
                events
                    .iter()
                    .map(|event| event.event_type.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Err(error) => error.to_string(),
        };
        assert_eq!(found, expect, "{json}");
    }

    #[test]
    fn batches() {
        check(r#"[{"type":"a.b"},{"type":"c"}]"#, "ok: a.b c");
        check("[]", "batch is empty");
        check(
            r#"{"type":"a"}"#,
            "a batch must be a JSON array of events, found an object",
        );
        check(
            "[1,",
            "batch is not valid JSON: EOF while parsing a value at line 1 column 3",
        );
        check(
            r#"[{"type":"a"},{"type":"a b"},{"typo":"a"}]"#,
            "event at index 1: invalid \"type\": token 1 (\"a b\") of \"a b\" has a character \
             outside [A-Za-z0-9_-]; event at index 2: unknown field \"typo\"; the fields are id, \
             type, version, timestamp, source, correlationId, traceId, userId, key, data, \
             metadata",
        );
        let many = format!("[{}]", ["5"; 5].join(","));
        check(
            &many,
            "event at index 0: an event must be a JSON object, found a number; event at index \
             1: an event must be a JSON object, found a number; event at index 2: an event \
             must be a JSON object, found a number; and 2 more invalid events",
        );
    }

    #[test]
    fn batch_limits() {
        let mut context = ParseContext::new(datetime!(2026-11-22 10:00:00 UTC));
        context.limits.batch_events_max = 2;
        let three = br#"[{"type":"a"},{"type":"a"},{"type":"a"}]"#;
        assert_eq!(
            Event::from_json_batch(three, &context).unwrap_err(),
            BatchError::TooManyEvents { events: 3, max: 2 }
        );
        context.limits.batch_bytes_max = 10;
        assert_eq!(
            Event::from_json_batch(three, &context).unwrap_err(),
            BatchError::TooLarge { bytes: 40, max: 10 }
        );
        let context = ParseContext::new(datetime!(2026-11-22 10:00:00 UTC));
        let events = Event::from_cloudevent_batch_json(
            br#"[{"specversion":"1.0","id":"1","source":"s","type":"a"}]"#,
            &context,
        )
        .unwrap();
        assert_eq!(events.len(), 1);
    }
}
