//! `amesh.io/require-waypoint: "true"` on a Service (or its namespace) closes the bypass Istio
//! documents for L7 policy: a client that addresses a pod directly, or anything else that
//! skips the waypoint, reaches the workload without the waypoint's policy. With it, the
//! Service's endpoints get an L4 DENY policy for mesh connections to the Service's target
//! ports from any identity but its waypoint's (and for plaintext ones, which have none):
//! their ztunnel refuses them, an Istio ztunnel as well (it is an ordinary policy). Off by
//! default, so that pod-addressed traffic such as metrics scraping keeps working.

use crate::translate::Rejected;
use amesh_policy::{Action, Authorization, Clause, Match, Rule, Scope, StringMatch};
use k8s_openapi::api::core::v1::{Namespace, Service};
use std::collections::BTreeMap;

/// The annotation (on the Service, else its namespace).
pub const REQUIRE_WAYPOINT: &str = "amesh.io/require-waypoint";

fn annotated(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<bool> {
    meta.annotations
        .as_ref()?
        .get(REQUIRE_WAYPOINT)
        .map(|v| v == "true")
}

/// The DENY policies, each with the Service's selector (the workloads it applies to).
/// `waypoint_of` gives the waypoint (namespace, name) a Service key is bound to.
pub fn policies(
    services: &[Service],
    namespaces: &[Namespace],
    trust_domain: &str,
    waypoint_of: impl Fn(&str, &str) -> Option<(String, String)>,
    errors: &mut Vec<Rejected>,
) -> Vec<(Authorization, Option<BTreeMap<String, String>>)> {
    let ns_required = |ns: &str| {
        namespaces
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(ns))
            .and_then(|n| annotated(&n.metadata))
            .unwrap_or(false)
    };
    let mut out = Vec::new();
    for svc in services {
        let (Some(name), ns) = (
            svc.metadata.name.as_deref(),
            svc.metadata.namespace.as_deref().unwrap_or("default"),
        ) else {
            continue;
        };
        // The Service's own annotation wins ("false" opts it out of its namespace's).
        if !annotated(&svc.metadata).unwrap_or_else(|| ns_required(ns)) {
            continue;
        }
        let Some(selector) = svc
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .filter(|s| !s.is_empty())
        else {
            continue;
        };
        let report = |reason: String, errors: &mut Vec<Rejected>| {
            errors.push(Rejected {
                kind: "Service",
                namespace: ns.to_string(),
                name: name.to_string(),
                reason,
                partial: true,
            })
        };
        // Who may connect: the waypoint, by the service account its controller gives it (the
        // Gateway's name), never one read from pods anyone could label as the waypoint's.
        let principals: Vec<StringMatch> = match waypoint_of(ns, name) {
            Some((wns, wname)) => vec![StringMatch::Exact(format!(
                "{trust_domain}/ns/{wns}/sa/{wname}"
            ))],
            None => {
                report(
                    format!(
                        "{REQUIRE_WAYPOINT} is set but the Service has no waypoint: every mesh connection to it is refused"
                    ),
                    errors,
                );
                Vec::new()
            }
        };
        let mut ports: Vec<u16> = Vec::new();
        let mut named = false;
        for p in svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
        {
            match &p.target_port {
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(_)) => {
                    named = true
                }
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(t)) => {
                    ports.extend(u16::try_from(*t).ok())
                }
                None => ports.extend(u16::try_from(p.port).ok()),
            }
        }
        let mut clauses = vec![Clause {
            matches: vec![Match {
                not_principals: principals,
                ..Match::default()
            }],
        }];
        if named {
            report(
                format!(
                    "{REQUIRE_WAYPOINT}: a named target port cannot be resolved for the policy; enforced on every port of the endpoints"
                ),
                errors,
            );
        } else {
            clauses.push(Clause {
                matches: vec![Match {
                    destination_ports: ports,
                    ..Match::default()
                }],
            });
        }
        out.push((
            Authorization {
                name: format!("amesh-require-waypoint-{name}"),
                namespace: ns.to_string(),
                scope: Scope::WorkloadSelector,
                action: Action::Deny,
                rules: vec![Rule { clauses }],
                dry_run: false,
            },
            Some(selector),
        ));
    }
    out
}
