//! Arbitrary bytes through the `/v1/ws` frame decoder: never a panic; an accepted frame passes
//! its own field check again after re-encoding, and every event it carries is fed to the event
//! decoder as the server does.
#![no_main]

use herald_core::{Event, ParseContext};
use herald_protocol::ws::Frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok((op, frame)) = Frame::decode_client(bytes) {
        let again = Frame::decode(frame.encode().as_bytes()).expect("re-encoded frame decodes");
        assert_eq!(again.check().expect("re-encoded frame checks"), op);
        let context = ParseContext::new(time::OffsetDateTime::UNIX_EPOCH);
        for raw in frame.events.iter().flatten() {
            let _ = Event::from_json(raw.get().as_bytes(), &context);
        }
    }
});
