//! The memory-backed log for `storage = "memory"` streams: the same interface as the file log,
//! no disk. Retention applies per record rather than per segment, and a byte cap always applies
//! (`MEMORY_LOG_BYTES_MAX_DEFAULT` when none is configured), so memory stays bounded.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use parking_lot::RwLock;
use tokio::sync::watch;

use crate::config::{LogConfig, MEMORY_LOG_BYTES_MAX_DEFAULT, payload_bytes_max};
use crate::file_log::check_batch;
use crate::record::{RECORD_HEADER_BYTES, Record};
use crate::writer::AppendAck;
use crate::{LogError, LogStats};

#[derive(Debug)]
pub(crate) struct MemoryLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: LogConfig,
    records: RwLock<Records>,
    visible: watch::Sender<u64>,
    closed: AtomicBool,
    payload_bytes_max: usize,
}

#[derive(Debug)]
struct Records {
    queue: VecDeque<Record>,
    /// Seq of `queue[0]`, or of the next record when the queue is empty.
    first_seq: u64,
    /// Record bytes including the per-record header, as the file log would count them.
    bytes: u64,
    last_timestamp_us: u64,
}

impl Records {
    fn next_seq(&self) -> u64 {
        self.first_seq + self.queue.len() as u64
    }

    fn pop_front(&mut self) {
        if let Some(record) = self.queue.pop_front() {
            self.bytes -= frame_bytes(&record);
            self.first_seq += 1;
        }
    }
}

fn frame_bytes(record: &Record) -> u64 {
    (RECORD_HEADER_BYTES + record.payload.len()) as u64
}

impl MemoryLog {
    pub fn new(config: LogConfig) -> Result<MemoryLog, LogError> {
        config.validate()?;
        let (visible, _) = watch::channel(0);
        Ok(MemoryLog {
            inner: Arc::new(Inner {
                payload_bytes_max: payload_bytes_max(&config),
                config,
                records: RwLock::new(Records {
                    queue: VecDeque::new(),
                    first_seq: 1,
                    bytes: 0,
                    last_timestamp_us: 0,
                }),
                visible,
                closed: AtomicBool::new(false),
            }),
        })
    }

    pub fn append(&self, payloads: Vec<Bytes>) -> Result<AppendAck, LogError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        check_batch(&payloads, self.inner.payload_bytes_max)?;
        let mut records = self.inner.records.write();
        let timestamp_us = self.inner.config.now_us().max(records.last_timestamp_us);
        let first_seq = records.next_seq();
        for payload in payloads {
            let seq = records.next_seq();
            let record = Record {
                seq,
                timestamp_us,
                payload,
            };
            records.bytes += frame_bytes(&record);
            records.queue.push_back(record);
        }
        records.last_timestamp_us = timestamp_us;
        let last_seq = records.next_seq() - 1;
        self.apply_retention(&mut records);
        drop(records);
        self.inner.visible.send_replace(last_seq);
        Ok(AppendAck {
            first_seq,
            last_seq,
            timestamp_us,
        })
    }

    pub fn enforce_retention(&self) {
        self.apply_retention(&mut self.inner.records.write());
    }

    fn apply_retention(&self, records: &mut Records) {
        let retention = self.inner.config.retention;
        let bytes_max = retention.bytes_max.unwrap_or(MEMORY_LOG_BYTES_MAX_DEFAULT);
        while records.bytes > bytes_max {
            records.pop_front();
        }
        if let Some(events_max) = retention.events_max {
            while records.queue.len() as u64 > events_max {
                records.pop_front();
            }
        }
        if let Some(age) = retention.age_max {
            let now_us = self.inner.config.now_us();
            while records.queue.front().is_some_and(|record| {
                record.timestamp_us.saturating_add(age.as_micros() as u64) < now_us
            }) {
                records.pop_front();
            }
        }
    }

    pub fn drop_before(&self, seq: u64) {
        let mut records = self.inner.records.write();
        while records.first_seq < seq && !records.queue.is_empty() {
            records.pop_front();
        }
    }

    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
    }

    pub fn reader(&self, from_seq: u64) -> MemoryReader {
        MemoryReader {
            inner: self.inner.clone(),
            next_seq: from_seq.max(1),
        }
    }

    pub fn seq_at_time(&self, timestamp_us: u64) -> u64 {
        let records = self.inner.records.read();
        let at = records
            .queue
            .partition_point(|record| record.timestamp_us < timestamp_us);
        records.first_seq + at as u64
    }

    pub fn watch_last_seq(&self) -> watch::Receiver<u64> {
        self.inner.visible.subscribe()
    }

    pub fn stats(&self) -> LogStats {
        let records = self.inner.records.read();
        LogStats {
            first_seq: records.first_seq,
            last_seq: records.next_seq() - 1,
            events: records.queue.len() as u64,
            bytes: records.bytes,
            segments: 0,
            first_timestamp_us: records.queue.front().map(|record| record.timestamp_us),
            last_timestamp_us: records.queue.back().map(|record| record.timestamp_us),
        }
    }
}

#[derive(Debug)]
pub struct MemoryReader {
    inner: Arc<Inner>,
    next_seq: u64,
}

impl MemoryReader {
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn seek(&mut self, seq: u64) {
        self.next_seq = seq.max(1);
    }

    pub fn next_batch(&mut self, records_max: usize, bytes_max: usize) -> Vec<Record> {
        let records = self.inner.records.read();
        self.next_seq = self.next_seq.max(records.first_seq);
        let start = (self.next_seq - records.first_seq) as usize;
        let mut batch = Vec::new();
        let mut bytes = 0;
        for record in records.queue.iter().skip(start) {
            if batch.len() >= records_max || bytes >= bytes_max {
                break;
            }
            bytes += record.payload.len();
            batch.push(record.clone());
        }
        if let Some(last) = batch.last() {
            self.next_seq = last.seq + 1;
        }
        batch
    }
}
