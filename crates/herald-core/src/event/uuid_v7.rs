//! UUIDv7 for events published without an id, each made with one atomic step.
//!
//! RFC 9562's layout with a dedicated counter (its "method 1"): 48 bits of Unix time in
//! milliseconds, then a 22-bit counter (around the version nibble and the variant bits), then
//! 52 random bits. Time and counter live in one `AtomicU64`, so every id of the process sorts
//! after the one made before it (dedupe keeps generated ids in ascending runs) without a lock.
//! The `uuid` crate's `ContextV7` gives the same order behind a mutex, with a time conversion
//! and a random draw per id: about 470 of the 750 instructions an id cost, at one id per event
//! published without one (docs/PERFORMANCE.md).

use std::sync::atomic::{AtomicU64, Ordering};

use time::OffsetDateTime;
use uuid::Uuid;

/// Bits of the per-millisecond counter: about four million ids per millisecond before an id
/// borrows the next millisecond.
const COUNTER_BITS: u32 = 22;
const COUNTER_MAX: u64 = (1 << COUNTER_BITS) - 1;
/// Each millisecond's counter starts at a random value below half its range (so that the ids
/// of a millisecond are not guessable from its time, and its second half is left to follow).
const COUNTER_START_BITS: u32 = COUNTER_BITS - 1;
/// 42 bits of milliseconds beside the counter in one `u64`: until the year 2109.
const MILLISECONDS_MAX: u64 = (1 << (64 - COUNTER_BITS)) - 1;
const RANDOM_BITS: u32 = 52;

/// `milliseconds << COUNTER_BITS | counter` of the last id made.
static LAST: AtomicU64 = AtomicU64::new(0);

/// The next id: its time part is `now`'s millisecond (or the last id's, if the clock went back
/// or the counter ran out), and it sorts after every id made before it in this process.
pub(crate) fn next(now: OffsetDateTime) -> Uuid {
    // Seconds and milliseconds apart: through nanoseconds it is an `i128` division.
    let now_ms = u64::try_from(now.unix_timestamp())
        .map_or(0, |seconds| seconds * 1000 + u64::from(now.millisecond()))
        .min(MILLISECONDS_MAX);
    let mut last = LAST.load(Ordering::Relaxed);
    let mut fresh = None;
    let state = loop {
        let next = if now_ms > last >> COUNTER_BITS {
            *fresh.get_or_insert_with(|| {
                (now_ms << COUNTER_BITS) | (rand::random::<u64>() >> (64 - COUNTER_START_BITS))
            })
        } else if last & COUNTER_MAX < COUNTER_MAX {
            last + 1
        } else {
            // The counter ran out: the next millisecond, its counter from zero.
            (last | COUNTER_MAX) + 1
        };
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => break next,
            Err(actual) => last = actual,
        }
    };
    from_parts(state >> COUNTER_BITS, state & COUNTER_MAX, rand::random())
}

/// The UUID of `milliseconds`, `counter` and the low [`RANDOM_BITS`] of `random`: rand_a holds
/// the counter's top 12 bits, rand_b its low 10 and then the random bits.
fn from_parts(milliseconds: u64, counter: u64, random: u64) -> Uuid {
    const VERSION_7: u128 = 0x7 << 76;
    const VARIANT_RFC: u128 = 0b10 << 62;
    let value = (u128::from(milliseconds) << 80)
        | VERSION_7
        | (u128::from(counter >> 10) << 64)
        | VARIANT_RFC
        | (u128::from(counter & 0x3ff) << RANDOM_BITS)
        | u128::from(random & ((1 << RANDOM_BITS) - 1));
    Uuid::from_u128(value)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;
    use time::Duration;

    use super::*;

    fn milliseconds_of(id: Uuid) -> u64 {
        let (seconds, nanos) = id
            .get_timestamp()
            .expect("a v7 id has a timestamp")
            .to_unix();
        seconds * 1000 + u64::from(nanos) / 1_000_000
    }

    proptest! {
        #[test]
        fn parts_land_where_rfc_9562_puts_them(
            milliseconds in 0..=MILLISECONDS_MAX,
            counter in 0..=COUNTER_MAX,
            random: u64,
        ) {
            let id = from_parts(milliseconds, counter, random);
            prop_assert_eq!(id.get_version_num(), 7);
            prop_assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            prop_assert_eq!(milliseconds_of(id), milliseconds);
            let value = id.as_u128();
            prop_assert_eq!((value >> 64) & 0xfff, u128::from(counter >> 10));
            prop_assert_eq!((value >> RANDOM_BITS) & 0x3ff, u128::from(counter & 0x3ff));
        }

        #[test]
        fn a_later_time_or_counter_sorts_later(
            milliseconds in 0..MILLISECONDS_MAX,
            counter in 0..COUNTER_MAX,
            random_before: u64,
            random_after: u64,
        ) {
            let before = from_parts(milliseconds, counter, random_before);
            prop_assert!(before < from_parts(milliseconds, counter + 1, random_after));
            prop_assert!(before < from_parts(milliseconds + 1, 0, random_after));
        }
    }

    #[test]
    fn ids_ascend_through_one_millisecond_a_later_one_and_a_clock_that_went_back() {
        let now = OffsetDateTime::now_utc();
        let times = [
            now,
            now,
            now + Duration::milliseconds(3),
            now + Duration::milliseconds(3),
            now - Duration::seconds(5),
            now + Duration::milliseconds(4),
        ];
        let ids: Vec<Uuid> = times.iter().map(|&time| next(time)).collect();
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "{} then {}", pair[0], pair[1]);
        }
        let now_ms = (now.unix_timestamp_nanos() / 1_000_000) as u64;
        assert!(milliseconds_of(ids[0]) >= now_ms);
        // The clock going back keeps the last id's time rather than going back with it.
        assert!(milliseconds_of(ids[4]) >= now_ms + 3);
        assert!(milliseconds_of(ids[5]) >= now_ms + 4);
    }

    #[test]
    fn threads_making_ids_at_once_never_make_the_same_one_and_each_sees_them_ascend() {
        let now = OffsetDateTime::now_utc();
        let per_thread: Vec<Vec<Uuid>> = std::thread::scope(|scope| {
            let makers: Vec<_> = (0..4)
                .map(|_| scope.spawn(move || (0..20_000).map(|_| next(now)).collect::<Vec<_>>()))
                .collect();
            makers
                .into_iter()
                .map(|maker| maker.join().expect("an id maker panicked"))
                .collect()
        });
        let mut all = HashSet::new();
        for ids in &per_thread {
            assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
            all.extend(ids.iter().copied());
        }
        assert_eq!(all.len(), 4 * 20_000);
    }
}
