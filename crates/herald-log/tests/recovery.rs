//! Opening damaged logs: torn tails are truncated, other damage stops the open with an error
//! naming the file, repair truncates, and no damage ever yields a corrupt record or a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use common::*;
use herald_log::{FsyncPolicy, Log, LogConfig, LogError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn config() -> LogConfig {
    small_segments(FsyncPolicy::Never)
}

fn repair_config() -> LogConfig {
    LogConfig {
        repair: true,
        ..config()
    }
}

/// A closed log in `dir` holding seqs 1..=count.
fn build_log(dir: &Path, count: u64) {
    let log = Log::open(dir, config()).unwrap();
    for start in (1..=count).step_by(10) {
        log.append_blocking(payloads(start..=(start + 9).min(count)))
            .unwrap();
    }
    log.close().unwrap();
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "log"))
        .collect();
    files.sort();
    files
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

fn truncate(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn flip_byte(path: &Path, at: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at as usize] ^= 0xff;
    fs::write(path, bytes).unwrap();
}

#[test]
fn a_torn_last_record_is_truncated_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    build_log(dir.path(), 100);
    let active = segment_files(dir.path()).pop().unwrap();
    truncate(&active, file_len(&active) - 5);
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.stats().last_seq, 99);
    let ack = log.append_blocking(payloads(100..=100)).unwrap();
    assert_eq!(ack.first_seq, 100);
    assert_records(&read_all(&log, 1), 1..=100);
}

#[test]
fn garbage_after_the_last_record_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    build_log(dir.path(), 50);
    let active = segment_files(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&active).unwrap();
    bytes.extend_from_slice(&[0x17; 100]);
    fs::write(&active, bytes).unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    assert_records(&read_all(&log, 1), 1..=50);
}

#[test]
fn corruption_inside_the_active_segment_stops_the_open_unless_repairing() {
    let dir = tempfile::tempdir().unwrap();
    build_log(dir.path(), 100);
    let active = segment_files(dir.path()).pop().unwrap();
    assert!(
        file_len(&active) > 1000,
        "the active segment holds several records"
    );
    flip_byte(&active, 100);
    let error = Log::open(dir.path(), config()).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, LogError::Corrupt { .. }), "{message}");
    assert!(message.contains(&active.display().to_string()), "{message}");
    assert!(message.contains("repair"), "{message}");

    let log = Log::open(dir.path(), repair_config()).unwrap();
    let last = log.stats().last_seq;
    assert!(last < 100);
    assert_records(&read_all(&log, 1), 1..=last);
}

#[test]
fn damage_to_a_sealed_segment_tail_stops_the_open_unless_repairing() {
    let dir = tempfile::tempdir().unwrap();
    build_log(dir.path(), 300);
    let files = segment_files(dir.path());
    assert!(files.len() > 5);
    let sealed = &files[2];
    truncate(sealed, file_len(sealed) - 3);
    let error = Log::open(dir.path(), config()).unwrap_err();
    assert!(
        matches!(error, LogError::Corrupt { ref path, .. } if path == sealed),
        "{error}"
    );

    let log = Log::open(dir.path(), repair_config()).unwrap();
    let last = log.stats().last_seq;
    assert!(last > 0 && last < 300);
    assert_records(&read_all(&log, 1), 1..=last);
    // Repair dropped every later segment, and the log goes on from there.
    let ack = log.append_blocking(payloads(last + 1..=last + 1)).unwrap();
    assert_eq!(ack.first_seq, last + 1);
}

#[test]
fn a_bad_sealed_header_stops_the_open_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    build_log(dir.path(), 300);
    let files = segment_files(dir.path());
    flip_byte(&files[1], 3);
    let error = Log::open(dir.path(), config()).unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, LogError::BadSegmentHeader { .. }),
        "{message}"
    );
    assert!(message.contains("magic"), "{message}");
    let log = Log::open(dir.path(), repair_config()).unwrap();
    let last = log.stats().last_seq;
    assert_records(&read_all(&log, 1), 1..=last);
}

#[test]
fn corruption_deep_inside_a_sealed_segment_is_reported_by_the_read_that_meets_it() {
    let dir = tempfile::tempdir().unwrap();
    build_log(dir.path(), 300);
    let files = segment_files(dir.path());
    // Past the header and the first record, before the last index entry's record.
    flip_byte(&files[1], 400);
    let log = Log::open(dir.path(), config()).unwrap();
    let mut reader = log.reader(1);
    let mut good = Vec::new();
    let error = loop {
        match reader.next_batch(7, 4096) {
            Ok(batch) if batch.is_empty() => panic!("the corrupt record was read as valid"),
            Ok(batch) => good.extend(batch),
            Err(error) => break error,
        }
    };
    assert!(
        matches!(error, LogError::Corrupt { ref path, .. } if *path == files[1]),
        "{error}"
    );
    assert_records(&good, 1..=good.len() as u64);
}

#[test]
fn a_segment_cut_inside_its_header_while_being_created_is_recreated() {
    let dir = tempfile::tempdir().unwrap();
    build_log(dir.path(), 300);
    // As if the process died while creating segment 301: part of its header reached the disk.
    let partial = dir.path().join(format!("{:020}.log", 301));
    fs::write(&partial, &herald_log::segment::encode_header(301)[..10]).unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(file_len(&partial), 32);
    assert_records(&read_all(&log, 1), 1..=300);
    assert_eq!(
        log.append_blocking(payloads(301..=301)).unwrap().first_seq,
        301
    );
}

/// Flips bytes and truncates files at random; every open either recovers to valid records or
/// fails with an error, and no read ever returns a record that differs from what was written.
#[test]
fn random_damage_never_yields_a_corrupt_record_or_a_panic() {
    let pristine = tempfile::tempdir().unwrap();
    build_log(pristine.path(), 400);
    let mut files: Vec<PathBuf> = fs::read_dir(pristine.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| !path.ends_with("LOCK"))
        .collect();
    files.sort();
    let seed = rand::random::<u64>();
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut recovered, mut refused) = (0, 0);
    for round in 0..300 {
        let work = tempfile::tempdir().unwrap();
        for file in &files {
            fs::copy(file, work.path().join(file.file_name().unwrap())).unwrap();
        }
        let victim = work
            .path()
            .join(files[rng.random_range(0..files.len())].file_name().unwrap());
        let len = file_len(&victim);
        let damages = rng.random_range(1..=3);
        for _ in 0..damages {
            if len == 0 {
                break;
            }
            if rng.random_bool(0.25) {
                truncate(&victim, rng.random_range(0..len));
            } else {
                let current = file_len(&victim);
                if current > 0 {
                    flip_byte(&victim, rng.random_range(0..current));
                }
            }
        }
        let repair = rng.random_bool(0.3);
        let config = if repair { repair_config() } else { config() };
        match Log::open(work.path(), config) {
            Ok(log) => {
                recovered += 1;
                let mut reader = log.reader(1);
                loop {
                    match reader.next_batch(50, 64 * 1024) {
                        Ok(batch) if batch.is_empty() => break,
                        Ok(batch) => {
                            for record in batch {
                                assert!(record.seq <= 400, "seed {seed} round {round}");
                                assert_eq!(
                                    record.payload,
                                    payload_for(record.seq),
                                    "seed {seed} round {round}: seq {} corrupt",
                                    record.seq
                                );
                            }
                        }
                        Err(error) => {
                            assert!(!error.to_string().is_empty());
                            break;
                        }
                    }
                }
            }
            Err(error) => {
                refused += 1;
                assert!(
                    !repair || matches!(error, LogError::Io { .. }),
                    "seed {seed} round {round}: repair failed: {error}"
                );
                assert!(!error.to_string().is_empty());
            }
        }
    }
    assert!(
        recovered > 0 && refused > 0,
        "seed {seed}: {recovered} recovered, {refused} refused"
    );
}

#[test]
fn verify_reads_everything_and_names_each_problem_without_changing_anything() {
    let dir = tempfile::tempdir().unwrap();
    build_log(dir.path(), 300);
    let interval = config().index_interval_bytes;
    let report = herald_log::verify(dir.path(), interval).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.records(), 300);
    assert!(report.segments.len() > 5);

    let files = segment_files(dir.path());
    flip_byte(&files[1], 400);
    let before = fs::read(&files[1]).unwrap();
    let report = herald_log::verify(dir.path(), interval).unwrap();
    assert!(!report.is_clean());
    let damaged: Vec<_> = report
        .segments
        .iter()
        .filter(|segment| !segment.problems.is_empty())
        .collect();
    assert_eq!(
        damaged.len(),
        2,
        "the damaged segment, and the next one's seq no longer follows: {damaged:?}"
    );
    assert!(
        damaged[0].problems[0].contains("invalid record at byte"),
        "{:?}",
        damaged[0]
    );
    assert_eq!(
        fs::read(&files[1]).unwrap(),
        before,
        "verify changes nothing"
    );
}
