//! Arbitrary bytes through the event JSON decoder (plain and CloudEvents): never a panic, and an
//! accepted event re-encodes to JSON that decodes to the same event.
#![no_main]

use herald_core::{Event, ParseContext};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let context = ParseContext::new(time::OffsetDateTime::UNIX_EPOCH);
    if let Ok(event) = Event::from_json(bytes, &context) {
        let again = Event::from_json(&event.to_json(), &context).expect("re-encoded event decodes");
        assert_eq!(again, event);
    }
    if let Ok(event) = Event::from_cloudevent_json(bytes, &context) {
        let again = Event::from_cloudevent_json(&event.to_cloudevent_json(), &context)
            .expect("re-encoded cloudevent decodes");
        assert_eq!(again.event_type, event.event_type);
        assert_eq!(again.id, event.id);
    }
});
