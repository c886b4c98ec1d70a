//! Waiting for something to become true: the one polling loop of the test bed and the tests.
//! A condition is polled until it holds or its time runs out; the error then names what was
//! awaited and quotes the condition's last answer, so a failure says why.

use crate::BedError;
use std::time::{Duration, Instant};

/// The first pause between polls; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const MAX_PAUSE: Duration = Duration::from_millis(200);

/// Polls `f` until it returns `Ok`, at most for `timeout`; `Err` carries `what` and the last
/// error `f` gave. `f` runs at least once, and once more at the deadline. A condition that can
/// also fail for good (a process that exited) returns `Ok(Err(..))` and the caller decides.
pub fn eventually<T, E: std::fmt::Display>(
    what: impl std::fmt::Display,
    timeout: Duration,
    mut f: impl FnMut() -> Result<T, E>,
) -> Result<T, BedError> {
    let deadline = Instant::now() + timeout;
    let mut pause = FIRST_PAUSE;
    loop {
        let last = match f() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(BedError::Timeout {
                what: what.to_string(),
                timeout,
                last: last.to_string(),
            });
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_success_and_names_the_last_failure() {
        let mut n = 0;
        let got = eventually("three tries", Duration::from_secs(5), || {
            n += 1;
            if n < 3 {
                Err(format!("try {n}"))
            } else {
                Ok(n)
            }
        });
        assert_eq!(got.ok(), Some(3));
        let e = eventually("never", Duration::from_millis(50), || {
            Err::<(), _>("still no")
        })
        .expect_err("times out");
        let text = e.to_string();
        assert!(
            text.contains("never") && text.contains("still no"),
            "{text}"
        );
    }
}
