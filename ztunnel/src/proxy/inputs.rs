//! Everything the data path reads, handed to it explicitly and built in one place
//! ([`ProxyInputs::new`], called by `run`): the mesh state (read-only), certificates and
//! trust, the HBONE pool, original-destination lookups, the drain watch, metrics and the
//! live-connection registry.

use super::authz::LiveConnections;
use crate::{drain::DrainWatch, metrics::Metrics, state::StateReader};
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
use tokio::net::TcpStream;

/// How long a connection waits for its pod's certificate before it is refused.
pub const CERT_WAIT: Duration = Duration::from_secs(5);

/// Who this ztunnel is.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    pub node: String,
    pub trust_domain: String,
    /// Istio's network of this node (empty: the default one).
    pub network: String,
}

/// Certificates and what peers are checked against.
#[derive(Debug)]
pub struct Trust {
    pub certs: Arc<CertManager>,
    pub bundle: TrustBundle,
    pub provider: Arc<CryptoProvider>,
}

/// Where an outbound connection was going before the capture redirected it to 15001.
// Built once and never moved (it lives in `ProxyInputs`): the size difference costs nothing,
// a box would cost a pointer chase on every outbound connection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum OriginalDestinations {
    /// The eBPF capture recorded it in a map, keyed by pod and the client's address. Its own
    /// handle on the pinned maps: every outbound connection asks, and it must not wait behind
    /// a pod's enrolment.
    Ebpf(Mutex<CaptureMaps>),
    /// istio-cni's REDIRECT: the kernel keeps it on the socket (`SO_ORIGINAL_DST`).
    Iptables,
}

impl OriginalDestinations {
    pub fn new(maps: CaptureMaps) -> Self {
        Self::Ebpf(Mutex::new(maps))
    }

    /// The original destination of `conn`, which the outbound listener accepted from `peer`.
    pub fn take(&self, pod_id: u32, peer: SocketAddr, conn: &TcpStream) -> Option<SocketAddr> {
        match self {
            Self::Ebpf(maps) => {
                let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                let mut maps = maps.lock().unwrap_or_else(|e| e.into_inner());
                maps.take_original_dst(pod_id, peer).ok().flatten()
            }
            // A connection made to 15001 itself is "redirected" to where it already was:
            // it has no destination to go on to (routing it there would loop).
            Self::Iptables => nat_original_dst(conn).filter(|dst| Some(*dst) != local_of(conn)),
        }
    }

    /// Where a plaintext connection accepted on 15006 was going: the eBPF capture hands it
    /// over with its original destination as the local address; iptables rewrote it.
    pub fn inbound_target(&self, conn: &TcpStream) -> Option<SocketAddr> {
        match self {
            Self::Ebpf(_) => conn.local_addr().ok(),
            Self::Iptables => nat_original_dst(conn),
        }
    }
}

fn local_of(conn: &TcpStream) -> Option<SocketAddr> {
    let local = conn.local_addr().ok()?;
    Some(SocketAddr::new(local.ip().to_canonical(), local.port()))
}

/// The destination iptables' NAT rewrote on `conn` (`SO_ORIGINAL_DST`, or its IPv6 twin for
/// an IPv6 socket), canonical; `None` when the kernel has none (not NATed), which callers
/// refuse. A connection aimed at the listener's own port comes back as that port, for the
/// caller to refuse as one of ztunnel's.
pub fn nat_original_dst(conn: &TcpStream) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(conn);
    let local = local_of(conn)?;
    let dst = if local.is_ipv6() {
        sock.original_dst_v6()
    } else {
        sock.original_dst_v4()
    };
    let dst = dst.ok()?.as_socket()?;
    Some(SocketAddr::new(dst.ip().to_canonical(), dst.port()))
}

#[derive(Debug)]
pub struct ProxyInputs {
    pub id: NodeIdentity,
    pub state: StateReader,
    pub trust: Trust,
    pub pool: Pool,
    pub orig_dst: OriginalDestinations,
    /// ztunnel's own network namespace, to return to after creating in-pod sockets.
    pub home: Arc<Netns>,
    /// Rotates service endpoint choices.
    pub next_pick: AtomicUsize,
    /// Stop accepting when ztunnel drains; open connections are counted here.
    pub drain: DrainWatch,
    pub metrics: Arc<Metrics>,
    /// Inbound connections a policy change must re-check.
    pub live: Arc<LiveConnections>,
    /// Permits for inbound HBONE TLS handshakes in progress (`--max-hbone-handshakes`):
    /// before the handshake the peer is unauthenticated, so without a bound anyone who can
    /// reach 15008 could hold any number of tasks and sockets for the handshake timeout.
    pub handshakes: tokio::sync::Semaphore,
    /// The pods' DNS proxy.
    pub dns: Arc<crate::dns::Dns>,
    /// Istio's `outboundTrafficPolicy: REGISTRY_ONLY`: connections to destinations outside
    /// the registry are refused.
    pub registry_only: bool,
}

/// What [`ProxyInputs::new`] is built from.
#[derive(Debug)]
pub struct Parts {
    pub id: NodeIdentity,
    pub state: StateReader,
    pub trust: Trust,
    pub pool: Pool,
    pub orig_dst: OriginalDestinations,
    pub home: Arc<Netns>,
    pub drain: DrainWatch,
    pub metrics: Arc<Metrics>,
    pub max_hbone_handshakes: usize,
    pub dns: Arc<crate::dns::Dns>,
    pub registry_only: bool,
}

impl ProxyInputs {
    pub fn new(p: Parts) -> Arc<Self> {
        Arc::new(Self {
            id: p.id,
            state: p.state,
            trust: p.trust,
            pool: p.pool,
            orig_dst: p.orig_dst,
            home: p.home,
            next_pick: AtomicUsize::new(0),
            drain: p.drain,
            metrics: p.metrics,
            live: Arc::default(),
            handshakes: tokio::sync::Semaphore::new(p.max_hbone_handshakes),
            dns: p.dns,
            registry_only: p.registry_only,
        })
    }
}
