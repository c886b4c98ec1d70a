//! The HTTP routes a waypoint applies: amesh's `HttpRouteRule` resources, checked and
//! compiled one at a time (a bad one is NACKed by name, the rest apply), and indexed per
//! Service in the Gateway API's order of precedence.

use amesh_proto::route as pb;
use amesh_xds::{Changes, Handler};
use prost::Message;
use regex::Regex;
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

/// A resource that cannot be used: the field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    /// On path-segment boundaries, without its trailing slash.
    Prefix(String),
    Regex(Regex),
    /// A plain string prefix (a VirtualService's, as Envoy matches it).
    StringPrefix(String),
}

#[derive(Debug, Clone)]
pub enum ValueMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl ValueMatch {
    fn matches(&self, v: &str) -> bool {
        match self {
            Self::Exact(e) => e == v,
            Self::Prefix(p) => v.starts_with(p.as_str()),
            // Whole-value, as the Gateway API's RE2 semantics are read by Envoy.
            Self::Regex(r) => r
                .find(v)
                .is_some_and(|m| m.start() == 0 && m.end() == v.len()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Match {
    pub path: PathMatch,
    pub headers: Vec<(http::HeaderName, ValueMatch)>,
    pub query: Vec<(String, ValueMatch)>,
    pub method: Option<http::Method>,
    /// Headers that must not match (VirtualService `withoutHeaders`).
    pub not_headers: Vec<(http::HeaderName, ValueMatch)>,
    /// The Host without its port must match.
    pub authority: Option<ValueMatch>,
    /// The path is compared without regard to case.
    pub ignore_case: bool,
    /// The caller's namespace must be one of these (empty: any).
    pub source_namespaces: Vec<String>,
    /// The destination port (0: any).
    pub port: u16,
    /// The caller's address must be one of these (a match's `sourceLabels`; `None`: any).
    pub source_ips: Option<Vec<std::net::IpAddr>>,
}

/// Who sent a request, as route matches see it.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub namespace: &'a str,
    pub ip: std::net::IpAddr,
}

#[derive(Debug, Clone, Default)]
pub struct HeaderModifier {
    pub set: Vec<(http::HeaderName, http::HeaderValue)>,
    pub add: Vec<(http::HeaderName, http::HeaderValue)>,
    pub remove: Vec<http::HeaderName>,
}

impl HeaderModifier {
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for (k, v) in &self.set {
            headers.insert(k.clone(), v.clone());
        }
        for (k, v) in &self.add {
            headers.append(k.clone(), v.clone());
        }
        for k in &self.remove {
            headers.remove(k);
        }
    }
}

#[derive(Debug, Clone)]
pub enum PathModifier {
    Full(String),
    Prefix(String),
    /// Every match of the expression replaced (`${1}` for a group).
    Regex(regex::Regex, String),
}

#[derive(Debug, Clone)]
pub enum Filter {
    RequestHeaders(HeaderModifier),
    ResponseHeaders(HeaderModifier),
    Redirect {
        scheme: Option<String>,
        hostname: Option<String>,
        port: Option<u16>,
        path: Option<PathModifier>,
        status: http::StatusCode,
    },
    Rewrite {
        hostname: Option<http::HeaderValue>,
        path: Option<PathModifier>,
    },
    Mirror {
        backend: Backend,
        percent: u32,
    },
    /// The rule's own answer.
    Direct {
        status: http::StatusCode,
        body: bytes::Bytes,
    },
}

/// Where a share of a rule's requests goes: a Service's host name and port, or nowhere
/// (`unresolved`: answered 500).
#[derive(Debug, Clone)]
pub struct Backend {
    pub service: String,
    pub port: u16,
    pub weight: u32,
    pub filters: Vec<Filter>,
    pub unresolved: Option<String>,
    /// A subset: the workloads (uids) to pick among (empty: every endpoint).
    pub endpoints: Vec<String>,
    /// The subset's name (its DestinationRule traffic policy), if one.
    pub subset: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Retry {
    pub codes: Vec<u16>,
    pub attempts: u32,
    pub backoff: Duration,
}

#[derive(Debug, Clone)]
pub struct Rule {
    /// The resource name, `<namespace>/<route>/<index>`.
    pub name: String,
    pub route: String,
    pub index: u32,
    pub created: i64,
    pub parents: Vec<(String, u16)>,
    /// Empty: one match for every request (`PathPrefix /`).
    pub matches: Vec<Match>,
    pub filters: Vec<Filter>,
    pub backends: Vec<Backend>,
    pub request_timeout: Option<Duration>,
    pub backend_timeout: Option<Duration>,
    pub retry: Option<Retry>,
    /// A TCPRoute's rule: its port is relayed as TCP to the backends.
    pub tcp: bool,
    /// A VirtualService's: matched in the order written.
    pub ordered: bool,
    pub fault: Option<Fault>,
    pub cors: Option<Cors>,
}

/// A VirtualService's `corsPolicy`, as Envoy's CORS filter applies it.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    pub allow_origins: Vec<ValueMatch>,
    /// Joined, as the preflight answer's headers carry them (empty: not sent).
    pub allow_methods: String,
    pub allow_headers: String,
    pub expose_headers: String,
    pub max_age_seconds: Option<u64>,
    pub allow_credentials: bool,
    pub ignore_unmatched_preflights: bool,
}

impl Cors {
    pub fn allows(&self, origin: &str) -> bool {
        self.allow_origins.iter().any(|m| m.matches(origin))
    }
}

/// Istio's fault injection.
#[derive(Debug, Clone, Default)]
pub struct Fault {
    pub delay: Option<Duration>,
    pub delay_percent: f64,
    pub abort_status: Option<http::StatusCode>,
    /// A gRPC status code to answer gRPC requests with.
    pub abort_grpc: Option<u32>,
    pub abort_percent: f64,
}

fn regex(v: &str, field: &str) -> Result<Regex, Invalid> {
    Regex::new(v).map_err(|e| invalid(field, e.to_string()))
}

fn header_name(n: &str, field: &str) -> Result<http::HeaderName, Invalid> {
    http::HeaderName::from_bytes(n.as_bytes()).map_err(|e| invalid(field, format!("{n:?}: {e}")))
}

fn header_value(v: &str, field: &str) -> Result<http::HeaderValue, Invalid> {
    http::HeaderValue::from_str(v).map_err(|e| invalid(field, format!("{v:?}: {e}")))
}

fn port(p: u32, field: &str) -> Result<u16, Invalid> {
    u16::try_from(p).map_err(|_| invalid(field, format!("{p} is not a port")))
}

fn millis(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

fn value_match(m: &pb::ValueMatch, field: &str) -> Result<ValueMatch, Invalid> {
    Ok(if m.regex {
        ValueMatch::Regex(regex(&m.value, field)?)
    } else if m.prefix {
        ValueMatch::Prefix(m.value.clone())
    } else {
        ValueMatch::Exact(m.value.clone())
    })
}

fn modifier(m: &pb::HeaderModifier, field: &str) -> Result<HeaderModifier, Invalid> {
    let pairs = |hs: &[pb::Header]| {
        hs.iter()
            .map(|h| Ok((header_name(&h.name, field)?, header_value(&h.value, field)?)))
            .collect::<Result<Vec<_>, Invalid>>()
    };
    Ok(HeaderModifier {
        set: pairs(&m.set)?,
        add: pairs(&m.add)?,
        remove: m
            .remove
            .iter()
            .map(|n| header_name(n, field))
            .collect::<Result<_, _>>()?,
    })
}

fn path_modifier(p: &pb::PathModifier, field: &str) -> Result<PathModifier, Invalid> {
    Ok(match pb::path_modifier::Kind::try_from(p.kind) {
        Ok(pb::path_modifier::Kind::Prefix) => PathModifier::Prefix(p.value.clone()),
        Ok(pb::path_modifier::Kind::Regex) => PathModifier::Regex(
            regex::Regex::new(&p.pattern)
                .map_err(|e| invalid(format!("{field}.pattern"), e.to_string()))?,
            p.value.clone(),
        ),
        _ => PathModifier::Full(p.value.clone()),
    })
}

fn backend(b: &pb::Backend, field: &str) -> Result<Backend, Invalid> {
    Ok(Backend {
        service: b.service.clone(),
        port: port(b.port, &format!("{field}.port"))?,
        weight: b.weight,
        filters: b
            .filters
            .iter()
            .enumerate()
            .map(|(i, f)| filter(f, &format!("{field}.filters[{i}]")))
            .collect::<Result<_, _>>()?,
        unresolved: (!b.unresolved.is_empty() || b.service.is_empty()).then(|| {
            if b.unresolved.is_empty() {
                "no backend".to_string()
            } else {
                b.unresolved.clone()
            }
        }),
        endpoints: b.endpoints.clone(),
        subset: (!b.subset.is_empty()).then(|| b.subset.clone()),
    })
}

fn filter(f: &pb::Filter, field: &str) -> Result<Filter, Invalid> {
    use pb::filter::Kind;
    Ok(match &f.kind {
        Some(Kind::RequestHeaders(m)) => Filter::RequestHeaders(modifier(m, field)?),
        Some(Kind::ResponseHeaders(m)) => Filter::ResponseHeaders(modifier(m, field)?),
        Some(Kind::Redirect(r)) => Filter::Redirect {
            scheme: (!r.scheme.is_empty()).then(|| r.scheme.clone()),
            hostname: (!r.hostname.is_empty()).then(|| r.hostname.clone()),
            port: match r.port {
                0 => None,
                p => Some(port(p, &format!("{field}.port"))?),
            },
            path: r
                .path
                .as_ref()
                .map(|p| path_modifier(p, &format!("{field}.path")))
                .transpose()?,
            status: match r.status {
                0 => http::StatusCode::FOUND,
                s @ (301 | 302 | 303 | 307 | 308) => http::StatusCode::from_u16(s as u16)
                    .map_err(|e| invalid(field, e.to_string()))?,
                s => {
                    return Err(invalid(
                        format!("{field}.status"),
                        format!("{s} is not a redirect"),
                    ));
                }
            },
        },
        Some(Kind::Rewrite(r)) => Filter::Rewrite {
            hostname: match r.hostname.as_str() {
                "" => None,
                h => Some(header_value(h, &format!("{field}.hostname"))?),
            },
            path: r
                .path
                .as_ref()
                .map(|p| path_modifier(p, &format!("{field}.path")))
                .transpose()?,
        },
        Some(Kind::Mirror(m)) => Filter::Mirror {
            backend: backend(
                m.backend
                    .as_ref()
                    .ok_or_else(|| invalid(field, "mirror without a backend"))?,
                &format!("{field}.backend"),
            )?,
            percent: m.percent.min(100),
        },
        Some(Kind::DirectResponse(d)) => Filter::Direct {
            status: u16::try_from(d.status)
                .ok()
                .and_then(|s| http::StatusCode::from_u16(s).ok())
                .filter(|s| s.as_u16() >= 200)
                .ok_or_else(|| {
                    invalid(
                        format!("{field}.status"),
                        format!("{} is not a status", d.status),
                    )
                })?,
            body: bytes::Bytes::from(d.body.clone()),
        },
        None => return Err(invalid(field, "empty filter")),
    })
}

/// Checks and compiles one resource.
pub fn rule(name: &str, r: pb::HttpRouteRule) -> Result<Rule, Invalid> {
    let mut matches = Vec::new();
    for (i, m) in r.matches.iter().enumerate() {
        let field = format!("matches[{i}]");
        // Ignoring case: literal values kept lower-case (the path is lowered to compare),
        // a regex compiled case-insensitive once here.
        let lower = |v: &str| {
            if m.ignore_case {
                v.to_ascii_lowercase()
            } else {
                v.to_string()
            }
        };
        let path = match &m.path {
            None => PathMatch::Prefix(String::new()),
            Some(p) => match pb::path_match::Kind::try_from(p.kind) {
                Ok(pb::path_match::Kind::Exact) => PathMatch::Exact(lower(&p.value)),
                Ok(pb::path_match::Kind::Prefix) => {
                    PathMatch::Prefix(lower(p.value.trim_end_matches('/')))
                }
                Ok(pb::path_match::Kind::StringPrefix) => PathMatch::StringPrefix(lower(&p.value)),
                Ok(pb::path_match::Kind::Regex) => {
                    let pattern = if m.ignore_case {
                        format!("(?i){}", p.value)
                    } else {
                        p.value.clone()
                    };
                    PathMatch::Regex(regex(&pattern, &format!("{field}.path"))?)
                }
                Err(_) => return Err(invalid(format!("{field}.path.kind"), "unknown")),
            },
        };
        matches.push(Match {
            path,
            headers: m
                .headers
                .iter()
                .map(|h| Ok((header_name(&h.name, &field)?, value_match(h, &field)?)))
                .collect::<Result<_, Invalid>>()?,
            query: m
                .query_params
                .iter()
                .map(|q| Ok((q.name.clone(), value_match(q, &field)?)))
                .collect::<Result<_, Invalid>>()?,
            method: match m.method.as_str() {
                "" => None,
                v => Some(
                    http::Method::from_bytes(v.as_bytes())
                        .map_err(|e| invalid(format!("{field}.method"), e.to_string()))?,
                ),
            },
            not_headers: m
                .not_headers
                .iter()
                .map(|h| Ok((header_name(&h.name, &field)?, value_match(h, &field)?)))
                .collect::<Result<_, Invalid>>()?,
            authority: m
                .authority
                .as_ref()
                .map(|a| value_match(a, &format!("{field}.authority")))
                .transpose()?,
            ignore_case: m.ignore_case,
            source_namespaces: m.source_namespaces.clone(),
            port: port(m.port, &format!("{field}.port"))?,
            source_ips: m.source_labels.then(|| {
                m.source_ips
                    .iter()
                    .filter_map(|b| match b.len() {
                        4 => <[u8; 4]>::try_from(&b[..]).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(&b[..])
                            .ok()
                            .map(std::net::IpAddr::from),
                        _ => None,
                    })
                    .collect()
            }),
        });
    }
    if matches.is_empty() {
        matches.push(Match::everything());
    }
    Ok(Rule {
        name: name.to_string(),
        route: r.route.clone(),
        index: r.index,
        created: r.created,
        parents: r
            .parents
            .iter()
            .map(|p| Ok((p.service.clone(), port(p.port, "parents.port")?)))
            .collect::<Result<_, Invalid>>()?,
        matches,
        filters: r
            .filters
            .iter()
            .enumerate()
            .map(|(i, f)| filter(f, &format!("filters[{i}]")))
            .collect::<Result<_, _>>()?,
        backends: r
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| backend(b, &format!("backends[{i}]")))
            .collect::<Result<_, _>>()?,
        request_timeout: millis(r.request_timeout_ms),
        backend_timeout: millis(r.backend_timeout_ms),
        retry: r.retry.map(|r| Retry {
            codes: r
                .codes
                .iter()
                .filter_map(|c| u16::try_from(*c).ok())
                .collect(),
            attempts: r.attempts,
            backoff: Duration::from_millis(r.backoff_ms),
        }),
        tcp: r.kind == pb::RouteKind::TcpRoute as i32
            || r.kind == pb::RouteKind::VirtualServiceTcp as i32,
        ordered: r.kind == pb::RouteKind::VirtualService as i32,
        fault: r
            .fault
            .map(|f| {
                Ok::<_, Invalid>(Fault {
                    delay: millis(f.delay_ms),
                    delay_percent: f.delay_percent,
                    abort_status: match f.abort_status {
                        0 => None,
                        s => Some(
                            http::StatusCode::from_u16(
                                u16::try_from(s)
                                    .map_err(|_| invalid("fault.abortStatus", "bad"))?,
                            )
                            .map_err(|e| invalid("fault.abortStatus", e.to_string()))?,
                        ),
                    },
                    abort_grpc: f.abort_grpc_status.checked_sub(1),
                    abort_percent: f.abort_percent,
                })
            })
            .transpose()?,
        cors: r
            .cors
            .as_ref()
            .map(|c| {
                Ok::<_, Invalid>(Cors {
                    allow_origins: c
                        .allow_origins
                        .iter()
                        .map(|m| value_match(m, "cors.allowOrigins"))
                        .collect::<Result<_, _>>()?,
                    allow_methods: c.allow_methods.join(","),
                    allow_headers: c.allow_headers.join(","),
                    expose_headers: c.expose_headers.join(","),
                    max_age_seconds: c.max_age_seconds,
                    allow_credentials: c.allow_credentials,
                    ignore_unmatched_preflights: c.ignore_unmatched_preflights,
                })
            })
            .transpose()?,
    })
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(p) => p == path,
            Self::Prefix(p) => {
                path.starts_with(p.as_str())
                    && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/' || p.is_empty())
            }
            Self::Regex(r) => r
                .find(path)
                .is_some_and(|m| m.start() == 0 && m.end() == path.len()),
            Self::StringPrefix(p) => path.starts_with(p.as_str()),
        }
    }

    /// The Gateway API's precedence as Istio orders it: exact, then prefix, then regex, each
    /// longest first.
    fn rank(&self) -> (u8, usize) {
        match self {
            Self::Exact(p) => (3, p.len()),
            Self::Prefix(p) => (2, p.len()),
            Self::Regex(r) => (1, r.as_str().len()),
            Self::StringPrefix(p) => (2, p.len()),
        }
    }
}

impl Match {
    /// Every request (no match given).
    pub fn everything() -> Self {
        Self {
            path: PathMatch::Prefix(String::new()),
            headers: vec![],
            query: vec![],
            method: None,
            not_headers: vec![],
            authority: None,
            ignore_case: false,
            source_namespaces: vec![],
            port: 0,
            source_ips: None,
        }
    }

    /// Whether it matches a request to `port` from `source`.
    pub fn matches_from(
        &self,
        parts: &http::request::Parts,
        port: u16,
        source: Source<'_>,
    ) -> bool {
        if self.port != 0 && self.port != port {
            return false;
        }
        if !self.source_namespaces.is_empty()
            && !self.source_namespaces.iter().any(|n| n == source.namespace)
        {
            return false;
        }
        if let Some(ips) = &self.source_ips
            && !ips.contains(&source.ip.to_canonical())
        {
            return false;
        }
        if let Some(a) = &self.authority {
            let host = parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| parts.uri.authority().map(|a| a.as_str()))
                .unwrap_or_default();
            let bare = host
                .rsplit_once(':')
                .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
                .map_or(host, |(h, _)| h);
            if !a.matches(bare) {
                return false;
            }
        }
        let without = self.not_headers.iter().any(|(name, m)| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| m.matches(v))
        });
        !without && self.matches(parts)
    }

    pub fn matches(&self, parts: &http::request::Parts) -> bool {
        let path_ok = if self.ignore_case {
            match &self.path {
                // Literals were lowered when compiled; a regex is case-insensitive already.
                PathMatch::Regex(_) => self.path.matches(parts.uri.path()),
                _ => self.path.matches(&parts.uri.path().to_ascii_lowercase()),
            }
        } else {
            self.path.matches(parts.uri.path())
        };
        if !path_ok {
            return false;
        }
        if self.method.as_ref().is_some_and(|m| *m != parts.method) {
            return false;
        }
        let headers_ok = self.headers.iter().all(|(name, m)| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| m.matches(v))
        });
        if !headers_ok {
            return false;
        }
        let query: Vec<(&str, &str)> = parts
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .collect();
        self.query.iter().all(|(name, m)| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .is_some_and(|(_, v)| m.matches(v))
        })
    }
}

/// One candidate: a rule and one of its matches.
#[derive(Debug, Clone)]
pub struct Entry {
    pub rule: Arc<Rule>,
    pub matched: usize,
}

/// The rules per Service (`namespace/hostname`), in precedence order.
#[derive(Debug, Default)]
pub struct Table {
    by_service: HashMap<String, Vec<(u16, Entry)>>,
    /// TCPRoute rules per Service, oldest first.
    tcp_by_service: HashMap<String, Vec<(u16, Arc<Rule>)>>,
}

impl Table {
    pub fn new(rules: impl IntoIterator<Item = Arc<Rule>>) -> Self {
        let mut by_service: HashMap<String, Vec<(u16, Entry)>> = HashMap::new();
        let mut tcp_by_service: HashMap<String, Vec<(u16, Arc<Rule>)>> = HashMap::new();
        for rule in rules {
            if rule.tcp {
                for (service, port) in &rule.parents {
                    tcp_by_service
                        .entry(service.clone())
                        .or_default()
                        .push((*port, rule.clone()));
                }
                continue;
            }
            for (service, port) in &rule.parents {
                for matched in 0..rule.matches.len() {
                    by_service.entry(service.clone()).or_default().push((
                        *port,
                        Entry {
                            rule: rule.clone(),
                            matched,
                        },
                    ));
                }
            }
        }
        for entries in by_service.values_mut() {
            entries.sort_by(|(_, a), (_, b)| {
                let key = |e: &Entry| {
                    let m = &e.rule.matches[e.matched];
                    // A match on nothing (no match given, or `PathPrefix /` alone) comes
                    // last, as Istio puts rules without matches last.
                    let everything = matches!(&m.path, PathMatch::Prefix(p) if p.is_empty())
                        && m.method.is_none()
                        && m.headers.is_empty()
                        && m.query.is_empty();
                    // A VirtualService's routes keep their order (first match wins).
                    let (kind, len) = if everything || e.rule.ordered {
                        (0, 0)
                    } else {
                        m.path.rank()
                    };
                    let ordered = e.rule.ordered;
                    (
                        kind,
                        len,
                        m.method.is_some() && !ordered,
                        if ordered { 0 } else { m.headers.len() },
                        if ordered { 0 } else { m.query.len() },
                    )
                };
                key(b)
                    .cmp(&key(a))
                    .then(a.rule.created.cmp(&b.rule.created))
                    .then(a.rule.route.cmp(&b.rule.route))
                    .then(a.rule.index.cmp(&b.rule.index))
                    .then(a.matched.cmp(&b.matched))
            });
        }
        for rules in tcp_by_service.values_mut() {
            rules.sort_by(|(_, a), (_, b)| {
                (a.created, &a.route, a.index).cmp(&(b.created, &b.route, b.index))
            });
        }
        Self {
            by_service,
            tcp_by_service,
        }
    }

    /// The TCPRoute rule for the service on this port (the oldest, as the Gateway API
    /// breaks ties): the port is then relayed as TCP to its backends.
    pub fn tcp_route(&self, service: &str, port: u16) -> Option<&Arc<Rule>> {
        self.tcp_by_service
            .get(service)?
            .iter()
            .find(|(p, _)| *p == 0 || *p == port)
            .map(|(_, r)| r)
    }

    /// Whether any rule is attached to the service on this port.
    pub fn has_routes(&self, service: &str, port: u16) -> bool {
        self.by_service
            .get(service)
            .is_some_and(|v| v.iter().any(|(p, _)| *p == 0 || *p == port))
    }

    /// The first rule, in precedence order, that matches the request.
    pub fn find(
        &self,
        service: &str,
        port: u16,
        parts: &http::request::Parts,
        source: Source<'_>,
    ) -> Option<&Entry> {
        self.by_service
            .get(service)?
            .iter()
            .filter(|(p, _)| *p == 0 || *p == port)
            .map(|(_, e)| e)
            .find(|e| e.rule.matches[e.matched].matches_from(parts, port, source))
    }
}

/// The resources received so far, and the table published from them.
#[derive(Debug, Clone, Default)]
pub struct Store(pub Arc<Mutex<BTreeMap<String, Arc<Rule>>>>);

impl Store {
    pub fn table(&self) -> Table {
        let rules = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Table::new(rules.values().cloned())
    }
}

/// Handles `amesh.route.HttpRouteRule` for the xDS client.
#[derive(Debug, Clone, Default)]
pub struct RouteHandler(pub Store);

impl Handler for RouteHandler {
    type Resource = Rule;
    type Error = Invalid;

    fn decode(&self, name: &str, bytes: &[u8]) -> Result<Rule, Invalid> {
        let r = pb::HttpRouteRule::decode(bytes)
            .map_err(|e| invalid("(resource)", format!("does not decode: {e}")))?;
        rule(name, r)
    }

    fn apply(&mut self, changes: Changes<Rule>) {
        let mut rules = self.0.0.lock().unwrap_or_else(|e| e.into_inner());
        for (name, r) in changes.updated {
            rules.insert(name, Arc::new(r));
        }
        for name in &changes.removed {
            rules.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_narrow_a_match_to_the_labelled_clients() {
        let mut m = Match::everything();
        m.source_ips = Some(vec!["10.200.0.9".parse().unwrap()]);
        let parts = http::Request::new(()).into_parts().0;
        assert!(m.matches_from(&parts, 80, NS));
        let other = Source {
            ip: "10.200.0.8".parse().unwrap(),
            ..NS
        };
        assert!(!m.matches_from(&parts, 80, other));
        m.source_ips = Some(vec![]);
        assert!(
            !m.matches_from(&parts, 80, NS),
            "no labelled client: no match"
        );
        // An IPv4 caller seen as IPv4-mapped IPv6 is the same caller.
        m.source_ips = Some(vec!["10.200.0.9".parse().unwrap()]);
        let mapped = Source {
            ip: "::ffff:10.200.0.9".parse().unwrap(),
            ..NS
        };
        assert!(m.matches_from(&parts, 80, mapped));
    }

    /// A caller in namespace `ns`.
    const NS: Source<'static> = Source {
        namespace: "ns",
        ip: std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 200, 0, 9)),
    };

    fn path(kind: pb::path_match::Kind, value: &str) -> pb::Match {
        pb::Match {
            path: Some(pb::PathMatch {
                kind: kind as i32,
                value: value.into(),
            }),
            ..Default::default()
        }
    }

    fn rule_of(route: &str, created: i64, matches: Vec<pb::Match>) -> Arc<Rule> {
        let r = pb::HttpRouteRule {
            route: route.into(),
            created,
            parents: vec![pb::Parent {
                service: "ns/web".into(),
                port: 0,
            }],
            matches,
            backends: vec![pb::Backend {
                service: format!("ns/{route}"),
                port: 80,
                weight: 1,
                ..Default::default()
            }],
            ..Default::default()
        };
        Arc::new(rule(&format!("{route}/0"), r).unwrap())
    }

    fn request(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::get(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn winner(t: &Table, uri: &str, headers: &[(&str, &str)]) -> Option<String> {
        t.find("ns/web", 80, &request(uri, headers), NS)
            .map(|e| e.rule.route.clone())
    }

    #[test]
    fn precedence_is_the_gateway_apis() {
        use pb::path_match::Kind::*;
        let with_header = pb::Match {
            headers: vec![pb::ValueMatch {
                name: "x-v".into(),
                value: "2".into(),
                regex: false,
                prefix: false,
            }],
            ..path(Prefix, "/api")
        };
        let t = Table::new([
            rule_of("catch-all", 1, vec![]),
            rule_of("prefix-api", 5, vec![path(Prefix, "/api")]),
            rule_of("prefix-api-v1", 5, vec![path(Prefix, "/api/v1")]),
            rule_of("exact", 9, vec![path(Exact, "/api/v1/users")]),
            rule_of("header", 9, vec![with_header]),
            rule_of("regex", 0, vec![path(Regex, "/r/[0-9]+")]),
            // Same match as prefix-api but older: it wins the tie.
            rule_of("older-api", 2, vec![path(Prefix, "/api")]),
        ]);
        let cases = [
            ("/api/v1/users", &[][..], "exact"),
            ("/api/v1/x", &[][..], "prefix-api-v1"),
            ("/api/x", &[][..], "older-api"),
            ("/api/x", &[("x-v", "2")][..], "header"),
            // Prefixes match on path segments: /apix is not under /api.
            ("/apix", &[][..], "catch-all"),
            ("/r/42", &[][..], "regex"),
            ("/r/42x", &[][..], "catch-all"),
        ];
        for (uri, headers, want) in cases {
            assert_eq!(
                winner(&t, uri, headers).as_deref(),
                Some(want),
                "{uri} {headers:?}"
            );
        }
        assert!(t.has_routes("ns/web", 80));
        assert!(!t.has_routes("ns/other", 80));
    }

    #[test]
    fn query_method_and_port_matches() {
        let m = pb::Match {
            query_params: vec![pb::ValueMatch {
                name: "debug".into(),
                value: "1".into(),
                regex: false,
                prefix: false,
            }],
            method: "POST".into(),
            ..Default::default()
        };
        let mut r = pb::HttpRouteRule {
            route: "q".into(),
            parents: vec![pb::Parent {
                service: "ns/web".into(),
                port: 8080,
            }],
            matches: vec![m],
            ..Default::default()
        };
        r.backends.push(pb::Backend::default());
        let t = Table::new([Arc::new(rule("q/0", r).unwrap())]);
        let post = |uri: &str| {
            let mut p = request(uri, &[]);
            p.method = http::Method::POST;
            p
        };
        assert!(t.find("ns/web", 8080, &post("/x?debug=1"), NS).is_some());
        assert!(t.find("ns/web", 8080, &post("/x?debug=2"), NS).is_none());
        assert!(
            t.find("ns/web", 8080, &request("/x?debug=1", &[]), NS)
                .is_none(),
            "GET"
        );
        assert!(!t.has_routes("ns/web", 80), "attached to port 8080 only");
        // An empty backend is kept, marked: its requests are answered 500.
        let e = t.find("ns/web", 8080, &post("/x?debug=1"), NS).unwrap();
        assert!(e.rule.backends[0].unresolved.is_some());
    }

    #[test]
    fn a_bad_rule_is_refused_with_its_field() {
        let bad = pb::HttpRouteRule {
            matches: vec![path(pb::path_match::Kind::Regex, "(")],
            ..Default::default()
        };
        let e = rule("r/0", bad).unwrap_err();
        assert_eq!(e.field, "matches[0].path", "{e}");
        let bad_header = pb::HttpRouteRule {
            filters: vec![pb::Filter {
                kind: Some(pb::filter::Kind::RequestHeaders(pb::HeaderModifier {
                    set: vec![pb::Header {
                        name: "bad header".into(),
                        value: "v".into(),
                    }],
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        assert!(
            rule("r/0", bad_header)
                .unwrap_err()
                .reason
                .contains("bad header")
        );
        // Through the xDS handler: the bad resource is NACKed alone, the good one applies.
        let store = Store::default();
        let good = pb::HttpRouteRule {
            route: "ns/good".into(),
            ..Default::default()
        };
        let rejected = amesh_xds::handler::process(
            &mut RouteHandler(store.clone()),
            vec![
                ("ns/good/0".into(), good.encode_to_vec()),
                ("ns/bad/0".into(), vec![0xff, 0xff]),
            ],
            vec![],
        );
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].name, "ns/bad/0");
        assert_eq!(store.0.lock().unwrap().len(), 1);
    }
}
