//! Bounding log lines that outsiders can cause (bad files, connection floods): a burst, then
//! one line per refill period, each saying how many were left out before it.

use std::time::{Duration, Instant};

/// A token bucket for log lines.
#[derive(Debug)]
pub struct LogLimiter {
    burst: u32,
    refill: Duration,
    tokens: u32,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new(burst: u32, refill: Duration) -> Self {
        Self {
            burst,
            refill,
            tokens: burst,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when a line may be logged now (`n` lines were left out before it).
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        let last = *self.last.get_or_insert(now);
        let earned = now.saturating_duration_since(last).as_nanos() / self.refill.as_nanos().max(1);
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(earned).min(self.burst);
            self.last = Some(now);
        }
        if self.tokens == 0 {
            self.suppressed += 1;
            return None;
        }
        self.tokens -= 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_refill_with_the_count_left_out() {
        let refill = Duration::from_secs(3);
        let mut limiter = LogLimiter::new(20, refill);
        let t0 = Instant::now();
        for _ in 0..20 {
            assert_eq!(limiter.allow(t0), Some(0));
        }
        for _ in 0..500 {
            assert_eq!(limiter.allow(t0), None);
        }
        assert_eq!(limiter.allow(t0 + refill), Some(500));
        assert_eq!(limiter.allow(t0 + refill), None);
        // A long quiet spell refills only up to the burst.
        let later = t0 + refill * 1000;
        for _ in 0..20 {
            assert!(limiter.allow(later).is_some());
        }
        assert_eq!(limiter.allow(later), None);
    }
}
