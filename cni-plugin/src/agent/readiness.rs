//! The agent's readiness endpoint: `GET /readyz`, 200 (`ready`) once the agent serves the
//! plugin, 503 (`starting`) before, 404 for anything else. hyper's HTTP/1.1 server, one
//! request per connection, with the same bounds as ztunnel's endpoints: the request head at
//! most [`MAX_HEAD`], the body at most [`MAX_BODY`] (413 beyond), the head read within
//! [`HEADER_READ_TIMEOUT`], the whole connection within [`CONNECTION_DEADLINE`].

use amesh_ratelimit::{Throttle, WARN_EVERY};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Bytes, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

/// The request line and headers: hyper's read buffer (its minimum is 8 KiB).
pub const MAX_HEAD: usize = 16 * 1024;
/// The request body (`/readyz` takes none).
pub const MAX_BODY: usize = 64 * 1024;
/// From the connection's start until its request head is in.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole connection: head, body and answer.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(20);
/// The pause after a failed `accept()` (at the descriptor limit it fails at once, forever).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

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
    tokio::spawn(accept_loop(listener, ready));
    Ok(())
}

async fn accept_loop(listener: TcpListener, ready: Arc<AtomicBool>) {
    let warning = Throttle::new(WARN_EVERY);
    loop {
        match listener.accept().await {
            Ok((conn, _)) => {
                tokio::spawn(one(conn, ready.clone()));
            }
            Err(error) => {
                if let Some(suppressed) = warning.allow() {
                    warn!(listener = "readiness", %error, suppressed, "accept failed");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// One connection, one request. How it ends is for debugging only: anyone who reaches the
/// port can make connections end badly.
async fn one(conn: TcpStream, ready: Arc<AtomicBool>) {
    let service = hyper::service::service_fn(move |request| {
        let ready = ready.load(Ordering::Relaxed);
        async move { Ok::<_, Infallible>(answer(request, ready).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .keep_alive(false)
        .serve_connection(TokioIo::new(conn), service);
    match tokio::time::timeout(CONNECTION_DEADLINE, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => debug!(listener = "readiness", %error, "connection failed"),
        Err(_) => debug!(listener = "readiness", "connection past its deadline"),
    }
}

async fn answer(request: Request<Incoming>, ready: bool) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let (status, text) = match read_body(body).await {
        Err(refused) => refused,
        Ok(()) => route(&parts.method, parts.uri.path(), ready),
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

/// The body, read and dropped; the answer when it cannot be.
async fn read_body(body: Incoming) -> Result<(), (StatusCode, &'static str)> {
    const TOO_LARGE: (StatusCode, &str) =
        (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
    if body.size_hint().lower() > MAX_BODY as u64 {
        return Err(TOO_LARGE);
    }
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(_) => Ok(()),
        Err(error) if error.is::<LengthLimitError>() => Err(TOO_LARGE),
        Err(_) => Err((StatusCode::BAD_REQUEST, "bad request body\n")),
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
