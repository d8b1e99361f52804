use proptest::prelude::*;
use time::OffsetDateTime;
use time::macros::datetime;

use super::*;
use crate::event::tests::event_strategy;

const NOW: OffsetDateTime = datetime!(2026-11-22 10:00:00 UTC);

/// Decodes a structured CloudEvent and renders the outcome: Herald's JSON form, or the error.
fn check(json: &str, expect: &str) {
    let found = match Event::from_cloudevent_json(json.as_bytes(), &ParseContext::new(NOW)) {
        Ok(event) => String::from_utf8(event.to_json()).unwrap(),
        Err(error) => error.to_string(),
    };
    assert_eq!(found, expect, "input: {json}");
}

const REQUIRED: &str =
    r#""specversion":"1.0","id":"ce-1","source":"/orders","type":"order.created""#;

#[test]
fn mapping_in() {
    check(
        &format!("{{{REQUIRED}}}"),
        r#"{"id":"ce-1","type":"order.created","version":"1.0","timestamp":"2026-11-22T10:00:00Z","source":"/orders","data":null}"#,
    );
    check(
        &format!(
            r#"{{{REQUIRED},"time":"2026-01-02T03:04:05.6Z","partitionkey":"order-1",
            "correlationid":"req-1","traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "userid":"u-1","version":"2.0","datacontenttype":"application/json; charset=utf-8",
            "subject":"o/1","dataschema":"https://x/schema","priority":3,"urgent":true,
            "absent":null,"data":{{"total": 10}}}}"#
        ),
        r#"{"id":"ce-1","type":"order.created","version":"2.0","timestamp":"2026-01-02T03:04:05.6Z","source":"/orders","correlationId":"req-1","traceId":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01","userId":"u-1","key":"order-1","data":{"total": 10},"metadata":{"dataschema":"https://x/schema","priority":"3","subject":"o/1","urgent":"true"}}"#,
    );
    check(
        &format!(r#"{{{REQUIRED},"datacontenttype":"application/vnd.order+json","data":[1]}}"#),
        r#"{"id":"ce-1","type":"order.created","version":"1.0","timestamp":"2026-11-22T10:00:00Z","source":"/orders","data":[1]}"#,
    );
    check(
        &format!(r#"{{{REQUIRED},"heraldmetadata":"{{\"Custom-Key\":\"v\",\"id\":\"x\"}}"}}"#),
        r#"{"id":"ce-1","type":"order.created","version":"1.0","timestamp":"2026-11-22T10:00:00Z","source":"/orders","data":null,"metadata":{"Custom-Key":"v","id":"x"}}"#,
    );
}

#[test]
fn rejections() {
    check(
        r#"{"id":"1","source":"s","type":"a"}"#,
        "missing required field \"specversion\"",
    );
    check(
        r#"{"specversion":"0.3","id":"1","source":"s","type":"a"}"#,
        "unsupported CloudEvents specversion \"0.3\"; Herald accepts \"1.0\"",
    );
    check(
        r#"{"specversion":"1.0","source":"s","type":"a"}"#,
        "missing required field \"id\"",
    );
    check(
        r#"{"specversion":"1.0","id":"1","type":"a"}"#,
        "missing required field \"source\"",
    );
    check(
        r#"{"specversion":"1.0","id":"1","source":"s"}"#,
        "missing required field \"type\"",
    );
    check(
        r#"{"specversion":"1.0","id":"1","source":"s","type":"com.example/order"}"#,
        "invalid \"type\": token 2 (\"example/order\") of \"com.example/order\" has a character \
         outside [A-Za-z0-9_-]",
    );
    check(
        &format!(r#"{{{REQUIRED},"datacontenttype":"text/plain","data":"hi"}}"#),
        "unsupported datacontenttype \"text/plain\"; structured mode accepts JSON data only \
         (application/json or a +json type)",
    );
    check(
        &format!(r#"{{{REQUIRED},"data_base64":"aGk="}}"#),
        "\"data_base64\" is not supported: binary payloads are not accepted in structured mode; \
         send JSON in \"data\"",
    );
    check(
        &format!(r#"{{{REQUIRED},"myExt":"v"}}"#),
        "invalid CloudEvents attribute name \"myExt\": names are 1 to 20 characters of a-z and 0-9",
    );
    check(
        &format!(r#"{{{REQUIRED},"averyveryverylongextension":"v"}}"#),
        "invalid CloudEvents attribute name \"averyveryverylongextension\": names are 1 to 20 \
         characters of a-z and 0-9",
    );
    check(
        &format!(r#"{{{REQUIRED},"ext":{{"a":1}}}}"#),
        "CloudEvents extension \"ext\" must be a string, number or boolean, found an object",
    );
    check(
        &format!(r#"{{{REQUIRED},"time":"now"}}"#),
        "field \"time\" is not an RFC 3339 timestamp (\"now\"): the 'year' component could not \
         be parsed",
    );
    check(
        &format!(r#"{{{REQUIRED},"partitionkey":""}}"#),
        "field \"partitionkey\" is empty; omit it instead",
    );
    check(
        &format!(r#"{{{REQUIRED},"id":"2"}}"#),
        "field \"id\" appears more than once",
    );
    check(
        &format!(r#"{{{REQUIRED},"heraldmetadata":"[]"}}"#),
        "CloudEvents extension \"heraldmetadata\" must be a JSON object of strings encoded as a \
         string: found an array",
    );
    check(
        &format!(r#"{{{REQUIRED},"ext":"1","heraldmetadata":"{{\"ext\":\"2\"}}"}}"#),
        "metadata key \"ext\" appears more than once",
    );
    check("[]", "an event must be a JSON object, found an array");
}

#[test]
fn mapping_out() {
    let mut event = Event::new(
        crate::EventId::parse("e1").unwrap(),
        crate::Subject::new("order.created").unwrap(),
        NOW,
    );
    event.key = Some("order-1".to_owned());
    event.metadata.insert("region".to_owned(), "eu".to_owned());
    event.metadata.insert("Region".to_owned(), "EU".to_owned());
    event.metadata.insert("time".to_owned(), "t".to_owned());
    let json = String::from_utf8(event.to_cloudevent_json()).unwrap();
    assert_eq!(
        json,
        r#"{"specversion":"1.0","id":"e1","source":"herald","type":"order.created","time":"2026-11-22T10:00:00Z","datacontenttype":"application/json","version":"1.0","partitionkey":"order-1","region":"eu","heraldmetadata":"{\"Region\":\"EU\",\"time\":\"t\"}","data":null}"#
    );
    let back = Event::from_cloudevent_json(json.as_bytes(), &ParseContext::new(NOW)).unwrap();
    event.source = Some(SOURCE_DEFAULT.to_owned());
    assert_eq!(back, event);
}

proptest! {
    #[test]
    fn cloudevent_round_trip(mut event in event_strategy(), source in "[a-z/]{1,12}") {
        event.source = Some(source);
        let json = event.to_cloudevent_json();
        let back = Event::from_cloudevent_json(&json, &ParseContext::new(NOW)).unwrap();
        prop_assert_eq!(back, event);
    }

    #[test]
    fn cloudevent_attribute_metadata_round_trip(
        mut event in event_strategy(),
        metadata in prop::collection::btree_map("[a-z0-9]{1,20}", ".{0,16}", 0..6),
    ) {
        event.source = Some("s".to_owned());
        event.metadata = metadata;
        let json = event.to_cloudevent_json();
        let back = Event::from_cloudevent_json(&json, &ParseContext::new(NOW)).unwrap();
        prop_assert_eq!(back, event);
    }
}
