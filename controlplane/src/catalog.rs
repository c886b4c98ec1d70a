//! What the control plane serves: every resource of every type, encoded once, with a version
//! derived from its bytes, so that a change anywhere pushes only the resources that changed.

use crate::translate::Resources;
use amesh_proto::{
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, HTTP_ROUTE_TYPE_URL, WAYPOINT_POLICY_TYPE_URL,
};
use prost::Message;
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

/// One encoded resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub version: String,
    pub bytes: Vec<u8>,
}

/// All resources of all served types, by type URL, then by resource name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Catalog {
    pub types: BTreeMap<&'static str, BTreeMap<String, Arc<Entry>>>,
    /// Every (namespace, service account) a workload in the mesh runs as, and the nodes
    /// those workloads run on: the identities the CA will sign for a node agent, and where.
    pub identities: BTreeMap<(String, String), BTreeSet<String>>,
    /// The node of every pod, by (namespace, name): where a node agent's own pod runs.
    pub pod_nodes: BTreeMap<(String, String), String>,
    /// Route resource → the waypoints (`namespace/hostname` of their Services) its parent
    /// Services are bound to: a waypoint is sent only the routes it applies.
    pub route_waypoints: BTreeMap<String, BTreeSet<String>>,
    /// Waypoint policy → the waypoints it concerns (`*`: every one).
    pub policy_waypoints: BTreeMap<String, BTreeSet<String>>,
    /// Waypoint → the addresses (Services and workloads) it needs: what is bound to it, the
    /// endpoints of those Services, the Services its routes and policies send to and their
    /// endpoints, and its own Service and pods.
    pub address_scopes: BTreeMap<String, BTreeSet<String>>,
}

/// The types this control plane serves (ztunnel subscribes to the first two, waypoints to
/// addresses, routes and their policies).
pub const SERVED_TYPES: [&str; 4] = [
    ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
    HTTP_ROUTE_TYPE_URL,
    WAYPOINT_POLICY_TYPE_URL,
];

/// FNV-1a, 64 bits: a content hash whose value is fixed by its definition, unlike std's
/// `DefaultHasher` (which may change between Rust releases, and then every version would
/// change with an upgrade of the control plane and every client would get everything again).
fn content_hash(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

fn entry(bytes: Vec<u8>) -> Arc<Entry> {
    // A content hash as the version: unchanged bytes keep their version across rebuilds,
    // restarts and upgrades, so a reconnecting client that reports it is not sent it again.
    Arc::new(Entry {
        version: format!("{:016x}", content_hash(&bytes)),
        bytes,
    })
}

impl Catalog {
    pub fn from_resources(r: &Resources) -> Self {
        let addresses = r
            .addresses
            .iter()
            .map(|(name, a)| (name.clone(), entry(a.encode_to_vec())))
            .collect();
        let authorizations = r
            .authorizations
            .iter()
            .map(|(name, a)| (name.clone(), entry(a.encode_to_vec())))
            .collect();
        let routes = r
            .routes
            .iter()
            .map(|(name, a)| (name.clone(), entry(a.encode_to_vec())))
            .collect();
        let route_waypoints = r
            .routes
            .iter()
            .map(|(name, rule)| {
                let waypoints = rule
                    .parents
                    .iter()
                    .filter_map(|p| service_waypoint(r, &p.service))
                    .collect();
                (name.clone(), waypoints)
            })
            .collect();
        let policies = r
            .waypoint_policies
            .iter()
            .map(|(name, a)| (name.clone(), entry(a.encode_to_vec())))
            .collect();
        let policy_waypoints = r
            .waypoint_policies
            .iter()
            .map(|(name, p)| {
                let direct = p.waypoints.iter().cloned();
                let through = p.services.iter().filter_map(|s| service_waypoint(r, s));
                (name.clone(), direct.chain(through).collect())
            })
            .collect();
        let address_scopes = address_scopes(r, &route_waypoints, &policy_waypoints);
        let mut identities: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        let mut pod_nodes = BTreeMap::new();
        for a in r.addresses.values() {
            if let Some(amesh_proto::workload::address::Type::Workload(w)) = &a.r#type {
                identities
                    .entry((w.namespace.clone(), w.service_account.clone()))
                    .or_default()
                    .insert(w.node.clone());
                pod_nodes.insert((w.namespace.clone(), w.name.clone()), w.node.clone());
            }
        }
        for p in &r.placements {
            identities
                .entry((p.namespace.clone(), p.service_account.clone()))
                .or_default()
                .insert(p.node.clone());
            pod_nodes.insert((p.namespace.clone(), p.name.clone()), p.node.clone());
        }
        Self {
            identities,
            pod_nodes,
            route_waypoints,
            policy_waypoints,
            address_scopes,
            types: BTreeMap::from([
                (ADDRESS_TYPE_URL, addresses),
                (AUTHORIZATION_TYPE_URL, authorizations),
                (HTTP_ROUTE_TYPE_URL, routes),
                (WAYPOINT_POLICY_TYPE_URL, policies),
            ]),
        }
    }

    /// What a client holding `held` (name → version) lacks for `type_url`: the resources to
    /// send (new or changed) and the names to remove.
    pub fn diff(&self, type_url: &str, held: &HashMap<String, String>) -> Delta {
        self.diff_where(type_url, held, |_| true)
    }

    /// [`Self::diff`] over the resources `wanted` names only (a client's named subscription).
    pub fn diff_where(
        &self,
        type_url: &str,
        held: &HashMap<String, String>,
        wanted: impl Fn(&str) -> bool,
    ) -> Delta {
        let empty = BTreeMap::new();
        let current = self.types.get(type_url).unwrap_or(&empty);
        let updated = current
            .iter()
            .filter(|(name, e)| wanted(name) && held.get(*name) != Some(&e.version))
            .map(|(name, e)| (name.clone(), e.clone()))
            .collect();
        let mut removed: Vec<String> = held
            .keys()
            .filter(|name| !current.contains_key(*name))
            .cloned()
            .collect();
        removed.sort();
        Delta { updated, removed }
    }
}

/// What each waypoint needs of the workload API (see [`Catalog::address_scopes`]).
fn address_scopes(
    r: &Resources,
    route_waypoints: &BTreeMap<String, BTreeSet<String>>,
    policy_waypoints: &BTreeMap<String, BTreeSet<String>>,
) -> BTreeMap<String, BTreeSet<String>> {
    use amesh_proto::workload::{GatewayAddress, address::Type, gateway_address::Destination};
    let by_host = |g: &Option<GatewayAddress>| match g.as_ref()?.destination.as_ref()? {
        Destination::Hostname(h) => Some(format!("{}/{}", h.namespace, h.hostname)),
        Destination::Address(_) => None,
    };
    // The Services each waypoint sends to (its own first) and the workloads bound to it.
    let mut services: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, a) in &r.addresses {
        match &a.r#type {
            Some(Type::Service(s)) => {
                if let Some(w) = by_host(&s.waypoint) {
                    services.entry(w).or_default().insert(name.clone());
                }
            }
            Some(Type::Workload(wl)) => {
                if let Some(w) = by_host(&wl.waypoint) {
                    names.entry(w).or_default().insert(name.clone());
                }
            }
            None => {}
        }
    }
    let mut waypoints: BTreeSet<String> = services.keys().chain(names.keys()).cloned().collect();
    waypoints.extend(route_waypoints.values().flatten().cloned());
    waypoints.extend(
        policy_waypoints
            .values()
            .flatten()
            .filter(|w| *w != "*")
            .cloned(),
    );
    for w in &waypoints {
        let sent_to = services.entry(w.clone()).or_default();
        sent_to.insert(w.clone());
        for (route, rule) in &r.routes {
            if !route_waypoints.get(route).is_some_and(|ws| ws.contains(w)) {
                continue;
            }
            let mirrors = rule
                .filters
                .iter()
                .chain(rule.backends.iter().flat_map(|b| &b.filters))
                .filter_map(|f| match &f.kind {
                    Some(amesh_proto::route::filter::Kind::Mirror(m)) => m.backend.as_ref(),
                    _ => None,
                });
            for b in rule.backends.iter().chain(mirrors) {
                if !b.service.is_empty() {
                    sent_to.insert(b.service.clone());
                }
            }
        }
        for (policy, p) in &r.waypoint_policies {
            let concerns = policy_waypoints
                .get(policy)
                .is_some_and(|ws| ws.contains(w) || ws.contains("*"));
            if concerns
                && let Ok(a) =
                    serde_json::from_str::<amesh_policy::ext_authz::Authorizer>(&p.authorizer_json)
            {
                sent_to.insert(a.service);
            }
        }
    }
    // Every endpoint of those Services.
    for (w, sent_to) in &services {
        let scope = names.entry(w.clone()).or_default();
        scope.extend(sent_to.iter().cloned());
        for (name, a) in &r.addresses {
            if let Some(Type::Workload(wl)) = &a.r#type
                && wl.services.keys().any(|s| sent_to.contains(s))
            {
                scope.insert(name.clone());
            }
        }
    }
    names
}

/// The waypoint (`namespace/hostname`) the Service `key` is bound to, by host name.
fn service_waypoint(r: &Resources, key: &str) -> Option<String> {
    use amesh_proto::workload::{address::Type, gateway_address::Destination};
    let Some(Type::Service(s)) = r.addresses.get(key)?.r#type.as_ref() else {
        return None;
    };
    match s.waypoint.as_ref()?.destination.as_ref()? {
        Destination::Hostname(h) => Some(format!("{}/{}", h.namespace, h.hostname)),
        Destination::Address(_) => None,
    }
}

impl Catalog {
    /// Whether resource `name` of `type_url` concerns a client scoped to `waypoint`
    /// (`namespace/hostname`; none: every resource does): routes, waypoint policies and
    /// addresses are.
    pub fn in_scope(&self, type_url: &str, name: &str, waypoint: Option<&str>) -> bool {
        match waypoint {
            Some(w) if type_url == ADDRESS_TYPE_URL => match self.address_scopes.get(w) {
                Some(names) => names.contains(name),
                // A waypoint nothing is bound to yet needs its own Service only.
                None => name == w,
            },
            Some(w) if type_url == HTTP_ROUTE_TYPE_URL => self
                .route_waypoints
                .get(name)
                .is_some_and(|ws| ws.contains(w)),
            Some(w) if type_url == WAYPOINT_POLICY_TYPE_URL => self
                .policy_waypoints
                .get(name)
                .is_some_and(|ws| ws.contains(w) || ws.contains("*")),
            _ => true,
        }
    }

    /// The resource of `type_url` called `name`.
    pub fn get(&self, type_url: &str, name: &str) -> Option<Arc<Entry>> {
        self.types.get(type_url)?.get(name).cloned()
    }
}

/// Publishes `catalog` to the subscribers unless it equals the current one (a source event
/// that changes nothing the ztunnels see pushes nothing). Returns whether it was published.
pub fn publish(tx: &tokio::sync::watch::Sender<Arc<Catalog>>, catalog: Catalog) -> bool {
    tx.send_if_modified(|current| {
        if **current == catalog {
            return false;
        }
        *current = Arc::new(catalog);
        true
    })
}

/// One type's change for one client.
#[derive(Debug, Default)]
pub struct Delta {
    pub updated: Vec<(String, Arc<Entry>)>,
    pub removed: Vec<String>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.updated.is_empty() && self.removed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amesh_proto::security as sec;

    fn catalog(names: &[(&str, &str)]) -> Catalog {
        let mut r = Resources::default();
        for (name, ns) in names {
            r.authorizations.insert(
                name.to_string(),
                sec::Authorization {
                    name: name.to_string(),
                    namespace: ns.to_string(),
                    ..Default::default()
                },
            );
        }
        Catalog::from_resources(&r)
    }

    fn held(c: &Catalog) -> HashMap<String, String> {
        c.types[AUTHORIZATION_TYPE_URL]
            .iter()
            .map(|(n, e)| (n.clone(), e.version.clone()))
            .collect()
    }

    #[test]
    fn only_changes_are_sent() {
        let before = catalog(&[("a", "x"), ("b", "x"), ("c", "x")]);
        let after = catalog(&[("a", "x"), ("b", "y"), ("d", "x")]);
        let delta = after.diff(AUTHORIZATION_TYPE_URL, &held(&before));
        let names: Vec<_> = delta.updated.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["b", "d"]);
        assert_eq!(delta.removed, ["c"]);
        assert!(after.diff(AUTHORIZATION_TYPE_URL, &held(&after)).is_empty());
        assert_eq!(
            after
                .diff(AUTHORIZATION_TYPE_URL, &HashMap::new())
                .updated
                .len(),
            3,
            "a new client gets everything"
        );
    }

    /// The version of given bytes never changes (FNV-1a's published test values).
    #[test]
    fn versions_are_fixed_by_the_bytes_alone() {
        assert_eq!(content_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(content_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(content_hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn versions_depend_only_on_content() {
        assert_eq!(catalog(&[("a", "x")]), catalog(&[("a", "x")]));
        assert_ne!(held(&catalog(&[("a", "x")])), held(&catalog(&[("a", "y")])));
    }
}
