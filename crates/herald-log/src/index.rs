//! The sparse index of a segment: one entry every `index_interval_bytes` of records, mapping a
//! seq and a timestamp to a byte position. It serves both as the offset index and as the time
//! index, because timestamps in a log never go backwards.
//!
//! `{base_seq:020}.index` is a flat array of 16-byte entries:
//!
//! ```text
//! offset  size  field
//!      0     4  relative_seq   u32 LE, seq - base_seq
//!      4     4  position       u32 LE, byte position of the record in the segment file
//!      8     8  timestamp_us   u64 LE, the record's timestamp
//! ```
//!
//! The index is a hint and the log is the truth: the active segment's index lives in memory
//! and is rebuilt by recovery's scan; a sealed segment's index is written once, when the segment
//! is sealed, and a reader that finds an entry pointing at the wrong record falls back to
//! scanning the segment from its start.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{IoContext, LogError};
use crate::record;

pub const INDEX_ENTRY_BYTES: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub relative_seq: u32,
    pub position: u32,
    pub timestamp_us: u64,
}

impl IndexEntry {
    pub fn new(base_seq: u64, seq: u64, position: u64, timestamp_us: u64) -> IndexEntry {
        assert!(seq >= base_seq && seq - base_seq <= u32::MAX as u64);
        assert!(position <= u32::MAX as u64, "segment positions fit u32");
        IndexEntry {
            relative_seq: (seq - base_seq) as u32,
            position: position as u32,
            timestamp_us,
        }
    }

    pub fn seq(&self, base_seq: u64) -> u64 {
        base_seq + self.relative_seq as u64
    }

    fn encode(&self) -> [u8; INDEX_ENTRY_BYTES] {
        let mut bytes = [0; INDEX_ENTRY_BYTES];
        bytes[0..4].copy_from_slice(&self.relative_seq.to_le_bytes());
        bytes[4..8].copy_from_slice(&self.position.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.timestamp_us.to_le_bytes());
        bytes
    }

    fn decode(bytes: &[u8]) -> IndexEntry {
        IndexEntry {
            relative_seq: record::read_u32(bytes, 0),
            position: record::read_u32(bytes, 4),
            timestamp_us: record::read_u64(bytes, 8),
        }
    }
}

/// Writes a sealed segment's index atomically: temp file, fsync, rename. The caller fsyncs the
/// directory.
pub fn write_index_file(path: &Path, entries: &[IndexEntry]) -> Result<(), LogError> {
    let temporary = path.with_extension("index.tmp");
    let mut bytes = Vec::with_capacity(entries.len() * INDEX_ENTRY_BYTES);
    for entry in entries {
        bytes.extend_from_slice(&entry.encode());
    }
    let mut file = File::create(&temporary).at(&temporary)?;
    file.write_all(&bytes).at(&temporary)?;
    file.sync_all().at(&temporary)?;
    fs::rename(&temporary, path).at(path)?;
    Ok(())
}

/// Read access to index entries, whether they are in memory or in a sealed segment's file.
#[derive(Debug)]
pub enum IndexSource<'a> {
    Memory(&'a [IndexEntry]),
    File(&'a File),
}

impl IndexSource<'_> {
    pub fn len(&self, path: &Path) -> Result<usize, LogError> {
        match self {
            IndexSource::Memory(entries) => Ok(entries.len()),
            IndexSource::File(file) => {
                let bytes = file.metadata().at(path)?.len() as usize;
                Ok(bytes / INDEX_ENTRY_BYTES)
            }
        }
    }

    pub fn entry(&self, path: &Path, at: usize) -> Result<IndexEntry, LogError> {
        match self {
            IndexSource::Memory(entries) => Ok(entries[at]),
            IndexSource::File(file) => {
                let mut bytes = [0; INDEX_ENTRY_BYTES];
                file.read_exact_at(&mut bytes, (at * INDEX_ENTRY_BYTES) as u64)
                    .at(path)?;
                Ok(IndexEntry::decode(&bytes))
            }
        }
    }

    /// The last entry for which `before` holds, assuming `before` is true for a prefix of the
    /// entries (binary search, a few `pread`s for a file).
    pub fn last_where(
        &self,
        path: &Path,
        before: impl Fn(&IndexEntry) -> bool,
    ) -> Result<Option<IndexEntry>, LogError> {
        let (mut low, mut high) = (0, self.len(path)?);
        while low < high {
            let middle = low + (high - low) / 2;
            if before(&self.entry(path, middle)?) {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        if low == 0 {
            return Ok(None);
        }
        self.entry(path, low - 1).map(Some)
    }
}

/// Loads every entry of an index file; used only when a segment is re-sealed by repair.
pub fn read_index_file(path: &Path) -> Result<Vec<IndexEntry>, LogError> {
    let bytes = fs::read(path).at(path)?;
    Ok(bytes
        .chunks_exact(INDEX_ENTRY_BYTES)
        .map(IndexEntry::decode)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_file_round_trips_and_answers_lookups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000100.index");
        let entries: Vec<IndexEntry> = (0..50)
            .map(|step| IndexEntry::new(100, 100 + step * 10, 32 + step * 4096, 1_000 + step * 7))
            .collect();
        write_index_file(&path, &entries).unwrap();
        assert_eq!(read_index_file(&path).unwrap(), entries);

        let file = File::open(&path).unwrap();
        for source in [IndexSource::Memory(&entries), IndexSource::File(&file)] {
            let at_seq = |seq: u64| {
                source
                    .last_where(&path, |entry| entry.seq(100) <= seq)
                    .unwrap()
                    .map(|entry| entry.seq(100))
            };
            assert_eq!(at_seq(99), None);
            assert_eq!(at_seq(100), Some(100));
            assert_eq!(at_seq(109), Some(100));
            assert_eq!(at_seq(110), Some(110));
            assert_eq!(at_seq(10_000), Some(590));
            let before_time = source
                .last_where(&path, |entry| entry.timestamp_us < 1_015)
                .unwrap();
            assert_eq!(before_time.map(|entry| entry.timestamp_us), Some(1_014));
        }
    }
}
