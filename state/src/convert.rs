//! Istio's wire resources (`istio.workload.Workload`, `Service`, `istio.security.Authorization`)
//! turned into ztunnel's validated model, one resource at a time. This is the only converter:
//! the xDS feed ([`super::xds`]) and the local file ([`super::local`]) both produce the wire
//! types and hand them here, so both accept and refuse the same things.

use super::{
    AppProtocol, Invalid, LoadBalancing, Locality, LocalityScope, Protocol, ProxyProtocolTunnel,
    Service, Telemetry, Waypoint, WaypointDestination, Workload,
};
use amesh_policy::{Authorization, wire};
use amesh_proto::{security as pb_sec, workload as pb};
use std::{collections::BTreeMap, net::IpAddr};

fn ip(bytes: &[u8], field: impl Into<String>) -> Result<IpAddr, Invalid> {
    wire::ip_from_bytes(bytes).map_err(|e| Invalid::new(field, e.to_string()))
}

fn port(p: u32, field: impl Into<String>) -> Result<u16, Invalid> {
    u16::try_from(p).map_err(|_| Invalid::new(field, format!("{p} is not a port")))
}

/// A converted resource must also meet what the model requires.
fn validated<T>(value: T, check: impl Fn(&T) -> Result<(), Invalid>) -> Result<T, Invalid> {
    check(&value)?;
    Ok(value)
}

fn port_map(ports: &[pb::Port], field: &str) -> Result<BTreeMap<u16, u16>, Invalid> {
    let mut map = BTreeMap::new();
    for (i, p) in ports.iter().enumerate() {
        map.insert(
            port(p.service_port, format!("{field}[{i}].servicePort"))?,
            port(p.target_port, format!("{field}[{i}].targetPort"))?,
        );
    }
    Ok(map)
}

/// The declared protocols of a service's ports (an unknown enum value: undeclared, as a
/// newer control plane's value this build does not know must not refuse the service).
fn app_protocols(ports: &[pb::Port]) -> BTreeMap<u16, AppProtocol> {
    ports
        .iter()
        .filter_map(|p| {
            let declared = match pb::AppProtocol::try_from(p.app_protocol).ok()? {
                pb::AppProtocol::Unknown => return None,
                pb::AppProtocol::Http11 => AppProtocol::Http11,
                pb::AppProtocol::Http2 => AppProtocol::Http2,
                pb::AppProtocol::Grpc => AppProtocol::Grpc,
                pb::AppProtocol::Tcp => AppProtocol::Tcp,
                pb::AppProtocol::Tls => AppProtocol::Tls,
            };
            Some((u16::try_from(p.service_port).ok()?, declared))
        })
        .collect()
}

pub fn workload(w: pb::Workload) -> Result<Workload, Invalid> {
    let addresses = w
        .addresses
        .iter()
        .enumerate()
        .map(|(i, a)| ip(a, format!("addresses[{i}]")))
        .collect::<Result<_, _>>()?;
    let protocol = match pb::TunnelProtocol::try_from(w.tunnel_protocol) {
        Ok(pb::TunnelProtocol::Hbone) => Protocol::Hbone,
        Ok(pb::TunnelProtocol::None) => Protocol::Tcp,
        Ok(pb::TunnelProtocol::LegacyIstioMtls) => {
            return Err(Invalid::new(
                "protocol",
                "tunnel protocol LEGACY_ISTIO_MTLS is not supported",
            ));
        }
        Err(_) => {
            return Err(Invalid::new(
                "protocol",
                format!("unknown tunnel protocol {}", w.tunnel_protocol),
            ));
        }
    };
    let mut services = BTreeMap::new();
    for (svc, ports) in w.services {
        let map = port_map(&ports.ports, &format!("services.{svc}"))?;
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
    let or_default = |v: String, default: &str| {
        if v.is_empty() { default.to_string() } else { v }
    };
    let proxy_protocol = match w.application_tunnel {
        None => None,
        Some(t) => match pb::application_tunnel::Protocol::try_from(t.protocol) {
            Ok(pb::application_tunnel::Protocol::None) => None,
            Ok(pb::application_tunnel::Protocol::Proxy) => Some(ProxyProtocolTunnel {
                port: match t.port {
                    0 => None,
                    p => Some(port(p, "applicationTunnel.port")?),
                },
            }),
            Err(_) => {
                return Err(Invalid::new(
                    "applicationTunnel.protocol",
                    format!("unknown application tunnel protocol {}", t.protocol),
                ));
            }
        },
    };
    let workload_kind = match pb::WorkloadType::try_from(w.workload_type) {
        // The wire's default (0), so unset means a Deployment, as in Istio's ztunnel.
        Ok(pb::WorkloadType::Deployment) => "deployment",
        Ok(pb::WorkloadType::Cronjob) => "cronjob",
        Ok(pb::WorkloadType::Job) => "job",
        // An unknown kind from a newer control plane is named by the pod's name alone.
        Ok(pb::WorkloadType::Pod) | Err(_) => "pod",
    };
    let telemetry = Telemetry {
        workload_name: w.workload_name,
        workload_kind: workload_kind.to_string(),
        canonical_name: w.canonical_name,
        canonical_revision: w.canonical_revision,
        cluster_id: w.cluster_id,
        baggage_header: None,
    };
    let workload = Workload {
        uid: w.uid,
        name: w.name,
        namespace: w.namespace,
        service_account: or_default(w.service_account, "default"),
        trust_domain: or_default(w.trust_domain, amesh_identity::DEFAULT_TRUST_DOMAIN),
        addresses,
        hostname: w.hostname,
        protocol,
        node: w.node,
        healthy: w.status != pb::WorkloadStatus::Unhealthy as i32,
        services,
        authorization_policies: w.authorization_policies,
        locality,
        telemetry,
        network: w.network,
        proxy_protocol,
        waypoint: w.waypoint.map(waypoint).transpose()?,
    };
    let mut workload = validated(workload, Workload::validate)?;
    workload.telemetry.baggage_header = workload.baggage().to_header();
    Ok(workload)
}

pub fn service(s: pb::Service) -> Result<Service, Invalid> {
    let vips = s
        .addresses
        .iter()
        .enumerate()
        .map(|(i, a)| ip(&a.address, format!("vips[{i}]")))
        .collect::<Result<_, _>>()?;
    let ports = port_map(&s.ports, "ports")?;
    let app_protocols = app_protocols(&s.ports);
    let load_balancing = s
        .load_balancing
        .map(load_balancing)
        .transpose()?
        .unwrap_or_default();
    let subject_alt_names = s
        .subject_alt_names
        .iter()
        .enumerate()
        .map(|(i, san)| {
            san.parse::<amesh_identity::Identity>().map_err(|e| {
                Invalid::new(
                    format!("subjectAltNames[{i}]"),
                    format!("{san:?} is not a SPIFFE identity: {e}"),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    let service = Service {
        name: s.name,
        namespace: s.namespace,
        hostname: s.hostname,
        vips,
        ports,
        app_protocols,
        load_balancing,
        subject_alt_names,
        waypoint: s.waypoint.map(waypoint).transpose()?,
    };
    validated(service, Service::validate)
}

fn waypoint(g: pb::GatewayAddress) -> Result<Waypoint, Invalid> {
    use pb::gateway_address::Destination;
    let destination = match g.destination {
        Some(Destination::Hostname(h)) => {
            if h.hostname.is_empty() || h.namespace.is_empty() {
                return Err(Invalid::new(
                    "waypoint.hostname",
                    "needs both a namespace and a host name",
                ));
            }
            WaypointDestination::Hostname {
                namespace: h.namespace,
                hostname: h.hostname,
            }
        }
        Some(Destination::Address(a)) => {
            WaypointDestination::Address(ip(&a.address, "waypoint.address")?)
        }
        None => return Err(Invalid::new("waypoint", "has no destination")),
    };
    let port = match g.hbone_mtls_port {
        0 => return Err(Invalid::new("waypoint.hboneMtlsPort", "must be set")),
        p => port(p, "waypoint.hboneMtlsPort")?,
    };
    Ok(Waypoint { destination, port })
}

fn load_balancing(lb: pb::LoadBalancing) -> Result<LoadBalancing, Invalid> {
    use pb::load_balancing::{Mode, Scope as S};
    let mut prefer = Vec::new();
    for (i, p) in lb.routing_preference.iter().enumerate() {
        prefer.push(match S::try_from(*p) {
            Ok(S::Region) => LocalityScope::Region,
            Ok(S::Zone) => LocalityScope::Zone,
            Ok(S::Subzone) => LocalityScope::Subzone,
            Ok(S::Node) => LocalityScope::Node,
            // One cluster and one network here: these always match.
            Ok(S::Cluster | S::Network | S::UnspecifiedScope) => continue,
            Err(_) => {
                return Err(Invalid::new(
                    format!("loadBalancing.routingPreference[{i}]"),
                    format!("unknown routing preference {p}"),
                ));
            }
        });
    }
    let mode = Mode::try_from(lb.mode).map_err(|_| {
        Invalid::new(
            "loadBalancing.mode",
            format!("unknown load-balancing mode {}", lb.mode),
        )
    })?;
    let allow_unhealthy = match pb::load_balancing::HealthPolicy::try_from(lb.health_policy) {
        Ok(pb::load_balancing::HealthPolicy::AllowAll) => true,
        Ok(pb::load_balancing::HealthPolicy::OnlyHealthy) => false,
        Err(_) => {
            return Err(Invalid::new(
                "loadBalancing.healthPolicy",
                format!("unknown health policy {}", lb.health_policy),
            ));
        }
    };
    Ok(LoadBalancing {
        prefer,
        strict: mode == Mode::Strict,
        passthrough: mode == Mode::Passthrough,
        allow_unhealthy,
    })
}

pub fn authorization(a: pb_sec::Authorization) -> Result<Authorization, Invalid> {
    wire::from_proto(a).map_err(|e| Invalid::new("policy", e.to_string()))
}
