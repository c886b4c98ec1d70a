//! Jittered exponential backoff for reconnecting to the control plane.

use std::time::Duration;

/// Exponential backoff with jitter (each delay is 50–100 % of the current ceiling), so that
/// proxies losing the same control plane do not reconnect in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    ceiling: Duration,
}

impl Backoff {
    /// Starts at `first` and doubles up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            ceiling: first,
        }
    }

    /// Back to the first delay (after progress).
    pub fn reset(&mut self) {
        self.ceiling = self.first;
    }

    /// The next delay to wait; the one after it is up to twice as long.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = (self.ceiling * 2).min(self.max);
        // The clock's sub-second nanoseconds are random enough to spread reconnects, and
        // save a dependency on a random number generator.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let fraction = 0.5 + f64::from(nanos % 1000) / 2000.0;
        ceiling.mul_f64(fraction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_ceiling_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_secs(15));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(5) && first <= Duration::from_millis(10));
        for _ in 0..20 {
            assert!(b.next_delay() <= Duration::from_secs(15));
        }
        assert!(b.next_delay() >= Duration::from_millis(7500));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(10));
    }
}
