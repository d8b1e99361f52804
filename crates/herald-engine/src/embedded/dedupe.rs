//! Publish dedupe: the ids a stream stored within its window, and those being stored right now.
//!
//! An id being stored is "in flight": a second publish of it waits for the first to finish, then
//! reports the first's seq (or, if the first failed, is stored itself). The table is rebuilt from
//! the log's tail when the stream opens, so dedupe survives a restart. It is bounded by the
//! window and by `DEDUPE_IDS_MAX`.

use std::collections::VecDeque;
use std::hash::BuildHasher;

/// hashbrown's table with its default foldhash: several times faster than SipHash on these short
/// keys, and seeded per process, so ids chosen by publishers cannot be crafted to collide. The
/// raw table rather than a map, so that each id is hashed once when claimed and once when
/// stored, and its expiry finds it by the hash and the seq it kept, without hashing or comparing
/// the id again (a publish profile had the map's four hashes and the expiry's look-up at 10% of
/// the server's time).
use hashbrown::hash_table::Entry;
use hashbrown::{DefaultHashBuilder, HashTable};

use crate::config::DEDUPE_IDS_MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Stored with this seq within the window.
    Stored(u64),
    /// Another publish is storing it now.
    InFlight,
    /// Not seen: the caller now owns it (marked in flight).
    New,
}

#[derive(Debug)]
pub struct Dedupe {
    window_us: u64,
    hasher: DefaultHashBuilder,
    ids: HashTable<Slot>,
    /// Stored ids in the order they were stored, with their timestamps, hashes and seqs, for
    /// expiry.
    stored: VecDeque<Expiry>,
}

/// An id as the table keeps it. Most ids are UUIDs in their canonical text form (every id
/// Herald generates, and those of clients that make UUIDv7s): those are kept as their 16 bytes,
/// inline, with no allocation per id and a shorter hash. The canonical form (36 characters,
/// lowercase hex, hyphens at 8-4-4-4-12) and the 128-bit value map one to one, so two ids are
/// equal exactly when their keys are; any other text, an uppercase UUID included, is kept as
/// text.
#[derive(Debug)]
enum Key {
    Uuid([u64; 2]),
    Text(Box<str>),
}

/// A borrowed [`Key`], for look-ups without allocating.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum KeyRef<'a> {
    Uuid([u64; 2]),
    Text(&'a str),
}

impl<'a> KeyRef<'a> {
    fn of(id: &'a str) -> KeyRef<'a> {
        match canonical_uuid(id) {
            Some(value) => KeyRef::Uuid(value),
            None => KeyRef::Text(id),
        }
    }

    fn matches(self, key: &Key) -> bool {
        match (self, key) {
            (KeyRef::Uuid(a), Key::Uuid(b)) => a == *b,
            (KeyRef::Text(a), Key::Text(b)) => a == &**b,
            _ => false,
        }
    }

    fn to_owned(self) -> Key {
        match self {
            KeyRef::Uuid(value) => Key::Uuid(value),
            KeyRef::Text(text) => Key::Text(text.into()),
        }
    }
}

/// The 128-bit value of a UUID in canonical text form (`8-4-4-4-12` lowercase hex digits), or
/// `None` for any other text. Runs for every stored event: the hyphens are checked at their
/// places and each digit is one table look-up.
fn canonical_uuid(id: &str) -> Option<[u64; 2]> {
    /// Where each group of hex digits starts and ends.
    const GROUPS: [(usize, usize); 5] = [(0, 8), (9, 13), (14, 18), (19, 23), (24, 36)];
    let bytes: &[u8; 36] = id.as_bytes().try_into().ok()?;
    if bytes[8] != b'-' || bytes[13] != b'-' || bytes[18] != b'-' || bytes[23] != b'-' {
        return None;
    }
    let mut value: u128 = 0;
    for (start, end) in GROUPS {
        for &byte in &bytes[start..end] {
            let digit = HEX_DIGITS[usize::from(byte)];
            if digit == NOT_HEX {
                return None;
            }
            value = (value << 4) | u128::from(digit);
        }
    }
    Some([(value >> 64) as u64, value as u64])
}

const NOT_HEX: u8 = 0xff;

/// The value of each lowercase hex digit, `NOT_HEX` for every other byte.
static HEX_DIGITS: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut digit = 0;
    while digit < 10 {
        table[b'0' as usize + digit] = digit as u8;
        digit += 1;
    }
    let mut letter = 0;
    while letter < 6 {
        table[b'a' as usize + letter] = 10 + letter as u8;
        letter += 1;
    }
    table
};

#[derive(Debug)]
struct Slot {
    /// Kept so that growing the table never hashes an id again.
    hash: u64,
    /// `IN_FLIGHT` while in flight.
    seq: u64,
    key: Key,
}

/// A stored id, found again by its hash and its seq: a seq is stored once in a stream, so the
/// slot with that seq is the one this entry recorded, and an id stored again after it was
/// forgotten (a slot of its own, another seq) is left alone.
#[derive(Debug)]
struct Expiry {
    timestamp_us: u64,
    hash: u64,
    seq: u64,
}

/// The seq of a slot whose id is being stored: no log reaches it.
const IN_FLIGHT: u64 = u64::MAX;

impl Dedupe {
    pub fn new(window_us: u64) -> Dedupe {
        Dedupe {
            window_us,
            hasher: DefaultHashBuilder::default(),
            ids: HashTable::new(),
            stored: VecDeque::new(),
        }
    }

    /// Looks `id` up, claiming it when new.
    pub fn check_and_claim(&mut self, id: &str, now_us: u64) -> Seen {
        self.expire(now_us);
        let key = KeyRef::of(id);
        let hash = self.hasher.hash_one(key);
        match self
            .ids
            .entry(hash, |slot| key.matches(&slot.key), |slot| slot.hash)
        {
            Entry::Occupied(slot) => match slot.get().seq {
                IN_FLIGHT => Seen::InFlight,
                seq => Seen::Stored(seq),
            },
            Entry::Vacant(vacant) => {
                vacant.insert(Slot {
                    hash,
                    seq: IN_FLIGHT,
                    key: key.to_owned(),
                });
                Seen::New
            }
        }
    }

    /// Records a claimed id as stored.
    pub fn stored(&mut self, id: &str, seq: u64, timestamp_us: u64) {
        let key = KeyRef::of(id);
        let hash = self.hasher.hash_one(key);
        if self.window_us == 0 {
            if let Ok(slot) = self.ids.find_entry(hash, |slot| key.matches(&slot.key)) {
                slot.remove();
            }
            return;
        }
        match self.ids.find_mut(hash, |slot| key.matches(&slot.key)) {
            Some(slot) => slot.seq = seq,
            None => {
                let slot = Slot {
                    hash,
                    seq,
                    key: key.to_owned(),
                };
                self.ids.insert_unique(hash, slot, |slot| slot.hash);
            }
        }
        self.stored.push_back(Expiry {
            timestamp_us,
            hash,
            seq,
        });
        while self.stored.len() > DEDUPE_IDS_MAX {
            self.forget_oldest();
        }
    }

    /// Gives up a claim after a failed store.
    pub fn release(&mut self, id: &str) {
        let key = KeyRef::of(id);
        let hash = self.hasher.hash_one(key);
        if let Ok(slot) = self.ids.find_entry(hash, |slot| key.matches(&slot.key))
            && slot.get().seq == IN_FLIGHT
        {
            slot.remove();
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.stored.len()
    }

    fn expire(&mut self, now_us: u64) {
        while let Some(oldest) = self.stored.front() {
            if oldest.timestamp_us.saturating_add(self.window_us) > now_us {
                break;
            }
            self.forget_oldest();
        }
    }

    /// Drops the oldest stored id: the slot with its hash that holds its seq.
    fn forget_oldest(&mut self) {
        if let Some(oldest) = self.stored.pop_front()
            && let Ok(slot) = self
                .ids
                .find_entry(oldest.hash, |slot| slot.seq == oldest.seq)
        {
            slot.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_new_then_in_flight_then_stored_until_the_window_passes() {
        let mut dedupe = Dedupe::new(1_000);
        assert_eq!(dedupe.check_and_claim("a", 0), Seen::New);
        assert_eq!(dedupe.check_and_claim("a", 10), Seen::InFlight);
        dedupe.stored("a", 7, 10);
        assert_eq!(dedupe.check_and_claim("a", 500), Seen::Stored(7));
        assert_eq!(dedupe.check_and_claim("a", 1_009), Seen::Stored(7));
        assert_eq!(
            dedupe.check_and_claim("a", 1_010),
            Seen::New,
            "window passed"
        );
    }

    #[test]
    fn a_released_claim_can_be_claimed_again() {
        let mut dedupe = Dedupe::new(1_000);
        assert_eq!(dedupe.check_and_claim("a", 0), Seen::New);
        dedupe.release("a");
        assert_eq!(dedupe.check_and_claim("a", 0), Seen::New);
    }

    #[test]
    fn uuid_ids_and_other_ids_are_told_apart_exactly() {
        let mut dedupe = Dedupe::new(1_000);
        let lower = "0193f1c2-7a4b-7c3d-8e9f-0a1b2c3d4e5f";
        let upper = "0193F1C2-7A4B-7C3D-8E9F-0A1B2C3D4E5F";
        let other = "0193f1c2-7a4b-7c3d-8e9f-0a1b2c3d4e50";
        assert_eq!(dedupe.check_and_claim(lower, 0), Seen::New);
        dedupe.stored(lower, 1, 0);
        assert_eq!(dedupe.check_and_claim(lower, 1), Seen::Stored(1));
        assert_eq!(
            dedupe.check_and_claim(upper, 1),
            Seen::New,
            "ids are compared as text: another case is another id"
        );
        assert_eq!(dedupe.check_and_claim(other, 1), Seen::New);
        dedupe.stored(upper, 2, 1);
        dedupe.stored(other, 3, 1);
        assert_eq!(dedupe.check_and_claim(upper, 2), Seen::Stored(2));
        assert_eq!(dedupe.check_and_claim(other, 2), Seen::Stored(3));
        assert_eq!(dedupe.check_and_claim("order-7", 2), Seen::New);
        dedupe.release("order-7");
        assert_eq!(dedupe.check_and_claim("order-7", 2), Seen::New);
        assert_eq!(
            dedupe.check_and_claim(lower, 1_000),
            Seen::New,
            "window passed"
        );
        assert_eq!(dedupe.check_and_claim(upper, 1_000), Seen::Stored(2));
    }

    #[test]
    fn an_id_stored_again_after_it_expired_keeps_its_new_entry() {
        let mut dedupe = Dedupe::new(1_000);
        let id = "0193f1c2-7a4b-7c3d-8e9f-0a1b2c3d4e5f";
        assert_eq!(dedupe.check_and_claim(id, 0), Seen::New);
        dedupe.stored(id, 1, 0);
        assert_eq!(dedupe.check_and_claim(id, 1_500), Seen::New);
        dedupe.stored(id, 9, 1_500);
        assert_eq!(dedupe.check_and_claim(id, 2_000), Seen::Stored(9));
        assert_eq!(dedupe.len(), 1);
    }

    #[test]
    fn canonical_uuids_only() {
        assert_eq!(
            canonical_uuid("00000000-0000-0000-0000-00000000000f"),
            Some([0, 15])
        );
        for text in [
            "",
            "0193f1c2-7a4b-7c3d-8e9f-0a1b2c3d4e5",
            "0193f1c2-7a4b-7c3d-8e9f-0a1b2c3d4e5ff",
            "0193f1c27a4b-7c3d-8e9f-0a1b2c3d4e5f-",
            "0193f1c2-7a4b-7c3d-8e9f-0a1b2c3d4e5G",
            "0193F1C2-7A4B-7C3D-8E9F-0A1B2C3D4E5F",
            "{193f1c2-7a4b-7c3d-8e9f-0a1b2c3d4e5f",
        ] {
            assert_eq!(canonical_uuid(text), None, "{text:?}");
        }
    }

    proptest::proptest! {
        /// The key of a canonical UUID is its value, and two ids have equal keys exactly when
        /// they are equal text.
        #[test]
        fn keys_are_equal_exactly_when_ids_are(a in 0u128.., b in 0u128.., text in "[0-9a-fA-F-]{36}") {
            let a_text = uuid::Uuid::from_u128(a).hyphenated().to_string();
            let b_text = uuid::Uuid::from_u128(b).hyphenated().to_string();
            proptest::prop_assert_eq!(
                canonical_uuid(&a_text),
                Some([(a >> 64) as u64, a as u64])
            );
            for (x, y) in [(&a_text, &b_text), (&a_text, &text), (&text, &b_text), (&text, &text)] {
                let equal = KeyRef::of(x).matches(&KeyRef::of(y).to_owned());
                proptest::prop_assert_eq!(equal, x == y, "{} {}", x, y);
            }
        }
    }

    #[test]
    fn the_table_is_bounded() {
        let mut dedupe = Dedupe::new(u64::MAX / 2);
        for n in 0..DEDUPE_IDS_MAX + 10 {
            let id = n.to_string();
            assert_eq!(dedupe.check_and_claim(&id, 0), Seen::New);
            dedupe.stored(&id, n as u64, 0);
        }
        assert_eq!(dedupe.len(), DEDUPE_IDS_MAX);
        assert_eq!(
            dedupe.check_and_claim("0", 0),
            Seen::New,
            "the oldest was forgotten"
        );
    }
}
