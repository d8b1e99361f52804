//! A token bucket: a connection may publish `rate` events per second, in bursts of up to one
//! second's worth. Time is passed in, so tests need no clock.

use std::time::Instant;

#[derive(Debug)]
pub struct TokenBucket {
    rate_per_second: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    pub fn new(rate_per_second: u64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate_per_second: rate_per_second as f64,
            tokens: rate_per_second as f64,
            refilled: now,
        }
    }

    /// Takes `count` tokens if there are that many; otherwise takes none.
    pub fn try_take(&mut self, count: u64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate_per_second).min(self.rate_per_second);
        self.refilled = now;
        let count = count as f64;
        if self.tokens >= count {
            self.tokens -= count;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn refills_at_the_rate_up_to_one_second() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(100, start);
        assert!(bucket.try_take(100, start));
        assert!(!bucket.try_take(1, start));
        let later = start + Duration::from_millis(500);
        assert!(!bucket.try_take(51, later), "half a second refills 50");
        assert!(bucket.try_take(50, later));
        let much_later = later + Duration::from_secs(60);
        assert!(
            !bucket.try_take(101, much_later),
            "a burst is at most one second's worth"
        );
        assert!(bucket.try_take(100, much_later));
    }
}
