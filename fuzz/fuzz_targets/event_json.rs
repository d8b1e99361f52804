//! Arbitrary bytes through the event JSON decoders (plain, CloudEvents, and the stored-event
//! decoder that reads back what the log or Redis holds): never a panic, and an accepted event
//! re-encodes to JSON that both the publish and the stored decoders read as the same event.
#![no_main]

use herald_core::{Event, ParseContext};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let context = ParseContext::new(time::OffsetDateTime::UNIX_EPOCH);
    if let Ok(event) = Event::from_json(bytes, &context) {
        let stored = event.to_json();
        let again = Event::from_json(&stored, &context).expect("re-encoded event decodes");
        assert_eq!(again, event);
        let read_back = Event::from_stored_json(&stored).expect("stored event decodes");
        assert_eq!(read_back, event);
    }
    let _ = Event::from_stored_json(bytes);
    if let Ok(event) = Event::from_cloudevent_json(bytes, &context) {
        let again = Event::from_cloudevent_json(&event.to_cloudevent_json(), &context)
            .expect("re-encoded cloudevent decodes");
        assert_eq!(again.event_type, event.event_type);
        assert_eq!(again.id, event.id);
    }
});
