//! CUSTOM AuthorizationPolicies: the request is checked with an external authorizer over
//! HTTP, with Envoy's `ext_authz` contract as Istio's `envoyExtAuthzHttp` configures it. The
//! check is a request with the same method, the path under `pathPrefix`, and the request's
//! `host`, `authorization` and listed headers (no body); a 200 answer allows (the listed
//! headers of it go on to the upstream request), any other is the client's answer (its
//! status, body and listed headers); an authorizer that cannot be reached or does not answer
//! in time allows when `failOpen`, else answers `statusOnError`.

use crate::{
    http::{Body, forward_request, full},
    proxy::{Caller, Inputs},
};
use amesh_policy::ext_authz::HttpAuthorizer;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, request::Parts};
use http_body_util::{BodyExt, Limited};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tracing::{info, warn};

/// The largest denial body passed on to the client.
const MAX_DENIAL_BODY: usize = 64 * 1024;

#[derive(Debug)]
pub enum Verdict {
    Allow {
        /// Headers for the client's answer (`headersToDownstreamOnAllow`).
        downstream: Vec<(HeaderName, HeaderValue)>,
    },
    Deny(Response<Body>),
}

fn on_error(a: &HttpAuthorizer, why: String) -> Verdict {
    if a.fail_open {
        warn!(provider = %a.provider, reason = %why, "external authorizer failed; failOpen lets the request through");
        return Verdict::Allow { downstream: vec![] };
    }
    warn!(provider = %a.provider, reason = %why, "external authorizer failed; refusing");
    let status = StatusCode::from_u16(a.status_on_error).unwrap_or(StatusCode::FORBIDDEN);
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = status;
    Verdict::Deny(resp)
}

/// Checks the request (whose head is `parts`) with authorizer `a`; on allow, the headers it
/// names are set on `parts`.
pub async fn check(
    inputs: &Arc<Inputs>,
    caller: &Caller,
    a: &HttpAuthorizer,
    target: SocketAddr,
    parts: &mut Parts,
) -> Verdict {
    let Some(to) = crate::upstream::service_address(inputs, &a.service, a.port, target) else {
        return on_error(a, format!("service {} is not known", a.service));
    };
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = format!("{}{path_and_query}", a.path_prefix);
    let mut check = Request::builder().method(parts.method.clone()).uri(uri);
    for (name, value) in &parts.headers {
        let n = name.as_str();
        if n == "host" || n == "authorization" || a.include_headers.iter().any(|h| h == n) {
            check = check.header(name, value);
        }
    }
    for (k, v) in &a.additional_headers {
        check = check.header(k.as_str(), v.as_str());
    }
    let req = match check.header("content-length", "0").body(full(Bytes::new())) {
        Ok(r) => r,
        Err(e) => return on_error(a, format!("building the check: {e}")),
    };
    let timeout = Duration::from_millis(a.timeout_ms);
    let answer = match tokio::time::timeout(timeout, forward_request(inputs, caller, to, req)).await
    {
        Err(_) => return on_error(a, format!("no answer within {timeout:?}")),
        Ok(Err(e)) => return on_error(a, e),
        Ok(Ok(resp)) => resp,
    };
    let (head, body) = answer.into_parts();
    let pick = |names: &[String]| -> Vec<(HeaderName, HeaderValue)> {
        head.headers
            .iter()
            .filter(|(k, _)| names.iter().any(|n| n == k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    // Envoy's HTTP ext_authz allows on 200 only; any other status is a denial.
    if head.status == StatusCode::OK {
        for (k, v) in pick(&a.to_upstream_on_allow) {
            parts.headers.insert(k, v);
        }
        return Verdict::Allow {
            downstream: pick(&a.to_downstream_on_allow),
        };
    }
    info!(provider = %a.provider, status = head.status.as_u16(), path = parts.uri.path(), "request denied by the external authorizer");
    let body = match Limited::new(body, MAX_DENIAL_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let mut resp = Response::new(full(body));
    *resp.status_mut() = head.status;
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
    Verdict::Deny(resp)
}
