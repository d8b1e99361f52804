//! Readers of a file log. Each reader has its own file handle and read-ahead chunk, so any
//! number of them run beside the writer without locks beyond a short look at the segment list.
//!
//! Every record is checked right after it is read: its checksum, and that its seq is the one
//! expected at that position. A record that fails is never returned; the reader returns
//! `LogError::Corrupt` instead.

use std::fs::File;
use std::io::ErrorKind;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{CorruptionReason, LogError};
use crate::file_log::Shared;
use crate::index::{IndexEntry, IndexSource};
use crate::record::{self, DecodeError, Record};
use crate::segment::{self, SEGMENT_HEADER_BYTES};
use crate::state::{Located, SegmentInfo};

/// How many times a reader re-locates when retention deletes the segment it was about to open.
const RELOCATE_ATTEMPTS_MAX: usize = 8;

#[derive(Debug)]
pub struct FileReader {
    shared: Arc<Shared>,
    next_seq: u64,
    cursor: Option<Cursor>,
}

#[derive(Debug)]
struct Cursor {
    segment: SegmentInfo,
    sealed: bool,
    file: File,
    /// Byte position of the record `seq_at_position`.
    position: u64,
    seq_at_position: u64,
    /// True until the first record read after positioning through an index entry; an entry that
    /// turns out wrong sends the cursor back to the segment start instead of failing.
    from_hint: bool,
    chunk: Bytes,
    chunk_position: u64,
}

impl FileReader {
    pub(crate) fn new(shared: Arc<Shared>, from_seq: u64) -> FileReader {
        FileReader {
            shared,
            next_seq: from_seq.max(1),
            cursor: None,
        }
    }

    /// The seq the next record returned will have (or later, if retention trims it first).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn seek(&mut self, seq: u64) {
        self.next_seq = seq.max(1);
        self.cursor = None;
    }

    /// Up to `records_max` records and about `bytes_max` payload bytes (at least one record if
    /// any is visible), in seq order. Empty when the reader has caught up.
    pub fn next_batch(
        &mut self,
        records_max: usize,
        bytes_max: usize,
    ) -> Result<Vec<Record>, LogError> {
        let visible_last = *self.shared.visible.borrow();
        let mut records = Vec::new();
        let mut bytes = 0;
        while records.len() < records_max && bytes < bytes_max && self.next_seq <= visible_last {
            if self.cursor.is_none() {
                self.cursor = Some(self.open_cursor()?);
            }
            let Some(cursor) = self.cursor.as_mut() else {
                break;
            };
            let end = readable_end(&self.shared, cursor);
            if cursor.position >= end {
                if cursor.sealed {
                    self.next_seq = self.next_seq.max(cursor.segment.next_seq);
                    self.cursor = None;
                    continue;
                }
                break;
            }
            if !cursor.chunk_holds_record(cursor.position) {
                cursor.refill(end)?;
            }
            let offset = (cursor.position - cursor.chunk_position) as usize;
            let checked = record::decode(&cursor.chunk[offset..])
                .map_err(CorruptionReason::Decode)
                .and_then(|view| {
                    if view.seq == cursor.seq_at_position {
                        Ok(view)
                    } else {
                        Err(CorruptionReason::UnexpectedSeq {
                            expected: cursor.seq_at_position,
                            found: view.seq,
                        })
                    }
                });
            let view = match checked {
                Ok(view) => view,
                Err(_) if cursor.from_hint => {
                    cursor.restart_from_segment_start();
                    continue;
                }
                Err(reason) => {
                    return Err(LogError::Corrupt {
                        path: cursor.segment.paths.log.clone(),
                        position: cursor.position,
                        reason,
                    });
                }
            };
            cursor.from_hint = false;
            if view.seq > visible_last {
                break;
            }
            let frame_bytes = view.frame_bytes();
            if view.seq >= self.next_seq {
                let payload_start = offset + record::RECORD_HEADER_BYTES;
                records.push(Record {
                    seq: view.seq,
                    timestamp_us: view.timestamp_us,
                    payload: cursor.chunk.slice(payload_start..offset + frame_bytes),
                });
                bytes += view.payload.len();
                self.next_seq = view.seq + 1;
            }
            cursor.position += frame_bytes as u64;
            cursor.seq_at_position += 1;
        }
        Ok(records)
    }

    fn open_cursor(&mut self) -> Result<Cursor, LogError> {
        for _ in 0..RELOCATE_ATTEMPTS_MAX {
            let located = self.shared.segments.read().locate(self.next_seq);
            self.next_seq = self.next_seq.max(located.segment.base_seq);
            match File::open(&located.segment.paths.log) {
                Ok(file) => return Cursor::new(located, file, self.next_seq),
                // Retention deleted it between the look-up and the open: look again.
                Err(error) if error.kind() == ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(LogError::Io {
                        path: located.segment.paths.log,
                        source,
                    });
                }
            }
        }
        Err(LogError::Io {
            path: self.shared.dir.clone(),
            source: std::io::Error::other("segments kept disappearing under the reader"),
        })
    }
}

impl Cursor {
    fn new(located: Located, file: File, seq: u64) -> Result<Cursor, LogError> {
        let base_seq = located.segment.base_seq;
        let hint = match (located.sealed, located.hint) {
            (false, hint) => hint,
            (true, _) => sealed_index_lookup(&located.segment, |entry| entry.seq(base_seq) <= seq)?,
        };
        let mut cursor = Cursor {
            segment: located.segment,
            sealed: located.sealed,
            file,
            position: SEGMENT_HEADER_BYTES,
            seq_at_position: base_seq,
            from_hint: false,
            chunk: Bytes::new(),
            chunk_position: 0,
        };
        // A hint from a damaged index may point anywhere; only a plausible one is followed, and
        // the record it points at is still checked before use.
        let plausible = |entry: &IndexEntry| {
            let position = entry.position as u64;
            cursor.segment.contains(entry.seq(base_seq))
                && (SEGMENT_HEADER_BYTES..cursor.segment.bytes).contains(&position)
        };
        if let Some(entry) = hint.filter(plausible) {
            cursor.position = entry.position as u64;
            cursor.seq_at_position = entry.seq(base_seq);
            cursor.from_hint = true;
        }
        Ok(cursor)
    }

    fn restart_from_segment_start(&mut self) {
        self.position = SEGMENT_HEADER_BYTES;
        self.seq_at_position = self.segment.base_seq;
        self.from_hint = false;
        self.chunk = Bytes::new();
    }

    /// Whether the read-ahead chunk holds a whole record (or a whole invalid one) at `position`.
    fn chunk_holds_record(&self, position: u64) -> bool {
        let chunk_end = self.chunk_position + self.chunk.len() as u64;
        if position < self.chunk_position || position >= chunk_end {
            return false;
        }
        let offset = (position - self.chunk_position) as usize;
        !matches!(
            record::decode(&self.chunk[offset..]),
            Err(DecodeError::Incomplete { .. })
        )
    }

    fn refill(&mut self, end: u64) -> Result<(), LogError> {
        let mut chunk = Vec::new();
        segment::read_chunk(
            &self.file,
            &self.segment.paths.log,
            self.position,
            end,
            &mut chunk,
        )?;
        self.chunk = Bytes::from(chunk);
        self.chunk_position = self.position;
        Ok(())
    }
}

/// How far a cursor may read: a sealed segment's length, or the active segment's written extent.
fn readable_end(shared: &Shared, cursor: &mut Cursor) -> u64 {
    if cursor.sealed {
        return cursor.segment.bytes;
    }
    let set = shared.segments.read();
    if set.active.base_seq == cursor.segment.base_seq {
        return set.active.bytes;
    }
    // The writer sealed this segment since the cursor opened it.
    if let Some(sealed) = set
        .sealed
        .iter()
        .find(|segment| segment.base_seq == cursor.segment.base_seq)
    {
        cursor.segment = sealed.clone();
    }
    cursor.sealed = true;
    cursor.segment.bytes
}

fn sealed_index_lookup(
    segment: &SegmentInfo,
    before: impl Fn(&IndexEntry) -> bool,
) -> Result<Option<IndexEntry>, LogError> {
    let Ok(index_file) = File::open(&segment.paths.index) else {
        return Ok(None);
    };
    IndexSource::File(&index_file).last_where(&segment.paths.index, before)
}

/// The seq of the first record stamped at or after `timestamp_us`; one past the last visible
/// record when there is none yet.
pub(crate) fn seq_at_time(shared: &Arc<Shared>, timestamp_us: u64) -> Result<u64, LogError> {
    let visible_last = *shared.visible.borrow();
    let Some(located) = shared.segments.read().locate_time(timestamp_us) else {
        return Ok(visible_last + 1);
    };
    let base_seq = located.segment.base_seq;
    let hint = match located.sealed {
        false => located.hint,
        true => sealed_index_lookup(&located.segment, |entry| entry.timestamp_us < timestamp_us)?,
    };
    // The reader validates the hint itself, falling back to the segment start if it is wrong.
    let mut reader = FileReader::new(
        shared.clone(),
        hint.map_or(base_seq, |entry| entry.seq(base_seq)),
    );
    loop {
        let batch = reader.next_batch(TIME_SCAN_RECORDS_MAX, TIME_SCAN_BYTES_MAX)?;
        if batch.is_empty() {
            return Ok(reader.next_seq().max(visible_last + 1));
        }
        if let Some(found) = batch
            .iter()
            .find(|record| record.timestamp_us >= timestamp_us)
        {
            return Ok(found.seq);
        }
    }
}

const TIME_SCAN_RECORDS_MAX: usize = 1024;
const TIME_SCAN_BYTES_MAX: usize = 1024 * 1024;
