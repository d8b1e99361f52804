//! Property test: random sequences of appends, reads, restarts and retention against a model,
//! for the file log (tiny segments, so rolls happen all the time) and the memory log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use herald_log::{FsyncPolicy, Log, LogConfig, Retention};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Append(u64),
    Read {
        from: u64,
        records_max: usize,
        bytes_max: usize,
    },
    Restart,
    Retain(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u64..40).prop_map(Op::Append),
        3 => (0u64..400, 1usize..50, 1usize..5000)
            .prop_map(|(from, records_max, bytes_max)| Op::Read { from, records_max, bytes_max }),
        1 => Just(Op::Restart),
        1 => (1u64..200).prop_map(Op::Retain),
    ]
}

fn config(events_max: Option<u64>) -> LogConfig {
    LogConfig {
        segment_bytes_max: 1024,
        index_interval_bytes: 100,
        retention: Retention {
            events_max,
            ..Retention::default()
        },
        // Retention only when the test says, so that every run is deterministic.
        retention_check_interval: std::time::Duration::from_secs(3600),
        ..small_segments(FsyncPolicy::Never)
    }
}

fn run(ops: Vec<Op>, file_backed: bool) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let open = |events_max| {
        if file_backed {
            Log::open(dir.path(), config(events_max)).unwrap()
        } else {
            Log::in_memory(config(events_max)).unwrap()
        }
    };
    let mut events_max = None;
    let mut log = open(events_max);
    // The model: the next seq to append, and the head of the log as last observed.
    let mut next_seq = 1;
    let mut first_seq = 1;
    for op in ops {
        match op {
            Op::Append(count) => {
                let ack = log
                    .append_blocking(payloads(next_seq..=next_seq + count - 1))
                    .unwrap();
                prop_assert_eq!(
                    (ack.first_seq, ack.last_seq),
                    (next_seq, next_seq + count - 1)
                );
                next_seq += count;
            }
            Op::Read {
                from,
                records_max,
                bytes_max,
            } => {
                let first_before = log.stats().first_seq;
                let records = log.read(from, records_max, bytes_max).unwrap();
                let first_after = log.stats().first_seq;
                let start = from.max(1);
                if start >= next_seq {
                    prop_assert!(records.is_empty());
                    continue;
                }
                prop_assert!(
                    !records.is_empty(),
                    "a read below the tail returns something"
                );
                prop_assert!(records.len() <= records_max);
                let returned_first = records[0].seq;
                // A read starts where asked, or at the oldest retained record if that is later.
                prop_assert!(returned_first >= start.max(first_before));
                prop_assert!(returned_first <= start.max(first_after));
                for (offset, record) in records.iter().enumerate() {
                    prop_assert_eq!(record.seq, returned_first + offset as u64);
                    prop_assert_eq!(&record.payload, &payload_for(record.seq));
                }
            }
            Op::Restart => {
                if file_backed {
                    log.close().unwrap();
                    drop(log);
                    log = open(events_max);
                    prop_assert_eq!(log.stats().last_seq, next_seq - 1);
                }
            }
            Op::Retain(max) => {
                if file_backed {
                    // Measured after close: the writer's periodic retention has stopped.
                    log.close().unwrap();
                    let present = log.stats().events;
                    drop(log);
                    events_max = Some(max);
                    log = open(events_max);
                    log.enforce_retention_blocking().unwrap();
                    let stats = log.stats();
                    prop_assert!(
                        stats.events >= max.min(present),
                        "kept {} of {}, limit {}",
                        stats.events,
                        present,
                        max
                    );
                    first_seq = stats.first_seq;
                }
            }
        }
        let stats = log.stats();
        prop_assert_eq!(stats.last_seq, next_seq - 1);
        prop_assert!(
            stats.first_seq >= first_seq,
            "retention never moves the head backwards"
        );
        first_seq = stats.first_seq;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn file_log_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops, true)?;
    }

    #[test]
    fn memory_log_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops, false)?;
    }
}
