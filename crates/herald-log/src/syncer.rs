//! Background `fdatasync` for `fsync = interval` and `never`.
//!
//! Under those policies an append is acknowledged once written, never after an fsync, so an
//! fsync done by the writer thread itself only stalls the appends queued behind it (on the test
//! machine, a 5 ms interval fsync inline raised the p99 of publish-to-delivery from 1.4 ms to
//! 5.5 ms at 20 k events/s). The syncer thread syncs a clone of the active segment's handle
//! while the writer goes on appending. At most one sync runs at a time; a sync asked for while
//! one runs is kept as the next (a newer request replaces it) and starts the moment the running
//! one ends, so the writer never waits for a sync to be able to ask for the next one. It waits
//! for the syncer only when it has run `2 × UNSYNCED_BYTES_MAX` ahead of the last finished sync,
//! which keeps dirty page cache bounded. (It used to wait whenever the interval came round while
//! a sync still ran: on a disk whose fsyncs took longer than the interval, every such commit —
//! and the delivery of its events — waited for the disk, and publish-to-delivery latency under
//! `interval` followed the disk's fsync latency; docs/PERFORMANCE.md, 2026-12-01 04:10 UTC.)
//! Under `always` the writer syncs inline, since the acknowledgement waits for the fsync anyway.
//!
//! Between syncs, the writer hands the syncer (when idle) each run of whole pages written since
//! the last one, and the syncer starts their writeback (`writer::WRITEBACK_BYTES_MIN`). Linux
//! offers that as `sync_file_range(SYNC_FILE_RANGE_WRITE)`, which neither rustix nor nix wraps;
//! `posix_fadvise(DONTNEED)` does the same for dirty pages (writeback is started, without waiting)
//! and drops only clean ones, which a range written after the last sync has none of.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};
use rustix::fs::Advice;

use crate::error::{IoContext, LogError};
use crate::fsync_times::FsyncTimes;

/// One segment to sync up to `position`.
struct SyncJob {
    file: Arc<File>,
    path: PathBuf,
    base_seq: u64,
    position: u64,
}

enum Job {
    Sync(SyncJob),
    /// Start writing out the pages of `file` in `from..until`, without waiting.
    Writeback {
        file: Arc<File>,
        from: u64,
        until: u64,
    },
}

/// What the syncer has done, read by the writer.
#[derive(Default)]
struct Progress {
    /// A sync runs, or is queued behind the running one.
    in_flight: bool,
    /// The sync to run when the running one ends.
    next: Option<SyncJob>,
    /// The segment and position of the last successful sync.
    synced: Option<(u64, u64)>,
    failure: Option<LogError>,
}

#[derive(Default)]
struct State {
    progress: Mutex<Progress>,
    idle: Condvar,
}

pub(crate) struct Syncer {
    jobs: Option<SyncSender<Job>>,
    state: Arc<State>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Starts the thread; it records each fsync's duration in `times`.
    pub fn start(name: &str, times: Arc<FsyncTimes>) -> Result<Syncer, LogError> {
        let (jobs, inbox) = sync_channel(1);
        let state = Arc::new(State::default());
        let thread_state = state.clone();
        let thread = std::thread::Builder::new()
            .name(format!("herald-log-sync:{name}"))
            .spawn(move || run(inbox, &thread_state, &times))
            .at(std::path::Path::new(name))?;
        Ok(Syncer {
            jobs: Some(jobs),
            state,
            thread: Some(thread),
        })
    }

    /// Starts syncing `file` up to `position`, or, while a sync runs, queues it to start when
    /// that one ends (replacing a sync queued before, which this one covers: the writer asks
    /// in position order, and syncs a segment inline before it rolls to the next); returns
    /// false when the thread is gone, and the caller must sync inline.
    pub fn request(&self, file: &Arc<File>, path: PathBuf, base_seq: u64, position: u64) -> bool {
        let job = SyncJob {
            file: file.clone(),
            path,
            base_seq,
            position,
        };
        self.hand_over(Job::Sync(job))
    }

    /// Starts the writeback of `from..until` of `file` if the thread is idle; returns whether it
    /// was handed over. Only advice: it succeeds or fails unseen, and syncs decide durability.
    pub fn start_writeback(&self, file: &Arc<File>, from: u64, until: u64) -> bool {
        self.hand_over(Job::Writeback {
            file: file.clone(),
            from,
            until,
        })
    }

    /// Sends `job` to the idle thread; while it is busy, a sync is queued behind the running
    /// job and a writeback is refused.
    fn hand_over(&self, job: Job) -> bool {
        let Some(jobs) = &self.jobs else {
            return false;
        };
        {
            let mut progress = self.state.progress.lock();
            if progress.in_flight {
                return match job {
                    Job::Sync(sync) => {
                        progress.next = Some(sync);
                        true
                    }
                    Job::Writeback { .. } => false,
                };
            }
            progress.in_flight = true;
        }
        match jobs.try_send(job) {
            Ok(()) => true,
            // The thread is gone (it only stops when the syncer is dropped) or, impossibly,
            // busy: the writer syncs inline at its next chance instead.
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.state.progress.lock().in_flight = false;
                false
            }
        }
    }

    /// Waits until no sync runs or is queued.
    pub fn wait_idle(&self) {
        let mut progress = self.state.progress.lock();
        while progress.in_flight {
            self.state.idle.wait(&mut progress);
        }
    }

    pub fn is_busy(&self) -> bool {
        self.state.progress.lock().in_flight
    }

    /// The last successful sync as `(segment base seq, position)`, or the failure of a sync,
    /// which the writer must treat like its own fsync failing.
    pub fn take_progress(&self) -> Result<Option<(u64, u64)>, LogError> {
        let mut progress = self.state.progress.lock();
        match progress.failure.take() {
            Some(failure) => Err(failure),
            None => Ok(progress.synced),
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(inbox: Receiver<Job>, state: &State, times: &FsyncTimes) {
    while let Ok(first) = inbox.recv() {
        let mut job = first;
        loop {
            match job {
                Job::Writeback { file, from, until } => {
                    if let Some(length) = std::num::NonZeroU64::new(until.saturating_sub(from)) {
                        let _ = rustix::fs::fadvise(&*file, from, Some(length), Advice::DontNeed);
                    }
                }
                Job::Sync(job) => sync(&job, state, times),
            }
            let mut progress = state.progress.lock();
            match progress.next.take() {
                Some(next) => job = Job::Sync(next),
                None => {
                    progress.in_flight = false;
                    state.idle.notify_all();
                    break;
                }
            }
        }
    }
}

/// Runs one sync and records its outcome.
fn sync(job: &SyncJob, state: &State, times: &FsyncTimes) {
    let started = std::time::Instant::now();
    let result = job.file.sync_data().at(&job.path);
    times.record(started.elapsed());
    let mut progress = state.progress.lock();
    match result {
        Ok(()) => {
            let newer = progress.synced.is_none_or(|(base_seq, position)| {
                job.base_seq > base_seq || (job.base_seq == base_seq && job.position > position)
            });
            if newer {
                progress.synced = Some((job.base_seq, job.position));
            }
        }
        Err(failure) => {
            tracing::error!(error = %failure, "background fsync failed; the log refuses writes");
            progress.failure = Some(failure);
            // The log is poisoned: a sync queued behind this one is moot.
            progress.next = None;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A syncer, and a file for it to sync (the directory lives as long as the returned guard).
    fn started() -> (
        tempfile::TempDir,
        PathBuf,
        Arc<File>,
        Arc<FsyncTimes>,
        Syncer,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        let file = Arc::new(File::create(&path).unwrap());
        let times = Arc::new(FsyncTimes::default());
        let syncer = Syncer::start("test", times.clone()).unwrap();
        (dir, path, file, times, syncer)
    }

    #[test]
    fn reports_the_furthest_sync_and_takes_one_job_at_a_time() {
        let (_dir, path, file, times, syncer) = started();
        assert_eq!(syncer.take_progress().unwrap(), None);

        assert!(syncer.request(&file, path.clone(), 1, 100));
        syncer.wait_idle();
        assert!(!syncer.is_busy());
        assert_eq!(syncer.take_progress().unwrap(), Some((1, 100)));

        // An older position never moves the reported one back; a newer segment moves it on.
        assert!(syncer.request(&file, path.clone(), 1, 50));
        syncer.wait_idle();
        assert_eq!(syncer.take_progress().unwrap(), Some((1, 100)));
        assert!(syncer.request(&file, path, 7, 10));
        syncer.wait_idle();
        assert_eq!(syncer.take_progress().unwrap(), Some((7, 10)));
        assert_eq!(times.snapshot().count(), 3);
    }

    #[test]
    fn a_sync_asked_for_while_one_runs_is_done_before_the_syncer_is_idle() {
        let (_dir, path, file, times, syncer) = started();
        // Back to back, most requests find a sync running: each is queued behind it (replacing
        // the one queued before) instead of being refused, and the syncer is idle only once
        // the last is done — whichever requests found it idle.
        for position in 1..=50 {
            assert!(syncer.request(&file, path.clone(), 1, position));
        }
        syncer.wait_idle();
        assert!(!syncer.is_busy());
        assert_eq!(syncer.take_progress().unwrap(), Some((1, 50)));
        assert!((1..=50).contains(&times.snapshot().count()));
    }

    #[test]
    fn a_writeback_keeps_the_data_and_a_sync_asked_for_meanwhile_still_runs() {
        use std::os::unix::fs::FileExt;

        let (_dir, path, file, times, syncer) = started();
        let data: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
        file.write_all_at(&data, 0).unwrap();
        assert!(syncer.start_writeback(&file, 0, data.len() as u64));
        // Handed over at once, running or queued behind the writeback.
        assert!(syncer.request(&file, path.clone(), 1, data.len() as u64));
        syncer.wait_idle();
        assert_eq!(
            syncer.take_progress().unwrap(),
            Some((1, data.len() as u64))
        );
        assert_eq!(times.snapshot().count(), 1, "a writeback is not an fsync");
        let mut read = vec![0; data.len()];
        File::open(&path)
            .unwrap()
            .read_exact_at(&mut read, 0)
            .unwrap();
        assert!(
            read == data,
            "the pages written back still hold what was written"
        );
    }
}
