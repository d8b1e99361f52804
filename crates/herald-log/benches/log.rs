//! Log benchmarks, with the disk's own limits measured in the same run so that the log's figures
//! can be read as fractions of them (the machine is shared and noisy; ratios drift less).
//!
//! `cargo bench -p herald-log --bench log` runs all; `-- append` or `-- open` selects.
//! `HERALD_BENCH_OPEN_GIB` sets the size of the log the open benchmark builds (default 1).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use herald_log::{FsyncPolicy, Log, LogConfig};

const EVENT_BYTES: usize = 256;

fn event_batch(size: usize) -> Vec<Bytes> {
    let payload = Bytes::from(vec![b'x'; EVENT_BYTES]);
    vec![payload; size]
}

fn policies() -> [(&'static str, FsyncPolicy); 3] {
    [
        ("never", FsyncPolicy::Never),
        (
            "interval_10ms",
            FsyncPolicy::Interval(Duration::from_millis(10)),
        ),
        ("always", FsyncPolicy::Always),
    ]
}

fn config(fsync: FsyncPolicy) -> LogConfig {
    LogConfig {
        fsync,
        ..LogConfig::default()
    }
}

/// The disk's sequential write bandwidth and the latency of a small write plus fdatasync.
fn disk(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("disk");
    let block = vec![0x5a_u8; 1024 * 1024];
    group.throughput(Throughput::Bytes(64 * block.len() as u64));
    group.sample_size(10);
    group.bench_function("sequential_write_64MiB_then_fsync", |b| {
        b.iter(|| {
            let path = dir.path().join("sequential");
            let mut file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&path)
                .unwrap();
            for _ in 0..64 {
                file.write_all(&block).unwrap();
            }
            file.sync_data().unwrap();
        })
    });
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(dir.path().join("fsync"))
        .unwrap();
    let page = vec![0x17_u8; 4096];
    let mut position = 0;
    group.throughput(Throughput::Elements(1));
    group.sample_size(50);
    group.bench_function("append_4KiB_then_fdatasync", |b| {
        b.iter(|| {
            file.write_all_at(&page, position).unwrap();
            position += page.len() as u64;
            file.sync_data().unwrap();
        })
    });
    group.finish();
}

/// One appender, batches of 1, 64 and 1024 events of 256 bytes, under each fsync policy.
fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    for (name, fsync) in policies() {
        for batch_size in [1, 64, 1024] {
            let dir = tempfile::tempdir().unwrap();
            let log = Log::open(dir.path(), config(fsync)).unwrap();
            let batch = event_batch(batch_size);
            group.throughput(Throughput::Elements(batch_size as u64));
            group.bench_with_input(BenchmarkId::new(name, batch_size), &batch, |b, batch| {
                b.iter(|| log.append_blocking(batch.clone()).unwrap())
            });
        }
    }
    group.finish();
}

/// 64 concurrent appenders, each appending batches of 16, sharing group commit.
fn group_commit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let mut group = c.benchmark_group("group_commit");
    const WRITERS: u64 = 64;
    const BATCH: usize = 16;
    for (name, fsync) in policies() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path(), config(fsync)).unwrap());
        group.throughput(Throughput::Elements(WRITERS * BATCH as u64));
        group.bench_function(BenchmarkId::new(name, "64_writers_x_16"), |b| {
            b.iter_custom(|rounds| {
                let started = Instant::now();
                runtime.block_on(async {
                    let tasks: Vec<_> = (0..WRITERS)
                        .map(|_| {
                            let log = log.clone();
                            tokio::spawn(async move {
                                for _ in 0..rounds {
                                    log.append(event_batch(BATCH)).await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.unwrap();
                    }
                });
                started.elapsed()
            })
        });
    }
    group.finish();
}

/// Sequential read of 200 000 events of 256 bytes from the start of a log.
fn read(c: &mut Criterion) {
    const EVENTS: u64 = 200_000;
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(FsyncPolicy::Never)).unwrap();
    for _ in 0..EVENTS / 1000 {
        log.append_blocking(event_batch(1000)).unwrap();
    }
    let mut group = c.benchmark_group("read");
    group.throughput(Throughput::Elements(EVENTS));
    group.sample_size(20);
    group.bench_function("sequential_200k_x_256B", |b| {
        b.iter(|| {
            let mut reader = log.reader(1);
            let mut seen = 0;
            loop {
                let batch = reader.next_batch(1024, 1 << 20).unwrap();
                if batch.is_empty() {
                    break;
                }
                seen += batch.len();
            }
            assert_eq!(seen as u64, EVENTS);
        })
    });
    group.finish();
}

/// Opening a log of about 1 GiB (warm page cache): recovery reads indexes of sealed segments
/// and scans only the active one.
fn open(c: &mut Criterion) {
    let gib: u64 = std::env::var("HERALD_BENCH_OPEN_GIB")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(1);
    let dir = tempfile::tempdir().unwrap();
    let frame_bytes = (EVENT_BYTES + 24) as u64;
    // Worst case for recovery: the active segment, which is scanned whole, nearly full.
    let per_segment = (herald_log::SEGMENT_BYTES_MAX_DEFAULT - 32) / frame_bytes;
    let events = (gib * 16 - 1) * per_segment + per_segment * 95 / 100;
    {
        let log = Log::open(dir.path(), config(FsyncPolicy::Never)).unwrap();
        let batch = event_batch(4096);
        for _ in 0..events / 4096 {
            log.append_blocking(batch.clone()).unwrap();
        }
        log.close().unwrap();
    }
    let mut group = c.benchmark_group("open");
    group.sample_size(10);
    group.bench_function(format!("{gib}GiB_log"), |b| {
        b.iter(|| {
            let log = Log::open(dir.path(), config(FsyncPolicy::Never)).unwrap();
            assert!(log.stats().events > 0);
            log.close().unwrap();
        })
    });
    // Cold: the page cache is dropped before each open (needs root; skipped otherwise).
    if drop_page_cache() {
        group.bench_function(format!("{gib}GiB_log_cold_cache"), |b| {
            b.iter_custom(|rounds| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..rounds {
                    drop_page_cache();
                    let started = Instant::now();
                    let log = Log::open(dir.path(), config(FsyncPolicy::Never)).unwrap();
                    elapsed += started.elapsed();
                    log.close().unwrap();
                }
                elapsed
            })
        });
    }
    group.finish();
}

fn drop_page_cache() -> bool {
    std::process::Command::new("sync").status().is_ok()
        && std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

criterion_group!(benches, disk, append, group_commit, read, open);
criterion_main!(benches);
