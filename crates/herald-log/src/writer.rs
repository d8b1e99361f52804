//! The single writer of a file log: a dedicated thread that owns the active segment.
//!
//! Appenders send requests over a bounded queue. The writer takes the first request, then drains
//! whatever else is already queued (up to `GROUP_COMMIT_RECORDS_MAX` / `GROUP_COMMIT_BYTES_MAX`),
//! encodes all of it into one buffer, issues one `pwrite` and, under `fsync = always`, one
//! `fdatasync` — so many concurrent appenders share one fsync (group commit). Only then are the
//! new records made visible to readers and the appenders answered.
//!
//! Under `interval` and `never` the fsync runs on a syncer thread (`syncer.rs`) so that it never
//! delays the appends queued behind it. Under those policies an [`OnAppended`] append may also
//! be committed by the appender itself (`Writer::try_append_inline`), when the writer is free and
//! the commit cannot wait on a disk sync: one short `pwrite` in the appender's thread costs less
//! than waking this thread and being woken back, and on a small machine it is one thread fewer
//! that must be scheduled before an event is acknowledged and delivered. The writer's state is
//! behind a mutex shared by the thread and those appenders; answers (and callbacks) are given
//! under it, so they come in seq order whoever committed.
//!
//! A failed write or fsync poisons the log: after an fsync error the kernel may have dropped the
//! dirty pages, so the only safe continuation is to reopen and let recovery find what is on disk.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tracing::{debug, error};

use crate::config::{FsyncPolicy, GROUP_COMMIT_BYTES_MAX, GROUP_COMMIT_RECORDS_MAX};
use crate::error::{IoContext, LogError};
use crate::file_log::Shared;
use crate::index::{self, IndexEntry};
use crate::record::{self, RECORD_HEADER_BYTES};
use crate::recovery::{self, Recovered};
use crate::segment::{SEGMENT_HEADER_BYTES, SegmentPaths};
use crate::state::{SegmentInfo, SegmentSet};
use crate::syncer::Syncer;

/// What an acknowledged append got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendAck {
    pub first_seq: u64,
    pub last_seq: u64,
    /// The timestamp given to every record of the batch.
    pub timestamp_us: u64,
}

/// Under `interval` and `never`, an fsync also runs once this many bytes are unsynced, so that
/// dirty page cache (memory) stays bounded whatever the write rate.
pub const UNSYNCED_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// Synced bytes this far behind the head are dropped from the page cache: tail readers keep
/// finding recent records in memory, while the cache does not grow with the log (on the test
/// machine, a page cache that only grows cut sustained buffered writes from 1.2 GB/s to 0.4).
pub const PAGE_CACHE_KEEP_BYTES: u64 = 16 * 1024 * 1024;

/// Under `interval` and `never`, once this many bytes of whole pages are written past the last
/// sync or writeback, the syncer starts their writeback. The interval's `fdatasync` then finds
/// little left to write: on the test machine (ext4, `fsync_interval` 1 s), a consumer group's p99
/// publish-to-delivery at 20 k events/s went from 1.01 to 0.88 ms (medians of four servers each;
/// docs/PERFORMANCE.md, session 24).
pub const WRITEBACK_BYTES_MIN: u64 = 256 * 1024;

/// Pages written longer ago than this may have been written back by the kernel's flusher
/// (`dirty_expire_centisecs`, 30 s by default); a writeback hint would drop them from the page
/// cache that tail readers use, so a run this old is passed over.
const WRITEBACK_AGE_MAX: Duration = Duration::from_secs(20);

const PAGE_BYTES: u64 = 4096;

/// How long the writer spins for the next request before it parks.
const WRITER_SPIN: Duration = Duration::from_micros(20);

pub(crate) type Reply<T> = flume::Sender<Result<T, LogError>>;

/// Called on the writer thread with an append's outcome, once the batch is durable under the
/// fsync policy (or failed), and before any later append is answered: what an appender that
/// must act in seq order on every acknowledged append uses instead of a reply it could abandon.
pub type OnAppended = Box<dyn FnOnce(Result<AppendAck, LogError>) + Send>;

thread_local! {
    /// Set while an [`OnAppended`] runs: a log dropped by its own callback (whose appender held
    /// the last handle) must not wait for the writer, which is busy calling it.
    static IN_APPEND_CALLBACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

pub(crate) fn in_append_callback() -> bool {
    IN_APPEND_CALLBACK.with(std::cell::Cell::get)
}

/// How an append is answered.
pub(crate) enum Answer {
    Reply(Reply<AppendAck>),
    Call(OnAppended),
}

impl Answer {
    pub fn send(self, outcome: Result<AppendAck, LogError>) {
        match self {
            Answer::Reply(reply) => {
                let _ = reply.send(outcome);
            }
            // A panicking callback is a bug of the appender; it must not take the writer (and
            // with it every other appender) down.
            Answer::Call(on_appended) => {
                IN_APPEND_CALLBACK.with(|flag| flag.set(true));
                let called =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| on_appended(outcome)));
                IN_APPEND_CALLBACK.with(|flag| flag.set(false));
                if called.is_err() {
                    error!("an append callback panicked");
                }
            }
        }
    }
}

pub(crate) enum Request {
    Append {
        payloads: Vec<Bytes>,
        answer: Answer,
    },
    Sync {
        reply: Reply<()>,
    },
    EnforceRetention {
        reply: Reply<()>,
    },
    DropBefore {
        seq: u64,
        reply: Reply<()>,
    },
    Close {
        reply: Reply<()>,
    },
    /// Makes the thread compute its next deadline again: an inline commit left data unsynced
    /// that the thread's interval timer must cover.
    Wake,
}

/// Requests drained from the queue for one group commit.
#[derive(Default)]
struct Gathered {
    appends: Vec<(Vec<Bytes>, Answer)>,
    controls: Vec<Request>,
    records: usize,
    bytes: usize,
}

impl Gathered {
    fn add(&mut self, request: Request) {
        match request {
            Request::Append { payloads, answer } => {
                self.records += payloads.len();
                self.bytes += payloads.iter().map(Bytes::len).sum::<usize>();
                self.appends.push((payloads, answer));
            }
            control => self.controls.push(control),
        }
    }
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    /// To wake the thread (weak, so that the queue still closes when the log is dropped).
    wake: flume::WeakSender<Request>,
    /// Shared with the syncer, which syncs it while the writer appends.
    file: Arc<File>,
    /// `None` under `always`, where the writer syncs inline.
    syncer: Option<Syncer>,
    buffer: Vec<u8>,
    /// Bytes of the active segment on disk (written, maybe not synced).
    position: u64,
    base_seq: u64,
    /// The active segment's file, named in errors; kept rather than built before every write
    /// (an eighth of a small append's cost, docs/PERFORMANCE.md).
    active_log_path: PathBuf,
    next_seq: u64,
    first_timestamp_us: Option<u64>,
    last_timestamp_us: u64,
    last_indexed_position: Option<u64>,
    pending_index: Vec<IndexEntry>,
    unsynced: bool,
    /// Position of the active segment up to which data is fsynced.
    synced_position: u64,
    /// Position of the active segment below which the page cache was already dropped.
    uncached_position: u64,
    /// Position of the active segment below which writeback was started (by a sync or a hint),
    /// and when it last moved.
    writeback_position: u64,
    writeback_moved_at: Instant,
    last_sync: Instant,
    next_retention_check: Instant,
    poisoned: Option<String>,
    /// Set once `Close` is handled: nothing is written after it.
    closed: bool,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("base_seq", &self.base_seq)
            .field("next_seq", &self.next_seq)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

/// Bytes an appender may write inline at most: a larger batch goes to the writer thread, so that
/// no async worker is held for a long write.
pub const INLINE_APPEND_BYTES_MAX: usize = 256 * 1024;

impl Writer {
    pub fn new(
        shared: Arc<Shared>,
        wake: flume::WeakSender<Request>,
        recovered: Recovered,
    ) -> Result<Writer, LogError> {
        let syncer = match shared.config.fsync {
            FsyncPolicy::Always => None,
            FsyncPolicy::Interval(_) | FsyncPolicy::Never => Some(Syncer::start(
                &shared.dir.display().to_string(),
                shared.io_times.fsyncs.clone(),
            )?),
        };
        let active = &recovered.set.active;
        let retention_check_interval = shared.config.retention_check_interval;
        Ok(Writer {
            position: active.bytes,
            base_seq: active.base_seq,
            active_log_path: SegmentPaths::new(&shared.dir, active.base_seq).log,
            next_seq: active.next_seq,
            first_timestamp_us: active.first_timestamp_us,
            last_timestamp_us: recovered
                .set
                .segments()
                .map(|segment| segment.last_timestamp_us)
                .max()
                .unwrap_or(0),
            last_indexed_position: recovered.last_indexed_position,
            file: Arc::new(recovered.active_file),
            syncer,
            shared,
            wake,
            buffer: Vec::with_capacity(1024 * 1024),
            pending_index: Vec::new(),
            unsynced: false,
            synced_position: active.bytes,
            uncached_position: SEGMENT_HEADER_BYTES,
            writeback_position: active.bytes / PAGE_BYTES * PAGE_BYTES,
            writeback_moved_at: Instant::now(),
            last_sync: Instant::now(),
            next_retention_check: Instant::now() + retention_check_interval,
            poisoned: None,
            closed: false,
        })
    }

    /// Commits `payloads` in the caller's thread if that cannot wait on the disk: the policy
    /// syncs in the background, no sync must be waited for, the batch is small and needs no
    /// segment roll. Otherwise gives the append back, for the queue.
    pub fn try_append_inline(
        &mut self,
        payloads: Vec<Bytes>,
        answer: Answer,
    ) -> Result<(), (Vec<Bytes>, Answer)> {
        let bytes: usize = payloads
            .iter()
            .map(|payload| RECORD_HEADER_BYTES + payload.len())
            .sum();
        if !self.commits_inline(bytes as u64) {
            return Err((payloads, answer));
        }
        let unsynced_before = self.unsynced;
        self.commit(vec![(payloads, answer)]);
        if self.unsynced && !unsynced_before {
            // The thread may be parked until a later deadline than this data's interval sync.
            if let Some(wake) = self.wake.upgrade() {
                let _ = wake.try_send(Request::Wake);
            }
        }
        Ok(())
    }

    fn commits_inline(&self, bytes: u64) -> bool {
        if matches!(self.shared.config.fsync, FsyncPolicy::Always) {
            return false;
        }
        if self.closed || self.poisoned.is_some() || bytes > INLINE_APPEND_BYTES_MAX as u64 {
            return false;
        }
        let segment_has_records = self.next_seq > self.base_seq;
        if segment_has_records && self.position + bytes > self.shared.config.segment_bytes_max {
            return false;
        }
        // Only the writer starts a sync, and it is held here: a sync idle now stays idle. A
        // sync due while one runs is queued behind it (`sync_in_background`), not waited for.
        let busy = self.syncer.as_ref().is_some_and(Syncer::is_busy);
        let far_behind = self.position + bytes - self.synced_position >= 2 * UNSYNCED_BYTES_MAX;
        !(busy && far_behind)
    }

    /// Takes the first request and whatever else is queued behind it, commits the appends
    /// (one write, one fsync) and handles the controls; true when the writer must stop.
    fn step(&mut self, first: Request, requests: &flume::Receiver<Request>) -> bool {
        let mut batch = Gathered::default();
        batch.add(first);
        while batch.records < GROUP_COMMIT_RECORDS_MAX && batch.bytes < GROUP_COMMIT_BYTES_MAX {
            match requests.try_recv() {
                Ok(request) => batch.add(request),
                Err(_) => break,
            }
        }
        let Gathered {
            appends, controls, ..
        } = batch;
        if !appends.is_empty() {
            self.commit(appends);
        }
        for control in controls {
            if self.handle_control(control) {
                return true;
            }
        }
        if Instant::now() >= self.next_deadline() {
            self.on_timer();
        }
        false
    }

    /// Handles a control request; true when the writer must stop.
    fn handle_control(&mut self, control: Request) -> bool {
        match control {
            Request::Sync { reply } => {
                let _ = reply.send(self.sync());
            }
            Request::EnforceRetention { reply } => {
                let _ = reply.send(self.enforce_retention());
            }
            Request::DropBefore { seq, reply } => {
                let _ = reply.send(self.drop_before(seq));
            }
            Request::Close { reply } => {
                let _ = reply.send(self.sync());
                self.closed = true;
                return true;
            }
            Request::Wake => {}
            Request::Append { .. } => unreachable!("appends are sorted out before controls"),
        }
        false
    }

    fn commit(&mut self, appends: Vec<(Vec<Bytes>, Answer)>) {
        if self.closed {
            for (_, answer) in appends {
                answer.send(Err(LogError::Closed));
            }
            return;
        }
        if let Some(reason) = &self.poisoned {
            for (_, answer) in appends {
                answer.send(Err(LogError::Poisoned(reason.clone())));
            }
            return;
        }
        let timestamp_us = self.shared.config.now_us().max(self.last_timestamp_us);
        let mut acks = Vec::with_capacity(appends.len());
        let written = self.write_all(&appends, timestamp_us, &mut acks);
        let durable = written.and_then(|()| self.sync_by_policy());
        match durable {
            Ok(()) => {
                self.shared.visible.send_replace(self.next_seq - 1);
                for ((_, answer), ack) in appends.into_iter().zip(acks) {
                    answer.send(Ok(ack));
                }
            }
            Err(failure) => {
                error!(error = %failure, "log write failed; the log refuses writes until reopened");
                let reason = failure.to_string();
                self.poisoned = Some(reason.clone());
                for (_, answer) in appends {
                    answer.send(Err(LogError::Poisoned(reason.clone())));
                }
            }
        }
    }

    fn write_all(
        &mut self,
        appends: &[(Vec<Bytes>, Answer)],
        timestamp_us: u64,
        acks: &mut Vec<AppendAck>,
    ) -> Result<(), LogError> {
        let segment_bytes_max = self.shared.config.segment_bytes_max;
        let index_interval_bytes = self.shared.config.index_interval_bytes;
        self.last_timestamp_us = timestamp_us;
        for (payloads, _) in appends {
            let first_seq = self.next_seq;
            for payload in payloads {
                let frame_bytes = (RECORD_HEADER_BYTES + payload.len()) as u64;
                let segment_has_records = self.next_seq > self.base_seq;
                if segment_has_records
                    && self.position + self.buffer.len() as u64 + frame_bytes > segment_bytes_max
                {
                    self.write_buffer()?;
                    self.roll()?;
                }
                let position = self.position + self.buffer.len() as u64;
                if self
                    .last_indexed_position
                    .is_none_or(|indexed| position - indexed >= index_interval_bytes)
                {
                    self.pending_index.push(IndexEntry::new(
                        self.base_seq,
                        self.next_seq,
                        position,
                        timestamp_us,
                    ));
                    self.last_indexed_position = Some(position);
                }
                record::encode_into(&mut self.buffer, self.next_seq, timestamp_us, payload);
                self.first_timestamp_us.get_or_insert(timestamp_us);
                self.next_seq += 1;
            }
            acks.push(AppendAck {
                first_seq,
                last_seq: self.next_seq - 1,
                timestamp_us,
            });
        }
        self.write_buffer()
    }

    /// Writes the buffer at the end of the active segment and publishes the new extent to
    /// readers (who still stop at the visible seq).
    fn write_buffer(&mut self) -> Result<(), LogError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let syncing = self.syncer.as_ref().is_some_and(Syncer::is_busy);
        let started = Instant::now();
        self.file
            .write_all_at(&self.buffer, self.position)
            .at(&self.active_log_path)?;
        self.shared
            .io_times
            .record_write(started.elapsed(), syncing);
        self.position += self.buffer.len() as u64;
        self.buffer.clear();
        self.unsynced = true;
        let mut set = self.shared.segments.write();
        let active = &mut set.active;
        debug_assert_eq!(active.base_seq, self.base_seq);
        active.bytes = self.position;
        active.next_seq = self.next_seq;
        active.first_timestamp_us = self.first_timestamp_us;
        active.last_timestamp_us = self.last_timestamp_us;
        set.active_index.append(&mut self.pending_index);
        Ok(())
    }

    fn sync_by_policy(&mut self) -> Result<(), LogError> {
        match self.shared.config.fsync {
            FsyncPolicy::Always => self.sync(),
            FsyncPolicy::Interval(interval) if self.last_sync.elapsed() >= interval => {
                self.sync_in_background(true)
            }
            FsyncPolicy::Interval(_) | FsyncPolicy::Never
                if self.position - self.synced_position >= UNSYNCED_BYTES_MAX =>
            {
                self.sync_in_background(false)
            }
            FsyncPolicy::Interval(_) | FsyncPolicy::Never => {
                self.start_writeback();
                self.absorb_sync_progress()
            }
        }
    }

    /// Hands the whole pages written since the last sync or writeback to the syncer, which
    /// starts writing them out; only when it is idle (a sync running covers them anyway).
    fn start_writeback(&mut self) {
        let until = self.position / PAGE_BYTES * PAGE_BYTES;
        if until < self.writeback_position + WRITEBACK_BYTES_MIN {
            return;
        }
        let Some(syncer) = &self.syncer else {
            return;
        };
        if self.writeback_moved_at.elapsed() > WRITEBACK_AGE_MAX
            || syncer.start_writeback(&self.file, self.writeback_position, until)
        {
            self.writeback_moved(until);
        }
    }

    fn writeback_moved(&mut self, position: u64) {
        self.writeback_position = position / PAGE_BYTES * PAGE_BYTES;
        self.writeback_moved_at = Instant::now();
    }

    /// Hands a sync of everything written to the syncer, which starts it now or, when a sync
    /// runs, as soon as that one ends. While one runs, a sync that is not `due` (the interval
    /// has not elapsed: the `UNSYNCED_BYTES_MAX` trigger) is left to the next commit or timer.
    /// Waits for the syncer only once the bytes written past its last finished sync reach twice
    /// `UNSYNCED_BYTES_MAX`, so that dirty page cache stays bounded; never merely because the
    /// interval came round while the disk was slow (the caller's commit, and the delivery of
    /// its events, would then wait for the disk's fsync).
    fn sync_in_background(&mut self, due: bool) -> Result<(), LogError> {
        let Some(busy) = self.syncer.as_ref().map(Syncer::is_busy) else {
            return self.sync();
        };
        self.absorb_sync_progress()?;
        if busy {
            let far_behind = self.position - self.synced_position >= 2 * UNSYNCED_BYTES_MAX;
            if far_behind {
                self.wait_for_syncer();
                self.absorb_sync_progress()?;
            } else if !due {
                return Ok(());
            }
        }
        self.last_sync = Instant::now();
        if !self.unsynced {
            return Ok(());
        }
        let path = self.active_log_path.clone();
        let started = self
            .syncer
            .as_ref()
            .is_some_and(|syncer| syncer.request(&self.file, path, self.base_seq, self.position));
        if started {
            self.unsynced = false;
            self.writeback_moved(self.position);
            Ok(())
        } else {
            self.sync()
        }
    }

    /// Waits until the syncer has nothing running or queued, timing the wait.
    fn wait_for_syncer(&self) {
        if let Some(syncer) = &self.syncer {
            let started = Instant::now();
            if syncer.is_busy() {
                syncer.wait_idle();
                self.shared.io_times.sync_waits.record(started.elapsed());
            }
        }
    }

    /// Takes what the syncer finished: a failure (which poisons the log, as an inline fsync
    /// failure would) or a newer synced position of the active segment.
    fn absorb_sync_progress(&mut self) -> Result<(), LogError> {
        let Some(syncer) = &self.syncer else {
            return Ok(());
        };
        let synced = match syncer.take_progress() {
            Ok(synced) => synced,
            Err(failure) => {
                self.poisoned = Some(failure.to_string());
                return Err(failure);
            }
        };
        if let Some((base_seq, position)) = synced
            && base_seq == self.base_seq
            && position > self.synced_position
        {
            self.synced_position = position;
            self.drop_cache_behind();
        }
        Ok(())
    }

    /// Syncs inline, after any background sync in flight, so that on return everything
    /// written is durable.
    fn sync(&mut self) -> Result<(), LogError> {
        if let Some(reason) = &self.poisoned {
            return Err(LogError::Poisoned(reason.clone()));
        }
        self.wait_for_syncer();
        self.absorb_sync_progress()?;
        if self.unsynced {
            let started = Instant::now();
            self.file.sync_data().at(&self.active_log_path)?;
            self.shared.io_times.fsyncs.record(started.elapsed());
            self.unsynced = false;
            self.synced_position = self.position;
            self.writeback_moved(self.position);
            self.drop_cache_behind();
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Advises the kernel to drop clean pages of the active segment that lie more than
    /// `PAGE_CACHE_KEEP_BYTES` behind the synced position. Only advice: failure changes nothing.
    fn drop_cache_behind(&mut self) {
        let until =
            self.synced_position.saturating_sub(PAGE_CACHE_KEEP_BYTES) / PAGE_BYTES * PAGE_BYTES;
        if until <= self.uncached_position {
            return;
        }
        if let Some(length) = std::num::NonZeroU64::new(until - self.uncached_position) {
            let _ = rustix::fs::fadvise(
                &*self.file,
                self.uncached_position,
                Some(length),
                rustix::fs::Advice::DontNeed,
            );
        }
        self.uncached_position = until;
    }

    /// Seals the active segment (fsync, index file) and starts a new one at `next_seq`.
    fn roll(&mut self) -> Result<(), LogError> {
        assert!(
            self.buffer.is_empty(),
            "roll only after the buffer is written"
        );
        self.sync()?;
        let sealed_paths = self.active_paths();
        let entries = self.shared.segments.read().active_index.clone();
        index::write_index_file(&sealed_paths.index, &entries)?;
        self.file = Arc::new(recovery::create_segment_file(
            &self.shared.dir,
            self.next_seq,
        )?);
        debug!(sealed = %sealed_paths.log.display(), next_seq = self.next_seq, "rolled segment");
        self.base_seq = self.next_seq;
        let fresh_paths = self.active_paths();
        self.active_log_path = fresh_paths.log.clone();
        self.position = SEGMENT_HEADER_BYTES;
        self.synced_position = SEGMENT_HEADER_BYTES;
        self.uncached_position = SEGMENT_HEADER_BYTES;
        self.writeback_moved(SEGMENT_HEADER_BYTES);
        self.first_timestamp_us = None;
        self.last_indexed_position = None;
        self.unsynced = false;
        let mut set = self.shared.segments.write();
        let fresh = SegmentInfo::empty(self.base_seq, fresh_paths);
        let sealed = std::mem::replace(&mut set.active, fresh);
        debug_assert_eq!(sealed.next_seq, self.base_seq, "segments are contiguous");
        set.sealed.push_back(sealed);
        set.active_index.clear();
        Ok(())
    }

    fn active_paths(&self) -> SegmentPaths {
        SegmentPaths::new(&self.shared.dir, self.base_seq)
    }

    fn next_deadline(&self) -> Instant {
        let mut deadline = self.next_retention_check;
        if let FsyncPolicy::Interval(interval) = self.shared.config.fsync
            && self.unsynced
        {
            deadline = deadline.min(self.last_sync + interval);
        }
        deadline
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        if let FsyncPolicy::Interval(interval) = self.shared.config.fsync
            && self.unsynced
            && now >= self.last_sync + interval
            && let Err(failure) = self.sync_in_background(true)
        {
            error!(error = %failure, "interval fsync failed; the log refuses writes until reopened");
            self.poisoned = Some(failure.to_string());
        }
        if now >= self.next_retention_check {
            self.next_retention_check = now + self.shared.config.retention_check_interval;
            if let Err(failure) = self.enforce_retention() {
                error!(error = %failure, "retention failed");
            }
        }
    }

    /// Drops every sealed segment whose records all precede `seq`.
    fn drop_before(&mut self, seq: u64) -> Result<(), LogError> {
        let oldest_precedes = |set: &SegmentSet| {
            set.sealed
                .front()
                .is_some_and(|oldest| oldest.next_seq <= seq)
        };
        if !oldest_precedes(&self.shared.segments.read()) {
            return Ok(());
        }
        // The records that supersede the dropped ones (a group journal's snapshot) may still be
        // unsynced under `interval` or `never`: a power loss must leave one or the other.
        self.sync()?;
        let mut dropped = Vec::new();
        {
            let mut set = self.shared.segments.write();
            while oldest_precedes(&set) {
                if let Some(segment) = set.sealed.pop_front() {
                    dropped.push(segment.base_seq);
                }
            }
        }
        // Only this thread changes the set: what was droppable before the sync still is.
        recovery::delete_segments(&self.shared.dir, &dropped)
    }

    /// Seals an old active segment when age retention needs it, then drops sealed segments from
    /// the head while any retention limit says so. Limits are floors: a segment is dropped only
    /// if what remains still meets the limit, so a log never holds fewer events than asked.
    fn enforce_retention(&mut self) -> Result<(), LogError> {
        if self.poisoned.is_some() {
            return Ok(());
        }
        let config = &self.shared.config;
        let retention = config.retention;
        let now_us = config.now_us();
        if let (Some(age), Some(first)) =
            (config.effective_segment_age_max(), self.first_timestamp_us)
            && first.saturating_add(age.as_micros() as u64) <= now_us
        {
            self.roll()?;
        }
        let mut dropped = Vec::new();
        loop {
            let mut set = self.shared.segments.write();
            let Some(oldest) = set.sealed.front() else {
                break;
            };
            let events = set.next_seq() - set.first_seq();
            let bytes = set.bytes();
            let over_events = retention
                .events_max
                .is_some_and(|max| events - oldest.records() >= max);
            let over_bytes = retention
                .bytes_max
                .is_some_and(|max| bytes - oldest.bytes >= max);
            let over_age = retention.age_max.is_some_and(|age: Duration| {
                oldest
                    .last_timestamp_us
                    .saturating_add(age.as_micros() as u64)
                    < now_us
            });
            if !(over_events || over_bytes || over_age) {
                break;
            }
            if let Some(segment) = set.sealed.pop_front() {
                dropped.push(segment.base_seq);
            }
        }
        if !dropped.is_empty() {
            debug!(segments = dropped.len(), "retention dropped segments");
            recovery::delete_segments(&self.shared.dir, &dropped)?;
        }
        Ok(())
    }
}

/// The writer thread: waits for requests (spinning briefly first), then commits under the
/// writer's lock; runs the interval sync and retention on their deadlines.
pub(crate) fn run(writer: Arc<Mutex<Writer>>, requests: flume::Receiver<Request>) {
    loop {
        let deadline = writer.lock().next_deadline();
        let first = match next_request(&requests, deadline) {
            Ok(request) => request,
            Err(flume::RecvTimeoutError::Timeout) => {
                writer.lock().on_timer();
                continue;
            }
            Err(flume::RecvTimeoutError::Disconnected) => {
                let _ = writer.lock().sync();
                return;
            }
        };
        if writer.lock().step(first, &requests) {
            return;
        }
    }
}

/// Waits for the next request, spinning briefly first: right after a commit the next request
/// usually follows within microseconds, and parking and waking a thread costs tens of
/// microseconds on a virtual machine.
fn next_request(
    requests: &flume::Receiver<Request>,
    deadline: Instant,
) -> Result<Request, flume::RecvTimeoutError> {
    let spin_until = Instant::now() + WRITER_SPIN;
    // The clock is read once per 64 polls: reading it every time cost more than the poll.
    'spin: loop {
        for _ in 0..64 {
            match requests.try_recv() {
                Ok(request) => return Ok(request),
                Err(flume::TryRecvError::Disconnected) => {
                    return Err(flume::RecvTimeoutError::Disconnected);
                }
                Err(flume::TryRecvError::Empty) => std::hint::spin_loop(),
            }
        }
        if Instant::now() >= spin_until {
            break 'spin;
        }
    }
    requests.recv_deadline(deadline)
}
