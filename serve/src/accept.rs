//! Accepting connections without spinning. `accept()` fails for reasons that do not go away
//! by retrying at once: at the file-descriptor limit (EMFILE/ENFILE) or out of memory the
//! kernel keeps the pending connections queued and fails every call, so a bare retry loop
//! burns a core and writes a log line per attempt (millions a minute). Every amesh listener
//! accepts through an [`Acceptor`]: after an error it waits before the next attempt (5 ms
//! doubling to 1 s, back to 5 ms after a success), logs at most one warning per
//! [`WARN_EVERY`] with the number held back, and reports every error to its observer
//! ([`Acceptor::on_error`]; ztunnel counts them in `amesh_accept_errors_total{listener}`).

use amesh_ratelimit::{Throttle, WARN_EVERY};
use std::{fmt, io, net::SocketAddr, time::Duration};
use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

const MIN_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Called with every accept error, before the pause (the log line is throttled, this is not).
type ErrorObserver = Box<dyn Fn(&io::Error) + Send + Sync>;

/// The accept side of one listener: backs off, reports and rate-limits its accept errors.
/// It does not own the listener, so a caller can keep using it (e.g. `local_addr`) and serve
/// it with [`crate::serve_http1`] or a loop of its own.
pub struct Acceptor {
    name: &'static str,
    backoff: Backoff,
    warning: Throttle,
    on_error: Option<ErrorObserver>,
}

impl fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acceptor")
            .field("name", &self.name)
            .field("backoff", &self.backoff)
            .field("on_error", &self.on_error.is_some())
            .finish_non_exhaustive()
    }
}

impl Acceptor {
    /// `name` is the `listener` field of its log lines (and what a caller labels its metrics
    /// with).
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            backoff: Backoff::default(),
            warning: Throttle::new(WARN_EVERY),
            on_error: None,
        }
    }

    /// Calls `observer` with every accept error (e.g. to count it in a metric).
    pub fn on_error(mut self, observer: impl Fn(&io::Error) + Send + Sync + 'static) -> Self {
        self.on_error = Some(Box::new(observer));
        self
    }

    /// The `listener` name given to [`Self::new`].
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The next connection on `listener`; errors are handled here (never returned) because a
    /// listener has nothing better to do than try again, later. Cancel-safe: dropping the
    /// future while it waits keeps the backoff for the next call.
    pub async fn accept(&mut self, listener: &TcpListener) -> (TcpStream, SocketAddr) {
        loop {
            match listener.accept().await {
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

    /// Reports and (rate-limited) logs an error; how long to wait before the next attempt.
    fn failed(&mut self, error: &io::Error) -> Duration {
        if let Some(observer) = &self.on_error {
            observer(error);
        }
        let pause = self.backoff.next();
        if let Some(suppressed) = self.warning.allow() {
            warn!(
                listener = self.name,
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
    use std::sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    };

    #[test]
    fn backoff_doubles_up_to_a_second_and_resets() {
        let mut b = Backoff::default();
        let pauses: Vec<u64> = (0..10).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.reset();
        assert_eq!(b.next(), MIN_BACKOFF);
    }

    #[test]
    fn every_error_is_observed_and_backs_off() {
        let seen = Arc::new(AtomicU64::new(0));
        let counter = seen.clone();
        let mut acceptor = Acceptor::new("test").on_error(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        let emfile = io::Error::from_raw_os_error(24);
        let pauses: Vec<u64> = (0..4)
            .map(|_| acceptor.failed(&emfile).as_millis() as u64)
            .collect();
        assert_eq!(pauses, [5, 10, 20, 40]);
        assert_eq!(
            seen.load(Ordering::Relaxed),
            4,
            "the log is throttled, this is not"
        );
    }

    #[tokio::test]
    async fn a_success_resets_the_backoff() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let mut acceptor = Acceptor::new("test");
        let emfile = io::Error::from_raw_os_error(24);
        acceptor.failed(&emfile);
        acceptor.failed(&emfile);
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (_conn, peer) = acceptor.accept(&listener).await;
        assert_eq!(peer.ip(), addr.ip());
        assert_eq!(acceptor.failed(&emfile), MIN_BACKOFF);
    }
}
