//! The agent's readiness endpoint: `GET /readyz`, 200 (`ready`) once the agent serves the
//! plugin, 503 (`starting`) before, 404 for anything else. Served by
//! [`amesh_serve::serve_http1`] with the same bounds as ztunnel's endpoints (one request per
//! connection; head, body, header-read and connection limits from `amesh_serve::http1`).

use amesh_serve::{Acceptor, MAX_BODY, read_body, serve_http1};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};
use tokio::net::TcpListener;
use tracing::info;

#[derive(Debug, thiserror::Error)]
pub enum ReadinessError {
    #[error("binding the readiness endpoint on {address}: {source} (is the port free?)")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds `addr` and serves readiness from `ready` in the background.
pub async fn serve(addr: SocketAddr, ready: Arc<AtomicBool>) -> Result<(), ReadinessError> {
    let bind = |source| ReadinessError::Bind {
        address: addr,
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(bind)?;
    let bound = listener.local_addr().map_err(bind)?;
    info!(endpoint = "Readiness", address = %bound, "listening");
    let service = hyper::service::service_fn(move |request| {
        let ready = ready.load(Ordering::Relaxed);
        async move { Ok::<_, Infallible>(answer(request, ready).await) }
    });
    tokio::spawn(serve_http1(listener, Acceptor::new("readiness"), service));
    Ok(())
}

async fn answer(request: Request<Incoming>, ready: bool) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    // The body is read (bounded) and dropped: `/readyz` takes none.
    let (status, text) = match read_body(body, MAX_BODY).await {
        Err(refused) => (refused.status(), refused.text()),
        Ok(_) => route(&parts.method, parts.uri.path(), ready),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn route(method: &Method, path: &str, ready: bool) -> (StatusCode, &'static str) {
    match (method, path) {
        (&Method::GET, "/readyz") if ready => (StatusCode::OK, "ready\n"),
        (&Method::GET, "/readyz") => (StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
        _ => (StatusCode::NOT_FOUND, "not found\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_answers_by_state_and_everything_else_is_404() {
        assert_eq!(route(&Method::GET, "/readyz", true).0, StatusCode::OK);
        assert_eq!(
            route(&Method::GET, "/readyz", false).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(route(&Method::GET, "/other", true).0, StatusCode::NOT_FOUND);
        assert_eq!(
            route(&Method::POST, "/readyz", true).0,
            StatusCode::NOT_FOUND
        );
    }
}
