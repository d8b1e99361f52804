//! Opening a log directory: find the segments, check what recovery must check, and decide, from
//! a table, what to do with each segment's state.
//!
//! Sealed segments were fsynced whole before the next segment was created, so any damage in
//! them is corruption, not a crash artefact: by default the open fails with an error naming the
//! file and position. Only the active (last) segment can legitimately end in a torn record,
//! which recovery truncates with a warning. `repair` turns every failure into a truncation at the
//! last valid record.
//!
//! Opening costs O(segments), not O(bytes): a sealed segment is checked through its index (the
//! first record, and the records after the last index entry); only the active segment, at most
//! `segment_bytes_max`, is scanned whole.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use tracing::warn;

use crate::config::LogConfig;
use crate::error::{CorruptionReason, IoContext, LogError};
use crate::index::{self, INDEX_ENTRY_BYTES, IndexEntry, IndexSource};
use crate::record;
use crate::segment::{self, SEGMENT_HEADER_BYTES, ScanOutcome, ScanStart, SegmentPaths};
use crate::state::{SegmentInfo, SegmentSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Sealed,
    Active,
}

/// What inspecting a segment file found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentState {
    Clean,
    /// The last record is incomplete or invalid and nothing valid follows it.
    TornTail,
    /// An invalid record with valid records after it.
    CorruptWithin,
    /// The file is shorter than a header: it was being created when the process died.
    HeaderIncomplete,
    /// A full-length header that is not valid.
    HeaderInvalid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Accept,
    /// Cut the file at the end of the last valid record, with a warning.
    TruncateTail,
    /// Rewrite the header of a segment that never held a record.
    Recreate,
    Fail,
    /// Cut at the last valid record and delete every later segment.
    RepairTruncate,
    /// Delete this segment and every later one.
    RepairDropFromHere,
}

/// `(role, state, repair) → decision`. Every combination appears exactly once (tested).
#[rustfmt::skip]
pub const RECOVERY_CASES: &[(Role, SegmentState, bool, Decision)] = {
    use Decision::*; use Role::*; use SegmentState::*;
    &[
        (Active, Clean,            false, Accept),
        (Active, Clean,            true,  Accept),
        (Active, TornTail,         false, TruncateTail),
        (Active, TornTail,         true,  TruncateTail),
        (Active, CorruptWithin,    false, Fail),
        (Active, CorruptWithin,    true,  RepairTruncate),
        (Active, HeaderIncomplete, false, Recreate),
        (Active, HeaderIncomplete, true,  Recreate),
        (Active, HeaderInvalid,    false, Fail),
        (Active, HeaderInvalid,    true,  RepairDropFromHere),
        (Sealed, Clean,            false, Accept),
        (Sealed, Clean,            true,  Accept),
        (Sealed, TornTail,         false, Fail),
        (Sealed, TornTail,         true,  RepairTruncate),
        (Sealed, CorruptWithin,    false, Fail),
        (Sealed, CorruptWithin,    true,  RepairTruncate),
        (Sealed, HeaderIncomplete, false, Fail),
        (Sealed, HeaderIncomplete, true,  RepairDropFromHere),
        (Sealed, HeaderInvalid,    false, Fail),
        (Sealed, HeaderInvalid,    true,  RepairDropFromHere),
    ]
};

pub fn decide(role: Role, state: SegmentState, repair: bool) -> Decision {
    RECOVERY_CASES
        .iter()
        .find(|case| case.0 == role && case.1 == state && case.2 == repair)
        .map_or(Decision::Fail, |case| case.3)
}

/// A recovered log, ready for its writer.
#[derive(Debug)]
pub struct Recovered {
    pub set: SegmentSet,
    pub active_file: File,
    pub last_indexed_position: Option<u64>,
}

/// What inspecting one segment found, with the valid prefix it describes.
struct Inspection {
    state: SegmentState,
    info: SegmentInfo,
    /// Entries for a full scan; empty when a sealed segment's index file was trusted.
    index: Vec<IndexEntry>,
    index_trusted: bool,
    failure: Option<(u64, CorruptionReason)>,
    header_problem: Option<String>,
}

pub fn recover(dir: &Path, config: &LogConfig) -> Result<Recovered, LogError> {
    let bases = list_segments(dir)?;
    let mut sealed: VecDeque<SegmentInfo> = VecDeque::new();
    for (at, &base_seq) in bases.iter().enumerate() {
        let role = if at + 1 == bases.len() {
            Role::Active
        } else {
            Role::Sealed
        };
        let paths = SegmentPaths::new(dir, base_seq);
        if let Some(previous) = sealed.back()
            && previous.next_seq != base_seq
        {
            let gap = LogError::SequenceGap {
                path: paths.log.clone(),
                found: base_seq,
                expected_minus_one: previous.next_seq - 1,
            };
            if !config.repair {
                return Err(gap);
            }
            warn!(error = %gap, "repair: dropping this segment and every later one");
            let next_seq = previous.next_seq;
            delete_segments(dir, &bases[at..])?;
            return start_fresh_active(dir, sealed, next_seq);
        }
        let inspection = inspect(&paths, base_seq, role, config)?;
        let decision = decide(role, inspection.state, config.repair);
        match (decision, role) {
            (Decision::Accept, Role::Sealed) => {
                if !inspection.index_trusted {
                    warn!(segment = %paths.log.display(), "rebuilt a missing or invalid index");
                    index::write_index_file(&paths.index, &inspection.index)?;
                    sync_dir(dir)?;
                }
                if inspection.info.records() > 0 {
                    sealed.push_back(inspection.info);
                } else {
                    delete_segments(dir, &[base_seq])?;
                }
            }
            (Decision::Accept, Role::Active) => return open_active(sealed, inspection),
            (Decision::TruncateTail, _) | (Decision::RepairTruncate, Role::Active) => {
                warn!(
                    segment = %paths.log.display(),
                    position = inspection.info.bytes,
                    reason = ?inspection.failure.as_ref().map(|failure| &failure.1),
                    "truncating an invalid tail (a write torn by a crash)"
                );
                truncate(&paths.log, inspection.info.bytes)?;
                return open_active(sealed, inspection);
            }
            (Decision::RepairTruncate, Role::Sealed) => {
                warn!(segment = %paths.log.display(), position = inspection.info.bytes,
                    "repair: truncating a sealed segment and dropping every later one");
                truncate(&paths.log, inspection.info.bytes)?;
                delete_segments(dir, &bases[at + 1..])?;
                let rescanned = inspect(&paths, base_seq, Role::Active, config)?;
                index::write_index_file(&paths.index, &rescanned.index)?;
                let next_seq = rescanned.info.next_seq;
                if rescanned.info.records() > 0 {
                    sealed.push_back(rescanned.info);
                } else {
                    delete_segments(dir, &[base_seq])?;
                }
                return start_fresh_active(dir, sealed, next_seq);
            }
            (Decision::Recreate, _) => {
                warn!(segment = %paths.log.display(), "rewriting the header of an empty segment");
                create_segment_file(dir, base_seq)?;
                return open_active(sealed, inspect(&paths, base_seq, role, config)?);
            }
            (Decision::RepairDropFromHere, _) => {
                warn!(segment = %paths.log.display(), "repair: dropping a segment with an invalid header and every later one");
                delete_segments(dir, &bases[at..])?;
                let next_seq = sealed.back().map_or(base_seq, |last| last.next_seq);
                return start_fresh_active(dir, sealed, next_seq);
            }
            (Decision::Fail, _) => return Err(failure_error(&paths, &inspection)),
        }
    }
    // Every listed segment was sealed and accepted (or there were none): start a new active one.
    let next_seq = sealed.back().map_or(1, |last| last.next_seq);
    start_fresh_active(dir, sealed, next_seq)
}

fn failure_error(paths: &SegmentPaths, inspection: &Inspection) -> LogError {
    match &inspection.failure {
        None => LogError::BadSegmentHeader {
            path: paths.log.clone(),
            reason: inspection
                .header_problem
                .clone()
                .unwrap_or_else(|| format!("{:?}", inspection.state)),
        },
        Some((position, reason)) => LogError::Corrupt {
            path: paths.log.clone(),
            position: *position,
            reason: reason.clone(),
        },
    }
}

/// Segment base seqs in the directory, oldest first. Leftover temporary files are removed.
fn list_segments(dir: &Path) -> Result<Vec<u64>, LogError> {
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") {
            fs::remove_file(entry.path()).at(&entry.path())?;
        } else if let Some(base_seq) = segment::parse_file_name(name, "log") {
            bases.push(base_seq);
        }
    }
    bases.sort_unstable();
    // An index whose segment retention already deleted is an orphan.
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let name = entry.file_name();
        if let Some(base_seq) = name
            .to_str()
            .and_then(|name| segment::parse_file_name(name, "index"))
            && bases.binary_search(&base_seq).is_err()
        {
            fs::remove_file(entry.path()).at(&entry.path())?;
        }
    }
    Ok(bases)
}

fn inspect(
    paths: &SegmentPaths,
    base_seq: u64,
    role: Role,
    config: &LogConfig,
) -> Result<Inspection, LogError> {
    let file = File::open(&paths.log).at(&paths.log)?;
    let file_bytes = file.metadata().at(&paths.log)?.len();
    let mut inspection = Inspection {
        state: SegmentState::Clean,
        info: SegmentInfo::empty(base_seq, paths.clone()),
        index: Vec::new(),
        index_trusted: false,
        failure: None,
        header_problem: None,
    };
    let mut header = [0; SEGMENT_HEADER_BYTES as usize];
    let header_bytes = (file_bytes.min(SEGMENT_HEADER_BYTES)) as usize;
    file.read_exact_at(&mut header[..header_bytes], 0)
        .at(&paths.log)?;
    match segment::decode_header(&header[..header_bytes]) {
        Err(reason) if file_bytes < SEGMENT_HEADER_BYTES => {
            inspection.state = SegmentState::HeaderIncomplete;
            inspection.header_problem = Some(reason);
            return Ok(inspection);
        }
        Err(reason) => return Ok(header_invalid(inspection, reason)),
        Ok(found) if found != base_seq => {
            let reason = format!("header says base seq {found}, file name says {base_seq}");
            return Ok(header_invalid(inspection, reason));
        }
        Ok(_) => {}
    }

    let trusted_start = match role {
        Role::Sealed => trusted_index_tail(&file, paths, base_seq)?,
        Role::Active => None,
    };
    let (start, first_timestamp_us) = match trusted_start {
        Some((last, first_timestamp_us)) => (
            ScanStart {
                position: last.position as u64,
                seq: last.seq(base_seq),
                previous_timestamp_us: last.timestamp_us,
                last_indexed_position: None,
            },
            Some(first_timestamp_us),
        ),
        None => (ScanStart::segment_start(base_seq, 0), None),
    };
    let outcome = segment::scan(
        &file,
        &paths.log,
        base_seq,
        start,
        file_bytes,
        config.index_interval_bytes,
    )?;
    inspection.index_trusted = trusted_start.is_some();
    fill_from_scan(&mut inspection, &outcome, first_timestamp_us);
    if !inspection.index_trusted {
        inspection.index = outcome.index;
    }
    if let Some((position, reason)) = outcome.failure {
        let later =
            segment::valid_record_after(&file, &paths.log, position, file_bytes, outcome.next_seq)?;
        inspection.state = match later {
            Some(_) => SegmentState::CorruptWithin,
            None => SegmentState::TornTail,
        };
        inspection.failure = Some((position, reason));
    }
    Ok(inspection)
}

fn header_invalid(mut inspection: Inspection, reason: String) -> Inspection {
    inspection.state = SegmentState::HeaderInvalid;
    inspection.header_problem = Some(reason);
    inspection
}

fn fill_from_scan(inspection: &mut Inspection, outcome: &ScanOutcome, first: Option<u64>) {
    let info = &mut inspection.info;
    info.next_seq = outcome.next_seq;
    info.bytes = outcome.valid_end;
    info.last_timestamp_us = outcome.last_timestamp_us;
    info.first_timestamp_us = first.or(outcome.first_timestamp_us);
}

/// The last entry of a sealed segment's index and the first record's timestamp, when the index
/// file looks right and its first and last entries point at the records they name.
fn trusted_index_tail(
    file: &File,
    paths: &SegmentPaths,
    base_seq: u64,
) -> Result<Option<(IndexEntry, u64)>, LogError> {
    let Ok(index_file) = File::open(&paths.index) else {
        return Ok(None);
    };
    let index_bytes = index_file.metadata().at(&paths.index)?.len();
    if index_bytes == 0 || index_bytes % INDEX_ENTRY_BYTES as u64 != 0 {
        return Ok(None);
    }
    let source = IndexSource::File(&index_file);
    let first = source.entry(&paths.index, 0)?;
    let last = source.entry(&paths.index, source.len(&paths.index)? - 1)?;
    if first.relative_seq != 0 || first.position as u64 != SEGMENT_HEADER_BYTES {
        return Ok(None);
    }
    for entry in [first, last] {
        if !entry_points_at_its_record(file, paths, base_seq, &entry)? {
            return Ok(None);
        }
    }
    Ok(Some((last, first.timestamp_us)))
}

pub fn entry_points_at_its_record(
    file: &File,
    paths: &SegmentPaths,
    base_seq: u64,
    entry: &IndexEntry,
) -> Result<bool, LogError> {
    let file_bytes = file.metadata().at(&paths.log)?.len();
    let position = entry.position as u64;
    if position + record::RECORD_HEADER_BYTES as u64 > file_bytes {
        return Ok(false);
    }
    let mut header = [0; record::RECORD_HEADER_BYTES];
    file.read_exact_at(&mut header, position).at(&paths.log)?;
    Ok(record::read_u64(&header, 8) == entry.seq(base_seq)
        && record::read_u64(&header, 16) == entry.timestamp_us)
}

fn open_active(
    sealed: VecDeque<SegmentInfo>,
    inspection: Inspection,
) -> Result<Recovered, LogError> {
    let path = &inspection.info.paths.log;
    let active_file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .at(path)?;
    // The active segment's index lives in memory; a file left by an earlier seal is stale.
    let index_path = &inspection.info.paths.index;
    if index_path.exists() {
        fs::remove_file(index_path).at(index_path)?;
    }
    let last_indexed_position = inspection.index.last().map(|entry| entry.position as u64);
    Ok(Recovered {
        set: SegmentSet {
            sealed,
            active: inspection.info,
            active_index: inspection.index,
        },
        active_file,
        last_indexed_position,
    })
}

fn start_fresh_active(
    dir: &Path,
    sealed: VecDeque<SegmentInfo>,
    base_seq: u64,
) -> Result<Recovered, LogError> {
    let active_file = create_segment_file(dir, base_seq)?;
    Ok(Recovered {
        set: SegmentSet {
            sealed,
            active: SegmentInfo::empty(base_seq, SegmentPaths::new(dir, base_seq)),
            active_index: Vec::new(),
        },
        active_file,
        last_indexed_position: None,
    })
}

/// Creates (or resets) a segment file holding only its header, durably.
pub fn create_segment_file(dir: &Path, base_seq: u64) -> Result<File, LogError> {
    let paths = SegmentPaths::new(dir, base_seq);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&paths.log)
        .at(&paths.log)?;
    file.write_all(&segment::encode_header(base_seq))
        .at(&paths.log)?;
    file.sync_all().at(&paths.log)?;
    sync_dir(dir)?;
    Ok(file)
}

pub fn delete_segments(dir: &Path, bases: &[u64]) -> Result<(), LogError> {
    for &base_seq in bases {
        let paths = SegmentPaths::new(dir, base_seq);
        for path in [&paths.index, &paths.log] {
            match fs::remove_file(path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(LogError::Io {
                        path: path.clone(),
                        source: error,
                    });
                }
                _ => {}
            }
        }
    }
    sync_dir(dir)
}

fn truncate(path: &Path, bytes: u64) -> Result<(), LogError> {
    let file = OpenOptions::new().write(true).open(path).at(path)?;
    file.set_len(bytes).at(path)?;
    file.sync_all().at(path)
}

/// Makes a create, rename or delete in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir).and_then(|handle| handle.sync_all()).at(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLES: [Role; 2] = [Role::Sealed, Role::Active];
    const STATES: [SegmentState; 5] = [
        SegmentState::Clean,
        SegmentState::TornTail,
        SegmentState::CorruptWithin,
        SegmentState::HeaderIncomplete,
        SegmentState::HeaderInvalid,
    ];

    #[test]
    fn recovery_cases_are_exhaustive_and_unambiguous() {
        for role in ROLES {
            for state in STATES {
                for repair in [false, true] {
                    let rows = RECOVERY_CASES
                        .iter()
                        .filter(|case| case.0 == role && case.1 == state && case.2 == repair)
                        .count();
                    assert_eq!(rows, 1, "{role:?} {state:?} repair={repair}");
                }
            }
        }
        assert_eq!(RECOVERY_CASES.len(), ROLES.len() * STATES.len() * 2);
    }

    #[test]
    fn recovery_never_silently_drops_data_without_repair() {
        for &(role, state, repair, decision) in RECOVERY_CASES {
            if !repair {
                assert!(
                    !matches!(
                        decision,
                        Decision::RepairTruncate | Decision::RepairDropFromHere
                    ),
                    "{role:?} {state:?}"
                );
            }
            if role == Role::Sealed && state != SegmentState::Clean && !repair {
                assert_eq!(decision, Decision::Fail, "sealed damage must stop the open");
            }
        }
    }
}
