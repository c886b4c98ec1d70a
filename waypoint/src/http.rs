//! The HTTP/1.1 proxy inside one CONNECT: each request gets an `x-request-id` and W3C trace
//! context when it has none, goes to an endpoint chosen per request (over HBONE with the
//! waypoint's identity), and is counted in Istio's request metrics. Bodies stream through in
//! both directions; nothing is buffered whole.

use crate::{
    bound::Destination,
    metrics::RequestLabels,
    proxy::{Caller, Inputs, Sniffed, forwarded},
    upstream::{self, Endpoint, UpstreamError},
};
use amesh_hbone::metadata::TRACEPARENT;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::{net::SocketAddr, sync::Arc, time::Instant};
use tracing::{debug, info, warn};

type Body = BoxBody<Bytes, hyper::Error>;

/// Longest request head accepted (larger: 431).
const MAX_HEAD: usize = 64 * 1024;
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves HTTP/1.1 requests on one CONNECT stream until the client closes it.
pub async fn serve(
    inputs: Arc<Inputs>,
    caller: Caller,
    destination: Destination,
    target: SocketAddr,
    stream: Sniffed,
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
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(e) = conn.await {
        debug!(error = %e, "HTTP/1.1 connection ended");
    }
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
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ] {
        headers.remove(name);
    }
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

async fn handle(
    inputs: &Inputs,
    caller: &Caller,
    destination: &Destination,
    target: SocketAddr,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let headers = req.headers_mut();
    if !headers.contains_key("x-request-id") {
        headers.insert("x-request-id", request_id());
    }
    if !headers.contains_key(TRACEPARENT) {
        headers.insert(TRACEPARENT, amesh_hbone::metadata::new_traceparent());
    }
    strip_hop_by_hop(headers);
    let request_id = headers.get("x-request-id").cloned();
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let outcome = forward(inputs, caller, target, req).await;
    let (resp, endpoint, flag) = match outcome {
        Ok((resp, endpoint)) => (resp, Some(endpoint), "-"),
        Err(e) => {
            warn!(error = %e, "request failed upstream");
            let flag = e.response_flag();
            let resp = match e {
                Forward::Upstream(UpstreamError::NoHealthyUpstream(_)) => {
                    text(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream")
                }
                _ => text(StatusCode::SERVICE_UNAVAILABLE, "upstream connect error"),
            };
            (resp, None, flag)
        }
    };
    let labels = labels(caller, destination, endpoint.as_ref(), resp.status(), flag);
    inputs.metrics.requests.get_or_create(&labels).inc();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    inputs.metrics.duration.get_or_create(&labels).observe(ms);
    info!(
        %method,
        path,
        status = resp.status().as_u16(),
        response_flags = flag,
        upstream = ?endpoint.as_ref().map(|e| e.addr),
        request_id = ?request_id,
        duration_ms = ms,
        "request"
    );
    resp
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

/// One request to an endpoint of `target`, on a stream of its own.
async fn forward(
    inputs: &Inputs,
    caller: &Caller,
    target: SocketAddr,
    req: Request<Incoming>,
) -> Result<(Response<Body>, Endpoint), Forward> {
    let (io, endpoint) = upstream::connect(inputs, target, forwarded(caller)).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "upstream HTTP/1.1 connection ended");
        }
    });
    let resp = send.send_request(req).await?;
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok((Response::from_parts(parts, body.boxed()), endpoint))
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
) -> RequestLabels {
    let b = &caller.baggage;
    let workload = endpoint.and_then(|e| e.workload.as_deref());
    let service = match destination {
        Destination::Service(s) => Some(s.as_ref()),
        Destination::Workload(_) => endpoint.and_then(|e| e.service.as_deref()),
    };
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
    RequestLabels {
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
        request_protocol: "http",
        response_code: status.as_u16(),
        grpc_response_status: String::new(),
        response_flags: flag,
        connection_security_policy: "mutual_tls",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
