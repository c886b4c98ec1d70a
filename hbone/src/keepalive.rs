//! HTTP/2 PING keepalive, both sides: every interval a PING; no PONG within the timeout means
//! the peer is gone (a half-open TCP connection would otherwise linger for minutes).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};
use tokio::task::JoinHandle;

pub(crate) const INTERVAL: Duration = Duration::from_secs(10);
pub(crate) const TIMEOUT: Duration = Duration::from_secs(20);

/// Resolves when the peer stopped answering PINGs; stops pinging when dropped. The
/// connection must be driven elsewhere meanwhile (PONGs arrive through it).
pub(crate) struct DeadPeer(Option<JoinHandle<()>>);

impl DeadPeer {
    pub(crate) fn watch(pp: Option<h2::PingPong>, interval: Duration, timeout: Duration) -> Self {
        Self(pp.map(|pp| tokio::spawn(pinger(pp, interval, timeout))))
    }
}

impl Future for DeadPeer {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.0.as_mut() {
            Some(handle) => Pin::new(handle).poll(cx).map(drop),
            None => Poll::Pending,
        }
    }
}

impl Drop for DeadPeer {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

async fn pinger(mut pp: h2::PingPong, interval: Duration, timeout: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, pp.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
    }
}
