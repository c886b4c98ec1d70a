//! Gateway API `HTTPRoute`s, `GRPCRoute`s and `TCPRoute`s attached to Services (GAMMA) or
//! to a waypoint Gateway, turned into amesh's route resources for waypoints: one
//! `amesh.route.HttpRouteRule` per rule, named `<namespace>/<route>/<index>` (an HTTPRoute)
//! or `<Kind>/<namespace>/<route>/<index>`. GRPCRoutes and TCPRoutes are read as the
//! HTTPRoutes they amount to, so one translation checks all three.
//!
//! - a `parentRef` to a Service (group `""`, kind `Service`) attaches the route to that
//!   Service (on `port` when given); one to a waypoint Gateway (group
//!   `gateway.networking.k8s.io`, kind `Gateway`) attaches it to every Service bound to that
//!   waypoint. A parent in another namespace than the route (GAMMA's consumer routes) is not
//!   supported yet and is reported;
//! - a `backendRef` is a Service in the route's namespace, with a port; one that cannot be
//!   resolved stays in the rule, marked, and the waypoint answers its share of requests 500
//!   as the Gateway API asks (cross-namespace references need ReferenceGrant, not read yet);
//! - a route that cannot be used (a bad regex or duration, no usable parent) is reported and
//!   left out; the others apply.

use crate::translate::{Mesh, Rejected};
use amesh_kube::source::Snapshot;
use amesh_proto::{route as pb, workload as wl};
use gateway_api::experimental::grpcroutes::{
    GrpcRoute, GrpcRouteRulesMatchesMethod, GrpcRouteRulesMatchesMethodType as GrpcMethodType,
};
use gateway_api::experimental::httproutes::{
    HttpRoute, HttpRouteRulesBackendRefs, HttpRouteRulesFilters,
    HttpRouteRulesFiltersRequestRedirectScheme as Scheme,
    HttpRouteRulesFiltersUrlRewritePathType as RewriteType, HttpRouteRulesMatches,
    HttpRouteRulesMatchesHeadersType as HeaderType, HttpRouteRulesMatchesPathType as PathType,
    HttpRouteRulesMatchesQueryParamsType as QueryType,
};
use gateway_api::experimental::tcproutes::TcpRoute;
use std::{collections::BTreeMap, str::FromStr};

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// Why a route was left out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct RouteError {
    pub field: String,
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> RouteError {
    RouteError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The controller name route status is written under: istiod's, so that tools reading
/// Istio's route status read amesh's.
pub const CONTROLLER_NAME: &str = "istio.io/gateway-controller";

/// The status a route should have (`status.parents`, one entry per parent reference, with
/// `Accepted` and `ResolvedRefs`; transition times are added when it is written), next to the
/// status it has.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteStatus {
    /// `HTTPRoute`, `GRPCRoute` or `TCPRoute`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub want: serde_json::Value,
    pub have: serde_json::Value,
}

/// A route's conditions for each of its parent references.
fn route_status(
    parent_refs: &serde_json::Value,
    generation: i64,
    outcome: Result<&[pb::HttpRouteRule], &RouteError>,
) -> serde_json::Value {
    let condition = |type_: &str, ok: bool, reason: &str, message: &str| {
        serde_json::json!({
            "type": type_,
            "status": if ok { "True" } else { "False" },
            "reason": reason,
            "message": message,
            "observedGeneration": generation,
        })
    };
    let conditions = match outcome {
        Err(e) => {
            let reason = if e.field.starts_with("spec.parentRefs") {
                "NoMatchingParent"
            } else {
                "UnsupportedValue"
            };
            vec![
                condition("Accepted", false, reason, &e.to_string()),
                condition(
                    "ResolvedRefs",
                    true,
                    "ResolvedRefs",
                    "Resolved all the Object references for the Route",
                ),
            ]
        }
        Ok(rules) => {
            let mirrors = rules
                .iter()
                .flat_map(|r| &r.filters)
                .filter_map(|f| match &f.kind {
                    Some(pb::filter::Kind::Mirror(m)) => m.backend.as_ref(),
                    _ => None,
                });
            let unresolved: Vec<&str> = rules
                .iter()
                .flat_map(|r| &r.backends)
                .chain(mirrors)
                .filter(|b| !b.unresolved.is_empty())
                .map(|b| b.unresolved.as_str())
                .collect();
            let resolved = match unresolved.first() {
                None => condition(
                    "ResolvedRefs",
                    true,
                    "ResolvedRefs",
                    "Resolved all the Object references for the Route",
                ),
                Some(first) => {
                    let reason = if first.contains("only Services") {
                        "InvalidKind"
                    } else if first.contains("ReferenceGrant") {
                        "RefNotPermitted"
                    } else {
                        "BackendNotFound"
                    };
                    condition("ResolvedRefs", false, reason, &unresolved.join("; "))
                }
            };
            vec![
                condition("Accepted", true, "Accepted", "Route was valid"),
                resolved,
            ]
        }
    };
    let parents: Vec<serde_json::Value> = parent_refs
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            serde_json::json!({
                "parentRef": p,
                "controllerName": CONTROLLER_NAME,
                "conditions": conditions,
            })
        })
        .collect();
    serde_json::json!({ "parents": parents })
}

/// Translates every HTTPRoute, GRPCRoute and TCPRoute; `addresses` are the translated
/// services (to resolve references and find what a waypoint serves). Returns the status
/// each route should have.
pub fn translate(
    snap: &Snapshot,
    mesh: &Mesh,
    addresses: &BTreeMap<String, wl::Address>,
    out_routes: &mut BTreeMap<String, pb::HttpRouteRule>,
    errors: &mut Vec<Rejected>,
) -> Vec<RouteStatus> {
    let mut statuses = Vec::new();
    let services: BTreeMap<&str, &wl::Service> = addresses
        .iter()
        .filter_map(|(k, a)| match &a.r#type {
            Some(wl::address::Type::Service(s)) => Some((k.as_str(), s)),
            _ => None,
        })
        .collect();
    // The mesh's parents: Services, and Gateways of a waypoint class. A route attached only
    // to other Gateways (an ingress's) is another controller's business: neither translated,
    // nor reported, nor given status here.
    let waypoint_gateways: std::collections::BTreeSet<(String, String)> = snap
        .gateways
        .iter()
        .filter(|g| {
            crate::waypoints::WAYPOINT_CLASSES.contains(&g.spec.gateway_class_name.as_str())
        })
        .filter_map(|g| {
            Some((
                g.metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                g.metadata.name.clone()?,
            ))
        })
        .collect();
    let ours = |p: &serde_json::Value, route_ns: &str| {
        let text = |k: &str| p.get(k).and_then(|v| v.as_str());
        let ns = text("namespace").unwrap_or(route_ns).to_string();
        match (
            text("group").unwrap_or(GATEWAY_GROUP),
            text("kind").unwrap_or("Gateway"),
        ) {
            ("" | "core", "Service") => true,
            (GATEWAY_GROUP, "Gateway") => {
                waypoint_gateways.contains(&(ns, text("name").unwrap_or_default().to_string()))
            }
            _ => false,
        }
    };
    let mut add =
        |kind: &'static str,
         route: Result<HttpRoute, RouteError>,
         (namespace, name): (Option<&str>, Option<&str>),
         (generation, parent_refs, have): (Option<i64>, serde_json::Value, serde_json::Value),
         route_kind: pb::RouteKind| {
            let namespace = namespace.unwrap_or("default");
            let name = name.unwrap_or_default();
            let mine: Vec<serde_json::Value> = parent_refs
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| ours(p, namespace))
                .cloned()
                .collect();
            if mine.is_empty() {
                return;
            }
            let rules = route.and_then(|r| rules_of(&r, namespace, mesh, &services));
            statuses.push(RouteStatus {
                kind,
                namespace: namespace.to_string(),
                name: name.to_string(),
                want: route_status(
                    &serde_json::Value::Array(mine),
                    generation.unwrap_or(0),
                    rules.as_deref(),
                ),
                have,
            });
            match rules {
                Ok(rules) => {
                    for mut r in rules {
                        r.kind = route_kind as i32;
                        let key = match route_kind {
                            pb::RouteKind::HttpRoute => format!("{}/{}", r.route, r.index),
                            _ => format!("{kind}/{}/{}", r.route, r.index),
                        };
                        out_routes.insert(key, r);
                    }
                }
                Err(e) => errors.push(Rejected {
                    kind,
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    reason: e.to_string(),
                    partial: false,
                }),
            }
        };
    for route in &snap.http_routes {
        add(
            "HTTPRoute",
            Ok(route.clone()),
            (
                route.metadata.namespace.as_deref(),
                route.metadata.name.as_deref(),
            ),
            (
                route.metadata.generation,
                serde_json::to_value(&route.spec.parent_refs).unwrap_or_default(),
                serde_json::to_value(&route.status).unwrap_or_default(),
            ),
            pb::RouteKind::HttpRoute,
        );
    }
    for route in &snap.grpc_routes {
        add(
            "GRPCRoute",
            grpc_as_http(route),
            (
                route.metadata.namespace.as_deref(),
                route.metadata.name.as_deref(),
            ),
            (
                route.metadata.generation,
                serde_json::to_value(&route.spec.parent_refs).unwrap_or_default(),
                serde_json::to_value(&route.status).unwrap_or_default(),
            ),
            pb::RouteKind::GrpcRoute,
        );
    }
    for route in &snap.tcp_routes {
        add(
            "TCPRoute",
            tcp_as_http(route),
            (
                route.metadata.namespace.as_deref(),
                route.metadata.name.as_deref(),
            ),
            (
                route.metadata.generation,
                serde_json::to_value(&route.spec.parent_refs).unwrap_or_default(),
                serde_json::to_value(&route.status).unwrap_or_default(),
            ),
            pb::RouteKind::TcpRoute,
        );
    }
    statuses
}

/// A GRPCRoute as the HTTPRoute it amounts to: each method match becomes the path match
/// gRPC's `/<service>/<method>` paths make of it (as Istio translates them); headers,
/// filters (header modifiers and mirrors, the ones GRPCRoute has) and backends keep their
/// shape.
fn grpc_as_http(route: &GrpcRoute) -> Result<HttpRoute, RouteError> {
    let mut v = serde_json::to_value(route).map_err(|e| err("(object)", e.to_string()))?;
    if let Some(rules) = v
        .pointer_mut("/spec/rules")
        .and_then(serde_json::Value::as_array_mut)
    {
        for (i, rule) in rules.iter_mut().enumerate() {
            let Some(rule) = rule.as_object_mut() else {
                continue;
            };
            rule.remove("sessionPersistence");
            let matches = rule
                .get_mut("matches")
                .and_then(serde_json::Value::as_array_mut);
            for (j, m) in matches.into_iter().flatten().enumerate() {
                let Some(m) = m.as_object_mut() else {
                    continue;
                };
                if let Some(method) = m.remove("method") {
                    let field = format!("spec.rules[{i}].matches[{j}].method");
                    let method: GrpcRouteRulesMatchesMethod =
                        serde_json::from_value(method).map_err(|e| err(&field, e.to_string()))?;
                    m.insert("path".into(), grpc_path(&method, &field)?);
                }
            }
        }
    }
    serde_json::from_value(v).map_err(|e| err("(object)", e.to_string()))
}

/// The path match for a gRPC method match.
fn grpc_path(
    m: &GrpcRouteRulesMatchesMethod,
    field: &str,
) -> Result<serde_json::Value, RouteError> {
    let (service, method) = (
        m.service.as_deref().filter(|s| !s.is_empty()),
        m.method.as_deref().filter(|s| !s.is_empty()),
    );
    let regex = matches!(m.r#type, Some(GrpcMethodType::RegularExpression));
    let (kind, value) = match (regex, service, method) {
        (_, None, None) => return Err(err(field, "needs a service or a method")),
        (false, Some(s), Some(me)) => ("Exact", format!("/{s}/{me}")),
        (false, Some(s), None) => ("PathPrefix", format!("/{s}")),
        (false, None, Some(me)) => ("RegularExpression", format!("/[^/]+/{}", regex::escape(me))),
        (true, s, me) => {
            let part = |p: Option<&str>, f: &str| -> Result<String, RouteError> {
                match p {
                    None => Ok("[^/]+".into()),
                    Some(p) => {
                        regex_ok(p, &format!("{field}.{f}"))?;
                        Ok(format!("(?:{p})"))
                    }
                }
            };
            (
                "RegularExpression",
                format!("/{}/{}", part(s, "service")?, part(me, "method")?),
            )
        }
    };
    if !regex
        && (service.is_some_and(|s| s.contains('/')) || method.is_some_and(|m| m.contains('/')))
    {
        return Err(err(field, "a service or method name cannot contain /"));
    }
    Ok(serde_json::json!({ "type": kind, "value": value }))
}

/// A TCPRoute as an HTTPRoute with its parents and weighted backends only (it has nothing
/// else); the waypoint relays its port as TCP.
fn tcp_as_http(route: &TcpRoute) -> Result<HttpRoute, RouteError> {
    let rules: Vec<serde_json::Value> = route
        .spec
        .rules
        .iter()
        .map(|r| serde_json::json!({ "backendRefs": r.backend_refs }))
        .collect();
    let v = serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": route.metadata,
        "spec": {
            "parentRefs": route.spec.parent_refs,
            "rules": rules,
        },
    });
    serde_json::from_value(v).map_err(|e| err("(object)", e.to_string()))
}

fn service_key(name: &str, namespace: &str, mesh: &Mesh) -> String {
    format!("{namespace}/{name}.{namespace}.svc.{}", mesh.domain_suffix)
}

fn rules_of(
    route: &HttpRoute,
    namespace: &str,
    mesh: &Mesh,
    services: &BTreeMap<&str, &wl::Service>,
) -> Result<Vec<pb::HttpRouteRule>, RouteError> {
    let name = route.metadata.name.clone().unwrap_or_default();
    let mut parents = Vec::new();
    for (i, p) in route.spec.parent_refs.iter().flatten().enumerate() {
        let field = format!("spec.parentRefs[{i}]");
        let ns = p.namespace.as_deref().unwrap_or(namespace);
        if ns != namespace {
            return Err(err(
                field,
                "a parent in another namespace (a GAMMA consumer route) is not supported yet",
            ));
        }
        let port = u32::try_from(p.port.unwrap_or(0)).map_err(|_| err(&field, "bad port"))?;
        match (
            p.group.as_deref().unwrap_or(GATEWAY_GROUP),
            p.kind.as_deref(),
        ) {
            ("" | "core", Some("Service")) => {
                let key = service_key(&p.name, ns, mesh);
                if !services.contains_key(key.as_str()) {
                    return Err(err(
                        field,
                        format!("Service {ns}/{} does not exist", p.name),
                    ));
                }
                parents.push(pb::Parent { service: key, port });
            }
            (GATEWAY_GROUP, None | Some("Gateway")) => {
                let hostname = format!("{}.{ns}.svc.{}", p.name, mesh.domain_suffix);
                let bound = services.iter().filter(|(_, s)| {
                    matches!(
                        s.waypoint.as_ref().and_then(|w| w.destination.as_ref()),
                        Some(wl::gateway_address::Destination::Hostname(h)) if h.hostname == hostname
                    )
                });
                parents.extend(bound.map(|(k, _)| pb::Parent {
                    service: k.to_string(),
                    port,
                }));
            }
            (group, kind) => {
                return Err(err(
                    field,
                    format!(
                        "parent {group}/{} is not a Service or a Gateway",
                        kind.unwrap_or("?")
                    ),
                ));
            }
        }
    }
    if parents.is_empty() {
        return Err(err(
            "spec.parentRefs",
            "no Service or waypoint to attach to",
        ));
    }
    let created = route
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(0, |t| t.0.as_second());
    let mut out = Vec::new();
    for (i, rule) in route.spec.rules.iter().flatten().enumerate() {
        let at = |f: &str| format!("spec.rules[{i}].{f}");
        let matches = rule
            .matches
            .iter()
            .flatten()
            .enumerate()
            .map(|(j, m)| match_of(m, &at(&format!("matches[{j}]"))))
            .collect::<Result<_, _>>()?;
        let filters = rule
            .filters
            .iter()
            .flatten()
            .enumerate()
            .map(|(j, f)| filter_of(f, namespace, mesh, services, &at(&format!("filters[{j}]"))))
            .collect::<Result<_, _>>()?;
        let backends = rule
            .backend_refs
            .iter()
            .flatten()
            .enumerate()
            .map(|(j, b)| {
                backend_of(
                    b,
                    namespace,
                    mesh,
                    services,
                    &at(&format!("backendRefs[{j}]")),
                )
            })
            .collect::<Result<_, _>>()?;
        let duration = |v: Option<&String>, f: &str| -> Result<u64, RouteError> {
            match v {
                None => Ok(0),
                Some(d) => gateway_api::Duration::from_str(d)
                    .map(|d| d.as_millis() as u64)
                    .map_err(|e| err(at(f), format!("{d:?}: {e}"))),
            }
        };
        let t = rule.timeouts.as_ref();
        let retry = match &rule.retry {
            None => None,
            Some(r) => Some(pb::Retry {
                codes: r
                    .codes
                    .iter()
                    .flatten()
                    .map(|c| u32::try_from(*c).map_err(|_| err(at("retry.codes"), "bad code")))
                    .collect::<Result<_, _>>()?,
                attempts: u32::try_from(r.attempts.unwrap_or(0))
                    .map_err(|_| err(at("retry.attempts"), "must not be negative"))?,
                backoff_ms: duration(r.backoff.as_ref(), "retry.backoff")?,
            }),
        };
        out.push(pb::HttpRouteRule {
            route: format!("{namespace}/{name}"),
            index: i as u32,
            created,
            parents: parents.clone(),
            hostnames: route.spec.hostnames.clone().unwrap_or_default(),
            matches,
            filters,
            backends,
            request_timeout_ms: duration(t.and_then(|t| t.request.as_ref()), "timeouts.request")?,
            backend_timeout_ms: duration(
                t.and_then(|t| t.backend_request.as_ref()),
                "timeouts.backendRequest",
            )?,
            retry,
            // Set by the caller, which knows the kind it read.
            kind: 0,
            fault: None,
            cors: None,
        });
    }
    Ok(out)
}

fn regex_ok(value: &str, field: &str) -> Result<(), RouteError> {
    regex::Regex::new(value)
        .map(|_| ())
        .map_err(|e| err(field, format!("not a regular expression: {e}")))
}

fn match_of(m: &HttpRouteRulesMatches, field: &str) -> Result<pb::Match, RouteError> {
    let path = match &m.path {
        None => None,
        Some(p) => {
            let value = p.value.clone().unwrap_or_else(|| "/".into());
            let kind = match p.r#type.as_ref().unwrap_or(&PathType::PathPrefix) {
                PathType::Exact => pb::path_match::Kind::Exact,
                PathType::PathPrefix => pb::path_match::Kind::Prefix,
                PathType::RegularExpression => {
                    regex_ok(&value, &format!("{field}.path.value"))?;
                    pb::path_match::Kind::Regex
                }
            };
            if kind != pb::path_match::Kind::Regex && !value.starts_with('/') {
                return Err(err(format!("{field}.path.value"), "must start with /"));
            }
            Some(pb::PathMatch {
                kind: kind as i32,
                value,
            })
        }
    };
    let value_match = |name: String, value: &str, regex: bool, at: &str| {
        if regex {
            regex_ok(value, &format!("{field}.{at}"))?;
        }
        Ok(pb::ValueMatch {
            name,
            value: value.to_string(),
            regex,
            prefix: false,
        })
    };
    let headers = m
        .headers
        .iter()
        .flatten()
        .map(|h| {
            let regex = matches!(h.r#type, Some(HeaderType::RegularExpression));
            // Header names are case-insensitive; query parameter names are not.
            value_match(h.name.to_ascii_lowercase(), &h.value, regex, "headers")
        })
        .collect::<Result<_, RouteError>>()?;
    let query_params = m
        .query_params
        .iter()
        .flatten()
        .map(|q| {
            let regex = matches!(q.r#type, Some(QueryType::RegularExpression));
            value_match(q.name.clone(), &q.value, regex, "queryParams")
        })
        .collect::<Result<_, RouteError>>()?;
    let method = match &m.method {
        // The enum's serde names are the methods themselves.
        Some(method) => serde_json::to_value(method)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        None => String::new(),
    };
    Ok(pb::Match {
        path,
        headers,
        query_params,
        method,
        ..Default::default()
    })
}

fn header_modifier(
    set: Vec<(String, String)>,
    add: Vec<(String, String)>,
    remove: Vec<String>,
) -> pb::HeaderModifier {
    let header = |(name, value): (String, String)| pb::Header { name, value };
    pb::HeaderModifier {
        set: set.into_iter().map(header).collect(),
        add: add.into_iter().map(header).collect(),
        remove,
    }
}

fn filter_of(
    f: &HttpRouteRulesFilters,
    namespace: &str,
    mesh: &Mesh,
    services: &BTreeMap<&str, &wl::Service>,
    field: &str,
) -> Result<pb::Filter, RouteError> {
    use pb::filter::Kind;
    // The request and response modifiers have the same fields, in types of their own.
    macro_rules! pairs {
        ($list:expr) => {
            $list
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect()
        };
    }
    macro_rules! modifier {
        ($m:expr) => {
            header_modifier(
                pairs!($m.set),
                pairs!($m.add),
                $m.remove.clone().unwrap_or_default(),
            )
        };
    }
    let kind = if let Some(m) = &f.request_header_modifier {
        Kind::RequestHeaders(modifier!(m))
    } else if let Some(m) = &f.response_header_modifier {
        Kind::ResponseHeaders(modifier!(m))
    } else if let Some(r) = &f.request_redirect {
        let path = r.path.as_ref().map(|p| {
            path_modifier(
                p.replace_full_path.as_ref(),
                p.replace_prefix_match.as_ref(),
            )
        });
        Kind::Redirect(pb::Redirect {
            scheme: match r.scheme {
                Some(Scheme::Http) => "http".into(),
                Some(Scheme::Https) => "https".into(),
                None => String::new(),
            },
            hostname: r.hostname.clone().unwrap_or_default(),
            port: u32::try_from(r.port.unwrap_or(0)).map_err(|_| err(field, "bad port"))?,
            path,
            status: match r.status_code.unwrap_or(302) {
                c @ (301 | 302 | 303 | 307 | 308) => c as u32,
                c => {
                    return Err(err(
                        format!("{field}.statusCode"),
                        format!("{c} is not a redirect"),
                    ));
                }
            },
        })
    } else if let Some(r) = &f.url_rewrite {
        Kind::Rewrite(pb::Rewrite {
            hostname: r.hostname.clone().unwrap_or_default(),
            path: r.path.as_ref().map(|p| match p.r#type {
                RewriteType::ReplaceFullPath => path_modifier(p.replace_full_path.as_ref(), None),
                RewriteType::ReplacePrefixMatch => path_modifier(
                    None,
                    Some(p.replace_prefix_match.clone().unwrap_or_default()).as_ref(),
                ),
            }),
        })
    } else if let Some(m) = &f.request_mirror {
        let b = &m.backend_ref;
        let backend = resolve(
            b.name.as_str(),
            b.namespace.as_deref(),
            b.group.as_deref(),
            b.kind.as_deref(),
            b.port,
            1,
            namespace,
            mesh,
            services,
        );
        let percent = match (&m.fraction, m.percent) {
            (Some(fr), _) => {
                let d = fr.denominator.unwrap_or(100).max(1);
                (fr.numerator.max(0) * 100 / d).clamp(0, 100) as u32
            }
            (None, Some(p)) => p.clamp(0, 100) as u32,
            (None, None) => 100,
        };
        Kind::Mirror(pb::Mirror {
            backend: Some(backend),
            percent,
        })
    } else {
        return Err(err(
            field,
            "filter type not supported (CORS, ExtensionRef and ExternalAuth are not yet)",
        ));
    };
    Ok(pb::Filter { kind: Some(kind) })
}

fn path_modifier(full: Option<&String>, prefix: Option<&String>) -> pb::PathModifier {
    match (full, prefix) {
        (Some(f), _) => pb::PathModifier {
            kind: pb::path_modifier::Kind::Full as i32,
            value: f.clone(),
            pattern: String::new(),
        },
        (None, p) => pb::PathModifier {
            kind: pb::path_modifier::Kind::Prefix as i32,
            value: p.cloned().unwrap_or_default(),
            pattern: String::new(),
        },
    }
}

fn backend_of(
    b: &HttpRouteRulesBackendRefs,
    namespace: &str,
    mesh: &Mesh,
    services: &BTreeMap<&str, &wl::Service>,
    field: &str,
) -> Result<pb::Backend, RouteError> {
    let weight = u32::try_from(b.weight.unwrap_or(1))
        .map_err(|_| err(format!("{field}.weight"), "must not be negative"))?;
    let mut backend = resolve(
        &b.name,
        b.namespace.as_deref(),
        b.group.as_deref(),
        b.kind.as_deref(),
        b.port,
        weight,
        namespace,
        mesh,
        services,
    );
    for (j, f) in b.filters.iter().flatten().enumerate() {
        // The backend's filters have the same shape as the rule's.
        let f: HttpRouteRulesFilters = serde_json::to_value(f)
            .and_then(serde_json::from_value)
            .map_err(|e| err(format!("{field}.filters[{j}]"), e.to_string()))?;
        backend.filters.push(filter_of(
            &f,
            namespace,
            mesh,
            services,
            &format!("{field}.filters[{j}]"),
        )?);
    }
    Ok(backend)
}

/// A Service reference, resolved or marked unresolved with the reason.
#[allow(
    clippy::too_many_arguments,
    reason = "the fields of two reference types"
)]
fn resolve(
    name: &str,
    ref_namespace: Option<&str>,
    group: Option<&str>,
    kind: Option<&str>,
    port: Option<i32>,
    weight: u32,
    namespace: &str,
    mesh: &Mesh,
    services: &BTreeMap<&str, &wl::Service>,
) -> pb::Backend {
    let unresolved = |why: String| pb::Backend {
        weight,
        unresolved: why,
        ..Default::default()
    };
    if !matches!(group.unwrap_or(""), "" | "core") || kind.unwrap_or("Service") != "Service" {
        return unresolved(format!("{name}: only Services are supported as backends"));
    }
    let ns = ref_namespace.unwrap_or(namespace);
    if ns != namespace {
        return unresolved(format!(
            "{ns}/{name}: a backend in another namespace needs a ReferenceGrant, not supported yet"
        ));
    }
    let Some(port) = port.and_then(|p| u32::try_from(p).ok()).filter(|p| *p > 0) else {
        return unresolved(format!("{ns}/{name}: a Service backend needs a port"));
    };
    let key = service_key(name, ns, mesh);
    match services.get(key.as_str()) {
        None => unresolved(format!("Service {ns}/{name} does not exist")),
        Some(s) if !s.ports.iter().any(|p| p.service_port == port) => {
            unresolved(format!("Service {ns}/{name} has no port {port}"))
        }
        Some(_) => pb::Backend {
            service: key,
            port,
            weight,
            ..Default::default()
        },
    }
}
