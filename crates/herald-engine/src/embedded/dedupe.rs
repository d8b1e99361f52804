//! Publish dedupe: the ids a stream stored within its window, and those being stored right now.
//!
//! An id being stored is "in flight": a second publish of it waits for the first to finish, then
//! reports the first's seq (or, if the first failed, is stored itself). The table is rebuilt from
//! the log's tail when the stream opens, so dedupe survives a restart. It is bounded by the
//! window and by `DEDUPE_IDS_MAX`.

use std::collections::{BTreeMap, btree_map};
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

use herald_core::IdOrigin;

use super::block_queue::BlockQueue;
use crate::config::DEDUPE_IDS_MAX;

/// Ascending runs of UUIDs a stream keeps at most: as many as publishers whose batches
/// interleave, roughly; a UUID that fits none is kept in the B-tree.
const ASCENDING_RUNS_MAX: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Stored with this seq within the window.
    Stored(u64),
    /// Another publish is storing it now.
    InFlight,
    /// Not seen: the caller now owns it (marked in flight).
    New,
}

/// The ids of one stream, in two tables: ids written as a UUID in canonical form (every id the
/// server generates, and the UUIDv7s the clients make) by their 128-bit value, the others by
/// their text. The mapping between canonical text and value is one to one, so an id is equal to
/// another exactly when their keys are.
#[derive(Debug)]
pub struct Dedupe {
    window_us: u64,
    hasher: DefaultHashBuilder,
    /// UUIDs stored in increasing order, as the ids Herald generates (UUIDv7s, which grow with
    /// time) mostly are: each run is appended to, searched by binary search, and expired from
    /// its front. A B-tree insert per generated id was a tenth of a publish's instructions
    /// (docs/PERFORMANCE.md). Several runs, because concurrent publishers interleave their
    /// batches, each ascending on its own. Each run is in seq order too, so an expiring record
    /// is at the front of a run or in `uuids`. No run is empty.
    runs: Vec<BlockQueue<(u128, u64)>>,
    runs_max: usize,
    /// The other UUIDs: claims in flight, those that fit no run, and those stored again. A
    /// record here is newer than one for the same id in a run. UUIDv7s grow with time, so
    /// records and expiries touch the two ends of this tree, which stay in cache: the hash table
    /// touched a random slot of several MiB twice per stored event, 14% of a publish profile,
    /// nearly all of it cache misses. No allocation per id either.
    uuids: BTreeMap<u128, Option<u64>>,
    texts: HashTable<Slot>,
    /// Stored ids in the order they were stored, with their timestamps and seqs, for expiry.
    stored: BlockQueue<Expiry>,
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
    /// The store this entry expires: an id stored again later keeps its newer record.
    seq: u64,
    key: StoredKey,
}

#[derive(Debug)]
enum StoredKey {
    Uuid(u128),
    Text { hash: u64, id: Arc<str> },
}

impl Dedupe {
    pub fn new(window_us: u64) -> Dedupe {
        Dedupe {
            window_us,
            hasher: DefaultHashBuilder::default(),
            runs: Vec::new(),
            runs_max: ASCENDING_RUNS_MAX,
            uuids: BTreeMap::new(),
            texts: HashTable::new(),
            stored: BlockQueue::default(),
        }
    }

    #[cfg(test)]
    fn with_runs_max(window_us: u64, runs_max: usize) -> Dedupe {
        Dedupe {
            runs_max,
            ..Dedupe::new(window_us)
        }
    }

    /// Looks `id` up, claiming it when new.
    pub fn check_and_claim(&mut self, id: &str, now_us: u64) -> Seen {
        self.expire(now_us);
        if let Some(uuid) = canonical_uuid(id) {
            return match self.uuids.entry(uuid) {
                btree_map::Entry::Occupied(slot) => match slot.get() {
                    Some(seq) => Seen::Stored(*seq),
                    None => Seen::InFlight,
                },
                btree_map::Entry::Vacant(slot) => match find_in_runs(&self.runs, uuid) {
                    Some(seq) => Seen::Stored(seq),
                    None => {
                        slot.insert(None);
                        Seen::New
                    }
                },
            };
        }
        let hash = self.hasher.hash_one(id);
        match self
            .texts
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

    /// Records an id as stored, claimed or not. An id Herald generated for this store
    /// (`IdOrigin::Generated`) is new by construction (a UUIDv7 from this process's clock and
    /// randomness), neither claimed nor stored before, which spares the look-ups any other id
    /// needs (with concurrent publishers, most of the cost). Ids of unknown origin, as when the
    /// table is rebuilt from the log, count as the publisher's.
    pub fn stored(&mut self, id: &str, origin: IdOrigin, seq: u64, timestamp_us: u64) {
        if self.window_us == 0 {
            if origin == IdOrigin::Publisher {
                self.forget_claim(id, |_| true);
            }
            return;
        }
        let key = match canonical_uuid(id) {
            Some(uuid) => {
                self.store_uuid(uuid, seq, origin);
                StoredKey::Uuid(uuid)
            }
            None => self.store_text(id, seq),
        };
        self.stored.push_back(Expiry {
            timestamp_us,
            seq,
            key,
        });
        while self.stored.len() > DEDUPE_IDS_MAX {
            self.forget_oldest();
        }
    }

    /// Gives up a claim after a failed store.
    pub fn release(&mut self, id: &str) {
        self.forget_claim(id, |seq| seq.is_none());
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.stored.len()
    }

    fn store_uuid(&mut self, uuid: u128, seq: u64, origin: IdOrigin) {
        if origin == IdOrigin::Publisher
            && let Some(record) = self.uuids.get_mut(&uuid)
        {
            *record = Some(seq);
            return;
        }
        // The run that ends just below `uuid` (patience sorting's best fit keeps runs fewest).
        let room = self.runs.len() < self.runs_max;
        let mut fit: Option<&mut BlockQueue<(u128, u64)>> = None;
        let mut stored_before = false;
        for run in &mut self.runs {
            let (Some((first, _)), Some((last, _))) = (run.front(), run.back()) else {
                continue;
            };
            if *last < uuid {
                if fit
                    .as_ref()
                    .is_none_or(|fit| fit.back().is_some_and(|(best, _)| best < last))
                {
                    fit = Some(run);
                }
            } else if origin == IdOrigin::Publisher
                && *first <= uuid
                && find_in_run(run, uuid).is_some()
            {
                stored_before = true;
            }
        }
        match fit {
            Some(run) if !stored_before => run.push_back((uuid, seq)),
            None if !stored_before && room => {
                self.runs.push(BlockQueue::from((uuid, seq)));
            }
            _ => {
                self.uuids.insert(uuid, Some(seq));
            }
        }
    }

    fn store_text(&mut self, id: &str, seq: u64) -> StoredKey {
        let hash = self.hasher.hash_one(id);
        let id = match self.texts.find_mut(hash, |slot| *slot.id == *id) {
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
                self.texts.insert_unique(hash, slot, |slot| slot.hash);
                key
            }
        };
        StoredKey::Text { hash, id }
    }

    /// Removes `id`'s record if `removable` says so of its seq (`None`: in flight).
    fn forget_claim(&mut self, id: &str, removable: impl Fn(Option<u64>) -> bool) {
        if let Some(uuid) = canonical_uuid(id) {
            if self.uuids.get(&uuid).is_some_and(|seq| removable(*seq)) {
                self.uuids.remove(&uuid);
            }
            return;
        }
        let hash = self.hasher.hash_one(id);
        if let Ok(slot) = self.texts.find_entry(hash, |slot| *slot.id == *id)
            && removable(slot.get().seq)
        {
            slot.remove();
        }
    }

    fn expire(&mut self, now_us: u64) {
        while let Some(oldest) = self.stored.front() {
            if oldest.timestamp_us.saturating_add(self.window_us) > now_us {
                break;
            }
            self.forget_oldest();
        }
    }

    /// Drops the oldest stored id, unless it was stored again since (a later seq) or is being
    /// stored again now (in flight): those records are the later store's.
    fn forget_oldest(&mut self) {
        let Some(oldest) = self.stored.pop_front() else {
            return;
        };
        match oldest.key {
            StoredKey::Uuid(uuid) => {
                let record = Some(&(uuid, oldest.seq));
                if let Some(index) = self.runs.iter().position(|run| run.front() == record) {
                    if let Some(run) = self.runs.get_mut(index) {
                        run.pop_front();
                        if run.is_empty() {
                            self.runs.swap_remove(index);
                        }
                    }
                } else if self.uuids.get(&uuid) == Some(&Some(oldest.seq)) {
                    self.uuids.remove(&uuid);
                }
            }
            StoredKey::Text { hash, id } => {
                if let Ok(slot) = self
                    .texts
                    .find_entry(hash, |slot| Arc::ptr_eq(&slot.id, &id))
                    && slot.get().seq == Some(oldest.seq)
                {
                    slot.remove();
                }
            }
        }
    }
}

/// The seq `uuid` was stored with, if a run holds it.
fn find_in_runs(runs: &[BlockQueue<(u128, u64)>], uuid: u128) -> Option<u64> {
    runs.iter().find_map(|run| find_in_run(run, uuid))
}

fn find_in_run(run: &BlockQueue<(u128, u64)>, uuid: u128) -> Option<u64> {
    run.binary_search_by(|(stored, _)| stored.cmp(&uuid))
        .ok()
        .and_then(|index| run.get(index))
        .map(|(_, seq)| *seq)
}

/// The value of a UUID written in canonical form — 36 characters, lowercase hex digits in
/// groups of 8-4-4-4-12 — and `None` for any other text, which is then a different id from
/// every UUID (ids compare as text). At 36 bytes the `uuid` crate accepts only the hyphenated
/// form; uppercase digits it would accept are refused first.
fn canonical_uuid(id: &str) -> Option<u128> {
    let bytes = id.as_bytes();
    if bytes.len() != 36 || bytes.iter().any(u8::is_ascii_uppercase) {
        return None;
    }
    uuid::Uuid::try_parse_ascii(bytes)
        .ok()
        .map(|uuid| uuid.as_u128())
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, VecDeque};

    use proptest::prelude::*;

    use super::*;

    const UUID: &str = "01938f3e-7c2a-7b4d-9e5f-0a1b2c3d4e5f";

    #[test]
    fn canonical_uuids_are_read_as_values_and_any_other_text_is_not() {
        let check = |id: &str, expect: Option<u128>| {
            assert_eq!(canonical_uuid(id), expect, "{id:?}");
        };
        check(UUID, Some(0x01938f3e_7c2a_7b4d_9e5f_0a1b2c3d4e5f));
        check("00000000-0000-0000-0000-000000000000", Some(0));
        check("ffffffff-ffff-ffff-ffff-ffffffffffff", Some(u128::MAX));
        check("01938F3E-7C2A-7B4D-9E5F-0A1B2C3D4E5F", None); // uppercase: another id
        check("01938f3e7c2a7b4d9e5f0a1b2c3d4e5f", None); // no hyphens
        check("01938f3e-7c2a-7b4d-9e5f-0a1b2c3d4e5", None); // 35 characters
        check("01938f3e-7c2a-7b4d-9e5f-0a1b2c3d4e5f0", None); // 37
        check("01938f3e-7c2a-7b4d-9e5f+0a1b2c3d4e5f", None); // a separator not a hyphen
        check("01938f3e-7c2a-7b4d-9e5f-0a1b2c3d4e5g", None); // not a hex digit
        check("01938f3e--c2a-7b4d-9e5f-0a1b2c3d4e5f", None); // a hyphen for a digit
        check("order-1", None);
    }

    #[test]
    fn a_uuid_in_other_case_is_another_id() {
        let mut dedupe = Dedupe::new(1_000);
        dedupe.stored(UUID, IdOrigin::Publisher, 1, 0);
        assert_eq!(dedupe.check_and_claim(UUID, 1), Seen::Stored(1));
        assert_eq!(
            dedupe.check_and_claim(&UUID.to_uppercase(), 1),
            Seen::New,
            "ids compare as text"
        );
    }

    #[test]
    fn an_id_stored_again_keeps_its_newer_record_when_the_older_expires() {
        for id in [UUID, "order-1"] {
            let mut dedupe = Dedupe::new(1_000);
            dedupe.stored(id, IdOrigin::Publisher, 1, 0);
            dedupe.stored(id, IdOrigin::Publisher, 2, 500);
            assert_eq!(dedupe.check_and_claim(id, 1_200), Seen::Stored(2), "{id}");
            assert_eq!(dedupe.check_and_claim(id, 1_500), Seen::New, "{id}");
        }
    }

    /// What the two tables must together behave as: one map from id text to its record.
    #[derive(Default)]
    struct Model {
        ids: HashMap<String, Option<u64>>,
        stored: VecDeque<(u64, u64, String)>,
    }

    impl Model {
        fn check_and_claim(&mut self, id: &str, now_us: u64, window_us: u64) -> Seen {
            while let Some((timestamp_us, seq, oldest)) = self.stored.front().cloned() {
                if timestamp_us.saturating_add(window_us) > now_us {
                    break;
                }
                self.stored.pop_front();
                if self.ids.get(&oldest) == Some(&Some(seq)) {
                    self.ids.remove(&oldest);
                }
            }
            match self.ids.get(id) {
                Some(Some(seq)) => Seen::Stored(*seq),
                Some(None) => Seen::InFlight,
                None => {
                    self.ids.insert(id.to_owned(), None);
                    Seen::New
                }
            }
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Claim(usize),
        Store(usize),
        Release(usize),
        Tick(u64),
        /// Herald generates an id (a UUID above every other so far) for an event not yet stored.
        Generate,
        /// One of the generated ids waiting is stored (they are stored in any order).
        StoreGenerated(usize),
        /// A publisher sends back a generated id.
        ClaimGenerated(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..IDS.len()).prop_map(Op::Claim),
            (0..IDS.len()).prop_map(Op::Store),
            (0..IDS.len()).prop_map(Op::Release),
            (0..400u64).prop_map(Op::Tick),
            Just(Op::Generate),
            any::<usize>().prop_map(Op::StoreGenerated),
            any::<usize>().prop_map(Op::ClaimGenerated),
        ]
    }

    /// UUIDs, the same in uppercase, and texts that are not UUIDs.
    const IDS: [&str; 9] = [
        "01938f3e-7c2a-7b4d-9e5f-0a1b2c3d4e5c",
        "01938f3e-7c2a-7b4d-9e5f-0a1b2c3d4e5d",
        "01938f3e-7c2a-7b4d-9e5f-0a1b2c3d4e5e",
        UUID,
        "01938f3e-7c2a-7b4d-9e5f-0a1b2c3d4e60",
        "01938F3E-7C2A-7B4D-9E5F-0A1B2C3D4E5F",
        "order-1",
        "order-2",
        "01938f3e-7c2a-7b4d-9e5f-0a1b2c3d4e5x",
    ];

    proptest! {
        #[test]
        fn dedupe_answers_as_one_map_of_id_texts(
            ops in proptest::collection::vec(op(), 1..200),
            runs_max in 1..4usize,
        ) {
            let window_us = 1_000;
            let mut dedupe = Dedupe::with_runs_max(window_us, runs_max);
            let mut model = Model::default();
            let (mut now_us, mut seq) = (0, 0);
            let (mut waiting, mut generated) = (Vec::new(), Vec::new());
            for op in ops {
                match op {
                    Op::Generate => {
                        let n = generated.len() + waiting.len();
                        waiting.push(format!("01938f3f-0000-7000-8000-{n:012x}"));
                    }
                    Op::StoreGenerated(i) if !waiting.is_empty() => {
                        let id = waiting.remove(i % waiting.len());
                        seq += 1;
                        dedupe.stored(&id, IdOrigin::Generated, seq, now_us);
                        model.ids.insert(id.clone(), Some(seq));
                        model.stored.push_back((now_us, seq, id.clone()));
                        generated.push(id);
                    }
                    Op::ClaimGenerated(i) if !generated.is_empty() => {
                        let id = &generated[i % generated.len()];
                        prop_assert_eq!(
                            dedupe.check_and_claim(id, now_us),
                            model.check_and_claim(id, now_us, window_us),
                            "claim generated {} at {}", id, now_us
                        );
                    }
                    Op::StoreGenerated(_) | Op::ClaimGenerated(_) => {}
                    Op::Claim(i) => prop_assert_eq!(
                        dedupe.check_and_claim(IDS[i], now_us),
                        model.check_and_claim(IDS[i], now_us, window_us),
                        "claim {} at {}", IDS[i], now_us
                    ),
                    Op::Store(i) => {
                        seq += 1;
                        dedupe.stored(IDS[i], IdOrigin::Publisher, seq, now_us);
                        model.ids.insert(IDS[i].to_owned(), Some(seq));
                        model.stored.push_back((now_us, seq, IDS[i].to_owned()));
                    }
                    Op::Release(i) => {
                        dedupe.release(IDS[i]);
                        if model.ids.get(IDS[i]) == Some(&None) {
                            model.ids.remove(IDS[i]);
                        }
                    }
                    Op::Tick(us) => now_us += us,
                }
            }
        }
    }

    #[test]
    fn an_id_is_new_then_in_flight_then_stored_until_the_window_passes() {
        let mut dedupe = Dedupe::new(1_000);
        assert_eq!(dedupe.check_and_claim("a", 0), Seen::New);
        assert_eq!(dedupe.check_and_claim("a", 10), Seen::InFlight);
        dedupe.stored("a", IdOrigin::Publisher, 7, 10);
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
            dedupe.stored(&id, IdOrigin::Publisher, n as u64, 0);
        }
        assert_eq!(dedupe.len(), DEDUPE_IDS_MAX);
        assert_eq!(
            dedupe.check_and_claim("0", 0),
            Seen::New,
            "the oldest was forgotten"
        );
    }
}
