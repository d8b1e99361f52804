//! How a log is tuned: segment size, indexing density, fsync policy, retention.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::LogError;
use crate::record::RECORD_PAYLOAD_BYTES_MAX;
use crate::segment::SEGMENT_HEADER_BYTES;

/// Default size at which the active segment is sealed and a new one started. Small enough that
/// recovery's full scan of the active segment stays fast, large enough that a log of a terabyte
/// is a few thousand files.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;

/// Segment positions are stored as u32 in the index.
pub const SEGMENT_BYTES_LIMIT: u64 = u32::MAX as u64;

/// Default distance between two sparse index entries.
pub const INDEX_INTERVAL_BYTES_DEFAULT: u64 = 4096;

/// How many records one group commit gathers at most before it writes.
pub const GROUP_COMMIT_RECORDS_MAX: usize = 16 * 1024;

/// How many bytes one group commit gathers at most before it writes.
pub const GROUP_COMMIT_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Append requests waiting for the writer; appenders wait (backpressure) beyond this.
pub const APPEND_QUEUE_REQUESTS_MAX: usize = 4096;

/// A memory log with no byte retention is still capped, so a forgotten limit never eats the host.
pub const MEMORY_LOG_BYTES_MAX_DEFAULT: u64 = 256 * 1024 * 1024;

/// How often the writer checks retention by default.
pub const RETENTION_CHECK_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);

/// When an append counts as acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After `fdatasync` of the batch; concurrent appenders share one fsync (group commit).
    /// Survives power loss.
    Always,
    /// After `write`; an fsync runs at most this often. Survives a process crash.
    Interval(Duration),
    /// After `write`; fsync only when a segment is sealed or the log is closed. Survives a
    /// process crash.
    Never,
}

/// Limits past which whole sealed segments are dropped from the head of the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    pub age_max: Option<Duration>,
    pub bytes_max: Option<u64>,
    pub events_max: Option<u64>,
}

/// Microseconds since the Unix epoch. Injected so that tests control time.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The wall clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_micros() as u64)
    })
}

#[derive(Clone)]
pub struct LogConfig {
    pub segment_bytes_max: u64,
    /// Seal the active segment once its first record is this old, so that age retention (which
    /// drops whole segments) is not held up by a segment that never fills. When `None` and
    /// `retention.age_max` is set, an eighth of the retention age is used.
    pub segment_age_max: Option<Duration>,
    pub index_interval_bytes: u64,
    pub fsync: FsyncPolicy,
    pub retention: Retention,
    /// How often the writer applies retention on its own (besides
    /// `Log::enforce_retention_blocking`).
    pub retention_check_interval: Duration,
    /// On corruption inside the log, truncate to the last valid record (dropping everything after
    /// it) instead of refusing to open.
    pub repair: bool,
    pub clock: Clock,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
            segment_age_max: None,
            index_interval_bytes: INDEX_INTERVAL_BYTES_DEFAULT,
            fsync: FsyncPolicy::Always,
            retention: Retention::default(),
            retention_check_interval: RETENTION_CHECK_INTERVAL_DEFAULT,
            repair: false,
            clock: system_clock(),
        }
    }
}

impl fmt::Debug for LogConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogConfig")
            .field("segment_bytes_max", &self.segment_bytes_max)
            .field("segment_age_max", &self.segment_age_max)
            .field("index_interval_bytes", &self.index_interval_bytes)
            .field("fsync", &self.fsync)
            .field("retention", &self.retention)
            .field("retention_check_interval", &self.retention_check_interval)
            .field("repair", &self.repair)
            .finish_non_exhaustive()
    }
}

impl LogConfig {
    pub(crate) fn validate(&self) -> Result<(), LogError> {
        let smallest = SEGMENT_HEADER_BYTES + 2 * crate::record::RECORD_HEADER_BYTES as u64;
        if self.segment_bytes_max < smallest || self.segment_bytes_max > SEGMENT_BYTES_LIMIT {
            return Err(LogError::InvalidConfig(format!(
                "segment_bytes_max must be between {smallest} and {SEGMENT_BYTES_LIMIT}, got {}",
                self.segment_bytes_max
            )));
        }
        if self.index_interval_bytes == 0 {
            return Err(LogError::InvalidConfig(
                "index_interval_bytes must be at least 1".into(),
            ));
        }
        if let FsyncPolicy::Interval(interval) = self.fsync
            && interval.is_zero()
        {
            return Err(LogError::InvalidConfig(
                "fsync interval must be above zero; use FsyncPolicy::Always instead".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn effective_segment_age_max(&self) -> Option<Duration> {
        self.segment_age_max
            .or_else(|| self.retention.age_max.map(|age| age / 8))
    }

    pub(crate) fn now_us(&self) -> u64 {
        (self.clock)()
    }
}

/// The largest single payload this configuration accepts.
pub(crate) fn payload_bytes_max(config: &LogConfig) -> usize {
    let segment_room = config.segment_bytes_max as usize
        - SEGMENT_HEADER_BYTES as usize
        - crate::record::RECORD_HEADER_BYTES;
    segment_room.min(RECORD_PAYLOAD_BYTES_MAX)
}
