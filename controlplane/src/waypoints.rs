//! Waypoints and who is bound to them, with istiod's rules
//! (`pilot/pkg/serviceregistry/kube/controller/ambient/waypoints.go`):
//! - a waypoint is a Gateway of class `istio-waypoint` (or `amesh-waypoint`); it can be used
//!   once one of its pods (label `gateway.networking.k8s.io/gateway-name`) is ready, which is
//!   also when the controller gives it `status.addresses`;
//! - `istio.io/waypoint-for` on the Gateway, else on its GatewayClass, says what may bind:
//!   `service` (the default), `workload`, `all` or `none`;
//! - an object binds with `istio.io/use-waypoint` (and `istio.io/use-waypoint-namespace`),
//!   its own label first, else its namespace's; `none` on the object opts out and blocks the
//!   namespace's; a namespace outside the HBONE listener's `allowedRoutes` cannot bind;
//! - waypoint Services and waypoint pods never get a waypoint themselves.
//!
//! What cannot bind is said (a `Rejected` with the reason) and the traffic stays direct,
//! except a traffic-type mismatch inherited from the namespace, which istiod leaves silent
//! (a namespace can bind its services without meaning its workloads).

use crate::translate::Mesh;
use amesh_kube::source::Snapshot;
use amesh_proto::workload as pb;
use gateway_api::gateways::{
    Gateway, GatewayListenersAllowedRoutesNamespacesFrom as From,
    GatewayListenersAllowedRoutesNamespacesSelector as Selector,
};
use k8s_openapi::api::core::v1::Pod;
use std::collections::{BTreeMap, HashMap};

pub const WAYPOINT_CLASSES: [&str; 2] = ["istio-waypoint", "amesh-waypoint"];
pub const GATEWAY_NAME: &str = "gateway.networking.k8s.io/gateway-name";
pub const USE_WAYPOINT: &str = "istio.io/use-waypoint";
pub const USE_WAYPOINT_NAMESPACE: &str = "istio.io/use-waypoint-namespace";
pub const WAYPOINT_FOR: &str = "istio.io/waypoint-for";
/// The label istiod's gateway controller puts on what it creates for a waypoint.
pub const MANAGED: &str = "gateway.istio.io/managed";
pub const MANAGED_BY_MESH: &str = "istio.io-mesh-controller";
pub const HBONE_PORT: u32 = 15008;

/// What a waypoint accepts (`istio.io/waypoint-for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficType {
    Service,
    Workload,
    All,
    None,
}

impl TrafficType {
    fn parse(v: &str) -> Option<Self> {
        Some(match v {
            "service" => Self::Service,
            "workload" => Self::Workload,
            "all" => Self::All,
            "none" => Self::None,
            _ => return None,
        })
    }

    fn allows(self, kind: Target) -> bool {
        matches!(
            (self, kind),
            (Self::All, _) | (Self::Service, Target::Service) | (Self::Workload, Target::Workload)
        )
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::Workload => "workload",
            Self::All => "all",
            Self::None => "none",
        }
    }
}

/// What is asking to bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Service,
    Workload,
}

impl Target {
    fn as_str(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::Workload => "workload",
        }
    }
}

/// One waypoint Gateway as the binding rules need it.
#[derive(Debug, Clone)]
pub struct Waypoint {
    pub namespace: String,
    pub name: String,
    pub traffic: TrafficType,
    /// A pod of it is ready: only then can it take traffic.
    pub ready: bool,
    /// Which namespaces may bind (the HBONE listener's `allowedRoutes.namespaces`).
    pub from: Allowed,
}

#[derive(Debug, Clone)]
pub enum Allowed {
    Same,
    All,
    Selector(Selector),
}

impl Waypoint {
    /// The Service host name the waypoint is reached by.
    pub fn hostname(&self, mesh: &Mesh) -> String {
        format!(
            "{}.{}.svc.{}",
            self.name, self.namespace, mesh.domain_suffix
        )
    }

    pub fn address(&self, mesh: &Mesh) -> pb::GatewayAddress {
        pb::GatewayAddress {
            destination: Some(pb::gateway_address::Destination::Hostname(
                pb::NamespacedHostname {
                    namespace: self.namespace.clone(),
                    hostname: self.hostname(mesh),
                },
            )),
            hbone_mtls_port: HBONE_PORT,
        }
    }

    fn admits(&self, namespace: &str, ns_labels: &BTreeMap<String, String>) -> bool {
        match &self.from {
            Allowed::Same => self.namespace == namespace,
            Allowed::All => true,
            Allowed::Selector(s) => selects(s, ns_labels),
        }
    }
}

/// A Kubernetes label selector (matchLabels and matchExpressions, ANDed).
fn selects(s: &Selector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = s
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = s.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            // An operator Kubernetes does not define selects nothing.
            _ => false,
        }
    });
    by_labels && by_expressions
}

/// Kubernetes' readiness: Running, with the `Ready` condition true.
pub fn pod_ready(status: &k8s_openapi::api::core::v1::PodStatus) -> bool {
    status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Whether a pod of waypoint `namespace/name` is ready: only then can it take traffic (and
/// only then does its Gateway get `Programmed`).
pub fn has_ready_instance(pods: &[Pod], namespace: &str, name: &str) -> bool {
    pods.iter().any(|p| {
        p.metadata.namespace.as_deref().unwrap_or("default") == namespace
            && p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(GATEWAY_NAME))
                .is_some_and(|g| g == name)
            && p.status.as_ref().is_some_and(pod_ready)
    })
}

/// The waypoints of a snapshot, by `namespace/name`.
#[derive(Debug, Default, Clone)]
pub struct Waypoints {
    by_key: HashMap<String, Waypoint>,
}

/// The outcome of binding one object.
#[derive(Debug, Clone, PartialEq)]
pub enum Binding {
    /// Through this waypoint.
    Bound(pb::GatewayAddress),
    /// No waypoint, and nothing to say.
    None,
    /// No waypoint, because of this (reported).
    Refused(String),
}

impl Waypoints {
    pub fn new(snap: &Snapshot) -> Self {
        let class_traffic: HashMap<&str, TrafficType> = snap
            .gateway_classes
            .iter()
            .filter_map(|c| {
                let v = c.metadata.labels.as_ref()?.get(WAYPOINT_FOR)?;
                Some((c.metadata.name.as_deref()?, TrafficType::parse(v)?))
            })
            .collect();
        let mut by_key = HashMap::new();
        for gw in &snap.gateways {
            if let Some(w) = waypoint_of(gw, snap, &class_traffic) {
                by_key.insert(format!("{}/{}", w.namespace, w.name), w);
            }
        }
        Self { by_key }
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<&Waypoint> {
        self.by_key.get(&format!("{namespace}/{name}"))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Waypoint> {
        self.by_key.values()
    }

    /// Whether the pod is an instance of a waypoint.
    pub fn is_instance(&self, pod: &Pod) -> bool {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        pod.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(GATEWAY_NAME))
            .is_some_and(|name| self.get(ns, name).is_some())
    }

    /// Whether a Service is a waypoint's own: istiod's managed label, or the Service named
    /// like a waypoint in its namespace (as the controller names it).
    pub fn is_waypoint_service(
        &self,
        namespace: &str,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        labels.get(MANAGED).is_some_and(|v| v == MANAGED_BY_MESH)
            || self.get(namespace, name).is_some()
    }

    /// istiod's `fetchWaypointForTarget` and the traffic-type check after it.
    pub fn bind(
        &self,
        target: Target,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        ns_labels: &BTreeMap<String, String>,
        mesh: &Mesh,
    ) -> Binding {
        let asked = |labels: &BTreeMap<String, String>| -> Option<Option<(String, String)>> {
            let name = labels.get(USE_WAYPOINT)?;
            if name == "none" {
                return Some(None);
            }
            let ns = labels
                .get(USE_WAYPOINT_NAMESPACE)
                .cloned()
                .unwrap_or_else(|| namespace.to_string());
            Some(Some((ns, name.clone())))
        };
        let (wanted, on_object) = match asked(labels) {
            Some(None) => return Binding::None,
            Some(Some(w)) => (w, true),
            None => match asked(ns_labels) {
                // `none` on the namespace only means "no namespace default".
                Some(Some(w)) => (w, false),
                Some(None) | None => return Binding::None,
            },
        };
        let (wp_ns, wp_name) = wanted;
        let Some(w) = self.get(&wp_ns, &wp_name) else {
            return Binding::Refused(format!(
                "waypoint {wp_ns}/{wp_name} does not exist: traffic stays direct"
            ));
        };
        if !w.ready {
            return Binding::Refused(format!(
                "waypoint {wp_ns}/{wp_name} has no ready pod yet: traffic stays direct"
            ));
        }
        if !w.admits(namespace, ns_labels) {
            return Binding::Refused(format!(
                "waypoint {wp_ns}/{wp_name} does not allow namespace {namespace} (its HBONE listener's allowedRoutes)"
            ));
        }
        if !w.traffic.allows(target) {
            return if on_object {
                Binding::Refused(format!(
                    "waypoint {wp_ns}/{wp_name} is for {} traffic ({WAYPOINT_FOR}), not {}",
                    w.traffic.as_str(),
                    target.as_str()
                ))
            } else {
                Binding::None
            };
        }
        Binding::Bound(w.address(mesh))
    }
}

fn waypoint_of(
    gw: &Gateway,
    snap: &Snapshot,
    class_traffic: &HashMap<&str, TrafficType>,
) -> Option<Waypoint> {
    let class = gw.spec.gateway_class_name.as_str();
    if !WAYPOINT_CLASSES.contains(&class) {
        return None;
    }
    let name = gw.metadata.name.clone()?;
    let namespace = gw
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let traffic = gw
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(WAYPOINT_FOR))
        .and_then(|v| TrafficType::parse(v))
        .or_else(|| class_traffic.get(class).copied())
        .unwrap_or(TrafficType::Service);
    let ready = has_ready_instance(&snap.pods, &namespace, &name);
    let listener = gw
        .spec
        .listeners
        .iter()
        .find(|l| l.protocol == "HBONE" && l.port == HBONE_PORT as i32);
    let from = match listener
        .and_then(|l| l.allowed_routes.as_ref())
        .and_then(|a| a.namespaces.as_ref())
    {
        None => Allowed::Same,
        Some(n) => match n.from {
            Some(From::All) => Allowed::All,
            Some(From::Selector) => Allowed::Selector(n.selector.clone().unwrap_or_default()),
            Some(From::Same) | None => Allowed::Same,
        },
    };
    Some(Waypoint {
        namespace,
        name,
        traffic,
        ready,
        from,
    })
}
