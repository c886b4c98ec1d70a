//! The policies a waypoint enforces: amesh's `WaypointPolicy` resources (AuthorizationPolicies
//! with a targetRef, translated by the control plane with their HTTP attributes), each decoded
//! on its own (a bad one is NACKed by name, the rest apply), and the ones that apply to a
//! request: those targeting this waypoint (its Gateway, or every waypoint) and those targeting
//! the Service the request is for. The decision is `amesh-policy`'s, the evaluator ztunnel
//! uses.

use amesh_policy::Authorization;
use amesh_proto::route as pb;
use amesh_xds::{Changes, Handler};
use prost::Message;
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

/// A resource that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

/// What a policy is.
#[derive(Debug)]
pub enum Kind {
    Authorization(Authorization),
    /// A RequestAuthentication's rules.
    Jwt(Vec<crate::jwt::Provider>),
    /// A DestinationRule's traffic policy.
    Traffic(amesh_policy::traffic::TrafficPolicy),
}

/// One policy and what it targets.
#[derive(Debug)]
pub struct Policy {
    /// `<namespace>/<hostname>` of waypoints it applies to (`*`: all).
    pub waypoints: Vec<String>,
    /// `<namespace>/<hostname>` of Services whose requests it applies to.
    pub services: Vec<String>,
    pub kind: Kind,
    /// A CUSTOM policy's external authorizer.
    pub authorizer: Option<Arc<amesh_policy::ext_authz::Authorizer>>,
}

pub fn decode(bytes: &[u8]) -> Result<Policy, Invalid> {
    let invalid = |field: &str, reason: String| Invalid {
        field: field.into(),
        reason,
    };
    let p = pb::WaypointPolicy::decode(bytes)
        .map_err(|e| invalid("(resource)", format!("does not decode: {e}")))?;
    let kind = match pb::waypoint_policy::Kind::try_from(p.kind) {
        Ok(pb::waypoint_policy::Kind::Authorization) => Kind::Authorization(
            serde_json::from_str(&p.spec_json).map_err(|e| invalid("specJson", e.to_string()))?,
        ),
        Ok(pb::waypoint_policy::Kind::RequestAuthentication) => {
            let rules: Vec<amesh_policy::jwt::JwtRule> = serde_json::from_str(&p.spec_json)
                .map_err(|e| invalid("specJson", e.to_string()))?;
            Kind::Jwt(rules.into_iter().map(crate::jwt::Provider::new).collect())
        }
        Ok(pb::waypoint_policy::Kind::DestinationRule) => Kind::Traffic(
            serde_json::from_str(&p.spec_json).map_err(|e| invalid("specJson", e.to_string()))?,
        ),
        Err(_) => {
            return Err(invalid(
                "kind",
                format!("{} is not a kind this waypoint enforces", p.kind),
            ));
        }
    };
    let authorizer = match p.authorizer_json.as_str() {
        "" => None,
        json => Some(Arc::new(
            serde_json::from_str(json).map_err(|e| invalid("authorizerJson", e.to_string()))?,
        )),
    };
    if let Kind::Authorization(a) = &kind
        && (a.action == amesh_policy::Action::Custom) != authorizer.is_some()
    {
        return Err(invalid(
            "authorizerJson",
            "a CUSTOM policy needs an authorizer, and only a CUSTOM one".into(),
        ));
    }
    Ok(Policy {
        waypoints: p.waypoints,
        services: p.services,
        kind,
        authorizer,
    })
}

/// The policies in force, replaced whole on every xDS update.
#[derive(Debug, Default)]
pub struct Table {
    policies: Vec<Arc<Policy>>,
}

impl Table {
    pub fn new(policies: impl IntoIterator<Item = Arc<Policy>>) -> Self {
        Self {
            policies: policies.into_iter().collect(),
        }
    }

    fn targeting(&self, me: &str, service: Option<&str>) -> Vec<&Policy> {
        self.policies
            .iter()
            .map(|p| p.as_ref())
            .filter(|p| {
                p.waypoints.iter().any(|w| w == me || w == "*")
                    || service.is_some_and(|s| p.services.iter().any(|x| x == s))
            })
            .collect()
    }

    /// The AuthorizationPolicies for a request to `service` (none: a workload addressed
    /// directly) at the waypoint `me` (`<namespace>/<hostname>`).
    pub fn applicable(&self, me: &str, service: Option<&str>) -> Vec<&Authorization> {
        self.targeting(me, service)
            .into_iter()
            .filter_map(|p| match &p.kind {
                Kind::Authorization(a) => Some(a),
                Kind::Jwt(_) | Kind::Traffic(_) => None,
            })
            .collect()
    }

    /// The traffic policy for requests to port `port` of `service` (its
    /// `portLevelSettings` applied).
    pub fn traffic_at(
        &self,
        service: &str,
        port: u16,
    ) -> Option<amesh_policy::traffic::TrafficPolicy> {
        self.traffic_for(service, port, None)
    }

    /// [`Table::traffic_at`] for requests to subset `subset` (its own policy over it).
    pub fn traffic_for(
        &self,
        service: &str,
        port: u16,
        subset: Option<&str>,
    ) -> Option<amesh_policy::traffic::TrafficPolicy> {
        self.traffic(service).map(|t| t.at(port, subset))
    }

    /// The DestinationRule traffic policy for `service`.
    pub fn traffic(&self, service: &str) -> Option<&amesh_policy::traffic::TrafficPolicy> {
        self.policies.iter().find_map(|p| match &p.kind {
            Kind::Traffic(t) if p.services.iter().any(|s| s == service) => Some(t),
            _ => None,
        })
    }

    /// The external authorizer of CUSTOM policy `key` (`namespace/name`).
    pub fn authorizer(&self, key: &str) -> Option<Arc<amesh_policy::ext_authz::Authorizer>> {
        self.policies.iter().find_map(|p| match &p.kind {
            Kind::Authorization(a) if a.key() == key => p.authorizer.clone(),
            _ => None,
        })
    }

    /// The JWT rules of the RequestAuthentications that apply, likewise.
    pub fn jwt_providers(&self, me: &str, service: Option<&str>) -> Vec<&crate::jwt::Provider> {
        self.targeting(me, service)
            .into_iter()
            .filter_map(|p| match &p.kind {
                Kind::Jwt(providers) => Some(providers.iter()),
                Kind::Authorization(_) | Kind::Traffic(_) => None,
            })
            .flatten()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }
}

/// The resources received so far.
#[derive(Debug, Clone, Default)]
pub struct Store(pub Arc<Mutex<BTreeMap<String, Arc<Policy>>>>);

impl Store {
    pub fn table(&self) -> Table {
        let policies = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Table::new(policies.values().cloned())
    }
}

/// Handles `amesh.route.WaypointPolicy` for the xDS client.
#[derive(Debug, Clone, Default)]
pub struct PolicyHandler(pub Store);

impl Handler for PolicyHandler {
    type Resource = Policy;
    type Error = Invalid;

    fn decode(&self, _name: &str, bytes: &[u8]) -> Result<Policy, Invalid> {
        decode(bytes)
    }

    fn apply(&mut self, changes: Changes<Policy>) {
        let mut policies = self.0.0.lock().unwrap_or_else(|e| e.into_inner());
        for (name, p) in changes.updated {
            policies.insert(name, Arc::new(p));
        }
        for name in &changes.removed {
            policies.remove(name);
        }
    }
}

/// Judges a request (`None`: a connection relayed as TCP, judged on L4 rules only) to
/// `target` from `caller`, against the policies that apply; AUDIT matches are logged and
/// counted.
pub fn decide(
    inputs: &crate::proxy::Inputs,
    table: &Table,
    caller: &crate::proxy::Caller,
    destination: &crate::bound::Destination,
    target: std::net::SocketAddr,
    request: Option<&amesh_policy::Request<'_>>,
) -> amesh_policy::Outcome {
    let me = inputs.me.key();
    let service = match destination {
        crate::bound::Destination::Service(s) => Some(s.key()),
        crate::bound::Destination::Workload(_) => None,
    };
    let policies = table.applicable(&me, service.as_deref());
    let conn = amesh_policy::Connection {
        source: Some(&caller.identity),
        source_ip: caller.addr.ip(),
        destination_ip: target.ip(),
        destination_port: target.port(),
    };
    let outcome = amesh_policy::evaluate_request(&policies, &conn, request);
    for policy in &outcome.audit_hits {
        tracing::info!(policy = %policy, src.identity = %caller.identity, "AUDIT policy matched");
        inputs
            .metrics
            .audits
            .get_or_create(&crate::metrics::PolicyLabels {
                policy: policy.clone(),
            })
            .inc();
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, waypoints: &[&str], services: &[&str]) -> Arc<Policy> {
        Arc::new(Policy {
            waypoints: waypoints.iter().map(|s| s.to_string()).collect(),
            services: services.iter().map(|s| s.to_string()).collect(),
            kind: Kind::Authorization(Authorization {
                name: name.into(),
                namespace: "shop".into(),
                scope: amesh_policy::Scope::Namespace,
                action: amesh_policy::Action::Allow,
                rules: vec![],
                dry_run: false,
            }),
            authorizer: None,
        })
    }

    #[test]
    fn policies_apply_by_waypoint_or_by_service() {
        let t = Table::new([
            policy("gw", &["shop/wp.shop"], &[]),
            policy("all", &["*"], &[]),
            policy("svc", &[], &["shop/web.shop"]),
            policy("other", &["shop/wp2.shop"], &["shop/api.shop"]),
        ]);
        let names = |ps: Vec<&Authorization>| ps.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(t.applicable("shop/wp.shop", Some("shop/web.shop"))),
            ["gw", "all", "svc"]
        );
        assert_eq!(names(t.applicable("shop/wp.shop", None)), ["gw", "all"]);
        assert_eq!(
            names(t.applicable("shop/wp2.shop", Some("shop/api.shop"))),
            ["all", "other"]
        );
    }

    #[test]
    fn a_policy_that_does_not_read_is_refused_with_the_field() {
        let bad = pb::WaypointPolicy {
            spec_json: "{not json".into(),
            ..Default::default()
        };
        let e = decode(&bad.encode_to_vec()).unwrap_err();
        assert_eq!(e.field, "specJson");
        let other_kind = pb::WaypointPolicy {
            kind: 7,
            ..Default::default()
        };
        assert_eq!(
            decode(&other_kind.encode_to_vec()).unwrap_err().field,
            "kind"
        );
    }
}
