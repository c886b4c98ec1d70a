//! Rate-limited log lines. Some warnings are caused by whoever can reach a port or write a
//! file (plaintext at ztunnel's own ports, handshakes over a cap, accept errors under a flood,
//! bad files in a watched directory); logged once per event they would let anyone grow the
//! log without bound. A [`Throttle`] lets a burst of lines through, then one per interval, and
//! counts the ones it held back so that the next line can say how many were left out. Metrics
//! still count every event: a throttle only decides about the log line.
#![forbid(unsafe_code)]

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// How often a throttled warning may be logged, unless a call site needs another interval.
pub const WARN_EVERY: Duration = Duration::from_secs(5);

/// A token bucket for log lines: `burst` at once, then one more per `every`. `const` so that
/// a call site can keep one in a `static` (one per warning, shared by every connection).
#[derive(Debug)]
pub struct Throttle {
    burst: u32,
    every: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: u32,
    /// When the bucket was last refilled; `None` until first used.
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// One line per `every`.
    pub const fn new(every: Duration) -> Self {
        Self::with_burst(1, every)
    }

    /// `burst` lines at once (at least one), then one per `every`.
    pub const fn with_burst(burst: u32, every: Duration) -> Self {
        let burst = if burst == 0 { 1 } else { burst };
        Self {
            burst,
            every,
            state: Mutex::new(State {
                tokens: burst,
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)` when a line may be logged now, `n` being how many were held back since the
    /// last one; `None` when this one is to be left out (it is counted for the next line).
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    /// [`Self::allow`] at a given time (for tests).
    pub fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let last = *s.last.get_or_insert(now);
        let earned = now.saturating_duration_since(last).as_nanos() / self.every.as_nanos().max(1);
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            s.tokens = s.tokens.saturating_add(earned).min(self.burst);
            s.last = Some(now);
        }
        if s.tokens == 0 {
            s.suppressed += 1;
            return None;
        }
        s.tokens -= 1;
        Some(std::mem::take(&mut s.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_of_suppressed_ones() {
        let t = Throttle::new(Duration::from_secs(5));
        let start = Instant::now();
        assert_eq!(t.allow_at(start), Some(0), "the first line goes through");
        for i in 1..=199u64 {
            assert_eq!(t.allow_at(start + Duration::from_millis(i)), None);
        }
        let later = start + Duration::from_secs(5);
        assert_eq!(
            t.allow_at(later),
            Some(199),
            "the next line counts the held back"
        );
        assert_eq!(t.allow_at(later + Duration::from_secs(1)), None);
        assert_eq!(t.allow_at(later + Duration::from_secs(6)), Some(1));
    }

    #[test]
    fn a_burst_then_one_per_interval_and_a_quiet_spell_refills_only_the_burst() {
        let every = Duration::from_secs(3);
        let t = Throttle::with_burst(20, every);
        let t0 = Instant::now();
        for _ in 0..20 {
            assert_eq!(t.allow_at(t0), Some(0));
        }
        for _ in 0..500 {
            assert_eq!(t.allow_at(t0), None);
        }
        assert_eq!(t.allow_at(t0 + every), Some(500));
        assert_eq!(t.allow_at(t0 + every), None);
        let later = t0 + every * 1000;
        for _ in 0..20 {
            assert!(t.allow_at(later).is_some());
        }
        assert_eq!(t.allow_at(later), None);
    }
}
