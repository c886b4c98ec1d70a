//! Where an outbound connection goes: a workload by IP, or a service VIP spread over its
//! healthy endpoints; HBONE for workloads in the mesh, plain TCP otherwise; through a
//! waypoint when the service (service-addressed) or the workload (pod-addressed) has one, as
//! Istio's ztunnel decides it.

use super::{
    Client, LocalityScope, Protocol, Service, State, Waypoint, WaypointDestination, Workload,
};
use amesh_hbone::HBONE_PORT;
use amesh_identity::Identity;
use std::{net::SocketAddr, sync::Arc};

#[derive(Clone, Debug)]
pub enum Route {
    /// Tunnel to `workload` over HBONE at `hbone` (its 15008); `target` is the `:authority`
    /// (endpoint ip:port); the endpoint may present any of `expected` (its own identity, or
    /// one the service names).
    Hbone {
        workload: Arc<Workload>,
        service: Option<Arc<Service>>,
        target: SocketAddr,
        hbone: SocketAddr,
        expected: Vec<Identity>,
    },
    /// Plain TCP to `dst`: the destination is outside the mesh, or a TCP-protocol workload.
    Direct {
        dst: SocketAddr,
        workload: Option<Arc<Workload>>,
        service: Option<Arc<Service>>,
    },
    /// Plain TCP to `hostname:port`, resolved when connecting (an endpoint known by name
    /// only); `v4` says which family the client dialled, the one to prefer.
    Resolve {
        hostname: String,
        port: u16,
        v4: bool,
        workload: Arc<Workload>,
        service: Arc<Service>,
    },
    /// A service VIP with no usable endpoint for this port.
    NoEndpoint { service: Arc<Service> },
    /// A workload on another network: it needs a network gateway (not supported yet).
    OtherNetwork {
        workload: Arc<Workload>,
        service: Option<Arc<Service>>,
    },
    /// Through a waypoint: HBONE to one of its pods at `hbone` (its 15008), `:authority` =
    /// the address the client dialled (`target`), expecting one of `expected` there.
    Waypoint {
        waypoint: Arc<Workload>,
        hbone: SocketAddr,
        target: SocketAddr,
        expected: Vec<Identity>,
        /// What the client addressed: a service, or a workload by its address.
        service: Option<Arc<Service>>,
        workload: Option<Arc<Workload>>,
    },
    /// The destination has a waypoint that cannot be reached (unknown, or no ready pod):
    /// the connection is refused, never sent around it.
    NoWaypoint {
        waypoint: Waypoint,
        service: Option<Arc<Service>>,
        workload: Option<Arc<Workload>>,
    },
}

impl State {
    /// Routes a connection to `orig` made from a pod on `client_node`. `pick` spreads
    /// connections over a service's endpoints (callers pass a rotating counter).
    pub fn route(&self, orig: SocketAddr, client: &Client<'_>, pick: usize) -> Route {
        if let Some(service) = self.by_vip.get(&orig.ip()) {
            if let Some(waypoint) = &service.waypoint {
                return self.via_waypoint(waypoint, orig, pick, Some(service.clone()), None);
            }
        } else if let Some(w) = self.by_ip.get(&orig.ip()) {
            // Pod-addressed traffic to a workload with a waypoint, unless the waypoint itself
            // is sending (it has done its work and goes direct).
            if let Some(waypoint) = &w.waypoint
                && w.network == client.network
                && !self.is_waypoint(waypoint, client)
            {
                return self.via_waypoint(waypoint, orig, pick, None, Some(w.clone()));
            }
        }
        self.route_past_waypoints(orig, client, pick)
    }

    /// Where a connection goes with waypoints left aside: what a waypoint does with the
    /// traffic it has handled.
    pub fn route_past_waypoints(
        &self,
        orig: SocketAddr,
        client: &Client<'_>,
        pick: usize,
    ) -> Route {
        if let Some(service) = self.by_vip.get(&orig.ip()) {
            return self.route_service(service, orig, client, pick);
        }
        match self.by_ip.get(&orig.ip()) {
            Some(w) if w.network != client.network => Route::OtherNetwork {
                workload: w.clone(),
                service: None,
            },
            Some(w) if w.protocol == Protocol::Hbone => Route::Hbone {
                workload: w.clone(),
                service: None,
                target: orig,
                hbone: SocketAddr::new(orig.ip(), HBONE_PORT),
                expected: vec![w.identity()],
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
        client: &Client<'_>,
        pick: usize,
    ) -> Route {
        let key = service.key();
        let lb = &service.load_balancing;
        if lb.passthrough {
            return Route::Direct {
                dst: orig,
                workload: None,
                service: Some(service.clone()),
            };
        }
        let endpoints: Vec<&Arc<Workload>> = self
            .endpoints
            .get(&key)
            .into_iter()
            .flatten()
            .filter(|w| w.healthy || lb.allow_unhealthy)
            .filter(|w| client.only.is_none_or(|only| only.contains(&w.uid)))
            .filter(|w| !client.excluded.contains(&w.uid))
            .collect();
        // Endpoints on other networks are only reachable through a network gateway.
        let elsewhere = endpoints
            .iter()
            .find(|w| w.network != client.network)
            .copied();
        let mut candidates: Vec<(Arc<Workload>, Endpoint)> = endpoints
            .into_iter()
            .filter(|w| w.network == client.network)
            .filter_map(|w| endpoint(w, service, &key, orig).map(|addr| (w.clone(), addr)))
            .collect();
        if !lb.prefer.is_empty() {
            let rank = |w: &Workload| {
                lb.prefer
                    .iter()
                    .take_while(|scope| shares(w, client, **scope))
                    .count()
            };
            let wanted = if lb.strict {
                lb.prefer.len()
            } else {
                candidates.iter().map(|c| rank(&c.0)).max().unwrap_or(0)
            };
            candidates.retain(|c| rank(&c.0) == wanted);
        }
        if candidates.is_empty() {
            return match elsewhere {
                Some(w) => Route::OtherNetwork {
                    workload: w.clone(),
                    service: Some(service.clone()),
                },
                None => Route::NoEndpoint {
                    service: service.clone(),
                },
            };
        }
        let (workload, target) = candidates.swap_remove(pick % candidates.len());
        let target = match target {
            Endpoint::Addr(a) => a,
            Endpoint::Host(hostname, port) => {
                // Only plain TCP endpoints are reached by name; one that must speak HBONE
                // would need its identity checked at an address no one vouched for.
                return match workload.protocol {
                    Protocol::Tcp => Route::Resolve {
                        hostname,
                        port,
                        v4: orig.is_ipv4(),
                        workload,
                        service: service.clone(),
                    },
                    Protocol::Hbone => Route::NoEndpoint {
                        service: service.clone(),
                    },
                };
            }
        };
        match workload.protocol {
            Protocol::Hbone => Route::Hbone {
                expected: std::iter::once(workload.identity())
                    .chain(service.subject_alt_names.iter().cloned())
                    .collect(),
                workload,
                service: Some(service.clone()),
                target,
                hbone: SocketAddr::new(target.ip(), HBONE_PORT),
            },
            Protocol::Tcp => Route::Direct {
                dst: target,
                workload: Some(workload),
                service: Some(service.clone()),
            },
        }
    }
}

impl State {
    /// A waypoint's Service, when it is named by one (the usual case).
    fn waypoint_service(&self, waypoint: &Waypoint) -> Option<&Arc<Service>> {
        match &waypoint.destination {
            WaypointDestination::Hostname {
                namespace,
                hostname,
            } => self.services.get(&format!("{namespace}/{hostname}")),
            WaypointDestination::Address(ip) => self.by_vip.get(ip),
        }
    }

    /// The pods a waypoint runs as: its Service's endpoints, or the workload at its address.
    pub fn waypoint_instances(&self, waypoint: &Waypoint) -> &[Arc<Workload>] {
        match (self.waypoint_service(waypoint), &waypoint.destination) {
            (Some(s), _) => self.endpoints(&s.key()),
            (None, WaypointDestination::Address(ip)) => {
                self.by_ip.get(ip).map_or(&[], std::slice::from_ref)
            }
            (None, WaypointDestination::Hostname { .. }) => &[],
        }
    }

    /// The identities a dial to a waypoint may find: its pods' own, and its Service's SANs.
    fn waypoint_identities(&self, waypoint: &Waypoint) -> Vec<Identity> {
        let mut expected: Vec<Identity> = self
            .waypoint_instances(waypoint)
            .iter()
            .map(|w| w.identity())
            .collect();
        if let Some(s) = self.waypoint_service(waypoint) {
            expected.extend(s.subject_alt_names.iter().cloned());
        }
        expected.sort();
        expected.dedup();
        expected
    }

    /// Whether the client is one of the waypoint's pods: its identity and its address.
    fn is_waypoint(&self, waypoint: &Waypoint, client: &Client<'_>) -> bool {
        let (Some(identity), Some(ip)) = (client.identity, client.ip) else {
            return false;
        };
        self.waypoint_instances(waypoint)
            .iter()
            .any(|w| w.identity() == *identity && w.addresses.contains(&ip))
    }

    fn via_waypoint(
        &self,
        waypoint: &Waypoint,
        orig: SocketAddr,
        pick: usize,
        service: Option<Arc<Service>>,
        workload: Option<Arc<Workload>>,
    ) -> Route {
        let instances = self.waypoint_instances(waypoint);
        // A waypoint terminates HBONE itself: only its ready pods can take the traffic.
        let ready: Vec<(Arc<Workload>, SocketAddr)> = instances
            .iter()
            .filter(|w| w.healthy && w.protocol == Protocol::Hbone)
            .filter_map(|w| {
                let ip = w
                    .addresses
                    .iter()
                    .find(|a| a.is_ipv4() == orig.is_ipv4())
                    .or_else(|| w.addresses.first())
                    .copied()?;
                Some((w.clone(), SocketAddr::new(ip, waypoint.port)))
            })
            .collect();
        if ready.is_empty() {
            return Route::NoWaypoint {
                waypoint: waypoint.clone(),
                service,
                workload,
            };
        }
        let (instance, hbone) = ready[pick % ready.len()].clone();
        Route::Waypoint {
            waypoint: instance,
            hbone,
            target: orig,
            expected: self.waypoint_identities(waypoint),
            service,
            workload,
        }
    }
}

/// Whether workload `w` shares `scope` of locality with the client.
fn shares(w: &Workload, client: &Client<'_>, scope: LocalityScope) -> bool {
    let (a, b) = (&w.locality, client.locality);
    match scope {
        LocalityScope::Region => !a.region.is_empty() && a.region == b.region,
        LocalityScope::Zone => !a.zone.is_empty() && a.zone == b.zone,
        LocalityScope::Subzone => !a.subzone.is_empty() && a.subzone == b.subzone,
        LocalityScope::Node => !w.node.is_empty() && w.node == client.node,
    }
}

/// Where a service connection reaches one endpoint.
#[derive(Debug, Clone)]
enum Endpoint {
    Addr(SocketAddr),
    /// A name to resolve, and the port.
    Host(String, u16),
}

/// The address a service connection to `orig` reaches on workload `w`: an address of the same
/// family as the VIP (or its host name, for an endpoint known by name only), and the target
/// port the service (or the workload's own map) names.
fn endpoint(w: &Workload, service: &Service, key: &str, orig: SocketAddr) -> Option<Endpoint> {
    let from_service = service.ports.get(&orig.port()).copied().filter(|p| *p != 0);
    let from_workload = w
        .services
        .get(key)
        .and_then(|m| m.get(&orig.port()))
        .copied();
    let port = from_workload.or(from_service)?;
    let Some(ip) = w
        .addresses
        .iter()
        .find(|a| a.is_ipv4() == orig.is_ipv4())
        .or_else(|| w.addresses.first())
    else {
        return (!w.hostname.is_empty()).then(|| Endpoint::Host(w.hostname.clone(), port));
    };
    Some(Endpoint::Addr(SocketAddr::new(*ip, port)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LoadBalancing, Locality};
    use std::collections::BTreeMap;

    fn wl(
        uid: &str,
        ip: &str,
        node: &str,
        zone: &str,
        healthy: bool,
        protocol: Protocol,
    ) -> Workload {
        Workload {
            uid: uid.into(),
            name: uid.into(),
            namespace: "ns".into(),
            service_account: "sa".into(),
            trust_domain: "cluster.local".into(),
            addresses: vec![ip.parse().unwrap()],
            hostname: String::new(),
            protocol,
            node: node.into(),
            healthy,
            services: BTreeMap::from([("ns/svc.ns".to_string(), BTreeMap::from([(80, 8080)]))]),
            authorization_policies: vec![],
            locality: Locality {
                region: "r1".into(),
                zone: zone.into(),
                subzone: String::new(),
            },
            telemetry: Default::default(),
            network: String::new(),
            proxy_protocol: None,
            waypoint: None,
        }
    }

    fn svc(prefer: Vec<LocalityScope>, strict: bool) -> Service {
        Service {
            name: "svc".into(),
            namespace: "ns".into(),
            hostname: "svc.ns".into(),
            vips: vec!["10.96.0.1".parse().unwrap()],
            ports: BTreeMap::from([(80, 8080)]),
            app_protocols: BTreeMap::new(),
            load_balancing: LoadBalancing {
                prefer,
                strict,
                ..Default::default()
            },
            subject_alt_names: vec![],
            waypoint: None,
        }
    }

    fn target(r: &Route) -> String {
        match r {
            Route::Hbone { target, .. } => format!("hbone {target}"),
            Route::Direct { dst, .. } => format!("direct {dst}"),
            Route::NoEndpoint { .. } => "none".into(),
            Route::Resolve {
                hostname, port, v4, ..
            } => format!("resolve {hostname}:{port} v4={v4}"),
            Route::OtherNetwork { workload, .. } => format!("network {}", workload.network),
            Route::Waypoint { hbone, target, .. } => format!("waypoint {hbone} for {target}"),
            Route::NoWaypoint { waypoint, .. } => format!("no waypoint {waypoint}"),
        }
    }

    fn client<'a>(node: &'a str, locality: &'a Locality) -> Client<'a> {
        Client {
            node,
            locality,
            network: "",
            identity: None,
            ip: None,
            only: None,
            excluded: &[],
        }
    }

    #[test]
    fn endpoints_known_by_name_are_resolved_when_connecting_plain_tcp_only() {
        let mut by_name = wl("dns", "10.0.0.9", "n1", "z1", true, Protocol::Tcp);
        by_name.addresses.clear();
        by_name.hostname = "db.example.com".into();
        let mut hbone_by_name = by_name.clone();
        hbone_by_name.protocol = Protocol::Hbone;
        let vip: SocketAddr = "10.96.0.1:80".parse().unwrap();
        let here = Locality::default();
        let c = client("n1", &here);
        let state = State::new(vec![by_name], vec![svc(vec![], false)]);
        assert_eq!(
            target(&state.route(vip, &c, 0)),
            "resolve db.example.com:8080 v4=true"
        );
        let state = State::new(vec![hbone_by_name], vec![svc(vec![], false)]);
        assert_eq!(
            target(&state.route(vip, &c, 0)),
            "none",
            "an HBONE endpoint needs an address someone vouched for"
        );
    }

    #[test]
    fn passthrough_and_allow_all_as_istio_defines_them() {
        let ws = vec![
            wl("a", "10.0.0.1", "n1", "z1", true, Protocol::Hbone),
            wl("c", "10.0.0.3", "n2", "z1", false, Protocol::Hbone),
        ];
        let vip: SocketAddr = "10.96.0.1:80".parse().unwrap();
        let here = Locality::default();
        let c = client("n1", &here);
        let mut passthrough = svc(vec![], false);
        passthrough.load_balancing.passthrough = true;
        let state = State::new(ws.clone(), vec![passthrough]);
        assert_eq!(
            target(&state.route(vip, &c, 0)),
            "direct 10.96.0.1:80",
            "PASSTHROUGH picks no endpoint: the dialled address, as plain TCP"
        );
        let mut all = svc(vec![], false);
        all.load_balancing.allow_unhealthy = true;
        let state = State::new(ws, vec![all]);
        let picked: std::collections::BTreeSet<String> =
            (0..4).map(|i| target(&state.route(vip, &c, i))).collect();
        assert_eq!(
            picked.into_iter().collect::<Vec<_>>(),
            ["hbone 10.0.0.1:8080", "hbone 10.0.0.3:8080"],
            "ALLOW_ALL picks the unhealthy endpoint too"
        );
    }

    #[test]
    fn other_networks_are_refused_not_guessed_at() {
        let mut far = wl("f", "10.9.0.1", "n9", "z1", true, Protocol::Hbone);
        far.network = "west".into();
        let near = wl("a", "10.0.0.1", "n1", "z1", true, Protocol::Hbone);
        let vip: SocketAddr = "10.96.0.1:80".parse().unwrap();
        let here = Locality::default();
        let c = client("n1", &here);
        let both = State::new(vec![far.clone(), near], vec![svc(vec![], false)]);
        assert_eq!(
            target(&both.route("10.9.0.1:8080".parse().unwrap(), &c, 0)),
            "network west",
            "a workload on another network needs a gateway"
        );
        let picked: std::collections::BTreeSet<String> =
            (0..4).map(|i| target(&both.route(vip, &c, i))).collect();
        assert_eq!(
            picked.into_iter().collect::<Vec<_>>(),
            ["hbone 10.0.0.1:8080"],
            "a service's endpoints on this network only"
        );
        let only_far = State::new(vec![far], vec![svc(vec![], false)]);
        assert_eq!(target(&only_far.route(vip, &c, 0)), "network west");
        let west = Client {
            network: "west",
            ..c
        };
        assert_eq!(
            target(&only_far.route(vip, &west, 0)),
            "hbone 10.9.0.1:8080",
            "on its own network it is an ordinary endpoint"
        );
    }

    #[test]
    fn routes_by_workload_and_service() {
        let state = State::new(
            vec![
                wl("a", "10.0.0.1", "n1", "z1", true, Protocol::Hbone),
                wl("b", "10.0.0.2", "n2", "z1", true, Protocol::Hbone),
                wl("c", "10.0.0.3", "n2", "z1", false, Protocol::Hbone),
                wl("t", "10.0.0.4", "n2", "z1", true, Protocol::Tcp),
            ],
            vec![svc(vec![], false)],
        );
        let here = Locality::default();
        let c = client("n1", &here);
        let vip: SocketAddr = "10.96.0.1:80".parse().unwrap();
        assert_eq!(
            target(&state.route("10.0.0.1:8080".parse().unwrap(), &c, 0)),
            "hbone 10.0.0.1:8080"
        );
        assert_eq!(
            target(&state.route("10.0.0.4:9000".parse().unwrap(), &c, 0)),
            "direct 10.0.0.4:9000"
        );
        assert_eq!(
            target(&state.route("192.0.2.1:443".parse().unwrap(), &c, 0)),
            "direct 192.0.2.1:443"
        );
        let picked: std::collections::BTreeSet<String> =
            (0..9).map(|i| target(&state.route(vip, &c, i))).collect();
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
            target(&state.route("10.96.0.1:81".parse().unwrap(), &c, 0)),
            "none",
            "no such port"
        );
    }

    #[test]
    fn locality_preferences() {
        use LocalityScope::*;
        let ws = vec![
            wl("a", "10.0.0.1", "n1", "z1", true, Protocol::Hbone),
            wl("b", "10.0.0.2", "n2", "z1", true, Protocol::Hbone),
            wl("c", "10.0.0.3", "n3", "z2", true, Protocol::Hbone),
        ];
        let vip: SocketAddr = "10.96.0.1:80".parse().unwrap();
        let all = |state: &State, c: &Client<'_>| -> std::collections::BTreeSet<String> {
            (0..6).map(|i| target(&state.route(vip, c, i))).collect()
        };
        let z1 = Locality {
            region: "r1".into(),
            zone: "z1".into(),
            subzone: String::new(),
        };
        let z3 = Locality {
            region: "r1".into(),
            zone: "z3".into(),
            subzone: String::new(),
        };
        let node_first = State::new(ws.clone(), vec![svc(vec![Node], false)]);
        assert_eq!(
            all(&node_first, &client("n2", &z1)),
            ["hbone 10.0.0.2:8080".to_string()].into()
        );
        assert_eq!(
            all(&node_first, &client("n9", &z1)).len(),
            3,
            "no local endpoint: fail over to all"
        );
        let zone_first = State::new(ws.clone(), vec![svc(vec![Region, Zone], false)]);
        assert_eq!(
            all(&zone_first, &client("n9", &z1)),
            [
                "hbone 10.0.0.1:8080".to_string(),
                "hbone 10.0.0.2:8080".to_string()
            ]
            .into()
        );
        assert_eq!(
            all(&zone_first, &client("n9", &z3)).len(),
            3,
            "same region only: all rank equal"
        );
        let strict = State::new(ws, vec![svc(vec![Region, Zone], true)]);
        assert_eq!(
            all(&strict, &client("n9", &z3)),
            ["none".to_string()].into()
        );
    }

    /// A waypoint `wp` (Service `wp.ns` on 15008, pod 10.0.0.9 as `ns/waypoint-sa`), a service
    /// `svc.ns` (VIP 10.96.0.1) backed by `a`, and the binding given by the arguments.
    fn waypoint_mesh(service_bound: bool, workload_bound: bool, waypoint_ready: bool) -> State {
        let bound = || Waypoint {
            destination: WaypointDestination::Hostname {
                namespace: "ns".into(),
                hostname: "wp.ns".into(),
            },
            port: 15008,
        };
        let mut a = wl("a", "10.0.0.1", "n1", "z1", true, Protocol::Hbone);
        a.waypoint = workload_bound.then(bound);
        let mut wp = wl(
            "wp",
            "10.0.0.9",
            "n2",
            "z1",
            waypoint_ready,
            Protocol::Hbone,
        );
        wp.service_account = "waypoint-sa".into();
        wp.services = BTreeMap::from([("ns/wp.ns".to_string(), BTreeMap::from([(15008, 15008)]))]);
        let mut service = svc(vec![], false);
        service.waypoint = service_bound.then(bound);
        let mut wp_svc = svc(vec![], false);
        wp_svc.name = "wp".into();
        wp_svc.hostname = "wp.ns".into();
        wp_svc.vips = vec!["10.96.0.9".parse().unwrap()];
        wp_svc.ports = BTreeMap::from([(15008, 15008)]);
        State::new(vec![a, wp], vec![service, wp_svc])
    }

    #[test]
    fn waypoints_are_used_as_istios_ztunnel_uses_them() {
        let here = Locality::default();
        let c = client("n1", &here);
        let vip: SocketAddr = "10.96.0.1:80".parse().unwrap();
        let pod: SocketAddr = "10.0.0.1:8080".parse().unwrap();
        let cases = [
            // (service bound, workload bound, waypoint ready, dialled, expected)
            (
                true,
                false,
                true,
                vip,
                "waypoint 10.0.0.9:15008 for 10.96.0.1:80",
            ),
            (true, false, true, pod, "hbone 10.0.0.1:8080"),
            (
                false,
                true,
                true,
                pod,
                "waypoint 10.0.0.9:15008 for 10.0.0.1:8080",
            ),
            // Service-addressed traffic never takes the workload's waypoint.
            (false, true, true, vip, "hbone 10.0.0.1:8080"),
            (
                true,
                true,
                true,
                pod,
                "waypoint 10.0.0.9:15008 for 10.0.0.1:8080",
            ),
            (false, false, true, vip, "hbone 10.0.0.1:8080"),
            // A waypoint with no ready pod refuses; it is never gone around.
            (true, false, false, vip, "no waypoint ns/wp.ns:15008"),
            (false, true, false, pod, "no waypoint ns/wp.ns:15008"),
        ];
        for (svc_bound, wl_bound, ready, dialled, want) in cases {
            let state = waypoint_mesh(svc_bound, wl_bound, ready);
            assert_eq!(
                target(&state.route(dialled, &c, 0)),
                want,
                "service bound {svc_bound}, workload bound {wl_bound}, ready {ready}, to {dialled}"
            );
        }
        let state = waypoint_mesh(true, false, true);
        let Route::Waypoint { expected, .. } = state.route(vip, &c, 0) else {
            panic!("through the waypoint");
        };
        assert_eq!(
            expected,
            [Identity::new("cluster.local", "ns", "waypoint-sa")],
            "the waypoint's identity is what the dial must find"
        );
    }

    #[test]
    fn the_waypoint_itself_goes_direct_and_an_unknown_one_refuses() {
        let state = waypoint_mesh(false, true, true);
        let here = Locality::default();
        let pod: SocketAddr = "10.0.0.1:8080".parse().unwrap();
        let wp_identity = Identity::new("cluster.local", "ns", "waypoint-sa");
        let mut from_waypoint = client("n2", &here);
        from_waypoint.identity = Some(&wp_identity);
        from_waypoint.ip = Some("10.0.0.9".parse().unwrap());
        assert_eq!(
            target(&state.route(pod, &from_waypoint, 0)),
            "hbone 10.0.0.1:8080"
        );
        // The waypoint's identity from another address is not the waypoint.
        from_waypoint.ip = Some("10.0.0.7".parse().unwrap());
        assert_eq!(
            target(&state.route(pod, &from_waypoint, 0)),
            "waypoint 10.0.0.9:15008 for 10.0.0.1:8080"
        );
        let mut a = wl("a", "10.0.0.1", "n1", "z1", true, Protocol::Hbone);
        a.waypoint = Some(Waypoint {
            destination: WaypointDestination::Hostname {
                namespace: "ns".into(),
                hostname: "missing.ns".into(),
            },
            port: 15008,
        });
        let state = State::new(vec![a], vec![]);
        assert_eq!(
            target(&state.route(pod, &client("n1", &here), 0)),
            "no waypoint ns/missing.ns:15008"
        );
    }
}
