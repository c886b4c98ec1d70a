//! `ServiceEntry` into the workload API, as istiod's ambient index translates it: one
//! `Service` per host (its addresses from `spec.addresses`, else from Istio's allocator in
//! `status.addresses`, else allocated here from Istio's ranges), and a `Workload` per
//! endpoint (an IP, or a host name ztunnel resolves when it connects), plain TCP unless the
//! entry is marked for HBONE. `resolution: DNS` without endpoints resolves the host itself;
//! `NONE` is passthrough to the address the client dialled; `workloadSelector` adds the
//! entry's hosts to the selected pods of its namespace. `location` and `exportTo` change
//! nothing, as in istiod's ambient translation.

use crate::translate::{Mesh, Rejected};
use amesh_kube::networking::{ServiceEntry, WorkloadEntrySpec};
use amesh_proto::workload as pb;
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// Istio's auto-allocation ranges (`PILOT_IP_AUTOALLOCATE_IPV4_PREFIX`, `..._IPV6_PREFIX`).
const AUTO_V4: Ipv4Addr = Ipv4Addr::new(240, 240, 0, 0);
const AUTO_V4_SIZE: u32 = 1 << 16;
const AUTO_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0);
/// Istio's opt-out label.
const AUTOALLOCATE_LABEL: &str = "networking.istio.io/enable-autoallocate-ip";
/// The annotation that makes an entry's endpoints HBONE (they are in the mesh).
const REDIRECTION: &str = "ambient.istio.io/redirection";

/// What the ServiceEntries add: services and workloads by resource name, and the hosts each
/// selector-based entry gives pods of its namespace.
#[derive(Debug, Default)]
pub struct Translated {
    pub addresses: BTreeMap<String, pb::Address>,
    pub selected: Vec<Selected>,
}

/// A `workloadSelector` entry: pods of `namespace` with `labels` back `services`.
#[derive(Debug)]
pub struct Selected {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// `namespace/host` → its ports (target ports as the entry says).
    pub services: BTreeMap<String, pb::PortList>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolution {
    None,
    Static,
    Dns,
}

fn resolution(e: &ServiceEntry) -> Result<Resolution, String> {
    match e.spec.resolution.as_deref().unwrap_or("NONE") {
        "NONE" => Ok(Resolution::None),
        "STATIC" => Ok(Resolution::Static),
        "DNS" | "DNS_ROUND_ROBIN" => Ok(Resolution::Dns),
        other => Err(format!(
            "spec.resolution: {other:?} is not one of NONE, STATIC, DNS, DNS_ROUND_ROBIN"
        )),
    }
}

fn reject(e: &ServiceEntry, reason: String) -> Rejected {
    Rejected {
        kind: "ServiceEntry",
        namespace: e.metadata.namespace.clone(),
        name: e.metadata.name.clone(),
        reason,
        partial: false,
    }
}

fn network_address(ip: IpAddr, length: Option<u32>) -> pb::NetworkAddress {
    pb::NetworkAddress {
        network: String::new(),
        address: match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        },
        length,
    }
}

/// Checks an entry as istiod's validation does, the parts the translation relies on.
fn validate(e: &ServiceEntry, res: Resolution) -> Result<(), String> {
    if e.spec.hosts.is_empty() {
        return Err("spec.hosts: at least one host is required".into());
    }
    for (i, h) in e.spec.hosts.iter().enumerate() {
        let bare = h.strip_prefix("*.").unwrap_or(h);
        if bare.is_empty()
            || bare.contains('*')
            || !bare
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        {
            return Err(format!("spec.hosts[{i}]: {h:?} is not a host name"));
        }
    }
    for (i, a) in e.spec.addresses.iter().enumerate() {
        let ip = a.split_once('/').map_or(a.as_str(), |(ip, _)| ip);
        if ip.parse::<IpAddr>().is_err() {
            return Err(format!("spec.addresses[{i}]: {a:?} is not an IP or CIDR"));
        }
    }
    let mut names = BTreeSet::new();
    for (i, p) in e.spec.ports.iter().enumerate() {
        if p.number == 0 || p.number > 65535 {
            return Err(format!(
                "spec.ports[{i}].number: {} is not a port",
                p.number
            ));
        }
        if p.target_port.is_some_and(|t| t == 0 || t > 65535) {
            return Err(format!("spec.ports[{i}].targetPort: not a port"));
        }
        if !p.name.is_empty() && !names.insert(p.name.clone()) {
            return Err(format!("spec.ports[{i}].name: {:?} is used twice", p.name));
        }
    }
    if res == Resolution::Static {
        for (i, ep) in e.spec.endpoints.iter().enumerate() {
            if ep.address.parse::<IpAddr>().is_err() {
                return Err(format!(
                    "spec.endpoints[{i}].address: {:?} must be an IP with resolution STATIC",
                    ep.address
                ));
            }
        }
    }
    if !e.spec.endpoints.is_empty() && e.spec.workload_selector.is_some() {
        return Err("spec.endpoints and spec.workloadSelector cannot both be set".into());
    }
    Ok(())
}

/// Translates every ServiceEntry. `taken` are addresses the cluster's Services already use
/// (never allocated again).
pub fn translate(
    entries: &[ServiceEntry],
    mesh: &Mesh,
    taken: &BTreeSet<IpAddr>,
    errors: &mut Vec<Rejected>,
) -> Translated {
    let mut out = Translated::default();
    // The oldest entry first: it keeps its allocation when a newer one arrives, as Istio's
    // allocator does.
    let mut entries: Vec<&ServiceEntry> = entries.iter().collect();
    entries.sort_by(|a, b| {
        (
            &a.metadata.creation_timestamp,
            &a.metadata.namespace,
            &a.metadata.name,
        )
            .cmp(&(
                &b.metadata.creation_timestamp,
                &b.metadata.namespace,
                &b.metadata.name,
            ))
    });
    let mut allocator = Allocator::new(taken, &entries);
    for e in entries {
        let res = match resolution(e).and_then(|r| validate(e, r).map(|()| r)) {
            Ok(r) => r,
            Err(reason) => {
                errors.push(reject(e, reason));
                continue;
            }
        };
        translate_one(e, res, mesh, &mut allocator, &mut out);
    }
    out
}

fn translate_one(
    e: &ServiceEntry,
    res: Resolution,
    mesh: &Mesh,
    allocator: &mut Allocator,
    out: &mut Translated,
) {
    let ns = if e.metadata.namespace.is_empty() {
        "default"
    } else {
        &e.metadata.namespace
    };
    let ports: Vec<pb::Port> = e
        .spec
        .ports
        .iter()
        .map(|p| pb::Port {
            service_port: p.number,
            target_port: p.target_port.unwrap_or(p.number),
            app_protocol: crate::app_protocol::of_service_entry(
                p.number,
                &p.name,
                p.protocol.as_deref(),
            ) as i32,
        })
        .collect();
    let mut keys = Vec::new();
    for host in &e.spec.hosts {
        let addresses = if !e.spec.addresses.is_empty() {
            e.spec
                .addresses
                .iter()
                .filter_map(|a| {
                    let (ip, len) = match a.split_once('/') {
                        Some((ip, len)) => (ip, len.parse().ok()),
                        None => (a.as_str(), None),
                    };
                    Some(network_address(ip.parse().ok()?, len))
                })
                .collect()
        } else {
            allocator
                .addresses_of(e, host, res)
                .into_iter()
                .map(|ip| network_address(ip, None))
                .collect()
        };
        let key = format!("{ns}/{host}");
        let service = pb::Service {
            name: e.metadata.name.clone(),
            namespace: ns.to_string(),
            hostname: host.clone(),
            addresses,
            ports: ports.clone(),
            subject_alt_names: e.spec.subject_alt_names.clone(),
            load_balancing: (res == Resolution::None).then(|| pb::LoadBalancing {
                mode: pb::load_balancing::Mode::Passthrough as i32,
                health_policy: pb::load_balancing::HealthPolicy::AllowAll as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        out.addresses.insert(
            key.clone(),
            pb::Address {
                r#type: Some(pb::address::Type::Service(service)),
            },
        );
        keys.push(key);
    }
    let port_list = |ep: Option<&WorkloadEntrySpec>| pb::PortList {
        ports: e
            .spec
            .ports
            .iter()
            .map(|p| pb::Port {
                service_port: p.number,
                target_port: ep
                    .and_then(|ep| ep.ports.get(&p.name).copied())
                    .or(p.target_port)
                    .unwrap_or(p.number),
                app_protocol: 0,
            })
            .collect(),
    };
    if let Some(sel) = &e.spec.workload_selector {
        out.selected.push(Selected {
            namespace: ns.to_string(),
            labels: sel.labels.clone(),
            services: keys.iter().map(|k| (k.clone(), port_list(None))).collect(),
        });
        return;
    }
    let hbone = e
        .metadata
        .annotations
        .get(REDIRECTION)
        .is_some_and(|v| v == "enabled");
    let workload = |address: &str, ep: Option<&WorkloadEntrySpec>| {
        let (addresses, hostname) = match address.parse::<IpAddr>() {
            Ok(ip) => (vec![network_address(ip, None).address], String::new()),
            Err(_) => (vec![], address.to_string()),
        };
        pb::Workload {
            uid: format!(
                "{}/networking.istio.io/ServiceEntry/{ns}/{}/{address}",
                mesh.cluster_id, e.metadata.name
            ),
            name: e.metadata.name.clone(),
            namespace: ns.to_string(),
            addresses,
            hostname,
            network: ep.map(|ep| ep.network.clone()).unwrap_or_default(),
            tunnel_protocol: if hbone {
                pb::TunnelProtocol::Hbone
            } else {
                pb::TunnelProtocol::None
            } as i32,
            trust_domain: mesh.trust_domain.clone(),
            service_account: ep
                .map(|ep| ep.service_account.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into()),
            canonical_name: e
                .metadata
                .labels
                .get("service.istio.io/canonical-name")
                .or_else(|| e.metadata.labels.get("app"))
                .cloned()
                .unwrap_or_else(|| e.metadata.name.clone()),
            canonical_revision: e
                .metadata
                .labels
                .get("service.istio.io/canonical-revision")
                .cloned()
                .unwrap_or_else(|| "latest".into()),
            workload_name: e.metadata.name.clone(),
            workload_type: pb::WorkloadType::Pod as i32,
            cluster_id: mesh.cluster_id.clone(),
            services: keys.iter().map(|k| (k.clone(), port_list(ep))).collect(),
            capacity: ep.and_then(|ep| ep.weight),
            ..Default::default()
        }
    };
    let mut workloads = Vec::new();
    if e.spec.endpoints.is_empty() {
        // `DNS` without endpoints: each host is its own endpoint, resolved when connecting.
        if res == Resolution::Dns {
            for host in e.spec.hosts.iter().filter(|h| !h.starts_with("*.")) {
                let mut w = workload(host, None);
                // Only this host backs its own service.
                w.services.retain(|k, _| k == &format!("{ns}/{host}"));
                workloads.push(w);
            }
        }
    } else {
        for ep in &e.spec.endpoints {
            workloads.push(workload(&ep.address, Some(ep)));
        }
    }
    for w in workloads {
        out.addresses.insert(
            w.uid.clone(),
            pb::Address {
                r#type: Some(pb::address::Type::Workload(w)),
            },
        );
    }
}

/// Gives hosts without addresses one IPv4 and one IPv6 address from Istio's ranges: the
/// address Istio's allocator recorded in the entry's status when there is one, else the next
/// free one in the entries' age order (stable while older entries stay).
struct Allocator {
    used: BTreeSet<IpAddr>,
    next: u32,
}

impl Allocator {
    fn new(taken: &BTreeSet<IpAddr>, entries: &[&ServiceEntry]) -> Self {
        let mut used = taken.clone();
        for e in entries {
            for a in &e.status.addresses {
                if let Ok(ip) = a.value.parse() {
                    used.insert(ip);
                }
            }
        }
        Self { used, next: 1 }
    }

    fn addresses_of(&mut self, e: &ServiceEntry, host: &str, res: Resolution) -> Vec<IpAddr> {
        // Istio's eligibility: not NONE, not opted out, not a wildcard.
        if res == Resolution::None
            || host.starts_with("*.")
            || e.metadata
                .labels
                .get(AUTOALLOCATE_LABEL)
                .is_some_and(|v| v == "false")
        {
            return vec![];
        }
        let recorded: Vec<IpAddr> = e
            .status
            .addresses
            .iter()
            .filter(|a| a.host == host)
            .filter_map(|a| a.value.parse().ok())
            .collect();
        if !recorded.is_empty() {
            return recorded;
        }
        while self.next < AUTO_V4_SIZE - 1 {
            let n = self.next;
            self.next += 1;
            let v4 = IpAddr::V4(Ipv4Addr::from(u32::from(AUTO_V4) + n));
            let v6 = IpAddr::V6(Ipv6Addr::from(u128::from(AUTO_V6) + u128::from(n)));
            if self.used.contains(&v4) || self.used.contains(&v6) {
                continue;
            }
            self.used.insert(v4);
            self.used.insert(v6);
            return vec![v4, v6];
        }
        vec![]
    }
}

/// Adds the selector entries' hosts to the pods they select.
pub fn apply_selected(
    selected: &[Selected],
    namespace: &str,
    labels: &BTreeMap<String, String>,
    w: &mut pb::Workload,
) {
    for s in selected.iter().filter(|s| {
        s.namespace == namespace && s.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }) {
        for (k, ports) in &s.services {
            w.services.insert(k.clone(), ports.clone());
        }
    }
}

#[cfg(test)]
#[path = "service_entries_tests.rs"]
mod tests;
