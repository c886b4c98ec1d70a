//! What every pod proxy shares: the mesh state, certificates, the HBONE pool, the capture
//! maps, and the node-wide drain signal.

use crate::state::StateStore;
use amesh_ebpf_loader::CaptureMaps;
use amesh_hbone::Pool;
use amesh_identity::{CertManager, tls::TrustBundle};
use amesh_sys::netns::Netns;
use rustls::crypto::CryptoProvider;
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::AtomicUsize},
    time::Duration,
};
use tokio::sync::watch;

/// How long a connection waits for its pod's certificate before it is refused.
pub const CERT_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Shared {
    pub node: String,
    pub trust_domain: String,
    pub state: StateStore,
    pub certs: Arc<CertManager>,
    pub bundle: TrustBundle,
    pub provider: Arc<CryptoProvider>,
    pub pool: Pool,
    pub maps: Mutex<CaptureMaps>,
    /// A second handle on the same pinned maps, only for original-destination lookups: every
    /// outbound connection takes it, and it must not wait behind a pod's enrolment.
    pub orig_dst: Mutex<CaptureMaps>,
    /// ztunnel's own network namespace, to return to after creating in-pod sockets.
    pub home: Arc<Netns>,
    /// Rotates service endpoint choices.
    pub next_pick: AtomicUsize,
    /// Becomes true when ztunnel drains: stop accepting, let open connections finish.
    pub draining: Stop,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Inbound connections a policy change must re-check.
    pub live: Arc<crate::proxy::authz::LiveConnections>,
    /// Permits for inbound HBONE TLS handshakes in progress (`--max-hbone-handshakes`):
    /// before the handshake the peer is unauthenticated, so without a bound anyone who can
    /// reach 15008 could hold any number of tasks and sockets for the handshake timeout.
    pub handshakes: tokio::sync::Semaphore,
}

impl Shared {
    /// The original destination of a connection the outbound listener accepted from `peer`.
    pub fn original_dst(&self, pod_id: u32, peer: SocketAddr) -> Option<SocketAddr> {
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let mut maps = self.orig_dst.lock().unwrap_or_else(|e| e.into_inner());
        maps.take_original_dst(pod_id, peer).ok().flatten()
    }
}

static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// Connections open right now (drain waits for these).
pub fn active_connections() -> usize {
    ACTIVE.load(std::sync::atomic::Ordering::Relaxed)
}

/// Counts a connection for as long as it lives.
#[derive(Debug)]
pub struct ActiveGuard(());

impl ActiveGuard {
    pub fn enter() -> Self {
        ACTIVE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A one-way signal: once raised it stays raised.
#[derive(Clone, Debug)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    pub fn new() -> (watch::Sender<bool>, Stop) {
        let (tx, rx) = watch::channel(false);
        (tx, Stop(rx))
    }

    /// Resolves once the signal is raised (or its sender is gone).
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|raised| *raised).await;
    }

    pub fn is_raised(&self) -> bool {
        *self.0.borrow()
    }
}
