//! Publish dedupe: the ids a stream stored within its window, and those being stored right now.
//!
//! An id being stored is "in flight": a second publish of it waits for the first to finish, then
//! reports the first's seq (or, if the first failed, is stored itself). The table is rebuilt from
//! the log's tail when the stream opens, so dedupe survives a restart. It is bounded by the
//! window and by `DEDUPE_IDS_MAX`.

use std::collections::VecDeque;
use std::sync::Arc;

/// hashbrown with its default foldhash: several times faster than SipHash on these short keys,
/// and seeded per process, so ids chosen by publishers cannot be crafted to collide.
use hashbrown::HashMap;

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
    /// One allocation per id, shared by the map and the expiry queue.
    ids: HashMap<Arc<str>, Option<u64>>,
    /// Stored ids in the order they were stored, with their timestamps, for expiry.
    stored: VecDeque<(u64, Arc<str>)>,
}

impl Dedupe {
    pub fn new(window_us: u64) -> Dedupe {
        Dedupe {
            window_us,
            ids: HashMap::new(),
            stored: VecDeque::new(),
        }
    }

    /// Looks `id` up, claiming it when new.
    pub fn check_and_claim(&mut self, id: &str, now_us: u64) -> Seen {
        self.expire(now_us);
        match self.ids.get(id) {
            Some(Some(seq)) => Seen::Stored(*seq),
            Some(None) => Seen::InFlight,
            None => {
                self.ids.insert(id.into(), None);
                Seen::New
            }
        }
    }

    /// Records a claimed id as stored.
    pub fn stored(&mut self, id: &str, seq: u64, timestamp_us: u64) {
        if self.window_us == 0 {
            self.ids.remove(id);
            return;
        }
        let key = match self.ids.get_key_value_mut(id) {
            Some((key, slot)) => {
                *slot = Some(seq);
                key.clone()
            }
            None => {
                let key: Arc<str> = Arc::from(id);
                self.ids.insert(key.clone(), Some(seq));
                key
            }
        };
        self.stored.push_back((timestamp_us, key));
        while self.stored.len() > DEDUPE_IDS_MAX {
            self.forget_oldest();
        }
    }

    /// Gives up a claim after a failed store.
    pub fn release(&mut self, id: &str) {
        if let Some(None) = self.ids.get(id) {
            self.ids.remove(id);
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.stored.len()
    }

    fn expire(&mut self, now_us: u64) {
        while let Some((timestamp_us, _)) = self.stored.front() {
            if timestamp_us.saturating_add(self.window_us) > now_us {
                break;
            }
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((_, id)) = self.stored.pop_front()
            && let hashbrown::hash_map::EntryRef::Occupied(entry) = self.ids.entry_ref(&*id)
            && entry.get().is_some()
        {
            entry.remove();
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
