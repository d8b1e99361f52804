//! Behaviour of a log as its users see it: reads after writes, seq continuity across segment
//! rolls and restarts, retention, time lookups, concurrency.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use herald_log::{FsyncPolicy, Log, LogConfig, LogError, Retention};

#[test]
fn reads_return_what_was_appended_in_order() {
    let dir = tempfile::tempdir().unwrap();
    for (backend, log) in each_backend(dir.path(), small_segments(FsyncPolicy::Never)) {
        let first = log.append_blocking(payloads(1..=1)).unwrap();
        assert_eq!((first.first_seq, first.last_seq), (1, 1), "{backend}");
        let batch = log.append_blocking(payloads(2..=50)).unwrap();
        assert_eq!((batch.first_seq, batch.last_seq), (2, 50), "{backend}");
        assert_records(&read_all(&log, 1), 1..=50);
        assert_records(&read_all(&log, 37), 37..=50);
        assert!(read_all(&log, 51).is_empty(), "{backend}");
        let limited = log.read(10, 5, usize::MAX).unwrap();
        assert_records(&limited, 10..=14);
        let stats = log.stats();
        assert_eq!(
            (stats.first_seq, stats.last_seq, stats.events),
            (1, 50, 50),
            "{backend}"
        );
    }
}

#[test]
fn a_reader_follows_the_tail_as_records_arrive() {
    let dir = tempfile::tempdir().unwrap();
    for (backend, log) in each_backend(dir.path(), small_segments(FsyncPolicy::Never)) {
        let mut reader = log.reader(1);
        assert!(reader.next_batch(10, 1024).unwrap().is_empty(), "{backend}");
        for seq in 1..=200 {
            log.append_blocking(payloads(seq..=seq)).unwrap();
            let batch = reader.next_batch(10, 1024).unwrap();
            assert_records(&batch, seq..=seq);
        }
        assert_eq!(reader.next_seq(), 201, "{backend}");
    }
}

#[test]
fn seqs_continue_across_segment_rolls_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut next = 1;
    for restart in 0..5 {
        let log = Log::open(dir.path(), small_segments(FsyncPolicy::Never)).unwrap();
        assert_eq!(log.stats().last_seq, next - 1, "restart {restart}");
        for _ in 0..20 {
            let last = next + 9;
            let ack = log.append_blocking(payloads(next..=last)).unwrap();
            assert_eq!((ack.first_seq, ack.last_seq), (next, last));
            next = last + 1;
        }
        assert_records(&read_all(&log, 1), 1..=next - 1);
        log.close().unwrap();
    }
    let log = Log::open(dir.path(), small_segments(FsyncPolicy::Never)).unwrap();
    assert!(
        log.stats().segments > 20,
        "the test must cross many segments"
    );
    assert_records(&read_all(&log, 1), 1..=1000);
    // A read can start anywhere, including inside sealed segments, through their indexes.
    for from in [1, 2, 99, 500, 733, 999, 1000] {
        assert_records(&read_all(&log, from), from..=1000);
    }
}

#[test]
fn a_closed_log_refuses_appends_and_a_second_opener_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let second = Log::open(dir.path(), LogConfig::default());
    assert!(matches!(second, Err(LogError::Locked { .. })), "{second:?}");
    log.close().unwrap();
    assert!(matches!(
        log.append_blocking(payloads(1..=1)),
        Err(LogError::Closed)
    ));
}

#[test]
fn bad_appends_are_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    for (backend, log) in each_backend(dir.path(), small_segments(FsyncPolicy::Always)) {
        assert!(
            matches!(log.append_blocking(vec![]), Err(LogError::EmptyBatch)),
            "{backend}"
        );
        let too_big = Bytes::from(vec![0; 8192]);
        let refused = log.append_blocking(vec![payload_for(1), too_big]);
        assert!(
            matches!(refused, Err(LogError::PayloadTooLarge { bytes: 8192, .. })),
            "{backend}: {refused:?}"
        );
        assert_eq!(
            log.stats().events,
            0,
            "{backend}: nothing of a refused batch is stored"
        );
    }
}

#[test]
fn retention_by_count_drops_whole_segments_and_keeps_at_least_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention: Retention {
            events_max: Some(100),
            ..Retention::default()
        },
        ..small_segments(FsyncPolicy::Never)
    };
    for (backend, log) in each_backend(dir.path(), config) {
        for start in (1..=1000).step_by(10) {
            log.append_blocking(payloads(start..=start + 9)).unwrap();
        }
        log.enforce_retention_blocking().unwrap();
        let stats = log.stats();
        assert_eq!(stats.last_seq, 1000, "{backend}");
        assert!(
            stats.events >= 100,
            "{backend}: kept {} events",
            stats.events
        );
        // A file log drops only whole segments (about 15 records each here).
        assert!(
            stats.events < 130,
            "{backend}: kept {} events",
            stats.events
        );
        assert_records(&read_all(&log, 1), stats.first_seq..=1000);
    }
}

#[test]
fn retention_by_bytes_bounds_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention: Retention {
            bytes_max: Some(20_000),
            ..Retention::default()
        },
        ..small_segments(FsyncPolicy::Never)
    };
    for (backend, log) in each_backend(dir.path(), config) {
        for start in (1..=2000).step_by(20) {
            log.append_blocking(payloads(start..=start + 19)).unwrap();
        }
        log.enforce_retention_blocking().unwrap();
        let stats = log.stats();
        assert!(
            stats.bytes <= 20_000 + 4096,
            "{backend}: {} bytes",
            stats.bytes
        );
        assert!(stats.bytes >= 15_000, "{backend}: {} bytes", stats.bytes);
        assert_records(&read_all(&log, 1), stats.first_seq..=2000);
    }
}

#[test]
fn retention_by_age_drops_old_segments_and_seals_an_idle_one() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000_000);
    let config = LogConfig {
        retention: Retention {
            age_max: Some(Duration::from_secs(60)),
            ..Retention::default()
        },
        clock: clock.clock(),
        ..small_segments(FsyncPolicy::Never)
    };
    for (backend, log) in each_backend(dir.path(), config) {
        clock.set(1_000_000_000);
        log.append_blocking(payloads(1..=100)).unwrap();
        clock.advance(30_000_000);
        log.append_blocking(payloads(101..=110)).unwrap();
        log.enforce_retention_blocking().unwrap();
        assert_eq!(
            log.stats().first_seq,
            1,
            "{backend}: nothing is old enough yet"
        );
        // 61 s after the first batch, it is past retention; the second is not.
        clock.advance(31_000_000);
        log.enforce_retention_blocking().unwrap();
        log.enforce_retention_blocking().unwrap();
        let stats = log.stats();
        assert!(stats.first_seq > 1, "{backend}: old records dropped");
        assert!(stats.first_seq <= 101, "{backend}: young records kept");
        assert_records(&read_all(&log, 1), stats.first_seq..=110);
        // Everything ages out, including the records of an idle active segment, which age
        // retention seals so that it can be dropped.
        clock.advance(120_000_000);
        log.enforce_retention_blocking().unwrap();
        log.enforce_retention_blocking().unwrap();
        assert_eq!(log.stats().events, 0, "{backend}");
        let ack = log.append_blocking(payloads(111..=111)).unwrap();
        assert_eq!(ack.first_seq, 111, "{backend}: seqs never restart");
    }
}

#[test]
fn time_lookups_find_the_first_record_at_or_after_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(5_000_000);
    let config = LogConfig {
        clock: clock.clock(),
        ..small_segments(FsyncPolicy::Never)
    };
    for (backend, log) in each_backend(dir.path(), config) {
        assert_eq!(log.seq_at_time(0).unwrap(), 1, "{backend}: empty log");
        // Seq n is stamped 5 s + 10 ms * n: one append per record.
        for seq in 1..=500 {
            clock.set(5_000_000 + seq * 10_000);
            log.append_blocking(payloads(seq..=seq)).unwrap();
        }
        let at = |timestamp_us: u64| log.seq_at_time(timestamp_us).unwrap();
        assert_eq!(at(0), 1, "{backend}");
        assert_eq!(at(5_010_000), 1, "{backend}");
        assert_eq!(at(5_010_001), 2, "{backend}");
        assert_eq!(at(5_000_000 + 250 * 10_000), 250, "{backend}");
        assert_eq!(at(5_000_000 + 250 * 10_000 - 1), 250, "{backend}");
        assert_eq!(at(5_000_000 + 500 * 10_000), 500, "{backend}");
        assert_eq!(at(u64::MAX), 501, "{backend}: later than everything");
        // The clock going backwards never makes timestamps go backwards in the log.
        clock.set(0);
        log.append_blocking(payloads(501..=501)).unwrap();
        let last = log.read(501, 1, usize::MAX).unwrap();
        assert_eq!(last[0].timestamp_us, 5_000_000 + 500 * 10_000, "{backend}");
    }
}

#[test]
fn time_lookups_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let config = LogConfig {
        clock: clock.clock(),
        ..small_segments(FsyncPolicy::Never)
    };
    let log = Log::open(dir.path(), config.clone()).unwrap();
    for seq in 1..=300 {
        clock.set(seq * 1000);
        log.append_blocking(payloads(seq..=seq)).unwrap();
    }
    log.close().unwrap();
    let log = Log::open(dir.path(), config).unwrap();
    for seq in [1, 2, 57, 150, 299, 300] {
        assert_eq!(log.seq_at_time(seq * 1000).unwrap(), seq);
        assert_eq!(log.seq_at_time(seq * 1000 - 500).unwrap(), seq);
    }
}

#[test]
fn concurrent_readers_see_every_record_in_order_while_the_writer_appends() {
    let dir = tempfile::tempdir().unwrap();
    for (backend, log) in each_backend(dir.path(), small_segments(FsyncPolicy::Never)) {
        let log = Arc::new(log);
        let total = 5000;
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let log = log.clone();
                std::thread::spawn(move || {
                    let mut reader = log.reader(1);
                    let mut watch = log.watch_last_seq();
                    let mut seen = Vec::new();
                    while seen.len() < total as usize {
                        let batch = reader.next_batch(64, 16 * 1024).unwrap();
                        if batch.is_empty() {
                            // Wait for the writer instead of spinning.
                            let runtime = tokio::runtime::Builder::new_current_thread()
                                .enable_time()
                                .build()
                                .unwrap();
                            runtime.block_on(async {
                                let _ = tokio::time::timeout(
                                    Duration::from_millis(50),
                                    watch.changed(),
                                )
                                .await;
                            });
                            continue;
                        }
                        seen.extend(batch);
                    }
                    seen
                })
            })
            .collect();
        for start in (1..=total).step_by(25) {
            log.append_blocking(payloads(start..=start + 24)).unwrap();
        }
        for reader in readers {
            assert_records(&reader.join().unwrap(), 1..=total);
        }
        assert!(backend == "memory" || log.stats().segments > 10);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appenders_get_disjoint_contiguous_seqs_under_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(dir.path(), LogConfig::default()).unwrap());
    let appenders: Vec<_> = (0..64u64)
        .map(|writer| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut acks = Vec::new();
                for round in 0..4u64 {
                    let batch = (0..16u64)
                        .map(|item| Bytes::from(format!("{writer}/{round}/{item}")))
                        .collect();
                    acks.push(log.append(batch).await.unwrap());
                }
                (writer, acks)
            })
        })
        .collect();
    let mut ranges = Vec::new();
    for appender in appenders {
        let (writer, acks) = appender.await.unwrap();
        for (round, ack) in acks.into_iter().enumerate() {
            assert_eq!(ack.last_seq - ack.first_seq, 15);
            ranges.push((ack.first_seq, writer, round as u64));
        }
    }
    ranges.sort_unstable();
    // The acked ranges tile 1..=4096 exactly, and each holds its batch in order.
    let records = read_all(&log, 1);
    assert_eq!(records.len(), 64 * 4 * 16);
    for (at, &(first_seq, writer, round)) in ranges.iter().enumerate() {
        assert_eq!(first_seq, at as u64 * 16 + 1);
        for item in 0..16u64 {
            let record = &records[(first_seq - 1 + item) as usize];
            assert_eq!(
                record.payload,
                Bytes::from(format!("{writer}/{round}/{item}"))
            );
        }
    }
}

#[test]
fn a_missing_sealed_index_is_rebuilt_and_reads_stay_correct() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_segments(FsyncPolicy::Never)).unwrap();
    log.append_blocking(payloads(1..=400)).unwrap();
    log.close().unwrap();
    let mut removed = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path
            .extension()
            .is_some_and(|extension| extension == "index")
        {
            if removed % 2 == 0 {
                std::fs::remove_file(&path).unwrap();
            } else {
                // An index whose middle entries point nowhere useful: readers fall back.
                let mut bytes = std::fs::read(&path).unwrap();
                let len = bytes.len();
                if len > 48 {
                    bytes[20..len - 20].iter_mut().for_each(|byte| *byte = 0x5a);
                    std::fs::write(&path, bytes).unwrap();
                }
            }
            removed += 1;
        }
    }
    assert!(removed > 2);
    let log = Log::open(dir.path(), small_segments(FsyncPolicy::Never)).unwrap();
    for from in [1, 17, 150, 301, 400] {
        assert_records(&read_all(&log, from), from..=400);
    }
}

#[tokio::test]
async fn drop_before_removes_whole_segments_below_a_seq_and_nothing_after_it() {
    let dir = tempfile::tempdir().unwrap();
    for (backend, log) in each_backend(dir.path(), small_segments(FsyncPolicy::Never)) {
        log.append_blocking(payloads(1..=300)).unwrap();
        log.drop_before(150).await.unwrap();
        let first = log.stats().first_seq;
        assert!(first <= 150, "{backend}: dropped past the seq ({first})");
        assert!(first > 100, "{backend}: dropped too little ({first})");
        assert_records(&read_all(&log, 1), first..=300);
    }
}

/// A caller drops the head once a later record replaces it (a group journal's snapshot): that
/// record is fsynced before the segments it replaces are deleted, under a policy that would
/// not have synced it for an hour.
#[tokio::test]
async fn drop_before_syncs_what_replaces_the_dropped_records_before_deleting_them() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        small_segments(FsyncPolicy::Interval(Duration::from_secs(3600))),
    )
    .unwrap();
    log.append_blocking(payloads(1..=300)).unwrap();
    let before = log.fsync_times();
    log.drop_before(150).await.unwrap();
    assert!(log.stats().first_seq > 100, "the drop dropped segments");
    assert_eq!(
        log.fsync_times().since(&before).count(),
        1,
        "the active segment's unsynced records were synced before the delete"
    );
    let before = log.fsync_times();
    log.drop_before(150).await.unwrap();
    assert_eq!(
        log.fsync_times().since(&before).count(),
        0,
        "a drop that deletes nothing syncs nothing"
    );
    drop(log);
    let log = Log::open(dir.path(), small_segments(FsyncPolicy::Never)).unwrap();
    let first = log.stats().first_seq;
    assert_records(&read_all(&log, 1), first..=300);
}

/// `append_then` callbacks come exactly once each, in seq order, and only for records readers
/// can see — whether the appender committed inline or the writer thread did — under every
/// policy, with many appenders and segment rolls (which never commit inline) in the mix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_then_answers_every_append_once_in_seq_order_under_every_policy() {
    for fsync in [
        FsyncPolicy::Never,
        FsyncPolicy::Interval(Duration::from_millis(1)),
        FsyncPolicy::Always,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path(), small_segments(fsync)).unwrap());
        let answered = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let appenders: Vec<_> = (0..8u64)
            .map(|writer| {
                let (log, answered) = (log.clone(), answered.clone());
                tokio::spawn(async move {
                    for round in 0..50u64 {
                        let batch = (0..4u64)
                            .map(|item| Bytes::from(format!("{writer}/{round}/{item}")))
                            .collect();
                        let (done, finished) = tokio::sync::oneshot::channel();
                        let (reader_log, answered) = (log.clone(), answered.clone());
                        log.append_then(
                            batch,
                            Box::new(move |appended| {
                                let ack = appended.unwrap();
                                assert!(
                                    reader_log.stats().last_seq >= ack.last_seq,
                                    "visible before its callback"
                                );
                                answered.lock().push((ack.first_seq, ack.last_seq));
                                let _ = done.send(());
                            }),
                        )
                        .await;
                        finished.await.unwrap();
                    }
                })
            })
            .collect();
        for appender in appenders {
            appender.await.unwrap();
        }
        let answered = answered.lock().clone();
        assert_eq!(answered.len(), 8 * 50, "{fsync:?}");
        for (at, &(first_seq, last_seq)) in answered.iter().enumerate() {
            assert_eq!(
                first_seq,
                at as u64 * 4 + 1,
                "{fsync:?}: callbacks in seq order"
            );
            assert_eq!(last_seq, first_seq + 3);
        }
        assert_eq!(read_all(&log, 1).len(), 8 * 50 * 4);
        assert!(
            log.stats().segments > 1,
            "the appends crossed segment rolls"
        );
        log.close().unwrap();
        let (done, finished) = tokio::sync::oneshot::channel();
        log.append_then(
            payloads(1..=1),
            Box::new(move |appended| {
                let _ = done.send(appended);
            }),
        )
        .await;
        assert!(matches!(finished.await.unwrap(), Err(LogError::Closed)));
    }
}

#[test]
fn every_fsync_of_the_data_is_timed() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path().join("always"),
        small_segments(FsyncPolicy::Always),
    )
    .unwrap();
    let before = log.fsync_times();
    for seq in 1..=5 {
        log.append_blocking(payloads(seq..=seq)).unwrap();
    }
    // Under `always` each acknowledged append waited for its own fsync (one appender).
    let run = log.fsync_times().since(&before);
    assert_eq!(run.count(), 5);
    assert!(run.quantile(0.5).is_some());

    let log = Log::open(
        dir.path().join("interval"),
        small_segments(FsyncPolicy::Interval(Duration::from_secs(3600))),
    )
    .unwrap();
    log.append_blocking(payloads(1..=3)).unwrap();
    assert_eq!(
        log.fsync_times().count(),
        0,
        "nothing is synced before it is due"
    );
    // A forced fsync counts too (the syncer thread's are counted in `syncer.rs`'s test).
    log.sync_blocking().unwrap();
    assert_eq!(log.fsync_times().count(), 1);
    // Each append (answered before the next was made) was one write, none during an fsync,
    // and the writer never waited for a syncer that had nothing to do.
    let io = log.io_times();
    assert_eq!(io.fsyncs, log.fsync_times());
    assert_eq!(io.writes.count(), 1);
    assert_eq!(io.writes_while_syncing.count(), 0);
    assert_eq!(io.sync_waits.count(), 0);

    let memory = Log::in_memory(LogConfig::default()).unwrap();
    memory.append_blocking(payloads(1..=1)).unwrap();
    assert_eq!(memory.fsync_times().count(), 0);
}
