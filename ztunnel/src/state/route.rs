//! Where an outbound connection goes: a workload by IP, or a service VIP spread over its
//! healthy endpoints; HBONE for workloads in the mesh, plain TCP otherwise.

use super::{Preference, Protocol, Service, State, Workload};
use std::{net::SocketAddr, sync::Arc};

#[derive(Clone, Debug)]
pub enum Route {
    /// Tunnel to `workload` over HBONE; `target` is the `:authority` (endpoint ip:port).
    Hbone {
        workload: Arc<Workload>,
        service: Option<Arc<Service>>,
        target: SocketAddr,
    },
    /// Plain TCP to `dst`: the destination is outside the mesh, or a TCP-protocol workload.
    Direct {
        dst: SocketAddr,
        workload: Option<Arc<Workload>>,
        service: Option<Arc<Service>>,
    },
    /// A service VIP with no usable endpoint for this port.
    NoEndpoint { service: Arc<Service> },
}

impl State {
    /// Routes a connection to `orig` made from a pod on `client_node`. `pick` spreads
    /// connections over a service's endpoints (callers pass a rotating counter).
    pub fn route(&self, orig: SocketAddr, client_node: &str, pick: usize) -> Route {
        if let Some(service) = self.by_vip.get(&orig.ip()) {
            return self.route_service(service, orig, client_node, pick);
        }
        match self.by_ip.get(&orig.ip()) {
            Some(w) if w.protocol == Protocol::Hbone => Route::Hbone {
                workload: w.clone(),
                service: None,
                target: orig,
            },
            Some(w) => Route::Direct {
                dst: orig,
                workload: Some(w.clone()),
                service: None,
            },
            None => Route::Direct {
                dst: orig,
                workload: None,
                service: None,
            },
        }
    }

    fn route_service(
        &self,
        service: &Arc<Service>,
        orig: SocketAddr,
        client_node: &str,
        pick: usize,
    ) -> Route {
        let key = service.key();
        let mut candidates: Vec<(Arc<Workload>, SocketAddr)> = self
            .endpoints
            .get(&key)
            .into_iter()
            .flatten()
            .filter(|w| w.healthy)
            .filter_map(|w| endpoint(w, service, &key, orig).map(|addr| (w.clone(), addr)))
            .collect();
        let local = |c: &(Arc<Workload>, SocketAddr)| c.0.node == client_node;
        match service.preference {
            Preference::NodeOnly => candidates.retain(local),
            Preference::NodeFirst if candidates.iter().any(local) => candidates.retain(local),
            _ => {}
        }
        if candidates.is_empty() {
            return Route::NoEndpoint {
                service: service.clone(),
            };
        }
        let (workload, target) = candidates.swap_remove(pick % candidates.len());
        match workload.protocol {
            Protocol::Hbone => Route::Hbone {
                workload,
                service: Some(service.clone()),
                target,
            },
            Protocol::Tcp => Route::Direct {
                dst: target,
                workload: Some(workload),
                service: Some(service.clone()),
            },
        }
    }
}

/// The address a service connection to `orig` reaches on workload `w`: an address of the same
/// family as the VIP, and the target port the service (or the workload's own map) names.
fn endpoint(w: &Workload, service: &Service, key: &str, orig: SocketAddr) -> Option<SocketAddr> {
    let ip = w
        .addresses
        .iter()
        .find(|a| a.is_ipv4() == orig.is_ipv4())
        .or_else(|| w.addresses.first())?;
    let from_service = service.ports.get(&orig.port()).copied().filter(|p| *p != 0);
    let from_workload = w
        .services
        .get(key)
        .and_then(|m| m.get(&orig.port()))
        .copied();
    let port = from_workload.or(from_service)?;
    Some(SocketAddr::new(*ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn wl(uid: &str, ip: &str, node: &str, healthy: bool, protocol: Protocol) -> Workload {
        Workload {
            uid: uid.into(),
            name: uid.into(),
            namespace: "ns".into(),
            service_account: "sa".into(),
            trust_domain: "cluster.local".into(),
            addresses: vec![ip.parse().unwrap()],
            protocol,
            node: node.into(),
            healthy,
            services: BTreeMap::from([("ns/svc.ns".to_string(), BTreeMap::from([(80, 8080)]))]),
            authorization_policies: vec![],
        }
    }

    fn svc(preference: Preference) -> Service {
        Service {
            name: "svc".into(),
            namespace: "ns".into(),
            hostname: "svc.ns".into(),
            vips: vec!["10.96.0.1".parse().unwrap()],
            ports: BTreeMap::from([(80, 8080)]),
            preference,
        }
    }

    fn target(r: &Route) -> String {
        match r {
            Route::Hbone { target, .. } => format!("hbone {target}"),
            Route::Direct { dst, .. } => format!("direct {dst}"),
            Route::NoEndpoint { .. } => "none".into(),
        }
    }

    #[test]
    fn routes_by_workload_and_service() {
        let state = State::new(
            vec![
                wl("a", "10.0.0.1", "n1", true, Protocol::Hbone),
                wl("b", "10.0.0.2", "n2", true, Protocol::Hbone),
                wl("c", "10.0.0.3", "n2", false, Protocol::Hbone),
                wl("t", "10.0.0.4", "n2", true, Protocol::Tcp),
            ],
            vec![svc(Preference::Any)],
        );
        let vip: SocketAddr = "10.96.0.1:80".parse().unwrap();
        assert_eq!(
            target(&state.route("10.0.0.1:8080".parse().unwrap(), "n1", 0)),
            "hbone 10.0.0.1:8080"
        );
        assert_eq!(
            target(&state.route("10.0.0.4:9000".parse().unwrap(), "n1", 0)),
            "direct 10.0.0.4:9000"
        );
        assert_eq!(
            target(&state.route("192.0.2.1:443".parse().unwrap(), "n1", 0)),
            "direct 192.0.2.1:443"
        );
        let picked: std::collections::BTreeSet<String> =
            (0..9).map(|i| target(&state.route(vip, "n1", i))).collect();
        assert_eq!(
            picked.into_iter().collect::<Vec<_>>(),
            [
                "direct 10.0.0.4:8080",
                "hbone 10.0.0.1:8080",
                "hbone 10.0.0.2:8080"
            ],
            "every healthy endpoint gets traffic, the unhealthy one none"
        );
        assert_eq!(
            target(&state.route("10.96.0.1:81".parse().unwrap(), "n1", 0)),
            "none",
            "no such port"
        );
    }

    #[test]
    fn node_preference() {
        let ws = vec![
            wl("a", "10.0.0.1", "n1", true, Protocol::Hbone),
            wl("b", "10.0.0.2", "n2", true, Protocol::Hbone),
        ];
        let vip: SocketAddr = "10.96.0.1:80".parse().unwrap();
        let first = State::new(ws.clone(), vec![svc(Preference::NodeFirst)]);
        assert!((0..4).all(|i| target(&first.route(vip, "n2", i)) == "hbone 10.0.0.2:8080"));
        assert_eq!(
            target(&first.route(vip, "n3", 1)),
            "hbone 10.0.0.2:8080",
            "falls back to other nodes"
        );
        let strict = State::new(ws, vec![svc(Preference::NodeOnly)]);
        assert_eq!(target(&strict.route(vip, "n3", 0)), "none");
    }
}
