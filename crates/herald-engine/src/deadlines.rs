//! A group's ack deadlines, in a queue instead of a sorted set (both engines' group tasks).
//!
//! Every deadline a group sets is "now + its ack timeout", with one timeout per group and a
//! clock that never goes back, so deadlines are set in the order they expire: appending keeps
//! the queue sorted. A sorted set paid an insert and a remove (a tree walk each) per delivery;
//! here a delivery costs one push, and an ack nothing at all. An entry whose delivery was
//! settled, or whose deadline was moved by an extend, is left where it is and recognised as
//! stale (its delivery is no longer in flight with that deadline) when it reaches the front,
//! or dropped in a compaction once stale entries outnumber live ones, so that the queue stays
//! within a small multiple of the deliveries in flight even when one delivery stays unacked
//! for a whole ack timeout while thousands after it are acked.

use std::collections::VecDeque;

use tokio::time::Instant;

/// Stale entries tolerated beyond the live ones before a compaction.
const STALE_ENTRIES_SLACK: usize = 1024;

#[derive(Debug, Default)]
pub(crate) struct Deadlines {
    /// `(deadline, delivery id)`, deadlines non-decreasing.
    queue: VecDeque<(Instant, u64)>,
}

impl Deadlines {
    /// Adds a deadline and returns it, raised to the last one set if the clock had read
    /// earlier (it cannot on tokio's clock; the raise keeps the order an invariant rather
    /// than an assumption). The caller records the returned deadline with its delivery.
    pub fn push(&mut self, deadline: Instant, delivery_id: u64) -> Instant {
        let deadline = match self.queue.back() {
            Some(&(last, _)) if last > deadline => last,
            _ => deadline,
        };
        self.queue.push_back((deadline, delivery_id));
        deadline
    }

    /// The earliest entry, stale or not.
    pub fn first(&self) -> Option<(Instant, u64)> {
        self.queue.front().copied()
    }

    pub fn pop_first(&mut self) -> Option<(Instant, u64)> {
        self.queue.pop_front()
    }

    /// Drops stale entries from the front, so that `first` is a live deadline, and compacts
    /// the whole queue when stale entries outnumber the `live` ones. `is_live` says whether a
    /// delivery is still in flight with that deadline.
    pub fn tidy(&mut self, live: usize, is_live: impl Fn(u64, Instant) -> bool) {
        while let Some(&(deadline, delivery_id)) = self.queue.front() {
            if is_live(delivery_id, deadline) {
                break;
            }
            self.queue.pop_front();
        }
        if self.queue.len() > live * 2 + STALE_ENTRIES_SLACK {
            self.queue
                .retain(|&(deadline, delivery_id)| is_live(delivery_id, deadline));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;

    #[test]
    fn deadlines_stay_sorted_even_if_pushed_earlier() {
        let start = Instant::now();
        let mut deadlines = Deadlines::default();
        assert_eq!(
            deadlines.push(start + Duration::from_secs(2), 1),
            start + Duration::from_secs(2)
        );
        assert_eq!(
            deadlines.push(start + Duration::from_secs(1), 2),
            start + Duration::from_secs(2)
        );
        assert_eq!(
            deadlines.pop_first(),
            Some((start + Duration::from_secs(2), 1))
        );
        assert_eq!(
            deadlines.pop_first(),
            Some((start + Duration::from_secs(2), 2))
        );
        assert_eq!(deadlines.pop_first(), None);
    }

    #[test]
    fn tidy_drops_stale_entries_at_the_front_and_compacts_behind_a_stuck_one() {
        let start = Instant::now();
        let mut deadlines = Deadlines::default();
        let mut in_flight: HashMap<u64, Instant> = HashMap::new();
        for id in 0..10_000u64 {
            let deadline = deadlines.push(start + Duration::from_millis(id), id);
            in_flight.insert(id, deadline);
        }
        // Delivery 0 stays in flight; every other one is settled.
        in_flight.retain(|&id, _| id == 0);
        let is_live = |id: u64, deadline: Instant| in_flight.get(&id) == Some(&deadline);
        deadlines.tidy(in_flight.len(), is_live);
        assert_eq!(deadlines.len(), 1);
        assert_eq!(deadlines.first(), Some((start, 0)));

        // An extend leaves the old entry stale: tidy drops it from the front.
        let extended = deadlines.push(start + Duration::from_secs(60), 0);
        in_flight.insert(0, extended);
        let is_live = |id: u64, deadline: Instant| in_flight.get(&id) == Some(&deadline);
        deadlines.tidy(in_flight.len(), is_live);
        assert_eq!(deadlines.first(), Some((extended, 0)));
        assert_eq!(deadlines.len(), 1);
    }
}
