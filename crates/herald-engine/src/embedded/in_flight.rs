//! A group's in-flight deliveries by delivery id, in a window of slots instead of a hash map.
//!
//! A group hands out delivery ids one after another, and members mostly settle them in about
//! that order, so the in-flight ids are nearly a contiguous range: a slot per id from the oldest
//! one in flight is found by a subtraction, and a burst of acks walks the slots in order,
//! where a hash map probed a table scattered over memory for each (docs/PERFORMANCE.md).
//! Settled slots at the front are dropped. A delivery that stays in flight while many after
//! it are settled (a member slow on one event) would hold the window open behind it, so once
//! empty slots outnumber the deliveries in flight, the oldest ones move to a map on the side:
//! memory stays within a small multiple of what is in flight.

use std::collections::VecDeque;

use hashbrown::HashMap as FastMap;

/// Empty slots tolerated beyond the live ones before the oldest deliveries are moved aside.
const EMPTY_SLOTS_SLACK: usize = 4096;

#[derive(Debug)]
pub(crate) struct InFlightTable<T> {
    /// The id of `slots[0]`.
    base: u64,
    slots: VecDeque<Option<T>>,
    /// Occupied slots.
    in_slots: usize,
    /// Deliveries older than `base`, still in flight.
    aside: FastMap<u64, T>,
}

impl<T> Default for InFlightTable<T> {
    fn default() -> InFlightTable<T> {
        InFlightTable {
            base: 0,
            slots: VecDeque::new(),
            in_slots: 0,
            aside: FastMap::default(),
        }
    }
}

impl<T> InFlightTable<T> {
    pub fn len(&self) -> usize {
        self.in_slots + self.aside.len()
    }

    /// Adds a delivery; ids must be inserted in increasing order (a group's are).
    pub fn insert(&mut self, delivery_id: u64, value: T) {
        if self.slots.is_empty() {
            self.base = delivery_id;
        }
        let end = self.base + self.slots.len() as u64;
        if delivery_id < end {
            // Not expected: ids only grow. Kept correct all the same.
            debug_assert!(false, "delivery ids are inserted in increasing order");
            self.aside.insert(delivery_id, value);
            return;
        }
        for _ in end..delivery_id {
            self.slots.push_back(None);
        }
        self.slots.push_back(Some(value));
        self.in_slots += 1;
        self.move_oldest_aside();
    }

    pub fn get(&self, delivery_id: u64) -> Option<&T> {
        match delivery_id.checked_sub(self.base) {
            Some(offset) => self.slots.get(offset as usize)?.as_ref(),
            None => self.aside.get(&delivery_id),
        }
    }

    pub fn get_mut(&mut self, delivery_id: u64) -> Option<&mut T> {
        match delivery_id.checked_sub(self.base) {
            Some(offset) => self.slots.get_mut(offset as usize)?.as_mut(),
            None => self.aside.get_mut(&delivery_id),
        }
    }

    /// Takes the delivery out if it is in flight and `take` says so.
    pub fn remove_if(&mut self, delivery_id: u64, take: impl FnOnce(&T) -> bool) -> Option<T> {
        match delivery_id.checked_sub(self.base) {
            Some(offset) => {
                let slot = self.slots.get_mut(offset as usize)?;
                if !slot.as_ref().is_some_and(take) {
                    return None;
                }
                let value = slot.take();
                self.in_slots -= 1;
                while let Some(None) = self.slots.front() {
                    self.slots.pop_front();
                    self.base += 1;
                }
                value
            }
            None => {
                if !self.aside.get(&delivery_id).is_some_and(take) {
                    return None;
                }
                self.aside.remove(&delivery_id)
            }
        }
    }

    pub fn remove(&mut self, delivery_id: u64) -> Option<T> {
        self.remove_if(delivery_id, |_| true)
    }

    /// Every delivery in flight, with its id, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &T)> {
        let base = self.base;
        self.slots
            .iter()
            .zip(base..)
            .filter_map(|(slot, id)| Some((id, slot.as_ref()?)))
            .chain(self.aside.iter().map(|(&id, value)| (id, value)))
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.iter().map(|(_, value)| value)
    }

    fn move_oldest_aside(&mut self) {
        while self.slots.len() > self.in_slots * 2 + EMPTY_SLOTS_SLACK {
            let Some(slot) = self.slots.pop_front() else {
                break;
            };
            if let Some(value) = slot {
                self.aside.insert(self.base, value);
                self.in_slots -= 1;
            }
            self.base += 1;
        }
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.base += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settled_in_order_or_not_every_delivery_is_found_until_removed() {
        let mut table = InFlightTable::default();
        for id in 10..20u64 {
            table.insert(id, id * 100);
        }
        assert_eq!(table.len(), 10);
        assert_eq!(table.get(9), None);
        assert_eq!(table.get(15), Some(&1500));
        assert_eq!(table.remove(15), Some(1500));
        assert_eq!(table.remove(15), None);
        assert_eq!(table.remove_if(10, |&value| value == 0), None);
        assert_eq!(table.remove(10), Some(1000));
        assert_eq!(table.get(11), Some(&1100));
        // Gaps in the ids are fine.
        table.insert(30, 3000);
        assert_eq!(table.get(25), None);
        assert_eq!(table.get(30), Some(&3000));
        let mut ids: Vec<u64> = table.iter().map(|(id, _)| id).collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![11, 12, 13, 14, 16, 17, 18, 19, 30]);
        assert_eq!(table.len(), 9);
    }

    #[test]
    fn a_delivery_left_behind_moves_aside_and_the_window_stays_small() {
        let mut table = InFlightTable::default();
        table.insert(1, 0u64);
        for id in 2..100_000u64 {
            table.insert(id, id);
            assert_eq!(table.remove(id), Some(id));
        }
        assert!(
            table.slots.len() <= EMPTY_SLOTS_SLACK + 2,
            "{}",
            table.slots.len()
        );
        assert_eq!(table.len(), 1);
        assert_eq!(table.get(1), Some(&0));
        assert_eq!(
            table.get_mut(1).map(|value| std::mem::replace(value, 7)),
            Some(0)
        );
        assert_eq!(table.iter().collect::<Vec<_>>(), vec![(1, &7)]);
        assert_eq!(table.remove(1), Some(7));
        assert_eq!(table.len(), 0);
    }
}
