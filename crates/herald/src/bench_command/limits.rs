//! The machine's physical limits, measured in the same run as the comparisons so that their
//! figures can be read as fractions of what the disk and loopback allow: sequential write
//! bandwidth to the data directory's filesystem, the latency of a small append made durable
//! with `fdatasync`, and TCP bandwidth over 127.0.0.1 between two threads.
//!
//! No server is involved; `--url` is ignored.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;

use super::report::{Percentiles, Report};

#[derive(Clone, Debug, Args)]
pub struct LimitsArgs {
    /// A directory on the filesystem to measure (where the servers keep their data); the
    /// probe's files are removed afterwards.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
}

/// Bytes written by the sequential-write probe: large enough that the page cache cannot absorb
/// it between syncs, small enough to take about a second.
const SEQUENTIAL_BYTES: usize = 1 << 30;

/// Size of each sequential `write`.
const SEQUENTIAL_CHUNK_BYTES: usize = 1 << 20;

/// The sequential probe calls `fdatasync` after this many bytes, as the log does (its
/// `UNSYNCED_BYTES_MAX`), so that it measures the disk rather than the page cache filling up.
const SEQUENTIAL_SYNC_EVERY_BYTES: usize = 16 << 20;

/// Appends of the fsync probe, each followed by `fdatasync`.
const FSYNC_ROUNDS: usize = 2000;

/// Bytes per append of the fsync probe: one page.
const FSYNC_APPEND_BYTES: usize = 4096;

/// Bytes sent over loopback.
const LOOPBACK_BYTES: usize = 4 << 30;

/// Size of each loopback `write` and `read`.
const LOOPBACK_CHUNK_BYTES: usize = 256 << 10;

/// Largest fsync latency the histogram records, in microseconds (10 s).
const FSYNC_MAX_US: u64 = 10_000_000;

pub fn disk_write(args: &LimitsArgs) -> anyhow::Result<Report> {
    let path = probe_path(&args.dir, "sequential");
    let outcome = sequential(&path);
    let _ = std::fs::remove_file(&path);
    let seconds = outcome?;
    let mut report = Report::new(
        "disk-write",
        format!(
            "sequential write of {} MiB in {} KiB writes, fdatasync every {} MiB and at the end, in {}",
            SEQUENTIAL_BYTES >> 20,
            SEQUENTIAL_CHUNK_BYTES >> 10,
            SEQUENTIAL_SYNC_EVERY_BYTES >> 20,
            args.dir.display()
        ),
        SEQUENTIAL_BYTES as u64,
        seconds,
    );
    report.unit = "bytes".into();
    Ok(report)
}

fn sequential(path: &Path) -> anyhow::Result<f64> {
    let mut file = std::fs::File::create(path)
        .with_context(|| format!("creating the probe file {}", path.display()))?;
    let chunk = vec![0x5au8; SEQUENTIAL_CHUNK_BYTES];
    let started = Instant::now();
    let mut unsynced = 0;
    for _ in 0..SEQUENTIAL_BYTES / SEQUENTIAL_CHUNK_BYTES {
        file.write_all(&chunk).context("writing the probe file")?;
        unsynced += chunk.len();
        if unsynced >= SEQUENTIAL_SYNC_EVERY_BYTES {
            file.sync_data().context("fdatasync")?;
            unsynced = 0;
        }
    }
    file.sync_data().context("fdatasync")?;
    Ok(started.elapsed().as_secs_f64())
}

pub fn fsync(args: &LimitsArgs) -> anyhow::Result<Report> {
    let path = probe_path(&args.dir, "fsync");
    let outcome = appends(&path);
    let _ = std::fs::remove_file(&path);
    let (histogram, seconds) = outcome?;
    let mut report = Report::new(
        "fsync",
        format!(
            "{FSYNC_ROUNDS} appends of {FSYNC_APPEND_BYTES} B, each followed by fdatasync, in {}",
            args.dir.display()
        ),
        FSYNC_ROUNDS as u64,
        seconds,
    );
    report.unit = "syncs".into();
    report.latency_us = Some(Percentiles::of(&histogram));
    Ok(report)
}

fn appends(path: &Path) -> anyhow::Result<(Histogram<u64>, f64)> {
    let mut file = std::fs::File::create(path)
        .with_context(|| format!("creating the probe file {}", path.display()))?;
    let page = vec![0x5au8; FSYNC_APPEND_BYTES];
    let mut histogram = Histogram::<u64>::new_with_bounds(1, FSYNC_MAX_US, 3)?;
    let started = Instant::now();
    for _ in 0..FSYNC_ROUNDS {
        let round = Instant::now();
        file.write_all(&page).context("writing the probe file")?;
        file.sync_data().context("fdatasync")?;
        histogram.saturating_record((round.elapsed().as_micros() as u64).max(1));
    }
    Ok((histogram, started.elapsed().as_secs_f64()))
}

pub fn loopback() -> anyhow::Result<Report> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
    let address = listener.local_addr()?;
    let receiver = std::thread::spawn(move || -> anyhow::Result<usize> {
        let (mut socket, _) = listener.accept()?;
        let mut buffer = vec![0u8; LOOPBACK_CHUNK_BYTES];
        let mut received = 0;
        loop {
            let read = socket.read(&mut buffer)?;
            if read == 0 {
                return Ok(received);
            }
            received += read;
        }
    });
    let started = Instant::now();
    let mut socket = TcpStream::connect(address).context("connecting over loopback")?;
    let chunk = vec![0x5au8; LOOPBACK_CHUNK_BYTES];
    for _ in 0..LOOPBACK_BYTES / LOOPBACK_CHUNK_BYTES {
        socket.write_all(&chunk).context("sending over loopback")?;
    }
    socket.shutdown(std::net::Shutdown::Write)?;
    let received = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("the loopback receiver panicked"))??;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        received == LOOPBACK_BYTES,
        "loopback: {received} of {LOOPBACK_BYTES} bytes arrived"
    );
    let mut report = Report::new(
        "loopback",
        format!(
            "TCP over 127.0.0.1, one connection between two threads, {} GiB in {} KiB writes",
            LOOPBACK_BYTES >> 30,
            LOOPBACK_CHUNK_BYTES >> 10
        ),
        LOOPBACK_BYTES as u64,
        seconds,
    );
    report.unit = "bytes".into();
    Ok(report)
}

/// A probe file name of this process's own in `dir`.
fn probe_path(dir: &Path, kind: &str) -> PathBuf {
    dir.join(format!(
        ".herald-bench-{kind}-{}-{}",
        std::process::id(),
        super::run_id()
    ))
}
