//! Istio's `VirtualService` (with `DestinationRule` subsets) for waypoints, translated into
//! the same route rules the Gateway API routes become (one `HttpRouteRule` per `http` route,
//! named `VirtualService/<namespace>/<name>/<index>`, kind VIRTUAL_SERVICE: matched in the
//! order written, as Envoy does). What a route asks that the waypoint does not do yet is
//! reported with its field and the route left out; the others apply.
//!
//! A Service with both HTTPRoutes and a VirtualService keeps its HTTPRoutes: the
//! VirtualService's rules for it are dropped and the conflict is reported.

use crate::translate::{Mesh, Rejected};
use amesh_kube::{networking as vs, source::Snapshot};
use amesh_proto::{route as pb, workload as wl};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug)]
struct Invalid(String, String);

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid(field.into(), reason.into())
}

/// `reviews` (in the object's namespace), `reviews.ns`, or an FQDN: the Service key.
fn service_key(host: &str, namespace: &str, mesh: &Mesh) -> String {
    let suffix = format!(".svc.{}", mesh.domain_suffix);
    let fqdn = if host.ends_with(&suffix) {
        host.to_string()
    } else if let Some((name, ns)) = host.split_once('.') {
        if ns.contains('.') {
            host.to_string()
        } else {
            format!("{name}.{ns}{suffix}")
        }
    } else {
        format!("{host}.{namespace}{suffix}")
    };
    let ns = fqdn
        .strip_suffix(&suffix)
        .and_then(|r| r.split('.').nth(1))
        .unwrap_or(namespace);
    format!("{ns}/{fqdn}")
}

fn millis(d: &str, field: &str) -> Result<u64, Invalid> {
    gateway_api::Duration::from_str(d)
        .map(|d| d.as_millis() as u64)
        .or_else(|_| {
            // Istio also writes fractional seconds (`0.5s`).
            d.strip_suffix('s')
                .and_then(|s| s.parse::<f64>().ok())
                .filter(|s| *s >= 0.0)
                .map(|s| (s * 1000.0) as u64)
                .ok_or(())
        })
        .map_err(|_| invalid(field, format!("{d:?} is not a duration")))
}

use std::str::FromStr;

fn value_match(name: String, m: &vs::StringMatch, field: &str) -> Result<pb::ValueMatch, Invalid> {
    match (&m.exact, &m.prefix, &m.regex) {
        (Some(v), None, None) => Ok(pb::ValueMatch {
            name,
            value: v.clone(),
            ..Default::default()
        }),
        (None, Some(v), None) => Ok(pb::ValueMatch {
            name,
            value: v.clone(),
            prefix: true,
            ..Default::default()
        }),
        (None, None, Some(v)) => {
            regex::Regex::new(v).map_err(|e| invalid(field, format!("not a regex: {e}")))?;
            Ok(pb::ValueMatch {
                name,
                value: v.clone(),
                regex: true,
                ..Default::default()
            })
        }
        // An empty match on a header: present with any value.
        (None, None, None) => Ok(pb::ValueMatch {
            name,
            value: ".*".into(),
            regex: true,
            ..Default::default()
        }),
        _ => Err(invalid(field, "exactly one of exact, prefix, regex")),
    }
}

/// The addresses of the pods with every one of `labels` (a match's `sourceLabels`).
fn pods_with(
    pods: &[k8s_openapi::api::core::v1::Pod],
    labels: &BTreeMap<String, String>,
) -> Vec<Vec<u8>> {
    pods.iter()
        .filter(|p| {
            let have = p.metadata.labels.as_ref();
            labels
                .iter()
                .all(|(k, v)| have.and_then(|h| h.get(k)) == Some(v))
        })
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| {
            s.pod_ips
                .iter()
                .flatten()
                .map(|i| i.ip.clone())
                .chain(s.pod_ip.clone())
        })
        .filter_map(|ip| ip.parse::<std::net::IpAddr>().ok())
        .map(|ip| match ip {
            std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
            std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn match_of(
    m: &vs::HttpMatch,
    at: &str,
    pods: &[k8s_openapi::api::core::v1::Pod],
) -> Result<pb::Match, Invalid> {
    if !m.gateways.is_empty() && !m.gateways.iter().any(|g| g == "mesh") {
        return Err(invalid(
            format!("{at}.gateways"),
            "not supported at the waypoint (ingress gateways only)",
        ));
    }
    let path = match &m.uri {
        None => None,
        Some(u) => {
            let (kind, value) = match (&u.exact, &u.prefix, &u.regex) {
                (Some(v), None, None) => (pb::path_match::Kind::Exact, v.clone()),
                (None, Some(v), None) => (pb::path_match::Kind::StringPrefix, v.clone()),
                (None, None, Some(v)) => {
                    regex::Regex::new(v).map_err(|e| {
                        invalid(format!("{at}.uri.regex"), format!("not a regex: {e}"))
                    })?;
                    (pb::path_match::Kind::Regex, v.clone())
                }
                _ => {
                    return Err(invalid(
                        format!("{at}.uri"),
                        "exactly one of exact, prefix, regex",
                    ));
                }
            };
            Some(pb::PathMatch {
                kind: kind as i32,
                value,
            })
        }
    };
    let method = match &m.method {
        None => String::new(),
        Some(vs::StringMatch {
            exact: Some(v),
            prefix: None,
            regex: None,
        }) => v.clone(),
        Some(_) => return Err(invalid(format!("{at}.method"), "only exact is supported")),
    };
    let headers = m
        .headers
        .iter()
        .map(|(k, v)| value_match(k.to_ascii_lowercase(), v, &format!("{at}.headers.{k}")))
        .collect::<Result<_, _>>()?;
    let not_headers = m
        .without_headers
        .iter()
        .map(|(k, v)| {
            value_match(
                k.to_ascii_lowercase(),
                v,
                &format!("{at}.withoutHeaders.{k}"),
            )
        })
        .collect::<Result<_, _>>()?;
    let query_params = m
        .query_params
        .iter()
        .map(|(k, v)| value_match(k.clone(), v, &format!("{at}.queryParams.{k}")))
        .collect::<Result<_, _>>()?;
    let authority = m
        .authority
        .as_ref()
        .map(|a| value_match(String::new(), a, &format!("{at}.authority")))
        .transpose()?;
    Ok(pb::Match {
        path,
        headers,
        query_params,
        method,
        not_headers,
        authority,
        ignore_case: m.ignore_uri_case,
        source_namespaces: m.source_namespace.iter().cloned().collect(),
        // Istio applies `sourceLabels` to the client workloads with those labels: their
        // addresses, which the control plane follows as pods come and go.
        source_labels: !m.source_labels.is_empty(),
        source_ips: if m.source_labels.is_empty() {
            vec![]
        } else {
            pods_with(pods, &m.source_labels)
        },
        port: m.port.unwrap_or(0),
    })
}

fn modifier(h: &vs::HeaderOperations) -> pb::HeaderModifier {
    let header = |(name, value): (&String, &String)| pb::Header {
        name: name.clone(),
        value: value.clone(),
    };
    pb::HeaderModifier {
        set: h.set.iter().map(header).collect(),
        add: h.add.iter().map(header).collect(),
        remove: h.remove.clone(),
    }
}

fn header_filters(h: &Option<vs::Headers>) -> Vec<pb::Filter> {
    use pb::filter::Kind;
    let mut out = Vec::new();
    if let Some(h) = h {
        if let Some(r) = &h.request {
            out.push(pb::Filter {
                kind: Some(Kind::RequestHeaders(modifier(r))),
            });
        }
        if let Some(r) = &h.response {
            out.push(pb::Filter {
                kind: Some(Kind::ResponseHeaders(modifier(r))),
            });
        }
    }
    out
}

/// Everything needed to resolve destinations.
struct Ctx<'a> {
    namespace: &'a str,
    mesh: &'a Mesh,
    services: &'a BTreeMap<&'a str, &'a wl::Service>,
    /// (service key, subset) → workload uids.
    subsets: &'a BTreeMap<(String, String), Vec<String>>,
    /// Every pod, for matches on the client's labels.
    pods: &'a [k8s_openapi::api::core::v1::Pod],
}

fn destination(ctx: &Ctx<'_>, d: &vs::Destination, weight: u32, field: &str) -> pb::Backend {
    let key = service_key(&d.host, ctx.namespace, ctx.mesh);
    let unresolved = |why: String| pb::Backend {
        weight,
        unresolved: why,
        ..Default::default()
    };
    let Some(s) = ctx.services.get(key.as_str()) else {
        return unresolved(format!(
            "{field}: host {} is not a Service in the mesh",
            d.host
        ));
    };
    let port = match d.port.as_ref().map(|p| p.number) {
        Some(p) if p > 0 => p,
        // Istio: the port may be left out when the Service has one.
        _ if s.ports.len() == 1 => s.ports[0].service_port,
        // Several ports: the one the request came in on (0 tells the waypoint so).
        _ => 0,
    };
    if port != 0 && !s.ports.iter().any(|p| p.service_port == port) {
        return unresolved(format!("{field}: Service {} has no port {port}", d.host));
    }
    let (endpoints, subset) = match &d.subset {
        None => (Vec::new(), String::new()),
        Some(name) => match ctx.subsets.get(&(key.clone(), name.clone())) {
            Some(uids) if !uids.is_empty() => (uids.clone(), name.clone()),
            Some(_) => {
                return unresolved(format!(
                    "{field}: subset {name} of {} has no endpoint",
                    d.host
                ));
            }
            None => {
                return unresolved(format!(
                    "{field}: no DestinationRule defines subset {name} of {}",
                    d.host
                ));
            }
        },
    };
    pb::Backend {
        service: key,
        port,
        weight,
        endpoints,
        subset,
        ..Default::default()
    }
}

fn percent(p: &Option<vs::Percent>) -> f64 {
    p.as_ref().map_or(100.0, |p| p.value.clamp(0.0, 100.0))
}

/// gRPC's status names, as VirtualService `grpcStatus` and `retryOn` write them.
fn grpc_code(name: &str) -> Option<u32> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(name))
        .map(|i| i as u32)
}

fn http_route(ctx: &Ctx<'_>, r: &vs::HttpRoute, at: &str) -> Result<pb::HttpRouteRule, Invalid> {
    use pb::filter::Kind;
    for (set, field) in [
        (r.delegate.is_some(), "delegate"),
        (r.mirrors.is_some(), "mirrors"),
    ] {
        if set {
            return Err(invalid(
                format!("{at}.{field}"),
                "not supported yet at the waypoint",
            ));
        }
    }
    let matches = r
        .matches
        .iter()
        .enumerate()
        .map(|(j, m)| match_of(m, &format!("{at}.match[{j}]"), ctx.pods))
        .collect::<Result<Vec<_>, _>>()?;
    let mut filters = header_filters(&r.headers);
    if let Some(red) = &r.redirect {
        let status = red.redirect_code.unwrap_or(301);
        if !matches!(status, 301 | 302 | 303 | 307 | 308) {
            return Err(invalid(
                format!("{at}.redirect.redirectCode"),
                format!("{status} is not a redirect"),
            ));
        }
        filters.push(pb::Filter {
            kind: Some(Kind::Redirect(pb::Redirect {
                scheme: red.scheme.clone().unwrap_or_default(),
                hostname: red.authority.clone().unwrap_or_default(),
                port: red.port.unwrap_or(0),
                path: red.uri.as_ref().map(|u| pb::PathModifier {
                    kind: pb::path_modifier::Kind::Full as i32,
                    value: u.clone(),
                    pattern: String::new(),
                }),
                status,
            })),
        });
    }
    if let Some(w) = &r.rewrite {
        // Istio: a uri rewrite replaces what the match matched when it was a prefix, else
        // the whole path.
        let prefix_matched = matches.iter().any(|m| {
            m.path
                .as_ref()
                .is_some_and(|p| p.kind == pb::path_match::Kind::StringPrefix as i32)
        });
        let regex = match &w.uri_regex_rewrite {
            None => None,
            Some(_) if w.uri.is_some() => {
                return Err(invalid(
                    format!("{at}.rewrite"),
                    "uri and uriRegexRewrite cannot both be set",
                ));
            }
            Some(v) => Some(regex_rewrite(v, &format!("{at}.rewrite.uriRegexRewrite"))?),
        };
        filters.push(pb::Filter {
            kind: Some(Kind::Rewrite(pb::Rewrite {
                hostname: w.authority.clone().unwrap_or_default(),
                path: regex.or_else(|| {
                    w.uri.as_ref().map(|u| pb::PathModifier {
                        kind: if prefix_matched {
                            pb::path_modifier::Kind::Prefix
                        } else {
                            pb::path_modifier::Kind::Full
                        } as i32,
                        value: u.clone(),
                        pattern: String::new(),
                    })
                }),
            })),
        });
    }
    if let Some(d) = &r.direct_response {
        if r.redirect.is_some() || !r.route.is_empty() {
            return Err(invalid(
                format!("{at}.directResponse"),
                "cannot be set with route or redirect",
            ));
        }
        filters.push(pb::Filter {
            kind: Some(Kind::DirectResponse(direct_response(
                d,
                &format!("{at}.directResponse"),
            )?)),
        });
    }
    if let Some(m) = &r.mirror {
        filters.push(pb::Filter {
            kind: Some(Kind::Mirror(pb::Mirror {
                backend: Some(destination(ctx, m, 1, &format!("{at}.mirror"))),
                percent: percent(&r.mirror_percentage).round() as u32,
            })),
        });
    }
    let single = r.route.len() == 1;
    let backends = r
        .route
        .iter()
        .enumerate()
        .map(|(j, d)| {
            let weight = match d.weight {
                None if single => 100,
                None => 0,
                Some(w) => u32::try_from(w).map_err(|_| {
                    invalid(format!("{at}.route[{j}].weight"), "must not be negative")
                })?,
            };
            let mut b = destination(ctx, &d.destination, weight, &format!("{at}.route[{j}]"));
            b.filters = header_filters(&d.headers);
            Ok(b)
        })
        .collect::<Result<Vec<_>, Invalid>>()?;
    if backends.is_empty() && r.redirect.is_none() && r.direct_response.is_none() {
        return Err(invalid(
            format!("{at}.route"),
            "a route needs a destination or a redirect",
        ));
    }
    let timeout = r
        .timeout
        .as_deref()
        .map(|t| millis(t, &format!("{at}.timeout")))
        .transpose()?;
    // Istio's default policy, also for routes without `retries`: 2 attempts on connection
    // failures, refused streams and 503.
    const DEFAULT_RETRY_ON: &str =
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes,503";
    let default_retries = vs::Retries {
        attempts: Some(2),
        per_try_timeout: None,
        retry_on: None,
    };
    let retry = match Some(r.retries.as_ref().unwrap_or(&default_retries)) {
        None => None,
        Some(rt) => {
            let mut codes = BTreeSet::new();
            for cond in rt
                .retry_on
                .as_deref()
                .unwrap_or(DEFAULT_RETRY_ON)
                .split(',')
            {
                match cond.trim() {
                    "5xx" => codes.extend(500..600),
                    "gateway-error" => codes.extend([502, 503, 504]),
                    "retriable-4xx" => {
                        codes.insert(409);
                    }
                    // Connection failures are always retried.
                    "connect-failure"
                    | "reset"
                    | "refused-stream"
                    | "retriable-status-codes"
                    | "" => {}
                    c if c.parse::<u32>().is_ok() => {
                        codes.extend(c.parse::<u32>().ok());
                    }
                    c if grpc_code(c).is_some() => {}
                    c => {
                        return Err(invalid(
                            format!("{at}.retries.retryOn"),
                            format!("{c:?} is not a retry condition"),
                        ));
                    }
                }
            }
            Some(pb::Retry {
                codes: codes.into_iter().collect(),
                attempts: u32::try_from(rt.attempts.unwrap_or(2)).unwrap_or(0),
                backoff_ms: 25,
            })
        }
    };
    let backend_timeout = r
        .retries
        .as_ref()
        .and_then(|rt| rt.per_try_timeout.as_deref())
        .map(|t| millis(t, &format!("{at}.retries.perTryTimeout")))
        .transpose()?;
    let fault = match &r.fault {
        None => None,
        Some(f) => {
            let delay = f.delay.as_ref();
            let abort = f.abort.as_ref();
            let delay_ms = delay
                .and_then(|d| d.fixed_delay.as_deref())
                .map(|d| millis(d, &format!("{at}.fault.delay.fixedDelay")))
                .transpose()?
                .unwrap_or(0);
            let (abort_status, abort_grpc_status) = match abort {
                None => (0, 0),
                Some(a) => match (&a.http_status, &a.grpc_status) {
                    (Some(s), None) if (200..600).contains(s) => (*s, 0),
                    (None, Some(g)) => (
                        200,
                        grpc_code(g).ok_or_else(|| {
                            invalid(
                                format!("{at}.fault.abort.grpcStatus"),
                                format!("{g:?} is not a gRPC status"),
                            )
                        })? + 1,
                    ),
                    _ => {
                        return Err(invalid(
                            format!("{at}.fault.abort"),
                            "one of httpStatus (200-599) or grpcStatus",
                        ));
                    }
                },
            };
            Some(pb::Fault {
                delay_ms,
                // Istio: without a percentage, no request gets the fault.
                delay_percent: delay.map_or(0.0, |d| {
                    d.percentage.as_ref().map_or_else(
                        || d.percent.map_or(0.0, |p| f64::from(p).clamp(0.0, 100.0)),
                        |p| p.value.clamp(0.0, 100.0),
                    )
                }),
                abort_status,
                abort_percent: abort.map_or(0.0, |a| {
                    a.percentage
                        .as_ref()
                        .map_or(0.0, |p| p.value.clamp(0.0, 100.0))
                }),
                abort_grpc_status,
            })
        }
    };
    Ok(pb::HttpRouteRule {
        matches,
        filters,
        backends,
        request_timeout_ms: timeout.unwrap_or(0),
        backend_timeout_ms: backend_timeout.unwrap_or(0),
        retry,
        fault,
        cors: r
            .cors_policy
            .as_ref()
            .map(|c| cors(c, &format!("{at}.corsPolicy")))
            .transpose()?,
        kind: pb::RouteKind::VirtualService as i32,
        ..Default::default()
    })
}

/// Istio's `corsPolicy`: `allowOrigins` (StringMatch; the deprecated `allowOrigin` list as
/// exact matches), `allowMethods`, `allowHeaders`, `exposeHeaders`, `maxAge`,
/// `allowCredentials`, `unmatchedPreflights`.
fn cors(v: &serde_json::Value, at: &str) -> Result<pb::Cors, Invalid> {
    let strings = |key: &str| -> Result<Vec<String>, Invalid> {
        match v.get(key) {
            None => Ok(vec![]),
            Some(list) => list
                .as_array()
                .ok_or_else(|| invalid(format!("{at}.{key}"), "a list of strings is required"))?
                .iter()
                .map(|s| {
                    s.as_str().map(str::to_string).ok_or_else(|| {
                        invalid(format!("{at}.{key}"), "a list of strings is required")
                    })
                })
                .collect(),
        }
    };
    let mut allow_origins = Vec::new();
    for (i, m) in v
        .get("allowOrigins")
        .and_then(|o| o.as_array())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let field = format!("{at}.allowOrigins[{i}]");
        let m: vs::StringMatch =
            serde_json::from_value(m.clone()).map_err(|e| invalid(&field, e.to_string()))?;
        if m.exact.is_none() && m.prefix.is_none() && m.regex.is_none() {
            return Err(invalid(field, "exactly one of exact, prefix, regex"));
        }
        allow_origins.push(value_match(String::new(), &m, &field)?);
    }
    for o in strings("allowOrigin")? {
        allow_origins.push(pb::ValueMatch {
            value: o,
            ..Default::default()
        });
    }
    let max_age_seconds = match v.get("maxAge").map(|m| m.as_str()) {
        None => None,
        Some(Some(d)) => Some(millis(d, &format!("{at}.maxAge"))? / 1000),
        Some(None) => return Err(invalid(format!("{at}.maxAge"), "not a duration")),
    };
    let ignore_unmatched_preflights = match v.get("unmatchedPreflights").and_then(|u| u.as_str()) {
        None | Some("FORWARD" | "UNSPECIFIED") => false,
        Some("IGNORE") => true,
        Some(other) => {
            return Err(invalid(
                format!("{at}.unmatchedPreflights"),
                format!("{other:?} is not FORWARD or IGNORE"),
            ));
        }
    };
    Ok(pb::Cors {
        allow_origins,
        allow_methods: strings("allowMethods")?,
        allow_headers: strings("allowHeaders")?,
        expose_headers: strings("exposeHeaders")?,
        max_age_seconds,
        allow_credentials: v
            .get("allowCredentials")
            .and_then(|c| c.as_bool())
            .unwrap_or(false),
        ignore_unmatched_preflights,
    })
}

/// Whether a DestinationRule in `dr_ns` may speak for the Service `key`: from the Service's
/// own namespace or the root namespace (Istio also allows the client's; a waypoint serves
/// many clients, so that one does not apply). Anyone else's would let one namespace redefine
/// another's subsets and limits.
fn dr_applies(dr_ns: &str, key: &str, mesh: &Mesh) -> bool {
    let svc_ns = key.split('/').next().unwrap_or_default();
    dr_ns == svc_ns || dr_ns == mesh.root_namespace
}

/// Subset → workload uids: the Service's endpoint pods with the subset's labels too.
fn subsets(snap: &Snapshot, mesh: &Mesh) -> BTreeMap<(String, String), Vec<String>> {
    let mut out = BTreeMap::new();
    for dr in snap.destination_rules.iter().filter(|dr| {
        let ns = if dr.metadata.namespace.is_empty() {
            "default"
        } else {
            &dr.metadata.namespace
        };
        dr_applies(ns, &service_key(&dr.spec.host, ns, mesh), mesh)
    }) {
        let ns = if dr.metadata.namespace.is_empty() {
            "default"
        } else {
            &dr.metadata.namespace
        };
        let key = service_key(&dr.spec.host, ns, mesh);
        let Some((svc_ns, fqdn)) = key.split_once('/') else {
            continue;
        };
        let name = fqdn.split('.').next().unwrap_or_default();
        let selector = snap
            .services
            .iter()
            .find(|s| {
                s.metadata.name.as_deref() == Some(name)
                    && s.metadata.namespace.as_deref() == Some(svc_ns)
            })
            .and_then(|s| s.spec.as_ref()?.selector.clone())
            .unwrap_or_default();
        for subset in &dr.spec.subsets {
            let uids = snap
                .pods
                .iter()
                .filter(|p| p.metadata.namespace.as_deref().unwrap_or("default") == svc_ns)
                .filter(|p| {
                    let labels = p.metadata.labels.clone().unwrap_or_default();
                    !selector.is_empty()
                        && selector
                            .iter()
                            .chain(&subset.labels)
                            .all(|(k, v)| labels.get(k) == Some(v))
                })
                .filter_map(|p| {
                    Some(format!(
                        "{}//v1/Pod/{svc_ns}/{}",
                        mesh.cluster_id,
                        p.metadata.name.as_deref()?
                    ))
                })
                .collect();
            out.insert((key.clone(), subset.name.clone()), uids);
        }
    }
    out
}

/// Translates every VirtualService for the mesh into `out_routes` (after the Gateway API
/// routes, whose Services it leaves alone).
pub fn translate(
    snap: &Snapshot,
    mesh: &Mesh,
    addresses: &BTreeMap<String, wl::Address>,
    out_routes: &mut BTreeMap<String, pb::HttpRouteRule>,
    errors: &mut Vec<Rejected>,
) {
    let services: BTreeMap<&str, &wl::Service> = addresses
        .iter()
        .filter_map(|(k, a)| match &a.r#type {
            Some(wl::address::Type::Service(s)) => Some((k.as_str(), s)),
            _ => None,
        })
        .collect();
    let gateway_routed: BTreeSet<String> = out_routes
        .values()
        .flat_map(|r| r.parents.iter().map(|p| p.service.clone()))
        .collect();
    let subsets = subsets(snap, mesh);
    for v in &snap.virtual_services {
        let namespace = if v.metadata.namespace.is_empty() {
            "default"
        } else {
            v.metadata.namespace.as_str()
        };
        let name = v.metadata.name.as_str();
        let reject = |reason: String, partial: bool| Rejected {
            kind: "VirtualService",
            namespace: namespace.to_string(),
            name: name.to_string(),
            reason,
            partial,
        };
        // Bound to ingress gateways only: not the mesh's.
        if !v.spec.gateways.is_empty() && !v.spec.gateways.iter().any(|g| g == "mesh") {
            continue;
        }
        let ctx = Ctx {
            namespace,
            mesh,
            services: &services,
            subsets: &subsets,
            pods: &snap.pods,
        };
        let mut parents = Vec::new();
        for (i, host) in v.spec.hosts.iter().enumerate() {
            let key = service_key(host, namespace, mesh);
            if !services.contains_key(key.as_str()) {
                errors.push(reject(format!("spec.hosts[{i}]: {host} is not a Service in the mesh (ServiceEntry hosts are not supported yet)"), true));
                continue;
            }
            if gateway_routed.contains(&key) {
                errors.push(reject(format!("spec.hosts[{i}]: {host} also has HTTPRoutes, which take precedence; this VirtualService does not apply to it"), true));
                continue;
            }
            parents.push(pb::Parent {
                service: key,
                port: 0,
            });
        }
        if parents.is_empty() {
            continue;
        }
        if !v.spec.tls.is_empty() {
            errors.push(reject(
                "spec.tls: TLS routes are not supported yet at the waypoint".into(),
                true,
            ));
        }
        let created = v
            .metadata
            .creation_timestamp
            .as_deref()
            .and_then(|t| k8s_openapi::jiff::Timestamp::from_str(t).ok())
            .map_or(0, |t| t.as_second());
        for (i, r) in v.spec.http.iter().enumerate() {
            match http_route(&ctx, r, &format!("spec.http[{i}]")) {
                Ok(mut rule) => {
                    rule.route = format!("{namespace}/{name}");
                    rule.index = i as u32;
                    rule.created = created;
                    rule.parents = parents.clone();
                    out_routes.insert(format!("VirtualService/{namespace}/{name}/{i}"), rule);
                }
                Err(Invalid(field, reason)) => {
                    errors.push(reject(
                        format!("{field}: {reason}; the route answers 500 until it is fixed"),
                        true,
                    ));
                    // Fail closed, in place: the requests this route would take must not
                    // fall through to a later one. Its matches if they can be read, else
                    // every request that reaches it.
                    let matches = r
                        .matches
                        .iter()
                        .enumerate()
                        .map(|(j, m)| {
                            match_of(m, &format!("spec.http[{i}].match[{j}]"), &snap.pods)
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .unwrap_or_default();
                    out_routes.insert(
                        format!("VirtualService/{namespace}/{name}/{i}"),
                        pb::HttpRouteRule {
                            route: format!("{namespace}/{name}"),
                            index: i as u32,
                            created,
                            parents: parents.clone(),
                            matches,
                            backends: vec![pb::Backend {
                                weight: 1,
                                unresolved: format!("{field}: {reason}"),
                                ..Default::default()
                            }],
                            kind: pb::RouteKind::VirtualService as i32,
                            ..Default::default()
                        },
                    );
                }
            }
        }
        for (i, t) in v.spec.tcp.iter().enumerate() {
            if !t.matches.is_empty() {
                errors.push(reject(format!("spec.tcp[{i}].match: not supported yet; the route applies to every connection"), true));
            }
            let backends = t
                .route
                .iter()
                .enumerate()
                .map(|(j, d)| {
                    let weight = d
                        .weight
                        .map_or(if t.route.len() == 1 { 100 } else { 0 }, |w| {
                            w.max(0) as u32
                        });
                    destination(
                        &ctx,
                        &d.destination,
                        weight,
                        &format!("spec.tcp[{i}].route[{j}]"),
                    )
                })
                .collect();
            // A tcp route takes the hosts' TCP ports: those declared TCP or TLS, or every
            // port of a VirtualService without http routes. An HTTP port stays HTTP.
            let tcp_parents: Vec<pb::Parent> = parents
                .iter()
                .flat_map(|p| {
                    let declared: Vec<u32> = services
                        .get(p.service.as_str())
                        .map(|s| {
                            s.ports
                                .iter()
                                .filter(|port| {
                                    matches!(
                                        wl::AppProtocol::try_from(port.app_protocol),
                                        Ok(wl::AppProtocol::Tcp | wl::AppProtocol::Tls)
                                    )
                                })
                                .map(|port| port.service_port)
                                .collect()
                        })
                        .unwrap_or_default();
                    let ports = if declared.is_empty() && v.spec.http.is_empty() {
                        vec![0]
                    } else {
                        declared
                    };
                    ports.into_iter().map(|port| pb::Parent {
                        service: p.service.clone(),
                        port,
                    })
                })
                .collect();
            if tcp_parents.is_empty() {
                errors.push(reject(format!("spec.tcp[{i}]: no TCP port on the hosts (name it tcp-… or set appProtocol: tcp); the route is not applied"), true));
                continue;
            }
            out_routes.insert(
                format!("VirtualService/{namespace}/{name}/tcp{i}"),
                pb::HttpRouteRule {
                    route: format!("{namespace}/{name}"),
                    index: 1000 + i as u32,
                    created,
                    parents: tcp_parents,
                    backends,
                    kind: pb::RouteKind::VirtualServiceTcp as i32,
                    ..Default::default()
                },
            );
        }
    }
}

/// DestinationRules' traffic policies for waypoints: `connectionPool` limits become
/// `WaypointPolicy` resources (kind DESTINATION_RULE, `DestinationRule/<ns>/<name>`) for the
/// host's Service; every other part of a traffic policy is reported as not supported yet.
pub fn traffic_policies(
    snap: &Snapshot,
    mesh: &Mesh,
    out: &mut BTreeMap<String, pb::WaypointPolicy>,
    errors: &mut Vec<Rejected>,
) {
    for dr in &snap.destination_rules {
        let ns = if dr.metadata.namespace.is_empty() {
            "default"
        } else {
            dr.metadata.namespace.as_str()
        };
        let mut report = |reason: String| {
            errors.push(Rejected {
                kind: "DestinationRule",
                namespace: ns.to_string(),
                name: dr.metadata.name.clone(),
                reason,
                partial: true,
            })
        };
        let key = service_key(&dr.spec.host, ns, mesh);
        if !dr_applies(ns, &key, mesh) {
            report(format!(
                "spec.host: {} is in another namespace; a DestinationRule applies from its Service's namespace or {} only",
                dr.spec.host, mesh.root_namespace
            ));
            continue;
        }
        let empty = serde_json::Map::new();
        let tp = dr
            .spec
            .traffic_policy
            .as_ref()
            .and_then(|t| t.as_object())
            .unwrap_or(&empty);
        let mut policy = parse_policy(tp, "spec.trafficPolicy", true, &mut report);
        for (i, s) in dr.spec.subsets.iter().enumerate() {
            let Some(stp) = s.traffic_policy.as_ref().and_then(|t| t.as_object()) else {
                continue;
            };
            let parsed = parse_policy(
                stp,
                &format!("spec.subsets[{i}].trafficPolicy"),
                true,
                &mut report,
            );
            policy.subsets.insert(
                s.name.clone(),
                amesh_policy::traffic::SubsetPolicy {
                    parts: amesh_policy::traffic::PortPolicy {
                        connection_pool: stp
                            .contains_key("connectionPool")
                            .then_some(parsed.connection_pool),
                        outlier_detection: parsed.outlier_detection,
                        load_balancer: parsed.load_balancer,
                    },
                    ports: parsed.ports,
                },
            );
        }
        if policy == amesh_policy::traffic::TrafficPolicy::default() {
            continue;
        }
        let Ok(spec_json) = serde_json::to_string(&policy) else {
            continue;
        };
        out.insert(
            format!("DestinationRule/{ns}/{}", dr.metadata.name),
            pb::WaypointPolicy {
                kind: pb::waypoint_policy::Kind::DestinationRule as i32,
                name: dr.metadata.name.clone(),
                namespace: ns.to_string(),
                waypoints: vec![],
                services: vec![key],
                spec_json,
                authorizer_json: String::new(),
            },
        );
    }
}

/// A traffic policy's parts the waypoint enforces, from its JSON at `prefix`; the rest is
/// reported. `top`: the Service-wide policy, which may have `portLevelSettings`.
fn parse_policy(
    tp: &serde_json::Map<String, serde_json::Value>,
    prefix: &str,
    top: bool,
    report: &mut dyn FnMut(String),
) -> amesh_policy::traffic::TrafficPolicy {
    let mut policy = amesh_policy::traffic::TrafficPolicy::default();
    for (key, value) in tp {
        match key.as_str() {
            "connectionPool" => {
                let pool = &mut policy.connection_pool;
                for (proto, fields) in value.as_object().into_iter().flatten() {
                    for (field, v) in fields.as_object().into_iter().flatten() {
                        let n = v.as_u64().and_then(|n| u32::try_from(n).ok());
                        match (proto.as_str(), field.as_str(), n) {
                            ("tcp", "maxConnections", Some(n)) => pool.max_connections = n,
                            ("http", "http1MaxPendingRequests", Some(n)) => {
                                pool.http1_max_pending_requests = n
                            }
                            ("http", "http2MaxRequests", Some(n)) => pool.http2_max_requests = n,
                            ("http", "maxRequestsPerConnection", Some(n)) => {
                                pool.max_requests_per_connection = n
                            }
                            ("http", "maxRetries", Some(n)) => pool.max_retries = n,
                            ("http", "idleTimeout", _) => {
                                let at = format!("{prefix}.connectionPool.http.{field}");
                                match v.as_str().map(|d| millis(d, &at)) {
                                    Some(Ok(ms)) => pool.idle_timeout_ms = ms,
                                    _ => report(format!("{at}: not a duration")),
                                }
                            }
                            ("tcp", "connectTimeout", _) => {
                                let at = format!("{prefix}.connectionPool.tcp.{field}");
                                match v.as_str().map(|d| millis(d, &at)) {
                                    Some(Ok(ms)) => pool.connect_timeout_ms = ms,
                                    _ => report(format!("{at}: not a duration")),
                                }
                            }
                            _ => report(format!(
                                "{prefix}.connectionPool.{proto}.{field}: not supported yet at the waypoint"
                            )),
                        }
                    }
                }
            }
            "outlierDetection" => {
                let mut od = amesh_policy::traffic::OutlierDetection::default();
                for (field, v) in value.as_object().into_iter().flatten() {
                    let n = v.as_u64().and_then(|n| u32::try_from(n).ok());
                    let at = format!("{prefix}.outlierDetection.{field}");
                    match (field.as_str(), n) {
                        ("consecutive5xxErrors", Some(n)) => od.consecutive_5xx = n,
                        ("consecutiveGatewayErrors", Some(n)) => od.consecutive_gateway_errors = n,
                        ("maxEjectionPercent", Some(n)) => od.max_ejection_percent = n.min(100),
                        ("minHealthPercent", Some(n)) => od.min_health_percent = n.min(100),
                        ("baseEjectionTime", _) => match v.as_str().map(|d| millis(d, &at)) {
                            Some(Ok(ms)) => od.base_ejection_ms = ms,
                            _ => report(format!("{at}: not a duration")),
                        },
                        // Ejections are decided as answers come, not on a timer.
                        ("interval", _) => {}
                        _ => report(format!("{at}: not supported yet at the waypoint")),
                    }
                }
                policy.outlier_detection = Some(od);
            }
            "loadBalancer" => {
                use amesh_policy::traffic::{HashKey, LoadBalancer};
                let at = format!("{prefix}.loadBalancer");
                let simple = value.get("simple").and_then(|v| v.as_str());
                let hash = value.get("consistentHash");
                policy.load_balancer = match (simple, hash) {
                    (Some("ROUND_ROBIN" | "UNSPECIFIED"), None) => Some(LoadBalancer::RoundRobin),
                    (Some("RANDOM"), None) => Some(LoadBalancer::Random),
                    (Some("LEAST_REQUEST" | "LEAST_CONN"), None) => {
                        report(format!(
                            "{at}.simple: {} is approximated by a random choice at the waypoint",
                            simple.unwrap_or_default()
                        ));
                        Some(LoadBalancer::Random)
                    }
                    (None, Some(h)) => {
                        let text = |k: &str| h.get(k).and_then(|v| v.as_str()).map(str::to_string);
                        let key = if let Some(name) = text("httpHeaderName") {
                            Some(HashKey::Header(name.to_ascii_lowercase()))
                        } else if let Some(name) =
                            h.pointer("/httpCookie/name").and_then(|v| v.as_str())
                        {
                            Some(HashKey::Cookie(name.to_string()))
                        } else if h.get("useSourceIp").and_then(|v| v.as_bool()) == Some(true) {
                            Some(HashKey::SourceIp)
                        } else {
                            text("httpQueryParameterName").map(HashKey::QueryParameter)
                        };
                        match key {
                            Some(k) => Some(LoadBalancer::ConsistentHash(k)),
                            None => {
                                report(format!(
                                    "{at}.consistentHash: no hash key amesh reads (httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName)"
                                ));
                                None
                            }
                        }
                    }
                    _ => {
                        report(format!("{at}: not supported yet at the waypoint"));
                        None
                    }
                };
                if value.get("localityLbSetting").is_some() || value.get("warmup").is_some() {
                    report(format!(
                        "{at}: localityLbSetting and warmup are not supported yet at the waypoint"
                    ));
                }
            }
            "portLevelSettings" if top => {
                for (i, setting) in value.as_array().into_iter().flatten().enumerate() {
                    let at = format!("{prefix}.portLevelSettings[{i}]");
                    let port = setting
                        .pointer("/port/number")
                        .and_then(|n| n.as_u64())
                        .and_then(|n| u16::try_from(n).ok())
                        .filter(|n| *n > 0);
                    let (Some(port), Some(fields)) = (port, setting.as_object()) else {
                        report(format!("{at}.port.number: a port is required"));
                        continue;
                    };
                    let mut parts = fields.clone();
                    parts.remove("port");
                    let parsed = parse_policy(&parts, &at, false, report);
                    policy.ports.insert(
                        port,
                        amesh_policy::traffic::PortPolicy {
                            connection_pool: parts
                                .contains_key("connectionPool")
                                .then_some(parsed.connection_pool),
                            outlier_detection: parsed.outlier_detection,
                            load_balancer: parsed.load_balancer,
                        },
                    );
                }
            }
            _ => report(format!("{prefix}.{key}: not supported yet at the waypoint")),
        }
    }
    policy
}

/// Istio's `uriRegexRewrite` (`match`, an RE2 expression; `rewrite`, with `\1` for a group)
/// as the waypoint's regex path modifier (Rust's `regex`, whose syntax is RE2's; `\N`
/// becomes `${N}`).
fn regex_rewrite(v: &serde_json::Value, at: &str) -> Result<pb::PathModifier, Invalid> {
    let pattern = v
        .get("match")
        .and_then(|m| m.as_str())
        .filter(|m| !m.is_empty())
        .ok_or_else(|| invalid(format!("{at}.match"), "a regular expression is required"))?;
    regex::Regex::new(pattern).map_err(|e| invalid(format!("{at}.match"), e.to_string()))?;
    let rewrite = v
        .get("rewrite")
        .and_then(|r| r.as_str())
        .ok_or_else(|| invalid(format!("{at}.rewrite"), "a substitution is required"))?;
    let mut value = String::with_capacity(rewrite.len());
    let mut chars = rewrite.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(d)) if d.is_ascii_digit() => {
                let d = *d;
                chars.next();
                value.push_str(&format!("${{{d}}}"));
            }
            ('$', _) => value.push_str("$$"),
            (c, _) => value.push(c),
        }
    }
    Ok(pb::PathModifier {
        kind: pb::path_modifier::Kind::Regex as i32,
        value,
        pattern: pattern.to_string(),
    })
}

/// Istio's `directResponse`: a status (200 to 599) and a body (`string` or base64 `bytes`).
fn direct_response(v: &serde_json::Value, at: &str) -> Result<pb::DirectResponse, Invalid> {
    let status = v
        .get("status")
        .and_then(|s| s.as_u64())
        .and_then(|s| u32::try_from(s).ok())
        .filter(|s| (200..600).contains(s))
        .ok_or_else(|| {
            invalid(
                format!("{at}.status"),
                "a status from 200 to 599 is required",
            )
        })?;
    let body = match v.get("body") {
        None => Vec::new(),
        Some(b) => match (b.get("string"), b.get("bytes")) {
            (Some(s), None) => s
                .as_str()
                .ok_or_else(|| invalid(format!("{at}.body.string"), "not a string"))?
                .as_bytes()
                .to_vec(),
            (None, Some(bytes)) => {
                use base64::Engine as _;
                bytes
                    .as_str()
                    .and_then(|t| base64::engine::general_purpose::STANDARD.decode(t).ok())
                    .ok_or_else(|| invalid(format!("{at}.body.bytes"), "not base64"))?
            }
            _ => {
                return Err(invalid(
                    format!("{at}.body"),
                    "exactly one of string and bytes is required",
                ));
            }
        },
    };
    Ok(pb::DirectResponse { status, body })
}
