//! A read-only full check of a log directory, for operators (`herald log verify`): every record
//! of every segment is read and checked, which opening deliberately does not do.

use std::fs::{self, File};
use std::path::Path;

use crate::error::{IoContext, LogError};
use crate::index;
use crate::segment::{self, SEGMENT_HEADER_BYTES, ScanStart, SegmentPaths};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentReport {
    pub base_seq: u64,
    pub records: u64,
    pub bytes: u64,
    pub first_timestamp_us: Option<u64>,
    pub last_timestamp_us: Option<u64>,
    /// What is wrong with the segment, if anything.
    pub problems: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub segments: Vec<SegmentReport>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.segments
            .iter()
            .all(|segment| segment.problems.is_empty())
    }

    pub fn records(&self) -> u64 {
        self.segments.iter().map(|segment| segment.records).sum()
    }
}

/// Checks every segment of the log in `dir` without changing anything: headers, every record's
/// checksum, seq continuity within and across segments, timestamp order, and that each sealed
/// segment's index matches its records.
pub fn verify(dir: &Path, index_interval_bytes: u64) -> Result<VerifyReport, LogError> {
    let mut bases: Vec<u64> = fs::read_dir(dir)
        .at(dir)?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| segment::parse_file_name(entry.file_name().to_str()?, "log"))
        .collect();
    bases.sort_unstable();
    let mut report = VerifyReport::default();
    let mut expected_base: Option<u64> = None;
    let mut previous_timestamp_us = 0;
    for (at, &base_seq) in bases.iter().enumerate() {
        let paths = SegmentPaths::new(dir, base_seq);
        let file = File::open(&paths.log).at(&paths.log)?;
        let file_bytes = file.metadata().at(&paths.log)?.len();
        let mut segment = SegmentReport {
            base_seq,
            records: 0,
            bytes: file_bytes,
            first_timestamp_us: None,
            last_timestamp_us: None,
            problems: Vec::new(),
        };
        if let Some(expected) = expected_base
            && expected != base_seq
        {
            segment
                .problems
                .push(format!("starts at seq {base_seq}, expected {expected}"));
        }
        let mut header = vec![0; file_bytes.min(SEGMENT_HEADER_BYTES) as usize];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut header, 0).at(&paths.log)?;
        match segment::decode_header(&header) {
            Err(problem) => {
                segment.problems.push(format!("header: {problem}"));
                report.segments.push(segment);
                expected_base = None;
                continue;
            }
            Ok(found) if found != base_seq => segment.problems.push(format!(
                "header says base seq {found}, file name says {base_seq}"
            )),
            Ok(_) => {}
        }
        let start = ScanStart::segment_start(base_seq, previous_timestamp_us);
        let outcome = segment::scan(
            &file,
            &paths.log,
            base_seq,
            start,
            file_bytes,
            index_interval_bytes,
        )?;
        segment.records = outcome.next_seq - base_seq;
        segment.first_timestamp_us = outcome.first_timestamp_us;
        segment.last_timestamp_us = (segment.records > 0).then_some(outcome.last_timestamp_us);
        if let Some((position, reason)) = outcome.failure {
            segment
                .problems
                .push(format!("invalid record at byte {position}: {reason}"));
        }
        let sealed = at + 1 < bases.len();
        if sealed {
            match index::read_index_file(&paths.index) {
                Ok(entries) if entries == outcome.index => {}
                Ok(_) => segment
                    .problems
                    .push("index does not match the records (open rebuilds it)".into()),
                Err(_) => segment
                    .problems
                    .push("index missing (open rebuilds it)".into()),
            }
        }
        previous_timestamp_us = outcome.last_timestamp_us;
        expected_base = Some(outcome.next_seq);
        report.segments.push(segment);
    }
    Ok(report)
}
