//! The file-backed log: recovery on open, the writer thread, and the state readers share.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use crate::LogStats;
use crate::config::{APPEND_QUEUE_REQUESTS_MAX, LogConfig, payload_bytes_max};
use crate::error::{IoContext, LogError};
use crate::fsync_times::{FsyncSnapshot, IoSnapshot, IoTimes};
use crate::reader::FileReader;
use crate::recovery;
use crate::state::SegmentSet;
use crate::writer::{self, Answer, AppendAck, OnAppended, Reply, Request, Writer};

/// State shared by the writer thread and every reader.
#[derive(Debug)]
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub config: LogConfig,
    pub segments: RwLock<SegmentSet>,
    /// The last seq readers may see: written, and fsynced when the policy says so.
    pub visible: watch::Sender<u64>,
    /// Every fsync of the log's data (by the writer or the syncer thread), every write, and the
    /// writer's waits for the syncer.
    pub io_times: IoTimes,
    /// Held until close so that no second process (or handle) opens the same directory.
    lock: File,
}

#[derive(Debug)]
pub(crate) struct FileLog {
    shared: Arc<Shared>,
    requests: flume::Sender<Request>,
    /// Shared with the writer thread; appenders take it to commit inline.
    writer: Arc<Mutex<Writer>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    payload_bytes_max: usize,
}

impl FileLog {
    pub fn open(dir: &Path, config: LogConfig) -> Result<FileLog, LogError> {
        config.validate()?;
        fs::create_dir_all(dir).at(dir)?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .at(&lock_path)?;
        lock.try_lock().map_err(|_| LogError::Locked {
            path: dir.to_path_buf(),
        })?;
        let recovered = recovery::recover(dir, &config)?;
        let last_seq = recovered.set.next_seq() - 1;
        let (requests, inbox) = flume::bounded(APPEND_QUEUE_REQUESTS_MAX);
        let payload_bytes_max = payload_bytes_max(&config);
        let (visible, _) = watch::channel(last_seq);
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            segments: RwLock::new(SegmentSet {
                sealed: recovered.set.sealed.clone(),
                active: recovered.set.active.clone(),
                active_index: recovered.set.active_index.clone(),
            }),
            config,
            visible,
            io_times: IoTimes::default(),
            lock,
        });
        let writer = Arc::new(Mutex::new(Writer::new(
            shared.clone(),
            requests.downgrade(),
            recovered,
        )?));
        let thread_writer = writer.clone();
        let handle = std::thread::Builder::new()
            .name(format!("herald-log-writer:{}", dir.display()))
            .spawn(move || writer::run(thread_writer, inbox))
            .at(dir)?;
        Ok(FileLog {
            shared,
            requests,
            writer,
            thread: Mutex::new(Some(handle)),
            payload_bytes_max,
        })
    }

    /// Checks a batch and makes the channel its outcome comes back on: the answer for its
    /// request, and the receiver to wait on.
    fn reply_for(
        &self,
        payloads: &[Bytes],
    ) -> Result<(Answer, flume::Receiver<Result<AppendAck, LogError>>), LogError> {
        check_batch(payloads, self.payload_bytes_max)?;
        let (reply, outcome) = flume::bounded(1);
        Ok((Answer::Reply(reply), outcome))
    }

    pub async fn append(&self, payloads: Vec<Bytes>) -> Result<AppendAck, LogError> {
        let (answer, outcome) = self.reply_for(&payloads)?;
        self.submit(payloads, answer).await;
        outcome.recv_async().await.map_err(|_| LogError::Closed)?
    }

    /// Queues an append whose outcome `on_appended` receives on the writer thread (see
    /// [`crate::Log::append_then`]); calls it at once with the error when the batch is refused
    /// or the log is closed.
    pub async fn append_then(&self, payloads: Vec<Bytes>, on_appended: OnAppended) {
        if let Err(refused) = check_batch(&payloads, self.payload_bytes_max) {
            on_appended(Err(refused));
            return;
        }
        self.submit(payloads, Answer::Call(on_appended)).await;
    }

    /// Commits a checked batch here when the writer is free and the commit cannot wait on the
    /// disk (no hand-off to the writer thread and back); otherwise queues it for the writer
    /// thread, as every other append.
    async fn submit(&self, payloads: Vec<Bytes>, answer: Answer) {
        let (payloads, answer) = match self.writer.try_lock() {
            Some(mut writer) => match writer.try_append_inline(payloads, answer) {
                Ok(()) => return,
                Err(given_back) => given_back,
            },
            None => (payloads, answer),
        };
        let request = Request::Append { payloads, answer };
        if let Err(flume::SendError(Request::Append { answer, .. })) =
            self.requests.send_async(request).await
        {
            answer.send(Err(LogError::Closed));
        }
    }

    pub fn append_blocking(&self, payloads: Vec<Bytes>) -> Result<AppendAck, LogError> {
        let (answer, outcome) = self.reply_for(&payloads)?;
        self.requests
            .send(Request::Append { payloads, answer })
            .map_err(|_| LogError::Closed)?;
        outcome.recv().map_err(|_| LogError::Closed)?
    }

    /// Sends a control request and waits for its answer.
    fn control(&self, make: impl FnOnce(Reply<()>) -> Request) -> Result<(), LogError> {
        let (reply, answer) = flume::bounded(1);
        self.requests
            .send(make(reply))
            .map_err(|_| LogError::Closed)?;
        answer.recv().map_err(|_| LogError::Closed)?
    }

    pub fn sync_blocking(&self) -> Result<(), LogError> {
        self.control(|reply| Request::Sync { reply })
    }

    pub async fn drop_before(&self, seq: u64) -> Result<(), LogError> {
        let (reply, answer) = flume::bounded(1);
        self.requests
            .send_async(Request::DropBefore { seq, reply })
            .await
            .map_err(|_| LogError::Closed)?;
        answer.recv_async().await.map_err(|_| LogError::Closed)?
    }

    pub fn enforce_retention_blocking(&self) -> Result<(), LogError> {
        self.control(|reply| Request::EnforceRetention { reply })
    }

    pub fn close(&self) -> Result<(), LogError> {
        let result = self.control(|reply| Request::Close { reply });
        if let Some(handle) = self.thread.lock().take() {
            let _ = handle.join();
            let _ = self.shared.lock.unlock();
        }
        match result {
            Err(LogError::Closed) => Ok(()),
            other => other,
        }
    }

    pub fn reader(&self, from_seq: u64) -> FileReader {
        FileReader::new(self.shared.clone(), from_seq)
    }

    pub fn seq_at_time(&self, timestamp_us: u64) -> Result<u64, LogError> {
        crate::reader::seq_at_time(&self.shared, timestamp_us)
    }

    pub fn fsync_times(&self) -> FsyncSnapshot {
        self.shared.io_times.fsyncs.snapshot()
    }

    pub fn io_times(&self) -> IoSnapshot {
        self.shared.io_times.snapshot()
    }

    pub fn watch_last_seq(&self) -> watch::Receiver<u64> {
        self.shared.visible.subscribe()
    }

    pub fn stats(&self) -> LogStats {
        let last_seq = *self.shared.visible.borrow();
        let set = self.shared.segments.read();
        let first_seq = set.first_seq();
        LogStats {
            first_seq,
            last_seq,
            events: (last_seq + 1).saturating_sub(first_seq),
            bytes: set.bytes(),
            segments: set.sealed.len() + 1,
            first_timestamp_us: set
                .segments()
                .find_map(|segment| segment.first_timestamp_us),
            last_timestamp_us: set
                .segments()
                .filter(|segment| segment.records() > 0)
                .map(|segment| segment.last_timestamp_us)
                .last(),
        }
    }
}

impl Drop for FileLog {
    fn drop(&mut self) {
        if writer::in_append_callback() {
            // Dropped from inside a commit, which cannot wait for itself: the queue closes with
            // this handle, and the writer thread syncs and stops once it has drained it.
            return;
        }
        let _ = self.close();
    }
}

pub(crate) fn check_batch(payloads: &[Bytes], payload_bytes_max: usize) -> Result<(), LogError> {
    if payloads.is_empty() {
        return Err(LogError::EmptyBatch);
    }
    if let Some(payload) = payloads
        .iter()
        .find(|payload| payload.len() > payload_bytes_max)
    {
        return Err(LogError::PayloadTooLarge {
            bytes: payload.len(),
            max: payload_bytes_max,
        });
    }
    Ok(())
}
