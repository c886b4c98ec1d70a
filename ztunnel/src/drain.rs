//! Draining ztunnel: on SIGTERM or `/quitquitquit` the listeners stop accepting, open
//! connections may finish until the deadline, then ztunnel exits. [`new`] gives the
//! one trigger (kept by `run`) and the watch every listener and connection holds.

use crate::signal::{Raise, Stop};
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

/// Starts the drain and waits for open connections to end.
#[derive(Debug)]
pub struct DrainTrigger {
    raise: Raise,
    open: Arc<AtomicUsize>,
}

/// What listeners and connections see of the drain.
#[derive(Clone, Debug)]
pub struct DrainWatch {
    started: Stop,
    open: Arc<AtomicUsize>,
}

/// Counts one connection as open for as long as it lives.
#[derive(Debug)]
pub struct ConnectionGuard(Arc<AtomicUsize>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The one trigger and the watch to hand out (clone it).
pub fn new() -> (DrainTrigger, DrainWatch) {
    let (raise, started) = Stop::new();
    let open = Arc::new(AtomicUsize::new(0));
    (
        DrainTrigger {
            raise,
            open: open.clone(),
        },
        DrainWatch { started, open },
    )
}

impl DrainTrigger {
    /// Starts draining, then waits until no connection is open or `deadline` passed; returns
    /// how many are still open.
    pub async fn drain(self, deadline: Duration) -> usize {
        self.raise.raise();
        let open = || self.open.load(Ordering::Relaxed);
        // Connections end on their own schedule and nothing notifies a count reaching zero
        // cheaply from every drop; a short poll bounds the wait's overshoot.
        let _ = tokio::time::timeout(deadline, async {
            while open() > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        open()
    }
}

impl DrainWatch {
    /// Resolves once draining started.
    pub async fn started(self) {
        self.started.wait().await;
    }

    pub fn is_draining(&self) -> bool {
        self.started.is_raised()
    }

    /// Counts a connection as open until the guard drops.
    pub fn track(&self) -> ConnectionGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(self.open.clone())
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_open_connections_until_the_deadline() {
        let (trigger, watch) = new();
        let guard = watch.track();
        let _second = watch.track();
        assert_eq!(watch.open(), 2);
        drop(guard);
        assert!(!watch.is_draining());
        let started = tokio::spawn(watch.clone().started());
        let left = trigger.drain(Duration::from_secs(1)).await;
        assert_eq!(left, 1, "one connection outlived the deadline");
        assert!(watch.is_draining());
        started.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn drain_ends_as_soon_as_the_last_connection_closes() {
        let (trigger, watch) = new();
        let guard = watch.track();
        let closer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(guard);
        });
        let t0 = tokio::time::Instant::now();
        assert_eq!(trigger.drain(Duration::from_secs(30)).await, 0);
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        closer.await.unwrap();
    }
}
