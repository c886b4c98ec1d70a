//! The HTTP/1.1 proxy inside one CONNECT. Each request gets an `x-request-id` and W3C trace
//! context when it has none; a Service with HTTPRoutes has its rules applied (the first
//! match in the Gateway API's precedence; none: 404), else the request goes to the Service
//! itself; the chosen endpoint is reached over HBONE with the waypoint's identity; the
//! request is counted in Istio's metrics and logged. Bodies stream through; only a request
//! that a retry or a mirror must replay is held, and only when it is small.

use crate::{
    bound::Destination,
    counted::{self, Counted},
    metrics::{PeerLabels, RequestLabels},
    proxy::{Caller, Inputs, Sniffed, forwarded},
    routes::{Backend, Entry, Filter, HeaderModifier, PathMatch, PathModifier},
    upstream::{self, Endpoint, UpstreamError},
};
use amesh_hbone::metadata::TRACEPARENT;
use amesh_state::AppProtocol;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header, request::Parts};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tracing::{debug, info, warn};

pub(crate) type Body = BoxBody<Bytes, hyper::Error>;

/// Longest request head accepted (larger: 431).
const MAX_HEAD: usize = 64 * 1024;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest request body held for a retry or a mirror to replay; larger ones stream and
/// are neither retried nor mirrored.
const MAX_REPLAY: u64 = 64 * 1024;
/// Bound on a mirrored copy's exchange.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves HTTP/1.1 (or, `h2`, HTTP/2 with prior knowledge) requests on one CONNECT stream
/// until the client closes it.
pub async fn serve(
    inputs: Arc<Inputs>,
    caller: Caller,
    destination: Destination,
    target: SocketAddr,
    stream: Sniffed,
    h2: bool,
) {
    let caller = Arc::new(caller);
    let service = hyper::service::service_fn(move |req| {
        let (inputs, caller, destination) = (inputs.clone(), caller.clone(), destination.clone());
        async move {
            Ok::<_, std::convert::Infallible>(
                handle(&inputs, &caller, &destination, target, req).await,
            )
        }
    });
    if h2 {
        // Each stream is a task of its own: a slow one holds only its own flow-control window.
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEAD as u32)
            .serve_connection(TokioIo::new(stream), service);
        if let Err(e) = conn.await {
            debug!(error = %e, "HTTP/2 connection ended");
        }
        return;
    }
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(e) = conn.await {
        debug!(error = %e, "HTTP/1.1 connection ended");
    }
}

/// Whether a request is gRPC: it must reach the endpoint over HTTP/2, trailers and all.
fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Removes the hop-by-hop headers a proxy must not forward (RFC 9110 §7.6.1).
fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
    // `te: trailers` is the one value HTTP/2 allows, and gRPC needs it end to end.
    let trailers = headers
        .get("te")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
    if trailers {
        headers.insert("te", HeaderValue::from_static("trailers"));
    }
}

/// RFC 3986 normalization of a path: percent-encoded unreserved characters decoded (`%61`
/// is `a`; an encoded `/` stays encoded), then `.` and `..` segments removed.
fn normalize_path(path: &str) -> String {
    // A backslash separates segments too (Envoy's normalization turns it into `/`).
    let path = path.replace('\\', "/");
    let path = path.as_str();
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = path.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
            && (b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        {
            decoded.push(b as char);
            i += 3;
            continue;
        }
        // Safe: `i` only ever advances over ASCII or whole characters.
        let c = path[i..].chars().next().unwrap_or('\u{fffd}');
        decoded.push(c);
        i += c.len_utf8();
    }
    let trailing = decoded.ends_with("/.") || decoded.ends_with("/..") || decoded.ends_with('/');
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/').skip(1) {
        match seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut joined = format!("/{}", out.join("/"));
    if trailing && !joined.ends_with('/') {
        joined.push('/');
    }
    joined
}

/// Normalizes the request's path in place; `false` for one that must be refused (an
/// encoded NUL).
fn normalize_uri(parts: &mut Parts) -> bool {
    let path = parts.uri.path();
    if path.to_ascii_lowercase().contains("%00") {
        return false;
    }
    if !path.starts_with('/') {
        return true;
    }
    let normal = normalize_path(path);
    if normal == path {
        return true;
    }
    let pq = match parts.uri.query() {
        Some(q) => format!("{normal}?{q}"),
        None => normal,
    };
    let mut uri = parts.uri.clone().into_parts();
    if let Ok(pq) = pq.parse() {
        uri.path_and_query = Some(pq);
        if let Ok(u) = http::Uri::from_parts(uri) {
            parts.uri = u;
        }
    }
    true
}

/// A fresh request id: 128 random bits as a UUID (version 4) string, as Envoy makes them.
fn request_id() -> HeaderValue {
    let (a, b) = (fastrand::u64(..), fastrand::u64(..));
    let a = (a & 0xffff_ffff_ffff_0fff) | 0x4000;
    let b = (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    let text = format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

/// How a request ended.
struct Served {
    resp: Response<Body>,
    endpoint: Option<Endpoint>,
    /// Envoy's response flag, as Istio's waypoint reports it.
    flag: &'static str,
}

impl Served {
    fn local(status: StatusCode, body: &'static str, flag: &'static str) -> Self {
        Self {
            resp: text(status, body),
            endpoint: None,
            flag,
        }
    }
}

async fn handle(
    inputs: &Arc<Inputs>,
    caller: &Caller,
    destination: &Destination,
    target: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    // The request's size: its head as received, and its body as it is read.
    let request_head = counted::head_bytes(
        &parts.headers,
        parts.method.as_str().len() + parts.uri.to_string().len() + 11,
    );
    let request_body = Arc::new(AtomicU64::new(0));
    let mut body: Body = Counted::new(body, request_body.clone()).boxed();
    if !parts.headers.contains_key("x-request-id") {
        parts.headers.insert("x-request-id", request_id());
    }
    if !parts.headers.contains_key(TRACEPARENT) {
        parts
            .headers
            .insert(TRACEPARENT, amesh_hbone::metadata::new_traceparent());
    }
    strip_hop_by_hop(&mut parts.headers);
    // One path for policy, routing and the upstream alike (Istio's BASE normalization):
    // `/public/../admin` is judged, routed and sent as `/admin`; an encoded NUL is refused.
    if !normalize_uri(&mut parts) {
        return text(StatusCode::BAD_REQUEST, "bad request path");
    }
    // One authority too: an HTTP/2 or absolute-form request's URI authority is the
    // request's, and a Host header that says otherwise is replaced by it.
    if let Some(a) = parts.uri.authority().cloned()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        parts.headers.insert(header::HOST, v);
    }
    let request_id = parts.headers.get("x-request-id").cloned();
    let grpc = is_grpc(&parts.headers);
    let (method, path) = (parts.method.clone(), parts.uri.path().to_string());
    let service = match destination {
        Destination::Service(s) => Some(s.key()),
        Destination::Workload(_) => None,
    };
    let table = inputs.routes.borrow().clone();
    // The end user, then policy, then routing (Envoy's jwt_authn and RBAC filters run
    // before the router).
    let mut downstream = Vec::new();
    let denied = match authenticate(inputs, destination, &mut parts, grpc) {
        Ok(auth) => {
            authorize(
                inputs,
                caller,
                destination,
                target,
                &mut parts,
                &mut body,
                grpc,
                auth.as_ref(),
                &mut downstream,
            )
            .await
        }
        Err(refused) => Some(*refused),
    };
    let served = match (denied, service) {
        (Some(denied), _) => denied,
        (None, Some(key)) if table.has_routes(&key, target.port()) => {
            let source = crate::routes::Source {
                namespace: &caller.identity.namespace,
                ip: caller.addr.ip(),
            };
            match table.find(&key, target.port(), &parts, source) {
                Some(entry) => {
                    let entry = entry.clone();
                    apply_rule(inputs, caller, &entry, target, parts, body).await
                }
                None => Served::local(StatusCode::NOT_FOUND, "route not found", "NR"),
            }
        }
        // No route for the service (or a workload addressed directly): to where it was sent.
        (None, _) => attempt(inputs, caller, target, parts, body, None).await,
    };
    let mut served = served;
    for (k, v) in downstream {
        served.resp.headers_mut().append(k, v);
    }
    // A trailers-only gRPC answer (an error) has its status in the head; otherwise it
    // comes in the trailers, and the request is counted when the response ends.
    let grpc_status = served
        .resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut labels = labels(
        caller,
        destination,
        served.endpoint.as_ref(),
        served.resp.status(),
        served.flag,
        grpc,
        grpc_status,
    );
    info!(
        %method,
        path,
        status = served.resp.status().as_u16(),
        response_flags = served.flag,
        upstream = ?served.endpoint.as_ref().map(|e| e.addr),
        request_id = ?request_id,
        head_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    let response_head = counted::head_bytes(served.resp.headers(), 17);
    let metrics = inputs.metrics.clone();
    let report = Box::new(move |end: counted::Ended| {
        if let Some(status) = end.grpc_status {
            labels.grpc_response_status = status;
        }
        metrics.requests.get_or_create(&labels).inc();
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        metrics.duration.get_or_create(&labels).observe(ms);
        let request = request_head + request_body.load(Ordering::Relaxed);
        metrics
            .request_bytes
            .get_or_create(&labels)
            .observe(request as f64);
        metrics
            .response_bytes
            .get_or_create(&labels)
            .observe((response_head + end.bytes) as f64);
    });
    served.resp.map(|b| Counted::reporting(b, report).boxed())
}

/// The AuthorizationPolicies' verdict on a request, before it is routed: `Some` answer when
/// it is denied (403 `RBAC: access denied`; for gRPC, PERMISSION_DENIED), logged with the
/// deciding policy.
#[allow(
    clippy::too_many_arguments,
    reason = "the request's context, its head and what the answer gets"
)]
async fn authorize(
    inputs: &Arc<Inputs>,
    caller: &Caller,
    destination: &Destination,
    target: SocketAddr,
    parts: &mut Parts,
    body: &mut Body,
    grpc: bool,
    auth: Option<&amesh_policy::RequestAuth>,
    downstream: &mut Vec<(http::HeaderName, HeaderValue)>,
) -> Option<Served> {
    // The authority the request goes on with: an HTTP/2 request's `:authority` (its URI)
    // before any `host` header it also carries.
    let host = parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or_default();
    let request = amesh_policy::Request {
        method: parts.method.as_str(),
        host,
        path: parts.uri.path(),
        headers: &parts.headers,
        // Istio's default of no trusted proxies: the caller, never a client's own
        // `x-forwarded-for`.
        remote_ip: caller.addr.ip(),
        auth,
        sni: None,
    };
    let table = inputs.policies.borrow().clone();
    let outcome = crate::authz::decide(inputs, &table, caller, destination, target, Some(&request));
    // CUSTOM first: a matching policy's authorizer has the first word.
    // Every matching CUSTOM policy's authorizer must allow; one whose authorizer cannot be
    // found (the table changed meanwhile) refuses.
    for custom in &outcome.custom_hits {
        let Some(authorizer) = table.authorizer(custom) else {
            warn!(policy = %custom, "CUSTOM policy without its authorizer: refused");
            return Some(Served {
                resp: text(StatusCode::FORBIDDEN, "RBAC: access denied"),
                endpoint: None,
                flag: "UAEX",
            });
        };
        match crate::ext_authz::check(inputs, caller, &authorizer, target, parts, body).await {
            crate::ext_authz::Verdict::Allow { downstream: d } => downstream.extend(d),
            crate::ext_authz::Verdict::Deny(resp) => {
                info!(policy = %custom, src.identity = %caller.identity, "request denied by policy (CUSTOM)");
                return Some(Served {
                    resp,
                    endpoint: None,
                    flag: "UAEX",
                });
            }
        }
    }
    let amesh_policy::Decision::Deny { by } = outcome.decision else {
        return None;
    };
    info!(policy = %by, src.identity = %caller.identity, method = %parts.method, path = parts.uri.path(), "request denied by policy");
    Some(refusal(
        StatusCode::FORBIDDEN,
        "RBAC: access denied",
        "7",
        grpc,
    ))
}

/// A refusal: `status` with `message`, or for gRPC a trailers-only answer with
/// `grpc_status` in the head.
fn refusal(
    status: StatusCode,
    message: &'static str,
    grpc_status: &'static str,
    grpc: bool,
) -> Served {
    let mut resp = text(status, message);
    if grpc {
        *resp.status_mut() = StatusCode::OK;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        resp.headers_mut()
            .insert("grpc-status", HeaderValue::from_static(grpc_status));
        resp.headers_mut()
            .insert("grpc-message", HeaderValue::from_static(message));
        *resp.body_mut() = full(Bytes::new());
    }
    Served {
        resp,
        endpoint: None,
        flag: "-",
    }
}

/// The RequestAuthentications' verdict on the request's token: the end user it names (or
/// none without a token), or a refusal (401, gRPC UNAUTHENTICATED) for a token that fails.
fn authenticate(
    inputs: &Arc<Inputs>,
    destination: &Destination,
    parts: &mut Parts,
    grpc: bool,
) -> Result<Option<amesh_policy::RequestAuth>, Box<Served>> {
    let table = inputs.policies.borrow().clone();
    let me = inputs.me.key();
    let service = match destination {
        Destination::Service(s) => Some(s.key()),
        Destination::Workload(_) => None,
    };
    let providers = table.jwt_providers(&me, service.as_deref());
    if providers.is_empty() {
        return Ok(None);
    }
    crate::jwt::authenticate(&providers, parts).map_err(|reason| {
        info!(
            reason,
            path = parts.uri.path(),
            "request refused: its JWT does not hold"
        );
        let mut served = refusal(
            StatusCode::UNAUTHORIZED,
            "Jwt verification fails",
            "16",
            grpc,
        );
        served.resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"mesh\", error=\"invalid_token\""),
        );
        Box::new(served)
    })
}

/// A rule's filters, a backend by weight, its filters, then the request with the rule's
/// timeouts and retries.
async fn apply_rule(
    inputs: &Arc<Inputs>,
    caller: &Caller,
    entry: &Entry,
    target: SocketAddr,
    parts: Parts,
    body: Body,
) -> Served {
    let rule = &entry.rule;
    // CORS first (Istio's filter order: cors, fault, router): a preflight from an allowed
    // origin is answered here; an allowed origin's answer gets its CORS headers.
    let origin = parts
        .headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_string);
    let cors = match (&rule.cors, origin) {
        (Some(c), Some(o)) => Some((c, o)),
        _ => None,
    };
    if let Some((c, origin)) = &cors
        && let Some(answer) = cors_preflight(c, origin, &parts)
    {
        return answer;
    }
    let mut served = apply_rule_inner(inputs, caller, entry, target, parts, body).await;
    if let Some((c, origin)) = &cors
        && c.allows(origin)
    {
        for (k, v) in cors_headers(c, origin, false) {
            served.resp.headers_mut().insert(k, v);
        }
    }
    served
}

/// The answer to a CORS preflight (an OPTIONS with `Origin` and
/// `Access-Control-Request-Method`), as Envoy's CORS filter gives it: 200 with the policy's
/// headers for an allowed origin; for another, 200 without them under
/// `unmatchedPreflights: IGNORE`, else `None` (sent on upstream, Istio's default).
fn cors_preflight(c: &crate::routes::Cors, origin: &str, parts: &Parts) -> Option<Served> {
    if parts.method != http::Method::OPTIONS
        || !parts
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return None;
    }
    let allowed = c.allows(origin);
    if !allowed && !c.ignore_unmatched_preflights {
        return None;
    }
    let mut resp = text(StatusCode::OK, "");
    if allowed {
        for (k, v) in cors_headers(c, origin, true) {
            resp.headers_mut().insert(k, v);
        }
    }
    Some(Served {
        resp,
        endpoint: None,
        flag: "-",
    })
}

/// The CORS headers for an allowed `origin`: on a preflight answer the allowed methods,
/// headers and max age; on an actual answer the exposed headers.
fn cors_headers(
    c: &crate::routes::Cors,
    origin: &str,
    preflight: bool,
) -> Vec<(http::HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    let mut put = |name: http::HeaderName, value: &str| {
        if !value.is_empty()
            && let Ok(v) = HeaderValue::from_str(value)
        {
            out.push((name, v));
        }
    };
    put(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    if c.allow_credentials {
        put(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true");
    }
    if preflight {
        put(header::ACCESS_CONTROL_ALLOW_METHODS, &c.allow_methods);
        put(header::ACCESS_CONTROL_ALLOW_HEADERS, &c.allow_headers);
        if let Some(age) = c.max_age_seconds {
            put(header::ACCESS_CONTROL_MAX_AGE, &age.to_string());
        }
    } else {
        put(header::ACCESS_CONTROL_EXPOSE_HEADERS, &c.expose_headers);
    }
    out
}

/// [`apply_rule`] past CORS.
async fn apply_rule_inner(
    inputs: &Arc<Inputs>,
    caller: &Caller,
    entry: &Entry,
    target: SocketAddr,
    mut parts: Parts,
    body: Body,
) -> Served {
    let rule = &entry.rule;
    // Fault injection first (Envoy's fault filter runs before the router): a delay, then
    // perhaps an abort.
    let mut delayed = false;
    if let Some(f) = &rule.fault {
        if let Some(d) = f.delay
            && fastrand::f64() * 100.0 < f.delay_percent
        {
            tokio::time::sleep(d).await;
            delayed = true;
        }
        if let Some(status) = f.abort_status
            && fastrand::f64() * 100.0 < f.abort_percent
        {
            let mut served = match (f.abort_grpc, is_grpc(&parts.headers)) {
                (Some(code), true) => {
                    let mut served = refusal(StatusCode::OK, "fault filter abort", "0", true);
                    if let Ok(v) = HeaderValue::from_str(&code.to_string()) {
                        served.resp.headers_mut().insert("grpc-status", v);
                    }
                    served
                }
                _ => Served::local(status, "fault filter abort", "FI"),
            };
            served.flag = "FI";
            return served;
        }
    }
    let matched = &rule.matches[entry.matched].path;
    let mut response_headers: Vec<HeaderModifier> = Vec::new();
    let mut mirrors = Vec::new();
    let pick = pick_backend(&rule.backends);
    let backend_filters = pick.map(|b| b.filters.as_slice()).unwrap_or_default();
    for f in rule.filters.iter().chain(backend_filters) {
        match f {
            Filter::RequestHeaders(m) => m.apply(&mut parts.headers),
            Filter::ResponseHeaders(m) => response_headers.push(m.clone()),
            Filter::Redirect {
                scheme,
                hostname,
                port,
                path,
                status,
            } => {
                let location = redirect_location(&parts, matched, scheme, hostname, *port, path);
                let mut resp = text(*status, "");
                if let Ok(v) = HeaderValue::from_str(&location) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                return Served {
                    resp,
                    endpoint: None,
                    flag: "-",
                };
            }
            Filter::Rewrite { hostname, path } => {
                if let Some(h) = hostname {
                    parts.headers.insert(header::HOST, h.clone());
                }
                if let Some(p) = path {
                    rewrite_path(&mut parts, matched, p);
                }
            }
            Filter::Mirror { backend, percent } => {
                if fastrand::u32(0..100) < *percent {
                    mirrors.push(backend.clone());
                }
            }
            Filter::Direct { status, body } => {
                let mut resp = Response::new(full(body.clone()));
                *resp.status_mut() = *status;
                for m in &response_headers {
                    m.apply(resp.headers_mut());
                }
                return Served {
                    resp,
                    endpoint: None,
                    flag: "-",
                };
            }
        }
    }
    let Some(backend) = pick else {
        return Served::local(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no backend for this route",
            "NC",
        );
    };
    if let Some(why) = &backend.unresolved {
        debug!(backend = %why, "unresolved backend: 500");
        return Served::local(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the route's backend could not be resolved",
            "NC",
        );
    }
    let Some(backend_target) = backend_address(inputs, backend, target) else {
        return Served::local(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream", "UH");
    };
    if !backend.endpoints.is_empty() || backend.subset.is_some() {
        parts.extensions.insert(Subset {
            name: backend.subset.clone(),
            uids: Arc::new(backend.endpoints.clone()),
        });
    }
    // Hold a small body when a retry or a mirror must replay it; a larger one streams once,
    // with neither.
    let wants_replay = rule.retry.as_ref().is_some_and(|r| r.attempts > 0) || !mirrors.is_empty();
    let small = body.size_hint().upper().is_some_and(|n| n <= MAX_REPLAY);
    let (replay, stream) = if wants_replay && small {
        match body.collect().await {
            Ok(b) => (Some(b.to_bytes()), None),
            Err(e) => {
                debug!(error = %e, "reading the request body");
                return Served::local(StatusCode::BAD_REQUEST, "bad request body", "DPE");
            }
        }
    } else {
        (None, Some(body))
    };
    if let Some(b) = &replay {
        for m in &mirrors {
            if let Some(to) = backend_address(inputs, m, target) {
                mirror(inputs, caller, &parts, b.clone(), to, &m.endpoints);
            }
        }
    }
    let exchange = exchange(inputs, caller, rule, backend_target, parts, replay, stream);
    let mut served = match rule.request_timeout {
        Some(limit) => match tokio::time::timeout(limit, exchange).await {
            Ok(s) => s,
            Err(_) => Served::local(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream request timeout",
                "UT",
            ),
        },
        None => exchange.await,
    };
    for m in &response_headers {
        m.apply(served.resp.headers_mut());
    }
    if delayed && served.flag == "-" {
        served.flag = "DI";
    }
    served
}

/// The request with the rule's retries: another attempt after a connection failure, a
/// per-attempt timeout or a listed status, while attempts remain and the body can be replayed.
async fn exchange(
    inputs: &Arc<Inputs>,
    caller: &Caller,
    rule: &crate::routes::Rule,
    target: SocketAddr,
    parts: Parts,
    replay: Option<Bytes>,
    mut stream: Option<Body>,
) -> Served {
    let retry = rule
        .retry
        .as_ref()
        .filter(|_| replay.is_some() || stream.is_none());
    let attempts = 1 + retry.map_or(0, |r| r.attempts);
    let mut n = 0;
    // A retry in flight holds its place under the Service's `maxRetries`.
    let mut _retrying: Option<crate::breaker::Admitted> = None;
    loop {
        n += 1;
        let body = match (&replay, stream.take()) {
            (Some(b), _) => full(b.clone()),
            (None, Some(s)) => s,
            (None, None) => full(Bytes::new()),
        };
        let served = attempt(
            inputs,
            caller,
            target,
            parts.clone(),
            body,
            rule.backend_timeout,
        )
        .await;
        let again = retry.is_some_and(|r| {
            let status = served.resp.status().as_u16();
            // Envoy never retries an overflow: it would only add load.
            served.flag != "UO"
                && (served.endpoint.is_none() && served.flag != "-" || r.codes.contains(&status))
        });
        if !again || n >= attempts {
            return served;
        }
        match retry_budget(inputs, target) {
            Some(Ok(permit)) => _retrying = Some(permit),
            Some(Err(max)) => {
                debug!(
                    max,
                    "retries to the Service at their limit (maxRetries): not retried"
                );
                return served;
            }
            None => {}
        }
        debug!(
            attempt = n,
            status = served.resp.status().as_u16(),
            flag = served.flag,
            "retrying"
        );
        if let Some(r) = retry {
            tokio::time::sleep(r.backoff).await;
        }
    }
}

/// A retry's place under the destination Service's `maxRetries` (Envoy's retry circuit
/// breaker): `None` without a limit, `Err(limit)` when that many retries are in flight.
fn retry_budget(
    inputs: &Inputs,
    target: SocketAddr,
) -> Option<Result<crate::breaker::Admitted, u32>> {
    let service = inputs.state.snapshot().service_by_vip(target.ip())?.key();
    let table = inputs.policies.borrow().clone();
    let max = table
        .traffic_for(&service, target.port(), None)?
        .connection_pool
        .max_retries;
    if max == 0 {
        return None;
    }
    Some(
        inputs
            .breakers
            .admit(&format!("{service}#retries"), max)
            .ok_or(max),
    )
}

/// One request to an endpoint of `target`, within `limit` until its response head.
async fn attempt(
    inputs: &Arc<Inputs>,
    caller: &Caller,
    target: SocketAddr,
    parts: Parts,
    body: Body,
    limit: Option<Duration>,
) -> Served {
    let mut parts = parts;
    // The destination's DestinationRule: its load balancer's choice, and its circuit
    // breaker (connection pool), looked up once.
    let service = inputs
        .state
        .snapshot()
        .service_by_vip(target.ip())
        .map(|s| s.key());
    let table = inputs.policies.borrow().clone();
    let subset = subset_name_of(&parts.extensions);
    let traffic = service
        .as_deref()
        .and_then(|s| table.traffic_for(s, target.port(), subset.as_deref()));
    let traffic = traffic.as_ref();
    if let Some(lb) = traffic.and_then(|t| t.load_balancer.as_ref())
        && let Some(hint) = load_balance(lb, &parts, caller)
    {
        parts.extensions.insert(PickHint(hint));
    }
    let in_flight = traffic.and_then(|t| {
        let h2 = is_grpc(&parts.headers) || declared_h2(inputs, target);
        t.connection_pool.max_in_flight(h2)
    });
    let admitted = match (&service, in_flight) {
        (Some(s), Some(max)) => match inputs.breakers.admit(s, max) {
            Some(a) => Some(a),
            None => {
                debug!(service = %s, limit = max, "circuit breaker open: overflow");
                return Served::local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error or disconnect/reset before headers. reset reason: overflow",
                    "UO",
                );
            }
        },
        _ => None,
    };
    let fut = forward(inputs, caller, target, Request::from_parts(parts, body));
    let outcome = match limit {
        Some(l) => match tokio::time::timeout(l, fut).await {
            Ok(o) => o,
            Err(_) => {
                return Served::local(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream request timeout",
                    "UT",
                );
            }
        },
        None => fut.await,
    };
    // Outlier detection learns from every answer of an endpoint (failed connections are
    // recorded where they fail, in `http1`/`http2`).
    if let Ok((resp, endpoint)) = &outcome {
        let result = crate::outlier::Outcome::of_status(resp.status().as_u16());
        note_outcome(inputs, endpoint, result);
    }
    match outcome {
        Ok((resp, endpoint)) => Served {
            // The request counts against the breaker until its response body is through.
            resp: match admitted {
                Some(a) => resp.map(|b| Counted::reporting(b, Box::new(move |_| drop(a))).boxed()),
                None => resp,
            },
            endpoint: Some(endpoint),
            flag: "-",
        },
        Err(e) => {
            warn!(error = %e, "request failed upstream");
            let flag = e.response_flag();
            match e {
                Forward::Upstream(UpstreamError::NoHealthyUpstream(_)) => {
                    Served::local(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream", flag)
                }
                _ => Served::local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error",
                    flag,
                ),
            }
        }
    }
}

/// A copy of the request to `to`, answer ignored; the Host gets `-shadow` as Envoy's
/// mirrors do.
fn mirror(
    inputs: &Arc<Inputs>,
    caller: &Caller,
    parts: &Parts,
    body: Bytes,
    to: SocketAddr,
    subset: &[String],
) {
    let mut parts = parts.clone();
    // The mirror's own subset, not the main backend's.
    parts.extensions.remove::<Subset>();
    if !subset.is_empty() {
        parts.extensions.insert(Subset {
            name: None,
            uids: Arc::new(subset.to_vec()),
        });
    }
    if let Some(host) = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        let shadow = match host.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => format!("{h}-shadow:{p}"),
            _ => format!("{host}-shadow"),
        };
        if let Ok(v) = HeaderValue::from_str(&shadow) {
            parts.headers.insert(header::HOST, v);
        }
    }
    let (inputs, caller) = (inputs.clone(), caller.clone());
    tokio::spawn(async move {
        let req = Request::from_parts(parts, full(body));
        // A mirror target that hangs must not pile up tasks holding bodies.
        match tokio::time::timeout(MIRROR_TIMEOUT, forward(&inputs, &caller, to, req)).await {
            Ok(Ok((resp, e))) => {
                debug!(to = %e.addr, status = resp.status().as_u16(), "mirrored")
            }
            Ok(Err(e)) => debug!(error = %e, "mirror failed"),
            Err(_) => debug!(%to, "mirror timed out"),
        }
    });
}

/// A backend Service's VIP (of the family the client used) and port.
pub(crate) fn backend_address(
    inputs: &Inputs,
    backend: &Backend,
    target: SocketAddr,
) -> Option<SocketAddr> {
    // Port 0: the port the request came in on.
    let port = if backend.port == 0 {
        target.port()
    } else {
        backend.port
    };
    upstream::service_address(inputs, &backend.service, port, target)
}

/// A backend by weight; none when there are none or every weight is 0 (answered 500).
pub(crate) fn pick_backend(backends: &[Backend]) -> Option<&Backend> {
    let total: u32 = backends.iter().map(|b| b.weight).sum();
    if total == 0 {
        return None;
    }
    let mut r = fastrand::u32(0..total);
    backends.iter().find(|b| {
        if r < b.weight {
            true
        } else {
            r -= b.weight;
            false
        }
    })
}

/// The path with the matched prefix replaced (`ReplacePrefixMatch`), or whole.
fn replaced_path(path: &str, matched: &PathMatch, m: &PathModifier) -> String {
    let new = match (m, matched) {
        (PathModifier::Full(v), _) => v.clone(),
        (PathModifier::Prefix(v), PathMatch::StringPrefix(p))
            if path.len() >= p.len() && path[..p.len()].eq_ignore_ascii_case(p) =>
        {
            // The matched prefix (compared without case: an ignoreUriCase match's literal is
            // lowered) replaced, the rest kept.
            format!("{v}{}", &path[p.len()..])
        }
        (PathModifier::Prefix(v), PathMatch::Prefix(p)) if path.starts_with(p.as_str()) => {
            format!("{}{}", v.trim_end_matches('/'), &path[p.len()..])
        }
        (PathModifier::Prefix(v), _) => v.clone(),
        (PathModifier::Regex(re, substitution), _) => {
            re.replace_all(path, substitution.as_str()).into_owned()
        }
    };
    if new.starts_with('/') {
        new
    } else {
        format!("/{new}")
    }
}

fn rewrite_path(parts: &mut Parts, matched: &PathMatch, m: &PathModifier) {
    let path = replaced_path(parts.uri.path(), matched, m);
    let pq = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut uri = parts.uri.clone().into_parts();
    match pq.parse() {
        Ok(pq) => uri.path_and_query = Some(pq),
        Err(e) => return debug!(error = %e, "rewritten path is not valid; left as it was"),
    }
    if let Ok(u) = http::Uri::from_parts(uri) {
        parts.uri = u;
    }
}

fn redirect_location(
    parts: &Parts,
    matched: &PathMatch,
    scheme: &Option<String>,
    hostname: &Option<String>,
    port: Option<u16>,
    path: &Option<PathModifier>,
) -> String {
    let host_header = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or_default();
    let (req_host, req_port) = match host_header.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => (h, p.parse::<u16>().ok()),
        _ => (host_header, None),
    };
    let scheme_out = scheme.as_deref().unwrap_or("http");
    let host_out = hostname.as_deref().unwrap_or(req_host);
    // A new scheme without a port means that scheme's default port.
    let port_out = match (port, scheme) {
        (Some(p), _) => Some(p),
        (None, Some(_)) => None,
        (None, None) => req_port,
    };
    let port_text = match (scheme_out, port_out) {
        (_, None) | ("http", Some(80)) | ("https", Some(443)) => String::new(),
        (_, Some(p)) => format!(":{p}"),
    };
    let path_out = match path {
        None => parts.uri.path().to_string(),
        Some(m) => replaced_path(parts.uri.path(), matched, m),
    };
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    format!("{scheme_out}://{host_out}{port_text}{path_out}{query}")
}

pub(crate) fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed()
}

#[derive(Debug, thiserror::Error)]
enum Forward {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("upstream HTTP: {0}")]
    Http(#[from] hyper::Error),
}

impl Forward {
    fn response_flag(&self) -> &'static str {
        match self {
            Self::Upstream(e) => e.response_flag(),
            // The endpoint accepted the connection, then failed the request.
            Self::Http(_) => "UC",
        }
    }
}

/// One request to an endpoint of `target` (an external authorizer's check), its failure
/// as text.
pub(crate) async fn forward_request(
    inputs: &Inputs,
    caller: &Caller,
    target: SocketAddr,
    req: Request<Body>,
) -> Result<Response<Body>, String> {
    forward(inputs, caller, target, req)
        .await
        .map(|(resp, _)| resp)
        .map_err(|e| e.to_string())
}

/// Whether requests to `target` go on as HTTP/2: its port is declared HTTP/2 or gRPC.
/// An undeclared port gets HTTP/1.1 whatever the client spoke (gRPC aside), so that an
/// HTTP/2 client still reaches an app that speaks only HTTP/1.1.
fn declared_h2(inputs: &Inputs, target: SocketAddr) -> bool {
    let state = inputs.state.snapshot();
    state.service_by_vip(target.ip()).is_some_and(|s| {
        matches!(
            s.app_protocol(target.port()),
            AppProtocol::Http2 | AppProtocol::Grpc
        )
    })
}

/// One request to an endpoint of `target`: HTTP/2 for gRPC and ports declared HTTP/2, else
/// HTTP/1.1.
async fn forward(
    inputs: &Inputs,
    caller: &Caller,
    target: SocketAddr,
    req: Request<Body>,
) -> Result<(Response<Body>, Endpoint), Forward> {
    let mut req = req;
    if is_grpc(req.headers()) || declared_h2(inputs, target) {
        // An absolute URI, as an HTTP/2 client sends it, with the Host the request has now
        // (a rewritten authority, a mirror's `-shadow` host).
        if let Some(host) = req.headers().get(header::HOST).cloned()
            && let Ok(host) = host.to_str()
            && let Some(pq) = req.uri().path_and_query()
            && let Ok(uri) = format!("http://{host}{pq}").parse()
        {
            *req.uri_mut() = uri;
        }
        req.headers_mut().remove(header::HOST);
        *req.version_mut() = http::Version::HTTP_2;
        return http2(inputs, caller, target, req).await;
    }
    // HTTP/1.1: origin-form, with a Host.
    if let Some(authority) = req.uri().authority().cloned()
        && !req.headers().contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(header::HOST, v);
    }
    if let Some(pq) = req.uri().path_and_query().cloned() {
        *req.uri_mut() = http::Uri::from(pq);
    }
    *req.version_mut() = http::Version::HTTP_11;
    http1(inputs, caller, target, req).await
}

fn finish(resp: Response<Incoming>) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body.boxed())
}

/// Idle upstream HTTP/1.1 connections, by endpoint and caller: the HBONE CONNECT that opened
/// one names its caller (`forwarded`), so callers never share one.
#[derive(Debug, Default)]
pub struct H1Pool(Mutex<HashMap<PoolKey, Vec<Pooled>>>);

/// An idle pooled connection: how many requests it carried, and since when it is idle.
#[derive(Debug)]
struct Pooled {
    send: SendRequest<Body>,
    uses: u32,
    idle_since: Instant,
}

/// Istio's default `idleTimeout` for upstream connections.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// A DestinationRule's limits on one upstream connection.
#[derive(Debug, Clone, Copy)]
struct ConnLimits {
    /// Requests a connection carries before it is retired (0: no limit).
    max_requests: u32,
    idle_timeout: Duration,
}

impl ConnLimits {
    fn of(pool: Option<&amesh_policy::traffic::ConnectionPool>) -> Self {
        Self {
            max_requests: pool.map_or(0, |p| p.max_requests_per_connection),
            idle_timeout: pool
                .map(|p| p.idle_timeout_ms)
                .filter(|ms| *ms > 0)
                .map_or(DEFAULT_IDLE_TIMEOUT, Duration::from_millis),
        }
    }

    /// Whether a connection that carried `uses` requests may carry another.
    fn has_room(&self, uses: u32) -> bool {
        self.max_requests == 0 || uses < self.max_requests
    }
}

type PoolKey = (SocketAddr, IpAddr, String);

/// Idle connections kept per endpoint and caller.
const IDLE_PER_KEY: usize = 16;

impl H1Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Vec<Pooled>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle connection that can take a request now, with the requests it carried
    /// (connections idle past `limits.idle_timeout` are closed instead).
    fn take(&self, key: &PoolKey, limits: ConnLimits) -> Option<(SendRequest<Body>, u32)> {
        let mut pool = self.lock();
        let idle = pool.get_mut(key)?;
        while let Some(p) = idle.pop() {
            if p.send.is_ready() && p.idle_since.elapsed() < limits.idle_timeout {
                return Some((p.send, p.uses));
            }
        }
        None
    }

    /// Puts the connection back once its response has been read (never if it closes, or
    /// when it carried the most requests a connection may: then it closes).
    fn put_when_ready(
        self: &Arc<Self>,
        key: PoolKey,
        mut send: SendRequest<Body>,
        uses: u32,
        limits: ConnLimits,
    ) {
        if !limits.has_room(uses) {
            return;
        }
        let pool = self.clone();
        tokio::spawn(async move {
            if send.ready().await.is_ok() {
                let mut map = pool.lock();
                let idle = map.entry(key).or_default();
                if idle.len() < IDLE_PER_KEY {
                    idle.push(Pooled {
                        send,
                        uses,
                        idle_since: Instant::now(),
                    });
                }
            }
        });
    }
}

/// Tells outlier detection how an endpoint did, if its Service's DestinationRule asks.
fn note_outcome(inputs: &Inputs, endpoint: &Endpoint, result: crate::outlier::Outcome) {
    let (Some(w), Some(s)) = (&endpoint.workload, &endpoint.service) else {
        return;
    };
    let key = s.key();
    let table = inputs.policies.borrow().clone();
    let Some(od) = table
        .traffic_for(&key, endpoint.service_port, endpoint.subset.as_deref())
        .and_then(|t| t.outlier_detection)
    else {
        return;
    };
    let endpoints = inputs.state.snapshot().endpoints(&key).len();
    if inputs.outliers.record(&key, &w.uid, endpoints, result, &od) {
        inputs
            .metrics
            .ejections
            .get_or_create(&crate::metrics::ServiceLabels {
                destination_service: s.hostname.clone(),
            })
            .inc();
    }
}

/// The connection pool settings of the endpoint's Service port, if a DestinationRule has
/// them.
fn pool_of(inputs: &Inputs, endpoint: &Endpoint) -> Option<amesh_policy::traffic::ConnectionPool> {
    let s = endpoint.service.as_ref()?;
    let table = inputs.policies.borrow().clone();
    table
        .traffic_for(&s.key(), endpoint.service_port, endpoint.subset.as_deref())
        .map(|t| t.connection_pool)
}

/// Opens the stream to a picked endpoint within its Service's `connectTimeout`, if its
/// DestinationRule sets one.
async fn open_within(
    inputs: &Inputs,
    picked: &upstream::Picked,
    endpoint: &Endpoint,
    caller: &Caller,
) -> Result<Box<dyn upstream::Io>, UpstreamError> {
    let limit = pool_of(inputs, endpoint)
        .map(|p| p.connect_timeout_ms)
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis);
    let open = upstream::open(inputs, picked, forwarded(caller));
    let opened = match limit {
        None => open.await,
        Some(limit) => tokio::time::timeout(limit, open).await.unwrap_or_else(|_| {
            Err(UpstreamError::Tcp {
                addr: endpoint.addr,
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connectTimeout"),
            })
        }),
    };
    // A connection that cannot be made counts as a gateway error of the endpoint.
    if opened.is_err() {
        note_outcome(inputs, endpoint, crate::outlier::Outcome::GatewayError);
    }
    opened
}

/// A DestinationRule subset a route sends the request to: its name (for its traffic
/// policy) and the workloads to pick among (empty: every endpoint).
#[derive(Debug, Clone)]
struct Subset {
    name: Option<String>,
    uids: Arc<Vec<String>>,
}

fn subset_of<B>(req: &Request<B>) -> Option<&[String]> {
    req.extensions()
        .get::<Subset>()
        .filter(|s| !s.uids.is_empty() || s.name.is_none())
        .map(|s| s.uids.as_slice())
}

fn subset_name_of(extensions: &http::Extensions) -> Option<String> {
    extensions.get::<Subset>().and_then(|s| s.name.clone())
}

/// A load balancer's choice among the endpoints (a hash, or a random number).
#[derive(Debug, Clone, Copy)]
struct PickHint(usize);

fn hint_of<B>(req: &Request<B>) -> Option<usize> {
    req.extensions().get::<PickHint>().map(|h| h.0)
}

/// The DestinationRule load balancer's choice for a request from `caller`.
fn load_balance(
    lb: &amesh_policy::traffic::LoadBalancer,
    parts: &Parts,
    caller: &Caller,
) -> Option<usize> {
    use amesh_policy::traffic::{HashKey, LoadBalancer};
    use std::hash::{Hash, Hasher};
    let key: Option<String> = match lb {
        LoadBalancer::RoundRobin => return None,
        LoadBalancer::Random => return Some(fastrand::usize(..)),
        LoadBalancer::ConsistentHash(HashKey::Header(name)) => parts
            .headers
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        LoadBalancer::ConsistentHash(HashKey::Cookie(name)) => parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| {
                let (k, v) = c.trim().split_once('=')?;
                (k == name).then(|| v.to_string())
            }),
        LoadBalancer::ConsistentHash(HashKey::SourceIp) => Some(caller.addr.ip().to_string()),
        LoadBalancer::ConsistentHash(HashKey::QueryParameter(name)) => parts
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == name).then(|| v.to_string())
            }),
    };
    // Without the value, the request is spread in turn. The hasher's keys are fixed, so a
    // value reaches the same endpoint on every waypoint instance.
    key.map(|k| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        k.hash(&mut h);
        h.finish() as usize
    })
}

/// One HTTP/1.1 request to an endpoint of `target`: on an idle pooled connection to the
/// endpoint picked, else on a new one (also when the pooled one turns out to be closed).
async fn http1(
    inputs: &Inputs,
    caller: &Caller,
    target: SocketAddr,
    req: Request<Body>,
) -> Result<(Response<Body>, Endpoint), Forward> {
    let (picked, mut endpoint) =
        upstream::pick_with(inputs, target, subset_of(&req), hint_of(&req))?;
    endpoint.subset = subset_name_of(req.extensions());
    let key = (endpoint.addr, caller.addr.ip(), caller.identity.to_string());
    let limits = ConnLimits::of(pool_of(inputs, &endpoint).as_ref());
    let mut req = req;
    if let Some((mut s, uses)) = inputs.h1_pool.take(&key, limits) {
        match s.try_send_request(req).await {
            Ok(resp) => {
                inputs.h1_pool.put_when_ready(key, s, uses + 1, limits);
                return Ok((finish(resp), endpoint));
            }
            // Not sent (the connection had just closed): a new connection takes it.
            Err(mut e) => match e.take_message() {
                Some(back) => req = back,
                None => return Err(Forward::Http(e.into_error())),
            },
        }
    }
    let io = open_within(inputs, &picked, &endpoint, caller).await?;
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "upstream HTTP/1.1 connection ended");
        }
    });
    let resp = s.send_request(req).await?;
    inputs.h1_pool.put_when_ready(key, s, 1, limits);
    Ok((finish(resp), endpoint))
}

/// Upstream HTTP/2 connections, one per endpoint and caller, shared by every request to
/// that endpoint from that caller while it stays open.
#[derive(Debug, Default)]
pub struct H2Pool(Mutex<HashMap<PoolKey, H2Pooled>>);

/// A shared HTTP/2 connection: the requests it carried, and when it last took one.
#[derive(Debug)]
struct H2Pooled {
    send: H2Send,
    uses: u32,
    last_used: Instant,
}

type H2Send = hyper::client::conn::http2::SendRequest<Body>;

impl H2Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, H2Pooled>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open connection for `key`, if there is one, counted as taking a request. A
    /// closed one, one idle past `limits.idle_timeout`, or one that carried its last request
    /// leaves the pool (requests already on it finish; new ones get a new connection).
    fn get(&self, key: &PoolKey, limits: ConnLimits) -> Option<H2Send> {
        let mut pool = self.lock();
        let entry = pool.get_mut(key)?;
        if entry.send.is_closed() || entry.last_used.elapsed() >= limits.idle_timeout {
            pool.remove(key);
            return None;
        }
        entry.uses += 1;
        entry.last_used = Instant::now();
        let send = entry.send.clone();
        if !limits.has_room(entry.uses) {
            pool.remove(key);
        }
        Some(send)
    }

    /// Adds a connection that took its first request; closed ones (endpoints or callers
    /// gone) are swept out meanwhile.
    fn put(&self, key: PoolKey, send: H2Send, limits: ConnLimits) {
        if !limits.has_room(1) {
            return;
        }
        let mut pool = self.lock();
        pool.retain(|_, c| !c.send.is_closed());
        pool.insert(
            key,
            H2Pooled {
                send,
                uses: 1,
                last_used: Instant::now(),
            },
        );
    }

    fn remove(&self, key: &PoolKey) {
        self.lock().remove(key);
    }
}

/// One HTTP/2 request to an endpoint of `target`, on the connection to it this caller
/// already has, else on a new one that later requests share.
async fn http2(
    inputs: &Inputs,
    caller: &Caller,
    target: SocketAddr,
    req: Request<Body>,
) -> Result<(Response<Body>, Endpoint), Forward> {
    let (picked, mut endpoint) =
        upstream::pick_with(inputs, target, subset_of(&req), hint_of(&req))?;
    endpoint.subset = subset_name_of(req.extensions());
    let key = (endpoint.addr, caller.addr.ip(), caller.identity.to_string());
    let limits = ConnLimits::of(pool_of(inputs, &endpoint).as_ref());
    // A pooled connection that turns out to be closing is dropped and a new one takes the
    // request (nothing of it was sent yet).
    let pooled = match inputs.h2_pool.get(&key, limits) {
        Some(mut s) => match s.ready().await {
            Ok(()) => Some(s),
            Err(e) => {
                debug!(error = %e, "pooled HTTP/2 connection closed; opening another");
                inputs.h2_pool.remove(&key);
                None
            }
        },
        None => None,
    };
    let mut send = match pooled {
        Some(s) => s,
        None => {
            let io = open_within(inputs, &picked, &endpoint, caller).await?;
            let (mut s, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                    .await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            s.ready().await?;
            inputs.h2_pool.put(key, s.clone(), limits);
            s
        }
    };
    let resp = send.send_request(req).await?;
    Ok((finish(resp), endpoint))
}

fn or_unknown(s: &str) -> String {
    if s.is_empty() {
        "unknown".into()
    } else {
        s.into()
    }
}

fn labels(
    caller: &Caller,
    destination: &Destination,
    endpoint: Option<&Endpoint>,
    status: StatusCode,
    flag: &'static str,
    grpc: bool,
    grpc_status: Option<String>,
) -> RequestLabels {
    let addressed = match destination {
        Destination::Service(s) => Some(s.as_ref()),
        Destination::Workload(_) => None,
    };
    RequestLabels {
        peers: peer_labels(caller, addressed, endpoint),
        request_protocol: if grpc { "grpc" } else { "http" },
        response_code: status.as_u16(),
        grpc_response_status: grpc_status.unwrap_or_default(),
        response_flags: flag,
        connection_security_policy: "mutual_tls",
    }
}

/// The source (the caller's certificate and baggage) and the destination (the endpoint
/// reached, and the service it belongs to, else the one `addressed`).
pub fn peer_labels(
    caller: &Caller,
    addressed: Option<&amesh_state::Service>,
    endpoint: Option<&Endpoint>,
) -> PeerLabels {
    let b = &caller.baggage;
    let workload = endpoint.and_then(|e| e.workload.as_deref());
    let service = endpoint.and_then(|e| e.service.as_deref()).or(addressed);
    let (dst_ns, dst_workload, dst_canonical, dst_revision, dst_cluster, dst_principal) =
        match workload {
            Some(w) => (
                w.namespace.clone(),
                or_unknown(&w.telemetry.workload_name),
                or_unknown(&w.telemetry.canonical_name),
                or_unknown(&w.telemetry.canonical_revision),
                or_unknown(&w.telemetry.cluster_id),
                w.identity().to_string(),
            ),
            None => Default::default(),
        };
    PeerLabels {
        reporter: "waypoint",
        source_workload: or_unknown(&b.workload_name),
        source_workload_namespace: or_unknown(&caller.identity.namespace),
        source_principal: caller.identity.to_string(),
        source_canonical_service: or_unknown(&b.service_name),
        source_canonical_revision: or_unknown(&b.service_version),
        source_cluster: or_unknown(&b.cluster),
        destination_workload: or_unknown(&dst_workload),
        destination_workload_namespace: or_unknown(&dst_ns),
        destination_principal: or_unknown(&dst_principal),
        destination_service: service.map_or_else(|| "unknown".into(), |s| s.hostname.clone()),
        destination_service_name: service.map_or_else(|| "unknown".into(), |s| s.name.clone()),
        destination_service_namespace: service
            .map_or_else(|| "unknown".into(), |s| s.namespace.clone()),
        destination_canonical_service: or_unknown(&dst_canonical),
        destination_canonical_revision: or_unknown(&dst_revision),
        destination_cluster: or_unknown(&dst_cluster),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regex_rewrite_replaces_every_match_with_its_groups() {
        let m = PathModifier::Regex(
            regex::Regex::new("^/service/([^/]+)(/.*)$").unwrap(),
            "${2}/instance/${1}".into(),
        );
        let any = PathMatch::Prefix("/".into());
        assert_eq!(
            replaced_path("/service/foo/v1/api", &any, &m),
            "/v1/api/instance/foo"
        );
        // No match: the path stays.
        assert_eq!(replaced_path("/other", &any, &m), "/other");
    }

    #[test]
    fn connection_limits_follow_the_destination_rule() {
        let none = ConnLimits::of(None);
        assert!(none.has_room(u32::MAX));
        assert_eq!(none.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        let pool = amesh_policy::traffic::ConnectionPool {
            max_requests_per_connection: 2,
            idle_timeout_ms: 1500,
            ..Default::default()
        };
        let set = ConnLimits::of(Some(&pool));
        assert!(set.has_room(1));
        assert!(!set.has_room(2), "retired after its second request");
        assert_eq!(set.idle_timeout, Duration::from_millis(1500));
    }

    #[test]
    fn request_ids_are_version_4_uuids() {
        let a = request_id();
        let text = a.to_str().unwrap();
        assert_eq!(text.len(), 36, "{text}");
        assert_eq!(&text[14..15], "4", "{text}");
        assert!("89ab".contains(&text[19..20]), "{text}");
        assert_ne!(request_id(), a);
    }

    #[test]
    fn paths_are_normalized_before_anything_judges_them() {
        for (raw, want) in [
            ("/public/../admin", "/admin"),
            ("/./admin", "/admin"),
            ("/%61dmin/x", "/admin/x"),
            ("/a/b/../../../c", "/c"),
            ("/a/%2Fb", "/a/%2Fb"),
            ("/a/./", "/a/"),
            ("/", "/"),
            ("/a/b/..", "/a/"),
            ("/a\\..\\admin", "/admin"),
        ] {
            assert_eq!(normalize_path(raw), want, "{raw}");
        }
    }

    #[test]
    fn hop_by_hop_headers_are_not_forwarded() {
        let mut h = http::HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    fn backend(weight: u32) -> Backend {
        Backend {
            service: format!("ns/b{weight}"),
            port: 80,
            weight,
            filters: vec![],
            unresolved: None,
            endpoints: vec![],
            subset: None,
        }
    }

    #[test]
    fn backends_are_picked_by_weight_and_zero_weights_never() {
        let bs = [backend(0), backend(1), backend(3)];
        let mut counts = [0u32; 4];
        for _ in 0..4000 {
            let b = pick_backend(&bs).unwrap();
            counts[b.weight as usize] += 1;
        }
        assert_eq!(counts[0], 0, "weight 0 is never picked");
        assert!((800..1200).contains(&counts[1]), "{counts:?}");
        assert!((2800..3200).contains(&counts[3]), "{counts:?}");
        assert!(
            pick_backend(&[backend(0)]).is_none(),
            "all zero: no backend (500)"
        );
        assert!(pick_backend(&[]).is_none());
    }

    #[test]
    fn prefix_rewrites_and_redirects_follow_the_gateway_api() {
        let p = |s: &str| PathMatch::Prefix(s.into());
        let prefix = |s: &str| PathModifier::Prefix(s.into());
        assert_eq!(
            replaced_path("/foo/bar", &p("/foo"), &prefix("/baz")),
            "/baz/bar"
        );
        assert_eq!(replaced_path("/foo/bar", &p("/foo"), &prefix("/")), "/bar");
        assert_eq!(replaced_path("/foo", &p("/foo"), &prefix("/baz")), "/baz");
        assert_eq!(
            replaced_path("/foo/bar", &p("/foo"), &PathModifier::Full("/x".into())),
            "/x"
        );
        let (parts, ()) = Request::get("/old/page?q=1")
            .header(header::HOST, "web.shop:8080")
            .body(())
            .unwrap()
            .into_parts();
        assert_eq!(
            redirect_location(
                &parts,
                &p("/old"),
                &None,
                &None,
                None,
                &Some(prefix("/new"))
            ),
            "http://web.shop:8080/new/page?q=1"
        );
        assert_eq!(
            redirect_location(
                &parts,
                &p("/old"),
                &Some("https".into()),
                &Some("example.org".into()),
                None,
                &None
            ),
            "https://example.org/old/page?q=1",
            "a new scheme without a port takes that scheme's default"
        );
    }
}
