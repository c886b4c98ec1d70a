//! The emulator's HTTP/1.1 side: hyper's server on a current-thread tokio runtime of its
//! own thread, keep-alive (kube-rs pools connections), each request turned into a
//! [`Request`] for the handlers and their [`Reply`] into a response.

use super::{
    Shared,
    encoding::percent_decode,
    handlers::{self, Reply, Request, status},
    watch::{self, WatchBody},
};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::{
    StatusCode,
    body::{Bytes, Incoming},
    header,
};
use hyper_util::rt::TokioIo;
use std::{convert::Infallible, sync::Arc};
use tokio::net::{TcpListener, TcpStream};

/// Request bodies beyond this are refused (413); objects in tests are a few KiB.
const MAX_BODY: usize = 16 * 1024 * 1024;

type Response = hyper::Response<Either<Full<Bytes>, WatchBody>>;

/// Accepts until the emulator stops; its connections end with the runtime.
pub(super) async fn run(listener: std::net::TcpListener, shared: Arc<Shared>) {
    let Ok(listener) = TcpListener::from_std(listener) else {
        return;
    };
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((conn, _)) => {
                    tokio::spawn(serve_connection(conn, shared.clone()));
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            },
            () = shared.shutdown.notified() => return,
        }
    }
}

async fn serve_connection(conn: TcpStream, shared: Arc<Shared>) {
    let service = hyper::service::service_fn(move |request| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(answer(request, &shared).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(conn), service)
        .await;
}

async fn answer(request: hyper::Request<Incoming>, shared: &Arc<Shared>) -> Response {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(_) => return json(413, &status(413, "RequestEntityTooLarge", "body too large")),
    };
    let query = parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), percent_decode(v))
        })
        .collect();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let request = Request {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query,
        content_type,
        body,
    };
    match dispatch(shared, &request) {
        Reply::Json(code, body) => json(code, &body),
        Reply::Watch(events) => with_json_type(hyper::Response::new(Either::Right(events))),
    }
}

fn dispatch(shared: &Arc<Shared>, request: &Request) -> Reply {
    let is_watch = matches!(
        request.query.get("watch").map(String::as_str),
        Some("true" | "1")
    );
    match request.method.as_str() {
        "POST" if request.path == "/apis/authentication.k8s.io/v1/tokenreviews" => {
            handlers::token_review(shared, request)
        }
        "POST" => handlers::create(shared, request),
        "PATCH" => handlers::patch(shared, request),
        "GET" if is_watch => watch::watch(shared, request),
        "GET" => handlers::list(shared, request),
        _ => Reply::Json(405, status(405, "MethodNotAllowed", "only GET")),
    }
}

fn json(code: u16, body: &serde_json::Value) -> Response {
    let mut response = hyper::Response::new(Either::Left(Full::new(Bytes::from(body.to_string()))));
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    with_json_type(response)
}

fn with_json_type(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}
