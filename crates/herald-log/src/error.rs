use std::io;
use std::path::PathBuf;

use crate::record::DecodeError;

/// Everything that can go wrong with a log. Corruption errors name the file and byte position so
/// that an operator can inspect it, and say whether `repair` would help.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "corrupt record in {path} at byte {position}: {reason}; records after it exist, so this is \
         not a torn write (open with repair to truncate the log at the last valid record)"
    )]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: CorruptionReason,
    },
    #[error("invalid segment header in {path}: {reason}")]
    BadSegmentHeader { path: PathBuf, reason: String },
    #[error(
        "sequence gap between segments: {path} starts at seq {found}, but the previous segment \
         ends at seq {expected_minus_one}"
    )]
    SequenceGap {
        path: PathBuf,
        found: u64,
        expected_minus_one: u64,
    },
    #[error("the log directory {path} is locked by another process")]
    Locked { path: PathBuf },
    #[error("payload of {bytes} bytes exceeds the log's limit of {max} bytes")]
    PayloadTooLarge { bytes: usize, max: usize },
    #[error("empty append batch")]
    EmptyBatch,
    #[error("invalid log configuration: {0}")]
    InvalidConfig(String),
    #[error(
        "the log stopped accepting writes after an earlier fsync failure ({0}); reopen it to \
         recover what reached the disk"
    )]
    Poisoned(String),
    #[error("the log is closed")]
    Closed,
}

/// What was found where a valid record should be.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CorruptionReason {
    #[error("{0}")]
    Decode(DecodeError),
    #[error("expected seq {expected}, found {found}")]
    UnexpectedSeq { expected: u64, found: u64 },
    #[error("timestamp {found} goes back before {previous}")]
    TimestampBackwards { previous: u64, found: u64 },
}

pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T, LogError>;
}

impl<T> IoContext<T> for Result<T, io::Error> {
    fn at(self, path: &std::path::Path) -> Result<T, LogError> {
        self.map_err(|source| LogError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}
