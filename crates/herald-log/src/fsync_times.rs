//! How long the log's own `fdatasync` calls take, kept as a histogram.
//!
//! An fsync measured at rest (a 4 KiB append and one `fdatasync` on an idle file) says little
//! about the fsyncs a log issues under load, which cover more data and share the disk with
//! other writers: on the test machine the probe's p99 was 0.3–0.7 ms while the log's own
//! fsyncs, timed with strace under a 20 k/s publish, had a p99 of 1.1 ms and a tail to 4 ms.
//! Under `fsync = always` every acknowledgement waits for one, so a latency target stated as
//! "the fsync latency plus 1 ms" needs the fsyncs of the same run: each log records every one
//! of its fsyncs here (writer and syncer thread alike), and [`FsyncTimes::snapshot`] taken
//! before and after a run gives that run's distribution ([`FsyncSnapshot::since`]).
//!
//! Recording is two relaxed atomic adds, cheap beside the system call it times. Buckets are
//! log-linear: exact below 32 µs, then 16 per power of two (at most 1/16 = 6.25% wide), up to
//! about 67 s; longer fsyncs count in the last bucket.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Values below this many microseconds have a bucket each.
const EXACT_US: u64 = 32;
/// Buckets per power of two above `EXACT_US`.
const SUB_BUCKETS: u64 = 16;
/// log2 of `EXACT_US`.
const EXACT_BITS: u32 = 5;
/// The largest power of two with buckets of its own: 2^26 µs ≈ 67 s.
const TOP_BITS: u32 = 26;
/// Buckets in all.
pub const FSYNC_BUCKETS: usize =
    EXACT_US as usize + (TOP_BITS - EXACT_BITS + 1) as usize * SUB_BUCKETS as usize;

const _: () = assert!(EXACT_US == 1 << EXACT_BITS && SUB_BUCKETS <= EXACT_US);

fn bucket_of(micros: u64) -> usize {
    if micros < EXACT_US {
        return micros as usize;
    }
    let power = (63 - micros.leading_zeros()).min(TOP_BITS);
    let micros = micros.min((1 << (TOP_BITS + 1)) - 1);
    let sub = (micros >> (power - SUB_BUCKETS.trailing_zeros())) & (SUB_BUCKETS - 1);
    EXACT_US as usize + ((power - EXACT_BITS) as u64 * SUB_BUCKETS + sub) as usize
}

/// The largest value (µs) a bucket holds: quantiles err high, never low.
fn bucket_top_us(bucket: usize) -> u64 {
    let bucket = bucket as u64;
    if bucket < EXACT_US {
        return bucket;
    }
    let power = (bucket - EXACT_US) / SUB_BUCKETS + EXACT_BITS as u64;
    let sub = (bucket - EXACT_US) % SUB_BUCKETS;
    let width = 1u64 << (power - SUB_BUCKETS.trailing_zeros() as u64);
    (1u64 << power) + (sub + 1) * width - 1
}

/// A log's fsync durations since it was opened.
#[derive(Debug)]
pub struct FsyncTimes {
    buckets: Box<[AtomicU64]>,
    total_us: AtomicU64,
}

impl Default for FsyncTimes {
    fn default() -> FsyncTimes {
        FsyncTimes {
            buckets: (0..FSYNC_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            total_us: AtomicU64::new(0),
        }
    }
}

impl FsyncTimes {
    pub fn record(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
        self.total_us.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> FsyncSnapshot {
        FsyncSnapshot {
            counts: self
                .buckets
                .iter()
                .map(|bucket| bucket.load(Ordering::Relaxed))
                .collect(),
            total_us: self.total_us.load(Ordering::Relaxed),
        }
    }
}

/// Fsync durations counted up to one moment; subtract an earlier snapshot for an interval,
/// add several logs' for a whole engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsyncSnapshot {
    counts: Vec<u64>,
    total_us: u64,
}

impl Default for FsyncSnapshot {
    fn default() -> FsyncSnapshot {
        FsyncSnapshot {
            counts: vec![0; FSYNC_BUCKETS],
            total_us: 0,
        }
    }
}

impl FsyncSnapshot {
    /// Fsyncs counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Time spent in them all.
    pub fn total(&self) -> Duration {
        Duration::from_micros(self.total_us)
    }

    /// The duration at or under which a `quantile` (0.0–1.0) of the fsyncs took, to the top of
    /// its bucket; `None` when none was counted.
    pub fn quantile(&self, quantile: f64) -> Option<Duration> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        // The rank of the sample at `quantile`, 1-based, at least the first.
        let rank = ((quantile.clamp(0.0, 1.0) * count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, &in_bucket) in self.counts.iter().enumerate() {
            seen += in_bucket;
            if seen >= rank {
                return Some(Duration::from_micros(bucket_top_us(bucket)));
            }
        }
        None
    }

    /// What was counted after `earlier` (a snapshot of the same histogram).
    pub fn since(&self, earlier: &FsyncSnapshot) -> FsyncSnapshot {
        FsyncSnapshot {
            counts: self
                .counts
                .iter()
                .zip(&earlier.counts)
                .map(|(now, before)| now.saturating_sub(*before))
                .collect(),
            total_us: self.total_us.saturating_sub(earlier.total_us),
        }
    }

    /// Adds another histogram's counts to this one.
    pub fn add(&mut self, other: &FsyncSnapshot) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total_us += other.total_us;
    }

    /// Each non-empty bucket as (its top in seconds, fsyncs in it), smallest first: what a
    /// Prometheus histogram needs.
    pub fn buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, count)| **count > 0)
            .map(|(bucket, count)| (bucket_top_us(bucket) as f64 / 1e6, *count))
    }
}

/// A log's I/O timed, each kind in a histogram of its own: its fsyncs, its `pwrite`s (all, and
/// those that ran while a background fsync did), and the writer's waits for the syncer thread.
/// Under `interval` an acknowledgement waits for a write but never for an fsync, so when
/// publish-to-delivery latency follows the disk's fsync latency these say whether the writes
/// stall behind the fsyncs (ext4's journal) or the writer waits for the syncer.
#[derive(Debug, Default)]
pub struct IoTimes {
    /// Shared with the syncer thread.
    pub fsyncs: Arc<FsyncTimes>,
    pub writes: FsyncTimes,
    pub writes_while_syncing: FsyncTimes,
    pub sync_waits: FsyncTimes,
}

impl IoTimes {
    /// Records one write; `syncing` says a background fsync was running when it started.
    pub fn record_write(&self, took: Duration, syncing: bool) {
        self.writes.record(took);
        if syncing {
            self.writes_while_syncing.record(took);
        }
    }

    pub fn snapshot(&self) -> IoSnapshot {
        IoSnapshot {
            fsyncs: self.fsyncs.snapshot(),
            writes: self.writes.snapshot(),
            writes_while_syncing: self.writes_while_syncing.snapshot(),
            sync_waits: self.sync_waits.snapshot(),
        }
    }
}

/// [`IoTimes`] counted up to one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IoSnapshot {
    pub fsyncs: FsyncSnapshot,
    pub writes: FsyncSnapshot,
    pub writes_while_syncing: FsyncSnapshot,
    pub sync_waits: FsyncSnapshot,
}

impl IoSnapshot {
    /// What was counted after `earlier`.
    pub fn since(&self, earlier: &IoSnapshot) -> IoSnapshot {
        IoSnapshot {
            fsyncs: self.fsyncs.since(&earlier.fsyncs),
            writes: self.writes.since(&earlier.writes),
            writes_while_syncing: self
                .writes_while_syncing
                .since(&earlier.writes_while_syncing),
            sync_waits: self.sync_waits.since(&earlier.sync_waits),
        }
    }

    /// Adds another log's counts to these.
    pub fn add(&mut self, other: &IoSnapshot) {
        self.fsyncs.add(&other.fsyncs);
        self.writes.add(&other.writes);
        self.writes_while_syncing.add(&other.writes_while_syncing);
        self.sync_waits.add(&other.sync_waits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_bound_their_values() {
        let mut expected_bottom = 0;
        for bucket in 0..FSYNC_BUCKETS {
            let top = bucket_top_us(bucket);
            assert_eq!(
                bucket_of(expected_bottom),
                bucket,
                "bottom of bucket {bucket}"
            );
            assert_eq!(bucket_of(top), bucket, "top of bucket {bucket}");
            if top >= EXACT_US {
                // At most 1/16 wide.
                assert!((top + 1 - expected_bottom) * SUB_BUCKETS <= expected_bottom);
            }
            expected_bottom = top + 1;
        }
        assert_eq!(bucket_of(u64::MAX), FSYNC_BUCKETS - 1);
    }

    #[test]
    fn quantiles_of_an_interval() {
        let times = FsyncTimes::default();
        times.record(Duration::from_millis(50));
        let before = times.snapshot();
        for micros in 1..=1000 {
            times.record(Duration::from_micros(micros));
        }
        let run = times.snapshot().since(&before);
        assert_eq!(run.count(), 1000);
        assert_eq!(run.total(), Duration::from_micros(500_500));
        let p50 = run.quantile(0.5).unwrap().as_micros();
        assert!((500..=500 + 500 / 16).contains(&p50), "p50 {p50}");
        let p99 = run.quantile(0.99).unwrap().as_micros();
        assert!((990..=990 + 990 / 16).contains(&p99), "p99 {p99}");
        assert_eq!(run.quantile(0.0), Some(Duration::from_micros(1)));
        assert_eq!(FsyncSnapshot::default().quantile(0.5), None);

        let mut both = run.clone();
        both.add(&run);
        assert_eq!(both.count(), 2000);
        assert_eq!(both.quantile(0.5), run.quantile(0.5));
    }
}
