//! Istio's xDS resources (`istio.workload.Address`, `istio.security.Authorization`) turned
//! into ztunnel's validated state, one resource at a time: ztunnel's [`Handler`]s for the
//! two types. A malformed resource is rejected with the reason (amesh-xds names it in the
//! NACK) while the others in the same response apply. [`Resources`] keeps the last good
//! version of every resource, so a bad update leaves the previous one in place.

use super::{LoadBalancing, Locality, LocalityScope, Protocol, Service, State, Workload};
use amesh_policy::{
    Action, Authorization, Clause, IpNet, Match, Rule, Scope, ServiceAccountMatch, StringMatch,
};
use amesh_proto::{security as pb_sec, workload as pb};
use amesh_xds::{Changes, Handler};
use prost::Message;
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

fn ip(bytes: &[u8], what: &str) -> Result<IpAddr, String> {
    match bytes.len() {
        4 => Ok(IpAddr::from(
            <[u8; 4]>::try_from(bytes).map_err(|_| what.to_string())?,
        )),
        16 => Ok(IpAddr::from(
            <[u8; 16]>::try_from(bytes).map_err(|_| what.to_string())?,
        )),
        n => Err(format!("{what} has {n} bytes (an address has 4 or 16)")),
    }
}

fn port(p: u32, what: &str) -> Result<u16, String> {
    u16::try_from(p).map_err(|_| format!("{what} {p} is not a port"))
}

/// A converted resource must also meet what every source checks.
fn validated<T>(value: T, check: impl Fn(&T) -> Result<(), super::Invalid>) -> Result<T, String> {
    check(&value).map_err(|i| format!("{}: {}", i.field, i.reason))?;
    Ok(value)
}

pub fn workload(w: pb::Workload) -> Result<Workload, String> {
    let addresses = w
        .addresses
        .iter()
        .enumerate()
        .map(|(i, a)| ip(a, &format!("address {i}")))
        .collect::<Result<_, _>>()?;
    let protocol = match pb::TunnelProtocol::try_from(w.tunnel_protocol) {
        Ok(pb::TunnelProtocol::Hbone) => Protocol::Hbone,
        Ok(pb::TunnelProtocol::None) => Protocol::Tcp,
        Ok(pb::TunnelProtocol::LegacyIstioMtls) => {
            return Err("tunnel protocol LEGACY_ISTIO_MTLS is not supported".into());
        }
        Err(_) => return Err(format!("unknown tunnel protocol {}", w.tunnel_protocol)),
    };
    let mut services = BTreeMap::new();
    for (svc, ports) in w.services {
        let mut map = BTreeMap::new();
        for p in ports.ports {
            map.insert(
                port(p.service_port, "service port")?,
                port(p.target_port, "target port")?,
            );
        }
        services.insert(svc, map);
    }
    let locality = w
        .locality
        .map(|l| Locality {
            region: l.region,
            zone: l.zone,
            subzone: l.subzone,
        })
        .unwrap_or_default();
    let workload = Workload {
        uid: w.uid,
        name: w.name,
        namespace: w.namespace,
        service_account: if w.service_account.is_empty() {
            "default".into()
        } else {
            w.service_account
        },
        trust_domain: if w.trust_domain.is_empty() {
            amesh_identity::DEFAULT_TRUST_DOMAIN.into()
        } else {
            w.trust_domain
        },
        addresses,
        protocol,
        node: w.node,
        healthy: w.status != pb::WorkloadStatus::Unhealthy as i32,
        services,
        authorization_policies: w.authorization_policies,
        locality,
    };
    validated(workload, Workload::validate)
}

pub fn service(s: pb::Service) -> Result<Service, String> {
    let vips = s
        .addresses
        .iter()
        .enumerate()
        .map(|(i, a)| ip(&a.address, &format!("address {i}")))
        .collect::<Result<_, _>>()?;
    let mut ports = BTreeMap::new();
    for p in &s.ports {
        ports.insert(
            port(p.service_port, "service port")?,
            port(p.target_port, "target port")?,
        );
    }
    let load_balancing = s
        .load_balancing
        .map(load_balancing)
        .transpose()?
        .unwrap_or_default();
    let service = Service {
        name: s.name,
        namespace: s.namespace,
        hostname: s.hostname,
        vips,
        ports,
        load_balancing,
    };
    validated(service, Service::validate)
}

fn load_balancing(lb: pb::LoadBalancing) -> Result<LoadBalancing, String> {
    use pb::load_balancing::{Mode, Scope as S};
    let mut prefer = Vec::new();
    for p in &lb.routing_preference {
        prefer.push(match S::try_from(*p) {
            Ok(S::Region) => LocalityScope::Region,
            Ok(S::Zone) => LocalityScope::Zone,
            Ok(S::Subzone) => LocalityScope::Subzone,
            Ok(S::Node) => LocalityScope::Node,
            // One cluster and one network here: these always match.
            Ok(S::Cluster | S::Network | S::UnspecifiedScope) => continue,
            Err(_) => return Err(format!("unknown routing preference {p}")),
        });
    }
    let strict = lb.mode == Mode::Strict as i32;
    Ok(LoadBalancing { prefer, strict })
}

fn strings(v: &[pb_sec::StringMatch]) -> Vec<StringMatch> {
    use pb_sec::string_match::MatchType;
    v.iter()
        .filter_map(|m| match m.match_type.as_ref()? {
            MatchType::Exact(s) => Some(StringMatch::Exact(s.clone())),
            MatchType::Prefix(s) => Some(StringMatch::Prefix(s.clone())),
            MatchType::Suffix(s) => Some(StringMatch::Suffix(s.clone())),
            MatchType::Presence(_) => Some(StringMatch::Presence),
        })
        .collect()
}

fn nets(v: &[pb_sec::Address]) -> Result<Vec<IpNet>, String> {
    v.iter()
        .map(|a| {
            let addr = ip(&a.address, "address")?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix = u8::try_from(a.length)
                .ok()
                .filter(|l| *l <= max)
                .ok_or(format!("prefix length {} for {addr}", a.length))?;
            Ok(IpNet { addr, prefix })
        })
        .collect()
}

fn ports(v: &[u32]) -> Result<Vec<u16>, String> {
    v.iter().map(|p| port(*p, "destination port")).collect()
}

fn accounts(v: &[pb_sec::ServiceAccountMatch]) -> Vec<ServiceAccountMatch> {
    v.iter()
        .map(|a| ServiceAccountMatch {
            namespace: a.namespace.clone(),
            service_account: a.service_account.clone(),
        })
        .collect()
}

fn one_match(m: &pb_sec::Match) -> Result<Match, String> {
    Ok(Match {
        principals: strings(&m.principals),
        not_principals: strings(&m.not_principals),
        namespaces: strings(&m.namespaces),
        not_namespaces: strings(&m.not_namespaces),
        source_ips: nets(&m.source_ips)?,
        not_source_ips: nets(&m.not_source_ips)?,
        destination_ips: nets(&m.destination_ips)?,
        not_destination_ips: nets(&m.not_destination_ips)?,
        destination_ports: ports(&m.destination_ports)?,
        not_destination_ports: ports(&m.not_destination_ports)?,
        service_accounts: accounts(&m.service_accounts),
        not_service_accounts: accounts(&m.not_service_accounts),
        // Conditions ztunnel cannot evaluate arrive as extensions: fail safe.
        requires_l7: !m.extensions.is_empty(),
    })
}

pub fn authorization(a: pb_sec::Authorization) -> Result<Authorization, String> {
    let scope = match pb_sec::Scope::try_from(a.scope) {
        Ok(pb_sec::Scope::Global) => Scope::Global,
        Ok(pb_sec::Scope::Namespace) => Scope::Namespace,
        Ok(pb_sec::Scope::WorkloadSelector) => Scope::WorkloadSelector,
        Err(_) => return Err(format!("unknown scope {}", a.scope)),
    };
    let action = match pb_sec::Action::try_from(a.action) {
        Ok(pb_sec::Action::Allow) => Action::Allow,
        Ok(pb_sec::Action::Deny) => Action::Deny,
        Err(_) => return Err(format!("action {} is not supported at L4", a.action)),
    };
    let mut rules = Vec::new();
    for g in &a.groups {
        let clauses = g
            .rules
            .iter()
            .map(|r| {
                r.matches
                    .iter()
                    .map(one_match)
                    .collect::<Result<Vec<_>, _>>()
                    .map(|matches| Clause { matches })
            })
            .collect::<Result<_, _>>()?;
        rules.push(Rule { clauses });
    }
    Ok(Authorization {
        name: a.name,
        namespace: a.namespace,
        scope,
        action,
        rules,
        dry_run: a.dry_run,
    })
}

/// The last good version of every xDS resource, by resource name: what both handlers fill
/// and what is published.
#[derive(Debug, Default)]
pub struct Resources {
    workloads: HashMap<String, Workload>,
    services: HashMap<String, Service>,
    policies: HashMap<String, Authorization>,
}

impl Resources {
    /// The state these resources describe.
    pub fn state(&self) -> State {
        State::new(
            self.workloads.values().cloned().collect(),
            self.services.values().cloned().collect(),
        )
        .with_policies(self.policies.values().cloned().collect(), Vec::new())
    }
}

/// The resources, shared by the two handlers and the publisher. A panic elsewhere while
/// holding the lock leaves whole maps behind (every change is one insert or remove), so a
/// poisoned lock is still good to use.
pub fn lock(resources: &Mutex<Resources>) -> MutexGuard<'_, Resources> {
    resources.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One decoded `istio.workload.Address`.
#[derive(Debug)]
pub enum Address {
    Workload(Workload),
    Service(Service),
}

/// Handles `istio.workload.Address` (workloads and services).
#[derive(Debug, Clone)]
pub struct AddressHandler(pub Arc<Mutex<Resources>>);

impl Handler for AddressHandler {
    type Resource = Address;
    type Error = String;

    fn decode(&self, _name: &str, bytes: &[u8]) -> Result<Address, String> {
        let address = pb::Address::decode(bytes).map_err(|e| format!("does not decode: {e}"))?;
        match address.r#type {
            Some(pb::address::Type::Workload(w)) => workload(w).map(Address::Workload),
            Some(pb::address::Type::Service(s)) => service(s).map(Address::Service),
            None => Err("address is neither a workload nor a service".into()),
        }
    }

    fn apply(&mut self, changes: Changes<Address>) {
        let mut r = lock(&self.0);
        for (name, address) in changes.updated {
            // A name is one resource: one that turns from workload into service (or back)
            // leaves nothing of its old kind behind.
            match address {
                Address::Workload(w) => {
                    r.services.remove(&name);
                    r.workloads.insert(name, w);
                }
                Address::Service(s) => {
                    r.workloads.remove(&name);
                    r.services.insert(name, s);
                }
            }
        }
        for name in &changes.removed {
            r.workloads.remove(name);
            r.services.remove(name);
        }
    }
}

/// Handles `istio.security.Authorization`.
#[derive(Debug, Clone)]
pub struct AuthorizationHandler(pub Arc<Mutex<Resources>>);

impl Handler for AuthorizationHandler {
    type Resource = Authorization;
    type Error = String;

    fn decode(&self, _name: &str, bytes: &[u8]) -> Result<Authorization, String> {
        pb_sec::Authorization::decode(bytes)
            .map_err(|e| format!("does not decode: {e}"))
            .and_then(authorization)
    }

    fn apply(&mut self, changes: Changes<Authorization>) {
        let mut r = lock(&self.0);
        r.policies.extend(changes.updated);
        for name in &changes.removed {
            r.policies.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amesh_xds::{Rejected, handler::process};

    /// Shared resources and a handler of each type, driven as the xDS client drives them.
    #[derive(Default)]
    struct Handlers(Arc<Mutex<Resources>>);

    impl Handlers {
        fn apply_addresses(
            &self,
            updated: Vec<(String, Vec<u8>)>,
            removed: &[String],
        ) -> Vec<Rejected> {
            process(
                &mut AddressHandler(self.0.clone()),
                updated,
                removed.to_vec(),
            )
        }

        fn apply_authorizations(
            &self,
            updated: Vec<(String, Vec<u8>)>,
            removed: &[String],
        ) -> Vec<Rejected> {
            process(
                &mut AuthorizationHandler(self.0.clone()),
                updated,
                removed.to_vec(),
            )
        }

        fn state(&self) -> State {
            lock(&self.0).state()
        }
    }

    fn address_of(w: pb::Workload) -> Vec<u8> {
        pb::Address {
            r#type: Some(pb::address::Type::Workload(w)),
        }
        .encode_to_vec()
    }

    fn wl(uid: &str, addr: Vec<u8>) -> pb::Workload {
        pb::Workload {
            uid: uid.into(),
            name: uid.into(),
            namespace: "ns".into(),
            addresses: vec![addr],
            tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
            ..Default::default()
        }
    }

    /// The same invariants as the local file (shared `validate`), named the same way.
    #[test]
    fn xds_resources_meet_the_same_invariants_as_the_file() {
        let nameless = pb::Workload {
            uid: "u1".into(),
            namespace: "ns".into(),
            ..Default::default()
        };
        assert_eq!(
            workload(nameless).expect_err("no name"),
            "name: must not be empty"
        );
        let mut bad_service_key = pb::Workload {
            uid: "u1".into(),
            name: "a".into(),
            namespace: "ns".into(),
            ..Default::default()
        };
        bad_service_key
            .services
            .insert("no-slash".into(), Default::default());
        assert!(
            workload(bad_service_key)
                .expect_err("bad key")
                .starts_with("services: ")
        );
        let hostless = pb::Service {
            name: "s".into(),
            namespace: "ns".into(),
            ..Default::default()
        };
        assert_eq!(
            service(hostless).expect_err("no hostname"),
            "hostname: must not be empty"
        );
    }

    #[test]
    fn a_malformed_resource_is_rejected_by_name_while_its_siblings_apply() {
        let r = Handlers::default();
        let rejected = r.apply_addresses(
            vec![
                ("good".into(), address_of(wl("good", vec![10, 0, 0, 1]))),
                (
                    "five-bytes".into(),
                    address_of(wl("five-bytes", vec![10, 0, 0, 1, 9])),
                ),
                ("garbage".into(), vec![0xff, 0xff]),
            ],
            &[],
        );
        let names: Vec<&str> = rejected.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["five-bytes", "garbage"]);
        assert!(rejected[0].reason.contains("5 bytes"), "{}", rejected[0]);
        let state = r.state();
        assert!(state.workload_by_ip("10.0.0.1".parse().unwrap()).is_some());
        assert_eq!(state.workloads().count(), 1);

        // A bad update leaves the last good version in place; a removal removes.
        let rejected =
            r.apply_addresses(vec![("good".into(), address_of(wl("good", vec![1])))], &[]);
        assert_eq!(rejected.len(), 1);
        assert!(
            r.state()
                .workload_by_ip("10.0.0.1".parse().unwrap())
                .is_some()
        );
        r.apply_addresses(vec![], &["good".to_string()]);
        assert_eq!(r.state().workloads().count(), 0);
    }

    #[test]
    fn workloads_and_services_convert_with_istio_defaults() {
        let mut w = wl("u", vec![0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        w.services.insert(
            "ns/svc.ns".into(),
            pb::PortList {
                ports: vec![pb::Port {
                    service_port: 80,
                    target_port: 8080,
                    app_protocol: 0,
                }],
            },
        );
        let w = workload(w).unwrap();
        assert_eq!(
            (w.trust_domain.as_str(), w.service_account.as_str()),
            ("cluster.local", "default")
        );
        assert_eq!(w.addresses, vec!["fd00::2".parse::<IpAddr>().unwrap()]);
        assert_eq!(w.services["ns/svc.ns"][&80], 8080);
        let s = service(pb::Service {
            name: "svc".into(),
            namespace: "ns".into(),
            hostname: "svc.ns".into(),
            addresses: vec![pb::NetworkAddress {
                network: String::new(),
                address: vec![10, 96, 0, 1],
                length: None,
            }],
            ports: vec![pb::Port {
                service_port: 80,
                target_port: 8080,
                app_protocol: 0,
            }],
            load_balancing: Some(pb::LoadBalancing {
                routing_preference: vec![2, 4],
                mode: 1,
                health_policy: 0,
            }),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            s.load_balancing,
            LoadBalancing {
                prefer: vec![LocalityScope::Zone, LocalityScope::Node],
                strict: true
            }
        );
        assert!(
            workload(pb::Workload {
                tunnel_protocol: 2,
                ..wl("x", vec![1, 2, 3, 4])
            })
            .is_err()
        );
        assert!(
            service(pb::Service {
                hostname: String::new(),
                ..Default::default()
            })
            .is_err()
        );
    }

    #[test]
    fn authorizations_convert_and_bad_ones_are_rejected() {
        use pb_sec::string_match::MatchType;
        let p = pb_sec::Authorization {
            name: "p".into(),
            namespace: "ns".into(),
            scope: pb_sec::Scope::WorkloadSelector as i32,
            action: pb_sec::Action::Deny as i32,
            groups: vec![pb_sec::Group {
                rules: vec![pb_sec::Rules {
                    matches: vec![pb_sec::Match {
                        principals: vec![pb_sec::StringMatch {
                            match_type: Some(MatchType::Prefix("cluster.local/ns/a".into())),
                        }],
                        source_ips: vec![pb_sec::Address {
                            address: vec![10, 0, 0, 0],
                            length: 8,
                        }],
                        destination_ports: vec![8080],
                        ..Default::default()
                    }],
                }],
            }],
            dry_run: true,
            extensions: vec![],
        };
        let a = authorization(p.clone()).unwrap();
        assert_eq!(
            (a.scope, a.action, a.dry_run),
            (Scope::WorkloadSelector, Action::Deny, true)
        );
        let m = &a.rules[0].clauses[0].matches[0];
        assert_eq!(
            m.principals,
            vec![StringMatch::Prefix("cluster.local/ns/a".into())]
        );
        assert_eq!(
            m.source_ips,
            vec![IpNet {
                addr: "10.0.0.0".parse().unwrap(),
                prefix: 8
            }]
        );
        assert!(
            authorization(pb_sec::Authorization {
                action: 2,
                ..p.clone()
            })
            .unwrap_err()
            .contains("not supported at L4")
        );
        let r = Handlers::default();
        let bad_len = pb_sec::Authorization {
            groups: vec![pb_sec::Group {
                rules: vec![pb_sec::Rules {
                    matches: vec![pb_sec::Match {
                        source_ips: vec![pb_sec::Address {
                            address: vec![10, 0, 0, 0],
                            length: 40,
                        }],
                        ..Default::default()
                    }],
                }],
            }],
            ..p.clone()
        };
        let rejected = r.apply_authorizations(
            vec![
                ("ns/p".into(), p.encode_to_vec()),
                ("ns/bad".into(), bad_len.encode_to_vec()),
            ],
            &[],
        );
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].name, "ns/bad");
        assert_eq!(r.state().policies().count(), 1);
    }
}
