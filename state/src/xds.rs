//! ztunnel's [`Handler`]s for Istio's two xDS types, `istio.workload.Address` and
//! `istio.security.Authorization`: each resource is decoded and converted ([`super::convert`])
//! on its own, so a malformed one is rejected with the reason (amesh-xds names it in the
//! NACK) while the others in the same response apply. [`Resources`] keeps the last good
//! version of every resource, so a bad update leaves the previous one in place.

use super::{
    Invalid, Service, Workload, convert,
    resources::{Resources, lock},
};
use amesh_policy::Authorization;
use amesh_proto::{security as pb_sec, workload as pb};
use amesh_xds::{Changes, Handler};
use prost::Message;
use std::sync::{Arc, Mutex};

fn undecodable(e: prost::DecodeError) -> Invalid {
    Invalid::new("(resource)", format!("does not decode: {e}"))
}

/// One decoded `istio.workload.Address`.
#[derive(Debug)]
pub enum Address {
    /// Boxed, both: they differ much in size.
    Workload(Box<Workload>),
    Service(Box<Service>),
}

/// Handles `istio.workload.Address` (workloads and services).
#[derive(Debug, Clone)]
pub struct AddressHandler(pub Arc<Mutex<Resources>>);

impl Handler for AddressHandler {
    type Resource = Address;
    type Error = Invalid;

    fn decode(&self, _name: &str, bytes: &[u8]) -> Result<Address, Invalid> {
        let address = pb::Address::decode(bytes).map_err(undecodable)?;
        match address.r#type {
            Some(pb::address::Type::Workload(w)) => {
                convert::workload(w).map(|w| Address::Workload(Box::new(w)))
            }
            Some(pb::address::Type::Service(s)) => {
                convert::service(s).map(|s| Address::Service(Box::new(s)))
            }
            None => Err(Invalid::new(
                "(resource)",
                "address is neither a workload nor a service",
            )),
        }
    }

    fn apply(&mut self, changes: Changes<Address>) {
        let mut r = lock(&self.0);
        for (name, address) in changes.updated {
            match address {
                Address::Workload(w) => r.insert_workload(name, *w),
                Address::Service(s) => r.insert_service(name, *s),
            }
        }
        for name in &changes.removed {
            r.remove_address(name);
        }
    }
}

/// Handles `istio.security.Authorization`.
#[derive(Debug, Clone)]
pub struct AuthorizationHandler(pub Arc<Mutex<Resources>>);

impl Handler for AuthorizationHandler {
    type Resource = Authorization;
    type Error = Invalid;

    fn decode(&self, _name: &str, bytes: &[u8]) -> Result<Authorization, Invalid> {
        pb_sec::Authorization::decode(bytes)
            .map_err(undecodable)
            .and_then(convert::authorization)
    }

    fn apply(&mut self, changes: Changes<Authorization>) {
        let mut r = lock(&self.0);
        for (name, p) in changes.updated {
            r.insert_policy(name, p);
        }
        for name in &changes.removed {
            r.remove_policy(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        LoadBalancing, LocalityScope, State,
        convert::{authorization, service, workload},
    };
    use amesh_policy::{Action, IpNet, Scope, StringMatch};
    use amesh_xds::{Rejected, handler::process};
    use std::net::IpAddr;

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
            workload(nameless).expect_err("no name").to_string(),
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
                .to_string()
                .starts_with("services: ")
        );
        let hostless = pb::Service {
            name: "s".into(),
            namespace: "ns".into(),
            ..Default::default()
        };
        assert_eq!(
            service(hostless).expect_err("no hostname").to_string(),
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
                strict: true,
                passthrough: false,
                allow_unhealthy: false,
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
            .to_string()
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
