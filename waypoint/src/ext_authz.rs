//! CUSTOM AuthorizationPolicies: the request is checked with an external authorizer, with
//! Envoy's `ext_authz` contract as Istio's extension providers configure it.
//!
//! - `envoyExtAuthzHttp`: the check is a request with the same method, the path under
//!   `pathPrefix`, and the request's `host`, `authorization` and listed headers; a 200
//!   answer allows (the listed headers of it go on to the upstream request), any other is
//!   the client's answer (its status, body and listed headers).
//! - `envoyExtAuthzGrpc`: `envoy.service.auth.v3.Authorization/Check` with every request
//!   header, the caller's address and identity; an OK status allows (with the answer's
//!   header changes for the upstream request and the client's answer), any other denies with
//!   the answer's status (403 when it names none), headers and body.
//!
//! Either way an authorizer that cannot be reached, or does not answer in time or in its
//! protocol, allows when `failOpen`, else answers `statusOnError`; with
//! `includeRequestBodyInCheck` the client's body (up to `maxRequestBytes`) goes along, and a
//! longer one is refused 413 unless `allowPartialMessage`.

use crate::{
    http::{Body, forward_request, full},
    proxy::{Caller, Inputs},
};
use amesh_policy::ext_authz::{Api, Authorizer, BodyInCheck, header_listed};
use amesh_proto::ext_authz as pb;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, request::Parts};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body as _, Frame, SizeHint};
use prost::Message;
use std::{
    collections::VecDeque,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, SystemTime},
};
use tracing::{info, warn};

/// The largest denial body passed on to the client, and the largest gRPC answer read.
const MAX_ANSWER_BODY: usize = 64 * 1024;

/// Envoy's header telling the authorizer whether the body it got is the whole body.
const PARTIAL_BODY: &str = "x-envoy-auth-partial-body";

#[derive(Debug)]
pub enum Verdict {
    Allow {
        /// Headers for the client's answer (`headersToDownstreamOnAllow`, or a gRPC
        /// authorizer's `response_headers_to_add`).
        downstream: Vec<(HeaderName, HeaderValue)>,
    },
    Deny(Response<Body>),
}

fn on_error(a: &Authorizer, why: String) -> Verdict {
    if a.fail_open {
        warn!(provider = %a.provider, reason = %why, "external authorizer failed; failOpen lets the request through");
        return Verdict::Allow { downstream: vec![] };
    }
    warn!(provider = %a.provider, reason = %why, "external authorizer failed; refusing");
    let status = StatusCode::from_u16(a.status_on_error).unwrap_or(StatusCode::FORBIDDEN);
    Verdict::Deny(answer(status, Bytes::new()))
}

fn answer(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp
}

/// Checks the request (whose head is `parts` and body `body`) with authorizer `a`; on
/// allow, the header changes it asks for are made on `parts`. A body read for the check is
/// put back, so the upstream gets it whole.
pub async fn check(
    inputs: &Arc<Inputs>,
    caller: &Caller,
    a: &Authorizer,
    target: SocketAddr,
    parts: &mut Parts,
    body: &mut Body,
) -> Verdict {
    let sent_body = match &a.body {
        None => None,
        Some(settings) => match buffer_body(body, settings).await {
            Ok(b) => Some(b),
            Err(Buffering::TooLarge) => {
                info!(provider = %a.provider, max_bytes = settings.max_bytes, "request body over the authorizer's maxRequestBytes: refused");
                return Verdict::Deny(answer(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Bytes::from_static(b"Payload Too Large"),
                ));
            }
            Err(Buffering::Read(e)) => {
                // The client's body broke off: nothing to check, nothing to send on.
                return Verdict::Deny(answer(
                    StatusCode::BAD_REQUEST,
                    Bytes::from(format!("reading the request body: {e}")),
                ));
            }
        },
    };
    let Some(to) = crate::upstream::service_address(inputs, &a.service, a.port, target) else {
        return on_error(a, format!("service {} is not known", a.service));
    };
    let timeout = Duration::from_millis(a.timeout_ms);
    let checked = match a.api {
        Api::Http => {
            tokio::time::timeout(timeout, http_check(inputs, caller, a, to, parts, sent_body)).await
        }
        Api::Grpc => {
            tokio::time::timeout(
                timeout,
                grpc_check(inputs, caller, a, to, target, parts, sent_body),
            )
            .await
        }
    };
    match checked {
        Err(_) => on_error(a, format!("no answer within {timeout:?}")),
        Ok(Err(e)) => on_error(a, e),
        Ok(Ok(v)) => {
            if let Verdict::Deny(resp) = &v {
                info!(provider = %a.provider, status = resp.status().as_u16(), path = parts.uri.path(), "request denied by the external authorizer");
            }
            v
        }
    }
}

/// The client's body as read for a check.
#[derive(Debug)]
struct SentBody {
    bytes: Bytes,
    /// Only the first `maxRequestBytes` of a longer body.
    partial: bool,
}

#[derive(Debug)]
enum Buffering {
    TooLarge,
    Read(hyper::Error),
}

/// Reads up to `settings.max_bytes` of `body` for the check and puts what it read back in
/// front of the rest.
async fn buffer_body(body: &mut Body, settings: &BodyInCheck) -> Result<SentBody, Buffering> {
    let max = settings.max_bytes as usize;
    let mut taken = VecDeque::new();
    let mut data = BytesMut::new();
    let mut ended = false;
    // Without partial bodies, one byte past the limit must be seen to know it is too long.
    while data.len() < max || (!settings.allow_partial && data.len() == max) {
        match body.frame().await {
            None => {
                ended = true;
                break;
            }
            Some(Err(e)) => return Err(Buffering::Read(e)),
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    data.extend_from_slice(d);
                }
                let trailers = frame.is_trailers();
                taken.push_back(frame);
                if trailers {
                    ended = true;
                    break;
                }
            }
        }
    }
    // Exactly `max` bytes and nothing after them is the whole body, not a partial one.
    if !ended && data.len() <= max && body.is_end_stream() {
        ended = true;
    }
    let partial = !ended || data.len() > max;
    if partial && !settings.allow_partial {
        return Err(Buffering::TooLarge);
    }
    let rest = std::mem::replace(body, full(Bytes::new()));
    *body = Replayed { taken, rest }.boxed();
    data.truncate(max);
    Ok(SentBody {
        bytes: data.freeze(),
        partial,
    })
}

/// A body whose first frames were read already: those, then the rest.
struct Replayed {
    taken: VecDeque<Frame<Bytes>>,
    rest: Body,
}

impl hyper::body::Body for Replayed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(f) = self.taken.pop_front() {
            return Poll::Ready(Some(Ok(f)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.taken.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let taken: u64 = self
            .taken
            .iter()
            .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
            .sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + taken);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + taken);
        }
        hint
    }
}

async fn http_check(
    inputs: &Inputs,
    caller: &Caller,
    a: &Authorizer,
    to: SocketAddr,
    parts: &mut Parts,
    sent_body: Option<SentBody>,
) -> Result<Verdict, String> {
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = format!("{}{path_and_query}", a.path_prefix);
    let mut check = Request::builder().method(parts.method.clone()).uri(uri);
    for (name, value) in &parts.headers {
        let n = name.as_str();
        if n == "host" || n == "authorization" || header_listed(&a.include_headers, n) {
            // The check's own length is set below.
            if n != "content-length" && n != "transfer-encoding" {
                check = check.header(name, value);
            }
        }
    }
    for (k, v) in &a.additional_headers {
        check = check.header(k.as_str(), v.as_str());
    }
    let body = match sent_body {
        None => Bytes::new(),
        Some(b) => {
            check = check.header(PARTIAL_BODY, if b.partial { "true" } else { "false" });
            b.bytes
        }
    };
    let req = check
        .header("content-length", body.len())
        .body(full(body))
        .map_err(|e| format!("building the check: {e}"))?;
    let resp = forward_request(inputs, caller, to, req).await?;
    let (head, body) = resp.into_parts();
    let pick = |names: &[String]| -> Vec<(HeaderName, HeaderValue)> {
        head.headers
            .iter()
            .filter(|(k, _)| header_listed(names, k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    // Envoy's HTTP ext_authz allows on 200 only; any other status is a denial.
    if head.status == StatusCode::OK {
        for (k, v) in pick(&a.to_upstream_on_allow) {
            parts.headers.insert(k, v);
        }
        return Ok(Verdict::Allow {
            downstream: pick(&a.to_downstream_on_allow),
        });
    }
    let body = match Limited::new(body, MAX_ANSWER_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let mut resp = answer(head.status, body);
    let headers: Vec<(HeaderName, HeaderValue)> = if a.to_downstream_on_deny.is_empty() {
        head.headers
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "content-length" | "transfer-encoding" | "connection"
                )
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    } else {
        pick(&a.to_downstream_on_deny)
    };
    for (k, v) in headers {
        resp.headers_mut().append(k, v);
    }
    Ok(Verdict::Deny(resp))
}

fn peer(addr: SocketAddr, principal: String) -> pb::attribute_context::Peer {
    pb::attribute_context::Peer {
        address: Some(pb::Address {
            socket_address: Some(pb::SocketAddress {
                protocol: 0,
                address: addr.ip().to_string(),
                port_value: u32::from(addr.port()),
            }),
        }),
        principal,
        ..Default::default()
    }
}

/// The CheckRequest Envoy would send for this request.
fn check_request(
    inputs: &Inputs,
    caller: &Caller,
    a: &Authorizer,
    target: SocketAddr,
    parts: &Parts,
    sent_body: Option<SentBody>,
) -> pb::CheckRequest {
    let mut headers = std::collections::HashMap::<String, String>::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let host = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| headers.get("host").cloned())
        .unwrap_or_default();
    // Envoy's pseudo-headers are in the map as well.
    headers.insert(":method".into(), parts.method.as_str().into());
    headers.insert(
        ":path".into(),
        parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .into(),
    );
    headers.insert(":authority".into(), host.clone());
    let (body, raw_body) = match &sent_body {
        None => (String::new(), Vec::new()),
        Some(b) => {
            headers.insert(
                PARTIAL_BODY.into(),
                if b.partial { "true" } else { "false" }.into(),
            );
            if a.body.as_ref().is_some_and(|s| s.pack_as_bytes) {
                (String::new(), b.bytes.to_vec())
            } else {
                (String::from_utf8_lossy(&b.bytes).into_owned(), Vec::new())
            }
        }
    };
    let size = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(-1);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let protocol = match parts.version {
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    pb::CheckRequest {
        attributes: Some(pb::AttributeContext {
            source: Some(peer(caller.addr, caller.identity.to_string())),
            destination: Some(peer(target, inputs.me.identity.to_string())),
            request: Some(pb::attribute_context::Request {
                time: Some(pb::Timestamp {
                    seconds: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
                    nanos: i32::try_from(now.subsec_nanos()).unwrap_or(0),
                }),
                http: Some(pb::attribute_context::HttpRequest {
                    id: headers.get("x-request-id").cloned().unwrap_or_default(),
                    method: parts.method.as_str().into(),
                    path: parts
                        .uri
                        .path_and_query()
                        .map_or("/", |p| p.as_str())
                        .into(),
                    host,
                    scheme: "http".into(),
                    size,
                    protocol: protocol.into(),
                    body,
                    raw_body,
                    headers,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}

/// gRPC's length-prefixed message framing: one uncompressed message.
fn grpc_frame(message: &impl Message) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.encoded_len());
    out.put_u8(0);
    out.put_u32(message.encoded_len() as u32);
    message
        .encode(&mut out)
        .expect("a BytesMut grows to any size");
    out.freeze()
}

fn grpc_unframe(mut body: Bytes) -> Result<pb::CheckResponse, String> {
    if body.len() < 5 {
        return Err("the authorizer answered no message".into());
    }
    let compressed = body.get_u8();
    let len = body.get_u32() as usize;
    if compressed != 0 {
        return Err("the authorizer answered a compressed message".into());
    }
    if body.len() != len {
        return Err(format!(
            "the authorizer's message is {} bytes, its frame says {len}",
            body.len()
        ));
    }
    pb::CheckResponse::decode(body).map_err(|e| format!("the authorizer's answer: {e}"))
}

async fn grpc_check(
    inputs: &Inputs,
    caller: &Caller,
    a: &Authorizer,
    to: SocketAddr,
    target: SocketAddr,
    parts: &mut Parts,
    sent_body: Option<SentBody>,
) -> Result<Verdict, String> {
    let message = check_request(inputs, caller, a, target, parts, sent_body);
    let authority = a.service.split_once('/').map_or(&*a.service, |(_, h)| h);
    let req = Request::builder()
        .method(http::Method::POST)
        .uri(amesh_proto::EXT_AUTHZ_CHECK_PATH)
        .header(http::header::HOST, format!("{authority}:{}", a.port))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header("grpc-timeout", format!("{}m", a.timeout_ms.max(1)))
        .body(full(grpc_frame(&message)))
        .map_err(|e| format!("building the check: {e}"))?;
    let resp = forward_request(inputs, caller, to, req).await?;
    let (head, body) = resp.into_parts();
    if head.status != StatusCode::OK {
        return Err(format!("the authorizer answered HTTP {}", head.status));
    }
    let collected = Limited::new(body, MAX_ANSWER_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the authorizer's answer: {e}"))?;
    // A trailers-only answer has its status in the head.
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let grpc_status = trailers
        .get("grpc-status")
        .or_else(|| head.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if grpc_status != "0" {
        let message = trailers
            .get("grpc-message")
            .or_else(|| head.headers.get("grpc-message"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        return Err(format!(
            "the check failed with gRPC status {grpc_status:?} {message}"
        ));
    }
    let answer_msg = grpc_unframe(collected.to_bytes())?;
    let code = answer_msg.status.as_ref().map_or(0, |s| s.code);
    if code == 0 {
        let mut downstream = Vec::new();
        if let Some(pb::check_response::HttpResponse::OkResponse(ok)) = answer_msg.http_response {
            for option in &ok.headers {
                apply_header(&mut parts.headers, option);
            }
            for name in &ok.headers_to_remove {
                // Envoy never lets an authorizer remove the request's routing headers.
                let lower = name.to_ascii_lowercase();
                if !lower.starts_with(':') && lower != "host" {
                    parts.headers.remove(lower.as_str());
                }
            }
            for option in &ok.response_headers_to_add {
                if let Some((k, v)) = header_of(option) {
                    downstream.push((k, v));
                }
            }
        }
        return Ok(Verdict::Allow { downstream });
    }
    let mut resp = answer(StatusCode::FORBIDDEN, Bytes::new());
    if let Some(pb::check_response::HttpResponse::DeniedResponse(denied)) = answer_msg.http_response
    {
        let status = denied
            .status
            .as_ref()
            .and_then(|s| u16::try_from(s.code).ok())
            .and_then(|c| StatusCode::from_u16(c).ok())
            .filter(|c| c.as_u16() >= 200)
            .unwrap_or(StatusCode::FORBIDDEN);
        resp = answer(status, Bytes::from(denied.body));
        for option in &denied.headers {
            apply_header(resp.headers_mut(), option);
        }
    }
    Ok(Verdict::Deny(resp))
}

fn header_of(option: &pb::HeaderValueOption) -> Option<(HeaderName, HeaderValue)> {
    let h = option.header.as_ref()?;
    let name = HeaderName::from_bytes(h.key.to_ascii_lowercase().as_bytes()).ok()?;
    let value = if h.raw_value.is_empty() {
        HeaderValue::from_str(&h.value).ok()?
    } else {
        HeaderValue::from_bytes(&h.raw_value).ok()?
    };
    Some((name, value))
}

/// One header change, as Envoy applies an authorizer's `HeaderValueOption`: the deprecated
/// `append` when it is set (true appends, false overwrites), else `append_action`.
fn apply_header(headers: &mut HeaderMap, option: &pb::HeaderValueOption) {
    let Some((name, value)) = header_of(option) else {
        return;
    };
    if name == http::header::HOST || name.as_str().starts_with(':') {
        return;
    }
    match option.append.as_ref().map(|b| b.value) {
        Some(true) => {
            headers.append(name, value);
        }
        Some(false) => {
            headers.insert(name, value);
        }
        None => match option.append_action {
            // ADD_IF_ABSENT
            1 => {
                if !headers.contains_key(&name) {
                    headers.insert(name, value);
                }
            }
            // OVERWRITE_IF_EXISTS_OR_ADD
            2 => {
                headers.insert(name, value);
            }
            // OVERWRITE_IF_EXISTS
            3 => {
                if headers.contains_key(&name) {
                    headers.insert(name, value);
                }
            }
            // APPEND_IF_EXISTS_OR_ADD, and any action this build does not know
            _ => {
                headers.append(name, value);
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn option(key: &str, value: &str, append: Option<bool>, action: i32) -> pb::HeaderValueOption {
        pb::HeaderValueOption {
            header: Some(pb::HeaderValue {
                key: key.into(),
                value: value.into(),
                raw_value: vec![],
            }),
            append: append.map(|value| pb::BoolValue { value }),
            append_action: action,
        }
    }

    #[test]
    fn header_options_apply_as_envoy_applies_them() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("1"));
        apply_header(&mut h, &option("x-a", "2", Some(false), 0));
        apply_header(&mut h, &option("X-B", "2", Some(true), 0));
        apply_header(&mut h, &option("x-c", "new", None, 1));
        apply_header(&mut h, &option("x-c", "again", None, 1));
        apply_header(&mut h, &option("x-d", "never", None, 3));
        apply_header(&mut h, &option("x-a", "3", None, 2));
        apply_header(&mut h, &option("x-e", "1", None, 0));
        apply_header(&mut h, &option("host", "evil", Some(false), 0));
        let all = |n: &str| {
            h.get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(all("x-a"), ["3"]);
        assert_eq!(all("x-b"), ["1", "2"]);
        assert_eq!(all("x-c"), ["new"]);
        assert!(all("x-d").is_empty());
        assert_eq!(all("x-e"), ["1"]);
        assert!(all("host").is_empty(), "an authorizer never sets the host");
    }

    #[test]
    fn grpc_frames_round_trip_and_bad_frames_are_named() {
        let msg = pb::CheckResponse {
            status: Some(pb::RpcStatus {
                code: 7,
                message: "no".into(),
            }),
            http_response: None,
        };
        assert_eq!(grpc_unframe(grpc_frame(&msg)).unwrap(), msg);
        assert!(
            grpc_unframe(Bytes::from_static(b"\0\0"))
                .unwrap_err()
                .contains("no message")
        );
        assert!(
            grpc_unframe(Bytes::from_static(b"\x01\0\0\0\0"))
                .unwrap_err()
                .contains("compressed")
        );
        assert!(
            grpc_unframe(Bytes::from_static(b"\0\0\0\0\x09abc"))
                .unwrap_err()
                .contains("frame says 9")
        );
    }

    fn body_of(chunks: &[&'static str]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, hyper::Error>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed()
    }

    async fn all_of(body: Body) -> Bytes {
        body.collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_buffered_body_is_sent_whole_upstream() {
        let settings = |max, allow_partial| BodyInCheck {
            max_bytes: max,
            allow_partial,
            pack_as_bytes: false,
        };
        // Shorter than the limit: all of it, not partial.
        let mut b = body_of(&["ab", "cd"]);
        let sent = buffer_body(&mut b, &settings(10, false)).await.unwrap();
        assert_eq!((&sent.bytes[..], sent.partial), (&b"abcd"[..], false));
        assert_eq!(&all_of(b).await[..], b"abcd");
        // Longer, partial allowed: the first bytes; the upstream still gets everything.
        let mut b = body_of(&["abc", "def", "ghi"]);
        let sent = buffer_body(&mut b, &settings(4, true)).await.unwrap();
        assert_eq!((&sent.bytes[..], sent.partial), (&b"abcd"[..], true));
        assert_eq!(&all_of(b).await[..], b"abcdefghi");
        // Longer, partial not allowed: too large.
        let mut b = body_of(&["abc", "def"]);
        assert!(matches!(
            buffer_body(&mut b, &settings(4, false)).await,
            Err(Buffering::TooLarge)
        ));
    }
}
