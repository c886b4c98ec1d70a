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

use crate::{metrics::DnsMetrics, proxy::PodNet};
use hickory_proto::{
    op::{Message, Query},
    rr::{Name, RData, RecordType},
};
use std::net::IpAddr;

/// What every pod's DNS proxy shares.
#[derive(Debug)]
pub struct Dns {
    pub forwarder: forward::Forwarder,
    /// The cluster's domain (`cluster.local`).
    pub domain: String,
    pub metrics: DnsMetrics,
}

impl Dns {
    /// The addresses of `host` for a connection from the pod of `net` (a service endpoint
    /// known by name): the family the client dialled first, the other one when it has none;
    /// asked of the upstream resolvers like the pod's own queries (and cached alike).
    pub async fn resolve(&self, host: &str, v4: bool, net: &PodNet) -> Result<Vec<IpAddr>, String> {
        let name = Name::from_ascii(format!("{}.", host.trim_end_matches('.')))
            .map_err(|e| format!("{host:?} is not a DNS name: {e}"))?;
        let families = if v4 {
            [RecordType::A, RecordType::AAAA]
        } else {
            [RecordType::AAAA, RecordType::A]
        };
        let mut last = String::from("no address");
        for qtype in families {
            let mut q = Message::query();
            q.metadata.id = fastrand::u16(..);
            q.metadata.recursion_desired = true;
            q.add_query(Query::query(name.clone(), qtype));
            let answer = match self
                .forwarder
                .forward(&q, forward::Transport::Udp, net)
                .await
            {
                Ok(a) if a.answer.metadata.truncation => {
                    match self
                        .forwarder
                        .forward(&q, forward::Transport::Tcp, net)
                        .await
                    {
                        Ok(a) => a.answer,
                        Err(e) => {
                            last = e.to_string();
                            continue;
                        }
                    }
                }
                Ok(a) => a.answer,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            let ips: Vec<IpAddr> = answer
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                })
                .collect();
            if !ips.is_empty() {
                return Ok(ips);
            }
            last = format!("{} with no {qtype} record", answer.metadata.response_code);
        }
        Err(last)
    }
}
