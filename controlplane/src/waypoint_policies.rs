//! Policies for waypoints: AuthorizationPolicies and RequestAuthentications with
//! `targetRef(s)` (to a waypoint Gateway, to the waypoint GatewayClass from the root
//! namespace, or to a Service), translated by `amesh-policy` (authorization with its HTTP
//! attributes; JWT rules with their keys inline, `jwksUri` fetched here) and sent to waypoints
//! as `amesh.route.WaypointPolicy` resources named `<Kind>/<namespace>/<name>`. A policy that
//! cannot be enforced at a waypoint is reported and sent nowhere; the others apply.

use crate::translate::{Mesh, Rejected};
use amesh_kube::source::Snapshot;
use amesh_policy::crd::{self, TargetRef};
use amesh_proto::route as pb;
use std::collections::BTreeMap;

/// What a target reference reaches: waypoints as a whole, or a Service's requests.
fn resolve(
    t: &TargetRef,
    mesh: &Mesh,
    waypoints: &mut Vec<String>,
    services: &mut Vec<String>,
) -> Result<(), String> {
    let host = |name: &str| {
        format!(
            "{}/{name}.{}.svc.{}",
            t.namespace, t.namespace, mesh.domain_suffix
        )
    };
    match t.kind.as_str() {
        "Gateway" => waypoints.push(host(&t.name)),
        "GatewayClass" => {
            if !crate::waypoints::WAYPOINT_CLASSES.contains(&t.name.as_str()) {
                return Err(format!(
                    "GatewayClass {} is not a waypoint class ({})",
                    t.name,
                    crate::waypoints::WAYPOINT_CLASSES.join(", ")
                ));
            }
            if t.namespace != mesh.root_namespace {
                return Err(format!(
                    "a policy for every waypoint (GatewayClass {}) belongs in the root namespace {}",
                    t.name, mesh.root_namespace
                ));
            }
            waypoints.push("*".into());
        }
        _ => services.push(host(&t.name)),
    }
    Ok(())
}

/// Translates every AuthorizationPolicy and RequestAuthentication that targets waypoints
/// into `out`.
pub fn translate(
    snap: &Snapshot,
    mesh: &Mesh,
    out: &mut BTreeMap<String, pb::WaypointPolicy>,
    errors: &mut Vec<Rejected>,
) {
    request_authentications(snap, mesh, out, errors);
    for p in &snap.authorization_policies {
        let mut p = p.clone();
        if p.metadata.namespace.is_empty() {
            p.metadata.namespace = "default".into();
        }
        let (namespace, name) = (p.metadata.namespace.clone(), p.metadata.name.clone());
        let reject = |reason: String| Rejected {
            kind: "AuthorizationPolicy",
            namespace: namespace.clone(),
            name: name.clone(),
            reason,
            partial: false,
        };
        let t = match crd::waypoint_policy(&p) {
            Ok(Some(t)) => t,
            Ok(None) => continue,
            Err(e) => {
                errors.push(reject(e.to_string()));
                continue;
            }
        };
        let (mut waypoints, mut services) = (Vec::new(), Vec::new());
        if let Err(reason) = t
            .targets
            .iter()
            .try_for_each(|target| resolve(target, mesh, &mut waypoints, &mut services))
        {
            errors.push(reject(reason));
            continue;
        }
        let authorizer = match &t.provider {
            None => None,
            Some(provider) => match amesh_policy::ext_authz::resolve(
                &mesh.mesh_config,
                provider,
                &mesh.domain_suffix,
            ) {
                Ok(a) => Some(a),
                Err(reason) => {
                    errors.push(reject(reason));
                    continue;
                }
            },
        };
        let encoded = serde_json::to_string(&t.policy).and_then(|spec| {
            let authorizer = match &authorizer {
                Some(a) => serde_json::to_string(a)?,
                None => String::new(),
            };
            Ok((spec, authorizer))
        });
        let (spec_json, authorizer_json) = match encoded {
            Ok(j) => j,
            Err(e) => {
                errors.push(reject(format!("cannot be encoded: {e}")));
                continue;
            }
        };
        out.insert(
            format!("AuthorizationPolicy/{namespace}/{name}"),
            pb::WaypointPolicy {
                kind: pb::waypoint_policy::Kind::Authorization as i32,
                name,
                namespace,
                waypoints,
                services,
                spec_json,
                authorizer_json,
            },
        );
    }
}

fn request_authentications(
    snap: &Snapshot,
    mesh: &Mesh,
    out: &mut BTreeMap<String, pb::WaypointPolicy>,
    errors: &mut Vec<Rejected>,
) {
    for r in &snap.request_authentications {
        let mut r = r.clone();
        if r.metadata.namespace.is_empty() {
            r.metadata.namespace = "default".into();
        }
        let (namespace, name) = (r.metadata.namespace.clone(), r.metadata.name.clone());
        let reject = |reason: String| Rejected {
            kind: "RequestAuthentication",
            namespace: namespace.clone(),
            name: name.clone(),
            reason,
            partial: false,
        };
        let t = match amesh_policy::jwt::request_authentication(&r) {
            Ok(Some(t)) => t,
            Ok(None) => {
                errors.push(reject(
                    "a selector RequestAuthentication is not enforced by amesh (no sidecars); \
                     attach it to a waypoint with targetRefs"
                        .into(),
                ));
                continue;
            }
            Err(e) => {
                errors.push(reject(e.to_string()));
                continue;
            }
        };
        let (mut waypoints, mut services) = (Vec::new(), Vec::new());
        if let Err(reason) = t
            .targets
            .iter()
            .try_for_each(|target| resolve(target, mesh, &mut waypoints, &mut services))
        {
            errors.push(reject(reason));
            continue;
        }
        let rules: Vec<amesh_policy::jwt::JwtRule> = t
            .rules
            .into_iter()
            .map(|(mut rule, uri)| {
                if let Some(uri) = uri {
                    match mesh.jwks.resolve(&uri) {
                        Ok(keys) => rule.jwks = keys,
                        Err(e) => rule.jwks_error = format!("{uri}: {e}"),
                    }
                }
                rule
            })
            .collect();
        let spec_json = match serde_json::to_string(&rules) {
            Ok(j) => j,
            Err(e) => {
                errors.push(reject(format!("cannot be encoded: {e}")));
                continue;
            }
        };
        out.insert(
            format!("RequestAuthentication/{namespace}/{name}"),
            pb::WaypointPolicy {
                kind: pb::waypoint_policy::Kind::RequestAuthentication as i32,
                name,
                namespace,
                waypoints,
                services,
                spec_json,
                authorizer_json: String::new(),
            },
        );
    }
}
