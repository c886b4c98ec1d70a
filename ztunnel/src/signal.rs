//! A one-way signal: once raised it stays raised. Used for a pod's removal (its listeners and
//! connections end) and for a live connection a policy change denies.

use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct Stop(watch::Receiver<bool>);

/// Raises its [`Stop`]s (also when dropped: a dropped sender ends the waits too).
#[derive(Debug)]
pub struct Raise(watch::Sender<bool>);

impl Raise {
    pub fn raise(&self) {
        self.0.send_replace(true);
    }
}

impl Stop {
    pub fn new() -> (Raise, Stop) {
        let (tx, rx) = watch::channel(false);
        (Raise(tx), Stop(rx))
    }

    /// Resolves once the signal is raised (or its sender is gone).
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|raised| *raised).await;
    }

    pub fn is_raised(&self) -> bool {
        *self.0.borrow()
    }
}
