//! ztunnel's HTTP endpoints, as Istio's ztunnel has them:
//! - admin (localhost:15000): `GET /config_dump` (JSON: workloads, services, policies,
//!   certificates with expiry, pods), `GET /logging`, `POST /logging?level=<level>` or
//!   `?level=<target>:<level>,...` or `?reset` (Istio's syntax, see [`crate::logging`]),
//!   `POST /quitquitquit`;
//! - readiness (15021): `GET /healthz/ready`, 200 once the configuration is loaded, the node
//!   agent's snapshot is in and every pod's certificate is ready, 503 before;
//! - metrics (15020): `GET /metrics`, Prometheus/OpenMetrics text.
//!
//! Served by hyper's HTTP/1.1 server through [`amesh_serve::serve_http1`], one request per
//! connection, with its bounds on heads (16 KiB), bodies (64 KiB), the time to send the head
//! and the whole connection; anything hyper cannot parse gets a 400 and only that connection
//! is closed.

use crate::{
    inpod::InPod,
    logging::{self, LogControl},
    metrics::{Listener, ListenerMetrics},
    state::StateReader,
};
use amesh_identity::CertManager;
use amesh_serve::{MAX_BODY, read_body, serve_http1};
use http::{Method, Request, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use prometheus_client::registry::Registry;
use std::{
    convert::Infallible,
    sync::{Arc, atomic::AtomicBool},
};
use tokio::{net::TcpListener, sync::Notify};
use tracing::{info, warn};

/// What the endpoints look at.
pub struct Endpoints {
    pub node: String,
    pub state: StateReader,
    pub certs: Arc<CertManager>,
    pub listener_metrics: ListenerMetrics,
    pub pods: Arc<InPod>,
    pub registry: Registry,
    pub log: LogControl,
    /// Set once the node agent's first snapshot has been applied.
    pub snapshot_received: Arc<AtomicBool>,
    /// Notified by `/quitquitquit`.
    pub quit: Arc<Notify>,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints").finish_non_exhaustive()
    }
}

struct Response {
    status: StatusCode,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn new(status: StatusCode, content_type: &'static str, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type,
            body: body.into(),
        }
    }

    fn text(status: StatusCode, body: impl Into<String>) -> Self {
        Self::new(status, "text/plain; charset=utf-8", body)
    }

    fn into_http(self) -> http::Response<Full<Bytes>> {
        let mut response = http::Response::new(Full::new(Bytes::from(self.body)));
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(self.content_type),
        );
        response
    }
}

/// Which endpoints a listener serves.
#[derive(Clone, Copy, Debug)]
pub enum Role {
    Admin,
    Readiness,
    Metrics,
}

impl Role {
    /// The `listener` label of its metrics and log lines.
    fn listener(self) -> Listener {
        match self {
            Self::Admin => Listener::Admin,
            Self::Readiness => Listener::Readiness,
            Self::Metrics => Listener::Metrics,
        }
    }
}

/// Serves `role` on `listener` forever (hyper's HTTP/1.1 within `amesh_serve`'s limits);
/// accept errors back off and are counted.
pub async fn serve(listener: TcpListener, role: Role, endpoints: Arc<Endpoints>) {
    let acceptor = crate::accept::counted(role.listener(), &endpoints.listener_metrics);
    let service = hyper::service::service_fn(move |request| {
        let endpoints = endpoints.clone();
        async move { Ok::<_, Infallible>(answer(request, role, &endpoints).await.into_http()) }
    });
    serve_http1(listener, acceptor, service).await;
}

/// Reads the body (bounded) and routes the request.
async fn answer(request: Request<Incoming>, role: Role, e: &Endpoints) -> Response {
    let (parts, body) = request.into_parts();
    if let Err(refused) = read_body(body, MAX_BODY).await {
        return Response::text(refused.status(), refused.text());
    }
    let path = parts.uri.path();
    let query = parts.uri.query().unwrap_or("");
    route(role, &parts.method, path, query, e)
}

fn route(role: Role, method: &Method, path: &str, query: &str, e: &Endpoints) -> Response {
    match (role, method.as_str(), path) {
        (Role::Admin, "GET", "/config_dump") => {
            Response::new(StatusCode::OK, "application/json", config_dump(e))
        }
        (Role::Admin, "GET", "/logging") => log_level(e),
        (Role::Admin, "POST", "/logging") => set_log_level(e, query),
        (Role::Admin, "POST", "/quitquitquit") => {
            e.quit.notify_one();
            Response::text(StatusCode::OK, "draining and exiting\n")
        }
        (Role::Readiness, "GET", "/healthz/ready") => readiness(e),
        // `/stats/prometheus` is where Istio's proxies (and so many scrape configs) look.
        (Role::Metrics, "GET", "/metrics" | "/stats/prometheus") => {
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, &e.registry) {
                Ok(()) => Response::new(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    out,
                ),
                Err(_) => {
                    Response::text(StatusCode::SERVICE_UNAVAILABLE, "encoding metrics failed\n")
                }
            }
        }
        (_, "GET" | "POST", _) => Response::text(StatusCode::NOT_FOUND, "not found\n"),
        _ => Response::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
    }
}

fn readiness(e: &Endpoints) -> Response {
    let mut waiting = Vec::new();
    if !e.state.is_loaded() {
        waiting.push("configuration");
    }
    if !e
        .snapshot_received
        .load(std::sync::atomic::Ordering::Acquire)
    {
        waiting.push("node agent snapshot");
    }
    if !e.pods.certificates_ready() {
        waiting.push("pod certificates");
    }
    if waiting.is_empty() {
        Response::text(StatusCode::OK, "ready\n")
    } else {
        Response::text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: waiting for {}\n", waiting.join(", ")),
        )
    }
}

/// `POST /logging`, as Istio's ztunnel answers it (see [`crate::logging`]): without `level`
/// or `reset` it only tells the current level; an invalid level is a 400 listing the valid
/// ones, and the level stays as it was.
fn set_log_level(e: &Endpoints, query: &str) -> Response {
    let (mut level, mut reset) = (None, false);
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        match kv.split_once('=').unwrap_or((kv, "")) {
            ("level", v) => level = Some(v),
            ("reset", _) => reset = true,
            _ => {}
        }
    }
    if level.is_none() && !reset {
        return log_level(e);
    }
    let Some(spec) = logging::percent_decode(level.unwrap_or("")) else {
        return Response::text(
            StatusCode::BAD_REQUEST,
            format!("the level is not valid percent-encoding\n{}", logging::HELP),
        );
    };
    match e.log.set(&spec, reset) {
        Ok(filter) => {
            info!(level = %spec, reset, %filter, "log level changed");
            Response::text(StatusCode::OK, format!("current log level is {filter}\n"))
        }
        Err(err) if err.is_bad_request() => {
            warn!(level = %spec, %err, "rejected log level");
            Response::text(
                StatusCode::BAD_REQUEST,
                format!("invalid level {spec:?}: {err}\n{}", logging::HELP),
            )
        }
        Err(err) => Response::text(StatusCode::SERVICE_UNAVAILABLE, format!("{err}\n")),
    }
}

/// `GET /logging`: the filter in effect.
fn log_level(e: &Endpoints) -> Response {
    Response::text(
        StatusCode::OK,
        format!("current log level is {}\n", e.log.current()),
    )
}

fn config_dump(e: &Endpoints) -> String {
    let state = e.state.snapshot();
    let dump = crate::dump::config_dump(&e.node, &state, e.certs.dump(), &e.pods.served());
    serde_json::to_string_pretty(&dump).unwrap_or_else(|_| "{}".into())
}
