//! The in-memory picture of a file log's segments, shared by the writer and the readers.
//!
//! Memory is bounded by the number of segments, not by the bytes they hold: a sealed segment is
//! a few numbers and two paths; only the active segment keeps its sparse index in memory.

use std::collections::VecDeque;

use crate::index::IndexEntry;
use crate::segment::{SEGMENT_HEADER_BYTES, SegmentPaths};

#[derive(Clone, Debug)]
pub struct SegmentInfo {
    pub base_seq: u64,
    /// One past the last record's seq; equals `base_seq` when the segment is empty.
    pub next_seq: u64,
    pub first_timestamp_us: Option<u64>,
    pub last_timestamp_us: u64,
    /// Bytes of valid data, header included.
    pub bytes: u64,
    pub paths: SegmentPaths,
}

impl SegmentInfo {
    pub fn empty(base_seq: u64, paths: SegmentPaths) -> SegmentInfo {
        SegmentInfo {
            base_seq,
            next_seq: base_seq,
            first_timestamp_us: None,
            last_timestamp_us: 0,
            bytes: SEGMENT_HEADER_BYTES,
            paths,
        }
    }

    pub fn records(&self) -> u64 {
        self.next_seq - self.base_seq
    }

    pub fn contains(&self, seq: u64) -> bool {
        (self.base_seq..self.next_seq).contains(&seq)
    }
}

#[derive(Debug)]
pub struct SegmentSet {
    /// Oldest first; retention pops from the front.
    pub sealed: VecDeque<SegmentInfo>,
    pub active: SegmentInfo,
    pub active_index: Vec<IndexEntry>,
}

/// Where a reader should start looking for a seq.
#[derive(Clone, Debug)]
pub struct Located {
    pub segment: SegmentInfo,
    pub sealed: bool,
    /// From the active segment's in-memory index; sealed segments are looked up in their file.
    pub hint: Option<IndexEntry>,
}

impl SegmentSet {
    pub fn first_seq(&self) -> u64 {
        self.sealed
            .front()
            .map_or(self.active.base_seq, |segment| segment.base_seq)
    }

    pub fn next_seq(&self) -> u64 {
        self.active.next_seq
    }

    pub fn bytes(&self) -> u64 {
        self.sealed.iter().map(|segment| segment.bytes).sum::<u64>() + self.active.bytes
    }

    pub fn segments(&self) -> impl Iterator<Item = &SegmentInfo> {
        self.sealed.iter().chain(std::iter::once(&self.active))
    }

    /// The segment holding `seq`, or the first one after it when `seq` was trimmed.
    pub fn locate(&self, seq: u64) -> Located {
        let seq = seq.max(self.first_seq());
        let sealed_at = self
            .sealed
            .partition_point(|segment| segment.next_seq <= seq);
        if let Some(segment) = self.sealed.get(sealed_at) {
            return Located {
                segment: segment.clone(),
                sealed: true,
                hint: None,
            };
        }
        let base_seq = self.active.base_seq;
        let at = self
            .active_index
            .partition_point(|entry| entry.seq(base_seq) <= seq);
        Located {
            segment: self.active.clone(),
            sealed: false,
            hint: at.checked_sub(1).map(|at| self.active_index[at]),
        }
    }

    /// The first segment whose records reach `timestamp_us`, if any does.
    pub fn locate_time(&self, timestamp_us: u64) -> Option<Located> {
        let sealed_at = self
            .sealed
            .partition_point(|segment| segment.last_timestamp_us < timestamp_us);
        if let Some(segment) = self.sealed.get(sealed_at) {
            return Some(Located {
                segment: segment.clone(),
                sealed: true,
                hint: None,
            });
        }
        if self.active.records() == 0 || self.active.last_timestamp_us < timestamp_us {
            return None;
        }
        let at = self
            .active_index
            .partition_point(|entry| entry.timestamp_us < timestamp_us);
        Some(Located {
            segment: self.active.clone(),
            sealed: false,
            hint: at.checked_sub(1).map(|at| self.active_index[at]),
        })
    }
}
