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
        match authorization(&p, mesh) {
            Ok(Some(policy)) => {
                out.insert(format!("AuthorizationPolicy/{namespace}/{name}"), policy);
            }
            Ok(None) => {}
            Err(reason) => {
                // Fail closed: what cannot be enforced as written is enforced as the
                // strictest thing it could mean for the same targets.
                let stand_in = stand_in(&p, mesh);
                let effect = match &stand_in {
                    Some((_, effect)) => format!("; meanwhile {effect}"),
                    None => String::new(),
                };
                errors.push(reject(format!("{reason}{effect}")));
                if let Some((policy, _)) = stand_in {
                    out.insert(format!("AuthorizationPolicy/{namespace}/{name}"), policy);
                }
            }
        }
    }
}

/// One policy for waypoints (`None`: it has no target, it is ztunnel's).
fn authorization(
    p: &amesh_policy::crd::AuthorizationPolicy,
    mesh: &Mesh,
) -> Result<Option<pb::WaypointPolicy>, String> {
    let Some(t) = crd::waypoint_policy(p).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let (mut waypoints, mut services) = (Vec::new(), Vec::new());
    t.targets
        .iter()
        .try_for_each(|target| resolve(target, mesh, &mut waypoints, &mut services))?;
    let authorizer = t
        .provider
        .as_ref()
        .map(|provider| {
            amesh_policy::ext_authz::resolve(&mesh.mesh_config, provider, &mesh.domain_suffix)
        })
        .transpose()?;
    let spec_json =
        serde_json::to_string(&t.policy).map_err(|e| format!("cannot be encoded: {e}"))?;
    let authorizer_json = match &authorizer {
        Some(a) => serde_json::to_string(a).map_err(|e| format!("cannot be encoded: {e}"))?,
        None => String::new(),
    };
    Ok(Some(pb::WaypointPolicy {
        kind: pb::waypoint_policy::Kind::Authorization as i32,
        name: t.policy.name.clone(),
        namespace: t.policy.namespace.clone(),
        waypoints,
        services,
        spec_json,
        authorizer_json,
    }))
}

/// For a policy that cannot be translated but whose targets can: a DENY (or CUSTOM, or an
/// unknown action) becomes a DENY of everything, an ALLOW one that allows nothing; AUDIT
/// none. With what it now does, for the report.
fn stand_in(
    p: &amesh_policy::crd::AuthorizationPolicy,
    mesh: &Mesh,
) -> Option<(pb::WaypointPolicy, &'static str)> {
    let namespace = p.metadata.namespace.as_str();
    let refs: Vec<&serde_json::Value> = p
        .spec
        .target_ref
        .iter()
        .chain(&p.spec.target_refs)
        .collect();
    // Each target on its own: one that cannot be resolved must not cost the others theirs.
    let (mut waypoints, mut services) = (Vec::new(), Vec::new());
    for r in refs {
        if let Ok(targets) = crd::target_refs(&[r], namespace) {
            for t in &targets {
                let _ = resolve(t, mesh, &mut waypoints, &mut services);
            }
        }
    }
    if waypoints.is_empty() && services.is_empty() {
        return None;
    }
    let (action, rules, effect) = match p.spec.action.as_deref().unwrap_or("ALLOW") {
        "AUDIT" => return None,
        "ALLOW" => (amesh_policy::Action::Allow, vec![], "it allows nothing"),
        _ => (
            amesh_policy::Action::Deny,
            vec![amesh_policy::Rule::default()],
            "it denies every request",
        ),
    };
    let policy = amesh_policy::Authorization {
        name: p.metadata.name.clone(),
        namespace: namespace.to_string(),
        scope: amesh_policy::Scope::Namespace,
        action,
        rules,
        dry_run: false,
    };
    Some((
        pb::WaypointPolicy {
            kind: pb::waypoint_policy::Kind::Authorization as i32,
            name: policy.name.clone(),
            namespace: policy.namespace.clone(),
            waypoints,
            services,
            spec_json: serde_json::to_string(&policy).ok()?,
            authorizer_json: String::new(),
        },
        effect,
    ))
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
