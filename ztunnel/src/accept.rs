//! Accepting connections without spinning. `accept()` fails for reasons that do not go away
//! by retrying at once: at the file-descriptor limit (EMFILE/ENFILE) or out of memory the
//! kernel keeps the pending connections queued and fails every call, so a bare retry loop
//! burns a core and writes a log line per attempt (millions a minute). Every ztunnel
//! listener (admin, readiness, metrics, and each pod's) accepts through an [`Acceptor`]:
//! after an error it waits before the next attempt (5 ms doubling to 1 s, back to 5 ms after
//! a success), logs at most one warning per [`WARN_EVERY`] with the number held back, and
//! counts every error in `amesh_accept_errors_total{listener}`.

use crate::metrics::{Listener, ListenerLabels, ListenerMetrics};
use amesh_ratelimit::{Throttle, WARN_EVERY};
use prometheus_client::metrics::counter::Counter;
use std::{io, net::SocketAddr, time::Duration};
use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

const MIN_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A listener that backs off, counts and rate-limits its accept errors.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    name: Listener,
    errors: Counter,
    backoff: Backoff,
    warning: Throttle,
}

impl Acceptor {
    /// `name` is the `listener` label of its metrics and log lines.
    pub fn new(listener: TcpListener, name: Listener, metrics: &ListenerMetrics) -> Self {
        let errors = metrics
            .accept_errors
            .get_or_create(&ListenerLabels { listener: name })
            .clone();
        Self {
            listener,
            name,
            errors,
            backoff: Backoff::default(),
            warning: Throttle::new(WARN_EVERY),
        }
    }

    /// The next connection; errors are handled here (never returned) because a listener has
    /// nothing better to do than try again, later. Cancel-safe: dropping the future while it
    /// waits keeps the backoff for the next call.
    pub async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok(accepted) => {
                    self.backoff.reset();
                    return accepted;
                }
                Err(error) => {
                    let pause = self.failed(&error);
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Counts and (rate-limited) logs an error; how long to wait before the next attempt.
    fn failed(&mut self, error: &io::Error) -> Duration {
        self.errors.inc();
        let pause = self.backoff.next();
        if let Some(suppressed) = self.warning.allow() {
            warn!(
                listener = %self.name,
                %error,
                retry_in_ms = pause.as_millis() as u64,
                suppressed,
                "accept failed"
            );
        }
        pause
    }
}

/// Exponential backoff between `MIN_BACKOFF` and `MAX_BACKOFF`. Every error backs off, even
/// one a single connection caused (ECONNABORTED): the first pause is short and a success
/// resets it, so a healthy listener never waits long, and a failing one never spins.
#[derive(Debug)]
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(MIN_BACKOFF)
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let pause = self.0;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
        pause
    }

    fn reset(&mut self) {
        self.0 = MIN_BACKOFF;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_second_and_resets() {
        let mut b = Backoff::default();
        let pauses: Vec<u64> = (0..10).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.reset();
        assert_eq!(b.next(), MIN_BACKOFF);
    }
}
