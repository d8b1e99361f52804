//! Kill -9 tests: a child process appends with `fsync = always` from several threads and reports
//! every acknowledged batch on stdout; the parent kills it with SIGKILL at a random moment, then
//! reopens the log and checks that every acknowledged record is there, intact and in order.
//! The rounds share one directory, so each round also recovers what the previous kill left.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use herald_log::{FsyncPolicy, Log, LogConfig};
use rand::{Rng, SeedableRng};

const CHILD_DIR_ENV: &str = "HERALD_LOG_CRASH_CHILD_DIR";
const CHILD_ROUND_ENV: &str = "HERALD_LOG_CRASH_CHILD_ROUND";
const WRITERS: u64 = 4;
const ROUNDS: u64 = 25;

fn crash_config() -> LogConfig {
    LogConfig {
        // Small segments so that kills also land around segment rolls.
        segment_bytes_max: 64 * 1024,
        fsync: FsyncPolicy::Always,
        ..LogConfig::default()
    }
}

/// `round/writer/counter` padded to a length that varies with the counter.
fn payload(round: u64, writer: u64, counter: u64) -> Bytes {
    let mut text = format!("{round}/{writer}/{counter}/");
    let length = text.len() + (counter * 31 % 200) as usize;
    while text.len() < length {
        text.push((b'a' + (counter % 26) as u8) as char);
    }
    Bytes::from(text)
}

fn parse(bytes: &[u8]) -> (u64, u64, u64) {
    let text = std::str::from_utf8(bytes).expect("payload is UTF-8");
    let mut fields = text.split('/').map(|field| field.parse::<u64>());
    let mut next = || fields.next().expect("field").expect("number");
    let parsed = (next(), next(), next());
    assert_eq!(
        bytes,
        &payload(parsed.0, parsed.1, parsed.2)[..],
        "payload intact"
    );
    parsed
}

/// The child's body: runs only when the parent starts this test binary with the env var set.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let round: u64 = std::env::var(CHILD_ROUND_ENV).unwrap().parse().unwrap();
    let log = std::sync::Arc::new(Log::open(&dir, crash_config()).unwrap());
    let stdout = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
    // Ends the test harness's unterminated "test crash_child ... " so that the first ack is a
    // line of its own.
    writeln!(stdout.lock().unwrap()).unwrap();
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (log, stdout) = (log.clone(), stdout.clone());
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(round * 100 + writer);
                let mut counter = 0;
                loop {
                    let size = rng.random_range(1..=16);
                    let batch = (counter..counter + size)
                        .map(|counter| payload(round, writer, counter))
                        .collect();
                    log.append_blocking(batch).unwrap();
                    counter += size;
                    let mut out = stdout.lock().unwrap();
                    writeln!(out, "ack {writer} {}", counter - 1).unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        let _ = writer.join();
    }
}

#[test]
fn acknowledged_records_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let seed = rand::random::<u64>();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Per round, per writer: the highest counter the child reported as acknowledged.
    let mut acked: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    let mut records_total = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_ENV, dir.path())
            .env(CHILD_ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("ack ") {
                    let mut fields = rest.split(' ').map(|field| field.parse::<u64>().unwrap());
                    lines.push((fields.next().unwrap(), fields.next().unwrap()));
                }
            }
            lines
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(30..400)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acks = reader.join().unwrap();
        for (writer, counter) in acks {
            let highest = acked.entry((round, writer)).or_insert(0);
            *highest = (*highest).max(counter);
        }

        let log = Log::open(dir.path(), crash_config()).unwrap();
        let mut reader = log.reader(1);
        let mut next_counter: BTreeMap<(u64, u64), u64> = BTreeMap::new();
        let mut expected_seq = 1;
        loop {
            let batch = reader.next_batch(1000, 1 << 20).unwrap();
            if batch.is_empty() {
                break;
            }
            for record in batch {
                assert_eq!(record.seq, expected_seq, "seed {seed}: seqs are gapless");
                expected_seq += 1;
                let (record_round, writer, counter) = parse(&record.payload);
                // Each writer's records appear once each, in the order it appended them.
                let next = next_counter.entry((record_round, writer)).or_insert(0);
                assert_eq!(
                    counter, *next,
                    "seed {seed}: round {record_round} writer {writer}"
                );
                *next += 1;
            }
        }
        for (&(acked_round, writer), &highest) in &acked {
            let stored = next_counter
                .get(&(acked_round, writer))
                .copied()
                .unwrap_or(0);
            assert!(
                stored > highest,
                "seed {seed}: round {acked_round} writer {writer} acked counter {highest} but only {stored} records survived"
            );
        }
        records_total = expected_seq - 1;
        log.close().unwrap();
    }
    assert!(
        acked.len() as u64 >= ROUNDS,
        "seed {seed}: the children did append"
    );
    assert!(
        records_total > 1000,
        "seed {seed}: only {records_total} records in all"
    );
}
