use proptest::prelude::*;
use time::macros::datetime;

use super::*;

const NOW: OffsetDateTime = datetime!(2026-11-22 10:00:00 UTC);

/// Decodes `json` and renders the outcome: the re-encoded event (with a generated id shown as
/// `<v7>`), or the error message.
fn check(json: &str, expect: &str) {
    let found = render(Event::from_json(json.as_bytes(), &ParseContext::new(NOW)));
    assert_eq!(found, expect, "input: {json}");
}

fn render(result: Result<Event, EventError>) -> String {
    match result {
        Ok(event) => {
            let text = String::from_utf8(event.to_json()).unwrap();
            let id = format!("\"{}\"", event.id);
            if event.id.as_str().len() == 36 && !text.contains("\"id\":\"evt") {
                text.replacen(&id, "\"<v7>\"", 1)
            } else {
                text
            }
        }
        Err(error) => error.to_string(),
    }
}

#[test]
fn valid_events() {
    check(
        r#"{"type":"photo.uploaded"}"#,
        r#"{"id":"<v7>","type":"photo.uploaded","version":"1.0","timestamp":"2026-11-22T10:00:00Z","data":null}"#,
    );
    check(
        r#"{
            "id": "evt-1", "type": "photo.uploaded", "version": "2.1",
            "timestamp": "2026-11-22T11:30:00.250+01:00", "source": "photo-api",
            "correlationId": "req_xyz", "traceId": "00-abc-def-01", "userId": "user-456",
            "key": "order-123", "data": { "b": [1, 2.5e3, "é\n"], "a": null },
            "metadata": { "k": "v", "ünï": "\u00e9\"" }
        }"#,
        r#"{"id":"evt-1","type":"photo.uploaded","version":"2.1","timestamp":"2026-11-22T10:30:00.25Z","source":"photo-api","correlationId":"req_xyz","traceId":"00-abc-def-01","userId":"user-456","key":"order-123","data":{ "b": [1, 2.5e3, "é\n"], "a": null },"metadata":{"k":"v","ünï":"é\""}}"#,
    );
    // Null means absent; escaped keys are keys.
    check(
        r#"{"id":"evt-2","ty\u0070e":"a","source":null,"metadata":null,"data":"x","version":null}"#,
        r#"{"id":"evt-2","type":"a","version":"1.0","timestamp":"2026-11-22T10:00:00Z","data":"x"}"#,
    );
}

#[test]
fn malformed_json() {
    check(
        "",
        "event is not valid JSON: EOF while parsing a value at line 1 column 0",
    );
    check(
        r#"{"type":"a"} x"#,
        "event is not valid JSON: trailing characters at line 1 column 14",
    );
    check(
        r#"{"type":"a","data":{"x":}}"#,
        "event is not valid JSON: expected value at line 1 column 25",
    );
    check("[]", "an event must be a JSON object, found an array");
    check(
        "\"photo.uploaded\"",
        "an event must be a JSON object, found a string",
    );
    check("null", "an event must be a JSON object, found null");
    check("12", "an event must be a JSON object, found a number");
}

#[test]
fn fields() {
    check(
        r#"{"type":"a","color":"red"}"#,
        "unknown field \"color\"; the fields are id, type, version, timestamp, source, \
         correlationId, traceId, userId, key, data, metadata",
    );
    check(
        r#"{"type":"a","correlation_id":"x"}"#,
        "unknown field \"correlation_id\" (did you mean \"correlationId\"?); the fields are id, \
         type, version, timestamp, source, correlationId, traceId, userId, key, data, metadata",
    );
    check(
        r#"{"type":"a","stream":"a"}"#,
        "field \"stream\" is assigned by the server when the event is stored and cannot be \
         published",
    );
    check(
        r#"{"type":"a","seq":1}"#,
        "field \"seq\" is assigned by the server when the event is stored and cannot be published",
    );
    check(
        r#"{"type":"a","type":"b"}"#,
        "field \"type\" appears more than once",
    );
    check(
        r#"{"type":"a","source":null,"source":"b"}"#,
        "field \"source\" appears more than once",
    );
    check(r#"{"data":1}"#, "missing required field \"type\"");
    check(r#"{}"#, "missing required field \"type\"");
}

#[test]
fn field_types() {
    check(
        r#"{"type":"a","source":5}"#,
        "field \"source\" must be a string, found a number",
    );
    check(
        r#"{"type":null}"#,
        "field \"type\" must be a string, found null",
    );
    check(
        r#"{"type":["a"]}"#,
        "field \"type\" must be a string, found an array",
    );
    check(
        r#"{"type":"a","timestamp":1700000000}"#,
        "field \"timestamp\" must be a string, found a number",
    );
    check(
        r#"{"type":"a","metadata":"k=v"}"#,
        "field \"metadata\" must be an object of strings, found a string",
    );
    check(
        r#"{"type":"a","id":{}}"#,
        "field \"id\" must be a string, found an object",
    );
    check(
        r#"{"type":"a","key":true}"#,
        "field \"key\" must be a string, found a boolean",
    );
}

#[test]
fn field_values() {
    check(
        r#"{"type":"user.*"}"#,
        "invalid \"type\": token 2 (\"*\") of \"user.*\" is a wildcard, but a literal subject is \
         required here (wildcards are for patterns)",
    );
    check(
        r#"{"type":"user.pro file"}"#,
        "invalid \"type\": token 2 (\"pro file\") of \"user.pro file\" has a character outside \
         [A-Za-z0-9_-]",
    );
    check(r#"{"type":""}"#, "invalid \"type\": subject is empty");
    check(
        r#"{"type":"a","timestamp":"yesterday"}"#,
        "field \"timestamp\" is not an RFC 3339 timestamp (\"yesterday\"): the 'year' component \
         could not be parsed",
    );
    check(
        r#"{"type":"a","timestamp":"2026-11-22T10:00:00"}"#,
        "field \"timestamp\" is not an RFC 3339 timestamp (\"2026-11-22T10:00:00\"): the \
         'offset hour' component could not be parsed",
    );
    check(
        r#"{"type":"a","id":""}"#,
        "field \"id\" is empty; omit it and the server assigns one",
    );
    check(
        &format!(r#"{{"type":"a","id":"{}"}}"#, "x".repeat(129)),
        "field \"id\" is 129 bytes long, more than the limit of 128 bytes",
    );
    check(
        r#"{"type":"a","id":"a\u0000b"}"#,
        "field \"id\" contains a control character",
    );
    check(
        r#"{"type":"a","version":""}"#,
        "field \"version\" is empty; omit it instead",
    );
    check(
        &format!(r#"{{"type":"a","version":"{}"}}"#, "1".repeat(65)),
        "field \"version\" is 65 bytes long, more than the limit of 64 bytes",
    );
    check(
        &format!(r#"{{"type":"a","userId":"{}"}}"#, "é".repeat(129)),
        "field \"userId\" is 258 bytes long, more than the limit of 256 bytes",
    );
    check(
        r#"{"type":"a","source":"a\nb"}"#,
        "field \"source\" contains a control character",
    );
}

#[test]
fn metadata() {
    check(
        r#"{"type":"a","metadata":{"n":1}}"#,
        "metadata value of \"n\" must be a string, found a number",
    );
    check(
        r#"{"type":"a","metadata":{"n":null}}"#,
        "metadata value of \"n\" must be a string, found null",
    );
    check(
        r#"{"type":"a","metadata":{"k":"1","k":"2"}}"#,
        "metadata key \"k\" appears more than once",
    );
    check(
        r#"{"type":"a","metadata":{"":"v"}}"#,
        "metadata has an empty key",
    );
    check(
        &format!(r#"{{"type":"a","metadata":{{"{}":"v"}}}}"#, "k".repeat(129)),
        &format!(
            "metadata key \"{}…\" is 129 bytes long, more than the limit of 128 bytes",
            "k".repeat(64)
        ),
    );
    check(
        &format!(
            r#"{{"type":"a","metadata":{{"k":"{}"}}}}"#,
            "v".repeat(4097)
        ),
        "metadata value of \"k\" is 4097 bytes long, more than the limit of 4096 bytes",
    );
    let entries: Vec<String> = (0..65).map(|n| format!("\"k{n}\":\"v\"")).collect();
    check(
        &format!(r#"{{"type":"a","metadata":{{{}}}}}"#, entries.join(",")),
        "metadata has 65 entries, more than the limit of 64",
    );
}

#[test]
fn size_limit() {
    let mut context = ParseContext::new(NOW);
    context.limits.event_bytes_max = 20;
    let json = br#"{"type":"a","data":"0123456789"}"#;
    assert_eq!(
        Event::from_json(json, &context).unwrap_err().to_string(),
        "event of 32 bytes exceeds the limit of 20 bytes"
    );
    context.limits.event_bytes_max = 32;
    Event::from_json(json, &context).unwrap();
    let huge = format!(
        r#"{{"type":"a","data":"{}"}}"#,
        "x".repeat(EVENT_BYTES_MAX_DEFAULT)
    );
    assert!(matches!(
        Event::from_json(huge.as_bytes(), &ParseContext::new(NOW)),
        Err(EventError::TooLarge {
            max: EVENT_BYTES_MAX_DEFAULT,
            ..
        })
    ));
}

#[test]
fn generated_ids_are_v7_at_now_and_ordered() {
    let context = ParseContext::new(NOW);
    let ids: Vec<EventId> = (0..100)
        .map(|_| Event::from_json(br#"{"type":"a"}"#, &context).unwrap().id)
        .collect();
    for id in &ids {
        let uuid = uuid::Uuid::parse_str(id.as_str()).unwrap();
        assert_eq!(uuid.get_version_num(), 7);
        let (seconds, _) = uuid.get_timestamp().unwrap().to_unix();
        assert_eq!(seconds, NOW.unix_timestamp() as u64);
    }
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
}

#[test]
fn id_origin_says_who_chose_the_id() {
    let context = ParseContext::new(NOW);
    let generated = Event::from_json(br#"{"type":"a"}"#, &context).unwrap();
    assert_eq!(generated.id_origin, IdOrigin::Generated);
    let chosen = Event::from_json(br#"{"id":"e1","type":"a"}"#, &context).unwrap();
    assert_eq!(chosen.id_origin, IdOrigin::Publisher);
    // Stored, the origin is gone: whoever publishes the event again chose its id.
    let read_back = Event::from_stored_json(&generated.to_json()).unwrap();
    assert_eq!(read_back.id_origin, IdOrigin::Publisher);
    assert_eq!(
        read_back, generated,
        "the origin is not part of what the event is"
    );
    let built = Event::new(EventId::parse("e2").unwrap(), "a".parse().unwrap(), NOW);
    assert_eq!(built.id_origin, IdOrigin::Publisher);
}

#[test]
fn stored_events() {
    let json =
        br#"{"id":"e1","type":"photo.uploaded","timestamp":"2026-11-22T10:00:00Z","data":{"n":1}}"#;
    let event = Event::from_json(json, &ParseContext::new(NOW)).unwrap();
    let stored = StoredEvent::new("photo".to_owned(), 42, event);
    let encoded = stored.to_json();
    assert_eq!(
        String::from_utf8(encoded.clone()).unwrap(),
        r#"{"stream":"photo","seq":42,"id":"e1","type":"photo.uploaded","version":"1.0","timestamp":"2026-11-22T10:00:00Z","data":{"n":1}}"#
    );
    assert_eq!(
        StoredEvent::from_json(&encoded, &Limits::default()).unwrap(),
        stored
    );

    let stored_error = |json: &str| {
        StoredEvent::from_json(json.as_bytes(), &Limits::default())
            .unwrap_err()
            .to_string()
    };
    let base = r#""id":"e1","type":"a","timestamp":"2026-11-22T10:00:00Z""#;
    assert_eq!(
        stored_error(&format!(r#"{{{base},"seq":1}}"#)),
        "missing required field \"stream\""
    );
    assert_eq!(
        stored_error(&format!(r#"{{{base},"stream":"a"}}"#)),
        "missing required field \"seq\""
    );
    assert_eq!(
        stored_error(&format!(r#"{{{base},"stream":"a.b","seq":1}}"#)),
        "field \"stream\" must be a stream name ([A-Za-z0-9_-]+), found \"a.b\""
    );
    assert_eq!(
        stored_error(&format!(r#"{{{base},"stream":"a","seq":0}}"#)),
        "field \"seq\" must be an integer from 1, found 0"
    );
    assert_eq!(
        stored_error(r#"{"type":"a","stream":"a","seq":1}"#),
        "missing required field \"id\""
    );
}

#[test]
fn validate_catches_hand_built_events() {
    let mut event = Event::new(
        EventId::parse("e").unwrap(),
        Subject::new("a").unwrap(),
        NOW,
    );
    event.validate().unwrap();
    event.source = Some(String::new());
    assert_eq!(event.validate(), Err(EventError::Empty { field: "source" }));
    event.source = None;
    event.timestamp = datetime!(-0001-01-01 00:00:00 UTC);
    assert!(matches!(
        event.validate(),
        Err(EventError::InvalidTimestamp { .. })
    ));
    // Written anyway, and rejected when read back.
    let json = event.to_json();
    assert!(Event::from_json(&json, &ParseContext::new(NOW)).is_err());
}

/// Strings the envelope accepts: no control characters, any other Unicode.
pub(crate) fn text_strategy(bytes_max: usize) -> impl Strategy<Value = String> {
    "[^\\p{Cc}]{1,24}".prop_filter("within the limit", move |text| text.len() <= bytes_max)
}

pub(crate) fn data_strategy() -> impl Strategy<Value = Box<RawValue>> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |n| n.is_finite())
            .prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    let value = leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
        ]
    });
    value.prop_map(|value| serde_json::value::to_raw_value(&value).unwrap())
}

pub(crate) fn subject_strategy() -> impl Strategy<Value = Subject> {
    "[A-Za-z0-9_-]{1,8}(\\.[A-Za-z0-9_-]{1,8}){0,4}".prop_map(|text| Subject::new(&text).unwrap())
}

pub(crate) fn timestamp_strategy() -> impl Strategy<Value = OffsetDateTime> {
    // Years 0000 to 9999, nanosecond precision.
    (-62_167_219_200i64..253_402_300_800i64, 0u32..1_000_000_000).prop_map(|(seconds, nanos)| {
        OffsetDateTime::from_unix_timestamp(seconds)
            .unwrap()
            .replace_nanosecond(nanos)
            .unwrap()
    })
}

prop_compose! {
    pub(crate) fn event_strategy()(
        id in text_strategy(ID_BYTES_MAX),
        event_type in subject_strategy(),
        version in text_strategy(VERSION_BYTES_MAX),
        timestamp in timestamp_strategy(),
        optionals in prop::collection::vec(prop::option::of(text_strategy(256)), 5),
        data in data_strategy(),
        metadata in prop::collection::btree_map(".{1,12}", ".{0,24}", 0..8),
    ) -> Event {
        Event {
            id: EventId::parse(&id).unwrap(),
            id_origin: IdOrigin::Publisher,
            event_type,
            version: version.into(),
            timestamp,
            source: optionals[0].clone(),
            correlation_id: optionals[1].clone(),
            trace_id: optionals[2].clone(),
            user_id: optionals[3].clone(),
            key: optionals[4].clone(),
            data,
            metadata,
        }
    }
}

proptest! {
    #[test]
    fn json_round_trip(event in event_strategy()) {
        event.validate().unwrap();
        let json = event.to_json();
        let back = Event::from_json(&json, &ParseContext::new(NOW)).unwrap();
        prop_assert_eq!(&back, &event);
        prop_assert_eq!(back.to_json(), json);
    }

    #[test]
    fn stored_round_trip(event in event_strategy(), seq in 1u64.., stream in "[A-Za-z0-9_-]{1,16}") {
        let stored = StoredEvent::new(stream, seq, event);
        let back = StoredEvent::from_json(&stored.to_json(), &Limits::default()).unwrap();
        prop_assert_eq!(back, stored);
    }

    /// What the log gives back decodes, without the publish checks, to the event stored.
    #[test]
    fn stored_json_round_trip(event in event_strategy()) {
        let json = event.to_json();
        let back = Event::from_stored_json(&json).unwrap();
        prop_assert_eq!(&back, &event);
        prop_assert_eq!(back.to_json(), json);
    }

    /// Read back from a log, an event has its type and timestamp before it is decoded, and
    /// decodes to the event stored.
    #[test]
    fn log_round_trip(event in event_strategy(), seq in 1u64.., stream in "[A-Za-z0-9_-]{1,16}") {
        let json = Bytes::from(event.to_json());
        let stored = StoredEvent::from_log(stream.clone(), seq, json.clone()).unwrap();
        prop_assert_eq!(stored.event.event_type(), &event.event_type);
        prop_assert_eq!(stored.event.timestamp(), event.timestamp);
        prop_assert_eq!(stored.event_json(), &json);
        prop_assert_eq!(&*stored.event, &event);
        prop_assert_eq!(&stored, &StoredEvent::new(stream, seq, event));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Event::from_json(&bytes, &ParseContext::new(NOW));
        let _ = Event::from_stored_json(&bytes);
        if let Ok(stored) = StoredEvent::from_log("s".to_owned(), 1, Bytes::from(bytes)) {
            let _ = stored.event.event_type();
            let _ = stored.event.timestamp();
            let _ = stored.event.id.as_str();
        }
    }
}

/// Only Herald's own prefix is scanned; anything else is decoded (or refused) at once.
#[test]
fn from_log_scans_only_herald_prefix() {
    let lazy = br#"{"id":"e1","type":"a.b","version":"1.0","timestamp":"2026-11-30T22:00:00.5Z","data":{"x":1}}"#;
    let stored = StoredEvent::from_log("a".to_owned(), 7, Bytes::from_static(lazy)).unwrap();
    assert_eq!(stored.event.event_type().as_str(), "a.b");
    assert_eq!(
        stored.event.timestamp(),
        datetime!(2026-11-30 22:00:00.5 UTC)
    );
    assert_eq!(stored.event.data.get(), r#"{"x":1}"#);
    // An escaped id takes the full decode, which unescapes it.
    let escaped = br#"{"id":"e\"1","type":"a.b","version":"1.0","timestamp":"2026-11-30T22:00:00Z","data":null}"#;
    let stored = StoredEvent::from_log("a".to_owned(), 8, Bytes::from_static(escaped)).unwrap();
    assert_eq!(stored.event.id.as_str(), "e\"1");
    // Not an event: refused when read, not when first used.
    for bad in [&b"[1]"[..], b"{\"id\":1}", b"{\"type\":\"a.b\"}", b""] {
        assert!(
            StoredEvent::from_log("a".to_owned(), 9, Bytes::from_static(bad)).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

/// The stored-timestamp fast path reads what the writer writes, and hands anything else to the
/// general RFC 3339 parser, so both agree on every input.
#[test]
fn stored_timestamps_parse_as_rfc3339_does() {
    for text in [
        "2026-11-30T22:00:00Z",
        "2026-11-30T22:00:00.1Z",
        "2026-11-30T22:00:00.123456789Z",
        "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999999Z",
        "2024-02-29T12:00:00Z",
        "2026-02-29T12:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-11-30T24:00:00Z",
        "2026-11-30T22:00:60Z",
        "2026-11-30T22:00:00.Z",
        "2026-11-30T22:00:00.1234567890Z",
        "2026-11-30T22:00:00+01:00",
        "2026-11-30 22:00:00Z",
        "2026-11-3xT22:00:00Z",
        "",
    ] {
        assert_eq!(
            wire::parse_stored_timestamp(text),
            wire::parse_timestamp(text),
            "{text:?}"
        );
    }
}

#[test]
fn stored_json_reports_structural_damage() {
    assert!(matches!(
        Event::from_stored_json(br#"{"type":"a.b","timestamp":"2026-11-30T22:00:00Z"}"#),
        Err(EventError::MissingField { name: "id" })
    ));
    assert!(matches!(
        Event::from_stored_json(
            br#"{"id":"x","type":"a.b","timestamp":"2026-11-30T22:00:00Z","nope":1}"#
        ),
        Err(EventError::UnknownField { .. })
    ));
    assert!(matches!(
        Event::from_stored_json(br#"{"id":"x","type":"a.b""#),
        Err(EventError::Json { .. })
    ));
}
