//! Herald's log: one per stream, an ordered, durable sequence of opaque records numbered from 1.
//!
//! - Records are framed with their length and a CRC-32C ([`record`]) in segment files
//!   ([`segment`]), each with a sparse index mapping seqs and timestamps to positions
//!   ([`index`]).
//! - One writer thread per log gathers concurrent appends into one write and one fsync (group
//!   commit); an append is acknowledged only once written, and fsynced under
//!   [`FsyncPolicy::Always`].
//! - Any number of [`Reader`]s run beside the writer and see only acknowledged records.
//! - Opening validates the tail and truncates a torn last record; damage anywhere else stops the
//!   open with an error naming file and position, unless `repair` is set ([`recovery`]).
//! - Retention drops whole segments from the head by age, bytes or count.
//! - [`Log::in_memory`] gives the same interface without a disk, for `storage = "memory"`.
//!
//! The log knows nothing about events: payloads are bytes (Herald stores each event's JSON).

mod config;
mod error;
mod file_log;
mod fsync_times;
pub mod index;
mod memory_log;
mod reader;
pub mod record;
pub mod recovery;
pub mod segment;
mod state;
mod syncer;
mod verify;
mod writer;

use std::path::Path;

use bytes::Bytes;
use tokio::sync::watch;

pub use config::{
    APPEND_QUEUE_REQUESTS_MAX, Clock, FsyncPolicy, GROUP_COMMIT_BYTES_MAX,
    GROUP_COMMIT_RECORDS_MAX, INDEX_INTERVAL_BYTES_DEFAULT, LogConfig,
    MEMORY_LOG_BYTES_MAX_DEFAULT, RETENTION_CHECK_INTERVAL_DEFAULT, Retention,
    SEGMENT_BYTES_MAX_DEFAULT, system_clock,
};
pub use error::{CorruptionReason, LogError};
pub use fsync_times::{FSYNC_BUCKETS, FsyncSnapshot, FsyncTimes, IoSnapshot, IoTimes};
pub use record::Record;
pub use verify::{SegmentReport, VerifyReport, verify};
pub use writer::{AppendAck, OnAppended};

use file_log::FileLog;
use memory_log::{MemoryLog, MemoryReader};
use reader::FileReader;

/// A stream's log, on disk or in memory.
#[derive(Debug)]
pub struct Log {
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    File(FileLog),
    Memory(MemoryLog),
}

/// Counters describing a log at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogStats {
    /// Seq of the oldest retained record (or of the next record, when the log is empty).
    pub first_seq: u64,
    /// Seq of the newest acknowledged record; `first_seq - 1` when empty.
    pub last_seq: u64,
    pub events: u64,
    pub bytes: u64,
    /// Segment files; zero for a memory log.
    pub segments: usize,
    pub first_timestamp_us: Option<u64>,
    pub last_timestamp_us: Option<u64>,
}

impl Log {
    /// Opens (recovering) or creates the log in `dir`. Only one process may hold a directory.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<Log, LogError> {
        Ok(Log {
            backend: Backend::File(FileLog::open(dir.as_ref(), config)?),
        })
    }

    /// A log that lives in memory; `fsync` and segment settings do not apply.
    pub fn in_memory(config: LogConfig) -> Result<Log, LogError> {
        Ok(Log {
            backend: Backend::Memory(MemoryLog::new(config)?),
        })
    }

    /// Appends a batch; all its records get consecutive seqs and one timestamp. Resolves once
    /// the batch is durable under the log's fsync policy. A file log commits it within this
    /// call when it can (as [`Log::append_then`] says), saving the writer thread's round trip.
    pub async fn append(&self, payloads: Vec<Bytes>) -> Result<AppendAck, LogError> {
        match &self.backend {
            Backend::File(log) => log.append(payloads).await,
            Backend::Memory(log) => log.append(payloads),
        }
    }

    /// Appends like [`Log::append`], but hands the outcome to `on_appended` instead of a future:
    /// it is called exactly once (unless this future is dropped before the append is queued),
    /// once the batch is durable under the fsync policy, and a file log calls it under its
    /// writer's lock, in seq order, before any later append is acknowledged — on the writer
    /// thread, or within this call when the append was committed inline (under `interval` and
    /// `never`, when the writer is free and nothing must wait on the disk). An appender that
    /// must act on every acknowledged append (Herald's fan-out) then does so even if its caller
    /// goes away, without a task of its own and a hand-off back from the writer. `on_appended`
    /// runs on the writer's time: it must be short, must not block, and must not append to the
    /// same log.
    pub async fn append_then(&self, payloads: Vec<Bytes>, on_appended: OnAppended) {
        match &self.backend {
            Backend::File(log) => log.append_then(payloads, on_appended).await,
            Backend::Memory(log) => on_appended(log.append(payloads)),
        }
    }

    /// [`Log::append`] for threads outside an async runtime.
    pub fn append_blocking(&self, payloads: Vec<Bytes>) -> Result<AppendAck, LogError> {
        match &self.backend {
            Backend::File(log) => log.append_blocking(payloads),
            Backend::Memory(log) => log.append(payloads),
        }
    }

    /// A reader positioned at `from_seq` (or at the oldest retained record, if that is later).
    pub fn reader(&self, from_seq: u64) -> Reader {
        Reader {
            backend: match &self.backend {
                Backend::File(log) => ReaderBackend::File(log.reader(from_seq)),
                Backend::Memory(log) => ReaderBackend::Memory(log.reader(from_seq)),
            },
        }
    }

    /// One batch from `from_seq`; see [`Reader::next_batch`].
    pub fn read(
        &self,
        from_seq: u64,
        records_max: usize,
        bytes_max: usize,
    ) -> Result<Vec<Record>, LogError> {
        self.reader(from_seq).next_batch(records_max, bytes_max)
    }

    /// The seq of the first record stamped at or after `timestamp_us` (microseconds since the
    /// Unix epoch); one past the last record when every record is older.
    pub fn seq_at_time(&self, timestamp_us: u64) -> Result<u64, LogError> {
        match &self.backend {
            Backend::File(log) => log.seq_at_time(timestamp_us),
            Backend::Memory(log) => Ok(log.seq_at_time(timestamp_us)),
        }
    }

    /// Follows the last acknowledged seq, to wake tailing readers.
    pub fn watch_last_seq(&self) -> watch::Receiver<u64> {
        match &self.backend {
            Backend::File(log) => log.watch_last_seq(),
            Backend::Memory(log) => log.watch_last_seq(),
        }
    }

    pub fn stats(&self) -> LogStats {
        match &self.backend {
            Backend::File(log) => log.stats(),
            Backend::Memory(log) => log.stats(),
        }
    }

    /// The durations of this log's fsyncs since it was opened (none for a memory log): take one
    /// before and one after a run, and [`FsyncSnapshot::since`] gives the run's.
    pub fn fsync_times(&self) -> FsyncSnapshot {
        match &self.backend {
            Backend::File(log) => log.fsync_times(),
            Backend::Memory(_) => FsyncSnapshot::default(),
        }
    }

    /// This log's fsyncs, writes and waits for its syncer since it was opened (none for a
    /// memory log); [`IoSnapshot::since`] gives a run's.
    pub fn io_times(&self) -> IoSnapshot {
        match &self.backend {
            Backend::File(log) => log.io_times(),
            Backend::Memory(_) => IoSnapshot::default(),
        }
    }

    /// Forces an fsync now, whatever the policy.
    pub fn sync_blocking(&self) -> Result<(), LogError> {
        match &self.backend {
            Backend::File(log) => log.sync_blocking(),
            Backend::Memory(_) => Ok(()),
        }
    }

    /// Drops the head of the log up to `seq`, by whole sealed segments (a memory log, by
    /// record): what a caller that snapshots its own state uses instead of retention limits.
    /// Everything written is fsynced first, whatever the policy, so that the records which
    /// replace the dropped ones are durable before those are deleted.
    pub async fn drop_before(&self, seq: u64) -> Result<(), LogError> {
        match &self.backend {
            Backend::File(log) => log.drop_before(seq).await,
            Backend::Memory(log) => {
                log.drop_before(seq);
                Ok(())
            }
        }
    }

    /// Applies retention now rather than at the writer's next periodic check.
    pub fn enforce_retention_blocking(&self) -> Result<(), LogError> {
        match &self.backend {
            Backend::File(log) => log.enforce_retention_blocking(),
            Backend::Memory(log) => {
                log.enforce_retention();
                Ok(())
            }
        }
    }

    /// Fsyncs and stops the writer; later appends fail with [`LogError::Closed`]. Dropping the
    /// log does the same.
    pub fn close(&self) -> Result<(), LogError> {
        match &self.backend {
            Backend::File(log) => log.close(),
            Backend::Memory(log) => {
                log.close();
                Ok(())
            }
        }
    }
}

/// A cursor over a log. Readers never block the writer and never return an unacknowledged or
/// corrupt record.
#[derive(Debug)]
pub struct Reader {
    backend: ReaderBackend,
}

#[derive(Debug)]
enum ReaderBackend {
    File(FileReader),
    Memory(MemoryReader),
}

impl Reader {
    /// Up to `records_max` records and roughly `bytes_max` payload bytes, in seq order; empty
    /// when the reader has caught up. Records trimmed by retention are skipped.
    pub fn next_batch(
        &mut self,
        records_max: usize,
        bytes_max: usize,
    ) -> Result<Vec<Record>, LogError> {
        match &mut self.backend {
            ReaderBackend::File(reader) => reader.next_batch(records_max, bytes_max),
            ReaderBackend::Memory(reader) => Ok(reader.next_batch(records_max, bytes_max)),
        }
    }

    pub fn next_seq(&self) -> u64 {
        match &self.backend {
            ReaderBackend::File(reader) => reader.next_seq(),
            ReaderBackend::Memory(reader) => reader.next_seq(),
        }
    }

    pub fn seek(&mut self, seq: u64) {
        match &mut self.backend {
            ReaderBackend::File(reader) => reader.seek(seq),
            ReaderBackend::Memory(reader) => reader.seek(seq),
        }
    }
}
