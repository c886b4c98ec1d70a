//! The local file's YAML, read into Istio's wire types (`istio.workload.Workload`, `Service`,
//! `istio.security.Authorization`): only the file's own syntax is handled here (names of
//! enums, addresses and patterns as text, defaults); everything a resource means is decided
//! by [`crate::state::convert`], as for the xDS feed.

use amesh_policy::{IpNet, MtlsMode, PeerAuthentication, PeerScope, StringMatch, wire};
use amesh_proto::{security as sec, workload as pb};
use serde::Deserialize;
use std::{collections::BTreeMap, net::IpAddr};

/// Where in the file (`workloads[0].addresses[1]`) and why.
pub type FieldError = (String, String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileConfig {
    #[serde(default)]
    pub workloads: Vec<RawWorkload>,
    #[serde(default)]
    pub services: Vec<RawService>,
    #[serde(default)]
    pub policies: Vec<RawPolicy>,
    #[serde(default)]
    pub peer_authentications: Vec<RawPeerAuthentication>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawWorkload {
    uid: String,
    name: String,
    namespace: String,
    #[serde(default)]
    service_account: Option<String>,
    #[serde(default)]
    trust_domain: Option<String>,
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    node: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    services: BTreeMap<String, BTreeMap<u16, u16>>,
    #[serde(default)]
    authorization_policies: Vec<String>,
    #[serde(default)]
    locality: RawLocality,
    /// Telemetry names, as Istio's `Workload` has them (empty: "unknown" in metrics).
    #[serde(default)]
    workload_name: String,
    #[serde(default)]
    workload_type: Option<String>,
    #[serde(default)]
    canonical_name: String,
    #[serde(default)]
    canonical_revision: String,
    #[serde(default)]
    cluster_id: String,
    /// Istio's network (empty: the default one).
    #[serde(default)]
    network: String,
    /// `{protocol: PROXY, port: 15088}`: the app takes PROXY v2 (on that port).
    #[serde(default)]
    application_tunnel: Option<RawApplicationTunnel>,
    /// The waypoint pod-addressed traffic goes through (see [`waypoint`]).
    #[serde(default)]
    waypoint: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApplicationTunnel {
    protocol: String,
    #[serde(default)]
    port: Option<u16>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLocality {
    #[serde(default)]
    region: String,
    #[serde(default)]
    zone: String,
    #[serde(default)]
    subzone: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawService {
    name: String,
    namespace: String,
    hostname: String,
    #[serde(default)]
    vips: Vec<String>,
    #[serde(default)]
    ports: BTreeMap<u16, u16>,
    #[serde(default)]
    load_balancing: Option<RawLoadBalancing>,
    /// SPIFFE identities the service's endpoints may present besides their own.
    #[serde(default)]
    subject_alt_names: Vec<String>,
    /// The waypoint service-addressed traffic goes through (see [`waypoint`]).
    #[serde(default)]
    waypoint: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawLoadBalancing {
    #[serde(default)]
    routing_preference: Vec<String>,
    #[serde(default)]
    mode: Option<String>,
    /// `OnlyHealthy` (the default) or `AllowAll`.
    #[serde(default)]
    health_policy: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPolicy {
    name: String,
    namespace: String,
    scope: String,
    action: String,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    clauses: Vec<RawClause>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClause {
    #[serde(default)]
    matches: Vec<RawMatch>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawMatch {
    #[serde(default)]
    principals: Vec<String>,
    #[serde(default)]
    not_principals: Vec<String>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    not_namespaces: Vec<String>,
    #[serde(default)]
    source_ips: Vec<String>,
    #[serde(default)]
    not_source_ips: Vec<String>,
    #[serde(default)]
    destination_ips: Vec<String>,
    #[serde(default)]
    not_destination_ips: Vec<String>,
    #[serde(default)]
    destination_ports: Vec<u16>,
    #[serde(default)]
    not_destination_ports: Vec<u16>,
    #[serde(default)]
    service_accounts: Vec<RawServiceAccount>,
    #[serde(default)]
    not_service_accounts: Vec<RawServiceAccount>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawServiceAccount {
    namespace: String,
    service_account: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPeerAuthentication {
    name: String,
    namespace: String,
    scope: String,
    #[serde(default)]
    workloads: Vec<String>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    port_level_mtls: BTreeMap<u16, String>,
}

fn ips(raw: &[String], at: &str) -> Result<Vec<IpAddr>, FieldError> {
    raw.iter()
        .enumerate()
        .map(|(j, a)| {
            a.parse()
                .map_err(|_| (format!("{at}[{j}]"), format!("{a:?} is not an IP address")))
        })
        .collect()
}

/// One of `choices` (file spelling → wire value), or an error listing them.
fn one_of<T: Copy>(value: &str, choices: &[(&str, T)], at: &str) -> Result<T, FieldError> {
    choices
        .iter()
        .find(|(name, _)| *name == value)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
            (
                at.to_string(),
                format!("{value:?} is not {}", names.join(", ")),
            )
        })
}

fn ports(map: &BTreeMap<u16, u16>) -> Vec<pb::Port> {
    map.iter()
        .map(|(s, t)| pb::Port {
            service_port: u32::from(*s),
            target_port: u32::from(*t),
            app_protocol: 0,
        })
        .collect()
}

pub fn workload(w: RawWorkload, at: &str) -> Result<pb::Workload, FieldError> {
    let protocol = w.protocol.as_deref().unwrap_or("HBONE");
    let tunnel = one_of(
        protocol,
        &[
            ("HBONE", pb::TunnelProtocol::Hbone),
            ("TCP", pb::TunnelProtocol::None),
            ("NONE", pb::TunnelProtocol::None),
        ],
        &format!("{at}.protocol"),
    )
    .map_err(|(f, _)| (f, format!("{protocol:?} is not HBONE or TCP")))?;
    let status = one_of(
        w.status.as_deref().unwrap_or("Healthy"),
        &[
            ("Healthy", pb::WorkloadStatus::Healthy),
            ("Unhealthy", pb::WorkloadStatus::Unhealthy),
        ],
        &format!("{at}.status"),
    )?;
    let workload_type = one_of(
        w.workload_type.as_deref().unwrap_or("deployment"),
        &[
            ("deployment", pb::WorkloadType::Deployment),
            ("cronjob", pb::WorkloadType::Cronjob),
            ("job", pb::WorkloadType::Job),
            ("pod", pb::WorkloadType::Pod),
        ],
        &format!("{at}.workloadType"),
    )?;
    let application_tunnel = w
        .application_tunnel
        .as_ref()
        .map(|t| {
            use pb::application_tunnel::Protocol;
            let protocol = one_of(
                &t.protocol.to_ascii_uppercase(),
                &[("PROXY", Protocol::Proxy), ("NONE", Protocol::None)],
                &format!("{at}.applicationTunnel.protocol"),
            )
            .map_err(|(f, _)| (f, format!("{:?} is not PROXY or NONE", t.protocol)))?;
            Ok::<_, FieldError>(pb::ApplicationTunnel {
                protocol: protocol as i32,
                port: t.port.map_or(0, u32::from),
            })
        })
        .transpose()?;
    Ok(pb::Workload {
        application_tunnel,
        addresses: ips(&w.addresses, &format!("{at}.addresses"))?
            .into_iter()
            .map(wire::ip_bytes)
            .collect(),
        uid: w.uid,
        name: w.name,
        namespace: w.namespace,
        service_account: w.service_account.unwrap_or_default(),
        trust_domain: w.trust_domain.unwrap_or_default(),
        tunnel_protocol: tunnel as i32,
        node: w.node,
        status: status as i32,
        services: w
            .services
            .iter()
            .map(|(svc, map)| (svc.clone(), pb::PortList { ports: ports(map) }))
            .collect(),
        authorization_policies: w.authorization_policies,
        locality: Some(pb::Locality {
            region: w.locality.region,
            zone: w.locality.zone,
            subzone: w.locality.subzone,
        }),
        workload_name: w.workload_name,
        workload_type: workload_type as i32,
        canonical_name: w.canonical_name,
        canonical_revision: w.canonical_revision,
        cluster_id: w.cluster_id,
        network: w.network,
        waypoint: w
            .waypoint
            .as_deref()
            .map(|v| waypoint(v, &format!("{at}.waypoint")))
            .transpose()?,
        ..Default::default()
    })
}

/// A waypoint as Istio's config dump writes one: `namespace/hostname` (its Service), or an
/// address; HBONE on 15008.
fn waypoint(v: &str, at: &str) -> Result<pb::GatewayAddress, FieldError> {
    use pb::gateway_address::Destination;
    let destination = if let Ok(ip) = v.parse::<std::net::IpAddr>() {
        Destination::Address(pb::NetworkAddress {
            network: String::new(),
            address: wire::ip_bytes(ip),
            length: None,
        })
    } else {
        match v.split_once('/') {
            Some((ns, host)) if !ns.is_empty() && !host.is_empty() => {
                Destination::Hostname(pb::NamespacedHostname {
                    namespace: ns.to_string(),
                    hostname: host.to_string(),
                })
            }
            _ => {
                return Err((
                    at.to_string(),
                    format!("{v:?} is not namespace/hostname or an address"),
                ));
            }
        }
    };
    Ok(pb::GatewayAddress {
        destination: Some(destination),
        hbone_mtls_port: 15008,
    })
}

pub fn service(s: RawService, at: &str) -> Result<pb::Service, FieldError> {
    let load_balancing = s
        .load_balancing
        .as_ref()
        .map(|lb| load_balancing(lb, &format!("{at}.loadBalancing")))
        .transpose()?;
    Ok(pb::Service {
        addresses: ips(&s.vips, &format!("{at}.vips"))?
            .into_iter()
            .map(|ip| pb::NetworkAddress {
                network: String::new(),
                address: wire::ip_bytes(ip),
                length: None,
            })
            .collect(),
        ports: ports(&s.ports),
        name: s.name,
        namespace: s.namespace,
        hostname: s.hostname,
        load_balancing,
        subject_alt_names: s.subject_alt_names,
        waypoint: s
            .waypoint
            .as_deref()
            .map(|v| waypoint(v, &format!("{at}.waypoint")))
            .transpose()?,
        ..Default::default()
    })
}

fn load_balancing(lb: &RawLoadBalancing, at: &str) -> Result<pb::LoadBalancing, FieldError> {
    use pb::load_balancing::{Mode, Scope};
    let mut routing_preference = Vec::new();
    for (i, p) in lb.routing_preference.iter().enumerate() {
        let scope = one_of(
            &p.to_ascii_uppercase(),
            &[
                ("REGION", Scope::Region),
                ("ZONE", Scope::Zone),
                ("SUBZONE", Scope::Subzone),
                ("NODE", Scope::Node),
            ],
            &format!("{at}.routingPreference[{i}]"),
        )
        .map_err(|(f, _)| (f, format!("{p:?} is not Region, Zone, Subzone or Node")))?;
        routing_preference.push(scope as i32);
    }
    let mode = match lb.mode.as_deref() {
        None => Mode::Failover,
        Some(m) => one_of(
            &m.to_ascii_uppercase(),
            &[
                ("FAILOVER", Mode::Failover),
                ("STRICT", Mode::Strict),
                ("PASSTHROUGH", Mode::Passthrough),
            ],
            &format!("{at}.mode"),
        )
        .map_err(|(f, _)| (f, format!("{m:?} is not Strict, Failover or Passthrough")))?,
    };
    use pb::load_balancing::HealthPolicy;
    let health = match lb.health_policy.as_deref() {
        None => HealthPolicy::OnlyHealthy,
        Some(h) => one_of(
            &h.to_ascii_uppercase(),
            &[
                ("ONLYHEALTHY", HealthPolicy::OnlyHealthy),
                ("ONLY_HEALTHY", HealthPolicy::OnlyHealthy),
                ("ALLOWALL", HealthPolicy::AllowAll),
                ("ALLOW_ALL", HealthPolicy::AllowAll),
            ],
            &format!("{at}.healthPolicy"),
        )
        .map_err(|(f, _)| (f, format!("{h:?} is not OnlyHealthy or AllowAll")))?,
    };
    Ok(pb::LoadBalancing {
        routing_preference,
        mode: mode as i32,
        health_policy: health as i32,
    })
}

fn strings(v: &[String]) -> Vec<sec::StringMatch> {
    v.iter()
        .map(|s| wire::string_match(&StringMatch::parse(s)))
        .collect()
}

fn nets(v: &[String], at: &str) -> Result<Vec<sec::Address>, FieldError> {
    v.iter()
        .enumerate()
        .map(|(i, s)| {
            IpNet::parse(s).map(|n| wire::address(&n)).ok_or_else(|| {
                (
                    format!("{at}[{i}]"),
                    format!("{s:?} is not an address or CIDR block"),
                )
            })
        })
        .collect()
}

fn accounts(v: &[RawServiceAccount]) -> Vec<sec::ServiceAccountMatch> {
    v.iter()
        .map(|a| sec::ServiceAccountMatch {
            namespace: a.namespace.clone(),
            service_account: a.service_account.clone(),
        })
        .collect()
}

fn one_match(m: &RawMatch, at: &str) -> Result<sec::Match, FieldError> {
    let ports = |v: &[u16]| v.iter().map(|p| u32::from(*p)).collect();
    Ok(sec::Match {
        principals: strings(&m.principals),
        not_principals: strings(&m.not_principals),
        namespaces: strings(&m.namespaces),
        not_namespaces: strings(&m.not_namespaces),
        source_ips: nets(&m.source_ips, &format!("{at}.sourceIps"))?,
        not_source_ips: nets(&m.not_source_ips, &format!("{at}.notSourceIps"))?,
        destination_ips: nets(&m.destination_ips, &format!("{at}.destinationIps"))?,
        not_destination_ips: nets(&m.not_destination_ips, &format!("{at}.notDestinationIps"))?,
        destination_ports: ports(&m.destination_ports),
        not_destination_ports: ports(&m.not_destination_ports),
        service_accounts: accounts(&m.service_accounts),
        not_service_accounts: accounts(&m.not_service_accounts),
        extensions: vec![],
    })
}

pub fn policy(p: RawPolicy, at: &str) -> Result<sec::Authorization, FieldError> {
    let scope = one_of(
        &p.scope,
        &[
            ("Global", sec::Scope::Global),
            ("Namespace", sec::Scope::Namespace),
            ("WorkloadSelector", sec::Scope::WorkloadSelector),
        ],
        &format!("{at}.scope"),
    )?;
    let action = one_of(
        &p.action,
        &[
            ("Allow", sec::Action::Allow),
            ("ALLOW", sec::Action::Allow),
            ("Deny", sec::Action::Deny),
            ("DENY", sec::Action::Deny),
        ],
        &format!("{at}.action"),
    )
    .map_err(|(f, _)| {
        (
            f,
            format!("{:?} is not supported at L4 (Allow or Deny)", p.action),
        )
    })?;
    let mut groups = Vec::new();
    for (i, r) in p.rules.iter().enumerate() {
        let mut rules = Vec::new();
        for (j, c) in r.clauses.iter().enumerate() {
            let matches = c
                .matches
                .iter()
                .enumerate()
                .map(|(k, m)| one_match(m, &format!("{at}.rules[{i}].clauses[{j}].matches[{k}]")))
                .collect::<Result<_, _>>()?;
            rules.push(sec::Rules { matches });
        }
        groups.push(sec::Group { rules });
    }
    Ok(sec::Authorization {
        name: p.name,
        namespace: p.namespace,
        scope: scope as i32,
        action: action as i32,
        groups,
        dry_run: p.dry_run,
        extensions: vec![],
    })
}

fn mode(s: &str, at: &str) -> Result<MtlsMode, FieldError> {
    // HBONE is always mutual TLS: DISABLE has no meaning at ztunnel, as in Istio.
    one_of(
        s,
        &[
            ("STRICT", MtlsMode::Strict),
            ("PERMISSIVE", MtlsMode::Permissive),
            ("UNSET", MtlsMode::Unset),
            ("DISABLE", MtlsMode::Unset),
        ],
        at,
    )
}

pub fn peer_authentication(
    p: RawPeerAuthentication,
    at: &str,
) -> Result<PeerAuthentication, FieldError> {
    let scope = one_of(
        &p.scope,
        &[
            ("Mesh", PeerScope::Mesh),
            ("Namespace", PeerScope::Namespace),
            ("Workload", PeerScope::Workload),
        ],
        &format!("{at}.scope"),
    )?;
    let mut port_modes = BTreeMap::new();
    for (port, m) in &p.port_level_mtls {
        port_modes.insert(*port, mode(m, &format!("{at}.portLevelMtls.{port}"))?);
    }
    Ok(PeerAuthentication {
        name: p.name,
        namespace: p.namespace,
        scope,
        workloads: p.workloads,
        mode: mode(p.mode.as_deref().unwrap_or("UNSET"), &format!("{at}.mode"))?,
        port_modes,
    })
}
