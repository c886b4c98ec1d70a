//! Driving kube-rs watch streams: a reflector fills its store only while its stream is polled.

use futures::StreamExt;
use kube::runtime::watcher;
use std::sync::Arc;
use tokio::sync::Notify;
use tracing::warn;

/// Drives a watch stream for its side effects (a reflector filling its store), poking
/// `changed` after every event; failures are logged and the stream's backoff retries.
pub fn spawn_driver<S, T>(stream: S, changed: Arc<Notify>, kind: String)
where
    S: futures::Stream<Item = Result<T, watcher::Error>> + Send + 'static,
    T: Send,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                Err(e) => {
                    warn!(%kind, error = %e, "watch failed; retrying, the last state is served")
                }
            }
        }
    });
}
