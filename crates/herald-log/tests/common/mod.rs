//! Helpers shared by the log's integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use herald_log::{Clock, FsyncPolicy, Log, LogConfig, Record};

/// A payload whose content can be recomputed from its seq, of varying length.
pub fn payload_for(seq: u64) -> Bytes {
    let length = 16 + (seq * 7919 % 300) as usize;
    let mut bytes = format!("record-{seq}:").into_bytes();
    bytes.resize(length, b'a' + (seq % 26) as u8);
    Bytes::from(bytes)
}

pub fn payloads(seqs: std::ops::RangeInclusive<u64>) -> Vec<Bytes> {
    seqs.map(payload_for).collect()
}

/// A clock the test moves by hand.
#[derive(Clone)]
pub struct ManualClock(pub Arc<AtomicU64>);

impl ManualClock {
    pub fn new(start_us: u64) -> ManualClock {
        ManualClock(Arc::new(AtomicU64::new(start_us)))
    }
    pub fn set(&self, now_us: u64) {
        self.0.store(now_us, Ordering::SeqCst);
    }
    pub fn advance(&self, by_us: u64) {
        self.0.fetch_add(by_us, Ordering::SeqCst);
    }
    pub fn clock(&self) -> Clock {
        let now = self.0.clone();
        Arc::new(move || now.load(Ordering::SeqCst))
    }
}

/// Small segments so that a test crosses many of them.
pub fn small_segments(fsync: FsyncPolicy) -> LogConfig {
    LogConfig {
        segment_bytes_max: 4096,
        index_interval_bytes: 256,
        fsync,
        ..LogConfig::default()
    }
}

pub fn read_all(log: &Log, from_seq: u64) -> Vec<Record> {
    let mut reader = log.reader(from_seq);
    let mut records = Vec::new();
    loop {
        let batch = reader.next_batch(100, 64 * 1024).unwrap();
        if batch.is_empty() {
            return records;
        }
        records.extend(batch);
    }
}

/// Asserts that `records` are exactly `seqs`, each with its derived payload.
pub fn assert_records(records: &[Record], seqs: std::ops::RangeInclusive<u64>) {
    let expected: Vec<u64> = seqs.clone().collect();
    let got: Vec<u64> = records.iter().map(|record| record.seq).collect();
    assert_eq!(got, expected, "seqs");
    for record in records {
        assert_eq!(
            record.payload,
            payload_for(record.seq),
            "payload of seq {}",
            record.seq
        );
    }
}

/// Both backends, for tests of behaviour they share.
pub fn each_backend(dir: &Path, config: LogConfig) -> Vec<(&'static str, Log)> {
    vec![
        ("file", Log::open(dir, config.clone()).unwrap()),
        ("memory", Log::in_memory(config).unwrap()),
    ]
}
