//! A FIFO queue kept in blocks of fixed size, for the tables that grow with a stream's
//! publishes (its dedupe records).
//!
//! A `VecDeque` doubles when full: it copies everything it holds into fresh memory, and the
//! kernel faults that memory in page by page, all inside one publish. At 65 536 records of
//! 32 bytes that was a 6 ms stop of the whole server in a latency run, at 131 072 twice that
//! (docs/PERFORMANCE.md). Here a full queue takes one more block: growth costs the same at
//! every size, nothing is moved, and the block emptied at the front is kept for the next one,
//! so a queue that has reached its working size allocates nothing.

use std::cmp::Ordering;
use std::collections::VecDeque;

/// Entries per block: 128 KiB of 32-byte entries, small against a publish's other costs when
/// a block is allocated, large enough that the block list stays short (160 000 records are 40
/// blocks).
pub(crate) const BLOCK_ENTRIES: usize = 4096;

#[derive(Debug)]
pub(crate) struct BlockQueue<T> {
    /// Every block but the first and the last is full; none is empty.
    blocks: VecDeque<VecDeque<T>>,
    len: usize,
    /// The last block emptied at the front, reused before a new one is allocated.
    spare: Option<VecDeque<T>>,
}

impl<T> Default for BlockQueue<T> {
    fn default() -> BlockQueue<T> {
        BlockQueue {
            blocks: VecDeque::new(),
            len: 0,
            spare: None,
        }
    }
}

impl<T> BlockQueue<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn front(&self) -> Option<&T> {
        self.blocks.front().and_then(VecDeque::front)
    }

    pub fn back(&self) -> Option<&T> {
        self.blocks.back().and_then(VecDeque::back)
    }

    pub fn push_back(&mut self, value: T) {
        match self.blocks.back_mut() {
            Some(block) if block.len() < BLOCK_ENTRIES => block.push_back(value),
            last => {
                // A queue's first block grows as a `VecDeque` does (a queue of a few entries
                // stays small); later ones are allocated whole.
                let fresh = match last {
                    None => VecDeque::new,
                    Some(_) => || VecDeque::with_capacity(BLOCK_ENTRIES),
                };
                let mut block = self.spare.take().unwrap_or_else(fresh);
                block.push_back(value);
                self.blocks.push_back(block);
            }
        }
        self.len += 1;
    }

    pub fn pop_front(&mut self) -> Option<T> {
        let block = self.blocks.front_mut()?;
        let value = block.pop_front()?;
        self.len -= 1;
        if block.is_empty()
            && let Some(block) = self.blocks.pop_front()
        {
            self.spare = Some(block);
        }
        Some(value)
    }

    /// The `index`th entry from the front.
    pub fn get(&self, index: usize) -> Option<&T> {
        let first = self.blocks.front()?;
        if index < first.len() {
            return first.get(index);
        }
        let rest = index - first.len();
        self.blocks
            .get(1 + rest / BLOCK_ENTRIES)?
            .get(rest % BLOCK_ENTRIES)
    }

    /// `VecDeque::binary_search_by` over the whole queue, which must be sorted by `compare`:
    /// first the block that would hold the entry (by its last entry), then within it.
    pub fn binary_search_by(
        &self,
        mut compare: impl FnMut(&T) -> Ordering,
    ) -> Result<usize, usize> {
        let block_index = self.blocks.partition_point(|block| {
            block
                .back()
                .is_some_and(|last| compare(last) == Ordering::Less)
        });
        let Some(block) = self.blocks.get(block_index) else {
            return Err(self.len);
        };
        let before = if block_index == 0 {
            0
        } else {
            self.blocks.front().map_or(0, VecDeque::len) + (block_index - 1) * BLOCK_ENTRIES
        };
        block
            .binary_search_by(compare)
            .map(|index| before + index)
            .map_err(|index| before + index)
    }
}

impl<T> From<T> for BlockQueue<T> {
    fn from(value: T) -> BlockQueue<T> {
        let mut queue = BlockQueue::default();
        queue.push_back(value);
        queue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Push(u32),
        Pop,
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        // Pushes outnumber pops, so that queues span several blocks.
        let op = prop_oneof![3 => (0..1000u32).prop_map(Op::Push), 1 => Just(Op::Pop)];
        proptest::collection::vec(op, 0..3 * BLOCK_ENTRIES)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every operation agrees with `VecDeque`, the model, at every step's ends and indices.
        #[test]
        fn it_behaves_as_a_vec_deque(ops in ops()) {
            let mut queue = BlockQueue::default();
            let mut model = VecDeque::new();
            for op in ops {
                match op {
                    Op::Push(value) => {
                        queue.push_back(value);
                        model.push_back(value);
                    }
                    Op::Pop => prop_assert_eq!(queue.pop_front(), model.pop_front()),
                }
                prop_assert_eq!(queue.len(), model.len());
                prop_assert_eq!(queue.front(), model.front());
                prop_assert_eq!(queue.back(), model.back());
            }
            for index in 0..=model.len() {
                prop_assert_eq!(queue.get(index), model.get(index));
            }
        }

        /// A sorted queue is searched as a sorted `VecDeque` is: same hits, same insertion
        /// points for misses, whatever the blocks' boundaries.
        #[test]
        fn it_is_searched_as_a_vec_deque(
            popped in 0..2 * BLOCK_ENTRIES,
            len in 0..3 * BLOCK_ENTRIES,
            probes in proptest::collection::vec(0..8 * BLOCK_ENTRIES as u64, 1..64),
        ) {
            let mut queue = BlockQueue::default();
            let mut model = VecDeque::new();
            // Even values only, so that odd probes miss between two entries.
            for value in (0..(popped + len) as u64).map(|n| 2 * n) {
                queue.push_back(value);
                model.push_back(value);
            }
            for _ in 0..popped {
                queue.pop_front();
                model.pop_front();
            }
            for probe in probes {
                prop_assert_eq!(
                    queue.binary_search_by(|value| value.cmp(&probe)),
                    model.binary_search_by(|value| value.cmp(&probe)),
                    "probe {}", probe
                );
            }
        }
    }

    #[test]
    fn a_block_emptied_at_the_front_is_reused() {
        let mut queue = BlockQueue::default();
        for value in 0..2 * BLOCK_ENTRIES {
            queue.push_back(value);
        }
        for _ in 0..BLOCK_ENTRIES {
            queue.pop_front();
        }
        assert!(queue.spare.is_some(), "the emptied block is kept");
        for value in 2 * BLOCK_ENTRIES..3 * BLOCK_ENTRIES {
            queue.push_back(value);
        }
        assert!(
            queue.spare.is_none(),
            "the next block needed is the spare one"
        );
        assert_eq!(queue.len(), 2 * BLOCK_ENTRIES);
        assert_eq!(queue.front(), Some(&BLOCK_ENTRIES));
        assert_eq!(queue.back(), Some(&(3 * BLOCK_ENTRIES - 1)));
    }
}
