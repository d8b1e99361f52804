//! Record framing: how one appended payload is laid out in a segment file.
//!
//! ```text
//! offset  size  field
//!      0     4  payload_len   u32 LE, bytes of payload after the header
//!      4     4  crc32c        u32 LE, CRC-32C (Castagnoli) of bytes 8 .. 24 + payload_len
//!      8     8  seq           u64 LE, the record's sequence number in its log
//!     16     8  timestamp_us  u64 LE, append time, microseconds since the Unix epoch
//!     24     n  payload       opaque bytes (Herald stores the event's JSON verbatim)
//! ```
//!
//! The CRC covers seq and timestamp as well as the payload, so a record copied to the wrong
//! place, or a header torn from its payload, never passes as valid.

use bytes::Bytes;

/// Bytes of the fixed header in front of every payload.
pub const RECORD_HEADER_BYTES: usize = 24;

/// Largest payload one record may carry. Events are capped far lower (1 MiB by default); this
/// bound lets a decoder reject a garbage length before allocating for it.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 16 * 1024 * 1024;

const _: () = assert!(RECORD_HEADER_BYTES == 4 + 4 + 8 + 8);
const _: () = assert!(RECORD_PAYLOAD_BYTES_MAX <= u32::MAX as usize);

/// One record as readers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub timestamp_us: u64,
    pub payload: Bytes,
}

/// A record decoded in place, borrowing its payload from the buffer it was read into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub seq: u64,
    pub timestamp_us: u64,
    pub payload: &'a [u8],
}

impl RecordView<'_> {
    /// Bytes this record occupies on disk, header included.
    pub fn frame_bytes(&self) -> usize {
        RECORD_HEADER_BYTES + self.payload.len()
    }
}

/// Why bytes at some position are not a valid record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than a header, or fewer than the header's length promises: a torn write, or
    /// simply the end of what has been read so far.
    #[error("incomplete record: {needed} bytes needed, {available} available")]
    Incomplete { needed: usize, available: usize },
    /// The length field is beyond any record this log could have written.
    #[error("record length {payload_len} exceeds the maximum of {RECORD_PAYLOAD_BYTES_MAX} bytes")]
    LengthTooLarge { payload_len: u32 },
    /// The checksum does not match the bytes: the record is corrupt or was never fully written.
    #[error("record checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch { stored: u32, computed: u32 },
}

/// Appends the framed record to `out`.
pub fn encode_into(out: &mut Vec<u8>, seq: u64, timestamp_us: u64, payload: &[u8]) {
    assert!(
        payload.len() <= RECORD_PAYLOAD_BYTES_MAX,
        "payload over the record limit"
    );
    let start = out.len();
    out.reserve(RECORD_HEADER_BYTES + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&timestamp_us.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(
        decode(&out[start..]).map(|view| (view.seq, view.payload.len())),
        Ok((seq, payload.len())),
        "a record must decode right after it is encoded"
    );
}

/// Decodes the record at the start of `bytes`, verifying its checksum.
pub fn decode(bytes: &[u8]) -> Result<RecordView<'_>, DecodeError> {
    if bytes.len() < RECORD_HEADER_BYTES {
        return Err(DecodeError::Incomplete {
            needed: RECORD_HEADER_BYTES,
            available: bytes.len(),
        });
    }
    let payload_len = read_u32(bytes, 0);
    if payload_len as usize > RECORD_PAYLOAD_BYTES_MAX {
        return Err(DecodeError::LengthTooLarge { payload_len });
    }
    let frame_bytes = RECORD_HEADER_BYTES + payload_len as usize;
    if bytes.len() < frame_bytes {
        return Err(DecodeError::Incomplete {
            needed: frame_bytes,
            available: bytes.len(),
        });
    }
    let stored = read_u32(bytes, 4);
    let computed = crc32c::crc32c(&bytes[8..frame_bytes]);
    if stored != computed {
        return Err(DecodeError::ChecksumMismatch { stored, computed });
    }
    Ok(RecordView {
        seq: read_u64(bytes, 8),
        timestamp_us: read_u64(bytes, 16),
        payload: &bytes[RECORD_HEADER_BYTES..frame_bytes],
    })
}

/// The frame length a header promises, without checking anything else; `None` when the header
/// itself is incomplete or the length is impossible.
pub fn peek_frame_bytes(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < RECORD_HEADER_BYTES {
        return None;
    }
    let payload_len = read_u32(bytes, 0) as usize;
    (payload_len <= RECORD_PAYLOAD_BYTES_MAX).then_some(RECORD_HEADER_BYTES + payload_len)
}

pub(crate) fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

pub(crate) fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded(seq: u64, timestamp_us: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_into(&mut out, seq, timestamp_us, payload);
        out
    }

    /// Applies `damage` to a valid record of payload "hello" and checks what decode says.
    fn check(damage: impl FnOnce(&mut Vec<u8>), expect: Result<(u64, &[u8]), DecodeError>) {
        let mut bytes = encoded(7, 1_700_000_000_000_000, b"hello");
        damage(&mut bytes);
        let got = decode(&bytes).map(|view| (view.seq, view.payload));
        assert_eq!(got, expect);
    }

    #[test]
    fn decode_classifies_each_kind_of_damage() {
        check(|_| {}, Ok((7, b"hello")));
        check(
            |bytes| bytes.truncate(10),
            Err(DecodeError::Incomplete {
                needed: 24,
                available: 10,
            }),
        );
        check(
            |bytes| bytes.truncate(27),
            Err(DecodeError::Incomplete {
                needed: 29,
                available: 27,
            }),
        );
        check(
            |bytes| bytes[0..4].copy_from_slice(&u32::MAX.to_le_bytes()),
            Err(DecodeError::LengthTooLarge {
                payload_len: u32::MAX,
            }),
        );
        // A flipped bit in the seq, the timestamp or the payload is caught by the CRC.
        for at in [8, 16, 24, 28] {
            let mut bytes = encoded(7, 1_700_000_000_000_000, b"hello");
            bytes[at] ^= 0x01;
            assert!(matches!(
                decode(&bytes),
                Err(DecodeError::ChecksumMismatch { .. })
            ));
        }
    }

    #[test]
    fn trailing_bytes_are_left_for_the_next_record() {
        let mut bytes = encoded(1, 10, b"a");
        encode_into(&mut bytes, 2, 11, b"bc");
        let first = decode(&bytes).unwrap();
        assert_eq!((first.seq, first.payload), (1, &b"a"[..]));
        let second = decode(&bytes[first.frame_bytes()..]).unwrap();
        assert_eq!(
            (second.seq, second.timestamp_us, second.payload),
            (2, 11, &b"bc"[..])
        );
    }

    proptest! {
        #[test]
        fn every_record_round_trips(seq: u64, timestamp_us: u64, payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let bytes = encoded(seq, timestamp_us, &payload);
            let view = decode(&bytes).unwrap();
            prop_assert_eq!(view.seq, seq);
            prop_assert_eq!(view.timestamp_us, timestamp_us);
            prop_assert_eq!(view.payload, &payload[..]);
            prop_assert_eq!(peek_frame_bytes(&bytes), Some(bytes.len()));
        }

        #[test]
        fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn any_single_bit_flip_is_detected(payload in proptest::collection::vec(any::<u8>(), 0..64), bit in 0usize..(88 * 8)) {
            let mut bytes = encoded(42, 99, &payload);
            let bit = bit % (bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            let decoded = decode(&bytes);
            prop_assert!(decoded.is_err(), "flipped bit {} decoded as {:?}", bit, decoded);
        }
    }
}
