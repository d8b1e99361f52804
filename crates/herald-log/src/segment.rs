//! Segment files: naming, the file header, and scanning records out of a file.
//!
//! A segment is `{base_seq:020}.log`: a 32-byte header, then records back to back (see
//! [`crate::record`]). Header layout:
//!
//! ```text
//! offset  size  field
//!      0     8  magic           b"HERALDSG"
//!      8     4  format_version  u32 LE, currently 1
//!     12     4  flags           u32 LE, zero
//!     16     8  base_seq        u64 LE, seq of the first record; equals the file name
//!     24     4  reserved        zero
//!     28     4  crc32c          u32 LE, of bytes 0 .. 28
//! ```

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{CorruptionReason, IoContext, LogError};
use crate::index::IndexEntry;
use crate::record::{self, DecodeError, RECORD_HEADER_BYTES, RecordView};

pub const SEGMENT_HEADER_BYTES: u64 = 32;
pub const SEGMENT_MAGIC: [u8; 8] = *b"HERALDSG";
pub const SEGMENT_FORMAT_VERSION: u32 = 1;

/// Bytes read from a segment per `pread` while scanning or reading sequentially.
pub const READ_CHUNK_BYTES: usize = 256 * 1024;

pub fn log_file_name(base_seq: u64) -> String {
    format!("{base_seq:020}.log")
}

pub fn index_file_name(base_seq: u64) -> String {
    format!("{base_seq:020}.index")
}

/// The base seq a segment or index file name encodes, if it is one of ours.
pub fn parse_file_name(name: &str, extension: &str) -> Option<u64> {
    let stem = name.strip_suffix(extension)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

pub fn encode_header(base_seq: u64) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut header = [0; SEGMENT_HEADER_BYTES as usize];
    header[0..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
    header[16..24].copy_from_slice(&base_seq.to_le_bytes());
    let crc = crc32c::crc32c(&header[0..28]);
    header[28..32].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Checks a header read from disk; the error says what is wrong with it.
pub fn decode_header(header: &[u8]) -> Result<u64, String> {
    if header.len() < SEGMENT_HEADER_BYTES as usize {
        return Err(format!(
            "{} bytes, shorter than the {SEGMENT_HEADER_BYTES}-byte header",
            header.len()
        ));
    }
    if header[0..8] != SEGMENT_MAGIC {
        return Err("bad magic: not a Herald segment file".into());
    }
    let stored = record::read_u32(header, 28);
    let computed = crc32c::crc32c(&header[0..28]);
    if stored != computed {
        return Err(format!(
            "header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
        ));
    }
    let version = record::read_u32(header, 8);
    if version != SEGMENT_FORMAT_VERSION {
        return Err(format!(
            "format version {version} is not supported (this build reads {SEGMENT_FORMAT_VERSION})"
        ));
    }
    Ok(record::read_u64(header, 16))
}

/// The paths of one segment's files.
#[derive(Clone, Debug)]
pub struct SegmentPaths {
    pub log: PathBuf,
    pub index: PathBuf,
}

impl SegmentPaths {
    pub fn new(dir: &Path, base_seq: u64) -> SegmentPaths {
        SegmentPaths {
            log: dir.join(log_file_name(base_seq)),
            index: dir.join(index_file_name(base_seq)),
        }
    }
}

/// Where a scan starts: a byte position known to hold the record `seq`.
#[derive(Clone, Copy, Debug)]
pub struct ScanStart {
    pub position: u64,
    pub seq: u64,
    /// Timestamp of the record before `position`, for the monotonicity check.
    pub previous_timestamp_us: u64,
    /// Position of the last index entry before `position`, to keep entries sparse.
    pub last_indexed_position: Option<u64>,
}

impl ScanStart {
    /// The first record of the segment starting at `base_seq`.
    pub fn segment_start(base_seq: u64, previous_timestamp_us: u64) -> ScanStart {
        ScanStart {
            position: SEGMENT_HEADER_BYTES,
            seq: base_seq,
            previous_timestamp_us,
            last_indexed_position: None,
        }
    }
}

/// What a scan of `[start, end)` found.
#[derive(Debug)]
pub struct ScanOutcome {
    /// End of the last valid record.
    pub valid_end: u64,
    /// Seq the next record would have.
    pub next_seq: u64,
    pub first_timestamp_us: Option<u64>,
    pub last_timestamp_us: u64,
    /// Index entries for the records scanned, at the configured interval.
    pub index: Vec<IndexEntry>,
    /// The first invalid record, if the scan stopped before `end`.
    pub failure: Option<(u64, CorruptionReason)>,
}

/// Reads records from `start` up to `end`, checking each checksum, seq continuity and timestamp
/// order, and stops at the first record that fails.
pub fn scan(
    file: &File,
    path: &Path,
    base_seq: u64,
    start: ScanStart,
    end: u64,
    index_interval_bytes: u64,
) -> Result<ScanOutcome, LogError> {
    let mut outcome = ScanOutcome {
        valid_end: start.position,
        next_seq: start.seq,
        first_timestamp_us: None,
        last_timestamp_us: start.previous_timestamp_us,
        index: Vec::new(),
        failure: None,
    };
    let mut last_indexed = start.last_indexed_position;
    let mut chunk = Vec::new();
    while outcome.valid_end < end {
        let chunk_start = outcome.valid_end;
        read_chunk(file, path, chunk_start, end, &mut chunk)?;
        let mut offset = 0;
        loop {
            let position = chunk_start + offset as u64;
            let view = match record::decode(&chunk[offset..]) {
                Ok(view) => view,
                Err(DecodeError::Incomplete { .. }) if position < end && offset > 0 => break,
                Err(error) => {
                    outcome.failure = Some((position, CorruptionReason::Decode(error)));
                    return Ok(outcome);
                }
            };
            if let Err(reason) = check_sequence(&view, outcome.next_seq, outcome.last_timestamp_us)
            {
                outcome.failure = Some((position, reason));
                return Ok(outcome);
            }
            if last_indexed.is_none_or(|indexed| position - indexed >= index_interval_bytes) {
                outcome.index.push(IndexEntry::new(
                    base_seq,
                    view.seq,
                    position,
                    view.timestamp_us,
                ));
                last_indexed = Some(position);
            }
            outcome.first_timestamp_us.get_or_insert(view.timestamp_us);
            outcome.last_timestamp_us = view.timestamp_us;
            outcome.next_seq += 1;
            offset += view.frame_bytes();
            outcome.valid_end = chunk_start + offset as u64;
            if outcome.valid_end >= end {
                break;
            }
        }
    }
    Ok(outcome)
}

/// Asserts the invariants every record read from disk must hold against its predecessor.
pub fn check_sequence(
    view: &RecordView<'_>,
    expected_seq: u64,
    previous_timestamp_us: u64,
) -> Result<(), CorruptionReason> {
    if view.seq != expected_seq {
        return Err(CorruptionReason::UnexpectedSeq {
            expected: expected_seq,
            found: view.seq,
        });
    }
    if view.timestamp_us < previous_timestamp_us {
        return Err(CorruptionReason::TimestampBackwards {
            previous: previous_timestamp_us,
            found: view.timestamp_us,
        });
    }
    Ok(())
}

/// Fills `chunk` with the bytes from `position`, at least one whole record where the file has
/// one, and at most `READ_CHUNK_BYTES` unless a single record is larger.
pub fn read_chunk(
    file: &File,
    path: &Path,
    position: u64,
    end: u64,
    chunk: &mut Vec<u8>,
) -> Result<(), LogError> {
    let available = (end - position) as usize;
    let length = available.min(READ_CHUNK_BYTES);
    read_into(file, chunk, length, position).at(path)?;
    if let Some(frame_bytes) = record::peek_frame_bytes(chunk)
        && frame_bytes > length
        && frame_bytes <= available
    {
        read_into(file, chunk, frame_bytes, position).at(path)?;
    }
    Ok(())
}

/// Replaces `chunk` with the `length` bytes at `position`, read into its spare capacity rather
/// than over zeros: each read is a fresh chunk (its events keep slices of it), and zero-filling
/// 256 KiB first cost as much as a memset of every byte read (docs/PERFORMANCE.md).
fn read_into(
    file: &File,
    chunk: &mut Vec<u8>,
    length: usize,
    position: u64,
) -> std::io::Result<()> {
    chunk.clear();
    chunk.reserve_exact(length);
    while chunk.len() < length {
        let offset = position + chunk.len() as u64;
        if rustix::io::pread(file, rustix::buffer::spare_capacity(chunk), offset)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    // A spare capacity larger than asked for may have taken bytes past `length`.
    chunk.truncate(length);
    Ok(())
}

/// Looks past an invalid record for any later valid one. Finding one means the damage is in the
/// middle of the data, not a torn tail, so truncating would discard good records.
pub fn valid_record_after(
    file: &File,
    path: &Path,
    position: u64,
    end: u64,
    seq_floor: u64,
) -> Result<Option<u64>, LogError> {
    let mut chunk = Vec::new();
    let mut window_start = position + 1;
    while window_start + (RECORD_HEADER_BYTES as u64) <= end {
        let length = ((end - window_start) as usize).min(READ_CHUNK_BYTES + RECORD_HEADER_BYTES);
        chunk.resize(length, 0);
        file.read_exact_at(&mut chunk, window_start).at(path)?;
        let candidates = length.saturating_sub(RECORD_HEADER_BYTES - 1);
        for offset in 0..candidates {
            let seq = record::read_u64(&chunk, offset + 8);
            // Only a header whose seq could follow the damage is worth a checksum.
            if seq < seq_floor || seq - seq_floor > u32::MAX as u64 {
                continue;
            }
            let Some(frame_bytes) = record::peek_frame_bytes(&chunk[offset..]) else {
                continue;
            };
            let candidate = window_start + offset as u64;
            if candidate + frame_bytes as u64 > end {
                continue;
            }
            let mut frame = vec![0; frame_bytes];
            file.read_exact_at(&mut frame, candidate).at(path)?;
            if record::decode(&frame).is_ok() {
                return Ok(Some(candidate));
            }
        }
        window_start += candidates.max(1) as u64;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_sort_by_seq_and_parse_back() {
        assert_eq!(log_file_name(42), "00000000000000000042.log");
        assert_eq!(parse_file_name("00000000000000000042.log", "log"), Some(42));
        assert_eq!(
            parse_file_name("00000000000000000042.index", "index"),
            Some(42)
        );
        for name in [
            "42.log",
            "0000000000000000004x.log",
            "00000000000000000042.lo",
            "LOCK",
        ] {
            assert_eq!(parse_file_name(name, "log"), None, "{name}");
        }
    }

    #[test]
    fn header_round_trips_and_names_its_damage() {
        let header = encode_header(1234);
        assert_eq!(decode_header(&header), Ok(1234));
        let mut bad_magic = header;
        bad_magic[0] = b'X';
        assert!(decode_header(&bad_magic).unwrap_err().contains("magic"));
        let mut bad_seq = header;
        bad_seq[16] ^= 1;
        assert!(decode_header(&bad_seq).unwrap_err().contains("checksum"));
        assert!(
            decode_header(&header[..10])
                .unwrap_err()
                .contains("shorter")
        );
    }
}
