//! Arbitrary bytes as the only segment of a log: opening must recover or fail with an error,
//! never panic, and reads must return only records whose checksums hold.
#![no_main]

use herald_log::{Log, LogConfig, segment};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let dir = tempfile::tempdir().expect("temporary directory");
    // Give most inputs a valid header so that the fuzzer explores the records behind it.
    let mut file = segment::encode_header(1).to_vec();
    if bytes.first().is_some_and(|first| first & 1 == 1) {
        file.clear();
    }
    file.extend_from_slice(bytes);
    std::fs::write(dir.path().join(segment::log_file_name(1)), &file).expect("write segment");
    let Ok(log) = Log::open(dir.path(), LogConfig::default()) else {
        return;
    };
    let mut reader = log.reader(1);
    let mut expected_seq = 1;
    while let Ok(batch) = reader.next_batch(64, 1 << 20) {
        if batch.is_empty() {
            break;
        }
        for record in batch {
            assert_eq!(record.seq, expected_seq);
            expected_seq += 1;
        }
    }
    let _ = log.close();
});
