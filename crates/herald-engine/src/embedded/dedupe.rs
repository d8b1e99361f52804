//! Publish dedupe: the ids a stream stored within its window, and those being stored right now.
//!
//! An id being stored is "in flight": a second publish of it waits for the first to finish, then
//! reports the first's seq (or, if the first failed, is stored itself). The table is rebuilt from
//! the log's tail when the stream opens, so dedupe survives a restart. It is bounded by the
//! window and by `DEDUPE_IDS_MAX`.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::Arc;

/// hashbrown's table with its default foldhash: several times faster than SipHash on these short
/// keys, and seeded per process, so ids chosen by publishers cannot be crafted to collide. The
/// raw table rather than a map, so that each id is hashed once when claimed and once when
/// stored, and its expiry finds it by the hash it kept, without hashing or comparing the id
/// again (a publish profile had the map's four hashes and the expiry's look-up at 10% of the
/// server's time).
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
    /// Stored ids in the order they were stored, with their timestamps and hashes, for expiry.
    stored: VecDeque<Expiry>,
}

#[derive(Debug)]
struct Slot {
    /// Kept so that growing the table never hashes an id again.
    hash: u64,
    /// One allocation per id, shared with the expiry queue.
    id: Arc<str>,
    /// `None` while in flight.
    seq: Option<u64>,
}

#[derive(Debug)]
struct Expiry {
    timestamp_us: u64,
    hash: u64,
    id: Arc<str>,
}

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
        let hash = self.hasher.hash_one(id);
        match self
            .ids
            .entry(hash, |slot| *slot.id == *id, |slot| slot.hash)
        {
            Entry::Occupied(slot) => match slot.get().seq {
                Some(seq) => Seen::Stored(seq),
                None => Seen::InFlight,
            },
            Entry::Vacant(vacant) => {
                vacant.insert(Slot {
                    hash,
                    id: id.into(),
                    seq: None,
                });
                Seen::New
            }
        }
    }

    /// Records a claimed id as stored.
    pub fn stored(&mut self, id: &str, seq: u64, timestamp_us: u64) {
        let hash = self.hasher.hash_one(id);
        if self.window_us == 0 {
            if let Ok(slot) = self.ids.find_entry(hash, |slot| *slot.id == *id) {
                slot.remove();
            }
            return;
        }
        let id = match self.ids.find_mut(hash, |slot| *slot.id == *id) {
            Some(slot) => {
                slot.seq = Some(seq);
                slot.id.clone()
            }
            None => {
                let key: Arc<str> = Arc::from(id);
                let slot = Slot {
                    hash,
                    id: key.clone(),
                    seq: Some(seq),
                };
                self.ids.insert_unique(hash, slot, |slot| slot.hash);
                key
            }
        };
        self.stored.push_back(Expiry {
            timestamp_us,
            hash,
            id,
        });
        while self.stored.len() > DEDUPE_IDS_MAX {
            self.forget_oldest();
        }
    }

    /// Gives up a claim after a failed store.
    pub fn release(&mut self, id: &str) {
        let hash = self.hasher.hash_one(id);
        if let Ok(slot) = self.ids.find_entry(hash, |slot| *slot.id == *id)
            && slot.get().seq.is_none()
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

    /// Drops the oldest stored id. Its slot is the one holding the very same allocation: an id
    /// stored again after it was forgotten has a slot of its own, which this leaves alone.
    fn forget_oldest(&mut self) {
        if let Some(oldest) = self.stored.pop_front()
            && let Ok(slot) = self
                .ids
                .find_entry(oldest.hash, |slot| Arc::ptr_eq(&slot.id, &oldest.id))
            && slot.get().seq.is_some()
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
