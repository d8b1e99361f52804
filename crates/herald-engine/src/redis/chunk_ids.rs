//! The ids the Redis engine gives the events of a chunk published without ids: each says which
//! chunk stored it and where in it, so that dedupe keeps one record per chunk, not one per event.
//!
//! Why: recording every id in the dedupe bucket (`HSET`, one field per event) cost Redis's
//! thread as much as the `XADD`s themselves (one field each into a hash of a whole window of
//! events, growing and rehashing): Herald on Redis published about half as fast as plain
//! `XADD`s (docs/PERFORMANCE.md). An id made here records nothing of its own; `STAMP` records
//! the chunk (`<first seq>:<count>` under [`ChunkIds::record_field`]) and `PUBLISH` finds an id
//! sent back by its chunk's record and its position.
//!
//! The ids are RFC 9562 UUIDv7, as every id Herald makes: 48 bits of Unix milliseconds, the
//! version, the event's position in its chunk in the 12 bits of `rand_a`, then in `rand_b` the
//! variant and [`MARK`] (so that `PUBLISH` tells them from the UUIDv7s clients choose without a
//! look-up) and 48 random bits drawn once per chunk. The chunk's record is keyed by its time and
//! random bits, so an id is found only if all of it was made here: another position, time or
//! tag is another record or none, and a position past the chunk's count is refused.

use herald_core::EventId;
use uuid::Uuid;

/// The 16 bits after `rand_a` in every id made here (`b7e5` in the text): RFC 9562's variant
/// (`0b10`) and a fixed mark.
pub(crate) const MARK: u16 = 0xb7e5;

/// Events a chunk may hold: a position is three hex digits of `rand_a`.
pub(crate) const CHUNK_EVENTS_MAX: usize = 1 << 12;

const TAG_BITS: u32 = 48;
const MILLISECONDS_MAX: u64 = (1 << 48) - 1;

/// The ids of one chunk: one time and one random tag, a position each.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChunkIds {
    milliseconds: u64,
    tag: u64,
}

impl ChunkIds {
    /// `milliseconds` since the Unix epoch; `random` gives the tag its bits.
    pub fn new(milliseconds: u64, random: u64) -> ChunkIds {
        ChunkIds {
            milliseconds: milliseconds.min(MILLISECONDS_MAX),
            tag: random & ((1 << TAG_BITS) - 1),
        }
    }

    /// The id of the chunk's `position`-th event (below [`CHUNK_EVENTS_MAX`]).
    pub fn id(&self, position: usize) -> EventId {
        debug_assert!(
            position < CHUNK_EVENTS_MAX,
            "a chunk holds at most 4096 events"
        );
        let value = (u128::from(self.milliseconds) << 80)
            | (0x7 << 76)
            | ((position as u128 & 0xfff) << 64)
            | (u128::from(MARK) << TAG_BITS)
            | u128::from(self.tag);
        EventId::from_uuid(&Uuid::from_u128(value))
    }

    /// The dedupe bucket's field holding the chunk's record: a control character (no event id
    /// holds one), the id's time digits and its tag digits. `PUBLISH` builds the same from an id.
    pub fn record_field(&self) -> String {
        let text = self.id(0);
        let text = text.as_str();
        format!("\x01{}{}", &text[..13], &text[24..])
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn ids_are_uuid_v7_with_their_time_position_and_mark(
            milliseconds in 0..=MILLISECONDS_MAX,
            random: u64,
            position in 0..CHUNK_EVENTS_MAX,
        ) {
            let chunk = ChunkIds::new(milliseconds, random);
            let id = chunk.id(position);
            let uuid = Uuid::parse_str(id.as_str()).unwrap();
            prop_assert_eq!(uuid.get_version_num(), 7);
            prop_assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
            prop_assert_eq!(id.as_str(), id.as_str().to_lowercase());
            // What `PUBLISH` reads of it, by position in the text.
            let text = id.as_str();
            prop_assert_eq!(&text[14..15], "7");
            prop_assert_eq!(usize::from_str_radix(&text[15..18], 16).unwrap(), position);
            prop_assert_eq!(&text[19..23], format!("{MARK:x}"));
            let expected_field = format!("\x01{}{}", &text[..13], &text[24..]);
            prop_assert_eq!(chunk.record_field(), expected_field);
            let (seconds, nanos) = uuid.get_timestamp().unwrap().to_unix();
            prop_assert_eq!(seconds * 1000 + u64::from(nanos) / 1_000_000, milliseconds);
        }

        #[test]
        fn the_ids_of_a_chunk_differ_and_share_its_record(random: u64, a in 0..CHUNK_EVENTS_MAX, b in 0..CHUNK_EVENTS_MAX) {
            prop_assume!(a != b);
            let chunk = ChunkIds::new(1_765_000_000_000, random);
            prop_assert_ne!(chunk.id(a), chunk.id(b));
        }
    }

    #[test]
    fn chunks_of_another_time_or_tag_have_records_of_their_own() {
        let chunk = ChunkIds::new(1_765_000_000_000, 7);
        assert_ne!(
            chunk.record_field(),
            ChunkIds::new(1_765_000_000_001, 7).record_field()
        );
        assert_ne!(
            chunk.record_field(),
            ChunkIds::new(1_765_000_000_000, 8).record_field()
        );
        // Bits above the tag's 48 are not part of it.
        assert_eq!(
            chunk.record_field(),
            ChunkIds::new(1_765_000_000_000, 7 | 1 << 48).record_field()
        );
    }
}
