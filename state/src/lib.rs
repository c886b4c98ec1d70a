//! What ztunnel knows about the mesh: workloads and services in the shape of Istio's workload
//! API, validated and indexed for the data path.
//!
//! Shared by ztunnel and the waypoint. There is one front end: the xDS feed ([`xds`]) and
//! ztunnel's local file both yield Istio's wire types, [`convert`] turns each resource into
//! the model, [`resources`] keeps the last good version of each, and a [`State`] is built from
//! them; [`StateWriter`] swaps it atomically so that connections always see one version
//! through a [`StateReader`].

pub mod convert;
pub mod resources;
mod route;
pub mod xds;

pub use resources::Resources;
pub use route::Route;

use amesh_identity::Identity;
use amesh_policy::{Authorization, Scope};
use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};
use tokio::sync::watch;

/// How a workload receives mesh traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Protocol {
    /// HBONE on port 15008 (the workload is in the ambient mesh).
    Hbone,
    /// Plain TCP to the workload's own port (not in the mesh).
    Tcp,
}

/// Where a workload runs (Istio's locality).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

/// A level of locality a service can prefer its endpoints to share with the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum LocalityScope {
    Region,
    Zone,
    Subzone,
    Node,
}

/// How a service picks endpoints (Istio's `LoadBalancing`): endpoints are ranked by how many
/// of `prefer`, in order, they share with the client; `Failover` uses the best rank present,
/// `Strict` only endpoints that share all of them. Empty `prefer`: any healthy endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LoadBalancing {
    pub prefer: Vec<LocalityScope>,
    pub strict: bool,
    /// Istio's `PASSTHROUGH` mode: no endpoint is picked, the connection goes to the address
    /// the client dialled, as plain TCP.
    pub passthrough: bool,
    /// Istio's `ALLOW_ALL` health policy: unhealthy endpoints are picked too.
    pub allow_unhealthy: bool,
}

/// Who makes a connection, for locality preferences.
#[derive(Clone, Copy, Debug)]
pub struct Client<'a> {
    pub node: &'a str,
    pub locality: &'a Locality,
    /// The client's network (Istio's `NETWORK`; empty: the default one).
    pub network: &'a str,
    /// The client's identity and address, to tell a waypoint's own traffic (which goes
    /// direct to the workloads behind it) from everyone else's.
    pub identity: Option<&'a Identity>,
    pub ip: Option<IpAddr>,
    /// Only these workloads (uids) may be picked among a service's endpoints: a
    /// DestinationRule subset a waypoint routes to (`None`: any endpoint).
    pub only: Option<&'a [String]>,
    /// Workloads (uids) not to pick: endpoints outlier detection ejected.
    pub excluded: &'a [String],
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Workload {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub trust_domain: String,
    pub addresses: Vec<IpAddr>,
    /// A host name resolved when connecting, for an endpoint without addresses (a
    /// ServiceEntry's DNS endpoint, Istio's `Workload.hostname`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    pub protocol: Protocol,
    pub node: String,
    pub healthy: bool,
    /// Services this workload backs (`namespace/hostname`) and their port maps
    /// (service port → target port).
    pub services: BTreeMap<String, BTreeMap<u16, u16>>,
    /// `WorkloadSelector` policies that apply to it (`namespace/name`).
    pub authorization_policies: Vec<String>,
    pub locality: Locality,
    /// What telemetry and HBONE baggage say about it.
    pub telemetry: Telemetry,
    /// Istio's network (empty: the default one). Reaching another network needs a network
    /// gateway, which amesh does not have yet: such workloads are refused, not guessed at.
    pub network: String,
    /// Istio's `application_tunnel` with the PROXY protocol: inbound HBONE connections reach
    /// the app on `port` (the original port when `None`) behind a PROXY v2 header that
    /// carries the original addresses and the caller's identity.
    pub proxy_protocol: Option<ProxyProtocolTunnel>,
    /// The waypoint that pod-addressed traffic to this workload goes through.
    pub waypoint: Option<Waypoint>,
}

/// How a waypoint is reached (Istio's `GatewayAddress`): its Service's host name (the usual
/// form) or an address, and the port it terminates HBONE on.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Waypoint {
    pub destination: WaypointDestination,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum WaypointDestination {
    /// A Service by `namespace` and host name: its endpoints are the waypoint's pods.
    Hostname { namespace: String, hostname: String },
    /// A service VIP or a workload's address.
    Address(IpAddr),
}

impl std::fmt::Display for Waypoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.destination {
            WaypointDestination::Hostname {
                namespace,
                hostname,
            } => write!(f, "{namespace}/{hostname}:{}", self.port),
            WaypointDestination::Address(ip) => write!(f, "{}", SocketAddr::new(*ip, self.port)),
        }
    }
}

/// A service port's application protocol, as Istio's workload API declares it (from the
/// port's `appProtocol`, else its name prefix). The waypoint serves a declared port without
/// guessing: HTTP/1.1 or HTTP/2 (and gRPC) as declared, TCP and TLS relayed as they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum AppProtocol {
    /// Not declared: the waypoint detects HTTP from the first bytes.
    #[default]
    Unknown,
    Http11,
    Http2,
    Grpc,
    Tcp,
    Tls,
}

/// Where a workload wants its PROXY-protocol traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ProxyProtocolTunnel {
    pub port: Option<u16>,
}

/// A workload's names for metrics and baggage, as Istio's `Workload` carries them: empty when
/// the source did not say (metrics then report "unknown", as Istio's do).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Telemetry {
    /// The owning workload (a Deployment's name, not the pod's).
    pub workload_name: String,
    /// Its kind in lower case: `deployment`, `cronjob`, `job` or `pod`.
    pub workload_kind: String,
    /// `service.istio.io/canonical-name` (or what istiod derives it from).
    pub canonical_name: String,
    /// `service.istio.io/canonical-revision` (or what istiod derives it from).
    pub canonical_revision: String,
    pub cluster_id: String,
    /// The `baggage` header describing the workload ([`Workload::baggage`]), built once
    /// when the workload arrives rather than on every connection.
    #[serde(skip)]
    pub baggage_header: Option<http::HeaderValue>,
}

/// A resource that cannot be used: the field (as the local file names it, relative to the
/// resource) and why. The local file and the xDS feed go through the same checks, so they
/// accept the same things.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

fn non_empty(value: &str, field: &'static str) -> Result<(), Invalid> {
    if value.is_empty() {
        Err(Invalid::new(field, "must not be empty"))
    } else {
        Ok(())
    }
}

impl Workload {
    pub fn identity(&self) -> Identity {
        Identity::new(&self.trust_domain, &self.namespace, &self.service_account)
    }

    /// What the workload says about itself in HBONE `baggage`, as Istio's ztunnel fills it.
    pub fn baggage(&self) -> amesh_hbone::metadata::Baggage {
        let t = &self.telemetry;
        amesh_hbone::metadata::Baggage {
            cluster: t.cluster_id.clone(),
            namespace: self.namespace.clone(),
            workload_kind: t.workload_kind.clone(),
            workload_name: t.workload_name.clone(),
            service_name: t.canonical_name.clone(),
            service_version: t.canonical_revision.clone(),
            region: self.locality.region.clone(),
            zone: self.locality.zone.clone(),
        }
    }

    /// The invariants every source must meet.
    pub fn validate(&self) -> Result<(), Invalid> {
        non_empty(&self.uid, "uid")?;
        non_empty(&self.name, "name")?;
        non_empty(&self.namespace, "namespace")?;
        if let Some(svc) = self.services.keys().find(|k| !k.contains('/')) {
            return Err(Invalid::new(
                "services",
                format!("{svc:?} is not namespace/hostname"),
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<IpAddr>,
    /// Service port → target port (0 = use the workload's own mapping).
    pub ports: BTreeMap<u16, u16>,
    /// Service port → its declared protocol (ports left undeclared are absent).
    pub app_protocols: BTreeMap<u16, AppProtocol>,
    pub load_balancing: LoadBalancing,
    /// Identities an endpoint of the service may present besides its own workload's
    /// (Istio's `subject_alt_names`, e.g. a service run by several service accounts).
    #[serde(skip)]
    pub subject_alt_names: Vec<Identity>,
    /// The waypoint that traffic addressed to the service goes through.
    pub waypoint: Option<Waypoint>,
}

impl Service {
    /// `namespace/hostname`, the resource name Istio uses.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }

    /// The protocol declared for service port `port` (Unknown when it is not declared).
    pub fn app_protocol(&self, port: u16) -> AppProtocol {
        self.app_protocols.get(&port).copied().unwrap_or_default()
    }

    /// The invariants every source must meet.
    pub fn validate(&self) -> Result<(), Invalid> {
        non_empty(&self.name, "name")?;
        non_empty(&self.namespace, "namespace")?;
        non_empty(&self.hostname, "hostname")
    }
}

/// One consistent version of the mesh, indexed for lookups.
#[derive(Debug, Default)]
pub struct State {
    workloads: BTreeMap<String, Arc<Workload>>,
    by_ip: HashMap<IpAddr, Arc<Workload>>,
    /// Namespace → name → workload (the first by uid when names repeat), for the data path's
    /// per-connection lookup of its own pod.
    by_name: HashMap<String, HashMap<String, Arc<Workload>>>,
    services: BTreeMap<String, Arc<Service>>,
    by_vip: HashMap<IpAddr, Arc<Service>>,
    /// Service key → the workloads backing it.
    endpoints: HashMap<String, Vec<Arc<Workload>>>,
    /// Authorization policies by `namespace/name` (PeerAuthentication arrives converted into
    /// DENY policies, as istiod sends it).
    policies: BTreeMap<String, Arc<Authorization>>,
}

impl State {
    /// Builds the indexes. Inputs are already validated.
    pub fn new(workloads: Vec<Workload>, services: Vec<Service>) -> Self {
        let mut s = State::default();
        for w in workloads {
            let w = Arc::new(w);
            for ip in &w.addresses {
                s.by_ip.insert(*ip, w.clone());
            }
            for svc in w.services.keys() {
                s.endpoints.entry(svc.clone()).or_default().push(w.clone());
            }
            s.workloads.insert(w.uid.clone(), w);
        }
        for w in s.workloads.values() {
            s.by_name
                .entry(w.namespace.clone())
                .or_default()
                .entry(w.name.clone())
                .or_insert_with(|| w.clone());
        }
        for svc in services {
            let svc = Arc::new(svc);
            for vip in &svc.vips {
                s.by_vip.insert(*vip, svc.clone());
            }
            s.services.insert(svc.key(), svc);
        }
        s
    }

    /// Adds the security policies.
    pub fn with_policies(mut self, policies: Vec<Authorization>) -> Self {
        self.policies = policies
            .into_iter()
            .map(|p| (p.key(), Arc::new(p)))
            .collect();
        self
    }

    /// The authorization policies that apply to a workload in `namespace` (the workload, if
    /// ztunnel knows it, names its selector-scoped ones). A referenced policy that is not
    /// known is an error: the caller must refuse rather than open a hole.
    pub fn policies_for(
        &self,
        namespace: &str,
        workload: Option<&Workload>,
    ) -> Result<Vec<Arc<Authorization>>, String> {
        let mut out: Vec<Arc<Authorization>> = self
            .policies
            .values()
            .filter(|p| {
                p.scope == Scope::Global
                    || (p.scope == Scope::Namespace && p.namespace == namespace)
            })
            .cloned()
            .collect();
        for key in workload
            .map(|w| w.authorization_policies.as_slice())
            .unwrap_or_default()
        {
            match self.policies.get(key) {
                Some(p) => out.push(p.clone()),
                None => return Err(key.clone()),
            }
        }
        Ok(out)
    }

    pub fn policies(&self) -> impl Iterator<Item = &Arc<Authorization>> {
        self.policies.values()
    }

    pub fn workload(&self, uid: &str) -> Option<&Arc<Workload>> {
        self.workloads.get(uid)
    }

    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.by_ip.get(&ip)
    }

    /// The workload a pod sent by ZDS is, by namespace and name.
    pub fn workload_by_name(&self, namespace: &str, name: &str) -> Option<&Arc<Workload>> {
        self.by_name.get(namespace)?.get(name)
    }

    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads.values()
    }

    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    /// A service by `namespace/hostname`.
    pub fn service(&self, key: &str) -> Option<&Arc<Service>> {
        self.services.get(key)
    }

    pub fn service_by_vip(&self, ip: IpAddr) -> Option<&Arc<Service>> {
        self.by_vip.get(&ip)
    }

    /// The workloads backing a service (`namespace/hostname`), healthy or not.
    pub fn endpoints(&self, key: &str) -> &[Arc<Workload>] {
        self.endpoints.get(key).map_or(&[], Vec::as_slice)
    }
}

/// Publishes the current [`State`]: there is one, made with its readers by [`store`], and it
/// cannot be cloned, so one writer is enforced by the compiler (the file watch or the xDS
/// client, whichever `run` started).
#[derive(Debug)]
pub struct StateWriter {
    tx: Arc<watch::Sender<Arc<State>>>,
    loaded: Arc<watch::Sender<bool>>,
}

/// Reads the current [`State`]: a snapshot is one consistent version.
#[derive(Debug, Clone)]
pub struct StateReader {
    tx: Arc<watch::Sender<Arc<State>>>,
    loaded: Arc<watch::Sender<bool>>,
}

/// A new store: its writer and a reader (clone it for more).
pub fn store() -> (StateWriter, StateReader) {
    let tx = Arc::new(watch::channel(Arc::new(State::default())).0);
    let loaded = Arc::new(watch::channel(false).0);
    (
        StateWriter {
            tx: tx.clone(),
            loaded: loaded.clone(),
        },
        StateReader { tx, loaded },
    )
}

impl StateWriter {
    /// Replaces the state whole; it counts as loaded from now on.
    pub fn replace(&self, state: State) {
        self.tx.send_replace(Arc::new(state));
        self.loaded.send_replace(true);
    }
}

impl StateReader {
    pub fn snapshot(&self) -> Arc<State> {
        self.tx.borrow().clone()
    }

    /// True once a first valid configuration arrived.
    pub fn is_loaded(&self) -> bool {
        *self.loaded.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<State>> {
        self.tx.subscribe()
    }
}
