//! Arbitrary bytes through the record decoder: it must never panic, and whatever it accepts must
//! re-encode to exactly the bytes it came from.
#![no_main]

use herald_log::record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(view) = record::decode(bytes) {
        let mut encoded = Vec::new();
        record::encode_into(&mut encoded, view.seq, view.timestamp_us, view.payload);
        assert_eq!(&bytes[..view.frame_bytes()], &encoded[..]);
    }
    let _ = record::peek_frame_bytes(bytes);
});
