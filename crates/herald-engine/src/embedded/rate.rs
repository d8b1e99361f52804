//! Events per second over the last few seconds, for stream stats.

use std::time::Instant;

/// Seconds averaged over.
const RATE_WINDOW_SECONDS: usize = 10;

#[derive(Debug)]
pub(crate) struct RateMeter {
    started: Instant,
    /// Counts per second, indexed by second modulo the window, with the second they belong to.
    buckets: [(u64, u64); RATE_WINDOW_SECONDS],
}

impl RateMeter {
    pub fn new() -> RateMeter {
        RateMeter {
            started: Instant::now(),
            buckets: [(u64::MAX, 0); RATE_WINDOW_SECONDS],
        }
    }

    pub fn record(&mut self, count: u64) {
        self.record_at(self.started.elapsed().as_secs(), count);
    }

    pub fn per_second(&self) -> f64 {
        self.per_second_at(self.started.elapsed().as_secs())
    }

    fn record_at(&mut self, second: u64, count: u64) {
        let bucket = &mut self.buckets[(second % RATE_WINDOW_SECONDS as u64) as usize];
        if bucket.0 != second {
            *bucket = (second, 0);
        }
        bucket.1 += count;
    }

    /// The average over the last full seconds of the window (the current second is partial).
    fn per_second_at(&self, now: u64) -> f64 {
        let oldest = now.saturating_sub(RATE_WINDOW_SECONDS as u64 - 1);
        let total: u64 = self
            .buckets
            .iter()
            .filter(|(second, _)| *second != u64::MAX && *second >= oldest && *second < now)
            .map(|(_, count)| count)
            .sum();
        let seconds = now.min(RATE_WINDOW_SECONDS as u64 - 1).max(1);
        total as f64 / seconds as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_averages_the_last_full_seconds() {
        let mut meter = RateMeter::new();
        for second in 0..20 {
            meter.record_at(second, 100);
        }
        assert_eq!(meter.per_second_at(20), 100.0);
        meter.record_at(20, 5_000);
        assert_eq!(
            meter.per_second_at(20),
            100.0,
            "the current second is not counted yet"
        );
        assert_eq!(
            meter.per_second_at(40),
            0.0,
            "old seconds fall out of the window"
        );
        let mut young = RateMeter::new();
        young.record_at(0, 50);
        young.record_at(1, 50);
        assert_eq!(young.per_second_at(2), 50.0);
    }
}
