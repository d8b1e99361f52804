//! How the embedded engine is set up: where data lives, durability, declared streams,
//! ephemeral subjects and the bounds of every buffer.

use std::path::PathBuf;
use std::time::Duration;

use herald_core::Pattern;
use herald_log::{Clock, FsyncPolicy, Retention, system_clock};

/// PRODUCT.md §3: a stream remembers published ids this long.
pub const DEDUPE_WINDOW_DEFAULT: Duration = Duration::from_secs(120);

/// Ids a stream remembers for dedupe at most; past it the oldest are forgotten early. About
/// 100 bytes each (UUIDs less: no allocation of their own), so 16 MiB per stream at the limit.
pub const DEDUPE_IDS_MAX: usize = 160_000;

/// Events buffered for one live subscriber before it is dropped as slow.
pub const LIVE_BUFFER_EVENTS_DEFAULT: usize = 1024;

/// Recent events a stream keeps in memory, so that subscribers starting near the head, and
/// catching up to it, read no disk.
pub const TAIL_CACHE_EVENTS_MAX: usize = 8192;
pub const TAIL_CACHE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// A group journal writes a snapshot of its state and drops what precedes it once this many
/// records were appended since the last one, so it stays bounded and replays fast.
pub const GROUP_JOURNAL_SNAPSHOT_RECORDS_DEFAULT: usize = 10_000;

/// Segment size of group journals. A roll seals the segment with fsyncs inline, in the group's
/// task, holding its deliveries: at 4 MiB a group caught up at 20 k events/s rolled every
/// ~1.3 s and its p99 publish-to-delivery was 0.7–1.6 ms against 0.5–0.9 ms at 32 MiB
/// (docs/PERFORMANCE.md). The price: a busy group's journal holds up to this much on disk
/// (snapshots drop only sealed segments), and opening scans each journal's active segment.
pub const GROUP_JOURNAL_SEGMENT_BYTES_DEFAULT: u64 = 32 * 1024 * 1024;

/// Events read from a log per step while a subscriber catches up.
pub const CATCH_UP_BATCH_EVENTS: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    File,
    Memory,
}

/// A stream declared in configuration rather than created on first publish.
#[derive(Clone, Debug)]
pub struct StreamConfig {
    pub name: String,
    /// Subjects stored in this stream. The first declared stream whose patterns match a subject
    /// takes it; subjects no declared stream takes go to the stream named by their first token.
    pub subjects: Vec<Pattern>,
    pub retention: Retention,
    pub dedupe_window: Duration,
    pub storage: Storage,
}

#[derive(Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    pub fsync: FsyncPolicy,
    pub streams: Vec<StreamConfig>,
    /// Subjects delivered live but never stored (progress ticks, typing indicators).
    pub ephemeral: Vec<Pattern>,
    /// Dedupe window of streams created on first publish.
    pub dedupe_window: Duration,
    pub live_buffer_events: usize,
    /// Storage of streams created on first publish and of group journals. `Memory` keeps
    /// nothing across restarts; tests on tokio's paused clock use it, since file I/O would let
    /// the paused clock jump ahead while a write is outstanding.
    pub storage: Storage,
    pub group_journal_snapshot_records: usize,
    pub group_journal_segment_bytes: u64,
    /// The clock the logs stamp records with; tests inject their own.
    pub clock: Clock,
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("data_dir", &self.data_dir)
            .field("fsync", &self.fsync)
            .field("streams", &self.streams)
            .field("ephemeral", &self.ephemeral)
            .field("dedupe_window", &self.dedupe_window)
            .field("live_buffer_events", &self.live_buffer_events)
            .field("storage", &self.storage)
            .field(
                "group_journal_snapshot_records",
                &self.group_journal_snapshot_records,
            )
            .field(
                "group_journal_segment_bytes",
                &self.group_journal_segment_bytes,
            )
            .finish_non_exhaustive()
    }
}

impl EngineConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> EngineConfig {
        EngineConfig {
            data_dir: data_dir.into(),
            fsync: FsyncPolicy::Always,
            streams: Vec::new(),
            ephemeral: Vec::new(),
            dedupe_window: DEDUPE_WINDOW_DEFAULT,
            live_buffer_events: LIVE_BUFFER_EVENTS_DEFAULT,
            storage: Storage::File,
            group_journal_snapshot_records: GROUP_JOURNAL_SNAPSHOT_RECORDS_DEFAULT,
            group_journal_segment_bytes: GROUP_JOURNAL_SEGMENT_BYTES_DEFAULT,
            clock: system_clock(),
        }
    }
}

/// A stream name: one subject token, so that it is also a safe directory name.
pub fn is_valid_stream_name(name: &str) -> bool {
    !name.is_empty() && herald_core::subject::is_valid_token(name)
}
