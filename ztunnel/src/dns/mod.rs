//! ztunnel's DNS proxy, as Istio's ambient ztunnel has it: each enrolled pod's port-53
//! queries (redirected by the capture programs) reach a proxy inside the pod, which answers
//! the mesh's names from the xDS state and forwards the rest to ztunnel's upstream
//! resolvers.
//!
//! `names` decides which names are the mesh's, `forward` asks upstream (with a cache),
//! `resolv_conf` reads the upstreams, `server` is the in-pod listeners and the answers.

pub mod forward;
pub mod names;
pub mod resolv_conf;
pub mod server;

use crate::metrics::DnsMetrics;

/// What every pod's DNS proxy shares.
#[derive(Debug)]
pub struct Dns {
    pub forwarder: forward::Forwarder,
    /// The cluster's domain (`cluster.local`).
    pub domain: String,
    pub metrics: DnsMetrics,
}
