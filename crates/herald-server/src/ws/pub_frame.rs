//! The common `pub` frame, `{"op":"pub","rid":…,"events":[…]}`, decoded in one pass: its events
//! are read into [`Event`]s as the frame is read. The general path (`Frame::decode_client`, then
//! `Event::from_json` per event) reads every event twice and copies each into an allocation of
//! its own first; for a publishing connection that was a tenth of the server's instructions
//! (docs/PERFORMANCE.md).
//!
//! Only a frame the general path would accept as it is gets through here: anything else (another
//! op, a field too many or missing, bad JSON, an invalid event, more events than a frame may
//! carry) makes [`decode`] answer `None`, and the general path decodes the frame again to say
//! precisely what is wrong. Valid frames take this path (unless their op is spelt with escapes);
//! only refused ones pay twice. A frame without the string `"pub"` (an ack, say) is not decoded
//! here at all.

use std::borrow::Cow;
use std::fmt;

use herald_core::{Event, ParseContext, PublishedEvent};
use serde::de::{self, DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};

/// Events made room for up front: the clients' default batch. Growing from empty copied every
/// event several times.
const EVENTS_EXPECTED: usize = 128;

#[derive(Debug)]
pub struct PubFrame {
    pub rid: u64,
    pub events: Vec<Event>,
}

/// The frame's `pub` request, or `None` when the general path must decode it.
///
/// Frames longer than the event size limit are left to the general path, which checks each
/// event's size; a frame within the limit holds no event beyond it.
///
/// Takes text (which the socket has checked is UTF-8) rather than bytes: read from bytes, every
/// string would be checked again (~380 instructions an event, docs/PERFORMANCE.md).
pub fn decode(text: &str, context: &ParseContext) -> Option<PubFrame> {
    // A pub frame names its op with the string "pub" (spelt with escapes, it is the general
    // path's): other frames, acks mostly, are not decoded twice nor build an error to drop.
    if text.len() > context.limits.event_bytes_max || !text.contains(r#""pub""#) {
        return None;
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let frame = FrameSeed(context).deserialize(&mut deserializer).ok()?;
    deserializer.end().ok()?;
    Some(frame)
}

struct FrameSeed<'a>(&'a ParseContext);

impl<'de> DeserializeSeed<'de> for FrameSeed<'_> {
    type Value = PubFrame;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<PubFrame, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FrameSeed<'_> {
    type Value = PubFrame;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a pub frame")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PubFrame, A::Error> {
        let (mut op_is_pub, mut rid, mut events) = (false, None, None);
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match &*key {
                "op" if !op_is_pub => {
                    op_is_pub = map.next_value::<Cow<'de, str>>()? == "pub";
                    if !op_is_pub {
                        return Err(A::Error::custom("not a pub frame"));
                    }
                }
                "rid" if rid.is_none() => rid = Some(map.next_value::<u64>()?),
                "events" if events.is_none() => {
                    events = Some(map.next_value_seed(EventsSeed(self.0))?)
                }
                _ => return Err(A::Error::custom("a field the general path must judge")),
            }
        }
        match (op_is_pub, rid, events) {
            (true, Some(rid), Some(events)) => Ok(PubFrame { rid, events }),
            _ => Err(A::Error::custom("a field is missing")),
        }
    }
}

struct EventsSeed<'a>(&'a ParseContext);

impl<'de> DeserializeSeed<'de> for EventsSeed<'_> {
    type Value = Vec<Event>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Vec<Event>, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EventsSeed<'_> {
    type Value = Vec<Event>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of events")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Event>, A::Error> {
        let events_max = self.0.limits.batch_events_max;
        let mut events = Vec::with_capacity(EVENTS_EXPECTED.min(events_max));
        while let Some(event) = seq.next_element_seed(PublishedEvent(self.0))? {
            if events.len() == events_max {
                return Err(A::Error::custom("more events than a frame may carry"));
            }
            events.push(event);
        }
        if events.is_empty() {
            return Err(A::Error::custom("no events"));
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use herald_core::Limits;
    use herald_protocol::ws::Frame;
    use time::OffsetDateTime;

    use super::*;

    fn context() -> ParseContext {
        ParseContext {
            now: OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
            limits: Limits {
                batch_events_max: 3,
                event_bytes_max: 4096,
                ..Limits::default()
            },
        }
    }

    /// What the general path makes of the frame: its rid and events when it is a valid `pub`.
    fn general(bytes: &[u8], context: &ParseContext) -> Option<(u64, Vec<Event>)> {
        let (op, frame) = Frame::decode_client(bytes).ok()?;
        let raw = frame
            .events
            .filter(|_| op == herald_protocol::ws::Op::Pub)?;
        if raw.is_empty() || raw.len() > context.limits.batch_events_max {
            return None;
        }
        let events = raw
            .iter()
            .map(|raw| Event::from_json(raw.get().as_bytes(), context))
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        Some((frame.rid?, events))
    }

    /// Events compared without their ids where the server generated them (each decode makes new
    /// ones).
    fn comparable(events: &[Event]) -> Vec<Event> {
        events
            .iter()
            .map(|event| {
                let mut event = event.clone();
                if event.id_origin == herald_core::IdOrigin::Generated {
                    event.id = herald_core::EventId::parse("generated").unwrap();
                }
                event
            })
            .collect()
    }

    #[test]
    fn a_frame_decodes_here_exactly_when_the_general_path_accepts_it_and_to_the_same_events() {
        let context = context();
        let check = |frame: &str, accepted: bool| {
            let fast = decode(frame, &context);
            let general = general(frame.as_bytes(), &context);
            assert_eq!(fast.is_some(), accepted, "{frame}");
            assert_eq!(general.is_some(), accepted, "general path: {frame}");
            if let (Some(fast), Some((rid, events))) = (fast, general) {
                assert_eq!(fast.rid, rid, "{frame}");
                assert_eq!(comparable(&fast.events), comparable(&events), "{frame}");
            }
        };
        // `$E` stands for a valid event, `$I` for one with an id, a timestamp and metadata.
        let event = r#"{"type":"order.created","data":{"n":1}}"#;
        let with_id = r#"{"id":"order-1","type":"order.created","timestamp":"2026-01-02T03:04:05Z","data":[1,"x"],"metadata":{"k":"v"}}"#;
        let cases = [
            (r#"{"op":"pub","rid":1,"events":[$E]}"#, true),
            (r#"{"events":[$E,$I],"rid":7,"op":"pub"}"#, true),
            (
                r#" { "op" : "pub" , "rid" : 2 , "events" : [ $E ] } "#,
                true,
            ),
            (r#"{"op":"pub","rid":1,"events":[$E,$E,$E]}"#, true),
            // Refused, or not a pub: each left to the general path.
            (r#"{"op":"pub","rid":1,"events":[$E,$E,$E,$E]}"#, false),
            (r#"{"op":"pub","rid":1,"events":[]}"#, false),
            (r#"{"op":"pub","events":[$E]}"#, false),
            (r#"{"op":"pub","rid":1}"#, false),
            (r#"{"rid":1,"events":[$E]}"#, false),
            (r#"{"op":"pub","rid":1,"sid":2,"events":[$E]}"#, false),
            (r#"{"op":"pub","op":"pub","rid":1,"events":[$E]}"#, false),
            (r#"{"op":"pub","rid":1,"rid":2,"events":[$E]}"#, false),
            (r#"{"op":"sub","rid":1,"events":[$E]}"#, false),
            (r#"{"op":"pub","rid":-1,"events":[$E]}"#, false),
            (r#"{"op":"pub","rid":1,"events":[$E]} x"#, false),
            (r#"{"op":"pub","rid":1,"events":[{"data":1}]}"#, false),
            (r#"{"op":"pub","rid":1,"events":[{"type":"a..b"}]}"#, false),
            (
                r#"{"op":"pub","rid":1,"events":[{"type":"a","type":"b"}]}"#,
                false,
            ),
            (
                r#"{"op":"pub","rid":1,"events":[{"type":"a","colour":"red"}]}"#,
                false,
            ),
            (r#"{"op":"pub","rid":1,"events":["order.created"]}"#, false),
            (r#"{"op":"pub","rid":1,"events":{"type":"a"}}"#, false),
            (r#"{"op":"pub","rid":1,"events":[{"type":"a"}"#, false),
        ];
        for (frame, accepted) in cases {
            check(&frame.replace("$E", event).replace("$I", with_id), accepted);
        }
    }

    /// Events valid and not, for frames put together at random.
    const EVENTS: [&str; 8] = [
        r#"{"type":"order.created"}"#,
        r#"{"type":"order.paid","data":{"total":3},"key":"k"}"#,
        r#"{"id":"01938f3e-7c2a-7b4d-9e5f-0a1b2c3d4e5f","type":"a.b","version":"2"}"#,
        r#"{"type":"a.*"}"#,
        r#"{"type":"a","data":1,"data":2}"#,
        r#"{"type":"a","timestamp":"yesterday"}"#,
        r#"[]"#,
        r#"{"type":"a.b"}"#,
    ];

    proptest::proptest! {
        #[test]
        fn any_frame_decodes_here_only_as_the_general_path_decodes_it(
            events in proptest::collection::vec(0..EVENTS.len(), 0..5),
            order in proptest::sample::select(vec![[0, 1, 2], [2, 1, 0], [1, 2, 0]]),
            op in proptest::sample::select(vec!["pub", "sub", "Pub"]),
            extra in proptest::option::of(proptest::sample::select(vec![
                r#""sid":1"#, r#""rid":2"#, r#""op":"pub""#, r#""events":[]"#,
            ])),
            spaced: bool,
        ) {
            let context = context();
            let list: Vec<&str> = events.iter().map(|index| EVENTS[*index]).collect();
            let members = [
                format!(r#""op":"{op}""#),
                r#""rid":5"#.to_owned(),
                format!(r#""events":[{}]"#, list.join(if spaced { " , " } else { "," })),
            ];
            let mut fields: Vec<String> = order.iter().map(|index| members[*index].clone()).collect();
            fields.extend(extra.map(str::to_owned));
            let frame = format!("{{{}}}", fields.join(if spaced { " ,\n " } else { "," }));
            let fast = decode(&frame, &context);
            let general = general(frame.as_bytes(), &context);
            proptest::prop_assert_eq!(fast.is_some(), general.is_some(), "{}", frame);
            if let (Some(fast), Some((rid, events))) = (fast, general) {
                proptest::prop_assert_eq!(fast.rid, rid);
                proptest::prop_assert_eq!(comparable(&fast.events), comparable(&events));
            }
        }
    }

    #[test]
    fn a_frame_longer_than_an_event_may_be_is_left_to_the_general_path() {
        let context = context();
        let data = "x".repeat(context.limits.event_bytes_max);
        let frame = format!(r#"{{"op":"pub","rid":1,"events":[{{"type":"a","data":"{data}"}}]}}"#);
        assert!(decode(&frame, &context).is_none());
        let small = r#"{"op":"pub","rid":1,"events":[{"type":"a"}]}"#;
        assert!(decode(small, &context).is_some());
    }

    #[test]
    fn a_frame_without_the_string_pub_is_left_to_the_general_path() {
        let context = context();
        let escaped = r#"{"op":"\u0070ub","rid":1,"events":[{"type":"a"}]}"#;
        assert!(decode(escaped, &context).is_none());
        assert!(general(escaped.as_bytes(), &context).is_some());
        let ack = r#"{"op":"ack","sid":1,"deliveryId":7}"#;
        assert!(decode(ack, &context).is_none());
    }
}
