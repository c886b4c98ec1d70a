//! Kubernetes objects → Istio's workload API, as istiod translates them for ambient:
//! - every pod with an address becomes a `Workload` (uid `<cluster>//v1/Pod/<ns>/<name>`),
//!   with tunnel protocol HBONE when it is enrolled (namespace or pod labelled
//!   `istio.io/dataplane-mode=ambient`, pod not opted out with `none`, not host-network, no
//!   sidecar) and NONE otherwise;
//! - every Service becomes a `Service` (resource name `<ns>/<hostname>`), and each pod it
//!   selects lists it with the port map, named target ports resolved from the pod's
//!   containers;
//! - waypoints are bound as istiod binds them ([`crate::waypoints`]); a waypoint's pods are
//!   HBONE workloads (they terminate HBONE themselves) without a waypoint of their own;
//! - AuthorizationPolicies become `Authorization`s (workload-scoped ones listed on the pods
//!   their selector matches); STRICT PeerAuthentications become DENY policies for peers
//!   without an identity, with port-level PERMISSIVE ports excepted.
//!
//! An object that cannot be translated is reported and skipped; the rest translate.

use crate::waypoints::{Binding, Target, Waypoints};
use amesh_kube::{
    enrollment::enrolled,
    source::Snapshot,
    workload_name::{self, WorkloadKind},
};
use amesh_policy::{
    Authorization, Scope,
    crd::{self, CrdError},
    wire::{ip_bytes, to_proto},
};
use amesh_proto::{route as rt, security as sec, workload as pb};
use k8s_openapi::{
    api::core::v1::{Pod, Service},
    apimachinery::pkg::util::intstr::IntOrString,
};
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

/// Settings of the translation.
#[derive(Debug, Clone)]
pub struct Mesh {
    pub cluster_id: String,
    pub trust_domain: String,
    pub domain_suffix: String,
    /// Policies here without a selector apply mesh-wide.
    pub root_namespace: String,
    /// Where RequestAuthentication's `jwksUri` keys come from.
    pub jwks: crate::jwks::Jwks,
    /// Istio's mesh configuration (extension providers for CUSTOM policies).
    pub mesh_config: std::sync::Arc<amesh_policy::ext_authz::MeshConfig>,
}

impl Default for Mesh {
    fn default() -> Self {
        Self {
            cluster_id: "Kubernetes".into(),
            trust_domain: "cluster.local".into(),
            domain_suffix: "cluster.local".into(),
            root_namespace: "istio-system".into(),
            jwks: crate::jwks::Jwks::default(),
            mesh_config: Default::default(),
        }
    }
}

/// The translated resources, keyed by xDS resource name.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Resources {
    pub addresses: BTreeMap<String, pb::Address>,
    pub authorizations: BTreeMap<String, sec::Authorization>,
    /// HTTPRoute rules for waypoints (`<namespace>/<route>/<index>`).
    pub routes: BTreeMap<String, rt::HttpRouteRule>,
    /// Every pod scheduled on a node, with or without an address yet: the CA signs for
    /// a node agent's pods as soon as they exist (ztunnel asks when the node agent hands a
    /// new pod over, before the kubelet has published its IP).
    pub placements: Vec<Placement>,
    /// What could not be translated, or only in part.
    pub errors: Vec<Rejected>,
    /// Policies for waypoints (`<Kind>/<namespace>/<name>`).
    pub waypoint_policies: BTreeMap<String, rt::WaypointPolicy>,
    /// The status each HTTPRoute, GRPCRoute and TCPRoute should have.
    pub route_status: Vec<crate::routes::RouteStatus>,
}

/// A pod on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    pub node: String,
}

/// An object that could not be translated, and why (logged, and in Kubernetes mode reported
/// as a Warning event on the object).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
#[error("{kind} {namespace}/{name}: {reason}")]
pub struct Rejected {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub reason: String,
    /// Accepted, but part of it cannot be enforced (an AuthorizationPolicy's HTTP attributes
    /// at ztunnel): what is enforced is stricter than written.
    pub partial: bool,
}

impl Rejected {
    /// The log message and the Kubernetes event reason.
    pub fn what(&self) -> (&'static str, &'static str) {
        if self.partial {
            ("object enforced in part", "PartiallyEnforced")
        } else {
            ("object not translated", "NotEnforced")
        }
    }
}

impl Rejected {
    fn of(kind: &'static str, e: &CrdError) -> Self {
        let (namespace, name) = match e {
            CrdError::UnsupportedAction {
                namespace, name, ..
            }
            | CrdError::Invalid {
                namespace, name, ..
            } => (namespace.clone(), name.clone()),
        };
        Self {
            kind,
            namespace,
            name,
            reason: e.to_string(),
            partial: false,
        }
    }
}

/// Istio's label for pods that terminate HBONE themselves (waypoints, gateways).
const TUNNEL: &str = "networking.istio.io/tunnel";

fn labels_match(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Translates a snapshot.
pub fn translate(snap: &Snapshot, mesh: &Mesh) -> Resources {
    let mut out = Resources::default();
    let ns_labels: HashMap<String, BTreeMap<String, String>> = snap
        .namespaces
        .iter()
        .filter_map(|n| {
            Some((
                n.metadata.name.clone()?,
                n.metadata.labels.clone().unwrap_or_default(),
            ))
        })
        .collect();
    let mut policies = authorizations(snap, mesh, &mut out);
    let peer_auths = peer_authentications(snap, mesh, &mut out);
    let waypoints = Waypoints::new(snap);
    let empty = BTreeMap::new();
    for svc in &snap.services {
        if let Some((name, mut s)) = service(svc, mesh) {
            let labels = svc.metadata.labels.clone().unwrap_or_default();
            let ns = ns_labels.get(&s.namespace).unwrap_or(&empty);
            if !waypoints.is_waypoint_service(&s.namespace, &s.name, &labels) {
                s.waypoint = bind(
                    &waypoints,
                    Target::Service,
                    ("Service", &s.namespace, &s.name),
                    &labels,
                    ns,
                    mesh,
                    &mut out,
                );
            }
            out.addresses.insert(
                name,
                pb::Address {
                    r#type: Some(pb::address::Type::Service(s)),
                },
            );
        }
    }
    // ServiceEntries: their services (a Kubernetes Service of the same host wins, as in
    // istiod) and endpoints; selector entries are applied to the pods below.
    let taken: std::collections::BTreeSet<IpAddr> = out
        .addresses
        .values()
        .filter_map(|a| match &a.r#type {
            Some(pb::address::Type::Service(s)) => Some(s.addresses.iter()),
            _ => None,
        })
        .flatten()
        .filter_map(|a| ip_of(&a.address))
        .collect();
    let entries =
        crate::service_entries::translate(&snap.service_entries, mesh, &taken, &mut out.errors);
    for (key, address) in entries.addresses {
        out.addresses.entry(key).or_insert(address);
    }
    // Services that only their waypoint may reach: an L4 DENY for their endpoints.
    let required = {
        let addresses = &out.addresses;
        let waypoint_of = |ns: &str, name: &str| {
            let key = format!("{ns}/{name}.{ns}.svc.{}", mesh.domain_suffix);
            let Some(pb::address::Type::Service(s)) = addresses.get(&key)?.r#type.as_ref() else {
                return None;
            };
            match s.waypoint.as_ref()?.destination.as_ref()? {
                pb::gateway_address::Destination::Hostname(h) => Some((
                    h.namespace.clone(),
                    h.hostname.split('.').next().unwrap_or_default().to_string(),
                )),
                pb::gateway_address::Destination::Address(_) => None,
            }
        };
        crate::require_waypoint::policies(
            &snap.services,
            &snap.namespaces,
            &mesh.trust_domain,
            waypoint_of,
            &mut out.errors,
        )
    };
    for (p, _) in &required {
        out.authorizations.insert(p.key(), to_proto(p));
    }
    policies.extend(required);
    for w in endpoint_slice_workloads(snap, mesh) {
        out.addresses.insert(
            w.uid.clone(),
            pb::Address {
                r#type: Some(pb::address::Type::Workload(w)),
            },
        );
    }
    for pod in &snap.pods {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let spec = pod.spec.as_ref();
        if let (Some(node), Some(name)) = (
            spec.and_then(|s| s.node_name.clone()),
            pod.metadata.name.clone(),
        ) {
            out.placements.push(Placement {
                namespace: ns.to_string(),
                name,
                service_account: spec
                    .and_then(|s| s.service_account_name.clone())
                    .unwrap_or_else(|| "default".into()),
                node,
            });
        }
        let namespace_labels = ns_labels.get(ns).unwrap_or(&empty);
        if let Some(mut w) = workload(pod, namespace_labels, &snap.services, &policies, mesh) {
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            crate::service_entries::apply_selected(&entries.selected, ns, &labels, &mut w);
            if waypoints.is_instance(pod) || labels.get(TUNNEL).is_some_and(|t| t == "http") {
                // It terminates HBONE itself, and is never sent through a waypoint.
                w.tunnel_protocol = pb::TunnelProtocol::Hbone as i32;
            } else {
                w.waypoint = bind(
                    &waypoints,
                    Target::Workload,
                    ("Pod", &w.namespace, &w.name),
                    &labels,
                    namespace_labels,
                    mesh,
                    &mut out,
                );
            }
            if let Some(p) = peer_policy(&peer_auths, &w.namespace, &labels, mesh) {
                w.authorization_policies.push(p.key());
                out.authorizations
                    .entry(p.key())
                    .or_insert_with(|| to_proto(&p));
            }
            out.addresses.insert(
                w.uid.clone(),
                pb::Address {
                    r#type: Some(pb::address::Type::Workload(w)),
                },
            );
        }
    }
    out.route_status =
        crate::routes::translate(snap, mesh, &out.addresses, &mut out.routes, &mut out.errors);
    crate::virtual_services::translate(
        snap,
        mesh,
        &out.addresses,
        &mut out.routes,
        &mut out.errors,
    );
    crate::waypoint_policies::translate(snap, mesh, &mut out.waypoint_policies, &mut out.errors);
    crate::virtual_services::traffic_policies(
        snap,
        mesh,
        &mut out.waypoint_policies,
        &mut out.errors,
    );
    out
}

/// Translated policies with their selectors (`None`: namespace or mesh scope).
type Policies = Vec<(Authorization, Option<BTreeMap<String, String>>)>;

fn authorizations(snap: &Snapshot, mesh: &Mesh, out: &mut Resources) -> Policies {
    let mut policies = Vec::new();
    for p in &snap.authorization_policies {
        let mut p = p.clone();
        if p.metadata.namespace.is_empty() {
            p.metadata.namespace = "default".into();
        }
        match crd::authorization_policy(&p, &mesh.root_namespace) {
            Ok(Some(t)) => {
                if let Some(reason) = t.http_warning() {
                    out.errors.push(Rejected {
                        kind: "AuthorizationPolicy",
                        namespace: t.policy.namespace.clone(),
                        name: t.policy.name.clone(),
                        reason,
                        partial: true,
                    });
                }
                policies.push((t.policy, t.selector));
            }
            Ok(None) => {}
            Err(e) => out.errors.push(Rejected::of("AuthorizationPolicy", &e)),
        }
    }
    for (p, _) in &policies {
        out.authorizations.insert(p.key(), to_proto(p));
    }
    policies
}

/// PeerAuthentications with their selectors (`None`: namespace or mesh scope).
type PeerAuths = Vec<(
    amesh_policy::PeerAuthentication,
    Option<BTreeMap<String, String>>,
)>;

fn peer_authentications(snap: &Snapshot, mesh: &Mesh, out: &mut Resources) -> PeerAuths {
    let mut pas = Vec::new();
    for pa in &snap.peer_authentications {
        match crd::peer_authentication(pa, &mesh.root_namespace) {
            Ok(converted) => pas.push(converted),
            Err(e) => out.errors.push(Rejected::of("PeerAuthentication", &e)),
        }
    }
    pas
}

/// The mTLS requirement of one workload as the policy ztunnel enforces (see
/// [`amesh_policy::strict_policy`]): the most specific PeerAuthentication decides, port by
/// port (workload selector, then namespace, then mesh; UNSET inherits). Workloads with the
/// same requirement share one policy in the root namespace, referenced from each of them.
fn peer_policy(
    pas: &PeerAuths,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    mesh: &Mesh,
) -> Option<Authorization> {
    let chain = amesh_policy::chain(
        pas,
        |(p, _)| p,
        namespace,
        |(_, selector)| selector.as_ref().is_some_and(|s| labels_match(s, labels)),
    );
    amesh_policy::strict_policy(&chain, &mesh.root_namespace)
}

fn service(svc: &Service, mesh: &Mesh) -> Option<(String, pb::Service)> {
    let name = svc.metadata.name.clone()?;
    let namespace = svc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let spec = svc.spec.as_ref()?;
    let hostname = format!("{name}.{namespace}.svc.{}", mesh.domain_suffix);
    let ips = spec
        .cluster_ips
        .clone()
        .unwrap_or_else(|| spec.cluster_ip.clone().into_iter().collect());
    let addresses = ips
        .iter()
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .map(|ip| pb::NetworkAddress {
            network: String::new(),
            address: ip_bytes(ip),
            length: None,
        })
        .collect();
    let ports = spec
        .ports
        .iter()
        .flatten()
        .map(|p| pb::Port {
            service_port: p.port as u32,
            target_port: match &p.target_port {
                Some(IntOrString::Int(t)) => *t as u32,
                None => p.port as u32,
                // Named: resolved per pod, in the workload's own port map.
                Some(IntOrString::String(_)) => 0,
            },
            app_protocol: crate::app_protocol::of(p) as i32,
        })
        .collect();
    let resource = pb::Service {
        name,
        namespace: namespace.clone(),
        hostname: hostname.clone(),
        addresses,
        ports,
        ..Default::default()
    };
    Some((format!("{namespace}/{hostname}"), resource))
}

/// Endpoints of services without a selector (a database outside the cluster, endpoints a
/// controller manages) as Istio's ambient index turns them into workloads: one per address,
/// uid `<cluster>/discovery.k8s.io/EndpointSlice/<ns>/<slice>/<ip>`, plain TCP (nothing
/// on the other side speaks HBONE), backing the service with the slice's ports. Addresses
/// that are pods are skipped: the pod is already a workload.
fn endpoint_slice_workloads(snap: &Snapshot, mesh: &Mesh) -> Vec<pb::Workload> {
    const SERVICE_NAME: &str = "kubernetes.io/service-name";
    let pod_ips: std::collections::HashSet<&str> = snap
        .pods
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ips.as_ref())
        .flatten()
        .map(|ip| ip.ip.as_str())
        .collect();
    let mut out = Vec::new();
    for slice in &snap.endpoint_slices {
        let (Some(slice_name), namespace) = (
            slice.metadata.name.as_deref(),
            slice.metadata.namespace.as_deref().unwrap_or("default"),
        ) else {
            continue;
        };
        let Some(svc_name) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME))
        else {
            continue;
        };
        let Some(svc) = snap.services.iter().find(|s| {
            s.metadata.name.as_deref() == Some(svc_name.as_str())
                && s.metadata.namespace.as_deref().unwrap_or("default") == namespace
        }) else {
            continue;
        };
        let spec = svc.spec.as_ref();
        if spec
            .and_then(|s| s.selector.as_ref())
            .is_some_and(|s| !s.is_empty())
        {
            continue;
        }
        let hostname = format!("{svc_name}.{namespace}.svc.{}", mesh.domain_suffix);
        // Service port → the slice's port of the same name (or the only one).
        let slice_ports = slice.ports.clone().unwrap_or_default();
        let ports: Vec<pb::Port> = spec
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|sp| {
                let target = slice_ports
                    .iter()
                    .find(|p| p.name == sp.name || slice_ports.len() == 1)
                    .and_then(|p| p.port)?;
                Some(pb::Port {
                    service_port: sp.port as u32,
                    target_port: target as u32,
                    app_protocol: 0,
                })
            })
            .collect();
        for endpoint in &slice.endpoints {
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            for address in &endpoint.addresses {
                let Ok(ip) = address.parse::<IpAddr>() else {
                    continue;
                };
                if pod_ips.contains(address.as_str()) {
                    continue;
                }
                out.push(pb::Workload {
                    uid: format!(
                        "{}/discovery.k8s.io/EndpointSlice/{namespace}/{slice_name}/{address}",
                        mesh.cluster_id
                    ),
                    name: slice_name.to_string(),
                    namespace: namespace.to_string(),
                    addresses: vec![ip_bytes(ip)],
                    tunnel_protocol: pb::TunnelProtocol::None as i32,
                    status: if ready {
                        pb::WorkloadStatus::Healthy as i32
                    } else {
                        pb::WorkloadStatus::Unhealthy as i32
                    },
                    services: [(
                        format!("{namespace}/{hostname}"),
                        pb::PortList {
                            ports: ports.clone(),
                        },
                    )]
                    .into(),
                    cluster_id: mesh.cluster_id.clone(),
                    ..Default::default()
                });
            }
        }
    }
    out
}

/// One object's waypoint; a binding that cannot be made is reported.
fn bind(
    waypoints: &Waypoints,
    target: Target,
    (kind, namespace, name): (&'static str, &str, &str),
    labels: &BTreeMap<String, String>,
    ns_labels: &BTreeMap<String, String>,
    mesh: &Mesh,
    out: &mut Resources,
) -> Option<pb::GatewayAddress> {
    match waypoints.bind(target, namespace, labels, ns_labels, mesh) {
        Binding::Bound(address) => Some(address),
        Binding::None => None,
        Binding::Refused(reason) => {
            out.errors.push(Rejected {
                kind,
                namespace: namespace.to_string(),
                name: name.to_string(),
                reason,
                partial: true,
            });
            None
        }
    }
}

fn workload(
    pod: &Pod,
    ns_labels: &BTreeMap<String, String>,
    services: &[Service],
    policies: &Policies,
    mesh: &Mesh,
) -> Option<pb::Workload> {
    let name = pod.metadata.name.clone()?;
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let status = pod.status.as_ref()?;
    let mut ips: Vec<String> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|i| i.ip.clone())
        .collect();
    if ips.is_empty() {
        ips.extend(status.pod_ip.clone());
    }
    let addresses: Vec<Vec<u8>> = ips
        .iter()
        .filter_map(|i| i.parse::<IpAddr>().ok())
        .map(ip_bytes)
        .collect();
    if addresses.is_empty() {
        return None;
    }
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let spec = pod.spec.as_ref()?;
    let ready = crate::waypoints::pod_ready(status);
    let names = workload_name::of_pod(&pod.metadata);
    let mut w = pb::Workload {
        uid: format!("{}//v1/Pod/{namespace}/{name}", mesh.cluster_id),
        name: name.clone(),
        namespace: namespace.clone(),
        addresses,
        tunnel_protocol: if enrolled(pod, ns_labels) {
            pb::TunnelProtocol::Hbone
        } else {
            pb::TunnelProtocol::None
        } as i32,
        trust_domain: mesh.trust_domain.clone(),
        service_account: spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into()),
        node: spec.node_name.clone().unwrap_or_default(),
        canonical_name: names.canonical_name,
        canonical_revision: names.canonical_revision,
        workload_name: names.name,
        workload_type: match names.kind {
            WorkloadKind::Deployment => pb::WorkloadType::Deployment,
            WorkloadKind::CronJob => pb::WorkloadType::Cronjob,
            WorkloadKind::Job => pb::WorkloadType::Job,
            WorkloadKind::Pod => pb::WorkloadType::Pod,
        } as i32,
        status: if ready {
            pb::WorkloadStatus::Healthy
        } else {
            pb::WorkloadStatus::Unhealthy
        } as i32,
        cluster_id: mesh.cluster_id.clone(),
        ..Default::default()
    };
    for svc in services
        .iter()
        .filter(|s| s.metadata.namespace.as_deref().unwrap_or("default") == namespace)
    {
        let selector = svc
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default();
        if !labels_match(&selector, &labels) {
            continue;
        }
        let Some((key, _)) = service(svc, mesh) else {
            continue;
        };
        let ports = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default();
        let ports = ports
            .iter()
            .filter_map(|p| {
                Some(pb::Port {
                    service_port: p.port as u32,
                    target_port: target_port(pod, p.target_port.as_ref(), p.port)?,
                    app_protocol: 0,
                })
            })
            .collect();
        w.services.insert(key, pb::PortList { ports });
    }
    w.authorization_policies = policies
        .iter()
        .filter(|(p, sel)| {
            p.scope == Scope::WorkloadSelector
                && p.namespace == namespace
                && sel.as_ref().is_some_and(|s| labels_match(s, &labels))
        })
        .map(|(p, _)| p.key())
        .collect();
    Some(w)
}

/// A service port's target on this pod: a number, or a container port found by name.
/// An address of the workload API (4 or 16 bytes) as an IP.
fn ip_of(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

fn target_port(pod: &Pod, target: Option<&IntOrString>, port: i32) -> Option<u32> {
    match target {
        None => Some(port as u32),
        Some(IntOrString::Int(p)) => Some(*p as u32),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port as u32),
    }
}
